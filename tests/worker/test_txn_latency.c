/*
 * test_txn_latency.c — what the transactional worker's producer is built
 * with for back-to-back transactions (issue #18), against a real Kafka
 * broker.
 *
 * A transaction begun while the previous one's commit markers are still
 * being written is answered CONCURRENT_TRANSACTIONS, and librdkafka 2.12.1
 * retries AddOffsetsToTxn and EndTxn after retry.backoff.ms (100 ms by its
 * default): a call then waits ~100 ms for nothing (docs/PERFORMANCE.md,
 * "The transactional call, hop by hop"). Whether a run hits that race is a
 * matter of sub-millisecond timing, so the test does not wait for it: it
 * reads the configuration librdkafka itself reports for the worker's
 * transactional producer (kafka.debug=conf: every property that differs
 * from librdkafka's default, logged when the handle is created) and checks
 * the worker's default, and that a user's kafka.retry.backoff.ms still wins.
 *
 * After a transaction ends, the worker takes no request for
 * worker.txn.gap.us (the markers are being written). Its loop must then
 * wake when the gap ends even if the gap ended while it was busy: a loop
 * that slept its idle second instead (the first version of the gap) made
 * about one call in two hundred take a second at 1 in flight, so 1500 calls
 * one after another must each take less than that.
 *
 * After a transaction of more than one result the next one stays open
 * worker.txn.gather.us from its first record, so that a request arriving
 * meanwhile shares its commit; after a lone result it commits at once.
 * With a gather of 1 s: two calls held in their handlers together make
 * one transaction of two; a call after it waits about the gather and a
 * call sent 200 ms after that one shares its commit; a call after a
 * transaction of one takes less than the gather.
 */
#include <check.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kreq/client.h"
#include "kreq/error.h"
#include "kreq/worker.h"
#include "worker.h"
#include "testsupport.h"

static const char *bootstrap;
static char prefix[64];
static kreq_keyring_t *kr;

/* librdkafka's configuration dumps, one handle's properties a group: a
 * "Client configuration:" line starts a group, "  name = value" lines add
 * to the last one (rd_kafka_new logs them together on its caller's
 * thread). */
#define GROUPS 16
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char groups[GROUPS][8192];
static int ngroups;

static void on_log(void *opaque, int level, const char *fac, const char *msg)
{
	(void)opaque;
	(void)level;
	(void)fac;
	pthread_mutex_lock(&mu);
	if (strstr(msg, "Client configuration:")) {
		if (ngroups < GROUPS)
			groups[ngroups++][0] = '\0';
	} else if (ngroups > 0 && ngroups <= GROUPS && strstr(msg, "CONF:") && strstr(msg, " = ")) {
		char *g = groups[ngroups - 1];
		const char *p = strstr(msg, "]: ");
		p = p ? p + 3 : msg;
		while (*p == ' ')
			p++;
		size_t used = strlen(g);
		snprintf(g + used, sizeof(groups[0]) - used, "%s\n", p);
	}
	pthread_mutex_unlock(&mu);
}

/* The value of name in the dump of the handle that has a transactional.id
 * (NULL: not in it, i.e. librdkafka's default), copied to out. */
static const char *txn_producer_prop(const char *name, char *out, size_t n)
{
	const char *found = NULL;
	bool producer = false;
	char key[128];
	snprintf(key, sizeof(key), "%s = ", name);
	pthread_mutex_lock(&mu);
	for (int i = 0; i < ngroups && i < GROUPS && !producer; i++) {
		if (!strstr(groups[i], "transactional.id = "))
			continue;
		producer = true;
		for (const char *l = groups[i]; *l; l = strchr(l, '\n') + 1) {
			if (!strncmp(l, key, strlen(key))) {
				const char *v = l + strlen(key);
				snprintf(out, n, "%.*s", (int)(strchr(v, '\n') - v), v);
				found = out;
				break;
			}
		}
	}
	pthread_mutex_unlock(&mu);
	ck_assert_msg(producer, "no configuration dump of a transactional producer was logged");
	return found;
}

static void h_echo(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	size_t len;
	const void *p = kreq_request_payload(r, &len);
	kreq_request_reply(r, 0, p, len, NULL);
}

