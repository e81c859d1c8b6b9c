/*
 * imap_write.h - the IMAP commands that change the server, for the
 * operation-log executor (sync/ops.c): SELECT read-write, UID MOVE, UID
 * COPY, UID STORE (also conditional, RFC 7162), UID EXPUNGE (RFC 4315),
 * CREATE, DELETE, RENAME, APPEND (pipelined with LITERAL+, RFC 7888) and
 * the UID SEARCH that finds where a message landed without UIDPLUS.
 *
 * Every function returns an enum imap_grade, as those of imap.c do: the
 * caller skips a message (IMAP_MSG_BAD), gives up on a folder
 * (IMAP_FOLDER_BAD: the server refused, its text via imap_last_text),
 * or drops the connection (IMAP_CONN_BAD). Nothing here holds a lock or
 * touches the store. UID sets are @n ranges as imap_uid_ranges makes
 * them: ascending, each 0 < first <= last, none '*'; the caller keeps
 * a set within IMAP_SET_MAX_TEXT. Names are raw (modified UTF-7); one
 * with CR or LF is refused before anything is sent.
 */
#ifndef CONVOY_IMAP_WRITE_H
#define CONVOY_IMAP_WRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sync_i.h"

/*
 * imap_last_text - the server's text of the last reply on @c (after
 * NO/BAD: why it refused), control characters made '?', for the status
 * file and logs; "" if none. Valid until the next command on @c.
 */
const char *imap_last_text(struct conn *c);

/* a UID mapping reported by COPYUID or APPENDUID: dst[i] is the new
 * UID of src[i] */
struct imap_uidmap {
	uint32_t uidvalidity; /* of the target; 0: the server said nothing
				 (no UIDPLUS, or a reply that did not fit
				 what was asked) */
	uint32_t *src, *dst; /* owned, n each, expanded from the sets in
				the server's order */
	size_t n;
};
void imap_uidmap_release(struct imap_uidmap *m);

/*
 * imap_select_rw - SELECT @name read-write (CONDSTORE where offered),
 * unless it already is on @c; @out as imap_examine gives it (for a
 * folder still selected: what the session counted since, and the
 * HIGHESTMODSEQ of its SELECT). IMAP_FOLDER_BAD if refused.
 */
int imap_select_rw(struct conn *c, const char *name, struct imap_box *out);

/*
 * imap_leave_rw - end a read-write selection (UNSELECT where offered,
 * else EXAMINE of the same folder), expunging nothing. Some servers
 * (GNU imap4d) write flag changes to their store only when a session
 * leaves the folder; and a read-write selection left open would clear
 * \Recent for other clients.
 */
int imap_leave_rw(struct conn *c);

/*
 * imap_uid_move - UID MOVE (RFC 6851) of the @n ranges @v of the folder
 * selected read-write to @target; imap_uid_copy - UID COPY (any
 * selection). The COPYUID the server gave goes into @map (may be NULL;
 * uidvalidity 0 if none). IMAP_FOLDER_BAD when the server refuses (NO:
 * e.g. [TRYCREATE], the target does not exist; logged), when nothing or
 * (MOVE) a read-only folder is selected, and for MOVE without CAP_MOVE
 * (nothing sent: the caller falls back to COPY, STORE, EXPUNGE).
 */
int imap_uid_move(struct conn *c, const struct imap_uid_range *v, size_t n,
		  const char *target, struct imap_uidmap *map);
int imap_uid_copy(struct conn *c, const struct imap_uid_range *v, size_t n,
		  const char *target, struct imap_uidmap *map);

/*
 * imap_uid_store - UID STORE of the folder selected read-write: +FLAGS.SILENT
 * (@add) or -FLAGS.SILENT the space-separated @flags: system flags
 * (\Seen \Answered \Flagged \Deleted \Draft, any case) and keywords,
 * sent as atoms. Anything else (\Recent, a keyword that is not an atom
 * of printable ASCII) is IMAP_MSG_BAD before anything is sent; no flag
 * at all is IMAP_OK at once.
 *
 * With @unchangedsince (non-zero; CAP_CONDSTORE only, else
 * IMAP_FOLDER_BAD) the conditional form, RFC 7162 §3.1.3: the UIDs the
 * server left alone because they changed after that MODSEQ come back in
 * *@modified (malloc'ed, ascending, *@nmodified of them; NULL if none).
 * Otherwise both stay NULL/0. The server's FETCH replies are not
 * returned: the caller re-reads flags it needs.
 */
