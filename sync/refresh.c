/*
 * refresh.c - refresh(folder), DESIGN §4: what changed on the server in
 * a folder we know. New mail by UIDNEXT first, then flag changes and
 * deletions of what we know: CONDSTORE's CHANGEDSINCE and QRESYNC's
 * VANISHED where offered, else bounded chunks of the known UIDs. Those
 * are every UID of the folder in the store: the range [low_uid,
 * uidnext) and whatever growth learned by date below it, scattered.
 * Every command is bounded in length (UID sets of bounded text) and
 * every batch in memory; each is written with its bookmark in one
 * short transaction.
 */
#define LOG_CAT "sync"
#include "engine.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

int sync_grade_errno(int grade)
{
	switch (grade) {
	case IMAP_OK:
		return 0;
	case IMAP_CANCELLED:
		return -ECANCELED;
	case IMAP_CONN_BAD:
		return -ENOTCONN;
	default:
		return -EREMOTE;
	}
}

/* the UID after @u: UID 4294967295 (a hostile or broken server) must
 * not wrap a bookmark to 0, which reads as "never seen"; the top
 * message is then asked again at each refresh, nothing worse */
static uint32_t uid_after(uint32_t u)
{
	return u == UINT32_MAX ? u : u + 1;
}

static bool stop_now(struct sync *s, struct job *j)
{
	return job_is_cancelled(j) || sync_is_stopping(s);
}

/* ---- isolating a message whose FETCH breaks the connection ---- */

uint32_t sync_poisoned_in(struct sync *s, const struct store_folder *f,
			  uint32_t a, uint32_t b)
{
	struct sync_poisoned *low = NULL;

	for (size_t i = 0; i < s->npoisoned; i++) {
		struct sync_poisoned *p = &s->poisoned[i];

		if (p->folder == f->id && p->uid >= a && p->uid <= b &&
		    (!low || p->uid < low->uid))
			low = p;
	}
	if (!low)
		return 0;
	if (!low->told) {
		char why[200];

		low->told = true;
		snprintf(why, sizeof(why),
			 "folder %s: UID %u skipped: fetching it breaks the "
			 "connection",
			 f->name, low->uid);
		log_warn("%s; the rest of the folder is learned without it",
			 why);
		sync_set_error(s, why);
	}
	return low->uid;
}

struct sync_hunt *sync_hunt_of(struct sync *s, int64_t folder)
{
	for (size_t i = 0; i < SYNC_HUNTS; i++)
		if (s->hunts[i].folder == folder && folder)
			return &s->hunts[i];
	return NULL;
}

/* the hunt of @folder, made (in a free slot, or the oldest one's) if
 * there is none */
static struct sync_hunt *hunt_new(struct sync *s, int64_t folder)
{
	struct sync_hunt *h = sync_hunt_of(s, folder);

	for (size_t i = 0; !h && i < SYNC_HUNTS; i++)
		if (!s->hunts[i].folder)
			h = &s->hunts[i];
	if (!h)
		h = &s->hunts[s->next_hunt++ % SYNC_HUNTS];
	memset(h, 0, sizeof(*h));
	h->folder = folder;
	return h;
}

void sync_hunt_first_look(struct sync *s, int64_t folder)
{
	if (!sync_hunt_of(s, folder))
		hunt_new(s, folder);
}

void sync_hunt_clip(struct sync *s, int64_t folder, uint32_t a, uint32_t *b)
{
	struct sync_hunt *h = sync_hunt_of(s, folder);

	if (!h || !h->hi || *b < h->lo || a > h->hi)
		return;
	if (a < h->lo)
		*b = h->lo - 1; /* below the suspects: as usual */
	else if (*b > h->lo + (h->hi - h->lo) / 2)
		*b = h->lo + (h->hi - h->lo) / 2; /* the lower half */
}

void sync_hunt_cleared(struct sync *s, int64_t folder, uint32_t a, uint32_t b)
{
	struct sync_hunt *h = sync_hunt_of(s, folder);

	if (!h || !h->hi || b < h->lo || a > h->hi)
		return;
	/* a part of the suspects read well: the hunt moves, and the next
	 * reconnect waits the first delay again, not a longer one */
	s->progress = true;
	if (a <= h->lo)
		h->lo = b == UINT32_MAX ? b : b + 1;
	if (b >= h->hi)
		h->hi = a ? a - 1 : 0;
	if (h->lo > h->hi || b == UINT32_MAX || !h->hi) {
		/* what broke the connection was not the messages */
		log_info("the fetch that broke the connection went well "
			 "again in smaller parts");
		memset(h, 0, sizeof(*h));
	} else {
		h->strikes = 0;
	}
}

