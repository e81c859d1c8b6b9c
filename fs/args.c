/*
 * args.c - the command line and where the password comes from. The
 * password never comes from argv (other users can read it in ps).
 */
#include "fs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

void args_usage(FILE *out)
{
	fputs("usage: convoyfs [-f] [-d] [-o OPT[,OPT...]] "
	      "imaps://USER@HOST[:PORT] MOUNTPOINT\n"
	      "       convoyfs status MOUNTPOINT\n"
	      "       convoyfs --help | --version\n"
	      "\n"
	      "Mounts an IMAP account as a directory tree. Unmount with\n"
	      "fusermount3 -u MOUNTPOINT. See convoyfs(1).\n"
	      "\n"
	      "  imaps://  TLS from the start (port 993)\n"
	      "  imap://   STARTTLS, required (port 143)\n"
	      "  -f        stay in the foreground: log to stderr, show the\n"
	      "            first sync's progress on a terminal\n"
	      "  -d        debug output: FUSE requests and the IMAP\n"
	      "            conversation, passwords masked (implies -f)\n"
	      "  status    print the state of the mount at MOUNTPOINT\n"
	      "\n"
	      "options (-o):\n"
	      "  cafile=PATH            trust the CA certificates in PATH\n"
	      "  password_command=CMD   the password is the first line CMD "
	      "prints\n"
	      "                         (else ~/.netrc, else a prompt)\n"
	      "  cache_dir=PATH         the store (default "
	      "$XDG_CACHE_HOME/convoyfs/USER@HOST)\n"
	      "  poll_interval=SECONDS  how often folders are checked "
	      "(default 60)\n"
	      "  timeout=SECONDS        longest network wait (default 30)\n"
	      "  cache_size=MB          bodies kept on disk (default 2048)\n"
	      "  compress=yes|no        COMPRESS=DEFLATE where the server offers\n"
	      "                         it (default yes)\n"
	      "  prefetch=all|recent:DAYS|none\n"
	      "                         bodies brought in the background after\n"
	      "                         the first sync, newest first, within\n"
	      "                         cache_size (default all)\n"
	      "  sync_since=YYYY-MM-DD  learn only mail dated from that day (UTC)\n"
	      "  sync_days=N            learn only mail of the last N days\n"
	      "                         (default: all; older mail of a folder\n"
	      "                         comes with: echo 'grow FOLDER' >\n"
	      "                         MOUNTPOINT/.convoyfs/ctl)\n"
	      "  log_file=PATH          log there (created 0600) instead of to\n"
	      "                         stderr (-f) or syslog (in the background)\n"
	      "  debug=CATS             log categories joined by +: sync, fetch,\n"
	      "                         thread, imap, tls, store, fs; or all\n"
	      "  auth=login|plain|xoauth2|oauthbearer\n"
	      "                         LOGIN (default) or AUTHENTICATE PLAIN\n"
	      "                         (used anyway when LOGIN is disabled);\n"
	      "                         XOAUTH2 or OAUTHBEARER take an OAuth2\n"
	      "                         access token where the password goes\n"
	      "                         (password_command)\n"
	      "  ro                     mount read-only: every write fails "
	      "(EROFS)\n"
	      "  allow_other            let other users see the mount (file\n"
	      "                         modes still apply)\n"
	      "  nonempty               mount over a directory that is not "
	      "empty\n"
	      "\n"
	      "Accepted and ignored, for mount(8) and fstab: rw, defaults, dev,\n"
	      "nodev, suid, nosuid, exec, noexec, auto, noauto, user, nouser,\n"
	      "users, _netdev, nofail, atime, noatime, relatime, strictatime,\n"
	      "nodiratime, lazytime, sync, async, x-*, comment=*.\n",
	      out);
}

static bool has_bad_chars(const char *s)
{
	return strpbrk(s, "\r\n") != NULL;
}

/* %XX escapes in the user part of the URL (user@example.org as
 * user%40example.org) */
static char *unescape(const char *s, size_t n)
{
	char *out = xmalloc(n + 1), *o = out;

	for (size_t i = 0; i < n; i++) {
		unsigned v;

		if (s[i] == '%' && i + 2 < n &&
		    sscanf(s + i + 1, "%2x", &v) == 1 && v) {
			*o++ = (char)v;
			i += 2;
		} else {
			*o++ = s[i];
		}
	}
	*o = '\0';
	return out;
}

