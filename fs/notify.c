/*
 * notify.c - kernel notifications: sync reports a message gone, its
 * names are queued, and the notifier thread tells the kernel to forget
 * them; a folder whose messages changed has its cached listing dropped.
 * The kernel keeps a message's entry and attributes for an hour (ops.c):
 * what is told here is all that makes it see a change sooner.
 */
#define LOG_CAT "fs"
#include "fs_i.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"
#include "names.h"

/* a name the kernel must forget: the message behind it is gone; or,
 * with @old_tree, the folder tree as it was before the folder list
 * changed, whose vanished directories the kernel must forget; or, with
 * @listing, a directory (@parent) whose cached listing must go */
struct note {
	fuse_ino_t parent;
	char name[NAMES_MAX + 1];
	struct tree *old_tree;
	bool listing;
	struct note *next;
};

/* a move by the mount not yet seen done on the server */
struct moved {
	int64_t umid;
	int64_t to;
	struct moved *next;
};

static void queue_note(struct fs *fs, fuse_ino_t parent, const char *name,
		       struct tree *old_tree)
{
	struct note *n = xcalloc(1, sizeof(*n));

	n->parent = parent;
	n->old_tree = old_tree;
	n->listing = !name;
	if (!name)
		name = "";
	snprintf(n->name, sizeof(n->name), "%s", name);
	pthread_mutex_lock(&fs->note_lock);
	n->next = fs->notes;
	fs->notes = n;
	pthread_cond_signal(&fs->note_wake);
	pthread_mutex_unlock(&fs->note_lock);
}

static void forget_entry(uint64_t parent, const char *name, void *aux)
{
	struct fs *fs = aux;

	/* -ENOENT when the kernel had no such entry: fine */
	fuse_lowlevel_notify_inval_entry(fs->se, parent, name, strlen(name));
}

/*
 * Drop the listing the kernel caches for directory @ino (its pages,
 * opendir sets cache_readdir) and its attributes; -ENOENT when the
 * kernel holds no such inode: fine. The entries under it stay: the
 * names of a message that went were told one by one.
 */
static void forget_listing(struct fs *fs, fuse_ino_t ino)
{
	fuse_lowlevel_notify_inval_inode(fs->se, ino, 0, 0);
}

static void listing_changed(struct fs *fs, int64_t folder);
static void left_conv(struct fs *fs, const struct store_msg *m);

/*
 * The moves the mount made, after sync changed some folder: a move done
 * (the message's folder is its target) or a message gone is let go; a
 * move refused (it shows elsewhere again) has its name in the target
 * forgotten, with the target's listing. Thread: the notifier.
 */
static void check_moves(struct fs *fs)
{
	struct moved *list, *keep = NULL;

	pthread_mutex_lock(&fs->note_lock);
	list = fs->moves;
	fs->moves = NULL;
	pthread_mutex_unlock(&fs->note_lock);
	while (list) {
		struct moved *mv = list;
		struct store_msg m;
		char name[NAMES_MAX + 1];
		int rc = get_msg(fs, mv->umid, &m);

		list = mv->next;
		if (rc == -EIO) {
			mv->next = keep;
			keep = mv;
			continue;
		}
		if (!rc && m.folder != mv->to &&
		    store_msg_shown_in(&m) != mv->to) {
			uint64_t dir = INO_FOLDER_BASE + (uint64_t)mv->to;

			names_message(name, m.date, m.zone, m.subject, m.umid);
			listing_changed(fs, mv->to);
			forget_entry(dir, name, fs);
			forget_listing(fs, dir);
		}
		if (!rc && m.folder != mv->to &&
		    store_msg_shown_in(&m) == mv->to) {
			mv->next = keep; /* still on its way */
			keep = mv;
		} else {
			free(mv);
		}
		if (!rc)
			store_msg_release(&m);
	}
	pthread_mutex_lock(&fs->note_lock);
	while (keep) {
		struct moved *mv = keep;

		keep = mv->next;
		mv->next = fs->moves;
		fs->moves = mv;
	}
	pthread_mutex_unlock(&fs->note_lock);
}

