/*
 * dedup.c — see dedup.h.
 *
 * Design note: why an open-addressed index with the hash beside the pointer.
 * A busy worker's store holds hundreds of thousands of entries spread over
 * hundreds of MB, so every lookup misses the cache and the TLB. Nearly all
 * lookups are for a new key. With chained buckets the lookup read the
 * bucket array and then, for the ~40% of keys whose bucket was taken,
 * the chained entry: two misses. Here the slot holds the full 64-bit hash,
 * so a lookup only reads an entry whose hash matches (in effect only a
 * real hit), and a new key costs one read of the slot array. Linear
 * probing at load <= 1/2 keeps probes within a cache line or two; removal
 * shifts the following run back (no tombstones, so lookups never slow down
 * with churn). A slot array of 2 MiB or more is asked for transparent huge
 * pages, so its random reads stop walking page tables as well (at 256
 * calls in flight the lookup was ~10% of the serving loop's time).
 *
 * Why a random key per table and a probe bound: idempotency keys are chosen
 * by callers. With a fixed (public) SipHash key anyone can compute keys
 * whose hashes share their low bits; linear probing then builds one run as
 * long as the table and every insert walks it (150k such results made a
 * rebuild quadratic and past its timeout). Each table draws its own key
 * (randombytes_buf), so colliding keys cannot be computed from outside, and
 * no entry ever sits more than KREQ__DD_PROBE_MAX slots past its home: an
 * insert that would is refused by the index, which re-keys itself (new
 * random key, same size, then double the size) and tries again, so even a
 * leaked key costs one O(n) rehash, never O(n^2). Lookups stop after
 * KREQ__DD_PROBE_MAX slots too. Backward-shift removal only moves entries
 * closer to home, so it keeps the bound. At load <= 1/2 a run of 128 is
 * about e^-25 likely per insert: random keys never pay the rehash.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <sodium.h>

#include "broker/worker/dedup.h"
#include "kreq/error.h"

_Static_assert(KREQ__DD_HASH_KEY_BYTES == crypto_shorthash_KEYBYTES, "SipHash key size");

size_t kreq__dedup_key(uint8_t *key, const char *key_id, const uint8_t *idem, size_t idem_len)
{
	size_t id_len = strlen(key_id);
	key[0] = (uint8_t)id_len;
	memcpy(key + 1, key_id, id_len);
	memcpy(key + 1 + id_len, idem, idem_len);
	return 1 + id_len + idem_len;
}

static uint64_t hash_with(const uint8_t *hkey, const uint8_t *key, size_t len)
{
	uint64_t h;
	crypto_shorthash((unsigned char *)&h, key, len, hkey);
	return h;
}

static uint64_t hash_of(const kreq__dedup_t *d, const uint8_t *key, size_t len)
{
	return hash_with(d->hkey, key, len);
}

#define HUGE_PAGE ((size_t)2 << 20)

/* A zeroed slot array; from 2 MiB on, aligned and advised to use huge
 * pages (where the kernel does not, it is an ordinary allocation). */
static kreq__dd_slot_t *slots_new(size_t n)
{
	size_t bytes = n * sizeof(kreq__dd_slot_t);
	if (bytes < HUGE_PAGE)
		return calloc(n, sizeof(kreq__dd_slot_t));
	kreq__dd_slot_t *sl = aligned_alloc(HUGE_PAGE, bytes); /* a multiple of it */
	if (sl) {
		(void)madvise(sl, bytes, MADV_HUGEPAGE); /* advice only */
		memset(sl, 0, bytes);
	}
	return sl;
}

int kreq__dedup_init(kreq__dedup_t *d)
{
	memset(d, 0, sizeof(*d));
	d->nslots = 1024;
	randombytes_buf(d->hkey, sizeof(d->hkey));
	d->slots = slots_new(d->nslots);
	return d->slots ? KREQ_OK : KREQ_ENOMEM;
}

