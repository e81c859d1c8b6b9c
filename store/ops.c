/*
 * ops.c - the operation log (DESIGN §6): each write applied to the
 * store and recorded in one transaction, and what the sync thread needs
 * to run them in order and record their outcome.
 */
#include "store_i.h"

#define LOG_CAT "store"
#include "common.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *const kind_names[] = {
	[STORE_OP_MOVE] = "move",     [STORE_OP_EXPUNGE] = "expunge",
	[STORE_OP_FLAGS] = "flags",   [STORE_OP_CREATE] = "create",
	[STORE_OP_DELETE] = "delete", [STORE_OP_RENAME] = "rename",
	[STORE_OP_APPEND] = "append",
};

const char *store_op_kind_name(enum store_op_kind k)
{
	return kind_names[k];
}

static enum store_op_kind kind_of(const char *name)
{
	for (size_t i = 0; i < sizeof(kind_names) / sizeof(kind_names[0]); i++)
		if (name && !strcmp(kind_names[i], name))
			return (enum store_op_kind)i;
	/* a kind this program does not know is never run as another:
	 * the executor reports and keeps it */
	return (enum store_op_kind)-1;
}

void store_op_release(struct store_op *op)
{
	free(op->name);
	free(op->name2);
	free(op->base);
	memset(op, 0, sizeof(*op));
}

/* columns as OP_COLUMNS in db.c */
static void op_from_row(sqlite3_stmt *st, struct store_op *op)
{
	memset(op, 0, sizeof(*op));
	op->id = sqlite3_column_int64(st, 0);
	op->kind = kind_of((const char *)sqlite3_column_text(st, 1));
	op->umid = sqlite3_column_int64(st, 2);
	op->dst = sqlite3_column_int64(st, 3);
	op->name = store_column_strdup(st, 4);
	op->name2 = store_column_strdup(st, 5);
	op->base = store_column_strdup(st, 6);
	op->sent = sqlite3_column_int(st, 7) != 0;
	op->dst_uidnext = (uint32_t)sqlite3_column_int64(st, 8);
	op->attempts = (unsigned)sqlite3_column_int(st, 9);
	op->created = sqlite3_column_int64(st, 10);
	op->src = sqlite3_column_int64(st, 11);
	op->src_uid = sqlite3_column_int64(st, 12);
}

/* run @st (statement @id, bound) expecting no rows */
static int step_done(struct store *s, enum store_stmt id, sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);

	rc = rc == SQLITE_DONE ? 0 : store_fail(s, id, rc);
	store_done(st);
	return rc;
}

static int op_add(struct store *s, enum store_op_kind kind, int64_t umid,
		  int64_t dst, const char *name, const char *name2,
		  const char *base)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s, ST_OP_ADD, &st);

	if (rc)
		return rc;
	store_bind_text(st, 1, kind_names[kind]);
	if (umid)
		sqlite3_bind_int64(st, 2, umid);
	if (dst)
		sqlite3_bind_int64(st, 3, dst);
	store_bind_text(st, 4, name);
	store_bind_text(st, 5, name2);
	store_bind_text(st, 6, base);
	sqlite3_bind_int64(st, 7, (int64_t)time(NULL));
	return step_done(s, ST_OP_ADD, st);
}

/* the unsent op of @kind on @umid: its id (0: none), dst and base */
static int op_unsent(struct store *s, int64_t umid, enum store_op_kind kind,
		     int64_t *id, int64_t *dst, char **base)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s, ST_OP_UNSENT, &st);

	*id = 0;
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, umid);
	store_bind_text(st, 2, kind_names[kind]);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*id = sqlite3_column_int64(st, 0);
		if (dst)
			*dst = sqlite3_column_int64(st, 1);
		if (base)
			*base = store_column_strdup(st, 2);
		rc = 0;
	} else {
		rc = rc == SQLITE_DONE ? 0 : store_fail(s, ST_OP_UNSENT, rc);
	}
	store_done(st);
	return rc;
}

int store_op_done(struct store *s, int64_t id)
{
	return store_exec_id(s, ST_OP_DELETE, id);
}

/* message @umid as a reader sees it; -ENOENT for none or an orphan */
static int live_msg(struct store *s, int64_t umid, struct store_msg *m)
{
	int rc = store_msg_get(s, umid, m);

	if (!rc && (!m->uid || m->dest == STORE_DEST_EXPUNGE)) {
		store_msg_release(m);
		rc = -ENOENT;
	}
	return rc;
}

