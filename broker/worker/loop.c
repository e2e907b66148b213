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
 * result, join the running request, or dispatch. A request outside the
 * worker's replay window (server.max.deadline.ms, server.max.request.age.ms),
 * signed for another service or off its idempotency key's partition is
 * dropped and counted, never answered. The rules and their
 * order are in broker/worker/decide.h (docs/broker-design.md has the rationale).
 * Outputs (replies, result records) go into the open transaction; the
 * record's offset becomes committable once they are in it (offsets.h).
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
#include "broker/worker/server_int.h"
#include "common/conf.h"
#include "common/hoptrace.h"
#include "common/internal.h"
#include "common/partition.h"

#define KREQ__REWIND_RETRY_MS 500 /* a rewind Kafka refused: tried again after */

/* ---- partition state ---------------------------------------------------- */

static kreq__part_t *part_new(kreq_server_t *s, int32_t id)
{
	kreq__part_t *pt = calloc(1, sizeof(*pt));
	if (!pt || kreq__dedup_init(&pt->dd) || kreq__offsets_init(&pt->offs)) {
		if (pt) {
			kreq__dedup_clear(&pt->dd);
			free(pt);
		}
		return NULL;
	}
	pt->dd.shared = &s->dd_bytes;
	pt->dd.tenants = &s->dd_tenants;
	pt->id = id;
	pt->incarnation = ++s->next_incarnation;
	pt->committed = -1;
	return pt;
}

static void cancel_running(kreq__dd_entry_t *e, void *arg)
{
	(void)arg;
	if (e->state == KREQ__DD_RUNNING && e->running)
		atomic_store_explicit(&((kreq_request_t *)e->running)->cancelled, true,
		                      memory_order_release);
}

/* Drops a partition's state. Requests still running for it are flagged
 * cancelled; their completions will find no matching incarnation and be
 * discarded (their records are redone from the committed offset). */
static void part_drop(kreq_server_t *s, int32_t id)
{
	kreq__part_t *pt = s->parts[id];
	if (!pt)
		return;
	kreq__dedup_each(&pt->dd, cancel_running, NULL);
	kreq__dedup_clear(&pt->dd);
	kreq__dd_tenants_sweep(&s->dd_tenants);
	atomic_store_explicit(&s->m.dedup_bytes, s->dd_bytes, memory_order_relaxed);
	kreq__offsets_clear(&pt->offs);
	kreq__poison_part_free(pt);
	free(pt);
	s->parts[id] = NULL;
}

static kreq__part_t *part_get(kreq_server_t *s, int32_t id)
{
	return id >= 0 && id < s->nparts ? s->parts[id] : NULL;
}

/* ---- producing replies and results --------------------------------------- */

static kreq__dr_t *dr_opaque(kreq_server_t *s, kreq__part_t *pt, uint64_t seq)
{
	if (s->txn_mode)
		return NULL;
	kreq__off_slot_t *sl = kreq__offsets_slot(&pt->offs, seq);
	kreq__dr_t *dr = sl ? kreq__dr_new(s) : NULL;
	if (!dr)
		return NULL;
	*dr = (kreq__dr_t){NULL, pt->id, pt->incarnation, seq, sl->offset};
	sl->pending++;
	return dr;
}

static int64_t offset_of(kreq__part_t *pt, uint64_t seq)
{
	kreq__off_slot_t *sl = kreq__offsets_slot(&pt->offs, seq);
	return sl ? sl->offset : -1;
}

/* A reply that cannot go anywhere: counted, logged at most every 10 s. */
static void reply_dropped(kreq_server_t *s, kreq__part_t *pt, const kreq__target_t *t)
{
	uint64_t n = atomic_fetch_add_explicit(&s->m.reply_topic_missing, 1, memory_order_relaxed);
	int64_t now = kreq__mono_ns();
	if (s->reply_missing_log_ns && now - s->reply_missing_log_ns < 10 * 1000000000LL)
		return;
	s->reply_missing_log_ns = now;
	kreq__log(s->conf, 4, "server",
	          "reply topic %s does not exist: the reply to record %s [%d] offset %lld is not "
	          "sent (its result is stored; %llu such replies so far; logged at most every "
	          "10 s)",
	          t->topic, s->req_topic, (int)pt->id, (long long)offset_of(pt, t->seq),
	          (unsigned long long)n + 1);
}

/* Seals and produces one reply to t, issued at now (ms). */
static void send_reply(kreq_server_t *s, kreq__part_t *pt, const kreq__target_t *t,
                       const ProtobufCBinaryData *idem, int32_t status, const void *payload,
                       size_t len, const char *error, bool from_dedup, int64_t now)
{
	if (t->no_reply) {
		reply_dropped(s, pt, t);
		return;
	}
	if (kreq__txn_begin(s))
		return;
	Kreq__Reply rp = KREQ__REPLY__INIT;
	rp.correlation_id = (ProtobufCBinaryData){sizeof(t->corr), (uint8_t *)t->corr};
	rp.status = status;
	rp.payload = (ProtobufCBinaryData){len, (uint8_t *)payload};
	rp.error = (char *)(error ? error : "");
	rp.from_dedup = from_dedup;
	rp.idempotency_key = *idem;
	rp.issued_at_ms = now;
	rp.deadline_ms = t->deadline_ms < rp.issued_at_ms ? rp.issued_at_ms : t->deadline_ms;
	rp.attempt = t->attempt;
	size_t blen;
	char why[256];
	int err = kreq__envelope_seal_to(s->kr, &s->lim, KREQ__KIND_REPLY, &rp.base, s->seal_buf,
	                                 s->lim.envelope_max, &blen, why, sizeof(why));
	if (err) { /* the record is redone, or answered: faults.h */
		kreq__output_failed(s, pt->id, offset_of(pt, t->seq),
		                    err == KREQ_EOVERSIZE ? RD_KAFKA_RESP_ERR_NO_ERROR
		                                          : RD_KAFKA_RESP_ERR__FAIL,
		                    t->topic, why);
		return;
	}
	if (kreq__kafka_produce(s, t->topic, s->batching, t->partition, t->corr, sizeof(t->corr),
	                        s->seal_buf, blen, dr_opaque(s, pt, t->seq), pt->id,
	                        offset_of(pt, t->seq)) != KREQ_OK)
		return;
	kreq__hop(W_REPLY);
	s->txn_results++;
	if (s->batching)
		atomic_fetch_add_explicit(&s->m.replies_batched, 1, memory_order_relaxed);
}

