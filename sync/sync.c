/*
 * sync.c - the sync thread: owns the main connection and runs the job
 * queue. A round is a job tree: the folder list, whose children are a
 * refresh of every folder (INBOX first), whose children grow folders
 * not yet complete. A lost connection cancels the round, is made again
 * after a backoff that grows while connections make no progress, and a
 * new round catches up. Between rounds the connection is watched, so a
 * server that went away is noticed within a second or two.
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

	imap_init();
	s->cfg.user = xstrdup(cfg->user);
	s->cfg.password = xstrdup(cfg->password);
	s->cfg.host = xstrdup(cfg->host);
	s->cfg.port = xstrdup(cfg->port);
	s->cfg.starttls = cfg->starttls;
	s->cfg.auth = cfg->auth;
	s->cfg.token_again = cfg->token_again;
	s->cfg.token_aux = cfg->token_aux;
	s->cfg.cafile = dup_or_null(cfg->cafile);
	s->cfg.cache_dir = xstrdup(cfg->cache_dir);
	s->cfg.poll_interval = cfg->poll_interval ? cfg->poll_interval : 60;
	s->cfg.timeout = cfg->timeout ? cfg->timeout : 30;
	s->cfg.cache_budget = cfg->cache_budget;
	s->cfg.horizon = cfg->horizon;
	s->cfg.prefetch = cfg->prefetch;
	s->cfg.prefetch_days = cfg->prefetch_days;
	s->cfg.no_compress = cfg->no_compress;
	s->batch = SYNC_BATCH;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->fetch_wake, NULL);
	pthread_cond_init(&s->pf.wake, NULL);
	pthread_cond_init(&s->pf.kept, NULL);
	pthread_cond_init(&s->fetch_done, NULL);
	s->jobs = jobq_new();

	rc = conn_open(&s->cfg, &s->conn, err, errlen);
	if (rc)
		goto fail;
	atomic_fetch_add(&s->logins, 1);
	if (imap_prepare(s->conn) == IMAP_CONN_BAD) {
		snprintf(err, errlen, "connection to %s lost after login",
			 s->cfg.host);
		rc = -EIO;
		goto fail;
	}
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
	rc = sync_folders(s, false);
	if (rc)
		log_warn("cannot list folders yet: %s", strerror(-rc));
	s->fresh_list = !rc;
	store_close(s->st);
	s->st = NULL;
	s->conn_state = CONN_ONLINE;
	s->syncing = true;
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
	/* new mail: bodies to bring */
	if (kind == SYNC_MESSAGES)
		prefetch_wake(s);
}

void sync_notify_gone(struct sync *s, const struct store_msg *m)
{
	struct sync_change c = { .kind = SYNC_MESSAGE_GONE,
				 .folder = m->folder,
				 .msg = m };

	if (s->changed)
		s->changed(&c, s->changed_aux);
}

void sync_notify_convs(struct sync *s, struct store *st)
{
	struct store_conv *v;
	size_t n;

	store_conv_changes_take(st, &v, &n);
	for (size_t i = 0; i < n; i++) {
		struct sync_change c = { .kind = SYNC_CONVERSATION,
					 .conv = &v[i] };

		if (s->changed)
			s->changed(&c, s->changed_aux);
		store_conv_release(&v[i]);
	}
	free(v);
}

