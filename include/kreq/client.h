/*
 * kreq/client.h — calling remote methods over Kafka.
 *
 * One client per process is typical; it is safe to use from any number of
 * threads. kreq_client_call() is asynchronous: it validates, signs and hands
 * the request to Kafka, and returns a future (kreq/future.h) that settles
 * exactly once. kreq_client_call_wait() is the blocking convenience built on
 * it.
 *
 * What a call guarantees:
 *   - an absolute deadline (now + timeout), carried in the request; the call
 *     settles with KREQ_ETIMEDOUT when it passes;
 *   - retries: if no reply arrives within retry.attempt.timeout.ms the request
 *     is sent again with the same correlation id and idempotency key and the
 *     next attempt number, after an exponential backoff with jitter, while
 *     the deadline and retry.max.attempts allow;
 *   - backpressure: at most max.in.flight calls are pending; beyond that a
 *     call waits up to backpressure.wait.ms for room, then fails with
 *     KREQ_EBACKPRESSURE;
 *   - fail fast: when Kafka has been unreachable for longer than
 *     unavailable.after.ms, pending and new calls fail with
 *     KREQ_EUNAVAILABLE instead of waiting out their deadlines;
 *   - replies that do not verify or match no pending call (late, unknown,
 *     duplicate, wrong idempotency key) are dropped and counted.
 *
 * Threads: the client runs one service thread that consumes replies, runs
 * timers and handles Kafka delivery reports; future callbacks run there
 * (or on the thread that cancels, or that destroys the client).
 */
#ifndef KREQ_CLIENT_H
#define KREQ_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kreq/common.h"
#include "kreq/conf.h"
#include "kreq/future.h"
#include "kreq/keyring.h"

typedef struct kreq_client_s kreq_client_t;
typedef struct kreq_call_opts_s kreq_call_opts_t;

/** Creates a client: copies conf, takes a reference on kr (which must have
 *  a signing key; when signing.key.id is set it must name that key, else
 *  KREQ_ECONF), creates its reply topic if missing, assigns it directly
 *  and positions the reply consumer at its end before returning, so no reply
 *  to any call made afterwards can be missed. Blocks for at most
 *  client.start.timeout.ms. NULL on error with errstr naming the cause.
 *  conf needs kafka.bootstrap.servers. */
KREQ_API kreq_client_t *kreq_client_new(const kreq_conf_t *conf, kreq_keyring_t *kr, char *errstr,
                                        size_t errstr_size);

/** Settles every pending call with KREQ_ECLOSED (callbacks run on this
 *  thread), stops the service thread, flushes and frees everything. Futures
 *  still referenced by the application stay valid until released. Must not
 *  be called from a future callback, nor while another thread may still be
 *  inside a kreq_client_* function on c (as with free(): the caller orders
 *  destroy after every other use). NULL is a no-op. */
KREQ_API void kreq_client_destroy(kreq_client_t *c);

/** Calls method with payload (copied; may be NULL if len is 0). opts may be
 *  NULL for defaults. On KREQ_OK *futp holds a new future (the caller's
 *  reference). Errors (no future, no callback): KREQ_EINVAL (bad argument:
 *  method name, options), KREQ_EOVERSIZE (payload over payload.max.bytes:
 *  refused before anything is sent, and logged with both sizes),
 *  KREQ_EBACKPRESSURE, KREQ_EUNAVAILABLE, KREQ_ECLOSED (client being
 *  destroyed), KREQ_ENOMEM. */
KREQ_API int kreq_client_call(kreq_client_t *c, const char *method, const void *payload, size_t len,
                              const kreq_call_opts_t *opts, kreq_future_t **futp);

/** kreq_client_call() then kreq_future_wait() without a limit (the call's
 *  own deadline bounds it). Returns the submission error, or the future's
 *  kreq_future_err(); *futp (if not NULL) receives the settled future. */
KREQ_API int kreq_client_call_wait(kreq_client_t *c, const char *method, const void *payload,
                                   size_t len, const kreq_call_opts_t *opts, kreq_future_t **futp);

/** Number of calls pending now. */
KREQ_API size_t kreq_client_in_flight(const kreq_client_t *c);

/** Reply topic and partition this client listens on (valid while c lives). */
KREQ_API const char *kreq_client_reply_topic(const kreq_client_t *c, int32_t *partition);

/** Prometheus text exposition of the client's metrics (in-flight gauge,
 *  calls, outcomes by kind, retries, late and rejected replies, send
 *  errors, call-duration and queue-wait histograms) in a new malloc'd
 *  string (*text; caller frees). KREQ_OK, KREQ_EINVAL or KREQ_ENOMEM. */
KREQ_API int kreq_client_metrics_text(const kreq_client_t *c, char **text);

/* ---- completions in the application's own event loop -------------------
 *
 * A call made with kreq_call_opts_set_notify(o, true) is also put on the
 * client's completion queue when it settles (after its callback, if any).
 * The client's event fd is readable while that queue is not empty; add it to
 * an epoll/poll set and, when readable, pop futures until NULL. */

/** The completion event fd (level-triggered readable while completions are
 *  queued). Owned by the client: do not read or close it. */
KREQ_API int kreq_client_event_fd(const kreq_client_t *c);

/** Pops the oldest queued completion and hands its reference to the caller
 *  (release it), or NULL if none. Any thread. */
KREQ_API kreq_future_t *kreq_client_next_completed(kreq_client_t *c);

/* ---- per-call options ------------------------------------------------- */

/** New options with defaults (timeout = request.timeout.ms, idempotency key
 *  = the correlation id, no metadata). Not thread-safe; may be reused for
 *  many calls and destroyed right after a call returns. */
KREQ_API kreq_call_opts_t *kreq_call_opts_new(void);
KREQ_API void kreq_call_opts_destroy(kreq_call_opts_t *o);

/** Relative timeout in ms (1 .. 86400000); the deadline is now + timeout at
 *  submission and never grows. */
KREQ_API int kreq_call_opts_set_timeout(kreq_call_opts_t *o, int64_t timeout_ms);

/** Absolute deadline, ms since the Unix epoch (overrides the timeout). It
 *  travels unchanged; the client's own timer, on the monotonic clock, ends
 *  the call at the deadline or 2^32 ms (49.7 days) after the call was made,
 *  whichever is first. */
KREQ_API int kreq_call_opts_set_deadline(kreq_call_opts_t *o, int64_t deadline_ms);

/** Caller-chosen idempotency key (1..255 bytes, copied): a restarted client
 *  retrying the same logical operation gets the stored result. */
KREQ_API int kreq_call_opts_set_idempotency_key(kreq_call_opts_t *o, const void *key, size_t len);

/** Queue the call on the client's completion queue when it settles (see
 *  kreq_client_event_fd()). */
KREQ_API int kreq_call_opts_set_notify(kreq_call_opts_t *o, bool notify);

/** W3C trace context ("00-<32 hex>-<16 hex>-<2 hex>"), validated, copied. */
KREQ_API int kreq_call_opts_set_traceparent(kreq_call_opts_t *o, const char *traceparent);

#endif
