/*
 * messages.c - the messages table (the umid location map) and the flag
 * sets the messages point at.
 */
#include "store_i.h"

#define LOG_CAT "store"
#include "common.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void store_msg_from_row(sqlite3_stmt *st, struct store_msg *m)
{
	memset(m, 0, sizeof(*m));
	m->umid = sqlite3_column_int64(st, 0);
	m->folder = sqlite3_column_int64(st, 1);
	/* an orphan (uid < 0, see orphans.c) reads as UID 0 */
	m->uid = sqlite3_column_int64(st, 2) > 0 ?
			 (uint32_t)sqlite3_column_int64(st, 2) : 0;
	m->conv = sqlite3_column_int64(st, 3);
	m->flags = store_column_strdup(st, 4);
	if (!m->flags)
		m->flags = xstrdup("");
	m->date = sqlite3_column_int64(st, 5);
	m->zone = sqlite3_column_int(st, 6);
	m->size = (uint64_t)sqlite3_column_int64(st, 7);
	m->message_id = store_column_strdup(st, 8);
	m->subject = store_column_strdup(st, 9);
	m->from = store_column_strdup(st, 10);
	m->references = store_column_strdup(st, 11);
	m->in_reply_to = store_column_strdup(st, 12);
	m->emailid = store_column_strdup(st, 13);
	m->real_size = sqlite3_column_type(st, 14) == SQLITE_NULL ?
			       -1 :
			       sqlite3_column_int64(st, 14);
	m->dest = sqlite3_column_int64(st, 15);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* whether @flags is already sorted, without duplicates or stray spaces */
static bool flags_are_canonical(const char *flags)
{
	const char *prev = NULL, *p = flags;
	size_t prevlen = 0;

	if (!*p)
		return true;
	for (;;) {
		const char *end = strchrnul(p, ' ');
		size_t len = (size_t)(end - p);

		if (!len)
			return false;
		if (prev) {
			int c = strncmp(prev, p, len < prevlen ? len : prevlen);

			if (c > 0 || (c == 0 && prevlen >= len))
				return false;
		}
		if (!*end)
			return true;
		prev = p;
		prevlen = len;
		p = end + 1;
	}
}

/*
 * One flag set must be one row, whoever spelled it: sort and dedupe the
 * words. Returns @flags itself when it already is canonical, else a new
 * string the caller frees.
 */
static char *flags_canonical(const char *flags)
{
	char *copy, *tok, *save, **words, *out, *o;
	size_t n = 0, i;

	if (flags_are_canonical(flags))
		return (char *)flags;
	copy = xstrdup(flags);
	words = xcalloc(strlen(flags) / 2 + 1, sizeof(*words));
	for (tok = strtok_r(copy, " ", &save); tok;
	     tok = strtok_r(NULL, " ", &save))
		words[n++] = tok;
	qsort(words, n, sizeof(*words), cmp_str);
	out = o = xmalloc(strlen(flags) + 1);
	*o = '\0';
	for (i = 0; i < n; i++) {
		if (i && !strcmp(words[i], words[i - 1]))
			continue;
		if (o != out)
			*o++ = ' ';
		o = stpcpy(o, words[i]);
	}
	free(words);
	free(copy);
	return out;
}

void store_flagset_forget(struct store *s)
{
	while (s->nflagset)
		free(s->flagset[--s->nflagset].flags);
	s->flagset_next = 0;
}

/* the id of flag set @flags (canonical), the row made if missing; inside
 * a write transaction, which keeps it from going before it is used */
static int flagset_id(struct store *s, const char *flags, int64_t *id)
{
	struct store_flagset_id *c;
	sqlite3_stmt *st;
	size_t i;
	int rc;

	for (i = 0; i < s->nflagset; i++) {
		if (!strcmp(s->flagset[i].flags, flags)) {
			*id = s->flagset[i].id;
			return 0;
		}
	}
	rc = store_prepare(s, ST_FLAGSET_ADD, &st);
	if (rc)
		return rc;
	store_bind_text(st, 1, flags);
	rc = sqlite3_step(st);
	rc = rc == SQLITE_DONE ? 0 : store_fail(s, ST_FLAGSET_ADD, rc);
	store_done(st);
	if (rc)
		return rc;
	rc = store_prepare(s, ST_FLAGSET_ID, &st);
	if (rc)
		return rc;
	store_bind_text(st, 1, flags);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*id = sqlite3_column_int64(st, 0);
		rc = 0;
	} else {
		rc = store_fail(s, ST_FLAGSET_ID, rc == SQLITE_DONE ?
				SQLITE_INTERNAL : rc);
	}
	store_done(st);
	if (rc)
		return rc;

	if (s->nflagset < STORE_FLAGSET_CACHE) {
		c = &s->flagset[s->nflagset++];
	} else {
		c = &s->flagset[s->flagset_next];
		s->flagset_next = (s->flagset_next + 1) % STORE_FLAGSET_CACHE;
		free(c->flags);
	}
	c->flags = xstrdup(flags);
	c->id = *id;
	return 0;
}

