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
	/* every message of the folder dated (INTERNALDATE) at or after this
	 * Unix time is in the store, whatever its UID: what growth by date
	 * learned below low_uid; 0 when nothing is known by date */
	int64_t complete_since;
	int64_t last_refresh; /* Unix time of the last completed refresh */
	char *mailboxid; /* owned, may be NULL: RFC 8474 MAILBOXID */
};

struct store_msg {
	int64_t umid; /* our id for the message, also its inode number */
	int64_t folder;
	uint32_t uid; /* 0: an orphan (see orphans.c) */
	int64_t conv; /* conversation id, 0 for none yet */
	char *flags; /* owned: flags sorted, space-separated ("" for none) */
	int64_t date; /* INTERNALDATE as Unix time */
	int zone; /* INTERNALDATE's zone, minutes east of UTC */
	uint64_t size; /* RFC822.SIZE */
	char *message_id; /* owned, may be NULL: Message-ID with <> */
	char *subject; /* owned, may be NULL: decoded UTF-8 */
	char *from; /* owned, may be NULL: decoded UTF-8 */
	/* raw References and In-Reply-To values (owned, may be NULL): kept
	 * only while the message has no conversation, for the threader;
	 * NULL when read back from a threaded message */
	char *references;
	char *in_reply_to;
	char *emailid; /* owned, may be NULL: RFC 8474 EMAILID */
	/* the length of the body BODY[] returned, once fetched (-1 until
	 * then): what st_size says, as RFC822.SIZE may be wrong */
	int64_t real_size;
	/* a pending write (ops.c): the folder a move takes the message to,
	 * STORE_DEST_EXPUNGE for an expunge (it is gone as far as a reader
	 * goes), 0 for none. folder and uid stay where the message is on
	 * the server until the sync thread has moved it */
	int64_t dest;
};

#define STORE_DEST_EXPUNGE (-1)

/* store_msg_shown_in - the folder a reader sees message @m in */
static inline int64_t store_msg_shown_in(const struct store_msg *m)
{
	return m->dest > 0 ? m->dest : m->folder;
}

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
/*
 * store_open_checked - store_open without PRAGMA quick_check, for a
 * caller that opened and closed the same store with store_open moments
 * before in this run (the check reads the whole file: about a second at
 * a million messages, paid once per mount, not twice).
 */
int store_open_checked(const char *dir, struct store **out);

/*
 * store_cache_only - declare that @s writes nothing but the body cache
 * (a fetcher's connection): its commits are not synced to disk one by
 * one (WAL, synchronous=NORMAL). A body row lost in a power cut costs a
 * fetch again, never a message; every other connection keeps FULL.
 */
int store_cache_only(struct store *s);

/*
 * store_bulk - @s writes messages by the thousand (the sync thread): a
 * page cache of 16 MiB instead of 2, so the indexes a batch touches at
 * random stay cached instead of going back and forth.
 */
int store_bulk(struct store *s);

/*
 * store_writes_relaxed - @s records the user's writes (the operation
 * log) without syncing each commit to disk (WAL, synchronous=NORMAL):
 * a record survives a crash of the process, as the log is in the page
 * cache, but a power cut may lose the last ones. Never mail: a lost
 * move leaves the message where the server has it, and a lost append's
 * content, synced before its record, is kept in recovered/ by the next
 * start (store_stage_sweep). One fsync per rename would make `mv` of
 * many files wait on the disk for each.
 */
int store_writes_relaxed(struct store *s);

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
 * store_folder_set_sync - the bookmark (@f's uidvalidity, uidnext,
 * low_uid, highestmodseq and complete_since, for folder @f->id): write
 * it in the same transaction as the messages it covers, so a crash
 * redoes work but never skips it. -ENOENT if there is no such folder.
 */
int store_folder_set_sync(struct store *s, const struct store_folder *f);

/* store_folder_count - number of messages of folder @id in the store. */
int store_folder_count(struct store *s, int64_t id, uint64_t *n);
/* store_folder_newest - the date of @id's newest message, 0 if it has
 * none */
int store_folder_newest(struct store *s, int64_t id, int64_t *date);

/* ---- messages ---- */

