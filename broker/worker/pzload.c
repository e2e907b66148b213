/*
 * pzload.c — the per-partition table of counted handler starts (poison.h,
 * kreq__pz_part_t) and how it is loaded when partitions are assigned:
 * after the dedup rebuild, the committed offset of each requests
 * partition and the timestamp of the request there say from where the
 * attempts partition is read (offsetsForTimes, minus clock.skew.ms); each
 * verified Attempt of an uncommitted request without a Result is counted
 * per worker instance (what counts and why: poison.c's design notes).
 *
 * Why apart from poison.c: loading is the read side, run once per
 * assignment on the results reader, while poison.c is the write side run
 * per request; they share only the table and the poison state
 * (poison_int.h). Loop thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker/worker/poison.h"
#include "broker/worker/poison_int.h"
#include "broker/worker/worker_int.h"
#include "common/conf.h"
#include "common/internal.h"

#define KREQ__PZ_READ_STEP 100
#define KREQ__PZ_TS_MARGIN 5000 /* added to clock.skew.ms when seeking by time */

/* ---- the per-partition table -------------------------------------------- */

kreq__pz_entry_t *kreq__pz_find(const kreq__pz_part_t *t, const uint8_t *key, size_t klen)
{
	for (kreq__pz_entry_t *e = t ? t->head : NULL; e; e = e->next)
		if (e->klen == klen && !memcmp(e->key, key, klen))
			return e;
	return NULL;
}

uint32_t kreq__poison_count(const kreq__part_t *pt, const uint8_t *key, size_t klen)
{
	if (!pt->pz || !pt->pz->count)
		return 0;
	const kreq__pz_entry_t *e = kreq__pz_find(pt->pz, key, klen);
	return e ? e->n : 0;
}

void kreq__poison_part_free(kreq__part_t *pt)
{
	if (!pt->pz)
		return;
	for (kreq__pz_entry_t *e = pt->pz->head, *n; e; e = n) {
		n = e->next;
		free(e);
	}
	free(pt->pz);
	pt->pz = NULL;
}

static kreq__pz_entry_t *entry_get(kreq__part_t *pt, const uint8_t *key, size_t klen)
{
	if (!pt->pz && !(pt->pz = calloc(1, sizeof(*pt->pz))))
		return NULL;
	kreq__pz_entry_t *e = kreq__pz_find(pt->pz, key, klen);
	if (e || !(e = calloc(1, sizeof(*e))))
		return e;
	memcpy(e->key, key, klen);
	e->klen = (uint16_t)klen;
	e->next = pt->pz->head;
	pt->pz->head = e;
	pt->pz->count++;
	return e;
}

/* Records one verified Attempt a of instance inst into pt's table. */
static void note(kreq_worker_t *s, kreq__part_t *pt, const Kreq__Attempt *a, uint64_t inst)
{
	uint8_t key[KREQ__DEDUP_KEY_MAX];
	size_t klen = kreq__dedup_key(key, a->request_key_id, a->idempotency_key.data,
	                              a->idempotency_key.len);
	kreq__dd_entry_t *d = kreq__dedup_find(&pt->dd, key, klen);
	if (d && d->state != KREQ__DD_RUNNING)
		return; /* it has a Result: never counted */
	kreq__pz_entry_t *e = entry_get(pt, key, klen);
	if (!e)
		return;
	if (a->number > e->max_number)
		e->max_number = a->number;
	if (inst == s->pz->instance)
		return; /* this live instance's own start did not crash it */
	uint32_t i = 0;
	while (i < e->n && e->att[i].instance != inst)
		i++;
	if (a->ended_at_ms != 0) { /* that start never ran (handed over unstarted) */
		if (i < e->n && e->att[i].started_at_ms <= a->started_at_ms)
			e->att[i] = e->att[--e->n];
		return;
	}
	if (i == e->n) {
		if (e->n == KREQ__ATTEMPTS_MAX)
			return;
		e->n++;
	} else if (e->att[i].started_at_ms > a->started_at_ms) {
		return; /* keep the instance's newest */
	}
	kreq__pz_attempt_t *t = &e->att[i];
	*t = (kreq__pz_attempt_t){inst,
	                          a->number,
	                          a->request_partition,
	                          a->started_at_ms,
	                          a->ended_at_ms,
	                          a->request_offset,
	                          ""};
	snprintf(t->worker, sizeof(t->worker), "%s", a->worker);
}

/* ---- loading at assignment ---------------------------------------------- */

/* Per partition being loaded. */
typedef struct load {
	kreq__part_t *pt;
	int64_t committed; /* requests below it are settled */
	int64_t ts;        /* of the request at committed (ms), -1 unknown */
	int64_t start;     /* attempts offset to read from */
	int64_t end;       /* attempts high watermark */
	int64_t req_end;   /* requests high watermark */
	bool none;         /* nothing uncommitted: nothing to read */
	bool done;
} load_t;

static int64_t deadline_ns(const kreq_worker_t *s)
{
	const char *bound;
	return kreq__mono_ns() + kreq__topic_wait_ms(s, true, &bound) * 1000000LL;
}

