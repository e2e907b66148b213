/* metrics.c — see metrics.h. */
#include <inttypes.h>

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

/* The short name keeps the list of series below one line a name. */
static void counter(FILE *out, const char *name, const char *help, uint64_t v, const char *labels)
{
	kreq__prom_counter(out, name, help, v, labels);
}

void kreq__worker_metrics_render(const kreq__worker_metrics_t *m, uint64_t in_progress,
                                 const char *service, const char *worker, FILE *out)
{
	char l[600];
	snprintf(l, sizeof(l), "service=\"%s\",worker=\"%s\"", service, worker);
	fprintf(out,
	        "# HELP kreq_worker_in_flight Requests in progress now.\n"
	        "# TYPE kreq_worker_in_flight gauge\nkreq_worker_in_flight{%s} %" PRIu64 "\n",
	        l, in_progress);
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
	counter(out, "kreq_worker_dedup_hits_total",
	        "Requests answered from the deduplication store without running the handler.",
	        load(&m->handled[KREQ__H_DEDUP]) + load(&m->handled[KREQ__H_JOINED]), l);
	counter(out, "kreq_worker_dedup_evicted_total",
	        "Stored results dropped entirely before their retention (no longer findable: "
	        "retries of those keys run again).",
	        load(&m->dedup_evicted), l);
	fprintf(out,
	        "# HELP kreq_worker_dedup_bytes Memory held by the deduplication store.\n"
	        "# TYPE kreq_worker_dedup_bytes gauge\nkreq_worker_dedup_bytes{%s} %" PRIu64 "\n",
	        l, load(&m->dedup_bytes));
	counter(out, "kreq_worker_cancels_total", "Cancel messages received.", load(&m->cancels),
	        l);
	counter(out, "kreq_worker_rebalances_total", "Partition assignments received.",
	        load(&m->rebalances), l);
	counter(out, "kreq_worker_txn_commits_total", "Transactions committed.",
	        load(&m->txn_commits), l);
	counter(out, "kreq_worker_txn_aborts_total",
	        "Transactions aborted (the worker rewound to the committed offsets).",
	        load(&m->txn_aborts), l);
	counter(out, "kreq_worker_producer_resets_total",
	        "Producer re-created: a fatal error, a failed output, or a fencing.",
	        load(&m->producer_resets), l);
	counter(out, "kreq_worker_txn_fences_total",
	        "Producer fenced (new epoch): a transaction call's outcome was unknown "
	        "(timed out; the worker rewound), or a producer connection closed during a "
	        "transaction (a request of it could arrive late).",
	        load(&m->txn_fences), l);
	counter(out, "kreq_worker_results_loaded_total",
	        "Stored results read from the results topic while rebuilding.",
	        load(&m->results_loaded), l);
	counter(out, "kreq_worker_results_ignored_total",
	        "Results in the results topic the rebuild ignored because their signing key is "
	        "not in worker.result.signers.",
	        load(&m->results_ignored), l);
	counter(out, "kreq_worker_produce_errors_total", "Records Kafka failed to accept.",
	        load(&m->produce_errors), l);
	counter(out, "kreq_worker_replies_batched_total",
	        "Light mode: replies sent through the batching producer because at least "
	        "worker.batch.threshold results were applied together.",
	        load(&m->replies_batched), l);
	counter(
	    out, "kreq_worker_dedup_ghosted_total",
	    "Stored results that left memory (their key over worker.dedup.key.max.bytes, or "
	    "the biggest key at worker.dedup.max.bytes) but stay findable in the results topic.",
	    load(&m->dedup_ghosted), l);
	counter(out, "kreq_worker_dedup_read_back_total",
	        "Retries answered by reading their stored result back from the results topic.",
	        load(&m->ghost_reads), l);
	counter(out, "kreq_worker_dedup_read_back_failures_total",
	        "Stored results that could not be read back (answered overloaded: retry later).",
	        load(&m->ghost_read_failures), l);
	counter(out, "kreq_worker_late_replies_total",
	        "Handler replies refused because the worker had already answered the request "
	        "with status 2 at its deadline + worker.handler.grace.ms.",
	        load(&m->late_replies), l);
	counter(out, "kreq_worker_rewinds_total",
	        "Rewinds to the committed offsets (after an aborted transaction or a failed "
	        "delivery).",
	        load(&m->rewinds), l);
	counter(out, "kreq_worker_reply_topic_missing_total",
	        "Replies not sent because their reply topic does not exist (the result and the "
	        "offset still commit: a retry from a new reply topic is a dedup hit).",
	        load(&m->reply_topic_missing), l);
	counter(out, "kreq_worker_attempts_written_total",
	        "Attempt records written to <prefix>.<service>.attempts before a handler started "
	        "(worker.poison.max.attempts).",
	        load(&m->attempts_written), l);
	counter(out, "kreq_worker_poison_total",
	        "Requests taken out of service with status 10 (poison) and written to "
	        "<prefix>.<service>.dead.",
	        load(&m->dead_letters), l);
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
