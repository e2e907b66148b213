/*
 * rebuild.c — the dedup rebuild: on partition assignment (and after a
 * rewind) the worker reads the co-partitioned results partitions from the
 * beginning with its own consumer (the "reader", read_committed) and loads
 * every stored Result into the partition's dedup store, so a retry of a
 * request some other worker (or an earlier instance) answered is served
 * from that result instead of running the handler again. All of it runs on
 * the loop thread, inside the rebalance callback, before the first request
 * record of those partitions is consumed.
 */
#include <stdio.h>
#include <stdlib.h>

#include "broker/server_int.h"
#include "common/conf.h"
#include "common/internal.h"

static void load_result(kreq_server_t *s, kreq__part_t *pt, const rd_kafka_message_t *m,
                        int64_t now)
{
	kreq__opened_t o;
	char why[256];
	int err =
	    kreq__envelope_open(s->kr, &s->lim, now, m->payload, m->len, &o, why, sizeof(why));
	if (err == KREQ_EEXPIRED)
		return; /* past server.dedup.retention.ms: no longer deduplicates */
	if (!err && o.kind != KREQ__KIND_RESULT) {
		kreq__opened_clear(&o);
		err = KREQ_EMALFORMED;
		snprintf(why, sizeof(why), "not a Result");
	}
	if (err) {
		kreq__log(s->conf, 4, "server", "results %s [%d] offset %lld skipped: %s",
		          s->res_topic, pt->id, (long long)m->offset, why);
		return;
	}
	const Kreq__Result *r = o.u.result;
	uint8_t key[KREQ__DEDUP_KEY_MAX];
	size_t klen = kreq__dedup_key(key, r->request_key_id, r->idempotency_key.data,
	                              r->idempotency_key.len);
	if (kreq__dedup_set_done(&pt->dd, NULL, key, klen, r->request_digest.data, r->status,
	                         r->payload.data, r->payload.len, r->error, r->deadline_ms) == 0)
		atomic_fetch_add_explicit(&s->m.results_loaded, 1, memory_order_relaxed);
	kreq__dedup_bound(s, pt);
	kreq__opened_clear(&o);
}

static int index_of(kreq__part_t **parts, int n, int32_t id)
{
	for (int i = 0; i < n; i++)
		if (parts[i]->id == id)
			return i;
	return -1;
}

int kreq__rebuild(kreq_server_t *s, kreq__part_t **parts, int n)
{
	if (n == 0)
		return KREQ_OK;
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
	for (int i = 0; i < n; i++)
		rd_kafka_topic_partition_list_add(l, s->res_topic, parts[i]->id)->offset =
		    RD_KAFKA_OFFSET_BEGINNING;
	rd_kafka_resp_err_t kerr = rd_kafka_assign(s->reader, l);
	rd_kafka_topic_partition_list_destroy(l);
	if (kerr) {
		kreq__loop_fatal(s, KREQ_EKAFKA, "assigning %s: %s", s->res_topic,
		                 rd_kafka_err2str(kerr));
		return KREQ_EKAFKA;
	}
	int64_t until = kreq__mono_ns() +
	                kreq__conf_int(s->conf, KREQ__P_SERVER_REBUILD_TIMEOUT_MS) * 1000000LL;
	int remaining = n;
	int64_t now = kreq__now_ms();
	bool *eof = calloc((size_t)n, sizeof(*eof));
	if (!eof) {
		kreq__loop_fatal(s, KREQ_ENOMEM, "out of memory");
		return KREQ_ENOMEM;
	}
	while (remaining > 0 && kreq__mono_ns() < until) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(s->reader, 100);
		if (!m)
			continue;
		int i = index_of(parts, n, m->partition);
		if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
			if (i >= 0 && !eof[i]) {
				eof[i] = true;
				remaining--;
			}
		} else if (m->err) {
			kreq__log(s->conf, 4, "server", "reading %s: %s", s->res_topic,
			          rd_kafka_message_errstr(m));
		} else if (i >= 0) {
			load_result(s, parts[i], m, now);
		}
		rd_kafka_message_destroy(m);
	}
	free(eof);
	rd_kafka_assign(s->reader, NULL);
	if (remaining > 0) {
		kreq__loop_fatal(s, KREQ_EKAFKA,
		                 "rebuilding the dedup state from %s took longer than "
		                 "server.dedup.rebuild.timeout.ms",
		                 s->res_topic);
		return KREQ_EKAFKA;
	}
	return KREQ_OK;
}
