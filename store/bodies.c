/*
 * bodies.c - the body cache: one file per umid under
 * <dir>/bodies/<umid % 256 in hex>/<umid>, written atomically, and the
 * bodies table that orders them for eviction.
 *
 * The file is the truth about what is cached. Every path that removes
 * a body removes the file before the row, so a crash or a rollback can
 * leave a row without a file (read as "not cached", dropped by trim) but
 * never a file that nothing accounts for.
 */
#include "store_i.h"

#define LOG_CAT "store"
#include "common.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* reads are recorded at most this long after they happened */
#define TOUCH_DELAY_MS 2000

struct store_body_writer {
	struct store *s; /* borrowed */
	int64_t umid;
	int fd; /* the temporary file, -1 once closed */
	int err; /* first failure of append, returned by commit */
	uint64_t size;
	char dir[PATH_MAX];
	char tmp[PATH_MAX];
};

static atomic_uint tmp_counter;

static int body_dir(struct store *s, int64_t umid, char *buf)
{
	int n = snprintf(buf, PATH_MAX, "%s/%02x", s->bodydir,
			 (unsigned)(umid & 0xff));

	return n < 0 || n >= PATH_MAX ? -ENAMETOOLONG : 0;
}

int store_body_path(struct store *s, int64_t umid, char *buf)
{
	int n = snprintf(buf, PATH_MAX, "%s/%02x/%lld", s->bodydir,
			 (unsigned)(umid & 0xff), (long long)umid);

	return n < 0 || n >= PATH_MAX ? -ENAMETOOLONG : 0;
}

int store_body_unlink(struct store *s, int64_t umid)
{
	char path[PATH_MAX];
	int rc;

	rc = store_body_path(s, umid, path);
	if (rc)
		return rc;
	if (unlink(path) && errno != ENOENT) {
		rc = -errno;
		log_error("cannot remove cached body %s: %s", path,
			  strerror(errno));
		return rc;
	}
	return 0;
}

/* ---- reads and their bookkeeping ---- */

/*
 * A read from a FUSE worker must not wait for the sync thread's write
 * transaction, nor pay an fsync for each open: reads are queued on the
 * connection and written in one short transaction now and then, given
 * up at once when another connection holds the write lock.
 */
void store_touch_flush(struct store *s, bool wait)
{
	sqlite3_stmt *st;
	size_t i;
	int rc = SQLITE_DONE;

	/* never mix them into a transaction of the caller's */
	if (!s->ntouch || !sqlite3_get_autocommit(s->db))
		return;
	if (!wait)
		sqlite3_busy_timeout(s->db, 0);
	if (store_prepare(s, ST_BEGIN, &st))
		goto out;
	rc = sqlite3_step(st);
	store_done(st);
	if (rc != SQLITE_DONE)
		goto out;
	if (store_prepare(s, ST_BODY_TOUCH, &st)) {
		rc = SQLITE_ERROR;
		goto out_rollback;
	}
	for (i = 0; i < s->ntouch && rc == SQLITE_DONE; i++) {
		sqlite3_bind_int64(st, 1, s->touch[i].umid);
		sqlite3_bind_int64(st, 2, s->touch[i].when_ms);
		rc = sqlite3_step(st);
		store_done(st);
	}
	if (rc != SQLITE_DONE)
		goto out_rollback;
	if (store_prepare(s, ST_COMMIT, &st)) {
		rc = SQLITE_ERROR;
		goto out_rollback;
	}
	rc = sqlite3_step(st);
	store_done(st);
	if (rc == SQLITE_DONE) {
		s->ntouch = 0;
		goto out;
	}
out_rollback:
	store_rollback(s);
out:
	if (rc != SQLITE_DONE)
		log_debug("cannot record body reads now: %s",
			  sqlite3_errstr(rc));
	if (!wait)
		sqlite3_busy_timeout(s->db, STORE_BUSY_MS);
}

