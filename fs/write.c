/*
 * write.c - the writes (DESIGN §6): what mv, rm, mkdir, rmdir and
 * setfattr in the mount become. Each is handed to sync/, which applies
 * it to the store and records it before the reply, and runs it on the
 * server later; so a reply here is the local result, offline too. A
 * new file written into a folder is appended when it is closed.
 * What has no meaning in a mail tree gets a clear errno: EPERM for
 * renaming a message within its folder or putting anything into
 * Conversations/, EROFS on a read-only mount.
 */
#define LOG_CAT "fs"
#include "fs_i.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "names.h"

#define FLAGS_XATTR "user.convoyfs.flags"

static bool is_conv_dir(fuse_ino_t ino)
{
	return (ino & INO_KIND_MASK) == INO_CONV_BASE;
}

/*
 * The message called @name in directory @parent (a folder or a
 * conversation), as it shows there: its umid into *@umid. -ENOENT if
 * there is none.
 */
static int message_in(struct fs *fs, fuse_ino_t parent, const char *name,
		      int64_t *umid)
{
	int64_t folder = 0, conv = 0;
	struct stat st;
	int rc;

	if (is_conv_dir(parent)) {
		conv = (int64_t)(parent & ~INO_KIND_MASK);
	} else {
		struct tree *t = tree_get(fs);
		const struct tree_dir *d = tree_find(t, parent);

		folder = d ? d->folder : 0;
		tree_put(t);
		if (!folder)
			return -ENOENT;
	}
	rc = lookup_message(fs, folder, conv, name, &st);
	if (!rc)
		*umid = (int64_t)st.st_ino;
	return rc;
}

/* the folder of directory @ino: its id (0 for the root) into *@folder;
 * -EPERM for a directory that is not a folder (Conversations/, a
 * conversation, .convoyfs, or a parent the server does not have) */
static int folder_of_dir(struct fs *fs, fuse_ino_t ino, int64_t *folder,
			 bool *selectable)
{
	struct tree *t;
	const struct tree_dir *d;
	int rc = 0;

	*folder = 0;
	if (selectable)
		*selectable = false;
	if (ino == INO_ROOT)
		return 0;
	if (ino == INO_CONVERSATIONS || ino == INO_CTL_DIR || is_conv_dir(ino))
		return -EPERM;
	t = tree_get(fs);
	d = tree_find(t, ino);
	if (!d)
		rc = -ENOENT;
	else if (!d->folder)
		rc = -EPERM;
	else {
		*folder = d->folder;
		if (selectable)
			*selectable = d->selectable;
	}
	tree_put(t);
	return rc;
}

/* the folder directory @name under @parent: its folder id (0: a
 * parent made up for folders below it) and whether it has children */
static int child_folder(struct fs *fs, fuse_ino_t parent, const char *name,
			int64_t *folder, bool *children)
{
	struct tree *t = tree_get(fs);
	const struct tree_dir *d = tree_find(t, parent), *c;
	int rc = -ENOENT;

	if (d && (c = tree_child(t, d, name))) {
		*folder = c->folder;
		*children = c->nchildren > 0;
		rc = 0;
	}
	tree_put(t);
	return rc;
}

/* the folder tree changed here: rebuild it at the next look */
static void folders_changed(struct fs *fs)
{
	atomic_store(&fs->folders_dirty, true);
}

/*
 * Whether @name can be a folder directory's name: 0 if it would show as
 * itself. A name the tree shows changed (a leading '.', a control
 * character; see names_component) would make a folder whose directory
 * has another name than the one just made: -EINVAL; so is GIO's
 * .Trash-$UID, which makes file managers offer to delete instead (to the
 * Trash folder). Longer than the tree shows a name (NAMES_MAX, which
 * statvfs gives as f_namemax): -ENAMETOOLONG.
 */
static int folder_name_check(const char *name)
{
	char shown[NAMES_MAX + 1];
	size_t len = strlen(name);

	if (len > NAMES_MAX)
		return -ENAMETOOLONG;
	if (names_component(shown, name, len) == len && !memcmp(shown, name, len))
		return 0;
	log_warn("a folder cannot be called \"%.80s\" here: it would show as "
		 "\"%.80s\"",
		 name, shown);
	return -EINVAL;
}

static bool special_name(fuse_ino_t parent, const char *name)
{
	return parent == INO_ROOT && (!strcmp(name, CONVERSATIONS_NAME) ||
				      !strcmp(name, CTL_DIR_NAME));
}

