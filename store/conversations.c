/*
 * conversations.c - the conversations table and header_ids, the map from
 * Message-ID values to conversations. Which messages belong together is
 * decided in sync/thread.c; this file only keeps the rows consistent.
 */
#include "store_i.h"

#define LOG_CAT "store"
#include "common.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* columns as CONV_COLUMNS in db.c */
static void conv_from_row(sqlite3_stmt *st, struct store_conv *c)
{
	memset(c, 0, sizeof(*c));
	c->id = sqlite3_column_int64(st, 0);
	c->subject = store_column_strdup(st, 1);
	c->first_date = sqlite3_column_int64(st, 2);
	c->first_zone = sqlite3_column_int(st, 3);
	c->last_date = sqlite3_column_int64(st, 4);
	c->count = (uint64_t)sqlite3_column_int64(st, 5);
}

static int64_t limit_of(size_t max)
{
	return max > INT64_MAX ? INT64_MAX : (int64_t)max;
}

/* run statement @id (already bound) expecting no rows; store_done after */
static int step_done(struct store *s, enum store_stmt id, sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);

	rc = rc == SQLITE_DONE ? 0 : store_fail(s, id, rc);
	store_done(st);
	return rc;
}

/* ---- what changed, for fs/ ---- */

int store_conv_note_change(struct store *s, int64_t id)
{
	struct store_conv c;
	int rc = store_conv_get(s, id, &c);

	if (rc == -ENOENT) {
		memset(&c, 0, sizeof(c));
		c.id = id;
		rc = 0;
	}
	if (rc)
		return rc;
	/* the array doubles: a batch of new mail notes one per message */
	if (!(s->nconv_changes & (s->nconv_changes - 1)))
		s->conv_changes = xrealloc(s->conv_changes,
					   (s->nconv_changes ? 2 * s->nconv_changes
							     : 1) *
						   sizeof(*s->conv_changes));
	s->conv_changes[s->nconv_changes++] = c;
	return 0;
}

void store_conv_changes_take(struct store *s, struct store_conv **v,
			     size_t *n)
{
	*v = s->conv_changes;
	*n = s->nconv_changes;
	s->conv_changes = NULL;
	s->nconv_changes = 0;
}

/* ---- reading ---- */

int store_conv_get(struct store *s, int64_t id, struct store_conv *out)
{
	sqlite3_stmt *st;
	int rc = store_get_row(s, ST_CONV_GET, id, &st);

	if (rc)
		return rc;
	conv_from_row(st, out);
	store_done(st);
	return 0;
}

void store_conv_release(struct store_conv *c)
{
	if (!c)
		return;
	free(c->subject);
	c->subject = NULL;
}

int store_conv_list(struct store *s, int64_t after, size_t max,
		    struct store_conv *out, size_t *n)
{
	sqlite3_stmt *st;
	size_t len = 0;
	int rc;

	*n = 0;
	if (!max)
		return 0;
	rc = store_prepare(s, ST_CONV_LIST, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, after);
	sqlite3_bind_int64(st, 2, limit_of(max));
	while (len < max && (rc = sqlite3_step(st)) == SQLITE_ROW)
		conv_from_row(st, &out[len++]);
	if (len < max && rc != SQLITE_DONE) {
		rc = store_fail(s, ST_CONV_LIST, rc);
		store_done(st);
		while (len)
			store_conv_release(&out[--len]);
		return rc;
	}
	store_done(st);
	*n = len;
	return 0;
}

/* messages of statement @id with ?1 = @key (if @nkeys is 2), then the
 * umid to start after and the limit */
static int msg_rows(struct store *s, enum store_stmt id, int nkeys,
		    int64_t key, int64_t after, size_t max,
		    struct store_msg *out, size_t *n)
{
	sqlite3_stmt *st;
	size_t len = 0;
	int rc, i = 1;

