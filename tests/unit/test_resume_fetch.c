/*
 * test_resume_fetch.c — with the librdkafka kreq builds
 * (scripts/librdkafka.sh), a record waiting on a paused partition is
 * fetched as soon as the partition is resumed.
 *
 * Why: a worker pauses its partitions while it is at worker.max.in.flight
 * and while a crash suspect runs alone (broker/worker/poison.c), and
 * resumes them when that ends. Unpatched librdkafka 2.12.1 does not wake
 * the broker thread on a resume; with every partition it fetches paused,
 * that thread idles up to 1 s before it fetches again, so after a crash
 * each suspect cost the worker about 1 s and test_fault's crash cases
 * fell 20-30 s behind on one partition.
 * scripts/librdkafka/resume-wakeup.patch wakes it. Without the patch this
 * test fails: a resumed record arrives ~0.9 s late instead of at once.
 *
 * Unit level, on librdkafka's mock cluster (in this process): one mock
 * Kafka broker, a producer, and a consumer assigned partition 0 (no group).
 * The baseline is a record produced while the partition is not paused, in
 * the same run: a resumed record may take at most that + 300 ms (medians
 * of 5), which stays true on a slow machine (valgrind) and not without the
 * patch.
 */
#include <check.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "testsupport.h"

#define ROUNDS   5
#define TOPIC    "resume-t"
#define SLACK_MS 300

/* A new handle of type from conf (taken). */
static rd_kafka_t *handle(rd_kafka_type_t type, rd_kafka_conf_t *conf)
{
	char err[512];
	rd_kafka_t *rk = rd_kafka_new(type, conf, err, sizeof(err));
	ck_assert_msg(rk != NULL, "%s", err);
	return rk;
}

static void produce_one(rd_kafka_t *p, int n)
{
	char v[32];
	int len = snprintf(v, sizeof(v), "r%d", n);
	ck_assert_int_eq(rd_kafka_producev(p, RD_KAFKA_V_TOPIC(TOPIC), RD_KAFKA_V_PARTITION(0),
	                                   RD_KAFKA_V_VALUE(v, (size_t)len),
	                                   RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
	                                   RD_KAFKA_V_END),
	                 RD_KAFKA_RESP_ERR_NO_ERROR);
	ck_assert_int_eq(rd_kafka_flush(p, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

/* Polls until a record arrives (at most 10 s); its arrival time in ms. */
static int64_t next_record(rd_kafka_t *c)
{
	int64_t until = kreq_test_now_ms() + 10000;
	while (kreq_test_now_ms() < until) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 20);
		if (!m)
			continue;
		rd_kafka_resp_err_t err = m->err;
		rd_kafka_message_destroy(m);
		if (err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
			continue;
		ck_assert_msg(err == RD_KAFKA_RESP_ERR_NO_ERROR, "consumer: %s",
		              rd_kafka_err2str(err));
		return kreq_test_now_ms();
	}
	ck_abort_msg("no record within 10 s");
	return 0;
}

static void pause_resume(rd_kafka_t *c, bool pause)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(l, TOPIC, 0);
	ck_assert_int_eq(pause ? rd_kafka_pause_partitions(c, l) : rd_kafka_resume_partitions(c, l),
	                 RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_topic_partition_list_destroy(l);
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

START_TEST(test_resumed_partition_fetches_at_once)
{
	rd_kafka_conf_t *pc = rd_kafka_conf_new();
	kreq_test_conf_set(pc, "test.mock.num.brokers", "1");
	kreq_test_conf_set(pc, "log_level", "3");
	rd_kafka_t *p = handle(RD_KAFKA_PRODUCER, pc);
	rd_kafka_mock_cluster_t *mc = rd_kafka_handle_mock_cluster(p);
	ck_assert_ptr_nonnull(mc);
	ck_assert_int_eq(rd_kafka_mock_topic_create(mc, TOPIC, 1, 1), 0);
	rd_kafka_t *c =
	    handle(RD_KAFKA_CONSUMER,
	           kreq_test_conf_new(rd_kafka_mock_cluster_bootstraps(mc), "group.id", "resume-g",
	                              "enable.auto.commit", "false", "fetch.wait.max.ms", "100",
	                              "log_level", "3", NULL));
	rd_kafka_poll_set_consumer(c);
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(l, TOPIC, 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
	ck_assert_int_eq(rd_kafka_assign(c, l), RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_topic_partition_list_destroy(l);
	produce_one(p, 0);
	next_record(c); /* fetching: connected, position known */

	int64_t live[ROUNDS], resumed[ROUNDS];
	for (int i = 0; i < ROUNDS; i++) {
		/* baseline: a record produced while the partition is fetched */
		int64_t t0 = kreq_test_now_ms();
		produce_one(p, 1 + 2 * i);
		live[i] = next_record(c) - t0;
		/* paused while a record arrives; resumed a while later (the
		 * broker thread has nothing to fetch meanwhile and idles) */
		pause_resume(c, true);
		produce_one(p, 2 + 2 * i);
		sleep_ms(100);
		t0 = kreq_test_now_ms();
		pause_resume(c, false);
		resumed[i] = next_record(c) - t0;
	}
	qsort(live, ROUNDS, sizeof(live[0]), cmp_i64);
	qsort(resumed, ROUNDS, sizeof(resumed[0]), cmp_i64);
	fprintf(stderr,
	        "resume_fetch: record fetched in %lld ms (median) live, %lld ms after a resume\n",
	        (long long)live[ROUNDS / 2], (long long)resumed[ROUNDS / 2]);
	ck_assert_msg(resumed[ROUNDS / 2] <= live[ROUNDS / 2] + SLACK_MS,
	              "a resumed partition fetched its record after %lld ms (median of %d; "
	              "%lld ms when not paused): is scripts/librdkafka/resume-wakeup.patch "
	              "applied?",
	              (long long)resumed[ROUNDS / 2], ROUNDS, (long long)live[ROUNDS / 2]);
	rd_kafka_consumer_close(c);
	rd_kafka_destroy(c);
	rd_kafka_destroy(p);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("resume_fetch");
	TCase *tc = tcase_create("resume");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_resumed_partition_fetches_at_once);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
