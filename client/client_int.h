/*
 * client_int.h — the client object, the per-call record, and what the
 * client's files offer one another (internal).
 *
 * The client is cut into files by job, each calling only the files listed
 * above it here (farm-studio look shows no circle in client/):
 *   call.c       call records: correlation ids, the blob, topic names
 *   options.c    what the user asks for: client conf, per-call options
 *   settle.c     settling: slots, the completion queue, finishing a call
 *   admin.c      the admin socket's commands (client/admin.h)
 *   transport.c  the librdkafka handles and their callbacks
 *   health.c     is anybody serving this service? (client/health.h)
 *   send.c       sealing and producing requests, coalescing
 *   reply.c      the reply topic, its consumer, delivering replies
 *   retry.c      every call's one timer: attempts, backoff, deadline
 *   submit.c     kreq_client_call() and cancel
 *   client.c     the service thread, new and destroy
 */
#ifndef KREQ_CLIENT_INT_H
#define KREQ_CLIENT_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "client/future_int.h"
#include "client/metrics.h"
#include "client/table.h"
#include "client/wheel.h"
#include "common/internal.h"
#include "kreq/client.h"
#include "proto/envelope.h"

/*
 * Per-call record, in the future's extra area, followed by its blob (one
 * allocation per call: future, record, method, key and payload).
 *
 * Why it is packed: a client holds one per pending call, and a million
 * pending calls must cost at most 160 bytes each besides their payload,
 * method and key (docs/PERFORMANCE.md, "Memory per pending call"). So the
 * record is 67 bytes and everything that can be derived is: the client is
 * found from the future's owner (embedded in the client), the method's
 * length from its NUL, the local deadline from the start time, the wheel
 * slot from the timer's neighbours; the completion queue is an array in
 * the client, not a link here. Fields are grouped by who writes them, so
 * that no two threads write the same byte: the immutable ones (set before
 * the call is published), `svc` (the service thread after submission) and
 * `flags` (atomic bit operations from any thread).
 */
typedef struct kreq__call {
	kreq__timer_node_t timer; /* the call's one timer: attempt timeout,
	                             backoff or deadline, whichever is next */
	uint8_t corr_id[16];
	int64_t deadline_wall_ms;   /* on the wire */
	int64_t start_ns;           /* monotonic, for the duration histogram */
	uint32_t deadline_after_ms; /* local expiry: start + this, at most 49.7 days */
	uint32_t payload_len : 29;  /* payload.max.bytes <= 256 MiB = 2^28 */
	uint32_t has_tp : 1;        /* the blob holds a traceparent */
	uint32_t notify : 1;        /* queue on the completion queue when settled */
	uint8_t idem_len;           /* 1..KREQ__IDEM_KEY_MAX (255) */
	uint8_t svc;                /* attempt (KREQ__SVC_ATTEMPT) and KREQ__SVC_BACKOFF */
	_Atomic uint8_t flags;      /* KREQ__CALL_HELD, KREQ__CALL_ACKED */
	uint8_t blob[];             /* method \0 | idempotency key |
	                               [traceparent \0] | payload */
} kreq__call_t;

#define KREQ__SVC_ATTEMPT 0x7fu /* retry.max.attempts <= 100 */
#define KREQ__SVC_BACKOFF 0x80u /* the timer is a backoff, else an attempt's wait */
#define KREQ__CALL_HELD   0x1u  /* in the held-request queue (set/cleared under out_mu) */
#define KREQ__CALL_ACKED  0x2u  /* first delivery report seen */
#define KREQ__TP_LEN      55u   /* a traceparent's length (kreq_call_opts_set_traceparent) */

/* The call's attempt number (any thread; the service thread changes it). */
static inline unsigned kreq__call_attempt(const kreq__call_t *call)
{
	return __atomic_load_n(&call->svc, __ATOMIC_RELAXED) & KREQ__SVC_ATTEMPT;
}

static inline const char *kreq__call_method(const kreq__call_t *call)
{
	return (const char *)call->blob;
}

