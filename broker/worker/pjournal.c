/*
 * pjournal.c — see pjournal.h. File layout: a 64-byte header (magic,
 * version, slot count, owner instance) then nslots fixed-size slots. A slot
 * is filled, then marked used with a release store, so a crash between the
 * two leaves it unused (the handler had not started yet).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker/worker/pjournal.h"
#include "common/internal.h"
#include "kreq/error.h"

#define PJ_MAGIC 0x6b72657150a1ULL /* "kreqP" + version byte */
#define PJ_HDR   64
#define PJ_MAX   (1u << 22)

typedef struct pj_hdr {
	uint64_t magic;
	uint32_t nslots, pad;
	uint64_t owner;
} pj_hdr_t;

struct kreq__pjournal {
	char *path;
	int fd;
	uint8_t *map;
	size_t size;
	uint32_t nslots; /* of the mapping */
	uint32_t *free;  /* free slot indices */
	uint32_t nfree;
	uint64_t owner;          /* at open */
	kreq__pj_slot_t **found; /* in use at open */
	size_t nfound;
};

static kreq__pj_slot_t *slot_at(const kreq__pjournal_t *j, uint32_t i)
{
	return (kreq__pj_slot_t *)(j->map + PJ_HDR + (size_t)i * sizeof(kreq__pj_slot_t));
}

static int map(kreq__pjournal_t *j, uint32_t nslots)
{
	size_t size = PJ_HDR + (size_t)nslots * sizeof(kreq__pj_slot_t);
	if (j->map)
		munmap(j->map, j->size);
	j->map = NULL;
	struct stat st;
	if (fstat(j->fd, &st) || ((size_t)st.st_size < size && ftruncate(j->fd, (off_t)size)))
		return -1;
	void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, j->fd, 0);
	if (m == MAP_FAILED)
		return -1;
	j->map = m;
	j->size = size;
	j->nslots = nslots;
	return 0;
}

int kreq__pjournal_open(const char *path, uint32_t nslots, kreq__pjournal_t **out, char *errstr,
                        size_t errstr_size)
{
	*out = NULL;
	kreq__pjournal_t *j = calloc(1, sizeof(*j));
	if (!j || !(j->path = strdup(path)) || !(j->free = calloc(nslots, sizeof(*j->free)))) {
		if (j)
			free(j->path);
		free(j);
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	}
	int err = KREQ_OK;
	j->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (j->fd < 0)
		err = kreq__err(errstr, errstr_size, KREQ_EIO, "worker.poison.journal %s: %s", path,
		                strerror(errno));
	else if (flock(j->fd, LOCK_EX | LOCK_NB))
		err = kreq__err(errstr, errstr_size, KREQ_ECONF,
		                "worker.poison.journal %s is in use by another process (each "
		                "worker needs its own)",
		                path);
	pj_hdr_t h = {0};
	struct stat st;
	ssize_t got = 0;
	if (!err &&
	    (fstat(j->fd, &st) || (st.st_size > 0 && (got = pread(j->fd, &h, sizeof(h), 0)) < 0)))
		err = kreq__err(errstr, errstr_size, KREQ_EIO, "worker.poison.journal %s: %s", path,
		                strerror(errno));
	if (!err && got > 0 && got < (ssize_t)sizeof(h))
		h.magic = 1;                      /* too short to be one: refused below */
	if (!err && h.magic == 0 && h.owner == 0) /* created, never reset: empty */
		h.nslots = 0;
	else if (!err && st.st_size > 0 &&
	         (h.magic != PJ_MAGIC || h.nslots > PJ_MAX ||
	          (size_t)st.st_size < PJ_HDR + (size_t)h.nslots * sizeof(kreq__pj_slot_t)))
		err = kreq__err(errstr, errstr_size, KREQ_ECONF,
		                "worker.poison.journal %s is not a kreq journal", path);
	if (!err && map(j, st.st_size > 0 ? h.nslots : 0))
		err = kreq__err(errstr, errstr_size, KREQ_EIO, "worker.poison.journal %s: %s", path,
		                strerror(errno));
	if (!err && h.nslots && !(j->found = calloc(h.nslots, sizeof(*j->found))))
		err = kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	for (uint32_t i = 0; !err && i < j->nslots; i++) {
		kreq__pj_slot_t *sl = slot_at(j, i);
		if (sl->used && sl->klen && sl->klen <= KREQ__DEDUP_KEY_MAX)
			j->found[j->nfound++] = sl;
	}
	j->owner = h.owner;
	j->nfree = nslots; /* the size kreq__pjournal_reset maps */
	if (err) {
		kreq__pjournal_close(j);
		return err;
	}
	*out = j;
	return KREQ_OK;
}

uint64_t kreq__pjournal_owner(const kreq__pjournal_t *j)
{
	return j->owner;
}

size_t kreq__pjournal_nslots(const kreq__pjournal_t *j)
{
	return j->nfound;
}

const kreq__pj_slot_t *kreq__pjournal_slot(const kreq__pjournal_t *j, size_t i)
{
	return i < j->nfound ? j->found[i] : NULL;
}

void kreq__pjournal_reset(kreq__pjournal_t *j, uint64_t instance)
{
	uint32_t n = j->nfree; /* the requested size (open) */
	free(j->found);
	j->found = NULL;
	j->nfound = 0;
	if (map(j, n)) { /* cannot grow the file: the journal is off (adds fail) */
		j->nfree = 0;
		return;
	}
	memset(j->map, 0, j->size);
	pj_hdr_t h = {PJ_MAGIC, n, 0, instance};
	memcpy(j->map, &h, sizeof(h));
	for (uint32_t i = 0; i < n; i++)
		j->free[i] = n - 1 - i;
	j->nfree = n;
}

uint32_t kreq__pjournal_add(kreq__pjournal_t *j, const uint8_t *key, size_t klen, int32_t partition,
                            int64_t offset, int64_t started_at_ms, uint32_t number)
{
	if (!j->nfree || !j->map || klen > KREQ__DEDUP_KEY_MAX)
		return 0;
	uint32_t i = j->free[--j->nfree];
	kreq__pj_slot_t *sl = slot_at(j, i);
	sl->number = number;
	sl->partition = partition;
	sl->klen = (uint16_t)klen;
	sl->offset = offset;
	sl->started_at_ms = started_at_ms;
	memcpy(sl->key, key, klen);
	atomic_store_explicit((_Atomic uint32_t *)&sl->used, 1, memory_order_release);
	return i + 1;
}

void kreq__pjournal_remove(kreq__pjournal_t *j, uint32_t slot)
{
	if (!slot || slot > j->nslots || !j->map)
		return;
	kreq__pj_slot_t *sl = slot_at(j, slot - 1);
	atomic_store_explicit((_Atomic uint32_t *)&sl->used, 0, memory_order_release);
	j->free[j->nfree++] = slot - 1;
}

void kreq__pjournal_close(kreq__pjournal_t *j)
{
	if (!j)
		return;
	bool empty = j->map && j->nfree == j->nslots && !j->nfound;
	if (j->map)
		munmap(j->map, j->size);
	if (j->fd >= 0) {
		if (empty)
			unlink(j->path);
		close(j->fd); /* releases the lock */
	}
	free(j->found);
	free(j->free);
	free(j->path);
	free(j);
}
