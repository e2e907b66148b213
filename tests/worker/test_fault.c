/*
 * test_fault.c — crash safety on a real Kafka broker.
 *
 * Workers are separate processes (fault_worker: the real worker library)
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
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kreq/client.h"
#include "kreq/error.h"
#include "faultload.h"
#include "kreq/keyring.h"
#include "proc.h"
#include "testsupport.h"

/* ---- fixture -------------------------------------------------------------- */

static void setup(void)
{
	fault_worker_path = KREQ_FAULT_WORKER;
	bootstrap = kreq_test_bootstrap();
	fault_fixture_open("flt", "fault");
}

static void teardown(void)
{
	fault_fixture_close();
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
	if (step == 150) { /* kill -9 the Kafka broker, then start it again on its data */
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
	fprintf(stderr, "fail_fast: pending call failed %lld ms after the Kafka broker died\n",
	        (long long)took);
}
END_TEST

/* ---- kreqd starting while Kafka fails (issue 17) -------------------------- */

/* kreqd's configuration <client_id>.conf in the test's directory: service
 * svc, the echo built-in, this test's prefix and bootstrap, client.id
 * client_id, then extra lines. */
static const char *kreqd_conf_as(const char *client_id, const char *extra)
{
	char err[256], name[64];
	if (access(kreq_test_tmp("k.key"), F_OK) != 0)
		ck_assert_int_eq(kreq_keyring_generate_file(kreq_test_tmp("k.key"), NULL, "k1",
		                                            KREQ_KEY_HMAC_SHA256, err, sizeof(err)),
		                 KREQ_OK);
	static char path[4][256];
	static int next;
	char *out = path[next++ % 4];
	snprintf(name, sizeof(name), "%s.conf", client_id);
	snprintf(out, sizeof(path[0]), "%s", kreq_test_tmp(name));
	FILE *f = fopen(out, "w");
	ck_assert_ptr_nonnull(f);
	fprintf(f,
	        "service = svc\nkeyring.file = %s\nkafka.bootstrap.servers = %s\n"
	        "topic.prefix = %s\nclient.id = %s\nkreqd.builtins = echo\n"
	        "worker.shutdown.grace.ms = 3000\nworker.topic.partitions = 6\n%s",
	        kreq_test_tmp("k.key"), bootstrap, prefix, client_id, extra ? extra : "");
	fclose(f);
	return out;
}

static const char *kreqd_conf(const char *extra)
{
	return kreqd_conf_as("kd1", extra);
}

/* Pumps p's output until its stderr holds want; fails if it ends first or
 * after timeout_ms. */
static void kreqd_await(kreq_test_proc_t *p, const char *want, int timeout_ms)
{
	int64_t until = kreq_test_now_ms() + timeout_ms;
	while (!strstr(p->err.data ? p->err.data : "", want)) {
		const char *e = p->err.data ? p->err.data : "";
		const char *tail =
		    e + (strlen(e) > 1500 ? strlen(e) - 1500 : 0); /* Check's limit */
		ck_assert_msg(kreq_test_now_ms() < until, "kreqd did not log \"%s\":\n%s", want,
		              tail);
		ck_assert_msg(kreq_test_proc_pump(p, 100),
		              "kreqd ended before logging \"%s\":\n...%s", want, tail);
	}
}

/* Kafka is down when kreqd starts and comes back within
 * worker.start.timeout.ms: a metadata lookup that got no answer is an
 * unavailable Kafka, asked again, never a partition count (it was read as
 * "-1 partitions", a co-partitioning mismatch: exit 2, which systemd does
 * not restart). Light mode: no init_transactions() waits for Kafka first,
 * the topic lookups meet the dead Kafka broker themselves. kreqd serves
 * once Kafka is back and stops cleanly. */
START_TEST(test_kreqd_start_while_kafka_down)
{
	kreq_test_tmp_create("h3start");
	const char *conf =
	    kreqd_conf("worker.mode = light\nworker.start.timeout.ms = 120000\nlog.level = 6\n");
	ck_assert_int_eq(kafka_sh("kill-node", "1"), 0);
	kreq_test_proc_t p;
	const char *args[] = {"--config", conf, NULL};
	kreq_test_proc_start(&p, KREQD_PATH, args, NULL);
	kreqd_await(&p, "Kafka did not answer a metadata request for topic", 60000);
	ck_assert_int_eq(kafka_sh("start-node", "1"), 0);
	kreqd_await(&p, "assigned", 120000);
	ck_assert_int_eq(kill(p.pid, SIGTERM), 0);
	kreq_test_result_t r;
	kreq_test_proc_finish(&p, 60000, &r);
	ck_assert_msg(r.status == 0, "exit %d\n%s", r.status, r.err);
	ck_assert_msg(!strstr(r.err, "co-partitioned"), "%s", r.err);
	kreq_test_result_free(&r);
	kreq_test_tmp_remove();
}
END_TEST

/* Kafka stays down longer than worker.start.timeout.ms: kreqd gives up
 * with the restartable exit status 1 naming Kafka, never 2. */
START_TEST(test_kreqd_start_kafka_stays_down)
{
	kreq_test_tmp_create("h3down");
	const char *conf = kreqd_conf("worker.mode = light\nworker.start.timeout.ms = 8000\n");
	ck_assert_int_eq(kafka_sh("kill-node", "1"), 0);
	const char *args[] = {"--config", conf, NULL};
	kreq_test_result_t r;
	kreq_test_run(&r, KREQD_PATH, args, NULL, 60000);
	ck_assert_int_eq(kafka_sh("start-node", "1"), 0);
	KREQ_TEST_ASSERT_RUN(&r, 1, err, "Kafka did not answer a metadata request for topic");
	ck_assert_msg(r.ms >= 8000, "gave up after %lld ms, before worker.start.timeout.ms",
	              (long long)r.ms);
	kreq_test_result_free(&r);
	kreq_test_tmp_remove();
}
END_TEST

/* ---- static membership (issue 17) ----------------------------------------- */

static void kreqd_spawn(kreq_test_proc_t *p, const char *conf)
{
	const char *args[] = {"--config", conf, NULL};
	kreq_test_proc_start(p, KREQD_PATH, args, NULL);
	kreqd_await(p, "assigned", 120000);
}

static int count_of(const char *text, const char *what)
{
	int n = 0;
	for (const char *at = text ? text : ""; (at = strstr(at, what)); at += strlen(what))
		n++;
	return n;
}

static void kreqd_stop(kreq_test_proc_t *p)
{
	ck_assert_int_eq(kill(p->pid, SIGTERM), 0);
	kreq_test_result_t r;
	kreq_test_proc_finish(p, 60000, &r);
	ck_assert_msg(r.status == 0, "exit %d\n%s", r.status, r.err);
	kreq_test_result_free(&r);
}

/* Pumps p's output for ms milliseconds: a bounded look for something that
 * must NOT happen (a rebalance would complete within it). */
static void kreqd_watch(kreq_test_proc_t *p, int ms)
{
	int64_t until = kreq_test_now_ms() + ms;
	while (kreq_test_now_ms() < until)
		ck_assert_msg(kreq_test_proc_pump(p, 100), "kreqd ended:\n%s", p->err.data);
}

/* Rebalances a kreqd logged: its "assigned"/"revoked N partition(s)"
 * lines. */
static int rebalances_of(const kreq_test_proc_t *p)
{
	return count_of(p->err.data, " partition(s) of ");
}

/* Two replicas; each restarts in turn (SIGTERM, start again) within the
 * session timeout: it gets its own partitions back and the other replica
 * sees no rebalance at all (no assignment or revocation logged). With
 * dynamic membership (the behaviour before static membership) each
 * restart rebalanced the other replica (leave, rejoin). */
START_TEST(test_static_member_restart_keeps_partitions)
{
	kreq_test_tmp_create("h3static");
	const char *extra = "kafka.session.timeout.ms = 30000\n";
	const char *conf[2] = {kreqd_conf_as("kdA", extra), kreqd_conf_as("kdB", extra)};
	kreq_test_proc_t kd[2];
	kreqd_spawn(&kd[0], conf[0]);
	kreqd_spawn(&kd[1], conf[1]);
	kreqd_await(&kd[1], "assigned 3 partition(s)", 60000); /* each holds 3 of 6 */
	kreqd_watch(&kd[0], 2000);                             /* A's last callback */
	for (int go = 1; go >= 0; go--) { /* B, then A (one of them leads the group) */
		kreq_test_proc_t *stay = &kd[1 - go];
		int before = rebalances_of(stay);
		kreqd_stop(&kd[go]);
		kreqd_spawn(&kd[go], conf[go]);
		ck_assert_msg(strstr(kd[go].err.data, "assigned 3 partition(s)"),
		              "the restarted replica did not get its 3 partitions back:\n%s",
		              kd[go].err.data);
		kreqd_watch(stay, 2000);
		ck_assert_msg(rebalances_of(stay) == before,
		              "restarting %s rebalanced the replica that stayed (%d assignments or "
		              "revocations, %d before)",
		              go ? "B" : "A", rebalances_of(stay), before);
	}
	kreqd_stop(&kd[0]);
	kreqd_stop(&kd[1]);
	kreq_test_tmp_remove();
}
END_TEST

/* Two live workers with one client.id (so one group.instance.id): the
 * group fences the older one, which rejoins with a new consumer and fences
 * the other in turn (a worker fences itself once after a Kafka broker
 * restart, so one fencing is not taken for a duplicate); the third fencing
 * within a minute stops one of them with exit 2 naming the cause
 * (restarting it would fence the other back), and the other serves on. */
START_TEST(test_static_member_duplicate_instance_refused)
{
	kreq_test_tmp_create("h3dup");
	const char *conf = kreqd_conf("worker.mode = light\n");
	kreq_test_proc_t kd[2];
	kreqd_spawn(&kd[0], conf);
	kreqd_spawn(&kd[1], conf);
	int64_t until = kreq_test_now_ms() + 120000;
	int gone = -1;
	while (gone < 0) {
		ck_assert_msg(kreq_test_now_ms() < until, "neither worker stopped in 120 s");
		for (int i = 0; i < 2 && gone < 0; i++)
			if (!kreq_test_proc_pump(&kd[i], 50))
				gone = i;
	}
	kreq_test_result_t r;
	kreq_test_proc_finish(&kd[gone], 60000, &r);
	KREQ_TEST_ASSERT_RUN(&r, 2, err, "another live worker has group.instance.id kd1");
	ck_assert_ptr_nonnull(strstr(r.err, "every replica needs its own client.id"));
	kreq_test_result_free(&r);
	kreqd_watch(&kd[1 - gone], 1000); /* the other one serves on */
	kreqd_stop(&kd[1 - gone]);
	kreq_test_tmp_remove();
}
END_TEST

/* ---- the revoke path stays exactly-once (issue 17) ------------------------- */

/* Committed Result records per key in the results topic (read_committed,
 * every partition from the beginning to its end): each must be 1, or two
 * owners committed a result for one request. Returns the largest count. */
static int max_results_per_key(int partitions, int *keys)
{
	char topic[128], err[512];
	snprintf(topic, sizeof(topic), "%s.svc.results", prefix);
	rd_kafka_conf_t *rc =
	    kreq_test_conf_new(bootstrap, "group.id", "h3-inspect", "isolation.level",
	                       "read_committed", "enable.partition.eof", "true", NULL);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, rc, err, sizeof(err));
	ck_assert_msg(rk != NULL, "%s", err);
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(partitions);
	for (int p = 0; p < partitions; p++)
		rd_kafka_topic_partition_list_add(l, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
	ck_assert_int_eq(rd_kafka_assign(rk, l), 0);
	rd_kafka_topic_partition_list_destroy(l);
	static char seen[MAX_OPS * 2][64];
	static int count[MAX_OPS * 2];
	int nseen = 0, eofs = 0, most = 0;
	int64_t until = kreq_test_now_ms() + 60000;
	while (eofs < partitions) {
		ck_assert_msg(kreq_test_now_ms() < until, "results topic not read to its end");
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
		if (!m)
			continue;
		if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
			eofs++;
		} else {
			ck_assert_msg(!m->err, "%s", rd_kafka_message_errstr(m));
			ck_assert(m->key_len > 0 && m->key_len < 64);
			int i = 0;
			while (i < nseen && (strlen(seen[i]) != m->key_len ||
			                     memcmp(seen[i], m->key, m->key_len)))
				i++;
			if (i == nseen) {
				ck_assert_int_lt(nseen, MAX_OPS * 2);
				memset(seen[nseen], 0, 64);
				memcpy(seen[nseen++], m->key, m->key_len);
			}
			if (count[i]++ == 1)
				fprintf(stderr,
				        "key %.*s: a second committed result at [%d] %lld\n",
				        (int)m->key_len, (const char *)m->key, (int)m->partition,
				        (long long)m->offset);
			if (count[i] > most)
				most = count[i];
		}
		rd_kafka_message_destroy(m);
	}
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	*keys = nseen;
	memset(count, 0, sizeof(count));
	return most;
}

