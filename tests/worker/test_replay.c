/*
 * test_replay.c — the worker's bounds on where and when a signed request
 * may run, against a real Kafka broker (issue 16 items 3, 10 and 12):
 *   - one captured request produced to every partition of a 3-partition
 *     requests topic runs once and commits one Result; the copies on the
 *     partitions its idempotency key does not map to are dropped, counted;
 *   - a pending request replayed into another service's topic is dropped
 *     and counted there, never answered (the caller's call stays pending);
 *   - a deadline further out than worker.max.deadline.ms (INT64_MAX), a
 *     request issued a year ago and a version 1 request are dropped and
 *     counted;
 * and the configuration checks that go with them (no broker needed).
 */
#include <check.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/internal.h"
#include "common/partition.h"
#include "kreq/client.h"
#include "kreq/error.h"
#include "kreq/worker.h"
#include "proto/envelope.h"
#include "worker.h"
#include "testsupport.h"

static const char *bootstrap;
static char prefix[64], req_topic[160], res_topic[160];
static kreq_keyring_t *kr;
static atomic_int executions;

static void h_echo(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	atomic_fetch_add(&executions, 1);
	size_t len;
	const void *p = kreq_request_payload(r, &len);
	kreq_request_reply(r, 0, p, len, NULL);
}

static kreq_conf_t *base_conf(const char *client_id, const char *const *extra)
{
	kreq_conf_t *conf = kreq_conf_new();
	char err[512];
	ck_assert_int_eq(kreq_conf_set(conf, "kafka.bootstrap.servers", bootstrap, err, 512),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "topic.prefix", prefix, err, 512), KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "client.id", client_id, err, 512), KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "log.level", "3", err, 512), KREQ_OK);
	for (; extra && *extra; extra += 2)
		ck_assert_msg(kreq_conf_set(conf, extra[0], extra[1], err, 512) == KREQ_OK,
		              "%s: %s", extra[0], err);
	return conf;
}

/* A worker of service svc (svc.echo) on a requests topic of 3 partitions. */
static kreq_test_running_t *worker_start(void)
{
	static const char *const extra[] = {"worker.topic.partitions", "3", NULL};
	kreq_conf_t *conf = base_conf("w1", extra);
	char err[512];
	kreq_worker_t *s = kreq_worker_new(conf, kr, "svc", err, sizeof(err));
	ck_assert_msg(s != NULL, "kreq_worker_new: %s", err);
	kreq_conf_destroy(conf);
	ck_assert_int_eq(kreq_worker_register(s, "svc.echo", h_echo, NULL, KREQ_HANDLER_INLINE),
	                 KREQ_OK);
	return kreq_test_worker_start(s);
}

static kreq_client_t *client_new(const char *const *extra)
{
	char id[64], err[512];
	snprintf(id, sizeof(id), "cl-%u", randombytes_uniform(1000000));
	kreq_conf_t *conf = base_conf(id, extra);
	kreq_client_t *c = kreq_client_new(conf, kr, err, sizeof(err));
	ck_assert_msg(c != NULL, "kreq_client_new: %s", err);
	kreq_conf_destroy(conf);
	return c;
}

static uint64_t rejected(kreq_worker_t *s, const char *reason)
{
	char series[128];
	snprintf(series, sizeof(series), "reason=\"%s\"}", reason);
	return kreq_test_worker_metric(s, series);
}

static uint64_t handled(kreq_worker_t *s, const char *outcome)
{
	char series[128];
	snprintf(series, sizeof(series), "outcome=\"%s\"}", outcome);
	return kreq_test_worker_metric(s, series);
}

/* ---- raw records --------------------------------------------------------- */

static rd_kafka_t *raw_producer(void)
{
	char err[512];
	rd_kafka_conf_t *rc = kreq_test_conf_new(bootstrap, "partitioner", "murmur2_random", NULL);
	rd_kafka_t *p = rd_kafka_new(RD_KAFKA_PRODUCER, rc, err, sizeof(err));
	ck_assert_msg(p != NULL, "%s", err);
	return p;
}

