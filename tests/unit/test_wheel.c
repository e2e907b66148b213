/*
 * test_wheel.c — the timing wheel: arm/cancel/count, random deadlines fire
 * in order and never early or late, cancel prevents firing, past and equal
 * deadlines, batches limited by max, very large jumps of now (and deadlines
 * beyond the top level), next_expiry, and concurrent arm/cancel/expire.
 */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

#include "client/wheel.h"
#include "testsupport.h"

#define SEC  INT64_C(1000)
#define HOUR (3600 * SEC)
#define DAY  (24 * HOUR)

typedef kreq__timer_node_t node_t;

/* ck_assert_* reports its location to the runner on every call (a write in
 * fork mode); in hot loops use this, free when true. */
#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond))                                                                       \
			ck_abort_msg("%s:%d: check failed: %s", __FILE__, __LINE__, #cond);        \
	} while (0)

static int ld_int(_Atomic int *p)
{
	return atomic_load(p);
}

static uint64_t rnd(uint64_t *s)
{
	uint64_t z = (*s += UINT64_C(0x9E3779B97F4A7C15));
	z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

/* Expires everything due at now, in batches of max; returns the count and
 * appends the nodes to out (if not NULL). */
static size_t expire_all(kreq__wheel_t *w, int64_t now, node_t **out, size_t max)
{
	node_t *buf[512];
	size_t total = 0, n;
	ck_assert_uint_le(max, 512);
	do {
		n = kreq__wheel_expire(w, now, buf, max);
		CHECK(n <= max);
		if (out != NULL)
			memcpy(out + total, buf, n * sizeof(node_t *));
		total += n;
	} while (n == max);
	return total;
}

START_TEST(test_arm_cancel_expire)
{
	kreq__wheel_t *w = kreq__wheel_new(1000);
	ck_assert_ptr_nonnull(w);
	node_t a = {0}, b = {0}, c = {0}, never = {0};
	node_t *out[4];
	ck_assert_int_eq(kreq__wheel_next_expiry(w), INT64_MAX);
	kreq__wheel_arm(w, &a, 1010);
	kreq__wheel_arm(w, &b, 1020);
	kreq__wheel_arm(w, &c, 1030);
	ck_assert_ptr_nonnull(a.next);
	ck_assert_uint_eq(kreq__wheel_count(w), 3);
	ck_assert_int_eq(kreq__wheel_next_expiry(w), 1010);
	ck_assert(kreq__wheel_cancel(w, &b));
	ck_assert_ptr_null(b.next);
	ck_assert(!kreq__wheel_cancel(w, &b));
	ck_assert(!kreq__wheel_cancel(w, &never));
	ck_assert_uint_eq(kreq__wheel_count(w), 2);
	ck_assert_uint_eq(kreq__wheel_expire(w, 1009, out, 4), 0);
	ck_assert_uint_eq(kreq__wheel_expire(w, 1010, out, 4), 1);
	ck_assert_ptr_eq(out[0], &a);
	ck_assert_ptr_null(a.next);
	ck_assert(!kreq__wheel_cancel(w, &a)); /* already expired */
	ck_assert_int_eq(kreq__wheel_next_expiry(w), 1030);
	ck_assert_uint_eq(kreq__wheel_expire(w, 5000, out, 4), 1);
	ck_assert_ptr_eq(out[0], &c);
	ck_assert_uint_eq(kreq__wheel_count(w), 0);
	ck_assert_int_eq(kreq__wheel_next_expiry(w), INT64_MAX);
	ck_assert_uint_eq(kreq__wheel_expire(w, 9000, out, 4), 0);
	kreq__wheel_destroy(w);
	kreq__wheel_destroy(NULL);
}
END_TEST

START_TEST(test_rearm_moves)
{
	kreq__wheel_t *w = kreq__wheel_new(0);
	node_t a = {0};
	node_t *out[2];
	kreq__wheel_arm(w, &a, 10);
	kreq__wheel_arm(w, &a, 500); /* armed again: moved, counted once */
	ck_assert_uint_eq(kreq__wheel_count(w), 1);
	ck_assert_int_eq(kreq__wheel_next_expiry(w), 500);
	ck_assert_uint_eq(kreq__wheel_expire(w, 499, out, 2), 0);
	ck_assert_uint_eq(kreq__wheel_expire(w, 500, out, 2), 1);
	kreq__wheel_destroy(w);
}
END_TEST

START_TEST(test_past_deadlines)
{
	kreq__wheel_t *w = kreq__wheel_new(1000);
	node_t a = {0}, b = {0}, c = {0}, d = {0};
	node_t *out[4];
	/* behind the clock of a fresh wheel: fires at the next expire, whatever
	 * its now */
	kreq__wheel_arm(w, &a, 10);
	ck_assert_int_le(kreq__wheel_next_expiry(w), 1000);
	ck_assert_uint_eq(kreq__wheel_expire(w, 500, out, 4), 1);
	ck_assert_ptr_eq(out[0], &a);
	ck_assert_uint_eq(kreq__wheel_expire(w, 1000, out, 4), 0);
	/* at or before a now already processed */
	kreq__wheel_arm(w, &b, 1000);
	kreq__wheel_arm(w, &c, 999);
	kreq__wheel_arm(w, &d, 1001);
	ck_assert_int_le(kreq__wheel_next_expiry(w), 1000);
	ck_assert_uint_eq(kreq__wheel_expire(w, 1000, out, 4), 2);
	ck_assert((out[0] == &b && out[1] == &c) || (out[0] == &c && out[1] == &b));
	ck_assert_int_eq(kreq__wheel_next_expiry(w), 1001);
	ck_assert_uint_eq(kreq__wheel_expire(w, 1000, out, 4), 0);
	ck_assert_uint_eq(kreq__wheel_expire(w, 1001, out, 4), 1);
	ck_assert_ptr_eq(out[0], &d);
	/* a cancelled past node does not fire */
	kreq__wheel_arm(w, &a, 3);
	ck_assert(kreq__wheel_cancel(w, &a));
	ck_assert_uint_eq(kreq__wheel_expire(w, 1001, out, 4), 0);
	ck_assert_uint_eq(kreq__wheel_count(w), 0);
	kreq__wheel_destroy(w);
}
END_TEST

START_TEST(test_equal_deadlines_and_batches)
{
	const size_t n = 1000;
	node_t *nodes = calloc(2 * n, sizeof(node_t));
	node_t **out = calloc(2 * n, sizeof(node_t *));
	uint8_t *seen = calloc(2 * n, 1);
	kreq__wheel_t *w = kreq__wheel_new(100000);
	for (size_t i = 0; i < n; i++) {
		kreq__wheel_arm(w, &nodes[i], 100005);     /* level 0 */
		kreq__wheel_arm(w, &nodes[n + i], 100700); /* level 1: cascades */
	}
	ck_assert_uint_eq(kreq__wheel_count(w), 2 * n);
	ck_assert_uint_eq(kreq__wheel_expire(w, 100004, out, 64), 0);
	ck_assert_uint_eq(kreq__wheel_expire(w, 100005, out, 64), 64); /* max reached */
	ck_assert_uint_eq(expire_all(w, 100005, out + 64, 64), n - 64);
	ck_assert_int_eq(kreq__wheel_next_expiry(w), 100700);
	ck_assert_uint_eq(expire_all(w, 100699, NULL, 64), 0);
	ck_assert_uint_eq(expire_all(w, 100700, out + n, 30), n);
	for (size_t i = 0; i < 2 * n; i++) {
		size_t k = (size_t)(out[i] - nodes);
		CHECK(k < 2 * n);
		CHECK(seen[k]++ == 0);
		CHECK(out[i]->expires_ms == (i < n ? 100005 : 100700));
	}
	ck_assert_uint_eq(kreq__wheel_count(w), 0);
	kreq__wheel_destroy(w);
	free(nodes);
	free(out);
	free(seen);
}
END_TEST

/* ---- random deadlines over every level --------------------------------- */

typedef struct order {
	int64_t *sorted; /* deadlines of live (armed, not cancelled) nodes */
	size_t n, next;  /* next: first not yet fired */
} order_t;

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

static int64_t random_deadline(uint64_t *seed, int64_t now)
{
	static const int64_t spans[] = {300, 70 * SEC, 5 * HOUR, 10 * DAY};
	int64_t span = spans[rnd(seed) % 4];
	return now + (int64_t)(rnd(seed) % (uint64_t)span);
}

static int64_t random_step(uint64_t *seed)
{
	static const int64_t steps[] = {1, 50, 5 * SEC, HOUR, DAY};
	return 1 + (int64_t)(rnd(seed) % (uint64_t)steps[rnd(seed) % 5]);
}

START_TEST(test_random_order_never_early_never_late)
{
	size_t n = RUNNING_ON_VALGRIND ? 3000 : 30000;
	uint64_t seed = 2024;
	int64_t now = 7 * DAY;
	kreq__wheel_t *w = kreq__wheel_new(now);
	node_t *nodes = calloc(n, sizeof(node_t));
	uint8_t *fired = calloc(n, 1);
	order_t o = {calloc(n, sizeof(int64_t)), 0, 0};
	for (size_t i = 0; i < n; i++)
		kreq__wheel_arm(w, &nodes[i], random_deadline(&seed, now));
	for (size_t i = 0; i < n; i++) /* cancel one in ten */
		if (rnd(&seed) % 10 == 0)
			CHECK(kreq__wheel_cancel(w, &nodes[i]));
		else
			o.sorted[o.n++] = nodes[i].expires_ms;
	qsort(o.sorted, o.n, sizeof(int64_t), cmp_i64);
	ck_assert_uint_eq(kreq__wheel_count(w), o.n);
	node_t **out = calloc(n, sizeof(node_t *));
	int64_t last = INT64_MIN;
	while (o.next < o.n) {
		ck_assert_int_eq(kreq__wheel_next_expiry(w), o.sorted[o.next]); /* exact */
		now += random_step(&seed);
		size_t got = expire_all(w, now, out, 1 + rnd(&seed) % 256);
		for (size_t k = 0; k < got; k++) {
			size_t i = (size_t)(out[k] - nodes);
			CHECK(fired[i]++ == 0);
			CHECK(out[k]->expires_ms <= now);  /* never early */
			CHECK(out[k]->expires_ms >= last); /* in order */
			last = out[k]->expires_ms;
		}
		size_t due = o.next;
		while (due < o.n && o.sorted[due] <= now)
			due++;
		ck_assert_uint_eq(got, due - o.next); /* never late */
		o.next = due;
		ck_assert_uint_eq(kreq__wheel_count(w), o.n - o.next);
	}
	ck_assert_int_eq(kreq__wheel_next_expiry(w), INT64_MAX);
	kreq__wheel_destroy(w);
	free(nodes);
	free(fired);
	free(out);
	free(o.sorted);
}
END_TEST

/* Arms and cancels interleaved with expiry, checked against a model. */
START_TEST(test_interleaved_against_model)
{
	const size_t n = 2000;
	uint64_t seed = 5;
	int64_t now = 123456;
	kreq__wheel_t *w = kreq__wheel_new(now);
	node_t *nodes = calloc(n, sizeof(node_t));
	node_t *out[64];
	size_t steps = RUNNING_ON_VALGRIND ? 5000 : 50000;
	size_t armed = 0;
	for (size_t step = 0; step < steps; step++) {
		node_t *x = &nodes[rnd(&seed) % n];
		switch (rnd(&seed) % 4) {
		case 0:
		case 1:
			if (x->next == NULL) {
				kreq__wheel_arm(w, x, now - 5 + (int64_t)(rnd(&seed) % 70000));
				armed++;
			}
			break;
		case 2: {
			bool was_armed = x->next != NULL;
			CHECK(kreq__wheel_cancel(w, x) == was_armed);
			CHECK(x->next == NULL);
			break;
		}
		default: {
			now += (int64_t)(rnd(&seed) % 2000);
			size_t got;
			do {
				got = kreq__wheel_expire(w, now, out, 64);
				for (size_t k = 0; k < got; k++)
					CHECK(out[k]->expires_ms <= now);
			} while (got == 64);
			int64_t min = INT64_MAX;
			for (size_t i = 0; i < n; i++) {
				if (nodes[i].next == NULL)
					continue;
				CHECK(nodes[i].expires_ms > now); /* never late */
				if (nodes[i].expires_ms < min)
					min = nodes[i].expires_ms;
			}
			CHECK(kreq__wheel_next_expiry(w) == min);
		}
		}
		if (step % 97 == 0) {
			size_t live = 0;
			for (size_t i = 0; i < n; i++)
				live += nodes[i].next != NULL;
			CHECK(kreq__wheel_count(w) == live);
		}
	}
	ck_assert_uint_gt(armed, 0);
	kreq__wheel_destroy(w);
	free(nodes);
}
END_TEST

START_TEST(test_large_jumps_and_far_deadlines)
{
	const int64_t t0 = 5000;
	kreq__wheel_t *w = kreq__wheel_new(t0);
	node_t a = {0}, b = {0}, c = {0}, d = {0}, e = {0};
	node_t *out[8];
	kreq__wheel_arm(w, &d, t0 + 100 * DAY); /* beyond 2^32 ms: clamped */
	kreq__wheel_arm(w, &c, t0 + 30 * DAY);
	kreq__wheel_arm(w, &b, t0 + HOUR);
	kreq__wheel_arm(w, &a, t0 + 1);
	kreq__wheel_arm(w, &e, INT64_MAX);
	ck_assert_int_eq(kreq__wheel_next_expiry(w), t0 + 1);
	/* one call jumps 40 days: the three due fire, in order */
	ck_assert_uint_eq(kreq__wheel_expire(w, t0 + 40 * DAY, out, 8), 3);
	ck_assert_ptr_eq(out[0], &a);
	ck_assert_ptr_eq(out[1], &b);
	ck_assert_ptr_eq(out[2], &c);
	ck_assert_uint_eq(kreq__wheel_count(w), 2);
	/* next expiry of a clamped node: a lower bound, never later than it */
	int64_t next = kreq__wheel_next_expiry(w);
	ck_assert_int_gt(next, t0 + 40 * DAY);
	ck_assert_int_le(next, t0 + 100 * DAY);
	ck_assert_uint_eq(kreq__wheel_expire(w, t0 + 100 * DAY - 1, out, 8), 0);
	ck_assert_int_eq(kreq__wheel_next_expiry(w), t0 + 100 * DAY);
	ck_assert_uint_eq(kreq__wheel_expire(w, t0 + 100 * DAY, out, 8), 1);
	ck_assert_ptr_eq(out[0], &d);
	/* INT64_MAX never fires within any realistic clock */
	ck_assert_uint_eq(kreq__wheel_expire(w, t0 + 20000 * DAY, out, 8), 0);
	ck_assert_int_gt(kreq__wheel_next_expiry(w), t0 + 20000 * DAY);
	ck_assert_uint_eq(kreq__wheel_count(w), 1);
	ck_assert_uint_eq(kreq__wheel_expire(w, INT64_MAX, out, 8), 0); /* "never" */
	ck_assert_int_ge(kreq__wheel_next_expiry(w), INT64_MAX - 1);
	ck_assert(kreq__wheel_cancel(w, &e));
	ck_assert_int_eq(kreq__wheel_next_expiry(w), INT64_MAX);
	kreq__wheel_destroy(w);
}
END_TEST

/* Many sparse timers and many jumps: every one fires once, at its time. */
START_TEST(test_sparse_jumps)
{
	const size_t n = 1000;
	uint64_t seed = 77;
	int64_t now = 1;
	kreq__wheel_t *w = kreq__wheel_new(now);
	node_t *nodes = calloc(n, sizeof(node_t));
	for (size_t i = 0; i < n; i++)
		kreq__wheel_arm(w, &nodes[i], now + (int64_t)(rnd(&seed) % (uint64_t)(60 * DAY)));
	size_t fired = 0;
	while (now <= 61 * DAY) {
		now += (int64_t)(rnd(&seed) % (uint64_t)(2 * HOUR));
		fired += expire_all(w, now, NULL, 16);
		size_t due = 0;
		int64_t min = INT64_MAX;
		for (size_t i = 0; i < n; i++) {
			due += nodes[i].expires_ms <= now;
			if (nodes[i].expires_ms > now && nodes[i].expires_ms < min)
				min = nodes[i].expires_ms;
			CHECK((nodes[i].next == NULL) == (nodes[i].expires_ms <= now));
		}
		CHECK(fired == due); /* none early, none late */
		/* exact, or a lower bound while clamped nodes (> 2^32 ms) remain */
		int64_t next = kreq__wheel_next_expiry(w);
		CHECK(next > now && next <= min);
	}
	ck_assert_uint_eq(fired, n);
	ck_assert_uint_eq(kreq__wheel_count(w), 0);
	kreq__wheel_destroy(w);
	free(nodes);
}
END_TEST

START_TEST(test_next_expiry_tracks_changes)
{
	kreq__wheel_t *w = kreq__wheel_new(0);
	node_t a = {0}, b = {0}, c = {0}, d = {0};
	node_t *out[4];
	kreq__wheel_arm(w, &a, 400); /* level 1: exact by scanning its slot */
	ck_assert_int_eq(kreq__wheel_next_expiry(w), 400);
	kreq__wheel_arm(w, &b, 300);
	ck_assert_int_eq(kreq__wheel_next_expiry(w), 300);
	ck_assert(kreq__wheel_cancel(w, &b));
	ck_assert_int_eq(kreq__wheel_next_expiry(w), 400);
	kreq__wheel_arm(w, &c, 5);
	ck_assert_int_eq(kreq__wheel_next_expiry(w), 5);
	ck_assert_uint_eq(kreq__wheel_expire(w, 5, out, 4), 1);
	ck_assert_int_eq(kreq__wheel_next_expiry(w), 400);
	kreq__wheel_arm(w, &d, 400);
	ck_assert(kreq__wheel_cancel(w, &a));
	ck_assert_int_eq(kreq__wheel_next_expiry(w), 400);
	ck_assert(kreq__wheel_cancel(w, &d));
	ck_assert_int_eq(kreq__wheel_next_expiry(w), INT64_MAX);
	kreq__wheel_arm(w, &a, 70000); /* level 2 */
	kreq__wheel_arm(w, &b, 66000);
	ck_assert_int_eq(kreq__wheel_next_expiry(w), 66000);
	ck_assert_uint_eq(kreq__wheel_expire(w, 65999, out, 4), 0);
	ck_assert_int_eq(kreq__wheel_next_expiry(w), 66000);
	ck_assert_uint_eq(kreq__wheel_expire(w, 69999, out, 4), 1);
	ck_assert_ptr_eq(out[0], &b);
	ck_assert_int_eq(kreq__wheel_next_expiry(w), 70000);
	ck_assert(kreq__wheel_cancel(w, &a));
	kreq__wheel_destroy(w);
}
END_TEST

/* ---- concurrency -------------------------------------------------------- */

#define ARMERS 4

typedef struct conc {
	kreq__wheel_t *w;
	node_t *nodes;
	_Atomic uint8_t *popped;
	_Atomic uint8_t *cancelled;
	size_t per;
	_Atomic bool stop;
	_Atomic int early;
} conc_t;

typedef struct carg {
	conc_t *c;
	size_t me;
} carg_t;

static void *armer(void *arg)
{
	carg_t *a = arg;
	conc_t *c = a->c;
	uint64_t seed = a->me + 1;
	size_t base = a->me * c->per;
	for (size_t i = 0; i < c->per; i++) {
		kreq__wheel_arm(c->w, &c->nodes[base + i],
		                kreq_test_now_ms() + (int64_t)(rnd(&seed) % 20));
		size_t j = base + rnd(&seed) % (i + 1);
		if (kreq__wheel_cancel(c->w, &c->nodes[j]))
			atomic_fetch_add(&c->cancelled[j], 1);
	}
	return NULL;
}

static void *expirer(void *arg)
{
	conc_t *c = arg;
	node_t *out[32];
	while (!atomic_load(&c->stop)) {
		int64_t now = kreq_test_now_ms();
		size_t n = kreq__wheel_expire(c->w, now, out, 32);
		for (size_t k = 0; k < n; k++) {
			if (out[k]->expires_ms > now)
				atomic_fetch_add(&c->early, 1);
			atomic_fetch_add(&c->popped[out[k] - c->nodes], 1);
		}
	}
	return NULL;
}

START_TEST(test_concurrent_arm_cancel_expire)
{
	conc_t c = {.per = RUNNING_ON_VALGRIND ? 2000 : 20000};
	size_t n = c.per * ARMERS;
	c.w = kreq__wheel_new(kreq_test_now_ms());
	c.nodes = calloc(n, sizeof(node_t));
	c.popped = calloc(n, 1);
	c.cancelled = calloc(n, 1);
	pthread_t ex, th[ARMERS];
	carg_t args[ARMERS];
	pthread_create(&ex, NULL, expirer, &c);
	for (size_t i = 0; i < ARMERS; i++) {
		args[i] = (carg_t){&c, i};
		pthread_create(&th[i], NULL, armer, &args[i]);
	}
	for (size_t i = 0; i < ARMERS; i++)
		pthread_join(th[i], NULL);
	KREQ_TEST_AWAIT(kreq__wheel_count(c.w) == 0, 10000);
	atomic_store(&c.stop, true);
	pthread_join(ex, NULL);
	ck_assert_int_eq(ld_int(&c.early), 0);
	for (size_t i = 0; i < n; i++) {
		CHECK(atomic_load(&c.popped[i]) + atomic_load(&c.cancelled[i]) == 1);
		CHECK(c.nodes[i].next == NULL);
	}
	kreq__wheel_destroy(c.w);
	free(c.nodes);
	free((void *)c.popped);
	free((void *)c.cancelled);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("wheel");
	TCase *tb = tcase_create("basic");
	tcase_add_test(tb, test_arm_cancel_expire);
	tcase_add_test(tb, test_rearm_moves);
	tcase_add_test(tb, test_past_deadlines);
	tcase_add_test(tb, test_equal_deadlines_and_batches);
	tcase_add_test(tb, test_next_expiry_tracks_changes);
	suite_add_tcase(s, tb);
	TCase *to = tcase_create("order");
	tcase_set_timeout(to, 120);
	tcase_add_test(to, test_random_order_never_early_never_late);
	tcase_add_test(to, test_interleaved_against_model);
	tcase_add_test(to, test_large_jumps_and_far_deadlines);
	tcase_add_test(to, test_sparse_jumps);
	suite_add_tcase(s, to);
	TCase *tc = tcase_create("concurrency");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_concurrent_arm_cancel_expire);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
