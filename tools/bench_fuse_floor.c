/*
 * bench_fuse_floor - the cost of FUSE itself on this machine, for what
 * tools/bench times on convoyfs: a filesystem with two directories, A
 * holding N files and B none, that keeps everything in memory, answers
 * every request at once, and mounts with default_permissions and the
 * same threads as convoyfs.
 *
 *   bench_fuse_floor MOUNTPOINT N             N empty files, for mv
 *   bench_fuse_floor MOUNTPOINT N DIR [noopen]
 *
 * With DIR, A's files hold the contents of DIR's first N regular files
 * (sorted by name), served as convoyfs serves a cached body: listed with
 * READDIRPLUS, an hour's entry and attribute timeouts, opened with
 * keep_cache and noflush, read from memory. tools/bench times `mv` of
 * every file of A into B, and `cat` and `grep -rl` of A, beside the
 * same on convoyfs, so a ratio can be read against what no FUSE
 * filesystem here could beat. "noopen" answers OPEN and FLUSH with
 * ENOSYS, which the kernel takes as "never send them again": the least
 * FUSE can cost a read, at the price of any per-open state and of an
 * error reported at close().
 *
 * Runs in the foreground until unmounted. Not a test; built with the
 * bench tools.
 */
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
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
static char **data;          /* per file: its content, with DIR */
static size_t *sizes;
static int noopen;
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
		if (sizes)
			st->st_size = (off_t)sizes[ino - FILE0];
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

static void list_dir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		     bool plus)
{
	char *buf = calloc(1, size), name[32];
	size_t used = 0;
	struct stat st;

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
		if (plus) {
			struct fuse_entry_param e;

			memset(&e, 0, sizeof(e));
			e.ino = child;
			e.attr = st;
			e.attr_timeout = e.entry_timeout =
				child < FILE0 ? 1.0 : 3600.0;
			len = fuse_add_direntry_plus(req, buf + used,
						     size - used, name, &e,
						     (off_t)i + 1);
		} else {
			len = fuse_add_direntry(req, buf + used, size - used,
						name, &st, (off_t)i + 1);
		}
		if (len > size - used)
			break;
		used += len;
	}
	pthread_mutex_unlock(&lock);
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void fl_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	(void)fi;
	list_dir(req, ino, size, off, false);
}

static void fl_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size,
			   off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	list_dir(req, ino, size, off, true);
}

static void fl_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (noopen) {
		fuse_reply_err(req, ENOSYS);
		return;
	}
	if (ino < FILE0) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	fi->keep_cache = 1;
	fi->noflush = 1;
	fuse_reply_open(req, fi);
}

static void fl_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	size_t have = sizes && ino >= FILE0 ? sizes[ino - FILE0] : 0;

	(void)fi;
	if ((size_t)off >= have)
		size = 0;
	else if (size > have - (size_t)off)
		size = have - (size_t)off;
	fuse_reply_buf(req, size ? data[ino - FILE0] + off : NULL, size);
}

static void fl_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, noopen ? ENOSYS : 0);
}

static void fl_release(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

/* READDIRPLUS for every page, as convoyfs asks */
static void fl_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	if (conn->capable & FUSE_CAP_READDIRPLUS) {
		conn->want |= FUSE_CAP_READDIRPLUS;
		conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
	}
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

/* the contents of dir's first nfiles regular files, or -1 */
static int load(const char *dir)
{
	struct dirent **ents;
	unsigned long got = 0;
	int n = scandir(dir, &ents, NULL, by_name);

	if (n < 0) {
		perror(dir);
		return -1;
	}
	data = calloc(nfiles ? nfiles : 1, sizeof(*data));
	sizes = calloc(nfiles ? nfiles : 1, sizeof(*sizes));
	for (int i = 0; i < n; i++) {
		char path[4096];
		struct stat st;
		int fd;

		snprintf(path, sizeof(path), "%s/%s", dir, ents[i]->d_name);
		fd = open(path, O_RDONLY | O_NOFOLLOW);
		if (got < nfiles && fd >= 0 && !fstat(fd, &st) &&
		    S_ISREG(st.st_mode)) {
			data[got] = malloc(st.st_size ? (size_t)st.st_size : 1);
			if (read(fd, data[got], (size_t)st.st_size) != st.st_size) {
				perror(path);
				return -1;
			}
			sizes[got++] = (size_t)st.st_size;
		}
		if (fd >= 0)
			close(fd);
		free(ents[i]);
	}
	free(ents);
	if (got < nfiles) {
		fprintf(stderr, "%s holds %lu regular files, not %lu\n", dir,
			got, nfiles);
		return -1;
	}
	return 0;
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
	.init = fl_init,
	.lookup = fl_lookup,
	.getattr = fl_getattr,
	.readdir = fl_readdir,
	.readdirplus = fl_readdirplus,
	.open = fl_open,
	.read = fl_read,
	.flush = fl_flush,
	.release = fl_release,
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

	if (argc < 3 || argc > 5 || (argc == 5 && strcmp(argv[4], "noopen"))) {
		fprintf(stderr, "usage: %s MOUNTPOINT N [DIR [noopen]]\n",
			argv[0]);
		return 2;
	}
	nfiles = strtoul(argv[2], NULL, 10);
	noopen = argc == 5;
	if (argc >= 4 && load(argv[3]))
		return 1;
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