static kreq_conf_t *conf_new(const char *client_id, const char *retry_backoff)
{
	kreq_conf_t *conf = kreq_conf_new();
	char err[512];
	const char *kv[] = {"kafka.bootstrap.servers",
	                    bootstrap,
	                    "topic.prefix",
	                    prefix,
	                    "client.id",
	                    client_id,
	                    "worker.mode",
	                    "transactional",
	                    "kafka.debug",
	                    "conf",
	                    "log.level",
	                    "7",
	                    retry_backoff ? "kafka.retry.backoff.ms" : NULL,
	                    retry_backoff,
	                    NULL};
	for (const char **p = kv; *p; p += 2)
		ck_assert_msg(kreq_conf_set(conf, p[0], p[1], err, sizeof(err)) == KREQ_OK,
		              "%s: %s", p[0], err);
	kreq_conf_set_log_cb(conf, on_log, NULL);
	return conf;
}

/* svc.pair: each request waits in its handler until two are there. */
static pthread_mutex_t pair_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pair_cv = PTHREAD_COND_INITIALIZER;
static int pair_in;

static void h_pair(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 30;
	pthread_mutex_lock(&pair_mu);
	pair_in++;
	pthread_cond_broadcast(&pair_cv);
	while (pair_in < 2 && pthread_cond_timedwait(&pair_cv, &pair_mu, &until) == 0)
		;
	pthread_mutex_unlock(&pair_mu);
	kreq_request_reply(r, 0, "ok", 2, NULL);
}

/* A transactional worker of conf (consumed), running: svc.echo (inline)
 * and svc.pair. */
static kreq_test_running_t *echo_worker_start(kreq_conf_t *conf)
{
	char err[512];
	kreq_worker_t *s = kreq_worker_new(conf, kr, "svc", err, sizeof(err));
	ck_assert_msg(s != NULL, "kreq_worker_new: %s", err);
	kreq_conf_destroy(conf);
	ck_assert_int_eq(kreq_worker_register(s, "svc.echo", h_echo, NULL, KREQ_HANDLER_INLINE),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_worker_register(s, "svc.pair", h_pair, NULL, 0), KREQ_OK);
	return kreq_test_worker_start(s);
}

static kreq_client_t *client_new(void)
{
	char err[512];
	kreq_conf_t *cc = kreq_conf_new();
	ck_assert_int_eq(kreq_conf_set(cc, "kafka.bootstrap.servers", bootstrap, err, 512),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(cc, "topic.prefix", prefix, err, 512), KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(cc, "log.level", "4", err, 512), KREQ_OK);
	kreq_client_t *c = kreq_client_new(cc, kr, err, sizeof(err));
	ck_assert_msg(c != NULL, "kreq_client_new: %s", err);
	kreq_conf_destroy(cc);
	return c;
}

/* One echo call, answered. */
static void call_echo(kreq_client_t *c)
{
	kreq_future_t *f = NULL;
	ck_assert_int_eq(kreq_client_call(c, "svc.echo", "hi", 2, NULL, &f), KREQ_OK);
	ck_assert_int_eq(kreq_future_wait(f, 60000), KREQ_OK);
	ck_assert_int_eq(kreq_future_err(f), KREQ_OK);
	kreq_future_release(f);
}

/* A worker with that setting (NULL: the default) serves one call; returns
 * its transactional producer's retry.backoff.ms as librdkafka reported it. */
static const char *serve_one(const char *retry_backoff, char *out, size_t n)
{
	pthread_mutex_lock(&mu);
	ngroups = 0;
	pthread_mutex_unlock(&mu);
	kreq_test_running_t *w = echo_worker_start(conf_new("w1", retry_backoff));
	kreq_client_t *c = client_new();
	call_echo(c);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
	return txn_producer_prop("retry.backoff.ms", out, n);
}

static void setup(void)
{
	bootstrap = kreq_test_bootstrap();
	kreq_test_topic_name(prefix, sizeof(prefix), "txnlat");
	kr = kreq_keyring_new();
	uint8_t secret[32];
	randombytes_buf(secret, sizeof(secret));
	ck_assert_int_eq(kreq_keyring_add(kr, "k1", KREQ_KEY_HMAC_SHA256, secret, 32, NULL, 0),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_signing_key(kr, "k1"), KREQ_OK);
}

static void teardown(void)
{
	kreq_keyring_release(kr);
}

/* The worker's transactional producer retries a CONCURRENT_TRANSACTIONS
 * after milliseconds, not librdkafka's 100 ms. */
START_TEST(test_txn_retry_backoff_default)
{
	char v[32];
	const char *got = serve_one(NULL, v, sizeof(v));
	ck_assert_msg(got != NULL,
	              "the transactional producer runs with librdkafka's default "
	              "retry.backoff.ms (100 ms): a transaction that meets the previous "
	              "one's markers waits that long");
	ck_assert_str_eq(got, "5");
}
END_TEST

