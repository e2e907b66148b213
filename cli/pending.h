/*
 * pending.h — what the two views of `kreq pending` share: the options
 * (parsed in cli/pending.c, which holds the client view) and the duration
 * format the Kafka view (cli/pending_kafka.c) also uses.
 */
#ifndef KREQ_CLI_PENDING_H
#define KREQ_CLI_PENDING_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

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

/* A duration in ms as the tables show it ("1.2s", "3m04s", ...). */
void cli_pending_fmt_ms(json_int_t ms, char *buf, size_t size);

/* The Kafka view (--bootstrap): what a service still owes; an exit code. */
int cli_pending_kafka(const struct pending_opts *o);

#endif
