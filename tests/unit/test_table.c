/*
 * test_table.c — the pending-call table: basic contract, one million live
 * entries, churn against a reference model (backward-shift deletion),
 * structured ids, foreach/drain, and concurrent use from several threads.
 * Ids built to collide (kreq__table_test_id) drive the probe counts through
 * full clusters, wrap-around at the end of a shard and saturation, with the
 * table's invariants checked (kreq__table_check) after every operation.
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

#include "client/table.h"
#include "kreq/error.h"
#include "testsupport.h"

/* ck_assert_* reports its location to the runner on every call (a write in
 * fork mode); in loops over a million entries use this, free when true. */
#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond))                                                                       \
			ck_abort_msg("%s:%d: check failed: %s", __FILE__, __LINE__, #cond);        \
	} while (0)

typedef struct id {
	uint8_t b[16];
} cid_t;

static int ld_int(_Atomic int *p)
{
	return atomic_load(p);
}

static size_t ld_size(_Atomic size_t *p)
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

/* n distinct random ids (distinct with overwhelming probability; checked by
 * the inserts). */
static cid_t *random_ids(size_t n, uint64_t seed)
{
	cid_t *ids = malloc(n * sizeof(cid_t));
	ck_assert_ptr_nonnull(ids);
	for (size_t i = 0; i < n; i++) {
		uint64_t a = rnd(&seed), b = rnd(&seed);
		memcpy(ids[i].b, &a, 8);
		memcpy(ids[i].b + 8, &b, 8);
	}
	return ids;
}

/* Structured ids: a counter in one byte position, the rest constant. */
static cid_t *counter_ids(size_t n, int pos)
{
	cid_t *ids = calloc(n, sizeof(cid_t));
	ck_assert_ptr_nonnull(ids);
	for (size_t i = 0; i < n; i++) {
		uint32_t v = (uint32_t)i;
		memcpy(ids[i].b + pos, &v, 4);
	}
	return ids;
}

/* The value stored for ids[i]: the table reads a value's id from it (key
 * offset 0), so it is the id itself. */
#define val(i) ((void *)&ids[(i)])

/* Fails the test with the table's description of a broken invariant. */
static void check_table(kreq__table_t *t)
{
	char err[256] = "";
	int rc = kreq__table_check(t, err, sizeof(err));
	if (rc != KREQ_OK)
		ck_abort_msg("table invariant: %s (%d)", err, rc);
}

/* An id of `shard` whose home slot is `slot` while the shard has 16 slots
 * (its slots 2*slot, 2*slot+1 at 32, and so on); `low` fills the lower
 * hash bits, `salt` tells ids with the same hash apart. */
static cid_t colliding_id(unsigned shard, unsigned slot, uint64_t low, uint64_t salt)
{
	cid_t id;
	uint64_t h = ((uint64_t)shard << 58) | ((uint64_t)(slot & 15) << 54) |
	             (low & ((UINT64_C(1) << 54) - 1));
	kreq__table_test_id(h, salt, id.b);
	return id;
}

START_TEST(test_basic_contract)
{
	kreq__table_t *t = kreq__table_new(0, 0);
	ck_assert_ptr_nonnull(t);
	cid_t *ids = random_ids(3, 1);
	ck_assert_uint_eq(kreq__table_count(t), 0);
	ck_assert_ptr_null(kreq__table_find(t, ids[0].b));
	ck_assert_ptr_null(kreq__table_remove(t, ids[0].b));
	ck_assert_int_eq(kreq__table_insert(t, ids[0].b, NULL), KREQ_EINVAL);
	ck_assert_int_eq(kreq__table_insert(t, ids[0].b, val(0)), KREQ_OK);
	cid_t dup = ids[0]; /* another value holding the same id */
	ck_assert_int_eq(kreq__table_insert(t, ids[0].b, &dup), KREQ_EEXIST);
	ck_assert_int_eq(kreq__table_insert(t, ids[2].b, val(1)), KREQ_EINVAL); /* not its id */
	ck_assert_ptr_eq(kreq__table_find(t, ids[0].b), val(0));                /* unchanged */
	ck_assert_int_eq(kreq__table_insert(t, ids[1].b, val(1)), KREQ_OK);
	ck_assert_uint_eq(kreq__table_count(t), 2);
	ck_assert_ptr_null(kreq__table_find(t, ids[2].b));
	ck_assert_ptr_eq(kreq__table_remove(t, ids[0].b), val(0));
	ck_assert_ptr_null(kreq__table_remove(t, ids[0].b)); /* exactly one remover */
	ck_assert_ptr_null(kreq__table_find(t, ids[0].b));
	ck_assert_ptr_eq(kreq__table_find(t, ids[1].b), val(1));
	ck_assert_uint_eq(kreq__table_count(t), 1);
	kreq__table_destroy(t);
	kreq__table_destroy(NULL);
	free(ids);
}
END_TEST

