/*
 * unverified.h — decoding kreq records WITHOUT verifying their signature,
 * beside the verified path (envelope.h, kreq__envelope_open), for tools that
 * show what a record claims when the key that signed it is not at hand:
 * `kreq pending` without --keyring, `kreq tail` for a record that did not
 * verify, the request inside a dead letter signed by a key the operator
 * does not hold. Everything decoded here must be shown as unverified.
 */
#ifndef KREQ_PROTO_UNVERIFIED_H
#define KREQ_PROTO_UNVERIFIED_H

#include <stddef.h>
#include <stdint.h>

#include "kreq/keyring.h"
#include "proto/envelope.h"

/* Decodes the envelope in buf and its body WITHOUT checking the signature,
 * with the limits of lim and the field rules a displayed row relies on;
 * now_ms != 0 also refuses a request or cancel past its deadline
 * (KREQ_EEXPIRED). KREQ_OK with *out holding the message (free with
 * kreq__opened_clear; out->key_id is the claimed signer), or KREQ_EMALFORMED,
 * KREQ_EOVERSIZE, KREQ_EVERSION, KREQ_EEXPIRED with *out empty. */
int kreq__envelope_open_unverified(const kreq__limits_t *lim, int64_t now_ms, const uint8_t *buf,
                                   size_t len, kreq__opened_t *out);

/* The envelope header only, unverified: its kind (*kind) and claimed key id
 * (copied into key_id when it is 1..KREQ_KEY_ID_MAX bytes, else ""). true if
 * buf is 1..lim->envelope_max bytes and decodes as an envelope. */
bool kreq__envelope_peek(const kreq__limits_t *lim, const uint8_t *buf, size_t len, uint32_t *kind,
                         char key_id[KREQ_KEY_ID_MAX + 1]);

#endif
