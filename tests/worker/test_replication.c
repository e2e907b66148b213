/*
 * test_replication.c — the replication kreq gives the topics it creates,
 * on one Kafka broker (the shared one of the kafka suites): the defaults
 * (replication min(3, Kafka brokers), min.insync.replicas one less, at
 * least 1) still work there, and an existing topic with fewer replicas
 * than configured is a warning naming it, not a failure. The same on 3
 * Kafka brokers (replication 3, min.insync.replicas 2) is tested by
 * test_cluster3.
 */
#include <check.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

#include "cluster.h"
#include "kreq/client.h"
#include "kreq/error.h"
#include "kreq/worker.h"
#include "worker.h"
#include "testsupport.h"

static const char *bootstrap;
static char prefix[64], req_topic[160], res_topic[160];
static kreq_keyring_t *kr;

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char logged[16384];

static void on_log(void *opaque, int level, const char *fac, const char *msg)
{
	(void)opaque;
	(void)fac;
	if (level > 4)
		return;
	pthread_mutex_lock(&log_lock);
	size_t n = strlen(logged);
	if (n + strlen(msg) + 2 < sizeof(logged))
		snprintf(logged + n, sizeof(logged) - n, "%s\n", msg);
	pthread_mutex_unlock(&log_lock);
}

static bool log_has(const char *a, const char *b)
{
	pthread_mutex_lock(&log_lock);
	const char *p = strstr(logged, a);
	bool has = false;
	for (; p && !has; p = strstr(p + 1, a)) {
		const char *eol = strchr(p, '\n');
		const char *q = strstr(p, b);
		has = q && (!eol || q < eol);
	}
	pthread_mutex_unlock(&log_lock);
	return has;
}

static void h_echo(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	size_t len;
	const char *p = kreq_request_payload(r, &len);
	kreq_request_reply(r, 0, p, len, NULL);
}

static kreq_conf_t *conf_new(const char *client_id, const char *const *extra)
{
	kreq_conf_t *conf = kreq_conf_new();
	const char *kv[] = {"kafka.bootstrap.servers",
	                    bootstrap,
	                    "topic.prefix",
	                    prefix,
	                    "client.id",
	                    client_id,
	                    "log.level",
	                    "5",
	                    NULL};
	char err[512];
	for (const char *const *p = kv; *p; p += 2)
		ck_assert_int_eq(kreq_conf_set(conf, p[0], p[1], err, sizeof(err)), KREQ_OK);
	for (; extra && *extra; extra += 2)
		ck_assert_msg(kreq_conf_set(conf, extra[0], extra[1], err, sizeof(err)) == KREQ_OK,
		              "%s: %s", extra[0], err);
	kreq_conf_set_log_cb(conf, on_log, NULL);
	return conf;
}

static kreq_test_running_t *worker_start(const char *const *extra)
{
	kreq_conf_t *conf = conf_new("w0", extra);
	char err[512];
	kreq_worker_t *s = kreq_worker_new(conf, kr, "svc", err, sizeof(err));
	ck_assert_msg(s != NULL, "kreq_worker_new: %s", err);
	kreq_conf_destroy(conf);
	ck_assert_int_eq(kreq_worker_register(s, "svc.echo", h_echo, NULL, KREQ_HANDLER_INLINE),
	                 KREQ_OK);
	return kreq_test_worker_start(s);
}

static kreq_client_t *client_new(const char *client_id, const char *const *extra)
{
	kreq_conf_t *conf = conf_new(client_id, extra);
	char err[512];
	kreq_client_t *c = kreq_client_new(conf, kr, err, sizeof(err));
	ck_assert_msg(c != NULL, "kreq_client_new: %s", err);
	kreq_conf_destroy(conf);
	return c;
}

static void call_echo(kreq_client_t *c)
{
	kreq_future_t *f = NULL;
	ck_assert_int_eq(kreq_client_call(c, "svc.echo", "x", 1, NULL, &f), KREQ_OK);
	ck_assert_int_eq(kreq_future_wait(f, 30000), KREQ_OK);
	ck_assert_msg(kreq_future_err(f) == KREQ_OK, "%s", kreq_future_errstr(f));
	kreq_future_release(f);
}

