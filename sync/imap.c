/*
 * imap.c - the IMAP primitives the sync engine is built of: EXAMINE,
 * LIST, STATUS, FETCH of metadata, UID SEARCH, NOOP. Each wraps
 * libetpan and grades its failure as isync's driver contract does:
 * this message is bad, this folder is bad, the connection is bad, or
 * the caller cancelled. Callers decide by grade, never by guessing
 * from libetpan's codes.
 *
 * Only commands whose replies libetpan 1.9.4 can parse are sent (an
 * unparsable reply loses the session); EMAILID and MAILBOXID, which it
 * does not know, get a parser of ours (imap_init).
 */
#define LOG_CAT "imap"
#include "sync_i.h"

#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common.h"
#include "imap_i.h"

/* ---- RFC 8474 OBJECTID: EMAILID in FETCH, MAILBOXID in STATUS ---- */

static int objectid_parse(int calling, mailstream *fd, MMAPString *buf,
			  struct mailimap_parser_context *ctx, size_t *indx,
			  struct mailimap_extension_data **result, size_t pr,
			  progress_function *pf);
static void objectid_free(struct mailimap_extension_data *d);

static struct mailimap_extension_api objectid_api = {
	.ext_name = (char *)"CONVOYFS-OBJECTID",
	.ext_id = -1,
	.ext_parser = objectid_parse,
	.ext_free = objectid_free,
};

enum { OBJ_EMAILID, OBJ_MAILBOXID };

/*
 * "EMAILID (M6d99ac3275bb4e)" in a FETCH, "MAILBOXID (F2212ea87-...)"
 * in a STATUS: the id is an atom of letters, digits, '-' and '_' (RFC
 * 8474 §4), at most 255 bytes. Anything else is not ours.
 */
static int objectid_parse(int calling, mailstream *fd, MMAPString *buf,
			  struct mailimap_parser_context *ctx, size_t *indx,
			  struct mailimap_extension_data **result, size_t pr,
			  progress_function *pf)
{
	static const struct {
		const char *word;
		int type;
		int caller;
	} words[] = {
		{ "EMAILID", OBJ_EMAILID, MAILIMAP_EXTENDED_PARSER_FETCH_DATA },
		{ "MAILBOXID", OBJ_MAILBOXID,
		  MAILIMAP_EXTENDED_PARSER_STATUS_ATT },
	};
	const char *p = buf->str + *indx, *end = buf->str + buf->len, *q;

	for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
		size_t n = strlen(words[i].word);
		const char *s;
		char *id;

		if (calling != words[i].caller || (size_t)(end - p) < n + 2 ||
		    strncasecmp(p, words[i].word, n) || p[n] != ' ')
			continue;
		q = p + n + 1;
		if (q >= end || *q != '(')
			return MAILIMAP_ERROR_PARSE;
		s = ++q;
		while (q < end && q - s < 255 &&
		       (((*q | 0x20) >= 'a' && (*q | 0x20) <= 'z') ||
			(*q >= '0' && *q <= '9') || *q == '-' || *q == '_'))
			q++;
		if (q >= end || *q != ')' || q == s)
			return MAILIMAP_ERROR_PARSE;
		id = xstrndup(s, (size_t)(q - s));
		q++;
		*result = imap_must(mailimap_extension_data_new(
			&objectid_api, words[i].type, id));
		*indx = (size_t)(q - buf->str);
		return MAILIMAP_NO_ERROR;
	}
	return MAILIMAP_ERROR_PARSE;
}

static void objectid_free(struct mailimap_extension_data *d)
{
	if (!d)
		return;
	free(d->ext_data);
	free(d);
}

void imap_init(void)
{
	static bool done;

	/* process-wide in libetpan: once, before any thread starts */
	if (!done) {
		mailimap_extension_register(&objectid_api);
		done = true;
	}
}

/* ---- a crash in libetpan 1.9.4 a server can set off ---- */

/*
 * "[PERMANENTFLAGS (" followed by anything but flags and ")" (a NUL, a
 * stray space: "* OK [PERMANENTFLAGS ( )] x") makes libetpan's parser
 * free the flag list it never made: clist_foreach(NULL) and
 * clist_free(NULL), a NULL dereference, in the reply to any command.
 * libetpan calls both through its PLT, so the definitions here come
 * first: a NULL list is an empty one, and the rest goes on to
 * libetpan's own (the parse then fails or falls back, as for any other
 * malformed reply).
 */
static void (*etpan_clist_foreach)(clist *, clist_func, void *);
static void (*etpan_clist_free)(clist *);

/* before main: no thread can race for the pointers */
__attribute__((constructor)) static void etpan_fix_init(void)
{
	*(void **)&etpan_clist_foreach = dlsym(RTLD_NEXT, "clist_foreach");
	*(void **)&etpan_clist_free = dlsym(RTLD_NEXT, "clist_free");
	if (!etpan_clist_foreach || !etpan_clist_free)
		abort(); /* not linked with libetpan: cannot happen */
}

void clist_foreach(clist *lst, clist_func func, void *data)
{
	if (lst)
		etpan_clist_foreach(lst, func, data);
}

void clist_free(clist *lst)
{
	if (lst)
		etpan_clist_free(lst);
}

/* ---- grading ---- */

/* a failed command on @c: the connection or only this folder */
static int grade(struct conn *c, int rc, const char *what)
{
	int e = conn_errno(c, rc, what);

	if (!e)
		return IMAP_OK;
	return conn_is_broken(c) ? IMAP_CONN_BAD : IMAP_FOLDER_BAD;
}

