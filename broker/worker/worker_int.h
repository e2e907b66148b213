/*
 * worker_int.h — the worker's internals, shared by the broker/ sources (never
 * installed).
 *
 * Ownership of a request (struct kreq_request_s, the internal structure;
 * handlers never see a pointer to it, only a generation-checked handle of
 * the same C type, broker/worker/handles.h):
 *   - created by the loop thread for a request record that is to run;
 *   - from dispatch until the handler side lets go (its reply, or the pool
 *     finishing it unstarted) it belongs to the handler side (the loop only
 *     reads it: the cancelled flag, the admin listing under ip_lock);
 *   - the reply puts it on the completion list; from then on it belongs to
 *     the loop, which applies the result and frees it;
 *   - past its deadline plus worker.handler.grace.ms the loop may abandon
 *     it (slot CAS RUNNING -> ABANDONED): the loop answers status 2, stores
 *     that result, frees the in-flight place and the commit point ("retires"
 *     it), but the structure stays the handler's until its late reply
 *     (refused) sends it back through the completion list to be freed.
 * No reference count is needed: the slot's state says who owns it.
 * The dedup entry's `running` pointer is a loop-side borrowed pointer,
 * cleared when the partition state is dropped (rebalance, abort).
 *
 * Stale completions: every partition state has an incarnation number; a
 * request remembers the incarnation it was consumed under. After an abort
 * or a revoke the state is rebuilt under a new incarnation, and completions
 * of older ones are discarded (their records will be consumed again from
 * the committed offset, by this or another worker).
 */
#ifndef KREQ_BROKER_WORKER_INT_H
#define KREQ_BROKER_WORKER_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "broker/worker/dedup.h"
#include "broker/worker/faults.h"
#include "broker/worker/offsets.h"
#include "broker/worker/poison.h"
#include "broker/worker/metrics.h"
#include "broker/worker/topics.h"
#include "kreq/worker.h"
#include "common/topic_admin.h"
#include "proto/envelope.h"

typedef struct kreq__handler {
	char *method;
	kreq_handler_fn *fn;
	void *opaque;
	int flags;
} kreq__handler_t;

/* Where one reply goes (the request itself, or a duplicate that joined). */
typedef struct kreq__target {
	struct kreq__target *next;
	uint8_t corr[KREQ__CORR_ID_BYTES];
	char topic[KREQ__TOPIC_MAX + 1];
	int32_t partition;
	uint32_t attempt;
	int64_t deadline_ms;
	uint64_t seq;  /* offset slot of the record that asked */
	bool no_reply; /* its reply topic does not exist: nothing is sent */
} kreq__target_t;

typedef enum { KREQ__RQ_QUEUED, KREQ__RQ_RUNNING, KREQ__RQ_REPLIED } kreq__rq_state_t;

struct kreq_request_s {
	kreq_worker_t *srv;
	kreq__opened_t op; /* the verified, decoded Request */
	const kreq__handler_t *h;
	int32_t partition;
	int64_t offset;
	uint64_t incarnation;
	kreq__target_t self;     /* reply target of this record */
	kreq__target_t *joiners; /* duplicates waiting for this result (loop) */
	uint32_t njoiners;       /* how many (each also counted in in_progress) */
	kreq__dd_entry_t *dd;    /* its RUNNING dedup entry (loop; valid in its incarnation) */
	uint8_t ddkey[KREQ__DEDUP_KEY_MAX];
	uint16_t ddkey_len;
	uint8_t digest[32];
	int64_t consumed_ns, started_ns;
	atomic_bool cancelled;
	atomic_int state; /* kreq__rq_state_t */
	/* the result, written by kreq_request_reply() */
	int32_t status;
	uint8_t *payload;
	size_t len;
	char *error;
	struct kreq_request_s *next;              /* pool queue / completion list */
	struct kreq_request_s *ip_prev, *ip_next; /* in-progress list (ip_lock) */
	/* handle (handles.h): slot index and generation, fixed at dispatch */
	uint32_t slot;
	uint64_t gen;
	kreq_request_t *handle;
	int64_t overdue_ms; /* deadline + worker.handler.grace.ms (wall clock) */
	size_t heap_idx;    /* in s->overdue (loop); SIZE_MAX when not in it */
	bool retired;       /* in-flight place and listing given up (loop) */
	bool zombie;        /* abandoned: freed when its late reply comes (loop) */
	uint32_t pz_slot;   /* its crash-journal slot + 1, 0 none (poison.c) */
	uint32_t pz_number; /* its recorded Attempt's number, 0 none (poison.c) */
};

