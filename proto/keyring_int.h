/* keyring_int.h — what the envelope codec needs from the keyring. */
#ifndef KREQ_KEYRING_INT_H
#define KREQ_KEYRING_INT_H

#include <stdbool.h>

#include "kreq/keyring.h"
#include "proto/sha256.h"

typedef struct kreq__key {
	char id[KREQ_KEY_ID_MAX + 1];
	uint8_t id_len;
	kreq_key_type_t type;
	uint8_t *material;      /* sodium_malloc'd: HMAC secret, Ed25519 sk, or pk */
	const uint8_t *pk;      /* Ed25519 public key (inside material) */
	kreq__hmac_key_t *hmac; /* HMAC keys: expanded key, sodium_malloc'd */
	char *methods;          /* NULL: any method; else ",m1,m2," */
} kreq__key_t;

/* Key by id (id_len bytes, not necessarily NUL-terminated); NULL if absent. */
const kreq__key_t *kreq__keyring_find(const kreq_keyring_t *kr, const char *id, size_t id_len);

/* The signing key, or NULL. */
const kreq__key_t *kreq__keyring_signer(const kreq_keyring_t *kr);

/* Moves every key of src (and its signing key, if set) into dst. All or
 * nothing: KREQ_EEXIST naming the id if any id is already in dst,
 * KREQ_EOVERSIZE if dst would overflow. src is left empty. */
int kreq__keyring_merge(kreq_keyring_t *dst, kreq_keyring_t *src, char *errstr, size_t errstr_size);

/* Parses the key file text (len bytes; it ends at its first NUL, as a file
 * read by kreq_keyring_load_file does) as if read from the file name, with
 * private_mode saying whether that file is private to its owner, and merges
 * it into kr: all or nothing, as kreq_keyring_load_file. For the fuzzer. */
int kreq__keyfile_parse(kreq_keyring_t *kr, const char *name, const char *text, size_t len,
                        bool private_mode, char *errstr, size_t errstr_size);

/* true if id is a valid key id (length and alphabet). */
bool kreq__key_id_valid(const char *id, size_t len);

#endif
