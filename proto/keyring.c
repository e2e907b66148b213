/*
 * keyring.c — key ids to keys, key file loading and generation.
 *
 * Design notes
 * - Few keys (a handful during a rotation), so a flat array with a linear
 *   search by id beats a hash table: it is cache-friendly and has no
 *   allocation on lookup.
 * - Key material lives in sodium_malloc'd memory (guard pages, mlock where
 *   allowed) and is wiped on free; the file buffer is wiped after parsing.
 * - Loading a file is all-or-nothing: it is parsed into a scratch keyring and
 *   only merged when every line was valid, so a bad edit during a SIGHUP
 *   reload can never leave a half-loaded keyring.
 * - Error messages name the path, line and key id, never key bytes.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "common/internal.h"
#include "proto/keyring_int.h"

struct kreq_keyring_s {
	atomic_int refs;
	int signer; /* index into keys, -1 if none */
	size_t count;
	kreq__key_t keys[KREQ_KEYRING_MAX_KEYS];
};

bool kreq__key_id_valid(const char *id, size_t len)
{
	return kreq__name_valid(id, len, KREQ_KEY_ID_MAX);
}

kreq_keyring_t *kreq_keyring_new(void)
{
	if (sodium_init() < 0)
		return NULL;
	kreq_keyring_t *kr = calloc(1, sizeof(*kr));
	if (!kr)
		return NULL;
	atomic_init(&kr->refs, 1);
	kr->signer = -1;
	return kr;
}

kreq_keyring_t *kreq_keyring_retain(kreq_keyring_t *kr)
{
	if (kr)
		atomic_fetch_add_explicit(&kr->refs, 1, memory_order_relaxed);
	return kr;
}

static void key_free(kreq__key_t *k)
{
	sodium_free(k->material); /* wipes before freeing */
	sodium_free(k->hmac);
	free(k->methods);
	memset(k, 0, sizeof(*k));
}

void kreq_keyring_release(kreq_keyring_t *kr)
{
	if (!kr || atomic_fetch_sub_explicit(&kr->refs, 1, memory_order_acq_rel) != 1)
		return;
	for (size_t i = 0; i < kr->count; i++)
		key_free(&kr->keys[i]);
	free(kr);
}

static int find_index(const kreq_keyring_t *kr, const char *id, size_t id_len)
{
	for (size_t i = 0; i < kr->count; i++)
		if (kr->keys[i].id_len == id_len && memcmp(kr->keys[i].id, id, id_len) == 0)
			return (int)i;
	return -1;
}

const kreq__key_t *kreq__keyring_find(const kreq_keyring_t *kr, const char *id, size_t id_len)
{
	int i = find_index(kr, id, id_len);
	return i < 0 ? NULL : &kr->keys[i];
}

const kreq__key_t *kreq__keyring_signer(const kreq_keyring_t *kr)
{
	return kr->signer < 0 ? NULL : &kr->keys[kr->signer];
}

static size_t key_len_for(kreq_key_type_t type)
{
	switch (type) {
	case KREQ_KEY_HMAC_SHA256:
		return KREQ_HMAC_KEY_BYTES;
	case KREQ_KEY_ED25519:
		return KREQ_ED25519_SK_BYTES;
	case KREQ_KEY_ED25519_PUBLIC:
		return KREQ_ED25519_PK_BYTES;
	}
	return 0;
}

/* An Ed25519 secret key is seed || pk; refuse one whose halves disagree. */
static bool ed25519_sk_consistent(const uint8_t *sk)
{
	uint8_t pk[crypto_sign_PUBLICKEYBYTES], sk2[crypto_sign_SECRETKEYBYTES];
	crypto_sign_seed_keypair(pk, sk2, sk);
	bool ok = sodium_memcmp(pk, sk + crypto_sign_SEEDBYTES, sizeof(pk)) == 0;
	sodium_memzero(sk2, sizeof(sk2));
	return ok;
}

