/*
 * test_names - message file names and folder name components: each
 * sanitising rule, zones, the 200-byte cut on character boundaries, the
 * umid round trip and hostile folder names. Exit 0: pass.
 */
#include "names.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define FFFD "\xEF\xBF\xBD"

static int failures;

static void print_escaped(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x20 || c >= 0x7F || c == '\\')
			fprintf(stderr, "\\x%02X", c);
		else
			fputc(c, stderr);
	}
}

static void fail(const char *what, const char *name, const char *got,
		 size_t gotlen, const char *want, size_t wantlen)
{
	failures++;
	fprintf(stderr, "FAIL %s [%s]\n  got  \"", what, name);
	print_escaped(got, gotlen);
	fprintf(stderr, "\"\n  want \"");
	print_escaped(want, wantlen);
	fprintf(stderr, "\"\n");
}

static void check(bool ok, const char *what, const char *name)
{
	if (!ok) {
		failures++;
		fprintf(stderr, "FAIL %s [%s]\n", what, name);
	}
}

/* strict UTF-8 check, written apart from the code under test */
static bool valid_utf8(const char *str, size_t n)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0;

	while (i < n) {
		unsigned int c = s[i], cp, k;

		if (c < 0x80) {
			i++;
			continue;
		}
		if ((c & 0xE0) == 0xC0)
			k = 1, cp = c & 0x1F;
		else if ((c & 0xF0) == 0xE0)
			k = 2, cp = c & 0x0F;
		else if ((c & 0xF8) == 0xF0)
			k = 3, cp = c & 0x07;
		else
			return false;
		if (i + k >= n)
			return false;
		for (unsigned int j = 1; j <= k; j++) {
			if ((s[i + j] & 0xC0) != 0x80)
				return false;
			cp = cp << 6 | (s[i + j] & 0x3F);
		}
		if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) ||
		    (k == 3 && cp < 0x10000) || cp > 0x10FFFF ||
		    (cp >= 0xD800 && cp <= 0xDFFF))
			return false;
		i += k + 1;
	}
	return true;
}

/* no '/', no C0, DEL or C1 control anywhere in the name */
static bool has_no_bad_chars(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '/' || c < 0x20 || c == 0x7F)
			return false;
		if (c == 0xC2 && i + 1 < n && (unsigned char)s[i + 1] >= 0x80 &&
		    (unsigned char)s[i + 1] <= 0x9F)
			return false;
	}
	return true;
}

static const int64_t D = 1795185120; /* 2026-11-20 14:32:00 UTC */