static void touch(struct store *s, int64_t umid)
{
	long long now = now_ms();
	size_t i;

	for (i = 0; i < s->ntouch; i++) {
		if (s->touch[i].umid == umid) {
			s->touch[i].when_ms = store_now_ms();
			goto flush;
		}
	}
	if (s->ntouch == STORE_TOUCH_MAX) {
		/* still busy after the last try: forget the oldest read */
		memmove(&s->touch[0], &s->touch[1],
			(STORE_TOUCH_MAX - 1) * sizeof(s->touch[0]));
		s->ntouch--;
	}
	if (!s->ntouch)
		s->touch_first_ms = now;
	s->touch[s->ntouch].umid = umid;
	s->touch[s->ntouch].when_ms = store_now_ms();
	s->ntouch++;
flush:
	if (s->ntouch == STORE_TOUCH_MAX ||
	    now - s->touch_first_ms >= TOUCH_DELAY_MS)
		store_touch_flush(s, false);
}

int store_body_open(struct store *s, int64_t umid)
{
	char path[PATH_MAX];
	int fd, rc;

	if (umid <= 0)
		return -ENOENT;
	rc = store_body_path(s, umid, path);
	if (rc)
		return rc;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		rc = -errno;
		if (rc != -ENOENT)
			log_error("cannot open cached body %s: %s", path,
				  strerror(errno));
		return rc;
	}
	touch(s, umid);
	return fd;
}

bool store_body_cached(struct store *s, int64_t umid)
{
	char path[PATH_MAX];

	if (umid <= 0 || store_body_path(s, umid, path))
		return false;
	return access(path, F_OK) == 0;
}

/* ---- writing ---- */

int store_body_begin(struct store *s, int64_t umid,
		     struct store_body_writer **out)
{
	struct store_body_writer *w;
	int rc, tries;

	*out = NULL;
	if (umid < 0)
		return -EINVAL;
	w = xcalloc(1, sizeof(*w));
	w->s = s;
	w->umid = umid;
	w->fd = -1;
	rc = body_dir(s, umid, w->dir);
	if (rc)
		goto out_free;
	/* same directory as the target (or, for a message not known yet,
	 * the same filesystem), so that rename is atomic; the directory is
	 * made the first time it is missing, not tried each time */
	for (tries = 0; tries < 100; tries++) {
		int n = snprintf(w->tmp, sizeof(w->tmp), "%s/.tmp-%lld-%d-%u",
				 w->dir, (long long)umid, (int)getpid(),
				 atomic_fetch_add(&tmp_counter, 1));

		if (n < 0 || n >= (int)sizeof(w->tmp)) {
			rc = -ENAMETOOLONG;
			goto out_free;
		}
		w->fd = open(w->tmp,
			     O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC |
				     O_NOFOLLOW,
			     0600);
		if (w->fd < 0 && errno == ENOENT && !tries) {
			if (!mkdir(w->dir, 0700)) {
				/* umask may have taken bits 0700 asked for */
				chmod(w->dir, 0700);
			} else if (errno != EEXIST) {
				rc = -errno;
				log_error("cannot create directory %s: %s",
					  w->dir, strerror(errno));
				goto out_free;
			}
			continue;
		}
		if (w->fd >= 0 || errno != EEXIST)
			break;
	}
	if (w->fd < 0) {
		rc = -errno;
		log_error("cannot create %s: %s", w->tmp, strerror(errno));
		goto out_free;
	}
	/* 0600 less the umask is owner-only whatever the umask, and the
	 * descriptor writes whatever mode the file got */
	*out = w;
	return 0;

out_free:
	free(w);
	return rc;
}

int store_body_append(struct store_body_writer *w, const void *buf, size_t len)
{
	const char *p = buf;

	if (w->err)
		return w->err;
	while (len) {
		ssize_t n = write(w->fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			w->err = -errno;
			log_error("cannot write body of message %lld: %s",
				  (long long)w->umid, strerror(errno));
			return w->err;
		}
		p += n;
		len -= (size_t)n;
		w->size += (uint64_t)n;
	}
	return 0;
}

static int body_row_put(struct store *s, int64_t umid, uint64_t size)
{
	sqlite3_stmt *st;
	int rc;

	rc = store_prepare(s, ST_BODY_PUT, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, umid);
	sqlite3_bind_int64(st, 2, (int64_t)size);
	/* a body just fetched is about to be read */
	sqlite3_bind_int64(st, 3, store_now_ms());
	rc = sqlite3_step(st);
	rc = rc == SQLITE_DONE ? 0 : store_fail(s, ST_BODY_PUT, rc);
	store_done(st);
	return rc;
}

