/* topic_admin.c — see topic_admin.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/internal.h"
#include "common/topic_admin.h"

int kreq__topic_partitions(rd_kafka_t *rk, const char *topic, int timeout_ms)
{
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t kerr =
	    rkt ? rd_kafka_metadata(rk, 0, rkt, &md, timeout_ms) : RD_KAFKA_RESP_ERR__INVALID_ARG;
	int n = -1;
	if (!kerr && md->topic_cnt == 1)
		n = md->topics[0].err ? 0 : md->topics[0].partition_cnt;
	if (md)
		rd_kafka_metadata_destroy(md);
	if (rkt)
		rd_kafka_topic_destroy(rkt);
	return n;
}

/* Waits for the one topic result of a CreateTopics or DeleteTopics request
 * sent to q. */
static rd_kafka_resp_err_t topic_result(rd_kafka_queue_t *q, int timeout_ms, bool create)
{
	rd_kafka_event_t *ev = rd_kafka_queue_poll(q, timeout_ms + 1000);
	rd_kafka_resp_err_t kerr = ev ? rd_kafka_event_error(ev) : RD_KAFKA_RESP_ERR__TIMED_OUT;
	if (ev && !kerr) {
		size_t n = 0;
		const rd_kafka_topic_result_t **tr =
		    create ? rd_kafka_CreateTopics_result_topics(
		                 rd_kafka_event_CreateTopics_result(ev), &n)
		           : rd_kafka_DeleteTopics_result_topics(
		                 rd_kafka_event_DeleteTopics_result(ev), &n);
		kerr = n == 1 ? rd_kafka_topic_result_error(tr[0]) : RD_KAFKA_RESP_ERR__FAIL;
	}
	if (ev)
		rd_kafka_event_destroy(ev);
	return kerr;
}

static rd_kafka_AdminOptions_t *admin_options(rd_kafka_t *rk, int timeout_ms)
{
	rd_kafka_AdminOptions_t *ao = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_ANY);
	rd_kafka_AdminOptions_set_request_timeout(ao, timeout_ms, NULL, 0);
	rd_kafka_AdminOptions_set_operation_timeout(ao, timeout_ms, NULL, 0);
	return ao;
}

rd_kafka_resp_err_t kreq__topic_create(rd_kafka_t *rk, const char *topic, int partitions,
                                       int replication_factor, const char *const *configs,
                                       int timeout_ms, char *why, size_t why_size)
{
	rd_kafka_NewTopic_t *nt =
	    rd_kafka_NewTopic_new(topic, partitions, replication_factor, why, why_size);
	if (!nt)
		return RD_KAFKA_RESP_ERR__INVALID_ARG;
	for (; configs && *configs; configs += 2)
		rd_kafka_NewTopic_set_config(nt, configs[0], configs[1]);
	rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
	rd_kafka_AdminOptions_t *ao = admin_options(rk, timeout_ms);
	rd_kafka_CreateTopics(rk, &nt, 1, ao, q);
	rd_kafka_resp_err_t kerr = topic_result(q, timeout_ms, true);
	rd_kafka_AdminOptions_destroy(ao);
	rd_kafka_queue_destroy(q);
	rd_kafka_NewTopic_destroy(nt);
	return kerr == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS ? RD_KAFKA_RESP_ERR_NO_ERROR : kerr;
}

rd_kafka_resp_err_t kreq__topic_delete(rd_kafka_t *rk, const char *topic, int timeout_ms)
{
	rd_kafka_DeleteTopic_t *dt = rd_kafka_DeleteTopic_new(topic);
	rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
	rd_kafka_AdminOptions_t *ao = admin_options(rk, timeout_ms);
	rd_kafka_DeleteTopics(rk, &dt, 1, ao, q);
	rd_kafka_resp_err_t kerr = topic_result(q, timeout_ms, false);
	rd_kafka_AdminOptions_destroy(ao);
	rd_kafka_queue_destroy(q);
	rd_kafka_DeleteTopic_destroy(dt);
	return kerr == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ? RD_KAFKA_RESP_ERR_NO_ERROR : kerr;
}

