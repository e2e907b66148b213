/*
 * test_netfault.c — exactly-once under network faults (issue 20): a TCP
 * proxy of the test's own (tests/support/netproxy.c) sits between two
 * worker processes (fault_worker, the real worker library) and a real
 * Kafka cluster of the suite's own, started with a PROXIED listener
 * (scripts/kafka.sh --proxied-ports); the load client and every check
 * reach Kafka directly. Under steady load, each case injects one kind of
 * fault on the workers' Kafka connections:
 *   - coordinator_delay: one request of the transaction protocol (EndTxn,
 *     AddOffsetsToTxn, TxnOffsetCommit, AddPartitionsToTxn, in turn) held
 *     longer than the workers' request timeout, then delivered;
 *   - produce_delay: one Produce held the same way;
 *   - late_endtxn: an EndTxn held, and the worker's connections reset
 *     while it is held, so the client carries on on a new connection; the
 *     old EndTxn is released into the worker's next transaction (the
 *     Jepsen scenario KIP-890 defends against);
 *   - drop: every connection of one worker reset, again and again;
 *   - partition: one worker blackholed for longer than its session
 *     timeout, then healed;
 *   - partition_write: the same, starting at one of its Produce requests
 *     (in the middle of a transaction), with slower handlers;
 *   - slow_assignment (no load during the fault): a worker is given its
 *     peer's partitions while Kafka answers its DescribeConfigs more
 *     slowly than its worker.start.timeout.ms; it must go on serving.
 * Checks: those of tests/support/faultload.h (every call settles, one
 * reply per idempotency key, no committed request runs again), then the
 * topics read back from Kafka: no idempotency key has two committed
 * Results, the Result committed for a key is the execution its caller
 * saw, no two different committed replies for a key, and no reply or
 * Result the caller saw belongs to an aborted transaction (records that
 * read_uncommitted shows and read_committed does not). Each case prints
 * calls, delays injected, anomalies and the longest time without a reply.
 * Run on each Kafka line with KREQ_KAFKA_VERSION=3.9.1 / 4.4.0.
 */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <signal.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cluster.h"
#include "faultload.h"
#include "kreq/client.h"
#include "kreq/error.h"
#include "netproxy.h"
#include "common/internal.h"
#include "proto/envelope.h"
#include "testsupport.h"

#define NOPS     600
#define NWORKERS 2
#define DELAY_MS 5000 /* > the workers' request timeouts below */
/* late_endtxn: an EndTxn is held until the AddPartitionsToTxn of the same
 * worker's next transaction (at most this long), so that it lands in it */
#define LATE_DELAY_MS 10000
#define WORKER_TIMEOUTS                                                                            \
	"kafka.socket.timeout.ms=2500;kafka.request.timeout.ms=2500;"                              \
	"kafka.session.timeout.ms=6000;kafka.transaction.timeout.ms=10000"

/* Kafka api keys (the request header's api_key) */
enum {
	API_PRODUCE = 0,
	API_ADD_PARTITIONS = 24,
	API_ADD_OFFSETS = 25,
	API_END_TXN = 26,
	API_TXN_OFFSET_COMMIT = 28,
	API_DESCRIBE_CONFIGS = 32
};

static kreq_test_cluster_t cluster;
static int proxy_port;
static char proxy_target[256], proxied_bootstrap[64];
static kreq_netproxy_t *proxy;

/* ---- set-up ------------------------------------------------------------------ */

static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t l = sizeof(a);
	int port = -1;
	if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&a, &l) == 0)
		port = ntohs(a.sin_port);
	if (fd >= 0)
		close(fd);
	return port;
}

/* The cluster of the suite, with a PROXIED listener advertised at
 * proxy_port; proxy_target gets where that listener really is. */
