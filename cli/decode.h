/*
 * decode.h — unverified decoding of kreq records for the command line
 * (see decode.c for why and when).
 */
#ifndef KREQ_CLI_DECODE_H
#define KREQ_CLI_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "proto/envelope.h"

/* Decodes the envelope in buf and its body WITHOUT checking the signature,
 * with the limits of lim and the field rules a displayed row relies on;
 * now_ms != 0 also refuses a request or cancel past its deadline
 * (KREQ_EEXPIRED). KREQ_OK with *out holding the message (free with
 * kreq__opened_clear; out->key_id is the claimed signer), or KREQ_EMALFORMED,
 * KREQ_EOVERSIZE, KREQ_EVERSION, KREQ_EEXPIRED with *out empty. */
int cli_open_unverified(const kreq__limits_t *lim, int64_t now_ms, const uint8_t *buf, size_t len,
                        kreq__opened_t *out);

#endif
