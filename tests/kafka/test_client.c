/*
 * test_client.c — the client library against a real Kafka broker, with the
 * minimal responder of responder.c in place of kreqd: success, handler
 * status, timeout, retry after a dropped request, late reply after timeout,
 * forged and mismatched replies, duplicate replies, broker rejection,
 * cancel, backpressure, and shutdown with calls pending.
 */
#include <check.h>
#include <poll.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"
#include "kreq/client.h"
#include "kreq/error.h"
#include "responder.h"
#include "testsupport.h"

static const char *bootstrap;
static char prefix[64], svc_topic[160], client_id[64];
static kreq_keyring_t *kr;
static responder_t *resp;
static kreq_client_t *cl;

/* Client config: unique prefix per test, fast retries; extra: NULL-ended
 * name/value pairs. */
static kreq_client_t *new_client(const char *const *extra)
{
	kreq_conf_t *conf = kreq_conf_new();
	char err[512];
	ck_assert_int_eq(kreq_conf_set(conf, "kafka.bootstrap.servers", bootstrap, err, 512),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "topic.prefix", prefix, err, 512), KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "client.id", client_id, err, 512), KREQ_OK);
	/* the responder assigns partitions directly and is no group member, so
	 * the worker check is off unless a test turns it on */
	ck_assert_int_eq(kreq_conf_set(conf, "service.check.ms", "0", err, 512), KREQ_OK);
	for (; extra && *extra; extra += 2)
		ck_assert_msg(kreq_conf_set(conf, extra[0], extra[1], err, 512) == KREQ_OK, "%s",
		              err);
	kreq_client_t *c = kreq_client_new(conf, kr, err, sizeof(err));
	ck_assert_msg(c != NULL, "kreq_client_new: %s", err);
	kreq_conf_destroy(conf);
	return c;
}

static void setup(void)
{
	bootstrap = kreq_test_bootstrap();
	char t[64];
	kreq_test_topic_name(t, sizeof(t), "c");
	snprintf(prefix, sizeof(prefix), "%s", t);
	snprintf(client_id, sizeof(client_id), "client-%d", (int)randombytes_uniform(1000000));
	snprintf(svc_topic, sizeof(svc_topic), "%s.svc.requests", prefix);
	kreq_test_create_topic(bootstrap, svc_topic, 3, 30000);
	kr = kreq_keyring_new();
	uint8_t key[32];
	randombytes_buf(key, sizeof(key));
	ck_assert_int_eq(kreq_keyring_add(kr, "test-key", KREQ_KEY_HMAC_SHA256, key, 32, NULL, 0),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_signing_key(kr, "test-key"), KREQ_OK);
	resp = responder_start(bootstrap, svc_topic, kr, 4000);
	cl = NULL;
}

static void teardown(void)
{
	kreq_client_destroy(cl);
	responder_stop(resp);
	kreq_keyring_release(kr);
}

static kreq_call_opts_t *opts_timeout(int64_t ms)
{
	kreq_call_opts_t *o = kreq_call_opts_new();
	ck_assert_int_eq(kreq_call_opts_set_timeout(o, ms), KREQ_OK);
	return o;
}

static uint64_t metric(atomic_uint_fast64_t *a)
{
	return atomic_load(a);
}

