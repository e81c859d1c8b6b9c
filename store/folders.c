/*
 * folders.c - the folders table: names, roles and each folder's sync
 * bookmark.
 */
#include "store_i.h"

#define LOG_CAT "store"
#include "common.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* columns as FOLDER_COLUMNS in db.c */
static void folder_from_row(sqlite3_stmt *st, struct store_folder *f)
{
	const unsigned char *delim;

	memset(f, 0, sizeof(*f));
	f->id = sqlite3_column_int64(st, 0);
	f->name = store_column_strdup(st, 1);
	f->display = store_column_strdup(st, 2);
	if (!f->display)
		f->display = xstrdup(f->name);
	delim = sqlite3_column_text(st, 3);
	f->delim = delim ? (char)delim[0] : 0;
	f->role = store_column_strdup(st, 4);
	f->noselect = sqlite3_column_int(st, 5) != 0;
	f->uidvalidity = (uint32_t)sqlite3_column_int64(st, 6);
	f->uidnext = (uint32_t)sqlite3_column_int64(st, 7);
	f->low_uid = (uint32_t)sqlite3_column_int64(st, 8);
	f->highestmodseq = (uint64_t)sqlite3_column_int64(st, 9);
	f->last_refresh = sqlite3_column_int64(st, 10);
	f->mailboxid = store_column_strdup(st, 11);
	f->complete_since = sqlite3_column_int64(st, 12);
}

/* what LIST says of @f into ?1..?5 (name, display, delim, role,
 * noselect), as ST_FOLDER_PUT and ST_FOLDER_RENAME take them; @delim
 * holds the delimiter as a string until the statement is done */
static void bind_listed(sqlite3_stmt *st, const struct store_folder *f,
			char delim[2])
{
	delim[0] = f->delim;
	delim[1] = '\0';
	store_bind_text(st, 1, f->name);
	store_bind_text(st, 2, f->display);
	store_bind_text(st, 3, f->delim ? delim : NULL);
	store_bind_text(st, 4, f->role);
	sqlite3_bind_int(st, 5, f->noselect);
}

int store_folder_put(struct store *s, const struct store_folder *f, int64_t *id)
{
	sqlite3_stmt *st;
	char delim[2];
	int rc;

	if (!f->name)
		return -EINVAL;
	rc = store_prepare(s, ST_FOLDER_PUT, &st);
	if (rc)
		return rc;
	bind_listed(st, f, delim);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*id = sqlite3_column_int64(st, 0);
		rc = 0;
	} else {
		rc = store_fail(s, ST_FOLDER_PUT, rc);
	}
	store_done(st);
	return rc;
}

int store_folder_get(struct store *s, int64_t id, struct store_folder *out)
{
	sqlite3_stmt *st;
	int rc = store_get_row(s, ST_FOLDER_GET, id, &st);

	if (rc)
		return rc;
	folder_from_row(st, out);
	store_done(st);
	return 0;
}

void store_folder_release(struct store_folder *f)
{
	if (!f)
		return;
	free(f->name);
	free(f->display);
	free(f->role);
	free(f->mailboxid);
	f->name = f->display = f->role = f->mailboxid = NULL;
}

int store_folder_list(struct store *s, struct store_folder **out, size_t *n)
{
	struct store_folder *v = NULL;
	size_t len = 0, cap = 0;
	sqlite3_stmt *st;
	int rc;

	*out = NULL;
	*n = 0;
	rc = store_prepare(s, ST_FOLDER_LIST, &st);
	if (rc)
		return rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (len == cap) {
			cap = cap ? 2 * cap : 16;
			v = xrealloc(v, cap * sizeof(*v));
		}
		folder_from_row(st, &v[len++]);
	}
	if (rc != SQLITE_DONE) {
		rc = store_fail(s, ST_FOLDER_LIST, rc);
		store_done(st);
		store_folder_list_free(v, len);
		return rc;
	}
	store_done(st);
	*out = v;
	*n = len;
	return 0;
}

void store_folder_list_free(struct store_folder *f, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		store_folder_release(&f[i]);
	free(f);
}