void sync_set_error(struct sync *s, const char *msg)
{
	pthread_mutex_lock(&s->lock);
	snprintf(s->last_error, sizeof(s->last_error), "%s", msg);
	s->last_error_when = time(NULL);
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

void sync_made_progress(struct sync *s)
{
	s->progress = true;
	/* the link carries whole batches again: let them grow back */
	if (++s->good_batches >= 4 && s->batch < SYNC_BATCH) {
		s->batch = s->batch * 2 > SYNC_BATCH ? SYNC_BATCH : s->batch * 2;
		s->good_batches = 0;
	}
}

void sync_batch_failed(struct sync *s)
{
	unsigned b = s->batch / 2;

	s->batch = b < SYNC_BATCH_MIN ? SYNC_BATCH_MIN : b;
	s->good_batches = 0;
	log_info("connection lost in the middle of a batch: %u messages a "
		 "batch from now on",
		 s->batch);
}

long long sync_backoff_ms(unsigned fails)
{
	/* CONVOYFS_TEST_BACKOFF_MS: a shorter first delay, for the tests of
	 * what happens across many reconnects (poison messages); the
	 * doubling and the cap stay */
	static atomic_llong base;
	long long d = atomic_load(&base);

	if (!d) {
		const char *t = getenv("CONVOYFS_TEST_BACKOFF_MS");
		long long v = t ? atoll(t) : 0;

		d = v > 0 && v < 2000 ? v : 2000;
		atomic_store(&base, d);
	}

	while (fails-- > 0 && d < 60000)
		d *= 2;
	if (d > 60000)
		d = 60000;
	return d + rand() % (d / 4 + 1);
}

bool sync_settled(const struct sync *s, const struct store_folder *f)
{
	return f->low_uid == 1 ||
	       (s->cfg.horizon && f->complete_since &&
		f->complete_since <= s->cfg.horizon);
}

int64_t sync_horizon(const struct sync *s)
{
	return s->cfg.horizon;
}

/* ---- per-folder notes for the status file ---- */

static struct folder_note *note_of(struct sync *s, int64_t folder)
{
	for (size_t i = 0; i < s->nnotes; i++)
		if (s->notes[i].id == folder)
			return &s->notes[i];
	s->notes = xrealloc(s->notes, (s->nnotes + 1) * sizeof(*s->notes));
	memset(&s->notes[s->nnotes], 0, sizeof(s->notes[0]));
	s->notes[s->nnotes].id = folder;
	return &s->notes[s->nnotes++];
}

void sync_note_total(struct sync *s, int64_t folder, uint32_t total)
{
	pthread_mutex_lock(&s->lock);
	note_of(s, folder)->total = total;
	note_of(s, folder)->has_total = true;
	pthread_mutex_unlock(&s->lock);
}

void sync_note_failed(struct sync *s, int64_t folder, const char *why)
{
	struct folder_note *n;

	pthread_mutex_lock(&s->lock);
	n = note_of(s, folder);
	n->failed = true;
	snprintf(n->error, sizeof(n->error), "%s", why);
	n->when = time(NULL);
	pthread_mutex_unlock(&s->lock);
}

void sync_note_ok(struct sync *s, int64_t folder)
{
	pthread_mutex_lock(&s->lock);
	note_of(s, folder)->failed = false;
	pthread_mutex_unlock(&s->lock);
}

void sync_note_forget(struct sync *s, int64_t folder)
{
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < s->nnotes; i++)
		if (s->notes[i].id == folder) {
			s->notes[i] = s->notes[--s->nnotes];
			break;
		}
	pthread_mutex_unlock(&s->lock);
}

int sync_folder_status(struct sync *s, int64_t folder,
		       struct sync_folder_status *out)
{
	int rc = -ENOENT;

	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < s->nnotes; i++) {
		const struct folder_note *n = &s->notes[i];

		if (n->id != folder)
			continue;
		out->total = n->total;
		out->has_total = n->has_total;
		out->failed = n->failed;
		snprintf(out->error, sizeof(out->error), "%s", n->error);
		out->when = n->when;
		rc = 0;
		break;
	}
	pthread_mutex_unlock(&s->lock);
	return rc;
}

static void set_conn_state(struct sync *s, enum conn_state st)
{
	pthread_mutex_lock(&s->lock);
	s->conn_state = st;
	pthread_mutex_unlock(&s->lock);
}

/* ---- the jobs of a round ---- */

struct folder_job {
	struct sync *s;
	int64_t folder;
	bool grow; /* learn older mail, not refresh */
	bool to_the_end; /* grow past the horizon (asked for) */
	uint64_t queued; /* s->refresh_clock when a refresh was queued */
	int64_t count; /* pushed: the count the server said, or -1 */
};

/* a refresh of @folder to queue: stamped with the refresh clock */
static struct folder_job *refresh_job(struct sync *s, int64_t folder)
{
	struct folder_job *fj = xcalloc(1, sizeof(*fj));

	fj->s = s;
	fj->folder = folder;
	fj->queued = ++s->refresh_clock;
	fj->count = -1;
	return fj;
}

static struct refreshed *refreshed_of(struct sync *s, int64_t folder)
{
	for (size_t i = 0; i < s->nrefreshed; i++)
		if (s->refreshed[i].folder == folder)
			return &s->refreshed[i];
	return NULL;
}

/*
 * Whether a refresh of @fj's folder that began after @fj was queued has
 * ended well: its look at the server came after whatever asked for @fj
 * (a push, the round, the user), so @fj has nothing left to learn. A
 * push during a round's refresh of the same folder, or a round queued
 * while a pushed refresh waits, would otherwise select and read the
 * folder twice; on a large maildir each look costs the server a scan.
 */
static bool refreshed_since(struct sync *s, const struct folder_job *fj)
{
	const struct refreshed *r = refreshed_of(s, fj->folder);
	struct sync_folder_status fst;

	if (r && r->began > fj->queued)
		return true;
	/* a push that only gave the count the last good look found (an
	 * EXISTS the server repeats, or one the sync thread was quicker
	 * to see): new mail or an expunge would have changed the count or
	 * come with an EXPUNGE of its own */
	return r && fj->count >= 0 && !sync_folder_status(s, fj->folder, &fst) &&
	       !fst.failed && fst.has_total && fst.total == fj->count;
}

