/*
 * imap_poll.c - the IMAP commands that watch for change without
 * selecting anything: LIST with the STATUS of every folder pipelined
 * (one round trip where LIST-STATUS is not offered), NOTIFY, and IDLE
 * driven by hand. libetpan's own IDLE throws away what the server says
 * before its "+" and keeps only the last pushed STATUS; here every reply
 * is parsed into a tree and read whole (LIBETPAN.md §11, §13.1, §13.4).
 */
#define LOG_CAT "imap"
#include "imap_i.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common.h"

/* folders asked about per write, so a huge account does not fill the
 * socket's buffers before the server's replies are read */
#define PIPELINE_MAX 256

int imap_reply_tree(struct conn *c, int tag, struct mailimap_response **out,
		    bool *ok)
{
	struct mailimap_parser_context *pc;
	struct mailimap_response *rsp = NULL;
	struct mailimap_response_tagged *t;
	size_t indx = 0;
	char want[16];
	int r;

	*out = NULL;
	*ok = false;
	pc = imap_must(mailimap_parser_context_new(c->imap));
	r = mailimap_response_parse(c->imap->imap_stream,
				    c->imap->imap_stream_buffer, pc, &indx,
				    &rsp, 0, NULL);
	mailimap_parser_context_free(pc);
	if (r)
		return r;
	snprintf(want, sizeof(want), "%d", tag);
	t = rsp->rsp_resp_done &&
			    rsp->rsp_resp_done->rsp_type ==
				    MAILIMAP_RESP_DONE_TYPE_TAGGED ?
		    rsp->rsp_resp_done->rsp_data.rsp_tagged :
		    NULL;
	if (!t || strcmp(t->rsp_tag, want)) {
		/* BYE, or a reply to something we did not send */
		mailimap_response_free(rsp);
		return MAILIMAP_ERROR_PARSE;
	}
	*ok = t->rsp_cond_state->rsp_type == MAILIMAP_RESP_COND_STATE_OK;
	*out = rsp;
	return MAILIMAP_NO_ERROR;
}

static int send_status(struct conn *c, const char *name)
{
	mailstream *st = c->imap->imap_stream;
	int r;

	if ((r = mailimap_send_current_tag(c->imap)) ||
	    (r = mailimap_token_send(st, "STATUS")) ||
	    (r = mailimap_space_send(st)) ||
	    (r = mailimap_mailbox_send(st, name)) ||
	    (r = mailimap_space_send(st)))
		return r;
	r = mailimap_token_send(st,
				c->caps & CAP_CONDSTORE ?
					"(MESSAGES UIDNEXT UIDVALIDITY "
					"HIGHESTMODSEQ)" :
					"(MESSAGES UIDNEXT UIDVALIDITY)");
	return r ? r : mailimap_crlf_send(st);
}

/*
 * LIST "" "*" (if @list) and STATUS of @names[0..@n) in one write, then
 * their replies read in order, each STATUS given to its listed folder
 * in *@v. A refused STATUS (the folder went since) leaves that folder
 * without status; *@list_ok says whether LIST was answered OK.
 */
static int exchange(struct conn *c, bool list, char *const *names, size_t n,
		    struct imap_mailbox **v, size_t *k, size_t *cap,
		    bool *list_ok)
{
	int first = c->imap->imap_tag + 1, r = MAILIMAP_NO_ERROR;
	size_t sent = 0;

	if (list) {
		r = mailimap_send_current_tag(c->imap);
		if (!r)
			r = mailimap_token_send(c->imap->imap_stream,
						"LIST \"\" \"*\"");
		if (!r)
			r = mailimap_crlf_send(c->imap->imap_stream);
		if (!r)
			sent++;
	}
	for (size_t i = 0; i < n && !r; i++) {
		r = send_status(c, names[i]);
		if (!r)
			sent++;
	}
	if (!r && mailstream_flush(c->imap->imap_stream) == -1)
		r = MAILIMAP_ERROR_STREAM;
	/* after a failed send the stream is broken: nothing to read */
	for (size_t i = 0; i < sent && !r; i++) {
		struct mailimap_response *rsp;
		bool ok;

		c->imap->imap_tag = first + (int)i;
		if (!mailimap_read_line(c->imap))
			r = MAILIMAP_ERROR_STREAM;
		else
			r = imap_reply_tree(c, first + (int)i, &rsp, &ok);
		if (r)
			break;
		if (list && i == 0)
			*list_ok = ok;
		if (ok)
			imap_collect_list(c, rsp, v, k, cap);
		mailimap_response_free(rsp);
	}
	if (sent)
		c->imap->imap_tag = first + (int)sent - 1;
	return r;
}

