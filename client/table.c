/*
 * table.c — the pending-call table: 64 independently locked shards of
 * open-addressing hash tables keyed by the 16-byte correlation id.
 *
 * Why it is built this way:
 *  - Sharding: one mutex per shard (each shard on its own cache line), so
 *    threads settling different calls rarely meet on a lock, and the
 *    critical sections are a handful of loads and stores.
 *  - Open addressing with linear probing over flat arrays of 24-byte slots
 *    (id + value, value NULL = empty): no per-entry allocation, one cache
 *    line touched for most operations, ~48 bytes per entry at one million
 *    entries (load factor kept between 3/8 and 3/4). Deletion shifts the
 *    following run back instead of leaving tombstones, so lookups never
 *    degrade after churn and no periodic rehash is needed.
 *  - The ids are random, but the hash still mixes both 8-byte halves with a
 *    multiply (one instruction) so that structured ids (counters in tests,
 *    a caller's own scheme) cannot pile into one shard or one probe run. The
 *    top 6 bits choose the shard, the next bits the home slot.
 *  - Draining (client shutdown) detaches each shard's array under its lock
 *    and calls back outside it, so the callback may settle futures (and run
 *    user callbacks) without holding any table lock and without allocating.
 */
#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "client/table.h"
#include "common/internal.h"

#define SHARD_BITS 6
#define NSHARDS    (1u << SHARD_BITS)
#define MIN_BITS   4  /* smallest non-empty shard: 16 slots */
#define MAX_BITS   40 /* refuse absurd growth (per shard) */

typedef struct slot {
	uint64_t k0, k1;
	void *v; /* NULL: empty */
} slot_t;

typedef struct shard {
	alignas(64) pthread_mutex_t mu;
	slot_t *slots;        /* NULL while capacity is 0 */
	uint32_t bits;        /* capacity = 1 << bits (0 with slots NULL) */
	_Atomic size_t count; /* written under mu; read lock-free by count() */
} shard_t;

struct kreq__table {
	shard_t shards[NSHARDS];
};

typedef struct key {
	uint64_t k0, k1, h;
} tkey_t;

static tkey_t make_key(const uint8_t id[16])
{
	tkey_t k;
	memcpy(&k.k0, id, 8);
	memcpy(&k.k1, id + 8, 8);
	k.h = (k.k0 ^ ((k.k1 << 32) | (k.k1 >> 32))) * UINT64_C(0x9E3779B97F4A7C15);
	return k;
}

static uint64_t hash_slot(const slot_t *s)
{
	return (s->k0 ^ ((s->k1 << 32) | (s->k1 >> 32))) * UINT64_C(0x9E3779B97F4A7C15);
}

static size_t home(uint64_t h, uint32_t bits)
{
	return (size_t)((h << SHARD_BITS) >> (64 - bits));
}

static shard_t *shard_of(kreq__table_t *t, const tkey_t *k)
{
	return &t->shards[k->h >> (64 - SHARD_BITS)];
}

static size_t size_count(shard_t *sh)
{
	return atomic_load_explicit(&sh->count, memory_order_relaxed);
}

static void set_count(shard_t *sh, size_t n)
{
	atomic_store_explicit(&sh->count, n, memory_order_relaxed);
}

/* ---- probing (shard locked) ------------------------------------------- */

/* Index of k's slot, or of the empty slot ending its probe run. */
static size_t probe(const shard_t *sh, const tkey_t *k)
{
	size_t mask = ((size_t)1 << sh->bits) - 1;
	size_t i = home(k->h, sh->bits);
	for (;;) {
		const slot_t *s = &sh->slots[i];
		if (s->v == NULL || (s->k0 == k->k0 && s->k1 == k->k1))
			return i;
		i = (i + 1) & mask;
	}
}

/* The slot holding k, or NULL. */
static slot_t *lookup(shard_t *sh, const tkey_t *k)
{
	if (sh->slots == NULL)
		return NULL;
	slot_t *s = &sh->slots[probe(sh, k)];
	return s->v != NULL ? s : NULL;
}

/* Is `k` cyclically in (i, j]? */
static bool between(size_t i, size_t k, size_t j)
{
	return i <= j ? (i < k && k <= j) : (i < k || k <= j);
}

/* Empties slot i and shifts the rest of its probe run back. */
static void erase_at(shard_t *sh, size_t i)
{
	size_t mask = ((size_t)1 << sh->bits) - 1;
	size_t j = i;
	for (;;) {
		j = (j + 1) & mask;
		slot_t *s = &sh->slots[j];
		if (s->v == NULL)
			break;
		if (between(i, home(hash_slot(s), sh->bits), j))
			continue;
		sh->slots[i] = *s;
		i = j;
	}
	sh->slots[i].v = NULL;
}

/* Rehashes into 1 << bits slots. false if out of memory. */
static bool resize(shard_t *sh, uint32_t bits)
{
	if (bits > MAX_BITS)
		return false;
	slot_t *ns = calloc((size_t)1 << bits, sizeof(slot_t));
	if (ns == NULL)
		return false;
	size_t mask = ((size_t)1 << bits) - 1;
	size_t old_cap = sh->slots != NULL ? (size_t)1 << sh->bits : 0;
	for (size_t i = 0; i < old_cap; i++) {
		const slot_t *s = &sh->slots[i];
		if (s->v == NULL)
			continue;
		size_t j = home(hash_slot(s), bits);
		while (ns[j].v != NULL)
			j = (j + 1) & mask;
		ns[j] = *s;
	}
	free(sh->slots);
	sh->slots = ns;
	sh->bits = bits;
	return true;
}

