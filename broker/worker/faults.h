/*
 * faults.h — which request records made the worker rewind, and how often
 * (loop thread only).
 *
 * Why: a failed produce or seal inside a transaction aborts it and the
 * worker rewinds to the committed offsets (loop.c rewind_all). When the
 * failure is a property of one record (its reply or result is too large
 * for Kafka, its reply partition or topic vanished after it was checked),
 * the same record fails again on every pass: the worker would spin and
 * re-run the work of every request sharing its transactions. Each failed
 * output therefore names the record it belongs to (partition, offset);
 * the table counts the rewinds each record caused, and the loop gives a
 * record that reached KREQ__REWIND_MAX a terminal answer (a stored error,
 * status KREQ_STATUS_TOO_LARGE when its output was too large) or drops it
 * and counts it, so the partition moves on.
 *
 * The table is small and fixed: a record only needs to be remembered
 * across the few rewinds it causes. At KREQ__FAULTS_MAX entries the oldest
 * is forgotten (it then gets at most KREQ__REWIND_MAX more rewinds).
 * Failures that name no record (Kafka unreachable, fencing) are not
 * counted here: they are not a property of any request.
 */
#ifndef KREQ_BROKER_FAULTS_H
#define KREQ_BROKER_FAULTS_H

#include <stdbool.h>
#include <stdint.h>

#define KREQ__FAULTS_MAX 64
#define KREQ__REWIND_MAX 3 /* rewinds one record may cause */
#define KREQ__FAULT_WHY  160

typedef enum {
	KREQ__FAULT_OTHER,     /* any other failed output */
	KREQ__FAULT_TOO_LARGE, /* an output exceeded a size limit of Kafka or kreq */
	KREQ__FAULT_REPLY_TO   /* the reply topic or partition does not exist */
} kreq__fault_kind_t;

typedef struct kreq__fault {
	int32_t partition;
	int64_t offset;   /* -1: empty entry */
	uint32_t rewinds; /* rewinds this record caused */
	uint64_t pass;    /* the rewind pass that last counted it */
	kreq__fault_kind_t kind;
	char why[KREQ__FAULT_WHY];
} kreq__fault_t;

typedef struct kreq__faults {
	kreq__fault_t e[KREQ__FAULTS_MAX];
	uint32_t next; /* the entry replaced next when the table is full */
	uint32_t used; /* entries in use: 0 (the usual case) makes a lookup free */
	uint64_t pass; /* current rewind pass: bumped by kreq__faults_rewound */
	bool noted;    /* a record failed since the last rewind */
} kreq__faults_t;

void kreq__faults_init(kreq__faults_t *f);

/* A produce (or seal) for the record at (partition, offset) failed: counts
 * one rewind for it in the current pass (several failures of one record
 * in one pass count once); kind and why describe the latest failure. */
void kreq__faults_note(kreq__faults_t *f, int32_t partition, int64_t offset,
                       kreq__fault_kind_t kind, const char *why);

/* The entry of (partition, offset), or NULL. */
const kreq__fault_t *kreq__faults_find(const kreq__faults_t *f, int32_t partition, int64_t offset);

/* The rewind for the failures noted so far has happened: later failures
 * count as another rewind. */
void kreq__faults_rewound(kreq__faults_t *f);

/* Forgets every record of partition below offset (committed past them). */
void kreq__faults_committed(kreq__faults_t *f, int32_t partition, int64_t offset);

/* Whether the record at (partition, offset) has caused KREQ__REWIND_MAX
 * rewinds (or, for kind TOO_LARGE, one: retrying cannot shrink it). */
bool kreq__faults_exhausted(const kreq__fault_t *e);

#endif