static void account(kreq__dedup_t *d, kreq__dd_entry_t *e, size_t add, size_t sub)
{
	d->bytes = d->bytes + add - sub;
	if (d->shared)
		*d->shared = *d->shared + add - sub;
	if (e->tenant)
		e->tenant->bytes = e->tenant->bytes + add - sub;
}

/* ---- tenants ------------------------------------------------------------ */

/* The tenant of a record key (u8 len || key_id || ...), created if new. */
static kreq__dd_tenant_t *tenant_of(kreq__dd_tenants_t *r, const uint8_t *key)
{
	kreq__dd_tenant_t **pp = &r->head, *t;
	for (; (t = *pp); pp = &t->next)
		if (t->id_len == key[0] && !memcmp(t->id, key + 1, key[0]))
			break;
	if (t) {
		*pp = t->next; /* to the front: the next lookup is likely the same key */
	} else {
		if (!(t = calloc(1, sizeof(*t) + key[0])))
			return NULL;
		t->id_len = key[0];
		memcpy(t->id, key + 1, key[0]);
		r->count++;
	}
	t->next = r->head;
	r->head = t;
	return t;
}

void kreq__dd_tenants_sweep(kreq__dd_tenants_t *r)
{
	for (kreq__dd_tenant_t **pp = &r->head, *t; (t = *pp);) {
		if (t->entries) {
			pp = &t->next;
			continue;
		}
		*pp = t->next;
		free(t);
		r->count--;
	}
}

/* e's list in its tenant: the DONE one or the GHOST one. */
static kreq__dd_entry_t **t_list(kreq__dd_entry_t *e, kreq__dd_entry_t ***newest)
{
	kreq__dd_tenant_t *t = e->tenant;
	bool ghost = e->state == KREQ__DD_GHOST;
	*newest = ghost ? &t->g_newest : &t->newest;
	return ghost ? &t->g_oldest : &t->oldest;
}

static void t_unlink(kreq__dd_entry_t *e)
{
	if (!e->tenant || !e->aged)
		return;
	kreq__dd_entry_t **newest, **oldest = t_list(e, &newest);
	if (e->t_prev)
		e->t_prev->t_next = e->t_next;
	else
		*oldest = e->t_next;
	if (e->t_next)
		e->t_next->t_prev = e->t_prev;
	else
		*newest = e->t_prev;
	e->t_prev = e->t_next = NULL;
}

/* Appends e (DONE or GHOST, aged) to its tenant's list. */
static void t_link(kreq__dd_entry_t *e)
{
	if (!e->tenant)
		return;
	kreq__dd_entry_t **newest, **oldest = t_list(e, &newest);
	e->t_next = NULL;
	e->t_prev = *newest;
	if (*newest)
		(*newest)->t_next = e;
	else
		*oldest = e;
	*newest = e;
}

/* Unlinks e from its tenant and uncounts its whole footprint. */
static void t_detach(kreq__dedup_t *d, kreq__dd_entry_t *e);

static size_t result_bytes(const kreq__dd_entry_t *e)
{
	return e->len + (e->error ? strlen(e->error) + 1 : 0);
}

static void free_result(kreq__dedup_t *d, kreq__dd_entry_t *e)
{
	account(d, e, 0, result_bytes(e));
	free(e->payload);
	free(e->error);
	e->payload = NULL, e->error = NULL, e->len = 0;
}

static void t_detach(kreq__dedup_t *d, kreq__dd_entry_t *e)
{
	t_unlink(e);
	account(d, e, 0, sizeof(*e) + e->key_len + result_bytes(e));
	if (e->tenant)
		e->tenant->entries--;
	e->tenant = NULL;
}

void kreq__dedup_clear(kreq__dedup_t *d)
{
	for (size_t i = 0; i < d->nslots && d->slots; i++) {
		kreq__dd_entry_t *e = d->slots[i].e;
		if (e) {
			t_detach(d, e);
			free(e->payload);
			free(e->error);
			free(e);
		}
	}
	free(d->slots);
	memset(d, 0, sizeof(*d));
}

