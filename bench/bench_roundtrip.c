/*
 * bench_roundtrip.c — kreq call round trip vs raw librdkafka ping-pong, in
 * the same run, against a real Kafka broker on loopback.
 *
 *   raw:  producer -> ping topic -> echo worker (forwards the bytes) -> pong
 *         topic -> consumer; no signing, no correlation, no transactions.
 *   kreq: kreq_client_call() -> <prefix>.bench.requests -> echo worker
 *         (verifies the request, signs a reply, produces it to the reply
 *         topic) -> the client's reply consumer -> future settled.
 *   With KREQ_BENCH_WORKER=light or =transactional the kreq side is served
 *   by the real worker (kreq/worker.h, what kreqd runs) in that
 *   worker.mode instead of the bench's echo worker: verification, dedup
 *   state, results records, offsets (in one transaction per batch in
 *   transactional mode), the raw baseline unchanged, in the same run.
 *   The transactional worker's run also measures raw + one commit: the raw
 *   echo committing each fetched batch's replies and offset in one Kafka
 *   transaction, at 1 in flight and under each load beside kreq (what
 *   Kafka transactions allow a client here, nothing of kreq's in it).
 * Both echo workers run the same loop with the same librdkafka settings
 * (handle()): wait for one record, take whatever else has already been
 * fetched, process all of it, then produce all of it, as a worker serving a
 * fetched batch would. (Producing each record as soon as it is processed
 * made the kreq worker, which spends ~5 us per record on HMACs, trickle
 * single-message ProduceRequests; see docs/PERFORMANCE.md.)
 *
 * Usage: KREQ_TEST_BOOTSTRAP=host:port bench_roundtrip [calls-at-1-in-flight]
 *            [seconds-per-load] [rounds]
 * Prints p50/p99 latency at 1 in flight; then, for 1, 16 and 256 calls in
 * flight, the throughput of raw, of kreq driven by a thread waiting on its
 * futures, of kreq driven from completion callbacks and (transactional
 * worker) of the raw echo in a transaction. Each load runs `rounds` times,
 * interleaved (raw, kreq, callbacks, raw, ...) so that a noisy neighbour
 * hits all alike; the figures are the medians of the rates and of the
 * per-round ratios to raw, and the CPU time per round trip spent in this
 * process (client, echo workers and their librdkafka threads)
 * and, if KREQ_BENCH_BROKER_PID names the Kafka broker's process, in it.
 *
 * For experiments: KREQ_BENCH_CONF="name=value,..." sets client properties
 * (e.g. kafka.linger.ms=1), KREQ_BENCH_WORKER_CONF the same for the real
 * worker; KREQ_BENCH_ONLY=256 runs only that load (for a profiler; any
 * other number runs that many calls in flight instead of 256: 1024 shows
 * whether a load is bound by latency or by CPU); KREQ_BENCH_REPLICAS=N (1-8,
 * with KREQ_BENCH_WORKER) runs N real workers in one group, as N replicas
 * would (client.id bench-worker, bench-worker-1, ...), and
 * KREQ_BENCH_PARTITIONS=N gives kreq's request topic N partitions (default
 * 1, as raw's topics; a worker serves a partition's requests in one
 * transaction at a time, workers share the partitions); KREQ_BENCH_VERBOSE=1 prints
 * every round's rates and CPU (the run-to-run spread of raw is large);
 * KREQ_BENCH_RAW_CONF="name=value,..." sets librdkafka properties of the raw
 * baseline's handles only (e.g. max.in.flight.requests.per.connection=1,
 * kreq's producer setting); KREQ_BENCH_STATS=file appends the librdkafka
 * statistics of the bench's own handles, one JSON document a line. The run's topics
 * ("<prefix>.*") are deleted at the end.
 */
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/hoptrace.h"
#include "common/internal.h"
#include "kreq/client.h"
#include "kreq/worker.h"
#include "proto/envelope.h"

#define MAX_REPLICAS 8 /* KREQ_BENCH_REPLICAS */

static const char *bootstrap;
static char prefix[64];

static void die(const char *what)
{
	fprintf(stderr, "bench_roundtrip: %s\n", what);
	exit(1);
}

/* KREQ_BENCH_STATS=file: librdkafka statistics of the bench's own handles,
 * one JSON document a line (served by their poll calls). */
static int dump_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
	(void)rk;
	(void)opaque;
	static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
	pthread_mutex_lock(&mu);
	FILE *f = fopen(getenv("KREQ_BENCH_STATS"), "a");
	if (f) {
		fwrite(json, 1, len, f);
		fputc('\n', f);
		fclose(f);
	}
	pthread_mutex_unlock(&mu);
	return 0;
}

/* Sets one property on a configuration object; nonzero on error (err). */
typedef int prop_set_t(void *conf, const char *name, const char *value, char *err, size_t err_size);

static int set_kreq_prop(void *conf, const char *name, const char *value, char *err,
                         size_t err_size)
{
	return kreq_conf_set(conf, name, value, err, err_size);
}

static int set_rdkafka_prop(void *conf, const char *name, const char *value, char *err,
                            size_t err_size)
{
	return rd_kafka_conf_set(conf, name, value, err, err_size) != RD_KAFKA_CONF_OK;
}

/* Applies the properties in environment variable var ("name=value,...")
 * with set; dies naming var or the property on error. */
