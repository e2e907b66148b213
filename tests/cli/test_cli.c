/*
 * test_cli.c — the `kreq` command line as users run it: a process with
 * arguments, standard streams and an exit status.
 *
 * Why a process and not the subcommand functions: exit codes, what goes to
 * stdout versus stderr, signal handling and librdkafka's threads only mean
 * something for the real binary. Every run is bounded by a deadline (then
 * killed and failed). Kafka is librdkafka's mock cluster hosted in this
 * process (no real Kafka broker needed); a responder (tests/kafka/responder.c)
 * answers calls; pending/stats talk to a live client created here with an
 * admin socket. Each test closes and frees everything it creates.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "../kafka/responder.h"
#include "common/internal.h"
#include "kreq/client.h"
#include "kreq/error.h"
#include "proto/envelope.h"
#include "proc.h"
#include "worker.h"
#include "testsupport.h"

#ifndef KREQ_CLI_PATH
#error "KREQ_CLI_PATH must name the kreq binary"
#endif

#define RUN_TIMEOUT_MS 30000

/* ---- running the binary ------------------------------------------------------- */

/* Runs kreq with the NULL-terminated arguments and stdin_data (NULL: empty). */
__attribute__((sentinel)) static void kreq(kreq_test_result_t *r, const char *stdin_data, ...)
{
	const char *args[KREQ_TEST_MAX_ARGS + 1];
	size_t n = 0;
	va_list ap;
	va_start(ap, stdin_data);
	for (const char *a; (a = va_arg(ap, const char *)) != NULL;) {
		ck_assert(n < KREQ_TEST_MAX_ARGS);
		args[n++] = a;
	}
	va_end(ap);
	args[n] = NULL;
	kreq_test_run(r, KREQ_CLI_PATH, args, stdin_data, RUN_TIMEOUT_MS);
}

static const char *tmpdir;

/* ---- fixtures ----------------------------------------------------------------- */

/* A signing key file in tmpdir, and the keyring loaded from it. */
static kreq_keyring_t *make_key(const char *name)
{
	char err[256];
	ck_assert_int_eq(kreq_keyring_generate_file(kreq_test_tmp(name), NULL, "cli-key",
	                                            KREQ_KEY_HMAC_SHA256, err, sizeof(err)),
	                 KREQ_OK);
	kreq_keyring_t *kr = kreq_keyring_new();
	ck_assert_int_eq(kreq_keyring_load_file(kr, kreq_test_tmp(name), err, sizeof(err)),
	                 KREQ_OK);
	return kr;
}

static rd_kafka_t *host;
static rd_kafka_mock_cluster_t *mc;

static const char *mock_start(const char *topic, int partitions)
{
	char err[256];
	rd_kafka_conf_t *rc = rd_kafka_conf_new();
	kreq_test_conf_set(rc, "test.mock.num.brokers", "1");
	kreq_test_conf_set(rc, "log_level", "3");
	host = rd_kafka_new(RD_KAFKA_PRODUCER, rc, err, sizeof(err));
	ck_assert_msg(host != NULL, "%s", err);
	mc = rd_kafka_handle_mock_cluster(host);
	ck_assert_ptr_nonnull(mc);
	ck_assert_int_eq(rd_kafka_mock_topic_create(mc, topic, partitions, 1), 0);
	/* The mock cluster implements no CreateTopics (and with librdkafka newer
	 * than 2.0 auto-creates only for a producer's Metadata request), so the reply
	 * topics of the clients below (client.id cli-test, and cli-call for
	 * `kreq call`) are created here, as an operator would on a Kafka broker that
	 * does not let clients create topics. */
	ck_assert_int_eq(rd_kafka_mock_topic_create(mc, "kreq.reply.cli-test", 1, 1), 0);
	ck_assert_int_eq(rd_kafka_mock_topic_create(mc, "kreq.reply.cli-call", 1, 1), 0);
	return rd_kafka_mock_cluster_bootstraps(mc);
}

static void mock_stop(void)
{
	rd_kafka_destroy(host);
	host = NULL;
	mc = NULL;
}

/* ---- help and usage ------------------------------------------------------------- */

static const char *const subs[] = {"keygen", "tail", "call", "pending", "stats", "dev", "dead"};