static _Atomic size_t retained;

static void count_retain(void *v)
{
	(void)v;
	atomic_fetch_add(&retained, 1);
}

/* Insert all, find all (and find_retain), remove all, with counts. */
static void exercise(kreq__table_t *t, const cid_t *ids, size_t n)
{
	for (size_t i = 0; i < n; i++)
		CHECK(kreq__table_insert(t, ids[i].b, val(i)) == KREQ_OK);
	ck_assert_uint_eq(kreq__table_count(t), n);
	atomic_store(&retained, 0);
	for (size_t i = 0; i < n; i++) {
		CHECK(kreq__table_find(t, ids[i].b) == val(i));
		CHECK(kreq__table_find_retain(t, ids[i].b, count_retain) == val(i));
	}
	ck_assert_uint_eq(ld_size(&retained), n);
	for (size_t i = 0; i < n; i += 2)
		CHECK(kreq__table_remove(t, ids[i].b) == val(i));
	ck_assert_uint_eq(kreq__table_count(t), n / 2);
	for (size_t i = 0; i < n; i++)
		CHECK(kreq__table_find(t, ids[i].b) == (i % 2 ? val(i) : NULL));
	ck_assert_ptr_null(kreq__table_find_retain(t, ids[0].b, count_retain));
	ck_assert_uint_eq(ld_size(&retained), n);
	for (size_t i = 1; i < n; i += 2)
		CHECK(kreq__table_remove(t, ids[i].b) == val(i));
	ck_assert_uint_eq(kreq__table_count(t), 0);
	for (size_t i = 0; i < n; i += 97)
		CHECK(kreq__table_find(t, ids[i].b) == NULL);
}

START_TEST(test_one_million)
{
	size_t n = RUNNING_ON_VALGRIND ? 100000 : 1000000;
	cid_t *ids = random_ids(n, 42);
	kreq__table_t *t = kreq__table_new(0, 0); /* grows all the way */
	ck_assert_ptr_nonnull(t);
	exercise(t, ids, n);
	exercise(t, ids, n); /* reusable after emptying */
	kreq__table_destroy(t);
	t = kreq__table_new(n, 0); /* presized */
	ck_assert_ptr_nonnull(t);
	exercise(t, ids, n);
	kreq__table_destroy(t);
	free(ids);
}
END_TEST

START_TEST(test_structured_ids)
{
	size_t n = RUNNING_ON_VALGRIND ? 20000 : 200000;
	for (int pos = 0; pos <= 12; pos += 4) {
		cid_t *ids = counter_ids(n, pos);
		kreq__table_t *t = kreq__table_new(16, 0);
		exercise(t, ids, n);
		kreq__table_destroy(t);
		free(ids);
	}
}
END_TEST

/* Random inserts/removes over a small pool, checked against a model after
 * every operation: exercises probe runs and backward-shift deletion. */
START_TEST(test_churn_against_model)
{
	const size_t pool = 3000;
	size_t ops = RUNNING_ON_VALGRIND ? 60000 : 400000;
	cid_t *ids = random_ids(pool, 7);
	bool *in = calloc(pool, sizeof(bool));
	kreq__table_t *t = kreq__table_new(0, 0);
	uint64_t seed = 99;
	size_t count = 0;
	for (size_t k = 0; k < ops; k++) {
		size_t i = rnd(&seed) % pool;
		if (rnd(&seed) % 2) {
			int rc = kreq__table_insert(t, ids[i].b, val(i));
			CHECK(rc == (in[i] ? KREQ_EEXIST : KREQ_OK));
			count += !in[i];
			in[i] = true;
		} else {
			CHECK(kreq__table_remove(t, ids[i].b) == (in[i] ? val(i) : NULL));
			count -= in[i];
			in[i] = false;
		}
		size_t j = rnd(&seed) % pool;
		CHECK(kreq__table_find(t, ids[j].b) == (in[j] ? val(j) : NULL));
	}
	ck_assert_uint_eq(kreq__table_count(t), count);
	for (size_t i = 0; i < pool; i++)
		CHECK(kreq__table_find(t, ids[i].b) == (in[i] ? val(i) : NULL));
	check_table(t);
	kreq__table_destroy(t);
	free(in);
	free(ids);
}
END_TEST

