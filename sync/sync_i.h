/*
 * sync_i.h - declarations private to sync/: the TLS stream, one IMAP
 * connection, modified UTF-7 and message-header decoding.
 */
#ifndef CONVOY_SYNC_I_H
#define CONVOY_SYNC_I_H

#include <libetpan/libetpan.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sync.h"

/* ---- tls.c: an OpenSSL mailstream_low driver with deadlines ---- */

struct tls_opts {
	const char *host;
	const char *port;
	bool implicit; /* TLS at once (imaps); false: plain until tls_start */
	const char *cafile; /* NULL: the system's trust store */
	int timeout; /* seconds for connect, handshake and every read/write */
};

/*
 * tls_open - TCP-connect to @o->host:@o->port within the timeout and, if
 * @o->implicit, do the TLS handshake verifying the chain and the host name
 * (SNI set). Returns 0 and a mailstream in *@out, or -errno with one line
 * in @err: -ECONNREFUSED, -EHOSTUNREACH, -ETIMEDOUT (unreachable) or
 * -EPROTO (handshake or verification failed: the line says which:
 * "certificate ... does not match host name" vs "cannot verify ...").
 * Every later read and write also fails (-1) after the timeout.
 */
int tls_open(const struct tls_opts *o, mailstream **out, char *err,
	     size_t errlen);

/*
 * tls_start - after "STARTTLS" got OK, run the handshake on the same
 * socket and switch the stream to TLS in place. Refuses (-EPROTO) if the
 * server sent anything after its OK (plaintext injection).
 */
int tls_start(mailstream *s, char *err, size_t errlen);

/*
 * deflate_start - from now on @s's bytes go through raw deflate both
 * ways (COMPRESS=DEFLATE, RFC 4978, after the server's OK): its low
 * stream is wrapped (sync/deflate.c). 0 or -errno (nothing changed).
 */
int deflate_start(mailstream *s);
/* deflate_inner - the stream @low wraps, and in *@pending the bytes it
 * holds that will read without the socket; @low itself (and 0) if it is
 * not a deflate stream */
mailstream_low *deflate_inner(mailstream_low *low, size_t *pending);

/*
 * tls_cancel_all - from now on every network wait of every connection
 * (connect, handshake, read, write) fails at once with ECANCELED: the
 * stop of the daemon, so that no thread waits out its timeout.
 */
void tls_cancel_all(void);

/* tls_pending - bytes already decrypted and buffered, so poll() would
 * not see them. */
size_t tls_pending(mailstream *s);

/* ---- conn.c: one logged-in IMAP connection ---- */

enum conn_cap {
	CAP_CONDSTORE = 1 << 0,
	CAP_QRESYNC = 1 << 1,
	CAP_MOVE = 1 << 2,
	CAP_UIDPLUS = 1 << 3,
	CAP_IDLE = 1 << 4,
	CAP_SPECIAL_USE = 1 << 5,
	CAP_LIST_STATUS = 1 << 6,
	CAP_ENABLE = 1 << 7,
	CAP_OBJECTID = 1 << 8,
	CAP_NOTIFY = 1 << 9,
	CAP_LITERALPLUS = 1 << 10, /* RFC 7888 {n+}: APPENDs pipelined */
	CAP_COMPRESS = 1 << 11, /* RFC 4978 COMPRESS=DEFLATE */
};

struct conn {
	mailimap *imap; /* owned */
	unsigned caps; /* enum conn_cap bits, probed after login */
	char *selected; /* owned: name of the selected folder, or NULL */
	bool readonly; /* selected with EXAMINE */
	uint64_t highestmodseq; /* from the last SELECT (CONDSTORE) */
	bool qresync; /* ENABLE QRESYNC succeeded on this connection */
	bool compressed; /* COMPRESS DEFLATE is on */
};

/*
 * conn_open - connect, TLS (implicit, or STARTTLS required for imap://),
 * read the greeting, LOGIN (AUTHENTICATE PLAIN with SYNC_AUTH_PLAIN or
 * when the server says LOGINDISABLED; AUTHENTICATE XOAUTH2 or
 * OAUTHBEARER with the password as the token, refused at once when the
 * server does not offer the mechanism), then probe capabilities again,
 * and turn on COMPRESS=DEFLATE where offered (unless cfg->no_compress).
 * User and password with CR, LF or NUL are refused (-EINVAL) before
 * anything is sent. On failure one clear
 * line is in @err and the return is as for sync_new().
 */