/*
 * store_msg_put - insert message (@m->folder, @m->uid), or update the
 * flags of the existing row (everything else of a message is immutable).
 * On insert a new umid is allocated (never reused, never below
 * STORE_FIRST_UMID) and the row joins conversation @m->conv (0 for
 * none; it must exist), counted into it at once. Sets @m->umid either
 * way, and @m->conv to the conversation of an existing row (0 for none).
 * Opens its own transaction if none is open; a failure inside the
 * caller's transaction may leave counts half done: roll it back.
 */
int store_msg_put(struct store *s, struct store_msg *m);

/*
 * store_msg_set_flags - set the flags of the stored message (@m->folder,
 * @m->uid) to @m->flags and set @m->umid and @m->conv. The row must
 * exist (a refresh of known UIDs): unlike store_msg_put this never
 * inserts, so it spends no umid: -ENOENT (not logged) when the row is
 * not there. *@changed (may be NULL) tells whether the flags differ
 * from what was stored.
 */
int store_msg_set_flags(struct store *s, struct store_msg *m, bool *changed);

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

/*
 * store_msg_uids_from - up to @max UIDs of @folder in [@from, @below),
 * ascending, into a malloc'ed array (free() it): the known UIDs a
 * bounded chunk of a refresh covers.
 */
int store_msg_uids_from(struct store *s, int64_t folder, uint32_t from,
			uint32_t below, size_t max, uint32_t **uids, size_t *n);

/*
 * store_msg_dates_from - the INTERNALDATEs of up to @max messages of
 * @folder dated at or after @since, earliest first, as a malloc'ed
 * array (free() it): how densely a folder's mail lies in time just
 * after a date, for growth by date to size its next step.
 */
int store_msg_dates_from(struct store *s, int64_t folder, int64_t since,
			 size_t max, int64_t **dates, size_t *n);

/* ---- identity: orphans and adoption (orphans.c) ----
 *
 * A message the server no longer has where we knew it becomes an
 * orphan: hidden from listings and lookups by folder, but its row, umid
 * (inode), conversation and cached body stay, so that the same message
 * found again (moved by another client to another folder, or renumbered
 * by a UIDVALIDITY change) takes them back. Orphans nobody adopts are
 * purged once the refresh pass that could have found them is over.
 */

/* store_msg_orphan - make @umid an orphan (no-op if it is one). */
int store_msg_orphan(struct store *s, int64_t umid);

/* store_folder_orphan_all - every message of @folder becomes an orphan
 * (its UIDVALIDITY changed: the UIDs name other messages now). */
int store_folder_orphan_all(struct store *s, int64_t folder);

/*
 * store_msg_adopt - new message @m (folder, uid, flags, date, size,
 * message_id, emailid) is an orphan found again: one with the same
 * INTERNALDATE and RFC822.SIZE, and the same EMAILID where both have
 * one, else the same Message-ID (or both none). The orphan moves to
 * (@m->folder, @m->uid) with @m's flags; @m->umid and @m->conv are set.
 * Returns 0, -ENOENT if no orphan matches (store it as new), -errno.
 */
int store_msg_adopt(struct store *s, struct store_msg *m);

/*
 * store_msg_find_twin - for message @gone, which just vanished from its
 * folder: another message stored after umid @since that matches it as
 * store_msg_adopt matches: the same message, moved by another client
 * and found in its new folder first, or given a new UID in the same
 * folder (a server that renumbers without changing UIDVALIDITY, as
 * imap4d does while mail waits in a maildir's new/). *@umid is 0 if
 * none.
 */
int store_msg_find_twin(struct store *s, int64_t since,
			const struct store_msg *gone, int64_t *umid);

/*
 * store_msg_take_place - @old takes the place of @twin: @old moves to
 * @twin's folder, UID and flags (keeping its umid, conversation and
 * body) and @twin's row goes. Inside the caller's transaction.
 */
int store_msg_take_place(struct store *s, int64_t old, int64_t twin);

/* store_folder_purge_orphans - forget the orphans of @folder (with
 * their bodies), each shown to @gone (may be NULL) as it was just
 * before; *@n (may be NULL) is how many went. */
int store_folder_purge_orphans(struct store *s, int64_t folder,
			       void (*gone)(const struct store_msg *m,
					    void *aux),
			       void *aux, size_t *n);