static void note_refreshed(struct sync *s, int64_t folder, uint64_t began)
{
	struct refreshed *r = refreshed_of(s, folder);

	if (!r) {
		s->refreshed = xrealloc(s->refreshed, (s->nrefreshed + 1) *
							      sizeof(*r));
		r = &s->refreshed[s->nrefreshed++];
		r->folder = folder;
	}
	r->began = began;
}

static void folder_job_free(void *arg)
{
	free(arg);
}

/* a job's result as a line for the folder's status, and in the log when
 * the folder was not failing so already */
static void note_result(struct sync *s, const struct store_folder *f,
			const char *what, int rc)
{
	char why[160];
	bool again;

	if (!rc || rc == -ECANCELED || rc == -ENOTCONN) {
		if (!rc)
			sync_note_ok(s, f->id);
		return;
	}
	snprintf(why, sizeof(why), "%s: %s", what,
		 rc == -EREMOTE ? "refused by the server" : strerror(-rc));
	pthread_mutex_lock(&s->lock);
	again = note_of(s, f->id)->failed &&
		!strcmp(note_of(s, f->id)->error, why);
	pthread_mutex_unlock(&s->lock);
	sync_note_failed(s, f->id, why);
	if (rc == -ENOSPC) {
		char e[200];

		/* space may come back any moment: look again soon */
		s->retry_soon = true;
		snprintf(e, sizeof(e), "no space left for the store in %s",
			 s->cfg.cache_dir);
		sync_set_error(s, e);
	}
	if (!again)
		log_warn("folder %s: %s", f->name, why);
}

/* load folder @id for a job; false (and *@rc) if there is nothing to do */
static bool job_folder(struct sync *s, int64_t id, struct store_folder *f,
		       int *rc)
{
	*rc = 0;
	if (!s->conn || conn_is_broken(s->conn)) {
		*rc = -ENOTCONN;
		return false;
	}
	*rc = store_folder_get(s->st, id, f);
	if (*rc) {
		if (*rc == -ENOENT)
			*rc = 0; /* gone since the list */
		return false;
	}
	if (f->noselect)
		return false;
	if (!conn_name_ok(f->name)) {
		log_warn("folder name %s cannot be sent back safely, skipped",
			 f->display);
		return false;
	}
	return true;
}

static int run_folder(struct job *j, void *arg);

/* queue @fj's growth as a child of @parent: at the back, so a refresh
 * pushed meanwhile runs before the next step */
static int submit_grow(struct sync *s, struct job *parent,
		       const struct folder_job *fj)
{
	struct folder_job *g = xcalloc(1, sizeof(*g));

	*g = *fj;
	g->grow = true;
	return jobq_submit(s->jobs, parent, "grow", run_folder,
			   folder_job_free, g, NULL);
}

/*
 * Refresh a folder, or take one step of its growth. A folder not yet
 * complete grows after its refresh, one step per job, each the child
 * of the one before, so the round waits for all of them.
 */
static int run_folder(struct job *j, void *arg)
{
	struct folder_job *fj = arg;
	struct sync *s = fj->s;
	struct store_folder f = { 0 };
	uint64_t began = 0;
	int rc;

	if (!fj->grow && refreshed_since(s, fj)) {
		log_debug("refresh of folder %lld: the last look saw it",
			  (long long)fj->folder);
		return 0;
	}
	if (!job_folder(s, fj->folder, &f, &rc))
		goto out;
	/* the folder's turn: if the connection breaks now, it goes last
	 * in the next round; if all goes well, it is back in line */
	s->suspect = f.id;
	if (fj->grow) {
		rc = grow_folder(s, &f, j, fj->to_the_end);
		note_result(s, &f, "learning older mail", rc < 0 ? rc : 0);
		if (rc == 1)
			rc = submit_grow(s, j, fj);
	} else {
		began = ++s->refresh_clock;
		rc = refresh_folder(s, &f, j);
		note_result(s, &f, "refresh", rc);
		if (!rc)
			note_refreshed(s, f.id, began);
		if (!rc && !sync_settled(s, &f))
			rc = submit_grow(s, j, fj);
	}
	if (rc != -ENOTCONN && s->suspect == f.id)
		s->suspect = 0;
out:
	store_folder_release(&f);
	return rc;
}

/*
 * Whether folder @f changed on the server since its last refresh, by
 * one STATUS: UIDVALIDITY, UIDNEXT, MESSAGES or (with CONDSTORE)
 * HIGHESTMODSEQ moved. A folder still being learned, or whose last
 * refresh failed, is refreshed anyway. *@rc is -ENOTCONN when the
 * connection broke.
 *
 * Only polls ask: a full round (the first on a connection, or asked
 * for) refreshes every folder, as a STATUS can lag behind the folder:
 * Dovecot's answer from its mailbox list index was seen to miss three
 * APPENDs another session had completed.
 */
