/*
 * tls.c - an OpenSSL mailstream_low driver for libetpan.
 *
 * libetpan's own timeout applies only to its built-in drivers, so every
 * connect, handshake, read and write here runs on a non-blocking socket
 * with poll() and a deadline: a stalled server costs at most the timeout,
 * never a hang. STARTTLS switches the same driver from plain to TLS in
 * place (tls_start), so nothing is swapped under libetpan.
 */
#define LOG_CAT "tls"
#include "sync_i.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

struct tls_stream {
	int fd; /* owned; closed only by tls_close */
	SSL_CTX *ctx; /* owned */
	SSL *ssl; /* owned, NULL until the handshake */
	bool tls; /* handshake done: all I/O goes through ssl */
	bool failed; /* fatal TLS error: send no close_notify */
	bool host_is_ip;
	bool implicit; /* imaps: TLS from the first byte */
	int timeout_ms;
	/* a reply must bring TRICKLE_MIN bytes per timeout, or be whole:
	 * a server sending a byte now and then cannot hold a command (and
	 * a reader waiting on it) for ever. Reset when a command is sent */
	long long window_ms; /* when the current window began */
	size_t window_bytes; /* bytes read in it */
	char *host; /* owned: as given, for messages and verification */
	char *port; /* owned */
	char *cafile; /* owned, may be NULL */
};

/*
 * OpenSSL writes to the socket with write(), which raises SIGPIPE when
 * the server has gone. Block it around each call and swallow the one we
 * caused, so a dropped connection is an error return, not a dead daemon.
 */
struct tls_sigpipe {
	sigset_t old;
	bool was_pending;
};

static void sigpipe_block(struct tls_sigpipe *g)
{
	sigset_t set, pending;

	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	sigpending(&pending);
	g->was_pending = sigismember(&pending, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &set, &g->old);
}

static void sigpipe_unblock(struct tls_sigpipe *g)
{
	static const struct timespec zero = { 0, 0 };
	sigset_t set, pending;
	int saved = errno;

	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	if (!g->was_pending) {
		sigpending(&pending);
		if (sigismember(&pending, SIGPIPE))
			sigtimedwait(&set, NULL, &zero);
	}
	pthread_sigmask(SIG_SETMASK, &g->old, NULL);
	errno = saved;
}

/*
 * A stop must not wait out the network timeout of each thread that is
 * connecting, reading or writing: tls_cancel_all() makes this pipe
 * readable for good, and every wait below watches it too.
 */
static int cancel_pipe[2] = { -1, -1 };
static pthread_once_t cancel_once = PTHREAD_ONCE_INIT;

static void cancel_init(void)
{
	if (pipe2(cancel_pipe, O_CLOEXEC | O_NONBLOCK))
		cancel_pipe[0] = cancel_pipe[1] = -1;
}

void tls_cancel_all(void)
{
	pthread_once(&cancel_once, cancel_init);
	if (cancel_pipe[1] >= 0 && write(cancel_pipe[1], "x", 1) < 0)
		log_debug("cannot cancel the network waits: %s",
			  strerror(errno));
}

/* Wait for @events on @fd until @deadline (now_ms() clock).
 * Returns 0 when ready (errors included: the next call reports them),
 * -ETIMEDOUT, -ECANCELED (tls_cancel_all), or another -errno. */
static int tls_wait(int fd, short events, long long deadline)
{
	struct pollfd p[2] = { { .fd = fd, .events = events },
			       { .fd = -1, .events = POLLIN } };
	long long left;
	int r;

	pthread_once(&cancel_once, cancel_init);
	p[1].fd = cancel_pipe[0];
	for (;;) {
		left = deadline - now_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		r = poll(p, 2, left > INT_MAX ? INT_MAX : (int)left);
		if (r > 0 && p[1].revents)
			return -ECANCELED;
		if (r > 0)
			return 0;
		if (r == 0)
			return -ETIMEDOUT;
		if (errno != EINTR)
			return -errno;
	}
}

