/*
 * handles.h — what a handler holds instead of a pointer: a generation-checked
 * handle into a process-wide slot table (design note in handles.c).
 *
 * A handle is a kreq_request_t * whose value is a tag, never dereferenced:
 * bit 0 set (no real object pointer is odd), the slot index above it and
 * the slot's generation in the high bits. Each slot has one atomic word,
 * (generation, state), changed only by compare-and-swap, and the internal
 * request it stands for.
 */
#ifndef KREQ_BROKER_HANDLES_H
#define KREQ_BROKER_HANDLES_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kreq/worker.h"

/* States of a slot within one generation. */
typedef enum {
	KREQ__SL_FREE,      /* no request */
	KREQ__SL_QUEUED,    /* dispatched, not started: the handler side owns it */
	KREQ__SL_RUNNING,   /* its handler runs: the handler side owns it */
	KREQ__SL_REPLIED,   /* replied (or finished unstarted): the loop owns it */
	KREQ__SL_ABANDONED, /* answered by the loop (deadline); the handler side
	                       still holds it, its accessors still work */
	KREQ__SL_RELEASED   /* abandoned, then let go by the handler side: the
	                       loop frees it */
} kreq__sl_state_t;

/* Takes a slot index for a new request from the process-wide table
 * (growing it); KREQ_OK or KREQ_ENOMEM (out of memory or 2^24 slots). */
int kreq__handles_take(uint32_t *id);

/* Gives slot indexes back for another worker (kreq_worker_destroy). Their
 * generation moves on, so a handle that survives its worker stays
 * invalid. */
void kreq__handles_give(const uint32_t *ids, size_t n);

/* Publishes r in slot id under the next generation, state QUEUED (release
 * order: r's fields written before are visible to whoever validates the
 * handle). Returns the handle; *gen receives the generation. */
kreq_request_t *kreq__handle_publish(uint32_t id, kreq_request_t *r, uint64_t *gen);

/* Decodes h: false when h is not a handle of a slot that exists. */
bool kreq__handle_decode(const kreq_request_t *h, uint32_t *id, uint64_t *gen);

/* The state of slot id in generation gen; -1 when the slot moved on. */
int kreq__handle_state(uint32_t id, uint64_t gen);

/* Moves slot id from (gen, from) to (gen, to); false if it was not there. */
bool kreq__handle_cas(uint32_t id, uint64_t gen, kreq__sl_state_t from, kreq__sl_state_t to);

/* The request in slot id, for the side that owns it by the slot's state
 * (a CAS it won). */
kreq_request_t *kreq__handle_owned(uint32_t id);

/* The request behind h while the handler side may use it (QUEUED,
 * RUNNING or ABANDONED in h's generation), else NULL. */
kreq_request_t *kreq__handle_get(const kreq_request_t *h);

#endif
