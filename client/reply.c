/*
 * reply.c — replies in: the reply topic, its consumer, and delivering each
 * verified reply to its pending call.
 *
 * Design notes
 * - The reply consumer uses direct assignment of this client's partition at
 *   the offset read before kreq_client_new() returns, so a reply to any
 *   later call is never missed, and no consumer-group rebalance ever pauses
 *   it. It reads read_committed: only replies whose transaction committed.
 * - A reply settles its call only if it verifies, is a reply, matches a
 *   pending call and that call's idempotency key (binding_matches); every
 *   other one is counted (late or rejected) and dropped.
 * - Replies are delivered REPLY_BATCH at a time; requests made meanwhile
 *   are held and released after each batch (send.c, "Coalescing").
 */
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"
#include "common/conf.h"
#include "common/hoptrace.h"
#include "common/internal.h"
#include "common/replication.h"
#include "common/topic_admin.h"

#define REPLY_BATCH 64

static void retain_value(void *f)
{
	kreq_future_retain(f);
}

/* ---- the reply topic ---------------------------------------------------- */

static int create_reply_topic(kreq_client_t *c, int timeout_ms, char *errstr, size_t errstr_size)
{
	char why[512] = "", isr_buf[16];
	const char *configs[3] = {NULL}; /* min.insync.replicas (common/replication.h) */
	int rf, isr;
	if (kreq__replication_plan(c->consumer,
	                           (int)kreq__conf_int(c->conf, KREQ__P_REPLY_TOPIC_REPLICATION), 0,
	                           timeout_ms, &rf, &isr, configs, isr_buf, sizeof(isr_buf)))
		return kreq__err(errstr, errstr_size, KREQ_EUNAVAILABLE,
		                 "creating reply topic %s: Kafka did not answer within %d ms (is "
		                 "kafka.bootstrap.servers right?)",
		                 c->reply_topic, timeout_ms);
	rd_kafka_resp_err_t kerr =
	    kreq__topic_create(c->producer, c->reply_topic, c->reply_partition + 1, rf, configs,
	                       timeout_ms, why, sizeof(why));
	if (kerr == RD_KAFKA_RESP_ERR__INVALID_ARG && *why)
		return kreq__err(errstr, errstr_size, KREQ_ECONF, "reply topic: %s", why);
	if (kerr == RD_KAFKA_RESP_ERR__TIMED_OUT)
		return kreq__err(errstr, errstr_size, KREQ_EUNAVAILABLE,
		                 "creating reply topic %s: Kafka did not answer within %d ms (is "
		                 "kafka.bootstrap.servers right?)",
		                 c->reply_topic, timeout_ms);
	if (kerr)
		return kreq__err(errstr, errstr_size, KREQ_EKAFKA, "creating reply topic %s: %s",
		                 c->reply_topic, rd_kafka_err2str(kerr));
	return KREQ_OK;
}

/* A cluster whose metadata names no controller (librdkafka's mock cluster,
 * `kreq dev`) serves no CreateTopics: asking would only time out, and the
 * timeout would read as "Kafka did not answer" although it did. There the
 * reply topic is made the way such a cluster allows, by asking for it as a
 * producer (auto-creation, as warming does: common/topic_admin.h). Returns the
 * partition count, or 0 if the topic still does not exist. */
static int reply_topic_without_controller(kreq_client_t *c, int timeout_ms, char *errstr,
                                          size_t errstr_size)
{
	int n = kreq__topic_partitions(c->producer, c->reply_topic, timeout_ms);
	if (n <= 0)
		kreq__err(errstr, errstr_size, KREQ_EKAFKA,
		          "reply topic %s does not exist, and this Kafka cluster can neither "
		          "create it (its metadata names no controller, as librdkafka's mock "
		          "cluster) nor auto-created it: create it up front (kreq dev --topic %s)",
		          c->reply_topic, c->reply_topic);
	return n < 0 ? 0 : n;
}

/* Warns when the existing reply topic has fewer replicas than configured
 * (common/replication.h): replies would stop with the Kafka broker holding
 * them. */
static void reply_replication_check(kreq_client_t *c, int timeout_ms)
{
	int rf_conf = (int)kreq__conf_int(c->conf, KREQ__P_REPLY_TOPIC_REPLICATION);
	int brokers = rf_conf == 0 ? kreq__kafka_brokers(c->consumer, timeout_ms) : 0;
	char why[512];
	if ((rf_conf != 0 || brokers > 0) &&
	    kreq__replication_short(c->consumer, c->reply_topic,
	                            kreq__replication_factor(rf_conf, brokers), timeout_ms, why,
	                            sizeof(why)) == 1)
		kreq__log(c->conf, 4, "client", "%s", why);
}

static int ensure_reply_topic(kreq_client_t *c, int timeout_ms, char *errstr, size_t errstr_size)
{
	int n = kreq__topic_partitions(c->consumer, c->reply_topic, timeout_ms);
	if (n < 0)
		return kreq__err(errstr, errstr_size, KREQ_EUNAVAILABLE,
		                 "Kafka did not answer within %d ms (is kafka.bootstrap.servers "
		                 "right?)",
		                 timeout_ms);
	if (n == 0 && kreq__topic_admin_served(c->consumer, timeout_ms) == 0 &&
	    (n = reply_topic_without_controller(c, timeout_ms, errstr, errstr_size)) == 0)
		return KREQ_EKAFKA;
	if (n == 0)
		return create_reply_topic(c, timeout_ms, errstr, errstr_size);
	reply_replication_check(c, timeout_ms);
	if (n <= c->reply_partition)
		return kreq__err(errstr, errstr_size, KREQ_ECONF,
		                 "reply topic %s has %d partitions; reply.partition %d does not "
		                 "exist",
		                 c->reply_topic, n, c->reply_partition);
	return KREQ_OK;
}