static const struct msg_case {
	const char *name;
	const char *subject;
	int64_t date;
	int zone;
	int64_t umid;
	const char *want;
} msg_cases[] = {
	{ "design example", "Re: Invoice 4471", D, 0, 81233,
	  "2026-11-20 14.32 Re- Invoice 4471 #81233.eml" },
	{ "NULL subject", NULL, D, 0, 1, "2026-11-20 14.32 (no subject) #1.eml" },
	{ "empty subject", "", D, 0, 1, "2026-11-20 14.32 (no subject) #1.eml" },
	{ "blank subject", "  \t\r\n ", D, 0, 1,
	  "2026-11-20 14.32 (no subject) #1.eml" },
	{ "only controls", "\x01\x02\x7f", D, 0, 1,
	  "2026-11-20 14.32 (no subject) #1.eml" },
	{ "slashes", "///", D, 0, 2, "2026-11-20 14.32 --- #2.eml" },
	{ "slash and colon", "a/b:c", D, 0, 3, "2026-11-20 14.32 a-b-c #3.eml" },
	{ "C0 and DEL", "a\x01" "b\x7f" "c\td", D, 0, 4,
	  "2026-11-20 14.32 a b c d #4.eml" },
	{ "C1 U+0085 and U+009F", "a\xC2\x85" "b\xC2\x9F" "c", D, 0, 5,
	  "2026-11-20 14.32 a b c #5.eml" },
	{ "NBSP kept", "a\xC2\xA0" "b", D, 0, 6,
	  "2026-11-20 14.32 a\xC2\xA0" "b #6.eml" },
	{ "collapse", "a    b \t\r\n c", D, 0, 7, "2026-11-20 14.32 a b c #7.eml" },
	{ "trim", "   x   ", D, 0, 8, "2026-11-20 14.32 x #8.eml" },
	{ "control next to spaces", " \x1b[31m red ", D, 0, 9,
	  "2026-11-20 14.32 [31m red #9.eml" },
	{ "latin-1 byte", "caf\xE9", D, 0, 10, "2026-11-20 14.32 caf" FFFD " #10.eml" },
	{ "lone 0xFF", "\xFF", D, 0, 11, "2026-11-20 14.32 " FFFD " #11.eml" },
	{ "truncated sequence", "ab\xE2\x82", D, 0, 12,
	  "2026-11-20 14.32 ab" FFFD " #12.eml" },
	{ "overlong slash", "a\xC0\xAF" "b", D, 0, 13,
	  "2026-11-20 14.32 a" FFFD FFFD "b #13.eml" },
	{ "surrogate", "\xED\xA0\x80", D, 0, 14,
	  "2026-11-20 14.32 " FFFD FFFD FFFD " #14.eml" },
	{ "valid UTF-8 kept", "Gr\xC3\xBC\xC3\x9F" "e \xE2\x82\xAC \xF0\x9F\x93\xA7",
	  D, 0, 15,
	  "2026-11-20 14.32 Gr\xC3\xBC\xC3\x9F" "e \xE2\x82\xAC \xF0\x9F\x93\xA7 #15.eml" },
	{ "bidi override", "abc\xE2\x80\xAEgpj.exe", D, 0, 16,
	  "2026-11-20 14.32 abc gpj.exe #16.eml" },
	{ "line separator", "a\xE2\x80\xA8" "b", D, 0, 17,
	  "2026-11-20 14.32 a b #17.eml" },
	{ "punctuation kept", "[list] 50% off! (really) *now*? \\o/", D, 0, 18,
	  "2026-11-20 14.32 [list] 50% off! (really) *now*? \\o- #18.eml" },
	{ "leading dot harmless", ".hidden", D, 0, 19,
	  "2026-11-20 14.32 .hidden #19.eml" },
	{ "fake suffix in subject", "x #999.eml", D, 0, 20,
	  "2026-11-20 14.32 x #999.eml #20.eml" },
	{ "zone +0530", "x", 0, 330, 1, "1970-01-01 05.30 x #1.eml" },
	{ "zone -0130", "x", 0, -90, 1, "1969-12-31 22.30 x #1.eml" },
	{ "zone -0130 of D", "x", D, -90, 1, "2026-11-20 13.02 x #1.eml" },
	{ "zone +1400", "x", D, 840, 1, "2026-11-21 04.32 x #1.eml" },
	{ "year 9999", "x", 253402300799LL, 0, 1, "9999-12-31 23.59 x #1.eml" },
	{ "umid 0", "x", D, 0, 0, "2026-11-20 14.32 x #0.eml" },
	{ "umid max", "x", D, 0, INT64_MAX,
	  "2026-11-20 14.32 x #9223372036854775807.eml" },
	{ "date overflow", "x", INT64_MAX, 60, 1, "1970-01-01 00.00 x #1.eml" },
};

static void test_messages(void)
{
	char buf[NAMES_MAX + 1];

	for (size_t i = 0; i < ARRAY_SIZE(msg_cases); i++) {
		const struct msg_case *c = &msg_cases[i];
		size_t n;

		memset(buf, 'Z', sizeof(buf));
		n = names_message(buf, c->date, c->zone, c->subject, c->umid);
		if (n != strlen(buf) || strcmp(buf, c->want))
			fail("names_message", c->name, buf, strlen(buf), c->want,
			     strlen(c->want));
		check(names_message_umid(buf) == c->umid, "umid round trip",
		      c->name);
	}
}

/* a subject of @reps copies of @unit cut to fit: exactly @want bytes */
static void long_subject(const char *name, const char *unit, size_t reps,
			 int64_t umid, size_t want)
{
	size_t ul = strlen(unit), n, k;
	char *s = malloc(ul * reps + 1), buf[NAMES_MAX + 1];
	char suffix[32];

	for (k = 0; k < reps; k++)
		memcpy(s + k * ul, unit, ul);
	s[ul * reps] = '\0';
	n = names_message(buf, D, 0, s, umid);
	snprintf(suffix, sizeof(suffix), " #%" PRId64 ".eml", umid);
	k = strlen(suffix);
	check(n == strlen(buf), "length returned is strlen", name);
	check(n <= NAMES_MAX, "fits NAMES_MAX", name);
	check(valid_utf8(buf, n), "valid UTF-8", name);
	check(has_no_bad_chars(buf, n), "no '/' or controls", name);
	check(n >= k && !strcmp(buf + n - k, suffix), "ends in suffix", name);
	check(n > k && buf[n - k - 1] != ' ', "no space before suffix", name);
	check(!strncmp(buf, "2026-11-20 14.32 ", 17), "date prefix", name);
	check(names_message_umid(buf) == umid, "umid round trip", name);
	if (n != want) {
		failures++;
		fprintf(stderr, "FAIL length [%s]: got %zu, want %zu\n", name, n,
			want);
	}
	free(s);
}

