/*
 * store_i.h - private to store/: the connection struct, the statement
 * table and the helpers the store/ sources share. Nothing outside
 * store/ includes this.
 */
#ifndef CONVOY_STORE_I_H
#define CONVOY_STORE_I_H

#include "store.h"

#include <limits.h>
#include <sqlite3.h>

/* Ids of the prepared statements; their SQL text is stmt_defs[] in db.c. */
enum store_stmt {
	ST_BEGIN,
	ST_COMMIT,
	ST_ROLLBACK,
	ST_FOLDER_PUT,
	ST_FOLDER_GET,
	ST_FOLDER_LIST,
	ST_FOLDER_DELETE,
	ST_FOLDER_BODIES_DELETE,
	ST_FOLDER_SET_SYNC,
	ST_FOLDER_COUNT,
	ST_FOLDER_NEWEST,
	ST_FLAGSET_ADD,
	ST_FLAGSET_ID,
	ST_FLAGSET_REF,
	ST_MSG_PUT,
	ST_MSG_SET_REAL_SIZE,
	ST_MSG_LOCATE,
	ST_MSG_SET_FLAGSET,
	ST_MSG_GET,
	ST_MSG_FIND_UID,
	ST_MSG_DELETE,
	ST_MSG_LIST,
	ST_MSG_UIDS,
	ST_BODY_PUT,
	ST_BODY_TOUCH,
	ST_BODY_DELETE,
	ST_BODY_TOTAL,
	ST_BODY_LRU,
	ST_BODY_HAS,
	ST_BODY_ALL,
	ST_BODY_UNCACHED,
	ST_BODY_COUNT,
	ST_MSG_COUNT_ON_SERVER,
	ST_MSG_HAS,
	/* conversations.c */
	ST_SAVEPOINT,
	ST_RELEASE,
	ST_ROLLBACK_TO,
	ST_CONV_GET,
	ST_CONV_LIST,
	ST_CONV_MESSAGES,
	ST_CONV_UNTHREADED,
	ST_CONV_OF_MSG,
	ST_CONV_LOOKUP,
	ST_CONV_NEW,
	ST_CONV_ENTER,
	ST_CONV_SET_MSG,
	ST_CONV_ADD_ID,
	ST_CONV_MERGE_STATS,
	ST_CONV_MERGE_MSGS,
	ST_CONV_MERGE_IDS,
	ST_CONV_DELETE,
	/* db.c */
	ST_SYNC_NORMAL,
	ST_CACHE_BULK,
	/* orphans.c */
	ST_MSG_ORPHAN,
	ST_FOLDER_ORPHAN_ALL,
	ST_ORPHAN_MATCH,
	ST_TWIN_MATCH,
	ST_MSG_REHOME,
	ST_MSG_FLAGSET_OF,
	ST_FOLDER_ORPHANS,
	ST_MSG_MAX_UMID,
	ST_ANY_ORPHAN,
	ST_MSG_UIDS_FROM,
	ST_FOLDER_RENAME,
	ST_FOLDER_SET_MAILBOXID,
	ST_MSG_DATES_FROM,
	ST_MSG_LIST_MOVED_IN,
	/* ops.c */
	ST_OP_ADD,
	ST_OP_UNSENT,
	ST_OP_MOVE_SENT,
	ST_OP_SET_DST,
	ST_OP_DELETE,
	ST_OP_NEXT,
	ST_OP_BATCH,
	ST_OP_SENT,
	ST_OP_FAILED,
	ST_OP_COUNT,
	ST_OP_FOLDER_PENDING,
	ST_FOLDER_SHOWS,
	ST_MSG_SET_FOLDER_UID,
	ST_OP_APPEND_ROW,
	ST_OP_STAGED_USED,
	ST_OP_SUMMARY,
	/* skipped.c */
	ST_SKIPPED_ADD,
	ST_SKIPPED_LIST,
	ST_SKIPPED_CLEAR,
	ST__COUNT
};

/* how many last_read updates a connection keeps before writing them */
#define STORE_TOUCH_MAX 64