static void props_from_env(const char *var, prop_set_t *set, void *conf)
{
	char err[512];
	const char *extra = getenv(var);
	char *dup = extra ? strdup(extra) : NULL, *save = NULL;
	for (char *kv = dup ? strtok_r(dup, ",", &save) : NULL; kv;
	     kv = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(kv, '=');
		if (!eq) {
			snprintf(err, sizeof(err), "%s: name=value,...", var);
			die(err);
		}
		*eq = 0;
		if (set(conf, kv, eq + 1, err, sizeof(err)))
			die(err);
	}
	free(dup);
}

/* A librdkafka handle with the benchmark's settings; raw: one of the raw
 * baseline's (KREQ_BENCH_RAW_CONF applies). */
static rd_kafka_t *handle(rd_kafka_type_t type, const char *group, bool raw)
{
	char err[512];
	rd_kafka_conf_t *c = rd_kafka_conf_new();
	const char *kv[] = {"bootstrap.servers",
	                    bootstrap,
	                    "linger.ms",
	                    "0",
	                    "socket.nagle.disable",
	                    "true",
	                    "fetch.wait.max.ms",
	                    "100",
	                    "fetch.error.backoff.ms",
	                    "10",
	                    "enable.auto.commit",
	                    "false",
	                    "group.id",
	                    group,
	                    NULL};
	for (int i = 0; kv[i]; i += 2) {
		bool consumer_only = !strcmp(kv[i], "group.id") || !strncmp(kv[i], "fetch", 5) ||
		                     !strcmp(kv[i], "enable.auto.commit");
		if (consumer_only != (type == RD_KAFKA_CONSUMER) &&
		    strcmp(kv[i], "bootstrap.servers") && strcmp(kv[i], "socket.nagle.disable"))
			continue;
		if (rd_kafka_conf_set(c, kv[i], kv[i + 1], err, sizeof(err)))
			die(err);
	}
	if (getenv("KREQ_BENCH_STATS")) {
		rd_kafka_conf_set(c, "statistics.interval.ms", "1000", err, sizeof(err));
		rd_kafka_conf_set_stats_cb(c, dump_stats);
	}
	if (raw)
		props_from_env("KREQ_BENCH_RAW_CONF", set_rdkafka_prop, c);
	rd_kafka_t *rk = rd_kafka_new(type, c, err, sizeof(err));
	if (!rk)
		die(err);
	return rk;
}

/* Assigns partition 0 at its current end, read first, so nothing produced
 * after this returns is missed (OFFSET_END would be resolved later). A topic
 * just created may have no leader yet (librdkafka 2.12 answers at once with
 * an error then, 2.0 waited): asks again for up to 15 s. */
static void assign_end(rd_kafka_t *c, const char *topic)
{
	int64_t lo, hi;
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	rd_kafka_resp_err_t kerr;
	while ((kerr = rd_kafka_query_watermark_offsets(c, topic, 0, &lo, &hi, 5000))) {
		clock_gettime(CLOCK_MONOTONIC, &t);
		if (t.tv_sec - t0.tv_sec > 15) {
			fprintf(stderr, "bench_roundtrip: %s: %s\n", topic, rd_kafka_err2str(kerr));
			die("query_watermark_offsets");
		}
		nanosleep(&(struct timespec){.tv_nsec = 50000000}, NULL);
	}
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(l, topic, 0)->offset = hi;
	if (rd_kafka_assign(c, l))
		die("assign");
	rd_kafka_topic_partition_list_destroy(l);
}

static void create_topic(const char *topic, int partitions)
{
	rd_kafka_t *p = handle(RD_KAFKA_PRODUCER, NULL, false);
	rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(topic, partitions, -1, NULL, 0);
	rd_kafka_queue_t *q = rd_kafka_queue_new(p);
	rd_kafka_CreateTopics(p, &nt, 1, NULL, q);
	rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 30000);
	if (!ev)
		die("CreateTopics timed out");
	rd_kafka_event_destroy(ev);
	rd_kafka_queue_destroy(q);
	rd_kafka_NewTopic_destroy(nt);
	rd_kafka_destroy(p);
}

/* Deletes every topic of this run (named "<prefix>.*": the bench's own,
 * the worker's results topic, the client's reply topic), so that repeated
 * runs do not fill the Kafka broker's disk. */
static void delete_topics(void)
{
	rd_kafka_t *p = handle(RD_KAFKA_PRODUCER, NULL, false);
	const rd_kafka_metadata_t *md = NULL;
	if (rd_kafka_metadata(p, 1, NULL, &md, 10000)) {
		fprintf(stderr, "bench_roundtrip: cannot list topics to delete them\n");
		rd_kafka_destroy(p);
		return;
	}
	rd_kafka_DeleteTopic_t **del = calloc((size_t)md->topic_cnt + 1, sizeof(*del));
	size_t n = 0, plen = strlen(prefix);
	for (int i = 0; del && i < md->topic_cnt; i++)
		if (!strncmp(md->topics[i].topic, prefix, plen) && md->topics[i].topic[plen] == '.')
			del[n++] = rd_kafka_DeleteTopic_new(md->topics[i].topic);
	rd_kafka_metadata_destroy(md);
	if (n) {
		rd_kafka_queue_t *q = rd_kafka_queue_new(p);
		rd_kafka_DeleteTopics(p, del, n, NULL, q);
		rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 30000);
		if (!ev || rd_kafka_event_error(ev))
			fprintf(stderr, "bench_roundtrip: deleting this run's topics: %s\n",
			        ev ? rd_kafka_event_error_string(ev) : "timed out");
		if (ev)
			rd_kafka_event_destroy(ev);
		rd_kafka_queue_destroy(q);
		rd_kafka_DeleteTopic_destroy_array(del, n);
	}
	free(del);
	rd_kafka_destroy(p);
}