START_TEST(test_help)
{
	kreq_test_result_t r;
	kreq(&r, NULL, "--help", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "Exit status:");
	ck_assert_ptr_nonnull(strstr(r.out, "4  verification failure"));
	kreq_test_result_free(&r);
	kreq(&r, NULL, "--version", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "kreq ");
	kreq_test_result_free(&r);
	for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
		kreq(&r, NULL, subs[i], "--help", NULL);
		char want[64];
		snprintf(want, sizeof(want), "usage: kreq %s", subs[i]);
		KREQ_TEST_ASSERT_RUN(&r, 0, out, want);
		ck_assert_str_eq(r.err, "");
		kreq_test_result_free(&r);
	}
}
END_TEST

START_TEST(test_usage_errors)
{
	kreq_test_result_t r;
	kreq(&r, NULL, NULL);
	KREQ_TEST_ASSERT_RUN(&r, 2, err, "missing subcommand");
	kreq_test_result_free(&r);
	kreq(&r, NULL, "frobnicate", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 2, err, "unknown subcommand 'frobnicate'");
	kreq_test_result_free(&r);
	for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
		kreq(&r, NULL, subs[i], "--no-such-option", NULL);
		KREQ_TEST_ASSERT_RUN(&r, 2, err, "unknown option '--no-such-option'");
		kreq_test_result_free(&r);
	}
	static const char *const cases[][8] = {
	    {"keygen", "--id", "k", "--out", "/tmp/x", NULL, "required"},
	    {"keygen", "--type", "rsa", "--id", "k", "--out", "/tmp/x", "--type must be"},
	    {"keygen", "--type", "hmac-sha256", "--id", "a b", "--out", "/tmp/x", "invalid key id"},
	    {"tail", "--topic", "t", "--keyfile", "k", NULL, "required"},
	    {"tail", "--count", "many", NULL, "--count needs"},
	    {"call", "--bootstrap", "b", "--keyfile", "k", NULL, "missing METHOD"},
	    {"call", "--bootstrap", "b", "--keyfile", "k", "bad method", NULL, "invalid method"},
	    {"call", "--timeout-ms", "0", NULL, "--timeout-ms needs"},
	    {"pending", NULL, "--socket is required"},
	    {"pending", "--socket", "s", "--sort", "size", NULL, "--sort must be"},
	    {"stats", "--socket", NULL, "needs a value"},
	    {"dev", "--brokers", "0", NULL, "--brokers needs"},
	    {"dev", "--topic", "t:x", NULL, "--topic needs"}};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *const *c = cases[i];
		size_t n = 0;
		while (c[n] != NULL && n < 7)
			n++;
		const char *want = n == 7 ? c[7] : c[n + 1];
		const char *args[8] = {NULL};
		for (size_t k = 0; k < n; k++)
			args[k] = c[k];
		kreq(&r, NULL, args[0], args[1], args[2], args[3], args[4], args[5], args[6], NULL);
		KREQ_TEST_ASSERT_RUN(&r, 2, err, want);
		ck_assert_ptr_nonnull(strstr(r.err, "--help"));
		kreq_test_result_free(&r);
	}
}
END_TEST

/* ---- keygen ------------------------------------------------------------------- */

static int file_mode(const char *path)
{
	struct stat st;
	ck_assert_msg(stat(path, &st) == 0, "%s: %s", path, strerror(errno));
	return (int)(st.st_mode & 0777);
}