/*
 * The new row @m (umid set) counts in its flag set @flagset and, if it
 * has one, its conversation: what triggers did before schema version 3,
 * in statements that need no statement journal.
 */
static int msg_count_in(struct store *s, const struct store_msg *m,
			int64_t flagset)
{
	sqlite3_stmt *st;
	int rc;

	rc = store_exec_id(s, ST_FLAGSET_REF, flagset);
	if (rc || !m->conv)
		return rc;
	rc = store_conv_note_change(s, m->conv);
	if (!rc)
		rc = store_prepare(s, ST_CONV_ENTER, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, m->conv);
	sqlite3_bind_int64(st, 2, m->date);
	store_bind_text(st, 3, m->subject);
	sqlite3_bind_int(st, 4, m->zone);
	sqlite3_bind_int64(st, 5, m->umid);
	store_bind_text(st, 6, m->message_id);
	rc = sqlite3_step(st);
	rc = rc == SQLITE_DONE ? 0 : store_fail(s, ST_CONV_ENTER, rc);
	store_done(st);
	return rc;
}

/* (@m->folder, @m->uid) is stored already: set its umid and conv in @m,
 * and its flag set to @flagset; *@changed (may be NULL) says whether
 * that was a change */
static int msg_update(struct store *s, struct store_msg *m, int64_t flagset,
		      bool *changed)
{
	sqlite3_stmt *st;
	int64_t old = 0;
	int rc;

	rc = store_prepare(s, ST_MSG_LOCATE, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, m->folder);
	sqlite3_bind_int64(st, 2, m->uid);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		m->umid = sqlite3_column_int64(st, 0);
		m->conv = sqlite3_column_int64(st, 1); /* NULL reads as 0 */
		old = sqlite3_column_int64(st, 2);
		rc = 0;
	} else if (rc == SQLITE_DONE) {
		rc = -ENOENT; /* store_msg_set_flags of a UID not stored */
	} else {
		rc = store_fail(s, ST_MSG_LOCATE, rc);
	}
	store_done(st);
	if (changed)
		*changed = !rc && old != flagset;
	if (rc || old == flagset)
		return rc;
	/* the old flag set may go with its last message */
	store_flagset_forget(s);
	rc = store_prepare(s, ST_MSG_SET_FLAGSET, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, m->umid);
	sqlite3_bind_int64(st, 2, flagset);
	rc = sqlite3_step(st);
	rc = rc == SQLITE_DONE ? 0 : store_fail(s, ST_MSG_SET_FLAGSET, rc);
	store_done(st);
	return rc;
}

int store_msg_put(struct store *s, struct store_msg *m)
{
	const char *given = m->flags ? m->flags : "";
	char *flags = flags_canonical(given);
	int64_t flagset = 0;
	sqlite3_stmt *st;
	bool own;
	int rc;

	/*
	 * Alone, the statements need a transaction: between them another
	 * connection could drop the flag set as its refs reach 0, and the
	 * counts must move with the row.
	 */
	rc = store_tx_own(s, &own);
	if (rc)
		goto out_free;
	if (store_test_fail()) {
		log_error("msg_put failed: test hook CONVOYFS_TEST_FAIL_PUT");
		rc = -EIO;
		goto out_tx;
	}
	rc = flagset_id(s, flags, &flagset);
	if (rc)
		goto out_tx;
	rc = store_prepare(s, ST_MSG_PUT, &st);
	if (rc)
		goto out_tx;
	sqlite3_bind_int64(st, 1, m->folder);
	sqlite3_bind_int64(st, 2, m->uid);
	if (m->conv)
		sqlite3_bind_int64(st, 3, m->conv);
	else
		sqlite3_bind_null(st, 3);
	sqlite3_bind_int64(st, 4, flagset);
	sqlite3_bind_int64(st, 5, m->date);
	sqlite3_bind_int(st, 6, m->zone);
	sqlite3_bind_int64(st, 7, (int64_t)m->size);
	store_bind_text(st, 8, m->message_id);
	store_bind_text(st, 9, m->subject);
	store_bind_text(st, 10, m->from);
	/* only the threader reads them, and only from a row it has not
	 * threaded yet */
	store_bind_text(st, 11, m->conv ? NULL : m->references);
	store_bind_text(st, 12, m->conv ? NULL : m->in_reply_to);
	store_bind_text(st, 13, m->emailid);
	rc = sqlite3_step(st);
	rc = rc == SQLITE_DONE ? 0 : store_fail(s, ST_MSG_PUT, rc);
	store_done(st);
	if (rc)
		goto out_tx;
	if (sqlite3_changes(s->db) == 1) {
		m->umid = sqlite3_last_insert_rowid(s->db);
		rc = msg_count_in(s, m, flagset);
	} else {
		rc = msg_update(s, m, flagset, NULL);
	}
out_tx:
	rc = store_tx_end(s, own, rc);
out_free:
	if (flags != given)
		free(flags);
	return rc;
}

