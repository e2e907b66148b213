/*
 * txn.c — the worker's Kafka transactions: begin, commit (with the
 * consumed offsets: send_offsets_to_transaction), abort, and what a failed
 * step does; in light mode (no transactions) the asynchronous offset
 * commit. Loop thread. The producer it runs on is kafka.c's.
 *
 * Transaction errors follow librdkafka's documented recipe
 * (rdkafka.h, "Transactional producer API") with one exception, the
 * fencing rule:
 * - an error that requires abort (the transaction failed, and the Kafka
 *   brokers said so) -> abort_transaction() and rewind to the committed
 *   offsets;
 * - a fatal error (fenced by a newer instance, or similar) -> re-create
 *   the producer and init_transactions() again, then rewind;
 * - an INDEFINITE outcome -> fence: re-create the producer (a new epoch)
 *   and rewind, never retry in the old epoch. librdkafka calls these
 *   "retriable" (a send_offsets, commit or abort that timed out, whose
 *   requests may still be on their way); a produce that timed out or
 *   failed in transport arrives as a failed delivery report, which fails
 *   the transaction and re-creates the producer the same way (abort_open).
 *   Retrying in the old epoch is what the classic transaction protocol
 *   cannot survive: a delayed EndTxn or Produce of this transaction may
 *   land in the next one of the same epoch and commit or abort it in part
 *   (Jepsen, Bufstream 0.1.0, 2024). The new producer's init_transactions()
 *   bumps the epoch: the transaction coordinator first completes or aborts
 *   what the old epoch left open, and anything of the old epoch that
 *   arrives later is refused. The rewind then reads the committed offsets
 *   (stable ones: isolation.level=read_committed) and the dedup state is
 *   rebuilt from the results topic, so whichever way the old transaction
 *   ended, what it committed is answered from its results and what it did
 *   not is redone.
 * The rule's second half: librdkafka resends a request by itself after a
 * request timeout or a broken connection (it closes the connection first),
 * and a commit can then succeed while the first EndTxn or Produce is still
 * on its way: it would land in the next transaction of the same epoch
 * (test_netfault late_endtxn tore transactions so, 1 run in 3). So every
 * socket the transactional producer closes is counted (on_txn_close, kafka.c), and
 * a transaction during which one closed (begin to the end of its commit or
 * abort) is followed by a fence even when it succeeded: the next
 * transaction runs in a new epoch, where the late request is refused. A
 * close outside a transaction cannot leave one of its requests behind: a
 * request resent without a close had its answer.
 *
 * A transaction is begun ahead, when the loop is about to sleep with none
 * open (kreq__txn_prebegin): rd_kafka_begin_transaction() sends nothing to
 * Kafka but waits for librdkafka's main thread, 80-90 us that were on
 * every call's path at low load. Until a record takes it into use
 * (kreq__txn_begin) it holds nothing, and counts as not there: no commit
 * is due, the gap after the previous one still holds records back, an
 * abort leaves it open, and the fencing rule counts closes from its use.
 * Whatever ends the producer ends it too; librdkafka ends an empty one
 * without a word to the transaction coordinator.
 */
#include <stdio.h>

#include "broker/worker/worker_int.h"
#include "common/conf.h"
#include "common/hoptrace.h"
#include "common/internal.h"

#define KREQ__FENCED_MAX       3 /* fencings within KREQ__FENCED_WINDOW_MS: stop */
#define KREQ__FENCED_WINDOW_MS 60000

/* A fatal error that says another producer took over the transactional.id. */
static bool fenced(kreq_worker_t *s, const rd_kafka_error_t *e)
{
	rd_kafka_resp_err_t code = rd_kafka_error_code(e);
	if (code == RD_KAFKA_RESP_ERR__FENCED || code == RD_KAFKA_RESP_ERR_PRODUCER_FENCED ||
	    code == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH)
		return true;
	return rd_kafka_fatal_error(s->producer, NULL, 0) == RD_KAFKA_RESP_ERR__FENCED;
}

