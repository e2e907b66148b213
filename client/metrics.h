/*
 * metrics.h — client metrics: atomic counters and histograms (common/prom.h),
 * rendered as Prometheus text. Updates are relaxed atomic adds (no lock on
 * the call path); rendering reads a snapshot that may be a few updates
 * apart between series, which Prometheus tolerates.
 */
#ifndef KREQ_CLIENT_METRICS_H
#define KREQ_CLIENT_METRICS_H

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#include "common/prom.h"

/* Outcomes of calls, by kind. */
#define KREQ__OUTCOMES(X)                                                                          \
	X(OK, "ok")                                                                                \
	X(ERROR_STATUS, "error_status")                                                            \
	X(REJECTED, "rejected")                                                                    \
	X(TIMEOUT, "timeout")                                                                      \
	X(CANCELLED, "cancelled")                                                                  \
	X(UNAVAILABLE, "unavailable")                                                              \
	X(BACKPRESSURE, "backpressure")                                                            \
	X(CLOSED, "closed")

typedef enum kreq__outcome {
#define KREQ__OUTCOME_ENUM(id, name) KREQ__OUT_##id,
	KREQ__OUTCOMES(KREQ__OUTCOME_ENUM)
#undef KREQ__OUTCOME_ENUM
	    KREQ__OUT_COUNT
} kreq__outcome_t;

typedef struct kreq__client_metrics {
	atomic_uint_fast64_t calls;
	atomic_uint_fast64_t outcome[KREQ__OUT_COUNT];
	atomic_uint_fast64_t retries;
	atomic_uint_fast64_t late_replies;     /* verified, for no pending call */
	atomic_uint_fast64_t rejected_replies; /* did not verify or did not match */
	atomic_uint_fast64_t send_errors;
	kreq__hist_t duration;   /* call to settlement */
	kreq__hist_t queue_wait; /* call to first send acknowledged by Kafka */
} kreq__client_metrics_t;

/* Writes the Prometheus text exposition of m (plus the in-flight gauge). */
void kreq__client_metrics_render(const kreq__client_metrics_t *m, uint64_t in_flight,
                                 const char *client_id, FILE *out);

#endif
