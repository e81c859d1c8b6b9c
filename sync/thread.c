/*
 * thread.c - threading messages into conversations (DESIGN §4): the
 * connected components of the graph whose edges join a message to every
 * id in its Message-ID, In-Reply-To and References. header_ids remembers
 * which conversation each id seen so far belongs to, also ids only
 * referenced, so a reply that arrives before its parent (or whose parent
 * sits in a folder not synced yet) still meets it later.
 *
 * Nothing here follows a chain of references from message to message:
 * every message is one bounded set of lookups and writes, so reference
 * loops, self-references and duplicated Message-IDs cannot make it loop.
 */
#include "sync_i.h"

#define LOG_CAT "thread"
#include "common.h"
#include "store.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* In-Reply-To normally holds one id; a few more are tolerated */
#define THREAD_MAX_REPLY_IDS 8

/* longer "ids" are garbage (RFC 5322 lines end at 998 characters) */
#define THREAD_MAX_ID_LEN 998

/* the distinct header ids of one message, in a buffer of their own */
struct hids {
	const char *id[THREAD_MAX_IDS]; /* borrowed from buf */
	size_t len[THREAD_MAX_IDS];
	size_t n;
	char *buf; /* owned */
	size_t used;
};

/* a "<...>" of a header value, as it stands there */
struct span {
	const char *p;
	size_t len;
};

/* white space, and the other controls no id may hold */
static bool is_space(char c)
{
	return (unsigned char)c <= ' ';
}

/*
 * The next "<...>" of @*p, as sync/mime.c reads a Message-ID: from a '<'
 * to the next '>'. Sets @t and moves @*p past it; false at the end.
 */
static bool next_token(const char **p, struct span *t)
{
	const char *lt, *gt;

	if (!*p || !(lt = strchr(*p, '<')) || !(gt = strchr(lt + 1, '>'))) {
		*p = NULL;
		return false;
	}
	t->p = lt;
	t->len = (size_t)(gt - lt) + 1;
	*p = gt + 1;
	return true;
}

/* length of @t without white space, 0 if that is no id: "<>", or
 * longer than any id can be */
static size_t token_len(const struct span *t)
{
	size_t i, k = 0;

	for (i = 0; i < t->len; i++)
		k += !is_space(t->p[i]);
	return k > 2 && k <= THREAD_MAX_ID_LEN ? k : 0;
}

/*
 * Add the id spelled by @t, without the white space that folding may
 * have put inside (RFC 5322 §3.6.4: an id has none), unless it is no id
 * or already there. @wrap adds the <> around a bare id.
 */
static void hids_add(struct hids *h, const struct span *t, bool wrap)
{
	char *out = h->buf + h->used, *o = out;
	size_t i, len;

	if (h->n == THREAD_MAX_IDS)
		return;
	if (wrap)
		*o++ = '<';
	for (i = 0; i < t->len; i++)
		if (!is_space(t->p[i]))
			*o++ = t->p[i];
	if (wrap)
		*o++ = '>';
	*o = '\0';
	len = (size_t)(o - out);
	if (len <= 2 || len > THREAD_MAX_ID_LEN)
		return;
	for (i = 0; i < h->n; i++)
		if (h->len[i] == len && !memcmp(h->id[i], out, len))
			return;
	h->id[h->n] = out;
	h->len[h->n++] = len;
	h->used += len + 1;
}

static size_t len_or_0(const char *s)
{
	return s ? strlen(s) : 0;
}

/*
 * Collect the ids of @m: its Message-ID, the first few of In-Reply-To,
 * then References. References lists the thread's root first and the
 * parent last (RFC 5322 §3.6.4); when there are more than fit, the root
 * and the nearest ancestors are kept, as RFC 5322 asks of a mailer that
 * trims the field.
 */
static void hids_collect(struct hids *h, const struct store_msg *m)
{
	struct span t, first = { 0 }, last[THREAD_MAX_IDS];
	size_t k, room, nlast = 0, seen = 0, i;
	const char *p;

	h->n = 0;
	h->used = 0;
	/* every id is at most its raw span plus <> and a NUL */
	h->buf = xmalloc(2 * (len_or_0(m->message_id) +
			      len_or_0(m->in_reply_to) +
			      len_or_0(m->references)) +
			 8);

	p = m->message_id;
	if (next_token(&p, &t)) {
		hids_add(h, &t, false);
	} else if (m->message_id && *m->message_id &&
		   !strpbrk(m->message_id, " \t\r\n")) {
		/* a bare id, as some mailers write it */
		t.p = m->message_id;
		t.len = strlen(m->message_id);
		hids_add(h, &t, true);
	}

	p = m->in_reply_to;
	for (k = 0; k < THREAD_MAX_REPLY_IDS && next_token(&p, &t);)
		if (token_len(&t)) {
			hids_add(h, &t, false);
			k++;
		}

	/* the first, and the last room - 1 in a ring: one pass, however
	 * long a hostile References is */
	room = THREAD_MAX_IDS - h->n;
	p = m->references;
	while (room && next_token(&p, &t)) {
		if (!token_len(&t))
			continue;
		if (!seen++)
			first = t;
		else if (room > 1)
			last[nlast++ % (room - 1)] = t;
	}
	if (seen)
		hids_add(h, &first, false);
	if (nlast > room - 1) {
		for (i = 0; i < room - 1; i++)
			hids_add(h, &last[(nlast + i) % (room - 1)], false);
	} else {
		for (i = 0; i < nlast; i++)
			hids_add(h, &last[i], false);
	}
}

