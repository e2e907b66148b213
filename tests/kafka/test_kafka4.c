/*
 * test_kafka4.c — Apache Kafka 4.x in the harness, and the transaction
 * protocol kreq's librdkafka speaks with it (docs/operations.md,
 * "Supported Kafka versions").
 *
 * Why: Kafka 4.x offers KIP-890's transaction protocol (transaction.version=2:
 * the producer epoch is bumped at every transaction end, so a request delayed
 * past its transaction cannot land in the next one). Whether that defence
 * protects kreq's workers depends on the client: the coordinator uses it only
 * for transactions ended with EndTxn v5+, and librdkafka 2.12.1 sends v1.
 * The docs state "classic protocol, no epoch bump" from a measurement; this
 * suite repeats the measurement, so that a librdkafka upgrade that changes
 * the answer fails here and sends whoever upgrades to the docs (and to the
 * worker's fencing rule) instead of silently changing kreq's guarantees.
 *
 * The suite starts a one-node Kafka 4.4.0 cluster of its own
 * (KREQ_KAFKA_VERSION=4.4.0 scripts/kafka.sh, whatever Kafka the other
 * suites share) and:
 *   - checks the harness formatted it with transaction.version=2 finalized
 *     (kafka.sh features, i.e. kafka-features describe);
 *   - runs committed and aborted transactions through one librdkafka
 *     transactional producer and reads, from the coordinator's transaction
 *     log (kafka.sh txn-state), the producer epochs and the client
 *     transaction version they were run with.
 */
#include "cluster.h"
#include "testsupport.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define KAFKA4_VERSION "4.4.0"
#define TXN_TIMEOUT_MS 30000
#define N_COMMITS      5
#define N_ABORTS       1

static kreq_test_cluster_t cluster;

/* Runs a shell command; its stdout (at most size - 1 bytes) goes to out.
 * Returns the command's exit status (-1 if it could not run). */
static int run_capture(const char *cmd, char *out, size_t size)
{
	out[0] = 0;
	FILE *p = popen(cmd, "r");
	if (p == NULL)
		return -1;
	size_t n = fread(out, 1, size - 1, p);
	out[n] = 0;
	int rc = pclose(p);
	return rc == -1 ? -1 : WEXITSTATUS(rc);
}

/* scripts/kafka.sh CMD --dir <the suite's cluster> [ARG], stdout into out. */
static int kafka_sh_capture(const char *cmd, const char *arg, char *out, size_t size)
{
	char sh[1400];
	snprintf(sh, sizeof sh, "%s/scripts/kafka.sh %s --dir %s %s", KREQ_SOURCE_DIR, cmd,
	         cluster.dir, arg ? arg : "");
	return run_capture(sh, out, size);
}

static void require_cluster(void)
{
	ck_assert_msg(cluster.bootstrap[0],
	              "the Kafka " KAFKA4_VERSION " cluster did not start (see the log above)");
}

START_TEST(harness_finalizes_transaction_version_2)
{
	require_cluster();
	char out[8192];
	int rc = kafka_sh_capture("features", NULL, out, sizeof out);
	ck_assert_msg(rc == 0, "kafka.sh features exited %d: %s", rc, out);
	const char *line = strstr(out, "Feature: transaction.version");
	ck_assert_msg(line != NULL, "no transaction.version in kafka-features describe:\n%s", out);
	const char *level = strstr(line, "FinalizedVersionLevel:");
	ck_assert_msg(level != NULL, "no finalized level for transaction.version:\n%s", line);
	ck_assert_msg(atoi(level + strlen("FinalizedVersionLevel:")) == 2,
	              "transaction.version is not finalized at 2:\n%s", line);
}
END_TEST

/* N_COMMITS committed and N_ABORTS aborted transactions, one record each,
 * through one producer with transactional.id txn_id. */
