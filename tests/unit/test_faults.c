/*
 * test_faults.c — the per-record rewind count (broker/worker/faults.h) and the
 * size rule between payload.max.bytes, envelope.max.bytes and the
 * producers' message.max.bytes (proto/envelope.h kreq__limits_check).
 */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "broker/worker/faults.h"
#include "kreq/client.h"
#include "kreq/conf.h"
#include "kreq/keyring.h"
#include "kreq/worker.h"
#include "kreq/error.h"
#include "proto/envelope.h"
#include "testsupport.h"

START_TEST(test_one_rewind_per_pass)
{
	kreq__faults_t f;
	kreq__faults_init(&f);
	ck_assert_ptr_null(kreq__faults_find(&f, 0, 5));
	/* reply and result of one record failing in one pass: one rewind */
	kreq__faults_note(&f, 0, 5, KREQ__FAULT_OTHER, "timed out");
	kreq__faults_note(&f, 0, 5, KREQ__FAULT_OTHER, "timed out");
	const kreq__fault_t *e = kreq__faults_find(&f, 0, 5);
	ck_assert_ptr_nonnull(e);
	ck_assert_uint_eq(e->rewinds, 1);
	ck_assert(!kreq__faults_exhausted(e));
	kreq__faults_rewound(&f);
	kreq__faults_note(&f, 0, 5, KREQ__FAULT_OTHER, "timed out");
	kreq__faults_rewound(&f);
	ck_assert(!kreq__faults_exhausted(e));
	kreq__faults_note(&f, 0, 5, KREQ__FAULT_OTHER, "timed out again");
	ck_assert_uint_eq(e->rewinds, KREQ__REWIND_MAX);
	ck_assert(kreq__faults_exhausted(e));
	ck_assert_str_eq(e->why, "timed out again");
	/* other records and partitions are separate */
	ck_assert_ptr_null(kreq__faults_find(&f, 1, 5));
	ck_assert_ptr_null(kreq__faults_find(&f, 0, 6));
	ck_assert_ptr_null(kreq__faults_find(&f, 0, -1));
}
END_TEST

START_TEST(test_too_large_is_final_at_once)
{
	kreq__faults_t f;
	kreq__faults_init(&f);
	kreq__faults_note(&f, 2, 9, KREQ__FAULT_TOO_LARGE, "Message size too large");
	const kreq__fault_t *e = kreq__faults_find(&f, 2, 9);
	ck_assert(kreq__faults_exhausted(e));
	/* a later unknown failure does not hide the known cause */
	kreq__faults_rewound(&f);
	kreq__faults_note(&f, 2, 9, KREQ__FAULT_OTHER, "purged");
	ck_assert_int_eq(e->kind, KREQ__FAULT_TOO_LARGE);
	ck_assert_uint_eq(e->rewinds, 2);
	ck_assert(!kreq__faults_exhausted(NULL));
}
END_TEST

START_TEST(test_committed_and_full)
{
	kreq__faults_t f;
	kreq__faults_init(&f);
	kreq__faults_note(&f, 0, 10, KREQ__FAULT_OTHER, "a");
	kreq__faults_note(&f, 0, 20, KREQ__FAULT_OTHER, "b");
	kreq__faults_note(&f, 1, 10, KREQ__FAULT_OTHER, "c");
	ck_assert_uint_eq(f.used, 3);
	kreq__faults_committed(&f, 0, 15); /* committed past offset 10 of partition 0 */
	ck_assert_uint_eq(f.used, 2);
	ck_assert_ptr_null(kreq__faults_find(&f, 0, 10));
	ck_assert_ptr_nonnull(kreq__faults_find(&f, 0, 20));
	ck_assert_ptr_nonnull(kreq__faults_find(&f, 1, 10));
	/* full: the oldest is forgotten, the table stays bounded */
	for (int64_t off = 100; off < 100 + 2 * KREQ__FAULTS_MAX; off++)
		kreq__faults_note(&f, 3, off, KREQ__FAULT_OTHER, "x");
	int n = 0;
	for (int i = 0; i < KREQ__FAULTS_MAX; i++)
		n += f.e[i].offset >= 0;
	ck_assert_int_eq(n, KREQ__FAULTS_MAX);
	ck_assert_ptr_nonnull(kreq__faults_find(&f, 3, 100 + 2 * KREQ__FAULTS_MAX - 1));
	ck_assert_uint_eq(f.used, KREQ__FAULTS_MAX);
	kreq__faults_committed(&f, 3, INT64_MAX);
	kreq__faults_committed(&f, 0, INT64_MAX);
	kreq__faults_committed(&f, 1, INT64_MAX);
	ck_assert_uint_eq(f.used, 0);
	ck_assert_ptr_null(kreq__faults_find(&f, 3, 100 + 2 * KREQ__FAULTS_MAX - 1));
}
END_TEST

