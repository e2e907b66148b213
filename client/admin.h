/*
 * admin.h — the client's opt-in admin endpoint (admin.socket).
 *
 * A Unix stream socket (mode 0600) served by one thread. A peer connects,
 * writes one command line and reads the answer until EOF:
 *   "pending\n"  JSON: {"client", "reply_topic", "now_ms", "in_flight",
 *                "pending": [{"correlation_id", "method", "idempotency_key",
 *                "age_ms", "time_left_ms", "attempt"}, ...]}
 *                (ids in lowercase hex; oldest first)
 *   "metrics\n"  Prometheus text
 * Anything else gets {"error": "..."}. The socket is common/adminsock.h's.
 * The format is what `kreq pending` and `kreq stats` read;
 * docs/operations.md describes it.
 */
#ifndef KREQ_CLIENT_ADMIN_H
#define KREQ_CLIENT_ADMIN_H

#include <stddef.h>
#include <stdint.h>

#include "common/adminsock.h"
#include "kreq/client.h"

/* One pending call, copied out of the table. */
typedef struct kreq__pending_row {
	uint8_t corr_id[16];
	char method[256];
	uint8_t idem[255];
	size_t idem_len;
	int64_t start_ns, deadline_mono_ms;
	uint32_t attempt;
} kreq__pending_row_t;

/* Copies the pending calls, oldest first, into a new malloc'd array (*rows;
 * caller frees) and returns how many; limit > 0 keeps only that many oldest.
 * Takes the table's shard locks one at a time. */
size_t kreq__pending_snapshot(kreq_client_t *c, size_t limit, kreq__pending_row_t **rows);

/* Serves "pending" and "metrics" at path through common/adminsock.h (a
 * stale socket file is replaced; any other file, and a socket a live
 * process serves, is refused). Stopped by kreq__adminsock_stop(). */
int kreq__admin_start(kreq_client_t *c, const char *path, kreq__adminsock_t **out, char *errstr,
                      size_t errstr_size);

/* The "pending" answer as a new malloc'd JSON string (also used by tests). */
char *kreq__admin_pending_json(kreq_client_t *c);

#endif
