/* replication.c — see replication.h. */
#include <stdio.h>

#include "common/replication.h"

int kreq__replication_factor(int configured, int brokers)
{
	if (configured != 0)
		return configured < 0 ? -1 : configured;
	if (brokers < 1)
		return -1;
	return brokers < KREQ__REPLICATION_MAX_AUTO ? brokers : KREQ__REPLICATION_MAX_AUTO;
}

int kreq__min_insync(int configured, int rf)
{
	if (configured != 0)
		return configured < 0 ? -1 : configured;
	if (rf < 1)
		return -1;
	return rf > 1 ? rf - 1 : 1;
}

int kreq__kafka_brokers(rd_kafka_t *rk, int timeout_ms)
{
	const struct rd_kafka_metadata *md = NULL;
	if (rd_kafka_metadata(rk, 0, NULL, &md, timeout_ms) != RD_KAFKA_RESP_ERR_NO_ERROR)
		return -1;
	int n = md->broker_cnt;
	rd_kafka_metadata_destroy(md);
	return n;
}

int kreq__topic_replicas(rd_kafka_t *rk, const char *topic, int timeout_ms)
{
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t kerr =
	    rkt ? rd_kafka_metadata(rk, 0, rkt, &md, timeout_ms) : RD_KAFKA_RESP_ERR__INVALID_ARG;
	int n = -1;
	if (!kerr && md->topic_cnt == 1) {
		const struct rd_kafka_metadata_topic *t = &md->topics[0];
		n = 0;
		for (int i = 0; !t->err && i < t->partition_cnt; i++)
			if (n == 0 || t->partitions[i].replica_cnt < n)
				n = t->partitions[i].replica_cnt;
	}
	if (md)
		rd_kafka_metadata_destroy(md);
	if (rkt)
		rd_kafka_topic_destroy(rkt);
	return n;
}

int kreq__replication_plan(rd_kafka_t *rk, int rf_conf, int isr_conf, int timeout_ms, int *rf,
                           int *isr, const char **configs, char *isr_buf, size_t isr_size)
{
	int brokers = 0;
	if ((rf_conf == 0 || isr_conf == 0) && (brokers = kreq__kafka_brokers(rk, timeout_ms)) < 0)
		return -1;
	*rf = kreq__replication_factor(rf_conf, brokers);
	*isr = kreq__min_insync(isr_conf, *rf);
	if (*isr > 0) {
		size_t n = 0;
		while (configs[n])
			n++;
		snprintf(isr_buf, isr_size, "%d", *isr);
		configs[n] = "min.insync.replicas";
		configs[n + 1] = isr_buf;
		configs[n + 2] = NULL;
	}
	return 0;
}

int kreq__replication_short(rd_kafka_t *rk, const char *topic, int wanted_rf, int timeout_ms,
                            char *why, size_t why_size)
{
	if (wanted_rf <= 0)
		return 0;
	int have = kreq__topic_replicas(rk, topic, timeout_ms);
	if (have < 0)
		return -1;
	if (have == 0 || have >= wanted_rf)
		return 0;
	snprintf(why, why_size,
	         "topic %s has %d replica%s per partition, fewer than the configured "
	         "replication factor %d: losing a Kafka broker may make it unavailable or lose "
	         "its records (raise it with kafka-reassign-partitions; docs/operations.md)",
	         topic, have, have == 1 ? "" : "s", wanted_rf);
	return 1;
}
