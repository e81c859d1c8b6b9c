/*
 * ops.c - the executor of the operation log (DESIGN §6). A job on the
 * sync thread, queued ahead of refreshes whenever ops wait, runs them
 * oldest first: the ops that go with the oldest (moves of one folder to
 * one target, expunges or flag changes in one folder) in one UID-set
 * command per chunk.
 *
 * Idempotence: an op is marked sent, with the target's UIDNEXT, before
 * its command goes out. An op found sent (the connection broke, or the
 * process died, before its outcome was recorded) first looks where the
 * message is: among the target's messages since that UIDNEXT, matched
 * as orphans are (INTERNALDATE, RFC822.SIZE, EMAILID or Message-ID);
 * else still in its folder (run it again); else gone.
 *
 * A refusal puts the store back as it was (the message shows where it
 * is on the server again), says why in the status file and the log, and
 * deletes the op: nothing the server has is lost, as no write of ours
 * removes a message before it is somewhere else.
 */
#define LOG_CAT "sync"
#include "engine.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "imap_write.h"

/* messages per batch of ops: a handful of UID-set commands */
#define OPS_BATCH 1000
/* quiet time after the last write before ops run, and the longest the
 * first one waits */
#define OPS_SETTLE_MS 25
#define OPS_LATEST_MS 1000

/*
 * The test hook: with CONVOYFS_TEST_KILL_AT_STEP=N the process kills
 * itself (SIGKILL, as kill -9 would) at the Nth step boundary of the
 * executor, so a test can prove each step recoverable.
 */
static void step(const char *what)
{
	static atomic_int steps;
	const char *env = getenv("CONVOYFS_TEST_KILL_AT_STEP");
	int n = atomic_fetch_add(&steps, 1) + 1;

	log_debug("op step %d: %s", n, what);
	if (env && atoi(env) == n) {
		log_error("test hook: killed at op step %d (%s)", n, what);
		raise(SIGKILL);
	}
}

