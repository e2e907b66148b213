/*
 * test_handles.c — the generation-checked request handles (broker/worker/handles.c):
 * what a handle finds in each state, stale generations, values that are not
 * handles, slots given back, and the races the reply path relies on (many
 * threads replying with one handle while the loop abandons it: exactly one
 * wins each step). Runs under TSan in scripts/test.sh.
 */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "broker/worker/handles.h"
#include "kreq/error.h"
#include "testsupport.h"

/* stand-ins for internal requests: handles never dereference them */
static int dummy_a, dummy_b;
#define REQ_A ((kreq_request_t *)(void *)&dummy_a)
#define REQ_B ((kreq_request_t *)(void *)&dummy_b)

START_TEST(test_states_and_generations)
{
	uint32_t id;
	uint64_t gen, gen2, dgen;
	uint32_t did;
	ck_assert_int_eq(kreq__handles_take(&id), KREQ_OK);
	kreq_request_t *h = kreq__handle_publish(id, REQ_A, &gen);
	ck_assert(kreq__handle_decode(h, &did, &dgen));
	ck_assert_uint_eq(did, id);
	ck_assert_uint_eq(dgen, gen);
	ck_assert_int_eq(kreq__handle_state(id, gen), KREQ__SL_QUEUED);
	ck_assert_ptr_eq(kreq__handle_get(h), REQ_A);
	ck_assert(kreq__handle_cas(id, gen, KREQ__SL_QUEUED, KREQ__SL_RUNNING));
	ck_assert(!kreq__handle_cas(id, gen, KREQ__SL_QUEUED, KREQ__SL_RUNNING));
	ck_assert_ptr_eq(kreq__handle_get(h), REQ_A);
	/* abandoned: still the handler's, accessors work */
	ck_assert(kreq__handle_cas(id, gen, KREQ__SL_RUNNING, KREQ__SL_ABANDONED));
	ck_assert_ptr_eq(kreq__handle_get(h), REQ_A);
	ck_assert(kreq__handle_cas(id, gen, KREQ__SL_ABANDONED, KREQ__SL_RELEASED));
	ck_assert_ptr_null(kreq__handle_get(h));
	ck_assert_ptr_eq(kreq__handle_owned(id), REQ_A);
	/* the slot serves another request: the old handle finds nothing */
	kreq_request_t *h2 = kreq__handle_publish(id, REQ_B, &gen2);
	ck_assert_uint_ne(gen2, gen);
	ck_assert_ptr_ne(h2, h);
	ck_assert_ptr_null(kreq__handle_get(h));
	ck_assert_int_eq(kreq__handle_state(id, gen), -1);
	ck_assert(!kreq__handle_cas(id, gen, KREQ__SL_RUNNING, KREQ__SL_REPLIED));
	ck_assert_ptr_eq(kreq__handle_get(h2), REQ_B);
	ck_assert(kreq__handle_cas(id, gen2, KREQ__SL_QUEUED, KREQ__SL_REPLIED));
	ck_assert_ptr_null(kreq__handle_get(h2));
	/* given back (worker destroyed): its handles stay invalid */
	kreq__handles_give(&id, 1);
	ck_assert_ptr_null(kreq__handle_get(h2));
	ck_assert_int_eq(kreq__handle_state(id, gen2), -1);
}
END_TEST

START_TEST(test_not_handles)
{
	uint32_t id;
	uint64_t gen;
	ck_assert(!kreq__handle_decode(NULL, &id, &gen));
	ck_assert_ptr_null(kreq__handle_get(NULL));
	/* a real (aligned) pointer is never a handle */
	ck_assert(!kreq__handle_decode(REQ_A, &id, &gen));
	ck_assert_ptr_null(kreq__handle_get(REQ_A));
	/* a tagged value naming a slot that was never handed out */
	kreq_request_t *far = (kreq_request_t *)(uintptr_t)(((uintptr_t)0xffffff << 1) | 1u);
	ck_assert(!kreq__handle_decode(far, &id, &gen));
	ck_assert_ptr_null(kreq__handle_get(far));
}
END_TEST

/* ---- races --------------------------------------------------------------- */

enum { THREADS = 4, ROUNDS = 2000 };

static uint32_t race_id;
static _Atomic uint64_t race_gen;
static atomic_int replies_won, releases_won;
static pthread_barrier_t barrier;

/* A handler thread: its reply (RUNNING -> REPLIED), or, if the loop
 * abandoned the request first, its late reply (ABANDONED -> RELEASED). */
static void *replier(void *arg)
{
	(void)arg;
	for (int i = 0; i < ROUNDS; i++) {
		pthread_barrier_wait(&barrier);
		uint64_t g = atomic_load(&race_gen);
		if (kreq__handle_cas(race_id, g, KREQ__SL_RUNNING, KREQ__SL_REPLIED))
			atomic_fetch_add(&replies_won, 1);
		else if (kreq__handle_cas(race_id, g, KREQ__SL_ABANDONED, KREQ__SL_RELEASED))
			atomic_fetch_add(&releases_won, 1);
		pthread_barrier_wait(&barrier);
	}
	return NULL;
}

START_TEST(test_reply_races_abandon)
{
	ck_assert_int_eq(kreq__handles_take(&race_id), KREQ_OK);
	pthread_barrier_init(&barrier, NULL, THREADS + 1);
	pthread_t t[THREADS];
	for (int i = 0; i < THREADS; i++)
		ck_assert_int_eq(pthread_create(&t[i], NULL, replier, NULL), 0);
	int abandons = 0;
	for (int i = 0; i < ROUNDS; i++) {
		uint64_t g;
		kreq__handle_publish(race_id, REQ_A, &g);
		ck_assert(kreq__handle_cas(race_id, g, KREQ__SL_QUEUED, KREQ__SL_RUNNING));
		atomic_store(&race_gen, g);
		int before = atomic_load(&replies_won) + atomic_load(&releases_won);
		pthread_barrier_wait(&barrier);
		/* the loop: abandon, racing the repliers */
		if (kreq__handle_cas(race_id, g, KREQ__SL_RUNNING, KREQ__SL_ABANDONED))
			abandons++;
		pthread_barrier_wait(&barrier);
		int st = kreq__handle_state(race_id, g);
		int after = atomic_load(&replies_won) + atomic_load(&releases_won);
		/* exactly one handler thread let go, whoever won the first step */
		ck_assert_int_eq(after - before, 1);
		ck_assert(st == KREQ__SL_REPLIED || st == KREQ__SL_RELEASED);
	}
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	pthread_barrier_destroy(&barrier);
	ck_assert_int_eq(atomic_load(&releases_won), abandons);
	ck_assert_int_eq(atomic_load(&replies_won) + abandons, ROUNDS);
	kreq__handles_give(&race_id, 1);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("handles");
	TCase *tc = tcase_create("handles");
	tcase_add_test(tc, test_states_and_generations);
	tcase_add_test(tc, test_not_handles);
	tcase_add_test(tc, test_reply_races_abandon);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
