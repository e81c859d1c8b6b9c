/*
 * test_job.c - unit tests of the job queue (sync/job.c): the waiter that
 * starts at 1, children submitted from the run function and from other
 * threads before and after the parent ran, grandchildren, the first error
 * winning, cancelling queued and running jobs, shutdown, wake, and a
 * multi-threaded stress run. Every argument's free function must run
 * exactly once (counted here; ASan catches leaks and double frees).
 * Exit 0 pass, anything else fail.
 */
#include "job.h"

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

#define CHECK(cond)                                                            \
	do {                                                                   \
		if (!(cond)) {                                                 \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, \
				__LINE__, #cond);                              \
			return 1;                                              \
		}                                                              \
	} while (0)

#define CHECK_RC(expr, want)                                             \
	do {                                                             \
		int rc_ = (expr);                                        \
		if (rc_ != (want)) {                                     \
			fprintf(stderr,                                  \
				"%s:%d: %s returned %d (%s), not %d\n",  \
				__FILE__, __LINE__, #expr, rc_,          \
				strerror(rc_ < 0 ? -rc_ : rc_), (want)); \
			return 1;                                        \
		}                                                        \
	} while (0)

#define MAX_KIDS 4

/* ---- a job argument that records what happened to it ---- */

static atomic_int allocs, frees;

/* the names of the jobs that ran, in order, each followed by a space */
static pthread_mutex_t order_lock = PTHREAD_MUTEX_INITIALIZER;
static char order[1024];

struct targ {
	struct job_queue *q;
	int rc; /* what the run function returns */
	/* children submitted from the run function, just before it returns */
	struct targ *kids[MAX_KIDS]; /* owned until submitted */
	const char *kid_names[MAX_KIDS];
	struct job **kid_refs[MAX_KIDS]; /* where to put a ref, or NULL */
	int *kid_rc; /* where each kid's submit result goes, or NULL */
	sem_t *started; /* posted when the run function starts */
	sem_t *go; /* waited on before returning */
	bool loop; /* loop until cancelled, then take 50 ms more */
	atomic_bool *returned; /* set just before returning */
	atomic_int *runs; /* incremented when the run function starts */
};

static void free_arg(void *p)
{
	struct targ *a = p;
	int i;

	for (i = 0; i < MAX_KIDS; i++)
		if (a->kids[i])
			free_arg(a->kids[i]);
	atomic_fetch_add(&frees, 1);
	free(a);
}

static struct targ *new_arg(struct job_queue *q, int rc)
{
	struct targ *a = xcalloc(1, sizeof(*a));

	a->q = q;
	a->rc = rc;
	atomic_fetch_add(&allocs, 1);
	return a;
}

/* give @a a child named @name returning @rc, submitted from @a's run */
static struct targ *add_kid(struct targ *a, const char *name, int rc,
			    struct job **ref)
{
	int i;

	for (i = 0; a->kids[i]; i++)
		;
	a->kids[i] = new_arg(a->q, rc);
	a->kid_names[i] = name;
	a->kid_refs[i] = ref;
	return a->kids[i];
}

static void log_ran(const char *name)
{
	size_t n;

	pthread_mutex_lock(&order_lock);
	n = strlen(order);
	/* the stress test runs more than fits: keep the start */
	if (n + strlen(name) + 2 <= sizeof(order))
		sprintf(order + n, "%s ", name);
	pthread_mutex_unlock(&order_lock);
}

static bool order_is(const char *want)
{
	bool same;

	pthread_mutex_lock(&order_lock);
	same = !strcmp(order, want);
	if (!same)
		fprintf(stderr, "ran \"%s\", expected \"%s\"\n", order, want);
	pthread_mutex_unlock(&order_lock);
	return same;
}

static int run_rec(struct job *j, void *arg)
{
	struct targ *a = arg;
	int i, rc;

	log_ran(job_name(j));
	if (a->runs)
		atomic_fetch_add(a->runs, 1);
	if (a->started)
		sem_post(a->started);
	if (a->go)
		sem_wait(a->go);
	if (a->loop) {
		while (!job_is_cancelled(j))
			usleep(1000);
		/* a canceller returning now would be caught */
		usleep(50000);
	}
	for (i = 0; i < MAX_KIDS && a->kids[i]; i++) {
		struct targ *k = a->kids[i];

		a->kids[i] = NULL; /* the queue owns it now */
		rc = jobq_submit(a->q, j, a->kid_names[i], run_rec, free_arg, k,
				 a->kid_refs[i]);
		if (a->kid_rc)
			a->kid_rc[i] = rc;
	}
	if (a->returned)
		atomic_store(a->returned, true);
	return a->rc;
}

