/*
 * test_thread.c - unit tests of the threader (sync/thread.c) and the
 * conversation rows it keeps (store/conversations.c): every arrival
 * order, merges, loops, self-references, duplicates, messages without a
 * Message-ID, hostile headers, deletions, and 10k synthetic messages
 * giving the same conversations in any order as an independent
 * union-find of the id graph. Exit 0 pass, anything else fail.
 */
#include "store.h"
#include "sync_i.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char root[] = "/tmp/test_thread.XXXXXX";

#define CHECK(cond)                                                            \
	do {                                                                   \
		if (!(cond)) {                                                 \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, \
				__LINE__, #cond);                              \
			return 1;                                              \
		}                                                              \
	} while (0)

#define CHECK_RC(expr, want)                                             \
	do {                                                             \
		int rc_ = (expr);                                        \
		if (rc_ != (want)) {                                     \
			fprintf(stderr,                                  \
				"%s:%d: %s returned %d (%s), not %d\n",  \
				__FILE__, __LINE__, #expr, rc_,          \
				strerror(rc_ < 0 ? -rc_ : rc_), (want)); \
			return 1;                                        \
		}                                                        \
	} while (0)

/* ---- helpers ---- */

static int ntest;

/* a fresh store in its own directory under root */
static struct store *new_store(void)
{
	struct store *s;
	char dir[256];

	snprintf(dir, sizeof(dir), "%s/s%d", root, ++ntest);
	if (store_open(dir, &s)) {
		fprintf(stderr, "cannot open store %s\n", dir);
		exit(1);
	}
	return s;
}

static int64_t folder(struct store *s, const char *name)
{
	struct store_folder f = { .name = (char *)name,
				  .display = (char *)name,
				  .delim = '/' };
	int64_t id = -1;

	if (store_folder_put(s, &f, &id)) {
		fprintf(stderr, "cannot add folder %s\n", name);
		exit(1);
	}
	return id;
}

/* every case runs twice: storing then threading (thread_message), and
 * with the sync's one call (thread_put) */
static bool with_thread_put;

/*
 * Store a message as the sync does, store_msg_put then thread_message or
 * thread_put, and return its umid (exits on failure: every caller
 * expects success).
 */
static int64_t put(struct store *s, int64_t fid, uint32_t uid, int64_t date,
		   const char *mid, const char *refs, const char *irt,
		   const char *subject)
{
	struct store_msg m = {
		.folder = fid,
		.uid = uid,
		.flags = (char *)"",
		.date = date,
		.zone = (int)(date % 7) * 60,
		.size = 100,
		.message_id = (char *)mid,
		.subject = (char *)subject,
		.references = (char *)refs,
		.in_reply_to = (char *)irt,
	};
	int rc;

	if (with_thread_put) {
		rc = thread_put(s, &m);
	} else {
		rc = store_msg_put(s, &m);
		if (!rc)
			rc = thread_message(s, &m);
	}
	if (rc) {
		fprintf(stderr, "cannot put message %s uid %u: %s\n",
			mid ? mid : "(none)", uid, strerror(-rc));
		exit(1);
	}
	return m.umid;
}

static int64_t conv_of(struct store *s, int64_t umid)
{
	struct store_msg m;
	int64_t c;

	if (store_msg_get(s, umid, &m)) {
		fprintf(stderr, "message %lld is gone\n", (long long)umid);
		exit(1);
	}
	c = m.conv;
	store_msg_release(&m);
	return c;
}

/* conversation @id's row; exits if there is none */
static struct store_conv conv_row(struct store *s, int64_t id)
{
	struct store_conv c;

	if (store_conv_get(s, id, &c)) {
		fprintf(stderr, "conversation %lld is gone\n", (long long)id);
		exit(1);
	}
	return c;
}

/* whether conversation @id has @count messages, subject @subject and
 * dates @first, @last */
static bool conv_is(struct store *s, int64_t id, uint64_t count,
		    const char *subject, int64_t first, int64_t last)
{
	struct store_conv c = conv_row(s, id);
	bool ok = c.count == count && c.first_date == first &&
		  c.last_date == last &&
		  (subject ? c.subject && !strcmp(c.subject, subject) :
			     !c.subject);

	if (!ok)
		fprintf(stderr,
			"conversation %lld: count %llu subject %s dates "
			"%lld..%lld\n",
			(long long)id, (unsigned long long)c.count,
			c.subject ? c.subject : "(null)",
			(long long)c.first_date, (long long)c.last_date);
	store_conv_release(&c);
	return ok;
}

static bool conv_exists(struct store *s, int64_t id)
{
	struct store_conv c;

	if (store_conv_get(s, id, &c))
		return false;
	store_conv_release(&c);
	return true;
}

/* number of conversations store_conv_list shows, paging by @page */
static size_t conv_count(struct store *s, size_t page)
{
	struct store_conv v[64];
	int64_t after = 0;
	size_t n, i, total = 0;

	if (page > 64)
		page = 64;
	do {
		if (store_conv_list(s, after, page, v, &n))
			exit(1);
		for (i = 0; i < n; i++) {
			after = v[i].id;
			store_conv_release(&v[i]);
		}
		total += n;
	} while (n == page);
	return total;
}

/* ---- cases ---- */

