/*
 * engine.h - the sync engine's own state, private to sync/: the struct
 * behind the public struct sync, the jobs of a refresh round (folder
 * list, refresh and growth of each folder) and the body fetchers.
 */
#ifndef CONVOY_ENGINE_H
#define CONVOY_ENGINE_H

#include <pthread.h>
#include <stdatomic.h>

#include "job.h"
#include "store.h"
#include "sync_i.h"

/* messages per FETCH command and per SQLite transaction at most; a link
 * that keeps dropping makes it smaller (struct sync's batch) */
#define SYNC_BATCH 1000
#define SYNC_BATCH_MIN 10
/* known UIDs whose flags one command fetches, per message of a batch */
#define SYNC_FLAGS_PER_BATCH 5
#define FETCHERS 2

/* a reader waiting for a body: told once, by a fetcher, the reaper or
 * the stop */
struct fetch_waiter {
	sync_fetched_fn *fn;
	void *aux;
	long long joined; /* when it asked */
	int64_t umid; /* for the reaper's log line */
	struct fetch_waiter *next;
};

/* a body asked for by readers; queued first come, first served */
struct fetch_req {
	int64_t umid;
	bool taken; /* a fetcher is working on it */
	struct fetch_waiter *waiters;
	/* when it was asked for, then when its bytes last came: its
	 * waiters give up (EIO) a timeout after it */
	long long progress_ms;
	struct fetch_req *next;
};

/* CONN_NONE: never connected yet (a fetcher before its first read) */
enum conn_state { CONN_NONE, CONN_OFFLINE, CONN_CONNECTING, CONN_ONLINE };

struct fetcher {
	struct sync *s;
	pthread_t thread;
	struct conn *conn; /* owned by this fetcher's thread */
	struct store *st; /* this thread's store connection */
	enum conn_state state; /* guarded by s->lock */
	unsigned fails; /* connections in a row that failed */
	long long retry_at_ms; /* no new connection before */
};

/* what the prefetcher is doing, for the status file */
enum prefetch_state {
	PREFETCH_WAITING, /* for the first sync */
	PREFETCH_OFF, /* prefetch=none */
	PREFETCH_CONNECTING,
	PREFETCH_RUNNING,
	PREFETCH_FULL, /* paused: the cache holds its share of the budget */
	PREFETCH_OFFLINE, /* the last pass lost its connection */
	PREFETCH_DONE, /* every body it may bring is cached */
};

/* the prefetcher (prefetch.c): its thread owns conn, st and the counters
 * not marked guarded */
struct prefetch {
	struct sync *s;
	pthread_t thread;
	bool started;
	struct conn *conn;
	struct store *st;
	unsigned fails; /* batches in a row that lost the connection */
	long long retry_at_ms;
	size_t batch_max; /* messages per batch now */
	long long counted_ms;
	struct prefetch_mark {
		int64_t folder;
		uint32_t uidvalidity, from;
	} *marks; /* owned */
	size_t nmarks;
	pthread_cond_t wake; /* with s->lock: new mail, or stop */
	/* the keeper: a thread with a store of its own (cst) that keeps
	 * the batch just fetched while the next one comes */
	pthread_t keeper;
	struct store *cst;
	pthread_cond_t kept; /* with s->lock: a job given, taken, or stop */
	struct pf_job *job; /* guarded: the batch given, until kept */
	bool keeping, keeper_stop; /* guarded */
	int keep_rc; /* guarded: the last keep's failure, until drained */
	uint64_t inflight; /* guarded: bytes of the job */
	/* guarded: the cache's bytes as last summed over every body (at
	 * held_at_ms) plus the batches kept since; the sum costs some 60 ms
	 * at a million bodies, more than a batch, so it is made again only
	 * every PF_HELD_MS */
	uint64_t held;
	long long held_at_ms;
	/* guarded by s->lock */
	bool woken;
	enum prefetch_state state;
	uint64_t cached, total; /* bodies cached, messages known */
	uint64_t bytes; /* brought since start */
	uint64_t rate; /* bytes a second, of the last batches */
};

