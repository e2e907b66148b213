/*
 * ghost.c — reading one stored result back from the results topic, for a
 * retry whose dedup entry left memory (a "ghost": broker/worker/dedup.h).
 *
 * Why: a tenant over its dedup budget must not make its own retries run
 * again (the brief: a retry within worker.dedup.retention.ms never runs
 * the handler again). The result is in the results topic anyway, at an
 * offset the worker learnt from the producer's delivery report or from the
 * rebuild, so a ghost costs ~200 bytes instead of the result, and a hit
 * costs one fetch. It uses the results reader, which is idle outside a
 * rebuild (both run on the loop thread), and blocks the loop for that
 * fetch, bounded by KREQ__GHOST_READ_MS: ghosts are only hit by retries of
 * results their own tenant pushed out of memory.
 *
 * What is read is verified like a rebuilt result (signature, kind, expiry)
 * and must be the Result for the same record key: a compacted or deleted
 * record, or another one at that offset, is an error, never a result.
 */
#include <stdio.h>
#include <string.h>

#include "broker/worker/worker_int.h"
#include "common/internal.h"

#define KREQ__GHOST_READ_MS 5000

/* The message at offset of partition p, or an error; NULL on timeout. */
static rd_kafka_message_t *fetch(kreq_worker_t *s, int32_t p, int64_t offset, char *why, size_t n)
{
	int64_t until = kreq__mono_ns() + KREQ__GHOST_READ_MS * 1000000LL;
	while (kreq__mono_ns() < until) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(s->reader, 100);
		if (!m)
			continue;
		if (m->partition != p || (!m->err && m->offset < offset)) {
			rd_kafka_message_destroy(m);
			continue;
		}
		if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF || (!m->err && m->offset > offset)) {
			snprintf(why, n, "no record at offset %lld (compacted or deleted)",
			         (long long)offset);
			rd_kafka_message_destroy(m);
			return NULL;
		}
		if (m->err) {
			snprintf(why, n, "%s", rd_kafka_message_errstr(m));
			rd_kafka_message_destroy(m);
			return NULL;
		}
		return m;
	}
	snprintf(why, n, "no answer within %d ms", KREQ__GHOST_READ_MS);
	return NULL;
}

/* Whether the verified Result o is the one stored under key. */
static bool same_key(const kreq__opened_t *o, const uint8_t *key, size_t key_len)
{
	const Kreq__Result *r = o->u.result;
	uint8_t k[KREQ__DEDUP_KEY_MAX];
	if (strlen(r->request_key_id) > 64 || r->idempotency_key.len > 255)
		return false;
	size_t kl =
	    kreq__dedup_key(k, r->request_key_id, r->idempotency_key.data, r->idempotency_key.len);
	return kl == key_len && !memcmp(k, key, kl);
}

int kreq__ghost_read(kreq_worker_t *s, int32_t p, int64_t offset, const uint8_t *key,
                     size_t key_len, kreq__opened_t *out, char *why, size_t why_size)
{
	if (offset < 0) {
		snprintf(why, why_size, "its offset is not known");
		return KREQ_ENOENT;
	}
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(l, s->res_topic, p)->offset = offset;
	rd_kafka_resp_err_t kerr = rd_kafka_assign(s->reader, l);
	rd_kafka_topic_partition_list_destroy(l);
	if (kerr) {
		snprintf(why, why_size, "assigning: %s", rd_kafka_err2str(kerr));
		return KREQ_EKAFKA;
	}
	rd_kafka_message_t *m = fetch(s, p, offset, why, why_size);
	rd_kafka_assign(s->reader, NULL);
	if (!m)
		return KREQ_EKAFKA;
	int err = kreq__envelope_open(s->kr, &s->lim, kreq__now_ms(), m->payload, m->len, out, why,
	                              why_size);
	rd_kafka_message_destroy(m);
	if (err)
		return err;
	if (out->kind == KREQ__KIND_RESULT && !kreq__result_signer_ok(s, out->key_id)) {
		snprintf(why, why_size,
		         "the record at offset %lld is signed by key id %s, not a "
		         "result signer (worker.result.signers)",
		         (long long)offset, out->key_id);
		kreq__opened_clear(out);
		return KREQ_EMALFORMED;
	}
	if (out->kind != KREQ__KIND_RESULT || !same_key(out, key, key_len)) {
		kreq__opened_clear(out);
		snprintf(why, why_size, "the record at offset %lld is not this key's Result",
		         (long long)offset);
		return KREQ_EMALFORMED;
	}
	return KREQ_OK;
}
