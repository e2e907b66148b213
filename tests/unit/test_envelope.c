/*
 * test_envelope.c — envelope codec: round trips per key type, every
 * single-byte tamper, wrong/unknown/rotated-out keys, expiry and skew,
 * truncation, oversize, garbage, and the test vectors of docs/protocol.md.
 */
#include <check.h>
#include <stdbool.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/internal.h"
#include "kreq/error.h"
#include "proto/envelope.h"
#include "proto/keyring_int.h"
#include "testsupport.h"

static char errstr[512];
static const kreq__limits_t lim = {.envelope_max = 65536, .payload_max = 4096, .skew_ms = 30000};
static const int64_t NOW = 1767225570000; /* 2025-12-31T23:59:30Z */

/* Keyring with one signing key of the given type, id "k1". */
static kreq_keyring_t *keyring_of(kreq_key_type_t type)
{
	kreq_keyring_t *kr = kreq_keyring_new();
	uint8_t key[64], pk[32];
	size_t len = 32;
	if (type == KREQ_KEY_HMAC_SHA256) {
		randombytes_buf(key, 32);
	} else {
		crypto_sign_keypair(pk, key);
		len = 64;
	}
	ck_assert_int_eq(kreq_keyring_add(kr, "k1", type, key, len, errstr, sizeof(errstr)),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_signing_key(kr, "k1"), KREQ_OK);
	return kr;
}

