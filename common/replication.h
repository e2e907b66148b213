/*
 * replication.h — how many copies the topics kreq creates keep, and how
 * many must acknowledge a write (replication factor, min.insync.replicas).
 *
 * Why: a topic created with the Kafka broker's default replication factor
 * (1 out of the box) loses its partitions with the one Kafka broker that
 * holds them: requests, results (the dedup store) and replies become
 * unavailable, and a lost results partition silently ends deduplication.
 * kreq therefore picks its own defaults, safe on a 3-broker cluster and
 * still working on one: replication = min(3, Kafka brokers in the cluster
 * metadata), min.insync.replicas = replication - 1 (at least 1), so one
 * Kafka broker may be down while every producer (acks=all) still writes.
 * A configured value of 0 means that default, -1 the Kafka broker's own
 * default (nothing is set on the topic), N exactly N.
 */
#ifndef KREQ_COMMON_REPLICATION_H
#define KREQ_COMMON_REPLICATION_H

#include <stddef.h>

#include <librdkafka/rdkafka.h>

#define KREQ__REPLICATION_MAX_AUTO 3

/* The replication factor to create a topic with: configured (0 auto, -1
 * the Kafka broker's default, N) on a cluster of brokers Kafka brokers
 * (brokers < 1: unknown, auto then asks for the Kafka broker's default).
 * Returns -1 for "the Kafka broker's default". */
int kreq__replication_factor(int configured, int brokers);

/* min.insync.replicas for a topic of replication factor rf (-1: unknown,
 * the Kafka broker's default): configured 0 is rf - 1 (at least 1), -1
 * the Kafka broker's default, N exactly N. Returns -1 for "do not set". */
int kreq__min_insync(int configured, int rf);

/* Kafka brokers in rk's cluster metadata, or -1 if Kafka did not answer
 * within timeout_ms. */
int kreq__kafka_brokers(rd_kafka_t *rk, int timeout_ms);

/* The smallest replica count over topic's partitions per the cluster's
 * metadata: > 0, 0 if the topic does not exist, -1 if Kafka did not answer. */
int kreq__topic_replicas(rd_kafka_t *rk, const char *topic, int timeout_ms);

/* Resolves both settings against rk's cluster (one metadata request when
 * either is auto) into *rf and *isr (-1: the Kafka broker's default) and
 * appends "min.insync.replicas", value to the NULL-terminated name/value
 * list configs (room for two more entries and the NULL; isr_buf holds the
 * value) when it is to be set. Returns -1 if Kafka did not answer. */
int kreq__replication_plan(rd_kafka_t *rk, int rf_conf, int isr_conf, int timeout_ms, int *rf,
                           int *isr, const char **configs, char *isr_buf, size_t isr_size);

/* When the existing topic has fewer replicas than wanted_rf (> 0): writes
 * a warning naming it into why and returns 1; 0 when it has enough (or
 * wanted_rf is the Kafka broker's default), -1 when Kafka did not answer. */
int kreq__replication_short(rd_kafka_t *rk, const char *topic, int wanted_rf, int timeout_ms,
                            char *why, size_t why_size);

#endif