int conn_open(const struct sync_config *cfg, struct conn **out, char *err,
	      size_t errlen);

/* conn_close - LOGOUT if the stream is still healthy, then free. */
void conn_close(struct conn *c);

/*
 * conn_select - SELECT (or EXAMINE if @readonly) folder @name (raw
 * server name) unless it is already selected that way; with CONDSTORE
 * records HIGHESTMODSEQ. Returns 0, -ENOENT (server said NO), -EIO.
 */
int conn_select(struct conn *c, const char *name, bool readonly);

/* conn_errno - map a mailimap return code: 0 -> 0, STREAM/PARSE/FATAL ->
 * -EIO (connection unusable: see conn_is_broken), tagged NO -> -EREMOTE,
 * PROTOCOL -> -EPROTO. Logs @what with the server's text. */
int conn_errno(struct conn *c, int rc, const char *what);

/* conn_is_broken - true after a stream, parse or BYE error. */
bool conn_is_broken(const struct conn *c);

/* conn_name_ok - a name or string that may be sent to the server:
 * no CR, LF (libetpan would send them raw). */
bool conn_name_ok(const char *s);

/* ---- imap.c: the IMAP primitives, failures graded ---- */

/*
 * What went wrong, as isync's driver contract grades it: the caller
 * skips one message, gives up on one folder (the others go on), drops
 * and re-makes the connection, or stops because it was asked to.
 */
enum imap_grade {
	IMAP_OK = 0,
	IMAP_MSG_BAD,
	IMAP_FOLDER_BAD,
	IMAP_CONN_BAD,
	IMAP_CANCELLED,
};

/* imap_init - register our parsers for RFC 8474 ids with libetpan
 * (process-wide): once, before any thread starts. */
void imap_init(void);

/* imap_prepare - after conn_open: ENABLE QRESYNC where offered (with
 * CONDSTORE and ENABLE). A refusal is not an error: the connection
 * then works without it. */
int imap_prepare(struct conn *c);

/* a folder as EXAMINE or STATUS sees it */
struct imap_box {
	uint32_t uidvalidity;
	uint32_t uidnext; /* 0: the server did not say */
	uint32_t exists;
	uint64_t highestmodseq; /* 0: no CONDSTORE */
	char *mailboxid; /* owned, may be NULL */
};
void imap_box_release(struct imap_box *b);

/* imap_examine - EXAMINE @name (read-only: a look never clears \Recent
 * for other clients), with CONDSTORE where offered. IMAP_FOLDER_BAD
 * when the server refuses (the folder is gone or not selectable). */
int imap_examine(struct conn *c, const char *name, struct imap_box *out);

/* imap_look - as imap_examine, unless @name is still selected read-only
 * on @c: then what the session knows of it, without a round trip (for
 * a job that comes back to the folder it looked at last) */
int imap_look(struct conn *c, const char *name, struct imap_box *out);

/* imap_status - STATUS @name (MESSAGES UIDNEXT UIDVALIDITY, and
 * HIGHESTMODSEQ with CONDSTORE), without selecting it. */
int imap_status(struct conn *c, const char *name, struct imap_box *out);

struct imap_mailbox {
	char *name; /* owned: raw (modified UTF-7) */
	char delim; /* 0 for NIL */
	bool noselect; /* \Noselect or \NonExistent */
	const char *role; /* static: SPECIAL-USE role without '\', or NULL */
	bool has_status; /* LIST-STATUS gave @box */
	struct imap_box box;
};
/* imap_list - LIST "" "*", duplicates dropped. Free with
 * imap_mailboxes_free. */
int imap_list(struct conn *c, struct imap_mailbox **out, size_t *n);
void imap_mailboxes_free(struct imap_mailbox *v, size_t n);
/* imap_list_status - LIST "" "*" RETURN (STATUS (MESSAGES UIDNEXT
 * UIDVALIDITY HIGHESTMODSEQ)), RFC 5819: the list and each selectable
 * folder's status (has_status) in one round trip. Only where offered. */
int imap_list_status(struct conn *c, struct imap_mailbox **out, size_t *n);