/* whether a move of @umid already went to the server */
static int move_sent(struct store *s, int64_t umid, bool *yes)
{
	sqlite3_stmt *st;
	int rc = store_get_row(s, ST_OP_MOVE_SENT, umid, &st);

	*yes = false;
	if (!rc) {
		*yes = sqlite3_column_int(st, 0) != 0;
		store_done(st);
	}
	return rc;
}

int store_op_move(struct store *s, int64_t umid, int64_t dst)
{
	struct store_msg m;
	int64_t id = 0;
	bool own, sent = false;
	int rc;

	rc = store_tx_own(s, &own);
	if (rc)
		return rc;
	rc = live_msg(s, umid, &m);
	if (rc)
		goto out;
	if (dst == store_msg_shown_in(&m))
		goto out_msg; /* already there */
	rc = op_unsent(s, umid, STORE_OP_MOVE, &id, NULL, NULL);
	if (!rc && id && dst == m.folder)
		rc = move_sent(s, umid, &sent);
	if (rc)
		goto out_msg;
	if (!id) {
		rc = op_add(s, STORE_OP_MOVE, umid, dst, NULL, NULL, NULL);
	} else if (dst == m.folder && !sent) {
		/* back where it is on the server: nothing left to do */
		rc = store_op_done(s, id);
	} else {
		/* the waiting move takes the final target */
		sqlite3_stmt *st;

		rc = store_prepare(s, ST_OP_SET_DST, &st);
		if (!rc) {
			sqlite3_bind_int64(st, 1, id);
			sqlite3_bind_int64(st, 2, dst);
			rc = step_done(s, ST_OP_SET_DST, st);
		}
	}
out_msg:
	store_msg_release(&m);
out:
	return store_tx_end(s, own, rc);
}

int store_op_expunge(struct store *s, int64_t umid)
{
	struct store_msg m;
	bool own;
	int rc;

	rc = store_tx_own(s, &own);
	if (rc)
		return rc;
	rc = live_msg(s, umid, &m);
	if (!rc) {
		rc = op_add(s, STORE_OP_EXPUNGE, umid, 0, NULL, NULL, NULL);
		store_msg_release(&m);
	}
	return store_tx_end(s, own, rc);
}

int store_op_flags(struct store *s, int64_t umid, const char *flags)
{
	struct store_msg m;
	char *base = NULL;
	int64_t id = 0, flagset = 0;
	sqlite3_stmt *st;
	bool own;
	int rc;

	rc = store_tx_own(s, &own);
	if (rc)
		return rc;
	rc = live_msg(s, umid, &m);
	if (rc)
		goto out;
	rc = op_unsent(s, umid, STORE_OP_FLAGS, &id, NULL, &base);
	if (!rc)
		rc = store_flagset_of(s, flags, &flagset);
	if (rc)
		goto out_msg;
	/* the old flag set may go with its last message */
	store_flagset_forget(s);
	rc = store_prepare(s, ST_MSG_SET_FLAGSET, &st);
	if (rc)
		goto out_msg;
	sqlite3_bind_int64(st, 1, umid);
	sqlite3_bind_int64(st, 2, flagset);
	sqlite3_bind_int(st, 3, 1); /* ours: even with an op waiting */
	rc = step_done(s, ST_MSG_SET_FLAGSET, st);
	/* the first op keeps what the server had; a second one only
	 * changes what is wanted, which the row holds */
	if (!rc && !id)
		rc = op_add(s, STORE_OP_FLAGS, umid, 0, NULL, NULL, m.flags);
out_msg:
	store_msg_release(&m);
out:
	free(base);
	return store_tx_end(s, own, rc);
}

int store_op_create(struct store *s, const struct store_folder *f,
		    int64_t *id)
{
	bool own;
	int rc;

	rc = store_tx_own(s, &own);
	if (rc)
		return rc;
	rc = store_folder_put(s, f, id);
	if (!rc)
		rc = op_add(s, STORE_OP_CREATE, 0, 0, f->name, NULL, NULL);
	return store_tx_end(s, own, rc);
}

int store_op_delete(struct store *s, int64_t folder)
{
	struct store_folder f;
	int64_t shows = 0;
	sqlite3_stmt *st;
	bool own;
	int rc;

	rc = store_tx_own(s, &own);
	if (rc)
		return rc;
	rc = store_get_row(s, ST_FOLDER_SHOWS, folder, &st);
	if (!rc) {
		shows = sqlite3_column_int64(st, 0);
		store_done(st);
	}
	if (!rc && shows)
		rc = -ENOTEMPTY;
	if (rc)
		goto out;
	rc = store_folder_get(s, folder, &f);
	if (rc)
		goto out;
	rc = store_folder_delete(s, folder);
	if (!rc)
		rc = op_add(s, STORE_OP_DELETE, 0, 0, f.name, NULL, NULL);
	store_folder_release(&f);
out:
	return store_tx_end(s, own, rc);
}