START_TEST(test_keygen)
{
	tmpdir = kreq_test_tmp_create("kreq-cli-test");
	kreq_test_result_t r;
	kreq(&r, NULL, "keygen", "--type", "hmac-sha256", "--id", "k1", "--out",
	     kreq_test_tmp("h.key"), NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, kreq_test_tmp("h.key"));
	ck_assert_int_eq(file_mode(kreq_test_tmp("h.key")), 0600);
	kreq_test_result_free(&r);
	kreq(&r, NULL, "keygen", "--type", "hmac-sha256", "--id", "k2", "--out",
	     kreq_test_tmp("h.key"), NULL);
	KREQ_TEST_ASSERT_RUN(&r, 1, err, "refusing to overwrite");
	ck_assert_ptr_nonnull(strstr(r.err, kreq_test_tmp("h.key")));
	kreq_test_result_free(&r);
	kreq(&r, NULL, "keygen", "--type", "ed25519", "--id", "e1", "--out", kreq_test_tmp("e.key"),
	     "--public", kreq_test_tmp("e.pub"), "--json", NULL);
	ck_assert_msg(r.status == 0, "%s", r.err);
	json_t *j = json_loads(r.out, 0, NULL);
	ck_assert_ptr_nonnull(j);
	ck_assert_str_eq(json_string_value(json_object_get(j, "public_path")),
	                 kreq_test_tmp("e.pub"));
	json_decref(j);
	kreq_test_result_free(&r);
	ck_assert_int_eq(file_mode(kreq_test_tmp("e.key")), 0600);
	ck_assert_int_eq(file_mode(kreq_test_tmp("e.pub")), 0644);
	kreq_keyring_t *kr = kreq_keyring_new();
	ck_assert_int_eq(kreq_keyring_load_file(kr, kreq_test_tmp("e.key"), NULL, 0), KREQ_OK);
	ck_assert_str_eq(kreq_keyring_signing_key(kr), "e1");
	kreq_keyring_release(kr);
	kr = kreq_keyring_new(); /* the public half verifies only */
	ck_assert_int_eq(kreq_keyring_load_file(kr, kreq_test_tmp("e.pub"), NULL, 0), KREQ_OK);
	ck_assert_int_eq(kreq_keyring_key_type(kr, "e1"), KREQ_KEY_ED25519_PUBLIC);
	kreq_keyring_release(kr);
	kreq_test_tmp_remove();
}
END_TEST

/* ---- key files and unreachable Kafka --------------------------------------------- */

START_TEST(test_bad_keyfile)
{
	tmpdir = kreq_test_tmp_create("kreq-cli-test");
	kreq_test_result_t r;
	kreq(&r, NULL, "tail", "--bootstrap", "127.0.0.1:1", "--topic", "t", "--keyfile",
	     kreq_test_tmp("missing.key"), NULL);
	KREQ_TEST_ASSERT_RUN(&r, 1, err, kreq_test_tmp("missing.key"));
	kreq_test_result_free(&r);
	kreq_keyring_release(make_key("open.key"));
	ck_assert_int_eq(chmod(kreq_test_tmp("open.key"), 0644), 0);
	kreq(&r, NULL, "call", "--bootstrap", "127.0.0.1:1", "--keyfile", kreq_test_tmp("open.key"),
	     "svc.x", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 1, err, kreq_test_tmp("open.key"));
	ck_assert_ptr_nonnull(strstr(r.err, "EKEYPERM"));
	kreq_test_result_free(&r);
	kreq_test_tmp_remove();
}
END_TEST

START_TEST(test_unreachable_broker)
{
	tmpdir = kreq_test_tmp_create("kreq-cli-test");
	kreq_keyring_release(make_key("k.key"));
	kreq_test_result_t r;
	int64_t t0 = kreq_test_now_ms();
	kreq(&r, NULL, "tail", "--bootstrap", "127.0.0.1:1", "--topic", "t", "--keyfile",
	     kreq_test_tmp("k.key"), "--timeout-ms", "1000", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 1, err, "cannot reach Kafka at 127.0.0.1:1");
	ck_assert_int_lt(kreq_test_now_ms() - t0, 6000);
	kreq_test_result_free(&r);
	t0 = kreq_test_now_ms();
	kreq(&r, NULL, "call", "--bootstrap", "127.0.0.1:1", "--keyfile", kreq_test_tmp("k.key"),
	     "--timeout-ms", "1000", "svc.x", "hello", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 1, err, "cannot start a kreq client on 127.0.0.1:1");
	ck_assert_int_lt(kreq_test_now_ms() - t0, 6000);
	kreq_test_result_free(&r);
	/* -X signing.key.id picks the key file's key; an unknown one is named */
	kreq(&r, NULL, "call", "--bootstrap", "127.0.0.1:1", "--keyfile", kreq_test_tmp("k.key"),
	     "-X", "signing.key.id=nope", "svc.x", "hello", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 1, err, "signing.key.id nope: no such key in the key file");
	kreq_test_result_free(&r);
	kreq(&r, NULL, "call", "--bootstrap", "127.0.0.1:1", "--keyfile", kreq_test_tmp("k.key"),
	     "--timeout-ms", "1000", "-X", "signing.key.id=cli-key", "svc.x", "hello", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 1, err, "cannot start a kreq client on 127.0.0.1:1");
	kreq_test_result_free(&r);
	kreq_test_tmp_remove();
}
END_TEST

