/*
 * fuzz_thread.c - how the threader pulls ids out of a message's
 * Message-ID, In-Reply-To and References (sync/thread.c: hids_collect
 * with next_token, token_len and hids_add).
 *
 * hids_collect is static and reachable otherwise only through
 * thread_message(), which needs a store on disk and a transaction per
 * message; thread.c is therefore compiled into this file (the store
 * functions it calls come from the store library and are never run).
 *
 * Two ways in: the input as a header block through mime_parse_fields(),
 * as the sync engine does, and the input as three raw values separated
 * by NUL bytes (Message-ID, In-Reply-To, References), as a store row
 * could hold them. The ids must be: at most THREAD_MAX_IDS, each a
 * "<...>" of 3 to THREAD_MAX_ID_LEN bytes without white space or
 * control, distinct, inside the buffer; and the first "<...>" of a
 * Message-ID that mime.c made must be the first of them.
 */
#include "../../sync/thread.c"

#include "fuzz.h"

static void check_hids(const struct hids *h, const struct store_msg *m)
{
	const char *lt, *gt;

	FUZZ_CHECK(h->n <= THREAD_MAX_IDS);
	for (size_t i = 0; i < h->n; i++) {
		const char *id = h->id[i];
		size_t len = h->len[i];

		FUZZ_CHECK(id >= h->buf && id + len < h->buf + h->used);
		FUZZ_CHECK(strlen(id) == len);
		FUZZ_CHECK(len >= 3 && len <= THREAD_MAX_ID_LEN);
		FUZZ_CHECK(id[0] == '<' && id[len - 1] == '>');
		for (size_t k = 0; k < len; k++)
			FUZZ_CHECK((unsigned char)id[k] > ' ');
		for (size_t j = 0; j < i; j++)
			FUZZ_CHECK(h->len[j] != len || memcmp(h->id[j], id, len));
	}
	/* thread.c reads a Message-ID as mime.c does: its first "<...>"
	 * is the message's own id, the first of them */
	lt = m->message_id ? strchr(m->message_id, '<') : NULL;
	gt = lt ? strchr(lt + 1, '>') : NULL;
	if (gt && gt - lt + 1 >= 3 && gt - lt + 1 <= THREAD_MAX_ID_LEN) {
		FUZZ_CHECK(h->n >= 1);
		FUZZ_CHECK(h->len[0] == (size_t)(gt - lt + 1) &&
			   !memcmp(h->id[0], lt, h->len[0]));
	}
}

static void from_header(const uint8_t *data, size_t size)
{
	struct store_msg m = { .umid = 1 };
	struct mime_fields f;
	struct hids h;

	mime_parse_fields((const char *)data, size, &f);
	m.message_id = f.message_id;
	m.in_reply_to = f.in_reply_to;
	m.references = f.references;
	hids_collect(&h, &m);
	check_hids(&h, &m);
	free(h.buf);
	mime_fields_release(&f);
}

/* the next NUL-terminated piece of @data from *@pos, or NULL when
 * there is none left */
static char *piece(const uint8_t *data, size_t size, size_t *pos)
{
	const uint8_t *z;
	size_t n;
	char *s;

	if (*pos > size)
		return NULL;
	z = memchr(data + *pos, '\0', size - *pos);
	n = z ? (size_t)(z - (data + *pos)) : size - *pos;
	s = fuzz_cstr(data + *pos, n);
	*pos += n + 1;
	return s;
}

static void from_values(const uint8_t *data, size_t size)
{
	struct store_msg m = { .umid = 1 };
	struct hids h;
	size_t pos = 0;

	m.message_id = piece(data, size, &pos);
	m.in_reply_to = piece(data, size, &pos);
	m.references = piece(data, size, &pos);
	hids_collect(&h, &m);
	/* a raw Message-ID is not what mime.c makes: only the ids */
	free(m.message_id);
	m.message_id = NULL;
	check_hids(&h, &m);
	free(h.buf);
	free(m.in_reply_to);
	free(m.references);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	from_header(data, size);
	from_values(data, size);
	return 0;
}
