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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

/* what one open of .convoyfs/status reads: the status as it was at
 * the open, so that reads in pieces fit together */
struct status_buf {
	char *text;
	size_t len;
	struct status_buf *prev, *next; /* in fs->status_open */
};

static char *status_text(struct fs *fs);

/* the control files: status is read, ctl is written */
void file_attr(struct fs *fs, fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	/* its real size, so that tools which trust st_size (a copy, an
	 * editor) get it whole; the text is made anew at each open */
	if (ino == INO_STATUS) {
		char *text = status_text(fs);

		st->st_size = (off_t)strlen(text);
		free(text);
	}
	st->st_mtime = st->st_ctime = st->st_atime = fs->mounted_at;
	st->st_ino = ino;
	st->st_mode = S_IFREG | (ino == INO_CTL ? 0600 : 0400);
	st->st_nlink = 1;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_blksize = 4096;
}

/*
 * @head followed by the FUSE requests served since the mount, in all
 * and by kind ("fuse requests: N" then "fuse lookup: N"...): what the
 * kernel's caches answer alone shows as requests not made. Malloc'ed.
 */
static char *fuse_requests_line(struct fs *fs, const char *head)
{
	static const char *const kind[REQ_NKINDS] = {
		[REQ_LOOKUP] = "lookup", [REQ_GETATTR] = "getattr",
		[REQ_READDIR] = "readdir", [REQ_READDIRPLUS] = "readdirplus",
		[REQ_OPENDIR] = "opendir", [REQ_OPEN] = "open",
		[REQ_READ] = "read", [REQ_RELEASE] = "release",
		[REQ_FLUSH] = "flush", [REQ_GETXATTR] = "getxattr",
		[REQ_LISTXATTR] = "listxattr", [REQ_STATFS] = "statfs",
	};
	unsigned long v[REQ_NKINDS], total = 0;
	char *out, *o;

	for (int i = 0; i < REQ_NKINDS; i++) {
		v[i] = atomic_load_explicit(&fs->reqs[i], memory_order_relaxed);
		total += v[i];
	}
	out = xmalloc(strlen(head) + 64 * (REQ_NKINDS + 1));
	o = out + sprintf(out, "%sfuse requests: %lu\n", head, total);
	for (int i = 0; i < REQ_NKINDS; i++)
		o += sprintf(o, "fuse %s: %lu\n", kind[i], v[i]);
	return out;
}

