/*
 * metrics.h — worker metrics: relaxed atomic counters and histograms
 * (common/prom.h, shared with the client), rendered as Prometheus text.
 */
#ifndef KREQ_BROKER_METRICS_H
#define KREQ_BROKER_METRICS_H

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#include "common/prom.h"

/* How a request record was answered. */
#define KREQ__HANDLED(X)                                                                           \
	X(OK, "ok")                         /* handler status 0 */                                 \
	X(ERROR_STATUS, "error_status")     /* handler status != 0 */                              \
	X(DEDUP, "dedup")                   /* stored result served again */                       \
	X(JOINED, "joined")                 /* duplicate joined a running request */               \
	X(CONFLICT, "conflict")             /* key reused with another request */                  \
	X(DEADLINE, "deadline")             /* budget too small to start */                        \
	X(CANCELLED, "cancelled")           /* cancelled before it started */                      \
	X(UNKNOWN_METHOD, "unknown_method") /* no handler */                                       \
	X(DENIED, "denied")                 /* key not allowed this method */                      \
	X(RATE_LIMITED, "rate_limited")     /* key over worker.rate.limit.per.key */               \
	X(SHUTTING_DOWN, "shutting_down")   /* not started before shutdown */                      \
	X(OVERDUE, "overdue")               /* handler not done by deadline + grace: status 2 */   \
	X(TOO_LARGE, "too_large")           /* its reply or result was too large for Kafka */      \
	X(POISON, "poison") /* started worker.poison.max.attempts times: status 10 */

/* Why a record was dropped without running anything. */
#define KREQ__REJECTS(X)                                                                           \
	X(MALFORMED, "malformed")                                                                  \
	X(OVERSIZE, "oversize")                                                                    \
	X(VERSION, "version")                                                                      \
	X(UNKNOWN_KEY, "unknown_key")                                                              \
	X(BAD_SIGNATURE, "bad_signature")                                                          \
	X(EXPIRED, "expired")                                                                      \
	X(FUTURE, "future")                                                                        \
	X(KIND, "kind")               /* a reply or result on the request topic */                 \
	X(REPLY_TOPIC, "reply_topic") /* reply topic not on worker.reply.topic.allow */            \
	X(OTHER, "other")                                                                          \
	X(PARTITION, "partition") /* not on the partition its idempotency key maps to */           \
	X(SERVICE, "service")     /* signed for another service */                                 \
	X(DEADLINE_TOO_FAR, "deadline_too_far") /* beyond worker.max.deadline.ms */                \
	X(TOO_OLD, "too_old")                   /* issued before worker.max.request.age.ms */      \
	X(DUPLICATE, "duplicate")               /* replay of a running request's correlation id */ \
	X(JOIN_LIMIT, "join_limit") /* replay past KREQ__JOINERS_MAX or worker.max.in.flight */    \
	X(REPLY_PARTITION, "reply_partition") /* beyond the reply topic's partitions */            \
	X(REWINDS, "rewinds") /* made the worker rewind KREQ__REWIND_MAX times (faults.h) */

typedef enum {
#define KREQ__H_ENUM(id, name) KREQ__H_##id,
	KREQ__HANDLED(KREQ__H_ENUM)
#undef KREQ__H_ENUM
	    KREQ__H_COUNT
} kreq__handled_t;

typedef enum {
#define KREQ__R_ENUM(id, name) KREQ__R_##id,
	KREQ__REJECTS(KREQ__R_ENUM)
#undef KREQ__R_ENUM
	    KREQ__R_COUNT
} kreq__reject_t;

typedef struct kreq__worker_metrics {
	atomic_uint_fast64_t handled[KREQ__H_COUNT];
	atomic_uint_fast64_t rejected[KREQ__R_COUNT];
	atomic_uint_fast64_t cancels;         /* Cancel messages seen */
	atomic_uint_fast64_t rebalances;      /* partition assignments */
	atomic_uint_fast64_t txn_commits;     /* committed transactions */
	atomic_uint_fast64_t txn_aborts;      /* aborted transactions (rewinds) */
	atomic_uint_fast64_t producer_resets; /* fatal errors: producer re-created */
	atomic_uint_fast64_t txn_fences;      /* indefinite txn outcomes: new epoch */
	atomic_uint_fast64_t results_loaded;  /* results read while rebuilding */
	atomic_uint_fast64_t produce_errors;
	atomic_uint_fast64_t replies_batched;     /* light: replies on the batching producer */
	atomic_uint_fast64_t dedup_evicted;       /* results dropped before their retention */
	atomic_uint_fast64_t dedup_bytes;         /* gauge: memory held by stored results */
	atomic_uint_fast64_t dedup_ghosted;       /* results left memory, still findable in Kafka */
	atomic_uint_fast64_t ghost_reads;         /* retries served by reading a result back */
	atomic_uint_fast64_t ghost_read_failures; /* ... that could not be read back */
	kreq__hist_t handler_time;                /* handler start to reply */
	kreq__hist_t queue_time;                  /* consumed to handler start */
	kreq__hist_t commit_time;                 /* send_offsets + commit_transaction */
	kreq__hist_t batch_size;                  /* results per transaction, observed x100 */
	atomic_uint_fast64_t late_replies; /* replies refused: request answered at its deadline */
	atomic_uint_fast64_t results_ignored;     /* rebuild: Results of other signers */
	atomic_uint_fast64_t rewinds;             /* rewinds to the committed offsets */
	atomic_uint_fast64_t reply_topic_missing; /* replies not sent: no such topic */
	atomic_uint_fast64_t attempts_written;    /* Attempt records produced (poison.c) */
	atomic_uint_fast64_t dead_letters;        /* DeadLetter records produced */
} kreq__worker_metrics_t;

/* Reject reason for an envelope error code. */
kreq__reject_t kreq__reject_of(int err);

void kreq__worker_metrics_render(const kreq__worker_metrics_t *m, uint64_t in_progress,
                                 const char *service, const char *worker, FILE *out);

#endif
