/*
 * fuzz_utf7.c - modified UTF-7 folder names (sync/utf7.c), both ways.
 *
 * For any input X (as a C string):
 *  - X valid UTF-8: utf7_encode(X) succeeds, is printable ASCII, and
 *    utf7_decode() of it gives X back;
 *  - X not valid UTF-8: utf7_encode(X) is NULL;
 *  - utf7_decode(X), when it succeeds, is valid UTF-8 and X is its one
 *    canonical encoding: utf7_encode() of it gives X back (utf7.c is
 *    strict so that a directory name maps back to exactly the server's
 *    name).
 */
#include "sync_i.h"

#include "fuzz.h"

static bool printable_ascii(const char *s)
{
	for (; *s; s++)
		if (*s < 0x20 || *s > 0x7E)
			return false;
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *x = fuzz_cstr(data, size), *enc, *dec, *back;

	enc = utf7_encode(x);
	if (fuzz_str_utf8(x)) {
		FUZZ_CHECK(enc);
		FUZZ_CHECK(printable_ascii(enc));
		back = utf7_decode(enc);
		FUZZ_CHECK(back);
		FUZZ_CHECK(!strcmp(back, x));
		free(back);
	} else {
		FUZZ_CHECK(!enc);
	}
	free(enc);

	dec = utf7_decode(x);
	if (dec) {
		FUZZ_CHECK(printable_ascii(x));
		FUZZ_CHECK(fuzz_str_utf8(dec));
		back = utf7_encode(dec);
		FUZZ_CHECK(back);
		FUZZ_CHECK(!strcmp(back, x));
		free(back);
		free(dec);
	}
	free(x);
	return 0;
}
