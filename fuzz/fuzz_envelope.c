/*
 * fuzz_envelope.c — libFuzzer target for decode+verify.
 *
 * The first input byte selects what is fuzzed:
 *   even: the rest is an envelope from the wire, opened as a receiver would
 *         (the unauthenticated path: size check, envelope decoder, key
 *         lookup, signature check);
 *   odd:  the rest is a message body, signed with a key the receiver trusts
 *         and then opened, so the fuzzer also reaches the body decoder and
 *         the field validation (input from a peer that holds a valid key);
 *         bits 1-3 pick the kind (1 Request .. 6 Attempt; 0 and 7 invalid),
 *         bit 4 signs it as protocol version 1 instead of 2.
 * Both must only ever return a kreq error code; crashes, leaks, undefined
 * behaviour and accepting a body that breaks the rules are bugs.
 * Every envelope also goes through the unverified decoder beside the
 * verified one (proto/unverified.h: `kreq pending` without a keyring, `kreq
 * tail`, `kreq dead`), with and without the clock, and its header peek; an
 * envelope the verified path accepts must peek as the same kind.
 * The keys are the docs/protocol.md test-vector keys, so the seed corpus
 * (fuzz/corpus/envelope, written by fuzz/make_corpus.py) holds envelopes
 * and bodies of every kind that verify.
 */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kreq/error.h"
#include "proto/envelope.h"
#include "proto/unverified.h"

static kreq_keyring_t *kr;
static bool verbose; /* KREQ_FUZZ_VERBOSE: print each verdict (checking seeds) */
static const kreq__limits_t lim = {
    .envelope_max = 1 << 16, .payload_max = 1 << 15, .skew_ms = 30000};
#define NOW 1767225570000LL

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	uint8_t hk[32], seed[32], pk[32], sk[64];
	for (int i = 0; i < 32; i++) {
		hk[i] = (uint8_t)i;
		seed[i] = (uint8_t)(0x20 + i);
	}
	crypto_sign_seed_keypair(pk, sk, seed);
	verbose = getenv("KREQ_FUZZ_VERBOSE") != NULL;
	kr = kreq_keyring_new();
	if (!kr || kreq_keyring_add(kr, "test-hmac-1", KREQ_KEY_HMAC_SHA256, hk, 32, NULL, 0) ||
	    kreq_keyring_add(kr, "test-ed25519-1", KREQ_KEY_ED25519, sk, 64, NULL, 0) ||
	    kreq_keyring_set_signing_key(kr, "test-hmac-1"))
		abort();
	return 0;
}

/* The unverified decoder at now_ms (0: no clock): only kreq error codes,
 * a message exactly when KREQ_OK. */
static void open_unverified_and_check(const uint8_t *buf, size_t len, int64_t now_ms)
{
	kreq__opened_t o;
	int err = kreq__envelope_open_unverified(&lim, now_ms, buf, len, &o);
	if (verbose)
		fprintf(stderr, "unverified%s: %s\n", now_ms ? "" : " (no clock)",
		        kreq_err_name(err));
	if (err > 0 || (err == KREQ_OK) != (o.u.msg != NULL))
		abort();
	if (err == KREQ_OK)
		kreq__opened_clear(&o);
}

static void open_and_check(const uint8_t *buf, size_t len)
{
	kreq__opened_t o;
	char why[256] = "";
	int err = kreq__envelope_open(kr, &lim, NOW, buf, len, &o, why, sizeof(why));
	if (verbose)
		fprintf(stderr, "verdict: %s %s\n", kreq_err_name(err), why);
	if (err > 0 || (err == KREQ_OK) != (o.u.msg != NULL))
		abort();
	uint32_t kind = UINT32_MAX;
	char key_id[KREQ_KEY_ID_MAX + 1];
	bool peeked = kreq__envelope_peek(&lim, buf, len, &kind, key_id);
	if (strlen(key_id) > KREQ_KEY_ID_MAX)
		abort();
	if (err == KREQ_OK) {
		if (!peeked || kind != (uint32_t)o.kind || strcmp(key_id, o.key_id) != 0)
			abort();
		kreq__opened_clear(&o);
	}
	open_unverified_and_check(buf, len, NOW);
	open_unverified_and_check(buf, len, 0);
}

/* Signs data as a body of the given kind and opens the resulting envelope. */
static void sign_and_open(uint32_t version, uint32_t kind, const uint8_t *body, size_t len)
{
	const kreq__key_t *k = kreq__keyring_signer(kr);
	uint8_t sig[64], hdr[KREQ__SIG_HDR_MAX];
	size_t hlen = kreq__sig_header(hdr, version, k->id, k->id_len, kind, len);
	kreq__hmac(k->hmac, hdr, hlen, body, len, sig);
	size_t slen = 32;
	Kreq__Envelope env = KREQ__ENVELOPE__INIT;
	env.version = version;
	env.key_id = (char *)k->id;
	env.kind = kind;
	env.body = (ProtobufCBinaryData){len, (uint8_t *)body};
	env.signature = (ProtobufCBinaryData){slen, sig};
	size_t elen = kreq__envelope__get_packed_size(&env);
	uint8_t *buf = malloc(elen);
	kreq__envelope__pack(&env, buf);
	open_and_check(buf, elen);
	free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	if (data[0] & 1)
		sign_and_open(data[0] & 0x10 ? 1 : KREQ__PROTO_VERSION, (data[0] >> 1) & 7,
		              data + 1, size - 1);
	else
		open_and_check(data + 1, size - 1);
	return 0;
}
