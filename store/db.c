/*
 * db.c - connections: opening (directory, modes, pragmas, corruption
 * check), the statement table, error mapping and transactions.
 */
#include "store_i.h"

#define LOG_CAT "store"
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct stmt_def {
	const char *name;
	const char *sql;
};

#define MSG_COLUMNS                                                          \
	"m.umid, m.folder, m.uid, m.conv, f.flags, m.date, m.zone, m.size, " \
	"m.message_id, m.subject, m.sender, m.refs, m.in_reply_to, "         \
	"m.emailid, m.real_size, " MSG_DEST                                 \
	"FROM messages m LEFT JOIN flagsets f ON f.id = m.flagset "

/* where a pending write shows message m: its latest move's (or its
 * append's) target, -1 (STORE_DEST_EXPUNGE) for an expunge, NULL for
 * none; ops_umid finds them, and the table is empty but for writes
 * not yet on the server */
#define MSG_DEST                                                          \
	"(SELECT iif(o.kind = 'expunge', -1, o.dst) FROM ops o "         \
	"WHERE o.umid = m.umid AND o.kind IN ('move', 'expunge', 'append') " \
	"ORDER BY o.id DESC LIMIT 1) "

#define FOLDER_COLUMNS                                                     \
	"id, name, display, delim, role, noselect, uidvalidity, uidnext, " \
	"low_uid, highestmodseq, last_refresh, mailboxid, "                \
	"coalesce(complete_since, 0) FROM folders "

#define OP_COLUMNS_NO_FROM                                           \
	"id, kind, umid, dst, name, name2, base, sent, dst_uidnext, " \
	"attempts, created, src, src_uid"
#define OP_COLUMNS OP_COLUMNS_NO_FROM " FROM ops "

#define CONV_COLUMNS \
	"id, subject, first_date, first_zone, last_date, count FROM conversations "

/* whether conversation o's earliest message is the earliest of both */
#define CONV_O_FIRST                                                         \
	"(o.count > 0 AND (t.count = 0 OR (o.first_date, "                   \
	"coalesce(o.first_message_id, ''), o.first_umid) < (t.first_date, "  \
	"coalesce(t.first_message_id, ''), t.first_umid)))"

/* whether the message of ST_CONV_ENTER is the conversation's earliest */
#define CONV_M_FIRST                                                        \
	"(count = 0 OR (?2, coalesce(?6, ''), ?5) < (first_date, "          \
	"coalesce(first_message_id, ''), first_umid))"

/* Every statement of the store; the column orders are relied on by the
 * readers in folders.c, messages.c and bodies.c. */