static int start_cluster(void)
{
	proxy_port = free_port();
	char ports[16];
	snprintf(ports, sizeof(ports), "%d", proxy_port);
	setenv("KREQ_KAFKA_PROXIED_PORTS", ports, 1);
	int rc = kreq_test_cluster_start(&cluster, "kafka-netfault", 1);
	unsetenv("KREQ_KAFKA_PROXIED_PORTS");
	if (rc)
		return -1;
	char cmd[1400], line[256] = "";
	snprintf(cmd, sizeof(cmd), "%s/scripts/kafka.sh proxied --dir %s", KREQ_SOURCE_DIR,
	         cluster.dir);
	FILE *p = popen(cmd, "r");
	char *got = p ? fgets(line, sizeof(line), p) : NULL;
	if (p)
		pclose(p);
	if (!got || strncmp(line, "KREQ_TEST_PROXY_TARGETS=", 24))
		return -1;
	line[strcspn(line, "\n")] = 0;
	snprintf(proxy_target, sizeof(proxy_target), "%s", line + 24);
	snprintf(proxied_bootstrap, sizeof(proxied_bootstrap), "127.0.0.1:%d", proxy_port);
	return 0;
}

static const char *case_set = ""; /* a case's own settings, after the timeouts */
static bool case_journal;         /* the case's workers record starts in a file */

static void journal_path(char *out, size_t size, int slot)
{
	snprintf(out, size, "%s.journal-w%d", record_path, slot);
}

static void setup(void)
{
	fault_worker_path = KREQ_FAULT_WORKER;
	ck_assert_msg(cluster.bootstrap[0], "the suite's Kafka cluster did not start");
	bootstrap = cluster.bootstrap;
	worker_bootstrap = proxied_bootstrap;
	const char *targets[] = {proxy_target};
	proxy = kreq_netproxy_start(1, &proxy_port, targets);
	ck_assert_msg(proxy != NULL, "cannot start the proxy on port %d", proxy_port);
	fault_fixture_open("nf", "netfault");
}

static void teardown(void)
{
	kreq_netproxy_stop(proxy);
	proxy = NULL;
	for (int i = 0; i < NWORKERS; i++) { /* partition_write's */
		char path[280];
		journal_path(path, sizeof(path), i);
		unlink(path);
	}
	fault_fixture_close();
}

/* Worker slot (client.id nf-w<slot> on every Kafka connection, so that
 * the proxy tells the workers apart), with short Kafka timeouts. */
static void spawn(int slot)
{
	char set[800], journal[320] = "";
	if (case_journal) {
		char path[280];
		journal_path(path, sizeof(path), slot);
		snprintf(journal, sizeof(journal), ";worker.poison.journal=%s", path);
	}
	snprintf(set, sizeof(set), "kafka.client.id=nf-w%d;%s%s%s", slot, WORKER_TIMEOUTS, case_set,
	         journal);
	setenv("KREQ_FAULT_WORKER_SET", set, 1);
	/* KREQ_NETFAULT_WORKER_MODE=light: the negative control, an
	 * at-least-once worker the checks must catch */
	const char *mode = getenv("KREQ_NETFAULT_WORKER_MODE");
	worker_spawn(slot, mode ? mode : "transactional");
	unsetenv("KREQ_FAULT_WORKER_SET");
}

/* ---- the faults ---------------------------------------------------------------- */

typedef struct fcase fcase_t;
struct fcase {
	const char *name;
	void (*inject)(fcase_t *f, int step);
	int restarts, faults, drops;
	int64_t t_fault, t_heal;
	int64_t delayed_seen; /* late_endtxn: delayed[EndTxn] when armed */
	bool armed, healed;
};

/* A worker that exits on an error it cannot recover from is restarted, as
 * its supervisor would. */
static void supervise(fcase_t *f)
{
	for (int i = 0; i < NWORKERS; i++) {
		int st;
		if (workers[i].pid > 0 && waitpid(workers[i].pid, &st, WNOHANG) == workers[i].pid) {
			workers[i].pid = 0;
			f->restarts++;
			spawn(i);
		}
	}
}

#define FIRST_FAULT 60
#define FAULT_EVERY 110
#define LAST_FAULT  (NOPS - 120)

static bool fault_step(int step)
{
	return step >= FIRST_FAULT && step <= LAST_FAULT && (step - FIRST_FAULT) % FAULT_EVERY == 0;
}

static const char *const worker_prefix[] = {"nf-w0", "nf-w1"};

