/*
 * test_store.c - unit tests of store/: schema and migrations, file modes,
 * folders, messages and flag sets, the body cache, corruption recovery
 * and several connections at once. Exit 0 pass, anything else fail.
 *
 * The raw sqlite3 handle is used only to look at what the store wrote.
 */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char root[] = "/tmp/test_store.XXXXXX";

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

static char *test_dir(const char *name)
{
	char *p;

	if (asprintf(&p, "%s/%s", root, name) < 0)
		abort();
	return p;
}

static sqlite3 *raw_open(const char *dir)
{
	char path[4096];
	sqlite3 *db = NULL;

	snprintf(path, sizeof(path), "%s/cache.db", dir);
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) !=
	    SQLITE_OK) {
		fprintf(stderr, "cannot open %s\n", path);
		exit(1);
	}
	sqlite3_busy_timeout(db, 5000);
	return db;
}

/* first column of the first row of @sql, -1 for no row */
static long long raw_int(sqlite3 *db, const char *sql, long long arg)
{
	sqlite3_stmt *st;
	long long v = -1;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
		fprintf(stderr, "%s: %s\n", sql, sqlite3_errmsg(db));
		exit(1);
	}
	if (sqlite3_bind_parameter_count(st))
		sqlite3_bind_int64(st, 1, arg);
	if (sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return v;
}

static int raw_exec(sqlite3 *db, const char *sql)
{
	return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

static unsigned mode_of(const char *dir, const char *name)
{
	struct stat st;
	char *path;
	int rc;

	if (asprintf(&path, "%s%s%s", dir, *name ? "/" : "", name) < 0)
		abort();
	rc = stat(path, &st);
	free(path);
	if (rc)
		return 07777; /* never a wanted mode */
	return st.st_mode & 07777;
}

static int64_t add_folder(struct store *s, const char *name)
{
	struct store_folder f = { .name = (char *)name,
				  .display = (char *)name,
				  .delim = '/' };
	int64_t id = -1;

	if (store_folder_put(s, &f, &id))
		return -1;
	return id;
}

static int put_msg(struct store *s, int64_t folder, uint32_t uid,
		   const char *flags, int64_t *umid)
{
	char subject[64], mid[64];
	struct store_msg m = { .folder = folder,
			       .uid = uid,
			       .flags = (char *)flags,
			       .date = 1700000000 + uid,
			       .zone = 60,
			       .size = 1000 + uid };
	int rc;

	snprintf(subject, sizeof(subject), "subject %u", uid);
	snprintf(mid, sizeof(mid), "<%u.%lld@example.org>", uid,
		 (long long)folder);
	m.subject = subject;
	m.message_id = mid;
	rc = store_msg_put(s, &m);
	if (!rc && umid)
		*umid = m.umid;
	return rc;
}

/* the message put_msg(s, @folder, @uid) made, as found in @to at @new_uid */
static void same_msg(struct store_msg *m, char *mid, size_t len,
		     int64_t folder, uint32_t uid, int64_t to, uint32_t new_uid)
{
	memset(m, 0, sizeof(*m));
	snprintf(mid, len, "<%u.%lld@example.org>", uid, (long long)folder);
	m->folder = to;
	m->uid = new_uid;
	m->flags = (char *)"\\Flagged";
	m->date = 1700000000 + uid;
	m->zone = 60;
	m->size = 1000 + uid;
	m->message_id = mid;
}

static void note_purged(const struct store_msg *m, void *aux)
{
	*(int64_t *)aux = m->umid;
}

/*
 * Identities that survive: an orphan is hidden and found again by
 * Message-ID + INTERNALDATE + size (keeping its umid), a message that
 * went where a new row was stored first takes that row's place, and
 * orphans nobody adopted are purged.
 */
static int test_orphans(void)
{
	char *dir = test_dir("orphans");
	struct store_msg m, got;
	struct store *s;
	int64_t inbox, arch, a, b, c, nc, twin, since;
	uint64_t count;
	size_t purged;
	char mid[64];

	CHECK_RC(store_open(dir, &s), 0);
	inbox = add_folder(s, "INBOX");
	arch = add_folder(s, "Archive");
	CHECK_RC(put_msg(s, inbox, 1, "\\Seen", &a), 0);
	CHECK_RC(put_msg(s, inbox, 2, "", &b), 0);
	CHECK_RC(put_msg(s, inbox, 3, "", &c), 0);

	/* a leaves INBOX: hidden from listings and counts, row kept */
	CHECK_RC(store_msg_orphan(s, a), 0);
	CHECK_RC(store_msg_get(s, a, &got), 0);
	CHECK(got.uid == 0);
	store_msg_release(&got);
	CHECK_RC(store_folder_count(s, inbox, &count), 0);
	CHECK(count == 2);
	/* found in Archive: it takes a's umid, with the new flags */
	same_msg(&m, mid, sizeof(mid), inbox, 1, arch, 7);
	CHECK_RC(store_msg_adopt(s, &m), 0);
	CHECK(m.umid == a);
	CHECK_RC(store_msg_get(s, a, &got), 0);
	CHECK(got.folder == arch && got.uid == 7);
	CHECK(!strcmp(got.flags, "\\Flagged"));
	store_msg_release(&got);
	/* nothing else is adopted by it */
	CHECK_RC(store_msg_adopt(s, &m), -ENOENT);

	/* another Message-ID with the same date and size is not b */
	CHECK_RC(store_msg_orphan(s, b), 0);
	same_msg(&m, mid, sizeof(mid), inbox, 2, arch, 8);
	mid[1] = 'x';
	CHECK_RC(store_msg_adopt(s, &m), -ENOENT);

	/* c is found in Archive first, stored as a new row; when c then
	 * vanishes from INBOX, c takes that row's place */
	CHECK_RC(store_msg_max_umid(s, &since), 0);
	same_msg(&m, mid, sizeof(mid), inbox, 3, arch, 9);
	CHECK_RC(store_msg_put(s, &m), 0);
	nc = m.umid;
	CHECK(nc > since);
	CHECK_RC(store_msg_get(s, c, &got), 0);
	CHECK_RC(store_msg_find_twin(s, since, &got, &twin), 0);
	CHECK(twin == nc);
	store_msg_release(&got);
	CHECK_RC(store_msg_take_place(s, c, nc), 0);
	CHECK_RC(store_msg_get(s, c, &got), 0);
	CHECK(got.folder == arch && got.uid == 9);
	CHECK(!strcmp(got.flags, "\\Flagged"));
	store_msg_release(&got);
	CHECK_RC(store_msg_get(s, nc, &got), -ENOENT);
	CHECK_RC(store_folder_count(s, arch, &count), 0);
	CHECK(count == 2);

	/* b was never found again: purged */
	twin = 0;
	CHECK_RC(store_folder_purge_orphans(s, inbox, note_purged, &twin,
					    &purged), 0);
	CHECK(purged == 1 && twin == b);
	CHECK_RC(store_msg_get(s, b, &got), -ENOENT);
	store_close(s);
	free(dir);
	return 0;
}

static int write_body(struct store *s, int64_t umid, const void *buf,
		      size_t len)
{
	struct store_body_writer *w;
	int rc;

	rc = store_body_begin(s, umid, &w);
	if (rc)
		return rc;
	rc = store_body_append(w, buf, len);
	if (rc) {
		store_body_abort(w);
		return rc;
	}
	return store_body_commit(w);
}

/* the whole cached body of @umid, or NULL */
static char *read_body(struct store *s, int64_t umid, size_t *len)
{
	size_t cap = 4096, n = 0;
	char *buf;
	ssize_t r;
	int fd;

	fd = store_body_open(s, umid);
	if (fd < 0)
		return NULL;
	buf = malloc(cap);
	while ((r = read(fd, buf + n, cap - n)) > 0) {
		n += (size_t)r;
		if (n == cap)
			buf = realloc(buf, cap *= 2);
	}
	close(fd);
	*len = n;
	return buf;
}

/* number of entries of @dir whose name starts with @prefix */
static int count_prefix(const char *dir, const char *prefix)
{
	struct dirent *e;
	DIR *d = opendir(dir);
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (!strncmp(e->d_name, prefix, strlen(prefix)))
			n++;
	closedir(d);
	return n;
}

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* ---- tests ---- */

static const char *const tables[] = {
	"folders",    "flagsets", "conversations", "messages",
	"header_ids", "ops",	  "bodies",	   "skipped",
};

static int test_migrate(void)
{
	char *dir = test_dir("migrate/a/b");
	struct store *s;
	struct store_folder f;
	sqlite3 *db;
	long long v;
	int64_t id;
	size_t i;

	/* from nothing, through directories that do not exist yet */
	CHECK_RC(store_open(dir, &s), 0);
	id = add_folder(s, "INBOX");
	CHECK(id > 0);
	db = raw_open(dir);
	v = raw_int(db, "PRAGMA user_version", 0);
	CHECK(v >= 1);
	for (i = 0; i < sizeof(tables) / sizeof(tables[0]); i++) {
		sqlite3_stmt *st;

		CHECK(sqlite3_prepare_v2(db,
					 "SELECT 1 FROM sqlite_master WHERE "
					 "type = 'table' AND name = ?",
					 -1, &st, NULL) == SQLITE_OK);
		sqlite3_bind_text(st, 1, tables[i], -1, SQLITE_STATIC);
		if (sqlite3_step(st) != SQLITE_ROW) {
			fprintf(stderr, "table %s missing\n", tables[i]);
			sqlite3_finalize(st);
			return 1;
		}
		sqlite3_finalize(st);
	}
	{
		sqlite3_stmt *st;

		sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL);
		CHECK(sqlite3_step(st) == SQLITE_ROW);
		CHECK(!strcmp((const char *)sqlite3_column_text(st, 0), "wal"));
		sqlite3_finalize(st);
	}
	/* one unsent op of a kind per message; sent ones do not count */
	CHECK(raw_exec(db, "INSERT INTO ops (kind, umid, dst) "
			   "VALUES ('move', 5000, 1)") == SQLITE_OK);
	CHECK((raw_exec(db, "INSERT INTO ops (kind, umid, dst) "
			    "VALUES ('move', 5000, 2)") &
	       0xff) == SQLITE_CONSTRAINT);
	CHECK(raw_exec(db, "INSERT INTO ops (kind, umid, dst, sent) "
			   "VALUES ('move', 5000, 2, 1)") == SQLITE_OK);
	CHECK(raw_exec(db, "INSERT INTO ops (kind, umid, base) "
			   "VALUES ('flags', 5000, '\\Seen')") == SQLITE_OK);
	CHECK(raw_exec(db, "DELETE FROM ops") == SQLITE_OK);
	store_close(s);

	/* reopen: same version, data kept, nothing migrated twice */
	CHECK_RC(store_open(dir, &s), 0);
	CHECK(raw_int(db, "PRAGMA user_version", 0) == v);
	CHECK_RC(store_folder_get(s, id, &f), 0);
	CHECK(!strcmp(f.name, "INBOX"));
	store_folder_release(&f);
	store_close(s);

	/* a schema newer than the program is refused, not clobbered */
	CHECK(raw_exec(db, "PRAGMA user_version = 999") == SQLITE_OK);
	fprintf(stderr, "(an error about schema version 999 is expected)\n");
	CHECK_RC(store_open(dir, &s), -EPROTO);
	CHECK(raw_int(db, "PRAGMA user_version", 0) == 999);
	CHECK(raw_exec(db, "PRAGMA user_version = 1") == SQLITE_OK);
	sqlite3_close(db);

	/* an empty file is an empty database, not a corrupt one */
	free(dir);
	dir = test_dir("migrate-empty");
	CHECK(mkdir(dir, 0700) == 0);
	{
		char path[4096];
		int fd;

		snprintf(path, sizeof(path), "%s/cache.db", dir);
		fd = open(path, O_CREAT | O_WRONLY, 0600);
		CHECK(fd >= 0);
		close(fd);
	}
	CHECK_RC(store_open(dir, &s), 0);
	CHECK(add_folder(s, "INBOX") > 0);
	store_close(s);
	CHECK(count_prefix(dir, "cache.db.corrupt") == 0);
	free(dir);
	return 0;
}