static void store_result(kreq_server_t *s, kreq__part_t *pt, kreq_request_t *r, int64_t now,
                         int64_t expires)
{
	const Kreq__Request *q = r->op.u.req;
	Kreq__Result rs = KREQ__RESULT__INIT;
	rs.request_digest = (ProtobufCBinaryData){32, r->digest};
	rs.status = r->status;
	rs.payload = (ProtobufCBinaryData){r->len, r->payload};
	rs.error = r->error ? r->error : "";
	rs.idempotency_key = q->idempotency_key;
	rs.request_key_id = r->op.key_id;
	rs.method = q->method;
	rs.issued_at_ms = now;
	rs.deadline_ms = expires;
	size_t blen;
	char why[256];
	if (kreq__txn_begin(s))
		return;
	int err = kreq__envelope_seal_to(s->kr, &s->lim, KREQ__KIND_RESULT, &rs.base, s->seal_buf,
	                                 s->lim.envelope_max, &blen, why, sizeof(why));
	if (err) { /* never commit an offset without its result */
		kreq__output_failed(s, pt->id, r->offset,
		                    err == KREQ_EOVERSIZE ? RD_KAFKA_RESP_ERR_NO_ERROR
		                                          : RD_KAFKA_RESP_ERR__FAIL,
		                    s->res_topic, why);
		return;
	}
	kreq__kafka_produce(s, s->res_topic, true, pt->id, r->ddkey, r->ddkey_len, s->seal_buf,
	                    blen, dr_opaque(s, pt, r->self.seq), pt->id, r->offset);
	kreq__hop(W_RESULT);
}

static void slot_complete(kreq__part_t *pt, uint64_t seq)
{
	kreq__off_slot_t *sl = kreq__offsets_slot(&pt->offs, seq);
	if (sl)
		sl->completed = true;
}

/* ---- completions -------------------------------------------------------- */

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
static void settle(kreq_server_t *s, kreq__part_t *pt, kreq_request_t *r, kreq__handled_t o,
                   bool store, int64_t now)
{
	/* same incarnation: its RUNNING entry is still there (only a DONE
	 * entry expires or is evicted; dropping the state changes incarnation) */
	kreq__dd_entry_t *e = r->dd;
	atomic_fetch_add_explicit(&s->m.handled[o], 1, memory_order_relaxed);
	const Kreq__Request *q = r->op.u.req;
	/* the reply first: in light mode it then leaves before the result */
	send_reply(s, pt, &r->self, &q->idempotency_key, r->status, r->payload, r->len, r->error,
	           false, now);
	const uint8_t *payload = r->payload;
	const char *error = r->error;
	if (store) {
		int64_t expires = now + s->retention_ms;
		store_result(s, pt, r, now, expires);
		/* the stored result takes the reply's buffers; joiners read them there */
		kreq__dedup_set_done_take(&pt->dd, e, r->status, r->payload, r->len, r->error,
		                          expires);
		r->payload = NULL, r->error = NULL;
		payload = e->payload, error = e->error;
	} else {
		kreq__dedup_remove(&pt->dd, e);
	}
	slot_complete(pt, r->self.seq);
	for (kreq__target_t *t = r->joiners, *n; t; t = n) {
		n = t->next;
		send_reply(s, pt, t, &q->idempotency_key, r->status, payload, r->len, error, true,
		           now);
		slot_complete(pt, t->seq);
		free(t);
	}
	r->joiners = NULL;
}

