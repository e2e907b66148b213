/*
 * envelope.h — encode+sign and decode+verify kreq envelopes (internal).
 *
 * The byte-exact format is in docs/protocol.md. Used by the client, the
 * broker, the CLI and the fuzzer; all functions are safe from any thread as
 * long as the keyring is not modified concurrently (see kreq/keyring.h).
 */
#ifndef KREQ_ENVELOPE_H
#define KREQ_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#include "kreq.pb-c.h"
#include "kreq/error.h"
#include "kreq/conf.h"
#include "kreq/keyring.h"
#include "proto/keyring_int.h"

#define KREQ__PROTO_VERSION 2
#define KREQ__SIG_TAG       "kreq-envelope-v1" /* followed by one 0x00 byte */
#define KREQ__SIG_HDR_MAX   (sizeof(KREQ__SIG_TAG) + 4 + 1 + KREQ_KEY_ID_MAX + 4 + 8)
#define KREQ__CORR_ID_BYTES 16
#define KREQ__IDEM_KEY_MAX  255
#define KREQ__METHOD_MAX    255
#define KREQ__TOPIC_MAX     249
#define KREQ__METADATA_MAX  32
#define KREQ__META_KEY_MAX  64
#define KREQ__META_VAL_MAX  1024
#define KREQ__ERROR_MAX     4096

/* Request.service: 1..200 of [A-Za-z0-9._-] (a worker's service name). */
#define KREQ__SERVICE_MAX 200
/* Results of version 1 (their body did not change) are still accepted. */
#define KREQ__PROTO_RESULT_V1 1

typedef enum kreq__kind {
	KREQ__KIND_REQUEST = 1,
	KREQ__KIND_REPLY = 2,
	KREQ__KIND_CANCEL = 3,
	KREQ__KIND_RESULT = 4,
	KREQ__KIND_DEAD = 5,    /* DeadLetter, in <prefix>.<service>.dead */
	KREQ__KIND_ATTEMPT = 6, /* Attempt, in <prefix>.<service>.attempts */
} kreq__kind_t;

/* A DeadLetter carries at most this many attempts, and its envelope may be
 * up to KREQ__DEAD_OVERHEAD_MAX bytes larger than envelope.max.bytes (it
 * holds a whole request envelope plus the attempt history). */
#define KREQ__ATTEMPTS_MAX      32
#define KREQ__DEAD_OVERHEAD_MAX 49152
#define KREQ__WORKER_ID_MAX     255

/* Bounds applied while decoding (and encoding). */
typedef struct kreq__limits {
	size_t envelope_max; /* envelope.max.bytes */
	size_t payload_max;  /* payload.max.bytes */
	int64_t skew_ms;     /* clock.skew.ms */
} kreq__limits_t;

void kreq__limits_from_conf(kreq__limits_t *lim, const kreq_conf_t *conf);

/* Size limits, made consistent (docs/operations.md, "Message sizes"):
 *   payload.max.bytes + KREQ__ENVELOPE_OVERHEAD_MAX <= envelope.max.bytes
 *   envelope + KREQ__RECORD_OVERHEAD_MAX <= the producers' message.max.bytes
 * so whatever payload kreq accepts, its envelope can be sealed and
 * librdkafka accepts the record. KREQ__ENVELOPE_OVERHEAD_MAX bounds what an
 * envelope adds around its payload: a Request with 32 metadata entries of
 * 1 KiB and every string at its maximum is ~36.4 KB; a Reply or Result
 * with a 4096-byte error text < 5 KB. KREQ__RECORD_OVERHEAD_MAX bounds a
 * Kafka record's key (at most KREQ__DEDUP_KEY_MAX, 320 bytes) and framing. */
#define KREQ__ENVELOPE_OVERHEAD_MAX 40960
#define KREQ__RECORD_OVERHEAD_MAX   1024

/* The message.max.bytes kreq's producers need for conf's payload.max.bytes
 * (set before the user's kafka. properties). */
int64_t kreq__limits_message_max(const kreq_conf_t *conf);

/* Checks the rule above for conf, including a kafka.message.max.bytes the
 * user set: KREQ_OK or KREQ_ECONF with errstr naming the properties. */
int kreq__limits_check(const kreq_conf_t *conf, char *errstr, size_t errstr_size);

/* A verified, decoded message. Owns the decoded body: with arena set, the
 * body lives in that one block (kreq__envelope_open decodes into it, so a
 * decode costs one allocation instead of one per field); without, it was
 * decoded with protobuf-c's default allocator. kreq__opened_clear frees
 * either. Moving an opened message is a struct copy. */