static inline const uint8_t *kreq__call_idem(const kreq__call_t *call)
{
	return call->blob + strlen(kreq__call_method(call)) + 1;
}

/* Monotonic ms at which the call expires locally. */
static inline int64_t kreq__call_deadline_mono(const kreq__call_t *call)
{
	return call->start_ns / 1000000 + (int64_t)call->deadline_after_ms;
}

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

	/* request coalescing (send.c, "Coalescing"): under out_mu */
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

	/* completion queue (kreq_call_opts_set_notify): a ring of futures under
	 * done_mu, with room reserved by each notifying call when it is made
	 * (so queueing a completion cannot fail); done_fd is an eventfd,
	 * readable while the queue is not empty */
	pthread_mutex_t done_mu;
	kreq_future_t **done_ring;
	size_t done_cap, done_head, done_len, done_reserved;
	int done_fd;

	/* the owner of this client's futures: kreq_future_cancel() finds the
	 * client from it (submit.c, kreq__call_cancel) */
	kreq__future_owner_t fowner;

	struct kreq__health *health;   /* checks (service.check.ms) and warming */
	struct kreq__adminsock *admin; /* NULL unless admin.socket is set */
	int64_t slow_in_flight, slow_age_ms, slow_interval_ms, slow_entries;
	int64_t next_slow_check_ms, slow_quiet_until_ms; /* service thread only */

	kreq__client_metrics_t metrics;
};

/* ---- small helpers, any file ------------------------------------------ */

static inline int64_t kreq__mono_ms(void)
{
	return kreq__mono_ns() / 1000000;
}

static inline kreq__call_t *kreq__call_of(kreq_future_t *f)
{
	return kreq__future_extra(f);
}

static inline size_t kreq__call_tp_len(const kreq__call_t *call)
{
	return call->has_tp ? KREQ__TP_LEN : 0;
}

/* The traceparent (NUL-terminated) if the call has one. */
static inline const char *kreq__call_traceparent(const kreq__call_t *call)
{
	return (const char *)kreq__call_idem(call) + call->idem_len;
}

static inline const uint8_t *kreq__call_payload(const kreq__call_t *call)
{
	return (const uint8_t *)kreq__call_traceparent(call) +
	       (call->has_tp ? KREQ__TP_LEN + 1 : 0);
}

static inline void kreq__count(atomic_uint_fast64_t *a)
{
	atomic_fetch_add_explicit(a, 1, memory_order_relaxed);
}

/* Wakes the service thread (client.c). */
static inline void kreq__client_wake(kreq_client_t *c)
{
	uint64_t one = 1;
	ssize_t n = write(c->wake_fd, &one, sizeof(one));
	(void)n; /* a full eventfd counter is already a pending wake-up */
}

/* ---- call.c: call records ---------------------------------------------- */

/* Once per process, before the first call (fork safety of the id pool). */
void kreq__call_ids_init(void);

/* The offset of a call's correlation id from its future (the table's key
 * offset). */
size_t kreq__call_key_offset(void);

/* A new call record (future with one reference) for method, payload and
 * options (validated by the caller), not yet submitted; c provides the
 * default timeout and owns it. *err is KREQ_ENOMEM, or KREQ_ETIMEDOUT if its
 * deadline has already passed (then the future is returned all the same).
 * kreq_client_call() uses it; so does bench/bench_client_core.c. */
kreq_future_t *kreq__call_new(kreq_client_t *c, const char *method, const void *payload, size_t len,
                              const kreq_call_opts_t *o, int *err);

/* 1..255 printable ASCII characters whose service (up to the last '.') is
 * a possible service name: 1..200 of [A-Za-z0-9._-]. */
bool kreq__method_valid(const char *m);

/* Length of method's service: the method up to its last '.'. */
size_t kreq__service_len(const char *method);

/* "<prefix>.<service>.requests" for the first svc_len bytes of service. */
void kreq__service_topic(const kreq_client_t *c, const char *service, int svc_len, char *out,
                         size_t size);

/* The request topic of method's service. */
void kreq__request_topic(const kreq_client_t *c, const char *method, char *out, size_t size);

/* ---- options.c: configuration ------------------------------------------ */

