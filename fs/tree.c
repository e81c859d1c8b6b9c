/*
 * tree.c - the folder directories. Folders are few (hundreds at most),
 * so the whole tree is rebuilt from the store when the folder list
 * changes, and readers hold a reference to the tree they use.
 */
#include "fs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "names.h"

static uint64_t fnv64(const char *s, uint64_t h)
{
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 0x100000001b3ULL;
	}
	return h;
}

static size_t add_dir(struct tree *t, size_t *cap, size_t parent,
		      const char *name, uint64_t ino, int64_t folder)
{
	struct tree_dir *d, *p;

	if (t->n == *cap) {
		*cap = *cap ? *cap * 2 : 16;
		t->dirs = xrealloc(t->dirs, *cap * sizeof(*t->dirs));
	}
	d = &t->dirs[t->n];
	memset(d, 0, sizeof(*d));
	d->ino = ino;
	d->name = xstrdup(name);
	d->folder = folder;
	d->parent = parent;
	if (t->n) {
		p = &t->dirs[parent];
		p->children = xrealloc(p->children,
				       (p->nchildren + 1) * sizeof(size_t));
		p->children[p->nchildren++] = t->n;
	}
	return t->n++;
}

static ssize_t child_index(const struct tree *t, size_t parent,
			   const char *name)
{
	const struct tree_dir *p = &t->dirs[parent];

	for (size_t i = 0; i < p->nchildren; i++)
		if (!strcmp(t->dirs[p->children[i]].name, name))
			return (ssize_t)p->children[i];
	return -1;
}

static bool name_taken(const struct tree *t, size_t parent, const char *name)
{
	if (parent == 0 && (!strcmp(name, CONVERSATIONS_NAME) ||
			    !strcmp(name, CTL_DIR_NAME)))
		return true;
	return child_index(t, parent, name) >= 0;
}

/* add folder @f under the root, making up parents as needed */
static void add_folder(struct tree *t, size_t *cap,
		       const struct store_folder *f)
{
	const char *p = f->display, *end;
	size_t parent = 0;
	char path_hash_buf[NAMES_MAX + 1];
	uint64_t h = 0xcbf29ce484222325ULL;

	for (;;) {
		char comp[NAMES_MAX + 1];
		bool last;
		ssize_t idx;

		end = f->delim ? strchr(p, f->delim) : NULL;
		last = !end || !end[1];
		if (!end)
			end = p + strlen(p);
		names_component(comp, p, (size_t)(end - p));
		h = fnv64(comp, h);
		h = fnv64("/", h);
		idx = child_index(t, parent, comp);
		if (!last) {
			if (idx < 0)
				idx = (ssize_t)add_dir(
					t, cap, parent, comp,
					INO_VIRT_BASE |
						(h & ~INO_KIND_MASK),
					0);
			parent = (size_t)idx;
			p = end + 1;
			continue;
		}
		if (idx >= 0 && !t->dirs[idx].folder) {
			/* a parent made up before: it is a folder after all */
			t->dirs[idx].folder = f->id;
			t->dirs[idx].ino = INO_FOLDER_BASE + (uint64_t)f->id;
			t->dirs[idx].selectable = !f->noselect;
			return;
		}
		if (idx >= 0 || name_taken(t, parent, comp)) {
			/* two folders sanitised to one name */
			char suffix[32];
			size_t sl = (size_t)snprintf(suffix, sizeof(suffix),
						     " #%lld",
						     (long long)f->id);
			size_t cl = strlen(comp);

			if (cl + sl > NAMES_MAX)
				cl = NAMES_MAX - sl;
			/* back off to a UTF-8 character boundary */
			while (cl && ((unsigned char)comp[cl] & 0xC0) == 0x80)
				cl--;
			memcpy(path_hash_buf, comp, cl);
			memcpy(path_hash_buf + cl, suffix, sl + 1);
			snprintf(comp, sizeof(comp), "%s", path_hash_buf);
		}
		idx = (ssize_t)add_dir(t, cap, parent, comp,
				       INO_FOLDER_BASE + (uint64_t)f->id, f->id);
		t->dirs[idx].selectable = !f->noselect;
		return;
	}
}

static bool name_is_clean(const struct store_folder *f)
{
	const char *p = f->display;

	for (;;) {
		const char *end = f->delim ? strchr(p, f->delim) : NULL;
		size_t len = end ? (size_t)(end - p) : strlen(p);
		char comp[NAMES_MAX + 1];

		if (names_component(comp, p, len) != len || memcmp(comp, p, len))
			return false;
		if (!end)
			return true;
		p = end + 1;
	}
}

struct tree *tree_build(const struct store_folder *folders, size_t n)
{
	struct tree *t = xcalloc(1, sizeof(*t));
	size_t cap = 0;

	atomic_init(&t->refs, 1);
	add_dir(t, &cap, 0, "", INO_ROOT, 0);
	/* folders whose names need no change first, so a name the server
	 * really has is never taken by another one sanitised onto it */
	for (int pass = 0; pass < 2; pass++)
		for (size_t i = 0; i < n; i++)
			if (name_is_clean(&folders[i]) == (pass == 0))
				add_folder(t, &cap, &folders[i]);
	return t;
}

void tree_put(struct tree *t)
{
	if (!t || atomic_fetch_sub(&t->refs, 1) != 1)
		return;
	for (size_t i = 0; i < t->n; i++) {
		free(t->dirs[i].name);
		free(t->dirs[i].children);
	}
	free(t->dirs);
	free(t);
}

const struct tree_dir *tree_find(const struct tree *t, uint64_t ino)
{
	for (size_t i = 0; i < t->n; i++)
		if (t->dirs[i].ino == ino)
			return &t->dirs[i];
	return NULL;
}

void tree_moved(const struct tree *old, const struct tree *now,
		void (*fn)(uint64_t parent, const char *name, void *aux),
		void *aux)
{
	for (size_t i = 1; i < old->n; i++) {
		const struct tree_dir *d = &old->dirs[i];
		const struct tree_dir *p = &old->dirs[d->parent];
		const struct tree_dir *np = tree_find(now, p->ino);
		const struct tree_dir *nd = np ? tree_child(now, np, d->name)
					       : NULL;

		if (!nd || nd->ino != d->ino)
			fn(p->ino, d->name, aux);
	}
}

const struct tree_dir *tree_child(const struct tree *t,
				  const struct tree_dir *dir, const char *name)
{
	ssize_t idx = child_index(t, (size_t)(dir - t->dirs), name);

	return idx < 0 ? NULL : &t->dirs[idx];
}