/* how changes on the server reach us */
enum push_mode {
	PUSH_POLL, /* polls alone (no IDLE, or the watcher is away) */
	PUSH_IDLE, /* the watcher is in IDLE on INBOX */
	PUSH_NOTIFY, /* the watcher has NOTIFY on every folder */
};

struct watcher {
	pthread_t thread;
	bool started;
	int wake[2]; /* a pipe: a byte written wakes it from IDLE */
	long long idle_ms; /* longest IDLE before DONE and a new one */
	/* the watcher thread's alone */
	struct conn *conn;
	unsigned fails; /* connections in a row that made no progress */
	bool progress; /* this connection ended an IDLE well */
	uint32_t inbox_exists; /* INBOX's count as last said to it */
	long long retry_at_ms;
	enum push_mode mode; /* guarded by sync's lock */
};

/*
 * A message whose metadata FETCH breaks the connection every time (a
 * server that crashes on it, or says something libetpan cannot parse)
 * would stop its folder for ever. The UIDs of the FETCH that broke are
 * suspects; each retry fetches half of them (refresh.c, grow.c), the
 * half that goes well is cleared, and one UID that breaks the
 * connection twice alone is skipped: the bookmark moves past it, and
 * the store keeps it (also across restarts) until the folder is learned
 * again under a new UIDVALIDITY. One hunt per folder, a
 * few folders at a time.
 */
/* seconds to the next round after one that ran out of disk space */
#define SYNC_RETRY_SOON_S 10

#define SYNC_HUNTS 8
struct sync_hunt {
	int64_t folder; /* 0: no hunt */
	uint32_t lo, hi; /* the suspects; 0, 0: the first look (by
			    sequence number) broke */
	unsigned strikes; /* failures of lo == hi alone */
};

#define SYNC_POISONED_MAX 256
struct sync_poisoned {
	int64_t folder;
	uint32_t uid;
	bool told; /* logged and in the status file */
};

/* a folder to refresh ahead of the rounds: asked for by the user, or
 * pushed by the server through the watcher */
struct asked_folder {
	int64_t id; /* 0: look it up by @name */
	char *name; /* owned: raw server name, or NULL */
	bool grow; /* learn all of its older mail too */
	/* a push that said only the folder's count: that count; else -1 */
	int64_t count;
};

/* what .convoyfs/status says of one folder; guarded by s->lock */
struct folder_note {
	int64_t id;
	uint32_t total; /* messages on the server at the last look */
	bool has_total;
	bool failed;
	char error[160];
	int64_t when; /* Unix time of the failure */
};

/* when the last refresh of a folder that ended well began */
struct refreshed {
	int64_t folder;
	uint64_t began; /* s->refresh_clock */
};

struct sync {
	struct sync_config cfg; /* owned copy */
	struct conn *conn; /* the sync thread's connection; owned */
	struct store *st; /* the sync thread's store connection */
	pthread_t thread;
	bool started;
	struct job_queue *jobs;

