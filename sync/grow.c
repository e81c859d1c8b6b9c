/*
 * grow.c - grow(folder), DESIGN §4: a folder too big to learn at once
 * is learned newest first, by date, one bounded step per call so that
 * pushed work runs in between.
 *
 * What the store knows of a folder: every UID in [low_uid, uidnext)
 * (refresh's first look takes the newest batch by sequence number),
 * and every message dated at or after complete_since, whatever its UID
 * (what growth learned below low_uid). A step:
 *
 *  - few messages unknown: all of them, found by UID SEARCH below
 *    low_uid and diffed against the store; then the folder is complete.
 *  - else INTERNALDATEs sampled at sequence numbers stepping back from
 *    the newest unknown one by 8, 16, 32, ... (and 1) in one FETCH.
 *    Where dates fall as sequence numbers fall, the sample tells which
 *    day leaves about a step's worth of messages to learn (as many as
 *    are known, from one batch up to 8); where they do not, a window
 *    of days back from complete_since: 3 days, or as many as hold a
 *    batch if mail lies as densely as just after complete_since
 *    (all of that is stored). A window that brings few is doubled, one
 *    that brings more than a step fetches is halved. UID SEARCH SINCE
 *    that day (below low_uid, before complete_since), diffed against
 *    the store, fetched newest first in bounded UID sets;
 *    complete_since moves down to that day only once everything since
 *    it is stored, in the transaction of the last messages. Every step
 *    stores messages or moves complete_since a day back at least, so
 *    even a folder of years of mail in no date order ends.
 *
 * SEARCH compares dates by day in the server's time zone, which we do
 * not know (UTC-12 to UTC+14): SINCE day D is taken to cover only what
 * is dated from D + 1 day (UTC), and BEFORE goes 2 days past what it
 * must cover. Mail older than the horizon is left alone unless asked
 * for (to_the_end).
 */
#define LOG_CAT "sync"
#include "engine.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"

#define DAY 86400
/* unknown messages learned in one go, however small the batch */
#define GROW_FEW 40
/* without a date order or a density to go by, the first window */
#define GROW_WINDOW (3 * DAY)
/* dates running backwards by more than this in a sample: no order */
#define GROW_SKEW (7 * DAY)
/* searches one step may make to size its window */
#define GROW_SEARCHES 12
/* a step learns about as many messages as are known already (so a big
 * folder takes few steps, each costing a sample and a search), from a
 * batch up to this many batches */
#define GROW_STEP_MAX 8
/*
 * and, in a folder so big that steps of GROW_STEP_MAX batches would be
 * many, at least this share of it: each step's UID SEARCH SINCE reads
 * the whole folder on the server (7 s for Dovecot at a million
 * messages, 125 steps of 8000), so the searches cost as the square of
 * the folder's size. A step this big keeps pushed work waiting about as
 * long as its search does.
 */
#define GROW_STEP_SHARE 16
/* a SINCE before this is no bound at all (dates of 1970 are broken
 * ones, and the search without SINCE also finds those before 1970) */
#define GROW_EPOCH (366 * DAY)
/* the claim of a search without SINCE: the folder is complete */
#define CLAIM_ALL 0

static bool stop_now(struct sync *s, struct job *j)
{
	return job_is_cancelled(j) || sync_is_stopping(s);
}

/* the start (UTC) of the day of @t */
static int64_t day_of(int64_t t)
{
	int64_t d = t / DAY;

	if (t < 0 && d * DAY != t)
		d--;
	return d * DAY;
}

/* ---- the step's plan and its bookmark ---- */

struct step {
	struct sync *s;
	struct store_folder *f;
	struct job *j;
	int64_t horizon; /* 0: none, or past it (to_the_end) */
	uint32_t top; /* the UIDs to learn are below this */
	int64_t before; /* SEARCH BEFORE (0: none): past complete_since */
	size_t want; /* messages this step should learn */
	uint32_t *todo; /* unknown UIDs found, ascending */
	size_t ntodo;
	size_t stored; /* messages written by this step */
};

/*
 * The UIDs below @st->top that the server has dated from the day of
 * @since (0: any date) and before @st->before, less those the store
 * holds: into @st->todo.
 */
