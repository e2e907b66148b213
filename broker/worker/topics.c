/* topics.c — see topics.h. */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "broker/worker/topics.h"
#include "common/internal.h"
#include "kreq/error.h"

uint64_t kreq__topics_hash(uint64_t seed, const char *name)
{
	size_t n = strlen(name);
	uint64_t h = seed ^ (n * 0x9e3779b97f4a7c15ULL), w;
	for (; n >= 8; n -= 8, name += 8) {
		memcpy(&w, name, 8);
		h = (h ^ w) * 0xbf58476d1ce4e5b9ULL;
		h ^= h >> 29;
	}
	w = 0;
	memcpy(&w, name, n);
	h = (h ^ w) * 0x94d049bb133111ebULL; /* the tail, then a final mix */
	h ^= h >> 32;
	h *= 0xd6e8feb86659fd93ULL;
	h ^= h >> 32;
	return h ? h : 1;
}

/* The slot holding name, or the empty slot ending its probe run. */
static size_t slot_of(const kreq__topics_t *t, uint64_t h, const char *name)
{
	size_t mask = t->nslots - 1, i = h & mask;
	while (t->slot[i].hash && !(t->slot[i].hash == h && !strcmp(t->slot[i].name, name)))
		i = (i + 1) & mask;
	return i;
}

kreq__topic_t *kreq__topics_find(const kreq__topics_t *t, const char *name)
{
	if (!t->count)
		return NULL;
	size_t i = slot_of(t, kreq__topics_hash(t->seed, name), name);
	return t->slot[i].hash ? &t->slot[i] : NULL;
}

static void entry_free(kreq__topic_t *e)
{
	for (int k = 0; k < 2; k++)
		if (e->rkt[k])
			rd_kafka_topic_destroy(e->rkt[k]);
	free(e->name);
}

void kreq__topics_clear(kreq__topics_t *t)
{
	for (size_t i = 0; i < t->nslots; i++)
		if (t->slot[i].hash)
			entry_free(&t->slot[i]);
	free(t->slot);
	*t = (kreq__topics_t){.max = t->max}; /* a new seed at the next add */
}

/* Room for one more at load <= 1/2. */
static int reserve(kreq__topics_t *t)
{
	if (t->count >= (t->max ? t->max : KREQ__TOPICS_MAX))
		kreq__topics_clear(t);
	if (!t->count) /* empty: no hash under the old seed is left */
		randombytes_buf(&t->seed, sizeof(t->seed));
	if (2 * (t->count + 1) <= t->nslots)
		return KREQ_OK;
	size_t n = t->nslots ? 2 * t->nslots : 64, mask = n - 1;
	kreq__topic_t *sl = calloc(n, sizeof(*sl));
	if (!sl)
		return KREQ_ENOMEM;
	for (size_t i = 0; i < t->nslots; i++) {
		if (!t->slot[i].hash)
			continue;
		size_t j = t->slot[i].hash & mask;
		while (sl[j].hash)
			j = (j + 1) & mask;
		sl[j] = t->slot[i];
	}
	free(t->slot);
	t->slot = sl;
	t->nslots = n;
	return KREQ_OK;
}

int kreq__topics_add(kreq__topics_t *t, const char *name, rd_kafka_t *const producer[2],
                     kreq__topic_t **out, char *errstr, size_t errstr_size)
{
	if (reserve(t))
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory for topic %s",
		                 name);
	kreq__topic_t e = {kreq__topics_hash(t->seed, name), strdup(name), {NULL, NULL}, -1, 0};
	int err = e.name ? KREQ_OK : KREQ_ENOMEM;
	for (int k = 0; k < 2 && !err; k++)
		if (producer[k] && !(e.rkt[k] = rd_kafka_topic_new(producer[k], name, NULL)))
			err = KREQ_EKAFKA;
	if (err) {
		entry_free(&e);
		return kreq__err(
		    errstr, errstr_size, err, "no producer handle for topic %s: %s", name,
		    err == KREQ_ENOMEM ? "out of memory" : rd_kafka_err2str(rd_kafka_last_error()));
	}
	size_t i = slot_of(t, e.hash, name);
	t->slot[i] = e;
	t->count++;
	*out = &t->slot[i];
	return KREQ_OK;
}

void kreq__topics_set_partitions(kreq__topic_t *e, int n, int64_t now_ns)
{
	e->partitions = n < 0 ? -1 : n;
	e->checked_ns = now_ns;
}

bool kreq__topics_recheck_due(const kreq__topic_t *e, int32_t partition, int64_t now_ns)
{
	return (e->partitions <= 0 || partition >= e->partitions) &&
	       now_ns - e->checked_ns >= KREQ__TOPIC_RECHECK_NS;
}

void kreq__topics_forget(kreq__topics_t *t, const char *name)
{
	kreq__topic_t *e = kreq__topics_find(t, name);
	if (e)
		*e = (kreq__topic_t){e->hash, e->name, {e->rkt[0], e->rkt[1]}, -1, 0};
}