START_TEST(test_echo_roundtrip)
{
	cl = new_client(NULL);
	kreq_future_t *f;
	kreq_call_opts_t *o = kreq_call_opts_new();
	ck_assert_int_eq(kreq_call_opts_set_traceparent(
	                     o, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_client_call(cl, "svc.echo", "ping", 4, o, &f), KREQ_OK);
	kreq_call_opts_destroy(o);
	ck_assert_int_eq(kreq_future_wait(f, 30000), KREQ_OK);
	ck_assert_msg(kreq_future_err(f) == KREQ_OK, "%s: %s", kreq_err_name(kreq_future_err(f)),
	              kreq_future_errstr(f));
	ck_assert_int_eq(kreq_future_status(f), 0);
	size_t len;
	const void *p = kreq_future_payload(f, &len);
	ck_assert_uint_eq(len, 4);
	ck_assert_mem_eq(p, "ping", 4);
	ck_assert_int_eq(kreq_future_from_dedup(f), false);
	kreq_future_release(f);
	ck_assert_uint_eq(kreq_client_in_flight(cl), 0);
	/* blocking convenience built on the async call */
	ck_assert_int_eq(kreq_client_call_wait(cl, "svc.echo", "x", 1, NULL, NULL), KREQ_OK);
	ck_assert_uint_eq(metric(&cl->metrics.outcome[KREQ__OUT_OK]), 2);
	char *text;
	ck_assert_int_eq(kreq_client_metrics_text(cl, &text), KREQ_OK);
	ck_assert_ptr_nonnull(strstr(text, "kreq_client_outcomes_total{client=\""));
	ck_assert_ptr_nonnull(strstr(text, "outcome=\"ok\"} 2"));
	ck_assert_ptr_nonnull(strstr(text, "kreq_client_call_duration_seconds_count"));
	free(text);
}
END_TEST

/* Requests of every size class the client seals differently: on its
 * stack (up to 2 KiB) or in a malloc'd buffer, sent at once or held while
 * the service thread delivers replies (calls made from a completion
 * callback): each payload comes back byte for byte. */
static uint8_t sized[100000];
static const size_t sizes[] = {0, 1, 1500, 2047, 2048, 3000, 100000};
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))
static kreq_future_t *from_cb[NSIZES];

static void call_sizes_from_callback(kreq_future_t *f, void *opaque)
{
	(void)f;
	(void)opaque;
	for (size_t i = 0; i < NSIZES; i++)
		ck_assert_int_eq(
		    kreq_client_call(cl, "svc.echo", sized, sizes[i], NULL, &from_cb[i]), KREQ_OK);
}

static void expect_echo(kreq_future_t *f, size_t n)
{
	ck_assert_int_eq(kreq_future_wait(f, 30000), KREQ_OK);
	ck_assert_msg(kreq_future_err(f) == KREQ_OK, "%zu bytes: %s: %s", n,
	              kreq_err_name(kreq_future_err(f)), kreq_future_errstr(f));
	size_t len;
	const void *p = kreq_future_payload(f, &len);
	ck_assert_uint_eq(len, n);
	if (n)
		ck_assert_int_eq(memcmp(p, sized, n), 0);
	kreq_future_release(f);
}

START_TEST(test_echo_payload_sizes)
{
	randombytes_buf(sized, sizeof(sized));
	cl = new_client(NULL);
	kreq_future_t *fs[NSIZES], *trigger;
	for (size_t i = 0; i < NSIZES; i++)
		ck_assert_int_eq(kreq_client_call(cl, "svc.echo", sized, sizes[i], NULL, &fs[i]),
		                 KREQ_OK);
	for (size_t i = 0; i < NSIZES; i++)
		expect_echo(fs[i], sizes[i]);
	/* answered after the responder's delay: the callback is registered in
	 * time and runs on the service thread, whose new calls are held */
	ck_assert_int_eq(kreq_client_call(cl, "svc.slow", "go", 2, NULL, &trigger), KREQ_OK);
	ck_assert_int_eq(kreq_future_on_done(trigger, call_sizes_from_callback, NULL), KREQ_OK);
	ck_assert_int_eq(kreq_future_wait(trigger, 30000), KREQ_OK);
	kreq_future_release(trigger);
	for (size_t i = 0; i < NSIZES; i++)
		expect_echo(from_cb[i], sizes[i]);
	ck_assert_uint_eq(kreq_client_in_flight(cl), 0);
}
END_TEST

START_TEST(test_handler_status_and_rejection)
{
	cl = new_client(NULL);
	kreq_future_t *f;
	ck_assert_int_eq(kreq_client_call_wait(cl, "svc.fail", NULL, 0, NULL, &f), KREQ_OK);
	ck_assert_int_eq(kreq_future_status(f), 101);
	ck_assert_str_eq(kreq_future_errstr(f), "handler failed");
	kreq_future_release(f);
	ck_assert_int_eq(kreq_client_call_wait(cl, "svc.rejected", NULL, 0, NULL, &f),
	                 KREQ_EREJECTED);
	ck_assert_int_eq(kreq_future_status(f), 5);
	kreq_future_release(f);
}
END_TEST