int imap_prepare(struct conn *c)
{
	struct mailimap_capability_data *want, *enabled = NULL;
	struct mailimap_capability *qresync;
	clist *caps;
	int rc;

	if (!(c->caps & CAP_QRESYNC) || !(c->caps & CAP_ENABLE) ||
	    !(c->caps & CAP_CONDSTORE))
		return IMAP_OK;
	qresync = imap_must(mailimap_capability_new(MAILIMAP_CAPABILITY_NAME,
						    NULL, xstrdup("QRESYNC")));
	caps = imap_must(clist_new());
	imap_must_ok(clist_append(caps, qresync));
	want = imap_must(mailimap_capability_data_new(caps));
	rc = mailimap_enable(c->imap, want, &enabled);
	mailimap_capability_data_free(want);
	if (enabled)
		mailimap_capability_data_free(enabled);
	if (rc != MAILIMAP_NO_ERROR) {
		int g = grade(c, rc, "enable QRESYNC");

		/* refused: carry on with CONDSTORE alone */
		if (g != IMAP_CONN_BAD)
			c->caps &= ~CAP_QRESYNC;
		return g == IMAP_CONN_BAD ? g : IMAP_OK;
	}
	c->qresync = true;
	return IMAP_OK;
}

/* ---- EXAMINE ---- */

int imap_examine(struct conn *c, const char *name, struct imap_box *out)
{
	struct mailimap_selection_info *sel;
	int rc;

	memset(out, 0, sizeof(*out));
	/* always a new EXAMINE: its reply is what tells what changed */
	free(c->selected);
	c->selected = NULL;
	rc = conn_select(c, name, true);
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

/* ---- LIST ---- */

/* RFC 6154 roles we recognise, as libetpan gives them (no backslash) */
static const char *const roles[] = { "All",  "Archive", "Drafts", "Flagged",
				     "Junk", "Sent",	"Trash" };

static void read_list_flags(const struct mailimap_mbx_list_flags *fl,
			    struct imap_mailbox *mb)
{
	if (!fl)
		return;
	if (fl->mbf_type == MAILIMAP_MBX_LIST_FLAGS_SFLAG &&
	    fl->mbf_sflag == MAILIMAP_MBX_LIST_SFLAG_NOSELECT)
		mb->noselect = true;
	for (clistiter *it = clist_begin(fl->mbf_oflags); it;
	     it = clist_next(it)) {
		struct mailimap_mbx_list_oflag *of = clist_content(it);
		const char *ext;

		if (of->of_type != MAILIMAP_MBX_LIST_OFLAG_FLAG_EXT)
			continue;
		ext = of->of_flag_ext;
		if (!strcasecmp(ext, "NonExistent") ||
		    !strcasecmp(ext, "Noselect"))
			mb->noselect = true;
		/* Cyrus sends them in lower case */
		for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]); i++)
			if (!strcasecmp(ext, roles[i]) && !mb->role)
				mb->role = roles[i];
	}
}

/*
 * libetpan hands a name over as a C string: one holding a NUL byte (in
 * a quoted string or a literal) comes out cut short at it, and would
 * name another folder, or none. The reply's lines are still in the
 * session's buffer until the next command (literals are not: they are
 * read apart), one "* LIST" line per name, in order: a line with a NUL
 * in it, or whose name is a literal of another length than the name
 * that came out, marks its name as one to leave out.
 */
struct list_lines {
	long *lit; /* owned: per LIST line, the literal's length or -1;
		      -2 for a line with a NUL byte */
	size_t n;
};

static void list_lines_scan(struct conn *c, struct list_lines *ll)
{
	MMAPString *b = c->imap ? c->imap->imap_stream_buffer : NULL;
	const char *p, *end;
	size_t cap = 0;

	ll->lit = NULL;
	ll->n = 0;
	if (!b || !b->str)
		return;
	end = b->str + b->len;
	for (p = b->str; p < end;) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *e = nl ? nl : end, *q = e;
		long v = -1;

		if (e - p > 7 && !strncasecmp(p, "* LIST ", 7)) {
			if (q > p && q[-1] == '\r')
				q--;
			if (memchr(p, '\0', (size_t)(e - p))) {
				v = -2;
			} else if (q > p && q[-1] == '}') {
				const char *o = q - 1;

				while (o > p && o[-1] >= '0' && o[-1] <= '9')
					o--;
				if (o > p && o[-1] == '{')
					v = strtol(o, NULL, 10);
			}
			if (ll->n == cap) {
				cap = cap ? 2 * cap : 64;
				ll->lit = xrealloc(ll->lit, cap * sizeof(*ll->lit));
			}
			ll->lit[ll->n++] = v;
		}
		p = e + 1;
	}
}

/*
 * The @k-th listed name: one we may keep? The others are logged (each
 * time the list is made: a server that keeps sending them is worth a
 * line a poll).
 */
static bool list_name_ok(const char *name, const struct list_lines *ll,
			 size_t k)
{
	long v = k < ll->n ? ll->lit[k] : -1;
	char shown[64];
	size_t i;

	if (!name || !*name) {
		log_warn("folder list: a folder with an empty name skipped");
		return false;
	}
	if (v != -2 && (v < 0 || (size_t)v == strlen(name)))
		return true;
	for (i = 0; name[i] && i + 1 < sizeof(shown); i++)
		shown[i] = (unsigned char)name[i] < 0x20 ? '?' : name[i];
	shown[i] = '\0';
	log_warn("folder list: a name with a NUL byte (after \"%s\") skipped",
		 shown);
	return false;
}

