/*
 * test_mime - header field extraction and RFC 2047 decoding: folding
 * (with the space-line trap), line endings, duplicates, charsets,
 * malformed and hostile input, random input, and every message of the
 * shared corpora through mime_parse_fields() and names_message().
 * Exit 0: pass.
 */
#include "sync_i.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* the corpus check also names every message */
#include "names.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define FFFD "\xEF\xBF\xBD"
/* a string literal that may hold NULs, with its length */
#define BIN(s) s, sizeof(s) - 1

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

static void print_str(const char *s)
{
	if (!s) {
		fprintf(stderr, "NULL");
		return;
	}
	fputc('"', stderr);
	print_escaped(s, strlen(s));
	fputc('"', stderr);
}

static void expect(const char *what, const char *name, const char *got,
		   const char *want)
{
	if (got == want || (got && want && !strcmp(got, want)))
		return;
	failures++;
	fprintf(stderr, "FAIL %s [%s]\n  got  ", what, name);
	print_str(got);
	fprintf(stderr, "\n  want ");
	print_str(want);
	fputc('\n', stderr);
}

/* strict UTF-8 check, written apart from the code under test */
static bool valid_utf8(const char *str)
{
	const unsigned char *s = (const unsigned char *)str;

	while (*s) {
		unsigned int c = *s, cp, k;

		if (c < 0x80) {
			s++;
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
		for (unsigned int j = 1; j <= k; j++) {
			if ((s[j] & 0xC0) != 0x80) /* also stops at NUL */
				return false;
			cp = cp << 6 | (s[j] & 0x3F);
		}
		if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) ||
		    (k == 3 && cp < 0x10000) || cp > 0x10FFFF ||
		    (cp >= 0xD800 && cp <= 0xDFFF))
			return false;
		s += k + 1;
	}
	return true;
}

/* ---- mime_decode_words ---- */