/* The reason of the last OpenSSL error, or a fallback. */
static const char *tls_reason(int sslerr, const char *fallback)
{
	unsigned long e = ERR_peek_last_error();
	const char *r = e ? ERR_reason_error_string(e) : NULL;

	if (r)
		return r;
	if (sslerr == SSL_ERROR_SYSCALL && errno)
		return strerror(errno);
	if (sslerr == SSL_ERROR_SYSCALL || sslerr == SSL_ERROR_ZERO_RETURN)
		return "connection closed by server";
	return fallback;
}

static int tls_connect_one(struct tls_stream *t, const struct addrinfo *ai)
{
	int fd, soerr = 0, one = 1, rc;
	socklen_t len = sizeof(soerr);

	fd = socket(ai->ai_family,
		    ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
		    ai->ai_protocol);
	if (fd < 0)
		return -errno;
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
		if (errno != EINPROGRESS) {
			rc = -errno;
			goto out_close;
		}
		rc = tls_wait(fd, POLLOUT, now_ms() + t->timeout_ms);
		if (rc)
			goto out_close;
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
			soerr = errno;
		if (soerr) {
			rc = -soerr;
			goto out_close;
		}
	}
	/* commands are small and answered one by one; keepalive notices a
	 * peer that vanished during a long IDLE */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	t->fd = fd;
	return 0;
out_close:
	close(fd);
	return rc;
}

static int tls_connect(struct tls_stream *t, char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC,
				  .ai_socktype = SOCK_STREAM };
	struct addrinfo *res, *ai;
	int rc, gai;

	gai = getaddrinfo(t->host, t->port, &hints, &res);
	if (gai) {
		snprintf(err, errlen, "cannot resolve %s: %s", t->host,
			 gai == EAI_SYSTEM ? strerror(errno)
					   : gai_strerror(gai));
		return -EHOSTUNREACH;
	}
	rc = -EHOSTUNREACH;
	for (ai = res; ai; ai = ai->ai_next) {
		rc = tls_connect_one(t, ai);
		if (!rc)
			break;
		log_debug("connect to %s:%s (family %d): %s", t->host, t->port,
			  ai->ai_family, strerror(-rc));
	}
	freeaddrinfo(res);
	if (!rc)
		return 0;
	if (rc == -ETIMEDOUT) {
		snprintf(err, errlen, "cannot connect to %s:%s: timed out",
			 t->host, t->port);
		return -ETIMEDOUT;
	}
	snprintf(err, errlen, "cannot connect to %s:%s: %s", t->host, t->port,
		 strerror(-rc));
	return rc == -ECONNREFUSED ? -ECONNREFUSED : -EHOSTUNREACH;
}