void kreq__dedup_each(kreq__dedup_t *d, void (*fn)(kreq__dd_entry_t *e, void *arg), void *arg)
{
	for (size_t i = 0; i < d->nslots; i++)
		if (d->slots[i].e)
			fn(d->slots[i].e, arg);
}

#define NO_SLOT SIZE_MAX

/* The slot holding key, or the empty slot that ends its probe run; NO_SLOT
 * when neither is within KREQ__DD_PROBE_MAX slots of its home (the key is
 * then absent: no entry lives further out). */
static size_t slot_of(const kreq__dedup_t *d, uint64_t h, const uint8_t *key, size_t len)
{
	size_t mask = d->nslots - 1, i = h & mask;
	for (unsigned n = 0; n < KREQ__DD_PROBE_MAX; n++, i = (i + 1) & mask) {
		const kreq__dd_slot_t *sl = &d->slots[i];
		if (!sl->e ||
		    (sl->hash == h && sl->e->key_len == len && !memcmp(sl->e->key, key, len)))
			return i;
	}
	return NO_SLOT;
}

/* Puts (h, e) into the first free slot of sl (n slots) within the bound. */
static bool place(kreq__dd_slot_t *sl, size_t n, uint64_t h, kreq__dd_entry_t *e)
{
	size_t mask = n - 1, i = h & mask;
	for (unsigned k = 0; k < KREQ__DD_PROBE_MAX; k++, i = (i + 1) & mask)
		if (!sl[i].e) {
			sl[i] = (kreq__dd_slot_t){h, e};
			return true;
		}
	return false;
}

/* Empties slot i and moves back each later entry of its run that would
 * otherwise no longer be reached from its home slot. */
static void slot_clear(kreq__dedup_t *d, size_t i)
{
	size_t mask = d->nslots - 1;
	for (size_t j = (i + 1) & mask; d->slots[j].e; j = (j + 1) & mask) {
		size_t home = d->slots[j].hash & mask;
		bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
		if (!stays) {
			d->slots[i] = d->slots[j];
			i = j;
		}
	}
	d->slots[i] = (kreq__dd_slot_t){0, NULL};
}

static void age_unlink(kreq__dedup_t *d, kreq__dd_entry_t *e)
{
	if (!e->aged)
		return;
	if (e->age_prev)
		e->age_prev->age_next = e->age_next;
	else
		d->oldest = e->age_next;
	if (e->age_next)
		e->age_next->age_prev = e->age_prev;
	else
		d->newest = e->age_prev;
	e->age_prev = e->age_next = NULL;
	e->aged = false;
}

void kreq__dedup_remove(kreq__dedup_t *d, kreq__dd_entry_t *e)
{
	size_t mask = d->nslots - 1, i = e->hash & mask;
	while (d->slots[i].e != e)
		i = (i + 1) & mask;
	slot_clear(d, i);
	t_detach(d, e);
	age_unlink(d, e);
	free(e->payload);
	free(e->error);
	free(e);
	d->count--;
}

kreq__dd_entry_t *kreq__dedup_find_hashed(kreq__dedup_t *d, uint64_t hash, const uint8_t *key,
                                          size_t key_len)
{
	size_t i = slot_of(d, hash, key, key_len);
	return i == NO_SLOT ? NULL : d->slots[i].e;
}

kreq__dd_entry_t *kreq__dedup_find(kreq__dedup_t *d, const uint8_t *key, size_t key_len)
{
	return kreq__dedup_find_hashed(d, hash_of(d, key, key_len), key, key_len);
}

uint64_t kreq__dedup_prefetch(const kreq__dedup_t *d, const uint8_t *key, size_t key_len)
{
	uint64_t h = hash_of(d, key, key_len);
	__builtin_prefetch(&d->slots[h & (d->nslots - 1)]);
	return h;
}

