/*
 * common.h - libc-only helpers every module may use: allocation that
 * aborts on exhaustion, and categorised logging. Includes no other module.
 */
#ifndef CONVOY_COMMON_H
#define CONVOY_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

/* xoom - say "convoyfs: out of memory" on stderr and abort: what every
 * failed allocation ends in, ours (the x* functions) or a library's */
void xoom(void) __attribute__((noreturn));
void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

enum log_level { LOG_LVL_ERROR, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

/*
 * log_init - set the program name, whether to log to syslog (after
 * daemonizing) and the comma-separated debug categories ("all" for every
 * one). Call before any thread starts.
 */
void log_init(const char *prog, bool to_syslog, const char *debug_cats);
void log_set_syslog(bool to_syslog);
/*
 * log_set_file - log to @path from now on (appended, created 0600, made
 * 0600 if it was more open), in the foreground and after daemonizing.
 * Returns 0, or -errno with one line in @err.
 */
int log_set_file(const char *path, char *err, size_t errlen);
void log_msg(enum log_level lvl, const char *cat, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#ifndef LOG_CAT
#define LOG_CAT "convoyfs"
#endif
#define log_error(...) log_msg(LOG_LVL_ERROR, LOG_CAT, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LVL_WARN, LOG_CAT, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LVL_INFO, LOG_CAT, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LVL_DEBUG, LOG_CAT, __VA_ARGS__)

/* monotonic clock in milliseconds, for deadlines */
long long now_ms(void);

#endif
