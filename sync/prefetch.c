/*
 * prefetch.c - bodies brought before anyone opens them. As the first
 * sync stores headers, a thread with a connection of its own walks the
 * folders (INBOX first), newest message first, and fetches the bodies
 * not yet cached many at a time: one UID FETCH of a set of UIDs per
 * batch, the bytes streamed to disk as they come, the batch made
 * durable by one syncfs and recorded in one transaction, by a second
 * thread while the next batch comes. A reader never waits behind it:
 * opens go to the fetchers' connections (fetch.c). It stops at nine
 * tenths of the cache budget, so it never evicts what was read, and
 * leaves the rest to on-demand fetches; new mail wakes it.
 */
#define LOG_CAT "fetch"
#include "engine.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common.h"

/* a batch: at most this many messages, and about this many bytes, so
 * one command amortises its round trip yet a cut link loses little */
#define PF_BATCH_MSGS 500
#define PF_BATCH_BYTES (8ULL << 20)
/* all done: look at whole folders again this often (new mail wakes it
 * sooner, and then looks at new mail only) */
#define PF_REST_MS (3600 * 1000)
/* caught up with a first sync still learning: look again at least
 * this often (each batch it stores wakes prefetch sooner) */
#define PF_LEARNING_MS 1000
/* the cache full: look again this often */
#define PF_FULL_MS 10000
/* counts for the status file at most this often */
#define PF_COUNT_MS 2000
/* the cache's bytes summed again at most this often (see struct
 * prefetch's held) */
#define PF_HELD_MS 10000

/* one batch on the wire */
struct pf_batch {
	struct prefetch *p;
	struct store_uncached *v; /* by UID ascending */
	size_t n;
	bool *got;
	struct store_body_writer *cur; /* the body now arriving */
	uint64_t cur_len; /* its bytes so far */
	uint64_t *len; /* the length of each body kept */
	struct store_body_writer **done; /* whole bodies of asked UIDs */
	size_t ndone;
	unsigned refused; /* responses that were not one BODY[] */
	int err; /* first failure to keep bytes */
};

static void set_state(struct prefetch *p, enum prefetch_state st)
{
	pthread_mutex_lock(&p->s->lock);
	p->state = st;
	pthread_mutex_unlock(&p->s->lock);
}

/* wait up to @ms, or until woken (new mail, stop); false when stopping */
static bool pf_sleep(struct prefetch *p, long long ms)
{
	struct sync *s = p->s;
	struct timespec ts;
	bool go;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&s->lock);
	if (!s->stopping && !p->woken)
		pthread_cond_timedwait(&p->wake, &s->lock, &ts);
	p->woken = false;
	go = !s->stopping;
	pthread_mutex_unlock(&s->lock);
	return go;
}

static void update_counts(struct prefetch *p, bool now)
{
	uint64_t cached, total;
	long long t = now_ms();

	if (!now && t - p->counted_ms < PF_COUNT_MS)
		return;
	p->counted_ms = t;
	if (store_body_counts(p->st, &cached, &total))
		return;
	pthread_mutex_lock(&p->s->lock);
	p->cached = cached;
	p->total = total;
	pthread_mutex_unlock(&p->s->lock);
}

static int ensure_conn(struct prefetch *p)
{
	char err[256];
	int rc;

	if (p->conn && !conn_is_broken(p->conn))
		return 0;
	conn_close(p->conn);
	p->conn = NULL;
	if (p->retry_at_ms > now_ms() &&
	    !pf_sleep(p, p->retry_at_ms - now_ms()))
		return -ESHUTDOWN;
	set_state(p, PREFETCH_CONNECTING);
	rc = conn_open(&p->s->cfg, &p->conn, err, sizeof(err));
	if (rc) {
		p->fails++;
		p->retry_at_ms = now_ms() + sync_backoff_ms(p->fails);
		log_warn("prefetch: %s", err);
		return rc;
	}
	atomic_fetch_add(&p->s->logins, 1);
	return 0;
}

static int cmp_uid(const void *a, const void *b)
{
	const struct store_uncached *x = a, *y = b;

	return x->uid < y->uid ? -1 : x->uid > y->uid;
}

