/*
 * worker.h — a kreq worker running on its own thread for a test (the real
 * serving loop, against whatever Kafka the test points it at). Helpers fail
 * the calling test through Check.
 */
#ifndef KREQ_TEST_WORKER_H
#define KREQ_TEST_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kreq/worker.h"

typedef struct kreq_test_running {
	kreq_worker_t *s;
	pthread_t t;
	int rc; /* what kreq_worker_run() returned */
	char err[512];
	atomic_bool done; /* kreq_worker_run() has returned (rc, err are set) */
} kreq_test_running_t;

/* Runs s (handlers registered) on a new thread and waits, up to 60 s,
 * until it serves (kreq_worker_ready(): clients fail fast while a service
 * has no worker). Takes ownership of s. */
kreq_test_running_t *kreq_test_worker_start(kreq_worker_t *s);

/* Stops it, checks run returned KREQ_OK and is no longer ready, destroys
 * the worker. */
void kreq_test_worker_stop(kreq_test_running_t *rs);

/* Joins a worker whose run has returned on its own (done), destroys it
 * and returns what run returned; err (if not NULL, err_size bytes) gets
 * its message. */
int kreq_test_worker_reap(kreq_test_running_t *rs, char *err, size_t err_size);

/* The value of the first metric sample whose text contains series
 * (e.g. "kreq_worker_rebalances_total{" or "outcome=\"ok\"}"). */
uint64_t kreq_test_worker_metric(kreq_worker_t *s, const char *series);

#endif
