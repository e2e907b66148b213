/*
 * loop.c — the serving loop: one thread that consumes request records,
 * decides what each one gets, applies handler completions, and commits.
 *
 * Why one thread: the decisions that make replies exactly-once (is there a
 * stored result? is the key running? which offset may be committed?) read
 * and write the same per-partition state, and Kafka transactions are not
 * thread-safe to interleave. Keeping all of it on one thread makes those
 * decisions sequential without locks; only handlers run elsewhere.
 *
 * For every record the loop gathers facts (envelope_open, the dedup
 * store, the key's rate bucket, ...) and executes what the pure function
 * kreq__decide() makes of them: drop, cancel, answer, serve the stored
 * result, join the running request, or dispatch (record.c). A request outside the
 * worker's replay window (worker.max.deadline.ms, worker.max.request.age.ms),
 * signed for another service or off its idempotency key's partition is
 * dropped and counted, never answered. The rules and their
 * order are in broker/worker/decide.h (docs/broker-design.md has the rationale).
 * Outputs (replies, result records, reply.c) go into the open transaction; the
 * record's offset becomes committable once they are in it (offsets.h).
 *
 * This file keeps the loop itself (consume, apply completions, commit,
 * wait) and what changes the set of partitions under it (rebalance,
 * rewind, pause); the modules it runs are below it (loop_int.h): one
 * record (record.c), a request's end (complete.c), producing (reply.c)
 * and the partition state (parts.c).
 */
#include <errno.h>
#include <fnmatch.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "broker/worker/decide.h"
#include "broker/worker/loop_int.h"
#include "broker/worker/worker_int.h"
#include "common/conf.h"
#include "common/hoptrace.h"
#include "common/internal.h"
#include "common/partition.h"

#define KREQ__REWIND_RETRY_MS 500 /* a rewind Kafka refused: tried again after */

/* ---- rebalance, rewind, pause ------------------------------------------- */

static void drop_all(kreq_worker_t *s)
{
	for (int32_t p = 0; p < s->nparts; p++)
		kreq__part_drop(s, p);
}

static int assign_parts(kreq_worker_t *s, const rd_kafka_topic_partition_list_t *l)
{
	kreq__part_t **fresh = calloc((size_t)l->cnt + 1, sizeof(*fresh));
	int n = 0;
	if (!fresh)
		return KREQ_ENOMEM;
	for (int i = 0; i < l->cnt; i++) {
		int32_t p = l->elems[i].partition;
		if (p < 0 || p >= s->nparts)
			continue;
		kreq__part_drop(s, p);
		if (!(s->parts[p] = kreq__part_new(s, p))) {
			free(fresh);
			kreq__loop_fatal(s, KREQ_ENOMEM, "out of memory");
			return KREQ_ENOMEM;
		}
		fresh[n++] = s->parts[p];
	}
	int err = kreq__rebuild(s, fresh, n);
	if (!err)
		err = kreq__poison_load(s, fresh, n);
	for (int i = 0; err && i < n; i++) /* incomplete dedup stores serve nothing */
		kreq__part_drop(s, fresh[i]->id);
	free(fresh);
	return err;
}

static void block(kreq_worker_t *s, int64_t timeout_us);

static void flush_producer(rd_kafka_t *p)
{
	if (p) {
		rd_kafka_flush(p, 5000);
		rd_kafka_poll(p, 0);
	}
}

static void settle_outputs(kreq_worker_t *s)
{
	kreq__process_completions(s);
	/* light: delivery reports secure offsets (transactional: the commit) */
	if (!s->txn_mode)
		flush_producer(s->producer);
	flush_producer(s->batch_producer);
	kreq__poison_settle_unstarted(s); /* before the partitions are handed over */
}

/* Nothing new starts (queued requests are left uncommitted for the next
 * owner); running handlers get up to worker.shutdown.grace.ms to reply, and
 * their replies and results go into the open transaction. */
