/*
 * writes.c - what a write in the mount becomes (DESIGN §6), on the
 * caller's thread: the names and flags the server will be sent are
 * made and checked here, the change is applied to the store and
 * recorded as an op in one transaction (store/ops.c), and the sync
 * thread is told to run it (ops.c).
 */
#define LOG_CAT "sync"
#include "engine.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

int sync_move(struct sync *s, struct store *st, int64_t umid, int64_t folder)
{
	struct store_folder f;
	int rc = store_folder_get(st, folder, &f);

	if (rc)
		return rc;
	if (f.noselect) {
		log_warn("cannot move mail into %s: it holds no messages on "
			 "the server",
			 f.display);
		rc = -EPERM;
	}
	store_folder_release(&f);
	if (!rc)
		rc = store_op_move(st, umid, folder);
	if (!rc)
		ops_kick(s);
	return rc;
}

/* whether @f is where rm moves mail: SPECIAL-USE \Trash (2), or one
 * called Trash at the top or under INBOX, where Cyrus keeps folders (1) */
static int trash_rank(const struct store_folder *f)
{
	const char *d = f->display;

	if (f->role && !strcmp(f->role, "Trash"))
		return 2;
	if (!strcasecmp(d, "Trash") ||
	    (!strncasecmp(d, "INBOX", 5) && d[5] && d[5] == f->delim &&
	     !strcasecmp(d + 6, "Trash")))
		return 1;
	return 0;
}

/* the folder rm moves mail to, in *@id; -EPERM, said in the log, if
 * there is none that holds mail */
static int trash_folder(struct sync *s, struct store *st, int64_t *id)
{
	struct store_folder *v = NULL;
	const char *unusable = NULL;
	int best = 0, rc;
	size_t n = 0;

	*id = 0;
	rc = store_folder_list(st, &v, &n);
	if (rc)
		return rc;
	for (size_t i = 0; i < n && best < 2; i++) {
		int r = trash_rank(&v[i]);

		if (r && v[i].noselect) {
			unusable = unusable ? unusable : v[i].display;
			continue;
		}
		if (r > best) {
			best = r;
			*id = v[i].id;
		}
	}
	if (!*id && unusable)
		log_warn("rm: the server lists %s as a folder that holds no "
			 "mail (\\Noselect); nothing removed", unusable);
	else if (!*id)
		log_warn("rm: the server has no Trash folder (SPECIAL-USE "
			 "\\Trash or one named Trash); nothing removed");
	store_folder_list_free(v, n);
	if (*id)
		return 0;
	/* the folder list may be behind the server's (a Trash made or
	 * finished since): the next rm sees a fresh one */
	sync_request_refresh(s);
	return -EPERM;
}

int sync_remove(struct sync *s, struct store *st, int64_t umid)
{
	struct store_msg m;
	int64_t trash;
	int rc;

	rc = trash_folder(s, st, &trash);
	if (rc)
		return rc;
	rc = store_msg_get(st, umid, &m);
	if (rc)
		return rc;
	if (store_msg_shown_in(&m) == trash)
		rc = store_op_expunge(st, umid);
	else
		rc = store_op_move(st, umid, trash);
	store_msg_release(&m);
	if (!rc)
		ops_kick(s);
	return rc;
}

static const char *const system_flags[] = { "\\Answered", "\\Deleted",
					    "\\Draft", "\\Flagged", "\\Seen" };

/* RFC 3501 atom-specials, and '\' which only system flags begin with */
static bool keyword_ok(const char *w, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)w[i];

		if (c <= 0x20 || c >= 0x7f || strchr("(){%*\"\\]", c))
			return false;
	}
	return len > 0;
}

/*
 * The flags of @in as the store keeps them: system flags spelled as
 * RFC 3501 does, keywords whole, each once (keywords compare without
 * case: the first spelling stays). NULL (and a log line) if a word is
 * neither.
 */
static char *flags_checked(const char *in)
{
	char *out = xmalloc(strlen(in) + 1), *o = out;
	const char *p = in;

	*o = '\0';
	while (*p) {
		const char *w;
		size_t len;

		while (*p && isspace((unsigned char)*p))
			p++;
		if (!*p)
			break;
		w = p;
		while (*p && !isspace((unsigned char)*p))
			p++;
		len = (size_t)(p - w);
		const char *word = NULL;

		if (*w == '\\') {
			for (size_t i = 0; i < 5 && !word; i++)
				if (strlen(system_flags[i]) == len &&
				    !strncasecmp(system_flags[i], w, len))
					word = system_flags[i];
			if (!word && len == 7 && !strncasecmp(w, "\\Recent", 7))
				continue; /* the server's alone to set */
			if (!word) {
				log_warn("flags: %.*s is not a system flag",
					 (int)len, w);
				free(out);
				return NULL;
			}
			len = strlen(word);
		} else if (keyword_ok(w, len)) {
			word = w;
		} else {
			log_warn("flags: \"%.*s\" cannot be an IMAP keyword",
				 (int)len > 80 ? 80 : (int)len, w);
			free(out);
			return NULL;
		}
		/* once, whatever the case */
		bool dup = false;

		for (const char *q = out; *q && !dup;) {
			const char *e = strchrnul(q, ' ');

			dup = (size_t)(e - q) == len && !strncasecmp(q, word, len);
			q = *e ? e + 1 : e;
		}
		if (dup)
			continue;
		if (o != out)
			*o++ = ' ';
		memcpy(o, word, len);
		o += len;
		*o = '\0';
	}
	return out;
}