static void set_real_size(struct store *s, int64_t umid, uint64_t size)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s, ST_MSG_SET_REAL_SIZE, &st);

	if (rc)
		return;
	sqlite3_bind_int64(st, 1, umid);
	sqlite3_bind_int64(st, 2, (int64_t)size);
	rc = sqlite3_step(st);
	if (rc != SQLITE_DONE)
		store_fail(s, ST_MSG_SET_REAL_SIZE, rc);
	store_done(st);
}

void store_body_claim(struct store_body_writer *w, int64_t umid)
{
	w->umid = umid;
}

/* rename @w's file to @path, its directory made if a writer begun
 * before its message was known wrote elsewhere */
static int place(struct store_body_writer *w, const char *path)
{
	char dir[PATH_MAX];
	int rc;

	if (!w->umid)
		return -EINVAL;
	if (!rename(w->tmp, path))
		return 0;
	rc = -errno;
	if (rc == -ENOENT && !body_dir(w->s, w->umid, dir) &&
	    (!mkdir(dir, 0700) || errno == EEXIST) && !rename(w->tmp, path))
		return 0;
	rc = -errno;
	log_error("cannot rename %s to %s: %s", w->tmp, path, strerror(-rc));
	return rc;
}

int store_body_commit_many(struct store *s, struct store_body_writer **w,
			   size_t n)
{
	char path[PATH_MAX];
	size_t placed = 0;
	bool own = false;
	int rc = 0;

	/* one syncfs for all of them instead of an fsync each: the files
	 * must be whole on disk before a name (and a row) says they are
	 * cached, and a journal commit per body is what makes a body
	 * cost more than its bytes */
	for (size_t i = 0; i < n; i++)
		if (!w[i]->err) {
			if (syncfs(w[i]->fd)) {
				rc = -errno;
				log_error("cannot sync the body cache: %s",
					  strerror(errno));
			}
			break;
		}
	for (size_t i = 0; i < n; i++) {
		int err = rc ? rc : w[i]->err;

		if (!err && close(w[i]->fd))
			err = -errno;
		else if (err)
			close(w[i]->fd);
		w[i]->fd = -1;
		if (!err)
			err = store_body_path(w[i]->s, w[i]->umid, path);
		if (!err)
			err = place(w[i], path);
		if (err) {
			store_body_abort(w[i]);
			continue;
		}
		w[placed++] = w[i];
	}
	if (!placed)
		return rc;
	rc = store_tx_own(s, &own);
	for (size_t i = 0; i < placed && !rc; i++) {
		rc = body_row_put(s, w[i]->umid, w[i]->size);
		if (!rc)
			set_real_size(s, w[i]->umid, w[i]->size);
	}
	rc = store_tx_end(s, own, rc);
	for (size_t i = 0; i < placed; i++) {
		/* not accounted for: not cached */
		if (rc && !store_body_path(w[i]->s, w[i]->umid, path))
			unlink(path);
		free(w[i]);
	}
	return rc ? rc : (int)placed;
}

int store_body_commit(struct store_body_writer *w)
{
	char path[PATH_MAX];
	int rc = w->err;

	if (rc)
		goto out_abort;
	if (fsync(w->fd)) {
		rc = -errno;
		log_error("cannot sync %s: %s", w->tmp, strerror(errno));
		goto out_abort;
	}
	rc = close(w->fd) ? -errno : 0;
	w->fd = -1;
	if (rc) {
		log_error("cannot close %s: %s", w->tmp, strerror(-rc));
		goto out_abort;
	}
	rc = store_body_path(w->s, w->umid, path);
	if (rc)
		goto out_abort;
	rc = place(w, path);
	if (rc)
		goto out_abort;
	/* no fsync of the directory: a rename lost in a power cut only
	 * means the body is fetched again; the file's own fsync above keeps
	 * a renamed body whole */
	rc = body_row_put(w->s, w->umid, w->size);
	if (rc)
		/* not durable or not accounted for: not cached */
		unlink(path);
	else
		/* the file's length from now on, whatever RFC822.SIZE said;
		 * if this fails the body is cached all the same */
		set_real_size(w->s, w->umid, w->size);
	free(w);
	return rc;

out_abort:
	store_body_abort(w);
	return rc;
}