/* Being fenced is how a restarted worker retires its stale predecessor,
 * and re-creating the producer (which fences the newer one in turn) is
 * right once. Two live workers with the same client.id share the
 * transactional.id and would fence each other forever: the third fencing
 * within a minute stops this worker instead, naming the cause. The group
 * fences them too (member.c, counted there): one may reach its third
 * fencing here while the other reaches its third there, and both stop,
 * each naming the cause (test_worker test_duplicate_client_id). */
static bool fenced_too_often(kreq_worker_t *s)
{
	int64_t now = kreq__mono_ns() / 1000000;
	if (now - s->fenced_since_ms > KREQ__FENCED_WINDOW_MS) {
		s->fenced_since_ms = now;
		s->fenced_count = 0;
	}
	if (++s->fenced_count < KREQ__FENCED_MAX)
		return false;
	kreq__loop_fatal(s, KREQ_ECONF,
	                 "fenced %d times within %d s by another producer with transactional.id "
	                 "%s: is another worker running with client.id %s? Each worker needs its "
	                 "own client.id",
	                 s->fenced_count, KREQ__FENCED_WINDOW_MS / 1000, s->txn_id, s->client_id);
	return true;
}

/* After a transaction ended well (committed or aborted): if a socket of
 * the producer closed during it, a request of it may still arrive late:
 * fence now, before the next transaction (the rule's second half). What
 * the transaction did stands: no rewind, unless no producer can be had. */
static void fence_if_closed(kreq_worker_t *s, const char *what)
{
	uint64_t closes = atomic_load_explicit(&s->txn_socket_closes, memory_order_relaxed);
	if (!s->producer || closes == s->txn_closes_at_begin)
		return;
	kreq__log(s->conf, 4, "worker",
	          "%s, but %llu connection(s) of the producer closed during the transaction: "
	          "fencing it (new epoch), so that none of its requests can land in the next",
	          what, (unsigned long long)(closes - s->txn_closes_at_begin));
	atomic_fetch_add_explicit(&s->m.txn_fences, 1, memory_order_relaxed);
	kreq__kafka_producer_reset(s);
	if (!s->producer)
		s->rewind_needed = true; /* the loop waits for one (rewind_all) */
}

/* Ends the open transaction without committing it. First the queued
 * delivery reports are served: a failed one names the record at fault
 * (faults.h) and marks the transaction failed. After a failed output the
 * producer is re-created instead of aborting: librdkafka keeps the failed
 * message's sequence number, and the abort then hung (30 s, "retry call
 * to resume") or the next transaction failed as well ("skipped sequence
 * numbers", or its messages timed out waiting for an epoch bump), taking
 * innocent requests with it (measured with a reply over its topic's
 * max.message.bytes). The new producer's init_transactions() aborts the
 * old one's transaction (same transactional.id). Otherwise the abort is
 * retried while librdkafka says it may be resumed, and a failed abort
 * also re-creates the producer. */
static void abort_open(kreq_worker_t *s)
{
	rd_kafka_poll(s->producer, 0);
	if (s->txn_failed) {
		kreq__kafka_producer_reset(s);
		return;
	}
	rd_kafka_error_t *ae = rd_kafka_abort_transaction(s->producer, s->txn_call_ms);
	if (!ae)
		fence_if_closed(s, "aborted");
	if (ae) { /* not retried: its outcome is unknown (the fencing rule, above) */
		kreq__log(s->conf, 4, "worker", "abort_transaction: %s%s: fencing the producer",
		          rd_kafka_error_string(ae),
		          rd_kafka_error_is_retriable(ae) ? " (outcome unknown)" : "");
		if (rd_kafka_error_is_retriable(ae))
			atomic_fetch_add_explicit(&s->m.txn_fences, 1, memory_order_relaxed);
		rd_kafka_error_destroy(ae);
		kreq__kafka_producer_reset(s);
	}
}

/* The open transaction is over (committed, aborted, or failed). */
static void txn_ended(kreq_worker_t *s)
{
	s->txn_open = s->txn_used = false;
	s->txn_end_ns = kreq__mono_ns(); /* markers follow: see worker.txn.gap.us */
	s->txn_failed = false;
}