/* ---- the real worker library as the benchmark's worker (KREQ_BENCH_WORKER) -- */

static void worker_echo(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	size_t len;
	const void *p = kreq_request_payload(r, &len);
	kreq_request_reply(r, 0, p, len, NULL);
}

static void *worker_main(void *arg)
{
	char err[512];
	if (kreq_worker_run(arg, err, sizeof(err)))
		fprintf(stderr, "bench_roundtrip: worker: %s\n", err);
	return NULL;
}

static kreq_worker_t *worker_start(const char *mode, kreq_keyring_t *kr, pthread_t *t, int n)
{
	kreq_conf_t *conf = kreq_conf_new();
	char err[512], id[32] = "bench-worker";
	if (n > 0)
		snprintf(id, sizeof(id), "bench-worker-%d", n);
	if (kreq_conf_set(conf, "kafka.bootstrap.servers", bootstrap, err, sizeof(err)) ||
	    kreq_conf_set(conf, "topic.prefix", prefix, err, sizeof(err)) ||
	    kreq_conf_set(conf, "client.id", id, err, sizeof(err)) ||
	    kreq_conf_set(conf, "worker.mode", mode, err, sizeof(err)) ||
	    kreq_conf_set(conf, "log.level", "4", err, sizeof(err)))
		die(err);
	props_from_env("KREQ_BENCH_WORKER_CONF", set_kreq_prop, conf);
	kreq_worker_t *s = kreq_worker_new(conf, kr, "bench", err, sizeof(err));
	kreq_conf_destroy(conf);
	if (!s || kreq_worker_register(s, "bench.echo", worker_echo, NULL, KREQ_HANDLER_INLINE))
		die(s ? "register" : err);
	pthread_create(t, NULL, worker_main, s);
	int64_t until = kreq__mono_ns() + 60 * 1000000000LL;
	while (!kreq_worker_ready(s)) {
		if (kreq__mono_ns() > until)
			die("the worker did not join its group within 60 s");
		struct timespec ts = {0, 10000000};
		nanosleep(&ts, NULL);
	}
	return s;
}

/* ---- echo threads ------------------------------------------------------- */

typedef struct echo {
	bool kreq; /* verify + sign (kreq) or forward bytes (raw) */
	bool txn;  /* raw only: each batch's replies and offset in one transaction */
	char in[160], out[160];
	kreq_keyring_t *kr;
	atomic_bool stop, ready;
	pthread_t thr;
} echo_t;

/* Verifies a request and seals its reply; the caller produces it. */
static bool echo_kreq(echo_t *e, const rd_kafka_message_t *m, char *topic, size_t topic_size,
                      int32_t *partition, uint8_t **buf, size_t *len)
{
	static const kreq__limits_t lim = {1 << 20, 1 << 20, 30000};
	kreq__opened_t o;
	if (kreq__envelope_open(e->kr, &lim, kreq__now_ms(), m->payload, m->len, &o, NULL, 0))
		return false;
	const Kreq__Request *q = o.u.req;
	Kreq__Reply r = KREQ__REPLY__INIT;
	r.correlation_id = q->correlation_id;
	r.idempotency_key = q->idempotency_key;
	r.payload = q->payload;
	r.issued_at_ms = kreq__now_ms();
	r.deadline_ms = q->deadline_ms > r.issued_at_ms ? q->deadline_ms : r.issued_at_ms;
	r.attempt = q->attempt;
	snprintf(topic, topic_size, "%s", q->reply_topic);
	*partition = q->reply_partition;
	bool ok = !kreq__envelope_seal(e->kr, &lim, KREQ__KIND_REPLY, &r.base, buf, len, NULL, 0);
	kreq__opened_clear(&o);
	return ok;
}

#define ECHO_BATCH 512

/* The transactional raw echo: what a hand-written librdkafka consume-
 * transform-produce loop does per batch, the limit of an exactly-once
 * round trip ("raw + one commit"). Tuned as kreq's worker is against
 * CONCURRENT_TRANSACTIONS (docs/PERFORMANCE.md): retry.backoff.ms 5 and no
 * new transaction for ECHO_TXN_GAP_US after a commit (librdkafka's
 * defaults stall back-to-back transactions for 20-100 ms each). */
#define ECHO_TXN_GAP_US 500
static rd_kafka_t *txn_producer(const char *id)
{
	char err[512];
	rd_kafka_conf_t *c = rd_kafka_conf_new();
	if (rd_kafka_conf_set(c, "bootstrap.servers", bootstrap, err, sizeof(err)) ||
	    rd_kafka_conf_set(c, "linger.ms", "0", err, sizeof(err)) ||
	    rd_kafka_conf_set(c, "socket.nagle.disable", "true", err, sizeof(err)) ||
	    rd_kafka_conf_set(c, "retry.backoff.ms", "5", err, sizeof(err)) ||
	    rd_kafka_conf_set(c, "transactional.id", id, err, sizeof(err)))
		die(err);
	rd_kafka_t *p = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof(err));
	if (!p)
		die(err);
	rd_kafka_error_t *e = rd_kafka_init_transactions(p, 30000);
	if (e)
		die(rd_kafka_error_string(e));
	return p;
}

