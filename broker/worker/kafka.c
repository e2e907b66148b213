/*
 * kafka.c — the worker's Kafka objects: topics, the transactional (or
 * idempotent) producer, the group consumer, the results reader, producing
 * and its delivery reports. All of it runs on the loop thread.
 *
 * The transaction steps and the fencing rule are txn.c's (its design note
 * says why a failed or doubtful transaction re-creates the producer); the
 * producer it fences is re-created here (kreq__kafka_producer_reset), and
 * the sockets the transactional producer closes are counted here
 * (on_txn_close) for the rule's second half.
 * If the new producer cannot be had (Kafka unreachable), the worker does
 * not stop: nothing is consumed until a producer is re-created (retried
 * every KREQ__RESTART_MS), then it rewinds. The rewind itself (drop
 * partition state, rebuild dedup, seek) is the loop's (loop.c), flagged
 * here by s->rewind_needed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker/worker/worker_int.h"
#include "common/conf.h"
#include "common/hoptrace.h"
#include "common/internal.h"
#include "common/topic_admin.h"
#include "common/replication.h"

#define KREQ__WARM_TIMEOUT_MS 500  /* per producer, once per reply topic */
#define KREQ__DRAIN_MS        2000 /* reports awaited before a producer is replaced */
#define KREQ__RESTART_MS      1000 /* between attempts to re-create the producer */

#define KREQ__KV(name, value, why) name, value,
static const char *const producer_defaults[] = {KREQ__KAFKA_WORKER_PRODUCER_DEFAULTS(KREQ__KV)
                                                    NULL};
static const char *const consumer_defaults[] = {KREQ__KAFKA_WORKER_CONSUMER_DEFAULTS(KREQ__KV)
                                                    NULL};
#undef KREQ__KV

static int set_kv(rd_kafka_conf_t *rc, const char *k, const char *v, char *why, size_t n)
{
	return rd_kafka_conf_set(rc, k, v, why, n) == RD_KAFKA_CONF_OK ? KREQ_OK : KREQ_ECONF;
}

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	kreq_worker_t *s = rd_kafka_opaque(rk);
	kreq__log(s->conf, level, "kafka", "%s: %s", fac, buf);
}

/* The transactional producer's sockets close through here (a Kafka broker
 * thread): counted, for the fencing rule's second half (above). */
static int on_txn_close(int fd, void *opaque)
{
	kreq_worker_t *s = opaque;
	atomic_fetch_add_explicit(&s->txn_socket_closes, 1, memory_order_relaxed);
	return close(fd);
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	kreq_worker_t *s = opaque;
	kreq__log(s->conf, 4, "kafka", "%s: %s", rd_kafka_err2name(err), reason);
	if (err == RD_KAFKA_RESP_ERR__FATAL && rk == s->consumer && !s->fatal)
		kreq__member_fatal(s); /* fenced by another instance, or worse: stop */
}

/* A transactional output's delivery-report opaque: no allocation, the
 * request record it belongs to packed into the pointer's bits (offset + 1
 * above 20 bits of partition; NULL when unknown). A failure names its
 * record (faults.h); a success of a Result gives its offset to the dedup
 * entry, which a retry reads back once the result left memory (ghost.c). */
#define KREQ__TXN_PART_BITS 20

static void *txn_opaque(int32_t partition, int64_t offset)
{
	if (partition < 0 || partition >= (1 << KREQ__TXN_PART_BITS) || offset < 0 ||
	    offset >= (INT64_C(1) << (63 - KREQ__TXN_PART_BITS)))
		return NULL;
	return (void *)(uintptr_t)(((uint64_t)(offset + 1) << KREQ__TXN_PART_BITS) |
	                           (uint64_t)partition);
}

static void txn_origin(const void *opaque, int32_t *partition, int64_t *offset)
{
	uint64_t v = (uint64_t)(uintptr_t)opaque;
	*partition = v ? (int32_t)(v & ((1u << KREQ__TXN_PART_BITS) - 1)) : -1;
	*offset = v ? (int64_t)(v >> KREQ__TXN_PART_BITS) - 1 : -1;
}

