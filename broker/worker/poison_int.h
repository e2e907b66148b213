/*
 * poison_int.h — the state of poison-request handling shared by its two
 * files: poison.c (configuration, the Attempts producer, recording starts,
 * dead letters) and pzload.c (the per-partition table of counted starts
 * and loading it at assignment). Loop thread; no one else includes this.
 */
#ifndef KREQ_BROKER_POISON_INT_H
#define KREQ_BROKER_POISON_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "broker/worker/pjournal.h"
#include "broker/worker/poison.h"

struct kreq__poison {
	char *att_topic, *dead_topic;
	uint32_t max_attempts;
	int64_t dead_retention_ms;
	uint64_t instance;
	rd_kafka_t *producer;        /* Attempts: idempotent, acks=all */
	int32_t ndead;               /* partitions of the dead-letter topic */
	kreq_request_t *head, *tail; /* deferred, Attempt produced */
	size_t npending;
	kreq_request_t *solo; /* a suspect waiting to run alone (no Attempt yet) */
	bool solo_running;    /* it runs: nothing new starts until it finished */
	int64_t solo_max_ns;  /* worker.poison.solo.max.ms; 0: no limit */
	int64_t solo_since_ns;
	int32_t solo_partition;
	int64_t solo_offset;
	char *journal_path; /* worker.poison.journal, NULL: acked mode only */
	kreq__pjournal_t *journal;
	size_t failed; /* delivery failures of the pending batch */
	char fail_why[256];
};

/* pzload.c: the entry of key in table t (NULL: t or the entry missing). */
kreq__pz_entry_t *kreq__pz_find(const kreq__pz_part_t *t, const uint8_t *key, size_t klen);

#endif