/* several processes create the same store at once: one migration each */
static int test_concurrent_open(void)
{
	char *dir = test_dir("concurrent-open");
	int go[2], i, status, nchild = 6;
	pid_t pids[6];
	struct store *s;
	sqlite3 *db;

	CHECK(pipe(go) == 0);
	for (i = 0; i < nchild; i++) {
		pids[i] = fork();
		CHECK(pids[i] >= 0);
		if (pids[i] == 0) {
			char c;
			int rc;

			close(go[1]);
			if (read(go[0], &c, 1) < 0)
				_exit(2);
			rc = store_open(dir, &s);
			if (!rc)
				rc = add_folder(s, "INBOX") > 0 ? 0 : 1;
			store_close(s);
			_exit(rc ? 1 : 0);
		}
	}
	close(go[0]);
	close(go[1]); /* every child's read returns at once */
	for (i = 0; i < nchild; i++) {
		CHECK(waitpid(pids[i], &status, 0) == pids[i]);
		if (!WIFEXITED(status) || WEXITSTATUS(status))
			fprintf(stderr, "child status %#x\n", status);
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	}
	db = raw_open(dir);
	CHECK(raw_int(db, "PRAGMA user_version", 0) >= 1);
	CHECK(raw_int(db, "SELECT count(*) FROM folders", 0) == 1);
	sqlite3_close(db);
	free(dir);
	return 0;
}

static int test_modes(void)
{
	char *dir = test_dir("modes"), sub[4096];
	static const char body[] = "Subject: x\r\n\r\nbody\r\n";
	struct store *s;
	int64_t umid = 0;

	/* umask is 0 in main(): SQLite's and mkdir's defaults would show */
	CHECK(mkdir(dir, 0755) == 0);
	CHECK_RC(store_open(dir, &s), 0);
	CHECK(put_msg(s, add_folder(s, "INBOX"), 1, "", &umid) == 0);
	CHECK(mode_of(dir, "") == 0700);
	CHECK(mode_of(dir, "cache.db") == 0600);
	CHECK(mode_of(dir, "cache.db-wal") == 0600);
	CHECK(mode_of(dir, "cache.db-shm") == 0600);
	CHECK(mode_of(dir, "bodies") == 0700);
	CHECK_RC(write_body(s, umid, body, sizeof(body) - 1), 0);
	snprintf(sub, sizeof(sub), "%s/bodies/%02x", dir,
		 (unsigned)(umid % 256));
	CHECK(mode_of(sub, "") == 0700);
	snprintf(sub, sizeof(sub), "bodies/%02x/%lld", (unsigned)(umid % 256),
		 (long long)umid);
	CHECK(mode_of(dir, sub) == 0600);
	store_close(s);

	/* a database left with loose modes is tightened */
	snprintf(sub, sizeof(sub), "%s/cache.db", dir);
	CHECK(chmod(sub, 0644) == 0);
	CHECK(chmod(dir, 0755) == 0);
	CHECK_RC(store_open(dir, &s), 0);
	CHECK(mode_of(dir, "") == 0700);
	CHECK(mode_of(dir, "cache.db") == 0600);
	store_close(s);
	free(dir);
	return 0;
}

static const struct {
	const char *name, *display, *role;
	char delim;
	bool noselect;
} folder_cases[] = {
	{ "INBOX", "INBOX", NULL, '/', false },
	{ "Archive/2026", "Archive/2026", "Archive", '/', false },
	{ "Archive", "Archive", NULL, '/', true },
	{ "Entw&APw-rfe", "Entwürfe", "Drafts", '.', false },
	{ "Flat", "Flat", NULL, 0, false },
};

#define NFOLDER_CASES (sizeof(folder_cases) / sizeof(folder_cases[0]))

static int test_folders(void)
{
	char *dir = test_dir("folders");
	struct store_folder f, *list;
	int64_t ids[NFOLDER_CASES], id;
	struct store *s;
	uint64_t count;
	size_t i, n;

	CHECK_RC(store_open(dir, &s), 0);
	for (i = 0; i < NFOLDER_CASES; i++) {
		struct store_folder in = {
			.name = (char *)folder_cases[i].name,
			.display = (char *)folder_cases[i].display,
			.role = (char *)folder_cases[i].role,
			.delim = folder_cases[i].delim,
			.noselect = folder_cases[i].noselect,
		};

		CHECK_RC(store_folder_put(s, &in, &ids[i]), 0);
		CHECK(ids[i] > 0);
	}
	for (i = 0; i < NFOLDER_CASES; i++) {
		CHECK_RC(store_folder_get(s, ids[i], &f), 0);
		CHECK(f.id == ids[i]);
		CHECK(!strcmp(f.name, folder_cases[i].name));
		CHECK(!strcmp(f.display, folder_cases[i].display));
		CHECK(f.delim == folder_cases[i].delim);
		CHECK(f.noselect == folder_cases[i].noselect);
		CHECK(folder_cases[i].role ?
			      f.role && !strcmp(f.role, folder_cases[i].role) :
			      !f.role);
		CHECK(f.uidvalidity == 0 && f.uidnext == 0 && f.low_uid == 0 &&
		      f.complete_since == 0);
		store_folder_release(&f);
	}

	/* the bookmark, then a LIST that changes attributes: state kept */
	{
		struct store_folder b = { .id = ids[0],
					  .uidvalidity = 1234567,
					  .uidnext = 501,
					  .low_uid = 1,
					  .highestmodseq = (uint64_t)1 << 40,
					  .complete_since = 1700000000 };

		CHECK_RC(store_folder_set_sync(s, &b), 0);
	}
	{
		struct store_folder in = { .name = (char *)"INBOX",
					   .display = (char *)"Inbox",
					   .role = (char *)"Inbox",
					   .delim = '.' };

		CHECK_RC(store_folder_put(s, &in, &id), 0);
		CHECK(id == ids[0]);
	}
	CHECK_RC(store_folder_get(s, ids[0], &f), 0);
	CHECK(!strcmp(f.display, "Inbox") && f.delim == '.');
	CHECK(f.role && !strcmp(f.role, "Inbox"));
	CHECK(f.uidvalidity == 1234567 && f.uidnext == 501 && f.low_uid == 1);
	CHECK(f.highestmodseq == (uint64_t)1 << 40);
	CHECK(f.complete_since == 1700000000);
	CHECK(f.last_refresh > 0);
	store_folder_release(&f);

	/* list: every folder once, ordered by name */
	CHECK_RC(store_folder_list(s, &list, &n), 0);
	CHECK(n == NFOLDER_CASES);
	for (i = 1; i < n; i++)
		CHECK(strcmp(list[i - 1].name, list[i].name) < 0);
	store_folder_list_free(list, n);

	CHECK_RC(store_folder_get(s, 999999, &f), -ENOENT);
	{
		struct store_folder b = { .id = 999999, .uidvalidity = 1,
					  .uidnext = 1, .low_uid = 1,
					  .highestmodseq = 1 };

		CHECK_RC(store_folder_set_sync(s, &b), -ENOENT);
	}
	CHECK_RC(store_folder_count(s, ids[0], &count), 0);
	CHECK(count == 0);
	CHECK(put_msg(s, ids[0], 7, "", NULL) == 0);
	CHECK_RC(store_folder_count(s, ids[0], &count), 0);
	CHECK(count == 1);
	store_close(s);
	free(dir);
	return 0;
}