/* Can the shard take one more entry (load factor <= 3/4)? */
static bool has_room(const shard_t *sh)
{
	size_t n = atomic_load_explicit(&sh->count, memory_order_relaxed) + 1;
	return sh->slots != NULL && n <= ((size_t)3 << sh->bits) / 4;
}

/* Stores k -> value in the shard (locked): KREQ_OK, EEXIST or ENOMEM. */
static int put(shard_t *sh, const tkey_t *k, void *value)
{
	size_t i = 0;
	if (sh->slots != NULL) {
		i = probe(sh, k);
		if (sh->slots[i].v != NULL)
			return KREQ_EEXIST;
	}
	if (!has_room(sh)) {
		if (!resize(sh, sh->slots != NULL ? sh->bits + 1 : MIN_BITS))
			return KREQ_ENOMEM;
		i = probe(sh, k);
	}
	sh->slots[i] = (slot_t){k->k0, k->k1, value};
	set_count(sh, size_count(sh) + 1);
	return KREQ_OK;
}

/* ---- public ------------------------------------------------------------ */

static uint32_t bits_for(size_t per_shard)
{
	uint32_t bits = MIN_BITS;
	while (bits < MAX_BITS && ((size_t)3 << bits) / 4 < per_shard)
		bits++;
	return bits;
}

kreq__table_t *kreq__table_new(size_t expected)
{
	kreq__table_t *t = aligned_alloc(64, sizeof(*t));
	if (t == NULL)
		return NULL;
	memset(t, 0, sizeof(*t));
	pthread_mutexattr_t attr;
	pthread_mutexattr_init(&attr);
	pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
	uint32_t bits = bits_for(expected / NSHARDS + 1);
	bool ok = true;
	for (size_t i = 0; i < NSHARDS; i++) {
		pthread_mutex_init(&t->shards[i].mu, &attr);
		atomic_init(&t->shards[i].count, 0);
		if (expected > 0 && ok)
			ok = resize(&t->shards[i], bits);
	}
	pthread_mutexattr_destroy(&attr);
	if (!ok) {
		kreq__table_destroy(t);
		return NULL;
	}
	return t;
}

void kreq__table_destroy(kreq__table_t *t)
{
	if (t == NULL)
		return;
	for (size_t i = 0; i < NSHARDS; i++) {
		free(t->shards[i].slots);
		pthread_mutex_destroy(&t->shards[i].mu);
	}
	free(t);
}

int kreq__table_insert(kreq__table_t *t, const uint8_t id[16], void *value)
{
	if (value == NULL)
		return KREQ_EINVAL;
	tkey_t k = make_key(id);
	shard_t *sh = shard_of(t, &k);
	pthread_mutex_lock(&sh->mu);
	int rc = put(sh, &k, value);
	pthread_mutex_unlock(&sh->mu);
	return rc;
}

void *kreq__table_remove(kreq__table_t *t, const uint8_t id[16])
{
	tkey_t k = make_key(id);
	shard_t *sh = shard_of(t, &k);
	void *v = NULL;
	pthread_mutex_lock(&sh->mu);
	slot_t *s = lookup(sh, &k);
	if (s != NULL) {
		v = s->v;
		erase_at(sh, (size_t)(s - sh->slots));
		set_count(sh, size_count(sh) - 1);
	}
	pthread_mutex_unlock(&sh->mu);
	return v;
}

void *kreq__table_find_retain(kreq__table_t *t, const uint8_t id[16], void (*retain)(void *value))
{
	tkey_t k = make_key(id);
	shard_t *sh = shard_of(t, &k);
	pthread_mutex_lock(&sh->mu);
	slot_t *s = lookup(sh, &k);
	void *v = s != NULL ? s->v : NULL;
	if (v != NULL && retain != NULL)
		retain(v);
	pthread_mutex_unlock(&sh->mu);
	return v;
}

void *kreq__table_find(kreq__table_t *t, const uint8_t id[16])
{
	return kreq__table_find_retain(t, id, NULL);
}

size_t kreq__table_count(kreq__table_t *t)
{
	size_t n = 0;
	for (size_t i = 0; i < NSHARDS; i++)
		n += size_count(&t->shards[i]);
	return n;
}

void kreq__table_foreach(kreq__table_t *t, void (*fn)(void *value, void *arg), void *arg)
{
	for (size_t i = 0; i < NSHARDS; i++) {
		shard_t *sh = &t->shards[i];
		pthread_mutex_lock(&sh->mu);
		size_t cap = sh->slots != NULL ? (size_t)1 << sh->bits : 0;
		for (size_t j = 0; j < cap; j++)
			if (sh->slots[j].v != NULL)
				fn(sh->slots[j].v, arg);
		pthread_mutex_unlock(&sh->mu);
	}
}

/* Detaches shard i's array (the shard becomes empty, capacity 0) and calls
 * fn for each value outside the lock. Returns how many. */
static size_t drain_shard(shard_t *sh, void (*fn)(void *value, void *arg), void *arg)
{
	pthread_mutex_lock(&sh->mu);
	slot_t *slots = sh->slots;
	size_t cap = slots != NULL ? (size_t)1 << sh->bits : 0;
	size_t n = size_count(sh);
	sh->slots = NULL;
	sh->bits = 0;
	set_count(sh, 0);
	pthread_mutex_unlock(&sh->mu);
	for (size_t j = 0; fn != NULL && j < cap; j++)
		if (slots[j].v != NULL)
			fn(slots[j].v, arg);
	free(slots);
	return n;
}

size_t kreq__table_drain(kreq__table_t *t, void (*fn)(void *value, void *arg), void *arg)
{
	size_t n = 0;
	for (size_t i = 0; i < NSHARDS; i++)
		n += drain_shard(&t->shards[i], fn, arg);
	return n;
}