/* Moves every entry into a new array of n slots: with the stored hashes
 * when hkey is NULL, else re-hashed under hkey (which then becomes the
 * table's). False (the table unchanged) on ENOMEM or when an entry would
 * land past the probe bound. */
static bool reindex(kreq__dedup_t *d, size_t n, const uint8_t *hkey)
{
	kreq__dd_slot_t *sl = slots_new(n);
	if (!sl)
		return false;
	for (size_t i = 0; i < d->nslots; i++) {
		kreq__dd_entry_t *e = d->slots[i].e;
		if (!e)
			continue;
		uint64_t h = hkey ? hash_with(hkey, e->key, e->key_len) : d->slots[i].hash;
		if (!place(sl, n, h, e)) {
			free(sl);
			return false;
		}
	}
	free(d->slots);
	d->slots = sl;
	d->nslots = n;
	if (hkey) {
		memcpy(d->hkey, hkey, sizeof(d->hkey));
		for (size_t i = 0; i < n; i++)
			if (sl[i].e)
				sl[i].e->hash = sl[i].hash;
	}
	return true;
}

/* A new random key and the index rebuilt under it, at n slots. */
static bool rekey(kreq__dedup_t *d, size_t n)
{
	uint8_t k[KREQ__DD_HASH_KEY_BYTES];
	randombytes_buf(k, sizeof(k));
	if (!reindex(d, n, k))
		return false;
	d->rekeys++;
	return true;
}

static bool grow(kreq__dedup_t *d)
{
	return reindex(d, d->nslots * 2, NULL) || rekey(d, d->nslots * 2);
}

void kreq__dedup_set_hash_key(kreq__dedup_t *d, const uint8_t key[KREQ__DD_HASH_KEY_BYTES])
{
	if (!reindex(d, d->nslots, key)) /* only a broken test gets here */
		abort();
}

/* The free slot for a new key of hash *h (updated if the table re-keys),
 * or NO_SLOT: the probe run is too long, so the index re-keys (same size,
 * then twice the size) until the key has a slot within the bound. */
static size_t free_slot(kreq__dedup_t *d, uint64_t *h, const uint8_t *key, size_t len)
{
	size_t i = slot_of(d, *h, key, len);
	for (int attempt = 0; i == NO_SLOT && attempt < 4; attempt++) {
		if (!rekey(d, attempt < 2 ? d->nslots : d->nslots * 2))
			continue;
		*h = hash_of(d, key, len);
		i = slot_of(d, *h, key, len);
	}
	return i;
}

static kreq__dd_entry_t *insert(kreq__dedup_t *d, const uint8_t *key, size_t key_len,
                                const uint8_t digest[32])
{
	/* load <= 1/2 keeps probe runs short; a table that cannot grow
	 * refuses the entry rather than fill up (the caller redoes the record) */
	if (2 * (d->count + 1) > d->nslots && !grow(d))
		return NULL;
	uint64_t h = hash_of(d, key, key_len);
	size_t i = free_slot(d, &h, key, key_len); /* the key is absent: an empty slot */
	if (i == NO_SLOT) {
		d->refused++;
		return NULL;
	}
	kreq__dd_tenant_t *t = d->tenants ? tenant_of(d->tenants, key) : NULL;
	kreq__dd_entry_t *e = (!d->tenants || t) ? calloc(1, sizeof(*e) + key_len) : NULL;
	if (!e)
		return NULL;
	e->tenant = t;
	if (t)
		t->entries++;
	e->owner = d;
	e->res_offset = -1;
	e->hash = h;
	e->key_len = (uint16_t)key_len;
	memcpy(e->key, key, key_len);
	memcpy(e->digest, digest, 32);
	account(d, e, sizeof(*e) + key_len, 0);
	d->slots[i] = (kreq__dd_slot_t){h, e};
	d->count++;
	return e;
}

kreq__dd_entry_t *kreq__dedup_add_running(kreq__dedup_t *d, const uint8_t *key, size_t key_len,
                                          const uint8_t digest[32], void *running)
{
	kreq__dd_entry_t *e = insert(d, key, key_len, digest);
	if (e) {
		e->state = KREQ__DD_RUNNING;
		e->running = running;
	}
	return e;
}