/* one message of a FETCH reply, valid during the callback only */
struct imap_msg {
	uint32_t uid;
	uint32_t seq;
	char *flags; /* NULL if not in the reply: sorted, no \Recent */
	bool has_size, has_date;
	uint64_t size;
	int64_t date;
	int zone;
	const char *header; /* the HEADER.FIELDS literal, or NULL */
	size_t header_len;
	char *emailid; /* NULL unless OBJECTID */
};

enum imap_items {
	IMAP_ITEMS_UID, /* UID only (to learn a sequence number) */
	IMAP_ITEMS_FLAGS, /* UID FLAGS */
	IMAP_ITEMS_META, /* UID FLAGS INTERNALDATE RFC822.SIZE, the header
			    fields naming and threading need, EMAILID */
	IMAP_ITEMS_DATE, /* UID INTERNALDATE (growth's samples) */
};

struct imap_uid_range {
	uint32_t first, last;
};

/*
 * One FETCH of the range @first:@last (@last 0 is '*'), by UID or by
 * sequence number. Each message goes to @fn as it is parsed, so memory
 * stays bounded by one message; @fn returns 0, or an error that skips
 * the rest (the reply is still read to its end), -ECANCELED to cancel.
 * With @changedsince and CONDSTORE, only messages changed since; with
 * @want_vanished too and QRESYNC enabled, the UIDs expunged since come
 * back in @vanished (VANISHED (EARLIER)).
 */
struct imap_fetch {
	bool by_uid;
	uint32_t first, last;
	enum imap_items items;
	uint64_t changedsince;
	bool want_vanished;
	int (*fn)(const struct imap_msg *m, void *ctx);
	void *ctx;
	/* out */
	int cb_rc; /* the first error @fn returned */
	size_t count; /* messages handed to @fn */
	struct imap_uid_range *vanished; /* owned: imap_fetch_release */
	size_t nvanished;
};
int imap_fetch(struct conn *c, struct imap_fetch *f);
void imap_fetch_release(struct imap_fetch *f);

/* the most a UID set of ours takes on the wire: a command stays well
 * within the 8192 octets RFC 7162 §4 asks clients to keep to */
#define IMAP_SET_MAX_TEXT 4000

/*
 * imap_uid_ranges - the first of the @n ascending UIDs @uids as ranges
 * into @out (room for @n), as many as fit in @max_text bytes written
 * as a set: runs of consecutive UIDs make one range, and so do UIDs at
 * or above @merge_from across gaps (the caller knows every UID the
 * server has there). Returns how many UIDs the ranges hold (at least
 * one if @n is not 0), and their count in *@nout.
 */
size_t imap_uid_ranges(const uint32_t *uids, size_t n, uint32_t merge_from,
		       size_t max_text, struct imap_uid_range *out,
		       size_t *nout);

/*
 * imap_fetch_set - as imap_fetch, of the @n ranges @v (ascending, each
 * first <= last, none '*') in one command: UIDs, or sequence numbers
 * without @f->by_uid. @f's first and last are not used; changedsince
 * and want_vanished are cleared.
 */
int imap_fetch_set(struct conn *c, struct imap_fetch *f,
		   const struct imap_uid_range *v, size_t n);

/*
 * imap_uid_search_set - UID SEARCH UID <the @n ranges @v>, and SINCE
 * the day of @since and BEFORE the day of @before (Unix times read in
 * UTC; 0 leaves that bound out). The server compares INTERNALDATEs by
 * day in its own time zone (RFC 3501 §6.4.4), so a caller leaves a day
 * of margin. The UIDs found within @v, ascending, malloc'ed.
 */
int imap_uid_search_set(struct conn *c, const struct imap_uid_range *v,
			size_t n, int64_t since, int64_t before,
			uint32_t **uids, size_t *nuids);

/* what one message's FETCH response held, judged when it is whole */
enum imap_body_kind {
	IMAP_BODY_WHOLE, /* exactly one body: BODY[] of the whole message */
	IMAP_BODY_PART, /* another section (BODY[HEADER], RFC822.TEXT…) */
	IMAP_BODY_TWO, /* more than one body */
};