/* A user's kafka.retry.backoff.ms overrides the worker's default. */
START_TEST(test_txn_retry_backoff_user_wins)
{
	char v[32];
	const char *got = serve_one("40", v, sizeof(v));
	ck_assert_ptr_nonnull(got);
	ck_assert_str_eq(got, "40");
}
END_TEST

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Calls one after another through a transactional worker with the default
 * linger (0) and gap: none may wait for the loop's idle second. */
START_TEST(test_txn_gap_wakes_loop)
{
	kreq_test_running_t *w = echo_worker_start(conf_new("w-gap", NULL));
	kreq_client_t *c = client_new();
	enum { WARM = 10, N = 1500 };
	int slow = 0;
	int64_t worst = 0;
	for (int i = 0; i < WARM + N; i++) {
		int64_t t0 = mono_ms();
		call_echo(c);
		int64_t took = mono_ms() - t0;
		if (i >= WARM && took > worst)
			worst = took;
		if (i >= WARM && took >= 900)
			slow++;
	}
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
	ck_assert_msg(slow == 0,
	              "%d of %d calls took 900 ms or more (worst %lld ms): the worker's loop "
	              "slept past the end of worker.txn.gap.us with requests waiting",
	              slow, N, (long long)worst);
}
END_TEST

static kreq_future_t *call_async(kreq_client_t *c, const char *method)
{
	kreq_future_t *f = NULL;
	ck_assert_int_eq(kreq_client_call(c, method, "hi", 2, NULL, &f), KREQ_OK);
	return f;
}

static int64_t await_ms(kreq_future_t *f, int64_t t0)
{
	ck_assert_int_eq(kreq_future_wait(f, 60000), KREQ_OK);
	ck_assert_int_eq(kreq_future_err(f), KREQ_OK);
	kreq_future_release(f);
	return mono_ms() - t0;
}

START_TEST(test_txn_gather)
{
	kreq_conf_t *conf = conf_new("w-gather", NULL);
	char err[512];
	ck_assert_int_eq(kreq_conf_set(conf, "worker.txn.gather.us", "1000000", err, 512), KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "worker.txn.batch.ms", "10000", err, 512), KREQ_OK);
	kreq_test_running_t *w = echo_worker_start(conf);
	kreq_worker_t *s = w->s;
	kreq_client_t *c = client_new();
	call_echo(c); /* a lone result first: the pair's transaction starts at once */

	/* one transaction of two results */
	int64_t t0 = mono_ms();
	kreq_future_t *a = call_async(c, "svc.pair"), *b = call_async(c, "svc.pair");
	await_ms(a, t0);
	await_ms(b, t0);

	/* the next transaction gathers; a call 200 ms later shares its commit */
	uint64_t commits = kreq_test_worker_metric(s, "kreq_worker_txn_commits_total{");
	t0 = mono_ms();
	kreq_future_t *held = call_async(c, "svc.echo");
	struct timespec pause = {0, 200 * 1000000};
	nanosleep(&pause, NULL); /* the gap between the two calls under test, not a wait */
	kreq_future_t *joined = call_async(c, "svc.echo");
	int64_t held_ms = await_ms(held, t0), joined_ms = await_ms(joined, t0);
	uint64_t shared = kreq_test_worker_metric(s, "kreq_worker_txn_commits_total{") - commits;

	/* after that transaction (two results) one more gathers; then one alone */
	call_echo(c);
	t0 = mono_ms();
	call_echo(c);
	int64_t alone_ms = mono_ms() - t0;
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);

	ck_assert_msg(held_ms >= 950,
	              "a call after a transaction of two results was answered after %lld ms: "
	              "its transaction committed before worker.txn.gather.us (1 s)",
	              (long long)held_ms);
	ck_assert_msg(shared == 1,
	              "the call sent 200 ms into the gather took %llu commits with the first "
	              "(answered after %lld and %lld ms): it did not share the transaction",
	              (unsigned long long)shared, (long long)held_ms, (long long)joined_ms);
	ck_assert_msg(alone_ms < 900,
	              "a call after a transaction of one result took %lld ms: the gather "
	              "held a lone call's transaction",
	              (long long)alone_ms);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("txn_latency");
	TCase *tc = tcase_create("real-kafka");
	tcase_set_timeout(tc, 240);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_txn_retry_backoff_default);
	tcase_add_test(tc, test_txn_retry_backoff_user_wins);
	tcase_add_test(tc, test_txn_gap_wakes_loop);
	tcase_add_test(tc, test_txn_gather);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