void moved_message(struct fs *fs, int64_t umid, const char *name, int64_t to,
		   fuse_ino_t newparent, const char *newname)
{
	struct moved *mv = xcalloc(1, sizeof(*mv));

	/* mv INBOX/x Archive/y: the kernel has y, the listing x */
	if (strcmp(name, newname))
		queue_note(fs, newparent, newname, NULL);
	mv->umid = umid;
	mv->to = to;
	pthread_mutex_lock(&fs->note_lock);
	mv->next = fs->moves;
	fs->moves = mv;
	pthread_mutex_unlock(&fs->note_lock);
}

void flagged_message(struct fs *fs, int64_t umid)
{
	struct store_msg m, shown;
	struct store *st;
	char name[NAMES_MAX + 1];
	int64_t folder;
	bool hidden;

	if (borrow(fs, &st))
		return;
	if (store_msg_get(st, umid, &m)) {
		give_back(fs, st);
		return;
	}
	give_back(fs, st);
	/* get_msg() answers -ENOENT for a message hidden from readers */
	hidden = get_msg(fs, umid, &shown) == -ENOENT;
	if (!hidden)
		store_msg_release(&shown);
	folder = store_msg_shown_in(&m);
	listing_changed(fs, folder);
	queue_note(fs, INO_FOLDER_BASE + (uint64_t)folder, NULL, NULL);
	if (hidden) {
		names_message(name, m.date, m.zone, m.subject, m.umid);
		queue_note(fs, INO_FOLDER_BASE + (uint64_t)folder, name, NULL);
		if (m.conv)
			queue_note(fs, INO_CONV_BASE + (uint64_t)m.conv, name,
				   NULL);
		left_conv(fs, &m);
	}
	store_msg_release(&m);
}

/* every folder directory's listing: the folder list changed, or sync
 * did not say which folder's messages did */
static void forget_listings(struct fs *fs, const struct tree *t)
{
	for (size_t i = 0; i < t->n; i++)
		forget_listing(fs, t->dirs[i].ino);
}

void *notifier_main(void *arg)
{
	struct fs *fs = arg;

	pthread_mutex_lock(&fs->note_lock);
	for (;;) {
		struct note *n;

		while (!fs->notes && !fs->notes_stop)
			pthread_cond_wait(&fs->note_wake, &fs->note_lock);
		if (fs->notes_stop)
			break;
		n = fs->notes;
		fs->notes = n->next;
		pthread_mutex_unlock(&fs->note_lock);
		if (n->old_tree) {
			struct tree *now = tree_get(fs);

			/* forgetting a directory forgets what is under it */
			tree_moved(n->old_tree, now, forget_entry, fs);
			/* and the listings of those that stay: a folder
			 * came, or a subfolder went */
			forget_listings(fs, now);
			tree_put(now);
			tree_put(n->old_tree);
		} else if (n->listing && n->parent == INO_CONVERSATIONS) {
			/* cleared first: a change from now on queues again */
			atomic_store(&fs->convs_note_queued, false);
			forget_listing(fs, n->parent);
		} else if (n->listing && n->parent) {
			forget_listing(fs, n->parent);
			/* a conversation's: no move shows there */
			if ((n->parent & INO_KIND_MASK) != INO_CONV_BASE)
				check_moves(fs);
		} else if (n->listing) {
			struct tree *now = tree_get(fs);

			forget_listings(fs, now);
			tree_put(now);
			check_moves(fs);
		} else {
			forget_entry(n->parent, n->name, fs);
		}
		free(n);
		pthread_mutex_lock(&fs->note_lock);
	}
	while (fs->notes) {
		struct note *n = fs->notes;

		fs->notes = n->next;
		tree_put(n->old_tree);
		free(n);
	}
	while (fs->moves) {
		struct moved *mv = fs->moves;

		fs->moves = mv->next;
		free(mv);
	}
	pthread_mutex_unlock(&fs->note_lock);
	return NULL;
}

