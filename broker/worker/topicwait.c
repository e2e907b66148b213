/*
 * topicwait.c — waiting for Kafka to show a topic: its partition count
 * while Kafka does not answer (a Kafka broker restarting, an overloaded
 * host), and a topic just created until its partition leaders serve it.
 * Both are bounded by worker.start.timeout.ms and fail the loop
 * (fatal.c) naming the cause. Loop thread, start-up and assignments.
 *
 * Why a file of its own: the Kafka objects (kafka.c), the rebuild and
 * poison requests all wait for their topics this way; kept in kafka.c,
 * which also starts the other two, the wait made them call back up.
 * The metadata requests themselves are common/topic_admin.h's.
 */
#include <stdbool.h>
#include <time.h>

#include "broker/worker/worker_int.h"
#include "common/conf.h"
#include "common/internal.h"
#include "common/topic_admin.h"

int64_t kreq__topic_wait_ms(const kreq_worker_t *s, bool serving, const char **name)
{
	*name = serving ? "worker.dedup.rebuild.timeout.ms" : "worker.start.timeout.ms";
	return kreq__conf_int(s->conf, serving ? KREQ__P_WORKER_REBUILD_TIMEOUT_MS
	                                       : KREQ__P_WORKER_START_TIMEOUT_MS);
}

int kreq__look_ms(int64_t until_ns, int max_ms)
{
	int64_t left = (until_ns - kreq__mono_ns()) / 1000000;
	return (int)(left < 100 ? 100 : left > max_ms ? max_ms : left);
}

bool kreq__kafka_transient(rd_kafka_resp_err_t e)
{
	switch (e) {
	case RD_KAFKA_RESP_ERR_FENCED_LEADER_EPOCH:
	case RD_KAFKA_RESP_ERR_UNKNOWN_LEADER_EPOCH:
	case RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION:
	case RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE:
	case RD_KAFKA_RESP_ERR_REPLICA_NOT_AVAILABLE:
	case RD_KAFKA_RESP_ERR_OFFSET_NOT_AVAILABLE:
	case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
	case RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS:
	case RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE:
	case RD_KAFKA_RESP_ERR_NOT_COORDINATOR:
	case RD_KAFKA_RESP_ERR_NOT_CONTROLLER:
	case RD_KAFKA_RESP_ERR_BROKER_NOT_AVAILABLE:
	case RD_KAFKA_RESP_ERR__TIMED_OUT:
	case RD_KAFKA_RESP_ERR__TRANSPORT:
	case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
	case RD_KAFKA_RESP_ERR__WAIT_COORD:
		return true;
	default:
		return false;
	}
}

/* topic's partition count (0: no such topic), asked again while Kafka
 * does not answer (a Kafka broker stopping or restarting, an overloaded
 * host), and while the topic reads as missing if exists (just created,
 * or known to exist), until kreq__topic_wait_ms() from now or a stop.
 * A lookup that failed is an unavailable Kafka, never a partition count:
 * -1 then, the loop failed with KREQ_EUNAVAILABLE (kreqd exits 1, which
 * its supervisor restarts). A topic still missing returns 0, not fatal. */
int kreq__topic_partitions_await(kreq_worker_t *s, const char *topic, bool exists, bool serving)
{
	const char *bound;
	int64_t tmo = kreq__topic_wait_ms(s, serving, &bound);
	int64_t now = kreq__mono_ns(), until = now + tmo * 1000000LL;
	bool logged = false;
	int n;
	for (;;) {
		n = kreq__topic_partitions(s->reader, topic, kreq__look_ms(until, 5000));
		if (n > 0 || (n == 0 && !exists) || atomic_load(&s->stop) ||
		    (now = kreq__mono_ns()) >= until)
			break;
		if (n < 0 && !logged) {
			logged = true;
			kreq__log(s->conf, 4, "worker",
			          "Kafka did not answer a metadata request for topic %s: asking "
			          "again for up to %s (%lld ms)",
			          topic, bound, (long long)tmo);
		}
		/* backoff: a refused connection may fail the lookup at once */
		nanosleep(&(struct timespec){.tv_nsec = 100000000}, NULL);
	}
	if (n < 0)
		kreq__loop_fatal(s, KREQ_EUNAVAILABLE,
		                 "Kafka did not answer a metadata request for topic %s within "
		                 "%s (%lld ms; is kafka.bootstrap.servers right?)",
		                 topic, bound, (long long)tmo);
	return n;
}

/* A topic the worker just created (or found missing although it exists):
 * its partition count once Kafka shows it and its partition leaders know
 * it (common/topic_admin.h), looked at again every 100 ms, each look asking the
 * cluster metadata afresh, within worker.start.timeout.ms in all. Why:
 * on a cluster that is healing (a Kafka broker just restarted, catching
 * up, on a loaded host) a new topic can take seconds to be served. The
 * wait this replaces had two phases of the full timeout each (metadata,
 * then leaders: up to twice worker.start.timeout.ms), gave each leader's
 * ListOffsets 1 s however slow the Kafka broker was, and gave up saying
 * only "did not become available" (issue 17, test_cluster3). Each look
 * here has up to 5 s; what is still missing is logged after
 * worker.start.timeout.ms / 4 and named when it gives up. */
int kreq__topic_await_ready(kreq_worker_t *s, const char *topic)
{
	int64_t tmo = kreq__conf_int(s->conf, KREQ__P_WORKER_START_TIMEOUT_MS);
	int64_t t0 = kreq__mono_ns(), now = t0, until = t0 + tmo * 1000000LL;
	char why[300] = "";
	bool warned = false;
	int ready = 0, n;
	for (;;) {
		n = kreq__topic_ready(s->reader, topic, &ready, kreq__look_ms(until, 5000), why,
		                      sizeof(why));
		if (n > 0 || atomic_load(&s->stop) || (now = kreq__mono_ns()) >= until)
			break;
		if (!warned && now - t0 >= tmo * 250000LL) {
			warned = true;
			kreq__log(s->conf, 4, "worker",
			          "topic %s is not available yet (%s): waiting for it up to "
			          "worker.start.timeout.ms (%lld ms)",
			          topic, why, (long long)tmo);
		}
		nanosleep(&(struct timespec){.tv_nsec = 100000000}, NULL);
	}
	if (n > 0)
		return n;
	kreq__loop_fatal(s, KREQ_EKAFKA,
	                 "topic %s did not become available within worker.start.timeout.ms "
	                 "(%lld ms): %s",
	                 topic, (long long)tmo, why);
	return -1;
}