typedef struct kreq__part {
	int32_t id;
	uint64_t incarnation;
	kreq__dedup_t dd;
	kreq__offsets_t offs;
	int64_t committed;   /* last committed offset, -1 unknown */
	kreq__pz_part_t *pz; /* recorded starts without a result (poison.h) */
} kreq__part_t;

/* Token bucket per signing key id (worker.rate.limit.per.key). */
typedef struct kreq__bucket {
	struct kreq__bucket *next;
	char key_id[KREQ_KEY_ID_MAX + 1];
	double tokens;
	int64_t last_ns;
} kreq__bucket_t;

struct kreq_worker_s {
	kreq_conf_t *conf;
	char *service, *req_topic, *res_topic, *group, *txn_id, *client_id;
	char **allow; /* reply-topic patterns */
	size_t nallow;
	kreq__handler_t *handlers;
	size_t nhandlers;
	kreq__limits_t lim;
	bool txn_mode;
	int64_t retention_ms, min_budget_ms, grace_ms, batch_ms, rate;
	int64_t max_deadline_ms, max_age_ms; /* the replay window (record.c outside_window) */
	uint64_t batch_max;
	size_t max_in_flight;
	size_t dd_max_bytes; /* worker.dedup.max.bytes */
	size_t dd_bytes;     /* loop thread: footprint of every partition's store */
	int64_t dd_warned_ns;
	size_t dd_key_max_bytes;       /* worker.dedup.key.max.bytes, 0: none */
	kreq__dd_tenants_t dd_tenants; /* loop thread: dedup bytes per key id */

	/* keyring: the loop uses kr; set_keyring leaves the next one in kr_next */
	pthread_mutex_t kr_lock;
	kreq_keyring_t *kr, *kr_next;
	atomic_bool kr_swap;

	int efd;               /* wakes the loop: Kafka queues, completions, stop */
	pthread_t loop_thread; /* set while kreq__loop_run runs */
	atomic_bool loop_running;
	atomic_bool stop;
	atomic_bool ready; /* kreq_worker_ready() */
	atomic_int phase;  /* 0 new, 1 running, 2 returned */

	/* Kafka (loop thread) */
	rd_kafka_t *consumer, *producer, *reader;
	rd_kafka_t *batch_producer; /* light mode: results, and replies under load */
	bool batching;              /* these completions' replies go to batch_producer */
	int64_t batch_linger_ms, batch_threshold;
	rd_kafka_queue_t *cq;
	kreq__part_t **parts; /* by partition id; NULL when not assigned */
	int32_t nparts;
	bool paused, rewind_needed, fatal;
	bool draining;         /* stopping: nothing new starts */
	bool draining_abandon; /* grace over: completions are discarded */
	int64_t light_commit_ns, housekeeping_ns;
	int64_t last_record_ns; /* last record consumed or completion applied */
	int64_t linger_ms;
	int64_t gather_ns;     /* worker.txn.gather.us */
	uint64_t prev_results; /* results of the last committed transaction */
	int64_t gap_ns;        /* worker.txn.gap.us */
	int64_t txn_end_ns;    /* the last commit or abort returned */
	bool gap_waited;       /* consume() held back for worker.txn.gap.us */
	int txn_call_ms;       /* worker.txn.call.timeout.ms: past it, fence (txn.c) */
	/* The transaction: begun ahead when the loop is idle (txn.c
	 * kreq__txn_prebegin), taken into use by the first record or write
	 * (kreq__txn_begin); batch clock, gap and commit count from its use. */
	bool txn_open;
	bool txn_used;
	int64_t txn_start_ns;
	uint64_t txn_results;
	int loop_err;
	char loop_errstr[512];
	uint64_t next_incarnation;
	kreq__bucket_t *buckets;

