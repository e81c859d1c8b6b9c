/*
 * fetch.c - bodies on demand: an open of a message not yet cached
 * queues a request with a callback and returns; a fetcher thread, on a
 * connection of its own, runs UID FETCH uid BODY.PEEK[] (PEEK: reading
 * never marks mail \Seen), streams the literal into the body cache,
 * commits it atomically and calls back. Requests are served first come,
 * first served; the reaper thread answers EIO to a reader whose request
 * saw no progress for the configured timeout since it asked, so a dead
 * server never hangs a read and a crowd of readers cannot keep an old
 * one waiting for ever.
 */
#define LOG_CAT "fetch"
#include "engine.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"

struct body_sink {
	struct sync *s;
	struct fetch_req *req; /* taken by this fetcher: not freed under it */
	struct store_body_writer *w;
};

static int on_bytes(const char *bytes, size_t len, void *ctx)
{
	struct body_sink *b = ctx;
	int rc = store_body_append(b->w, bytes, len);

	/* a big body on a slow link is waited for while its bytes come */
	if (!rc) {
		pthread_mutex_lock(&b->s->lock);
		b->req->progress_ms = now_ms();
		pthread_mutex_unlock(&b->s->lock);
	}
	return rc;
}

static void set_state(struct fetcher *f, enum conn_state st)
{
	pthread_mutex_lock(&f->s->lock);
	f->state = st;
	pthread_mutex_unlock(&f->s->lock);
}

static void drop_conn(struct fetcher *f)
{
	conn_close(f->conn);
	f->conn = NULL;
	set_state(f, CONN_OFFLINE);
}

/*
 * A connection for this fetcher: the one it has, or a new one, made no
 * sooner than the backoff allows. A wait longer than half the timeout
 * fails the request at once (-EIO) rather than eat the reader's time.
 */
static int ensure_conn(struct fetcher *f)
{
	long long wait = f->retry_at_ms - now_ms();
	char err[256];
	int rc;

	if (f->conn && !conn_is_broken(f->conn))
		return 0;
	if (f->conn)
		drop_conn(f);
	if (wait > (long long)f->s->cfg.timeout * 500)
		return -EIO;
	while (wait > 0 && !sync_is_stopping(f->s)) {
		struct timespec ts = { 0, 100 * 1000000 };

		nanosleep(&ts, NULL);
		wait -= 100;
	}
	set_state(f, CONN_CONNECTING);
	rc = conn_open(&f->s->cfg, &f->conn, err, sizeof(err));
	if (rc) {
		f->fails++;
		f->retry_at_ms = now_ms() + sync_backoff_ms(f->fails);
		set_state(f, CONN_OFFLINE);
		sync_set_error(f->s, err);
		log_warn("%s", err);
		return rc;
	}
	atomic_fetch_add(&f->s->logins, 1);
	set_state(f, CONN_ONLINE);
	return 0;
}

/*
 * fetch_one - the body @req asks for into the cache. 0, -ENOENT when the
 * server no longer has it, -EIO otherwise.
 */
