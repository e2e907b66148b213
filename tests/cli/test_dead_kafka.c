/*
 * test_dead_kafka.c — `kreq dead list|show|replay` run as users run it (the
 * real binary, its streams and exit status) against a REAL Kafka broker
 * (KREQ_TEST_BOOTSTRAP; FAILS without it).
 *
 * The dead-letter topic is written here, directly, with records sealed as a
 * worker seals them (kreq__envelope_seal, kind DeadLetter) plus the bad ones
 * an operator may meet: a tampered record, one sealed by a key the key file
 * does not hold, bytes that are no envelope, a request signed by a foreign
 * key inside a good dead letter. Then:
 * - list (text, --json, --limit, --since): every record listed, the bad
 *   ones flagged with the key id they claim, exit 4;
 * - show by partition:offset, correlation id, idempotency key (text and
 *   hex): attempt history and the decoded request; a tampered record shown
 *   flagged, exit 4;
 * - unknown and ambiguous REFs refused (exit 1, exit 2 naming the matches);
 * - replay without --new-key refused before Kafka is even reached (exit 2);
 *   replay --new-key against a running worker: the reply is printed, and the
 *   request record on Kafka carries a NEW idempotency key, the old method,
 *   payload and traceparent, signed by the key file's key.
 * Every run of the binary is bounded (then killed and failed).
 */
#include <check.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
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
#define KEY_ID         "dk-key"
#define STRANGER_ID    "dk-stranger"
#define TRACEPARENT    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
#define ALPHA_PAYLOAD  "alpha-payload"

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

/* ---- fixture: key file, unique prefix, the dead-letter topic written once ---------- */

static const char *bootstrap;
static const char *tmpdir;
static char keyfile[128], prefix[64], dead_topic[160], req_topic[160];
static kreq_keyring_t *kr, *stranger;

static kreq_keyring_t *stranger_keyring(void)
{
	kreq_keyring_t *other = kreq_keyring_new();
	uint8_t key[32];
	randombytes_buf(key, sizeof(key));
	ck_assert_int_eq(
	    kreq_keyring_add(other, STRANGER_ID, KREQ_KEY_HMAC_SHA256, key, 32, NULL, 0), KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_signing_key(other, STRANGER_ID), KREQ_OK);
	return other;
}

static void setup(void)
{
	bootstrap = kreq_test_bootstrap();
	kreq_test_topic_name(prefix, sizeof(prefix), "dk");
	snprintf(dead_topic, sizeof(dead_topic), "%s.svc.dead", prefix);
	snprintf(req_topic, sizeof(req_topic), "%s.svc.requests", prefix);
	tmpdir = kreq_test_tmp_create("kreq-dk-test");
	snprintf(keyfile, sizeof(keyfile), "%s/svc.key", tmpdir);
	char err[256];
	ck_assert_int_eq(kreq_keyring_generate_file(keyfile, NULL, KEY_ID, KREQ_KEY_HMAC_SHA256,
	                                            err, sizeof(err)),
	                 KREQ_OK);
	kr = kreq_keyring_new();
	ck_assert_int_eq(kreq_keyring_load_file(kr, keyfile, err, sizeof(err)), KREQ_OK);
	stranger = stranger_keyring();
}

static void teardown(void)
{
	kreq_keyring_release(kr);
	kreq_keyring_release(stranger);
	kr = stranger = NULL;
	kreq_test_tmp_remove();
}

/* ---- sealing records as a worker does ----------------------------------------------- */

static const kreq__limits_t lim = {1 << 20, 1 << 20, 30000};

static uint8_t *seal(kreq_keyring_t *with, kreq__kind_t kind, const ProtobufCMessage *body,
                     size_t *len)
{
	uint8_t *buf = NULL;
	char err[256];
	ck_assert_msg(kreq__envelope_seal(with, &lim, kind, body, &buf, len, err, sizeof(err)) ==
	                  KREQ_OK,
	              "seal: %s", err);
	return buf;
}

