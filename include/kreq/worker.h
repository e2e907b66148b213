/*
 * kreq/worker.h — serving methods: the embeddable worker loop that kreqd is
 * built on.
 *
 * A worker serves one service: it joins the Kafka consumer group
 * <topic.prefix>.<service> on <topic.prefix>.<service>.requests, verifies
 * every request (signature, key id, size, deadline, clock skew, method ACL
 * of the key, reply-topic allow-list), deduplicates by (key id, idempotency
 * key), runs the registered handler, and publishes the signed reply. In the
 * default transactional mode (worker.mode=transactional) the reply, the
 * result record in <topic.prefix>.<service>.results and the consumer offset
 * are written in ONE Kafka transaction, so a worker that crashes anywhere
 * never publishes two different replies for one idempotency key and never
 * runs a handler again for a request whose transaction committed.
 * docs/broker-design.md and docs/operations.md explain the machinery.
 *
 * Threads:
 *   - kreq_worker_run() runs the loop on the calling thread. That thread
 *     alone touches Kafka and the deduplication state.
 *   - Handlers registered without KREQ_HANDLER_INLINE run on a pool of
 *     worker.handler.threads threads; with KREQ_HANDLER_INLINE they run on
 *     the loop thread and must not block (echo-like handlers save two
 *     thread hops).
 *   - kreq_request_reply() may be called from any thread, once per request,
 *     during the handler or later (asynchronous handlers).
 *   - kreq_worker_stop() may be called from any thread and from a signal
 *     handler.
 *
 * Ownership: the worker copies conf and takes a reference on the keyring.
 * The kreq_request_t * a handler receives is an opaque HANDLE, not a
 * pointer to memory: it names a slot and a generation, and every
 * kreq_request_* function checks both. It is live from the handler's call
 * until its kreq_request_reply() (the first one). After that the handle is
 * stale for good: kreq_request_reply() returns KREQ_ESTATE and touches
 * nothing, accessors return NULL / 0, kreq_request_cancelled() returns
 * true; a stale handle can never reach another request, whatever the
 * worker does with the slot.
 *
 * Deadlines: a request whose handler has not replied by its deadline plus
 * worker.handler.grace.ms is answered by the worker with status 2
 * (KREQ_STATUS_DEADLINE, "handler did not finish before the deadline"),
 * which is stored as the request's result like any other (a retry gets
 * status 2 too: the handler may still be running, so running it again
 * could do the work twice). The request is flagged cancelled, its place in
 * worker.max.in.flight and its offset are freed, and the handler's late
 * reply returns KREQ_ESTATE. Its accessors keep working until that late
 * reply: a handler that stops on kreq_request_cancelled() and replies is
 * always safe. A handler that never replies keeps its request's memory
 * (not its place) until it does; the worker stops taking requests once as
 * many such requests as worker.max.in.flight wait for their handlers.
 *
 * Accessors and kreq_request_reply() may be called from any thread, but a
 * handler must not call an accessor concurrently with (or after) its own
 * reply: strings and buffers returned are valid only until it replies.
 */
#ifndef KREQ_WORKER_H
#define KREQ_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kreq/common.h"
#include "kreq/conf.h"
#include "kreq/keyring.h"

typedef struct kreq_worker_s kreq_worker_t;
typedef struct kreq_request_s kreq_request_t;

/* Reply statuses reserved by kreq (docs/protocol.md section 4.5). Handlers
 * reply 0 or their own statuses >= 100; KREQ_STATUS_CANCELLED is also
 * accepted from a handler that stopped because kreq_request_cancelled(). */
#define KREQ_STATUS_OK             0
#define KREQ_STATUS_UNKNOWN_METHOD 1
#define KREQ_STATUS_DEADLINE       2
#define KREQ_STATUS_CANCELLED      3
#define KREQ_STATUS_REFUSED        4
#define KREQ_STATUS_DENIED         5
#define KREQ_STATUS_CONFLICT       6
#define KREQ_STATUS_OVERLOADED     7
#define KREQ_STATUS_HANDLER_FAILED 8
#define KREQ_STATUS_SHUTTING_DOWN  9
/* 10 ("poison"): the request's handler was started worker.poison.max.attempts
 * times and never finished (it crashed its worker or lost it each time);
 * it is not run again, the answer is stored like a result (a retry gets
 * it too) and the request goes to <prefix>.<service>.dead. */
