/*
 * testsupport.h — helpers shared by every kreq Check suite.
 *
 * Why: each suite needs the same plumbing (where is the real Kafka broker,
 * unique topic names, topic creation, awaiting a condition with a deadline,
 * running a suite with the right exit code). Keeping it here keeps the suites
 * about behaviour. All helpers that can fail do so through Check
 * (ck_abort_msg), so they must be called from inside a test function
 * (START_TEST ... END_TEST) or a checked fixture.
 *
 * Real-Kafka-broker tests never skip: without KREQ_TEST_BOOTSTRAP they FAIL with a
 * message saying how to start a Kafka broker (scripts/kafka.sh start).
 */
#ifndef KREQ_TESTSUPPORT_H
#define KREQ_TESTSUPPORT_H

#include <check.h>
#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bootstrap servers of the real Kafka cluster under test, from the
 * KREQ_TEST_BOOTSTRAP environment variable. Fails the calling test loudly
 * (never skips) when it is unset or empty. */
const char *kreq_test_bootstrap(void);

/* Monotonic clock in milliseconds. */
int64_t kreq_test_now_ms(void);

/* Write a topic name unique to this process and call into buf:
 * "kreq-test-<prefix>-<pid>-<n>-<random>". Fails the test if it does not fit
 * (64 bytes are always enough for a prefix of up to 24 characters). */
void kreq_test_topic_name(char *buf, size_t bufsize, const char *prefix);

/* Fails the test if a transactional librdkafka call returned an error
 * (destroys it), naming the call. */
void kreq_test_check_txn(rd_kafka_error_t *error, const char *what);

/* Set a librdkafka property or fail the test, naming the property. */
void kreq_test_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value);

/* A new librdkafka configuration with bootstrap.servers set, and any
 * further properties given as a NULL-terminated list of name, value pairs:
 *   kreq_test_conf_new(bs, "isolation.level", "read_committed", NULL) */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((sentinel))
#endif
rd_kafka_conf_t *
kreq_test_conf_new(const char *bootstrap, ...);

/* Create a topic with `partitions` partitions and the Kafka broker's default
 * replication factor through the Admin API, then wait until its metadata
 * shows every partition with a leader. Fails the test on any error or after
 * timeout_ms. */
void kreq_test_create_topic(const char *bootstrap, const char *topic, int partitions,
                            int timeout_ms);

/* As kreq_test_create_topic, with an explicit replication factor (-1: broker
 * default) and topic configs as a NULL-terminated list of name, value
 * pairs (may be NULL), e.g. {"cleanup.policy", "compact", NULL}. */
void kreq_test_create_topic_ex(const char *bootstrap, const char *topic, int partitions,
                               int replication_factor, const char *const *configs, int timeout_ms);

/* Poll pred(arg) every few milliseconds until it returns true (result true)
 * or timeout_ms have passed (result false; the test decides what to do). */
bool kreq_test_wait_until(bool (*pred)(void *arg), void *arg, int timeout_ms);

/* Sleep for a short poll interval; only for bounded poll loops on a
 * condition (as KREQ_TEST_AWAIT does), never as synchronisation. */
void kreq_test_poll_pause(void);

/* Evaluate `cond` repeatedly until true; fail the test with the condition's
 * text if it is still false after timeout_ms. */
#define KREQ_TEST_AWAIT(cond, timeout_ms)                                                          \
	do {                                                                                       \
		const int64_t kreq_await_deadline_ = kreq_test_now_ms() + (timeout_ms);            \
		while (!(cond)) {                                                                  \
			if (kreq_test_now_ms() >= kreq_await_deadline_)                            \
				ck_abort_msg("condition not met within %d ms: %s",                 \
				             (int)(timeout_ms), #cond);                            \
			kreq_test_poll_pause();                                                    \
		}                                                                                  \
	} while (0)

/* Run every test of the suite (CK_NORMAL output), free the runner, and
 * return EXIT_SUCCESS if no test failed, EXIT_FAILURE otherwise. */
int kreq_test_run_suite(Suite *suite);

#endif /* KREQ_TESTSUPPORT_H */