static int sub(struct job_queue *q, struct job *parent, const char *name,
	       struct targ *a, struct job **out)
{
	return jobq_submit(q, parent, name, run_rec, free_arg, a, out);
}

static void reset(void)
{
	order[0] = '\0';
	atomic_store(&allocs, 0);
	atomic_store(&frees, 0);
}

/* ---- runner threads ---- */

struct runner {
	pthread_t thread;
	struct job_queue *q;
	int jobs; /* how many to run; 0: until -ESHUTDOWN */
	int ran;
	int last_rc;
};

static void *runner_main(void *p)
{
	struct runner *r = p;
	int rc;

	for (;;) {
		rc = jobq_run_next(r->q, -1);
		r->last_rc = rc;
		if (rc < 0)
			break;
		r->ran += rc;
		if (r->jobs && r->ran == r->jobs)
			break;
	}
	return NULL;
}

static void runner_start(struct runner *r, struct job_queue *q, int jobs)
{
	memset(r, 0, sizeof(*r));
	r->q = q;
	r->jobs = jobs;
	if (pthread_create(&r->thread, NULL, runner_main, r)) {
		perror("pthread_create");
		exit(1);
	}
}

/* ---- tests ---- */

static int test_waiter_starts_at_one(void)
{
	struct job_queue *q = jobq_new();
	struct targ *a = new_arg(q, 0);
	struct job *j;
	long long t0;

	CHECK_RC(sub(q, NULL, "a", a, &j), 0);
	CHECK(!strcmp(job_name(j), "a"));
	CHECK(job_arg(j) == a);
	CHECK(!job_is_done(q, j));
	CHECK(!job_is_cancelled(j));
	CHECK(jobq_pending(q) == 1);
	/* not run yet, so not done: the waiter starts at 1, not 0 */
	CHECK_RC(jobq_wait(q, j, 0), -ETIMEDOUT);
	t0 = now_ms();
	CHECK_RC(jobq_wait(q, j, 30), -ETIMEDOUT);
	CHECK(now_ms() - t0 >= 25);

	CHECK_RC(jobq_run_next(q, 0), 1);
	/* no children: done as soon as its run function returned */
	CHECK(job_is_done(q, j));
	CHECK_RC(jobq_wait(q, j, 0), 0);
	CHECK_RC(jobq_wait(q, j, -1), 0);
	CHECK(jobq_pending(q) == 0);
	CHECK_RC(jobq_run_next(q, 0), 0);
	t0 = now_ms();
	CHECK_RC(jobq_run_next(q, 30), 0);
	CHECK(now_ms() - t0 >= 25);
	CHECK(order_is("a "));

	CHECK(atomic_load(&frees) == 0); /* our reference keeps it */
	job_unref(j);
	CHECK(atomic_load(&frees) == 1);
	jobq_shutdown(q);
	jobq_free(q);
	return 0;
}

static int test_fifo_and_front(void)
{
	struct job_queue *q = jobq_new();

	CHECK_RC(sub(q, NULL, "a", new_arg(q, 0), NULL), 0);
	CHECK_RC(sub(q, NULL, "b", new_arg(q, 0), NULL), 0);
	CHECK_RC(sub(q, NULL, "c", new_arg(q, 0), NULL), 0);
	CHECK_RC(jobq_submit_front(q, NULL, "d", run_rec, free_arg,
				   new_arg(q, 0), NULL),
		 0);
	CHECK_RC(jobq_submit_front(q, NULL, "e", run_rec, free_arg,
				   new_arg(q, 0), NULL),
		 0);
	CHECK(jobq_pending(q) == 5);
	while (jobq_run_next(q, 0) == 1)
		;
	CHECK(order_is("e d a b c "));
	CHECK(jobq_pending(q) == 0);
	/* nobody held a reference: each was freed when it finished */
	CHECK(atomic_load(&frees) == 5);
	jobq_shutdown(q);
	jobq_free(q);
	return 0;
}