/* Copies the entries named in names out of the one resource of a
 * DescribeConfigs result. */
static rd_kafka_resp_err_t config_values(rd_kafka_event_t *ev, const char *const *names,
                                         char **values)
{
	size_t n = 0, nc = 0;
	const rd_kafka_ConfigResource_t **rs = rd_kafka_DescribeConfigs_result_resources(
	    rd_kafka_event_DescribeConfigs_result(ev), &n);
	if (n != 1)
		return RD_KAFKA_RESP_ERR__FAIL;
	rd_kafka_resp_err_t kerr = rd_kafka_ConfigResource_error(rs[0]);
	if (kerr)
		return kerr;
	const rd_kafka_ConfigEntry_t **ce = rd_kafka_ConfigResource_configs(rs[0], &nc);
	for (size_t i = 0; i < nc; i++)
		for (size_t j = 0; names[j]; j++)
			if (!values[j] && !strcmp(rd_kafka_ConfigEntry_name(ce[i]), names[j])) {
				const char *v = rd_kafka_ConfigEntry_value(ce[i]);
				if (!(values[j] = strdup(v ? v : "")))
					return RD_KAFKA_RESP_ERR__FAIL; /* out of memory */
			}
	return RD_KAFKA_RESP_ERR_NO_ERROR;
}

rd_kafka_resp_err_t kreq__topic_configs(rd_kafka_t *rk, const char *topic, const char *const *names,
                                        char **values, int timeout_ms)
{
	size_t count = 0;
	while (names[count])
		values[count++] = NULL;
	rd_kafka_ConfigResource_t *res =
	    rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic);
	rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
	rd_kafka_AdminOptions_t *ao = admin_options(rk, timeout_ms);
	rd_kafka_DescribeConfigs(rk, &res, 1, ao, q);
	rd_kafka_event_t *ev = rd_kafka_queue_poll(q, timeout_ms + 1000);
	rd_kafka_resp_err_t kerr = ev ? rd_kafka_event_error(ev) : RD_KAFKA_RESP_ERR__TIMED_OUT;
	if (ev && !kerr)
		kerr = config_values(ev, names, values);
	if (ev)
		rd_kafka_event_destroy(ev);
	rd_kafka_AdminOptions_destroy(ao);
	rd_kafka_queue_destroy(q);
	rd_kafka_ConfigResource_destroy(res);
	for (size_t j = 0; kerr && j < count; j++) {
		free(values[j]);
		values[j] = NULL;
	}
	return kerr;
}

int kreq__topic_admin_served(rd_kafka_t *rk, int timeout_ms)
{
	const struct rd_kafka_metadata *md = NULL;
	if (rd_kafka_metadata(rk, 0, NULL, &md, timeout_ms) != RD_KAFKA_RESP_ERR_NO_ERROR)
		return -1;
	int32_t ctl = rd_kafka_controllerid(rk, 0);
	int served = 0;
	for (int i = 0; i < md->broker_cnt; i++)
		served |= md->brokers[i].id == ctl;
	rd_kafka_metadata_destroy(md);
	return served;
}

int kreq__topic_ready(rd_kafka_t *rk, const char *topic, int *ready, int timeout_ms, char *why,
                      size_t why_size)
{
	int64_t until = kreq__mono_ns() + (int64_t)timeout_ms * 1000000LL;
	int n = kreq__topic_partitions(rk, topic, timeout_ms);
	if (n <= 0) {
		snprintf(why, why_size,
		         n < 0 ? "Kafka did not answer a metadata request for it"
		               : "it is not in the cluster metadata yet");
		return n;
	}
	for (; *ready < n; ++*ready) {
		int64_t left_ms = (until - kreq__mono_ns()) / 1000000, lo, hi;
		rd_kafka_resp_err_t kerr = rd_kafka_query_watermark_offsets(
		    rk, topic, *ready, &lo, &hi, (int)(left_ms > 100 ? left_ms : 100));
		if (kerr) {
			snprintf(why, why_size, "the leader of partition %d answered: %s", *ready,
			         rd_kafka_err2str(kerr));
			return 0;
		}
	}
	return n;
}
