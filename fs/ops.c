/*
 * ops.c - the filesystem: FUSE low-level operations answered from the
 * store and the body cache. getattr, lookup and readdir never touch the
 * network; only opening a message whose body is not cached waits for a
 * fetcher, with a deadline. The .convoyfs files are served by
 * control.c, extended attributes by xattr.c, the writes by write.c.
 */
#define LOG_CAT "fs"
#include "fs_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common.h"
#include "names.h"

/* directories: their attributes and entries change only by sync, and
 * a short timeout keeps the tree fresh without invalidation traffic (a
 * listing is one request, whatever the folder holds) */
#define ENTRY_TIMEOUT 1.0
/*
 * Messages: a message's name, times and content never change, so the
 * kernel may keep its entry and attributes for long. What does change
 * is told it at once (notify.c): a message gone (its names), its real
 * size once fetched (its attributes), a folder's listing (its pages);
 * the mount's own writes it knows already. A short timeout here made a
 * warm `ls -l` of 100k messages send 100k LOOKUPs again.
 */
#define MSG_TIMEOUT 3600.0
/*
 * A conversation's directory: its name is kept as long, as sync tells
 * each name a conversation loses (notify.c); its attributes for
 * ENTRY_TIMEOUT only, as its mtime is what tells the kernel that its
 * cached listing is stale when sync did not say which conversation
 * changed. With a short name timeout, `find` over a large mount looked
 * every conversation up again.
 */
#define CONV_NAME_TIMEOUT 3600.0
#define PAGE 256
/* readdir offsets: 1.. for ".", ".." and subdirectories, MSG_OFF + umid
 * for messages, so a huge folder is read in pages by umid */
#define MSG_OFF (1LL << 40)

/* ---- attributes ---- */

bool is_message_ino(fuse_ino_t ino)
{
	return ino >= STORE_FIRST_UMID && !(ino & INO_KIND_MASK);
}

static bool msg_hidden(const struct store_msg *m)
{
	/* a message flagged \Deleted is gone as far as a reader goes, and
	 * so is an orphan (uid 0: no longer where we knew it) */
	const char *p = strstr(m->flags ? m->flags : "", "\\Deleted");

	/* so is one the user removed, until the server has it too; one
	 * the user wrote shows before it has a UID */
	return (!m->uid && m->dest <= 0) || m->dest == STORE_DEST_EXPUNGE ||
	       (p && (p[8] == '\0' || p[8] == ' '));
}

static void dir_attr(struct fs *fs, fuse_ino_t ino, struct stat *st)
{
	/* folders take new mail and folders; Conversations/, its
	 * directories and .convoyfs/ nothing, and say so (a file manager
	 * offers what works) */
	bool fixed = ino == INO_CONVERSATIONS || ino == INO_CTL_DIR ||
		     (ino & INO_KIND_MASK) == INO_CONV_BASE;

	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = S_IFDIR | (fixed ? 0500 : 0700);
	st->st_nlink = 2;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_blksize = 4096;
	/* the mount's time, not 1970: file managers sort and show it (a
	 * conversation's directory then takes its newest message's) */
	st->st_mtim.tv_sec = fs->mounted_at;
	st->st_ctim.tv_sec = fs->mounted_at;
	st->st_atim.tv_sec = fs->mounted_at;
	/*
	 * The kernel keeps every directory's listing (op_opendir) until
	 * told, or until it sees the mtime differ from the one it cached
	 * the listing under: so each mtime changes with its listing. A
	 * folder's: when sync last changed its listing; the root's and
	 * a folder parent's: when the folder tree last changed;
	 * Conversations/: when a conversation last did.
	 */
	if ((ino & INO_KIND_MASK) == INO_FOLDER_BASE)
		st->st_mtim = folder_mtime(fs, (int64_t)(ino & ~INO_KIND_MASK));
	else if (ino == INO_ROOT || (ino & INO_KIND_MASK) == INO_VIRT_BASE)
		st->st_mtim = folder_mtime(fs, 0);
	else if (ino == INO_CONVERSATIONS)
		st->st_mtim.tv_nsec = conv_mtime_nsec(fs);
	else if (ino == INO_RECOVERED)
		recovered_mtime(fs, &st->st_mtim);
	st->st_ctim = st->st_mtim;
}