static const struct {
	uint32_t uid;
	const char *flags, *stored;
} msg_cases[] = {
	{ 1, "", "" },
	{ 2, "\\Seen", "\\Seen" },
	{ 3, "\\Seen \\Answered", "\\Answered \\Seen" },
	{ 4, "$Label1 \\Flagged $Label1", "$Label1 \\Flagged" },
	{ 5, NULL, "" },
};

#define NMSG_CASES (sizeof(msg_cases) / sizeof(msg_cases[0]))

static int test_messages(void)
{
	char *dir = test_dir("messages");
	int64_t folder, umids[NMSG_CASES], umid;
	struct store_msg m;
	struct store *s;
	size_t i;

	CHECK_RC(store_open(dir, &s), 0);
	folder = add_folder(s, "INBOX");
	for (i = 0; i < NMSG_CASES; i++) {
		CHECK_RC(put_msg(s, folder, msg_cases[i].uid,
				 msg_cases[i].flags, &umids[i]),
			 0);
		CHECK(umids[i] >= STORE_FIRST_UMID);
		CHECK(i == 0 ? umids[i] == STORE_FIRST_UMID :
			       umids[i] > umids[i - 1]);
	}
	for (i = 0; i < NMSG_CASES; i++) {
		CHECK_RC(store_msg_get(s, umids[i], &m), 0);
		CHECK(m.umid == umids[i] && m.folder == folder);
		CHECK(m.uid == msg_cases[i].uid);
		CHECK(!strcmp(m.flags, msg_cases[i].stored));
		CHECK(m.date == 1700000000 + msg_cases[i].uid && m.zone == 60);
		CHECK(m.size == 1000 + msg_cases[i].uid);
		CHECK(m.subject && !strncmp(m.subject, "subject ", 8));
		CHECK(m.message_id && m.message_id[0] == '<');
		CHECK(!m.from && !m.references && !m.in_reply_to && !m.conv);
		store_msg_release(&m);
		CHECK_RC(store_msg_find_uid(s, folder, msg_cases[i].uid, &umid),
			 0);
		CHECK(umid == umids[i]);
	}

	/* re-put: flags change, umid and everything else stay */
	{
		struct store_msg again = { .folder = folder,
					   .uid = 2,
					   .flags = (char *)"\\Seen \\Flagged",
					   .subject = (char *)"changed",
					   .size = 1 };

		CHECK_RC(store_msg_put(s, &again), 0);
		CHECK(again.umid == umids[1]);
	}
	CHECK_RC(store_msg_get(s, umids[1], &m), 0);
	CHECK(!strcmp(m.flags, "\\Flagged \\Seen"));
	CHECK(!strcmp(m.subject, "subject 2") && m.size == 1002);
	store_msg_release(&m);

	CHECK_RC(store_msg_get(s, 5, &m), -ENOENT);
	CHECK_RC(store_msg_find_uid(s, folder, 999, &umid), -ENOENT);
	/* a message needs its folder */
	fprintf(stderr, "(an error about a foreign key is expected)\n");
	CHECK(put_msg(s, 999999, 1, "", NULL) < 0);
	store_close(s);
	free(dir);
	return 0;
}

static int test_flagsets(void)
{
	char *dir = test_dir("flagsets");
	struct store *s;
	int64_t folder, a, b;
	sqlite3 *db;
	static const char *const refs_sql =
		"SELECT refs FROM flagsets WHERE flags = '\\Seen'";
	static const char *const fl_sql =
		"SELECT refs FROM flagsets WHERE flags = '\\Flagged \\Seen'";

	CHECK_RC(store_open(dir, &s), 0);
	db = raw_open(dir);
	folder = add_folder(s, "INBOX");
	CHECK_RC(put_msg(s, folder, 1, "\\Seen", &a), 0);
	CHECK_RC(put_msg(s, folder, 2, "\\Seen", &b), 0);
	CHECK(raw_int(db,
		      "SELECT count(*) FROM flagsets "
		      "WHERE flags = '\\Seen'",
		      0) == 1);
	CHECK(raw_int(db, refs_sql, 0) == 2);
	/* the same flags again change nothing */
	CHECK_RC(put_msg(s, folder, 1, "\\Seen", NULL), 0);
	CHECK(raw_int(db, refs_sql, 0) == 2);
	/* a flag change moves one reference */
	CHECK_RC(put_msg(s, folder, 1, "\\Seen \\Flagged", NULL), 0);
	CHECK(raw_int(db, refs_sql, 0) == 1);
	CHECK(raw_int(db, fl_sql, 0) == 1);
	CHECK_RC(put_msg(s, folder, 2, "\\Flagged \\Seen", NULL), 0);
	CHECK(raw_int(db, fl_sql, 0) == 2);
	CHECK(raw_int(db, refs_sql, 0) <= 0); /* gone, or 0 */
	/* refs always equal the messages pointing at a set */
	CHECK(raw_int(db,
		      "SELECT count(*) FROM flagsets f WHERE refs != "
		      "(SELECT count(*) FROM messages m "
		      "WHERE m.flagset = f.id) AND refs > 0",
		      0) == 0);
	CHECK_RC(store_msg_delete(s, a), 0);
	CHECK(raw_int(db, fl_sql, 0) == 1);
	CHECK_RC(store_msg_delete(s, b), 0);
	CHECK(raw_int(db, fl_sql, 0) <= 0);
	CHECK(raw_int(db, "SELECT count(*) FROM flagsets WHERE refs > 0", 0) ==
	      0);
	/* deleting what is gone is fine */
	CHECK_RC(store_msg_delete(s, b), 0);
	sqlite3_close(db);
	store_close(s);
	free(dir);
	return 0;
}

/* one transaction: a flag set that goes with its last message is made
 * again when a later message takes it, never pointed at while gone */
static int test_flagsets_in_tx(void)
{
	char *dir = test_dir("flagsets-tx");
	struct store *s;
	int64_t folder, a, b;
	sqlite3 *db;

	CHECK_RC(store_open(dir, &s), 0);
	db = raw_open(dir);
	folder = add_folder(s, "INBOX");
	CHECK_RC(store_begin(s), 0);
	CHECK_RC(put_msg(s, folder, 1, "$Once", &a), 0);
	CHECK_RC(put_msg(s, folder, 1, "\\Seen", NULL), 0);
	CHECK_RC(put_msg(s, folder, 2, "$Once", &b), 0);
	CHECK_RC(put_msg(s, folder, 3, "$Once", NULL), 0);
	CHECK_RC(store_msg_delete(s, b), 0);
	CHECK_RC(put_msg(s, folder, 4, "$Once", NULL), 0);
	CHECK_RC(store_commit(s), 0);
	CHECK(raw_int(db,
		      "SELECT refs FROM flagsets WHERE flags = '$Once'", 0) ==
	      2);
	CHECK(raw_int(db,
		      "SELECT count(*) FROM messages m WHERE NOT EXISTS "
		      "(SELECT 1 FROM flagsets f WHERE f.id = m.flagset)",
		      0) == 0);
	CHECK(raw_int(db,
		      "SELECT count(*) FROM flagsets f WHERE refs != "
		      "(SELECT count(*) FROM messages m "
		      "WHERE m.flagset = f.id) AND refs > 0",
		      0) == 0);
	(void)a;
	sqlite3_close(db);
	store_close(s);
	free(dir);
	return 0;
}

/*
 * A database of schema version 2, made from a current one by putting
 * back what version 3 took away (the insert triggers as version 2 wrote
 * them, the Message-ID index, the References kept on threaded rows),
 * migrates to version 3 with its counts and ids intact.
 */
#define V2_CONV_FIRST                                                   \
	"(count = 0 OR (new.date, coalesce(new.message_id, ''), new.umid)" \
	" < (first_date, coalesce(first_message_id, ''), first_umid))"

