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
 * For every record (docs/broker-design.md has the full rationale):
 *   1. verify (envelope_open: size, signature, key, skew, deadline); a
 *      record that does not verify is counted and dropped: its reply topic
 *      is not trusted, so nothing is written for it;
 *   2. Cancel -> flag the running request (or the queued one, which then
 *      never starts);
 *   3. reply topic on the allow-list, else dropped and counted;
 *   4. handler exists (status 1), key may call the method (5), rate (7);
 *   5. dedup: stored result -> served again (from_dedup), same key running
 *      -> joins it, same key with another request -> status 6;
 *   6. budget left (2), then the handler runs.
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

#include "broker/server_int.h"
#include "common/conf.h"
#include "common/internal.h"

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
	atomic_store_explicit(&s->m.dedup_bytes, s->dd_bytes, memory_order_relaxed);
	kreq__offsets_clear(&pt->offs);
	free(pt);
	s->parts[id] = NULL;
}

void kreq__dedup_bound(kreq_server_t *s, kreq__part_t *pt)
{
	int64_t now = kreq__now_ms(), expires = 0, earliest = INT64_MAX;
	uint64_t n = 0;
	for (int32_t p = -1; p < s->nparts && s->dd_bytes > s->dd_max_bytes; p++) {
		kreq__part_t *victim = p < 0 ? pt : s->parts[p];
		while (victim && s->dd_bytes > s->dd_max_bytes &&
		       kreq__dedup_evict_oldest(&victim->dd, &expires)) {
			n++;
			if (expires < earliest)
				earliest = expires;
		}
	}
	atomic_store_explicit(&s->m.dedup_bytes, s->dd_bytes, memory_order_relaxed);
	if (!n)
		return;
	atomic_fetch_add_explicit(&s->m.dedup_evicted, n, memory_order_relaxed);
	int64_t now_ns = kreq__mono_ns();
	if (s->dd_warned_ns && now_ns - s->dd_warned_ns < 60 * 1000000000LL)
		return;
	s->dd_warned_ns = now_ns;
	kreq__log(s->conf, 4, "server",
	          "server.dedup.max.bytes (%zu) reached: stored results are dropped %lld s before "
	          "their retention ends, and retries of their keys will run again; raise the limit "
	          "or lower server.dedup.retention.ms (logged at most once a minute)",
	          s->dd_max_bytes, (long long)((earliest - now) / 1000));
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
	return r->status == 0 ? KREQ__H_OK : KREQ__H_ERROR_STATUS;
}

