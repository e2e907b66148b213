/*
 * test_kafka_harness.c — proves the real-Kafka-broker test harness is what kreq's
 * exactly-once claims need: a real Apache Kafka cluster (scripts/kafka.sh)
 * that runs transactions and ENFORCES read_committed isolation.
 *
 * One partition receives, from a transactional producer:
 *   transaction 1 (committed):  c1-0 .. c1-9
 *   transaction 2 (ABORTED):    ab-0 .. ab-4   (flushed to the log first)
 *   transaction 3 (committed):  c3-0 .. c3-2
 * A read_committed consumer must see exactly c1-*, c3-* in order; a
 * read_uncommitted consumer must also see ab-* (so the aborted records really
 * were in the log and isolation, not luck, hid them). The mock cluster would
 * fail this test: it does not enforce read_committed.
 *
 * Needs KREQ_TEST_BOOTSTRAP (fails, never skips, without it).
 */
#include "testsupport.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TXN_TIMEOUT_MS     30000
#define CONSUME_TIMEOUT_MS 30000
#define MAX_RECORDS        64
#define VALUE_MAX          32

struct history {
	char topic[96];
	char expected_committed[MAX_RECORDS][VALUE_MAX];
	size_t n_committed;
	char expected_all[MAX_RECORDS][VALUE_MAX];
	size_t n_all;
};

struct records {
	char values[MAX_RECORDS][VALUE_MAX];
	size_t n;
};

/* ---- producing --------------------------------------------------------- */

struct dr_state {
	int delivered;
	int failed;
	char first_error[256];
};

static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	(void)rk;
	struct dr_state *st = opaque;
	if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
		st->delivered++;
	} else if (st->failed++ == 0) {
		snprintf(st->first_error, sizeof st->first_error, "%s", rd_kafka_err2str(m->err));
	}
}

static rd_kafka_t *new_txn_producer(const char *bs, struct dr_state *st)
{
	char txn_id[96], errstr[512];
	kreq_test_topic_name(txn_id, sizeof txn_id, "txnid");
	rd_kafka_conf_t *conf = kreq_test_conf_new(bs, "transactional.id", txn_id,
	                                           "transaction.timeout.ms", "60000", NULL);
	rd_kafka_conf_set_dr_msg_cb(conf, dr_msg_cb);
	rd_kafka_conf_set_opaque(conf, st);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
	if (rk == NULL)
		rd_kafka_conf_destroy(conf);
	ck_assert_msg(rk != NULL, "transactional producer: %s", errstr);
	kreq_test_check_txn(rd_kafka_init_transactions(rk, TXN_TIMEOUT_MS), "init_transactions");
	return rk;
}

static void produce_value(rd_kafka_t *rk, const char *topic, const char *value)
{
	rd_kafka_resp_err_t err =
	    rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(0),
	                      RD_KAFKA_V_VALUE((void *)value, strlen(value)),
	                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
	ck_assert_msg(err == RD_KAFKA_RESP_ERR_NO_ERROR, "produce %s to %s: %s", value, topic,
	              rd_kafka_err2str(err));
}

/* One transaction of n records "<tag>-<i>"; recorded in the expectations. */
static void run_txn(rd_kafka_t *rk, struct history *h, const char *tag, int n, bool commit)
{
	kreq_test_check_txn(rd_kafka_begin_transaction(rk), "begin_transaction");
	for (int i = 0; i < n; i++) {
		ck_assert(h->n_all < MAX_RECORDS);
		char *v = h->expected_all[h->n_all++];
		snprintf(v, VALUE_MAX, "%s-%d", tag, i);
		produce_value(rk, h->topic, v);
		if (commit)
			memcpy(h->expected_committed[h->n_committed++], v, VALUE_MAX);
	}
	if (commit) {
		kreq_test_check_txn(rd_kafka_commit_transaction(rk, TXN_TIMEOUT_MS),
		                    "commit_transaction");
		return;
	}
	/* Make sure the doomed records are really in the partition log before
	 * aborting, so that hiding them is the consumer's isolation at work. */
	rd_kafka_resp_err_t err = rd_kafka_flush(rk, TXN_TIMEOUT_MS);
	ck_assert_msg(err == RD_KAFKA_RESP_ERR_NO_ERROR, "flush before abort: %s",
	              rd_kafka_err2str(err));
	kreq_test_check_txn(rd_kafka_abort_transaction(rk, TXN_TIMEOUT_MS), "abort_transaction");
}

static void produce_history(struct history *h)
{
	const char *bs = kreq_test_bootstrap();
	memset(h, 0, sizeof *h);
	kreq_test_topic_name(h->topic, sizeof h->topic, "txn");
	kreq_test_create_topic(bs, h->topic, 1, 30000);

	struct dr_state st = {0};
	rd_kafka_t *rk = new_txn_producer(bs, &st);
	run_txn(rk, h, "c1", 10, true);
	run_txn(rk, h, "ab", 5, false);
	run_txn(rk, h, "c3", 3, true);
	rd_kafka_resp_err_t err = rd_kafka_flush(rk, TXN_TIMEOUT_MS);
	rd_kafka_destroy(rk);
	ck_assert_msg(err == RD_KAFKA_RESP_ERR_NO_ERROR, "final flush: %s", rd_kafka_err2str(err));
	ck_assert_msg(st.failed == 0, "%d deliveries failed, first: %s", st.failed, st.first_error);
	ck_assert_int_eq(st.delivered, (int)h->n_all);
}