/* children submitted from inside the parent's run function */
static int test_child_from_run(void)
{
	struct job_queue *q = jobq_new();
	struct targ *p = new_arg(q, 0);
	struct job *pj, *c1, *c2;
	int kid_rc[MAX_KIDS] = { 1, 1 };

	add_kid(p, "c1", 0, &c1);
	add_kid(p, "c2", 0, &c2);
	p->kid_rc = kid_rc;
	CHECK_RC(sub(q, NULL, "p", p, &pj), 0);
	/* queued after p, before p's children exist */
	CHECK_RC(sub(q, NULL, "t", new_arg(q, 0), NULL), 0);

	CHECK_RC(jobq_run_next(q, 0), 1);
	CHECK(kid_rc[0] == 0 && kid_rc[1] == 0);
	/* p ran but its two children did not: 2 outstanding */
	CHECK(!job_is_done(q, pj));
	CHECK_RC(jobq_wait(q, pj, 10), -ETIMEDOUT);
	CHECK(jobq_pending(q) == 3);
	CHECK_RC(jobq_run_next(q, 0), 1); /* t */
	CHECK_RC(jobq_run_next(q, 0), 1); /* c1 */
	CHECK(job_is_done(q, c1));
	CHECK(!job_is_done(q, pj));
	CHECK_RC(jobq_run_next(q, 0), 1); /* c2 */
	CHECK(job_is_done(q, c2));
	CHECK(job_is_done(q, pj));
	CHECK_RC(jobq_wait(q, pj, 0), 0);
	CHECK(order_is("p t c1 c2 "));
	CHECK_RC(jobq_run_next(q, 0), 0);

	job_unref(c1);
	job_unref(c2);
	job_unref(pj);
	jobq_shutdown(q);
	jobq_free(q);
	return 0;
}

/* children submitted by another thread while the parent is queued and
 * while it runs: they run only after it returned, front ones first */
static int test_child_from_other_thread(void)
{
	struct job_queue *q = jobq_new();
	struct targ *p = new_arg(q, 0);
	sem_t started, go;
	struct runner r;
	struct job *pj, *k, *c, *f;

	sem_init(&started, 0, 0);
	sem_init(&go, 0, 0);
	p->started = &started;
	p->go = &go;
	CHECK_RC(sub(q, NULL, "p", p, &pj), 0);
	/* p queued: even at the front, its child waits for it */
	CHECK_RC(jobq_submit_front(q, pj, "k", run_rec, free_arg, new_arg(q, 0),
				   &k),
		 0);

	runner_start(&r, q, 1);
	sem_wait(&started);
	/* p is running on the runner thread; this is another thread */
	CHECK_RC(sub(q, pj, "c", new_arg(q, 0), &c), 0);
	CHECK_RC(jobq_submit_front(q, pj, "f", run_rec, free_arg, new_arg(q, 0),
				   &f),
		 0);
	CHECK(jobq_pending(q) == 4);
	CHECK(!job_is_done(q, pj));
	sem_post(&go);
	pthread_join(r.thread, NULL);
	CHECK(r.ran == 1);

	/* p's run function returned; its three children keep it open */
	CHECK(!job_is_done(q, pj));
	CHECK_RC(jobq_wait(q, pj, 10), -ETIMEDOUT);
	CHECK_RC(jobq_run_next(q, 0), 1);
	CHECK_RC(jobq_run_next(q, 0), 1);
	CHECK(!job_is_done(q, pj));
	CHECK_RC(jobq_run_next(q, 0), 1);
	CHECK(job_is_done(q, pj));
	CHECK_RC(jobq_wait(q, pj, 0), 0);
	CHECK(order_is("p f k c "));

	job_unref(k);
	job_unref(c);
	job_unref(f);
	job_unref(pj);
	jobq_shutdown(q);
	jobq_free(q);
	sem_destroy(&started);
	sem_destroy(&go);
	return 0;
}

struct submitter {
	struct job_queue *q;
	struct job *parent;
	const char *name;
	int rc; /* the job's */
	bool front;
	int submit_rc;
};

static void *submit_main(void *p)
{
	struct submitter *s = p;

	s->submit_rc = (s->front ? jobq_submit_front : jobq_submit)(
		s->q, s->parent, s->name, run_rec, free_arg,
		new_arg(s->q, s->rc), NULL);
	return NULL;
}

static int submit_from_thread(struct submitter *s)
{
	pthread_t t;

	if (pthread_create(&t, NULL, submit_main, s))
		return -errno;
	pthread_join(t, NULL);
	return s->submit_rc;
}

/* a child submitted after the parent ran but while it waits on another
 * child finishes first; one submitted after the parent is done is not
 * counted in it */