static void inject_coordinator(fcase_t *f, int step)
{
	static const int apis[] = {API_END_TXN, API_ADD_OFFSETS, API_TXN_OFFSET_COMMIT,
	                           API_ADD_PARTITIONS};
	if (!fault_step(step))
		return;
	kreq_np_match_t m = {0, worker_prefix[f->faults % NWORKERS], apis[f->faults % 4]};
	kreq_netproxy_clear_delays(proxy);
	ck_assert_int_ge(kreq_netproxy_delay(proxy, m, DELAY_MS, 1), 0);
	f->faults++;
}

static void inject_produce(fcase_t *f, int step)
{
	if (!fault_step(step))
		return;
	kreq_np_match_t m = {0, worker_prefix[f->faults % NWORKERS], API_PRODUCE};
	kreq_netproxy_clear_delays(proxy);
	ck_assert_int_ge(kreq_netproxy_delay(proxy, m, DELAY_MS, 1), 0);
	f->faults++;
}

/* EndTxn held; once the proxy holds one, the worker's connections are
 * reset: librdkafka reconnects, ends the transaction again on a new
 * connection and starts the next one; the old EndTxn is released into it
 * (kreq_netproxy_hold: 50 ms after that transaction's
 * AddPartitionsToTxn), and ends it early (the classic protocol: same
 * producer epoch). */
static void inject_late_endtxn(fcase_t *f, int step)
{
	kreq_np_stats_t st;
	kreq_netproxy_stats(proxy, &st);
	const char *who = worker_prefix[(f->faults + NWORKERS - 1) % NWORKERS];
	if (f->armed && st.delayed[API_END_TXN] > f->delayed_seen) {
		f->drops += kreq_netproxy_drop(proxy, (kreq_np_match_t){0, who, -1});
		f->armed = false;
	}
	if (!fault_step(step) || f->armed)
		return;
	kreq_np_match_t m = {0, worker_prefix[f->faults % NWORKERS], API_END_TXN};
	kreq_netproxy_clear_delays(proxy);
	ck_assert_int_ge(kreq_netproxy_hold(proxy, m, API_ADD_PARTITIONS, LATE_DELAY_MS, 1), 0);
	f->delayed_seen = st.delayed[API_END_TXN];
	f->armed = true;
	f->faults++;
}

static void inject_drop(fcase_t *f, int step)
{
	if (step < FIRST_FAULT || step > LAST_FAULT || step % 40)
		return;
	f->drops += kreq_netproxy_drop(
	    proxy, (kreq_np_match_t){0, worker_prefix[f->faults % NWORKERS], -1});
	f->faults++;
}

/* nf-w0 cut off for PARTITION_MS (> its session timeout) */
#define PARTITION_MS 9000

/* While nf-w0 is cut off, the load is paced so that it spans the whole
 * partition: completion `step` is taken no earlier than its share of
 * PARTITION_MS over steps FIRST_FAULT..LAST_FAULT. A fast machine (nf-w1
 * taking over in ~6 s) would otherwise finish all calls before the heal,
 * and the rejoin under load would go untested. */
static void pace_partition(const fcase_t *f, int step)
{
	int64_t due =
	    f->t_fault + (int64_t)(step - FIRST_FAULT) * PARTITION_MS / (LAST_FAULT - FIRST_FAULT);
	while (kreq_test_now_ms() < due)
		kreq_test_poll_pause();
}

/* While the partition lasts: the pace, then the heal. */
static void partition_heal(fcase_t *f, int step)
{
	if (f->t_fault && !f->healed)
		pace_partition(f, step);
	if (f->t_fault && !f->healed && kreq_test_now_ms() - f->t_fault >= PARTITION_MS) {
		kreq_netproxy_heal(proxy);
		f->t_heal = kreq_test_now_ms();
		f->healed = true;
	}
}

static void inject_partition(fcase_t *f, int step)
{
	if (step == FIRST_FAULT) {
		kreq_netproxy_partition(proxy, (kreq_np_match_t){0, "nf-w0", -1});
		f->t_fault = kreq_test_now_ms();
		f->faults++;
	}
	partition_heal(f, step);
}

/* nf-w0 cut off from its next Produce on: in the middle of a transaction's
 * writes, which are then blackholed with everything after them. */