/* A sealed request envelope, as the client wrote it to the requests topic. */
static uint8_t *request_envelope(kreq_keyring_t *with, uint8_t tag, const uint8_t *idem,
                                 size_t idem_len, const char *payload, size_t *len)
{
	static uint8_t corr[16];
	memset(corr, tag, sizeof(corr));
	Kreq__MetadataEntry tp = KREQ__METADATA_ENTRY__INIT;
	tp.key = "traceparent";
	tp.value = TRACEPARENT;
	Kreq__MetadataEntry *md[] = {&tp};
	Kreq__Request q = KREQ__REQUEST__INIT;
	q.correlation_id = (ProtobufCBinaryData){16, corr};
	q.idempotency_key = (ProtobufCBinaryData){idem_len, (uint8_t *)idem};
	q.method = "svc.echo";
	q.service = "svc";
	q.payload = (ProtobufCBinaryData){strlen(payload), (uint8_t *)payload};
	q.reply_topic = "kreq.reply.dk-client";
	q.issued_at_ms = kreq__now_ms() - 60000;
	q.deadline_ms = q.issued_at_ms + 30000; /* long past: replays need a new call */
	q.attempt = 1;
	q.client_id = "dk-client";
	q.metadata = md;
	q.n_metadata = 1;
	return seal(with, KREQ__KIND_REQUEST, &q.base, len);
}

/* A sealed DeadLetter for the request tagged tag (correlation id = 16 x
 * tag) with idempotency key idem, three attempts (the last did not end). */
static const char *const REASON = "handler crashed or lost its worker 3 times";

static uint8_t *dead_letter(kreq_keyring_t *seal_with, kreq_keyring_t *req_with, uint8_t tag,
                            const uint8_t *idem, size_t idem_len, const char *payload,
                            const char *reason, size_t *len)
{
	size_t req_len = 0;
	uint8_t *req = request_envelope(req_with, tag, idem, idem_len, payload, &req_len);
	uint8_t corr[16];
	memset(corr, tag, sizeof(corr));
	int64_t t0 = kreq__now_ms() - 50000;
	Kreq__Attempt a[3];
	Kreq__Attempt *ap[3];
	for (int i = 0; i < 3; i++) {
		kreq__attempt__init(&a[i]);
		a[i].idempotency_key = (ProtobufCBinaryData){idem_len, (uint8_t *)idem};
		a[i].request_key_id = req_with == kr ? KEY_ID : STRANGER_ID;
		a[i].number = (uint32_t)i + 1;
		a[i].worker = i == 1 ? "dk-worker-b" : "dk-worker-a";
		a[i].started_at_ms = t0 + i * 1000;
		a[i].ended_at_ms = 0; /* crashed */
		a[i].request_offset = 40 + tag;
		a[i].request_partition = 0;
		ap[i] = &a[i];
	}
	Kreq__DeadLetter d = KREQ__DEAD_LETTER__INIT;
	d.request = (ProtobufCBinaryData){req_len, req};
	d.request_topic = req_topic;
	d.request_partition = 0;
	d.request_offset = 40 + tag;
	d.request_key_id = req_with == kr ? KEY_ID : STRANGER_ID;
	d.idempotency_key = (ProtobufCBinaryData){idem_len, (uint8_t *)idem};
	d.correlation_id = (ProtobufCBinaryData){16, corr};
	d.method = "svc.echo";
	d.status = 10;
	d.reason = (char *)reason;
	d.attempts = ap;
	d.n_attempts = 3;
	d.dead_at_ms = t0 + 5000;
	d.worker = "dk-worker-a";
	uint8_t *out = seal(seal_with, KREQ__KIND_DEAD, &d.base, len);
	free(req);
	return out;
}

static rd_kafka_t *producer;