/*
 * imap_fetch_bodies - UID FETCH <the @n ranges @v> (UID BODY.PEEK[]) in
 * one command: many bodies a round trip (sync/imap_bodies.c). While a
 * body streams nobody knows whose it is: @bytes gets the bytes of the
 * message now arriving (a wrong section's are not given), then @end,
 * once that message's response is whole, its UID (0 if none came) and
 * what it held; the caller keeps or drops what came since the last
 * @end. @bytes returns 0, or an error that aborts (kept in @cb_rc; the
 * session is then lost, the reply being left half-read).
 */
struct imap_bodies {
	int (*bytes)(const char *bytes, size_t len, void *ctx);
	void (*end)(uint32_t uid, enum imap_body_kind kind, void *ctx);
	void *ctx;
	int cb_rc; /* out */
};
int imap_fetch_bodies(struct conn *c, const struct imap_uid_range *v,
		      size_t n, struct imap_bodies *b);

/*
 * imap_fetch_body - UID FETCH @uid BODY.PEEK[], the bytes streamed to
 * @fn as they come (never held whole in memory); *@got counts them.
 * @fn returns 0, or an error that aborts (kept in *@cb_rc; the
 * connection is then lost, as the reply is left half-read).
 */
int imap_fetch_body(struct conn *c, uint32_t uid,
		    int (*fn)(const char *bytes, size_t len, void *ctx),
		    void *ctx, uint64_t *got, int *cb_rc);

/*
 * imap_mailboxid - RFC 8474 MAILBOXID of @name into *@id (malloc'ed),
 * by STATUS @name (MAILBOXID); NULL where the server has no OBJECTID.
 */
int imap_mailboxid(struct conn *c, const char *name, char **id);

/* imap_noop - NOOP: is the connection still there? */
int imap_noop(struct conn *c);

/* imap_has_input - bytes wait on an idle connection (a BYE, or the
 * server closed it): time to look with imap_noop. */
bool imap_has_input(struct conn *c);

/* ---- imap_poll.c: watching for change without SELECT ---- */

/*
 * imap_list_with_status - LIST "" "*" and a STATUS (MESSAGES UIDNEXT
 * UIDVALIDITY, HIGHESTMODSEQ with CONDSTORE) of each of the @n folders
 * @names, pipelined: every command is sent before any reply is read, so
 * the whole costs one round trip where LIST-STATUS is not offered. The
 * list comes back as imap_list's, the folders asked about with
 * has_status (a folder the server refused STATUS for has none).
 */
int imap_list_with_status(struct conn *c, char *const *names, size_t n,
			  struct imap_mailbox **out, size_t *nout);

/* imap_notify_set - NOTIFY SET (RFC 5465): new and expunged messages and
 * flag changes of the selected folder, new and expunged messages of
 * every personal folder, pushed as they happen. Where offered only. */
int imap_notify_set(struct conn *c);

/*
 * imap_idle_begin - send IDLE (RFC 2177) and wait for its "+". Anything
 * the server pushed before the "+" sets *@missed (what it said is not
 * kept: the caller looks again). IMAP_FOLDER_BAD if the server refused.
 */
int imap_idle_begin(struct conn *c, bool *missed);

/*
 * imap_idle_wait - wait, in IDLE, until the server sends something
 * (returns 1), @wake_fd becomes readable or @ms pass (0). This wait
 * has no read deadline: a quiet server is not a dead one.
 */
int imap_idle_wait(struct conn *c, int wake_fd, long long ms);

/* what the server pushed during one IDLE */
struct imap_push {
	bool selected; /* the selected folder changed (EXPUNGE, FETCH,
			  VANISHED) */
	bool has_exists; /* an EXISTS came for it: its count is @exists */
	uint32_t exists;
	char **folders; /* owned: other folders (NOTIFY's STATUS), raw */
	size_t nfolders;
};
void imap_push_release(struct imap_push *p);

/* imap_idle_end - send DONE and read everything up to IDLE's tagged
 * reply, collecting what was pushed into @p. */
int imap_idle_end(struct conn *c, struct imap_push *p);

/* ---- utf7.c: RFC 3501 §5.1.3 modified UTF-7 mailbox names ---- */

/* utf7_decode - UTF-8 of modified-UTF-7 @s, malloc'ed; NULL if @s is not
 * valid modified UTF-7 (the caller then shows the raw name). */
char *utf7_decode(const char *s);
/* utf7_encode - modified UTF-7 of UTF-8 @s, malloc'ed; NULL if @s is not
 * valid UTF-8. */