/* ---- tail ------------------------------------------------------------------------ */

static uint8_t *seal_request(kreq_keyring_t *kr, int64_t deadline_ms, size_t *len)
{
	static uint8_t corr[16] = {0xc0, 0xff, 0xee, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
	kreq__limits_t lim = {.envelope_max = 1 << 20, .payload_max = 1000000, .skew_ms = 30000};
	Kreq__Request q = KREQ__REQUEST__INIT;
	q.correlation_id = (ProtobufCBinaryData){16, corr};
	q.idempotency_key = (ProtobufCBinaryData){16, corr};
	q.method = "svc.echo";
	q.service = "svc";
	q.payload = (ProtobufCBinaryData){2, (uint8_t *)"hi"};
	q.reply_topic = "kreq.reply.test";
	q.issued_at_ms = kreq__now_ms() - 2000;
	q.deadline_ms = deadline_ms;
	q.attempt = 1;
	uint8_t *out = NULL;
	char err[256];
	ck_assert_int_eq(
	    kreq__envelope_seal(kr, &lim, KREQ__KIND_REQUEST, &q.base, &out, len, err, sizeof(err)),
	    KREQ_OK);
	return out;
}

static void produce(const char *topic, const void *buf, size_t len)
{
	ck_assert_int_eq(rd_kafka_producev(host, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(0),
	                                   RD_KAFKA_V_VALUE((void *)buf, len),
	                                   RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
	                                   RD_KAFKA_V_END),
	                 RD_KAFKA_RESP_ERR_NO_ERROR);
}

/* A valid request, a tampered copy, garbage and an expired request. */
static void produce_records(const char *topic, kreq_keyring_t *kr)
{
	size_t len = 0, old_len = 0;
	uint8_t *ok = seal_request(kr, kreq__now_ms() + 600000, &len);
	produce(topic, ok, len);
	ok[len - 1] ^= 1; /* the signature is the envelope's last field */
	produce(topic, ok, len);
	static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0x01};
	produce(topic, garbage, sizeof(garbage));
	uint8_t *old = seal_request(kr, kreq__now_ms() - 1000, &old_len);
	produce(topic, old, old_len);
	free(ok);
	free(old);
	ck_assert_int_eq(rd_kafka_flush(host, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

static const char *const verdicts[] = {"OK", "EBADSIG", "EMALFORMED", "EEXPIRED"};

static void check_tail_text(const char *out)
{
	const char *line = strchr(out, '\n'); /* after the header */
	ck_assert_ptr_nonnull(line);
	for (size_t i = 0; i < 4; i++) {
		char want[32];
		snprintf(want, sizeof(want), " %s ", verdicts[i]);
		const char *end = strchr(line + 1, '\n');
		ck_assert_ptr_nonnull(end);
		ck_assert_msg(memmem(line, (size_t)(end - line), want, strlen(want)) != NULL,
		              "line %zu lacks %s: %s", i + 1, want, out);
		line = end;
	}
	ck_assert_ptr_nonnull(strstr(out, "c0ffee0102030405060708090a0b0c0d"));
	ck_assert_ptr_nonnull(strstr(out, "svc.echo"));
}

static void check_tail_json(const char *out)
{
	const char *line = out;
	for (size_t i = 0; i < 4; i++) {
		json_error_t e;
		json_t *j = json_loadb(line, strcspn(line, "\n"), 0, &e);
		ck_assert_msg(j != NULL, "line %zu is not JSON (%s): %s", i + 1, e.text, out);
		ck_assert_str_eq(json_string_value(json_object_get(j, "verdict")), verdicts[i]);
		ck_assert_int_eq(json_integer_value(json_object_get(j, "offset")), (json_int_t)i);
		bool verified = i == 0 || i == 3;
		ck_assert(json_is_true(json_object_get(j, "verified")) == verified);
		if (verified)
			ck_assert_str_eq(json_string_value(json_object_get(j, "method")),
			                 "svc.echo");
		json_decref(j);
		line += strcspn(line, "\n") + 1;
	}
	ck_assert_str_eq(line, "");
}

START_TEST(test_tail)
{
	tmpdir = kreq_test_tmp_create("kreq-cli-test");
	kreq_keyring_t *kr = make_key("k.key");
	const char *bs = mock_start("kreq.cli.tail", 1);
	produce_records("kreq.cli.tail", kr);
	kreq_test_result_t r;
	kreq(&r, NULL, "tail", "--bootstrap", bs, "--topic", "kreq.cli.tail", "--keyfile",
	     kreq_test_tmp("k.key"), "--from-beginning", "--count", "4", NULL);
	ck_assert_msg(r.status == 4, "exit %d: %s", r.status, r.err);
	check_tail_text(r.out);
	kreq_test_result_free(&r);
	kreq(&r, NULL, "tail", "--bootstrap", bs, "--topic", "kreq.cli.tail", "--keyfile",
	     kreq_test_tmp("k.key"), "--from-beginning", "--timeout-ms", "1500", "--json", NULL);
	ck_assert_msg(r.status == 4, "exit %d: %s", r.status, r.err);
	check_tail_json(r.out);
	KREQ_TEST_ASSERT_RUN(&r, 4, err, "4 record(s), 2 failed verification");
	kreq_test_result_free(&r);
	/* new records only: nothing arrives, the idle timeout ends it cleanly */
	kreq(&r, NULL, "tail", "--bootstrap", bs, "--topic", "kreq.cli.tail", "--keyfile",
	     kreq_test_tmp("k.key"), "--timeout-ms", "1000", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, err, "0 record(s)");
	kreq_test_result_free(&r);
	mock_stop();
	kreq_keyring_release(kr);
	kreq_test_tmp_remove();
}
END_TEST

/* ---- pending and stats ------------------------------------------------------------ */

static kreq_client_t *live_client(const char *bs, kreq_keyring_t *kr, const char *sock)
{
	kreq_conf_t *conf = kreq_conf_new();
	char err[512];
	const char *kv[][2] = {{"kafka.bootstrap.servers", bs}, {"client.id", "cli-test"},
	                       {"admin.socket", sock},          {"service.check.ms", "0"},
	                       {"retry.max.attempts", "1"},     {"log.level", "3"}};
	for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++)
		ck_assert_int_eq(kreq_conf_set(conf, kv[i][0], kv[i][1], err, sizeof(err)),
		                 KREQ_OK);
	kreq_client_t *c = kreq_client_new(conf, kr, err, sizeof(err));
	ck_assert_msg(c != NULL, "kreq_client_new: %s", err);
	kreq_conf_destroy(conf);
	return c;
}

static kreq_future_t *call_never(kreq_client_t *c, const char *method, const char *idem)
{
	kreq_call_opts_t *o = kreq_call_opts_new();
	ck_assert_int_eq(kreq_call_opts_set_timeout(o, 120000), KREQ_OK);
	if (idem)
		ck_assert_int_eq(kreq_call_opts_set_idempotency_key(o, idem, strlen(idem)),
		                 KREQ_OK);
	kreq_future_t *f = NULL;
	ck_assert_int_eq(kreq_client_call(c, method, "x", 1, o, &f), KREQ_OK);
	kreq_call_opts_destroy(o);
	return f;
}

static void check_pending(const char *sock)
{
	kreq_test_result_t r;
	kreq(&r, NULL, "pending", "--socket", sock, NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "3 in flight, 3 shown");
	ck_assert_ptr_nonnull(strstr(r.out, "idem-one")); /* printable key shown as text */
	ck_assert_ptr_nonnull(strstr(strstr(r.out, "svc.never") + 1, "svc.never"));
	kreq_test_result_free(&r);
	kreq(&r, NULL, "pending", "--socket", sock, "--sort", "method", NULL);
	ck_assert_int_eq(r.status, 0);
	ck_assert_ptr_nonnull(strstr(r.out, "svc.aaa"));
	ck_assert(strstr(r.out, "svc.aaa") < strstr(r.out, "svc.never"));
	kreq_test_result_free(&r);
	kreq(&r, NULL, "pending", "--socket", sock, "--json", "--method", "svc.never", "--sort",
	     "left", NULL);
	ck_assert_msg(r.status == 0, "%s", r.err);
	json_t *j = json_loads(r.out, 0, NULL);
	ck_assert_ptr_nonnull(j);
	json_t *rows = json_object_get(j, "pending");
	ck_assert_int_eq(json_array_size(rows), 2);
	for (size_t i = 0; i < 2; i++)
		ck_assert_str_eq(
		    json_string_value(json_object_get(json_array_get(rows, i), "method")),
		    "svc.never");
	ck_assert_int_eq(json_integer_value(json_object_get(j, "in_flight")), 3);
	json_decref(j);
	kreq_test_result_free(&r);
}

static void check_stats(const char *sock)
{
	kreq_test_result_t r;
	kreq(&r, NULL, "stats", "--socket", sock, NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "kreq_client_in_flight{client=\"cli-test\"} 3");
	kreq_test_result_free(&r);
	kreq(&r, NULL, "stats", "--socket", sock, "--json", NULL);
	ck_assert_msg(r.status == 0, "%s", r.err);
	json_t *arr = json_loads(r.out, 0, NULL);
	ck_assert(json_is_array(arr));
	bool found = false;
	for (size_t i = 0; i < json_array_size(arr); i++) {
		json_t *s = json_array_get(arr, i);
		if (strcmp(json_string_value(json_object_get(s, "name")), "kreq_client_in_flight"))
			continue;
		found = true;
		ck_assert_int_eq(json_integer_value(json_object_get(s, "value")), 3);
		ck_assert_str_eq(
		    json_string_value(json_object_get(json_object_get(s, "labels"), "client")),
		    "cli-test");
	}
	ck_assert(found);
	json_decref(arr);
	kreq_test_result_free(&r);
}

START_TEST(test_pending_and_stats)
{
	tmpdir = kreq_test_tmp_create("kreq-cli-test");
	kreq_keyring_t *kr = make_key("k.key");
	const char *bs = mock_start("kreq.svc.requests", 1);
	const char *sock = kreq_test_tmp("admin.sock");
	kreq_client_t *c = live_client(bs, kr, sock);
	kreq_future_t *f[3] = {call_never(c, "svc.never", "idem-one"),
	                       call_never(c, "svc.never", NULL), call_never(c, "svc.aaa", NULL)};
	check_pending(sock);
	check_stats(sock);
	kreq_test_result_t r;
	kreq(&r, NULL, "pending", "--socket", kreq_test_tmp("nosuch.sock"), NULL);
	KREQ_TEST_ASSERT_RUN(&r, 1, err, kreq_test_tmp("nosuch.sock"));
	kreq_test_result_free(&r);
	kreq_client_destroy(c);
	for (size_t i = 0; i < 3; i++) {
		ck_assert_int_eq(kreq_future_err(f[i]), KREQ_ECLOSED);
		kreq_future_release(f[i]);
	}
	mock_stop();
	kreq_keyring_release(kr);
	kreq_test_tmp_remove();
}
END_TEST

/* ---- pending --bootstrap on the mock cluster (kreq dev) -------------------------- */

static void h_echo(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	size_t len;
	const void *p = kreq_request_payload(r, &len);
	kreq_request_reply(r, 0, p, len, NULL);
}

/* The mock cluster answers every lookup of an offset by time with "none":
 * `kreq pending --bootstrap` then read no results and listed answered
 * requests as waiting. A real kreq worker answers a call here; pending
 * must not list it. */
START_TEST(test_pending_bootstrap_answered)
{
	tmpdir = kreq_test_tmp_create("kreq-cli-test");
	kreq_keyring_t *kr = make_key("k.key");
	const char *bs = mock_start("kreq.svc.requests", 1);
	ck_assert_int_eq(rd_kafka_mock_topic_create(mc, "kreq.svc.results", 1, 1), 0);
	kreq_conf_t *conf = kreq_conf_new();
	char err[512];
	const char *kv[][2] = {{"kafka.bootstrap.servers", bs},
	                       {"client.id", "cli-worker"},
	                       {"worker.topic.partitions", "1"},
	                       {"log.level", "3"}};
	for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++)
		ck_assert_msg(kreq_conf_set(conf, kv[i][0], kv[i][1], err, sizeof(err)) == KREQ_OK,
		              "%s: %s", kv[i][0], err);
	kreq_worker_t *s = kreq_worker_new(conf, kr, "svc", err, sizeof(err));
	ck_assert_msg(s != NULL, "kreq_worker_new: %s", err);
	kreq_conf_destroy(conf);
	ck_assert_int_eq(kreq_worker_register(s, "svc.echo", h_echo, NULL, 0), KREQ_OK);
	kreq_test_running_t *w = kreq_test_worker_start(s);
	kreq_client_t *c = live_client(bs, kr, kreq_test_tmp("client.sock"));
	kreq_future_t *f = call_never(c, "svc.echo", "answered-1");
	ck_assert_int_eq(kreq_future_wait(f, 30000), KREQ_OK);
	ck_assert_int_eq(kreq_future_err(f), KREQ_OK);
	kreq_future_release(f);
	kreq_test_result_t r;
	kreq(&r, NULL, "pending", "--bootstrap", bs, "--service", "svc", "--keyring",
	     kreq_test_tmp("k.key"), NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "0 outstanding (0 waiting, 0 cancelled)");
	ck_assert_msg(strstr(r.out, "answered-1") == NULL, "%s", r.out);
	kreq_test_result_free(&r);
	kreq_client_destroy(c);
	kreq_test_worker_stop(w);
	mock_stop();
	kreq_keyring_release(kr);
	kreq_test_tmp_remove();
}
END_TEST

/* ---- call ------------------------------------------------------------------------ */

START_TEST(test_call_timeout)
{
	tmpdir = kreq_test_tmp_create("kreq-cli-test");
	kreq_keyring_release(make_key("k.key"));
	const char *bs = mock_start("kreq.svc.requests", 1);
	kreq_test_result_t r;
	kreq(&r, NULL, "call", "-X", "client.id=cli-call", "--bootstrap", bs, "--keyfile",
	     kreq_test_tmp("k.key"), "--timeout-ms", "1500", "svc.never", "hello", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 1, err, "timed out");
	/* the mock (kreq dev) cannot list consumer groups: no fail-fast, said plainly */
	ck_assert_msg(strstr(r.err, "cannot tell whether a worker serves svc") != NULL, "%s",
	              r.err);
	kreq_test_result_free(&r);
	kreq(&r, "from stdin", "call", "-X", "client.id=cli-call", "--bootstrap", bs, "--keyfile",
	     kreq_test_tmp("k.key"), "--timeout-ms", "1500", "--json", "svc.never", "-", NULL);
	ck_assert_int_eq(r.status, 1);
	json_t *j = json_loads(r.out, 0, NULL);
	ck_assert_msg(j != NULL, "not JSON: %s", r.out);
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "error"), "code")),
	                 "ETIMEDOUT");
	json_decref(j);
	kreq_test_result_free(&r);
	mock_stop();
	kreq_test_tmp_remove();
}
END_TEST