	/* the sync thread's alone */
	struct job *round; /* the round running now, or NULL */
	int64_t pass_start; /* highest umid when the round began */
	unsigned batch; /* messages per command now */
	unsigned good_batches; /* in a row since batch last changed */
	unsigned fails; /* connections lost in a row without progress */
	bool progress; /* this connection committed something */
	long long retry_at_ms; /* no new connection before */
	long long next_round_ms;
	bool round_full; /* the round running refreshes every folder */
	bool retry_soon; /* a folder of this round failed for want of
			    local space: the next round comes sooner */
	struct imap_mailbox *listed; /* the last LIST (with LIST-STATUS,
					each folder's status) */
	size_t nlisted;
	bool full_done; /* a full round completed on this connection */
	bool fresh_list; /* sync_new just listed: the first round need not */
	int64_t suspect; /* the folder whose job was running when the
			    connection broke: refreshed last */
	/* ticks at each refresh queued and each refresh begun: a refresh
	 * that began after another was queued and ended well saw all the
	 * other was queued for (sync.c, run_folder) */
	uint64_t refresh_clock;
	struct refreshed *refreshed; /* per folder, the last good one */
	size_t nrefreshed;
	struct job *ops_job; /* the executor queued or running, or NULL */
	struct sync_hunt hunts[SYNC_HUNTS];
	unsigned next_hunt; /* the slot a new hunt takes when all are used */
	struct sync_poisoned poisoned[SYNC_POISONED_MAX];
	size_t npoisoned;

	pthread_mutex_t lock; /* guards everything below */
	pthread_cond_t fetch_wake; /* fetchers: a request or stop */
	pthread_cond_t fetch_done; /* the reaper: stop */
	pthread_t reaper; /* gives readers past their deadline EIO */
	bool reaper_started;
	bool stopping;
	bool refresh_asked;
	enum conn_state conn_state;
	bool syncing; /* a round is running or asked for */
	bool first_sync_done;
	char last_error[256];
	int64_t last_error_when;
	struct folder_note *notes;
	size_t nnotes;
	struct asked_folder *asked; /* for the sync thread to queue */
	size_t nasked;
	bool poll_asked; /* the watcher missed pushes: look at all */
	size_t nfolders; /* selectable folders at the last list */
	struct fetch_req *queue; /* pending and running body requests,
				    oldest first */

	/* the operation log (ops.c) */
	bool ops_asked; /* ops wait: queue the executor */
	long long ops_first_ms; /* when the first op now waiting was kicked */
	long long ops_last_ms; /* when the latest was */
	uint64_t ops_pending; /* for the status file */
	/* writes came since ops_list was made: sync_note_ops remakes it */
	bool ops_stale;
	/* writes since the executor last took what waited */
	uint64_t ops_kicked;
	/* the body cache was put in order (or found so) at this start: an
	 * orderly stop may then say it is (store_clean_stop_mark) */
	bool cache_checked;
	char ops_list[512]; /* the first few, a line each */

	struct fetcher fetchers[FETCHERS];
	struct watcher watch;
	struct prefetch pf;

	sync_changed_fn *changed;
	void *changed_aux;

	atomic_ullong bodies_fetched;
	atomic_ullong bodies_prefetched;
	atomic_ullong headers_fetched;
	atomic_ullong logins;
};

/* report a committed change to fs/ */
void sync_notify(struct sync *s, enum sync_change_kind kind, int64_t folder);
/* report that message @m (as it was) is gone or hidden, after commit */
void sync_notify_gone(struct sync *s, const struct store_msg *m);
/* report the conversations @st's writes changed (store_conv_changes_take),
 * after commit; on the thread that owns @st */
void sync_notify_convs(struct sync *s, struct store *st);
/* remember @msg as the last error for the status file (and log it) */
void sync_set_error(struct sync *s, const char *msg);
/* true once sync_stop began */
bool sync_is_stopping(struct sync *s);
/* the sync thread made progress on this connection (a batch committed) */
void sync_made_progress(struct sync *s);
/* the link dropped during a command: send smaller batches */
void sync_batch_failed(struct sync *s);

/* sync_work_waiting - work for a folder other than @f was asked for or
 * pushed and waits: long work on @f should let it run first */
bool sync_work_waiting(struct sync *s, const struct store_folder *f);

/* sync_push - the server says folder @name (raw) changed: refresh it
 * soon, ahead of the round. @count: when all it said is the folder's
 * message count (an EXISTS), that count, else -1; a refresh is spared
 * when the sync's own last look found that count already. Thread: any
 * (the watcher). */
