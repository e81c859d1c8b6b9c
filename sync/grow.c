/*
 * grow.c - grow(folder): a folder too big to learn at once is learned
 * newest first, one batch of sequence numbers below the known range at
 * a time, each written with its bookmark (low_uid) so a crash, a cut
 * link or a cancel redoes at most one batch.
 */
#define LOG_CAT "sync"
#include "engine.h"

#include <errno.h>
#include <stdlib.h>

#include "common.h"

static int locate_cb(const struct imap_msg *m, void *ctx)
{
	uint32_t *seq = ctx;

	/* the lowest sequence number of the reply: replies may come in
	 * any order */
	if (m->seq && (!*seq || m->seq < *seq))
		*seq = m->seq;
	return 0;
}

/*
 * How many messages the server has below our known range: the sequence
 * number of the lowest known message still there, less one. A few of
 * the lowest known UIDs are asked in one UID FETCH (UID), since the
 * lowest may have been expunged; if all of them were, a UID SEARCH
 * counts what lies below.
 */
static int count_below(struct sync *s, struct store_folder *f, uint32_t *below)
{
	uint32_t *known = NULL, seq = 0;
	size_t n = 0;
	int rc;

	rc = store_msg_uids_from(s->st, f->id, f->low_uid, f->uidnext, 16,
				 &known, &n);
	if (rc)
		return rc;
	if (n) {
		struct imap_fetch q = { .by_uid = true,
					.first = known[0],
					.last = known[n - 1],
					.items = IMAP_ITEMS_UID,
					.fn = locate_cb,
					.ctx = &seq };

		rc = sync_grade_errno(imap_fetch(s->conn, &q));
		imap_fetch_release(&q);
	}
	free(known);
	if (rc)
		return rc;
	if (seq) {
		*below = seq - 1;
		return 0;
	}
	{
		uint32_t *uids;
		size_t nu;
		int g = imap_uid_search(s->conn, 1, f->low_uid - 1, &uids,
					&nu);

		if (g)
			return sync_grade_errno(g);
		*below = (uint32_t)nu;
		free(uids);
	}
	return 0;
}

int grow_folder(struct sync *s, struct store_folder *f, struct job *j,
		bool to_the_end)
{
	struct imap_box box;
	int g;

	if (f->low_uid == 1 || !f->uidnext)
		return 0;
	/* other folders were looked at since this one's refresh */
	g = imap_examine(s->conn, f->name, &box);
	if (g)
		return sync_grade_errno(g);
	if (box.uidvalidity != f->uidvalidity)
		return -EAGAIN; /* the next refresh learns it again */
	while (f->low_uid != 1) {
		uint32_t below = 0, got = 0, first, low;
		int rc;

		if (job_is_cancelled(j) || sync_is_stopping(s))
			return -ECANCELED;
		if (!f->uidnext)
			return 0; /* refresh has not seen it yet */
		rc = count_below(s, f, &below);
		if (rc)
			return rc;
		if (!below) {
			f->low_uid = 1;
			return batch_save_bookmark(s, f);
		}
		first = below > s->batch ? below - s->batch + 1 : 1;
		low = f->low_uid;
		rc = refresh_seq_batch(s, f, first, below, &got);
		if (rc)
			return rc;
		if (!got || f->low_uid == low) {
			log_warn("folder %s: no progress below UID %u "
				 "(sequence %u:%u); will try again at the "
				 "next refresh",
				 f->name, low, first, below);
			return -EAGAIN;
		}
		(void)to_the_end;
		return f->low_uid != 1;
	}
	return 0;
}