	/* loop thread: recycled allocations and the sealing buffer. A busy
	 * worker allocates and frees a request and two delivery-report records
	 * per call; glibc's per-thread cache holds only 7 blocks of a size, so
	 * a batch of hundreds went through the locked arena every time. */
	kreq_request_t *rq_free;
	size_t rq_nfree;
	struct kreq__dr *dr_free;
	size_t dr_nfree;
	uint8_t *seal_buf;          /* lim.envelope_max bytes: replies and results are
	                               sealed here and copied by librdkafka */
	kreq__topics_t topics;      /* output topics: producer handles (broker/worker/topics.h) */
	int64_t fenced_since_ms;    /* txn.c fenced_too_often(): window start */
	bool results_check_skipped; /* rebuild.c: "not checked" logged (mock cluster) */
	bool results_checked;       /* rebuild.c: a Kafka controller answered the check once */
	int fenced_count;
	int64_t producer_retry_ns; /* kafka.c: next attempt to re-create the producer */
	/* sockets the transactional producer closed (kafka.c on_txn_close, a
	 * broker thread), and their count when the open transaction began */
	atomic_uint_fast64_t txn_socket_closes;
	uint64_t txn_closes_at_begin;
	int64_t rewind_retry_ns; /* loop.c rewind_all: not before (Kafka unreachable) */
	/* a produce or seal failed since the transaction began: it is aborted,
	 * never committed (txn.c kreq__txn_commit, loop.c rewind_all) */
	bool txn_failed;
	bool dd_bound_due;            /* a stored result's offset became known: kreq__dedup_bound */
	kreq__faults_t faults;        /* records that made the worker rewind (faults.h) */
	int64_t reply_missing_log_ns; /* last "reply topic does not exist" log line */

	/* handler pool */
	pthread_t *threads;
	int nthreads;
	bool pool_started;
	pthread_mutex_t pool_lock;
	pthread_cond_t pool_cv;
	kreq_request_t *pool_head, *pool_tail;
	bool pool_stop;

	/* completions (any thread -> loop) */
	pthread_mutex_t done_lock;
	pthread_cond_t done_cv; /* outstanding reached 0 */
	kreq_request_t *done_head, *done_tail;
	size_t outstanding; /* dispatched, not yet replied (done_lock) */

	/* in progress, for the admin listing and in_flight (ip_lock) */
	pthread_mutex_t ip_lock;
	kreq_request_t *ip_head;
	atomic_size_t in_progress;

	kreq__worker_metrics_t m;

	/* handler deadlines (request.c, loop thread): the slots this worker
	 * took from the handle table, those free, and a min-heap of running
	 * requests by overdue_ms. At most 2 * max_in_flight slots: requests in
	 * flight plus as many abandoned ones whose handler has not let go. */
	int64_t handler_grace_ms; /* worker.handler.grace.ms */
	uint32_t *slot_ids;       /* [0, slot_nfree) free, the rest in use */
	size_t nslots, slot_nfree, slot_max;
	kreq_request_t **overdue;
	size_t noverdue, overdue_cap;
	int64_t stuck_warned_ns;
	struct kreq__poison *pz; /* poison.c; NULL when worker.poison.max.attempts is 0 */
	char *instance_id;       /* group.instance.id (member.c); NULL: dynamic member */
	bool member_fenced;      /* the group fenced the consumer: renew it (loop.c) */
	bool member_renewing;    /* closing the fenced consumer: rebalances ignored */
	int64_t member_since_ms; /* member.c: window of the fencings counted */
	int member_fenced_count;
	/* What a request holds beyond itself, given back when it is freed
	 * (kreq__request_free): its crash-journal slot, kreq__poison_forget
	 * while poison requests are on. A callback, so that request.c does not
	 * call up into poison.c, which frees requests. NULL: nothing held. */
	void (*request_forget)(kreq_worker_t *s, kreq_request_t *r);
};

