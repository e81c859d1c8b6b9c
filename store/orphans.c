/*
 * orphans.c - identities that survive: messages the server no longer
 * has where we knew them wait as orphans (uid = -umid) until the same
 * message is found again and adopts the orphan's umid, or the pass
 * that could have found them ends and they are purged.
 */
#include "store_i.h"

#define LOG_CAT "store"
#include "common.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int store_msg_orphan(struct store *s, int64_t umid)
{
	return store_exec_id(s, ST_MSG_ORPHAN, umid);
}

int store_folder_orphan_all(struct store *s, int64_t folder)
{
	return store_exec_id(s, ST_FOLDER_ORPHAN_ALL, folder);
}

static bool same_text(const char *a, const unsigned char *b)
{
	if (!a || !b)
		return !a && !b;
	return !strcmp(a, (const char *)b);
}

/*
 * The first candidate of statement @st (rows umid, emailid, message_id)
 * that is the message @m: the same EMAILID where both have one (the
 * server's word), else the same Message-ID.
 */
static int pick(struct store *s, enum store_stmt id, sqlite3_stmt *st,
		const struct store_msg *m, int64_t *umid)
{
	int rc;

	*umid = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const unsigned char *eid = sqlite3_column_text(st, 1);
		const unsigned char *mid = sqlite3_column_text(st, 2);
		bool match = eid && m->emailid ? same_text(m->emailid, eid)
					       : same_text(m->message_id, mid);

		if (match) {
			*umid = sqlite3_column_int64(st, 0);
			rc = SQLITE_DONE;
			break;
		}
	}
	rc = rc == SQLITE_DONE ? 0 : store_fail(s, id, rc);
	store_done(st);
	return rc;
}

/* move @umid to (@folder, @uid) with flag set @flagset */
static int rehome(struct store *s, int64_t umid, int64_t folder, uint32_t uid,
		  int64_t flagset, const char *emailid)
{
	sqlite3_stmt *st;
	int rc;

	/* the old flag set may go with its last message */
	store_flagset_forget(s);
	rc = store_prepare(s, ST_MSG_REHOME, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, umid);
	sqlite3_bind_int64(st, 2, folder);
	sqlite3_bind_int64(st, 3, uid);
	sqlite3_bind_int64(st, 4, flagset);
	store_bind_text(st, 5, emailid);
	rc = sqlite3_step(st);
	rc = rc == SQLITE_DONE ? 0 : store_fail(s, ST_MSG_REHOME, rc);
	store_done(st);
	return rc;
}

int store_msg_adopt(struct store *s, struct store_msg *m)
{
	sqlite3_stmt *st;
	int64_t umid, flagset, conv;
	bool own;
	int rc;

	rc = store_tx_own(s, &own);
	if (rc)
		return rc;
	rc = store_prepare(s, ST_ORPHAN_MATCH, &st);
	if (rc)
		goto out;
	sqlite3_bind_int64(st, 1, m->date);
	sqlite3_bind_int64(st, 2, (int64_t)m->size);
	rc = pick(s, ST_ORPHAN_MATCH, st, m, &umid);
	if (rc)
		goto out;
	if (!umid) {
		rc = -ENOENT;
		goto out;
	}
	rc = store_flagset_of(s, m->flags, &flagset);
	if (!rc)
		rc = rehome(s, umid, m->folder, m->uid, flagset, m->emailid);
	if (!rc)
		rc = store_conv_of_msg(s, umid, &conv);
	if (!rc) {
		m->umid = umid;
		m->conv = conv;
	}
out:
	return store_tx_end(s, own, rc);
}

int store_msg_find_twin(struct store *s, int64_t since,
			const struct store_msg *gone, int64_t *umid)
{
	sqlite3_stmt *st;
	int rc;

	*umid = 0;
	rc = store_prepare(s, ST_TWIN_MATCH, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, since);
	sqlite3_bind_int64(st, 2, gone->date);
	sqlite3_bind_int64(st, 3, (int64_t)gone->size);
	sqlite3_bind_int64(st, 4, gone->umid);
	return pick(s, ST_TWIN_MATCH, st, gone, umid);
}

int store_msg_take_place(struct store *s, int64_t old, int64_t twin)
{
	sqlite3_stmt *st;
	int64_t flagset = 0, folder = 0, uid = 0;
	bool own;
	int rc;

	rc = store_tx_own(s, &own);
	if (rc)
		return rc;
	rc = store_get_row(s, ST_MSG_FLAGSET_OF, twin, &st);
	if (rc)
		goto out;
	flagset = sqlite3_column_int64(st, 0);
	folder = sqlite3_column_int64(st, 1);
	uid = sqlite3_column_int64(st, 2);
	store_done(st);
	/*
	 * Free the twin's (folder, uid) first, give its flag set to @old
	 * (one more reference, so it cannot go), then drop the twin.
	 */
	rc = store_msg_orphan(s, twin);
	if (!rc)
		rc = rehome(s, old, folder, (uint32_t)uid, flagset, NULL);
	if (!rc)
		rc = store_msg_delete(s, twin);
out:
	return store_tx_end(s, own, rc);
}

int store_folder_purge_orphans(struct store *s, int64_t folder,
			       void (*gone)(const struct store_msg *m,
					    void *aux),
			       void *aux, size_t *n)
{
	int64_t batch[1000];
	size_t got, total = 0;
	sqlite3_stmt *st;
	bool own;
	int rc;

	rc = store_tx_own(s, &own);
	if (rc)
		return rc;
	do {
		got = 0;
		rc = store_prepare(s, ST_FOLDER_ORPHANS, &st);
		if (rc)
			break;
		sqlite3_bind_int64(st, 1, folder);
		while ((rc = sqlite3_step(st)) == SQLITE_ROW && got < 1000)
			batch[got++] = sqlite3_column_int64(st, 0);
		rc = rc == SQLITE_DONE || rc == SQLITE_ROW ?
			     0 :
			     store_fail(s, ST_FOLDER_ORPHANS, rc);
		store_done(st);
		for (size_t i = 0; !rc && i < got; i++) {
			struct store_msg m;

			/* hidden already, so telling before the commit is
			 * no race: a look-up finds nothing either way */
			if (gone && !store_msg_get(s, batch[i], &m)) {
				gone(&m, aux);
				store_msg_release(&m);
			}
			rc = store_msg_delete(s, batch[i]);
		}
		total += got;
	} while (!rc && got == 1000);
	if (n)
		*n = rc ? 0 : total;
	return store_tx_end(s, own, rc);
}

int store_msg_max_umid(struct store *s, int64_t *umid)
{
	return store_query_int(s, ST_MSG_MAX_UMID, umid);
}

int store_has_orphans(struct store *s, bool *any)
{
	int64_t v = 0;
	int rc = store_query_int(s, ST_ANY_ORPHAN, &v);

	*any = rc || v; /* unsure: look for them */
	return rc;
}
