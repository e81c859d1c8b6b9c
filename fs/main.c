/*
 * main.c - convoyfs: parse the command line, get the password, log in
 * once (so a wrong password or certificate is reported here, before the
 * mount appears and before daemonizing), then mount and serve.
 */
#define LOG_CAT "main"
#include "fs.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"

int main(int argc, char **argv)
{
	struct fs_args a;
	struct sync *sync = NULL;
	char err[512];
	int rc;

	umask(077);
	if (args_parse(argc, argv, &a, err, sizeof(err))) {
		fprintf(stderr, "convoyfs: %s\n", err);
		args_usage(stderr);
		args_release(&a);
		return 2;
	}
	if (a.help) {
		args_usage(stdout);
		return 0;
	}
	if (a.version) {
		printf("convoyfs %s\n", CONVOYFS_VERSION);
		return 0;
	}
	log_init("convoyfs", false, a.debug_cats);
	/* a server that closes on us must not kill the process */
	signal(SIGPIPE, SIG_IGN);

	rc = args_password(&a, err, sizeof(err));
	if (!rc)
		rc = sync_new(&a.cfg, &sync, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "convoyfs: %s\n", err);
		args_release(&a);
		return 1;
	}
	rc = fs_run(&a, sync, argc, argv);
	sync_free(sync);
	args_release(&a);
	return rc;
}
