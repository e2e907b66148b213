/*
 * dead.h — reading a dead-letter topic for `kreq dead` (dead_read.c).
 *
 * A dead_reader is a librdkafka consumer assigned partitions directly (no
 * group membership, no commits, read_committed) and the keyring of the
 * key file; every read is bounded by the end offsets taken when it starts
 * and by one time budget set at open. Each record is handed over opened
 * (or with the reason it could not be), never silently skipped.
 */
#ifndef KREQ_CLI_DEAD_H
#define KREQ_CLI_DEAD_H

#include <stdbool.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "kreq/keyring.h"
#include "proto/envelope.h"

#define DEAD_TIMEOUT_MS 10000
#define DEAD_TOPIC_MAX  249
/* Largest dead-letter record opened: a DeadLetter holds a whole request
 * envelope plus its attempt history, so it may exceed envelope.max.bytes. */
#define DEAD_MAX_BYTES (64u << 20)

/* One record of the dead-letter topic. verdict KREQ_OK: opened.u.msg is
 * the verified Kreq__DeadLetter. Otherwise detail says why and signer is
 * the key id the envelope claims ("" if even that does not decode). */
struct dead_rec {
	int32_t partition;
	int64_t offset, timestamp; /* timestamp: the record's, ms; -1 unknown */
	int verdict;
	char detail[256];
	char signer[KREQ_KEY_ID_MAX + 1];
	kreq__opened_t opened;
};

void dead_rec_clear(struct dead_rec *r);

struct dead_reader {
	const char *sub, *bootstrap, *topic;
	kreq_keyring_t *kr;
	kreq__limits_t no_clock; /* open without clock checks, DEAD_MAX_BYTES */
	rd_kafka_t *rk;
	int64_t until; /* monotonic ms: end of the time budget */
	long timeout_ms;
	int32_t *parts;
	int nparts;
};

/* Loads the key file, creates the consumer and learns the topic's
 * partitions. CLI_EXIT_OK, or an exit code with the cause printed (a
 * missing topic is CLI_EXIT_FAIL). dead_reader_close is always safe. */
int dead_reader_open(struct dead_reader *rd, const char *sub, const char *bootstrap,
                     const char *topic, const char *keyfile, long timeout_ms);
void dead_reader_close(struct dead_reader *rd);

/* Called per record; may take the record over (then zero *r). Return
 * false to stop reading. */
typedef bool dead_rec_fn(void *arg, struct dead_rec *r);

/* Every record of every partition written at or after since_ms (0: from
 * the earliest) up to the end offsets taken now. */
int dead_read_all(struct dead_reader *rd, int64_t since_ms, dead_rec_fn *fn, void *arg);

/* The record at partition:offset (CLI_EXIT_FAIL naming the cause when
 * there is none). */
int dead_read_one(struct dead_reader *rd, int32_t partition, int64_t offset, dead_rec_fn *fn,
                  void *arg);

/* ---- parsing (dead_ref.c) ---- */

/* WHEN of --since as ms since the epoch: ms since the epoch (digits), a
 * duration back from now_ms (digits and s, m, h or d) or a UTC time
 * YYYY-MM-DDTHH:MM:SSZ. false if it is none of these. */
bool dead_parse_since(const char *s, int64_t now_ms, int64_t *out);

/* REF as PARTITION:OFFSET (digits only on both sides); false if it is not
 * of that form (then it is a correlation id or idempotency key). */
bool dead_parse_position(const char *ref, int32_t *partition, int64_t *offset);

/* s as hex digits into a new malloc'd buffer of *n <= max bytes; NULL if s
 * is not an even number of hex digits (or too long, or out of memory). */
uint8_t *dead_from_hex(const char *s, size_t max, size_t *n);

/* The topic.prefix of request_topic "<prefix>.<service>.requests" into buf
 * (size bytes), returned; NULL when the topic is not of that form. */
const char *dead_request_prefix(const char *request_topic, const char *service, char *buf,
                                size_t size);

#endif
