/*
 * test_future.c — futures: accessors and error paths, callback ordering,
 * cancel, waits with timeouts, reference counting, and a concurrency stress
 * test racing reply / timeout / cancel / failure / shutdown over futures kept
 * in the pending table and the timer wheel, as the client does.
 */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

#include "client/future_int.h"
#include "client/table.h"
#include "client/wheel.h"
#include "kreq/error.h"
#include "testsupport.h"

static int ld_int(_Atomic int *p)
{
	return atomic_load(p);
}

static size_t ld_size(_Atomic size_t *p)
{
	return atomic_load(p);
}

static bool ld_bool(_Atomic bool *p)
{
	return atomic_load(p);
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static void *dup_str(const char *s)
{
	size_t n = strlen(s) + 1;
	void *p = malloc(n);
	if (p == NULL) /* also called on worker threads */
		abort();
	memcpy(p, s, n);
	return p;
}

static void never_cb(kreq_future_t *f, void *opaque)
{
	(void)f;
	(void)opaque;
	ck_abort_msg("this callback must never run");
}

/* ---- accessors and error paths ----------------------------------------- */

START_TEST(test_pending_accessors)
{
	kreq_future_t *f = kreq__future_new(96, NULL);
	ck_assert_ptr_nonnull(f);
	unsigned char *x = kreq__future_extra(f);
	ck_assert_uint_eq((uintptr_t)x % 16, 0);
	for (int i = 0; i < 96; i++)
		ck_assert_uint_eq(x[i], 0);
	ck_assert_ptr_eq(kreq__future_from_extra(x), f);
	ck_assert(!kreq_future_is_done(f));
	ck_assert_int_eq(kreq_future_err(f), KREQ_ESTATE);
	ck_assert_int_eq(kreq_future_status(f), 0);
	size_t len = 99;
	ck_assert_ptr_null(kreq_future_payload(f, &len));
	ck_assert_uint_eq(len, 0);
	ck_assert_ptr_null(kreq_future_payload(f, NULL));
	ck_assert_str_eq(kreq_future_errstr(f), "");
	ck_assert(!kreq_future_from_dedup(f));
	ck_assert_int_eq(kreq_future_wait(f, 0), KREQ_ETIMEDOUT);
	ck_assert_ptr_eq(kreq_future_retain(f), f);
	kreq_future_release(f);
	kreq_future_release(f);
}
END_TEST

START_TEST(test_null_arguments)
{
	kreq_future_t *f = kreq__future_new(0, NULL);
	ck_assert_ptr_nonnull(f);
	ck_assert_ptr_null(kreq_future_retain(NULL));
	kreq_future_release(NULL);
	ck_assert(!kreq_future_is_done(NULL));
	ck_assert_int_eq(kreq_future_wait(NULL, 0), KREQ_EINVAL);
	ck_assert_int_eq(kreq_future_wait(NULL, -1), KREQ_EINVAL);
	ck_assert_int_eq(kreq_future_err(NULL), KREQ_EINVAL);
	ck_assert_int_eq(kreq_future_status(NULL), 0);
	size_t len = 5;
	ck_assert_ptr_null(kreq_future_payload(NULL, &len));
	ck_assert_uint_eq(len, 0);
	ck_assert_str_eq(kreq_future_errstr(NULL), "");
	ck_assert(!kreq_future_from_dedup(NULL));
	ck_assert_int_eq(kreq_future_on_done(NULL, never_cb, NULL), KREQ_EINVAL);
	ck_assert_int_eq(kreq_future_on_done(f, NULL, NULL), KREQ_EINVAL);
	ck_assert_int_eq(kreq_future_cancel(NULL), KREQ_EINVAL);
	kreq_future_t *with_null[2] = {f, NULL};
	ck_assert_int_eq(kreq_future_wait_all(NULL, 1, 0), KREQ_EINVAL);
	ck_assert_int_eq(kreq_future_wait_all(with_null, 2, 0), KREQ_EINVAL);
	ck_assert_int_eq(kreq_future_wait_all(NULL, 0, 0), KREQ_OK);
	size_t idx = 7;
	ck_assert_int_eq(kreq_future_wait_any(NULL, 1, 0, &idx), KREQ_EINVAL);
	ck_assert_int_eq(kreq_future_wait_any(with_null, 2, 0, &idx), KREQ_EINVAL);
	ck_assert_int_eq(kreq_future_wait_any(with_null, 0, 0, &idx), KREQ_EINVAL);
	ck_assert_uint_eq(idx, 7);
	/* the future is still pending and usable */
	ck_assert_int_eq(kreq_future_err(f), KREQ_ESTATE);
	kreq_future_release(f);
}
END_TEST

START_TEST(test_settle_reply)
{
	kreq_future_t *f = kreq__future_new(32, NULL);
	ck_assert(kreq__future_settle(f, KREQ_OK, 0, dup_str("hello"), 6, true, NULL));
	ck_assert(kreq_future_is_done(f));
	ck_assert_int_eq(kreq_future_wait(f, 0), KREQ_OK);
	ck_assert_int_eq(kreq_future_wait(f, -1), KREQ_OK);
	ck_assert_int_eq(kreq_future_err(f), KREQ_OK);
	ck_assert_int_eq(kreq_future_status(f), 0);
	size_t len = 0;
	ck_assert_str_eq(kreq_future_payload(f, &len), "hello");
	ck_assert_uint_eq(len, 6);
	ck_assert_str_eq(kreq_future_errstr(f), "");
	ck_assert(kreq_future_from_dedup(f));
	/* a second settle changes nothing and frees its payload */
	ck_assert(!kreq__future_settle(f, KREQ_ETIMEDOUT, 3, dup_str("late"), 5, false, "x"));
	ck_assert_int_eq(kreq_future_err(f), KREQ_OK);
	ck_assert_str_eq(kreq_future_payload(f, NULL), "hello");
	ck_assert_str_eq(kreq_future_errstr(f), "");
	ck_assert(kreq_future_from_dedup(f));
	ck_assert_int_eq(kreq_future_cancel(f), KREQ_ESTATE);
	ck_assert_int_eq(kreq_future_err(f), KREQ_OK);
	kreq_future_release(f);
}
END_TEST

START_TEST(test_settle_error_and_messages)
{
	kreq_future_t *f = kreq__future_new(0, NULL);
	ck_assert(kreq__future_settle(f, KREQ_EREJECTED, 42, NULL, 10, false, "bad method"));
	ck_assert_int_eq(kreq_future_err(f), KREQ_EREJECTED);
	ck_assert_int_eq(kreq_future_status(f), 42);
	size_t len = 9;
	ck_assert_ptr_null(kreq_future_payload(f, &len));
	ck_assert_uint_eq(len, 0); /* no payload: no length */
	ck_assert_str_eq(kreq_future_errstr(f), "bad method");
	ck_assert(!kreq_future_from_dedup(f));
	kreq_future_release(f);

	/* long messages are cut at 255 bytes */
	char longmsg[600];
	memset(longmsg, 'a', sizeof(longmsg) - 1);
	longmsg[sizeof(longmsg) - 1] = '\0';
	f = kreq__future_new(0, NULL);
	ck_assert(kreq__future_settle(f, KREQ_ETIMEDOUT, 0, NULL, 0, false, longmsg));
	ck_assert_uint_eq(strlen(kreq_future_errstr(f)), 255);
	ck_assert(strncmp(kreq_future_errstr(f), longmsg, 255) == 0);
	kreq_future_release(f);

	/* ... on a UTF-8 character boundary */
	memset(longmsg, 'a', 254);
	strcpy(longmsg + 254, "\xc3\xa9tail"); /* U+00E9 across bytes 254..255 */
	f = kreq__future_new(0, NULL);
	ck_assert(kreq__future_settle(f, KREQ_ETIMEDOUT, 0, NULL, 0, false, longmsg));
	ck_assert_uint_eq(strlen(kreq_future_errstr(f)), 254);
	kreq_future_release(f);

	/* a payload and a message together */
	f = kreq__future_new(0, NULL);
	ck_assert(kreq__future_settle(f, KREQ_EREJECTED, 3, dup_str("body"), 5, true, "bad input"));
	ck_assert_str_eq(kreq_future_payload(f, &len), "body");
	ck_assert_uint_eq(len, 5);
	ck_assert_str_eq(kreq_future_errstr(f), "bad input");
	ck_assert_int_eq(kreq_future_status(f), 3);
	ck_assert(kreq_future_from_dedup(f));
	kreq_future_release(f);

	/* the reply's error text with KREQ_OK, an empty message */
	f = kreq__future_new(0, NULL);
	ck_assert(kreq__future_settle(f, KREQ_OK, 7, NULL, 0, false, "app says no"));
	ck_assert_int_eq(kreq_future_status(f), 7);
	ck_assert_str_eq(kreq_future_errstr(f), "app says no");
	kreq_future_release(f);
	f = kreq__future_new(0, NULL);
	ck_assert(kreq__future_settle(f, KREQ_ECLOSED, 0, NULL, 0, false, ""));
	ck_assert_str_eq(kreq_future_errstr(f), "");
	kreq_future_release(f);
}
END_TEST

/* ---- callbacks ----------------------------------------------------------- */

typedef struct cbrec {
	_Atomic int runs;
	pthread_t thread;
	bool done_inside; /* kreq_future_is_done() seen inside the callback */
	int err_inside;
	int sleep_ms;
	_Atomic bool finished;
} cbrec_t;

static void record_cb(kreq_future_t *f, void *opaque)
{
	cbrec_t *r = opaque;
	r->thread = pthread_self();
	r->done_inside = kreq_future_is_done(f);
	r->err_inside = kreq_future_err(f);
	if (r->sleep_ms > 0)
		sleep_ms(r->sleep_ms);
	atomic_store(&r->finished, true);
	atomic_fetch_add(&r->runs, 1);
}

static void *settle_later(void *arg)
{
	sleep_ms(30);
	kreq__future_settle(arg, KREQ_ETIMEDOUT, 0, NULL, 0, false, "deadline passed");
	return NULL;
}

START_TEST(test_callback_before_settle)
{
	kreq_future_t *f = kreq__future_new(0, NULL);
	cbrec_t r = {.sleep_ms = 60};
	ck_assert_int_eq(kreq_future_on_done(f, record_cb, &r), KREQ_OK);
	ck_assert_int_eq(kreq_future_on_done(f, record_cb, &r), KREQ_EEXIST);
	ck_assert_int_eq(ld_int(&r.runs), 0);
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, settle_later, f), 0);
	/* wait returns only after the callback (which sleeps) has finished */
	ck_assert_int_eq(kreq_future_wait(f, -1), KREQ_OK);
	ck_assert(ld_bool(&r.finished));
	ck_assert_int_eq(ld_int(&r.runs), 1);
	pthread_join(th, NULL);
	ck_assert(pthread_equal(r.thread, th));         /* ran on the settling thread */
	ck_assert(!r.done_inside);                      /* not reported done before it ends */
	ck_assert_int_eq(r.err_inside, KREQ_ETIMEDOUT); /* but the result is readable */
	ck_assert_int_eq(kreq_future_on_done(f, record_cb, &r), KREQ_EEXIST);
	ck_assert_int_eq(ld_int(&r.runs), 1);
	kreq_future_release(f);
}
END_TEST