static int test_child_after_parent_ran(void)
{
	struct job_queue *q = jobq_new();
	struct targ *p = new_arg(q, 0);
	struct submitter s = { .q = q, .name = "c2", .front = true };
	struct job *pj, *c1;

	add_kid(p, "c1", 0, &c1);
	CHECK_RC(sub(q, NULL, "p", p, &pj), 0);
	CHECK_RC(jobq_run_next(q, 0), 1);
	CHECK(!job_is_done(q, pj));

	s.parent = pj;
	CHECK_RC(submit_from_thread(&s), 0);
	CHECK(jobq_pending(q) == 2);
	CHECK_RC(jobq_run_next(q, 0), 1); /* c2, at the front */
	CHECK(!job_is_done(q, pj)); /* c1 still outstanding */
	CHECK(!job_is_done(q, c1));
	CHECK_RC(jobq_run_next(q, 0), 1); /* c1 */
	CHECK(job_is_done(q, pj));
	CHECK_RC(jobq_wait(q, pj, 0), 0);

	/* p is done: a late child runs on its own and cannot reopen p or
	 * change its result */
	s.name = "late";
	s.rc = -EIO;
	s.front = false;
	CHECK_RC(submit_from_thread(&s), 0);
	CHECK(job_is_done(q, pj));
	CHECK_RC(jobq_run_next(q, 0), 1);
	CHECK_RC(jobq_wait(q, pj, 0), 0);
	CHECK(order_is("p c2 c1 late "));

	job_unref(c1);
	job_unref(pj);
	jobq_shutdown(q);
	jobq_free(q);
	return 0;
}

static int test_grandchild(void)
{
	struct job_queue *q = jobq_new();
	struct targ *p = new_arg(q, 0);
	struct targ *c;
	struct job *pj, *cj, *gj;

	c = add_kid(p, "c", 0, &cj);
	add_kid(c, "g", -EIO, &gj);
	CHECK_RC(sub(q, NULL, "p", p, &pj), 0);

	CHECK_RC(jobq_run_next(q, 0), 1);
	CHECK(!job_is_done(q, pj));
	CHECK_RC(jobq_run_next(q, 0), 1);
	CHECK(!job_is_done(q, cj));
	CHECK(!job_is_done(q, pj));
	CHECK(jobq_pending(q) == 1);
	CHECK_RC(jobq_run_next(q, 0), 1);
	CHECK(job_is_done(q, gj));
	CHECK(job_is_done(q, cj));
	CHECK(job_is_done(q, pj));
	/* the grandchild's error reaches both ancestors */
	CHECK_RC(jobq_wait(q, gj, 0), -EIO);
	CHECK_RC(jobq_wait(q, cj, 0), -EIO);
	CHECK_RC(jobq_wait(q, pj, 0), -EIO);
	CHECK(order_is("p c g "));

	/* drop the parent first: the children's references keep it */
	job_unref(pj);
	job_unref(cj);
	CHECK(atomic_load(&frees) == 0);
	job_unref(gj);
	CHECK(atomic_load(&frees) == 3);
	jobq_shutdown(q);
	jobq_free(q);
	return 0;
}

static int test_first_error(void)
{
	struct job_queue *q = jobq_new();
	struct targ *p;
	struct job *pj, *c2;

	/* the children's errors: the first to happen wins */
	p = new_arg(q, 0);
	add_kid(p, "c1", 0, NULL);
	add_kid(p, "c2", -EPERM, &c2);
	add_kid(p, "c3", -EIO, NULL);
	CHECK_RC(sub(q, NULL, "p", p, &pj), 0);
	while (jobq_run_next(q, 0) == 1)
		;
	CHECK_RC(jobq_wait(q, pj, 0), -EPERM);
	CHECK_RC(jobq_wait(q, c2, 0), -EPERM);
	job_unref(pj);
	job_unref(c2);

	/* the parent's own error came first */
	p = new_arg(q, -ENOENT);
	add_kid(p, "c1", -EIO, NULL);
	CHECK_RC(sub(q, NULL, "p", p, &pj), 0);
	while (jobq_run_next(q, 0) == 1)
		;
	CHECK_RC(jobq_wait(q, pj, 0), -ENOENT);
	job_unref(pj);

	/* a's error came first, though a's subtree finishes after b */
	p = new_arg(q, 0);
	add_kid(add_kid(p, "a", -EXDEV, NULL), "a1", 0, NULL);
	add_kid(p, "b", -EBUSY, NULL);
	CHECK_RC(sub(q, NULL, "p", p, &pj), 0);
	while (jobq_run_next(q, 0) == 1)
		;
	CHECK(order_is("p c1 c2 c3 p c1 p a b a1 "));
	CHECK_RC(jobq_wait(q, pj, 0), -EXDEV);
	job_unref(pj);

	jobq_shutdown(q);
	jobq_free(q);
	CHECK(atomic_load(&frees) == atomic_load(&allocs));
	return 0;
}

