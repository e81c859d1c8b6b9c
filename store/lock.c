/*
 * lock.c - one process per store: an exclusive flock on a file in the
 * store's directory, held for the life of the process. Two daemons
 * writing one store would each keep its own idea of the bookmarks and
 * the body cache's budget, and a database one of them found damaged
 * would be moved aside under the other's feet.
 */
#include "store_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

#define LOCK_NAME "lock"

struct store_lock {
	int fd;
};

/* what the holder wrote into the lock file, one line, into @buf */
static void read_note(int fd, char *buf, size_t len)
{
	ssize_t n = pread(fd, buf, len - 1, 0);

	if (n < 0)
		n = 0;
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
}

int store_lock_take(const char *dir, const char *note,
		    struct store_lock **out, char *err, size_t errlen)
{
	char *path, held[512];
	int fd, rc;

	*out = NULL;
	rc = store_make_dirs(dir);
	if (rc) {
		snprintf(err, errlen, "cannot create cache directory %s: %s",
			 dir, strerror(-rc));
		return rc;
	}
	path = xasprintf("%s/" LOCK_NAME, dir);
	/* O_CLOEXEC: password_command and fusermount3 must not hold it */
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		rc = -errno;
		snprintf(err, errlen, "cannot open %s: %s", path,
			 strerror(errno));
		free(path);
		return rc;
	}
	free(path);
	/*
	 * flock, not fcntl: an flock belongs to the open file, which the
	 * daemon made by fork() shares, so the lock outlives the parent
	 * that took it; and the kernel drops it when the last holder dies,
	 * so no stale lock is ever left to clean up.
	 */
	while (flock(fd, LOCK_EX | LOCK_NB)) {
		if (errno == EINTR)
			continue;
		rc = -errno;
		if (errno == EWOULDBLOCK) {
			read_note(fd, held, sizeof(held));
			snprintf(err, errlen,
				 "cache directory %s is in use by another "
				 "convoyfs%s%s",
				 dir, held[0] ? " " : "", held);
			rc = -EBUSY;
		} else {
			snprintf(err, errlen, "cannot lock cache directory "
				 "%s: %s", dir, strerror(errno));
		}
		close(fd);
		return rc;
	}
	/* the note is a courtesy: failing to write it fails nothing */
	if (note && !ftruncate(fd, 0))
		(void)!pwrite(fd, note, strlen(note), 0);
	*out = xcalloc(1, sizeof(**out));
	(*out)->fd = fd;
	return 0;
}

void store_lock_release(struct store_lock *l)
{
	if (!l)
		return;
	/* the file stays: removing it would let a newcomer lock a new
	 * file while a waiter still holds the old one open */
	close(l->fd);
	free(l);
}