static int parse_url(const char *url, struct sync_config *cfg, char *err,
		     size_t errlen)
{
	const char *rest, *at, *host, *colon, *end;

	if (!strncmp(url, "imaps://", 8)) {
		rest = url + 8;
		cfg->starttls = false;
	} else if (!strncmp(url, "imap://", 7)) {
		rest = url + 7;
		cfg->starttls = true;
	} else {
		snprintf(err, errlen,
			 "unsupported URL %s: use imaps://USER@HOST[:PORT] "
			 "or imap://USER@HOST[:PORT]",
			 url);
		return -EINVAL;
	}
	at = strrchr(rest, '@');
	if (!at || at == rest) {
		snprintf(err, errlen, "no user name in URL %s", url);
		return -EINVAL;
	}
	cfg->user = unescape(rest, (size_t)(at - rest));
	host = at + 1;
	end = host + strcspn(host, "/");
	if (*host == '[') { /* [::1]:993 */
		const char *rb = memchr(host, ']', (size_t)(end - host));

		if (!rb) {
			snprintf(err, errlen, "bad host in URL %s", url);
			return -EINVAL;
		}
		cfg->host = xstrndup(host + 1, (size_t)(rb - host - 1));
		colon = rb[1] == ':' ? rb + 1 : NULL;
	} else {
		colon = memchr(host, ':', (size_t)(end - host));
		cfg->host = xstrndup(host, (size_t)((colon ? colon : end) - host));
	}
	if (colon) {
		char *port = xstrndup(colon + 1, (size_t)(end - colon - 1));
		char *bad;
		long v = strtol(port, &bad, 10);

		if (!*port || *bad || v < 1 || v > 65535) {
			snprintf(err, errlen, "bad port in URL %s", url);
			free(port);
			return -EINVAL;
		}
		cfg->port = port;
	} else {
		cfg->port = xstrdup(cfg->starttls ? "143" : "993");
	}
	if (!*cfg->host || !*cfg->user || has_bad_chars(cfg->user) ||
	    has_bad_chars(cfg->host)) {
		snprintf(err, errlen, "bad user or host in URL %s", url);
		return -EINVAL;
	}
	return 0;
}

static int parse_uint(const char *v, unsigned *out)
{
	char *end;
	unsigned long n = strtoul(v, &end, 10);

	if (!*v || *end || n == 0 || n > 86400)
		return -EINVAL;
	*out = (unsigned)n;
	return 0;
}

/* longest sync_days: a century */
#define MAX_SYNC_DAYS 36500

/* "YYYY-MM-DD", a real day from 1970-01-02 on, as Unix time of its start
 * in UTC (0 is taken: it means no horizon) */
static int parse_day(const char *v, int64_t *out)
{
	struct tm tm = { 0 };
	const char *end;
	int mday, mon;
	time_t t;

	if (strlen(v) != 10)
		return -EINVAL;
	end = strptime(v, "%Y-%m-%d", &tm);
	if (!end || *end)
		return -EINVAL;
	/* timegm makes 2026-02-30 the 2nd of March (in @tm too): not a
	 * day of the calendar */
	mday = tm.tm_mday;
	mon = tm.tm_mon;
	t = timegm(&tm);
	if (t <= 0 || tm.tm_mday != mday || tm.tm_mon != mon)
		return -EINVAL;
	*out = (int64_t)t;
	return 0;
}

/*
 * The options mount(8), mount.fuse3 and fstab pass to every filesystem:
 * taken and ignored, so that an fstab line works. The kernel's FUSE
 * mounts are nosuid and nodev anyway; atime does not apply (nothing
 * here records an access).
 */
static bool generic_option(const char *o, const char *v)
{
	static const char *const flags[] = {
		"rw",	    "defaults", "dev",	      "nodev",	  "suid",
		"nosuid",   "exec",	"noexec",     "auto",	  "noauto",
		"user",	    "nouser",	"users",      "_netdev",  "nofail",
		"atime",    "noatime",	"relatime",   "norelatime",
		"strictatime", "nostrictatime", "diratime", "nodiratime",
		"lazytime", "nolazytime", "sync",     "async",
	};

	/* x-systemd.automount, x-gvfs-show, comment=systemd.automount */
	if (!strncmp(o, "x-", 2) || !strcmp(o, "comment"))
		return true;
	if (v)
		return false;
	for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
		if (!strcmp(o, flags[i]))
			return true;
	return false;
}

