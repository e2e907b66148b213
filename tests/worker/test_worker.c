/*
 * test_worker.c — the worker API end to end against a real Kafka broker,
 * driven by the real client: success and handler metadata, handler error,
 * unknown method, method ACL, deadline exceeded before start, cancel of a
 * running handler, dedup hit, conflict, a duplicate joining a running
 * request, forged/tampered/unknown-key/expired/garbage records, replay of a
 * valid record, the reply-topic allow-list, a restarted worker serving
 * stored results, and the light mode.
 *
 * Handlers here count their executions per idempotency key in memory, so a
 * test can assert that a handler ran exactly once.
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
#include "proto/envelope.h"
#include "worker.h"
#include "testsupport.h"

static const char *bootstrap;
static char prefix[64], req_topic[160];
static kreq_keyring_t *kr;

/* ---- handlers ----------------------------------------------------------- */

static atomic_int executions, cancelled_seen;
/* Written by the workers' loop threads (two workers run handlers at once
 * in some cases: TSan saw them race), read by the test: under last_lock. */
static pthread_mutex_t last_lock = PTHREAD_MUTEX_INITIALIZER;
static char last_traceparent[128], last_key_id[80];
static atomic_llong last_remaining;

/* The last echo's metadata field (field: last_traceparent or last_key_id)
 * equals want. */
static void expect_last(const char *field, const char *want)
{
	pthread_mutex_lock(&last_lock);
	char got[128];
	snprintf(got, sizeof(got), "%s", field);
	pthread_mutex_unlock(&last_lock);
	ck_assert_str_eq(got, want);
}

static void h_echo(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	atomic_fetch_add(&executions, 1);
	const char *tp = kreq_request_metadata(r, "traceparent");
	pthread_mutex_lock(&last_lock);
	snprintf(last_traceparent, sizeof(last_traceparent), "%s", tp ? tp : "");
	snprintf(last_key_id, sizeof(last_key_id), "%s", kreq_request_key_id(r));
	pthread_mutex_unlock(&last_lock);
	atomic_store(&last_remaining, (long long)kreq_request_remaining_ms(r));
	size_t len;
	const void *p = kreq_request_payload(r, &len);
	kreq_request_reply(r, 0, p, len, NULL);
}

static void h_fail(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	atomic_fetch_add(&executions, 1);
	kreq_request_reply(r, 503, NULL, 0, "out of widgets");
}

/* Runs until cancelled or 10 s (bounded), then replies. */
static void h_slow(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	atomic_fetch_add(&executions, 1);
	int64_t until = kreq_test_now_ms() + 10000;
	size_t len;
	const void *p = kreq_request_payload(r, &len);
	char num[16] = "";
	snprintf(num, sizeof(num), "%.*s", (int)(len < 15 ? len : 15), (const char *)p);
	int64_t stop_after = len ? atoi(num) : 10000; /* "300" = 300 ms */
	int64_t t0 = kreq_test_now_ms();
	while (!kreq_request_cancelled(r) && kreq_test_now_ms() < until &&
	       kreq_test_now_ms() - t0 < stop_after)
		kreq_test_poll_pause();
	if (kreq_request_cancelled(r)) {
		atomic_fetch_add(&cancelled_seen, 1);
		kreq_request_reply(r, KREQ_STATUS_CANCELLED, NULL, 0, "cancelled");
		return;
	}
	kreq_request_reply(r, 0, p, len, NULL);
}

/* Runs until the test opens the gate (bounded: 60 s), then echoes. */
static atomic_bool gate_open;

static void h_gate(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	atomic_fetch_add(&executions, 1);
	int64_t until = kreq_test_now_ms() + 60000;
	while (!atomic_load(&gate_open) && kreq_test_now_ms() < until)
		kreq_test_poll_pause();
	size_t len;
	const void *p = kreq_request_payload(r, &len);
	kreq_request_reply(r, 0, p, len, NULL);
}

/* ---- a worker on its own thread ----------------------------------------- */

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