static void revoke_schedule(int step, void *arg)
{
	(void)arg;
	if (step == 60)
		worker_spawn(1, "transactional"); /* joins: w0 gives up partitions */
	if (step == 140)
		worker_spawn(2, "transactional"); /* joins: both give some up */
	if (step == 220)
		worker_signal(1, SIGTERM); /* leaves: its partitions move */
	if (step == 300)
		worker_spawn(1, "transactional"); /* back: takes some again */
}

/* Slow handlers (150-650 ms, 32 calls in flight on 8 handler threads per
 * worker) while replicas join and leave, so that handlers run on the
 * partitions being revoked: every call settles, no request runs again
 * after the result its caller saw was committed, and no request has two
 * committed results (two owners). With cooperative-sticky the revoke is
 * incremental: running handlers of the revoked partitions finish within
 * worker.shutdown.grace.ms and are committed before the partition goes. */
START_TEST(test_revoke_with_slow_handlers)
{
	sleep_min_ms = 150;
	sleep_span_ms = 500;
	worker_spawn(0, "transactional");
	run_load(400, revoke_schedule, NULL);
	for (int w = 0; w < 3; w++)
		worker_signal(w, SIGTERM);
	int reruns, keys;
	check_records(400, &reruns);
	int most = max_results_per_key(4, &keys);
	ck_assert_msg(most == 1, "a request has %d committed results (two owners)", most);
	ck_assert_int_eq(keys, 400);
	fprintf(stderr,
	        "revoke_slow_handlers: 400 ops, 4 membership changes, %d uncommitted "
	        "re-executions, 1 committed result per request\n",
	        reruns);
	sleep_min_ms = 0;
	sleep_span_ms = 40;
}
END_TEST