static void apply_completion(kreq_server_t *s, kreq_request_t *r, int64_t now)
{
	if (r->zombie) { /* abandoned and answered: its handler let go at last */
		kreq__request_free(r);
		return;
	}
	kreq__part_t *pt = part_get(s, r->partition);
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

/* Requests past their deadline + server.handler.grace.ms whose handler has
 * not replied: answered with status 2 now. A handler that had started gets
 * that answer stored as its result, like any other, so a retry is served
 * status 2 and the work never runs a second time while the first run may
 * still be going on (its late reply is refused). The request is retired:
 * its in-flight place and its record's offset are free; its structure
 * stays with the handler until that lets go (request.c). */
static void expire_overdue(kreq_server_t *s)
{
	int64_t now = kreq__now_ms();
	kreq_request_t *r;
	while ((r = kreq__overdue_pop(s, now))) {
		bool started;
		if (!kreq__request_abandon(r, &started))
			continue; /* it replied meanwhile: its completion is on the list */
		kreq__part_t *pt = part_get(s, r->partition);
		kreq__log(s->conf, 4, "server",
		          "%s [%d] offset %lld: handler of %s %s by its deadline + "
		          "server.handler.grace.ms (%lld ms): answered status 2",
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
			if (isolate) /* as in apply_completion */
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

static bool process_completions(kreq_server_t *s)
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
		apply_completion(s, r, now);
		r = next;
	}
	s->batching = false; /* other replies (answers, dedup hits) leave at once */
	return any;
}

/* ---- one record --------------------------------------------------------- */

static bool reply_topic_allowed(const kreq_server_t *s, const char *topic)
{
	for (size_t i = 0; i < s->nallow; i++)
		if (fnmatch(s->allow[i], topic, 0) == 0)
			return true;
	return false;
}

/* Whether a reply can go to partition of topic, per the topic's cached
 * metadata (broker/worker/topics.h). Unknown (Kafka did not answer) counts as
 * ok: a produce that then fails is a fault of the record (faults.h). */
typedef enum { KREQ__RP_OK, KREQ__RP_BAD_PARTITION, KREQ__RP_TOPIC_MISSING } kreq__rp_t;

static kreq__rp_t reply_partition_valid(kreq_server_t *s, const char *topic, int32_t partition)
{
	int n = kreq__topic_partitions_cached(s, topic, partition);
	return n == 0                    ? KREQ__RP_TOPIC_MISSING
	       : n > 0 && partition >= n ? KREQ__RP_BAD_PARTITION
	                                 : KREQ__RP_OK;
}

static const kreq__handler_t *handler_of(const kreq_server_t *s, const char *method)
{
	for (size_t i = 0; i < s->nhandlers; i++)
		if (!strcmp(s->handlers[i].method, method))
			return &s->handlers[i];
	return NULL;
}

/* The key's token bucket refilled to now (server.rate.limit.per.key), or
 * NULL when there is no limit or no memory for a new bucket. Reading it
 * takes nothing: a token is taken only when a handler is dispatched. */
static kreq__bucket_t *bucket_of(kreq_server_t *s, const char *key_id)
{
	if (s->rate <= 0)
		return NULL;
	kreq__bucket_t *b = s->buckets;
	while (b && strcmp(b->key_id, key_id))
		b = b->next;
	int64_t now = kreq__mono_ns();
	if (!b) {
		if (!(b = calloc(1, sizeof(*b))))
			return NULL;
		snprintf(b->key_id, sizeof(b->key_id), "%s", key_id);
		b->tokens = (double)s->rate;
		b->last_ns = now;
		b->next = s->buckets;
		s->buckets = b;
	}
	b->tokens += (double)(now - b->last_ns) * 1e-9 * (double)s->rate;
	if (b->tokens > (double)s->rate)
		b->tokens = (double)s->rate;
	b->last_ns = now;
	return b;
}

static void reject(kreq_server_t *s, kreq__reject_t why, const rd_kafka_message_t *m,
                   const char *detail)
{
	atomic_fetch_add_explicit(&s->m.rejected[why], 1, memory_order_relaxed);
	kreq__log(s->conf, 4, "server", "record %s [%d] offset %lld dropped: %s", s->req_topic,
	          (int)m->partition, (long long)m->offset, detail);
}

static void handle_cancel(kreq_server_t *s, kreq__part_t *pt, const kreq__opened_t *o)
{
	atomic_fetch_add_explicit(&s->m.cancels, 1, memory_order_relaxed);
	const Kreq__Cancel *c = o->u.cancel;
	if (c->idempotency_key.len == 0)
		return;
	uint8_t key[KREQ__DEDUP_KEY_MAX];
	size_t klen =
	    kreq__dedup_key(key, o->key_id, c->idempotency_key.data, c->idempotency_key.len);
	kreq__dd_entry_t *e = kreq__dedup_find(&pt->dd, key, klen);
	if (e && e->state == KREQ__DD_RUNNING && e->running) {
		kreq_request_t *r = e->running;
		if (!memcmp(r->self.corr, c->correlation_id.data, KREQ__CORR_ID_BYTES))
			atomic_store_explicit(&r->cancelled, true, memory_order_release);
	}
}

/* ---- where a request may be served (docs/protocol.md section 5) ---------- */

/* Signed for this service: a request replayed into another service's topic
 * is dropped, never answered ("unknown method" would fail the caller). */
static bool service_ok(const kreq_server_t *s, const Kreq__Request *q)
{
	return !strcmp(q->service, s->service);
}

/* On the partition its idempotency key maps to (the client's murmur2):
 * dedup state is per partition, so a replay onto another one would run
 * again. */
static bool partition_ok(const kreq_server_t *s, const rd_kafka_message_t *m,
                         const Kreq__Request *q)
{
	return kreq__partition_of(q->idempotency_key.data, q->idempotency_key.len, s->nparts) ==
	       m->partition;
}

/* The receiver's own bound on the replay window, whatever the signer
 * asked: KREQ__R_COUNT when inside it. */
static kreq__reject_t outside_window(const kreq_server_t *s, const Kreq__Request *q, int64_t now)
{
	if (q->deadline_ms - now > s->max_deadline_ms + s->lim.skew_ms)
		return KREQ__R_DEADLINE_TOO_FAR;
	if (now - q->issued_at_ms > s->max_age_ms + s->lim.skew_ms)
		return KREQ__R_TOO_OLD;
	return KREQ__R_COUNT;
}

/* Answers without running anything; counts the outcome. */
static void answer(kreq_server_t *s, kreq__part_t *pt, const kreq__target_t *t,
                   const Kreq__Request *q, kreq__handled_t outcome, int32_t status,
                   const char *error)
{
	atomic_fetch_add_explicit(&s->m.handled[outcome], 1, memory_order_relaxed);
	send_reply(s, pt, t, &q->idempotency_key, status, NULL, 0, error, false, kreq__now_ms());
}

/* Runs r's handler, unless an earlier pass found r's output too large for
 * Kafka (faults.h): then r is answered with status KREQ_STATUS_TOO_LARGE,
 * stored like a handler's error, without running the handler again. */
static void dispatch_or_refuse(kreq_server_t *s, kreq_request_t *r)
{
	const kreq__fault_t *f = kreq__faults_find(&s->faults, r->partition, r->offset);
	if (!f || f->kind != KREQ__FAULT_TOO_LARGE || !kreq__faults_exhausted(f)) {
		if (!kreq__poison_defer(s, r)) /* else dispatched once its start is recorded */
			kreq__dispatch(s, r);
		return;
	}
	char msg[KREQ__FAULT_WHY + 96];
	snprintf(msg, sizeof(msg), "the reply or result of this request is too large for Kafka: %s",
	         f->why);
	/* never dispatched: r holds no in-flight place (r->retired), nothing to give back */
	r->started_ns = kreq__mono_ns(); /* answered as if run: the error is stored */
	r->status = KREQ_STATUS_TOO_LARGE;
	r->error = strdup(msg);
	apply_completion(s, r, kreq__now_ms());
}

/* What handle_request learns about a Request while gathering its facts. */
typedef struct req_ctx {
	uint8_t key[KREQ__DEDUP_KEY_MAX];
	size_t klen;
	uint64_t hash;
	uint8_t digest[32];
	bool digested;
	kreq__dd_entry_t *e;
	const kreq__handler_t *h;
	kreq__bucket_t *b;
	kreq__rp_t rp; /* the reply topic's state (reply_partition_valid) */
} req_ctx_t;

/* Whether corr already gets r's reply (r itself or one of its joiners). */
static bool corr_waiting(const kreq_request_t *r, const uint8_t *corr)
{
	if (!memcmp(r->self.corr, corr, KREQ__CORR_ID_BYTES))
		return true;
	for (const kreq__target_t *t = r->joiners; t; t = t->next)
		if (!memcmp(t->corr, corr, KREQ__CORR_ID_BYTES))
			return true;
	return false;
}

/* The facts kreq__decide() needs about a verified Request (broker/worker/decide.h).
 * Side effect: an expired stored result for the key is removed. */
static void request_facts(kreq_server_t *s, kreq__part_t *pt, const kreq__opened_t *o,
                          const rd_kafka_message_t *m, int64_t now, req_ctx_t *c, kreq__facts_t *f)
{
	const Kreq__Request *q = o->u.req;
	c->klen =
	    kreq__dedup_key(c->key, o->key_id, q->idempotency_key.data, q->idempotency_key.len);
	c->hash = kreq__dedup_prefetch(&pt->dd, c->key, c->klen); /* loads during the checks */
	kreq__reject_t window = outside_window(s, q, now);
	f->deadline_too_far = window == KREQ__R_DEADLINE_TOO_FAR;
	f->too_old = window == KREQ__R_TOO_OLD;
	f->service_ok = service_ok(s, q);
	f->partition_ok = partition_ok(s, m, q);
	f->reply_topic_ok = reply_topic_allowed(s, q->reply_topic);
	/* only a request that is not dropped anyway, with an allowed reply
	 * topic, costs a lookup: the worker never asks Kafka about (or makes it
	 * create) a topic a request merely names, and a stream of replays of
	 * old requests costs no round trips */
	bool droppable = f->deadline_too_far || f->too_old || !f->partition_ok || !f->service_ok ||
	                 !f->reply_topic_ok; /* decide.h: dropped before the reply partition */
	c->rp =
	    droppable ? KREQ__RP_OK : reply_partition_valid(s, q->reply_topic, q->reply_partition);
	f->reply_partition_ok = c->rp != KREQ__RP_BAD_PARTITION;
	c->h = handler_of(s, q->method);
	f->handler_found = c->h != NULL;
	f->key_permitted = kreq_keyring_check_method(s->kr, o->key_id, q->method) == KREQ_OK;
	c->e = kreq__dedup_find_hashed(&pt->dd, c->hash, c->key, c->klen);
	if (c->e && c->e->state != KREQ__DD_RUNNING && c->e->expires_ms <= now) {
		kreq__dedup_remove(&pt->dd, c->e);
		c->e = NULL;
	}
	if (c->e) {
		kreq__request_digest(q, c->digest);
		c->digested = true;
		f->digest_match = sodium_memcmp(c->e->digest, c->digest, 32) == 0;
		/* a ghost is a stored result too (read back when served) */
		f->found = c->e->state == KREQ__DD_RUNNING ? KREQ__FOUND_RUNNING : KREQ__FOUND_DONE;
	}
	if (f->found == KREQ__FOUND_RUNNING) {
		const kreq_request_t *r = c->e->running;
		f->corr_waiting = corr_waiting(r, q->correlation_id.data);
		f->joiners = r->njoiners;
	}
	f->in_flight = atomic_load_explicit(&s->in_progress, memory_order_relaxed);
	f->max_in_flight = s->max_in_flight;
	c->b = bucket_of(s, o->key_id);
	f->rate_limit_on = s->rate > 0;
	f->tokens = c->b ? c->b->tokens : 0.0;
	f->budget_ms = q->deadline_ms - now;
	f->min_budget_ms = s->min_budget_ms;
	f->max_attempts = kreq__poison_max(s);
	f->attempts = f->max_attempts ? kreq__poison_count(pt, c->key, c->klen) : 0;
}

/* Adds t to the running request of entry e (counted in flight). */
static bool join(kreq_server_t *s, kreq__dd_entry_t *e, const kreq__target_t *t)
{
	kreq_request_t *r = e->running;
	kreq__target_t *j = malloc(sizeof(*j));
	if (!j)
		return false;
	*j = *t;
	j->next = r->joiners;
	r->joiners = j;
	r->njoiners++;
	atomic_fetch_add_explicit(&s->in_progress, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->m.handled[KREQ__H_JOINED], 1, memory_order_relaxed);
	return true;
}

/* A new RUNNING entry and its request (not yet dispatched), or NULL. */
static kreq_request_t *request_make(kreq_server_t *s, kreq__part_t *pt, kreq__opened_t *o,
                                    const rd_kafka_message_t *m, const kreq__target_t *t,
                                    req_ctx_t *c)
{
	if (!c->digested)
		kreq__request_digest(o->u.req, c->digest);
	kreq_request_t *r = kreq__request_new(s);
	kreq__dd_entry_t *e;
	if (!r || !(e = kreq__dedup_add_running(&pt->dd, c->key, c->klen, c->digest, r))) {
		if (r)
			kreq__request_free(r);
		return NULL;
	}
	if (c->b)
		c->b->tokens -= 1.0;
	r->srv = s;
	r->op = *o;
	memset(o, 0, sizeof(*o)); /* moved */
	r->h = c->h;
	r->partition = pt->id;
	r->offset = m->offset;
	r->incarnation = pt->incarnation;
	r->self = *t;
	r->dd = e;
	memcpy(r->ddkey, c->key, c->klen);
	r->ddkey_len = (uint16_t)c->klen;
	memcpy(r->digest, c->digest, 32);
	r->consumed_ns = kreq__mono_ns();
	return r;
}

/* A new RUNNING entry and its request, handed to the pool. */
static bool dispatch(kreq_server_t *s, kreq__part_t *pt, kreq__opened_t *o,
                     const rd_kafka_message_t *m, const kreq__target_t *t, req_ctx_t *c)
{
	kreq_request_t *r = request_make(s, pt, o, m, t, c);
	if (r)
		dispatch_or_refuse(s, r);
	return r != NULL;
}

/* Takes a request out of service (decide.h, POISON): its DeadLetter goes
 * to the dead-letter topic in the open transaction (light mode: before its
 * offset may pass), and it is answered status 10, stored like a handler's
 * result, without running the handler (docs/broker-design.md). */
static bool poison(kreq_server_t *s, kreq__part_t *pt, kreq__opened_t *o,
                   const rd_kafka_message_t *m, const kreq__target_t *t, req_ctx_t *c)
{
	kreq_request_t *r = request_make(s, pt, o, m, t, c);
	if (!r)
		return false;
	uint32_t n = kreq__poison_count(pt, r->ddkey, r->ddkey_len);
	char reason[256], why[256];
	snprintf(reason, sizeof(reason),
	         "its handler was started %u times and never finished (server.poison.max.attempts "
	         "%u): not run again",
	         n, kreq__poison_max(s));
	kreq__log(s->conf, 4, "server", "%s [%d] offset %lld: request for %s: %s; sent to %s",
	          s->req_topic, (int)pt->id, (long long)m->offset, r->op.u.req->method, reason,
	          kreq__poison_dead_topic(s));
	uint8_t *dead = NULL;
	size_t len = 0;
	int err = kreq__poison_dead_letter(s, pt, r, m, reason, &dead, &len, why, sizeof(why));
	if (err == KREQ_EOVERSIZE) /* answered and stored all the same: logged */
		kreq__log(s->conf, 3, "server", "%s [%d] offset %lld: no dead letter written: %s",
		          s->req_topic, (int)pt->id, (long long)m->offset, why);
	else if (!kreq__txn_begin(s)) {
		if (err)
			kreq__output_failed(s, pt->id, m->offset, RD_KAFKA_RESP_ERR__FAIL,
			                    kreq__poison_dead_topic(s), why);
		else if (kreq__kafka_produce(s, kreq__poison_dead_topic(s), false,
		                             kreq__poison_dead_partition(s, pt->id), m->key,
		                             m->key_len, dead, len, dr_opaque(s, pt, t->seq),
		                             pt->id, m->offset) == KREQ_OK)
			atomic_fetch_add_explicit(&s->m.dead_letters, 1, memory_order_relaxed);
	}
	free(dead);
	r->started_ns = kreq__mono_ns(); /* answered as if run: the answer is stored */
	r->status = KREQ_STATUS_POISON;
	r->error = strdup(reason);
	apply_completion(s, r, kreq__now_ms());
	return true;
}

/* The reply text of an ANSWER. */
static void answer_text(const kreq__opened_t *o, kreq__why_t why, char *buf, size_t n)
{
	const Kreq__Request *q = o->u.req;
	switch (why) {
	case KREQ__WHY_UNKNOWN_METHOD:
		snprintf(buf, n, "unknown method %s", q->method);
		break;
	case KREQ__WHY_DENIED:
		snprintf(buf, n, "method %s is not permitted for key %s", q->method, o->key_id);
		break;
	case KREQ__WHY_CONFLICT:
		snprintf(buf, n, "idempotency key reused with a different request");
		break;
	case KREQ__WHY_RATE_LIMITED:
		snprintf(buf, n, "key %s is over server.rate.limit.per.key", o->key_id);
		break;
	default: /* KREQ__WHY_DEADLINE */
		snprintf(buf, n, "deadline exceeded before the work could start");
	}
}

static kreq__handled_t outcome_of_why(kreq__why_t why)
{
	switch (why) {
	case KREQ__WHY_UNKNOWN_METHOD:
		return KREQ__H_UNKNOWN_METHOD;
	case KREQ__WHY_DENIED:
		return KREQ__H_DENIED;
	case KREQ__WHY_CONFLICT:
		return KREQ__H_CONFLICT;
	case KREQ__WHY_RATE_LIMITED:
		return KREQ__H_RATE_LIMITED;
	default:
		return KREQ__H_DEADLINE;
	}
}

/* Drops a verified Request (decide.h steps 3, 4 and 8): counted; logged
 * except replays of a running request, which an attacker can repeat at
 * will (a log line each would be the amplification). */
static void drop_request(kreq_server_t *s, const rd_kafka_message_t *m, const kreq__opened_t *o,
                         kreq__why_t why, int64_t now)
{
	const Kreq__Request *q = o->u.req;
	char text[512];
	switch (why) {
	case KREQ__WHY_DEADLINE_TOO_FAR:
		snprintf(text, sizeof(text), "deadline %lld ms away exceeds server.max.deadline.ms",
		         (long long)(q->deadline_ms - now));
		reject(s, KREQ__R_DEADLINE_TOO_FAR, m, text);
		break;
	case KREQ__WHY_TOO_OLD:
		snprintf(text, sizeof(text), "issued %lld ms ago exceeds server.max.request.age.ms",
		         (long long)(now - q->issued_at_ms));
		reject(s, KREQ__R_TOO_OLD, m, text);
		break;
	case KREQ__WHY_WRONG_PARTITION:
		snprintf(text, sizeof(text), "its idempotency key maps to partition %d",
		         (int)kreq__partition_of(q->idempotency_key.data, q->idempotency_key.len,
		                                 s->nparts));
		reject(s, KREQ__R_PARTITION, m, text);
		break;
	case KREQ__WHY_WRONG_SERVICE:
		snprintf(text, sizeof(text), "signed for service %s, not %s", q->service,
		         s->service);
		reject(s, KREQ__R_SERVICE, m, text);
		break;
	case KREQ__WHY_REPLY_TOPIC:
		snprintf(text, sizeof(text),
		         "reply topic %s is not allowed by server.reply.topic.allow",
		         o->u.req->reply_topic);
		reject(s, KREQ__R_REPLY_TOPIC, m, text);
		break;
	case KREQ__WHY_REPLY_PARTITION:
		snprintf(text, sizeof(text),
		         "reply partition %d is not a partition of reply topic %s",
		         (int)q->reply_partition, q->reply_topic);
		reject(s, KREQ__R_REPLY_PARTITION, m, text);
		break;
	case KREQ__WHY_DUPLICATE:
		atomic_fetch_add_explicit(&s->m.rejected[KREQ__R_DUPLICATE], 1,
		                          memory_order_relaxed);
		break;
	default: /* joiners full, or the worker at server.max.in.flight */
		atomic_fetch_add_explicit(&s->m.rejected[KREQ__R_JOIN_LIMIT], 1,
		                          memory_order_relaxed);
	}
}

/* Serves a stored result that left memory: read back from the results
 * topic. If it cannot be read, the caller is told to retry (overloaded):
 * running the handler again is what the ghost exists to prevent. */
static bool serve_ghost(kreq_server_t *s, kreq__part_t *pt, const kreq__target_t *t,
                        const Kreq__Request *q, const kreq__dd_entry_t *e, int64_t now)
{
	kreq__opened_t o;
	char why[256];
	if (kreq__ghost_read(s, pt->id, e->res_offset, e->key, e->key_len, &o, why, sizeof(why))) {
		atomic_fetch_add_explicit(&s->m.ghost_read_failures, 1, memory_order_relaxed);
		kreq__log(s->conf, 4, "server", "reading back a stored result of %s [%d]: %s",
		          s->res_topic, (int)pt->id, why);
		answer(s, pt, t, q, KREQ__H_RATE_LIMITED, KREQ_STATUS_OVERLOADED,
		       "the stored result could not be read back: retry later");
		return true;
	}
	const Kreq__Result *r = o.u.result;
	atomic_fetch_add_explicit(&s->m.ghost_reads, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->m.handled[KREQ__H_DEDUP], 1, memory_order_relaxed);
	send_reply(s, pt, t, &q->idempotency_key, r->status, r->payload.data, r->payload.len,
	           r->error, true, now);
	kreq__opened_clear(&o);
	return true;
}

/* Executes kreq__decide()'s decision for a verified Request. Returns true
 * when the record is finished now (its offset may pass once the
 * transaction commits), false when a handler will finish it. */
static bool handle_request(kreq_server_t *s, kreq__part_t *pt, kreq__opened_t *o,
                           const rd_kafka_message_t *m, uint64_t seq, int64_t now)
{
	const Kreq__Request *q = o->u.req;
	req_ctx_t c = {0};
	kreq__facts_t f = {.verified = true, .kind = KREQ__KIND_REQUEST};
	request_facts(s, pt, o, m, now, &c, &f);
	kreq__decision_t d = kreq__decide(&f);
	if (d.action == KREQ__ACT_DROP) {
		drop_request(s, m, o, d.why, now);
		return true;
	}
	kreq__target_t t = {.partition = q->reply_partition,
	                    .no_reply = c.rp == KREQ__RP_TOPIC_MISSING,
	                    .attempt = q->attempt,
	                    .deadline_ms = q->deadline_ms,
	                    .seq = seq};
	memcpy(t.corr, q->correlation_id.data, KREQ__CORR_ID_BYTES);
	size_t tlen = strnlen(q->reply_topic, sizeof(t.topic) - 1); /* checked on decode */
	memcpy(t.topic, q->reply_topic, tlen);
	t.topic[tlen] = '\0';
	switch (d.action) {
	case KREQ__ACT_ANSWER: {
		char why[512];
		answer_text(o, d.why, why, sizeof(why));
		answer(s, pt, &t, q, outcome_of_why(d.why), d.status, why);
		return true;
	}
	case KREQ__ACT_SERVE:
		if (c.e->state == KREQ__DD_GHOST)
			return serve_ghost(s, pt, &t, q, c.e, now);
		atomic_fetch_add_explicit(&s->m.handled[KREQ__H_DEDUP], 1, memory_order_relaxed);
		send_reply(s, pt, &t, &q->idempotency_key, c.e->status, c.e->payload, c.e->len,
		           c.e->error, true, now);
		return true;
	case KREQ__ACT_JOIN:
		if (!join(s, c.e, &t))
			s->rewind_needed = true; /* out of memory: redo the record later */
		return false;
	case KREQ__ACT_POISON:
		if (!poison(s, pt, o, m, &t, &c))
			s->rewind_needed = true; /* out of memory: redo the record later */
		return false;
	default: /* KREQ__ACT_DISPATCH */
		if (!dispatch(s, pt, o, m, &t, &c))
			s->rewind_needed = true; /* out of memory: redo the record later */
		return false;
	}
}

static void handle_record(kreq_server_t *s, const rd_kafka_message_t *m)
{
	if (m->err) {
		if (m->err == RD_KAFKA_RESP_ERR__FATAL && !s->fatal)
			kreq__member_fatal(s); /* fenced by another instance, or worse */
		else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
			kreq__log(s->conf, 4, "server", "consumer: %s", rd_kafka_message_errstr(m));
		return;
	}
	kreq__part_t *pt = part_get(s, m->partition);
	uint64_t seq;
	if (!pt)
		return;
	if (kreq__offsets_push(&pt->offs, m->offset, &seq)) {
		s->rewind_needed = true;
		return;
	}
	/* a record that made the worker rewind gets a transaction of its own:
	 * if it fails again, it takes no other request's work with it */
	bool isolate = s->txn_mode && kreq__faults_find(&s->faults, m->partition, m->offset);
	if (isolate && (kreq__txn_commit(s) || s->rewind_needed))
		return;
	if (s->txn_mode && kreq__txn_begin(s))
		return;
	const kreq__fault_t *fault = kreq__faults_find(&s->faults, m->partition, m->offset);
	if (fault && fault->rewinds >= KREQ__REWIND_MAX) { /* no more rewinds for it */
		char msg[KREQ__FAULT_WHY + 64];
		snprintf(msg, sizeof(msg), "made the worker rewind %u times (last: %s)",
		         fault->rewinds, fault->why);
		reject(s, KREQ__R_REWINDS, m, msg);
		slot_complete(pt, seq);
		if (isolate)
			kreq__txn_commit(s);
		return;
	}
	kreq__opened_t o;
	char why[256];
	int64_t now = kreq__now_ms();
	int err =
	    kreq__envelope_open(s->kr, &s->lim, now, m->payload, m->len, &o, why, sizeof(why));
	bool done = true;
	kreq__facts_t f = {.verified = err == KREQ_OK, .kind = err ? 0 : (int)o.kind};
	if (f.verified && o.kind == KREQ__KIND_REQUEST) {
		done = handle_request(s, pt, &o, m, seq, now);
	} else {
		kreq__decision_t d = kreq__decide(&f);
		if (d.action == KREQ__ACT_CANCEL)
			handle_cancel(s, pt, &o);
		else if (d.why == KREQ__WHY_NOT_VERIFIED)
			reject(s, kreq__reject_of(err), m, why);
		else
			reject(s, KREQ__R_KIND, m, "not a request or cancel");
	}
	kreq__opened_clear(&o);
	if (done)
		slot_complete(pt, seq);
	if (isolate) /* its answer, if it was answered at once */
		kreq__txn_commit(s);
}

/* ---- rebalance, rewind, pause ------------------------------------------- */

static void drop_all(kreq_server_t *s)
{
	for (int32_t p = 0; p < s->nparts; p++)
		part_drop(s, p);
}

static int assign_parts(kreq_server_t *s, const rd_kafka_topic_partition_list_t *l)
{
	kreq__part_t **fresh = calloc((size_t)l->cnt + 1, sizeof(*fresh));
	int n = 0;
	if (!fresh)
		return KREQ_ENOMEM;
	for (int i = 0; i < l->cnt; i++) {
		int32_t p = l->elems[i].partition;
		if (p < 0 || p >= s->nparts)
			continue;
		part_drop(s, p);
		if (!(s->parts[p] = part_new(s, p))) {
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
		part_drop(s, fresh[i]->id);
	free(fresh);
	return err;
}

static void block(kreq_server_t *s, int timeout_ms);

static void flush_producer(rd_kafka_t *p)
{
	if (p) {
		rd_kafka_flush(p, 5000);
		rd_kafka_poll(p, 0);
	}
}

static void settle_outputs(kreq_server_t *s)
{
	process_completions(s);
	/* light: delivery reports secure offsets (transactional: the commit) */
	if (!s->txn_mode)
		flush_producer(s->producer);
	flush_producer(s->batch_producer);
	kreq__poison_settle_unstarted(s); /* before the partitions are handed over */
}

/* Nothing new starts (queued requests are left uncommitted for the next
 * owner); running handlers get up to server.shutdown.grace.ms to reply, and
 * their replies and results go into the open transaction. */
static void finish_in_flight(kreq_server_t *s)
{
	bool was_draining = s->draining;
	s->draining = true;
	kreq__pool_drain(s);
	int64_t until = kreq__mono_ns() + s->grace_ms * 1000000LL;
	process_completions(s);
	while (!s->fatal && atomic_load(&s->in_progress) > 0 && kreq__mono_ns() < until) {
		block(s, 20);
		process_completions(s);
		expire_overdue(s);
	}
	settle_outputs(s);
	if (atomic_load(&s->in_progress) > 0)
		kreq__log(s->conf, 4, "server",
		          "abandoning %zu request(s) still running after server.shutdown.grace.ms "
		          "(uncommitted: another worker redoes them)",
		          atomic_load(&s->in_progress));
	s->draining = was_draining;
}

/* Runs the requests whose starts were recorded since the last call (one
 * acknowledged round trip for all: broker/worker/poison.c). */
static void run_recorded(kreq_server_t *s)
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
static size_t busy_in(kreq_server_t *s, const bool *gone)
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
 * there gets server.shutdown.grace.ms to finish, then the transaction
 * (which covers every partition: the others' finished work too) commits,
 * and only the revoked partitions' state is dropped (what still runs
 * there is abandoned: cancelled, its completion discarded, redone by the
 * next owner from the committed offset). The other partitions are served
 * on; their handlers keep running throughout. */
static void revoke_parts(kreq_server_t *s, const rd_kafka_topic_partition_list_t *l)
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
		process_completions(s);
		expire_overdue(s);
		if (!busy_in(s, gone) || s->fatal || kreq__mono_ns() >= until)
			break;
		block(s, 20);
	}
	settle_outputs(s);
	kreq__txn_commit(s); /* a failure flags a rewind of what stays */
	s->draining = was_draining;
	for (int32_t p = 0; p < s->nparts; p++)
		if (gone[p])
			part_drop(s, p);
	free(gone);
	kreq__log(s->conf, 6, "server", "revoked %d partition(s) of %s", l->cnt, s->req_topic);
}

/* The group's rebalance protocol is cooperative (cooperative-sticky):
 * assignments and revocations are increments, not the whole set. */
static bool cooperative(rd_kafka_t *rk)
{
	return !strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE");
}

static void incremental(kreq_server_t *s, rd_kafka_error_t *e, const char *what)
{
	if (!e)
		return;
	kreq__loop_fatal(s, KREQ_EKAFKA, "%s: %s", what, rd_kafka_error_string(e));
	rd_kafka_error_destroy(e);
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *l, void *opaque)
{
	kreq_server_t *s = opaque;
	if (s->member_renewing) { /* the fenced consumer's close: its state is gone */
		if (cooperative(rk))
			rd_kafka_error_destroy(rd_kafka_incremental_unassign(rk, l));
		else
			rd_kafka_assign(rk, NULL);
		return;
	}
	if (cooperative(rk)) {
		if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
			kreq__log(s->conf, 6, "server", "assigned %d partition(s) of %s", l->cnt,
			          s->req_topic);
			assign_parts(s, l); /* only these: the others are served on */
			incremental(s, rd_kafka_incremental_assign(rk, l), "incremental assign");
			if (s->paused) /* at server.max.in.flight: the new ones wait too */
				rd_kafka_pause_partitions(rk, l);
			atomic_fetch_add_explicit(&s->m.rebalances, 1, memory_order_relaxed);
		} else {
			revoke_parts(s, l);
			incremental(s, rd_kafka_incremental_unassign(rk, l),
			            "incremental unassign");
		}
		atomic_store_explicit(&s->ready, !s->fatal && !atomic_load(&s->stop),
		                      memory_order_release);
		return;
	}
	if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
		kreq__log(s->conf, 6, "server", "assigned %d partition(s) of %s", l->cnt,
		          s->req_topic);
		assign_parts(s, l);
		rd_kafka_assign(rk, l);
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
 * reach does not stop the worker: without a producer (kafka.c's fencing
 * rule) or the committed offsets the rewind stays pending, nothing is
 * consumed, and it is tried again at a later step (at most every
 * KREQ__REWIND_RETRY_MS). */
static void rewind_all(kreq_server_t *s)
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
	kreq__log(s->conf, 5, "server", "rewinding %d partition(s) to their committed offsets",
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
		if (s->paused)
			rd_kafka_resume_partitions(s->consumer, l);
		s->paused = false;
	} else if (!s->fatal && !atomic_load(&s->stop)) {
		kreq__log(s->conf, 4, "server",
		          "cannot read the committed offsets to rewind: tried again in %d ms",
		          KREQ__REWIND_RETRY_MS);
		s->rewind_needed = true;
		s->rewind_retry_ns = kreq__mono_ns() + KREQ__REWIND_RETRY_MS * 1000000LL;
	}
	rd_kafka_topic_partition_list_destroy(l);
}

/* The group fenced this worker's consumer (member.c): forget everything
 * not committed, as a rewind, and rejoin with a new consumer. */
static void member_renew(kreq_server_t *s)
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

static void set_paused(kreq_server_t *s, bool pause)
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

static void flow_control(kreq_server_t *s)
{
	size_t n = atomic_load_explicit(&s->in_progress, memory_order_relaxed);
	bool blocked = kreq__poison_blocked(s); /* a suspect runs alone */
	bool room = kreq__request_room(s) && !blocked;
	if (!s->paused && !room) {
		set_paused(s, true);
		if (!blocked &&
		    n < s->max_in_flight) /* out of slots: abandoned handlers hold them */
			kreq__log(
			    s->conf, 3, "server",
			    "%zu handler(s) answered at their deadline have still not returned "
			    "(server.handler.grace.ms): the worker takes no new requests until "
			    "they do",
			    s->nslots - s->slot_nfree - n);
	} else if (s->paused && room && n <= s->max_in_flight * 3 / 4) {
		set_paused(s, false);
	}
}

/* ---- the loop ----------------------------------------------------------- */

static void drain_efd(kreq_server_t *s)
{
	uint64_t v;
	while (read(s->efd, &v, sizeof(v)) == (ssize_t)sizeof(v))
		;
}

static void swap_keyring(kreq_server_t *s)
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
	kreq__log(s->conf, 5, "server", "keyring replaced");
}