START_TEST(test_call_replies)
{
	tmpdir = kreq_test_tmp_create("kreq-cli-test");
	kreq_keyring_t *kr = make_key("k.key");
	const char *bs = mock_start("kreq.svc.requests", 1);
	responder_t *resp = responder_start(bs, "kreq.svc.requests", kr, 0);
	kreq_test_result_t r;
	kreq(&r, "{\"n\":1}", "call", "-X", "client.id=cli-call", "--bootstrap", bs, "--keyfile",
	     kreq_test_tmp("k.key"), "-X", "service.check.ms=0", "--timeout-ms", "20000",
	     "svc.echo", "-", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "payload: {\"n\":1}");
	ck_assert_ptr_nonnull(strstr(r.out, "status: 0"));
	kreq_test_result_free(&r);
	kreq(&r, NULL, "call", "-X", "client.id=cli-call", "--bootstrap", bs, "--keyfile",
	     kreq_test_tmp("k.key"), "-X", "service.check.ms=0", "--json", "--idempotency-key",
	     "op-7", "svc.fail", "x", NULL);
	ck_assert_msg(r.status == 3, "exit %d: %s %s", r.status, r.out, r.err);
	json_t *j = json_loads(r.out, 0, NULL);
	ck_assert_int_eq(json_integer_value(json_object_get(j, "status")), 101);
	/* the handler's error text, as the text output prints it */
	ck_assert_msg(json_is_string(json_object_get(j, "error_text")), "%s", r.out);
	ck_assert_str_eq(json_string_value(json_object_get(j, "error_text")), "handler failed");
	ck_assert(json_is_null(json_object_get(j, "error")));
	json_decref(j);
	kreq_test_result_free(&r);
	kreq(&r, NULL, "call", "-X", "client.id=cli-call", "--bootstrap", bs, "--keyfile",
	     kreq_test_tmp("k.key"), "-X", "service.check.ms=0", "svc.rejected", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 3, err, "EREJECTED");
	kreq_test_result_free(&r);
	/* Unnamed, the client makes its own reply topic. The mock cluster
	 * (kreq dev) names no controller and serves no CreateTopics: the client
	 * has it auto-created instead of waiting out client.start.timeout.ms
	 * (15 s) and blaming kafka.bootstrap.servers; kreq call says plainly
	 * that the topic cannot be deleted there. */
	int64_t t0 = kreq_test_now_ms();
	kreq(&r, NULL, "call", "--bootstrap", bs, "--keyfile", kreq_test_tmp("k.key"), "-X",
	     "service.check.ms=0", "svc.echo", "unnamed", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "payload: unnamed");
	ck_assert_msg(strstr(r.err, "cannot delete topics") != NULL, "%s", r.err);
	ck_assert_msg(kreq_test_now_ms() - t0 < 10000, "took %lld ms",
	              (long long)(kreq_test_now_ms() - t0));
	kreq_test_result_free(&r);
	kreq(&r, NULL, "call", "-X", "client.id=cli-call", "--bootstrap", bs, "--keyfile",
	     kreq_test_tmp("k.key"), "-X", "no.such.property=1", "svc.echo", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 2, err, "no.such.property");
	kreq_test_result_free(&r);
	responder_stop(resp);
	mock_stop();
	kreq_keyring_release(kr);
	kreq_test_tmp_remove();
}
END_TEST