/* ---- a rolling restart under steady load (issue 17) ----------------------- */

#define ROLL_WINDOW 256 /* calls in flight at most: many callers, not one */
#define ROLL_RATE   150 /* calls/s offered, steadily (below what 3 replicas serve) */

/* calls/s offered: ROLL_RATE, or KREQ_ROLL_RATE from the environment */
static int64_t roll_rate(void)
{
	const char *v = getenv("KREQ_ROLL_RATE");
	return v && atoi(v) > 0 ? atoi(v) : ROLL_RATE;
}

static atomic_bool roll_done;
static int roll_sig = SIGTERM;   /* SIGKILL: a roll of crashes */
static int64_t roll_t0, roll_t1; /* the roll: first SIGTERM, last replica ready */

/* Restarts the 3 replicas one at a time: SIGTERM (exit 0 checked), start
 * again, wait until it serves (fault_worker's "ready"). */
static void *roll_main(void *arg)
{
	(void)arg;
	roll_t0 = kreq_test_now_ms();
	for (int w = 0; w < 3; w++) {
		worker_signal(w, roll_sig);
		worker_spawn(w, "transactional");
	}
	roll_t1 = kreq_test_now_ms();
	atomic_store(&roll_done, true);
	return NULL;
}

typedef struct {
	double steady, during, ratio; /* calls/s; during / steady */
	int64_t roll_ms, stall_ms;    /* the roll; longest time without a reply in it */
	int nops, reruns;
} roll_fig_t;

