/*
 * test_imap_write_probe.c - drives the write primitives of
 * sync/imap_write.c against a real server for
 * tests/integration/test_imap_write.py: one logged-in connection, one
 * command per stdin line (fields split by tabs), one JSON object per
 * answer on stdout. Not a meson test: without PROBE_HOST it exits 77.
 *
 * Environment: PROBE_HOST, PROBE_PORT, PROBE_USER, PROBE_PASSWORD,
 * PROBE_CAFILE (optional).
 *
 * Commands (SET is "1:3,7", ascending):
 *   caps | text | noop | selected
 *   select NAME | examine NAME | create NAME | delete NAME
 *   rename FROM TO | move TARGET SET | copy TARGET SET
 *   store +|- SET FLAGS UNCHANGEDSINCE | expunge SET
 *   search FROM FIELD VALUE
 *   append FOLDER SPEC   (SPEC: a file of "path\tflags\tdate\tzone" lines)
 */
#include "imap_write.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

static void put_str(const char *s)
{
	putchar('"');
	for (; s && *s; s++) {
		unsigned char ch = *s;

		if (ch == '"' || ch == '\\')
			printf("\\%c", ch);
		else if (ch < 0x20 || ch >= 0x7f)
			printf("\\u%04x", ch);
		else
			putchar(ch);
	}
	putchar('"');
}

static void put_uids(const uint32_t *u, size_t n)
{
	putchar('[');
	for (size_t i = 0; i < n; i++)
		printf("%s%u", i ? "," : "", u[i]);
	putchar(']');
}

/* "1:3,7" into ranges (malloc'ed) */
static struct imap_uid_range *parse_set(const char *s, size_t *n)
{
	struct imap_uid_range *v = xcalloc(strlen(s) + 1, sizeof(*v));
	size_t k = 0;

	while (*s) {
		char *end;

		v[k].first = v[k].last = (uint32_t)strtoul(s, &end, 10);
		if (*end == ':')
			v[k].last = (uint32_t)strtoul(end + 1, &end, 10);
		k++;
		s = *end == ',' ? end + 1 : end;
		if (!*end)
			break;
	}
	*n = k;
	return v;
}

static int split(char *line, char **f, int max)
{
	int n = 0;

	while (n < max) {
		f[n++] = line;
		line = strchr(line, '\t');
		if (!line)
			break;
		*line++ = '\0';
	}
	return n;
}

static void do_append(struct conn *c, const char *folder, const char *spec)
{
	FILE *fp = fopen(spec, "r");
	struct imap_append *v = NULL;
	char line[4096];
	size_t n = 0;
	int g;

	if (!fp) {
		printf("{\"error\":\"cannot open spec\"}\n");
		return;
	}
	while (fgets(line, sizeof(line), fp)) {
		char *f[4];
		struct stat st;

		line[strcspn(line, "\n")] = '\0';
		if (split(line, f, 4) != 4)
			continue;
		v = xrealloc(v, (n + 1) * sizeof(*v));
		memset(&v[n], 0, sizeof(v[n]));
		v[n].fd = open(f[0], O_RDONLY);
		if (v[n].fd < 0 || fstat(v[n].fd, &st))
			exit(2);
		v[n].len = (uint64_t)st.st_size;
		v[n].flags = xstrdup(f[1]);
		v[n].date = strtoll(f[2], NULL, 10);
		v[n].zone = atoi(f[3]);
		n++;
	}
	fclose(fp);
	g = imap_append_many(c, folder, v, n);
	printf("{\"g\":%d,\"msgs\":[", g);
	for (size_t i = 0; i < n; i++) {
		printf("%s{\"g\":%d,\"uid\":%u,\"uv\":%u,\"err\":", i ? "," : "",
		       v[i].grade, v[i].uid, v[i].uidvalidity);
		put_str(v[i].err);
		putchar('}');
		close(v[i].fd);
		free((char *)v[i].flags);
	}
	printf("]}\n");
	free(v);
}

