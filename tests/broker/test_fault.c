/*
 * test_fault.c — crash safety on a real Kafka broker.
 *
 * Workers are separate processes (fault_worker: the real server library)
 * that record every handler execution in a file outside Kafka and reply
 * with that execution's id. A client drives a steady load of logical
 * operations, each with its own idempotency key; an operation whose call
 * ends in an error (timeout, unavailable) is called again with the same key,
 * as a restarted client would. Meanwhile the test kills workers with
 * SIGKILL at random moments and restarts them, adds and removes replicas,
 * or restarts the Kafka broker. Then it checks:
 *   - every call settled (nothing hangs), and every operation got a reply;
 *   - no operation ever saw two different replies (execution ids);
 *   - the execution the caller saw is the LAST execution recorded for its
 *     key: once a result was committed (and only committed replies are
 *     visible to the read_committed client), the handler never ran again
 *     for that key.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kreq/client.h"
#include "kreq/error.h"
#include "faultload.h"
#include "testsupport.h"

/* ---- fixture -------------------------------------------------------------- */

static void setup(void)
{
	fault_worker_path = KREQ_FAULT_WORKER;
	bootstrap = kreq_test_bootstrap();
	kreq_test_topic_name(prefix, sizeof(prefix), "flt");
	uint8_t key[32];
	randombytes_buf(key, 32);
	sodium_bin2hex(key_hex, sizeof(key_hex), key, 32);
	kr = kreq_keyring_new();
	ck_assert_int_eq(kreq_keyring_add(kr, "k1", KREQ_KEY_HMAC_SHA256, key, 32, NULL, 0),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_signing_key(kr, "k1"), KREQ_OK);
	snprintf(record_path, sizeof(record_path), "/tmp/kreq-fault-%d-%u.log", (int)getpid(),
	         randombytes_uniform(1000000));
	memset(workers, 0, sizeof(workers));
}

static void teardown(void)
{
	for (int i = 0; i < MAX_WORKERS; i++)
		if (workers[i].pid > 0) {
			kill(workers[i].pid, SIGKILL);
			waitpid(workers[i].pid, NULL, 0);
		}
	unlink(record_path);
	kreq_keyring_release(kr);
}

/* ---- tests ---------------------------------------------------------------- */

typedef struct {
	int kills;
	int every;
	int nworkers;
} crash_plan_t;

static void crash_schedule(int step, void *arg)
{
	crash_plan_t *p = arg;
	if (step % p->every != 0 || p->kills <= 0)
		return;
	/* SIGKILL one worker at a random moment of its work, restart it */
	int slot = (int)randombytes_uniform((uint32_t)p->nworkers);
	worker_signal(slot, SIGKILL);
	worker_spawn(slot, "transactional");
	p->kills--;
}

START_TEST(test_kill9_one_worker)
{
	crash_plan_t plan = {.kills = 6, .every = 60, .nworkers = 1};
	worker_spawn(0, "transactional");
	run_load(500, crash_schedule, &plan);
	ck_assert_int_eq(plan.kills, 0);
	worker_signal(0, SIGTERM);
	int reruns;
	check_records(500, &reruns);
	fprintf(stderr, "kill9_one_worker: 500 ops, 6 kills, %d uncommitted re-executions\n",
	        reruns);
}
END_TEST

START_TEST(test_kill9_two_replicas)
{
	crash_plan_t plan = {.kills = 6, .every = 70, .nworkers = 2};
	worker_spawn(0, "transactional");
	worker_spawn(1, "transactional");
	run_load(600, crash_schedule, &plan);
	ck_assert_int_eq(plan.kills, 0);
	worker_signal(0, SIGTERM);
	worker_signal(1, SIGTERM);
	int reruns;
	check_records(600, &reruns);
	fprintf(stderr, "kill9_two_replicas: 600 ops, 6 kills, %d uncommitted re-executions\n",
	        reruns);
}
END_TEST

static void scale_schedule(int step, void *arg)
{
	(void)arg;
	if (step == 100)
		worker_spawn(1, "transactional"); /* a replica joins: partitions spread */
	if (step == 250)
		worker_signal(0, SIGTERM); /* one leaves gracefully: they move back */
}

