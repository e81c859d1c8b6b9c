/*
 * batch.c - a batch of message metadata: parsed into memory as a FETCH
 * reply streams in (bounded by count and bytes), then written in one
 * short transaction together with the bookmark that covers it. No
 * SQLite write transaction is ever open while the network is waited
 * on, and every error path rolls back.
 */
#define LOG_CAT "sync"
#include "engine.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* a batch is written once it holds this much, whatever the command */
#define BATCH_MAX_BYTES (8u << 20)

void batch_init(struct batch *b, struct sync *s, struct store_folder *f,
		enum batch_mode mode)
{
	memset(b, 0, sizeof(*b));
	b->s = s;
	b->f = f;
	b->mode = mode;
}

static void clear(struct batch *b)
{
	for (size_t i = 0; i < b->n; i++) {
		free(b->v[i].flags);
		free(b->v[i].emailid);
		mime_fields_release(&b->v[i].mf);
	}
	b->n = 0;
	b->bytes = 0;
	b->ngone = 0;
}

void batch_release(struct batch *b)
{
	clear(b);
	free(b->v);
	free(b->gone);
	free(b->seen);
	b->v = NULL;
	b->gone = NULL;
	b->seen = NULL;
	b->nseen = b->capseen = 0;
	b->cap = 0;
}

int batch_take(const struct imap_msg *m, void *ctx)
{
	struct batch *b = ctx;
	struct batch_msg *bm;

	if (b->n == b->cap) {
		b->cap = b->cap ? 2 * b->cap : 256;
		b->v = xrealloc(b->v, b->cap * sizeof(*b->v));
	}
	bm = &b->v[b->n++];
	memset(bm, 0, sizeof(*bm));
	bm->uid = m->uid;
	bm->flags = xstrdup(m->flags ? m->flags : "");
	bm->has_size = m->has_size;
	bm->has_date = m->has_date;
	bm->size = m->size;
	bm->date = m->date;
	bm->zone = m->zone;
	bm->emailid = m->emailid ? xstrdup(m->emailid) : NULL;
	if (m->header)
		mime_parse_fields(m->header, m->header_len, &bm->mf);
	b->bytes += sizeof(*bm) + strlen(bm->flags) + m->header_len;
	/* stored without them it would have no date or size: asked for
	 * again (the bookmark stays below it) */
	if (b->mode == BATCH_NEW && (!m->has_size || !m->has_date) &&
	    (!b->skipped_uid || m->uid < b->skipped_uid))
		b->skipped_uid = m->uid;
	if (!b->min_uid || m->uid < b->min_uid)
		b->min_uid = m->uid;
	if (m->uid > b->max_uid)
		b->max_uid = m->uid;
	atomic_fetch_add(&b->s->headers_fetched, b->mode == BATCH_NEW);
	if (b->nseen == b->capseen) {
		b->capseen = b->capseen ? 2 * b->capseen : 256;
		b->seen = xrealloc(b->seen, b->capseen * sizeof(*b->seen));
	}
	b->seen[b->nseen++] = m->uid;
	/* a long reply (CHANGEDSINCE over a big folder, or everything
	 * above a UIDNEXT the server did not give) is written as it comes,
	 * each part in a short transaction of its own: the writes are the
	 * same whenever they happen, and the bookmark waits for the end */
	if (batch_full(b))
		return batch_write(b, false);
	return 0;
}

void batch_gone(struct batch *b, uint32_t uid)
{
	b->gone = xrealloc(b->gone, (b->ngone + 1) * sizeof(*b->gone));
	b->gone[b->ngone++] = uid;
}

bool batch_full(const struct batch *b)
{
	return b->n >= SYNC_BATCH * SYNC_FLAGS_PER_BATCH ||
	       b->bytes >= BATCH_MAX_BYTES;
}

/* messages gone or hidden, told to fs/ once the transaction committed */
struct told {
	struct store_msg *v;
	size_t n;
	bool changed;
};

static void tell_later(struct batch *b, struct told *t, int64_t umid)
{
	struct store_msg m;

	if (store_msg_get(b->s->st, umid, &m))
		return;
	t->v = xrealloc(t->v, (t->n + 1) * sizeof(*t->v));
	t->v[t->n++] = m;
}

static void tell_now(struct batch *b, struct told *t, bool committed)
{
	/* told even when rolled back, so that the list does not grow: a
	 * conversation told that did not change costs a lookup */
	sync_notify_convs(b->s, b->s->st);
	for (size_t i = 0; i < t->n; i++) {
		if (committed)
			sync_notify_gone(b->s, &t->v[i]);
		store_msg_release(&t->v[i]);
	}
	free(t->v);
	if (committed && t->changed)
		sync_notify(b->s, SYNC_MESSAGES, b->f->id);
}

static bool has_deleted(const char *flags)
{
	const char *p = strstr(flags, "\\Deleted");

	return p && (p[8] == '\0' || p[8] == ' ');
}

/* a new message: adopt an orphan it is (when any waits), else store
 * and thread it */
static int put_new(struct batch *b, struct batch_msg *bm, bool orphans,
		   struct told *t)
{
	struct store_msg m = { 0 };
	bool adopted = false;
	int rc;

