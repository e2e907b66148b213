/*
 * dedup.h — one partition's deduplication store (loop thread only).
 *
 * Keyed by the results-topic record key, u8 len(key_id) || key_id ||
 * idempotency_key, so one tenant's entry never answers another's. An entry
 * is either RUNNING (a request with that key is in progress: duplicates join
 * it) or DONE (a stored result: duplicates get it again). DONE entries
 * expire at their deadline (stored_at + worker.dedup.retention.ms), the same
 * rule the rebuild from the results topic applies, so a worker that rebuilt
 * and one that never restarted answer alike.
 *
 * Bounded: every entry's footprint (struct, key, stored payload and error)
 * is counted in `bytes`, when set also in *shared (all partitions of a
 * worker) and in its key id's tenant (*tenants: one tenant spans all the
 * worker's partitions and lists its DONE and GHOST entries by age), so the
 * loop can make room per key id (kreq__dd_tenant_evict): a DONE entry whose
 * Result's offset is known becomes a GHOST (the result is read back from
 * the results topic on a hit); a GHOST or an entry without a known offset
 * is removed, and its key is then no longer deduplicated (the window is
 * shorter than the retention, which the loop counts and logs).
 *
 * Why a private table rather than the client's table: this one is
 * touched by one thread only, holds variable-length keys and owns result
 * payloads; the client's is lock-sharded for fixed 16-byte ids.
 */
#ifndef KREQ_BROKER_DEDUP_H
#define KREQ_BROKER_DEDUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KREQ__DEDUP_KEY_MAX (1 + 64 + 255)

/* GHOST: a DONE entry whose result left memory (its tenant was over its
 * budget) but stays findable: key, digest, expiry and the offset of its
 * Result record in the results topic, where the worker reads it again. */
typedef enum { KREQ__DD_RUNNING = 1, KREQ__DD_DONE = 2, KREQ__DD_GHOST = 3 } kreq__dd_state_t;

struct kreq__dd_tenant;
struct kreq__dedup;

typedef struct kreq__dd_entry {
	struct kreq__dd_entry *age_prev, *age_next; /* DONE and GHOST entries, oldest first */
	struct kreq__dd_entry *t_prev, *t_next;     /* its tenant's DONE (or GHOST) list */
	struct kreq__dd_tenant *tenant;             /* NULL without a registry */
	struct kreq__dedup *owner;                  /* the store holding it */
	int64_t res_offset; /* its Result record's offset in the results topic, -1 unknown */
	uint64_t hash;
	uint16_t key_len;
	bool aged; /* on the age list (DONE) */
	kreq__dd_state_t state;
	uint8_t digest[32];
	void *running; /* RUNNING: the request in progress (kreq_request_t *) */
	/* DONE: the stored result */
	int32_t status;
	uint8_t *payload;
	size_t len;
	char *error;
	int64_t expires_ms;
	uint8_t key[]; /* key_len bytes */
} kreq__dd_entry_t;

/* One slot of the open-addressed index: the entry and its key's hash. */
typedef struct kreq__dd_slot {
	uint64_t hash;
	kreq__dd_entry_t *e; /* NULL: empty */
} kreq__dd_slot_t;

/* No entry sits further than this many slots from its home (dedup.c). */
#define KREQ__DD_PROBE_MAX      128
#define KREQ__DD_HASH_KEY_BYTES 16

/* Everything one signing key id holds, over all partitions of a worker
 * (worker.dedup.key.max.bytes budgets it). Freed once empty by
 * kreq__dd_tenants_sweep. */
typedef struct kreq__dd_tenant {
	struct kreq__dd_tenant *next;
	size_t bytes;                          /* footprint of its entries */
	size_t entries;                        /* how many */
	kreq__dd_entry_t *oldest, *newest;     /* its DONE entries by age */
	kreq__dd_entry_t *g_oldest, *g_newest; /* its GHOST entries by age */
	uint8_t id_len;
	uint8_t id[]; /* the key id (id_len bytes) */
} kreq__dd_tenant_t;

/* The tenants of a worker's stores (loop thread); zero-initialised. */
typedef struct kreq__dd_tenants {
	kreq__dd_tenant_t *head; /* most recently used first */
	size_t count;
} kreq__dd_tenants_t;