START_TEST(test_timeout)
{
	cl = new_client(NULL);
	kreq_call_opts_t *o = opts_timeout(600);
	kreq_future_t *f;
	int64_t t0 = kreq_test_now_ms();
	ck_assert_int_eq(kreq_client_call(cl, "svc.never", "x", 1, o, &f), KREQ_OK);
	ck_assert_int_eq(kreq_future_wait(f, 10000), KREQ_OK);
	int64_t took = kreq_test_now_ms() - t0;
	ck_assert_int_eq(kreq_future_err(f), KREQ_ETIMEDOUT);
	ck_assert_msg(took >= 590 && took < 3000, "timed out after %lld ms", (long long)took);
	ck_assert_ptr_nonnull(strstr(kreq_future_errstr(f), "deadline passed"));
	ck_assert_uint_eq(kreq_client_in_flight(cl), 0);
	kreq_future_release(f);
	kreq_call_opts_destroy(o);
	/* a deadline already in the past is refused at submission */
	o = kreq_call_opts_new();
	ck_assert_int_eq(kreq_call_opts_set_deadline(o, 1000), KREQ_OK);
	ck_assert_int_eq(kreq_client_call(cl, "svc.never", "x", 1, o, &f), KREQ_ETIMEDOUT);
	kreq_call_opts_destroy(o);
}
END_TEST

START_TEST(test_retry_after_dropped_request)
{
	const char *conf[] = {"retry.attempt.timeout.ms", "300", "retry.backoff.ms", "20", NULL};
	cl = new_client(conf);
	kreq_call_opts_t *o = opts_timeout(20000);
	ck_assert_int_eq(kreq_call_opts_set_idempotency_key(o, "order-7", 7), KREQ_OK);
	kreq_future_t *f;
	ck_assert_int_eq(kreq_client_call(cl, "svc.drop1", "abc", 3, o, &f), KREQ_OK);
	ck_assert_int_eq(kreq_future_wait(f, 25000), KREQ_OK);
	ck_assert_msg(kreq_future_err(f) == KREQ_OK, "%s", kreq_future_errstr(f));
	ck_assert_int_ge(responder_max_attempt(resp, "drop1"), 2);
	ck_assert_uint_ge(metric(&cl->metrics.retries), 1);
	kreq_future_release(f);
	kreq_call_opts_destroy(o);
}
END_TEST

START_TEST(test_late_reply_after_timeout)
{
	cl = new_client(NULL);
	/* the responder answers after 4000 ms; the first send of a new client may
	 * take a while (metadata, connection), so the deadline is not too tight */
	kreq_call_opts_t *o = opts_timeout(2000);
	kreq_future_t *f;
	ck_assert_int_eq(kreq_client_call(cl, "svc.slow", "x", 1, o, &f), KREQ_OK);
	ck_assert_int_eq(kreq_future_wait(f, 10000), KREQ_OK);
	ck_assert_int_eq(kreq_future_err(f), KREQ_ETIMEDOUT);
	KREQ_TEST_AWAIT(metric(&cl->metrics.late_replies) >= 1, 15000);
	ck_assert_int_eq(kreq_future_err(f), KREQ_ETIMEDOUT); /* settled once, unchanged */
	kreq_future_release(f);
	kreq_call_opts_destroy(o);
}
END_TEST

START_TEST(test_forged_and_mismatched_replies_dropped)
{
	const char *conf[] = {"retry.max.attempts", "1", NULL};
	cl = new_client(conf);
	kreq_call_opts_t *o = opts_timeout(3000);
	kreq_future_t *f1, *f2;
	ck_assert_int_eq(kreq_client_call(cl, "svc.forge", "x", 1, o, &f1), KREQ_OK);
	ck_assert_int_eq(kreq_client_call(cl, "svc.wrongidem", "x", 1, o, &f2), KREQ_OK);
	kreq_future_t *both[2] = {f1, f2};
	ck_assert_int_eq(kreq_future_wait_all(both, 2, 10000), KREQ_OK);
	ck_assert_int_eq(kreq_future_err(f1), KREQ_ETIMEDOUT);
	ck_assert_int_eq(kreq_future_err(f2), KREQ_ETIMEDOUT);
	/* both replies arrived within the deadline and were dropped, not delivered */
	KREQ_TEST_AWAIT(metric(&cl->metrics.rejected_replies) >= 2, 10000);
	ck_assert_uint_eq(metric(&cl->metrics.outcome[KREQ__OUT_OK]), 0);
	kreq_future_release(f1);
	kreq_future_release(f2);
	kreq_call_opts_destroy(o);
}
END_TEST