static const char v2_schema[] =
	/* what version 8 added */
	"DROP TABLE skipped;"
	/* what version 4 added */
	"DROP INDEX messages_orphans;"
	"ALTER TABLE messages DROP COLUMN emailid;"
	"ALTER TABLE messages DROP COLUMN real_size;"
	"ALTER TABLE folders DROP COLUMN mailboxid;"
	"DROP INDEX IF EXISTS messages_message_id;"
	"CREATE INDEX messages_message_id ON messages (message_id);"
	"CREATE TRIGGER messages_flagset_insert AFTER INSERT ON messages "
	"BEGIN"
	"  UPDATE flagsets SET refs = refs + 1 WHERE id = new.flagset;"
	"END;"
	"CREATE TRIGGER messages_conv_insert AFTER INSERT ON messages "
	"WHEN new.conv IS NOT NULL "
	"BEGIN"
	"  UPDATE conversations SET"
	"    count = count + 1,"
	"    last_date = iif(count = 0, new.date, max(last_date, new.date)),"
	"    subject = iif(" V2_CONV_FIRST ", new.subject, subject),"
	"    first_date = iif(" V2_CONV_FIRST ", new.date, first_date),"
	"    first_zone = iif(" V2_CONV_FIRST ", new.zone, first_zone),"
	"    first_umid = iif(" V2_CONV_FIRST ", new.umid, first_umid),"
	"    first_message_id = iif(" V2_CONV_FIRST ", new.message_id,"
	"      first_message_id)"
	"  WHERE id = new.conv;"
	"END;"
	"UPDATE messages SET refs = '<root@v2>', in_reply_to = '<root@v2>' "
	"WHERE conv IS NOT NULL;"
	"PRAGMA user_version = 2;";

static int test_migrate_v2(void)
{
	char *dir = test_dir("migrate-v2");
	struct store_msg m = { 0 };
	struct store_conv c;
	struct store *s;
	int64_t folder, conv, lone;
	sqlite3 *db;

	CHECK_RC(store_open(dir, &s), 0);
	folder = add_folder(s, "INBOX");
	CHECK_RC(store_conv_new(s, &conv), 0);
	m.folder = folder;
	m.flags = (char *)"\\Seen";
	m.conv = conv;
	m.uid = 1;
	m.date = 200;
	m.subject = (char *)"first";
	m.message_id = (char *)"<root@v2>";
	CHECK_RC(store_msg_put(s, &m), 0);
	/* one left unthreaded, as version 1 left every message */
	CHECK_RC(put_msg(s, folder, 2, "\\Seen", &lone), 0);
	store_close(s);

	db = raw_open(dir);
	CHECK(raw_exec(db, v2_schema) == SQLITE_OK);
	/* a version 2 insert: its triggers count the row */
	CHECK(raw_exec(db,
		       "INSERT INTO messages (folder, uid, conv, flagset, date, "
		       "message_id, subject, refs, in_reply_to) "
		       "SELECT folder, 3, conv, flagset, 100, '<reply@v2>', "
		       "'earlier', '<root@v2>', '<root@v2>' FROM messages "
		       "WHERE uid = 1") == SQLITE_OK);
	CHECK(raw_exec(db, "UPDATE messages SET refs = '<x@v2>' "
			   "WHERE conv IS NULL") == SQLITE_OK);
	CHECK(raw_int(db, "SELECT count FROM conversations WHERE id = ?",
		      conv) == 2);
	CHECK(raw_int(db, "SELECT refs FROM flagsets WHERE flags = '\\Seen'",
		      0) == 3);
	CHECK(raw_int(db, "PRAGMA user_version", 0) == 2);

	CHECK_RC(store_open(dir, &s), 0);
	CHECK(raw_int(db, "PRAGMA user_version", 0) == 8);
	CHECK(raw_int(db,
		      "SELECT count(*) FROM sqlite_master WHERE name IN "
		      "('messages_flagset_insert', 'messages_conv_insert', "
		      "'messages_message_id')",
		      0) == 0);
	/* the triggers of attach and delete stay */
	CHECK(raw_int(db,
		      "SELECT count(*) FROM sqlite_master WHERE name IN "
		      "('messages_conv_set', 'messages_conv_delete', "
		      "'messages_flagset_update', 'messages_flagset_delete')",
		      0) == 4);
	/* threaded rows lose References and In-Reply-To, the rest keep
	 * them for the threader */
	CHECK(raw_int(db,
		      "SELECT count(*) FROM messages WHERE conv IS NOT NULL "
		      "AND (refs IS NOT NULL OR in_reply_to IS NOT NULL)",
		      0) == 0);
	CHECK(raw_int(db, "SELECT count(*) FROM messages WHERE umid = ? "
			  "AND refs = '<x@v2>'",
		      lone) == 1);
	CHECK_RC(store_conv_get(s, conv, &c), 0);
	CHECK(c.count == 2 && c.first_date == 100 && c.last_date == 200);
	CHECK(c.subject && !strcmp(c.subject, "earlier"));
	store_conv_release(&c);

	/* counted once after the migration, not by a trigger as well */
	memset(&m, 0, sizeof(m));
	m.folder = folder;
	m.flags = (char *)"\\Seen";
	m.conv = conv;
	m.uid = 4;
	m.date = 300;
	m.subject = (char *)"later";
	m.message_id = (char *)"<later@v2>";
	m.references = (char *)"<root@v2>";
	CHECK_RC(store_msg_put(s, &m), 0);
	CHECK(m.conv == conv);
	CHECK_RC(store_conv_get(s, conv, &c), 0);
	CHECK(c.count == 3 && c.first_date == 100 && c.last_date == 300);
	store_conv_release(&c);
	CHECK(raw_int(db, "SELECT refs FROM flagsets WHERE flags = '\\Seen'",
		      0) == 4);
	CHECK(raw_int(db, "SELECT count(*) FROM messages WHERE umid = ? "
			  "AND refs IS NULL",
		      m.umid) == 1);
	CHECK_RC(store_conv_attach(s, conv, lone), 0);
	CHECK(raw_int(db, "SELECT count(*) FROM messages WHERE umid = ? "
			  "AND refs IS NULL AND in_reply_to IS NULL",
		      lone) == 1);
	CHECK_RC(store_conv_get(s, conv, &c), 0);
	CHECK(c.count == 4);
	store_conv_release(&c);
	store_close(s);
	sqlite3_close(db);
	free(dir);
	return 0;
}

/*
 * Version 4 had complete_since (made by version 1) but never wrote it:
 * whatever a row holds, version 5 starts it at 0, nothing known by
 * date, and the bookmark then writes it with the rest.
 */
static int test_migrate_v4(void)
{
	char *dir = test_dir("migrate-v4");
	struct store_folder f;
	struct store *s;
	int64_t a, b;
	sqlite3 *db;

	CHECK_RC(store_open(dir, &s), 0);
	a = add_folder(s, "INBOX");
	b = add_folder(s, "Archive");
	store_close(s);
	db = raw_open(dir);
	CHECK(raw_exec(db, "UPDATE folders SET complete_since = NULL, "
			   "uidnext = 900, low_uid = 400;"
			   "UPDATE folders SET complete_since = 12345 "
			   "WHERE name = 'Archive';"
			   "ALTER TABLE messages DROP COLUMN real_size;"
			   "DROP TABLE skipped;"
			   "PRAGMA user_version = 4;") == SQLITE_OK);
	CHECK_RC(store_open(dir, &s), 0);
	CHECK(raw_int(db, "PRAGMA user_version", 0) == 8);
	CHECK(raw_int(db, "SELECT count(*) FROM folders WHERE "
			  "complete_since IS NOT 0",
		      0) == 0);
	CHECK_RC(store_folder_get(s, b, &f), 0);
	CHECK(f.complete_since == 0 && f.low_uid == 400 && f.uidnext == 900);
	f.complete_since = 1600000000;
	CHECK_RC(store_folder_set_sync(s, &f), 0);
	store_folder_release(&f);
	CHECK_RC(store_folder_get(s, b, &f), 0);
	CHECK(f.complete_since == 1600000000);
	store_folder_release(&f);
	/* a NULL left by anything else reads as 0 */
	CHECK(raw_exec(db, "UPDATE folders SET complete_since = NULL "
			   "WHERE name = 'INBOX'") == SQLITE_OK);
	CHECK_RC(store_folder_get(s, a, &f), 0);
	CHECK(f.complete_since == 0);
	store_folder_release(&f);
	store_close(s);
	sqlite3_close(db);
	free(dir);
	return 0;
}

static int test_umid_not_reused(void)
{
	char *dir = test_dir("umids");
	int64_t folder, a, b, c, d;
	struct store *s;

	CHECK_RC(store_open(dir, &s), 0);
	folder = add_folder(s, "INBOX");
	CHECK_RC(put_msg(s, folder, 1, "", &a), 0);
	CHECK_RC(put_msg(s, folder, 2, "", &b), 0);
	CHECK(b > a);
	CHECK_RC(store_msg_delete(s, b), 0);
	/* same folder and uid again: still a new umid */
	CHECK_RC(put_msg(s, folder, 2, "", &c), 0);
	CHECK(c > b);
	CHECK_RC(store_msg_delete(s, c), 0);
	store_close(s);
	CHECK_RC(store_open(dir, &s), 0);
	CHECK_RC(put_msg(s, folder, 3, "", &d), 0);
	CHECK(d > c);
	store_close(s);
	free(dir);
	return 0;
}