static int64_t done_at[MAX_OPS]; /* when each reply came, in order */

/* Completions in [from, to) ms. */
static int done_between(int ndone, int64_t from, int64_t to)
{
	int n = 0;
	for (int i = 0; i < ndone; i++)
		n += done_at[i] >= from && done_at[i] < to;
	return n;
}

static int64_t longest_gap(int ndone, int64_t from, int64_t to)
{
	int64_t last = from, gap = 0;
	for (int i = 0; i < ndone; i++) {
		if (done_at[i] < from || done_at[i] > to)
			continue;
		if (done_at[i] - last > gap)
			gap = done_at[i] - last;
		last = done_at[i];
	}
	return to - last > gap ? to - last : gap;
}

/* Fails naming what did not finish: how many calls, and the oldest. */
static void roll_stuck(int nops)
{
	int left = 0, first = -1;
	for (int i = 0; i < nops; i++)
		if (!ops[i].done && !left++)
			first = i;
	ck_assert_msg(first >= 0, "the rolling restart did not finish (every call was answered)");
	ck_abort_msg("the rolling restart did not finish: %d of %d calls unanswered, the first "
	             "%s called %d times since %lld ms ago (last: %s)",
	             left, nops, ops[first].key, ops[first].calls,
	             (long long)(kreq_test_now_ms() - ops[first].first_ms), ops[first].last_err);
}

