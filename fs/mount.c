/*
 * mount.c - the mount's lifecycle: the checks of the mount point, the
 * session, the mount, daemonizing, the notifier and sync threads, the
 * loop, signals and the teardown; and the pool of store connections the
 * operations borrow from.
 */
#define LOG_CAT "fs"
#include "fs_i.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

/* ---- store connections: a pool, one borrowed per operation ---- */

int borrow(struct fs *fs, struct store **out)
{
	struct store *st = NULL;
	int rc;

	pthread_mutex_lock(&fs->lock);
	if (fs->npool)
		st = fs->pool[--fs->npool];
	pthread_mutex_unlock(&fs->lock);
	if (st) {
		*out = st;
		return 0;
	}
	rc = store_open(fs->a->cfg.cache_dir, out);
	if (rc)
		log_error("cannot open the store: %s", strerror(-rc));
	else
		store_writes_relaxed(*out); /* see there: never mail */
	return rc ? -EIO : 0;
}

void give_back(struct fs *fs, struct store *st)
{
	pthread_mutex_lock(&fs->lock);
	if (fs->npool < POOL_MAX) {
		fs->pool[fs->npool++] = st;
		st = NULL;
	}
	pthread_mutex_unlock(&fs->lock);
	store_close(st);
}

/* ---- the folder tree ---- */

struct tree *tree_get(struct fs *fs)
{
	struct tree *t;

	pthread_mutex_lock(&fs->lock);
	if (!fs->tree || atomic_exchange(&fs->folders_dirty, false)) {
		struct store_folder *f = NULL;
		struct store *st = fs->npool ? fs->pool[--fs->npool] : NULL;
		size_t n = 0;

		if (!st && store_open(fs->a->cfg.cache_dir, &st))
			st = NULL;
		if (st && !store_folder_list(st, &f, &n)) {
			tree_put(fs->tree);
			fs->tree = tree_build(f, n);
			store_folder_list_free(f, n);
		} else if (!fs->tree) {
			fs->tree = tree_build(NULL, 0);
		}
		if (st && fs->npool < POOL_MAX)
			fs->pool[fs->npool++] = st;
		else
			store_close(st);
	}
	t = fs->tree;
	atomic_fetch_add(&t->refs, 1);
	pthread_mutex_unlock(&fs->lock);
	return t;
}

/* ---- before mounting: the mount point ---- */

/* undo the octal escapes of /proc/self/mountinfo (\040 for a space) */
static void unescape_octal(char *s)
{
	char *o = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' &&
		    s[2] >= '0' && s[2] <= '7' && s[3] >= '0' && s[3] <= '7') {
			*o++ = (char)((s[1] - '0') << 6 | (s[2] - '0') << 3 |
				      (s[3] - '0'));
			s += 3;
		} else {
			*o++ = *s;
		}
	}
	*o = '\0';
}

/*
 * Whether @path (absolute and real) is a mount point, by the list of
 * mounts: a bind mount of a directory of the same filesystem has the
 * st_dev of its parent, so comparing those would miss it.
 */
static bool is_mount_point(const char *path)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0;
	bool found = false;

	if (!f)
		return false;
	while (!found && getline(&line, &cap, f) > 0) {
		/* ID PARENT MAJOR:MINOR ROOT MOUNTPOINT OPTIONS ... */
		char *save = NULL, *field = strtok_r(line, " ", &save);

		for (int i = 1; field && i < 5; i++)
			field = strtok_r(NULL, " ", &save);
		if (!field)
			continue;
		unescape_octal(field);
		found = !strcmp(field, path);
	}
	free(line);
	fclose(f);
	return found;
}

/* whether directory @path holds anything; 0 or -errno */
static int has_entries(const char *path, bool *any)
{
	DIR *d = opendir(path);
	struct dirent *e;

	if (!d)
		return -errno;
	*any = false;
	while (!*any && (e = readdir(d)))
		*any = strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
	closedir(d);
	return 0;
}

