/*
 * test_handler.c — what a handler holds, against a real Kafka broker:
 *
 *   - a handler that replies twice: the second reply is refused
 *     (KREQ_ESTATE) and never reaches the request that reused the worker's
 *     memory (issue 16, item 9: it used to answer another caller, then crash
 *     the worker);
 *   - a handler that never replies: past its deadline + worker.handler.
 *     grace.ms the worker answers status 2, stores it (a retry gets it, the
 *     handler does not run again), commits the partition past it (a
 *     restarted worker redoes nothing) and refuses the late reply (item 13).
 */
#include <check.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "kreq/client.h"
#include "kreq/error.h"
#include "kreq/worker.h"
#include "worker.h"
#include "testsupport.h"

static const char *bootstrap;
static char prefix[64], req_topic[160], group[200];
static kreq_keyring_t *kr;

/* ---- handlers ----------------------------------------------------------- */

static atomic_int echoes, holds_started, twice_runs, never_runs;
static atomic_bool twice_done, release_holds;
static atomic_int second_rc = 1, first_rc = 1;
static atomic_bool stale_method_null, stale_cancelled;
static kreq_request_t *_Atomic never_handle;

static void h_echo(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	atomic_fetch_add(&echoes, 1);
	size_t len;
	const void *p = kreq_request_payload(r, &len);
	kreq_request_reply(r, 0, p, len, NULL);
}

/* Holds its request until the double reply happened (bounded), then
 * echoes: the memory the first reply freed is in use here meanwhile. */
static void h_hold(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	atomic_fetch_add(&holds_started, 1);
	int64_t until = kreq_test_now_ms() + 20000;
	while (!atomic_load(&twice_done) && !atomic_load(&release_holds) &&
	       kreq_test_now_ms() < until)
		kreq_test_poll_pause();
	size_t len;
	const void *p = kreq_request_payload(r, &len);
	kreq_request_reply(r, 0, p, len, NULL);
}

/* Replies, waits until another request holds the worker's recycled
 * request memory (bounded), then replies again with the same handle. */
static void h_twice(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	atomic_fetch_add(&twice_runs, 1);
	int before = atomic_load(&holds_started);
	atomic_store(&first_rc, kreq_request_reply(r, 0, "first", 5, NULL));
	int64_t until = kreq_test_now_ms() + 20000;
	while (atomic_load(&holds_started) == before && kreq_test_now_ms() < until)
		kreq_test_poll_pause();
	atomic_store(&second_rc, kreq_request_reply(r, 0, "second", 6, NULL));
	atomic_store(&stale_method_null, kreq_request_method(r) == NULL);
	atomic_store(&stale_cancelled, kreq_request_cancelled(r));
	atomic_store(&twice_done, true);
}

/* Never replies: keeps the handle for the test to reply late. */
static void h_never(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	atomic_fetch_add(&never_runs, 1);
	atomic_store(&never_handle, r);
}

/* ---- set-up ------------------------------------------------------------- */

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
	ck_assert_int_eq(kreq_worker_register(s, "svc.hold", h_hold, NULL, 0), KREQ_OK);
	ck_assert_int_eq(kreq_worker_register(s, "svc.twice", h_twice, NULL, 0), KREQ_OK);
	ck_assert_int_eq(kreq_worker_register(s, "svc.never", h_never, NULL, 0), KREQ_OK);
	return kreq_test_worker_start(s);
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

static kreq_future_t *call(kreq_client_t *c, const char *method, const char *payload,
                           const char *idem, int64_t timeout_ms)
{
	kreq_call_opts_t *o = kreq_call_opts_new();
	ck_assert_int_eq(kreq_call_opts_set_timeout(o, timeout_ms), KREQ_OK);
	if (idem)
		ck_assert_int_eq(kreq_call_opts_set_idempotency_key(o, idem, strlen(idem)),
		                 KREQ_OK);
	kreq_future_t *f = NULL;
	int rc = kreq_client_call(c, method, payload, strlen(payload), o, &f);
	ck_assert_msg(rc == KREQ_OK, "kreq_client_call: %s", kreq_strerror(rc));
	kreq_call_opts_destroy(o);
	return f;
}