/* what the -o options said so far, for options that rule out others */
struct opt_seen {
	bool sync_since;
	bool sync_days;
};

static int parse_opts(char *opts, struct fs_args *a, struct opt_seen *seen,
		      char *err, size_t errlen)
{
	char *save = NULL;

	for (char *o = strtok_r(opts, ",", &save); o;
	     o = strtok_r(NULL, ",", &save)) {
		char *v = strchr(o, '=');

		if (v)
			*v++ = '\0';
		if ((!strcmp(o, "cafile") || !strcmp(o, "cache_dir")) && v &&
		    !*v) {
			goto bad;
		} else if (!strcmp(o, "cafile") && v) {
			free(a->cfg.cafile);
			a->cfg.cafile = xstrdup(v);
		} else if (!strcmp(o, "password_command") && v) {
			free(a->password_command);
			a->password_command = xstrdup(v);
		} else if (!strcmp(o, "cache_dir") && v) {
			free(a->cfg.cache_dir);
			a->cfg.cache_dir = xstrdup(v);
		} else if (!strcmp(o, "poll_interval") && v) {
			if (parse_uint(v, &a->cfg.poll_interval))
				goto bad;
		} else if (!strcmp(o, "timeout") && v) {
			if (parse_uint(v, &a->cfg.timeout))
				goto bad;
		} else if (!strcmp(o, "cache_size") && v) {
			char *end;
			unsigned long long mb = strtoull(v, &end, 10);

			if (!*v || *end || mb == 0 || mb > (1ULL << 30))
				goto bad;
			a->cfg.cache_budget = mb << 20;
		} else if (!strcmp(o, "compress") && v) {
			if (!strcmp(v, "yes"))
				a->cfg.no_compress = false;
			else if (!strcmp(v, "no"))
				a->cfg.no_compress = true;
			else
				goto bad;
		} else if (!strcmp(o, "prefetch") && v) {
			if (!strcmp(v, "all")) {
				a->cfg.prefetch = PREFETCH_ALL;
			} else if (!strcmp(v, "none")) {
				a->cfg.prefetch = PREFETCH_NONE;
			} else if (!strncmp(v, "recent:", 7) &&
				   !parse_uint(v + 7, &a->cfg.prefetch_days) &&
				   a->cfg.prefetch_days > 0) {
				a->cfg.prefetch = PREFETCH_RECENT;
			} else {
				snprintf(err, errlen,
					 "prefetch: %s (all, recent:DAYS or "
					 "none)", v);
				return -EINVAL;
			}
		} else if (!strcmp(o, "sync_since") && v) {
			if (seen->sync_days) {
				snprintf(err, errlen, "sync_since and sync_days "
					 "cannot both be given");
				return -EINVAL;
			}
			seen->sync_since = true;
			if (parse_day(v, &a->cfg.horizon)) {
				snprintf(err, errlen, "bad value for option "
					 "sync_since: %s (a day YYYY-MM-DD)", v);
				return -EINVAL;
			}
		} else if (!strcmp(o, "sync_days") && v) {
			char *end;
			unsigned long d = strtoul(v, &end, 10);

			if (seen->sync_since) {
				snprintf(err, errlen, "sync_since and sync_days "
					 "cannot both be given");
				return -EINVAL;
			}
			seen->sync_days = true;
			if (!*v || *end || *v == '-' || d == 0 ||
			    d > MAX_SYNC_DAYS) {
				snprintf(err, errlen, "bad value for option "
					 "sync_days: %s (a number of days, 1 "
					 "to %d)", v, MAX_SYNC_DAYS);
				return -EINVAL;
			}
			/* counted back from the mount: the horizon stays
			 * where it was while the mount lasts */
			a->cfg.horizon = (int64_t)time(NULL) - (int64_t)d * 86400;
		} else if (!strcmp(o, "debug") && v) {
			free(a->debug_cats);
			a->debug_cats = xstrdup(v);
		} else if (!strcmp(o, "auth") && v) {
			if (!strcmp(v, "login"))
				a->cfg.auth = SYNC_AUTH_LOGIN;
			else if (!strcmp(v, "plain"))
				a->cfg.auth = SYNC_AUTH_PLAIN;
			else if (!strcmp(v, "xoauth2"))
				a->cfg.auth = SYNC_AUTH_XOAUTH2;
			else if (!strcmp(v, "oauthbearer"))
				a->cfg.auth = SYNC_AUTH_OAUTHBEARER;
			else
				goto bad;
		} else if (!strcmp(o, "log_file") && v) {
			if (!*v)
				goto bad;
			free(a->log_file);
			a->log_file = xstrdup(v);
		} else if (!strcmp(o, "ro") && !v) {
			a->ro = true;
		} else if (!strcmp(o, "rw") && !v) {
			a->ro = false; /* the last of ro and rw wins, as in mount(8) */
		} else if (generic_option(o, v)) {
			continue;
		} else if (!strcmp(o, "allow_other") && !v) {
			a->allow_other = true;
		} else if (!strcmp(o, "nonempty") && !v) {
			a->nonempty = true;
		} else {
			snprintf(err, errlen, "unknown option %s", o);
			return -EINVAL;
		}
		continue;
bad:
		snprintf(err, errlen, "bad value for option %s: %s", o, v);
		return -EINVAL;
	}
	return 0;
}