static const struct decode_case {
	const char *name, *in, *want;
} decode_cases[] = {
	{ "plain", "Hello, world", "Hello, world" },
	{ "empty", "", "" },
	{ "Q UTF-8", "=?utf-8?q?caf=C3=A9?=", "caf\xC3\xA9" },
	{ "Q lowercase hex", "=?UTF-8?Q?caf=c3=a9?=", "caf\xC3\xA9" },
	{ "B UTF-8", "=?UTF-8?B?Y2Fmw6k=?=", "caf\xC3\xA9" },
	{ "B no padding", "=?utf-8?b?Y2Fmw6k?=", "caf\xC3\xA9" },
	{ "B longer", "=?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?=",
	  "Gr\xC3\xBC\xC3\x9F" "e aus K\xC3\xB6ln" },
	{ "Q underscore", "=?utf-8?Q?hello_world?=", "hello world" },
	{ "Q ISO-8859-1", "=?ISO-8859-1?Q?Andr=E9?=", "Andr\xC3\xA9" },
	{ "B ISO-8859-1", "=?iso-8859-1?B?QW5kcuk=?=", "Andr\xC3\xA9" },
	{ "Q ISO-8859-15 euro", "=?iso-8859-15?q?=A4?=", "\xE2\x82\xAC" },
	{ "Q windows-1252", "=?windows-1252?Q?=80_5?=", "\xE2\x82\xAC 5" },
	{ "B windows-1252", "=?WINDOWS-1252?B?gCA1?=", "\xE2\x82\xAC 5" },
	{ "Latin-1 label gets cp1252", "=?iso-8859-1?Q?=93hi=94?=",
	  "\xE2\x80\x9Chi\xE2\x80\x9D" },
	{ "windows-1252 hole", "=?windows-1252?Q?a=81b?=", "a" FFFD "b" },
	{ "ISO-2022-JP", "=?ISO-2022-JP?B?GyRCJEskWyRzGyhC?=",
	  "\xE3\x81\xAB\xE3\x81\xBB\xE3\x82\x93" },
	{ "RFC 2231 language", "=?utf-8*en?Q?hi?=", "hi" },
	{ "adjacent words", "=?utf-8?Q?a?= =?utf-8?Q?b?=", "ab" },
	{ "adjacent across a fold", "=?utf-8?Q?a?=\r\n\t =?utf-8?Q?b?=", "ab" },
	{ "adjacent, charsets differ", "=?iso-8859-1?Q?=E9?= =?utf-8?Q?=C3=A9?=",
	  "\xC3\xA9\xC3\xA9" },
	{ "character split over words", "=?utf-8?Q?=C3?= =?utf-8?Q?=A9?=",
	  "\xC3\xA9" },
	{ "B split over words", "=?utf-8?B?ww==?= =?utf-8?B?qQ==?=", "\xC3\xA9" },
	{ "B glued groups", "=?utf-8?B?YQ==YQ==?=", "aa" },
	{ "words apart", "=?utf-8?Q?a?= x =?utf-8?Q?b?=", "a x b" },
	{ "text then word", "Re: =?utf-8?Q?caf=C3=A9?= ok",
	  "Re: caf\xC3\xA9 ok" },
	{ "word glued to text", "x=?utf-8?Q?y?=z", "xyz" },
	{ "unterminated", "=?utf-8?Q?unterminated", "=?utf-8?Q?unterminated" },
	{ "unknown encoding", "=?utf-8?X?abc?=", "=?utf-8?X?abc?=" },
	{ "empty charset", "=??Q?abc?=", "=??Q?abc?=" },
	{ "only language", "=?*en?Q?abc?=", "=?*en?Q?abc?=" },
	{ "bad base64", "=?utf-8?B?@@@@?=", "=?utf-8?B?@@@@?=" },
	{ "space inside", "=?utf-8?Q?a b?=", "=?utf-8?Q?a b?=" },
	{ "8-bit inside", "=?utf-8?Q?\xC3\xA9?=", "=?utf-8?Q?\xC3\xA9?=" },
	{ "malformed after good", "=?utf-8?Q?a?= =?bad", "a =?bad" },
	{ "bare =?", "=?", "=?" },
	{ "lone =", "a = b", "a = b" },
	{ "Q bad escape kept", "=?utf-8?Q?=ZZ=4?=", "=ZZ=4" },
	{ "empty text", "=?utf-8?Q?" "?=", "" },
	{ "invalid UTF-8 in B", "=?utf-8?B?//4=?=", FFFD FFFD },
	{ "invalid UTF-8 in Q", "=?utf-8?Q?a=FFb?=", "a" FFFD "b" },
	{ "NUL from Q", "=?utf-8?Q?a=00b?=", "ab" },
	{ "NUL from B", "=?utf-8?B?YQBi?=", "ab" },
	{ "unknown charset", "=?x-no-such-charset?Q?abc=E9?=", "abc" FFFD },
	{ "iconv suffix refused", "=?utf-16//IGNORE?Q?a?=", "a" },
	{ "raw UTF-8", "caf\xC3\xA9", "caf\xC3\xA9" },
	{ "raw Latin-1", "caf\xE9", "caf" FFFD },
	{ "raw truncated", "abc\xE2\x82", "abc" FFFD },
	{ "raw overlong", "\xC0\xAF", FFFD FFFD },
	{ "raw surrogate", "\xED\xA0\x80", FFFD FFFD FFFD },
	{ "raw above U+10FFFF", "\xF4\x90\x80\x80", FFFD FFFD FFFD FFFD },
	{ "raw 4-byte", "\xF0\x9F\x93\xA7", "\xF0\x9F\x93\xA7" },
};

static void test_decode(void)
{
	for (size_t i = 0; i < ARRAY_SIZE(decode_cases); i++) {
		char *got = mime_decode_words(decode_cases[i].in);

		expect("mime_decode_words", decode_cases[i].name, got,
		       decode_cases[i].want);
		free(got);
	}
}

/* ---- mime_parse_fields ---- */

