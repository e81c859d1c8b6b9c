#include "common.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

static const char *log_prog = "convoyfs";
static bool log_syslog;
static char log_cats[256];
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static void oom(void)
{
	fputs("convoyfs: out of memory\n", stderr);
	abort();
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		oom();
	return p;
}

void *xcalloc(size_t count, size_t size)
{
	void *p = calloc(count ? count : 1, size ? size : 1);
	if (!p)
		oom();
	return p;
}

void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p)
		oom();
	return p;
}

char *xstrdup(const char *s)
{
	char *p = strdup(s);
	if (!p)
		oom();
	return p;
}

char *xstrndup(const char *s, size_t n)
{
	char *p = strndup(s, n);
	if (!p)
		oom();
	return p;
}

char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *p;

	va_start(ap, fmt);
	if (vasprintf(&p, fmt, ap) < 0)
		oom();
	va_end(ap);
	return p;
}

void log_init(const char *prog, bool to_syslog, const char *debug_cats)
{
	log_prog = prog;
	log_syslog = to_syslog;
	snprintf(log_cats, sizeof(log_cats), "%s", debug_cats ? debug_cats : "");
	if (to_syslog)
		openlog(prog, LOG_PID, LOG_DAEMON);
}

void log_set_syslog(bool to_syslog)
{
	if (to_syslog && !log_syslog)
		openlog(log_prog, LOG_PID, LOG_DAEMON);
	log_syslog = to_syslog;
}

static bool debug_enabled(const char *cat)
{
	size_t n = strlen(cat);
	const char *p = log_cats;

	if (!*p)
		return false;
	if (!strcmp(p, "all"))
		return true;
	/* "sync+imap": -o splits its options on commas */
	while ((p = strstr(p, cat))) {
		if ((p == log_cats || p[-1] == ',' || p[-1] == '+') &&
		    (p[n] == '\0' || p[n] == ',' || p[n] == '+'))
			return true;
		p += n;
	}
	return false;
}

void log_msg(enum log_level lvl, const char *cat, const char *fmt, ...)
{
	static const char *const names[] = { "error", "warning", "info",
					     "debug" };
	static const int prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };
	char buf[1024];
	va_list ap;

	if (lvl == LOG_LVL_DEBUG && !debug_enabled(cat))
		return;
	if (lvl == LOG_LVL_INFO && !log_cats[0] && !log_syslog)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (log_syslog) {
		syslog(prio[lvl], "%s: %s: %s", names[lvl], cat, buf);
		return;
	}
	pthread_mutex_lock(&log_lock);
	fprintf(stderr, "%s: %s: %s: %s\n", log_prog, names[lvl], cat, buf);
	pthread_mutex_unlock(&log_lock);
}

long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
