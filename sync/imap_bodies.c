/*
 * imap_bodies.c - message bodies from the server: UID FETCH ... BODY.PEEK[]
 * (PEEK: reading never marks mail \Seen), one UID for a reader waiting
 * on it, or a set of UIDs in one command for prefetch, the bytes
 * streamed to the caller as they come, never held whole in memory.
 *
 * libetpan streams a literal's bytes before the FETCH response around
 * it is parsed, so while they stream nobody knows whose they are. The
 * caller keeps them aside; when the message's response is whole its
 * UID and what it held are judged, and the caller keeps or drops them.
 * Only a response holding exactly one body, BODY[] of the whole
 * message, counts: another section (BODY[HEADER] for BODY[]), a second
 * body, or a body in the FETCH of a UID not asked for is not what the
 * server has for that message.
 */
#define LOG_CAT "imap"
#include "sync_i.h"

#include <stdio.h>
#include <stdlib.h>

#include "common.h"
#include "imap_i.h"

struct bodies_ctx {
	struct imap_bodies *b;
	bool wrong_section; /* in the message now arriving */
};

/* BODY[] or BODY[]<0>: the whole message */
static bool whole_message(const struct mailimap_msg_att_body_section *sec)
{
	return sec && (!sec->sec_section || !sec->sec_section->sec_spec) &&
	       !sec->sec_origin_octet;
}

static bool on_bytes(int type, struct mailimap_msg_att_body_section *sec,
		     const char *bytes, size_t len, void *ctx)
{
	struct bodies_ctx *bc = ctx;

	if (type != MAILIMAP_MSG_ATT_BODY_SECTION || !whole_message(sec)) {
		/* read to its end, kept nowhere */
		bc->wrong_section = true;
		return true;
	}
	bc->b->cb_rc = bc->b->bytes(bytes, len, bc->b->ctx);
	return !bc->b->cb_rc;
}

static void on_att(struct mailimap_msg_att *att, void *ctx)
{
	struct bodies_ctx *bc = ctx;
	unsigned bodies = 0;
	uint32_t uid = 0;

	for (clistiter *it = clist_begin(att->att_list); it;
	     it = clist_next(it)) {
		struct mailimap_msg_att_item *item = clist_content(it);
		struct mailimap_msg_att_static *st;

		if (item->att_type != MAILIMAP_MSG_ATT_ITEM_STATIC)
			continue;
		st = item->att_data.att_static;
		switch (st->att_type) {
		case MAILIMAP_MSG_ATT_UID:
			uid = st->att_data.att_uid;
			break;
		case MAILIMAP_MSG_ATT_BODY_SECTION:
		case MAILIMAP_MSG_ATT_RFC822:
		case MAILIMAP_MSG_ATT_RFC822_TEXT:
		case MAILIMAP_MSG_ATT_RFC822_HEADER:
			bodies++;
			break;
		default:
			break;
		}
	}
	/* a FETCH with no body (flags another client changed) streamed
	 * nothing: there is nothing to judge */
	if (bodies || bc->wrong_section)
		bc->b->end(uid,
			   bodies == 1 && !bc->wrong_section ? IMAP_BODY_WHOLE
			   : bodies > 1			     ? IMAP_BODY_TWO
							     : IMAP_BODY_PART,
			   bc->b->ctx);
	bc->wrong_section = false;
}

static int fetch_set(struct conn *c, const struct imap_uid_range *v, size_t n,
		     struct imap_bodies *b, const char *what)
{
	struct bodies_ctx bc = { .b = b };
	struct mailimap_fetch_type *ft;
	struct mailimap_set *set;
	clist *result = NULL;
	int rc;

	b->cb_rc = 0;
	if (!n)
		return IMAP_OK;
	set = imap_set_of(v, n);
	ft = imap_must(mailimap_fetch_type_new_fetch_att_list_empty());
	imap_fetch_add(ft, mailimap_fetch_att_new_uid());
	imap_fetch_add(ft, mailimap_fetch_att_new_body_peek_section(
				   imap_must(mailimap_section_new(NULL))));
	mailimap_set_msg_body_handler(c->imap, on_bytes, &bc);
	mailimap_set_msg_att_handler(c->imap, on_att, &bc);
	mailimap_set_progress_callback(c->imap, imap_no_progress,
				       imap_no_progress, &bc);
	rc = mailimap_uid_fetch(c->imap, set, ft, &result);
	mailimap_set_msg_body_handler(c->imap, NULL, NULL);
	mailimap_set_msg_att_handler(c->imap, NULL, NULL);
	mailimap_set_progress_callback(c->imap, NULL, NULL, NULL);
	/* the handler took every message: the list is empty, if any */
	if (rc == MAILIMAP_NO_ERROR && result)
		mailimap_fetch_list_free(result);
	mailimap_fetch_type_free(ft);
	mailimap_set_free(set);
	if (rc != MAILIMAP_NO_ERROR)
		/* a handler that stopped the reply half-read loses the
		 * session too */
		return imap_grade(c, rc, what);
	return IMAP_OK;
}

int imap_fetch_bodies(struct conn *c, const struct imap_uid_range *v,
		      size_t n, struct imap_bodies *b)
{
	return fetch_set(c, v, n, b, "fetch bodies");
}

/* ---- one body, for a reader waiting on it ---- */

struct one_ctx {
	int (*fn)(const char *bytes, size_t len, void *ctx);
	void *ctx;
	uint32_t uid; /* asked for */
	uint64_t got;
	unsigned bodies; /* messages with a body in the reply */
	bool wrong_uid; /* a body came in a FETCH of another UID */
	enum imap_body_kind worst;
};

static int one_bytes(const char *bytes, size_t len, void *ctx)
{
	struct one_ctx *o = ctx;
	int rc = o->fn(bytes, len, o->ctx);

	if (!rc)
		o->got += len;
	return rc;
}

static void one_end(uint32_t uid, enum imap_body_kind kind, void *ctx)
{
	struct one_ctx *o = ctx;

	o->bodies++;
	if (uid != o->uid)
		o->wrong_uid = true;
	if (kind != IMAP_BODY_WHOLE)
		o->worst = kind;
}

int imap_fetch_body(struct conn *c, uint32_t uid,
		    int (*fn)(const char *bytes, size_t len, void *ctx),
		    void *ctx, uint64_t *got, int *cb_rc)
{
	struct one_ctx o = { .fn = fn, .ctx = ctx, .uid = uid,
			     .worst = IMAP_BODY_WHOLE };
	struct imap_bodies b = { .bytes = one_bytes, .end = one_end,
				 .ctx = &o };
	struct imap_uid_range r = { uid, uid };
	int g = fetch_set(c, &r, 1, &b, "fetch a body");

	*got = o.got;
	*cb_rc = b.cb_rc;
	if (g != IMAP_OK)
		return g;
	if (o.bodies > 1 || o.wrong_uid || o.worst != IMAP_BODY_WHOLE) {
		log_warn("the body of UID %u in %s refused: the server sent %s",
			 uid, c->selected ? c->selected : "?",
			 o.wrong_uid ? "a body for another UID" :
			 o.worst == IMAP_BODY_PART ?
				       "a part, not BODY[] of the message" :
				       "more than one body");
		return IMAP_MSG_BAD;
	}
	return IMAP_OK;
}
