/*
 * test_replication.c — the replication factor and min.insync.replicas kreq
 * creates its topics with (common/replication.h): 0 is the default that is
 * safe on 3 Kafka brokers and still works on one, -1 the Kafka broker's
 * default, N exactly N.
 */
#include <check.h>

#include "common/replication.h"
#include "testsupport.h"

START_TEST(test_auto_follows_the_cluster)
{
	ck_assert_int_eq(kreq__replication_factor(0, 1), 1);
	ck_assert_int_eq(kreq__replication_factor(0, 2), 2);
	ck_assert_int_eq(kreq__replication_factor(0, 3), 3);
	ck_assert_int_eq(kreq__replication_factor(0, 9), 3);
	ck_assert_int_eq(kreq__replication_factor(0, 0), -1); /* unknown: Kafka decides */
}
END_TEST

START_TEST(test_explicit_and_broker_default)
{
	ck_assert_int_eq(kreq__replication_factor(-1, 3), -1);
	ck_assert_int_eq(kreq__replication_factor(2, 9), 2);
	ck_assert_int_eq(kreq__replication_factor(5, 1), 5); /* Kafka refuses it, naming why */
	ck_assert_int_eq(kreq__min_insync(-1, 3), -1);
	ck_assert_int_eq(kreq__min_insync(3, 3), 3);
}
END_TEST

START_TEST(test_min_isr_one_less_at_least_one)
{
	ck_assert_int_eq(kreq__min_insync(0, 1), 1);
	ck_assert_int_eq(kreq__min_insync(0, 2), 1);
	ck_assert_int_eq(kreq__min_insync(0, 3), 2);
	ck_assert_int_eq(kreq__min_insync(0, 5), 4);
	ck_assert_int_eq(kreq__min_insync(0, -1), -1); /* replication unknown: not set */
}
END_TEST

int main(void)
{
	Suite *s = suite_create("replication");
	TCase *tc = tcase_create("resolve");
	tcase_add_test(tc, test_auto_follows_the_cluster);
	tcase_add_test(tc, test_explicit_and_broker_default);
	tcase_add_test(tc, test_min_isr_one_less_at_least_one);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
