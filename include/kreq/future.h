/*
 * kreq/future.h — the result of one call: a deferred value that settles
 * exactly once.
 *
 * A future settles exactly once, with either
 *   - a reply: kreq_future_err() == KREQ_OK; kreq_future_status() is the
 *     reply's status (0 = success, see docs/protocol.md 4.4) and
 *     kreq_future_payload() its payload; or
 *   - an error: KREQ_ETIMEDOUT, KREQ_ECANCELED, KREQ_EREJECTED (the worker
 *     answered with a kreq status 1..99; kreq_future_status() has it),
 *     KREQ_EUNAVAILABLE, KREQ_EBACKPRESSURE or KREQ_ECLOSED, with a message
 *     from kreq_future_errstr() naming the cause.
 * Whatever races between a reply, the deadline, a cancel, a send failure and
 * client shutdown, exactly one of them settles the future; the others are
 * no-ops.
 *
 * Submission: a call either returns a future or fails immediately with an
 * error code; in the second case there is no future and no callback ever
 * runs.
 *
 * Ownership and threads: futures are reference counted. The caller owns the
 * reference returned by the call and gives it up with kreq_future_release();
 * the client holds its own reference while the call is pending, so releasing
 * early is allowed (the call still completes; nobody observes it). Every
 * function here may be called from any thread. Result accessors are valid
 * once the future is done (or inside its callback) and the pointers they
 * return live as long as the caller's reference.
 *
 * Callback: kreq_future_on_done() registers one callback. If the future is
 * still pending, it runs exactly once on the thread that settles the future
 * (a client-internal thread: the reply, timer or shutdown path; keep it short
 * and non-blocking; it must not call kreq_future_wait() on its own future);
 * if the future is already settled it runs immediately on the registering
 * thread before kreq_future_on_done() returns. kreq_future_wait() returns
 * only after a callback registered before settlement has finished.
 */
#ifndef KREQ_FUTURE_H
#define KREQ_FUTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kreq/common.h"

typedef struct kreq_future_s kreq_future_t;

/** Completion callback; opaque is the value given at registration. */
typedef void(kreq_future_cb_t)(kreq_future_t *f, void *opaque);

/** Takes another reference; returns f. */
KREQ_API kreq_future_t *kreq_future_retain(kreq_future_t *f);

/** Drops a reference; the last one frees the future. NULL is a no-op. */
KREQ_API void kreq_future_release(kreq_future_t *f);

/** true once the future has settled and its callback (if any) has run.
 *  Never blocks; lock-free. */
KREQ_API bool kreq_future_is_done(const kreq_future_t *f);

/** Waits until the future is done or timeout_ms passes (-1: no limit,
 *  0: poll). Returns KREQ_OK if done (then read kreq_future_err()),
 *  KREQ_ETIMEDOUT if still pending (the call itself goes on), KREQ_EINVAL
 *  for a NULL future. A done future returns without taking any lock. */
KREQ_API int kreq_future_wait(kreq_future_t *f, int timeout_ms);

/** Outcome: KREQ_OK for a reply, else the error; KREQ_ESTATE while pending. */
KREQ_API int kreq_future_err(const kreq_future_t *f);

/** Reply status (0 = success) or the worker's kreq status for
 *  KREQ_EREJECTED; 0 otherwise. */
KREQ_API int32_t kreq_future_status(const kreq_future_t *f);

/** Reply payload (NULL if none or not done); *len gets its length if len is
 *  not NULL. */
KREQ_API const void *kreq_future_payload(const kreq_future_t *f, size_t *len);

/** Message naming the cause of an error, or the reply's error text; "" if
 *  none; never NULL. */
KREQ_API const char *kreq_future_errstr(const kreq_future_t *f);

/** true if the reply came from the worker's deduplication store. */
KREQ_API bool kreq_future_from_dedup(const kreq_future_t *f);

/** Registers the completion callback (see above). Returns KREQ_OK,
 *  KREQ_EINVAL (NULL f or cb) or KREQ_EEXIST (a callback is already
 *  registered; it is not replaced). */
KREQ_API int kreq_future_on_done(kreq_future_t *f, kreq_future_cb_t *cb, void *opaque);

/** Cancels a pending call: it settles at once with KREQ_ECANCELED (the
 *  callback runs on the calling thread) and the worker is told, best effort.
 *  Returns KREQ_OK if this call cancelled it, KREQ_ESTATE if it had already
 *  settled (nothing changes), KREQ_EINVAL for NULL. */
KREQ_API int kreq_future_cancel(kreq_future_t *f);

/** Waits until all n futures are done or timeout_ms passes. KREQ_OK if all
 *  are done, KREQ_ETIMEDOUT otherwise, KREQ_EINVAL on bad arguments. */
KREQ_API int kreq_future_wait_all(kreq_future_t *const *fs, size_t n, int timeout_ms);

/** Waits until at least one of n futures is done; *index gets the lowest
 *  index of a done future. KREQ_OK, KREQ_ETIMEDOUT or KREQ_EINVAL. */
KREQ_API int kreq_future_wait_any(kreq_future_t *const *fs, size_t n, int timeout_ms,
                                  size_t *index);

#endif