void sync_push(struct sync *s, const char *name, int64_t count);
/* sync_poll_now - pushes may have been missed: a poll round soon.
 * Thread: any. */
void sync_poll_now(struct sync *s);
/* sync_watched - the watcher reports changes of folder @name now (by
 * NOTIFY), so a poll need not ask about it. Thread: any. */
bool sync_watched(struct sync *s, const char *name);

/* sync_settled - folder @f needs no growth: complete, or complete down
 * to the configured horizon */
bool sync_settled(const struct sync *s, const struct store_folder *f);

/* per-folder notes for the status file */
void sync_note_total(struct sync *s, int64_t folder, uint32_t total);
void sync_note_failed(struct sync *s, int64_t folder, const char *why);
void sync_note_ok(struct sync *s, int64_t folder);
void sync_note_forget(struct sync *s, int64_t folder);

/* backoff before connection number @fails + 1: 2 s doubling to 60 s,
 * with jitter */
long long sync_backoff_ms(unsigned fails);

/*
 * folders.c: LIST into the store; a folder missing from the list is
 * confirmed gone (STATUS) before its rows go, INBOX never goes, and a
 * folder that vanished while one with its UIDVALIDITY appeared was
 * renamed (it keeps its id, so its files keep their inodes). Notifies
 * SYNC_FOLDERS on change. For a @poll without LIST-STATUS, the STATUS
 * of every folder the watcher does not cover is pipelined with the
 * LIST: one round trip. Returns an enum imap_grade or -errno of the
 * store.
 */
int sync_folders(struct sync *s, bool poll);

/*
 * refresh.c: bring what we know of folder @f up to date: EXAMINE, a new
 * UIDVALIDITY (every message orphaned, to be adopted again), new mail
 * by UIDNEXT, flag changes (CHANGEDSINCE, else bounded chunks), and
 * deletions (VANISHED, else UID SEARCH chunks or the flag chunks);
 * the newest batch of a folder never seen. @j may be cancelled.
 * Returns 0, -ECANCELED, -ENOTCONN (the connection broke) or -errno.
 */
int refresh_folder(struct sync *s, struct store_folder *f, struct job *j);

/*
 * refresh.c: isolating a message whose metadata FETCH breaks the
 * connection (struct sync_hunt). sync_poisoned_in - the lowest UID in
 * [@a, @b] of folder @folder skipped for that, or 0 (logged once).
 * sync_hunt_clip - narrow [@a, *@b] (UIDs about to be fetched, low
 * first) to what may be tried now. sync_hunt_cleared - UIDs [@a, @b]
 * of @folder came whole. sync_hunt_broke - a FETCH of UIDs within
 * [@a, @b] of @f broke the connection. sync_hunt_of - the hunt going on
 * in folder @folder, or NULL.
 */
struct sync_hunt *sync_hunt_of(struct sync *s, int64_t folder);
void sync_hunt_first_look(struct sync *s, int64_t folder);
uint32_t sync_poisoned_in(struct sync *s, const struct store_folder *f,
			  uint32_t a, uint32_t b);
void sync_hunt_clip(struct sync *s, int64_t folder, uint32_t a, uint32_t *b);
void sync_hunt_cleared(struct sync *s, int64_t folder, uint32_t a, uint32_t b);
void sync_hunt_broke(struct sync *s, const struct store_folder *f, uint32_t a,
		     uint32_t b);
/* sync_poisoned_load - the messages an earlier run skipped (the store
 * keeps them), said again in the log and the status file */
void sync_poisoned_load(struct sync *s);

/* refresh.c: the messages at sequence numbers [@first, @last] of @f
 * (a folder's newest batch, or grow's next one), written with the
 * bookmark; *@got is how many came back. */
int refresh_seq_batch(struct sync *s, struct store_folder *f, uint32_t first,
		      uint32_t last, uint32_t *got);

