/*
 * schema.c - the schema as an ordered list of migrations. Migration i
 * takes a database from PRAGMA user_version i to i + 1; a released
 * migration is never edited, only followed by a new one.
 */
#include "store_i.h"

#define LOG_CAT "store"
#include "common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

/* migration 1 seeds sqlite_sequence with STORE_FIRST_UMID - 1 literally */
_Static_assert(STORE_FIRST_UMID == 1024, "update the umid seed below");

/*
 * Trigger @name: after @event on messages, a message that now has a
 * conversation (and, with @cond, had none) is counted into it, and
 * becomes its earliest message if it sorts first or the conversation
 * was empty. All SET expressions see the row as it was before.
 */
#define CONV_ENTER_TRIGGER(name, event, cond)                                \
	"CREATE TRIGGER " name " AFTER " event " ON messages "             \
	"WHEN new.conv IS NOT NULL " cond                                    \
	"BEGIN"                                                              \
	"  UPDATE conversations SET"                                         \
	"    count = count + 1,"                                             \
	"    last_date = iif(count = 0, new.date, max(last_date, new.date))," \
	"    subject = iif(" CONV_FIRST ", new.subject, subject),"          \
	"    first_date = iif(" CONV_FIRST ", new.date, first_date),"       \
	"    first_zone = iif(" CONV_FIRST ", new.zone, first_zone),"       \
	"    first_umid = iif(" CONV_FIRST ", new.umid, first_umid),"       \
	"    first_message_id = iif(" CONV_FIRST ", new.message_id,"        \
	"      first_message_id)"                                            \
	"  WHERE id = new.conv;"                                             \
	"END;"

/* whether the new message is the conversation's earliest from now on */
#define CONV_FIRST                                                      \
	"(count = 0 OR (new.date, coalesce(new.message_id, ''), new.umid)" \
	" < (first_date, coalesce(first_message_id, ''), first_umid))"

