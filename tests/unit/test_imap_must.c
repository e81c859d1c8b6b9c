/*
 * test_imap_must.c - a libetpan builder that runs out of memory ends the
 * process as xmalloc does (the out-of-memory line, then SIGABRT), and is
 * never carried on: imap_must and imap_must_ok, and imap_set_of with the
 * address space used up under it.
 */
#include "imap_i.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define UNDER_SANITIZER 1
#endif
#endif

static const char oom_line[] = "convoyfs: out of memory\n";

/*
 * died_of_oom - run @fn(@arg) in a child with stderr piped back; true
 * if the child said the out-of-memory line and was killed by SIGABRT
 */
static bool died_of_oom(void (*fn)(void *), void *arg, const char *what)
{
	char buf[256];
	size_t len = 0;
	ssize_t k;
	int fds[2], st;
	pid_t pid;

	if (pipe(fds)) {
		perror("pipe");
		return false;
	}
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		perror("fork");
		return false;
	}
	if (!pid) {
		close(fds[0]);
		dup2(fds[1], STDERR_FILENO);
		fn(arg);
		_exit(0); /* went on: the test fails */
	}
	close(fds[1]);
	while (len < sizeof(buf) - 1 &&
	       (k = read(fds[0], buf + len, sizeof(buf) - 1 - len)) > 0)
		len += (size_t)k;
	buf[len] = '\0';
	close(fds[0]);
	if (waitpid(pid, &st, 0) != pid) {
		perror("waitpid");
		return false;
	}
	if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGABRT ||
	    strcmp(buf, oom_line)) {
		fprintf(stderr,
			"%s: want SIGABRT and \"%s\", got %s %d and \"%s\"\n",
			what, "convoyfs: out of memory\\n",
			WIFSIGNALED(st) ? "signal" : "exit",
			WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), buf);
		return false;
	}
	return true;
}

static void must_null(void *arg)
{
	imap_must(NULL);
}

static void must_ok_fails(void *arg)
{
	imap_must_ok(*(int *)arg);
}

#ifndef UNDER_SANITIZER
/* the address space limited to what is mapped now and a few MiB, then
 * a set of far more ranges than fit: some libetpan allocation fails */
static void set_of_exhausted(void *arg)
{
	size_t n = 1u << 20;
	struct imap_uid_range *v = xcalloc(n, sizeof(*v));
	unsigned long pages = 0;
	struct rlimit rl;
	FILE *f;

	for (size_t i = 0; i < n; i++)
		v[i].first = v[i].last = (uint32_t)(2 * i + 1);
	f = fopen("/proc/self/statm", "r");
	if (!f || fscanf(f, "%lu", &pages) != 1)
		_exit(2);
	fclose(f);
	rl.rlim_cur = rl.rlim_max =
		pages * (rlim_t)sysconf(_SC_PAGESIZE) + (8u << 20);
	if (setrlimit(RLIMIT_AS, &rl))
		_exit(2);
	imap_set_of(v, n);
}
#endif

int main(void)
{
	int memory = MAILIMAP_ERROR_MEMORY, minus_one = -1;
	char x;
	int fails = 0;

	/* what succeeds goes through unchanged */
	if (imap_must(&x) != &x) {
		fprintf(stderr, "imap_must changed its argument\n");
		fails++;
	}
	imap_must_ok(MAILIMAP_NO_ERROR);

	fails += !died_of_oom(must_null, NULL, "imap_must(NULL)");
	fails += !died_of_oom(must_ok_fails, &memory,
			      "imap_must_ok(MAILIMAP_ERROR_MEMORY)");
	fails += !died_of_oom(must_ok_fails, &minus_one, "imap_must_ok(-1)");
#ifndef UNDER_SANITIZER
	/* ASan and TSan reserve terabytes of shadow up front and answer
	 * a failed map with their own report: a limit on the address
	 * space would test them, not us */
	fails += !died_of_oom(set_of_exhausted, NULL,
			      "imap_set_of out of memory");
#endif
	return fails ? 1 : 0;
}