static bool folder_moved(struct sync *s, const struct store_folder *f,
			 int *rc)
{
	struct sync_folder_status fst;
	const struct imap_box *b = NULL;
	struct imap_box asked = { 0 };
	bool moved;
	int g;

	*rc = 0;
	if (!sync_settled(s, f) || !f->uidnext ||
	    sync_folder_status(s, f->id, &fst) || fst.failed || !fst.has_total)
		return true;
	/* LIST-STATUS told it already, in the list's one round trip */
	for (size_t i = 0; i < s->nlisted && !b; i++)
		if (s->listed[i].has_status && !strcmp(s->listed[i].name, f->name))
			b = &s->listed[i].box;
	if (!b && sync_watched(s, f->name))
		return false; /* the watcher reports its changes */
	if (!b) {
		g = imap_status(s->conn, f->name, &asked);
		if (g == IMAP_CONN_BAD)
			*rc = -ENOTCONN;
		if (g)
			/* the refresh will say what is wrong */
			return g != IMAP_CONN_BAD;
		b = &asked;
	}
	/* UIDVALIDITY 0 is no value (refresh.c) */
	moved = (b->uidvalidity && b->uidvalidity != f->uidvalidity) ||
		(b->uidnext && b->uidnext != f->uidnext) ||
		b->exists != fst.total ||
		((s->conn->caps & CAP_CONDSTORE) &&
		 b->highestmodseq != f->highestmodseq);
	imap_box_release(&asked);
	return moved;
}

/*
 * The folder list, then a refresh of every folder, INBOX first: the
 * newest mail of the inbox is what people look for. A poll (a round
 * the timer started, with a full round done on this connection) asks
 * STATUS first and refreshes only the folders that moved.
 */
static int run_list(struct job *j, void *arg)
{
	struct sync *s = arg;
	struct store_folder *f = NULL;
	bool poll = !s->round_full;
	size_t n = 0;
	int rc = 0;

	if (!s->conn || conn_is_broken(s->conn))
		return -ENOTCONN;
	/* the list made just before the mount appeared is fresh enough
	 * for the first round */
	if (!s->fresh_list)
		rc = sync_folders(s, poll);
	s->fresh_list = false;
	if (rc)
		return rc;
	/* for df; a broken connection shows at the next command */
	(void)imap_quota_refresh(s->conn, !poll);
	rc = store_folder_list(s->st, &f, &n);
	if (rc)
		return rc;
	pthread_mutex_lock(&s->lock);
	s->nfolders = 0;
	for (size_t i = 0; i < n; i++)
		s->nfolders += !f[i].noselect;
	pthread_mutex_unlock(&s->lock);
	/* INBOX, the others, and last a folder whose refresh lost the
	 * connection: if something in it breaks every connection, the
	 * other folders still get their turn */
	for (int pass = 0; pass < 3 && !rc; pass++) {
		for (size_t i = 0; i < n && !rc; i++) {
			struct folder_job *fj;
			bool inbox = !strcasecmp(f[i].name, "INBOX");
			int want = f[i].id == s->suspect ? 2 : inbox ? 0 : 1;

			if (f[i].noselect || want != pass ||
			    !conn_name_ok(f[i].name))
				continue;
			if (poll && !folder_moved(s, &f[i], &rc))
				continue;
			if (rc)
				break;
			fj = refresh_job(s, f[i].id);
			rc = jobq_submit(s->jobs, j, "refresh", run_folder,
					 folder_job_free, fj, NULL);
		}
	}
	store_folder_list_free(f, n);
	return rc;
}

static void ask(struct sync *s, int64_t id, const char *name, bool grow,
		int64_t count)
{
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < s->nasked; i++) {
		struct asked_folder *a = &s->asked[i];

		/* already waiting: one refresh will see both changes */
		if (a->id == id && (!name || (a->name && !strcmp(a->name, name)))) {
			a->grow |= grow;
			/* the newer count, unless either said more */
			a->count = a->count < 0 ? -1 : count;
			pthread_mutex_unlock(&s->lock);
			return;
		}
	}
	s->asked = xrealloc(s->asked, (s->nasked + 1) * sizeof(*s->asked));
	s->asked[s->nasked++] = (struct asked_folder){
		.id = id, .name = name ? xstrdup(name) : NULL, .grow = grow,
		.count = count
	};
	pthread_mutex_unlock(&s->lock);
	jobq_wake(s->jobs);
}

void sync_request_folder(struct sync *s, int64_t folder, bool grow)
{
	ask(s, folder, NULL, grow, -1);
}

void sync_push(struct sync *s, const char *name, int64_t count)
{
	ask(s, 0, name, false, count);
}

