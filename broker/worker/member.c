/*
 * member.c — how a worker takes part in its consumer group.
 *
 * Static membership (KIP-345). Each worker joins with a group.instance.id
 * (its client.id unless set): when it restarts within session.timeout.ms,
 * the group coordinator hands the same member its old partitions back with
 * no rebalance, where a dynamic member makes the whole group stop twice
 * (once when it leaves, once when it rejoins). librdkafka's
 * rd_kafka_consumer_close() of a static member sends no LeaveGroup
 * (rdkafka_cgrp.c: "Static group members must not send a LeaveGroupRequest
 * on termination"), so SIGTERM and a crash look alike to the group: the
 * partitions stay with the instance until it rejoins or its session
 * expires. A clean SIGTERM still commits what it finished before closing
 * (loop.c), so the only cost of a replica that never comes back is that
 * its partitions wait session.timeout.ms. We keep that: a restart is by
 * far the common stop, and librdkafka offers no LeaveGroup for a static
 * member (Java's AdminClient.removeMembersFromConsumerGroup is the
 * operator's tool for a permanent scale-down, or
 * worker.static.membership=false on the replica that goes away).
 *
 * One instance id, two live processes: the coordinator gives the group
 * membership to the one that joined last and answers the other
 * FENCED_INSTANCE_ID, a fatal consumer error in librdkafka. But a worker
 * also fences itself: after a Kafka broker restart its session may time
 * out, librdkafka rejoins under a new member id with the same instance id,
 * and a request of the old session then gets FENCED_INSTANCE_ID (seen in
 * test_fault's broker restart). So a fencing is met by a new consumer
 * (the state of every partition dropped and the transaction aborted, as a
 * rewind), and only the third within a minute, which a self-fencing does
 * not repeat, is taken for a second live worker with this instance id: a
 * configuration error (kreqd exits 2, which systemd does not restart, as
 * restarting it would fence the other one back). Every replica needs its
 * own client.id (already true in transactional mode, where client.id
 * names the transactional.id).
 */
#include <stdlib.h>
#include <string.h>

#include "broker/worker/worker_int.h"
#include "common/conf.h"
#include "common/internal.h"

char *kreq__member_instance_id(const kreq_conf_t *c, bool *oom)
{
	*oom = false;
	if (!kreq__conf_bool(c, KREQ__P_WORKER_STATIC_MEMBERSHIP))
		return NULL;
	const char *id = kreq__conf_str(c, KREQ__P_WORKER_GROUP_INSTANCE_ID);
	char *dup = strdup(*id ? id : kreq__conf_str(c, KREQ__P_CLIENT_ID));
	*oom = !dup;
	return dup;
}

#define KREQ__MEMBER_FENCED_MAX       3 /* fencings within the window: a duplicate */
#define KREQ__MEMBER_FENCED_WINDOW_MS 60000

void kreq__member_fatal(kreq_worker_t *s)
{
	char why[512] = "";
	rd_kafka_resp_err_t kerr = rd_kafka_fatal_error(s->consumer, why, sizeof(why));
	if (kerr != RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID) {
		kreq__loop_fatal(s, KREQ_EKAFKA, "fatal error of the group consumer: %s",
		                 *why ? why : rd_kafka_err2str(kerr));
		return;
	}
	if (s->member_fenced)
		return; /* noted already: the loop renews the consumer */
	int64_t now = kreq__now_ms();
	if (now - s->member_since_ms > KREQ__MEMBER_FENCED_WINDOW_MS) {
		s->member_since_ms = now;
		s->member_fenced_count = 0;
	}
	if (++s->member_fenced_count < KREQ__MEMBER_FENCED_MAX) {
		kreq__log(s->conf, 4, "worker",
		          "the group fenced this worker (group.instance.id %s): a new consumer "
		          "rejoins; its partitions' uncommitted work is redone",
		          s->instance_id ? s->instance_id : "");
		s->member_fenced = true;
		return;
	}
	kreq__loop_fatal(s, KREQ_ECONF,
	                 "fenced %d times within %d s in group %s: another live worker has "
	                 "group.instance.id %s (client.id %s): every replica needs its own "
	                 "client.id (or worker.group.instance.id)",
	                 s->member_fenced_count, KREQ__MEMBER_FENCED_WINDOW_MS / 1000, s->group,
	                 s->instance_id ? s->instance_id : "", s->client_id);
}
