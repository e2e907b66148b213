/*
 * test_cluster3.c — kreq on a real 3-broker Kafka cluster of its own
 * (scripts/kafka.sh --nodes 3, started once for the suite and stopped also
 * when a test fails), issue 17 part 3.
 *
 * First the topics kreq creates get replication 3 and min.insync.replicas
 * 2 although the cluster's own topic defaults are Kafka's stock ones (1
 * and 1). Then, under a steady load from a client against a real worker
 * process (fault_worker), one Kafka broker at a time fails: kill -9 of the
 * leader of a requests partition, of a results partition (each on a
 * Kafka broker that is neither coordinator of the worker), of the
 * transaction coordinator of the worker, of its group coordinator, and a
 * controlled shutdown (SIGTERM) of one Kafka broker that is neither; each
 * is started again later in the load.
 * For each, the checks of tests/support/faultload.h hold (every call
 * settles, no idempotency key gets two different replies, no committed
 * request runs again) and the test prints how long calls stalled.
 */
#include <check.h>
#include <signal.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cluster.h"
#include "faultload.h"
#include "kreq/client.h"
#include "kreq/error.h"
#include "testsupport.h"

#define NOPS 700

static kreq_test_cluster_t cluster;

/* Every node runs, and every partition of every topic has all its
 * replicas in sync: a Kafka broker started again by the previous test has
 * caught up, so failing another one leaves min.insync.replicas. */
static bool cluster_whole(void *arg)
{
	rd_kafka_t *rk = arg;
	const struct rd_kafka_metadata *md = NULL;
	if (rd_kafka_metadata(rk, 1, NULL, &md, 5000) != RD_KAFKA_RESP_ERR_NO_ERROR)
		return false;
	bool whole = md->broker_cnt == 3;
	for (int t = 0; whole && t < md->topic_cnt; t++)
		for (int p = 0; whole && p < md->topics[t].partition_cnt; p++)
			whole = md->topics[t].partitions[p].isr_cnt ==
			        md->topics[t].partitions[p].replica_cnt;
	rd_kafka_metadata_destroy(md);
	return whole;
}

/* Starts any node a failed test left stopped, then waits until the
 * cluster is whole. */
static void cluster_heal(void)
{
	for (int n = 1; n <= 3; n++) {
		char cmd[1400], node[16];
		snprintf(cmd, sizeof(cmd), "[ -f %s/node%d/kafka.pid ]", cluster.dir, n);
		snprintf(node, sizeof(node), "%d", n);
		if (system(cmd) != 0)
			ck_assert_int_eq(kreq_test_cluster_sh(&cluster, "start-node", node), 0);
	}
	char errstr[512];
	rd_kafka_conf_t *conf =
	    kreq_test_conf_new(cluster.bootstrap, "group.id", "kreq-test-heal", NULL);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	ck_assert_msg(rk != NULL, "%s", errstr);
	bool whole = kreq_test_wait_until(cluster_whole, rk, 120000);
	rd_kafka_destroy(rk);
	ck_assert_msg(whole, "the 3-broker cluster did not get all replicas in sync in 120 s");
}

static void setup(void)
{
	fault_worker_path = KREQ_FAULT_WORKER;
	ck_assert_msg(cluster.bootstrap[0], "the suite's 3-broker Kafka cluster did not start");
	bootstrap = cluster.bootstrap;
	cluster_heal();
	fault_fixture_open("c3", "cluster3");
}

static void teardown(void)
{
	fault_fixture_close();
}

/* ---- where things are -------------------------------------------------------- */

/* The Kafka broker (node number: kafka.sh gives node N the id N) leading
 * topic's partition, per the cluster's metadata. */