static void finish_in_flight(kreq_worker_t *s)
{
	bool was_draining = s->draining;
	s->draining = true;
	kreq__pool_drain(s);
	int64_t until = kreq__mono_ns() + s->grace_ms * 1000000LL;
	kreq__process_completions(s);
	while (!s->fatal && atomic_load(&s->in_progress) > 0 && kreq__mono_ns() < until) {
		block(s, 20000);
		kreq__process_completions(s);
		kreq__expire_overdue(s);
	}
	settle_outputs(s);
	if (atomic_load(&s->in_progress) > 0)
		kreq__log(s->conf, 4, "worker",
		          "abandoning %zu request(s) still running after worker.shutdown.grace.ms "
		          "(uncommitted: another worker redoes them)",
		          atomic_load(&s->in_progress));
	s->draining = was_draining;
}

/* Runs the requests whose starts were recorded since the last call (one
 * acknowledged round trip for all: broker/worker/poison.c). */
static void run_recorded(kreq_worker_t *s)
{
	for (kreq_request_t *r = kreq__poison_flush(s), *n; r; r = n) {
		n = r->next;
		kreq__dispatch(s, r);
	}
}

/* Requests in progress (running or queued, not retired) on the partitions
 * p with gone[p], in their current incarnation (abandoned ones of a state
 * already dropped, as at shutdown, are not waited for again). Records
 * drained unstarted leave this list although their offsets stay
 * uncommitted, so it, not the offset slots, says when the revoked
 * partitions are quiet. */
static size_t busy_in(kreq_worker_t *s, const bool *gone)
{
	size_t n = 0;
	pthread_mutex_lock(&s->ip_lock);
	for (const kreq_request_t *r = s->ip_head; r; r = r->ip_next) {
		int32_t p = r->partition;
		n += p >= 0 && p < s->nparts && gone[p] && s->parts[p] &&
		     s->parts[p]->incarnation == r->incarnation;
	}
	pthread_mutex_unlock(&s->ip_lock);
	return n;
}

/* An incremental (cooperative) revoke of the partitions in l: what was
 * not started there is left uncommitted for their next owner, what runs
 * there gets worker.shutdown.grace.ms to finish, then the transaction
 * (which covers every partition: the others' finished work too) commits,
 * and only the revoked partitions' state is dropped (what still runs
 * there is abandoned: cancelled, its completion discarded, redone by the
 * next owner from the committed offset). The other partitions are served
 * on; their handlers keep running throughout. */
static void revoke_parts(kreq_worker_t *s, const rd_kafka_topic_partition_list_t *l)
{
	bool *gone = calloc((size_t)s->nparts, sizeof(*gone));
	if (!gone) {
		kreq__loop_fatal(s, KREQ_ENOMEM, "out of memory");
		return;
	}
	for (int i = 0; i < l->cnt; i++)
		if (l->elems[i].partition >= 0 && l->elems[i].partition < s->nparts)
			gone[l->elems[i].partition] = true;
	kreq__poison_unhold_in(s, gone); /* a held suspect there: redone by the next owner */
	run_recorded(s);                 /* started: they finish within the grace period */
	bool was_draining = s->draining;
	s->draining = true; /* unstarted ones are left for the next owner */
	kreq__pool_drain_partitions(s, gone);
	int64_t until = kreq__mono_ns() + s->grace_ms * 1000000LL;
	for (;;) {
		kreq__process_completions(s);
		kreq__expire_overdue(s);
		if (!busy_in(s, gone) || s->fatal || kreq__mono_ns() >= until)
			break;
		block(s, 20000);
	}
	settle_outputs(s);
	kreq__txn_commit(s); /* a failure flags a rewind of what stays */
	s->draining = was_draining;
	for (int32_t p = 0; p < s->nparts; p++)
		if (gone[p])
			kreq__part_drop(s, p);
	free(gone);
	kreq__log(s->conf, 6, "worker", "revoked %d partition(s) of %s", l->cnt, s->req_topic);
}

/* The assignment was lost (librdkafka's rd_kafka_assignment_lost(): the
 * session timed out, e.g. while Kafka was out of reach): the partitions
 * may already be another worker's, which redoes whatever this one has not
 * committed. So nothing is committed and nothing waits: the open
 * transaction is aborted (what it holds are executions the new owner
 * runs again: committed, a key would have two Results), recorded and
 * running requests are abandoned, and the partitions' state is dropped.
 * librdkafka loses the whole assignment at once; a partition that stays
 * is rewound to its committed offset (the abort's rewind). A commit, had
 * it been tried, would be refused by the group (the member id is gone,
 * txn.c txn_offsets) after the running handlers' grace period. */
