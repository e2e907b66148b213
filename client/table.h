/*
 * table.h — the pending-call table: 16-byte correlation id -> pointer.
 *
 * Safe under concurrent insert/find/remove from any thread. Correlation ids
 * are random (UUID v4), so their bytes are already a good hash. Every value
 * holds its own id, at the key offset given to kreq__table_new(), for as
 * long as it is in the table (the table reads it there instead of keeping
 * a copy). The table does not own the values; removal is how the client decides who settles a
 * call: exactly one remover gets the pointer back, every other gets NULL.
 * Must hold one million live entries; insert/find/remove stay under 100 ns
 * at that size (bench/bench_client_core.c).
 */
#ifndef KREQ_TABLE_H
#define KREQ_TABLE_H

#include <stddef.h>
#include <stdint.h>

typedef struct kreq__table kreq__table_t;

/* New table sized for about `expected` live entries (it grows as needed),
 * whose values hold their 16-byte id at byte key_offset. NULL if out of
 * memory. */
kreq__table_t *kreq__table_new(size_t expected, size_t key_offset);

/* Frees the table (not the values). The caller guarantees no concurrent use. */
void kreq__table_destroy(kreq__table_t *t);

/* Inserts id -> value (value non-NULL, holding id at the key offset).
 * KREQ_OK, KREQ_EEXIST (id present; table unchanged), KREQ_EINVAL (NULL, or
 * the value holds another id) or KREQ_ENOMEM. */
int kreq__table_insert(kreq__table_t *t, const uint8_t id[16], void *value);

/* Removes id and returns its value, or NULL if absent. */
void *kreq__table_remove(kreq__table_t *t, const uint8_t id[16]);

/* Value of id or NULL. The pointer is only safe to use if the caller holds
 * its own reference to the value (the table does not pin it). Use
 * kreq__table_find_retain() to take one atomically. */
void *kreq__table_find(kreq__table_t *t, const uint8_t id[16]);

/* As find, but calls retain(value) while the entry is still locked in the
 * table, so the value cannot be freed between lookup and use. */
void *kreq__table_find_retain(kreq__table_t *t, const uint8_t id[16], void (*retain)(void *value));

/* Number of entries. */
size_t kreq__table_count(kreq__table_t *t);

/* Calls fn(value, arg) for every entry while holding the table's locks
 * shard by shard (fn must be short and must not call back into the table);
 * used for admin snapshots. */
void kreq__table_foreach(kreq__table_t *t, void (*fn)(void *value, void *arg), void *arg);

/* Removes every entry, calling fn(value, arg) for each after it is removed
 * (outside the locks); used at client shutdown. Returns how many. */
size_t kreq__table_drain(kreq__table_t *t, void (*fn)(void *value, void *arg), void *arg);

/* ---- for tests ---------------------------------------------------------- */

/* The table hashes an id to 64 bits: the top 6 choose the shard, the next
 * log2(shard capacity) bits the home slot (shards start at 16 slots and
 * double at 3/4 full). Writes an id whose hash is h; different salts give
 * different ids, so tests can build colliding ids and probe runs that wrap
 * around the end of a shard. */
void kreq__table_test_id(uint64_t h, uint64_t salt, uint8_t id[16]);

/* Checks the internal invariants shard by shard under its lock (every
 * entry found from its home slot with no empty slot on the way, probe
 * counts exact unless saturated, empty slots counted 0, entry counts):
 * KREQ_OK, or KREQ_ESTATE with the first violation described in err. */
int kreq__table_check(kreq__table_t *t, char *err, size_t errlen);

#endif