static kreq_test_running_t *worker_start(const char *worker_id, const char *const *extra)
{
	kreq_conf_t *conf = base_conf(worker_id, extra);
	char err[512];
	kreq_worker_t *s = kreq_worker_new(conf, kr, "svc", err, sizeof(err));
	ck_assert_msg(s != NULL, "kreq_worker_new: %s", err);
	kreq_conf_destroy(conf);
	ck_assert_int_eq(kreq_worker_register(s, "svc.echo", h_echo, NULL, KREQ_HANDLER_INLINE),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_worker_register(s, "svc.fail", h_fail, NULL, 0), KREQ_OK);
	ck_assert_int_eq(kreq_worker_register(s, "svc.slow", h_slow, NULL, 0), KREQ_OK);
	ck_assert_int_eq(kreq_worker_register(s, "svc.gate", h_gate, NULL, 0), KREQ_OK);
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

static kreq_future_t *call(kreq_client_t *c, const char *method, const char *payload,
                           const char *idem, int64_t timeout_ms)
{
	kreq_call_opts_t *o = kreq_call_opts_new();
	ck_assert_int_eq(kreq_call_opts_set_timeout(o, timeout_ms), KREQ_OK);
	if (idem)
		ck_assert_int_eq(kreq_call_opts_set_idempotency_key(o, idem, strlen(idem)),
		                 KREQ_OK);
	kreq_future_t *f = NULL;
	int rc = kreq_client_call(c, method, payload, payload ? strlen(payload) : 0, o, &f);
	ck_assert_msg(rc == KREQ_OK, "kreq_client_call: %s", kreq_strerror(rc));
	kreq_call_opts_destroy(o);
	return f;
}

static void await(kreq_future_t *f)
{
	ck_assert_int_eq(kreq_future_wait(f, 60000), KREQ_OK);
}

static void expect_reply(kreq_future_t *f, int32_t status, const char *payload, bool dedup)
{
	await(f);
	ck_assert_msg(kreq_future_err(f) == (status > 0 && status < 100 ? KREQ_EREJECTED : KREQ_OK),
	              "err %s: %s", kreq_err_name(kreq_future_err(f)), kreq_future_errstr(f));
	ck_assert_int_eq(kreq_future_status(f), status);
	ck_assert_int_eq(kreq_future_from_dedup(f), dedup);
	if (payload) {
		size_t len;
		const void *p = kreq_future_payload(f, &len);
		ck_assert_uint_eq(len, strlen(payload));
		ck_assert(len == 0 || !memcmp(p, payload, len));
	}
	kreq_future_release(f);
}

static uint64_t handled(kreq_worker_t *s, const char *outcome)
{
	char series[128];
	snprintf(series, sizeof(series), "outcome=\"%s\"}", outcome);
	return kreq_test_worker_metric(s, series);
}

static uint64_t rejected(kreq_worker_t *s, const char *reason)
{
	char series[128];
	snprintf(series, sizeof(series), "reason=\"%s\"}", reason);
	return kreq_test_worker_metric(s, series);
}

/* ---- fixture ------------------------------------------------------------ */

static uint8_t k1_secret[32]; /* the worker's signing key (tenant keyrings verify with it) */

static void setup(void)
{
	bootstrap = kreq_test_bootstrap();
	kreq_test_topic_name(prefix, sizeof(prefix), "srv");
	snprintf(req_topic, sizeof(req_topic), "%s.svc.requests", prefix);
	kr = kreq_keyring_new();
	randombytes_buf(k1_secret, sizeof(k1_secret));
	ck_assert_int_eq(kreq_keyring_add(kr, "k1", KREQ_KEY_HMAC_SHA256, k1_secret, 32, NULL, 0),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_signing_key(kr, "k1"), KREQ_OK);
	atomic_store(&executions, 0);
	atomic_store(&cancelled_seen, 0);
	atomic_store(&gate_open, false);
}

static void teardown(void)
{
	kreq_keyring_release(kr);
}

/* ---- tests -------------------------------------------------------------- */

START_TEST(test_echo_and_context)
{
	kreq_test_running_t *w = worker_start("w1", NULL);
	kreq_client_t *c = client_new(NULL);
	kreq_call_opts_t *o = kreq_call_opts_new();
	const char *tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
	ck_assert_int_eq(kreq_call_opts_set_traceparent(o, tp), KREQ_OK);
	ck_assert_int_eq(kreq_call_opts_set_timeout(o, 30000), KREQ_OK);
	kreq_future_t *f = NULL;
	ck_assert_int_eq(kreq_client_call(c, "svc.echo", "hello", 5, o, &f), KREQ_OK);
	kreq_call_opts_destroy(o);
	expect_reply(f, 0, "hello", false);
	expect_last(last_traceparent, tp);
	expect_last(last_key_id, "k1");
	ck_assert(atomic_load(&last_remaining) > 0 && atomic_load(&last_remaining) <= 30000);
	expect_reply(call(c, "svc.fail", "x", NULL, 30000), 503, "", false);
	expect_reply(call(c, "svc.nosuch", "x", NULL, 30000), KREQ_STATUS_UNKNOWN_METHOD, NULL,
	             false);
	ck_assert_uint_eq(handled(w->s, "ok"), 1);
	ck_assert_uint_eq(handled(w->s, "error_status"), 1);
	ck_assert_uint_eq(handled(w->s, "unknown_method"), 1);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

START_TEST(test_dedup_conflict_and_restart)
{
	kreq_test_running_t *w = worker_start("w1", NULL);
	kreq_client_t *c = client_new(NULL);
	expect_reply(call(c, "svc.echo", "one", "order-17", 30000), 0, "one", false);
	expect_reply(call(c, "svc.echo", "one", "order-17", 30000), 0, "one", true);
	ck_assert_int_eq(atomic_load(&executions), 1);
	/* same key, other payload: an explicit error, not a silent hit */
	expect_reply(call(c, "svc.echo", "two", "order-17", 30000), KREQ_STATUS_CONFLICT, NULL,
	             false);
	ck_assert_uint_eq(handled(w->s, "dedup"), 1);
	ck_assert_uint_eq(handled(w->s, "conflict"), 1);
	kreq_test_worker_stop(w);
	kreq_client_destroy(c);

	/* a new worker and a new client: the stored result comes back from the
	 * results topic, the handler does not run again */
	w = worker_start("w2", NULL);
	c = client_new(NULL);
	expect_reply(call(c, "svc.echo", "one", "order-17", 30000), 0, "one", true);
	ck_assert_int_eq(atomic_load(&executions), 1);
	ck_assert_uint_ge(kreq_test_worker_metric(w->s, "kreq_worker_results_loaded_total{"), 1);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

START_TEST(test_join_running_duplicate)
{
	kreq_test_running_t *w = worker_start("w1", NULL);
	kreq_client_t *c = client_new(NULL);
	kreq_future_t *a = call(c, "svc.slow", "800", "same-key", 30000);
	KREQ_TEST_AWAIT(atomic_load(&executions) == 1, 30000);
	kreq_future_t *b = call(c, "svc.slow", "800", "same-key", 30000);
	expect_reply(a, 0, "800", false);
	expect_reply(b, 0, "800", true);
	ck_assert_int_eq(atomic_load(&executions), 1);
	ck_assert_uint_eq(handled(w->s, "joined"), 1);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

START_TEST(test_cancel_running)
{
	kreq_test_running_t *w = worker_start("w1", NULL);
	kreq_client_t *c = client_new(NULL);
	kreq_future_t *f = call(c, "svc.slow", NULL, NULL, 30000);
	KREQ_TEST_AWAIT(atomic_load(&executions) == 1, 30000);
	ck_assert_int_eq(kreq_future_cancel(f), KREQ_OK);
	ck_assert_int_eq(kreq_future_err(f), KREQ_ECANCELED);
	kreq_future_release(f);
	KREQ_TEST_AWAIT(atomic_load(&cancelled_seen) == 1, 30000);
	KREQ_TEST_AWAIT(handled(w->s, "cancelled") == 1, 30000);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

/* One handler thread: the second call waits in the queue behind the first;
 * cancelled there, it never runs. */
START_TEST(test_cancel_before_start)
{
	static const char *const extra[] = {"worker.handler.threads", "1", NULL};
	kreq_test_running_t *w = worker_start("w1", extra);
	kreq_client_t *c = client_new(NULL);
	kreq_future_t *first = call(c, "svc.slow", "1500", "first", 30000);
	KREQ_TEST_AWAIT(atomic_load(&executions) == 1, 30000);
	kreq_future_t *second = call(c, "svc.slow", "10", "second", 30000);
	KREQ_TEST_AWAIT(kreq_worker_in_flight(w->s) == 2, 30000); /* consumed, queued */
	ck_assert_int_eq(kreq_future_cancel(second), KREQ_OK);
	kreq_future_release(second);
	KREQ_TEST_AWAIT(kreq_test_worker_metric(w->s, "kreq_worker_cancels_total{") == 1, 30000);
	expect_reply(first, 0, "1500", false);
	KREQ_TEST_AWAIT(handled(w->s, "cancelled") == 1, 30000);
	ck_assert_int_eq(atomic_load(&executions), 1); /* the second never ran */
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

START_TEST(test_deadline_before_start)
{
	static const char *const extra[] = {"worker.min.budget.ms", "5000", NULL};
	kreq_test_running_t *w = worker_start("w1", extra);
	kreq_client_t *c = client_new(NULL);
	expect_reply(call(c, "svc.echo", "x", NULL, 4000), KREQ_STATUS_DEADLINE, NULL, false);
	ck_assert_int_eq(atomic_load(&executions), 0);
	ck_assert_uint_eq(handled(w->s, "deadline"), 1);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

START_TEST(test_method_acl)
{
	ck_assert_int_eq(kreq_keyring_set_methods(kr, "k1", "svc.fail"), KREQ_OK);
	kreq_test_running_t *w = worker_start("w1", NULL);
	kreq_client_t *c = client_new(NULL);
	expect_reply(call(c, "svc.echo", "x", NULL, 30000), KREQ_STATUS_DENIED, NULL, false);
	expect_reply(call(c, "svc.fail", "x", NULL, 30000), 503, NULL, false);
	ck_assert_uint_eq(handled(w->s, "denied"), 1);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

/* ---- records written straight to the request topic ---------------------- */

static rd_kafka_t *raw_producer(void)
{
	char err[512];
	rd_kafka_conf_t *rc = kreq_test_conf_new(bootstrap, "partitioner", "murmur2_random", NULL);
	rd_kafka_t *p = rd_kafka_new(RD_KAFKA_PRODUCER, rc, err, sizeof(err));
	ck_assert_msg(p != NULL, "%s", err);
	return p;
}

static void raw_send(rd_kafka_t *p, const void *buf, size_t len)
{
	/* keyed like seal_request's records: on the partition workers expect */
	ck_assert_int_eq(
	    rd_kafka_producev(p, RD_KAFKA_V_TOPIC(req_topic), RD_KAFKA_V_KEY("raw1", 4),
	                      RD_KAFKA_V_VALUE((void *)buf, len),
	                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END),
	    RD_KAFKA_RESP_ERR_NO_ERROR);
	ck_assert_int_eq(rd_kafka_flush(p, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

/* A sealed request as the client would send it. */
static void seal_request(kreq_keyring_t *with, const char *reply_topic, int64_t deadline_ms,
                         uint8_t **buf, size_t *len)
{
	static const uint8_t corr[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
	Kreq__Request q = KREQ__REQUEST__INIT;
	q.correlation_id = (ProtobufCBinaryData){16, (uint8_t *)corr};
	q.idempotency_key = (ProtobufCBinaryData){4, (uint8_t *)"raw1"};
	q.method = "svc.echo";
	q.service = "svc";
	q.payload = (ProtobufCBinaryData){3, (uint8_t *)"raw"};
	q.reply_topic = (char *)reply_topic;
	q.reply_partition = 0;
	q.issued_at_ms = deadline_ms - 60000;
	q.deadline_ms = deadline_ms;
	q.attempt = 1;
	q.client_id = "raw";
	kreq__limits_t lim = {1 << 20, 1 << 20, 30000};
	char err[256];
	ck_assert_int_eq(kreq__envelope_seal(with, &lim, KREQ__KIND_REQUEST, &q.base, buf, len, err,
	                                     sizeof(err)),
	                 KREQ_OK);
}

static uint64_t total_rejected(kreq_worker_t *s)
{
	static const char *const reasons[] = {"malformed", "bad_signature", "unknown_key",
	                                      "expired",   "reply_topic",   NULL};
	uint64_t n = 0;
	for (const char *const *r = reasons; *r; r++)
		n += rejected(s, *r);
	return n;
}

START_TEST(test_bad_records_and_replay)
{
	kreq_test_running_t *w = worker_start("w1", NULL);
	kreq_client_t *c = client_new(NULL); /* its reply topic is an allowed one */
	int32_t rp;
	const char *reply_topic = kreq_client_reply_topic(c, &rp);
	rd_kafka_t *p = raw_producer();
	uint8_t *buf;
	size_t len;
	/* garbage */
	raw_send(p, "not an envelope", 15);
	/* tampered: one byte flipped after signing */
	int64_t now_wall = (int64_t)time(NULL) * 1000;
	seal_request(kr, reply_topic, now_wall + 60000, &buf, &len);
	uint8_t *bad = malloc(len);
	memcpy(bad, buf, len);
	bad[len / 2] ^= 0x40;
	raw_send(p, bad, len);
	free(bad);
	/* valid, then replayed byte for byte within its deadline: dedup */
	raw_send(p, buf, len);
	raw_send(p, buf, len);
	free(buf);
	/* signed with a key the worker does not know */
	kreq_keyring_t *other = kreq_keyring_new();
	uint8_t key[32];
	randombytes_buf(key, 32);
	ck_assert_int_eq(kreq_keyring_add(other, "k-other", KREQ_KEY_HMAC_SHA256, key, 32, NULL, 0),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_signing_key(other, "k-other"), KREQ_OK);
	seal_request(other, reply_topic, now_wall + 60000, &buf, &len);
	raw_send(p, buf, len);
	free(buf);
	kreq_keyring_release(other);
	/* expired */
	seal_request(kr, reply_topic, now_wall - 1000, &buf, &len);
	raw_send(p, buf, len);
	free(buf);
	/* a reply topic outside the allow-list */
	seal_request(kr, "some.other.topic", now_wall + 60000, &buf, &len);
	raw_send(p, buf, len);
	free(buf);
	KREQ_TEST_AWAIT(total_rejected(w->s) == 5, 30000);
	ck_assert_uint_eq(rejected(w->s, "malformed"), 1);
	ck_assert_uint_eq(rejected(w->s, "unknown_key"), 1);
	ck_assert_uint_eq(rejected(w->s, "expired"), 1);
	ck_assert_uint_eq(rejected(w->s, "reply_topic"), 1);
	ck_assert_uint_eq(rejected(w->s, "bad_signature") + rejected(w->s, "malformed"), 2);
	/* served from the store, or, if the first was still in progress, dropped
	 * (its correlation id already gets that reply): either way the handler
	 * ran once */
	KREQ_TEST_AWAIT(kreq_test_worker_metric(w->s, "kreq_worker_dedup_hits_total{") +
	                        rejected(w->s, "duplicate") ==
	                    1,
	                30000);
	/* a replay dropped as a joiner is counted before the first one (whose
	 * start is recorded first: poison counting) completes */
	KREQ_TEST_AWAIT(handled(w->s, "ok") == 1, 30000);
	ck_assert_int_eq(atomic_load(&executions), 1);
	rd_kafka_destroy(p);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

START_TEST(test_light_mode)
{
	static const char *const extra[] = {"worker.mode", "light", NULL};
	kreq_test_running_t *w = worker_start("w1", extra);
	kreq_client_t *c = client_new(NULL);
	for (int i = 0; i < 20; i++)
		expect_reply(call(c, "svc.echo", "light", NULL, 30000), 0, "light", false);
	expect_reply(call(c, "svc.echo", "k", "light-key", 30000), 0, "k", false);
	expect_reply(call(c, "svc.echo", "k", "light-key", 30000), 0, "k", true);
	ck_assert_int_eq(atomic_load(&executions), 21);
	/* one call at a time never reaches worker.batch.threshold (32) */
	ck_assert_uint_eq(kreq_test_worker_metric(w->s, "kreq_worker_replies_batched_total{"), 0);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

/* worker.batch.threshold=1: every reply goes through the batching producer
 * (linger 5 ms here) and still arrives, once, with the stored result. */
START_TEST(test_light_batching)
{
	static const char *const extra[] = {
	    "worker.mode", "light", "worker.batch.threshold", "1", "worker.batch.linger.ms",
	    "5",           NULL};
	kreq_test_running_t *w = worker_start("w1", extra);
	kreq_client_t *c = client_new(NULL);
	for (int i = 0; i < 10; i++)
		expect_reply(call(c, "svc.echo", "batched", NULL, 30000), 0, "batched", false);
	ck_assert_uint_eq(kreq_test_worker_metric(w->s, "kreq_worker_replies_batched_total{"), 10);
	expect_reply(call(c, "svc.echo", "b", "batch-key", 30000), 0, "b", false);
	expect_reply(call(c, "svc.echo", "b", "batch-key", 30000), 0, "b", true);
	ck_assert_int_eq(atomic_load(&executions), 11);
	/* the dedup hit is answered at once, not batched */
	ck_assert_uint_eq(kreq_test_worker_metric(w->s, "kreq_worker_replies_batched_total{"), 11);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

/* A new client's first call is answered promptly: the worker looks up a
 * reply topic it has not written to before on first sight, instead of
 * leaving its producers to librdkafka 2.0's once-a-second scan of unknown
 * topics (which made every new client's first call take ~0.95 s, and
 * stalled the first burst the batching producer took as long). Both light
 * producers (threshold 1: replies on the batching one) and the
 * transactional one. Without the lookup a call waits 0-1 s, so three
 * clients in a row all under 600 ms would rarely pass. */
static void first_calls_prompt(const char *const *extra)
{
	kreq_test_running_t *w = worker_start("w1", extra);
	kreq_client_t *warm = client_new(NULL); /* the worker joins and serves */
	expect_reply(call(warm, "svc.echo", "warm", NULL, 30000), 0, "warm", false);
	for (int i = 0; i < 3; i++) {
		kreq_client_t *c = client_new(NULL);
		int64_t t0 = kreq_test_now_ms();
		expect_reply(call(c, "svc.echo", "first", NULL, 30000), 0, "first", false);
		int64_t took = kreq_test_now_ms() - t0;
		ck_assert_msg(took < 600, "new client %d: first call took %lld ms", i,
		              (long long)took);
		kreq_client_destroy(c);
	}
	kreq_client_destroy(warm);
	kreq_test_worker_stop(w);
}

START_TEST(test_new_client_first_call)
{
	static const char *const light[] = {"worker.mode", "light", "worker.batch.threshold", "1",
	                                    NULL};
	first_calls_prompt(light);
	first_calls_prompt(NULL);
}
END_TEST

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

static double process_cpu_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Light mode with worker.txn.batch.ms=0 commits offsets at every step and
 * still sleeps when idle: its loop used to poll with a zero timeout, a core
 * at 100% (~1000 ms of CPU a second; an idle worker uses a few). */
START_TEST(test_light_zero_batch_ms_sleeps)
{
	static const char *const extra[] = {
	    "worker.mode", "light", "worker.txn.batch.ms", "0", "worker.topic.partitions",
	    "2",           NULL};
	kreq_test_running_t *w = worker_start("w1", extra);
	kreq_client_t *c = client_new(NULL);
	for (int i = 0; i < 3; i++)
		expect_reply(call(c, "svc.echo", "zero", NULL, 30000), 0, "zero", false);
	char group[200];
	snprintf(group, sizeof(group), "%s.svc", prefix);
	KREQ_TEST_AWAIT(committed_sum(group, req_topic, 2) == 3, 20000);
	double cpu0 = process_cpu_ms();
	int64_t t0 = kreq_test_now_ms();
	while (kreq_test_now_ms() - t0 < 1000) /* a measurement window, not a wait */
		nanosleep(&(struct timespec){.tv_nsec = 50000000}, NULL);
	double used = process_cpu_ms() - cpu0;
	ck_assert_msg(used < 400, "idle worker used %.0f ms of CPU in 1 s", used);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

/* ---- flow control across rebalances ---------------------------------------- */

static uint64_t rebalances(kreq_test_running_t *w)
{
	return kreq_test_worker_metric(w->s, "kreq_worker_rebalances_total{");
}

/* n echo calls with their own keys (so over every partition), each
 * answered within 30 s. */
static void echo_everywhere(kreq_client_t *c, const char *tag, int n)
{
	kreq_future_t *f[32];
	char key[64];
	ck_assert_int_le(n, 32);
	for (int i = 0; i < n; i++) {
		snprintf(key, sizeof(key), "%s-%d", tag, i);
		f[i] = call(c, "svc.echo", key, key, 30000);
	}
	for (int i = 0; i < n; i++) {
		snprintf(key, sizeof(key), "%s-%d", tag, i);
		ck_assert_int_eq(kreq_future_wait(f[i], 60000), KREQ_OK);
		ck_assert_msg(kreq_future_err(f[i]) == KREQ_OK, "%s: %s", key,
		              kreq_future_errstr(f[i]));
		expect_reply(f[i], 0, key, false);
	}
}

typedef struct {
	kreq_test_running_t *a, *b;
	kreq_client_t *c;
	kreq_future_t *slow; /* the call that keeps a paused, 8 s */
} paused_join_t;

/* Worker a (conf: worker.max.in.flight 1 first) answers 12 calls, is
 * paused (flow control) by a slow call, and worker b (conf without its
 * first pair) joins; returns once both took part in the rebalance. */
static paused_join_t pause_a_then_join_b(const char *const *conf)
{
	paused_join_t p = {.a = worker_start("a", conf), .c = client_new(NULL)};
	echo_everywhere(p.c, "before", 12);
	uint64_t a0 = rebalances(p.a);
	p.slow = call(p.c, "svc.slow", "8000", NULL, 60000);
	KREQ_TEST_AWAIT(atomic_load(&executions) >= 13, 30000); /* a is at its limit: paused */
	p.b = worker_start("b", conf + 2);
	KREQ_TEST_AWAIT(rebalances(p.b) >= 1 && rebalances(p.a) > a0, 60000);
	return p;
}

/* Eager protocol: a's partitions are all revoked while a is paused and
 * half of them given back. librdkafka keeps an application's pause across
 * revocation and assignment: before the fix those partitions were never
 * fetched again and every call on them timed out (test_fault's rolling
 * restart by SIGKILL hung so, 1 run in 6). */
START_TEST(test_paused_partitions_reassigned_eager)
{
	static const char *const eager[] = {"worker.max.in.flight",
	                                    "1",
	                                    "worker.static.membership",
	                                    "false",
	                                    "kafka.partition.assignment.strategy",
	                                    "range",
	                                    NULL};
	paused_join_t p = pause_a_then_join_b(eager);
	echo_everywhere(p.c, "after", 24);
	expect_reply(p.slow, 0, "8000", false);
	kreq_client_destroy(p.c);
	kreq_test_worker_stop(p.b);
	kreq_test_worker_stop(p.a);
}
END_TEST

/* The same with the default cooperative protocol: b's join revokes half
 * of a's partitions while a is paused; a resumes the others; b leaves
 * (a dynamic member: at once) and a gets the revoked ones back. */
START_TEST(test_paused_partitions_reassigned_cooperative)
{
	static const char *const dyn[] = {"worker.max.in.flight", "1", "worker.static.membership",
	                                  "false", NULL};
	paused_join_t p = pause_a_then_join_b(dyn);
	expect_reply(p.slow, 0, "8000", false); /* a resumes what it kept */
	uint64_t a1 = rebalances(p.a);
	kreq_test_worker_stop(p.b);
	KREQ_TEST_AWAIT(rebalances(p.a) > a1, 60000); /* b's partitions come back to a */
	echo_everywhere(p.c, "after", 24);
	kreq_client_destroy(p.c);
	kreq_test_worker_stop(p.a);
}
END_TEST

/* svc.echo(payload), or NULL if the client refused it at submission with
 * KREQ_EUNAVAILABLE (its service check last saw no member). */
static kreq_future_t *call_unless_unavailable(kreq_client_t *c, const char *payload)
{
	kreq_call_opts_t *o = kreq_call_opts_new();
	ck_assert_int_eq(kreq_call_opts_set_timeout(o, 60000), KREQ_OK);
	kreq_future_t *f = NULL;
	int rc = kreq_client_call(c, "svc.echo", payload, strlen(payload), o, &f);
	kreq_call_opts_destroy(o);
	ck_assert_msg(rc == KREQ_OK || rc == KREQ_EUNAVAILABLE, "kreq_client_call: %s",
	              kreq_strerror(rc));
	return rc == KREQ_OK ? f : NULL;
}

/* A worker stopped by the fencing rule: KREQ_ECONF, naming the cause. */
static void expect_fenced_stop(kreq_test_running_t *w)
{
	char err[512];
	int rc = kreq_test_worker_reap(w, err, sizeof(err));
	ck_assert_msg(rc == KREQ_ECONF, "run returned %s: %s", kreq_err_name(rc), err);
	ck_assert_msg(strstr(err, "client.id") && strstr(err, "fenced"), "%s", err);
}

/* Two transactional workers given the same client.id share a
 * transactional.id and a group.instance.id, so each one's
 * init_transactions fences the other (and the group fences the older
 * member):
 * re-creating the producer after every fencing (as after any fatal error)
 * would make them fence each other forever. The third fencing within a
 * minute stops a worker with an error naming the cause, and every call
 * is answered until then. The other serves on, unless it reached its own
 * third fencing at the same moment (one through the producer, the other
 * through the group: 1 run in 10 on a loaded machine), and then it stops
 * too, naming the cause as well (documented: operations.md). */
START_TEST(test_duplicate_client_id)
{
	kreq_test_running_t *a = worker_start("dup", NULL);
	kreq_test_running_t *b = worker_start("dup", NULL);
	kreq_client_t *c = client_new(NULL);
	int64_t until = kreq_test_now_ms() + 120000;
	int calls = 0;
	while (!atomic_load(&a->done) && !atomic_load(&b->done)) {
		ck_assert_msg(kreq_test_now_ms() < until, "neither worker stopped in 120 s");
		/* both are static members with one group.instance.id: while the
		 * group hands it from one to the other it may list no member for
		 * a moment, and the client fails fast, at submission once its
		 * service check saw it, else on the future; a caller calls again */
		kreq_future_t *f = call_unless_unavailable(c, "dup");
		if (!f) {
			kreq_test_poll_pause();
			continue;
		}
		await(f);
		if (kreq_future_err(f) == KREQ_EUNAVAILABLE) {
			ck_assert_ptr_nonnull(strstr(kreq_future_errstr(f), "no members"));
			kreq_future_release(f);
			kreq_test_poll_pause();
			continue;
		}
		expect_reply(f, 0, "dup", false);
		calls++;
	}
	ck_assert_int_ge(calls, 1);
	kreq_test_running_t *stopped = atomic_load(&a->done) ? a : b;
	kreq_test_running_t *other = stopped == a ? b : a;
	expect_fenced_stop(stopped);
	/* the other takes over every partition and answers, or stops as well */
	for (int i = 0; i < 5;) {
		ck_assert_msg(kreq_test_now_ms() < until + 60000, "no reply after the takeover");
		if (atomic_load(&other->done)) {
			expect_fenced_stop(other);
			other = NULL;
			break;
		}
		kreq_future_t *f = call_unless_unavailable(c, "after");
		if (!f) { /* the service check's last look may predate the takeover */
			kreq_test_poll_pause();
			continue;
		}
		while (kreq_future_wait(f, 100) == KREQ_ETIMEDOUT && !atomic_load(&other->done))
			;
		if (!kreq_future_is_done(f)) { /* the other stopped meanwhile */
			kreq_future_release(f);
			continue;
		}
		if (kreq_future_err(f) == KREQ_EUNAVAILABLE) { /* rejoining, or stopping */
			kreq_future_release(f);
			kreq_test_poll_pause();
			continue;
		}
		expect_reply(f, 0, "after", false);
		i++;
	}
	kreq_client_destroy(c);
	if (other)
		kreq_test_worker_stop(other);
}
END_TEST

/* The fencing rule (broker/worker/txn.c) sees a resent request only through
 * the connection librdkafka closes first: kafka.socket.max.fails=0 (resend
 * on the same connection) is refused in transactional mode, naming why. */
START_TEST(test_socket_max_fails_0_refused)
{
	static const char *const extra[] = {"kafka.socket.max.fails", "0", NULL};
	kreq_conf_t *conf = base_conf("smf", extra);
	char err[512];
	kreq_worker_t *s = kreq_worker_new(conf, kr, "svc", err, sizeof(err));
	ck_assert_msg(s != NULL, "kreq_worker_new: %s", err);
	kreq_conf_destroy(conf);
	ck_assert_int_eq(kreq_worker_register(s, "svc.echo", h_echo, NULL, KREQ_HANDLER_INLINE),
	                 KREQ_OK);
	int rc = kreq_worker_run(s, err, sizeof(err)); /* refused while starting */
	ck_assert_msg(rc == KREQ_ECONF, "run returned %s: %s", kreq_err_name(rc), err);
	ck_assert_msg(strstr(err, "socket.max.fails"), "%s", err);
	kreq_worker_destroy(s);
}
END_TEST

/* worker.dedup.max.bytes: the oldest stored results leave memory first
 * (counted), the store stays within the limit, and retries of keys whose
 * results left are read back from the results topic: nothing runs again. */
START_TEST(test_dedup_memory_bound)
{
	static const char *const extra[] = {"worker.dedup.max.bytes", "1048576", NULL};
	kreq_test_running_t *w = worker_start("w1", extra);
	kreq_client_t *c = client_new(NULL);
	enum { N = 16, SIZE = 100000 };
	char *payload = malloc(SIZE + 1);
	char key[32];
	for (int i = 0; i < N; i++) {
		memset(payload, 'a' + i, SIZE);
		payload[SIZE] = 0;
		snprintf(key, sizeof(key), "big-%d", i);
		expect_reply(call(c, "svc.echo", payload, key, 30000), 0, payload, false);
	}
	ck_assert_int_eq(atomic_load(&executions), N);
	uint64_t ghosted = kreq_test_worker_metric(w->s, "kreq_worker_dedup_ghosted_total{");
	ck_assert_uint_ge(ghosted, N - 1048576 / SIZE);
	ck_assert_uint_le(kreq_test_worker_metric(w->s, "kreq_worker_dedup_bytes{"), 1048576);
	/* the newest result is still stored */
	snprintf(key, sizeof(key), "big-%d", N - 1);
	expect_reply(call(c, "svc.echo", payload, key, 30000), 0, payload, true);
	ck_assert_int_eq(atomic_load(&executions), N);
	/* the oldest left memory: its retry is read back, not run again */
	memset(payload, 'a', SIZE);
	expect_reply(call(c, "svc.echo", payload, "big-0", 30000), 0, payload, true);
	ck_assert_int_eq(atomic_load(&executions), N);
	ck_assert_uint_eq(kreq_test_worker_metric(w->s, "kreq_worker_dedup_read_back_total{"), 1);
	ck_assert_uint_eq(kreq_test_worker_metric(w->s, "kreq_worker_dedup_evicted_total{"), 0);
	free(payload);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

START_TEST(test_concurrency_limit_and_listing)
{
	static const char *const extra[] = {"worker.max.in.flight", "2", NULL};
	kreq_test_running_t *w = worker_start("w1", extra);
	kreq_client_t *c = client_new(NULL);
	kreq_future_t *f[8];
	for (int i = 0; i < 8; i++)
		f[i] = call(c, "svc.slow", "300", NULL, 60000);
	size_t most = 0;
	bool listed = false;
	while (kreq_future_wait_all(f, 8, 5) == KREQ_ETIMEDOUT) {
		size_t n = kreq_worker_in_flight(w->s);
		most = n > most ? n : most;
		if (!listed && n > 0) {
			char *json = NULL;
			ck_assert_int_eq(kreq_worker_in_progress_json(w->s, &json), KREQ_OK);
			listed = strstr(json, "\"method\":\"svc.slow\"") &&
			         strstr(json, "\"key_id\":\"k1\"");
			free(json);
		}
	}
	for (int i = 0; i < 8; i++)
		expect_reply(f[i], 0, "300", false);
	ck_assert_uint_le(most, 2);
	ck_assert_uint_ge(most, 1);
	ck_assert(listed);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

START_TEST(test_rate_limit)
{
	static const char *const extra[] = {"worker.rate.limit.per.key", "3", NULL};
	kreq_test_running_t *w = worker_start("w1", extra);
	kreq_client_t *c = client_new(NULL);
	kreq_future_t *f[12];
	for (int i = 0; i < 12; i++)
		f[i] = call(c, "svc.echo", "r", NULL, 30000);
	int ok = 0, limited = 0;
	for (int i = 0; i < 12; i++) {
		await(f[i]);
		if (kreq_future_err(f[i]) == KREQ_OK)
			ok++;
		else if (kreq_future_status(f[i]) == KREQ_STATUS_OVERLOADED)
			limited++;
		kreq_future_release(f[i]);
	}
	ck_assert_int_eq(ok + limited, 12);
	ck_assert_int_ge(limited, 1);
	ck_assert_int_ge(ok, 3);
	ck_assert_uint_eq(handled(w->s, "rate_limited"), (uint64_t)limited);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

START_TEST(test_keyring_replaced_while_serving)
{
	kreq_test_running_t *w = worker_start("w1", NULL);
	/* a second key, known only to the new keyring */
	kreq_keyring_t *next = kreq_keyring_new(), *caller = kreq_keyring_new();
	uint8_t k1[32], k2[32];
	randombytes_buf(k2, 32);
	ck_assert_int_eq(kreq_keyring_add(caller, "k2", KREQ_KEY_HMAC_SHA256, k2, 32, NULL, 0),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_signing_key(caller, "k2"), KREQ_OK);
	ck_assert_int_eq(kreq_keyring_add(next, "k2", KREQ_KEY_HMAC_SHA256, k2, 32, NULL, 0),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_signing_key(next, "k2"), KREQ_OK);
	(void)k1;
	kreq_keyring_t *saved = kr;
	kr = caller;
	kreq_client_t *c = client_new(NULL);
	kr = saved;
	/* before the swap the worker does not know k2: dropped, counted */
	kreq_future_t *f = call(c, "svc.echo", "before", NULL, 1500);
	await(f);
	ck_assert_int_eq(kreq_future_err(f), KREQ_ETIMEDOUT);
	kreq_future_release(f);
	KREQ_TEST_AWAIT(rejected(w->s, "unknown_key") >= 1, 30000);
	ck_assert_int_eq(kreq_worker_set_keyring(w->s, next), KREQ_OK);
	expect_reply(call(c, "svc.echo", "after", NULL, 30000), 0, "after", false);
	expect_last(last_key_id, "k2");
	kreq_client_destroy(c);
	kreq_keyring_release(next);
	kreq_keyring_release(caller);
	kreq_test_worker_stop(w);
}
END_TEST

/* API misuse gets an error, never a crash; a stop before run is kept. */
START_TEST(test_api_arguments)
{
	char err[512];
	kreq_conf_t *conf = base_conf("w1", NULL);
	ck_assert_ptr_null(kreq_worker_new(conf, kr, "bad service!", err, sizeof(err)));
	ck_assert_ptr_nonnull(strstr(err, "service"));
	ck_assert_ptr_null(kreq_worker_new(NULL, kr, "svc", err, sizeof(err)));
	ck_assert_int_eq(kreq_conf_set(conf, "signing.key.id", "k9", err, 512), KREQ_OK);
	ck_assert_ptr_null(kreq_worker_new(conf, kr, "svc", err, sizeof(err)));
	ck_assert_ptr_nonnull(strstr(err, "signing.key.id"));
	ck_assert_int_eq(kreq_conf_set(conf, "signing.key.id", "k1", err, 512), KREQ_OK);
	kreq_worker_t *s = kreq_worker_new(conf, kr, "svc", err, sizeof(err));
	ck_assert_ptr_nonnull(s);
	ck_assert_int_eq(kreq_worker_register(s, "other.echo", h_echo, NULL, 0), KREQ_EINVAL);
	ck_assert_int_eq(kreq_worker_register(s, "svc.echo", NULL, NULL, 0), KREQ_EINVAL);
	ck_assert_int_eq(kreq_worker_register(s, "svc.echo", h_echo, NULL, 0x80), KREQ_EINVAL);
	ck_assert_int_eq(kreq_worker_register(s, "svc.echo", h_echo, NULL, 0), KREQ_OK);
	ck_assert_int_eq(kreq_worker_register(s, "svc.echo", h_echo, NULL, 0), KREQ_EEXIST);
	ck_assert_uint_eq(kreq_worker_method_count(s), 1);
	ck_assert_str_eq(kreq_worker_method_name(s, 0), "svc.echo");
	ck_assert_ptr_null(kreq_worker_method_name(s, 1));
	ck_assert_str_eq(kreq_worker_name(s, KREQ_WORKER_REQUESTS_TOPIC), req_topic);
	ck_assert_ptr_nonnull(kreq_worker_name(s, KREQ_WORKER_TRANSACTIONAL_ID));
	ck_assert_int_eq(kreq_worker_set_keyring(s, NULL), KREQ_EINVAL);
	ck_assert_int_eq(kreq_request_reply(NULL, 0, NULL, 0, NULL), KREQ_EINVAL);
	/* stop before run: run returns at once, without Kafka */
	kreq_worker_stop(s);
	ck_assert_int_eq(kreq_worker_run(s, err, sizeof(err)), KREQ_OK);
	ck_assert_int_eq(kreq_worker_run(s, err, sizeof(err)), KREQ_ESTATE);
	ck_assert_int_eq(kreq_worker_register(s, "svc.late", h_echo, NULL, 0), KREQ_ESTATE);
	kreq_worker_destroy(s);
	kreq_conf_destroy(conf);
}
END_TEST

/* ---- topics the worker creates ------------------------------------------ */

static int partitions_of(rd_kafka_t *rk, const char *topic)
{
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
	const struct rd_kafka_metadata *md = NULL;
	ck_assert_int_eq(rd_kafka_metadata(rk, 0, rkt, &md, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
	int n = md->topics[0].err ? 0 : md->topics[0].partition_cnt;
	rd_kafka_metadata_destroy(md);
	rd_kafka_topic_destroy(rkt);
	return n;
}

static char *topic_config(rd_kafka_t *rk, const char *topic, const char *name)
{
	rd_kafka_ConfigResource_t *res =
	    rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic);
	rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
	rd_kafka_DescribeConfigs(rk, &res, 1, NULL, q);
	rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 15000);
	ck_assert_ptr_nonnull(ev);
	ck_assert_int_eq(rd_kafka_event_error(ev), RD_KAFKA_RESP_ERR_NO_ERROR);
	size_t n = 0, nc = 0;
	const rd_kafka_ConfigResource_t **rs = rd_kafka_DescribeConfigs_result_resources(
	    rd_kafka_event_DescribeConfigs_result(ev), &n);
	ck_assert_uint_eq(n, 1);
	const rd_kafka_ConfigEntry_t **ce = rd_kafka_ConfigResource_configs(rs[0], &nc);
	char *value = NULL;
	for (size_t i = 0; i < nc; i++)
		if (!strcmp(rd_kafka_ConfigEntry_name(ce[i]), name))
			value = strdup(rd_kafka_ConfigEntry_value(ce[i]));
	rd_kafka_event_destroy(ev);
	rd_kafka_queue_destroy(q);
	rd_kafka_ConfigResource_destroy(res);
	ck_assert_msg(value != NULL, "%s has no config %s", topic, name);
	return value;
}

/* The worker creates its topics itself, co-partitioned and the results
 * topic compacted with the dedup retention (never auto-created with the
 * broker's defaults). */
START_TEST(test_topics_created)
{
	static const char *const extra[] = {"worker.topic.partitions",
	                                    "3",
	                                    "worker.dedup.retention.ms",
	                                    "3600000",
	                                    "worker.max.deadline.ms",
	                                    "1800000",
	                                    "worker.max.request.age.ms",
	                                    "1800000",
	                                    NULL};
	kreq_test_running_t *w = worker_start("w1", extra);
	char err[512], res_topic[200];
	rd_kafka_conf_t *rc = kreq_test_conf_new(bootstrap, "group.id", "inspect", NULL);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, rc, err, sizeof(err));
	ck_assert_ptr_nonnull(rk);
	snprintf(res_topic, sizeof(res_topic), "%s.svc.results", prefix);
	ck_assert_int_eq(partitions_of(rk, req_topic), 3);
	ck_assert_int_eq(partitions_of(rk, res_topic), 3);
	char *policy = topic_config(rk, res_topic, "cleanup.policy");
	char *retention = topic_config(rk, res_topic, "retention.ms");
	ck_assert_str_eq(policy, "compact,delete");
	ck_assert_str_eq(retention, "3600000");
	free(policy);
	free(retention);
	rd_kafka_destroy(rk);
	kreq_test_worker_stop(w);
}
END_TEST

/* ---- replays of a running request (issue 16 items 7 and 13) ------------- */

/* A sealed svc.gate request with correlation id corr and idempotency key
 * idem, replying to (reply_topic, rp). */
static void seal_gate(const uint8_t corr[16], const char *idem, const char *reply_topic, int32_t rp,
                      uint8_t **buf, size_t *len)
{
	int64_t now = (int64_t)time(NULL) * 1000;
	Kreq__Request q = KREQ__REQUEST__INIT;
	q.correlation_id = (ProtobufCBinaryData){16, (uint8_t *)corr};
	q.idempotency_key = (ProtobufCBinaryData){strlen(idem), (uint8_t *)idem};
	q.method = "svc.gate";
	q.service = "svc";
	q.payload = (ProtobufCBinaryData){4, (uint8_t *)"gate"};
	q.reply_topic = (char *)reply_topic;
	q.reply_partition = rp;
	q.issued_at_ms = now;
	q.deadline_ms = now + 120000;
	q.attempt = 1;
	q.client_id = "raw";
	kreq__limits_t lim = {1 << 20, 1 << 20, 30000};
	char err[256];
	ck_assert_int_eq(
	    kreq__envelope_seal(kr, &lim, KREQ__KIND_REQUEST, &q.base, buf, len, err, sizeof(err)),
	    KREQ_OK);
}

/* Produces n copies of buf to partition 0 of the request topic, then flushes. */
static void raw_send_n(rd_kafka_t *p, const void *buf, size_t len, int n)
{
	for (int i = 0; i < n; i++) {
		rd_kafka_resp_err_t e;
		while (
		    (e = rd_kafka_producev(p, RD_KAFKA_V_TOPIC(req_topic), RD_KAFKA_V_PARTITION(0),
		                           RD_KAFKA_V_VALUE((void *)buf, len),
		                           RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
		                           RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
			rd_kafka_poll(p, 10);
		ck_assert_int_eq(e, RD_KAFKA_RESP_ERR_NO_ERROR);
	}
	ck_assert_int_eq(rd_kafka_flush(p, 30000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

/* Counts the committed replies on (topic, partition) whose key (the
 * correlation id) is corr, and those whose key starts with tag, up to the
 * partition's end (read_committed: what the worker committed). */
static void count_replies(const char *topic, int32_t partition, const uint8_t corr[16], uint8_t tag,
                          int *to_corr, int *to_tag)
{
	char err[512];
	rd_kafka_conf_t *rc =
	    kreq_test_conf_new(bootstrap, "group.id", "count-replies", "isolation.level",
	                       "read_committed", "enable.partition.eof", "true", NULL);
	rd_kafka_t *c = rd_kafka_new(RD_KAFKA_CONSUMER, rc, err, sizeof(err));
	ck_assert_msg(c != NULL, "%s", err);
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(l, topic, partition)->offset = RD_KAFKA_OFFSET_BEGINNING;
	ck_assert_int_eq(rd_kafka_assign(c, l), RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_topic_partition_list_destroy(l);
	*to_corr = *to_tag = 0;
	int64_t until = kreq_test_now_ms() + 60000;
	bool eof = false;
	while (!eof && kreq_test_now_ms() < until) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 100);
		if (!m)
			continue;
		if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
			eof = true;
		else if (!m->err && m->key_len == 16 && !memcmp(m->key, corr, 16))
			(*to_corr)++;
		else if (!m->err && m->key_len == 16 && ((const uint8_t *)m->key)[0] == tag)
			(*to_tag)++;
		rd_kafka_message_destroy(m);
	}
	ck_assert_msg(eof, "the reply topic was not read to its end");
	rd_kafka_consumer_close(c);
	rd_kafka_destroy(c);
}

/* 10k byte-for-byte replays of a running request's record get no reply of
 * their own (its correlation id is answered once, when it finishes), and
 * 100 replays under other correlation ids join it only up to the bound
 * (16): the rest are dropped and counted, nothing grows without bound.
 * Before: every replay joined (10,001 replies to the one correlation id,
 * 71 MB for 200k replays in the issue). */
START_TEST(test_replays_of_running_request_bounded)
{
	static const char *const extra[] = {"worker.topic.partitions", "1", NULL};
	kreq_test_running_t *w = worker_start("w1", extra);
	kreq_client_t *c = client_new(NULL);
	int32_t rp;
	const char *reply_topic = kreq_client_reply_topic(c, &rp);
	rd_kafka_t *p = raw_producer();
	uint8_t corr[16], *buf;
	size_t len;
	randombytes_buf(corr, sizeof(corr));
	corr[0] = 0xAA;
	seal_gate(corr, "victim", reply_topic, rp, &buf, &len);
	raw_send_n(p, buf, len, 1);
	KREQ_TEST_AWAIT(atomic_load(&executions) == 1, 30000); /* running, held at the gate */
	raw_send_n(p, buf, len, 10000);
	free(buf);
	for (int i = 0; i < 100; i++) { /* the same request under other correlation ids */
		uint8_t other[16];
		randombytes_buf(other, sizeof(other));
		other[0] = 0xBB;
		seal_gate(other, "victim", reply_topic, rp, &buf, &len);
		raw_send_n(p, buf, len, 1);
		free(buf);
	}
	/* one partition: once this call is answered every replay was consumed */
	expect_reply(call(c, "svc.echo", "after", NULL, 60000), 0, "after", false);
	size_t in_flight = kreq_worker_in_flight(w->s);
	ck_assert_msg(in_flight <= 1 + 16, "%zu requests and joiners in flight", in_flight);
	atomic_store(&gate_open, true);
	KREQ_TEST_AWAIT(handled(w->s, "ok") == 2, 60000);
	KREQ_TEST_AWAIT(kreq_worker_in_flight(w->s) == 0, 30000);
	int to_corr = 0, to_joiners = 0;
	count_replies(reply_topic, rp, corr, 0xBB, &to_corr, &to_joiners);
	ck_assert_msg(to_corr == 1, "%d replies to the replayed correlation id", to_corr);
	ck_assert_int_eq(to_joiners, 16);
	ck_assert_int_eq(atomic_load(&executions), 2); /* the gate once, the echo once */
	ck_assert_uint_eq(handled(w->s, "joined"), 16);
	ck_assert_uint_eq(rejected(w->s, "duplicate"), 10000);
	ck_assert_uint_eq(rejected(w->s, "join_limit"), 100 - 16);
	rd_kafka_destroy(p);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

/* Rate limiting comes after dedup: 20 retries of a stored result (and
 * so, dedup hits) leave the key's bucket alone, so the next new call still
 * runs. Before, the retries drained the bucket (worker.rate.limit.per.key
 * 2: the retries beyond the first got "overloaded", and so did the new
 * call). */
START_TEST(test_rate_limit_after_dedup)
{
	static const char *const extra[] = {"worker.rate.limit.per.key", "2", NULL};
	kreq_test_running_t *w = worker_start("w1", extra);
	kreq_client_t *c = client_new(NULL);
	expect_reply(call(c, "svc.echo", "r", "rated", 30000), 0, "r", false);
	enum { N = 20 };
	kreq_future_t *f[N];
	for (int i = 0; i < N; i++)
		f[i] = call(c, "svc.echo", "r", "rated", 30000);
	for (int i = 0; i < N; i++)
		expect_reply(f[i], 0, "r", true);
	expect_reply(call(c, "svc.echo", "fresh", NULL, 30000), 0, "fresh", false);
	ck_assert_uint_eq(handled(w->s, "rate_limited"), 0);
	ck_assert_uint_eq(handled(w->s, "dedup"), N);
	ck_assert_int_eq(atomic_load(&executions), 2);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

/* ---- tenants and the dedup memory budget (issue 16 item 4) -------------- */

/* Adds tenant key "ka" (limited to svc.echo) to the worker's keyring and
 * returns a client keyring that signs with it and knows k1 (which signs
 * the worker's replies). */
static kreq_keyring_t *tenant_a_keyring(void)
{
	uint8_t secret[32];
	randombytes_buf(secret, sizeof(secret));
	ck_assert_int_eq(kreq_keyring_add(kr, "ka", KREQ_KEY_HMAC_SHA256, secret, 32, NULL, 0),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_methods(kr, "ka", "svc.echo"), KREQ_OK);
	kreq_keyring_t *a = kreq_keyring_new();
	ck_assert_int_eq(kreq_keyring_add(a, "ka", KREQ_KEY_HMAC_SHA256, secret, 32, NULL, 0),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_add(a, "k1", KREQ_KEY_HMAC_SHA256, k1_secret, 32, NULL, 0),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_signing_key(a, "ka"), KREQ_OK);
	return a;
}

static kreq_client_t *client_with(kreq_keyring_t *with)
{
	kreq_keyring_t *saved = kr;
	kr = with;
	kreq_client_t *c = client_new(NULL);
	kr = saved;
	return c;
}

enum { BIG = 400000 };

/* Tenant A's n calls of BIG bytes, keys a-0 .. a-(n-1), each one running. */
static void tenant_a_fills(kreq_client_t *a, int n, char *payload)
{
	char key[32];
	for (int i = 0; i < n; i++) {
		memset(payload, 'a' + i, BIG);
		payload[BIG] = 0;
		snprintf(key, sizeof(key), "a-%d", i);
		expect_reply(call(a, "svc.echo", payload, key, 60000), 0, payload, false);
	}
}

/* The case: with worker.dedup.max.bytes 4 MiB, tenant A (a key
 * limited to svc.echo) makes 12 calls of 400 KB; tenant B's earlier result
 * must still be served to B's retry, and A's own oldest result, pushed out
 * of memory, is read back from the results topic: neither runs again.
 * Before: eviction was global and oldest first, B's result went first and
 * B's retry ran the handler again. */
START_TEST(test_tenant_cannot_evict_another)
{
	static const char *const extra[] = {"worker.dedup.max.bytes", "4194304", NULL};
	kreq_keyring_t *akr = tenant_a_keyring();
	kreq_test_running_t *w = worker_start("w1", extra);
	kreq_client_t *b = client_new(NULL), *a = client_with(akr);
	expect_reply(call(b, "svc.echo", "b's result", "b-1", 30000), 0, "b's result", false);
	char *payload = malloc(BIG + 1);
	tenant_a_fills(a, 12, payload);
	ck_assert_int_eq(atomic_load(&executions), 13);
	ck_assert_uint_le(kreq_test_worker_metric(w->s, "kreq_worker_dedup_bytes{"), 4194304);
	/* B's retry: still stored */
	expect_reply(call(b, "svc.echo", "b's result", "b-1", 30000), 0, "b's result", true);
	ck_assert_int_eq(atomic_load(&executions), 13);
	/* A's oldest left memory but not the results topic */
	memset(payload, 'a', BIG);
	expect_reply(call(a, "svc.echo", payload, "a-0", 60000), 0, payload, true);
	ck_assert_int_eq(atomic_load(&executions), 13);
	ck_assert_uint_ge(kreq_test_worker_metric(w->s, "kreq_worker_dedup_ghosted_total{"), 1);
	ck_assert_uint_eq(kreq_test_worker_metric(w->s, "kreq_worker_dedup_read_back_total{"), 1);
	ck_assert_uint_eq(kreq_test_worker_metric(w->s, "kreq_worker_dedup_evicted_total{"), 0);
	free(payload);
	kreq_client_destroy(a);
	kreq_client_destroy(b);
	kreq_test_worker_stop(w);
	kreq_keyring_release(akr);
}
END_TEST

/* worker.dedup.key.max.bytes: a key over its budget makes room among its
 * own results only (ghosts), long before the worker's total is reached;
 * its retries are read back, also after a restart (the rebuild records
 * each result's offset). */
START_TEST(test_key_budget_and_read_back_after_restart)
{
	static const char *const extra[] = {"worker.dedup.key.max.bytes", "1048576", NULL};
	kreq_keyring_t *akr = tenant_a_keyring();
	kreq_test_running_t *w = worker_start("w1", extra);
	kreq_client_t *a = client_with(akr);
	char *payload = malloc(BIG + 1);
	tenant_a_fills(a, 4, payload);
	memset(payload, 'a', BIG);
	expect_reply(call(a, "svc.echo", payload, "a-0", 60000), 0, payload, true);
	ck_assert_int_eq(atomic_load(&executions), 4);
	ck_assert_uint_ge(kreq_test_worker_metric(w->s, "kreq_worker_dedup_ghosted_total{"), 2);
	ck_assert_uint_le(kreq_test_worker_metric(w->s, "kreq_worker_dedup_bytes{"), 1048576);
	kreq_test_worker_stop(w);

	w = worker_start("w2", extra);
	for (int i = 0; i < 4; i++) { /* ghosts and results alike */
		char key[16];
		snprintf(key, sizeof(key), "a-%d", i);
		memset(payload, 'a' + i, BIG);
		expect_reply(call(a, "svc.echo", payload, key, 60000), 0, payload, true);
	}
	ck_assert_int_eq(atomic_load(&executions), 4);
	ck_assert_uint_ge(kreq_test_worker_metric(w->s, "kreq_worker_dedup_ghosted_total{"), 2);
	ck_assert_uint_ge(kreq_test_worker_metric(w->s, "kreq_worker_dedup_read_back_total{"), 2);
	free(payload);
	kreq_client_destroy(a);
	kreq_test_worker_stop(w);
	kreq_keyring_release(akr);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("worker");
	TCase *tc = tcase_create("e2e");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, test_api_arguments);
	tcase_add_test(tc, test_echo_and_context);
	tcase_add_test(tc, test_topics_created);
	tcase_add_test(tc, test_dedup_conflict_and_restart);
	tcase_add_test(tc, test_join_running_duplicate);
	tcase_add_test(tc, test_cancel_running);
	tcase_add_test(tc, test_cancel_before_start);
	tcase_add_test(tc, test_deadline_before_start);
	tcase_add_test(tc, test_method_acl);
	tcase_add_test(tc, test_bad_records_and_replay);
	tcase_add_test(tc, test_light_mode);
	tcase_add_test(tc, test_light_batching);
	tcase_add_test(tc, test_new_client_first_call);
	tcase_add_test(tc, test_light_zero_batch_ms_sleeps);
	tcase_add_test(tc, test_dedup_memory_bound);
	tcase_add_test(tc, test_concurrency_limit_and_listing);
	tcase_add_test(tc, test_rate_limit);
	tcase_add_test(tc, test_keyring_replaced_while_serving);
	tcase_add_test(tc, test_paused_partitions_reassigned_eager);
	tcase_add_test(tc, test_paused_partitions_reassigned_cooperative);
	suite_add_tcase(s, tc);
	/* issue 16: replays and tenants cannot exhaust the worker (CK_RUN_CASE=bounds) */
	TCase *tb = tcase_create("bounds");
	tcase_add_checked_fixture(tb, setup, teardown);
	tcase_set_timeout(tb, 180);
	tcase_add_test(tb, test_replays_of_running_request_bounded);
	tcase_add_test(tb, test_rate_limit_after_dedup);
	tcase_add_test(tb, test_tenant_cannot_evict_another);
	tcase_add_test(tb, test_key_budget_and_read_back_after_restart);
	suite_add_tcase(s, tb);
	/* two workers fencing each other: its own CTest, test_worker_fencing
	 * (tests/lsan-fencing.supp says why) */
	TCase *tf = tcase_create("fencing");
	tcase_add_checked_fixture(tf, setup, teardown);
	tcase_set_timeout(tf, 180);
	tcase_add_test(tf, test_duplicate_client_id);
	tcase_add_test(tf, test_socket_max_fails_0_refused);
	tcase_set_tags(tf, "fencing");
	suite_add_tcase(s, tf);
	return kreq_test_run_suite(s);
}