int store_op_rename(struct store *s, const struct store_folder *v, size_t n,
		    const char *from, const char *to)
{
	bool own;
	int rc;

	rc = store_tx_own(s, &own);
	if (rc)
		return rc;
	for (size_t i = 0; !rc && i < n; i++)
		rc = store_folder_rename(s, v[i].id, &v[i]);
	if (!rc)
		rc = op_add(s, STORE_OP_RENAME, 0, 0, from, to, NULL);
	return store_tx_end(s, own, rc);
}

int store_op_next(struct store *s, int64_t after, struct store_op *out)
{
	sqlite3_stmt *st;
	int rc = store_get_row(s, ST_OP_NEXT, after, &st);

	if (rc)
		return rc;
	op_from_row(st, out);
	store_done(st);
	return 0;
}

int store_op_batch(struct store *s, const struct store_op *first,
		   int64_t folder, size_t max, struct store_op **out,
		   size_t *n)
{
	struct store_op *v = xcalloc(max ? max : 1, sizeof(*v));
	sqlite3_stmt *st;
	size_t len = 0;
	int rc;

	*out = NULL;
	*n = 0;
	rc = store_prepare(s, ST_OP_BATCH, &st);
	if (rc) {
		free(v);
		return rc;
	}
	store_bind_text(st, 1, kind_names[first->kind]);
	sqlite3_bind_int64(st, 2, folder);
	if (first->dst)
		sqlite3_bind_int64(st, 3, first->dst);
	sqlite3_bind_int64(st, 4, first->id);
	sqlite3_bind_int64(st, 5, (int64_t)max);
	sqlite3_bind_int(st, 6, first->sent);
	while (len < max && (rc = sqlite3_step(st)) == SQLITE_ROW)
		op_from_row(st, &v[len++]);
	if (len < max && rc != SQLITE_DONE) {
		rc = store_fail(s, ST_OP_BATCH, rc);
		store_done(st);
		while (len)
			store_op_release(&v[--len]);
		free(v);
		return rc;
	}
	store_done(st);
	*out = v;
	*n = len;
	return 0;
}

int store_op_mark_sent(struct store *s, const int64_t *ids, size_t n,
		       uint32_t dst_uidnext)
{
	bool own;
	int rc;

	rc = store_tx_own(s, &own);
	for (size_t i = 0; !rc && i < n; i++) {
		sqlite3_stmt *st;

		rc = store_prepare(s, ST_OP_SENT, &st);
		if (rc)
			break;
		sqlite3_bind_int64(st, 1, ids[i]);
		sqlite3_bind_int64(st, 2, dst_uidnext);
		rc = step_done(s, ST_OP_SENT, st);
	}
	return store_tx_end(s, own, rc);
}

int store_op_failed(struct store *s, int64_t id, const char *why)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s, ST_OP_FAILED, &st);

	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, id);
	store_bind_text(st, 2, why);
	return step_done(s, ST_OP_FAILED, st);
}

int store_op_summary(struct store *s, struct store_op *v, size_t max,
		     size_t *n, uint64_t *total)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s, ST_OP_SUMMARY, &st);

	*n = 0;
	*total = 0;
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, (int64_t)max);
	while (*n < max && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		op_from_row(st, &v[*n]);
		*total = (uint64_t)sqlite3_column_int64(st, 13);
		(*n)++;
	}
	if (*n < max && rc != SQLITE_DONE) {
		rc = store_fail(s, ST_OP_SUMMARY, rc);
		while (*n)
			store_op_release(&v[--(*n)]);
	} else {
		rc = 0;
	}
	store_done(st);
	return rc;
}

int store_op_count(struct store *s, uint64_t *n)
{
	int64_t v = 0;
	int rc = store_query_int(s, ST_OP_COUNT, &v);

	*n = rc ? 0 : (uint64_t)v;
	return rc;
}

int store_op_folder_pending(struct store *s, const char *name, bool *yes)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s, ST_OP_FOLDER_PENDING, &st);

	*yes = false;
	if (rc)
		return rc;
	store_bind_text(st, 1, name);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*yes = sqlite3_column_int(st, 0) != 0;
		rc = 0;
	} else {
		rc = store_fail(s, ST_OP_FOLDER_PENDING, rc);
	}
	store_done(st);
	return rc;
}