void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
	       fuse_ino_t newparent, const char *newname, unsigned int flags)
{
	struct fs *fs = fs_of(req);
	int64_t umid, to, folder;
	bool selectable, children;
	struct store *st;
	int rc;

	if (fs->a->ro) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (flags & RENAME_EXCHANGE) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	rc = message_in(fs, parent, name, &umid);
	if (!rc) {
		/* a message: to another folder, whatever its new name */
		rc = folder_of_dir(fs, newparent, &to, &selectable);
		if (!rc && (!to || !selectable))
			rc = -EPERM;
		if (!rc && newparent == parent) {
			/* a message's name is made from its header */
			rc = -EPERM;
		}
		if (!rc)
			rc = borrow(fs, &st);
		if (!rc) {
			rc = sync_move(fs->sync, st, umid, to);
			give_back(fs, st);
		}
		/* the kernel keeps a message's name for an hour: what
		 * it now holds must follow what the move becomes */
		if (!rc)
			moved_message(fs, umid, name, to, newparent, newname);
		goto out;
	}
	if (rc != -ENOENT || special_name(parent, name))
		goto out;
	/* a folder: RENAME, and it may change parent */
	rc = child_folder(fs, parent, name, &folder, &children);
	if (!rc && !folder)
		rc = -EPERM; /* a parent the server does not have */
	if (!rc)
		rc = folder_of_dir(fs, newparent, &to, NULL);
	if (!rc && special_name(newparent, newname))
		rc = -EEXIST;
	if (!rc)
		rc = folder_name_check(newname);
	if (!rc)
		rc = borrow(fs, &st);
	if (!rc) {
		rc = sync_rename_folder(fs->sync, st, folder, to, newname);
		give_back(fs, st);
		if (!rc)
			folders_changed(fs);
	}
out:
	fuse_reply_err(req, -rc);
}

void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_of(req);
	struct store *st;
	int64_t umid;
	int rc;

	if (fs->a->ro) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (parent == INO_RECOVERED) {
		/* the user has dealt with what the server refused */
		fuse_reply_err(req, -recovered_unlink(fs, name));
		return;
	}
	rc = message_in(fs, parent, name, &umid);
	if (rc == -ENOENT && parent == INO_CTL_DIR)
		rc = -EPERM;
	if (!rc)
		rc = borrow(fs, &st);
	if (!rc) {
		rc = sync_remove(fs->sync, st, umid);
		give_back(fs, st);
	}
	fuse_reply_err(req, -rc);
}

void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_of(req);
	int64_t folder;
	bool children;
	struct store *st;
	int rc;

	if (fs->a->ro) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (special_name(parent, name) || parent == INO_CONVERSATIONS ||
	    parent == INO_CTL_DIR) {
		fuse_reply_err(req, EPERM);
		return;
	}
	rc = child_folder(fs, parent, name, &folder, &children);
	if (!rc && children)
		rc = -ENOTEMPTY;
	if (!rc && !folder)
		rc = -EPERM;
	if (!rc)
		rc = borrow(fs, &st);
	if (!rc) {
		rc = sync_rmdir(fs->sync, st, folder);
		give_back(fs, st);
		if (!rc)
			folders_changed(fs);
	}
	fuse_reply_err(req, -rc);
}

void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
	      mode_t mode)
{
	struct fs *fs = fs_of(req);
	struct fuse_entry_param e;
	int64_t under, folder = 0;
	struct store *st;
	int rc;

	if (fs->a->ro) {
		fuse_reply_err(req, EROFS);
		return;
	}
	rc = folder_of_dir(fs, parent, &under, NULL);
	if (!rc && special_name(parent, name))
		rc = -EEXIST;
	if (!rc)
		rc = folder_name_check(name);
	if (!rc)
		rc = borrow(fs, &st);
	if (!rc) {
		rc = sync_mkdir(fs->sync, st, under, name, &folder);
		give_back(fs, st);
	}
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	folders_changed(fs);
	memset(&e, 0, sizeof(e));
	e.ino = INO_FOLDER_BASE + (uint64_t)folder;
	e.attr.st_ino = e.ino;
	e.attr.st_mode = S_IFDIR | 0700;
	e.attr.st_nlink = 2;
	e.attr.st_uid = fs->uid;
	e.attr.st_gid = fs->gid;
	e.attr_timeout = 1.0;
	e.entry_timeout = 1.0;
	fuse_reply_entry(req, &e);
}