bool sync_work_waiting(struct sync *s, const struct store_folder *f)
{
	bool r = false;

	pthread_mutex_lock(&s->lock);
	r = s->ops_asked;
	for (size_t i = 0; i < s->nasked && !r; i++) {
		const struct asked_folder *a = &s->asked[i];

		/* a refresh of @f itself can wait for the step to end */
		r = a->id ? a->id != f->id : strcmp(a->name, f->name) != 0;
	}
	pthread_mutex_unlock(&s->lock);
	return r;
}

void sync_poll_now(struct sync *s)
{
	pthread_mutex_lock(&s->lock);
	s->poll_asked = true;
	pthread_mutex_unlock(&s->lock);
	jobq_wake(s->jobs);
}

bool sync_watched(struct sync *s, const char *name)
{
	enum push_mode m;

	/* IDLE on INBOX is not trusted alone: some servers (imap4d) accept
	 * it and never say a word of other sessions' mail, so polls still
	 * ask INBOX's STATUS, which costs no round trip of its own */
	(void)name;
	pthread_mutex_lock(&s->lock);
	m = s->watch.mode;
	pthread_mutex_unlock(&s->lock);
	return m == PUSH_NOTIFY;
}

/* the id of the folder named @name (raw), or 0 */
static int64_t folder_id_by_name(struct sync *s, const char *name)
{
	struct store_folder *f = NULL;
	size_t n = 0;
	int64_t id = 0;

	if (store_folder_list(s->st, &f, &n))
		return 0;
	for (size_t i = 0; i < n && !id; i++)
		if (!strcmp(f[i].name, name) ||
		    (!strcasecmp(name, "INBOX") && !strcasecmp(f[i].name, "INBOX")))
			id = f[i].id;
	store_folder_list_free(f, n);
	return id;
}

/*
 * Queue what was asked for or pushed at the head of the queue, so it
 * runs before the rest of a round: a refresh job, and for a growth
 * asked for, a growth to the end after it. A folder not (yet) in the
 * store waits for the next list.
 */
static void queue_asked(struct sync *s)
{
	struct asked_folder *v;
	size_t n, i;

	pthread_mutex_lock(&s->lock);
	v = s->asked;
	n = s->nasked;
	s->asked = NULL;
	s->nasked = 0;
	pthread_mutex_unlock(&s->lock);
	for (i = 0; i < n; i++) {
		struct folder_job *fj;
		int64_t id = v[i].id ? v[i].id : folder_id_by_name(s, v[i].name);

		if (!id) {
			/* a folder the last list did not have: list again */
			log_debug("push for unknown folder %s: a poll soon",
				  v[i].name ? v[i].name : "?");
			pthread_mutex_lock(&s->lock);
			s->poll_asked = true;
			pthread_mutex_unlock(&s->lock);
			free(v[i].name);
			continue;
		}
		free(v[i].name);
		fj = refresh_job(s, id);
		fj->grow = v[i].grow;
		fj->count = v[i].count;
		fj->to_the_end = v[i].grow;
		if (jobq_submit_front(s->jobs, NULL,
				      fj->grow ? "grow" : "refresh", run_folder,
				      folder_job_free, fj, NULL))
			break; /* stopping: the rest is not asked any more */
	}
	/* what a stop left unqueued (the one that failed freed its job) */
	for (i = i < n ? i + 1 : n; i < n; i++)
		free(v[i].name);
	free(v);
}

/*
 * Writes waiting in the operation log run before anything else queued:
 * a refresh must find the server as the user left it. The executor
 * runs once at a time; a write recorded while it runs asks again.
 */
static long long queue_ops(struct sync *s)
{
	long long wait;
	bool asked;

	if (s->ops_job && job_is_done(s->jobs, s->ops_job)) {
		job_unref(s->ops_job);
		s->ops_job = NULL;
	}
	pthread_mutex_lock(&s->lock);
	wait = ops_wait_ms(s);
	asked = wait == 0 && !s->ops_job;
	if (asked)
		s->ops_asked = false;
	pthread_mutex_unlock(&s->lock);
	if (asked && jobq_submit_front(s->jobs, NULL, "ops", ops_run, NULL, s,
				       &s->ops_job))
		s->ops_job = NULL;
	return asked ? -1 : wait;
}

static void start_round(struct sync *s, bool full)
{
	int rc;

	if (s->round)
		return;
	s->round_full = full;
	s->retry_soon = false;
	rc = store_msg_max_umid(s->st, &s->pass_start);
	if (rc)
		s->pass_start = INT64_MAX; /* no twin matching this pass */
	pthread_mutex_lock(&s->lock);
	s->syncing = true;
	s->refresh_asked = false;
	s->poll_asked = false;
	pthread_mutex_unlock(&s->lock);
	rc = jobq_submit(s->jobs, NULL, "list", run_list, NULL, s, &s->round);
	if (rc)
		s->round = NULL;
}

static void purged(const struct store_msg *m, void *aux)
{
	sync_notify_gone(aux, m);
}

