/*
 * test_rebuild.c — the dedup rebuild and the results topic, against a real
 * Kafka broker (issue 16, cases 2, 6 and 11):
 *   - a Result committed by another transactional producer after the
 *     rebuild started (its transaction open at the start) is loaded, and a
 *     retry of its key is served from dedup; a transaction that stays open
 *     ends the rebuild with an error naming the partition;
 *   - Results signed by any key not in worker.result.signers (a tenant's)
 *     are counted and ignored; the worker's own Results are signed with its
 *     signing key and served after a restart;
 *   - the results topic is refused when not compacted, when its retention
 *     is shorter than the dedup retention, or when it is deleted while the
 *     worker serves (kreqd exits 2, naming it; never re-created);
 *   - SIGTERM stops kreqd within its grace while a rebuild waits.
 *
 * Why a raw transactional producer: only a second producer holding a real
 * transaction open on the results topic makes the reader's last stable
 * offset stop short of its high watermark, which is what the rebuild must
 * see past; the mock cluster does not enforce read_committed.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "broker/worker/worker_int.h"
#include "common/internal.h"
#include "common/topic_admin.h"
#include "kreq/client.h"
#include "kreq/error.h"
#include "kreq/worker.h"
#include "proc.h"
#include "proto/envelope.h"
#include "worker.h"
#include "testsupport.h"

static const char *bootstrap;
static char prefix[64], req_topic[160], res_topic[160];
static kreq_keyring_t *kr; /* the worker's: k1 signs; tenant keys t1, t2 */
static atomic_int executions;

/* Log lines of the worker that tests wait for. */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char logged[16384];

static void on_log(void *opaque, int level, const char *fac, const char *msg)
{
	(void)opaque;
	(void)fac;
	if (level > 5)
		return;
	pthread_mutex_lock(&log_lock);
	size_t n = strlen(logged);
	if (n + strlen(msg) + 2 < sizeof(logged))
		snprintf(logged + n, sizeof(logged) - n, "%s\n", msg);
	pthread_mutex_unlock(&log_lock);
}

static bool log_has(const char *text)
{
	pthread_mutex_lock(&log_lock);
	bool found = strstr(logged, text) != NULL;
	pthread_mutex_unlock(&log_lock);
	return found;
}

static void h_echo(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	atomic_fetch_add(&executions, 1);
	size_t len;
	const void *p = kreq_request_payload(r, &len);
	kreq_request_reply(r, 0, p, len, NULL);
}

/* ---- workers and clients -------------------------------------------------- */

static kreq_conf_t *base_conf(const char *client_id, const char *const *extra)
{
	kreq_conf_t *conf = kreq_conf_new();
	char err[512];
	ck_assert_int_eq(kreq_conf_set(conf, "kafka.bootstrap.servers", bootstrap, err, 512),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "topic.prefix", prefix, err, 512), KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "client.id", client_id, err, 512), KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "log.level", "5", err, 512), KREQ_OK);
	for (; extra && *extra; extra += 2)
		ck_assert_msg(kreq_conf_set(conf, extra[0], extra[1], err, 512) == KREQ_OK,
		              "%s: %s", extra[0], err);
	return conf;
}

static kreq_worker_t *worker_new(const char *worker_id, const char *const *extra)
{
	kreq_conf_t *conf = base_conf(worker_id, extra);
	kreq_conf_set_log_cb(conf, on_log, NULL);
	char err[512];
	kreq_worker_t *s = kreq_worker_new(conf, kr, "svc", err, sizeof(err));
	ck_assert_msg(s != NULL, "kreq_worker_new: %s", err);
	kreq_conf_destroy(conf);
	ck_assert_int_eq(kreq_worker_register(s, "svc.echo", h_echo, NULL, KREQ_HANDLER_INLINE),
	                 KREQ_OK);
	return s;
}

static void *run_main(void *arg)
{
	kreq_test_running_t *rs = arg;
	rs->rc = kreq_worker_run(rs->s, rs->err, sizeof(rs->err));
	atomic_store(&rs->done, true);
	return NULL;
}

/* Runs s on a thread without waiting for it to serve. */
static kreq_test_running_t *worker_launch(kreq_worker_t *s)
{
	kreq_test_running_t *rs = calloc(1, sizeof(*rs));
	ck_assert_ptr_nonnull(rs);
	rs->s = s;
	ck_assert_int_eq(pthread_create(&rs->t, NULL, run_main, rs), 0);
	return rs;
}