#define KREQ_STATUS_POISON 10
/* 11: the handler ran but its reply or result
 * was too large for Kafka (a Kafka broker's max.message.bytes, or
 * envelope.max.bytes); stored like a handler error, so a retry gets the
 * same answer without running the handler again (docs/protocol.md 4.5). */
#define KREQ_STATUS_TOO_LARGE 11
#define KREQ_STATUS_USER_MIN  100

/** A handler: called once per request to run (never for a dedup hit, a
 *  joined duplicate or a refused request). It must call kreq_request_reply()
 *  exactly once, now or later from any thread. opaque is what was
 *  registered. */
typedef void(kreq_handler_fn)(kreq_request_t *req, void *opaque);

/** Handler flags. */
#define KREQ_HANDLER_INLINE 0x1 /* run on the loop thread; must not block */

/** Creates a worker for service (1..200 characters of [A-Za-z0-9._-], the
 *  method name up to its last '.'): copies conf, takes a reference on kr
 *  (which must have a signing key: replies are signed; when signing.key.id
 *  is set it must name that key). Connects nothing yet. conf needs
 *  kafka.bootstrap.servers. NULL on error, errstr names the cause. */
KREQ_API kreq_worker_t *kreq_worker_new(const kreq_conf_t *conf, kreq_keyring_t *kr,
                                        const char *service, char *errstr, size_t errstr_size);

/** Registers fn for method (the full name, "<service>.<name>", or a name
 *  without '.' when service is that name). Only before kreq_worker_run().
 *  KREQ_OK, KREQ_EINVAL (bad name, method of another service, NULL fn),
 *  KREQ_EEXIST (already registered), KREQ_ESTATE (worker running),
 *  KREQ_ENOMEM. */
KREQ_API int kreq_worker_register(kreq_worker_t *s, const char *method, kreq_handler_fn *fn,
                                  void *opaque, int flags);

/** Runs the serving loop on the calling thread until kreq_worker_stop():
 *  creates the request and results topics if missing, starts the
 *  transactional producer (fencing any previous instance with the same
 *  client.id), joins the group, and serves. On stop it stops fetching,
 *  lets in-flight handlers finish for up to worker.shutdown.grace.ms
 *  (their results are committed; what is still running then is abandoned,
 *  uncommitted, for another worker to redo), commits and leaves the group.
 *  Returns KREQ_OK after a clean stop, or the error that ended the loop
 *  (errstr names it): KREQ_EKAFKA, KREQ_ECONF (e.g. the results topic is
 *  missing (deleted while serving), not compacted, keeps results shorter
 *  than worker.dedup.retention.ms or is not co-partitioned with the
 *  requests topic, checked at start and on every assignment; or fenced 3
 *  times within a minute: another live worker has the same client.id),
 *  KREQ_ESTATE (already ran). Call once. */
KREQ_API int kreq_worker_run(kreq_worker_t *s, char *errstr, size_t errstr_size);

/** Asks the loop to stop. Async-signal-safe (writes an eventfd); any
 *  thread. A stop asked before kreq_worker_run() makes that run return
 *  KREQ_OK at once without connecting (so a signal that arrives while a
 *  program is still starting is not lost); after run returned it is a
 *  no-op. */
KREQ_API void kreq_worker_stop(kreq_worker_t *s);

/** Replaces the keyring used to verify requests and sign replies (e.g. on
 *  SIGHUP): takes a reference on kr and releases the old one once no request
 *  uses it. kr must have a signing key. Any thread. KREQ_OK, KREQ_EINVAL,
 *  KREQ_ECONF (worker.result.signers is set and does not list kr's signing
 *  key: the worker's new results would be ignored by the dedup rebuild;
 *  nothing is replaced). */
KREQ_API int kreq_worker_set_keyring(kreq_worker_t *s, kreq_keyring_t *kr);

/** Prometheus text exposition of the worker's metrics in a new malloc'd
 *  string (*text; caller frees). Any thread. KREQ_OK, KREQ_EINVAL,
 *  KREQ_ENOMEM. */
KREQ_API int kreq_worker_metrics_text(kreq_worker_t *s, char **text);

/** JSON array of the requests in progress (method, key id, idempotency key
 *  in hex, correlation id in hex, partition, offset, age_ms, time_left_ms,
 *  state "queued"|"running", cancelled) in a new malloc'd string. Any
 *  thread. KREQ_OK, KREQ_EINVAL, KREQ_ENOMEM. */
KREQ_API int kreq_worker_in_progress_json(kreq_worker_t *s, char **json);