/* Delivery-report opaque of an output in light mode. */
typedef struct kreq__dr {
	struct kreq__dr *next; /* free list */
	int32_t partition;
	uint64_t incarnation, seq;
	int64_t offset; /* of the request record whose output this is */
} kreq__dr_t;

/* How many freed requests / delivery records the loop keeps for reuse. */
#define KREQ__RECYCLE_MAX 4096

/* request.c */
/* Starts worker.handler.threads pool threads; on failure stops those
 * started, fails the loop (kreq__loop_fatal) and returns -1. */
int kreq__pool_start(kreq_worker_t *s);
void kreq__pool_stop(kreq_worker_t *s);
/* Completes every queued, not started request with status 9 (shutdown). */
void kreq__pool_drain(kreq_worker_t *s);
/* The same for the requests of partitions p with part[p] true (part has
 * s->nparts entries; NULL: all): an incremental revoke (loop.c). */
void kreq__pool_drain_partitions(kreq_worker_t *s, const bool *part);
void kreq__dispatch(kreq_worker_t *s, kreq_request_t *r);
kreq_request_t *kreq__completions_take(kreq_worker_t *s);
/* A zeroed request, recycled when possible (loop thread, or after it), with
 * a handle slot; NULL when out of memory or out of slots. */
kreq_request_t *kreq__request_new(kreq_worker_t *s);
void kreq__request_free(kreq_request_t *r);
/* Whether a new request can be dispatched now: fewer than
 * worker.max.in.flight in progress and a handle slot free (loop thread). */
bool kreq__request_room(kreq_worker_t *s);
/* Gives up r's in-flight place, listing entry and deadline tracking
 * (idempotent; kreq__request_free does it too). Loop thread. */
void kreq__request_retire(kreq_request_t *r);
/* The running request whose deadline + grace passed first, if it passed
 * by now_ms (wall clock), removed from tracking; else NULL. Loop thread. */
kreq_request_t *kreq__overdue_pop(kreq_worker_t *s, int64_t now_ms);
/* Milliseconds until the next request becomes overdue (INT64_MAX: none). */
int64_t kreq__overdue_next_ms(const kreq_worker_t *s, int64_t now_ms);
/* Abandons r (loop thread): true if the loop won it from the handler side
 * (then *started says whether its handler had started), false if the
 * handler replied first (its completion is on its way). */
bool kreq__request_abandon(kreq_request_t *r, bool *started);
/* Frees the deadline heap and gives the handle slots back (destroy). */
void kreq__handles_release(kreq_worker_t *s);
/* Frees the recycled requests and delivery records (kreq_worker_destroy). */
void kreq__recycled_free(kreq_worker_t *s);
void kreq__wake(kreq_worker_t *s);

/* loop.c */
int kreq__loop_run(kreq_worker_t *s);

/* kafka.c */
typedef void(kreq__rebalance_cb_t)(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                                   rd_kafka_topic_partition_list_t *parts, void *opaque);
int kreq__kafka_start(kreq_worker_t *s, kreq__rebalance_cb_t *rebalance_cb);
void kreq__kafka_close(kreq_worker_t *s);
/* Produces a copy of value (librdkafka copies it into its message, one
 * allocation); opaque (a kreq__dr_t or NULL, light mode) passes to the
 * delivery report, or is recycled on failure. batch: through
 * batch_producer when there is one (light mode), else the producer.
 * (rec_partition, rec_offset) is the request record the output belongs
 * to: named when it fails (faults.h). */