/*
 * grow.c: learn older messages of @f, newest first: one step (about a
 * batch of messages) per call, so pushed work can run in between.
 * Stops at the configured horizon unless @to_the_end. Returns 1 when
 * more is left to learn (call again), 0 when the folder is complete (or
 * complete down to the horizon), else as refresh.
 */
int grow_folder(struct sync *s, struct store_folder *f, struct job *j,
		bool to_the_end);

/*
 * batch.c: messages parsed into memory, written in one short
 * transaction with the bookmark that covers them.
 */
struct batch_msg {
	uint32_t uid;
	char *flags;
	bool has_size, has_date;
	uint64_t size;
	int64_t date;
	int zone;
	char *emailid;
	struct mime_fields mf;
};

enum batch_mode {
	BATCH_NEW, /* store (adopting an orphan where one matches) */
	BATCH_FLAGS, /* known messages: their flags */
};

struct batch {
	struct sync *s;
	struct store_folder *f;
	enum batch_mode mode;
	struct batch_msg *v;
	size_t n, cap;
	size_t bytes;
	uint32_t min_uid, max_uid;
	uint32_t skipped_uid; /* lowest UID that came without size or date */
	uint32_t *gone; /* UIDs to orphan (vanished) */
	size_t ngone;
	/* every UID the reply carried, written or not yet (4 bytes each:
	 * a chunk's worth), for telling what is gone */
	uint32_t *seen;
	size_t nseen, capseen;
	int rc; /* first store error */
};

void batch_init(struct batch *b, struct sync *s, struct store_folder *f,
		enum batch_mode mode);
void batch_release(struct batch *b);
/* the imap_fetch callback: one message into the batch */
int batch_take(const struct imap_msg *m, void *ctx);
/* note UID @uid of the folder as gone from the server */
void batch_gone(struct batch *b, uint32_t uid);
/* true when the batch should be written before more is read */
bool batch_full(const struct batch *b);
/*
 * batch_write - write what the batch holds in one transaction and, if
 * @bookmark, the folder's bookmark (@b->f's uidvalidity, uidnext,
 * low_uid, highestmodseq) with it; then empty it. Rolls back on any
 * error. Tells fs/ what changed after the commit.
 */
int batch_write(struct batch *b, bool bookmark);
/* batch_save_bookmark - write @f's bookmark alone, in a transaction */
int batch_save_bookmark(struct sync *s, struct store_folder *f);

/* sync_grade_errno - an imap_grade as the -errno a job returns: 0,
 * -ECANCELED, -ENOTCONN (the connection broke) or -EREMOTE (the server
 * refused, for this folder) */
int sync_grade_errno(int grade);

/*
 * ops.c: the operation log's executor. ops_kick - an op was recorded:
 * have the sync thread run it (any thread). The status file's list of
 * waiting ops is remade when it is next read, not here: each rename of
 * an mv of a thousand files counted the whole log again. ops_run - the
 * job that runs every op waiting, oldest first, on the sync thread's
 * connection (@arg: the sync).
 */
void ops_kick(struct sync *s);
/* ops_wait_ms - with s->lock held: -1 if no op waits, else how long
 * before the executor should run them (0: now) */
long long ops_wait_ms(struct sync *s);
int ops_run(struct job *j, void *arg);

/* writes.c: whether folder @name is @parent or below it (delimiter @d) */
bool folder_is_under(const char *name, const char *parent, char d);

/* watch.c: the watcher thread and its connection */
int watch_start(struct sync *s);
void watch_stop(struct sync *s);

/* fetch.c: body fetchers */
int fetch_start(struct sync *s);
void fetch_stop(struct sync *s);

/* prefetch.c: the prefetcher's thread (none with prefetch=none); wake it
 * when new mail was learned */
int prefetch_start(struct sync *s);
void prefetch_stop(struct sync *s);
void prefetch_wake(struct sync *s);
const char *prefetch_state_name(enum prefetch_state st);

#endif