static const struct field_case {
	const char *name;
	const char *hdr;
	size_t len; /* 0: strlen(hdr) */
	const char *message_id, *subject, *from, *references, *in_reply_to;
} field_cases[] = {
	{ "CRLF",
	  "Message-ID: <a@b>\r\nSubject: Hello\r\nFrom: A <a@b>\r\n"
	  "References: <x@y> <z@w>\r\nIn-Reply-To: <z@w>\r\n\r\n",
	  0, "<a@b>", "Hello", "A <a@b>", "<x@y> <z@w>", "<z@w>" },
	{ "LF",
	  "Message-ID: <a@b>\nSubject: Hello\nFrom: A <a@b>\n"
	  "References: <x@y> <z@w>\nIn-Reply-To: <z@w>\n\n",
	  0, "<a@b>", "Hello", "A <a@b>", "<x@y> <z@w>", "<z@w>" },
	{ "folded subject", "Subject: Hello\r\n world\r\n\tagain\r\n", 0, NULL,
	  "Hello world\tagain", NULL, NULL, NULL },
	{ "space-line fold",
	  "Content-Type: text/plain\r\nSubject: Sometimes\r\n \r\n"
	  " header fields can be long\r\nFrom: Dad <d@x>\r\n\r\nbody\r\n",
	  0, NULL, "Sometimes  header fields can be long", "Dad <d@x>", NULL,
	  NULL },
	{ "tab-line fold", "Subject: a\n\t\nFrom: b\n", 0, NULL, "a", "b", NULL,
	  NULL },
	{ "missing fields", "Subject: only\r\n", 0, NULL, "only", NULL, NULL,
	  NULL },
	{ "duplicates: first wins",
	  "Subject: one\r\nMessage-ID: <1@x>\r\nSubject: two\r\n"
	  "Message-Id: <2@x>\r\nFrom: f1\r\nFROM: f2\r\n",
	  0, "<1@x>", "one", "f1", NULL, NULL },
	{ "duplicate after fold",
	  "Subject: one\r\n more\r\nSubject: two\r\n", 0, NULL, "one more",
	  NULL, NULL, NULL },
	{ "names any case",
	  "SUBJECT: s\r\nmessage-id: <m@x>\r\nIN-REPLY-TO: <p@x>\r\n"
	  "rEfErEnCeS: <r@x>\r\n",
	  0, "<m@x>", "s", NULL, "<r@x>", "<p@x>" },
	{ "similar names", "Subjects: no\r\nX-Subject: no\r\nFrom-x: no\r\n", 0,
	  NULL, NULL, NULL, NULL, NULL },
	{ "space before colon", "Subject : s\r\n", 0, NULL, "s", NULL, NULL,
	  NULL },
	{ "no space after colon", "Subject:s\r\n", 0, NULL, "s", NULL, NULL,
	  NULL },
	{ "empty subject", "Subject:\r\nFrom: f\r\n", 0, NULL, "", "f", NULL,
	  NULL },
	{ "Message-ID without brackets", "Message-ID: abc@def\r\n", 0,
	  "abc@def", NULL, NULL, NULL, NULL },
	{ "Message-ID two words", "Message-ID: abc def\r\n", 0, NULL, NULL,
	  NULL, NULL, NULL },
	{ "Message-ID empty", "Message-ID:\r\n", 0, NULL, NULL, NULL, NULL,
	  NULL },
	{ "Message-ID comment and fold",
	  "Message-ID: (comment)\r\n <id@x> trailing\r\n", 0, "<id@x>", NULL,
	  NULL, NULL, NULL },
	{ "Message-ID folded inside", "Message-ID: <long\r\n .id@x>\r\n", 0,
	  "<long.id@x>", NULL, NULL, NULL, NULL },
	{ "Message-ID empty brackets", "Message-ID: <> <real@x>\r\n", 0,
	  "<real@x>", NULL, NULL, NULL, NULL },
	{ "Message-ID unclosed", "Message-ID: <abc@x\r\n", 0, "<abc@x", NULL,
	  NULL, NULL, NULL },
	{ "Message-ID with CR", "Message-ID: <a\rb@x>\r\n", 0, "<ab@x>", NULL,
	  NULL, NULL, NULL },
	{ "references folded", "References: <a@x>\r\n\t<b@x>\r\n <c@x>\r\n", 0,
	  NULL, NULL, NULL, "<a@x>\t<b@x> <c@x>", NULL },
	{ "bare CR in In-Reply-To", "In-Reply-To: <a@x>\rX: y\r\n", 0, NULL,
	  NULL, NULL, NULL, "<a@x> X: y" },
	{ "NUL bytes", BIN("Subject: a\0b\r\nFrom: c\0d\r\nSubj\0ect: no\r\n"),
	  NULL, "ab", "cd", NULL, NULL },
	{ "NUL ends nothing", BIN("Subject: a\0\r\nMessage-ID: <m\0@x>\r\n"),
	  "<m@x>", "a", NULL, NULL, NULL },
	{ "unterminated", "Subject: tail without newline", 0, NULL,
	  "tail without newline", NULL, NULL, NULL },
	{ "unterminated fold", "Subject: a\r\n b", 0, NULL, "a b", NULL, NULL,
	  NULL },
	{ "cut inside CRLF", "Subject: a\r", 0, NULL, "a", NULL, NULL, NULL },
	{ "len shorter than string", "Subject: abcdef\r\n", 12, NULL, "abc",
	  NULL, NULL, NULL },
	{ "stops at empty line", "Subject: s\r\n\r\nFrom: body@x\r\n", 0, NULL,
	  "s", NULL, NULL, NULL },
	{ "stops at empty LF line", "Subject: s\n\nFrom: body@x\n", 0, NULL, "s",
	  NULL, NULL, NULL },
	{ "only an empty line", "\r\n", 0, NULL, NULL, NULL, NULL, NULL },
	{ "empty input", "", 0, NULL, NULL, NULL, NULL, NULL },
	{ "stray continuation", " stray\r\nSubject: s\r\n", 0, NULL, "s", NULL,
	  NULL, NULL },
	{ "line without colon", "garbage line\r\n more\r\nSubject: s\r\n", 0,
	  NULL, "s", NULL, NULL, NULL },
	{ "mbox envelope line", "From a@b Thu Sep  3 16:47:43 2020\nSubject: s\n",
	  0, NULL, "s", NULL, NULL, NULL },
	{ "continuation of skipped field", "To: a\r\n Subject: no\r\nFrom: f\r\n",
	  0, NULL, NULL, "f", NULL, NULL },
	{ "raw UTF-8 subject", "Subject: Gr\xC3\xBC\xC3\x9F" "e\r\n", 0, NULL,
	  "Gr\xC3\xBC\xC3\x9F" "e", NULL, NULL, NULL },
	{ "raw Latin-1 subject", "Subject: Gr\xFC\xDF" "e\r\n", 0, NULL,
	  "Gr" FFFD FFFD "e", NULL, NULL, NULL },
	{ "raw 8-bit references", "References: <\xE9@x>\r\n", 0, NULL, NULL,
	  NULL, "<" FFFD "@x>", NULL },
	{ "raw 8-bit Message-ID", "Message-ID: <\xE9@x>\r\n", 0, "<" FFFD "@x>",
	  NULL, NULL, NULL, NULL },
	{ "8-bit field name", "Sub\xE9ject: x\r\nSubject: y\r\n", 0, NULL, "y",
	  NULL, NULL, NULL },
	{ "encoded subject", "Subject: =?UTF-8?B?w6k=?=\r\n", 0, NULL,
	  "\xC3\xA9", NULL, NULL, NULL },
	{ "encoded From", "From: =?iso-8859-1?Q?J=F6rg?= <j@x>\r\n", 0, NULL,
	  NULL, "J\xC3\xB6rg <j@x>", NULL, NULL },
	{ "encoded words folded",
	  "Subject: =?utf-8?Q?a?=\r\n =?utf-8?Q?b?=\r\n\t=?utf-8?Q?c?= d\r\n", 0,
	  NULL, "abc d", NULL, NULL, NULL },
	{ "encoded leading space trimmed", "Subject: =?utf-8?Q?_x_?=\r\n", 0,
	  NULL, "x", NULL, NULL, NULL },
	{ "encoded invalid UTF-8", "Subject: =?utf-8?B?//4=?=\r\n", 0, NULL,
	  FFFD FFFD, NULL, NULL, NULL },
	{ "references not decoded", "References: =?utf-8?Q?a?=\r\n", 0, NULL,
	  NULL, NULL, "=?utf-8?Q?a?=", NULL },
	{ "trailing white space", "Subject:   s  \t\r\n", 0, NULL, "s", NULL,
	  NULL, NULL },
};

