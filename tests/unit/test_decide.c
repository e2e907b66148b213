/*
 * test_decide.c — kreq__decide(), the worker's per-record decision
 * (broker/worker/decide.h), without Kafka: every branch, and the order of the
 * checks (each row also has every later check failing, so it proves that
 * its own check comes first).
 */
#include <check.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "broker/worker/decide.h"
#include "kreq/worker.h"
#include "proto/envelope.h"
#include "testsupport.h"

/* A Request that passes every check and runs. */
static kreq__facts_t runs(void)
{
	return (kreq__facts_t){.verified = true,
	                       .kind = KREQ__KIND_REQUEST,
	                       .partition_ok = true,
	                       .service_ok = true,
	                       .reply_topic_ok = true,
	                       .reply_partition_ok = true,
	                       .handler_found = true,
	                       .key_permitted = true,
	                       .found = KREQ__FOUND_NONE,
	                       .digest_match = false,
	                       .in_flight = 0,
	                       .max_in_flight = 256,
	                       .rate_limit_on = true,
	                       .tokens = 5.0,
	                       .budget_ms = 1000,
	                       .min_budget_ms = 1};
}

/* Each failing check, applied on top of every earlier row's passing
 * facts: rows are in the order of decide.h, and each row also breaks every
 * LATER check, so its expected outcome shows it is checked first. */
typedef void (*breaker_t)(kreq__facts_t *f);

static void b_verify(kreq__facts_t *f)
{
	f->verified = false;
}
static void b_cancel(kreq__facts_t *f)
{
	f->kind = KREQ__KIND_CANCEL;
}
static void b_kind(kreq__facts_t *f)
{
	f->kind = KREQ__KIND_REPLY;
}
static void b_too_far(kreq__facts_t *f)
{
	f->deadline_too_far = true;
}
static void b_too_old(kreq__facts_t *f)
{
	f->too_old = true;
}
static void b_partition(kreq__facts_t *f)
{
	f->partition_ok = false;
}
static void b_service(kreq__facts_t *f)
{
	f->service_ok = false;
}
static void b_topic(kreq__facts_t *f)
{
	f->reply_topic_ok = false;
}
static void b_rpart(kreq__facts_t *f)
{
	f->reply_partition_ok = false;
}
static void b_handler(kreq__facts_t *f)
{
	f->handler_found = false;
}
static void b_acl(kreq__facts_t *f)
{
	f->key_permitted = false;
}
static void b_conflict(kreq__facts_t *f)
{
	f->found = KREQ__FOUND_RUNNING;
	f->digest_match = false;
}
static void b_poison(kreq__facts_t *f)
{
	f->max_attempts = 3;
	f->attempts = 3;
}
static void b_rate(kreq__facts_t *f)
{
	f->tokens = 0.5;
}
static void b_budget(kreq__facts_t *f)
{
	f->budget_ms = 0;
}

typedef struct row {
	breaker_t brk;
	kreq__action_t action;
	kreq__why_t why;
	int32_t status;
} row_t;

static const row_t ORDER[] = {
    {b_verify, KREQ__ACT_DROP, KREQ__WHY_NOT_VERIFIED, 0},
    {b_cancel, KREQ__ACT_CANCEL, KREQ__WHY_CANCEL, 0},
    {b_kind, KREQ__ACT_DROP, KREQ__WHY_KIND, 0},
    {b_too_far, KREQ__ACT_DROP, KREQ__WHY_DEADLINE_TOO_FAR, 0},
    {b_too_old, KREQ__ACT_DROP, KREQ__WHY_TOO_OLD, 0},
    {b_partition, KREQ__ACT_DROP, KREQ__WHY_WRONG_PARTITION, 0},
    {b_service, KREQ__ACT_DROP, KREQ__WHY_WRONG_SERVICE, 0},
    {b_topic, KREQ__ACT_DROP, KREQ__WHY_REPLY_TOPIC, 0},
    {b_rpart, KREQ__ACT_DROP, KREQ__WHY_REPLY_PARTITION, 0},
    {b_handler, KREQ__ACT_ANSWER, KREQ__WHY_UNKNOWN_METHOD, KREQ_STATUS_UNKNOWN_METHOD},
    {b_acl, KREQ__ACT_ANSWER, KREQ__WHY_DENIED, KREQ_STATUS_DENIED},
    {b_conflict, KREQ__ACT_ANSWER, KREQ__WHY_CONFLICT, KREQ_STATUS_CONFLICT},
    {b_poison, KREQ__ACT_POISON, KREQ__WHY_POISON, KREQ_STATUS_POISON},
    {b_rate, KREQ__ACT_ANSWER, KREQ__WHY_RATE_LIMITED, KREQ_STATUS_OVERLOADED},
    {b_budget, KREQ__ACT_ANSWER, KREQ__WHY_DEADLINE, KREQ_STATUS_DEADLINE},
};
#define NROWS (sizeof(ORDER) / sizeof(ORDER[0]))

