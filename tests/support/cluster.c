/* cluster.c — see cluster.h. */
#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster.h"
#include "common/topic_admin.h"
#include "common/replication.h"
#include "testsupport.h"

int kreq_test_cluster_start(kreq_test_cluster_t *c, const char *name, int nodes)
{
	setenv("KREQ_KAFKA_HEAP", "-Xms128m -Xmx384m", 0);
	memset(c, 0, sizeof(*c));
	c->nodes = nodes;
	snprintf(c->dir, sizeof(c->dir), "%s/%s-%d", KREQ_BINARY_DIR, name, (int)getpid());
	char cmd[1200];
	snprintf(cmd, sizeof(cmd), "%s/scripts/kafka.sh start --dir %s --nodes %d", KREQ_SOURCE_DIR,
	         c->dir, nodes);
	FILE *p = popen(cmd, "r");
	char line[512] = "";
	char *got = p ? fgets(line, sizeof(line), p) : NULL;
	int rc = p ? pclose(p) : -1;
	if (!got || rc != 0 || strncmp(line, "KREQ_TEST_BOOTSTRAP=", 20)) {
		fprintf(stderr, "cannot start a Kafka cluster (%s)\n", cmd);
		return -1;
	}
	line[strcspn(line, "\n")] = 0;
	snprintf(c->bootstrap, sizeof(c->bootstrap), "%s", line + 20);
	return 0;
}

int kreq_test_cluster_sh(const kreq_test_cluster_t *c, const char *cmd, const char *arg)
{
	char sh[1400];
	snprintf(sh, sizeof(sh), "%s/scripts/kafka.sh %s --dir %s %s 1>&2", KREQ_SOURCE_DIR, cmd,
	         c->dir, arg ? arg : "");
	return system(sh);
}

void kreq_test_cluster_stop(kreq_test_cluster_t *c)
{
	if (!c->dir[0])
		return;
	kreq_test_cluster_sh(c, "stop", NULL);
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", c->dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", c->dir);
	c->dir[0] = 0;
}

void kreq_test_topic_replication(const char *bootstrap, const char *topic, int *replicas,
                                 int *min_isr)
{
	char errstr[512];
	rd_kafka_conf_t *conf =
	    kreq_test_conf_new(bootstrap, "group.id", "kreq-test-describe", NULL);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	ck_assert_msg(rk != NULL, "%s", errstr);
	/* a topic just created reaches each Kafka broker's metadata in its own
	 * time: one that does not know it yet answers UNKNOWN_TOPIC_OR_PART
	 * (seen in CI, 3 brokers: to DescribeConfigs, and to Metadata, which
	 * kreq__topic_replicas() reads as 0), so that answer is asked again,
	 * bounded */
	int64_t until = kreq_test_now_ms() + 15000;
	while ((*replicas = kreq__topic_replicas(rk, topic, 10000)) == 0 &&
	       kreq_test_now_ms() < until)
		kreq_test_poll_pause();
	const char *names[] = {"min.insync.replicas", NULL};
	char *values[1] = {NULL};
	rd_kafka_resp_err_t kerr;
	while ((kerr = kreq__topic_configs(rk, topic, names, values, 10000)) ==
	           RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART &&
	       kreq_test_now_ms() < until)
		kreq_test_poll_pause();
	rd_kafka_destroy(rk);
	ck_assert_msg(*replicas >= 0, "no metadata for topic %s", topic);
	ck_assert_msg(!kerr && values[0], "DescribeConfigs %s: %s", topic, rd_kafka_err2str(kerr));
	*min_isr = atoi(values[0]);
	free(values[0]);
}