/* Delivery report. Light mode: the output is secured (its offset slot may
 * pass; the opaque is a kreq__dr_t) or failed. Both modes: a delivered
 * Result's offset is recorded. A failure names the request record it belongs to (faults.h),
 * fails the open transaction and rewinds. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	(void)rk;
	kreq_worker_t *s = opaque;
	if (s->txn_mode) /* light: mostly the previous call's result (1 ms linger) */
		kreq__hop(W_DELIVERED);
	kreq__dr_t *dr = s->txn_mode ? NULL : m->_private;
	int32_t partition = -1;
	int64_t offset = -1;
	if (s->txn_mode)
		txn_origin(m->_private, &partition, &offset);
	else if (dr)
		partition = dr->partition, offset = dr->offset;
	bool current = !dr || (dr->partition < s->nparts && s->parts[dr->partition] &&
	                       s->parts[dr->partition]->incarnation == dr->incarnation);
	if (m->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE ||
	    m->err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT) {
		/* purged by an abort (its transaction is gone already), or by
		 * closing: the fault, if any, was noted for what failed first */
	} else if (m->err) {
		kreq__output_failed(s, partition, offset, m->err, rd_kafka_topic_name(m->rkt),
		                    rd_kafka_err2str(m->err));
	} else if (current) {
		kreq__result_delivered(s, m); /* a Result's offset, for read-back */
	}
	if (!m->err && dr && current) {
		kreq__off_slot_t *sl = kreq__offsets_slot(&s->parts[dr->partition]->offs, dr->seq);
		if (sl && sl->pending)
			sl->pending--;
	}
	kreq__dr_free(s, dr);
}

/* A failure of Kafka rather than of the record (unreachable, timed out,
 * leadership moving, fenced): it rewinds, but does not count against the
 * record (faults.h), or a Kafka outage would make valid requests dropped. */
static bool transient(rd_kafka_resp_err_t kerr)
{
	switch (kerr) {
	case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
	case RD_KAFKA_RESP_ERR__TIMED_OUT:
	case RD_KAFKA_RESP_ERR__TRANSPORT:
	case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
	case RD_KAFKA_RESP_ERR__FENCED:
	case RD_KAFKA_RESP_ERR__STATE:
	case RD_KAFKA_RESP_ERR__DESTROY:
	case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
	case RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION:
	case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS:
	case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND:
	case RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION:
	case RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE:
	case RD_KAFKA_RESP_ERR_PRODUCER_FENCED:
	case RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH:
	case RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS:
	case RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE:
	case RD_KAFKA_RESP_ERR_NOT_COORDINATOR:
		return true;
	default:
		return false;
	}
}

static kreq__fault_kind_t fault_kind(const kreq_worker_t *s, rd_kafka_resp_err_t kerr,
                                     const char *topic)
{
	switch (kerr) {
	case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
	case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
	case RD_KAFKA_RESP_ERR_NO_ERROR: /* sealing: over envelope.max.bytes */
		return KREQ__FAULT_TOO_LARGE;
	case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
	case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
	case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
		return topic && strcmp(topic, s->res_topic) ? KREQ__FAULT_REPLY_TO
		                                            : KREQ__FAULT_OTHER;
	default:
		return KREQ__FAULT_OTHER;
	}
}

void kreq__output_failed(kreq_worker_t *s, int32_t partition, int64_t offset,
                         rd_kafka_resp_err_t kerr, const char *topic, const char *why)
{
	atomic_fetch_add_explicit(&s->m.produce_errors, 1, memory_order_relaxed);
	kreq__fault_kind_t kind = fault_kind(s, kerr, topic);
	kreq__log(s->conf, 4, "worker",
	          "output to %s for record %s [%d] offset %lld failed: %s; %s", topic ? topic : "?",
	          s->req_topic, (int)partition, (long long)offset, why,
	          s->txn_mode ? "aborting the transaction" : "rewinding");
	if (!transient(kerr))
		kreq__faults_note(&s->faults, partition, offset, kind, why);
	if (kind == KREQ__FAULT_REPLY_TO && topic)
		kreq__topics_forget(&s->topics, topic); /* checked again when redone */
	s->txn_failed = s->txn_mode && s->txn_used;
	s->rewind_needed = true; /* the open transaction cannot commit this */
}