int kreq_keyring_add(kreq_keyring_t *kr, const char *key_id, kreq_key_type_t type,
                     const uint8_t *key, size_t key_len, char *errstr, size_t errstr_size)
{
	if (!kr || !key_id || !key)
		return kreq__err(errstr, errstr_size, KREQ_EINVAL,
		                 "kreq_keyring_add: kr, key_id and key must not be NULL");
	size_t id_len = strlen(key_id);
	if (!kreq__key_id_valid(key_id, id_len))
		return kreq__err(errstr, errstr_size, KREQ_EINVAL,
		                 "invalid key id (1..%d characters of A-Z a-z 0-9 . _ -)",
		                 KREQ_KEY_ID_MAX);
	size_t want = key_len_for(type);
	if (!want)
		return kreq__err(errstr, errstr_size, KREQ_EINVAL, "key %s: unknown key type %d",
		                 key_id, (int)type);
	if (key_len != want)
		return kreq__err(errstr, errstr_size, KREQ_EINVAL,
		                 "key %s: wrong length %zu for its type (want %zu)", key_id,
		                 key_len, want);
	if (type == KREQ_KEY_ED25519 && !ed25519_sk_consistent(key))
		return kreq__err(errstr, errstr_size, KREQ_EINVAL,
		                 "key %s: Ed25519 secret key's public half does not match its "
		                 "seed",
		                 key_id);
	if (find_index(kr, key_id, id_len) >= 0)
		return kreq__err(errstr, errstr_size, KREQ_EEXIST, "key %s: already present",
		                 key_id);
	if (kr->count == KREQ_KEYRING_MAX_KEYS)
		return kreq__err(errstr, errstr_size, KREQ_EOVERSIZE, "keyring full (%d keys)",
		                 KREQ_KEYRING_MAX_KEYS);
	kreq__key_t *k = &kr->keys[kr->count];
	k->material = sodium_malloc(want);
	if (!k->material)
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	memcpy(k->material, key, want);
	k->hmac = NULL;
	if (type == KREQ_KEY_HMAC_SHA256) {
		k->hmac = sodium_malloc(sizeof(*k->hmac)); /* a multiple of 16: aligned */
		if (!k->hmac) {
			sodium_free(k->material);
			return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
		}
		kreq__hmac_key_init(k->hmac, key, want);
	}
	memcpy(k->id, key_id, id_len + 1);
	k->id_len = (uint8_t)id_len;
	k->type = type;
	k->pk = type == KREQ_KEY_ED25519          ? k->material + crypto_sign_SEEDBYTES
	        : type == KREQ_KEY_ED25519_PUBLIC ? k->material
	                                          : NULL;
	k->methods = NULL;
	kr->count++;
	return KREQ_OK;
}

int kreq_keyring_remove(kreq_keyring_t *kr, const char *key_id)
{
	if (!kr || !key_id)
		return KREQ_EINVAL;
	int i = find_index(kr, key_id, strlen(key_id));
	if (i < 0)
		return KREQ_ENOENT;
	key_free(&kr->keys[i]);
	kr->keys[i] = kr->keys[kr->count - 1];
	if (kr->keys[i].pk) /* pk points into material, which moved with the struct */
		kr->keys[i].pk = kr->keys[i].material +
		                 (kr->keys[i].type == KREQ_KEY_ED25519 ? crypto_sign_SEEDBYTES : 0);
	memset(&kr->keys[kr->count - 1], 0, sizeof(kr->keys[0]));
	if (kr->signer == i)
		kr->signer = -1;
	else if (kr->signer == (int)kr->count - 1)
		kr->signer = i;
	kr->count--;
	return KREQ_OK;
}