static void apply_completion(kreq_server_t *s, kreq_request_t *r, int64_t now)
{
	kreq__part_t *pt = part_get(s, r->partition);
	if (r->started_ns)
		kreq__hist_observe(&s->m.handler_time, (kreq__mono_ns() - r->started_ns) / 1000);
	if (!pt || pt->incarnation != r->incarnation || s->draining_abandon) {
		kreq__request_free(r); /* stale: the record will be redone */
		return;
	}
	/* same incarnation: its RUNNING entry is still there (only a DONE
	 * entry expires or is evicted; dropping the state changes incarnation) */
	kreq__dd_entry_t *e = r->dd;
	if (s->draining && !r->started_ns && r->status == KREQ_STATUS_SHUTTING_DOWN) {
		/* not started before shutdown: left for the next owner, uncommitted */
		kreq__dedup_remove(&pt->dd, e);
		kreq__request_free(r);
		return;
	}
	kreq__handled_t o = outcome_of(r);
	atomic_fetch_add_explicit(&s->m.handled[o], 1, memory_order_relaxed);
	const Kreq__Request *q = r->op.u.req;
	/* the reply first: in light mode it then leaves before the result */
	send_reply(s, pt, &r->self, &q->idempotency_key, r->status, r->payload, r->len, r->error,
	           false, now);
	const uint8_t *payload = r->payload;
	const char *error = r->error;
	if (r->started_ns && r->status != KREQ_STATUS_CANCELLED) {
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
	for (kreq__target_t *t = r->joiners; t; t = t->next) {
		send_reply(s, pt, t, &q->idempotency_key, r->status, payload, r->len, error, true,
		           now);
		slot_complete(pt, t->seq);
	}
	kreq__request_free(r);
	kreq__dedup_bound(s, pt); /* last: it may evict what was just stored */
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
 * metadata (broker/topics.h). Unknown (Kafka did not answer) counts as
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

static bool rate_limited(kreq_server_t *s, const char *key_id)
{
	if (s->rate <= 0)
		return false;
	kreq__bucket_t *b = s->buckets;
	while (b && strcmp(b->key_id, key_id))
		b = b->next;
	int64_t now = kreq__mono_ns();
	if (!b) {
		if (!(b = calloc(1, sizeof(*b))))
			return true;
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
	if (b->tokens < 1.0)
		return true;
	b->tokens -= 1.0;
	return false;
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
		kreq__dispatch(s, r);
		return;
	}
	char msg[KREQ__FAULT_WHY + 96];
	snprintf(msg, sizeof(msg), "the reply or result of this request is too large for Kafka: %s",
	         f->why);
	atomic_fetch_add_explicit(&s->in_progress, 1, memory_order_relaxed); /* as dispatched */
	r->started_ns = kreq__mono_ns(); /* answered as if run: the error is stored */
	r->status = KREQ_STATUS_TOO_LARGE;
	r->error = strdup(msg);
	apply_completion(s, r, kreq__now_ms());
}

/* Returns true when the record is finished now (its offset may pass once
 * the transaction commits), false when a handler will finish it. */
static bool handle_request(kreq_server_t *s, kreq__part_t *pt, kreq__opened_t *o,
                           const rd_kafka_message_t *m, uint64_t seq, int64_t now)
{
	const Kreq__Request *q = o->u.req;
	char why[512];
	uint8_t key[KREQ__DEDUP_KEY_MAX], digest[32];
	size_t klen =
	    kreq__dedup_key(key, o->key_id, q->idempotency_key.data, q->idempotency_key.len);
	uint64_t hash = kreq__dedup_prefetch(&pt->dd, key, klen); /* loads during the checks */
	if (!reply_topic_allowed(s, q->reply_topic)) {
		snprintf(why, sizeof(why),
		         "reply topic %s is not allowed by server.reply.topic.allow",
		         q->reply_topic);
		reject(s, KREQ__R_REPLY_TOPIC, m, why);
		return true;
	}
	kreq__rp_t rp = reply_partition_valid(s, q->reply_topic, q->reply_partition);
	if (rp == KREQ__RP_BAD_PARTITION) {
		snprintf(why, sizeof(why),
		         "reply partition %d is not a partition of reply topic %s",
		         (int)q->reply_partition, q->reply_topic);
		reject(s, KREQ__R_REPLY_PARTITION, m, why);
		return true;
	}
	kreq__target_t t = {.partition = q->reply_partition,
	                    .no_reply = rp == KREQ__RP_TOPIC_MISSING,
	                    .attempt = q->attempt,
	                    .deadline_ms = q->deadline_ms,
	                    .seq = seq};
	memcpy(t.corr, q->correlation_id.data, KREQ__CORR_ID_BYTES);
	size_t tlen = strnlen(q->reply_topic, sizeof(t.topic) - 1); /* checked on decode */
	memcpy(t.topic, q->reply_topic, tlen);
	t.topic[tlen] = '\0';
	const kreq__handler_t *h = handler_of(s, q->method);
	if (!h) {
		snprintf(why, sizeof(why), "unknown method %s", q->method);
		answer(s, pt, &t, q, KREQ__H_UNKNOWN_METHOD, KREQ_STATUS_UNKNOWN_METHOD, why);
		return true;
	}
	if (kreq_keyring_check_method(s->kr, o->key_id, q->method) != KREQ_OK) {
		snprintf(why, sizeof(why), "method %s is not permitted for key %s", q->method,
		         o->key_id);
		answer(s, pt, &t, q, KREQ__H_DENIED, KREQ_STATUS_DENIED, why);
		return true;
	}
	if (rate_limited(s, o->key_id)) {
		snprintf(why, sizeof(why), "key %s is over server.rate.limit.per.key", o->key_id);
		answer(s, pt, &t, q, KREQ__H_RATE_LIMITED, KREQ_STATUS_OVERLOADED, why);
		return true;
	}
	kreq__request_digest(q, digest);
	kreq__dd_entry_t *e = kreq__dedup_find_hashed(&pt->dd, hash, key, klen);
	if (e && e->state == KREQ__DD_DONE && e->expires_ms <= now) {
		kreq__dedup_remove(&pt->dd, e);
		e = NULL;
	}
	if (e && sodium_memcmp(e->digest, digest, 32) != 0) {
		answer(s, pt, &t, q, KREQ__H_CONFLICT, KREQ_STATUS_CONFLICT,
		       "idempotency key reused with a different request");
		return true;
	}
	if (e && e->state == KREQ__DD_DONE) {
		atomic_fetch_add_explicit(&s->m.handled[KREQ__H_DEDUP], 1, memory_order_relaxed);
		send_reply(s, pt, &t, &q->idempotency_key, e->status, e->payload, e->len, e->error,
		           true, now);
		return true;
	}
	if (e) { /* running: join it */
		kreq_request_t *r = e->running;
		kreq__target_t *j = malloc(sizeof(*j));
		if (!j) {
			s->rewind_needed = true;
			return false;
		}
		*j = t;
		j->next = r->joiners;
		r->joiners = j;
		atomic_fetch_add_explicit(&s->m.handled[KREQ__H_JOINED], 1, memory_order_relaxed);
		return false;
	}
	if (q->deadline_ms - now < s->min_budget_ms) {
		answer(s, pt, &t, q, KREQ__H_DEADLINE, KREQ_STATUS_DEADLINE,
		       "deadline exceeded before the work could start");
		return true;
	}
	kreq_request_t *r = kreq__request_new(s);
	if (!r || !(e = kreq__dedup_add_running(&pt->dd, key, klen, digest, r))) {
		free(r);
		s->rewind_needed = true; /* out of memory: redo the record later */
		return false;
	}
	r->srv = s;
	r->op = *o;
	memset(o, 0, sizeof(*o)); /* moved */
	r->h = h;
	r->partition = pt->id;
	r->offset = m->offset;
	r->incarnation = pt->incarnation;
	r->self = t;
	r->dd = e;
	memcpy(r->ddkey, key, klen);
	r->ddkey_len = (uint16_t)klen;
	memcpy(r->digest, digest, 32);
	r->consumed_ns = kreq__mono_ns();
	dispatch_or_refuse(s, r);
	return false;
}

static void handle_record(kreq_server_t *s, const rd_kafka_message_t *m)
{
	if (m->err) {
		if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
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
	const kreq__fault_t *f = kreq__faults_find(&s->faults, m->partition, m->offset);
	if (f && f->rewinds >= KREQ__REWIND_MAX) { /* no more rewinds for it */
		char msg[KREQ__FAULT_WHY + 64];
		snprintf(msg, sizeof(msg), "made the worker rewind %u times (last: %s)", f->rewinds,
		         f->why);
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
	if (err)
		reject(s, kreq__reject_of(err), m, why);
	else if (o.kind == KREQ__KIND_CANCEL)
		handle_cancel(s, pt, &o);
	else if (o.kind != KREQ__KIND_REQUEST)
		reject(s, KREQ__R_KIND, m, "not a request or cancel");
	else
		done = handle_request(s, pt, &o, m, seq, now);
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
	}
	settle_outputs(s);
	if (atomic_load(&s->in_progress) > 0)
		kreq__log(s->conf, 4, "server",
		          "abandoning %zu request(s) still running after server.shutdown.grace.ms "
		          "(uncommitted: another worker redoes them)",
		          atomic_load(&s->in_progress));
	s->draining = was_draining;
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *l, void *opaque)
{
	kreq_server_t *s = opaque;
	if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
		kreq__log(s->conf, 6, "server", "assigned %d partition(s) of %s", l->cnt,
		          s->req_topic);
		assign_parts(s, l);
		rd_kafka_assign(rk, l);
		s->paused = false;
		atomic_store_explicit(&s->ready, !s->fatal, memory_order_release);
		/* counted once serving: rebalances_total >= 1 implies ready */
		atomic_fetch_add_explicit(&s->m.rebalances, 1, memory_order_relaxed);
		return;
	}
	/* revoked (or a rebalance error): let running handlers finish (within
	 * the grace period), secure what is complete, drop the rest */
	atomic_store_explicit(&s->ready, false, memory_order_release);
	bool was_draining = s->draining;
	s->draining = true; /* also: commit synchronously in light mode */
	finish_in_flight(s);
	kreq__txn_commit(s);
	s->draining = was_draining;
	drop_all(s);
	s->rewind_needed = false;
	rd_kafka_assign(rk, NULL);
}

/* After an aborted transaction or a failed delivery: forget everything not
 * committed and continue from the committed offsets. */
static void rewind_all(kreq_server_t *s)
{
	/* first: nothing of the dropped state may commit (faults.h) */
	kreq__txn_abort(s, "rewinding to the committed offsets");
	s->rewind_needed = false;
	kreq__faults_rewound(&s->faults);
	atomic_fetch_add_explicit(&s->m.rewinds, 1, memory_order_relaxed);
	rd_kafka_topic_partition_list_t *l = NULL;
	if (rd_kafka_assignment(s->consumer, &l) || !l)
		return;
	kreq__log(s->conf, 5, "server", "rewinding %d partition(s) to their committed offsets",
	          l->cnt);
	drop_all(s);
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
	} else if (!s->fatal) {
		kreq__loop_fatal(s, KREQ_EKAFKA, "cannot read committed offsets to rewind");
	}
	rd_kafka_topic_partition_list_destroy(l);
}

static void set_paused(kreq_server_t *s, bool pause)
{
	rd_kafka_topic_partition_list_t *l = NULL;
	if (rd_kafka_assignment(s->consumer, &l) || !l)
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
	if (!s->paused && n >= s->max_in_flight)
		set_paused(s, true);
	else if (s->paused && n <= s->max_in_flight * 3 / 4)
		set_paused(s, false);
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

/* Reads up to max records; true if the queue may hold more. */
static bool consume(kreq_server_t *s, int max)
{
	int n = 0;
	bool more = true;
	for (; more && n < max; n++) {
		/* at the limit, stop taking records: flow_control() pauses the
		 * partitions, which drops what was prefetched and refetches it from
		 * the consumed position on resume */
		if (atomic_load_explicit(&s->in_progress, memory_order_relaxed) >= s->max_in_flight)
			break;
		rd_kafka_message_t *m = rd_kafka_consumer_poll(s->consumer, 0);
		if (!m)
			break;
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
}

static void step(kreq_server_t *s, bool fetch, bool *more)
{
	drain_efd(s);
	swap_keyring(s);
	if (process_completions(s))
		s->last_record_ns = kreq__mono_ns();
	*more = fetch && consume(s, 1000);
	if (s->producer)
		rd_kafka_poll(s->producer, 0);
	if (s->batch_producer)
		rd_kafka_poll(s->batch_producer, 0);
	process_completions(s);
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
