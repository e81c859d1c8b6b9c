/*
 * auth.c - AUTHENTICATE XOAUTH2 (Google's) and OAUTHBEARER (RFC 7628)
 * with a bearer token, sent through libetpan's lower-level senders:
 * its mailimap_authenticate goes through Cyrus SASL, which has neither,
 * and its mailimap_oauth2_authenticate knows XOAUTH2 only, always sends
 * the initial response and drops the server's error challenge.
 */
#define LOG_CAT "imap"
#include "sync_i.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "common.h"
#include "imap_i.h"

/* @n bytes of @in as base64, a new string */
static char *auth_b64(const char *in, size_t n)
{
	char *out = xmalloc(4 * ((n + 2) / 3) + 1);

	EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)in,
			(int)n);
	return out;
}

/* the base64 text @s (@n bytes) decoded into a new string, or NULL
 * when it is not base64 */
static char *auth_unb64(const char *s, size_t n)
{
	char *out;
	int k;

	if (n % 4 || n > 65536)
		return NULL;
	out = xmalloc(n / 4 * 3 + 1);
	k = EVP_DecodeBlock((unsigned char *)out, (const unsigned char *)s,
			    (int)n);
	if (k < 0) {
		free(out);
		return NULL;
	}
	/* EVP_DecodeBlock counts the padding as zero bytes */
	if (n && s[n - 1] == '=')
		k--;
	if (n > 1 && s[n - 2] == '=')
		k--;
	out[k] = '\0';
	return out;
}

static char auth_printable(unsigned char ch)
{
	return ch < 0x20 || ch >= 0x7f ? '?' : (char)ch;
}

/*
 * The value of member @key of the JSON object @json into @out, made
 * printable: a string's text or a bare value (number, true); "" when
 * there is none. Enough for the flat objects of RFC 7628 §3.2.2 and of
 * Google's XOAUTH2 errors; anything else reads as no value.
 */
static void auth_json_field(const char *json, const char *key, char *out,
			    size_t len)
{
	size_t k = strlen(key), n = 0;
	const char *p = json;

	out[0] = '\0';
	while ((p = strchr(p, '"'))) {
		bool match = !strncmp(++p, key, k) && p[k] == '"';

		/* past the whole string, key or not */
		while (*p && *p != '"') {
			if (*p == '\\' && p[1])
				p++;
			p++;
		}
		if (!*p)
			return;
		p++;
		if (!match)
			continue;
		p += strspn(p, " \t\r\n");
		if (*p != ':')
			continue;
		p++;
		p += strspn(p, " \t\r\n");
		if (*p == '"') {
			for (p++; *p && *p != '"' && n + 1 < len; p++) {
				if (*p == '\\' && p[1])
					p++;
				out[n++] = auth_printable(*p);
			}
		} else {
			for (; *p && !strchr(",} \t\r\n", *p) && n + 1 < len; p++)
				out[n++] = auth_printable(*p);
		}
		out[n] = '\0';
		return;
	}
}

/*
 * The server's error challenge, the line "+ base64(JSON)" in @line, as
 * "status S, scope C" into @why (what of it there is).
 */
static void auth_read_challenge(const char *line, char *why, size_t whylen)
{
	char status[128], scope[256];
	size_t n;
	char *json;

	line++;
	if (*line == ' ')
		line++;
	n = strcspn(line, "\r\n");
	json = auth_unb64(line, n);
	if (!json) {
		snprintf(why, whylen, "an error challenge that is not base64");
		return;
	}
	auth_json_field(json, "status", status, sizeof(status));
	auth_json_field(json, "scope", scope, sizeof(scope));
	free(json);
	if (*status && *scope)
		snprintf(why, whylen, "status %s, scope %s", status, scope);
	else if (*status)
		snprintf(why, whylen, "status %s", status);
	else
		snprintf(why, whylen, "an error without a status");
}

/*
 * Send "[<tag> ]@a[ @b]\r\n" and flush. @secret: the bytes go to the
 * logger as private data (their length only is shown under -d).
 */
static int auth_send(mailimap *imap, bool tagged, const char *a,
		     const char *b, bool secret)
{
	mailstream *st = imap->imap_stream;
	int r = 0;

	if (secret)
		mailstream_set_privacy(st, 0);
	if (tagged)
		r = mailimap_send_current_tag(imap);
	if (!r && *a)
		r = mailimap_token_send(st, a);
	if (!r && b)
		r = mailimap_space_send(st);
	if (!r && b)
		r = mailimap_token_send(st, b);
	if (!r)
		r = mailimap_crlf_send(st);
	if (!r && mailstream_flush(st) == -1)
		r = MAILIMAP_ERROR_STREAM;
	if (secret)
		mailstream_set_privacy(st, 1);
	return r;
}

