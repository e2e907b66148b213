/* worker.c — see worker.h. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kreq/error.h"
#include "worker.h"
#include "testsupport.h"

static void *run_main(void *arg)
{
	kreq_test_running_t *rs = arg;
	rs->rc = kreq_worker_run(rs->s, rs->err, sizeof(rs->err));
	atomic_store(&rs->done, true);
	return NULL;
}

kreq_test_running_t *kreq_test_worker_start(kreq_worker_t *s)
{
	kreq_test_running_t *rs = calloc(1, sizeof(*rs));
	ck_assert_ptr_nonnull(rs);
	rs->s = s;
	ck_assert(!kreq_worker_ready(s));
	ck_assert_int_eq(pthread_create(&rs->t, NULL, run_main, rs), 0);
	KREQ_TEST_AWAIT(kreq_worker_ready(s), 60000);
	ck_assert_uint_ge(kreq_test_worker_metric(s, "kreq_worker_rebalances_total{"), 1);
	return rs;
}

void kreq_test_worker_stop(kreq_test_running_t *rs)
{
	kreq_worker_stop(rs->s);
	pthread_join(rs->t, NULL);
	ck_assert_msg(rs->rc == KREQ_OK, "kreq_worker_run: %s", rs->err);
	ck_assert(!kreq_worker_ready(rs->s));
	kreq_worker_destroy(rs->s);
	free(rs);
}

int kreq_test_worker_reap(kreq_test_running_t *rs, char *err, size_t err_size)
{
	ck_assert(atomic_load(&rs->done));
	pthread_join(rs->t, NULL);
	int rc = rs->rc;
	if (err)
		snprintf(err, err_size, "%s", rs->err);
	kreq_worker_destroy(rs->s);
	free(rs);
	return rc;
}

uint64_t kreq_test_worker_metric(kreq_worker_t *s, const char *series)
{
	char *text = NULL;
	ck_assert_int_eq(kreq_worker_metrics_text(s, &text), KREQ_OK);
	const char *p = strstr(text, series);
	ck_assert_msg(p != NULL, "metric %s missing", series);
	uint64_t v = strtoull(strchr(p + strlen(series), ' ') + 1, NULL, 10);
	free(text);
	return v;
}
