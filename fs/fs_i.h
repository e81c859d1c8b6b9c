/*
 * fs_i.h - private to fs/: the state of a mounted filesystem and what
 * the files answering the kernel share. ops.c holds the operations,
 * control.c the .convoyfs files, xattr.c the extended attributes,
 * notify.c the kernel notifications and mount.c the mount's lifecycle
 * and its store pool.
 */
#ifndef CONVOY_FS_I_H
#define CONVOY_FS_I_H

#include <fuse_lowlevel.h>

#include "fs.h"

#include <sys/stat.h>

/* every FUSE worker (16, fs_run) may hold one connection, and the
 * notifier and a tree rebuild one more each: a smaller pool made
 * workers under load open and close connections (and their caches) */
#define POOL_MAX 20

struct note; /* notify.c */
struct moved; /* notify.c */

/* the requests the kernel sent, by operation, for .convoyfs/status:
 * what is cached in the kernel shows as requests not sent */
enum fs_req {
	REQ_LOOKUP, REQ_GETATTR, REQ_READDIR, REQ_READDIRPLUS, REQ_OPENDIR,
	REQ_OPEN, REQ_READ, REQ_RELEASE, REQ_FLUSH, REQ_GETXATTR,
	REQ_LISTXATTR, REQ_STATFS,
	REQ_NKINDS
};

struct status_buf;

struct fs {
	struct fs_args *a; /* borrowed */
	struct sync *sync; /* borrowed */
	struct fuse_session *se;
	/* the notifier thread tells the kernel, never from a handler or
	 * from the sync thread, which must not block on the kernel */
	pthread_t notifier;
	bool notifier_started;
	pthread_mutex_t note_lock; /* guards notes, notes_stop */
	pthread_cond_t note_wake;
	struct note *notes;
	bool notes_stop;
	struct moved *moves; /* guarded by note_lock */
	uid_t uid;
	gid_t gid;
	time_t mounted_at; /* the root's and .convoyfs's times */
	pthread_mutex_t lock; /* guards tree and pool */
	struct tree *tree;
	atomic_bool folders_dirty;
	struct store *pool[POOL_MAX];
	size_t npool;
	atomic_ulong reqs[REQ_NKINDS];
	/* what is known of each folder's listing, by folder id, and when
	 * sync last changed any folder's (notify.c); guarded by lock */
	struct folder_stamp *stamps;
	size_t nstamps;
	struct timespec all_changed;
	/* when sync last changed any conversation's listing: the
	 * nanoseconds of every conversation directory's mtime */
	struct timespec convs_changed;
	atomic_bool convs_note_queued; /* Conversations/'s listing to drop */
	/* the kernel opens directories without asking (op_init) */
	atomic_bool no_opendir;
	/* .convoyfs/status snapshots open (control.c); guarded by lock */
	struct status_buf *status_open;
};

/* a folder's listing as its directory's mtime tells it */
struct folder_stamp {
	struct timespec changed; /* when sync last changed the listing */
	int64_t newest; /* the newest message's date, once known */
	bool known; /* newest is for the listing as it is now */
	uint64_t count; /* its messages the server has, once counted */
	struct timespec counted; /* the last change count is as of */
	bool count_known;
};

static inline struct fs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

/* count_req - count one request of kind @k (relaxed: a statistic) */
static inline void count_req(fuse_req_t req, enum fs_req k)
{
	atomic_fetch_add_explicit(&fs_of(req)->reqs[k], 1,
				  memory_order_relaxed);
}

/* ---- mount.c: store connections and the folder tree ---- */

/*
 * borrow - a store connection from the pool, or a new one when the pool
 * is empty. Returns 0 or -EIO (logged here). Hand it back with
 * give_back(). Thread: any.
 */
int borrow(struct fs *fs, struct store **out);
/* give_back - return @st to the pool, or close it when the pool is full */
void give_back(struct fs *fs, struct store *st);
/*
 * tree_get - the folder tree, rebuilt first if sync changed the folders.
 * Never NULL; the caller holds a reference and drops it with tree_put().
 */
struct tree *tree_get(struct fs *fs);

/* ---- ops.c: the operations ---- */

extern const struct fuse_lowlevel_ops fs_ops;

/* is_message_ino - whether @ino is a message file's (its umid) */
bool is_message_ino(fuse_ino_t ino);
/*
 * get_msg - load message @umid into @m. Returns 0, -ENOENT if there is
 * no such message or it is flagged \Deleted, or -EIO. Release @m with
 * store_msg_release().
 */
int get_msg(struct fs *fs, int64_t umid, struct store_msg *m);
/*
 * get_conv - load conversation @id into @c. Returns 0, -ENOENT if there
 * is no such conversation or it is empty, or -EIO. Release @c with
 * store_conv_release().
 */
int get_conv(struct fs *fs, int64_t id, struct store_conv *c);
/*
 * lookup_message - the message file @name as it shows in folder @folder,
 * or (@folder 0) in conversation @conv: its attributes into @st. -ENOENT
 * if there is no such file there.
 */
int lookup_message(struct fs *fs, int64_t folder, int64_t conv,
		   const char *name, struct stat *st);
/* conv_name - the directory name of @c under Conversations/ into @buf
 * (NAMES_MAX + 1 bytes); returns its length */
size_t conv_name(char *buf, const struct store_conv *c);

/* ---- control.c: .convoyfs/status and .convoyfs/ctl ---- */

