/*
 * fuzz_imap.c - the bytes a server sends, through libetpan and the
 * parsers and readers of ours it calls back (sync/imap.c: the EMAILID
 * and MAILBOXID parser that imap_init registers, on_header_bytes,
 * on_message, parse_att, flags_string, read_date, VANISHED, LIST flags,
 * STATUS), into what the sync engine is handed.
 *
 * A mailstream_low driver over the input plays the server: a greeting,
 * then the reply to the one command the target sends (always tag "1"),
 * then whatever follows for a NOOP (tag "2"). What we write is thrown
 * away; reads are cut into chunks of a size the input picks, so replies
 * split anywhere. EOF is a stream error, as on a dropped connection.
 *
 * The input's first line is the greeting, read as conn_open reads it
 * (conn_greeting: bounded, and only the condition, a well-formed
 * CAPABILITY code and the text handed on to libetpan, which parses a
 * greeting without a parser context and dereferences it (NULL) as soon
 * as it tries a string there, as in "* OK [PERMANENTFLAGS ()] hi").
 *
 * Input layout: two mode bytes, then the server's bytes.
 *   byte 0: bits 0-2 the command (see run()), bits 3-4 the FETCH items
 *           (enum imap_items), bit 5 by UID / a variant
 *   byte 1: bit 0 CONDSTORE, bit 1 QRESYNC (and enabled), bit 2
 *           OBJECTID; bits 3-5 the read chunk size
 * Printable mode bytes keep seeds readable: "Pw" is a UID FETCH of the
 * metadata (UID FLAGS INTERNALDATE RFC822.SIZE EMAILID HEADER.FIELDS)
 * with every capability, read 512 bytes at a time; "I" the flag check
 * with VANISHED, ":" a FETCH of dates by sequence set, "C" STATUS, "c"
 * CAPABILITY, "D" STATUS (MAILBOXID), "E" LIST, "e" LIST-STATUS, "F"
 * EXAMINE, "f" ENABLE QRESYNC, "G" UID SEARCH, "g" the BODY[] of one
 * message (tests/fuzz/seeds/imap/).
 *
 * struct conn is allocated by conn.c only (it is the head of a private
 * struct conn_priv), and there is no way to make one without a network
 * connection, so conn.c is compiled into this file: the fake connection
 * is a real struct conn_priv and is freed by conn.c's own conn_drop().
 * The rest of sync/ comes from the fuzz build of the sync library.
 */
#include "../../sync/conn.c"

#include "fuzz.h"
#include "names.h"

#include <errno.h>
#include <sanitizer/allocator_interface.h>
#include <sanitizer/lsan_interface.h>
#include <stdint.h>
#include <strings.h>

/* ---- a mailstream over the input ---- */

struct fz_stream {
	const char *greeting; /* served first */
	size_t gleft;
	const uint8_t *p;
	size_t left;
	size_t chunk;
};

static ssize_t fz_read(mailstream_low *s, void *buf, size_t count)
{
	struct fz_stream *z = s->data;
	size_t n = count;

	if (n > z->chunk)
		n = z->chunk;
	if (z->gleft) {
		if (n > z->gleft)
			n = z->gleft;
		memcpy(buf, z->greeting, n);
		z->greeting += n;
		z->gleft -= n;
		return (ssize_t)n;
	}
	if (!z->left)
		return -1; /* libetpan wants -1 at EOF, never 0 */
	if (n > z->left)
		n = z->left;
	memcpy(buf, z->p, n);
	z->p += n;
	z->left -= n;
	return (ssize_t)n;
}

static ssize_t fz_write(mailstream_low *s, const void *buf, size_t count)
{
	return (ssize_t)count;
}

static int fz_close(mailstream_low *s)
{
	return 0;
}

static int fz_get_fd(mailstream_low *s)
{
	return -1;
}

static void fz_free(mailstream_low *s)
{
	free(s->data);
	free(s);
}

static mailstream_low_driver fz_driver = {
	.mailstream_read = fz_read,
	.mailstream_write = fz_write,
	.mailstream_close = fz_close,
	.mailstream_get_fd = fz_get_fd,
	.mailstream_free = fz_free,
};

