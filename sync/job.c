/*
 * job.c - the sync thread's job queue (DESIGN §2): parents and children
 * counted by a waiter, cancellation that waits for the job to stop, and a
 * shutdown that refuses new work out loud.
 *
 * Every field below the lock is guarded by it; a run or free function is
 * never called with it held (it could submit, cancel, or free a job). So
 * the queue's references on jobs it drops under the lock are collected on
 * a reap list and dropped after unlocking.
 */
#include "job.h"

#define LOG_CAT "sync"
#include "common.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum job_state {
	JOB_QUEUED, /* on the run queue, or held until its parent ran */
	JOB_RUNNING,
	JOB_RAN, /* run function returned; children outstanding */
	JOB_DONE, /* the waiter reached 0 */
};

struct job_list {
	struct job *head, *tail;
};

struct job {
	atomic_uint refs;
	atomic_bool cancelled;
	char *name; /* owned */
	job_run_fn *run;
	job_free_fn *free_fn;
	void *arg; /* owned: free_fn(arg) when the last ref goes */
	struct job_queue *q; /* borrowed: the queue it was submitted to */
	bool front; /* submitted with jobq_submit_front */

	/* guarded by q->lock */
	enum job_state state;
	unsigned outstanding; /* 1 until run returned, +1 per child not done */
	int result; /* first error of this job or a descendant */
	struct job *parent; /* counted parent, or NULL; holds a ref on it */
	struct job_list *on; /* the list it is queued on, or NULL */
	struct job *prev, *next; /* on *on, or the reap list */
	struct job_list held; /* children queued before this job ran */
	struct job *first_child; /* children not done, for cancel */
	struct job *sib_prev, *sib_next;
};

struct job_queue {
	pthread_mutex_t lock; /* a leaf: nothing is locked while held */
	pthread_cond_t work; /* runner: a job was queued, a wake, shutdown */
	pthread_cond_t changed; /* a job finished or a run function returned */
	struct job_list queue; /* runnable now */
	struct job *running; /* borrowed, or NULL */
	pthread_t runner; /* valid while running != NULL */
	size_t pending; /* queued (held included) + running */
	bool woken;
	bool shutting_down;
};

/* ---- lists ---- */

static void list_append(struct job_list *l, struct job *j)
{
	j->prev = l->tail;
	j->next = NULL;
	if (l->tail)
		l->tail->next = j;
	else
		l->head = j;
	l->tail = j;
	j->on = l;
}

static void list_prepend(struct job_list *l, struct job *j)
{
	j->prev = NULL;
	j->next = l->head;
	if (l->head)
		l->head->prev = j;
	else
		l->tail = j;
	l->head = j;
	j->on = l;
}

static void list_remove(struct job *j)
{
	struct job_list *l = j->on;

	if (j->prev)
		j->prev->next = j->next;
	else
		l->head = j->next;
	if (j->next)
		j->next->prev = j->prev;
	else
		l->tail = j->prev;
	j->prev = j->next = NULL;
	j->on = NULL;
}

static void child_link(struct job *parent, struct job *c)
{
	c->sib_prev = NULL;
	c->sib_next = parent->first_child;
	if (parent->first_child)
		parent->first_child->sib_prev = c;
	parent->first_child = c;
}

static void child_unlink(struct job *parent, struct job *c)
{
	if (c->sib_prev)
		c->sib_prev->sib_next = c->sib_next;
	else
		parent->first_child = c->sib_next;
	if (c->sib_next)
		c->sib_next->sib_prev = c->sib_prev;
	c->sib_prev = c->sib_next = NULL;
}

/* the queue's reference is dropped after unlocking */
static void reap_push(struct job **reap, struct job *j)
{
	j->next = *reap;
	*reap = j;
}

static void reap_all(struct job *reap)
{
	struct job *next;

	for (; reap; reap = next) {
		next = reap->next;
		job_unref(reap);
	}
}