static void test_fields(void)
{
	for (size_t i = 0; i < ARRAY_SIZE(field_cases); i++) {
		const struct field_case *c = &field_cases[i];
		size_t len = c->len ? c->len : strlen(c->hdr);
		struct mime_fields f;
		char *copy = malloc(len ? len : 1);

		/* an exact-size copy lets ASan see any read past @len */
		memcpy(copy, c->hdr, len);
		mime_parse_fields(copy, len, &f);
		expect("message_id", c->name, f.message_id, c->message_id);
		expect("subject", c->name, f.subject, c->subject);
		expect("from", c->name, f.from, c->from);
		expect("references", c->name, f.references, c->references);
		expect("in_reply_to", c->name, f.in_reply_to, c->in_reply_to);
		mime_fields_release(&f);
		if (f.message_id || f.subject || f.from || f.references ||
		    f.in_reply_to) {
			failures++;
			fprintf(stderr, "FAIL release leaves pointers [%s]\n",
				c->name);
		}
		free(copy);
	}

	struct mime_fields f;

	mime_parse_fields(NULL, 10, &f);
	if (f.message_id || f.subject || f.from || f.references ||
	    f.in_reply_to) {
		failures++;
		fprintf(stderr, "FAIL NULL header gives fields\n");
	}
}