/* 3 replicas with worker properties conf (KREQ_FAULT_WORKER_SET) under a
 * steady load of ROLL_RATE new calls/s, up to ROLL_WINDOW in flight
 * (handlers 0-40 ms; a call that fails is called again): 3 s of
 * warm-up, 10 s measured steady, then the roll (another thread) while the
 * load goes on; then every call settles and the records are checked as in
 * the crash tests. */
static void rolling_restart(const char *conf, roll_fig_t *fig)
{
	setenv("KREQ_FAULT_WORKER_SET", conf, 1);
	for (int w = 0; w < 3; w++)
		worker_spawn(w, "transactional");
	kreq_client_t *c = load_client();
	ops_init(MAX_OPS);
	kreq_future_t *win[ROLL_WINDOW] = {0};
	int which[ROLL_WINDOW], next = 0, ndone = 0, retry[MAX_OPS], nretry = 0, inflight = 0;
	int64_t t_start = kreq_test_now_ms(), t_roll = t_start + 13000, rate = roll_rate();
	bool rolling = false;
	pthread_t th;
	atomic_store(&roll_done, false);
	for (;;) {
		int64_t now = kreq_test_now_ms();
		if (now - t_start >= 600000)
			roll_stuck(next);
		if (!rolling && now >= t_roll) {
			ck_assert_int_eq(pthread_create(&th, NULL, roll_main, NULL), 0);
			rolling = true;
		}
		bool feeding = !atomic_load(&roll_done);
		if (!feeding && inflight == 0 && nretry == 0)
			break;
		for (int w = 0; w < ROLL_WINDOW; w++) {
			if (win[w])
				continue;
			int op = -1;
			if (nretry && ops[retry[nretry - 1]].not_before <= now)
				op = retry[--nretry];
			else if (feeding && next < MAX_OPS &&
			         next < (now - t_start) * rate / 1000) /* offered load */
				op = next++;
			if (op < 0)
				break;
			ck_assert_msg(next < MAX_OPS, "out of operations: raise MAX_OPS");
			if (!(win[w] = submit(c, &ops[op])))
				retry[nretry++] = op;
			else
				inflight++;
			which[w] = op;
		}
		kreq_future_t *live[ROLL_WINDOW];
		size_t slot[ROLL_WINDOW], nlive = 0, idx;
		for (size_t w = 0; w < ROLL_WINDOW; w++)
			if (win[w]) {
				slot[nlive] = w;
				live[nlive++] = win[w];
			}
		if (nlive == 0) {
			kreq_test_poll_pause();
			continue;
		}
		int rc = kreq_future_wait_any(live, nlive, 100, &idx);
		if (rc == KREQ_ETIMEDOUT)
			continue;
		ck_assert_int_eq(rc, KREQ_OK);
		idx = slot[idx];
		op_t *op = &ops[which[idx]];
		if (settle(op, win[idx])) {
			op->done = true;
			done_at[ndone++] = kreq_test_now_ms();
		} else {
			retry[nretry++] = which[idx];
		}
		kreq_future_release(win[idx]);
		win[idx] = NULL;
		inflight--;
	}
	pthread_join(th, NULL);
	kreq_client_destroy(c);
	for (int w = 0; w < 3; w++)
		worker_signal(w, SIGTERM);
	fig->nops = next;
	check_records(next, &fig->reruns);
	fig->steady = done_between(ndone, t_roll - 10000, t_roll) / 10.0;
	fig->roll_ms = roll_t1 - roll_t0;
	fig->during = done_between(ndone, roll_t0, roll_t1) * 1000.0 / (double)fig->roll_ms;
	fig->ratio = fig->during / fig->steady;
	fig->stall_ms = longest_gap(ndone, roll_t0, roll_t1);
	unsetenv("KREQ_FAULT_WORKER_SET");
}