static int check(const char *const *kv, char *why, size_t n)
{
	kreq_conf_t *c = kreq_conf_new();
	char err[256];
	for (; *kv; kv += 2)
		ck_assert_msg(kreq_conf_set(c, kv[0], kv[1], err, sizeof(err)) == KREQ_OK, "%s: %s",
		              kv[0], err);
	int rc = kreq__limits_check(c, why, n);
	kreq_conf_destroy(c);
	return rc;
}

START_TEST(test_size_limits)
{
	char why[512] = "";
	static const char *const defaults[] = {NULL};
	ck_assert_int_eq(check(defaults, why, sizeof(why)), KREQ_OK);
	kreq_conf_t *c = kreq_conf_new();
	/* the producers' message.max.bytes has room for a full payload */
	ck_assert_int_eq(kreq__limits_message_max(c),
	                 1000000 + KREQ__ENVELOPE_OVERHEAD_MAX + KREQ__RECORD_OVERHEAD_MAX);
	kreq_conf_destroy(c);
	/* a user's kafka.message.max.bytes below it is refused, naming both */
	static const char *const small[] = {"kafka.message.max.bytes", "1000000", NULL};
	ck_assert_int_eq(check(small, why, sizeof(why)), KREQ_ECONF);
	ck_assert_ptr_nonnull(strstr(why, "kafka.message.max.bytes (1000000)"));
	ck_assert_ptr_nonnull(strstr(why, "payload.max.bytes"));
	static const char *const enough[] = {"kafka.message.max.bytes", "1041984", NULL};
	ck_assert_int_eq(check(enough, why, sizeof(why)), KREQ_OK);
	/* a payload limit the envelope limit cannot hold */
	static const char *const env[] = {"payload.max.bytes", "1048576", NULL};
	ck_assert_int_eq(check(env, why, sizeof(why)), KREQ_ECONF);
	ck_assert_ptr_nonnull(strstr(why, "envelope.max.bytes"));
	static const char *const both[] = {"payload.max.bytes", "4000000", "envelope.max.bytes",
	                                   "4194304", NULL};
	ck_assert_int_eq(check(both, why, sizeof(why)), KREQ_OK);
}
END_TEST

/* kreq_worker_new() and kreq_client_new() refuse a kafka.message.max.bytes
 * that a full payload would not fit, before connecting anywhere. */
START_TEST(test_new_refuses_small_message_max)
{
	kreq_keyring_t *kr = kreq_keyring_new();
	uint8_t key[32] = {1};
	ck_assert_int_eq(kreq_keyring_add(kr, "k1", KREQ_KEY_HMAC_SHA256, key, 32, NULL, 0),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_signing_key(kr, "k1"), KREQ_OK);
	kreq_conf_t *c = kreq_conf_new();
	char why[512] = "";
	ck_assert_int_eq(kreq_conf_set(c, "kafka.bootstrap.servers", "127.0.0.1:1", why, 512),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(c, "kafka.message.max.bytes", "1000000", why, 512), KREQ_OK);
	ck_assert_ptr_null(kreq_worker_new(c, kr, "svc", why, sizeof(why)));
	ck_assert_ptr_nonnull(strstr(why, "kafka.message.max.bytes (1000000) is too small"));
	why[0] = '\0';
	ck_assert_ptr_null(kreq_client_new(c, kr, why, sizeof(why)));
	ck_assert_ptr_nonnull(strstr(why, "kafka.message.max.bytes (1000000) is too small"));
	kreq_conf_destroy(c);
	kreq_keyring_release(kr);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("faults");
	TCase *tc = tcase_create("faults");
	tcase_add_test(tc, test_one_rewind_per_pass);
	tcase_add_test(tc, test_too_large_is_final_at_once);
	tcase_add_test(tc, test_committed_and_full);
	tcase_add_test(tc, test_size_limits);
	tcase_add_test(tc, test_new_refuses_small_message_max);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