void kreq__dedup_set_done_take(kreq__dedup_t *d, kreq__dd_entry_t *e, int32_t status,
                               uint8_t *payload, size_t len, char *error, int64_t expires_ms)
{
	t_unlink(e);
	age_unlink(d, e);
	free_result(d, e);
	if (error && !*error) {
		free(error);
		error = NULL;
	}
	e->state = KREQ__DD_DONE;
	e->running = NULL;
	e->status = status;
	e->expires_ms = expires_ms;
	e->payload = len ? payload : NULL;
	if (!len)
		free(payload);
	e->error = error;
	e->len = len;
	e->aged = true;
	e->res_offset = -1; /* a new result: its record's offset comes later */
	account(d, e, result_bytes(e), 0);
	t_link(e);
	e->age_prev = d->newest;
	if (d->newest)
		d->newest->age_next = e;
	else
		d->oldest = e;
	d->newest = e;
}

int kreq__dedup_set_done(kreq__dedup_t *d, kreq__dd_entry_t *e, const uint8_t *key, size_t key_len,
                         const uint8_t digest[32], int32_t status, const void *payload, size_t len,
                         const char *error, int64_t expires_ms)
{
	if (!e) {
		e = kreq__dedup_find(d, key, key_len);
		if (!e && !(e = insert(d, key, key_len, digest)))
			return KREQ_ENOMEM;
	}
	uint8_t *p = NULL;
	char *er = NULL;
	if ((len && !(p = malloc(len))) || (error && *error && !(er = strdup(error)))) {
		free(p);
		free(er);
		kreq__dedup_remove(d, e);
		return KREQ_ENOMEM;
	}
	if (len)
		memcpy(p, payload, len);
	memcpy(e->digest, digest, 32);
	kreq__dedup_set_done_take(d, e, status, p, len, er, expires_ms);
	return KREQ_OK;
}

size_t kreq__dedup_expire(kreq__dedup_t *d, int64_t now_ms)
{
	size_t n = 0;
	while (d->oldest && d->oldest->expires_ms <= now_ms) {
		kreq__dedup_remove(d, d->oldest);
		n++;
	}
	return n;
}

bool kreq__dedup_evict_oldest(kreq__dedup_t *d, int64_t *expires_ms)
{
	if (!d->oldest)
		return false;
	*expires_ms = d->oldest->expires_ms;
	kreq__dedup_remove(d, d->oldest);
	return true;
}

void kreq__dedup_ghost(kreq__dedup_t *d, kreq__dd_entry_t *e)
{
	t_unlink(e);
	free_result(d, e);
	e->state = KREQ__DD_GHOST;
	t_link(e);
}

bool kreq__dd_tenant_evict(kreq__dd_tenant_t *t, bool *removed, int64_t *expires_ms)
{
	kreq__dd_entry_t *e = t->oldest ? t->oldest : t->g_oldest;
	if (!e)
		return false;
	/* a result whose Result record has no known offset yet (its delivery
	 * report has not come) could not be found again: it stays, over the
	 * budget for a moment, and room is made once the offset is known */
	if (e->state == KREQ__DD_DONE && e->res_offset < 0)
		return false;
	*expires_ms = e->expires_ms;
	*removed = e->state == KREQ__DD_GHOST;
	if (*removed)
		kreq__dedup_remove(e->owner, e);
	else
		kreq__dedup_ghost(e->owner, e);
	return true;
}

kreq__dd_tenant_t *kreq__dd_tenants_biggest(kreq__dd_tenants_t *r)
{
	kreq__dd_tenant_t *big = NULL;
	for (kreq__dd_tenant_t *t = r->head; t; t = t->next)
		if ((t->oldest || t->g_oldest) && (!big || t->bytes > big->bytes))
			big = t;
	return big;
}