static int test_cancel_queued(void)
{
	struct job_queue *q = jobq_new();
	struct targ *a = new_arg(q, 0);
	atomic_int a_runs = 0, k_runs = 0;
	struct targ *k = new_arg(q, 0);
	struct job *aj, *bj, *kj, *x = (struct job *)1;

	a->runs = &a_runs;
	k->runs = &k_runs;
	CHECK_RC(sub(q, NULL, "a", a, &aj), 0);
	CHECK_RC(sub(q, NULL, "b", new_arg(q, 0), &bj), 0);
	CHECK_RC(sub(q, aj, "k", k, &kj), 0); /* held until a runs */
	CHECK(jobq_pending(q) == 3);

	jobq_cancel(q, aj);
	CHECK(job_is_cancelled(aj));
	CHECK(job_is_cancelled(kj)); /* children of a cancelled job too */
	CHECK(!job_is_cancelled(bj));
	CHECK(job_is_done(q, aj));
	CHECK(job_is_done(q, kj));
	CHECK_RC(jobq_wait(q, aj, 0), -ECANCELED);
	CHECK_RC(jobq_wait(q, kj, 0), -ECANCELED);
	CHECK(jobq_pending(q) == 1);
	/* again: nothing changes */
	jobq_cancel(q, aj);
	CHECK_RC(jobq_wait(q, aj, 0), -ECANCELED);

	/* a cancelled parent takes no more children, and frees their arg */
	CHECK_RC(sub(q, aj, "late", new_arg(q, 0), &x), -ECANCELED);
	CHECK(x == NULL);
	CHECK(atomic_load(&frees) == 1);

	CHECK_RC(jobq_run_next(q, 0), 1);
	CHECK_RC(jobq_run_next(q, 0), 0);
	CHECK(order_is("b "));
	CHECK(atomic_load(&a_runs) == 0 && atomic_load(&k_runs) == 0);

	/* cancelling a finished job leaves its result */
	jobq_cancel(q, bj);
	CHECK(!job_is_cancelled(bj));
	CHECK_RC(jobq_wait(q, bj, 0), 0);

	/* k's reference on a keeps a alive after ours is gone */
	job_unref(aj);
	CHECK(atomic_load(&frees) == 1);
	job_unref(kj);
	CHECK(atomic_load(&frees) == 3);
	job_unref(bj);
	CHECK(atomic_load(&frees) == 4);
	jobq_shutdown(q);
	jobq_free(q);
	CHECK(atomic_load(&frees) == atomic_load(&allocs));
	return 0;
}

static int test_cancel_running(void)
{
	struct job_queue *q = jobq_new();
	struct targ *l = new_arg(q, 0);
	atomic_bool returned = false;
	atomic_int c_runs = 0, late_runs = 0;
	int kid_rc[MAX_KIDS] = { 1 };
	struct targ *c = new_arg(q, 0);
	struct job *lj, *cj;
	struct runner r;
	sem_t started;

	sem_init(&started, 0, 0);
	l->started = &started;
	l->loop = true;
	l->returned = &returned;
	l->kid_rc = kid_rc;
	add_kid(l, "late", 0, NULL)->runs = &late_runs;
	c->runs = &c_runs;
	CHECK_RC(sub(q, NULL, "l", l, &lj), 0);

	runner_start(&r, q, 0);
	sem_wait(&started);
	CHECK_RC(sub(q, lj, "c", c, &cj), 0); /* held while l runs */
	jobq_cancel(q, lj);
	/* l polls with 1 ms sleeps, then takes 50 ms more to return */
	CHECK(atomic_load(&returned));
	CHECK(job_is_done(q, lj));
	CHECK_RC(jobq_wait(q, lj, 0), -ECANCELED);
	CHECK_RC(jobq_wait(q, cj, 0), -ECANCELED);
	CHECK(kid_rc[0] == -ECANCELED); /* submitted after cancellation */
	CHECK(jobq_pending(q) == 0);

	jobq_shutdown(q);
	pthread_join(r.thread, NULL);
	CHECK(r.ran == 1);
	CHECK_RC(r.last_rc, -ESHUTDOWN);
	CHECK(atomic_load(&c_runs) == 0 && atomic_load(&late_runs) == 0);
	CHECK(order_is("l "));
	job_unref(cj);
	job_unref(lj);
	jobq_free(q);
	CHECK(atomic_load(&frees) == atomic_load(&allocs));
	sem_destroy(&started);
	return 0;
}

