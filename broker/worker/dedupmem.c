/*
 * dedupmem.c — the worker's dedup memory: the bound on stored results
 * (per key id and in all, kreq__dedup_bound) and the Result offsets that
 * let a stored result leave memory as a ghost (kreq__result_delivered,
 * from the producer's delivery report). Loop thread.
 *
 * Why a file of its own: the loop bounds the stores after each result,
 * the rebuild after loading a partition, and the Kafka delivery report
 * records offsets; kept in loop.c, the rebuild and the delivery report
 * called up into the loop that calls them, a circle. The stores
 * themselves are dedup.h's.
 */
#include <stdint.h>
#include <string.h>

#include "broker/worker/worker_int.h"
#include "common/conf.h"
#include "common/internal.h"

/* Tallies what kreq__dedup_bound made room with. */
typedef struct room {
	uint64_t ghosted, removed;
	int64_t earliest; /* expiry of the earliest removed entry */
} room_t;

static bool make_room(kreq__dd_tenant_t *t, room_t *r)
{
	bool removed;
	int64_t expires;
	if (!kreq__dd_tenant_evict(t, &removed, &expires))
		return false;
	if (!removed) {
		r->ghosted++;
	} else {
		r->removed++;
		if (expires < r->earliest)
			r->earliest = expires;
	}
	return true;
}

/* Design note: one tenant must not shorten another's dedup window. Each
 * key id's stored results are budgeted (worker.dedup.key.max.bytes): a key
 * over it makes room among its own results only. The worker's total
 * (worker.dedup.max.bytes) is a cap on top, and room is made in the key
 * holding the most, so a small tenant's results stay while a big one
 * floods. Making room first turns the oldest result into a ghost (key,
 * digest, expiry and its Result's offset: a retry reads the result back
 * from the results topic, the handler does not run again); only ghosts, or
 * results whose offset is not known yet, leave entirely. */
void kreq__dedup_bound(kreq_worker_t *s, kreq__part_t *pt)
{
	(void)pt;
	room_t r = {0, 0, INT64_MAX};
	if (s->dd_key_max_bytes)
		for (kreq__dd_tenant_t *t = s->dd_tenants.head; t; t = t->next)
			while (t->bytes > s->dd_key_max_bytes && make_room(t, &r))
				;
	kreq__dd_tenant_t *big;
	while (s->dd_bytes > s->dd_max_bytes && (big = kreq__dd_tenants_biggest(&s->dd_tenants)) &&
	       make_room(big, &r))
		;
	atomic_store_explicit(&s->m.dedup_bytes, s->dd_bytes, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->m.dedup_ghosted, r.ghosted, memory_order_relaxed);
	if (!r.removed)
		return;
	atomic_fetch_add_explicit(&s->m.dedup_evicted, r.removed, memory_order_relaxed);
	int64_t now_ns = kreq__mono_ns();
	if (s->dd_warned_ns && now_ns - s->dd_warned_ns < 60 * 1000000000LL)
		return;
	s->dd_warned_ns = now_ns;
	kreq__log(s->conf, 4, "worker",
	          "dedup memory (worker.dedup.max.bytes %zu, worker.dedup.key.max.bytes %zu) is "
	          "full even of findable records: stored results are forgotten %lld s before "
	          "their retention ends, and retries of their keys will run again; raise the "
	          "limits or lower worker.dedup.retention.ms (logged at most once a minute)",
	          s->dd_max_bytes, s->dd_key_max_bytes,
	          (long long)((r.earliest - kreq__now_ms()) / 1000));
}

void kreq__result_delivered(kreq_worker_t *s, const rd_kafka_message_t *m)
{
	if (!m->key || strcmp(rd_kafka_topic_name(m->rkt), s->res_topic))
		return;
	kreq__part_t *pt =
	    m->partition >= 0 && m->partition < s->nparts ? s->parts[m->partition] : NULL;
	kreq__dd_entry_t *e = pt ? kreq__dedup_find(&pt->dd, m->key, m->key_len) : NULL;
	if (e && e->state == KREQ__DD_DONE && e->res_offset < 0) {
		e->res_offset = m->offset;
		s->dd_bound_due = true; /* it may leave memory now: step() makes room */
	}
}
