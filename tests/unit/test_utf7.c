/*
 * test_utf7.c - modified UTF-7 (RFC 3501 §5.1.3) both ways, and the
 * inputs a strict decoder must refuse.
 */
#include "sync_i.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* each pair must encode and decode exactly into the other */
static const struct {
	const char *utf7;
	const char *utf8;
} pairs[] = {
	{ "", "" },
	{ "INBOX", "INBOX" },
	{ "Caf&AOk-", "Caf\xc3\xa9" },
	{ "&-", "&" },
	{ "&-&-", "&&" },
	{ "a&-b", "a&b" },
	{ "~peter/mail/&U,BTFw-/&ZeVnLIqe-",
	  "~peter/mail/\xe5\x8f\xb0\xe5\x8c\x97/"
	  "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e" },
	/* メール/受信箱 */
	{ "&MOEw,DDr-/&U9dP4Xux-", "\xe3\x83\xa1\xe3\x83\xbc\xe3\x83\xab/"
				   "\xe5\x8f\x97\xe4\xbf\xa1\xe7\xae\xb1" },
	/* U+1F600 needs a surrogate pair */
	{ "&2D3eAA-", "\xf0\x9f\x98\x80" },
	{ "a&2D3eAA-b&2DzfiQ-", "a\xf0\x9f\x98\x80"
				"b\xf0\x9f\x8e\x89" },
	{ "&2,,f,w-", "\xf4\x8f\xbf\xbf" }, /* U+10FFFF */
	{ "&4AA-", "\xee\x80\x80" }, /* U+E000, just past the surrogates */
	{ "&AOk-&-&AOk-", "\xc3\xa9&\xc3\xa9" },
	{ "&IKw-uro", "\xe2\x82\xac"
		      "uro" },
	{ "&AAE-", "\x01" }, /* control characters are not direct */
	{ "&AH8-", "\x7f" },
	{ "Sent Items", "Sent Items" },
	{ "~", "~" },
};

/* modified UTF-7 that utf7_decode must refuse */
static const struct {
	const char *in;
	const char *why;
} bad_utf7[] = {
	{ "&", "unterminated '&'" },
	{ "&AOk", "unterminated run" },
	{ "Caf&AOk", "unterminated run at the end" },
	{ "&-&", "unterminated after a literal '&'" },
	{ "&AO-", "12 leftover bits" },
	{ "&AOkA-", "8 leftover bits" },
	{ "&AOl-", "non-zero padding bits" },
	{ "&AGE-", "printable ASCII 'a' in base64" },
	{ "&ACY-", "'&' in base64" },
	{ "&ACA-", "space in base64" },
	{ "&AAA-", "NUL in base64" },
	{ "&2D0-", "high surrogate at the end of the run" },
	{ "&2D0-x", "high surrogate before a direct character" },
	{ "&3gA-", "lone low surrogate" },
	{ "&2D3YPQ-", "two high surrogates" },
	{ "&2D0AQQ-", "high surrogate then 'A'" },
	{ "&A/k-", "'/' is not in the modified alphabet" },
	{ "&AOk=-", "'=' padding" },
	{ "&AO k-", "space inside a run" },
	{ "&AOk-&AOk-", "two adjacent runs" },
	{ "Caf\xc3\xa9", "raw 8-bit bytes" },
	{ "a\tb", "raw control character" },
	{ "a\x7f", "raw DEL" },
};

/* UTF-8 that utf7_encode must refuse */
static const struct {
	const char *in;
	const char *why;
} bad_utf8[] = {
	{ "\xc3", "truncated sequence" },
	{ "a\xe6\x97", "truncated three-byte sequence" },
	{ "\xc0\xaf", "overlong '/'" },
	{ "\xe0\x80\xaf", "overlong three-byte '/'" },
	{ "\xed\xa0\x80", "encoded surrogate" },
	{ "\xf4\x90\x80\x80", "beyond U+10FFFF" },
	{ "\xff", "invalid byte" },
	{ "\x80", "lone continuation byte" },
	{ "\xc3\xa9\xa9", "extra continuation byte" },
};

#define N(a) (sizeof(a) / sizeof((a)[0]))

static int check(const char *what, const char *in, const char *got,
		 const char *want)
{
	if (!got && !want)
		return 0;
	if (got && want && !strcmp(got, want))
		return 0;
	printf("FAIL %s(\"%s\"): got %s%s%s, want %s%s%s\n", what, in,
	       got ? "\"" : "", got ? got : "NULL", got ? "\"" : "",
	       want ? "\"" : "", want ? want : "NULL", want ? "\"" : "");
	return 1;
}

int main(void)
{
	int fails = 0;
	size_t i;
	char *s;

	for (i = 0; i < N(pairs); i++) {
		s = utf7_decode(pairs[i].utf7);
		fails += check("utf7_decode", pairs[i].utf7, s, pairs[i].utf8);
		free(s);
		s = utf7_encode(pairs[i].utf8);
		fails += check("utf7_encode", pairs[i].utf8, s, pairs[i].utf7);
		free(s);
	}
	for (i = 0; i < N(bad_utf7); i++) {
		s = utf7_decode(bad_utf7[i].in);
		if (s)
			printf("(%s) ", bad_utf7[i].why);
		fails += check("utf7_decode", bad_utf7[i].in, s, NULL);
		free(s);
	}
	for (i = 0; i < N(bad_utf8); i++) {
		s = utf7_encode(bad_utf8[i].in);
		if (s)
			printf("(%s) ", bad_utf8[i].why);
		fails += check("utf7_encode", bad_utf8[i].in, s, NULL);
		free(s);
	}

	/* every BMP character and a sample of the others survive a round
	 * trip, in a run of their own and next to neighbours */
	for (unsigned long c = 1; c <= 0x10ffff; c += c < 0x10000 ? 1 : 97) {
		char u8[16], *p = u8, *e, *d;

		if (c >= 0xd800 && c <= 0xdfff)
			continue;
		if (c < 0x80) {
			*p++ = c;
		} else if (c < 0x800) {
			*p++ = 0xc0 | (c >> 6);
			*p++ = 0x80 | (c & 0x3f);
		} else if (c < 0x10000) {
			*p++ = 0xe0 | (c >> 12);
			*p++ = 0x80 | ((c >> 6) & 0x3f);
			*p++ = 0x80 | (c & 0x3f);
		} else {
			*p++ = 0xf0 | (c >> 18);
			*p++ = 0x80 | ((c >> 12) & 0x3f);
			*p++ = 0x80 | ((c >> 6) & 0x3f);
			*p++ = 0x80 | (c & 0x3f);
		}
		memcpy(p, u8, p - u8); /* the character twice */
		p += p - u8;
		*p = '\0';
		e = utf7_encode(u8);
		d = e ? utf7_decode(e) : NULL;
		if (!d || strcmp(d, u8)) {
			printf("FAIL round trip of U+%04lX: %s\n", c,
			       e ? e : "(encode failed)");
			fails++;
		}
		free(e);
		free(d);
		if (fails > 20)
			break;
	}

	if (fails) {
		printf("%d failure(s)\n", fails);
		return 1;
	}
	printf("utf7: all passed\n");
	return 0;
}
