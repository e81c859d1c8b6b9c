#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *log_prog = "convoyfs";
static bool log_syslog;
static int log_fd = -1; /* -o log_file=: wins over syslog and stderr */
static bool log_tty; /* stderr is a terminal */
static char log_cats[256];
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void xoom(void)
{
	fputs("convoyfs: out of memory\n", stderr);
	abort();
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		xoom();
	return p;
}

void *xcalloc(size_t count, size_t size)
{
	void *p = calloc(count ? count : 1, size ? size : 1);
	if (!p)
		xoom();
	return p;
}

void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p)
		xoom();
	return p;
}

char *xstrdup(const char *s)
{
	char *p = strdup(s);
	if (!p)
		xoom();
	return p;
}

char *xstrndup(const char *s, size_t n)
{
	char *p = strndup(s, n);
	if (!p)
		xoom();
	return p;
}

char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *p;

	va_start(ap, fmt);
	if (vasprintf(&p, fmt, ap) < 0)
		xoom();
	va_end(ap);
	return p;
}

void log_init(const char *prog, bool to_syslog, const char *debug_cats)
{
	log_prog = prog;
	log_syslog = to_syslog;
	log_tty = isatty(STDERR_FILENO);
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

int log_set_file(const char *path, char *err, size_t errlen)
{
	struct stat st;
	int fd;

	/* O_NOFOLLOW: a link planted where the log goes must not turn our
	 * appends on another file */
	fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW,
		  0600);
	if (fd < 0) {
		snprintf(err, errlen, "cannot open log file %s: %s", path,
			 strerror(errno));
		return -errno;
	}
	/* the log names folders, subjects and the server: the owner's
	 * alone, also when the file was there before */
	if (fstat(fd, &st) || !S_ISREG(st.st_mode) ||
	    ((st.st_mode & 077) && fchmod(fd, 0600))) {
		snprintf(err, errlen, "cannot use log file %s: %s", path,
			 S_ISREG(st.st_mode) ? strerror(errno)
					     : "not a regular file");
		close(fd);
		return -EINVAL;
	}
	log_fd = fd;
	return 0;
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
	if (lvl == LOG_LVL_INFO && !log_cats[0] && !log_syslog && log_fd < 0)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (log_fd >= 0) {
		char line[1200], stamp[32];
		struct tm tm;
		time_t t = time(NULL);
		int n;

		localtime_r(&t, &tm);
		strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", &tm);
		n = snprintf(line, sizeof(line), "%s %s[%d]: %s: %s: %s\n",
			     stamp, log_prog, (int)getpid(), names[lvl], cat,
			     buf);
		if (n > (int)sizeof(line) - 1) {
			n = (int)sizeof(line) - 1;
			line[n - 1] = '\n'; /* cut, still one line */
		}
		/* one write per line: O_APPEND keeps lines whole */
		(void)!write(log_fd, line, (size_t)n);
		return;
	}
	if (log_syslog) {
		syslog(prio[lvl], "%s: %s: %s", names[lvl], cat, buf);
		return;
	}
	pthread_mutex_lock(&log_lock);
	/* on a terminal, over the progress line of the first sync if one
	 * is drawn (it is drawn again below) */
	fprintf(stderr, "%s%s: %s: %s: %s\n", log_tty ? "\r\033[K" : "",
		log_prog, names[lvl], cat, buf);
	pthread_mutex_unlock(&log_lock);
}

long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