/* clang-format off */
static const char *const migrations[] = {
	/* 1: the tables of DESIGN §3 */
	"CREATE TABLE folders ("
	"  id INTEGER PRIMARY KEY,"
	"  name TEXT UNIQUE NOT NULL," /* server name, modified UTF-7 */
	"  display TEXT," /* UTF-8, server delimiter kept */
	"  delim TEXT," /* one character, NULL for none */
	"  role TEXT," /* SPECIAL-USE role without '\' */
	"  noselect INTEGER NOT NULL DEFAULT 0,"
	"  uidvalidity INTEGER NOT NULL DEFAULT 0,"
	"  uidnext INTEGER NOT NULL DEFAULT 0,"
	"  low_uid INTEGER NOT NULL DEFAULT 0,"
	"  highestmodseq INTEGER NOT NULL DEFAULT 0,"
	"  complete_since INTEGER," /* Unix time the folder is complete from */
	"  last_refresh INTEGER NOT NULL DEFAULT 0"
	");"
	"CREATE TABLE flagsets ("
	"  id INTEGER PRIMARY KEY,"
	"  flags TEXT UNIQUE NOT NULL," /* sorted, space-separated */
	"  refs INTEGER NOT NULL DEFAULT 0" /* messages pointing here */
	");"
	"CREATE TABLE conversations ("
	"  id INTEGER PRIMARY KEY,"
	"  subject TEXT,"
	"  first_date INTEGER,"
	"  last_date INTEGER,"
	"  count INTEGER NOT NULL DEFAULT 0"
	");"
	/* AUTOINCREMENT: a umid is an inode number and is never reused */
	"CREATE TABLE messages ("
	"  umid INTEGER PRIMARY KEY AUTOINCREMENT,"
	"  folder INTEGER NOT NULL REFERENCES folders (id) ON DELETE CASCADE,"
	"  uid INTEGER NOT NULL,"
	"  conv INTEGER REFERENCES conversations (id),"
	"  flagset INTEGER NOT NULL REFERENCES flagsets (id),"
	"  date INTEGER NOT NULL DEFAULT 0," /* INTERNALDATE, Unix time */
	"  zone INTEGER NOT NULL DEFAULT 0," /* minutes east of UTC */
	"  size INTEGER NOT NULL DEFAULT 0," /* RFC822.SIZE */
	"  message_id TEXT,"
	"  subject TEXT,"
	"  sender TEXT,"
	"  refs TEXT," /* raw References */
	"  in_reply_to TEXT,"
	"  UNIQUE (folder, uid)"
	");"
	"CREATE INDEX messages_folder ON messages (folder, umid);"
	"CREATE INDEX messages_message_id ON messages (message_id);"
	"CREATE INDEX messages_conv ON messages (conv);"
	/* without it every flagset delete would scan messages for the FK */
	"CREATE INDEX messages_flagset ON messages (flagset);"
	"INSERT INTO sqlite_sequence (name, seq) VALUES ('messages', 1023);"
	"CREATE TRIGGER messages_flagset_insert AFTER INSERT ON messages "
	"BEGIN"
	"  UPDATE flagsets SET refs = refs + 1 WHERE id = new.flagset;"
	"END;"
	"CREATE TRIGGER messages_flagset_delete AFTER DELETE ON messages "
	"BEGIN"
	"  UPDATE flagsets SET refs = refs - 1 WHERE id = old.flagset;"
	"  DELETE FROM flagsets WHERE id = old.flagset AND refs <= 0;"
	"END;"
	"CREATE TRIGGER messages_flagset_update AFTER UPDATE OF flagset "
	"ON messages WHEN old.flagset IS NOT new.flagset "
	"BEGIN"
	"  UPDATE flagsets SET refs = refs + 1 WHERE id = new.flagset;"
	"  UPDATE flagsets SET refs = refs - 1 WHERE id = old.flagset;"
	"  DELETE FROM flagsets WHERE id = old.flagset AND refs <= 0;"
	"END;"
	/* Message-ID, References and In-Reply-To ids -> conversation, also
	 * for ids only referenced so far */
	"CREATE TABLE header_ids ("
	"  header_id TEXT PRIMARY KEY,"
	"  conv INTEGER NOT NULL"
	") WITHOUT ROWID;"
	"CREATE INDEX header_ids_conv ON header_ids (conv);"
	/* the operation log; created is Unix time */
	"CREATE TABLE ops ("
	"  id INTEGER PRIMARY KEY,"
	"  kind TEXT NOT NULL,"
	"  umid INTEGER,"
	"  folder INTEGER,"
	"  arg TEXT,"
	"  state TEXT NOT NULL DEFAULT 'pending',"
	"  attempts INTEGER DEFAULT 0,"
	"  last_error TEXT,"
	"  created INTEGER"
	");"
	/* moving a message twice offline leaves one op, with the final target */
	"CREATE UNIQUE INDEX ops_one_move ON ops (umid) "
	"WHERE kind = 'move' AND state = 'pending';"
	"CREATE INDEX ops_state ON ops (state, id);"
	/* the body cache's index for eviction; last_read is Unix time in ms.
	 * No foreign key: a body file may outlive its message for a moment */
	"CREATE TABLE bodies ("
	"  umid INTEGER PRIMARY KEY,"
	"  size INTEGER NOT NULL,"
	"  last_read INTEGER NOT NULL"
	");"
	"CREATE INDEX bodies_last_read ON bodies (last_read);",

	/*
	 * 2: conversations keep their earliest message (date, Message-ID
	 * with none first, umid), so the subject and first date come out
	 * the same whatever order mail arrives in; ids are never reused, as
	 * a conversation id is part of an inode number. Version 1 never
	 * threaded anything: the table is rebuilt empty and every message
	 * is left to thread again.
	 */
	"UPDATE messages SET conv = NULL;"
	/* a header id is kept as a 64-bit hash of its text (see
	 * conversations.c): the map stays small and quick to search */
	"DROP TABLE header_ids;"
	"CREATE TABLE header_ids ("
	"  hash INTEGER PRIMARY KEY,"
	"  conv INTEGER NOT NULL"
	");"
	"CREATE INDEX header_ids_conv ON header_ids (conv);"
	"CREATE TABLE conversations_new ("
	"  id INTEGER PRIMARY KEY AUTOINCREMENT,"
	"  subject TEXT," /* the earliest message's */
	"  first_date INTEGER NOT NULL DEFAULT 0,"
	"  first_zone INTEGER NOT NULL DEFAULT 0,"
	"  last_date INTEGER NOT NULL DEFAULT 0,"
	"  count INTEGER NOT NULL DEFAULT 0,"
	"  first_umid INTEGER," /* the earliest message */
	"  first_message_id TEXT" /* its Message-ID, the tie-break */
	");"
	"DROP TABLE conversations;"
	"ALTER TABLE conversations_new RENAME TO conversations;"
	/* (conv, date) also finds a conversation's last date at once */
	"DROP INDEX messages_conv;"
	"CREATE INDEX messages_conv ON messages (conv, date);"
	/*
	 * A message entering a conversation (inserted with one, or given
	 * one where it had none) counts at once, in the same statement, so
	 * no failure can leave a count that disagrees with the messages.
	 * Moving messages between conversations (a merge) is not counted
	 * here: the merge adds up the two rows itself.
	 */
	CONV_ENTER_TRIGGER("messages_conv_insert", "INSERT", "")
	CONV_ENTER_TRIGGER("messages_conv_set", "UPDATE OF conv",
			   "AND old.conv IS NULL ")
	/*
	 * However a message goes (store_msg_delete, a folder's cascade),
	 * its conversation's count and dates follow; an empty conversation
	 * goes with the ids that pointed at it.
	 */
	"CREATE TRIGGER messages_conv_delete AFTER DELETE ON messages "
	"WHEN old.conv IS NOT NULL "
	"BEGIN"
	"  UPDATE conversations SET count = count - 1 WHERE id = old.conv;"
	"  UPDATE conversations SET (subject, first_date, first_zone,"
	"    first_umid, first_message_id) = (SELECT subject, date, zone,"
	"    umid, message_id FROM messages WHERE conv = old.conv"
	"    ORDER BY date, coalesce(message_id, ''), umid LIMIT 1)"
	"  WHERE id = old.conv AND first_umid = old.umid AND count > 0;"
	"  UPDATE conversations SET last_date = (SELECT max(date)"
	"    FROM messages WHERE conv = old.conv)"
	"  WHERE id = old.conv AND last_date <= old.date AND count > 0;"
	/* emptiness by the messages themselves, not the count: deleting a
	 * row that messages still point at would fail the foreign key */
	"  DELETE FROM header_ids WHERE conv = old.conv AND NOT EXISTS"
	"    (SELECT 1 FROM messages WHERE conv = old.conv);"
	"  DELETE FROM conversations WHERE id = old.conv AND NOT EXISTS"
	"    (SELECT 1 FROM messages WHERE conv = old.conv);"
	"END;",

	/*
	 * 3: storing a message writes its row once. A trigger on INSERT
	 * made every insert keep a statement journal (a copy of each page
	 * it touched); store_msg_put now counts a new row into its flag set
	 * and conversation with statements of its own, so the two insert
	 * triggers go. Attach and delete keep theirs.
	 */
	"DROP TRIGGER messages_flagset_insert;"
	"DROP TRIGGER messages_conv_insert;"
	/* nothing searches messages by Message-ID (header_ids does the
	 * threading), and each insert paid for the index */
	"DROP INDEX messages_message_id;"
	/* References and In-Reply-To serve only to thread a message: a row
	 * keeps them until it has a conversation */
	"UPDATE messages SET refs = NULL, in_reply_to = NULL "
	"WHERE conv IS NOT NULL AND (refs IS NOT NULL OR in_reply_to IS NOT NULL);",

	/*
	 * 4: identities that survive. A message the server no longer has
	 * where we knew it (expunged, moved by another client, or its
	 * folder's UIDVALIDITY changed) becomes an orphan: uid = -umid,
	 * hidden from listings, until a message found elsewhere (or again)
	 * matches it by EMAILID or by Message-ID + INTERNALDATE +
	 * RFC822.SIZE and adopts it, keeping its umid (inode and name).
	 * Only orphans are in the index, so storing new mail does not pay
	 * for it. A folder keeps its MAILBOXID to recognise a rename.
	 */
	"ALTER TABLE messages ADD COLUMN emailid TEXT;"
	"CREATE INDEX messages_orphans ON messages (date, size) WHERE uid < 0;"
	"ALTER TABLE folders ADD COLUMN mailboxid TEXT;",

	/*
	 * 5: folders learned by date. complete_since, which version 1 made
	 * and nothing wrote since, is the Unix time from which every
	 * message of the folder is in the store whatever its UID (growth
	 * by SEARCH SINCE learns mail below low_uid out of UID order); 0
	 * when nothing is known by date. SQLite cannot give an existing
	 * column a default, so every row starts at 0 and every writer
	 * sets it (readers also take NULL as 0).
	 */
	"UPDATE folders SET complete_since = 0;",

	/*
	 * 6: a body's real length. RFC822.SIZE (size) may differ from the
	 * bytes BODY[] returns (Exchange, Gmail, proxies); once a body has
	 * been fetched its length is what st_size says, and stays so after
	 * the body is evicted. size itself is kept as the server said it:
	 * it is part of a message's identity when an orphan is adopted.
	 */
	"ALTER TABLE messages ADD COLUMN real_size INTEGER;",
	/*
	 * 7: the operation log (DESIGN §6). A write is applied to the
	 * store and recorded here in one transaction; the sync thread
	 * runs it on the server and deletes the row in the transaction
	 * that records the outcome. A message's row keeps where it is on
	 * the server (folder, uid) until then: what the user sees of a
	 * pending move or expunge comes from its op. Version 1's table
	 * was never written.
	 *
	 * kind: 'move' (umid to folder dst), 'expunge' (umid), 'flags'
	 * (umid: the row holds the flags wanted, base what the server had),
	 * 'create', 'delete' (folder name), 'rename' (name to name2).
	 * sent: 1 once its command may have reached the server, so that a
	 * new attempt first looks where the message is; dst_uidnext is the
	 * target's UIDNEXT just before, where a moved message will appear,
	 * and src, src_uid where the message was then (a refresh that saw
	 * the outcome first may have moved its row since).
	 */
	"DROP TABLE ops;"
	"CREATE TABLE ops ("
	"  id INTEGER PRIMARY KEY,"
	"  kind TEXT NOT NULL,"
	"  umid INTEGER,"
	"  dst INTEGER,"
	"  name TEXT,"
	"  name2 TEXT,"
	"  base TEXT,"
	"  sent INTEGER NOT NULL DEFAULT 0,"
	"  dst_uidnext INTEGER NOT NULL DEFAULT 0,"
	"  src INTEGER,"
	"  src_uid INTEGER,"
	"  attempts INTEGER NOT NULL DEFAULT 0,"
	"  last_error TEXT,"
	"  created INTEGER NOT NULL DEFAULT 0"
	");"
	/* one op of each kind per message waits unsent: a second move of
	 * it changes the target of the first */
	"CREATE UNIQUE INDEX ops_unsent ON ops (umid, kind) "
	"WHERE umid IS NOT NULL AND sent = 0;"
	"CREATE INDEX ops_umid ON ops (umid) WHERE umid IS NOT NULL;",

	/*
	 * messages left out because fetching them breaks the connection,
	 * kept across restarts: the bookmark has moved past them, and a
	 * later look (growth by date) must not fetch them again. Only
	 * under the UIDVALIDITY they were seen with.
	 */
	"CREATE TABLE skipped ("
	"  folder INTEGER NOT NULL REFERENCES folders(id) ON DELETE CASCADE,"
	"  uid INTEGER NOT NULL,"
	"  uidvalidity INTEGER NOT NULL,"
	"  since INTEGER NOT NULL,"
	"  PRIMARY KEY (folder, uid)"
	") WITHOUT ROWID;",
};
/* clang-format on */

