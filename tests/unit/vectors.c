/*
 * vectors.c — fixed keys + a fixed request, and what kreq makes of them.
 *
 * The block generated here is pasted into docs/protocol.md between
 * <!-- test-vectors:begin --> and <!-- test-vectors:end -->; the test fails
 * if the doc and the code ever disagree. Regenerate with
 *   KREQ_PRINT_VECTORS=1 build/tests/unit/test_envelope
 */
#include <check.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "kreq/error.h"
#include "proto/envelope.h"
#include "vectors.h"

#define VEC_ISSUED   1767225570000LL /* 2025-12-31T23:59:30Z */
#define VEC_DEADLINE 1767225600000LL /* 2026-01-01T00:00:00Z */

/* Works inside a Check test (abort is reported as a failure) and in print
 * mode, where Check's asserts are not available. */
#define NEED(cond)                                                                                 \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #cond);                 \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static const kreq__limits_t vec_lim = {1 << 20, 1 << 20, 30000};

static void hexline(FILE *out, const char *name, const uint8_t *b, size_t n)
{
	fprintf(out, "%s: ", name);
	for (size_t i = 0; i < n; i++)
		fprintf(out, "%02x", b[i]);
	fputc('\n', out);
}

static Kreq__MetadataEntry vec_tp = KREQ__METADATA_ENTRY__INIT;
static Kreq__MetadataEntry *vec_md[1] = {&vec_tp};

static Kreq__Request vec_request(void)
{
	static uint8_t corr[16] = {0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
	                           0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff};
	Kreq__Request r = KREQ__REQUEST__INIT;
	r.correlation_id = (ProtobufCBinaryData){16, corr};
	r.idempotency_key = (ProtobufCBinaryData){8, (uint8_t *)"order-42"};
	r.method = "billing.charge";
	r.service = "billing";
	r.payload = (ProtobufCBinaryData){14, (uint8_t *)"{\"amount\":100}"};
	r.reply_topic = "kreq.reply.client-a";
	r.reply_partition = 0;
	r.deadline_ms = VEC_DEADLINE;
	r.issued_at_ms = VEC_ISSUED;
	r.attempt = 1;
	r.client_id = "client-a";
	vec_tp.key = "traceparent";
	vec_tp.value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
	r.metadata = vec_md;
	r.n_metadata = 1;
	return r;
}

/* The two vector keyrings: HMAC key 00..1f, Ed25519 seed 20..3f. */
static kreq_keyring_t *vec_keyring(int which, uint8_t *key_out, size_t *key_len)
{
	kreq_keyring_t *kr = kreq_keyring_new();
	uint8_t seed[32], pk[32], sk[64];
	for (int i = 0; i < 32; i++)
		seed[i] = (uint8_t)(which == 0 ? i : 0x20 + i);
	if (which == 0) {
		NEED(kreq_keyring_add(kr, "test-hmac-1", KREQ_KEY_HMAC_SHA256, seed, 32, NULL, 0) ==
		     KREQ_OK);
		NEED(kreq_keyring_set_signing_key(kr, "test-hmac-1") == KREQ_OK);
		memcpy(key_out, seed, 32);
		*key_len = 32;
	} else {
		crypto_sign_seed_keypair(pk, sk, seed);
		NEED(kreq_keyring_add(kr, "test-ed25519-1", KREQ_KEY_ED25519, sk, 64, NULL, 0) ==
		     KREQ_OK);
		NEED(kreq_keyring_set_signing_key(kr, "test-ed25519-1") == KREQ_OK);
		memcpy(key_out, seed, 32);
		memcpy(key_out + 32, pk, 32);
		*key_len = 64;
	}
	return kr;
}