/* Reads the reply partition's end offset and starts consuming there, so
 * every reply written after kreq_client_new() returns is seen. Retries while
 * a newly created topic's leader is not known yet. */
static int start_reply_consumer(kreq_client_t *c, int64_t until_ms, char *errstr,
                                size_t errstr_size)
{
	int64_t lo = 0, hi = 0;
	rd_kafka_resp_err_t kerr;
	do {
		kerr = rd_kafka_query_watermark_offsets(c->consumer, c->reply_topic,
		                                        c->reply_partition, &lo, &hi, 1000);
	} while (kerr && kerr != RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN && kreq__mono_ms() < until_ms);
	if (kerr)
		return kreq__err(errstr, errstr_size, KREQ_EUNAVAILABLE,
		                 "reading the end of reply topic %s [%d]: %s", c->reply_topic,
		                 c->reply_partition, rd_kafka_err2str(kerr));
	c->reply_q = rd_kafka_queue_new(c->consumer);
	c->reply_rkt = rd_kafka_topic_new(c->consumer, c->reply_topic, NULL);
	if (!c->reply_q || !c->reply_rkt ||
	    rd_kafka_consume_start_queue(c->reply_rkt, c->reply_partition, hi, c->reply_q) != 0)
		return kreq__err(errstr, errstr_size, KREQ_EKAFKA,
		                 "cannot start consuming reply topic %s: %s", c->reply_topic,
		                 rd_kafka_err2str(rd_kafka_last_error()));
	static const uint64_t one = 1;
	rd_kafka_queue_io_event_enable(c->reply_q, c->wake_fd, &one, sizeof(one));
	rd_kafka_queue_t *mq = rd_kafka_queue_get_main(c->producer);
	rd_kafka_queue_io_event_enable(mq, c->wake_fd, &one, sizeof(one));
	rd_kafka_queue_destroy(mq);
	return KREQ_OK;
}

int kreq__reply_start(kreq_client_t *c, int64_t until_ms, char *errstr, size_t errstr_size)
{
	int err = ensure_reply_topic(c, (int)(until_ms - kreq__mono_ms()), errstr, errstr_size);
	return err ? err : start_reply_consumer(c, until_ms, errstr, errstr_size);
}

/* ---- replies ------------------------------------------------------------ */

static bool binding_matches(const kreq__call_t *call, const Kreq__Reply *r)
{
	return r->idempotency_key.len == call->idem_len &&
	       memcmp(r->idempotency_key.data, kreq__call_idem(call), call->idem_len) == 0;
}

static void deliver_reply(kreq_client_t *c, kreq_future_t *f, const Kreq__Reply *r)
{
	void *payload = NULL;
	if (r->payload.len) {
		payload = malloc(r->payload.len);
		if (payload)
			memcpy(payload, r->payload.data, r->payload.len);
	}
	int err = KREQ_OK;
	kreq__outcome_t outcome = r->status == 0 ? KREQ__OUT_OK : KREQ__OUT_ERROR_STATUS;
	if (r->status > 0 && r->status < 100) { /* kreq's own statuses: the worker refused */
		err = KREQ_EREJECTED;
		outcome = KREQ__OUT_REJECTED;
	}
	if (r->payload.len && !payload)
		kreq__settle(c, f, KREQ_ENOMEM, r->status, NULL, 0, r->from_dedup,
		             "out of memory copying the reply", outcome);
	else
		kreq__settle(c, f, err, r->status, payload, r->payload.len, r->from_dedup, r->error,
		             outcome);
}

static void on_reply_record(kreq_client_t *c, const rd_kafka_message_t *m)
{
	kreq__opened_t o;
	int err =
	    kreq__envelope_open(c->kr, &c->lim, kreq__now_ms(), m->payload, m->len, &o, NULL, 0);
	if (err == KREQ_EEXPIRED) {
		kreq__count(&c->metrics.late_replies);
		return;
	}
	if (err || o.kind != KREQ__KIND_REPLY) {
		kreq__count(&c->metrics.rejected_replies);
		if (!err)
			kreq__opened_clear(&o);
		return;
	}
	const Kreq__Reply *r = o.u.reply;
	kreq_future_t *f = kreq__table_find_retain(c->table, r->correlation_id.data, retain_value);
	if (!f) {
		kreq__count(&c->metrics.late_replies);
	} else if (!binding_matches(kreq__call_of(f), r)) {
		kreq__count(&c->metrics.rejected_replies);
	} else if (kreq__table_remove(c->table, r->correlation_id.data) == f) {
		deliver_reply(c, f, r);
	} else {
		kreq__count(&c->metrics.late_replies); /* settled by another path meanwhile */
	}
	kreq_future_release(f);
	kreq__opened_clear(&o);
}

/* Delivers the replies that have arrived, REPLY_BATCH at a time; requests
 * made meanwhile go to librdkafka together after each batch ("Coalescing"). */
void kreq__drain_replies(kreq_client_t *c)
{
	rd_kafka_message_t *ms[REPLY_BATCH];
	ssize_t n;
	while ((n = rd_kafka_consume_batch_queue(c->reply_q, 0, ms, REPLY_BATCH)) > 0) {
		kreq__hop(C_REPLY);
		pthread_mutex_lock(&c->out_mu);
		c->draining = true;
		pthread_mutex_unlock(&c->out_mu);
		for (ssize_t i = 0; i < n; i++) {
			if (!ms[i]->err) {
				atomic_store(&c->down_since_ms, 0);
				on_reply_record(c, ms[i]);
			}
			rd_kafka_message_destroy(ms[i]);
		}
		kreq__release_held(c);
	}
}
