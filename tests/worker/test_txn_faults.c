/*
 * test_txn_faults.c — requests whose outputs cannot be produced, against a
 * real Kafka broker (issue 16, item 1 and part of 13).
 *
 * Before the fix a failed produce flagged a rewind without aborting the
 * open transaction, which then committed without its offsets: the rebuild
 * missed those results, handlers ran again (other callers' too) and the
 * worker looped until the bad request's deadline. Each test sends one bad
 * request and one innocent request on the same (single) partition and
 * checks: the bad request's handler ran at most once, the innocent one
 * exactly once with exactly one committed reply, the worker rewound at
 * most KREQ__REWIND_MAX times, aborted whenever a produce failed, and
 * committed each Result once. Triggers:
 *   (a) reply_partition 7 on a 1-partition reply topic: refused at
 *       verification;
 *   (b) a reply and a request payload of payload.max.bytes (1,000,000):
 *       delivered (the producers' message.max.bytes has room for them);
 *   (b2) a result over the results topic's max.message.bytes: the
 *       transaction is aborted once and the request answered with status
 *       KREQ_STATUS_TOO_LARGE, stored (a retry gets it from dedup);
 *   (c) a reply topic that was deleted: no reply (counted), the result and
 *       the offset commit, the topic is not re-created, and the retry from
 *       the caller's own reply topic is a dedup hit;
 *   (d) 20 requests to 20 allow-listed reply topics that do not exist
 *       create no topic (the test Kafka broker has
 *       auto.create.topics.enable=true, see scripts/kafka.sh);
 *   (e) a reply that fails on every pass for a reason kreq cannot check
 *       beforehand: at most 3 rewinds, then the record is dropped;
 *   (f) Attempt records (poison counting) whose unsigned key names another
 *       worker process than their signed body are not counted; three
 *       consistent ones take the request out of service (status 10).
 * Metrics are read with metric0(), which reads a missing series as 0, so
 * the same test compiled against the code before the fix fails on the
 * behaviour, not on a missing name.
 */
#include <check.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kreq/client.h"
#include "kreq/error.h"
#include "kreq/worker.h"
#include "proc.h"
#include "broker/worker/dedup.h"
#include "proto/envelope.h"
#include "worker.h"
#include "testsupport.h"

#ifndef KREQ_CLI_PATH
#error "KREQ_CLI_PATH must name the kreq binary"
#endif

static const char *bootstrap;
static char prefix[64], req_topic[160], res_topic[160];
static kreq_keyring_t *kr;

/* ---- handlers: executions counted per idempotency key ------------------- */

#define KEYS_MAX 64
static pthread_mutex_t keys_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
	char key[64];
	int n;
} keys[KEYS_MAX];

static void count_run(kreq_request_t *r)
{
	size_t len;
	const char *k = kreq_request_idempotency_key(r, &len);
	pthread_mutex_lock(&keys_mu);
	int i = 0;
	while (i < KEYS_MAX && keys[i].key[0] &&
	       (strlen(keys[i].key) != len || memcmp(keys[i].key, k, len)))
		i++;
	if (i < KEYS_MAX) {
		snprintf(keys[i].key, sizeof(keys[i].key), "%.*s", (int)len, k);
		keys[i].n++;
	}
	pthread_mutex_unlock(&keys_mu);
}

static int runs(const char *key)
{
	pthread_mutex_lock(&keys_mu);
	int n = 0;
	for (int i = 0; i < KEYS_MAX && keys[i].key[0]; i++)
		if (!strcmp(keys[i].key, key))
			n = keys[i].n;
	pthread_mutex_unlock(&keys_mu);
	return n;
}

/* Replies with its payload. */
static void h_rec(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	count_run(r);
	size_t len;
	const void *p = kreq_request_payload(r, &len);
	kreq_request_reply(r, 0, p, len, NULL);
}

/* Replies with as many bytes as its payload says (decimal). */
static void h_big(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	count_run(r);
	size_t len;
	const char *p = kreq_request_payload(r, &len);
	char num[16];
	snprintf(num, sizeof(num), "%.*s", (int)(len < 15 ? len : 15), p);
	size_t n = (size_t)atol(num);
	char *out = malloc(n ? n : 1);
	memset(out, 'b', n);
	kreq_request_reply(r, 0, out, n, NULL);
	free(out);
}