static int leader_within(const char *topic, int partition, int timeout_ms)
{
	char errstr[512];
	rd_kafka_conf_t *conf = kreq_test_conf_new(bootstrap, "group.id", "kreq-test-leader", NULL);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	ck_assert_msg(rk != NULL, "%s", errstr);
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
	const struct rd_kafka_metadata *md = NULL;
	int leader = -1;
	int64_t until = kreq_test_now_ms() + timeout_ms;
	while (leader < 1 && kreq_test_now_ms() < until) {
		if (rd_kafka_metadata(rk, 0, rkt, &md, 5000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
			if (md->topic_cnt == 1 && partition < md->topics[0].partition_cnt)
				leader = md->topics[0].partitions[partition].leader;
			rd_kafka_metadata_destroy(md);
		}
		if (leader < 1)
			kreq_test_poll_pause();
	}
	rd_kafka_topic_destroy(rkt);
	rd_kafka_destroy(rk);
	return leader;
}

static int leader_of(const char *topic, int partition)
{
	int leader = leader_within(topic, partition, 30000);
	ck_assert_msg(leader >= 1 && leader <= 3, "no leader for %s [%d]", topic, partition);
	return leader;
}

/* The partition of Kafka's internal topic (10 partitions each,
 * scripts/kafka.sh) holding key: Utils.abs(Java String.hashCode(key)) % 10, as
 * Kafka's TransactionStateManager and GroupMetadataManager compute it. */
static int internal_partition(const char *key)
{
	uint32_t h = 0;
	for (const unsigned char *p = (const unsigned char *)key; *p; p++)
		h = h * 31u + *p; /* ASCII: UTF-16 units are bytes */
	int32_t j = (int32_t)h;   /* Kafka's Utils.abs: |j|, 0 for INT32_MIN */
	return j == INT32_MIN ? 0 : (j < 0 ? -j : j) % 10;
}

/* The transaction coordinator of transactional.id: the leader of its
 * __transaction_state partition. */
static int txn_coordinator(const char *id)
{
	int part = internal_partition(id);
	/* the Kafka broker that initialised it logged the partition: check
	 * that this computation agrees with Kafka's */
	char cmd[1400];
	snprintf(cmd, sizeof(cmd),
	         "grep -hF 'Initialized transactionalId %s with' %s/node*/logs/server.log* | "
	         "grep -qF 'on partition __transaction_state-%d ('",
	         id, cluster.dir, part);
	ck_assert_msg(system(cmd) == 0, "%s: no Kafka broker logged it on partition %d", id, part);
	return leader_of("__transaction_state", part);
}

/* The group coordinator of group.id: the leader of its __consumer_offsets
 * partition. */
static int group_coordinator(const char *group)
{
	return leader_of("__consumer_offsets", internal_partition(group));
}

static char req_topic[160], res_topic[160], txn_id[160], group_id[160];
static int txn_node, group_node; /* the worker's coordinators, as chosen */

/* A prefix whose worker has its transaction coordinator and its group
 * coordinator on different Kafka brokers (when Kafka's internal topics
 * exist already), so that each fault hits the one role it names: a
 * group coordinator failing also empties the group for a moment, which
 * the client reads as "no worker" (docs/operations.md). */
static void choose_prefix(void)
{
	for (int i = 0; i < 40; i++) {
		if (i)
			kreq_test_topic_name(prefix, sizeof(prefix), "c3");
		snprintf(txn_id, sizeof(txn_id), "%s.svc.w0", prefix);
		snprintf(group_id, sizeof(group_id), "%s.svc", prefix);
		txn_node = leader_within("__transaction_state", internal_partition(txn_id), 2000);
		group_node =
		    leader_within("__consumer_offsets", internal_partition(group_id), 2000);
		if (txn_node < 1 || group_node < 1 || txn_node != group_node)
			break;
	}
	snprintf(req_topic, sizeof(req_topic), "%s.svc.requests", prefix);
	snprintf(res_topic, sizeof(res_topic), "%s.svc.results", prefix);
}

/* ---- replication ------------------------------------------------------------ */

static void assert_replication(const char *topic, int rf, int isr)
{
	int have_rf, have_isr;
	kreq_test_topic_replication(bootstrap, topic, &have_rf, &have_isr);
	ck_assert_msg(have_rf == rf && have_isr == isr,
	              "%s: replication %d, min.insync.replicas %d (want %d, %d)", topic, have_rf,
	              have_isr, rf, isr);
}

START_TEST(test_topics_replicated_3_isr_2)
{
	worker_spawn(0, "transactional");
	kreq_conf_t *conf = kreq_conf_new();
	char err[512], reply[200], topic[200];
	const char *kv[] = {"kafka.bootstrap.servers",
	                    bootstrap,
	                    "topic.prefix",
	                    prefix,
	                    "client.id",
	                    "c3",
	                    "log.level",
	                    "3",
	                    NULL};
	for (const char *const *p = kv; *p; p += 2)
		ck_assert_int_eq(kreq_conf_set(conf, p[0], p[1], err, sizeof(err)), KREQ_OK);
	kreq_client_t *c = kreq_client_new(conf, kr, err, sizeof(err));
	ck_assert_msg(c != NULL, "%s", err);
	kreq_conf_destroy(conf);
	kreq_client_destroy(c);
	snprintf(reply, sizeof(reply), "%s.reply.c3", prefix);
	assert_replication(reply, 3, 2);
	snprintf(topic, sizeof(topic), "%s.svc.requests", prefix);
	assert_replication(topic, 3, 2);
	snprintf(topic, sizeof(topic), "%s.svc.results", prefix);
	assert_replication(topic, 3, 2);
	worker_signal(0, SIGTERM);
}
END_TEST

/* ---- one Kafka broker fails under load ---------------------------------------- */

typedef struct {
	const char *name;
	int (*victim)(void); /* the node to fail, found when the fault starts */
	bool controlled;     /* SIGTERM (controlled shutdown), else kill -9 */
	int node;
	bool was_txn_coord, was_group_coord; /* roles the failed node had too */
	int64_t fault_ms, restart_ms;
	pid_t bg; /* kafka.sh stop-node / start-node running in the background */
	int worker_restarts;
} fault_t;

/* kafka.sh cmd --dir <cluster> node, in a child process: the load goes on
 * while it waits for a Kafka broker to stop or to serve again. */
static pid_t kafka_sh_bg(const char *cmd, int node)
{
	char arg[16];
	snprintf(arg, sizeof(arg), "%d", node);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		_exit(kreq_test_cluster_sh(&cluster, cmd, arg) == 0 ? 0 : 1);
	return pid;
}

/* true once the background kafka.sh (if any) has finished, which it must
 * have done successfully */
static bool bg_done(fault_t *f, bool block)
{
	int st;
	if (f->bg <= 0)
		return true;
	pid_t r = waitpid(f->bg, &st, block ? 0 : WNOHANG);
	if (r == 0)
		return false;
	ck_assert_int_eq(r, f->bg);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: kafka.sh failed", f->name);
	f->bg = 0;
	return true;
}

/* A worker that exits on an error it cannot recover from is restarted, as
 * its supervisor (systemd Restart=on-failure) would. */
static void supervise(fault_t *f)
{
	int st;
	if (workers[0].pid > 0 && waitpid(workers[0].pid, &st, WNOHANG) == workers[0].pid) {
		workers[0].pid = 0;
		f->worker_restarts++;
		worker_spawn(0, "transactional");
	}
}

#define FAULT_STEP   150
#define RESTART_STEP 450

static void fault_schedule(int step, void *arg)
{
	fault_t *f = arg;
	supervise(f);
	if (step == FAULT_STEP) {
		f->node = f->victim();
		f->was_txn_coord = txn_coordinator(txn_id) == f->node;
		f->was_group_coord = group_coordinator(group_id) == f->node;
		f->fault_ms = kreq_test_now_ms();
		char node[16];
		snprintf(node, sizeof(node), "%d", f->node);
		if (f->controlled)
			f->bg = kafka_sh_bg("stop-node", f->node);
		else
			ck_assert_int_eq(kreq_test_cluster_sh(&cluster, "kill-node", node), 0);
	}
	if (step >= RESTART_STEP && f->node && !f->restart_ms && bg_done(f, false)) {
		f->restart_ms = kreq_test_now_ms();
		f->bg = kafka_sh_bg("start-node", f->node);
	}
}

static void run_fault(fault_t *f)
{
	choose_prefix();
	worker_spawn(0, "transactional");
	int64_t t0 = kreq_test_now_ms();
	run_load(NOPS, fault_schedule, f);
	int64_t t1 = kreq_test_now_ms();
	ck_assert_msg(f->node, "%s: the load ended before the fault", f->name);
	if (!f->restart_ms) { /* the load outran the schedule: restart now */
		bg_done(f, true);
		f->restart_ms = kreq_test_now_ms();
		f->bg = kafka_sh_bg("start-node", f->node);
	}
	bg_done(f, true); /* the node serves again for the next test */
	supervise(f);
	worker_signal(0, SIGTERM);
	int reruns, retried = 0;
	check_records(NOPS, &reruns);
	for (int i = 0; i < NOPS; i++)
		retried += ops[i].calls - 1;
	stall_t calm = load_stall(NOPS, t0, f->fault_ms - 2000);
	stall_t st = load_stall(NOPS, f->fault_ms, f->restart_ms);
	fprintf(stderr,
	        "cluster3 %s (node %d%s%s): %d ops in %.1f s; longest time without a reply %lld "
	        "ms; "
	        "calls submitted during the fault (%d): p99 %lld ms, max %lld ms (before it: p99 "
	        "%lld ms); %d calls repeated after an error, %d uncommitted re-executions, %d "
	        "worker restarts\n",
	        f->name, f->node, f->was_txn_coord ? ", the worker's transaction coordinator" : "",
	        f->was_group_coord ? ", the worker's group coordinator" : "", NOPS,
	        (double)(t1 - t0) / 1000.0, (long long)st.max_gap_ms, st.ops, (long long)st.p99_ms,
	        (long long)st.max_ms, (long long)calm.p99_ms, retried, reruns, f->worker_restarts);
}

/* The leader of the first partition of topic led by a Kafka broker that
 * is neither coordinator of the worker (partition 0's if there is none). */
static int plain_leader(const char *topic)
{
	for (int p = 0; p < 4; p++) {
		int l = leader_of(topic, p);
		if (l != txn_node && l != group_node)
			return l;
	}
	return leader_of(topic, 0);
}

static int requests_leader(void)
{
	return plain_leader(req_topic);
}

static int results_leader(void)
{
	return plain_leader(res_topic);
}

static int worker_coordinator(void)
{
	return txn_coordinator(txn_id);
}

static int worker_group_coordinator(void)
{
	return group_coordinator(group_id);
}

/* a Kafka broker that is neither coordinator of the worker, if any */
static int plain_broker(void)
{
	for (int n = 1; n <= 3; n++)
		if (n != txn_node && n != group_node)
			return n;
	return 1 + (int)randombytes_uniform(3);
}

START_TEST(test_kill9_requests_leader)
{
	fault_t f = {.name = "kill -9 requests leader", .victim = requests_leader};
	run_fault(&f);
}
END_TEST

START_TEST(test_kill9_results_leader)
{
	fault_t f = {.name = "kill -9 results leader", .victim = results_leader};
	run_fault(&f);
}
END_TEST

START_TEST(test_kill9_txn_coordinator)
{
	fault_t f = {.name = "kill -9 transaction coordinator", .victim = worker_coordinator};
	run_fault(&f);
}
END_TEST

START_TEST(test_kill9_group_coordinator)
{
	fault_t f = {.name = "kill -9 group coordinator", .victim = worker_group_coordinator};
	run_fault(&f);
}
END_TEST

START_TEST(test_controlled_shutdown)
{
	fault_t f = {.name = "controlled shutdown", .victim = plain_broker, .controlled = true};
	run_fault(&f);
}
END_TEST

/* One case per test (CK_RUN_CASE=<name> runs one); the cluster is the
 * suite's, started before the first and stopped after the last, also when
 * a test failed (the tests run in child processes). */
static void add_case(Suite *s, const char *name, const TTest *test)
{
	TCase *tc = tcase_create(name);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, test);
	suite_add_tcase(s, tc);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	Suite *s = suite_create("cluster3");
	add_case(s, "replication", test_topics_replicated_3_isr_2);
	add_case(s, "requests_leader", test_kill9_requests_leader);
	add_case(s, "results_leader", test_kill9_results_leader);
	add_case(s, "txn_coordinator", test_kill9_txn_coordinator);
	add_case(s, "group_coordinator", test_kill9_group_coordinator);
	add_case(s, "controlled_shutdown", test_controlled_shutdown);
	if (kreq_test_cluster_start(&cluster, "kafka-cluster3", 3))
		fprintf(stderr, "cannot start the 3-broker Kafka cluster: every test fails\n");
	int rc = kreq_test_run_suite(s);
	kreq_test_cluster_stop(&cluster);
	return rc;
}