int store_msg_relocate(struct store *s, int64_t umid, int64_t folder,
		       uint32_t uid)
{
	int64_t twin = 0;
	sqlite3_stmt *st;
	bool own;
	int rc;

	rc = store_tx_own(s, &own);
	if (rc)
		return rc;
	if (uid) {
		rc = store_msg_find_uid(s, folder, uid, &twin);
		if (rc == -ENOENT)
			rc = 0;
	}
	if (!rc && twin && twin != umid) {
		/* a refresh stored the moved copy first */
		rc = store_msg_take_place(s, umid, twin);
	} else if (!rc && twin != umid) {
		rc = store_prepare(s, ST_MSG_SET_FOLDER_UID, &st);
		if (!rc) {
			sqlite3_bind_int64(st, 1, umid);
			sqlite3_bind_int64(st, 2, folder);
			sqlite3_bind_int64(st, 3, uid);
			rc = step_done(s, ST_MSG_SET_FOLDER_UID, st);
		}
	}
	return store_tx_end(s, own, rc);
}

int store_op_append(struct store *s, int64_t umid, int64_t folder,
		    const char *staged)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s, ST_OP_APPEND_ROW, &st);

	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, umid);
	rc = step_done(s, ST_OP_APPEND_ROW, st);
	if (!rc)
		rc = op_add(s, STORE_OP_APPEND, umid, folder, staged, NULL, NULL);
	return rc;
}

/* <store dir>/@name, made owner-only on first use; cached in *@slot */
static const char *own_dir(struct store *s, const char *name, char **slot)
{
	if (!*slot) {
		char *p = xasprintf("%s/%s", s->dir, name);

		if (mkdir(p, 0700) && errno != EEXIST) {
			log_error("cannot make %s: %s", p, strerror(errno));
			free(p);
			return NULL;
		}
		*slot = p;
	}
	return *slot;
}

const char *store_stage_dir(struct store *s)
{
	return own_dir(s, "staged", &s->stagedir);
}

const char *store_recovered_dir(struct store *s)
{
	return own_dir(s, "recovered", &s->recovereddir);
}

int store_body_from_fd(struct store *s, int64_t umid, int fd)
{
	struct store_body_writer *w;
	char buf[65536];
	off_t off = 0;
	sqlite3_stmt *st;
	int rc = store_body_begin(s, umid, &w);

	if (rc)
		return rc;
	for (;;) {
		ssize_t k = pread(fd, buf, sizeof(buf), off);

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			rc = -errno;
			store_body_abort(w);
			return rc;
		}
		if (!k)
			break;
		rc = store_body_append(w, buf, (size_t)k);
		if (rc) {
			store_body_abort(w);
			return rc;
		}
		off += k;
	}
	rc = store_body_commit(w);
	if (rc)
		return rc;
	rc = store_prepare(s, ST_MSG_SET_REAL_SIZE, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, umid);
	sqlite3_bind_int64(st, 2, (int64_t)off);
	return step_done(s, ST_MSG_SET_REAL_SIZE, st);
}

int store_stage_sweep(struct store *s, size_t *kept)
{
	const char *dir = store_stage_dir(s), *rec = store_recovered_dir(s);
	struct dirent *e;
	DIR *d;
	int rc = 0;

	*kept = 0;
	if (!dir || !rec)
		return -EIO;
	d = opendir(dir);
	if (!d)
		return -errno;
	while (!rc && (e = readdir(d))) {
		char *path, *to, *why;
		sqlite3_stmt *st;
		struct stat sb;
		bool used = false;

		if (e->d_name[0] == '.')
			continue;
		path = xasprintf("%s/%s", dir, e->d_name);
		rc = store_prepare(s, ST_OP_STAGED_USED, &st);
		if (rc) {
			free(path);
			break;
		}
		store_bind_text(st, 1, path);
		used = sqlite3_step(st) == SQLITE_ROW;
		store_done(st);
		if (used || stat(path, &sb)) {
			free(path);
			continue;
		}
		/* written but never recorded (the process died in between,
		 * before close() returned): kept, as all content is */
		to = xasprintf("%s/%llu.eml", rec, (unsigned long long)sb.st_ino);
		why = xasprintf("%s/%llu.reason", rec,
				(unsigned long long)sb.st_ino);
		if (!rename(path, to)) {
			FILE *f = fopen(why, "w");

			if (f) {
				fputs("written into the mount when the process "
				      "stopped, before it was recorded; not "
				      "appended\n",
				      f);
				fclose(f);
			}
			(*kept)++;
		}
		free(why);
		free(to);
		free(path);
	}
	closedir(d);
	return rc;
}