void store_body_abort(struct store_body_writer *w)
{
	if (!w)
		return;
	if (w->fd >= 0)
		close(w->fd);
	if (unlink(w->tmp) && errno != ENOENT)
		log_warn("cannot remove %s: %s", w->tmp, strerror(errno));
	free(w);
}

/* ---- eviction ---- */

int store_body_total(struct store *s, uint64_t *total)
{
	int64_t v = 0;
	int rc = store_query_int(s, ST_BODY_TOTAL, &v);

	*total = (uint64_t)v;
	return rc;
}

/* the least recently read bodies whose removal brings @total to @budget */
static int body_victims(struct store *s, uint64_t total, uint64_t budget,
			int64_t **out, size_t *n)
{
	int64_t *v = NULL;
	size_t len = 0, cap = 0;
	sqlite3_stmt *st;
	int rc;

	*out = NULL;
	*n = 0;
	rc = store_prepare(s, ST_BODY_LRU, &st);
	if (rc)
		return rc;
	while (total > budget && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		uint64_t size = (uint64_t)sqlite3_column_int64(st, 1);

		if (len == cap) {
			cap = cap ? 2 * cap : 64;
			v = xrealloc(v, cap * sizeof(*v));
		}
		v[len++] = sqlite3_column_int64(st, 0);
		total = size < total ? total - size : 0;
	}
	if (rc != 0 && rc != SQLITE_ROW && rc != SQLITE_DONE) {
		rc = store_fail(s, ST_BODY_LRU, rc);
		store_done(st);
		free(v);
		return rc;
	}
	store_done(st);
	*out = v;
	*n = len;
	return 0;
}

int store_body_trim(struct store *s, uint64_t budget)
{
	uint64_t total = 0;
	int64_t *victims = NULL;
	size_t n = 0, i;
	bool own;
	int rc;

	/* this connection's own reads count */
	store_touch_flush(s, true);
	rc = store_tx_own(s, &own);
	if (rc)
		return rc;
	rc = store_body_total(s, &total);
	if (rc || total <= budget)
		goto out;
	rc = body_victims(s, total, budget, &victims, &n);
	for (i = 0; !rc && i < n; i++) {
		store_body_unlink(s, victims[i]);
		rc = store_exec_id(s, ST_BODY_DELETE, victims[i]);
	}
	if (!rc)
		log_debug("evicted %zu bodies to fit %llu bytes", n,
			  (unsigned long long)budget);
	free(victims);
out:
	return store_tx_end(s, own, rc);
}

/* ---- what a crash leaves behind ---- */

/* whether statement @id, with @umid bound, finds a row */
static int has_row(struct store *s, enum store_stmt id, int64_t umid,
		   bool *yes)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s, id, &st);

	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, umid);
	rc = sqlite3_step(st);
	*yes = rc == SQLITE_ROW;
	rc = rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : store_fail(s, id, rc);
	store_done(st);
	return rc;
}

/* one file of a body directory: a temporary one goes; a body with no
 * row gets one if its message is still there, else goes */
static void sweep_file(struct store *s, const char *dir, const char *name,
		       struct store_sweep *out)
{
	char path[PATH_MAX];
	struct stat sb;
	char *end;
	long long umid;
	bool yes;

	if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path))
		return;
	if (!strncmp(name, ".tmp-", 5)) {
		/* left by a process that died writing it */
		if (!unlink(path))
			out->temporary++;
		return;
	}
	umid = strtoll(name, &end, 10);
	if (*end || umid <= 0 || lstat(path, &sb) || !S_ISREG(sb.st_mode))
		return;
	if (has_row(s, ST_BODY_HAS, umid, &yes) || yes)
		return;
	if (!has_row(s, ST_MSG_HAS, umid, &yes) && yes &&
	    !body_row_put(s, umid, (uint64_t)sb.st_size)) {
		/* renamed into place, and the crash came before its row */
		out->adopted++;
		return;
	}
	if (!unlink(path))
		out->dropped++;
}

