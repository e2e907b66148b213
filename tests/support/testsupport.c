/*
 * testsupport.c — helpers shared by every kreq Check suite (see testsupport.h).
 *
 * Failures are reported through Check with a message naming what failed and
 * why, so a red test says what to fix without a debugger.
 */
#include "testsupport.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define POLL_PAUSE_MS 5

static const char bootstrap_help[] =
    "KREQ_TEST_BOOTSTRAP is not set: this test needs a REAL Apache Kafka broker and "
    "does not skip without one. Start one and export its address with\n"
    "    export \"$(scripts/kafka.sh start --dir build/kafka)\"\n"
    "run the tests, then `scripts/kafka.sh stop --dir build/kafka`; or run every "
    "suite with the one test command in README.md (scripts/test.sh), which does this "
    "for you.";

const char *kreq_test_bootstrap(void)
{
	const char *bs = getenv("KREQ_TEST_BOOTSTRAP");
	if (bs == NULL || *bs == '\0') {
		fprintf(stderr, "\n*** %s\n\n", bootstrap_help);
		ck_abort_msg("%s", bootstrap_help);
	}
	return bs;
}

int64_t kreq_test_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void kreq_test_poll_pause(void)
{
	struct timespec ts = {.tv_sec = 0, .tv_nsec = POLL_PAUSE_MS * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

bool kreq_test_wait_until(bool (*pred)(void *arg), void *arg, int timeout_ms)
{
	const int64_t deadline = kreq_test_now_ms() + timeout_ms;
	for (;;) {
		if (pred(arg))
			return true;
		if (kreq_test_now_ms() >= deadline)
			return false;
		kreq_test_poll_pause();
	}
}

static uint32_t random_u32(void)
{
	uint32_t r;
	if (getrandom(&r, sizeof r, 0) == (ssize_t)sizeof r)
		return r;
	return (uint32_t)kreq_test_now_ms() ^ ((uint32_t)getpid() << 16);
}

void kreq_test_topic_name(char *buf, size_t bufsize, const char *prefix)
{
	static atomic_uint counter;
	unsigned n = atomic_fetch_add(&counter, 1u);
	int len = snprintf(buf, bufsize, "kreq-test-%s-%ld-%u-%08" PRIx32, prefix, (long)getpid(),
	                   n, random_u32());
	ck_assert_msg(len > 0 && (size_t)len < bufsize,
	              "topic name buffer of %zu bytes too small for prefix '%s'", bufsize, prefix);
}

void kreq_test_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value)
{
	char errstr[512];
	if (rd_kafka_conf_set(conf, name, value, errstr, sizeof errstr) != RD_KAFKA_CONF_OK)
		ck_abort_msg("librdkafka config %s=%s rejected: %s", name, value, errstr);
}

rd_kafka_conf_t *kreq_test_conf_new(const char *bootstrap, ...)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	kreq_test_conf_set(conf, "bootstrap.servers", bootstrap);
	va_list ap;
	va_start(ap, bootstrap);
	const char *name;
	while ((name = va_arg(ap, const char *)) != NULL) {
		const char *value = va_arg(ap, const char *);
		ck_assert_msg(value != NULL, "kreq_test_conf_new: property %s has no value", name);
		kreq_test_conf_set(conf, name, value);
	}
	va_end(ap);
	return conf;
}

/* ---- topic creation ------------------------------------------------------ */

static rd_kafka_NewTopic_t *new_topic(const char *topic, int partitions, int replication_factor,
                                      const char *const *configs)
{
	char errstr[512];
	rd_kafka_NewTopic_t *nt =
	    rd_kafka_NewTopic_new(topic, partitions, replication_factor, errstr, sizeof errstr);
	ck_assert_msg(nt != NULL, "invalid new topic %s (%d partitions, rf %d): %s", topic,
	              partitions, replication_factor, errstr);
	for (size_t i = 0; configs != NULL && configs[i] != NULL; i += 2) {
		ck_assert_msg(configs[i + 1] != NULL, "topic config %s has no value", configs[i]);
		rd_kafka_resp_err_t err =
		    rd_kafka_NewTopic_set_config(nt, configs[i], configs[i + 1]);
		ck_assert_msg(err == RD_KAFKA_RESP_ERR_NO_ERROR, "topic config %s=%s: %s",
		              configs[i], configs[i + 1], rd_kafka_err2str(err));
	}
	return nt;
}