int store_msg_set_flags(struct store *s, struct store_msg *m, bool *changed)
{
	const char *given = m->flags ? m->flags : "";
	char *flags = flags_canonical(given);
	int64_t flagset = 0;
	bool own;
	int rc;

	rc = store_tx_own(s, &own);
	if (rc)
		goto out_free;
	rc = flagset_id(s, flags, &flagset);
	if (!rc)
		rc = msg_update(s, m, flagset, changed);
	rc = store_tx_end(s, own, rc);
out_free:
	if (flags != given)
		free(flags);
	return rc;
}

int store_flagset_of(struct store *s, const char *flags, int64_t *id)
{
	const char *given = flags ? flags : "";
	char *canon = flags_canonical(given);
	int rc = flagset_id(s, canon, id);

	if (canon != given)
		free(canon);
	return rc;
}

int store_msg_get(struct store *s, int64_t umid, struct store_msg *out)
{
	sqlite3_stmt *st;
	int rc = store_get_row(s, ST_MSG_GET, umid, &st);

	if (rc)
		return rc;
	store_msg_from_row(st, out);
	store_done(st);
	return 0;
}

void store_msg_release(struct store_msg *m)
{
	if (!m)
		return;
	free(m->flags);
	free(m->message_id);
	free(m->subject);
	free(m->from);
	free(m->references);
	free(m->in_reply_to);
	free(m->emailid);
	m->flags = m->message_id = m->subject = m->from = NULL;
	m->references = m->in_reply_to = m->emailid = NULL;
}

int store_msg_find_uid(struct store *s, int64_t folder, uint32_t uid,
		       int64_t *umid)
{
	sqlite3_stmt *st;
	int rc;

	rc = store_prepare(s, ST_MSG_FIND_UID, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, folder);
	sqlite3_bind_int64(st, 2, uid);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*umid = sqlite3_column_int64(st, 0);
		rc = 0;
	} else if (rc == SQLITE_DONE) {
		rc = -ENOENT;
	} else {
		rc = store_fail(s, ST_MSG_FIND_UID, rc);
	}
	store_done(st);
	return rc;
}

int store_msg_delete(struct store *s, int64_t umid)
{
	bool own;
	int rc;

	rc = store_tx_own(s, &own);
	if (rc)
		return rc;
	/* its flag set may go with it, and its conversation's ids */
	store_flagset_forget(s);
	store_hid_forget(s, false);
	/* file first: a rollback then leaves a row without a file, which
	 * counts as not cached, never a file nobody accounts for */
	store_body_unlink(s, umid);
	rc = store_exec_id(s, ST_BODY_DELETE, umid);
	if (!rc)
		rc = store_exec_id(s, ST_MSG_DELETE, umid);
	return store_tx_end(s, own, rc);
}

/* up to @max rows of statement @id (folder ?1, umid > ?2, limit ?3) */
static int list_rows(struct store *s, enum store_stmt id, int64_t folder,
		     int64_t after, size_t max, struct store_msg *out,
		     size_t *n)
{
	sqlite3_stmt *st;
	size_t len = 0;
	int rc;

	*n = 0;
	rc = store_prepare(s, id, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, folder);
	sqlite3_bind_int64(st, 2, after);
	sqlite3_bind_int64(st, 3, max > INT64_MAX ? INT64_MAX : (int64_t)max);
	while (len < max && (rc = sqlite3_step(st)) == SQLITE_ROW)
		store_msg_from_row(st, &out[len++]);
	if (len < max && rc != SQLITE_DONE) {
		rc = store_fail(s, id, rc);
		store_done(st);
		while (len)
			store_msg_release(&out[--len]);
		return rc;
	}
	store_done(st);
	*n = len;
	return 0;
}

/*
 * The rows of the folder on the server, and those pending moves show
 * in it, merged in umid order: the first @max of both are the first
 * @max of the union. A row shown elsewhere comes too (its dest says
 * so): the caller skips it and pages on.
 */
