/*
 * pending_kafka.h — the Kafka view of `kreq pending` (cli/pending_kafka.c)
 * and the options of both views, which cli/pending.c parses (it also holds
 * the client view, and calls down into this one).
 */
#ifndef KREQ_CLI_PENDING_KAFKA_H
#define KREQ_CLI_PENDING_KAFKA_H

#include <stdbool.h>
#include <stddef.h>

#define TOPIC_NAME_MAX 249

enum sort_key { SORT_AGE, SORT_LEFT, SORT_METHOD, SORT_ATTEMPT };

struct pending_opts {
	const char *socket, *method;
	const char *bootstrap, *service, *prefix, *keyring;
	long timeout_ms;
	bool timeout_set;
	enum sort_key sort;
	bool json;
};

/* The Kafka view (--bootstrap): what a service still owes; an exit code. */
int cli_pending_kafka(const struct pending_opts *o);

#endif
