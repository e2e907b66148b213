/*
 * http.h — kreqd's HTTP endpoint (libmicrohttpd) for Prometheus and health
 * checks:
 *
 *   GET /metrics  200, kreq_worker_metrics_text() as
 *                 text/plain; version=0.0.4
 *   GET /healthz  200 "ok" while the worker is serving; 503 "starting" or
 *                 "stopping" otherwise
 *
 * Other paths get 404, other methods 405. HEAD is answered like GET. The
 * endpoint runs on libmicrohttpd's own thread and only reads the worker
 * through its any-thread functions.
 */
#ifndef KREQD_HTTP_H
#define KREQD_HTTP_H

#include <stdatomic.h>
#include <stddef.h>

#include "kreq/worker.h"

/* What /healthz reports; written by kreqd's main thread. */
typedef enum { KREQD_STARTING, KREQD_SERVING, KREQD_STOPPING } kreqd_phase_t;

typedef struct kreqd_http kreqd_http_t;

/* Listens on address:port (a numeric IPv4 or IPv6 address, or a host name
 * resolved once) and serves until kreqd_http_stop(). phase must outlive
 * the endpoint. KREQ_OK with *out set, or KREQ_ECONF (address does not
 * resolve) / KREQ_EIO (cannot listen) / KREQ_ENOMEM, errstr naming
 * address and port. */
int kreqd_http_start(const char *address, int port, kreq_worker_t *s, const atomic_int *phase,
                     kreqd_http_t **out, char *errstr, size_t errstr_size);

/* Stops listening, waits for the endpoint's thread and frees h. NULL is a
 * no-op. */
void kreqd_http_stop(kreqd_http_t *h);

#endif
