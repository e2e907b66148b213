/*
 * call_memory.c — what a pending call costs the client (issue #18): at one
 * million pending calls, each with a 100-byte payload and a 16-byte method
 * and idempotency key, the client's memory per call (future, call record,
 * pending-table share and malloc's own overhead; the payload, method and
 * key bytes themselves excluded) is at most 160 bytes. The calls are built
 * by the client's own kreq__call_new(), put in a pending table with the
 * client's key offset and armed in a timing wheel, as kreq_client_call()
 * does; the heap is measured with glibc's mallinfo2(). So this test is
 * built only without sanitizers (they replace malloc) and is not named
 * test_* (scripts/test.sh runs those under valgrind, which does too).
 */
#include <check.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"
#include "common/internal.h"
#include "kreq/error.h"
#include "testsupport.h"

#define CALLS   1000000
#define PAYLOAD 100
#define METHOD  "bench.echo012345" /* 16 bytes */
#define KEY_LEN 16
#define BUDGET  160.0 /* bytes per pending call, issue #18 */
#define CHECK(c)                                                                                   \
	do {                                                                                       \
		if (!(c))                                                                          \
			ck_abort_msg("%s:%d: check failed: %s", __FILE__, __LINE__, #c);           \
	} while (0)

static size_t heap_in_use(void)
{
	struct mallinfo2 mi = mallinfo2();
	return mi.uordblks + mi.hblkhd;
}

START_TEST(test_pending_call_memory)
{
	kreq_future_t **fs = malloc(CALLS * sizeof(*fs));
	kreq_client_t *c = calloc(1, sizeof(*c)); /* what a call reads of it */
	kreq_call_opts_t *o = kreq_call_opts_new();
	uint8_t payload[PAYLOAD], key[KEY_LEN];
	memset(payload, 'p', sizeof(payload));
	memset(key, 'k', sizeof(key));
	ck_assert(fs && c && o);
	ck_assert_int_eq(kreq_call_opts_set_idempotency_key(o, key, sizeof(key)), KREQ_OK);
	c->request_timeout_ms = 30000;

	size_t base = heap_in_use();
	kreq__table_t *t = kreq__table_new(0, kreq__call_key_offset());
	kreq__wheel_t *w = kreq__wheel_new(0);
	ck_assert(t && w);
	for (size_t i = 0; i < CALLS; i++) {
		int err;
		fs[i] = kreq__call_new(c, METHOD, payload, sizeof(payload), o, &err);
		CHECK(fs[i] != NULL && err == KREQ_OK);
		kreq__call_t *r = kreq__future_extra(fs[i]);
		CHECK(kreq__table_insert(t, r->corr_id, fs[i]) == KREQ_OK);
		kreq__wheel_arm(w, &r->timer, (int64_t)(i % 30000));
	}
	double total = (double)(heap_in_use() - base) / CALLS;
	double per = total - (PAYLOAD + strlen(METHOD) + KEY_LEN);
	fprintf(stderr, "pending call: %.1f B (%.1f B with payload, method and key)\n", per, total);
	ck_assert_msg(per <= BUDGET, "%.1f B per pending call, budget %.0f", per, BUDGET);

	/* and they are the client's calls, found by their ids */
	for (size_t i = 0; i < CALLS; i += 997) {
		kreq__call_t *r = kreq__future_extra(fs[i]);
		CHECK(kreq__table_find(t, r->corr_id) == fs[i]);
		CHECK(strcmp(kreq__call_method(r), METHOD) == 0);
		CHECK(memcmp(kreq__call_idem(r), key, KEY_LEN) == 0 && r->idem_len == KEY_LEN);
		CHECK(r->payload_len == PAYLOAD && kreq__call_attempt(r) == 1);
	}
	for (size_t i = 0; i < CALLS; i++) {
		kreq__call_t *r = kreq__future_extra(fs[i]);
		CHECK(kreq__table_remove(t, r->corr_id) == fs[i]);
		CHECK(kreq__wheel_cancel(w, &r->timer));
		kreq_future_release(fs[i]);
	}
	ck_assert_uint_eq(kreq__table_count(t), 0);
	ck_assert_uint_eq(kreq__wheel_count(w), 0);
	kreq__table_destroy(t);
	kreq__wheel_destroy(w);
	kreq_call_opts_destroy(o);
	free(c);
	free(fs);
}
END_TEST

/* The packed record keeps the length of the largest payload allowed
 * (payload.max.bytes up to 256 MiB = 2^28). */
START_TEST(test_largest_payload_length)
{
	size_t len = (size_t)1 << 28;
	kreq_client_t *c = calloc(1, sizeof(*c));
	uint8_t *payload = malloc(len);
	ck_assert(c && payload);
	memset(payload, 0x5a, len);
	c->request_timeout_ms = 30000;
	int err;
	kreq_future_t *f = kreq__call_new(c, METHOD, payload, len, NULL, &err);
	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(err, KREQ_OK);
	kreq__call_t *r = kreq__future_extra(f);
	ck_assert_uint_eq(r->payload_len, len);
	ck_assert_uint_eq(r->idem_len, 16); /* the default key: the correlation id */
	ck_assert_int_eq(memcmp(kreq__call_idem(r), r->corr_id, 16), 0);
	kreq_future_release(f);
	free(payload);
	free(c);
}
END_TEST

/* The local deadline is kept as a 32-bit offset from the start: exact up to
 * 49.7 days, capped beyond; the deadline on the wire is kept whole. */
START_TEST(test_local_deadline_offset)
{
	kreq_client_t *c = calloc(1, sizeof(*c));
	kreq_call_opts_t *o = kreq_call_opts_new();
	ck_assert(c && o);
	c->request_timeout_ms = 30000;
	int err;
	int64_t before = kreq__now_ms();
	kreq_future_t *f = kreq__call_new(c, METHOD, NULL, 0, NULL, &err);
	ck_assert(f && err == KREQ_OK);
	kreq__call_t *r = kreq__future_extra(f);
	ck_assert_int_ge(r->deadline_wall_ms, before + 30000);
	ck_assert_int_le(r->deadline_after_ms, 30000);
	ck_assert_int_ge(r->deadline_after_ms, 29000);
	ck_assert_int_eq(kreq__call_deadline_mono(r), r->start_ns / 1000000 + r->deadline_after_ms);
	kreq_future_release(f);

	int64_t far = before + INT64_C(100) * 86400000; /* 100 days */
	ck_assert_int_eq(kreq_call_opts_set_deadline(o, far), KREQ_OK);
	f = kreq__call_new(c, METHOD, NULL, 0, o, &err);
	ck_assert(f && err == KREQ_OK);
	r = kreq__future_extra(f);
	ck_assert_int_eq(r->deadline_wall_ms, far); /* on the wire: unchanged */
	ck_assert_uint_eq(r->deadline_after_ms, UINT32_MAX);
	kreq_future_release(f);

	ck_assert_int_eq(kreq_call_opts_set_deadline(o, before - 1), KREQ_OK);
	f = kreq__call_new(c, METHOD, NULL, 0, o, &err);
	ck_assert_int_eq(err, KREQ_ETIMEDOUT); /* already passed: refused */
	kreq_future_release(f);
	kreq_call_opts_destroy(o);
	free(c);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("call_memory");
	TCase *tc = tcase_create("memory");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_pending_call_memory);
	tcase_add_test(tc, test_largest_payload_length);
	tcase_add_test(tc, test_local_deadline_offset);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