/* store_msg_max_umid - the highest umid handed out so far (0: none),
 * marking where a refresh pass begins. */
int store_msg_max_umid(struct store *s, int64_t *umid);

/* store_has_orphans - whether any orphan waits to be adopted (true
 * too when the store cannot tell), so that storing new mail can skip
 * looking for one. */
int store_has_orphans(struct store *s, bool *any);

/* store_folder_rename - folder @id is now called @f->name (display,
 * delim, role, noselect as store_folder_put takes them): a rename on
 * the server; its messages stay where they are. */
int store_folder_rename(struct store *s, int64_t id,
			const struct store_folder *f);

/* store_folder_set_mailboxid - record RFC 8474 MAILBOXID of @id. */
int store_folder_set_mailboxid(struct store *s, int64_t id,
			       const char *mailboxid);

/*
 * store_msg_relocate - message @umid is now (@folder, @uid) on the
 * server: a move of ours completed. If a refresh stored that UID first,
 * @umid takes its place (store_msg_take_place). @uid 0: where it went
 * is not known; it becomes an orphan of @folder, for the refresh of
 * @folder to adopt. Inside the caller's transaction or its own.
 */
int store_msg_relocate(struct store *s, int64_t umid, int64_t folder,
		       uint32_t uid);

/* ---- the operation log (ops.c, DESIGN §6) ----
 *
 * A write is applied to the store and recorded as an op in one BEGIN
 * IMMEDIATE transaction, before the system call returns: the tree shows
 * the result at once, and a crash loses nothing. The sync thread runs
 * ops in id order and deletes each in the transaction that records its
 * outcome. Until then a message's row keeps where it is on the server;
 * store_msg's dest says what a reader sees instead.
 */
enum store_op_kind {
	STORE_OP_MOVE, /* umid to folder dst (rm: to Trash) */
	STORE_OP_EXPUNGE, /* umid (rm inside Trash) */
	STORE_OP_FLAGS, /* umid: the row holds the flags wanted, base what
			   the server had */
	STORE_OP_CREATE, /* folder name */
	STORE_OP_DELETE, /* folder name */
	STORE_OP_RENAME, /* folder name to name2 */
	STORE_OP_APPEND, /* umid, a new row of folder dst, whose content is
			    the file name (in the staging directory) */
};

struct store_op {
	int64_t id;
	enum store_op_kind kind;
	int64_t umid; /* message ops */
	int64_t dst; /* move: the target folder */
	char *name; /* owned, may be NULL: folder ops' raw names */
	char *name2;
	char *base; /* owned, may be NULL: flags the server had */
	bool sent; /* its command may have reached the server */
	uint32_t dst_uidnext; /* move: the target's UIDNEXT before */
	/* once sent: where the message was then (folder, and uid as
	 * stored: negative for a row waiting to be appended) */
	int64_t src;
	int64_t src_uid;
	unsigned attempts;
	int64_t created; /* Unix time */
};
void store_op_release(struct store_op *op);
const char *store_op_kind_name(enum store_op_kind k);

/*
 * Writers (any thread, own transaction each):
 *
 * store_op_move - show message @umid in folder @dst and record the
 * move. A message already moving whose op was not sent yet gets the new
 * target (one op, the final destination); moved back to where it is on
 * the server, the op goes. -ENOENT: no such message (or an orphan).
 */
int store_op_move(struct store *s, int64_t umid, int64_t dst);
/* store_op_expunge - hide @umid and record its expunge. */
int store_op_expunge(struct store *s, int64_t umid);
/* store_op_flags - @umid's flags become @flags now; the flags the
 * server has are kept as the op's base, for the difference to send. */
int store_op_flags(struct store *s, int64_t umid, const char *flags);
/*
 * store_op_append - row @umid, just stored in folder @folder with UID 0
 * (thread_put, in the caller's transaction), is a message the user
 * wrote: it waits as uid -umid (neither adopted nor purged while its op
 * waits) for the APPEND of the file @staged. In the caller's
 * transaction.
 */
int store_op_append(struct store *s, int64_t umid, int64_t folder,
		    const char *staged);
/* store_stage_dir, store_recovered_dir - the directories (owner-only,
 * made on first use) for files waiting to be appended, and for content
 * the server refused; NULL if they cannot be made */