/* ---- the waiter ---- */

/* Record @rc as the first error of @j and of every ancestor that has
 * none yet: an ancestor with an error already has ancestors with one. */
static void set_result(struct job *j, int rc)
{
	if (!rc)
		return;
	for (; j && !j->result; j = j->parent)
		j->result = rc;
}

/* One unit of @j's outstanding work finished: when the waiter reaches 0
 * the job is done, which is one unit of its parent's. */
static void finish_one(struct job_queue *q, struct job *j)
{
	while (j) {
		struct job *p = j->parent;

		assert(j->outstanding > 0);
		if (--j->outstanding)
			return;
		j->state = JOB_DONE;
		pthread_cond_broadcast(&q->changed);
		if (p)
			child_unlink(p, j);
		/* j->parent stays: j's reference on it is dropped with j */
		j = p;
	}
}

/* Put the children @j held while it was queued or running on the run
 * queue, as if submitted now in the order they were. */
static void release_held(struct job_queue *q, struct job *j)
{
	struct job *c;

	while ((c = j->held.head)) {
		list_remove(c);
		if (c->front)
			list_prepend(&q->queue, c);
		else
			list_append(&q->queue, c);
	}
	if (q->queue.head)
		pthread_cond_signal(&q->work);
}

/* Cancel @j and its descendants: the queued ones leave their lists and
 * count as finished (their queue references go onto @reap); a running one
 * only sees the flag. */
static void cancel_tree(struct job_queue *q, struct job *j, struct job **reap)
{
	struct job *c, *next;
	bool dequeued = false;

	if (j->state == JOB_DONE)
		return;
	atomic_store(&j->cancelled, true);
	/* a queued job's children are all held, so none is running */
	if (j->state == JOB_QUEUED) {
		list_remove(j);
		q->pending--;
		set_result(j, -ECANCELED);
		j->state = JOB_RAN;
		reap_push(reap, j);
		dequeued = true;
	}
	/* finishing a child unlinks only that child from j's list */
	for (c = j->first_child; c; c = next) {
		next = c->sib_next;
		cancel_tree(q, c, reap);
	}
	/* after the children, so that j is not done (and unlinked from its
	 * parent's list, which the caller is walking) while they are not */
	if (dequeued)
		finish_one(q, j);
}

/* true if @j is @anc or one of its descendants not done */
static bool is_within(const struct job *j, const struct job *anc)
{
	for (; j; j = j->parent)
		if (j == anc)
			return true;
	return false;
}

static bool runs_here(struct job_queue *q)
{
	return q->running && pthread_equal(q->runner, pthread_self());
}

/* ---- time ---- */