static void command(struct conn *c, char *line)
{
	char *f[6];
	int n = split(line, f, 6), g;
	struct imap_uid_range *v;
	size_t nv;

	if (!strcmp(f[0], "caps")) {
		printf("{\"caps\":%u}\n", c->caps);
	} else if (!strcmp(f[0], "text")) {
		printf("{\"text\":");
		put_str(imap_last_text(c));
		printf("}\n");
	} else if (!strcmp(f[0], "noop")) {
		printf("{\"g\":%d}\n", imap_noop(c));
	} else if (!strcmp(f[0], "selected")) {
		printf("{\"selected\":");
		if (c->selected)
			put_str(c->selected);
		else
			printf("null");
		printf(",\"readonly\":%s}\n", c->readonly ? "true" : "false");
	} else if ((!strcmp(f[0], "select") || !strcmp(f[0], "examine")) &&
		   n == 2) {
		struct imap_box b;

		g = f[0][0] == 's' ? imap_select_rw(c, f[1], &b)
				   : imap_examine(c, f[1], &b);
		printf("{\"g\":%d,\"uidvalidity\":%u,\"uidnext\":%u,"
		       "\"exists\":%u,\"modseq\":%llu}\n",
		       g, b.uidvalidity, b.uidnext, b.exists,
		       (unsigned long long)b.highestmodseq);
		imap_box_release(&b);
	} else if (!strcmp(f[0], "create") && n == 2) {
		printf("{\"g\":%d}\n", imap_create(c, f[1]));
	} else if (!strcmp(f[0], "delete") && n == 2) {
		printf("{\"g\":%d}\n", imap_delete(c, f[1]));
	} else if (!strcmp(f[0], "rename") && n == 3) {
		printf("{\"g\":%d}\n", imap_rename(c, f[1], f[2]));
	} else if ((!strcmp(f[0], "move") || !strcmp(f[0], "copy")) &&
		   n == 3) {
		struct imap_uidmap m;

		v = parse_set(f[2], &nv);
		g = f[0][0] == 'm' ? imap_uid_move(c, v, nv, f[1], &m)
				   : imap_uid_copy(c, v, nv, f[1], &m);
		printf("{\"g\":%d,\"uv\":%u,\"src\":", g, m.uidvalidity);
		put_uids(m.src, m.n);
		printf(",\"dst\":");
		put_uids(m.dst, m.n);
		printf("}\n");
		imap_uidmap_release(&m);
		free(v);
	} else if (!strcmp(f[0], "store") && n == 5) {
		uint32_t *mod;
		size_t nmod;

		v = parse_set(f[2], &nv);
		g = imap_uid_store(c, v, nv, f[1][0] == '+', f[3],
				   strtoull(f[4], NULL, 10), &mod, &nmod);
		printf("{\"g\":%d,\"modified\":", g);
		put_uids(mod, nmod);
		printf("}\n");
		free(mod);
		free(v);
	} else if (!strcmp(f[0], "expunge") && n == 2) {
		v = parse_set(f[1], &nv);
		printf("{\"g\":%d}\n", imap_uid_expunge(c, v, nv));
		free(v);
	} else if (!strcmp(f[0], "search") && n == 4) {
		uint32_t *u;
		size_t nu;

		g = imap_uid_search_header(c, (uint32_t)strtoul(f[1], NULL, 10),
					   f[2], f[3], &u, &nu);
		printf("{\"g\":%d,\"uids\":", g);
		put_uids(u, nu);
		printf("}\n");
		free(u);
	} else if (!strcmp(f[0], "append") && n == 3) {
		do_append(c, f[1], f[2]);
	} else {
		printf("{\"error\":\"unknown command\"}\n");
	}
}

int main(void)
{
	struct sync_config cfg = { 0 };
	struct conn *c;
	char err[512], *line = NULL;
	size_t cap = 0;
	ssize_t len;
	int rc;

	if (!getenv("PROBE_HOST"))
		return 77;
	log_init("imap_write_probe", false, getenv("PROBE_DEBUG"));
	imap_init();
	cfg.host = xstrdup(getenv("PROBE_HOST"));
	cfg.port = xstrdup(getenv("PROBE_PORT") ? getenv("PROBE_PORT") : "993");
	cfg.user = xstrdup(getenv("PROBE_USER") ? getenv("PROBE_USER") : "");
	cfg.password = xstrdup(getenv("PROBE_PASSWORD") ? getenv("PROBE_PASSWORD")
							 : "");
	if (getenv("PROBE_CAFILE"))
		cfg.cafile = xstrdup(getenv("PROBE_CAFILE"));
	cfg.timeout = 30;
	rc = conn_open(&cfg, &c, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "%s\n", err);
		sync_config_release(&cfg);
		return 1;
	}
	if (imap_prepare(c) == IMAP_CONN_BAD) {
		conn_close(c);
		sync_config_release(&cfg);
		return 1;
	}
	printf("{\"ready\":true,\"caps\":%u}\n", c->caps);
	fflush(stdout);
	while ((len = getline(&line, &cap, stdin)) > 0) {
		line[strcspn(line, "\r\n")] = '\0';
		if (!*line)
			continue;
		command(c, line);
		fflush(stdout);
	}
	free(line);
	conn_close(c);
	sync_config_release(&cfg);
	return 0;
}