struct store_touch {
	int64_t umid;
	int64_t when_ms; /* Unix time in ms of the read */
};

/* flag sets whose id a connection remembers, within one transaction */
#define STORE_FLAGSET_CACHE 16

struct store_flagset_id {
	char *flags; /* owned: canonical flags */
	int64_t id;
};

/* a header_ids row: the 64-bit hash of an id, and its conversation (0:
 * the id is not in header_ids) */
struct store_hid {
	int64_t hash; /* 0: an empty slot */
	int64_t conv;
};

/* slots of the header id table, a power of two; it is emptied when 3/4
 * full (a batch of 1000 messages of ~8 ids each fills a third) */
#define STORE_HID_SLOTS 32768

struct store {
	sqlite3 *db;
	char *dir; /* owned: canonical path of the store directory */
	char *bodydir; /* owned: <dir>/bodies */
	char *stagedir; /* owned, NULL until used: <dir>/staged */
	char *recovereddir; /* owned, NULL until used: <dir>/recovered */
	sqlite3_stmt *stmt[ST__COUNT]; /* prepared on first use */
	/* reads not yet recorded in bodies.last_read (see bodies.c) */
	struct store_touch touch[STORE_TOUCH_MAX];
	size_t ntouch;
	long long touch_first_ms; /* monotonic time of touch[0] */
	/*
	 * flag set ids looked up in the open write transaction. A flag set
	 * row goes when its last message leaves it, so the cache is
	 * emptied wherever that can happen: at each transaction's start and
	 * end, and by every call that deletes messages or changes the flag
	 * set of a stored one (store_flagset_forget).
	 */
	struct store_flagset_id flagset[STORE_FLAGSET_CACHE];
	size_t nflagset;
	size_t flagset_next; /* the slot to reuse when full */
	/*
	 * header_ids rows read or written in the open write transaction
	 * (conversations.c): an open-addressing table of STORE_HID_SLOTS,
	 * allocated on first use. Exact while the transaction lasts, as
	 * only this connection writes then and every write of header_ids
	 * goes through conversations.c, which updates it; emptied at each
	 * transaction's start and end and by deletions of messages, whose
	 * triggers drop ids (store_hid_forget).
	 */
	struct store_hid *hid;
	size_t nhid;
	/* conversations changed by writes, not yet taken: each as it was
	 * before (store_conv_changes_take) */
	struct store_conv *conv_changes;
	size_t nconv_changes;
};

/* busy_timeout of every connection, in ms */
#define STORE_BUSY_MS 5000

/*
 * store_errno - map an SQLite result code (primary or extended) to
 * -errno: CONSTRAINT -> -EEXIST, FULL -> -ENOSPC, BUSY/LOCKED -> -EBUSY,
 * anything else -> -EIO. Logs nothing.
 */
int store_errno(int rc);

/*
 * store_prepare - statement @id of @s, prepared on first use, ready to
 * bind. Returns 0 and *@out, or -errno (logged with the statement's name).
 * Hand it back with store_done() after the last step.
 */
int store_prepare(struct store *s, enum store_stmt id, sqlite3_stmt **out);

/* store_done - sqlite3_reset + sqlite3_clear_bindings; NULL is fine. */
void store_done(sqlite3_stmt *st);

/*
 * store_get_row - run statement @id with @key bound to ?1: 0 with *@st on
 * the first row (read it, then store_done), -ENOENT if there is none, or
 * -errno (logged). For the get-by-id calls of every table.
 */
int store_get_row(struct store *s, enum store_stmt id, int64_t key,
		  sqlite3_stmt **st);

/*
 * store_fail - log that statement @id failed with result @rc (with
 * sqlite3_errmsg, so call it before store_done) and return store_errno(rc).
 */
int store_fail(struct store *s, enum store_stmt id, int rc);

/*
 * store_exec - run statement @id, which takes no parameters, to the end,
 * discarding rows. Returns 0 or -errno (logged).
 */
int store_exec(struct store *s, enum store_stmt id);