/* file_attr - the attributes of INO_STATUS or INO_CTL */
void file_attr(struct fs *fs, fuse_ino_t ino, struct stat *st);
/*
 * control_open, control_read, control_release, control_write - the
 * open, read, release and write operations for INO_STATUS and INO_CTL
 * only. Each replies to @req.
 */
void control_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void control_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		  struct fuse_file_info *fi);
void control_release(fuse_req_t req, fuse_ino_t ino,
		     struct fuse_file_info *fi);
void control_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
		   size_t size, off_t off, struct fuse_file_info *fi);
/*
 * control_forget_open - free the status snapshots still open when the
 * session ends: a RELEASE the kernel had queued at the unmount may never
 * be read. Thread: main, after the session loop.
 */
void control_forget_open(struct fs *fs);

/*
 * progress_start - when stderr is a terminal, redraw one line with the
 * first sync's progress (folders done, messages known/total, rate, time
 * left) until it is done; progress_stop ends it early. Foreground only.
 */
void progress_start(struct fs *fs);
void progress_stop(void);

/* ---- xattr.c: extended attributes (user.convoyfs.*) of messages ---- */

void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
		 size_t size);
void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);

/* ---- write.c: what writes become ---- */

void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
	       fuse_ino_t newparent, const char *newname, unsigned int flags);
void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name);
void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name);
void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
	      mode_t mode);
void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
		 const char *value, size_t size, int flags);
void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name);
void op_create(fuse_req_t req, fuse_ino_t parent, const char *name,
	       mode_t mode, struct fuse_file_info *fi);
/* a file being written (created here, appended at its close): the
 * operations ops.c hands over for its inode */
bool is_staged_ino(fuse_ino_t ino);
int staged_getattr(struct fs *fs, fuse_ino_t ino, struct stat *st);
int staged_setattr(struct fs *fs, fuse_ino_t ino, const struct stat *attr,
		   int to_set, struct stat *out);
void staged_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
		  size_t size, off_t off, struct fuse_file_info *fi);
void staged_flush(fuse_req_t req, fuse_ino_t ino);
void staged_release(fuse_req_t req, fuse_ino_t ino);

/* ---- recovered.c: .convoyfs/recovered/, content the server refused ---- */

#define RECOVERED_NAME "recovered"
bool is_recovered_ino(fuse_ino_t ino);
int recovered_getattr(struct fs *fs, fuse_ino_t ino, struct stat *st);
/* recovered_mtime - the recovered directory's mtime into *@t, left as it
 * is while there is no such directory: the kernel keeps its listing
 * until it changes */
void recovered_mtime(struct fs *fs, struct timespec *t);
int recovered_lookup(struct fs *fs, const char *name, struct stat *st);
/* an fd to read the file, or -errno */
int recovered_open(struct fs *fs, fuse_ino_t ino);
/* the server's reason (user.convoyfs.reason), malloc'ed */
int recovered_reason(struct fs *fs, fuse_ino_t ino, char **text);
int recovered_unlink(struct fs *fs, const char *name);
int recovered_readdir(struct fs *fs, fuse_req_t req, char *buf, size_t size,
		      off_t off, size_t *used);

/* ---- notify.c: telling the kernel ---- */

/*
 * notifier_main - the notifier thread: invalidates the queued names in
 * the kernel until fs->notes_stop is set, then frees what is left.
 */
void *notifier_main(void *arg);
/*
 * on_change - the sync's changed callback (@aux is the struct fs): marks
 * the folder tree stale, or queues the names of a message that is gone.
 * Thread: the sync thread; never blocks on the kernel.
 */
void on_change(const struct sync_change *c, void *aux);
/*
 * folder_mtime - folder @folder's directory mtime: the date of its newest
 * message (the mount's time when it has none), so `ls -lt` sorts folders
 * by their latest mail. The nanoseconds are those of the moment sync last
 * changed its listing: the kernel compares the whole mtime with the one
 * it cached a listing under and drops the listing when they differ, so
 * a listing read just before a change and cached just after the
 * change's notification cannot stay, even when the change left the
 * newest date as it was. Reads the store when the newest date is not
 * known since the last change. Thread: any.
 */
struct timespec folder_mtime(struct fs *fs, int64_t folder);

/*
 * folder_count - the messages of @folder the server has (UIDs known)
 * into *@count, as store_folder_count() says; counted with @st once
 * after each change sync tells, as .convoyfs/status is read often
 * (counting a million messages takes 40 ms). Thread: any.
 */
int folder_count(struct fs *fs, struct store *st, int64_t folder,
		 uint64_t *count);

/* conv_mtime_nsec - what every conversation directory's mtime carries in
 * its nanoseconds, so that the kernel drops a listing it cached when
 * sync changed some conversation after (notify.c) */
long conv_mtime_nsec(struct fs *fs);
/*
 * moved_message - the mount moved message @umid, whose own name is @name
 * (the one lookup_message() checked), to folder @to, which the kernel
 * now shows as @newname in @newparent: a name other than the message's
 * is forgotten at once, and if the server refuses the move
 * (the message shows in its old folder again, and sync says only that
 * folder changed), the name in @to is forgotten then. Thread: a FUSE
 * worker, after sync_move().
 */
void moved_message(struct fs *fs, int64_t umid, const char *name, int64_t to,
		   fuse_ino_t newparent, const char *newname);
/*
 * flagged_message - the mount changed the flags of message @umid: its
 * folder's listing goes, and its names too if \Deleted now hides it.
 * Thread: a FUSE worker, after sync_set_flags().
 */
void flagged_message(struct fs *fs, int64_t umid);

#endif
