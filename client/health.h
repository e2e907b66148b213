/*
 * health.h — is anybody serving this service? (service.check.ms)
 *
 * Workers of a service form the consumer group <topic.prefix>.<service>.
 * One health thread per client lists that group (librdkafka ListGroups +
 * DescribeGroups, a blocking call: hence a thread of its own, never the
 * service thread) for every service the client has called: immediately the
 * first time, then every service.check.ms. A service whose group has no
 * member is marked down: its pending calls fail with KREQ_EUNAVAILABLE and
 * new calls are refused at once, until a check finds a member again.
 *
 * The same thread, first, warms each new service's request topic
 * (kreq__warm_service, client/client_int.h): without it the first call to a
 * service waited up to a second for librdkafka to look the topic up. It
 * runs with service.check.ms = 0 too (then only warming).
 */
#ifndef KREQ_CLIENT_HEALTH_H
#define KREQ_CLIENT_HEALTH_H

#include <stdbool.h>

#include "kreq/client.h"

typedef struct kreq__health kreq__health_t;

/* Starts the thread (interval_ms 0: no group checks, warming only); NULL
 * on error. */
kreq__health_t *kreq__health_start(kreq_client_t *c, int64_t interval_ms);
void kreq__health_stop(kreq__health_t *h);

/* Called for every call: registers the method's service (waking the thread
 * for its first check) and returns false if the service is known to have no
 * worker. Takes no lock for a known service (a lock-free lookup in an
 * open-addressed index); the first call of a new service takes the
 * thread's mutex to register it. At most 1024 services are tracked; calls of
 * further services are admitted unchecked. Any thread. */
bool kreq__health_admit(kreq__health_t *h, const char *method);

/* Records a check's result for service (the thread calls it after each
 * check; tests call it directly): down fails the service's pending calls
 * and refuses new ones, up admits them again. An unknown service is
 * ignored. Any thread. */
void kreq__health_record(kreq__health_t *h, const char *service, bool up);

#endif
