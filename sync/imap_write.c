/*
 * imap_write.c - the IMAP commands that change the server (imap_write.h):
 * what the operation log's executor sends. libetpan's builders where they
 * work (UID MOVE/COPY with COPYUID, UID STORE, UID EXPUNGE, CREATE,
 * DELETE, RENAME, UID SEARCH); by hand where 1.9.4 is broken or has
 * nothing: the conditional STORE (its builder forgets a space,
 * LIBETPAN.md §13.5), UNSELECT, and APPEND, which libetpan only takes
 * from memory and never pipelines (§13.6). Every hand-sent command's
 * reply is parsed whole by libetpan's parser, so no stale line is left.
 */
#define LOG_CAT "imap"
#include "imap_write.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "imap_i.h"

/* ---- small helpers ---- */

const char *imap_last_text(struct conn *c)
{
	char *s = c && c->imap ? c->imap->imap_response : NULL;

	if (!s)
		return "";
	/* it goes into a status file and a log line: one printable line */
	for (char *p = s; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	return s;
}

/* the ranges as the contract wants them: ascending, 0 < first <= last */
static bool ranges_ok(const struct imap_uid_range *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!v[i].first || v[i].first > v[i].last ||
		    (i && v[i].first <= v[i - 1].last))
			return false;
	return true;
}

static uint64_t ranges_count(const struct imap_uid_range *v, size_t n)
{
	uint64_t k = 0;

	for (size_t i = 0; i < n; i++)
		k += (uint64_t)v[i].last - v[i].first + 1;
	return k;
}

/* "1:4,7" */
static char *set_text(const struct imap_uid_range *v, size_t n)
{
	char *out = xmalloc(n * 24 + 1), *p = out;

	*p = '\0';
	for (size_t i = 0; i < n; i++) {
		if (v[i].first == v[i].last)
			p += sprintf(p, "%s%u", i ? "," : "", v[i].first);
		else
			p += sprintf(p, "%s%u:%u", i ? "," : "", v[i].first,
				     v[i].last);
	}
	return out;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * The UIDs of a set from the server, in its order, into a malloc'ed
 * array: at most @max of them, or false (a '*' or more than @max: a
 * reply that cannot answer what we asked, and would cost unbounded
 * memory if believed).
 */
static bool expand_set(const struct mailimap_set *set, uint64_t max,
		       uint32_t **out, size_t *n)
{
	uint64_t total = 0;
	uint32_t *v;
	size_t k = 0;

	*out = NULL;
	*n = 0;
	if (!set)
		return false;
	for (clistiter *it = clist_begin(set->set_list); it;
	     it = clist_next(it)) {
		struct mailimap_set_item *si = clist_content(it);
		uint32_t a = si->set_first, b = si->set_last;

		if (!a || !b)
			return false;
		total += (a < b ? b - a : a - b) + 1ULL;
		if (total > max)
			return false;
	}
	v = xmalloc((total ? total : 1) * sizeof(*v));
	for (clistiter *it = clist_begin(set->set_list); it;
	     it = clist_next(it)) {
		struct mailimap_set_item *si = clist_content(it);
		uint32_t a = si->set_first, b = si->set_last;

		/* RFC 3501 §9 seq-range: b:a is a:b */
		if (a > b) {
			uint32_t t = a;

			a = b;
			b = t;
		}
		for (uint64_t u = a; u <= b; u++)
			v[k++] = (uint32_t)u;
	}
	*out = v;
	*n = k;
	return true;
}

void imap_uidmap_release(struct imap_uidmap *m)
{
	free(m->src);
	free(m->dst);
	memset(m, 0, sizeof(*m));
}

/* a folder is needed, and for a change of it, read-write */
static bool selected_ok(struct conn *c, bool rw, const char *what)
{
	if (!c->selected) {
		log_error("cannot %s: no folder is selected", what);
		return false;
	}
	if (rw && c->readonly) {
		log_error("cannot %s: folder %s is selected read-only", what,
			  c->selected);
		return false;
	}
	return true;
}

/* the common checks of a command on the selected folder's UIDs */
static int set_checks(struct conn *c, const struct imap_uid_range *v,
		      size_t n, bool rw, const char *what)
{
	if (conn_is_broken(c))
		return IMAP_CONN_BAD;
	if (!ranges_ok(v, n)) {
		log_error("cannot %s: UID ranges not ascending", what);
		return IMAP_MSG_BAD;
	}
	if (!selected_ok(c, rw, what))
		return IMAP_FOLDER_BAD;
	return IMAP_OK;
}

/* the text of a tagged reply parsed by imap_reply_tree becomes the
 * session's last text, as for a command libetpan sent itself
 * (imap_last_text) */
static void keep_text(struct conn *c, const struct mailimap_response *rsp)
{
	const struct mailimap_resp_text *t =
		rsp->rsp_resp_done->rsp_data.rsp_tagged->rsp_cond_state
			->rsp_text;

	if (t && t->rsp_text &&
	    mmap_string_assign(c->imap->imap_response_buffer, t->rsp_text))
		c->imap->imap_response = c->imap->imap_response_buffer->str;
}

/*
 * The session's count of the selected folder from a reply parsed by
 * imap_reply_tree (which libetpan did not see): EXISTS and EXPUNGE.
 */
static void apply_counts(struct conn *c, const struct mailimap_response *rsp)
{
	struct mailimap_selection_info *sel = c->imap->imap_selection_info;

	if (!sel || !rsp->rsp_cont_req_or_resp_data_list)
		return;
	for (clistiter *it = clist_begin(rsp->rsp_cont_req_or_resp_data_list);
	     it; it = clist_next(it)) {
		struct mailimap_cont_req_or_resp_data *d = clist_content(it);
		struct mailimap_response_data *rd;

		if (d->rsp_type != MAILIMAP_RESP_RESP_DATA ||
		    !(rd = d->rsp_data.rsp_resp_data))
			continue;
		if (rd->rsp_type == MAILIMAP_RESP_DATA_TYPE_MAILBOX_DATA &&
		    rd->rsp_data.rsp_mailbox_data->mbd_type ==
			    MAILIMAP_MAILBOX_DATA_EXISTS) {
			sel->sel_exists =
				rd->rsp_data.rsp_mailbox_data->mbd_data
					.mbd_exists;
			sel->sel_has_exists = 1;
		} else if (rd->rsp_type ==
				   MAILIMAP_RESP_DATA_TYPE_MESSAGE_DATA &&
			   rd->rsp_data.rsp_message_data->mdt_type ==
				   MAILIMAP_MESSAGE_DATA_EXPUNGE &&
			   sel->sel_exists) {
			sel->sel_exists--;
		}
	}
}

/* ---- flags ---- */

static const char *const system_flags[] = { "\\Seen", "\\Answered",
					    "\\Flagged", "\\Deleted",
					    "\\Draft" };

/* RFC 3501 §9 atom: printable ASCII without atom-specials (and ']',
 * which resp-specials add) */
static bool is_atom(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++) {
		unsigned char ch = *s;

		if (ch <= 0x20 || ch >= 0x7f || strchr("(){%*\"\\]", ch))
			return false;
	}
	return true;
}

