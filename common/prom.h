/*
 * prom.h — histograms and the Prometheus text writers both sides use (the
 * client's client/metrics.c and the worker's broker/worker/metrics.c).
 *
 * A histogram has fixed buckets (100 us .. ~3.3 s, doubling, then +Inf) of
 * relaxed atomic counters: observing takes no lock on the call path, and a
 * rendering reads a snapshot that may be a few updates apart between
 * series, which Prometheus tolerates.
 */
#ifndef KREQ_COMMON_PROM_H
#define KREQ_COMMON_PROM_H

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#define KREQ__HIST_BUCKETS 16

typedef struct kreq__hist {
	atomic_uint_fast64_t bucket[KREQ__HIST_BUCKETS + 1]; /* last: +Inf */
	atomic_uint_fast64_t sum_us;
	atomic_uint_fast64_t count;
} kreq__hist_t;

/* Counts one value (microseconds, or any unit the renderer scales). */
void kreq__hist_observe(kreq__hist_t *h, int64_t us);

/* Renders h as a Prometheus histogram with the given label list (e.g.
 * `service="x"`); observed values are divided by scale (1e6: us to s). */
void kreq__hist_render(FILE *out, const char *name, const char *help, const kreq__hist_t *h,
                       const char *labels, double scale);

/* One counter or gauge, HELP and TYPE lines included: name{labels} v. */
void kreq__prom_counter(FILE *out, const char *name, const char *help, uint64_t v,
                        const char *labels);
void kreq__prom_gauge(FILE *out, const char *name, const char *help, uint64_t v,
                      const char *labels);

#endif