int kreq_keyring_set_signing_key(kreq_keyring_t *kr, const char *key_id)
{
	if (!kr || !key_id)
		return KREQ_EINVAL;
	int i = find_index(kr, key_id, strlen(key_id));
	if (i < 0)
		return KREQ_ENOENT;
	if (kr->keys[i].type == KREQ_KEY_ED25519_PUBLIC)
		return KREQ_ENOSIGNKEY;
	kr->signer = i;
	return KREQ_OK;
}

const char *kreq_keyring_signing_key(const kreq_keyring_t *kr)
{
	return (!kr || kr->signer < 0) ? NULL : kr->keys[kr->signer].id;
}

static bool method_name_valid(const char *m, size_t len)
{
	if (len == 0 || len > 255)
		return false;
	for (size_t i = 0; i < len; i++)
		if (m[i] == ',' || m[i] <= ' ' || m[i] == 0x7f)
			return false;
	return true;
}

int kreq_keyring_set_methods(kreq_keyring_t *kr, const char *key_id, const char *methods)
{
	if (!kr || !key_id)
		return KREQ_EINVAL;
	int i = find_index(kr, key_id, strlen(key_id));
	if (i < 0)
		return KREQ_ENOENT;
	char *list = NULL;
	if (methods && *methods) {
		for (const char *p = methods; *p;) { /* every element must be a valid name */
			size_t n = strcspn(p, ",");
			if (!method_name_valid(p, n))
				return KREQ_EINVAL;
			p += n + (p[n] == ',');
			if (p[-1] == ',' && *p == '\0')
				return KREQ_EINVAL;
		}
		size_t len = strlen(methods);
		list = malloc(len + 3);
		if (!list)
			return KREQ_ENOMEM;
		list[0] = ',';
		memcpy(list + 1, methods, len);
		memcpy(list + 1 + len, ",", 2);
	}
	free(kr->keys[i].methods);
	kr->keys[i].methods = list;
	return KREQ_OK;
}

int kreq_keyring_check_method(const kreq_keyring_t *kr, const char *key_id, const char *method)
{
	if (!kr || !key_id || !method)
		return KREQ_EINVAL;
	int i = find_index(kr, key_id, strlen(key_id));
	if (i < 0)
		return KREQ_ENOENT;
	const char *list = kr->keys[i].methods;
	if (!list)
		return KREQ_OK;
	size_t mlen = strlen(method);
	for (const char *p = strstr(list, method); p; p = strstr(p + 1, method))
		if (p[-1] == ',' && p[mlen] == ',')
			return KREQ_OK;
	return KREQ_EDENIED;
}

int kreq_keyring_key_type(const kreq_keyring_t *kr, const char *key_id)
{
	if (!kr || !key_id)
		return KREQ_EINVAL;
	int i = find_index(kr, key_id, strlen(key_id));
	return i < 0 ? KREQ_ENOENT : (int)kr->keys[i].type;
}

size_t kreq_keyring_count(const kreq_keyring_t *kr)
{
	return kr ? kr->count : 0;
}

int kreq__keyring_merge(kreq_keyring_t *dst, kreq_keyring_t *src, char *errstr, size_t errstr_size)
{
	if (dst->count + src->count > KREQ_KEYRING_MAX_KEYS)
		return kreq__err(errstr, errstr_size, KREQ_EOVERSIZE, "keyring full (%d keys)",
		                 KREQ_KEYRING_MAX_KEYS);
	for (size_t i = 0; i < src->count; i++)
		if (find_index(dst, src->keys[i].id, src->keys[i].id_len) >= 0)
			return kreq__err(errstr, errstr_size, KREQ_EEXIST,
			                 "key %s: already present", src->keys[i].id);
	for (size_t i = 0; i < src->count; i++) {
		if (src->signer == (int)i)
			dst->signer = (int)dst->count;
		dst->keys[dst->count++] = src->keys[i]; /* material pointers move along */
		memset(&src->keys[i], 0, sizeof(src->keys[i]));
	}
	src->count = 0;
	src->signer = -1;
	return KREQ_OK;
}
