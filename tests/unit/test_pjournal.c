/*
 * test_pjournal.c — the crash journal of handler starts (broker/worker/pjournal.h):
 * what a process leaves in it is found by the next one, a reset empties it,
 * a clean close of an empty journal removes the file, a second process
 * cannot use the same file, and a file that is not a journal is refused.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker/worker/pjournal.h"
#include "kreq/error.h"
#include "testsupport.h"

static char path[64], err[512];

static void setup(void)
{
	snprintf(path, sizeof(path), "/tmp/kreq-pj-%d-XXXXXX", (int)getpid());
	int fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	close(fd);
	unlink(path); /* the journal creates it */
}

static void teardown(void)
{
	unlink(path);
}

START_TEST(test_left_by_a_crash_found_by_the_next)
{
	kreq__pjournal_t *j;
	ck_assert_int_eq(kreq__pjournal_open(path, 8, &j, err, sizeof(err)), KREQ_OK);
	ck_assert_uint_eq(kreq__pjournal_nslots(j), 0); /* new: nothing found */
	kreq__pjournal_reset(j, 0x1122334455667788ULL);
	const uint8_t k1[] = "\x02k1idem-1", k2[] = "\x02k1idem-2";
	uint32_t a = kreq__pjournal_add(j, k1, sizeof(k1) - 1, 3, 41, 1000, 1);
	uint32_t b = kreq__pjournal_add(j, k2, sizeof(k2) - 1, 4, 42, 2000, 2);
	ck_assert_uint_ne(a, 0);
	ck_assert_uint_ne(b, 0);
	kreq__pjournal_remove(j, a); /* its handler finished */
	/* the process dies here: the file keeps b (close, as a crash would not
	 * remove a journal that is in use) */
	kreq__pjournal_close(j);
	ck_assert_int_eq(access(path, F_OK), 0);
	ck_assert_int_eq(kreq__pjournal_open(path, 16, &j, err, sizeof(err)), KREQ_OK);
	ck_assert_uint_eq(kreq__pjournal_owner(j), 0x1122334455667788ULL);
	ck_assert_uint_eq(kreq__pjournal_nslots(j), 1);
	const kreq__pj_slot_t *sl = kreq__pjournal_slot(j, 0);
	ck_assert_uint_eq(sl->klen, sizeof(k2) - 1);
	ck_assert(!memcmp(sl->key, k2, sl->klen));
	ck_assert_int_eq(sl->partition, 4);
	ck_assert_int_eq(sl->offset, 42);
	ck_assert_int_eq(sl->started_at_ms, 2000);
	ck_assert_uint_eq(sl->number, 2);
	ck_assert_ptr_null(kreq__pjournal_slot(j, 1));
	/* published: emptied, grown to 16 slots, all usable */
	kreq__pjournal_reset(j, 7);
	ck_assert_uint_eq(kreq__pjournal_nslots(j), 0);
	uint32_t got[17];
	for (int i = 0; i < 16; i++)
		ck_assert_uint_ne(got[i] = kreq__pjournal_add(j, k1, sizeof(k1) - 1, 0, i, 1, 1),
		                  0);
	ck_assert_uint_eq(kreq__pjournal_add(j, k1, sizeof(k1) - 1, 0, 16, 1, 1), 0); /* full */
	for (int i = 0; i < 16; i++)
		kreq__pjournal_remove(j, got[i]);
	/* a clean stop: nothing in use, the file goes */
	kreq__pjournal_close(j);
	ck_assert_int_ne(access(path, F_OK), 0);
}
END_TEST

START_TEST(test_one_process_per_journal)
{
	kreq__pjournal_t *j, *k;
	ck_assert_int_eq(kreq__pjournal_open(path, 4, &j, err, sizeof(err)), KREQ_OK);
	ck_assert_int_eq(kreq__pjournal_open(path, 4, &k, err, sizeof(err)), KREQ_ECONF);
	ck_assert_msg(strstr(err, "in use by another process"), "%s", err);
	ck_assert_ptr_null(k);
	kreq__pjournal_reset(j, 1);
	kreq__pjournal_close(j);
}
END_TEST

START_TEST(test_not_a_journal)
{
	FILE *f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs("this is a configuration file, not a journal\n", f);
	fclose(f);
	kreq__pjournal_t *j;
	ck_assert_int_eq(kreq__pjournal_open(path, 4, &j, err, sizeof(err)), KREQ_ECONF);
	ck_assert_msg(strstr(err, "is not a kreq journal"), "%s", err);
	/* and it is left alone */
	ck_assert_int_eq(access(path, F_OK), 0);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("pjournal");
	TCase *tc = tcase_create("pjournal");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_left_by_a_crash_found_by_the_next);
	tcase_add_test(tc, test_one_process_per_journal);
	tcase_add_test(tc, test_not_a_journal);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return kreq_test_run_suite(suite());
}