/* Row i with rows i..end broken (the cancel and kind rows change the kind,
 * so they are applied only when they are the row under test, and the
 * conflict row only when no earlier row sets another kind). */
START_TEST(test_order_of_checks)
{
	for (size_t i = 0; i < NROWS; i++) {
		kreq__facts_t f = runs();
		for (size_t j = NROWS; j-- > i;) {
			if (j != i && (ORDER[j].brk == b_cancel || ORDER[j].brk == b_kind))
				continue;
			ORDER[j].brk(&f);
		}
		kreq__decision_t d = kreq__decide(&f);
		ck_assert_msg(d.action == ORDER[i].action && d.why == ORDER[i].why &&
		                  d.status == ORDER[i].status,
		              "row %zu: got %d %s %d, want %d %s %d", i, d.action,
		              kreq__why_name(d.why), d.status, ORDER[i].action,
		              kreq__why_name(ORDER[i].why), ORDER[i].status);
	}
	kreq__facts_t f = runs();
	kreq__decision_t d = kreq__decide(&f);
	ck_assert_int_eq(d.action, KREQ__ACT_DISPATCH);
	ck_assert_int_eq(d.why, KREQ__WHY_RUN);
}
END_TEST

/* The dedup branches, each with the rate and budget checks failing too:
 * a replay (hit or join) is never rate limited nor needs a budget. */
typedef struct ddrow {
	kreq__found_t found;
	bool digest_match, corr_waiting;
	uint32_t joiners;
	size_t in_flight;
	kreq__action_t action;
	kreq__why_t why;
	int32_t status;
} ddrow_t;

static const ddrow_t DEDUP[] = {
    /* a stored result, same request: served, even with no token left */
    {KREQ__FOUND_DONE, true, false, 0, 0, KREQ__ACT_SERVE, KREQ__WHY_STORED, 0},
    /* a stored result of another request under the key */
    {KREQ__FOUND_DONE, false, false, 0, 0, KREQ__ACT_ANSWER, KREQ__WHY_CONFLICT,
     KREQ_STATUS_CONFLICT},
    /* running: joins, even at the last free joiner slot */
    {KREQ__FOUND_RUNNING, true, false, 0, 0, KREQ__ACT_JOIN, KREQ__WHY_JOINED, 0},
    {KREQ__FOUND_RUNNING, true, false, KREQ__JOINERS_MAX - 1, 255, KREQ__ACT_JOIN, KREQ__WHY_JOINED,
     0},
    /* the same correlation id already gets the reply: answered once */
    {KREQ__FOUND_RUNNING, true, true, 0, 0, KREQ__ACT_DROP, KREQ__WHY_DUPLICATE, 0},
    /* duplicate before the bounds: it is the more precise count */
    {KREQ__FOUND_RUNNING, true, true, KREQ__JOINERS_MAX, 256, KREQ__ACT_DROP, KREQ__WHY_DUPLICATE,
     0},
    /* bounded joiners */
    {KREQ__FOUND_RUNNING, true, false, KREQ__JOINERS_MAX, 0, KREQ__ACT_DROP, KREQ__WHY_JOINERS_FULL,
     0},
    {KREQ__FOUND_RUNNING, true, false, KREQ__JOINERS_MAX, 256, KREQ__ACT_DROP,
     KREQ__WHY_JOINERS_FULL, 0},
    /* joiners count against worker.max.in.flight */
    {KREQ__FOUND_RUNNING, true, false, 0, 256, KREQ__ACT_DROP, KREQ__WHY_IN_FLIGHT_FULL, 0},
    {KREQ__FOUND_RUNNING, true, false, 0, 300, KREQ__ACT_DROP, KREQ__WHY_IN_FLIGHT_FULL, 0},
    /* conflict before everything else about a running entry */
    {KREQ__FOUND_RUNNING, false, true, KREQ__JOINERS_MAX, 256, KREQ__ACT_ANSWER, KREQ__WHY_CONFLICT,
     KREQ_STATUS_CONFLICT},
};

START_TEST(test_dedup_branches)
{
	for (size_t i = 0; i < sizeof(DEDUP) / sizeof(DEDUP[0]); i++) {
		const ddrow_t *r = &DEDUP[i];
		kreq__facts_t f = runs();
		f.found = r->found;
		f.digest_match = r->digest_match;
		f.corr_waiting = r->corr_waiting;
		f.joiners = r->joiners;
		f.in_flight = r->in_flight;
		f.tokens = 0.0;   /* the bucket is empty */
		f.budget_ms = -5; /* and the deadline passed */
		kreq__decision_t d = kreq__decide(&f);
		ck_assert_msg(d.action == r->action && d.why == r->why && d.status == r->status,
		              "dedup row %zu: got %d %s %d", i, d.action, kreq__why_name(d.why),
		              d.status);
	}
}
END_TEST

