/*
 * folders.c - the folder list: LIST "" "*" into the store, so directories
 * appear, move and vanish as folders do on the server.
 */
#define LOG_CAT "sync"
#include "engine.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* RFC 6154 roles we recognise, as libetpan gives them (no backslash) */
static const char *const roles[] = { "All",  "Archive", "Drafts", "Flagged",
				     "Junk", "Sent",	"Trash" };

static void read_flags(const struct mailimap_mbx_list_flags *fl,
		       struct store_folder *f)
{
	clistiter *it;

	if (!fl)
		return;
	if (fl->mbf_type == MAILIMAP_MBX_LIST_FLAGS_SFLAG &&
	    fl->mbf_sflag == MAILIMAP_MBX_LIST_SFLAG_NOSELECT)
		f->noselect = true;
	for (it = clist_begin(fl->mbf_oflags); it; it = clist_next(it)) {
		struct mailimap_mbx_list_oflag *of = clist_content(it);
		const char *ext;

		if (of->of_type != MAILIMAP_MBX_LIST_OFLAG_FLAG_EXT)
			continue;
		ext = of->of_flag_ext;
		if (!strcasecmp(ext, "NonExistent") ||
		    !strcasecmp(ext, "Noselect"))
			f->noselect = true;
		for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]); i++)
			if (!strcasecmp(ext, roles[i]) && !f->role)
				f->role = (char *)roles[i];
	}
}

static bool listed(clist *list, const char *name)
{
	for (clistiter *it = clist_begin(list); it; it = clist_next(it)) {
		struct mailimap_mailbox_list *mb = clist_content(it);

		if (mb->mb_name && !strcmp(mb->mb_name, name))
			return true;
	}
	return false;
}

int sync_folders(struct sync *s)
{
	struct store_folder *old = NULL;
	size_t nold = 0;
	clist *list = NULL;
	int rc;

	rc = mailimap_list(s->conn->imap, "", "*", &list);
	if (rc != MAILIMAP_NO_ERROR)
		return conn_errno(s->conn, rc, "cannot list folders");

	rc = store_folder_list(s->st, &old, &nold);
	if (rc)
		goto out;
	rc = store_begin(s->st);
	if (rc)
		goto out;
	for (clistiter *it = clist_begin(list); it; it = clist_next(it)) {
		struct mailimap_mailbox_list *mb = clist_content(it);
		struct store_folder f = { 0 };
		char *display;
		int64_t id;

		if (!mb->mb_name || !*mb->mb_name)
			continue;
		/* a name we could never send back safely is still shown,
		 * but the sync skips it (see messages.c) */
		display = utf7_decode(mb->mb_name);
		f.name = mb->mb_name;
		f.display = display ? display : mb->mb_name;
		f.delim = mb->mb_delimiter;
		read_flags(mb->mb_flag, &f);
		/* INBOX is case-insensitive (RFC 3501 §5.1) */
		if (!strcasecmp(mb->mb_name, "INBOX"))
			f.display = (char *)"INBOX";
		rc = store_folder_put(s->st, &f, &id);
		free(display);
		if (rc)
			goto out_rollback;
	}
	for (size_t i = 0; i < nold; i++) {
		if (listed(list, old[i].name))
			continue;
		log_info("folder %s is gone from the server", old[i].name);
		rc = store_folder_delete(s->st, old[i].id);
		if (rc)
			goto out_rollback;
	}
	rc = store_commit(s->st);
	if (rc)
		goto out_rollback;
	sync_notify(s, SYNC_FOLDERS, 0);
	goto out;

out_rollback:
	store_rollback(s->st);
out:
	store_folder_list_free(old, nold);
	mailimap_list_result_free(list);
	return rc;
}