/* ---- properties on random and real input ---- */

static uint64_t rng = 0x9E3779B97F4A7C15ULL;

static uint64_t next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/*
 * Check the outputs of one header: valid UTF-8 everywhere, and a file
 * name from the subject that is valid UTF-8, at most NAMES_MAX bytes,
 * without '/' or controls, with the umid back out of it.
 */
static void check_header(const char *where, const char *hdr, size_t len)
{
	static const int64_t umid = 4471;
	char name[NAMES_MAX + 1];
	struct mime_fields f;
	const char *out[5];
	size_t n;

	mime_parse_fields(hdr, len, &f);
	out[0] = f.message_id;
	out[1] = f.subject;
	out[2] = f.from;
	out[3] = f.references;
	out[4] = f.in_reply_to;
	for (int i = 0; i < 5; i++) {
		if (out[i] && !valid_utf8(out[i])) {
			failures++;
			fprintf(stderr, "FAIL field %d not UTF-8 [%s]: ", i, where);
			print_str(out[i]);
			fputc('\n', stderr);
		}
	}
	n = names_message(name, 1795185120, 60, f.subject, umid);
	bool ok = n == strlen(name) && n <= NAMES_MAX && valid_utf8(name) &&
		  names_message_umid(name) == umid;
	for (size_t i = 0; ok && i < n; i++) {
		unsigned char c = (unsigned char)name[i];

		if (c == '/' || c < 0x20 || c == 0x7F ||
		    (c == 0xC2 && (unsigned char)name[i + 1] <= 0x9F))
			ok = false;
	}
	if (!ok) {
		failures++;
		fprintf(stderr, "FAIL file name [%s]: ", where);
		print_str(name);
		fputc('\n', stderr);
	}
	mime_fields_release(&f);
}

static void check_decoded(const char *where, const char *s)
{
	char *d = mime_decode_words(s);

	if (!valid_utf8(d)) {
		failures++;
		fprintf(stderr, "FAIL decode not UTF-8 [%s]: ", where);
		print_str(s);
		fputc('\n', stderr);
	}
	free(d);
}

static void test_random(void)
{
	static const char *const atoms[] = {
		"=?", "?=", "?", "=", "utf-8", "UTF-8*en", "iso-8859-1",
		"windows-1252", "iso-2022-jp", "x-bogus", "?B?", "?Q?", "?b?",
		"?q?", "_", "=C3", "=A9", "=FF", "=00", "w6k", "//4=", "GyRC",
		"\x1b$B", "\r\n", "\n", "\r", " ", "\t", "\r\n ", " \r\n",
		"Subject:", "From:", "Message-ID:", "References:",
		"In-Reply-To:", "<", ">", "@", "\xC3", "\xA9", "\xFF", "\xE2\x82",
		"\xF0\x9F\x93\xA7", "\xED\xA0\x80", "\0", "a", "Z", "9",
	};
	char buf[512], where[32];

	for (int iter = 0; iter < 30000; iter++) {
		size_t len = 0, natoms = next_rand() % 40;
		char *copy;

		for (size_t k = 0; k < natoms; k++) {
			const char *a;
			size_t al;

			if (next_rand() % 8 == 0) {
				buf[len++] = (char)(next_rand() & 0xFF);
				continue;
			}
			a = atoms[next_rand() % ARRAY_SIZE(atoms)];
			al = a[0] ? strlen(a) : 1;
			if (len + al > sizeof(buf) - 1)
				break;
			memcpy(buf + len, a, al);
			len += al;
		}
		snprintf(where, sizeof(where), "random %d", iter);
		copy = malloc(len ? len : 1);
		memcpy(copy, buf, len);
		check_header(where, copy, len);
		free(copy);
		buf[len] = '\0';
		check_decoded(where, buf);
	}
}

/* ---- the shared corpora ---- */

static int corpus_messages;