static void lose_parts(kreq_worker_t *s, const rd_kafka_topic_partition_list_t *l)
{
	kreq__log(s->conf, 4, "worker",
	          "lost %d partition(s) of %s (the group's session timed out): aborting what "
	          "was not committed, their next owner redoes it",
	          l->cnt, s->req_topic);
	kreq__txn_abort(s, "the assignment was lost");
	kreq__faults_rewound(&s->faults);
	kreq__poison_discard(s); /* not started: the next owner runs them */
	for (int i = 0; i < l->cnt; i++)
		if (l->elems[i].partition >= 0 && l->elems[i].partition < s->nparts)
			kreq__part_drop(s, l->elems[i].partition);
}

/* The group's rebalance protocol is cooperative (cooperative-sticky):
 * assignments and revocations are increments, not the whole set.
 * librdkafka returns NULL while no protocol is known (a consumer closed
 * before it joined). */
static bool cooperative(rd_kafka_t *rk)
{
	const char *p = rd_kafka_rebalance_protocol(rk);
	return p && !strcmp(p, "COOPERATIVE");
}

static void incremental(kreq_worker_t *s, rd_kafka_error_t *e, const char *what)
{
	if (!e)
		return;
	kreq__loop_fatal(s, KREQ_EKAFKA, "%s: %s", what, rd_kafka_error_string(e));
	rd_kafka_error_destroy(e);
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *l, void *opaque)
{
	kreq_worker_t *s = opaque;
	if (s->member_renewing) { /* the fenced consumer's close: its state is gone */
		if (cooperative(rk))
			rd_kafka_error_destroy(rd_kafka_incremental_unassign(rk, l));
		else
			rd_kafka_assign(rk, NULL);
		return;
	}
	if (cooperative(rk)) {
		if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
			kreq__log(s->conf, 6, "worker", "assigned %d partition(s) of %s", l->cnt,
			          s->req_topic);
			assign_parts(s, l); /* only these: the others are served on */
			incremental(s, rd_kafka_incremental_assign(rk, l), "incremental assign");
			/* at worker.max.in.flight the new ones wait too; otherwise each
			 * is resumed: one revoked while paused comes back paused */
			if (s->paused)
				rd_kafka_pause_partitions(rk, l);
			else
				rd_kafka_resume_partitions(rk, l);
			atomic_fetch_add_explicit(&s->m.rebalances, 1, memory_order_relaxed);
		} else {
			if (rd_kafka_assignment_lost(rk))
				lose_parts(s, l);
			else
				revoke_parts(s, l);
			incremental(s, rd_kafka_incremental_unassign(rk, l),
			            "incremental unassign");
		}
		atomic_store_explicit(&s->ready, !s->fatal && !atomic_load(&s->stop),
		                      memory_order_release);
		return;
	}
	if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
		kreq__log(s->conf, 6, "worker", "assigned %d partition(s) of %s", l->cnt,
		          s->req_topic);
		assign_parts(s, l);
		rd_kafka_assign(rk, l);
		rd_kafka_resume_partitions(rk, l); /* paused before the revoke: still paused */
		s->paused = false;
		atomic_store_explicit(&s->ready, !s->fatal && !atomic_load(&s->stop),
		                      memory_order_release);
		/* counted once serving: rebalances_total >= 1 implies ready */
		atomic_fetch_add_explicit(&s->m.rebalances, 1, memory_order_relaxed);
		return;
	}
	/* revoked (or a rebalance error): let running handlers finish (within
	 * the grace period), secure what is complete, drop the rest */
	atomic_store_explicit(&s->ready, false, memory_order_release);
	if (rd_kafka_assignment_lost(rk)) {
		lose_parts(s, l);
		drop_all(s);
		s->rewind_needed = s->txn_mode && !s->producer; /* one is re-created first */
		rd_kafka_assign(rk, NULL);
		return;
	}
	kreq__poison_unhold(s); /* a suspect that did not start: redone by the next owner */
	run_recorded(s);        /* started: they finish within the grace period */
	bool was_draining = s->draining;
	s->draining = true; /* also: commit synchronously in light mode */
	finish_in_flight(s);
	kreq__txn_commit(s);
	s->draining = was_draining;
	drop_all(s);
	s->rewind_needed = s->txn_mode && !s->producer; /* one is re-created first */
	rd_kafka_assign(rk, NULL);
}