/* While no record may be taken (paused: at the limit, or a poison suspect
 * runs alone), the consumer is still polled: rebalances and errors are
 * served there, and a member that stops polling holds up the whole group's
 * rebalance (or is evicted after max.poll.interval.ms). A record that
 * arrives anyway (fetched before the pause) is put back: its partition is
 * sought to it, so it is fetched again on resume. */
static void serve_events(kreq_server_t *s)
{
	rd_kafka_message_t *m = rd_kafka_consumer_poll(s->consumer, 0);
	if (!m)
		return;
	if (m->err || !m->rkt) {
		handle_record(s, m);
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
		kreq__log(s->conf, 4, "server", "putting back a record fetched while paused: %s",
		          rd_kafka_error_string(e));
		rd_kafka_error_destroy(e);
		s->rewind_needed = true;
	}
}

/* Reads up to max records; true if the queue may hold more. */
static bool consume(kreq_server_t *s, int max)
{
	int n = 0;
	bool more = true;
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
		handle_record(s, m);
		rd_kafka_message_destroy(m);
		more = !s->fatal && !s->rewind_needed; /* what follows would be redone */
	}
	if (n)
		s->last_record_ns = kreq__mono_ns();
	return more && n == max;
}

static bool commit_due(kreq_server_t *s, int64_t now_ns)
{
	size_t busy = atomic_load_explicit(&s->in_progress, memory_order_relaxed);
	if (s->txn_mode) {
		if (!s->txn_open)
			return false;
		bool idle = busy == 0 && now_ns - s->last_record_ns >= s->linger_ms * 1000000;
		return idle || s->txn_results >= s->batch_max ||
		       now_ns - s->txn_start_ns >= s->batch_ms * 1000000;
	}
	/* light: offsets are only a restart point, committed every batch_ms */
	return now_ns - s->light_commit_ns >= s->batch_ms * 1000000;
}

