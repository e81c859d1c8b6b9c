/*
 * test_imap_sets.c - UID sets as growth by date and the flag checks of
 * scattered known UIDs write them (imap_uid_ranges): runs merged, gaps
 * merged only where every UID is known, and the text bounded.
 */
#include "sync_i.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c)                                                         \
	do {                                                             \
		if (!(c)) {                                              \
			fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, \
				#c);                                     \
			return 1;                                        \
		}                                                        \
	} while (0)

/* the set as it goes on the wire */
static void text_of(const struct imap_uid_range *r, size_t n, char *buf,
		    size_t len)
{
	size_t at = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < n && at < len; i++) {
		if (r[i].first == r[i].last)
			at += (size_t)snprintf(buf + at, len - at, "%s%u",
					       i ? "," : "", r[i].first);
		else
			at += (size_t)snprintf(buf + at, len - at, "%s%u:%u",
					       i ? "," : "", r[i].first,
					       r[i].last);
	}
}

static int set_is(const uint32_t *uids, size_t n, uint32_t merge_from,
		  size_t max_text, size_t want_taken, const char *want)
{
	struct imap_uid_range r[64];
	char buf[512];
	size_t nr, taken;

	taken = imap_uid_ranges(uids, n, merge_from, max_text, r, &nr);
	text_of(r, nr, buf, sizeof(buf));
	if (taken != want_taken || strcmp(buf, want)) {
		fprintf(stderr, "got %zu \"%s\", want %zu \"%s\"\n", taken,
			buf, want_taken, want);
		return 1;
	}
	return 0;
}

int main(void)
{
	static const uint32_t runs[] = { 1, 2, 3, 5, 7, 8, 9, 12 };
	static const uint32_t gaps[] = { 1, 2, 5, 9, 10, 20, 21, 40 };
	uint32_t many[200];
	struct imap_uid_range r[200];
	char buf[4096];
	size_t nr, taken;

	CHECK(!set_is(runs, 0, UINT32_MAX, 100, 0, ""));
	/* consecutive UIDs make one range; nothing else merges */
	CHECK(!set_is(runs, 8, UINT32_MAX, 100, 8, "1:3,5,7:9,12"));
	/* from @merge_from on, every UID is known: one range over gaps */
	CHECK(!set_is(gaps, 8, 9, 100, 8, "1:2,5,9:40"));
	CHECK(!set_is(gaps, 8, 1, 100, 8, "1:40"));
	/* the text bound, counted with a comma after each range: "1:3,"
	 * is 4 bytes, "5," and "7," 2 more each; "7:8," would pass 8, so
	 * growing the last range stops there too */
	CHECK(!set_is(runs, 8, UINT32_MAX, 8, 5, "1:3,5,7"));
	CHECK(!set_is(runs, 8, UINT32_MAX, 3, 1, "1"));
	/* the first UID always goes, however small the bound */
	CHECK(!set_is(gaps, 8, UINT32_MAX, 1, 1, "1"));

	/* scattered UIDs of six digits: cut where the text would pass */
	for (size_t i = 0; i < 200; i++)
		many[i] = 100000 + 3 * (uint32_t)i;
	taken = imap_uid_ranges(many, 200, UINT32_MAX, 100, r, &nr);
	CHECK(taken == nr && taken == 14); /* 7 bytes each */
	text_of(r, nr, buf, sizeof(buf));
	CHECK(strlen(buf) + 1 <= 100);
	/* the rest continues where it stopped */
	taken += imap_uid_ranges(many + taken, 200 - taken, UINT32_MAX,
				 IMAP_SET_MAX_TEXT, r, &nr);
	CHECK(taken == 200 && nr == 186);
	printf("ok\n");
	return 0;
}
