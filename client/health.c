/* health.c — see health.h. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/client_int.h"
#include "client/health.h"
#include "common/conf.h"
#include "common/internal.h"

#define MAX_SERVICES    1024
#define LIST_TIMEOUT_MS 5000

typedef struct svc {
	char name[KREQ__METHOD_MAX + 1];
	int64_t next_check_ms;
	bool down;
	bool warmed; /* its request topic was looked up (kreq__warm_service) */
} svc_t;

struct kreq__health {
	kreq_client_t *c;
	int64_t interval_ms;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv; /* CLOCK_MONOTONIC */
	bool stop;
	size_t n;
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

static svc_t *find(kreq__health_t *h, const char *name, size_t len)
{
	for (size_t i = 0; i < h->n; i++)
		if (strlen(h->svcs[i].name) == len && !memcmp(h->svcs[i].name, name, len))
			return &h->svcs[i];
	return NULL;
}

bool kreq__health_admit(kreq__health_t *h, const char *method)
{
	if (!h)
		return true;
	size_t len = service_len(method);
	pthread_mutex_lock(&h->mu);
	svc_t *s = find(h, method, len);
	if (!s && h->n < MAX_SERVICES) { /* beyond the cap services go unchecked */
		s = &h->svcs[h->n++];
		memcpy(s->name, method, len);
		s->name[len] = '\0';
		s->next_check_ms = 0;
		s->down = false;
		s->warmed = false;
		pthread_cond_signal(&h->cv);
	}
	bool ok = !s || !s->down;
	pthread_mutex_unlock(&h->mu);
	return ok;
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

static void record(kreq__health_t *h, const char *name, bool up)
{
	kreq_client_t *c = h->c;
	pthread_mutex_lock(&h->mu);
	svc_t *s = find(h, name, strlen(name));
	bool was_down = s && s->down;
	if (s)
		s->down = !up;
	pthread_mutex_unlock(&h->mu);
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
	pthread_setname_np(pthread_self(), "kreq:health");
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
		record(h, name, served(h, name));
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