static void run_transactions(const char *txn_id)
{
	char topic[96], errstr[512];
	kreq_test_topic_name(topic, sizeof topic, "kafka4");
	kreq_test_create_topic(cluster.bootstrap, topic, 1, 30000);
	rd_kafka_conf_t *conf = kreq_test_conf_new(cluster.bootstrap, "transactional.id", txn_id,
	                                           "transaction.timeout.ms", "60000", NULL);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
	if (rk == NULL)
		rd_kafka_conf_destroy(conf);
	ck_assert_msg(rk != NULL, "transactional producer: %s", errstr);
	kreq_test_check_txn(rd_kafka_init_transactions(rk, TXN_TIMEOUT_MS), "init_transactions");
	for (int i = 0; i < N_COMMITS + N_ABORTS; i++) {
		kreq_test_check_txn(rd_kafka_begin_transaction(rk), "begin_transaction");
		rd_kafka_resp_err_t err =
		    rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(0),
		                      RD_KAFKA_V_VALUE("v", 1), RD_KAFKA_V_END);
		ck_assert_msg(!err, "produce: %s", rd_kafka_err2str(err));
		if (i < N_COMMITS) {
			kreq_test_check_txn(rd_kafka_commit_transaction(rk, TXN_TIMEOUT_MS),
			                    "commit");
		} else {
			ck_assert_int_eq(rd_kafka_flush(rk, TXN_TIMEOUT_MS), 0);
			kreq_test_check_txn(rd_kafka_abort_transaction(rk, TXN_TIMEOUT_MS),
			                    "abort");
		}
	}
	rd_kafka_destroy(rk);
}

/* The coordinator writes a transaction's Complete* state after EndTxn
 * returns: true once txn-state shows every transaction ended. */
static bool txn_state_complete(const char *txn_id, char *out, size_t size)
{
	char want[64];
	snprintf(want, sizeof want, "committed=%d aborted=%d", N_COMMITS, N_ABORTS);
	return kafka_sh_capture("txn-state", txn_id, out, size) == 0 && strstr(out, want) != NULL;
}

START_TEST(librdkafka_speaks_classic_protocol_on_transaction_version_2)
{
	require_cluster();
	char txn_id[96], out[4096];
	kreq_test_topic_name(txn_id, sizeof txn_id, "kafka4-txnid");
	run_transactions(txn_id);
	KREQ_TEST_AWAIT(txn_state_complete(txn_id, out, sizeof out), 60000);
	/* One epoch for all transactions and no client transaction version:
	 * the classic protocol. KIP-890 part 2 would show epochs 0..6 and
	 * client_transaction_version=2 (Kafka's Java producer does). */
	ck_assert_msg(
	    strstr(out, " epochs=0 ") != NULL &&
	        strstr(out, "client_transaction_version=-\n") != NULL,
	    "librdkafka %s no longer runs the classic transaction protocol on Kafka " KAFKA4_VERSION
	    " (transaction log: %s). If it now bumps the epoch per "
	    "transaction (KIP-890 part 2), update docs/operations.md, \"Supported Kafka "
	    "versions\", and this test.",
	    rd_kafka_version_str(), out);
}
END_TEST

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	Suite *s = suite_create("kafka4");
	TCase *tc = tcase_create("kafka4");
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, harness_finalizes_transaction_version_2);
	tcase_add_test(tc, librdkafka_speaks_classic_protocol_on_transaction_version_2);
	suite_add_tcase(s, tc);
	/* a 4.x cluster whatever the shared Kafka is (kafka.sh reads it at start) */
	setenv("KREQ_KAFKA_VERSION", KAFKA4_VERSION, 1);
	setenv("KREQ_KAFKA_TX_VERSION", "2", 1);
	if (kreq_test_cluster_start(&cluster, "kafka4", 1))
		fprintf(stderr,
		        "cannot start a Kafka " KAFKA4_VERSION " cluster: every test fails\n");
	int rc = kreq_test_run_suite(s);
	kreq_test_cluster_stop(&cluster);
	return rc;
}
