/*
 * messages.c - message metadata of one folder: the first sync (newest
 * first, in batches of sequence numbers), new mail by UIDNEXT, flag
 * changes and deletions of what we know (DESIGN §4).
 *
 * Every FETCH streams through a message handler, so memory stays bounded
 * by one message whatever the command returns; rows go to the store in
 * one transaction per batch with the folder's bookmark.
 */
#define LOG_CAT "sync"
#include "engine.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"

/* the header fields naming and threading need */
static const char *const header_fields[] = { "MESSAGE-ID", "SUBJECT", "FROM",
					     "REFERENCES", "IN-REPLY-TO" };

enum batch_mode {
	BATCH_INSERT, /* new rows; bookmark written by the caller */
	BATCH_ASCENDING, /* UID FETCH n:*: commit every SYNC_BATCH */
	BATCH_FLAGS, /* refresh of known UIDs: update flags, mark seen */
	BATCH_LOCATE, /* only learn the sequence number of one UID */
};

struct batch {
	struct sync *s;
	struct store_folder *f;
	enum batch_mode mode;
	uint32_t floor; /* ignore UIDs below: n:* also returns the last */
	uint32_t min_uid, max_uid;
	uint32_t seq; /* BATCH_LOCATE: the sequence number found */
	size_t pending; /* rows in the open transaction */
	size_t total;
	bool in_tx;
	int rc; /* first error; later messages are skipped */
	/* BATCH_FLAGS: the UIDs we know in the range, and which came back */
	uint32_t *known;
	size_t nknown;
	bool *seen;
	/* messages gone or hidden (\Deleted) in the open transaction, told
	 * to fs/ once it is committed so the kernel forgets their names */
	struct store_msg *gone;
	size_t ngone;
};

static void note_gone(struct batch *b, int64_t umid)
{
	struct store_msg m;

	if (store_msg_get(b->s->st, umid, &m))
		return;
	b->gone = xrealloc(b->gone, (b->ngone + 1) * sizeof(*b->gone));
	b->gone[b->ngone++] = m;
}

