/*
 * skipped.c - messages left out because fetching them breaks the
 * connection (sync/refresh.c finds them). Kept so that a restart still
 * says they are missing and never fetches them again by another way.
 */
#include "store_i.h"

#define LOG_CAT "store"
#include "common.h"

#include <stdlib.h>
#include <time.h>

int store_skipped_add(struct store *s, int64_t folder, uint32_t uid,
		      uint32_t uidvalidity)
{
	sqlite3_stmt *st;
	int rc;

	rc = store_prepare(s, ST_SKIPPED_ADD, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, folder);
	sqlite3_bind_int64(st, 2, uid);
	sqlite3_bind_int64(st, 3, uidvalidity);
	sqlite3_bind_int64(st, 4, (int64_t)time(NULL));
	rc = sqlite3_step(st);
	rc = rc == SQLITE_DONE ? 0 : store_fail(s, ST_SKIPPED_ADD, rc);
	store_done(st);
	return rc;
}

int store_skipped_list(struct store *s, size_t max,
		       struct store_skipped **out, size_t *n)
{
	struct store_skipped *v = NULL;
	size_t len = 0;
	sqlite3_stmt *st;
	int rc;

	*out = NULL;
	*n = 0;
	rc = store_prepare(s, ST_SKIPPED_LIST, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, (int64_t)max);
	if (max)
		v = xcalloc(max, sizeof(*v));
	while (len < max && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		v[len].folder = sqlite3_column_int64(st, 0);
		v[len].uid = (uint32_t)sqlite3_column_int64(st, 1);
		len++;
	}
	if (len < max && rc != SQLITE_DONE) {
		rc = store_fail(s, ST_SKIPPED_LIST, rc);
		store_done(st);
		free(v);
		return rc;
	}
	store_done(st);
	*out = v;
	*n = len;
	return 0;
}

int store_skipped_clear(struct store *s, int64_t folder)
{
	return store_exec_id(s, ST_SKIPPED_CLEAR, folder);
}