/*
 * store_query_int - run statement @id, which takes no parameters and
 * returns one row, and read its first column into *@out. Returns 0 or
 * -errno (logged).
 */
int store_query_int(struct store *s, enum store_stmt id, int64_t *out);
/*
 * store_exec_id - run statement @id with @v bound to ?1, expecting no
 * rows. Returns 0 or -errno (logged).
 */
int store_exec_id(struct store *s, enum store_stmt id, int64_t v);

/*
 * store_tx_own - begin a write transaction unless one is already open on
 * @s. *@own tells store_tx_end whether this call opened it. Returns 0 or
 * -errno.
 */
int store_tx_own(struct store *s, bool *own);

/*
 * store_tx_end - finish what store_tx_own began: if @own, commit when
 * @rc is 0, else roll back. Returns @rc, or the commit's error.
 */
int store_tx_end(struct store *s, bool own, int rc);

/*
 * store_bind_text - bind @str (NULL binds NULL) as a static text: the
 * caller keeps it alive until store_done().
 */
void store_bind_text(sqlite3_stmt *st, int idx, const char *str);

/* store_column_strdup - column @col as a malloc'ed string, NULL for NULL. */
char *store_column_strdup(sqlite3_stmt *st, int col);

/*
 * store_schema_migrate - bring the database of @db to the newest schema:
 * each pending migration in its own BEGIN IMMEDIATE transaction, the
 * version re-read inside it so that concurrent openers apply each one
 * once. Returns 0, -EPROTO if the database is newer than this program,
 * or another -errno (logged). The SQLite result of a failure is left in
 * *@sqlite_rc for the caller to recognise a corrupt file.
 */
int store_schema_migrate(sqlite3 *db, int *sqlite_rc);

/* store_make_dirs - mkdir -p @path, 0700 for each directory it makes;
 * 0 or -errno */
int store_make_dirs(const char *path);

/* store_schema_version - the newest schema version this program knows. */
int store_schema_version(void);

/*
 * store_body_path - the cache file of @umid into @buf (PATH_MAX bytes).
 * Returns 0 or -ENAMETOOLONG.
 */
int store_body_path(struct store *s, int64_t umid, char *buf);

/*
 * store_body_unlink - remove the cache file of @umid; a missing file is
 * fine. Returns 0 or -errno (logged).
 */
int store_body_unlink(struct store *s, int64_t umid);

/*
 * store_touch_flush - write the pending last_read updates of @s. With
 * @wait false it gives up at once if another connection writes (they
 * stay pending). Best effort: failures are logged at debug level only.
 */
void store_touch_flush(struct store *s, bool wait);

/* store_flagset_forget - empty @s's cache of flag set ids */
void store_flagset_forget(struct store *s);

/* store_hid_forget - empty @s's table of header ids; free it too with
 * @release */
void store_hid_forget(struct store *s, bool release);

/*
 * store_flagset_of - the id of flag set @flags (any order), the row made
 * if missing. Inside a write transaction.
 */
int store_flagset_of(struct store *s, const char *flags, int64_t *id);
/*
 * store_test_fail - the test hook: true when this call is the Nth one
 * (N from CONVOYFS_TEST_FAIL_PUT) that stores a message in this
 * process, to prove that a failure in the middle of a batch rolls back.
 */
bool store_test_fail(void);
/* store_msg_from_row - a row of MSG_COLUMNS (db.c) into @m */
void store_msg_from_row(sqlite3_stmt *st, struct store_msg *m);
/* store_now_ms - wall clock as Unix time in milliseconds */
int64_t store_now_ms(void);

/*
 * store_conv_note_change - conversation @id is about to change: keep it
 * as it is now (or as none, if it does not exist) for
 * store_conv_changes_take (conversations.c).
 */
int store_conv_note_change(struct store *s, int64_t id);

/*
 * store_clean_stop_marked - whether the last run on the store in @dir
 * stopped in order and no run started since (bodies.c): its database was
 * whole when it was closed, and nothing wrote to it after.
 */
bool store_clean_stop_marked(const char *dir);

#endif
