/*
 * fuzz_mime.c - header-field parsing and RFC 2047 decoding (sync/mime.c).
 *
 * The input is a header block exactly as BODY[HEADER.FIELDS (...)]
 * hands it over: length-delimited, not NUL-terminated (the copy is just
 * as long, so ASan sees any read past it). mime.c promises: it never
 * fails, every string it hands out is valid UTF-8 without NUL, a
 * Message-ID holds no white space or control, References and
 * In-Reply-To hold no control but TAB, values are trimmed, and a field
 * that is not there stays NULL. mime_decode_words() of the same bytes
 * as a C string is valid UTF-8, and is the input itself when there is
 * no "=?" in it and the input is valid UTF-8.
 */
#include "sync_i.h"

#include "fuzz.h"

#include <strings.h>

static bool is_fws(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static void check_trimmed(const char *s)
{
	size_t n = strlen(s);

	FUZZ_CHECK(!n || (!is_fws(s[0]) && !is_fws(s[n - 1])));
}

/* does a line of @hdr start with field name @name (case-insensitive)? */
static bool has_field(const uint8_t *hdr, size_t len, const char *name)
{
	size_t n = strlen(name);

	for (size_t i = 0; i + n <= len; i++)
		if ((i == 0 || hdr[i - 1] == '\n') &&
		    !strncasecmp((const char *)hdr + i, name, n))
			return true;
	return false;
}

static void check_fields(const uint8_t *data, size_t size)
{
	uint8_t *hdr = malloc(size ? size : 1);
	struct mime_fields f;

	if (!hdr)
		abort();
	memcpy(hdr, data, size);
	mime_parse_fields((const char *)hdr, size, &f);

	if (f.message_id) {
		FUZZ_CHECK(*f.message_id);
		FUZZ_CHECK(fuzz_str_utf8(f.message_id));
		for (const char *p = f.message_id; *p; p++)
			FUZZ_CHECK((unsigned char)*p > ' ' && *p != 0x7F);
		FUZZ_CHECK(has_field(data, size, "message-id"));
	}
	if (f.subject) {
		FUZZ_CHECK(fuzz_str_utf8(f.subject));
		check_trimmed(f.subject);
		FUZZ_CHECK(has_field(data, size, "subject"));
	}
	if (f.from) {
		FUZZ_CHECK(fuzz_str_utf8(f.from));
		check_trimmed(f.from);
		FUZZ_CHECK(has_field(data, size, "from"));
	}
	if (f.references) {
		FUZZ_CHECK(fuzz_str_utf8(f.references));
		FUZZ_CHECK(fuzz_no_c0(f.references, true));
		check_trimmed(f.references);
		FUZZ_CHECK(has_field(data, size, "references"));
	}
	if (f.in_reply_to) {
		FUZZ_CHECK(fuzz_str_utf8(f.in_reply_to));
		FUZZ_CHECK(fuzz_no_c0(f.in_reply_to, true));
		check_trimmed(f.in_reply_to);
		FUZZ_CHECK(has_field(data, size, "in-reply-to"));
	}
	mime_fields_release(&f);
	FUZZ_CHECK(!f.message_id && !f.subject && !f.from && !f.references &&
		   !f.in_reply_to);
	free(hdr);
}

static void check_words(const uint8_t *data, size_t size)
{
	char *in = fuzz_cstr(data, size), *out = mime_decode_words(in);

	FUZZ_CHECK(out);
	FUZZ_CHECK(fuzz_str_utf8(out));
	if (!strstr(in, "=?") && fuzz_str_utf8(in))
		FUZZ_CHECK(!strcmp(in, out));
	free(out);
	free(in);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_fields(data, size);
	check_words(data, size);
	return 0;
}
