/* health.c — see health.h. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/client_int.h"
#include "client/health.h"
#include "common/conf.h"
#include "common/internal.h"

#define MAX_SERVICES    1024
#define INDEX_SLOTS     2048 /* power of two, twice MAX_SERVICES: short probes */
#define LIST_TIMEOUT_MS 5000

typedef struct svc {
	char name[KREQ__METHOD_MAX + 1];
	size_t len;
	uint32_t hash;
	_Atomic bool down;     /* written by the health thread, read by callers */
	int64_t next_check_ms; /* under mu */
	bool warmed;           /* its request topic was looked up (kreq__warm_service); under mu */
} svc_t;

struct kreq__health {
	kreq_client_t *c;
	int64_t interval_ms;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv; /* CLOCK_MONOTONIC */
	bool stop;
	size_t n;          /* under mu */
	_Atomic bool full; /* n == MAX_SERVICES: new services go unchecked */
	/* open-addressed index of svcs: 0 empty, else index + 1. A slot and
	 * the entry it names are written once, under mu, entry first; readers
	 * take no lock (acquire load of the slot). */
	_Atomic uint16_t index[INDEX_SLOTS];
	svc_t svcs[MAX_SERVICES];
};

static int64_t mono_ms(void)
{
	return kreq__mono_ns() / 1000000;
}

static size_t service_len(const char *method)
{
	const char *dot = strrchr(method, '.');
	return dot ? (size_t)(dot - method) : strlen(method);
}

static uint32_t name_hash(const char *name, size_t len)
{
	uint32_t x = 2166136261u; /* FNV-1a */
	for (size_t i = 0; i < len; i++)
		x = (x ^ (unsigned char)name[i]) * 16777619u;
	return x;
}

/* The entry of service name[0..len), or NULL with *empty set to the slot
 * where it would go. Lock-free; terminates because at most half the slots
 * are ever used. */
static svc_t *find(kreq__health_t *h, const char *name, size_t len, uint32_t hash, size_t *empty)
{
	for (size_t i = hash & (INDEX_SLOTS - 1);; i = (i + 1) & (INDEX_SLOTS - 1)) {
		uint16_t v = atomic_load_explicit(&h->index[i], memory_order_acquire);
		if (!v) {
			*empty = i;
			return NULL;
		}
		svc_t *s = &h->svcs[v - 1];
		if (s->hash == hash && s->len == len && !memcmp(s->name, name, len))
			return s;
	}
}

/* Registers a new service and wakes the thread for its first check; NULL
 * when the table is full (the service goes unchecked). */
static svc_t *add(kreq__health_t *h, const char *name, size_t len, uint32_t hash)
{
	size_t slot;
	pthread_mutex_lock(&h->mu);
	svc_t *s = find(h, name, len, hash, &slot); /* again: another caller may have won */
	if (!s && h->n < MAX_SERVICES) {
		s = &h->svcs[h->n];
		memcpy(s->name, name, len);
		s->name[len] = '\0';
		s->len = len;
		s->hash = hash;
		atomic_init(&s->down, false);
		s->next_check_ms = 0;
		s->warmed = false;
		atomic_store_explicit(&h->index[slot], (uint16_t)(++h->n), memory_order_release);
		atomic_store_explicit(&h->full, h->n == MAX_SERVICES, memory_order_relaxed);
		pthread_cond_signal(&h->cv);
	}
	pthread_mutex_unlock(&h->mu);
	return s;
}

bool kreq__health_admit(kreq__health_t *h, const char *method)
{
	if (!h)
		return true;
	size_t len = service_len(method), slot;
	uint32_t hash = name_hash(method, len);
	svc_t *s = find(h, method, len, hash, &slot);
	if (!s && !atomic_load_explicit(&h->full, memory_order_relaxed))
		s = add(h, method, len, hash);
	return !s || !atomic_load_explicit(&s->down, memory_order_relaxed);
}

/* true if the service's group has a member, or if Kafka could not say
 * (unreachable Kafka is handled by unavailable.after.ms, not here). */
static bool served(kreq__health_t *h, const char *service)
{
	kreq_client_t *c = h->c;
	char group[KREQ__METHOD_MAX + 128];
	snprintf(group, sizeof(group), "%s.%s", c->topic_prefix, service);
	const struct rd_kafka_group_list *gl = NULL;
	rd_kafka_resp_err_t err = rd_kafka_list_groups(c->producer, group, &gl, LIST_TIMEOUT_MS);
	if (err)
		return true;
	bool yes = true;
	if (gl->group_cnt == 0) {
		yes = false;
	} else {
		const struct rd_kafka_group_info *g = &gl->groups[0];
		yes =
		    (g->err && g->err != RD_KAFKA_RESP_ERR_GROUP_ID_NOT_FOUND) || g->member_cnt > 0;
	}
	rd_kafka_group_list_destroy(gl);
	return yes;
}