static void txn_fail(kreq_worker_t *s, rd_kafka_error_t *e, const char *what)
{
	kreq__log(s->conf, 4, "worker", "%s: %s%s", what, rd_kafka_error_string(e),
	          rd_kafka_error_is_fatal(e) ? " (fatal)" : "");
	atomic_fetch_add_explicit(&s->m.txn_aborts, 1, memory_order_relaxed);
	if (rd_kafka_error_is_fatal(e) && fenced(s, e) && fenced_too_often(s)) {
		/* stopping: the loop ends and closes the producer */
	} else if (rd_kafka_error_is_fatal(e)) {
		kreq__kafka_producer_reset(s);
	} else if (rd_kafka_error_is_retriable(e)) { /* outcome unknown: fence */
		kreq__log(s->conf, 4, "worker",
		          "%s: outcome unknown: fencing the producer (new epoch) and rewinding, "
		          "never retrying in the old epoch",
		          what);
		atomic_fetch_add_explicit(&s->m.txn_fences, 1, memory_order_relaxed);
		kreq__kafka_producer_reset(s);
	} else {
		abort_open(s);
	}
	rd_kafka_error_destroy(e);
	txn_ended(s);
	s->rewind_needed = true;
}

void kreq__txn_abort(kreq_worker_t *s, const char *why)
{
	if (!s->txn_mode || !s->txn_used || !s->producer) {
		s->txn_failed = false; /* one begun ahead holds nothing: it stays */
		return;
	}
	kreq__log(s->conf, 5, "worker", "aborting the open transaction: %s", why);
	atomic_fetch_add_explicit(&s->m.txn_aborts, 1, memory_order_relaxed);
	abort_open(s);
	/* reports of the aborted transaction's outputs are served now, on the
	 * state they belong to, not after the rewind on its successor's */
	if (s->producer)
		rd_kafka_poll(s->producer, 0);
	txn_ended(s);
	s->rewind_needed = true;
}

static int open_txn(kreq_worker_t *s)
{
	rd_kafka_error_t *e = rd_kafka_begin_transaction(s->producer);
	if (e) {
		txn_fail(s, e, "begin_transaction");
		return KREQ_EKAFKA;
	}
	s->txn_open = true;
	s->txn_used = false;
	s->txn_failed = false;
	return KREQ_OK;
}

/* A transaction begun ahead holds nothing until its use: a socket that
 * closed before then cannot have carried one of its requests, so the
 * fencing rule counts closes from the use on. */
int kreq__txn_begin(kreq_worker_t *s)
{
	if (!s->txn_mode || s->txn_used)
		return KREQ_OK;
	if (!s->producer || s->rewind_needed) /* nothing is written until the rewind */
		return KREQ_EKAFKA;
	if (!s->txn_open && open_txn(s))
		return KREQ_EKAFKA;
	kreq__hop(W_BEGUN);
	s->txn_used = true;
	s->txn_closes_at_begin = atomic_load_explicit(&s->txn_socket_closes, memory_order_relaxed);
	s->txn_start_ns = kreq__mono_ns();
	s->txn_results = 0;
	return KREQ_OK;
}

void kreq__txn_prebegin(kreq_worker_t *s)
{
	if (s->txn_mode && !s->txn_open && s->producer && !s->rewind_needed && !s->fatal &&
	    !s->draining && !atomic_load(&s->stop))
		(void)open_txn(s);
}

/* The commit points that moved since the last commit; with all, every
 * known one (moved or not). */
static rd_kafka_topic_partition_list_t *offsets_to_commit(kreq_worker_t *s, bool all)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(s->nparts);
	for (int32_t p = 0; p < s->nparts; p++) {
		kreq__part_t *pt = s->parts[p];
		if (!pt)
			continue;
		int64_t cp = kreq__offsets_commit_point(&pt->offs);
		if (cp >= 0 && (all || cp != pt->committed))
			rd_kafka_topic_partition_list_add(l, s->req_topic, p)->offset = cp;
	}
	return l;
}

