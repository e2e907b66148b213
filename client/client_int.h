/* client_int.h — the client object and per-call record (internal). */
#ifndef KREQ_CLIENT_INT_H
#define KREQ_CLIENT_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include <librdkafka/rdkafka.h>

#include "client/future_int.h"
#include "client/metrics.h"
#include "client/table.h"
#include "client/wheel.h"
#include "kreq/client.h"
#include "proto/envelope.h"

enum { KREQ__PHASE_WAIT = 0, KREQ__PHASE_BACKOFF = 1 };

/* Per-call record, in the future's extra area, followed by its blob (one
 * allocation per call). */
typedef struct kreq__call {
	kreq_client_t *client;
	kreq__timer_node_t timer; /* the call's one timer: attempt timeout,
	                             backoff or deadline, whichever is next */
	uint8_t corr_id[16];
	int64_t deadline_wall_ms;     /* on the wire */
	int64_t deadline_mono_ms;     /* local expiry */
	int64_t start_ns;             /* monotonic, for the duration histogram */
	uint32_t attempt;             /* service thread only after submission */
	uint8_t phase;                /* service thread only after submission */
	bool acked;                   /* service thread only */
	bool notify;                  /* queue on the completion queue when settled */
	bool held;                    /* in the held-request queue (under out_mu) */
	struct kreq__call *next_done; /* completion queue link */
	uint16_t method_len, idem_len, tp_len;
	uint32_t payload_len;
	uint8_t *blob; /* method \0 | idempotency key | traceparent \0 | payload,
	                  right after this record (same allocation) */
} kreq__call_t;

/* A sealed request held back while the service thread delivers replies. */
typedef struct kreq__held {
	kreq_future_t *f; /* the reference librdkafka would hold */
	uint8_t *buf;     /* the sealed envelope */
	size_t len;
} kreq__held_t;

struct kreq_call_opts_s {
	int64_t timeout_ms;  /* 0: request.timeout.ms */
	int64_t deadline_ms; /* 0: from the timeout */
	uint8_t idem[KREQ__IDEM_KEY_MAX];
	size_t idem_len;
	char traceparent[56];
	bool notify;
};

struct kreq_client_s {
	kreq_conf_t *conf;
	kreq_keyring_t *kr;
	kreq__limits_t lim;
	char client_id[256];
	char topic_prefix[101];
	char reply_topic[KREQ__TOPIC_MAX + 1];
	int32_t reply_partition;
	int64_t request_timeout_ms, attempt_timeout_ms, backoff_ms, backoff_max_ms;
	int64_t max_attempts, max_in_flight, bp_wait_ms, unavailable_after_ms;

	rd_kafka_t *producer, *consumer;
	rd_kafka_topic_t *reply_rkt;
	rd_kafka_queue_t *reply_q;
	int wake_fd; /* eventfd: librdkafka queues and callers wake the service thread */

	kreq__table_t *table;
	kreq__wheel_t *wheel;

	/* request coalescing (client.c, "Coalescing"): under out_mu */
	pthread_mutex_t out_mu;
	bool draining;      /* the service thread is delivering a batch of replies */
	kreq__held_t *held; /* requests made meanwhile, in call order */
	size_t held_len, held_cap;
	kreq__held_t *held_spare; /* service thread: swapped with held on release */
	size_t spare_cap;
	pthread_t thread;
	atomic_bool stopping;                 /* service thread exit */
	atomic_bool closing;                  /* destroy begun: new calls fail with KREQ_ECLOSED */
	atomic_int_fast64_t sleep_until_ms;   /* service thread's planned wake-up */
	atomic_int_fast64_t down_since_ms;    /* monotonic ms all brokers went down; 0 = up */
	atomic_int_fast64_t suspect_since_ms; /* first transport error not yet checked; 0 = none */

	atomic_size_t in_flight;
	atomic_int bp_waiters;
	pthread_mutex_t bp_mu;
	pthread_cond_t bp_cv;

	/* completion queue (kreq_call_opts_set_notify): FIFO under done_mu;
	 * done_fd is an eventfd, readable while the queue is not empty */
	pthread_mutex_t done_mu;
	struct kreq__call *done_head, *done_tail;
	int done_fd;

	struct kreq__health *health; /* checks (service.check.ms) and warming */
	struct kreq__admin *admin;   /* NULL unless admin.socket is set */
	int64_t slow_in_flight, slow_age_ms, slow_interval_ms, slow_entries;
	int64_t next_slow_check_ms, slow_quiet_until_ms; /* service thread only */

	kreq__client_metrics_t metrics;
};

/* Looks up service's request topic on the producer (one metadata round
 * trip, bounded; common/kadmin.h "Warming"). Health thread. */
void kreq__warm_service(kreq_client_t *c, const char *service);

/* Fails every pending call to service (method up to its last '.') with
 * KREQ_EUNAVAILABLE and msg; returns how many. Any thread (health.c). */
size_t kreq__client_fail_service(kreq_client_t *c, const char *service, const char *msg);

#endif