static SSL_CTX *tls_ctx_new(struct tls_stream *t, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (!ctx) {
		snprintf(err, errlen, "cannot set up TLS: %s",
			 tls_reason(0, "out of memory"));
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	/* we handle WANT_READ/WANT_WRITE ourselves, with the deadline */
	SSL_CTX_clear_mode(ctx, SSL_MODE_AUTO_RETRY);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if (t->cafile) {
		/* OpenSSL would only say "system lib" */
		if (access(t->cafile, R_OK) < 0) {
			snprintf(err, errlen, "cannot load CA file %s: %s",
				 t->cafile, strerror(errno));
			SSL_CTX_free(ctx);
			return NULL;
		}
		if (SSL_CTX_load_verify_locations(ctx, t->cafile, NULL) != 1) {
			snprintf(err, errlen, "cannot load CA file %s: %s",
				 t->cafile, tls_reason(0, "unreadable"));
			SSL_CTX_free(ctx);
			return NULL;
		}
	} else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
		snprintf(err, errlen, "cannot load the system trust store: %s",
			 tls_reason(0, "unknown error"));
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

/* a chain that ends at a CA we were not told to trust */
static bool tls_unknown_ca(long v)
{
	return v == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY ||
	       v == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT ||
	       v == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN ||
	       v == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT ||
	       v == X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE;
}

/*
 * Whether the handshake failed on bytes that are no TLS record: a
 * server that greets in plaintext ("* OK" reads as a record of version
 * 0x204f). OpenSSL's own words for it ("wrong version number") help no
 * one.
 */
static bool tls_peer_not_tls(void)
{
	unsigned long e = ERR_peek_last_error();
	int r = ERR_GET_REASON(e);

	return e && ERR_GET_LIB(e) == ERR_LIB_SSL &&
	       (r == SSL_R_WRONG_VERSION_NUMBER ||
		r == SSL_R_PACKET_LENGTH_TOO_LONG ||
		r == SSL_R_UNKNOWN_PROTOCOL || r == SSL_R_HTTP_REQUEST);
}

/* Explain a failed handshake: certificate problems first, since they
 * are what the user can act on; then a hint at the likely mistake. */
static int tls_handshake_error(struct tls_stream *t, int sslerr, char *err,
			       size_t errlen)
{
	long v = SSL_get_verify_result(t->ssl);

	if (v == X509_V_ERR_HOSTNAME_MISMATCH ||
	    v == X509_V_ERR_IP_ADDRESS_MISMATCH) {
		snprintf(err, errlen,
			 "certificate of %s does not match host name %s",
			 t->host, t->host);
	} else if (tls_unknown_ca(v) && t->cafile) {
		snprintf(err, errlen, "cannot verify certificate of %s: %s "
			 "(not issued by a CA in %s)", t->host,
			 X509_verify_cert_error_string(v), t->cafile);
	} else if (tls_unknown_ca(v)) {
		snprintf(err, errlen, "cannot verify certificate of %s: "
			 "unknown certificate authority (a private CA? -o "
			 "cafile=PATH)", t->host);
	} else if (v != X509_V_OK) {
		snprintf(err, errlen, "cannot verify certificate of %s: %s",
			 t->host, X509_verify_cert_error_string(v));
	} else if (t->implicit && tls_peer_not_tls()) {
		snprintf(err, errlen, "TLS handshake with %s:%s failed: the "
			 "server does not speak TLS on this port; for STARTTLS "
			 "use imap://", t->host, t->port);
	} else {
		snprintf(err, errlen, "TLS handshake with %s failed: %s",
			 t->host, tls_reason(sslerr, "unknown error"));
	}
	return -EPROTO;
}

static int tls_handshake(struct tls_stream *t, char *err, size_t errlen)
{
	long long deadline = now_ms() + t->timeout_ms;
	struct tls_sigpipe g;
	int r, e, rc;

	t->ssl = SSL_new(t->ctx);
	if (!t->ssl || SSL_set_fd(t->ssl, t->fd) != 1) {
		snprintf(err, errlen, "cannot set up TLS: %s",
			 tls_reason(0, "out of memory"));
		return -ENOMEM;
	}
	if (t->host_is_ip) {
		/* RFC 6066 §3: no SNI for an address literal */
		if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl),
						  t->host) != 1)
			goto out_setup;
	} else {
		SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		if (SSL_set1_host(t->ssl, t->host) != 1 ||
		    SSL_set_tlsext_host_name(t->ssl, t->host) != 1)
			goto out_setup;
	}

	for (;;) {
		ERR_clear_error();
		errno = 0;
		sigpipe_block(&g);
		r = SSL_connect(t->ssl);
		e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(t->ssl, r);
		sigpipe_unblock(&g);
		if (r == 1)
			break;
		if (e == SSL_ERROR_WANT_READ)
			rc = tls_wait(t->fd, POLLIN, deadline);
		else if (e == SSL_ERROR_WANT_WRITE)
			rc = tls_wait(t->fd, POLLOUT, deadline);
		else {
			t->failed = true;
			return tls_handshake_error(t, e, err, errlen);
		}
		if (rc) {
			t->failed = true;
			snprintf(err, errlen,
				 "TLS handshake with %s failed: %s", t->host,
				 rc == -ETIMEDOUT ? "timed out"
						  : strerror(-rc));
			return rc == -ETIMEDOUT ? -ETIMEDOUT : -EPROTO;
		}
	}
	/* SSL_VERIFY_PEER already failed the handshake otherwise; check
	 * again so that a change there cannot silently turn this off */
	if (SSL_get_verify_result(t->ssl) != X509_V_OK ||
	    !SSL_get0_peer_certificate(t->ssl)) {
		t->failed = true;
		return tls_handshake_error(t, 0, err, errlen);
	}
	t->tls = true;
	log_debug("%s with %s:%s, %s", SSL_get_version(t->ssl), t->host,
		  t->port, SSL_get_cipher_name(t->ssl));
	return 0;