void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
		 const char *value, size_t size, int flags)
{
	struct fs *fs = fs_of(req);
	struct store *st;
	char *flagtext;
	int rc;

	if (!is_message_ino(ino) || strcmp(name, FLAGS_XATTR)) {
		/* the other attributes say what the server says */
		fuse_reply_err(req, is_message_ino(ino) &&
						    !strncmp(name, "user.convoyfs.", 14)
					    ? EPERM
					    : ENOTSUP);
		return;
	}
	if (fs->a->ro) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (flags & XATTR_CREATE) {
		/* every message has flags, if only none */
		fuse_reply_err(req, EEXIST);
		return;
	}
	if (memchr(value, '\0', size) && size &&
	    (memchr(value, '\0', size) != value + size - 1)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	flagtext = xmalloc(size + 1);
	memcpy(flagtext, value, size);
	flagtext[size] = '\0';
	rc = borrow(fs, &st);
	if (!rc) {
		rc = sync_set_flags(fs->sync, st, (int64_t)ino, flagtext);
		give_back(fs, st);
	}
	free(flagtext);
	/* \Deleted hides it at once: the kernel must let its names go */
	if (!rc)
		flagged_message(fs, (int64_t)ino);
	fuse_reply_err(req, -rc);
}

void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	op_setxattr(req, ino, name, "", 0, 0);
}

/* ---- a new file written into a folder: APPEND at close ---- */

/*
 * A file being written: an unnamed temporary file in the store's
 * staging directory until its first flush (close), which hands it to
 * sync_append. Its inode lives only while it is open: the message it
 * becomes has an inode (umid) and a name of its own.
 */
struct staged {
	fuse_ino_t ino;
	int fd;
	int64_t folder;
	int64_t mtime; /* INTERNALDATE when set by utimens before close
			  (cp -p), else 0: the Date: header's */
	bool submitted;
	int rc; /* of the submission */
	struct staged *next;
};

static pthread_mutex_t staged_lock = PTHREAD_MUTEX_INITIALIZER;
static struct staged *staged_list;
static uint64_t staged_next;

bool is_staged_ino(fuse_ino_t ino)
{
	return (ino & INO_KIND_MASK) == INO_STAGED_BASE;
}

/* the staged file @ino; call with staged_lock held */
static struct staged *staged_find(fuse_ino_t ino)
{
	for (struct staged *g = staged_list; g; g = g->next)
		if (g->ino == ino)
			return g;
	return NULL;
}

static void staged_stat(struct fs *fs, const struct staged *g, struct stat *st)
{
	struct stat sb;

	memset(st, 0, sizeof(*st));
	if (!fstat(g->fd, &sb))
		st->st_size = sb.st_size;
	st->st_ino = g->ino;
	st->st_mode = S_IFREG | 0600;
	st->st_nlink = 1;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_blksize = 4096;
	st->st_mtim.tv_sec = g->mtime ? g->mtime : fs->mounted_at;
	st->st_ctim = st->st_mtim;
	st->st_atim = st->st_mtim;
}

int staged_getattr(struct fs *fs, fuse_ino_t ino, struct stat *st)
{
	struct staged *g;
	int rc = -ENOENT;

	pthread_mutex_lock(&staged_lock);
	g = staged_find(ino);
	if (g) {
		staged_stat(fs, g, st);
		rc = 0;
	}
	pthread_mutex_unlock(&staged_lock);
	return rc;
}

