/*
 * test_client_unavailable.c — fail fast when Kafka is unreachable.
 *
 * Unit level, on librdkafka's mock cluster (in this process), because the
 * test must take every Kafka broker down and bring it back at will: with all
 * brokers down for longer than unavailable.after.ms, pending calls fail with
 * KREQ_EUNAVAILABLE long before their deadlines and new calls are refused at
 * once; when a Kafka broker is back, calls are accepted again. Also checks that a
 * client works against the mock cluster at all (the embedded demo's setup)
 * and the admin socket and slow-request report, names its threads, and
 * admits calls per service from a lock-free table.
 */
#include <check.h>
#include <dirent.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "client/admin.h"
#include "client/client_int.h"
#include "client/health.h"
#include "kreq/client.h"
#include "kreq/error.h"
#include "testsupport.h"
#include "unixsock.h"

static rd_kafka_t *host;
static rd_kafka_mock_cluster_t *mc;
static kreq_keyring_t *kr;

static void setup(void)
{
	char err[256];
	rd_kafka_conf_t *rc = rd_kafka_conf_new();
	ck_assert_int_eq(rd_kafka_conf_set(rc, "test.mock.num.brokers", "1", err, sizeof(err)),
	                 RD_KAFKA_CONF_OK);
	host = rd_kafka_new(RD_KAFKA_PRODUCER, rc, err, sizeof(err));
	ck_assert_msg(host != NULL, "%s", err);
	mc = rd_kafka_handle_mock_cluster(host);
	ck_assert_ptr_nonnull(mc);
	ck_assert_int_eq(rd_kafka_mock_topic_create(mc, "kreq.svc.requests", 2, 1), 0);
	/* The mock cluster implements no CreateTopics (and with librdkafka newer than
	 * 2.0 auto-creates only for a producer's Metadata request): the client's reply
	 * topic is created here, as an operator would on a Kafka broker without
	 * CreateTopics permission. */
	ck_assert_int_eq(rd_kafka_mock_topic_create(mc, "kreq.reply.mock-client", 1, 1), 0);
	kr = kreq_keyring_new();
	uint8_t key[32];
	randombytes_buf(key, sizeof(key));
	ck_assert_int_eq(kreq_keyring_add(kr, "k", KREQ_KEY_HMAC_SHA256, key, 32, NULL, 0), 0);
	ck_assert_int_eq(kreq_keyring_set_signing_key(kr, "k"), 0);
}

static void teardown(void)
{
	kreq_keyring_release(kr);
	rd_kafka_destroy(host);
}

static kreq_client_t *client(const char *const *extra, kreq_log_cb_t *log)
{
	kreq_conf_t *conf = kreq_conf_new();
	if (log)
		kreq_conf_set_log_cb(conf, log, NULL);
	char err[512];
	ck_assert_int_eq(kreq_conf_set(conf, "kafka.bootstrap.servers",
	                               rd_kafka_mock_cluster_bootstraps(mc), err, 512),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "client.id", "mock-client", err, 512), KREQ_OK);
	for (; extra && *extra; extra += 2)
		ck_assert_int_eq(kreq_conf_set(conf, extra[0], extra[1], err, 512), KREQ_OK);
	kreq_client_t *c = kreq_client_new(conf, kr, err, sizeof(err));
	ck_assert_msg(c != NULL, "kreq_client_new: %s", err);
	kreq_conf_destroy(conf);
	return c;
}

START_TEST(test_fail_fast_when_kafka_unreachable)
{
	const char *conf[] = {"unavailable.after.ms",
	                      "500",
	                      "kafka.reconnect.backoff.ms",
	                      "10",
	                      "kafka.reconnect.backoff.max.ms",
	                      "100",
	                      NULL};
	kreq_client_t *c = client(conf, NULL);
	kreq_call_opts_t *o = kreq_call_opts_new();
	ck_assert_int_eq(kreq_call_opts_set_timeout(o, 60000), KREQ_OK);
	kreq_future_t *f;
	ck_assert_int_eq(kreq_client_call(c, "svc.never", "x", 1, o, &f), KREQ_OK);
	/* acknowledged by Kafka first, so nothing is left for librdkafka to retry
	 * and recovery below must be noticed without any traffic */
	KREQ_TEST_AWAIT(atomic_load(&c->metrics.queue_wait.count) == 1, 10000);
	int64_t t0 = kreq_test_now_ms();
	ck_assert_int_eq(rd_kafka_mock_broker_set_down(mc, 1), 0);
	ck_assert_int_eq(kreq_future_wait(f, 30000), KREQ_OK);
	ck_assert_int_eq(kreq_future_err(f), KREQ_EUNAVAILABLE);
	ck_assert_msg(kreq_test_now_ms() - t0 < 30000, "took the deadline, not fail-fast");
	ck_assert_ptr_nonnull(strstr(kreq_future_errstr(f), "unavailable.after.ms"));
	kreq_future_release(f);
	kreq_future_t *g = NULL;
	ck_assert_int_eq(kreq_client_call(c, "svc.never", "x", 1, o, &g), KREQ_EUNAVAILABLE);
	ck_assert_ptr_null(g);
	/* back up: the client notices without any call succeeding first */
	ck_assert_int_eq(rd_kafka_mock_broker_set_up(mc, 1), 0);
	KREQ_TEST_AWAIT(atomic_load(&c->down_since_ms) == 0, 30000);
	ck_assert_int_eq(kreq_client_call(c, "svc.never", "x", 1, o, &g), KREQ_OK);
	kreq_future_release(g);
	kreq_call_opts_destroy(o);
	kreq_client_destroy(c);
}
END_TEST