static void inject_partition_write(fcase_t *f, int step)
{
	if (step == FIRST_FAULT) {
		kreq_netproxy_partition_at(proxy, (kreq_np_match_t){0, "nf-w0", API_PRODUCE});
		f->faults++;
	}
	if (step >= FIRST_FAULT && !f->t_fault) {
		kreq_np_stats_t st;
		kreq_netproxy_stats(proxy, &st);
		f->t_fault = st.partition_started_ms;
	}
	partition_heal(f, step);
}

static void schedule(int step, void *arg)
{
	fcase_t *f = arg;
	supervise(f);
	f->inject(f, step);
}

/* ---- reading the topics back ------------------------------------------------------ */

#define MAX_RECS (MAX_OPS * 4)

typedef struct {
	int op; /* index of ops[] by idempotency key, -1 if none */
	int32_t partition;
	int64_t offset;
	char exec[33];
	bool from_dedup;
} rec_t;

static rec_t rc_res[MAX_RECS], ru_res[MAX_RECS], rc_rep[MAX_RECS], ru_rep[MAX_RECS];

static int op_of(ProtobufCBinaryData k)
{
	if (k.len < 4 || k.len > 10 || memcmp(k.data, "op-", 3))
		return -1;
	char num[8];
	snprintf(num, sizeof(num), "%.*s", (int)k.len - 3, (const char *)k.data + 3);
	int i = atoi(num);
	return i >= 0 && i < NOPS ? i : -1;
}

/* Every record of topic's partitions with the given isolation level,
 * opened (Replies and Results): returns the count. */
static int read_topic(const char *topic, int partitions, const char *isolation, rec_t *out)
{
	char err[512], group[64];
	snprintf(group, sizeof(group), "nf-check-%u", randombytes_uniform(1000000000));
	rd_kafka_conf_t *rc =
	    kreq_test_conf_new(bootstrap, "group.id", group, "isolation.level", isolation,
	                       "enable.partition.eof", "true", "enable.auto.commit", "false", NULL);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, rc, err, sizeof(err));
	ck_assert_msg(rk != NULL, "%s", err);
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(partitions);
	for (int p = 0; p < partitions; p++)
		rd_kafka_topic_partition_list_add(l, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
	ck_assert_int_eq(rd_kafka_assign(rk, l), RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_topic_partition_list_destroy(l);
	kreq__limits_t lim = {8 << 20, 8 << 20, 30000};
	/* the end: each partition's high watermark (no worker writes any more) */
	int64_t hwm[8] = {0}, lo;
	ck_assert_int_le(partitions, 8);
	for (int p = 0; p < partitions; p++)
		ck_assert_int_eq(
		    rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hwm[p], 10000),
		    RD_KAFKA_RESP_ERR_NO_ERROR);
	int n = 0, done = 0;
	bool at_end[8] = {false};
	int64_t until = kreq_test_now_ms() + 60000;
	while (done < partitions) {
		ck_assert_msg(kreq_test_now_ms() < until, "reading %s (%s) did not reach its end",
		              topic, isolation);
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 500);
		if (!m)
			continue;
		if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
			/* an end of fetch: the end of the partition only at its high
			 * watermark (read_committed: the last record is a marker) */
			if (m->offset >= hwm[m->partition] && !at_end[m->partition]) {
				at_end[m->partition] = true;
				done++;
			}
			rd_kafka_message_destroy(m);
			continue;
		}
		ck_assert_msg(!m->err, "reading %s: %s", topic, rd_kafka_message_errstr(m));
		/* opened as of the record's own time: replies expire with their
		 * call's deadline, and this reads them long after */
		kreq__opened_t o;
		int64_t at = rd_kafka_message_timestamp(m, NULL);
		if (kreq__envelope_open(kr, &lim, at > 0 ? at : kreq__now_ms(), m->payload, m->len,
		                        &o, NULL, 0) == KREQ_OK &&
		    (o.kind == KREQ__KIND_REPLY || o.kind == KREQ__KIND_RESULT) && n < MAX_RECS) {
			rec_t *r = &out[n++];
			ProtobufCBinaryData k = o.kind == KREQ__KIND_REPLY
			                            ? o.u.reply->idempotency_key
			                            : o.u.result->idempotency_key;
			ProtobufCBinaryData pl =
			    o.kind == KREQ__KIND_REPLY ? o.u.reply->payload : o.u.result->payload;
			r->op = op_of(k);
			r->partition = m->partition;
			r->offset = m->offset;
			snprintf(r->exec, sizeof(r->exec), "%.*s", (int)(pl.len < 32 ? pl.len : 32),
			         (const char *)pl.data);
			r->from_dedup = o.kind == KREQ__KIND_REPLY && o.u.reply->from_dedup;
			kreq__opened_clear(&o);
		}
		rd_kafka_message_destroy(m);
	}
	rd_kafka_destroy(rk);
	return n;
}