/*
 * The conversation of a message whose header ids are @h, into *@target:
 * the lowest-numbered one any id maps to, with the others merged into
 * it, or a new one if none does; every id not mapped yet is mapped to
 * it. The message itself is not touched. Every prefix of these steps
 * leaves consistent rows (store.h).
 */
static int decide(struct store *st, const struct hids *h, int64_t *target)
{
	int64_t convs[THREAD_MAX_IDS];
	const char *fresh[THREAD_MAX_IDS];
	size_t i, j, nfresh = 0;
	int rc;

	*target = 0;
	rc = store_conv_lookup(st, h->id, h->n, convs);
	if (rc)
		return rc;
	for (i = 0; i < h->n; i++)
		if (convs[i] && (!*target || convs[i] < *target))
			*target = convs[i];
	if (!*target)
		rc = store_conv_new(st, target);
	/* the lowest id survives, so the oldest directory stays */
	for (i = 0; i < h->n && !rc; i++) {
		if (!convs[i] || convs[i] == *target)
			continue;
		for (j = 0; j < i && convs[j] != convs[i]; j++)
			;
		if (j < i)
			continue; /* merged already */
		log_debug("conversation %lld merged into %lld",
			  (long long)convs[i], (long long)*target);
		rc = store_conv_merge(st, convs[i], *target);
	}
	/* ids of merged conversations moved with them; the rest are new */
	for (i = 0; i < h->n; i++)
		if (!convs[i])
			fresh[nfresh++] = h->id[i];
	if (!rc)
		rc = store_conv_add_ids(st, fresh, nfresh, *target);
	return rc;
}

int thread_message(struct store *st, const struct store_msg *m)
{
	int64_t target, cur;
	struct hids h;
	bool own;
	int rc;

	if (!m || m->umid <= 0)
		return -EINVAL;
	/* store_msg_put runs for every flag change too: the common case */
	rc = store_conv_of_msg(st, m->umid, &cur);
	if (rc || cur)
		return rc;

	hids_collect(&h, m);
	rc = store_conv_begin(st, &own);
	if (rc)
		goto out_free;
	/* the message joins last, in one statement: a failure before
	 * leaves it without a conversation, for thread_backlog */
	rc = decide(st, &h, &target);
	if (!rc)
		rc = store_conv_attach(st, target, m->umid);
	rc = store_conv_end(st, own, rc);
	if (rc)
		log_warn("cannot thread message %lld: %s", (long long)m->umid,
			 strerror(-rc));
out_free:
	free(h.buf);
	return rc;
}

int thread_put(struct store *st, struct store_msg *m)
{
	int64_t target;
	struct hids h;
	bool own;
	int rc;

	hids_collect(&h, m);
	rc = store_conv_begin(st, &own);
	if (rc)
		goto out_free;
	/* decided first, so the row is written once, with its conversation */
	rc = decide(st, &h, &target);
	if (rc)
		goto out_end;
	m->conv = target;
	rc = store_msg_put(st, m);
	if (rc || m->conv == target)
		goto out_end;
	/* the row was there already (a batch done again after a crash) */
	if (!m->conv) {
		rc = store_conv_attach(st, target, m->umid);
		m->conv = target;
	} else {
		/* its ids are mapped to @target now: one conversation, the
		 * lowest id surviving (an empty one made here just goes) */
		int64_t lo = m->conv < target ? m->conv : target;

		rc = store_conv_merge(st, m->conv + target - lo, lo);
		m->conv = lo;
	}
out_end:
	rc = store_conv_end(st, own, rc);
	if (rc)
		log_warn("cannot thread message %u of folder %lld: %s", m->uid,
			 (long long)m->folder, strerror(-rc));
out_free:
	free(h.buf);
	return rc;
}

#define BACKLOG_CHUNK 256

int thread_backlog(struct store *st, size_t max, size_t *done)
{
	struct store_msg v[BACKLOG_CHUNK];
	int64_t after = 0;
	size_t n, i;
	bool own;
	int rc;

	*done = 0;
	rc = store_conv_begin(st, &own);
	if (rc)
		return rc;
	while (*done < max) {
		size_t want = max - *done;

		rc = store_conv_unthreaded(st, after, want < BACKLOG_CHUNK ?
					   want : BACKLOG_CHUNK, v, &n);
		if (rc || !n)
			break;
		for (i = 0; i < n; i++) {
			int r = rc ? rc : thread_message(st, &v[i]);

			/* one message that cannot be threaded is left for
			 * later (its rows stay consistent); the database
			 * failing as a whole stops the backlog */
			if (!r)
				++*done;
			else if (!rc && (r == -ENOSPC || r == -EBUSY))
				rc = r;
			else if (!rc)
				log_warn("message %lld left unthreaded: %s",
					 (long long)v[i].umid, strerror(-r));
			after = v[i].umid;
			store_msg_release(&v[i]);
		}
		if (rc)
			break;
	}
	if (rc && own)
		*done = 0; /* rolled back */
	return store_conv_end(st, own, rc);
}
