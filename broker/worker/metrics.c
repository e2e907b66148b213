/* metrics.c — see metrics.h. */
#include <inttypes.h>
#include <stddef.h>

#include "broker/worker/metrics.h"
#include "kreq/error.h"

static const char *handled_names[] = {
#define KREQ__H_NAME(id, name) name,
    KREQ__HANDLED(KREQ__H_NAME)
#undef KREQ__H_NAME
};

static const char *reject_names[] = {
#define KREQ__R_NAME(id, name) name,
    KREQ__REJECTS(KREQ__R_NAME)
#undef KREQ__R_NAME
};

kreq__reject_t kreq__reject_of(int err)
{
	switch (err) {
	case KREQ_EMALFORMED:
		return KREQ__R_MALFORMED;
	case KREQ_EOVERSIZE:
		return KREQ__R_OVERSIZE;
	case KREQ_EVERSION:
		return KREQ__R_VERSION;
	case KREQ_EUNKNOWNKEY:
		return KREQ__R_UNKNOWN_KEY;
	case KREQ_EBADSIG:
		return KREQ__R_BAD_SIGNATURE;
	case KREQ_EEXPIRED:
		return KREQ__R_EXPIRED;
	case KREQ_EFUTURE:
		return KREQ__R_FUTURE;
	default:
		return KREQ__R_OTHER;
	}
}

static uint64_t load(const atomic_uint_fast64_t *a)
{
	return atomic_load_explicit(a, memory_order_relaxed);
}

/* The plain counters, in the order they are written: name, field, help. */
static const struct counter_series {
	const char *name;
	size_t field; /* offsetof an atomic_uint_fast64_t in kreq__worker_metrics_t */
	const char *help;
} counters[] = {
    {"kreq_worker_dedup_evicted_total", offsetof(kreq__worker_metrics_t, dedup_evicted),
     "Stored results dropped entirely before their retention (no longer findable: retries of those "
     "keys run again)."},
    {"kreq_worker_cancels_total", offsetof(kreq__worker_metrics_t, cancels),
     "Cancel messages received."},
    {"kreq_worker_rebalances_total", offsetof(kreq__worker_metrics_t, rebalances),
     "Partition assignments received."},
    {"kreq_worker_txn_commits_total", offsetof(kreq__worker_metrics_t, txn_commits),
     "Transactions committed."},
    {"kreq_worker_txn_aborts_total", offsetof(kreq__worker_metrics_t, txn_aborts),
     "Transactions aborted (the worker rewound to the committed offsets)."},
    {"kreq_worker_producer_resets_total", offsetof(kreq__worker_metrics_t, producer_resets),
     "Producer re-created: a fatal error, a failed output, or a fencing."},
    {"kreq_worker_txn_fences_total", offsetof(kreq__worker_metrics_t, txn_fences),
     "Producer fenced (new epoch): a transaction call's outcome was unknown (timed out; the worker "
     "rewound), or a producer connection closed during a transaction (a request of it could arrive "
     "late)."},
    {"kreq_worker_results_loaded_total", offsetof(kreq__worker_metrics_t, results_loaded),
     "Stored results read from the results topic while rebuilding."},
    {"kreq_worker_results_ignored_total", offsetof(kreq__worker_metrics_t, results_ignored),
     "Results in the results topic the rebuild ignored because their signing key is not in "
     "worker.result.signers."},
    {"kreq_worker_produce_errors_total", offsetof(kreq__worker_metrics_t, produce_errors),
     "Records Kafka failed to accept."},
    {"kreq_worker_replies_batched_total", offsetof(kreq__worker_metrics_t, replies_batched),
     "Light mode: replies sent through the batching producer because at least "
     "worker.batch.threshold results were applied together."},
    {"kreq_worker_dedup_ghosted_total", offsetof(kreq__worker_metrics_t, dedup_ghosted),
     "Stored results that left memory (their key over worker.dedup.key.max.bytes, or the biggest "
     "key at worker.dedup.max.bytes) but stay findable in the results topic."},
    {"kreq_worker_dedup_read_back_total", offsetof(kreq__worker_metrics_t, ghost_reads),
     "Retries answered by reading their stored result back from the results topic."},
    {"kreq_worker_dedup_read_back_failures_total",
     offsetof(kreq__worker_metrics_t, ghost_read_failures),
     "Stored results that could not be read back (answered overloaded: retry later)."},
    {"kreq_worker_late_replies_total", offsetof(kreq__worker_metrics_t, late_replies),
     "Handler replies refused because the worker had already answered the request with status 2 at "
     "its deadline + worker.handler.grace.ms."},
    {"kreq_worker_rewinds_total", offsetof(kreq__worker_metrics_t, rewinds),
     "Rewinds to the committed offsets (after an aborted transaction or a failed delivery)."},
    {"kreq_worker_reply_topic_missing_total", offsetof(kreq__worker_metrics_t, reply_topic_missing),
     "Replies not sent because their reply topic does not exist (the result and the offset still "
     "commit: a retry from a new reply topic is a dedup hit)."},
    {"kreq_worker_attempts_written_total", offsetof(kreq__worker_metrics_t, attempts_written),
     "Attempt records written to <prefix>.<service>.attempts before a handler started "
     "(worker.poison.max.attempts)."},
    {"kreq_worker_poison_total", offsetof(kreq__worker_metrics_t, dead_letters),
     "Requests taken out of service with status 10 (poison) and written to "
     "<prefix>.<service>.dead."},
};