static int on_bytes(const char *bytes, size_t len, void *ctx)
{
	struct pf_batch *b = ctx;
	int rc;

	/* a stop cuts the batch short: the session goes with it */
	if (sync_is_stopping(b->p->s))
		return -ECANCELED;
	if (b->err)
		return 0; /* kept nowhere; the response is still read */
	if (!b->cur) {
		rc = store_body_begin(b->p->st, 0, &b->cur);
		if (rc) {
			b->err = rc;
			return rc == -ENOSPC ? rc : 0;
		}
	}
	rc = store_body_append(b->cur, bytes, len);
	b->cur_len += len;
	if (rc) {
		b->err = rc;
		store_body_abort(b->cur);
		b->cur = NULL;
		return rc == -ENOSPC ? rc : 0;
	}
	return 0;
}

static void on_end(uint32_t uid, enum imap_body_kind kind, void *ctx)
{
	struct pf_batch *b = ctx;
	struct store_uncached key = { .uid = uid }, *m;

	m = bsearch(&key, b->v, b->n, sizeof(*b->v), cmp_uid);
	if (b->cur && kind == IMAP_BODY_WHOLE && m && !b->got[m - b->v]) {
		b->got[m - b->v] = true;
		b->len[m - b->v] = b->cur_len;
		store_body_claim(b->cur, m->umid);
		b->done[b->ndone++] = b->cur;
	} else if (b->cur || kind != IMAP_BODY_WHOLE) {
		/* not what the server has for a message asked for: one
		 * line per batch, and the message waits for an open,
		 * whose fetch judges it alone */
		if (!b->refused++)
			log_warn("prefetch: a FETCH response in %s refused "
				 "(UID %u: %s)",
				 b->p->conn->selected ? b->p->conn->selected
						      : "?",
				 uid,
				 !m ? "not asked for" :
				 kind == IMAP_BODY_PART ? "not BODY[] of it all" :
				 kind == IMAP_BODY_TWO ? "more than one body" :
							 "sent twice");
		store_body_abort(b->cur);
	}
	b->cur = NULL;
	b->cur_len = 0;
}

/*
 * Keeping a batch (one syncfs, a rename each, one transaction) takes
 * about half as long as fetching it: a thread of its own keeps batch k
 * while batch k+1 comes over the wire. One batch waits at most.
 */
struct pf_kept {
	int64_t umid;
	uint64_t len; /* the body's real length */
	uint64_t said; /* RFC822.SIZE */
};
struct pf_job {
	struct store_body_writer **w;
	struct pf_kept *k;
	size_t n;
	uint64_t bytes;
	long long t0; /* when its fetch began, for the rate */
};

/* tell fs/ of bodies whose length is not what RFC822.SIZE said: the
 * kernel holds the old size and would cut reads at it */
static void sizes_changed(struct prefetch *p, const struct pf_job *j)
{
	for (size_t i = 0; i < j->n && p->s->changed; i++) {
		struct store_msg m = { 0 };

		if (j->k[i].len == j->k[i].said ||
		    store_msg_get(p->cst, j->k[i].umid, &m))
			continue;
		struct sync_change c = { .kind = SYNC_MESSAGE_SIZE,
					 .folder = m.folder,
					 .msg = &m };

		p->s->changed(&c, p->s->changed_aux);
		store_msg_release(&m);
	}
}

static void keep(struct prefetch *p, struct pf_job *j)
{
	long long t1 = now_ms();
	int kept = store_body_commit_many(p->cst, j->w, j->n);

	log_debug("prefetch: %zu bodies, %llu bytes kept in %lld ms", j->n,
		  (unsigned long long)j->bytes, now_ms() - t1);
	if (kept < 0) {
		pthread_mutex_lock(&p->s->lock);
		p->keep_rc = kept;
		pthread_mutex_unlock(&p->s->lock);
		return;
	}
	sizes_changed(p, j);
	long long dt = now_ms() - j->t0;

	pthread_mutex_lock(&p->s->lock);
	p->bytes += j->bytes;
	/* the rate of the last batches, smoothed */
	if (dt > 0)
		p->rate = p->rate ? (p->rate * 3 + j->bytes * 1000 / dt) / 4
				  : j->bytes * 1000 / dt;
	pthread_mutex_unlock(&p->s->lock);
	atomic_fetch_add(&p->s->bodies_prefetched, (unsigned long long)kept);
}

