/*
 * admin.c — see admin.h.
 *
 * Why a thread of its own: answering must never delay the service thread
 * (replies, timers). The pending snapshot walks the table under its shard
 * locks one shard at a time, copying a few fields per call, so callers and
 * the service thread are held up for at most one shard's walk.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <jansson.h>

#include "client/admin.h"
#include "client/client_int.h"
#include "common/internal.h"

struct kreq__admin {
	kreq_client_t *c;
	int listen_fd, stop_fd;
	pthread_t thread;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

typedef struct snap {
	kreq__pending_row_t *rows;
	size_t n, cap, limit;
} snap_t;

static void fill_row(kreq__pending_row_t *row, const kreq__call_t *call)
{
	memcpy(row->corr_id, call->corr_id, 16);
	const char *method = kreq__call_method(call);
	memcpy(row->method, method, strlen(method) + 1);
	row->idem_len = call->idem_len;
	memcpy(row->idem, kreq__call_idem(call), call->idem_len);
	row->start_ns = call->start_ns;
	row->deadline_mono_ms = kreq__call_deadline_mono(call);
	row->attempt = kreq__call_attempt(call);
}

/* With a limit: keeps the `limit` oldest rows, sorted oldest first, by
 * insertion into a small array, so finding the oldest K of a million
 * pending calls is one pass without a sort of everything. */
static void snap_one(void *value, void *arg)
{
	snap_t *s = arg;
	const kreq__call_t *call = kreq__future_extra(value);
	if (s->limit) {
		size_t i = s->n;
		if (i == s->limit && call->start_ns >= s->rows[i - 1].start_ns)
			return;
		if (i == s->limit)
			i--;
		else
			s->n++;
		while (i > 0 && s->rows[i - 1].start_ns > call->start_ns) {
			s->rows[i] = s->rows[i - 1];
			i--;
		}
		fill_row(&s->rows[i], call);
		return;
	}
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 64;
		kreq__pending_row_t *r = realloc(s->rows, cap * sizeof(*r));
		if (!r)
			return; /* the snapshot is truncated rather than failing */
		s->rows = r;
		s->cap = cap;
	}
	fill_row(&s->rows[s->n++], call);
}

static int by_age(const void *a, const void *b)
{
	const kreq__pending_row_t *x = a, *y = b;
	return (x->start_ns > y->start_ns) - (x->start_ns < y->start_ns);
}

size_t kreq__pending_snapshot(kreq_client_t *c, size_t limit, kreq__pending_row_t **rows)
{
	snap_t s = {.limit = limit};
	if (limit && !(s.rows = malloc(limit * sizeof(*s.rows)))) {
		*rows = NULL;
		return 0;
	}
	kreq__table_foreach(c->table, snap_one, &s);
	if (!limit)
		qsort(s.rows, s.n, sizeof(*s.rows), by_age);
	*rows = s.rows;
	return s.n;
}

static json_t *hex(const uint8_t *b, size_t n)
{
	char buf[2 * KREQ__IDEM_KEY_MAX + 1];
	for (size_t i = 0; i < n; i++)
		snprintf(buf + 2 * i, 3, "%02x", b[i]);
	buf[2 * n] = '\0';
	return json_string(buf);
}

char *kreq__admin_pending_json(kreq_client_t *c)
{
	kreq__pending_row_t *rows;
	size_t n = kreq__pending_snapshot(c, 0, &rows);
	int64_t now_ns = kreq__mono_ns();
	json_t *arr = json_array();
	for (size_t i = 0; i < n; i++) {
		const kreq__pending_row_t *r = &rows[i];
		json_array_append_new(
		    arr, json_pack("{s:o, s:s, s:o, s:I, s:I, s:i}", "correlation_id",
		                   hex(r->corr_id, 16), "method", r->method, "idempotency_key",
		                   hex(r->idem, r->idem_len), "age_ms",
		                   (json_int_t)((now_ns - r->start_ns) / 1000000), "time_left_ms",
		                   (json_int_t)(r->deadline_mono_ms - now_ns / 1000000), "attempt",
		                   (int)r->attempt));
	}
	free(rows);
	json_t *root = json_pack("{s:s, s:s, s:I, s:I, s:o}", "client", c->client_id, "reply_topic",
	                         c->reply_topic, "now_ms", (json_int_t)kreq__now_ms(), "in_flight",
	                         (json_int_t)kreq_client_in_flight(c), "pending", arr);
	char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
	json_decref(root);
	return text;
}