static void msg_attr(struct fs *fs, const struct store_msg *m,
		     struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = (ino_t)m->umid;
	/* the content is the server's: read-only; a file manager still
	 * offers to move and delete it, as its folder is writable */
	st->st_mode = S_IFREG | 0400;
	/* one inode wherever it shows: its folder and its conversation */
	st->st_nlink = m->conv ? 2 : 1;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	uint64_t size = m->real_size >= 0 ? (uint64_t)m->real_size : m->size;

	/* RFC822.SIZE until the body was fetched, then its real length:
	 * a server's SIZE may be wrong, and reads stop at st_size */
	st->st_size = (off_t)size;
	st->st_blocks = (blkcnt_t)((size + 511) / 512);
	st->st_blksize = 4096;
	st->st_mtim.tv_sec = m->date;
	st->st_atim.tv_sec = m->date;
	st->st_ctim.tv_sec = m->date;
}

static bool is_conv_ino(fuse_ino_t ino)
{
	return (ino & INO_KIND_MASK) == INO_CONV_BASE;
}

/* how long the kernel may keep the attributes of @ino */
static double timeout_of(fuse_ino_t ino)
{
	return is_message_ino(ino) ? MSG_TIMEOUT : ENTRY_TIMEOUT;
}

/* how long the kernel may keep a name of @ino (Conversations/ and
 * .convoyfs/ are there for as long as the mount) */
static double name_timeout_of(fuse_ino_t ino)
{
	if (is_conv_ino(ino) || ino == INO_CONVERSATIONS || ino == INO_CTL_DIR)
		return CONV_NAME_TIMEOUT;
	return timeout_of(ino);
}

int get_conv(struct fs *fs, int64_t id, struct store_conv *c)
{
	struct store *st;
	int rc = borrow(fs, &st);

	if (rc)
		return rc;
	rc = store_conv_get(st, id, c);
	give_back(fs, st);
	if (!rc && !c->count) {
		store_conv_release(c);
		rc = -ENOENT;
	}
	return rc == -ENOENT ? rc : (rc ? -EIO : 0);
}

static int conv_dir_attr(struct fs *fs, fuse_ino_t ino, struct stat *st)
{
	struct store_conv c;
	int rc = get_conv(fs, (int64_t)(ino & ~INO_KIND_MASK), &c);

	if (rc)
		return rc;
	dir_attr(fs, ino, st);
	st->st_mtim.tv_sec = c.last_date;
	st->st_mtim.tv_nsec = conv_mtime_nsec(fs);
	st->st_ctim = st->st_mtim;
	st->st_atim.tv_sec = c.last_date;
	store_conv_release(&c);
	return 0;
}

size_t conv_name(char *buf, const struct store_conv *c)
{
	return names_conversation(buf, c->first_date, c->first_zone,
				  c->subject, c->id);
}

/* attributes of any directory inode; -ENOENT if it does not exist */
static int any_dir_attr(struct fs *fs, fuse_ino_t ino, struct stat *st)
{
	struct tree *t;
	bool found;

	if (ino == INO_ROOT || ino == INO_CONVERSATIONS || ino == INO_CTL_DIR ||
	    ino == INO_RECOVERED) {
		dir_attr(fs, ino, st);
		return 0;
	}
	if ((ino & INO_KIND_MASK) == INO_CONV_BASE)
		return conv_dir_attr(fs, ino, st);
	t = tree_get(fs);
	found = tree_find(t, ino) != NULL;
	tree_put(t);
	if (!found)
		return -ENOENT;
	dir_attr(fs, ino, st);
	return 0;
}