static uint64_t field(const kreq__worker_metrics_t *m, size_t off)
{
	return load((const atomic_uint_fast64_t *)(const void *)((const char *)m + off));
}

/* Series with a label of their own (outcome, reason) and the dedup hits,
 * a sum of two outcomes. */
static void render_outcomes(const kreq__worker_metrics_t *m, const char *l, FILE *out)
{
	fputs("# HELP kreq_worker_handled_total Request records answered, by outcome.\n"
	      "# TYPE kreq_worker_handled_total counter\n",
	      out);
	for (int i = 0; i < KREQ__H_COUNT; i++)
		fprintf(out, "kreq_worker_handled_total{%s,outcome=\"%s\"} %" PRIu64 "\n", l,
		        handled_names[i], load(&m->handled[i]));
	fputs("# HELP kreq_worker_rejected_total Records dropped unanswered, by reason.\n"
	      "# TYPE kreq_worker_rejected_total counter\n",
	      out);
	for (int i = 0; i < KREQ__R_COUNT; i++)
		fprintf(out, "kreq_worker_rejected_total{%s,reason=\"%s\"} %" PRIu64 "\n", l,
		        reject_names[i], load(&m->rejected[i]));
	kreq__prom_counter(
	    out, "kreq_worker_dedup_hits_total",
	    "Requests answered from the deduplication store without running the handler.",
	    load(&m->handled[KREQ__H_DEDUP]) + load(&m->handled[KREQ__H_JOINED]), l);
}

static void render_histograms(const kreq__worker_metrics_t *m, const char *l, FILE *out)
{
	kreq__hist_render(out, "kreq_worker_handler_seconds", "Handler start to reply.",
	                  &m->handler_time, l, 1e6);
	kreq__hist_render(out, "kreq_worker_queue_seconds", "Request consumed to handler start.",
	                  &m->queue_time, l, 1e6);
	kreq__hist_render(out, "kreq_worker_txn_commit_seconds",
	                  "Time to send offsets and commit one transaction.", &m->commit_time, l,
	                  1e6);
	kreq__hist_render(out, "kreq_worker_txn_batch_size", "Results per committed transaction.",
	                  &m->batch_size, l, 100);
}

void kreq__worker_metrics_render(const kreq__worker_metrics_t *m, uint64_t in_progress,
                                 const char *service, const char *worker, FILE *out)
{
	char l[600];
	snprintf(l, sizeof(l), "service=\"%s\",worker=\"%s\"", service, worker);
	kreq__prom_gauge(out, "kreq_worker_in_flight", "Requests in progress now.", in_progress, l);
	kreq__prom_gauge(out, "kreq_worker_dedup_bytes", "Memory held by the deduplication store.",
	                 load(&m->dedup_bytes), l);
	render_outcomes(m, l, out);
	for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++)
		kreq__prom_counter(out, counters[i].name, counters[i].help,
		                   field(m, counters[i].field), l);
	render_histograms(m, l, out);
}
