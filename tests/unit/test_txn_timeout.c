/*
 * test_txn_timeout.c — the librdkafka kreq builds (scripts/librdkafka.sh)
 * returns from rd_kafka_send_offsets_to_transaction() at its timeout when
 * the group coordinator is down.
 *
 * Why: the worker's loop thread calls send_offsets_to_transaction() for
 * every transaction, with worker.txn.call.timeout.ms; past it, the
 * fencing rule (broker/worker/txn.c) re-creates the producer. Unpatched
 * librdkafka 2.12.1 waits for that call's result with no deadline, and
 * while its TxnOffsetCommit waits for a group coordinator nothing enforces
 * the timeout (confluentinc/librdkafka#5456): after a Kafka outage the
 * worker's loop blocked there for good (test_fence's outage case, gdb).
 * scripts/librdkafka/send-offsets-timeout.patch bounds the wait. Without
 * it this test blocks in the call and fails at its timeout.
 *
 * Unit level, on librdkafka's mock cluster (in this process): three mock
 * Kafka brokers, the transaction coordinator on 1, the group coordinator
 * on 2, which is taken down once the transaction has a record.
 */
#include <check.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>

#include "testsupport.h"

#define CALL_TIMEOUT_MS 2000

static rd_kafka_t *txn_producer(rd_kafka_mock_cluster_t **mc)
{
	char err[512];
	rd_kafka_conf_t *c = rd_kafka_conf_new();
	static const char *const kv[] = {"test.mock.num.brokers",
	                                 "3",
	                                 "transactional.id",
	                                 "txn-t",
	                                 "socket.timeout.ms",
	                                 "1000",
	                                 "log_level",
	                                 "3",
	                                 NULL};
	for (int i = 0; kv[i]; i += 2)
		ck_assert_msg(rd_kafka_conf_set(c, kv[i], kv[i + 1], err, sizeof(err)) ==
		                  RD_KAFKA_CONF_OK,
		              "%s: %s", kv[i], err);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof(err));
	ck_assert_msg(rk != NULL, "%s", err);
	*mc = rd_kafka_handle_mock_cluster(rk);
	ck_assert_ptr_nonnull(*mc);
	ck_assert_int_eq(rd_kafka_mock_coordinator_set(*mc, "transaction", "txn-t", 1), 0);
	ck_assert_int_eq(rd_kafka_mock_coordinator_set(*mc, "group", "grp-t", 2), 0);
	ck_assert_int_eq(rd_kafka_mock_topic_create(*mc, "topic-t", 1, 1), 0);
	return rk;
}

static void no_error(rd_kafka_error_t *e, const char *what)
{
	ck_assert_msg(e == NULL, "%s: %s", what, e ? rd_kafka_error_string(e) : "");
}

START_TEST(test_send_offsets_returns_at_timeout)
{
	rd_kafka_mock_cluster_t *mc;
	rd_kafka_t *rk = txn_producer(&mc);
	no_error(rd_kafka_init_transactions(rk, 10000), "init_transactions");
	no_error(rd_kafka_begin_transaction(rk), "begin_transaction");
	ck_assert_int_eq(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC("topic-t"),
	                                   RD_KAFKA_V_VALUE("v", 1), RD_KAFKA_V_END),
	                 RD_KAFKA_RESP_ERR_NO_ERROR);
	ck_assert_int_eq(rd_kafka_flush(rk, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);

	ck_assert_int_eq(rd_kafka_mock_broker_set_down(mc, 2), 0); /* the group coordinator */
	rd_kafka_topic_partition_list_t *offsets = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(offsets, "topic-t", 0)->offset = 1;
	rd_kafka_consumer_group_metadata_t *cg = rd_kafka_consumer_group_metadata_new("grp-t");
	int64_t t0 = kreq_test_now_ms();
	rd_kafka_error_t *e =
	    rd_kafka_send_offsets_to_transaction(rk, offsets, cg, CALL_TIMEOUT_MS);
	int64_t took = kreq_test_now_ms() - t0;
	rd_kafka_consumer_group_metadata_destroy(cg);
	rd_kafka_topic_partition_list_destroy(offsets);

	ck_assert_msg(e != NULL, "send_offsets_to_transaction succeeded with its group "
	                         "coordinator down");
	fprintf(stderr,
	        "send_offsets_to_transaction, group coordinator down: %s after %lld ms "
	        "(timeout %d ms)\n",
	        rd_kafka_error_string(e), (long long)took, CALL_TIMEOUT_MS);
	/* the worker takes a retriable error (outcome unknown) for a fencing
	 * and an abortable one for an abort: either is handled */
	ck_assert_msg(rd_kafka_error_is_retriable(e) || rd_kafka_error_txn_requires_abort(e),
	              "neither retriable nor abortable: %s", rd_kafka_error_string(e));
	ck_assert_msg(took < CALL_TIMEOUT_MS + 8000, "returned after %lld ms, timeout %d ms",
	              (long long)took, CALL_TIMEOUT_MS);
	rd_kafka_error_destroy(e);
	rd_kafka_destroy(rk);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("txn_timeout");
	TCase *tc = tcase_create("send_offsets");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_send_offsets_returns_at_timeout);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
