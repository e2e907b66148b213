/*
 * bench_envelope.c — what a 1 MiB record costs to decode before anything
 * about it is trusted: a normal record (a request with a ~1 MiB payload)
 * against the worst one found for each decoder (1 MiB of two-byte unknown
 * fields: 524,288 of them), with protobuf-c's generated envelope decoder
 * (what kreq used before: it keeps every unknown field, one allocation
 * each) as the baseline in the same run.
 *
 * Rows: the envelope decoder alone (protobuf-c vs kreq__envelope_parse),
 * then the whole receive path (kreq__envelope_open: decode, key, signature,
 * strict body check and body decode) for the normal record, the worst one,
 * and a 1 MiB record with a bad signature (the costliest thing an attacker
 * without a key can make it do: one HMAC over the body).
 *
 * Bytes and allocations are counted by wrapping malloc/calloc/realloc in
 * this binary (every library's calls go through them).
 *
 * Usage: bench_envelope [rounds]   (median of the rounds)
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "common/internal.h"
#include "proto/envelope.h"

/* ---- allocation counting ------------------------------------------------- */

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t m);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);

/* exported (the build hides symbols by default) so that shared libraries'
 * calls, protobuf-c's included, come here too */
#define EXPORT __attribute__((visibility("default")))

static bool counting;
static uint64_t alloc_bytes, alloc_count;

static void count(size_t n)
{
	if (counting)
		alloc_bytes += n, alloc_count++;
}

EXPORT void *malloc(size_t n)
{
	count(n);
	return __libc_malloc(n);
}

EXPORT void *calloc(size_t n, size_t m)
{
	count(n * m);
	return __libc_calloc(n, m);
}

EXPORT void *realloc(void *p, size_t n)
{
	count(n);
	return __libc_realloc(p, n);
}

EXPORT void free(void *p)
{
	__libc_free(p);
}

/* ---- inputs ----------------------------------------------------------------- */

#define MIB (1 << 20)

static const kreq__limits_t lim = {MIB, MIB, 30000};
static kreq_keyring_t *kr;
static uint8_t *normal, *worst, *badsig;
static size_t normal_len, worst_len, badsig_len;
static int64_t issued;

static void make_inputs(void)
{
	kr = kreq_keyring_new();
	uint8_t key[32], corr[16];
	randombytes_buf(key, sizeof(key));
	randombytes_buf(corr, sizeof(corr));
	if (kreq_keyring_add(kr, "bench", KREQ_KEY_HMAC_SHA256, key, 32, NULL, 0) ||
	    kreq_keyring_set_signing_key(kr, "bench"))
		abort();
	size_t plen = MIB - 256; /* the envelope comes out just under 1 MiB */
	uint8_t *payload = malloc(plen);
	randombytes_buf(payload, plen);
	Kreq__Request r = KREQ__REQUEST__INIT;
	r.correlation_id = (ProtobufCBinaryData){16, corr};
	r.idempotency_key = (ProtobufCBinaryData){16, corr};
	r.method = "bench.echo";
	r.service = "bench";
	r.payload = (ProtobufCBinaryData){plen, payload};
	r.reply_topic = "kreq.reply.bench";
	r.issued_at_ms = issued = kreq__now_ms();
	r.deadline_ms = issued + 3600000;
	r.attempt = 1;
	r.client_id = "bench";
	if (kreq__envelope_seal(kr, &lim, KREQ__KIND_REQUEST, &r.base, &normal, &normal_len, NULL,
	                        0))
		abort();
	free(payload);
	worst_len = normal_len & ~(size_t)1;
	worst = malloc(worst_len);
	for (size_t i = 0; i < worst_len; i += 2)
		worst[i] = 0x30, worst[i + 1] = 0x00; /* field 6, varint 0 */
	badsig = malloc(badsig_len = normal_len);
	memcpy(badsig, normal, normal_len);
	badsig[normal_len - 1] ^= 1; /* the signature is the last field */
}

/* ---- the operations ------------------------------------------------------------ */

typedef int(op_fn)(const uint8_t *buf, size_t len);

static int old_decode(const uint8_t *buf, size_t len)
{
	Kreq__Envelope *e = kreq__envelope__unpack(NULL, len, buf);
	int ok = e != NULL;
	if (e)
		kreq__envelope__free_unpacked(e, NULL);
	return ok;
}

static int new_decode(const uint8_t *buf, size_t len)
{
	kreq__env_view_t v;
	return kreq__envelope_parse(buf, len, &v, NULL, 0) == KREQ_OK;
}

static int new_open(const uint8_t *buf, size_t len)
{
	kreq__opened_t o;
	int err = kreq__envelope_open(kr, &lim, issued, buf, len, &o, NULL, 0);
	kreq__opened_clear(&o);
	return err == KREQ_OK;
}

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

static void row(const char *record, const char *decoder, op_fn *op, const uint8_t *buf, size_t len,
                int rounds, double *ns_out)
{
	int64_t *t = malloc(sizeof(*t) * (size_t)rounds);
	int ok = 0;
	for (int i = 0; i < rounds; i++) {
		alloc_bytes = alloc_count = 0;
		counting = true;
		int64_t t0 = now_ns();
		ok = op(buf, len);
		t[i] = now_ns() - t0;
		counting = false;
	}
	qsort(t, (size_t)rounds, sizeof(*t), cmp64);
	printf("| %-34s | %-30s | %8s | %12.0f | %14llu | %9llu |\n", record, decoder,
	       ok ? "accepted" : "refused", (double)t[rounds / 2], (unsigned long long)alloc_bytes,
	       (unsigned long long)alloc_count);
	if (ns_out)
		*ns_out = (double)t[rounds / 2];
	free(t);
}

int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : 31;
	if (rounds < 1 || sodium_init() < 0)
		return 2;
	make_inputs();
	printf("records: normal %zu bytes (a request, 1 MiB - 256 payload), worst %zu bytes "
	       "(two-byte unknown fields), median of %d rounds\n\n",
	       normal_len, worst_len, rounds);
	printf("| %-34s | %-30s | %-8s | %12s | %14s | %9s |\n", "record", "decoder", "result",
	       "ns", "bytes alloc'd", "allocs");
	printf("|%s|%s|%s|%s|%s|%s|\n", "------------------------------------",
	       "--------------------------------", "----------",
	       "-------------:", "---------------:", "----------:");
	double on, ow, nn, nw, fn, fw, fb;
	row("normal 1 MiB", "protobuf-c (old, baseline)", old_decode, normal, normal_len, rounds,
	    &on);
	row("worst 1 MiB (unknown fields)", "protobuf-c (old, baseline)", old_decode, worst,
	    worst_len, rounds, &ow);
	row("normal 1 MiB", "kreq__envelope_parse", new_decode, normal, normal_len, rounds, &nn);
	row("worst 1 MiB (unknown fields)", "kreq__envelope_parse", new_decode, worst, worst_len,
	    rounds, &nw);
	row("normal 1 MiB", "kreq__envelope_open (all)", new_open, normal, normal_len, rounds, &fn);
	row("worst 1 MiB (unknown fields)", "kreq__envelope_open (all)", new_open, worst, worst_len,
	    rounds, &fw);
	row("1 MiB with a bad signature", "kreq__envelope_open (all)", new_open, badsig, badsig_len,
	    rounds, &fb);
	printf("\nworst / normal: protobuf-c %.1fx; kreq__envelope_open %.3fx (bad signature "
	       "%.2fx)\n",
	       ow / on, fw / fn, fb / fn);
	free(normal);
	free(worst);
	free(badsig);
	kreq_keyring_release(kr);
	return 0;
}