START_TEST(test_callback_after_settle)
{
	kreq_future_t *f = kreq__future_new(0, NULL);
	ck_assert(kreq__future_settle(f, KREQ_EUNAVAILABLE, 0, NULL, 0, false, "no worker"));
	cbrec_t r = {0};
	ck_assert_int_eq(kreq_future_on_done(f, record_cb, &r), KREQ_OK);
	ck_assert_int_eq(ld_int(&r.runs), 1); /* before on_done returned */
	ck_assert(pthread_equal(r.thread, pthread_self()));
	ck_assert(r.done_inside);
	ck_assert_int_eq(r.err_inside, KREQ_EUNAVAILABLE);
	ck_assert_int_eq(kreq_future_on_done(f, record_cb, &r), KREQ_EEXIST);
	ck_assert_int_eq(ld_int(&r.runs), 1);
	kreq_future_release(f);
}
END_TEST

/* Registration racing settlement: the callback runs exactly once, whoever
 * wins, for every future. */
typedef struct race {
	kreq_future_t **fs;
	cbrec_t *recs;
	size_t n;
} race_t;

static void *race_register(void *arg)
{
	race_t *r = arg;
	for (size_t i = 0; i < r->n; i++)
		if (kreq_future_on_done(r->fs[i], record_cb, &r->recs[i]) != KREQ_OK)
			atomic_fetch_add(&r->recs[i].runs, 100); /* flag the failure */
	return NULL;
}

