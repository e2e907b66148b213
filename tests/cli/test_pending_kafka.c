/*
 * test_pending_kafka.c — `kreq pending --bootstrap`, the Kafka-side view of
 * a service's outstanding requests, run as users run it (the real binary,
 * its streams and exit status) against a REAL Kafka broker
 * (KREQ_TEST_BOOTSTRAP; FAILS without it).
 *
 * - A real worker (kreq_worker_run on a thread) whose handler holds three
 *   calls until the test releases them: listed as waiting while they run
 *   (table and JSON, verified and unverified), then gone once the worker
 *   committed; the worker's group never sees the CLI (no rebalance).
 * - Records written straight to the topics: unknown key and garbage
 *   (counted on stderr, not listed, with --keyring), expired (not listed),
 *   cancelled (state cancelled), answered by a Result (not listed), a
 *   Result for another payload (still waiting), two attempts of one call
 *   (one row, the latest attempt).
 * - Usage errors (exit 2), an unreachable Kafka broker and a missing topic
 *   (exit 1).
 * Every run of the binary is bounded (then killed and failed).
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <sodium.h>

#include "common/internal.h"
#include "kreq/client.h"
#include "kreq/error.h"
#include "kreq/worker.h"
#include "proto/envelope.h"
#include "proc.h"
#include "worker.h"
#include "testsupport.h"

#ifndef KREQ_CLI_PATH
#error "KREQ_CLI_PATH must name the kreq binary"
#endif

#define RUN_TIMEOUT_MS 60000
#define KEY_ID         "pk-key"

/* ---- running the binary (as tests/cli/test_cli.c does) ------------------------ */

/* Runs kreq with the NULL-terminated arguments. */
__attribute__((sentinel)) static void kreq(kreq_test_result_t *r, ...)
{
	const char *args[KREQ_TEST_MAX_ARGS + 1];
	size_t n = 0;
	va_list ap;
	va_start(ap, r);
	for (const char *a; (a = va_arg(ap, const char *)) != NULL;) {
		ck_assert(n < KREQ_TEST_MAX_ARGS);
		args[n++] = a;
	}
	va_end(ap);
	args[n] = NULL;
	kreq_test_run(r, KREQ_CLI_PATH, args, NULL, RUN_TIMEOUT_MS);
}

/* ---- fixture: a key file, a unique topic prefix ------------------------------------ */

static const char *bootstrap;
static const char *tmpdir;
static char keyfile[128], prefix[64];
static kreq_keyring_t *kr;

static void setup(void)
{
	bootstrap = kreq_test_bootstrap();
	kreq_test_topic_name(prefix, sizeof(prefix), "pk");
	tmpdir = kreq_test_tmp_create("kreq-pk-test");
	snprintf(keyfile, sizeof(keyfile), "%s/svc.key", tmpdir);
	char err[256];
	ck_assert_int_eq(kreq_keyring_generate_file(keyfile, NULL, KEY_ID, KREQ_KEY_HMAC_SHA256,
	                                            err, sizeof(err)),
	                 KREQ_OK);
	kr = kreq_keyring_new();
	ck_assert_int_eq(kreq_keyring_load_file(kr, keyfile, err, sizeof(err)), KREQ_OK);
}

static void teardown(void)
{
	kreq_keyring_release(kr);
	kr = NULL;
	kreq_test_tmp_remove();
}

/* ---- JSON helpers ------------------------------------------------------------------- */

static json_t *parse_json(const kreq_test_result_t *r)
{
	ck_assert_msg(r->status == 0, "exit %d\nstdout: %s\nstderr: %s", r->status, r->out, r->err);
	json_error_t e;
	json_t *j = json_loads(r->out, 0, &e);
	ck_assert_msg(j != NULL, "not JSON (%s): %s", e.text, r->out);
	return j;
}

static const char *jstr(const json_t *o, const char *name)
{
	const char *s = json_string_value(json_object_get(o, name));
	ck_assert_msg(s != NULL, "no string \"%s\"", name);
	return s;
}