static int test_reply_after_parent(void)
{
	struct store *s = new_store();
	int64_t in = folder(s, "INBOX"), p, r, c;

	p = put(s, in, 1, 1000, "<p@x>", NULL, NULL, "Plans");
	r = put(s, in, 2, 2000, "<r@x>", "<p@x>", "<p@x>", "Re: Plans");
	c = conv_of(s, p);
	CHECK(c > 0);
	CHECK(conv_of(s, r) == c);
	CHECK(conv_is(s, c, 2, "Plans", 1000, 2000));
	CHECK(conv_count(s, 10) == 1);
	store_close(s);
	return 0;
}

static int test_reply_before_parent(void)
{
	struct store *s = new_store();
	int64_t in = folder(s, "INBOX"), p, r, g, c;

	/* newest first, as grow() learns a folder */
	g = put(s, in, 3, 3000, "<g@x>", NULL, "<r@x>", "Re: Re: Plans");
	r = put(s, in, 2, 2000, "<r@x>", "<p@x>", "<p@x>", "Re: Plans");
	p = put(s, in, 1, 1000, "<p@x>", NULL, NULL, "Plans");
	c = conv_of(s, p);
	CHECK(conv_of(s, r) == c && conv_of(s, g) == c);
	/* the subject is the earliest message's, not the first to come */
	CHECK(conv_is(s, c, 3, "Plans", 1000, 3000));
	CHECK(conv_count(s, 10) == 1);
	store_close(s);
	return 0;
}

static int test_parent_in_other_folder(void)
{
	struct store *s = new_store();
	int64_t in = folder(s, "INBOX"), sent = folder(s, "Sent");
	int64_t a, b, c, d;

	a = put(s, in, 7, 5000, "<q@x>", NULL, NULL, "Question");
	b = put(s, sent, 1, 6000, "<a@me>", "<q@x>", "<q@x>", "Re: Question");
	c = put(s, in, 8, 7000, "<t@x>", "<q@x> <a@me>", "<a@me>",
		"Re: Question");
	/* a stranger in another folder, and a Sent message to nobody */
	d = put(s, sent, 2, 5500, "<other@me>", NULL, NULL, "Other");
	CHECK(conv_of(s, a) == conv_of(s, b));
	CHECK(conv_of(s, a) == conv_of(s, c));
	CHECK(conv_of(s, d) != conv_of(s, a));
	CHECK(conv_is(s, conv_of(s, a), 3, "Question", 5000, 7000));
	CHECK(conv_is(s, conv_of(s, d), 1, "Other", 5500, 5500));
	store_close(s);
	return 0;
}

static int test_only_in_reply_to(void)
{
	struct store *s = new_store();
	int64_t in = folder(s, "INBOX"), a, b, c;

	/* In-Reply-To with the junk older mailers put around the id */
	b = put(s, in, 2, 200, "<b@x>", NULL,
		"your message of Monday\r\n <a@x>", "Re: hi");
	c = put(s, in, 3, 300, "<c@x>", NULL, "<b@x> (Bob)", "Re: hi");
	a = put(s, in, 1, 100, "<a@x>", NULL, NULL, "hi");
	CHECK(conv_of(s, a) == conv_of(s, b) && conv_of(s, b) == conv_of(s, c));
	CHECK(conv_is(s, conv_of(s, a), 3, "hi", 100, 300));
	store_close(s);
	return 0;
}

static int test_truncated_references(void)
{
	struct store *s = new_store();
	int64_t in = folder(s, "INBOX"), m[5];
	int i;

	/* r <- a <- b <- c <- d; d's References lost the middle, and it
	 * arrives first, then the root, then the rest */
	m[4] = put(s, in, 5, 50, "<d@x>", "<r@x> <c@x>", "<c@x>", "Re: root");
	m[0] = put(s, in, 1, 10, "<r@x>", NULL, NULL, "root");
	CHECK(conv_of(s, m[4]) == conv_of(s, m[0]));
	m[3] = put(s, in, 4, 40, "<c@x>", "<r@x> <b@x>", "<b@x>", "Re: root");
	m[1] = put(s, in, 2, 20, "<a@x>", "<r@x>", "<r@x>", "Re: root");
	/* b knows only its parent a: joins a's conversation, and c's via
	 * its own id that c referenced */
	m[2] = put(s, in, 3, 30, "<b@x>", "<a@x>", NULL, "Re: root");
	for (i = 1; i < 5; i++)
		CHECK(conv_of(s, m[i]) == conv_of(s, m[0]));
	CHECK(conv_is(s, conv_of(s, m[0]), 5, "root", 10, 50));
	CHECK(conv_count(s, 10) == 1);
	store_close(s);
	return 0;
}