/* clang-format off */
static const struct stmt_def stmt_defs[ST__COUNT] = {
	[ST_BEGIN] = { "begin", "BEGIN IMMEDIATE" },
	[ST_COMMIT] = { "commit", "COMMIT" },
	[ST_ROLLBACK] = { "rollback", "ROLLBACK" },
	[ST_FOLDER_PUT] = { "folder_put",
		"INSERT INTO folders (name, display, delim, role, noselect) "
		"VALUES (?1, ?2, ?3, ?4, ?5) "
		"ON CONFLICT (name) DO UPDATE SET display = excluded.display, "
		"delim = excluded.delim, role = excluded.role, "
		"noselect = excluded.noselect RETURNING id" },
	[ST_FOLDER_GET] = { "folder_get",
		"SELECT " FOLDER_COLUMNS "WHERE id = ?1" },
	[ST_FOLDER_LIST] = { "folder_list",
		"SELECT " FOLDER_COLUMNS "ORDER BY name" },
	[ST_FOLDER_DELETE] = { "folder_delete",
		"DELETE FROM folders WHERE id = ?1" },
	[ST_FOLDER_BODIES_DELETE] = { "folder_bodies_delete",
		"DELETE FROM bodies WHERE umid IN "
		"(SELECT umid FROM messages WHERE folder = ?1) RETURNING umid" },
	[ST_FOLDER_SET_SYNC] = { "folder_set_sync",
		"UPDATE folders SET uidvalidity = ?2, uidnext = ?3, "
		"low_uid = ?4, highestmodseq = ?5, last_refresh = ?6, "
		"complete_since = ?7 WHERE id = ?1" },
	[ST_FOLDER_COUNT] = { "folder_count",
		"SELECT count(*) FROM messages WHERE folder = ?1 AND uid > 0" },
	[ST_FLAGSET_ADD] = { "flagset_add",
		"INSERT OR IGNORE INTO flagsets (flags, refs) VALUES (?1, 0)" },
	[ST_FLAGSET_ID] = { "flagset_id",
		"SELECT id FROM flagsets WHERE flags = ?1" },
	[ST_FLAGSET_REF] = { "flagset_ref",
		"UPDATE flagsets SET refs = refs + 1 WHERE id = ?1" },
	/*
	 * No trigger fires on insert (schema version 3): store_msg_put
	 * counts the new row into its flag set and conversation itself.
	 * An INSERT that writes one table and its indexes needs no
	 * statement journal; with triggers, each one copied every page it
	 * touched. Not RETURNING: that costs an ephemeral table; the new
	 * umid is last_insert_rowid().
	 */
	[ST_MSG_PUT] = { "msg_put",
		"INSERT INTO messages (folder, uid, conv, flagset, date, zone, "
		"size, message_id, subject, sender, refs, in_reply_to, emailid) "
		"VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) "
		"ON CONFLICT (folder, uid) DO NOTHING" },
	[ST_MSG_LOCATE] = { "msg_locate",
		"SELECT umid, conv, flagset FROM messages "
		"WHERE folder = ?1 AND uid = ?2" },
	/* the schema's trigger keeps flagsets.refs right */
	/* flags the user set and the server has not stored yet stay */
	[ST_MSG_SET_FLAGSET] = { "msg_set_flagset",
		"UPDATE messages SET flagset = ?2 WHERE umid = ?1 AND (?3 OR "
		"NOT EXISTS (SELECT 1 FROM ops WHERE umid = ?1 AND kind = 'flags'))" },
	[ST_MSG_GET] = { "msg_get",
		"SELECT " MSG_COLUMNS "WHERE m.umid = ?1" },
	[ST_MSG_FIND_UID] = { "msg_find_uid",
		"SELECT umid FROM messages WHERE folder = ?1 AND uid = ?2" },
	[ST_MSG_DELETE] = { "msg_delete",
		"DELETE FROM messages WHERE umid = ?1" },
	[ST_MSG_LIST] = { "msg_list",
		"SELECT " MSG_COLUMNS
		"WHERE m.folder = ?1 AND m.umid > ?2 AND m.uid > 0 "
		"ORDER BY m.umid LIMIT ?3" },
	/* what pending moves show in folder ?1 */
	[ST_MSG_LIST_MOVED_IN] = { "msg_list_moved_in",
		"SELECT " MSG_COLUMNS
		"WHERE m.umid IN (SELECT umid FROM ops WHERE kind IN ('move', "
		"'append') AND dst = ?1 AND umid > ?2) ORDER BY m.umid LIMIT ?3" },
	[ST_MSG_UIDS] = { "msg_uids",
		"SELECT uid FROM messages WHERE folder = ?1 "
		"AND uid BETWEEN ?2 AND ?3 ORDER BY uid" },
	[ST_MSG_SET_REAL_SIZE] = { "msg_set_real_size",
		"UPDATE messages SET real_size = ?2 WHERE umid = ?1" },
	[ST_BODY_PUT] = { "body_put",
		"INSERT INTO bodies (umid, size, last_read) VALUES (?1, ?2, ?3) "
		"ON CONFLICT (umid) DO UPDATE SET size = excluded.size, "
		"last_read = excluded.last_read" },
	/* max(): a late-written read must not make a body look older */
	[ST_BODY_TOUCH] = { "body_touch",
		"UPDATE bodies SET last_read = max(last_read, ?2) WHERE umid = ?1" },
	[ST_BODY_DELETE] = { "body_delete",
		"DELETE FROM bodies WHERE umid = ?1" },
	[ST_BODY_TOTAL] = { "body_total",
		"SELECT coalesce(sum(size), 0) FROM bodies" },
	[ST_BODY_LRU] = { "body_lru",
		"SELECT umid, size FROM bodies ORDER BY last_read, umid" },
	[ST_BODY_HAS] = { "body_has",
		"SELECT 1 FROM bodies WHERE umid = ?1" },
	[ST_BODY_ALL] = { "body_all",
		"SELECT umid FROM bodies ORDER BY umid" },
	/* newest first: on the (folder, uid) index, bodies by their key */
	[ST_BODY_UNCACHED] = { "body_uncached",
		"SELECT m.umid, m.uid, m.size FROM messages m "
		"WHERE m.folder = ?1 AND m.uid >= ?5 AND m.uid > 0 AND m.uid < ?2 "
		"AND m.date >= ?3 "
		"AND NOT EXISTS (SELECT 1 FROM bodies b WHERE b.umid = m.umid) "
		"ORDER BY m.uid DESC LIMIT ?4" },
	[ST_BODY_COUNT] = { "body_count", "SELECT count(*) FROM bodies" },
	[ST_MSG_COUNT_ON_SERVER] = { "msg_count_on_server",
		"SELECT count(*) FROM messages WHERE uid > 0" },
	[ST_MSG_HAS] = { "msg_has",
		"SELECT 1 FROM messages WHERE umid = ?1" },

	/* ---- conversations.c ---- */
	[ST_SAVEPOINT] = { "savepoint", "SAVEPOINT conv" },
	[ST_RELEASE] = { "release", "RELEASE conv" },
	[ST_ROLLBACK_TO] = { "rollback_to", "ROLLBACK TO conv" },
	[ST_CONV_GET] = { "conv_get",
		"SELECT " CONV_COLUMNS "WHERE id = ?1" },
	[ST_CONV_LIST] = { "conv_list",
		"SELECT " CONV_COLUMNS "WHERE id > ?1 AND count > 0 "
		"ORDER BY id LIMIT ?2" },
	[ST_CONV_MESSAGES] = { "conv_messages",
		"SELECT " MSG_COLUMNS
		"WHERE m.conv = ?1 AND m.umid > ?2 AND m.uid > 0 "
		"ORDER BY m.umid LIMIT ?3" },
	[ST_CONV_UNTHREADED] = { "conv_unthreaded",
		"SELECT " MSG_COLUMNS
		"WHERE m.conv IS NULL AND m.umid > ?1 ORDER BY m.umid LIMIT ?2" },
	[ST_CONV_OF_MSG] = { "conv_of_msg",
		"SELECT conv FROM messages WHERE umid = ?1" },
	[ST_CONV_LOOKUP] = { "conv_lookup",
		"SELECT conv FROM header_ids WHERE hash = ?1" },
	/* empty: the message entering it fills it in (schema.c's triggers) */
	[ST_CONV_NEW] = { "conv_new",
		"INSERT INTO conversations DEFAULT VALUES" },
	/*
	 * Message ?5 (date ?2, subject ?3, zone ?4, Message-ID ?6), just
	 * inserted into conversation ?1, counts in it, and becomes its
	 * earliest message if it sorts first or the conversation was empty:
	 * what the trigger messages_conv_set does for an attach.
	 */
	[ST_CONV_ENTER] = { "conv_enter",
		"UPDATE conversations SET count = count + 1, "
		"last_date = iif(count = 0, ?2, max(last_date, ?2)), "
		"subject = iif(" CONV_M_FIRST ", ?3, subject), "
		"first_date = iif(" CONV_M_FIRST ", ?2, first_date), "
		"first_zone = iif(" CONV_M_FIRST ", ?4, first_zone), "
		"first_umid = iif(" CONV_M_FIRST ", ?5, first_umid), "
		"first_message_id = iif(" CONV_M_FIRST ", ?6, first_message_id) "
		"WHERE id = ?1" },
	/* the References and In-Reply-To of a row are kept only until it is
	 * threaded (schema version 3) */
	[ST_CONV_SET_MSG] = { "conv_set_msg",
		"UPDATE messages SET conv = ?2, refs = NULL, in_reply_to = NULL "
		"WHERE umid = ?1 AND conv IS NULL" },
	[ST_CONV_ADD_ID] = { "conv_add_id",
		"INSERT INTO header_ids (hash, conv) VALUES (?1, ?2) "
		"ON CONFLICT (hash) DO UPDATE SET conv = excluded.conv" },
	/* ?1 survives, ?2 is merged into it; either may be empty */
	[ST_CONV_MERGE_STATS] = { "conv_merge_stats",
		"UPDATE conversations AS t SET count = t.count + o.count, "
		"last_date = CASE WHEN o.count = 0 THEN t.last_date "
		"WHEN t.count = 0 THEN o.last_date "
		"ELSE max(t.last_date, o.last_date) END, "
		"subject = iif(" CONV_O_FIRST ", o.subject, t.subject), "
		"first_zone = iif(" CONV_O_FIRST ", o.first_zone, t.first_zone), "
		"first_umid = iif(" CONV_O_FIRST ", o.first_umid, t.first_umid), "
		"first_message_id = iif(" CONV_O_FIRST ", o.first_message_id, "
		"t.first_message_id), "
		"first_date = iif(" CONV_O_FIRST ", o.first_date, t.first_date) "
		"FROM conversations AS o WHERE t.id = ?1 AND o.id = ?2" },
	[ST_CONV_MERGE_MSGS] = { "conv_merge_msgs",
		"UPDATE messages SET conv = ?1 WHERE conv = ?2" },
	[ST_CONV_MERGE_IDS] = { "conv_merge_ids",
		"UPDATE header_ids SET conv = ?1 WHERE conv = ?2" },
	[ST_CONV_DELETE] = { "conv_delete",
		"DELETE FROM conversations WHERE id = ?1" },
	[ST_SYNC_NORMAL] = { "sync_normal", "PRAGMA synchronous = NORMAL" },
	[ST_CACHE_BULK] = { "cache_bulk", "PRAGMA cache_size = -16384" },

	/* ---- orphans.c (and the folder and UID helpers beside them) ---- */
	[ST_MSG_ORPHAN] = { "msg_orphan",
		"UPDATE messages SET uid = -umid WHERE umid = ?1 AND uid > 0" },
	[ST_FOLDER_ORPHAN_ALL] = { "folder_orphan_all",
		"UPDATE messages SET uid = -umid WHERE folder = ?1 AND uid > 0" },
	/* served by the partial index messages_orphans */
	[ST_ORPHAN_MATCH] = { "orphan_match",
		"SELECT umid, emailid, message_id FROM messages m "
		"WHERE uid < 0 AND date = ?1 AND size = ?2 AND NOT EXISTS "
		"(SELECT 1 FROM ops o WHERE o.umid = m.umid) ORDER BY umid" },
	/* rows stored since ?1 (a range of the primary key), ?4 aside */
	[ST_TWIN_MATCH] = { "twin_match",
		"SELECT umid, emailid, message_id FROM messages "
		"WHERE umid > ?1 AND umid != ?4 AND uid > 0 "
		"AND date = ?2 AND size = ?3 ORDER BY umid" },
	[ST_MSG_REHOME] = { "msg_rehome",
		"UPDATE messages SET folder = ?2, uid = ?3, flagset = ?4, "
		"emailid = coalesce(?5, emailid) WHERE umid = ?1" },
	[ST_MSG_FLAGSET_OF] = { "msg_flagset_of",
		"SELECT flagset, folder, uid FROM messages WHERE umid = ?1" },
	[ST_FOLDER_ORPHANS] = { "folder_orphans",
		"SELECT umid FROM messages m WHERE folder = ?1 AND uid < 0 "
		"AND NOT EXISTS (SELECT 1 FROM ops o WHERE o.umid = m.umid) "
		"ORDER BY umid LIMIT 1000" },
	[ST_MSG_MAX_UMID] = { "msg_max_umid",
		"SELECT coalesce(max(umid), 0) FROM messages" },
	/* served by the partial index messages_orphans */
	[ST_ANY_ORPHAN] = { "any_orphan",
		"SELECT EXISTS (SELECT 1 FROM messages WHERE uid < 0)" },
	[ST_MSG_UIDS_FROM] = { "msg_uids_from",
		"SELECT uid FROM messages WHERE folder = ?1 AND uid >= ?2 "
		"AND uid < ?3 ORDER BY uid LIMIT ?4" },
	/* ?1..?5 as ST_FOLDER_PUT */
	[ST_FOLDER_RENAME] = { "folder_rename",
		"UPDATE folders SET name = ?1, display = ?2, delim = ?3, "
		"role = ?4, noselect = ?5 WHERE id = ?6" },
	[ST_FOLDER_SET_MAILBOXID] = { "folder_set_mailboxid",
		"UPDATE folders SET mailboxid = ?2 WHERE id = ?1" },
	/* ---- ops.c ---- */
	[ST_OP_ADD] = { "op_add",
		"INSERT INTO ops (kind, umid, dst, name, name2, base, created) "
		"VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)" },
	[ST_OP_UNSENT] = { "op_unsent",
		"SELECT id, dst, base FROM ops WHERE umid = ?1 AND kind = ?2 "
		"AND sent = 0" },
	[ST_OP_MOVE_SENT] = { "op_move_sent",
		"SELECT EXISTS (SELECT 1 FROM ops WHERE umid = ?1 "
		"AND kind = 'move' AND sent = 1)" },
	[ST_OP_SET_DST] = { "op_set_dst",
		"UPDATE ops SET dst = ?2 WHERE id = ?1" },
	[ST_OP_DELETE] = { "op_delete",
		"DELETE FROM ops WHERE id = ?1" },
	[ST_OP_NEXT] = { "op_next",
		"SELECT " OP_COLUMNS "WHERE id > ?1 ORDER BY id LIMIT 1" },
	/* ?1 kind, ?2 the server folder of the messages, ?3 target, ?4 from,
	 * ?6 sent; never past a folder op, which may change names */
	[ST_OP_BATCH] = { "op_batch",
		"SELECT " OP_COLUMNS "WHERE kind = ?1 AND sent = ?6 AND id >= ?4 "
		"AND dst IS ?3 AND umid IN (SELECT umid FROM messages "
		"WHERE folder = ?2) AND id < coalesce((SELECT min(id) FROM ops "
		"WHERE id > ?4 AND kind IN ('create', 'delete', 'rename')), "
		"9223372036854775807) ORDER BY id LIMIT ?5" },
	[ST_OP_SENT] = { "op_sent",
		"UPDATE ops SET sent = 1, dst_uidnext = ?2, "
		"attempts = attempts + 1, (src, src_uid) = (SELECT folder, uid "
		"FROM messages WHERE umid = ops.umid) WHERE id = ?1" },
	[ST_OP_FAILED] = { "op_failed",
		"UPDATE ops SET last_error = ?2 WHERE id = ?1" },
	[ST_OP_COUNT] = { "op_count", "SELECT count(*) FROM ops" },
	/* the first ?1 ops and how many there are, in one statement */
	/* the folder's messages on the server, not an orphan (uid < 0) */
	[ST_FOLDER_NEWEST] = { "folder_newest",
		"SELECT coalesce(max(date), 0) FROM messages "
		"WHERE folder = ?1 AND uid > 0" },
	[ST_SKIPPED_ADD] = { "skipped_add",
		"INSERT OR IGNORE INTO skipped (folder, uid, uidvalidity, since) "
		"VALUES (?1, ?2, ?3, ?4)" },
	/* a row of an older UIDVALIDITY names another message: not listed */
	[ST_SKIPPED_LIST] = { "skipped_list",
		"SELECT s.folder, s.uid FROM skipped s JOIN folders f "
		"ON f.id = s.folder AND f.uidvalidity = s.uidvalidity "
		"ORDER BY s.folder, s.uid LIMIT ?1" },
	[ST_SKIPPED_CLEAR] = { "skipped_clear",
		"DELETE FROM skipped WHERE folder = ?1" },
	[ST_OP_SUMMARY] = { "op_summary",
		"SELECT " OP_COLUMNS_NO_FROM ", (SELECT count(*) FROM ops) "
		"FROM ops ORDER BY id LIMIT ?1" },
	[ST_OP_FOLDER_PENDING] = { "op_folder_pending",
		"SELECT EXISTS (SELECT 1 FROM ops WHERE (kind = 'create' "
		"AND name = ?1) OR (kind = 'rename' AND name2 = ?1))" },
	[ST_FOLDER_SHOWS] = { "folder_shows",
		"SELECT EXISTS (SELECT 1 FROM messages WHERE folder = ?1) "
		"OR EXISTS (SELECT 1 FROM ops WHERE kind IN ('move', 'append') "
		"AND dst = ?1)" },
	[ST_OP_STAGED_USED] = { "op_staged_used",
		"SELECT 1 FROM ops WHERE kind = 'append' AND name = ?1" },
	[ST_OP_APPEND_ROW] = { "op_append_row",
		"UPDATE messages SET uid = -umid WHERE umid = ?1" },
	[ST_MSG_SET_FOLDER_UID] = { "msg_set_folder_uid",
		"UPDATE messages SET folder = ?2, uid = iif(?3 > 0, ?3, -umid) "
		"WHERE umid = ?1" },
	[ST_MSG_DATES_FROM] = { "msg_dates_from",
		"SELECT date FROM messages WHERE folder = ?1 AND uid > 0 "
		"AND date >= ?2 ORDER BY date LIMIT ?3" },
};
/* clang-format on */