typedef struct seen {
	uint8_t *hits;
	size_t n;
	size_t calls;
	const cid_t *ids; /* the values: &ids[i] */
} seen_t;

static void mark(void *value, void *arg)
{
	seen_t *s = arg;
	size_t i = (size_t)((const cid_t *)value - s->ids);
	CHECK(i < s->n);
	s->hits[i]++;
	s->calls++;
}

START_TEST(test_foreach_and_drain)
{
	size_t n = 50000;
	cid_t *ids = random_ids(n, 3);
	kreq__table_t *t = kreq__table_new(1000, 0);
	for (size_t i = 0; i < n; i++)
		CHECK(kreq__table_insert(t, ids[i].b, val(i)) == KREQ_OK);
	seen_t s = {calloc(n, 1), n, 0, ids};
	kreq__table_foreach(t, mark, &s);
	ck_assert_uint_eq(s.calls, n);
	for (size_t i = 0; i < n; i++)
		CHECK(s.hits[i] == 1);
	ck_assert_uint_eq(kreq__table_count(t), n); /* foreach removes nothing */

	memset(s.hits, 0, n);
	s.calls = 0;
	ck_assert_uint_eq(kreq__table_drain(t, mark, &s), n);
	ck_assert_uint_eq(s.calls, n);
	for (size_t i = 0; i < n; i++)
		CHECK(s.hits[i] == 1);
	ck_assert_uint_eq(kreq__table_count(t), 0);
	ck_assert_ptr_null(kreq__table_find(t, ids[5].b));
	ck_assert_uint_eq(kreq__table_drain(t, mark, &s), 0);
	ck_assert_uint_eq(s.calls, n);
	s.calls = 0;
	kreq__table_foreach(t, mark, &s);
	ck_assert_uint_eq(s.calls, 0);

	/* usable after a drain */
	ck_assert_int_eq(kreq__table_insert(t, ids[5].b, val(5)), KREQ_OK);
	ck_assert_ptr_eq(kreq__table_find(t, ids[5].b), val(5));
	ck_assert_uint_eq(kreq__table_drain(t, NULL, NULL), 1);
	kreq__table_destroy(t);
	free(s.hits);
	free(ids);
}
END_TEST

/* ---- probe counts: colliding ids ---------------------------------------- */

START_TEST(test_test_id_hook)
{
	/* the hook's ids land where it says: same shard and home collide, and
	 * ids differing only in salt are still different entries */
	kreq__table_t *t = kreq__table_new(0, 0);
	cid_t a = colliding_id(3, 7, 1, 1), b = colliding_id(3, 7, 1, 2);
	ck_assert_int_ne(memcmp(a.b, b.b, 16), 0);
	ck_assert_int_eq(kreq__table_insert(t, a.b, (void *)&a), KREQ_OK);
	ck_assert_int_eq(kreq__table_insert(t, b.b, (void *)&b), KREQ_OK);
	ck_assert_ptr_eq(kreq__table_find(t, a.b), (void *)&a);
	ck_assert_ptr_eq(kreq__table_find(t, b.b), (void *)&b);
	check_table(t);
	ck_assert_ptr_eq(kreq__table_remove(t, a.b), (void *)&a);
	check_table(t);
	ck_assert_ptr_eq(kreq__table_find(t, b.b), (void *)&b);
	kreq__table_destroy(t);
}
END_TEST

/* Runs `ops` random inserts/removes over ids[0..n) against a model,
 * checking every result, a random find and the invariants after each
 * operation. */
static void churn_checked(kreq__table_t *t, const cid_t *ids, size_t n, size_t ops, uint64_t seed)
{
	bool *in = calloc(n, sizeof(bool));
	ck_assert_ptr_nonnull(in);
	size_t count = kreq__table_count(t);
	for (size_t i = 0; i < n; i++)
		in[i] = kreq__table_find(t, ids[i].b) != NULL;
	for (size_t k = 0; k < ops; k++) {
		size_t i = rnd(&seed) % n;
		if (rnd(&seed) % 2) {
			int rc = kreq__table_insert(t, ids[i].b, val(i));
			CHECK(rc == (in[i] ? KREQ_EEXIST : KREQ_OK));
			count += !in[i];
			in[i] = true;
		} else {
			CHECK(kreq__table_remove(t, ids[i].b) == (in[i] ? val(i) : NULL));
			count -= in[i];
			in[i] = false;
		}
		size_t j = rnd(&seed) % n;
		CHECK(kreq__table_find(t, ids[j].b) == (in[j] ? val(j) : NULL));
		CHECK(kreq__table_count(t) == count);
		check_table(t);
	}
	for (size_t i = 0; i < n; i++)
		CHECK(kreq__table_find(t, ids[i].b) == (in[i] ? val(i) : NULL));
	free(in);
}