/* ---- dev ------------------------------------------------------------------------- */

static void dev_until_signal(int sig)
{
	const char *args[] = {"dev", "--topic", "kreq.dev.requests:2", NULL};
	kreq_test_proc_t p;
	kreq_test_proc_start(&p, KREQ_CLI_PATH, args, NULL);
	int64_t deadline = kreq_test_now_ms() + RUN_TIMEOUT_MS;
	while (p.out.data == NULL || strchr(p.out.data, '\n') == NULL) {
		ck_assert_msg(kreq_test_now_ms() < deadline, "no bootstrap line from kreq dev");
		ck_assert_msg(kreq_test_proc_pump(&p, 100), "kreq dev exited early");
	}
	ck_assert_msg(strncmp(p.out.data, "KREQ_MOCK_BOOTSTRAP=127.0.0.1:", 30) == 0, "%s",
	              p.out.data);
	ck_assert_int_eq(kill(p.pid, sig), 0);
	kreq_test_result_t r;
	kreq_test_proc_finish(&p, RUN_TIMEOUT_MS, &r);
	ck_assert_msg(r.status == 0, "exit %d: %s", r.status, r.err);
	kreq_test_result_free(&r);
}

START_TEST(test_dev)
{
	dev_until_signal(SIGTERM);
	dev_until_signal(SIGINT);
}
END_TEST

static Suite *cli_suite(void)
{
	Suite *s = suite_create("cli");
	TCase *tc = tcase_create("cli");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_help);
	tcase_add_test(tc, test_usage_errors);
	tcase_add_test(tc, test_keygen);
	tcase_add_test(tc, test_bad_keyfile);
	tcase_add_test(tc, test_unreachable_broker);
	tcase_add_test(tc, test_tail);
	tcase_add_test(tc, test_pending_and_stats);
	tcase_add_test(tc, test_pending_bootstrap_answered);
	tcase_add_test(tc, test_call_timeout);
	tcase_add_test(tc, test_call_replies);
	tcase_add_test(tc, test_dev);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return kreq_test_run_suite(cli_suite());
}
