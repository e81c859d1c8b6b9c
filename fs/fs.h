/*
 * fs.h - declarations shared inside fs/: the command line, the folder
 * tree and the FUSE operations. fs/ speaks FUSE; it reaches the server
 * only through sync.h and the database only through store.h.
 */
#ifndef CONVOY_FS_H
#define CONVOY_FS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "store.h"
#include "sync.h"

/* ---- args.c: the command line and the password ---- */

struct fs_args {
	bool foreground;
	bool debug; /* -d: FUSE debug output, implies -f */
	bool help;
	bool version;
	char *mountpoint; /* owned */
	char *debug_cats; /* owned, may be NULL: -o debug=CATS */
	char *password_command; /* owned, may be NULL */
	bool allow_other;
	bool nonempty; /* -o nonempty: mount over a directory with files */
	bool ro; /* -o ro: every write fails with EROFS */
	bool status; /* convoyfs status MOUNTPOINT: print, do not mount */
	char *log_file; /* owned, may be NULL: -o log_file=PATH, absolute */
	struct sync_config cfg; /* filled from the URL and -o options */
};

/*
 * args_parse - parse `convoyfs [-f] [-d] [-o OPT[,OPT...]] URL MOUNTPOINT`.
 * Returns 0, or -EINVAL with one line in @err. Fills defaults (port,
 * cache_dir, poll_interval, timeout). cafile and cache_dir come out
 * absolute, taken from the working directory now: the daemon works
 * from / (password_command is a command, run as given).
 */
int args_parse(int argc, char **argv, struct fs_args *a, char *err,
	       size_t errlen);

/*
 * args_password - get the password: password_command's first line of
 * output, else ~/.netrc (machine HOST login USER), else a prompt without
 * echo when stdin is a terminal. A password with CR, LF or NUL is
 * refused. Returns 0, or -errno with one line in @err.
 */
int args_password(struct fs_args *a, char *err, size_t errlen);
void args_release(struct fs_args *a);
void args_usage(FILE *out);

/* ---- tree.c: folder directories ---- */

#define INO_ROOT 1ULL
#define INO_CONVERSATIONS 2ULL
#define INO_CTL_DIR 3ULL
#define INO_STATUS 4ULL
#define INO_CTL 5ULL
#define INO_RECOVERED 6ULL /* .convoyfs/recovered */
#define INO_FOLDER_BASE (1ULL << 48) /* + folder id */
#define INO_CONV_BASE (2ULL << 48) /* + conversation id */
#define INO_VIRT_BASE (3ULL << 48) /* + hash of the path: a parent only */
#define INO_STAGED_BASE (4ULL << 48) /* + a counter: a file being written */
#define INO_RECOVERED_BASE (5ULL << 48) /* + umid: .convoyfs/recovered/ */
#define INO_KIND_MASK (~((1ULL << 48) - 1))

#define CONVERSATIONS_NAME "Conversations"
#define CTL_DIR_NAME ".convoyfs"

struct tree_dir {
	uint64_t ino;
	char *name; /* owned: the sanitised, unique directory name */
	int64_t folder; /* store folder id; 0 for the root and parents only */
	bool selectable; /* holds messages */
	size_t parent; /* index into tree->dirs */
	size_t *children; /* owned: indexes into tree->dirs */
	size_t nchildren;
};

struct tree {
	struct tree_dir *dirs; /* owned: [0] is the root */
	size_t n;
	atomic_int refs;
};

/*
 * tree_build - the directory tree of @folders: names split by each
 * folder's delimiter, every component sanitised (names_component),
 * siblings made unique with " #<id>", missing parents made up. The root
 * keeps the names of its own entries (Conversations) free.
 */
struct tree *tree_build(const struct store_folder *folders, size_t n);
void tree_put(struct tree *t);
const struct tree_dir *tree_find(const struct tree *t, uint64_t ino);
const struct tree_dir *tree_child(const struct tree *t,
				  const struct tree_dir *dir,
				  const char *name);
/*
 * tree_moved - call @fn(parent inode, name, @aux) for every directory
 * entry of @old that @now no longer has: the same name under the same
 * parent with the same inode. A folder deleted or renamed on the server
 * leaves such an entry, which the kernel must forget.
 */
void tree_moved(const struct tree *old, const struct tree *now,
		void (*fn)(uint64_t parent, const char *name, void *aux),
		void *aux);

/* ---- mount.c: the filesystem (private parts in fs_i.h) ---- */

struct fs;

/*
 * fs_check_mountpoint - whether @a->mountpoint may be mounted on: an
 * existing directory, not a mount point already, and empty unless
 * -o nonempty. Makes @a->mountpoint its absolute real path (the daemon
 * unmounts it from /). Returns 0, or -errno with one line in @err.
 */
int fs_check_mountpoint(struct fs_args *a, char *err, size_t errlen);

/*
 * fs_run - mount at @a->mountpoint, daemonize unless foreground, start
 * @sync and serve until unmounted or signalled (SIGINT, SIGTERM, SIGHUP).
 * Returns the exit status: 0 for an unmount or a signal, 1 on failure.
 */
int fs_run(struct fs_args *a, struct sync *sync, int argc, char **argv);

#endif