static void report(struct sync *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void report(struct sync *s, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_warn("%s", msg);
	sync_set_error(s, msg);
}

/* ---- what waits, for the status file ---- */

static void note_pending(struct sync *s, struct store *st)
{
	struct store_op v[5];
	uint64_t total = 0;
	char list[512] = "";
	size_t used = 0, n = 0;

	if (store_op_summary(st, v, 5, &n, &total))
		return;
	for (size_t i = 0; i < n; i++) {
		int k = snprintf(list + used, sizeof(list) - used,
				 "operation %lld: %s%s%s%s\n",
				 (long long)v[i].id, store_op_kind_name(v[i].kind),
				 v[i].name && v[i].kind != STORE_OP_APPEND ? " " : "",
				 v[i].name && v[i].kind != STORE_OP_APPEND ? v[i].name : "",
				 v[i].sent ? " (sent, outcome not known yet)" : "");

		if (k > 0 && (size_t)k < sizeof(list) - used)
			used += (size_t)k;
		store_op_release(&v[i]);
	}
	pthread_mutex_lock(&s->lock);
	s->ops_pending = total;
	snprintf(s->ops_list, sizeof(s->ops_list), "%s", list);
	pthread_mutex_unlock(&s->lock);
}

void sync_note_ops(struct sync *s, struct store *st)
{
	bool stale;

	pthread_mutex_lock(&s->lock);
	stale = s->ops_stale;
	s->ops_stale = false;
	pthread_mutex_unlock(&s->lock);
	if (stale)
		note_pending(s, st);
}

void ops_kick(struct sync *s)
{
	pthread_mutex_lock(&s->lock);
	s->ops_kicked++;
	s->ops_stale = true;
	s->ops_last_ms = now_ms();
	if (!s->ops_asked)
		s->ops_first_ms = s->ops_last_ms;
	s->ops_asked = true;
	pthread_mutex_unlock(&s->lock);
	jobq_wake(s->jobs);
}

long long ops_wait_ms(struct sync *s)
{
	long long now = now_ms(), wait;

	/* caller holds s->lock */
	if (!s->ops_asked)
		return -1;
	/* a burst of writes (mv of many files is one rename each) is let
	 * settle, so that it goes out as a few UID-set commands; a steady
	 * stream still runs every OPS_LATEST_MS */
	wait = s->ops_last_ms + OPS_SETTLE_MS - now;
	if (s->ops_first_ms + OPS_LATEST_MS - now < wait)
		wait = s->ops_first_ms + OPS_LATEST_MS - now;
	if (s->ops_kicked >= OPS_BATCH)
		wait = 0;
	return wait > 0 ? wait : 0;
}

/* ---- names ---- */

/*
 * The name folder @name has on the server when op @op_id runs: renames
 * recorded after it are already in the store but not yet done there,
 * so they are undone here, newest first.
 */
static char *server_name(struct store *st, int64_t op_id, const char *name,
			 char delim)
{
	struct store_op *v = NULL, op;
	size_t n = 0, cap = 0;
	int64_t after = op_id;
	char *cur = xstrdup(name);

	while (!store_op_next(st, after, &op)) {
		after = op.id;
		if (op.kind != STORE_OP_RENAME) {
			store_op_release(&op);
			continue;
		}
		if (n == cap) {
			cap = cap ? cap * 2 : 8;
			v = xrealloc(v, cap * sizeof(*v));
		}
		v[n++] = op;
	}
	while (n--) {
		if (v[n].name && v[n].name2 &&
		    folder_is_under(cur, v[n].name2, delim)) {
			char *was = xasprintf("%s%s", v[n].name,
					      cur + strlen(v[n].name2));

			free(cur);
			cur = was;
		}
		store_op_release(&v[n]);
	}
	free(v);
	return cur;
}

/* ---- finding moved messages ---- */

struct arrival {
	uint32_t uid;
	int64_t date;
	uint64_t size;
	char *message_id;
	char *emailid;
	bool taken;
};

struct arrivals {
	uint32_t from;
	struct arrival *v;
	size_t n, cap;
};

static int take_arrival(const struct imap_msg *m, void *ctx)
{
	struct arrivals *a = ctx;
	struct mime_fields mf;
	struct arrival *x;

	/* n:* above the highest UID names the highest message */
	if (m->uid < a->from || !m->has_date || !m->has_size)
		return 0;
	if (a->n == a->cap) {
		a->cap = a->cap ? a->cap * 2 : 64;
		a->v = xrealloc(a->v, a->cap * sizeof(*a->v));
	}
	x = &a->v[a->n++];
	memset(x, 0, sizeof(*x));
	x->uid = m->uid;
	x->date = m->date;
	x->size = m->size;
	mime_parse_fields(m->header, m->header_len, &mf);
	x->message_id = mf.message_id;
	mf.message_id = NULL;
	mime_fields_release(&mf);
	x->emailid = m->emailid ? xstrdup(m->emailid) : NULL;
	return 0;
}

static void arrivals_release(struct arrivals *a)
{
	for (size_t i = 0; i < a->n; i++) {
		free(a->v[i].message_id);
		free(a->v[i].emailid);
	}
	free(a->v);
	memset(a, 0, sizeof(*a));
}

static bool same_str(const char *a, const char *b)
{
	return (!a && !b) || (a && b && !strcmp(a, b));
}

/* the UID of the arrival that is message @m (as store_msg_adopt
 * matches an orphan), taken so it matches once; 0 if none */
static uint32_t arrival_of(struct arrivals *a, const struct store_msg *m)
{
	for (size_t i = 0; i < a->n; i++) {
		struct arrival *x = &a->v[i];

		if (x->taken || x->date != m->date || x->size != m->size)
			continue;
		if (x->emailid && m->emailid ? strcmp(x->emailid, m->emailid)
					     : !same_str(x->message_id,
							 m->message_id))
			continue;
		x->taken = true;
		return x->uid;
	}
	return 0;
}

/* the messages of @name (raw) from UID @from on, for matching */
static int fetch_arrivals(struct conn *c, const char *name, uint32_t from,
			  struct arrivals *a)
{
	struct imap_box box = { 0 };
	struct imap_fetch f = { .by_uid = true, .items = IMAP_ITEMS_META,
				.fn = take_arrival, .ctx = a };
	int rc;

	a->from = from ? from : 1;
	rc = imap_examine(c, name, &box);
	if (rc)
		return rc;
	if (box.exists && (!box.uidnext || box.uidnext > a->from)) {
		f.first = a->from;
		f.last = 0;
		rc = imap_fetch(c, &f);
		imap_fetch_release(&f);
	}
	imap_box_release(&box);
	return rc;
}

/* +FLAGS.SILENT (@add) or -FLAGS.SILENT @flags on the UID set @v */
static int flag_store(struct conn *c, const struct imap_uid_range *v,
		      size_t n, bool add, const char *flags)
{
	uint32_t *modified = NULL;
	size_t nmodified = 0;
	int rc = imap_uid_store(c, v, n, add, flags, 0, &modified, &nmodified);

	free(modified);
	return rc;
}

/*
 * As flag_store, conditional where CONDSTORE is offered (RFC 7162
 * UNCHANGEDSINCE @modseq, the folder's HIGHESTMODSEQ as last synced):
 * a message another client changed since is left alone by the server
 * and named in [MODIFIED]. Only the difference is ever sent, so their
 * flags stay either way: those messages get ours in a second STORE,
 * on top of what they have now.
 */
static int flag_store_cond(struct conn *c, const struct imap_uid_range *v,
			   size_t n, bool add, const char *flags,
			   uint64_t modseq)
{
	uint32_t *modified = NULL;
	size_t nmodified = 0;
	int rc;

	if (!(c->caps & CAP_CONDSTORE) || !modseq)
		return flag_store(c, v, n, add, flags);
	rc = imap_uid_store(c, v, n, add, flags, modseq, &modified,
			    &nmodified);
	if (rc == IMAP_OK && nmodified) {
		struct imap_uid_range *set =
			xcalloc(nmodified, sizeof(*set));
		size_t nset = 0, done = 0;

		log_debug("%zu message%s changed by another client since "
			  "modseq %llu: storing %s%s on top",
			  nmodified, nmodified == 1 ? "" : "s",
			  (unsigned long long)modseq, add ? "+" : "-", flags);
		while (rc == IMAP_OK && done < nmodified) {
			done += imap_uid_ranges(modified + done,
						nmodified - done, UINT32_MAX,
						IMAP_SET_MAX_TEXT, set, &nset);
			rc = flag_store(c, set, nset, add, flags);
		}
		free(set);
	}
	free(modified);
	return rc;
}

/* ---- one batch of message ops ---- */

struct item {
	struct store_op op;
	struct store_msg m; /* its row as it was when the batch began */
	uint32_t new_uid;
	bool done; /* over: recorded, or put back */
	bool appended; /* the server took it (APPEND said OK) */
};

struct batch_ops {
	struct sync *s;
	struct store_folder from; /* where the messages are on the server */
	char *from_name; /* its name there now */
	struct item *v;
	size_t n;
};

static void batch_ops_release(struct batch_ops *b)
{
	for (size_t i = 0; i < b->n; i++) {
		store_op_release(&b->v[i].op);
		store_msg_release(&b->v[i].m);
	}
	free(b->v);
	free(b->from_name);
	store_folder_release(&b->from);
}

static int cmp_item_uid(const void *x, const void *y)
{
	const struct item *a = x, *b = y;

	return a->m.uid < b->m.uid ? -1 : a->m.uid > b->m.uid;
}

/*
 * Whether a move found sent has its row somewhere else than where it
 * was sent from: a refresh saw the outcome first (the message gone from
 * its folder and found in another, and its row moved along). Then the
 * server has done it, and nothing is left to do: looking for it again
 * where it went would take it for the original.
 */
static bool moved_since(const struct store_op *op, const struct store_msg *m)
{
	if (op->kind != STORE_OP_MOVE || !op->sent)
		return false;
	if (m->folder == op->src && m->uid && m->uid == op->src_uid)
		return false;
	log_info("operation %lld: message %lld is no longer where it was "
		 "moved from; the server has done it",
		 (long long)op->id, (long long)m->umid);
	return true;
}

/*
 * The ops that run with @first: its kind, its messages' folder, its
 * target, up to OPS_BATCH. Ops whose message is gone (or no longer
 * where its folder says) are over at once.
 */
static int load_batch(struct sync *s, const struct store_op *first,
		      struct batch_ops *b)
{
	struct store *st = s->st;
	struct store_msg m0;
	struct store_op *ops = NULL;
	size_t n = 0;
	int rc;

	memset(b, 0, sizeof(*b));
	b->s = s;
	bool append = first->kind == STORE_OP_APPEND;

	rc = store_msg_get(st, first->umid, &m0);
	/* a message to append has no UID yet */
	if (rc == -ENOENT || (!rc && !m0.uid && !append) ||
	    (!rc && moved_since(first, &m0))) {
		/* gone from the server (or from the store) meanwhile */
		if (!rc)
			store_msg_release(&m0);
		log_info("operation %lld: message %lld is gone from the server; "
			 "nothing to do",
			 (long long)first->id, (long long)first->umid);
		return store_op_done(st, first->id);
	}
	if (rc)
		return rc;
	rc = store_folder_get(st, m0.folder, &b->from);
	store_msg_release(&m0);
	if (rc)
		return rc;
	b->from_name = server_name(st, first->id, b->from.name, b->from.delim);
	rc = store_op_batch(st, first, b->from.id, OPS_BATCH, &ops, &n);
	if (rc)
		return rc;
	b->v = xcalloc(n ? n : 1, sizeof(*b->v));
	for (size_t i = 0; i < n; i++) {
		struct item *it = &b->v[b->n];

		if (store_msg_get(st, ops[i].umid, &it->m) ||
		    it->m.folder != b->from.id || (!it->m.uid && !append) ||
		    moved_since(&ops[i], &it->m)) {
			if (it->m.umid)
				store_msg_release(&it->m);
			store_op_done(st, ops[i].id);
			store_op_release(&ops[i]);
			continue;
		}
		it->op = ops[i];
		b->n++;
	}
	free(ops);
	/* UID order makes compact sets; appends keep the order they were
	 * written in */
	if (!append)
		qsort(b->v, b->n, sizeof(*b->v), cmp_item_uid);
	return 0;
}

/* the ops of @b[@i..] not done: put back (deleted: the rows never
 * left their folder), with a line saying why */
static void put_back(struct batch_ops *b, const char *what, const char *why)
{
	struct sync *s = b->s;
	size_t k = 0;

	for (size_t i = 0; i < b->n; i++) {
		if (b->v[i].done)
			continue;
		if (b->v[i].op.kind == STORE_OP_FLAGS) {
			/* the flags go back to what the server has */
			struct store_msg m = b->v[i].m;

			store_op_done(s->st, b->v[i].op.id);
			m.flags = b->v[i].op.base ? b->v[i].op.base
						  : (char *)"";
			store_msg_set_flags(s->st, &m, NULL);
		} else {
			store_op_done(s->st, b->v[i].op.id);
		}
		b->v[i].done = true;
		k++;
	}
	if (k)
		report(s, "%s of %zu message%s in %s refused by the server: %s",
		       what, k, k == 1 ? "" : "s", b->from.display,
		       why && *why ? why : "no reason given");
	sync_notify(s, SYNC_MESSAGES, b->from.id);
}

/* the UID ranges of items [@i, @n) of @b from @i on that fit one
 * command; returns how many items they hold */
static size_t chunk(const struct batch_ops *b, size_t i, size_t n,
		    struct imap_uid_range *set, size_t *nset)
{
	uint32_t *uids = xcalloc(n - i, sizeof(*uids));
	size_t k;

	for (size_t x = i; x < n; x++)
		uids[x - i] = b->v[x].m.uid;
	/* no merging across gaps: the UIDs between are not ours to move */
	k = imap_uid_ranges(uids, n - i, UINT32_MAX, IMAP_SET_MAX_TEXT, set,
			    nset);
	free(uids);
	return k;
}

/* record the moves of @b to @to: each row where it is now */
static int record_moves(struct sync *s, struct batch_ops *b,
			const struct store_folder *to)
{
	bool unknown = false;
	int rc = store_begin(s->st);

	for (size_t i = 0; !rc && i < b->n; i++) {
		struct item *it = &b->v[i];

		if (it->done)
			continue;
		rc = store_msg_relocate(s->st, it->m.umid, to->id, it->new_uid);
		if (!rc)
			rc = store_op_done(s->st, it->op.id);
		unknown |= !it->new_uid;
	}
	if (rc) {
		store_rollback(s->st);
		return rc;
	}
	rc = store_commit(s->st);
	if (rc)
		return rc;
	for (size_t i = 0; i < b->n; i++)
		b->v[i].done = true;
	step("recorded");
	sync_notify(s, SYNC_MESSAGES, b->from.id);
	sync_notify(s, SYNC_MESSAGES, to->id);
	/* a row whose new UID is not known waits as an orphan of the
	 * target for its refresh to adopt it */
	if (unknown)
		sync_request_folder(s, to->id, false);
	return 0;
}

/* the rows of @b not yet given a new UID: found among the target's
 * arrivals since @from */
static int find_moved(struct sync *s, struct batch_ops *b, const char *to,
		      uint32_t from)
{
	struct arrivals a = { 0 };
	bool missing = false;
	int rc;

	for (size_t i = 0; i < b->n; i++)
		missing |= !b->v[i].done && !b->v[i].new_uid;
	if (!missing)
		return 0;
	rc = fetch_arrivals(s->conn, to, from, &a);
	if (rc == IMAP_OK)
		for (size_t i = 0; i < b->n; i++)
			if (!b->v[i].done && !b->v[i].new_uid)
				b->v[i].new_uid = arrival_of(&a, &b->v[i].m);
	arrivals_release(&a);
	return rc;
}

/* give each item its new UID from COPYUID */
static void apply_map(struct batch_ops *b, const struct imap_uidmap *map)
{
	for (size_t k = 0; k < map->n; k++)
		for (size_t i = 0; i < b->n; i++)
			if (b->v[i].m.uid == map->src[k] && !b->v[i].done) {
				b->v[i].new_uid = map->dst[k];
				break;
			}
}

static int not_moved(struct sync *s, struct batch_ops *b,
		     const struct store_folder *to, const char *to_name,
		     bool again);

/*
 * Move the items of @b to @to (named @to_name on the server), in chunks:
 * UID MOVE, or UID COPY + STORE \Deleted (+ UID EXPUNGE with UIDPLUS).
 * Returns an imap_grade, or -errno of the store.
 */
static int do_moves_once(struct sync *s, struct batch_ops *b,
			 const struct store_folder *to, const char *to_name,
			 bool again)
{
	struct conn *c = s->conn;
	struct imap_box box = { 0 }, tb = { 0 };
	struct imap_uid_range *set = xcalloc(b->n ? b->n : 1, sizeof(*set));
	int64_t *ids = xcalloc(b->n ? b->n : 1, sizeof(*ids));
	size_t i = 0;
	int rc;

	rc = imap_select_rw(c, b->from_name, &box);
	imap_box_release(&box);
	if (rc == IMAP_FOLDER_BAD) {
		put_back(b, "moving", imap_last_text(c));
		goto out;
	}
	if (rc)
		goto out;
	rc = imap_status(c, to_name, &tb);
	imap_box_release(&tb);
	if (rc == IMAP_FOLDER_BAD) {
		put_back(b, "moving", "the target folder is gone");
		goto out;
	}
	if (rc)
		goto out;
	for (size_t k = 0; k < b->n; k++)
		ids[k] = b->v[k].op.id;
	rc = store_op_mark_sent(s->st, ids, b->n, tb.uidnext);
	if (rc)
		goto out;
	for (size_t k = 0; k < b->n; k++) {
		b->v[k].op.sent = true;
		b->v[k].op.dst_uidnext = tb.uidnext;
	}
	step("marked sent");
	while (i < b->n) {
		struct imap_uidmap map = { 0 };
		size_t nset, k = chunk(b, i, b->n, set, &nset);

		if (c->caps & CAP_MOVE) {
			rc = imap_uid_move(c, set, nset, to_name, &map);
		} else {
			rc = imap_uid_copy(c, set, nset, to_name, &map);
			if (rc == IMAP_OK) {
				step("copied");
				rc = flag_store(c, set, nset, true, "\\Deleted");
			}
			if (rc == IMAP_OK) {
				step("flagged deleted");
				if (c->caps & CAP_UIDPLUS)
					rc = imap_uid_expunge(c, set, nset);
			}
		}
		if (rc == IMAP_OK)
			apply_map(b, &map);
		imap_uidmap_release(&map);
		if (rc == IMAP_FOLDER_BAD) {
			/* nothing of this chunk moved: it and the rest go
			 * back; what moved before is recorded */
			char why[160];

			snprintf(why, sizeof(why), "%s", imap_last_text(c));
			struct batch_ops rest = *b;

			rest.v = b->v + i;
			rest.n = b->n - i;
			put_back(&rest, "moving", why);
			rc = IMAP_OK;
			break;
		}
		if (rc)
			goto out;
		i += k;
	}
	step("moved");
	rc = find_moved(s, b, to_name, tb.uidnext);
	if (rc == IMAP_FOLDER_BAD)
		rc = IMAP_OK; /* the target went: the refresh will see */
	if (!rc)
		rc = not_moved(s, b, to, to_name, again);
	if (rc)
		goto out;
	rc = record_moves(s, b, to);
out:
	free(set);
	free(ids);
	return rc;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* which UIDs of the items of @b the selected folder still has: sorted,
 * malloc'ed (one UID SEARCH per chunk of the set) */
static int uids_present(struct conn *c, const struct batch_ops *b,
			uint32_t **out, size_t *nout)
{
	struct imap_uid_range *set = xcalloc(b->n ? b->n : 1, sizeof(*set));
	size_t i = 0, n = 0;
	uint32_t *all = NULL;
	int rc = IMAP_OK;

	while (rc == IMAP_OK && i < b->n) {
		uint32_t *found = NULL;
		size_t nset, nfound = 0, k = chunk(b, i, b->n, set, &nset);

		rc = imap_uid_search_set(c, set, nset, 0, 0, &found, &nfound);
		if (rc == IMAP_OK && nfound) {
			all = xrealloc(all, (n + nfound) * sizeof(*all));
			memcpy(all + n, found, nfound * sizeof(*all));
			n += nfound;
		}
		free(found);
		i += k;
	}
	free(set);
	if (rc) {
		free(all);
		return rc;
	}
	if (n)
		qsort(all, n, sizeof(*all), cmp_u32);
	*out = all;
	*nout = n;
	return IMAP_OK;
}

static bool uid_in(uint32_t uid, const uint32_t *v, size_t n)
{
	return n && bsearch(&uid, v, n, sizeof(*v), cmp_u32);
}

static int do_moves(struct sync *s, struct batch_ops *b,
		    const struct store_folder *to, const char *to_name)
{
	return do_moves_once(s, b, to, to_name, false);
}

/*
 * The UID message @it has in the selected folder now, found by its
 * Message-ID (and checked by date and size): another client moved it
 * away and back, or the server renumbered it. 0 if not exactly one.
 */
static uint32_t find_again(struct sync *s, const struct item *it)
{
	struct imap_fetch f = { .by_uid = true, .items = IMAP_ITEMS_META,
				.fn = take_arrival };
	struct arrivals a = { 0 };
	struct imap_uid_range r;
	uint32_t *uids = NULL, uid = 0;
	size_t n = 0;

	if (!it->m.message_id ||
	    imap_uid_search_header(s->conn, 1, "Message-ID", it->m.message_id,
				   &uids, &n) != IMAP_OK)
		return 0;
	if (n == 1) {
		/* the same message: date and size as stored */
		r.first = r.last = uids[0];
		a.from = 1;
		f.ctx = &a;
		if (imap_fetch_set(s->conn, &f, &r, 1) == IMAP_OK)
			uid = arrival_of(&a, &it->m);
		imap_fetch_release(&f);
		arrivals_release(&a);
	}
	free(uids);
	return uid;
}

/*
 * Messages a MOVE said OK to that are not in the target: gone from
 * their UID before it ran (a server answers a UID it no longer has with
 * OK and nothing done). One another client moved away and back is found
 * again in its folder by Message-ID and moved once more (@again: this
 * is that second try). One that is not there any more was moved or
 * deleted by another client: the user's move did not happen, which is
 * said, and its row becomes an orphan of its folder, for the refresh
 * that finds the message wherever it is to take it. One still at its
 * UID waits for a new try.
 */
static int not_moved(struct sync *s, struct batch_ops *b,
		     const struct store_folder *to, const char *to_name,
		     bool again)
{
	struct imap_box box = { 0 };
	struct batch_ops missing = *b;
	uint32_t *still = NULL;
	size_t nstill = 0, k = 0, lost = 0;
	int rc;

	missing.v = xcalloc(b->n ? b->n : 1, sizeof(*missing.v));
	for (size_t i = 0; i < b->n; i++)
		if (!b->v[i].done && !b->v[i].new_uid)
			missing.v[k++] = b->v[i];
	missing.n = k;
	if (!k) {
		free(missing.v);
		return IMAP_OK;
	}
	rc = imap_select_rw(s->conn, b->from_name, &box);
	imap_box_release(&box);
	if (rc == IMAP_OK)
		rc = uids_present(s->conn, &missing, &still, &nstill);
	free(missing.v);
	if (rc == IMAP_FOLDER_BAD)
		rc = IMAP_OK;
	if (rc)
		return rc;
	struct batch_ops retry = *b;

	retry.v = xcalloc(b->n ? b->n : 1, sizeof(*retry.v));
	retry.n = 0;
	for (size_t i = 0; i < b->n; i++) {
		struct item *it = &b->v[i];
		uint32_t uid;

		if (it->done || it->new_uid)
			continue;
		it->done = true;
		if (uid_in(it->m.uid, still, nstill))
			continue; /* the op stays, sent: looked at again */
		uid = again ? 0 : find_again(s, it);
		if (uid && !store_msg_relocate(s->st, it->m.umid, b->from.id,
					       uid)) {
			retry.v[retry.n] = *it;
			retry.v[retry.n].m.uid = uid;
			retry.v[retry.n].done = false;
			retry.n++;
			continue;
		}
		store_msg_orphan(s->st, it->m.umid);
		store_op_done(s->st, it->op.id);
		lost++;
	}
	free(still);
	if (retry.n) {
		log_info("%zu message%s had a new UID in %s (moved away and "
			 "back by another client): moving again",
			 retry.n, retry.n == 1 ? "" : "s", b->from.display);
		rc = do_moves_once(s, &retry, to, to_name, true);
		/* the retried items' rows are over as far as @b goes */
	}
	free(retry.v);
	if (rc)
		return rc;
	if (lost) {
		report(s, "%zu message%s could not be moved from %s to %s: "
			  "another client had moved or deleted %s on the server "
			  "first",
		       lost, lost == 1 ? "" : "s", b->from.display,
		       to->display, lost == 1 ? "it" : "them");
		sync_request_folder(s, b->from.id, false);
	}
	return IMAP_OK;
}

/*
 * Moves found sent: the process died or the connection broke before
 * their outcome was recorded. Those found in the target are recorded
 * (and, without MOVE, their source copy flagged and expunged again);
 * those still in their folder move again; the others are gone.
 */
static int recover_moves(struct sync *s, struct batch_ops *b,
			 const struct store_folder *to, const char *to_name)
{
	struct conn *c = s->conn;
	uint32_t from = UINT32_MAX, *still = NULL;
	struct imap_box box = { 0 };
	struct batch_ops again;
	size_t nstill = 0, na = 0;
	int rc;

	for (size_t i = 0; i < b->n; i++)
		if (b->v[i].op.dst_uidnext < from)
			from = b->v[i].op.dst_uidnext;
	rc = find_moved(s, b, to_name, from);
	if (rc && rc != IMAP_FOLDER_BAD)
		return rc;
	rc = imap_select_rw(c, b->from_name, &box);
	imap_box_release(&box);
	if (rc == IMAP_OK)
		rc = uids_present(c, b, &still, &nstill);
	else if (rc == IMAP_FOLDER_BAD)
		rc = IMAP_OK; /* the source is gone: nothing is still there */
	if (rc)
		return rc;
	/* found in the target but still in the source: a copy whose
	 * \Deleted and expunge did not happen yet */
	if (!(c->caps & CAP_MOVE)) {
		struct imap_uid_range *set =
			xcalloc(b->n ? b->n : 1, sizeof(*set));
		size_t k = 0;

		for (size_t i = 0; i < b->n; i++) {
			if (b->v[i].new_uid &&
			    uid_in(b->v[i].m.uid, still, nstill)) {
				set[k].first = set[k].last = b->v[i].m.uid;
				k++;
			}
		}
		if (k)
			rc = flag_store(c, set, k, true, "\\Deleted");
		if (k && !rc && (c->caps & CAP_UIDPLUS))
			rc = imap_uid_expunge(c, set, k);
		free(set);
		if (rc) {
			free(still);
			return rc;
		}
	}
	/* found: recorded now; still there: moved again; else gone */
	again = *b;
	again.v = xcalloc(b->n ? b->n : 1, sizeof(*again.v));
	for (size_t i = 0; i < b->n; i++) {
		struct item *it = &b->v[i];

		if (it->new_uid)
			continue;
		it->done = true;
		if (uid_in(it->m.uid, still, nstill)) {
			again.v[na] = *it;
			again.v[na].done = false;
			na++;
			continue;
		}
		log_info("operation %lld: message %lld is neither in %s nor in "
			 "%s any more (another client moved or expunged it)",
			 (long long)it->op.id, (long long)it->m.umid,
			 b->from.display, to->display);
		store_msg_orphan(s->st, it->m.umid);
		store_op_done(s->st, it->op.id);
	}
	free(still);
	rc = record_moves(s, b, to);
	if (!rc && na) {
		again.n = na;
		rc = do_moves(s, &again, to, to_name);
	}
	free(again.v);
	return rc;
}

static int run_moves(struct sync *s, struct batch_ops *b,
		     const struct store_op *first)
{
	struct store_folder to;
	char *to_name;
	int rc = store_folder_get(s->st, first->dst, &to);

	if (rc == -ENOENT) {
		put_back(b, "moving", "the target folder is gone");
		return 0;
	}
	if (rc)
		return rc;
	to_name = server_name(s->st, first->id, to.name, to.delim);
	rc = first->sent ? recover_moves(s, b, &to, to_name)
			 : do_moves(s, b, &to, to_name);
	free(to_name);
	store_folder_release(&to);
	return rc;
}

/* rm inside Trash: \Deleted, then UID EXPUNGE where UIDPLUS is
 * offered; without it the message stays \Deleted (hidden here), as a
 * plain EXPUNGE would also destroy other clients' \Deleted mail */
static int run_expunges(struct sync *s, struct batch_ops *b)
{
	struct conn *c = s->conn;
	struct imap_box box = { 0 };
	struct imap_uid_range *set = xcalloc(b->n ? b->n : 1, sizeof(*set));
	size_t i = 0;
	int rc;

	rc = imap_select_rw(c, b->from_name, &box);
	imap_box_release(&box);
	if (rc == IMAP_FOLDER_BAD)
		put_back(b, "expunging", imap_last_text(c));
	while (rc == IMAP_OK && i < b->n) {
		size_t nset, k = chunk(b, i, b->n, set, &nset);

		rc = flag_store(c, set, nset, true, "\\Deleted");
		if (rc == IMAP_OK) {
			step("flagged deleted");
			if (c->caps & CAP_UIDPLUS)
				rc = imap_uid_expunge(c, set, nset);
		}
		i += k;
	}
	free(set);
	if (rc == IMAP_FOLDER_BAD || rc == IMAP_MSG_BAD) {
		put_back(b, "expunging", imap_last_text(c));
		return 0;
	}
	if (rc)
		return rc;
	step("expunged");
	rc = store_begin(s->st);
	for (size_t k = 0; !rc && k < b->n; k++) {
		struct item *it = &b->v[k];

		if (c->caps & CAP_UIDPLUS) {
			rc = store_msg_delete(s->st, it->m.umid);
		} else {
			char *fl = xasprintf("%s%s\\Deleted", it->m.flags,
					     *it->m.flags ? " " : "");
			struct store_msg m = it->m;

			m.flags = fl;
			rc = store_op_done(s->st, it->op.id);
			if (!rc)
				rc = store_msg_set_flags(s->st, &m, NULL);
			free(fl);
			continue;
		}
		if (!rc)
			rc = store_op_done(s->st, it->op.id);
	}
	if (rc) {
		store_rollback(s->st);
		return rc;
	}
	rc = store_commit(s->st);
	if (!rc) {
		for (size_t k = 0; k < b->n; k++)
			sync_notify_gone(s, &b->v[k].m);
		sync_notify(s, SYNC_MESSAGES, b->from.id);
	}
	return rc;
}

/* whether flag @w (@len bytes) is among the space-separated @flags,
 * keywords compared without case */
static bool has_flag(const char *flags, const char *w, size_t len)
{
	for (const char *p = flags; *p;) {
		const char *e = strchrnul(p, ' ');

		if ((size_t)(e - p) == len && !strncasecmp(p, w, len))
			return true;
		p = *e ? e + 1 : e;
	}
	return false;
}

/* the flags of @a not in @b, space-separated, malloc'ed */
static char *flags_minus(const char *a, const char *b)
{
	char *out = xmalloc(strlen(a) + 1), *o = out;

	*o = '\0';
	for (const char *p = a; *p;) {
		const char *e = strchrnul(p, ' ');
		size_t len = (size_t)(e - p);

		if (len && !has_flag(b, p, len)) {
			if (o != out)
				*o++ = ' ';
			memcpy(o, p, len);
			o += len;
			*o = '\0';
		}
		p = *e ? e + 1 : e;
	}
	return out;
}

/* setfattr: the difference between what the server had and what is
 * wanted, as +FLAGS and -FLAGS, so a flag another client set meanwhile
 * stays. Ops wanting the same change go in one UID set. */
static int run_flags(struct sync *s, struct batch_ops *b)
{
	struct conn *c = s->conn;
	struct imap_box box = { 0 };
	struct imap_uid_range *set = xcalloc(b->n ? b->n : 1, sizeof(*set));
	int rc;

	rc = imap_select_rw(c, b->from_name, &box);
	imap_box_release(&box);
	if (rc == IMAP_FOLDER_BAD) {
		put_back(b, "setting flags", imap_last_text(c));
		rc = IMAP_OK;
	}
	step("flags to send");
	for (size_t i = 0; rc == IMAP_OK && i < b->n; i++) {
		struct item *it = &b->v[i];
		const char *base = it->op.base ? it->op.base : "";
		char *add = flags_minus(it->m.flags, base);
		char *del = flags_minus(base, it->m.flags);
		size_t nset = 0;

		if (it->done)
			goto next;
		/* this op and every later one wanting the same */
		for (size_t k = i; k < b->n; k++) {
			struct item *o = &b->v[k];
			const char *ob = o->op.base ? o->op.base : "";
			char *oa, *od;
			bool same;

			if (o->done)
				continue;
			oa = flags_minus(o->m.flags, ob);
			od = flags_minus(ob, o->m.flags);
			same = !strcmp(oa, add) && !strcmp(od, del);
			free(oa);
			free(od);
			if (!same || nset == b->n)
				continue;
			set[nset].first = set[nset].last = o->m.uid;
			nset++;
		}
		if (*add)
			rc = flag_store_cond(c, set, nset, true, add,
					     b->from.highestmodseq);
		if (rc == IMAP_OK && *del)
			rc = flag_store_cond(c, set, nset, false, del,
					     b->from.highestmodseq);
		if (rc == IMAP_MSG_BAD || rc == IMAP_FOLDER_BAD) {
			char why[160];

			snprintf(why, sizeof(why), "%s", imap_last_text(c));
			put_back(b, "setting flags", why);
			rc = IMAP_OK;
			goto next;
		}
		/* the group is stored: over */
		for (size_t k = i; rc == IMAP_OK && k < b->n; k++) {
			struct item *o = &b->v[k];

			for (size_t x = 0; x < nset; x++)
				if (set[x].first == o->m.uid && !o->done) {
					store_op_done(s->st, o->op.id);
					o->done = true;
				}
		}
next:
		free(add);
		free(del);
	}
	free(set);
	if (rc == IMAP_OK) {
		step("flags stored");
		sync_notify(s, SYNC_MESSAGES, b->from.id);
	}
	return rc;
}

/* ---- APPEND ---- */

/*
 * Content the server refused is never dropped: the staged file goes to
 * the recovered directory as <umid>.eml, with the reason beside it in
 * <umid>.reason (.convoyfs/recovered/ shows both as one file and its
 * user.convoyfs.reason), and the message row goes.
 */
static void recover_refused(struct sync *s, struct item *it, const char *why)
{
	const char *dir = store_recovered_dir(s->st);
	char *to = NULL, *reason = NULL;
	bool kept = false;

	if (dir) {
		to = xasprintf("%s/%lld.eml", dir, (long long)it->m.umid);
		reason = xasprintf("%s/%lld.reason", dir, (long long)it->m.umid);
		kept = !rename(it->op.name, to);
		if (kept) {
			FILE *f = fopen(reason, "w");

			if (f) {
				fprintf(f, "%s\n", why);
				fclose(f);
			}
		}
	}
	if (kept) {
		store_op_done(s->st, it->op.id);
		store_msg_delete(s->st, it->m.umid);
		sync_notify_gone(s, &it->m);
		report(s, "appending a message to %s refused by the server: %s; "
			  "its content is in .convoyfs/recovered/%lld.eml",
		       it->m.folder ? "its folder" : "?", why,
		       (long long)it->m.umid);
	} else {
		/* not even that: it stays as it is, and is tried again */
		store_op_failed(s->st, it->op.id, why);
		report(s, "appending a message refused by the server (%s), "
			  "and it could not be set aside; kept to try again",
		       why);
	}
	it->done = true;
	free(to);
	free(reason);
}

/* the staged file of @it, opened; else its cached body; -1 if neither */
static int open_content(struct sync *s, const struct item *it, off_t *len)
{
	struct stat sb;
	int fd = it->op.name ? open(it->op.name, O_RDONLY | O_CLOEXEC) : -1;

	if (fd < 0)
		fd = store_body_open(s->st, it->m.umid);
	if (fd >= 0 && fstat(fd, &sb)) {
		close(fd);
		fd = -1;
	}
	if (fd >= 0)
		*len = sb.st_size;
	return fd;
}

/* the appends recorded: rows get their UIDs (found among the target's
 * new messages where the server gave no APPENDUID), staged files go */
static int record_appends(struct sync *s, struct batch_ops *b,
			  const char *name, uint32_t from)
{
	int rc = find_moved(s, b, name, from);

	if (rc && rc != IMAP_FOLDER_BAD)
		return rc;
	rc = record_moves(s, b, &b->from);
	return rc;
}

static int run_appends(struct sync *s, struct batch_ops *b,
		       const struct store_op *first)
{
	struct conn *c = s->conn;
	struct imap_box tb = { 0 };
	struct imap_append *v = NULL;
	int64_t *ids = NULL;
	size_t n = 0;
	int rc;

	rc = imap_status(c, b->from_name, &tb);
	imap_box_release(&tb);
	if (rc == IMAP_FOLDER_BAD) {
		for (size_t i = 0; i < b->n; i++)
			recover_refused(s, &b->v[i], "the folder is gone");
		return IMAP_OK;
	}
	if (rc)
		return rc;
	if (first->sent) {
		/* appended before the process died, or not: look first */
		uint32_t from = UINT32_MAX;

		for (size_t i = 0; i < b->n; i++)
			if (b->v[i].op.dst_uidnext < from)
				from = b->v[i].op.dst_uidnext;
		rc = find_moved(s, b, b->from_name, from);
		if (rc && rc != IMAP_FOLDER_BAD)
			return rc;
		/* what was found is recorded; the rest goes again */
		for (size_t i = 0; i < b->n; i++)
			b->v[i].done = !b->v[i].new_uid;
		rc = record_moves(s, b, &b->from);
		if (rc)
			return rc;
		for (size_t i = 0; i < b->n; i++) {
			if (b->v[i].new_uid && b->v[i].op.name)
				unlink(b->v[i].op.name);
			b->v[i].done = b->v[i].new_uid != 0;
		}
	}
	v = xcalloc(b->n ? b->n : 1, sizeof(*v));
	ids = xcalloc(b->n ? b->n : 1, sizeof(*ids));
	for (size_t i = 0; i < b->n; i++) {
		struct item *it = &b->v[i];
		off_t len = 0;

		v[i].fd = -1;
		if (it->done)
			continue;
		v[n].fd = open_content(s, it, &len);
		if (v[n].fd < 0) {
			log_error("operation %lld: the content of message %lld "
				  "is gone from the cache; it cannot be appended",
				  (long long)it->op.id, (long long)it->m.umid);
			store_op_done(s->st, it->op.id);
			store_msg_delete(s->st, it->m.umid);
			it->done = true;
			continue;
		}
		v[n].len = (uint64_t)len;
		v[n].flags = it->m.flags;
		v[n].date = it->m.date;
		v[n].zone = it->m.zone;
		ids[n] = it->op.id;
		n++;
	}
	rc = store_op_mark_sent(s->st, ids, n, tb.uidnext);
	if (!rc) {
		step("append marked sent");
		rc = n ? imap_append_many(c, b->from_name, v, n) : IMAP_OK;
	}
	if (rc == IMAP_OK || rc == IMAP_FOLDER_BAD) {
		size_t k = 0;

		step("appended");
		for (size_t i = 0; i < b->n; i++) {
			struct item *it = &b->v[i];

			if (it->done)
				continue;
			if (v[k].grade == IMAP_OK) {
				it->new_uid = v[k].uid;
				it->appended = true;
			}
			else if (v[k].grade == IMAP_MSG_BAD ||
				 rc == IMAP_FOLDER_BAD)
				recover_refused(s, it, v[k].err);
			k++;
		}
		rc = record_appends(s, b, b->from_name, tb.uidnext);
	}
	for (size_t i = 0; i < n; i++)
		if (v[i].fd >= 0)
			close(v[i].fd);
	/* appended and recorded: the staged copies go (bodies stay) */
	if (!rc)
		for (size_t i = 0; i < b->n; i++)
			if (b->v[i].op.name && b->v[i].appended)
				unlink(b->v[i].op.name);
	free(v);
	free(ids);
	return rc;
}

static int run_message_ops(struct sync *s, const struct store_op *first)
{
	struct batch_ops b;
	int rc = load_batch(s, first, &b);

	if (rc || !b.n) {
		batch_ops_release(&b);
		return rc;
	}
	switch (first->kind) {
	case STORE_OP_MOVE:
		rc = run_moves(s, &b, first);
		break;
	case STORE_OP_EXPUNGE:
		rc = run_expunges(s, &b);
		break;
	case STORE_OP_APPEND:
		rc = run_appends(s, &b, first);
		break;
	default:
		rc = run_flags(s, &b);
		break;
	}
	batch_ops_release(&b);
	return rc;
}

/* ---- folder ops ---- */

/* folders named @from or below it become @to...; for putting a rename
 * back */
static void rename_rows(struct sync *s, const char *from, const char *to)
{
	struct store_folder *v = NULL;
	size_t n = 0;

	if (store_folder_list(s->st, &v, &n))
		return;
	for (size_t i = 0; i < n; i++) {
		struct store_folder f = v[i];

		if (!folder_is_under(v[i].name, from, v[i].delim))
			continue;
		f.name = xasprintf("%s%s", to, v[i].name + strlen(from));
		f.display = utf7_decode(f.name);
		if (!f.display)
			f.display = xstrdup(f.name);
		store_folder_rename(s->st, v[i].id, &f);
		free(f.name);
		free(f.display);
	}
	store_folder_list_free(v, n);
}

/* the folder row called @name goes (a CREATE put back) */
static void drop_folder(struct sync *s, const char *name)
{
	struct store_folder *v = NULL;
	size_t n = 0;

	if (store_folder_list(s->st, &v, &n))
		return;
	for (size_t i = 0; i < n; i++)
		if (!strcmp(v[i].name, name))
			store_folder_delete(s->st, v[i].id);
	store_folder_list_free(v, n);
}

static int run_folder_op(struct sync *s, const struct store_op *op)
{
	struct conn *c = s->conn;
	const char *what = op->kind == STORE_OP_CREATE	 ? "creating"
			   : op->kind == STORE_OP_DELETE ? "deleting"
							 : "renaming";
	char why[160] = "";
	int rc, grade;

	if (!op->name || (op->kind == STORE_OP_RENAME && !op->name2))
		return store_op_done(s->st, op->id);
	step("folder op to send");
	if (op->kind == STORE_OP_CREATE)
		grade = imap_create(c, op->name);
	else if (op->kind == STORE_OP_DELETE)
		grade = imap_delete(c, op->name);
	else
		grade = imap_rename(c, op->name, op->name2);
	if (grade == IMAP_CONN_BAD || grade == IMAP_CANCELLED)
		return grade;
	if (grade != IMAP_OK)
		snprintf(why, sizeof(why), "%s", imap_last_text(c));
	step("folder op sent");
	rc = store_begin(s->st);
	if (rc)
		return rc;
	rc = store_op_done(s->st, op->id);
	/* refused: the store as the server has it again (a folder that was
	 * not deleted comes back with the next list) */
	if (!rc && grade != IMAP_OK && op->kind == STORE_OP_RENAME)
		rename_rows(s, op->name2, op->name);
	if (!rc && grade != IMAP_OK && op->kind == STORE_OP_CREATE)
		drop_folder(s, op->name);
	if (rc) {
		store_rollback(s->st);
		return rc;
	}
	rc = store_commit(s->st);
	if (grade != IMAP_OK)
		report(s, "%s folder %s refused by the server: %s", what,
		       op->name, why[0] ? why : "no reason given");
	sync_notify(s, SYNC_FOLDERS, 0);
	/* the list tells what the server made of it */
	sync_poll_now(s);
	return rc;
}

/* ---- the job ---- */

int ops_run(struct job *j, void *arg)
{
	struct sync *s = arg;
	int64_t after = 0;
	int rc = 0;

	for (;;) {
		struct store_op op;
		bool burst;

		if (job_is_cancelled(j)) {
			rc = -ECANCELED;
			break;
		}
		/* writes still coming (a long mv): let them settle into
		 * batches; the queue runs this job again when they have */
		pthread_mutex_lock(&s->lock);
		burst = s->ops_asked && ops_wait_ms(s) > 0;
		if (!burst)
			s->ops_kicked = 0; /* what waits now is taken */
		pthread_mutex_unlock(&s->lock);
		if (burst)
			break;
		rc = store_op_next(s->st, after, &op);
		if (rc == -ENOENT) {
			rc = 0;
			break;
		}
		if (rc)
			break;
		switch (op.kind) {
		case STORE_OP_MOVE:
		case STORE_OP_EXPUNGE:
		case STORE_OP_FLAGS:
		case STORE_OP_APPEND:
			rc = run_message_ops(s, &op);
			break;
		case STORE_OP_CREATE:
		case STORE_OP_DELETE:
		case STORE_OP_RENAME:
			rc = run_folder_op(s, &op);
			break;
		default:
			/* from a newer version: kept for it */
			log_warn("operation %lld of an unknown kind kept",
				 (long long)op.id);
			rc = 0;
			break;
		}
		/* an op still there after its run waits for a new try */
		after = op.id;
		store_op_release(&op);
		if (rc == IMAP_CONN_BAD || rc == IMAP_CANCELLED) {
			rc = sync_grade_errno(rc);
			break;
		}
		if (rc > 0) /* a grade handled above */
			rc = 0;
		if (rc)
			break;
	}
	/* what was stored is written out, and nothing stays selected
	 * read-write */
	if (!rc && s->conn && !conn_is_broken(s->conn) &&
	    imap_leave_rw(s->conn) == IMAP_CONN_BAD)
		rc = -ENOTCONN;
	note_pending(s, s->st);
	return rc;
}