int store_body_sweep(struct store *s, struct store_sweep *out)
{
	int64_t *gone = NULL;
	size_t ngone = 0, cap = 0;
	sqlite3_stmt *st;
	int rc;

	memset(out, 0, sizeof(*out));
	for (unsigned i = 0; i < 256; i++) {
		char dir[PATH_MAX];
		struct dirent *e;
		DIR *d;

		snprintf(dir, sizeof(dir), "%s/%02x", s->bodydir, i);
		d = opendir(dir);
		if (!d)
			continue;
		while ((e = readdir(d)))
			if (e->d_name[0] != '.' || !strncmp(e->d_name, ".tmp-", 5))
				sweep_file(s, dir, e->d_name, out);
		closedir(d);
	}
	/* rows whose file is gone: not cached, and not to be counted */
	rc = store_prepare(s, ST_BODY_ALL, &st);
	if (rc)
		return rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		int64_t umid = sqlite3_column_int64(st, 0);
		char path[PATH_MAX];

		if (store_body_path(s, umid, path) || !access(path, F_OK))
			continue;
		if (ngone == cap) {
			cap = cap ? 2 * cap : 64;
			gone = xrealloc(gone, cap * sizeof(*gone));
		}
		gone[ngone++] = umid;
	}
	rc = rc == SQLITE_DONE ? 0 : store_fail(s, ST_BODY_ALL, rc);
	store_done(st);
	for (size_t i = 0; !rc && i < ngone; i++) {
		rc = store_prepare(s, ST_BODY_DELETE, &st);
		if (rc)
			break;
		sqlite3_bind_int64(st, 1, gone[i]);
		rc = sqlite3_step(st);
		rc = rc == SQLITE_DONE ? 0 : store_fail(s, ST_BODY_DELETE, rc);
		store_done(st);
		if (!rc)
			out->rows++;
	}
	free(gone);
	return rc;
}

/* the mark of an orderly stop: a file beside the database */
#define CLEAN_STOP_NAME "clean-stop"

/* a name made or removed in @dir made durable; 0 or -errno */
static int sync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd))
		rc = -errno;
	close(fd);
	return rc;
}

/* the mark's path in store directory @dir into @path; false if it does
 * not fit */
static bool clean_stop_path(const char *dir, char path[PATH_MAX])
{
	int n = snprintf(path, PATH_MAX, "%s/" CLEAN_STOP_NAME, dir);

	return n > 0 && n < PATH_MAX;
}

bool store_clean_stop_marked(const char *dir)
{
	char path[PATH_MAX];

	return clean_stop_path(dir, path) && !access(path, F_OK);
}

bool store_clean_stop_take(struct store *s)
{
	char path[PATH_MAX];

	if (!clean_stop_path(s->dir, path) || unlink(path))
		return false;
	/* gone for good before anything is written: else a crash now could
	 * leave the mark to a start that needs the sweep */
	return !sync_dir(s->dir);
}

void store_clean_stop_mark(struct store *s)
{
	char path[PATH_MAX];
	int fd;

	if (!clean_stop_path(s->dir, path))
		return;
	fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		log_warn("cannot mark the stop as clean (%s): the next start "
			 "will check the body cache",
			 strerror(errno));
		return;
	}
	close(fd);
	sync_dir(s->dir);
}

/* ---- what prefetch still has to bring ---- */

int store_uncached(struct store *s, int64_t folder, uint32_t from,
		   uint32_t below, int64_t since, size_t max,
		   struct store_uncached *out, size_t *n)
{
	sqlite3_stmt *st;
	int rc;

	*n = 0;
	rc = store_prepare(s, ST_BODY_UNCACHED, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, folder);
	sqlite3_bind_int64(st, 2, below);
	sqlite3_bind_int64(st, 3, since);
	sqlite3_bind_int64(st, 4, (int64_t)max);
	sqlite3_bind_int64(st, 5, from);
	while (*n < max && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		out[*n].umid = sqlite3_column_int64(st, 0);
		out[*n].uid = (uint32_t)sqlite3_column_int64(st, 1);
		out[*n].size = (uint64_t)sqlite3_column_int64(st, 2);
		(*n)++;
	}
	rc = rc == SQLITE_ROW || rc == SQLITE_DONE
		     ? 0
		     : store_fail(s, ST_BODY_UNCACHED, rc);
	store_done(st);
	return rc;
}

int store_body_counts(struct store *s, uint64_t *cached, uint64_t *messages)
{
	int64_t a = 0, b = 0;
	int rc = store_query_int(s, ST_BODY_COUNT, &a);

	if (!rc)
		rc = store_query_int(s, ST_MSG_COUNT_ON_SERVER, &b);
	*cached = (uint64_t)a;
	*messages = (uint64_t)b;
	return rc;
}