/* connection settings; the busy timeout is set through the C API first */
static const char *const conn_pragmas[] = {
	"PRAGMA foreign_keys = ON",
	"PRAGMA synchronous = FULL",
	/*
	 * Statement journals (every INSERT or UPDATE with a trigger or a
	 * foreign key keeps one) stay in memory; on disk, once one grew
	 * past 64 KiB, every later statement of the transaction wrote its
	 * pages to a temporary file: 3 to 4 writes per message stored.
	 */
	"PRAGMA temp_store = MEMORY",
	/* a page cache of 2 MiB each: a daemon holds a connection per FUSE
	 * worker, fetcher and the prefetcher, which read and write rows by
	 * key; the sync thread's takes more (store_bulk) */
	"PRAGMA cache_size = -2048",
	/* a checkpoint per ~40 MiB of WAL, not per batch of messages: a page
	 * changed by several batches is copied back once */
	"PRAGMA wal_autocheckpoint = 10000",
	/*
	 * A checkpoint resets the WAL but leaves its file as large as it
	 * ever grew (a first sync of 100k messages, or a reader holding a
	 * checkpoint back): cut it back to 64 MiB after each, above what
	 * a checkpoint's worth takes, so that it is not cut and regrown
	 * every time.
	 */
	"PRAGMA journal_size_limit = 67108864",
};

