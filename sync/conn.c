/*
 * conn.c - one logged-in IMAP connection: TLS (implicit or STARTTLS),
 * greeting, LOGIN, capabilities, SELECT, and the one place where
 * libetpan's return codes become errno values.
 */
#define LOG_CAT "imap"
#include "sync_i.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common.h"
#include "imap_i.h"

/* what callers see is struct conn; the rest is private */
struct conn_priv {
	struct conn pub; /* first: conn_priv() casts back */
	bool broken; /* stream, parse or BYE error: only free it now */
	char *host; /* owned, for messages */
	char *port; /* owned */
	int timeout_ms;
};

static struct conn_priv *conn_priv(const struct conn *c)
{
	return (struct conn_priv *)c;
}

void sync_config_release(struct sync_config *cfg)
{
	if (cfg->password) {
		explicit_bzero(cfg->password, strlen(cfg->password));
		free(cfg->password);
	}
	free(cfg->user);
	free(cfg->host);
	free(cfg->port);
	free(cfg->cafile);
	free(cfg->cache_dir);
	memset(cfg, 0, sizeof(*cfg));
}

bool conn_name_ok(const char *s)
{
	return s && !strpbrk(s, "\r\n");
}

/* The server's text from the last reply, made printable, into @buf. */
static const char *conn_text(mailimap *imap, char *buf, size_t len)
{
	const char *s = imap ? imap->imap_response : NULL;
	size_t i;

	if (!s || !*s)
		return "no reason given";
	for (i = 0; s[i] && i + 1 < len; i++) {
		unsigned char ch = s[i];

		buf[i] = ch < 0x20 || ch == 0x7f ? '?' : ch;
	}
	buf[i] = '\0';
	return buf;
}

static bool conn_looks_private(const char *s, size_t n)
{
	static const char *const words[] = { "LOGIN ", "AUTHENTICATE " };
	size_t i, j, w;

	/* LOGIN arrives as DATA_SENT_PRIVATE; this only guards against a
	 * libetpan that stops marking it */
	for (w = 0; w < sizeof(words) / sizeof(words[0]); w++) {
		size_t k = strlen(words[w]);

		for (i = 0; i + k <= n; i++) {
			for (j = 0; j < k; j++)
				if ((s[i + j] & ~0x20) != words[w][j] &&
				    s[i + j] != words[w][j])
					break;
			if (j == k)
				return true;
		}
	}
	return false;
}

/*
 * Protocol trace under "-o debug=imap". Passwords (DATA_SENT_PRIVATE) are
 * never shown, and buffers are cut short: they can hold whole messages.
 */
static void conn_log(mailimap *imap, int type, const char *str, size_t size,
		     void *ctx)
{
	char line[256];
	const char *dir;
	size_t i, n = 0, shown = size < 200 ? size : 200;

	(void)imap;
	(void)ctx;
	switch (type) {
	case MAILSTREAM_LOG_TYPE_DATA_SENT:
		dir = "C";
		if (conn_looks_private(str, size)) {
			log_debug("C: <%zu bytes not shown>", size);
			return;
		}
		break;
	case MAILSTREAM_LOG_TYPE_DATA_RECEIVED:
		dir = "S";
		break;
	case MAILSTREAM_LOG_TYPE_DATA_SENT_PRIVATE:
		log_debug("C: <%zu private bytes not shown>", size);
		return;
	default:
		return;
	}
	for (i = 0; i < shown && n + 3 < sizeof(line); i++) {
		unsigned char ch = str[i];

		if (ch == '\r' || (ch == '\n' && i + 1 == size))
			continue;
		if (ch == '\n') {
			line[n++] = '\\';
			line[n++] = 'n';
		} else {
			line[n++] = ch < 0x20 || ch >= 0x7f ? '.' : ch;
		}
	}
	line[n] = '\0';
	if (size > shown)
		log_debug("%s: %s [%zu more bytes]", dir, line, size - shown);
	else
		log_debug("%s: %s", dir, line);
}

