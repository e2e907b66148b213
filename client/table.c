/*
 * table.c — the pending-call table: 64 independently locked shards of
 * open-addressing hash tables keyed by the 16-byte correlation id.
 *
 * Why it is built this way:
 *  - Sharding: one lock per shard (each shard on its own cache line), so
 *    threads settling different calls rarely meet on a lock, and the
 *    critical sections are a handful of loads and stores.
 *  - The shard lock is a test-and-set spinlock that yields the CPU after a
 *    short spin, not a pthread mutex: a mutex unlock is a locked
 *    read-modify-write, which stops the CPU from overlapping the cache miss
 *    of the next operation with this one; a spinlock releases with a plain
 *    store. At one million entries (a table larger than the last-level
 *    cache) that made insert and find 1.3-1.6x faster in bench_client_core.
 *    Holding times stay short: the only long section, a shard's rehash when
 *    it grows, allocates the new array before taking the lock.
 *  - Open addressing with linear probing over flat arrays of 16-byte slots
 *    (no per-entry allocation, one cache line touched for most operations,
 *    ~34 bytes per entry at one million entries; load factor kept between
 *    3/8 and 3/4). Deletion shifts entries back instead of leaving
 *    tombstones, so lookups never degrade after churn and no periodic
 *    rehash is needed.
 *  - A slot holds the id's 64-bit hash and the value, not the id: every
 *    value holds its own id (at the table's key offset), so the table does
 *    not keep a second copy of it (a slot was 24 bytes with the id's second
 *    half; at a million pending calls that was 17 MB). The hash is a
 *    bijection of the id's first half given the second, so (hash, second
 *    half) identifies the id: a lookup compares the hash in the slot and,
 *    only when it matches, the second half in the value (one more memory
 *    access, to the value the caller is about to use anyway). The home slot
 *    and rehashing need only the hash. The hash's top 6 bits (the shard number, the same
 *    in every slot of a shard) are free and hold the slot's probe count:
 *    how many entries further along the run have their home at or before
 *    the slot, i.e. pass over it. A count saturates at 63 and then means
 *    "unknown" (it is never decremented again; a rehash recounts). With it,
 *    removing an entry whose slot has count 0 just empties the slot,
 *    without reading the next one, and the backward shift of the others
 *    stops as soon as the hole's count is 0 instead of scanning to the end
 *    of the run. Lookups stop at the first non-matching slot with count 0,
 *    so a missing id ends its search early too. Insertion pays by
 *    incrementing the counts of the slots it probes past (already in
 *    cache).
 *  - Last come, first served: a new entry takes its home slot and the entry
 *    there moves on to the empty slot that ends the run. Calls mostly
 *    complete in the order they were made, and the oldest entries then tend
 *    to sit at the ends of their runs, where removing them seldom has to shift
 *    anything back (a quarter of the removals at one million entries, half
 *    with first come, first served). Removal went from about 150 ns to
 *    about 80, at the price of a few ns on insert and on finding old
 *    entries (docs/PERFORMANCE.md).
 *  - The ids are random, but the hash still mixes both 8-byte halves with a
 *    multiply (one instruction) so that structured ids (counters in tests,
 *    a caller's own scheme) cannot pile into one shard or one probe run. The
 *    top 6 bits choose the shard, the next bits the home slot.
 *  - Draining (client shutdown) detaches each shard's array under its lock
 *    and calls back outside it, so the callback may settle futures (and run
 *    user callbacks) without holding any table lock and without allocating.
 */
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "client/table.h"
#include "common/internal.h"

#define SHARD_BITS 6
#define NSHARDS    (1u << SHARD_BITS)
#define MIN_BITS   4   /* smallest non-empty shard: 16 slots */
#define MAX_BITS   40  /* refuse absurd growth (per shard) */
#define SPINS      128 /* pauses before a waiter starts yielding the CPU */