/*
 * Directories this process has a connection to, so that only the first
 * opener pays for quick_check and a file in use is never set aside under
 * another thread's feet. Guarded by open_lock.
 */
struct open_dir {
	char *path;
	int refs;
	struct open_dir *next;
};

static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;
static struct open_dir *open_dirs; /* guarded by open_lock */

int store_errno(int rc)
{
	switch (rc & 0xff) {
	case SQLITE_CONSTRAINT:
		return -EEXIST;
	case SQLITE_FULL:
		return -ENOSPC;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return -EBUSY;
	default:
		return -EIO;
	}
}

int store_cache_only(struct store *s)
{
	return store_exec(s, ST_SYNC_NORMAL);
}

int store_bulk(struct store *s)
{
	return store_exec(s, ST_CACHE_BULK);
}

int store_writes_relaxed(struct store *s)
{
	return store_exec(s, ST_SYNC_NORMAL);
}

int store_get_row(struct store *s, enum store_stmt id, int64_t key,
		  sqlite3_stmt **st)
{
	int rc = store_prepare(s, id, st);

	if (rc)
		return rc;
	sqlite3_bind_int64(*st, 1, key);
	rc = sqlite3_step(*st);
	if (rc == SQLITE_ROW)
		return 0;
	rc = rc == SQLITE_DONE ? -ENOENT : store_fail(s, id, rc);
	store_done(*st);
	return rc;
}