/* most flags one command carries, and the longest keyword: a flag
 * list stays a short line */
#define FLAGS_MAX 64
#define KEYWORD_MAX 128

struct flags {
	char *v[FLAGS_MAX]; /* owned; system flags in their RFC spelling */
	size_t n;
};

static void flags_release(struct flags *f)
{
	for (size_t i = 0; i < f->n; i++)
		free(f->v[i]);
	f->n = 0;
}

/* @s split and checked into @f; false with the reason in @err */
static bool flags_parse(const char *s, struct flags *f, char *err,
			size_t errlen)
{
	f->n = 0;
	while (s && *s) {
		size_t len = strcspn(s, " ");
		char *tok;
		bool ok;

		if (!len) {
			s++;
			continue;
		}
		tok = xstrndup(s, len);
		s += len;
		ok = false;
		if (tok[0] == '\\') {
			for (size_t i = 0;
			     i < sizeof(system_flags) / sizeof(system_flags[0]);
			     i++) {
				if (strcasecmp(tok, system_flags[i]))
					continue;
				strcpy(tok, system_flags[i]);
				ok = true;
			}
		} else {
			ok = len <= KEYWORD_MAX && is_atom(tok);
		}
		if (!ok || f->n == FLAGS_MAX) {
			if (!ok)
				snprintf(err, errlen,
					 "flag %.60s cannot be stored", tok);
			else
				snprintf(err, errlen, "more than %d flags",
					 FLAGS_MAX);
			free(tok);
			flags_release(f);
			return false;
		}
		/* a flag twice is once */
		for (size_t i = 0; i < f->n && tok; i++)
			if (!strcasecmp(f->v[i], tok)) {
				free(tok);
				tok = NULL;
			}
		if (tok)
			f->v[f->n++] = tok;
	}
	return true;
}

/* "(\Seen $Junk)" */
static char *flags_text(const struct flags *f)
{
	size_t len = 3;
	char *out, *p;

	for (size_t i = 0; i < f->n; i++)
		len += strlen(f->v[i]) + 1;
	p = out = xmalloc(len);
	*p++ = '(';
	for (size_t i = 0; i < f->n; i++)
		p += sprintf(p, "%s%s", i ? " " : "", f->v[i]);
	*p++ = ')';
	*p = '\0';
	return out;
}

static struct mailimap_flag_list *flags_list(const struct flags *f)
{
	struct mailimap_flag_list *fl;

	fl = imap_must(mailimap_flag_list_new_empty());
	for (size_t i = 0; i < f->n; i++) {
		const char *s = f->v[i];
		struct mailimap_flag *flag;

		if (!strcmp(s, "\\Seen"))
			flag = mailimap_flag_new_seen();
		else if (!strcmp(s, "\\Answered"))
			flag = mailimap_flag_new_answered();
		else if (!strcmp(s, "\\Flagged"))
			flag = mailimap_flag_new_flagged();
		else if (!strcmp(s, "\\Deleted"))
			flag = mailimap_flag_new_deleted();
		else if (!strcmp(s, "\\Draft"))
			flag = mailimap_flag_new_draft();
		else
			flag = mailimap_flag_new_flag_keyword(xstrdup(s));
		imap_must_ok(mailimap_flag_list_add(fl, imap_must(flag)));
	}
	return fl;
}

