/*
 * imap_i.h - shared by the files of the IMAP layer (imap.c, imap_poll.c,
 * imap_bodies.c)
 * and by nothing else: the checks of libetpan's builders, libetpan's
 * lower-level senders and parser, and the helpers for commands libetpan
 * has no builder for.
 */
#ifndef CONVOY_IMAP_I_H
#define CONVOY_IMAP_I_H

#include <libetpan/libetpan.h>

#include "common.h"
#include "sync_i.h"

/*
 * imap_must - @p, the result of a libetpan builder (mailimap_*_new*,
 * clist_new, ...), or abort as the xmalloc family does when it is NULL.
 * A builder returns NULL only when an allocation failed, and a NULL
 * handed on to the next builder or command is dereferenced inside
 * libetpan. Aborting also settles ownership on failure: what a failed
 * builder was given is not taken, and never needs freeing.
 */
static inline void *imap_must(void *p)
{
	if (!p)
		xoom();
	return p;
}

/*
 * imap_must_ok - the same for the builders that return an int
 * (clist_append, mailimap_*_add*): 0 (MAILIMAP_NO_ERROR), or -1 or
 * MAILIMAP_ERROR_MEMORY when an allocation failed, the item not taken.
 */
static inline void imap_must_ok(int r)
{
	if (r)
		xoom();
}

/* imap_fetch_add - @att (a builder's result, checked here) added to
 * fetch type @ft, which takes it */
static inline void imap_fetch_add(struct mailimap_fetch_type *ft,
				  struct mailimap_fetch_att *att)
{
	imap_must_ok(
		mailimap_fetch_type_new_fetch_att_list_add(ft, imap_must(att)));
}

/* imap_search_add - @key (a builder's result, checked here) added to
 * the AND of search key @keys, which takes it */
static inline void imap_search_add(struct mailimap_search_key *keys,
				   struct mailimap_search_key *key)
{
	imap_must_ok(mailimap_search_key_multiple_add(keys, imap_must(key)));
}

/* exported by libetpan.so, declared in headers it does not install */
int mailimap_token_send(mailstream *fd, const char *token);
int mailimap_space_send(mailstream *fd);
int mailimap_crlf_send(mailstream *fd);
int mailimap_mailbox_send(mailstream *fd, const char *mb);
int mailimap_response_parse(mailstream *fd, MMAPString *buf,
			    struct mailimap_parser_context *ctx, size_t *indx,
			    struct mailimap_response **result,
			    size_t progr_rate, progress_function *progr_fun);

/*
 * imap_raw_send - send "<tag> @verb @mailbox @rest" (the mailbox quoted
 * as libetpan quotes; NULL parts left out), flush, and read the first
 * line of the reply into the session's buffer. A libetpan code.
 */
int imap_raw_send(struct conn *c, const char *verb, const char *mailbox,
		  const char *rest);

/*
 * imap_raw - as imap_raw_send, then the whole reply parsed into the
 * session as for a built-in command (untagged data into
 * imap_response_info, the text into imap_response). Only for commands
 * whose every reply line libetpan (with our parsers) can read. A
 * libetpan code: 0, or MAILIMAP_ERROR_EXTENSION for NO.
 */
int imap_raw(struct conn *c, const char *verb, const char *mailbox,
	     const char *rest);

/* imap_grade - a libetpan code of a command on @c as an imap_grade,
 * logging @what with the server's text */
int imap_grade(struct conn *c, int rc, const char *what);

/*
 * imap_reply_tree - one reply, tagged @tag, already begun in the
 * session's buffer (after mailimap_read_line), parsed into a tree; the
 * session's own state is left alone. A libetpan code; *@ok says whether
 * the tagged reply was OK. A tag that is not @tag (BYE, or a reply to
 * something we did not send) means the session is lost.
 */
int imap_reply_tree(struct conn *c, int tag, struct mailimap_response **out,
		    bool *ok);

/* imap_no_progress - a progress callback that does nothing: libetpan
 * calls a message handler only while one is set */
void imap_no_progress(size_t current, size_t maximum, void *ctx);

/* imap_set_of - the @n ranges @v as a libetpan set */
struct mailimap_set *imap_set_of(const struct imap_uid_range *v, size_t n);

/* imap_in_ranges - whether @u is in the @n ascending ranges @v */
bool imap_in_ranges(const struct imap_uid_range *v, size_t n, uint32_t u);

/* imap_read_status - the items of a STATUS reply into @out */
void imap_read_status(clist *info, struct imap_box *out);

/* imap_collect_list - the LIST lines of reply @rsp appended to *@v (*@k
 * of *@cap used, grown as needed; duplicates, empty names and names cut
 * by a NUL byte dropped: @c's buffer must still hold the reply), then
 * each STATUS line of the reply given to its listed folder (has_status) */
void imap_collect_list(struct conn *c, struct mailimap_response *rsp,
		       struct imap_mailbox **v, size_t *k, size_t *cap);

/*
 * imap_oauth - AUTHENTICATE XOAUTH2, or OAUTHBEARER (RFC 7628) when
 * @bearer, as @user with the bearer @token (@host and @port go into an
 * OAUTHBEARER response), the response sent as an initial response where
 * the server says SASL-IR. The response goes to the logger as private
 * data. Returns a libetpan code: 0 (the session is then authenticated),
 * MAILIMAP_ERROR_LOGIN when the server refused (its text in
 * imap_response; the status and scope of its error challenge, if it
 * sent one, in @why, else @why is ""), or a stream or parse error.
 */
int imap_oauth(mailimap *imap, bool bearer, const char *user,
	       const char *token, const char *host, const char *port,
	       char *why, size_t whylen);

#endif
