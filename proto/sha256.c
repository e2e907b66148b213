/*
 * sha256.c — SHA-256 and HMAC-SHA-256 on OpenSSL's libcrypto.
 *
 * Design notes
 * - Why not libsodium (which kreq uses for everything else): its SHA-256 is
 *   portable C, ~15 cycles/byte. A call signs and verifies four or five
 *   envelopes of a few hundred bytes, and with libsodium those hashes were
 *   ~20% of the CPU a busy client+worker spent per call. libcrypto picks
 *   the SHA extensions / AVX2 code at run time (several times faster) and
 *   falls back to portable code on CPUs without them.
 * - Why the low-level SHA256_* functions (deprecated in OpenSSL 3 in favour
 *   of EVP): a keyed HMAC state must be copied per message, and an
 *   EVP_MD_CTX copy allocates and goes through the provider layer; a
 *   SHA256_CTX is plain memory. The key is expanded once (ipad/opad blocks
 *   absorbed) when it enters the keyring, so an HMAC costs the message
 *   blocks plus one outer block, and no allocation or lock.
 * - The output is the standard HMAC-SHA-256 (RFC 2104); tests/unit/
 *   test_envelope checks it against libsodium's implementation and the
 *   RFC 4231 vectors.
 */
#define OPENSSL_SUPPRESS_DEPRECATED /* SHA256_Init & co.: see above */
#include <openssl/sha.h>
#include <string.h>

#include <sodium.h>

#include "proto/sha256.h"

_Static_assert(sizeof(SHA256_CTX) <= sizeof(kreq__sha256_t), "SHA256_CTX does not fit");
_Static_assert(_Alignof(SHA256_CTX) <= _Alignof(kreq__sha256_t), "SHA256_CTX alignment");

#define CTX(st) ((SHA256_CTX *)(void *)(st)->opaque)

void kreq__sha256_init(kreq__sha256_t *st)
{
	SHA256_Init(CTX(st));
}

void kreq__sha256_update(kreq__sha256_t *st, const void *data, size_t len)
{
	if (len)
		SHA256_Update(CTX(st), data, len);
}

void kreq__sha256_final(kreq__sha256_t *st, uint8_t out[KREQ__SHA256_BYTES])
{
	SHA256_Final(out, CTX(st));
}

void kreq__hmac_key_init(kreq__hmac_key_t *hk, const uint8_t *key, size_t key_len)
{
	uint8_t pad[SHA256_CBLOCK];
	memset(pad, 0x36, sizeof(pad));
	for (size_t i = 0; i < key_len; i++)
		pad[i] ^= key[i];
	kreq__sha256_init(&hk->inner);
	kreq__sha256_update(&hk->inner, pad, sizeof(pad));
	for (size_t i = 0; i < sizeof(pad); i++)
		pad[i] ^= 0x36 ^ 0x5c;
	kreq__sha256_init(&hk->outer);
	kreq__sha256_update(&hk->outer, pad, sizeof(pad));
	sodium_memzero(pad, sizeof(pad));
}

void kreq__hmac(const kreq__hmac_key_t *hk, const void *a, size_t a_len, const void *b,
                size_t b_len, uint8_t out[KREQ__SHA256_BYTES])
{
	kreq__sha256_t st = hk->inner;
	uint8_t inner[KREQ__SHA256_BYTES];
	kreq__sha256_update(&st, a, a_len);
	kreq__sha256_update(&st, b, b_len);
	kreq__sha256_final(&st, inner);
	st = hk->outer;
	kreq__sha256_update(&st, inner, sizeof(inner));
	kreq__sha256_final(&st, out);
	sodium_memzero(&st, sizeof(st));
	sodium_memzero(inner, sizeof(inner));
}