int sync_set_flags(struct sync *s, struct store *st, int64_t umid,
		   const char *flags)
{
	char *want = flags_checked(flags);
	int rc;

	if (!want)
		return -EINVAL;
	rc = store_op_flags(st, umid, want);
	free(want);
	if (!rc)
		ops_kick(s);
	return rc;
}

/* the hierarchy delimiter folders are made with under @parent (0: the
 * top, where INBOX's, or any folder's, tells) */
static char delimiter(struct store *st, const struct store_folder *parent)
{
	struct store_folder *v = NULL;
	size_t n = 0;
	char d = 0;

	if (parent)
		return parent->delim;
	if (store_folder_list(st, &v, &n))
		return 0;
	for (size_t i = 0; i < n; i++)
		if (v[i].delim && (!d || !strcasecmp(v[i].name, "INBOX")))
			d = v[i].delim;
	store_folder_list_free(v, n);
	return d;
}

/*
 * The server name and display name of @name (UTF-8, one component)
 * under @parent (NULL: the top), into *@raw and *@display (malloc'ed).
 * -EINVAL for a name the server could not take as one component.
 */
static int child_name(struct store *st, const struct store_folder *parent,
		      const char *name, char **raw, char **display)
{
	char d = delimiter(st, parent);
	char *enc;

	*raw = *display = NULL;
	if (!*name || !strcmp(name, ".") || !strcmp(name, "..") ||
	    (d && strchr(name, d)) || !conn_name_ok(name))
		return -EINVAL;
	if (parent && !d) {
		log_warn("%s: the server keeps no folders under folders",
			 parent->display);
		return -EPERM;
	}
	enc = utf7_encode(name);
	if (!enc)
		return -EINVAL;
	if (parent) {
		*raw = xasprintf("%s%c%s", parent->name, d, enc);
		*display = xasprintf("%s%c%s", parent->display, d, name);
		free(enc);
	} else {
		*raw = enc;
		*display = xstrdup(name);
	}
	return 0;
}

/* whether a folder called @raw is in the store */
static bool folder_exists(struct store *st, const char *raw)
{
	struct store_folder *v = NULL;
	size_t n = 0;
	bool found = false;

	if (store_folder_list(st, &v, &n))
		return false;
	for (size_t i = 0; i < n && !found; i++)
		found = !strcmp(v[i].name, raw);
	store_folder_list_free(v, n);
	return found;
}

int sync_mkdir(struct sync *s, struct store *st, int64_t parent,
	       const char *name, int64_t *folder)
{
	struct store_folder p, f = { 0 };
	char *raw, *display;
	int rc = 0;

	if (parent) {
		rc = store_folder_get(st, parent, &p);
		if (rc)
			return rc;
	}
	rc = child_name(st, parent ? &p : NULL, name, &raw, &display);
	if (!rc && folder_exists(st, raw))
		rc = -EEXIST;
	if (!rc) {
		f.name = raw;
		f.display = display;
		f.delim = delimiter(st, parent ? &p : NULL);
		rc = store_op_create(st, &f, folder);
	}
	if (!rc)
		ops_kick(s);
	free(raw);
	free(display);
	if (parent)
		store_folder_release(&p);
	return rc;
}

bool folder_is_under(const char *name, const char *parent, char d)
{
	size_t len = strlen(parent);

	return !strncmp(name, parent, len) &&
	       (!name[len] || (d && name[len] == d));
}

int sync_rmdir(struct sync *s, struct store *st, int64_t folder)
{
	struct store_folder f, *v = NULL;
	size_t n = 0;
	int rc = store_folder_get(st, folder, &f);

	if (rc)
		return rc;
	if (!strcasecmp(f.name, "INBOX")) {
		rc = -EPERM;
		goto out;
	}
	rc = store_folder_list(st, &v, &n);
	for (size_t i = 0; !rc && i < n; i++)
		if (v[i].id != f.id && folder_is_under(v[i].name, f.name, f.delim))
			rc = -ENOTEMPTY;
	store_folder_list_free(v, n);
	if (!rc)
		rc = store_op_delete(st, folder);
	if (!rc)
		ops_kick(s);
out:
	store_folder_release(&f);
	return rc;
}