static int search_unknown(struct step *st, int64_t since)
{
	struct imap_uid_range below = { 1, st->top - 1 };
	uint32_t *uids, *known;
	size_t n, nknown, k = 0;
	int g, rc;

	free(st->todo);
	st->todo = NULL;
	st->ntodo = 0;
	if (st->top <= 1)
		return 0;
	g = imap_uid_search_set(st->s->conn, &below, 1, since, st->before,
				&uids, &n);
	if (g)
		return sync_grade_errno(g);
	if (!n) {
		free(uids);
		return 0;
	}
	/* the known ones among them, in one ascending walk */
	rc = store_msg_uids(st->s->st, st->f->id, uids[0], uids[n - 1], &known,
			    &nknown);
	if (rc) {
		free(uids);
		return rc;
	}
	for (size_t i = 0, m = 0; i < n; i++) {
		while (m < nknown && known[m] < uids[i])
			m++;
		/* one that breaks the connection is left out for good */
		if ((m == nknown || known[m] != uids[i]) &&
		    sync_poisoned_in(st->s, st->f, uids[i], uids[i]) != uids[i])
			uids[k++] = uids[i];
	}
	free(known);
	st->todo = uids;
	st->ntodo = k;
	return 0;
}

/* one FETCH of @v into @b */
static int fetch_set_into(struct sync *s, struct batch *b,
			  const struct imap_uid_range *v, size_t n)
{
	struct imap_fetch q = { .by_uid = true,
				.items = IMAP_ITEMS_META,
				.fn = batch_take,
				.ctx = b };
	int g;

	g = imap_fetch_set(s->conn, &q, v, n);
	if (g == IMAP_CONN_BAD)
		sync_batch_failed(s);
	if (g == IMAP_OK && q.cb_rc)
		return q.cb_rc;
	return sync_grade_errno(g);
}

/*
 * The highest UIDs of @v[0..@n) that fit in one command of at most
 * @max: how many, counted from the end, into *@take, their set in @r
 * (room for @max), *@nr ranges.
 */
static void newest_chunk(const uint32_t *v, size_t n, size_t max,
			 struct imap_uid_range *r, size_t *nr, size_t *take)
{
	size_t want = n < max ? n : max, got;

	/* a shorter tail has fewer ranges: it fits in a step or two */
	for (;;) {
		got = imap_uid_ranges(v + n - want, want, UINT32_MAX,
				      IMAP_SET_MAX_TEXT, r, nr);
		if (got == want)
			break;
		want = got;
	}
	*take = want;
}

/* @claim into @f's bookmark: everything since it is in the store */
static void set_claim(struct store_folder *f, int64_t claim)
{
	if (claim == CLAIM_ALL)
		f->low_uid = 1;
	else
		f->complete_since = claim;
}

/* messages of @b that will be stored (they came with size and date) */
static size_t whole_ones(const struct batch *b)
{
	size_t n = 0;

	for (size_t i = 0; i < b->n; i++)
		n += b->v[i].has_size && b->v[i].has_date;
	return n;
}

/*
 * While a message that breaks the connection is looked for in @f (see
 * struct sync_hunt), how many of the newest of @todo[0..@left) the
 * next command may take (at most @max): those above the suspects, or
 * else the upper half of them. Going well clears the UIDs up to
 * *@cleared_to. 0 when the upper half holds none of @todo: that half is
 * then cleared at once.
 */
static size_t hunt_limit(struct sync *s, const struct store_folder *f,
			 const uint32_t *todo, size_t left, size_t max,
			 uint32_t *cleared_to)
{
	const struct sync_hunt *h = sync_hunt_of(s, f->id);
	uint32_t wlo, top = todo[left - 1];
	size_t n = 0;

	*cleared_to = top;
	if (!h || !h->hi || top < h->lo)
		return max;
	if (top > h->hi) {
		while (n < left && todo[left - 1 - n] > h->hi)
			n++;
		return n < max ? n : max;
	}
	wlo = h->hi - (h->hi - h->lo) / 2;
	*cleared_to = h->hi;
	while (n < left && todo[left - 1 - n] >= wlo)
		n++;
	if (!n)
		sync_hunt_cleared(s, f->id, wlo, h->hi);
	return n < max ? n : max;
}

/*
 * Fetch what @st->todo holds, newest (highest UID) first, a batch per
 * command, about @st->want of them (less if pushed work waits). @claim (the new complete_since,
 * or CLAIM_ALL) goes into the bookmark of the last batch if that was
 * all and every message came whole. Returns 1 if claimed, 0 if not, or
 * -errno.
 */
