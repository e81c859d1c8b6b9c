/*
 * engine.h - the sync engine's own state, private to sync/: the struct
 * behind the public struct sync, the folder list sync, the message
 * metadata sync and the body fetchers.
 */
#ifndef CONVOY_ENGINE_H
#define CONVOY_ENGINE_H

#include <pthread.h>
#include <stdatomic.h>

#include "store.h"
#include "sync_i.h"

/* messages per FETCH command and per SQLite transaction of the first sync */
#define SYNC_BATCH 1000
#define FETCHERS 2

struct fetch_req {
	int64_t umid;
	int rc; /* valid once done */
	bool done;
	bool taken; /* a fetcher is working on it */
	unsigned waiters;
	struct fetch_req *next;
};

struct fetcher {
	struct sync *s;
	pthread_t thread;
	struct conn *conn; /* owned by this fetcher's thread */
	struct store *st; /* this thread's store connection */
};

struct sync {
	struct sync_config cfg; /* owned copy */
	struct conn *conn; /* the sync thread's connection; owned */
	struct store *st; /* the sync thread's store connection */
	pthread_t thread;
	bool started;

	pthread_mutex_t lock; /* guards everything below */
	pthread_cond_t wake; /* sync thread: stop or refresh asked */
	pthread_cond_t fetch_wake; /* fetchers: a request or stop */
	pthread_cond_t fetch_done; /* waiters: a request finished */
	bool stopping;
	bool refresh_asked;
	bool online;
	bool syncing; /* the first sync or a refresh is running */
	bool first_sync_done;
	char last_error[256];
	struct fetch_req *queue; /* pending and running body requests */
	long long fetch_progress_ms; /* last time any fetcher made progress */

	struct fetcher fetchers[FETCHERS];

	sync_changed_fn *changed;
	void *changed_aux;

	atomic_ullong bodies_fetched;
	atomic_ullong headers_fetched;
};

/* report a committed change to fs/ */
void sync_notify(struct sync *s, enum sync_change_kind kind, int64_t folder);
/* report that message @m (as it was) is gone or hidden, after commit */
void sync_notify_gone(struct sync *s, const struct store_msg *m);
/* remember @msg as the last error for the status file (and log it) */
void sync_set_error(struct sync *s, const char *msg);
/* true once sync_stop began */
bool sync_is_stopping(struct sync *s);

/* folders.c: LIST into the store; notifies SYNC_FOLDERS on change */
int sync_folders(struct sync *s);

/*
 * messages.c: bring the metadata of folder @id up to date. With @grow,
 * also learn older messages until the folder is complete (newest first);
 * without it, only new mail, flag changes and deletions, plus the newest
 * batch of a folder never seen before.
 */
int sync_folder(struct sync *s, int64_t id, bool grow);

/* fetch.c: body fetchers */
int fetch_start(struct sync *s);
void fetch_stop(struct sync *s);

#endif