static int test_merge_three(void)
{
	struct store *s = new_store();
	int64_t in = folder(s, "INBOX"), a, b, c, a2, m, ca, cb, cc, low;
	struct store_msg v[8];
	size_t n, i;

	/* three conversations that look unrelated... */
	a = put(s, in, 1, 300, "<a@x>", NULL, NULL, "A");
	a2 = put(s, in, 2, 350, "<a2@x>", "<a@x>", NULL, "Re: A");
	b = put(s, in, 3, 100, "<b@x>", NULL, NULL, "B");
	c = put(s, in, 4, 200, "<c@x>", "<unseen@x>", NULL, "C");
	ca = conv_of(s, a);
	cb = conv_of(s, b);
	cc = conv_of(s, c);
	CHECK(ca != cb && cb != cc && ca != cc);
	CHECK(conv_count(s, 2) == 3);
	/* ...until one message references all three at once */
	m = put(s, in, 5, 400, "<m@x>", "<b@x> <unseen@x> <a2@x>", "<a@x>",
		"Re: everything");
	low = ca < cb ? ca : cb;
	low = low < cc ? low : cc;
	CHECK(conv_of(s, m) == low);
	CHECK(conv_of(s, a) == low && conv_of(s, a2) == low);
	CHECK(conv_of(s, b) == low && conv_of(s, c) == low);
	CHECK(conv_exists(s, low));
	CHECK(ca == low || !conv_exists(s, ca));
	CHECK(cb == low || !conv_exists(s, cb));
	CHECK(cc == low || !conv_exists(s, cc));
	/* the earliest message of all three is b */
	CHECK(conv_is(s, low, 5, "B", 100, 400));
	CHECK(conv_count(s, 1) == 1);

	/* the survivor lists every message, in umid order, paged */
	CHECK_RC(store_conv_messages(s, low, 0, 3, v, &n), 0);
	CHECK(n == 3 && v[0].umid == a && v[1].umid == a2 && v[2].umid == b);
	for (i = 0; i < n; i++)
		store_msg_release(&v[i]);
	CHECK_RC(store_conv_messages(s, low, b, 8, v, &n), 0);
	CHECK(n == 2 && v[0].umid == c && v[1].umid == m);
	CHECK(v[1].conv == low && !strcmp(v[1].subject, "Re: everything"));
	for (i = 0; i < n; i++)
		store_msg_release(&v[i]);

	/* a late reply to the id only c referenced lands there too */
	CHECK(conv_of(s, put(s, in, 6, 500, "<late@x>", NULL, "<unseen@x>",
			     "Re: C")) == low);
	CHECK(conv_is(s, low, 6, "B", 100, 500));
	store_close(s);
	return 0;
}

static int test_loops(void)
{
	struct store *s = new_store();
	int64_t in = folder(s, "INBOX"), a, b, w, x, y, z;

	/* two messages that each claim to answer the other */
	a = put(s, in, 1, 10, "<a@x>", "<b@x>", "<b@x>", "a");
	b = put(s, in, 2, 20, "<b@x>", "<a@x>", "<a@x>", "b");
	CHECK(conv_of(s, a) == conv_of(s, b));
	CHECK(conv_is(s, conv_of(s, a), 2, "a", 10, 20));
	/* a cycle of four, arriving so that it closes through a merge:
	 * w -> x -> y -> z -> w */
	w = put(s, in, 3, 30, "<w@x>", "<x@x>", NULL, "w");
	y = put(s, in, 5, 50, "<y@x>", "<z@x>", NULL, "y");
	CHECK(conv_of(s, w) != conv_of(s, y));
	x = put(s, in, 4, 40, "<x@x>", "<y@x>", NULL, "x");
	z = put(s, in, 6, 60, "<z@x>", "<w@x>", NULL, "z");
	CHECK(conv_of(s, w) == conv_of(s, x) && conv_of(s, x) == conv_of(s, y));
	CHECK(conv_of(s, z) == conv_of(s, w));
	CHECK(conv_of(s, w) != conv_of(s, a));
	CHECK(conv_is(s, conv_of(s, w), 4, "w", 30, 60));
	CHECK(conv_count(s, 10) == 2);
	store_close(s);
	return 0;
}

static int test_self_reference(void)
{
	struct store *s = new_store();
	int64_t in = folder(s, "INBOX"), a, b;

	a = put(s, in, 1, 10, "<self@x>", "<self@x> <self@x>", "<self@x>",
		"me");
	CHECK(conv_is(s, conv_of(s, a), 1, "me", 10, 10));
	/* ids are compared without folding white space */
	b = put(s, in, 2, 20, "<o@x>", "< s e l f @x>", NULL, "Re: me");
	CHECK(conv_of(s, a) == conv_of(s, b));
	CHECK(conv_count(s, 10) == 1);
	store_close(s);
	return 0;
}

static int test_duplicates(void)
{
	struct store *s = new_store();
	int64_t in = folder(s, "INBOX"), list = folder(s, "Lists/dev");
	int64_t sent = folder(s, "Sent"), a, b, c, r, conv;
	struct store_msg m;

	/* the same post in Sent and the list folder, and twice in the list */
	a = put(s, sent, 1, 100, "<post@me>", NULL, NULL, "Patch");
	b = put(s, list, 9, 100, "<post@me>", NULL, NULL, "Patch");
	c = put(s, list, 10, 101, "<post@me>", NULL, NULL, "Patch");
	r = put(s, in, 3, 200, "<r@x>", "<post@me>", "<post@me>", "Re: Patch");
	conv = conv_of(s, a);
	CHECK(conv_of(s, b) == conv && conv_of(s, c) == conv);
	CHECK(conv_of(s, r) == conv);
	CHECK(conv_is(s, conv, 4, "Patch", 100, 200));

	/* a flag update puts the message again: nothing changes */
	CHECK_RC(store_msg_get(s, r, &m), 0);
	free(m.flags);
	m.flags = strdup("\\Seen");
	CHECK_RC(store_msg_put(s, &m), 0);
	CHECK(m.umid == r);
	CHECK_RC(thread_message(s, &m), 0);
	CHECK_RC(thread_message(s, &m), 0);
	store_msg_release(&m);
	CHECK(conv_is(s, conv, 4, "Patch", 100, 200));
	CHECK(conv_count(s, 10) == 1);

	/* bad calls */
	memset(&m, 0, sizeof(m));
	CHECK_RC(thread_message(s, &m), -EINVAL);
	CHECK_RC(thread_message(s, NULL), -EINVAL);
	m.umid = 999999;
	CHECK_RC(thread_message(s, &m), -ENOENT);
	store_close(s);
	return 0;
}