/* the mailimap codes that mean the connection is gone */
static bool conn_rc_is_fatal(int rc)
{
	switch (rc) {
	case MAILIMAP_ERROR_STREAM:
	case MAILIMAP_ERROR_PARSE:
	case MAILIMAP_ERROR_FATAL:
	case MAILIMAP_ERROR_CONNECTION_REFUSED:
	case MAILIMAP_ERROR_DONT_ACCEPT_CONNECTION:
	case MAILIMAP_ERROR_SSL:
	case MAILIMAP_ERROR_NEEDS_MORE_DATA:
	/* a body handler that aborted leaves the rest of the reply
	 * unread, and real out-of-memory leaves the parser lost */
	case MAILIMAP_ERROR_MEMORY:
		return true;
	default:
		return false;
	}
}

int conn_errno(struct conn *c, int rc, const char *what)
{
	struct conn_priv *p = conn_priv(c);
	char text[512];

	switch (rc) {
	case MAILIMAP_NO_ERROR:
	case MAILIMAP_NO_ERROR_AUTHENTICATED:
	case MAILIMAP_NO_ERROR_NON_AUTHENTICATED:
		return 0;
	case MAILIMAP_ERROR_PROTOCOL:
		/* tagged BAD: the command we built was wrong */
		log_error("cannot %s: server rejected the command: %s", what,
			  conn_text(c->imap, text, sizeof(text)));
		return -EPROTO;
	case MAILIMAP_ERROR_BAD_STATE:
		log_error("cannot %s: command not allowed in this state", what);
		return -EPROTO;
	case MAILIMAP_ERROR_INVAL:
		log_error("cannot %s: invalid argument", what);
		return -EINVAL;
	}
	if (conn_rc_is_fatal(rc)) {
		p->broken = true;
		if (rc == MAILIMAP_ERROR_FATAL)
			log_warn("cannot %s: server closed the session: %s",
				 what, conn_text(c->imap, text, sizeof(text)));
		else if (rc == MAILIMAP_ERROR_PARSE)
			log_warn("cannot %s: unparsable reply from %s", what,
				 p->host);
		else
			log_warn("cannot %s: connection to %s lost "
				 "(libetpan error %d)",
				 what, p->host, rc);
		return -EIO;
	}
	/* every other code is one command's tagged NO */
	log_warn("cannot %s: %s", what, conn_text(c->imap, text, sizeof(text)));
	return -EREMOTE;
}

bool conn_is_broken(const struct conn *c)
{
	return conn_priv(c)->broken;
}

/* Free without another word to the server: no LOGOUT on a dead line. */
static void conn_drop(struct conn_priv *p)
{
	mailimap *imap = p->pub.imap;

	if (imap) {
		if (imap->imap_stream) {
			mailstream_close(imap->imap_stream);
			imap->imap_stream = NULL;
		}
		mailimap_free(imap);
	}
	free(p->pub.selected);
	free(p->host);
	free(p->port);
	free(p);
}

void conn_close(struct conn *c)
{
	struct conn_priv *p;

	if (!c)
		return;
	p = conn_priv(c);
	/* mailimap_logout closes and frees the stream on every path */
	if (!p->broken && c->imap && c->imap->imap_stream)
		mailimap_logout(c->imap);
	conn_drop(p);
}

/*
 * Describe a failed step of conn_open in @err and pick the errno. A
 * stream error after the full timeout was our deadline firing.
 */
static int conn_open_fail(struct conn_priv *p, int rc, const char *what,
			  long long started, char *err, size_t errlen)
{
	char text[512];
	const char *cause;
	int ret;

	if (rc == MAILIMAP_ERROR_STREAM &&
	    now_ms() - started >= p->timeout_ms - 100) {
		cause = "timed out";
		ret = -ETIMEDOUT;
	} else if (rc == MAILIMAP_ERROR_STREAM) {
		cause = "connection closed by server";
		ret = -EIO;
	} else if (rc == MAILIMAP_ERROR_PARSE) {
		cause = "unexpected reply";
		ret = -EPROTO;
	} else {
		cause = conn_text(p->pub.imap, text, sizeof(text));
		ret = conn_rc_is_fatal(rc) ? -EIO : -EPROTO;
	}
	snprintf(err, errlen, "cannot %s %s:%s: %s", what, p->host, p->port,
		 cause);
	return ret;
}