/* Waits until the test releases it (at most 60 s), then replies "x". */
static pthread_mutex_t hang_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hang_cv = PTHREAD_COND_INITIALIZER;
static bool hang_released;
static int hang_entered;

static void h_hang(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	count_run(r);
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 60;
	pthread_mutex_lock(&hang_mu);
	hang_entered++;
	while (!hang_released && pthread_cond_timedwait(&hang_cv, &hang_mu, &until) == 0)
		;
	pthread_mutex_unlock(&hang_mu);
	kreq_request_reply(r, 0, "x", 1, NULL);
}

static void hang_release(void)
{
	pthread_mutex_lock(&hang_mu);
	hang_released = true;
	pthread_cond_broadcast(&hang_cv);
	pthread_mutex_unlock(&hang_mu);
}

static int hang_count(void)
{
	pthread_mutex_lock(&hang_mu);
	int n = hang_entered;
	pthread_mutex_unlock(&hang_mu);
	return n;
}

/* ---- worker and client ------------------------------------------------- */

static kreq_conf_t *base_conf(const char *client_id, const char *const *extra)
{
	kreq_conf_t *conf = kreq_conf_new();
	char err[512];
	ck_assert_int_eq(kreq_conf_set(conf, "kafka.bootstrap.servers", bootstrap, err, 512),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "topic.prefix", prefix, err, 512), KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "client.id", client_id, err, 512), KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "log.level", "4", err, 512), KREQ_OK);
	for (; extra && *extra; extra += 2)
		ck_assert_msg(kreq_conf_set(conf, extra[0], extra[1], err, 512) == KREQ_OK,
		              "%s: %s", extra[0], err);
	return conf;
}

/* One partition: the bad and the innocent request share it. */
static kreq_test_running_t *worker_start_ex(const char *solo_max_ms)
{
	const char *const extra[] = {"worker.topic.partitions", "1", "worker.poison.solo.max.ms",
	                             solo_max_ms, NULL};
	kreq_conf_t *conf = base_conf("w1", extra);
	char err[512];
	kreq_worker_t *s = kreq_worker_new(conf, kr, "svc", err, sizeof(err));
	ck_assert_msg(s != NULL, "kreq_worker_new: %s", err);
	kreq_conf_destroy(conf);
	ck_assert_int_eq(kreq_worker_register(s, "svc.rec", h_rec, NULL, 0), KREQ_OK);
	ck_assert_int_eq(kreq_worker_register(s, "svc.big", h_big, NULL, 0), KREQ_OK);
	ck_assert_int_eq(kreq_worker_register(s, "svc.hang", h_hang, NULL, 0), KREQ_OK);
	return kreq_test_worker_start(s);
}

static kreq_test_running_t *worker_start(void)
{
	return worker_start_ex("5000");
}

static kreq_client_t *client_new(void)
{
	char id[64], err[512];
	snprintf(id, sizeof(id), "cl-%u", randombytes_uniform(1000000));
	kreq_conf_t *conf = base_conf(id, NULL);
	kreq_client_t *c = kreq_client_new(conf, kr, err, sizeof(err));
	ck_assert_msg(c != NULL, "kreq_client_new: %s", err);
	kreq_conf_destroy(conf);
	return c;
}

static kreq_future_t *call(kreq_client_t *c, const char *method, const void *payload, size_t len,
                           const char *idem)
{
	kreq_call_opts_t *o = kreq_call_opts_new();
	ck_assert_int_eq(kreq_call_opts_set_timeout(o, 60000), KREQ_OK);
	ck_assert_int_eq(kreq_call_opts_set_idempotency_key(o, idem, strlen(idem)), KREQ_OK);
	kreq_future_t *f = NULL;
	int rc = kreq_client_call(c, method, payload, len, o, &f);
	ck_assert_msg(rc == KREQ_OK, "kreq_client_call: %s", kreq_strerror(rc));
	kreq_call_opts_destroy(o);
	return f;
}

/* Waits for f and checks its status (and payload length); releases it. */
static void expect(kreq_future_t *f, int32_t status, size_t len, bool dedup)
{
	ck_assert_int_eq(kreq_future_wait(f, 60000), KREQ_OK);
	ck_assert_msg(kreq_future_err(f) == KREQ_OK || kreq_future_err(f) == KREQ_EREJECTED,
	              "err %s: %s", kreq_err_name(kreq_future_err(f)), kreq_future_errstr(f));
	ck_assert_int_eq(kreq_future_status(f), status);
	ck_assert_int_eq(kreq_future_from_dedup(f), dedup);
	size_t n;
	kreq_future_payload(f, &n);
	ck_assert_uint_eq(n, len);
	kreq_future_release(f);
}