/* a refresh of flags, however often, spends no umid */
static int test_set_flags(void)
{
	char *dir = test_dir("setflags");
	int64_t folder, a, b;
	struct store_msg m = { 0 }, got;
	struct store *s;

	CHECK_RC(store_open(dir, &s), 0);
	folder = add_folder(s, "INBOX");
	CHECK_RC(put_msg(s, folder, 1, "", &a), 0);
	for (int i = 0; i < 5; i++) {
		m.folder = folder;
		m.uid = 1;
		m.flags = (char *)(i % 2 ? "\\Seen" : "\\Flagged \\Seen");
		bool changed = false;

		CHECK_RC(store_msg_set_flags(s, &m, &changed), 0);
		CHECK(m.umid == a);
		/* the first call changes "" to "\Flagged \Seen", then
		 * each call flips between the two */
		CHECK(changed);
	}
	CHECK_RC(store_msg_get(s, a, &got), 0);
	CHECK(!strcmp(got.flags, "\\Flagged \\Seen"));
	store_msg_release(&got);
	CHECK_RC(put_msg(s, folder, 2, "", &b), 0);
	CHECK(b == a + 1);
	store_close(s);
	free(dir);
	return 0;
}

/* the shown folder of each message listed in @folder, as a bitmask of
 * the umids a..a+7 (bit i: umid a + i is listed there) */
static unsigned listed(struct store *s, int64_t folder, int64_t a)
{
	struct store_msg v[16];
	unsigned bits = 0;
	size_t n = 0;

	if (store_msg_list(s, folder, 0, 16, v, &n))
		return ~0u;
	for (size_t i = 0; i < n; i++) {
		if (store_msg_shown_in(&v[i]) == folder &&
		    v[i].dest != STORE_DEST_EXPUNGE)
			bits |= 1u << (v[i].umid - a);
		store_msg_release(&v[i]);
	}
	return bits;
}

static int test_ops(void)
{
	char *dir = test_dir("ops");
	int64_t inbox, arch, trash, a, b, c, id;
	struct store_op op, *batch;
	struct store_msg m = { 0 }, got;
	struct store *s;
	uint64_t count;
	size_t n;

	CHECK_RC(store_open(dir, &s), 0);
	inbox = add_folder(s, "INBOX");
	arch = add_folder(s, "Archive");
	trash = add_folder(s, "Trash");
	CHECK_RC(put_msg(s, inbox, 1, "", &a), 0);
	CHECK_RC(put_msg(s, inbox, 2, "\\Seen", &b), 0);
	CHECK_RC(put_msg(s, inbox, 3, "", &c), 0);

	/* a move shows at once in the target, the row stays put */
	CHECK_RC(store_op_move(s, a, arch), 0);
	CHECK(listed(s, inbox, a) == 6);
	CHECK(listed(s, arch, a) == 1);
	CHECK_RC(store_msg_get(s, a, &got), 0);
	CHECK(got.folder == inbox && got.uid == 1 && got.dest == arch);
	store_msg_release(&got);
	/* moved again before it ran: one op, the final target */
	CHECK_RC(store_op_move(s, a, trash), 0);
	CHECK_RC(store_op_count(s, &count), 0);
	CHECK(count == 1);
	CHECK(listed(s, arch, a) == 0 && listed(s, trash, a) == 1);
	/* and back home: nothing left to do */
	CHECK_RC(store_op_move(s, a, inbox), 0);
	CHECK_RC(store_op_count(s, &count), 0);
	CHECK(count == 0);
	CHECK(listed(s, inbox, a) == 7);

	/* two moves of one pair run together; a sent one keeps its own
	 * target and a later move waits behind it */
	CHECK_RC(store_op_move(s, a, arch), 0);
	CHECK_RC(store_op_move(s, b, arch), 0);
	CHECK_RC(store_op_next(s, 0, &op), 0);
	CHECK(op.kind == STORE_OP_MOVE && op.umid == a && op.dst == arch);
	CHECK_RC(store_op_batch(s, &op, inbox, 100, &batch, &n), 0);
	CHECK(n == 2 && batch[0].umid == a && batch[1].umid == b);
	int64_t ids[2] = { batch[0].id, batch[1].id };

	CHECK_RC(store_op_mark_sent(s, ids, 2, 40), 0);
	for (size_t i = 0; i < n; i++)
		store_op_release(&batch[i]);
	free(batch);
	store_op_release(&op);
	CHECK_RC(store_op_move(s, a, inbox), 0); /* back, after the sent one */
	CHECK_RC(store_op_count(s, &count), 0);
	CHECK(count == 3);
	CHECK(listed(s, inbox, a) == 5 && listed(s, arch, a) == 2);
	/* the sent moves complete: b got UID 40, a's new UID is unknown */
	CHECK_RC(store_begin(s), 0);
	CHECK_RC(store_msg_relocate(s, b, arch, 40), 0);
	CHECK_RC(store_op_done(s, ids[1]), 0);
	CHECK_RC(store_msg_relocate(s, a, arch, 0), 0);
	CHECK_RC(store_op_done(s, ids[0]), 0);
	CHECK_RC(store_commit(s), 0);
	CHECK_RC(store_msg_get(s, b, &got), 0);
	CHECK(got.folder == arch && got.uid == 40 && got.dest == 0);
	store_msg_release(&got);
	CHECK_RC(store_msg_get(s, a, &got), 0);
	CHECK(got.folder == arch && got.uid == 0 && got.dest == inbox);
	store_msg_release(&got);

	/* flags: shown at once, a refresh does not undo them, the first
	 * op keeps what the server had */
	CHECK_RC(store_op_flags(s, c, "\\Flagged"), 0);
	CHECK_RC(store_op_flags(s, c, "\\Flagged \\Seen"), 0);
	m.folder = inbox;
	m.uid = 3;
	m.flags = (char *)"";
	CHECK_RC(store_msg_set_flags(s, &m, NULL), 0);
	CHECK_RC(store_msg_get(s, c, &got), 0);
	CHECK(!strcmp(got.flags, "\\Flagged \\Seen"));
	store_msg_release(&got);

	/* expunge hides; an empty folder goes, one that shows mail not */
	CHECK_RC(store_op_expunge(s, c), 0);
	CHECK(!(listed(s, inbox, a) & 4));
	CHECK_RC(store_op_delete(s, arch), -ENOTEMPTY);
	CHECK_RC(store_op_delete(s, trash), 0);
	CHECK_RC(store_folder_get(s, trash, &(struct store_folder){ 0 }),
		 -ENOENT);
	struct store_folder nf = { .name = (char *)"New", .display = (char *)"New",
				   .delim = '/' };
	bool pending;

	CHECK_RC(store_op_create(s, &nf, &id), 0);
	CHECK_RC(store_op_folder_pending(s, "New", &pending), 0);
	CHECK(pending);
	CHECK_RC(store_op_folder_pending(s, "Old", &pending), 0);
	CHECK(!pending);
	store_close(s);

	/* everything survives a reopen, in order */
	CHECK_RC(store_open(dir, &s), 0);
	const enum store_op_kind want[] = { STORE_OP_MOVE, STORE_OP_FLAGS,
					    STORE_OP_EXPUNGE, STORE_OP_DELETE,
					    STORE_OP_CREATE };
	int64_t after = 0;

	for (size_t i = 0; i < 5; i++) {
		CHECK_RC(store_op_next(s, after, &op), 0);
		CHECK(op.kind == want[i]);
		if (op.kind == STORE_OP_FLAGS)
			CHECK(op.base && !strcmp(op.base, ""));
		after = op.id;
		store_op_release(&op);
	}
	CHECK_RC(store_op_next(s, after, &op), -ENOENT);
	store_close(s);
	free(dir);
	return 0;
}

#define NPAGING 2500

static int test_list_paging(void)
{
	static const size_t pages[] = { 1, 7, 100, 1000, 2500, 5000 };
	char *dir = test_dir("paging");
	int64_t folder, other, umid;
	struct store_msg *buf;
	unsigned char *seen;
	struct store *s;
	size_t p, i, n, total;
	uint32_t uid;

	CHECK_RC(store_open(dir, &s), 0);
	folder = add_folder(s, "INBOX");
	other = add_folder(s, "Other");
	CHECK_RC(store_begin(s), 0);
	for (uid = 1; uid <= NPAGING; uid++) {
		CHECK_RC(put_msg(s, folder, uid, uid % 3 ? "\\Seen" : "", NULL),
			 0);
		/* interleaved, so the umids of INBOX have gaps */
		if (uid % 10 == 0)
			CHECK_RC(put_msg(s, other, uid, "", NULL), 0);
	}
	CHECK_RC(store_commit(s), 0);

	buf = calloc(5000, sizeof(*buf));
	seen = calloc(NPAGING + 1, 1);
	for (p = 0; p < sizeof(pages) / sizeof(pages[0]); p++) {
		int64_t after = 0;

		memset(seen, 0, NPAGING + 1);
		total = 0;
		for (;;) {
			CHECK_RC(store_msg_list(s, folder, after, pages[p], buf,
						&n),
				 0);
			CHECK(n <= pages[p]);
			for (i = 0; i < n; i++) {
				CHECK(buf[i].umid > after);
				CHECK(buf[i].folder == folder);
				CHECK(buf[i].uid >= 1 && buf[i].uid <= NPAGING);
				CHECK(!seen[buf[i].uid]);
				seen[buf[i].uid] = 1;
				CHECK(!strcmp(buf[i].flags,
					      buf[i].uid % 3 ? "\\Seen" : ""));
				after = buf[i].umid;
				store_msg_release(&buf[i]);
			}
			total += n;
			if (n < pages[p])
				break;
		}
		CHECK(total == NPAGING);
	}
	CHECK_RC(store_msg_list(s, folder, 0, 0, buf, &n), 0);
	CHECK(n == 0);
	CHECK_RC(store_msg_find_uid(s, folder, NPAGING, &umid), 0);
	CHECK_RC(store_msg_list(s, folder, umid, 10, buf, &n), 0);
	CHECK(n == 0);
	free(seen);
	free(buf);
	store_close(s);
	free(dir);
	return 0;
}