static int test_no_message_id(void)
{
	struct store *s = new_store();
	int64_t in = folder(s, "INBOX"), a, b, p, r, bare, ref;

	a = put(s, in, 1, 10, NULL, NULL, NULL, "lonely");
	b = put(s, in, 2, 10, NULL, NULL, NULL, "lonely");
	CHECK(conv_of(s, a) != conv_of(s, b));
	CHECK(conv_is(s, conv_of(s, a), 1, "lonely", 10, 10));
	/* empty and white-space ids are no ids */
	a = put(s, in, 3, 11, "<>", "<> < >", "", NULL);
	b = put(s, in, 4, 12, "", NULL, "<>", NULL);
	CHECK(conv_of(s, a) != conv_of(s, b));
	CHECK(conv_is(s, conv_of(s, a), 1, NULL, 11, 11));
	/* without an id of its own, a reference still joins */
	p = put(s, in, 5, 20, "<p@x>", NULL, NULL, "parent");
	r = put(s, in, 6, 30, NULL, "<p@x>", NULL, "Re: parent");
	CHECK(conv_of(s, p) == conv_of(s, r));
	/* a bare Message-ID matches the bracketed reference */
	bare = put(s, in, 7, 40, "bare@x", NULL, NULL, "bare");
	ref = put(s, in, 8, 50, "<rb@x>", "<bare@x>", NULL, "Re: bare");
	CHECK(conv_of(s, bare) == conv_of(s, ref));
	CHECK(conv_count(s, 3) == 6);
	store_close(s);
	return 0;
}

static int test_hostile(void)
{
	struct store *s = new_store();
	int64_t in = folder(s, "INBOX"), root_, parent, m, other;
	size_t len = 0, cap = 64 * 20000, i;
	char *refs = malloc(cap), *big;

	root_ = put(s, in, 1, 10, "<root@x>", NULL, NULL, "root");
	parent = put(s, in, 2, 20, "<parent@x>", NULL, NULL, "parent");
	other = put(s, in, 3, 15, "<middle5000@x>", NULL, NULL, "middle");
	/* 20000 references: the root and the parent must still count,
	 * and threading stays quick */
	len += (size_t)sprintf(refs + len, "<root@x>");
	for (i = 0; i < 20000 - 2; i++)
		len += (size_t)sprintf(refs + len, " <middle%zu@x>", i);
	len += (size_t)sprintf(refs + len, " <parent@x>");
	m = put(s, in, 4, 30, "<m@x>", refs, refs, "Re: root");
	CHECK(conv_of(s, m) == conv_of(s, root_));
	CHECK(conv_of(s, m) == conv_of(s, parent));
	/* an id from the dropped middle does not join */
	CHECK(conv_of(s, other) != conv_of(s, m));
	CHECK(conv_is(s, conv_of(s, m), 3, "root", 10, 30));
	/* unbalanced brackets and an absurdly long id */
	big = malloc(5000);
	memset(big, 'a', 4998);
	big[0] = '<';
	big[4997] = '>';
	big[4998] = '\0';
	m = put(s, in, 5, 40, big, "<<<a@x", ">>>", "x");
	CHECK(conv_is(s, conv_of(s, m), 1, "x", 40, 40));
	free(big);
	free(refs);
	store_close(s);
	return 0;
}

static int test_delete(void)
{
	struct store *s = new_store();
	int64_t in = folder(s, "INBOX"), lists = folder(s, "Lists");
	int64_t a, b, c, d, conv, lone, lc;

	a = put(s, in, 1, 100, "<a@x>", NULL, NULL, "first");
	b = put(s, in, 2, 200, "<b@x>", "<a@x>", NULL, "second");
	c = put(s, lists, 1, 300, "<c@x>", "<b@x>", NULL, "third");
	d = put(s, lists, 2, 400, "<d@x>", "<c@x>", NULL, "fourth");
	conv = conv_of(s, a);
	CHECK(conv_is(s, conv, 4, "first", 100, 400));
	/* losing the earliest makes the next one the earliest */
	CHECK_RC(store_msg_delete(s, a), 0);
	CHECK(conv_is(s, conv, 3, "second", 200, 400));
	/* losing the latest moves the last date back */
	CHECK_RC(store_msg_delete(s, d), 0);
	CHECK(conv_is(s, conv, 2, "second", 200, 300));
	/* a folder's messages go with the folder */
	CHECK_RC(store_folder_delete(s, lists), 0);
	CHECK(conv_is(s, conv, 1, "second", 200, 200));
	(void)c;
	/* the last one takes the conversation and its ids with it: a late
	 * reply to a gone message starts afresh */
	lone = put(s, in, 3, 50, "<lone@x>", NULL, NULL, "lone");
	lc = conv_of(s, lone);
	CHECK_RC(store_msg_delete(s, b), 0);
	CHECK(!conv_exists(s, conv));
	CHECK(conv_count(s, 10) == 1);
	b = put(s, in, 4, 500, "<late@x>", "<a@x> <b@x>", NULL, "Re: second");
	CHECK(conv_of(s, b) != conv && conv_of(s, b) != lc);
	/* conversation ids are never reused */
	CHECK(conv_of(s, b) > conv && conv_of(s, b) > lc);
	CHECK(conv_is(s, conv_of(s, b), 1, "Re: second", 500, 500));
	store_close(s);
	return 0;
}