/* To partition (RD_KAFKA_PARTITION_UA: where the key maps to). */
static void raw_send(rd_kafka_t *p, const char *topic, int32_t partition, const void *key,
                     size_t key_len, const void *buf, size_t len)
{
	ck_assert_int_eq(
	    rd_kafka_producev(p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
	                      RD_KAFKA_V_KEY((void *)key, key_len),
	                      RD_KAFKA_V_VALUE((void *)buf, len),
	                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END),
	    RD_KAFKA_RESP_ERR_NO_ERROR);
	ck_assert_int_eq(rd_kafka_flush(p, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

/* A request for svc.echo as a client signs it, with the given times. */
static void seal_request(const char *idem, const char *reply_topic, int64_t issued_ms,
                         int64_t deadline_ms, uint8_t **buf, size_t *len)
{
	uint8_t corr[16];
	randombytes_buf(corr, sizeof(corr));
	Kreq__Request q = KREQ__REQUEST__INIT;
	q.correlation_id = (ProtobufCBinaryData){16, corr};
	q.idempotency_key = (ProtobufCBinaryData){strlen(idem), (uint8_t *)idem};
	q.method = "svc.echo";
	q.service = "svc";
	q.payload = (ProtobufCBinaryData){3, (uint8_t *)"raw"};
	q.reply_topic = (char *)reply_topic;
	q.issued_at_ms = issued_ms;
	q.deadline_ms = deadline_ms;
	q.attempt = 1;
	q.client_id = "raw";
	kreq__limits_t lim = {1 << 20, 1 << 20, 30000};
	char err[256];
	ck_assert_int_eq(
	    kreq__envelope_seal(kr, &lim, KREQ__KIND_REQUEST, &q.base, buf, len, err, sizeof(err)),
	    KREQ_OK);
}

/* The same request as a version 1 client would send it: no service, the
 * version 1 signature prefix. */
static void seal_request_v1(const char *idem, const char *reply_topic, uint8_t **buf, size_t *len)
{
	uint8_t corr[16], body[512], sig[32], hdr[KREQ__SIG_HDR_MAX];
	randombytes_buf(corr, sizeof(corr));
	int64_t now = kreq__now_ms();
	Kreq__Request q = KREQ__REQUEST__INIT;
	q.correlation_id = (ProtobufCBinaryData){16, corr};
	q.idempotency_key = (ProtobufCBinaryData){strlen(idem), (uint8_t *)idem};
	q.method = "svc.echo";
	q.payload = (ProtobufCBinaryData){3, (uint8_t *)"raw"};
	q.reply_topic = (char *)reply_topic;
	q.issued_at_ms = now;
	q.deadline_ms = now + 60000;
	q.attempt = 1;
	size_t blen = protobuf_c_message_pack(&q.base, body);
	const kreq__key_t *k = kreq__keyring_signer(kr);
	size_t hlen = kreq__sig_header(hdr, 1, k->id, k->id_len, KREQ__KIND_REQUEST, blen);
	kreq__hmac(k->hmac, hdr, hlen, body, blen, sig);
	Kreq__Envelope env = KREQ__ENVELOPE__INIT;
	env.version = 1;
	env.key_id = (char *)k->id;
	env.kind = KREQ__KIND_REQUEST;
	env.body = (ProtobufCBinaryData){blen, body};
	env.signature = (ProtobufCBinaryData){sizeof(sig), sig};
	*len = kreq__envelope__get_packed_size(&env);
	*buf = malloc(*len);
	kreq__envelope__pack(&env, *buf);
}

/* Sum of the committed offsets of group on topic's n partitions. */
static int64_t committed_sum(const char *group, const char *topic, int n)
{
	char err[512];
	rd_kafka_conf_t *rc = kreq_test_conf_new(bootstrap, "group.id", group, NULL);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, rc, err, sizeof(err));
	ck_assert_ptr_nonnull(rk);
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
	for (int p = 0; p < n; p++)
		rd_kafka_topic_partition_list_add(l, topic, p);
	int64_t sum = 0;
	if (rd_kafka_committed(rk, l, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR)
		for (int p = 0; p < n; p++)
			sum += l->elems[p].offset > 0 ? l->elems[p].offset : 0;
	rd_kafka_topic_partition_list_destroy(l);
	rd_kafka_destroy(rk);
	return sum;
}

/* Committed records on every partition of topic (n partitions), read with
 * read_committed up to each partition's end. */
static int committed_records(const char *topic, int n)
{
	char err[512];
	rd_kafka_conf_t *rc =
	    kreq_test_conf_new(bootstrap, "group.id", "kreq-test-reader", "isolation.level",
	                       "read_committed", "enable.partition.eof", "true", NULL);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, rc, err, sizeof(err));
	ck_assert_ptr_nonnull(rk);
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
	for (int p = 0; p < n; p++)
		rd_kafka_topic_partition_list_add(l, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
	ck_assert_int_eq(rd_kafka_assign(rk, l), RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_topic_partition_list_destroy(l);
	int records = 0, eofs = 0;
	int64_t until = kreq_test_now_ms() + 30000;
	while (eofs < n) {
		ck_assert_msg(kreq_test_now_ms() < until, "%s not read to its end in 30 s", topic);
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
		if (!m)
			continue;
		if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
			eofs++;
		else if (!m->err)
			records++;
		rd_kafka_message_destroy(m);
	}
	rd_kafka_destroy(rk);
	return records;
}

/* ---- fixture ------------------------------------------------------------- */

static void setup(void)
{
	bootstrap = kreq_test_bootstrap();
	kreq_test_topic_name(prefix, sizeof(prefix), "rpl");
	snprintf(req_topic, sizeof(req_topic), "%s.svc.requests", prefix);
	snprintf(res_topic, sizeof(res_topic), "%s.svc.results", prefix);
	kr = kreq_keyring_new();
	uint8_t key[32];
	randombytes_buf(key, sizeof(key));
	ck_assert_int_eq(kreq_keyring_add(kr, "k1", KREQ_KEY_HMAC_SHA256, key, 32, NULL, 0),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_signing_key(kr, "k1"), KREQ_OK);
	atomic_store(&executions, 0);
}

static void teardown(void)
{
	kreq_keyring_release(kr);
}

/* ---- tests --------------------------------------------------------------- */

/* One captured request, produced byte for byte to all 3 partitions: it
 * runs once, one Result commits, the two copies on partitions its key does
 * not map to are dropped and counted. */
START_TEST(test_replay_onto_other_partitions)
{
	kreq_test_running_t *w = worker_start();
	kreq_client_t *c = client_new(NULL); /* an allowed reply topic */
	const char *reply_topic = kreq_client_reply_topic(c, NULL);
	int64_t now = kreq__now_ms();
	uint8_t *buf;
	size_t len;
	seal_request("replayed-everywhere", reply_topic, now, now + 60000, &buf, &len);
	rd_kafka_t *p = raw_producer();
	for (int32_t part = 0; part < 3; part++)
		raw_send(p, req_topic, part, "replayed-everywhere", 19, buf, len);
	free(buf);
	char group[200];
	snprintf(group, sizeof(group), "%s.svc", prefix);
	/* all three records handled and their offsets committed */
	KREQ_TEST_AWAIT(committed_sum(group, req_topic, 3) == 3, 60000);
	int runs = atomic_load(&executions);
	ck_assert_int_eq(runs, 1);
	ck_assert_int_eq(committed_records(res_topic, 3), 1);
	ck_assert_uint_eq(handled(w->s, "ok"), 1);
	ck_assert_uint_eq(rejected(w->s, "partition"), 2);
	rd_kafka_destroy(p);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

/* A call to service "other" (no worker there yet) is captured from its
 * topic and replayed into svc's topic: svc's worker drops it, counted, and
 * does not answer it, so the caller's call is still pending (it used to be
 * failed with "unknown method"). */
START_TEST(test_replay_into_other_service)
{
	char other_topic[200];
	snprintf(other_topic, sizeof(other_topic), "%s.other.requests", prefix);
	kreq_test_create_topic(bootstrap, other_topic, 1, 30000);
	kreq_test_running_t *w = worker_start();
	static const char *const no_check[] = {"service.check.ms", "0", NULL};
	kreq_client_t *c = client_new(no_check);
	kreq_call_opts_t *o = kreq_call_opts_new();
	ck_assert_int_eq(kreq_call_opts_set_timeout(o, 120000), KREQ_OK);
	kreq_future_t *f = NULL;
	/* a method whose service no worker can have is refused at once */
	ck_assert_int_eq(kreq_client_call(c, "a/b.echo", "x", 1, o, &f), KREQ_EINVAL);
	ck_assert_int_eq(kreq_client_call(c, ".echo", "x", 1, o, &f), KREQ_EINVAL);
	ck_assert_int_eq(kreq_client_call(c, "other.echo", "x", 1, o, &f), KREQ_OK);
	kreq_call_opts_destroy(o);
	/* capture it */
	char err[512];
	rd_kafka_conf_t *rc = kreq_test_conf_new(bootstrap, "group.id", "kreq-test-capture", NULL);
	rd_kafka_t *cons = rd_kafka_new(RD_KAFKA_CONSUMER, rc, err, sizeof(err));
	ck_assert_ptr_nonnull(cons);
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(l, other_topic, 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
	ck_assert_int_eq(rd_kafka_assign(cons, l), RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_topic_partition_list_destroy(l);
	rd_kafka_message_t *m = NULL;
	int64_t until = kreq_test_now_ms() + 30000;
	while (!m || m->err) {
		if (m)
			rd_kafka_message_destroy(m);
		ck_assert_msg(kreq_test_now_ms() < until, "the call was not captured in 30 s");
		m = rd_kafka_consumer_poll(cons, 100);
	}
	/* replayed where the key maps on svc's topic, so only the service differs */
	rd_kafka_t *p = raw_producer();
	raw_send(p, req_topic, RD_KAFKA_PARTITION_UA, m->key, m->key_len, m->payload, m->len);
	rd_kafka_message_destroy(m);
	rd_kafka_destroy(cons);
	/* once the record is handled and committed, nothing was sent to the
	 * caller (a reply commits with the offset): its call is still pending */
	char group[200];
	snprintf(group, sizeof(group), "%s.svc", prefix);
	KREQ_TEST_AWAIT(committed_sum(group, req_topic, 3) == 1, 60000);
	ck_assert_msg(kreq_future_wait(f, 1000) == KREQ_ETIMEDOUT, "the call was answered: %s",
	              kreq_future_errstr(f));
	ck_assert_uint_eq(handled(w->s, "unknown_method"), 0);
	ck_assert_uint_eq(rejected(w->s, "service"), 1);
	ck_assert_int_eq(kreq_future_cancel(f), KREQ_OK);
	kreq_future_release(f);
	rd_kafka_destroy(p);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

/* The worker's own bounds on the replay window: a deadline of INT64_MAX
 * and a request issued a year ago are dropped and counted, never run. */
START_TEST(test_replay_window_bounds)
{
	kreq_test_running_t *w = worker_start();
	kreq_client_t *c = client_new(NULL);
	const char *reply_topic = kreq_client_reply_topic(c, NULL);
	rd_kafka_t *p = raw_producer();
	int64_t now = kreq__now_ms();
	uint8_t *buf;
	size_t len;
	seal_request("far-deadline", reply_topic, now, INT64_MAX, &buf, &len);
	raw_send(p, req_topic, RD_KAFKA_PARTITION_UA, "far-deadline", 12, buf, len);
	free(buf);
	seal_request("year-old", reply_topic, now - 365LL * 86400000, now + 60000, &buf, &len);
	raw_send(p, req_topic, RD_KAFKA_PARTITION_UA, "year-old", 8, buf, len);
	free(buf);
	/* a version 1 request (no signed service): refused, counted */
	seal_request_v1("version-1", reply_topic, &buf, &len);
	raw_send(p, req_topic, RD_KAFKA_PARTITION_UA, "version-1", 9, buf, len);
	free(buf);
	/* a request inside the window runs */
	seal_request("in-window", reply_topic, now, now + 60000, &buf, &len);
	raw_send(p, req_topic, RD_KAFKA_PARTITION_UA, "in-window", 9, buf, len);
	free(buf);
	char group[200];
	snprintf(group, sizeof(group), "%s.svc", prefix);
	KREQ_TEST_AWAIT(committed_sum(group, req_topic, 3) == 4, 60000);
	int runs = atomic_load(&executions);
	ck_assert_int_eq(runs, 1);
	ck_assert_uint_eq(handled(w->s, "ok"), 1);
	ck_assert_uint_eq(rejected(w->s, "version"), 1);
	ck_assert_uint_eq(rejected(w->s, "deadline_too_far"), 1);
	ck_assert_uint_eq(rejected(w->s, "too_old"), 1);
	rd_kafka_destroy(p);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

/* ---- configuration (no broker needed) ------------------------------------ */

/* worker.dedup.retention.ms must cover the whole replay window. */
START_TEST(test_conf_retention_covers_window)
{
	kreq_conf_t *conf = kreq_conf_new();
	char err[512] = "";
	ck_assert_int_eq(kreq_conf_set(conf, "kafka.bootstrap.servers", "127.0.0.1:1", err, 512),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "worker.dedup.retention.ms", "3600000", err, 512),
	                 KREQ_OK);
	kreq_worker_t *s = kreq_worker_new(conf, kr, "svc", err, sizeof(err));
	ck_assert_ptr_null(s);
	ck_assert_msg(strstr(err, "worker.dedup.retention.ms (3600000) must be at least "
	                          "worker.max.deadline.ms (86400000) + worker.max.request.age.ms "
	                          "(86400000)") != NULL,
	              "%s", err);
	ck_assert_int_eq(kreq_conf_set(conf, "worker.max.deadline.ms", "1800000", err, 512),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "worker.max.request.age.ms", "1800000", err, 512),
	                 KREQ_OK);
	s = kreq_worker_new(conf, kr, "svc", err, sizeof(err));
	ck_assert_msg(s != NULL, "%s", err);
	kreq_worker_destroy(s);
	kreq_conf_destroy(conf);
}
END_TEST

/* Requests are partitioned by murmur2 of their idempotency key: a client
 * refuses another kafka.partitioner instead of sending requests workers
 * would drop. */
START_TEST(test_conf_partitioner_refused)
{
	kreq_conf_t *conf = kreq_conf_new();
	char err[512] = "";
	ck_assert_int_eq(kreq_conf_set(conf, "kafka.bootstrap.servers", "127.0.0.1:1", err, 512),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "kafka.partitioner", "consistent_random", err, 512),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "client.start.timeout.ms", "100", err, 512), KREQ_OK);
	kreq_client_t *c = kreq_client_new(conf, kr, err, sizeof(err));
	ck_assert_ptr_null(c);
	ck_assert_msg(strstr(err, "kafka.partitioner=consistent_random") != NULL, "%s", err);
	kreq_conf_destroy(conf);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("replay");
	TCase *conf = tcase_create("conf");
	tcase_add_checked_fixture(conf, setup, teardown);
	tcase_add_test(conf, test_conf_retention_covers_window);
	tcase_add_test(conf, test_conf_partitioner_refused);
	suite_add_tcase(s, conf);
	TCase *tc = tcase_create("kafka");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, test_replay_onto_other_partitions);
	tcase_add_test(tc, test_replay_into_other_service);
	tcase_add_test(tc, test_replay_window_bounds);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