out_setup:
	snprintf(err, errlen, "cannot set up TLS for %s: %s", t->host,
		 tls_reason(0, "bad host name"));
	return -EINVAL;
}

/*
 * imap:// to a port that speaks TLS from the start: both sides wait for
 * the other, we for a greeting, the server for a ClientHello, until the
 * whole timeout. So when no greeting came within GREETING_PROBE_MS, a
 * second connection to the same address says hello in TLS: an answer
 * that is a TLS record (a handshake or an alert) tells at once. A
 * server that is only slow to greet answers the probe with nothing, or
 * in plaintext, and the wait for its greeting goes on.
 */
#define GREETING_PROBE_MS 2000

/* whether the server at @t->fd's peer answers a ClientHello in TLS,
 * asked until @deadline */
static bool tls_port_is_tls(struct tls_stream *t, long long deadline)
{
	struct sockaddr_storage peer;
	socklen_t len = sizeof(peer);
	struct tls_sigpipe g;
	unsigned char first;
	bool yes = false;
	SSL *ssl = NULL;
	int fd, r;

	if (getpeername(t->fd, (struct sockaddr *)&peer, &len))
		return false;
	fd = socket(peer.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
		    0);
	if (fd < 0)
		return false;
	if (connect(fd, (struct sockaddr *)&peer, len) < 0 &&
	    (errno != EINPROGRESS || tls_wait(fd, POLLOUT, deadline)))
		goto out;
	ssl = SSL_new(t->ctx);
	if (!ssl || SSL_set_fd(ssl, fd) != 1)
		goto out;
	if (!t->host_is_ip)
		SSL_set_tlsext_host_name(ssl, t->host);
	/* sends the ClientHello, then wants to read: all that is needed */
	ERR_clear_error();
	sigpipe_block(&g);
	r = SSL_connect(ssl);
	sigpipe_unblock(&g);
	if (r == 1 || SSL_get_error(ssl, r) != SSL_ERROR_WANT_READ)
		goto out;
	if (tls_wait(fd, POLLIN, deadline))
		goto out;
	/* 0x16 a handshake record, 0x15 an alert; "* OK" is 0x2a */
	if (recv(fd, &first, 1, MSG_PEEK) == 1)
		yes = first == 0x16 || first == 0x15;
out:
	SSL_free(ssl);
	close(fd);
	ERR_clear_error();
	return yes;
}

/* before the greeting of a plain (STARTTLS) connection: refuse a port
 * that speaks TLS from the start, fast */
static int tls_check_greeting(struct tls_stream *t, char *err, size_t errlen)
{
	long long probe_at = now_ms() + GREETING_PROBE_MS;

	if (t->timeout_ms <= GREETING_PROBE_MS ||
	    tls_wait(t->fd, POLLIN, probe_at) != -ETIMEDOUT)
		return 0; /* a greeting, an error: libetpan's to read */
	if (!tls_port_is_tls(t, probe_at + GREETING_PROBE_MS))
		return 0;
	snprintf(err, errlen, "no greeting from %s:%s, which speaks TLS from "
		 "the start: use imaps://", t->host, t->port);
	return -EPROTO;
}

/* bytes a reply must bring per timeout */
#define TRICKLE_MIN 1024

static void window_reset(struct tls_stream *t)
{
	t->window_ms = now_ms();
	t->window_bytes = 0;
}

/* @n bytes came: a window that has its share starts anew */
static ssize_t window_count(struct tls_stream *t, ssize_t n)
{
	t->window_bytes += (size_t)n;
	if (t->window_bytes >= TRICKLE_MIN)
		window_reset(t);
	return n;
}