/** Number of requests in progress (dispatched, not yet replied), counting
 *  the duplicates waiting on a running one (what worker.max.in.flight bounds). */
KREQ_API size_t kreq_worker_in_flight(const kreq_worker_t *s);

/** True while the loop serves: it runs, its producer is ready and the
 *  consumer group has given it an assignment (which may be empty when
 *  there are more replicas than partitions). False before, during a
 *  rebalance and after stop. Any thread; for health checks. */
KREQ_API bool kreq_worker_ready(const kreq_worker_t *s);

/** What kreq_worker_name() returns. */
typedef enum kreq_worker_name_e {
	KREQ_WORKER_REQUESTS_TOPIC,  /* <topic.prefix>.<service>.requests */
	KREQ_WORKER_RESULTS_TOPIC,   /* <topic.prefix>.<service>.results */
	KREQ_WORKER_GROUP,           /* consumer group <topic.prefix>.<service> */
	KREQ_WORKER_TRANSACTIONAL_ID /* <topic.prefix>.<service>.<client.id>; NULL in light mode */
} kreq_worker_name_t;

/** A name the worker derived from its configuration (valid while s
 *  lives), or NULL. Any thread. */
KREQ_API const char *kreq_worker_name(const kreq_worker_t *s, kreq_worker_name_t which);

/** Number of registered methods, and the i-th one's name (i < count;
 *  NULL otherwise; valid while s lives). Any thread once registration is
 *  over. */
KREQ_API size_t kreq_worker_method_count(const kreq_worker_t *s);
KREQ_API const char *kreq_worker_method_name(const kreq_worker_t *s, size_t i);

/** Destroys a worker whose loop is not running (never ran, or returned).
 *  NULL is a no-op. */
KREQ_API void kreq_worker_destroy(kreq_worker_t *s);

/* ---- the request, as seen by a handler ---------------------------------
 * Accessors are valid from the handler call until kreq_request_reply()
 * returns; strings and buffers are owned by the request. */

/** Full method name. */
KREQ_API const char *kreq_request_method(const kreq_request_t *r);

/** Request payload (*len receives its size; the pointer may be NULL when
 *  *len is 0). */
KREQ_API const void *kreq_request_payload(const kreq_request_t *r, size_t *len);

/** Idempotency key (1..255 bytes). */
KREQ_API const void *kreq_request_idempotency_key(const kreq_request_t *r, size_t *len);

/** Id of the key that signed the request (the caller's identity). */
KREQ_API const char *kreq_request_key_id(const kreq_request_t *r);

/** Value of a metadata entry (e.g. "traceparent"), or NULL. */
KREQ_API const char *kreq_request_metadata(const kreq_request_t *r, const char *key);

/** Absolute deadline, ms since the Unix epoch. */
KREQ_API int64_t kreq_request_deadline_ms(const kreq_request_t *r);

/** Milliseconds left until the deadline (negative once passed). */
KREQ_API int64_t kreq_request_remaining_ms(const kreq_request_t *r);

/** True once the caller cancelled the request (a Cancel message arrived),
 *  the worker is abandoning it (shutdown grace expired, partition moved
 *  away, or its deadline + worker.handler.grace.ms passed: the worker has
 *  answered status 2), or the handle is no longer live. Any thread. */
KREQ_API bool kreq_request_cancelled(const kreq_request_t *r);

/** Replies: status 0 or >= KREQ_STATUS_USER_MIN (or KREQ_STATUS_CANCELLED,
 *  or KREQ_STATUS_DEADLINE from a handler that gave up because
 *  kreq_request_remaining_ms() ran out), payload copied (NULL if len is 0),
 *  error text (NULL or a message of at most 4096 bytes, copied) for
 *  non-zero statuses. Once per request, from any thread; r is stale once
 *  this returns, whatever it returns. KREQ_OK, KREQ_EINVAL (r is not a
 *  request handle; or bad status or oversize payload: the caller gets
 *  status 8 instead), KREQ_ENOMEM (the caller gets status 8 if possible),
 *  KREQ_ESTATE (the reply is refused and goes nowhere: r was already
 *  replied to, or the worker answered it with status 2 at its deadline +
 *  worker.handler.grace.ms; the latter is logged and counted in
 *  kreq_worker_late_replies_total). */
KREQ_API int kreq_request_reply(kreq_request_t *r, int32_t status, const void *payload, size_t len,
                                const char *error);

#endif
