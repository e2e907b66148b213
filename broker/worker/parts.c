/*
 * parts.c — the serving loop's per-partition state (kreq__part_t: dedup
 * store, offsets, poison table) made at assignment and dropped at
 * revocation or a rewind. Loop thread.
 *
 * Why apart from loop.c: the record path (record.c) and the completions
 * (complete.c) look partitions up and the rebalance (loop.c) makes and
 * drops them; kept here, below all three, none calls up into another.
 * Dropping flags what still runs for the partition cancelled; a
 * completion then finds another incarnation and is discarded.
 */
#include <stdlib.h>

#include "broker/worker/loop_int.h"
#include "broker/worker/worker_int.h"

kreq__part_t *kreq__part_new(kreq_worker_t *s, int32_t id)
{
	kreq__part_t *pt = calloc(1, sizeof(*pt));
	if (!pt || kreq__dedup_init(&pt->dd) || kreq__offsets_init(&pt->offs)) {
		if (pt) {
			kreq__dedup_clear(&pt->dd);
			free(pt);
		}
		return NULL;
	}
	pt->dd.shared = &s->dd_bytes;
	pt->dd.tenants = &s->dd_tenants;
	pt->id = id;
	pt->incarnation = ++s->next_incarnation;
	pt->committed = -1;
	return pt;
}

static void cancel_running(kreq__dd_entry_t *e, void *arg)
{
	(void)arg;
	if (e->state == KREQ__DD_RUNNING && e->running)
		atomic_store_explicit(&((kreq_request_t *)e->running)->cancelled, true,
		                      memory_order_release);
}

/* Drops a partition's state. Requests still running for it are flagged
 * cancelled; their completions will find no matching incarnation and be
 * discarded (their records are redone from the committed offset). */
void kreq__part_drop(kreq_worker_t *s, int32_t id)
{
	kreq__part_t *pt = s->parts[id];
	if (!pt)
		return;
	kreq__dedup_each(&pt->dd, cancel_running, NULL);
	kreq__dedup_clear(&pt->dd);
	kreq__dd_tenants_sweep(&s->dd_tenants);
	atomic_store_explicit(&s->m.dedup_bytes, s->dd_bytes, memory_order_relaxed);
	kreq__offsets_clear(&pt->offs);
	kreq__poison_part_free(pt);
	free(pt);
	s->parts[id] = NULL;
}

kreq__part_t *kreq__part_get(kreq_worker_t *s, int32_t id)
{
	return id >= 0 && id < s->nparts ? s->parts[id] : NULL;
}