static void send_to(int32_t partition, const void *buf, size_t len)
{
	ck_assert_int_eq(
	    rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(dead_topic),
	                      RD_KAFKA_V_PARTITION(partition), RD_KAFKA_V_VALUE((void *)buf, len),
	                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END),
	    RD_KAFKA_RESP_ERR_NO_ERROR);
	ck_assert_int_eq(rd_kafka_flush(producer, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

static void send_dead(int32_t partition, kreq_keyring_t *seal_with, kreq_keyring_t *req_with,
                      uint8_t tag, const void *idem, size_t idem_len, const char *payload,
                      const char *reason, bool tamper)
{
	size_t len = 0;
	uint8_t *buf = dead_letter(seal_with, req_with, tag, idem, idem_len, payload, reason, &len);
	if (tamper)
		buf[len / 2] ^= 0x01; /* inside the signed body */
	send_to(partition, buf, len);
	free(buf);
}

static const uint8_t binary_idem[] = {0x00, 0xff, 0x10, 0x7f};

/* partition:offset  what
 *  0:0  dk-alpha, tag a1, payload alpha-payload      verified
 *  0:1  dk-shared, tag b1                            verified
 *  0:2  dk-tamper, tag c1, one byte flipped          EBADSIG (claims dk-key)
 *  0:3  dk-foreign, sealed by dk-stranger            EUNKNOWNKEY (claims dk-stranger)
 *  0:4  "not an envelope"                            EMALFORMED
 *  1:0  dk-shared, tag d1                            verified (same key as 0:1)
 *  1:1  idempotency key 00ff107f, request signed by dk-stranger, a reason
 *       that is not UTF-8: verified dead letter, request decoded unverified
 *  1:2  a sealed request, no dead letter                  EMALFORMED */
static void write_dead_topic(void)
{
	kreq_test_create_topic(bootstrap, dead_topic, 2, 30000);
	char err[512];
	producer =
	    rd_kafka_new(RD_KAFKA_PRODUCER, kreq_test_conf_new(bootstrap, NULL), err, sizeof(err));
	ck_assert_msg(producer != NULL, "%s", err);
	send_dead(0, kr, kr, 0xa1, "dk-alpha", 8, ALPHA_PAYLOAD, REASON, false);
	send_dead(0, kr, kr, 0xb1, "dk-shared", 9, "b", REASON, false);
	send_dead(0, kr, kr, 0xc1, "dk-tamper", 9, "c", REASON, true);
	send_dead(0, stranger, kr, 0xc2, "dk-foreign", 10, "f", REASON, false);
	send_to(0, "not an envelope", 15);
	send_dead(1, kr, kr, 0xd1, "dk-shared", 9, "d", REASON, false);
	send_dead(1, kr, stranger, 0xe1, binary_idem, sizeof(binary_idem), "e", "bad \xff byte",
	          false);
	size_t len = 0;
	uint8_t *req = request_envelope(kr, 0xf1, (const uint8_t *)"dk-req", 6, "r", &len);
	send_to(1, req, len);
	free(req);
	rd_kafka_destroy(producer);
	producer = NULL;
}

/* ---- JSON helpers ---------------------------------------------------------------------- */

static json_t *parse_json(const kreq_test_result_t *r, int want_status)
{
	ck_assert_msg(r->status == want_status, "exit %d (want %d)\nstdout: %s\nstderr: %s",
	              r->status, want_status, r->out, r->err);
	json_error_t e;
	json_t *j = json_loads(r->out, JSON_REJECT_DUPLICATES, &e);
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

static json_t *record_at(const json_t *doc, int partition, int offset)
{
	json_t *rows = json_object_get(doc, "records");
	for (size_t i = 0; i < json_array_size(rows); i++) {
		json_t *r = json_array_get(rows, i);
		if (jint(r, "partition") == partition && jint(r, "offset") == offset)
			return r;
	}
	ck_abort_msg("%d:%d not listed", partition, offset);
	return NULL;
}

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

#define DEAD(r, action, ...)                                                                       \
	kreq(r, "dead", action, "--bootstrap", bootstrap, "--keyfile", keyfile, "--service",       \
	     "svc", "--prefix", prefix, __VA_ARGS__)

/* ---- list ------------------------------------------------------------------------------- */

static void check_list_text(void)
{
	kreq_test_result_t r;
	DEAD(&r, "list", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 4, out, "8 dead requests, 8 shown; 4 did not verify");
	ck_assert_ptr_nonnull(strstr(r.out, "PART:OFFSET"));
	char line[2048];
	line_with(r.out, "dk-alpha", line, sizeof(line));
	ck_assert_msg(strstr(line, "0:0 ") && strstr(line, " svc.echo ") &&
	                  strstr(line, " " KEY_ID " ") && strstr(line, " 10 ") &&
	                  strstr(line, " 3 ") && strstr(line, " dk-worker-a ") &&
	                  strstr(line, " verified ") && strstr(line, "lost its worker 3 times"),
	              "row of dk-alpha: %s", line);
	line_with(r.out, "NOT-VERIFIED:EBADSIG", line, sizeof(line));
	ck_assert_msg(strstr(line, "0:2 ") && strstr(line, " " KEY_ID " ") &&
	                  strstr(line, "signature does not verify"),
	              "tampered row: %s", line);
	line_with(r.out, "NOT-VERIFIED:EUNKNOWNKEY", line, sizeof(line));
	ck_assert_msg(strstr(line, "0:3 ") && strstr(line, " " STRANGER_ID " "), "foreign row: %s",
	              line);
	line_with(r.out, "NOT-VERIFIED:EMALFORMED", line, sizeof(line));
	ck_assert_msg(strstr(line, "0:4 ") != NULL, "garbage row: %s", line);
	line_with(r.out, "1:1 ", line, sizeof(line));
	ck_assert_msg(strstr(line, " 00ff107f ") != NULL, "binary key as hex: %s", line);
	line_with(r.out, "1:2 ", line, sizeof(line));
	ck_assert_msg(strstr(line, "NOT-VERIFIED:EMALFORMED") &&
	                  strstr(line, "not a dead letter: a request record"),
	              "request row: %s", line);
	ck_assert_ptr_nonnull(strstr(r.err, "4 records of"));
	kreq_test_result_free(&r);
}

static void check_list_json(void)
{
	kreq_test_result_t r;
	DEAD(&r, "list", "--json", NULL);
	json_t *j = parse_json(&r, 4);
	ck_assert_str_eq(jstr(j, "topic"), dead_topic);
	ck_assert_int_eq(jint(j, "total"), 8);
	ck_assert_int_eq(jint(j, "shown"), 8);
	ck_assert_int_eq(jint(j, "not_verified"), 4);
	ck_assert_int_eq(json_array_size(json_object_get(j, "records")), 8);
	json_t *a = record_at(j, 0, 0);
	ck_assert(json_is_true(json_object_get(a, "verified")));
	ck_assert_str_eq(jstr(a, "verdict"), "OK");
	ck_assert_str_eq(jstr(a, "signer_key_id"), KEY_ID);
	ck_assert_str_eq(jstr(a, "method"), "svc.echo");
	ck_assert_str_eq(jstr(a, "request_key_id"), KEY_ID);
	ck_assert_str_eq(jstr(a, "idempotency_key"), "dk-alpha");
	ck_assert_str_eq(jstr(a, "idempotency_key_encoding"), "text");
	ck_assert_str_eq(jstr(a, "correlation_id"), "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1");
	ck_assert_int_eq(jint(a, "status"), 10);
	ck_assert_str_eq(jstr(a, "status_name"), "poison");
	ck_assert_int_eq(jint(a, "attempt_count"), 3);
	ck_assert_str_eq(jstr(a, "worker"), "dk-worker-a");
	ck_assert_int_gt(jint(a, "dead_at_ms"), 0);
	ck_assert_str_eq(jstr(a, "request_topic"), req_topic);
	json_t *t = record_at(j, 0, 2);
	ck_assert(json_is_false(json_object_get(t, "verified")));
	ck_assert_str_eq(jstr(t, "verdict"), "EBADSIG");
	ck_assert_str_eq(jstr(t, "signer_key_id"), KEY_ID);
	ck_assert_ptr_null(json_object_get(t, "method")); /* nothing of its body */
	json_t *f = record_at(j, 0, 3);
	ck_assert_str_eq(jstr(f, "verdict"), "EUNKNOWNKEY");
	ck_assert_str_eq(jstr(f, "signer_key_id"), STRANGER_ID);
	ck_assert_str_eq(jstr(record_at(j, 0, 4), "verdict"), "EMALFORMED");
	json_t *e = record_at(j, 1, 1);
	ck_assert_str_eq(jstr(e, "idempotency_key"), "00ff107f");
	ck_assert_str_eq(jstr(e, "idempotency_key_encoding"), "hex");
	ck_assert_str_eq(jstr(e, "reason"), "bad ? byte"); /* not UTF-8: shown, not lost */
	ck_assert_str_eq(jstr(record_at(j, 1, 2), "verdict"), "EMALFORMED");
	json_decref(j);
	kreq_test_result_free(&r);

	/* --limit: the most recent N; --since in the future: none */
	DEAD(&r, "list", "--json", "--limit", "2", NULL);
	j = parse_json(&r, 4);
	ck_assert_int_eq(jint(j, "total"), 8);
	ck_assert_int_eq(jint(j, "shown"), 2);
	ck_assert(json_is_true(json_object_get(j, "limited")));
	json_decref(j);
	kreq_test_result_free(&r);
	char future[32];
	snprintf(future, sizeof(future), "%lld", (long long)(kreq__now_ms() + 3600000));
	DEAD(&r, "list", "--json", "--since", future, NULL);
	j = parse_json(&r, 0);
	ck_assert_int_eq(jint(j, "total"), 0);
	json_decref(j);
	kreq_test_result_free(&r);
	kreq(&r, "dead", "list", "--bootstrap", bootstrap, "--keyfile", keyfile, "--topic",
	     dead_topic, "--json", NULL); /* the topic by name */
	j = parse_json(&r, 4);
	ck_assert_int_eq(jint(j, "total"), 8);
	ck_assert_str_eq(jstr(j, "topic"), dead_topic);
	json_decref(j);
	kreq_test_result_free(&r);
	DEAD(&r, "list", "--json", "--since", "1h", NULL);
	j = parse_json(&r, 4);
	ck_assert_int_eq(jint(j, "total"), 8);
	json_decref(j);
	kreq_test_result_free(&r);
}

/* ---- show ------------------------------------------------------------------------------- */

static void check_show_alpha_json(const char *ref)
{
	kreq_test_result_t r;
	DEAD(&r, "show", "--json", ref, NULL);
	json_t *j = parse_json(&r, 0);
	ck_assert_int_eq(jint(j, "partition"), 0);
	ck_assert_int_eq(jint(j, "offset"), 0);
	ck_assert_str_eq(jstr(j, "idempotency_key"), "dk-alpha");
	json_t *att = json_object_get(j, "attempts");
	ck_assert_int_eq(json_array_size(att), 3);
	json_t *a2 = json_array_get(att, 1);
	ck_assert_int_eq(jint(a2, "number"), 2);
	ck_assert_str_eq(jstr(a2, "worker"), "dk-worker-b");
	ck_assert(json_is_false(json_object_get(a2, "finished")));
	ck_assert(json_is_null(json_object_get(a2, "ended_at")));
	json_t *q = json_object_get(j, "request");
	ck_assert(json_is_true(json_object_get(q, "verified")));
	ck_assert_str_eq(jstr(q, "key_id"), KEY_ID);
	ck_assert_str_eq(jstr(q, "method"), "svc.echo");
	ck_assert_str_eq(jstr(q, "payload"), ALPHA_PAYLOAD);
	ck_assert_str_eq(jstr(q, "payload_encoding"), "text");
	ck_assert_str_eq(jstr(q, "idempotency_key"), "dk-alpha");
	ck_assert_str_eq(jstr(json_object_get(q, "metadata"), "traceparent"), TRACEPARENT);
	ck_assert_str_eq(jstr(q, "client_id"), "dk-client");
	json_decref(j);
	kreq_test_result_free(&r);
}

START_TEST(test_list_and_show)
{
	write_dead_topic();
	check_list_text();
	check_list_json();

	/* kreq tail names the kind and shows a dead letter's fields */
	kreq_test_result_t tr;
	kreq(&tr, "tail", "--bootstrap", bootstrap, "--keyfile", keyfile, "--topic", dead_topic,
	     "--from-beginning", "--count", "8", "--timeout-ms", "30000", "--json", NULL);
	ck_assert_msg(tr.status == 4, "tail exit %d: %s %s", tr.status, tr.out, tr.err);
	char tline[2048];
	line_with(tr.out, "\"a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1\"", tline, sizeof(tline));
	json_t *tj = json_loads(tline, 0, NULL);
	ck_assert_msg(tj != NULL, "%s", tline);
	ck_assert_str_eq(jstr(tj, "kind"), "dead");
	ck_assert_str_eq(jstr(tj, "method"), "svc.echo");
	ck_assert_int_eq(jint(tj, "status"), 10);
	json_decref(tj);
	kreq_test_result_free(&tr);

	/* one record, by each kind of REF */
	check_show_alpha_json("0:0");
	check_show_alpha_json("dk-alpha");
	check_show_alpha_json("a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1");
	kreq_test_result_t r;
	DEAD(&r, "show", "0:0", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "dead request 0:0, sealed by key " KEY_ID " (verified)");
	ck_assert_ptr_nonnull(strstr(r.out, "attempts:          3"));
	ck_assert_ptr_nonnull(strstr(r.out, "worker dk-worker-b"));
	ck_assert_ptr_nonnull(strstr(r.out, "did not finish (crashed or lost its worker)"));
	ck_assert_ptr_nonnull(strstr(r.out, "status:            10 (poison)"));
	ck_assert_ptr_nonnull(strstr(r.out, "request:           verified with key " KEY_ID));
	ck_assert_ptr_nonnull(strstr(r.out, "payload:         " ALPHA_PAYLOAD));
	ck_assert_ptr_nonnull(strstr(r.out, "traceparent=" TRACEPARENT));
	kreq_test_result_free(&r);

	/* a binary key by its hex; its request signed by a key we do not hold */
	DEAD(&r, "show", "--json", "00ff107f", NULL);
	json_t *j = parse_json(&r, 0);
	ck_assert_int_eq(jint(j, "partition"), 1);
	json_t *q = json_object_get(j, "request");
	ck_assert(json_is_false(json_object_get(q, "verified")));
	ck_assert_str_eq(jstr(q, "verdict"), "EUNKNOWNKEY");
	ck_assert_str_eq(jstr(q, "key_id"), STRANGER_ID);
	ck_assert_str_eq(jstr(q, "payload"), "e");
	json_decref(j);
	kreq_test_result_free(&r);
	DEAD(&r, "show", "1:1", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "request:           NOT VERIFIED (EUNKNOWNKEY");
	kreq_test_result_free(&r);

	/* the tampered record: shown flagged, exit 4, the key id named */
	DEAD(&r, "show", "0:2", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 4, err, "0:2 in");
	ck_assert_ptr_nonnull(strstr(r.err, "EBADSIG"));
	ck_assert_ptr_nonnull(strstr(r.err, "claims key id " KEY_ID));
	ck_assert_ptr_nonnull(strstr(r.out, "NOT-VERIFIED:EBADSIG"));
	kreq_test_result_free(&r);
	DEAD(&r, "show", "--json", "0:3", NULL);
	j = parse_json(&r, 4);
	ck_assert_str_eq(jstr(j, "verdict"), "EUNKNOWNKEY");
	ck_assert_str_eq(jstr(j, "signer_key_id"), STRANGER_ID);
	json_decref(j);
	kreq_test_result_free(&r);

	/* REFs that name no record, or several */
	DEAD(&r, "show", "nope", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 1, err, "no dead request in");
	ck_assert_ptr_nonnull(strstr(r.err, "'nope'"));
	ck_assert_str_eq(r.out, "");
	kreq_test_result_free(&r);
	DEAD(&r, "show", "dk-shared", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 2, err, "'dk-shared' is ambiguous: 2 dead requests");
	ck_assert_msg(strstr(r.err, " 0:1") && strstr(r.err, " 1:0"), "%s", r.err);
	ck_assert_str_eq(r.out, "");
	kreq_test_result_free(&r);
	DEAD(&r, "replay", "--new-key", "dk-shared", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 2, err, "is ambiguous");
	kreq_test_result_free(&r);
	DEAD(&r, "show", "0:99", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 1, err, "no record at 0:99");
	kreq_test_result_free(&r);
	DEAD(&r, "show", "7:0", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 1, err, "has no partition 7");
	kreq_test_result_free(&r);
	/* replay refuses a record that does not verify */
	DEAD(&r, "replay", "--new-key", "0:2", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 4, err, "refusing to replay");
	kreq_test_result_free(&r);
}
END_TEST

/* ---- replay ------------------------------------------------------------------------------- */

static atomic_int calls_seen;
static pthread_mutex_t seen_mu = PTHREAD_MUTEX_INITIALIZER;
static char seen_idem[300], seen_tp[128], seen_key_id[80];

static void h_echo(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	size_t len = 0, idem_len = 0;
	const void *p = kreq_request_payload(r, &len);
	const void *idem = kreq_request_idempotency_key(r, &idem_len);
	const char *tp = kreq_request_metadata(r, "traceparent");
	pthread_mutex_lock(&seen_mu);
	snprintf(seen_idem, sizeof(seen_idem), "%.*s", (int)idem_len, (const char *)idem);
	snprintf(seen_tp, sizeof(seen_tp), "%s", tp ? tp : "");
	snprintf(seen_key_id, sizeof(seen_key_id), "%s", kreq_request_key_id(r));
	pthread_mutex_unlock(&seen_mu);
	atomic_fetch_add(&calls_seen, 1);
	kreq_request_reply(r, 0, p, len, NULL);
}

static kreq_test_running_t *worker_start(void)
{
	kreq_conf_t *conf = kreq_conf_new();
	char err[512];
	const char *kv[][2] = {{"kafka.bootstrap.servers", bootstrap},
	                       {"topic.prefix", prefix},
	                       {"client.id", "dk-worker"},
	                       {"log.level", "4"}};
	for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++)
		ck_assert_msg(kreq_conf_set(conf, kv[i][0], kv[i][1], err, sizeof(err)) == KREQ_OK,
		              "%s: %s", kv[i][0], err);
	kreq_worker_t *s = kreq_worker_new(conf, kr, "svc", err, sizeof(err));
	ck_assert_msg(s != NULL, "kreq_worker_new: %s", err);
	kreq_conf_destroy(conf);
	ck_assert_int_eq(kreq_worker_register(s, "svc.echo", h_echo, NULL, 0), KREQ_OK);
	return kreq_test_worker_start(s);
}

/* The verified svc.echo requests in the requests topic whose idempotency
 * key is idem: count, and the last one's payload and traceparent. */
static int requests_with_key(const char *idem, char *payload, size_t psize, char *tp, size_t tpsize)
{
	char err[512];
	rd_kafka_conf_t *c =
	    kreq_test_conf_new(bootstrap, "group.id", "dk-check", "enable.partition.eof", "true",
	                       "isolation.level", "read_committed", NULL);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, err, sizeof(err));
	ck_assert_msg(rk != NULL, "%s", err);
	rd_kafka_poll_set_consumer(rk);
	int64_t low = 0, high = 0;
	ck_assert_int_eq(rd_kafka_query_watermark_offsets(rk, req_topic, 0, &low, &high, 10000),
	                 RD_KAFKA_RESP_ERR_NO_ERROR);
	int n = 0;
	if (high > low) {
		rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
		rd_kafka_topic_partition_list_add(l, req_topic, 0)->offset = low;
		ck_assert_int_eq(rd_kafka_assign(rk, l), RD_KAFKA_RESP_ERR_NO_ERROR);
		rd_kafka_topic_partition_list_destroy(l);
		int64_t until = kreq_test_now_ms() + 20000;
		bool eof = false;
		while (!eof) {
			ck_assert_msg(kreq_test_now_ms() < until, "reading %s timed out",
			              req_topic);
			rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
			if (m == NULL)
				continue;
			eof = m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF;
			kreq__opened_t o;
			kreq__limits_t nc = lim;
			nc.skew_ms = INT64_MAX / 4;
			if (!m->err && kreq__envelope_open(kr, &nc, 0, m->payload, m->len, &o, NULL,
			                                   0) == KREQ_OK) {
				const Kreq__Request *q =
				    o.kind == KREQ__KIND_REQUEST ? o.u.req : NULL;
				if (q != NULL && q->idempotency_key.len == strlen(idem) &&
				    memcmp(q->idempotency_key.data, idem, strlen(idem)) == 0 &&
				    strcmp(q->method, "svc.echo") == 0 &&
				    strcmp(o.key_id, KEY_ID) == 0) {
					n++;
					snprintf(payload, psize, "%.*s", (int)q->payload.len,
					         (const char *)q->payload.data);
					tp[0] = '\0';
					for (size_t i = 0; i < q->n_metadata; i++)
						if (strcmp(q->metadata[i]->key, "traceparent") == 0)
							snprintf(tp, tpsize, "%s",
							         q->metadata[i]->value);
				}
				kreq__opened_clear(&o);
			}
			rd_kafka_message_destroy(m);
		}
	}
	rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
	return n;
}

START_TEST(test_replay_refused_without_new_key)
{
	/* refused before Kafka is reached: nothing can be sent */
	kreq_test_result_t r;
	int64_t t0 = kreq_test_now_ms();
	kreq(&r, "dead", "replay", "--bootstrap", "127.0.0.1:1", "--keyfile", keyfile, "--service",
	     "svc", "0:0", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 2, err, "replay needs --new-key");
	ck_assert_ptr_nonnull(strstr(r.err, "status 10"));
	ck_assert_ptr_nonnull(strstr(r.err, "never run the handler again"));
	ck_assert_str_eq(r.out, "");
	ck_assert_int_lt(kreq_test_now_ms() - t0, 5000);
	kreq_test_result_free(&r);
}
END_TEST

START_TEST(test_replay_new_key)
{
	write_dead_topic();
	kreq_test_create_topic(bootstrap, req_topic, 1, 30000);
	atomic_store(&calls_seen, 0);
	kreq_test_running_t *w = worker_start();
	kreq_test_result_t r;
	/* the old key is not a new key */
	DEAD(&r, "replay", "--new-key", "--idempotency-key", "dk-alpha", "0:0", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 2, err, "must differ");
	kreq_test_result_free(&r);
	ck_assert_int_eq(atomic_load(&calls_seen), 0);

	DEAD(&r, "replay", "--new-key", "--json", "--timeout", "30000", "dk-alpha", NULL);
	json_t *j = parse_json(&r, 0);
	ck_assert_int_eq(jint(j, "status"), 0);
	ck_assert_str_eq(jstr(j, "payload"), ALPHA_PAYLOAD);
	ck_assert_str_eq(jstr(j, "method"), "svc.echo");
	ck_assert_str_eq(jstr(j, "replay_of"), "0:0");
	ck_assert(json_is_false(json_object_get(j, "from_dedup")));
	char new_key[300];
	snprintf(new_key, sizeof(new_key), "%s", jstr(j, "idempotency_key"));
	json_decref(j);
	kreq_test_result_free(&r);
	ck_assert_str_ne(new_key, "dk-alpha");
	ck_assert_int_eq(strncmp(new_key, "replay-", 7), 0);
	ck_assert_int_eq(strlen(new_key), 7 + 32);
	ck_assert_int_eq(atomic_load(&calls_seen), 1);
	pthread_mutex_lock(&seen_mu);
	ck_assert_str_eq(seen_idem, new_key);
	ck_assert_str_eq(seen_tp, TRACEPARENT);
	ck_assert_str_eq(seen_key_id, KEY_ID);
	pthread_mutex_unlock(&seen_mu);
	/* the request record on Kafka: the new key, the old method, payload and
	 * trace context; nothing under the old key */
	char payload[64] = "", tp[128] = "";
	ck_assert_int_eq(requests_with_key(new_key, payload, sizeof(payload), tp, sizeof(tp)), 1);
	ck_assert_str_eq(payload, ALPHA_PAYLOAD);
	ck_assert_str_eq(tp, TRACEPARENT);
	ck_assert_int_eq(requests_with_key("dk-alpha", payload, sizeof(payload), tp, sizeof(tp)),
	                 0);

	/* text, with a key of the operator's choice */
	DEAD(&r, "replay", "--new-key", "--idempotency-key", "dk-alpha-fixed", "0:0", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "as a new call with idempotency key dk-alpha-fixed");
	ck_assert_ptr_nonnull(strstr(r.out, "status: 0 (ok)"));
	ck_assert_ptr_nonnull(strstr(r.out, "payload: " ALPHA_PAYLOAD));
	kreq_test_result_free(&r);
	ck_assert_int_eq(atomic_load(&calls_seen), 2);
	kreq_test_worker_stop(w);
}
END_TEST

/* ---- usage and unreachable Kafka ------------------------------------------------------------ */

START_TEST(test_usage_errors)
{
	static const char *const cases[][14] = {
	    {"dead", NULL, "missing action"},
	    {"dead", "purge", NULL, "unknown action 'purge'"},
	    {"dead", "list", "--bootstrap", "b:1", "--service", "s", NULL, "are required"},
	    {"dead", "list", "--bootstrap", "b:1", "--keyfile", "k", NULL,
	     "--service or --topic is required"},
	    {"dead", "list", "--bootstrap", "b:1", "--keyfile", "k", "--topic", "t", "--service",
	     "s", NULL, "excludes"},
	    {"dead", "list", "--bootstrap", "b:1", "--keyfile", "k", "--service", "s", "--since",
	     "soon", NULL, "--since needs"},
	    {"dead", "show", "--bootstrap", "b:1", "--keyfile", "k", "--service", "s", NULL,
	     "show needs REF"},
	    {"dead", "show", "--bootstrap", "b:1", "--keyfile", "k", "--service", "s", "--new-key",
	     "0:0", NULL, "go with replay"},
	    {"dead", "list", "--bootstrap", "b:1", "--keyfile", "k", "--service", "a b", NULL,
	     "invalid service"}};
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
	kreq(&r, "help", "dead", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "kreq dead replay");
	kreq_test_result_free(&r);
	kreq(&r, "--help", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "dead ");
	kreq_test_result_free(&r);
}
END_TEST

START_TEST(test_unreachable_and_missing)
{
	kreq_test_result_t r;
	int64_t t0 = kreq_test_now_ms();
	kreq(&r, "dead", "list", "--bootstrap", "127.0.0.1:1", "--keyfile", keyfile, "--service",
	     "svc", "--timeout", "2000", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 1, err, "cannot reach Kafka at 127.0.0.1:1");
	ck_assert_int_lt(kreq_test_now_ms() - t0, 10000);
	kreq_test_result_free(&r);
	kreq(&r, "dead", "list", "--bootstrap", bootstrap, "--keyfile", keyfile, "--service",
	     "nosuch", "--prefix", prefix, NULL);
	KREQ_TEST_ASSERT_RUN(&r, 1, err, "does not exist");
	ck_assert_ptr_nonnull(strstr(r.err, ".nosuch.dead"));
	kreq_test_result_free(&r);
	kreq(&r, "dead", "list", "--bootstrap", bootstrap, "--keyfile", "/nonexistent/dk.key",
	     "--service", "svc", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 1, err, "/nonexistent/dk.key");
	kreq_test_result_free(&r);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("dead_kafka");
	TCase *tc = tcase_create("dead_kafka");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 240);
	tcase_add_test(tc, test_usage_errors);
	tcase_add_test(tc, test_replay_refused_without_new_key);
	tcase_add_test(tc, test_unreachable_and_missing);
	tcase_add_test(tc, test_list_and_show);
	tcase_add_test(tc, test_replay_new_key);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