static void serve(kreq__admin_t *a, int fd)
{
	struct timeval tv = {.tv_sec = 1};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	char cmd[64] = "";
	ssize_t n = read(fd, cmd, sizeof(cmd) - 1);
	cmd[n > 0 ? n : 0] = '\0';
	cmd[strcspn(cmd, "\r\n")] = '\0';
	char *text = NULL;
	if (!strcmp(cmd, "pending"))
		text = kreq__admin_pending_json(a->c);
	else if (!strcmp(cmd, "metrics"))
		kreq_client_metrics_text(a->c, &text);
	if (text) {
		kreq__write_all(fd, text, strlen(text));
		kreq__write_all(fd, "\n", 1);
		free(text);
	} else {
		const char *e = "{\"error\":\"unknown command (pending, metrics)\"}\n";
		kreq__write_all(fd, e, strlen(e));
	}
}

static void *admin_main(void *arg)
{
	kreq__admin_t *a = arg;
	struct pollfd p[2] = {{.fd = a->listen_fd, .events = POLLIN},
	                      {.fd = a->stop_fd, .events = POLLIN}};
	for (;;) {
		if (poll(p, 2, -1) < 0 && errno != EINTR)
			break;
		if (p[1].revents)
			break;
		if (p[0].revents & POLLIN) {
			int fd = accept4(a->listen_fd, NULL, NULL, SOCK_CLOEXEC);
			if (fd >= 0) {
				serve(a, fd);
				close(fd);
			}
		}
	}
	return NULL;
}

static int bind_socket(kreq__admin_t *a, char *errstr, size_t errstr_size)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct stat st;
	if (lstat(a->path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode))
			return kreq__err(errstr, errstr_size, KREQ_EEXIST,
			                 "admin.socket %s exists and is not a socket", a->path);
		unlink(a->path); /* stale socket of an earlier process */
	}
	memcpy(sa.sun_path, a->path, strlen(a->path) + 1);
	a->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	mode_t old = umask(0177); /* the socket file is created 0600 */
	int rc = a->listen_fd < 0 ? -1 : bind(a->listen_fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (rc != 0 || listen(a->listen_fd, 16) != 0)
		return kreq__err(errstr, errstr_size, KREQ_EIO, "admin.socket %s: %s", a->path,
		                 strerror(errno));
	return KREQ_OK;
}

int kreq__admin_start(kreq_client_t *c, const char *path, kreq__admin_t **out, char *errstr,
                      size_t errstr_size)
{
	kreq__admin_t *a = calloc(1, sizeof(*a));
	if (!a)
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	a->c = c;
	a->listen_fd = a->stop_fd = -1;
	if (strlen(path) >= sizeof(a->path)) {
		free(a);
		return kreq__err(errstr, errstr_size, KREQ_ECONF,
		                 "admin.socket path longer than %zu bytes", sizeof(a->path) - 1);
	}
	memcpy(a->path, path, strlen(path) + 1);
	int err = bind_socket(a, errstr, errstr_size);
	if (!err && (a->stop_fd = eventfd(0, EFD_CLOEXEC)) < 0)
		err = kreq__err(errstr, errstr_size, KREQ_EIO, "eventfd: %s", strerror(errno));
	if (!err && pthread_create(&a->thread, NULL, admin_main, a) != 0)
		err = kreq__err(errstr, errstr_size, KREQ_ENOMEM, "cannot start admin thread");
	else if (!err)
		pthread_setname_np(a->thread, "kreq:admin");
	if (err) {
		if (a->listen_fd >= 0) {
			close(a->listen_fd);
			unlink(a->path);
		}
		if (a->stop_fd >= 0)
			close(a->stop_fd);
		free(a);
		return err;
	}
	*out = a;
	return KREQ_OK;
}

void kreq__admin_stop(kreq__admin_t *a)
{
	if (!a)
		return;
	uint64_t one = 1;
	ssize_t n = write(a->stop_fd, &one, sizeof(one));
	(void)n;
	pthread_join(a->thread, NULL);
	close(a->listen_fd);
	close(a->stop_fd);
	unlink(a->path);
	free(a);
}
