/*
 * main.c - convoyfs: parse the command line, check the mount point and
 * take the store, get the password, log in once (so a wrong password or
 * certificate is reported here, before the mount appears and before
 * daemonizing), then mount and serve. Or, as `convoyfs status
 * MOUNTPOINT`, print the state of a mount for people.
 *
 * Exit status: 0 mounted and later unmounted (or stopped by a signal),
 * 1 a failure (server, login, mount point, store), 2 a bad command line.
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

/* one "folder NAME: K/T messages, STATE" line of the status file */
static bool print_folder(const char *line, int width)
{
	const char *name = line + strlen("folder "), *colon, *comma;

	colon = strstr(name, ": ");
	if (strncmp(line, "folder ", 7) || !colon)
		return false;
	comma = strstr(colon, " messages, ");
	if (!comma)
		return false;
	printf("  %-*.*s %12.*s  %s\n", width, (int)(colon - name), name,
	       (int)(comma - colon - 2), colon + 2,
	       comma + strlen(" messages, "));
	return true;
}

/*
 * convoyfs status MOUNTPOINT: .convoyfs/status, which is "key: value"
 * lines for scripts, as aligned lines and a table of folders. Keys this
 * does not know are shown as they are.
 */
static int print_status(const char *mountpoint)
{
	char *path = xasprintf("%s/.convoyfs/status", mountpoint);
	FILE *f = fopen(path, "re");
	char *line = NULL, **lines = NULL;
	size_t cap = 0, n = 0;
	int keyw = 0, namew = 6;
	bool any_folder = false;
	ssize_t len;

	if (!f) {
		fprintf(stderr, "convoyfs: %s is not a convoyfs mount: %s\n",
			mountpoint, errno == ENOENT ? "no .convoyfs/status"
						    : strerror(errno));
		free(path);
		return 1;
	}
	free(path);
	/* all of it first: the columns are as wide as the widest entry */
	while ((len = getline(&line, &cap, f)) > 0) {
		char *colon;

		if (line[len - 1] == '\n')
			line[--len] = '\0';
		lines = xrealloc(lines, (n + 1) * sizeof(*lines));
		lines[n++] = xstrdup(line);
		colon = strstr(line, ": ");
		if (!colon)
			continue;
		if (!strncmp(line, "folder ", 7)) {
			any_folder = true;
			if (colon - (line + 7) > namew)
				namew = (int)(colon - (line + 7));
		} else if (colon - line + 1 > keyw) {
			keyw = (int)(colon - line + 1);
		}
	}
	fclose(f);
	free(line);
	for (size_t i = 0; i < n; i++) {
		char *colon = strstr(lines[i], ": ");

		if (!strncmp(lines[i], "folder ", 7))
			continue;
		if (colon)
			printf("%-*.*s %s\n", keyw, (int)(colon - lines[i] + 1),
			       lines[i], colon + 2);
		else if (*lines[i])
			printf("%s\n", lines[i]);
	}
	if (any_folder)
		printf("\n  %-*s %12s  %s\n", namew, "folder", "known/total",
		       "state");
	for (size_t i = 0; i < n; i++) {
		if (!strncmp(lines[i], "folder ", 7) &&
		    !print_folder(lines[i], namew))
			printf("%s\n", lines[i]);
		free(lines[i]);
	}
	free(lines);
	return 0;
}

int main(int argc, char **argv)
{
	struct fs_args a;
	struct sync *sync = NULL;
	struct store_lock *lock = NULL;
	char err[512], *note;
	int rc;

	umask(077);
	if (args_parse(argc, argv, &a, err, sizeof(err))) {
		/* one line: the whole help would bury the error */
		fprintf(stderr, "convoyfs: %s (see convoyfs --help)\n", err);
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
	if (a.status) {
		rc = print_status(a.mountpoint);
		args_release(&a);
		return rc;
	}
	/* -d: the IMAP conversation too (passwords masked), unless
	 * debug= picked the categories */
	log_init("convoyfs", false,
		 a.debug_cats ? a.debug_cats : a.debug ? "imap" : NULL);
	if (a.log_file && log_set_file(a.log_file, err, sizeof(err))) {
		fprintf(stderr, "convoyfs: %s\n", err);
		args_release(&a);
		return 1;
	}
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