/* Twelve ids homed in the last slots of a 16-slot shard fill it to its
 * limit in one run that wraps around the end (slots 13..15, 0..8): every
 * removal order of the run must keep the rest reachable. */
START_TEST(test_full_cluster_wraps)
{
	uint64_t seed = 5;
	for (int round = 0; round < 300; round++) {
		kreq__table_t *t = kreq__table_new(0, 0);
		cid_t ids[12];
		for (size_t i = 0; i < 12; i++) /* homes 13, 14, 15 and one at 0 */
			ids[i] = colliding_id(9, i == 11 ? 0 : 13 + (unsigned)(rnd(&seed) % 3),
			                      rnd(&seed), i);
		for (size_t i = 0; i < 12; i++) {
			CHECK(kreq__table_insert(t, ids[i].b, val(i)) == KREQ_OK);
			check_table(t);
		}
		/* remove in a random order, checking the others after each */
		size_t order[12];
		for (size_t i = 0; i < 12; i++)
			order[i] = i;
		for (size_t i = 11; i > 0; i--) {
			size_t j = rnd(&seed) % (i + 1), x = order[i];
			order[i] = order[j];
			order[j] = x;
		}
		for (size_t k = 0; k < 12; k++) {
			CHECK(kreq__table_remove(t, ids[order[k]].b) == val(order[k]));
			check_table(t);
			for (size_t m = 0; m < 12; m++) {
				bool gone = false;
				for (size_t r = 0; r <= k; r++)
					gone |= order[r] == m;
				CHECK(kreq__table_find(t, ids[m].b) == (gone ? NULL : val(m)));
			}
		}
		ck_assert_uint_eq(kreq__table_count(t), 0);
		churn_checked(t, ids, 12, 200, rnd(&seed));
		kreq__table_destroy(t);
	}
}
END_TEST

/* Random churn over pools of ids that pile into a few shards and a few
 * home slots near the end of the shard (wrap-around), mixed with random
 * ids, across growth from 16 slots up. */
START_TEST(test_churn_colliding_against_model)
{
	size_t ops = RUNNING_ON_VALGRIND ? 3000 : 20000;
	uint64_t seed = 17;
	for (int round = 0; round < 6; round++) {
		size_t n = 20 + rnd(&seed) % (round < 3 ? 40 : 400);
		unsigned homes = 1 + (unsigned)(rnd(&seed) % 4);
		cid_t *ids = malloc(n * sizeof(cid_t));
		ck_assert_ptr_nonnull(ids);
		for (size_t i = 0; i < n; i++) {
			unsigned shard = (unsigned)(rnd(&seed) % 2);
			if (rnd(&seed) % 4 == 0) /* a random home */
				ids[i] =
				    colliding_id(shard, (unsigned)(rnd(&seed) % 16), rnd(&seed), i);
			else /* homes at the end, the same at every capacity */
				ids[i] = colliding_id(shard, 15 - (unsigned)(rnd(&seed) % homes),
				                      UINT64_MAX, i);
		}
		kreq__table_t *t = kreq__table_new(0, 0);
		churn_checked(t, ids, n, ops, rnd(&seed));
		kreq__table_destroy(t);
		free(ids);
	}
}
END_TEST

/* More than 63 entries pass over the head of a cluster of ids with the same
 * hash: its probe counts saturate. Removal through saturated counts, and
 * reinsertion, must keep every entry reachable. */
START_TEST(test_saturated_counts)
{
	const size_t n = 150;
	uint64_t seed = 23;
	cid_t *ids = malloc(n * sizeof(cid_t));
	ck_assert_ptr_nonnull(ids);
	for (size_t i = 0; i < n; i++)
		ids[i] = colliding_id(4, 15, UINT64_MAX, i); /* all the same hash */
	kreq__table_t *t = kreq__table_new(0, 0);
	for (size_t i = 0; i < n; i++)
		CHECK(kreq__table_insert(t, ids[i].b, val(i)) == KREQ_OK);
	check_table(t);
	for (size_t i = 0; i < n; i++)
		CHECK(kreq__table_find(t, ids[i].b) == val(i));
	/* from the head of the run (saturated), then from the middle */
	CHECK(kreq__table_remove(t, ids[0].b) == val(0));
	check_table(t);
	CHECK(kreq__table_remove(t, ids[70].b) == val(70));
	check_table(t);
	CHECK(kreq__table_insert(t, ids[0].b, val(0)) == KREQ_OK);
	check_table(t);
	churn_checked(t, ids, n, RUNNING_ON_VALGRIND ? 1000 : 5000, rnd(&seed));
	for (size_t i = 0; i < n; i++) {
		kreq__table_remove(t, ids[i].b);
		if (i % 10 == 0)
			check_table(t);
	}
	ck_assert_uint_eq(kreq__table_count(t), 0);
	check_table(t);
	kreq__table_destroy(t);
	free(ids);
}
END_TEST