/* What a transaction commits with: the commit points that moved, or, when
 * none did (an earlier request of each partition still runs), the
 * unchanged ones. Never none: the offsets are what makes Kafka's group
 * coordinator check, at the commit, that this worker still owns its
 * partitions (TxnOffsetCommit carries the member id and generation,
 * KIP-447). A transaction without them commits unchecked: a worker cut
 * off from Kafka longer than its session timeout, whose commit waited out
 * the cut, committed the Results of requests that the partitions' new
 * owner had redone and answered meanwhile, two committed executions of
 * one idempotency key (test_netfault: partition_write 4 runs in 4, the
 * partition case 2 in 14). */
static rd_kafka_topic_partition_list_t *txn_offsets(kreq_worker_t *s)
{
	rd_kafka_topic_partition_list_t *l = offsets_to_commit(s, false);
	if (l->cnt)
		return l;
	rd_kafka_topic_partition_list_destroy(l);
	return offsets_to_commit(s, true);
}

static void offsets_committed(kreq_worker_t *s, const rd_kafka_topic_partition_list_t *l)
{
	for (int i = 0; i < l->cnt; i++) {
		kreq__part_t *pt = s->parts[l->elems[i].partition];
		if (pt)
			pt->committed = l->elems[i].offset;
		kreq__faults_committed(&s->faults, l->elems[i].partition, l->elems[i].offset);
	}
}

/* send_offsets_to_transaction then commit_transaction, each once: an
 * error, retriable or not, goes to txn_fail (the fencing rule). */
static rd_kafka_error_t *send_and_commit(kreq_worker_t *s, rd_kafka_topic_partition_list_t *l)
{
	rd_kafka_consumer_group_metadata_t *g = rd_kafka_consumer_group_metadata(s->consumer);
	rd_kafka_error_t *e =
	    rd_kafka_send_offsets_to_transaction(s->producer, l, g, s->txn_call_ms);
	rd_kafka_consumer_group_metadata_destroy(g);
	return e ? e : rd_kafka_commit_transaction(s->producer, s->txn_call_ms);
}

int kreq__txn_commit(kreq_worker_t *s)
{
	if (!s->txn_mode && s->consumer) { /* light: commit delivered offsets, asynchronously */
		rd_kafka_topic_partition_list_t *l = offsets_to_commit(s, false);
		if (l->cnt) {
			/* synchronous while stopping or revoking: the group must see it */
			rd_kafka_resp_err_t kerr = rd_kafka_commit(s->consumer, l, !s->draining);
			if (!kerr)
				offsets_committed(s, l);
		}
		rd_kafka_topic_partition_list_destroy(l);
		return KREQ_OK;
	}
	if (!s->txn_used || !s->producer) /* one begun ahead stays open */
		return KREQ_OK;
	if (s->txn_failed) { /* an output is missing from it: never commit */
		kreq__txn_abort(s, "an output of it failed");
		return KREQ_EKAFKA;
	}
	if (s->rewind_needed) { /* what it holds is redone from the committed offsets */
		kreq__txn_abort(s, "a rewind is pending");
		return KREQ_EKAFKA;
	}
	rd_kafka_topic_partition_list_t *l = txn_offsets(s);
	if (!l->cnt) { /* no partition of its records is owned any more */
		rd_kafka_topic_partition_list_destroy(l);
		kreq__txn_abort(s, "none of its partitions is assigned to this worker");
		return KREQ_EKAFKA;
	}
	int64_t t0 = kreq__mono_ns();
	kreq__hop(W_COMMIT);
	rd_kafka_error_t *e = send_and_commit(s, l);
	kreq__hop(W_COMMITTED);
	int err = KREQ_OK;
	if (e) {
		txn_fail(s, e, "committing the transaction");
		err = KREQ_EKAFKA;
	} else {
		offsets_committed(s, l);
		txn_ended(s);
		s->prev_results = s->txn_results;
		atomic_fetch_add_explicit(&s->m.txn_commits, 1, memory_order_relaxed);
		kreq__hist_observe(&s->m.commit_time, (kreq__mono_ns() - t0) / 1000);
		kreq__hist_observe(&s->m.batch_size, (int64_t)s->txn_results * 100);
		fence_if_closed(s, "committed");
	}
	rd_kafka_topic_partition_list_destroy(l);
	return err;
}
