/*
 * recovered.c - .convoyfs/recovered/: content the server refused (an
 * APPEND refused: over quota, too big, its folder gone), kept so that
 * nothing written into the mount is lost. Each is <umid>.eml, read-only,
 * with the server's reason in user.convoyfs.reason; rm takes it away
 * once the user has dealt with it. The files live in the store's
 * recovered directory (sync/ops.c puts them there).
 */
#define LOG_CAT "fs"
#include "fs_i.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

bool is_recovered_ino(fuse_ino_t ino)
{
	return (ino & INO_KIND_MASK) == INO_RECOVERED_BASE;
}

/* the recovered directory's path, malloc'ed; NULL if there is none */
static char *dir_path(struct fs *fs)
{
	struct store *st;
	const char *d;
	char *out = NULL;

	if (borrow(fs, &st))
		return NULL;
	d = store_recovered_dir(st);
	if (d)
		out = xstrdup(d);
	give_back(fs, st);
	return out;
}

/* the umid a name <umid>.eml stands for, 0 if it is not one */
static int64_t umid_of(const char *name)
{
	char *end;
	long long v = strtoll(name, &end, 10);

	return v > 0 && !strcmp(end, ".eml") ? (int64_t)v : 0;
}

static char *file_of(struct fs *fs, int64_t umid, const char *ext)
{
	char *dir = dir_path(fs), *p;

	if (!dir)
		return NULL;
	p = xasprintf("%s/%lld.%s", dir, (long long)umid, ext);
	free(dir);
	return p;
}

static int stat_umid(struct fs *fs, int64_t umid, struct stat *st)
{
	char *p = file_of(fs, umid, "eml");
	struct stat sb;
	int rc = 0;

	if (!p)
		return -ENOENT;
	if (stat(p, &sb))
		rc = -errno;
	free(p);
	if (rc)
		return rc;
	memset(st, 0, sizeof(*st));
	st->st_ino = INO_RECOVERED_BASE + (uint64_t)umid;
	st->st_mode = S_IFREG | 0400;
	st->st_nlink = 1;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_size = sb.st_size;
	st->st_blocks = sb.st_blocks;
	st->st_blksize = 4096;
	st->st_mtim = sb.st_mtim;
	st->st_ctim = sb.st_ctim;
	st->st_atim = sb.st_atim;
	return 0;
}

int recovered_getattr(struct fs *fs, fuse_ino_t ino, struct stat *st)
{
	return stat_umid(fs, (int64_t)(ino & ~INO_KIND_MASK), st);
}

void recovered_mtime(struct fs *fs, struct timespec *t)
{
	char *d = dir_path(fs);
	struct stat sb;

	if (d && !stat(d, &sb))
		*t = sb.st_mtim;
	free(d);
}

int recovered_lookup(struct fs *fs, const char *name, struct stat *st)
{
	int64_t umid = umid_of(name);

	return umid ? stat_umid(fs, umid, st) : -ENOENT;
}

int recovered_open(struct fs *fs, fuse_ino_t ino)
{
	char *p = file_of(fs, (int64_t)(ino & ~INO_KIND_MASK), "eml");
	int fd;

	if (!p)
		return -ENOENT;
	fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		fd = -errno;
	free(p);
	return fd;
}

int recovered_reason(struct fs *fs, fuse_ino_t ino, char **text)
{
	char *p = file_of(fs, (int64_t)(ino & ~INO_KIND_MASK), "reason");
	char buf[1024];
	size_t n = 0;
	FILE *f;

	*text = NULL;
	if (!p)
		return -ENOENT;
	f = fopen(p, "r");
	free(p);
	if (!f)
		return -ENOENT;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		n--;
	buf[n] = '\0';
	*text = xstrdup(buf);
	return 0;
}

int recovered_unlink(struct fs *fs, const char *name)
{
	int64_t umid = umid_of(name);
	char *eml, *why;
	int rc = 0;

	if (!umid)
		return -ENOENT;
	eml = file_of(fs, umid, "eml");
	why = file_of(fs, umid, "reason");
	if (!eml || unlink(eml))
		rc = eml ? -errno : -ENOENT;
	if (!rc && why)
		unlink(why);
	free(eml);
	free(why);
	return rc;
}

/* the entries from @off on: ".", "..", then the files (offset 2 + i
 * of the i-th name in a sorted listing) */
int recovered_readdir(struct fs *fs, fuse_req_t req, char *buf, size_t size,
		      off_t off, size_t *used)
{
	char *dir = dir_path(fs);
	struct dirent **names = NULL;
	int n = 0;

	*used = 0;
	if (dir) {
		n = scandir(dir, &names, NULL, alphasort);
		free(dir);
		if (n < 0)
			n = 0;
	}
	for (off_t i = off; i < 2 + n; i++) {
		struct stat st = { .st_mode = S_IFDIR };
		const char *name = i == 0 ? "." : "..";
		size_t len;

		if (i == 0)
			st.st_ino = INO_RECOVERED;
		else if (i == 1)
			st.st_ino = INO_CTL_DIR;
		else {
			int64_t umid = umid_of(names[i - 2]->d_name);

			if (!umid)
				continue;
			name = names[i - 2]->d_name;
			st.st_ino = INO_RECOVERED_BASE + (uint64_t)umid;
			st.st_mode = S_IFREG;
		}
		len = fuse_add_direntry(req, buf + *used, size - *used, name,
					&st, i + 1);
		if (len > size - *used)
			break;
		*used += len;
	}
	for (int i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return 0;
}