static void *race_settle(void *arg)
{
	race_t *r = arg;
	for (size_t i = 0; i < r->n; i++)
		kreq__future_settle(r->fs[i], KREQ_OK, (int32_t)i, NULL, 0, false, NULL);
	return NULL;
}

START_TEST(test_callback_register_race)
{
	size_t n = RUNNING_ON_VALGRIND ? 2000 : 20000;
	race_t r = {calloc(n, sizeof(kreq_future_t *)), calloc(n, sizeof(cbrec_t)), n};
	for (size_t i = 0; i < n; i++)
		r.fs[i] = kreq__future_new(0, NULL);
	pthread_t a, b;
	pthread_create(&a, NULL, race_register, &r);
	pthread_create(&b, NULL, race_settle, &r);
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	for (size_t i = 0; i < n; i++) {
		/* (ck_assert_* writes to the runner per call: too slow here) */
		if (kreq_future_wait(r.fs[i], -1) != KREQ_OK || atomic_load(&r.recs[i].runs) != 1 ||
		    r.recs[i].err_inside != KREQ_OK || kreq_future_status(r.fs[i]) != (int32_t)i)
			ck_abort_msg("future %zu: callback ran %d times, err %d, status %d", i,
			             atomic_load(&r.recs[i].runs), r.recs[i].err_inside,
			             kreq_future_status(r.fs[i]));
		kreq_future_release(r.fs[i]);
	}
	free(r.fs);
	free(r.recs);
}
END_TEST

/* ---- cancel ---------------------------------------------------------- */

START_TEST(test_cancel_without_hook)
{
	kreq_future_t *f = kreq__future_new(0, NULL);
	cbrec_t r = {0};
	ck_assert_int_eq(kreq_future_on_done(f, record_cb, &r), KREQ_OK);
	ck_assert_int_eq(kreq_future_cancel(f), KREQ_OK);
	ck_assert_int_eq(ld_int(&r.runs), 1);
	ck_assert(pthread_equal(r.thread, pthread_self()));
	ck_assert(kreq_future_is_done(f));
	ck_assert_int_eq(kreq_future_err(f), KREQ_ECANCELED);
	ck_assert_str_eq(kreq_future_errstr(f), "cancelled by caller");
	ck_assert_int_eq(kreq_future_cancel(f), KREQ_ESTATE);
	ck_assert(!kreq__future_settle(f, KREQ_OK, 0, dup_str("late reply"), 11, false, NULL));
	ck_assert_int_eq(kreq_future_err(f), KREQ_ECANCELED);
	ck_assert_ptr_null(kreq_future_payload(f, NULL));
	ck_assert_int_eq(ld_int(&r.runs), 1);
	kreq_future_release(f);
}
END_TEST