static int test_uids(void)
{
	static const uint32_t have[] = { 1, 2, 5, 10, 11, 4000000000u };
	static const struct {
		uint32_t lo, hi;
		size_t n;
		uint32_t want[6];
	} cases[] = {
		{ 1, 4294967295u, 6, { 1, 2, 5, 10, 11, 4000000000u } },
		{ 2, 10, 3, { 2, 5, 10 } },
		{ 3, 4, 0, { 0 } },
		{ 11, 11, 1, { 11 } },
		{ 12, 4294967295u, 1, { 4000000000u } },
		{ 10, 2, 0, { 0 } },
	};
	char *dir = test_dir("uids");
	int64_t folder, other;
	struct store *s;
	uint32_t *uids;
	size_t i, j, n;

	CHECK_RC(store_open(dir, &s), 0);
	folder = add_folder(s, "INBOX");
	other = add_folder(s, "Other");
	/* put out of order; the answer is ascending anyway */
	for (i = sizeof(have) / sizeof(have[0]); i-- > 0;)
		CHECK_RC(put_msg(s, folder, have[i], "", NULL), 0);
	CHECK_RC(put_msg(s, other, 3, "", NULL), 0);
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		CHECK_RC(store_msg_uids(s, folder, cases[i].lo, cases[i].hi,
					&uids, &n),
			 0);
		CHECK(n == cases[i].n);
		for (j = 0; j < n; j++)
			CHECK(uids[j] == cases[i].want[j]);
		free(uids);
	}
	store_close(s);
	free(dir);
	return 0;
}

static int test_skipped(void)
{
	char *dir = test_dir("skipped");
	struct store_skipped *v;
	int64_t inbox, other;
	struct store *s;
	sqlite3 *db;
	size_t n;

	CHECK_RC(store_open(dir, &s), 0);
	db = raw_open(dir);
	inbox = add_folder(s, "INBOX");
	other = add_folder(s, "Other");
	CHECK(raw_exec(db, "UPDATE folders SET uidvalidity = 7") == SQLITE_OK);
	CHECK_RC(store_skipped_add(s, inbox, 9, 7), 0);
	CHECK_RC(store_skipped_add(s, inbox, 9, 7), 0); /* again: kept once */
	CHECK_RC(store_skipped_add(s, inbox, 4294967295u, 7), 0);
	CHECK_RC(store_skipped_add(s, other, 3, 7), 0);
	/* seen under an older UIDVALIDITY: names another message now */
	CHECK_RC(store_skipped_add(s, other, 5, 6), 0);
	CHECK_RC(store_skipped_list(s, 10, &v, &n), 0);
	CHECK(n == 3);
	CHECK(v[0].folder == inbox && v[0].uid == 9);
	CHECK(v[1].folder == inbox && v[1].uid == 4294967295u);
	CHECK(v[2].folder == other && v[2].uid == 3);
	free(v);
	/* bounded */
	CHECK_RC(store_skipped_list(s, 1, &v, &n), 0);
	CHECK(n == 1 && v[0].uid == 9);
	free(v);
	CHECK_RC(store_skipped_clear(s, inbox), 0);
	CHECK_RC(store_skipped_list(s, 10, &v, &n), 0);
	CHECK(n == 1 && v[0].folder == other);
	free(v);
	/* a folder that goes takes its rows */
	CHECK_RC(store_folder_delete(s, other), 0);
	CHECK(raw_int(db, "SELECT count(*) FROM skipped", 0) == 0);
	sqlite3_close(db);
	store_close(s);
	free(dir);
	return 0;
}

static int test_folder_delete(void)
{
	char *dir = test_dir("folder-delete");
	int64_t inbox, trash, a, b, keep;
	struct store_folder f;
	struct store_msg m;
	struct store *s;
	sqlite3 *db;
	uint64_t n;

	CHECK_RC(store_open(dir, &s), 0);
	db = raw_open(dir);
	inbox = add_folder(s, "INBOX");
	trash = add_folder(s, "Trash");
	CHECK_RC(put_msg(s, inbox, 1, "$Only", &a), 0);
	CHECK_RC(put_msg(s, inbox, 2, "\\Seen", &b), 0);
	CHECK_RC(put_msg(s, trash, 1, "\\Seen", &keep), 0);
	CHECK_RC(write_body(s, a, "a", 1), 0);
	CHECK_RC(write_body(s, keep, "k", 1), 0);
	CHECK(store_body_cached(s, a));

	CHECK_RC(store_folder_delete(s, inbox), 0);
	CHECK_RC(store_folder_get(s, inbox, &f), -ENOENT);
	CHECK_RC(store_msg_get(s, a, &m), -ENOENT);
	CHECK_RC(store_msg_get(s, b, &m), -ENOENT);
	CHECK(!store_body_cached(s, a));
	CHECK(raw_int(db, "SELECT count(*) FROM bodies WHERE umid = ?", a) ==
	      0);
	CHECK(raw_int(db,
		      "SELECT count(*) FROM flagsets "
		      "WHERE flags = '$Only' AND refs > 0",
		      0) == 0);
	CHECK(raw_int(db, "SELECT refs FROM flagsets WHERE flags = '\\Seen'",
		      0) == 1);
	/* the other folder is untouched */
	CHECK_RC(store_msg_get(s, keep, &m), 0);
	store_msg_release(&m);
	CHECK(store_body_cached(s, keep));
	CHECK_RC(store_folder_count(s, trash, &n), 0);
	CHECK(n == 1);
	CHECK_RC(store_folder_delete(s, inbox), 0);
	sqlite3_close(db);
	store_close(s);
	free(dir);
	return 0;
}

static int test_bodies(void)
{
	static const size_t sizes[] = { 0, 1, 4096, 65537, 3 << 20 };
	char *dir = test_dir("bodies"), sub[4096];
	struct store_body_writer *w;
	struct store *s;
	size_t i, len;
	char *data, *got;
	int64_t folder, umid;

	CHECK_RC(store_open(dir, &s), 0);
	folder = add_folder(s, "INBOX");
	data = malloc(3 << 20);
	for (i = 0; i < (3 << 20); i++)
		data[i] = (char)(i * 7 + i / 251);

	/* exact bytes back, appended in uneven pieces */
	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		size_t off = 0, step = 1;

		CHECK_RC(put_msg(s, folder, (uint32_t)i + 1, "", &umid), 0);
		CHECK(!store_body_cached(s, umid));
		CHECK_RC(store_body_open(s, umid), -ENOENT);
		CHECK_RC(store_body_begin(s, umid, &w), 0);
		while (off < sizes[i]) {
			size_t n = step < sizes[i] - off ? step :
							   sizes[i] - off;

			CHECK_RC(store_body_append(w, data + off, n), 0);
			off += n;
			step = step * 3 + 1;
		}
		/* nothing shows until commit */
		CHECK(!store_body_cached(s, umid));
		CHECK_RC(store_body_open(s, umid), -ENOENT);
		CHECK_RC(store_body_commit(w), 0);
		CHECK(store_body_cached(s, umid));
		got = read_body(s, umid, &len);
		CHECK(got && len == sizes[i]);
		CHECK(!memcmp(got, data, len));
		free(got);
	}

	/* abort: not visible, no temporary file left */
	CHECK_RC(put_msg(s, folder, 100, "", &umid), 0);
	CHECK_RC(store_body_begin(s, umid, &w), 0);
	CHECK_RC(store_body_append(w, data, 1000), 0);
	store_body_abort(w);
	CHECK(!store_body_cached(s, umid));
	CHECK_RC(store_body_open(s, umid), -ENOENT);
	snprintf(sub, sizeof(sub), "%s/bodies/%02x", dir,
		 (unsigned)(umid % 256));
	CHECK(count_prefix(sub, ".tmp") == 0);

	/* rewrite: the old body is whole until the new one is committed */
	CHECK_RC(write_body(s, umid, "old body", 8), 0);
	CHECK_RC(store_body_begin(s, umid, &w), 0);
	CHECK_RC(store_body_append(w, "new", 3), 0);
	got = read_body(s, umid, &len);
	CHECK(got && len == 8 && !memcmp(got, "old body", 8));
	free(got);
	{
		/* a reader holding the old file keeps it whole */
		int fd = store_body_open(s, umid);
		char b[16];

		CHECK(fd >= 0);
		CHECK_RC(store_body_append(w, " body!", 6), 0);
		CHECK_RC(store_body_commit(w), 0);
		CHECK(pread(fd, b, sizeof(b), 0) == 8 &&
		      !memcmp(b, "old body", 8));
		close(fd);
	}
	got = read_body(s, umid, &len);
	CHECK(got && len == 9 && !memcmp(got, "new body!", 9));
	free(got);
	CHECK(count_prefix(sub, ".tmp") == 0);

	/* deleting the message drops its body */
	CHECK_RC(store_msg_delete(s, umid), 0);
	CHECK(!store_body_cached(s, umid));
	CHECK_RC(store_body_open(s, umid), -ENOENT);
	CHECK_RC(store_body_begin(s, -1, &w), -EINVAL);
	free(data);
	store_close(s);
	free(dir);
	return 0;
}

