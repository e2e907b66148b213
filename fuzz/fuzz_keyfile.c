/*
 * fuzz_keyfile.c — libFuzzer target for the key-file parser
 * (proto/keyfile.c through kreq__keyfile_parse, the text kreq_keyring_load_file
 * parses once the file has passed its checks).
 *
 * Invariants: only kreq error codes; all or nothing (a refused file leaves
 * the keyring exactly as it was: one pre-existing key, no signer; an
 * accepted one adds keys and a signer only if it named one); no crash,
 * leak or undefined behaviour; a signing key that signs what it does not
 * verify (an Ed25519 pair whose halves disagree) is a bug. Seed corpus: fuzz/corpus/keyfile.
 */
#include <stdlib.h>
#include <string.h>

#include "kreq/error.h"
#include "proto/envelope.h"
#include "proto/keyring_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint8_t pre[32] = {1};
	kreq_keyring_t *kr = kreq_keyring_new();
	if (!kr || kreq_keyring_add(kr, "pre", KREQ_KEY_HMAC_SHA256, pre, 32, NULL, 0))
		abort();
	char err[512];
	int rc = kreq__keyfile_parse(kr, "fuzz", (const char *)data, size, true, err, sizeof(err));
	if (rc > 0)
		abort();
	if (rc != KREQ_OK && (kreq_keyring_count(kr) != 1 || kreq_keyring_signing_key(kr)))
		abort(); /* a refused file changed the keyring */
	if (rc == KREQ_OK && kreq_keyring_count(kr) < 1)
		abort();
	/* a loaded signing key signs what its own verification accepts */
	const kreq__key_t *k = kreq__keyring_signer(kr);
	uint8_t sig[64];
	size_t slen = k ? kreq__sign(k, 1, (const uint8_t *)"body", 4, sig) : 0;
	if (k && (slen == 0 || kreq__verify(k, 2, 1, (const uint8_t *)"body", 4, sig, slen)))
		abort();
	if (k && kreq_keyring_check_method(kr, k->id, "svc.m") > 0)
		abort();
	kreq_keyring_release(kr);
	return 0;
}