static _Atomic int hook_calls;

static int hook_settles(kreq_future_t *f)
{
	atomic_fetch_add(&hook_calls, 1);
	return kreq__future_settle(f, KREQ_ECANCELED, 0, NULL, 0, false, "cancelled via hook")
	           ? KREQ_OK
	           : KREQ_ESTATE;
}

static int hook_refuses(kreq_future_t *f)
{
	(void)f;
	atomic_fetch_add(&hook_calls, 1);
	return KREQ_ESTATE; /* e.g. the reply path removed it from the table first */
}

static const kreq__future_owner_t owner_settles = {NULL, hook_settles};
static const kreq__future_owner_t owner_refuses = {NULL, hook_refuses};

START_TEST(test_cancel_with_hook)
{
	atomic_store(&hook_calls, 0);
	kreq_future_t *f = kreq__future_new(0, &owner_settles);
	ck_assert_int_eq(kreq_future_cancel(f), KREQ_OK);
	ck_assert_int_eq(ld_int(&hook_calls), 1);
	ck_assert_int_eq(kreq_future_err(f), KREQ_ECANCELED);
	ck_assert_str_eq(kreq_future_errstr(f), "cancelled via hook");
	ck_assert_int_eq(kreq_future_cancel(f), KREQ_ESTATE);
	ck_assert_int_eq(ld_int(&hook_calls), 1); /* settled: hook not called */
	kreq_future_release(f);

	f = kreq__future_new(0, &owner_refuses);
	ck_assert_int_eq(kreq_future_cancel(f), KREQ_ESTATE);
	ck_assert_int_eq(ld_int(&hook_calls), 2);
	ck_assert(!kreq_future_is_done(f)); /* the hook decides */
	ck_assert(kreq__future_settle(f, KREQ_OK, 0, NULL, 0, false, NULL));
	ck_assert_int_eq(kreq_future_cancel(f), KREQ_ESTATE);
	ck_assert_int_eq(ld_int(&hook_calls), 2);
	kreq_future_release(f);
}
END_TEST

/* ---- references --------------------------------------------------------- */

static _Atomic int fini_calls;
static _Atomic int fini_saw_marker;

static void fini_count(kreq_future_t *f)
{
	const unsigned char *x = kreq__future_extra(f);
	if (x[0] == 0xAB && x[95] == 0xCD)
		atomic_fetch_add(&fini_saw_marker, 1);
	atomic_fetch_add(&fini_calls, 1);
}

static const kreq__future_owner_t owner_fini = {fini_count, NULL};

START_TEST(test_refcount_and_fini)
{
	atomic_store(&fini_calls, 0);
	atomic_store(&fini_saw_marker, 0);
	kreq_future_t *f = kreq__future_new(96, &owner_fini);
	unsigned char *x = kreq__future_extra(f);
	x[0] = 0xAB;
	x[95] = 0xCD;
	kreq_future_retain(f);
	kreq_future_retain(f);
	ck_assert(kreq__future_settle(f, KREQ_OK, 0, dup_str("p"), 2, false, "m"));
	kreq_future_release(f);
	kreq_future_release(f);
	ck_assert_int_eq(ld_int(&fini_calls), 0);
	ck_assert_str_eq(kreq_future_payload(f, NULL), "p"); /* still ours */
	kreq_future_release(f);
	ck_assert_int_eq(ld_int(&fini_calls), 1);
	ck_assert_int_eq(ld_int(&fini_saw_marker), 1);

	/* released while pending: fini runs, nothing leaks */
	f = kreq__future_new(8, &owner_fini);
	kreq_future_release(f);
	ck_assert_int_eq(ld_int(&fini_calls), 2);
}
END_TEST

/* ---- waiting ------------------------------------------------------------ */

START_TEST(test_wait_timeout_and_wake)
{
	kreq_future_t *f = kreq__future_new(0, NULL);
	int64_t t0 = kreq_test_now_ms();
	ck_assert_int_eq(kreq_future_wait(f, 50), KREQ_ETIMEDOUT);
	ck_assert_int_ge(kreq_test_now_ms() - t0, 49);
	ck_assert(!kreq_future_is_done(f));
	pthread_t th;
	pthread_create(&th, NULL, settle_later, f);
	ck_assert_int_eq(kreq_future_wait(f, 10000), KREQ_OK);
	ck_assert_int_eq(kreq_future_err(f), KREQ_ETIMEDOUT);
	ck_assert_str_eq(kreq_future_errstr(f), "deadline passed");
	pthread_join(th, NULL);
	kreq_future_release(f);
}
END_TEST

static void *wait_forever(void *arg)
{
	return (void *)(intptr_t)kreq_future_wait(arg, -1);
}

START_TEST(test_many_waiters)
{
	kreq_future_t *f = kreq__future_new(0, NULL);
	pthread_t th[4];
	for (int i = 0; i < 4; i++)
		pthread_create(&th[i], NULL, wait_forever, f);
	sleep_ms(20);
	ck_assert(kreq__future_settle(f, KREQ_ECLOSED, 0, NULL, 0, false, "client closed"));
	for (int i = 0; i < 4; i++) {
		void *rc;
		pthread_join(th[i], &rc);
		ck_assert_int_eq((int)(intptr_t)rc, KREQ_OK);
	}
	kreq_future_release(f);
}
END_TEST