typedef struct kreq__dedup {
	kreq__dd_slot_t *slots; /* a power of two of them, at most half full */
	size_t nslots, count;
	uint8_t hkey[KREQ__DD_HASH_KEY_BYTES]; /* this table's random SipHash key */
	uint64_t rekeys;                       /* times a probe run forced a new key */
	uint64_t refused;                      /* inserts refused: no slot within the bound */
	kreq__dd_entry_t *oldest, *newest;     /* DONE entries by insertion */
	size_t bytes;                          /* footprint of every entry held */
	size_t *shared;                        /* optional: also counted here */
	kreq__dd_tenants_t *tenants;           /* optional: entries accounted per key id */
} kreq__dedup_t;

/* Builds the record key into key (KREQ__DEDUP_KEY_MAX bytes); its length. */
size_t kreq__dedup_key(uint8_t *key, const char *key_id, const uint8_t *idem, size_t idem_len);

int kreq__dedup_init(kreq__dedup_t *d);
void kreq__dedup_clear(kreq__dedup_t *d);

kreq__dd_entry_t *kreq__dedup_find(kreq__dedup_t *d, const uint8_t *key, size_t key_len);

/* The key's hash, with its slot prefetched: a large store misses the
 * cache on every lookup, so the loop starts the load early and does other
 * work (checks, the request digest) before kreq__dedup_find_hashed. */
uint64_t kreq__dedup_prefetch(const kreq__dedup_t *d, const uint8_t *key, size_t key_len);
kreq__dd_entry_t *kreq__dedup_find_hashed(kreq__dedup_t *d, uint64_t hash, const uint8_t *key,
                                          size_t key_len);

/* A new RUNNING entry for key (which must be absent); NULL on ENOMEM. */
kreq__dd_entry_t *kreq__dedup_add_running(kreq__dedup_t *d, const uint8_t *key, size_t key_len,
                                          const uint8_t digest[32], void *running);

/* Makes e DONE with a copy of the result (or inserts a DONE entry when e is
 * NULL, for the rebuild): KREQ_OK or KREQ_ENOMEM (e is then removed). A
 * DONE entry for the same key is replaced (compaction keeps the last). */
int kreq__dedup_set_done(kreq__dedup_t *d, kreq__dd_entry_t *e, const uint8_t *key, size_t key_len,
                         const uint8_t digest[32], int32_t status, const void *payload, size_t len,
                         const char *error, int64_t expires_ms);

/* Makes the RUNNING entry e DONE, taking ownership of payload (malloc'd,
 * len bytes, or NULL) and error (malloc'd or NULL): no copy. */
void kreq__dedup_set_done_take(kreq__dedup_t *d, kreq__dd_entry_t *e, int32_t status,
                               uint8_t *payload, size_t len, char *error, int64_t expires_ms);

/* Test hook: re-hashes the index under key (a chosen key lets a test build
 * keys that collide under it). */
void kreq__dedup_set_hash_key(kreq__dedup_t *d, const uint8_t key[KREQ__DD_HASH_KEY_BYTES]);

/* Calls fn for every entry (fn must not add or remove entries). */
void kreq__dedup_each(kreq__dedup_t *d, void (*fn)(kreq__dd_entry_t *e, void *arg), void *arg);
/* Removes and frees e. */
void kreq__dedup_remove(kreq__dedup_t *d, kreq__dd_entry_t *e);

/* Removes DONE entries expired at now_ms (oldest first); how many. */
size_t kreq__dedup_expire(kreq__dedup_t *d, int64_t now_ms);

/* Removes the oldest DONE entry; false if there is none. *expires_ms gets
 * its expiry (how early it left). */
bool kreq__dedup_evict_oldest(kreq__dedup_t *d, int64_t *expires_ms);

/* DONE -> GHOST: frees e's result (the Result record at e->res_offset
 * still holds it); e stays findable until it expires or is removed. */
void kreq__dedup_ghost(kreq__dedup_t *d, kreq__dd_entry_t *e);

/* Makes room in tenant t: its oldest DONE entry becomes a GHOST when its
 * Result's offset is known (else it is removed), or, without DONE entries,
 * its oldest GHOST is removed. False if t holds only RUNNING entries.
 * *removed tells whether an entry left entirely (its key no longer
 * deduplicates), *expires_ms its expiry. */
bool kreq__dd_tenant_evict(kreq__dd_tenant_t *t, bool *removed, int64_t *expires_ms);

/* The tenant holding the most bytes that kreq__dd_tenant_evict can shrink;
 * NULL if none. */
kreq__dd_tenant_t *kreq__dd_tenants_biggest(kreq__dd_tenants_t *r);

/* Frees the tenants that hold no entry. */
void kreq__dd_tenants_sweep(kreq__dd_tenants_t *r);

#endif