/* A service whose request topic is still to be looked up (copied into
 * name, marked done), or false. Called with mu held. */
static bool next_unwarmed(kreq__health_t *h, char *name)
{
	for (size_t i = 0; i < h->n; i++)
		if (!h->svcs[i].warmed) {
			h->svcs[i].warmed = true;
			strcpy(name, h->svcs[i].name);
			return true;
		}
	return false;
}

/* Next service due for a check (copied into name), or false with *wait_ms
 * set to how long until one is due. Called with mu held. */
static bool next_due(kreq__health_t *h, char *name, int64_t *wait_ms)
{
	int64_t now = mono_ms(), soonest = INT64_MAX;
	for (size_t i = 0; h->interval_ms > 0 && i < h->n; i++) {
		if (h->svcs[i].next_check_ms <= now) {
			h->svcs[i].next_check_ms = now + h->interval_ms;
			strcpy(name, h->svcs[i].name);
			return true;
		}
		if (h->svcs[i].next_check_ms < soonest)
			soonest = h->svcs[i].next_check_ms;
	}
	*wait_ms = soonest == INT64_MAX ? 60000 : soonest - now;
	return false;
}

void kreq__health_record(kreq__health_t *h, const char *name, bool up)
{
	kreq_client_t *c = h->c;
	size_t len = strlen(name), slot;
	svc_t *s = find(h, name, len, name_hash(name, len), &slot);
	if (!s)
		return;
	bool was_down = atomic_exchange_explicit(&s->down, !up, memory_order_relaxed);
	if (!up) {
		char msg[KREQ__METHOD_MAX + 160];
		snprintf(msg, sizeof(msg),
		         "no worker serves %s: consumer group %s.%s has no members", name,
		         c->topic_prefix, name);
		size_t n = kreq__client_fail_service(c, name, msg);
		if (!was_down)
			kreq__log(c->conf, 4, "client", "%s (%zu pending calls failed)", msg, n);
	} else if (was_down) {
		kreq__log(c->conf, 5, "client", "service %s has workers again", name);
	}
}

static void *health_main(void *arg)
{
	kreq__health_t *h = arg;
	char name[KREQ__METHOD_MAX + 1];
	pthread_mutex_lock(&h->mu);
	while (!h->stop) {
		int64_t wait_ms;
		if (next_unwarmed(h, name)) {
			pthread_mutex_unlock(&h->mu);
			kreq__warm_service(h->c, name);
			pthread_mutex_lock(&h->mu);
			continue;
		}
		if (!next_due(h, name, &wait_ms)) {
			struct timespec ts;
			clock_gettime(CLOCK_MONOTONIC, &ts);
			int64_t ns = ts.tv_nsec + (wait_ms % 1000) * 1000000;
			ts.tv_sec += wait_ms / 1000 + ns / 1000000000;
			ts.tv_nsec = ns % 1000000000;
			pthread_cond_timedwait(&h->cv, &h->mu, &ts);
			continue;
		}
		pthread_mutex_unlock(&h->mu);
		kreq__health_record(h, name, served(h, name));
		pthread_mutex_lock(&h->mu);
	}
	pthread_mutex_unlock(&h->mu);
	return NULL;
}

kreq__health_t *kreq__health_start(kreq_client_t *c, int64_t interval_ms)
{
	kreq__health_t *h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->c = c;
	h->interval_ms = interval_ms;
	pthread_mutex_init(&h->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&h->cv, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&h->thread, NULL, health_main, h) != 0) {
		pthread_cond_destroy(&h->cv);
		pthread_mutex_destroy(&h->mu);
		free(h);
		return NULL;
	}
	pthread_setname_np(h->thread, "kreq:health");
	return h;
}

void kreq__health_stop(kreq__health_t *h)
{
	if (!h)
		return;
	pthread_mutex_lock(&h->mu);
	h->stop = true;
	pthread_cond_signal(&h->cv);
	pthread_mutex_unlock(&h->mu);
	pthread_join(h->thread, NULL); /* at most one list_groups or warming timeout */
	pthread_cond_destroy(&h->cv);
	pthread_mutex_destroy(&h->mu);
	free(h);
}