int kreq__kafka_produce(kreq_worker_t *s, const char *topic, bool batch, int32_t partition,
                        const void *key, size_t key_len, const uint8_t *value, size_t len,
                        kreq__dr_t *opaque, int32_t rec_partition, int64_t rec_offset);
/* The partition count of output topic (0: it does not exist; -1: Kafka did
 * not say), cached per topic (broker/worker/topics.h) and read again when it
 * would refuse partition and is old enough. */
int kreq__topic_partitions_cached(kreq_worker_t *s, const char *topic, int32_t partition);
/* A delivery record from the loop's free list (or malloc); NULL on ENOMEM. */
kreq__dr_t *kreq__dr_new(kreq_worker_t *s);
void kreq__dr_free(kreq_worker_t *s, kreq__dr_t *dr);
/* txn.c: the transaction steps (light mode: the offset commit). Takes the
 * open transaction into use (beginning one if none is open) before a
 * record is handled or an output written. */
int kreq__txn_begin(kreq_worker_t *s);
/* Begins a transaction ahead of use when none is open and nothing stands
 * in the way (no rewind pending, not stopping): rd_kafka_begin_transaction()
 * sends nothing to Kafka but costs a round trip to librdkafka's main
 * thread, which then stays off the request's path. */
void kreq__txn_prebegin(kreq_worker_t *s);
/* Commits the open transaction, or aborts it (and flags a rewind) when an
 * output of it failed (s->txn_failed). */
int kreq__txn_commit(kreq_worker_t *s);
/* Aborts the open transaction, if any (before a rewind). */
void kreq__txn_abort(kreq_worker_t *s, const char *why);
/* kafka.c, continued: the producer. */
/* Re-creates the producer after it was lost (txn.c's fencing rule);
 * KREQ_OK when there is one, KREQ_EKAFKA (logged, retried later) if not. */
int kreq__kafka_producer_restart(kreq_worker_t *s);
/* Replaces the producer (a new epoch: the fencing rule, txn.c): serves or
 * purges its delivery reports, destroys it and re-creates it at once
 * (kreq__kafka_producer_restart); s->producer is NULL if that failed. */
void kreq__kafka_producer_reset(kreq_worker_t *s);
/* An output of the record at (partition, offset) failed (kafka error kerr,
 * or a seal failure when kerr is 0): noted in s->faults, the transaction
 * marked failed and a rewind flagged. */
void kreq__output_failed(kreq_worker_t *s, int32_t partition, int64_t offset,
                         rd_kafka_resp_err_t kerr, const char *topic, const char *why);
/* dedupmem.c: the dedup memory. */
/* Makes room in the dedup stores (loop thread): each key id over
 * worker.dedup.key.max.bytes among its own results, then, while the
 * worker is over worker.dedup.max.bytes, in the key id holding the most
 * (results become ghosts first). pt is unused. */
void kreq__dedup_bound(kreq_worker_t *s, kreq__part_t *pt);
/* A delivery report: records the offset of a Result for its dedup entry
 * (what a retry reads back once the result left memory). Loop thread. */
void kreq__result_delivered(kreq_worker_t *s, const rd_kafka_message_t *m);
/* ghost.c: reads back the Result at offset of results partition p whose
 * record key is key (an entry that left memory); KREQ_OK and *out (a
 * verified Result, kreq__opened_clear it) or an error with why. Blocks
 * the loop thread for one fetch (at most KREQ__GHOST_READ_MS). */
int kreq__ghost_read(kreq_worker_t *s, int32_t p, int64_t offset, const uint8_t *key,
                     size_t key_len, kreq__opened_t *out, char *why, size_t why_size);
/* fatal.c: fails the loop with err and a message (kreq_worker_run()
 * returns them; s->fatal stops the loop), logged. */
