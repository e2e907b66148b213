/*
 * future_int.h — what the client needs from futures (internal).
 *
 * One allocation per call: a future is allocated with `extra` trailing bytes
 * that belong to its owner (the client keeps its per-call record there:
 * correlation id, timer node, deadlines, method, key and payload), so a
 * pending call costs exactly one malloc.
 */
#ifndef KREQ_FUTURE_INT_H
#define KREQ_FUTURE_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kreq/future.h"

/* Called once when the last reference is dropped, before the memory is
 * freed: the owner releases what its extra area owns. May be NULL. */
typedef void(kreq__future_fini_t)(kreq_future_t *f);

/* Routes kreq_future_cancel() through the owner: the hook removes the call
 * from its pending table and, if it did, settles f with KREQ_ECANCELED and
 * tells the worker. Returns KREQ_OK if it cancelled, KREQ_ESTATE if the call
 * had already settled. */
typedef int(kreq__future_cancel_hook_t)(kreq_future_t *f);

/* What a future's owner does for it; one per owner, shared by all its
 * futures (a pointer in each future, not two). The owner may embed it in
 * its own object and find itself from kreq__future_owner(). */
typedef struct kreq__future_owner {
	kreq__future_fini_t *fini;               /* NULL: nothing to release */
	kreq__future_cancel_hook_t *cancel_hook; /* NULL: cancel settles directly */
} kreq__future_owner_t;

/* New pending future with one reference and `extra` zeroed trailing bytes.
 * owner (may be NULL) is read when the future is cancelled while pending
 * and, if its fini was non-NULL at creation, when the future is freed: an
 * owner with a fini must outlive its futures; one without need only outlive
 * their pending phase. NULL if out of memory. */
kreq_future_t *kreq__future_new(size_t extra, const kreq__future_owner_t *owner);

/* The owner given to kreq__future_new(). */
const kreq__future_owner_t *kreq__future_owner(const kreq_future_t *f);

/* The owner's trailing area (16-byte aligned). */
void *kreq__future_extra(kreq_future_t *f);

/* Offset of the extra area from the future (the same for every future). */
size_t kreq__future_extra_offset(void);

/* The future whose extra area is `extra`. */
kreq_future_t *kreq__future_from_extra(void *extra);

/* Settles f. err must be 0 or a KREQ_E* code (-128..127 is stored); a
 * payload_len above UINT32_MAX settles with KREQ_EOVERSIZE instead. Returns true if this call
 * settled it (the callback has run and waiters are woken when this returns), false if f had already
 * been settled, in which case nothing changes. Ownership of payload (malloc'd or NULL) passes to
 * the future in both cases (freed at once when false). errmsg is copied (truncated to 255 bytes);
 * NULL means "". The caller holds a reference to f for the duration of the call. */
bool kreq__future_settle(kreq_future_t *f, int err, int32_t status, void *payload,
                         size_t payload_len, bool from_dedup, const char *errmsg);

#endif