int imap_list(struct conn *c, struct imap_mailbox **out, size_t *n)
{
	clist *list = NULL;
	struct imap_mailbox *v;
	struct list_lines ll;
	size_t k = 0, nth = 0;
	int rc;

	*out = NULL;
	*n = 0;
	rc = mailimap_list(c->imap, "", "*", &list);
	if (rc != MAILIMAP_NO_ERROR) {
		/* a tagged NO still hands the list over */
		if (list)
			mailimap_list_result_free(list);
		return grade(c, rc, "list folders");
	}
	list_lines_scan(c, &ll);
	v = xcalloc(clist_count(list) + 1, sizeof(*v));
	for (clistiter *it = clist_begin(list); it; it = clist_next(it)) {
		struct mailimap_mailbox_list *mb = clist_content(it);
		bool dup = false;

		if (!list_name_ok(mb->mb_name, &ll, nth++))
			continue;
		for (size_t i = 0; i < k && !dup; i++)
			dup = !strcmp(v[i].name, mb->mb_name);
		if (dup)
			continue;
		v[k].name = xstrdup(mb->mb_name);
		v[k].delim = mb->mb_delimiter;
		read_list_flags(mb->mb_flag, &v[k]);
		k++;
	}
	mailimap_list_result_free(list);
	free(ll.lit);
	*out = v;
	*n = k;
	return IMAP_OK;
}

void imap_mailboxes_free(struct imap_mailbox *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(v[i].name);
		imap_box_release(&v[i].box);
	}
	free(v);
}

int imap_look(struct conn *c, const char *name, struct imap_box *out)
{
	struct mailimap_selection_info *sel = c->imap->imap_selection_info;

	if (!c->selected || !c->readonly || strcmp(c->selected, name) || !sel)
		return imap_examine(c, name, out);
	/* still selected: the session kept count of what the server said
	 * since (EXISTS comes with any command's reply) */
	memset(out, 0, sizeof(*out));
	out->uidvalidity = sel->sel_uidvalidity;
	out->uidnext = sel->sel_uidnext;
	out->exists = sel->sel_exists;
	out->highestmodseq = c->highestmodseq;
	return IMAP_OK;
}

/* ---- STATUS ---- */

static void read_status_info(clist *info, struct imap_box *out);

/*
 * mailimap_status_att_list_add with the item allocated here: 1.9.4's
 * does not check its malloc (mailimap_types_helper.c) and would write
 * through NULL
 */
static void status_att_add(struct mailimap_status_att_list *atts, int att)
{
	int *p = xmalloc(sizeof(*p));

	*p = att;
	imap_must_ok(clist_append(atts->att_list, p));
}

int imap_status(struct conn *c, const char *name, struct imap_box *out)
{
	struct mailimap_status_att_list *atts;
	struct mailimap_mailbox_data_status *st = NULL;
	char *what;
	int rc;

	memset(out, 0, sizeof(*out));
	if (!conn_name_ok(name))
		return IMAP_FOLDER_BAD;
	atts = imap_must(mailimap_status_att_list_new_empty());
	status_att_add(atts, MAILIMAP_STATUS_ATT_MESSAGES);
	status_att_add(atts, MAILIMAP_STATUS_ATT_UIDNEXT);
	status_att_add(atts, MAILIMAP_STATUS_ATT_UIDVALIDITY);
	if (c->caps & CAP_CONDSTORE)
		status_att_add(atts, MAILIMAP_STATUS_ATT_HIGHESTMODSEQ);
	rc = mailimap_status(c->imap, name, atts, &st);
	mailimap_status_att_list_free(atts);
	if (rc != MAILIMAP_NO_ERROR) {
		/* a tagged NO still hands the data over */
		if (st)
			mailimap_mailbox_data_status_free(st);
		what = xasprintf("get the status of folder %s", name);
		rc = grade(c, rc, what);
		free(what);
		return rc;
	}
	/* an OK without a STATUS line: libetpan hands over NULL */
	if (!st) {
		log_warn("no status of folder %s in the server's reply", name);
		return IMAP_FOLDER_BAD;
	}
	read_status_info(st->st_info_list, out);
	mailimap_mailbox_data_status_free(st);
	return IMAP_OK;
}

/* what a STATUS reply says, into @out */
static void read_status_info(clist *info, struct imap_box *out)
{
	for (clistiter *it = clist_begin(info); it; it = clist_next(it)) {
		struct mailimap_status_info *si = clist_content(it);

		switch (si->st_att) {
		case MAILIMAP_STATUS_ATT_MESSAGES:
			out->exists = si->st_value;
			break;
		case MAILIMAP_STATUS_ATT_UIDNEXT:
			out->uidnext = si->st_value;
			break;
		case MAILIMAP_STATUS_ATT_UIDVALIDITY:
			out->uidvalidity = si->st_value;
			break;
		case MAILIMAP_STATUS_ATT_EXTENSION: {
			struct mailimap_extension_data *ext = si->st_ext_data;

			if (!ext)
				break;
			if (ext->ext_extension == &objectid_api &&
			    ext->ext_type == OBJ_MAILBOXID && ext->ext_data) {
				free(out->mailboxid);
				out->mailboxid = xstrdup(ext->ext_data);
			} else if (ext->ext_extension->ext_id ==
					   MAILIMAP_EXTENSION_CONDSTORE &&
				   ext->ext_data) {
				struct mailimap_condstore_status_info *cs =
					ext->ext_data;

				out->highestmodseq = cs->cs_highestmodseq_value;
			}
			break;
		}
		default:
			break;
		}
	}
}

void imap_box_release(struct imap_box *b)
{
	free(b->mailboxid);
	b->mailboxid = NULL;
}

/* ---- FETCH ---- */