void sync_hunt_broke(struct sync *s, const struct store_folder *f, uint32_t a,
		     uint32_t b)
{
	struct sync_hunt *h;

	if (!a || b < a)
		return;
	if (a != b) {
		log_info("folder %s: the fetch of UIDs %u:%u broke the "
			 "connection; trying them in halves",
			 f->name, a, b);
		h = hunt_new(s, f->id);
		h->lo = a;
		h->hi = b;
		return;
	}
	h = sync_hunt_of(s, f->id);
	if (!h || h->lo != a || h->hi != a) {
		h = hunt_new(s, f->id);
		h->lo = h->hi = a;
	}
	/* twice alone: not a link that happened to drop */
	if (++h->strikes < 2)
		return;
	memset(h, 0, sizeof(*h));
	if (s->npoisoned == SYNC_POISONED_MAX)
		return; /* bounded: the oldest ones stay skipped */
	s->poisoned[s->npoisoned++] =
		(struct sync_poisoned){ .folder = f->id, .uid = a };
	/* a restart must neither forget nor fetch it again */
	if (store_skipped_add(s->st, f->id, a, f->uidvalidity))
		log_warn("folder %s: cannot keep UID %u as skipped", f->name,
			 a);
}

void sync_poisoned_load(struct sync *s)
{
	struct store_skipped *v = NULL;
	struct store_folder f = { 0 };
	char why[200] = "";
	size_t n = 0;

	if (store_skipped_list(s->st, SYNC_POISONED_MAX, &v, &n) || !n) {
		free(v);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		s->poisoned[i] = (struct sync_poisoned){ .folder = v[i].folder,
							 .uid = v[i].uid,
							 .told = true };
		if (f.id != v[i].folder) {
			store_folder_release(&f);
			f.id = 0;
			if (store_folder_get(s->st, v[i].folder, &f))
				continue;
		}
		snprintf(why, sizeof(why),
			 "folder %s: UID %u skipped: fetching it broke the "
			 "connection",
			 f.name, v[i].uid);
		log_warn("%s (found by an earlier run)", why);
	}
	s->npoisoned = n;
	store_folder_release(&f);
	if (why[0])
		sync_set_error(s, why);
	free(v);
}

/* run one FETCH into @b; a link that drops mid-command makes the next
 * batches smaller */
static int fetch_into(struct sync *s, struct batch *b, struct imap_fetch *f)
{
	int g;

	f->fn = batch_take;
	f->ctx = b;
	g = imap_fetch(s->conn, f);
	if (g == IMAP_CONN_BAD)
		sync_batch_failed(s);
	/* a part written as the reply came in may have failed */
	if (g == IMAP_OK && f->cb_rc)
		return f->cb_rc;
	return sync_grade_errno(g);
}

/* fetch_into for a UID set of several ranges */
static int fetch_set_into(struct sync *s, struct batch *b,
			  struct imap_fetch *f, const struct imap_uid_range *v,
			  size_t n)
{
	int g;

	f->fn = batch_take;
	f->ctx = b;
	g = imap_fetch_set(s->conn, f, v, n);
	if (g == IMAP_CONN_BAD)
		sync_batch_failed(s);
	if (g == IMAP_OK && f->cb_rc)
		return f->cb_rc;
	return sync_grade_errno(g);
}

int refresh_seq_batch(struct sync *s, struct store_folder *f, uint32_t first,
		      uint32_t last, uint32_t *got)
{
	struct imap_fetch q = { .by_uid = false,
				.first = first,
				.last = last,
				.items = IMAP_ITEMS_META };
	struct batch b;
	int rc;

	batch_init(&b, s, f, BATCH_NEW);
	rc = fetch_into(s, &b, &q);
	*got = (uint32_t)b.n;
	if (!rc) {
		uint32_t low = f->low_uid;

		if (first == 1)
			f->low_uid = 1;
		else if (b.min_uid && (!low || b.min_uid < low))
			f->low_uid = b.min_uid;
		/* a message that came without size or date is below what
		 * the bookmark claims, so the next growth asks for it */
		if (b.skipped_uid && f->low_uid <= b.skipped_uid)
			f->low_uid = uid_after(b.skipped_uid);
		if (!f->uidnext && b.max_uid)
			f->uidnext = uid_after(b.max_uid);
		rc = batch_write(&b, true);
		if (rc) {
			f->low_uid = low;
		}
	}
	batch_release(&b);
	imap_fetch_release(&q);
	return rc;
}