/* orphans nobody adopted in this pass: gone for good */
static void purge_orphans(struct sync *s)
{
	struct store_folder *f = NULL;
	size_t n = 0;

	if (store_folder_list(s->st, &f, &n))
		return;
	for (size_t i = 0; i < n; i++) {
		size_t purged_n = 0;

		/* a folder still being learned may yet find its own */
		if (!sync_settled(s, &f[i]))
			continue;
		if (!store_folder_purge_orphans(s->st, f[i].id, purged, s,
						&purged_n) &&
		    purged_n)
			log_debug("folder %s: %zu messages gone for good",
				  f[i].name, purged_n);
	}
	store_folder_list_free(f, n);
}

static void finish_round(struct sync *s)
{
	int rc = jobq_wait(s->jobs, s->round, 0);
	unsigned wait_s;

	job_unref(s->round);
	s->round = NULL;
	/* an orphan a failed folder may yet adopt stays */
	if (!rc)
		purge_orphans(s);
	if (!rc && s->round_full)
		s->full_done = true;
	wait_s = s->cfg.poll_interval;
	if (s->retry_soon && wait_s > SYNC_RETRY_SOON_S)
		wait_s = SYNC_RETRY_SOON_S;
	s->next_round_ms = now_ms() + (long long)wait_s * 1000;
	pthread_mutex_lock(&s->lock);
	/* a folder that failed says so in its own line */
	s->first_sync_done = true;
	s->syncing = s->refresh_asked;
	pthread_mutex_unlock(&s->lock);
	/* the first sync done: bodies may come */
	prefetch_wake(s);
	if (rc && rc != -ENOTCONN && rc != -ECANCELED)
		log_debug("round ended with %s", strerror(-rc));
}

/* the connection is gone: cancel the round, mark offline, back off */
static void lost(struct sync *s, const char *why)
{
	if (s->round) {
		jobq_cancel(s->jobs, s->round);
		job_unref(s->round);
		s->round = NULL;
	}
	if (s->ops_job) {
		jobq_cancel(s->jobs, s->ops_job);
		job_unref(s->ops_job);
		s->ops_job = NULL;
	}
	conn_close(s->conn);
	s->conn = NULL;
	/* what did not run waits for the next connection */
	pthread_mutex_lock(&s->lock);
	s->ops_asked = true;
	pthread_mutex_unlock(&s->lock);
	if (s->progress)
		s->fails = 0;
	else
		s->fails++;
	s->progress = false;
	s->retry_at_ms = now_ms() + sync_backoff_ms(s->fails);
	s->next_round_ms = 0; /* catch up as soon as connected again */
	s->full_done = false; /* with a full round: pushes were missed */
	set_conn_state(s, CONN_OFFLINE);
	sync_set_error(s, why);
	log_warn("%s; connecting again in %lld ms", why,
		 s->retry_at_ms - now_ms());
}

/* sleep up to @ms unless stopping; false when stopping */
static bool pause_ms(struct sync *s, long long ms)
{
	while (ms > 0 && !sync_is_stopping(s)) {
		long long step = ms > 200 ? 200 : ms;
		struct timespec ts = { .tv_sec = 0,
				       .tv_nsec = step * 1000000 };

		nanosleep(&ts, NULL);
		ms -= step;
	}
	return !sync_is_stopping(s);
}

/* connect again after the backoff; false if stopping */
static bool reconnect(struct sync *s)
{
	while (!sync_is_stopping(s)) {
		char err[256];
		int rc;

		if (!pause_ms(s, s->retry_at_ms - now_ms()))
			return false;
		set_conn_state(s, CONN_CONNECTING);
		rc = conn_open(&s->cfg, &s->conn, err, sizeof(err));
		if (!rc) {
			atomic_fetch_add(&s->logins, 1);
			if (imap_prepare(s->conn) != IMAP_CONN_BAD) {
				log_info("connected again");
				set_conn_state(s, CONN_ONLINE);
				return true;
			}
			snprintf(err, sizeof(err),
				 "connection to %s lost after login",
				 s->cfg.host);
			conn_close(s->conn);
			s->conn = NULL;
		}
		sync_set_error(s, err);
		s->fails++;
		s->retry_at_ms = now_ms() + sync_backoff_ms(s->fails);
		set_conn_state(s, CONN_OFFLINE);
		log_warn("%s; retrying in %lld s", err,
			 (s->retry_at_ms - now_ms()) / 1000);
	}
	return false;
}

/* messages without a conversation: from an older store, or a threading
 * that failed; a message fails alone, so stop when a round makes none */
