/*
 * complete.c — what the loop does with a finished request: its reply to
 * the caller and to the duplicates that joined it, its stored result (if
 * the handler ran), its record's offset let pass; and requests past their
 * deadline plus worker.handler.grace.ms answered status 2 without waiting
 * for their handler. Loop thread.
 *
 * Why apart from loop.c: this is where a request's life ends, one rule
 * for every way it can end (handler reply, overdue, too large, poison):
 * completions from a partition state that was dropped meanwhile are
 * discarded (another incarnation: the record is redone), and a record
 * that made the worker rewind settles in a transaction of its own.
 */
#include <stdlib.h>
#include <string.h>

#include "broker/worker/loop_int.h"
#include "broker/worker/worker_int.h"
#include "common/conf.h"
#include "common/internal.h"

static kreq__handled_t outcome_of(const kreq_request_t *r)
{
	if (!r->started_ns)
		return r->status == KREQ_STATUS_DEADLINE    ? KREQ__H_DEADLINE
		       : r->status == KREQ_STATUS_CANCELLED ? KREQ__H_CANCELLED
		                                            : KREQ__H_SHUTTING_DOWN;
	if (r->status == KREQ_STATUS_CANCELLED)
		return KREQ__H_CANCELLED;
	if (r->status == KREQ_STATUS_TOO_LARGE)
		return KREQ__H_TOO_LARGE;
	if (r->status == KREQ_STATUS_POISON)
		return KREQ__H_POISON;
	return r->status == 0 ? KREQ__H_OK : KREQ__H_ERROR_STATUS;
}

/* Sends r's result (status, payload, error) to r and to the duplicates that
 * joined it, stores it when `store` (the handler ran), and lets their
 * offsets pass; counts outcome o. */
static void settle(kreq_worker_t *s, kreq__part_t *pt, kreq_request_t *r, kreq__handled_t o,
                   bool store, int64_t now)
{
	/* same incarnation: its RUNNING entry is still there (only a DONE
	 * entry expires or is evicted; dropping the state changes incarnation) */
	kreq__dd_entry_t *e = r->dd;
	atomic_fetch_add_explicit(&s->m.handled[o], 1, memory_order_relaxed);
	const Kreq__Request *q = r->op.u.req;
	/* the reply first: in light mode it then leaves before the result */
	kreq__send_reply(s, pt, &r->self, &q->idempotency_key, r->status, r->payload, r->len,
	                 r->error, false, now);
	const uint8_t *payload = r->payload;
	const char *error = r->error;
	if (store) {
		int64_t expires = now + s->retention_ms;
		kreq__store_result(s, pt, r, now, expires);
		/* the stored result takes the reply's buffers; joiners read them there */
		kreq__dedup_set_done_take(&pt->dd, e, r->status, r->payload, r->len, r->error,
		                          expires);
		r->payload = NULL, r->error = NULL;
		payload = e->payload, error = e->error;
	} else {
		kreq__dedup_remove(&pt->dd, e);
	}
	kreq__slot_complete(pt, r->self.seq);
	for (kreq__target_t *t = r->joiners, *n; t; t = n) {
		n = t->next;
		kreq__send_reply(s, pt, t, &q->idempotency_key, r->status, payload, r->len, error,
		                 true, now);
		kreq__slot_complete(pt, t->seq);
		free(t);
	}
	r->joiners = NULL;
}

