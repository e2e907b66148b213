/* sha256.h — SHA-256 and keyed HMAC-SHA-256 for the envelope codec and the
 * worker's request digests (internal). */
#ifndef KREQ_SHA256_H
#define KREQ_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define KREQ__SHA256_BYTES 32

/* A streaming SHA-256 state; plain memory, copy it freely. */
typedef struct kreq__sha256 {
	uint64_t opaque[15]; /* holds OpenSSL's SHA256_CTX (112 bytes) */
} kreq__sha256_t;

void kreq__sha256_init(kreq__sha256_t *st);
void kreq__sha256_update(kreq__sha256_t *st, const void *data, size_t len);
void kreq__sha256_final(kreq__sha256_t *st, uint8_t out[KREQ__SHA256_BYTES]);

/* An HMAC-SHA-256 key expanded once: the hash states after absorbing
 * key^ipad and key^opad. As secret as the key itself (keep it in
 * sodium_malloc'd memory). */
typedef struct kreq__hmac_key {
	kreq__sha256_t inner, outer;
} kreq__hmac_key_t;

/* key_len <= 64 (kreq keys are 32 bytes). */
void kreq__hmac_key_init(kreq__hmac_key_t *hk, const uint8_t *key, size_t key_len);

/* HMAC over a || b (either may be empty); leaves no key-derived state on the
 * stack. Thread-safe: hk is only read. */
void kreq__hmac(const kreq__hmac_key_t *hk, const void *a, size_t a_len, const void *b,
                size_t b_len, uint8_t out[KREQ__SHA256_BYTES]);

#endif