int store_msg_list(struct store *s, int64_t folder, int64_t after, size_t max,
		   struct store_msg *out, size_t *n)
{
	struct store_msg *in;
	size_t nout, nin, i = 0, j = 0, k = 0;
	int rc;

	*n = 0;
	if (!max)
		return 0;
	rc = list_rows(s, ST_MSG_LIST, folder, after, max, out, &nout);
	if (rc)
		return rc;
	in = xcalloc(max, sizeof(*in));
	rc = list_rows(s, ST_MSG_LIST_MOVED_IN, folder, after, max, in, &nin);
	if (rc || !nin) {
		free(in);
		if (rc)
			while (nout)
				store_msg_release(&out[--nout]);
		*n = nout;
		return rc;
	}
	/* merged, the @max lowest umids kept; a message moving back to
	 * where it is on the server comes in both lists: once is enough */
	struct store_msg *all = xcalloc(nout + nin, sizeof(*all));

	while (i < nout || j < nin) {
		if (j == nin || (i < nout && out[i].umid < in[j].umid)) {
			all[k++] = out[i++];
		} else if (i < nout && out[i].umid == in[j].umid) {
			store_msg_release(&in[j++]);
		} else {
			all[k++] = in[j++];
		}
	}
	for (i = max; i < k; i++)
		store_msg_release(&all[i]);
	*n = k < max ? k : max;
	memcpy(out, all, *n * sizeof(*out));
	free(all);
	free(in);
	return 0;
}

int store_msg_uids(struct store *s, int64_t folder, uint32_t lo, uint32_t hi,
		   uint32_t **uids, size_t *n)
{
	uint32_t *v = NULL;
	size_t len = 0, cap = 0;
	sqlite3_stmt *st;
	int rc;

	*uids = NULL;
	*n = 0;
	rc = store_prepare(s, ST_MSG_UIDS, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, folder);
	sqlite3_bind_int64(st, 2, lo);
	sqlite3_bind_int64(st, 3, hi);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (len == cap) {
			cap = cap ? 2 * cap : 256;
			v = xrealloc(v, cap * sizeof(*v));
		}
		v[len++] = (uint32_t)sqlite3_column_int64(st, 0);
	}
	if (rc != SQLITE_DONE) {
		rc = store_fail(s, ST_MSG_UIDS, rc);
		store_done(st);
		free(v);
		return rc;
	}
	store_done(st);
	*uids = v;
	*n = len;
	return 0;
}

int store_msg_uids_from(struct store *s, int64_t folder, uint32_t from,
			uint32_t below, size_t max, uint32_t **uids, size_t *n)
{
	uint32_t *v;
	size_t len = 0;
	sqlite3_stmt *st;
	int rc;

	*uids = NULL;
	*n = 0;
	rc = store_prepare(s, ST_MSG_UIDS_FROM, &st);
	if (rc)
		return rc;
	v = xmalloc((max ? max : 1) * sizeof(*v));
	sqlite3_bind_int64(st, 1, folder);
	sqlite3_bind_int64(st, 2, from);
	sqlite3_bind_int64(st, 3, below);
	sqlite3_bind_int64(st, 4, (int64_t)max);
	while (len < max && (rc = sqlite3_step(st)) == SQLITE_ROW)
		v[len++] = (uint32_t)sqlite3_column_int64(st, 0);
	if (len < max && rc != SQLITE_DONE) {
		rc = store_fail(s, ST_MSG_UIDS_FROM, rc);
		store_done(st);
		free(v);
		return rc;
	}
	store_done(st);
	*uids = v;
	*n = len;
	return 0;
}

int store_msg_dates_from(struct store *s, int64_t folder, int64_t since,
			 size_t max, int64_t **dates, size_t *n)
{
	int64_t *v;
	size_t len = 0;
	sqlite3_stmt *st;
	int rc;

	*dates = NULL;
	*n = 0;
	rc = store_prepare(s, ST_MSG_DATES_FROM, &st);
	if (rc)
		return rc;
	v = xmalloc((max ? max : 1) * sizeof(*v));
	sqlite3_bind_int64(st, 1, folder);
	sqlite3_bind_int64(st, 2, since);
	sqlite3_bind_int64(st, 3, (int64_t)max);
	while (len < max && (rc = sqlite3_step(st)) == SQLITE_ROW)
		v[len++] = sqlite3_column_int64(st, 0);
	if (len < max && rc != SQLITE_DONE) {
		rc = store_fail(s, ST_MSG_DATES_FROM, rc);
		store_done(st);
		free(v);
		return rc;
	}
	store_done(st);
	*dates = v;
	*n = len;
	return 0;
}
