/*
 * record.c — one consumed request record: verified and opened, its facts
 * gathered (dedup store, rate bucket, reply topic, poison count, replay
 * window) and what the pure function kreq__decide() (decide.h) makes of
 * them executed: drop, cancel, answer, serve the stored result, join the
 * running request, take it out of service, or dispatch it. Loop thread.
 *
 * Why apart from loop.c: this is the exactly-once decision per record,
 * read on its own; the loop around it (consuming, committing,
 * rebalancing) only hands it records in order. The rules and their order
 * are in decide.h, the rationale in docs/broker-design.md; what a request
 * may not be served (another service, another partition, outside the
 * replay window) in docs/protocol.md section 5.
 */
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "broker/worker/decide.h"
#include "broker/worker/loop_int.h"
#include "broker/worker/worker_int.h"
#include "common/conf.h"
#include "common/hoptrace.h"
#include "common/internal.h"
#include "common/partition.h"

/* ---- one record --------------------------------------------------------- */

static bool reply_topic_allowed(const kreq_worker_t *s, const char *topic)
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

static kreq__rp_t reply_partition_valid(kreq_worker_t *s, const char *topic, int32_t partition)
{
	int n = kreq__topic_partitions_cached(s, topic, partition);
	return n == 0                    ? KREQ__RP_TOPIC_MISSING
	       : n > 0 && partition >= n ? KREQ__RP_BAD_PARTITION
	                                 : KREQ__RP_OK;
}

static const kreq__handler_t *handler_of(const kreq_worker_t *s, const char *method)
{
	for (size_t i = 0; i < s->nhandlers; i++)
		if (!strcmp(s->handlers[i].method, method))
			return &s->handlers[i];
	return NULL;
}

/* The key's token bucket refilled to now (worker.rate.limit.per.key), or
 * NULL when there is no limit or no memory for a new bucket. Reading it
 * takes nothing: a token is taken only when a handler is dispatched. */
static kreq__bucket_t *bucket_of(kreq_worker_t *s, const char *key_id)
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

static void reject(kreq_worker_t *s, kreq__reject_t why, const rd_kafka_message_t *m,
                   const char *detail)
{
	atomic_fetch_add_explicit(&s->m.rejected[why], 1, memory_order_relaxed);
	kreq__log(s->conf, 4, "worker", "record %s [%d] offset %lld dropped: %s", s->req_topic,
	          (int)m->partition, (long long)m->offset, detail);
}

static void handle_cancel(kreq_worker_t *s, kreq__part_t *pt, const kreq__opened_t *o)
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
static bool service_ok(const kreq_worker_t *s, const Kreq__Request *q)
{
	return !strcmp(q->service, s->service);
}

/* On the partition its idempotency key maps to (the client's murmur2):
 * dedup state is per partition, so a replay onto another one would run
 * again. */
static bool partition_ok(const kreq_worker_t *s, const rd_kafka_message_t *m,
                         const Kreq__Request *q)
{
	return kreq__partition_of(q->idempotency_key.data, q->idempotency_key.len, s->nparts) ==
	       m->partition;
}

/* The receiver's own bound on the replay window, whatever the signer
 * asked: KREQ__R_COUNT when inside it. */
static kreq__reject_t outside_window(const kreq_worker_t *s, const Kreq__Request *q, int64_t now)
{
	if (q->deadline_ms - now > s->max_deadline_ms + s->lim.skew_ms)
		return KREQ__R_DEADLINE_TOO_FAR;
	if (now - q->issued_at_ms > s->max_age_ms + s->lim.skew_ms)
		return KREQ__R_TOO_OLD;
	return KREQ__R_COUNT;
}

/* Answers without running anything; counts the outcome. */
static void answer(kreq_worker_t *s, kreq__part_t *pt, const kreq__target_t *t,
                   const Kreq__Request *q, kreq__handled_t outcome, int32_t status,
                   const char *error)
{
	atomic_fetch_add_explicit(&s->m.handled[outcome], 1, memory_order_relaxed);
	kreq__send_reply(s, pt, t, &q->idempotency_key, status, NULL, 0, error, false,
	                 kreq__now_ms());
}

/* Runs r's handler, unless an earlier pass found r's output too large for
 * Kafka (faults.h): then r is answered with status KREQ_STATUS_TOO_LARGE,
 * stored like a handler's error, without running the handler again. */
