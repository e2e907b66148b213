/*
 * poison.h — poison requests: counting handler starts in Kafka, taking a
 * request out of service after worker.poison.max.attempts of them without
 * a result (status 10, a DeadLetter). Loop thread only. The design and its
 * exactness bound are in poison.c and docs/broker-design.md.
 */
#ifndef KREQ_BROKER_POISON_H
#define KREQ_BROKER_POISON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "broker/worker/dedup.h"
#include "proto/envelope.h"

typedef struct kreq_worker_s kreq_worker_t;
typedef struct kreq_request_s kreq_request_t;
typedef struct kreq__part kreq__part_t;

/* One counted start of a request: the newest Attempt record of one worker
 * instance that is gone (crashed, or lost the partition) without a result. */
typedef struct kreq__pz_attempt {
	uint64_t instance;
	uint32_t number;
	int32_t request_partition;
	int64_t started_at_ms, ended_at_ms, request_offset;
	char worker[KREQ__WORKER_ID_MAX + 1];
} kreq__pz_attempt_t;

/* A request key (kreq__dedup_key) with recorded starts and no result. */
typedef struct kreq__pz_entry {
	struct kreq__pz_entry *next;
	uint8_t key[KREQ__DEDUP_KEY_MAX];
	uint16_t klen;
	uint32_t max_number; /* highest Attempt.number seen, this instance's too */
	uint32_t n;          /* counted starts: distinct other instances (<= 32) */
	kreq__pz_attempt_t att[KREQ__ATTEMPTS_MAX];
} kreq__pz_entry_t;

/* A partition's entries (few: only keys whose handler did not finish). */
typedef struct kreq__pz_part {
	kreq__pz_entry_t *head;
	size_t count;
	int64_t end; /* requests end offset at assignment: below, maybe started before */
} kreq__pz_part_t;

/* Reads worker.poison.* and names the topics (read_conf): KREQ_OK or an
 * error with errstr. s->pz stays NULL when counting is off (0). */
int kreq__poison_conf(kreq_worker_t *s, const char *prefix, char *errstr, size_t errstr_size);
void kreq__poison_destroy(kreq_worker_t *s);
/* Creates or checks the attempts and dead-letter topics (nreq partitions)
 * and the attempts producer: 0, or -1 with the loop failed. */
int kreq__poison_start(kreq_worker_t *s, int nreq);
void kreq__poison_close(kreq_worker_t *s);

/* Loads the starts recorded for parts' uncommitted requests (after the
 * dedup rebuild): KREQ_OK, KREQ_ECANCELED (stop) or the loop failed. */
int kreq__poison_load(kreq_worker_t *s, kreq__part_t **parts, int n);
void kreq__poison_part_free(kreq__part_t *pt);
/* Counted starts of key on pt (0 when none). */
uint32_t kreq__poison_count(const kreq__part_t *pt, const uint8_t *key, size_t klen);

/* Acked mode: produces r's Attempt record and keeps r until
 * kreq__poison_flush(); false when counting is off (dispatch r now). */
bool kreq__poison_defer(kreq_worker_t *s, kreq_request_t *r);
/* Whether a suspect (a request started before without a result) waits to
 * run alone or runs: then no new record is consumed. */
bool kreq__poison_blocked(kreq_worker_t *s);
/* Journal mode: r's handler no longer runs (kreq__request_free). */
void kreq__poison_forget(kreq_worker_t *s, kreq_request_t *r);
/* Requests deferred and not yet flushed. */
size_t kreq__poison_pending(const kreq_worker_t *s);
/* Waits for the deferred requests' Attempt records to be acknowledged
 * (one round trip for all of them) and returns them to be dispatched; if
 * one failed, or the state they belong to was dropped, they are discarded
 * (their records are redone from the committed offsets). */
kreq_request_t *kreq__poison_flush(kreq_worker_t *s);
/* Discards the suspect waiting to run alone, if any (revoke). */
void kreq__poison_unhold(kreq_worker_t *s);
/* The same, only when the held suspect is on a partition p with gone[p]
 * (a cooperative revoke: the others are served on). */
void kreq__poison_unhold_in(kreq_worker_t *s, const bool *gone);
/* r's start was recorded but its handler never ran (drained at a revoke or
 * a stop: the next owner runs it): an ended Attempt supersedes the start,
 * so nobody counts it as a crash. kreq__poison_settle_unstarted() waits for
 * them (before the partitions are handed over). Loop thread. */
void kreq__poison_unstarted(kreq_worker_t *s, const kreq_request_t *r);
void kreq__poison_settle_unstarted(kreq_worker_t *s);
/* Discards every deferred request without running it (closing; the caller
 * rewinds, or drops their partitions, so their records are redone). */
void kreq__poison_discard(kreq_worker_t *s);

/* Seals the DeadLetter of request r (record m) taken out of service with
 * reason, into *out (malloc'd). KREQ_OK or an error with why. */
int kreq__poison_dead_letter(kreq_worker_t *s, const kreq__part_t *pt, const kreq_request_t *r,
                             const rd_kafka_message_t *m, const char *reason, uint8_t **out,
                             size_t *out_len, char *why, size_t why_size);
/* The dead-letter topic's name and the partition for a request partition. */
const char *kreq__poison_dead_topic(const kreq_worker_t *s);
int32_t kreq__poison_dead_partition(const kreq_worker_t *s, int32_t partition);
uint32_t kreq__poison_max(const kreq_worker_t *s);

#endif