kreq__dr_t *kreq__dr_new(kreq_worker_t *s)
{
	kreq__dr_t *dr = s->dr_free;
	if (!dr)
		return malloc(sizeof(*dr));
	s->dr_free = dr->next;
	s->dr_nfree--;
	return dr;
}

void kreq__dr_free(kreq_worker_t *s, kreq__dr_t *dr)
{
	if (!dr)
		return;
	if (s->dr_nfree >= KREQ__RECYCLE_MAX) {
		free(dr);
		return;
	}
	dr->next = s->dr_free;
	s->dr_free = dr;
	s->dr_nfree++;
}

/* The fencing rule's second half (above) sees a request resent only
 * through the connection librdkafka closes first: with socket.max.fails=0
 * a timed-out request is resent on the same connection, unseen. */
static int check_txn_conf(rd_kafka_conf_t *rc, char *why, size_t n)
{
	char v[32];
	size_t vn = sizeof(v);
	if (rd_kafka_conf_get(rc, "socket.max.fails", v, &vn) == RD_KAFKA_CONF_OK && atoi(v) == 0) {
		snprintf(why, n,
		         "kafka.socket.max.fails=0 is refused in worker.mode=transactional: a "
		         "timed-out request would be resent on its connection without closing it, "
		         "and the worker could not fence the producer against its late arrival");
		return KREQ_ECONF;
	}
	return KREQ_OK;
}

static rd_kafka_t *make_handle(kreq_worker_t *s, rd_kafka_type_t type, const char *group, bool txn,
                               int64_t linger_ms, kreq__rebalance_cb_t *rebalance_cb)
{
	rd_kafka_conf_t *rc = rd_kafka_conf_new();
	char why[512] = "";
	bool producer = type == RD_KAFKA_PRODUCER;
	int err = KREQ_OK;
	for (const char *const *kv = producer ? producer_defaults : consumer_defaults; !err && *kv;
	     kv += 2)
		err = set_kv(rc, kv[0], kv[1], why, sizeof(why));
	char mmax[24]; /* room for payload.max.bytes plus overhead (proto/envelope.h) */
	snprintf(mmax, sizeof(mmax), "%lld", (long long)kreq__limits_message_max(s->conf));
	if (!err && producer)
		err = set_kv(rc, "message.max.bytes", mmax, why, sizeof(why));
	if (!err && group)
		err = set_kv(rc, "group.id", group, why, sizeof(why));
	if (!err && producer && txn)
		err = set_kv(rc, "transactional.id", s->txn_id, why, sizeof(why));
	/* light mode is at-least-once: a reply or result duplicated by a retry
	 * is harmless (the client drops it, compaction keeps one), and
	 * librdkafka 2.0's idempotent producer busy-polls under load */
	if (!err && producer && !txn)
		err = set_kv(rc, "enable.idempotence", "false", why, sizeof(why));
	if (!err && !producer && !strcmp(group, s->group))
		err = set_kv(rc, "client.id", s->client_id, why, sizeof(why));
	if (!err && !producer && !strcmp(group, s->group) && s->instance_id) /* member.c */
		err = set_kv(rc, "group.instance.id", s->instance_id, why, sizeof(why));
	if (!err && !producer && strcmp(group, s->group)) /* the results reader */
		err = set_kv(rc, "enable.partition.eof", "true", why, sizeof(why));
	if (!err)
		err = kreq__conf_kafka_apply(s->conf, rc, why, sizeof(why));
	if (!err && producer && txn)
		err = check_txn_conf(rc, why, sizeof(why));
	char linger[24];
	snprintf(linger, sizeof(linger), "%lld", (long long)linger_ms);
	if (!err && producer && linger_ms >= 0) /* the batching producer's own */
		err = set_kv(rc, "linger.ms", linger, why, sizeof(why));
	if (err) {
		rd_kafka_conf_destroy(rc);
		kreq__loop_fatal(s, KREQ_ECONF, "Kafka configuration: %s", why);
		return NULL;
	}
	rd_kafka_conf_set_opaque(rc, s);
	rd_kafka_conf_set_log_cb(rc, on_log);
	rd_kafka_conf_set_error_cb(rc, on_error);
	/* transactional too: a failed output names its record, a delivered
	 * Result records its offset (kreq__result_delivered) */
	if (producer)
		rd_kafka_conf_set_dr_msg_cb(rc, on_delivery);
	if (producer && txn)
		rd_kafka_conf_set_closesocket_cb(rc, on_txn_close);
	if (rebalance_cb)
		rd_kafka_conf_set_rebalance_cb(rc, rebalance_cb);
	rd_kafka_t *rk = rd_kafka_new(type, rc, why, sizeof(why));
	if (!rk) {
		rd_kafka_conf_destroy(rc);
		kreq__loop_fatal(s, KREQ_EKAFKA, "cannot create Kafka %s: %s",
		                 producer ? "producer" : "consumer", why);
	}
	return rk;
}

