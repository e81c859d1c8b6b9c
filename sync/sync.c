/*
 * sync.c - the sync thread: owns the main connection, keeps the folder
 * list and every folder's metadata in step with the server, reconnects
 * with backoff when the connection is lost, and polls.
 */
#define LOG_CAT "sync"
#include "engine.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"

static char *dup_or_null(const char *s)
{
	return s ? xstrdup(s) : NULL;
}

int sync_new(const struct sync_config *cfg, struct sync **out, char *err,
	     size_t errlen)
{
	struct sync *s = xcalloc(1, sizeof(*s));
	int rc;

	s->cfg.user = xstrdup(cfg->user);
	s->cfg.password = xstrdup(cfg->password);
	s->cfg.host = xstrdup(cfg->host);
	s->cfg.port = xstrdup(cfg->port);
	s->cfg.starttls = cfg->starttls;
	s->cfg.auth_plain = cfg->auth_plain;
	s->cfg.cafile = dup_or_null(cfg->cafile);
	s->cfg.cache_dir = xstrdup(cfg->cache_dir);
	s->cfg.poll_interval = cfg->poll_interval ? cfg->poll_interval : 60;
	s->cfg.timeout = cfg->timeout ? cfg->timeout : 30;
	s->cfg.cache_budget = cfg->cache_budget;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->wake, NULL);
	pthread_cond_init(&s->fetch_wake, NULL);
	pthread_cond_init(&s->fetch_done, NULL);

	rc = conn_open(&s->cfg, &s->conn, err, errlen);
	if (rc)
		goto fail;
	/* open once to report a bad cache directory now (and migrate);
	 * the sync thread opens its own after the fork of daemonizing, as
	 * SQLite connections must not cross a fork */
	rc = store_open(s->cfg.cache_dir, &s->st);
	if (rc) {
		snprintf(err, errlen, "cannot open the store in %s: %s",
			 s->cfg.cache_dir, strerror(-rc));
		goto fail;
	}
	/* the folder list is one round trip: have it before the mount
	 * appears, so the tree is there at once on a first mount */
	rc = sync_folders(s);
	if (rc)
		log_warn("cannot list folders yet: %s", strerror(-rc));
	store_close(s->st);
	s->st = NULL;
	s->online = true;
	*out = s;
	return 0;
fail:
	sync_free(s);
	return rc;
}

void sync_set_changed(struct sync *s, sync_changed_fn *fn, void *aux)
{
	s->changed = fn;
	s->changed_aux = aux;
}

void sync_notify(struct sync *s, enum sync_change_kind kind, int64_t folder)
{
	struct sync_change c = { .kind = kind, .folder = folder };

	if (s->changed)
		s->changed(&c, s->changed_aux);
}

void sync_notify_gone(struct sync *s, const struct store_msg *m)
{
	struct sync_change c = { .kind = SYNC_MESSAGE_GONE,
				 .folder = m->folder,
				 .msg = m };

	if (s->changed)
		s->changed(&c, s->changed_aux);
}

void sync_set_error(struct sync *s, const char *msg)
{
	pthread_mutex_lock(&s->lock);
	snprintf(s->last_error, sizeof(s->last_error), "%s", msg);
	pthread_mutex_unlock(&s->lock);
}

bool sync_is_stopping(struct sync *s)
{
	bool r;

	pthread_mutex_lock(&s->lock);
	r = s->stopping;
	pthread_mutex_unlock(&s->lock);
	return r;
}

static void set_state(struct sync *s, bool online, bool syncing)
{
	pthread_mutex_lock(&s->lock);
	s->online = online;
	s->syncing = syncing;
	pthread_mutex_unlock(&s->lock);
}

/* sleep up to @ms, or less when stopping or a refresh is asked;
 * returns false when stopping */
static bool wait_for(struct sync *s, long long ms)
{
	struct timespec ts;
	bool go;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&s->lock);
	while (!s->stopping && !s->refresh_asked)
		if (pthread_cond_timedwait(&s->wake, &s->lock, &ts))
			break;
	s->refresh_asked = false;
	go = !s->stopping;
	pthread_mutex_unlock(&s->lock);
	return go;
}

static void drop_conn(struct sync *s)
{
	conn_close(s->conn);
	s->conn = NULL;
	set_state(s, false, false);
}

/* connect again with exponential backoff and jitter; false if stopping */
static bool reconnect(struct sync *s)
{
	long long delay = 1000;

	while (!sync_is_stopping(s)) {
		char err[256];
		int rc = conn_open(&s->cfg, &s->conn, err, sizeof(err));

		if (!rc) {
			log_info("connected again");
			set_state(s, true, false);
			return true;
		}
		sync_set_error(s, err);
		log_warn("%s; retrying in %lld s", err, delay / 1000);
		if (!wait_for(s, delay + rand() % (delay / 4 + 1)))
			return false;
		if (delay < 60000)
			delay *= 2;
	}
	return false;
}