static int wait_ms(kreq_server_t *s, int64_t now_ns)
{
	int64_t left = 1000;
	if (s->txn_mode && s->txn_open) {
		left = s->batch_ms - (now_ns - s->txn_start_ns) / 1000000;
		int64_t idle = s->linger_ms - (now_ns - s->last_record_ns) / 1000000;
		if (atomic_load_explicit(&s->in_progress, memory_order_relaxed) == 0 && idle < left)
			left = idle;
	} else if (!s->txn_mode && s->batch_ms > 0) {
		left = s->batch_ms - (now_ns - s->light_commit_ns) / 1000000;
	} /* light with server.txn.batch.ms=0: offsets go at every step, and
	     an idle loop sleeps like any other (a zero timeout made it spin) */
	int64_t overdue = kreq__overdue_next_ms(s, kreq__now_ms());
	if (overdue < left)
		left = overdue;
	return left < 0 ? 0 : left > 1000 ? 1000 : (int)left;
}

static void housekeeping(kreq_server_t *s, int64_t now_ns)
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

static void step(kreq_server_t *s, bool fetch, bool *more)
{
	drain_efd(s);
	swap_keyring(s);
	if (process_completions(s))
		s->last_record_ns = kreq__mono_ns();
	*more = fetch && consume(s, 1000);
	run_recorded(s);
	if (s->member_fenced && !s->fatal)
		member_renew(s);
	if (s->producer)
		rd_kafka_poll(s->producer, 0);
	if (s->batch_producer)
		rd_kafka_poll(s->batch_producer, 0);
	process_completions(s);
	expire_overdue(s);
	if (s->dd_bound_due) { /* not from the delivery report: a settle may be under way */
		s->dd_bound_due = false;
		kreq__dedup_bound(s, NULL);
	}
	/* no producer (kafka.c's fencing rule): nothing is consumed until a
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
	housekeeping(s, now);
}

static void block(kreq_server_t *s, int timeout_ms)
{
	struct pollfd pfd = {.fd = s->efd, .events = POLLIN};
	if (poll(&pfd, 1, timeout_ms) < 0 && errno != EINTR)
		kreq__loop_fatal(s, KREQ_EIO, "poll: %s", strerror(errno));
}

/* Stop: no more fetching; in-flight work may finish within the grace
 * period and is committed; what is still running then is abandoned. */
static void shut_down(kreq_server_t *s)
{
	atomic_store_explicit(&s->ready, false, memory_order_release);
	kreq__log(s->conf, 6, "server", "stopping: %zu request(s) in progress",
	          atomic_load(&s->in_progress));
	set_paused(s, true);
	finish_in_flight(s);
	s->draining = true;
	if (!s->fatal)
		kreq__txn_commit(s);
	s->draining_abandon = true;
	drop_all(s);
}

int kreq__loop_run(kreq_server_t *s)
{
	s->loop_thread = pthread_self();
	atomic_store_explicit(&s->loop_running, true, memory_order_release);
	s->light_commit_ns = s->housekeeping_ns = kreq__mono_ns();
	if (kreq__kafka_start(s, on_rebalance) == 0 && kreq__pool_start(s) == 0) {
		kreq__log(s->conf, 6, "server", "serving %s (%s mode) as %s", s->req_topic,
		          s->txn_mode ? "transactional" : "light", s->client_id);
		bool more = false;
		while (!s->fatal && !atomic_load(&s->stop)) {
			step(s, true, &more);
			if (!more && !s->fatal && !atomic_load(&s->stop))
				block(s, wait_ms(s, kreq__mono_ns()));
		}
		shut_down(s);
	}
	kreq__kafka_close(s);
	drop_all(s);
	atomic_store_explicit(&s->loop_running, false, memory_order_release);
	return s->loop_err;
}
