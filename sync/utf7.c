/*
 * utf7.c - RFC 3501 §5.1.3 modified UTF-7 mailbox names.
 *
 * Both directions are strict: a name decodes only if it is the one
 * canonical encoding of its UTF-8 form, so that a file name maps back to
 * exactly the server name it came from. Anything else (bad base64, an
 * unterminated '&', leftover bits, printable ASCII or NUL in base64, an
 * unpaired surrogate, two base64 runs in a row) gives NULL.
 */
#include "sync_i.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

static const char utf7_b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

static int utf7_b64_value(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == ',')
		return 63;
	return -1;
}

static bool utf7_is_direct(uint32_t c)
{
	return c >= 0x20 && c <= 0x7e;
}

static char *utf8_put(char *o, uint32_t c)
{
	if (c < 0x80) {
		*o++ = c;
	} else if (c < 0x800) {
		*o++ = 0xc0 | (c >> 6);
		*o++ = 0x80 | (c & 0x3f);
	} else if (c < 0x10000) {
		*o++ = 0xe0 | (c >> 12);
		*o++ = 0x80 | ((c >> 6) & 0x3f);
		*o++ = 0x80 | (c & 0x3f);
	} else {
		*o++ = 0xf0 | (c >> 18);
		*o++ = 0x80 | ((c >> 12) & 0x3f);
		*o++ = 0x80 | ((c >> 6) & 0x3f);
		*o++ = 0x80 | (c & 0x3f);
	}
	return o;
}

/*
 * Decode one base64 run starting after '&' at @p, writing UTF-8 at *@o.
 * Returns the position of the closing '-', or NULL if the run is invalid.
 */
static const char *utf7_decode_run(const char *p, char **o)
{
	uint32_t bits = 0, high = 0, u;
	int nbits = 0, v;

	for (; *p != '-'; p++) {
		if (!*p)
			return NULL; /* '&' without its '-' */
		v = utf7_b64_value(*p);
		if (v < 0)
			return NULL;
		bits = (bits << 6) | v;
		nbits += 6;
		if (nbits < 16)
			continue;
		nbits -= 16;
		u = (bits >> nbits) & 0xffff;
		bits &= (1u << nbits) - 1;
		if (high) {
			if (u < 0xdc00 || u > 0xdfff)
				return NULL;
			*o = utf8_put(*o, 0x10000 + ((high - 0xd800) << 10) +
					      (u - 0xdc00));
			high = 0;
		} else if (u >= 0xd800 && u <= 0xdbff) {
			high = u;
		} else if (u >= 0xdc00 && u <= 0xdfff) {
			return NULL;
		} else if (u == 0 || utf7_is_direct(u)) {
			/* printable ASCII must be sent as itself; NUL
			 * cannot be part of a C string */
			return NULL;
		} else {
			*o = utf8_put(*o, u);
		}
	}
	/* a run that is only padding, or more than 4 bits of padding, or
	 * padding that is not zero, is not what an encoder produces */
	if (high || nbits >= 6 || bits != 0)
		return NULL;
	return p;
}

char *utf7_decode(const char *s)
{
	size_t len = strlen(s);
	char *out = xmalloc(2 * len + 1), *o = out;
	bool after_run = false;

	while (*s) {
		unsigned char c = *s;

		if (!utf7_is_direct(c))
			goto fail;
		if (c != '&') {
			*o++ = c;
			s++;
			after_run = false;
			continue;
		}
		if (s[1] == '-') {
			*o++ = '&';
			s += 2;
			after_run = false;
			continue;
		}
		/* "&...-&...-": an encoder would have made one run */
		if (after_run)
			goto fail;
		s = utf7_decode_run(s + 1, &o);
		if (!s)
			goto fail;
		s++;
		after_run = true;
	}
	*o = '\0';
	return out;
fail:
	free(out);
	return NULL;
}

/*
 * Read one code point from UTF-8 at *@p, advancing it. Returns -1 for
 * malformed, overlong, surrogate or out-of-range sequences.
 */
static int32_t utf8_get(const unsigned char **p)
{
	const unsigned char *s = *p;
	uint32_t c, min;
	int n, i;

	if (s[0] < 0x80) {
		*p = s + 1;
		return s[0];
	} else if ((s[0] & 0xe0) == 0xc0) {
		c = s[0] & 0x1f;
		n = 1;
		min = 0x80;
	} else if ((s[0] & 0xf0) == 0xe0) {
		c = s[0] & 0x0f;
		n = 2;
		min = 0x800;
	} else if ((s[0] & 0xf8) == 0xf0) {
		c = s[0] & 0x07;
		n = 3;
		min = 0x10000;
	} else {
		return -1;
	}
	for (i = 1; i <= n; i++) {
		if ((s[i] & 0xc0) != 0x80) /* also stops at the NUL */
			return -1;
		c = (c << 6) | (s[i] & 0x3f);
	}
	if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
		return -1;
	*p = s + n + 1;
	return c;
}

struct utf7_run {
	uint32_t bits;
	int nbits;
	bool open;
};

static char *utf7_put_unit(char *o, struct utf7_run *r, uint32_t u)
{
	r->bits = (r->bits << 16) | u;
	r->nbits += 16;
	while (r->nbits >= 6) {
		r->nbits -= 6;
		*o++ = utf7_b64[(r->bits >> r->nbits) & 0x3f];
	}
	r->bits &= (1u << r->nbits) - 1;
	return o;
}

static char *utf7_close_run(char *o, struct utf7_run *r)
{
	if (r->nbits)
		*o++ = utf7_b64[(r->bits << (6 - r->nbits)) & 0x3f];
	*o++ = '-';
	r->bits = 0;
	r->nbits = 0;
	r->open = false;
	return o;
}

char *utf7_encode(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	/* worst case: a lone control character becomes "&AAE-" */
	char *out = xmalloc(5 * strlen(s) + 2), *o = out;
	struct utf7_run run = { 0 };

	while (*p) {
		int32_t c = utf8_get(&p);

		if (c < 0) {
			free(out);
			return NULL;
		}
		if (utf7_is_direct(c)) {
			if (run.open)
				o = utf7_close_run(o, &run);
			*o++ = c;
			if (c == '&')
				*o++ = '-';
			continue;
		}
		if (!run.open) {
			*o++ = '&';
			run.open = true;
		}
		if (c >= 0x10000) {
			c -= 0x10000;
			o = utf7_put_unit(o, &run, 0xd800 + (c >> 10));
			o = utf7_put_unit(o, &run, 0xdc00 + (c & 0x3ff));
		} else {
			o = utf7_put_unit(o, &run, c);
		}
	}
	if (run.open)
		o = utf7_close_run(o, &run);
	*o = '\0';
	return out;
}