/* the header fields naming and threading need */
static const char *const header_fields[] = { "MESSAGE-ID", "SUBJECT", "FROM",
					     "REFERENCES", "IN-REPLY-TO" };

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_flag(const void *a, const void *b)
{
	int c = strcasecmp(*(char *const *)a, *(char *const *)b);

	return c ? c : strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * Flags as the store keeps them: sorted, space-separated, no \Recent,
 * every one whole however many and however long (a flag is an atom of
 * the reply, which bounds it), each once: keywords compare without case
 * (RFC 3501 §2.3.2), so $Label1 and $label1 are one.
 */
static char *flags_string(struct mailimap_msg_att_dynamic *dyn)
{
	char **names = NULL;
	size_t n = 0, cap = 0, len = 1;
	char *out, *p;

	if (!dyn || !dyn->att_list)
		return xstrdup("");
	for (clistiter *it = clist_begin(dyn->att_list); it;
	     it = clist_next(it)) {
		struct mailimap_flag_fetch *ff = clist_content(it);
		struct mailimap_flag *fl = ff->fl_flag;
		char *name = NULL;

		if (ff->fl_type != MAILIMAP_FLAG_FETCH_OTHER || !fl)
			continue;
		switch (fl->fl_type) {
		case MAILIMAP_FLAG_ANSWERED: name = xstrdup("\\Answered"); break;
		case MAILIMAP_FLAG_FLAGGED: name = xstrdup("\\Flagged"); break;
		case MAILIMAP_FLAG_DELETED: name = xstrdup("\\Deleted"); break;
		case MAILIMAP_FLAG_SEEN: name = xstrdup("\\Seen"); break;
		case MAILIMAP_FLAG_DRAFT: name = xstrdup("\\Draft"); break;
		case MAILIMAP_FLAG_KEYWORD:
			if (fl->fl_data.fl_keyword)
				name = xstrdup(fl->fl_data.fl_keyword);
			break;
		case MAILIMAP_FLAG_EXTENSION:
			/* libetpan drops the '\' */
			if (fl->fl_data.fl_extension)
				name = xasprintf("\\%s",
						 fl->fl_data.fl_extension);
			break;
		}
		/* a flag is an atom: nothing that could split the list */
		if (!name || !*name || strpbrk(name, " \r\n")) {
			free(name);
			continue;
		}
		if (n == cap) {
			cap = cap ? 2 * cap : 16;
			names = xrealloc(names, cap * sizeof(*names));
		}
		names[n++] = name;
	}
	/* each once, whatever its case; then in the store's order */
	size_t k = 0;

	if (n)
		qsort(names, n, sizeof(names[0]), cmp_flag);
	for (size_t i = 0; i < n; i++) {
		if (k && !strcasecmp(names[i], names[k - 1]))
			free(names[i]);
		else
			names[k++] = names[i];
	}
	if (k)
		qsort(names, k, sizeof(names[0]), cmp_str);
	for (size_t i = 0; i < k; i++)
		len += strlen(names[i]) + 1;
	p = out = xmalloc(len);
	*p = '\0';
	for (size_t i = 0; i < k; i++) {
		p += sprintf(p, "%s%s", p == out ? "" : " ", names[i]);
		free(names[i]);
	}
	free(names);
	return out;
}

/* INTERNALDATE to Unix time, and its zone in minutes east of UTC */
static void read_date(const struct mailimap_date_time *dt, int64_t *t,
		      int *zone)
{
	*t = mime_unix_time(dt->dt_year, dt->dt_month, dt->dt_day,
			    dt->dt_hour, dt->dt_min, dt->dt_sec, dt->dt_zone,
			    zone);
}

/* returns whether the reply had a UID item */
static bool parse_att(struct mailimap_msg_att *att, struct imap_msg *m)
{
	bool has_uid = false;

	m->seq = att->att_number;
	for (clistiter *it = clist_begin(att->att_list); it;
	     it = clist_next(it)) {
		struct mailimap_msg_att_item *item = clist_content(it);
		struct mailimap_msg_att_static *st;

		if (item->att_type == MAILIMAP_MSG_ATT_ITEM_DYNAMIC) {
			free(m->flags);
			m->flags = flags_string(item->att_data.att_dyn);
			continue;
		}
		if (item->att_type == MAILIMAP_MSG_ATT_ITEM_EXTENSION) {
			struct mailimap_extension_data *ext =
				item->att_data.att_extension_data;

			if (ext && ext->ext_extension == &objectid_api &&
			    ext->ext_type == OBJ_EMAILID && ext->ext_data &&
			    !m->emailid)
				m->emailid = xstrdup(ext->ext_data);
			continue;
		}
		if (item->att_type != MAILIMAP_MSG_ATT_ITEM_STATIC)
			continue;
		st = item->att_data.att_static;
		switch (st->att_type) {
		case MAILIMAP_MSG_ATT_UID:
			m->uid = st->att_data.att_uid;
			has_uid = true;
			break;
		case MAILIMAP_MSG_ATT_RFC822_SIZE:
			m->size = st->att_data.att_rfc822_size;
			m->has_size = true;
			break;
		case MAILIMAP_MSG_ATT_INTERNALDATE:
			if (st->att_data.att_internal_date) {
				read_date(st->att_data.att_internal_date,
					  &m->date, &m->zone);
				m->has_date = true;
			}
			break;
		case MAILIMAP_MSG_ATT_BODY_SECTION: {
			struct mailimap_msg_att_body_section *sec =
				st->att_data.att_body_section;

			/* for BODY[] sec_section is NULL (LIBETPAN.md §6) */
			if (sec && sec->sec_body_part && !m->header) {
				m->header = sec->sec_body_part;
				m->header_len = sec->sec_length;
			}
			break;
		}
		default:
			break;
		}
	}
	return has_uid;
}

/* the most of one message's header fields kept; the rest of a longer
 * literal is read and dropped, so a server announcing gigabytes costs
 * no memory (libetpan would hold the whole literal) */
#define HEADER_FIELDS_MAX (256 * 1024)

struct fetch_ctx {
	struct imap_fetch *f;
	char *hdr; /* HEADER_FIELDS_MAX bytes, for IMAP_ITEMS_META */
	size_t hdr_len;
	bool hdr_seen; /* a header literal came for this message */
	uint64_t hdr_dropped; /* bytes past the cap */
	const char *folder; /* borrowed: the selected one, for messages */
	bool said_uid0;
};

static const char *c_selected(const struct fetch_ctx *fc)
{
	return fc->folder ? fc->folder : "?";
}

/* the header-fields literal, streamed: kept up to the cap */
static bool on_header_bytes(int type, struct mailimap_msg_att_body_section *sec,
			    const char *bytes, size_t len, void *ctx)
{
	struct fetch_ctx *fc = ctx;
	size_t room = HEADER_FIELDS_MAX - fc->hdr_len;

	(void)sec;
	if (type != MAILIMAP_MSG_ATT_BODY_SECTION)
		return true;
	fc->hdr_seen = true;
	if (len > room) {
		fc->hdr_dropped += len - room;
		len = room;
	}
	memcpy(fc->hdr + fc->hdr_len, bytes, len);
	fc->hdr_len += len;
	return true;
}

static void on_message(struct mailimap_msg_att *att, void *ctx)
{
	struct fetch_ctx *fc = ctx;
	struct imap_fetch *f = fc->f;
	struct imap_msg m = { 0 };
	int rc;

	if (f->cb_rc)
		goto out;
	if (parse_att(att, &m) && !m.uid && !fc->said_uid0) {
		/* RFC 3501 §2.3.1.1: UIDs are non-zero */
		log_warn("folder %s: the server sent UID 0 for message %u; "
			 "ignored",
			 c_selected(fc), m.seq);
		fc->said_uid0 = true;
	}
	if (fc->hdr_seen) {
		m.header = fc->hdr;
		m.header_len = fc->hdr_len;
		if (fc->hdr_dropped)
			log_warn("UID %u: header fields of %llu bytes; the "
				 "first %u kept",
				 m.uid,
				 (unsigned long long)(fc->hdr_len +
						      fc->hdr_dropped),
				 HEADER_FIELDS_MAX);
	}
	/* a FETCH without UID is unsolicited (a flag change pushed by
	 * the server): not an answer to this command */
	if (m.uid) {
		rc = f->fn(&m, f->ctx);
		if (rc)
			f->cb_rc = rc;
		f->count++;
	}
	free(m.flags);
	free(m.emailid);
out:
	fc->hdr_len = 0;
	fc->hdr_seen = false;
	fc->hdr_dropped = 0;
}

void imap_no_progress(size_t current, size_t maximum, void *ctx)
{
}

static struct mailimap_fetch_type *fetch_type(const struct conn *c,
					      enum imap_items items)
{
	struct mailimap_fetch_type *ft;
	struct mailimap_section *sec;
	clist *hdrs;

	ft = imap_must(mailimap_fetch_type_new_fetch_att_list_empty());
	imap_fetch_add(ft, mailimap_fetch_att_new_uid());
	if (items == IMAP_ITEMS_UID)
		return ft;
	if (items == IMAP_ITEMS_DATE) {
		imap_fetch_add(ft, mailimap_fetch_att_new_internaldate());
		return ft;
	}
	imap_fetch_add(ft, mailimap_fetch_att_new_flags());
	if (items == IMAP_ITEMS_FLAGS)
		return ft;
	imap_fetch_add(ft, mailimap_fetch_att_new_internaldate());
	imap_fetch_add(ft, mailimap_fetch_att_new_rfc822_size());
	if (c->caps & CAP_OBJECTID)
		imap_fetch_add(ft, mailimap_fetch_att_new_extension(
					   xstrdup("EMAILID")));
	hdrs = imap_must(clist_new());
	for (size_t i = 0; i < sizeof(header_fields) / sizeof(header_fields[0]);
	     i++)
		imap_must_ok(clist_append(hdrs, xstrdup(header_fields[i])));
	sec = imap_must(mailimap_section_new_header_fields(
		imap_must(mailimap_header_list_new(hdrs))));
	imap_fetch_add(ft, mailimap_fetch_att_new_body_peek_section(sec));
	return ft;
}

/* UIDs of a VANISHED set into @f's list, each range within bounds */
static void take_vanished(struct imap_fetch *f, struct mailimap_set *set)
{
	if (!set)
		return;
	for (clistiter *it = clist_begin(set->set_list); it;
	     it = clist_next(it)) {
		struct mailimap_set_item *si = clist_content(it);
		uint32_t a = si->set_first, b = si->set_last;

		if (!a)
			continue;
		if (!b || b < a) /* '*' or reversed */
			b = b ? a : f->last ? f->last : a;
		f->vanished = xrealloc(f->vanished, (f->nvanished + 1) *
							    sizeof(*f->vanished));
		f->vanished[f->nvanished].first = a;
		f->vanished[f->nvanished].last = b;
		f->nvanished++;
	}
}

/* one FETCH of @set (freed here) as @f asks */
static int fetch_of_set(struct conn *c, struct imap_fetch *f,
			struct mailimap_set *set)
{
	struct mailimap_fetch_type *ft = fetch_type(c, f->items);
	struct mailimap_qresync_vanished *van = NULL;
	struct fetch_ctx ctx = { .f = f, .folder = c->selected };
	clist *result = NULL;
	int rc;

	f->cb_rc = 0;
	f->count = 0;
	if (f->items == IMAP_ITEMS_META) {
		ctx.hdr = xmalloc(HEADER_FIELDS_MAX);
		mailimap_set_msg_body_handler(c->imap, on_header_bytes, &ctx);
	}
	mailimap_set_msg_att_handler(c->imap, on_message, &ctx);
	mailimap_set_progress_callback(c->imap, imap_no_progress, imap_no_progress, &ctx);
	if (!f->by_uid)
		rc = mailimap_fetch(c->imap, set, ft, &result);
	else if (f->changedsince && f->want_vanished && c->qresync)
		rc = mailimap_uid_fetch_qresync(c->imap, set, ft,
						f->changedsince, &result, &van);
	else if (f->changedsince && (c->caps & CAP_CONDSTORE))
		rc = mailimap_uid_fetch_changedsince(c->imap, set, ft,
						     f->changedsince, &result);
	else
		rc = mailimap_uid_fetch(c->imap, set, ft, &result);
	mailimap_set_msg_body_handler(c->imap, NULL, NULL);
	mailimap_set_msg_att_handler(c->imap, NULL, NULL);
	mailimap_set_progress_callback(c->imap, NULL, NULL, NULL);
	free(ctx.hdr);
	/* on a tagged NO libetpan has freed both already (and left the
	 * pointers set) */
	if (rc == MAILIMAP_NO_ERROR && result)
		mailimap_fetch_list_free(result);
	mailimap_fetch_type_free(ft);
	mailimap_set_free(set);
	if (rc == MAILIMAP_NO_ERROR && van) {
		take_vanished(f, van->qr_known_uids);
		mailimap_qresync_vanished_free(van);
	}
	if (rc != MAILIMAP_NO_ERROR)
		return grade(c, rc, "fetch message data");
	if (f->cb_rc == -ECANCELED)
		return IMAP_CANCELLED;
	return IMAP_OK;
}

int imap_fetch(struct conn *c, struct imap_fetch *f)
{
	return fetch_of_set(
		c, f, imap_must(mailimap_set_new_interval(f->first, f->last)));
}

void imap_fetch_release(struct imap_fetch *f)
{
	free(f->vanished);
	f->vanished = NULL;
	f->nvanished = 0;
}

/* ---- commands libetpan has no builder for (LIBETPAN.md §13.1) ---- */

/*
 * raw - send "<tag> @verb @mailbox @rest" (the mailbox quoted as
 * libetpan quotes, after our CR/LF check) and read the reply as a
 * built-in command would, untagged data into imap_response_info. Only
 * for commands whose every reply line libetpan (with our parsers) can
 * read. Returns a libetpan code: 0, or MAILIMAP_ERROR_EXTENSION for NO.
 */
static int raw_send(struct conn *c, const char *verb, const char *mailbox,
		    const char *rest)
{
	mailstream *st = c->imap->imap_stream;
	int r;

	if ((r = mailimap_send_current_tag(c->imap)) ||
	    (r = mailimap_token_send(st, verb)) ||
	    (mailbox && ((r = mailimap_space_send(st)) ||
			 (r = mailimap_mailbox_send(st, mailbox)))) ||
	    (rest && ((r = mailimap_space_send(st)) ||
		      (r = mailimap_token_send(st, rest)))) ||
	    (r = mailimap_crlf_send(st)))
		return r;
	if (mailstream_flush(st) == -1 || !mailimap_read_line(c->imap))
		return MAILIMAP_ERROR_STREAM;
	return MAILIMAP_NO_ERROR;
}

static int raw(struct conn *c, const char *verb, const char *mailbox,
	       const char *rest)
{
	struct mailimap_response *rsp;
	int r, state;

	r = raw_send(c, verb, mailbox, rest);
	if (r)
		return r;
	r = mailimap_parse_response(c->imap, &rsp);
	if (r)
		return r;
	state = rsp->rsp_resp_done->rsp_data.rsp_tagged->rsp_cond_state
			->rsp_type;
	mailimap_response_free(rsp);
	return state == MAILIMAP_RESP_COND_STATE_OK ? MAILIMAP_NO_ERROR
						   : MAILIMAP_ERROR_EXTENSION;
}

/* for the other files of the IMAP layer (imap_i.h) */
int imap_raw_send(struct conn *c, const char *verb, const char *mailbox,
		  const char *rest)
{
	return raw_send(c, verb, mailbox, rest);
}

int imap_raw(struct conn *c, const char *verb, const char *mailbox,
	     const char *rest)
{
	return raw(c, verb, mailbox, rest);
}

int imap_grade(struct conn *c, int rc, const char *what)
{
	return grade(c, rc, what);
}

void imap_read_status(clist *info, struct imap_box *out)
{
	read_status_info(info, out);
}

int imap_mailboxid(struct conn *c, const char *name, char **id)
{
	struct mailimap_response_info *ri;
	char *what;
	int rc;

	*id = NULL;
	if (!(c->caps & CAP_OBJECTID))
		return IMAP_OK;
	if (!conn_name_ok(name))
		return IMAP_FOLDER_BAD;
	rc = raw(c, "STATUS", name, "(MAILBOXID)");
	if (rc) {
		what = xasprintf("get the MAILBOXID of folder %s", name);
		rc = grade(c, rc, what);
		free(what);
		return rc;
	}
	ri = c->imap->imap_response_info;
	if (!ri || !ri->rsp_status)
		return IMAP_OK;
	for (clistiter *it = clist_begin(ri->rsp_status->st_info_list); it;
	     it = clist_next(it)) {
		struct mailimap_status_info *si = clist_content(it);
		struct mailimap_extension_data *ext = si->st_ext_data;

		if (si->st_att == MAILIMAP_STATUS_ATT_EXTENSION && ext &&
		    ext->ext_extension == &objectid_api &&
		    ext->ext_type == OBJ_MAILBOXID && ext->ext_data) {
			*id = xstrdup(ext->ext_data);
			break;
		}
	}
	return IMAP_OK;
}

/*
 * imap_collect_list - the LIST lines of reply @rsp appended to *@v
 * (*@k of *@cap used; duplicates dropped), then each STATUS line given
 * to its folder (has_status).
 */
void imap_collect_list(struct conn *c, struct mailimap_response *rsp,
		       struct imap_mailbox **vp, size_t *kp, size_t *capp)
{
	struct imap_mailbox *v = *vp;
	size_t k = *kp, cap = *capp;
	struct list_lines ll;
	size_t nth = 0;

	if (!rsp->rsp_cont_req_or_resp_data_list)
		return; /* nothing came before the tagged reply */
	list_lines_scan(c, &ll);
	for (int pass = 0; pass < 2; pass++) {
		for (clistiter *it = clist_begin(rsp->rsp_cont_req_or_resp_data_list);
		     it; it = clist_next(it)) {
			struct mailimap_cont_req_or_resp_data *d =
				clist_content(it);
			struct mailimap_mailbox_data *mbd;

			if (d->rsp_type != MAILIMAP_RESP_RESP_DATA ||
			    !d->rsp_data.rsp_resp_data ||
			    d->rsp_data.rsp_resp_data->rsp_type !=
				    MAILIMAP_RESP_DATA_TYPE_MAILBOX_DATA)
				continue;
			mbd = d->rsp_data.rsp_resp_data->rsp_data
				      .rsp_mailbox_data;
			if (pass == 0 && mbd->mbd_type == MAILIMAP_MAILBOX_DATA_LIST &&
			    mbd->mbd_data.mbd_list &&
			    list_name_ok(mbd->mbd_data.mbd_list->mb_name, &ll,
					 nth++)) {
				struct mailimap_mailbox_list *mb =
					mbd->mbd_data.mbd_list;
				bool dup = false;

				for (size_t i = 0; i < k && !dup; i++)
					dup = !strcmp(v[i].name, mb->mb_name);
				if (dup)
					continue;
				if (k == cap) {
					cap = cap ? 2 * cap : 32;
					v = xrealloc(v, cap * sizeof(*v));
				}
				memset(&v[k], 0, sizeof(v[k]));
				v[k].name = xstrdup(mb->mb_name);
				v[k].delim = mb->mb_delimiter;
				read_list_flags(mb->mb_flag, &v[k]);
				k++;
			} else if (pass == 1 &&
				   mbd->mbd_type == MAILIMAP_MAILBOX_DATA_STATUS &&
				   mbd->mbd_data.mbd_status &&
				   mbd->mbd_data.mbd_status->st_mailbox) {
				struct mailimap_mailbox_data_status *st =
					mbd->mbd_data.mbd_status;

				for (size_t i = 0; i < k; i++) {
					if (strcmp(v[i].name, st->st_mailbox))
						continue;
					imap_box_release(&v[i].box);
					read_status_info(st->st_info_list,
							 &v[i].box);
					v[i].has_status = true;
					break;
				}
			}
		}
	}
	free(ll.lit);
	*vp = v;
	*kp = k;
	*capp = cap;
}

/*
 * LIST-STATUS (RFC 5819): the folder list and every folder's STATUS in
 * one round trip. libetpan's store step keeps only the last STATUS of
 * a reply, so the reply is parsed with the lower-level parser and read
 * from the tree it returns (LIBETPAN.md §13.1 "raw_keep"); the session's
 * own state is not touched, which LIST and STATUS do not need.
 */
int imap_list_status(struct conn *c, struct imap_mailbox **out, size_t *n)
{
	struct mailimap_parser_context *pc;
	struct mailimap_response *rsp = NULL;
	struct mailimap_response_tagged *tagged;
	struct imap_mailbox *v = NULL;
	size_t k = 0, cap = 0, indx = 0;
	char tag[16], cmd[128];
	int r;

	*out = NULL;
	*n = 0;
	/* with RETURN, special-use attributes come only when asked for
	 * (RFC 6154 §5.1): without them a poll would take every folder's
	 * role away, and the full round's plain LIST give it back */
	snprintf(cmd, sizeof(cmd),
		 "LIST \"\" \"*\" RETURN (%sSTATUS (MESSAGES UIDNEXT "
		 "UIDVALIDITY%s))",
		 c->caps & CAP_SPECIAL_USE ? "SPECIAL-USE " : "",
		 c->caps & CAP_CONDSTORE ? " HIGHESTMODSEQ" : "");
	r = raw_send(c, cmd, NULL, NULL);
	if (!r) {
		pc = imap_must(mailimap_parser_context_new(c->imap));
		r = mailimap_response_parse(c->imap->imap_stream,
					    c->imap->imap_stream_buffer, pc,
					    &indx, &rsp, 0, NULL);
		mailimap_parser_context_free(pc);
	}
	if (r)
		return grade(c, r, "list folders with their status");
	snprintf(tag, sizeof(tag), "%d", c->imap->imap_tag);
	tagged = rsp->rsp_resp_done &&
				 rsp->rsp_resp_done->rsp_type ==
					 MAILIMAP_RESP_DONE_TYPE_TAGGED ?
			 rsp->rsp_resp_done->rsp_data.rsp_tagged :
			 NULL;
	if (!tagged || strcmp(tagged->rsp_tag, tag)) {
		mailimap_response_free(rsp);
		/* the reply does not answer us: the session is lost */
		return grade(c, MAILIMAP_ERROR_PARSE, "list folders");
	}
	if (tagged->rsp_cond_state->rsp_type != MAILIMAP_RESP_COND_STATE_OK) {
		mailimap_response_free(rsp);
		return grade(c, MAILIMAP_ERROR_LIST, "list folders");
	}
	imap_collect_list(c, rsp, &v, &k, &cap);
	mailimap_response_free(rsp);
	*out = v ? v : xcalloc(1, sizeof(*v));
	*n = k;
	return IMAP_OK;
}

/* ---- keeping a connection honest ---- */

int imap_noop(struct conn *c)
{
	int rc;

	if (conn_is_broken(c))
		return IMAP_CONN_BAD;
	rc = mailimap_noop(c->imap);
	return rc == MAILIMAP_NO_ERROR ? IMAP_OK : grade(c, rc, "send NOOP");
}

bool imap_has_input(struct conn *c)
{
	mailstream *s = c->imap ? c->imap->imap_stream : NULL;
	struct pollfd pfd;
	int fd;

	if (!s)
		return true;
	if (s->read_buffer_len || tls_pending(s))
		return true;
	fd = mailstream_low_get_fd(mailstream_get_low(s));
	if (fd < 0)
		return true;
	pfd.fd = fd;
	pfd.events = POLLIN;
	pfd.revents = 0;
	return poll(&pfd, 1, 0) > 0;
}

/* ---- UID sets and searches by date (growth, and checks of every
 * known UID however scattered) ---- */

/* bytes of "@a" or "@a:@b" and the comma after it */
static size_t range_text(uint32_t a, uint32_t b)
{
	char buf[32];

	return (size_t)(a == b ? snprintf(buf, sizeof(buf), "%u,", a)
			       : snprintf(buf, sizeof(buf), "%u:%u,", a, b));
}

size_t imap_uid_ranges(const uint32_t *uids, size_t n, uint32_t merge_from,
		       size_t max_text, struct imap_uid_range *out,
		       size_t *nout)
{
	size_t i, k = 0, text = 0;

	for (i = 0; i < n; i++) {
		uint32_t u = uids[i];
		size_t was, now;

		if (k && (u == out[k - 1].last + 1 ||
			  (out[k - 1].last >= merge_from && u >= merge_from))) {
			/* growing the last range changes its text only */
			was = range_text(out[k - 1].first, out[k - 1].last);
			now = range_text(out[k - 1].first, u);
			if (text - was + now > max_text)
				break;
			text = text - was + now;
			out[k - 1].last = u;
			continue;
		}
		now = range_text(u, u);
		if (k && text + now > max_text)
			break;
		text += now;
		out[k].first = out[k].last = u;
		k++;
	}
	*nout = k;
	return i;
}

struct mailimap_set *imap_set_of(const struct imap_uid_range *v, size_t n)
{
	struct mailimap_set *set = imap_must(mailimap_set_new_empty());

	for (size_t i = 0; i < n; i++)
		imap_must_ok(
			mailimap_set_add_interval(set, v[i].first, v[i].last));
	return set;
}

int imap_fetch_set(struct conn *c, struct imap_fetch *f,
		   const struct imap_uid_range *v, size_t n)
{
	f->cb_rc = 0;
	f->count = 0;
	if (!n)
		return IMAP_OK;
	/* a set names the messages wanted: nothing conditional */
	f->changedsince = 0;
	f->want_vanished = false;
	return fetch_of_set(c, f, imap_set_of(v, n));
}

/* the day of Unix time @t (UTC) as a SEARCH date */
static struct mailimap_date *search_day(int64_t t)
{
	time_t tt = (time_t)t;
	struct tm tm;

	gmtime_r(&tt, &tm);
	return imap_must(mailimap_date_new(tm.tm_mday, tm.tm_mon + 1,
					   tm.tm_year + 1900));
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

bool imap_in_ranges(const struct imap_uid_range *v, size_t n, uint32_t u)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (u < v[mid].first)
			hi = mid;
		else if (u > v[mid].last)
			lo = mid + 1;
		else
			return true;
	}
	return false;
}

