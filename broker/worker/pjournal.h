/*
 * pjournal.h — the crash journal of handler starts (worker.poison.journal):
 * a small file, mapped MAP_SHARED, holding one slot per request whose
 * handler runs. Writing a slot is a memory write (no system call, no
 * Kafka round trip); the kernel keeps the page when the process dies
 * (SIGSEGV, abort, OOM kill), so the next start of the worker finds the
 * requests whose handlers were running when it crashed and records them in
 * Kafka (broker/worker/poison.c). It does not survive a crash of the machine.
 * Loop thread only.
 */
#ifndef KREQ_BROKER_PJOURNAL_H
#define KREQ_BROKER_PJOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker/worker/dedup.h"

typedef struct kreq__pjournal kreq__pjournal_t;

/* One running request, as written in the file. */
typedef struct kreq__pj_slot {
	uint32_t used; /* written last (release) */
	uint32_t number;
	int32_t partition;
	uint16_t klen;
	uint16_t pad;
	int64_t offset, started_at_ms;
	uint8_t key[KREQ__DEDUP_KEY_MAX]; /* kreq__dedup_key() */
} kreq__pj_slot_t;

/* Opens (creating it, mode 0600) and locks path, keeping what it holds:
 * KREQ_OK and *out, or KREQ_EIO / KREQ_ECONF (locked by another process,
 * not a journal) / KREQ_ENOMEM with errstr. */
int kreq__pjournal_open(const char *path, uint32_t nslots, kreq__pjournal_t **out, char *errstr,
                        size_t errstr_size);
/* The instance id of the process that wrote the slots found at open. */
uint64_t kreq__pjournal_owner(const kreq__pjournal_t *j);
/* The slots found in use at open (before kreq__pjournal_reset). */
size_t kreq__pjournal_nslots(const kreq__pjournal_t *j);
const kreq__pj_slot_t *kreq__pjournal_slot(const kreq__pjournal_t *j, size_t i);
/* Empties the journal and makes instance its owner. */
void kreq__pjournal_reset(kreq__pjournal_t *j, uint64_t instance);
/* Records a start: its slot index + 1, or 0 when the journal is full. */
uint32_t kreq__pjournal_add(kreq__pjournal_t *j, const uint8_t *key, size_t klen, int32_t partition,
                            int64_t offset, int64_t started_at_ms, uint32_t number);
/* The handler of slot (index + 1, from add) finished or is abandoned. */
void kreq__pjournal_remove(kreq__pjournal_t *j, uint32_t slot);
/* Unmaps and unlocks; the file is removed when no slot is in use (a clean
 * stop leaves nothing behind). */
void kreq__pjournal_close(kreq__pjournal_t *j);

#endif