int sync_rename_folder(struct sync *s, struct store *st, int64_t folder,
		       int64_t parent, const char *name)
{
	struct store_folder f, p, *v = NULL, *moved = NULL;
	char *raw = NULL, *display = NULL;
	size_t n = 0, k = 0;
	int rc;

	rc = store_folder_get(st, folder, &f);
	if (rc)
		return rc;
	if (parent) {
		rc = store_folder_get(st, parent, &p);
		if (rc)
			goto out_f;
	}
	if (!strcasecmp(f.name, "INBOX") ||
	    (parent && folder_is_under(p.name, f.name, f.delim))) {
		/* RENAME INBOX moves its mail, not the folder; a folder
		 * cannot go under itself */
		rc = -EPERM;
		goto out_p;
	}
	rc = child_name(st, parent ? &p : NULL, name, &raw, &display);
	if (!rc && folder_exists(st, raw))
		rc = -EEXIST;
	if (!rc)
		rc = store_folder_list(st, &v, &n);
	if (rc)
		goto out_p;
	/* the folder and every one below it: RENAME takes them along */
	moved = xcalloc(n ? n : 1, sizeof(*moved));
	for (size_t i = 0; i < n; i++) {
		const char *rest;

		if (!folder_is_under(v[i].name, f.name, f.delim))
			continue;
		rest = v[i].name + strlen(f.name);
		moved[k] = v[i];
		moved[k].name = xasprintf("%s%s", raw, rest);
		moved[k].display = utf7_decode(moved[k].name);
		if (!moved[k].display)
			moved[k].display = xstrdup(moved[k].name);
		k++;
	}
	rc = store_op_rename(st, moved, k, f.name, raw);
	for (size_t i = 0; i < k; i++) {
		free(moved[i].name);
		free(moved[i].display);
	}
	free(moved);
	store_folder_list_free(v, n);
	if (!rc)
		ops_kick(s);
out_p:
	free(raw);
	free(display);
	if (parent)
		store_folder_release(&p);
out_f:
	store_folder_release(&f);
	return rc;
}

/* ---- a new message written into a folder: APPEND ---- */

/* the most of a header block parsed for the names a file shows */
#define APPEND_HEADER_MAX (256 * 1024)

struct staging {
	int out;
	off_t len; /* bytes written to @out */
	char *header; /* the header block, up to APPEND_HEADER_MAX */
	size_t hlen;
	bool at_line_start, header_done, first_line, name_seen;
	bool cr; /* the last byte read was a CR */
	char buf[65536];
	size_t used;
};

static int stage_flush(struct staging *g)
{
	size_t off = 0;

	while (off < g->used) {
		ssize_t k = write(g->out, g->buf + off, g->used - off);

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -errno;
		off += (size_t)k;
	}
	g->len += (off_t)g->used;
	g->used = 0;
	return 0;
}

static int stage_put(struct staging *g, char c)
{
	if (g->used == sizeof(g->buf)) {
		int rc = stage_flush(g);

		if (rc)
			return rc;
	}
	g->buf[g->used++] = c;
	if (!g->header_done && g->hlen < APPEND_HEADER_MAX) {
		g->header = xrealloc(g->header, g->hlen + 1);
		g->header[g->hlen++] = c;
	}
	return 0;
}

/*
 * One line end seen (CRLF written): a line that was empty ends the
 * header; a header line must have begun with a field name and a colon,
 * or continued the one before (RFC 5322 §2.2).
 */
static int stage_line_end(struct staging *g)
{
	int rc = stage_put(g, '\r');

	if (!rc)
		rc = stage_put(g, '\n');
	if (rc)
		return rc;
	if (!g->header_done) {
		if (g->at_line_start && g->first_line)
			return -EINVAL; /* an empty line first: no header */
		if (g->at_line_start)
			g->header_done = true; /* the empty line */
		else if (!g->name_seen)
			return -EINVAL;
	}
	g->at_line_start = true;
	g->first_line = false;
	return 0;
}

static int stage_byte(struct staging *g, char c)
{
	if (c == '\0')
		return -EINVAL; /* IMAP takes no NUL in a message */
	if (c == '\n') {
		g->cr = false;
		return stage_line_end(g);
	}
	if (g->cr) {
		/* a lone CR is a line end too */
		int rc;

		g->cr = false;
		rc = stage_line_end(g);
		if (rc)
			return rc;
	}
	if (c == '\r') {
		g->cr = true;
		return 0;
	}
	if (!g->header_done) {
		unsigned char u = (unsigned char)c;

		if (g->at_line_start && (c == ' ' || c == '\t') &&
		    !g->first_line) {
			g->name_seen = true; /* a folded line goes on */
		} else if (g->at_line_start) {
			/* a field name: printable, no ':', at least one */
			if (u <= 32 || u >= 127 || c == ':')
				return -EINVAL;
			g->name_seen = false;
		} else if (!g->name_seen) {
			if (c == ':')
				g->name_seen = true;
			else if (u <= 32 || u >= 127)
				return -EINVAL;
		}
		g->at_line_start = false;
	}
	return stage_put(g, c);
}