/* Starts a worker once so that it creates the topics (partitions), then
 * stops it. */
static void create_topics(const char *partitions)
{
	const char *const extra[] = {"worker.topic.partitions", partitions, NULL};
	kreq_test_worker_stop(kreq_test_worker_start(worker_new("w0", extra)));
}

static kreq_client_t *client_new(kreq_keyring_t *ckr)
{
	char id[64], err[512];
	snprintf(id, sizeof(id), "cl-%u", randombytes_uniform(1000000));
	kreq_conf_t *conf = base_conf(id, NULL);
	kreq_client_t *c = kreq_client_new(conf, ckr, err, sizeof(err));
	ck_assert_msg(c != NULL, "kreq_client_new: %s", err);
	kreq_conf_destroy(conf);
	return c;
}

/* Calls svc.echo with payload and idempotency key idem; returns whether
 * the reply (status 0, payload echoed) came from the dedup store. */
static bool call_echo(kreq_client_t *c, const char *payload, const char *idem)
{
	kreq_call_opts_t *o = kreq_call_opts_new();
	ck_assert_int_eq(kreq_call_opts_set_timeout(o, 30000), KREQ_OK);
	ck_assert_int_eq(kreq_call_opts_set_idempotency_key(o, idem, strlen(idem)), KREQ_OK);
	kreq_future_t *f = NULL;
	ck_assert_int_eq(kreq_client_call(c, "svc.echo", payload, strlen(payload), o, &f), KREQ_OK);
	kreq_call_opts_destroy(o);
	ck_assert_int_eq(kreq_future_wait(f, 60000), KREQ_OK);
	ck_assert_msg(kreq_future_err(f) == KREQ_OK, "call failed: %s", kreq_future_errstr(f));
	ck_assert_int_eq(kreq_future_status(f), 0);
	size_t len;
	const void *p = kreq_future_payload(f, &len);
	ck_assert_uint_eq(len, strlen(payload));
	ck_assert(!memcmp(p, payload, len));
	bool dedup = kreq_future_from_dedup(f);
	kreq_future_release(f);
	return dedup;
}

/* ---- records written straight to the results topic ------------------------- */

/* A Result of svc.echo(payload) for (request_key_id, idem), sealed with
 * signer's signing key. */
static void seal_result(kreq_keyring_t *signer, const char *request_key_id, const char *idem,
                        const char *payload, uint8_t **buf, size_t *len)
{
	Kreq__Request q = KREQ__REQUEST__INIT;
	q.method = "svc.echo";
	q.payload = (ProtobufCBinaryData){strlen(payload), (uint8_t *)payload};
	uint8_t digest[32];
	kreq__request_digest(&q, digest);
	Kreq__Result rs = KREQ__RESULT__INIT;
	rs.request_digest = (ProtobufCBinaryData){32, digest};
	rs.status = 0;
	rs.payload = q.payload;
	rs.error = "";
	rs.idempotency_key = (ProtobufCBinaryData){strlen(idem), (uint8_t *)idem};
	rs.request_key_id = (char *)request_key_id;
	rs.method = q.method;
	rs.issued_at_ms = kreq__now_ms();
	rs.deadline_ms = kreq__now_ms() + 3600000;
	kreq__limits_t lim = {1 << 20, 1 << 20, 30000};
	char err[256];
	ck_assert_int_eq(kreq__envelope_seal(signer, &lim, KREQ__KIND_RESULT, &rs.base, buf, len,
	                                     err, sizeof(err)),
	                 KREQ_OK);
}

static rd_kafka_t *producer_new(const char *txn_id)
{
	char err[512];
	rd_kafka_conf_t *rc = txn_id ? kreq_test_conf_new(bootstrap, "transactional.id", txn_id,
	                                                  "transaction.timeout.ms", "120000", NULL)
	                             : kreq_test_conf_new(bootstrap, NULL);
	rd_kafka_t *p = rd_kafka_new(RD_KAFKA_PRODUCER, rc, err, sizeof(err));
	ck_assert_msg(p != NULL, "%s", err);
	return p;
}