typedef struct delayed {
	kreq_future_t *f;
	int ms;
} delayed_t;

static void *settle_after(void *arg)
{
	delayed_t *d = arg;
	sleep_ms(d->ms);
	kreq__future_settle(d->f, KREQ_OK, d->ms, NULL, 0, false, NULL);
	return NULL;
}

START_TEST(test_wait_all)
{
	kreq_future_t *fs[3];
	for (int i = 0; i < 3; i++)
		fs[i] = kreq__future_new(0, NULL);
	kreq__future_settle(fs[0], KREQ_OK, 0, NULL, 0, false, NULL);
	kreq__future_settle(fs[2], KREQ_OK, 0, NULL, 0, false, NULL);
	ck_assert_int_eq(kreq_future_wait_all(fs, 3, 0), KREQ_ETIMEDOUT);
	int64_t t0 = kreq_test_now_ms();
	ck_assert_int_eq(kreq_future_wait_all(fs, 3, 40), KREQ_ETIMEDOUT);
	ck_assert_int_ge(kreq_test_now_ms() - t0, 39);
	ck_assert_int_eq(kreq_future_wait_all(fs, 1, 0), KREQ_OK);
	delayed_t d = {fs[1], 20};
	pthread_t th;
	pthread_create(&th, NULL, settle_after, &d);
	ck_assert_int_eq(kreq_future_wait_all(fs, 3, -1), KREQ_OK);
	ck_assert_int_eq(kreq_future_status(fs[1]), 20);
	pthread_join(th, NULL);
	ck_assert_int_eq(kreq_future_wait_all(fs, 3, 0), KREQ_OK);
	for (int i = 0; i < 3; i++)
		kreq_future_release(fs[i]);
}
END_TEST

START_TEST(test_wait_any)
{
	kreq_future_t *fs[3];
	cbrec_t r = {.sleep_ms = 30};
	for (int i = 0; i < 3; i++)
		fs[i] = kreq__future_new(0, NULL);
	size_t idx = 99;
	ck_assert_int_eq(kreq_future_wait_any(fs, 3, 0, &idx), KREQ_ETIMEDOUT);
	int64_t t0 = kreq_test_now_ms();
	ck_assert_int_eq(kreq_future_wait_any(fs, 3, 40, &idx), KREQ_ETIMEDOUT);
	ck_assert_int_ge(kreq_test_now_ms() - t0, 39);
	ck_assert_uint_eq(idx, 99);

	/* woken by a settle on another thread, after that future's callback */
	ck_assert_int_eq(kreq_future_on_done(fs[2], record_cb, &r), KREQ_OK);
	delayed_t d = {fs[2], 20};
	pthread_t th;
	pthread_create(&th, NULL, settle_after, &d);
	ck_assert_int_eq(kreq_future_wait_any(fs, 3, 10000, &idx), KREQ_OK);
	ck_assert_uint_eq(idx, 2);
	ck_assert(ld_bool(&r.finished));
	pthread_join(th, NULL);

	/* the lowest done index; NULL index allowed */
	kreq__future_settle(fs[1], KREQ_OK, 0, NULL, 0, false, NULL);
	ck_assert_int_eq(kreq_future_wait_any(fs, 3, -1, &idx), KREQ_OK);
	ck_assert_uint_eq(idx, 1);
	ck_assert_int_eq(kreq_future_wait_any(fs, 3, 0, NULL), KREQ_OK);
	ck_assert_int_eq(kreq_future_wait_any(fs, 1, 0, &idx), KREQ_ETIMEDOUT);
	for (int i = 0; i < 3; i++)
		kreq_future_release(fs[i]);
}
END_TEST

/* Many wait_any callers on overlapping sets, settled from two threads. */
typedef struct anyctx {
	kreq_future_t **fs;
	size_t n;
	_Atomic int bad;
} anyctx_t;

static void *any_waiter(void *arg)
{
	anyctx_t *c = arg;
	for (size_t i = 0; i + 4 <= c->n; i += 4) {
		size_t idx;
		if (kreq_future_wait_any(c->fs + i, 4, 10000, &idx) != KREQ_OK ||
		    !kreq_future_is_done(c->fs[i + idx]))
			atomic_fetch_add(&c->bad, 1);
	}
	return NULL;
}

static void *any_settler(void *arg)
{
	anyctx_t *c = arg;
	for (size_t i = 0; i < c->n; i++)
		kreq__future_settle(c->fs[i], KREQ_OK, 0, NULL, 0, false, NULL);
	return NULL;
}

START_TEST(test_wait_any_concurrent)
{
	anyctx_t c = {.n = RUNNING_ON_VALGRIND ? 400 : 4000};
	c.fs = calloc(c.n, sizeof(*c.fs));
	for (size_t i = 0; i < c.n; i++)
		c.fs[i] = kreq__future_new(0, NULL);
	pthread_t w[3], s[2];
	for (int i = 0; i < 3; i++)
		pthread_create(&w[i], NULL, any_waiter, &c);
	for (int i = 0; i < 2; i++)
		pthread_create(&s[i], NULL, any_settler, &c);
	for (int i = 0; i < 3; i++)
		pthread_join(w[i], NULL);
	for (int i = 0; i < 2; i++)
		pthread_join(s[i], NULL);
	ck_assert_int_eq(ld_int(&c.bad), 0);
	for (size_t i = 0; i < c.n; i++)
		kreq_future_release(c.fs[i]);
	free(c.fs);
}
END_TEST