static void echo_txn_begin(rd_kafka_t *p)
{
	rd_kafka_error_t *e = rd_kafka_begin_transaction(p);
	if (e)
		die(rd_kafka_error_string(e));
}

static void echo_txn_commit(rd_kafka_t *p, rd_kafka_t *c, const char *topic, int64_t next)
{
	rd_kafka_error_t *e = NULL;
	if (next >= 0) {
		rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
		rd_kafka_topic_partition_list_add(l, topic, 0)->offset = next;
		rd_kafka_consumer_group_metadata_t *g = rd_kafka_consumer_group_metadata(c);
		e = rd_kafka_send_offsets_to_transaction(p, l, g, 30000);
		rd_kafka_consumer_group_metadata_destroy(g);
		rd_kafka_topic_partition_list_destroy(l);
	}
	if (!e)
		e = rd_kafka_commit_transaction(p, 30000);
	if (e)
		die(rd_kafka_error_string(e));
	/* the markers' time: what arrives meanwhile joins the next batch */
	nanosleep(&(struct timespec){0, ECHO_TXN_GAP_US * 1000}, NULL);
}

static void *echo_main(void *arg)
{
	echo_t *e = arg;
	char group[200];
	snprintf(group, sizeof(group), "%s-echo-%d%s", prefix, e->kreq, e->txn ? "-txn" : "");
	rd_kafka_t *c = handle(RD_KAFKA_CONSUMER, group, !e->kreq),
	           *p = e->txn ? txn_producer(group) : handle(RD_KAFKA_PRODUCER, NULL, !e->kreq);
	rd_kafka_poll_set_consumer(c);
	assign_end(c, e->in);
	rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(c);
	rd_kafka_message_t **ms = calloc(ECHO_BATCH, sizeof(*ms));
	struct out {
		char topic[256];
		int32_t partition;
		uint8_t *buf;
		size_t len;
	} *out = calloc(ECHO_BATCH, sizeof(*out));
	if (!ms || !out)
		die("out of memory");
	atomic_store(&e->ready, true);
	while (!atomic_load(&e->stop)) {
		/* wait for one record, then take what else is already there
		 * (consume_batch_queue alone would wait for a full batch) */
		ssize_t n = (ms[0] = rd_kafka_consumer_poll(c, 50)) != NULL;
		if (n) {
			ssize_t more = rd_kafka_consume_batch_queue(q, 0, ms + 1, ECHO_BATCH - 1);
			n += more > 0 ? more : 0;
		}
		/* process all, then produce all: librdkafka batches the burst */
		for (ssize_t i = 0; i < n; i++) {
			out[i].buf = NULL;
			if (ms[i]->err)
				continue;
			if (!e->kreq) {
				snprintf(out[i].topic, sizeof(out[i].topic), "%s", e->out);
				out[i].partition = RD_KAFKA_PARTITION_UA;
				out[i].buf = malloc(ms[i]->len);
				memcpy(out[i].buf, ms[i]->payload, ms[i]->len);
				out[i].len = ms[i]->len;
			} else if (!echo_kreq(e, ms[i], out[i].topic, sizeof(out[i].topic),
			                      &out[i].partition, &out[i].buf, &out[i].len)) {
				out[i].buf = NULL;
			}
		}
		int64_t next = -1; /* the input offset the transaction commits */
		if (e->txn && n)
			echo_txn_begin(p);
		for (ssize_t i = 0; i < n; i++) {
			if (!ms[i]->err)
				next = ms[i]->offset + 1;
			if (out[i].buf &&
			    rd_kafka_producev(p, RD_KAFKA_V_TOPIC(out[i].topic),
			                      RD_KAFKA_V_PARTITION(out[i].partition),
			                      RD_KAFKA_V_VALUE(out[i].buf, out[i].len),
			                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE),
			                      RD_KAFKA_V_END))
				free(out[i].buf);
			rd_kafka_message_destroy(ms[i]);
		}
		if (e->txn && n)
			echo_txn_commit(p, c, e->in, next);
		rd_kafka_poll(p, 0);
	}
	free(ms);
	free(out);
	rd_kafka_queue_destroy(q);
	rd_kafka_consumer_close(c);
	rd_kafka_destroy(c);
	rd_kafka_flush(p, 5000);
	rd_kafka_destroy(p);
	return NULL;
}

static echo_t *echo_start(bool kreq, bool txn, const char *in, const char *out, kreq_keyring_t *kr)
{
	echo_t *e = calloc(1, sizeof(*e));
	e->kreq = kreq;
	e->txn = txn;
	snprintf(e->in, sizeof(e->in), "%s", in);
	snprintf(e->out, sizeof(e->out), "%s", out);
	e->kr = kr;
	if (pthread_create(&e->thr, NULL, echo_main, e))
		die("pthread_create");
	while (!atomic_load(&e->ready)) /* bounded: echo_main sets it after one bounded query */
		nanosleep(&(struct timespec){0, 1000000}, NULL); /* not a core spinning meanwhile */
	return e;
}

static void echo_stop(echo_t *e)
{
	atomic_store(&e->stop, true);
	pthread_join(e->thr, NULL);
	free(e);
}

/* ---- measurements ------------------------------------------------------- */

typedef struct result {
	double p50_us, p99_us, per_s;
} result_t;

static int cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

