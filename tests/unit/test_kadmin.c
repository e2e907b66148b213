/*
 * test_kadmin.c — the warm set of common/kadmin.h: membership by topic
 * hash, adds report whether they were new, a full set forgets and starts
 * over (repeatedly), and clear empties it.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/kadmin.h"
#include "testsupport.h"

static kreq__warmset_t set; /* 8 KiB: static rather than on the stack */

START_TEST(test_hash_is_stable_and_nonzero)
{
	ck_assert_uint_eq(kreq__warm_hash("a.svc.requests"), kreq__warm_hash("a.svc.requests"));
	ck_assert_uint_ne(kreq__warm_hash("a.svc.requests"), kreq__warm_hash("b.svc.requests"));
	ck_assert_uint_ne(kreq__warm_hash(""), 0);
}
END_TEST

START_TEST(test_add_has_clear)
{
	kreq__warmset_clear(&set);
	uint64_t a = kreq__warm_hash("p.reply.one"), b = kreq__warm_hash("p.reply.two");
	ck_assert(!kreq__warmset_has(&set, a));
	ck_assert(kreq__warmset_add(&set, a));
	ck_assert(!kreq__warmset_add(&set, a)); /* already there */
	ck_assert(kreq__warmset_has(&set, a));
	ck_assert(!kreq__warmset_has(&set, b));
	ck_assert(kreq__warmset_add(&set, b));
	ck_assert_uint_eq(set.n, 2);
	kreq__warmset_clear(&set);
	ck_assert(!kreq__warmset_has(&set, a) && !kreq__warmset_has(&set, b));
	ck_assert_uint_eq(set.n, 0);
}
END_TEST

/* Colliding slots (hashes equal modulo the size) probe onward. */
START_TEST(test_probing)
{
	kreq__warmset_clear(&set);
	for (uint64_t i = 1; i <= 10; i++)
		ck_assert(kreq__warmset_add(&set, i * KREQ__WARM_SLOTS + 7));
	for (uint64_t i = 1; i <= 10; i++)
		ck_assert(kreq__warmset_has(&set, i * KREQ__WARM_SLOTS + 7));
	ck_assert(!kreq__warmset_has(&set, 11 * KREQ__WARM_SLOTS + 7));
	ck_assert(!kreq__warmset_has(&set, 8));
}
END_TEST

/* Never full: at 3/4 the set starts over with the new hash in it. */
START_TEST(test_full_set_starts_over)
{
	kreq__warmset_clear(&set);
	char name[32];
	size_t limit = KREQ__WARM_SLOTS * 3 / 4;
	for (size_t i = 0; i < limit; i++) {
		snprintf(name, sizeof(name), "t%zu", i);
		ck_assert(kreq__warmset_add(&set, kreq__warm_hash(name)));
	}
	ck_assert_uint_eq(set.n, limit);
	ck_assert(kreq__warmset_has(&set, kreq__warm_hash("t0")));
	ck_assert(kreq__warmset_add(&set, kreq__warm_hash("one more")));
	ck_assert_uint_eq(set.n, 1);
	ck_assert(kreq__warmset_has(&set, kreq__warm_hash("one more")));
	ck_assert(!kreq__warmset_has(&set, kreq__warm_hash("t0")));
}
END_TEST

/* Many adds start over twice: each add is found right after, and the
 * count comes out exact. */
START_TEST(test_repeated_start_over)
{
	kreq__warmset_clear(&set);
	for (uint64_t h = 1; h <= 2000; h++) {
		kreq__warmset_add(&set, h * 977);
		ck_assert(kreq__warmset_has(&set, h * 977));
	}
	/* 2000 adds with a start-over at every 768: 2000 - 2 * 768 remain */
	ck_assert_uint_eq(set.n, 2000 - 2 * (KREQ__WARM_SLOTS * 3 / 4));
	ck_assert(kreq__warmset_has(&set, 2000 * 977));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("kadmin");
	TCase *tc = tcase_create("warmset");
	tcase_add_test(tc, test_hash_is_stable_and_nonzero);
	tcase_add_test(tc, test_add_has_clear);
	tcase_add_test(tc, test_probing);
	tcase_add_test(tc, test_full_set_starts_over);
	tcase_add_test(tc, test_repeated_start_over);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