int get_msg(struct fs *fs, int64_t umid, struct store_msg *m)
{
	struct store *st;
	int rc = borrow(fs, &st);

	if (rc)
		return rc;
	rc = store_msg_get(st, umid, m);
	give_back(fs, st);
	if (!rc && msg_hidden(m)) {
		store_msg_release(m);
		rc = -ENOENT;
	}
	return rc == -ENOENT ? rc : (rc ? -EIO : 0);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct stat st;
	int rc = 0;

	count_req(req, REQ_GETATTR);
	if (is_message_ino(ino)) {
		struct store_msg m;

		rc = get_msg(fs, (int64_t)ino, &m);
		if (!rc) {
			msg_attr(fs, &m, &st);
			store_msg_release(&m);
		}
	} else if (ino == INO_STATUS || ino == INO_CTL) {
		file_attr(fs, ino, &st);
	} else if (is_staged_ino(ino)) {
		rc = staged_getattr(fs, ino, &st);
	} else if (is_recovered_ino(ino)) {
		rc = recovered_getattr(fs, ino, &st);
	} else {
		rc = any_dir_attr(fs, ino, &st);
	}
	if (rc)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_attr(req, &st, timeout_of(st.st_ino));
}

/* ---- lookup ---- */

static void reply_entry(fuse_req_t req, const struct stat *st)
{
	struct fuse_entry_param e;

	memset(&e, 0, sizeof(e));
	e.ino = st->st_ino;
	e.attr = *st;
	e.attr_timeout = timeout_of(e.ino);
	e.entry_timeout = name_timeout_of(e.ino);
	fuse_reply_entry(req, &e);
}

int lookup_message(struct fs *fs, int64_t folder, int64_t conv,
			  const char *name, struct stat *st)
{
	char expect[NAMES_MAX + 1];
	int64_t umid = names_message_umid(name);
	struct store_msg m;
	int rc;

	if (umid < STORE_FIRST_UMID)
		return -ENOENT;
	rc = get_msg(fs, umid, &m);
	if (rc)
		return rc;
	names_message(expect, m.date, m.zone, m.subject, m.umid);
	if ((folder ? store_msg_shown_in(&m) != folder : m.conv != conv) ||
	    strcmp(expect, name))
		rc = -ENOENT;
	else
		msg_attr(fs, &m, st);
	store_msg_release(&m);
	return rc;
}

static int lookup_conv(struct fs *fs, const char *name, struct stat *st)
{
	char expect[NAMES_MAX + 1];
	int64_t id = names_conversation_id(name);
	struct store_conv c;
	int rc;

	if (id <= 0)
		return -ENOENT;
	rc = get_conv(fs, id, &c);
	if (rc)
		return rc;
	conv_name(expect, &c);
	if (strcmp(expect, name))
		rc = -ENOENT;
	else
		rc = conv_dir_attr(fs, INO_CONV_BASE + (uint64_t)id, st);
	store_conv_release(&c);
	return rc;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_of(req);
	const struct tree_dir *dir, *child;
	struct stat st;
	struct tree *t;
	int rc = -ENOENT;

	count_req(req, REQ_LOOKUP);
	if (parent == INO_CTL_DIR) {
		if (!strcmp(name, "status")) {
			file_attr(fs, INO_STATUS, &st);
			rc = 0;
		} else if (!strcmp(name, "ctl")) {
			file_attr(fs, INO_CTL, &st);
			rc = 0;
		} else if (!strcmp(name, RECOVERED_NAME)) {
			dir_attr(fs, INO_RECOVERED, &st);
			rc = 0;
		}
		goto out;
	}
	if (parent == INO_RECOVERED) {
		rc = recovered_lookup(fs, name, &st);
		goto out;
	}
	if (parent == INO_CONVERSATIONS) {
		rc = lookup_conv(fs, name, &st);
		goto out;
	}
	if (is_conv_ino(parent)) {
		rc = lookup_message(fs, 0, (int64_t)(parent & ~INO_KIND_MASK),
				    name, &st);
		goto out;
	}
	if (parent == INO_ROOT && !strcmp(name, CONVERSATIONS_NAME)) {
		dir_attr(fs, INO_CONVERSATIONS, &st);
		rc = 0;
		goto out;
	}
	if (parent == INO_ROOT && !strcmp(name, CTL_DIR_NAME)) {
		dir_attr(fs, INO_CTL_DIR, &st);
		rc = 0;
		goto out;
	}
	t = tree_get(fs);
	dir = tree_find(t, parent);
	if (!dir) {
		tree_put(t);
		goto out;
	}
	child = tree_child(t, dir, name);
	if (child) {
		dir_attr(fs, child->ino, &st);
		rc = 0;
	} else if (dir->selectable) {
		int64_t folder = dir->folder;

		tree_put(t);
		rc = lookup_message(fs, folder, 0, name, &st);
		goto out;
	}
	tree_put(t);
out:
	if (rc)
		fuse_reply_err(req, -rc);
	else
		reply_entry(req, &st);
}