static json_int_t jint(const json_t *o, const char *name)
{
	const json_t *v = json_object_get(o, name);
	ck_assert_msg(json_is_integer(v), "no integer \"%s\"", name);
	return json_integer_value(v);
}

/* The outstanding row whose idempotency key (as text) is idem, or NULL. */
static json_t *row_by_idem(const json_t *doc, const char *idem)
{
	json_t *rows = json_object_get(doc, "outstanding");
	for (size_t i = 0; i < json_array_size(rows); i++) {
		json_t *r = json_array_get(rows, i);
		if (strcmp(jstr(r, "idempotency_key_encoding"), "text") == 0 &&
		    strcmp(jstr(r, "idempotency_key"), idem) == 0)
			return r;
	}
	return NULL;
}

static json_t *partition_of(const json_t *doc, json_int_t id)
{
	json_t *parts = json_object_get(doc, "partitions");
	for (size_t i = 0; i < json_array_size(parts); i++)
		if (jint(json_array_get(parts, i), "partition") == id)
			return json_array_get(parts, i);
	ck_abort_msg("partition %lld not in the output", (long long)id);
	return NULL;
}

/* The text line of the table that holds needle. */
static void line_with(const char *out, const char *needle, char *line, size_t size)
{
	const char *p = strstr(out, needle);
	ck_assert_msg(p != NULL, "no line with %s in:\n%s", needle, out);
	const char *start = p;
	while (start > out && start[-1] != '\n')
		start--;
	size_t n = strcspn(start, "\n");
	ck_assert(n < size);
	memcpy(line, start, n);
	line[n] = '\0';
}

/* ---- a worker whose handler waits for the test ----------------------------------------- */

static atomic_int running, release_calls;

/* Holds the call until the test releases it (bounded: 90 s) or it is
 * cancelled, then echoes the payload. */
static void h_wait(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	atomic_fetch_add(&running, 1);
	int64_t until = kreq_test_now_ms() + 90000;
	while (!atomic_load(&release_calls) && !kreq_request_cancelled(r) &&
	       kreq_test_now_ms() < until)
		kreq_test_poll_pause();
	size_t len;
	const void *p = kreq_request_payload(r, &len);
	kreq_request_reply(r, 0, p, len, NULL);
}

static kreq_conf_t *base_conf(const char *client_id)
{
	kreq_conf_t *conf = kreq_conf_new();
	char err[512];
	const char *kv[][2] = {{"kafka.bootstrap.servers", bootstrap},
	                       {"topic.prefix", prefix},
	                       {"client.id", client_id},
	                       {"log.level", "4"}};
	for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++)
		ck_assert_msg(kreq_conf_set(conf, kv[i][0], kv[i][1], err, sizeof(err)) == KREQ_OK,
		              "%s: %s", kv[i][0], err);
	return conf;
}

static kreq_test_running_t *worker_start(void)
{
	kreq_conf_t *conf = base_conf("pk-worker");
	char err[512];
	kreq_worker_t *s = kreq_worker_new(conf, kr, "svc", err, sizeof(err));
	ck_assert_msg(s != NULL, "kreq_worker_new: %s", err);
	kreq_conf_destroy(conf);
	ck_assert_int_eq(kreq_worker_register(s, "svc.wait", h_wait, NULL, 0), KREQ_OK);
	return kreq_test_worker_start(s);
}

static kreq_future_t *call(kreq_client_t *c, const char *payload, const char *idem)
{
	kreq_call_opts_t *o = kreq_call_opts_new();
	ck_assert_int_eq(kreq_call_opts_set_timeout(o, 120000), KREQ_OK);
	ck_assert_int_eq(kreq_call_opts_set_idempotency_key(o, idem, strlen(idem)), KREQ_OK);
	kreq_future_t *f = NULL;
	int rc = kreq_client_call(c, "svc.wait", payload, strlen(payload), o, &f);
	ck_assert_msg(rc == KREQ_OK, "kreq_client_call: %s", kreq_strerror(rc));
	kreq_call_opts_destroy(o);
	return f;
}

/* ---- outstanding while a worker runs them, gone once committed ------------------------- */

static const char *const idems[] = {"pk-one", "pk-two", "pk-three"};