/* For the helpers on every operation's path: at -O2 (RelWithDebInfo) gcc
 * kept slot_lookup() and the lock out of line, costing find and remove 10-15%
 * more instructions than at -O3. */
#define ALWAYS_INLINE static inline __attribute__((always_inline))

#define MULT      UINT64_C(0x9E3779B97F4A7C15)
#define MULT_INV  UINT64_C(0xF1DE83E19937733D) /* MULT * MULT_INV = 1 mod 2^64 */
#define CNT_SHIFT (64 - SHARD_BITS)
#define CNT_ONE   ((uint64_t)1 << CNT_SHIFT)
#define CNT_MAX   ((1u << SHARD_BITS) - 1) /* sticky: no longer counted */
#define HASH_MASK (UINT64_MAX >> SHARD_BITS)

typedef struct slot {
	uint64_t hc; /* low 58 bits: the id's hash (top 6 = shard); top 6: count */
	void *v;     /* NULL: empty (and then count 0); holds its id at key_off */
} slot_t;

typedef struct shard {
	alignas(64) _Atomic uint32_t lock; /* 0 free, 1 held */
	uint32_t bits;                     /* capacity = 1 << bits (0 with slots NULL) */
	slot_t *slots;                     /* NULL while capacity is 0 */
	size_t mask;                       /* capacity - 1 */
	size_t limit;                      /* most entries before growing: 3/4 */
	unsigned shift;                    /* 64 - bits, for home() */
	_Atomic size_t count;              /* written under lock; read lock-free */
} shard_t;

struct kreq__table {
	shard_t shards[NSHARDS];
	size_t key_off; /* where a value holds its id */
};

typedef struct key {
	uint64_t k1, h;
	size_t off; /* the table's key_off */
} tkey_t;

ALWAYS_INLINE uint64_t hash_of(uint64_t k0, uint64_t k1)
{
	return (k0 ^ ((k1 << 32) | (k1 >> 32))) * MULT;
}

ALWAYS_INLINE tkey_t make_key(const kreq__table_t *t, const uint8_t id[16])
{
	uint64_t k0;
	tkey_t k;
	memcpy(&k0, id, 8);
	memcpy(&k.k1, id + 8, 8);
	k.h = hash_of(k0, k.k1);
	k.off = t->key_off;
	return k;
}

/* The second half of the id that value v holds. */
ALWAYS_INLINE uint64_t k1_of(const void *v, size_t off)
{
	uint64_t k1;
	memcpy(&k1, (const uint8_t *)v + off + 8, 8);
	return k1;
}

/* Home slot of hash h (or a slot's hc: the count bits are shifted out) in
 * a shard of 1 << (64 - shift) slots. */
ALWAYS_INLINE size_t home(uint64_t h, unsigned shift)
{
	return (size_t)((h << SHARD_BITS) >> shift);
}

ALWAYS_INLINE shard_t *shard_of(kreq__table_t *t, const tkey_t *k)
{
	return &t->shards[k->h >> (64 - SHARD_BITS)];
}

/* ---- the shard lock ---------------------------------------------------- */

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

static void lock_slow(shard_t *sh)
{
	unsigned spins = 0;
	do {
		while (atomic_load_explicit(&sh->lock, memory_order_relaxed) != 0) {
			if (++spins < SPINS)
				cpu_relax();
			else
				sched_yield(); /* the holder may be preempted */
		}
	} while (atomic_exchange_explicit(&sh->lock, 1, memory_order_acquire) != 0);
}

ALWAYS_INLINE void shard_lock(shard_t *sh)
{
	if (atomic_exchange_explicit(&sh->lock, 1, memory_order_acquire) != 0)
		lock_slow(sh);
}

ALWAYS_INLINE void shard_unlock(shard_t *sh)
{
	atomic_store_explicit(&sh->lock, 0, memory_order_release);
}

ALWAYS_INLINE size_t size_count(shard_t *sh)
{
	return atomic_load_explicit(&sh->count, memory_order_relaxed);
}