START_TEST(test_rebalance_mid_load)
{
	worker_spawn(0, "transactional");
	run_load(400, scale_schedule, NULL);
	worker_signal(1, SIGTERM);
	int reruns;
	check_records(400, &reruns);
	/* graceful hand-overs commit before revoking: nothing runs twice */
	ck_assert_int_eq(reruns, 0);
}
END_TEST

/* ---- a Kafka broker restart, on a cluster of this test's own ---------------- */

static char own_dir[512];

/* scripts/kafka.sh CMD --dir <own> [ARG] */
static int kafka_sh(const char *cmd_name, const char *arg)
{
	char cmd[1400];
	snprintf(cmd, sizeof(cmd), "%s/scripts/kafka.sh %s --dir %s %s 1>&2", KREQ_SOURCE_DIR,
	         cmd_name, own_dir, arg ? arg : "");
	return system(cmd);
}

static char own_bootstrap[512];

static void setup_own_cluster(void)
{
	setup(); /* first: it fails before a cluster exists to leak */
	snprintf(own_dir, sizeof(own_dir), "%s/kafka-fault-%d", KREQ_BINARY_DIR, (int)getpid());
	char cmd[1200];
	snprintf(cmd, sizeof(cmd), "%s/scripts/kafka.sh start --dir %s", KREQ_SOURCE_DIR, own_dir);
	FILE *p = popen(cmd, "r");
	ck_assert_ptr_nonnull(p);
	char line[512] = "";
	char *got = fgets(line, sizeof(line), p);
	int rc = pclose(p);
	ck_assert_msg(got && rc == 0 && !strncmp(line, "KREQ_TEST_BOOTSTRAP=", 20),
	              "cannot start a Kafka cluster for this test (%s)", cmd);
	line[strcspn(line, "\n")] = 0;
	snprintf(own_bootstrap, sizeof(own_bootstrap), "%s", line + 20);
	bootstrap = own_bootstrap;
}

static void teardown_own_cluster(void)
{
	teardown();
	kafka_sh("stop", NULL);
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", own_dir);
	ck_assert_int_eq(system(cmd), 0);
}

/* A worker that exits on an error it cannot recover from is restarted, as
 * its supervisor (systemd Restart=on-failure, a container runtime) would. */
static int supervised_restarts;

static void supervise(int slot)
{
	worker_t *w = &workers[slot];
	int st;
	if (w->pid > 0 && waitpid(w->pid, &st, WNOHANG) == w->pid) {
		w->pid = 0;
		supervised_restarts++;
		worker_spawn(slot, "transactional");
	}
}

static void broker_restart_schedule(int step, void *arg)
{
	(void)arg;
	supervise(0);
	if (step == 150) { /* kill -9 the broker, then start it again on its data */
		ck_assert_int_eq(kafka_sh("kill-node", "1"), 0);
		ck_assert_int_eq(kafka_sh("start-node", "1"), 0);
	}
}

START_TEST(test_broker_restart_mid_load)
{
	worker_spawn(0, "transactional");
	run_load(400, broker_restart_schedule, NULL);
	supervise(0);
	worker_signal(0, SIGTERM);
	int reruns;
	check_records(400, &reruns);
	fprintf(stderr,
	        "broker_restart: 400 ops, %d uncommitted re-executions, %d worker restarts\n",
	        reruns, supervised_restarts);
}
END_TEST

/* Kafka dies under a client: what is pending fails with KREQ_EUNAVAILABLE
 * once unavailable.after.ms has passed (not at its own 60 s deadline), new
 * calls are refused at once, and the client notices by itself when Kafka is
 * back. The client cannot rely on librdkafka's ALL_BROKERS_DOWN for this
 * (librdkafka 2.12.1 did not raise it when a client's only broker died). */
static int call_once(kreq_client_t *c, const char *key, kreq_future_t **f)
{
	kreq_call_opts_t *o = kreq_call_opts_new();
	ck_assert_int_eq(kreq_call_opts_set_timeout(o, 60000), KREQ_OK);
	ck_assert_int_eq(kreq_call_opts_set_idempotency_key(o, key, strlen(key)), KREQ_OK);
	char payload[64];
	snprintf(payload, sizeof(payload), "sleep:0|%s", key);
	*f = NULL;
	int rc = kreq_client_call(c, "svc.record", payload, strlen(payload), o, f);
	kreq_call_opts_destroy(o);
	return rc;
}