/* Wait for the CreateTopics result on q and check the topic's outcome. */
static void check_create_result(rd_kafka_queue_t *q, const char *topic, int timeout_ms)
{
	rd_kafka_event_t *ev = rd_kafka_queue_poll(q, timeout_ms);
	ck_assert_msg(ev != NULL, "no CreateTopics result for %s within %d ms", topic, timeout_ms);
	ck_assert_msg(rd_kafka_event_type(ev) == RD_KAFKA_EVENT_CREATETOPICS_RESULT,
	              "unexpected admin event %s", rd_kafka_event_name(ev));
	char msg[512] = "";
	rd_kafka_resp_err_t err = rd_kafka_event_error(ev);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		snprintf(msg, sizeof msg, "%s", rd_kafka_event_error_string(ev));
	} else {
		size_t n = 0;
		const rd_kafka_topic_result_t **res =
		    rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
		if (n != 1) {
			err = RD_KAFKA_RESP_ERR__FAIL;
			snprintf(msg, sizeof msg, "%zu topic results instead of 1", n);
		} else if ((err = rd_kafka_topic_result_error(res[0])) !=
		           RD_KAFKA_RESP_ERR_NO_ERROR) {
			const char *es = rd_kafka_topic_result_error_string(res[0]);
			snprintf(msg, sizeof msg, "%s", es != NULL ? es : rd_kafka_err2str(err));
		}
	}
	rd_kafka_event_destroy(ev);
	ck_assert_msg(err == RD_KAFKA_RESP_ERR_NO_ERROR, "creating topic %s failed: %s (%s)", topic,
	              msg, rd_kafka_err2name(err));
}

/* True when the topic's metadata lists `partitions` partitions, each with a
 * leader (partitions < 0: any count). */
static bool topic_ready(rd_kafka_t *rk, rd_kafka_topic_t *rkt, int partitions)
{
	const struct rd_kafka_metadata *md = NULL;
	if (rd_kafka_metadata(rk, 0, rkt, &md, 2000) != RD_KAFKA_RESP_ERR_NO_ERROR)
		return false;
	bool ok = md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR &&
	          md->topics[0].partition_cnt > 0 &&
	          (partitions < 0 || md->topics[0].partition_cnt == partitions);
	for (int i = 0; ok && i < md->topics[0].partition_cnt; i++) {
		const struct rd_kafka_metadata_partition *p = &md->topics[0].partitions[i];
		ok = p->err == RD_KAFKA_RESP_ERR_NO_ERROR && p->leader >= 0;
	}
	rd_kafka_metadata_destroy(md);
	return ok;
}

static void wait_topic_ready(rd_kafka_t *rk, const char *topic, int partitions, int64_t deadline)
{
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
	ck_assert_msg(rkt != NULL, "rd_kafka_topic_new(%s): %s", topic,
	              rd_kafka_err2str(rd_kafka_last_error()));
	bool ready;
	while (!(ready = topic_ready(rk, rkt, partitions)) && kreq_test_now_ms() < deadline)
		kreq_test_poll_pause();
	rd_kafka_topic_destroy(rkt);
	ck_assert_msg(ready, "topic %s created but its %d partition(s) have no leader in time",
	              topic, partitions);
}

void kreq_test_create_topic_ex(const char *bootstrap, const char *topic, int partitions,
                               int replication_factor, const char *const *configs, int timeout_ms)
{
	const int64_t deadline = kreq_test_now_ms() + timeout_ms;
	char errstr[512];
	rd_kafka_conf_t *conf = kreq_test_conf_new(bootstrap, NULL);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
	if (rk == NULL)
		rd_kafka_conf_destroy(conf);
	ck_assert_msg(rk != NULL, "admin client for %s: %s", bootstrap, errstr);

	rd_kafka_NewTopic_t *nt = new_topic(topic, partitions, replication_factor, configs);
	rd_kafka_AdminOptions_t *opts =
	    rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
	rd_kafka_AdminOptions_set_request_timeout(opts, timeout_ms, errstr, sizeof errstr);
	rd_kafka_AdminOptions_set_operation_timeout(opts, timeout_ms, errstr, sizeof errstr);
	rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
	rd_kafka_CreateTopics(rk, &nt, 1, opts, q);
	rd_kafka_NewTopic_destroy(nt);
	rd_kafka_AdminOptions_destroy(opts);

	check_create_result(q, topic, timeout_ms);
	rd_kafka_queue_destroy(q);
	wait_topic_ready(rk, topic, partitions, deadline);
	rd_kafka_destroy(rk);
}

void kreq_test_create_topic(const char *bootstrap, const char *topic, int partitions,
                            int timeout_ms)
{
	kreq_test_create_topic_ex(bootstrap, topic, partitions, -1, NULL, timeout_ms);
}

/* ---- running ------------------------------------------------------------- */

int kreq_test_run_suite(Suite *suite)
{
	SRunner *sr = srunner_create(suite);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

void kreq_test_check_txn(rd_kafka_error_t *error, const char *what)
{
	if (error == NULL)
		return;
	char msg[512];
	snprintf(msg, sizeof msg, "%s", rd_kafka_error_string(error));
	rd_kafka_error_destroy(error);
	ck_abort_msg("%s failed: %s", what, msg);
}