/*
 * The same inside one transaction, as the sync's batches run: what a
 * deletion or a merge did to the ids is seen by the next message.
 */
static int test_in_transaction(void)
{
	struct store *s = new_store();
	int64_t in = folder(s, "INBOX"), a, b, c, d, conv;

	CHECK_RC(store_begin(s), 0);
	a = put(s, in, 1, 100, "<a@tx>", NULL, NULL, "a");
	b = put(s, in, 2, 200, "<b@tx>", "<a@tx>", NULL, "Re: a");
	conv = conv_of(s, a);
	CHECK(conv_of(s, b) == conv);
	/* the conversation goes with its last message, and its ids */
	CHECK_RC(store_msg_delete(s, a), 0);
	CHECK_RC(store_msg_delete(s, b), 0);
	CHECK(!conv_exists(s, conv));
	c = put(s, in, 3, 300, "<c@tx>", "<a@tx> <b@tx>", NULL, "Re: Re: a");
	CHECK(conv_of(s, c) > conv);
	CHECK(conv_is(s, conv_of(s, c), 1, "Re: Re: a", 300, 300));
	/* a merge moves the ids: the next reply finds the survivor */
	a = put(s, in, 4, 400, "<x@tx>", NULL, NULL, "x");
	b = put(s, in, 5, 500, "<y@tx>", NULL, NULL, "y");
	c = put(s, in, 6, 600, "<z@tx>", "<x@tx> <y@tx>", NULL, "z");
	CHECK(conv_of(s, a) == conv_of(s, b) && conv_of(s, c) == conv_of(s, a));
	d = put(s, in, 7, 700, "<w@tx>", "<y@tx>", NULL, "w");
	CHECK(conv_of(s, d) == conv_of(s, a));
	CHECK(conv_is(s, conv_of(s, a), 4, "x", 400, 700));
	CHECK_RC(store_commit(s), 0);
	CHECK(conv_is(s, conv_of(s, a), 4, "x", 400, 700));
	store_close(s);
	return 0;
}

/*
 * What a threading that failed half-way and was committed anyway leaves
 * (store.h): an empty conversation, ids mapped to it. The next messages
 * must fill it in as if it had been made for them.
 */
static int test_leftovers(void)
{
	struct store *s = new_store();
	int64_t in = folder(s, "INBOX"), e, f, g, h, m, n2, o;
	const char *x[] = { "<x@y>" }, *q[] = { "<q@y>" }, *r[] = { "<r@y>" };

	CHECK_RC(store_conv_new(s, &e), 0);
	CHECK_RC(store_conv_add_ids(s, x, 1, e), 0);
	CHECK(conv_count(s, 10) == 0); /* empty: not listed */
	m = put(s, in, 1, 500, "<m@y>", "<x@y>", NULL, "M");
	CHECK(conv_of(s, m) == e);
	CHECK(conv_is(s, e, 1, "M", 500, 500));
	/* an empty one merged into a full one changes nothing */
	CHECK_RC(store_conv_new(s, &f), 0);
	CHECK_RC(store_conv_add_ids(s, q, 1, f), 0);
	n2 = put(s, in, 2, 600, "<n@y>", "<q@y> <m@y>", NULL, "N");
	CHECK(conv_of(s, n2) == e && !conv_exists(s, f));
	CHECK(conv_is(s, e, 2, "M", 500, 600));
	/* a full one merged into an empty one with a lower id gives it
	 * all it has */
	CHECK_RC(store_conv_new(s, &g), 0);
	CHECK_RC(store_conv_add_ids(s, r, 1, g), 0);
	h = conv_of(s, put(s, in, 3, 300, "<h@y>", NULL, NULL, "H"));
	CHECK(h > g);
	CHECK_RC(store_conv_merge(s, h, g), 0);
	CHECK(conv_is(s, g, 1, "H", 300, 300));
	CHECK(!conv_exists(s, h));
	o = put(s, in, 4, 200, "<o@y>", "<r@y>", NULL, "O");
	CHECK(conv_of(s, o) == g);
	CHECK(conv_is(s, g, 2, "O", 200, 300));

	/* the calls refuse what makes no sense */
	CHECK_RC(store_conv_attach(s, g, m), -EEXIST);
	CHECK_RC(store_conv_merge(s, g, g), -EINVAL);
	CHECK_RC(store_conv_merge(s, 999999, g), -ENOENT);
	CHECK(conv_is(s, g, 2, "O", 200, 300));
	CHECK(conv_is(s, e, 2, "M", 500, 600));
	store_close(s);
	return 0;
}

/*
 * thread_put of a row that is there already, as when a batch is fetched
 * again after a crash: it joins or stays, counted once, and no empty
 * conversation is left behind.
 */