/* the next line of the reply into the session's buffer; *@cont: whether
 * it is a continuation request ("+") */
static int auth_read(mailimap *imap, bool *cont)
{
	if (!mailimap_read_line(imap))
		return MAILIMAP_ERROR_STREAM;
	*cont = imap->imap_stream_buffer->str[0] == '+';
	return 0;
}

/* a user name as an RFC 5801 saslname: "," and "=" escaped */
static char *auth_saslname(const char *user)
{
	char *out = xmalloc(3 * strlen(user) + 1), *o = out;

	for (; *user; user++) {
		if (*user == ',') {
			memcpy(o, "=2C", 3);
			o += 3;
		} else if (*user == '=') {
			memcpy(o, "=3D", 3);
			o += 3;
		} else {
			*o++ = *user;
		}
	}
	*o = '\0';
	return out;
}

static char *auth_blob(bool bearer, const char *user, const char *token,
		       const char *host, const char *port)
{
	char *name, *blob;

	if (!bearer)
		return xasprintf("user=%s\001auth=Bearer %s\001\001", user,
				 token);
	/* RFC 7628 §3.1: gs2-header, then key=value pairs ended by ^A */
	name = auth_saslname(user);
	blob = xasprintf("n,a=%s,\001host=%s\001port=%s\001auth=Bearer %s"
			 "\001\001",
			 name, host, port, token);
	free(name);
	return blob;
}

static void auth_wipe(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

int imap_oauth(mailimap *imap, bool bearer, const char *user,
	       const char *token, const char *host, const char *port,
	       char *why, size_t whylen)
{
	const char *mech = bearer ? "AUTHENTICATE OAUTHBEARER" :
				    "AUTHENTICATE XOAUTH2";
	struct mailimap_response *rsp;
	char *blob, *b64;
	bool cont;
	int r, state;

	*why = '\0';
	if (imap->imap_state != MAILIMAP_STATE_NON_AUTHENTICATED)
		return MAILIMAP_ERROR_BAD_STATE;
	blob = auth_blob(bearer, user, token, host, port);
	b64 = auth_b64(blob, strlen(blob));
	auth_wipe(blob);

	/* RFC 4959: the initial response on the command line */
	if (mailimap_has_extension(imap, "SASL-IR")) {
		r = auth_send(imap, true, mech, b64, true);
		if (!r)
			r = auth_read(imap, &cont);
	} else {
		r = auth_send(imap, true, mech, NULL, false);
		if (!r)
			r = auth_read(imap, &cont);
		/* no "+": the server refused the mechanism at once */
		if (!r && cont) {
			r = auth_send(imap, false, b64, NULL, true);
			if (!r)
				r = auth_read(imap, &cont);
		}
	}
	auth_wipe(b64);
	if (r)
		return r;

	if (cont) {
		/*
		 * The token was refused. XOAUTH2 (Google): an empty line
		 * lets the server finish; RFC 7628 §3.2.3: a response of a
		 * single %x01, base64 "AQ==". The tagged NO follows.
		 */
		auth_read_challenge(imap->imap_stream_buffer->str, why, whylen);
		r = auth_send(imap, false, bearer ? "AQ==" : "", NULL, false);
		if (!r)
			r = auth_read(imap, &cont);
		if (!r && cont) {
			/* a second challenge: cancel (RFC 3501 §6.2.2) */
			r = auth_send(imap, false, "*", NULL, false);
			if (!r)
				r = auth_read(imap, &cont);
			if (!r && cont)
				r = MAILIMAP_ERROR_PARSE;
		}
		if (r)
			return r;
	}

	/* the untagged lines and the tagged reply, as for a built-in
	 * command: a CAPABILITY code lands in the session's cache */
	r = mailimap_parse_response(imap, &rsp);
	if (r)
		return r;
	state = rsp->rsp_resp_done->rsp_data.rsp_tagged->rsp_cond_state
			->rsp_type;
	mailimap_response_free(rsp);
	if (state != MAILIMAP_RESP_COND_STATE_OK)
		return MAILIMAP_ERROR_LOGIN;
	imap->imap_state = MAILIMAP_STATE_AUTHENTICATED;
	return 0;
}
