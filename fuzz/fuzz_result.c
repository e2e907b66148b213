/*
 * fuzz_result.c — libFuzzer target for signed Result bodies, as a worker
 * rebuilding its deduplication state takes them from a results topic.
 *
 * The input (after a selector byte: bit 0 signs as protocol version 1, which
 * Results may still carry) is a Result body; it is signed with the worker's
 * own key, so it passes the signature and reaches the strict body check,
 * protobuf-c, the field validation and then the dedup store, exactly as the
 * rebuild loads a record: key derivation, insert, lookup, expiry. Crashes,
 * leaks, undefined behaviour, an accepted Result that breaks section 4.4 of
 * docs/protocol.md, or one that cannot be found again are bugs. Seed corpus:
 * fuzz/corpus/result (fuzz/make_corpus.py).
 */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/worker/dedup.h"
#include "kreq/error.h"
#include "proto/envelope.h"

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
	uint8_t hk[32];
	for (int i = 0; i < 32; i++)
		hk[i] = (uint8_t)i;
	verbose = getenv("KREQ_FUZZ_VERBOSE") != NULL;
	kr = kreq_keyring_new();
	if (!kr || kreq_keyring_add(kr, "test-hmac-1", KREQ_KEY_HMAC_SHA256, hk, 32, NULL, 0) ||
	    kreq_keyring_set_signing_key(kr, "test-hmac-1"))
		abort();
	return 0;
}

/* The rebuild's load_result(), minus Kafka. */
static void load(const Kreq__Result *r)
{
	if (r->request_digest.len != 32 || r->idempotency_key.len == 0 ||
	    r->idempotency_key.len > KREQ__IDEM_KEY_MAX || r->deadline_ms <= NOW ||
	    strlen(r->error) > KREQ__ERROR_MAX || r->payload.len > lim.payload_max)
		abort(); /* validation let through what section 4.4 forbids */
	kreq__dedup_t dd;
	if (kreq__dedup_init(&dd))
		abort();
	uint8_t key[KREQ__DEDUP_KEY_MAX];
	size_t klen = kreq__dedup_key(key, r->request_key_id, r->idempotency_key.data,
	                              r->idempotency_key.len);
	if (kreq__dedup_set_done(&dd, NULL, key, klen, r->request_digest.data, r->status,
	                         r->payload.data, r->payload.len, r->error, r->deadline_ms) == 0) {
		kreq__dd_entry_t *e = kreq__dedup_find(&dd, key, klen);
		if (!e || e->state != KREQ__DD_DONE || e->len != r->payload.len ||
		    memcmp(e->digest, r->request_digest.data, 32))
			abort();
		kreq__dedup_expire(&dd, r->deadline_ms);
		if (kreq__dedup_find(&dd, key, klen))
			abort(); /* expired at its deadline */
	}
	kreq__dedup_clear(&dd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	const kreq__key_t *k = kreq__keyring_signer(kr);
	uint32_t version = data[0] & 1 ? KREQ__PROTO_RESULT_V1 : KREQ__PROTO_VERSION;
	const uint8_t *body = data + 1;
	size_t len = size - 1;
	uint8_t sig[32], hdr[KREQ__SIG_HDR_MAX];
	size_t hlen = kreq__sig_header(hdr, version, k->id, k->id_len, KREQ__KIND_RESULT, len);
	kreq__hmac(k->hmac, hdr, hlen, body, len, sig);
	Kreq__Envelope env = KREQ__ENVELOPE__INIT;
	env.version = version;
	env.key_id = (char *)k->id;
	env.kind = KREQ__KIND_RESULT;
	env.body = (ProtobufCBinaryData){len, (uint8_t *)body};
	env.signature = (ProtobufCBinaryData){sizeof(sig), sig};
	size_t elen = kreq__envelope__get_packed_size(&env);
	uint8_t *buf = malloc(elen);
	kreq__envelope__pack(&env, buf);
	kreq__opened_t o;
	char why[256] = "";
	int err = kreq__envelope_open(kr, &lim, NOW, buf, elen, &o, why, sizeof(why));
	free(buf);
	if (verbose)
		fprintf(stderr, "verdict: %s %s\n", kreq_err_name(err), why);
	if (err > 0 || (err == KREQ_OK) != (o.u.msg != NULL))
		abort();
	if (err == KREQ_OK) {
		if (o.kind != KREQ__KIND_RESULT)
			abort();
		load(o.u.result);
		kreq__opened_clear(&o);
	}
	return 0;
}