static char *default_cache_dir(const char *user, const char *host)
{
	const char *xdg = getenv("XDG_CACHE_HOME");
	const char *home = getenv("HOME");

	if (xdg && *xdg)
		return xasprintf("%s/convoyfs/%s@%s", xdg, user, host);
	return xasprintf("%s/.cache/convoyfs/%s@%s", home ? home : "/tmp", user,
			 host);
}

/*
 * @path made absolute from the working directory of now, kept as given
 * otherwise: the daemon works from / (fuse_daemonize changes to it, in
 * the foreground too), and a file named on the command line must still
 * be found there, by the fetchers' first connection or the store.
 */
static int make_absolute(char **path, char *err, size_t errlen)
{
	char *cwd, *abs;

	if (!*path || (*path)[0] == '/')
		return 0;
	cwd = getcwd(NULL, 0);
	if (!cwd) {
		snprintf(err, errlen, "cannot make %s absolute: %s", *path,
			 strerror(errno));
		return -EINVAL;
	}
	abs = xasprintf("%s/%s", strcmp(cwd, "/") ? cwd : "", *path);
	free(cwd);
	free(*path);
	*path = abs;
	return 0;
}

int args_parse(int argc, char **argv, struct fs_args *a, char *err,
	       size_t errlen)
{
	const char *pos[2];
	struct opt_seen seen = { 0 };
	int npos = 0, rc;

	memset(a, 0, sizeof(*a));
	/* convoyfs status MOUNTPOINT (or --status): no URL, no mount */
	if (argc > 1 &&
	    (!strcmp(argv[1], "status") || !strcmp(argv[1], "--status"))) {
		if (argc != 3) {
			snprintf(err, errlen, "%s needs one mount point",
				 argv[1]);
			return -EINVAL;
		}
		a->status = true;
		a->mountpoint = xstrdup(argv[2]);
		return 0;
	}
	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i];

		if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
			a->help = true;
			return 0;
		} else if (!strcmp(arg, "-V") || !strcmp(arg, "--version")) {
			a->version = true;
			return 0;
		} else if (!strcmp(arg, "-f")) {
			a->foreground = true;
		} else if (!strcmp(arg, "-d")) {
			a->debug = a->foreground = true;
		} else if (!strncmp(arg, "-o", 2)) {
			char *opts;

			if (arg[2])
				opts = xstrdup(arg + 2);
			else if (i + 1 < argc)
				opts = xstrdup(argv[++i]);
			else {
				snprintf(err, errlen, "-o needs options");
				return -EINVAL;
			}
			rc = parse_opts(opts, a, &seen, err, errlen);
			free(opts);
			if (rc)
				return rc;
		} else if (arg[0] == '-' && arg[1]) {
			snprintf(err, errlen, "unknown flag %s", arg);
			return -EINVAL;
		} else if (npos < 2) {
			pos[npos++] = arg;
		} else {
			snprintf(err, errlen, "too many arguments");
			return -EINVAL;
		}
	}
	if (npos != 2) {
		snprintf(err, errlen, "need a URL and a mount point");
		return -EINVAL;
	}
	rc = parse_url(pos[0], &a->cfg, err, errlen);
	if (rc)
		return rc;
	a->mountpoint = xstrdup(pos[1]);
	if (!a->cfg.cache_dir)
		a->cfg.cache_dir = default_cache_dir(a->cfg.user, a->cfg.host);
	rc = make_absolute(&a->cfg.cache_dir, err, errlen);
	if (!rc)
		rc = make_absolute(&a->cfg.cafile, err, errlen);
	if (!rc)
		rc = make_absolute(&a->log_file, err, errlen);
	if (rc)
		return rc;
	if (!a->cfg.poll_interval)
		a->cfg.poll_interval = 60;
	if (!a->cfg.timeout)
		a->cfg.timeout = 30;
	if (!a->cfg.cache_budget)
		a->cfg.cache_budget = 2048ULL << 20;
	return 0;
}

