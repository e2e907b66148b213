/*
 * bench_roundtrip.c — kreq call round trip vs raw librdkafka ping-pong, in
 * the same run, against a real Kafka broker on loopback.
 *
 *   raw:  producer -> ping topic -> echo thread (consume, produce) -> pong
 *         topic -> consumer; no signing, no correlation, no transactions.
 *   kreq: kreq_client_call() -> <prefix>.bench.requests -> echo worker
 *         (verify the request, sign a reply, produce it to the reply topic)
 *         -> the client's reply consumer -> future settled. This is kreq's
 *         lighter, non-transactional path; the transactional kreqd path is
 *         measured when kreqd lands (issue #4).
 * Both echo threads use the same librdkafka settings as the client.
 *
 * Usage: KREQ_TEST_BOOTSTRAP=host:port bench_roundtrip [calls-at-1-in-flight] [seconds-per-load]
 * Prints p50/p99 latency at 1 in flight and throughput at 1/16/256 in flight.
 */
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/internal.h"
#include "kreq/client.h"
#include "proto/envelope.h"

static const char *bootstrap;
static char prefix[64];

static void die(const char *what)
{
	fprintf(stderr, "bench_roundtrip: %s\n", what);
	exit(1);
}

static rd_kafka_t *handle(rd_kafka_type_t type, const char *group)
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
	rd_kafka_t *rk = rd_kafka_new(type, c, err, sizeof(err));
	if (!rk)
		die(err);
	return rk;
}

/* Assigns partition 0 at its current end, read first, so nothing produced
 * after this returns is missed (OFFSET_END would be resolved later). */
static void assign_end(rd_kafka_t *c, const char *topic)
{
	int64_t lo, hi;
	if (rd_kafka_query_watermark_offsets(c, topic, 0, &lo, &hi, 15000))
		die("query_watermark_offsets");
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(l, topic, 0)->offset = hi;
	if (rd_kafka_assign(c, l))
		die("assign");
	rd_kafka_topic_partition_list_destroy(l);
}

static void create_topic(const char *topic)
{
	rd_kafka_t *p = handle(RD_KAFKA_PRODUCER, NULL);
	rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(topic, 1, -1, NULL, 0);
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

/* ---- echo threads ------------------------------------------------------- */

typedef struct echo {
	bool kreq; /* verify + sign (kreq) or forward bytes (raw) */
	char in[160], out[160];
	kreq_keyring_t *kr;
	atomic_bool stop, ready;
	pthread_t thr;
} echo_t;

static void echo_kreq(echo_t *e, rd_kafka_t *p, const rd_kafka_message_t *m)
{
	static const kreq__limits_t lim = {1 << 20, 1 << 20, 30000};
	kreq__opened_t o;
	if (kreq__envelope_open(e->kr, &lim, kreq__now_ms(), m->payload, m->len, &o, NULL, 0))
		return;
	const Kreq__Request *q = o.u.req;
	Kreq__Reply r = KREQ__REPLY__INIT;
	r.correlation_id = q->correlation_id;
	r.idempotency_key = q->idempotency_key;
	r.payload = q->payload;
	r.issued_at_ms = kreq__now_ms();
	r.deadline_ms = q->deadline_ms > r.issued_at_ms ? q->deadline_ms : r.issued_at_ms;
	r.attempt = q->attempt;
	uint8_t *buf;
	size_t len;
	if (!kreq__envelope_seal(e->kr, &lim, KREQ__KIND_REPLY, &r.base, &buf, &len, NULL, 0))
		rd_kafka_producev(p, RD_KAFKA_V_TOPIC(q->reply_topic),
		                  RD_KAFKA_V_PARTITION(q->reply_partition),
		                  RD_KAFKA_V_VALUE(buf, len),
		                  RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE), RD_KAFKA_V_END);
	kreq__opened_clear(&o);
}

static void *echo_main(void *arg)
{
	echo_t *e = arg;
	char group[200];
	snprintf(group, sizeof(group), "%s-echo-%d", prefix, e->kreq);
	rd_kafka_t *c = handle(RD_KAFKA_CONSUMER, group), *p = handle(RD_KAFKA_PRODUCER, NULL);
	rd_kafka_poll_set_consumer(c);
	assign_end(c, e->in);
	atomic_store(&e->ready, true);
	while (!atomic_load(&e->stop)) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 50);
		if (m && !m->err) {
			if (e->kreq)
				echo_kreq(e, p, m);
			else
				rd_kafka_producev(p, RD_KAFKA_V_TOPIC(e->out),
				                  RD_KAFKA_V_VALUE(m->payload, m->len),
				                  RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				                  RD_KAFKA_V_END);
		}
		if (m)
			rd_kafka_message_destroy(m);
		rd_kafka_poll(p, 0);
	}
	rd_kafka_consumer_close(c);
	rd_kafka_destroy(c);
	rd_kafka_flush(p, 5000);
	rd_kafka_destroy(p);
	return NULL;
}

