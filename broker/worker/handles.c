/*
 * handles.c — see handles.h.
 *
 * Why handles and not pointers: the loop recycles request structures. A
 * handler that kept its kreq_request_t * after replying (a second reply, a
 * reply from a timer that fired late) used to write into whatever request
 * reused the memory: another caller got the wrong reply, then the worker
 * crashed. A handle names a slot AND a generation; every public accessor and
 * kreq_request_reply() check both, so a stale handle is refused (NULL, or
 * KREQ_ESTATE) and can never reach another request.
 *
 * Why one process-wide table: the accessors take only the handle, so the
 * handle must lead to its request without a worker. The table grows in
 * chunks that never move nor are freed (a stale handle may outlive its
 * worker and must still be checkable); slots go back to a free list when
 * a worker is destroyed, their generation moving on. Each worker keeps its
 * own free list of the slots it took (request.c), so the global lock is
 * taken only while a worker warms up.
 *
 * Who changes a slot's state (all by compare-and-swap on one word):
 *   loop         FREE/REPLIED/RELEASED -> QUEUED   (publish, next generation)
 *   pool thread  QUEUED -> RUNNING                 (handler starts)
 *   handler side QUEUED|RUNNING -> REPLIED         (its one reply)
 *   loop         QUEUED|RUNNING -> ABANDONED       (deadline + grace passed)
 *   handler side ABANDONED -> RELEASED             (its late reply, refused)
 * Whoever wins a CAS owns what the state says; the loser touches nothing.
 */
#include <pthread.h>
#include <stdlib.h>

#include "broker/worker/handles.h"
#include "kreq/error.h"

#define CHUNK_BITS 12
#define CHUNK      (1u << CHUNK_BITS)
#define IDX_BITS   24
#define IDX_MASK   ((1u << IDX_BITS) - 1)
#define MAX_SLOTS  (1u << IDX_BITS)
#define NCHUNKS    (MAX_SLOTS / CHUNK)
#define GEN_SHIFT  (IDX_BITS + 1)
/* generation bits in a handle: 39 on 64-bit systems (a slot would have to
 * be reused 5 * 10^11 times for a stale handle to match again) */
#define GEN_BITS ((int)(sizeof(uintptr_t) * 8) - GEN_SHIFT)
#define GEN_MASK ((UINT64_C(1) << GEN_BITS) - 1)
#define ST_BITS  3
#define ST_MASK  ((UINT64_C(1) << ST_BITS) - 1)

typedef struct slot {
	_Atomic uint64_t word; /* generation << ST_BITS | state */
	kreq_request_t *req;   /* written before the word publishes it */
} slot_t;

static slot_t *_Atomic chunks[NCHUNKS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint32_t next_id; /* lock: slots ever handed out */
static uint32_t *free_ids;
static size_t nfree, free_cap; /* lock */

static slot_t *slot_at(uint32_t id)
{
	if (id >= MAX_SLOTS)
		return NULL;
	slot_t *c = atomic_load_explicit(&chunks[id >> CHUNK_BITS], memory_order_acquire);
	return c ? &c[id & (CHUNK - 1)] : NULL;
}

int kreq__handles_take(uint32_t *id)
{
	int err = KREQ_OK;
	pthread_mutex_lock(&lock);
	if (nfree) {
		*id = free_ids[--nfree];
	} else if (next_id == MAX_SLOTS) {
		err = KREQ_ENOMEM;
	} else {
		uint32_t c = next_id >> CHUNK_BITS;
		if (!atomic_load_explicit(&chunks[c], memory_order_relaxed)) {
			slot_t *n = calloc(CHUNK, sizeof(*n));
			if (n)
				atomic_store_explicit(&chunks[c], n, memory_order_release);
			else
				err = KREQ_ENOMEM;
		}
		if (!err)
			*id = next_id++;
	}
	pthread_mutex_unlock(&lock);
	return err;
}

void kreq__handles_give(const uint32_t *ids, size_t n)
{
	pthread_mutex_lock(&lock);
	if (nfree + n > free_cap) {
		size_t cap = (nfree + n) * 2;
		uint32_t *a = realloc(free_ids, cap * sizeof(*a));
		if (!a) { /* the slots are lost to reuse; nothing else */
			pthread_mutex_unlock(&lock);
			return;
		}
		free_ids = a, free_cap = cap;
	}
	for (size_t i = 0; i < n; i++) {
		slot_t *sl = slot_at(ids[i]);
		uint64_t w = atomic_load_explicit(&sl->word, memory_order_relaxed);
		uint64_t gen = ((w >> ST_BITS) + 1) & GEN_MASK;
		atomic_store_explicit(&sl->word, gen << ST_BITS | KREQ__SL_FREE,
		                      memory_order_release);
		free_ids[nfree++] = ids[i];
	}
	pthread_mutex_unlock(&lock);
}

kreq_request_t *kreq__handle_publish(uint32_t id, kreq_request_t *r, uint64_t *gen)
{
	slot_t *sl = slot_at(id);
	uint64_t w = atomic_load_explicit(&sl->word, memory_order_relaxed);
	uint64_t g = ((w >> ST_BITS) + 1) & GEN_MASK;
	sl->req = r;
	atomic_store_explicit(&sl->word, g << ST_BITS | KREQ__SL_QUEUED, memory_order_release);
	*gen = g;
	return (kreq_request_t *)(uintptr_t)((uintptr_t)g << GEN_SHIFT | (uintptr_t)id << 1 | 1u);
}

bool kreq__handle_decode(const kreq_request_t *h, uint32_t *id, uint64_t *gen)
{
	uintptr_t v = (uintptr_t)h;
	if (!(v & 1u))
		return false;
	*id = (uint32_t)((v >> 1) & IDX_MASK);
	*gen = (uint64_t)(v >> GEN_SHIFT) & GEN_MASK;
	return slot_at(*id) != NULL;
}

int kreq__handle_state(uint32_t id, uint64_t gen)
{
	uint64_t w = atomic_load_explicit(&slot_at(id)->word, memory_order_acquire);
	return (w >> ST_BITS) == gen ? (int)(w & ST_MASK) : -1;
}

bool kreq__handle_cas(uint32_t id, uint64_t gen, kreq__sl_state_t from, kreq__sl_state_t to)
{
	uint64_t want = gen << ST_BITS | from;
	return atomic_compare_exchange_strong_explicit(&slot_at(id)->word, &want,
	                                               gen << ST_BITS | to, memory_order_acq_rel,
	                                               memory_order_acquire);
}

kreq_request_t *kreq__handle_owned(uint32_t id)
{
	return slot_at(id)->req;
}

kreq_request_t *kreq__handle_get(const kreq_request_t *h)
{
	uint32_t id;
	uint64_t gen;
	if (!kreq__handle_decode(h, &id, &gen))
		return NULL;
	int st = kreq__handle_state(id, gen);
	/* valid states leave the request in the handler side's hands: nobody
	 * frees or republishes it until that side lets go */
	return st == KREQ__SL_QUEUED || st == KREQ__SL_RUNNING || st == KREQ__SL_ABANDONED
	           ? slot_at(id)->req
	           : NULL;
}