/* ---- topics ------------------------------------------------------------- */

static int create_topic(kreq_worker_t *s, const char *topic, int partitions, bool results)
{
	char why[512] = "", ret[32], isr_buf[16];
	snprintf(ret, sizeof(ret), "%lld", (long long)s->retention_ms);
	const char *configs[7] = {NULL}; /* room for min.insync.replicas (common/replication.h) */
	if (results) {
		configs[0] = "cleanup.policy", configs[1] = "compact,delete";
		configs[2] = "retention.ms", configs[3] = ret;
	}
	int tmo = (int)kreq__conf_int(s->conf, KREQ__P_WORKER_START_TIMEOUT_MS), rf, isr;
	if (kreq__replication_plan(s->reader,
	                           (int)kreq__conf_int(s->conf, KREQ__P_WORKER_TOPIC_REPLICATION),
	                           (int)kreq__conf_int(s->conf, KREQ__P_WORKER_TOPIC_MIN_ISR), tmo,
	                           &rf, &isr, configs, isr_buf, sizeof(isr_buf))) {
		kreq__loop_fatal(s, KREQ_EUNAVAILABLE,
		                 "creating topic %s: Kafka did not answer (cluster metadata)",
		                 topic);
		return -1;
	}
	rd_kafka_resp_err_t kerr =
	    kreq__topic_create(s->producer, topic, partitions, rf, configs, tmo, why, sizeof(why));
	if (kerr) {
		kreq__loop_fatal(
		    s, kerr == RD_KAFKA_RESP_ERR__INVALID_ARG ? KREQ_ECONF : KREQ_EKAFKA,
		    "creating topic %s: %s", topic, *why ? why : rd_kafka_err2str(kerr));
		return -1;
	}
	kreq__log(s->conf, 6, "worker",
	          "created topic %s: %d partitions, replication factor %d, "
	          "min.insync.replicas %d (-1: the Kafka broker's default)",
	          topic, partitions, rf, isr);
	return 0;
}

/* Warns about each of the worker's topics that has fewer replicas than
 * configured (common/replication.h): not an error, the operator may have
 * chosen it, but a single Kafka broker failure would then stop the service
 * or lose results. */
static void replication_check(kreq_worker_t *s)
{
	int tmo = (int)kreq__conf_int(s->conf, KREQ__P_WORKER_START_TIMEOUT_MS);
	int rf_conf = (int)kreq__conf_int(s->conf, KREQ__P_WORKER_TOPIC_REPLICATION);
	int brokers = rf_conf == 0 ? kreq__kafka_brokers(s->reader, tmo) : 0;
	int want = kreq__replication_factor(rf_conf, brokers);
	const char *topics[] = {s->req_topic, s->res_topic};
	char why[512];
	for (int i = 0; i < 2 && (rf_conf != 0 || brokers > 0); i++)
		if (kreq__replication_short(s->reader, topics[i], want, tmo, why, sizeof(why)) == 1)
			kreq__log(s->conf, 4, "worker", "%s", why);
}

static int ensure_topics(kreq_worker_t *s)
{
	int nreq = kreq__topic_partitions_await(s, s->req_topic, false, false);
	if (nreq < 0)
		return -1;
	if (nreq == 0) {
		int p = (int)kreq__conf_int(s->conf, KREQ__P_WORKER_TOPIC_PARTITIONS);
		if (create_topic(s, s->req_topic, p, false) ||
		    (nreq = kreq__topic_await_ready(s, s->req_topic)) <= 0)
			return -1;
	}
	int nres = kreq__topic_partitions_await(s, s->res_topic, false, false);
	if (nres < 0)
		return -1;
	bool created = nres == 0;
	if (created) {
		if (create_topic(s, s->res_topic, nreq, true) ||
		    (nres = kreq__topic_await_ready(s, s->res_topic)) <= 0)
			return -1;
	}
	/* exists, compacted, long enough retention, co-partitioned (rebuild.c) */
	if (kreq__results_topic_check(s, nreq, created, false))
		return -1;
	replication_check(s);
	s->nparts = nreq;
	s->parts = calloc((size_t)nreq, sizeof(*s->parts));
	if (!s->parts) {
		kreq__loop_fatal(s, KREQ_ENOMEM, "out of memory");
		return -1;
	}
	return 0;
}