static int fetch_one(struct fetcher *f, struct fetch_req *req)
{
	struct store_msg m = { 0 };
	struct store_folder fo = { 0 };
	struct body_sink sink = { .s = f->s, .req = req };
	int64_t umid = req->umid;
	uint64_t got = 0;
	int rc, g, cb_rc = 0;

	if (store_body_cached(f->st, umid))
		return 0;
	rc = store_msg_get(f->st, umid, &m);
	if (rc)
		return rc;
	if (!m.uid) {
		/* an orphan: not where we knew it any more */
		rc = -ENOENT;
		goto out_msg;
	}
	rc = store_folder_get(f->st, m.folder, &fo);
	if (rc)
		goto out_msg;
	rc = ensure_conn(f);
	if (rc) {
		rc = -EIO;
		goto out_folder;
	}
	rc = conn_select(f->conn, fo.name, true);
	if (rc)
		goto out_folder;
	if (f->conn->imap->imap_selection_info->sel_uidvalidity !=
	    fo.uidvalidity) {
		/* the UIDs we hold are stale until the sync relearns them */
		rc = -ENOENT;
		goto out_folder;
	}
	rc = store_body_begin(f->st, umid, &sink.w);
	if (rc)
		goto out_folder;
	g = imap_fetch_body(f->conn, m.uid, on_bytes, &sink, &got, &cb_rc);
	if (g != IMAP_OK) {
		store_body_abort(sink.w);
		rc = cb_rc == -ENOSPC ? -ENOSPC : -EIO;
		goto out_folder;
	}
	if (!got && m.size) {
		/* no FETCH came back: expunged by another client */
		store_body_abort(sink.w);
		rc = -ENOENT;
		goto out_folder;
	}
	rc = store_body_commit(sink.w);
	if (!rc)
		f->fails = 0;
	if (!rc && got != m.size) {
		struct sync_change c = { .kind = SYNC_MESSAGE_SIZE,
					 .folder = m.folder,
					 .msg = &m };

		log_warn("message %lld: the server said %llu bytes and sent "
			 "%llu; the file is %llu bytes long",
			 (long long)umid, (unsigned long long)m.size,
			 (unsigned long long)got, (unsigned long long)got);
		if (f->s->changed)
			f->s->changed(&c, f->s->changed_aux);
	}
	/* keep the cache within its budget: evict the least recently read */
	if (!rc && atomic_fetch_add(&f->s->bodies_fetched, 1) % 64 == 63 &&
	    f->s->cfg.cache_budget)
		store_body_trim(f->st, f->s->cfg.cache_budget);
out_folder:
	store_folder_release(&fo);
out_msg:
	store_msg_release(&m);
	if (rc == -ENOSPC) {
		char why[PATH_MAX + 64];

		snprintf(why, sizeof(why),
			 "no space left for bodies in %s", f->s->cfg.cache_dir);
		sync_set_error(f->s, why);
		log_warn("%s", why);
	}
	return rc;
}

/* the oldest request not taken; those whose readers all gave up go */
static struct fetch_req *next_request(struct sync *s)
{
	for (struct fetch_req **p = &s->queue; *p;) {
		struct fetch_req *r = *p;

		if (!r->taken && !r->waiters) {
			*p = r->next;
			free(r);
			continue;
		}
		if (!r->taken)
			return r;
		p = &r->next;
	}
	return NULL;
}

static void unlink_req(struct sync *s, struct fetch_req *req)
{
	for (struct fetch_req **p = &s->queue; *p; p = &(*p)->next)
		if (*p == req) {
			*p = req->next;
			return;
		}
}

/* tell each of @w's readers @rc (outside the lock: they reply to FUSE) */
static void answer(struct fetch_waiter *w, int rc)
{
	while (w) {
		struct fetch_waiter *next = w->next;

		w->fn(rc, w->aux);
		free(w);
		w = next;
	}
}

