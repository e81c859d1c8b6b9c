/*
 * names.c - message file names and folder name components (DESIGN §5).
 * Everything that ends up as a name in the tree passes through here, so
 * the rules against hostile subjects and folder names live in one place.
 * libc only: the unit test links this file alone.
 */
#include "names.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define REPLACEMENT 0xFFFD

/*
 * Decode the character at @s (@len > 0 bytes left) into *@cp. Returns its
 * length, or 0 for an invalid sequence with *@cp = -1 and the length of
 * its maximal valid prefix in *@bad (at least 1), so that one broken
 * sequence becomes one U+FFFD (Unicode §3.9, "maximal subpart").
 * Overlongs, surrogates and values above U+10FFFF are invalid.
 */
static size_t utf8_next(const unsigned char *s, size_t len, int32_t *cp,
			size_t *bad)
{
	unsigned char c = s[0], lo = 0x80, hi = 0xBF;
	size_t need, i;
	int32_t v;

	*bad = 1;
	*cp = -1;
	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c < 0xC2 || c > 0xF4)
		return 0;
	if (c < 0xE0) {
		need = 1;
		v = c & 0x1F;
	} else if (c < 0xF0) {
		need = 2;
		v = c & 0x0F;
		if (c == 0xE0)
			lo = 0xA0;
		else if (c == 0xED)
			hi = 0x9F;
	} else {
		need = 3;
		v = c & 0x07;
		if (c == 0xF0)
			lo = 0x90;
		else if (c == 0xF4)
			hi = 0x8F;
	}
	for (i = 1; i <= need; i++) {
		if (i >= len || s[i] < lo || s[i] > hi) {
			*bad = i;
			return 0;
		}
		v = (v << 6) | (s[i] & 0x3F);
		lo = 0x80;
		hi = 0xBF;
	}
	*cp = v;
	return need + 1;
}

static size_t utf8_put(char *out, int32_t cp)
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xC0 | (cp >> 6));
		out[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xE0 | (cp >> 12));
		out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		out[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	out[0] = (char)(0xF0 | (cp >> 18));
	out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	out[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/*
 * C0, DEL and C1 controls, plus the line separators and bidirectional
 * controls: the first break `ls` output and terminals, the second let a
 * subject display reversed ("exe.gpj" shown as "jpg.exe").
 */
static bool is_control(int32_t cp)
{
	return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F) || cp == 0x061C ||
	       cp == 0x200E || cp == 0x200F || cp == 0x2028 ||
	       cp == 0x2029 || (cp >= 0x202A && cp <= 0x202E) ||
	       (cp >= 0x2066 && cp <= 0x2069);
}

/*
 * Write the sanitised subject @s into @out, at most @room bytes, and
 * return its length. Spaces are only written before a following
 * character, which collapses runs and trims both ends, also at the cut.
 */
static size_t subject_put(char *out, size_t room, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t left = s ? strlen(s) : 0, len = 0, n, bad;
	bool space = false;
	char enc[4];
	int32_t cp;

	while (left) {
		n = utf8_next(p, left, &cp, &bad);
		if (!n) {
			n = bad;
			cp = REPLACEMENT;
		} else if (cp == '/' || cp == ':') {
			cp = '-';
		} else if (is_control(cp)) {
			cp = ' ';
		}
		p += n;
		left -= n;
		if (cp == ' ') {
			space = len > 0;
			continue;
		}
		n = utf8_put(enc, cp);
		if (len + space + n > room)
			break;
		if (space)
			out[len++] = ' ';
		memcpy(out + len, enc, n);
		len += n;
		space = false;
	}
	return len;
}

/* "<date> <subject> #<id><ext>": message files and conversation dirs */
static size_t dated_name(char *buf, int64_t date, int zone,
			 const char *subject, int64_t id, const char *ext)
{
	static const char nosubj[] = "(no subject)";
	char head[64], tail[32];
	int64_t local;
	size_t hl, tl, sl;
	struct tm tm;
	time_t t;

	/* a date beyond what gmtime can show is a server bug: show the epoch */
	if (__builtin_add_overflow(date, (int64_t)zone * 60, &local))
		local = 0;
	t = (time_t)local;
	if ((int64_t)t != local || !gmtime_r(&t, &tm)) {
		t = 0;
		gmtime_r(&t, &tm);
	}
	hl = (size_t)snprintf(head, sizeof(head), "%04lld-%02d-%02d %02d.%02d ",
			      (long long)tm.tm_year + 1900, tm.tm_mon + 1,
			      tm.tm_mday, tm.tm_hour, tm.tm_min);
	tl = (size_t)snprintf(tail, sizeof(tail), " #%" PRId64 "%s", id, ext);

	memcpy(buf, head, hl);
	sl = subject_put(buf + hl, NAMES_MAX - hl - tl, subject);
	if (!sl) {
		sl = sizeof(nosubj) - 1;
		memcpy(buf + hl, nosubj, sl);
	}
	memcpy(buf + hl + sl, tail, tl + 1);
	return hl + sl + tl;
}

size_t names_message(char *buf, int64_t date, int zone, const char *subject,
		     int64_t umid)
{
	return dated_name(buf, date, zone, subject, umid, ".eml");
}

size_t names_conversation(char *buf, int64_t date, int zone,
			  const char *subject, int64_t conv)
{
	return dated_name(buf, date, zone, subject, conv, "");
}

/* the id of a name made by dated_name() with @ext, or -1 */
static int64_t dated_name_id(const char *name, const char *ext)
{
	size_t len, end, i, el = strlen(ext);
	int64_t v = 0;

	if (!name)
		return -1;
	len = strlen(name);
	if (len < el || memcmp(name + len - el, ext, el) != 0)
		return -1;
	end = len - el;
	i = end;
	while (i > 0 && name[i - 1] >= '0' && name[i - 1] <= '9')
		i--;
	if (i == end || i < 2 || name[i - 1] != '#' || name[i - 2] != ' ')
		return -1;
	/* names_message() never writes leading zeros: "#007" is another name */
	if (name[i] == '0' && end - i > 1)
		return -1;
	for (; i < end; i++) {
		int d = name[i] - '0';

		if (v > (INT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	return v;
}

size_t names_component(char *buf, const char *raw, size_t rawlen)
{
	const unsigned char *p = (const unsigned char *)raw;
	size_t len = 0, n, bad;
	char enc[4];
	int32_t cp;

	if (!raw)
		rawlen = 0;
	/* "", "." and ".." are not names; a leading '.' would hide it */
	if (rawlen == 0 || p[0] == '.')
		buf[len++] = '_';
	while (rawlen) {
		n = utf8_next(p, rawlen, &cp, &bad);
		if (!n) {
			n = bad;
			cp = REPLACEMENT;
		} else if (cp == '/' || is_control(cp)) {
			cp = '_';
		}
		p += n;
		rawlen -= n;
		n = utf8_put(enc, cp);
		if (len + n > NAMES_MAX)
			break;
		memcpy(buf + len, enc, n);
		len += n;
	}
	buf[len] = '\0';
	return len;
}

int64_t names_message_umid(const char *name)
{
	return dated_name_id(name, ".eml");
}

int64_t names_conversation_id(const char *name)
{
	return dated_name_id(name, "");
}