ALWAYS_INLINE void set_count(shard_t *sh, size_t n)
{
	atomic_store_explicit(&sh->count, n, memory_order_relaxed);
}

/* ---- slots and probe counts (shard locked) ----------------------------- */

ALWAYS_INLINE unsigned cnt(const slot_t *s)
{
	return (unsigned)(s->hc >> CNT_SHIFT);
}

ALWAYS_INLINE void cnt_inc(slot_t *s)
{
	if (cnt(s) != CNT_MAX)
		s->hc += CNT_ONE;
}

ALWAYS_INLINE void cnt_dec(slot_t *s)
{
	if (cnt(s) != CNT_MAX)
		s->hc -= CNT_ONE;
}

ALWAYS_INLINE bool holds(const slot_t *s, const tkey_t *k)
{
	return ((s->hc ^ k->h) & HASH_MASK) == 0 && s->v != NULL && k1_of(s->v, k->off) == k->k1;
}

#define NONE SIZE_MAX

/* Index of k's slot, or NONE. An entry beyond slot i homed at or before i
 * counts in i, so the search ends at the first slot with count 0. */
ALWAYS_INLINE size_t slot_lookup(const shard_t *sh, const tkey_t *k)
{
	if (sh->slots == NULL)
		return NONE;
	for (size_t i = home(k->h, sh->shift);; i = (i + 1) & sh->mask) {
		const slot_t *s = &sh->slots[i];
		if (holds(s, k))
			return i;
		if (cnt(s) == 0)
			return NONE;
	}
}

/* Stores an entry in empty slot `to`, the first empty slot from its home
 * `from`, and counts it in the slots it passes over. */
static void place(slot_t *sl, size_t mask, size_t from, size_t to, uint64_t h, void *v)
{
	for (size_t q = from; q != to; q = (q + 1) & mask)
		cnt_inc(&sl[q]);
	sl[to] = (slot_t){h & HASH_MASK, v};
}

/* Moves the entry in slot j back to slot i, over which it passed: it no
 * longer passes over [i, j). */
ALWAYS_INLINE void move_back(slot_t *sl, size_t mask, size_t i, size_t j)
{
	for (size_t q = i; q != j; q = (q + 1) & mask)
		cnt_dec(&sl[q]);
	sl[i].hc = (sl[j].hc & HASH_MASK) | (sl[i].hc & ~HASH_MASK);
	sl[i].v = sl[j].v;
}

/* Is `k` cyclically in (i, j]? */
static bool between(size_t i, size_t k, size_t j)
{
	return i <= j ? (i < k && k <= j) : (i < k || k <= j);
}

/* Backward shift from hole i whose count saturated: scans the run to its
 * end like plain linear probing. */
static size_t shift_sticky(shard_t *sh, size_t i)
{
	slot_t *sl = sh->slots;
	for (size_t j = (i + 1) & sh->mask; sl[j].v != NULL && cnt(&sl[i]) != 0;
	     j = (j + 1) & sh->mask) {
		if (!between(i, home(sl[j].hc, sh->shift), j)) {
			move_back(sl, sh->mask, i, j);
			i = j;
		}
	}
	sl[i].hc &= HASH_MASK; /* nothing passes over a hole at the end of a run */
	return i;
}

/* Empties slot i, then fills each hole that entries still pass over with
 * the nearest of them (backward-shift deletion). With an exact count > 0
 * such an entry lies before the end of the run. */
static void erase_at(shard_t *sh, size_t i)
{
	slot_t *sl = sh->slots;
	size_t mask = sh->mask;
	unsigned shift = sh->shift;
	for (size_t q = home(sl[i].hc, shift); q != i; q = (q + 1) & mask)
		cnt_dec(&sl[q]);
	for (unsigned c; (c = cnt(&sl[i])) != 0;) {
		if (c == CNT_MAX) {
			i = shift_sticky(sh, i);
			break;
		}
		size_t j = (i + 1) & mask;
		while (((j - home(sl[j].hc, shift)) & mask) < ((j - i) & mask))
			j = (j + 1) & mask;
		move_back(sl, mask, i, j);
		i = j;
	}
	sl[i].v = NULL;
}

