/*
 * mount.c - the mount's lifecycle: the session, the mount, daemonizing,
 * the notifier and sync threads, the loop and the teardown; and the pool
 * of store connections the operations borrow from.
 */
#define LOG_CAT "fs"
#include "fs_i.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

/* ---- store connections: a pool, one borrowed per operation ---- */

int borrow(struct fs *fs, struct store **out)
{
	struct store *st = NULL;
	int rc;

	pthread_mutex_lock(&fs->lock);
	if (fs->npool)
		st = fs->pool[--fs->npool];
	pthread_mutex_unlock(&fs->lock);
	if (st) {
		*out = st;
		return 0;
	}
	rc = store_open(fs->a->cfg.cache_dir, out);
	if (rc)
		log_error("cannot open the store: %s", strerror(-rc));
	return rc ? -EIO : 0;
}

void give_back(struct fs *fs, struct store *st)
{
	pthread_mutex_lock(&fs->lock);
	if (fs->npool < POOL_MAX) {
		fs->pool[fs->npool++] = st;
		st = NULL;
	}
	pthread_mutex_unlock(&fs->lock);
	store_close(st);
}

/* ---- the folder tree ---- */

struct tree *tree_get(struct fs *fs)
{
	struct tree *t;

	pthread_mutex_lock(&fs->lock);
	if (!fs->tree || atomic_exchange(&fs->folders_dirty, false)) {
		struct store_folder *f = NULL;
		struct store *st = fs->npool ? fs->pool[--fs->npool] : NULL;
		size_t n = 0;

		if (!st && store_open(fs->a->cfg.cache_dir, &st))
			st = NULL;
		if (st && !store_folder_list(st, &f, &n)) {
			tree_put(fs->tree);
			fs->tree = tree_build(f, n);
			store_folder_list_free(f, n);
		} else if (!fs->tree) {
			fs->tree = tree_build(NULL, 0);
		}
		if (st && fs->npool < POOL_MAX)
			fs->pool[fs->npool++] = st;
		else
			store_close(st);
	}
	t = fs->tree;
	atomic_fetch_add(&t->refs, 1);
	pthread_mutex_unlock(&fs->lock);
	return t;
}

int fs_run(struct fs_args *a, struct sync *sync, int argc, char **argv)
{
	struct fuse_args fargs = FUSE_ARGS_INIT(0, NULL);
	struct fuse_loop_config *lc;
	struct fuse_session *se;
	struct fs fs = { .a = a, .sync = sync };
	int ret = 1, rc;

	fs.uid = getuid();
	fs.gid = getgid();
	pthread_mutex_init(&fs.lock, NULL);
	pthread_mutex_init(&fs.note_lock, NULL);
	pthread_cond_init(&fs.note_wake, NULL);
	fuse_opt_add_arg(&fargs, argv[0]);
	if (a->debug)
		fuse_opt_add_arg(&fargs, "-d");
	fuse_opt_add_arg(&fargs, "-o");
	fuse_opt_add_arg(&fargs, a->allow_other
					 ? "fsname=convoyfs,subtype=convoyfs,"
					   "allow_other"
					 : "fsname=convoyfs,subtype=convoyfs");

	se = fuse_session_new(&fargs, &fs_ops, sizeof(fs_ops), &fs);
	if (!se)
		goto out_args;
	if (fuse_set_signal_handlers(se))
		goto out_session;
	if (fuse_session_mount(se, a->mountpoint)) {
		fprintf(stderr, "convoyfs: cannot mount on %s\n",
			a->mountpoint);
		goto out_signals;
	}
	fuse_daemonize(a->foreground);
	if (!a->foreground)
		log_set_syslog(true);

	fs.se = se;
	if (!pthread_create(&fs.notifier, NULL, notifier_main, &fs))
		fs.notifier_started = true;
	sync_set_changed(sync, on_change, &fs);
	rc = sync_start(sync);
	if (rc) {
		log_error("cannot start the sync: %s", strerror(-rc));
		goto out_unmount;
	}
	lc = fuse_loop_cfg_create();
	fuse_loop_cfg_set_max_threads(lc, 16);
	ret = fuse_session_loop_mt(se, lc) ? 1 : 0;
	fuse_loop_cfg_destroy(lc);
	sync_stop(sync);
out_unmount:
	if (fs.notifier_started) {
		pthread_mutex_lock(&fs.note_lock);
		fs.notes_stop = true;
		pthread_cond_signal(&fs.note_wake);
		pthread_mutex_unlock(&fs.note_lock);
		pthread_join(fs.notifier, NULL);
	}
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out_args:
	fuse_opt_free_args(&fargs);
	tree_put(fs.tree);
	for (size_t i = 0; i < fs.npool; i++)
		store_close(fs.pool[i]);
	pthread_mutex_destroy(&fs.lock);
	pthread_mutex_destroy(&fs.note_lock);
	pthread_cond_destroy(&fs.note_wake);
	return ret;
}