void kreq__apply_completion(kreq_worker_t *s, kreq_request_t *r, int64_t now)
{
	if (r->zombie) { /* abandoned and answered: its handler let go at last */
		kreq__request_free(r);
		return;
	}
	kreq__part_t *pt = kreq__part_get(s, r->partition);
	if (r->started_ns)
		kreq__hist_observe(&s->m.handler_time, (kreq__mono_ns() - r->started_ns) / 1000);
	if (!pt || pt->incarnation != r->incarnation || s->draining_abandon) {
		if (!r->started_ns) /* its recorded start never ran: not a crash */
			kreq__poison_unstarted(s, r);
		kreq__request_free(r); /* stale: the record will be redone */
		return;
	}
	if (s->draining && !r->started_ns && r->status == KREQ_STATUS_SHUTTING_DOWN) {
		/* not started before shutdown: left for the next owner, uncommitted */
		kreq__poison_unstarted(s, r);
		kreq__dedup_remove(&pt->dd, r->dd);
		kreq__request_free(r);
		return;
	}
	/* a record that made the worker rewind settles in a transaction of its
	 * own (faults.h): if it fails again, nothing else is redone with it */
	bool isolate = s->txn_mode && kreq__faults_find(&s->faults, r->partition, r->offset);
	if (isolate)
		kreq__txn_commit(s);
	settle(s, pt, r, outcome_of(r), r->started_ns && r->status != KREQ_STATUS_CANCELLED, now);
	kreq__request_free(r);
	if (isolate)
		kreq__txn_commit(s);
	kreq__dedup_bound(s, pt); /* last: it may evict what was just stored */
}

/* Requests past their deadline + worker.handler.grace.ms whose handler has
 * not replied: answered with status 2 now. A handler that had started gets
 * that answer stored as its result, like any other, so a retry is served
 * status 2 and the work never runs a second time while the first run may
 * still be going on (its late reply is refused). The request is retired:
 * its in-flight place and its record's offset are free; its structure
 * stays with the handler until that lets go (request.c). */
void kreq__expire_overdue(kreq_worker_t *s)
{
	int64_t now = kreq__now_ms();
	kreq_request_t *r;
	while ((r = kreq__overdue_pop(s, now))) {
		bool started;
		if (!kreq__request_abandon(r, &started))
			continue; /* it replied meanwhile: its completion is on the list */
		kreq__part_t *pt = kreq__part_get(s, r->partition);
		kreq__log(s->conf, 4, "worker",
		          "%s [%d] offset %lld: handler of %s %s by its deadline + "
		          "worker.handler.grace.ms (%lld ms): answered status 2",
		          s->req_topic, (int)r->partition, (long long)r->offset,
		          r->op.u.req->method, started ? "did not finish" : "did not start",
		          (long long)s->handler_grace_ms);
		kreq__request_retire(r); /* first: outcome counted means retired */
		if (pt && pt->incarnation == r->incarnation && !s->draining_abandon) {
			r->status = KREQ_STATUS_DEADLINE;
			r->error =
			    strdup(started ? "handler did not finish before the deadline"
			                   : "deadline exceeded before the work could start");
			bool isolate =
			    s->txn_mode && kreq__faults_find(&s->faults, r->partition, r->offset);
			if (isolate) /* as in kreq__apply_completion */
				kreq__txn_commit(s);
			settle(s, pt, r, started ? KREQ__H_OVERDUE : KREQ__H_DEADLINE, started,
			       now);
			if (isolate)
				kreq__txn_commit(s);
			kreq__dedup_bound(s, pt);
		} /* else stale: the record will be redone */
	}
}

/* Whether the list r holds at least n requests (counts no further). */
static bool at_least(const kreq_request_t *r, int64_t n)
{
	for (; r && n > 0; r = r->next)
		n--;
	return n <= 0;
}

bool kreq__process_completions(kreq_worker_t *s)
{
	kreq_request_t *r = kreq__completions_take(s);
	bool any = r != NULL;
	/* light mode under load: these replies go out with the results on the
	 * batching producer (kafka.c producer_start) */
	s->batching =
	    s->batch_producer && s->batch_threshold > 0 && at_least(r, s->batch_threshold);
	int64_t now = r ? kreq__now_ms() : 0;
	for (unsigned i = 1; r; i++) {
		kreq_request_t *next = r->next;
		if (i % 64 == 0) /* a batch takes a few ms: keep issued_at close */
			now = kreq__now_ms();
		kreq__apply_completion(s, r, now);
		r = next;
	}
	s->batching = false; /* other replies (answers, dedup hits) leave at once */
	return any;
}