static void thread_leftovers(struct sync *s)
{
	size_t done;

	do {
		int rc = thread_backlog(s->st, SYNC_BATCH, &done);

		/* rolled back or not, what it noted goes (see store.h) */
		sync_notify_convs(s, s->st);
		if (rc)
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
		bool asked, poll;
		long long ops_wait;
		int r;

		if (!s->conn && !reconnect(s))
			break;
		pthread_mutex_lock(&s->lock);
		asked = s->refresh_asked;
		poll = s->poll_asked;
		pthread_mutex_unlock(&s->lock);
		ops_wait = queue_ops(s);
		if (!s->round &&
		    (asked || poll || now_ms() >= s->next_round_ms))
			start_round(s, asked || !s->full_done);
		queue_asked(s);
		r = jobq_run_next(s->jobs, s->round ? 0
					   : ops_wait >= 0 && ops_wait < 1000
					   ? ops_wait
					   : 1000);
		if (r == -ESHUTDOWN)
			break;
		if (s->conn && conn_is_broken(s->conn)) {
			lost(s, "connection lost during sync");
			continue;
		}
		if (s->round && job_is_done(s->jobs, s->round))
			finish_round(s);
		/* idle: a server that closed the connection (or sent BYE)
		 * shows as input waiting; NOOP finds out */
		if (!s->round && r == 0 && s->conn &&
		    imap_has_input(s->conn) &&
		    imap_noop(s->conn) == IMAP_CONN_BAD)
			lost(s, "connection closed by the server");
	}
	if (s->round) {
		jobq_cancel(s->jobs, s->round);
		job_unref(s->round);
		s->round = NULL;
	}
	if (s->ops_job) {
		jobq_cancel(s->jobs, s->ops_job);
		job_unref(s->ops_job);
		s->ops_job = NULL;
	}
	return NULL;
}

int sync_start(struct sync *s)
{
	int rc;

	/* sync_new checked the file when it opened it before the mount */
	rc = store_open_checked(s->cfg.cache_dir, &s->st);
	if (!rc)
		rc = store_bulk(s->st);
	if (rc)
		return rc;
	/* before any fetcher writes a body: what a crash left behind, if
	 * the last run did not stop in order */
	if (store_clean_stop_take(s->st)) {
		log_debug("body cache: the last run stopped in order, no sweep");
		s->cache_checked = true;
	} else {
		struct store_sweep sw;
		long long t0 = now_ms();

		if (!store_body_sweep(s->st, &sw)) {
			s->cache_checked = true;
			log_debug("body cache swept in %lld ms", now_ms() - t0);
			if (sw.temporary || sw.adopted || sw.dropped || sw.rows)
				log_info("body cache put in order: %zu temporary "
					 "files removed, %zu bodies accounted "
					 "for, %zu of unknown messages removed, "
					 "%zu rows without a file dropped",
					 sw.temporary, sw.adopted, sw.dropped,
					 sw.rows);
		}
	}
	{
		size_t kept = 0;

		if (!store_stage_sweep(s->st, &kept) && kept)
			log_warn("%zu message%s written into the mount when it "
				 "stopped were not recorded: kept in "
				 ".convoyfs/recovered/",
				 kept, kept == 1 ? "" : "s");
	}
	sync_poisoned_load(s);
	/* ops a previous run left go first, before any refresh: one
	 * sent before a crash must find the rows as it left them */
	ops_kick(s);
	s->ops_first_ms = s->ops_last_ms = 0;
	rc = fetch_start(s);
	if (rc)
		return rc;
	rc = prefetch_start(s);
	if (rc) {
		fetch_stop(s);
		return rc;
	}
	rc = pthread_create(&s->thread, NULL, sync_main, s);
	if (rc) {
		prefetch_stop(s);
		fetch_stop(s);
		return -rc;
	}
	/* without a watcher, polls alone find changes: not fatal */
	rc = watch_start(s);
	if (rc)
		log_warn("cannot start the watcher: %s", strerror(-rc));
	s->started = true;
	return 0;
}

void sync_stop(struct sync *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->stopping = true;
	pthread_cond_broadcast(&s->fetch_wake);
	pthread_cond_broadcast(&s->fetch_done);
	pthread_mutex_unlock(&s->lock);
	/* a thread waiting on the network (connecting, or on a server that
	 * stopped answering) gets an error now, not at its timeout */
	tls_cancel_all();
	/* the running job sees itself cancelled between batches */
	jobq_shutdown(s->jobs);
	if (s->started) {
		pthread_join(s->thread, NULL);
		s->started = false;
	}
	watch_stop(s);
	prefetch_stop(s);
	fetch_stop(s);
	conn_close(s->conn);
	s->conn = NULL;
	/* no body is written any more, and every one kept is recorded */
	if (s->cache_checked && s->st) {
		store_clean_stop_mark(s->st);
		s->cache_checked = false;
	}
}

