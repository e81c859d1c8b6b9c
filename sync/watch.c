/*
 * watch.c - the watcher (DESIGN §2): a connection of its own that
 * waits in IDLE on INBOX and turns what the server pushes into refresh
 * jobs for the sync thread. Where NOTIFY is offered, the same wait
 * covers every personal folder. It runs beside a long sync, leaves IDLE
 * well before the server's 30-minute limit, and reconnects with the
 * backoff of every connection; after a reconnect it asks for a look at
 * everything, as pushes may have been missed while it was away.
 */
#define LOG_CAT "watch"
#include "engine.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

/* RFC 2177: servers may end an IDLE after 30 minutes; leave it before */
#define IDLE_MAX_MS (25LL * 60 * 1000)

static void set_mode(struct sync *s, enum push_mode m)
{
	pthread_mutex_lock(&s->lock);
	s->watch.mode = m;
	pthread_mutex_unlock(&s->lock);
}

/* drain the wake pipe; true if stopping */
static bool woken(struct sync *s)
{
	char buf[64];

	while (read(s->watch.wake[0], buf, sizeof(buf)) > 0)
		;
	return sync_is_stopping(s);
}

/* wait @ms unless woken to stop; false when stopping */
static bool watch_pause(struct sync *s, long long ms)
{
	struct pollfd p = { .fd = s->watch.wake[0], .events = POLLIN };

	while (ms > 0 && !sync_is_stopping(s)) {
		long long t0 = now_ms();

		if (poll(&p, 1, ms > 60000 ? 60000 : (int)ms) > 0 && woken(s))
			return false;
		ms -= now_ms() - t0;
	}
	return !sync_is_stopping(s);
}

static void drop(struct sync *s, const char *why)
{
	struct watcher *w = &s->watch;

	conn_close(w->conn);
	w->conn = NULL;
	if (w->progress)
		w->fails = 0;
	else
		w->fails++;
	w->progress = false;
	w->retry_at_ms = now_ms() + sync_backoff_ms(w->fails);
	set_mode(s, PUSH_POLL);
	log_warn("watcher: %s; connecting again in %lld ms", why,
		 w->retry_at_ms - now_ms());
}

/*
 * Connect, ask for NOTIFY where offered and EXAMINE INBOX. Returns 0,
 * -EAGAIN (try again after the backoff) or -EOPNOTSUPP (the server has
 * no IDLE: polls alone watch it).
 */
static int watch_connect(struct sync *s)
{
	struct watcher *w = &s->watch;
	struct imap_box box;
	char err[256];
	bool notify;
	int rc, g;

	rc = conn_open(&s->cfg, &w->conn, err, sizeof(err));
	if (rc) {
		w->fails++;
		w->retry_at_ms = now_ms() + sync_backoff_ms(w->fails);
		log_warn("watcher: %s; retrying in %lld s", err,
			 (w->retry_at_ms - now_ms()) / 1000);
		return -EAGAIN;
	}
	atomic_fetch_add(&s->logins, 1);
	if (!(w->conn->caps & CAP_IDLE)) {
		log_info("the server has no IDLE: every folder is polled "
			 "every %u s",
			 s->cfg.poll_interval);
		conn_close(w->conn);
		w->conn = NULL;
		return -EOPNOTSUPP;
	}
	notify = w->conn->caps & CAP_NOTIFY;
	if (notify) {
		g = imap_notify_set(w->conn);
		if (g == IMAP_CONN_BAD)
			goto lost;
		notify = g == IMAP_OK;
	}
	g = imap_examine(w->conn, "INBOX", &box);
	w->inbox_exists = box.exists;
	imap_box_release(&box);
	if (g == IMAP_CONN_BAD)
		goto lost;
	if (g) {
		log_warn("watcher: cannot look at INBOX: every folder is "
			 "polled");
		conn_close(w->conn);
		w->conn = NULL;
		return -EOPNOTSUPP;
	}
	set_mode(s, notify ? PUSH_NOTIFY : PUSH_IDLE);
	log_info("watcher: %s", notify ? "NOTIFY on every folder"
				       : "IDLE on INBOX");
	return 0;
lost:
	drop(s, "connection lost while setting up");
	return -EAGAIN;
}