int store_prepare(struct store *s, enum store_stmt id, sqlite3_stmt **out)
{
	int rc;

	if (!s->stmt[id]) {
		rc = sqlite3_prepare_v3(s->db, stmt_defs[id].sql, -1,
					SQLITE_PREPARE_PERSISTENT, &s->stmt[id],
					NULL);
		if (rc != SQLITE_OK) {
			log_error("cannot prepare %s: %s", stmt_defs[id].name,
				  sqlite3_errmsg(s->db));
			s->stmt[id] = NULL;
			return store_errno(rc);
		}
	}
	*out = s->stmt[id];
	return 0;
}

void store_done(sqlite3_stmt *st)
{
	if (!st)
		return;
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
}

int store_fail(struct store *s, enum store_stmt id, int rc)
{
	if ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED)
		log_warn("%s: database busy: %s", stmt_defs[id].name,
			 sqlite3_errmsg(s->db));
	else
		log_error("%s failed: %s", stmt_defs[id].name,
			  sqlite3_errmsg(s->db));
	return store_errno(rc);
}

int store_exec(struct store *s, enum store_stmt id)
{
	sqlite3_stmt *st;
	int rc;

	rc = store_prepare(s, id, &st);
	if (rc)
		return rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		;
	rc = rc == SQLITE_DONE ? 0 : store_fail(s, id, rc);
	store_done(st);
	return rc;
}

int store_query_int(struct store *s, enum store_stmt id, int64_t *out)
{
	sqlite3_stmt *st;
	int rc;

	rc = store_prepare(s, id, &st);
	if (rc)
		return rc;
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*out = sqlite3_column_int64(st, 0);
		rc = 0;
	} else {
		rc = store_fail(s, id, rc == SQLITE_DONE ? SQLITE_INTERNAL : rc);
	}
	store_done(st);
	return rc;
}