int imap_list_with_status(struct conn *c, char *const *names, size_t n,
			  struct imap_mailbox **out, size_t *nout)
{
	struct imap_mailbox *v = NULL;
	size_t k = 0, cap = 0, done;
	bool ok = false;
	int r;

	*out = NULL;
	*nout = 0;
	for (size_t i = 0; i < n; i++)
		if (!conn_name_ok(names[i]))
			return IMAP_FOLDER_BAD;
	done = n < PIPELINE_MAX ? n : PIPELINE_MAX;
	r = exchange(c, true, names, done, &v, &k, &cap, &ok);
	for (; done < n && !r; done += PIPELINE_MAX)
		r = exchange(c, false, names + done,
			     n - done < PIPELINE_MAX ? n - done : PIPELINE_MAX,
			     &v, &k, &cap, &ok);
	if (!r && !ok)
		r = MAILIMAP_ERROR_LIST;
	if (r) {
		imap_mailboxes_free(v, k);
		return imap_grade(c, r, "list folders with their status");
	}
	*out = v ? v : xcalloc(1, sizeof(*v));
	*nout = k;
	return IMAP_OK;
}

int imap_notify_set(struct conn *c)
{
	struct mailimap_response *rsp;
	bool ok;
	int r;

	/* each event list in its own parentheses (LIBETPAN.md §13.4);
	 * MailboxName is left out: its rename event carries extended
	 * data libetpan cannot parse, and LIST finds new folders */
	r = imap_raw_send(c,
			  "NOTIFY SET (selected (MessageNew MessageExpunge "
			  "FlagChange)) (personal (MessageNew "
			  "MessageExpunge))",
			  NULL, NULL);
	if (!r)
		r = imap_reply_tree(c, c->imap->imap_tag, &rsp, &ok);
	if (r)
		return imap_grade(c, r, "ask for NOTIFY");
	mailimap_response_free(rsp);
	if (!ok)
		return imap_grade(c, MAILIMAP_ERROR_EXTENSION, "ask for NOTIFY");
	return IMAP_OK;
}

/* skip a literal announced at the end of the line just read ("{n}"),
 * and the rest of its line, so the next read starts a new line */
static int skip_literals(struct conn *c)
{
	for (;;) {
		MMAPString *b = c->imap->imap_stream_buffer;
		char *open;
		unsigned long long len;
		char sink[4096];

		if (b->len < 4 || b->str[b->len - 3] != '}')
			return 0;
		open = strrchr(b->str, '{');
		if (!open || sscanf(open, "{%llu", &len) != 1)
			return 0;
		while (len) {
			ssize_t got = mailstream_read(c->imap->imap_stream,
						      sink,
						      len < sizeof(sink) ?
							      len :
							      sizeof(sink));
			if (got <= 0)
				return -1;
			len -= (size_t)got;
		}
		if (!mailimap_read_line(c->imap))
			return -1;
	}
}

int imap_idle_begin(struct conn *c, bool *missed)
{
	int r;

	*missed = false;
	if (conn_is_broken(c))
		return IMAP_CONN_BAD;
	r = mailimap_send_current_tag(c->imap);
	if (!r)
		r = mailimap_token_send(c->imap->imap_stream, "IDLE");
	if (!r)
		r = mailimap_crlf_send(c->imap->imap_stream);
	if (!r && mailstream_flush(c->imap->imap_stream) == -1)
		r = MAILIMAP_ERROR_STREAM;
	while (!r) {
		const char *line = mailimap_read_line(c->imap);

		if (!line) {
			r = MAILIMAP_ERROR_STREAM;
			break;
		}
		if (line[0] == '+')
			return IMAP_OK;
		if (line[0] != '*') {
			/* tagged: IDLE refused (NO, BAD) */
			log_warn("server refused IDLE: %.200s", line);
			return IMAP_FOLDER_BAD;
		}
		if (!strncasecmp(line, "* BYE", 5)) {
			r = MAILIMAP_ERROR_FATAL;
			break;
		}
		/* a push that came before the "+": the caller looks again */
		*missed = true;
		if (skip_literals(c))
			r = MAILIMAP_ERROR_STREAM;
	}
	return imap_grade(c, r, "start IDLE");
}