static void check_table_waiting(void)
{
	kreq_test_result_t r;
	kreq(&r, "pending", "--bootstrap", bootstrap, "--service", "svc", "--prefix", prefix,
	     "--keyring", keyfile, NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "3 outstanding (3 waiting, 0 cancelled)");
	ck_assert_ptr_nonnull(strstr(r.out, "PARTITION COMMITTED"));
	ck_assert_ptr_nonnull(strstr(r.out, "IDEMPOTENCY_KEY"));
	for (size_t i = 0; i < 3; i++) {
		char line[1024];
		line_with(r.out, idems[i], line, sizeof(line));
		ck_assert_msg(strstr(line, " svc.wait ") && strstr(line, " waiting ") &&
		                  strstr(line, " verified ") && strstr(line, " " KEY_ID " "),
		              "row of %s: %s", idems[i], line);
	}
	ck_assert_str_eq(r.err, "");
	kreq_test_result_free(&r);
}

static void check_json_waiting(bool verified)
{
	kreq_test_result_t r;
	if (verified)
		kreq(&r, "pending", "--bootstrap", bootstrap, "--service", "svc", "--prefix",
		     prefix, "--keyring", keyfile, "--json", NULL);
	else
		kreq(&r, "pending", "--bootstrap", bootstrap, "--service", "svc", "--prefix",
		     prefix, "--json", NULL);
	json_t *j = parse_json(&r);
	ck_assert_str_eq(jstr(j, "service"), "svc");
	ck_assert(json_is_true(json_object_get(j, "verified")) == verified);
	ck_assert_int_eq(json_array_size(json_object_get(j, "partitions")), 3);
	ck_assert_int_eq(json_array_size(json_object_get(j, "outstanding")), 3);
	for (size_t i = 0; i < 3; i++) {
		json_t *row = row_by_idem(j, idems[i]);
		ck_assert_msg(row != NULL, "%s not listed: %s", idems[i], r.out);
		ck_assert_str_eq(jstr(row, "method"), "svc.wait");
		ck_assert_str_eq(jstr(row, "state"), "waiting");
		ck_assert_str_eq(jstr(row, "key_id"), KEY_ID);
		ck_assert_int_eq(strlen(jstr(row, "correlation_id")), 32);
		ck_assert_int_eq(jint(row, "attempt"), 1);
		ck_assert(json_is_true(json_object_get(row, "verified")) == verified);
		ck_assert_int_gt(jint(row, "time_left_ms"), 0);
		ck_assert_int_le(jint(row, "time_left_ms"), 120000);
		ck_assert_int_ge(jint(row, "age_ms"), -1000);
		/* beyond the committed offset of its partition, before its end */
		json_t *p = partition_of(j, jint(row, "partition"));
		json_t *committed = json_object_get(p, "committed");
		ck_assert(json_is_null(committed) ||
		          json_integer_value(committed) <= jint(row, "offset"));
		ck_assert_int_gt(jint(p, "end"), jint(row, "offset"));
		ck_assert_int_ge(jint(p, "lag"), 1);
	}
	ck_assert_int_eq(jint(j, "not_verified"), 0);
	ck_assert(json_is_false(json_object_get(j, "truncated")));
	if (!verified)
		ck_assert_ptr_nonnull(strstr(r.err, "without verification"));
	json_decref(j);
	kreq_test_result_free(&r);
}

/* true once nothing is outstanding and every partition is committed to
 * its end; *last gets the last output (for the failure message). */
static bool all_committed(char *last, size_t size)
{
	kreq_test_result_t r;
	kreq(&r, "pending", "--bootstrap", bootstrap, "--service", "svc", "--prefix", prefix,
	     "--keyring", keyfile, "--json", NULL);
	json_t *j = parse_json(&r);
	snprintf(last, size, "%s", r.out);
	bool done = json_array_size(json_object_get(j, "outstanding")) == 0;
	json_t *parts = json_object_get(j, "partitions");
	for (size_t i = 0; done && i < json_array_size(parts); i++)
		done = jint(json_array_get(parts, i), "lag") == 0;
	json_decref(j);
	kreq_test_result_free(&r);
	return done;
}

