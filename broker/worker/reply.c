/*
 * reply.c — producing what the loop answers: a sealed Reply to a caller's
 * reply topic, a sealed Result to the results topic (what dedup serves
 * after a restart), both into the open transaction (light mode: with a
 * delivery record that holds the request record's offset back until
 * Kafka has them). Loop thread.
 *
 * Why apart from loop.c: both the record path (record.c: answers, dedup
 * hits) and the completions (complete.c: handler results) produce here;
 * a seal that fails is a fault of the record (faults.h), never a commit
 * of its offset without its result.
 */
#include <stdint.h>

#include "broker/worker/loop_int.h"
#include "broker/worker/worker_int.h"
#include "common/conf.h"
#include "common/hoptrace.h"
#include "common/internal.h"

kreq__dr_t *kreq__dr_opaque(kreq_worker_t *s, kreq__part_t *pt, uint64_t seq)
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
static void reply_dropped(kreq_worker_t *s, kreq__part_t *pt, const kreq__target_t *t)
{
	uint64_t n = atomic_fetch_add_explicit(&s->m.reply_topic_missing, 1, memory_order_relaxed);
	int64_t now = kreq__mono_ns();
	if (s->reply_missing_log_ns && now - s->reply_missing_log_ns < 10 * 1000000000LL)
		return;
	s->reply_missing_log_ns = now;
	kreq__log(s->conf, 4, "worker",
	          "reply topic %s does not exist: the reply to record %s [%d] offset %lld is not "
	          "sent (its result is stored; %llu such replies so far; logged at most every "
	          "10 s)",
	          t->topic, s->req_topic, (int)pt->id, (long long)offset_of(pt, t->seq),
	          (unsigned long long)n + 1);
}

/* Seals and produces one reply to t, issued at now (ms). */
void kreq__send_reply(kreq_worker_t *s, kreq__part_t *pt, const kreq__target_t *t,
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
	kreq__hop(W_SEALED);
	if (kreq__kafka_produce(s, t->topic, s->batching, t->partition, t->corr, sizeof(t->corr),
	                        s->seal_buf, blen, kreq__dr_opaque(s, pt, t->seq), pt->id,
	                        offset_of(pt, t->seq)) != KREQ_OK)
		return;
	kreq__hop(W_REPLY);
	s->txn_results++;
	if (s->batching)
		atomic_fetch_add_explicit(&s->m.replies_batched, 1, memory_order_relaxed);
}

void kreq__store_result(kreq_worker_t *s, kreq__part_t *pt, kreq_request_t *r, int64_t now,
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
	                    blen, kreq__dr_opaque(s, pt, r->self.seq), pt->id, r->offset);
	kreq__hop(W_RESULT);
}

void kreq__slot_complete(kreq__part_t *pt, uint64_t seq)
{
	kreq__off_slot_t *sl = kreq__offsets_slot(&pt->offs, seq);
	if (sl)
		sl->completed = true;
}