/* ---- SELECT ---- */

int imap_select_rw(struct conn *c, const char *name, struct imap_box *out)
{
	struct mailimap_selection_info *sel;
	int rc;

	memset(out, 0, sizeof(*out));
	if (!conn_name_ok(name))
		return IMAP_FOLDER_BAD;
	rc = conn_select(c, name, false);
	if (rc == -EIO)
		return IMAP_CONN_BAD;
	if (rc)
		return IMAP_FOLDER_BAD;
	sel = c->imap->imap_selection_info;
	if (!sel)
		return IMAP_FOLDER_BAD;
	out->uidvalidity = sel->sel_uidvalidity;
	out->uidnext = sel->sel_uidnext;
	out->exists = sel->sel_exists;
	out->highestmodseq = c->highestmodseq;
	return IMAP_OK;
}

/* ---- MOVE, COPY ---- */

/*
 * COPYUID into @map, if it answers what was asked: as many source as
 * target UIDs, every source UID one we sent.
 */
static void take_copyuid(const struct imap_uid_range *v, size_t n,
			 uint32_t uv, struct mailimap_set *src,
			 struct mailimap_set *dst, struct imap_uidmap *map)
{
	uint64_t max = ranges_count(v, n);
	uint32_t *s = NULL, *d = NULL;
	size_t ns, nd;

	if (!uv || !expand_set(src, max, &s, &ns) ||
	    !expand_set(dst, max, &d, &nd) || ns != nd)
		goto out_bad;
	for (size_t i = 0; i < ns; i++)
		if (!imap_in_ranges(v, n, s[i]))
			goto out_bad;
	map->uidvalidity = uv;
	map->src = s;
	map->dst = d;
	map->n = ns;
	return;
out_bad:
	if (uv)
		log_warn("COPYUID from the server does not fit the UIDs "
			 "sent: ignored");
	free(s);
	free(d);
}

static int move_or_copy(struct conn *c, bool move,
			const struct imap_uid_range *v, size_t n,
			const char *target, struct imap_uidmap *map)
{
	struct mailimap_set *set, *src = NULL, *dst = NULL;
	const char *verb = move ? "move" : "copy";
	uint32_t uv = 0;
	char *what;
	int rc;

	if (map)
		memset(map, 0, sizeof(*map));
	what = xasprintf("%s messages to %s", verb, target ? target : "?");
	rc = set_checks(c, v, n, move, what);
	if (rc || !n)
		goto out_free;
	if (!conn_name_ok(target) || !*target) {
		log_error("cannot %s: bad folder name", what);
		rc = IMAP_FOLDER_BAD;
		goto out_free;
	}
	if (move && !(c->caps & CAP_MOVE)) {
		log_error("cannot %s: the server has no MOVE", what);
		rc = IMAP_FOLDER_BAD;
		goto out_free;
	}
	set = imap_set_of(v, n);
	if (move)
		rc = mailimap_uidplus_uid_move(c->imap, set, target, &uv, &src,
					       &dst);
	else
		rc = mailimap_uidplus_uid_copy(c->imap, set, target, &uv, &src,
					       &dst);
	mailimap_set_free(set);
	if (rc != MAILIMAP_NO_ERROR) {
		struct mailimap_response_info *ri = c->imap->imap_response_info;

		free(what);
		/* RFC 3501 §6.4.7: [TRYCREATE] says the target is missing */
		what = xasprintf("%s messages of %s to %s%s", verb,
				 c->selected, target,
				 ri && ri->rsp_trycreate ?
					 " (no such folder)" :
					 "");
		rc = imap_grade(c, rc, what);
		goto out_free;
	}
	if (map)
		take_copyuid(v, n, uv, src, dst, map);
	rc = IMAP_OK;
out_free:
	if (src)
		mailimap_set_free(src);
	if (dst)
		mailimap_set_free(dst);
	free(what);
	return rc;
}

int imap_uid_move(struct conn *c, const struct imap_uid_range *v, size_t n,
		  const char *target, struct imap_uidmap *map)
{
	return move_or_copy(c, true, v, n, target, map);
}

int imap_uid_copy(struct conn *c, const struct imap_uid_range *v, size_t n,
		  const char *target, struct imap_uidmap *map)
{
	return move_or_copy(c, false, v, n, target, map);
}

/* ---- STORE ---- */

/*
 * The [MODIFIED set] of the last reply (RFC 7162 §3.1.3), only UIDs we
 * asked about, ascending, malloc'ed. False if the set is not one that
 * can answer us ('*', or more UIDs than we sent).
 */