static void *keeper_main(void *arg)
{
	struct prefetch *p = arg;
	struct sync *s = p->s;

	pthread_mutex_lock(&s->lock);
	for (;;) {
		struct pf_job *j;

		while (!p->job && !p->keeper_stop)
			pthread_cond_wait(&p->kept, &s->lock);
		if (!p->job)
			break;
		j = p->job;
		p->keeping = true;
		pthread_mutex_unlock(&s->lock);
		keep(p, j);
		free(j->w);
		free(j->k);
		free(j);
		pthread_mutex_lock(&s->lock);
		p->job = NULL;
		p->keeping = false;
		/* kept or dropped, counted as kept: room() errs on the
		 * full side until the next sum */
		p->held += p->inflight;
		p->inflight = 0;
		pthread_cond_broadcast(&p->kept);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

/* wait until the keeper holds no batch; its failure (-ENOSPC) then */
static int keeper_drain(struct prefetch *p)
{
	int rc;

	pthread_mutex_lock(&p->s->lock);
	while (p->job)
		pthread_cond_wait(&p->kept, &p->s->lock);
	rc = p->keep_rc;
	p->keep_rc = 0;
	pthread_mutex_unlock(&p->s->lock);
	return rc;
}

/* hand a batch to the keeper, once it is done with the last one */
static int keeper_give(struct prefetch *p, struct pf_job *j)
{
	int rc = keeper_drain(p);

	if (rc) {
		for (size_t i = 0; i < j->n; i++)
			store_body_abort(j->w[i]);
		free(j->w);
		free(j->k);
		free(j);
		return rc;
	}
	pthread_mutex_lock(&p->s->lock);
	p->job = j;
	p->inflight = j->bytes;
	pthread_cond_broadcast(&p->kept);
	pthread_mutex_unlock(&p->s->lock);
	return 0;
}

/*
 * One batch: @v's @n messages of the folder selected (sorted by UID
 * here), fetched; what came whole goes to the keeper. Returns 0,
 * -ENOSPC, or -EIO when the connection was lost.
 */
static int fetch_batch(struct prefetch *p, struct store_uncached *v, size_t n)
{
	struct imap_uid_range *r = xcalloc(n, sizeof(*r));
	uint32_t *uids = xcalloc(n, sizeof(*uids));
	struct pf_batch b = { .p = p, .v = v, .n = n };
	struct imap_bodies cb = { .bytes = on_bytes, .end = on_end,
				  .ctx = &b };
	long long t0 = now_ms();
	size_t nr = 0, take;
	struct pf_job *j;
	int g, rc = 0;

	qsort(v, n, sizeof(*v), cmp_uid);
	for (size_t i = 0; i < n; i++)
		uids[i] = v[i].uid;
	/* runs of consecutive UIDs only: a gap may hold a body already
	 * cached, or a message we do not know */
	take = imap_uid_ranges(uids, n, UINT32_MAX, IMAP_SET_MAX_TEXT, r, &nr);
	b.n = n = take;
	b.got = xcalloc(n, sizeof(*b.got));
	b.len = xcalloc(n, sizeof(*b.len));
	b.done = xcalloc(n, sizeof(*b.done));
	g = imap_fetch_bodies(p->conn, r, nr, &cb);
	store_body_abort(b.cur);
	b.cur = NULL;
	log_debug("prefetch: %zu of %zu bodies in %s fetched in %lld ms",
		  b.ndone, n, p->conn->selected ? p->conn->selected : "?",
		  now_ms() - t0);
	if (g != IMAP_OK) {
		/* the connection lost, or NO or BAD for the set: nothing of
		 * it is kept, and the messages wait for the next try or an
		 * open */
		for (size_t i = 0; i < b.ndone; i++)
			store_body_abort(b.done[i]);
		b.ndone = 0;
		if (g == IMAP_CONN_BAD || g == IMAP_CANCELLED)
			rc = cb.cb_rc == -ENOSPC || b.err == -ENOSPC ? -ENOSPC
								     : -EIO;
	}
	if (!rc && b.err == -ENOSPC)
		rc = -ENOSPC;
	if (b.ndone) {
		j = xcalloc(1, sizeof(*j));
		j->w = b.done;
		j->k = xcalloc(b.ndone, sizeof(*j->k));
		j->t0 = t0;
		for (size_t i = 0; i < n; i++) {
			if (!b.got[i])
				continue;
			j->k[j->n].umid = v[i].umid;
			j->k[j->n].len = b.len[i];
			j->k[j->n].said = v[i].size;
			j->bytes += b.len[i];
			j->n++;
		}
		b.done = NULL;
		if (keeper_give(p, j) == -ENOSPC)
			rc = -ENOSPC;
	}
	free(b.got);
	free(b.len);
	free(b.done);
	free(uids);
	free(r);
	return rc;
}

/* the bytes prefetch may still add to the cache: 0 when it is full */
static uint64_t room(struct prefetch *p)
{
	uint64_t total = 0, limit = p->s->cfg.cache_budget / 10 * 9;
	long long now = now_ms();
	bool stale;

	if (!limit)
		return UINT64_MAX;
	pthread_mutex_lock(&p->s->lock);
	stale = !p->held_at_ms || now - p->held_at_ms >= PF_HELD_MS;
	pthread_mutex_unlock(&p->s->lock);
	/* bodies opened meanwhile and trims are counted at the next sum;
	 * trim keeps the budget whatever this says */
	if (stale) {
		if (store_body_total(p->st, &total))
			return 0;
		pthread_mutex_lock(&p->s->lock);
		p->held = total;
		p->held_at_ms = now;
		pthread_mutex_unlock(&p->s->lock);
	}
	/* and the batch the keeper still holds */
	pthread_mutex_lock(&p->s->lock);
	total = p->held + p->inflight;
	pthread_mutex_unlock(&p->s->lock);
	return total < limit ? limit - total : 0;
}

/*
 * One folder, newest first: every body not cached with a UID from @from
 * and a date at or after @since. Returns 0 when the folder is done, -ENOSPC when the
 * cache is full, -EIO (connection lost: try again later), -ESHUTDOWN.
 */
static int prefetch_folder(struct prefetch *p, const struct store_folder *fo,
			   uint32_t from, int64_t since)
{
	struct store_uncached *v = xcalloc(PF_BATCH_MSGS, sizeof(*v));
	uint32_t below = UINT32_MAX, top;
	int rc = 0;

	while (!rc) {
		uint64_t left = room(p), sum = 0;
		size_t n = 0, k;

		if (sync_is_stopping(p->s)) {
			rc = -ESHUTDOWN;
			break;
		}
		if (!left) {
			rc = -ENOSPC;
			break;
		}
		rc = store_uncached(p->st, fo->id, from, below, since,
				    p->batch_max, v, &n);
		if (rc || !n)
			break;
		/* within the batch's bytes and the room left (the first
		 * always, so that one big message still comes) */
		for (k = 0; k < n; k++) {
			if (k && (sum + v[k].size > PF_BATCH_BYTES ||
				  sum + v[k].size > left))
				break;
			sum += v[k].size;
		}
		/* the batch is newest first: the next one starts below it,
		 * and a retry of this one at its top */
		top = v[0].uid;
		below = v[k - 1].uid;
		rc = ensure_conn(p);
		if (!rc)
			rc = conn_select(p->conn, fo->name, true);
		if (rc == -ENOENT) {
			rc = 0; /* the folder went: the sync will see */
			break;
		}
		if (rc)
			break;
		if (p->conn->imap->imap_selection_info->sel_uidvalidity !=
		    fo->uidvalidity)
			break; /* stale UIDs until the sync relearns them */
		set_state(p, PREFETCH_RUNNING);
		rc = fetch_batch(p, v, k);
		if (rc == -EIO) {
			/* a message that breaks the connection must not stop
			 * prefetch for ever: the batch again, smaller each
			 * time (after a backoff), and one that breaks it alone
			 * twice is left for an open to fetch */
			p->fails++;
			p->retry_at_ms = now_ms() + sync_backoff_ms(p->fails);
			if (k == 1 && p->fails >= 2) {
				log_warn("prefetch: UID %u in %s skipped: its "
					 "body breaks the connection",
					 top, fo->name);
				p->fails = 0;
			} else {
				below = top == UINT32_MAX ? top : top + 1;
			}
			p->batch_max = p->batch_max > 1 ? p->batch_max / 2 : 1;
			rc = 0;
		} else if (!rc) {
			p->fails = 0;
			p->batch_max = p->batch_max * 2 > PF_BATCH_MSGS
					       ? PF_BATCH_MSGS
					       : p->batch_max * 2;
		}
		update_counts(p, false);
	}
	free(v);
	return rc;
}

static bool is_inbox(const struct store_folder *f)
{
	return !strcasecmp(f->name, "INBOX");
}

/*
 * Where the last complete pass over a folder ended (its UIDNEXT then):
 * the next pass looks only above it, so new mail costs a look at new
 * mail and not at the whole folder. A pass cut short by a full cache
 * forgets every mark: what it left is below them.
 */
static uint32_t *mark_of(struct prefetch *p, const struct store_folder *f)
{
	for (size_t i = 0; i < p->nmarks; i++)
		if (p->marks[i].folder == f->id) {
			if (p->marks[i].uidvalidity != f->uidvalidity) {
				p->marks[i].uidvalidity = f->uidvalidity;
				p->marks[i].from = 0;
			}
			return &p->marks[i].from;
		}
	p->marks = xrealloc(p->marks, (p->nmarks + 1) * sizeof(*p->marks));
	p->marks[p->nmarks].folder = f->id;
	p->marks[p->nmarks].uidvalidity = f->uidvalidity;
	p->marks[p->nmarks].from = 0;
	return &p->marks[p->nmarks++].from;
}

/*
 * One pass over every folder, INBOX first; 0 when all is cached. With
 * @settled false the first sync is still learning the folders: what it
 * has stored is fetched, and no mark is set, since older mail may still
 * come below what this pass saw.
 */
static int prefetch_pass(struct prefetch *p, int64_t since, bool settled)
{
	struct store_folder *fo = NULL;
	size_t n = 0;
	int rc = store_folder_list(p->st, &fo, &n);

	for (int inbox = 1; !rc && inbox >= 0; inbox--)
		for (size_t i = 0; !rc && i < n; i++) {
			uint32_t *mark;

			if (is_inbox(&fo[i]) != inbox || fo[i].noselect ||
			    !fo[i].uidvalidity)
				continue;
			mark = mark_of(p, &fo[i]);
			rc = prefetch_folder(p, &fo[i], *mark, since);
			if (!rc && settled)
				*mark = fo[i].uidnext;
		}
	if (rc == -ENOSPC)
		p->nmarks = 0;
	store_folder_list_free(fo, n);
	return rc;
}

static void *prefetch_main(void *arg)
{
	struct prefetch *p = arg;
	struct sync *s = p->s;

	/* bodies come beside the first sync, not after it: each batch of
	 * headers it stores wakes this thread (sync_notify), which fetches
	 * the bodies stored so far, newest first, as the sync learns older
	 * mail; the connection is made at once, so the first batch does
	 * not wait for a handshake and a login */
	ensure_conn(p);
	set_state(p, PREFETCH_WAITING);
	long long whole_ms = now_ms(); /* when marks were last forgotten */

	while (!sync_is_stopping(s)) {
		int64_t since = 0;
		long long wait;
		bool settled;
		int rc;

		pthread_mutex_lock(&s->lock);
		settled = s->first_sync_done;
		pthread_mutex_unlock(&s->lock);
		if (s->cfg.prefetch == PREFETCH_RECENT)
			since = (int64_t)time(NULL) -
				(int64_t)s->cfg.prefetch_days * 86400;
		/* now and then a look at whole folders, for what the marks
		 * cannot see (a body evicted, an open that failed) */
		if (now_ms() - whole_ms >= PF_REST_MS) {
			p->nmarks = 0;
			whole_ms = now_ms();
		}
		rc = prefetch_pass(p, since, settled);
		/* the last batch kept before the counts and the state */
		if (keeper_drain(p) == -ENOSPC && !rc)
			rc = -ENOSPC;
		update_counts(p, true);
		if (rc == -ESHUTDOWN)
			break;
		if (rc == -ENOSPC) {
			set_state(p, PREFETCH_FULL);
			wait = PF_FULL_MS;
		} else if (rc) {
			set_state(p, PREFETCH_OFFLINE);
			wait = p->retry_at_ms > now_ms() ? p->retry_at_ms - now_ms()
							 : 1000;
		} else if (!settled) {
			/* caught up with the first sync: its next batch of
			 * headers, or its end, wakes this thread */
			set_state(p, PREFETCH_WAITING);
			wait = PF_LEARNING_MS;
		} else {
			set_state(p, PREFETCH_DONE);
			/* an idle connection would only be dropped by the
			 * server: a new one when there is work again */
			conn_close(p->conn);
			p->conn = NULL;
			/* until new mail wakes it */
			wait = PF_REST_MS;
		}
		if (!pf_sleep(p, wait))
			break;
	}
	return NULL;
}

void prefetch_wake(struct sync *s)
{
	pthread_mutex_lock(&s->lock);
	s->pf.woken = true;
	pthread_cond_signal(&s->pf.wake);
	pthread_mutex_unlock(&s->lock);
}

int prefetch_start(struct sync *s)
{
	struct prefetch *p = &s->pf;
	int rc;

	p->s = s;
	p->batch_max = PF_BATCH_MSGS;
	if (s->cfg.prefetch == PREFETCH_NONE) {
		p->state = PREFETCH_OFF;
		return 0;
	}
	rc = store_open(s->cfg.cache_dir, &p->st);
	if (!rc)
		rc = store_cache_only(p->st);
	if (!rc)
		rc = store_open(s->cfg.cache_dir, &p->cst);
	if (!rc)
		rc = store_cache_only(p->cst);
	if (!rc)
		rc = -pthread_create(&p->keeper, NULL, keeper_main, p);
	if (!rc) {
		rc = -pthread_create(&p->thread, NULL, prefetch_main, p);
		if (rc) {
			pthread_mutex_lock(&s->lock);
			p->keeper_stop = true;
			pthread_cond_broadcast(&p->kept);
			pthread_mutex_unlock(&s->lock);
			pthread_join(p->keeper, NULL);
		}
	}
	if (rc) {
		store_close(p->st);
		store_close(p->cst);
		p->st = p->cst = NULL;
		return rc;
	}
	p->started = true;
	return 0;
}

void prefetch_stop(struct sync *s)
{
	struct prefetch *p = &s->pf;

	if (!p->started)
		return;
	prefetch_wake(s);
	pthread_join(p->thread, NULL);
	/* the batch it holds is kept: its bodies are whole */
	pthread_mutex_lock(&s->lock);
	p->keeper_stop = true;
	pthread_cond_broadcast(&p->kept);
	pthread_mutex_unlock(&s->lock);
	pthread_join(p->keeper, NULL);
	p->started = false;
	free(p->marks);
	p->marks = NULL;
	p->nmarks = 0;
	conn_close(p->conn);
	p->conn = NULL;
	store_close(p->st);
	store_close(p->cst);
	p->st = p->cst = NULL;
}

const char *prefetch_state_name(enum prefetch_state st)
{
	switch (st) {
	case PREFETCH_OFF:
		return "off";
	case PREFETCH_WAITING:
		return "waiting for the first sync";
	case PREFETCH_CONNECTING:
		return "connecting";
	case PREFETCH_RUNNING:
		return "running";
	case PREFETCH_FULL:
		return "paused: the cache is full";
	case PREFETCH_OFFLINE:
		return "offline";
	default:
		return "done";
	}
}
