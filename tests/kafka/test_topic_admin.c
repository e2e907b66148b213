/*
 * test_topic_admin.c — the look at a topic a worker has just created
 * (kreq__topic_ready, common/topic_admin.h) against the real Kafka broker of
 * the kafka suites: a missing topic is "not yet" with the reason, a new
 * one is ready once its metadata shows it and every partition's leader
 * answers, partitions already seen answering are not asked again, and an
 * unreachable Kafka is "no answer" (-1), never a partition count. The
 * worker's wait built on it (broker/worker/topicwait.c kreq__topic_await_ready) is
 * exercised on 3 Kafka brokers by test_cluster3.
 */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "common/topic_admin.h"
#include "testsupport.h"

static rd_kafka_t *consumer(const char *bootstrap)
{
	char errstr[512];
	rd_kafka_conf_t *conf =
	    kreq_test_conf_new(bootstrap, "group.id", "kreq-test-topic-admin", NULL);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	ck_assert_msg(rk != NULL, "%s", errstr);
	return rk;
}

START_TEST(test_missing_topic_not_yet)
{
	rd_kafka_t *rk = consumer(kreq_test_bootstrap());
	char topic[96], why[300] = "";
	kreq_test_topic_name(topic, sizeof(topic), "topic-admin-missing");
	int ready = 0;
	ck_assert_int_eq(kreq__topic_ready(rk, topic, &ready, 10000, why, sizeof(why)), 0);
	ck_assert_int_eq(ready, 0);
	ck_assert_msg(strstr(why, "not in the cluster metadata"), "why: %s", why);
	/* a consumer only asks: the look did not auto-create it */
	ck_assert_int_eq(kreq__topic_partitions(rk, topic, 10000), 0);
	rd_kafka_destroy(rk);
}
END_TEST

START_TEST(test_created_topic_ready)
{
	rd_kafka_t *rk = consumer(kreq_test_bootstrap());
	char topic[96], why[300] = "";
	kreq_test_topic_name(topic, sizeof(topic), "topic-admin-new");
	ck_assert_int_eq(kreq__topic_create(rk, topic, 3, -1, NULL, 30000, why, sizeof(why)),
	                 RD_KAFKA_RESP_ERR_NO_ERROR);
	int ready = 0, n = 0;
	int64_t until = kreq_test_now_ms() + 30000;
	while ((n = kreq__topic_ready(rk, topic, &ready, 5000, why, sizeof(why))) == 0 &&
	       kreq_test_now_ms() < until) {
		ck_assert_msg(*why, "a look that is not ready says why");
		ck_assert_int_le(ready, 3);
		kreq_test_poll_pause();
	}
	ck_assert_msg(n == 3, "new topic %s not ready within 30 s (%d): %s", topic, n, why);
	ck_assert_int_eq(ready, 3);
	/* every partition seen answering: the next look only asks the metadata */
	ck_assert_int_eq(kreq__topic_ready(rk, topic, &ready, 5000, why, sizeof(why)), 3);
	ck_assert_int_eq(kreq__topic_delete(rk, topic, 30000), RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_destroy(rk);
}
END_TEST

START_TEST(test_no_kafka_no_answer)
{
	/* port 1 on loopback: nothing listens, every connection is refused */
	rd_kafka_t *rk = consumer("127.0.0.1:1");
	char why[300] = "";
	int ready = 0;
	int64_t t0 = kreq_test_now_ms();
	ck_assert_int_eq(
	    kreq__topic_ready(rk, "kreq-test-topic-admin-none", &ready, 1500, why, sizeof(why)),
	    -1);
	ck_assert_int_lt(kreq_test_now_ms() - t0, 10000);
	ck_assert_msg(strstr(why, "did not answer"), "why: %s", why);
	rd_kafka_destroy(rk);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("topic_admin");
	TCase *tc = tcase_create("ready");
	tcase_add_test(tc, test_missing_topic_not_yet);
	tcase_add_test(tc, test_created_topic_ready);
	tcase_add_test(tc, test_no_kafka_no_answer);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
