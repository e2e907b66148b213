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
 * server.static.membership=false on the replica that goes away).
 *
 * One instance id, two live processes: the coordinator gives the group
 * membership to the one that joined last and answers the other
 * FENCED_INSTANCE_ID, a fatal consumer error in librdkafka. Restarting the
 * fenced one would fence the other back, for ever, so it is a
 * configuration error (kreqd exits 2, which systemd does not restart):
 * every replica needs its own client.id (already true in transactional
 * mode, where client.id names the transactional.id).
 */
#include <stdlib.h>
#include <string.h>

#include "broker/server_int.h"
#include "common/conf.h"

char *kreq__member_instance_id(const kreq_conf_t *c, bool *oom)
{
	*oom = false;
	if (!kreq__conf_bool(c, KREQ__P_SERVER_STATIC_MEMBERSHIP))
		return NULL;
	const char *id = kreq__conf_str(c, KREQ__P_SERVER_GROUP_INSTANCE_ID);
	char *dup = strdup(*id ? id : kreq__conf_str(c, KREQ__P_CLIENT_ID));
	*oom = !dup;
	return dup;
}

void kreq__member_fatal(kreq_server_t *s)
{
	char why[512] = "";
	rd_kafka_resp_err_t kerr = rd_kafka_fatal_error(s->consumer, why, sizeof(why));
	if (kerr == RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID)
		kreq__loop_fatal(s, KREQ_ECONF,
		                 "another live worker joined group %s with group.instance.id %s "
		                 "(client.id %s) and fenced this one: every replica needs its own "
		                 "client.id (or server.group.instance.id)",
		                 s->group, s->instance_id ? s->instance_id : "", s->client_id);
	else
		kreq__loop_fatal(s, KREQ_EKAFKA, "fatal error of the group consumer: %s",
		                 *why ? why : rd_kafka_err2str(kerr));
}