void sync_free(struct sync *s)
{
	if (!s)
		return;
	sync_stop(s);
	jobq_free(s->jobs);
	store_close(s->st);
	sync_config_release(&s->cfg);
	free(s->notes);
	for (size_t i = 0; i < s->nasked; i++)
		free(s->asked[i].name);
	free(s->asked);
	imap_mailboxes_free(s->listed, s->nlisted);
	free(s->refreshed);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->fetch_wake);
	pthread_cond_destroy(&s->fetch_done);
	pthread_cond_destroy(&s->pf.wake);
	pthread_cond_destroy(&s->pf.kept);
	free(s);
}

void sync_request_refresh(struct sync *s)
{
	pthread_mutex_lock(&s->lock);
	s->refresh_asked = true;
	/* status shows the round as begun at once, so a caller that waits
	 * for "idle" after asking waits for this round */
	s->syncing = true;
	pthread_mutex_unlock(&s->lock);
	jobq_wake(s->jobs);
}

uint64_t sync_fetch_count(struct sync *s)
{
	return atomic_load(&s->bodies_fetched);
}

static const char *state_name(enum conn_state st)
{
	switch (st) {
	case CONN_ONLINE:
		return "online";
	case CONN_CONNECTING:
		return "connecting";
	case CONN_NONE:
		return "not connected";
	default:
		return "offline";
	}
}

void sync_status(struct sync *s, char **text)
{
	enum conn_state cs, fs[FETCHERS];
	bool syncing, done, failing = false;
	char err[256], when[32] = "", push[64];
	enum push_mode pm;
	size_t nfolders;
	int64_t err_when;
	uint64_t ops;
	char ops_list[512];
	char pf[96];
	enum prefetch_state pst;
	uint64_t pf_cached, pf_total, pf_rate;

	pthread_mutex_lock(&s->lock);
	cs = s->conn_state;
	for (int i = 0; i < FETCHERS; i++)
		fs[i] = s->fetchers[i].state;
	syncing = s->syncing;
	done = s->first_sync_done;
	snprintf(err, sizeof(err), "%s", s->last_error);
	err_when = s->last_error_when;
	for (size_t i = 0; i < s->nnotes; i++)
		failing |= s->notes[i].failed;
	pm = s->watch.mode;
	nfolders = s->nfolders;
	ops = s->ops_pending;
	snprintf(ops_list, sizeof(ops_list), "%s", s->ops_list);
	pst = s->pf.state;
	pf_cached = s->pf.cached;
	pf_total = s->pf.total;
	pf_rate = s->pf.rate;
	/* work asked for with ctl, waiting or running, is syncing too */
	syncing |= s->nasked > 0 || jobq_pending(s->jobs) > 0;
	pthread_mutex_unlock(&s->lock);

	if (pm == PUSH_NOTIFY)
		snprintf(push, sizeof(push), "notify %zu folders", nfolders);
	else if (pm == PUSH_IDLE)
		snprintf(push, sizeof(push), "idle INBOX");
	else
		snprintf(push, sizeof(push), "polling every %u s",
			 s->cfg.poll_interval);

	if (pst == PREFETCH_RUNNING && pf_rate)
		snprintf(pf, sizeof(pf), "running, %.1f MB/s",
			 (double)pf_rate / 1e6);
	else
		snprintf(pf, sizeof(pf), "%s", prefetch_state_name(pst));

	if (err[0] && err_when) {
		struct tm tm;
		time_t t = (time_t)err_when;

		localtime_r(&t, &tm);
		strftime(when, sizeof(when), " (%Y-%m-%d %H:%M:%S)", &tm);
	}
	*text = xasprintf("account: %s@%s:%s\n"
			  "connection: %s\n"
			  "fetcher 1: %s\n"
			  "fetcher 2: %s\n"
			  "state: %s\n"
			  "push: %s\n"
			  "jobs pending: %zu\n"
			  "logins: %llu\n"
			  "headers fetched: %llu\n"
			  "bodies fetched: %llu\n"
			  "bodies prefetched: %llu\n"
			  "bodies cached: %llu/%llu\n"
			  "prefetch: %s\n"
			  "operations pending: %llu\n"
			  "%s"
			  "last error: %s%s\n",
			  s->cfg.user, s->cfg.host, s->cfg.port,
			  state_name(cs), state_name(fs[0]), state_name(fs[1]),
			  syncing || !done	     ? "syncing"
			  : failing || cs != CONN_ONLINE ? "failing"
							 : "idle",
			  push, jobq_pending(s->jobs),
			  (unsigned long long)atomic_load(&s->logins),
			  (unsigned long long)atomic_load(&s->headers_fetched),
			  (unsigned long long)atomic_load(&s->bodies_fetched),
			  (unsigned long long)atomic_load(&s->bodies_prefetched),
			  (unsigned long long)pf_cached,
			  (unsigned long long)pf_total, pf,
			  (unsigned long long)ops, ops_list,
			  err[0] ? err : "none", when);
}