/*
 * ---- libetpan's own leaks ----
 *
 * libetpan 1.9.4 leaks part of what it parsed when a reply fails to
 * parse ("BODY[HEADER.X" leaves its section spec behind): not ours to
 * fix, and a session that saw it is dropped anyway. So the allocations
 * made while a command runs are tracked (ASan's malloc hooks), and when
 * the command broke the session (a parse or stream error), those still
 * live after it are excused (__lsan_ignore_object). After a command that
 * left the session usable (OK, NO, BAD, or cancelled by our callback)
 * every leak counts, libetpan's and ours.
 */
#define LIVE_BITS 20
#define LIVE_SLOTS (1 << LIVE_BITS)
#define TOMBSTONE ((const void *)1)

static const void *live[LIVE_SLOTS];
static uint32_t used[LIVE_SLOTS]; /* slots to clear */
static size_t nused;
static bool recording, overflowed;

static size_t slot_of(const volatile void *p)
{
	return ((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ull >> (64 - LIVE_BITS);
}

static void on_malloc(const volatile void *p, size_t size)
{
	size_t i = slot_of(p);

	(void)size;
	if (!recording || !p)
		return;
	if (nused >= LIVE_SLOTS / 2) {
		overflowed = true; /* then a leak may be reported wrongly */
		return;
	}
	while (live[i] && live[i] != TOMBSTONE)
		i = (i + 1) & (LIVE_SLOTS - 1);
	if (!live[i])
		used[nused++] = (uint32_t)i;
	live[i] = (const void *)p;
}

static void on_free(const volatile void *p)
{
	size_t i = slot_of(p);

	if (!nused || !p)
		return;
	for (; live[i]; i = (i + 1) & (LIVE_SLOTS - 1)) {
		if (live[i] == (const void *)p) {
			live[i] = TOMBSTONE;
			return;
		}
	}
}

static void tracked_begin(void)
{
	overflowed = false;
	recording = true;
}

/* forget what was tracked; with @excuse, ignore what is still live */
static void tracked_end(bool excuse)
{
	recording = false;
	for (size_t k = 0; k < nused; k++) {
		const void *p = live[used[k]];

		if (excuse && p && p != TOMBSTONE)
			__lsan_ignore_object(p);
		live[used[k]] = NULL;
	}
	nused = 0;
	if (excuse && overflowed)
		printf("fuzz_imap: too many allocations to track: a leak "
		       "reported now may be libetpan's\n");
}

/* ---- what the sync engine is handed ---- */

/* bytes read here make ASan check that they are there */
static volatile unsigned char sink;

static bool objectid_ok(const char *id)
{
	size_t n = strlen(id);

	/* RFC 8474 §4: objectid = 1*255(ALPHA / DIGIT / "_" / "-") */
	if (n < 1 || n > 255)
		return false;
	return strspn(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
			  "0123456789_-") == n;
}

/* sorted, distinct, space-separated atoms, no \Recent */
static void check_flags(const char *flags)
{
	const char *p = flags, *prev = NULL, *sp;
	size_t prevlen = 0, n;

	FUZZ_CHECK(!strpbrk(flags, "\r\n"));
	while (*p) {
		sp = strchr(p, ' ');
		n = sp ? (size_t)(sp - p) : strlen(p);
		FUZZ_CHECK(n > 0);
		FUZZ_CHECK(!(n == 7 && !strncasecmp(p, "\\Recent", 7)));
		if (prev) {
			int c = strncmp(prev, p, n < prevlen ? n : prevlen);

			FUZZ_CHECK(c < 0 || (c == 0 && prevlen < n));
		}
		prev = p;
		prevlen = n;
		p += n;
		if (*p)
			p++;
		FUZZ_CHECK(!sp || *p); /* no trailing space */
	}
}

static int on_msg(const struct imap_msg *m, void *ctx)
{
	char name[NAMES_MAX + 1];
	struct mime_fields mf;
	size_t len;

	(void)ctx;
	FUZZ_CHECK(m->uid != 0);
	if (m->flags)
		check_flags(m->flags);
	if (m->emailid)
		FUZZ_CHECK(objectid_ok(m->emailid));
	if (m->header) {
		/* every byte promised is there (ASan) */
		for (size_t i = 0; i < m->header_len; i++)
			sink ^= (unsigned char)m->header[i];
		/* and on to the file name, as the sync engine goes */
		mime_parse_fields(m->header, m->header_len, &mf);
		len = names_message(name, m->has_date ? m->date : 0,
				    m->has_date ? m->zone : 0, mf.subject,
				    m->uid);
		fuzz_check_name(name, len);
		mime_fields_release(&mf);
	}
	/* a callback's error skips the rest of the reply */
	return m->uid == 4242 ? -ECANCELED : 0;
}

static int on_body(const char *bytes, size_t len, void *ctx)
{
	size_t *n = ctx;

	/* every byte promised is there (ASan) */
	for (size_t i = 0; i < len; i++)
		sink ^= (unsigned char)bytes[i];
	*n += len;
	return *n > 1000000 ? -EFBIG : 0;
}

static void check_box(const struct imap_box *b)
{
	if (b->mailboxid)
		FUZZ_CHECK(objectid_ok(b->mailboxid));
}

static void check_folders(struct imap_mailbox *v, size_t n)
{
	char comp[NAMES_MAX + 1];

	for (size_t i = 0; i < n; i++) {
		char *dec, *part, *save = NULL, delim[2] = { v[i].delim, 0 };
		size_t len;

		FUZZ_CHECK(v[i].name && *v[i].name);
		for (size_t j = 0; j < i; j++)
			FUZZ_CHECK(strcmp(v[i].name, v[j].name));
		if (v[i].has_status)
			check_box(&v[i].box);
		/* the directory names the tree will make of it */
		dec = utf7_decode(v[i].name);
		if (!dec)
			dec = xstrdup(v[i].name);
		else
			FUZZ_CHECK(fuzz_str_utf8(dec));
		if (!v[i].delim) {
			len = names_component(comp, dec, strlen(dec));
			fuzz_check_name(comp, len);
		} else {
			for (part = strtok_r(dec, delim, &save); part;
			     part = strtok_r(NULL, delim, &save)) {
				len = names_component(comp, part, strlen(part));
				fuzz_check_name(comp, len);
				FUZZ_CHECK(comp[0] != '.');
			}
		}
		free(dec);
	}
}

/* ---- one session ---- */

static int run(struct conn *c, uint8_t mode)
{
	static const struct imap_uid_range set[] = { { 1, 100 },
						     { 200, 300 } };
	struct imap_fetch f = { .fn = on_msg };
	struct imap_mailbox *v = NULL;
	struct imap_box box;
	uint32_t *uids = NULL;
	size_t n = 0, got = 0;
	uint64_t body = 0;
	bool variant = mode & 0x20;
	char *id = NULL;
	int rc = IMAP_OK, cb_rc = 0;

	f.items = (enum imap_items)((mode >> 3) & 3);
	switch (mode & 7) {
	case 0: /* new mail: UID FETCH 1:* as the refresh asks */
		f.by_uid = !variant;
		f.first = 1;
		rc = imap_fetch(c, &f);
		break;
	case 1: /* flag changes: CHANGEDSINCE, and VANISHED (EARLIER) */
		f.by_uid = true;
		f.first = 1;
		f.last = variant ? 0 : 500;
		f.changedsince = 7;
		f.want_vanished = true;
		rc = imap_fetch(c, &f);
		for (size_t i = 0; i < f.nvanished; i++)
			FUZZ_CHECK(f.vanished[i].first &&
				   f.vanished[i].first <= f.vanished[i].last);
		break;
	case 2: /* growth: a set of UIDs or sequence numbers */
		f.by_uid = !variant;
		rc = imap_fetch_set(c, &f, set, 2);
		break;
	case 3:
		if (variant) { /* CAPABILITY after login, as conn_open asks */
			int r = conn_capability(c->imap);

			if (r)
				conn_errno(c, r, "ask capabilities");
			rc = conn_is_broken(c) ? IMAP_CONN_BAD
			     : r	       ? IMAP_FOLDER_BAD
					       : IMAP_OK;
			c->caps = conn_probe_caps(c->imap);
			break;
		}
		rc = imap_status(c, "INBOX", &box);
		if (rc == IMAP_OK)
			check_box(&box);
		imap_box_release(&box);
		break;
	case 4:
		rc = imap_mailboxid(c, variant ? "Caf&AOk-" : "INBOX", &id);
		if (id)
			FUZZ_CHECK(rc == IMAP_OK && objectid_ok(id));
		free(id);
		break;
	case 5:
		rc = variant ? imap_list_status(c, &v, &n)
			     : imap_list(c, &v, &n);
		if (rc == IMAP_OK)
			check_folders(v, n);
		else
			FUZZ_CHECK(!v && !n);
		imap_mailboxes_free(v, n);
		break;
	case 6:
		if (variant) { /* ENABLE QRESYNC */
			rc = imap_prepare(c);
			break;
		}
		rc = imap_examine(c, "INBOX", &box);
		imap_box_release(&box);
		break;
	case 7:
		if (variant) {
			rc = imap_fetch_body(c, 17, on_body, &got, &body,
					     &cb_rc);
			FUZZ_CHECK(body == got || cb_rc);
			break;
		}
		rc = imap_uid_search_set(c, set, 2, 86400 * 365,
					 86400 * 366, &uids, &n);
		for (size_t i = 0; i < n; i++) {
			FUZZ_CHECK((uids[i] >= 1 && uids[i] <= 100) ||
				   (uids[i] >= 200 && uids[i] <= 300));
			FUZZ_CHECK(!i || uids[i - 1] <= uids[i]);
		}
		free(uids);
		break;
	}
	imap_fetch_release(&f);
	FUZZ_CHECK(rc >= IMAP_OK && rc <= IMAP_CANCELLED);
	FUZZ_CHECK(f.count == 0 || (mode & 7) <= 2);
	return rc;
}

/*
 * Does the input announce a literal of more than a MiB? libetpan 1.9.4
 * allocates what a literal announces before reading it ("{4294967295}"
 * in a LIST reply: 4 GiB; only FETCH bodies and header fields are
 * streamed), which the fuzzer would report as out-of-memory. Reported;
 * such inputs are skipped.
 */
static bool huge_literal(const uint8_t *data, size_t size)
{
	for (size_t i = 0; i < size; i++) {
		uint64_t n = 0;
		size_t j;

		if (data[i] != '{')
			continue;
		for (j = i + 1; j < size && data[j] >= '0' && data[j] <= '9' &&
				n <= (1u << 20);
		     j++)
			n = n * 10 + (data[j] - '0');
		if (n > (1u << 20))
			return true;
	}
	return false;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	imap_init();
	__sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const size_t chunks[] = { 1, 2, 3, 7, 16, 64, 512, 8192 };
	struct conn_priv *p;
	struct fz_stream *z;
	mailstream_low *low;
	mailstream *st;
	char err[256];
	struct conn *c;
	bool ok;
	int rc;

	if (size < 2 || huge_literal(data, size))
		return 0;
	z = xcalloc(1, sizeof(*z));
	/* the greeting is the input's, read by conn_greeting */
	z->greeting = "";
	z->gleft = 0;
	z->p = data + 2;
	z->left = size - 2;
	z->chunk = chunks[(data[1] >> 3) & 7];
	low = mailstream_low_new(z, &fz_driver);
	st = low ? mailstream_new(low, 8192) : NULL;
	if (!st)
		abort();

	p = xcalloc(1, sizeof(*p));
	p->host = xstrdup("fuzz.invalid");
	p->port = xstrdup("993");
	p->timeout_ms = 1000;
	c = &p->pub;
	c->imap = mailimap_new(0, NULL);
	if (!c->imap)
		abort();
	c->caps = (data[1] & 1 ? CAP_CONDSTORE : 0) |
		  (data[1] & 2 ? CAP_QRESYNC | CAP_ENABLE : 0) |
		  (data[1] & 4 ? CAP_OBJECTID : 0);
	c->qresync = data[1] & 2;

	/* each step in its own window: only a step that broke the
	 * session (a parse or stream error) has its leftovers excused */
	tracked_begin();
	rc = conn_greeting(st, p->host, p->port, p->timeout_ms, err,
			   sizeof(err));
	if (rc) {
		/* refused before libetpan had the stream */
		mailstream_close(st);
		tracked_end(true);
		conn_drop(p);
		return 0;
	}
	rc = mailimap_connect(c->imap, st);
	ok = rc == MAILIMAP_NO_ERROR_AUTHENTICATED ||
	     rc == MAILIMAP_NO_ERROR_NON_AUTHENTICATED;
	tracked_end(!ok);
	if (ok) {
		/* logged in and a folder selected, as the engine has it */
		c->imap->imap_state = MAILIMAP_STATE_SELECTED;
		tracked_begin();
		run(c, data[0]);
		ok = !conn_is_broken(c);
		tracked_end(!ok);
	}
	if (ok) {
		/* untagged data after the reply */
		tracked_begin();
		imap_noop(c);
		tracked_end(conn_is_broken(c));
	}
	conn_drop(p); /* closes the stream: no LOGOUT is read */
	return 0;
}