/* drop the cached bodies of @id's messages, file and row */
static int folder_bodies_delete(struct store *s, int64_t id)
{
	sqlite3_stmt *st;
	int rc;

	rc = store_prepare(s, ST_FOLDER_BODIES_DELETE, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, id);
	/* a file removed in a transaction that rolls back leaves a row
	 * without a file, which readers and trim treat as not cached */
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		store_body_unlink(s, sqlite3_column_int64(st, 0));
	rc = rc == SQLITE_DONE ? 0 : store_fail(s, ST_FOLDER_BODIES_DELETE, rc);
	store_done(st);
	return rc;
}

int store_folder_delete(struct store *s, int64_t id)
{
	sqlite3_stmt *st;
	bool own;
	int rc;

	rc = store_tx_own(s, &own);
	if (rc)
		return rc;
	/* flag sets and header ids may go with the messages */
	store_flagset_forget(s);
	store_hid_forget(s, false);
	rc = folder_bodies_delete(s, id);
	if (rc)
		goto out;
	rc = store_prepare(s, ST_FOLDER_DELETE, &st);
	if (rc)
		goto out;
	/* messages go by ON DELETE CASCADE, their flagset refs by trigger */
	sqlite3_bind_int64(st, 1, id);
	rc = sqlite3_step(st);
	rc = rc == SQLITE_DONE ? 0 : store_fail(s, ST_FOLDER_DELETE, rc);
	store_done(st);
out:
	return store_tx_end(s, own, rc);
}

int store_folder_set_sync(struct store *s, const struct store_folder *f)
{
	sqlite3_stmt *st;
	int rc;

	rc = store_prepare(s, ST_FOLDER_SET_SYNC, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, f->id);
	sqlite3_bind_int64(st, 2, f->uidvalidity);
	sqlite3_bind_int64(st, 3, f->uidnext);
	sqlite3_bind_int64(st, 4, f->low_uid);
	/* RFC 7162 §7: mod-sequences fit in 63 bits */
	sqlite3_bind_int64(st, 5, (int64_t)f->highestmodseq);
	/* a bookmark is written when a refresh step completed */
	sqlite3_bind_int64(st, 6, (int64_t)time(NULL));
	sqlite3_bind_int64(st, 7, f->complete_since);
	rc = sqlite3_step(st);
	if (rc != SQLITE_DONE)
		rc = store_fail(s, ST_FOLDER_SET_SYNC, rc);
	else
		rc = sqlite3_changes(s->db) ? 0 : -ENOENT;
	store_done(st);
	return rc;
}

int store_folder_count(struct store *s, int64_t id, uint64_t *n)
{
	sqlite3_stmt *st;
	int rc = store_get_row(s, ST_FOLDER_COUNT, id, &st);

	if (rc)
		return rc;
	*n = (uint64_t)sqlite3_column_int64(st, 0);
	store_done(st);
	return 0;
}

int store_folder_rename(struct store *s, int64_t id,
			const struct store_folder *f)
{
	sqlite3_stmt *st;
	char delim[2];
	int rc;

	rc = store_prepare(s, ST_FOLDER_RENAME, &st);
	if (rc)
		return rc;
	bind_listed(st, f, delim);
	sqlite3_bind_int64(st, 6, id);
	rc = sqlite3_step(st);
	rc = rc == SQLITE_DONE ? 0 : store_fail(s, ST_FOLDER_RENAME, rc);
	store_done(st);
	return rc;
}

int store_folder_set_mailboxid(struct store *s, int64_t id,
			       const char *mailboxid)
{
	sqlite3_stmt *st;
	int rc;

	rc = store_prepare(s, ST_FOLDER_SET_MAILBOXID, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, id);
	store_bind_text(st, 2, mailboxid);
	rc = sqlite3_step(st);
	rc = rc == SQLITE_DONE ? 0 : store_fail(s, ST_FOLDER_SET_MAILBOXID, rc);
	store_done(st);
	return rc;
}

int store_folder_newest(struct store *s, int64_t id, int64_t *date)
{
	sqlite3_stmt *st;
	/* an aggregate: always one row */
	int rc = store_get_row(s, ST_FOLDER_NEWEST, id, &st);

	*date = 0;
	if (rc)
		return rc;
	*date = sqlite3_column_int64(st, 0);
	store_done(st);
	return 0;
}