int store_exec_id(struct store *s, enum store_stmt id, int64_t v)
{
	sqlite3_stmt *st;
	int rc;

	rc = store_prepare(s, id, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, v);
	rc = sqlite3_step(st);
	rc = rc == SQLITE_DONE ? 0 : store_fail(s, id, rc);
	store_done(st);
	return rc;
}

void store_bind_text(sqlite3_stmt *st, int idx, const char *str)
{
	if (str)
		sqlite3_bind_text(st, idx, str, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, idx);
}

char *store_column_strdup(sqlite3_stmt *st, int col)
{
	const unsigned char *t = sqlite3_column_text(st, col);

	return t ? xstrdup((const char *)t) : NULL;
}

/* CONVOYFS_TEST_FAIL_PUT=N: the Nth message stored in this process
 * fails (read once; 0 or unset: never) */
static long fail_put_at;
static atomic_long puts_seen;
static pthread_once_t fail_put_once = PTHREAD_ONCE_INIT;

static void fail_put_init(void)
{
	const char *v = getenv("CONVOYFS_TEST_FAIL_PUT");

	fail_put_at = v ? strtol(v, NULL, 10) : 0;
}

bool store_test_fail(void)
{
	pthread_once(&fail_put_once, fail_put_init);
	return fail_put_at > 0 && atomic_fetch_add(&puts_seen, 1) + 1 == fail_put_at;
}

int64_t store_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- transactions ---- */

int store_begin(struct store *s)
{
	int rc, tries;

	/*
	 * busy_timeout already waited STORE_BUSY_MS for the other writer; a
	 * long sync batch may take longer than that, so try a few times
	 * before giving up on the write.
	 */
	store_flagset_forget(s);
	store_hid_forget(s, false);
	for (tries = 0; tries < 3; tries++) {
		rc = store_exec(s, ST_BEGIN);
		if (rc != -EBUSY)
			return rc;
	}
	return rc;
}

int store_commit(struct store *s)
{
	store_flagset_forget(s);
	store_hid_forget(s, false);
	return store_exec(s, ST_COMMIT);
}

void store_rollback(struct store *s)
{
	store_flagset_forget(s);
	store_hid_forget(s, false);
	/* SQLite may have rolled back already (after SQLITE_FULL, say) */
	if (!sqlite3_get_autocommit(s->db))
		store_exec(s, ST_ROLLBACK);
}

int store_tx_own(struct store *s, bool *own)
{
	*own = sqlite3_get_autocommit(s->db);
	return *own ? store_begin(s) : 0;
}

int store_tx_end(struct store *s, bool own, int rc)
{
	if (!own)
		return rc;
	if (!rc) {
		rc = store_commit(s);
		if (!rc)
			return 0;
	}
	store_rollback(s);
	return rc;
}

/* ---- opening ---- */

int store_make_dirs(const char *path)
{
	char *p = xstrdup(path), *q;
	int rc = 0;

	for (q = p + 1;; q++) {
		bool last = *q == '\0';

		if (*q != '/' && !last)
			continue;
		*q = '\0';
		if (*p && mkdir(p, 0700) && errno != EEXIST) {
			rc = -errno;
			log_error("cannot create directory %s: %s", p,
				  strerror(errno));
			break;
		}
		if (last)
			break;
		*q = '/';
	}
	free(p);
	return rc;
}

/* mkdir @path 0700 if missing, and make it 0700 whatever umask was */
static int private_dir(const char *path)
{
	struct stat st;
	int rc;

	if (mkdir(path, 0700) && errno != EEXIST)
		goto fail;
	if (chmod(path, 0700))
		goto fail;
	if (stat(path, &st))
		goto fail;
	if (!S_ISDIR(st.st_mode)) {
		log_error("cannot use %s: not a directory", path);
		return -ENOTDIR;
	}
	return 0;
fail:
	rc = -errno;
	log_error("cannot create directory %s: %s", path, strerror(-rc));
	return rc;
}

/*
 * SQLite creates files with 0644 less the umask; create the database
 * ourselves so it is 0600 from the first byte, and fix the mode of a
 * file left by an older run. SQLite gives -wal and -shm the mode of the
 * database when it creates them.
 *
 * Existing files are changed by path only: closing any descriptor of a
 * file drops every POSIX lock this process holds on it, including those
 * of another thread's SQLite connection.
 */
static int private_file(const char *path, bool create)
{
	int fd, rc;

	if (create) {
		fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd >= 0) {
			/* new and ours alone: no connection holds locks */
			if (fchmod(fd, 0600))
				log_warn("cannot chmod %s: %s", path,
					 strerror(errno));
			close(fd);
			return 0;
		}
		if (errno != EEXIST)
			goto fail;
	}
	if (chmod(path, 0600) && (create || errno != ENOENT))
		goto fail;
	return 0;
fail:
	rc = -errno;
	log_error("cannot create %s with mode 0600: %s", path, strerror(-rc));
	return rc;
}