/*
 * Hand what the server pushed to the sync thread. An EXISTS that
 * repeats the count INBOX had is no news: Dovecot says it again when
 * another session (the sync thread's own look) brings the maildir's
 * new mail into its index, and each push costs a refresh, which on a
 * large folder costs the server a scan.
 */
static void hand_over(struct sync *s, const struct imap_push *p)
{
	struct watcher *w = &s->watch;
	bool more = p->has_exists && p->exists != w->inbox_exists;

	if (p->has_exists)
		w->inbox_exists = p->exists;
	if (p->selected)
		sync_push(s, "INBOX", -1);
	else if (more)
		sync_push(s, "INBOX", p->exists);
	for (size_t i = 0; i < p->nfolders; i++)
		sync_push(s, p->folders[i], -1);
}

/* one IDLE: until a push, the time limit or a stop. Returns an
 * imap_grade; *@stop when asked to stop */
static int idle_once(struct sync *s, bool *stop)
{
	struct watcher *w = &s->watch;
	struct imap_push p;
	bool missed;
	int g;

	g = imap_idle_begin(w->conn, &missed);
	if (g)
		return g;
	if (missed)
		/* said before IDLE began, and not kept: look at all */
		sync_poll_now(s);
	imap_idle_wait(w->conn, w->wake[0], w->idle_ms);
	*stop = woken(s);
	g = imap_idle_end(w->conn, &p);
	if (!g) {
		w->progress = true;
		hand_over(s, &p);
	}
	imap_push_release(&p);
	return g;
}

static void *watch_main(void *arg)
{
	struct sync *s = arg;
	struct watcher *w = &s->watch;
	bool first = true;

	while (!sync_is_stopping(s)) {
		bool stop = false;
		int g;

		if (!w->conn) {
			int rc;

			if (!watch_pause(s, w->retry_at_ms - now_ms()))
				break;
			rc = watch_connect(s);
			if (rc == -EOPNOTSUPP)
				break;
			if (rc)
				continue;
			/* pushes were missed while it was away */
			if (!first)
				sync_poll_now(s);
			first = false;
		}
		g = idle_once(s, &stop);
		if (stop)
			break;
		if (g == IMAP_CONN_BAD)
			drop(s, "connection lost");
		else if (g) {
			/* IDLE refused: polls alone */
			set_mode(s, PUSH_POLL);
			break;
		}
	}
	if (w->conn) {
		conn_close(w->conn);
		w->conn = NULL;
	}
	set_mode(s, PUSH_POLL);
	return NULL;
}

int watch_start(struct sync *s)
{
	struct watcher *w = &s->watch;
	const char *t = getenv("CONVOYFS_TEST_IDLE_MS");
	int rc;

	w->idle_ms = t && atoll(t) > 0 ? atoll(t) : IDLE_MAX_MS;
	if (pipe2(w->wake, O_CLOEXEC | O_NONBLOCK))
		return -errno;
	rc = pthread_create(&w->thread, NULL, watch_main, s);
	if (rc) {
		close(w->wake[0]);
		close(w->wake[1]);
		return -rc;
	}
	w->started = true;
	return 0;
}

void watch_stop(struct sync *s)
{
	struct watcher *w = &s->watch;

	if (!w->started)
		return;
	/* sync_stop set stopping first: the thread ends IDLE and leaves */
	if (write(w->wake[1], "x", 1) < 0)
		log_debug("watcher: cannot wake it: %s", strerror(errno));
	pthread_join(w->thread, NULL);
	close(w->wake[0]);
	close(w->wake[1]);
	w->started = false;
}