START_TEST(test_outstanding_until_committed)
{
	atomic_store(&running, 0);
	atomic_store(&release_calls, 0);
	/* three partitions each, created up front (a Kafka broker that auto-creates
	 * topics would otherwise give the worker its default partition count) */
	static const char *const compact[] = {"cleanup.policy", "compact,delete", NULL};
	char topic[160];
	snprintf(topic, sizeof(topic), "%s.svc.requests", prefix);
	kreq_test_create_topic(bootstrap, topic, 3, 30000);
	snprintf(topic, sizeof(topic), "%s.svc.results", prefix);
	kreq_test_create_topic_ex(bootstrap, topic, 3, -1, compact, 30000);
	kreq_test_running_t *w = worker_start();
	uint64_t rebalances = kreq_test_worker_metric(w->s, "kreq_worker_rebalances_total{");
	kreq_conf_t *conf = base_conf("pk-client");
	char err[512];
	kreq_client_t *c = kreq_client_new(conf, kr, err, sizeof(err));
	ck_assert_msg(c != NULL, "kreq_client_new: %s", err);
	kreq_conf_destroy(conf);
	kreq_future_t *f[3];
	for (size_t i = 0; i < 3; i++)
		f[i] = call(c, idems[i], idems[i]);
	KREQ_TEST_AWAIT(atomic_load(&running) == 3, 60000);

	check_table_waiting();
	check_json_waiting(true);
	check_json_waiting(false);
	kreq_test_result_t r; /* --method filters */
	kreq(&r, "pending", "--bootstrap", bootstrap, "--service", "svc", "--prefix", prefix,
	     "--keyring", keyfile, "--method", "svc.other", "--json", NULL);
	json_t *j = parse_json(&r);
	ck_assert_int_eq(json_array_size(json_object_get(j, "outstanding")), 0);
	json_decref(j);
	kreq_test_result_free(&r);

	atomic_store(&release_calls, 1);
	for (size_t i = 0; i < 3; i++) {
		ck_assert_int_eq(kreq_future_wait(f[i], 60000), KREQ_OK);
		ck_assert_msg(kreq_future_err(f[i]) == KREQ_OK, "%s", kreq_future_errstr(f[i]));
		ck_assert_int_eq(kreq_future_status(f[i]), 0);
		kreq_future_release(f[i]);
	}
	char last[16384] = "";
	int64_t deadline = kreq_test_now_ms() + 30000;
	while (!all_committed(last, sizeof(last)))
		ck_assert_msg(kreq_test_now_ms() < deadline,
		              "still outstanding 30 s after the replies: %s", last);
	kreq(&r, "pending", "--bootstrap", bootstrap, "--service", "svc", "--prefix", prefix,
	     "--keyring", keyfile, NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "0 outstanding (0 waiting, 0 cancelled)");
	kreq_test_result_free(&r);
	/* the CLI read the group's offsets without ever joining it */
	ck_assert_uint_eq(kreq_test_worker_metric(w->s, "kreq_worker_rebalances_total{"),
	                  rebalances);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
}
END_TEST

/* ---- records written straight to the topics -------------------------------------------- */

static rd_kafka_t *producer;
static char req_topic[160], res_topic[160];