static bool is_busy(int rc)
{
	return (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED;
}

/*
 * SQLite skips the busy handler where waiting could deadlock: two
 * connections that both read the header and then both want to switch
 * it to WAL. One of them gets SQLITE_BUSY at once; it backs off and
 * tries again, for about as long as busy_timeout would have waited.
 */
static int setup_retry(sqlite3 *db, int (*fn)(sqlite3 *, const void *),
		       const void *arg)
{
	int rc, waited_ms = 0;

	while (is_busy(rc = fn(db, arg)) && waited_ms < STORE_BUSY_MS) {
		int ms = 5 + (int)(((unsigned)getpid() * 7 + waited_ms) % 11);

		usleep((useconds_t)ms * 1000);
		waited_ms += ms;
	}
	return rc;
}

static int exec_pragma(sqlite3 *db, const void *sql)
{
	return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

static bool is_corrupt(int rc)
{
	return (rc & 0xff) == SQLITE_CORRUPT || (rc & 0xff) == SQLITE_NOTADB;
}

static int wal_mode_row(void *aux, int ncol, char **val, char **names)
{
	bool *wal = aux;

	*wal = ncol > 0 && val[0] && !strcmp(val[0], "wal");
	return 0;
}

static int wal_mode(sqlite3 *db, const void *wal)
{
	return sqlite3_exec(db, "PRAGMA journal_mode = WAL", wal_mode_row,
			    (void *)wal, NULL);
}

/* the first line of a quick_check report that names a problem; one row
 * can hold many lines, the first of them a header */
static size_t first_line(const char **t)
{
	const char *p = *t ? *t : "?";

	if (!strncmp(p, "*** ", 4) && strchr(p, '\n'))
		p = strchr(p, '\n') + 1;
	*t = p;
	return strcspn(p, "\n");
}

/* PRAGMA quick_check; returns an SQLite code, SQLITE_CORRUPT if it
 * reported problems */
static int quick_check(sqlite3 *db, const void *arg)
{
	const char *path = arg;
	sqlite3_stmt *st;
	int rc, nrow = 0;
	bool ok = false;

	rc = sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &st, NULL);
	if (rc != SQLITE_OK)
		return rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *t = (const char *)sqlite3_column_text(st, 0);

		if (nrow == 0 && t && !strcmp(t, "ok"))
			ok = true;
		else if (nrow == 0) {
			int len = (int)first_line(&t);

			log_warn("quick_check of %s failed: %.*s", path, len,
				 t);
		}
		nrow++;
	}
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return rc;
	log_debug("quick_check of %s: %s", path,
		  ok && nrow == 1 ? "ok" : "damaged");
	return ok && nrow == 1 ? SQLITE_OK : SQLITE_CORRUPT;
}

/*
 * Open @path into @s->db and configure it; with @check, run quick_check
 * first. Returns 0 or -errno; *@corrupt says the file is damaged (the
 * connection is closed then).
 */
static int db_open(struct store *s, const char *path, bool check, bool *corrupt)
{
	char *side;
	int rc, src;
	bool wal = false;
	size_t i;

	*corrupt = false;
	rc = private_file(path, true);
	if (rc)
		return rc;
	src = sqlite3_open_v2(path, &s->db,
			      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
				      SQLITE_OPEN_NOMUTEX,
			      NULL);
	if (src != SQLITE_OK) {
		log_error("cannot open database %s: %s", path,
			  s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(src));
		goto fail;
	}
	sqlite3_busy_timeout(s->db, STORE_BUSY_MS);

	/* the first statement reads the header: NOTADB shows here */
	src = setup_retry(s->db, wal_mode, &wal);
	if (src != SQLITE_OK)
		goto fail_sql;
	if (!wal)
		log_warn("database %s is not in WAL mode; readers will wait "
			 "for writers",
			 path);
	for (i = 0; i < sizeof(conn_pragmas) / sizeof(conn_pragmas[0]); i++) {
		src = setup_retry(s->db, exec_pragma, conn_pragmas[i]);
		if (src != SQLITE_OK)
			goto fail_sql;
	}
	if (check) {
		src = setup_retry(s->db, quick_check, path);
		if (src != SQLITE_OK)
			goto fail_sql;
	}
	rc = store_schema_migrate(s->db, &src);
	if (rc) {
		if (is_corrupt(src))
			goto fail_sql;
		goto fail_close;
	}

	/* an older run may have left them with other modes */
	side = xasprintf("%s-wal", path);
	private_file(side, false);
	free(side);
	side = xasprintf("%s-shm", path);
	private_file(side, false);
	free(side);
	return 0;

fail_sql:
	if (is_corrupt(src)) {
		*corrupt = true;
		rc = -EIO;
		goto fail_close;
	}
	log_error("cannot set up database %s: %s", path, sqlite3_errmsg(s->db));
fail:
	rc = store_errno(src);
fail_close:
	sqlite3_close(s->db);
	s->db = NULL;
	return rc;
}

/* move a damaged database (and its -wal/-shm) out of the way */
/*
 * Writes recorded in a database found corrupt are not applied to the
 * new one (what they refer to is gone with it): never silently. Say
 * how many of each kind it still shows, or that it cannot tell; a
 * message waiting to be appended stays in the staging directory,
 * which the next start moves to recovered/.
 */
