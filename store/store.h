/*
 * store.h - the local SQLite store and the body cache: the one module that
 * holds SQL. Every other module reaches the database through these calls.
 *
 * Threads: a struct store is one SQLite connection; use it from one thread
 * at a time. Each thread opens its own. WAL lets readers run beside the
 * sync thread's writes.
 *
 * Errors: 0 or -errno. SQLite codes are mapped in one place (store_errno):
 * CONSTRAINT -> -EEXIST, FULL -> -ENOSPC, BUSY -> -EBUSY, the rest -> -EIO,
 * logged with the statement's name where they happen.
 */
#ifndef CONVOY_STORE_H
#define CONVOY_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store;

/* first umid handed out: message inode numbers never collide with the
 * fixed inodes of the root and the control files */
#define STORE_FIRST_UMID 1024

struct store_folder {
	int64_t id;
	char *name; /* owned: server name as LISTed (modified UTF-7) */
	char *display; /* owned: UTF-8 decoded name, server delimiter kept */
	char delim; /* hierarchy delimiter, 0 for none */
	char *role; /* owned: SPECIAL-USE role without '\' ("Trash"), or NULL */
	bool noselect; /* \Noselect or \NonExistent: a directory only */
	uint32_t uidvalidity; /* 0 until first selected */
	/* every UID in [low_uid, uidnext) is in the store: uidnext grows
	 * upward as new mail comes, low_uid falls as the first sync learns
	 * older mail newest first; low_uid 1 means complete, 0 nothing */
	uint32_t uidnext;
	uint32_t low_uid;
	uint64_t highestmodseq;
	int64_t last_refresh; /* Unix time of the last completed refresh */
};

struct store_msg {
	int64_t umid; /* our id for the message, also its inode number */
	int64_t folder;
	uint32_t uid;
	int64_t conv; /* conversation id, 0 for none yet */
	char *flags; /* owned: flags sorted, space-separated ("" for none) */
	int64_t date; /* INTERNALDATE as Unix time */
	int zone; /* INTERNALDATE's zone, minutes east of UTC */
	uint64_t size; /* RFC822.SIZE */
	char *message_id; /* owned, may be NULL: Message-ID with <> */
	char *subject; /* owned, may be NULL: decoded UTF-8 */
	char *from; /* owned, may be NULL: decoded UTF-8 */
	char *references; /* owned, may be NULL: raw References value */
	char *in_reply_to; /* owned, may be NULL: raw In-Reply-To value */
};

/*
 * store_open - open (creating if needed) the store in directory @dir.
 *
 * Creates @dir with mode 0700 and the database and body cache inside it
 * with 0600 / 0700, applies pending migrations (PRAGMA user_version), and
 * sets WAL, busy_timeout, foreign_keys and synchronous=FULL. A database
 * that fails PRAGMA quick_check is renamed aside to cache.db.corrupt-<ts>
 * and a new one made (logged). Returns 0 and *@out, or -errno.
 */
int store_open(const char *dir, struct store **out);

/* store_close - finalize statements and close; NULL is fine. */
void store_close(struct store *s);

/* Transactions: store_begin is BEGIN IMMEDIATE (the caller will write). */
int store_begin(struct store *s);
int store_commit(struct store *s);
void store_rollback(struct store *s);

/* ---- folders ---- */

/*
 * store_folder_put - insert the folder named @f->name, or update display,
 * delim, role and noselect of the existing row with that name. Sync state
 * (uidvalidity, uidnext, ...) of an existing row is kept. Sets *@id.
 */
int store_folder_put(struct store *s, const struct store_folder *f,
		     int64_t *id);

/* store_folder_get - load folder @id; -ENOENT if none. Release after. */
int store_folder_get(struct store *s, int64_t id, struct store_folder *out);
void store_folder_release(struct store_folder *f);

/* store_folder_list - every folder, ordered by name. Free the array with
 * store_folder_list_free(). */
int store_folder_list(struct store *s, struct store_folder **out,
		      size_t *n);
void store_folder_list_free(struct store_folder *f, size_t n);

/* store_folder_delete - forget folder @id and its messages. */
int store_folder_delete(struct store *s, int64_t id);

/*
 * store_folder_set_sync - the bookmark: write it in the same transaction
 * as the messages it covers, so a crash redoes work but never skips it.
 */
int store_folder_set_sync(struct store *s, int64_t id, uint32_t uidvalidity,
			  uint32_t uidnext, uint32_t low_uid,
			  uint64_t highestmodseq);

/* store_folder_count - number of messages of folder @id in the store. */
int store_folder_count(struct store *s, int64_t id, uint64_t *n);

/* ---- messages ---- */

/*
 * store_msg_put - insert message (@m->folder, @m->uid), or update the
 * flags of the existing row (everything else of a message is immutable).
 * On insert a new umid is allocated (never reused, never below
 * STORE_FIRST_UMID). Sets @m->umid either way.
 */
int store_msg_put(struct store *s, struct store_msg *m);

/* store_msg_get - load message @umid; -ENOENT if none. */
int store_msg_get(struct store *s, int64_t umid, struct store_msg *out);
void store_msg_release(struct store_msg *m);

/* store_msg_find_uid - umid of (@folder, @uid), -ENOENT if none. */
int store_msg_find_uid(struct store *s, int64_t folder, uint32_t uid,
		       int64_t *umid);

/* store_msg_delete - forget message @umid (gone from the server). Its
 * cached body is removed too. */
int store_msg_delete(struct store *s, int64_t umid);

/*
 * store_msg_list - up to @max messages of @folder with umid > @after, in
 * umid order, into @out (caller's array; release each entry). Sets *@n.
 * Paging by umid keeps readdir of a huge folder cheap.
 */
int store_msg_list(struct store *s, int64_t folder, int64_t after,
		   size_t max, struct store_msg *out, size_t *n);

/*
 * store_msg_uids - the UIDs of @folder in [@lo, @hi], ascending, as a
 * malloc'ed array in *@uids (free() it). For the deletion check.
 */
int store_msg_uids(struct store *s, int64_t folder, uint32_t lo, uint32_t hi,
		   uint32_t **uids, size_t *n);

/* ---- body cache: exact server bytes, one file per umid ---- */

/*
 * store_body_open - open the cached body of @umid read-only; returns the
 * fd (caller closes) or -ENOENT if not cached. Marks it as read now, for
 * eviction of the least recently read.
 */
int store_body_open(struct store *s, int64_t umid);

/* store_body_cached - whether @umid's body is in the cache. */
bool store_body_cached(struct store *s, int64_t umid);

struct store_body_writer;

/*
 * store_body_begin - start writing @umid's body to a temporary file.
 * store_body_append adds bytes; store_body_commit fsyncs and renames it
 * into place atomically (so a reader never sees a partial body) and
 * records its size; store_body_abort discards it. Commit and abort free
 * @w. A failure of append is remembered and returned by commit.
 */
int store_body_begin(struct store *s, int64_t umid,
		     struct store_body_writer **w);
int store_body_append(struct store_body_writer *w, const void *buf,
		      size_t len);
int store_body_commit(struct store_body_writer *w);
void store_body_abort(struct store_body_writer *w);

/*
 * store_body_trim - evict least recently read bodies until the cache holds
 * at most @budget bytes.
 */
int store_body_trim(struct store *s, uint64_t budget);

#endif