static void test_long_subjects(void)
{
	/* prefix 17 bytes + suffix " #42.eml" 8 bytes leave 175 for the subject */
	long_subject("600 ASCII", "a", 600, 42, 200);
	long_subject("300 x 2-byte", "\xC3\xA9", 300, 42, 199);
	long_subject("200 x 3-byte", "\xE2\x82\xAC", 200, 42, 199);
	long_subject("150 x 4-byte", "\xF0\x9F\x93\xA7", 150, 42, 197);
	long_subject("600 bytes invalid", "\xFF", 600, 42, 199);
	long_subject("cut at a space", "abcd ", 120, 42, 199);
	long_subject("space runs", "a      ", 200, 42, 200);
	long_subject("long umid", "a", 600, INT64_MAX, 200);
	long_subject("slashes", "/", 600, 7, 200);
}

static const struct umid_case {
	const char *name;
	int64_t want;
} umid_cases[] = {
	{ "2026-11-20 14.32 x #123.eml", 123 },
	{ "x #0.eml", 0 },
	{ " #1.eml", 1 },
	{ "x #9223372036854775807.eml", INT64_MAX },
	{ "x #9223372036854775808.eml", -1 },
	{ "x #99999999999999999999.eml", -1 },
	{ "x #01.eml", -1 },
	{ "x #00.eml", -1 },
	{ "x #.eml", -1 },
	{ "x#123.eml", -1 },
	{ "#123.eml", -1 },
	{ "x  123.eml", -1 },
	{ "x #123.EML", -1 },
	{ "x #123.eml ", -1 },
	{ "x #123.emlx", -1 },
	{ "x #123eml", -1 },
	{ "x #-1.eml", -1 },
	{ "x #+1.eml", -1 },
	{ "x #12a.eml", -1 },
	{ "x # 12.eml", -1 },
	{ ".eml", -1 },
	{ "", -1 },
	{ "x #123.eml.eml", -1 },
};

static void test_umids(void)
{
	static const int64_t umids[] = { 0, 1, 9, 10, 81233, 1000000007,
					 INT64_MAX / 10, INT64_MAX };
	static const char *const subjects[] = { "x", "x #5.eml", "#7", "",
						"a #1.eml #2.eml" };
	char buf[NAMES_MAX + 1];

	for (size_t i = 0; i < ARRAY_SIZE(umid_cases); i++) {
		int64_t got = names_message_umid(umid_cases[i].name);

		if (got != umid_cases[i].want) {
			failures++;
			fprintf(stderr, "FAIL names_message_umid [%s]: got %" PRId64
				", want %" PRId64 "\n", umid_cases[i].name, got,
				umid_cases[i].want);
		}
	}
	check(names_message_umid(NULL) == -1, "names_message_umid", "NULL");
	for (size_t i = 0; i < ARRAY_SIZE(umids); i++) {
		for (size_t j = 0; j < ARRAY_SIZE(subjects); j++) {
			names_message(buf, D, 0, subjects[j], umids[i]);
			check(names_message_umid(buf) == umids[i],
			      "round trip", buf);
		}
	}
}

static const struct comp_case {
	const char *name;
	const char *raw;
	size_t rawlen; /* 0: strlen(raw) */
	const char *want;
} comp_cases[] = {
	{ "plain", "INBOX", 0, "INBOX" },
	{ "spaces kept", "My Folder ", 0, "My Folder " },
	{ "UTF-8 kept", "Entw\xC3\xBC" "rfe", 0, "Entw\xC3\xBC" "rfe" },
	{ "dot", ".", 0, "_." },
	{ "dotdot", "..", 0, "_.." },
	{ "three dots", "...", 0, "_..." },
	{ "leading dot", ".hidden", 0, "_.hidden" },
	{ "dots inside kept", "a.b.", 0, "a.b." },
	{ "slash", "a/b", 0, "a_b" },
	{ "only slash", "/", 0, "_" },
	{ "dot slash dot", "./..", 0, "_._.." },
	{ "newline", "a\nb", 0, "a_b" },
	{ "tab", "a\tb", 0, "a_b" },
	{ "escape", "\x1b[2J", 0, "_[2J" },
	{ "DEL", "\x7f", 0, "_" },
	{ "C1", "a\xC2\x9B" "b", 0, "a_b" },
	{ "NUL inside", "a\0b", 3, "a_b" },
	{ "NUL only", "\0", 1, "_" },
	{ "latin-1", "caf\xE9", 0, "caf" FFFD },
	{ "truncated", "\xE2\x82", 0, FFFD },
	{ "bidi", "a\xE2\x80\xAE" "b", 0, "a_b" },
	{ "rawlen honoured", "abcdef", 3, "abc" },
	{ "rawlen cuts a sequence", "\xC3\xA9", 1, FFFD },
	{ "colon kept", "a:b", 0, "a:b" },
};