	if (!bm->has_size || !bm->has_date) {
		log_warn("folder %s: UID %u came without size or date; "
			 "asked again at the next refresh",
			 b->f->name, bm->uid);
		return 0;
	}
	m.folder = b->f->id;
	m.uid = bm->uid;
	m.flags = bm->flags;
	m.date = bm->date;
	m.zone = bm->zone;
	m.size = bm->size;
	m.message_id = bm->mf.message_id;
	m.subject = bm->mf.subject;
	m.from = bm->mf.from;
	m.references = bm->mf.references;
	m.in_reply_to = bm->mf.in_reply_to;
	m.emailid = bm->emailid;
	/* thread_put stores a new row, or updates one stored already (a
	 * batch done twice); only a row not stored may adopt an orphan */
	rc = 0;
	if (orphans) {
		rc = store_msg_find_uid(b->s->st, m.folder, m.uid, &m.umid);
		if (rc == -ENOENT) {
			rc = store_msg_adopt(b->s->st, &m);
			adopted = !rc;
			if (adopted)
				log_debug("folder %s: UID %u is message %lld "
					  "found again",
					  b->f->name, bm->uid,
					  (long long)m.umid);
			else if (rc == -ENOENT)
				rc = 0;
		}
	}
	if (!rc && !adopted)
		rc = thread_put(b->s->st, &m);
	t->changed = true;
	if (!rc && has_deleted(bm->flags))
		tell_later(b, t, m.umid);
	return rc;
}

/* a known message's flags. A UID not in the store is left alone: new
 * mail, or older mail not learned yet (flag checks cover every known
 * UID, and the ranges between those learned by date hold unknown ones,
 * some past the horizon), which only growth may store */
static int put_flags(struct batch *b, struct batch_msg *bm, struct told *t)
{
	struct store_msg m = { 0 };
	bool changed = false;
	int rc;

	m.folder = b->f->id;
	m.uid = bm->uid;
	m.flags = bm->flags;
	rc = store_msg_set_flags(b->s->st, &m, &changed);
	if (rc == -ENOENT)
		return 0;
	if (rc || !changed)
		return rc;
	t->changed = true;
	/* \Deleted hides a message: its name must go from the kernel too,
	 * once, when the flag comes */
	if (has_deleted(bm->flags))
		tell_later(b, t, m.umid);
	return 0;
}

/*
 * UID @uid is no longer in its folder. If a message stored earlier in
 * this pass in another folder is the same one (moved by another client,
 * its new folder refreshed first), the old row takes its place; else
 * it waits as an orphan for the rest of the pass.
 */
static int put_gone(struct batch *b, uint32_t uid, struct told *t)
{
	struct store_msg old;
	int64_t umid, twin = 0;
	int rc;

	rc = store_msg_find_uid(b->s->st, b->f->id, uid, &umid);
	if (rc == -ENOENT)
		return 0;
	if (rc)
		return rc;
	rc = store_msg_get(b->s->st, umid, &old);
	if (rc)
		return rc;
	rc = store_msg_find_twin(b->s->st, b->s->pass_start, &old, &twin);
	if (!rc && twin) {
		tell_later(b, t, twin);
		log_debug("message %lld moved to where %lld was found",
			  (long long)umid, (long long)twin);
		rc = store_msg_take_place(b->s->st, umid, twin);
	} else if (!rc) {
		rc = store_msg_orphan(b->s->st, umid);
	}
	if (!rc) {
		t->v = xrealloc(t->v, (t->n + 1) * sizeof(*t->v));
		t->v[t->n++] = old;
		t->changed = true;
	} else {
		store_msg_release(&old);
	}
	return rc;
}

int batch_save_bookmark(struct sync *s, struct store_folder *f)
{
	struct batch b;
	int rc;

	batch_init(&b, s, f, BATCH_NEW);
	rc = batch_write(&b, true);
	batch_release(&b);
	return rc;
}

int batch_write(struct batch *b, bool bookmark)
{
	struct store_folder *f = b->f;
	struct told t = { 0 };
	bool orphans = true;
	int rc;

	if (!b->n && !b->ngone && !bookmark)
		return 0;
	rc = store_begin(b->s->st);
	if (!rc && b->mode == BATCH_NEW && b->n)
		rc = store_has_orphans(b->s->st, &orphans);
	for (size_t i = 0; !rc && i < b->n; i++)
		rc = b->mode == BATCH_NEW ? put_new(b, &b->v[i], orphans, &t)
					  : put_flags(b, &b->v[i], &t);
	for (size_t i = 0; !rc && i < b->ngone; i++)
		rc = put_gone(b, b->gone[i], &t);
	if (!rc && bookmark)
		rc = store_folder_set_sync(b->s->st, f);
	if (!rc)
		rc = store_commit(b->s->st);
	if (rc) {
		store_rollback(b->s->st);
		log_warn("folder %s: batch of %zu messages not stored: %s",
			 f->name, b->n, strerror(-rc));
	}
	tell_now(b, &t, !rc);
	clear(b);
	if (!rc)
		sync_made_progress(b->s);
	return rc;
}