/* cancelling a parent whose run function returned waits for the child
 * that is running, and its queued children never run */
static int test_cancel_running_child(void)
{
	struct job_queue *q = jobq_new();
	struct targ *p = new_arg(q, 0);
	struct targ *c1;
	atomic_bool returned = false;
	atomic_int c2_runs = 0;
	struct job *pj, *c1j, *c2j;
	struct runner r;
	sem_t started;

	sem_init(&started, 0, 0);
	c1 = add_kid(p, "c1", 0, &c1j);
	c1->started = &started;
	c1->loop = true;
	c1->returned = &returned;
	add_kid(p, "c2", 0, &c2j)->runs = &c2_runs;
	CHECK_RC(sub(q, NULL, "p", p, &pj), 0);

	runner_start(&r, q, 0);
	sem_wait(&started); /* p ran, c1 runs, c2 is queued */
	CHECK(!job_is_done(q, pj));
	jobq_cancel(q, pj);
	CHECK(atomic_load(&returned));
	CHECK(job_is_done(q, pj));
	CHECK(job_is_cancelled(c1j) && job_is_cancelled(c2j));
	CHECK_RC(jobq_wait(q, pj, 0), -ECANCELED);
	/* c1 returned 0 after being cancelled: not counted as success */
	CHECK_RC(jobq_wait(q, c1j, 0), -ECANCELED);
	CHECK_RC(jobq_wait(q, c2j, 0), -ECANCELED);

	jobq_shutdown(q);
	pthread_join(r.thread, NULL);
	CHECK_RC(r.last_rc, -ESHUTDOWN);
	CHECK(atomic_load(&c2_runs) == 0);
	CHECK(order_is("p c1 "));
	job_unref(pj);
	job_unref(c1j);
	job_unref(c2j);
	jobq_free(q);
	CHECK(atomic_load(&frees) == atomic_load(&allocs));
	sem_destroy(&started);
	return 0;
}

static int test_shutdown(void)
{
	struct job_queue *q = jobq_new();
	struct job *aj, *bj, *kj, *x = (struct job *)1;
	int before;

	CHECK_RC(sub(q, NULL, "a", new_arg(q, 0), &aj), 0);
	CHECK_RC(sub(q, NULL, "b", new_arg(q, 0), &bj), 0);
	CHECK_RC(sub(q, bj, "k", new_arg(q, 0), &kj), 0);

	jobq_shutdown(q);
	CHECK(jobq_pending(q) == 0);
	CHECK(job_is_done(q, aj) && job_is_done(q, bj) && job_is_done(q, kj));
	CHECK_RC(jobq_wait(q, aj, -1), -ECANCELED);
	CHECK_RC(jobq_wait(q, kj, -1), -ECANCELED);

	/* refused out loud, and the argument is freed at once */
	before = atomic_load(&frees);
	CHECK_RC(sub(q, NULL, "c", new_arg(q, 0), &x), -ESHUTDOWN);
	CHECK(x == NULL);
	CHECK(atomic_load(&frees) == before + 1);
	CHECK_RC(jobq_submit_front(q, NULL, "d", run_rec, free_arg,
				   new_arg(q, 0), NULL),
		 -ESHUTDOWN);
	CHECK_RC(sub(q, aj, "e", new_arg(q, 0), NULL), -ESHUTDOWN);
	CHECK(atomic_load(&frees) == before + 3);

	/* nothing left to run: no waiting, even forever */
	CHECK_RC(jobq_run_next(q, -1), -ESHUTDOWN);
	CHECK_RC(jobq_run_next(q, 0), -ESHUTDOWN);
	jobq_wake(q);
	CHECK_RC(jobq_run_next(q, -1), -ESHUTDOWN);
	jobq_shutdown(q);
	CHECK_RC(jobq_run_next(q, 100), -ESHUTDOWN);
	CHECK(order_is(""));

	jobq_free(q);
	/* references outlive the queue */
	CHECK(!strcmp(job_name(kj), "k"));
	job_unref(aj);
	job_unref(bj);
	job_unref(kj);
	CHECK(atomic_load(&frees) == atomic_load(&allocs));
	return 0;
}

/* shutdown while a job runs: it sees cancellation, the runner then gets
 * -ESHUTDOWN, and what was queued behind it never runs */