static void percentiles(int64_t *ns, int n, result_t *r)
{
	qsort(ns, (size_t)n, sizeof(*ns), cmp_i64);
	r->p50_us = ns[n / 2] / 1e3;
	r->p99_us = ns[(int)(n * 0.99)] / 1e3;
}

static uint8_t payload[256];

/* raw: sequence numbers in the first 8 bytes; window w in flight. */
typedef struct raw {
	rd_kafka_t *p, *c;
	char ping[160];
} raw_t;

static void raw_send(raw_t *r, uint64_t seq)
{
	memcpy(payload, &seq, sizeof(seq));
	if (rd_kafka_producev(r->p, RD_KAFKA_V_TOPIC(r->ping),
	                      RD_KAFKA_V_VALUE(payload, sizeof(payload)),
	                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END))
		die("produce");
}

static bool raw_recv(raw_t *r)
{
	rd_kafka_poll(r->p, 0);
	rd_kafka_message_t *m = rd_kafka_consumer_poll(r->c, 1000);
	bool got = m && !m->err;
	if (m)
		rd_kafka_message_destroy(m);
	return got;
}

static void raw_latency(raw_t *r, int n, result_t *res)
{
	int64_t *ns = malloc(sizeof(int64_t) * (size_t)n);
	for (int i = -n / 10; i < n; i++) { /* first tenth: warm-up */
		int64_t t0 = kreq__mono_ns();
		raw_send(r, (uint64_t)i);
		while (!raw_recv(r))
			;
		if (i >= 0)
			ns[i] = kreq__mono_ns() - t0;
	}
	percentiles(ns, n, res);
	free(ns);
}

static double raw_throughput(raw_t *r, int window, double seconds)
{
	for (int i = 0; i < window; i++)
		raw_send(r, (uint64_t)i);
	int64_t t0 = kreq__mono_ns(), end = t0 + (int64_t)(seconds * 1e9), done = 0;
	while (kreq__mono_ns() < end) {
		if (raw_recv(r)) {
			done++;
			raw_send(r, (uint64_t)done);
		}
	}
	double rate = done / ((kreq__mono_ns() - t0) / 1e9);
	for (int i = 0; i < window;) /* drain the window */
		i += raw_recv(r);
	return rate;
}

static kreq_future_t *kcall(kreq_client_t *cl)
{
	kreq_future_t *f;
	if (kreq_client_call(cl, "bench.echo", payload, sizeof(payload), NULL, &f))
		die("kreq_client_call");
	return f;
}

static void kwait(kreq_future_t *f)
{
	kreq_future_wait(f, -1);
	if (kreq_future_err(f))
		die(kreq_future_errstr(f));
	kreq_future_release(f);
}

#ifdef KREQ_HOPTRACE
/* -DKREQ_HOPTRACE=ON: each hop's time since the call was made, median over
 * the calls at 1 in flight (common/hoptrace.h). */
static int64_t *hops;

static void hops_take(int i, int64_t t0)
{
	for (int h = 0; h < KREQ__HOP_N; h++) {
		int64_t t = atomic_exchange(&kreq__hop_ns[h], 0);
		hops[(size_t)h * 100000 + (size_t)i] = t ? t - t0 : -1;
	}
}

static void hops_print(int n)
{
	static const char *const what[] = {
#define KREQ__HOP_WHAT(name, w) w,
	    KREQ__HOPS(KREQ__HOP_WHAT)
#undef KREQ__HOP_WHAT
	};
	printf("# hop, medians of %d calls at 1 in flight: us since the call / since the hop "
	       "before\n",
	       n);
	/* the step of each call first (it pairs a hop with the last one before
	 * it that the call reached: a light call has no transaction), then sort */
	int64_t *d = malloc(sizeof(int64_t) * (size_t)n * KREQ__HOP_N);
	if (!d)
		die("out of memory");
	for (size_t i = 0; i < (size_t)n; i++) {
		int64_t b = 0;
		for (int h = 0; h < KREQ__HOP_N; h++) {
			int64_t t = hops[(size_t)h * 100000 + i];
			d[(size_t)h * (size_t)n + i] = t < 0 ? -1 : t - b;
			if (t >= 0)
				b = t;
		}
	}
	for (int h = 0; h < KREQ__HOP_N; h++) {
		int64_t *v = hops + (size_t)h * 100000, *dv = d + (size_t)h * (size_t)n;
		qsort(v, (size_t)n, sizeof(*v), cmp_i64);
		qsort(dv, (size_t)n, sizeof(*dv), cmp_i64);
		if (v[n / 2] < 0) /* not reached by most calls (a mode without it) */
			printf("#   %-60s %8s %8s\n", what[h], "-", "-");
		else
			printf("#   %-60s %8.0f %8.0f\n", what[h], v[n / 2] / 1e3, dv[n / 2] / 1e3);
	}
	free(d);
	free(hops);
}
#endif

static void kreq_latency(kreq_client_t *cl, int n, result_t *res)
{
	int64_t *ns = malloc(sizeof(int64_t) * (size_t)n);
#ifdef KREQ_HOPTRACE
	if (n > 100000)
		die("KREQ_HOPTRACE: at most 100000 calls");
	hops = calloc((size_t)KREQ__HOP_N * 100000, sizeof(int64_t));
#endif
	for (int i = -n / 10; i < n; i++) {
		int64_t t0 = kreq__mono_ns();
		kwait(kcall(cl));
		if (i >= 0)
			ns[i] = kreq__mono_ns() - t0;
#ifdef KREQ_HOPTRACE
		kreq__hop(WOKE);
		if (i >= 0)
			hops_take(i, t0);
		else
			for (int h = 0; h < KREQ__HOP_N; h++)
				atomic_store(&kreq__hop_ns[h], 0);
#endif
	}
	percentiles(ns, n, res);
	free(ns);
}

