/*
 * sync.h - the public surface of sync/: the connections to the server, the
 * sync thread that keeps the store in step with it, and bodies on demand.
 * fs/ calls only these; sync/ never calls up into fs/.
 */
#ifndef CONVOY_SYNC_H
#define CONVOY_SYNC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store;

struct sync_config {
	char *user; /* owned */
	char *password; /* owned; wiped by sync_config_release; the token
			   for XOAUTH2 and OAUTHBEARER */
	char *host; /* owned */
	char *port; /* owned: "993" for imaps, "143" for imap */
	bool starttls; /* imap:// : STARTTLS required before LOGIN */
	/* how to log in: LOGIN, AUTHENTICATE PLAIN, or AUTHENTICATE
	 * XOAUTH2 / OAUTHBEARER with password as the bearer token */
	enum sync_auth {
		SYNC_AUTH_LOGIN,
		SYNC_AUTH_PLAIN,
		SYNC_AUTH_XOAUTH2,
		SYNC_AUTH_OAUTHBEARER,
	} auth;
	/* when set, run before each XOAUTH2 / OAUTHBEARER login for a token
	 * of the moment (password_command again): access tokens expire
	 * within the hour, and a mount outlives them. Returns 0 and the
	 * token in *@out (the caller wipes and frees it), or -errno with
	 * one line in @err. Called from any thread that connects. */
	int (*token_again)(void *aux, char **out, char *err, size_t errlen);
	void *token_aux;
	char *cafile; /* owned, may be NULL: trust these CAs instead */
	char *cache_dir; /* owned: the store's directory */
	unsigned poll_interval; /* seconds between checks of every folder */
	unsigned timeout; /* seconds any network wait may take */
	uint64_t cache_budget; /* bytes of cached bodies to keep */
	/* mail older than this (Unix time; 0: none) is learned only when
	 * asked with sync_request_folder(..., true) */
	int64_t horizon;
	/* bodies brought in the background after the first sync, within
	 * cache_budget: PREFETCH_ALL, PREFETCH_RECENT (of the last
	 * prefetch_days days) or PREFETCH_NONE (on demand only) */
	enum { PREFETCH_ALL, PREFETCH_RECENT, PREFETCH_NONE } prefetch;
	unsigned prefetch_days;
	bool no_compress; /* never COMPRESS=DEFLATE, even where offered */
};

void sync_config_release(struct sync_config *cfg);

/* What a committed sync step changed, for fs/ to invalidate the kernel's
 * caches. Delivered on the sync thread (SYNC_MESSAGE_SIZE: on a fetcher,
 * before the read that waits for the body is answered): queue it or
 * act at once, never block. */
enum sync_change_kind {
	SYNC_FOLDERS, /* the folder list changed */
	SYNC_MESSAGES, /* messages of @folder were added or changed */
	SYNC_MESSAGE_GONE, /* @msg was expunged or flagged \Deleted */
	SYNC_MESSAGE_SIZE, /* @msg's body was fetched and its length is
			      not what RFC822.SIZE said */
	SYNC_CONVERSATION, /* messages entered @conv, or it was merged into
			      another: its listing changed, and maybe its
			      name (or it is gone) */
};
struct store_msg;
struct store_conv;
struct sync_change {
	enum sync_change_kind kind;
	int64_t folder; /* SYNC_MESSAGES, SYNC_MESSAGE_GONE */
	const struct store_msg *msg; /* SYNC_MESSAGE_GONE: as it was;
					SYNC_MESSAGE_SIZE: the message;
					borrowed */
	const struct store_conv *conv; /* SYNC_CONVERSATION: as it was
					  before (count 0: it had no
					  name); borrowed */
};
typedef void sync_changed_fn(const struct sync_change *c, void *aux);

struct sync;

/*
 * sync_new - connect and log in once, so that a bad password, certificate,
 * host name or an unreachable server is reported before the mount appears.
 *
 * Returns 0 and *@out, or -errno with one clear line in @err:
 * -EHOSTUNREACH / -ECONNREFUSED / -ETIMEDOUT: server unreachable;
 * -EPROTO: TLS or certificate; -EACCES: login refused; -EINVAL: bad input.
 * No thread is started yet (so the caller may fork to daemonize).
 */
int sync_new(const struct sync_config *cfg, struct sync **out, char *err,
	     size_t errlen);

/* sync_set_changed - register the callback for committed changes. */
void sync_set_changed(struct sync *s, sync_changed_fn *fn, void *aux);

/* sync_start - start the sync thread and the fetchers. */
int sync_start(struct sync *s);

/*
 * sync_stop - stop every thread and close every connection. Waits until
 * they really stopped. Calling it twice is harmless.
 */
void sync_stop(struct sync *s);
void sync_free(struct sync *s);