/* After a transient error (kreq__kafka_transient(): a partition's
 * leadership moving, as after a Kafka broker fenced by its controller and
 * back, "Leader epoch is older than broker epoch", or a coordinator
 * loading): true (having slept a step) while there is time left before
 * until and no stop was asked; the caller asks again. Not fatal: a query
 * that met one stopped the worker in test_fence's outage case. */
static bool ask_again(kreq_worker_t *s, rd_kafka_resp_err_t e, int64_t until, const char *pre,
                      const char *topic, const char *post)
{
	if (!kreq__kafka_transient(e) || atomic_load(&s->stop) || kreq__mono_ns() >= until)
		return false;
	kreq__log(s->conf, 6, "worker", "%s%s%s: %s: asking again", pre, topic, post,
	          rd_kafka_err2str(e));
	nanosleep(&(struct timespec){.tv_nsec = KREQ__PZ_READ_STEP * 1000000L}, NULL);
	return true;
}

/* Committed offsets of the requests partitions; which have uncommitted
 * records (ld[i].done when none). */
static rd_kafka_resp_err_t committed_once(kreq_worker_t *s, load_t *ld, int n, int tmo)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
	for (int i = 0; i < n; i++)
		rd_kafka_topic_partition_list_add(l, s->req_topic, ld[i].pt->id);
	rd_kafka_resp_err_t kerr = rd_kafka_committed(s->consumer, l, tmo);
	for (int i = 0; !kerr && i < n; i++) {
		int64_t lo = 0, hi = 0;
		kerr = kreq__kafka_transient(l->elems[i].err)
		           ? l->elems[i].err
		           : rd_kafka_query_watermark_offsets(s->reader, s->req_topic, ld[i].pt->id,
		                                              &lo, &hi, tmo);
		int64_t c = l->elems[i].offset >= 0 ? l->elems[i].offset : lo;
		ld[i].committed = c;
		ld[i].req_end = hi;
		ld[i].done = ld[i].none = c >= hi;
		ld[i].ts = -1;
	}
	rd_kafka_topic_partition_list_destroy(l);
	return kerr;
}

/* Polls the reader until every partition in ld not done is done per
 * on_msg; KREQ_OK, KREQ_ECANCELED or KREQ_ETIMEDOUT. */
typedef bool(on_msg_t)(kreq_worker_t *s, load_t *ld, const rd_kafka_message_t *m);

static int poll_until(kreq_worker_t *s, load_t *ld, int n, const char *topic, on_msg_t *on_msg)
{
	int64_t until = deadline_ns(s);
	for (;;) {
		int left = 0;
		for (int i = 0; i < n; i++)
			left += !ld[i].done;
		if (!left)
			return KREQ_OK;
		if (atomic_load(&s->stop))
			return KREQ_ECANCELED;
		if (kreq__mono_ns() >= until)
			return KREQ_ETIMEDOUT;
		rd_kafka_message_t *m = rd_kafka_consumer_poll(s->reader, KREQ__PZ_READ_STEP);
		if (!m)
			continue;
		int i = 0;
		while (i < n && ld[i].pt->id != m->partition)
			i++;
		if (i < n && !ld[i].done && !strcmp(rd_kafka_topic_name(m->rkt), topic))
			ld[i].done = on_msg(s, &ld[i], m);
		rd_kafka_message_destroy(m);
	}
}

static int assign(kreq_worker_t *s, load_t *ld, int n, const char *topic, bool by_offset)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
	for (int i = 0; i < n; i++)
		if (!ld[i].done)
			rd_kafka_topic_partition_list_add(l, topic, ld[i].pt->id)->offset =
			    by_offset ? ld[i].committed : ld[i].start;
	rd_kafka_resp_err_t kerr = rd_kafka_assign(s->reader, l);
	rd_kafka_topic_partition_list_destroy(l);
	if (kerr)
		kreq__loop_fatal(s, KREQ_EKAFKA, "assigning %s: %s", topic, rd_kafka_err2str(kerr));
	return kerr ? KREQ_EKAFKA : KREQ_OK;
}

/* The timestamp of the first request at or after the committed offset. */
static bool got_request(kreq_worker_t *s, load_t *ld, const rd_kafka_message_t *m)
{
	(void)s;
	if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
		return true; /* none readable: ts stays -1, all attempts are read */
	if (m->err)
		return false;
	rd_kafka_timestamp_type_t tt;
	int64_t ts = rd_kafka_message_timestamp(m, &tt);
	ld->ts = ts > 0 ? ts : -1;
	return true;
}