START_TEST(test_duplicate_reply_counted_once)
{
	cl = new_client(NULL);
	kreq_future_t *f;
	ck_assert_int_eq(kreq_client_call_wait(cl, "svc.dup", "x", 1, NULL, &f), KREQ_OK);
	KREQ_TEST_AWAIT(metric(&cl->metrics.late_replies) >= 1, 10000);
	ck_assert_uint_eq(metric(&cl->metrics.outcome[KREQ__OUT_OK]), 1);
	kreq_future_release(f);
}
END_TEST

static atomic_int callbacks;

static void count_cb(kreq_future_t *f, void *opaque)
{
	(void)opaque;
	ck_assert_int_ne(kreq_future_err(f), KREQ_ESTATE);
	atomic_fetch_add(&callbacks, 1);
}

START_TEST(test_cancel)
{
	cl = new_client(NULL);
	kreq_future_t *f;
	atomic_store(&callbacks, 0);
	ck_assert_int_eq(kreq_client_call(cl, "svc.never", "x", 1, NULL, &f), KREQ_OK);
	ck_assert_int_eq(kreq_future_on_done(f, count_cb, NULL), KREQ_OK);
	KREQ_TEST_AWAIT(responder_requests(resp, "never") >= 1, 15000);
	ck_assert_int_eq(kreq_future_cancel(f), KREQ_OK);
	ck_assert(kreq_future_is_done(f));
	ck_assert_int_eq(kreq_future_err(f), KREQ_ECANCELED);
	ck_assert_int_eq(atomic_load(&callbacks), 1);
	ck_assert_int_eq(kreq_future_cancel(f), KREQ_ESTATE);
	ck_assert_uint_eq(kreq_client_in_flight(cl), 0);
	KREQ_TEST_AWAIT(responder_cancels(resp) >= 1, 15000);
	kreq_future_release(f);
}
END_TEST

START_TEST(test_backpressure)
{
	const char *conf[] = {"max.in.flight", "2", "backpressure.wait.ms", "200", NULL};
	cl = new_client(conf);
	kreq_future_t *a, *b, *c3;
	ck_assert_int_eq(kreq_client_call(cl, "svc.never", "1", 1, NULL, &a), KREQ_OK);
	ck_assert_int_eq(kreq_client_call(cl, "svc.never", "2", 1, NULL, &b), KREQ_OK);
	int64_t t0 = kreq_test_now_ms();
	ck_assert_int_eq(kreq_client_call(cl, "svc.never", "3", 1, NULL, &c3), KREQ_EBACKPRESSURE);
	int64_t waited = kreq_test_now_ms() - t0;
	ck_assert_msg(waited >= 190 && waited < 2000, "waited %lld ms", (long long)waited);
	ck_assert_uint_eq(metric(&cl->metrics.outcome[KREQ__OUT_BACKPRESSURE]), 1);
	ck_assert_int_eq(kreq_future_cancel(a), KREQ_OK); /* frees a slot */
	ck_assert_int_eq(kreq_client_call(cl, "svc.echo", "4", 1, NULL, &c3), KREQ_OK);
	ck_assert_int_eq(kreq_future_wait(c3, 30000), KREQ_OK);
	ck_assert_int_eq(kreq_future_err(c3), KREQ_OK);
	kreq_future_release(a);
	kreq_future_release(b);
	kreq_future_release(c3);
}
END_TEST

START_TEST(test_shutdown_settles_pending)
{
	cl = new_client(NULL);
	enum { N = 20 };
	kreq_future_t *f[N];
	atomic_store(&callbacks, 0);
	for (int i = 0; i < N; i++) {
		ck_assert_int_eq(kreq_client_call(cl, "svc.never", "x", 1, NULL, &f[i]), KREQ_OK);
		ck_assert_int_eq(kreq_future_on_done(f[i], count_cb, NULL), KREQ_OK);
	}
	ck_assert_uint_eq(kreq_client_in_flight(cl), N);
	kreq_client_destroy(cl);
	cl = NULL;
	ck_assert_int_eq(atomic_load(&callbacks), N);
	for (int i = 0; i < N; i++) {
		ck_assert(kreq_future_is_done(f[i]));
		ck_assert_int_eq(kreq_future_err(f[i]), KREQ_ECLOSED);
		kreq_future_release(f[i]);
	}
}
END_TEST