static int test_put_again(void)
{
	struct store *s = new_store();
	int64_t in = folder(s, "INBOX"), p, r, lone, conv;
	struct store_msg m = {
		.folder = in,
		.uid = 3,
		.flags = (char *)"",
		.date = 30,
		.message_id = (char *)"<r@again>",
		.subject = (char *)"Re: p",
		.references = (char *)"<p@again>",
	};
	size_t nconv;

	p = put(s, in, 1, 10, "<p@again>", NULL, NULL, "p");
	lone = put(s, in, 2, 20, NULL, NULL, NULL, "lone");
	conv = conv_of(s, p);
	nconv = conv_count(s, 10);
	CHECK(nconv == 2);

	/* stored unthreaded first: thread_put threads it */
	CHECK_RC(store_msg_put(s, &m), 0);
	r = m.umid;
	CHECK(m.conv == 0 && conv_of(s, r) == 0);
	m.conv = 0;
	m.flags = (char *)"\\Seen";
	CHECK_RC(thread_put(s, &m), 0);
	CHECK(m.umid == r && m.conv == conv && conv_of(s, r) == conv);
	CHECK(conv_is(s, conv, 2, "p", 10, 30));
	CHECK_RC(store_msg_get(s, r, &m), 0);
	CHECK(!strcmp(m.flags, "\\Seen") && !m.references);
	store_msg_release(&m);

	/* threaded already: nothing moves, nothing is counted twice */
	for (int i = 0; i < 2; i++) {
		struct store_msg again = {
			.folder = in,
			.uid = i ? 2 : 3,
			.flags = (char *)"",
			.date = i ? 20 : 30,
			.message_id = (char *)(i ? NULL : "<r@again>"),
			.references = (char *)(i ? NULL : "<p@again>"),
		};

		CHECK_RC(thread_put(s, &again), 0);
		CHECK(again.umid == (i ? lone : r));
		CHECK(again.conv == conv_of(s, again.umid));
	}
	CHECK(conv_is(s, conv, 2, "p", 10, 30));
	CHECK(conv_is(s, conv_of(s, lone), 1, "lone", 20, 20));
	CHECK(conv_count(s, 10) == nconv);
	/* the one made for the message without ids went again */
	CHECK_RC(store_conv_new(s, &conv), 0);
	CHECK(conv - 1 > conv_of(s, lone) && !conv_exists(s, conv - 1));
	store_close(s);
	return 0;
}

/* ---- 10k synthetic messages in two orders ---- */

#define NSYN 10000

struct syn {
	uint32_t uid;
	int64_t folder_ix;
	int64_t date;
	char mid[40]; /* "" for none */
	char *refs; /* owned */
	char irt[40];
	char subject[40];
	int64_t umid; /* in the store under test */
	int comp; /* union-find over ids, independent of the threader */
};

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
	uint64_t x = rng_state; /* xorshift64* */

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	rng_state = x;
	return x * 0x2545f4914f6cdd1dULL;
}

static unsigned rnd_below(unsigned n)
{
	return (unsigned)(rnd() % n);
}

/* union-find over message indices; ids are found by a sorted table */
static int uf_parent[NSYN];

static int uf_find(int i)
{
	while (uf_parent[i] != i) {
		uf_parent[i] = uf_parent[uf_parent[i]];
		i = uf_parent[i];
	}
	return i;
}

static void uf_union(int a, int b)
{
	a = uf_find(a);
	b = uf_find(b);
	if (a != b)
		uf_parent[a > b ? a : b] = a < b ? a : b;
}

struct idref {
	const char *id;
	int msg;
};

static int cmp_idref(const void *a, const void *b)
{
	const struct idref *x = a, *y = b;
	int c = strcmp(x->id, y->id);

	return c ? c : x->msg - y->msg;
}

/* add every "<...>" of @s as an id of message @i */
static void add_ids(struct idref *v, size_t *n, const char *s, int i)
{
	const char *p = s, *lt, *gt;

	while (p && (lt = strchr(p, '<')) && (gt = strchr(lt, '>'))) {
		v[*n].id = strndup(lt, (size_t)(gt - lt) + 1);
		v[(*n)++].msg = i;
		p = gt + 1;
	}
}

/*
 * Make @m, the @k-th message of the thread starting at @v[@first], a
 * reply to an earlier one of the thread: References as the parent's plus
 * the parent (6 in 10), trimmed to the root and the parent (2 in 10), or
 * none; In-Reply-To in 6 of 10, so some have only that.
 */
static void syn_reply(struct syn *v, size_t first, size_t k, struct syn *m)
{
	struct syn *p = &v[first + rnd_below((unsigned)k)];
	unsigned how = rnd_below(10);
	char *r;

	/* a parent without id: the reply hangs off the thread's root */
	if (!p->mid[0])
		p = &v[first];
	if (!p->mid[0])
		return;
	if (how < 6) {
		if (asprintf(&r, "%s%s%s", p->refs ? p->refs : "",
			     p->refs ? " " : "", p->mid) < 0)
			abort();
		m->refs = r;
	} else if (how < 8) {
		if (asprintf(&r, "%s %s", v[first].mid, p->mid) < 0)
			abort();
		m->refs = r;
	}
	if (how >= 4)
		snprintf(m->irt, sizeof(m->irt), "%s", p->mid);
}