/* signing.key.id must name the keyring's signing key (as for the worker):
 * a client configured for one key must not quietly sign with another. */
START_TEST(test_signing_key_id_must_match)
{
	kreq_conf_t *conf = kreq_conf_new();
	char err[512];
	ck_assert_int_eq(kreq_conf_set(conf, "kafka.bootstrap.servers",
	                               rd_kafka_mock_cluster_bootstraps(mc), err, 512),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "client.id", "mock-client", err, 512), KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "signing.key.id", "other", err, 512), KREQ_OK);
	err[0] = '\0';
	ck_assert_ptr_null(kreq_client_new(conf, kr, err, sizeof(err)));
	ck_assert_msg(strstr(err, "signing.key.id is other") && strstr(err, "signs with k"), "%s",
	              err);
	ck_assert_int_eq(kreq_conf_set(conf, "signing.key.id", "k", err, 512), KREQ_OK);
	kreq_client_t *c = kreq_client_new(conf, kr, err, sizeof(err));
	ck_assert_msg(c != NULL, "kreq_client_new: %s", err);
	kreq_client_destroy(c);
	kreq_conf_destroy(conf);
}
END_TEST

static atomic_int slow_lines;

static void log_cb(void *opaque, int level, const char *fac, const char *msg)
{
	(void)opaque;
	if (level == 4 && !strcmp(fac, "client") && strstr(msg, "slow requests"))
		atomic_fetch_add(&slow_lines, 1);
}

/* Whether a thread of this process is named name (/proc/self/task/N/comm). */
static bool has_thread(const char *name)
{
	DIR *d = opendir("/proc/self/task");
	ck_assert_ptr_nonnull(d);
	bool found = false;
	for (struct dirent *e; !found && (e = readdir(d));) {
		char path[300], comm[32] = "";
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue; /* "." and "..", or a thread that just ended */
		if (fgets(comm, sizeof(comm), f))
			comm[strcspn(comm, "\n")] = 0;
		fclose(f);
		found = !strcmp(comm, name);
	}
	closedir(d);
	return found;
}

START_TEST(test_admin_socket_and_slow_report)
{
	char path[64];
	snprintf(path, sizeof(path), "/tmp/kreq-admin-%d.sock", (int)getpid());
	const char *conf[] = {"admin.socket", path, "slow.report.in.flight", "3", NULL};
	kreq_client_t *c = client(conf, log_cb);
	/* the library's threads are named (top -H, perf, docs/threading.md) */
	ck_assert(has_thread("kreq:client"));
	ck_assert(has_thread("kreq:health"));
	ck_assert(has_thread("kreq:admin"));
	kreq_future_t *f[3];
	kreq_call_opts_t *o = kreq_call_opts_new();
	ck_assert_int_eq(kreq_call_opts_set_idempotency_key(o, "idem", 4), KREQ_OK);
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(kreq_client_call(c, "svc.never", "x", 1, o, &f[i]), KREQ_OK);
	kreq_call_opts_destroy(o);
	static char buf[65536];
	kreq_test_unix_query(path, "pending\n", buf, sizeof(buf));
	ck_assert_ptr_nonnull(strstr(buf, "\"in_flight\":3"));
	ck_assert_ptr_nonnull(strstr(buf, "\"method\":\"svc.never\""));
	ck_assert_ptr_nonnull(strstr(buf, "\"idempotency_key\":\"6964656d\""));
	ck_assert_ptr_nonnull(strstr(buf, "\"attempt\":1"));
	kreq_test_unix_query(path, "metrics\n", buf, sizeof(buf));
	ck_assert_ptr_nonnull(strstr(buf, "kreq_client_in_flight{client=\"mock-client\"} 3"));
	kreq_test_unix_query(path, "bogus\n", buf, sizeof(buf));
	ck_assert_ptr_nonnull(strstr(buf, "\"error\""));
	KREQ_TEST_AWAIT(atomic_load(&slow_lines) >= 1, 5000);
	for (int i = 0; i < 3; i++)
		kreq_future_release(f[i]);
	kreq_client_destroy(c);
	ck_assert_int_ne(access(path, F_OK), 0); /* socket removed */
}
END_TEST