static bool take_modified(struct conn *c, const struct imap_uid_range *v,
			  size_t n, uint32_t **out, size_t *nout)
{
	struct mailimap_response_info *ri = c->imap->imap_response_info;
	uint64_t max = ranges_count(v, n);

	if (!ri || !ri->rsp_extension_list)
		return true;
	for (clistiter *it = clist_begin(ri->rsp_extension_list); it;
	     it = clist_next(it)) {
		struct mailimap_extension_data *ext = clist_content(it);
		struct mailimap_condstore_resptextcode *code;
		uint32_t *u;
		size_t k, j = 0;

		if (ext->ext_extension->ext_id != MAILIMAP_EXTENSION_CONDSTORE ||
		    ext->ext_type != MAILIMAP_CONDSTORE_TYPE_RESP_TEXT_CODE)
			continue;
		code = ext->ext_data;
		if (!code ||
		    code->cs_type != MAILIMAP_CONDSTORE_RESPTEXTCODE_MODIFIED)
			continue;
		if (!expand_set(code->cs_data.cs_modified_set, max, &u, &k))
			return false;
		for (size_t i = 0; i < k; i++)
			if (imap_in_ranges(v, n, u[i]))
				u[j++] = u[i];
		qsort(u, j, sizeof(*u), cmp_u32);
		if (!j) {
			free(u);
			u = NULL;
		}
		*out = u;
		*nout = j;
		return true;
	}
	return true;
}

int imap_uid_store(struct conn *c, const struct imap_uid_range *v, size_t n,
		   bool add, const char *flags, uint64_t unchangedsince,
		   uint32_t **modified, size_t *nmodified)
{
	struct flags f;
	char err[128], *what;
	int rc;

	*modified = NULL;
	*nmodified = 0;
	what = xasprintf("store flags in %s",
			 c->selected ? c->selected : "a folder");
	rc = set_checks(c, v, n, true, what);
	if (rc || !n)
		goto out_what;
	if (!flags_parse(flags, &f, err, sizeof(err))) {
		log_warn("cannot %s: %s", what, err);
		rc = IMAP_MSG_BAD;
		goto out_what;
	}
	if (!f.n)
		goto out_flags;
	if (!unchangedsince) {
		struct mailimap_flag_list *fl = flags_list(&f);
		struct mailimap_set *set = imap_set_of(v, n);
		struct mailimap_store_att_flags *att;

		/* +FLAGS.SILENT or -FLAGS.SILENT */
		att = imap_must(
			mailimap_store_att_flags_new(add ? 1 : -1, true, fl));
		rc = mailimap_uid_store(c->imap, set, att);
		mailimap_store_att_flags_free(att);
		mailimap_set_free(set);
		rc = rc ? imap_grade(c, rc, what) : IMAP_OK;
		goto out_flags;
	}
	if (!(c->caps & CAP_CONDSTORE)) {
		log_error("cannot %s: UNCHANGEDSINCE without CONDSTORE", what);
		rc = IMAP_FOLDER_BAD;
		goto out_flags;
	}
	{
		/* by hand: 1.9.4's builder sends "1:3(UNCHANGEDSINCE" with
		 * no space, and servers answer BAD (LIBETPAN.md §13.5) */
		char *set = set_text(v, n), *fl = flags_text(&f), *rest;

		rest = xasprintf("%s (UNCHANGEDSINCE %llu) %cFLAGS.SILENT %s",
				 set, (unsigned long long)unchangedsince,
				 add ? '+' : '-', fl);
		free(set);
		free(fl);
		rc = imap_raw(c, "UID STORE", NULL, rest);
		free(rest);
	}
	if (rc) {
		rc = imap_grade(c, rc, what);
		goto out_flags;
	}
	/* a conflict is a tagged OK with [MODIFIED uids] */
	if (!take_modified(c, v, n, modified, nmodified)) {
		log_warn("cannot %s: the server's MODIFIED set does not fit "
			 "the UIDs sent",
			 what);
		rc = IMAP_FOLDER_BAD;
		goto out_flags;
	}
	rc = IMAP_OK;
out_flags:
	flags_release(&f);
out_what:
	free(what);
	return rc;
}

/* ---- EXPUNGE ---- */

int imap_uid_expunge(struct conn *c, const struct imap_uid_range *v, size_t n)
{
	struct mailimap_set *set;
	char *what;
	int rc;

	what = xasprintf("expunge messages of %s",
			 c->selected ? c->selected : "a folder");
	rc = set_checks(c, v, n, true, what);
	if (rc || !n)
		goto out;
	if (!(c->caps & CAP_UIDPLUS)) {
		/* a plain EXPUNGE would take other clients' \Deleted mail */
		log_error("cannot %s: the server has no UIDPLUS", what);
		rc = IMAP_FOLDER_BAD;
		goto out;
	}
	set = imap_set_of(v, n);
	rc = mailimap_uid_expunge(c->imap, set);
	mailimap_set_free(set);
	rc = rc ? imap_grade(c, rc, what) : IMAP_OK;
out:
	free(what);
	return rc;
}

/* ---- CREATE, DELETE, RENAME ---- */

/* @sel is @name, or (with @under) a folder below it: @name followed by
 * a character no folder name part ends with before a delimiter */
static bool affects(const char *sel, const char *name, bool under)
{
	size_t len = strlen(name);

	if (!strcmp(sel, name))
		return true;
	return under && !strncmp(sel, name, len) && sel[len] &&
	       strchr("/.\\:", sel[len]);
}

