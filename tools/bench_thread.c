/*
 * bench_thread.c - messages threaded per second: generates synthetic
 * mail (threads of varying size and depth with References chains as
 * mailers write them), stores it in a fresh temporary store, 1000
 * messages per transaction, as the sync does, and prints the rates.
 *
 * Three passes over the same mail, each into a new store:
 *   put      store_msg_put only: the store's own share
 *   put+thr  store_msg_put then thread_message: the threader measured
 *            apart (the CPU time inside thread_message)
 *   sync     thread_put, the one call the sync makes per new message
 * Each reports wall time, the process's CPU time
 * (CLOCK_PROCESS_CPUTIME_ID) and the part of both spent in commits,
 * where the WAL is written and synced.
 *
 * usage: bench_thread [MESSAGES [newest-first]]
 *   MESSAGES defaults to 100000; "newest-first" stores them in reverse
 *   date order, as the first sync of a large folder learns them.
 *   The store goes under $TMPDIR (default /tmp) and is removed after.
 */
#include "common.h"
#include "store.h"
#include "sync_i.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BATCH 1000
/* mailers trim References to the root and the latest ancestors */
#define MAX_REFS 20

struct gen {
	int64_t date;
	char mid[72];
	char *refs; /* owned */
	char irt[72];
	char subject[48];
	uint32_t uid;
	int folder;
	int depth;
};

static uint64_t rng = 0x243f6a8885a308d3ULL;

static uint64_t rnd(void)
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545f4914f6cdd1dULL;
}

static unsigned rnd_below(unsigned n)
{
	return (unsigned)(rnd() % n);
}

/* thread sizes: many single messages, most threads short, a few long */
static size_t thread_size(void)
{
	unsigned r = rnd_below(100);

	if (r < 35)
		return 1;
	if (r < 80)
		return 2 + rnd_below(5);
	if (r < 97)
		return 7 + rnd_below(25);
	return 32 + rnd_below(200);
}

/* References of a reply to @p: @p's, then @p's id, trimmed to the root
 * and the last MAX_REFS - 1 */
static char *reply_refs(const struct gen *p)
{
	const char *ids[MAX_REFS + 1], *q;
	size_t n = 0, len = 0, i;
	char *out, *o;

	for (q = p->refs; q && (q = strchr(q, '<')); q++) {
		if (n == MAX_REFS) {
			/* keep the root, drop the oldest after it */
			memmove(&ids[1], &ids[2], (n - 2) * sizeof(*ids));
			n--;
		}
		ids[n++] = q;
	}
	if (n == MAX_REFS) {
		memmove(&ids[1], &ids[2], (n - 2) * sizeof(*ids));
		n--;
	}
	ids[n++] = p->mid;
	for (i = 0; i < n; i++)
		len += strcspn(ids[i], ">") + 2;
	out = o = malloc(len + 1);
	for (i = 0; i < n; i++) {
		size_t l = strcspn(ids[i], ">") + 1;

		if (i)
			*o++ = ' ';
		memcpy(o, ids[i], l);
		o += l;
	}
	*o = '\0';
	return out;
}

static int cmp_date(const void *a, const void *b)
{
	const struct gen *x = a, *y = b;

	return x->date < y->date ? -1 : x->date > y->date;
}

static struct gen *generate(size_t n, size_t *nthreads)
{
	struct gen *v = calloc(n, sizeof(*v));
	size_t i = 0, t = 0;

	while (i < n) {
		size_t size = thread_size(), first = i, k;
		int64_t start = 1700000000 + (int64_t)rnd_below(86400 * 365);

		for (k = 0; k < size && i < n; k++, i++) {
			struct gen *m = &v[i];

			m->date = start + (int64_t)k * (60 + rnd_below(86400));
			/* as long and as random as a large provider's */
			snprintf(m->mid, sizeof(m->mid),
				 "<CA%016llx%08x.%zu@mail.example.com>",
				 (unsigned long long)rnd(), (unsigned)rnd(), i);
			snprintf(m->subject, sizeof(m->subject), "%stopic %zu",
				 k ? "Re: " : "", t);
			m->folder = rnd_below(10) < 8 ? 0 : 1 + rnd_below(3);
			if (k) {
				/* mostly the latest message, else any
				 * earlier one: chains and branches */
				const struct gen *p =
					&v[rnd_below(3) ? i - 1 :
							  first + rnd_below(
									  (unsigned)k)];

				m->refs = reply_refs(p);
				snprintf(m->irt, sizeof(m->irt), "%s", p->mid);
				m->depth = p->depth + 1;
			}
		}
		t++;
	}
	/* a folder's UIDs follow arrival, roughly date */
	qsort(v, n, sizeof(*v), cmp_date);
	for (i = 0; i < n; i++)
		v[i].uid = (uint32_t)i + 1;
	*nthreads = t;
	return v;
}