const char *store_stage_dir(struct store *s);
const char *store_recovered_dir(struct store *s);
/* store_stage_sweep - at start: staged files no op refers to (left by
 * a crash before their op was committed) go to the recovered directory;
 * *@kept is how many */
int store_stage_sweep(struct store *s, size_t *kept);
/* store_body_from_fd - @fd's whole content (read from offset 0) is the
 * cached body of @umid, and its length the real size */
int store_body_from_fd(struct store *s, int64_t umid, int fd);

/* store_op_create - a new folder row for @f and its CREATE; *@id */
int store_op_create(struct store *s, const struct store_folder *f,
		    int64_t *id);
/* store_op_delete - forget empty folder @folder and record its DELETE;
 * -ENOTEMPTY if any message is or is shown in it. */
int store_op_delete(struct store *s, int64_t folder);
/*
 * store_op_rename - the @n folders @v (ids and their new names, as
 * store_folder_rename takes them: a folder and those below it) are
 * renamed, and one RENAME of @from to @to recorded.
 */
int store_op_rename(struct store *s, const struct store_folder *v, size_t n,
		    const char *from, const char *to);

/*
 * The sync thread's:
 *
 * store_op_next - the oldest op with id > @after into @out; -ENOENT if
 * none. Release after.
 */
int store_op_next(struct store *s, int64_t after, struct store_op *out);
/*
 * store_op_batch - up to @max ops that run with @first in one command:
 * ops of the same kind, sent or not as @first, on messages of @folder
 * (and for moves the same target), in id order from @first on, and none
 * past a folder op (which may change what names mean). Malloc'ed
 * array in *@out (release each, then free()).
 */
int store_op_batch(struct store *s, const struct store_op *first,
		   int64_t folder, size_t max, struct store_op **out,
		   size_t *n);
/* store_op_mark_sent - ops @ids may reach the server now; the target's
 * UIDNEXT was @dst_uidnext. One transaction. */
int store_op_mark_sent(struct store *s, const int64_t *ids, size_t n,
		       uint32_t dst_uidnext);
/* store_op_done - op @id is over (done or put back): delete it. In the
 * caller's transaction or its own. */
int store_op_done(struct store *s, int64_t id);
/* store_op_failed - attempt of op @id failed for a reason that may pass
 * (the connection): count it and keep @why. */
int store_op_failed(struct store *s, int64_t id, const char *why);
/* store_op_summary - the first @max ops into @v (release each), *@n
 * of them, and how many wait in all into *@total: one statement, as
 * every write asks */
int store_op_summary(struct store *s, struct store_op *v, size_t max,
		     size_t *n, uint64_t *total);
/* store_op_count - ops waiting */
int store_op_count(struct store *s, uint64_t *n);
/* store_op_folder_pending - whether an op waits that creates or renames
 * a folder to @name (a LIST must not drop it meanwhile) */
int store_op_folder_pending(struct store *s, const char *name, bool *yes);

/* ---- messages whose FETCH breaks the connection (skipped.c) ---- */

struct store_skipped {
	int64_t folder;
	uint32_t uid;
};

/* store_skipped_add - remember UID @uid of @folder, seen under
 * @uidvalidity, as left out; a second add of it is a no-op */
int store_skipped_add(struct store *s, int64_t folder, uint32_t uid,
		      uint32_t uidvalidity);
/* store_skipped_list - up to @max of them, under each folder's current
 * UIDVALIDITY, into @out (caller frees @out); *@n how many */
int store_skipped_list(struct store *s, size_t max,
		       struct store_skipped **out, size_t *n);
/* store_skipped_clear - forget those of @folder (its UIDs name other
 * messages now) */
int store_skipped_clear(struct store *s, int64_t folder);

/* ---- body cache: exact server bytes, one file per umid ---- */

/*
 * store_body_open - open the cached body of @umid read-only; returns the
 * fd (caller closes) or -ENOENT if not cached. Marks it as read now, for
 * eviction of the least recently read.
 */
int store_body_open(struct store *s, int64_t umid);

/* store_body_cached - whether @umid's body is in the cache. */
bool store_body_cached(struct store *s, int64_t umid);