static ssize_t tls_read(mailstream_low *s, void *buf, size_t count)
{
	struct tls_stream *t = s->data;
	/* within the timeout of the window's start, not of this read's:
	 * a byte now and then does not keep the wait going */
	long long deadline = t->window_ms + t->timeout_ms;
	struct tls_sigpipe g;
	short events;
	size_t n;
	ssize_t r;
	int e, rc;

	if (t->fd < 0 || t->failed)
		return -1;
	for (;;) {
		if (!t->tls) {
			r = recv(t->fd, buf, count, 0);
			if (r > 0)
				return window_count(t, r);
			if (r == 0) {
				log_debug("%s closed the connection", t->host);
				return -1;
			}
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				log_warn("cannot read from %s: %s", t->host,
					 strerror(errno));
				return -1;
			}
			events = POLLIN;
		} else {
			ERR_clear_error();
			errno = 0;
			sigpipe_block(&g);
			r = SSL_read_ex(t->ssl, buf, count, &n);
			e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(t->ssl, 0);
			sigpipe_unblock(&g);
			if (r == 1)
				return window_count(t, (ssize_t)n);
			if (e == SSL_ERROR_WANT_READ) {
				events = POLLIN;
			} else if (e == SSL_ERROR_WANT_WRITE) {
				events = POLLOUT;
			} else if (e == SSL_ERROR_ZERO_RETURN) {
				log_debug("%s closed the TLS session", t->host);
				return -1;
			} else {
				t->failed = true;
				log_warn("cannot read from %s: %s", t->host,
					 tls_reason(e, "TLS error"));
				return -1;
			}
		}
		rc = tls_wait(t->fd, events, deadline);
		if (rc) {
			/* a partial record may be left behind: unusable */
			t->failed = true;
			if (rc == -ETIMEDOUT && t->window_bytes)
				log_warn("%s sends too slowly (%zu bytes in %d "
					 "s), giving up",
					 t->host, t->window_bytes,
					 t->timeout_ms / 1000);
			else if (rc == -ETIMEDOUT)
				log_warn("no data from %s for %d s, giving up",
					 t->host, t->timeout_ms / 1000);
			else if (rc == -ECANCELED)
				log_debug("read from %s cut short: stopping",
					  t->host);
			else
				log_warn("cannot read from %s: %s", t->host,
					 strerror(-rc));
			return -1;
		}
	}
}

static ssize_t tls_write(mailstream_low *s, const void *buf, size_t count)
{
	struct tls_stream *t = s->data;
	long long deadline = now_ms() + t->timeout_ms;
	struct tls_sigpipe g;
	short events;
	size_t n;
	ssize_t r;
	int e, rc;

	if (t->fd < 0 || t->failed)
		return -1;
	if (!count)
		return 0;
	for (;;) {
		if (!t->tls) {
			r = send(t->fd, buf, count, MSG_NOSIGNAL);
			if (r >= 0) {
				window_reset(t); /* a command: a reply to wait for */
				return r;
			}
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				log_warn("cannot write to %s: %s", t->host,
					 strerror(errno));
				return -1;
			}
			events = POLLOUT;
		} else {
			/* a retry after WANT_* repeats the same buffer and
			 * length, as OpenSSL requires */
			ERR_clear_error();
			errno = 0;
			sigpipe_block(&g);
			r = SSL_write_ex(t->ssl, buf, count, &n);
			e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(t->ssl, 0);
			sigpipe_unblock(&g);
			if (r == 1) {
				window_reset(t); /* a command: a reply to wait for */
				return n;
			}
			if (e == SSL_ERROR_WANT_WRITE) {
				events = POLLOUT;
			} else if (e == SSL_ERROR_WANT_READ) {
				events = POLLIN;
			} else {
				t->failed = true;
				log_warn("cannot write to %s: %s", t->host,
					 tls_reason(e, "TLS error"));
				return -1;
			}
		}
		rc = tls_wait(t->fd, events, deadline);
		if (rc) {
			t->failed = true;
			if (rc == -ECANCELED)
				log_debug("write to %s cut short: stopping",
					  t->host);
			else
				log_warn("cannot write to %s: %s", t->host,
					 rc == -ETIMEDOUT ? "timed out"
							  : strerror(-rc));
			return -1;
		}
	}
}

static int tls_close(mailstream_low *s)
{
	struct tls_stream *t = s->data;
	struct tls_sigpipe g;

	if (t->tls && !t->failed) {
		/* one non-blocking try at close_notify; never wait for it */
		ERR_clear_error();
		sigpipe_block(&g);
		SSL_shutdown(t->ssl);
		sigpipe_unblock(&g);
	}
	if (t->fd >= 0)
		close(t->fd);
	t->fd = -1;
	return 0;
}

static int tls_get_fd(mailstream_low *s)
{
	struct tls_stream *t = s->data;

	return t->fd;
}

