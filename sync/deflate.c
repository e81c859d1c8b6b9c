/*
 * deflate.c - COMPRESS=DEFLATE (RFC 4978): a mailstream_low driver that
 * wraps the connection's own (TLS) driver in zlib's raw deflate, one
 * stream each way. libetpan's own mailimap_compress needs a libetpan
 * built with zlib, which Debian's is not (it then loses the session),
 * so the layer is ours and libetpan reads and writes through it as
 * through any stream.
 *
 * Each write is flushed with Z_SYNC_FLUSH, so a command leaves whole
 * and the server can answer it; reads inflate what the inner stream
 * brings. On a link whose bandwidth is the limit, mail (text) crosses
 * it in a third of the bytes.
 */
#define LOG_CAT "tls"
#include "sync_i.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "common.h"

#define ZBUF 16384

struct zstream {
	mailstream_low *inner; /* owned */
	z_stream in, out;
	bool more; /* the last inflate filled its output: it may hold more */
	bool failed;
	unsigned char ibuf[ZBUF]; /* compressed bytes read, not inflated */
	unsigned char obuf[ZBUF];
};

static ssize_t z_read(mailstream_low *s, void *buf, size_t count)
{
	struct zstream *z = s->data;

	if (z->failed)
		return -1;
	for (;;) {
		int rc;
		ssize_t n;

		z->in.next_out = buf;
		z->in.avail_out = (uInt)(count > UINT32_MAX ? UINT32_MAX : count);
		rc = inflate(&z->in, Z_SYNC_FLUSH);
		if (rc != Z_OK && rc != Z_BUF_ERROR && rc != Z_STREAM_END) {
			log_warn("the compressed stream from the server is "
				 "broken (%s)",
				 z->in.msg ? z->in.msg : "inflate failed");
			z->failed = true;
			return -1;
		}
		n = (ssize_t)(count - z->in.avail_out);
		z->more = z->in.avail_out == 0;
		if (rc == Z_STREAM_END)
			/* the server ended it (its BYE, at LOGOUT): what
			 * came before is read, then the stream is closed */
			z->failed = true;
		if (n > 0 || z->failed)
			return n > 0 ? n : -1;
		/* all inflated: more from the wire */
		n = mailstream_low_read(z->inner, z->ibuf, sizeof(z->ibuf));
		if (n <= 0)
			return n;
		z->in.next_in = z->ibuf;
		z->in.avail_in = (uInt)n;
	}
}

static ssize_t z_write(mailstream_low *s, const void *buf, size_t count)
{
	struct zstream *z = s->data;

	if (z->failed)
		return -1;
	z->out.next_in = (unsigned char *)buf;
	z->out.avail_in = (uInt)(count > UINT32_MAX ? UINT32_MAX : count);
	do {
		size_t have, off = 0;
		int rc;

		z->out.next_out = z->obuf;
		z->out.avail_out = sizeof(z->obuf);
		rc = deflate(&z->out, Z_SYNC_FLUSH);
		if (rc != Z_OK && rc != Z_BUF_ERROR) {
			z->failed = true;
			return -1;
		}
		have = sizeof(z->obuf) - z->out.avail_out;
		while (off < have) {
			ssize_t n = mailstream_low_write(z->inner, z->obuf + off,
							 have - off);

			if (n <= 0) {
				z->failed = true;
				return -1;
			}
			off += (size_t)n;
		}
		/* a full buffer may leave flushed output behind */
	} while (z->out.avail_in || z->out.avail_out == 0);
	return (ssize_t)count;
}

static int z_close(mailstream_low *s)
{
	struct zstream *z = s->data;

	return mailstream_low_close(z->inner);
}

static int z_get_fd(mailstream_low *s)
{
	struct zstream *z = s->data;

	return mailstream_low_get_fd(z->inner);
}

static void z_free(mailstream_low *s)
{
	struct zstream *z = s->data;

	inflateEnd(&z->in);
	deflateEnd(&z->out);
	mailstream_low_free(z->inner);
	free(z);
	free(s);
}

static mailstream_low_driver z_driver = {
	.mailstream_read = z_read,
	.mailstream_write = z_write,
	.mailstream_close = z_close,
	.mailstream_get_fd = z_get_fd,
	.mailstream_free = z_free,
};

int deflate_start(mailstream *s)
{
	mailstream_low *inner = mailstream_get_low(s), *low;
	struct zstream *z;

	if (!inner || inner->driver == &z_driver)
		return -EINVAL;
	/* the server compresses from the byte after its OK; what libetpan
	 * already read past that line is compressed (it sends nothing
	 * before our next command, so there should be none) */
	if (s->read_buffer_len > ZBUF)
		return -EPROTO;
	z = xcalloc(1, sizeof(*z));
	/* raw deflate, 32 KiB window: RFC 4978 §4 */
	if (inflateInit2(&z->in, -15) != Z_OK) {
		free(z);
		return -ENOMEM;
	}
	if (deflateInit2(&z->out, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8,
			 Z_DEFAULT_STRATEGY) != Z_OK) {
		inflateEnd(&z->in);
		free(z);
		return -ENOMEM;
	}
	memcpy(z->ibuf, s->read_buffer, s->read_buffer_len);
	z->in.next_in = z->ibuf;
	z->in.avail_in = (uInt)s->read_buffer_len;
	s->read_buffer_len = 0;
	z->inner = inner;
	low = mailstream_low_new(z, &z_driver);
	if (!low) {
		inflateEnd(&z->in);
		deflateEnd(&z->out);
		free(z);
		return -ENOMEM;
	}
	/* the inner stream's bytes are compressed now: only the new one
	 * logs (-d), what libetpan really reads and writes */
	mailstream_low_set_logger(inner, NULL, NULL);
	mailstream_set_low(s, low);
	return 0;
}

mailstream_low *deflate_inner(mailstream_low *low, size_t *pending)
{
	struct zstream *z;

	if (!low || low->driver != &z_driver) {
		*pending = 0;
		return low;
	}
	z = low->data;
	/* bytes that will read without the socket: compressed input not
	 * inflated yet, or output inflate still holds */
	*pending = z->in.avail_in + (z->more ? 1 : 0);
	return z->inner;
}
