/*
 * offsets.h — which offset of one request partition may be committed
 * (loop thread only).
 *
 * Handlers finish out of order, but a committed offset says "everything
 * before this is done": it may only pass requests whose outputs are secured
 * (produced in the open transaction, or delivered in light mode). Every
 * consumed record gets a slot, in offset order; a slot is secured when its
 * request completed AND no output of it awaits a delivery report. The
 * commit point is the offset of the oldest unsecured slot, or the offset
 * after the last consumed record when all are secured.
 */
#ifndef KREQ_BROKER_OFFSETS_H
#define KREQ_BROKER_OFFSETS_H

#include <stdbool.h>
#include <stdint.h>

typedef struct kreq__off_slot {
	int64_t offset;
	uint32_t pending; /* outputs awaiting a delivery report (light mode) */
	bool completed;
} kreq__off_slot_t;

typedef struct kreq__offsets {
	kreq__off_slot_t *ring;
	uint64_t cap;        /* power of two */
	uint64_t head, tail; /* sequence numbers: slots [head, tail) are live */
	int64_t next;        /* offset after the last consumed record; -1 none */
} kreq__offsets_t;

int kreq__offsets_init(kreq__offsets_t *o);
void kreq__offsets_clear(kreq__offsets_t *o);

/* A slot for offset (larger than every earlier one); its sequence number in
 * *seq. KREQ_OK or KREQ_ENOMEM. */
int kreq__offsets_push(kreq__offsets_t *o, int64_t offset, uint64_t *seq);

/* The slot of seq, or NULL if it was already popped. */
kreq__off_slot_t *kreq__offsets_slot(kreq__offsets_t *o, uint64_t seq);

/* Drops secured slots from the head and returns the commit point (-1 when
 * nothing was consumed). */
int64_t kreq__offsets_commit_point(kreq__offsets_t *o);

/* Slots not yet secured. */
uint64_t kreq__offsets_unsecured(const kreq__offsets_t *o);

#endif