int imap_idle_wait(struct conn *c, int wake_fd, long long ms)
{
	mailstream *s = c->imap->imap_stream;
	struct pollfd p[2];
	int fd, r;

	/* bytes already read or decrypted would not wake poll() */
	if (s->read_buffer_len || tls_pending(s))
		return 1;
	fd = mailstream_low_get_fd(mailstream_get_low(s));
	if (fd < 0)
		return 1;
	p[0] = (struct pollfd){ .fd = fd, .events = POLLIN };
	p[1] = (struct pollfd){ .fd = wake_fd, .events = POLLIN };
	do
		r = poll(p, 2, ms > 0x7fffffff ? 0x7fffffff : (int)ms);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return 1; /* let the read find out what is wrong */
	return (p[0].revents & (POLLIN | POLLHUP | POLLERR)) ? 1 : 0;
}

void imap_push_release(struct imap_push *p)
{
	for (size_t i = 0; i < p->nfolders; i++)
		free(p->folders[i]);
	free(p->folders);
	memset(p, 0, sizeof(*p));
}

static void push_folder(struct imap_push *p, const char *name)
{
	for (size_t i = 0; i < p->nfolders; i++)
		if (!strcmp(p->folders[i], name))
			return;
	p->folders = xrealloc(p->folders,
			      (p->nfolders + 1) * sizeof(*p->folders));
	p->folders[p->nfolders++] = xstrdup(name);
}

/* what one untagged reply says changed */
static void take_push(struct mailimap_response_data *rd, struct imap_push *p)
{
	switch (rd->rsp_type) {
	case MAILIMAP_RESP_DATA_TYPE_MAILBOX_DATA: {
		struct mailimap_mailbox_data *mbd =
			rd->rsp_data.rsp_mailbox_data;

		if (mbd->mbd_type == MAILIMAP_MAILBOX_DATA_STATUS) {
			if (mbd->mbd_data.mbd_status &&
			    mbd->mbd_data.mbd_status->st_mailbox)
				push_folder(p,
					    mbd->mbd_data.mbd_status->st_mailbox);
		} else if (mbd->mbd_type == MAILIMAP_MAILBOX_DATA_EXISTS) {
			/* the watcher compares it with the count it knew */
			p->has_exists = true;
			p->exists = mbd->mbd_data.mbd_exists;
		}
		break;
	}
	case MAILIMAP_RESP_DATA_TYPE_MESSAGE_DATA:
		/* EXPUNGE or FETCH (a flag change) */
		p->selected = true;
		break;
	case MAILIMAP_RESP_DATA_TYPE_EXTENSION_DATA:
		/* VANISHED */
		p->selected = true;
		break;
	default:
		break;
	}
}

int imap_idle_end(struct conn *c, struct imap_push *p)
{
	mailstream *s = c->imap->imap_stream;
	struct mailimap_response *rsp;
	bool ok;
	int r;

	memset(p, 0, sizeof(*p));
	if (conn_is_broken(c))
		return IMAP_CONN_BAD;
	if (mailstream_write(s, "DONE\r\n", 6) != 6 ||
	    mailstream_flush(s) == -1 || !mailimap_read_line(c->imap))
		return imap_grade(c, MAILIMAP_ERROR_STREAM, "end IDLE");
	r = imap_reply_tree(c, c->imap->imap_tag, &rsp, &ok);
	if (r)
		return imap_grade(c, r, "end IDLE");
	/* NULL when nothing came before the tagged reply */
	for (clistiter *it = rsp->rsp_cont_req_or_resp_data_list ?
			     clist_begin(rsp->rsp_cont_req_or_resp_data_list) :
			     NULL;
	     it; it = clist_next(it)) {
		struct mailimap_cont_req_or_resp_data *d = clist_content(it);

		if (d->rsp_type == MAILIMAP_RESP_RESP_DATA &&
		    d->rsp_data.rsp_resp_data)
			take_push(d->rsp_data.rsp_resp_data, p);
	}
	mailimap_response_free(rsp);
	return ok ? IMAP_OK : imap_grade(c, MAILIMAP_ERROR_EXTENSION, "end IDLE");
}