/* ---- stress: the client's races over table + wheel ----------------------- */

/*
 * Eight threads sweep the same futures chunk by chunk (a barrier after each
 * chunk keeps them on the same few futures at once): two reply, one send
 * failure, two cancel, the timer (a synthetic clock advancing with the
 * sweep, so deadlines fall due while the others act), a late callback
 * registrant that also waits, and a shutdown that drains the table three
 * quarters of the way through. Half the futures cancel through a hook
 * (whoever removes from the table settles, as the client does), half race
 * kreq__future_settle() directly. Every future must settle exactly once,
 * run its callback exactly once, and be freed.
 */
#define STRESS_THREADS 8
#define CHUNK          32

typedef struct stress stress_t;

typedef struct rec {
	uint8_t id[16];
	kreq__timer_node_t tn;
	stress_t *ctx;
	bool hooked;      /* cancel goes through the hook (table arbitration) */
	bool cb_early;    /* callback registered before any race */
	_Atomic int wins; /* settle calls that returned true */
	_Atomic int winner_err;
	_Atomic int cb_runs;
} rec_t;

struct stress {
	kreq__table_t *t;
	kreq__wheel_t *w;
	kreq_future_t **fs;
	size_t n;
	pthread_barrier_t step;
	_Atomic int bad; /* violations seen on worker threads */
	_Atomic int fini;
	_Atomic size_t settled;
};

static rec_t *rec_of(kreq_future_t *f)
{
	return kreq__future_extra(f);
}