/* after a commit: tell fs/; after a rollback: forget them */
static void flush_gone(struct batch *b, bool committed)
{
	for (size_t i = 0; i < b->ngone; i++) {
		if (committed)
			sync_notify_gone(b->s, &b->gone[i]);
		store_msg_release(&b->gone[i]);
	}
	free(b->gone);
	b->gone = NULL;
	b->ngone = 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* flags as the store keeps them: sorted, space-separated, no \Recent */
static char *flags_string(struct mailimap_msg_att_dynamic *dyn)
{
	const char *names[64];
	char ext[64][80]; /* \Extension flags: libetpan drops the '\' */
	size_t n = 0, len = 1;
	char *out, *p;

	if (!dyn || !dyn->att_list)
		return xstrdup("");
	for (clistiter *it = clist_begin(dyn->att_list); it && n < 64;
	     it = clist_next(it)) {
		struct mailimap_flag_fetch *ff = clist_content(it);
		struct mailimap_flag *fl = ff->fl_flag;
		const char *name = NULL;

		if (ff->fl_type != MAILIMAP_FLAG_FETCH_OTHER || !fl)
			continue;
		switch (fl->fl_type) {
		case MAILIMAP_FLAG_ANSWERED: name = "\\Answered"; break;
		case MAILIMAP_FLAG_FLAGGED: name = "\\Flagged"; break;
		case MAILIMAP_FLAG_DELETED: name = "\\Deleted"; break;
		case MAILIMAP_FLAG_SEEN: name = "\\Seen"; break;
		case MAILIMAP_FLAG_DRAFT: name = "\\Draft"; break;
		case MAILIMAP_FLAG_KEYWORD: name = fl->fl_data.fl_keyword; break;
		case MAILIMAP_FLAG_EXTENSION:
			if (!fl->fl_data.fl_extension)
				break;
			snprintf(ext[n], sizeof(ext[n]), "\\%s",
				 fl->fl_data.fl_extension);
			name = ext[n];
			break;
		}
		/* a flag is an atom: nothing that could split the list */
		if (!name || !*name || strpbrk(name, " \r\n"))
			continue;
		names[n++] = name;
	}
	qsort(names, n, sizeof(names[0]), cmp_str);
	for (size_t i = 0; i < n; i++)
		len += strlen(names[i]) + 2;
	p = out = xmalloc(len);
	*p = '\0';
	for (size_t i = 0; i < n; i++) {
		if (i && !strcmp(names[i], names[i - 1]))
			continue;
		p += sprintf(p, "%s%s", p == out ? "" : " ", names[i]);
	}
	return out;
}

/* INTERNALDATE to Unix time, and its zone in minutes east of UTC */
static void read_date(const struct mailimap_date_time *dt, int64_t *t,
		      int *zone)
{
	struct tm tm = { 0 };
	int z = dt->dt_zone, sign = z < 0 ? -1 : 1;

	z = abs(z);
	*zone = sign * (z / 100 * 60 + z % 100);
	tm.tm_year = dt->dt_year - 1900;
	tm.tm_mon = dt->dt_month - 1;
	tm.tm_mday = dt->dt_day;
	tm.tm_hour = dt->dt_hour;
	tm.tm_min = dt->dt_min;
	tm.tm_sec = dt->dt_sec;
	*t = (int64_t)timegm(&tm) - (int64_t)*zone * 60;
}

struct parsed {
	uint32_t uid;
	bool has_size, has_date, has_header;
	struct store_msg m;
	struct mime_fields mf;
};

static void parse_att(struct mailimap_msg_att *att, struct parsed *p)
{
	for (clistiter *it = clist_begin(att->att_list); it;
	     it = clist_next(it)) {
		struct mailimap_msg_att_item *item = clist_content(it);
		struct mailimap_msg_att_static *st;

		if (item->att_type == MAILIMAP_MSG_ATT_ITEM_DYNAMIC) {
			free(p->m.flags);
			p->m.flags = flags_string(item->att_data.att_dyn);
			continue;
		}
		if (item->att_type != MAILIMAP_MSG_ATT_ITEM_STATIC)
			continue;
		st = item->att_data.att_static;
		switch (st->att_type) {
		case MAILIMAP_MSG_ATT_UID:
			p->uid = st->att_data.att_uid;
			break;
		case MAILIMAP_MSG_ATT_RFC822_SIZE:
			p->m.size = st->att_data.att_rfc822_size;
			p->has_size = true;
			break;
		case MAILIMAP_MSG_ATT_INTERNALDATE:
			if (st->att_data.att_internal_date) {
				read_date(st->att_data.att_internal_date,
					  &p->m.date, &p->m.zone);
				p->has_date = true;
			}
			break;
		case MAILIMAP_MSG_ATT_BODY_SECTION: {
			struct mailimap_msg_att_body_section *sec =
				st->att_data.att_body_section;

			if (sec && sec->sec_body_part && !p->has_header) {
				mime_parse_fields(sec->sec_body_part,
						  sec->sec_length, &p->mf);
				p->has_header = true;
			}
			break;
		}
		default:
			break;
		}
	}
}

static int tx_begin(struct batch *b)
{
	int rc;

	if (b->in_tx)
		return 0;
	rc = store_begin(b->s->st);
	if (!rc)
		b->in_tx = true;
	return rc;
}

/* commit the open transaction; with BATCH_ASCENDING the bookmark moves
 * up to the last UID written, in the same transaction */
static int tx_commit(struct batch *b)
{
	struct store_folder *f = b->f;
	int rc = 0;

	if (!b->in_tx)
		return 0;
	if (b->mode == BATCH_ASCENDING && b->max_uid >= f->uidnext) {
		f->uidnext = b->max_uid + 1;
		rc = store_folder_set_sync(b->s->st, f->id, f->uidvalidity,
					   f->uidnext, f->low_uid,
					   f->highestmodseq);
	}
	if (!rc)
		rc = store_commit(b->s->st);
	if (rc)
		store_rollback(b->s->st);
	b->in_tx = false;
	b->pending = 0;
	flush_gone(b, !rc);
	if (!rc)
		sync_notify(b->s, SYNC_MESSAGES, f->id);
	return rc;
}

static bool known_index(const struct batch *b, uint32_t uid, size_t *i)
{
	size_t lo = 0, hi = b->nknown;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (b->known[mid] == uid) {
			*i = mid;
			return true;
		}
		if (b->known[mid] < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return false;
}

static void put_message(struct batch *b, struct parsed *p)
{
	struct store_msg *m = &p->m;
	size_t i;
	int rc;

	if (b->mode == BATCH_FLAGS) {
		/* only rows we already have: a UID outside the store is
		 * new mail, which the UIDNEXT fetch handles */
		if (!known_index(b, p->uid, &i))
			return;
		b->seen[i] = true;
	} else if (!p->has_size || !p->has_date) {
		log_warn("folder %s: UID %u came without size or date, skipped",
			 b->f->name, p->uid);
		return;
	}
	if (!m->flags)
		m->flags = xstrdup("");
	m->folder = b->f->id;
	m->uid = p->uid;
	m->message_id = p->mf.message_id;
	m->subject = p->mf.subject;
	m->from = p->mf.from;
	m->references = p->mf.references;
	m->in_reply_to = p->mf.in_reply_to;
	rc = tx_begin(b);
	/* a new message joins its conversation in the same transaction */
	if (!rc && b->mode == BATCH_FLAGS)
		rc = store_msg_set_flags(b->s->st, m);
	else if (!rc)
		rc = thread_put(b->s->st, m);
	m->message_id = m->subject = m->from = NULL;
	m->references = m->in_reply_to = NULL;
	if (rc) {
		b->rc = rc;
		return;
	}
	/* \Deleted hides a message: its name must go from the kernel too */
	if (b->mode == BATCH_FLAGS && strstr(m->flags, "\\Deleted"))
		note_gone(b, m->umid);
	b->pending++;
	b->total++;
	if (b->mode == BATCH_ASCENDING && b->pending >= SYNC_BATCH)
		b->rc = tx_commit(b);
}

static void on_message(struct mailimap_msg_att *att, void *ctx)
{
	struct batch *b = ctx;
	struct parsed p = { 0 };

	if (b->rc)
		return;
	parse_att(att, &p);
	if (b->mode == BATCH_LOCATE) {
		if (p.uid == b->floor)
			b->seq = att->att_number;
		goto out;
	}
	if (!p.uid || p.uid < b->floor)
		goto out;
	if (!b->min_uid || p.uid < b->min_uid)
		b->min_uid = p.uid;
	if (p.uid > b->max_uid)
		b->max_uid = p.uid;
	put_message(b, &p);
	atomic_fetch_add(&b->s->headers_fetched, 1);
out:
	free(p.m.flags);
	mime_fields_release(&p.mf);
}

static void no_progress(size_t current, size_t maximum, void *ctx)
{
}

static struct mailimap_fetch_type *fetch_type(enum batch_mode mode)
{
	struct mailimap_fetch_type *ft;
	clist *hdrs;

	ft = mailimap_fetch_type_new_fetch_att_list_empty();
	mailimap_fetch_type_new_fetch_att_list_add(ft,
						   mailimap_fetch_att_new_uid());
	if (mode == BATCH_LOCATE)
		return ft;
	mailimap_fetch_type_new_fetch_att_list_add(
		ft, mailimap_fetch_att_new_flags());
	if (mode == BATCH_FLAGS)
		return ft;
	mailimap_fetch_type_new_fetch_att_list_add(
		ft, mailimap_fetch_att_new_internaldate());
	mailimap_fetch_type_new_fetch_att_list_add(
		ft, mailimap_fetch_att_new_rfc822_size());
	hdrs = clist_new();
	for (size_t i = 0; i < sizeof(header_fields) / sizeof(header_fields[0]);
	     i++)
		clist_append(hdrs, xstrdup(header_fields[i]));
	mailimap_fetch_type_new_fetch_att_list_add(
		ft, mailimap_fetch_att_new_body_peek_section(
			    mailimap_section_new_header_fields(
				    mailimap_header_list_new(hdrs))));
	return ft;
}

/*
 * run_fetch - one FETCH (by UID or by sequence number) of @set, each
 * message handed to the batch as it is parsed. Takes ownership of @set.
 */
static int run_fetch(struct batch *b, struct mailimap_set *set, bool by_uid)
{
	struct conn *c = b->s->conn;
	struct mailimap_fetch_type *ft = fetch_type(b->mode);
	clist *result = NULL;
	int rc;

	mailimap_set_msg_att_handler(c->imap, on_message, b);
	mailimap_set_progress_callback(c->imap, no_progress, no_progress, b);
	if (by_uid)
		rc = mailimap_uid_fetch(c->imap, set, ft, &result);
	else
		rc = mailimap_fetch(c->imap, set, ft, &result);
	mailimap_set_msg_att_handler(c->imap, NULL, NULL);
	mailimap_set_progress_callback(c->imap, NULL, NULL, NULL);
	if (result)
		mailimap_fetch_list_free(result);
	mailimap_fetch_type_free(ft);
	mailimap_set_free(set);
	if (rc != MAILIMAP_NO_ERROR) {
		if (b->in_tx) {
			store_rollback(b->s->st);
			b->in_tx = false;
		}
		flush_gone(b, false);
		return conn_errno(c, rc, "cannot fetch message data");
	}
	return b->rc;
}

static int save_bookmark(struct sync *s, struct store_folder *f)
{
	return store_folder_set_sync(s->st, f->id, f->uidvalidity, f->uidnext,
				     f->low_uid, f->highestmodseq);
}

/*
 * fetch_seq_batch - the messages at sequence numbers [@first, @last] in
 * one transaction, with the bookmark: everything from the lowest UID of
 * the batch up is known (down to 1 when the batch reached sequence 1).
 * @top_uidnext, when not 0, is the UIDNEXT to record (first batch).
 */
static int fetch_seq_batch(struct sync *s, struct store_folder *f,
			   uint32_t first, uint32_t last, uint32_t top_uidnext)
{
	struct batch b = { .s = s, .f = f, .mode = BATCH_INSERT };
	int rc;

	rc = run_fetch(&b, mailimap_set_new_interval(first, last), false);
	if (rc)
		goto fail;
	rc = tx_begin(&b);
	if (rc)
		goto fail;
	if (top_uidnext)
		f->uidnext = top_uidnext;
	if (first == 1)
		f->low_uid = 1;
	else if (b.min_uid)
		f->low_uid = b.min_uid;
	rc = save_bookmark(s, f);
	if (rc)
		goto fail;
	return tx_commit(&b);
fail:
	if (b.in_tx)
		store_rollback(s->st);
	return rc;
}

/* sequence number of @uid now, 0 if it is gone */
static int locate(struct sync *s, struct store_folder *f, uint32_t uid,
		  uint32_t *seq)
{
	struct batch b = { .s = s, .f = f, .mode = BATCH_LOCATE, .floor = uid };
	int rc = run_fetch(&b, mailimap_set_new_single(uid), true);

	*seq = b.seq;
	return rc;
}

/* the count of messages below @uid, when @uid itself is gone */
static int count_below(struct sync *s, uint32_t uid, uint32_t *count)
{
	struct mailimap_search_key *key;
	clist *result = NULL;
	int rc;

	key = mailimap_search_key_new_uid(mailimap_set_new_interval(1, uid - 1));
	rc = mailimap_uid_search(s->conn->imap, NULL, key, &result);
	mailimap_search_key_free(key);
	if (rc != MAILIMAP_NO_ERROR)
		return conn_errno(s->conn, rc, "cannot search folder");
	*count = 0;
	for (clistiter *it = clist_begin(result); it; it = clist_next(it))
		if (*(uint32_t *)clist_content(it) < uid)
			(*count)++;
	mailimap_search_result_free(result);
	return 0;
}

/* grow: learn older messages, newest first, one batch at a time */
static int grow(struct sync *s, struct store_folder *f)
{
	while (f->low_uid > 1 && !sync_is_stopping(s)) {
		uint32_t seq, below = 0;
		int rc = locate(s, f, f->low_uid, &seq);

		if (rc)
			return rc;
		if (seq) {
			below = seq - 1;
		} else {
			rc = count_below(s, f->low_uid, &below);
			if (rc)
				return rc;
		}
		if (!below) {
			f->low_uid = 1;
			return save_bookmark(s, f);
		}
		rc = fetch_seq_batch(s, f,
				     below > SYNC_BATCH ? below - SYNC_BATCH + 1
							: 1,
				     below, 0);
		if (rc)
			return rc;
	}
	return 0;
}

/* new mail: UID FETCH uidnext:*, committed as it streams in */
static int fetch_new(struct sync *s, struct store_folder *f,
		     uint32_t server_uidnext)
{
	struct batch b = { .s = s, .f = f, .mode = BATCH_ASCENDING };
	int rc;

	b.floor = f->uidnext;
	rc = run_fetch(&b, mailimap_set_new_interval(f->uidnext, 0), true);
	if (!rc)
		rc = tx_begin(&b);
	if (rc)
		return rc;
	/* nothing below the server's UIDNEXT is missing now */
	if (server_uidnext > f->uidnext && !b.rc) {
		if (b.max_uid < server_uidnext - 1)
			b.max_uid = server_uidnext - 1;
	}
	return tx_commit(&b);
}

/* flags and deletions of the UIDs we know */
static int refresh_known(struct sync *s, struct store_folder *f)
{
	struct batch b = { .s = s, .f = f, .mode = BATCH_FLAGS };
	int rc;

	if (!f->low_uid || f->uidnext <= f->low_uid)
		return 0;
	rc = store_msg_uids(s->st, f->id, f->low_uid, f->uidnext - 1, &b.known,
			    &b.nknown);
	if (rc)
		return rc;
	if (!b.nknown)
		goto out;
	b.seen = xcalloc(b.nknown, sizeof(bool));
	rc = run_fetch(&b, mailimap_set_new_interval(f->low_uid, f->uidnext - 1),
		       true);
	if (rc)
		goto out;
	rc = tx_begin(&b);
	for (size_t i = 0; !rc && i < b.nknown; i++) {
		int64_t umid;

		if (b.seen[i])
			continue;
		rc = store_msg_find_uid(s->st, f->id, b.known[i], &umid);
		if (!rc) {
			note_gone(&b, umid);
			rc = store_msg_delete(s->st, umid);
		}
		b.pending++;
	}
	if (!rc)
		rc = tx_commit(&b);
	else if (b.in_tx)
		store_rollback(s->st);
	flush_gone(&b, false);
out:
	free(b.known);
	free(b.seen);
	return rc;
}

/* UIDVALIDITY changed: the UIDs we hold name other messages now */
static int forget_uids(struct sync *s, struct store_folder *f)
{
	uint32_t *uids = NULL;
	size_t n = 0;
	int rc;

	log_warn("folder %s: UIDVALIDITY changed, learning it again", f->name);
	rc = store_msg_uids(s->st, f->id, 0, UINT32_MAX, &uids, &n);
	if (rc)
		return rc;
	rc = store_begin(s->st);
	for (size_t i = 0; !rc && i < n; i++) {
		int64_t umid;

		rc = store_msg_find_uid(s->st, f->id, uids[i], &umid);
		if (!rc)
			rc = store_msg_delete(s->st, umid);
	}
	free(uids);
	f->uidnext = f->low_uid = 0;
	f->highestmodseq = 0;
	if (!rc)
		rc = save_bookmark(s, f);
	if (!rc)
		rc = store_commit(s->st);
	if (rc)
		store_rollback(s->st);
	return rc;
}

int sync_folder(struct sync *s, int64_t id, bool with_grow)
{
	struct store_folder f = { 0 };
	struct mailimap_selection_info *sel;
	uint32_t uidvalidity, uidnext, exists;
	uint64_t modseq, count = 0;
	int rc;

	rc = store_folder_get(s->st, id, &f);
	if (rc)
		return rc;
	if (f.noselect)
		goto out;
	if (!conn_name_ok(f.name)) {
		log_warn("folder name %s cannot be sent back safely, skipped",
			 f.display);
		goto out;
	}
	/* select again for fresh UIDNEXT / EXISTS / HIGHESTMODSEQ */
	free(s->conn->selected);
	s->conn->selected = NULL;
	rc = conn_select(s->conn, f.name, false);
	if (rc)
		goto out;
	sel = s->conn->imap->imap_selection_info;
	uidvalidity = sel->sel_uidvalidity;
	uidnext = sel->sel_uidnext;
	exists = sel->sel_exists;
	modseq = s->conn->highestmodseq;

	if (f.uidvalidity && f.uidvalidity != uidvalidity) {
		rc = forget_uids(s, &f);
		if (rc)
			goto out;
	}
	f.uidvalidity = uidvalidity;
	if (!exists) {
		/* everything we knew was expunged */
		rc = refresh_known(s, &f);
		if (rc)
			goto out;
		if (uidnext)
			f.uidnext = uidnext;
		f.low_uid = 1;
		f.highestmodseq = modseq;
		rc = save_bookmark(s, &f);
		goto out;
	}
	if (!f.uidnext) {
		/* never seen: the newest batch first, the rest by grow() */
		rc = fetch_seq_batch(s, &f,
				     exists > SYNC_BATCH ? exists - SYNC_BATCH + 1
							 : 1,
				     exists, uidnext);
		if (rc)
			goto out;
		f.highestmodseq = modseq;
		rc = save_bookmark(s, &f);
	} else {
		if (!uidnext || uidnext > f.uidnext) {
			rc = fetch_new(s, &f, uidnext);
			if (rc)
				goto out;
		}
		rc = store_folder_count(s->st, f.id, &count);
		if (rc)
			goto out;
		/* with CONDSTORE an unchanged HIGHESTMODSEQ and count mean
		 * no flag changed and nothing was expunged */
		if (!(modseq && modseq == f.highestmodseq && count == exists &&
		      f.low_uid == 1)) {
			rc = refresh_known(s, &f);
			if (rc)
				goto out;
		}
		f.highestmodseq = modseq;
		rc = save_bookmark(s, &f);
	}
	if (!rc && with_grow)
		rc = grow(s, &f);
out:
	store_folder_release(&f);
	return rc;
}