static bool assigned(rd_kafka_t *consumer)
{
	rd_kafka_message_t *m = rd_kafka_consumer_poll(consumer, 100);
	if (m)
		rd_kafka_message_destroy(m);
	rd_kafka_topic_partition_list_t *a = NULL;
	bool yes = rd_kafka_assignment(consumer, &a) == 0 && a->cnt > 0;
	if (a)
		rd_kafka_topic_partition_list_destroy(a);
	return yes;
}

/* A service nobody serves fails fast; one with a worker in its consumer
 * group <prefix>.<service> does not. */
START_TEST(test_no_worker_fails_fast)
{
	const char *conf[] = {"service.check.ms", "500", NULL};
	cl = new_client(conf);
	kreq_call_opts_t *o = opts_timeout(60000);
	kreq_future_t *f;
	int64_t t0 = kreq_test_now_ms();
	ck_assert_int_eq(kreq_client_call(cl, "lonely.echo", "x", 1, o, &f), KREQ_OK);
	ck_assert_int_eq(kreq_future_wait(f, 30000), KREQ_OK);
	ck_assert_int_eq(kreq_future_err(f), KREQ_EUNAVAILABLE);
	ck_assert_msg(kreq_test_now_ms() - t0 < 30000, "waited out the deadline");
	ck_assert_ptr_nonnull(strstr(kreq_future_errstr(f), "no worker serves lonely"));
	kreq_future_release(f);
	ck_assert_int_eq(kreq_client_call(cl, "lonely.echo", "x", 1, o, &f), KREQ_EUNAVAILABLE);

	/* a worker joins group <prefix>.busy: calls to busy.* are not failed */
	char topic[200], group[200];
	snprintf(topic, sizeof(topic), "%s.busy.requests", prefix);
	snprintf(group, sizeof(group), "%s.busy", prefix);
	kreq_test_create_topic(bootstrap, topic, 1, 30000);
	rd_kafka_t *w = rd_kafka_new(
	    RD_KAFKA_CONSUMER, kreq_test_conf_new(bootstrap, "group.id", group, NULL), NULL, 0);
	ck_assert_ptr_nonnull(w);
	rd_kafka_poll_set_consumer(w);
	rd_kafka_topic_partition_list_t *tl = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(tl, topic, RD_KAFKA_PARTITION_UA);
	ck_assert_int_eq(rd_kafka_subscribe(w, tl), 0);
	rd_kafka_topic_partition_list_destroy(tl);
	KREQ_TEST_AWAIT(assigned(w), 30000);
	ck_assert_int_eq(kreq_client_call(cl, "busy.echo", "x", 1, o, &f), KREQ_OK);
	/* several check rounds pass; the call is still pending */
	for (int i = 0; i < 25; i++)
		ck_assert_int_eq(kreq_future_wait(f, 100), KREQ_ETIMEDOUT);
	ck_assert_int_eq(kreq_future_cancel(f), KREQ_OK);
	kreq_future_release(f);
	rd_kafka_consumer_close(w);
	rd_kafka_destroy(w);
	kreq_call_opts_destroy(o);
}
END_TEST