/*
 * Leave the selected folder if the command will delete or rename it: a
 * server may end the session of a client whose folder vanished. CLOSE
 * would expunge \Deleted mail, so: UNSELECT where offered (RFC 3691),
 * else EXAMINE INBOX, which changes nothing. INBOX itself can be neither
 * deleted nor renamed away (RFC 3501 §6.3.5), so it is kept.
 */
/* UNSELECT (where offered): nothing selected, nothing expunged */
static int unselect(struct conn *c)
{
	int rc = imap_raw(c, "UNSELECT", NULL, NULL);

	if (rc)
		return imap_grade(c, rc, "unselect folder");
	/* as mailimap_close leaves the session */
	mailimap_selection_info_free(c->imap->imap_selection_info);
	c->imap->imap_selection_info = NULL;
	c->imap->imap_state = MAILIMAP_STATE_AUTHENTICATED;
	free(c->selected);
	c->selected = NULL;
	c->highestmodseq = 0;
	return IMAP_OK;
}

int imap_leave_rw(struct conn *c)
{
	char *name;
	int rc;

	if (!c->selected || c->readonly)
		return IMAP_OK;
	if (mailimap_has_extension(c->imap, "UNSELECT"))
		return unselect(c);
	name = strdup(c->selected);
	if (!name)
		return IMAP_CONN_BAD;
	rc = conn_select(c, name, true);
	free(name);
	return rc == -EIO ? IMAP_CONN_BAD : IMAP_OK;
}

static int leave(struct conn *c, const char *name, bool under)
{
	int rc;

	if (!c->selected || !affects(c->selected, name, under))
		return IMAP_OK;
	if (mailimap_has_extension(c->imap, "UNSELECT"))
		return unselect(c);
	if (!strcasecmp(c->selected, "INBOX"))
		return IMAP_OK;
	rc = conn_select(c, "INBOX", true);
	/* refused: then nothing is selected any more (RFC 3501 §6.3.1) */
	return rc == -EIO ? IMAP_CONN_BAD : IMAP_OK;
}

static bool folder_name_ok(const char *name, const char *what)
{
	if (conn_name_ok(name) && *name)
		return true;
	log_error("cannot %s: bad folder name", what);
	return false;
}

int imap_create(struct conn *c, const char *name)
{
	char *what = xasprintf("create folder %s", name ? name : "?");
	int rc;

	if (conn_is_broken(c))
		rc = IMAP_CONN_BAD;
	else if (!folder_name_ok(name, what))
		rc = IMAP_FOLDER_BAD;
	else if ((rc = mailimap_create(c->imap, name)))
		rc = imap_grade(c, rc, what);
	free(what);
	return rc;
}

int imap_delete(struct conn *c, const char *name)
{
	char *what = xasprintf("delete folder %s", name ? name : "?");
	int rc;

	if (conn_is_broken(c))
		rc = IMAP_CONN_BAD;
	else if (!folder_name_ok(name, what))
		rc = IMAP_FOLDER_BAD;
	else if (!(rc = leave(c, name, false)) &&
		 (rc = mailimap_delete(c->imap, name)))
		rc = imap_grade(c, rc, what);
	free(what);
	return rc;
}

int imap_rename(struct conn *c, const char *from, const char *to)
{
	char *what = xasprintf("rename folder %s to %s", from ? from : "?",
			       to ? to : "?");
	int rc;

	if (conn_is_broken(c))
		rc = IMAP_CONN_BAD;
	else if (!folder_name_ok(from, what) || !folder_name_ok(to, what))
		rc = IMAP_FOLDER_BAD;
	else if (!(rc = leave(c, from, true)) &&
		 (rc = mailimap_rename(c->imap, from, to)))
		rc = imap_grade(c, rc, what);
	free(what);
	return rc;
}

/* ---- SEARCH ---- */

/* RFC 5322 §3.6.8 field-name: printable ASCII but ':' */
static bool is_field_name(const char *s)
{
	if (!*s || strlen(s) > 76)
		return false;
	for (; *s; s++)
		if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f ||
		    *s == ':')
			return false;
	return true;
}

/* a value libetpan may put in a quoted string: no CR/LF (they would end
 * the command), no 8-bit (a quoted string cannot hold it) */
static bool is_search_value(const char *s)
{
	if (strlen(s) > 998)
		return false;
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
			return false;
	return true;
}

