/*
 * bench_sign.c — seal (encode+sign) and open (decode+verify) of a request
 * with a 256-byte payload, per key type, beside the bare libsodium primitive
 * over the same signed bytes. For Ed25519 that is the floor kreq's framing
 * adds to; for HMAC-SHA-256 kreq uses libcrypto's SHA-256 with the key
 * expanded once (proto/sha256.c), so seal and open come out below
 * libsodium's HMAC alone.
 *
 * Usage: bench_sign [iterations-per-round] [rounds]
 * Prints the median ns/op over the rounds and the ratio to the baseline.
 */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/internal.h"
#include "proto/envelope.h"

typedef struct bctx {
	kreq_keyring_t *kr;
	const kreq__key_t *key;
	Kreq__Request req;
	uint8_t *env;
	size_t env_len;
	uint8_t msg[512]; /* prefix || body, for the raw primitive */
	size_t msg_len;
	uint8_t sig[64];
} bctx_t;

static const kreq__limits_t lim = {1 << 20, 1 << 20, 30000};
static volatile int sink;

static uint8_t payload[256], corr[16];

static void setup(bctx_t *b, kreq_key_type_t type)
{
	memset(b, 0, sizeof(*b));
	b->kr = kreq_keyring_new();
	uint8_t key[64], pk[32];
	size_t len = 32;
	if (type == KREQ_KEY_HMAC_SHA256)
		randombytes_buf(key, 32);
	else
		crypto_sign_keypair(pk, key), len = 64;
	if (kreq_keyring_add(b->kr, "bench", type, key, len, NULL, 0) ||
	    kreq_keyring_set_signing_key(b->kr, "bench"))
		abort();
	b->key = kreq__keyring_signer(b->kr);
	Kreq__Request r = KREQ__REQUEST__INIT;
	randombytes_buf(corr, sizeof(corr));
	r.correlation_id = (ProtobufCBinaryData){16, corr};
	r.idempotency_key = (ProtobufCBinaryData){16, corr};
	r.method = "bench.echo";
	r.service = "bench";
	r.payload = (ProtobufCBinaryData){sizeof(payload), payload};
	r.reply_topic = "kreq.reply.bench";
	r.issued_at_ms = kreq__now_ms();
	r.deadline_ms = r.issued_at_ms + 3600000;
	r.attempt = 1;
	r.client_id = "bench";
	b->req = r;
	if (kreq__envelope_seal(b->kr, &lim, KREQ__KIND_REQUEST, &b->req.base, &b->env, &b->env_len,
	                        NULL, 0))
		abort();
	size_t blen = protobuf_c_message_get_packed_size(&b->req.base);
	uint8_t body[512];
	protobuf_c_message_pack(&b->req.base, body);
	size_t hl =
	    kreq__sig_header(b->msg, KREQ__PROTO_VERSION, "bench", 5, KREQ__KIND_REQUEST, blen);
	memcpy(b->msg + hl, body, blen);
	b->msg_len = hl + blen;
	kreq__sign(b->key, KREQ__KIND_REQUEST, body, blen, b->sig);
}

static void teardown(bctx_t *b)
{
	free(b->env);
	kreq_keyring_release(b->kr);
}

static void op_seal(bctx_t *b)
{
	uint8_t *out;
	size_t len;
	if (kreq__envelope_seal(b->kr, &lim, KREQ__KIND_REQUEST, &b->req.base, &out, &len, NULL, 0))
		abort();
	sink += out[0];
	free(out);
}

static void op_open(bctx_t *b)
{
	kreq__opened_t o;
	if (kreq__envelope_open(b->kr, &lim, b->req.issued_at_ms, b->env, b->env_len, &o, NULL, 0))
		abort();
	sink += o.kind;
	kreq__opened_clear(&o);
}

static void op_raw_sign(bctx_t *b)
{
	uint8_t sig[64];
	if (b->key->type == KREQ_KEY_HMAC_SHA256)
		crypto_auth_hmacsha256(sig, b->msg, b->msg_len, b->key->material);
	else
		crypto_sign_detached(sig, NULL, b->msg, b->msg_len, b->key->material);
	sink += sig[0];
}

static void op_raw_verify(bctx_t *b)
{
	int rc;
	if (b->key->type == KREQ_KEY_HMAC_SHA256)
		rc = crypto_auth_hmacsha256_verify(b->sig, b->msg, b->msg_len, b->key->material);
	else
		rc = crypto_sign_verify_detached(b->sig, b->msg, b->msg_len, b->key->pk);
	if (rc)
		abort();
	sink += rc;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* Median over rounds of the mean ns/op within a round. */
static double measure(void (*op)(bctx_t *), bctx_t *b, int iters, int rounds)
{
	double *r = calloc((size_t)rounds, sizeof(double));
	for (int i = 0; i < iters / 10 + 1; i++) /* warm-up */
		op(b);
	for (int k = 0; k < rounds; k++) {
		int64_t t0 = kreq__mono_ns();
		for (int i = 0; i < iters; i++)
			op(b);
		r[k] = (double)(kreq__mono_ns() - t0) / iters;
	}
	qsort(r, (size_t)rounds, sizeof(double), cmp_double);
	double med = r[rounds / 2];
	free(r);
	return med;
}

int main(int argc, char **argv)
{
	int iters = argc > 1 ? atoi(argv[1]) : 20000;
	int rounds = argc > 2 ? atoi(argv[2]) : 11;
	if (iters < 1 || rounds < 1 || argc > 3) {
		fprintf(stderr, "usage: bench_sign [iterations-per-round] [rounds]\n");
		return 2;
	}
	if (sodium_init() < 0)
		return 1;
	printf("# sign+verify of a request with a %zu-byte payload; median of %d rounds x %d "
	       "ops\n",
	       sizeof(payload), rounds, iters);
	printf("%-10s %-24s %12s %-28s %12s %8s\n", "key", "kreq operation", "ns/op",
	       "baseline (same run)", "ns/op", "ratio");
	const kreq_key_type_t types[] = {KREQ_KEY_HMAC_SHA256, KREQ_KEY_ED25519};
	const char *names[] = {"hmac", "ed25519"};
	for (int t = 0; t < 2; t++) {
		bctx_t b;
		setup(&b, types[t]);
		double seal = measure(op_seal, &b, iters, rounds);
		double sign = measure(op_raw_sign, &b, iters, rounds);
		double open = measure(op_open, &b, iters, rounds);
		double verify = measure(op_raw_verify, &b, iters, rounds);
		printf("%-10s %-24s %12.0f %-28s %12.0f %7.2fx\n", names[t], "seal (encode+sign)",
		       seal, "libsodium sign only", sign, seal / sign);
		printf("%-10s %-24s %12.0f %-28s %12.0f %7.2fx\n", names[t], "open (decode+verify)",
		       open, "libsodium verify only", verify, open / verify);
		printf("%-10s envelope %zu bytes\n", names[t], b.env_len);
		teardown(&b);
	}
	return 0;
}
