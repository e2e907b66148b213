/*
 * admin.c — see admin.h.
 *
 * The socket itself is common/adminsock.c's (its own thread, so answering
 * never delays the service thread's replies and timers). The pending snapshot walks the table under
 * its shard locks one shard at a time, copying a few fields per call, so callers and the service
 * thread are held up for at most one shard's walk.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "client/admin.h"
#include "client/client_int.h"
#include "common/adminsock.h"
#include "common/internal.h"

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

static char *answer_pending(void *ctx)
{
	return kreq__admin_pending_json(ctx);
}

static char *answer_metrics(void *ctx)
{
	char *text = NULL;
	kreq_client_metrics_text(ctx, &text);
	return text;
}

static const kreq__adminsock_cmd_t commands[] = {
    {"pending", answer_pending},
    {"metrics", answer_metrics},
    {NULL, NULL},
};

int kreq__admin_start(kreq_client_t *c, const char *path, kreq__adminsock_t **out, char *errstr,
                      size_t errstr_size)
{
	return kreq__adminsock_start(path, commands, c, "kreq:admin", out, errstr, errstr_size);
}
