/* offsets.c — see offsets.h. */
#include <stdlib.h>
#include <string.h>

#include "broker/worker/offsets.h"
#include "kreq/error.h"

int kreq__offsets_init(kreq__offsets_t *o)
{
	memset(o, 0, sizeof(*o));
	o->cap = 256;
	o->next = -1;
	o->ring = calloc(o->cap, sizeof(*o->ring));
	return o->ring ? KREQ_OK : KREQ_ENOMEM;
}

void kreq__offsets_clear(kreq__offsets_t *o)
{
	free(o->ring);
	memset(o, 0, sizeof(*o));
}

static int grow(kreq__offsets_t *o)
{
	uint64_t ncap = o->cap * 2;
	kreq__off_slot_t *r = calloc(ncap, sizeof(*r));
	if (!r)
		return KREQ_ENOMEM;
	for (uint64_t s = o->head; s < o->tail; s++)
		r[s & (ncap - 1)] = o->ring[s & (o->cap - 1)];
	free(o->ring);
	o->ring = r;
	o->cap = ncap;
	return KREQ_OK;
}

int kreq__offsets_push(kreq__offsets_t *o, int64_t offset, uint64_t *seq)
{
	if (o->tail - o->head == o->cap && grow(o))
		return KREQ_ENOMEM;
	kreq__off_slot_t *s = &o->ring[o->tail & (o->cap - 1)];
	*s = (kreq__off_slot_t){.offset = offset};
	*seq = o->tail++;
	o->next = offset + 1;
	return KREQ_OK;
}

kreq__off_slot_t *kreq__offsets_slot(kreq__offsets_t *o, uint64_t seq)
{
	if (seq < o->head || seq >= o->tail)
		return NULL;
	return &o->ring[seq & (o->cap - 1)];
}

static bool secured(const kreq__off_slot_t *s)
{
	return s->completed && s->pending == 0;
}

int64_t kreq__offsets_commit_point(kreq__offsets_t *o)
{
	while (o->head < o->tail && secured(&o->ring[o->head & (o->cap - 1)]))
		o->head++;
	if (o->head < o->tail)
		return o->ring[o->head & (o->cap - 1)].offset;
	return o->next;
}

uint64_t kreq__offsets_unsecured(const kreq__offsets_t *o)
{
	uint64_t n = 0;
	for (uint64_t s = o->head; s < o->tail; s++)
		n += !secured(&o->ring[s & (o->cap - 1)]);
	return n;
}