static void corpus_file(const char *path)
{
	FILE *fp = fopen(path, "rb");
	char *data = NULL, *p, *end, *next;
	size_t cap = 0, len = 0, r;

	if (!fp) {
		failures++;
		fprintf(stderr, "FAIL cannot open %s: %s\n", path,
			strerror(errno));
		return;
	}
	for (;;) {
		if (cap - len < 65536) {
			cap = cap ? cap * 2 : 65536;
			data = realloc(data, cap);
		}
		r = fread(data + len, 1, cap - len, fp);
		if (!r)
			break;
		len += r;
	}
	fclose(fp);

	/* an mbox holds many messages, each after a "From " line */
	p = data;
	end = data + len;
	if (len >= 5 && !memcmp(data, "From ", 5)) {
		while (p < end) {
			char *nl = memchr(p, '\n', (size_t)(end - p));

			p = nl ? nl + 1 : end;
			for (next = p; next < end; next++) {
				if (next[0] == '\n' && end - next > 5 &&
				    !memcmp(next + 1, "From ", 5))
					break;
			}
			if (next < end)
				next++;
			check_header(path, p, (size_t)(next - p));
			corpus_messages++;
			p = next;
		}
	} else {
		check_header(path, data, len);
		corpus_messages++;
	}
	free(data);
}

static int corpus_walk(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int files = 0;

	if (!d)
		return 0;
	while ((e = readdir(d))) {
		char path[PATH_MAX];
		struct stat st;

		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		if (lstat(path, &st))
			continue;
		if (S_ISDIR(st.st_mode)) {
			files += corpus_walk(path);
		} else if (S_ISREG(st.st_mode)) {
			corpus_file(path);
			files++;
		}
	}
	closedir(d);
	return files;
}

/*
 * The corpora sit at ../shared/corpora from the source root. Find the
 * root from this file's compile-time path (meson gives it relative to
 * the build directory, where tests run) or above the executable.
 */
static bool find_corpora(char *out, size_t outlen)
{
	const char *env = getenv("CONVOYFS_CORPORA");
	char dir[PATH_MAX], *slash;
	struct stat st;
	int up = 0;
	ssize_t n;

	if (env && *env) {
		snprintf(out, outlen, "%s", env);
		return stat(out, &st) == 0 && S_ISDIR(st.st_mode);
	}
	snprintf(dir, sizeof(dir), "%s", __FILE__);
	while (up < 3 && (slash = strrchr(dir, '/'))) {
		*slash = '\0';
		up++;
	}
	if (up == 3) {
		if ((size_t)snprintf(out, outlen, "%s/../shared/corpora", dir) <
			    outlen &&
		    stat(out, &st) == 0 && S_ISDIR(st.st_mode))
			return true;
	}
	n = readlink("/proc/self/exe", dir, sizeof(dir) - 1);
	if (n <= 0)
		return false;
	dir[n] = '\0';
	while ((slash = strrchr(dir, '/')) && slash != dir) {
		char probe[PATH_MAX + 32];

		*slash = '\0';
		snprintf(probe, sizeof(probe), "%s/tests/unit/test_mime.c", dir);
		if (stat(probe, &st) == 0) {
			return (size_t)snprintf(out, outlen, "%s/../shared/corpora",
						dir) < outlen &&
			       stat(out, &st) == 0 && S_ISDIR(st.st_mode);
		}
	}
	return false;
}

static void test_corpora(void)
{
	char dir[PATH_MAX];
	int files;

	if (!find_corpora(dir, sizeof(dir))) {
		printf("corpora not found (set CONVOYFS_CORPORA): corpus check "
		       "skipped\n");
		return;
	}
	files = corpus_walk(dir);
	printf("corpora %s: %d files, %d messages\n", dir, files,
	       corpus_messages);
	if (!files) {
		failures++;
		fprintf(stderr, "FAIL no files under %s\n", dir);
	}
}

/* the space-line trap in its real file, when present */
static void test_space_line_file(void)
{
	char dir[PATH_MAX], path[PATH_MAX + 64], buf[4096];
	struct mime_fields f;
	size_t len;
	FILE *fp;

	if (!find_corpora(dir, sizeof(dir)))
		return;
	snprintf(path, sizeof(path), "%s/gluon-testdata/space_line_header.eml",
		 dir);
	fp = fopen(path, "rb");
	if (!fp)
		return;
	len = fread(buf, 1, sizeof(buf), fp);
	fclose(fp);
	mime_parse_fields(buf, len, &f);
	expect("subject", "space_line_header.eml", f.subject,
	       "Sometimes  header fields can be long and contain space line "
	       ":shrug:");
	expect("from", "space_line_header.eml", f.from,
	       "Dad <dadjokes@arethebest.com>");
	mime_fields_release(&f);
}

int main(void)
{
	test_decode();
	test_fields();
	test_random();
	test_space_line_file();
	test_corpora();
	if (failures) {
		fprintf(stderr, "%d failure(s)\n", failures);
		return 1;
	}
	printf("mime ok\n");
	return 0;
}