/* Rate and budget edges on a new key. */
START_TEST(test_rate_and_budget)
{
	kreq__facts_t f = runs();
	f.tokens = 1.0; /* exactly one token: runs */
	ck_assert_int_eq(kreq__decide(&f).action, KREQ__ACT_DISPATCH);
	f.tokens = 0.999;
	ck_assert_int_eq(kreq__decide(&f).why, KREQ__WHY_RATE_LIMITED);
	f.rate_limit_on = false; /* no limit configured: tokens do not matter */
	ck_assert_int_eq(kreq__decide(&f).action, KREQ__ACT_DISPATCH);
	f.budget_ms = f.min_budget_ms = 50; /* exactly the minimum: runs */
	ck_assert_int_eq(kreq__decide(&f).action, KREQ__ACT_DISPATCH);
	f.budget_ms = 49;
	kreq__decision_t d = kreq__decide(&f);
	ck_assert_int_eq(d.action, KREQ__ACT_ANSWER);
	ck_assert_int_eq(d.status, KREQ_STATUS_DEADLINE);
	/* a dispatch is decided at in_flight = max - 1 only for new keys by
	 * the loop's own bound (consume stops at the limit), not here */
	f = runs();
	f.in_flight = f.max_in_flight;
	ck_assert_int_eq(kreq__decide(&f).action, KREQ__ACT_DISPATCH);
	/* a Cancel that did not verify is dropped like anything else */
	f = runs();
	f.kind = KREQ__KIND_CANCEL;
	f.verified = false;
	ck_assert_int_eq(kreq__decide(&f).why, KREQ__WHY_NOT_VERIFIED);
	f.verified = true;
	f.kind = KREQ__KIND_RESULT; /* a Result on the request topic */
	ck_assert_int_eq(kreq__decide(&f).why, KREQ__WHY_KIND);
	ck_assert_str_eq(kreq__why_name(KREQ__WHY_JOINERS_FULL), "joiners_full");
	ck_assert_str_eq(kreq__why_name((kreq__why_t)99), "?");
}
END_TEST

/* Poison: counted starts against worker.poison.max.attempts, only for a
 * key without a stored result or a running request. */
START_TEST(test_poison_threshold)
{
	kreq__facts_t f = runs();
	f.max_attempts = 3;
	for (uint32_t n = 0; n < 3; n++) {
		f.attempts = n;
		ck_assert_int_eq(kreq__decide(&f).action, KREQ__ACT_DISPATCH);
	}
	f.attempts = 3;
	kreq__decision_t d = kreq__decide(&f);
	ck_assert_int_eq(d.action, KREQ__ACT_POISON);
	ck_assert_int_eq(d.status, KREQ_STATUS_POISON);
	ck_assert_str_eq(kreq__why_name(d.why), "poison");
	f.attempts = 32; /* more than N (counted while it was off, say) */
	ck_assert_int_eq(kreq__decide(&f).action, KREQ__ACT_POISON);
	f.max_attempts = 0; /* counting off: never poison */
	ck_assert_int_eq(kreq__decide(&f).action, KREQ__ACT_DISPATCH);
	f.max_attempts = 1; /* one crash is enough */
	f.attempts = 1;
	ck_assert_int_eq(kreq__decide(&f).action, KREQ__ACT_POISON);
	/* a stored result wins: served, never counted */
	f.found = KREQ__FOUND_DONE;
	f.digest_match = true;
	ck_assert_int_eq(kreq__decide(&f).action, KREQ__ACT_SERVE);
	/* running here: the duplicate joins it */
	f.found = KREQ__FOUND_RUNNING;
	ck_assert_int_eq(kreq__decide(&f).action, KREQ__ACT_JOIN);
	/* an unknown method or a denied key is answered as such first */
	f = runs();
	f.max_attempts = f.attempts = 3;
	f.key_permitted = false;
	ck_assert_int_eq(kreq__decide(&f).why, KREQ__WHY_DENIED);
}
END_TEST

/* Not an assertion: what one decision costs on the loop thread. */
START_TEST(test_decide_cost)
{
	enum { N = 10000000 };
	kreq__facts_t f = runs();
	struct timespec a, b;
	volatile unsigned sink = 0;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (int i = 0; i < N; i++) {
		f.found = (kreq__found_t)(i % 3);
		f.digest_match = i & 1;
		sink += kreq__decide(&f).action;
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	double ns = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / N;
	printf("kreq__decide: %.2f ns per decision\n", ns);
	ck_assert_uint_gt(sink, 0);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("decide");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, test_order_of_checks);
	tcase_add_test(tc, test_dedup_branches);
	tcase_add_test(tc, test_rate_and_budget);
	tcase_add_test(tc, test_poison_threshold);
	tcase_add_test(tc, test_decide_cost);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