/* what store_body_sweep found */
struct store_sweep {
	size_t temporary; /* temporary files removed */
	size_t adopted; /* bodies with no row, given one */
	size_t dropped; /* bodies of messages no longer known, removed */
	size_t rows; /* rows whose file was missing, removed */
};

/*
 * store_body_sweep - put the body cache in order after a crash: remove
 * temporary files, give a row to a body renamed into place whose row
 * was never committed (so the budget counts every file), remove bodies
 * of messages the store no longer has, and rows whose file is gone.
 * Call it before any body is written (no fetcher running).
 */
int store_body_sweep(struct store *s, struct store_sweep *out);
/*
 * store_clean_stop_take - whether the last run on this store stopped in
 * order (store_clean_stop_mark), so that nothing a crash leaves is there
 * and the sweep above, which reads every body file's name and every row
 * (seconds at a million bodies), can be spared. The mark is removed
 * first: a crash from now on is seen by the next start.
 * store_clean_stop_mark - record that no body is being written any more
 * and every one written is recorded: for the very end of an orderly stop.
 */
bool store_clean_stop_take(struct store *s);
void store_clean_stop_mark(struct store *s);

struct store_body_writer;

/*
 * store_body_begin - start writing @umid's body (0: a message not known
 * yet, see store_body_claim) to a temporary file.
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
 * store_body_claim - the body @w writes is @umid's: a writer begun with
 * umid 0 (whose message was not known yet) must be told before commit.
 */
void store_body_claim(struct store_body_writer *w, int64_t umid);

/*
 * store_body_commit_many - commit the @n writers @w at once: the files
 * made durable by one syncfs, renamed into place, and their rows
 * written in one transaction on @s (the caller's, if open; @s may be
 * another connection to the same store than the writers were begun
 * on, for another thread). Frees every writer. Returns how many were
 * committed, or -errno (then none is).
 */
int store_body_commit_many(struct store *s, struct store_body_writer **w,
			   size_t n);

/* a message whose body is not cached, for prefetch */
struct store_uncached {
	int64_t umid;
	uint32_t uid;
	uint64_t size; /* RFC822.SIZE */
};
/*
 * store_uncached - up to @max messages of @folder on the server whose
 * body is not cached, with a UID in [@from, @below) and a date at or
 * after @since (Unix time), newest (highest UID) first.
 */
int store_uncached(struct store *s, int64_t folder, uint32_t from,
		   uint32_t below, int64_t since, size_t max,
		   struct store_uncached *out, size_t *n);

/* store_body_counts - bodies cached, and messages known on the server */
int store_body_counts(struct store *s, uint64_t *cached, uint64_t *messages);

/* store_body_total - bytes of cached bodies */
int store_body_total(struct store *s, uint64_t *total);

/*
 * store_body_trim - evict least recently read bodies until the cache holds
 * at most @budget bytes.
 */
int store_body_trim(struct store *s, uint64_t budget);

/* ---- conversations ---- */

/*
 * A conversation is a set of messages joined by Message-ID, References
 * and In-Reply-To (sync/thread.c decides which; DESIGN §4). Its subject,
 * first date and zone are those of its earliest message, ordered by
 * (date, Message-ID with none first, umid), so they do not depend on the
 * order in which messages arrived. Conversation ids are never reused.
 *
 * Deleting a message (store_msg_delete, or a folder's messages with
 * store_folder_delete) keeps its conversation right: the count falls, the
 * earliest message and last date are recomputed from the messages left,
 * and a conversation left empty is deleted with its header ids.
 */
struct store_conv {
	int64_t id;
	char *subject; /* owned, may be NULL: the earliest message's */
	int64_t first_date; /* Unix time of the earliest message */
	int first_zone; /* its zone, minutes east of UTC */
	int64_t last_date; /* Unix time of the latest message */
	uint64_t count; /* messages, each copy in each folder counted */
};

/* store_conv_get - load conversation @id; -ENOENT if none. Release after. */
int store_conv_get(struct store *s, int64_t id, struct store_conv *out);
void store_conv_release(struct store_conv *c);

/*
 * store_conv_list - up to @max conversations with id > @after and at
 * least one message, in id order, into @out (caller's array; release
 * each entry). Sets *@n.
 */
int store_conv_list(struct store *s, int64_t after, size_t max,
		    struct store_conv *out, size_t *n);

