/*
 * kreq/keyring.h — signing keys, indexed by key id.
 *
 * A keyring maps key ids (1..64 characters from [A-Za-z0-9._-]) to keys:
 *   - HMAC-SHA-256 shared secrets (32 bytes): sign and verify;
 *   - Ed25519 secret keys (64-byte libsodium form, seed || public key): sign
 *     and verify;
 *   - Ed25519 public keys (32 bytes): verify only.
 * Several keys are valid at once, which is how keys rotate: add the new key,
 * make it the signing key, and remove the old one once nothing signed with
 * it can still be in flight. One key is the signing key used for outgoing
 * envelopes. A key may be restricted to a set of methods (the worker refuses
 * other methods signed with it).
 *
 * The key file format is specified in docs/protocol.md ("Key file"). Key
 * material is kept in libsodium guarded memory, wiped when freed, and never
 * written to logs or error messages.
 *
 * Threads and ownership: a keyring is reference counted. Build it (add,
 * remove, load, set signing key) from one thread before sharing it; once it
 * has been handed to a client or worker it must not be modified, and all
 * lookups are then safe from any thread. To change keys at run time (SIGHUP
 * reload), build a new keyring and hand it over; the old one is freed when its
 * last reference is released.
 */
#ifndef KREQ_KEYRING_H
#define KREQ_KEYRING_H

#include <stddef.h>
#include <stdint.h>

#include "kreq/common.h"

typedef struct kreq_keyring_s kreq_keyring_t;

typedef enum kreq_key_type {
	KREQ_KEY_HMAC_SHA256 = 1,    /**< 32-byte shared secret */
	KREQ_KEY_ED25519 = 2,        /**< Ed25519 secret key: signs and verifies */
	KREQ_KEY_ED25519_PUBLIC = 3, /**< Ed25519 public key: verifies only */
} kreq_key_type_t;

#define KREQ_KEY_ID_MAX       64 /**< longest key id, in characters */
#define KREQ_HMAC_KEY_BYTES   32
#define KREQ_ED25519_SK_BYTES 64
#define KREQ_ED25519_PK_BYTES 32
#define KREQ_KEYRING_MAX_KEYS 256

/** New, empty keyring with one reference. NULL if out of memory (or if
 *  libsodium cannot be initialised). */
KREQ_API kreq_keyring_t *kreq_keyring_new(void);

/** Takes one more reference; returns kr. Any thread. */
KREQ_API kreq_keyring_t *kreq_keyring_retain(kreq_keyring_t *kr);

/** Drops one reference; the last one wipes and frees the keyring. NULL is a
 *  no-op. Any thread. */
KREQ_API void kreq_keyring_release(kreq_keyring_t *kr);

/** Adds a key. For KREQ_KEY_HMAC_SHA256 key_len must be 32, for
 *  KREQ_KEY_ED25519 64 (libsodium secret key; its public half must match its
 *  seed), for KREQ_KEY_ED25519_PUBLIC 32. The bytes are copied.
 *  Returns KREQ_OK, KREQ_EINVAL (bad id, type, length or inconsistent key),
 *  KREQ_EEXIST (id already present), KREQ_EOVERSIZE (keyring full) or
 *  KREQ_ENOMEM. errstr never contains key material. */
KREQ_API int kreq_keyring_add(kreq_keyring_t *kr, const char *key_id, kreq_key_type_t type,
                              const uint8_t *key, size_t key_len, char *errstr, size_t errstr_size);

/** Removes (rotates out) a key; envelopes signed with it no longer verify.
 *  If it was the signing key there is no signing key afterwards.
 *  Returns KREQ_OK, KREQ_EINVAL or KREQ_ENOENT. */
KREQ_API int kreq_keyring_remove(kreq_keyring_t *kr, const char *key_id);

/** Makes key_id the signing key. Returns KREQ_OK, KREQ_EINVAL, KREQ_ENOENT
 *  or KREQ_ENOSIGNKEY (an Ed25519 public key cannot sign). */
KREQ_API int kreq_keyring_set_signing_key(kreq_keyring_t *kr, const char *key_id);

/** Id of the signing key, or NULL if none is set. Valid while kr lives and
 *  is not modified. */
KREQ_API const char *kreq_keyring_signing_key(const kreq_keyring_t *kr);

/** Restricts key_id to a comma-separated list of method names ("" or NULL
 *  lifts the restriction). Returns KREQ_OK, KREQ_EINVAL, KREQ_ENOENT or
 *  KREQ_ENOMEM. */
KREQ_API int kreq_keyring_set_methods(kreq_keyring_t *kr, const char *key_id, const char *methods);

/** KREQ_OK if key_id exists and may be used for method; KREQ_ENOENT if the key
 *  is unknown; KREQ_EDENIED if the key is restricted to other methods. */
KREQ_API int kreq_keyring_check_method(const kreq_keyring_t *kr, const char *key_id,
                                       const char *method);

/** Type of key_id, or KREQ_ENOENT / KREQ_EINVAL (negative) if absent. */
KREQ_API int kreq_keyring_key_type(const kreq_keyring_t *kr, const char *key_id);

/** Number of keys. */
KREQ_API size_t kreq_keyring_count(const kreq_keyring_t *kr);

/** Adds every key of a key file (format in docs/protocol.md) and applies its
 *  `signing` line. Refuses a file owned by anyone but the effective user or
 *  root, or writable by group or others, or holding secret keys and
 *  readable by group or others (KREQ_EKEYPERM); a file that is not a
 *  regular file (a FIFO is refused at once, never waited on), larger than
 *  1 MiB, changing while read, holding a NUL byte (KREQ_EKEYFILE), and any
 *  malformed line (KREQ_EKEYFILE; errstr gives path and line number, never
 *  key bytes). Symbolic links are followed; the checks apply to the file
 *  opened. All or nothing: on error the keyring is unchanged.
 *  Returns KREQ_OK, KREQ_EINVAL, KREQ_EIO, KREQ_EKEYPERM, KREQ_EKEYFILE,
 *  KREQ_EEXIST or KREQ_ENOMEM. */
KREQ_API int kreq_keyring_load_file(kreq_keyring_t *kr, const char *path, char *errstr,
                                    size_t errstr_size);

/** Generates a new random key of the given type and writes a key file at
 *  path (created with mode 0600, never overwriting: KREQ_EEXIST if it
 *  exists) naming it the signing key. For KREQ_KEY_ED25519, if public_path is
 *  not NULL, also writes a verify-only key file (mode 0644) for the other
 *  side. Returns KREQ_OK, KREQ_EINVAL, KREQ_EEXIST, KREQ_EIO. */
KREQ_API int kreq_keyring_generate_file(const char *path, const char *public_path,
                                        const char *key_id, kreq_key_type_t type, char *errstr,
                                        size_t errstr_size);

#endif
