/*
 * bench_fuse_floor - the cost of FUSE itself for what `mv` of many files
 * asks, on this machine: a filesystem with two directories, A holding N
 * empty files and B none, that keeps everything in memory, answers every
 * request at once, and mounts with default_permissions and the same
 * threads as convoyfs. tools/bench times an mv of every file of A into B on it beside
 * convoyfs's mv, so the ratio to a raw UID MOVE can be read against what
 * no FUSE filesystem here could beat.
 *
 *   bench_fuse_floor MOUNTPOINT N
 *
 * runs in the foreground until unmounted. Not a test; built with the
 * bench tools.
 */
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define INO_A 2
#define INO_B 3
#define FILE0 16 /* file i has inode FILE0 + i */

static unsigned long nfiles;
static unsigned char *where; /* per file: INO_A or INO_B */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static time_t born;

static void attr_of(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_uid = getuid();
	st->st_gid = getgid();
	st->st_mtime = st->st_ctime = st->st_atime = born;
	if (ino < FILE0) {
		st->st_mode = S_IFDIR | 0700;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | 0400;
		st->st_nlink = 1;
	}
}

/* "f<i>" in its directory: file i, or 0 */
static fuse_ino_t file_of(fuse_ino_t dir, const char *name)
{
	char *end;
	unsigned long i;

	if (name[0] != 'f')
		return 0;
	i = strtoul(name + 1, &end, 10);
	if (*end || i >= nfiles)
		return 0;
	return where[i] == dir ? FILE0 + i : 0;
}

static void reply_entry(fuse_req_t req, fuse_ino_t ino)
{
	struct fuse_entry_param e;

	memset(&e, 0, sizeof(e));
	e.ino = ino;
	attr_of(ino, &e.attr);
	/* as convoyfs: directories for a second, files for an hour */
	e.attr_timeout = e.entry_timeout = ino < FILE0 ? 1.0 : 3600.0;
	fuse_reply_entry(req, &e);
}

static void fl_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fuse_ino_t ino = 0;

	if (parent == FUSE_ROOT_ID && !strcmp(name, "A"))
		ino = INO_A;
	else if (parent == FUSE_ROOT_ID && !strcmp(name, "B"))
		ino = INO_B;
	else if (parent == INO_A || parent == INO_B) {
		pthread_mutex_lock(&lock);
		ino = file_of(parent, name);
		pthread_mutex_unlock(&lock);
	}
	if (ino)
		reply_entry(req, ino);
	else
		fuse_reply_err(req, ENOENT);
}

static void fl_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;

	(void)fi;
	attr_of(ino, &st);
	fuse_reply_attr(req, &st, ino < FILE0 ? 1.0 : 3600.0);
}

static void fl_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	char *buf = calloc(1, size), name[32];
	size_t used = 0;
	struct stat st;

	(void)fi;
	pthread_mutex_lock(&lock);
	for (unsigned long i = (unsigned long)off; i < nfiles + 2; i++) {
		fuse_ino_t child;
		size_t len;

		if (ino == FUSE_ROOT_ID) {
			if (i >= 2)
				break;
			child = i ? INO_B : INO_A;
			snprintf(name, sizeof(name), "%s", i ? "B" : "A");
		} else if (i >= nfiles || where[i] != ino) {
			continue;
		} else {
			child = FILE0 + i;
			snprintf(name, sizeof(name), "f%lu", i);
		}
		attr_of(child, &st);
		len = fuse_add_direntry(req, buf + used, size - used, name, &st,
					(off_t)i + 1);
		if (len > size - used)
			break;
		used += len;
	}
	pthread_mutex_unlock(&lock);
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void fl_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		      fuse_ino_t newparent, const char *newname,
		      unsigned int flags)
{
	fuse_ino_t ino;
	int rc = 0;

	(void)flags;
	pthread_mutex_lock(&lock);
	ino = file_of(parent, name);
	if (!ino || (newparent != INO_A && newparent != INO_B))
		rc = ENOENT;
	else if (strcmp(name, newname))
		rc = EPERM;
	else
		where[ino - FILE0] = (unsigned char)newparent;
	pthread_mutex_unlock(&lock);
	fuse_reply_err(req, rc);
}

static const struct fuse_lowlevel_ops ops = {
	.lookup = fl_lookup,
	.getattr = fl_getattr,
	.readdir = fl_readdir,
	.rename = fl_rename,
};

int main(int argc, char **argv)
{
	char opt[] = "-o", opts[] = "default_permissions,fsname=floor";
	char *fargv[] = { argv[0], opt, opts, NULL };
	struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
	struct fuse_loop_config *lc;
	struct fuse_session *se;
	int rc;

	if (argc != 3) {
		fprintf(stderr, "usage: %s MOUNTPOINT N\n", argv[0]);
		return 2;
	}
	nfiles = strtoul(argv[2], NULL, 10);
	where = malloc(nfiles ? nfiles : 1);
	memset(where, INO_A, nfiles);
	born = time(NULL);
	se = fuse_session_new(&args, &ops, sizeof(ops), NULL);
	if (!se || fuse_session_mount(se, argv[1]))
		return 1;
	lc = fuse_loop_cfg_create();
	fuse_loop_cfg_set_max_threads(lc, 16);
	rc = fuse_session_loop_mt(se, lc);
	fuse_loop_cfg_destroy(lc);
	fuse_session_unmount(se);
	fuse_session_destroy(se);
	free(where);
	return rc ? 1 : 0;
}
