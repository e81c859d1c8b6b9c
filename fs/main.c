/*
 * main.c - convoyfs: parse the command line, check the mount point and
 * take the store, get the password, log in once (so a wrong password or
 * certificate is reported here, before the mount appears and before
 * daemonizing), then mount and serve.
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
	struct store_lock *lock = NULL;
	char err[512], *note;
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

	/*
	 * Before the password and the login: a mount point or a store in
	 * use is known here at once. The lock is held until exit, by the
	 * daemon too (an flock stays with the file across fork()).
	 */
	rc = fs_check_mountpoint(&a, err, sizeof(err));
	if (!rc) {
		note = xasprintf("(mounted on %s)", a.mountpoint);
		rc = store_lock_take(a.cfg.cache_dir, note, &lock, err,
				     sizeof(err));
		free(note);
	}
	if (!rc)
		rc = args_password(&a, err, sizeof(err));
	if (!rc)
		rc = sync_new(&a.cfg, &sync, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "convoyfs: %s\n", err);
		store_lock_release(lock);
		args_release(&a);
		return 1;
	}
	rc = fs_run(&a, sync, argc, argv);
	sync_free(sync);
	store_lock_release(lock);
	args_release(&a);
	return rc;
}