static void write_vector(FILE *out, int which)
{
	uint8_t key[64];
	size_t key_len;
	kreq_keyring_t *kr = vec_keyring(which, key, &key_len);
	const kreq__key_t *k = kreq__keyring_signer(kr);
	Kreq__Request r = vec_request();
	size_t blen = protobuf_c_message_get_packed_size(&r.base);
	uint8_t body[1024], hdr[KREQ__SIG_HDR_MAX], sig[64];
	NEED(blen <= sizeof(body));
	protobuf_c_message_pack(&r.base, body);
	size_t hl =
	    kreq__sig_header(hdr, KREQ__PROTO_VERSION, k->id, k->id_len, KREQ__KIND_REQUEST, blen);
	size_t sl = kreq__sign(k, KREQ__KIND_REQUEST, body, blen, sig);
	uint8_t *env;
	size_t elen;
	NEED(kreq__envelope_seal(kr, &vec_lim, KREQ__KIND_REQUEST, &r.base, &env, &elen, NULL, 0) ==
	     KREQ_OK);
	fprintf(out, "vector: %s\n", which == 0 ? "request-hmac-sha256" : "request-ed25519");
	fprintf(out, "key-id: %s\n", k->id);
	if (which == 0) {
		hexline(out, "hmac-key", key, 32);
	} else {
		hexline(out, "ed25519-seed", key, 32);
		hexline(out, "ed25519-public-key", key + 32, 32);
	}
	hexline(out, "body", body, blen);
	hexline(out, "signed-prefix", hdr, hl);
	hexline(out, "signature", sig, sl);
	hexline(out, "envelope", env, elen);
	free(env);
	kreq_keyring_release(kr);
}

void kreq_test_vectors_write(FILE *out)
{
	write_vector(out, 0);
	fputc('\n', out);
	write_vector(out, 1);
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	ck_assert_msg(f != NULL, "cannot open %s", path);
	char *buf = NULL;
	size_t cap = 0, len = 0, n;
	do {
		if (len + 4096 + 1 > cap)
			buf = realloc(buf, cap = cap * 2 + 8192);
		n = fread(buf + len, 1, 4096, f);
		len += n;
	} while (n > 0);
	fclose(f);
	buf[len] = '\0';
	return buf;
}

/* Opens the envelope hex found after "envelope: " in a vector, with a
 * keyring made only from the doc's own key lines. */
static void verify_doc_envelope(const char *block, const char *vector, int which)
{
	const char *v = strstr(block, vector);
	ck_assert_ptr_nonnull(v);
	const char *e = strstr(v, "envelope: ");
	ck_assert_ptr_nonnull(e);
	e += strlen("envelope: ");
	size_t hexlen = strcspn(e, "\n");
	uint8_t *bin = malloc(hexlen / 2 + 1);
	size_t binlen;
	ck_assert_int_eq(sodium_hex2bin(bin, hexlen / 2 + 1, e, hexlen, NULL, &binlen, NULL), 0);
	uint8_t key[64];
	size_t key_len;
	kreq_keyring_t *kr = vec_keyring(which, key, &key_len);
	kreq__opened_t o;
	char err[256];
	ck_assert_msg(kreq__envelope_open(kr, &vec_lim, VEC_ISSUED, bin, binlen, &o, err,
	                                  sizeof(err)) == KREQ_OK,
	              "doc vector %s does not verify: %s", vector, err);
	ck_assert_str_eq(o.u.req->method, "billing.charge");
	kreq__opened_clear(&o);
	free(bin);
	kreq_keyring_release(kr);
}

void kreq_test_check_vectors(const char *doc_path)
{
	char *doc = slurp(doc_path);
	const char *b = strstr(doc, "<!-- test-vectors:begin -->");
	const char *e = strstr(doc, "<!-- test-vectors:end -->");
	ck_assert_msg(b && e && b < e, "%s has no test-vectors markers", doc_path);
	b = strstr(b, "```text\n");
	ck_assert_ptr_nonnull(b);
	b += strlen("```text\n");
	const char *fence = strstr(b, "```");
	ck_assert_msg(fence && fence < e, "test-vectors block not fenced");
	char *gen = NULL;
	size_t gen_len = 0;
	FILE *m = open_memstream(&gen, &gen_len);
	kreq_test_vectors_write(m);
	fclose(m);
	ck_assert_msg((size_t)(fence - b) == gen_len && memcmp(b, gen, gen_len) == 0,
	              "docs/protocol.md test vectors differ from what the code produces; "
	              "regenerate with KREQ_PRINT_VECTORS=1 build/tests/unit/test_envelope");
	verify_doc_envelope(b, "request-hmac-sha256", 0);
	verify_doc_envelope(b, "request-ed25519", 1);
	free(gen);
	free(doc);
}