int imap_uid_search_header(struct conn *c, uint32_t from, const char *field,
			   const char *value, uint32_t **uids, size_t *n)
{
	struct mailimap_search_key *key;
	struct mailimap_set *set;
	clist *result = NULL;
	uint32_t *out;
	size_t k = 0;
	int rc;

	*uids = NULL;
	*n = 0;
	if (conn_is_broken(c))
		return IMAP_CONN_BAD;
	if (!field || !value || !is_field_name(field) ||
	    !is_search_value(value)) {
		log_warn("cannot search by header: a field or value that "
			 "cannot be sent");
		return IMAP_MSG_BAD;
	}
	if (!selected_ok(c, false, "search by header"))
		return IMAP_FOLDER_BAD;
	if (!from)
		from = 1;
	key = imap_must(mailimap_search_key_new_multiple_empty());
	/*
	 * from:4294967295 rather than from:*: the same UIDs (RFC 3501
	 * §2.3.1.1), without the highest message matching when @from is
	 * above it, and GNU imap4d 3.15 matches nothing for UID n:*
	 */
	set = imap_must(mailimap_set_new_interval(from, UINT32_MAX));
	imap_search_add(key, mailimap_search_key_new_uid(set));
	imap_search_add(key, mailimap_search_key_new_header(xstrdup(field),
							    xstrdup(value)));
	rc = mailimap_uid_search(c->imap, NULL, key, &result);
	mailimap_search_key_free(key);
	if (rc != MAILIMAP_NO_ERROR) {
		/* a tagged NO still hands the result over */
		if (result)
			mailimap_search_result_free(result);
		return imap_grade(c, rc, "search by header");
	}
	out = xmalloc((clist_count(result) + 1) * sizeof(*out));
	for (clistiter *it = clist_begin(result); it; it = clist_next(it)) {
		uint32_t u = *(uint32_t *)clist_content(it);

		/* only what was asked, whatever the server adds */
		if (u >= from)
			out[k++] = u;
	}
	mailimap_search_result_free(result);
	qsort(out, k, sizeof(*out), cmp_u32);
	if (!k) {
		free(out);
		out = NULL;
	}
	*uids = out;
	*n = k;
	return IMAP_OK;
}

/* ---- APPEND ---- */

/* messages per write burst with LITERAL+: their replies (a line each)
 * must fit the socket's buffers while we are still writing */
#define APPEND_BURST 64
/* bytes read from a message file at a time */
#define APPEND_CHUNK (64 * 1024)

static void append_refuse(struct imap_append *a, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void append_refuse(struct imap_append *a, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(a->err, sizeof(a->err), fmt, ap);
	va_end(ap);
	a->grade = IMAP_MSG_BAD;
}

/*
 * Before anything is sent: the flags, the zone, and the bytes (CRLF line
 * ends only, no NUL: RFC 3501 §4.3 literals are CHAR8 without NUL, and a
 * literal cannot be taken back once announced).
 */
static bool append_check(struct imap_append *a, char *buf)
{
	struct flags f;
	uint64_t off = 0;
	char prev = 0;

	if (!flags_parse(a->flags, &f, a->err, sizeof(a->err))) {
		a->grade = IMAP_MSG_BAD;
		return false;
	}
	flags_release(&f);
	if (a->zone < -1439 || a->zone > 1439) {
		append_refuse(a, "time zone %d minutes is out of range",
			      a->zone);
		return false;
	}
	if (!a->len || a->len > UINT32_MAX) {
		append_refuse(a, "message of %llu bytes cannot be sent",
			      (unsigned long long)a->len);
		return false;
	}
	while (off < a->len) {
		size_t want = a->len - off < APPEND_CHUNK ? a->len - off
							   : APPEND_CHUNK;
		ssize_t got = pread(a->fd, buf, want, (off_t)off);

		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			append_refuse(a, "cannot read the message: %s",
				      got ? strerror(errno) : "it is short");
			return false;
		}
		for (ssize_t i = 0; i < got; i++) {
			char ch = buf[i];

			if (!ch || (ch == '\n' && prev != '\r') ||
			    (prev == '\r' && ch != '\n')) {
				append_refuse(a,
					      "the message has a %s at byte %llu",
					      !ch ? "NUL" :
					      ch == '\n' ? "bare LF" :
							   "bare CR",
					      (unsigned long long)(off + i));
				return false;
			}
			prev = ch;
		}
		off += (uint64_t)got;
	}
	if (prev == '\r') {
		append_refuse(a, "the message ends in a bare CR");
		return false;
	}
	return true;
}

/* ' (\Seen) "02-Mar-2021 04:05:06 -0130" {31+}' after the folder name */
static char *append_args(const struct imap_append *a, bool plus)
{
	static const char *const mon[] = { "Jan", "Feb", "Mar", "Apr",
					   "May", "Jun", "Jul", "Aug",
					   "Sep", "Oct", "Nov", "Dec" };
	char date[48] = "", *fl = NULL, *out;
	struct flags f;

	if (flags_parse(a->flags, &f, NULL, 0) && f.n)
		fl = flags_text(&f);
	flags_release(&f);
	if (a->date) {
		time_t t = (time_t)(a->date + (int64_t)a->zone * 60);
		int z = a->zone < 0 ? -a->zone : a->zone;
		struct tm tm;

		gmtime_r(&t, &tm);
		snprintf(date, sizeof(date),
			 " \"%02d-%s-%04d %02d:%02d:%02d %c%02d%02d\"",
			 tm.tm_mday, mon[tm.tm_mon], tm.tm_year + 1900,
			 tm.tm_hour, tm.tm_min, tm.tm_sec,
			 a->zone < 0 ? '-' : '+', z / 60, z % 60);
	}
	out = xasprintf("%s%s%s {%llu%s}", fl ? " " : "", fl ? fl : "", date,
			(unsigned long long)a->len, plus ? "+" : "");
	free(fl);
	return out;
}