static double kreq_throughput(kreq_client_t *cl, unsigned window, double seconds)
{
	kreq_future_t **ring = calloc(window, sizeof(*ring));
	if (!ring)
		die("out of memory");
	for (unsigned i = 0; i < window; i++)
		ring[i] = kcall(cl);
	int64_t t0 = kreq__mono_ns(), end = t0 + (int64_t)(seconds * 1e9), done = 0;
	for (unsigned i = 0; kreq__mono_ns() < end; i = (i + 1) % window) {
		kwait(ring[i]);
		done++;
		ring[i] = kcall(cl);
	}
	double rate = done / ((kreq__mono_ns() - t0) / 1e9);
	for (unsigned i = 0; i < window; i++)
		kwait(ring[i]);
	free(ring);
	return rate;
}

/* Callback-driven load: each completion issues the next call from the
 * client's service thread, so no thread hand-off per call. */
typedef struct cbload {
	kreq_client_t *cl;
	atomic_long done;
	atomic_bool stop;
	atomic_int live;
} cbload_t;

static void cb_next(kreq_future_t *f, void *opaque);

static void cb_issue(cbload_t *l)
{
	kreq_future_t *f = kcall(l->cl);
	kreq_future_on_done(f, cb_next, l);
	kreq_future_release(f);
}

static void cb_next(kreq_future_t *f, void *opaque)
{
	cbload_t *l = opaque;
	if (kreq_future_err(f))
		die(kreq_future_errstr(f));
	atomic_fetch_add(&l->done, 1);
	if (!atomic_load(&l->stop))
		cb_issue(l);
	else
		atomic_fetch_sub(&l->live, 1);
}

static double kreq_throughput_cb(kreq_client_t *cl, int window, double seconds)
{
	cbload_t l = {.cl = cl};
	atomic_store(&l.live, window);
	int64_t t0 = kreq__mono_ns();
	for (int i = 0; i < window; i++)
		cb_issue(&l);
	while (kreq__mono_ns() - t0 < (int64_t)(seconds * 1e9))
		nanosleep(&(struct timespec){.tv_nsec = 10000000},
		          NULL); /* load runs in callbacks */
	double rate = atomic_load(&l.done) / ((kreq__mono_ns() - t0) / 1e9);
	atomic_store(&l.stop, true);
	while (atomic_load(&l.live) > 0) /* the last calls settle within their deadline */
		nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
	return rate;
}

static kreq_client_t *make_client(kreq_keyring_t *kr)
{
	kreq_conf_t *conf = kreq_conf_new();
	char err[512];
	if (kreq_conf_set(conf, "kafka.bootstrap.servers", bootstrap, err, sizeof(err)) ||
	    kreq_conf_set(conf, "topic.prefix", prefix, err, sizeof(err)) ||
	    kreq_conf_set(conf, "service.check.ms", "0", err, sizeof(err)) ||
	    kreq_conf_set(conf, "client.id", "bench", err, sizeof(err)))
		die(err);
	props_from_env("KREQ_BENCH_CONF", set_kreq_prop, conf);
	kreq_client_t *cl = kreq_client_new(conf, kr, err, sizeof(err));
	kreq_conf_destroy(conf);
	if (!cl)
		die(err);
	return cl;
}

/* CPU seconds used so far by this process, or by the Kafka broker's process
 * (KREQ_BENCH_BROKER_PID; 0 if unset or unreadable). */
static double cpu_s(bool broker)
{
	clockid_t id = CLOCK_PROCESS_CPUTIME_ID;
	const char *pid = getenv("KREQ_BENCH_BROKER_PID");
	if (broker && (!pid || clock_getcpuclockid((pid_t)atoi(pid), &id)))
		return 0;
	struct timespec t;
	clock_gettime(id, &t);
	return (double)t.tv_sec + t.tv_nsec / 1e9;
}

#define MAX_ROUNDS 31

/* One load, `rounds` times: medians of the rate, of the ratio to raw in the
 * same round, and of the CPU microseconds per round trip here and in the
 * broker. */
typedef struct load {
	double rate[MAX_ROUNDS], ratio[MAX_ROUNDS], cpu[MAX_ROUNDS], broker[MAX_ROUNDS];
} load_t;

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_dbl);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

enum { RAW, KREQ, CB, RAWTX };

static raw_t *rawtx; /* transactional worker: the raw echo in a transaction */

/* The last load measured: the raw echo in a transaction too if there is one. */
static int last_load(void)
{
	return rawtx ? RAWTX : CB;
}

static double run_load(int what, raw_t *raw, kreq_client_t *cl, int window, double secs)
{
	switch (what) {
	case RAW:
		return raw_throughput(raw, window, secs);
	case RAWTX:
		return raw_throughput(rawtx, window, secs);
	case KREQ:
		return kreq_throughput(cl, (unsigned)window, secs);
	default:
		return kreq_throughput_cb(cl, window, secs);
	}
}

static const char *const load_name[] = {"raw", "kreq", "callbacks", "raw txn"};
static bool verbose; /* KREQ_BENCH_VERBOSE: every round's figures */

