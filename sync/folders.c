/*
 * folders.c - the folder list: LIST "" "*" into the store, so
 * directories appear, move and vanish as folders do on the server. A
 * folder missing from one LIST is asked about (STATUS) before its rows
 * and bodies go, INBOX never goes, and a folder that vanished while
 * another with its UIDVALIDITY appeared was renamed: its row, and so
 * its inode and its files, move to the new name.
 */
#define LOG_CAT "sync"
#include "engine.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common.h"

static bool is_inbox(const char *name)
{
	return !strcasecmp(name, "INBOX");
}

static const struct imap_mailbox *listed(const struct imap_mailbox *v,
					 size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (!strcmp(v[i].name, name))
			return &v[i];
	return NULL;
}

static bool in_store(const struct store_folder *old, size_t nold,
		     const char *name)
{
	for (size_t i = 0; i < nold; i++)
		if (!strcmp(old[i].name, name))
			return true;
	return false;
}

static bool same_text(const char *a, const char *b)
{
	return a == b || (a && b && !strcmp(a, b));
}

/* whether @f is in @old as it is, for all the tree shows of it */
static bool same_folder(const struct store_folder *old, size_t nold,
			const struct store_folder *f)
{
	for (size_t i = 0; i < nold; i++)
		if (!strcmp(old[i].name, f->name))
			return same_text(old[i].display, f->display) &&
			       old[i].delim == f->delim &&
			       old[i].noselect == f->noselect &&
			       same_text(old[i].role, f->role);
	return false;
}

/* the store's form of a LISTed mailbox; free *@display after */
static void to_folder(const struct imap_mailbox *mb, struct store_folder *f,
		      char **display)
{
	memset(f, 0, sizeof(*f));
	/* a name we could never send back safely is still shown, but the
	 * sync skips it */
	*display = utf7_decode(mb->name);
	f->name = mb->name;
	f->display = *display ? *display : mb->name;
	f->delim = mb->delim;
	f->noselect = mb->noselect;
	f->role = (char *)mb->role;
	/* INBOX is case-insensitive (RFC 3501 §5.1) */
	if (is_inbox(mb->name))
		f->display = (char *)"INBOX";
}

/* the folders a poll asks STATUS of: known, selectable, not watched */
static void poll_names(struct sync *s, char ***names, size_t *n)
{
	struct store_folder *f = NULL;
	size_t nf = 0;

	*names = NULL;
	*n = 0;
	if (store_folder_list(s->st, &f, &nf))
		return;
	*names = xcalloc(nf + 1, sizeof(**names));
	for (size_t i = 0; i < nf; i++)
		if (!f[i].noselect && conn_name_ok(f[i].name) &&
		    !sync_watched(s, f[i].name))
			(*names)[(*n)++] = xstrdup(f[i].name);
	store_folder_list_free(f, nf);
}

static int list_folders(struct sync *s, bool poll, struct imap_mailbox **mbs,
			size_t *nmb)
{
	char **names;
	size_t n;
	int g;

	/* a full round refreshes every folder, so STATUS would tell it
	 * nothing, and each costs the server an opening of the folder (as
	 * long as an EXAMINE: two seconds for Dovecot's maildir of a
	 * million messages, before the mount could appear) */
	if (!poll)
		return imap_list(s->conn, mbs, nmb);
	if (s->conn->caps & CAP_LIST_STATUS)
		return imap_list_status(s->conn, mbs, nmb);
	poll_names(s, &names, &n);
	g = imap_list_with_status(s->conn, names, n, mbs, nmb);
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return g;
}