static bool ts_before(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec < b->tv_sec ||
	       (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* folder @folder's listing changes now (0: every folder's) */
/* the stamp of @folder (> 0), made if there is none; under fs->lock */
static struct folder_stamp *stamp_of(struct fs *fs, int64_t folder)
{
	if ((size_t)folder >= fs->nstamps) {
		size_t n = (size_t)folder + 64;

		fs->stamps = xrealloc(fs->stamps, n * sizeof(*fs->stamps));
		memset(fs->stamps + fs->nstamps, 0,
		       (n - fs->nstamps) * sizeof(*fs->stamps));
		fs->nstamps = n;
	}
	return &fs->stamps[folder];
}

static void listing_changed(struct fs *fs, int64_t folder)
{
	struct timespec now;

	clock_gettime(CLOCK_REALTIME, &now);
	pthread_mutex_lock(&fs->lock);
	/* a message that came, went or hid is in some conversation too */
	fs->convs_changed = now;
	if (folder <= 0) {
		fs->all_changed = now;
	} else {
		struct folder_stamp *f = stamp_of(fs, folder);

		f->changed = now;
		f->known = false;
	}
	pthread_mutex_unlock(&fs->lock);
}

/* when sync last changed @folder's listing, or every folder's; under
 * fs->lock */
static struct timespec last_change(struct fs *fs, int64_t folder)
{
	struct timespec changed = fs->all_changed;

	if (folder > 0 && (size_t)folder < fs->nstamps &&
	    ts_before(&changed, &fs->stamps[folder].changed))
		changed = fs->stamps[folder].changed;
	return changed;
}

int folder_count(struct fs *fs, struct store *st, int64_t folder,
		 uint64_t *count)
{
	struct timespec changed, latest;
	struct folder_stamp *f;
	bool known = false;
	int rc;

	if (folder <= 0)
		return store_folder_count(st, folder, count);
	pthread_mutex_lock(&fs->lock);
	changed = last_change(fs, folder);
	if ((size_t)folder < fs->nstamps) {
		f = &fs->stamps[folder];
		known = f->count_known && !ts_before(&f->counted, &changed);
		if (known)
			*count = f->count;
	}
	pthread_mutex_unlock(&fs->lock);
	if (known)
		return 0;
	rc = store_folder_count(st, folder, count);
	if (rc)
		return rc;
	pthread_mutex_lock(&fs->lock);
	f = stamp_of(fs, folder);
	latest = last_change(fs, folder);
	/* kept only if no change came while it was counted */
	if (!ts_before(&changed, &latest)) {
		f->count = *count;
		f->counted = changed;
		f->count_known = true;
	}
	pthread_mutex_unlock(&fs->lock);
	return 0;
}

long conv_mtime_nsec(struct fs *fs)
{
	long ns;

	pthread_mutex_lock(&fs->lock);
	ns = fs->convs_changed.tv_nsec;
	pthread_mutex_unlock(&fs->lock);
	return ns;
}

/*
 * Conversation @conv changed: the kernel drops its listing; and the name
 * its directory had, @old_name (NULL: none), in case that changed too (a
 * message that sorts first came or went, or it was merged away). Its
 * stamp first, as listing_changed() does for a folder.
 */
static void conv_changed(struct fs *fs, int64_t conv, const char *old_name)
{
	struct timespec now;

	clock_gettime(CLOCK_REALTIME, &now);
	pthread_mutex_lock(&fs->lock);
	fs->convs_changed = now;
	pthread_mutex_unlock(&fs->lock);
	queue_note(fs, INO_CONV_BASE + (uint64_t)conv, NULL, NULL);
	if (old_name)
		queue_note(fs, INO_CONVERSATIONS, old_name, NULL);
	/* Conversations/'s listing: one note at a time (a batch of new
	 * mail changes a conversation per message) */
	if (!atomic_exchange(&fs->convs_note_queued, true))
		queue_note(fs, INO_CONVERSATIONS, NULL, NULL);
}

/* @m, gone or hidden, leaves its conversation; if it was the earliest,
 * the directory's name was made from its subject and date */
static void left_conv(struct fs *fs, const struct store_msg *m)
{
	char name[NAMES_MAX + 1];

	if (!m->conv)
		return;
	names_conversation(name, m->date, m->zone, m->subject, m->conv);
	conv_changed(fs, m->conv, name);
}

struct timespec folder_mtime(struct fs *fs, int64_t folder)
{
	struct timespec changed, t;
	int64_t newest = 0;
	struct store *st;
	bool known = false;

	pthread_mutex_lock(&fs->lock);
	changed = last_change(fs, folder);
	if (folder > 0 && (size_t)folder < fs->nstamps) {
		known = fs->stamps[folder].known;
		newest = fs->stamps[folder].newest;
	}
	pthread_mutex_unlock(&fs->lock);
	if (!known && folder > 0 && !borrow(fs, &st)) {
		if (!store_folder_newest(st, folder, &newest)) {
			struct folder_stamp *f;

			pthread_mutex_lock(&fs->lock);
			f = stamp_of(fs, folder);
			/* kept only if no change came while it was read */
			if (!ts_before(&changed, &f->changed)) {
				f->newest = newest;
				f->known = true;
			}
			pthread_mutex_unlock(&fs->lock);
		}
		give_back(fs, st);
	}
	t.tv_sec = newest > 0 ? (time_t)newest : fs->mounted_at;
	t.tv_nsec = changed.tv_nsec;
	return t;
}

void on_change(const struct sync_change *c, void *aux)
{
	struct fs *fs = aux;
	char name[NAMES_MAX + 1];
	const struct store_msg *m = c->msg;

	if (c->kind == SYNC_FOLDERS) {
		struct tree *old;

		/* the tree as it is now, before anyone rebuilds it */
		pthread_mutex_lock(&fs->lock);
		old = fs->tree;
		if (old)
			atomic_fetch_add(&old->refs, 1);
		atomic_store(&fs->folders_dirty, true);
		pthread_mutex_unlock(&fs->lock);
		listing_changed(fs, 0);
		if (old)
			queue_note(fs, 0, "", old);
	} else if (c->kind == SYNC_MESSAGE_SIZE && m) {
		/* now, not queued: the open waiting for this body is
		 * answered next, and its reads must not stop at the old
		 * size. Attributes only (offset -1): no page is touched, so
		 * the waiting open cannot deadlock with it */
		fuse_lowlevel_notify_inval_inode(fs->se, (fuse_ino_t)m->umid, -1,
						 0);
	} else if (c->kind == SYNC_MESSAGES) {
		/* new, changed or gone messages in @c->folder (0: any):
		 * its cached listing goes; a new name was never cached, as
		 * a failed lookup leaves no entry in the kernel. The new
		 * mtime first: see folder_mtime() */
		listing_changed(fs, c->folder);
		queue_note(fs, c->folder ? INO_FOLDER_BASE + (uint64_t)c->folder
					 : 0,
			   NULL, NULL);
	} else if (c->kind == SYNC_MESSAGE_GONE && m) {
		int64_t shown = store_msg_shown_in(m);

		listing_changed(fs, m->folder);
		if (shown > 0 && shown != m->folder)
			listing_changed(fs, shown);
		names_message(name, m->date, m->zone, m->subject, m->umid);
		queue_note(fs, INO_FOLDER_BASE + (uint64_t)m->folder, name,
			   NULL);
		/* a message moved by the mount shows in its target until
		 * the server has it there */
		if (shown > 0 && shown != m->folder)
			queue_note(fs, INO_FOLDER_BASE + (uint64_t)shown, name,
				   NULL);
		if (m->conv)
			queue_note(fs, INO_CONV_BASE + (uint64_t)m->conv, name,
				   NULL);
		left_conv(fs, m);
	} else if (c->kind == SYNC_CONVERSATION && c->conv) {
		const struct store_conv *was = c->conv;

		if (was->count) {
			conv_name(name, was);
			conv_changed(fs, was->id, name);
		} else {
			conv_changed(fs, was->id, NULL);
		}
	}
}