static void measure(raw_t *raw, kreq_client_t *cl, int window, double secs, int rounds,
                    load_t out[4])
{
	for (int r = 0; r < rounds; r++) {
		for (int w = RAW; w <= last_load(); w++) {
			double c0 = cpu_s(false), b0 = cpu_s(true);
			double rate = run_load(w, raw, cl, window, secs);
			double c1 = cpu_s(false), b1 = cpu_s(true);
			double calls = rate * secs;
			out[w].rate[r] = rate;
			out[w].ratio[r] = rate / out[RAW].rate[r];
			out[w].cpu[r] = calls > 0 ? (c1 - c0) * 1e6 / calls : 0;
			out[w].broker[r] = calls > 0 ? (b1 - b0) * 1e6 / calls : 0;
			if (verbose)
				printf("  round %d %-9s %8.0f/s   cpu us %.1f   broker %.1f\n",
				       r + 1, load_name[w], rate, out[w].cpu[r], out[w].broker[r]);
		}
	}
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 2000;
	double secs = argc > 2 ? atof(argv[2]) : 5;
	int rounds = argc > 3 ? atoi(argv[3]) : 1;
	bootstrap = getenv("KREQ_TEST_BOOTSTRAP");
	verbose = getenv("KREQ_BENCH_VERBOSE") != NULL;
	if (!bootstrap || !*bootstrap || n < 10 || secs <= 0 || rounds < 1 || rounds > MAX_ROUNDS ||
	    argc > 4) {
		fprintf(stderr,
		        "usage: KREQ_TEST_BOOTSTRAP=host:port bench_roundtrip "
		        "[calls-at-1-in-flight] [seconds-per-load] [rounds (1..%d)]\n"
		        "(start a Kafka broker with: export \"$(scripts/kafka.sh start --dir "
		        "build/kafka)\")\n",
		        MAX_ROUNDS);
		return 2;
	}
	if (sodium_init() < 0)
		die("sodium_init");
	snprintf(prefix, sizeof(prefix), "kreq-bench-%u", randombytes_random());
	randombytes_buf(payload, sizeof(payload));
	char ping[160], pong[160], req[160];
	snprintf(ping, sizeof(ping), "%s.raw.ping", prefix);
	snprintf(pong, sizeof(pong), "%s.raw.pong", prefix);
	snprintf(req, sizeof(req), "%s.bench.requests", prefix);
	const char *nparts = getenv("KREQ_BENCH_PARTITIONS");
	int req_parts = nparts && *nparts ? atoi(nparts) : 1;
	if (req_parts < 1 || req_parts > 64)
		die("KREQ_BENCH_PARTITIONS must be 1 to 64");
	create_topic(ping, 1);
	create_topic(pong, 1);
	create_topic(req, req_parts);

	kreq_keyring_t *kr = kreq_keyring_new();
	uint8_t key[32];
	randombytes_buf(key, sizeof(key));
	if (kreq_keyring_add(kr, "bench", KREQ_KEY_HMAC_SHA256, key, 32, NULL, 0) ||
	    kreq_keyring_set_signing_key(kr, "bench"))
		die("keyring");

	const char *worker = getenv("KREQ_BENCH_WORKER");
	worker = worker && *worker ? worker : "bench";
	if (strcmp(worker, "bench") && strcmp(worker, "light") && strcmp(worker, "transactional"))
		die("KREQ_BENCH_WORKER must be bench, light or transactional");
	echo_t *re = echo_start(false, false, ping, pong, NULL), *ke = NULL, *te = NULL;
	kreq_worker_t *srvs[MAX_REPLICAS] = {NULL}, *srv = NULL;
	pthread_t srv_threads[MAX_REPLICAS];
	const char *nrep = getenv("KREQ_BENCH_REPLICAS");
	int replicas = nrep && *nrep ? atoi(nrep) : 1;
	if (replicas < 1 || replicas > MAX_REPLICAS)
		die("KREQ_BENCH_REPLICAS must be 1 to 8");
	if (!strcmp(worker, "bench"))
		ke = echo_start(true, false, req, "", kr);
	else
		for (int i = 0; i < replicas; i++)
			srv = srvs[i] = worker_start(worker, kr, &srv_threads[i], i);
	int64_t until = kreq__mono_ns() + 60 * 1000000000LL;
	for (int i = 0; srv && i < replicas; i++) /* a later one's join rebalanced the group */
		while (!kreq_worker_ready(srvs[i])) {
			if (kreq__mono_ns() > until)
				die("the workers were not all serving within 60 s of the last "
				    "one's start");
			nanosleep(&(struct timespec){0, 10000000}, NULL);
		}
	char group[200];
	snprintf(group, sizeof(group), "%s-raw", prefix);
	raw_t raw = {.p = handle(RD_KAFKA_PRODUCER, NULL, true),
	             .c = handle(RD_KAFKA_CONSUMER, group, true)};
	snprintf(raw.ping, sizeof(raw.ping), "%s", ping);
	rd_kafka_poll_set_consumer(raw.c);
	assign_end(raw.c, pong);
	kreq_client_t *cl = make_client(kr);
	/* transactional worker: also the transactional raw echo, at 1 in flight and under load */
	bool txn = !strcmp(worker, "transactional");
	raw_t tx = {0};
	if (txn) {
		char tping[160], tpong[160];
		snprintf(tping, sizeof(tping), "%s.rawtx.ping", prefix);
		snprintf(tpong, sizeof(tpong), "%s.rawtx.pong", prefix);
		create_topic(tping, 1);
		create_topic(tpong, 1);
		te = echo_start(false, true, tping, tpong, NULL);
		snprintf(group, sizeof(group), "%s-rawtx", prefix);
		tx.p = handle(RD_KAFKA_PRODUCER, NULL, true);
		tx.c = handle(RD_KAFKA_CONSUMER, group, true); /* read_committed */
		snprintf(tx.ping, sizeof(tx.ping), "%s", tping);
		rd_kafka_poll_set_consumer(tx.c);
		assign_end(tx.c, tpong);
		rawtx = &tx; /* also under load, beside kreq */
	}

	result_t rl, kl, tl = {0};
	raw_latency(&raw, n, &rl);
	if (txn)
		raw_latency(&tx, n, &tl);
	kreq_latency(cl, n, &kl);
	printf("# round trip through Apache Kafka at %s; %zu-byte payload; %d calls at 1 in "
	       "flight, %.1f s per load, %d round%s; HMAC-SHA-256 signing; kreq worker: %s\n",
	       bootstrap, sizeof(payload), n, secs, rounds, rounds == 1 ? "" : "s",
	       srv ? (strcmp(worker, "light") ? "kreq worker, transactional" : "kreq worker, light")
	           : "bench echo worker");
	printf("%-30s %10s %10s\n", "", "p50 us", "p99 us");
	printf("%-30s %10.0f %10.0f\n", "raw librdkafka ping-pong", rl.p50_us, rl.p99_us);
	if (txn)
		printf("%-30s %10.0f %10.0f\n", "raw, echo in a transaction", tl.p50_us, tl.p99_us);
	printf("%-30s %10.0f %10.0f\n", "kreq call", kl.p50_us, kl.p99_us);
	printf("%-30s %9.2fx %9.2fx\n", "ratio kreq/raw", kl.p50_us / rl.p50_us,
	       kl.p99_us / rl.p99_us);
#ifdef KREQ_HOPTRACE
	hops_print(n);
#endif
	int windows[] = {1, 16, 256};
	const char *only = getenv("KREQ_BENCH_ONLY");
	if (only && atoi(only) > 0 && atoi(only) != 1 && atoi(only) != 16)
		windows[2] = atoi(only); /* any other window, in the last slot */
	for (int i = 0; i < 3; i++) {
		if (only && atoi(only) != windows[i])
			continue;
		load_t l[4];
		measure(&raw, cl, windows[i], secs, rounds, l);
		double rate[4], ratio[4], cpu[4], broker[4];
		for (int w = RAW; w <= last_load(); w++) {
			rate[w] = median(l[w].rate, rounds);
			ratio[w] = median(l[w].ratio, rounds);
			cpu[w] = median(l[w].cpu, rounds);
			broker[w] = median(l[w].broker, rounds);
		}
		printf("in flight %-4d raw %8.0f/s   kreq %8.0f/s (%.2f)   kreq from callbacks "
		       "%8.0f/s (%.2f)\n",
		       windows[i], rate[RAW], rate[KREQ], ratio[KREQ], rate[CB], ratio[CB]);
		printf("  cpu us per round trip: here %.1f / %.1f / %.1f", cpu[RAW], cpu[KREQ],
		       cpu[CB]);
		if (getenv("KREQ_BENCH_BROKER_PID"))
			printf("   broker %.1f / %.1f / %.1f", broker[RAW], broker[KREQ],
			       broker[CB]);
		printf("\n");
		if (rawtx)
			printf(
			    "  raw echo in a transaction %8.0f/s (%.2f)   cpu us per round trip: "
			    "here %.1f   broker %.1f   kreq / it: %.2f\n",
			    rate[RAWTX], ratio[RAWTX], cpu[RAWTX], broker[RAWTX],
			    rate[KREQ] / rate[RAWTX]);
		fflush(stdout);
	}
	kreq_client_destroy(cl);
	rd_kafka_consumer_close(raw.c);
	rd_kafka_destroy(raw.c);
	rd_kafka_destroy(raw.p);
	echo_stop(re);
	if (te) {
		rd_kafka_consumer_close(tx.c);
		rd_kafka_destroy(tx.c);
		rd_kafka_destroy(tx.p);
		echo_stop(te);
	}
	if (ke)
		echo_stop(ke);
	if (srv) {
		for (int i = 0; i < replicas; i++) {
			char *text = NULL; /* how the worker batched its work */
			if (kreq_worker_metrics_text(srvs[i], &text) == KREQ_OK) {
				for (char *l = strtok(text, "\n"); l; l = strtok(NULL, "\n"))
					if (!strncmp(l, "kreq_worker_txn_commit_seconds_sum", 34) ||
					    !strncmp(l, "kreq_worker_txn_commit_seconds_count",
					             36) ||
					    !strncmp(l, "kreq_worker_txn_batch_size_sum", 30))
						printf("# %s\n", l);
				free(text);
			}
		}
		for (int i = 0; i < replicas; i++)
			kreq_worker_stop(srvs[i]);
		for (int i = 0; i < replicas; i++) {
			pthread_join(srv_threads[i], NULL);
			kreq_worker_destroy(srvs[i]);
		}
	}
	kreq_keyring_release(kr);
	delete_topics();
	return 0;
}