/*
 * New mail: UID FETCH in ranges from our UIDNEXT up to the server's,
 * each a bounded batch written with the bookmark that covers it. UIDs
 * may be sparse: a range that returned few messages is made wider for
 * the next one, so a gap costs few commands.
 */
static int fetch_new(struct sync *s, struct store_folder *f,
		     uint32_t server_uidnext, struct job *j)
{
	uint64_t width = s->batch;
	uint32_t hold = 0; /* the bookmark stops below a skipped message */
	uint32_t a = f->uidnext ? f->uidnext : 1;
	int rc = 0;

	while (!rc && (!server_uidnext || a < server_uidnext)) {
		uint32_t b_last;
		struct imap_fetch q = { .by_uid = true,
					.first = a,
					.items = IMAP_ITEMS_META };
		struct batch b;

		if (stop_now(s, j))
			return -ECANCELED;
		if (server_uidnext) {
			uint64_t last = (uint64_t)a + width - 1;
			uint32_t bad;

			b_last = last >= server_uidnext ? server_uidnext - 1
							: (uint32_t)last;
			/* a message that breaks the connection is left out,
			 * and while one is looked for, half the suspects */
			bad = sync_poisoned_in(s, f, a, b_last);
			if (bad == a) {
				if (!hold && f->uidnext <= a)
					f->uidnext = uid_after(a);
				if (a == UINT32_MAX)
					break;
				a++;
				continue;
			}
			if (bad)
				b_last = bad - 1;
			sync_hunt_clip(s, f->id, a, &b_last);
		} else {
			b_last = 0; /* no UIDNEXT: everything above, once */
		}
		q.first = a;
		q.last = b_last;
		batch_init(&b, s, f, BATCH_NEW);
		rc = fetch_into(s, &b, &q);
		if (b_last && rc == -ENOTCONN)
			sync_hunt_broke(s, f, a, b_last);
		else if (b_last && !rc)
			sync_hunt_cleared(s, f->id, a, b_last);
		if (!rc) {
			uint32_t next = b_last ? uid_after(b_last)
					       : (b.max_uid >= a ? uid_after(b.max_uid)
								 : a);

			if (b.skipped_uid && (!hold || b.skipped_uid < hold))
				hold = b.skipped_uid;
			f->uidnext = hold && hold < next ? hold : next;
			rc = batch_write(&b, true);
			/* a sparse range: widen, so that about a batch
			 * comes back next time */
			if (!rc && b_last && q.count < s->batch / 2)
				width = width * 2 > (1u << 24) ? (1u << 24)
							       : width * 2;
			else if (!rc && q.count > s->batch)
				width = s->batch;
		}
		batch_release(&b);
		imap_fetch_release(&q);
		if (!b_last)
			break;
		a = b_last + 1;
	}
	return rc;
}

/*
 * A chunk of the known UIDs of @f: up to @max of them from @from on,
 * ascending, and the UID set that names them in a command of bounded
 * length. Between two known UIDs below low_uid the server may hold
 * mail we do not know (older than what growth learned by date), so
 * only runs of consecutive UIDs are merged there; from low_uid on
 * every UID is known and one range covers them all.
 */
struct known {
	uint32_t *uids; /* malloc'ed */
	size_t n; /* in the set */
	struct imap_uid_range *set; /* malloc'ed */
	size_t nset;
	bool more; /* known UIDs are left after this chunk */
};

static int known_chunk(struct sync *s, struct store_folder *f, uint32_t from,
		       size_t max, struct known *k)
{
	size_t got;
	int rc;

	memset(k, 0, sizeof(*k));
	rc = store_msg_uids_from(s->st, f->id, from, f->uidnext, max, &k->uids,
				 &got);
	if (rc)
		return rc;
	k->set = xmalloc((got ? got : 1) * sizeof(*k->set));
	k->n = imap_uid_ranges(k->uids, got,
			       f->low_uid ? f->low_uid : UINT32_MAX,
			       IMAP_SET_MAX_TEXT, k->set, &k->nset);
	k->more = got == max || k->n < got;
	return 0;
}