	*n = 0;
	if (!max)
		return 0;
	rc = store_prepare(s, id, &st);
	if (rc)
		return rc;
	if (nkeys == 2)
		sqlite3_bind_int64(st, i++, key);
	sqlite3_bind_int64(st, i++, after);
	sqlite3_bind_int64(st, i, limit_of(max));
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

int store_conv_messages(struct store *s, int64_t conv, int64_t after,
			size_t max, struct store_msg *out, size_t *n)
{
	return msg_rows(s, ST_CONV_MESSAGES, 2, conv, after, max, out, n);
}

int store_conv_unthreaded(struct store *s, int64_t after, size_t max,
			  struct store_msg *out, size_t *n)
{
	return msg_rows(s, ST_CONV_UNTHREADED, 1, 0, after, max, out, n);
}

/* ---- the threader's calls ---- */

/*
 * header_ids keys an id by a 64-bit hash of its text: an integer key
 * makes the map a quarter of the size of the text and each search
 * cheaper. FNV-1a, then a bijective mix so that similar ids spread over
 * the whole range. Two distinct ids collide with probability 2^-64, and
 * a collision only joins two conversations: a sender can do as much by
 * naming any id in References.
 */
static int64_t id_hash(const char *id)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (; *id; id++) {
		h ^= (unsigned char)*id;
		h *= 0x100000001b3ULL;
	}
	h ^= h >> 30;
	h *= 0xbf58476d1ce4e5b9ULL;
	h ^= h >> 27;
	h *= 0x94d049bb133111ebULL;
	h ^= h >> 31;
	return (int64_t)h;
}

/* ---- the table of header ids of the open transaction ---- */

void store_hid_forget(struct store *s, bool release)
{
	if (s->nhid)
		memset(s->hid, 0, STORE_HID_SLOTS * sizeof(*s->hid));
	s->nhid = 0;
	if (release) {
		free(s->hid);
		s->hid = NULL;
	}
}

/* whether the table may be used: only inside a write transaction (see
 * store_i.h), and never for the hash 0, which marks empty slots */
static bool hid_usable(struct store *s, int64_t hash)
{
	return hash && !sqlite3_get_autocommit(s->db);
}

static struct store_hid *hid_slot(struct store *s, int64_t hash)
{
	size_t i = (size_t)hash & (STORE_HID_SLOTS - 1);

	while (s->hid[i].hash && s->hid[i].hash != hash)
		i = (i + 1) & (STORE_HID_SLOTS - 1);
	return &s->hid[i];
}

static bool hid_get(struct store *s, int64_t hash, int64_t *conv)
{
	struct store_hid *h;

	if (!s->hid || !hid_usable(s, hash))
		return false;
	h = hid_slot(s, hash);
	if (!h->hash)
		return false;
	*conv = h->conv;
	return true;
}

/* remember that @hash maps to @conv (0: to nothing), as written or read
 * in this transaction */
static void hid_put(struct store *s, int64_t hash, int64_t conv)
{
	struct store_hid *h;

	if (!hid_usable(s, hash))
		return;
	if (!s->hid)
		s->hid = xcalloc(STORE_HID_SLOTS, sizeof(*s->hid));
	if (s->nhid >= STORE_HID_SLOTS / 4 * 3)
		store_hid_forget(s, false);
	h = hid_slot(s, hash);
	if (!h->hash) {
		h->hash = hash;
		s->nhid++;
	}
	h->conv = conv;
}

/* the ids of conversation @from now map to @into */
static void hid_merged(struct store *s, int64_t from, int64_t into)
{
	size_t i;

	if (!s->nhid)
		return;
	for (i = 0; i < STORE_HID_SLOTS; i++)
		if (s->hid[i].hash && s->hid[i].conv == from)
			s->hid[i].conv = into;
}

int store_conv_begin(struct store *s, bool *own)
{
	return store_tx_own(s, own);
}

int store_conv_end(struct store *s, bool own, int rc)
{
	return store_tx_end(s, own, rc);
}

int store_conv_of_msg(struct store *s, int64_t umid, int64_t *conv)
{
	sqlite3_stmt *st;
	int rc;

	rc = store_prepare(s, ST_CONV_OF_MSG, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, umid);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*conv = sqlite3_column_int64(st, 0); /* NULL reads as 0 */
		rc = 0;
	} else if (rc == SQLITE_DONE) {
		rc = -ENOENT;
	} else {
		rc = store_fail(s, ST_CONV_OF_MSG, rc);
	}
	store_done(st);
	return rc;
}

static int lookup_one(struct store *s, const char *id, int64_t *conv)
{
	int64_t hash = id_hash(id);
	sqlite3_stmt *st;
	int rc;

	/* a thread's ids come again with each reply: most are known */
	if (hid_get(s, hash, conv))
		return 0;
	rc = store_prepare(s, ST_CONV_LOOKUP, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, hash);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*conv = sqlite3_column_int64(st, 0);
		rc = 0;
	} else if (rc == SQLITE_DONE) {
		*conv = 0;
		rc = 0;
	} else {
		rc = store_fail(s, ST_CONV_LOOKUP, rc);
	}
	store_done(st);
	if (!rc)
		hid_put(s, hash, *conv);
	return rc;
}

/*
 * One statement per id: neither an IN list (an ephemeral table per step)
 * nor a UNION ALL of eight searches measured any faster.
 */