/*
 * Threads of 1 to ~40 messages; some messages without Message-ID, a
 * few copied into a second folder with the same Message-ID.
 */
static void syn_make(struct syn *v, size_t n)
{
	size_t i = 0, t = 0, k;
	int64_t date = 1000000;

	while (i < n) {
		size_t size = 1 + rnd_below(rnd_below(4) ? 6 : 40), first = i;

		for (k = 0; k < size && i < n; k++, i++) {
			struct syn *m = &v[i];

			memset(m, 0, sizeof(*m));
			m->uid = (uint32_t)i + 1;
			m->folder_ix = rnd_below(3);
			/* dates interleave threads, a reply may be dated
			 * before its parent, and no two are alike */
			date += 1 + rnd_below(50);
			m->date = date + (int64_t)rnd_below(3) * 10000000;
			snprintf(m->subject, sizeof(m->subject), "%s%zu-%zu",
				 k ? "Re: t" : "t", t, k);
			if (rnd_below(50))
				snprintf(m->mid, sizeof(m->mid), "<m%zu@syn>",
					 i);
			if (k)
				syn_reply(v, first, k, m);
		}
		t++;
	}
	/* duplicates: a few messages copied with the same Message-ID
	 * and date (the same mail in Sent and in a list folder) */
	for (i = 0; i + 1 < n; i++) {
		if (rnd_below(100) || !v[i].mid[0])
			continue;
		free(v[i + 1].refs);
		v[i + 1] = v[i];
		v[i + 1].refs = v[i].refs ? strdup(v[i].refs) : NULL;
		v[i + 1].uid = (uint32_t)(i + 2);
		v[i + 1].folder_ix = (v[i].folder_ix + 1) % 3;
		i++;
	}
}

/* the expected partition: components of messages joined by shared ids */
static void syn_components(struct syn *v, size_t n)
{
	struct idref *ids = calloc(n * 60, sizeof(*ids));
	size_t nid = 0, i;

	for (i = 0; i < n; i++) {
		uf_parent[i] = (int)i;
		if (v[i].mid[0])
			add_ids(ids, &nid, v[i].mid, (int)i);
		add_ids(ids, &nid, v[i].refs, (int)i);
		add_ids(ids, &nid, v[i].irt, (int)i);
	}
	qsort(ids, nid, sizeof(*ids), cmp_idref);
	for (i = 1; i < nid; i++)
		if (!strcmp(ids[i].id, ids[i - 1].id))
			uf_union(ids[i].msg, ids[i - 1].msg);
	for (i = 0; i < n; i++)
		v[i].comp = uf_find((int)i);
	for (i = 0; i < nid; i++)
		free((char *)ids[i].id);
	free(ids);
}

static int syn_load(struct store *s, struct syn *v, const size_t *order,
		    size_t n)
{
	static const char *const names[] = { "INBOX", "Sent", "Lists" };
	int64_t f[3];
	size_t i;

	for (i = 0; i < 3; i++)
		f[i] = folder(s, names[i]);
	CHECK_RC(store_begin(s), 0);
	for (i = 0; i < n; i++) {
		struct syn *m = &v[order[i]];

		m->umid = put(s, f[m->folder_ix], m->uid, m->date,
			      m->mid[0] ? m->mid : NULL, m->refs,
			      m->irt[0] ? m->irt : NULL, m->subject);
		if (i % 1000 == 999) {
			CHECK_RC(store_commit(s), 0);
			CHECK_RC(store_begin(s), 0);
		}
	}
	CHECK_RC(store_commit(s), 0);
	return 0;
}

/* the key of the earliest message: date, Message-ID (none first) */
static bool syn_earlier(const struct syn *a, const struct syn *b)
{
	if (a->date != b->date)
		return a->date < b->date;
	return strcmp(a->mid, b->mid) < 0;
}

/*
 * Check the store's conversations against the components: the same
 * partition, and per conversation the count, the first and last date,
 * and the earliest message's subject. Returns the number of
 * conversations through *@nconv and the highest id through *@maxid.
 */
static int syn_check(struct store *s, struct syn *v, size_t n, size_t *nconv,
		     int64_t *maxid)
{
	int64_t *conv_of_comp = calloc(n, sizeof(*conv_of_comp));
	int *comp_of_conv = NULL;
	size_t *first = calloc(n, sizeof(*first)), i, ncomp = 0;
	uint64_t *count = calloc(n, sizeof(*count));
	int64_t *last = calloc(n, sizeof(*last)), maxconv = 0;

	for (i = 0; i < n; i++) {
		int64_t c = conv_of(s, v[i].umid);

		CHECK(c > 0);
		if (c > maxconv)
			maxconv = c;
	}
	comp_of_conv = calloc((size_t)maxconv + 1, sizeof(*comp_of_conv));
	for (i = 0; i < (size_t)maxconv + 1; i++)
		comp_of_conv[i] = -1;
	for (i = 0; i < n; i++) {
		int comp = v[i].comp;
		int64_t c = conv_of(s, v[i].umid);

		/* a bijection between components and conversations */
		if (!conv_of_comp[comp]) {
			conv_of_comp[comp] = c;
			first[comp] = i;
			ncomp++;
		}
		CHECK(conv_of_comp[comp] == c);
		CHECK(comp_of_conv[c] == -1 || comp_of_conv[c] == comp);
		comp_of_conv[c] = comp;
		count[comp]++;
		if (syn_earlier(&v[i], &v[first[comp]]))
			first[comp] = i;
		if (v[i].date > last[comp])
			last[comp] = v[i].date;
	}
	for (i = 0; i < n; i++) {
		if (!conv_of_comp[i])
			continue;
		CHECK(conv_is(s, conv_of_comp[i], count[i],
			      v[first[i]].subject, v[first[i]].date, last[i]));
	}
	CHECK(conv_count(s, 64) == ncomp);
	*nconv = ncomp;
	*maxid = maxconv;
	free(conv_of_comp);
	free(comp_of_conv);
	free(first);
	free(count);
	free(last);
	return 0;
}