/*
 * The password is the first @n bytes of @line, its line end included.
 * One LF ends it (the lines after it are not the password); a CR or a
 * NUL left in it is refused here, not cut at: cut, it would log in with
 * a password other than the one written, and the IMAP library sends a CR
 * raw into the command. @from says where it came from, for @err.
 */
static int take_line(char *line, size_t n, const char *from, char *err,
		     size_t errlen)
{
	if (n && line[n - 1] == '\n')
		line[--n] = '\0';
	if (memchr(line, '\0', n)) {
		snprintf(err, errlen, "the password %s contains a NUL byte: "
			 "refused", from);
		return -EINVAL;
	}
	if (memchr(line, '\r', n)) {
		snprintf(err, errlen, "the password %s contains a carriage "
			 "return (CR): refused", from);
		return -EINVAL;
	}
	return 0;
}

static void wipe(char *s, size_t n)
{
	if (s)
		explicit_bzero(s, n);
	free(s);
}

/* first line of @cmd's output, run by /bin/sh */
static int from_command(const char *cmd, char **out, char *err, size_t errlen)
{
	FILE *p = popen(cmd, "r");
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int status, rc;

	if (!p) {
		snprintf(err, errlen, "cannot run password_command: %s",
			 strerror(errno));
		return -EIO;
	}
	n = getline(&line, &cap, p);
	/* drain, so the command is not killed by SIGPIPE */
	while (fgetc(p) != EOF)
		;
	status = pclose(p);
	if (n <= 0 || status == -1 || !WIFEXITED(status) ||
	    WEXITSTATUS(status) != 0) {
		wipe(line, cap);
		snprintf(err, errlen,
			 "password_command failed or printed nothing");
		return -EIO;
	}
	rc = take_line(line, (size_t)n, "from password_command", err, errlen);
	if (rc) {
		wipe(line, cap);
		return rc;
	}
	*out = line;
	return 0;
}

/* the bytes of @f, malloc'ed into *@buf (*@len of them) */
static int read_all(FILE *f, char **buf, size_t *len)
{
	size_t cap = 4096, n = 0, got;
	char *b = xmalloc(cap);

	while ((got = fread(b + n, 1, cap - n, f)) > 0) {
		n += got;
		if (n == cap) {
			/* grow by hand: realloc would leave a copy of the
			 * passwords read so far behind */
			char *bigger = xmalloc(cap * 2);

			memcpy(bigger, b, n);
			wipe(b, cap);
			b = bigger;
			cap *= 2;
		}
	}
	if (ferror(f)) {
		wipe(b, cap);
		return -EIO;
	}
	*buf = b;
	*len = n;
	return 0;
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
	       c == '\v';
}

/* the next token of @buf from *@pos (a run of bytes other than white
 * space, NUL bytes included) into @tok and @n; false at the end */
static bool next_token(const char *buf, size_t len, size_t *pos,
		       const char **tok, size_t *n)
{
	size_t i = *pos, start;

	while (i < len && is_blank(buf[i]))
		i++;
	start = i;
	while (i < len && !is_blank(buf[i]))
		i++;
	*pos = i;
	*tok = buf + start;
	*n = i - start;
	return *n > 0;
}

static bool token_is(const char *tok, size_t n, const char *word)
{
	return strlen(word) == n && !memcmp(tok, word, n);
}

/*
 * ~/.netrc: machine HOST login USER password PASS (tokens, any layout).
 * Read whole and split by hand, not by fscanf("%s"), which stops at
 * nothing but white space and so would keep a NUL inside a token that C
 * strings then cut, and splits a long password in two.
 */