static void expect_reply(kreq_future_t *f, int32_t status, const char *payload, bool dedup)
{
	ck_assert_int_eq(kreq_future_wait(f, 60000), KREQ_OK);
	ck_assert_msg(kreq_future_err(f) == (status > 0 && status < 100 ? KREQ_EREJECTED : KREQ_OK),
	              "err %s: %s", kreq_err_name(kreq_future_err(f)), kreq_future_errstr(f));
	ck_assert_msg(kreq_future_status(f) == status, "status %d, want %d (%s)",
	              kreq_future_status(f), status, kreq_future_errstr(f));
	ck_assert_int_eq(kreq_future_from_dedup(f), dedup);
	size_t len;
	const char *p = kreq_future_payload(f, &len);
	ck_assert_msg(len == strlen(payload) && (len == 0 || !memcmp(p, payload, len)),
	              "payload \"%.*s\", want \"%s\"", (int)len, p ? p : "", payload);
	kreq_future_release(f);
}

static uint64_t handled(kreq_worker_t *s, const char *outcome)
{
	char series[128];
	snprintf(series, sizeof(series), "outcome=\"%s\"}", outcome);
	return kreq_test_worker_metric(s, series);
}

/* kreq_client_late_replies_total of c: verified replies that came after
 * their call settled. */
static uint64_t client_late_replies(kreq_client_t *c)
{
	char *text = NULL;
	ck_assert_int_eq(kreq_client_metrics_text(c, &text), KREQ_OK);
	const char *at = strstr(text, "\nkreq_client_late_replies_total{");
	unsigned long long v = 0;
	ck_assert_ptr_nonnull(at);
	at = strchr(at, '}');
	ck_assert_int_eq(sscanf(at + 1, " %llu", &v), 1);
	free(text);
	return v;
}

/* Whether the group's committed offset of partition 0 has reached the end
 * of the requests topic (every record there is finished for good). */
static bool committed_to_end(void)
{
	char err[512];
	rd_kafka_conf_t *rc = kreq_test_conf_new(bootstrap, "group.id", group, NULL);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, rc, err, sizeof(err));
	ck_assert_ptr_nonnull(rk);
	int64_t lo = -1, hi = -1;
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(l, req_topic, 0);
	bool done = rd_kafka_query_watermark_offsets(rk, req_topic, 0, &lo, &hi, 10000) ==
	                RD_KAFKA_RESP_ERR_NO_ERROR &&
	            rd_kafka_committed(rk, l, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR && hi > 0 &&
	            l->elems[0].offset == hi;
	rd_kafka_topic_partition_list_destroy(l);
	rd_kafka_destroy(rk);
	return done;
}

static void setup(void)
{
	bootstrap = kreq_test_bootstrap();
	kreq_test_topic_name(prefix, sizeof(prefix), "hdl");
	snprintf(req_topic, sizeof(req_topic), "%s.svc.requests", prefix);
	snprintf(group, sizeof(group), "%s.svc", prefix);
	kr = kreq_keyring_new();
	uint8_t key[32];
	randombytes_buf(key, sizeof(key));
	ck_assert_int_eq(kreq_keyring_add(kr, "k1", KREQ_KEY_HMAC_SHA256, key, 32, NULL, 0),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_signing_key(kr, "k1"), KREQ_OK);
	atomic_store(&echoes, 0);
	atomic_store(&holds_started, 0);
	atomic_store(&twice_runs, 0);
	atomic_store(&never_runs, 0);
	atomic_store(&twice_done, false);
	atomic_store(&release_holds, false);
	atomic_store(&never_handle, NULL);
}

static void teardown(void)
{
	kreq_keyring_release(kr);
}

/* ---- tests -------------------------------------------------------------- */

/* The second reply comes while another caller's request holds the memory
 * the first reply gave back, and echo calls run around it: the second
 * reply is refused, every caller gets its own answer, nothing crashes. */