/*
 * Copy @in to a new file in the staging directory with CRLF line ends
 * (APPEND sends the bytes as they are), checking that it is a message:
 * a header block of field lines, then an empty line. -EINVAL if not
 * (or if it holds a NUL), else 0 with the file's name, an open fd on
 * it, its length and the header block.
 */
static int stage_message(struct store *st, int in, char **path, int *fd,
			 off_t *len, char **header, size_t *hlen)
{
	struct staging *g = xcalloc(1, sizeof(*g));
	const char *dir = store_stage_dir(st);
	char chunk[65536];
	off_t off = 0;
	int rc = 0;

	*path = NULL;
	*fd = -1;
	if (!dir) {
		free(g);
		return -EIO;
	}
	*path = xasprintf("%s/append-XXXXXX", dir);
	g->out = mkstemp(*path);
	if (g->out < 0) {
		rc = -errno;
		goto fail;
	}
	g->at_line_start = g->first_line = true;
	for (;;) {
		ssize_t k = pread(in, chunk, sizeof(chunk), off);

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			rc = -errno;
			goto fail;
		}
		if (!k)
			break;
		for (ssize_t i = 0; i < k && !rc; i++)
			rc = stage_byte(g, chunk[i]);
		if (rc)
			goto fail;
		off += k;
	}
	if (g->cr)
		rc = stage_line_end(g);
	if (!rc && !g->header_done)
		rc = -EINVAL; /* no empty line: no header block, or only one */
	if (!rc)
		rc = stage_flush(g);
	if (!rc && fsync(g->out))
		rc = -errno;
	if (rc)
		goto fail;
	*fd = g->out;
	*len = g->len;
	*header = g->header;
	*hlen = g->hlen;
	free(g);
	return 0;
fail:
	if (g->out >= 0) {
		close(g->out);
		unlink(*path);
	}
	free(*path);
	*path = NULL;
	free(g->header);
	free(g);
	return rc;
}

int sync_append(struct sync *s, struct store *st, int64_t folder, int in,
		int64_t date, int64_t *umid)
{
	struct store_folder f;
	struct store_msg m = { 0 };
	struct mime_fields mf = { 0 };
	char *path = NULL, *header = NULL;
	size_t hlen = 0;
	off_t len = 0;
	struct tm tm;
	time_t t = (time_t)date;
	int fd = -1, rc;

	rc = store_folder_get(st, folder, &f);
	if (rc)
		return rc;
	if (f.noselect)
		rc = -EPERM;
	store_folder_release(&f);
	if (rc)
		return rc;
	rc = stage_message(st, in, &path, &fd, &len, &header, &hlen);
	if (rc == -EINVAL)
		log_warn("not appended: the file is not a mail message (a "
			 "header block, then an empty line; no NUL)");
	if (rc)
		return rc;
	mime_parse_fields(header, hlen, &mf);
	if (date) {
		localtime_r(&t, &tm);
		m.date = date;
		m.zone = (int)(tm.tm_gmtoff / 60);
	} else if (mf.date) {
		/* no date given (a copy whose times are set after close):
		 * the message's own */
		m.date = mf.date;
		m.zone = mf.date_zone;
	} else {
		t = time(NULL);
		localtime_r(&t, &tm);
		m.date = (int64_t)t;
		m.zone = (int)(tm.tm_gmtoff / 60);
	}
	m.folder = folder;
	m.uid = 0;
	m.flags = (char *)"";
	m.size = (uint64_t)len;
	m.message_id = mf.message_id;
	m.subject = mf.subject;
	m.from = mf.from;
	m.references = mf.references;
	m.in_reply_to = mf.in_reply_to;
	rc = store_begin(st);
	if (!rc)
		rc = thread_put(st, &m);
	if (!rc)
		rc = store_op_append(st, m.umid, folder, path);
	if (!rc)
		rc = store_body_from_fd(st, m.umid, fd);
	if (rc)
		store_rollback(st);
	else
		rc = store_commit(st);
	sync_notify_convs(s, st);
	close(fd);
	if (rc)
		unlink(path);
	else
		*umid = m.umid;
	mime_fields_release(&mf);
	free(header);
	free(path);
	if (!rc)
		ops_kick(s);
	return rc;
}