int fs_check_mountpoint(struct fs_args *a, char *err, size_t errlen)
{
	char *real = realpath(a->mountpoint, NULL);
	struct stat st;
	bool any = false;
	int rc;

	if (!real) {
		rc = -errno;
		/* what a FUSE mount whose daemon is gone answers */
		if (errno == ENOTCONN)
			snprintf(err, errlen, "cannot mount on %s: already a "
				 "mount point, of a filesystem no longer "
				 "served (fusermount3 -u it)", a->mountpoint);
		else
			snprintf(err, errlen, "cannot mount on %s: %s",
				 a->mountpoint, strerror(errno));
		return rc;
	}
	if (stat(real, &st)) {
		rc = -errno;
		snprintf(err, errlen, "cannot mount on %s: %s", a->mountpoint,
			 strerror(errno));
		goto fail;
	}
	if (!S_ISDIR(st.st_mode)) {
		rc = -ENOTDIR;
		snprintf(err, errlen, "cannot mount on %s: not a directory",
			 a->mountpoint);
		goto fail;
	}
	/* a second mount would hide the first, whose daemon would serve
	 * on unseen; libfuse would mount over it without a word */
	if (is_mount_point(real)) {
		rc = -EBUSY;
		snprintf(err, errlen, "cannot mount on %s: already a mount "
			 "point", a->mountpoint);
		goto fail;
	}
	rc = has_entries(real, &any);
	if (rc) {
		snprintf(err, errlen, "cannot mount on %s: %s", a->mountpoint,
			 strerror(-rc));
		goto fail;
	}
	/* fusermount3 mounts over files without a word, and they would
	 * look gone until the unmount */
	if (any && !a->nonempty) {
		rc = -ENOTEMPTY;
		snprintf(err, errlen, "cannot mount on %s: not empty (-o "
			 "nonempty mounts over what is there)", a->mountpoint);
		goto fail;
	}
	free(a->mountpoint);
	a->mountpoint = real;
	return 0;
fail:
	free(real);
	return rc;
}

/* ---- stopping: signals, and the sync's threads ---- */

/*
 * How long a stop waits for the sync's threads before the process
 * leaves without them. A thread in a network read ends only at its
 * deadline (timeout=, 30 s by default), and a signal must end the mount
 * within 2 s. Leaving is safe: every store write is a transaction, and
 * a body is renamed into the cache whole or not at all.
 */
#define STOP_GRACE_MS 1000
/* how long the stopper waits for the loop to see a signal before it
 * sends the signal again to the main thread (see stopper_main) */
#define STOP_NUDGE_MS 200

static const int stop_signals[] = { SIGHUP, SIGINT, SIGTERM };
#define NSTOP (sizeof(stop_signals) / sizeof(stop_signals[0]))

/* what the signal handler reads; set on the main thread, before it is
 * installed */
static struct fuse_session *volatile stop_se;
static volatile int stop_wake = -1; /* the stopper's pipe, write end */
/* the signal that asked for the stop, 0 for none; the stopper reads it
 * too (lock-free atomics are safe in a handler) */
static atomic_int stop_signal;

/*
 * SIGHUP, SIGINT, SIGTERM: on the main thread only, as every other
 * thread blocks them. The flag ends the FUSE loop, whose wait on this
 * thread the signal interrupts; the byte wakes the stopper, which stops
 * the sync and so lets go of FUSE requests waiting on the network: the
 * loop cannot end before every request in progress is answered.
 */
static void on_stop_signal(int sig)
{
	int saved = errno;

	atomic_store(&stop_signal, sig);
	if (stop_se)
		fuse_session_exit(stop_se);
	if (stop_wake >= 0)
		(void)!write(stop_wake, "", 1);
	errno = saved;
}