static int fetch_todo(struct step *st, int64_t claim)
{
	struct sync *s = st->s;
	struct store_folder *f = st->f;
	/* the batch may grow as batches go well: fixed for this step */
	size_t max = s->batch;
	struct imap_uid_range *r = xmalloc(max * sizeof(*r));
	uint32_t low_uid = f->low_uid;
	int64_t since = f->complete_since;
	size_t left = st->ntodo;
	bool whole = true;
	int rc = 0;

	for (size_t done = 0; left && done < st->want + max && !rc;) {
		size_t nr, take, limit;
		uint32_t cleared_to;
		struct batch b;
		bool last;

		if (stop_now(s, st->j)) {
			rc = -ECANCELED;
			break;
		}
		/* a refresh pushed meanwhile goes first: the next step
		 * searches again for what is left */
		if (done && sync_work_waiting(s, f))
			break;
		limit = hunt_limit(s, f, st->todo, left, max, &cleared_to);
		if (!limit)
			continue; /* the upper suspects were not to fetch */
		newest_chunk(st->todo, left, limit, r, &nr, &take);
		batch_init(&b, s, f, BATCH_NEW);
		rc = fetch_set_into(s, &b, r, nr);
		if (rc == -ENOTCONN)
			sync_hunt_broke(s, f, st->todo[left - take],
					st->todo[left - 1]);
		else if (!rc)
			sync_hunt_cleared(s, f->id, st->todo[left - take],
					  cleared_to);
		if (!rc) {
			/* one came without size or date: not stored, so not
			 * everything since the claim is */
			if (b.skipped_uid)
				whole = false;
			left -= take;
			done += take;
			st->stored += whole_ones(&b);
			last = !left && whole;
			if (last)
				set_claim(f, claim);
			rc = batch_write(&b, last);
			if (rc) {
				f->low_uid = low_uid;
				f->complete_since = since;
			}
		}
		batch_release(&b);
	}
	free(r);
	if (rc)
		return rc;
	return !left && whole;
}

/* nothing to fetch: the claim alone, written as the bookmark; returns
 * as fetch_todo */
static int claim_only(struct step *st, int64_t claim)
{
	uint32_t low_uid = st->f->low_uid;
	int64_t since = st->f->complete_since;
	int rc;

	set_claim(st->f, claim);
	rc = batch_save_bookmark(st->s, st->f);
	if (rc) {
		st->f->low_uid = low_uid;
		st->f->complete_since = since;
		return rc;
	}
	return 1;
}

/* what a step returns once its claim is (or is not) written */
static int step_result(struct step *st, int claimed, int64_t claim)
{
	struct store_folder *f = st->f;

	if (claimed < 0)
		return claimed;
	if (f->low_uid == 1)
		return 0;
	if (claimed && st->horizon && f->complete_since <= st->horizon) {
		log_debug("folder %s: learned down to the horizon", f->name);
		return 0;
	}
	if (!claimed && !st->stored) {
		log_warn("folder %s: no progress learning older mail (since "
			 "%lld); will try again at the next refresh",
			 f->name, (long long)claim);
		return -EAGAIN;
	}
	return 1;
}

/*
 * Few unknown: every one of them, and the folder is complete; with a
 * horizon, only those since it, and the folder is complete if that was
 * all of them.
 */
static int finish(struct step *st)
{
	int64_t claim = CLAIM_ALL;
	size_t all;
	int rc;

	rc = search_unknown(st, 0);
	if (!rc && st->ntodo && st->horizon) {
		all = st->ntodo;
		rc = search_unknown(st, day_of(st->horizon) - DAY);
		if (!rc && st->ntodo != all)
			claim = day_of(st->horizon);
	}
	if (rc)
		return rc;
	if (!st->ntodo)
		return step_result(st, claim_only(st, claim), claim);
	return step_result(st, fetch_todo(st, claim), claim);
}

/* ---- sampling dates by sequence number ---- */

struct sample {
	uint32_t seq;
	int64_t date;
};

struct samples {
	struct sample *v;
	size_t n, cap;
	int64_t newest; /* the latest date sampled */
};

static int sample_cb(const struct imap_msg *m, void *ctx)
{
	struct samples *sm = ctx;

	if (!m->seq || !m->has_date || sm->n == sm->cap)
		return 0;
	sm->v[sm->n].seq = m->seq;
	sm->v[sm->n].date = m->date;
	if (!sm->n || m->date > sm->newest)
		sm->newest = m->date;
	sm->n++;
	return 0;
}

static int by_seq_desc(const void *a, const void *b)
{
	const struct sample *x = a, *y = b;

	return x->seq > y->seq ? -1 : x->seq < y->seq;
}