static const struct syn *syn_sorted;

static int cmp_date(const void *a, const void *b)
{
	const struct syn *x = &syn_sorted[*(const size_t *)a];
	const struct syn *y = &syn_sorted[*(const size_t *)b];

	return x->date < y->date ? -1 : x->date > y->date;
}

static int test_synthetic(void)
{
	struct syn *v = calloc(NSYN, sizeof(*v));
	size_t *order = calloc(NSYN, sizeof(*order)), i, n1, n2, n3, done;
	int64_t maxid;
	struct store *s;

	syn_make(v, NSYN);
	syn_components(v, NSYN);

	/* by date */
	for (i = 0; i < NSYN; i++)
		order[i] = i;
	syn_sorted = v;
	qsort(order, NSYN, sizeof(*order), cmp_date);
	s = new_store();
	CHECK(syn_load(s, v, order, NSYN) == 0);
	CHECK(syn_check(s, v, NSYN, &n1, &maxid) == 0);
	store_close(s);

	/* in random order */
	for (i = NSYN - 1; i > 0; i--) {
		size_t j = rnd_below((unsigned)i + 1), x = order[i];

		order[i] = order[j];
		order[j] = x;
	}
	s = new_store();
	CHECK(syn_load(s, v, order, NSYN) == 0);
	CHECK(syn_check(s, v, NSYN, &n2, &maxid) == 0);
	CHECK(n1 == n2);
	/* out of order, replies came before what joins them: merges ran */
	CHECK((size_t)maxid > n2);

	/* and once more through the backlog: store first, thread later */
	{
		static const char *const names[] = { "INBOX", "Sent",
						      "Lists" };
		struct store *b = new_store();
		int64_t f[3];

		for (i = 0; i < 3; i++)
			f[i] = folder(b, names[i]);
		CHECK_RC(store_begin(b), 0);
		for (i = 0; i < NSYN; i++) {
			struct syn *m = &v[order[i]];
			struct store_msg sm = {
				.folder = f[m->folder_ix],
				.uid = m->uid,
				.flags = (char *)"",
				.date = m->date,
				.message_id = m->mid[0] ? m->mid : NULL,
				.subject = m->subject,
				.references = m->refs,
				.in_reply_to = m->irt[0] ? m->irt : NULL,
			};

			CHECK_RC(store_msg_put(b, &sm), 0);
			m->umid = sm.umid;
		}
		CHECK_RC(store_commit(b), 0);
		CHECK(conv_count(b, 10) == 0);
		do {
			CHECK_RC(thread_backlog(b, 3000, &done), 0);
		} while (done);
		CHECK(syn_check(b, v, NSYN, &n3, &maxid) == 0);
		CHECK(n3 == n1);
		store_close(b);
	}
	fprintf(stderr, "synthetic: %d messages, %zu conversations, same in "
			"date, random and backlog order\n",
		NSYN, n1);
	store_close(s);
	for (i = 0; i < NSYN; i++)
		free(v[i].refs);
	free(v);
	free(order);
	return 0;
}

/* ---- driver ---- */

static int rm_entry(const char *path, const struct stat *st, int flag,
		    struct FTW *ftw)
{
	return remove(path);
}

static const struct {
	const char *name;
	int (*fn)(void);
} tests[] = {
	{ "reply after parent", test_reply_after_parent },
	{ "reply before parent", test_reply_before_parent },
	{ "parent in another folder", test_parent_in_other_folder },
	{ "only In-Reply-To", test_only_in_reply_to },
	{ "truncated References", test_truncated_references },
	{ "merge of three", test_merge_three },
	{ "reference loops", test_loops },
	{ "self-reference", test_self_reference },
	{ "duplicate Message-IDs", test_duplicates },
	{ "no Message-ID", test_no_message_id },
	{ "hostile headers", test_hostile },
	{ "deletion", test_delete },
	{ "inside one transaction", test_in_transaction },
	{ "leftovers of a failed threading", test_leftovers },
	{ "thread_put of a stored message", test_put_again },
	{ "10k synthetic messages", test_synthetic },
};

int main(void)
{
	size_t i;
	int failed = 0;

	if (!mkdtemp(root)) {
		perror("mkdtemp");
		return 1;
	}
	for (i = 0; i < 2 * sizeof(tests) / sizeof(tests[0]); i++) {
		size_t k = i % (sizeof(tests) / sizeof(tests[0]));
		int rc;

		with_thread_put = k != i;
		rc = tests[k].fn();
		printf("%s: %s (%s)\n", rc ? "FAIL" : "ok", tests[k].name,
		       with_thread_put ? "thread_put" : "thread_message");
		failed |= rc;
	}
	nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	return failed ? 1 : 0;
}