static void dispatch_or_refuse(kreq_worker_t *s, kreq_request_t *r)
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
	kreq__apply_completion(s, r, kreq__now_ms());
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
static void request_facts(kreq_worker_t *s, kreq__part_t *pt, const kreq__opened_t *o,
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
static bool join(kreq_worker_t *s, kreq__dd_entry_t *e, const kreq__target_t *t)
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
static kreq_request_t *request_make(kreq_worker_t *s, kreq__part_t *pt, kreq__opened_t *o,
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
static bool dispatch(kreq_worker_t *s, kreq__part_t *pt, kreq__opened_t *o,
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
static bool poison(kreq_worker_t *s, kreq__part_t *pt, kreq__opened_t *o,
                   const rd_kafka_message_t *m, const kreq__target_t *t, req_ctx_t *c)
{
	kreq_request_t *r = request_make(s, pt, o, m, t, c);
	if (!r)
		return false;
	uint32_t n = kreq__poison_count(pt, r->ddkey, r->ddkey_len);
	char reason[256], why[256];
	snprintf(reason, sizeof(reason),
	         "its handler was started %u times and never finished (worker.poison.max.attempts "
	         "%u): not run again",
	         n, kreq__poison_max(s));
	kreq__log(s->conf, 4, "worker", "%s [%d] offset %lld: request for %s: %s; sent to %s",
	          s->req_topic, (int)pt->id, (long long)m->offset, r->op.u.req->method, reason,
	          kreq__poison_dead_topic(s));
	uint8_t *dead = NULL;
	size_t len = 0;
	int err = kreq__poison_dead_letter(s, pt, r, m, reason, &dead, &len, why, sizeof(why));
	if (err == KREQ_EOVERSIZE) /* answered and stored all the same: logged */
		kreq__log(s->conf, 3, "worker", "%s [%d] offset %lld: no dead letter written: %s",
		          s->req_topic, (int)pt->id, (long long)m->offset, why);
	else if (!kreq__txn_begin(s)) {
		if (err)
			kreq__output_failed(s, pt->id, m->offset, RD_KAFKA_RESP_ERR__FAIL,
			                    kreq__poison_dead_topic(s), why);
		else if (kreq__kafka_produce(s, kreq__poison_dead_topic(s), false,
		                             kreq__poison_dead_partition(s, pt->id), m->key,
		                             m->key_len, dead, len, kreq__dr_opaque(s, pt, t->seq),
		                             pt->id, m->offset) == KREQ_OK)
			atomic_fetch_add_explicit(&s->m.dead_letters, 1, memory_order_relaxed);
	}
	free(dead);
	r->started_ns = kreq__mono_ns(); /* answered as if run: the answer is stored */
	r->status = KREQ_STATUS_POISON;
	r->error = strdup(reason);
	kreq__apply_completion(s, r, kreq__now_ms());
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
		snprintf(buf, n, "key %s is over worker.rate.limit.per.key", o->key_id);
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
static void drop_request(kreq_worker_t *s, const rd_kafka_message_t *m, const kreq__opened_t *o,
                         kreq__why_t why, int64_t now)
{
	const Kreq__Request *q = o->u.req;
	char text[512];
	switch (why) {
	case KREQ__WHY_DEADLINE_TOO_FAR:
		snprintf(text, sizeof(text), "deadline %lld ms away exceeds worker.max.deadline.ms",
		         (long long)(q->deadline_ms - now));
		reject(s, KREQ__R_DEADLINE_TOO_FAR, m, text);
		break;
	case KREQ__WHY_TOO_OLD:
		snprintf(text, sizeof(text), "issued %lld ms ago exceeds worker.max.request.age.ms",
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
		         "reply topic %s is not allowed by worker.reply.topic.allow",
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
	default: /* joiners full, or the worker at worker.max.in.flight */
		atomic_fetch_add_explicit(&s->m.rejected[KREQ__R_JOIN_LIMIT], 1,
		                          memory_order_relaxed);
	}
}

/* Serves a stored result that left memory: read back from the results
 * topic. If it cannot be read, the caller is told to retry (overloaded):
 * running the handler again is what the ghost exists to prevent. */
static bool serve_ghost(kreq_worker_t *s, kreq__part_t *pt, const kreq__target_t *t,
                        const Kreq__Request *q, const kreq__dd_entry_t *e, int64_t now)
{
	kreq__opened_t o;
	char why[256];
	if (kreq__ghost_read(s, pt->id, e->res_offset, e->key, e->key_len, &o, why, sizeof(why))) {
		atomic_fetch_add_explicit(&s->m.ghost_read_failures, 1, memory_order_relaxed);
		kreq__log(s->conf, 4, "worker", "reading back a stored result of %s [%d]: %s",
		          s->res_topic, (int)pt->id, why);
		answer(s, pt, t, q, KREQ__H_RATE_LIMITED, KREQ_STATUS_OVERLOADED,
		       "the stored result could not be read back: retry later");
		return true;
	}
	const Kreq__Result *r = o.u.result;
	atomic_fetch_add_explicit(&s->m.ghost_reads, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->m.handled[KREQ__H_DEDUP], 1, memory_order_relaxed);
	kreq__send_reply(s, pt, t, &q->idempotency_key, r->status, r->payload.data, r->payload.len,
	                 r->error, true, now);
	kreq__opened_clear(&o);
	return true;
}

/* Executes kreq__decide()'s decision for a verified Request. Returns true
 * when the record is finished now (its offset may pass once the
 * transaction commits), false when a handler will finish it. */
static bool handle_request(kreq_worker_t *s, kreq__part_t *pt, kreq__opened_t *o,
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
		kreq__send_reply(s, pt, &t, &q->idempotency_key, c.e->status, c.e->payload,
		                 c.e->len, c.e->error, true, now);
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

void kreq__handle_record(kreq_worker_t *s, const rd_kafka_message_t *m)
{
	if (m->err) {
		if (m->err == RD_KAFKA_RESP_ERR__FATAL && !s->fatal)
			kreq__member_fatal(s); /* fenced by another instance, or worse */
		else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
			kreq__log(s->conf, 4, "worker", "consumer: %s", rd_kafka_message_errstr(m));
		return;
	}
	kreq__part_t *pt = kreq__part_get(s, m->partition);
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
		kreq__slot_complete(pt, seq);
		if (isolate)
			kreq__txn_commit(s);
		return;
	}
	kreq__opened_t o;
	char why[256];
	int64_t now = kreq__now_ms();
	int err =
	    kreq__envelope_open(s->kr, &s->lim, now, m->payload, m->len, &o, why, sizeof(why));
	kreq__hop(W_OPENED);
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
		kreq__slot_complete(pt, seq);
	if (isolate) /* its answer, if it was answered at once */
		kreq__txn_commit(s);
}