/*
 * store_conv_messages - up to @max messages of conversation @conv with
 * umid > @after, in umid order, as store_msg_list does for a folder.
 */
int store_conv_messages(struct store *s, int64_t conv, int64_t after,
			size_t max, struct store_msg *out, size_t *n);

/*
 * The calls below are the threader's (sync/thread.c). Each leaves the
 * rows consistent on its own, so a failure between two of them, even in
 * a transaction that is then committed, only leaves harmless rests: an
 * empty conversation (not listed), or ids mapped to a conversation the
 * message has not joined yet (thread it again to finish).
 *
 * store_conv_begin - begin a write transaction unless one is open on @s;
 * store_conv_end finishes it (commit if @rc is 0, else roll back) if
 * *@own says it was opened here, and returns @rc or the commit's error.
 */
int store_conv_begin(struct store *s, bool *own);
int store_conv_end(struct store *s, bool own, int rc);

/*
 * store_conv_of_msg - the conversation of message @umid into *@conv, 0
 * if it has none yet. -ENOENT if no such message.
 */
int store_conv_of_msg(struct store *s, int64_t umid, int64_t *conv);

/*
 * store_conv_lookup - for each of the @n header ids @ids (Message-ID
 * values with <>), the conversation header_ids maps it to into
 * @convs[i], 0 for an id not known. (header_ids keeps a 64-bit hash of
 * each id, not its text: see conversations.c.)
 */
int store_conv_lookup(struct store *s, const char *const *ids, size_t n,
		      int64_t *convs);

/* store_conv_new - a new, empty conversation; its id in *@conv. */
int store_conv_new(struct store *s, int64_t *conv);

/*
 * store_conv_attach - put message @umid, which has no conversation yet,
 * into conversation @conv; in the same statement its count, last date
 * and earliest message follow. -EEXIST if the message is gone or has a
 * conversation already.
 */
int store_conv_attach(struct store *s, int64_t conv, int64_t umid);

/*
 * store_conv_changes_take - the conversations this connection's writes
 * changed since the last call (a message entered one, or one was merged
 * into another), each as it was before the first such write: its old
 * subject and first date make the name its directory had (count 0: it
 * had none). Told to fs/ after the commit, which drops that name and the
 * listing from the kernel's caches. One changed by a write later rolled
 * back is listed too: telling it costs a lookup, never a wrong answer.
 * Sets *@v (release each entry with store_conv_release, then free the
 * array) and *@n; nothing to tell is *@n 0 and *@v NULL.
 */
void store_conv_changes_take(struct store *s, struct store_conv **v,
			     size_t *n);

/*
 * store_conv_merge - move every message and header id of conversation
 * @from into @into, add up their counts and dates, and delete @from; all
 * or nothing (a savepoint inside the caller's transaction). -ENOENT if
 * either does not exist; @from == @into is -EINVAL.
 */
int store_conv_merge(struct store *s, int64_t from, int64_t into);

/* store_conv_add_ids - map each of the @n header ids @ids to @conv
 * (an id already mapped is moved). */
int store_conv_add_ids(struct store *s, const char *const *ids, size_t n,
		       int64_t conv);

/*
 * store_conv_unthreaded - up to @max messages without a conversation
 * and with umid > @after, in umid order (as store_msg_list); for
 * threading what an older store or a failed threading left behind.
 */
int store_conv_unthreaded(struct store *s, int64_t after, size_t max,
			  struct store_msg *out, size_t *n);

/* ---- one process per store (lock.c) ---- */

struct store_lock;

/*
 * store_lock_take - hold the store in directory @dir (created 0700 if
 * missing) for this process: an exclusive flock on @dir/lock, kept until
 * store_lock_release() or exit, also by a child made by fork() (the
 * daemon) after the parent is gone. @note (one line, may be NULL) is
 * written into the file, for whoever finds the store taken to read.
 * Returns 0 and *@out, -EBUSY when another process holds it, or -errno;
 * on failure one line in @err (it runs before the mount, on the
 * terminal) and nothing logged.
 */
int store_lock_take(const char *dir, const char *note,
		    struct store_lock **out, char *err, size_t errlen);
/* store_lock_release - let go of the store; NULL is fine. */
void store_lock_release(struct store_lock *l);

#endif