static void known_release(struct known *k)
{
	free(k->uids);
	free(k->set);
}

static bool in_sorted(const uint32_t *v, size_t n, uint32_t x)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (v[mid] == x)
			return true;
		if (v[mid] < x)
			lo = mid + 1;
		else
			hi = mid;
	}
	return false;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * Without CONDSTORE: the flags of every known message, a bounded chunk
 * of known UIDs per command (UID FETCH <set> (UID FLAGS)); a known UID
 * the reply leaves out is gone.
 */
static int flags_by_chunks(struct sync *s, struct store_folder *f,
			   struct job *j)
{
	uint32_t from = 1;
	int rc = 0;

	for (;;) {
		size_t max = (size_t)s->batch * SYNC_FLAGS_PER_BATCH;
		struct imap_fetch q = { .by_uid = true,
					.items = IMAP_ITEMS_FLAGS };
		struct known k;
		struct batch b;
		uint32_t *got;

		if (stop_now(s, j))
			return -ECANCELED;
		rc = known_chunk(s, f, from, max, &k);
		if (rc || !k.n) {
			if (!rc)
				known_release(&k);
			return rc;
		}
		batch_init(&b, s, f, BATCH_FLAGS);
		rc = fetch_set_into(s, &b, &q, k.set, k.nset);
		if (rc == -EREMOTE) {
			/* imap4d answers BAD to a set naming a UID it no
			 * longer has: one range over them all, as before
			 * growth by date (replies for UIDs we do not know
			 * are not ours, put_flags leaves them) */
			struct imap_uid_range all = { k.uids[0],
						      k.uids[k.n - 1] };

			batch_release(&b);
			batch_init(&b, s, f, BATCH_FLAGS);
			rc = fetch_set_into(s, &b, &q, &all, 1);
		}
		if (!rc) {
			got = b.seen;
			qsort(got, b.nseen, sizeof(*got), cmp_u32);
			for (size_t i = 0; i < k.n; i++)
				if (!in_sorted(got, b.nseen, k.uids[i]))
					batch_gone(&b, k.uids[i]);
			rc = batch_write(&b, false);
		}
		batch_release(&b);
		from = k.uids[k.n - 1] + 1;
		known_release(&k);
		if (rc || !k.more)
			return rc;
	}
}

/*
 * With CONDSTORE: one UID FETCH of the known range with CHANGEDSINCE
 * (and VANISHED under QRESYNC): only what changed comes back. The reply
 * is written in bounded batches as it streams in; flag updates are the
 * same whenever they are written, and the MODSEQ bookmark moves only
 * after the whole reply.
 */
static int flags_changed_since(struct sync *s, struct store_folder *f,
			       struct job *j)
{
	struct imap_fetch q = { .by_uid = true,
				.last = f->uidnext - 1,
				.items = IMAP_ITEMS_FLAGS,
				.changedsince = f->highestmodseq,
				.want_vanished = true };
	uint32_t *lowest;
	struct batch b;
	size_t nlow;
	int rc;

	/* from the lowest known UID, which growth by date may have put far
	 * below low_uid; the unknown ones between come back only if they
	 * changed, and are not ours to store */
	rc = store_msg_uids_from(s->st, f->id, 1, f->uidnext, 1, &lowest,
				 &nlow);
	if (rc)
		return rc;
	q.first = nlow ? lowest[0] : 0;
	free(lowest);
	if (!nlow || q.last < q.first)
		return 0;
	batch_init(&b, s, f, BATCH_FLAGS);
	rc = fetch_into(s, &b, &q);
	if (!rc) {
		for (size_t i = 0; i < q.nvanished; i++) {
			uint32_t a = q.vanished[i].first, z = q.vanished[i].last;
			uint32_t *known;
			size_t n;

			/* only the UIDs we hold, so a huge range costs
			 * nothing more than they do */
			while (!rc && a <= z) {
				rc = store_msg_uids_from(s->st, f->id, a,
							 z == UINT32_MAX ? z : z + 1,
							 4096, &known, &n);
				for (size_t k = 0; !rc && k < n; k++)
					batch_gone(&b, known[k]);
				if (!rc && n)
					a = known[n - 1] + 1;
				free(known);
				if (!n || n < 4096)
					break;
			}
		}
		if (!rc)
			rc = batch_write(&b, false);
	}
	batch_release(&b);
	imap_fetch_release(&q);
	return rc;
}

