/*
 * test_unverified.c — the unverified decoder beside the verified path
 * (proto/unverified.h), which `kreq pending` without --keyring, `kreq
 * tail` and `kreq dead` show records with: a sealed request decodes without
 * its key, also with a broken signature (nothing is vouched for); the field
 * rules a displayed row relies on and the deadline are still enforced; bad
 * bytes are refused with the verified path's codes; the header peek gives
 * the kind and claimed key id.
 */
#include <check.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "common/internal.h"
#include "kreq/error.h"
#include "proto/envelope.h"
#include "proto/unverified.h"
#include "testsupport.h"

static const kreq__limits_t lim = {.envelope_max = 65536, .payload_max = 4096, .skew_ms = 30000};
static const int64_t NOW = 1767225570000;
static uint8_t corr[16] = {0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};

/* A request sealed with a fresh HMAC key "k1" nobody else holds; the
 * keyring is released, so only the unverified path can read it. */
static uint8_t *sealed_request(size_t *len)
{
	kreq_keyring_t *kr = kreq_keyring_new();
	uint8_t key[32];
	randombytes_buf(key, sizeof(key));
	ck_assert_int_eq(kreq_keyring_add(kr, "k1", KREQ_KEY_HMAC_SHA256, key, 32, NULL, 0), 0);
	ck_assert_int_eq(kreq_keyring_set_signing_key(kr, "k1"), 0);
	Kreq__Request r = KREQ__REQUEST__INIT;
	r.correlation_id = (ProtobufCBinaryData){16, corr};
	r.idempotency_key = (ProtobufCBinaryData){4, (uint8_t *)"idem"};
	r.method = "echo";
	r.service = "echo";
	r.payload = (ProtobufCBinaryData){5, (uint8_t *)"hello"};
	r.reply_topic = "kreq.reply.test";
	r.issued_at_ms = NOW;
	r.deadline_ms = NOW + 5000;
	r.attempt = 1;
	r.client_id = "c1";
	uint8_t *buf = NULL;
	char err[256];
	ck_assert_int_eq(
	    kreq__envelope_seal(kr, &lim, KREQ__KIND_REQUEST, &r.base, &buf, len, err, sizeof(err)),
	    KREQ_OK);
	kreq_keyring_release(kr);
	return buf;
}

START_TEST(test_request_without_its_key)
{
	size_t len;
	uint8_t *buf = sealed_request(&len);
	buf[len - 1] ^= 0xff; /* the signature's last byte: unverified reads it anyway */
	kreq__opened_t o;
	ck_assert_int_eq(kreq__envelope_open_unverified(&lim, NOW, buf, len, &o), KREQ_OK);
	ck_assert_int_eq(o.kind, KREQ__KIND_REQUEST);
	ck_assert_str_eq(o.key_id, "k1");
	ck_assert_str_eq(o.u.req->method, "echo");
	ck_assert_int_eq(o.u.req->correlation_id.len, 16);
	kreq__opened_clear(&o);
	/* past its deadline: refused with the clock, read without */
	ck_assert_int_eq(kreq__envelope_open_unverified(&lim, NOW + 5000, buf, len, &o),
	                 KREQ_EEXPIRED);
	ck_assert_ptr_null(o.u.msg);
	ck_assert_int_eq(kreq__envelope_open_unverified(&lim, 0, buf, len, &o), KREQ_OK);
	kreq__opened_clear(&o);
	uint32_t kind = 0;
	char key_id[KREQ_KEY_ID_MAX + 1];
	ck_assert(kreq__envelope_peek(&lim, buf, len, &kind, key_id));
	ck_assert_int_eq(kind, KREQ__KIND_REQUEST);
	ck_assert_str_eq(key_id, "k1");
	free(buf);
}
END_TEST

START_TEST(test_bad_bytes_refused)
{
	kreq__opened_t o;
	uint32_t kind;
	char key_id[KREQ_KEY_ID_MAX + 1];
	static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
	ck_assert_int_eq(kreq__envelope_open_unverified(&lim, NOW, junk, sizeof(junk), &o),
	                 KREQ_EMALFORMED);
	ck_assert_int_eq(kreq__envelope_open_unverified(&lim, NOW, NULL, 0, &o), KREQ_EMALFORMED);
	ck_assert(!kreq__envelope_peek(&lim, junk, sizeof(junk), &kind, key_id));
	ck_assert_str_eq(key_id, "");
	size_t len;
	uint8_t *buf = sealed_request(&len);
	kreq__limits_t small = lim;
	small.envelope_max = len - 1;
	ck_assert_int_eq(kreq__envelope_open_unverified(&small, NOW, buf, len, &o), KREQ_EOVERSIZE);
	ck_assert(!kreq__envelope_peek(&small, buf, len, &kind, key_id));
	free(buf);
	/* a field rule a row relies on: a correlation id of 16 bytes (a body
	 * no sealer would write, wrapped by hand with a made-up signature) */
	Kreq__Request r = KREQ__REQUEST__INIT;
	r.correlation_id = (ProtobufCBinaryData){15, corr};
	r.idempotency_key = (ProtobufCBinaryData){4, (uint8_t *)"idem"};
	r.method = "echo";
	r.issued_at_ms = NOW;
	r.deadline_ms = NOW + 5000;
	r.attempt = 1;
	uint8_t body[256], sig[32] = {0}, env_buf[512];
	size_t blen = kreq__request__pack(&r, body);
	Kreq__Envelope env = KREQ__ENVELOPE__INIT;
	env.version = KREQ__PROTO_VERSION;
	env.key_id = "k1";
	env.kind = KREQ__KIND_REQUEST;
	env.body = (ProtobufCBinaryData){blen, body};
	env.signature = (ProtobufCBinaryData){32, sig};
	size_t elen = kreq__envelope__pack(&env, env_buf);
	ck_assert_int_eq(kreq__envelope_open_unverified(&lim, NOW, env_buf, elen, &o),
	                 KREQ_EMALFORMED);
	r.correlation_id.len = 16; /* the same with a proper id is shown */
	env.body.len = kreq__request__pack(&r, body);
	elen = kreq__envelope__pack(&env, env_buf);
	ck_assert_int_eq(kreq__envelope_open_unverified(&lim, NOW, env_buf, elen, &o), KREQ_OK);
	kreq__opened_clear(&o);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("unverified");
	TCase *tc = tcase_create("unverified");
	tcase_add_test(tc, test_request_without_its_key);
	tcase_add_test(tc, test_bad_bytes_refused);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