static bool got_attempt(kreq_worker_t *s, load_t *ld, const rd_kafka_message_t *m)
{
	if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
		return m->offset >= ld->end;
	if (m->err)
		return false;
	kreq__opened_t o;
	char why[256];
	int err = kreq__envelope_open(s->kr, &s->lim, kreq__now_ms(), m->payload, m->len, &o, why,
	                              sizeof(why));
	if (!err && (o.kind != KREQ__KIND_ATTEMPT || !kreq__result_signer_ok(s, o.key_id) ||
	             m->key_len < 8)) {
		err = KREQ_EMALFORMED;
		snprintf(why, sizeof(why), "not an Attempt of a signer in worker.result.signers");
	}
	if (err) {
		kreq__log(s->conf, 4, "worker", "attempts %s [%d] offset %lld skipped: %s",
		          s->pz->att_topic, (int)m->partition, (long long)m->offset, why);
	} else if (o.u.attempt->request_offset >= ld->committed) {
		uint64_t inst = 0;
		const uint8_t *k = (const uint8_t *)m->key + m->key_len - 8;
		for (int i = 0; i < 8; i++)
			inst = inst << 8 | k[i];
		if (inst == o.u.attempt->instance) /* the key is not signed: the body is */
			note(s, ld->pt, o.u.attempt, inst);
		else
			kreq__log(s->conf, 4, "worker",
			          "attempts %s [%d] offset %lld skipped: its key names another "
			          "worker process than its signed body",
			          s->pz->att_topic, (int)m->partition, (long long)m->offset);
	}
	kreq__opened_clear(&o);
	return m->offset + 1 >= ld->end;
}

/* Where to start reading each attempts partition, and its end. */
static rd_kafka_resp_err_t range_once(kreq_worker_t *s, load_t *ld, int n, int tmo)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
	int64_t back = s->lim.skew_ms + KREQ__PZ_TS_MARGIN;
	for (int i = 0; i < n; i++)
		rd_kafka_topic_partition_list_add(l, s->pz->att_topic, ld[i].pt->id)->offset =
		    ld[i].ts > back ? ld[i].ts - back : 0;
	rd_kafka_resp_err_t kerr = rd_kafka_offsets_for_times(s->reader, l, tmo);
	for (int i = 0; !kerr && i < n; i++) {
		int64_t lo = 0, hi = 0;
		kerr = kreq__kafka_transient(l->elems[i].err)
		           ? l->elems[i].err
		           : rd_kafka_query_watermark_offsets(s->reader, s->pz->att_topic,
		                                              ld[i].pt->id, &lo, &hi, tmo);
		int64_t from = l->elems[i].offset; /* -1: nothing since then */
		ld[i].end = hi;
		ld[i].start = from >= 0 ? from : hi;
		ld[i].done = ld[i].none || ld[i].start >= hi;
	}
	rd_kafka_topic_partition_list_destroy(l);
	return kerr;
}

/* Runs one of the queries above, asked again after transient errors
 * (ask_again); any other error, or one still there at the deadline, is
 * fatal: "<pre><topic><post>: <error>". */
typedef rd_kafka_resp_err_t(query_t)(kreq_worker_t *s, load_t *ld, int n, int tmo);

static int query(kreq_worker_t *s, load_t *ld, int n, int tmo, query_t *once, const char *pre,
                 const char *topic, const char *post)
{
	int64_t until = deadline_ns(s);
	rd_kafka_resp_err_t kerr;
	while ((kerr = once(s, ld, n, tmo)) && ask_again(s, kerr, until, pre, topic, post))
		;
	if (kerr)
		kreq__loop_fatal(s, KREQ_EKAFKA, "%s%s%s: %s", pre, topic, post,
		                 rd_kafka_err2str(kerr));
	return kerr ? KREQ_EKAFKA : KREQ_OK;
}

int kreq__poison_load(kreq_worker_t *s, kreq__part_t **parts, int n)
{
	if (!s->pz || !s->pz->producer || n == 0)
		return KREQ_OK;
	int tmo = (int)kreq__conf_int(s->conf, KREQ__P_WORKER_START_TIMEOUT_MS);
	load_t *ld = calloc((size_t)n, sizeof(*ld));
	if (!ld) {
		kreq__loop_fatal(s, KREQ_ENOMEM, "out of memory");
		return KREQ_ENOMEM;
	}
	for (int i = 0; i < n; i++)
		ld[i].pt = parts[i];
	int err =
	    query(s, ld, n, tmo, committed_once, "reading committed offsets of ", s->req_topic, "");
	if (!err && !(err = assign(s, ld, n, s->req_topic, true)))
		err = poll_until(s, ld, n, s->req_topic, got_request);
	rd_kafka_assign(s->reader, NULL);
	if (!err)
		err = query(s, ld, n, tmo, range_once, "finding the attempts of ", s->pz->att_topic,
		            " to read");
	if (!err && !(err = assign(s, ld, n, s->pz->att_topic, false)))
		err = poll_until(s, ld, n, s->pz->att_topic, got_attempt);
	rd_kafka_assign(s->reader, NULL);
	for (int i = 0; !err && i < n; i++) /* below it: maybe started by a previous owner */
		if (ld[i].pt->pz || (ld[i].pt->pz = calloc(1, sizeof(*ld[i].pt->pz))))
			ld[i].pt->pz->end = ld[i].req_end;
	if (err == KREQ_ETIMEDOUT)
		kreq__loop_fatal(s, KREQ_EKAFKA,
		                 "reading the attempts of %s did not finish within "
		                 "worker.dedup.rebuild.timeout.ms",
		                 s->req_topic);
	free(ld);
	return err;
}