static slot_t *alloc_slots(uint32_t bits)
{
	return bits <= MAX_BITS ? calloc((size_t)1 << bits, sizeof(slot_t)) : NULL;
}

/* Moves every entry into ns (1 << bits zeroed slots) and frees the old;
 * counts are recomputed, so saturated ones become exact again. */
static void rehash_into(shard_t *sh, slot_t *ns, uint32_t bits)
{
	size_t mask = ((size_t)1 << bits) - 1;
	size_t old_cap = sh->slots != NULL ? sh->mask + 1 : 0;
	for (size_t i = 0; i < old_cap; i++) {
		const slot_t *s = &sh->slots[i];
		if (s->v == NULL)
			continue;
		size_t h = home(s->hc, 64 - bits), j = h;
		while (ns[j].v != NULL)
			j = (j + 1) & mask;
		place(ns, mask, h, j, s->hc, s->v);
	}
	free(sh->slots);
	sh->slots = ns;
	sh->bits = bits;
	sh->mask = mask;
	sh->limit = ((size_t)3 << bits) / 4;
	sh->shift = 64 - bits;
}

/* Capacity (in bits) the shard grows to next. */
static uint32_t next_bits(const shard_t *sh)
{
	return sh->slots != NULL ? sh->bits + 1 : MIN_BITS;
}

/* Can the shard take one more entry (load factor <= 3/4)? */
static bool has_room(shard_t *sh)
{
	return size_count(sh) < sh->limit; /* limit 0 without slots */
}

#define NEED_ROOM 1 /* put(): grow the shard and call again */

/* Stores k -> value in the locked shard: KREQ_OK, KREQ_EEXIST or
 * NEED_ROOM. Probing to the first empty slot counts the slots passed over
 * (undone if k turns out to be present). Last come, first served: the new
 * entry takes its home slot and the entry there moves to the empty slot,
 * over the same slots, so the oldest entries end up at the ends of their
 * runs, where removing them seldom has anything to shift back. */
static int put(shard_t *sh, const tkey_t *k, void *value)
{
	if (!has_room(sh))
		return slot_lookup(sh, k) != NONE ? KREQ_EEXIST : NEED_ROOM;
	slot_t *sl = sh->slots;
	size_t mask = sh->mask, h = home(k->h, sh->shift), i = h;
	for (; sl[i].v != NULL; i = (i + 1) & mask) {
		if (holds(&sl[i], k)) {
			for (size_t q = h; q != i; q = (q + 1) & mask)
				cnt_dec(&sl[q]);
			return KREQ_EEXIST;
		}
		cnt_inc(&sl[i]);
	}
	if (i != h) {
		sl[i].hc = sl[h].hc & HASH_MASK; /* count 0 in an empty slot */
		sl[i].v = sl[h].v;
	}
	sl[h].hc = (k->h & HASH_MASK) | (sl[h].hc & ~HASH_MASK);
	sl[h].v = value;
	set_count(sh, size_count(sh) + 1);
	return KREQ_OK;
}

/* Grows the locked shard, allocating with the lock released (another
 * thread may grow it meanwhile: then the new array is not needed). */
static bool grow(shard_t *sh)
{
	uint32_t bits = next_bits(sh);
	shard_unlock(sh);
	slot_t *ns = alloc_slots(bits);
	shard_lock(sh);
	if (ns == NULL)
		return false;
	if (next_bits(sh) == bits && !has_room(sh))
		rehash_into(sh, ns, bits);
	else
		free(ns);
	return true;
}

/* ---- public ------------------------------------------------------------ */

static uint32_t bits_for(size_t per_shard)
{
	uint32_t bits = MIN_BITS;
	while (bits < MAX_BITS && ((size_t)3 << bits) / 4 < per_shard)
		bits++;
	return bits;
}