/*
 * INTERNALDATEs at sequence numbers @p, @p - 8, @p - 16, @p - 32, ...
 * and 1, in one FETCH, into @sm, highest sequence number first. A
 * refusal leaves @sm empty: the step then goes without an order.
 */
static int sample_dates(struct sync *s, uint32_t p, struct samples *sm)
{
	uint32_t pos[40];
	struct imap_uid_range r[40];
	struct imap_fetch q = { .by_uid = false,
				.items = IMAP_ITEMS_DATE,
				.fn = sample_cb,
				.ctx = sm };
	size_t n = 0, nr;
	uint64_t step = 8;
	int g;

	pos[n++] = 1;
	while (step < p) {
		pos[n++] = p - (uint32_t)step;
		step *= 2;
	}
	pos[n++] = p;
	/* ascending, as a set is written */
	for (size_t a = 1, b = n - 2; a < b; a++, b--) {
		uint32_t t = pos[a];

		pos[a] = pos[b];
		pos[b] = t;
	}
	sm->cap = n;
	sm->v = xcalloc(n, sizeof(*sm->v));
	imap_uid_ranges(pos, n, UINT32_MAX, IMAP_SET_MAX_TEXT, r, &nr);
	g = imap_fetch_set(s->conn, &q, r, nr);
	if (g == IMAP_FOLDER_BAD) {
		sm->n = 0;
		return 0;
	}
	if (g)
		return sync_grade_errno(g);
	qsort(sm->v, sm->n, sizeof(*sm->v), by_seq_desc);
	return 0;
}

/*
 * Whether the sample shows dates falling as sequence numbers fall:
 * dates that run backwards (a message dated after one above it) add up
 * to at most GROW_SKEW; and the newest unknown message is not dated
 * well after complete_since, which would mean what we know is not the
 * top of the folder. Makes the dates an envelope (each the earliest so
 * far), for reading a day off it.
 */
static bool in_date_order(struct samples *sm, int64_t complete_since)
{
	int64_t back = 0, low;

	if (sm->n < 2)
		return false;
	if (complete_since && sm->v[0].date > complete_since + GROW_SKEW)
		return false;
	low = sm->v[0].date;
	for (size_t i = 1; i < sm->n; i++) {
		if (sm->v[i].date > low)
			back += sm->v[i].date - low;
		else
			low = sm->v[i].date;
		sm->v[i].date = low;
	}
	return back <= GROW_SKEW;
}

/* the date at sequence number @q, read off the envelope in between
 * two samples */
static int64_t date_at(const struct samples *sm, uint32_t q)
{
	for (size_t i = 0; i + 1 < sm->n; i++) {
		const struct sample *a = &sm->v[i], *b = &sm->v[i + 1];

		if (q > a->seq || q < b->seq)
			continue;
		if (a->seq == b->seq)
			return a->date;
		return a->date - (int64_t)((double)(a->date - b->date) *
					   (a->seq - q) / (a->seq - b->seq));
	}
	return sm->v[sm->n - 1].date;
}

/* ---- a step by date ---- */

/*
 * Without a date order, the window of days that should hold about a
 * batch: everything dated from complete_since on is stored, so how
 * densely that mail lies in time tells of the days just before it.
 * 0 when the store cannot tell (too little known by date yet).
 */
static int64_t window_by_density(struct sync *s, struct store_folder *f)
{
	int64_t *dates, w = 0;
	size_t n;

	if (!f->complete_since ||
	    store_msg_dates_from(s->st, f->id, f->complete_since, s->batch,
				 &dates, &n))
		return 0;
	if (n >= 16) {
		double span = (double)(dates[n - 1] - f->complete_since + DAY);

		w = (int64_t)(span * s->batch / n);
	}
	free(dates);
	return w;
}

/*
 * Search windows [ref - w, before) of days, sized to bring about a
 * batch: doubled while they bring few, halved while they bring more
 * than a step fetches, within GROW_SEARCHES searches. The window never
 * reaches past @floor (the horizon's day, 0 for none), and one that
 * would reach before GROW_EPOCH is no bound at all (since 0). The last
 * search's result is in @st->todo; its SINCE day in *@since.
 */