static char *status_text(struct fs *fs)
{
	struct store_folder *f = NULL;
	struct store *st;
	char *head, *out;
	size_t n = 0, len;

	int64_t horizon = sync_horizon(fs->sync);
	bool have_st = !borrow(fs, &st);

	if (have_st)
		sync_note_ops(fs->sync, st);
	sync_status(fs->sync, &head);
	out = fuse_requests_line(fs, head);
	free(head);
	len = strlen(out);
	if (!have_st)
		return out;
	if (!store_folder_list(st, &f, &n)) {
		for (size_t i = 0; i < n; i++) {
			struct sync_folder_status fst;
			uint64_t count = 0;
			char total[32] = "?", state[256], *line;

			if (f[i].noselect)
				continue;
			folder_count(fs, st, f[i].id, &count);
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
	pthread_mutex_lock(&fs->lock);
	sb->next = fs->status_open;
	if (sb->next)
		sb->next->prev = sb;
	fs->status_open = sb;
	pthread_mutex_unlock(&fs->lock);
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
		struct fs *fs = fs_of(req);
		struct status_buf *sb = (struct status_buf *)(uintptr_t)fi->fh;

		pthread_mutex_lock(&fs->lock);
		if (sb->prev)
			sb->prev->next = sb->next;
		else
			fs->status_open = sb->next;
		if (sb->next)
			sb->next->prev = sb->prev;
		pthread_mutex_unlock(&fs->lock);
		free(sb->text);
		free(sb);
	}
	fuse_reply_err(req, 0);
}

void control_forget_open(struct fs *fs)
{
	while (fs->status_open) {
		struct status_buf *sb = fs->status_open;

		fs->status_open = sb->next;
		free(sb->text);
		free(sb);
	}
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

/* ---- the first sync's progress, on a terminal ---- */

/* how often the progress line is redrawn */
#define PROGRESS_MS 500

/*
 * One mount per process: the progress line's thread and how to stop
 * it. Its own state, not struct fs's: nothing else needs it.
 */
static struct {
	pthread_t thread;
	bool started;
	bool stop; /* guarded by lock */
	pthread_mutex_t lock;
	pthread_cond_t wake;
} progress = { .lock = PTHREAD_MUTEX_INITIALIZER,
	       .wake = PTHREAD_COND_INITIALIZER };

struct progress_counts {
	size_t folders; /* folders that hold messages */
	size_t folders_done; /* of those, complete (or to the horizon) */
	uint64_t known; /* messages in the store */
	uint64_t total; /* messages on the server at the last look */
	bool idle; /* the sync has nothing left to do */
};

static void progress_count(struct fs *fs, struct progress_counts *pc)
{
	int64_t horizon = sync_horizon(fs->sync);
	struct store_folder *f = NULL;
	struct store *st;
	char *text;
	size_t n = 0;

	memset(pc, 0, sizeof(*pc));
	sync_status(fs->sync, &text);
	pc->idle = strstr(text, "\nstate: idle\n") != NULL;
	free(text);
	if (borrow(fs, &st))
		return;
	if (!store_folder_list(st, &f, &n)) {
		for (size_t i = 0; i < n; i++) {
			struct sync_folder_status fst;
			uint64_t count = 0;

			if (f[i].noselect)
				continue;
			folder_count(fs, st, f[i].id, &count);
			pc->folders++;
			pc->known += count;
			if (sync_folder_status(fs->sync, f[i].id, &fst) ||
			    !fst.has_total)
				pc->total += count;
			else
				pc->total += fst.total > count ? fst.total
							       : count;
			if (f[i].low_uid == 1 ||
			    (horizon && f[i].complete_since &&
			     f[i].complete_since <= horizon))
				pc->folders_done++;
		}
		store_folder_list_free(f, n);
	}
	give_back(fs, st);
}

/* "1h02m", "3m05s", "12s" */
static void progress_span(char *buf, size_t len, long long s)
{
	if (s >= 3600)
		snprintf(buf, len, "%lldh%02lldm", s / 3600, s / 60 % 60);
	else if (s >= 60)
		snprintf(buf, len, "%lldm%02llds", s / 60, s % 60);
	else
		snprintf(buf, len, "%llds", s);
}

static void *progress_main(void *arg)
{
	struct fs *fs = arg;
	long long started = now_ms(), waited;
	uint64_t first_known = UINT64_MAX;
	struct progress_counts pc;
	bool stop = false, shown = false;

	while (!stop) {
		char line[256], rate[64] = "", left[32];
		double secs;

		progress_count(fs, &pc);
		if (first_known == UINT64_MAX)
			first_known = pc.known; /* from an earlier mount */
		waited = now_ms() - started;
		if (pc.idle && pc.folders)
			break;
		secs = waited / 1000.0;
		if (secs >= 2 && pc.known > first_known) {
			double r = (pc.known - first_known) / secs;

			progress_span(left, sizeof(left),
				      pc.total > pc.known
					      ? (long long)((pc.total -
							     pc.known) / r)
					      : 0);
			snprintf(rate, sizeof(rate), ", %.0f/s, %s left", r,
				 left);
		}
		snprintf(line, sizeof(line),
			 "first sync: %zu/%zu folders, %llu/%llu messages%s",
			 pc.folders_done, pc.folders,
			 (unsigned long long)pc.known,
			 (unsigned long long)pc.total, rate);
		/* \r and erase to the end: one line, redrawn in place */
		fprintf(stderr, "\r\033[K%s", line);
		fflush(stderr);
		shown = true;

		pthread_mutex_lock(&progress.lock);
		if (!progress.stop) {
			struct timespec ts;

			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += PROGRESS_MS * 1000000L;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&progress.wake, &progress.lock,
					       &ts);
		}
		stop = progress.stop;
		pthread_mutex_unlock(&progress.lock);
	}
	if (stop) {
		if (shown)
			fputs("\r\033[K", stderr);
		return NULL;
	}
	{
		char took[32];

		progress_span(took, sizeof(took), (now_ms() - started) / 1000);
		fprintf(stderr, "%sconvoyfs: first sync done: %llu messages in "
			"%zu folders (%s)\n",
			shown ? "\r\033[K" : "", (unsigned long long)pc.known,
			pc.folders, took);
	}
	return NULL;
}

void progress_start(struct fs *fs)
{
	/* a line redrawn in place means nothing in a log file */
	if (!isatty(STDERR_FILENO))
		return;
	progress.stop = false;
	progress.started = !pthread_create(&progress.thread, NULL,
					   progress_main, fs);
}

void progress_stop(void)
{
	if (!progress.started)
		return;
	pthread_mutex_lock(&progress.lock);
	progress.stop = true;
	pthread_cond_signal(&progress.wake);
	pthread_mutex_unlock(&progress.lock);
	pthread_join(progress.thread, NULL);
	progress.started = false;
}