/* INBOX first: the newest mail of the inbox is what people look for */
static int folder_order(struct sync *s, int64_t **ids, size_t *n)
{
	struct store_folder *f = NULL;
	size_t nf = 0, k = 0;
	int rc = store_folder_list(s->st, &f, &nf);

	if (rc)
		return rc;
	*ids = xcalloc(nf ? nf : 1, sizeof(int64_t));
	for (size_t i = 0; i < nf; i++)
		if (!strcasecmp(f[i].name, "INBOX"))
			(*ids)[k++] = f[i].id;
	for (size_t i = 0; i < nf; i++)
		if (strcasecmp(f[i].name, "INBOX"))
			(*ids)[k++] = f[i].id;
	*n = k;
	store_folder_list_free(f, nf);
	return 0;
}

/*
 * one round: the folder list, then every folder's new mail (and the
 * newest batch of folders never seen), then older mail of every folder
 * until complete. A folder that fails is logged and the others go on;
 * a lost connection ends the round.
 */
static int sync_round(struct sync *s)
{
	int64_t *ids = NULL;
	size_t n = 0;
	int rc;

	rc = sync_folders(s);
	if (rc)
		return rc;
	rc = folder_order(s, &ids, &n);
	if (rc)
		return rc;
	for (int pass = 0; pass < 2 && !rc; pass++) {
		for (size_t i = 0; i < n && !sync_is_stopping(s); i++) {
			rc = sync_folder(s, ids[i], pass == 1);
			if (rc && conn_is_broken(s->conn))
				break;
			if (rc) {
				char msg[128];

				snprintf(msg, sizeof(msg),
					 "cannot sync folder %lld: %s",
					 (long long)ids[i], strerror(-rc));
				sync_set_error(s, msg);
				rc = 0;
			}
		}
	}
	free(ids);
	return rc;
}

/* messages without a conversation: from an older store, or a threading
 * that failed; a message fails alone, so stop when a round makes none */
static void thread_leftovers(struct sync *s)
{
	size_t done;

	do {
		if (thread_backlog(s->st, SYNC_BATCH, &done))
			break;
		if (done)
			sync_notify(s, SYNC_MESSAGES, 0);
	} while (done && !sync_is_stopping(s));
}

static void *sync_main(void *arg)
{
	struct sync *s = arg;

	thread_leftovers(s);

	while (!sync_is_stopping(s)) {
		int rc;

		if (!s->conn && !reconnect(s))
			break;
		set_state(s, true, true);
		rc = sync_round(s);
		if (rc && s->conn && conn_is_broken(s->conn)) {
			sync_set_error(s, "connection lost during sync");
			drop_conn(s);
			continue;
		}
		pthread_mutex_lock(&s->lock);
		if (!s->refresh_asked)
			s->syncing = false;
		if (!rc)
			s->first_sync_done = true;
		pthread_mutex_unlock(&s->lock);
		if (!wait_for(s, (long long)s->cfg.poll_interval * 1000))
			break;
	}
	return NULL;
}

int sync_start(struct sync *s)
{
	int rc;

	rc = store_open(s->cfg.cache_dir, &s->st);
	if (rc)
		return rc;
	rc = fetch_start(s);
	if (rc)
		return rc;
	rc = pthread_create(&s->thread, NULL, sync_main, s);
	if (rc) {
		fetch_stop(s);
		return -rc;
	}
	s->started = true;
	return 0;
}

void sync_stop(struct sync *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->stopping = true;
	pthread_cond_broadcast(&s->wake);
	pthread_cond_broadcast(&s->fetch_wake);
	pthread_cond_broadcast(&s->fetch_done);
	pthread_mutex_unlock(&s->lock);
	if (s->started) {
		pthread_join(s->thread, NULL);
		s->started = false;
	}
	fetch_stop(s);
	conn_close(s->conn);
	s->conn = NULL;
}

void sync_free(struct sync *s)
{
	if (!s)
		return;
	sync_stop(s);
	store_close(s->st);
	sync_config_release(&s->cfg);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->wake);
	pthread_cond_destroy(&s->fetch_wake);
	pthread_cond_destroy(&s->fetch_done);
	free(s);
}

void sync_request_refresh(struct sync *s)
{
	pthread_mutex_lock(&s->lock);
	s->refresh_asked = true;
	/* status shows the round as begun at once, so a caller that waits
	 * for "idle" after asking waits for this round */
	s->syncing = true;
	pthread_cond_broadcast(&s->wake);
	pthread_mutex_unlock(&s->lock);
}

uint64_t sync_fetch_count(struct sync *s)
{
	return atomic_load(&s->bodies_fetched);
}

void sync_status(struct sync *s, char **text)
{
	char *out;
	bool online, syncing, done;
	char err[256];

	pthread_mutex_lock(&s->lock);
	online = s->online;
	syncing = s->syncing;
	done = s->first_sync_done;
	snprintf(err, sizeof(err), "%s", s->last_error);
	pthread_mutex_unlock(&s->lock);

	out = xasprintf("account: %s@%s:%s\n"
			"connection: %s\n"
			"state: %s\n"
			"headers fetched: %llu\n"
			"bodies fetched: %llu\n"
			"last error: %s\n",
			s->cfg.user, s->cfg.host, s->cfg.port,
			online ? "online" : "offline",
			syncing || !done ? "syncing" : "idle",
			(unsigned long long)atomic_load(&s->headers_fetched),
			(unsigned long long)atomic_load(&s->bodies_fetched),
			err[0] ? err : "none");
	*text = out;
}