START_TEST(test_reply_twice_refused)
{
	static const char *const extra[] = {"worker.handler.threads", "4", NULL};
	kreq_test_running_t *w = worker_start("w1", extra);
	kreq_client_t *c = client_new();
	enum { N = 30 };
	kreq_future_t *echo[N];
	kreq_future_t *t = call(c, "svc.twice", "x", "twice-1", 30000);
	expect_reply(t, 0, "first", false);
	/* the first reply has been applied and its request freed: new requests
	 * now reuse that memory, one of them held while the second reply comes */
	kreq_future_t *hold = call(c, "svc.hold", "mine", "hold-1", 30000);
	for (int i = 0; i < N; i++) {
		char p[16];
		snprintf(p, sizeof(p), "e%d", i);
		echo[i] = call(c, "svc.echo", p, NULL, 30000);
	}
	KREQ_TEST_AWAIT(atomic_load(&twice_done), 30000);
	ck_assert_int_eq(atomic_load(&first_rc), KREQ_OK);
	ck_assert_int_eq(atomic_load(&second_rc), KREQ_ESTATE);
	ck_assert(atomic_load(&stale_method_null));
	ck_assert(atomic_load(&stale_cancelled));
	expect_reply(hold, 0, "mine", false);
	for (int i = 0; i < N; i++) {
		char p[16];
		snprintf(p, sizeof(p), "e%d", i);
		expect_reply(echo[i], 0, p, false);
	}
	/* a retry of the twice call is served the first reply, stored once */
	expect_reply(call(c, "svc.twice", "x", "twice-1", 30000), 0, "first", true);
	ck_assert_int_eq(atomic_load(&twice_runs), 1);
	ck_assert_uint_eq(handled(w->s, "ok"), N + 2);
	KREQ_TEST_AWAIT(kreq_worker_in_flight(w->s) == 0, 30000);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

/* A handler that never replies: its caller times out; the worker answers
 * status 2 at deadline + grace and stores it (the retry gets it from the
 * store, the handler does not run again), the partition commits past it,
 * the late reply is refused, and a restarted worker redoes nothing. */
START_TEST(test_never_replying_handler)
{
	static const char *const extra[] = {"worker.topic.partitions", "1",
	                                    "worker.handler.grace.ms", "300", NULL};
	kreq_test_running_t *w = worker_start("w1", extra);
	kreq_client_t *c = client_new();
	kreq_future_t *stuck = call(c, "svc.never", "x", "stuck-1", 1500);
	KREQ_TEST_AWAIT(atomic_load(&never_runs) == 1, 30000);
	/* later requests of the same (only) partition */
	expect_reply(call(c, "svc.echo", "b", "b-1", 30000), 0, "b", false);
	expect_reply(call(c, "svc.echo", "c", "c-1", 30000), 0, "c", false);
	ck_assert_int_eq(kreq_future_wait(stuck, 60000), KREQ_OK);
	ck_assert_int_eq(kreq_future_err(stuck), KREQ_ETIMEDOUT);
	kreq_future_release(stuck);
	int64_t t0 = kreq_test_now_ms();
	KREQ_TEST_AWAIT(handled(w->s, "overdue") == 1, 30000);
	ck_assert_msg(kreq_test_now_ms() - t0 < 5000, "answered %lld ms after the timeout",
	              (long long)(kreq_test_now_ms() - t0));
	KREQ_TEST_AWAIT(kreq_worker_in_flight(w->s) == 0, 30000);
	/* the status-2 answer reached the caller's reply topic (its call had
	 * settled with the client's own timeout, so the reply counts as late) */
	KREQ_TEST_AWAIT(client_late_replies(c) == 1, 30000);
	/* the commit point moved past the stuck request and the later ones */
	KREQ_TEST_AWAIT(committed_to_end(), 30000);
	/* a retry is answered from the stored result: status 2, no new run */
	expect_reply(call(c, "svc.never", "x", "stuck-1", 30000), KREQ_STATUS_DEADLINE, "", true);
	ck_assert_int_eq(atomic_load(&never_runs), 1);
	/* the handler's late reply is refused, counted, and goes nowhere */
	kreq_request_t *h = atomic_load(&never_handle);
	ck_assert(kreq_request_cancelled(h));
	ck_assert_str_eq(kreq_request_method(h), "svc.never"); /* still its own */
	ck_assert_int_eq(kreq_request_reply(h, 0, "late", 4, NULL), KREQ_ESTATE);
	ck_assert_ptr_null(kreq_request_method(h));
	ck_assert_int_eq(kreq_request_reply(h, 0, "later", 5, NULL), KREQ_ESTATE);
	ck_assert_uint_eq(kreq_test_worker_metric(w->s, "kreq_worker_late_replies_total{"), 1);
	kreq_test_worker_stop(w);

	/* a new worker: nothing of the partition is redone */
	w = worker_start("w2", extra);
	expect_reply(call(c, "svc.echo", "d", "d-1", 30000), 0, "d", false);
	ck_assert_int_eq(atomic_load(&never_runs), 1);
	ck_assert_int_eq(atomic_load(&echoes), 3);
	ck_assert_uint_eq(handled(w->s, "dedup"), 0);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("handler");
	TCase *tc = tcase_create("real-kafka");
	tcase_set_timeout(tc, 240);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_reply_twice_refused);
	tcase_add_test(tc, test_never_replying_handler);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