/* CAPABILITY, refreshing libetpan's cache that the has_* helpers read */
static int conn_capability(mailimap *imap)
{
	struct mailimap_capability_data *cd = NULL;
	struct mailimap_connection_info *ci = imap->imap_connection_info;
	int r;

	/*
	 * libetpan 1.9.4 answers an OK by copying the cached list without
	 * looking: with no list yet (none in the greeting) and a reply
	 * without a CAPABILITY line, it dereferences NULL. An empty list
	 * in the cache makes that "no capabilities"; a CAPABILITY line
	 * replaces it.
	 */
	if (ci && !ci->imap_capability) {
		clist *none = imap_must(clist_new());

		ci->imap_capability =
			imap_must(mailimap_capability_data_new(none));
	}
	r = mailimap_capability(imap, &cd);

	if (cd)
		mailimap_capability_data_free(cd);
	return r;
}

static bool conn_caps_known(mailimap *imap)
{
	return imap->imap_connection_info &&
	       imap->imap_connection_info->imap_capability;
}

static unsigned conn_probe_caps(mailimap *imap)
{
	unsigned caps = 0;

	if (mailimap_has_condstore(imap))
		caps |= CAP_CONDSTORE;
	if (mailimap_has_qresync(imap))
		caps |= CAP_QRESYNC;
	if (mailimap_has_extension(imap, "MOVE"))
		caps |= CAP_MOVE;
	if (mailimap_has_uidplus(imap))
		caps |= CAP_UIDPLUS;
	if (mailimap_has_idle(imap))
		caps |= CAP_IDLE;
	if (mailimap_has_extension(imap, "SPECIAL-USE"))
		caps |= CAP_SPECIAL_USE;
	if (mailimap_has_extension(imap, "LIST-STATUS"))
		caps |= CAP_LIST_STATUS;
	if (mailimap_has_enable(imap))
		caps |= CAP_ENABLE;
	if (mailimap_has_extension(imap, "OBJECTID"))
		caps |= CAP_OBJECTID;
	if (mailimap_has_extension(imap, "NOTIFY"))
		caps |= CAP_NOTIFY;
	if (mailimap_has_extension(imap, "LITERAL+"))
		caps |= CAP_LITERALPLUS;
	if (mailimap_has_extension(imap, "COMPRESS=DEFLATE"))
		caps |= CAP_COMPRESS;
	return caps;
}

/*
 * RFC 4978 COMPRESS DEFLATE where the server offers it: on a link whose
 * bandwidth is the limit, mail (text) crosses in a third of the bytes.
 * A NO leaves the session as it was; once the server said OK it
 * compresses, so a stream we cannot wrap is a lost session.
 */
static int conn_compress(struct conn_priv *p, const struct sync_config *cfg,
			 char *err, size_t errlen)
{
	struct conn *c = &p->pub;
	long long t0 = now_ms();
	int r;

	if (cfg->no_compress || !(c->caps & CAP_COMPRESS))
		return 0;
	r = imap_raw(c, "COMPRESS DEFLATE", NULL, NULL);
	if (r == MAILIMAP_ERROR_EXTENSION) {
		log_debug("%s refused COMPRESS DEFLATE: going on without",
			  p->host);
		return 0;
	}
	if (r)
		return conn_open_fail(p, r, "turn on compression with", t0,
				      err, errlen);
	r = deflate_start(c->imap->imap_stream);
	if (r) {
		snprintf(err, errlen, "cannot compress the session with %s: %s",
			 p->host, strerror(-r));
		return r;
	}
	c->compressed = true;
	return 0;
}

/* RFC 3501 §6.2.3 STARTTLS, then forget what was said in plaintext */
static int conn_starttls(struct conn_priv *p, char *err, size_t errlen)
{
	mailimap *imap = p->pub.imap;
	char text[512];
	long long t0 = now_ms();
	int r, rc;

	if (!conn_caps_known(imap)) {
		r = conn_capability(imap);
		if (r)
			return conn_open_fail(p, r, "get capabilities of", t0,
					      err, errlen);
	}
	if (!mailimap_has_extension(imap, "STARTTLS")) {
		snprintf(err, errlen, "server %s does not offer STARTTLS",
			 p->host);
		return -EPROTO;
	}
	t0 = now_ms();
	r = mailimap_starttls(imap);
	/* Debian's libetpan itself fails STARTTLS when bytes follow the
	 * OK; tls_start checks the same for a libetpan that does not */
	if (r == MAILIMAP_ERROR_STARTTLS && imap->imap_stream &&
	    imap->imap_stream->read_buffer_len) {
		snprintf(err, errlen,
			 "cannot start TLS with %s: server sent data after "
			 "accepting STARTTLS",
			 p->host);
		return -EPROTO;
	}
	if (r == MAILIMAP_ERROR_STARTTLS) {
		snprintf(err, errlen, "server %s refused STARTTLS: %s", p->host,
			 conn_text(imap, text, sizeof(text)));
		return -EPROTO;
	}
	if (r)
		return conn_open_fail(p, r, "send STARTTLS to", t0, err,
				      errlen);
	rc = tls_start(imap->imap_stream, err, errlen);
	if (rc) {
		p->broken = true;
		return rc;
	}
	/* capabilities seen before TLS may have been forged */
	t0 = now_ms();
	r = conn_capability(imap);
	if (r)
		return conn_open_fail(p, r, "get capabilities of", t0, err,
				      errlen);
	return 0;
}