static double clock_s(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int rm_entry(const char *path, const struct stat *st, int flag,
		    struct FTW *ftw)
{
	return remove(path);
}

enum pass { PASS_PUT, PASS_PUT_THREAD, PASS_SYNC };

struct result {
	double wall, cpu; /* the whole loop, commits included */
	double thread_wall, thread_cpu; /* inside thread_message */
	double commit_wall, commit_cpu; /* inside store_commit */
	size_t nconv;
};

#define CPU CLOCK_PROCESS_CPUTIME_ID
#define WALL CLOCK_MONOTONIC

/*
 * Store @v in a fresh store as pass @pass says, and measure it into @r.
 */
static int run(const struct gen *v, size_t n, bool reverse, enum pass pass,
	       struct result *r)
{
	const char *tmp = getenv("TMPDIR");
	char dir[4096];
	struct store *s;
	int64_t folders[4];
	double t0, c0;
	size_t i;
	int rc;

	memset(r, 0, sizeof(*r));
	snprintf(dir, sizeof(dir), "%s/bench_thread.XXXXXX",
		 tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	rc = store_open(dir, &s);
	if (rc) {
		fprintf(stderr, "cannot open store in %s: %s\n", dir,
			strerror(-rc));
		return 1;
	}
	for (i = 0; i < 4; i++) {
		static const char *const names[] = { "INBOX", "Sent",
						     "Lists/dev", "Archive" };
		struct store_folder f = { .name = (char *)names[i],
					  .display = (char *)names[i],
					  .delim = '/' };

		if (store_folder_put(s, &f, &folders[i]))
			return 1;
	}

	t0 = clock_s(WALL);
	c0 = clock_s(CPU);
	for (i = 0; i < n && !rc; i++) {
		const struct gen *g = &v[reverse ? n - 1 - i : i];
		struct store_msg m = {
			.folder = folders[g->folder],
			.uid = g->uid,
			.flags = (char *)(i % 3 ? "\\Seen" : ""),
			.date = g->date,
			.zone = 60,
			.size = 4000 + g->uid % 50000,
			.message_id = (char *)g->mid,
			.subject = (char *)g->subject,
			.from = (char *)"Someone <someone@bench.example>",
			.references = g->refs,
			.in_reply_to = g->irt[0] ? (char *)g->irt : NULL,
		};

		if (i % BATCH == 0)
			rc = store_begin(s);
		if (!rc && pass == PASS_SYNC)
			rc = thread_put(s, &m);
		else if (!rc)
			rc = store_msg_put(s, &m);
		if (!rc && pass == PASS_PUT_THREAD) {
			double w = clock_s(WALL), c = clock_s(CPU);

			rc = thread_message(s, &m);
			r->thread_cpu += clock_s(CPU) - c;
			r->thread_wall += clock_s(WALL) - w;
		}
		if (!rc && (i % BATCH == BATCH - 1 || i == n - 1)) {
			double w = clock_s(WALL), c = clock_s(CPU);

			rc = store_commit(s);
			r->commit_cpu += clock_s(CPU) - c;
			r->commit_wall += clock_s(WALL) - w;
		}
	}
	r->wall = clock_s(WALL) - t0;
	r->cpu = clock_s(CPU) - c0;
	if (rc) {
		fprintf(stderr, "failed at message %zu: %s\n", i,
			strerror(-rc));
		return 1;
	}

	if (pass != PASS_PUT) {
		struct store_conv c[256];
		int64_t after = 0;
		size_t got, k;

		do {
			if (store_conv_list(s, after, 256, c, &got))
				return 1;
			for (k = 0; k < got; k++) {
				after = c[k].id;
				store_conv_release(&c[k]);
			}
			r->nconv += got;
		} while (got == 256);
	}
	store_close(s);
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}

static void report(const char *what, const struct result *r, double n)
{
	printf("%-8s %6.2f s wall = %6.0f msg/s, %6.2f s CPU = %6.0f msg/s "
	       "per core; commits %.2f s wall (%2.0f%%), %.2f s CPU (%2.0f%%)\n",
	       what, r->wall, n / r->wall, r->cpu, n / r->cpu, r->commit_wall,
	       100 * r->commit_wall / r->wall, r->commit_cpu,
	       100 * r->commit_cpu / r->cpu);
}

int main(int argc, char **argv)
{
	size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 100000;
	bool reverse = argc > 2 && !strcmp(argv[2], "newest-first");
	size_t nthreads, i, refs = 0;
	struct result put, thr, syn;
	struct gen *v;
	double dn;

	if (!n) {
		fprintf(stderr, "usage: %s [MESSAGES [newest-first]]\n",
			argv[0]);
		return 2;
	}
	dn = (double)n;
	log_init("bench_thread", false, NULL);
	v = generate(n, &nthreads);
	for (i = 0; i < n; i++)
		for (const char *q = v[i].refs; q && (q = strchr(q, '<')); q++)
			refs++;

	if (run(v, n, reverse, PASS_PUT, &put) ||
	    run(v, n, reverse, PASS_PUT_THREAD, &thr) ||
	    run(v, n, reverse, PASS_SYNC, &syn))
		return 1;
	if (thr.nconv != syn.nconv) {
		fprintf(stderr, "thread_put made %zu conversations, "
				"thread_message %zu\n",
			syn.nconv, thr.nconv);
		return 1;
	}

	printf("generated: %zu messages in %zu threads, %.1f References ids "
	       "per message, %s order -> %zu conversations; batches of %d\n",
	       n, nthreads, (double)refs / dn,
	       reverse ? "newest-first" : "date", syn.nconv, BATCH);
	report("put", &put, dn);
	report("put+thr", &thr, dn);
	report("sync", &syn, dn);
	printf("thread_message alone (in put+thr): %.2f s CPU = %.0f msg/s "
	       "per core (%.2f s wall)\n",
	       thr.thread_cpu, dn / thr.thread_cpu, thr.thread_wall);
	printf("messages threaded per second, as the sync stores them "
	       "(thread_put): %.0f wall, %.0f per core\n",
	       dn / syn.wall, dn / syn.cpu);
	for (i = 0; i < n; i++)
		free(v[i].refs);
	free(v);
	return 0;
}