/* The value of a metric series, 0 if the worker does not have it. */
static uint64_t metric0(kreq_worker_t *s, const char *series)
{
	char *text = NULL;
	ck_assert_int_eq(kreq_worker_metrics_text(s, &text), KREQ_OK);
	const char *p = strstr(text, series);
	uint64_t v = p ? strtoull(strchr(p + strlen(series), ' ') + 1, NULL, 10) : 0;
	free(text);
	return v;
}

/* ---- raw records and what Kafka holds ------------------------------------ */

static void raw_send(const uint8_t *buf, size_t len)
{
	char err[512];
	rd_kafka_t *p =
	    rd_kafka_new(RD_KAFKA_PRODUCER, kreq_test_conf_new(bootstrap, NULL), err, sizeof(err));
	ck_assert_msg(p != NULL, "%s", err);
	ck_assert_int_eq(rd_kafka_producev(p, RD_KAFKA_V_TOPIC(req_topic), RD_KAFKA_V_PARTITION(0),
	                                   RD_KAFKA_V_VALUE((void *)buf, len),
	                                   RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
	                                   RD_KAFKA_V_END),
	                 RD_KAFKA_RESP_ERR_NO_ERROR);
	ck_assert_int_eq(rd_kafka_flush(p, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_destroy(p);
}

/* A request for method, payload "x", signed with the test key (as the
 * client would send it with idempotency key idem), to reply_topic. */
static void send_call(const char *method, const char *idem, const char *reply_topic,
                      int32_t reply_partition)
{
	uint8_t corr[16];
	randombytes_buf(corr, sizeof(corr));
	int64_t now = (int64_t)time(NULL) * 1000;
	Kreq__Request q = KREQ__REQUEST__INIT;
	q.correlation_id = (ProtobufCBinaryData){16, corr};
	q.idempotency_key = (ProtobufCBinaryData){strlen(idem), (uint8_t *)idem};
	q.method = (char *)method;
	q.service = "svc"; /* every method here is svc's (protocol v2 signs it) */
	q.payload = (ProtobufCBinaryData){1, (uint8_t *)"x"};
	q.reply_topic = (char *)reply_topic;
	q.reply_partition = reply_partition;
	q.issued_at_ms = now;
	q.deadline_ms = now + 20000; /* bounds the old code's loop */
	q.attempt = 1;
	q.client_id = "raw";
	kreq__limits_t lim = {1 << 20, 1 << 20, 30000};
	char err[256];
	uint8_t *buf;
	size_t len;
	ck_assert_int_eq(kreq__envelope_seal(kr, &lim, KREQ__KIND_REQUEST, &q.base, &buf, &len, err,
	                                     sizeof(err)),
	                 KREQ_OK);
	raw_send(buf, len);
	free(buf);
}

static void send_request(const char *idem, const char *reply_topic, int32_t reply_partition)
{
	send_call("svc.rec", idem, reply_topic, reply_partition);
}

/* Committed records of partition 0 of topic whose envelope (a Reply or a
 * Result) carries idempotency key idem; NULL idem: every record. */
static int committed(const char *topic, const char *idem)
{
	char err[512], group[96];
	snprintf(group, sizeof(group), "count-%u", randombytes_uniform(1000000000));
	rd_kafka_conf_t *rc =
	    kreq_test_conf_new(bootstrap, "group.id", group, "isolation.level", "read_committed",
	                       "enable.partition.eof", "true", "enable.auto.commit", "false", NULL);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, rc, err, sizeof(err));
	ck_assert_msg(rk != NULL, "%s", err);
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(l, topic, 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
	ck_assert_int_eq(rd_kafka_assign(rk, l), RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_topic_partition_list_destroy(l);
	kreq__limits_t lim = {8 << 20, 8 << 20, 30000};
	int n = 0;
	int64_t until = kreq_test_now_ms() + 30000;
	for (bool eof = false; !eof;) {
		ck_assert_msg(kreq_test_now_ms() < until, "reading %s did not reach its end",
		              topic);
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 500);
		if (!m)
			continue;
		eof = m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF;
		ck_assert_msg(!m->err || eof, "reading %s: %s", topic, rd_kafka_message_errstr(m));
		kreq__opened_t o;
		if (!m->err && !idem) {
			n++;
		} else if (!m->err &&
		           kreq__envelope_open(kr, &lim, (int64_t)time(NULL) * 1000, m->payload,
		                               m->len, &o, NULL, 0) == KREQ_OK) {
			ProtobufCBinaryData k =
			    o.kind == KREQ__KIND_REPLY    ? o.u.reply->idempotency_key
			    : o.kind == KREQ__KIND_RESULT ? o.u.result->idempotency_key
			                                  : (ProtobufCBinaryData){0};
			n += k.len == strlen(idem) && !memcmp(k.data, idem, k.len);
			kreq__opened_clear(&o);
		}
		rd_kafka_message_destroy(m);
	}
	rd_kafka_destroy(rk);
	return n;
}

static int partitions_of(const char *topic)
{
	char err[512];
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER,
	                              kreq_test_conf_new(bootstrap, "group.id", "inspect", NULL),
	                              err, sizeof(err));
	ck_assert_msg(rk != NULL, "%s", err);
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
	const struct rd_kafka_metadata *md = NULL;
	ck_assert_int_eq(rd_kafka_metadata(rk, 0, rkt, &md, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
	int n = md->topics[0].err ? 0 : md->topics[0].partition_cnt;
	rd_kafka_metadata_destroy(md);
	rd_kafka_topic_destroy(rkt);
	rd_kafka_destroy(rk);
	return n;
}

static void delete_topic(const char *topic)
{
	char err[512];
	rd_kafka_t *rk =
	    rd_kafka_new(RD_KAFKA_PRODUCER, kreq_test_conf_new(bootstrap, NULL), err, sizeof(err));
	ck_assert_msg(rk != NULL, "%s", err);
	rd_kafka_DeleteTopic_t *dt = rd_kafka_DeleteTopic_new(topic);
	rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
	rd_kafka_DeleteTopics(rk, &dt, 1, NULL, q);
	rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 20000);
	ck_assert_ptr_nonnull(ev);
	ck_assert_int_eq(rd_kafka_event_error(ev), RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_event_destroy(ev);
	rd_kafka_queue_destroy(q);
	rd_kafka_DeleteTopic_destroy(dt);
	rd_kafka_destroy(rk);
	KREQ_TEST_AWAIT(partitions_of(topic) == 0, 30000);
}

/* The invariants every trigger must keep. */
static void check_worker(kreq_worker_t *s)
{
	uint64_t rewinds = metric0(s, "kreq_worker_rewinds_total{");
	uint64_t produce_errors = metric0(s, "kreq_worker_produce_errors_total{");
	uint64_t aborts = metric0(s, "kreq_worker_txn_aborts_total{");
	ck_assert_msg(rewinds <= 3, "%llu rewinds", (unsigned long long)rewinds);
	ck_assert_msg(produce_errors == 0 || aborts >= 1,
	              "%llu failed produces but %llu aborted transactions",
	              (unsigned long long)produce_errors, (unsigned long long)aborts);
}

/* ---- fixture ------------------------------------------------------------ */

static void setup(void)
{
	bootstrap = kreq_test_bootstrap();
	kreq_test_topic_name(prefix, sizeof(prefix), "txf");
	snprintf(req_topic, sizeof(req_topic), "%s.svc.requests", prefix);
	snprintf(res_topic, sizeof(res_topic), "%s.svc.results", prefix);
	kr = kreq_keyring_new();
	uint8_t key[32];
	randombytes_buf(key, sizeof(key));
	ck_assert_int_eq(kreq_keyring_add(kr, "k1", KREQ_KEY_HMAC_SHA256, key, 32, NULL, 0),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_signing_key(kr, "k1"), KREQ_OK);
	memset(keys, 0, sizeof(keys));
	hang_released = false;
	hang_entered = 0;
}

static void teardown(void)
{
	kreq_keyring_release(kr);
}

/* ---- (a) a reply partition the reply topic does not have ---------------- */

START_TEST(test_bad_reply_partition)
{
	kreq_test_running_t *w = worker_start();
	kreq_client_t *c = client_new();
	int32_t rp;
	const char *reply_topic = kreq_client_reply_topic(c, &rp);
	send_request("bad", reply_topic, 7);
	send_call("svc.nosuch", "bad-method", reply_topic, 7); /* would be answered "unknown" */
	expect(call(c, "svc.rec", "x", 1, "good"), 0, 1, false);
	/* one partition, in order: the bad record was handled before this */
	KREQ_TEST_AWAIT(committed(res_topic, "good") == 1, 30000);
	ck_assert_int_eq(runs("bad"), 0); /* refused at verification */
	ck_assert_int_eq(runs("good"), 1);
	ck_assert_int_eq(committed(reply_topic, "good"), 1);
	ck_assert_int_eq(committed(res_topic, "bad"), 0);
	ck_assert_uint_eq(metric0(w->s, "kreq_worker_produce_errors_total{"), 0);
	ck_assert_uint_eq(metric0(w->s, "reason=\"reply_partition\"}"), 2);
	ck_assert_uint_eq(metric0(w->s, "outcome=\"unknown_method\"}"), 0);
	check_worker(w->s);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

/* ---- (b) payloads of payload.max.bytes ---------------------------------- */

START_TEST(test_full_size_payloads)
{
	kreq_test_running_t *w = worker_start();
	kreq_client_t *c = client_new();
	int32_t rp;
	const char *reply_topic = kreq_client_reply_topic(c, &rp);
	/* a reply of 1,000,000 bytes, then a request of 1,000,000 bytes */
	expect(call(c, "svc.big", "1000000", 7, "big-reply"), 0, 1000000, false);
	char *big = malloc(1000000);
	memset(big, 'q', 1000000);
	expect(call(c, "svc.rec", big, 1000000, "big-request"), 0, 1000000, false);
	/* one byte more is refused by the client before anything is sent */
	kreq_future_t *f = NULL;
	ck_assert_int_eq(kreq_client_call(c, "svc.rec", big, 1000001, NULL, &f), KREQ_EOVERSIZE);
	ck_assert_ptr_null(f);
	free(big);
	expect(call(c, "svc.rec", "x", 1, "good"), 0, 1, false);
	ck_assert_int_eq(runs("big-reply"), 1);
	ck_assert_int_eq(runs("big-request"), 1);
	ck_assert_int_eq(runs("good"), 1);
	ck_assert_int_eq(committed(reply_topic, "good"), 1);
	ck_assert_int_eq(committed(res_topic, "big-reply"), 1);
	ck_assert_int_eq(committed(res_topic, "big-request"), 1);
	ck_assert_int_eq(committed(res_topic, "good"), 1);
	ck_assert_uint_eq(metric0(w->s, "kreq_worker_produce_errors_total{"), 0);
	check_worker(w->s);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

/* ---- (b2) a result too large for its topic ----------------------------- */

START_TEST(test_result_too_large)
{
	/* the results topic as the worker would create it, but with a
	 * max.message.bytes below the 500,000-byte result */
	static const char *const cfg[] = {"cleanup.policy", "compact,delete", "max.message.bytes",
	                                  "300000", NULL};
	kreq_test_create_topic_ex(bootstrap, res_topic, 1, -1, cfg, 30000);
	kreq_test_running_t *w = worker_start();
	kreq_client_t *c = client_new();
	int32_t rp;
	const char *reply_topic = kreq_client_reply_topic(c, &rp);
	expect(call(c, "svc.big", "500000", 6, "huge"), KREQ_STATUS_TOO_LARGE, 0, false);
	expect(call(c, "svc.rec", "x", 1, "good"), 0, 1, false);
	/* a retry is answered from the stored error */
	expect(call(c, "svc.big", "500000", 6, "huge"), KREQ_STATUS_TOO_LARGE, 0, true);
	ck_assert_int_eq(runs("huge"), 1);
	ck_assert_int_eq(runs("good"), 1);
	ck_assert_int_eq(committed(reply_topic, "good"), 1);
	ck_assert_int_eq(committed(reply_topic, "huge"), 2); /* the answer and the dedup hit */
	ck_assert_int_eq(committed(res_topic, "huge"), 1);
	ck_assert_int_eq(committed(res_topic, "good"), 1);
	/* answered once per pass that redid it (librdkafka may fail the
	 * transaction after an aborted one once more: "skipped sequence
	 * numbers"), the handler ran once */
	ck_assert_uint_ge(metric0(w->s, "outcome=\"too_large\"}"), 1);
	ck_assert_uint_ge(metric0(w->s, "kreq_worker_produce_errors_total{"), 1);
	ck_assert_uint_ge(metric0(w->s, "kreq_worker_txn_aborts_total{"), 1);
	check_worker(w->s);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

/* ---- (c) a reply topic that was deleted --------------------------------- */

START_TEST(test_reply_topic_deleted)
{
	kreq_test_running_t *w = worker_start();
	kreq_client_t *c = client_new();
	int32_t rp;
	const char *reply_topic = kreq_client_reply_topic(c, &rp);
	char gone[200];
	snprintf(gone, sizeof(gone), "%s.reply.gone-%u", prefix, randombytes_uniform(1000000));
	kreq_test_create_topic(bootstrap, gone, 1, 30000);
	delete_topic(gone);
	send_request("gone", gone, 0);
	expect(call(c, "svc.rec", "x", 1, "good"), 0, 1, false);
	KREQ_TEST_AWAIT(committed(res_topic, "gone") == 1, 30000);
	ck_assert_int_eq(runs("gone"), 1);
	/* the caller's retry from its own reply topic: a dedup hit */
	expect(call(c, "svc.rec", "x", 1, "gone"), 0, 1, true);
	ck_assert_int_eq(runs("gone"), 1);
	ck_assert_int_eq(runs("good"), 1);
	ck_assert_int_eq(committed(reply_topic, "good"), 1);
	ck_assert_int_eq(committed(res_topic, "gone"), 1);
	ck_assert_int_eq(committed(res_topic, "good"), 1);
	ck_assert_int_eq(partitions_of(gone), 0); /* not re-created */
	ck_assert_uint_eq(metric0(w->s, "kreq_worker_reply_topic_missing_total{"), 1);
	check_worker(w->s);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

/* ---- (d) workers never create topics ------------------------------------ */

START_TEST(test_no_topic_auto_creation)
{
	kreq_test_running_t *w = worker_start();
	char topics[20][200], idem[20][16];
	for (int i = 0; i < 20; i++) {
		snprintf(topics[i], sizeof(topics[i]), "%s.reply.none-%d", prefix, i);
		snprintf(idem[i], sizeof(idem[i]), "none-%d", i);
		send_request(idem[i], topics[i], 0);
	}
	KREQ_TEST_AWAIT(committed(res_topic, NULL) == 20, 60000);
	for (int i = 0; i < 20; i++) {
		ck_assert_int_eq(runs(idem[i]), 1);
		ck_assert_msg(partitions_of(topics[i]) == 0, "the worker created %s", topics[i]);
	}
	ck_assert_uint_eq(metric0(w->s, "kreq_worker_reply_topic_missing_total{"), 20);
	check_worker(w->s);
	kreq_test_worker_stop(w);
}
END_TEST

/* ---- `kreq call` with a payload of payload.max.bytes ------------------- */

START_TEST(test_cli_full_size_call)
{
	const char *dir = kreq_test_tmp_create("kreq-txf-test");
	char keyfile[256], err[256];
	snprintf(keyfile, sizeof(keyfile), "%s/svc.key", dir);
	ck_assert_int_eq(kreq_keyring_generate_file(keyfile, NULL, "cli-key", KREQ_KEY_HMAC_SHA256,
	                                            err, sizeof(err)),
	                 KREQ_OK);
	kreq_keyring_release(kr); /* the worker verifies with the CLI's key */
	kr = kreq_keyring_new();
	ck_assert_int_eq(kreq_keyring_load_file(kr, keyfile, err, sizeof(err)), KREQ_OK);
	kreq_test_running_t *w = worker_start();
	char *big = malloc(1000001);
	memset(big, 'p', 1000000);
	big[1000000] = '\0';
	const char *const args[] = {
	    "call",   "--bootstrap",       bootstrap,  "--keyfile",    keyfile, "--prefix", prefix,
	    "--json", "--idempotency-key", "cli-full", "--timeout-ms", "60000", "svc.rec",  "-",
	    NULL};
	kreq_test_result_t r;
	kreq_test_run(&r, KREQ_CLI_PATH, args, big, 120000);
	free(big);
	ck_assert_msg(r.status == 0, "exit %d\nstderr: %s", r.status, r.err);
	ck_assert_ptr_nonnull(strstr(r.out, "\"payload_bytes\":1000000"));
	kreq_test_result_free(&r);
	ck_assert_int_eq(runs("cli-full"), 1);
	ck_assert_int_eq(committed(res_topic, "cli-full"), 1);
	check_worker(w->s);
	kreq_test_worker_stop(w);
	kreq_test_tmp_remove();
}
END_TEST

/* ---- a record that keeps failing: bounded rewinds ------------------------ */

/* Its reply topic takes records of at most 150 bytes (room for the
 * transaction markers, not for a reply): the reply fails on the first
 * pass, and so does the KREQ_STATUS_TOO_LARGE answer on the next ones.
 * The worker rewinds for it 3 times, then drops it (counted) and moves
 * on; the handler ran once. */
START_TEST(test_rewinds_bounded)
{
	char stuck[200];
	snprintf(stuck, sizeof(stuck), "%s.reply.stuck", prefix);
	static const char *const cfg[] = {"max.message.bytes", "150", NULL};
	kreq_test_create_topic_ex(bootstrap, stuck, 1, -1, cfg, 30000);
	kreq_test_running_t *w = worker_start();
	kreq_client_t *c = client_new();
	int32_t rp;
	const char *reply_topic = kreq_client_reply_topic(c, &rp);
	send_request("stuck", stuck, 0);
	/* behind it on the partition: answered once it is dropped */
	expect(call(c, "svc.rec", "x", 1, "good"), 0, 1, false);
	ck_assert_int_eq(runs("stuck"), 1);
	ck_assert_uint_eq(metric0(w->s, "reason=\"rewinds\"}"), 1);
	/* at most the transaction that found the fault took it along: the
	 * record then runs in transactions of its own */
	ck_assert_int_le(runs("good"), 2);
	ck_assert_int_eq(committed(reply_topic, "good"), 1);
	ck_assert_int_eq(committed(res_topic, "good"), 1);
	ck_assert_int_eq(committed(res_topic, "stuck"), 0);
	ck_assert_uint_eq(metric0(w->s, "kreq_worker_rewinds_total{"), 3);
	ck_assert_uint_eq(metric0(w->s, "kreq_worker_txn_aborts_total{"), 3);
	check_worker(w->s);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

/* ---- forged Attempt records ---------------------------------------------- */

/* An Attempt (kind 6) for idempotency key idem of the request at partition
 * 0 offset 0, signed with the test key and claiming worker process
 * instance, written under the key dedup-key || be64(suffix). A genuine one
 * has suffix == instance (broker/worker/poison.c). */
static void send_attempt(const char *idem, uint32_t number, uint64_t instance, uint64_t suffix)
{
	Kreq__Attempt a = KREQ__ATTEMPT__INIT;
	a.idempotency_key = (ProtobufCBinaryData){strlen(idem), (uint8_t *)idem};
	a.request_key_id = "k1";
	a.number = number;
	a.worker = "w-gone";
	a.started_at_ms = (int64_t)time(NULL) * 1000;
	a.request_partition = 0;
	a.request_offset = 0;
	a.instance = instance;
	kreq__limits_t lim = {1 << 20, 1 << 20, 30000};
	char err[256], topic[200];
	uint8_t *buf, key[300];
	size_t len, klen = kreq__dedup_key(key, "k1", (const uint8_t *)idem, strlen(idem));
	for (int i = 7; i >= 0; i--, suffix >>= 8)
		key[klen + (size_t)i] = (uint8_t)(suffix & 0xff);
	ck_assert_int_eq(kreq__envelope_seal(kr, &lim, KREQ__KIND_ATTEMPT, &a.base, &buf, &len, err,
	                                     sizeof(err)),
	                 KREQ_OK);
	snprintf(topic, sizeof(topic), "%s.svc.attempts", prefix);
	rd_kafka_t *p =
	    rd_kafka_new(RD_KAFKA_PRODUCER, kreq_test_conf_new(bootstrap, NULL), err, sizeof(err));
	ck_assert_msg(p != NULL, "%s", err);
	ck_assert_int_eq(
	    rd_kafka_producev(p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(0),
	                      RD_KAFKA_V_KEY(key, klen + 8), RD_KAFKA_V_VALUE(buf, len),
	                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END),
	    RD_KAFKA_RESP_ERR_NO_ERROR);
	ck_assert_int_eq(rd_kafka_flush(p, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_destroy(p);
	free(buf);
}

/* The counted worker process is the Attempt's signed instance, never the
 * record key's unsigned suffix: one genuine Attempt replayed under three
 * key suffixes (by anyone who may write to the attempts topic, without a
 * signing key) counts once, so the request still runs. The control
 * request has three consistent Attempts of three processes: poison. */
static void forged_attempts(bool forged)
{
	const char *idem = forged ? "forged" : "genuine";
	char nowhere[200];
	snprintf(nowhere, sizeof(nowhere), "%s.reply.none", prefix); /* allowed, absent */
	kreq_test_worker_stop(worker_start());                       /* creates the topics */
	send_request(idem, nowhere, 0); /* at offset 0, before the worker returns */
	for (uint32_t i = 1; i <= 3; i++)
		send_attempt(idem, i, forged ? 0x1111 : 0x1111 * i, 0x1111 * i);
	kreq_test_running_t *w = worker_start();
	kreq_client_t *c = client_new();
	/* the same request again, from a caller that waits for the answer */
	kreq_future_t *f = call(c, "svc.rec", "x", 1, idem);
	ck_assert_int_eq(kreq_future_wait(f, 60000), KREQ_OK);
	if (forged) {
		ck_assert_msg(kreq_future_status(f) == 0, "status %d: %s", kreq_future_status(f),
		              kreq_future_errstr(f));
		ck_assert_int_eq(runs(idem), 1);
		ck_assert_uint_eq(metric0(w->s, "kreq_worker_poison_total{"), 0);
	} else {
		ck_assert_int_eq(kreq_future_status(f), KREQ_STATUS_POISON);
		ck_assert_int_eq(runs(idem), 0);
		ck_assert_uint_eq(metric0(w->s, "kreq_worker_poison_total{"), 1);
	}
	kreq_future_release(f);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}

/* A suspect (started once by a worker process that is gone) runs alone,
 * but one that hangs does so for at most worker.poison.solo.max.ms: the
 * request behind it on the partition is answered while it still runs. */
START_TEST(test_hanging_suspect_bounded)
{
	char nowhere[200];
	snprintf(nowhere, sizeof(nowhere), "%s.reply.none", prefix);
	kreq_test_worker_stop(worker_start()); /* creates the topics */
	send_call("svc.hang", "suspect", nowhere, 0);
	send_attempt("suspect", 1, 0x2222, 0x2222);
	kreq_test_running_t *w = worker_start_ex("1000");
	KREQ_TEST_AWAIT(hang_count() == 1, 30000);
	kreq_client_t *c = client_new();
	kreq_future_t *f = call(c, "svc.rec", "x", 1, "behind");
	int rc = kreq_future_wait(f, 15000);
	bool hanging = hang_count() == 1 && runs("suspect") == 1;
	hang_release();
	ck_assert_msg(rc == KREQ_OK, "the request behind a hanging suspect was not answered "
	                             "within 15 s (worker.poison.solo.max.ms 1000)");
	ck_assert(hanging);
	ck_assert_int_eq(kreq_future_status(f), 0);
	kreq_future_release(f);
	KREQ_TEST_AWAIT(committed(res_topic, "suspect") == 1, 30000);
	ck_assert_int_eq(runs("suspect"), 1);
	ck_assert_uint_eq(metric0(w->s, "kreq_worker_poison_total{"), 0);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

START_TEST(test_forged_attempts)
{
	forged_attempts(true);
}
END_TEST

START_TEST(test_genuine_attempts)
{
	forged_attempts(false);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("txn_faults");
	TCase *tc = tcase_create("real-kafka");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 240);
	tcase_add_test(tc, test_bad_reply_partition);
	tcase_add_test(tc, test_full_size_payloads);
	tcase_add_test(tc, test_result_too_large);
	tcase_add_test(tc, test_reply_topic_deleted);
	tcase_add_test(tc, test_no_topic_auto_creation);
	tcase_add_test(tc, test_rewinds_bounded);
	tcase_add_test(tc, test_cli_full_size_call);
	tcase_add_test(tc, test_forged_attempts);
	tcase_add_test(tc, test_genuine_attempts);
	tcase_add_test(tc, test_hanging_suspect_bounded);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