char *utf7_encode(const char *s);

/* ---- mime.c: header fields and RFC 2047 encoded words ---- */

struct mime_fields {
	char *message_id; /* owned, NULL if absent: first <...> token */
	char *subject; /* owned, NULL if absent: unfolded, decoded UTF-8 */
	char *from; /* owned, NULL if absent: unfolded, decoded UTF-8 */
	char *references; /* owned, NULL if absent: unfolded raw value */
	char *in_reply_to; /* owned, NULL if absent: unfolded raw value */
	int64_t date; /* Date: as Unix time, 0 if absent or unreadable */
	int date_zone; /* its zone, minutes east of UTC */
};

/*
 * mime_parse_fields - pick the fields above out of a header block (as
 * BODY[HEADER.FIELDS (...)] returns it: CRLF or LF lines, folded
 * continuation lines, ending at an empty line or at @len). Field names
 * match case-insensitively; the first occurrence wins. Never fails on
 * malformed input: what cannot be parsed is left NULL.
 */
void mime_parse_fields(const char *hdr, size_t len, struct mime_fields *out);

/* mime_unix_time - a date as libetpan's parsers give it (IMAP's
 * INTERNALDATE, RFC 5322's Date:; the zone as +-hhmm) as Unix time,
 * its zone in minutes east of UTC into *@zone */
int64_t mime_unix_time(int year, int month, int day, int hour, int min,
		       int sec, int zone_hhmm, int *zone);
void mime_fields_release(struct mime_fields *f);

/*
 * mime_decode_words - decode RFC 2047 encoded words (B and Q, any charset
 * iconv knows, adjacent encoded words joined without the space between)
 * in @s to UTF-8, malloc'ed. Invalid bytes and undecodable words come out
 * as U+FFFD, so the result is always valid UTF-8.
 */
char *mime_decode_words(const char *s);

/* ---- thread.c: threading messages into conversations (DESIGN §4) ---- */

struct store;
struct store_msg;

/* at most this many header ids of one message are looked at (its
 * Message-ID, In-Reply-To, the first and the last of References), so a
 * hostile header costs a bounded amount of work */
#define THREAD_MAX_IDS 100

/*
 * thread_message - put message @m, just stored by store_msg_put, into its
 * conversation. Only @m->umid, message_id, references and in_reply_to
 * are read; the date, zone and subject the conversation takes come from
 * the stored row. The conversation is the one any of its Message-ID,
 * References and In-Reply-To ids already maps to; a new one if none does;
 * and if they map to several, the lowest-numbered one, with the others
 * merged into it. Every id is then mapped to that conversation. A message
 * that already has a conversation is left alone, so calling it after
 * every store_msg_put (flag updates too) is fine.
 *
 * Runs in the caller's transaction, or in its own if none is open. A
 * failure leaves consistent rows even if the caller commits: the
 * message then has no conversation yet (thread_backlog finds it).
 * Returns 0, -EINVAL for a message without umid, -ENOENT if @m->umid is
 * not in the store, or another -errno from the store. Thread: the one
 * that writes sync state, on its own struct store.
 */
int thread_message(struct store *st, const struct store_msg *m);

/*
 * thread_put - store message @m as store_msg_put does (insert, or update
 * the flags of the row already there; sets @m->umid and @m->conv) and
 * put it into its conversation as thread_message does, in the caller's
 * transaction or in its own if none is open. This is the call for a new
 * message. A failure inside the caller's transaction: roll it back.
 * Returns 0 or -errno from the store.
 */
int thread_put(struct store *st, struct store_msg *m);

/*
 * thread_backlog - thread up to @max messages that have no conversation
 * (left by an older store version or a failed thread_message), oldest
 * umid first; *@done says how many were threaded. Call it in a loop
 * until *@done is 0. Opens its own transaction unless one is open.
 */
int thread_backlog(struct store *st, size_t max, size_t *done);

/* imap_quota_refresh - ask for the quota of INBOX's root and keep it
 * for sync_quota(); on the sync thread, at each @full round and at most
 * every 15 minutes in polls. An imap_grade; a refusal is IMAP_OK (and
 * QUOTA is not asked again). imap_quota.c */
int imap_quota_refresh(struct conn *c, bool full);

#endif