/*
 * sync_fetch_body - ask for the body of @umid in the body cache: it is
 * fetched on a fetcher connection, requests served first come, first
 * served, and @fn(rc, @aux) is called once, on a fetcher's or the
 * sync's own thread, with 0 (cached), -ENOENT (the message is gone from
 * the server), -ENOSPC (the cache's disk is full), -EIO (network
 * failure, or no progress for the configured timeout since the call)
 * or -ESHUTDOWN. @fn must not block for long; it may reply to FUSE.
 * Returns 0, or -ESHUTDOWN (stopping: @fn is not called). No thread
 * waits meanwhile, so readers of uncached mail never hold the FUSE
 * workers that listings need. Thread: any.
 */
typedef void sync_fetched_fn(int rc, void *aux);
int sync_fetch_body(struct sync *s, int64_t umid, sync_fetched_fn *fn,
		    void *aux);

/* what the sync knows of one folder, for .convoyfs/status */
struct sync_folder_status {
	uint32_t total; /* messages on the server at the last look */
	bool has_total;
	bool failed; /* the last refresh or growth failed: */
	char error[160]; /* why */
	int64_t when; /* and when (Unix time) */
};

/* sync_folder_status - what the sync knows of folder @folder; -ENOENT
 * before it was first looked at. Thread: any. */
int sync_folder_status(struct sync *s, int64_t folder,
		       struct sync_folder_status *out);

/* sync_horizon - the configured horizon (Unix time), 0 for none */
int64_t sync_horizon(const struct sync *s);

/* sync_request_refresh - ask for a refresh of every folder now. */
void sync_request_refresh(struct sync *s);

/*
 * sync_request_folder - ask for a refresh of folder @folder (a store
 * folder id) now, ahead of other queued work; with @grow, for learning
 * all of its older mail too, past the horizon. Thread: any.
 */
void sync_request_folder(struct sync *s, int64_t folder, bool grow);

/*
 * sync_status - a human-readable report (connection state, per-folder
 * progress, last error), malloc'ed into *@text.
 */
void sync_status(struct sync *s, char **text);
/*
 * sync_note_ops - remake, through @st, the list of waiting writes that
 * sync_status() shows, if writes came since it was made. Thread: any
 * (the one that reads the status, before sync_status()).
 */
void sync_note_ops(struct sync *s, struct store *st);

/*
 * Writes (DESIGN §6). Each applies the change to the store through @st
 * (the caller's connection) and records it in the operation log in one
 * transaction, so the tree shows it when the call returns and a crash
 * loses nothing; the sync thread then runs it on the server, in order.
 * Returns 0 or -errno: -ENOENT (no such message or folder), -EINVAL (a
 * name or flag the server could not take), -EEXIST, -ENOTEMPTY, -EPERM
 * (no meaning here: logged), or the store's error. Thread: any.
 *
 * sync_move - show message @umid in folder @folder: UID MOVE (or COPY,
 * STORE \Deleted and UID EXPUNGE) there.
 */
int sync_move(struct sync *s, struct store *st, int64_t umid, int64_t folder);
/* sync_remove - move @umid to the Trash folder (SPECIAL-USE \Trash, else
 * one named Trash; -EPERM if none); inside Trash, expunge it. */
int sync_remove(struct sync *s, struct store *st, int64_t umid);
/* sync_set_flags - @umid's flags become the space-separated @flags;
 * the server gets the difference as +FLAGS and -FLAGS. */
int sync_set_flags(struct sync *s, struct store *st, int64_t umid,
		   const char *flags);
/* sync_mkdir - a folder @name (UTF-8, one path component) under folder
 * @parent (0: the top); its id in *@folder. */
int sync_mkdir(struct sync *s, struct store *st, int64_t parent,
	       const char *name, int64_t *folder);
/* sync_rmdir - delete folder @folder, which must show no message and
 * have no folder under it. */
int sync_rmdir(struct sync *s, struct store *st, int64_t folder);
/* sync_rename_folder - folder @folder (and those under it) becomes
 * @name under @parent (0: the top). */
int sync_rename_folder(struct sync *s, struct store *st, int64_t folder,
		       int64_t parent, const char *name);

/*
 * sync_append - the file @fd (read from offset 0) is a new message for
 * folder @folder, dated @date (INTERNALDATE, Unix time; 0: its Date:
 * header's, else now): checked (a
 * header block, then an empty line, no NUL: else -EINVAL and nothing
 * is kept), copied with CRLF line ends to the staging directory, shown
 * at once as message *@umid (its body cached) and APPENDed later.
 */
int sync_append(struct sync *s, struct store *st, int64_t folder, int fd,
		int64_t date, int64_t *umid);

/* sync_fetch_count - how many bodies were fetched from the server since
 * start (for .convoyfs/status and tests). */
uint64_t sync_fetch_count(struct sync *s);

/*
 * sync_quota - the account's storage quota as the server said at the
 * last round (RFC 9208 STORAGE of INBOX's quota root), in bytes, for
 * statfs. Returns 0, or -ENOENT when the server offers no QUOTA or sets
 * no limit. Never waits. Thread: any. (sync/imap_quota.c)
 */
int sync_quota(struct sync *s, uint64_t *used, uint64_t *limit);

#endif