/* ---- concurrency -------------------------------------------------------- */

#define CTHREADS 4

typedef struct conc {
	kreq__table_t *t;
	cid_t *ids;
	size_t per; /* ids per thread */
	_Atomic size_t removed_by_others;
	_Atomic int bad;
} conc_t;

typedef struct carg {
	conc_t *c;
	size_t me;
} carg_t;

/* Each thread inserts its own ids, finds them, and races the others to
 * remove the ids of its neighbour: every id is removed exactly once. */
static void *conc_worker(void *arg)
{
	carg_t *a = arg;
	conc_t *c = a->c;
	cid_t *mine = c->ids + a->me * c->per;
	cid_t *next = c->ids + ((a->me + 1) % CTHREADS) * c->per;
	for (size_t i = 0; i < c->per; i++) {
		if (kreq__table_insert(c->t, mine[i].b, &mine[i]) != KREQ_OK)
			atomic_fetch_add(&c->bad, 1);
		void *v = kreq__table_find(c->t, mine[i].b);
		if (v != NULL && v != &mine[i])
			atomic_fetch_add(&c->bad, 1);
		void *r = kreq__table_remove(c->t, next[i].b);
		if (r != NULL) {
			if (r != &next[i])
				atomic_fetch_add(&c->bad, 1);
			atomic_fetch_add(&c->removed_by_others, 1);
		}
	}
	return NULL;
}

static void run_concurrent(conc_t *c)
{
	pthread_t th[CTHREADS];
	carg_t args[CTHREADS];
	for (size_t i = 0; i < CTHREADS; i++) {
		args[i] = (carg_t){c, i};
		pthread_create(&th[i], NULL, conc_worker, &args[i]);
	}
	for (size_t i = 0; i < CTHREADS; i++)
		pthread_join(th[i], NULL);
	ck_assert_int_eq(ld_int(&c->bad), 0);
	size_t left = kreq__table_count(c->t);
	ck_assert_uint_eq(left + ld_size(&c->removed_by_others), c->per * CTHREADS);
	size_t found = 0;
	check_table(c->t);
	for (size_t i = 0; i < c->per * CTHREADS; i++)
		found += kreq__table_remove(c->t, c->ids[i].b) == &c->ids[i];
	ck_assert_uint_eq(found, left);
	ck_assert_uint_eq(kreq__table_count(c->t), 0);
	check_table(c->t);
	kreq__table_destroy(c->t);
	free(c->ids);
}

START_TEST(test_concurrent_use)
{
	conc_t c = {.per = RUNNING_ON_VALGRIND ? 5000 : 50000};
	c.t = kreq__table_new(0, 0);
	c.ids = random_ids(c.per * CTHREADS, 11);
	run_concurrent(&c);
}
END_TEST

/* The same race on ids that pile into the upper half of two shards: long
 * runs that wrap around shift back, and counts change, under every thread. */
START_TEST(test_concurrent_colliding)
{
	conc_t c = {.per = RUNNING_ON_VALGRIND ? 300 : 2000};
	c.t = kreq__table_new(0, 0);
	c.ids = malloc(c.per * CTHREADS * sizeof(cid_t));
	ck_assert_ptr_nonnull(c.ids);
	uint64_t seed = 31;
	for (size_t i = 0; i < c.per * CTHREADS; i++) /* upper half of two shards */
		c.ids[i] =
		    colliding_id((unsigned)(i % 2), 8 + (unsigned)(rnd(&seed) % 8), rnd(&seed), i);
	run_concurrent(&c);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("table");
	TCase *tc = tcase_create("table");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_basic_contract);
	tcase_add_test(tc, test_one_million);
	tcase_add_test(tc, test_structured_ids);
	tcase_add_test(tc, test_churn_against_model);
	tcase_add_test(tc, test_foreach_and_drain);
	tcase_add_test(tc, test_test_id_hook);
	tcase_add_test(tc, test_full_cluster_wraps);
	tcase_add_test(tc, test_churn_colliding_against_model);
	tcase_add_test(tc, test_saturated_counts);
	tcase_add_test(tc, test_concurrent_use);
	tcase_add_test(tc, test_concurrent_colliding);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
