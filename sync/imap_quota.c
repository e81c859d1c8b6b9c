/*
 * imap_quota.c - the account's storage quota (RFC 9208 GETQUOTAROOT of
 * INBOX), asked once a round on the sync thread and kept for statfs, so
 * that df shows the mailbox's use and limit; statfs itself never waits
 * on the network.
 */
#define LOG_CAT "imap"
#include "imap_i.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common.h"

/*
 * What the last answer said, in bytes: one account per process (the
 * sync of a mount), so no place in struct sync is needed. Written by the
 * sync thread (quota_asked_ms too), read by FUSE workers.
 */
static _Atomic uint64_t quota_used, quota_limit; /* limit 0: none known */
/* the server's QUOTA broke a connection or is not offered: never again
 * (a reply libetpan cannot parse, such as a limit past 2^32 KiB, would
 * break the connection at every round) */
static atomic_bool quota_off;
/* when it was last asked (now_ms()): a poll of an unchanged account is
 * one round trip, so polls ask only this seldom; full rounds always */
static long long quota_asked_ms;

#define QUOTA_EVERY_MS (15 * 60 * 1000LL)

/* the STORAGE resource of @q's roots into @used, @limit (KiB) */
static bool quota_storage(struct mailimap_quota_complete_data *q,
			  uint64_t *used, uint64_t *limit)
{
	bool found = false;

	*used = *limit = 0;
	if (!q->quota_list)
		return false;
	for (clistiter *i = clist_begin(q->quota_list); i; i = clist_next(i)) {
		struct mailimap_quota_quota_data *d = clist_content(i);

		if (!d || !d->quota_list)
			continue;
		for (clistiter *j = clist_begin(d->quota_list); j;
		     j = clist_next(j)) {
			struct mailimap_quota_quota_resource *r =
				clist_content(j);
			uint64_t u;

			if (!r || !r->resource_name ||
			    strcasecmp(r->resource_name, "STORAGE") || !r->limit)
				continue;
			u = r->usage < r->limit ? r->usage : r->limit;
			/* several roots: the one with the least room rules */
			if (!found || r->limit - u < *limit - *used) {
				*used = u;
				*limit = r->limit;
			}
			found = true;
		}
	}
	return found;
}

int imap_quota_refresh(struct conn *c, bool full)
{
	struct mailimap_quota_complete_data *q = NULL;
	uint64_t used, limit;
	int r, g;

	if (atomic_load(&quota_off))
		return IMAP_OK;
	if (!full && quota_asked_ms &&
	    now_ms() - quota_asked_ms < QUOTA_EVERY_MS)
		return IMAP_OK;
	quota_asked_ms = now_ms();
	if (!mailimap_has_quota(c->imap)) {
		atomic_store(&quota_off, true);
		return IMAP_OK;
	}
	r = mailimap_quota_getquotaroot(c->imap, "INBOX", &q);
	if (r != MAILIMAP_NO_ERROR) {
		if (q)
			mailimap_quota_complete_data_free(q);
		g = imap_grade(c, r, "get the quota of INBOX");
		/* a refusal or a reply we cannot read: df shows no quota */
		atomic_store(&quota_off, true);
		return g == IMAP_CONN_BAD ? g : IMAP_OK;
	}
	if (quota_storage(q, &used, &limit)) {
		atomic_store(&quota_used, used * 1024);
		atomic_store(&quota_limit, limit * 1024);
		log_debug("quota: %llu of %llu KiB used",
			  (unsigned long long)used, (unsigned long long)limit);
	} else {
		atomic_store(&quota_limit, 0);
	}
	mailimap_quota_complete_data_free(q);
	return IMAP_OK;
}

int sync_quota(struct sync *s, uint64_t *used, uint64_t *limit)
{
	(void)s;
	*limit = atomic_load(&quota_limit);
	*used = atomic_load(&quota_used);
	return *limit ? 0 : -ENOENT;
}
