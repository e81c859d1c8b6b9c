/*
 * fuzz_names.c - the file-name builder (fs/names.c): message files,
 * conversation directories and folder components.
 *
 * Input layout: 8 bytes date (Unix time), 4 bytes zone (minutes east of
 * UTC), 8 bytes id, all little-endian (missing bytes are 0), then the
 * subject or raw folder name. Every name made must be one directory
 * entry (fuzz_check_name: 1..255 bytes, no '/', no NUL, valid UTF-8, no
 * controls), a dated name carries no ':' and no run of spaces, ends in
 * " #<id>.eml" (or " #<id>") and gives its id back, the same inputs give
 * the same name, and a folder component does not start with '.'.
 */
#include "names.h"

#include "fuzz.h"

#include <inttypes.h>

#define HEAD 20

static uint64_t le(const uint8_t *p, size_t n)
{
	uint64_t v = 0;

	for (size_t i = n; i-- > 0;)
		v = v << 8 | p[i];
	return v;
}

static void check_dated(const char *name, size_t len, int64_t id,
			const char *ext)
{
	char tail[40];
	size_t tl;

	fuzz_check_name(name, len);
	FUZZ_CHECK(!strchr(name, ':'));
	FUZZ_CHECK(!strstr(name, "  "));
	tl = (size_t)snprintf(tail, sizeof(tail), " #%" PRId64 "%s", id, ext);
	FUZZ_CHECK(len > tl && !strcmp(name + len - tl, tail));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t head[HEAD] = { 0 };
	char a[NAMES_MAX + 1], b[NAMES_MAX + 1], *subject;
	const uint8_t *raw = data + (size < HEAD ? size : HEAD);
	size_t rawlen = size < HEAD ? 0 : size - HEAD, la, lb;
	int64_t date, id;
	int zone;

	memcpy(head, data, size < HEAD ? size : HEAD);
	date = (int64_t)le(head, 8);
	zone = (int)(int32_t)le(head + 8, 4);
	id = (int64_t)le(head + 12, 8);
	subject = fuzz_cstr(raw, rawlen);

	/* a message file */
	memset(a, 0xAA, sizeof(a));
	la = names_message(a, date, zone, subject, id);
	check_dated(a, la, id, ".eml");
	FUZZ_CHECK(names_message_umid(a) == (id >= 0 ? id : -1));
	lb = names_message(b, date, zone, subject, id);
	FUZZ_CHECK(la == lb && !strcmp(a, b));
	/* the subject is optional */
	lb = names_message(b, date, zone, NULL, id);
	check_dated(b, lb, id, ".eml");

	/* a conversation directory */
	la = names_conversation(a, date, zone, subject, id);
	check_dated(a, la, id, "");
	FUZZ_CHECK(names_conversation_id(a) == (id >= 0 ? id : -1));

	/* anything looked up in a directory, read back */
	(void)names_message_umid(subject);
	(void)names_conversation_id(subject);

	/* a folder name component: the raw bytes, NULs and all */
	memset(a, 0xAA, sizeof(a));
	la = names_component(a, (const char *)raw, rawlen);
	fuzz_check_name(a, la);
	FUZZ_CHECK(a[0] != '.');
	la = names_component(a, subject, strlen(subject));
	fuzz_check_name(a, la);
	FUZZ_CHECK(a[0] != '.');

	free(subject);
	return 0;
}