static int test_shutdown_running(void)
{
	struct job_queue *q = jobq_new();
	struct targ *l = new_arg(q, 0);
	atomic_bool returned = false;
	struct runner r;
	sem_t started;
	struct job *lj;

	sem_init(&started, 0, 0);
	l->started = &started;
	l->loop = true;
	l->returned = &returned;
	CHECK_RC(sub(q, NULL, "l", l, &lj), 0);
	CHECK_RC(sub(q, NULL, "behind", new_arg(q, 0), NULL), 0);
	runner_start(&r, q, 0);
	sem_wait(&started);
	jobq_shutdown(q);
	CHECK(job_is_cancelled(lj));
	CHECK_RC(jobq_wait(q, lj, -1), -ECANCELED);
	CHECK(atomic_load(&returned));
	pthread_join(r.thread, NULL);
	CHECK(r.ran == 1);
	CHECK_RC(r.last_rc, -ESHUTDOWN);
	CHECK(order_is("l "));
	job_unref(lj);
	jobq_free(q);
	CHECK(atomic_load(&frees) == atomic_load(&allocs));
	sem_destroy(&started);
	return 0;
}

struct waiting_runner {
	struct job_queue *q;
	int rc;
	long long ms;
};

static void *wait_5s(void *p)
{
	struct waiting_runner *w = p;
	long long t0 = now_ms();

	w->rc = jobq_run_next(w->q, 5000);
	w->ms = now_ms() - t0;
	return NULL;
}

static int test_wake(void)
{
	struct job_queue *q = jobq_new();
	struct waiting_runner w = { .q = q, .rc = 1 };
	pthread_t t;
	long long t0;

	/* a waiting runner returns 0 at once */
	CHECK(pthread_create(&t, NULL, wait_5s, &w) == 0);
	usleep(20000);
	jobq_wake(q);
	pthread_join(t, NULL);
	CHECK_RC(w.rc, 0);
	CHECK(w.ms < 2500);
	jobq_shutdown(q);
	jobq_free(q);

	/* a wake before the call is kept for it, once */
	q = jobq_new();
	CHECK_RC(sub(q, NULL, "a", new_arg(q, 0), NULL), 0);
	jobq_wake(q);
	t0 = now_ms();
	CHECK_RC(jobq_run_next(q, -1), 0);
	CHECK(now_ms() - t0 < 1000);
	CHECK(order_is(""));
	CHECK_RC(jobq_run_next(q, -1), 1);
	CHECK_RC(jobq_run_next(q, 0), 0);
	CHECK(order_is("a "));
	jobq_shutdown(q);
	jobq_free(q);
	return 0;
}

/* a queue freed with work in it frees that work */
static int test_free_with_queued(void)
{
	struct job_queue *q = jobq_new();
	struct job *aj;

	CHECK_RC(sub(q, NULL, "a", new_arg(q, 0), &aj), 0);
	CHECK_RC(sub(q, aj, "k", new_arg(q, 0), NULL), 0);
	CHECK_RC(sub(q, NULL, "b", new_arg(q, 0), NULL), 0);
	jobq_free(q);
	CHECK(atomic_load(&frees) == 2); /* b, and k */
	job_unref(aj);
	CHECK(atomic_load(&frees) == 3);
	CHECK(order_is(""));
	return 0;
}

/* ---- stress: submitters, cancellers, one runner ---- */

#define STRESS_THREADS 4
#define STRESS_JOBS 150

struct stresser {
	pthread_t thread;
	struct job_queue *q;
	int id;
	int failed;
};

static int stress_expect(int i)
{
	if (i % 5 == 0)
		return -EIO; /* the parent's own, first */
	if (i % 3 == 0)
		return -EPERM; /* its second child's */
	return 0;
}

static void *stress_main(void *p)
{
	struct stresser *s = p;
	struct job *jobs[STRESS_JOBS];
	char name[32];
	int i, rc;

	for (i = 0; i < STRESS_JOBS; i++) {
		struct targ *a = new_arg(s->q, i % 5 == 0 ? -EIO : 0);

		add_kid(a, "k0", 0, NULL);
		add_kid(a, "k1", i % 3 == 0 ? -EPERM : 0, NULL);
		snprintf(name, sizeof(name), "s%d.%d", s->id, i);
		if (jobq_submit(s->q, NULL, name, run_rec, free_arg, a,
				&jobs[i])) {
			s->failed = __LINE__;
			return NULL;
		}
		/* a child from this thread: counted, or top level if the
		 * parent is done already */
		if (i % 4 == 0 &&
		    jobq_submit(s->q, jobs[i], "x", run_rec, free_arg,
				new_arg(s->q, 0), NULL)) {
			s->failed = __LINE__;
			return NULL;
		}
		if (i % 7 == 0 && i > 0)
			jobq_cancel(s->q, jobs[i - 1]);
	}
	for (i = 0; i < STRESS_JOBS; i++) {
		rc = jobq_wait(s->q, jobs[i], -1);
		if (job_is_cancelled(jobs[i]) ? rc != -ECANCELED :
						rc != stress_expect(i)) {
			fprintf(stderr, "job %s: %d\n", job_name(jobs[i]), rc);
			s->failed = __LINE__;
		}
		job_unref(jobs[i]);
	}
	return NULL;
}