/* The reply topic of this test's load client: the one topic named
 * <prefix>.reply.* */
static void reply_topic(char *out, size_t size)
{
	char err[512], want[96];
	snprintf(want, sizeof(want), "%s.reply.", prefix);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER,
	                              kreq_test_conf_new(bootstrap, "group.id", "nf-inspect", NULL),
	                              err, sizeof(err));
	ck_assert_msg(rk != NULL, "%s", err);
	const struct rd_kafka_metadata *md = NULL;
	ck_assert_int_eq(rd_kafka_metadata(rk, 1, NULL, &md, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
	out[0] = 0;
	for (int t = 0; t < md->topic_cnt; t++)
		if (!strncmp(md->topics[t].topic, want, strlen(want)))
			snprintf(out, size, "%s", md->topics[t].topic);
	rd_kafka_metadata_destroy(md);
	rd_kafka_destroy(rk);
	ck_assert_msg(out[0], "no reply topic %s* in the cluster", want);
}

static bool committed_at(const rec_t *c, int nc, const rec_t *r)
{
	for (int i = 0; i < nc; i++)
		if (c[i].partition == r->partition && c[i].offset == r->offset)
			return true;
	return false;
}

#define REPORT(...)                                                                                \
	do {                                                                                       \
		if (anomalies++ < 20)                                                              \
			fprintf(stderr, "netfault %s: ANOMALY: " __VA_ARGS__);                     \
	} while (0)

/* The checks of the topics (see the top); returns the anomalies found,
 * each printed with its key, partition and offset. */
static int check_topics(const fcase_t *f)
{
	char res_topic[160], rep_topic[160];
	snprintf(res_topic, sizeof(res_topic), "%s.svc.results", prefix);
	reply_topic(rep_topic, sizeof(rep_topic));
	int nrc = read_topic(res_topic, 4, "read_committed", rc_res);
	int nru = read_topic(res_topic, 4, "read_uncommitted", ru_res);
	int nrpc = read_topic(rep_topic, 1, "read_committed", rc_rep);
	int nrpu = read_topic(rep_topic, 1, "read_uncommitted", ru_rep);
	int anomalies = 0;
	static int committed_results[MAX_OPS];
	static char committed_exec[MAX_OPS][33], reply_exec[MAX_OPS][33];
	static int64_t reply_off[MAX_OPS];
	memset(committed_results, 0, sizeof(committed_results));
	memset(committed_exec, 0, sizeof(committed_exec));
	memset(reply_exec, 0, sizeof(reply_exec));
	for (int i = 0; i < nrc; i++) {
		rec_t *r = &rc_res[i];
		if (r->op < 0)
			continue;
		if (committed_results[r->op]++)
			REPORT(
			    "%s has a second committed Result (results [%d] @%lld, execution %s; "
			    "first: %s)\n",
			    f->name, ops[r->op].key, r->partition, (long long)r->offset, r->exec,
			    committed_exec[r->op]);
		else
			snprintf(committed_exec[r->op], 33, "%s", r->exec);
	}
	for (int i = 0; i < nrpc; i++) {
		rec_t *r = &rc_rep[i];
		if (r->op < 0)
			continue;
		if (reply_exec[r->op][0] && strcmp(reply_exec[r->op], r->exec))
			REPORT(
			    "%s: two different committed replies, %s (reply @%lld) and %s (reply "
			    "@%lld)\n",
			    f->name, ops[r->op].key, reply_exec[r->op], (long long)reply_off[r->op],
			    r->exec, (long long)r->offset);
		snprintf(reply_exec[r->op], 33, "%s", r->exec);
		reply_off[r->op] = r->offset;
	}
	for (int i = 0; i < NOPS; i++) {
		if (!ops[i].done)
			continue;
		if (strcmp(reply_exec[i], ops[i].seen))
			REPORT("%s: the caller saw execution %s, the committed replies say '%s'\n",
			       f->name, ops[i].key, ops[i].seen, reply_exec[i]);
		if (!committed_results[i])
			REPORT("%s: the caller saw execution %s but no Result is committed (torn "
			       "transaction)\n",
			       f->name, ops[i].key, ops[i].seen);
		else if (strcmp(committed_exec[i], ops[i].seen))
			REPORT("%s: the caller saw execution %s, the committed Result is %s\n",
			       f->name, ops[i].key, ops[i].seen, committed_exec[i]);
	}
	/* aborted records: read_uncommitted has them, read_committed not */
	int aborted_res = 0, aborted_rep = 0;
	for (int i = 0; i < nru; i++) {
		rec_t *r = &ru_res[i];
		if (committed_at(rc_res, nrc, r) || r->op < 0)
			continue;
		aborted_res++;
		if (!strcmp(r->exec, ops[r->op].seen) && strcmp(committed_exec[r->op], r->exec))
			REPORT("%s: the Result of the caller's execution %s was aborted "
			       "(results [%d] @%lld)\n",
			       f->name, ops[r->op].key, r->exec, r->partition,
			       (long long)r->offset);
	}
	for (int i = 0; i < nrpu; i++) {
		rec_t *r = &ru_rep[i];
		if (committed_at(rc_rep, nrpc, r) || r->op < 0)
			continue;
		aborted_rep++;
		if (!strcmp(r->exec, ops[r->op].seen) && !committed_exec[r->op][0])
			REPORT("%s: the reply the caller took (%s) was aborted (reply @%lld)\n",
			       f->name, ops[r->op].key, r->exec, (long long)r->offset);
	}
	fprintf(stderr,
	        "netfault %s: read back %d committed / %d uncommitted Results, %d / %d replies "
	        "(%d Results and %d replies aborted)\n",
	        f->name, nrc, nru, nrpc, nrpu, aborted_res, aborted_rep);
	return anomalies;
}

/* ---- one case ---------------------------------------------------------------------- */

static void run_case(fcase_t *f)
{
	for (int i = 0; i < NWORKERS; i++)
		spawn(i);
	int64_t t0 = kreq_test_now_ms();
	run_load(NOPS, schedule, f);
	int64_t t1 = kreq_test_now_ms();
	if (f->t_fault && !f->healed)
		kreq_netproxy_heal(proxy);
	kreq_netproxy_clear_delays(proxy);
	supervise(f);
	for (int i = 0; i < NWORKERS; i++)
		worker_signal(i, SIGTERM);
	/* late requests still held reach Kafka before anything is read back */
	KREQ_TEST_AWAIT(kreq_netproxy_pending(proxy) == 0, DELAY_MS + 10000);
	/* the topics first: their anomalies are printed with partitions and
	 * offsets before check_records stops at the first of its own */
	int anomalies = check_topics(f);
	int reruns, calls = 0;
	check_records(NOPS, &reruns);
	for (int i = 0; i < NOPS; i++)
		calls += ops[i].calls;
	kreq_np_stats_t st;
	kreq_netproxy_stats(proxy, &st);
	stall_t all = load_stall(NOPS, t0, t1 + 1);
	fprintf(
	    stderr,
	    "netfault %s: %d ops, %d calls in %.1f s; %d faults: %lld requests delayed %d ms "
	    "(EndTxn %lld, AddOffsets %lld, TxnOffsetCommit %lld, AddPartitions %lld, "
	    "Produce %lld; %lld delivered after their client closed, %lld released into a later "
	    "transaction), %d connections reset, "
	    "%lld blackholed; %d anomalies; longest time without a reply %lld ms; %d "
	    "uncommitted re-executions, %d worker restarts\n",
	    f->name, NOPS, calls, (double)(t1 - t0) / 1000.0, f->faults,
	    (long long)st.delayed_total, f->inject == inject_late_endtxn ? LATE_DELAY_MS : DELAY_MS,
	    (long long)st.delayed[API_END_TXN], (long long)st.delayed[API_ADD_OFFSETS],
	    (long long)st.delayed[API_TXN_OFFSET_COMMIT], (long long)st.delayed[API_ADD_PARTITIONS],
	    (long long)st.delayed[API_PRODUCE], (long long)st.late, (long long)st.released,
	    f->drops, (long long)st.blackholed, anomalies, (long long)all.max_gap_ms, reruns,
	    f->restarts);
	ck_assert_msg(f->faults > 0, "%s: the load ended before any fault", f->name);
	ck_assert_msg(anomalies == 0, "%s: %d anomalies (printed above)", f->name, anomalies);
	/* late_endtxn: Kafka's own verdict on each late EndTxn, released into
	 * the worker's next transaction, which it tears only now and then: the
	 * fencing rule (broker/worker/txn.c) makes Kafka refuse every one (a new
	 * epoch); accepted, it ended the transaction its epoch had open. (In
	 * the other cases a late EndTxn of a transaction that committed may
	 * land before the next one began and is accepted as a retry, harmlessly.) */
	fprintf(stderr, "netfault %s: late EndTxns accepted by Kafka %lld, refused %lld\n", f->name,
	        (long long)st.late_endtxn_accepted, (long long)st.late_endtxn_refused);
	if (f->inject != inject_late_endtxn)
		return;
	ck_assert_msg(
	    st.late_endtxn_accepted == 0,
	    "%s: Kafka accepted %lld late EndTxn(s): the worker went on in the epoch of a "
	    "transaction whose connection closed",
	    f->name, (long long)st.late_endtxn_accepted);
	ck_assert_msg(st.late_endtxn_refused > 0, "%s: no late EndTxn reached Kafka", f->name);
}

START_TEST(test_coordinator_delay)
{
	fcase_t f = {.name = "coordinator_delay", .inject = inject_coordinator};
	run_case(&f);
}
END_TEST

START_TEST(test_produce_delay)
{
	fcase_t f = {.name = "produce_delay", .inject = inject_produce};
	run_case(&f);
}
END_TEST

START_TEST(test_late_endtxn)
{
	fcase_t f = {.name = "late_endtxn", .inject = inject_late_endtxn};
	run_case(&f);
}
END_TEST

START_TEST(test_drop)
{
	fcase_t f = {.name = "drop", .inject = inject_drop};
	run_case(&f);
}
END_TEST

START_TEST(test_partition)
{
	fcase_t f = {.name = "partition", .inject = inject_partition};
	run_case(&f);
	ck_assert_msg(f.healed, "partition: the load ended before the partition was healed");
}
END_TEST

/* The partition at a transaction's writes. Handlers of 0-400 ms, eight
 * calls in flight per partition: the first of a partition is usually
 * still running when later ones finish, so a transaction often holds
 * Results without moving a committed offset. The transaction timeout (20
 * s) keeps nf-w0's records alive through the cut and the reconnection
 * after it (its backoff kept short), and a crash journal records the
 * handler starts, so the first Produce cut is one of the transaction's,
 * not an Attempt. nf-w0's transaction then waits out the cut in its
 * commit (worker.txn.call.timeout.ms, 30 s) while nf-w1, given the
 * partitions after nf-w0's session timed out, redoes what it had not
 * committed. Kafka must refuse that commit, or nf-w1 must see its
 * Results: a transaction that moved no offset sent none and committed
 * unchecked by the group (txn.c txn_offsets), and one whose offsets went
 * through before its Results were cut off committed after nf-w1's dedup
 * rebuild had read past where they would land (rebuild.c
 * stable_offsets); either way keys had two committed Results and two
 * different committed replies. */
START_TEST(test_partition_write)
{
	fcase_t f = {.name = "partition_write", .inject = inject_partition_write};
	sleep_min_ms = 0;
	sleep_span_ms = 400;
	case_set = ";kafka.transaction.timeout.ms=20000;kafka.reconnect.backoff.max.ms=500";
	case_journal = true;
	run_case(&f);
	case_journal = false;
	case_set = "";
	sleep_min_ms = 0;
	sleep_span_ms = 40;
	ck_assert_msg(f.t_fault, "partition_write: no Produce of nf-w0 after the load began");
	ck_assert_msg(f.healed, "partition_write: the load ended before the partition was healed");
}
END_TEST

/* A worker serving for a while is given more partitions (its peer left
 * the group) while Kafka answers slowly: the results topic's check at the
 * assignment (broker/worker/rebuild.c) waits, up to
 * worker.dedup.rebuild.timeout.ms, for answers slower than
 * worker.start.timeout.ms. It used to give those questions
 * worker.start.timeout.ms and stop the worker ("reading the configuration
 * of results topic ...: Local: Timed out"; test_fence's outage case met
 * it as "Kafka did not answer a metadata request ... within
 * worker.start.timeout.ms" after a freeze): a worker that was serving
 * stopped over a Kafka broker that was slow for a few seconds. The delay
 * is longer than the start timeout and shorter than one question's own
 * timeout (15 s, rebuild.c look_ms), so only the bound on the whole wait
 * tells the two apart. The start timeout leaves a worker under TSan room
 * to start. */
#define SLOW_START_MS 8000
#define SLOW_DELAY_MS 11000
#define SLOW_OPS      96

START_TEST(test_slow_assignment)
{
	for (int i = 0; i < NWORKERS; i++) {
		char set[512];
		/* dynamic membership: the peer leaves the group when it stops,
		 * and its partitions move at once */
		snprintf(set, sizeof(set),
		         "kafka.client.id=nf-w%d;worker.start.timeout.ms=%d;"
		         "worker.static.membership=false",
		         i, SLOW_START_MS);
		setenv("KREQ_FAULT_WORKER_SET", set, 1);
		worker_spawn(i, "transactional");
	}
	unsetenv("KREQ_FAULT_WORKER_SET");
	kreq_np_match_t m = {0, "nf-w0", API_DESCRIBE_CONFIGS};
	ck_assert_int_ge(kreq_netproxy_delay(proxy, m, SLOW_DELAY_MS, -1), 0);
	int64_t t0 = kreq_test_now_ms();
	worker_signal(1, SIGTERM); /* w0 is assigned w1's partitions */
	run_load(SLOW_OPS, NULL, NULL);
	int64_t t1 = kreq_test_now_ms();
	int st = 0;
	ck_assert_msg(waitpid(workers[0].pid, &st, WNOHANG) == 0,
	              "slow_assignment: the worker stopped (status 0x%x) at an assignment while "
	              "Kafka answered in %d ms (worker.start.timeout.ms %d)",
	              st, SLOW_DELAY_MS, SLOW_START_MS);
	kreq_np_stats_t nst;
	kreq_netproxy_stats(proxy, &nst);
	kreq_netproxy_clear_delays(proxy);
	int reruns;
	check_records(SLOW_OPS, &reruns);
	stall_t all = load_stall(SLOW_OPS, t0, t1 + 1);
	fprintf(stderr,
	        "netfault slow_assignment: %d ops in %.1f s after the peer left; %lld "
	        "DescribeConfigs delayed %d ms; longest time without a reply %lld ms\n",
	        SLOW_OPS, (double)(t1 - t0) / 1000.0, (long long)nst.delayed[API_DESCRIBE_CONFIGS],
	        SLOW_DELAY_MS, (long long)all.max_gap_ms);
	ck_assert_msg(nst.delayed[API_DESCRIBE_CONFIGS] > 0,
	              "slow_assignment: no DescribeConfigs of the worker was delayed (no "
	              "assignment checked the results topic?)");
	worker_signal(0, SIGTERM);
}
END_TEST

static void add_case(Suite *s, const char *name, const TTest *test)
{
	TCase *tc = tcase_create(name);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 300); /* TSan: a case takes ~25 s in a release build */
	tcase_add_test(tc, test);
	suite_add_tcase(s, tc);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	Suite *s = suite_create("netfault");
	add_case(s, "coordinator_delay", test_coordinator_delay);
	add_case(s, "produce_delay", test_produce_delay);
	add_case(s, "late_endtxn", test_late_endtxn);
	add_case(s, "drop", test_drop);
	add_case(s, "partition", test_partition);
	add_case(s, "partition_write", test_partition_write);
	add_case(s, "slow_assignment", test_slow_assignment);
	if (start_cluster())
		fprintf(stderr, "cannot start the proxied Kafka cluster: every test fails\n");
	int rc = kreq_test_run_suite(s);
	kreq_test_cluster_stop(&cluster);
	return rc;
}