/* ---- readdir ---- */

struct dirbuf {
	fuse_req_t req;
	char *buf;
	size_t size, used;
	/* READDIRPLUS: each entry carries what a LOOKUP would answer, so
	 * that `ls -l` sends none */
	bool plus;
};

/*
 * Add an entry; false when the buffer is full. @attr, when not NULL, is
 * its full attributes, handed to the kernel with a READDIRPLUS; without
 * them (".", "..") the kernel makes no entry from it and looks it up.
 */
static bool dir_add_attr(struct dirbuf *d, const char *name,
			 const struct stat *attr, fuse_ino_t ino, mode_t mode,
			 off_t next)
{
	struct stat st = { .st_ino = ino, .st_mode = mode };
	size_t len;

	if (d->plus) {
		struct fuse_entry_param e;

		memset(&e, 0, sizeof(e));
		e.attr = attr ? *attr : st;
		if (attr) {
			e.ino = ino;
			e.attr_timeout = timeout_of(ino);
			e.entry_timeout = name_timeout_of(ino);
		}
		len = fuse_add_direntry_plus(d->req, d->buf + d->used,
					     d->size - d->used, name, &e, next);
	} else {
		len = fuse_add_direntry(d->req, d->buf + d->used,
					d->size - d->used, name, &st, next);
	}
	if (len > d->size - d->used)
		return false;
	d->used += len;
	return true;
}

/* an entry without attributes: ".", "..", and what only a READDIR lists */
static bool dir_add(struct dirbuf *d, const char *name, fuse_ino_t ino,
		    mode_t mode, off_t next)
{
	return dir_add_attr(d, name, NULL, ino, mode, next);
}

/* a directory entry with the attributes dir_attr() gives it */
static bool dir_add_dir(struct fs *fs, struct dirbuf *d, const char *name,
			fuse_ino_t ino, off_t next)
{
	struct stat st;

	dir_attr(fs, ino, &st);
	return dir_add_attr(d, name, &st, ino, S_IFDIR, next);
}

/* the messages of @folder, or of conversation @conv when @folder is 0 */
static int add_messages(struct fs *fs, struct dirbuf *d, int64_t folder,
			int64_t conv, int64_t after)
{
	struct store_msg page[PAGE];
	struct store *st;
	int rc = borrow(fs, &st);

	if (rc)
		return rc;
	for (;;) {
		size_t n = 0, i;
		bool full = false;

		rc = folder ? store_msg_list(st, folder, after, PAGE, page, &n)
			    : store_conv_messages(st, conv, after, PAGE, page,
						  &n);
		if (rc)
			break;
		for (i = 0; i < n; i++) {
			char name[NAMES_MAX + 1];

			after = page[i].umid;
			/* a pending move shows it in its target only */
			if (!full && !msg_hidden(&page[i]) &&
			    (!folder || store_msg_shown_in(&page[i]) == folder)) {
				struct stat sb;

				names_message(name, page[i].date, page[i].zone,
					      page[i].subject, page[i].umid);
				msg_attr(fs, &page[i], &sb);
				full = !dir_add_attr(d, name, &sb,
						     (fuse_ino_t)page[i].umid,
						     S_IFREG,
						     MSG_OFF + page[i].umid);
			}
			store_msg_release(&page[i]);
		}
		if (full || n < PAGE)
			break;
	}
	give_back(fs, st);
	return rc ? -EIO : 0;
}