static void produce(rd_kafka_t *p, const char *idem, const uint8_t *buf, size_t len)
{
	ck_assert_int_eq(rd_kafka_producev(
	                     p, RD_KAFKA_V_TOPIC(res_topic), RD_KAFKA_V_PARTITION(0),
	                     RD_KAFKA_V_KEY(idem, strlen(idem)), RD_KAFKA_V_VALUE((void *)buf, len),
	                     RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END),
	                 RD_KAFKA_RESP_ERR_NO_ERROR);
	ck_assert_int_eq(rd_kafka_flush(p, 15000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

static void txn_ok(rd_kafka_error_t *e, const char *what)
{
	ck_assert_msg(e == NULL, "%s: %s", what, e ? rd_kafka_error_string(e) : "");
}

/* A transactional producer with an open transaction holding a Result of
 * the worker's (k1) for idem on partition 0 of the results topic. */
static rd_kafka_t *open_txn_with_result(const char *idem, const char *payload)
{
	char id[96];
	snprintf(id, sizeof(id), "%s.other", prefix);
	rd_kafka_t *p = producer_new(id);
	txn_ok(rd_kafka_init_transactions(p, 30000), "init_transactions");
	txn_ok(rd_kafka_begin_transaction(p), "begin_transaction");
	uint8_t *buf;
	size_t len;
	seal_result(kr, "k1", idem, payload, &buf, &len);
	produce(p, idem, buf, len);
	free(buf);
	return p;
}

/* ---- fixture ---------------------------------------------------------------- */

static void add_key(kreq_keyring_t *to, const char *id, const uint8_t key[32])
{
	ck_assert_int_eq(kreq_keyring_add(to, id, KREQ_KEY_HMAC_SHA256, key, 32, NULL, 0), KREQ_OK);
}

static uint8_t k1[32], t1[32], t2[32];

static void setup(void)
{
	bootstrap = kreq_test_bootstrap();
	kreq_test_topic_name(prefix, sizeof(prefix), "reb");
	snprintf(req_topic, sizeof(req_topic), "%s.svc.requests", prefix);
	snprintf(res_topic, sizeof(res_topic), "%s.svc.results", prefix);
	randombytes_buf(k1, sizeof(k1));
	randombytes_buf(t1, sizeof(t1));
	randombytes_buf(t2, sizeof(t2));
	kr = kreq_keyring_new();
	add_key(kr, "k1", k1);
	add_key(kr, "t1", t1);
	add_key(kr, "t2", t2);
	ck_assert_int_eq(kreq_keyring_set_signing_key(kr, "k1"), KREQ_OK);
	atomic_store(&executions, 0);
	logged[0] = '\0';
}

static void teardown(void)
{
	kreq_keyring_release(kr);
}

/* ---- signer list (no Kafka) ------------------------------------------------------- */

START_TEST(test_signer_list)
{
	ck_assert(kreq__signer_listed("k1", "k1"));
	ck_assert(kreq__signer_listed("k0,k1", "k1"));
	ck_assert(kreq__signer_listed(" k0 , k1 ", "k1"));
	ck_assert(kreq__signer_listed("k1,", "k1"));
	ck_assert(!kreq__signer_listed("k10", "k1"));
	ck_assert(!kreq__signer_listed("k", "k1"));
	ck_assert(!kreq__signer_listed("", "k1"));
	ck_assert(!kreq__signer_listed(",,", "k1"));
	ck_assert(!kreq__signer_listed("k0,t1", "k1"));

	/* the worker's own signing key must be a result signer */
	kreq_conf_t *conf =
	    base_conf("w1", (const char *const[]){"worker.result.signers", "k0,t1", NULL});
	char err[512] = "";
	ck_assert_ptr_null(kreq_worker_new(conf, kr, "svc", err, sizeof(err)));
	ck_assert_msg(strstr(err, "worker.result.signers (k0,t1) does not list the signing key k1"),
	              "%s", err);
	ck_assert_int_eq(kreq_conf_set(conf, "worker.result.signers", "k0, k1", err, 512), KREQ_OK);
	kreq_worker_t *s = kreq_worker_new(conf, kr, "svc", err, sizeof(err));
	ck_assert_msg(s != NULL, "%s", err);
	/* nor can a new keyring sign with a key that is not one */
	kreq_keyring_t *other = kreq_keyring_new();
	add_key(other, "t1", t1);
	ck_assert_int_eq(kreq_keyring_set_signing_key(other, "t1"), KREQ_OK);
	ck_assert_int_eq(kreq_worker_set_keyring(s, other), KREQ_ECONF);
	add_key(other, "k0", k1);
	ck_assert_int_eq(kreq_keyring_set_signing_key(other, "k0"), KREQ_OK);
	ck_assert_int_eq(kreq_worker_set_keyring(s, other), KREQ_OK);
	kreq_keyring_release(other);
	kreq_worker_destroy(s);
	kreq_conf_destroy(conf);
}
END_TEST

/* ---- case 2: transactions open when the rebuild starts ----------------------- */

struct launch {
	kreq_worker_t *s;
	kreq_test_running_t *rs;
	atomic_bool started;
};

static void *start_main(void *arg)
{
	struct launch *l = arg;
	l->rs = kreq_test_worker_start(l->s);
	atomic_store(&l->started, true);
	return NULL;
}

/* Another producer's Result for "late-1" sits in a transaction that is
 * open while the new worker rebuilds partition 0; it commits once the
 * rebuild is waiting for it (or, with a rebuild that does not wait, once
 * the worker serves). A retry of late-1 must come from dedup. */
START_TEST(test_waits_for_open_transaction)
{
	create_topics("1");
	rd_kafka_t *p = open_txn_with_result("late-1", "late");
	struct launch l = {.s = worker_new("w1", NULL)};
	pthread_t t;
	ck_assert_int_eq(pthread_create(&t, NULL, start_main, &l), 0);
	KREQ_TEST_AWAIT(log_has("a transaction is open up to") || atomic_load(&l.started), 60000);
	bool waited = !atomic_load(&l.started);
	txn_ok(rd_kafka_commit_transaction(p, 30000), "commit_transaction");
	pthread_join(t, NULL);
	rd_kafka_destroy(p);
	kreq_client_t *c = client_new(kr);
	bool dedup = call_echo(c, "late", "late-1");
	kreq_client_destroy(c);
	int runs = atomic_load(&executions);
	kreq_test_worker_stop(l.rs);
	ck_assert_msg(dedup && runs == 0,
	              "the late result was not served (from_dedup %d, handler ran %d time(s), "
	              "rebuild waited: %d)",
	              dedup, runs, waited);
	ck_assert(waited);
}
END_TEST

/* The open transaction is aborted instead: the rebuild ends (the reader's
 * position moves over the aborted record and the abort marker) and the
 * retry runs the handler, its result never having been committed. */
START_TEST(test_aborted_transaction_ends_wait)
{
	create_topics("1");
	rd_kafka_t *p = open_txn_with_result("gone-1", "gone");
	struct launch l = {.s = worker_new("w1", NULL)};
	pthread_t t;
	ck_assert_int_eq(pthread_create(&t, NULL, start_main, &l), 0);
	KREQ_TEST_AWAIT(log_has("a transaction is open up to"), 60000);
	ck_assert(!atomic_load(&l.started));
	txn_ok(rd_kafka_abort_transaction(p, 30000), "abort_transaction");
	pthread_join(t, NULL); /* served within kreq_test_worker_start's 60 s */
	rd_kafka_destroy(p);
	kreq_client_t *c = client_new(kr);
	ck_assert(!call_echo(c, "gone", "gone-1"));
	ck_assert_int_eq(atomic_load(&executions), 1);
	kreq_client_destroy(c);
	kreq_test_worker_stop(l.rs);
}
END_TEST

/* A transaction that stays open past worker.dedup.rebuild.timeout.ms ends
 * the run with an error naming the partition and the open transaction. */
START_TEST(test_open_transaction_times_out)
{
	create_topics("1");
	rd_kafka_t *p = open_txn_with_result("stuck-1", "stuck");
	const char *const extra[] = {"worker.dedup.rebuild.timeout.ms", "3000", NULL};
	kreq_test_running_t *rs = worker_launch(worker_new("w1", extra));
	KREQ_TEST_AWAIT(atomic_load(&rs->done), 60000);
	char err[1024];
	int rc = kreq_test_worker_reap(rs, err, sizeof(err));
	txn_ok(rd_kafka_abort_transaction(p, 30000), "abort_transaction");
	rd_kafka_destroy(p);
	char part[200];
	snprintf(part, sizeof(part), "results %s [0] is readable up to offset", res_topic);
	ck_assert_msg(rc == KREQ_EKAFKA && strstr(err, part) &&
	                  strstr(err, "a transaction open there since the rebuild started") &&
	                  strstr(err, "worker.dedup.rebuild.timeout.ms (3000 ms)"),
	              "rc %s: %s", kreq_err_name(rc), err);
}
END_TEST

/* ---- case 6: result signers ------------------------------------------------------- */

/* The signing key id of the last record of results partition 0. */
static void last_result_signer(char *key_id, size_t size)
{
	char err[512];
	rd_kafka_conf_t *rc = kreq_test_conf_new(bootstrap, "group.id", "inspect",
	                                         "enable.partition.eof", "true", NULL);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, rc, err, sizeof(err));
	ck_assert_ptr_nonnull(rk);
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(l, res_topic, 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
	ck_assert_int_eq(rd_kafka_assign(rk, l), RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_topic_partition_list_destroy(l);
	key_id[0] = '\0';
	kreq__limits_t lim = {1 << 20, 1 << 20, 30000};
	for (int64_t until = kreq_test_now_ms() + 30000; kreq_test_now_ms() < until;) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
		if (!m)
			continue;
		bool eof = m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF;
		kreq__opened_t o;
		if (!m->err && kreq__envelope_open(kr, &lim, kreq__now_ms(), m->payload, m->len, &o,
		                                   err, sizeof(err)) == KREQ_OK) {
			snprintf(key_id, size, "%s", o.key_id);
			kreq__opened_clear(&o);
		}
		rd_kafka_message_destroy(m);
		if (eof)
			break;
	}
	rd_kafka_destroy(rk);
}

/* A Result signed by tenant t1 for t2's idempotency key is not served to
 * t2: its call runs the handler; the foreign Result is counted. The
 * worker's own Result (signed k1) is served after a restart. */
START_TEST(test_foreign_signer_ignored)
{
	create_topics("1");
	kreq_keyring_t *tenant1 = kreq_keyring_new();
	add_key(tenant1, "t1", t1);
	ck_assert_int_eq(kreq_keyring_set_signing_key(tenant1, "t1"), KREQ_OK);
	uint8_t *buf;
	size_t len;
	seal_result(tenant1, "t2", "acct-9", "pay", &buf, &len);
	kreq_keyring_release(tenant1);
	rd_kafka_t *p = producer_new(NULL);
	produce(p, "acct-9", buf, len);
	free(buf);
	rd_kafka_destroy(p);

	kreq_test_running_t *w = kreq_test_worker_start(worker_new("w1", NULL));
	kreq_keyring_t *ckr = kreq_keyring_new(); /* tenant t2: signs t2, verifies k1 */
	add_key(ckr, "t2", t2);
	add_key(ckr, "k1", k1);
	ck_assert_int_eq(kreq_keyring_set_signing_key(ckr, "t2"), KREQ_OK);
	kreq_client_t *c = client_new(ckr);
	bool dedup = call_echo(c, "pay", "acct-9");
	ck_assert_msg(!dedup && atomic_load(&executions) == 1,
	              "t1's forged result was served to t2 (from_dedup %d, handler ran %d)", dedup,
	              atomic_load(&executions));
	ck_assert_uint_eq(kreq_test_worker_metric(w->s, "kreq_worker_results_ignored_total{"), 1);
	ck_assert(log_has("ignored 1 result(s) signed by keys not in worker.result.signers "
	                  "(first: key id t1, partition 0, offset 0)"));
	kreq_test_worker_stop(w);

	/* the worker's own result: signed with its signing key, served again */
	char signer[80];
	last_result_signer(signer, sizeof(signer));
	ck_assert_str_eq(signer, "k1");
	w = kreq_test_worker_start(worker_new("w2", NULL));
	ck_assert(call_echo(c, "pay", "acct-9"));
	ck_assert_int_eq(atomic_load(&executions), 1);
	kreq_client_destroy(c);
	kreq_keyring_release(ckr);
	kreq_test_worker_stop(w);
}
END_TEST

/* ---- case 11: the results topic ----------------------------------------------------- */

/* Topics made by hand: requests 1 partition, results with configs. */
static void results_topic_refused(const char *const *configs, const char *want)
{
	kreq_test_create_topic(bootstrap, req_topic, 1, 30000);
	kreq_test_create_topic_ex(bootstrap, res_topic, 1, -1, configs, 30000);
	kreq_test_running_t *rs = worker_launch(worker_new("w1", NULL));
	KREQ_TEST_AWAIT(atomic_load(&rs->done), 60000);
	char err[1024];
	int rc = kreq_test_worker_reap(rs, err, sizeof(err));
	ck_assert_msg(rc == KREQ_ECONF && strstr(err, want), "rc %s: %s", kreq_err_name(rc), err);
}

START_TEST(test_results_topic_not_compacted)
{
	char want[300];
	snprintf(want, sizeof(want),
	         "results topic %s has cleanup.policy=delete: it must include "
	         "compact",
	         res_topic);
	results_topic_refused((const char *const[]){"cleanup.policy", "delete", NULL}, want);
}
END_TEST

START_TEST(test_results_topic_short_retention)
{
	char want[300];
	snprintf(want, sizeof(want),
	         "results topic %s has retention.ms=60000, shorter than "
	         "worker.dedup.retention.ms=604800000",
	         res_topic);
	results_topic_refused((const char *const[]){"cleanup.policy", "compact,delete",
	                                            "retention.ms", "60000", NULL},
	                      want);
}
END_TEST

/* ---- kreqd ---------------------------------------------------------------------------- */

static const char *kreqd_conf(const char *extra)
{
	char text[4096];
	snprintf(text, sizeof(text),
	         "service = svc\n"
	         "keyring.file = %s\n"
	         "kafka.bootstrap.servers = %s\n"
	         "topic.prefix = %s\n"
	         "client.id = kd1\n"
	         "kreqd.builtins = echo\n"
	         "worker.shutdown.grace.ms = 3000\n"
	         "%s",
	         kreq_test_tmp("k.key"), bootstrap, prefix, extra ? extra : "");
	static char path[128];
	snprintf(path, sizeof(path), "%s", kreq_test_tmp("kd.conf"));
	FILE *f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	fclose(f);
	return path;
}

/* kreqd with the key file k.key (k1) of the test directory, until it logs
 * want on stderr (within timeout_ms). */
static void kreqd_start(kreq_test_proc_t *p, const char *extra, const char *want, int timeout_ms)
{
	char err[256];
	ck_assert_int_eq(kreq_keyring_generate_file(kreq_test_tmp("k.key"), NULL, "k1",
	                                            KREQ_KEY_HMAC_SHA256, err, sizeof(err)),
	                 KREQ_OK);
	const char *args[] = {"--config", kreqd_conf(extra), NULL};
	kreq_test_proc_start(p, KREQD_PATH, args, NULL);
	int64_t until = kreq_test_now_ms() + timeout_ms;
	while (!strstr(p->err.data ? p->err.data : "", want)) {
		ck_assert_msg(kreq_test_now_ms() < until, "kreqd did not log \"%s\":\n%s", want,
		              p->err.data ? p->err.data : "");
		ck_assert_msg(kreq_test_proc_pump(p, 100), "kreqd ended:\n%s",
		              p->err.data ? p->err.data : "");
	}
}

static kreq_keyring_t *kreqd_keyring(void)
{
	kreq_keyring_t *k = kreq_keyring_new();
	char err[256];
	ck_assert_int_eq(kreq_keyring_load_file(k, kreq_test_tmp("k.key"), err, sizeof(err)),
	                 KREQ_OK);
	return k;
}

/* Partition count of topic (0: it does not exist). */
static int partitions_of(const char *topic)
{
	char err[512];
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER,
	                              kreq_test_conf_new(bootstrap, "group.id", "inspect", NULL),
	                              err, sizeof(err));
	ck_assert_ptr_nonnull(rk);
	int n = kreq__topic_partitions(rk, topic, 10000);
	rd_kafka_destroy(rk);
	ck_assert_int_ge(n, 0);
	return n;
}

/* The results topic deleted while kreqd serves (the Kafka broker
 * auto-creates topics): kreqd stops with exit 2 and a message naming the
 * topic, and the topic does not come back. */
START_TEST(test_results_topic_deleted_while_serving)
{
	kreq_test_tmp_create("h3del");
	kreq_test_proc_t p;
	kreqd_start(&p, NULL, "assigned ", 60000);
	kreq_keyring_t *ckr = kreqd_keyring();
	kreq_client_t *c = client_new(ckr);
	ck_assert(!call_echo(c, "one", "del-1"));
	char err[512];
	rd_kafka_t *admin =
	    rd_kafka_new(RD_KAFKA_PRODUCER, kreq_test_conf_new(bootstrap, NULL), err, sizeof(err));
	ck_assert_ptr_nonnull(admin);
	ck_assert_int_eq(kreq__topic_delete(admin, res_topic, 30000), RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_destroy(admin);
	KREQ_TEST_AWAIT(partitions_of(res_topic) == 0, 30000);
	/* a call after the deletion: the worker must notice, not serve on */
	kreq_call_opts_t *o = kreq_call_opts_new();
	kreq_call_opts_set_timeout(o, 20000);
	kreq_call_opts_set_idempotency_key(o, "del-2", 5);
	kreq_future_t *f = NULL;
	ck_assert_int_eq(kreq_client_call(c, "svc.echo", "two", 3, o, &f), KREQ_OK);
	kreq_call_opts_destroy(o);
	kreq_test_result_t r;
	kreq_test_proc_finish(&p, 90000, &r);
	kreq_future_wait(f, 30000);
	kreq_future_release(f);
	kreq_client_destroy(c);
	kreq_keyring_release(ckr);
	char want[300];
	snprintf(want, sizeof(want), "results topic %s", res_topic);
	KREQ_TEST_ASSERT_RUN(&r, 2, err, want);
	ck_assert_msg(strstr(r.err, "does not exist") || strstr(r.err, "deleted?"), "%s", r.err);
	ck_assert_int_eq(partitions_of(res_topic), 0); /* not re-created */
	kreq_test_result_free(&r);
	kreq_test_tmp_remove();
}
END_TEST

/* A misconfigured results topic: kreqd refuses to start, exit 2. */
START_TEST(test_kreqd_refuses_misconfigured_topic)
{
	kreq_test_tmp_create("h3cfg");
	kreq_test_create_topic(bootstrap, req_topic, 1, 30000);
	kreq_test_create_topic_ex(bootstrap, res_topic, 1, -1,
	                          (const char *const[]){"cleanup.policy", "delete", NULL}, 30000);
	kreq_test_proc_t p;
	char err[256];
	ck_assert_int_eq(kreq_keyring_generate_file(kreq_test_tmp("k.key"), NULL, "k1",
	                                            KREQ_KEY_HMAC_SHA256, err, sizeof(err)),
	                 KREQ_OK);
	const char *args[] = {"--config", kreqd_conf(NULL), NULL};
	kreq_test_proc_start(&p, KREQD_PATH, args, NULL);
	kreq_test_result_t r;
	kreq_test_proc_finish(&p, 60000, &r);
	KREQ_TEST_ASSERT_RUN(&r, 2, err, "has cleanup.policy=delete: it must include compact");
	kreq_test_result_free(&r);
	kreq_test_tmp_remove();
}
END_TEST

/* SIGTERM while the rebuild waits for an open transaction: kreqd stops
 * within its grace (3 s here; the rebuild timeout is 60 s), exit 0. */
START_TEST(test_sigterm_during_rebuild)
{
	kreq_test_tmp_create("h3term");
	create_topics("1");
	rd_kafka_t *txn = open_txn_with_result("held-1", "held");
	kreq_test_proc_t p;
	kreqd_start(&p, NULL, "a transaction is open up to", 60000);
	int64_t t0 = kreq_test_now_ms();
	ck_assert_int_eq(kill(p.pid, SIGTERM), 0);
	kreq_test_result_t r;
	kreq_test_proc_finish(&p, 30000, &r);
	int64_t took = kreq_test_now_ms() - t0;
	txn_ok(rd_kafka_abort_transaction(txn, 30000), "abort_transaction");
	rd_kafka_destroy(txn);
	ck_assert_msg(r.status == 0 && took < 3000 + 2000,
	              "exit %d after %lld ms (grace 3000 ms)\n%s", r.status, (long long)took,
	              r.err);
	kreq_test_result_free(&r);
	kreq_test_tmp_remove();
}
END_TEST

int main(void)
{
	Suite *s = suite_create("rebuild");
	TCase *tc = tcase_create("kafka");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 240);
	tcase_add_test(tc, test_signer_list);
	tcase_add_test(tc, test_waits_for_open_transaction);
	tcase_add_test(tc, test_aborted_transaction_ends_wait);
	tcase_add_test(tc, test_open_transaction_times_out);
	tcase_add_test(tc, test_foreign_signer_ignored);
	tcase_add_test(tc, test_results_topic_not_compacted);
	tcase_add_test(tc, test_results_topic_short_retention);
	tcase_add_test(tc, test_kreqd_refuses_misconfigured_topic);
	tcase_add_test(tc, test_sigterm_during_rebuild);
	tcase_add_test(tc, test_results_topic_deleted_while_serving);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