static int size_window(struct step *st, int64_t ref, int64_t w,
		       int64_t floor, int64_t *since)
{
	size_t few = st->s->batch / 4;
	size_t many = 2 * st->want;
	int64_t lo = 0, hi = 0; /* windows known too small, too large */
	int rc = 0;

	for (int i = 0; i < GROW_SEARCHES; i++) {
		int64_t x = ref - w, next;

		if (floor && x <= floor)
			x = floor;
		else if (!floor && x < GROW_EPOCH)
			x = 0;
		*since = x;
		rc = search_unknown(st, x);
		if (rc || stop_now(st->s, st->j))
			return rc ? rc : -ECANCELED;
		if (st->ntodo < few && x && x != floor) {
			lo = w;
			next = hi ? lo + (hi - lo) / 2 : 2 * w;
		} else if (st->ntodo > many && w > DAY) {
			hi = w;
			next = lo + (hi - lo) / 2;
		} else {
			break;
		}
		next = day_of(next);
		if (next < DAY || next == w || next == lo || next == hi)
			break;
		w = next;
	}
	return rc;
}

static int by_date(struct step *st, uint32_t exists, uint32_t unknown)
{
	struct sync *s = st->s;
	struct store_folder *f = st->f;
	struct samples sm = { 0 };
	int64_t ref, w, floor, since;
	bool ordered;
	int rc;

	rc = sample_dates(s, unknown < exists ? unknown : exists, &sm);
	if (rc) {
		free(sm.v);
		return rc;
	}
	ordered = in_date_order(&sm, f->complete_since);
	/* where windows start: a day before complete_since, so that every
	 * step makes progress; with nothing known by date, after the
	 * newest date seen (mail imported late has high sequence numbers
	 * and old dates, so not the date of the newest position) */
	if (f->complete_since)
		ref = day_of(f->complete_since) - DAY;
	else
		ref = day_of(sm.n ? sm.newest : (int64_t)time(NULL)) + DAY;
	if (ordered) {
		uint32_t q = unknown > st->want ? unknown - (uint32_t)st->want + 1
					       : 1;

		w = ref - day_of(date_at(&sm, q));
	} else {
		w = window_by_density(s, f);
		if (!w)
			w = GROW_WINDOW;
	}
	/* whole days, at least one; at most back to the epoch, which is
	 * no bound */
	w = day_of(w + DAY - 1);
	if (w < DAY)
		w = DAY;
	if (w > ref)
		w = ref;
	free(sm.v);
	floor = st->horizon ? day_of(st->horizon) - DAY : 0;
	rc = size_window(st, ref, w, floor, &since);
	if (rc)
		return rc;
	log_debug("folder %s: %zu unknown since %lld (%s order)", f->name,
		  st->ntodo, (long long)since, ordered ? "date" : "no");
	/* everything since day @since is known once these are in, in
	 * any time zone from the day after */
	since = since ? since + DAY : CLAIM_ALL;
	if (!st->ntodo)
		return step_result(st, claim_only(st, since), since);
	return step_result(st, fetch_todo(st, since), since);
}

int grow_folder(struct sync *s, struct store_folder *f, struct job *j,
		bool to_the_end)
{
	struct step st = { .s = s, .f = f, .j = j };
	struct imap_box box;
	uint64_t known;
	uint32_t unknown;
	size_t cap;
	int rc;

	if (f->low_uid == 1 || !f->uidnext)
		return 0;
	st.horizon = to_the_end ? 0 : s->cfg.horizon;
	if (st.horizon && f->complete_since && f->complete_since <= st.horizon)
		return 0;
	if (stop_now(s, j))
		return -ECANCELED;
	/* a new look unless the last step left it selected */
	rc = sync_grade_errno(imap_look(s->conn, f->name, &box));
	if (rc)
		return rc;
	imap_box_release(&box);
	/* 0 is no value (refresh.c) */
	if (box.uidvalidity && box.uidvalidity != f->uidvalidity)
		return -EAGAIN; /* the next refresh learns it again */
	sync_note_total(s, f->id, box.exists);
	rc = store_folder_count(s->st, f->id, &known);
	if (rc)
		return rc;
	unknown = box.exists > known ? box.exists - (uint32_t)known : 0;
	cap = (size_t)GROW_STEP_MAX * s->batch;
	if (box.exists / GROW_STEP_SHARE > cap)
		cap = box.exists / GROW_STEP_SHARE;
	st.want = known < s->batch ? s->batch
		: known > (uint64_t)cap ? cap : (size_t)known;
	st.top = f->low_uid ? f->low_uid : f->uidnext;
	/* every message dated before complete_since, in any time zone */
	if (f->complete_since)
		st.before = day_of(f->complete_since) + 2 * DAY;
	if (unknown <= (st.want > GROW_FEW ? st.want : GROW_FEW))
		rc = finish(&st);
	else
		rc = by_date(&st, box.exists, unknown);
	free(st.todo);
	return rc;
}