/* ---- consuming ----------------------------------------------------------- */

static rd_kafka_t *new_assigned_consumer(const char *bs, const char *topic, const char *isolation)
{
	char errstr[512], group[96];
	kreq_test_topic_name(group, sizeof group, "group"); /* librdkafka's assign() needs one */
	rd_kafka_conf_t *conf =
	    kreq_test_conf_new(bs, "group.id", group, "isolation.level", isolation,
	                       "enable.auto.commit", "false", "fetch.wait.max.ms", "100", NULL);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
	if (rk == NULL)
		rd_kafka_conf_destroy(conf);
	ck_assert_msg(rk != NULL, "consumer (%s): %s", isolation, errstr);
	rd_kafka_poll_set_consumer(rk);

	rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(parts, topic, 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
	rd_kafka_resp_err_t err = rd_kafka_assign(rk, parts);
	rd_kafka_topic_partition_list_destroy(parts);
	ck_assert_msg(err == RD_KAFKA_RESP_ERR_NO_ERROR, "assign %s [0]: %s", topic,
	              rd_kafka_err2str(err));
	return rk;
}

/* Handle one polled message; returns true once `last` has been read. */
static bool take_message(rd_kafka_message_t *m, struct records *got, const char *last)
{
	if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
		return false;
	ck_assert_msg(m->err == RD_KAFKA_RESP_ERR_NO_ERROR, "consume error: %s",
	              rd_kafka_message_errstr(m));
	ck_assert_msg(got->n < MAX_RECORDS, "more than %d records consumed", MAX_RECORDS);
	ck_assert_msg(m->len < VALUE_MAX, "unexpected record of %zu bytes", m->len);
	memcpy(got->values[got->n], m->payload, m->len);
	got->values[got->n][m->len] = '\0';
	return strcmp(got->values[got->n++], last) == 0;
}

/* Read partition 0 from the beginning until the record `last` (the final
 * committed one: anything else visible precedes it) or the deadline. */
static void consume_until(const char *bs, const char *topic, const char *isolation,
                          const char *last, struct records *got)
{
	rd_kafka_t *rk = new_assigned_consumer(bs, topic, isolation);
	const int64_t deadline = kreq_test_now_ms() + CONSUME_TIMEOUT_MS;
	bool done = false;
	memset(got, 0, sizeof *got);
	while (!done && kreq_test_now_ms() < deadline) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
		if (m == NULL)
			continue;
		done = take_message(m, got, last);
		rd_kafka_message_destroy(m);
	}
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	ck_assert_msg(done, "%s consumer did not reach record %s within %d ms (got %zu)", isolation,
	              last, CONSUME_TIMEOUT_MS, got->n);
}

static void assert_records(const struct records *got, char (*want)[VALUE_MAX], size_t n,
                           const char *isolation)
{
	for (size_t i = 0; i < got->n && i < n; i++)
		ck_assert_msg(strcmp(got->values[i], want[i]) == 0,
		              "%s: record %zu is '%s', expected '%s'", isolation, i, got->values[i],
		              want[i]);
	ck_assert_msg(got->n == n, "%s: %zu records consumed, expected %zu", isolation, got->n, n);
}

/* ---- tests ----------------------------------------------------------------- */

START_TEST(read_committed_hides_aborted_transaction)
{
	struct history h;
	struct records got;
	produce_history(&h);
	consume_until(kreq_test_bootstrap(), h.topic, "read_committed",
	              h.expected_committed[h.n_committed - 1], &got);
	assert_records(&got, h.expected_committed, h.n_committed, "read_committed");
	for (size_t i = 0; i < got.n; i++)
		ck_assert_msg(strncmp(got.values[i], "ab-", 3) != 0,
		              "aborted record %s visible to read_committed", got.values[i]);
}
END_TEST

START_TEST(read_uncommitted_sees_aborted_records)
{
	struct history h;
	struct records got;
	produce_history(&h);
	consume_until(kreq_test_bootstrap(), h.topic, "read_uncommitted",
	              h.expected_all[h.n_all - 1], &got);
	assert_records(&got, h.expected_all, h.n_all, "read_uncommitted");
}
END_TEST

static Suite *harness_suite(void)
{
	Suite *s = suite_create("kafka_harness");
	TCase *tc = tcase_create("transactions");
	tcase_set_timeout(tc, 100); /* below the CTest timeout: Check reports it */
	tcase_add_test(tc, read_committed_hides_aborted_transaction);
	tcase_add_test(tc, read_uncommitted_sees_aborted_records);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return kreq_test_run_suite(harness_suite());
}