/* Reads c->conf into c (limits, names, timeouts, thresholds) and checks
 * it; KREQ_ECONF with errstr naming the cause. */
int kreq__client_read_conf(kreq_client_t *c, char *errstr, size_t errstr_size);

/* ---- settle.c: settling ------------------------------------------------ */

/* Takes an in-flight slot, waiting up to backpressure.wait.ms:
 * KREQ_OK, KREQ_EBACKPRESSURE or KREQ_ECLOSED. */
int kreq__slot_admit(kreq_client_t *c);
void kreq__slot_release(kreq_client_t *c);

/* Reserves room in the completion queue for a notifying call's future
 * (grows the ring if needed); false if out of memory. */
bool kreq__completion_reserve(kreq_client_t *c);
void kreq__completion_unreserve(kreq_client_t *c);
/* Releases every queued completion (destroy). */
void kreq__completions_drop(kreq_client_t *c);

/* Settles a call that the caller has just removed from the table (and so
 * owns the table's reference, which this gives up). */
void kreq__settle(kreq_client_t *c, kreq_future_t *f, int err, int32_t status, void *payload,
                  size_t len, bool dedup, const char *msg, kreq__outcome_t outcome);

/* Removes and settles a call if it is still pending. */
bool kreq__settle_pending(kreq_client_t *c, const uint8_t id[16], int err, const char *msg,
                          kreq__outcome_t outcome);

/* Removes and settles every pending call with err and msg (unavailable
 * sweep, destroy). */
void kreq__settle_all(kreq_client_t *c, int err, const char *msg, kreq__outcome_t outcome);

/* Fails every pending call to service (method up to its last '.') with
 * KREQ_EUNAVAILABLE and msg; returns how many. Any thread (health.c). */
size_t kreq__client_fail_service(kreq_client_t *c, const char *service, const char *msg);

/* ---- transport.c: the librdkafka handles ------------------------------- */

/* A producer or the reply consumer with kreq's defaults, the user's kafka.
 * properties and this client's callbacks; NULL with errstr on error. */
rd_kafka_t *kreq__transport_new(kreq_client_t *c, rd_kafka_type_t type, char *errstr,
                                size_t errstr_size);

/* True once all Kafka brokers have been down for unavailable.after.ms. */
bool kreq__kafka_unavailable(kreq_client_t *c);

/* Looks up service's request topic on the producer (one metadata round
 * trip, bounded; common/topic_admin.h "Warming"). Health thread. */
void kreq__warm_service(kreq_client_t *c, const char *service);

/* ---- send.c: requests out ---------------------------------------------- */

/* Seals the call's current attempt and sends it, or holds it while the
 * service thread delivers replies ("Coalescing"). */
int kreq__send_request(kreq_client_t *c, kreq_future_t *f);

/* Service thread: hands the requests held while it delivered replies to
 * librdkafka in one burst. Requests settled meanwhile are dropped. */
void kreq__release_held(kreq_client_t *c);

/* Best effort: tells the workers a call was cancelled. */
void kreq__send_cancel(kreq_client_t *c, const kreq__call_t *call);

/* ---- reply.c: replies in ----------------------------------------------- */

/* Makes sure the reply topic and partition exist, then starts consuming
 * at its end, so every reply written after kreq_client_new() returns is
 * seen. Gives up at until_ms (monotonic). */
int kreq__reply_start(kreq_client_t *c, int64_t until_ms, char *errstr, size_t errstr_size);

/* Service thread: delivers the replies that have arrived. */
void kreq__drain_replies(kreq_client_t *c);

/* ---- retry.c: the call's timer ----------------------------------------- */

/* Arms the call's timer; the caller hands its reference on f to the wheel. */
void kreq__arm(kreq_client_t *c, kreq__call_t *call, int64_t when);

/* Service thread: fires the timers that are due. */
void kreq__expire_timers(kreq_client_t *c);

/* ---- submit.c: calls --------------------------------------------------- */

/* The futures' cancel hook (kreq_future_cancel()). */
int kreq__call_cancel(kreq_future_t *f);

#endif
