/*
 * fuzz.h - what the libFuzzer targets of tests/fuzz share: the entry
 * points, a copy of the input as a C string, and the checks of the
 * invariants the code under test promises (valid UTF-8 where promised,
 * file names without '/' or NUL and at most NAMES_MAX bytes). A broken
 * invariant says which on stdout (libFuzzer's -close_fd_mask=2 keeps
 * stdout) and aborts, so libFuzzer keeps the input as a crash.
 */
#ifndef CONVOY_FUZZ_H
#define CONVOY_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(cond)                                                  \
	do {                                                              \
		if (!(cond)) {                                            \
			printf("%s:%d: invariant broken: %s\n", __FILE__, \
			       __LINE__, #cond);                          \
			fflush(stdout);                                   \
			abort();                                          \
		}                                                         \
	} while (0)

/* @n bytes of @data as a malloc'ed C string (cut at the first NUL, as
 * every caller of a char * API would see it) */
static inline char *fuzz_cstr(const uint8_t *data, size_t n)
{
	char *s = malloc(n + 1);

	if (!s)
		abort();
	memcpy(s, data, n);
	s[n] = '\0';
	return s;
}

/*
 * Strict UTF-8 (RFC 3629): no overlongs, no surrogates, nothing above
 * U+10FFFF, and no NUL inside the @n bytes. Written independently of
 * the decoders under test, so that it can judge them.
 */
static inline bool fuzz_utf8_valid(const char *str, size_t n)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0;

	while (i < n) {
		unsigned char c = s[i];
		uint32_t cp;
		size_t k;

		if (c == 0)
			return false;
		if (c < 0x80) {
			i++;
			continue;
		}
		if ((c & 0xE0) == 0xC0) {
			k = 1;
			cp = c & 0x1F;
		} else if ((c & 0xF0) == 0xE0) {
			k = 2;
			cp = c & 0x0F;
		} else if ((c & 0xF8) == 0xF0) {
			k = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (n - i <= k)
			return false;
		for (size_t j = 1; j <= k; j++) {
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

static inline bool fuzz_str_utf8(const char *s)
{
	return fuzz_utf8_valid(s, strlen(s));
}

/* no byte below 0x20 and no DEL */
static inline bool fuzz_no_c0(const char *s, bool tab_ok)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if ((c < 0x20 && !(tab_ok && c == '\t')) || c == 0x7F)
			return false;
	}
	return true;
}

/*
 * A name the kernel takes as one directory entry, as names.c promises
 * for every name: @len is strlen, at most 255 bytes, not empty, "." or
 * "..", no '/', valid UTF-8, no C0 or C1 control, and none of the
 * bidirectional controls or line separators that names.c replaces.
 */
static inline void fuzz_check_name(const char *name, size_t len)
{
	const unsigned char *p = (const unsigned char *)name;

	FUZZ_CHECK(len == strlen(name));
	FUZZ_CHECK(len >= 1 && len <= 255);
	FUZZ_CHECK(strcmp(name, ".") && strcmp(name, ".."));
	FUZZ_CHECK(!strchr(name, '/'));
	FUZZ_CHECK(fuzz_utf8_valid(name, len));
	FUZZ_CHECK(fuzz_no_c0(name, false));
	for (size_t i = 0; i < len; i++) {
		/* C1: U+0080..U+009F is C2 80..C2 9F */
		FUZZ_CHECK(!(p[i] == 0xC2 && i + 1 < len && p[i + 1] < 0xA0));
		/* U+061C */
		FUZZ_CHECK(!(p[i] == 0xD8 && i + 1 < len && p[i + 1] == 0x9C));
		/* U+200E U+200F U+2028..U+202E (E2 80 8E/8F, E2 80 A8..AE) */
		if (p[i] == 0xE2 && i + 2 < len && p[i + 1] == 0x80)
			FUZZ_CHECK(p[i + 2] != 0x8E && p[i + 2] != 0x8F &&
				   !(p[i + 2] >= 0xA8 && p[i + 2] <= 0xAE));
		/* U+2066..U+2069 (E2 81 A6..A9) */
		if (p[i] == 0xE2 && i + 2 < len && p[i + 1] == 0x81)
			FUZZ_CHECK(!(p[i + 2] >= 0xA6 && p[i + 2] <= 0xA9));
	}
}

#endif