/* ---- producer ----------------------------------------------------------- */

/* A producer; linger_ms >= 0 overrides kafka.linger.ms. Its delivery
 * reports and errors do not wake the loop: every loop step serves them
 * (rd_kafka_poll) and the loop wakes at least every worker.txn.batch.ms in
 * light mode, where they matter (they make offsets committable), so a
 * wakeup per acknowledged ProduceRequest would only cost CPU. */
static rd_kafka_t *producer_new(kreq_worker_t *s, int64_t linger_ms)
{
	return make_handle(s, RD_KAFKA_PRODUCER, NULL, s->txn_mode, linger_ms, NULL);
}

/* Light mode has two producers. The first (kafka.linger.ms, 0 by default)
 * sends replies at once. The second lingers worker.batch.linger.ms (1 ms)
 * and takes every result record, so at low load a reply never waits behind
 * the previous call's result (one request in flight per connection, see the
 * producer defaults), and, under load (worker.batch.threshold results
 * applied together), the replies too: at 256 calls in flight one stream of
 * larger ProduceRequests cost ~15% less CPU per call than linger 0, while a
 * lone call still goes out at once. (Results and replies split over two
 * linger-0 streams had cost 30-40% of the throughput.) Transactional mode
 * needs both in one transaction, so one producer. The transactional one
 * is ready once init_transactions() returned: on failure it is destroyed
 * and why says the cause. */
static int producer_start(kreq_worker_t *s, char *why, size_t why_size)
{
	if (!(s->producer = producer_new(s, -1))) {
		snprintf(why, why_size, "cannot create the producer");
		return -1;
	}
	if (!s->txn_mode) {
		if ((s->batch_producer = producer_new(s, s->batch_linger_ms)))
			return 0;
		snprintf(why, why_size, "cannot create the batching producer");
		return -1;
	}
	rd_kafka_error_t *e = rd_kafka_init_transactions(
	    s->producer, (int)kreq__conf_int(s->conf, KREQ__P_WORKER_START_TIMEOUT_MS));
	if (!e)
		return 0;
	snprintf(why, why_size, "init_transactions (transactional.id %s): %s", s->txn_id,
	         rd_kafka_error_string(e));
	rd_kafka_error_destroy(e);
	rd_kafka_destroy(s->producer);
	s->producer = NULL;
	return -1;
}

/* Output topics are warmed (common/topic_admin.h) on first sight, before the
 * first record is produced to them: one metadata round trip per topic and
 * producer, on the loop thread, bounded by KREQ__WARM_TIMEOUT_MS. The
 * answer is also the topic's partition count, cached in its entry (the
 * producers never let the Kafka broker auto-create a topic: a missing one
 * reads 0). */
static int warm_one(kreq_worker_t *s, rd_kafka_t *rk, const char *topic)
{
	int n = rk ? kreq__topic_partitions(rk, topic, KREQ__WARM_TIMEOUT_MS) : -1;
	if (rk && n < 0)
		kreq__log(s->conf, 5, "worker",
		          "no metadata for reply topic %s yet: its first reply may wait for "
		          "the producer's own lookup",
		          topic);
	return n;
}

/* topic's entry in the table of output topics (broker/worker/topics.h), added
 * and warmed on first sight; NULL (logged) if it cannot be had. */
static kreq__topic_t *out_topic(kreq_worker_t *s, const char *topic)
{
	kreq__topic_t *t = kreq__topics_find(&s->topics, topic);
	if (t)
		return t;
	rd_kafka_t *const p[2] = {s->producer, s->batch_producer};
	char why[512];
	if (kreq__topics_add(&s->topics, topic, p, &t, why, sizeof(why))) {
		kreq__log(s->conf, 3, "worker", "%s", why);
		return NULL;
	}
	int n = warm_one(s, s->producer, topic), nb = warm_one(s, s->batch_producer, topic);
	kreq__topics_set_partitions(t, n >= 0 ? n : nb, kreq__mono_ns());
	return t;
}