static int from_netrc(const struct sync_config *cfg, char **out, char *err,
		      size_t errlen)
{
	const char *home = getenv("HOME");
	const char *tok, *pw = NULL;
	char path[4096], *buf;
	bool in_machine = false, user_ok = false, found = false;
	size_t len, pos = 0, n, pwlen = 0;
	struct stat st;
	FILE *f;
	int rc;

	if (!home)
		return -ENOENT;
	snprintf(path, sizeof(path), "%s/.netrc", home);
	f = fopen(path, "re");
	if (!f)
		return -ENOENT;
	if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077))
		fprintf(stderr,
			"convoyfs: warning: %s is readable by others\n", path);
	rc = read_all(f, &buf, &len);
	fclose(f);
	if (rc)
		return -ENOENT;
	while (next_token(buf, len, &pos, &tok, &n)) {
		if (token_is(tok, n, "machine") ||
		    token_is(tok, n, "default")) {
			if (in_machine && user_ok && pw) {
				found = true;
				break;
			}
			pw = NULL;
			user_ok = false;
			in_machine = token_is(tok, n, "default");
			if (!in_machine && next_token(buf, len, &pos, &tok, &n))
				in_machine = token_is(tok, n, cfg->host);
		} else if (token_is(tok, n, "login") &&
			   next_token(buf, len, &pos, &tok, &n)) {
			user_ok = token_is(tok, n, cfg->user);
		} else if (token_is(tok, n, "password") &&
			   next_token(buf, len, &pos, &tok, &n)) {
			pw = tok;
			pwlen = n;
		}
	}
	found = found || (in_machine && user_ok && pw);
	rc = -ENOENT;
	if (found && memchr(pw, '\0', pwlen)) {
		snprintf(err, errlen, "the password in %s contains a NUL "
			 "byte: refused", path);
		rc = -EINVAL;
	} else if (found) {
		*out = xstrndup(pw, pwlen);
		rc = 0;
	}
	wipe(buf, len);
	return rc;
}

static int from_prompt(const struct sync_config *cfg, char **out, char *err,
		       size_t errlen)
{
	struct termios old, quiet;
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int rc;

	if (!isatty(STDIN_FILENO)) {
		snprintf(err, errlen,
			 "no password: use -o password_command=CMD or "
			 "~/.netrc, or run on a terminal");
		return -EINVAL;
	}
	fprintf(stderr, "Password for %s@%s: ", cfg->user, cfg->host);
	tcgetattr(STDIN_FILENO, &old);
	quiet = old;
	quiet.c_lflag &= ~(tcflag_t)ECHO;
	tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
	n = getline(&line, &cap, stdin);
	tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
	fputc('\n', stderr);
	if (n <= 0) {
		wipe(line, cap);
		snprintf(err, errlen, "no password given");
		return -EINVAL;
	}
	rc = take_line(line, (size_t)n, "typed", err, errlen);
	if (rc) {
		wipe(line, cap);
		return rc;
	}
	*out = line;
	return 0;
}

/* sync_config.token_again: @aux is the password_command */
static int token_from_command(void *aux, char **out, char *err, size_t errlen)
{
	return from_command(aux, out, err, errlen);
}

int args_password(struct fs_args *a, char *err, size_t errlen)
{
	char *pw = NULL;
	int rc;

	if (a->password_command)
		rc = from_command(a->password_command, &pw, err, errlen);
	else if ((rc = from_netrc(&a->cfg, &pw, err, errlen)) == -ENOENT)
		rc = from_prompt(&a->cfg, &pw, err, errlen);
	if (rc)
		return rc;
	/* each source refused what it must; this guards the next one */
	if (has_bad_chars(pw)) {
		wipe(pw, strlen(pw));
		snprintf(err, errlen, "password contains CR or LF: refused");
		return -EINVAL;
	}
	a->cfg.password = pw;
	/* an access token expires within the hour: each login takes a new
	 * one (a password stays as it was read) */
	if (a->password_command && (a->cfg.auth == SYNC_AUTH_XOAUTH2 ||
				    a->cfg.auth == SYNC_AUTH_OAUTHBEARER)) {
		a->cfg.token_again = token_from_command;
		a->cfg.token_aux = a->password_command;
	}
	return 0;
}

void args_release(struct fs_args *a)
{
	free(a->mountpoint);
	free(a->log_file);
	free(a->debug_cats);
	free(a->password_command);
	sync_config_release(&a->cfg);
}