static uint8_t corr[16] = {0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
static Kreq__MetadataEntry tp = KREQ__METADATA_ENTRY__INIT;
static Kreq__MetadataEntry *md[1] = {&tp};

static Kreq__Request request(void)
{
	Kreq__Request r = KREQ__REQUEST__INIT;
	r.correlation_id = (ProtobufCBinaryData){16, corr};
	r.idempotency_key = (ProtobufCBinaryData){16, corr};
	r.method = "echo";
	r.service = "echo";
	r.payload = (ProtobufCBinaryData){5, (uint8_t *)"hello"};
	r.reply_topic = "kreq.reply.test";
	r.reply_partition = 3;
	r.issued_at_ms = NOW;
	r.deadline_ms = NOW + 5000;
	r.attempt = 1;
	r.client_id = "c1";
	tp.key = "traceparent";
	tp.value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
	r.metadata = md;
	r.n_metadata = 1;
	return r;
}

static int seal_request(const kreq_keyring_t *kr, Kreq__Request *r, uint8_t **out, size_t *len)
{
	return kreq__envelope_seal(kr, &lim, KREQ__KIND_REQUEST, &r->base, out, len, errstr,
	                           sizeof(errstr));
}

static int open_at(const kreq_keyring_t *kr, int64_t now, const uint8_t *buf, size_t len)
{
	kreq__opened_t o;
	int err = kreq__envelope_open(kr, &lim, now, buf, len, &o, errstr, sizeof(errstr));
	if (err == KREQ_OK)
		kreq__opened_clear(&o);
	else
		ck_assert_ptr_null(o.u.msg);
	return err;
}

static const kreq_key_type_t types[] = {KREQ_KEY_HMAC_SHA256, KREQ_KEY_ED25519};

START_TEST(test_roundtrip_request)
{
	kreq_keyring_t *kr = keyring_of(types[_i]);
	Kreq__Request r = request();
	uint8_t *buf;
	size_t len;
	ck_assert_int_eq(seal_request(kr, &r, &buf, &len), KREQ_OK);
	kreq__opened_t o;
	ck_assert_int_eq(kreq__envelope_open(kr, &lim, NOW, buf, len, &o, errstr, sizeof(errstr)),
	                 KREQ_OK);
	ck_assert_int_eq(o.kind, KREQ__KIND_REQUEST);
	ck_assert_str_eq(o.key_id, "k1");
	ck_assert_mem_eq(o.u.req->correlation_id.data, corr, 16);
	ck_assert_str_eq(o.u.req->method, "echo");
	ck_assert_uint_eq(o.u.req->payload.len, 5);
	ck_assert_mem_eq(o.u.req->payload.data, "hello", 5);
	ck_assert_str_eq(o.u.req->reply_topic, "kreq.reply.test");
	ck_assert_int_eq(o.u.req->reply_partition, 3);
	ck_assert_int_eq(o.u.req->deadline_ms, NOW + 5000);
	ck_assert_uint_eq(o.u.req->n_metadata, 1);
	ck_assert_str_eq(o.u.req->metadata[0]->value, tp.value);
	kreq__opened_clear(&o);
	free(buf);
	kreq_keyring_release(kr);
}
END_TEST

/* A body whose decoded structs outgrow the decode arena (32 metadata
 * entries of a few bytes each) and a large payload: every field must come
 * back intact whichever part of the arena or its overflow holds it; the
 * same through kreq__envelope_seal_to into a caller's buffer. */
START_TEST(test_roundtrip_arena_overflow)
{
	kreq_keyring_t *kr = keyring_of(KREQ_KEY_HMAC_SHA256);
	const kreq__limits_t wide = {
	    .envelope_max = 1 << 20, .payload_max = 1 << 20, .skew_ms = 30000};
	Kreq__Request r = request();
	Kreq__MetadataEntry ents[32], *ptrs[32];
	char keys[32][8], vals[32][8];
	for (int i = 0; i < 32; i++) {
		ents[i] = (Kreq__MetadataEntry)KREQ__METADATA_ENTRY__INIT;
		snprintf(keys[i], sizeof(keys[i]), "k%d", i);
		snprintf(vals[i], sizeof(vals[i]), "v%d", i);
		ents[i].key = keys[i];
		ents[i].value = vals[i];
		ptrs[i] = &ents[i];
	}
	r.metadata = ptrs;
	r.n_metadata = 32;
	static uint8_t big[200000], out[300000];
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (uint8_t)(i * 7);
	for (int pass = 0; pass < 2; pass++) {
		r.payload =
		    (ProtobufCBinaryData){pass ? sizeof(big) : 3, pass ? big : (uint8_t *)"abc"};
		size_t len;
		ck_assert_int_eq(kreq__envelope_seal_to(kr, &wide, KREQ__KIND_REQUEST, &r.base, out,
		                                        sizeof(out), &len, errstr, sizeof(errstr)),
		                 KREQ_OK);
		/* a buffer one byte short is refused, naming the buffer */
		size_t short_len;
		ck_assert_int_eq(kreq__envelope_seal_to(kr, &wide, KREQ__KIND_REQUEST, &r.base, out,
		                                        len - 1, &short_len, errstr,
		                                        sizeof(errstr)),
		                 KREQ_EOVERSIZE);
		ck_assert_ptr_nonnull(strstr(errstr, "buffer"));
		ck_assert_int_eq(kreq__envelope_seal_to(kr, &wide, KREQ__KIND_REQUEST, &r.base, out,
		                                        sizeof(out), &len, errstr, sizeof(errstr)),
		                 KREQ_OK);
		kreq__opened_t o;
		ck_assert_int_eq(
		    kreq__envelope_open(kr, &wide, NOW, out, len, &o, errstr, sizeof(errstr)),
		    KREQ_OK);
		ck_assert_uint_eq(o.u.req->n_metadata, 32);
		for (int i = 0; i < 32; i++) {
			ck_assert_str_eq(o.u.req->metadata[i]->key, keys[i]);
			ck_assert_str_eq(o.u.req->metadata[i]->value, vals[i]);
		}
		ck_assert_uint_eq(o.u.req->payload.len, r.payload.len);
		ck_assert_mem_eq(o.u.req->payload.data, r.payload.data, r.payload.len);
		ck_assert_str_eq(o.u.req->method, "echo");
		ck_assert_str_eq(o.u.req->reply_topic, "kreq.reply.test");
		kreq__opened_clear(&o);
	}
	kreq_keyring_release(kr);
}
END_TEST

START_TEST(test_roundtrip_reply_and_cancel)
{
	kreq_keyring_t *kr = keyring_of(types[_i]);
	Kreq__Reply rep = KREQ__REPLY__INIT;
	rep.correlation_id = (ProtobufCBinaryData){16, corr};
	rep.status = 7;
	rep.error = "handler failed";
	rep.from_dedup = 1;
	rep.issued_at_ms = NOW;
	rep.deadline_ms = NOW + 1;
	uint8_t *buf;
	size_t len;
	ck_assert_int_eq(kreq__envelope_seal(kr, &lim, KREQ__KIND_REPLY, &rep.base, &buf, &len,
	                                     errstr, sizeof(errstr)),
	                 KREQ_OK);
	kreq__opened_t o;
	ck_assert_int_eq(kreq__envelope_open(kr, &lim, NOW, buf, len, &o, errstr, sizeof(errstr)),
	                 KREQ_OK);
	ck_assert_int_eq(o.kind, KREQ__KIND_REPLY);
	ck_assert_int_eq(o.u.reply->status, 7);
	ck_assert_int_eq(o.u.reply->from_dedup, 1);
	ck_assert_str_eq(o.u.reply->error, "handler failed");
	kreq__opened_clear(&o);
	free(buf);

	Kreq__Cancel c = KREQ__CANCEL__INIT;
	c.correlation_id = (ProtobufCBinaryData){16, corr};
	c.issued_at_ms = NOW;
	c.deadline_ms = NOW + 100;
	ck_assert_int_eq(kreq__envelope_seal(kr, &lim, KREQ__KIND_CANCEL, &c.base, &buf, &len,
	                                     errstr, sizeof(errstr)),
	                 KREQ_OK);
	ck_assert_int_eq(kreq__envelope_open(kr, &lim, NOW, buf, len, &o, errstr, sizeof(errstr)),
	                 KREQ_OK);
	ck_assert_int_eq(o.kind, KREQ__KIND_CANCEL);
	kreq__opened_clear(&o);
	free(buf);
	/* the body type must match the kind */
	ck_assert_int_eq(kreq__envelope_seal(kr, &lim, KREQ__KIND_REQUEST, &c.base, &buf, &len,
	                                     errstr, sizeof(errstr)),
	                 KREQ_EMALFORMED);
	kreq_keyring_release(kr);
}
END_TEST

/* Every byte of a signed envelope, changed in any of several ways, must be
 * rejected: no single-byte change yields an accepted message. */
START_TEST(test_every_single_byte_tamper_rejected)
{
	kreq_keyring_t *kr = keyring_of(types[_i]);
	Kreq__Request r = request();
	uint8_t *buf;
	size_t len;
	ck_assert_int_eq(seal_request(kr, &r, &buf, &len), KREQ_OK);
	const uint8_t flips[] = {0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xff};
	size_t rejected = 0;
	for (size_t pos = 0; pos < len; pos++) {
		for (size_t f = 0; f < sizeof(flips); f++) {
			buf[pos] ^= flips[f];
			int err = open_at(kr, NOW, buf, len);
			ck_assert_msg(err != KREQ_OK, "tamper at byte %zu (^0x%02x) accepted", pos,
			              flips[f]);
			buf[pos] ^= flips[f];
			rejected++;
		}
	}
	ck_assert_uint_eq(rejected, len * sizeof(flips));
	ck_assert_int_eq(open_at(kr, NOW, buf, len), KREQ_OK); /* restored: verifies again */
	free(buf);
	kreq_keyring_release(kr);
}
END_TEST

START_TEST(test_tampered_body_is_badsig)
{
	kreq_keyring_t *kr = keyring_of(types[_i]);
	Kreq__Request r = request();
	uint8_t *buf;
	size_t len;
	ck_assert_int_eq(seal_request(kr, &r, &buf, &len), KREQ_OK);
	uint8_t *hello = memmem(buf, len, "hello", 5);
	ck_assert_ptr_nonnull(hello);
	hello[0] = 'j';
	ck_assert_int_eq(open_at(kr, NOW, buf, len), KREQ_EBADSIG);
	ck_assert_ptr_nonnull(strstr(errstr, "k1"));
	free(buf);
	kreq_keyring_release(kr);
}
END_TEST

START_TEST(test_wrong_unknown_and_rotated_keys)
{
	kreq_keyring_t *signer = keyring_of(types[_i]);
	kreq_keyring_t *other = keyring_of(types[_i]); /* same id "k1", different key */
	Kreq__Request r = request();
	uint8_t *buf;
	size_t len;
	ck_assert_int_eq(seal_request(signer, &r, &buf, &len), KREQ_OK);
	ck_assert_int_eq(open_at(other, NOW, buf, len), KREQ_EBADSIG);

	/* rotation: a second key is added and becomes the signer; both verify */
	uint8_t k2[32];
	randombytes_buf(k2, sizeof(k2));
	ck_assert_int_eq(kreq_keyring_add(signer, "k2", KREQ_KEY_HMAC_SHA256, k2, 32, NULL, 0),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_signing_key(signer, "k2"), KREQ_OK);
	uint8_t *buf2;
	size_t len2;
	ck_assert_int_eq(seal_request(signer, &r, &buf2, &len2), KREQ_OK);
	ck_assert_int_eq(open_at(signer, NOW, buf, len), KREQ_OK);
	ck_assert_int_eq(open_at(signer, NOW, buf2, len2), KREQ_OK);
	/* old key rotated out: what it signed no longer verifies */
	ck_assert_int_eq(kreq_keyring_remove(signer, "k1"), KREQ_OK);
	ck_assert_int_eq(open_at(signer, NOW, buf, len), KREQ_EUNKNOWNKEY);
	ck_assert_ptr_nonnull(strstr(errstr, "k1"));
	ck_assert_int_eq(open_at(signer, NOW, buf2, len2), KREQ_OK);
	/* an empty keyring knows no key and cannot sign */
	kreq_keyring_t *empty = kreq_keyring_new();
	ck_assert_int_eq(open_at(empty, NOW, buf2, len2), KREQ_EUNKNOWNKEY);
	uint8_t *b3;
	size_t l3;
	ck_assert_int_eq(seal_request(empty, &r, &b3, &l3), KREQ_ENOSIGNKEY);
	free(buf);
	free(buf2);
	kreq_keyring_release(empty);
	kreq_keyring_release(signer);
	kreq_keyring_release(other);
}
END_TEST

START_TEST(test_ed25519_public_key_verifies)
{
	uint8_t pk[32], sk[64];
	crypto_sign_keypair(pk, sk);
	kreq_keyring_t *priv = kreq_keyring_new(), *pub = kreq_keyring_new();
	ck_assert_int_eq(kreq_keyring_add(priv, "e", KREQ_KEY_ED25519, sk, 64, NULL, 0), KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_signing_key(priv, "e"), KREQ_OK);
	ck_assert_int_eq(kreq_keyring_add(pub, "e", KREQ_KEY_ED25519_PUBLIC, pk, 32, NULL, 0),
	                 KREQ_OK);
	Kreq__Request r = request();
	uint8_t *buf;
	size_t len;
	ck_assert_int_eq(seal_request(priv, &r, &buf, &len), KREQ_OK);
	ck_assert_int_eq(open_at(pub, NOW, buf, len), KREQ_OK);
	/* an HMAC key under the same id does not accept an Ed25519 signature */
	kreq_keyring_t *h = keyring_of(KREQ_KEY_HMAC_SHA256);
	kreq_keyring_remove(h, "k1");
	uint8_t k[32] = {0};
	ck_assert_int_eq(kreq_keyring_add(h, "e", KREQ_KEY_HMAC_SHA256, k, 32, NULL, 0), KREQ_OK);
	ck_assert_int_eq(open_at(h, NOW, buf, len), KREQ_EBADSIG);
	free(buf);
	kreq_keyring_release(h);
	kreq_keyring_release(priv);
	kreq_keyring_release(pub);
}
END_TEST

START_TEST(test_expired_and_future)
{
	kreq_keyring_t *kr = keyring_of(types[_i]);
	Kreq__Request r = request();
	uint8_t *buf;
	size_t len;
	ck_assert_int_eq(seal_request(kr, &r, &buf, &len), KREQ_OK);
	ck_assert_int_eq(open_at(kr, NOW + 4999, buf, len), KREQ_OK);
	ck_assert_int_eq(open_at(kr, NOW + 5000, buf, len), KREQ_EEXPIRED); /* at the deadline */
	ck_assert_int_eq(open_at(kr, NOW + 60000, buf, len), KREQ_EEXPIRED);
	ck_assert_ptr_nonnull(strstr(errstr, "deadline passed"));
	ck_assert_int_eq(open_at(kr, NOW - 30000, buf, len), KREQ_OK); /* within skew */
	ck_assert_int_eq(open_at(kr, NOW - 30001, buf, len), KREQ_EFUTURE);
	ck_assert_ptr_nonnull(strstr(errstr, "future"));
	free(buf);
	kreq_keyring_release(kr);
}
END_TEST

START_TEST(test_truncated)
{
	kreq_keyring_t *kr = keyring_of(types[_i]);
	Kreq__Request r = request();
	uint8_t *buf;
	size_t len;
	ck_assert_int_eq(seal_request(kr, &r, &buf, &len), KREQ_OK);
	for (size_t n = 0; n < len; n++) {
		uint8_t *copy = malloc(n ? n : 1); /* exact-size copy: ASan sees overreads */
		memcpy(copy, buf, n);
		int err = open_at(kr, NOW, n ? copy : NULL, n);
		ck_assert_msg(err == KREQ_EMALFORMED || err == KREQ_EBADSIG ||
		                  err == KREQ_EVERSION || err == KREQ_EUNKNOWNKEY,
		              "truncated to %zu: %s", n, kreq_err_name(err));
		free(copy);
	}
	ck_assert_int_eq(open_at(kr, NOW, buf, 0), KREQ_EMALFORMED);
	free(buf);
	kreq_keyring_release(kr);
}
END_TEST

START_TEST(test_oversize)
{
	kreq_keyring_t *kr = keyring_of(types[_i]);
	Kreq__Request r = request();
	static uint8_t big[70000];
	/* payload over payload.max.bytes: refused when sealing and when opening */
	r.payload = (ProtobufCBinaryData){lim.payload_max + 1, big};
	uint8_t *buf;
	size_t len;
	ck_assert_int_eq(seal_request(kr, &r, &buf, &len), KREQ_EOVERSIZE);
	ck_assert_ptr_nonnull(strstr(errstr, "payload.max.bytes"));
	kreq__limits_t wide = lim;
	wide.payload_max = sizeof(big);
	ck_assert_int_eq(kreq__envelope_seal(kr, &wide, KREQ__KIND_REQUEST, &r.base, &buf, &len,
	                                     errstr, sizeof(errstr)),
	                 KREQ_OK);
	ck_assert_int_eq(open_at(kr, NOW, buf, len), KREQ_EOVERSIZE);
	free(buf);
	/* envelope over envelope.max.bytes: refused before parsing */
	r.payload = (ProtobufCBinaryData){sizeof(big), big};
	ck_assert_int_eq(kreq__envelope_seal(kr, &wide, KREQ__KIND_REQUEST, &r.base, &buf, &len,
	                                     errstr, sizeof(errstr)),
	                 KREQ_EOVERSIZE);
	wide.envelope_max = sizeof(big) + 1024;
	ck_assert_int_eq(kreq__envelope_seal(kr, &wide, KREQ__KIND_REQUEST, &r.base, &buf, &len,
	                                     errstr, sizeof(errstr)),
	                 KREQ_OK);
	ck_assert_int_eq(open_at(kr, NOW, buf, len), KREQ_EOVERSIZE);
	ck_assert_ptr_nonnull(strstr(errstr, "envelope.max.bytes"));
	free(buf);
	kreq_keyring_release(kr);
}
END_TEST

START_TEST(test_random_garbage)
{
	kreq_keyring_t *kr = keyring_of(types[_i]);
	uint8_t buf[512];
	for (int i = 0; i < 20000; i++) {
		size_t n = 1 + randombytes_uniform(sizeof(buf));
		randombytes_buf(buf, n);
		int err = open_at(kr, NOW, buf, n);
		ck_assert_int_ne(err, KREQ_OK);
		ck_assert_int_lt(err, 0);
	}
	kreq_keyring_release(kr);
}
END_TEST

/* A well-formed, correctly signed envelope of another version is refused
 * with EVERSION; an unknown kind with EMALFORMED. */
static void seal_raw(const kreq_keyring_t *kr, uint32_t version, uint32_t kind, uint8_t **out,
                     size_t *out_len)
{
	Kreq__Request r = request();
	size_t blen = protobuf_c_message_get_packed_size(&r.base);
	uint8_t *body = malloc(blen), sig[64], hdr[KREQ__SIG_HDR_MAX];
	protobuf_c_message_pack(&r.base, body);
	const kreq__key_t *k = kreq__keyring_signer(kr);
	size_t hl = kreq__sig_header(hdr, version, k->id, k->id_len, kind, blen);
	crypto_auth_hmacsha256_state st;
	crypto_auth_hmacsha256_init(&st, k->material, 32);
	crypto_auth_hmacsha256_update(&st, hdr, hl);
	crypto_auth_hmacsha256_update(&st, body, blen);
	crypto_auth_hmacsha256_final(&st, sig);
	Kreq__Envelope env = KREQ__ENVELOPE__INIT;
	env.version = version;
	env.key_id = (char *)k->id;
	env.kind = kind;
	env.body = (ProtobufCBinaryData){blen, body};
	env.signature = (ProtobufCBinaryData){32, sig};
	*out_len = kreq__envelope__get_packed_size(&env);
	*out = malloc(*out_len);
	kreq__envelope__pack(&env, *out);
	free(body);
}

START_TEST(test_version_and_kind)
{
	kreq_keyring_t *kr = keyring_of(KREQ_KEY_HMAC_SHA256);
	uint8_t *buf;
	size_t len;
	seal_raw(kr, 2, KREQ__KIND_REQUEST, &buf, &len);
	ck_assert_int_eq(open_at(kr, NOW, buf, len), KREQ_OK); /* the raw path is right */
	free(buf);
	/* version 1 (no signed destination) and 3 are refused */
	seal_raw(kr, 1, KREQ__KIND_REQUEST, &buf, &len);
	ck_assert_int_eq(open_at(kr, NOW, buf, len), KREQ_EVERSION);
	ck_assert_ptr_nonnull(strstr(errstr, "version 1"));
	free(buf);
	seal_raw(kr, 3, KREQ__KIND_REQUEST, &buf, &len);
	ck_assert_int_eq(open_at(kr, NOW, buf, len), KREQ_EVERSION);
	ck_assert_ptr_nonnull(strstr(errstr, "version 3"));
	free(buf);
	seal_raw(kr, 2, 9, &buf, &len);
	ck_assert_int_eq(open_at(kr, NOW, buf, len), KREQ_EMALFORMED);
	free(buf);
	/* a request body signed as a reply: kind is bound, body must match it */
	seal_raw(kr, 2, KREQ__KIND_REPLY, &buf, &len);
	ck_assert_int_ne(open_at(kr, NOW, buf, len), KREQ_OK);
	free(buf);
	kreq_keyring_release(kr);
}
END_TEST

/* Signs body (any bytes) as kind with kr's signer, version v. */
static void seal_body(const kreq_keyring_t *kr, uint32_t v, uint32_t kind, const uint8_t *body,
                      size_t blen, uint8_t **out, size_t *out_len)
{
	const kreq__key_t *k = kreq__keyring_signer(kr);
	uint8_t sig[64], hdr[KREQ__SIG_HDR_MAX];
	size_t hl = kreq__sig_header(hdr, v, k->id, k->id_len, kind, blen);
	crypto_auth_hmacsha256_state st;
	crypto_auth_hmacsha256_init(&st, k->material, 32);
	crypto_auth_hmacsha256_update(&st, hdr, hl);
	crypto_auth_hmacsha256_update(&st, body, blen);
	crypto_auth_hmacsha256_final(&st, sig);
	Kreq__Envelope env = KREQ__ENVELOPE__INIT;
	env.version = v;
	env.key_id = (char *)k->id;
	env.kind = kind;
	env.body = (ProtobufCBinaryData){blen, (uint8_t *)body};
	env.signature = (ProtobufCBinaryData){32, sig};
	*out_len = kreq__envelope__get_packed_size(&env);
	*out = malloc(*out_len);
	kreq__envelope__pack(&env, *out);
}

/* Results did not change in version 2: a version 1 Result (stored before
 * an upgrade) still opens, so stored results survive it. */
START_TEST(test_v1_result_accepted)
{
	kreq_keyring_t *kr = keyring_of(KREQ_KEY_HMAC_SHA256);
	uint8_t digest[32] = {1};
	Kreq__Result rs = KREQ__RESULT__INIT;
	rs.request_digest = (ProtobufCBinaryData){32, digest};
	rs.idempotency_key = (ProtobufCBinaryData){3, (uint8_t *)"abc"};
	rs.request_key_id = "k1";
	rs.method = "svc.echo";
	rs.issued_at_ms = NOW;
	rs.deadline_ms = NOW + 1000;
	uint8_t body[256], *buf;
	size_t blen = protobuf_c_message_pack(&rs.base, body), len;
	for (uint32_t v = 1; v <= 2; v++) {
		seal_body(kr, v, KREQ__KIND_RESULT, body, blen, &buf, &len);
		ck_assert_int_eq(open_at(kr, NOW, buf, len), KREQ_OK);
		free(buf);
	}
	seal_body(kr, 3, KREQ__KIND_RESULT, body, blen, &buf, &len);
	ck_assert_int_eq(open_at(kr, NOW, buf, len), KREQ_EVERSION);
	free(buf);
	kreq_keyring_release(kr);
}
END_TEST

/* The envelope decoder refuses, before any key lookup, what protobuf-c
 * would have accepted: unknown fields, repeated fields, wrong wire types,
 * non-minimal varints, out-of-range values. */
START_TEST(test_envelope_strict)
{
	kreq_keyring_t *kr = keyring_of(KREQ_KEY_HMAC_SHA256);
	Kreq__Request r = request();
	uint8_t *buf;
	size_t len;
	ck_assert_int_eq(seal_request(kr, &r, &buf, &len), KREQ_OK);
	ck_assert_int_eq(buf[0], 0x08); /* field 1, varint: version */
	ck_assert_int_eq(buf[1], 0x02);
	uint8_t *m = malloc(len + 16);
	static const struct {
		const char *what;
		uint8_t bytes[12];
		size_t n;
		bool append; /* after the envelope, else in place of its first 2 bytes */
	} cases[] = {
	    {"unknown field 6 appended", {0x30, 0x00}, 2, true},
	    {"unknown field 15 appended", {0x7a, 0x00}, 2, true},
	    {"unknown field 16 (two-byte key)", {0x80, 0x01, 0x00}, 3, true},
	    {"version repeated", {0x08, 0x02}, 2, true},
	    {"signature repeated", {0x2a, 0x00}, 2, true},
	    {"version as bytes", {0x0a, 0x01, 0x02}, 3, false},
	    {"version as a non-minimal varint", {0x08, 0x82, 0x00}, 3, false},
	    {"version above 32 bits", {0x08, 0x80, 0x80, 0x80, 0x80, 0x10}, 6, false},
	    {"field 0", {0x00, 0x02}, 2, false},
	    {"fixed64 wire type", {0x09, 1, 2, 3, 4, 5, 6, 7, 8}, 9, false},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t n;
		if (cases[i].append) {
			memcpy(m, buf, len);
			memcpy(m + len, cases[i].bytes, cases[i].n);
			n = len + cases[i].n;
		} else {
			memcpy(m, cases[i].bytes, cases[i].n);
			memcpy(m + cases[i].n, buf + 2, len - 2);
			n = len - 2 + cases[i].n;
		}
		ck_assert_msg(open_at(kr, NOW, m, n) == KREQ_EMALFORMED, "%s: accepted (%s)",
		              cases[i].what, errstr);
		ck_assert_ptr_nonnull(strstr(errstr, "malformed envelope"));
	}
	/* fields that are absent: no key id, no body (found by fuzz_envelope:
	 * both used to reach memchr/pointer arithmetic with NULL) */
	Kreq__Envelope env = KREQ__ENVELOPE__INIT;
	env.version = 2;
	env.kind = KREQ__KIND_REQUEST;
	env.signature = (ProtobufCBinaryData){2, (uint8_t *)"xy"};
	uint8_t small[64];
	size_t n = kreq__envelope__pack(&env, small);
	ck_assert_int_eq(open_at(kr, NOW, small, n), KREQ_EMALFORMED);
	ck_assert_ptr_nonnull(strstr(errstr, "key id"));
	env.key_id = "k1";
	n = kreq__envelope__pack(&env, small);
	ck_assert_int_eq(open_at(kr, NOW, small, n), KREQ_EBADSIG);
	/* the decoder alone: views into the buffer, nothing copied */
	kreq__env_view_t v;
	ck_assert_int_eq(kreq__envelope_parse(buf, len, &v, errstr, sizeof(errstr)), KREQ_OK);
	ck_assert_uint_eq(v.version, 2);
	ck_assert_uint_eq(v.kind, KREQ__KIND_REQUEST);
	ck_assert_uint_eq(v.key_id_len, 2);
	ck_assert_mem_eq(v.key_id, "k1", 2);
	ck_assert_uint_eq(v.sig_len, 32);
	ck_assert(v.body > buf && v.sig + v.sig_len == buf + len);
	free(m);
	free(buf);
	kreq_keyring_release(kr);
}
END_TEST

/* A verified body is held to one meaning: unknown fields, a repeated
 * singular field, a wrong wire type, an out-of-range integer, more than 32
 * metadata entries and strings with a NUL byte are refused although the
 * signature is good. */
START_TEST(test_body_strict)
{
	kreq_keyring_t *kr = keyring_of(KREQ_KEY_HMAC_SHA256);
	Kreq__Request r = request();
	uint8_t body[4096], *buf;
	size_t blen = protobuf_c_message_pack(&r.base, body), len;
	seal_body(kr, 2, KREQ__KIND_REQUEST, body, blen, &buf, &len);
	ck_assert_int_eq(open_at(kr, NOW, buf, len), KREQ_OK); /* as is: fine */
	free(buf);
	static const struct {
		const char *what;
		uint8_t bytes[16];
		size_t n;
	} extra[] = {
	    {"unknown field 13", {0x68, 0x01}, 2},
	    {"unknown field 100", {0xa0, 0x06, 0x01}, 3},
	    {"attempt repeated", {0x48, 0x02}, 2},
	    {"method repeated", {0x1a, 0x01, 'x'}, 3},
	    {"attempt as bytes", {0x4a, 0x01, 0x02}, 3},
	    {"attempt above 32 bits", {0x48, 0x80, 0x80, 0x80, 0x80, 0x10}, 6},
	    {"metadata entry with an unknown field", {0x5a, 0x02, 0x18, 0x01}, 4},
	    {"metadata value with a NUL", {0x5a, 0x07, 0x0a, 0x01, 'k', 0x12, 0x02, 'a', 0}, 9},
	};
	for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++) {
		memcpy(body + blen, extra[i].bytes, extra[i].n);
		seal_body(kr, 2, KREQ__KIND_REQUEST, body, blen + extra[i].n, &buf, &len);
		ck_assert_msg(open_at(kr, NOW, buf, len) == KREQ_EMALFORMED, "%s: accepted",
		              extra[i].what);
		ck_assert_ptr_nonnull(strstr(errstr, "strictly"));
		free(buf);
	}
	/* a method "echo\0x" was read as "echo" */
	r.method = "echo";
	blen = protobuf_c_message_pack(&r.base, body);
	uint8_t *meth = memmem(body, blen,
	                       "\x1a\x04"
	                       "echo",
	                       6);
	ck_assert_ptr_nonnull(meth);
	meth[5] = 0; /* "ech\0" */
	seal_body(kr, 2, KREQ__KIND_REQUEST, body, blen, &buf, &len);
	ck_assert_int_eq(open_at(kr, NOW, buf, len), KREQ_EMALFORMED);
	ck_assert_ptr_nonnull(strstr(errstr, "NUL"));
	free(buf);
	/* an empty body, correctly signed: decodes to defaults, refused */
	seal_body(kr, 2, KREQ__KIND_REQUEST, NULL, 0, &buf, &len);
	ck_assert_int_eq(open_at(kr, NOW, buf, len), KREQ_EMALFORMED);
	free(buf);
	/* 33 metadata entries: refused before protobuf-c builds the array */
	Kreq__MetadataEntry ents[33], *ptrs[33];
	for (int i = 0; i < 33; i++) {
		ents[i] = (Kreq__MetadataEntry)KREQ__METADATA_ENTRY__INIT;
		ents[i].key = "k";
		ptrs[i] = &ents[i];
	}
	r = request();
	r.metadata = ptrs;
	r.n_metadata = 33;
	blen = protobuf_c_message_pack(&r.base, body);
	seal_body(kr, 2, KREQ__KIND_REQUEST, body, blen, &buf, &len);
	ck_assert_int_eq(open_at(kr, NOW, buf, len), KREQ_EMALFORMED);
	ck_assert_ptr_nonnull(strstr(errstr, "repeated"));
	free(buf);
	kreq_keyring_release(kr);
}
END_TEST