/* "<tag> APPEND folder args" and the CRLF; not flushed */
static int append_send_command(struct conn *c, const char *folder,
			       const struct imap_append *a, bool plus)
{
	mailstream *st = c->imap->imap_stream;
	char *args = append_args(a, plus);
	int r;

	if (!(r = mailimap_send_current_tag(c->imap)) &&
	    !(r = mailimap_token_send(st, "APPEND")) &&
	    !(r = mailimap_space_send(st)) &&
	    !(r = mailimap_mailbox_send(st, folder)) &&
	    !(r = mailimap_token_send(st, args)))
		r = mailimap_crlf_send(st);
	free(args);
	return r;
}

/*
 * The literal's bytes and the CRLF that ends the command, read from the
 * file in chunks (mailstream_write buffers and writes as it fills). A
 * file that fails or shrinks now leaves the literal short, which cannot
 * be mended: the connection is given up.
 */
static int append_send_body(struct conn *c, struct imap_append *a, char *buf)
{
	mailstream *st = c->imap->imap_stream;
	uint64_t off = 0;

	while (off < a->len) {
		size_t want = a->len - off < APPEND_CHUNK ? a->len - off
							   : APPEND_CHUNK;
		ssize_t got = pread(a->fd, buf, want, (off_t)off);

		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			log_error("cannot append a message: reading it "
				  "failed half-way: %s",
				  got ? strerror(errno) : "it shrank");
			append_refuse(a, "the message changed while sent");
			return MAILIMAP_ERROR_STREAM;
		}
		if (mailstream_write(st, buf, (size_t)got) != got)
			return MAILIMAP_ERROR_STREAM;
		off += (uint64_t)got;
	}
	return mailimap_crlf_send(st);
}

/* what the tagged reply to one APPEND says about its message */
static void append_take(struct conn *c, struct mailimap_response *rsp,
			bool ok, struct imap_append *a, bool *trycreate)
{
	struct mailimap_response_tagged *t =
		rsp->rsp_resp_done->rsp_data.rsp_tagged;
	struct mailimap_resp_text *txt = t->rsp_cond_state->rsp_text;
	struct mailimap_resp_text_code *code = txt ? txt->rsp_code : NULL;

	apply_counts(c, rsp);
	keep_text(c, rsp);
	if (!ok) {
		bool try = code &&
			   code->rc_type == MAILIMAP_RESP_TEXT_CODE_TRY_CREATE;

		append_refuse(a, "%s%s", try ? "[TRYCREATE] " : "",
			      txt && txt->rsp_text ? txt->rsp_text :
						     "refused");
		*trycreate = try;
		if (t->rsp_cond_state->rsp_type == MAILIMAP_RESP_COND_STATE_BAD)
			log_error("APPEND rejected as malformed: %s", a->err);
		return;
	}
	a->grade = IMAP_OK;
	*trycreate = false;
	/* RFC 4315 §3: [APPENDUID uidvalidity uid] */
	if (code && code->rc_type == MAILIMAP_RESP_TEXT_CODE_EXTENSION &&
	    code->rc_data.rc_ext_data &&
	    code->rc_data.rc_ext_data->ext_extension->ext_id ==
		    MAILIMAP_EXTENSION_UIDPLUS &&
	    code->rc_data.rc_ext_data->ext_type ==
		    MAILIMAP_UIDPLUS_RESP_CODE_APND) {
		struct mailimap_uidplus_resp_code_apnd *ap =
			code->rc_data.rc_ext_data->ext_data;
		clistiter *it = ap && ap->uid_set ?
					clist_begin(ap->uid_set->set_list) :
					NULL;
		struct mailimap_set_item *si = it ? clist_content(it) : NULL;

		/* one message: one UID, nothing else fits */
		if (si && !clist_next(it) && si->set_first &&
		    si->set_first == si->set_last) {
			a->uid = si->set_first;
			a->uidvalidity = ap->uid_uidvalidity;
		}
	}
}

/* read the tagged reply of @tag (its first line already read) */
static int append_reply(struct conn *c, int tag, struct imap_append *a,
			bool *trycreate)
{
	struct mailimap_response *rsp;
	bool ok;
	int r;

	r = imap_reply_tree(c, tag, &rsp, &ok);
	if (r)
		return r;
	append_take(c, rsp, ok, a, trycreate);
	mailimap_response_free(rsp);
	return MAILIMAP_NO_ERROR;
}

/*
 * LITERAL+ (RFC 7888): the messages @idx[0..@k) of @v sent in one write,
 * then their replies read in order, tag by tag (LIBETPAN.md §13.1).
 */
static int append_burst(struct conn *c, const char *folder,
			struct imap_append *v, const size_t *idx, size_t k,
			char *buf, size_t *sent_out, size_t *refused_try)
{
	int first = c->imap->imap_tag + 1, r = MAILIMAP_NO_ERROR;
	size_t sent = 0;

	for (size_t i = 0; i < k && !r; i++) {
		r = append_send_command(c, folder, &v[idx[i]], true);
		if (!r)
			r = append_send_body(c, &v[idx[i]], buf);
		if (!r)
			sent++;
	}
	if (!r && mailstream_flush(c->imap->imap_stream) == -1)
		r = MAILIMAP_ERROR_STREAM;
	/* after a failed write the stream is lost: nothing to read */
	for (size_t i = 0; i < sent && !r; i++) {
		bool try = false;

		c->imap->imap_tag = first + (int)i;
		if (!mailimap_read_line(c->imap))
			r = MAILIMAP_ERROR_STREAM;
		else
			r = append_reply(c, first + (int)i, &v[idx[i]], &try);
		if (!r && try)
			(*refused_try)++;
	}
	if (sent)
		c->imap->imap_tag = first + (int)sent - 1;
	*sent_out += sent;
	return r;
}