int imap_uid_search_set(struct conn *c, const struct imap_uid_range *v,
			size_t n, int64_t since, int64_t before,
			uint32_t **uids, size_t *nuids)
{
	struct mailimap_search_key *key;
	clist *result = NULL;
	uint32_t *out;
	size_t k = 0;
	int rc;

	*uids = NULL;
	*nuids = 0;
	if (!n)
		return IMAP_OK;
	key = imap_must(mailimap_search_key_new_multiple_empty());
	imap_search_add(key, mailimap_search_key_new_uid(imap_set_of(v, n)));
	if (since > 0)
		imap_search_add(
			key, mailimap_search_key_new_since(search_day(since)));
	if (before > 0)
		imap_search_add(key, mailimap_search_key_new_before(
					     search_day(before)));
	rc = mailimap_uid_search(c->imap, NULL, key, &result);
	mailimap_search_key_free(key);
	if (rc != MAILIMAP_NO_ERROR) {
		/* a tagged NO still hands the result over */
		if (result)
			mailimap_search_result_free(result);
		return grade(c, rc, "search folder");
	}
	out = xmalloc((clist_count(result) + 1) * sizeof(*out));
	for (clistiter *it = clist_begin(result); it; it = clist_next(it)) {
		uint32_t u = *(uint32_t *)clist_content(it);

		/* only what was asked: a server may add the highest UID */
		if (imap_in_ranges(v, n, u))
			out[k++] = u;
	}
	mailimap_search_result_free(result);
	/* RFC 3501 does not promise an order */
	qsort(out, k, sizeof(*out), cmp_u32);
	*uids = out;
	*nuids = k;
	return IMAP_OK;
}