int kreq__topic_partitions_cached(kreq_worker_t *s, const char *topic, int32_t partition)
{
	kreq__topic_t *t = s->producer ? out_topic(s, topic) : NULL;
	if (!t)
		return -1;
	int64_t now = kreq__mono_ns();
	if (kreq__topics_recheck_due(t, partition, now))
		kreq__topics_set_partitions(
		    t, kreq__topic_partitions(s->producer, topic, KREQ__WARM_TIMEOUT_MS), now);
	return t->partitions;
}

/* The delivery reports of a producer about to be destroyed: what is
 * queued is purged (reported as purged), what is in flight is awaited for
 * up to KREQ__DRAIN_MS. A failed output's report may still be on its way
 * from librdkafka's broker thread when the transaction is already known
 * to have failed (produce calls are refused at once): destroying the
 * producer then would lose the only note of which record failed
 * (faults.h), and that record would run again on every pass. */
static void producer_drain(kreq_worker_t *s)
{
	rd_kafka_resp_err_t kerr = rd_kafka_purge(s->producer, RD_KAFKA_PURGE_F_QUEUE);
	if (kerr)
		kreq__log(s->conf, 6, "worker", "purging the producer's queue: %s",
		          rd_kafka_err2str(kerr));
	rd_kafka_flush(s->producer, KREQ__DRAIN_MS); /* serves the reports */
}

/* A new producer after a failed one; KREQ_OK, or (Kafka unreachable, or
 * the last attempt was under KREQ__RESTART_MS ago) KREQ_EKAFKA and no
 * producer yet: the loop consumes nothing meanwhile (loop.c rewind_all). */
int kreq__kafka_producer_restart(kreq_worker_t *s)
{
	if (s->producer)
		return KREQ_OK;
	int64_t now = kreq__mono_ns();
	if (s->producer_retry_ns && now < s->producer_retry_ns)
		return KREQ_EKAFKA;
	char why[512];
	if (producer_start(s, why, sizeof(why))) {
		s->producer_retry_ns = kreq__mono_ns() + KREQ__RESTART_MS * 1000000LL;
		kreq__log(s->conf, 4, "worker",
		          "no producer: %s; nothing is consumed until one is re-created (retried "
		          "every %d ms)",
		          why, KREQ__RESTART_MS);
		return KREQ_EKAFKA;
	}
	s->producer_retry_ns = 0;
	kreq__log(s->conf, 5, "worker", "producer re-created");
	(void)out_topic(s, s->res_topic); /* reply topics: at their next reply */
	return KREQ_OK;
}

void kreq__kafka_producer_reset(kreq_worker_t *s)
{
	producer_drain(s);
	/* the handles are the old producer's, and the new one knows no topic */
	kreq__topics_clear(&s->topics);
	s->txn_open = s->txn_used = false;
	atomic_fetch_add_explicit(&s->m.producer_resets, 1, memory_order_relaxed);
	rd_kafka_destroy(s->producer);
	s->producer = NULL;
	s->producer_retry_ns = 0;
	(void)kreq__kafka_producer_restart(s);
}

