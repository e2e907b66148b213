/*
 * topic_admin.h — the topic-administration steps the client (its reply
 * topic) and the worker (requests and results topics) need.
 */
#ifndef KREQ_COMMON_TOPIC_ADMIN_H
#define KREQ_COMMON_TOPIC_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

/* Partition count of topic per the cluster's metadata: > 0 if it exists,
 * 0 if it does not, < 0 if Kafka did not answer within timeout_ms. To only
 * ask, rk must be a consumer handle: a producer's metadata request lets the
 * broker auto-create the topic with its defaults (warming, below, asks a
 * producer on purpose). */
int kreq__topic_partitions(rd_kafka_t *rk, const char *topic, int timeout_ms);

/* Creates topic through the Admin API with the NULL-terminated name/value
 * configs (may be NULL); replication_factor -1 is the Kafka broker's default.
 * An existing topic is not an error. Returns RD_KAFKA_RESP_ERR_NO_ERROR,
 * RD_KAFKA_RESP_ERR__TIMED_OUT (no answer within timeout_ms),
 * RD_KAFKA_RESP_ERR__INVALID_ARG (bad name or count; why says which), or
 * Kafka's error. */
rd_kafka_resp_err_t kreq__topic_create(rd_kafka_t *rk, const char *topic, int partitions,
                                       int replication_factor, const char *const *configs,
                                       int timeout_ms, char *why, size_t why_size);

/* One look at a topic that was just created (or is known to exist): n >
 * 0, its partition count, once the cluster metadata shows it AND the
 * leader of each partition from *ready on answers a ListOffsets request
 * for it (on a cluster of several Kafka brokers a new topic shows in the
 * metadata of one before its partition leaders have learnt about it, and
 * they answer UNKNOWN_TOPIC_OR_PART meanwhile: a worker's dedup rebuild
 * took that for a deleted results topic and stopped). *ready (start at 0)
 * counts the partitions whose leader answered, so the next look goes on
 * from there. 0: not yet, why says what is missing; -1: Kafka did not
 * answer the metadata request. Every look asks the cluster metadata
 * afresh, which also refreshes rk's cache: a leader that moved or was not
 * known yet at the previous look is found. Bounded by about timeout_ms;
 * the caller repeats it until its own deadline. */
int kreq__topic_ready(rd_kafka_t *rk, const char *topic, int *ready, int timeout_ms, char *why,
                      size_t why_size);

/* Whether the cluster can serve CreateTopics and DeleteTopics: 1 if its
 * metadata names a controller among its Kafka brokers, 0 if not (librdkafka's
 * mock cluster, `kreq dev`, names broker 0 of brokers 1..N: an admin
 * request there waits for a controller until it times out), -1 if Kafka
 * did not answer within timeout_ms. */
int kreq__topic_admin_served(rd_kafka_t *rk, int timeout_ms);

/* Deletes topic through the Admin API; a topic that does not exist is not
 * an error. Returns as kreq__topic_create (without INVALID_ARG). */
rd_kafka_resp_err_t kreq__topic_delete(rd_kafka_t *rk, const char *topic, int timeout_ms);

/* Reads topic's configuration (DescribeConfigs): values[i] gets a copy
 * (free()) of the value of names[i] (NULL-terminated list), NULL where the
 * topic has no such entry. Returns RD_KAFKA_RESP_ERR_NO_ERROR,
 * RD_KAFKA_RESP_ERR__TIMED_OUT, RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART (no
 * such topic) or Kafka's error; on error every values[i] is NULL. */
rd_kafka_resp_err_t kreq__topic_configs(rd_kafka_t *rk, const char *topic, const char *const *names,
                                        char **values, int timeout_ms);

/*
 * Warming. librdkafka 2.0 looks up a topic a producer has not produced to
 * before only on its once-a-second scan of unknown topics
 * (confluentinc/librdkafka#3202): the first message to a new topic waits
 * 0-1 s (a new client's first call took ~0.95 s on each side). Asking for
 * the topic's metadata once (kreq__topic_partitions on the producer, which
 * may let the Kafka broker auto-create it exactly as producing to it would)
 * makes the producer know it at once, and releases what was queued for it.
 * A worker warms each output topic the first time it meets it (its table
 * of producer handles, broker/worker/topics.h); a client warms each service once
 * from its list of called services (client/health.c).
 */

#endif
