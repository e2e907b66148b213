/*
 * cluster.h — a real Kafka cluster of a test's own (scripts/kafka.sh in a
 * directory under the build tree), and what the tests ask of its topics.
 *
 * Why: the multi-broker fault tests kill and stop Kafka brokers, which
 * must never touch the shared broker of the other suites; and the
 * replication checks read what a topic really got (replica count per the
 * cluster's metadata, min.insync.replicas per DescribeConfigs), not what
 * kreq meant to ask for.
 */
#ifndef KREQ_TEST_CLUSTER_H
#define KREQ_TEST_CLUSTER_H

typedef struct kreq_test_cluster {
	char dir[512];
	char bootstrap[512];
	int nodes;
} kreq_test_cluster_t;

/* Starts a fresh cluster of nodes (1 or 3) Kafka brokers in
 * <build>/<name>-<pid> (KREQ_KAFKA_HEAP defaults to a small heap). Returns
 * 0, or -1 (said on stderr; no JVM left running; c->bootstrap empty).
 * Needs no running test: a suite may start it before its tests. */
int kreq_test_cluster_start(kreq_test_cluster_t *c, const char *name, int nodes);

/* scripts/kafka.sh cmd --dir <c's dir> [arg]; returns its exit status. */
int kreq_test_cluster_sh(const kreq_test_cluster_t *c, const char *cmd, const char *arg);

/* Stops every node and deletes the directory; safe to call twice and on a
 * cluster that did not start. */
void kreq_test_cluster_stop(kreq_test_cluster_t *c);

/* The replication topic got on the cluster at bootstrap: *replicas the
 * smallest replica count over its partitions, *min_isr its
 * min.insync.replicas (the effective value, topic or Kafka broker
 * default). Fails the test if Kafka does not answer. */
void kreq_test_topic_replication(const char *bootstrap, const char *topic, int *replicas,
                                 int *min_isr);

#endif