/* After an aborted transaction or a failed delivery: forget everything not
 * committed and continue from the committed offsets. Kafka being out of
 * reach does not stop the worker: without a producer (txn.c's fencing
 * rule) or the committed offsets the rewind stays pending, nothing is
 * consumed, and it is tried again at a later step (at most every
 * KREQ__REWIND_RETRY_MS). */
static void rewind_all(kreq_worker_t *s)
{
	int64_t now = kreq__mono_ns();
	if (now < s->rewind_retry_ns)
		return;
	/* first: nothing of the dropped state may commit (faults.h) */
	kreq__txn_abort(s, "rewinding to the committed offsets");
	if (s->txn_mode && kreq__kafka_producer_restart(s)) {
		s->rewind_retry_ns = now + KREQ__REWIND_RETRY_MS * 1000000LL;
		return; /* still pending */
	}
	s->rewind_needed = false;
	kreq__faults_rewound(&s->faults);
	atomic_fetch_add_explicit(&s->m.rewinds, 1, memory_order_relaxed);
	if (rd_kafka_fatal_error(s->consumer, NULL, 0)) { /* fenced from the group */
		kreq__member_fatal(s);
		return;
	}
	rd_kafka_topic_partition_list_t *l = NULL;
	if (rd_kafka_assignment(s->consumer, &l) || !l)
		return;
	kreq__log(s->conf, 5, "worker", "rewinding %d partition(s) to their committed offsets",
	          l->cnt);
	drop_all(s);
	if (l->cnt == 0) { /* nothing assigned (cooperative: possible), nothing to seek */
		rd_kafka_topic_partition_list_destroy(l);
		return;
	}
	if (assign_parts(s, l) == KREQ_OK &&
	    rd_kafka_committed(s->consumer, l, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
		for (int i = 0; i < l->cnt; i++)
			if (l->elems[i].offset < 0)
				l->elems[i].offset = RD_KAFKA_OFFSET_BEGINNING;
		rd_kafka_error_t *e = rd_kafka_seek_partitions(s->consumer, l, 10000);
		if (e) {
			kreq__loop_fatal(s, KREQ_EKAFKA, "seeking back to committed offsets: %s",
			                 rd_kafka_error_string(e));
			rd_kafka_error_destroy(e);
		}
		rd_kafka_resume_partitions(s->consumer, l); /* also one paused before a revoke */
		s->paused = false;
	} else if (!s->fatal && !atomic_load(&s->stop)) {
		kreq__log(s->conf, 4, "worker",
		          "cannot read the committed offsets to rewind: tried again in %d ms",
		          KREQ__REWIND_RETRY_MS);
		s->rewind_needed = true;
		s->rewind_retry_ns = kreq__mono_ns() + KREQ__REWIND_RETRY_MS * 1000000LL;
	}
	rd_kafka_topic_partition_list_destroy(l);
}

/* The group fenced this worker's consumer (member.c): forget everything
 * not committed, as a rewind, and rejoin with a new consumer. */
static void member_renew(kreq_worker_t *s)
{
	s->member_fenced = false;
	atomic_store_explicit(&s->ready, false, memory_order_release);
	kreq__txn_abort(s, "the group fenced this worker");
	s->rewind_needed = s->txn_mode && !s->producer; /* one is re-created first */
	kreq__faults_rewound(&s->faults);
	kreq__poison_discard(s); /* not started: the next owner runs them */
	drop_all(s);
	s->paused = false;
	kreq__kafka_consumer_renew(s, on_rebalance);
}

/* Flow control pauses the consumer's current partitions. librdkafka keeps
 * an application's pause on a partition across its revocation and a later
 * assignment (rdkafka_assignment.c clears only its own, library pause), so
 * every assignment (on_rebalance) and rewind resumes what it hands over
 * unless the worker is paused: a partition revoked while paused and given
 * back after the worker resumed was never fetched again, its calls
 * unanswered for good (test_fault's rolling restart by SIGKILL, eager
 * protocol: 1 run in 6; test_worker's pause tests). */
static void set_paused(kreq_worker_t *s, bool pause)
{
	rd_kafka_topic_partition_list_t *l = NULL;
	/* no consumer: its re-creation failed (member_renew), the loop stops */
	if (!s->consumer || rd_kafka_assignment(s->consumer, &l) || !l)
		return;
	if (pause)
		rd_kafka_pause_partitions(s->consumer, l);
	else
		rd_kafka_resume_partitions(s->consumer, l);
	rd_kafka_topic_partition_list_destroy(l);
	s->paused = pause;
}

static void flow_control(kreq_worker_t *s)
{
	size_t n = atomic_load_explicit(&s->in_progress, memory_order_relaxed);
	bool blocked = kreq__poison_blocked(s); /* a suspect runs alone */
	bool room = kreq__request_room(s) && !blocked;
	if (!s->paused && !room) {
		set_paused(s, true);
		if (!blocked &&
		    n < s->max_in_flight) /* out of slots: abandoned handlers hold them */
			kreq__log(
			    s->conf, 3, "worker",
			    "%zu handler(s) answered at their deadline have still not returned "
			    "(worker.handler.grace.ms): the worker takes no new requests until "
			    "they do",
			    s->nslots - s->slot_nfree - n);
	} else if (s->paused && room && n <= s->max_in_flight * 3 / 4) {
		set_paused(s, false);
	}
}

/* ---- the loop ----------------------------------------------------------- */

static void drain_efd(kreq_worker_t *s)
{
	uint64_t v;
	while (read(s->efd, &v, sizeof(v)) == (ssize_t)sizeof(v))
		;
}

static void swap_keyring(kreq_worker_t *s)
{
	if (!atomic_load_explicit(&s->kr_swap, memory_order_acquire))
		return;
	pthread_mutex_lock(&s->kr_lock);
	kreq_keyring_t *old = s->kr;
	s->kr = s->kr_next;
	s->kr_next = NULL;
	atomic_store_explicit(&s->kr_swap, false, memory_order_release);
	pthread_mutex_unlock(&s->kr_lock);
	kreq_keyring_release(old);
	kreq__log(s->conf, 5, "worker", "keyring replaced");
}

/* While no record may be taken (paused: at the limit, or a poison suspect
 * runs alone), the consumer is still polled: rebalances and errors are
 * served there, and a member that stops polling holds up the whole group's
 * rebalance (or is evicted after max.poll.interval.ms). A record that
 * arrives anyway (fetched before the pause) is put back: its partition is
 * sought to it, so it is fetched again on resume. */
static void serve_events(kreq_worker_t *s)
{
	rd_kafka_message_t *m = rd_kafka_consumer_poll(s->consumer, 0);
	if (!m)
		return;
	if (m->err || !m->rkt) {
		kreq__handle_record(s, m);
		rd_kafka_message_destroy(m);
		return;
	}
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(l, rd_kafka_topic_name(m->rkt), m->partition)->offset =
	    m->offset;
	rd_kafka_message_destroy(m);
	rd_kafka_error_t *e = rd_kafka_seek_partitions(s->consumer, l, 5000);
	rd_kafka_topic_partition_list_destroy(l);
	if (e) { /* not put back: everything uncommitted is redone */
		kreq__log(s->conf, 4, "worker", "putting back a record fetched while paused: %s",
		          rd_kafka_error_string(e));
		rd_kafka_error_destroy(e);
		s->rewind_needed = true;
	}
}

/* Transactional mode: right after a transaction ended, its markers are
 * still being written and a new transaction would meet
 * CONCURRENT_TRANSACTIONS (retried 20 ms later by librdkafka): the next
 * one starts worker.txn.gap.us after it, with what arrived meanwhile. */
static int64_t gap_left_ns(const kreq_worker_t *s, int64_t now_ns)
{
	if (!s->txn_mode || s->txn_used)
		return 0;
	int64_t left = s->txn_end_ns + s->gap_ns - now_ns;
	return left > 0 ? left : 0;
}

/* Reads up to max records; true if the queue may hold more. */
static bool consume(kreq_worker_t *s, int max)
{
	int n = 0;
	bool more = true;
	if (gap_left_ns(s, kreq__mono_ns()) > 0) {
		s->gap_waited = true; /* the loop must look again when it ends */
		return false;
	}
	for (; more && n < max; n++) {
		/* at the limit, stop taking records: flow_control() pauses the
		 * partitions, which drops what was prefetched and refetches it from
		 * the consumed position on resume */
		if (!kreq__request_room(s) || s->rewind_needed || kreq__poison_blocked(s) ||
		    atomic_load_explicit(&s->in_progress, memory_order_relaxed) +
		            kreq__poison_pending(s) >=
		        s->max_in_flight) {
			if (s->paused && !s->rewind_needed)
				serve_events(s);
			break;
		}
		rd_kafka_message_t *m = rd_kafka_consumer_poll(s->consumer, 0);
		if (!m)
			break;
		kreq__hop(W_RECV);
		kreq__handle_record(s, m);
		rd_kafka_message_destroy(m);
		more = !s->fatal && !s->rewind_needed; /* what follows would be redone */
	}
	if (n)
		s->last_record_ns = kreq__mono_ns();
	return more && n == max;
}

/* Transactional mode, calls in flight together: a commit takes ~2 ms and
 * the callers it answers send their next requests ~0.3-0.7 ms after it
 * returned, just after worker.txn.gap.us. Committing as soon as the
 * requests already queued were handled split them into two groups taking
 * turns, each call waiting a whole commit more (16 in flight: ~10 results
 * per transaction, half the rate). So after a transaction of more than one
 * result the next stays open worker.txn.gather.us from its first record;
 * after a lone one (one call at a time) it commits at once. */
static int64_t gather_left_ns(const kreq_worker_t *s, int64_t now_ns)
{
	if (s->prev_results <= 1)
		return 0;
	int64_t left = s->txn_start_ns + s->gather_ns - now_ns;
	return left > 0 ? left : 0;
}

static bool commit_due(kreq_worker_t *s, int64_t now_ns)
{
	size_t busy = atomic_load_explicit(&s->in_progress, memory_order_relaxed);
	if (s->txn_mode) {
		if (!s->txn_used)
			return false;
		bool idle = busy == 0 && now_ns - s->last_record_ns >= s->linger_ms * 1000000 &&
		            gather_left_ns(s, now_ns) == 0;
		return idle || s->txn_results >= s->batch_max ||
		       now_ns - s->txn_start_ns >= s->batch_ms * 1000000;
	}
	/* light: offsets are only a restart point, committed every batch_ms */
	return now_ns - s->light_commit_ns >= s->batch_ms * 1000000;
}

/* How long the loop may sleep, in microseconds (at most 1 s). */
static int64_t wait_us(kreq_worker_t *s, int64_t now_ns)
{
	int64_t left = 1000, idle_us = INT64_MAX;
	if (s->txn_mode && s->txn_used) {
		left = s->batch_ms - (now_ns - s->txn_start_ns) / 1000000;
		if (atomic_load_explicit(&s->in_progress, memory_order_relaxed) == 0) {
			/* idle: the commit is due when both the linger and the gather end */
			int64_t linger = s->linger_ms * 1000000 - (now_ns - s->last_record_ns),
			        gather = gather_left_ns(s, now_ns);
			idle_us = ((linger > gather ? linger : gather) + 999) / 1000;
		}
	} else if (!s->txn_mode && s->batch_ms > 0) {
		left = s->batch_ms - (now_ns - s->light_commit_ns) / 1000000;
	} /* light with worker.txn.batch.ms=0: offsets go at every step, and
	     an idle loop sleeps like any other (a zero timeout made it spin) */
	int64_t overdue = kreq__overdue_next_ms(s, kreq__now_ms());
	if (overdue < left)
		left = overdue;
	left = left < 0 ? 0 : left > 1000 ? 1000000 : left * 1000;
	if (idle_us < left)
		left = idle_us < 0 ? 0 : idle_us;
	if (s->gap_waited) { /* records may wait: wake when the gap ends, even if it just did */
		s->gap_waited = false;
		int64_t gap = (gap_left_ns(s, now_ns) + 999) / 1000;
		if (gap < left)
			left = gap;
	}
	return left;
}

static void housekeeping(kreq_worker_t *s, int64_t now_ns)
{
	if (now_ns - s->housekeeping_ns < 1000000000LL)
		return;
	s->housekeeping_ns = now_ns;
	int64_t now = kreq__now_ms();
	for (int32_t p = 0; p < s->nparts; p++)
		if (s->parts[p])
			kreq__dedup_expire(&s->parts[p]->dd, now);
	kreq__dd_tenants_sweep(&s->dd_tenants);
}

static void step(kreq_worker_t *s, bool fetch, bool *more)
{
	drain_efd(s);
	swap_keyring(s);
	if (kreq__process_completions(s))
		s->last_record_ns = kreq__mono_ns();
	*more = fetch && consume(s, 1000);
	run_recorded(s);
	if (s->member_fenced && !s->fatal)
		member_renew(s);
	if (s->producer)
		rd_kafka_poll(s->producer, 0);
	if (s->batch_producer)
		rd_kafka_poll(s->batch_producer, 0);
	kreq__process_completions(s);
	kreq__expire_overdue(s);
	if (s->dd_bound_due) { /* not from the delivery report: a settle may be under way */
		s->dd_bound_due = false;
		kreq__dedup_bound(s, NULL);
	}
	/* no producer (txn.c's fencing rule): nothing is consumed until a
	 * rewind re-created one, whatever cleared the flag meanwhile */
	if (s->txn_mode && !s->producer && !s->fatal)
		s->rewind_needed = true;
	if (s->rewind_needed && !s->fatal)
		rewind_all(s);
	if (fetch)
		flow_control(s);
	int64_t now = kreq__mono_ns();
	if (commit_due(s, now)) {
		kreq__txn_commit(s);
		s->light_commit_ns = now;
		if (s->rewind_needed && !s->fatal)
			rewind_all(s);
	}
	kreq__txn_prebegin(s); /* before the loop sleeps: off the next request's path */
	housekeeping(s, now);
}

static void block(kreq_worker_t *s, int64_t timeout_us)
{
	struct pollfd pfd = {.fd = s->efd, .events = POLLIN};
	struct timespec ts = {.tv_sec = timeout_us / 1000000,
	                      .tv_nsec = timeout_us % 1000000 * 1000};
	if (ppoll(&pfd, 1, &ts, NULL) < 0 && errno != EINTR)
		kreq__loop_fatal(s, KREQ_EIO, "poll: %s", strerror(errno));
}

/* Stop: no more fetching; in-flight work may finish within the grace
 * period and is committed; what is still running then is abandoned. */
static void shut_down(kreq_worker_t *s)
{
	atomic_store_explicit(&s->ready, false, memory_order_release);
	kreq__log(s->conf, 6, "worker", "stopping: %zu request(s) in progress",
	          atomic_load(&s->in_progress));
	set_paused(s, true);
	finish_in_flight(s);
	s->draining = true;
	if (!s->fatal)
		kreq__txn_commit(s);
	s->draining_abandon = true;
	drop_all(s);
}

int kreq__loop_run(kreq_worker_t *s)
{
	s->loop_thread = pthread_self();
	atomic_store_explicit(&s->loop_running, true, memory_order_release);
	s->light_commit_ns = s->housekeeping_ns = kreq__mono_ns();
	if (kreq__kafka_start(s, on_rebalance) == 0 && kreq__pool_start(s) == 0) {
		kreq__log(s->conf, 6, "worker", "serving %s (%s mode) as %s", s->req_topic,
		          s->txn_mode ? "transactional" : "light", s->client_id);
		bool more = false;
		while (!s->fatal && !atomic_load(&s->stop)) {
			step(s, true, &more);
			if (!more && !s->fatal && !atomic_load(&s->stop))
				block(s, wait_us(s, kreq__mono_ns()));
		}
		shut_down(s);
	}
	kreq__kafka_close(s);
	drop_all(s);
	atomic_store_explicit(&s->loop_running, false, memory_order_release);
	return s->loop_err;
}
