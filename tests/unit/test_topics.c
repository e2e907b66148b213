/*
 * test_topics.c — the worker's table of output topics (broker/worker/topics.h):
 * entries carry a handle on each producer for exactly their topic, lookups
 * find them through growth, a missing producer gets no handle, a name
 * librdkafka refuses is an error that adds nothing, and the bound empties
 * the table and starts over. The producers point at a closed port: making
 * topic handles needs no broker.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "broker/worker/topics.h"
#include "kreq/error.h"
#include "testsupport.h"

static rd_kafka_t *producer_new(void)
{
	char err[256];
	rd_kafka_conf_t *c = rd_kafka_conf_new();
	ck_assert_int_eq(rd_kafka_conf_set(c, "bootstrap.servers", "127.0.0.1:1", err, sizeof(err)),
	                 RD_KAFKA_CONF_OK);
	ck_assert_int_eq(rd_kafka_conf_set(c, "log_level", "0", err, sizeof(err)),
	                 RD_KAFKA_CONF_OK);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof(err));
	ck_assert_msg(rk != NULL, "rd_kafka_new: %s", err);
	return rk;
}

static void check_entry(const kreq__topic_t *e, const char *name, bool two)
{
	ck_assert_ptr_nonnull(e);
	ck_assert_str_eq(e->name, name);
	ck_assert_ptr_nonnull(e->rkt[0]);
	ck_assert_str_eq(rd_kafka_topic_name(e->rkt[0]), name);
	if (two)
		ck_assert_str_eq(rd_kafka_topic_name(e->rkt[1]), name);
	else
		ck_assert_ptr_null(e->rkt[1]);
}

START_TEST(test_hash_is_stable_and_nonzero)
{
	const char *a = "p.reply.client-0123456789abcdef", *b = "p.reply.client-0123456789abcdeg";
	ck_assert_uint_eq(kreq__topics_hash(1, a), kreq__topics_hash(1, a));
	ck_assert_uint_ne(kreq__topics_hash(1, a), kreq__topics_hash(1, b)); /* last byte */
	ck_assert_uint_ne(kreq__topics_hash(1, a), kreq__topics_hash(2, a)); /* seed */
	ck_assert_uint_ne(kreq__topics_hash(0, ""), 0);
	/* every tail length 0-7 after whole words reaches the hash */
	char s[24] = "0123456789abcdefghijklm";
	for (int n = 16; n < 23; n++) {
		char x[24], y[24];
		memcpy(x, s, (size_t)n + 1), x[n + 1] = '\0';
		memcpy(y, s, (size_t)n + 1), y[n + 1] = '\0', y[n] = 'Z';
		ck_assert_uint_ne(kreq__topics_hash(7, x), kreq__topics_hash(7, y));
	}
}
END_TEST

START_TEST(test_add_find_through_growth)
{
	rd_kafka_t *p[2] = {producer_new(), producer_new()};
	kreq__topics_t t = {0};
	ck_assert_ptr_null(kreq__topics_find(&t, "nothing.yet"));
	char name[64], why[256];
	/* 64 slots doubled five times. More cost librdkafka, not the table:
	 * each new topic handle walks its list of all topics (3000 took 30-60
	 * s under TSan, past the test's limit) */
	enum { N = 1000 };
	for (int i = 0; i < N; i++) {
		snprintf(name, sizeof(name), "p.reply.client-%d", i);
		kreq__topic_t *e = NULL;
		ck_assert_int_eq(kreq__topics_add(&t, name, p, &e, why, sizeof(why)), KREQ_OK);
		check_entry(e, name, true);
	}
	ck_assert_uint_eq(t.count, N);
	ck_assert_uint_le(2 * t.count, t.nslots);
	for (int i = 0; i < N; i++) {
		snprintf(name, sizeof(name), "p.reply.client-%d", i);
		check_entry(kreq__topics_find(&t, name), name, true);
	}
	snprintf(name, sizeof(name), "p.reply.client-%d", N);
	ck_assert_ptr_null(kreq__topics_find(&t, name));
	kreq__topics_clear(&t);
	ck_assert_uint_eq(t.count, 0);
	ck_assert_ptr_null(kreq__topics_find(&t, "p.reply.client-0"));
	rd_kafka_destroy(p[0]);
	rd_kafka_destroy(p[1]);
}
END_TEST