static int test_stress(void)
{
	struct job_queue *q = jobq_new();
	struct stresser s[STRESS_THREADS];
	struct runner r;
	int i, failed = 0;

	runner_start(&r, q, 0);
	for (i = 0; i < STRESS_THREADS; i++) {
		s[i] = (struct stresser){ .q = q, .id = i };
		pthread_create(&s[i].thread, NULL, stress_main, &s[i]);
	}
	for (i = 0; i < STRESS_THREADS; i++) {
		pthread_join(s[i].thread, NULL);
		if (s[i].failed) {
			fprintf(stderr, "stresser %d failed at line %d\n", i,
				s[i].failed);
			failed = 1;
		}
	}
	CHECK(!failed);
	CHECK(jobq_pending(q) == 0);
	jobq_shutdown(q);
	pthread_join(r.thread, NULL);
	CHECK_RC(r.last_rc, -ESHUTDOWN);
	jobq_free(q);
	CHECK(atomic_load(&frees) == atomic_load(&allocs));
	return 0;
}

/* ---- broken invariants abort ---- */

static int cancel_self(struct job *j, void *arg)
{
	jobq_cancel(arg, j);
	return 0;
}

static int wait_self(struct job *j, void *arg)
{
	return jobq_wait(arg, j, -1);
}

/* run @fn as a job in a child process; true if the child aborted */
static bool aborts(job_run_fn *fn)
{
	pid_t pid;
	int status;

	fflush(stderr);
	pid = fork();
	if (pid < 0)
		return false;
	if (pid == 0) {
		struct job_queue *q = jobq_new();

		/* the assertion message is expected: keep the log clean */
		if (!freopen("/dev/null", "w", stderr))
			_exit(3);
		jobq_submit(q, NULL, "self", fn, NULL, q, NULL);
		jobq_run_next(q, 0);
		_exit(0);
	}
	if (waitpid(pid, &status, 0) != pid)
		return false;
	return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

static int test_deadlock_asserted(void)
{
#ifdef NDEBUG
	fprintf(stderr, "skipped: assertions compiled out\n");
	return 0;
#else
	CHECK(aborts(cancel_self));
	CHECK(aborts(wait_self));
	return 0;
#endif
}

static const struct {
	const char *name;
	int (*fn)(void);
} tests[] = {
	{ "waiter_starts_at_one", test_waiter_starts_at_one },
	{ "fifo_and_front", test_fifo_and_front },
	{ "child_from_run", test_child_from_run },
	{ "child_from_other_thread", test_child_from_other_thread },
	{ "child_after_parent_ran", test_child_after_parent_ran },
	{ "grandchild", test_grandchild },
	{ "first_error", test_first_error },
	{ "cancel_queued", test_cancel_queued },
	{ "cancel_running", test_cancel_running },
	{ "cancel_running_child", test_cancel_running_child },
	{ "shutdown", test_shutdown },
	{ "shutdown_running", test_shutdown_running },
	{ "wake", test_wake },
	{ "free_with_queued", test_free_with_queued },
	{ "stress", test_stress },
	{ "deadlock_asserted", test_deadlock_asserted },
};

int main(int argc, char **argv)
{
	size_t i;
	int failed = 0;

	for (i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
		if (argc > 1 && strcmp(argv[1], tests[i].name))
			continue;
		reset();
		if (tests[i].fn()) {
			fprintf(stderr, "FAIL %s\n", tests[i].name);
			failed++;
		} else if (atomic_load(&frees) != atomic_load(&allocs)) {
			fprintf(stderr, "FAIL %s: %d arguments, %d freed\n",
				tests[i].name, atomic_load(&allocs),
				atomic_load(&frees));
			failed++;
		} else {
			fprintf(stderr, "ok   %s\n", tests[i].name);
		}
	}
	return failed ? 1 : 0;
}