static void send_to(const char *topic, const void *buf, size_t len)
{
	ck_assert_int_eq(
	    rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(0),
	                      RD_KAFKA_V_VALUE((void *)buf, len),
	                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END),
	    RD_KAFKA_RESP_ERR_NO_ERROR);
	ck_assert_int_eq(rd_kafka_flush(producer, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

static void seal_send(kreq_keyring_t *with, const char *topic, kreq__kind_t kind,
                      const ProtobufCMessage *body)
{
	kreq__limits_t lim = {1 << 20, 1 << 20, 30000};
	uint8_t *buf = NULL;
	size_t len = 0;
	char err[256];
	ck_assert_msg(kreq__envelope_seal(with, &lim, kind, body, &buf, &len, err, sizeof(err)) ==
	                  KREQ_OK,
	              "seal: %s", err);
	send_to(topic, buf, len);
	free(buf);
}

static void send_request(kreq_keyring_t *with, uint8_t tag, const char *idem, const char *payload,
                         int64_t deadline_ms, uint32_t attempt)
{
	uint8_t corr[16];
	memset(corr, tag, sizeof(corr));
	Kreq__Request q = KREQ__REQUEST__INIT;
	q.correlation_id = (ProtobufCBinaryData){16, corr};
	q.idempotency_key = (ProtobufCBinaryData){strlen(idem), (uint8_t *)idem};
	q.method = "svc.echo";
	q.service = "svc";
	q.payload = (ProtobufCBinaryData){strlen(payload), (uint8_t *)payload};
	q.reply_topic = "kreq.reply.pk-test";
	q.issued_at_ms = kreq__now_ms() - 1000 * attempt;
	q.deadline_ms = deadline_ms;
	q.attempt = attempt;
	q.client_id = "pk-test";
	seal_send(with, req_topic, KREQ__KIND_REQUEST, &q.base);
}

static void send_cancel(uint8_t tag, const char *idem, int64_t deadline_ms)
{
	uint8_t corr[16];
	memset(corr, tag, sizeof(corr));
	Kreq__Cancel c = KREQ__CANCEL__INIT;
	c.correlation_id = (ProtobufCBinaryData){16, corr};
	c.idempotency_key = (ProtobufCBinaryData){strlen(idem), (uint8_t *)idem};
	c.issued_at_ms = kreq__now_ms();
	c.deadline_ms = deadline_ms;
	c.client_id = "pk-test";
	seal_send(kr, req_topic, KREQ__KIND_CANCEL, &c.base);
}

/* A stored result for (KEY_ID, idem) of svc.echo with payload. */
static void send_result(const char *idem, const char *payload)
{
	uint8_t digest[32];
	crypto_hash_sha256_state st;
	crypto_hash_sha256_init(&st);
	crypto_hash_sha256_update(&st, (const unsigned char *)"svc.echo", sizeof("svc.echo"));
	crypto_hash_sha256_update(&st, (const unsigned char *)payload, strlen(payload));
	crypto_hash_sha256_final(&st, digest);
	Kreq__Result rs = KREQ__RESULT__INIT;
	rs.request_digest = (ProtobufCBinaryData){32, digest};
	rs.payload = (ProtobufCBinaryData){strlen(payload), (uint8_t *)payload};
	rs.error = "";
	rs.idempotency_key = (ProtobufCBinaryData){strlen(idem), (uint8_t *)idem};
	rs.request_key_id = KEY_ID;
	rs.method = "svc.echo";
	rs.issued_at_ms = kreq__now_ms();
	rs.deadline_ms = rs.issued_at_ms + 3600000;
	seal_send(kr, res_topic, KREQ__KIND_RESULT, &rs.base);
}

static kreq_keyring_t *stranger_keyring(void)
{
	kreq_keyring_t *other = kreq_keyring_new();
	uint8_t key[32];
	randombytes_buf(key, sizeof(key));
	ck_assert_int_eq(
	    kreq_keyring_add(other, "pk-stranger", KREQ_KEY_HMAC_SHA256, key, 32, NULL, 0),
	    KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_signing_key(other, "pk-stranger"), KREQ_OK);
	return other;
}

/* offset: what
 *  0  valid request          pk-valid       -> waiting
 *  1  unknown key            pk-unknown     -> not listed, did not verify
 *  2  expired                pk-expired     -> not listed
 *  3  request + 4 its cancel pk-cancel      -> cancelled
 *  5  request, answered      pk-done        -> not listed (Result matches)
 *  6  request                pk-conflict    -> waiting (Result of another payload)
 *  7  garbage                               -> not listed, did not verify
 *  8  attempt 1, 9 attempt 2 pk-retry       -> one row, attempt 2 */
static void write_records(void)
{
	int64_t later = kreq__now_ms() + 600000;
	send_request(kr, 0x10, "pk-valid", "v", later - 1000, 1);
	kreq_keyring_t *other = stranger_keyring();
	send_request(other, 0x11, "pk-unknown", "u", later, 1);
	kreq_keyring_release(other);
	send_request(kr, 0x12, "pk-expired", "e", kreq__now_ms() - 1000, 1);
	send_request(kr, 0x13, "pk-cancel", "c", later, 1);
	send_cancel(0x13, "pk-cancel", later);
	send_request(kr, 0x14, "pk-done", "d", later, 1);
	send_request(kr, 0x15, "pk-conflict", "x", later, 1);
	send_to(req_topic, "not an envelope", 15);
	send_request(kr, 0x16, "pk-retry", "r", later - 2000, 1);
	send_request(kr, 0x16, "pk-retry", "r", later - 2000, 2);
	send_result("pk-done", "d");
	send_result("pk-conflict", "another payload");
}

static void check_verified_json(void)
{
	kreq_test_result_t r;
	kreq(&r, "pending", "--bootstrap", bootstrap, "--service", "svc", "--prefix", prefix,
	     "--keyring", keyfile, "--json", "--sort", "attempt", NULL);
	json_t *j = parse_json(&r);
	ck_assert_msg(json_array_size(json_object_get(j, "outstanding")) == 4, "%s", r.out);
	ck_assert_str_eq(jstr(row_by_idem(j, "pk-valid"), "state"), "waiting");
	ck_assert_str_eq(jstr(row_by_idem(j, "pk-cancel"), "state"), "cancelled");
	ck_assert_str_eq(jstr(row_by_idem(j, "pk-conflict"), "state"), "waiting");
	json_t *retry = row_by_idem(j, "pk-retry");
	ck_assert_int_eq(jint(retry, "attempt"), 2);
	ck_assert_int_eq(jint(retry, "offset"), 9);
	ck_assert_str_eq(jstr(retry, "correlation_id"), "16161616161616161616161616161616");
	/* --sort attempt: the most attempts first */
	ck_assert_str_eq(
	    jstr(json_array_get(json_object_get(j, "outstanding"), 0), "idempotency_key"),
	    "pk-retry");
	ck_assert_int_eq(jint(j, "expired"), 1);
	ck_assert_int_eq(jint(j, "not_verified"), 2);
	json_t *p = partition_of(j, 0);
	ck_assert(json_is_null(json_object_get(p, "committed"))); /* no worker ever ran */
	ck_assert_int_eq(jint(p, "end"), 10);
	ck_assert_int_eq(jint(p, "lag"), 10);
	KREQ_TEST_ASSERT_RUN(&r, 0, err, "2 records did not verify");
	ck_assert_ptr_nonnull(strstr(r.err, "EUNKNOWNKEY 1"));
	ck_assert_ptr_nonnull(strstr(r.err, "EMALFORMED 1"));
	json_decref(j);
	kreq_test_result_free(&r);
}

static void check_verified_table(void)
{
	kreq_test_result_t r;
	kreq(&r, "pending", "--bootstrap", bootstrap, "--service", "svc", "--prefix", prefix,
	     "--keyring", keyfile, "--sort", "left", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "4 outstanding (3 waiting, 1 cancelled)");
	char line[1024];
	line_with(r.out, "pk-cancel", line, sizeof(line));
	ck_assert_msg(strstr(line, " cancelled ") != NULL, "%s", line);
	ck_assert_ptr_null(strstr(r.out, "pk-unknown"));
	ck_assert_ptr_null(strstr(r.out, "pk-expired"));
	ck_assert_ptr_null(strstr(r.out, "pk-done"));
	/* --sort left: least time left first (pk-retry, then pk-valid) */
	ck_assert(strstr(r.out, "pk-retry") < strstr(r.out, "pk-valid"));
	ck_assert(strstr(r.out, "pk-valid") < strstr(r.out, "pk-conflict"));
	ck_assert_ptr_nonnull(strstr(r.err, "did not verify"));
	kreq_test_result_free(&r);
}

static void check_unverified(void)
{
	kreq_test_result_t r;
	kreq(&r, "pending", "--bootstrap", bootstrap, "--service", "svc", "--prefix", prefix,
	     "--json", NULL);
	json_t *j = parse_json(&r);
	json_t *rows = json_object_get(j, "outstanding");
	ck_assert_msg(json_array_size(rows) == 5, "%s", r.out);
	ck_assert(json_is_false(json_object_get(j, "verified")));
	for (size_t i = 0; i < json_array_size(rows); i++)
		ck_assert(json_is_false(json_object_get(json_array_get(rows, i), "verified")));
	/* not verified, so the stranger's request is there, under its claimed key */
	ck_assert_str_eq(jstr(row_by_idem(j, "pk-unknown"), "key_id"), "pk-stranger");
	ck_assert_ptr_null(row_by_idem(j, "pk-done"));
	ck_assert_ptr_null(row_by_idem(j, "pk-expired"));
	ck_assert_int_eq(jint(j, "not_verified"), 1);
	ck_assert_ptr_nonnull(strstr(r.err, "1 record could not be decoded"));
	/* every run only read the group's offsets: still none committed */
	ck_assert(json_is_null(json_object_get(partition_of(j, 0), "committed")));
	json_decref(j);
	kreq_test_result_free(&r);
	kreq(&r, "pending", "--bootstrap", bootstrap, "--service", "svc", "--prefix", prefix, NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "UNVERIFIED");
	char line[1024];
	line_with(r.out, "pk-valid", line, sizeof(line));
	ck_assert_msg(strstr(line, " unverified ") != NULL, "%s", line);
	kreq_test_result_free(&r);
}

START_TEST(test_records_in_the_topics)
{
	snprintf(req_topic, sizeof(req_topic), "%s.svc.requests", prefix);
	snprintf(res_topic, sizeof(res_topic), "%s.svc.results", prefix);
	kreq_test_create_topic(bootstrap, req_topic, 1, 30000);
	kreq_test_create_topic(bootstrap, res_topic, 1, 30000);
	char err[512];
	producer =
	    rd_kafka_new(RD_KAFKA_PRODUCER, kreq_test_conf_new(bootstrap, NULL), err, sizeof(err));
	ck_assert_msg(producer != NULL, "%s", err);
	write_records();
	check_verified_json();
	check_verified_table();
	check_unverified();
	rd_kafka_destroy(producer);
	producer = NULL;
}
END_TEST

/* ---- kreq call leaves no reply topic of its own behind -------------------------------- */

/* Topics whose names start with head, per a fresh metadata request. */
static int topics_with(const char *head)
{
	char err[512];
	rd_kafka_t *rk =
	    rd_kafka_new(RD_KAFKA_PRODUCER, kreq_test_conf_new(bootstrap, NULL), err, sizeof(err));
	ck_assert_msg(rk != NULL, "%s", err);
	const rd_kafka_metadata_t *md = NULL;
	ck_assert_int_eq(rd_kafka_metadata(rk, 1, NULL, &md, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
	int n = 0;
	for (int i = 0; i < md->topic_cnt; i++)
		n += !strncmp(md->topics[i].topic, head, strlen(head));
	rd_kafka_metadata_destroy(md);
	rd_kafka_destroy(rk);
	return n;
}

START_TEST(test_call_deletes_its_reply_topic)
{
	atomic_store(&release_calls, 1); /* h_wait answers at once */
	char topic[160], own[160], chosen[160];
	snprintf(topic, sizeof(topic), "%s.svc.requests", prefix);
	kreq_test_create_topic(bootstrap, topic, 1, 30000);
	kreq_test_running_t *w = worker_start();
	snprintf(own, sizeof(own), "%s.reply.kreq-cli-", prefix);
	kreq_test_result_t r;
	for (int i = 0; i < 2; i++) {
		kreq(&r, "call", "--bootstrap", bootstrap, "--keyfile", keyfile, "--prefix", prefix,
		     "--timeout-ms", "30000", "svc.wait", "hello", NULL);
		KREQ_TEST_ASSERT_RUN(&r, 0, out, "payload: hello");
		ck_assert_str_eq(r.err, "");
		kreq_test_result_free(&r);
	}
	/* DeleteTopics has answered; brokers' metadata follows within moments */
	KREQ_TEST_AWAIT(topics_with(own) == 0, 15000);
	/* a client named by the user keeps its topic: it may be reused */
	kreq(&r, "call", "-X", "client.id=pk-cli", "--bootstrap", bootstrap, "--keyfile", keyfile,
	     "--prefix", prefix, "--timeout-ms", "30000", "svc.wait", "again", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "payload: again");
	kreq_test_result_free(&r);
	snprintf(chosen, sizeof(chosen), "%s.reply.pk-cli", prefix);
	ck_assert_int_eq(topics_with(chosen), 1);
	kreq_test_worker_stop(w);
	atomic_store(&release_calls, 0);
}
END_TEST

/* ---- usage, unreachable Kafka, missing topic, bad key file ------------------------------ */

START_TEST(test_usage_errors)
{
	static const char *const cases[][9] = {
	    {"pending", "--socket", "/tmp/s", "--bootstrap", "b:1", NULL, "exclude each other"},
	    {"pending", "--bootstrap", "b:1", NULL, "--bootstrap needs --service"},
	    {"pending", "--service", "svc", NULL, "--socket is required"},
	    {"pending", "--socket", "/tmp/s", "--keyring", "k", NULL, "go with --bootstrap"},
	    {"pending", "--bootstrap", "b:1", "--service", "bad svc", NULL, "invalid service"},
	    {"pending", "--bootstrap", "b:1", "--service", "svc", "--prefix", "a/b", NULL,
	     "invalid prefix"},
	    {"pending", "--bootstrap", "b:1", "--service", "svc", "--timeout", "0", NULL,
	     "--timeout needs"},
	    {"pending", "--bootstrap", "b:1", "--service", "svc", "--sort", "size", NULL,
	     "--sort must be"}};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *args[KREQ_TEST_MAX_ARGS + 1] = {NULL};
		size_t n = 0;
		while (cases[i][n] != NULL)
			args[n] = cases[i][n], n++;
		kreq_test_result_t r;
		kreq_test_run(&r, KREQ_CLI_PATH, args, NULL, RUN_TIMEOUT_MS);
		KREQ_TEST_ASSERT_RUN(&r, 2, err, cases[i][n + 1]);
		ck_assert_ptr_nonnull(strstr(r.err, "--help"));
		ck_assert_str_eq(r.out, "");
		kreq_test_result_free(&r);
	}
	kreq_test_result_t r;
	kreq(&r, "pending", "--help", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "--bootstrap HOST:PORT --service SERVICE");
	kreq_test_result_free(&r);
}
END_TEST

START_TEST(test_unreachable_and_missing)
{
	kreq_test_result_t r;
	int64_t t0 = kreq_test_now_ms();
	kreq(&r, "pending", "--bootstrap", "127.0.0.1:1", "--service", "svc", "--timeout", "2000",
	     NULL);
	KREQ_TEST_ASSERT_RUN(&r, 1, err, "cannot reach Kafka at 127.0.0.1:1");
	ck_assert_int_lt(kreq_test_now_ms() - t0, 10000);
	ck_assert_str_eq(r.out, "");
	kreq_test_result_free(&r);
	kreq(&r, "pending", "--bootstrap", bootstrap, "--service", "nosuch", "--prefix", prefix,
	     "--timeout", "20000", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 1, err, "does not exist");
	ck_assert_ptr_nonnull(strstr(r.err, ".nosuch.requests"));
	kreq_test_result_free(&r);
	kreq(&r, "pending", "--bootstrap", bootstrap, "--service", "svc", "--prefix", prefix,
	     "--keyring", "/nonexistent/pk.key", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 1, err, "/nonexistent/pk.key");
	kreq_test_result_free(&r);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("pending_kafka");
	TCase *tc = tcase_create("pending_kafka");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 240);
	tcase_add_test(tc, test_usage_errors);
	tcase_add_test(tc, test_unreachable_and_missing);
	tcase_add_test(tc, test_records_in_the_topics);
	tcase_add_test(tc, test_outstanding_until_committed);
	tcase_add_test(tc, test_call_deletes_its_reply_topic);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