START_TEST(test_one_producer_and_refused_name)
{
	rd_kafka_t *p[2] = {producer_new(), NULL};
	kreq__topics_t t = {0};
	kreq__topic_t *e = NULL;
	char why[256];
	ck_assert_int_eq(kreq__topics_add(&t, "p.results", p, &e, why, sizeof(why)), KREQ_OK);
	check_entry(e, "p.results", false);
	char *longname = malloc(600); /* longer than any Kafka topic name may be */
	memset(longname, 'n', 599);
	longname[599] = '\0';
	e = NULL;
	ck_assert_int_eq(kreq__topics_add(&t, longname, p, &e, why, sizeof(why)), KREQ_EKAFKA);
	ck_assert_ptr_null(e);
	ck_assert_msg(strstr(why, "no producer handle for topic nnn") != NULL, "errstr: %s", why);
	ck_assert_uint_eq(t.count, 1);
	ck_assert_ptr_null(kreq__topics_find(&t, longname));
	check_entry(kreq__topics_find(&t, "p.results"), "p.results", false);
	free(longname);
	kreq__topics_clear(&t);
	rd_kafka_destroy(p[0]);
}
END_TEST

START_TEST(test_bound_starts_over)
{
	rd_kafka_t *p[2] = {producer_new(), NULL};
	kreq__topics_t t = {.max = 200}; /* the default's 16384 topics take seconds to make */
	char name[64], why[256];
	kreq__topic_t *e;
	for (int i = 0; i < 200; i++) {
		snprintf(name, sizeof(name), "t%d", i);
		ck_assert_int_eq(kreq__topics_add(&t, name, p, &e, why, sizeof(why)), KREQ_OK);
	}
	ck_assert_uint_eq(t.count, 200);
	ck_assert_ptr_nonnull(kreq__topics_find(&t, "t0"));
	ck_assert_int_eq(kreq__topics_add(&t, "one.more", p, &e, why, sizeof(why)), KREQ_OK);
	ck_assert_uint_eq(t.count, 1);
	check_entry(kreq__topics_find(&t, "one.more"), "one.more", false);
	ck_assert_ptr_null(kreq__topics_find(&t, "t0"));
	ck_assert_ptr_null(kreq__topics_find(&t, "t199"));
	kreq__topics_clear(&t);
	ck_assert_uint_eq(t.max, 200);
	rd_kafka_destroy(p[0]);
}
END_TEST

/* The cached partition count: read again only when it would refuse (or
 * is unknown) and at most every KREQ__TOPIC_RECHECK_NS; forgotten after a
 * failed produce. */
START_TEST(test_partition_count_cache)
{
	rd_kafka_t *p[2] = {producer_new(), NULL};
	kreq__topics_t t = {0};
	kreq__topic_t *e = NULL;
	char why[256];
	ck_assert_int_eq(kreq__topics_add(&t, "p.reply.a", p, &e, why, sizeof(why)), KREQ_OK);
	ck_assert_int_eq(e->partitions, -1); /* not read yet */
	int64_t now = 5 * KREQ__TOPIC_RECHECK_NS;
	kreq__topics_set_partitions(e, 3, now);
	ck_assert_int_eq(e->partitions, 3);
	ck_assert(!kreq__topics_recheck_due(e, 2, now + 10 * KREQ__TOPIC_RECHECK_NS)); /* fits */
	ck_assert(!kreq__topics_recheck_due(e, 7, now + KREQ__TOPIC_RECHECK_NS - 1));
	ck_assert(kreq__topics_recheck_due(e, 7, now + KREQ__TOPIC_RECHECK_NS));
	kreq__topics_set_partitions(e, 0, now); /* missing */
	ck_assert(!kreq__topics_recheck_due(e, 0, now + 1));
	ck_assert(kreq__topics_recheck_due(e, 0, now + KREQ__TOPIC_RECHECK_NS));
	kreq__topics_set_partitions(e, -5, now); /* no answer */
	ck_assert_int_eq(e->partitions, -1);
	kreq__topics_set_partitions(e, 3, now);
	kreq__topics_forget(&t, "p.reply.a");
	e = kreq__topics_find(&t, "p.reply.a");
	ck_assert_ptr_nonnull(e); /* the handle stays */
	ck_assert_ptr_nonnull(e->rkt[0]);
	ck_assert_int_eq(e->partitions, -1);
	ck_assert(kreq__topics_recheck_due(e, 0, now));
	kreq__topics_forget(&t, "p.reply.unknown"); /* no entry: nothing */
	kreq__topics_clear(&t);
	rd_kafka_destroy(p[0]);
}
END_TEST

int main(void)
{
	if (sodium_init() < 0)
		return 2;
	Suite *s = suite_create("topics");
	TCase *tc = tcase_create("core");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_hash_is_stable_and_nonzero);
	tcase_add_test(tc, test_add_find_through_growth);
	tcase_add_test(tc, test_one_producer_and_refused_name);
	tcase_add_test(tc, test_bound_starts_over);
	tcase_add_test(tc, test_partition_count_cache);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