#define NMIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))

int store_schema_version(void)
{
	return NMIGRATIONS;
}

static int user_version(sqlite3 *db, int *version)
{
	sqlite3_stmt *st;
	int rc;

	rc = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);
	if (rc != SQLITE_OK)
		return rc;
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*version = sqlite3_column_int(st, 0);
		rc = SQLITE_OK;
	}
	sqlite3_finalize(st);
	return rc;
}

/* apply migration @from (to version @from + 1) unless another connection
 * did already; returns an SQLite code */
static int migrate_one(sqlite3 *db, int from, int *now)
{
	char sql[64];
	int rc, v;

	rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
	if (rc != SQLITE_OK) {
		log_error("cannot begin migration to version %d: %s", from + 1,
			  sqlite3_errmsg(db));
		return rc;
	}
	/* re-read under the write lock: another thread may have won */
	rc = user_version(db, &v);
	if (rc != SQLITE_OK)
		goto out_rollback;
	if (v == from) {
		rc = sqlite3_exec(db, migrations[from], NULL, NULL, NULL);
		if (rc != SQLITE_OK)
			goto out_rollback;
		/* PRAGMA takes no parameters; the number is ours */
		snprintf(sql, sizeof(sql), "PRAGMA user_version = %d",
			 from + 1);
		rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
		if (rc != SQLITE_OK)
			goto out_rollback;
		v = from + 1;
	}
	rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		goto out_rollback;
	*now = v;
	return SQLITE_OK;

out_rollback:
	log_error("cannot migrate database to version %d: %s", from + 1,
		  sqlite3_errmsg(db));
	sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

int store_schema_migrate(sqlite3 *db, int *sqlite_rc)
{
	int rc, v;

	*sqlite_rc = user_version(db, &v);
	if (*sqlite_rc != SQLITE_OK) {
		log_error("cannot read schema version: %s", sqlite3_errmsg(db));
		return store_errno(*sqlite_rc);
	}
	while (v < NMIGRATIONS) {
		if (v < 0)
			break;
		rc = migrate_one(db, v, &v);
		if (rc != SQLITE_OK) {
			*sqlite_rc = rc;
			return store_errno(rc);
		}
	}
	if (v != NMIGRATIONS) {
		log_error("database schema version %d is not one this program "
			  "knows (1 to %d)",
			  v, NMIGRATIONS);
		return -EPROTO;
	}
	return 0;
}
