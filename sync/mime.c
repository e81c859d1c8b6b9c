/*
 * mime.c - the header fields convoyfs keeps (Message-ID, Subject, From,
 * References, In-Reply-To) and RFC 2047 encoded words. Input comes from
 * any sender through any server, so every buffer is length-delimited,
 * nothing fails on bad bytes, and every string handed out is valid UTF-8.
 */
#define LOG_CAT "mime"
#include "sync_i.h"

#include <errno.h>
#include <iconv.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <strings.h>

#include "common.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static const char replacement[] = "\xEF\xBF\xBD"; /* U+FFFD */

/* a growing byte string, always NUL-terminated once anything was added */
struct sbuf {
	char *p;
	size_t len, cap;
};

static void sbuf_add(struct sbuf *b, const void *s, size_t n)
{
	if (b->cap - b->len < n + 1) {
		size_t cap = b->cap ? b->cap : 64;

		while (cap - b->len < n + 1)
			cap *= 2;
		b->p = xrealloc(b->p, cap);
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void sbuf_addc(struct sbuf *b, char c)
{
	sbuf_add(b, &c, 1);
}

/* the string, owned by the caller; "" if nothing was added */
static char *sbuf_take(struct sbuf *b)
{
	char *p = b->p ? b->p : xstrdup("");

	b->p = NULL;
	b->len = b->cap = 0;
	return p;
}

/*
 * Length of the valid UTF-8 character at @s (@len > 0), or 0 with the
 * length of its maximal valid prefix in *@bad (at least 1): one broken
 * sequence becomes one U+FFFD (Unicode §3.9). Overlongs, surrogates and
 * values above U+10FFFF are invalid.
 */
static size_t utf8_len(const unsigned char *s, size_t len, size_t *bad)
{
	unsigned char c = s[0], lo = 0x80, hi = 0xBF;
	size_t need, i;

	*bad = 1;
	if (c < 0x80)
		return 1;
	if (c < 0xC2 || c > 0xF4)
		return 0;
	need = c < 0xE0 ? 1 : c < 0xF0 ? 2 : 3;
	if (c == 0xE0)
		lo = 0xA0;
	else if (c == 0xED)
		hi = 0x9F;
	else if (c == 0xF0)
		lo = 0x90;
	else if (c == 0xF4)
		hi = 0x8F;
	for (i = 1; i <= need; i++) {
		if (i >= len || s[i] < lo || s[i] > hi) {
			*bad = i;
			return 0;
		}
		lo = 0x80;
		hi = 0xBF;
	}
	return need + 1;
}

/*
 * Append @n bytes of @s to @out as valid UTF-8: NUL dropped, each invalid
 * sequence one U+FFFD; with @ctl_space, the other C0 controls (but TAB)
 * and DEL become spaces, for raw values that may reach an IMAP command.
 */
static void utf8_clean(struct sbuf *out, const char *s, size_t n,
		       bool ctl_space)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t k, bad;

	while (n) {
		k = utf8_len(p, n, &bad);
		if (!k) {
			sbuf_add(out, replacement, 3);
			k = bad;
		} else if (*p == '\0') {
			/* dropped */
		} else if (ctl_space && ((*p < 0x20 && *p != '\t') ||
					 *p == 0x7F)) {
			sbuf_addc(out, ' ');
		} else {
			sbuf_add(out, p, k);
		}
		p += k;
		n -= k;
	}
}

static bool is_wsp(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* trim folding white space at both ends, in place */
static char *trim(char *s)
{
	size_t n;

	while (is_wsp(*s))
		s++;
	n = strlen(s);
	while (n && is_wsp(s[n - 1]))
		n--;
	s[n] = '\0';
	return s;
}

/* ---- RFC 2047 encoded words ---- */

/*
 * Labels that mail gets wrong in practice, mapped to the superset that
 * decodes what senders really wrote (the WHATWG Encoding Standard does
 * the same): Windows mailers label cp1252 text Latin-1 or ASCII, GBK
 * text GB2312, and so on.
 */
static const struct {
	const char *label, *name;
} charset_aliases[] = {
	{ "us-ascii", "WINDOWS-1252" },	  { "ascii", "WINDOWS-1252" },
	{ "iso-8859-1", "WINDOWS-1252" }, { "iso_8859-1", "WINDOWS-1252" },
	{ "latin1", "WINDOWS-1252" },	  { "gb2312", "GB18030" },
	{ "gbk", "GB18030" },		  { "x-gbk", "GB18030" },
	{ "ks_c_5601-1987", "CP949" },	  { "euc-kr", "CP949" },
	{ "shift_jis", "CP932" },	  { "x-sjis", "CP932" },
	{ "iso-8859-8-i", "ISO-8859-8" },
};

#define CHARSET_MAX 64

/* an encoded word "=?charset[*lang]?B|Q?text?=" that parsed */
struct word {
	char charset[CHARSET_MAX]; /* without the RFC 2231 language */
	char enc; /* 'B' or 'Q' */
	const char *text;
	size_t textlen;
	const char *end; /* just after "?=" */
};

static int b64_value(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Parse the encoded word at @p (which starts with "=?"). Anything that
 * does not have the RFC 2047 §2 shape fails, and the caller keeps it as
 * literal text: encoded text is printable ASCII without '?' or space,
 * and B text is base64 (padding optional).
 */
static bool word_parse(const char *p, struct word *w)
{
	const char *cs = p + 2, *q = cs, *t;
	size_t cslen;

	while (*q > ' ' && *q < 0x7F && *q != '?')
		q++;
	if (*q != '?')
		return false;
	cslen = (size_t)(q - cs);
	/* RFC 2231 §5: "charset*language" */
	for (size_t i = 0; i < cslen; i++) {
		if (cs[i] == '*') {
			cslen = i;
			break;
		}
	}
	if (cslen == 0 || cslen >= CHARSET_MAX)
		return false;
	if (q[1] == 'B' || q[1] == 'b')
		w->enc = 'B';
	else if (q[1] == 'Q' || q[1] == 'q')
		w->enc = 'Q';
	else
		return false;
	if (q[2] != '?')
		return false;
	t = q + 3;
	for (q = t; *q > ' ' && *q < 0x7F && *q != '?'; q++) {
		if (w->enc == 'B' && *q != '=' && b64_value(*q) < 0)
			return false;
	}
	if (q[0] != '?' || q[1] != '=')
		return false;
	memcpy(w->charset, cs, cslen);
	w->charset[cslen] = '\0';
	w->text = t;
	w->textlen = (size_t)(q - t);
	w->end = q + 2;
	return true;
}

/* append the bytes that word @w encodes to @out */
static void word_decode(const struct word *w, struct sbuf *out)
{
	const char *s = w->text;
	size_t n = w->textlen, i;

	if (w->enc == 'B') {
		unsigned int acc = 0, bits = 0;

		for (i = 0; i < n; i++) {
			/* '=' ends a group: "YQ==YQ==" from glued words */
			if (s[i] == '=') {
				acc = bits = 0;
				continue;
			}
			acc = (acc << 6 | (unsigned int)b64_value(s[i])) &
			      0xFFFF;
			bits += 6;
			if (bits >= 8) {
				bits -= 8;
				sbuf_addc(out, (char)((acc >> bits) & 0xFF));
			}
		}
		return;
	}
	for (i = 0; i < n; i++) {
		int hi, lo;

		if (s[i] == '_') {
			sbuf_addc(out, ' ');
		} else if (s[i] == '=' && i + 2 < n &&
			   (hi = hex_value(s[i + 1])) >= 0 &&
			   (lo = hex_value(s[i + 2])) >= 0) {
			sbuf_addc(out, (char)(hi << 4 | lo));
			i += 2;
		} else {
			sbuf_addc(out, s[i]);
		}
	}
}

/*
 * A charset name from a message goes to iconv_open(), which gives
 * meaning to "//" suffixes: accept only what real charset names use.
 */
static bool charset_is_plain(const char *cs)
{
	for (; *cs; cs++) {
		bool alnum = (*cs >= 'a' && *cs <= 'z') ||
			     (*cs >= 'A' && *cs <= 'Z') ||
			     (*cs >= '0' && *cs <= '9');

		if (!alnum && !strchr("-_.:+", *cs))
			return false;
	}
	return true;
}

/*
 * Append @n bytes in @charset to @out as UTF-8. An unknown charset keeps
 * the bytes as they are (ASCII survives; utf8_clean() later turns the
 * rest into U+FFFD); a byte iconv rejects becomes U+FFFD.
 */
static void charset_convert(struct sbuf *out, const char *charset,
			    const char *in, size_t n)
{
	const char *name = charset;
	char tmp[256], *ip = (char *)in, *op;
	size_t il = n, ol, rc;
	iconv_t cd;

	if (!n)
		return;
	if (!strcasecmp(charset, "utf-8") || !strcasecmp(charset, "utf8")) {
		sbuf_add(out, in, n);
		return;
	}
	for (size_t i = 0; i < ARRAY_SIZE(charset_aliases); i++) {
		if (!strcasecmp(charset, charset_aliases[i].label)) {
			name = charset_aliases[i].name;
			break;
		}
	}
	cd = charset_is_plain(name) ? iconv_open("UTF-8", name) : (iconv_t)-1;
	if (cd == (iconv_t)-1) {
		log_debug("unknown charset %s in encoded word", charset);
		sbuf_add(out, in, n);
		return;
	}
	while (il) {
		op = tmp;
		ol = sizeof(tmp);
		rc = iconv(cd, &ip, &il, &op, &ol);
		sbuf_add(out, tmp, (size_t)(op - tmp));
		if (rc != (size_t)-1 || errno == E2BIG)
			continue;
		sbuf_add(out, replacement, 3);
		if (errno != EILSEQ)
			break; /* EINVAL: a sequence cut off at the end */
		ip++;
		il--;
	}
	/* a stateful charset (ISO-2022-JP) may owe a shift back */
	op = tmp;
	ol = sizeof(tmp);
	if (iconv(cd, NULL, NULL, &op, &ol) != (size_t)-1)
		sbuf_add(out, tmp, (size_t)(op - tmp));
	iconv_close(cd);
}

/* convert the bytes of the pending words, if any */
static void pend_flush(struct sbuf *out, const char *charset,
		       struct sbuf *pend)
{
	if (pend->len) {
		charset_convert(out, charset, pend->p, pend->len);
		pend->len = 0;
	}
}

char *mime_decode_words(const char *s)
{
	struct sbuf out = { 0 }, pend = { 0 }, res = { 0 };
	char pend_cs[CHARSET_MAX] = "";
	bool after_word = false;
	struct word w;
	const char *p = s ? s : "", *q;

	while (*p) {
		if (p[0] == '=' && p[1] == '?' && word_parse(p, &w)) {
			/*
			 * Adjacent words in one charset are converted
			 * together: senders split characters across words.
			 */
			if (pend.len && strcasecmp(pend_cs, w.charset))
				pend_flush(&out, pend_cs, &pend);
			strcpy(pend_cs, w.charset);
			word_decode(&w, &pend);
			p = w.end;
			after_word = true;
			continue;
		}
		if (after_word && is_wsp(*p)) {
			/* RFC 2047 §6.2: no space between encoded words */
			for (q = p; is_wsp(*q); q++)
				;
			if (q[0] == '=' && q[1] == '?' && word_parse(q, &w)) {
				p = q;
				continue;
			}
		}
		pend_flush(&out, pend_cs, &pend);
		after_word = false;
		sbuf_addc(&out, *p++);
	}
	pend_flush(&out, pend_cs, &pend);
	free(pend.p);

	utf8_clean(&res, out.p, out.len, false);
	free(out.p);
	return sbuf_take(&res);
}

/* ---- header fields ---- */

enum field {
	F_MESSAGE_ID,
	F_SUBJECT,
	F_FROM,
	F_REFERENCES,
	F_IN_REPLY_TO,
	F_DATE,
	F_COUNT
};

static const char *const field_names[F_COUNT] = {
	[F_MESSAGE_ID] = "message-id",	 [F_SUBJECT] = "subject",
	[F_FROM] = "from",		 [F_REFERENCES] = "references",
	[F_IN_REPLY_TO] = "in-reply-to", [F_DATE] = "date",
};

/*
 * Which field the line @s (@n bytes) starts, with the offset of its value
 * in *@value; -1 if it is not a field line or not one we keep. A name is
 * printable ASCII (RFC 5322 §3.6.8); white space before the colon is the
 * obsolete syntax of §4.5.
 */
static int field_match(const char *s, size_t n, size_t *value)
{
	size_t name = 0, i;

	while (name < n && s[name] > ' ' && s[name] < 0x7F && s[name] != ':')
		name++;
	i = name;
	while (i < n && (s[i] == ' ' || s[i] == '\t'))
		i++;
	if (!name || i >= n || s[i] != ':')
		return -1;
	*value = i + 1;
	for (int f = 0; f < F_COUNT; f++) {
		if (strlen(field_names[f]) == name &&
		    !strncasecmp(s, field_names[f], name))
			return f;
	}
	return -1;
}

/* append @n bytes to @b without the NULs, which would cut the C string */
static void add_no_nul(struct sbuf *b, const char *s, size_t n)
{
	const char *z;

	while (n && (z = memchr(s, '\0', n))) {
		sbuf_add(b, s, (size_t)(z - s));
		n -= (size_t)(z - s) + 1;
		s = z + 1;
	}
	sbuf_add(b, s, n);
}

static char *decoded_value(const char *raw)
{
	char *d = mime_decode_words(raw), *t = trim(d);
	char *r = xstrdup(t);

	free(d);
	return r;
}

static char *raw_value(const char *raw)
{
	struct sbuf b = { 0 };
	char *r;

	sbuf_add(&b, "", 0);
	utf8_clean(&b, raw, strlen(raw), true);
	r = xstrdup(trim(b.p));
	free(b.p);
	return r;
}

/*
 * The first "<...>" of a Message-ID, without the white space that folding
 * may have put inside (an id has none, RFC 5322 §3.6.4); failing that,
 * a bare id of one word, as some mailers write it.
 */
static char *message_id(const char *raw)
{
	char *v = raw_value(raw), *lt = v, *gt;
	struct sbuf b = { 0 };

	while ((lt = strchr(lt, '<')) && (gt = strchr(lt + 1, '>'))) {
		for (const char *c = lt; c <= gt; c++) {
			if (*c != ' ' && *c != '\t')
				sbuf_addc(&b, *c);
		}
		if (b.len > 2) {
			free(v);
			return sbuf_take(&b);
		}
		b.len = 0;
		lt = gt + 1;
	}
	free(b.p);
	if (*v && !strpbrk(v, " \t"))
		return v;
	free(v);
	return NULL;
}

int64_t mime_unix_time(int year, int month, int day, int hour, int min,
		       int sec, int zone_hhmm, int *zone)
{
	struct tm tm = { 0 };
	int z = abs(zone_hhmm), sign = zone_hhmm < 0 ? -1 : 1;

	*zone = sign * (z / 100 * 60 + z % 100);
	tm.tm_year = year - 1900;
	tm.tm_mon = month - 1;
	tm.tm_mday = day;
	tm.tm_hour = hour;
	tm.tm_min = min;
	tm.tm_sec = sec;
	return (int64_t)timegm(&tm) - (int64_t)*zone * 60;
}

/* the Date: field (RFC 5322 §3.3, libetpan's parser) as Unix time and
 * zone; left 0 when it cannot be read */
static void parse_date(const char *v, struct mime_fields *out)
{
	struct mailimf_date_time *dt = NULL;
	size_t idx = 0;

	if (mailimf_date_time_parse(v, strlen(v), &idx, &dt) !=
		    MAILIMF_NO_ERROR ||
	    !dt)
		return;
	if (dt->dt_year >= 1970 && dt->dt_year < 10000 && dt->dt_month >= 1 &&
	    dt->dt_month <= 12 && dt->dt_day >= 1 && dt->dt_day <= 31)
		out->date = mime_unix_time(dt->dt_year, dt->dt_month,
					   dt->dt_day, dt->dt_hour, dt->dt_min,
					   dt->dt_sec, dt->dt_zone,
					   &out->date_zone);
	mailimf_date_time_free(dt);
}

void mime_parse_fields(const char *hdr, size_t len, struct mime_fields *out)
{
	struct sbuf raw[F_COUNT] = { 0 };
	bool seen[F_COUNT] = { false };
	size_t pos = 0, n, value;
	const char *line, *nl;
	int cur = -1, f;

	memset(out, 0, sizeof(*out));
	if (!hdr)
		len = 0;
	while (pos < len) {
		line = hdr + pos;
		nl = memchr(line, '\n', len - pos);
		n = nl ? (size_t)(nl - line) : len - pos;
		pos += n + (nl != NULL);
		if (n && line[n - 1] == '\r')
			n--;
		/*
		 * Only an empty line ends the header. A line of white space
		 * continues the field above it (RFC 5322 §2.2.3).
		 */
		if (!n)
			break;
		if (line[0] == ' ' || line[0] == '\t') {
			/* unfolding drops the line break, keeps the WSP */
			if (cur >= 0)
				add_no_nul(&raw[cur], line, n);
			continue;
		}
		cur = -1;
		f = field_match(line, n, &value);
		if (f < 0 || seen[f])
			continue;
		seen[f] = true;
		cur = f;
		add_no_nul(&raw[f], line + value, n - value);
	}

	for (f = 0; f < F_COUNT; f++) {
		const char *v;

		if (!seen[f])
			continue;
		v = raw[f].p ? raw[f].p : "";
		switch (f) {
		case F_MESSAGE_ID:
			out->message_id = message_id(v);
			break;
		case F_SUBJECT:
			out->subject = decoded_value(v);
			break;
		case F_FROM:
			out->from = decoded_value(v);
			break;
		case F_REFERENCES:
			out->references = raw_value(v);
			break;
		case F_IN_REPLY_TO:
			out->in_reply_to = raw_value(v);
			break;
		case F_DATE:
			parse_date(v, out);
			break;
		}
		free(raw[f].p);
	}
}

void mime_fields_release(struct mime_fields *f)
{
	free(f->message_id);
	free(f->subject);
	free(f->from);
	free(f->references);
	free(f->in_reply_to);
	memset(f, 0, sizeof(*f));
}