static void roll_print(const char *name, const roll_fig_t *f)
{
	fprintf(stderr,
	        "rolling_restart %s: steady %.1f calls/s, roll %.1f s, during the roll %.1f "
	        "calls/s, ratio %.2f, longest stall %lld ms (%d calls, %d uncommitted "
	        "re-executions)\n",
	        name, f->steady, (double)f->roll_ms / 1000.0, f->during, f->ratio,
	        (long long)f->stall_ms, f->nops, f->reruns);
}

/* Issue 17: a rolling restart of 3 replicas keeps throughput at >= 70% of
 * the steady rate. Before: eager rebalancing and dynamic membership (the
 * properties switch them back), printed only; after: the defaults (static
 * members, cooperative-sticky), asserted. Then the same with SIGKILL (a
 * crash and an immediate restart), printed. Same run, same Kafka broker,
 * a group and topics of its own for each. */
START_TEST(test_rolling_restart_throughput)
{
	static const char *const confs[2] = {
	    "worker.static.membership=false;kafka.partition.assignment.strategy=range", ""};
	static const char *const names[2] = {"eager, dynamic members",
	                                     "static members, cooperative-sticky"};
	roll_fig_t fig[2][2];
	for (int k = 0; k < 2; k++) {
		roll_sig = k ? SIGKILL : SIGTERM;
		for (int after = 0; after < 2; after++) {
			if (k || after) { /* a new prefix: a group and topics of its own */
				teardown();
				setup();
			}
			rolling_restart(confs[after], &fig[k][after]);
			char name[128];
			snprintf(name, sizeof(name), "%s %s (%s)", k ? "SIGKILL" : "SIGTERM",
			         after ? "after" : "before", names[after]);
			roll_print(name, &fig[k][after]);
		}
	}
	roll_sig = SIGTERM;
	ck_assert_msg(fig[0][1].ratio >= 0.7, "throughput during the roll %.1f%% of steady",
	              fig[0][1].ratio * 100);
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
	/* issue 17: restarts and rebalances (its own CTest: test_member) */
	TCase *tm = tcase_create("member");
	tcase_add_checked_fixture(tm, setup_own_cluster, teardown_own_cluster);
	tcase_set_timeout(tm, 900);
	tcase_add_test(tm, test_kreqd_start_while_kafka_down);
	tcase_add_test(tm, test_kreqd_start_kafka_stays_down);
	tcase_add_test(tm, test_static_member_restart_keeps_partitions);
	tcase_add_test(tm, test_static_member_duplicate_instance_refused);
	tcase_set_tags(tm, "member");
	suite_add_tcase(s, tm);
	TCase *tr = tcase_create("revoke");
	tcase_add_checked_fixture(tr, setup, teardown);
	tcase_set_timeout(tr, 900);
	tcase_add_test(tr, test_revoke_with_slow_handlers);
	tcase_add_test(tr, test_rolling_restart_throughput);
	tcase_set_tags(tr, "member");
	suite_add_tcase(s, tr);
	return kreq_test_run_suite(s);
}