/*
 * Deletions without QRESYNC: UID SEARCH UID <set> over chunks of the
 * known UIDs, diffed against the store.
 */
static int gone_by_search(struct sync *s, struct store_folder *f,
			  struct job *j)
{
	uint32_t from = 1;
	int rc = 0;

	for (;;) {
		size_t max = (size_t)s->batch * SYNC_FLAGS_PER_BATCH * 2, ns;
		uint32_t *have;
		struct known k;
		struct batch b;
		int g;

		if (stop_now(s, j))
			return -ECANCELED;
		rc = known_chunk(s, f, from, max, &k);
		if (rc || !k.n) {
			if (!rc)
				known_release(&k);
			return rc;
		}
		g = imap_uid_search_set(s->conn, k.set, k.nset, 0, 0, &have,
					&ns);
		if (g) {
			known_release(&k);
			if (g == IMAP_CONN_BAD)
				sync_batch_failed(s);
			return sync_grade_errno(g);
		}
		batch_init(&b, s, f, BATCH_FLAGS);
		for (size_t i = 0; i < k.n; i++)
			if (!in_sorted(have, ns, k.uids[i]))
				batch_gone(&b, k.uids[i]);
		rc = batch_write(&b, false);
		batch_release(&b);
		free(have);
		from = k.uids[k.n - 1] + 1;
		known_release(&k);
		if (rc || !k.more)
			return rc;
	}
}

static int take_uid(const struct imap_msg *m, void *ctx)
{
	*(uint32_t *)ctx = m->uid;
	return 0;
}

/*
 * The first look at a folder, by UID: the UID at sequence number
 * @first (UID alone, which a server breaking on a message's metadata
 * still sends), bookmarked as the bottom of what is known, then new
 * mail from there up as a refresh fetches it, in halves of the
 * suspects while one is looked for.
 */
static int first_look_by_uid(struct sync *s, struct store_folder *f,
			     uint32_t first, const struct imap_box *box,
			     struct job *j)
{
	struct imap_fetch q = { .by_uid = false,
				.first = first,
				.last = first,
				.items = IMAP_ITEMS_UID,
				.fn = take_uid };
	struct sync_hunt *h;
	uint32_t u = 0;
	int rc;

	q.ctx = &u;
	rc = sync_grade_errno(imap_fetch(s->conn, &q));
	imap_fetch_release(&q);
	if (rc)
		return rc;
	if (!u || u >= box->uidnext) {
		log_warn("folder %s: no UID for message %u", f->name, first);
		return -EREMOTE;
	}
	h = sync_hunt_of(s, f->id);
	if (h && !h->hi)
		memset(h, 0, sizeof(*h)); /* by UID from now on */
	/* nothing is below the UID of message 1 */
	f->low_uid = first == 1 ? 1 : u;
	f->uidnext = u;
	rc = batch_save_bookmark(s, f);
	if (rc) {
		f->uidnext = f->low_uid = 0;
		return rc;
	}
	return fetch_new(s, f, box->uidnext, j);
}

/* UIDVALIDITY changed: every UID we hold names another message now.
 * They all become orphans, and the folder is learned again: each
 * message found with the same Message-ID, INTERNALDATE and size takes
 * its orphan's umid back, so inodes and file names survive. */
static int new_uidvalidity(struct sync *s, struct store_folder *f,
			   uint32_t uidvalidity)
{
	int rc;

	log_warn("folder %s: UIDVALIDITY changed from %u to %u; learning it "
		 "again",
		 f->name, f->uidvalidity, uidvalidity);
	/* the UIDs skipped or suspected name other messages now */
	for (size_t i = 0; i < s->npoisoned;) {
		if (s->poisoned[i].folder == f->id)
			s->poisoned[i] = s->poisoned[--s->npoisoned];
		else
			i++;
	}
	for (size_t i = 0; i < SYNC_HUNTS; i++)
		if (s->hunts[i].folder == f->id)
			memset(&s->hunts[i], 0, sizeof(s->hunts[i]));
	rc = store_begin(s->st);
	if (!rc)
		rc = store_folder_orphan_all(s->st, f->id);
	if (!rc)
		rc = store_skipped_clear(s->st, f->id);
	f->uidvalidity = uidvalidity;
	f->uidnext = f->low_uid = 0;
	f->highestmodseq = 0;
	f->complete_since = 0;
	if (!rc)
		rc = store_folder_set_sync(s->st, f);
	if (!rc)
		rc = store_commit(s->st);
	if (rc)
		store_rollback(s->st);
	else
		sync_notify(s, SYNC_MESSAGES, f->id);
	return rc;
}

