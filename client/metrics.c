/* metrics.c — histogram buckets and the Prometheus text rendering. */
#include <inttypes.h>

#include "client/metrics.h"

/* Upper bounds in microseconds: 100 us .. ~3.3 s, doubling. */
static const int64_t bounds_us[KREQ__HIST_BUCKETS] = {
    100,   200,   400,    800,    1600,   3200,   6400,    12800,
    25600, 51200, 102400, 204800, 409600, 819200, 1638400, 3276800};

static const char *outcome_names[KREQ__OUT_COUNT] = {
#define KREQ__OUTCOME_NAME(id, name) name,
    KREQ__OUTCOMES(KREQ__OUTCOME_NAME)
#undef KREQ__OUTCOME_NAME
};

void kreq__hist_observe(kreq__hist_t *h, int64_t us)
{
	int i = 0;
	while (i < KREQ__HIST_BUCKETS && us > bounds_us[i])
		i++;
	atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->sum_us, (uint64_t)(us < 0 ? 0 : us), memory_order_relaxed);
	atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
}

static uint64_t load(const atomic_uint_fast64_t *a)
{
	return atomic_load_explicit(a, memory_order_relaxed);
}

static void render_hist(FILE *out, const char *name, const char *help, const kreq__hist_t *h,
                        const char *cid)
{
	fprintf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	uint64_t cum = 0;
	for (int i = 0; i < KREQ__HIST_BUCKETS; i++) {
		cum += load(&h->bucket[i]);
		fprintf(out, "%s_bucket{client=\"%s\",le=\"%g\"} %" PRIu64 "\n", name, cid,
		        (double)bounds_us[i] / 1e6, cum);
	}
	cum += load(&h->bucket[KREQ__HIST_BUCKETS]);
	fprintf(out, "%s_bucket{client=\"%s\",le=\"+Inf\"} %" PRIu64 "\n", name, cid, cum);
	fprintf(out, "%s_sum{client=\"%s\"} %g\n", name, cid, (double)load(&h->sum_us) / 1e6);
	fprintf(out, "%s_count{client=\"%s\"} %" PRIu64 "\n", name, cid, load(&h->count));
}

void kreq__hist_render(FILE *out, const char *name, const char *help, const kreq__hist_t *h,
                       const char *labels, double scale)
{
	fprintf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	uint64_t cum = 0;
	for (int i = 0; i < KREQ__HIST_BUCKETS; i++) {
		cum += load(&h->bucket[i]);
		fprintf(out, "%s_bucket{%s,le=\"%g\"} %" PRIu64 "\n", name, labels,
		        (double)bounds_us[i] / scale, cum);
	}
	cum += load(&h->bucket[KREQ__HIST_BUCKETS]);
	fprintf(out, "%s_bucket{%s,le=\"+Inf\"} %" PRIu64 "\n", name, labels, cum);
	fprintf(out, "%s_sum{%s} %g\n", name, labels, (double)load(&h->sum_us) / scale);
	fprintf(out, "%s_count{%s} %" PRIu64 "\n", name, labels, load(&h->count));
}

static void counter(FILE *out, const char *name, const char *help, uint64_t v, const char *cid)
{
	fprintf(out, "# HELP %s %s\n# TYPE %s counter\n%s{client=\"%s\"} %" PRIu64 "\n", name, help,
	        name, name, cid, v);
}

void kreq__client_metrics_render(const kreq__client_metrics_t *m, uint64_t in_flight,
                                 const char *cid, FILE *out)
{
	fprintf(out,
	        "# HELP kreq_client_in_flight Calls pending now.\n"
	        "# TYPE kreq_client_in_flight gauge\nkreq_client_in_flight{client=\"%s\"} %" PRIu64
	        "\n",
	        cid, in_flight);
	counter(out, "kreq_client_calls_total", "Calls submitted.", load(&m->calls), cid);
	fputs("# HELP kreq_client_outcomes_total Settled calls by outcome.\n"
	      "# TYPE kreq_client_outcomes_total counter\n",
	      out);
	for (int i = 0; i < KREQ__OUT_COUNT; i++)
		fprintf(out,
		        "kreq_client_outcomes_total{client=\"%s\",outcome=\"%s\"} %" PRIu64 "\n",
		        cid, outcome_names[i], load(&m->outcome[i]));
	counter(out, "kreq_client_retries_total", "Requests sent again after an attempt timeout.",
	        load(&m->retries), cid);
	counter(out, "kreq_client_late_replies_total",
	        "Verified replies that matched no pending call (late, duplicate or unknown).",
	        load(&m->late_replies), cid);
	counter(out, "kreq_client_rejected_replies_total",
	        "Replies dropped because they did not verify or did not match their call.",
	        load(&m->rejected_replies), cid);
	counter(out, "kreq_client_send_errors_total", "Requests Kafka failed to accept.",
	        load(&m->send_errors), cid);
	render_hist(out, "kreq_client_call_duration_seconds", "Time from call to settlement.",
	            &m->duration, cid);
	render_hist(out, "kreq_client_queue_wait_seconds",
	            "Time from call until Kafka acknowledged the first send.", &m->queue_wait, cid);
}