static uint64_t rnd(uint64_t *s)
{
	uint64_t z = (*s += UINT64_C(0x9E3779B97F4A7C15));
	z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

static void stress_retain(void *v)
{
	kreq_future_retain(v);
}

static void stress_fini(kreq_future_t *f)
{
	atomic_fetch_add(&rec_of(f)->ctx->fini, 1);
}

static void stress_cb(kreq_future_t *f, void *opaque)
{
	rec_t *r = opaque;
	if (kreq_future_err(f) == KREQ_ESTATE || (r->cb_early && kreq_future_is_done(f)))
		atomic_fetch_add(&r->ctx->bad, 1);
	atomic_fetch_add(&r->cb_runs, 1);
}

static void book_win(rec_t *r, int err)
{
	atomic_store(&r->winner_err, err);
	atomic_fetch_add(&r->wins, 1);
	atomic_fetch_add(&r->ctx->settled, 1);
}

/* Settles f and books the outcome. */
static bool stress_settle(kreq_future_t *f, int err, const char *msg)
{
	void *payload = err == KREQ_OK ? dup_str("reply") : NULL;
	if (!kreq__future_settle(f, err, 0, payload, 6, false, msg))
		return false;
	book_win(rec_of(f), err);
	return true;
}

/* The table's reference was handed to us by a successful remove: disarm
 * (the wheel's reference is ours if cancel disarmed it) and drop it. */
static void stress_claimed(stress_t *c, kreq_future_t *f)
{
	if (kreq__wheel_cancel(c->w, &rec_of(f)->tn))
		kreq_future_release(f);
	kreq_future_release(f);
}

/* The client's way: whoever removes from the table settles. */
static bool claim_and_settle(stress_t *c, kreq_future_t *f, int err, const char *msg)
{
	if (kreq__table_remove(c->t, rec_of(f)->id) != f)
		return false;
	if (!stress_settle(f, err, msg))
		atomic_fetch_add(&c->bad, 1); /* the remover must win */
	stress_claimed(c, f);
	return true;
}

/* Raw race: settle first, then clean up if we are the one to remove. */
static void settle_then_claim(stress_t *c, kreq_future_t *f, int err, const char *msg)
{
	stress_settle(f, err, msg);
	if (kreq__table_remove(c->t, rec_of(f)->id) == f)
		stress_claimed(c, f);
}

static void settle_as(stress_t *c, kreq_future_t *f, int err, const char *msg)
{
	if (rec_of(f)->hooked)
		claim_and_settle(c, f, err, msg);
	else
		settle_then_claim(c, f, err, msg);
}

static int stress_hook(kreq_future_t *f)
{
	return claim_and_settle(rec_of(f)->ctx, f, KREQ_ECANCELED, "cancelled by caller")
	           ? KREQ_OK
	           : KREQ_ESTATE;
}

static const kreq__future_owner_t stress_owner = {stress_fini, NULL};
static const kreq__future_owner_t stress_owner_hooked = {stress_fini, stress_hook};

/* fs[i] if it is still in the table, retained; else NULL. */
static kreq_future_t *lookup(stress_t *c, size_t i)
{
	return kreq__table_find_retain(c->t, rec_of(c->fs[i])->id, stress_retain);
}

static void act_settle(stress_t *c, size_t i, int err)
{
	kreq_future_t *f = lookup(c, i);
	if (f == NULL)
		return;
	settle_as(c, f, err, err == KREQ_OK ? NULL : "send failed");
	kreq_future_release(f);
}

static void act_cancel(stress_t *c, size_t i)
{
	kreq_future_t *f = lookup(c, i);
	if (f == NULL)
		return;
	int rc = kreq_future_cancel(f);
	if (rc != KREQ_OK && rc != KREQ_ESTATE)
		atomic_fetch_add(&c->bad, 1);
	if (!rec_of(f)->hooked) { /* the hook did all this for hooked ones */
		if (rc == KREQ_OK)
			book_win(rec_of(f), KREQ_ECANCELED);
		if (kreq__table_remove(c->t, rec_of(f)->id) == f)
			stress_claimed(c, f);
	}
	kreq_future_release(f);
}

/* Expires what is due at the synthetic time now. */
static void act_timer(stress_t *c, int64_t now)
{
	kreq__timer_node_t *out[16];
	size_t n;
	do {
		n = kreq__wheel_expire(c->w, now, out, 16);
		for (size_t i = 0; i < n; i++) {
			rec_t *r = (rec_t *)((char *)out[i] - offsetof(rec_t, tn));
			kreq_future_t *f = kreq__future_from_extra(r);
			settle_as(c, f, KREQ_ETIMEDOUT, "deadline passed");
			kreq_future_release(f); /* the wheel's reference */
		}
	} while (n == 16);
}

static void drain_one(void *value, void *arg)
{
	stress_t *c = arg;
	kreq_future_t *f = value;
	stress_settle(f, KREQ_ECLOSED, "client closed");
	stress_claimed(c, f);
}

/* Late callbacks (racing the settles of this chunk) and waits. */
static void act_register_wait(stress_t *c, size_t lo, size_t hi, uint64_t *seed)
{
	for (size_t i = lo; i < hi; i++) {
		rec_t *r = rec_of(c->fs[i]);
		if (!r->cb_early && kreq_future_on_done(c->fs[i], stress_cb, r) != KREQ_OK)
			atomic_fetch_add(&c->bad, 1);
		if (kreq_future_on_done(c->fs[i], stress_cb, r) != KREQ_EEXIST)
			atomic_fetch_add(&c->bad, 1);
	}
	/* every future up to hi has its callback now: a done one ran it */
	kreq_future_t *f = c->fs[lo + rnd(seed) % (hi - lo)];
	if (kreq_future_wait(f, 1) == KREQ_OK &&
	    (atomic_load(&rec_of(f)->cb_runs) != 1 || kreq_future_err(f) == KREQ_ESTATE))
		atomic_fetch_add(&c->bad, 1);
	size_t j = rnd(seed) % (hi - 3), idx;
	if (kreq_future_wait_any(c->fs + j, 4, 0, &idx) == KREQ_OK &&
	    !kreq_future_is_done(c->fs[j + idx]))
		atomic_fetch_add(&c->bad, 1);
}

typedef struct role_arg {
	stress_t *c;
	int role;
	uint64_t seed;
} role_arg_t;

/* One thread's share of chunk [lo, hi) (chunk number k of nk). */
static void act(role_arg_t *a, size_t lo, size_t hi, size_t k, size_t nk)
{
	static const int percent[] = {40, 40, 20, 25, 25};
	stress_t *c = a->c;
	if (a->role <= 4) {
		for (size_t i = lo; i < hi; i++) {
			if ((int)(rnd(&a->seed) % 100) >= percent[a->role])
				continue;
			if (a->role <= 2)
				act_settle(c, i, a->role == 2 ? KREQ_EUNAVAILABLE : KREQ_OK);
			else
				act_cancel(c, i);
		}
	} else if (a->role == 5) {
		act_timer(c, (int64_t)hi);
	} else if (a->role == 6) {
		if (k == nk * 3 / 4)
			kreq__table_drain(c->t, drain_one, c);
	} else {
		act_register_wait(c, lo, hi, &a->seed);
	}
}

static void *run_role(void *arg)
{
	role_arg_t *a = arg;
	stress_t *c = a->c;
	size_t nk = (c->n + CHUNK - 1) / CHUNK;
	for (size_t k = 0; k < nk; k++) {
		size_t hi = (k + 1) * CHUNK < c->n ? (k + 1) * CHUNK : c->n;
		act(a, k * CHUNK, hi, k, nk);
		pthread_barrier_wait(&c->step);
	}
	if (a->role == 5) /* the synthetic clock runs out: all remaining expire */
		act_timer(c, INT64_MAX);
	return NULL;
}

static void stress_setup(stress_t *c, size_t n, uint64_t seed)
{
	memset(c, 0, sizeof(*c));
	c->n = n;
	c->t = kreq__table_new(0, kreq__future_extra_offset() + offsetof(rec_t, id));
	c->w = kreq__wheel_new(0);
	c->fs = calloc(n, sizeof(*c->fs));
	ck_assert(c->t && c->w && c->fs);
	ck_assert_int_eq(pthread_barrier_init(&c->step, NULL, STRESS_THREADS), 0);
	for (size_t i = 0; i < n; i++) {
		uint64_t h = rnd(&seed);
		kreq_future_t *f =
		    kreq__future_new(sizeof(rec_t), h & 1 ? &stress_owner_hooked : &stress_owner);
		ck_assert_ptr_nonnull(f);
		rec_t *r = rec_of(f);
		for (int k = 0; k < 16; k += 8) {
			uint64_t v = rnd(&seed);
			memcpy(r->id + k, &v, 8);
		}
		r->ctx = c;
		r->hooked = h & 1;
		r->cb_early = h & 2;
		if (r->cb_early)
			ck_assert_int_eq(kreq_future_on_done(f, stress_cb, r), KREQ_OK);
		c->fs[i] = f;
		ck_assert_int_eq(kreq__table_insert(c->t, r->id, kreq_future_retain(f)), KREQ_OK);
		/* due while its chunk or the next is being worked on */
		kreq__wheel_arm(c->w, &r->tn, (int64_t)(i + rnd(&seed) % (2 * CHUNK)));
		kreq_future_retain(f); /* the wheel's reference */
	}
}

static void stress_check_and_free(stress_t *c, int outcomes[static 9])
{
	ck_assert_int_eq(ld_int(&c->bad), 0);
	ck_assert_uint_eq(kreq__table_count(c->t), 0);
	ck_assert_uint_eq(kreq__wheel_count(c->w), 0);
	for (size_t i = 0; i < c->n; i++) {
		kreq_future_t *f = c->fs[i];
		rec_t *r = rec_of(f);
		if (!kreq_future_is_done(f) || atomic_load(&r->wins) != 1 ||
		    atomic_load(&r->cb_runs) != 1 ||
		    kreq_future_err(f) != atomic_load(&r->winner_err) || r->tn.next != NULL)
			ck_abort_msg("future %zu (hooked %d): done %d, settled %d times, callback "
			             "ran %d times, err %d (winner %d), timer armed %d",
			             i, r->hooked, kreq_future_is_done(f), atomic_load(&r->wins),
			             atomic_load(&r->cb_runs), kreq_future_err(f),
			             atomic_load(&r->winner_err), r->tn.next != NULL);
		int e = -kreq_future_err(f);
		if (e >= 0 && e < 9)
			outcomes[e]++;
	}
	ck_assert_uint_eq(ld_size(&c->settled), c->n);
	for (size_t i = 0; i < c->n; i++)
		kreq_future_release(c->fs[i]);
	ck_assert_int_eq(ld_int(&c->fini), (int)c->n);
	pthread_barrier_destroy(&c->step);
	kreq__table_destroy(c->t);
	kreq__wheel_destroy(c->w);
	free(c->fs);
}

START_TEST(test_stress_exactly_once)
{
	size_t n = RUNNING_ON_VALGRIND ? 640 : 4000;
	int rounds = RUNNING_ON_VALGRIND ? 1 : 4;
	int outcomes[9] = {0}; /* by -err */
	for (int round = 0; round < rounds; round++) {
		stress_t c;
		stress_setup(&c, n, (uint64_t)round * 7919 + 1);
		pthread_t th[STRESS_THREADS];
		role_arg_t args[STRESS_THREADS];
		for (int i = 0; i < STRESS_THREADS; i++) {
			args[i] = (role_arg_t){&c, i, (uint64_t)(round * 100 + i)};
			ck_assert_int_eq(pthread_create(&th[i], NULL, run_role, &args[i]), 0);
		}
		for (int i = 0; i < STRESS_THREADS; i++)
			pthread_join(th[i], NULL);
		stress_check_and_free(&c, outcomes);
	}
	/* every path really raced: each outcome won some of the time */
	const int kinds[] = {KREQ_OK, KREQ_ETIMEDOUT, KREQ_ECANCELED, KREQ_EUNAVAILABLE,
	                     KREQ_ECLOSED};
	for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++)
		ck_assert_msg(outcomes[-kinds[k]] > 0, "no future settled with %s",
		              kreq_err_name(kinds[k]));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("future");
	TCase *tc = tcase_create("api");
	tcase_add_test(tc, test_pending_accessors);
	tcase_add_test(tc, test_null_arguments);
	tcase_add_test(tc, test_settle_reply);
	tcase_add_test(tc, test_settle_error_and_messages);
	tcase_add_test(tc, test_callback_before_settle);
	tcase_add_test(tc, test_callback_after_settle);
	tcase_add_test(tc, test_callback_register_race);
	tcase_add_test(tc, test_cancel_without_hook);
	tcase_add_test(tc, test_cancel_with_hook);
	tcase_add_test(tc, test_refcount_and_fini);
	suite_add_tcase(s, tc);
	TCase *tw = tcase_create("wait");
	tcase_add_test(tw, test_wait_timeout_and_wake);
	tcase_add_test(tw, test_many_waiters);
	tcase_add_test(tw, test_wait_all);
	tcase_add_test(tw, test_wait_any);
	tcase_add_test(tw, test_wait_any_concurrent);
	suite_add_tcase(s, tw);
	TCase *ts = tcase_create("stress");
	tcase_set_timeout(ts, 120);
	tcase_add_test(ts, test_stress_exactly_once);
	suite_add_tcase(s, ts);
	return kreq_test_run_suite(s);
}