static void test_components(void)
{
	char buf[NAMES_MAX + 1], raw[700];
	size_t n, k;

	for (size_t i = 0; i < ARRAY_SIZE(comp_cases); i++) {
		const struct comp_case *c = &comp_cases[i];
		size_t len = c->rawlen ? c->rawlen : strlen(c->raw);

		memset(buf, 'Z', sizeof(buf));
		n = names_component(buf, c->raw, len);
		if (n != strlen(buf) || strcmp(buf, c->want))
			fail("names_component", c->name, buf, n, c->want,
			     strlen(c->want));
	}

	n = names_component(buf, "", 0);
	check(n == 1 && !strcmp(buf, "_"), "names_component", "empty");
	n = names_component(buf, NULL, 0);
	check(n == 1 && !strcmp(buf, "_"), "names_component", "NULL");

	memset(raw, 'x', 600);
	n = names_component(buf, raw, 600);
	check(n == NAMES_MAX && strspn(buf, "x") == NAMES_MAX,
	      "names_component", "600 ASCII");

	raw[0] = '.';
	n = names_component(buf, raw, 600);
	check(n == NAMES_MAX && !strncmp(buf, "_.x", 3), "names_component",
	      "leading dot, 600 bytes");

	for (k = 0; k < 200; k++)
		memcpy(raw + 3 * k, "\xE2\x82\xAC", 3);
	n = names_component(buf, raw, 600);
	check(n == 198 && valid_utf8(buf, n), "names_component", "200 x 3-byte");

	raw[0] = '.';
	for (k = 0; k < 149; k++)
		memcpy(raw + 1 + 4 * k, "\xF0\x9F\x93\xA7", 4);
	n = names_component(buf, raw, 597);
	check(n == 198 && valid_utf8(buf, n) && !strncmp(buf, "_.", 2),
	      "names_component", "leading dot then 4-byte characters");

	for (k = 0; k < 600; k++)
		raw[k] = (char)(k % 256);
	n = names_component(buf, raw, 600);
	check(n <= NAMES_MAX && n == strlen(buf) && valid_utf8(buf, n) &&
		      has_no_bad_chars(buf, n) && buf[0] != '.',
	      "names_component", "every byte value");
}

static void test_conversations(void)
{
	char buf[NAMES_MAX + 1], big[700];
	size_t n;

	n = names_conversation(buf, 0, 0, "Re: plans", 42);
	if (strcmp(buf, "1970-01-01 00.00 Re- plans #42") || n != strlen(buf)) {
		fprintf(stderr, "conversation name: got \"%s\"\n", buf);
		failures++;
	}
	if (names_conversation_id(buf) != 42 ||
	    names_conversation_id("x #42.eml") != -1 ||
	    names_message_umid(buf) != -1) {
		fprintf(stderr, "conversation id round trip failed\n");
		failures++;
	}
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	n = names_conversation(buf, 0, 0, big, 7);
	if (n != NAMES_MAX || n != strlen(buf) ||
	    strncmp(buf, "1970-01-01 00.00 aaa", 20) ||
	    strcmp(buf + n - 3, " #7") || names_conversation_id(buf) != 7) {
		fprintf(stderr, "long conversation name: %zu bytes\n", n);
		failures++;
	}
	/* 600 bytes of 4-byte characters: " #7" leaves 180, 45 of them */
	for (size_t k = 0; k < 150; k++)
		memcpy(big + 4 * k, "\xF0\x9F\x93\xA7", 4);
	big[600] = '\0';
	n = names_conversation(buf, 0, 0, big, 7);
	if (n != NAMES_MAX || !valid_utf8(buf, n) ||
	    names_conversation_id(buf) != 7) {
		fprintf(stderr, "long conversation name, 4-byte: %zu bytes\n",
			n);
		failures++;
	}
}

int main(void)
{
	test_conversations();
	test_messages();
	test_long_subjects();
	test_umids();
	test_components();
	if (failures) {
		fprintf(stderr, "%d failure(s)\n", failures);
		return 1;
	}
	printf("names ok\n");
	return 0;
}