kreq__table_t *kreq__table_new(size_t expected, size_t key_offset)
{
	kreq__table_t *t = aligned_alloc(64, sizeof(*t));
	if (t == NULL)
		return NULL;
	memset(t, 0, sizeof(*t));
	t->key_off = key_offset;
	uint32_t bits = bits_for(expected / NSHARDS + 1);
	for (size_t i = 0; i < NSHARDS; i++) {
		shard_t *sh = &t->shards[i];
		atomic_init(&sh->lock, 0);
		atomic_init(&sh->count, 0);
		if (expected == 0)
			continue;
		slot_t *ns = alloc_slots(bits);
		if (ns == NULL) {
			kreq__table_destroy(t);
			return NULL;
		}
		rehash_into(sh, ns, bits);
	}
	return t;
}

void kreq__table_destroy(kreq__table_t *t)
{
	if (t == NULL)
		return;
	for (size_t i = 0; i < NSHARDS; i++)
		free(t->shards[i].slots);
	free(t);
}

int kreq__table_insert(kreq__table_t *t, const uint8_t id[16], void *value)
{
	if (value == NULL || memcmp((const uint8_t *)value + t->key_off, id, 16) != 0)
		return KREQ_EINVAL; /* the value must hold this id */
	tkey_t k = make_key(t, id);
	shard_t *sh = shard_of(t, &k);
	shard_lock(sh);
	int rc;
	while ((rc = put(sh, &k, value)) == NEED_ROOM) {
		if (!grow(sh)) {
			rc = KREQ_ENOMEM;
			break;
		}
	}
	shard_unlock(sh);
	return rc;
}

void *kreq__table_remove(kreq__table_t *t, const uint8_t id[16])
{
	tkey_t k = make_key(t, id);
	shard_t *sh = shard_of(t, &k);
	void *v = NULL;
	shard_lock(sh);
	size_t i = slot_lookup(sh, &k);
	if (i != NONE) {
		v = sh->slots[i].v;
		erase_at(sh, i);
		set_count(sh, size_count(sh) - 1);
	}
	shard_unlock(sh);
	return v;
}

/* Inlined into both public finds, so find() has no retain test. */
ALWAYS_INLINE void *find_value(kreq__table_t *t, const uint8_t id[16], void (*retain)(void *value))
{
	tkey_t k = make_key(t, id);
	shard_t *sh = shard_of(t, &k);
	shard_lock(sh);
	size_t i = slot_lookup(sh, &k);
	void *v = i != NONE ? sh->slots[i].v : NULL;
	if (v != NULL && retain != NULL)
		retain(v);
	shard_unlock(sh);
	return v;
}

void *kreq__table_find_retain(kreq__table_t *t, const uint8_t id[16], void (*retain)(void *value))
{
	return find_value(t, id, retain);
}

void *kreq__table_find(kreq__table_t *t, const uint8_t id[16])
{
	return find_value(t, id, NULL);
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
		shard_lock(sh);
		size_t cap = sh->slots != NULL ? sh->mask + 1 : 0;
		for (size_t j = 0; j < cap; j++)
			if (sh->slots[j].v != NULL)
				fn(sh->slots[j].v, arg);
		shard_unlock(sh);
	}
}

/* Detaches the shard's array (the shard becomes empty, capacity 0) and
 * calls fn for each value outside the lock. Returns how many. */