int store_conv_lookup(struct store *s, const char *const *ids, size_t n,
		      int64_t *convs)
{
	size_t i;
	int rc = 0;

	for (i = 0; i < n && !rc; i++)
		rc = lookup_one(s, ids[i], &convs[i]);
	return rc;
}

int store_conv_new(struct store *s, int64_t *conv)
{
	sqlite3_stmt *st;
	int rc;

	rc = store_prepare(s, ST_CONV_NEW, &st);
	if (rc)
		return rc;
	rc = sqlite3_step(st);
	if (rc == SQLITE_DONE) {
		/* not RETURNING: that costs an ephemeral table */
		*conv = sqlite3_last_insert_rowid(s->db);
		rc = 0;
	} else {
		rc = store_fail(s, ST_CONV_NEW, rc);
	}
	store_done(st);
	return rc;
}

int store_conv_attach(struct store *s, int64_t conv, int64_t umid)
{
	sqlite3_stmt *st;
	int rc;

	rc = store_conv_note_change(s, conv);
	if (!rc)
		rc = store_prepare(s, ST_CONV_SET_MSG, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, umid);
	sqlite3_bind_int64(st, 2, conv);
	rc = step_done(s, ST_CONV_SET_MSG, st);
	if (!rc && sqlite3_changes(s->db) != 1)
		rc = -EEXIST; /* gone, or in a conversation already */
	return rc;
}

/* statement @id with @a bound to ?1 and @b to ?2; *@changes rows changed */
static int exec_pair(struct store *s, enum store_stmt id, int64_t a, int64_t b,
		     int *changes)
{
	sqlite3_stmt *st;
	int rc;

	rc = store_prepare(s, id, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, a);
	sqlite3_bind_int64(st, 2, b);
	rc = step_done(s, id, st);
	if (changes)
		*changes = rc ? 0 : sqlite3_changes(s->db);
	return rc;
}

/* the four steps of a merge; a failure between them would leave counts
 * that disagree with the messages, hence the savepoint around them */
static int merge_steps(struct store *s, int64_t from, int64_t into)
{
	int rc, changed;

	/* both as they were, for fs/; then the statistics, while both
	 * rows exist */
	rc = store_conv_note_change(s, from);
	if (!rc)
		rc = store_conv_note_change(s, into);
	if (!rc)
		rc = exec_pair(s, ST_CONV_MERGE_STATS, into, from, &changed);
	if (rc)
		return rc;
	if (changed != 1)
		return -ENOENT;
	rc = exec_pair(s, ST_CONV_MERGE_MSGS, into, from, NULL);
	if (!rc)
		rc = exec_pair(s, ST_CONV_MERGE_IDS, into, from, NULL);
	if (!rc)
		rc = store_exec_id(s, ST_CONV_DELETE, from);
	return rc;
}

int store_conv_merge(struct store *s, int64_t from, int64_t into)
{
	bool own;
	int rc;

	if (from == into)
		return -EINVAL;
	rc = store_tx_own(s, &own);
	if (rc)
		return rc;
	if (own)
		return store_tx_end(s, own, merge_steps(s, from, into));
	rc = store_exec(s, ST_SAVEPOINT);
	if (rc)
		return rc;
	rc = merge_steps(s, from, into);
	if (!rc) {
		rc = store_exec(s, ST_RELEASE);
		if (rc)
			store_hid_forget(s, false);
		else
			hid_merged(s, from, into);
		return rc;
	}
	store_hid_forget(s, false);
	/* ROLLBACK TO keeps the savepoint open: release it too */
	if (!sqlite3_get_autocommit(s->db)) {
		store_exec(s, ST_ROLLBACK_TO);
		store_exec(s, ST_RELEASE);
	}
	return rc;
}

int store_conv_add_ids(struct store *s, const char *const *ids, size_t n,
		       int64_t conv)
{
	sqlite3_stmt *st;
	size_t i;
	int rc;

	if (!n)
		return 0;
	rc = store_prepare(s, ST_CONV_ADD_ID, &st);
	if (rc)
		return rc;
	for (i = 0; i < n && !rc; i++) {
		int64_t hash = id_hash(ids[i]);

		sqlite3_bind_int64(st, 1, hash);
		sqlite3_bind_int64(st, 2, conv);
		rc = sqlite3_step(st);
		rc = rc == SQLITE_DONE ? 0 : store_fail(s, ST_CONV_ADD_ID, rc);
		sqlite3_reset(st);
		if (!rc)
			hid_put(s, hash, conv);
	}
	store_done(st);
	return rc;
}