START_TEST(test_seal_validates_fields)
{
	kreq_keyring_t *kr = keyring_of(KREQ_KEY_HMAC_SHA256);
	uint8_t *buf;
	size_t len;
	Kreq__Request r = request();
	r.correlation_id.len = 15;
	ck_assert_int_eq(seal_request(kr, &r, &buf, &len), KREQ_EMALFORMED);
	ck_assert_ptr_nonnull(strstr(errstr, "correlation_id"));
	r = request();
	r.method = "";
	ck_assert_int_eq(seal_request(kr, &r, &buf, &len), KREQ_EMALFORMED);
	r.method = "has space";
	ck_assert_int_eq(seal_request(kr, &r, &buf, &len), KREQ_EMALFORMED);
	r = request();
	r.reply_topic = "bad/topic";
	ck_assert_int_eq(seal_request(kr, &r, &buf, &len), KREQ_EMALFORMED);
	r = request();
	r.reply_partition = -1;
	ck_assert_int_eq(seal_request(kr, &r, &buf, &len), KREQ_EMALFORMED);
	r = request();
	r.attempt = 0;
	ck_assert_int_eq(seal_request(kr, &r, &buf, &len), KREQ_EMALFORMED);
	r = request();
	r.idempotency_key.len = 0;
	ck_assert_int_eq(seal_request(kr, &r, &buf, &len), KREQ_EMALFORMED);
	r = request();
	r.deadline_ms = r.issued_at_ms - 1;
	ck_assert_int_eq(seal_request(kr, &r, &buf, &len), KREQ_EMALFORMED);
	r = request();
	r.n_metadata = 33;
	ck_assert_int_eq(seal_request(kr, &r, &buf, &len), KREQ_EMALFORMED);
	/* the destination service: 1..200 of [A-Za-z0-9._-], required */
	r = request();
	r.service = "";
	ck_assert_int_eq(seal_request(kr, &r, &buf, &len), KREQ_EMALFORMED);
	ck_assert_ptr_nonnull(strstr(errstr, "service"));
	r.service = "a/b";
	ck_assert_int_eq(seal_request(kr, &r, &buf, &len), KREQ_EMALFORMED);
	kreq_keyring_release(kr);
}
END_TEST

