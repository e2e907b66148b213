/*
 * topics.h — the worker's output topics and their producer handles (loop
 * thread only).
 *
 * Why: rd_kafka_producev() with a topic *name* looks the name up in a
 * list of every topic the producer knows, under its lock, on every
 * message. A worker writes to one reply topic per client instance, so
 * that list grows with its callers. bench/bench_producev (librdkafka
 * 2.0.2): 305 ns per message by name against 209 ns by handle when the
 * producer knows 64 topics, 2453 ns against 260 ns with 1024. The loop
 * produces two records per call, so it keeps a handle per topic and
 * producer (RD_KAFKA_V_RKT) in this table.
 *
 * A topic's first appearance here is also when the worker warms it
 * (common/topic_admin.h): one metadata request per producer before its first
 * reply. The table is bounded: at KREQ__TOPICS_MAX topics it is emptied
 * (every handle released) and starts over, so a worker that saw millions
 * of short-lived clients does not keep a handle for each; a topic still in
 * use is then looked up and warmed again on its next reply.
 *
 * Handles belong to the producers they were made on: the table must be
 * cleared before either producer is destroyed.
 */
#ifndef KREQ_BROKER_TOPICS_H
#define KREQ_BROKER_TOPICS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#define KREQ__TOPICS_MAX 16384

typedef struct kreq__topic {
	uint64_t hash; /* of name; 0 = empty slot */
	char *name;
	rd_kafka_topic_t *rkt[2]; /* on producer[0] and [1]; NULL where there is none */
	int32_t partitions;       /* per the last metadata: 0 missing, -1 unknown */
	int64_t checked_ns;       /* when partitions was read (monotonic) */
} kreq__topic_t;

typedef struct kreq__topics {
	kreq__topic_t *slot; /* open addressing, a power of two of them, <= 1/2 full */
	size_t nslots, count;
	uint64_t seed; /* of the hash: random, chosen at the first add */
	size_t max;    /* the bound; 0: KREQ__TOPICS_MAX (tests set a small one) */
} kreq__topics_t;

/* name's hash under seed (never 0). Eight bytes a step: the loop hashes
 * two or three topic names per call. Seeded per table, so which reply
 * topic names collide cannot be worked out in advance. */
uint64_t kreq__topics_hash(uint64_t seed, const char *name);
/* The entry for name, or NULL. */
kreq__topic_t *kreq__topics_find(const kreq__topics_t *t, const char *name);
/* Adds name (absent) with a handle on each non-NULL producer[i]: KREQ_OK
 * and *out, or KREQ_ENOMEM / KREQ_EKAFKA (with errstr) and nothing added.
 * A table at its bound is cleared first. */
int kreq__topics_add(kreq__topics_t *t, const char *name, rd_kafka_t *const producer[2],
                     kreq__topic_t **out, char *errstr, size_t errstr_size);
/* Partition counts. A reply names a partition of its topic; the worker
 * checks it against the count cached here (read with the topic's warming
 * metadata request). A count that would refuse the reply (missing topic,
 * partition beyond it) or that is unknown is read again at most every
 * KREQ__TOPIC_RECHECK_NS, so a topic created or grown later is noticed and
 * a stream of bad requests costs at most one metadata request a second
 * per topic. */
#define KREQ__TOPIC_RECHECK_NS 1000000000LL
/* Records n (from metadata: > 0 partitions, 0 missing, < 0 no answer). */
void kreq__topics_set_partitions(kreq__topic_t *e, int n, int64_t now_ns);
/* Whether e's count is unknown or refuses partition, and was read long
 * enough ago to be read again. */
bool kreq__topics_recheck_due(const kreq__topic_t *e, int32_t partition, int64_t now_ns);
/* Marks name's count unknown (a produce to it failed: read it again). */
void kreq__topics_forget(kreq__topics_t *t, const char *name);
/* Releases every handle and the table's memory; the table is then empty
 * and usable again (its bound stays). */
void kreq__topics_clear(kreq__topics_t *t);
#endif
