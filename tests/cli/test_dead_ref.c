/*
 * test_dead_ref.c — the parsing rules of `kreq dead` (cli/dead_ref.c):
 * --since forms, PARTITION:OFFSET versus keys, hex REFs, and the
 * topic.prefix a replay is sent under. Pure logic: no Kafka.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "cli/dead.h"
#include "testsupport.h"

#define NOW 1796000000000LL

START_TEST(test_since)
{
	int64_t v = 0;
	ck_assert(dead_parse_since("1796000000000", NOW, &v));
	ck_assert_int_eq(v, 1796000000000LL);
	ck_assert(dead_parse_since("90s", NOW, &v));
	ck_assert_int_eq(v, NOW - 90000);
	ck_assert(dead_parse_since("15m", NOW, &v));
	ck_assert_int_eq(v, NOW - 900000);
	ck_assert(dead_parse_since("2h", NOW, &v));
	ck_assert_int_eq(v, NOW - 7200000);
	ck_assert(dead_parse_since("7d", NOW, &v));
	ck_assert_int_eq(v, NOW - 7LL * 86400000);
	ck_assert(dead_parse_since("2026-12-06T01:30:00Z", NOW, &v));
	ck_assert_int_eq(v, 1796520600000LL);
	static const char *const bad[] = {"",
	                                  "soon",
	                                  "-5m",
	                                  "5w",
	                                  "5 m",
	                                  "1.5h",
	                                  " 90s",
	                                  "90ss",
	                                  "+90s",
	                                  "2026-12-06T01:30:00",
	                                  "2026-12-06 01:30:00Z",
	                                  "26-12-06T01:30:00Z",
	                                  "9999999999h",
	                                  "12345678901234567890"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(!dead_parse_since(bad[i], NOW, &v), "'%s' accepted", bad[i]);
}
END_TEST

START_TEST(test_position)
{
	int32_t p = -1;
	int64_t o = -1;
	ck_assert(dead_parse_position("0:0", &p, &o));
	ck_assert_int_eq(p, 0);
	ck_assert_int_eq(o, 0);
	ck_assert(dead_parse_position("5:1234567890123", &p, &o));
	ck_assert_int_eq(p, 5);
	ck_assert_int_eq(o, 1234567890123LL);
	static const char *const keys[] = {"order:17",
	                                   "1:",
	                                   ":1",
	                                   "1:2:3",
	                                   " 1:2",
	                                   "1: 2",
	                                   "-1:2",
	                                   "1:-2",
	                                   "+1:2",
	                                   "1:0x10",
	                                   "dk-alpha",
	                                   "2147483648:0",
	                                   "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1"};
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		ck_assert_msg(!dead_parse_position(keys[i], &p, &o), "'%s' taken as a position",
		              keys[i]);
}
END_TEST

START_TEST(test_hex)
{
	size_t n = 0;
	uint8_t *b = dead_from_hex("00ff107F", 255, &n);
	ck_assert_ptr_nonnull(b);
	ck_assert_int_eq(n, 4);
	ck_assert(memcmp(b, "\x00\xff\x10\x7f", 4) == 0);
	free(b);
	static const char *const bad[] = {"", "0", "abc", "zz", "00 ff", "0x00", "dk-alpha"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(dead_from_hex(bad[i], 255, &n) == NULL, "'%s' decoded", bad[i]);
	ck_assert_ptr_null(dead_from_hex("000000", 2, &n)); /* longer than max */
}
END_TEST

START_TEST(test_request_prefix)
{
	char buf[64];
	ck_assert_str_eq(dead_request_prefix("kreq.billing.requests", "billing", buf, sizeof(buf)),
	                 "kreq");
	ck_assert_str_eq(dead_request_prefix("a.b.svc.x.requests", "svc.x", buf, sizeof(buf)),
	                 "a.b");
	ck_assert_ptr_null(dead_request_prefix("kreq.billing.requests", "other", buf, sizeof(buf)));
	ck_assert_ptr_null(dead_request_prefix("billing.requests", "billing", buf, sizeof(buf)));
	ck_assert_ptr_null(dead_request_prefix(".billing.requests", "billing", buf, sizeof(buf)));
	ck_assert_ptr_null(
	    dead_request_prefix("kreqxbilling.requests", "billing", buf, sizeof(buf)));
	ck_assert_ptr_null(
	    dead_request_prefix("kreq.billing.results", "billing", buf, sizeof(buf)));
	ck_assert_ptr_null(dead_request_prefix("kreq.billing.requests", "", buf, sizeof(buf)));
	ck_assert_ptr_null(dead_request_prefix("kreq.billing.requests", "billing", buf, 4));
	ck_assert_str_eq(dead_request_prefix("kreq.billing.requests", "billing", buf, 5), "kreq");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("dead_ref");
	TCase *tc = tcase_create("dead_ref");
	tcase_add_test(tc, test_since);
	tcase_add_test(tc, test_position);
	tcase_add_test(tc, test_hex);
	tcase_add_test(tc, test_request_prefix);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