typedef struct kreq__opened {
	kreq__kind_t kind;
	char key_id[KREQ_KEY_ID_MAX + 1];
	union {
		ProtobufCMessage *msg;
		Kreq__Request *req;
		Kreq__Reply *reply;
		Kreq__Cancel *cancel;
		Kreq__Result *result;
		Kreq__DeadLetter *dead;
		Kreq__Attempt *attempt;
	} u;
	void *arena;
} kreq__opened_t;

/* An envelope as it sits in a record: pointers into the record's bytes,
 * nothing allocated. */
typedef struct kreq__env_view {
	uint32_t version, kind;
	const uint8_t *key_id, *body, *sig;
	size_t key_id_len, body_len, sig_len;
} kreq__env_view_t;

/* The envelope decoder (docs/protocol.md section 2): the five fields, each
 * at most once, with its own wire type, minimal varints, lengths inside
 * buf; anything else (an unknown or repeated field, a wrong wire type, a
 * truncated field) is KREQ_EMALFORMED with errstr naming it. Allocates
 * nothing and reads every byte at most once, so the worst input costs what
 * a normal one of its size does. Does not check values (version, kind, key
 * id): kreq__envelope_open does. */
int kreq__envelope_parse(const uint8_t *buf, size_t len, kreq__env_view_t *out, char *errstr,
                         size_t errstr_size);

/* Validates body, encodes it, signs it with the keyring's signing key and
 * encodes the envelope into a new malloc'd buffer (*out, *out_len; caller
 * frees). Returns KREQ_OK, KREQ_ENOSIGNKEY, KREQ_EMALFORMED (invalid body
 * field; errstr names it), KREQ_EOVERSIZE or KREQ_ENOMEM. */
int kreq__envelope_seal(const kreq_keyring_t *kr, const kreq__limits_t *lim, kreq__kind_t kind,
                        const ProtobufCMessage *body, uint8_t **out, size_t *out_len, char *errstr,
                        size_t errstr_size);

/* The same into the caller's buffer dst of cap bytes (an envelope larger
 * than cap is KREQ_EOVERSIZE); *out_len gets its length. For a caller that
 * seals many messages into one reusable buffer (the worker's loop). */
int kreq__envelope_seal_to(const kreq_keyring_t *kr, const kreq__limits_t *lim, kreq__kind_t kind,
                           const ProtobufCMessage *body, uint8_t *dst, size_t cap, size_t *out_len,
                           char *errstr, size_t errstr_size);

/* Decodes and verifies buf at time now_ms. DeadLetters and Attempts are
 * records of history, not live messages: no clock check applies to them
 * (their topics' retention bounds their life). On KREQ_OK *out holds the
 * message (free with kreq__opened_clear()); on error *out is empty and the
 * code says why: KREQ_EOVERSIZE, KREQ_EMALFORMED, KREQ_EVERSION,
 * KREQ_EUNKNOWNKEY, KREQ_EBADSIG, KREQ_EEXPIRED, KREQ_EFUTURE, KREQ_ENOMEM.
 * Nothing in the body is parsed before the signature has verified. */
int kreq__envelope_open(const kreq_keyring_t *kr, const kreq__limits_t *lim, int64_t now_ms,
                        const uint8_t *buf, size_t len, kreq__opened_t *out, char *errstr,
                        size_t errstr_size);

void kreq__opened_clear(kreq__opened_t *o);

/* The protobuf-c descriptor of a body of kind, NULL for an unknown kind. */
const ProtobufCMessageDescriptor *kreq__body_descriptor(uint32_t kind);

/* The bytes that are signed are header || body; this writes the header into
 * hdr (at least KREQ__SIG_HDR_MAX bytes) and returns its length. */
size_t kreq__sig_header(uint8_t *hdr, uint32_t version, const char *key_id, size_t key_id_len,
                        uint32_t kind, size_t body_len);

/* Signature of (header || body) with key k into sig (64 bytes room);
 * returns its length (32 HMAC, 64 Ed25519), 0 if k cannot sign. */
/* The request digest a Result records (docs/protocol.md 4.4):
 * SHA-256(method || 0x00 || payload). */
void kreq__request_digest(const Kreq__Request *q, uint8_t out[32]);

size_t kreq__sign(const kreq__key_t *k, uint32_t kind, const uint8_t *body, size_t body_len,
                  uint8_t *sig);

/* KREQ_OK if sig is k's signature of (header || body), else KREQ_EBADSIG
 * (or KREQ_ENOMEM). Constant time in the signature comparison. */
int kreq__verify(const kreq__key_t *k, uint32_t version, uint32_t kind, const uint8_t *body,
                 size_t body_len, const uint8_t *sig, size_t sig_len);

#endif