int kreq__kafka_produce(kreq_worker_t *s, const char *topic, bool batch, int32_t partition,
                        const void *key, size_t key_len, const uint8_t *value, size_t len,
                        kreq__dr_t *opaque, int32_t rec_partition, int64_t rec_offset)
{
	rd_kafka_t *p = batch && s->batch_producer ? s->batch_producer : s->producer;
	kreq__topic_t *t = p ? out_topic(s, topic) : NULL;
	rd_kafka_resp_err_t kerr = RD_KAFKA_RESP_ERR__FAIL;
	for (; t;) {
		kerr = rd_kafka_producev(
		    p, RD_KAFKA_V_RKT(t->rkt[p == s->producer ? 0 : 1]),
		    RD_KAFKA_V_PARTITION(partition), RD_KAFKA_V_KEY(key, key_len),
		    RD_KAFKA_V_VALUE((void *)value, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
		    RD_KAFKA_V_OPAQUE(s->txn_mode ? txn_opaque(rec_partition, rec_offset)
		                                  : (void *)opaque),
		    RD_KAFKA_V_END);
		if (!kerr)
			return KREQ_OK;
		if (kerr != RD_KAFKA_RESP_ERR__QUEUE_FULL)
			break;
		rd_kafka_poll(p, 10);
	}
	char why[256];
	snprintf(why, sizeof(why), "producing to %s [%d]: %s", topic, partition,
	         t ? rd_kafka_err2str(kerr) : "no producer handle");
	kreq__output_failed(s, rec_partition, rec_offset, kerr, topic, why);
	kreq__dr_free(s, opaque);
	return KREQ_EKAFKA;
}

/* ---- start / close ------------------------------------------------------ */

static int consumer_subscribe(kreq_worker_t *s);

int kreq__kafka_start(kreq_worker_t *s, kreq__rebalance_cb_t *rebalance_cb)
{
	char rgroup[512];
	snprintf(rgroup, sizeof(rgroup), "%s.rebuild", s->group);
	char why[512];
	if (producer_start(s, why, sizeof(why))) {
		if (!s->fatal) /* else make_handle() said why, with its own code */
			kreq__loop_fatal(s, KREQ_EKAFKA, "%s", why);
		return -1;
	}
	if (!(s->reader = make_handle(s, RD_KAFKA_CONSUMER, rgroup, false, -1, NULL)) ||
	    ensure_topics(s) || kreq__poison_start(s, s->nparts) ||
	    !(s->consumer = make_handle(s, RD_KAFKA_CONSUMER, s->group, false, -1, rebalance_cb)))
		return -1;
	(void)out_topic(s, s->res_topic); /* warmed now: the first result leaves at once */
	return consumer_subscribe(s);
}

int kreq__kafka_consumer_renew(kreq_worker_t *s, kreq__rebalance_cb_t *rebalance_cb)
{
	s->member_renewing = true; /* its close revokes: nothing of it is kept */
	rd_kafka_consumer_close(s->consumer);
	if (s->cq)
		rd_kafka_queue_destroy(s->cq);
	rd_kafka_destroy(s->consumer);
	s->cq = NULL;
	s->member_renewing = false;
	if (!(s->consumer = make_handle(s, RD_KAFKA_CONSUMER, s->group, false, -1, rebalance_cb)))
		return -1;
	return consumer_subscribe(s);
}

/* The group consumer's queue wakes the loop; it subscribes to the
 * requests topic. */
static int consumer_subscribe(kreq_worker_t *s)
{
	rd_kafka_poll_set_consumer(s->consumer);
	s->cq = rd_kafka_queue_get_consumer(s->consumer);
	static const uint64_t one = 1;
	rd_kafka_queue_io_event_enable(s->cq, s->efd, &one, sizeof(one));
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(l, s->req_topic, RD_KAFKA_PARTITION_UA);
	rd_kafka_resp_err_t kerr = rd_kafka_subscribe(s->consumer, l);
	rd_kafka_topic_partition_list_destroy(l);
	if (kerr) {
		kreq__loop_fatal(s, KREQ_EKAFKA, "subscribing to %s: %s", s->req_topic,
		                 rd_kafka_err2str(kerr));
		return -1;
	}
	return 0;
}

void kreq__kafka_close(kreq_worker_t *s)
{
	if (s->consumer) {
		rd_kafka_consumer_close(s->consumer);
		if (s->cq)
			rd_kafka_queue_destroy(s->cq);
		rd_kafka_destroy(s->consumer);
	}
	if (s->reader) {
		rd_kafka_consumer_close(s->reader);
		rd_kafka_destroy(s->reader);
	}
	kreq__poison_close(s);
	kreq__topics_clear(&s->topics); /* handles first: they belong to the producers */
	if (s->producer) {
		rd_kafka_flush(s->producer, 5000);
		rd_kafka_destroy(s->producer);
	}
	if (s->batch_producer) {
		rd_kafka_flush(s->batch_producer, 5000);
		rd_kafka_destroy(s->batch_producer);
	}
	s->consumer = s->reader = s->producer = s->batch_producer = NULL;
	s->cq = NULL;
}