static int add_convs(struct fs *fs, struct dirbuf *d, int64_t after)
{
	struct store_conv page[PAGE];
	long nsec = conv_mtime_nsec(fs);
	struct store *st;
	int rc = borrow(fs, &st);

	if (rc)
		return rc;
	for (;;) {
		size_t n = 0, i;
		bool full = false;

		rc = store_conv_list(st, after, PAGE, page, &n);
		if (rc)
			break;
		for (i = 0; i < n; i++) {
			char name[NAMES_MAX + 1];

			after = page[i].id;
			if (!full) {
				fuse_ino_t ino = INO_CONV_BASE +
						 (uint64_t)page[i].id;
				struct stat sb;

				/* as conv_dir_attr() has it */
				dir_attr(fs, ino, &sb);
				sb.st_mtim.tv_sec = page[i].last_date;
				sb.st_mtim.tv_nsec = nsec;
				sb.st_ctim = sb.st_mtim;
				sb.st_atim.tv_sec = page[i].last_date;
				conv_name(name, &page[i]);
				full = !dir_add_attr(d, name, &sb, ino, S_IFDIR,
						     MSG_OFF + page[i].id);
			}
			store_conv_release(&page[i]);
		}
		if (full || n < PAGE)
			break;
	}
	give_back(fs, st);
	return rc ? -EIO : 0;
}

/* the kernel's struct fuse_dirent (its ABI): what fuse_add_direntry()
 * writes, read back by recovered_plus() */
struct kernel_dirent {
	uint64_t ino;
	uint64_t off;
	uint32_t namelen;
	uint32_t type;
	char name[];
};

/*
 * .convoyfs/recovered/ as a READDIRPLUS: recovered.c lists it as a
 * READDIR does, into a buffer small enough that every entry fits again
 * with the room a READDIRPLUS entry takes, and its entries are copied
 * over without attributes (the kernel looks them up).
 */
static int recovered_plus(struct fs *fs, struct dirbuf *d, off_t off)
{
	size_t small = d->size / 4, used = 0, pos = 0;
	char *buf = xmalloc(small);
	int rc = recovered_readdir(fs, d->req, buf, small, off, &used);

	while (!rc && pos + sizeof(struct kernel_dirent) <= used) {
		struct kernel_dirent *k = (struct kernel_dirent *)(buf + pos);
		char name[NAMES_MAX + 1];

		snprintf(name, sizeof(name), "%.*s", (int)k->namelen, k->name);
		if (!dir_add(d, name, (fuse_ino_t)k->ino,
			     (mode_t)(k->type << 12), (off_t)k->off))
			break;
		pos += (sizeof(*k) + k->namelen + 7) & ~(size_t)7;
	}
	free(buf);
	return rc;
}