/* whether @s has a control character (a bearer token or a user name
 * must not: ^A separates the fields of the SASL response) */
static bool conn_has_ctl(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return true;
	return false;
}

/* what login attempt @r (begun at @t0) came to: 0, -EACCES for a
 * refusal, else the connection's failure; said in @err */
static int login_result(struct conn_priv *p, const struct sync_config *cfg,
			int r, long long t0, char *err, size_t errlen)
{
	char text[512];

	if (r == MAILIMAP_ERROR_LOGIN) {
		snprintf(err, errlen, "login as %s refused by server: %s",
			 cfg->user, conn_text(p->pub.imap, text, sizeof(text)));
		return -EACCES;
	}
	if (r) {
		if (conn_rc_is_fatal(r))
			p->broken = true;
		return conn_open_fail(p, r, "log in to", t0, err, errlen);
	}
	return 0;
}

/* AUTHENTICATE XOAUTH2 or OAUTHBEARER with @token */
static int oauth_with(struct conn_priv *p, const struct sync_config *cfg,
		      const char *token, char *err, size_t errlen)
{
	mailimap *imap = p->pub.imap;
	bool bearer = cfg->auth == SYNC_AUTH_OAUTHBEARER;
	const char *mech = bearer ? "OAUTHBEARER" : "XOAUTH2";
	char text[512], why[400];
	long long t0;
	int r;

	if (!mailimap_has_authentication(imap, mech)) {
		snprintf(err, errlen,
			 "cannot log in to %s: server does not offer "
			 "AUTHENTICATE %s (no AUTH=%s in its capabilities)",
			 p->host, mech, mech);
		return -EACCES;
	}
	if (conn_has_ctl(cfg->user)) {
		snprintf(err, errlen, "user name contains a control character");
		return -EINVAL;
	}
	if (!*token || conn_has_ctl(token) || strchr(token, ' ')) {
		snprintf(err, errlen,
			 "access token is empty or contains a space or a "
			 "control character");
		return -EINVAL;
	}
	t0 = now_ms();
	r = imap_oauth(imap, bearer, cfg->user, token, p->host,
		       p->port, why, sizeof(why));
	if (r == MAILIMAP_ERROR_LOGIN && *why) {
		snprintf(err, errlen,
			 "login as %s refused by server: %s (%s error %s)",
			 cfg->user, conn_text(imap, text, sizeof(text)), mech,
			 why);
		return -EACCES;
	}
	return login_result(p, cfg, r, t0, err, errlen);
}

/* the same with the token of the moment: password_command run again
 * where the mount was told to, else the one read at start */
static int conn_oauth(struct conn_priv *p, const struct sync_config *cfg,
		      char *err, size_t errlen)
{
	char *fresh = NULL;
	int rc;

	if (!cfg->token_again)
		return oauth_with(p, cfg, cfg->password, err, errlen);
	rc = cfg->token_again(cfg->token_aux, &fresh, err, errlen);
	if (rc)
		return rc;
	rc = oauth_with(p, cfg, fresh, err, errlen);
	explicit_bzero(fresh, strlen(fresh));
	free(fresh);
	return rc;
}

