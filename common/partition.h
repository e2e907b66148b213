/*
 * partition.h — Kafka's default (Java) partitioner: which partition a
 * record key belongs to.
 *
 * Clients key requests by idempotency key with librdkafka's
 * murmur2_random partitioner; a worker recomputes the partition from the
 * signed idempotency key and drops a request found on another partition
 * (a replay onto another partition would otherwise miss that partition's
 * deduplication state and run again). Both sides must agree bit for bit,
 * so this is the Java client's function, checked against librdkafka's.
 */
#ifndef KREQ_PARTITION_H
#define KREQ_PARTITION_H

#include <stddef.h>
#include <stdint.h>

/* MurmurHash2 as Kafka's Java client computes it (seed 0x9747b28c,
 * little-endian words, whatever the alignment of key). */
uint32_t kreq__murmur2(const void *key, size_t len);

/* toPositive(murmur2(key)) % nparts: the partition Kafka's default
 * partitioner (and librdkafka's murmur2 and murmur2_random, for a non-NULL
 * key) picks among nparts (> 0) partitions. */
int32_t kreq__partition_of(const void *key, size_t len, int32_t nparts);

#endif