static void call_ok(kreq_client_t *c, const char *key)
{
	kreq_future_t *f;
	ck_assert_int_eq(call_once(c, key, &f), KREQ_OK);
	ck_assert_int_eq(kreq_future_wait(f, 70000), KREQ_OK);
	ck_assert_msg(kreq_future_err(f) == KREQ_OK, "%s: %s", key, kreq_future_errstr(f));
	ck_assert_int_eq(kreq_future_status(f), 0);
	kreq_future_release(f);
}

/* true once a call is accepted again (and then waits for its reply) */
static bool accepted_again(kreq_client_t *c)
{
	supervise(0);
	kreq_future_t *f;
	int rc = call_once(c, "ff-after", &f);
	if (rc == KREQ_OK) {
		ck_assert_int_eq(kreq_future_wait(f, 70000), KREQ_OK);
		kreq_future_release(f);
	} else {
		ck_assert_msg(rc == KREQ_EUNAVAILABLE, "refused with %s", kreq_err_name(rc));
	}
	return rc == KREQ_OK;
}

START_TEST(test_client_fails_fast_when_kafka_dies)
{
	worker_spawn(0, "transactional");
	char id[32], err[512];
	snprintf(id, sizeof(id), "ff-%u", randombytes_uniform(1000000));
	const char *kv[][2] = {{"kafka.bootstrap.servers", bootstrap},
	                       {"topic.prefix", prefix},
	                       {"client.id", id},
	                       {"unavailable.after.ms", "2000"},
	                       {"retry.attempt.timeout.ms", "3000"},
	                       {"service.check.ms", "0"},
	                       {"log.level", "3"}};
	kreq_conf_t *conf = kreq_conf_new();
	for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++)
		ck_assert_int_eq(kreq_conf_set(conf, kv[i][0], kv[i][1], err, sizeof(err)),
		                 KREQ_OK);
	kreq_client_t *c = kreq_client_new(conf, kr, err, sizeof(err));
	ck_assert_msg(c != NULL, "%s", err);
	kreq_conf_destroy(conf);
	call_ok(c, "ff-before");

	ck_assert_int_eq(kafka_sh("kill-node", "1"), 0);
	int64_t t0 = kreq_test_now_ms();
	kreq_future_t *f;
	int rc = call_once(c, "ff-during", &f);
	if (rc == KREQ_OK) {
		ck_assert_int_eq(kreq_future_wait(f, 70000), KREQ_OK);
		ck_assert_msg(kreq_future_err(f) == KREQ_EUNAVAILABLE,
		              "pending call ended with %s: %s", kreq_err_name(kreq_future_err(f)),
		              kreq_future_errstr(f));
		ck_assert_ptr_nonnull(strstr(kreq_future_errstr(f), "unavailable.after.ms"));
		kreq_future_release(f);
	} else {
		ck_assert_int_eq(rc, KREQ_EUNAVAILABLE);
	}
	int64_t took = kreq_test_now_ms() - t0;
	ck_assert_msg(took < 20000, "failing took %lld ms: the deadline, not fail-fast",
	              (long long)took);
	ck_assert_int_eq(call_once(c, "ff-refused", &f), KREQ_EUNAVAILABLE);
	ck_assert_ptr_null(f);

	ck_assert_int_eq(kafka_sh("start-node", "1"), 0);
	KREQ_TEST_AWAIT(accepted_again(c), 90000);
	call_ok(c, "ff-recovered");
	kreq_client_destroy(c);
	fprintf(stderr, "fail_fast: pending call failed %lld ms after the broker died\n",
	        (long long)took);
}
END_TEST

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	Suite *s = suite_create("fault");
	TCase *tc = tcase_create("crash");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 600);
	tcase_add_test(tc, test_kill9_one_worker);
	tcase_add_test(tc, test_kill9_two_replicas);
	tcase_add_test(tc, test_rebalance_mid_load);
	suite_add_tcase(s, tc);
	TCase *tb = tcase_create("broker");
	tcase_add_checked_fixture(tb, setup_own_cluster, teardown_own_cluster);
	tcase_set_timeout(tb, 600);
	tcase_add_test(tb, test_broker_restart_mid_load);
	tcase_add_test(tb, test_client_fails_fast_when_kafka_dies);
	suite_add_tcase(s, tb);
	return kreq_test_run_suite(s);
}