void op_create(fuse_req_t req, fuse_ino_t parent, const char *name,
	       mode_t mode, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fuse_entry_param e;
	struct staged *g;
	struct store *st;
	bool selectable;
	int64_t folder;
	int rc, fd = -1;

	if (fs->a->ro) {
		fuse_reply_err(req, EROFS);
		return;
	}
	rc = folder_of_dir(fs, parent, &folder, &selectable);
	if (!rc && (!folder || !selectable))
		rc = -EPERM; /* the top, or a folder that holds no mail */
	if (!rc)
		rc = borrow(fs, &st);
	if (!rc) {
		const char *dir = store_stage_dir(st);

		fd = dir ? open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600) : -1;
		if (fd < 0)
			rc = dir ? -errno : -EIO;
		give_back(fs, st);
	}
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	g = xcalloc(1, sizeof(*g));
	g->fd = fd;
	g->folder = folder;
	pthread_mutex_lock(&staged_lock);
	g->ino = INO_STAGED_BASE + ++staged_next;
	g->next = staged_list;
	staged_list = g;
	memset(&e, 0, sizeof(e));
	e.ino = g->ino;
	staged_stat(fs, g, &e.attr);
	pthread_mutex_unlock(&staged_lock);
	/* the name is the writer's only until close: no caching of it */
	e.attr_timeout = 0;
	e.entry_timeout = 0;
	fi->fh = (uint64_t)fd;
	fi->direct_io = 1;
	if (fuse_reply_create(req, &e, fi) == -ENOENT) {
		/* interrupted: nobody will release it */
		pthread_mutex_lock(&staged_lock);
		for (struct staged **p = &staged_list; *p; p = &(*p)->next)
			if (*p == g) {
				*p = g->next;
				break;
			}
		pthread_mutex_unlock(&staged_lock);
		close(fd);
		free(g);
	}
}

void staged_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
		  size_t size, off_t off, struct fuse_file_info *fi)
{
	struct staged *g;
	bool submitted;
	ssize_t k;

	pthread_mutex_lock(&staged_lock);
	g = staged_find(ino);
	submitted = !g || g->submitted;
	pthread_mutex_unlock(&staged_lock);
	if (submitted) {
		/* appended at its close: what comes after is not sent */
		fuse_reply_err(req, EBADF);
		return;
	}
	k = pwrite((int)fi->fh, buf, size, off);
	if (k < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_write(req, (size_t)k);
}

int staged_setattr(struct fs *fs, fuse_ino_t ino, const struct stat *attr,
		   int to_set, struct stat *out)
{
	struct staged *g;
	int rc = 0;

	pthread_mutex_lock(&staged_lock);
	g = staged_find(ino);
	if (!g)
		rc = -ENOENT;
	else if (g->submitted && (to_set & FUSE_SET_ATTR_SIZE))
		rc = -EBADF;
	if (!rc && (to_set & FUSE_SET_ATTR_SIZE) &&
	    ftruncate(g->fd, attr->st_size))
		rc = -errno;
	if (!rc && (to_set & FUSE_SET_ATTR_MTIME))
		g->mtime = (int64_t)attr->st_mtim.tv_sec;
	if (!rc && (to_set & FUSE_SET_ATTR_MTIME_NOW))
		g->mtime = (int64_t)time(NULL);
	if (!rc)
		staged_stat(fs, g, out);
	pthread_mutex_unlock(&staged_lock);
	return rc;
}

/*
 * The first flush (close) hands the file to sync/: checked and shown as
 * a message at once, or EINVAL from close() when it is not one, and
 * nothing is sent. Later flushes of the same open file return the
 * same.
 */
void staged_flush(fuse_req_t req, fuse_ino_t ino)
{
	struct fs *fs = fs_of(req);
	struct staged *g;
	struct store *st;
	int64_t umid = 0, folder = 0, mtime = 0;
	int rc, fd = -1;

	pthread_mutex_lock(&staged_lock);
	g = staged_find(ino);
	if (!g) {
		rc = -ENOENT;
	} else if (g->submitted) {
		rc = g->rc;
	} else {
		/* claimed: a write racing with it gets EBADF */
		g->submitted = true;
		fd = g->fd;
		folder = g->folder;
		mtime = g->mtime;
		rc = 1;
	}
	pthread_mutex_unlock(&staged_lock);
	if (rc == 1) {
		rc = borrow(fs, &st);
		if (!rc) {
			rc = sync_append(fs->sync, st, folder, fd, mtime, &umid);
			give_back(fs, st);
		}
		pthread_mutex_lock(&staged_lock);
		g = staged_find(ino);
		if (g)
			g->rc = rc;
		pthread_mutex_unlock(&staged_lock);
	}
	fuse_reply_err(req, -rc);
}

void staged_release(fuse_req_t req, fuse_ino_t ino)
{
	struct staged *g = NULL;

	pthread_mutex_lock(&staged_lock);
	for (struct staged **p = &staged_list; *p; p = &(*p)->next)
		if ((*p)->ino == ino) {
			g = *p;
			*p = g->next;
			break;
		}
	pthread_mutex_unlock(&staged_lock);
	if (g) {
		/* an unnamed file: closing it is all it takes to go */
		close(g->fd);
		free(g);
	}
	fuse_reply_err(req, 0);
}