static void install_handlers(void)
{
	struct sigaction sa = { .sa_handler = on_stop_signal }, old;

	/* no SA_RESTART: the loop's wait must return to see the flag */
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < NSTOP; i++) {
		/* one ignored by whoever started us (nohup, a shell's
		 * background job) stays ignored, as libfuse does */
		if (sigaction(stop_signals[i], NULL, &old) ||
		    old.sa_handler == SIG_IGN)
			continue;
		if (sigaction(stop_signals[i], &sa, NULL))
			log_warn("cannot handle signal %d: %s",
				 stop_signals[i], strerror(errno));
	}
}

/*
 * The stopper: the one thread that calls sync_stop, woken by a signal
 * (at once, while the loop may still wait on the sync) or by the end of
 * the loop, so that the main thread can wait for it with a deadline.
 */
struct stopper {
	struct sync *sync;
	int pipe[2];
	pthread_t thread;
	pthread_t main;
	bool started;
	pthread_mutex_t lock; /* guards the fields below */
	pthread_cond_t cond; /* on CLOCK_MONOTONIC */
	long long began_ms; /* when the stop began, now_ms(); 0 before */
	bool loop_done; /* the FUSE loop returned */
	bool sync_stopped; /* sync_stop returned */
};

static void deadline_in(struct timespec *ts, long long ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (ms % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

static void *stopper_main(void *arg)
{
	struct stopper *sp = arg;
	struct pollfd p = { .fd = sp->pipe[0], .events = POLLIN };
	bool asked = false;
	char buf[16];

	while (!asked) {
		/* interrupted or not, what the pipe holds says */
		(void)poll(&p, 1, -1);
		while (read(sp->pipe[0], buf, sizeof(buf)) > 0)
			;
		/* a byte from the parent of the daemon, signalled while it
		 * forked, asks nothing of this process */
		pthread_mutex_lock(&sp->lock);
		asked = atomic_load(&stop_signal) || sp->loop_done;
		pthread_mutex_unlock(&sp->lock);
	}
	pthread_mutex_lock(&sp->lock);
	if (!sp->began_ms)
		sp->began_ms = now_ms();
	pthread_mutex_unlock(&sp->lock);

	sync_stop(sp->sync);

	pthread_mutex_lock(&sp->lock);
	sp->sync_stopped = true;
	pthread_cond_broadcast(&sp->cond);
	/*
	 * libfuse looks at its flag, then waits: a signal that came in
	 * between set the flag and woke nobody. Send it again to the main
	 * thread while the loop has not returned (a few times: a loop that
	 * still does not end waits on something else).
	 */
	for (int i = 0; i < 5 && atomic_load(&stop_signal) && !sp->loop_done;
	     i++) {
		struct timespec ts;

		deadline_in(&ts, STOP_NUDGE_MS);
		if (pthread_cond_timedwait(&sp->cond, &sp->lock, &ts) ==
			    ETIMEDOUT &&
		    !sp->loop_done)
			pthread_kill(sp->main, atomic_load(&stop_signal));
	}
	pthread_mutex_unlock(&sp->lock);
	return NULL;
}

static int stopper_init(struct stopper *sp, struct sync *sync)
{
	pthread_condattr_t ca;

	sp->sync = sync;
	/* non-blocking: the handler must never wait on a full pipe */
	if (pipe2(sp->pipe, O_CLOEXEC | O_NONBLOCK))
		return -errno;
	pthread_mutex_init(&sp->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&sp->cond, &ca);
	pthread_condattr_destroy(&ca);
	return 0;
}

static void stopper_destroy(struct stopper *sp)
{
	/* the handler may outlive the mount; it must not write here */
	stop_wake = -1;
	stop_se = NULL;
	close(sp->pipe[0]);
	close(sp->pipe[1]);
	pthread_mutex_destroy(&sp->lock);
	pthread_cond_destroy(&sp->cond);
}

/*
 * stop_sync - the loop returned: have the sync stopped, and wait for it
 * until STOP_GRACE_MS after the stop began. Returns false when it did
 * not stop in time (the stopper still runs: the sync must not be
 * touched again).
 */
static bool stop_sync(struct stopper *sp)
{
	bool stopped;

	pthread_mutex_lock(&sp->lock);
	sp->loop_done = true;
	if (!sp->began_ms)
		sp->began_ms = now_ms();
	pthread_cond_broadcast(&sp->cond);
	pthread_mutex_unlock(&sp->lock);
	/* an unmount: no signal woke the stopper */
	(void)!write(sp->pipe[1], "", 1);

	pthread_mutex_lock(&sp->lock);
	while (!sp->sync_stopped) {
		long long left = sp->began_ms + STOP_GRACE_MS - now_ms();
		struct timespec ts;

		if (left <= 0)
			break;
		deadline_in(&ts, left);
		pthread_cond_timedwait(&sp->cond, &sp->lock, &ts);
	}
	stopped = sp->sync_stopped;
	pthread_mutex_unlock(&sp->lock);
	if (stopped)
		pthread_join(sp->thread, NULL);
	return stopped;
}

static void stop_notifier(struct fs *fs)
{
	if (!fs->notifier_started)
		return;
	pthread_mutex_lock(&fs->note_lock);
	fs->notes_stop = true;
	pthread_cond_signal(&fs->note_wake);
	pthread_mutex_unlock(&fs->note_lock);
	pthread_join(fs->notifier, NULL);
	fs->notifier_started = false;
}

/* ---- the mount ---- */

/*
 * "fsname=USER@HOST", with the commas and backslashes of the name
 * escaped: libfuse splits -o on unescaped commas.
 */
static char *fsname_opt(const struct fs_args *a)
{
	char *src = xasprintf("%s@%s", a->cfg.user, a->cfg.host);
	char *out = xmalloc(strlen("fsname=") + 2 * strlen(src) + 1), *o;

	o = out + sprintf(out, "fsname=");
	for (const char *c = src; *c; c++) {
		if (*c == ',' || *c == '\\')
			*o++ = '\\';
		*o++ = *c;
	}
	*o = '\0';
	free(src);
	return out;
}

int fs_run(struct fs_args *a, struct sync *sync, int argc, char **argv)
{
	struct fuse_args fargs = FUSE_ARGS_INIT(0, NULL);
	struct fuse_loop_config *lc;
	struct fuse_session *se;
	struct fs fs = { .a = a, .sync = sync };
	struct stopper sp = { .pipe = { -1, -1 } };
	sigset_t quiet, old;
	char *fsname;
	int ret = 1, rc;

	fs.uid = getuid();
	fs.gid = getgid();
	pthread_mutex_init(&fs.lock, NULL);
	pthread_mutex_init(&fs.note_lock, NULL);
	pthread_cond_init(&fs.note_wake, NULL);
	fuse_opt_add_arg(&fargs, argv[0]);
	if (a->debug)
		fuse_opt_add_arg(&fargs, "-d");
	/*
	 * The account as the source, so df, mount and findmnt name it,
	 * as sshfs does. default_permissions always: the kernel checks
	 * the modes (0600, 0700, ours), so allow_other shows the tree to
	 * others without handing them the mail.
	 */
	fsname = fsname_opt(a);
	fuse_opt_add_arg(&fargs, "-o");
	fuse_opt_add_arg(&fargs, fsname);
	fuse_opt_add_arg(&fargs, "-o");
	fuse_opt_add_arg(&fargs, "subtype=convoyfs,default_permissions");
	if (a->allow_other) {
		fuse_opt_add_arg(&fargs, "-o");
		fuse_opt_add_arg(&fargs, "allow_other");
	}
	if (a->ro) {
		fuse_opt_add_arg(&fargs, "-o");
		fuse_opt_add_arg(&fargs, "ro");
	}
	free(fsname);

	se = fuse_session_new(&fargs, &fs_ops, sizeof(fs_ops), &fs);
	if (!se)
		goto out_args;
	rc = stopper_init(&sp, sync);
	if (rc) {
		fprintf(stderr, "convoyfs: cannot make a pipe: %s\n",
			strerror(-rc));
		goto out_session;
	}
	/* ours, not fuse_set_signal_handlers(): a signal must also stop
	 * the sync, which holds reads the loop waits for */
	stop_se = se;
	stop_wake = sp.pipe[1];
	install_handlers();
	if (fuse_session_mount(se, a->mountpoint)) {
		fprintf(stderr, "convoyfs: cannot mount on %s\n",
			a->mountpoint);
		goto out_stopper;
	}
	fs.mounted_at = time(NULL);
	if (a->foreground)
		fprintf(stderr, "convoyfs: %s@%s mounted on %s\n", a->cfg.user,
			a->cfg.host, a->mountpoint);
	fuse_daemonize(a->foreground);
	if (!a->foreground)
		log_set_syslog(true);

	fs.se = se;
	/*
	 * Every thread but this one blocks the stop signals: the notifier,
	 * the sync's threads (made now, or later by these) and the stopper
	 * inherit the mask; libfuse's workers block them themselves. A
	 * signal that another thread took would set libfuse's flag and
	 * wake nobody: the loop would wait on until the next request.
	 */
	sigemptyset(&quiet);
	for (size_t i = 0; i < NSTOP; i++)
		sigaddset(&quiet, stop_signals[i]);
	pthread_sigmask(SIG_BLOCK, &quiet, &old);
	if (!pthread_create(&fs.notifier, NULL, notifier_main, &fs))
		fs.notifier_started = true;
	/* -d fills the terminal with FUSE's requests: no progress line */
	if (a->foreground && !a->debug)
		progress_start(&fs);
	sync_set_changed(sync, on_change, &fs);
	rc = sync_start(sync);
	if (!rc) {
		/* after sync_start: the stopper must not stop a sync that
		 * is still starting. The main thread, after the fork. */
		sp.main = pthread_self();
		rc = -pthread_create(&sp.thread, NULL, stopper_main, &sp);
		if (rc)
			sync_stop(sync);
		sp.started = !rc;
	}
	/* a signal that came meanwhile is taken here */
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc) {
		log_error("cannot start the sync: %s", strerror(-rc));
		goto out_unmount;
	}

	lc = fuse_loop_cfg_create();
	fuse_loop_cfg_set_max_threads(lc, 16);
	rc = fuse_session_loop_mt(se, lc);
	fuse_loop_cfg_destroy(lc);
	progress_stop();
	/* a stop that was asked for, by a signal or an unmount, is no
	 * failure */
	ret = atomic_load(&stop_signal) || !rc ? 0 : 1;
	if (!stop_sync(&sp)) {
		log_warn("the sync did not stop within %d ms (a network wait): "
			 "leaving without it",
			 STOP_GRACE_MS);
		stop_notifier(&fs);
		fuse_session_unmount(se);
		/* the sync's threads still run: no teardown may free what
		 * they use, and exit() would run atexit handlers (OpenSSL's)
		 * under their feet */
		_exit(ret);
	}
out_unmount:
	progress_stop();
	stop_notifier(&fs);
	fuse_session_unmount(se);
out_stopper:
	stopper_destroy(&sp);
out_session:
	fuse_session_destroy(se);
out_args:
	fuse_opt_free_args(&fargs);
	control_forget_open(&fs);
	tree_put(fs.tree);
	free(fs.stamps);
	for (size_t i = 0; i < fs.npool; i++)
		store_close(fs.pool[i]);
	pthread_mutex_destroy(&fs.lock);
	pthread_mutex_destroy(&fs.note_lock);
	pthread_cond_destroy(&fs.note_wake);
	return ret;
}