int imap_uid_store(struct conn *c, const struct imap_uid_range *v, size_t n,
		   bool add, const char *flags, uint64_t unchangedsince,
		   uint32_t **modified, size_t *nmodified);

/*
 * imap_uid_expunge - UID EXPUNGE (RFC 4315) of the @n ranges of the folder
 * selected read-write: only the messages flagged \Deleted among them
 * go. IMAP_FOLDER_BAD without CAP_UIDPLUS (nothing sent). There is
 * deliberately no plain EXPUNGE: it would destroy other clients'
 * \Deleted mail.
 */
int imap_uid_expunge(struct conn *c, const struct imap_uid_range *v, size_t n);

/*
 * imap_create, imap_delete, imap_rename - CREATE, DELETE, RENAME (RFC
 * 3501 §6.3.3-5). IMAP_FOLDER_BAD on NO (exists already, has children,
 * ...: imap_last_text says). A folder selected on @c (for RENAME: it or
 * a folder under it) is left first without expunging anything: UNSELECT
 * (RFC 3691) where offered, else EXAMINE INBOX; c->selected follows.
 */
int imap_create(struct conn *c, const char *name);
int imap_delete(struct conn *c, const char *name);
int imap_rename(struct conn *c, const char *from, const char *to);

/*
 * imap_uid_search_header - UID SEARCH UID @from:4294967295 HEADER @field
 * "@value" (the UIDs of @from:*, spelled so that every server gets it
 * right) in the selected folder: the matching UIDs >= @from, ascending,
 * malloc'ed in *@uids (NULL if none). For finding where a
 * moved or appended message landed without COPYUID/APPENDUID. A @field
 * that is not a header name, a @value with CR, LF or bytes above 0x7e,
 * or longer than 998 bytes: IMAP_MSG_BAD, nothing sent.
 */
int imap_uid_search_header(struct conn *c, uint32_t from, const char *field,
			   const char *value, uint32_t **uids, size_t *n);

/*
 * One message of imap_append_many. The content is read with pread from
 * @fd, offset 0, @len bytes, in chunks (memory stays bounded whatever
 * the size); it must use CRLF line ends and hold no NUL (checked before
 * anything is sent: a message that fails is IMAP_MSG_BAD, not sent).
 */
struct imap_append {
	int fd;
	uint64_t len; /* 1 .. 4294967295 */
	const char *flags; /* space-separated, as imap_uid_store; NULL or "" */
	int64_t date; /* INTERNALDATE, Unix time; 0: the server's now */
	int zone; /* minutes east of UTC, -1439 .. 1439 */
	/* out */
	int grade; /* IMAP_OK; IMAP_MSG_BAD (refused: err says why);
		      IMAP_CONN_BAD: no answer came (stored or not) */
	uint32_t uid, uidvalidity; /* APPENDUID, 0 if none */
	char err[160]; /* the server's text of a refusal ("[TRYCREATE] ..."
			  when it gave that code), or our reason */
};

/*
 * imap_append_many - APPEND each of the @n messages @v to @folder. With
 * CAP_LITERALPLUS they are pipelined ({len+} literals, many commands per
 * write burst, the tagged replies read back in order); without it one
 * at a time with a synchronizing literal (a NO instead of "+" refuses
 * that message). Returns IMAP_CONN_BAD if the connection was lost (a
 * file that shrank while being sent also drops it: a literal cannot be
 * cut short), IMAP_FOLDER_BAD if every message sent was refused with
 * [TRYCREATE] (no such folder), else IMAP_OK with each message's grade.
 */
int imap_append_many(struct conn *c, const char *folder,
		     struct imap_append *v, size_t n);

#endif
