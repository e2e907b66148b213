/* prom.c — see prom.h. */
#include <inttypes.h>

#include "common/prom.h"

/* Upper bounds in microseconds: 100 us .. ~3.3 s, doubling. */
static const int64_t bounds_us[KREQ__HIST_BUCKETS] = {
    100,   200,   400,    800,    1600,   3200,   6400,    12800,
    25600, 51200, 102400, 204800, 409600, 819200, 1638400, 3276800};

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

static void one(FILE *out, const char *type, const char *name, const char *help, uint64_t v,
                const char *labels)
{
	fprintf(out, "# HELP %s %s\n# TYPE %s %s\n%s{%s} %" PRIu64 "\n", name, help, name, type,
	        name, labels, v);
}

void kreq__prom_counter(FILE *out, const char *name, const char *help, uint64_t v,
                        const char *labels)
{
	one(out, "counter", name, help, v, labels);
}

void kreq__prom_gauge(FILE *out, const char *name, const char *help, uint64_t v, const char *labels)
{
	one(out, "gauge", name, help, v, labels);
}
