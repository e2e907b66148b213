/* metrics.c — the client's Prometheus text (writers: common/prom.h). */
#include <inttypes.h>

#include "client/metrics.h"

static const char *outcome_names[KREQ__OUT_COUNT] = {
#define KREQ__OUTCOME_NAME(id, name) name,
    KREQ__OUTCOMES(KREQ__OUTCOME_NAME)
#undef KREQ__OUTCOME_NAME
};

static uint64_t load(const atomic_uint_fast64_t *a)
{
	return atomic_load_explicit(a, memory_order_relaxed);
}

void kreq__client_metrics_render(const kreq__client_metrics_t *m, uint64_t in_flight,
                                 const char *cid, FILE *out)
{
	char l[600];
	snprintf(l, sizeof(l), "client=\"%s\"", cid);
	kreq__prom_gauge(out, "kreq_client_in_flight", "Calls pending now.", in_flight, l);
	kreq__prom_counter(out, "kreq_client_calls_total", "Calls submitted.", load(&m->calls), l);
	fputs("# HELP kreq_client_outcomes_total Settled calls by outcome.\n"
	      "# TYPE kreq_client_outcomes_total counter\n",
	      out);
	for (int i = 0; i < KREQ__OUT_COUNT; i++)
		fprintf(out,
		        "kreq_client_outcomes_total{client=\"%s\",outcome=\"%s\"} %" PRIu64 "\n",
		        cid, outcome_names[i], load(&m->outcome[i]));
	kreq__prom_counter(out, "kreq_client_retries_total",
	                   "Requests sent again after an attempt timeout.", load(&m->retries), l);
	kreq__prom_counter(
	    out, "kreq_client_late_replies_total",
	    "Verified replies that matched no pending call (late, duplicate or unknown).",
	    load(&m->late_replies), l);
	kreq__prom_counter(
	    out, "kreq_client_rejected_replies_total",
	    "Replies dropped because they did not verify or did not match their call.",
	    load(&m->rejected_replies), l);
	kreq__prom_counter(out, "kreq_client_send_errors_total", "Requests Kafka failed to accept.",
	                   load(&m->send_errors), l);
	kreq__hist_render(out, "kreq_client_call_duration_seconds", "Time from call to settlement.",
	                  &m->duration, l, 1e6);
	kreq__hist_render(out, "kreq_client_queue_wait_seconds",
	                  "Time from call until Kafka acknowledged the first send.", &m->queue_wait,
	                  l, 1e6);
}