static echo_t *echo_start(bool kreq, const char *in, const char *out, kreq_keyring_t *kr)
{
	echo_t *e = calloc(1, sizeof(*e));
	e->kreq = kreq;
	snprintf(e->in, sizeof(e->in), "%s", in);
	snprintf(e->out, sizeof(e->out), "%s", out);
	e->kr = kr;
	if (pthread_create(&e->thr, NULL, echo_main, e))
		die("pthread_create");
	while (!atomic_load(&e->ready))
		sched_yield(); /* bounded: echo_main sets it after one bounded query */
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

static void kreq_latency(kreq_client_t *cl, int n, result_t *res)
{
	int64_t *ns = malloc(sizeof(int64_t) * (size_t)n);
	for (int i = -n / 10; i < n; i++) {
		int64_t t0 = kreq__mono_ns();
		kwait(kcall(cl));
		if (i >= 0)
			ns[i] = kreq__mono_ns() - t0;
	}
	percentiles(ns, n, res);
	free(ns);
}

static double kreq_throughput(kreq_client_t *cl, int window, double seconds)
{
	kreq_future_t **ring = calloc((size_t)window, sizeof(*ring));
	for (int i = 0; i < window; i++)
		ring[i] = kcall(cl);
	int64_t t0 = kreq__mono_ns(), end = t0 + (int64_t)(seconds * 1e9), done = 0;
	for (int i = 0; kreq__mono_ns() < end; i = (i + 1) % window) {
		kwait(ring[i]);
		done++;
		ring[i] = kcall(cl);
	}
	double rate = done / ((kreq__mono_ns() - t0) / 1e9);
	for (int i = 0; i < window; i++)
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
	kreq_client_t *cl = kreq_client_new(conf, kr, err, sizeof(err));
	kreq_conf_destroy(conf);
	if (!cl)
		die(err);
	return cl;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 2000;
	double secs = argc > 2 ? atof(argv[2]) : 5;
	bootstrap = getenv("KREQ_TEST_BOOTSTRAP");
	if (!bootstrap || !*bootstrap || n < 10 || secs <= 0 || argc > 3) {
		fprintf(stderr, "usage: KREQ_TEST_BOOTSTRAP=host:port bench_roundtrip "
		                "[calls-at-1-in-flight] [seconds-per-load]\n"
		                "(start a broker with: export \"$(scripts/kafka.sh start --dir "
		                "build/kafka)\")\n");
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
	create_topic(ping);
	create_topic(pong);
	create_topic(req);

	kreq_keyring_t *kr = kreq_keyring_new();
	uint8_t key[32];
	randombytes_buf(key, sizeof(key));
	if (kreq_keyring_add(kr, "bench", KREQ_KEY_HMAC_SHA256, key, 32, NULL, 0) ||
	    kreq_keyring_set_signing_key(kr, "bench"))
		die("keyring");

	echo_t *re = echo_start(false, ping, pong, NULL), *ke = echo_start(true, req, "", kr);
	char group[200];
	snprintf(group, sizeof(group), "%s-raw", prefix);
	raw_t raw = {.p = handle(RD_KAFKA_PRODUCER, NULL), .c = handle(RD_KAFKA_CONSUMER, group)};
	snprintf(raw.ping, sizeof(raw.ping), "%s", ping);
	rd_kafka_poll_set_consumer(raw.c);
	assign_end(raw.c, pong);
	kreq_client_t *cl = make_client(kr);

	result_t rl, kl;
	raw_latency(&raw, n, &rl);
	kreq_latency(cl, n, &kl);
	printf("# round trip through Apache Kafka at %s; %zu-byte payload; %d calls at 1 in "
	       "flight, %.0f s per load; HMAC-SHA-256 signing\n",
	       bootstrap, sizeof(payload), n, secs);
	printf("%-28s %10s %10s %12s\n", "", "p50 us", "p99 us", "calls/s");
	printf("%-28s %10.0f %10.0f\n", "raw librdkafka ping-pong", rl.p50_us, rl.p99_us);
	printf("%-28s %10.0f %10.0f\n", "kreq call (non-transactional)", kl.p50_us, kl.p99_us);
	printf("%-28s %9.2fx %9.2fx\n", "ratio kreq/raw", kl.p50_us / rl.p50_us,
	       kl.p99_us / rl.p99_us);
	const int windows[] = {1, 16, 256};
	for (int i = 0; i < 3; i++) {
		double r = raw_throughput(&raw, windows[i], secs);
		double k = kreq_throughput(cl, windows[i], secs);
		double kc = kreq_throughput_cb(cl, windows[i], secs);
		printf("in flight %-4d raw %10.0f/s   kreq %10.0f/s (%.2f)   kreq from callbacks "
		       "%10.0f/s (%.2f)\n",
		       windows[i], r, k, k / r, kc, kc / r);
	}
	kreq_client_destroy(cl);
	rd_kafka_consumer_close(raw.c);
	rd_kafka_destroy(raw.c);
	rd_kafka_destroy(raw.p);
	echo_stop(re);
	echo_stop(ke);
	kreq_keyring_release(kr);
	return 0;
}