static int conn_login(struct conn_priv *p, const struct sync_config *cfg,
		      char *err, size_t errlen)
{
	mailimap *imap = p->pub.imap;
	long long t0 = now_ms();
	int r;

	if (!conn_caps_known(imap)) {
		r = conn_capability(imap);
		if (r)
			return conn_open_fail(p, r, "get capabilities of", t0,
					      err, errlen);
	}
	if (cfg->auth == SYNC_AUTH_XOAUTH2 ||
	    cfg->auth == SYNC_AUTH_OAUTHBEARER)
		return conn_oauth(p, cfg, err, errlen);
	/* RFC 3501 §6.2.3: LOGIN must not be sent at all then */
	if (cfg->auth == SYNC_AUTH_PLAIN ||
	    mailimap_has_extension(imap, "LOGINDISABLED")) {
		if (!mailimap_has_authentication(imap, "PLAIN")) {
			snprintf(err, errlen,
				 "cannot log in to %s: server offers neither "
				 "LOGIN nor AUTHENTICATE PLAIN",
				 p->host);
			return -EACCES;
		}
		t0 = now_ms();
		/* through Cyrus SASL's PLAIN plugin (libsasl2-modules) */
		r = mailimap_authenticate(imap, "PLAIN", p->host, NULL, NULL,
					  cfg->user, cfg->user, cfg->password,
					  NULL);
		/* a refusal comes back as the SASL error */
		if (r == MAILIMAP_ERROR_SASL && !conn_rc_is_fatal(r))
			r = MAILIMAP_ERROR_LOGIN;
	} else {
		t0 = now_ms();
		r = mailimap_login(imap, cfg->user, cfg->password);
	}
	return login_result(p, cfg, r, t0, err, errlen);
}

/* a greeting is one short line; a server that sends more without a
 * line end is not an IMAP server, and libetpan would buffer it all */
#define GREETING_MAX 4096

/* an atom of a CAPABILITY code (RFC 3501 §9 atom-char): no specials */
static bool conn_is_atom(const char *s, size_t n)
{
	if (!n)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = s[i];

		if (ch <= 0x20 || ch >= 0x7f || strchr("(){%*\"\\]", ch))
			return false;
	}
	return true;
}

/*
 * Read the greeting ourselves, bounded, and hand libetpan a line it
 * can parse safely: the condition (OK, PREAUTH, BYE), a CAPABILITY
 * code if it is well formed, and the text made printable. libetpan
 * 1.9.4 crashes on some valid greetings (a NULL dereference parsing
 * "* OK [PERMANENTFLAGS ()] hi") and reads a line of any length into
 * memory, so no other response code reaches its greeting parser: they
 * mean nothing before a SELECT anyway (RFC 3501 §7.1).
 */
static int conn_greeting(mailstream *st, const char *host, const char *port,
			 int timeout_ms, char *err, size_t errlen)
{
	static const char *const conds[] = { "OK", "PREAUTH", "BYE" };
	char line[GREETING_MAX + 1], out[GREETING_MAX + 64];
	const char *p, *text, *cond;
	size_t n = 0, k, textlen;
	long long t0 = now_ms();

	for (;;) {
		char ch;

		if (mailstream_read(st, &ch, 1) != 1) {
			bool late = now_ms() - t0 >= timeout_ms - 100;

			snprintf(err, errlen, "cannot read greeting from %s:%s: %s",
				 host, port,
				 late ? "timed out" : "connection closed by server");
			return late ? -ETIMEDOUT : -EIO;
		}
		if (ch == '\n')
			break;
		if (n == GREETING_MAX) {
			snprintf(err, errlen,
				 "cannot read greeting from %s:%s: no line end "
				 "in its first %d bytes",
				 host, port, GREETING_MAX);
			return -EPROTO;
		}
		line[n++] = ch;
	}
	if (n && line[n - 1] == '\r')
		n--;
	line[n] = '\0';
	cond = NULL;
	p = line;
	for (size_t i = 0; i < sizeof(conds) / sizeof(conds[0]) && !cond; i++) {
		size_t cl = strlen(conds[i]);

		if (!strncmp(line, "* ", 2) && !strncasecmp(line + 2, conds[i], cl) &&
		    (!line[cl + 2] || line[cl + 2] == ' ')) {
			cond = conds[i];
			p = line + 2 + cl;
		}
	}
	if (!cond) {
		for (k = 0; k < n && k < 60; k++)
			out[k] = line[k] < 0x20 || line[k] == 0x7f ? '?' : line[k];
		out[k] = '\0';
		snprintf(err, errlen,
			 "cannot read greeting from %s:%s: not an IMAP greeting: "
			 "%s",
			 host, port, out);
		return -EPROTO;
	}
	while (*p == ' ')
		p++;
	k = (size_t)snprintf(out, sizeof(out), "* %s ", cond);
	text = p;
	if (*p == '[') {
		const char *end = strchr(p, ']');

		text = end ? end + 1 : p + strlen(p);
		if (end && !strncasecmp(p + 1, "CAPABILITY ", 11)) {
			/* kept only if every word is an atom */
			const char *w = p + 12;
			bool ok = true;

			while (ok && w < end) {
				const char *sp = memchr(w, ' ', (size_t)(end - w));
				size_t wl = (size_t)((sp ? sp : end) - w);

				ok = conn_is_atom(w, wl);
				w += wl + 1;
			}
			if (ok) {
				memcpy(out + k, p, (size_t)(end - p) + 1);
				k += (size_t)(end - p) + 1;
				out[k++] = ' ';
			}
		} else {
			log_debug("greeting of %s: response code ignored", host);
		}
		while (*text == ' ')
			text++;
	}
	/* libetpan wants some text; control characters it may not like */
	textlen = strlen(text);
	if (!textlen) {
		text = "ready";
		textlen = 5;
	}
	for (size_t i = 0; i < textlen; i++) {
		unsigned char ch = text[i];

		/* a text that starts with "[" is parsed as a response code
		 * again ("* OK [][BADCHARSET (" crashes libetpan too) */
		out[k++] = ch < 0x20 || ch == 0x7f || (!i && ch == '[')
				   ? '?'
				   : (char)ch;
	}
	out[k++] = '\r';
	out[k++] = '\n';
	/* what the server sent after the greeting stays behind it */
	if (st->read_buffer_len + k > st->buffer_max_size) {
		snprintf(err, errlen,
			 "cannot read greeting from %s:%s: the server did not "
			 "wait for a command",
			 host, port);
		return -EPROTO;
	}
	memmove(st->read_buffer + k, st->read_buffer, st->read_buffer_len);
	memcpy(st->read_buffer, out, k);
	st->read_buffer_len += k;
	return 0;
}