/* prefetch's path: bodies not cached listed newest first, writers begun
 * before their message is known, committed together */
static int test_bodies_batch(void)
{
	char *dir = test_dir("batch");
	struct store_body_writer *w[3];
	struct store_uncached u[8];
	uint64_t cached, known;
	int64_t folder, umid[5];
	struct store *s;
	size_t n, len;
	char *got;

	CHECK_RC(store_open(dir, &s), 0);
	folder = add_folder(s, "INBOX");
	for (int i = 0; i < 5; i++)
		CHECK_RC(put_msg(s, folder, (uint32_t)(10 + i), "", &umid[i]), 0);
	CHECK_RC(store_uncached(s, folder, 0, UINT32_MAX, 0, 8, u, &n), 0);
	CHECK(n == 5 && u[0].uid == 14 && u[4].uid == 10 && u[0].umid == umid[4]);
	/* a window of UIDs, newest first, at most max */
	CHECK_RC(store_uncached(s, folder, 11, 14, 0, 2, u, &n), 0);
	CHECK(n == 2 && u[0].uid == 13 && u[1].uid == 12);

	for (int i = 0; i < 3; i++) {
		char body[32];

		CHECK_RC(store_body_begin(s, 0, &w[i]), 0);
		snprintf(body, sizeof(body), "body number %d", i);
		CHECK_RC(store_body_append(w[i], body, strlen(body)), 0);
	}
	/* claimed out of order; the third never claimed is refused */
	store_body_claim(w[0], umid[3]);
	store_body_claim(w[1], umid[1]);
	CHECK_RC(store_body_commit_many(s, w, 3), 2);
	CHECK(store_body_cached(s, umid[3]) && store_body_cached(s, umid[1]));
	CHECK(!store_body_cached(s, umid[0]));
	got = read_body(s, umid[3], &len);
	CHECK(got && len == 13 && !memcmp(got, "body number 0", 13));
	free(got);
	CHECK_RC(store_body_counts(s, &cached, &known), 0);
	CHECK(cached == 2 && known == 5);
	CHECK_RC(store_uncached(s, folder, 0, UINT32_MAX, 0, 8, u, &n), 0);
	CHECK(n == 3 && u[0].uid == 14 && u[1].uid == 12 && u[2].uid == 10);
	/* no temporary file left, wherever it was begun */
	for (int i = 0; i < 256; i++) {
		char sub[4096];

		snprintf(sub, sizeof(sub), "%s/bodies/%02x", dir, i);
		CHECK(count_prefix(sub, ".tmp") <= 0);
	}
	store_close(s);
	free(dir);
	return 0;
}

static int test_trim(void)
{
	char *dir = test_dir("trim"), body[1000];
	/* committed in this order, then 0 and 1 read: LRU is 2, 3, 4, 0, 1 */
	static const struct {
		uint64_t budget;
		bool cached[5];
	} steps[] = {
		{ 100000, { true, true, true, true, true } },
		{ 5000, { true, true, true, true, true } },
		{ 3000, { true, true, false, false, true } },
		{ 2999, { true, true, false, false, false } },
		{ 1000, { false, true, false, false, false } },
		{ 0, { false, false, false, false, false } },
	};
	int64_t folder, umid[5];
	struct store *s;
	sqlite3 *db;
	size_t i, j;
	int fd;

	memset(body, 'x', sizeof(body));
	CHECK_RC(store_open(dir, &s), 0);
	db = raw_open(dir);
	folder = add_folder(s, "INBOX");
	for (i = 0; i < 5; i++) {
		CHECK_RC(put_msg(s, folder, (uint32_t)i + 1, "", &umid[i]), 0);
		CHECK_RC(write_body(s, umid[i], body, sizeof(body)), 0);
		sleep_ms(3);
	}
	for (i = 0; i < 2; i++) {
		fd = store_body_open(s, umid[i]);
		CHECK(fd >= 0);
		close(fd);
		sleep_ms(3);
	}
	for (i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		CHECK_RC(store_body_trim(s, steps[i].budget), 0);
		for (j = 0; j < 5; j++) {
			if (store_body_cached(s, umid[j]) !=
			    steps[i].cached[j]) {
				fprintf(stderr,
					"budget %llu: body %zu cached: %d\n",
					(unsigned long long)steps[i].budget, j,
					!steps[i].cached[j]);
				return 1;
			}
		}
		CHECK(raw_int(db, "SELECT coalesce(sum(size), 0) FROM bodies",
			      0) <= (long long)steps[i].budget);
	}
	sqlite3_close(db);
	store_close(s);
	free(dir);
	return 0;
}

/*
 * What a crash leaves in the body cache is put in order at start: a
 * temporary file goes; a body renamed into place whose row was never
 * committed gets one (so the budget counts it), with its real length;
 * a body of a message the store does not have goes; a row whose file
 * is gone goes. Bodies in order are left alone.
 */
static void body_file(const char *dir, int64_t umid, char *buf)
{
	snprintf(buf, PATH_MAX, "%s/bodies/%02x/%lld", dir,
		 (unsigned)(umid & 0xff), (long long)umid);
}

static int test_sweep(void)
{
	char *dir = test_dir("sweep"), path[PATH_MAX], tmp[PATH_MAX + 32];
	int64_t folder, umid[4];
	struct store_sweep sw;
	struct store *s;
	sqlite3 *db;
	FILE *f;

	CHECK_RC(store_open(dir, &s), 0);
	db = raw_open(dir);
	folder = add_folder(s, "INBOX");
	for (int i = 0; i < 4; i++) {
		CHECK_RC(put_msg(s, folder, (uint32_t)i + 1, "", &umid[i]), 0);
		CHECK_RC(write_body(s, umid[i], "0123456789", 10), 0);
	}
	/* 0: in order. 1: its row lost (the crash between rename and row).
	 * 2: its row's file lost. 3: its message gone from the store. */
	CHECK(raw_int(db, "DELETE FROM bodies WHERE umid = ? RETURNING 1",
		      umid[1]) == 1);
	body_file(dir, umid[2], path);
	CHECK(unlink(path) == 0);
	CHECK(raw_int(db, "DELETE FROM bodies WHERE umid = ? RETURNING 1",
		      umid[3]) == 1);
	/* as a crash between the row's delete and the file's would */
	CHECK(raw_int(db, "DELETE FROM messages WHERE umid = ? RETURNING 1",
		      umid[3]) == 1);
	/* and a temporary file of a writer that died */
	snprintf(tmp, sizeof(tmp), "%s/bodies/%02x/.tmp-%lld-1-1", dir,
		 (unsigned)(umid[0] & 0xff), (long long)umid[0]);
	f = fopen(tmp, "w");
	CHECK(f != NULL);
	fputs("half", f);
	fclose(f);

	CHECK_RC(store_body_sweep(s, &sw), 0);
	CHECK(sw.temporary == 1 && sw.adopted == 1 && sw.dropped == 1 &&
	      sw.rows == 1);
	CHECK(access(tmp, F_OK) != 0);
	CHECK(store_body_cached(s, umid[0]) && store_body_cached(s, umid[1]));
	CHECK(!store_body_cached(s, umid[2]) && !store_body_cached(s, umid[3]));
	CHECK(raw_int(db, "SELECT size FROM bodies WHERE umid = ?", umid[1]) ==
	      10);
	CHECK(raw_int(db, "SELECT count(*) FROM bodies", 0) == 2);
	body_file(dir, umid[3], path);
	CHECK(access(path, F_OK) != 0);
	/* a second sweep finds nothing */
	CHECK_RC(store_body_sweep(s, &sw), 0);
	CHECK(!sw.temporary && !sw.adopted && !sw.dropped && !sw.rows);
	sqlite3_close(db);
	store_close(s);
	free(dir);
	return 0;
}

/* what a damaged cache.db looks like, in several ways */
static int corrupt_garbage(const char *path)
{
	FILE *f = fopen(path, "w");
	int i;

	if (!f)
		return -1;
	for (i = 0; i < 2000; i++)
		fputs("this is not an SQLite database. ", f);
	return fclose(f);
}

static int corrupt_pages(const char *path)
{
	unsigned char junk[4096];
	struct stat st;
	off_t off;
	int fd = open(path, O_WRONLY);
	size_t i;

	if (fd < 0 || fstat(fd, &st))
		return -1;
	for (i = 0; i < sizeof(junk); i++)
		junk[i] = (unsigned char)(i * 131 + 17);
	/* every page after the first: the schema still reads, the data not */
	for (off = 4096; off < st.st_size; off += 4096)
		if (pwrite(fd, junk, sizeof(junk), off) != sizeof(junk))
			return -1;
	return close(fd);
}

static int corrupt_truncate(const char *path)
{
	return truncate(path, 3 * 4096);
}

static const struct {
	const char *name;
	int (*damage)(const char *path);
} corruptions[] = {
	{ "garbage", corrupt_garbage },
	{ "pages", corrupt_pages },
	{ "truncated", corrupt_truncate },
};