static void assert_replication(const char *topic, int rf, int isr)
{
	int have_rf, have_isr;
	kreq_test_topic_replication(bootstrap, topic, &have_rf, &have_isr);
	ck_assert_msg(have_rf == rf && have_isr == isr,
	              "%s: replication %d, min.insync.replicas %d (want %d, %d)", topic, have_rf,
	              have_isr, rf, isr);
}

static void setup(void)
{
	bootstrap = kreq_test_bootstrap();
	kreq_test_topic_name(prefix, sizeof(prefix), "repl");
	snprintf(req_topic, sizeof(req_topic), "%s.svc.requests", prefix);
	snprintf(res_topic, sizeof(res_topic), "%s.svc.results", prefix);
	uint8_t key[32];
	randombytes_buf(key, sizeof(key));
	kr = kreq_keyring_new();
	ck_assert_int_eq(kreq_keyring_add(kr, "k1", KREQ_KEY_HMAC_SHA256, key, 32, NULL, 0),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_signing_key(kr, "k1"), KREQ_OK);
	logged[0] = 0;
}

static void teardown(void)
{
	kreq_keyring_release(kr);
}

/* The defaults on one Kafka broker: replication 1, min.insync.replicas 1,
 * and calls work (acks=all with one replica in sync). */
START_TEST(test_defaults_work_on_one_broker)
{
	kreq_test_running_t *w = worker_start(NULL);
	kreq_client_t *c = client_new("c0", NULL);
	call_echo(c);
	char reply[200];
	snprintf(reply, sizeof(reply), "%s.reply.c0", prefix);
	assert_replication(req_topic, 1, 1);
	assert_replication(res_topic, 1, 1);
	assert_replication(reply, 1, 1);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
	ck_assert_msg(!strstr(logged, "fewer than the configured"), "unexpected warning:\n%s",
	              logged);
}
END_TEST

/* Topics that exist with fewer replicas than configured are used as they
 * are, with a warning naming each. */
START_TEST(test_short_replication_is_a_warning)
{
	const char *const res_cfg[] = {"cleanup.policy", "compact,delete", NULL};
	kreq_test_create_topic_ex(bootstrap, req_topic, 2, 1, NULL, 30000);
	kreq_test_create_topic_ex(bootstrap, res_topic, 2, 1, res_cfg, 30000);
	/* and the poison topics (broker/worker/poison.c): on one Kafka broker a topic
	 * of replication 2 cannot be created, only existing ones be used */
	char att[200], dead[200];
	snprintf(att, sizeof(att), "%s.svc.attempts", prefix);
	snprintf(dead, sizeof(dead), "%s.svc.dead", prefix);
	kreq_test_create_topic_ex(bootstrap, att, 2, 1, res_cfg, 30000);
	kreq_test_create_topic_ex(bootstrap, dead, 2, 1, NULL, 30000);
	char reply[200];
	snprintf(reply, sizeof(reply), "%s.reply.c1", prefix);
	kreq_test_create_topic_ex(bootstrap, reply, 1, 1, NULL, 30000);
	const char *const wx[] = {"worker.topic.replication.factor", "2", NULL};
	const char *const cx[] = {"reply.topic.replication.factor", "3", NULL};
	kreq_test_running_t *w = worker_start(wx);
	kreq_client_t *c = client_new("c1", cx);
	call_echo(c);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
	ck_assert_msg(log_has(req_topic, "fewer than the configured replication factor 2"),
	              "no warning naming %s:\n%s", req_topic, logged);
	ck_assert_msg(log_has(res_topic, "fewer than the configured replication factor 2"),
	              "no warning naming %s:\n%s", res_topic, logged);
	ck_assert_msg(log_has(reply, "fewer than the configured replication factor 3"),
	              "no warning naming %s:\n%s", reply, logged);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("replication");
	TCase *tc = tcase_create("one-broker");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 240);
	tcase_add_test(tc, test_defaults_work_on_one_broker);
	tcase_add_test(tc, test_short_replication_is_a_warning);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