/* The client's admin socket shares the admin-socket server of common/adminsock.c: a
 * socket a live process serves is refused (it used to be unlinked from
 * under that process), a stale one is replaced. */
START_TEST(test_admin_socket_live_refused_stale_replaced)
{
	char path[64];
	snprintf(path, sizeof(path), "/tmp/kreq-admin-live-%d.sock", (int)getpid());
	unlink(path);
	int live = kreq_test_unix_listen(path, true);
	kreq_conf_t *conf = kreq_conf_new();
	char err[512];
	ck_assert_int_eq(kreq_conf_set(conf, "kafka.bootstrap.servers",
	                               rd_kafka_mock_cluster_bootstraps(mc), err, 512),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "client.id", "mock-client", err, 512), KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "admin.socket", path, err, 512), KREQ_OK);
	kreq_client_t *c = kreq_client_new(conf, kr, err, sizeof(err));
	if (c)
		kreq_client_destroy(c);
	close(live);
	kreq_conf_destroy(conf);
	bool exists = access(path, F_OK) == 0;
	unlink(path);
	ck_assert_msg(c == NULL, "a client took over the admin socket a live process serves");
	ck_assert_msg(strstr(err, "in use by another process"), "%s", err);
	ck_assert_msg(exists, "the live process's socket file was removed");

	kreq_test_unix_listen(path, false); /* stale: nobody listens */
	const char *extra[] = {"admin.socket", path, NULL};
	c = client(extra, NULL);
	static char buf[4096];
	kreq_test_unix_query(path, "metrics\n", buf, sizeof(buf));
	ck_assert_ptr_nonnull(strstr(buf, "kreq_client_in_flight{client=\"mock-client\"} 0"));
	kreq_client_destroy(c);
	ck_assert_int_ne(access(path, F_OK), 0);
}
END_TEST

/* Admits svc<from>.m .. svc<to - 1>.m; counts refusals. */
typedef struct admit_run {
	kreq__health_t *h;
	int from, to;
	int refused;
} admit_run_t;

static void *admit_range(void *arg)
{
	admit_run_t *r = arg;
	char m[32];
	for (int i = r->from; i < r->to; i++) {
		snprintf(m, sizeof(m), "svc%d.m", i);
		r->refused += !kreq__health_admit(r->h, m);
	}
	return NULL;
}

/* Every service a client calls is registered once (up to 1024; later ones
 * go unchecked) and found again without a lock from any thread; a service
 * found down refuses calls to all its methods until it is up again. */
START_TEST(test_service_admission)
{
	const char *conf[] = {"service.check.ms", "0", NULL};
	kreq_client_t *c = client(conf, NULL);
	kreq__health_t *h = c->health;
	admit_run_t all = {h, 0, 1100, 0};
	admit_range(&all); /* svc0..svc1023 registered, in order; the rest not */
	ck_assert_int_eq(all.refused, 0);
	kreq__health_record(h, "svc7", false);
	kreq__health_record(h, "svc1023", false);
	kreq__health_record(h, "svc1024", false); /* beyond the cap: unknown, ignored */
	ck_assert(!kreq__health_admit(h, "svc7.a"));
	ck_assert(!kreq__health_admit(h, "svc7.other"));
	ck_assert(!kreq__health_admit(h, "svc1023.x"));
	ck_assert(kreq__health_admit(h, "svc1024.x"));
	ck_assert(kreq__health_admit(h, "svc70.a"));
	ck_assert(kreq__health_admit(h, "svc.a"));
	kreq_future_t *f = NULL;
	ck_assert_int_eq(kreq_client_call(c, "svc7.a", "x", 1, NULL, &f), KREQ_EUNAVAILABLE);
	ck_assert_ptr_null(f);
	kreq__health_record(h, "svc7", true);
	ck_assert(kreq__health_admit(h, "svc7.a"));
	/* readers on two threads while the table is full and one entry flips */
	admit_run_t r[2] = {{h, 0, 1100, 0}, {h, 0, 1100, 0}};
	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		ck_assert_int_eq(pthread_create(&t[i], NULL, admit_range, &r[i]), 0);
	for (int i = 0; i < 50; i++)
		kreq__health_record(h, "svc5", i % 2 == 1);
	for (int i = 0; i < 2; i++)
		ck_assert_int_eq(pthread_join(t[i], NULL), 0);
	for (int i = 0; i < 2; i++) /* svc1023 stays down; svc5 was down at times */
		ck_assert(r[i].refused >= 1 && r[i].refused <= 2);
	kreq_client_destroy(c);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("client_mock");
	TCase *tc = tcase_create("client_mock");
	tcase_set_timeout(tc, 60);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_fail_fast_when_kafka_unreachable);
	tcase_add_test(tc, test_admin_socket_and_slow_report);
	tcase_add_test(tc, test_admin_socket_live_refused_stale_replaced);
	tcase_add_test(tc, test_signing_key_id_must_match);
	tcase_add_test(tc, test_service_admission);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
