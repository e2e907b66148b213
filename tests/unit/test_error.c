/* test_error.c — the error table: distinct codes, names and messages. */
#include <check.h>
#include <string.h>

#include "kreq/error.h"
#include "testsupport.h"

static const int codes[] = {
#define CODE(name, value, msg) KREQ_##name,
    KREQ_ERRNO_MAP(CODE)
#undef CODE
};

START_TEST(test_codes_distinct_and_negative)
{
	ck_assert_int_eq(KREQ_OK, 0);
	size_t n = sizeof(codes) / sizeof(codes[0]);
	for (size_t i = 1; i < n; i++) {
		ck_assert_int_lt(codes[i], 0);
		for (size_t j = 0; j < i; j++)
			ck_assert_int_ne(codes[i], codes[j]);
	}
}
END_TEST

START_TEST(test_messages_and_names)
{
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		const char *msg = kreq_strerror(codes[i]);
		ck_assert_str_ne(msg, "unknown error");
		ck_assert_str_ne(kreq_err_name(codes[i]), "UNKNOWN");
		/* kreqd is "the worker"; a bare "broker" reads as Kafka's */
		const char *b = strstr(msg, "broker");
		ck_assert_msg(b == NULL || (b - msg >= 6 && !strncmp(b - 6, "Kafka ", 6)),
		              "%s: '%s' says broker", kreq_err_name(codes[i]), msg);
	}
	ck_assert_str_eq(kreq_strerror(KREQ_EREJECTED), "rejected by the worker");
	ck_assert_str_eq(kreq_strerror(KREQ_ETIMEDOUT), "timed out");
	ck_assert_str_eq(kreq_err_name(KREQ_ETIMEDOUT), "ETIMEDOUT");
	ck_assert_str_eq(kreq_err_name(KREQ_OK), "OK");
	ck_assert_str_eq(kreq_strerror(12345), "unknown error");
	ck_assert_str_eq(kreq_err_name(-9999), "UNKNOWN");
	ck_assert_str_eq(kreq_version(), "0.1.0");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("error");
	TCase *tc = tcase_create("table");
	tcase_add_test(tc, test_codes_distinct_and_negative);
	tcase_add_test(tc, test_messages_and_names);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