/* Completions driven from the application's own poll loop. */
START_TEST(test_event_fd_completions)
{
	cl = new_client(NULL);
	kreq_call_opts_t *o = kreq_call_opts_new();
	ck_assert_int_eq(kreq_call_opts_set_notify(o, true), KREQ_OK);
	kreq_future_t *a, *b;
	ck_assert_int_eq(kreq_client_call(cl, "svc.echo", "a", 1, o, &a), KREQ_OK);
	ck_assert_int_eq(kreq_client_call(cl, "svc.echo", "b", 1, o, &b), KREQ_OK);
	kreq_call_opts_destroy(o);
	struct pollfd p = {.fd = kreq_client_event_fd(cl), .events = POLLIN};
	int got = 0;
	int64_t until = kreq_test_now_ms() + 30000;
	while (got < 2 && kreq_test_now_ms() < until) {
		if (poll(&p, 1, 1000) <= 0)
			continue;
		kreq_future_t *f;
		while ((f = kreq_client_next_completed(cl)) != NULL) {
			ck_assert(f == a || f == b);
			ck_assert(kreq_future_is_done(f));
			ck_assert_int_eq(kreq_future_err(f), KREQ_OK);
			kreq_future_release(f);
			got++;
		}
	}
	ck_assert_int_eq(got, 2);
	ck_assert_int_eq(poll(&p, 1, 0), 0); /* drained: not readable */
	ck_assert_ptr_null(kreq_client_next_completed(cl));
	kreq_future_release(a);
	kreq_future_release(b);
}
END_TEST

START_TEST(test_bad_arguments)
{
	cl = new_client(NULL);
	kreq_future_t *f = NULL;
	ck_assert_int_eq(kreq_client_call(NULL, "svc.echo", NULL, 0, NULL, &f), KREQ_EINVAL);
	ck_assert_int_eq(kreq_client_call(cl, NULL, NULL, 0, NULL, &f), KREQ_EINVAL);
	ck_assert_int_eq(kreq_client_call(cl, "", NULL, 0, NULL, &f), KREQ_EINVAL);
	ck_assert_int_eq(kreq_client_call(cl, "bad method", NULL, 0, NULL, &f), KREQ_EINVAL);
	ck_assert_int_eq(kreq_client_call(cl, "svc.echo", NULL, 3, NULL, &f), KREQ_EINVAL);
	ck_assert_int_eq(kreq_client_call(cl, "svc.echo", NULL, 0, NULL, NULL), KREQ_EINVAL);
	static char big[1000001];
	ck_assert_int_eq(kreq_client_call(cl, "svc.echo", big, sizeof(big), NULL, &f),
	                 KREQ_EOVERSIZE);
	ck_assert_ptr_null(f);
	kreq_call_opts_t *o = kreq_call_opts_new();
	ck_assert_int_eq(kreq_call_opts_set_timeout(o, 0), KREQ_EINVAL);
	ck_assert_int_eq(kreq_call_opts_set_idempotency_key(o, "k", 0), KREQ_EINVAL);
	ck_assert_int_eq(kreq_call_opts_set_traceparent(o, "00-abc"), KREQ_EINVAL);
	ck_assert_int_eq(kreq_call_opts_set_traceparent(
	                     o, "00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
	                 KREQ_EINVAL);
	kreq_call_opts_destroy(o);
	char err[256];
	ck_assert_ptr_null(kreq_client_new(NULL, kr, err, sizeof(err)));
	kreq_conf_t *conf = kreq_conf_new();
	ck_assert_ptr_null(kreq_client_new(conf, kr, err, sizeof(err)));
	ck_assert_ptr_nonnull(strstr(err, "bootstrap"));
	kreq_keyring_t *nosign = kreq_keyring_new();
	ck_assert_ptr_null(kreq_client_new(conf, nosign, err, sizeof(err)));
	ck_assert_ptr_nonnull(strstr(err, "signing key"));
	kreq_keyring_release(nosign);
	kreq_conf_destroy(conf);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("client");
	TCase *tc = tcase_create("client");
	tcase_set_timeout(tc, 90);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_echo_roundtrip);
	tcase_add_test(tc, test_echo_payload_sizes);
	tcase_add_test(tc, test_handler_status_and_rejection);
	tcase_add_test(tc, test_timeout);
	tcase_add_test(tc, test_retry_after_dropped_request);
	tcase_add_test(tc, test_late_reply_after_timeout);
	tcase_add_test(tc, test_forged_and_mismatched_replies_dropped);
	tcase_add_test(tc, test_duplicate_reply_counted_once);
	tcase_add_test(tc, test_cancel);
	tcase_add_test(tc, test_backpressure);
	tcase_add_test(tc, test_shutdown_settles_pending);
	tcase_add_test(tc, test_event_fd_completions);
	tcase_add_test(tc, test_no_worker_fails_fast);
	tcase_add_test(tc, test_bad_arguments);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