static void readdir_any(fuse_req_t req, fuse_ino_t ino, size_t size,
			off_t off, bool plus)
{
	struct fs *fs = fs_of(req);
	struct dirbuf d = { .req = req, .size = size, .plus = plus };
	const struct tree_dir *dir = NULL;
	struct tree *t = NULL;
	int64_t folder = 0;
	int rc = 0;

	d.buf = xmalloc(size);
	if (ino == INO_RECOVERED) {
		if (plus)
			rc = recovered_plus(fs, &d, off);
		else
			rc = recovered_readdir(fs, req, d.buf, size, off,
					       &d.used);
		goto reply;
	}
	if (ino == INO_CTL_DIR || ino == INO_CONVERSATIONS || is_conv_ino(ino)) {
		const char *names[] = { ".", "..", "status", "ctl",
					RECOVERED_NAME };
		const fuse_ino_t inos[] = { ino,
					    is_conv_ino(ino) ? INO_CONVERSATIONS
							     : INO_ROOT,
					    INO_STATUS, INO_CTL, INO_RECOVERED };
		size_t count = ino == INO_CTL_DIR ? 5 : 2;
		off_t i;

		if (is_conv_ino(ino) && off == 0) {
			struct stat st;

			rc = conv_dir_attr(fs, ino, &st);
			if (rc)
				goto reply;
		}
		for (i = off; i < (off_t)count; i++) {
			bool ok;

			/* status and ctl without attributes: status's
			 * size is its whole text, made at their lookup */
			if (i == 4) {
				ok = dir_add_dir(fs, &d, names[i], inos[i],
						 i + 1);
			} else {
				ok = dir_add(&d, names[i], inos[i],
					     i < 2 ? S_IFDIR : S_IFREG, i + 1);
			}
			if (!ok)
				goto reply;
		}
		if (off < MSG_OFF)
			off = MSG_OFF;
		if (ino == INO_CONVERSATIONS)
			rc = add_convs(fs, &d, off - MSG_OFF);
		else if (is_conv_ino(ino))
			rc = add_messages(fs, &d, 0,
					  (int64_t)(ino & ~INO_KIND_MASK),
					  off - MSG_OFF);
		goto reply;
	}
	t = tree_get(fs);
	dir = tree_find(t, ino);
	if (!dir) {
		rc = -ENOENT;
		goto reply;
	}
	if (off < MSG_OFF) {
		/* ".", "..", then the root's own entries, then subfolders */
		const char *extra[] = { CONVERSATIONS_NAME, CTL_DIR_NAME };
		const fuse_ino_t extra_ino[] = { INO_CONVERSATIONS,
						 INO_CTL_DIR };
		size_t nextra = ino == INO_ROOT ? 2 : 0;
		off_t i = off;
		bool full = false;

		for (; !full && i < (off_t)(2 + nextra + dir->nchildren); i++) {
			if (i < 2)
				full = !dir_add(&d, i ? ".." : ".", ino,
						S_IFDIR, i + 1);
			else if (i < (off_t)(2 + nextra))
				full = !dir_add_dir(fs, &d, extra[i - 2],
						    extra_ino[i - 2], i + 1);
			else {
				const struct tree_dir *c =
					&t->dirs[dir->children[i - 2 - nextra]];

				full = !dir_add_dir(fs, &d, c->name, c->ino,
						    i + 1);
			}
		}
		if (full)
			goto reply;
		off = MSG_OFF;
	}
	folder = dir->selectable ? dir->folder : 0;
	tree_put(t);
	t = NULL;
	if (folder)
		rc = add_messages(fs, &d, folder, 0, off - MSG_OFF);
reply:
	tree_put(t);
	if (rc && !d.used)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_buf(req, d.buf, d.used);
	free(d.buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	count_req(req, REQ_READDIR);
	readdir_any(req, ino, size, off, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size,
			   off_t off, struct fuse_file_info *fi)
{
	count_req(req, REQ_READDIRPLUS);
	readdir_any(req, ino, size, off, true);
}

/*
 * Every directory's listing may stay in the kernel's cache between
 * opens: it changes only by sync, which drops it (notify.c) and changes
 * its mtime (dir_attr), or by the mount's own writes, after which the
 * kernel drops it itself or is told. So no directory needs an OPENDIR:
 * where the kernel can do without, it is told ENOSYS once and opens
 * every directory itself from then on, keeping its listing, as the
 * flags below ask (a `find` over a large mount sent an OPENDIR and a
 * RELEASEDIR per conversation). Elsewhere Conversations/ is listed
 * anew each time, the .convoyfs/ directories too.
 */
static void op_opendir(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	count_req(req, REQ_OPENDIR);
	if (atomic_load(&fs_of(req)->no_opendir)) {
		fuse_reply_err(req, ENOSYS);
		return;
	}
	if ((ino & INO_KIND_MASK) == INO_FOLDER_BASE || is_conv_ino(ino)) {
		fi->cache_readdir = 1;
		fi->keep_cache = 1;
	}
	fuse_reply_open(req, fi);
}

/* ---- reading ---- */

static int open_body(struct fs *fs, int64_t umid)
{
	struct store *st;
	int rc, fd;

	rc = borrow(fs, &st);
	if (rc)
		return rc;
	fd = store_body_open(st, umid);
	give_back(fs, st);
	return fd;
}

static void reply_open(fuse_req_t req, struct fuse_file_info *fi, int fd)
{
	if (fd < 0) {
		/* gone, or the cache's disk full: said as such; any other
		 * failure to bring the body is an I/O error */
		fuse_reply_err(req, fd == -ENOENT || fd == -ENOSPC ? -fd : EIO);
		return;
	}
	fi->fh = (uint64_t)fd;
	/* the content never changes: the page cache may keep it; and
	 * nothing is written, so a close needs no FLUSH */
	fi->keep_cache = 1;
	fi->noflush = 1;
	if (fuse_reply_open(req, fi) == -ENOENT)
		close(fd); /* interrupted: nobody will release it */
}

/* an open waiting for its body to be fetched */
struct pending_open {
	struct fs *fs;
	fuse_req_t req;
	fuse_ino_t ino;
	struct fuse_file_info fi;
};

static void body_fetched(int rc, void *aux)
{
	struct pending_open *po = aux;

	reply_open(po->req, &po->fi,
		   rc ? rc : open_body(po->fs, (int64_t)po->ino));
	free(po);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct store_msg m;
	int rc, fd;

	count_req(req, REQ_OPEN);
	if (ino == INO_CTL || ino == INO_STATUS) {
		control_open(req, ino, fi);
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (is_recovered_ino(ino)) {
		fd = recovered_open(fs, ino);
		if (fd < 0) {
			fuse_reply_err(req, -fd);
			return;
		}
		fi->fh = (uint64_t)fd;
		if (fuse_reply_open(req, fi) == -ENOENT)
			close(fd);
		return;
	}
	if (!is_message_ino(ino)) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	/* a cached body opens without a look at its row: the kernel
	 * found the inode by a lookup that looked, and a message gone or
	 * hidden since had its entry dropped (notify.c); each store query
	 * costs its read lock's fcntl calls, on every open of grep -r */
	fd = open_body(fs, (int64_t)ino);
	if (fd == -ENOENT) {
		/* not cached: answered when the body is, from a fetcher,
		 * so this worker is free for others meanwhile */
		struct pending_open *po;

		rc = get_msg(fs, (int64_t)ino, &m);
		if (rc) {
			fuse_reply_err(req, -rc);
			return;
		}
		store_msg_release(&m);
		po = xcalloc(1, sizeof(*po));

		po->fs = fs;
		po->req = req;
		po->ino = ino;
		po->fi = *fi;
		rc = sync_fetch_body(fs->sync, (int64_t)ino, body_fetched, po);
		if (!rc)
			return;
		free(po);
		fd = rc;
	}
	reply_open(req, fi, fd);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	count_req(req, REQ_READ);
	if (ino == INO_CTL || ino == INO_STATUS) {
		control_read(req, ino, size, off, fi);
		return;
	}
	struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);

	buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	buf.buf[0].fd = (int)fi->fh;
	buf.buf[0].pos = off;
	fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
}

static void op_release(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	count_req(req, REQ_RELEASE);
	if (ino == INO_CTL || ino == INO_STATUS) {
		control_release(req, ino, fi);
		return;
	}
	if (is_staged_ino(ino)) {
		staged_release(req, ino);
		return;
	}
	close((int)fi->fh);
	fuse_reply_err(req, 0);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	count_req(req, REQ_FLUSH);
	if (is_staged_ino(ino)) {
		staged_flush(req, ino);
		return;
	}
	fuse_reply_err(req, 0);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct fs *fs = fs_of(req);
	struct statvfs sv;
	uint64_t used, limit;

	count_req(req, REQ_STATFS);
	memset(&sv, 0, sizeof(sv));
	sv.f_bsize = 4096;
	sv.f_frsize = 4096;
	sv.f_namemax = NAMES_MAX;
	/* df shows the mailbox's quota where the server has one (as
	 * the sync last heard it: no network wait here) */
	if (!sync_quota(fs->sync, &used, &limit)) {
		sv.f_blocks = (fsblkcnt_t)(limit / sv.f_frsize);
		sv.f_bfree = (fsblkcnt_t)((limit - used) / sv.f_frsize);
		sv.f_bavail = sv.f_bfree;
	} else {
		/* else the body cache: its budget and what it holds */
		struct store *st;

		limit = fs->a->cfg.cache_budget;
		used = 0;
		if (!borrow(fs, &st)) {
			store_body_total(st, &used);
			give_back(fs, st);
		}
		if (used > limit)
			used = limit;
		sv.f_blocks = (fsblkcnt_t)(limit / sv.f_frsize);
		sv.f_bfree = (fsblkcnt_t)((limit - used) / sv.f_frsize);
		sv.f_bavail = sv.f_bfree;
	}
	fuse_reply_statfs(req, &sv);
}

/* ---- what writes have no meaning here ---- */

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		       int to_set, struct fuse_file_info *fi)
{
	struct stat st;

	/* `echo sync > ctl` truncates first */
	if (ino == INO_CTL && to_set == FUSE_SET_ATTR_SIZE) {
		file_attr(fs_of(req), ino, &st);
		fuse_reply_attr(req, &st, ENTRY_TIMEOUT);
		return;
	}
	if (is_staged_ino(ino)) {
		int rc = staged_setattr(fs_of(req), ino, attr, to_set, &st);

		if (rc)
			fuse_reply_err(req, -rc);
		else
			fuse_reply_attr(req, &st, 0);
		return;
	}
	/* a message's content and times are the server's */
	fuse_reply_err(req, fs_of(req)->a->ro ? EROFS : EPERM);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
		     mode_t mode, dev_t rdev)
{
	fuse_reply_err(req, EROFS);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent,
		       const char *name)
{
	fuse_reply_err(req, EROFS);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
		    const char *newname)
{
	fuse_reply_err(req, EROFS);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
		     size_t size, off_t off, struct fuse_file_info *fi)
{
	if (is_staged_ino(ino)) {
		staged_write(req, ino, buf, size, off, fi);
		return;
	}
	if (ino != INO_CTL) {
		fuse_reply_err(req, EROFS);
		return;
	}
	control_write(req, ino, buf, size, off, fi);
}

/*
 * READDIRPLUS for every listing, not only the first page of one (the
 * kernel's "auto" mode): `ls -l` and `find -type f` read the whole
 * folder before they look at its files, and each page without
 * attributes cost a LOOKUP per message.
 */
static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	struct fs *fs = userdata;

	atomic_store(&fs->no_opendir,
		     (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT) != 0);
	if (conn->capable & FUSE_CAP_READDIRPLUS) {
		conn->want |= FUSE_CAP_READDIRPLUS;
		conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
	}
}

const struct fuse_lowlevel_ops fs_ops = {
	.init = op_init,
	.lookup = op_lookup,
	.getattr = op_getattr,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.opendir = op_opendir,
	.open = op_open,
	.read = op_read,
	.release = op_release,
	.flush = op_flush,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.statfs = op_statfs,
	.setattr = op_setattr,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.symlink = op_symlink,
	.rename = op_rename,
	.link = op_link,
	.create = op_create,
	.write = op_write,
	.setxattr = op_setxattr,
	.removexattr = op_removexattr,
};