static void tls_stream_free(struct tls_stream *t)
{
	SSL_free(t->ssl);
	SSL_CTX_free(t->ctx);
	free(t->host);
	free(t->port);
	free(t->cafile);
	free(t);
}

/* libetpan expects this to free the mailstream_low itself as well */
static void tls_free(mailstream_low *s)
{
	tls_stream_free(s->data);
	free(s);
}

static mailstream_low_driver tls_driver = {
	.mailstream_read = tls_read,
	.mailstream_write = tls_write,
	.mailstream_close = tls_close,
	.mailstream_get_fd = tls_get_fd,
	.mailstream_free = tls_free,
};

static bool tls_is_ip(const char *host)
{
	unsigned char a[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, host, a) == 1 ||
	       inet_pton(AF_INET6, host, a) == 1;
}

int tls_open(const struct tls_opts *o, mailstream **out, char *err,
	     size_t errlen)
{
	struct tls_stream *t;
	mailstream_low *low;
	mailstream *st;
	size_t hlen = strlen(o->host);
	int rc;

	*out = NULL;
	t = xcalloc(1, sizeof(*t));
	t->fd = -1;
	/* "[::1]" as in a URL */
	if (hlen > 2 && o->host[0] == '[' && o->host[hlen - 1] == ']')
		t->host = xstrndup(o->host + 1, hlen - 2);
	else
		t->host = xstrdup(o->host);
	t->port = xstrdup(o->port);
	t->cafile = o->cafile ? xstrdup(o->cafile) : NULL;
	t->host_is_ip = tls_is_ip(t->host);
	t->implicit = o->implicit;
	t->timeout_ms = (o->timeout > 0 ? o->timeout : 30) * 1000;
	window_reset(t); /* the greeting's */

	/* trust store first: a bad cafile is reported without a network */
	t->ctx = tls_ctx_new(t, err, errlen);
	if (!t->ctx) {
		rc = t->cafile ? -EINVAL : -EPROTO;
		goto out_free;
	}
	rc = tls_connect(t, err, errlen);
	if (rc)
		goto out_free;
	if (o->implicit)
		rc = tls_handshake(t, err, errlen);
	else
		rc = tls_check_greeting(t, err, errlen);
	if (rc)
		goto out_close;
	low = mailstream_low_new(t, &tls_driver);
	if (!low) {
		rc = -ENOMEM;
		snprintf(err, errlen, "out of memory");
		goto out_close;
	}
	st = mailstream_new(low, 8192);
	if (!st) {
		mailstream_low_close(low);
		mailstream_low_free(low);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	*out = st;
	return 0;
out_close:
	close(t->fd);
out_free:
	tls_stream_free(t);
	return rc;
}

static struct tls_stream *tls_of(mailstream *s)
{
	mailstream_low *low = s ? mailstream_get_low(s) : NULL;
	size_t z;

	/* under COMPRESS, ours is the stream deflate wraps */
	low = deflate_inner(low, &z);
	if (!low || low->driver != &tls_driver)
		return NULL;
	return low->data;
}

int tls_start(mailstream *s, char *err, size_t errlen)
{
	struct tls_stream *t = tls_of(s);
	char c;

	if (!t || !t->ctx || t->tls || t->ssl || t->fd < 0) {
		snprintf(err, errlen, "cannot start TLS: not a plain stream");
		return -EINVAL;
	}
	/*
	 * Anything the server sent after its OK arrived in plaintext and
	 * would be taken as the first TLS-protected response: refuse it
	 * (the CVE-2020-15953 injection). The server may not speak before
	 * our ClientHello either.
	 */
	if (s->read_buffer_len != 0 ||
	    recv(t->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) > 0) {
		snprintf(err, errlen,
			 "cannot start TLS with %s: server sent data after "
			 "accepting STARTTLS",
			 t->host);
		return -EPROTO;
	}
	return tls_handshake(t, err, errlen);
}

size_t tls_pending(mailstream *s)
{
	struct tls_stream *t = tls_of(s);
	size_t n = s ? s->read_buffer_len : 0, z = 0;
	int p;

	if (s)
		deflate_inner(mailstream_get_low(s), &z);
	n += z;

	if (t && t->tls) {
		p = SSL_pending(t->ssl);
		if (p > 0)
			n += p;
	}
	return n;
}