static void deadline(long long ms, struct timespec *ts)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (ms % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

/* wait on @cv until signalled or @ts (NULL: forever); false on timeout */
static bool cond_wait(pthread_cond_t *cv, pthread_mutex_t *m,
		      const struct timespec *ts)
{
	if (!ts)
		return pthread_cond_wait(cv, m) == 0;
	return pthread_cond_timedwait(cv, m, ts) != ETIMEDOUT;
}

/* ---- the queue ---- */

struct job_queue *jobq_new(void)
{
	struct job_queue *q = xcalloc(1, sizeof(*q));
	pthread_condattr_t ca;

	pthread_mutex_init(&q->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&q->work, &ca);
	pthread_cond_init(&q->changed, &ca);
	pthread_condattr_destroy(&ca);
	return q;
}

void jobq_free(struct job_queue *q)
{
	if (!q)
		return;
	jobq_shutdown(q);
	pthread_mutex_lock(&q->lock);
	assert(!q->running && !q->queue.head && q->pending == 0);
	pthread_mutex_unlock(&q->lock);
	pthread_cond_destroy(&q->work);
	pthread_cond_destroy(&q->changed);
	pthread_mutex_destroy(&q->lock);
	free(q);
}

static int submit(struct job_queue *q, struct job *parent, const char *name,
		  job_run_fn *run, job_free_fn *free_fn, void *arg,
		  struct job **out, bool front)
{
	struct job *j = xcalloc(1, sizeof(*j));
	int rc = 0;

	j->name = xstrdup(name);
	j->run = run;
	j->free_fn = free_fn;
	j->arg = arg;
	j->q = q;
	j->front = front;
	j->outstanding = 1;
	atomic_init(&j->cancelled, false);
	atomic_init(&j->refs, out ? 2 : 1);
	if (out)
		*out = NULL;

	pthread_mutex_lock(&q->lock);
	if (q->shutting_down) {
		rc = -ESHUTDOWN;
		goto out_unlock;
	}
	if (parent) {
		assert(parent->q == q);
		if (atomic_load(&parent->cancelled)) {
			rc = -ECANCELED;
			goto out_unlock;
		}
	}
	q->pending++;
	if (parent && parent->state != JOB_DONE) {
		/* counted in the parent's waiter; our ref keeps it alive */
		job_ref(parent);
		j->parent = parent;
		parent->outstanding++;
		child_link(parent, j);
		if (parent->state == JOB_QUEUED ||
		    parent->state == JOB_RUNNING) {
			list_append(&parent->held, j);
			goto out_unlock;
		}
	}
	if (front)
		list_prepend(&q->queue, j);
	else
		list_append(&q->queue, j);
	pthread_cond_signal(&q->work);
out_unlock:
	pthread_mutex_unlock(&q->lock);
	if (rc) {
		log_debug("cannot queue job %s: %s", name, strerror(-rc));
		/* the only reference: runs free_fn(arg) */
		atomic_store(&j->refs, 1);
		job_unref(j);
		return rc;
	}
	if (out)
		*out = j;
	return 0;
}

int jobq_submit(struct job_queue *q, struct job *parent, const char *name,
		job_run_fn *run, job_free_fn *free_fn, void *arg,
		struct job **out)
{
	return submit(q, parent, name, run, free_fn, arg, out, false);
}

int jobq_submit_front(struct job_queue *q, struct job *parent, const char *name,
		      job_run_fn *run, job_free_fn *free_fn, void *arg,
		      struct job **out)
{
	return submit(q, parent, name, run, free_fn, arg, out, true);
}

int jobq_run_next(struct job_queue *q, long long timeout_ms)
{
	struct timespec ts;
	struct job *j;
	int rc;

	if (timeout_ms > 0)
		deadline(timeout_ms, &ts);
	pthread_mutex_lock(&q->lock);
	assert(!q->running);
	for (;;) {
		/* shutdown cancelled every queued job: nothing is left, and
		 * a wake has nothing to add to that */
		if (q->shutting_down) {
			pthread_mutex_unlock(&q->lock);
			return -ESHUTDOWN;
		}
		if (q->woken) {
			q->woken = false;
			pthread_mutex_unlock(&q->lock);
			return 0;
		}
		if (q->queue.head)
			break;
		if (timeout_ms == 0 ||
		    !cond_wait(&q->work, &q->lock,
			       timeout_ms > 0 ? &ts : NULL)) {
			pthread_mutex_unlock(&q->lock);
			return 0;
		}
	}
	j = q->queue.head;
	list_remove(j);
	j->state = JOB_RUNNING;
	q->running = j;
	q->runner = pthread_self();
	pthread_mutex_unlock(&q->lock);

	log_debug("job %s: running", j->name);
	rc = j->run(j, j->arg);
	if (rc)
		log_debug("job %s: %s", j->name, strerror(-rc));

	pthread_mutex_lock(&q->lock);
	q->running = NULL;
	q->pending--;
	/* a cancelled job may have stopped early: never call that success */
	if (!rc && atomic_load(&j->cancelled))
		rc = -ECANCELED;
	set_result(j, rc);
	j->state = JOB_RAN;
	release_held(q, j);
	finish_one(q, j);
	/* wakes a canceller even if children keep j from being done */
	pthread_cond_broadcast(&q->changed);
	pthread_mutex_unlock(&q->lock);
	job_unref(j); /* the queue's */
	return 1;
}

void jobq_wake(struct job_queue *q)
{
	pthread_mutex_lock(&q->lock);
	q->woken = true;
	pthread_cond_signal(&q->work);
	pthread_mutex_unlock(&q->lock);
}

int jobq_wait(struct job_queue *q, struct job *j, long long timeout_ms)
{
	struct timespec ts;
	int rc;

	assert(j->q == q);
	if (timeout_ms > 0)
		deadline(timeout_ms, &ts);
	pthread_mutex_lock(&q->lock);
	/* the runner waiting forever on work only it can run */
	assert(timeout_ms >= 0 || j->state == JOB_DONE || !runs_here(q));
	while (j->state != JOB_DONE) {
		if (timeout_ms == 0 || !cond_wait(&q->changed, &q->lock,
						  timeout_ms > 0 ? &ts : NULL))
			break;
	}
	if (j->state != JOB_DONE)
		rc = -ETIMEDOUT;
	else if (atomic_load(&j->cancelled))
		rc = -ECANCELED;
	else
		rc = j->result;
	pthread_mutex_unlock(&q->lock);
	return rc;
}

bool job_is_done(struct job_queue *q, struct job *j)
{
	bool done;

	assert(j->q == q);
	pthread_mutex_lock(&q->lock);
	done = j->state == JOB_DONE;
	pthread_mutex_unlock(&q->lock);
	return done;
}

void jobq_cancel(struct job_queue *q, struct job *j)
{
	struct job *reap = NULL;

	assert(j->q == q);
	pthread_mutex_lock(&q->lock);
	if (j->state != JOB_DONE)
		log_debug("job %s: cancelling", j->name);
	/* it would wait for its own run function to return */
	assert(!runs_here(q) || !is_within(q->running, j));
	cancel_tree(q, j, &reap);
	/* Only a running member (and the members it waits on) keeps it
	 * from being done; it can no longer add children. */
	while (j->state != JOB_DONE)
		pthread_cond_wait(&q->changed, &q->lock);
	pthread_mutex_unlock(&q->lock);
	reap_all(reap);
}

bool job_is_cancelled(const struct job *j)
{
	return atomic_load(&j->cancelled);
}

void jobq_shutdown(struct job_queue *q)
{
	struct job *reap = NULL;

	pthread_mutex_lock(&q->lock);
	if (!q->shutting_down)
		log_debug("job queue: shutting down, %zu pending", q->pending);
	q->shutting_down = true;
	/* every job not done is queued, running, held by one of those, or
	 * waiting on children that are */
	while (q->queue.head)
		cancel_tree(q, q->queue.head, &reap);
	if (q->running)
		cancel_tree(q, q->running, &reap);
	pthread_cond_broadcast(&q->work);
	pthread_mutex_unlock(&q->lock);
	reap_all(reap);
}

void job_ref(struct job *j)
{
	atomic_fetch_add(&j->refs, 1);
}

void job_unref(struct job *j)
{
	while (j && atomic_fetch_sub(&j->refs, 1) == 1) {
		struct job *parent = j->parent;

		if (j->free_fn)
			j->free_fn(j->arg);
		free(j->name);
		free(j);
		j = parent; /* the child's reference on it */
	}
}

const char *job_name(const struct job *j)
{
	return j->name;
}

void *job_arg(const struct job *j)
{
	return j->arg;
}

size_t jobq_pending(struct job_queue *q)
{
	size_t n;

	pthread_mutex_lock(&q->lock);
	n = q->pending;
	pthread_mutex_unlock(&q->lock);
	return n;
}