int sync_folders(struct sync *s, bool poll)
{
	struct store_folder *old = NULL;
	struct imap_mailbox *mbs = NULL;
	size_t nold = 0, nmb = 0;
	bool *gone = NULL; /* per old folder: confirmed gone */
	int64_t *renamed_to = NULL; /* per listed mailbox: old id, or 0 */
	bool any_gone = false, changed = false;
	int rc, g;

	g = list_folders(s, poll, &mbs, &nmb);
	if (g)
		return g == IMAP_CONN_BAD ? -ENOTCONN : -EREMOTE;
	rc = store_folder_list(s->st, &old, &nold);
	if (rc)
		goto out;
	gone = xcalloc(nold + 1, sizeof(*gone));
	renamed_to = xcalloc(nmb + 1, sizeof(*renamed_to));

	/* missing from this LIST: gone only if the server says so too */
	for (size_t i = 0; i < nold; i++) {
		struct imap_box box;
		bool ours = false;

		if (listed(mbs, nmb, old[i].name) || is_inbox(old[i].name))
			continue;
		/* made or renamed here, and the server is yet to hear of it */
		if (!store_op_folder_pending(s->st, old[i].name, &ours) && ours)
			continue;
		if (!conn_name_ok(old[i].name)) {
			gone[i] = any_gone = true;
			continue;
		}
		g = imap_status(s->conn, old[i].name, &box);
		imap_box_release(&box);
		if (g == IMAP_CONN_BAD) {
			rc = -ENOTCONN;
			goto out;
		}
		if (g == IMAP_OK && !old[i].noselect) {
			log_warn("folder %s is missing from the folder list "
				 "but still answers: kept",
				 old[i].name);
			continue;
		}
		gone[i] = any_gone = true;
	}

	/* renamed: a new name with the UIDVALIDITY of one that went */
	for (size_t k = 0; any_gone && k < nmb; k++) {
		struct imap_box box;

		if (in_store(old, nold, mbs[k].name) || mbs[k].noselect ||
		    !conn_name_ok(mbs[k].name))
			continue;
		g = imap_status(s->conn, mbs[k].name, &box);
		if (g == IMAP_OK)
			g = imap_mailboxid(s->conn, mbs[k].name, &box.mailboxid);
		if (g == IMAP_CONN_BAD) {
			imap_box_release(&box);
			rc = -ENOTCONN;
			goto out;
		}
		for (size_t i = 0; g == IMAP_OK && i < nold; i++) {
			/* MAILBOXID is the server's word where both have
			 * one; else an unchanged UIDVALIDITY */
			bool same = old[i].mailboxid && box.mailboxid ?
					    !strcmp(old[i].mailboxid,
						    box.mailboxid) :
					    old[i].uidvalidity &&
						    old[i].uidvalidity ==
							    box.uidvalidity;

			if (!gone[i] || !same)
				continue;
			log_info("folder %s was renamed to %s", old[i].name,
				 mbs[k].name);
			renamed_to[k] = old[i].id;
			gone[i] = false;
			break;
		}
		imap_box_release(&box);
	}

	rc = store_begin(s->st);
	if (rc)
		goto out;
	for (size_t k = 0; !rc && k < nmb; k++) {
		struct store_folder f;
		char *display;
		int64_t id;

		to_folder(&mbs[k], &f, &display);
		changed |= renamed_to[k] || !same_folder(old, nold, &f);
		if (renamed_to[k])
			rc = store_folder_rename(s->st, renamed_to[k], &f);
		else
			rc = store_folder_put(s->st, &f, &id);
		free(display);
	}
	for (size_t i = 0; !rc && i < nold; i++) {
		if (!gone[i])
			continue;
		changed = true;
		log_info("folder %s is gone from the server", old[i].name);
		rc = store_folder_delete(s->st, old[i].id);
		sync_note_forget(s, old[i].id);
	}
	if (!rc)
		rc = store_commit(s->st);
	if (rc) {
		store_rollback(s->st);
		goto out;
	}
	/* only a change: fs/ drops every folder's cached listing then, and
	 * a poll lists folders every interval */
	if (changed)
		sync_notify(s, SYNC_FOLDERS, 0);
	/* kept for this round's polls (their STATUS, with LIST-STATUS) */
	imap_mailboxes_free(s->listed, s->nlisted);
	s->listed = mbs;
	s->nlisted = nmb;
	mbs = NULL;
	nmb = 0;
out:
	free(gone);
	free(renamed_to);
	store_folder_list_free(old, nold);
	imap_mailboxes_free(mbs, nmb);
	return rc;
}