int conn_open(const struct sync_config *cfg, struct conn **out, char *err,
	      size_t errlen)
{
	struct tls_opts o = { 0 };
	struct conn_priv *p;
	mailstream *st;
	mailimap *imap;
	char text[512];
	long long t0;
	int r, rc;

	*out = NULL;
	/* libetpan sends strings raw inside quotes: a CR or LF would end
	 * the command and smuggle in another */
	if (!cfg->user || !*cfg->user || !conn_name_ok(cfg->user)) {
		snprintf(err, errlen,
			 "user name is empty or contains a line break");
		return -EINVAL;
	}
	if (!cfg->password || !conn_name_ok(cfg->password)) {
		snprintf(err, errlen,
			 "password is missing or contains a line break");
		return -EINVAL;
	}
	if (!cfg->host || !*cfg->host || !cfg->port || !*cfg->port) {
		snprintf(err, errlen, "no server host or port given");
		return -EINVAL;
	}

	o.host = cfg->host;
	o.port = cfg->port;
	o.implicit = !cfg->starttls;
	o.cafile = cfg->cafile;
	o.timeout = cfg->timeout ? (int)cfg->timeout : 30;
	rc = tls_open(&o, &st, err, errlen);
	if (rc)
		return rc;

	imap = mailimap_new(0, NULL);
	if (!imap) {
		mailstream_close(st);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	mailimap_set_logger(imap, conn_log, NULL);
	/* has no effect on our driver, which has its own deadline */
	mailimap_set_timeout(imap, o.timeout);

	p = xcalloc(1, sizeof(*p));
	p->pub.imap = imap;
	p->host = xstrdup(cfg->host);
	p->port = xstrdup(cfg->port);
	p->timeout_ms = o.timeout * 1000;

	t0 = now_ms();
	rc = conn_greeting(st, p->host, p->port, p->timeout_ms, err, errlen);
	if (rc) {
		/* the stream is not libetpan's yet */
		mailstream_close(st);
		goto out_drop;
	}
	r = mailimap_connect(imap, st);
	if (r == MAILIMAP_ERROR_DONT_ACCEPT_CONNECTION) {
		/* a BYE greeting */
		snprintf(err, errlen, "server %s:%s refused the session: %s",
			 p->host, p->port, conn_text(imap, text, sizeof(text)));
		rc = -ECONNREFUSED;
		goto out_drop;
	}
	if (r != MAILIMAP_NO_ERROR_NON_AUTHENTICATED &&
	    r != MAILIMAP_NO_ERROR_AUTHENTICATED) {
		rc = conn_open_fail(p, r, "read greeting from", t0, err,
				    errlen);
		goto out_drop;
	}

	if (cfg->starttls) {
		/* STARTTLS is only allowed before authentication; a
		 * PREAUTH in plaintext would leave us with no TLS */
		if (r == MAILIMAP_NO_ERROR_AUTHENTICATED) {
			snprintf(err, errlen,
				 "server %s sent PREAUTH before STARTTLS: "
				 "refusing to continue without TLS",
				 p->host);
			rc = -EPROTO;
			goto out_drop;
		}
		rc = conn_starttls(p, err, errlen);
		if (rc)
			goto out_drop;
	}

	if (r == MAILIMAP_NO_ERROR_AUTHENTICATED) {
		log_info("server %s pre-authenticated the session", p->host);
	} else {
		rc = conn_login(p, cfg, err, errlen);
		if (rc)
			goto out_drop;
	}

	/* the pre-login list is short (Dovecot) and may not be re-sent */
	t0 = now_ms();
	r = conn_capability(imap);
	if (r) {
		rc = conn_open_fail(p, r, "get capabilities of", t0, err,
				    errlen);
		goto out_drop;
	}
	p->pub.caps = conn_probe_caps(imap);
	log_debug("logged in to %s:%s as %s, caps 0x%x", p->host, p->port,
		  cfg->user, p->pub.caps);
	rc = conn_compress(p, cfg, err, errlen);
	if (rc)
		goto out_drop;
	*out = &p->pub;
	return 0;

out_drop:
	conn_drop(p);
	return rc;
}

/* HIGHESTMODSEQ from the reply to the last command, 0 if none */
static uint64_t conn_reply_modseq(mailimap *imap)
{
	struct mailimap_response_info *ri = imap->imap_response_info;
	uint64_t modseq = 0;
	clistiter *cur;

	if (!ri || !ri->rsp_extension_list)
		return 0;
	for (cur = clist_begin(ri->rsp_extension_list); cur;
	     cur = clist_next(cur)) {
		struct mailimap_extension_data *ext = clist_content(cur);
		struct mailimap_condstore_resptextcode *code;

		if (ext->ext_extension->ext_id !=
			MAILIMAP_EXTENSION_CONDSTORE ||
		    ext->ext_type != MAILIMAP_CONDSTORE_TYPE_RESP_TEXT_CODE)
			continue;
		code = ext->ext_data;
		if (code->cs_type ==
		    MAILIMAP_CONDSTORE_RESPTEXTCODE_HIGHESTMODSEQ)
			modseq = code->cs_data.cs_modseq_value;
		else if (code->cs_type ==
			 MAILIMAP_CONDSTORE_RESPTEXTCODE_NOMODSEQ)
			modseq = 0;
	}
	return modseq;
}

int conn_select(struct conn *c, const char *name, bool readonly)
{
	uint64_t modseq = 0;
	char *what;
	int r, rc;

	if (!conn_name_ok(name))
		return -EINVAL;
	if (conn_is_broken(c))
		return -EIO;
	if (c->selected && c->readonly == readonly &&
	    !strcmp(c->selected, name))
		return 0;
	free(c->selected);
	c->selected = NULL;
	c->highestmodseq = 0;

	if (c->caps & CAP_CONDSTORE) {
		/* RFC 7162 §3.1.8: the (CONDSTORE) parameter turns it on
		 * and returns HIGHESTMODSEQ in the same reply */
		if (readonly)
			r = mailimap_examine_condstore(c->imap, name, &modseq);
		else
			r = mailimap_select_condstore(c->imap, name, &modseq);
	} else {
		r = readonly ? mailimap_examine(c->imap, name)
			     : mailimap_select(c->imap, name);
		if (!r)
			modseq = conn_reply_modseq(c->imap);
	}
	if (r) {
		what = xasprintf("%s folder %s",
				 readonly ? "examine" : "select", name);
		rc = conn_errno(c, r, what);
		free(what);
		if (rc == -EREMOTE)
			return -ENOENT;
		return rc;
	}
	c->selected = xstrdup(name);
	c->readonly = readonly;
	c->highestmodseq = modseq;
	return 0;
}
