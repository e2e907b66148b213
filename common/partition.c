/*
 * partition.c — Kafka's murmur2 partitioner (see partition.h for why).
 *
 * Byte-wise so it is endian- and alignment-neutral; the result equals
 * org.apache.kafka.common.utils.Utils.murmur2 and librdkafka's rd_murmur2
 * (tests/unit/test_partition.c checks both: Java's published vectors and
 * rd_kafka_msg_partitioner_murmur2 on random keys).
 */
#include "common/partition.h"

uint32_t kreq__murmur2(const void *key, size_t len)
{
	const uint32_t m = 0x5bd1e995;
	const unsigned char *p = key;
	uint32_t h = 0x9747b28c ^ (uint32_t)len;
	for (; len >= 4; p += 4, len -= 4) {
		uint32_t k = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
		             (uint32_t)p[3] << 24;
		k *= m;
		k ^= k >> 24;
		k *= m;
		h *= m;
		h ^= k;
	}
	switch (len) {
	case 3:
		h ^= (uint32_t)p[2] << 16;
		/* fall through */
	case 2:
		h ^= (uint32_t)p[1] << 8;
		/* fall through */
	case 1:
		h ^= p[0];
		h *= m;
	}
	h ^= h >> 13;
	h *= m;
	h ^= h >> 15;
	return h;
}

int32_t kreq__partition_of(const void *key, size_t len, int32_t nparts)
{
	/* Java's toPositive(): clears the sign bit (not abs()) */
	return (int32_t)((kreq__murmur2(key, len) & 0x7fffffff) % (uint32_t)nparts);
}