static int test_corrupt(void)
{
	char subject[300], path[4096];
	struct store_folder *list;
	struct store *s;
	size_t c, n;
	int64_t folder;
	uint32_t uid;

	memset(subject, 's', sizeof(subject) - 1);
	subject[sizeof(subject) - 1] = '\0';
	for (c = 0; c < sizeof(corruptions) / sizeof(corruptions[0]); c++) {
		char *dir = test_dir(corruptions[c].name);

		CHECK_RC(store_open(dir, &s), 0);
		folder = add_folder(s, "INBOX");
		CHECK_RC(store_begin(s), 0);
		for (uid = 1; uid <= 500; uid++) {
			struct store_msg m = { .folder = folder,
					       .uid = uid,
					       .flags = (char *)"",
					       .subject = subject };

			CHECK_RC(store_msg_put(s, &m), 0);
		}
		CHECK_RC(store_commit(s), 0);
		store_close(s);

		snprintf(path, sizeof(path), "%s/cache.db", dir);
		CHECK(corruptions[c].damage(path) == 0);
		fprintf(stderr,
			"(%s: a warning about a corrupt database "
			"is expected)\n",
			corruptions[c].name);
		CHECK_RC(store_open(dir, &s), 0);
		CHECK(count_prefix(dir, "cache.db.corrupt-") == 1);
		CHECK_RC(store_folder_list(s, &list, &n), 0);
		CHECK(n == 0);
		store_folder_list_free(list, n);
		folder = add_folder(s, "INBOX");
		CHECK(folder > 0);
		CHECK_RC(put_msg(s, folder, 1, "\\Seen", NULL), 0);
		store_close(s);
		/* and the new one is sound */
		CHECK_RC(store_open(dir, &s), 0);
		CHECK(count_prefix(dir, "cache.db.corrupt-") == 1);
		store_close(s);
		free(dir);
	}
	return 0;
}

/* ---- several connections at once ---- */

#define NBATCH 20
#define BATCH 200
#define NBODY 300

struct shared {
	char *dir;
	int64_t folder;
	volatile int writer_done;
	int errors;
	pthread_mutex_t lock;
};

static void fail(struct shared *sh, const char *what, int rc)
{
	fprintf(stderr, "thread: %s: %s\n", what, strerror(-rc));
	pthread_mutex_lock(&sh->lock);
	sh->errors++;
	pthread_mutex_unlock(&sh->lock);
}

static void *writer(void *aux)
{
	struct shared *sh = aux;
	struct store *s;
	int b, i, rc;

	rc = store_open(sh->dir, &s);
	if (rc) {
		fail(sh, "writer open", rc);
		goto out;
	}
	for (b = 0; b < NBATCH; b++) {
		rc = store_begin(s);
		if (rc) {
			fail(sh, "begin", rc);
			break;
		}
		for (i = 0; i < BATCH && !rc; i++)
			rc = put_msg(s, sh->folder,
				     (uint32_t)(b * BATCH + i + 1),
				     i % 2 ? "\\Seen" : "", NULL);
		if (!rc) {
			struct store_folder bm = {
				.id = sh->folder,
				.uidvalidity = 7,
				.uidnext = (uint32_t)((b + 1) * BATCH + 1),
				.low_uid = 1,
			};

			rc = store_folder_set_sync(s, &bm);
		}
		if (!rc)
			rc = store_commit(s);
		if (rc) {
			store_rollback(s);
			fail(sh, "batch", rc);
			break;
		}
	}
	store_close(s);
out:
	__atomic_store_n(&sh->writer_done, 1, __ATOMIC_RELEASE);
	return NULL;
}

static void *reader(void *aux)
{
	struct shared *sh = aux;
	struct store_msg *buf = calloc(500, sizeof(*buf));
	uint64_t count, last = 0;
	struct store_folder f;
	struct store *s;
	size_t i, n;
	int rc, done;

	rc = store_open(sh->dir, &s);
	if (rc) {
		fail(sh, "reader open", rc);
		free(buf);
		return NULL;
	}
	do {
		int64_t after = 0;
		size_t seen = 0;

		done = __atomic_load_n(&sh->writer_done, __ATOMIC_ACQUIRE);
		rc = store_folder_count(s, sh->folder, &count);
		if (rc || count < last || count % BATCH) {
			/* a batch is seen whole or not at all */
			fail(sh, "count", rc ? rc : -ERANGE);
			break;
		}
		last = count;
		for (;;) {
			rc = store_msg_list(s, sh->folder, after, 500, buf, &n);
			if (rc) {
				fail(sh, "list", rc);
				break;
			}
			for (i = 0; i < n; i++) {
				after = buf[i].umid;
				store_msg_release(&buf[i]);
			}
			seen += n;
			if (n < 500)
				break;
		}
		if (rc)
			break;
		if (seen < count) {
			fail(sh, "list shorter than count", -ERANGE);
			break;
		}
		rc = store_folder_get(s, sh->folder, &f);
		if (rc) {
			fail(sh, "folder get", rc);
			break;
		}
		store_folder_release(&f);
	} while (!done);
	store_close(s);
	free(buf);
	return NULL;
}

/* a fetcher: bodies written and read beside the sync thread's batches */
static void *fetcher(void *aux)
{
	struct shared *sh = aux;
	char body[512], got[512];
	struct store *s;
	int i, fd, rc;

	rc = store_open(sh->dir, &s);
	if (rc) {
		fail(sh, "fetcher open", rc);
		return NULL;
	}
	for (i = 0; i < NBODY; i++) {
		int64_t umid = STORE_FIRST_UMID + i;

		memset(body, 'a' + i % 26, sizeof(body));
		rc = write_body(s, umid, body, sizeof(body));
		if (rc) {
			fail(sh, "body write", rc);
			break;
		}
		fd = store_body_open(s, umid);
		if (fd < 0) {
			fail(sh, "body open", fd);
			break;
		}
		if (read(fd, got, sizeof(got)) != (ssize_t)sizeof(got) ||
		    memcmp(got, body, sizeof(got))) {
			close(fd);
			fail(sh, "body read", -EIO);
			break;
		}
		close(fd);
		if (i % 50 == 49) {
			rc = store_body_trim(s, 100 * sizeof(body));
			if (rc) {
				fail(sh, "trim", rc);
				break;
			}
		}
	}
	store_close(s);
	return NULL;
}

static int test_threads(void)
{
	struct shared sh = { .dir = test_dir("threads") };
	pthread_t tw, tr, tf;
	struct store *s;
	uint64_t count;

	pthread_mutex_init(&sh.lock, NULL);
	CHECK_RC(store_open(sh.dir, &s), 0);
	sh.folder = add_folder(s, "INBOX");
	CHECK(sh.folder > 0);
	CHECK(pthread_create(&tw, NULL, writer, &sh) == 0);
	CHECK(pthread_create(&tr, NULL, reader, &sh) == 0);
	CHECK(pthread_create(&tf, NULL, fetcher, &sh) == 0);
	pthread_join(tw, NULL);
	pthread_join(tr, NULL);
	pthread_join(tf, NULL);
	CHECK(sh.errors == 0);
	CHECK_RC(store_folder_count(s, sh.folder, &count), 0);
	CHECK(count == NBATCH * BATCH);
	store_close(s);
	pthread_mutex_destroy(&sh.lock);
	free(sh.dir);
	return 0;
}

static const struct {
	const char *name;
	int (*fn)(void);
} tests[] = {
	{ "migrate", test_migrate },
	{ "sweep", test_sweep },
	{ "migrate_v2", test_migrate_v2 },
	{ "migrate_v4", test_migrate_v4 },
	{ "orphans", test_orphans },
	{ "concurrent_open", test_concurrent_open },
	{ "modes", test_modes },
	{ "folders", test_folders },
	{ "messages", test_messages },
	{ "flagsets", test_flagsets },
	{ "flagsets_in_tx", test_flagsets_in_tx },
	{ "umid_not_reused", test_umid_not_reused },
	{ "ops", test_ops },
	{ "set_flags", test_set_flags },
	{ "list_paging", test_list_paging },
	{ "uids", test_uids },
	{ "folder_delete", test_folder_delete },
	{ "skipped", test_skipped },
	{ "bodies", test_bodies },
	{ "bodies_batch", test_bodies_batch },
	{ "trim", test_trim },
	{ "corrupt", test_corrupt },
	{ "threads", test_threads },
};

static int rm_entry(const char *path, const struct stat *st, int flag,
		    struct FTW *ftw)
{
	return remove(path);
}

int main(int argc, char **argv)
{
	size_t i;
	int failed = 0;

	/* with no umask, only the store's own modes keep files private */
	umask(0);
	if (!mkdtemp(root)) {
		perror("mkdtemp");
		return 1;
	}
	for (i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
		if (argc > 1 && strcmp(argv[1], tests[i].name))
			continue;
		if (tests[i].fn()) {
			fprintf(stderr, "FAIL %s\n", tests[i].name);
			failed++;
		} else {
			fprintf(stderr, "ok   %s\n", tests[i].name);
		}
	}
	if (!failed)
		nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	else
		fprintf(stderr, "left %s for inspection\n", root);
	return failed ? 1 : 0;
}