static size_t drain_shard(shard_t *sh, void (*fn)(void *value, void *arg), void *arg)
{
	shard_lock(sh);
	slot_t *slots = sh->slots;
	size_t cap = slots != NULL ? sh->mask + 1 : 0;
	size_t n = size_count(sh);
	sh->slots = NULL;
	sh->bits = 0;
	sh->mask = 0;
	sh->limit = 0;
	sh->shift = 0;
	set_count(sh, 0);
	shard_unlock(sh);
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

/* ---- for tests ----------------------------------------------------------- */

void kreq__table_test_id(uint64_t h, uint64_t salt, uint8_t id[16])
{
	uint64_t k0 = (h * MULT_INV) ^ ((salt << 32) | (salt >> 32));
	memcpy(id, &k0, 8);
	memcpy(id + 8, &salt, 8);
}

static int check_shard(shard_t *sh, size_t sno, size_t key_off, char *err, size_t errlen)
{
	if (sh->slots == NULL)
		return size_count(sh) == 0 && sh->bits == 0 && sh->mask == 0 && sh->limit == 0
		           ? KREQ_OK
		           : kreq__err(err, errlen, KREQ_ESTATE, "shard %zu: empty but not reset",
		                       sno);
	size_t cap = sh->mask + 1, n = 0;
	if (sh->bits < MIN_BITS || sh->bits > MAX_BITS || cap != (size_t)1 << sh->bits ||
	    sh->shift != 64 - sh->bits || sh->limit != ((size_t)3 << sh->bits) / 4)
		return kreq__err(err, errlen, KREQ_ESTATE, "shard %zu: bad capacity", sno);
	size_t *passes = calloc(cap, sizeof(size_t));
	if (passes == NULL)
		return KREQ_ENOMEM;
	int rc = KREQ_OK;
	for (size_t i = 0; i < cap && rc == KREQ_OK; i++) {
		const slot_t *s = &sh->slots[i];
		if (s->v == NULL)
			continue;
		n++;
		for (size_t q = home(s->hc, sh->shift); rc == KREQ_OK && q != i;
		     q = (q + 1) & sh->mask) {
			if (sh->slots[q].v == NULL)
				rc = kreq__err(
				    err, errlen, KREQ_ESTATE,
				    "shard %zu slot %zu: empty slot %zu on its probe path", sno, i,
				    q);
			passes[q]++;
		}
		uint64_t k1 = k1_of(s->v, key_off);
		uint64_t k0 = ((((uint64_t)sno << CNT_SHIFT) | (s->hc & HASH_MASK)) * MULT_INV) ^
		              ((k1 << 32) | (k1 >> 32));
		uint8_t id[16];
		memcpy(id, &k0, 8);
		memcpy(id + 8, &k1, 8);
		if (rc == KREQ_OK && memcmp(id, (const uint8_t *)s->v + key_off, 8) != 0)
			rc = kreq__err(err, errlen, KREQ_ESTATE,
			               "shard %zu slot %zu: hash does not match the value's id",
			               sno, i);
		tkey_t k = {k1, hash_of(k0, k1), key_off};
		if (rc == KREQ_OK && slot_lookup(sh, &k) != i)
			rc = kreq__err(err, errlen, KREQ_ESTATE, "shard %zu slot %zu: not found",
			               sno, i);
	}
	for (size_t q = 0; q < cap && rc == KREQ_OK; q++) {
		unsigned c = cnt(&sh->slots[q]);
		if (sh->slots[q].v == NULL ? c != 0 : c != CNT_MAX && c != passes[q])
			rc = kreq__err(err, errlen, KREQ_ESTATE,
			               "shard %zu slot %zu: count %u, %zu entries pass over it",
			               sno, q, c, passes[q]);
	}
	if (rc == KREQ_OK && n != size_count(sh))
		rc = kreq__err(err, errlen, KREQ_ESTATE, "shard %zu: %zu entries, count %zu", sno,
		               n, size_count(sh));
	free(passes);
	return rc;
}

int kreq__table_check(kreq__table_t *t, char *err, size_t errlen)
{
	int rc = KREQ_OK;
	for (size_t i = 0; i < NSHARDS && rc == KREQ_OK; i++) {
		shard_t *sh = &t->shards[i];
		shard_lock(sh);
		rc = check_shard(sh, i, t->key_off, err, errlen);
		shard_unlock(sh);
	}
	return rc;
}
