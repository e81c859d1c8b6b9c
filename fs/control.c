/*
 * control.c - the files in .convoyfs/: status is read for the state of
 * the sync and of every folder, ctl is written with a command (sync,
 * sync FOLDER, grow FOLDER).
 */
#define LOG_CAT "fs"
#include "fs_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"

struct status_buf {
	char *text;
	size_t len;
};

/* the control files: status is read, ctl is written */
void file_attr(struct fs *fs, fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = S_IFREG | (ino == INO_CTL ? 0600 : 0400);
	st->st_nlink = 1;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_blksize = 4096;
}

static char *status_text(struct fs *fs)
{
	struct store_folder *f = NULL;
	struct store *st;
	char *head, *out;
	size_t n = 0, len;

	int64_t horizon = sync_horizon(fs->sync);

	sync_status(fs->sync, &head);
	len = strlen(head);
	out = head;
	if (borrow(fs, &st))
		return out;
	if (!store_folder_list(st, &f, &n)) {
		for (size_t i = 0; i < n; i++) {
			struct sync_folder_status fst;
			uint64_t count = 0;
			char total[32] = "?", state[256], *line;

			if (f[i].noselect)
				continue;
			store_folder_count(st, f[i].id, &count);
			sync_folder_status(fs->sync, f[i].id, &fst);
			if (fst.has_total)
				snprintf(total, sizeof(total), "%u", fst.total);
			if (fst.failed) {
				struct tm tm;
				time_t t = (time_t)fst.when;
				char when[32];

				localtime_r(&t, &tm);
				strftime(when, sizeof(when),
					 "%Y-%m-%d %H:%M:%S", &tm);
				snprintf(state, sizeof(state),
					 "failed: %s (%s)", fst.error, when);
			} else if (f[i].low_uid == 1) {
				snprintf(state, sizeof(state), "complete");
			} else if (horizon && f[i].complete_since &&
				   f[i].complete_since <= horizon) {
				/* what is older waits for grow FOLDER */
				struct tm tm;
				time_t t = (time_t)f[i].complete_since;
				char day[16];

				gmtime_r(&t, &tm);
				strftime(day, sizeof(day), "%Y-%m-%d", &tm);
				snprintf(state, sizeof(state),
					 "complete since %s", day);
			} else {
				snprintf(state, sizeof(state), "learning");
			}
			/* known/total: what the store holds of what the
			 * server had at the last look */
			line = xasprintf("folder %s: %llu/%s messages, %s\n",
					 f[i].display,
					 (unsigned long long)count, total,
					 state);
			out = xrealloc(out, len + strlen(line) + 1);
			strcpy(out + len, line);
			len += strlen(line);
			free(line);
		}
		store_folder_list_free(f, n);
	}
	give_back(fs, st);
	return out;
}

void control_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct status_buf *sb;

	if (ino == INO_CTL) {
		/* readable too (empty), so grep -r over the mount is quiet */
		fi->direct_io = 1;
		fuse_reply_open(req, fi);
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	sb = xcalloc(1, sizeof(*sb));
	sb->text = status_text(fs);
	sb->len = strlen(sb->text);
	fi->fh = (uint64_t)(uintptr_t)sb;
	fi->direct_io = 1;
	fuse_reply_open(req, fi);
}

void control_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		  struct fuse_file_info *fi)
{
	struct status_buf *sb = (struct status_buf *)(uintptr_t)fi->fh;
	size_t n = 0;
	char *copy;

	if (ino == INO_CTL) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if ((size_t)off < sb->len)
		n = size < sb->len - (size_t)off ? size
						 : sb->len - (size_t)off;
	/* a copy: the release that frees sb may run on another
	 * thread as soon as the reader has its bytes */
	copy = xmalloc(n);
	if (n)
		memcpy(copy, sb->text + off, n);
	fuse_reply_buf(req, copy, n);
	free(copy);
}

void control_release(fuse_req_t req, fuse_ino_t ino,
		     struct fuse_file_info *fi)
{
	if (ino == INO_STATUS) {
		struct status_buf *sb = (struct status_buf *)(uintptr_t)fi->fh;

		free(sb->text);
		free(sb);
	}
	fuse_reply_err(req, 0);
}

/*
 * The folder at @path, a directory path as the mount shows it
 * ("Archive/2020", a leading or trailing '/' allowed): its store id, 0
 * when no selectable folder is there.
 */
static int64_t folder_at(struct fs *fs, const char *path)
{
	struct tree *t = tree_get(fs);
	const struct tree_dir *d = &t->dirs[0];
	char *copy = xstrdup(path), *save = NULL;
	int64_t id;

	for (char *c = strtok_r(copy, "/", &save); c && d;
	     c = strtok_r(NULL, "/", &save))
		d = tree_child(t, d, c);
	id = d && d->selectable ? d->folder : 0;
	free(copy);
	tree_put(t);
	return id;
}

#define CTL_COMMANDS "sync, sync FOLDER, grow FOLDER"

/*
 * .convoyfs/ctl, one command per write:
 *   sync           refresh every folder now
 *   sync FOLDER    refresh one folder now, ahead of other work
 *   grow FOLDER    learn all of a folder's older mail, past the horizon
 * FOLDER is its directory path in the mount. A command not known, or a
 * folder not there, fails with EINVAL and a log line.
 */
void control_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
		   size_t size, off_t off, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	size_t n = size;
	char *line, *arg;
	bool grow;
	int64_t id;

	(void)ino;
	(void)off;
	(void)fi;
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		n--;
	if (n > 4096 || memchr(buf, '\0', n)) {
		log_warn("ctl: command too long or not text; commands: "
			 CTL_COMMANDS);
		fuse_reply_err(req, EINVAL);
		return;
	}
	line = xstrndup(buf, n);
	arg = strchr(line, ' ');
	if (arg)
		*arg++ = '\0';
	if (!strcmp(line, "sync") && !arg) {
		sync_request_refresh(fs->sync);
		fuse_reply_write(req, size);
		goto out;
	}
	grow = !strcmp(line, "grow");
	if (!(grow || !strcmp(line, "sync")) || !arg || !*arg) {
		log_warn("ctl: unknown command \"%s\"; commands: " CTL_COMMANDS,
			 line);
		fuse_reply_err(req, EINVAL);
		goto out;
	}
	id = folder_at(fs, arg);
	if (!id) {
		log_warn("ctl: %s: no folder \"%s\" in the mount", line, arg);
		fuse_reply_err(req, EINVAL);
		goto out;
	}
	sync_request_folder(fs->sync, id, grow);
	fuse_reply_write(req, size);
out:
	free(line);
}