int refresh_folder(struct sync *s, struct store_folder *f, struct job *j)
{
	struct imap_box box;
	uint64_t known = 0;
	uint32_t got, first;
	bool modseq_moved;
	int rc;

	/* before the EXAMINE: a STATUS of the selected folder is frowned on */
	if (!f->mailboxid && (s->conn->caps & CAP_OBJECTID)) {
		/* recorded once, to know the folder again after a rename */
		rc = sync_grade_errno(imap_mailboxid(s->conn, f->name, &f->mailboxid));
		if (!rc && f->mailboxid)
			rc = store_folder_set_mailboxid(s->st, f->id,
							f->mailboxid);
		if (rc)
			return rc;
	}
	rc = sync_grade_errno(imap_examine(s->conn, f->name, &box));
	if (rc)
		return rc;
	sync_note_total(s, f->id, box.exists);
	if (!box.uidvalidity) {
		/* RFC 3501 §9: nz-number. 0 says nothing: what we knew
		 * stays (or stays unknown), never a change that would make
		 * us learn the folder again */
		log_warn("folder %s: the server says UIDVALIDITY 0; taken as "
			 "unknown",
			 f->name);
		box.uidvalidity = f->uidvalidity;
	}
	if (f->uidvalidity && box.uidvalidity != f->uidvalidity) {
		rc = new_uidvalidity(s, f, box.uidvalidity);
		if (rc)
			return rc;
	}
	f->uidvalidity = box.uidvalidity;

	if (!f->uidnext) {
		/* never seen: the newest batch now, the rest by grow */
		if (!box.exists) {
			f->uidnext = box.uidnext ? box.uidnext : 1;
			f->low_uid = 1;
			f->highestmodseq = box.highestmodseq;
			return batch_save_bookmark(s, f);
		}
		f->highestmodseq = box.highestmodseq;
		f->complete_since = 0;
		if (s->cfg.horizon && box.uidnext) {
			/* the newest by sequence number may be older than
			 * the horizon: growth learns this folder by date,
			 * newest first, from the start */
			f->uidnext = f->low_uid = box.uidnext;
			return batch_save_bookmark(s, f);
		}
		first = box.exists > s->batch ? box.exists - s->batch + 1 : 1;
		/* this look broke the connection before: by UID now, so
		 * the message that did it can be found and left out */
		if (sync_hunt_of(s, f->id) && box.uidnext)
			return first_look_by_uid(s, f, first, &box, j);
		f->uidnext = box.uidnext;
		rc = refresh_seq_batch(s, f, first, box.exists, &got);
		if (rc)
			f->uidnext = 0;
		if (rc == -ENOTCONN) {
			log_info("folder %s: its first look broke the "
				 "connection; by UID next time",
				 f->name);
			sync_hunt_first_look(s, f->id);
		}
		return rc;
	}

	if (!box.uidnext || box.uidnext > f->uidnext) {
		rc = fetch_new(s, f, box.uidnext, j);
		if (rc)
			return rc;
	}
	if (stop_now(s, j))
		return -ECANCELED;

	modseq_moved = box.highestmodseq != f->highestmodseq;
	if ((s->conn->caps & CAP_CONDSTORE) && f->highestmodseq &&
	    box.highestmodseq) {
		if (modseq_moved)
			rc = flags_changed_since(s, f, j);
		if (!rc)
			rc = store_folder_count(s->st, f->id, &known);
		/* without VANISHED, a count that disagrees (or a change
		 * of MODSEQ, which an expunge makes) means a search */
		if (!rc && ((f->low_uid == 1 && known != box.exists) ||
			    (!s->conn->qresync && modseq_moved)))
			rc = gone_by_search(s, f, j);
	} else {
		rc = flags_by_chunks(s, f, j);
	}
	if (rc)
		return rc;
	f->highestmodseq = box.highestmodseq;
	return batch_save_bookmark(s, f);
}