static void report_lost_ops(const char *path)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	char list[256] = "";
	size_t used = 0;
	int rc;

	rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_prepare_v2(db,
					"SELECT kind, count(*) FROM ops "
					"GROUP BY kind ORDER BY kind",
					-1, &st, NULL);
	while (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW &&
	       used < sizeof(list) - 64)
		used += (size_t)snprintf(list + used, sizeof(list) - used,
					 "%s%lld %s", used ? ", " : "",
					 (long long)sqlite3_column_int64(st, 1),
					 (const char *)sqlite3_column_text(st, 0));
	if (rc != SQLITE_OK)
		log_error("the corrupt database %s may have held writes not "
			  "yet on the server; they cannot be read and are not "
			  "applied (messages being appended are kept in "
			  "recovered/)",
			  path);
	else if (used)
		log_error("the corrupt database %s held writes not yet on the "
			  "server, which are not applied: %s (messages being "
			  "appended are kept in recovered/)",
			  path, list);
	sqlite3_finalize(st);
	sqlite3_close(db);
}

static int set_aside(const char *path)
{
	char *to, *side;
	int rc = 0;

	report_lost_ops(path);

	to = xasprintf("%s.corrupt-%lld", path, (long long)time(NULL));
	if (rename(path, to)) {
		rc = -errno;
		log_error("cannot move corrupt database %s aside: %s", path,
			  strerror(errno));
		goto out;
	}
	log_warn("database %s is corrupt: moved to %s, starting a new one "
		 "(the server's mail will be fetched again)",
		 path, to);
	side = xasprintf("%s-wal", path);
	unlink(side);
	free(side);
	side = xasprintf("%s-shm", path);
	unlink(side);
	free(side);
out:
	free(to);
	return rc;
}

static struct open_dir *open_dir_find(const char *path)
{
	struct open_dir *d;

	for (d = open_dirs; d; d = d->next)
		if (!strcmp(d->path, path))
			return d;
	return NULL;
}

static int open_store(const char *dir, bool may_check, struct store **out)
{
	struct store *s;
	struct open_dir *od;
	char *dbpath, *real;
	bool corrupt;
	int rc;

	*out = NULL;
	if (!dir || !*dir)
		return -EINVAL;
	rc = store_make_dirs(dir);
	if (rc)
		return rc;
	rc = private_dir(dir);
	if (rc)
		return rc;
	real = realpath(dir, NULL);
	if (!real) {
		rc = -errno;
		log_error("cannot resolve %s: %s", dir, strerror(errno));
		return rc;
	}
	/* room for bodies/xx/<umid> and the temporary names beside it */
	if (strlen(real) > PATH_MAX - 128) {
		log_error("cannot use %s: path too long", real);
		free(real);
		return -ENAMETOOLONG;
	}

	s = xcalloc(1, sizeof(*s));
	s->dir = real;
	s->bodydir = xasprintf("%s/bodies", real);
	rc = private_dir(s->bodydir);
	if (rc)
		goto out_free;
	dbpath = xasprintf("%s/cache.db", real);

	pthread_mutex_lock(&open_lock);
	od = open_dir_find(real);
	/*
	 * quick_check reads every page (seconds at a million messages): it
	 * looks for what a crash or a fault left, so it is spared after a
	 * run that stopped in order, whose mark the next start removes
	 * before it writes anything. A damaged page found later is still
	 * an error, and the next start after it checks.
	 */
	if (!od && may_check && store_clean_stop_marked(real)) {
		log_debug("%s: the last run stopped in order, no quick_check",
			  dbpath);
		may_check = false;
	}
	rc = db_open(s, dbpath, !od && may_check, &corrupt);
	if (rc && corrupt) {
		if (od) {
			log_error("database %s is corrupt but in use", dbpath);
		} else if (!(rc = set_aside(dbpath))) {
			rc = db_open(s, dbpath, true, &corrupt);
			if (rc && corrupt)
				log_error("new database %s is corrupt too",
					  dbpath);
		}
	}
	if (!rc) {
		if (!od) {
			od = xcalloc(1, sizeof(*od));
			od->path = xstrdup(real);
			od->next = open_dirs;
			open_dirs = od;
		}
		od->refs++;
	}
	pthread_mutex_unlock(&open_lock);
	free(dbpath);
	if (rc)
		goto out_free;
	*out = s;
	return 0;

out_free:
	free(s->bodydir);
	free(s->stagedir);
	free(s->recovereddir);
	free(s->dir);
	free(s);
	return rc;
}

int store_open(const char *dir, struct store **out)
{
	return open_store(dir, true, out);
}

int store_open_checked(const char *dir, struct store **out)
{
	return open_store(dir, false, out);
}

void store_close(struct store *s)
{
	struct open_dir **pp, *d;
	int i;

	if (!s)
		return;
	store_touch_flush(s, true);
	store_rollback(s);
	store_hid_forget(s, true);
	for (size_t k = 0; k < s->nconv_changes; k++)
		store_conv_release(&s->conv_changes[k]);
	free(s->conv_changes);
	for (i = 0; i < ST__COUNT; i++)
		sqlite3_finalize(s->stmt[i]);
	if (sqlite3_close(s->db) != SQLITE_OK)
		log_error("cannot close database in %s: %s", s->dir,
			  sqlite3_errmsg(s->db));

	pthread_mutex_lock(&open_lock);
	for (pp = &open_dirs; (d = *pp); pp = &d->next) {
		if (strcmp(d->path, s->dir))
			continue;
		if (--d->refs == 0) {
			*pp = d->next;
			free(d->path);
			free(d);
		}
		break;
	}
	pthread_mutex_unlock(&open_lock);

	free(s->bodydir);
	free(s->stagedir);
	free(s->recovereddir);
	free(s->dir);
	free(s);
}
