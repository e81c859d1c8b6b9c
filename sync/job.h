/*
 * job.h - the sync thread's job queue (DESIGN §2). A job may spawn
 * children (a folder refresh spawns message syncs); its waiter counts
 * outstanding work starting at 1 for the job itself, adds 1 per child and
 * reaches 0 only when the job and every descendant finished. Cancelling
 * waits until the job has really stopped, so no state is half-bookmarked.
 * A job that cannot be queued because shutdown began says so.
 *
 * One thread (the sync thread) runs jobs with jobq_run_next(); any thread
 * may submit, wait, cancel or shut down.
 */
#ifndef CONVOY_JOB_H
#define CONVOY_JOB_H

#include <stdbool.h>
#include <stddef.h>

struct job;
struct job_queue;

/* runs on the runner thread without the queue's lock; returns 0 or -errno.
 * Long work polls job_is_cancelled() between batches. */
typedef int job_run_fn(struct job *j, void *arg);
/* frees a job's @arg when the job's last reference is dropped */
typedef void job_free_fn(void *arg);

/*
 * jobq_new - an empty queue. Never NULL (allocation aborts).
 */
struct job_queue *jobq_new(void);

/*
 * jobq_free - free @q. Call after the runner stopped calling
 * jobq_run_next(), normally after jobq_shutdown(); if shutdown was not
 * begun this begins it, so every job still queued is cancelled and the
 * queue's references dropped (their free functions run here unless the
 * caller still holds references). Jobs the caller still references stay
 * valid for job_name(), job_arg() and job_unref() only. NULL is a no-op.
 */
void jobq_free(struct job_queue *q);

/*
 * jobq_submit - queue a job running @run(job, @arg) as a child of @parent
 * (NULL: top level). @name is copied (for logs and the status file).
 * Takes ownership of @arg: @free_fn(@arg) (if not NULL) runs when the job's
 * last reference is dropped, or before this returns if it fails.
 *
 * A child submitted before @parent finished (from inside the parent's run
 * function, or from another thread while the parent is queued, running,
 * or waiting on its other children) is counted in the parent's waiter and
 * runs only after the parent's run function returned; children run in
 * submission order among themselves, top-level jobs too. A child submitted
 * after @parent finished is not counted and runs as a top-level job.
 *
 * Returns 0, -ESHUTDOWN once jobq_shutdown() has begun, or -ECANCELED if
 * @parent was cancelled. On success and if @out is not NULL, *@out holds a
 * reference the caller drops with job_unref(); on failure *@out is NULL.
 * Thread: any, including a run function.
 */
int jobq_submit(struct job_queue *q, struct job *parent, const char *name,
		job_run_fn *run, job_free_fn *free_fn, void *arg,
		struct job **out);

/*
 * jobq_submit_front - as jobq_submit(), but for urgent work: the job goes
 * to the head of the queue (the last one submitted this way runs first).
 * A child still waits for its parent's run function to return, and then
 * goes ahead of everything queued at that moment.
 */
int jobq_submit_front(struct job_queue *q, struct job *parent, const char *name,
		      job_run_fn *run, job_free_fn *free_fn, void *arg,
		      struct job **out);

/*
 * jobq_run_next - the runner: take the next queued job and run it, waiting
 * up to @timeout_ms for one (<0: forever, 0: do not wait).
 *
 * Returns 1 if a job ran, 0 on timeout or after jobq_wake(), or -ESHUTDOWN
 * once jobq_shutdown() began and nothing is left to run. The job's result
 * is not returned here: jobq_wait() has it. Thread: the runner only (one
 * thread at a time).
 */
int jobq_run_next(struct job_queue *q, long long timeout_ms);

/*
 * jobq_wake - make the runner's jobq_run_next() return 0 at once (so it
 * can look at its own state). A wake while the runner is not waiting is
 * kept for its next call, so none is lost. Thread: any.
 */
void jobq_wake(struct job_queue *q);

/*
 * jobq_wait - wait until @j and all its descendants finished (its waiter
 * reached 0), up to @timeout_ms (<0: forever, 0: just look).
 *
 * Returns -ECANCELED if @j was cancelled, else the first non-zero result
 * of @j or any descendant (a cancelled descendant counts as -ECANCELED),
 * 0 if all succeeded, or -ETIMEDOUT. Thread: any holding a reference on
 * @j; a run function must not wait forever on a job not done (the runner
 * is itself: asserted).
 */
int jobq_wait(struct job_queue *q, struct job *j, long long timeout_ms);

/* job_is_done - true once @j and all its descendants finished. */
bool job_is_done(struct job_queue *q, struct job *j);

/*
 * jobq_cancel - cancel @j and its descendants. Queued ones are removed
 * without running (they count as finished with -ECANCELED); a running one
 * sees job_is_cancelled() become true, and this returns only once it has
 * returned from its run function, when @j is done. A job that already
 * finished is left alone. Thread: any; from the runner thread (a run
 * function) only for a job that does not contain the running one, as that
 * would wait on itself (asserted).
 */
void jobq_cancel(struct job_queue *q, struct job *j);

/* job_is_cancelled - true once @j (or an ancestor, or the queue) was
 * cancelled. Cheap (atomic), for run functions to poll between batches. */
bool job_is_cancelled(const struct job *j);

/*
 * jobq_shutdown - from now on every submit returns -ESHUTDOWN, every
 * queued job is cancelled, the running one sees job_is_cancelled(), and
 * jobq_run_next() returns -ESHUTDOWN once nothing is left to run. Does not
 * wait for the running job (so a run function may call it). Idempotent.
 * Thread: any.
 */
void jobq_shutdown(struct job_queue *q);

/* job_ref, job_unref - take and drop a reference. The last job_unref runs
 * the job's free function; call it without holding locks that function
 * needs. */
void job_ref(struct job *j);
void job_unref(struct job *j);

/* job_name - the name given at submit; valid while @j is referenced. */
const char *job_name(const struct job *j);
/* job_arg - the @arg given at submit; borrowed. */
void *job_arg(const struct job *j);

/* jobq_pending - queued plus running jobs (children waiting for their
 * parent included), for the status file. */
size_t jobq_pending(struct job_queue *q);

#endif