static void *fetcher_main(void *arg)
{
	struct fetcher *f = arg;
	struct sync *s = f->s;

	pthread_mutex_lock(&s->lock);
	for (;;) {
		struct fetch_req *req = NULL;
		struct fetch_waiter *w;
		int rc;

		while (!s->stopping && !(req = next_request(s))) {
			struct timespec ts;

			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += 1;
			if (pthread_cond_timedwait(&s->fetch_wake, &s->lock,
						   &ts) != ETIMEDOUT ||
			    !f->conn)
				continue;
			/* idle: a server that closed the connection shows
			 * as input waiting; NOOP finds out */
			pthread_mutex_unlock(&s->lock);
			if (imap_has_input(f->conn) &&
			    imap_noop(f->conn) == IMAP_CONN_BAD)
				drop_conn(f);
			pthread_mutex_lock(&s->lock);
		}
		if (s->stopping)
			break;
		req->taken = true;
		pthread_mutex_unlock(&s->lock);

		rc = fetch_one(f, req);
		if (rc == -EIO && !sync_is_stopping(s)) {
			/* one retry on a fresh connection: the old one may
			 * have been dropped by the server while idle */
			rc = fetch_one(f, req);
		}

		pthread_mutex_lock(&s->lock);
		w = req->waiters;
		req->waiters = NULL;
		unlink_req(s, req);
		pthread_mutex_unlock(&s->lock);
		answer(w, rc);
		free(req);
		pthread_mutex_lock(&s->lock);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

int sync_fetch_body(struct sync *s, int64_t umid, sync_fetched_fn *fn,
		    void *aux)
{
	struct fetch_waiter *w;
	struct fetch_req *req;

	pthread_mutex_lock(&s->lock);
	if (s->stopping) {
		pthread_mutex_unlock(&s->lock);
		return -ESHUTDOWN;
	}
	for (req = s->queue; req; req = req->next)
		if (req->umid == umid)
			break;
	if (!req) {
		struct fetch_req **tail = &s->queue;

		/* first come, first served: at the tail */
		while (*tail)
			tail = &(*tail)->next;
		req = xcalloc(1, sizeof(*req));
		req->umid = umid;
		req->progress_ms = now_ms();
		*tail = req;
		pthread_cond_signal(&s->fetch_wake);
	}
	w = xcalloc(1, sizeof(*w));
	w->fn = fn;
	w->aux = aux;
	w->joined = now_ms();
	w->next = req->waiters;
	req->waiters = w;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

/*
 * The reaper: every reader its own deadline, a timeout after it asked or
 * after its body last made progress, whatever the fetchers are stuck
 * in; past it the reader gets EIO and the request, if nobody waits for
 * it any more and no fetcher has it, goes.
 */
static void *reaper_main(void *arg)
{
	struct sync *s = arg;
	long long limit = (long long)s->cfg.timeout * 1000;

	pthread_mutex_lock(&s->lock);
	while (!s->stopping) {
		struct fetch_waiter *late = NULL;
		struct timespec ts;
		long long now = now_ms();

		for (struct fetch_req *r = s->queue; r; r = r->next)
			for (struct fetch_waiter **p = &r->waiters; *p;) {
				struct fetch_waiter *w = *p;
				long long since = w->joined > r->progress_ms
							  ? w->joined
							  : r->progress_ms;

				if (now - since <= limit) {
					p = &w->next;
					continue;
				}
				*p = w->next;
				w->next = late;
				w->umid = r->umid;
				late = w;
			}
		if (late) {
			pthread_mutex_unlock(&s->lock);
			for (struct fetch_waiter *w = late; w; w = w->next)
				log_warn("body of message %lld not fetched in "
					 "time", (long long)w->umid);
			answer(late, -EIO);
			pthread_mutex_lock(&s->lock);
			continue;
		}
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 250 * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&s->fetch_done, &s->lock, &ts);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

int fetch_start(struct sync *s)
{
	int rc = -pthread_create(&s->reaper, NULL, reaper_main, s);

	if (rc)
		return rc;
	s->reaper_started = true;
	for (int i = 0; i < FETCHERS; i++) {
		struct fetcher *f = &s->fetchers[i];

		f->s = s;
		rc = store_open(s->cfg.cache_dir, &f->st);
		if (!rc)
			rc = store_cache_only(f->st);
		if (!rc)
			rc = -pthread_create(&f->thread, NULL, fetcher_main, f);
		if (rc) {
			store_close(f->st);
			f->st = NULL;
			pthread_mutex_lock(&s->lock);
			s->stopping = true;
			pthread_cond_broadcast(&s->fetch_wake);
			pthread_cond_broadcast(&s->fetch_done);
			pthread_mutex_unlock(&s->lock);
			fetch_stop(s);
			return rc;
		}
	}
	return 0;
}

void fetch_stop(struct sync *s)
{
	struct fetch_waiter *left = NULL;

	for (int i = 0; i < FETCHERS; i++) {
		struct fetcher *f = &s->fetchers[i];

		if (!f->st)
			continue;
		pthread_join(f->thread, NULL);
		conn_close(f->conn);
		f->conn = NULL;
		store_close(f->st);
		f->st = NULL;
	}
	if (s->reaper_started) {
		pthread_join(s->reaper, NULL);
		s->reaper_started = false;
	}
	/* every reader still waiting is answered */
	pthread_mutex_lock(&s->lock);
	while (s->queue) {
		struct fetch_req *r = s->queue;

		while (r->waiters) {
			struct fetch_waiter *w = r->waiters;

			r->waiters = w->next;
			w->next = left;
			left = w;
		}
		s->queue = r->next;
		free(r);
	}
	pthread_mutex_unlock(&s->lock);
	answer(left, -ESHUTDOWN);
}