void kreq__loop_fatal(kreq_worker_t *s, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* topicwait.c: how long the worker waits for Kafka to answer a question
 * about its topics: worker.start.timeout.ms while it starts;
 * worker.dedup.rebuild.timeout.ms once it serves (at an assignment, where
 * a Kafka broker restarting or fenced by its controller for a moment must
 * not stop a worker that was serving), in ms, the setting's name in
 * *name. */
int64_t kreq__topic_wait_ms(const kreq_worker_t *s, bool serving, const char **name);
/* One question's share of a wait that ends at until_ns (monotonic): what
 * is left, at least 100 ms and at most max_ms, so that a request lost with
 * its connection is asked again within the wait. */
int kreq__look_ms(int64_t until_ns, int max_ms);
/* Errors of a Kafka that is moving or busy for a moment: a partition's
 * leadership moving (a Kafka broker restarted, or fenced by its controller
 * and back), a coordinator loading, a request timing out or a connection
 * lost. Worth asking again within kreq__topic_wait_ms(). */
bool kreq__kafka_transient(rd_kafka_resp_err_t e);
/* topicwait.c: topic's partition count (0: missing) per the reader, asked again while
 * Kafka does not answer (and while it reads 0 if exists) up to
 * kreq__topic_wait_ms(serving); -1 (the loop failed, KREQ_EUNAVAILABLE) if
 * Kafka never answered. Loop thread, start-up and assignments. */
int kreq__topic_partitions_await(kreq_worker_t *s, const char *topic, bool exists, bool serving);
/* A topic just created: its partition count once the cluster metadata
 * shows it and each partition's leader answers for it, looked at again
 * within worker.start.timeout.ms in all; -1 (the loop failed, the cause
 * named) if it never did. Loop thread, start-up. */
int kreq__topic_await_ready(kreq_worker_t *s, const char *topic);

/* member.c: group membership (static instance id, rebalance protocol) */
/* The group consumer's group.instance.id per worker.static.membership and
 * worker.group.instance.id (default client.id); NULL when dynamic or out
 * of memory (*oom set). */
char *kreq__member_instance_id(const kreq_conf_t *c, bool *oom);
/* A fatal error of the group consumer (loop thread; also from its error
 * callback). FENCED_INSTANCE_ID: flags s->member_fenced (the loop renews
 * the consumer) unless it is the third within a minute: then another
 * live worker has this instance id (KREQ_ECONF). Else KREQ_EKAFKA. */
void kreq__member_fatal(kreq_worker_t *s);
/* kafka.c: closes the fenced group consumer and subscribes a new one. */
int kreq__kafka_consumer_renew(kreq_worker_t *s, kreq__rebalance_cb_t *rebalance_cb);

/* rebuild.c */
/* Loads parts' stored results from the results topic (after checking the
 * topic): KREQ_OK; KREQ_ECANCELED when kreq_worker_stop() interrupted it
 * (not fatal); else the loop failed (kreq__loop_fatal). Unless KREQ_OK the
 * caller must not serve parts: their dedup stores are incomplete. */
int kreq__rebuild(kreq_worker_t *s, kreq__part_t **parts, int n);
/* The results topic exists, is compacted, keeps results at least
 * worker.dedup.retention.ms and has nreq partitions: KREQ_OK, or the loop
 * failed with the reason (KREQ_ECONF; KREQ_EKAFKA if Kafka did not answer).
 * created: the worker has just created it, so a Kafka broker that does not
 * know it yet is waited for. Transient Kafka errors are asked again, up to
 * kreq__topic_wait_ms(serving). */
int kreq__results_topic_check(kreq_worker_t *s, int nreq, bool created, bool serving);
/* key_id is one of the comma-separated ids of list (worker.result.signers). */
bool kreq__signer_listed(const char *list, const char *key_id);
/* Whether a Result signed by key_id may be served from dedup: it is in
 * worker.result.signers (default: the keyring's signing key). */
bool kreq__result_signer_ok(const kreq_worker_t *s, const char *key_id);

#endif