/* Topic and service names: exactly [A-Za-z0-9._-] (common/name.c's table),
 * every byte value tried in the middle of a name, where a prefix check
 * would pass. */
START_TEST(test_name_characters)
{
	kreq_keyring_t *kr = keyring_of(KREQ_KEY_HMAC_SHA256);
	for (int c = 1; c < 256; c++) {
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		          (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
		char name[6] = {'a', 'b', (char)c, 'c', 'd', 0};
		for (int field = 0; field < 2; field++) {
			Kreq__Request r = request();
			if (field)
				r.service = name;
			else
				r.reply_topic = name;
			uint8_t *buf = NULL;
			size_t len;
			int err = seal_request(kr, &r, &buf, &len);
			ck_assert_msg(err == (ok ? KREQ_OK : KREQ_EMALFORMED),
			              "byte 0x%02x in the %s: %s", c,
			              field ? "service" : "reply topic", kreq_strerror(err));
			free(buf);
		}
		char id[4] = {'k', (char)c, '1', 0};
		ck_assert_int_eq(kreq__key_id_valid(id, 3), ok);
	}
	kreq_keyring_release(kr);
}
END_TEST

/* ---- SHA-256 / HMAC-SHA-256 (proto/sha256.c) against libsodium ---------- */

#include "proto/sha256.h"

/* ---- DeadLetter (kind 5) and Attempt (kind 6) ---------------------------- */

static Kreq__Attempt attempt_of(uint32_t number, int64_t started, int64_t ended)
{
	Kreq__Attempt a = KREQ__ATTEMPT__INIT;
	a.idempotency_key = (ProtobufCBinaryData){16, corr};
	a.request_key_id = "k1";
	a.number = number;
	a.worker = "kreqd-a";
	a.started_at_ms = started;
	a.ended_at_ms = ended;
	a.request_offset = 41;
	a.request_partition = 2;
	a.instance = 0xfedcba9876543210ULL; /* a uint64 beyond 63 bits: wire type 0 */
	return a;
}

/* An Attempt seals and opens to the same fields, long after its start (no
 * clock check: a record of history), with both key types. */
START_TEST(test_roundtrip_attempt)
{
	kreq_keyring_t *kr = keyring_of(types[_i]);
	Kreq__Attempt a = attempt_of(3, NOW - 86400000, 0);
	uint8_t *buf;
	size_t len;
	ck_assert_int_eq(kreq__envelope_seal(kr, &lim, KREQ__KIND_ATTEMPT, &a.base, &buf, &len,
	                                     errstr, sizeof(errstr)),
	                 KREQ_OK);
	kreq__opened_t o;
	ck_assert_int_eq(kreq__envelope_open(kr, &lim, NOW + 86400000LL * 30, buf, len, &o, errstr,
	                                     sizeof(errstr)),
	                 KREQ_OK);
	ck_assert_int_eq(o.kind, KREQ__KIND_ATTEMPT);
	ck_assert_str_eq(o.key_id, "k1");
	const Kreq__Attempt *g = o.u.attempt;
	ck_assert_mem_eq(g->idempotency_key.data, corr, 16);
	ck_assert_str_eq(g->request_key_id, "k1");
	ck_assert_uint_eq(g->number, 3);
	ck_assert_str_eq(g->worker, "kreqd-a");
	ck_assert_int_eq(g->started_at_ms, NOW - 86400000);
	ck_assert_int_eq(g->ended_at_ms, 0);
	ck_assert_int_eq(g->request_offset, 41);
	ck_assert_int_eq(g->request_partition, 2);
	ck_assert(g->instance == 0xfedcba9876543210ULL);
	kreq__opened_clear(&o);
	/* every single-byte change is refused */
	for (size_t i = 0; i < len; i++) {
		buf[i] ^= 0x01;
		ck_assert_int_ne(open_at(kr, NOW, buf, len), KREQ_OK);
		buf[i] ^= 0x01;
	}
	free(buf);
	kreq_keyring_release(kr);
}
END_TEST

START_TEST(test_roundtrip_dead_letter)
{
	kreq_keyring_t *kr = keyring_of(types[_i]);
	Kreq__Request r = request();
	uint8_t *req, *buf;
	size_t req_len, len;
	ck_assert_int_eq(seal_request(kr, &r, &req, &req_len), KREQ_OK);
	Kreq__Attempt at[3];
	Kreq__Attempt *ap[3];
	for (int i = 0; i < 3; i++) {
		at[i] = attempt_of((uint32_t)i + 1, NOW - 3000 + i * 1000, 0);
		ap[i] = &at[i];
	}
	Kreq__DeadLetter d = KREQ__DEAD_LETTER__INIT;
	d.request = (ProtobufCBinaryData){req_len, req};
	d.request_topic = "kreq.echo.requests";
	d.request_partition = 2;
	d.request_offset = 41;
	d.request_key_id = "k1";
	d.idempotency_key = (ProtobufCBinaryData){16, corr};
	d.correlation_id = (ProtobufCBinaryData){16, corr};
	d.method = "echo";
	d.status = 10;
	d.reason = "the handler started 3 times without finishing";
	d.attempts = ap;
	d.n_attempts = 3;
	d.dead_at_ms = NOW;
	d.worker = "kreqd-b";
	ck_assert_int_eq(kreq__envelope_seal(kr, &lim, KREQ__KIND_DEAD, &d.base, &buf, &len, errstr,
	                                     sizeof(errstr)),
	                 KREQ_OK);
	kreq__opened_t o;
	ck_assert_int_eq(kreq__envelope_open(kr, &lim, NOW + 86400000LL * 365, buf, len, &o, errstr,
	                                     sizeof(errstr)),
	                 KREQ_OK);
	ck_assert_int_eq(o.kind, KREQ__KIND_DEAD);
	const Kreq__DeadLetter *g = o.u.dead;
	ck_assert_uint_eq(g->request.len, req_len);
	ck_assert_mem_eq(g->request.data, req, req_len);
	ck_assert_str_eq(g->request_topic, "kreq.echo.requests");
	ck_assert_int_eq(g->request_partition, 2);
	ck_assert_int_eq(g->request_offset, 41);
	ck_assert_str_eq(g->request_key_id, "k1");
	ck_assert_mem_eq(g->idempotency_key.data, corr, 16);
	ck_assert_mem_eq(g->correlation_id.data, corr, 16);
	ck_assert_str_eq(g->method, "echo");
	ck_assert_int_eq(g->status, 10);
	ck_assert_str_eq(g->reason, d.reason);
	ck_assert_uint_eq(g->n_attempts, 3);
	for (int i = 0; i < 3; i++) {
		ck_assert_uint_eq(g->attempts[i]->number, (uint32_t)i + 1);
		ck_assert_int_eq(g->attempts[i]->started_at_ms, NOW - 3000 + i * 1000);
	}
	ck_assert_int_eq(g->dead_at_ms, NOW);
	ck_assert_str_eq(g->worker, "kreqd-b");
	/* the request inside still opens as itself */
	kreq__opened_t q;
	ck_assert_int_eq(kreq__envelope_open(kr, &lim, NOW, g->request.data, g->request.len, &q,
	                                     errstr, sizeof(errstr)),
	                 KREQ_OK);
	ck_assert_int_eq(q.kind, KREQ__KIND_REQUEST);
	kreq__opened_clear(&q);
	kreq__opened_clear(&o);
	/* tampering anywhere is refused (stride keeps the test quick) */
	for (size_t i = 0; i < len; i += 7) {
		buf[i] ^= 0x20;
		ck_assert_int_ne(open_at(kr, NOW, buf, len), KREQ_OK);
		buf[i] ^= 0x20;
	}
	/* a DeadLetter signed by a key the reader does not hold */
	kreq_keyring_t *other = keyring_of(KREQ_KEY_HMAC_SHA256);
	ck_assert_int_eq(open_at(other, NOW, buf, len), KREQ_EBADSIG);
	kreq_keyring_release(other);
	free(buf);
	/* a DeadLetter may hold a request of envelope.max.bytes */
	uint8_t *big = calloc(1, lim.envelope_max);
	memcpy(big, req, req_len);
	d.request = (ProtobufCBinaryData){lim.envelope_max, big};
	ck_assert_int_eq(kreq__envelope_seal(kr, &lim, KREQ__KIND_DEAD, &d.base, &buf, &len, errstr,
	                                     sizeof(errstr)),
	                 KREQ_OK);
	ck_assert_uint_gt(len, lim.envelope_max);
	ck_assert_int_eq(open_at(kr, NOW, buf, len), KREQ_OK);
	free(buf);
	free(big);
	free(req);
	kreq_keyring_release(kr);
}
END_TEST

/* Invalid fields are refused when sealing, with errstr naming them; a
 * body of one kind signed as the other is refused when opening. */
START_TEST(test_dead_and_attempt_validated)
{
	kreq_keyring_t *kr = keyring_of(KREQ_KEY_HMAC_SHA256);
	uint8_t *buf = NULL;
	size_t len;
	Kreq__Attempt a = attempt_of(0, NOW, 0);
	ck_assert_int_eq(kreq__envelope_seal(kr, &lim, KREQ__KIND_ATTEMPT, &a.base, &buf, &len,
	                                     errstr, sizeof(errstr)),
	                 KREQ_EMALFORMED);
	ck_assert_ptr_nonnull(strstr(errstr, "number"));
	a = attempt_of(1, NOW, NOW - 1);
	ck_assert_int_eq(kreq__envelope_seal(kr, &lim, KREQ__KIND_ATTEMPT, &a.base, &buf, &len,
	                                     errstr, sizeof(errstr)),
	                 KREQ_EMALFORMED);
	ck_assert_ptr_nonnull(strstr(errstr, "ended_at_ms"));
	a = attempt_of(1, NOW, 0);
	a.request_key_id = "bad key";
	ck_assert_int_eq(kreq__envelope_seal(kr, &lim, KREQ__KIND_ATTEMPT, &a.base, &buf, &len,
	                                     errstr, sizeof(errstr)),
	                 KREQ_EMALFORMED);
	ck_assert_ptr_nonnull(strstr(errstr, "request_key_id"));
	/* a DeadLetter with no request, or more than 32 attempts */
	Kreq__DeadLetter d = KREQ__DEAD_LETTER__INIT;
	d.request_topic = "kreq.echo.requests";
	d.request_key_id = "k1";
	d.idempotency_key = (ProtobufCBinaryData){16, corr};
	d.correlation_id = (ProtobufCBinaryData){16, corr};
	d.method = "echo";
	d.status = 10;
	d.dead_at_ms = NOW;
	ck_assert_int_eq(kreq__envelope_seal(kr, &lim, KREQ__KIND_DEAD, &d.base, &buf, &len, errstr,
	                                     sizeof(errstr)),
	                 KREQ_EMALFORMED);
	ck_assert_ptr_nonnull(strstr(errstr, "request"));
	d.request = (ProtobufCBinaryData){4, (uint8_t *)"abcd"};
	Kreq__Attempt many[KREQ__ATTEMPTS_MAX + 1], *mp[KREQ__ATTEMPTS_MAX + 1];
	for (int i = 0; i <= KREQ__ATTEMPTS_MAX; i++) {
		many[i] = attempt_of((uint32_t)i + 1, NOW, 0);
		mp[i] = &many[i];
	}
	d.attempts = mp;
	d.n_attempts = KREQ__ATTEMPTS_MAX + 1;
	ck_assert_int_eq(kreq__envelope_seal(kr, &lim, KREQ__KIND_DEAD, &d.base, &buf, &len, errstr,
	                                     sizeof(errstr)),
	                 KREQ_EMALFORMED);
	ck_assert_ptr_nonnull(strstr(errstr, "32 attempts"));
	d.n_attempts = KREQ__ATTEMPTS_MAX;
	ck_assert_int_eq(kreq__envelope_seal(kr, &lim, KREQ__KIND_DEAD, &d.base, &buf, &len, errstr,
	                                     sizeof(errstr)),
	                 KREQ_OK);
	free(buf);
	/* a nested attempt is validated too */
	many[5].started_at_ms = 0;
	ck_assert_int_eq(kreq__envelope_seal(kr, &lim, KREQ__KIND_DEAD, &d.base, &buf, &len, errstr,
	                                     sizeof(errstr)),
	                 KREQ_EMALFORMED);
	ck_assert_ptr_nonnull(strstr(errstr, "started_at_ms"));
	/* an Attempt body signed as a DeadLetter, and as a Result */
	a = attempt_of(1, NOW, 0);
	size_t blen = protobuf_c_message_get_packed_size(&a.base);
	uint8_t body[1024];
	protobuf_c_message_pack(&a.base, body);
	seal_body(kr, 2, KREQ__KIND_DEAD, body, blen, &buf, &len);
	ck_assert_int_ne(open_at(kr, NOW, buf, len), KREQ_OK);
	free(buf);
	seal_body(kr, 2, KREQ__KIND_ATTEMPT, body, blen, &buf, &len);
	ck_assert_int_eq(open_at(kr, NOW, buf, len), KREQ_OK);
	free(buf);
	/* version 1 is for Results only */
	seal_body(kr, 1, KREQ__KIND_ATTEMPT, body, blen, &buf, &len);
	ck_assert_int_eq(open_at(kr, NOW, buf, len), KREQ_EVERSION);
	free(buf);
	kreq_keyring_release(kr);
}
END_TEST

START_TEST(test_hmac_rfc4231)
{
	/* RFC 4231 test case 2 (a key shorter than the block) */
	static const uint8_t want[32] = {0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e,
	                                 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95, 0x75, 0xc7,
	                                 0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83,
	                                 0x9d, 0xec, 0x58, 0xb9, 0x64, 0xec, 0x38, 0x43};
	kreq__hmac_key_t hk;
	uint8_t mac[32];
	kreq__hmac_key_init(&hk, (const uint8_t *)"Jefe", 4);
	kreq__hmac(&hk, "what do ya ", 11, "want for nothing?", 17, mac);
	ck_assert_mem_eq(mac, want, 32);
	kreq__hmac(&hk, "what do ya want for nothing?", 28, NULL, 0, mac);
	ck_assert_mem_eq(mac, want, 32);
	mac[0] ^= 1; /* the check itself can fail */
	ck_assert_int_ne(memcmp(mac, want, 32), 0);
}
END_TEST

/* Every length across several block boundaries, split at every third
 * byte, with random 32-byte keys: the same bytes as libsodium's HMAC and
 * SHA-256. */
START_TEST(test_hmac_matches_libsodium)
{
	uint8_t msg[300], key[32], a[32], b[32];
	randombytes_buf(msg, sizeof(msg));
	for (int round = 0; round < 4; round++) {
		randombytes_buf(key, sizeof(key));
		kreq__hmac_key_t hk;
		kreq__hmac_key_init(&hk, key, sizeof(key));
		for (size_t len = 0; len <= sizeof(msg); len++) {
			crypto_auth_hmacsha256_state ref;
			crypto_auth_hmacsha256_init(&ref, key, sizeof(key));
			crypto_auth_hmacsha256_update(&ref, msg, len);
			crypto_auth_hmacsha256_final(&ref, a);
			for (size_t cut = 0; cut <= len; cut += 3) {
				kreq__hmac(&hk, msg, cut, msg + cut, len - cut, b);
				ck_assert_msg(!memcmp(a, b, 32), "HMAC differs at len %zu cut %zu",
				              len, cut);
			}
			crypto_hash_sha256(a, msg, len);
			kreq__sha256_t st;
			kreq__sha256_init(&st);
			kreq__sha256_update(&st, msg, len / 2);
			kreq__sha256_update(&st, msg + len / 2, len - len / 2);
			kreq__sha256_final(&st, b);
			ck_assert_msg(!memcmp(a, b, 32), "SHA-256 differs at len %zu", len);
		}
	}
}
END_TEST

/* ---- docs/protocol.md test vectors -------------------------------------- */

#include "vectors.h"

START_TEST(test_protocol_doc_vectors)
{
	kreq_test_check_vectors(KREQ_SOURCE_DIR "/docs/protocol.md");
}
END_TEST

int main(void)
{
	if (getenv("KREQ_PRINT_VECTORS")) {
		kreq_test_vectors_write(stdout);
		return 0;
	}
	Suite *s = suite_create("envelope");
	TCase *tc = tcase_create("envelope");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, test_roundtrip_request, 0, 2);
	tcase_add_test(tc, test_roundtrip_arena_overflow);
	tcase_add_loop_test(tc, test_roundtrip_reply_and_cancel, 0, 2);
	tcase_add_loop_test(tc, test_every_single_byte_tamper_rejected, 0, 2);
	tcase_add_loop_test(tc, test_tampered_body_is_badsig, 0, 2);
	tcase_add_loop_test(tc, test_wrong_unknown_and_rotated_keys, 0, 2);
	tcase_add_test(tc, test_ed25519_public_key_verifies);
	tcase_add_loop_test(tc, test_expired_and_future, 0, 2);
	tcase_add_loop_test(tc, test_truncated, 0, 2);
	tcase_add_loop_test(tc, test_oversize, 0, 2);
	tcase_add_loop_test(tc, test_random_garbage, 0, 2);
	tcase_add_test(tc, test_version_and_kind);
	tcase_add_test(tc, test_v1_result_accepted);
	tcase_add_test(tc, test_envelope_strict);
	tcase_add_test(tc, test_name_characters);
	tcase_add_test(tc, test_body_strict);
	tcase_add_test(tc, test_seal_validates_fields);
	tcase_add_test(tc, test_protocol_doc_vectors);
	tcase_add_test(tc, test_hmac_rfc4231);
	tcase_add_test(tc, test_hmac_matches_libsodium);
	tcase_add_loop_test(tc, test_roundtrip_attempt, 0, 2);
	tcase_add_loop_test(tc, test_roundtrip_dead_letter, 0, 2);
	tcase_add_test(tc, test_dead_and_attempt_validated);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