/* skip a literal announced at the end of the line just read, and the
 * rest of its line, so the next read starts a new line */
static int skip_literals(struct conn *c)
{
	for (;;) {
		MMAPString *b = c->imap->imap_stream_buffer;
		unsigned long long len;
		char sink[4096], *open;

		if (b->len < 4 || b->str[b->len - 3] != '}')
			return 0;
		open = strrchr(b->str, '{');
		if (!open || sscanf(open, "{%llu", &len) != 1)
			return 0;
		while (len) {
			ssize_t got = mailstream_read(
				c->imap->imap_stream, sink,
				len < sizeof(sink) ? len : sizeof(sink));

			if (got <= 0)
				return -1;
			len -= (size_t)got;
		}
		if (!mailimap_read_line(c->imap))
			return -1;
	}
}

/*
 * RFC 3501 §7.5: without LITERAL+ each literal waits for the server's
 * "+"; a tagged reply instead refuses the message before its bytes go.
 * Untagged data before the "+" (a push about another folder) is
 * skipped.
 */
static int append_sync(struct conn *c, const char *folder,
		       struct imap_append *a, char *buf, bool *try)
{
	int tag, r;

	r = append_send_command(c, folder, a, false);
	if (!r && mailstream_flush(c->imap->imap_stream) == -1)
		r = MAILIMAP_ERROR_STREAM;
	if (r)
		return r;
	tag = c->imap->imap_tag;
	for (;;) {
		const char *line = mailimap_read_line(c->imap);

		if (!line)
			return MAILIMAP_ERROR_STREAM;
		if (line[0] == '+')
			break;
		if (line[0] != '*')
			/* refused before the literal was sent */
			return append_reply(c, tag, a, try);
		if (!strncasecmp(line, "* BYE", 5))
			return MAILIMAP_ERROR_FATAL;
		if (skip_literals(c))
			return MAILIMAP_ERROR_STREAM;
	}
	r = append_send_body(c, a, buf);
	if (!r && mailstream_flush(c->imap->imap_stream) == -1)
		r = MAILIMAP_ERROR_STREAM;
	if (!r && !mailimap_read_line(c->imap))
		r = MAILIMAP_ERROR_STREAM;
	return r ? r : append_reply(c, tag, a, try);
}

int imap_append_many(struct conn *c, const char *folder,
		     struct imap_append *v, size_t n)
{
	size_t *idx, k = 0, sent = 0, refused_try = 0;
	char *buf, *what;
	int r = MAILIMAP_NO_ERROR, rc;

	for (size_t i = 0; i < n; i++) {
		v[i].grade = IMAP_CONN_BAD;
		v[i].uid = v[i].uidvalidity = 0;
		v[i].err[0] = '\0';
	}
	if (!n)
		return IMAP_OK;
	if (conn_is_broken(c))
		return IMAP_CONN_BAD;
	what = xasprintf("append to folder %s", folder ? folder : "?");
	if (!folder_name_ok(folder, what)) {
		for (size_t i = 0; i < n; i++)
			append_refuse(&v[i], "bad folder name");
		free(what);
		return IMAP_FOLDER_BAD;
	}
	buf = xmalloc(APPEND_CHUNK);
	idx = xmalloc(n * sizeof(*idx));
	for (size_t i = 0; i < n; i++) {
		if (append_check(&v[i], buf))
			idx[k++] = i;
		else
			log_warn("cannot %s: %s", what, v[i].err);
	}
	if (c->caps & CAP_LITERALPLUS) {
		for (size_t i = 0; i < k && !r; i += APPEND_BURST)
			r = append_burst(c, folder, v, idx + i,
					 k - i < APPEND_BURST ? k - i
							      : APPEND_BURST,
					 buf, &sent, &refused_try);
	} else {
		for (size_t i = 0; i < k && !r; i++) {
			bool try = false;

			r = append_sync(c, folder, &v[idx[i]], buf, &try);
			if (!r) {
				sent++;
				refused_try += try;
			}
		}
	}
	if (r) {
		/* a half-sent literal or a lost reply: every code that gets
		 * here is one that loses the connection */
		rc = imap_grade(c, r, what);
	} else if (sent && refused_try == sent) {
		log_warn("cannot %s: %s", what, imap_last_text(c));
		rc = IMAP_FOLDER_BAD;
	} else {
		for (size_t i = 0; i < k; i++)
			if (v[idx[i]].grade == IMAP_MSG_BAD)
				log_warn("cannot %s: %s", what, v[idx[i]].err);
		rc = IMAP_OK;
	}
	free(idx);
	free(buf);
	free(what);
	return rc;
}
