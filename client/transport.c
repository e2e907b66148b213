/*
 * transport.c — the client's two librdkafka handles and what they report.
 *
 * Why a file of its own: how the producer and the reply consumer are made
 * (kreq's low-latency defaults under the user's kafka. properties, the
 * message size that payload.max.bytes needs) and the callbacks librdkafka
 * runs on the service thread (delivery reports, errors, statistics) are
 * the client's whole contact with librdkafka's configuration and events;
 * what goes over the handles is send.c's and reply.c's. Delivery reports
 * settle through settle.c; "is Kafka down?" is decided here.
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "client/client_int.h"
#include "common/conf.h"
#include "common/hoptrace.h"
#include "common/internal.h"
#include "common/topic_admin.h"

#define WARM_TIMEOUT_MS 1000 /* per service, once, on the health thread */

/* ---- Kafka callbacks (run on the service thread, or in destroy) -------- */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	(void)rk;
	kreq_client_t *c = opaque;
	kreq_future_t *f = m->_private;
	if (!f)
		return; /* a cancel notice */
	kreq__call_t *call = kreq__call_of(f);
	if (m->err) {
		kreq__count(&c->metrics.send_errors);
		if (m->err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC ||
		    m->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
			char msg[128];
			snprintf(msg, sizeof(msg), "no service: %s", rd_kafka_err2str(m->err));
			kreq__settle_pending(c, call->corr_id, KREQ_EUNAVAILABLE, msg,
			                     KREQ__OUT_UNAVAILABLE);
		} /* other failures: the attempt timeout sends again */
	} else {
		kreq__hop(REQ_ACKED);
		atomic_store(&c->down_since_ms, 0);
		if (!(atomic_fetch_or_explicit(&call->flags, KREQ__CALL_ACKED,
		                               memory_order_relaxed) &
		      KREQ__CALL_ACKED)) {
			kreq__hist_observe(&c->metrics.queue_wait,
			                   (kreq__mono_ns() - call->start_ns) / 1000);
		}
	}
	kreq_future_release(f);
}

static void mark_down(kreq_client_t *c, int_fast64_t since, const char *why)
{
	int_fast64_t zero = 0;
	if (atomic_compare_exchange_strong(&c->down_since_ms, &zero, since))
		kreq__log(c->conf, 4, "client", "all Kafka brokers are down: %s", why);
}

/* "All brokers down" is decided here and in on_stats(), not by librdkafka's
 * ALL_BROKERS_DOWN alone: librdkafka 2.12.1 did not raise it at all when
 * the one Kafka broker of a cluster died (2.0.2 did at once; measured on a real
 * broker and on the mock), so a transport error only marks a suspicion
 * that the next statistics callback confirms (no broker UP) or clears. */
static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	(void)rk;
	kreq_client_t *c = opaque;
	int_fast64_t zero = 0;
	if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
		mark_down(c, kreq__mono_ms(), reason);
	else if (err == RD_KAFKA_RESP_ERR__TRANSPORT || err == RD_KAFKA_RESP_ERR__RESOLVE)
		atomic_compare_exchange_strong(&c->suspect_since_ms, &zero, kreq__mono_ms());
	else if (err == RD_KAFKA_RESP_ERR__FATAL)
		kreq__log(c->conf, 3, "client", "fatal Kafka error: %s", reason);
}

bool kreq__kafka_unavailable(kreq_client_t *c)
{
	int64_t since = atomic_load(&c->down_since_ms);
	return c->unavailable_after_ms > 0 && since != 0 &&
	       kreq__mono_ms() - since >= c->unavailable_after_ms;
}

/* librdkafka statistics (statistics.interval.ms, 1 s by default here),
 * read only while Kafka is suspected or known down: any Kafka broker connection
 * (other than librdkafka's internal one) in state UP means Kafka is
 * reachable, even when no call is being made; none UP confirms a suspicion
 * from on_error(), dated from its first transport error. */
static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
	(void)rk;
	kreq_client_t *c = opaque;
	int_fast64_t down = atomic_load(&c->down_since_ms);
	int_fast64_t suspect = atomic_load(&c->suspect_since_ms);
	if (down == 0 && suspect == 0)
		return 0;
	json_t *root = json_loadb(json, len, 0, NULL);
	json_t *brokers = json_object_get(root, "brokers"), *b;
	const char *name;
	bool up = false;
	json_object_foreach(brokers, name, b)
	{
		const char *state = json_string_value(json_object_get(b, "state"));
		const char *source = json_string_value(json_object_get(b, "source"));
		up = up ||
		     (state && !strcmp(state, "UP") && !(source && !strcmp(source, "internal")));
	}
	json_decref(root);
	atomic_store(&c->suspect_since_ms, 0);
	if (up && down != 0) {
		atomic_store(&c->down_since_ms, 0);
		kreq__log(c->conf, 5, "client", "Kafka reachable again");
	} else if (!up && suspect != 0) {
		mark_down(c, suspect, "no Kafka broker connection is up");
	}
	return 0; /* librdkafka frees json */
}

/* ---- the handles -------------------------------------------------------- */

static int set_all(rd_kafka_conf_t *rc, const char *const *kv, char *errstr, size_t errstr_size)
{
	for (; *kv; kv += 2)
		if (rd_kafka_conf_set(rc, kv[0], kv[1], errstr, errstr_size) != RD_KAFKA_CONF_OK)
			return KREQ_ECONF;
	return KREQ_OK;
}

/* Low-latency defaults (documented in docs/CONFIGURATION.md); any of them
 * can be overridden with a kafka.-prefixed property. */
#define KREQ__KV(name, value, why) name, value,
static const char *const producer_defaults[] = {KREQ__KAFKA_PRODUCER_DEFAULTS(KREQ__KV) NULL};
static const char *const consumer_defaults[] = {KREQ__KAFKA_CONSUMER_DEFAULTS(KREQ__KV) NULL};
#undef KREQ__KV

rd_kafka_t *kreq__transport_new(kreq_client_t *c, rd_kafka_type_t type, char *errstr,
                                size_t errstr_size)
{
	rd_kafka_conf_t *rc = rd_kafka_conf_new();
	char why[512] = "";
	bool producer = type == RD_KAFKA_PRODUCER;
	int err = set_all(rc, producer ? producer_defaults : consumer_defaults, why, sizeof(why));
	char mmax[24]; /* room for payload.max.bytes plus overhead (proto/envelope.h) */
	snprintf(mmax, sizeof(mmax), "%lld", (long long)kreq__limits_message_max(c->conf));
	if (!err && producer)
		err = rd_kafka_conf_set(rc, "message.max.bytes", mmax, why, sizeof(why)) !=
		      RD_KAFKA_CONF_OK;
	if (!err && !producer) {
		char gid[400];
		snprintf(gid, sizeof(gid), "%s.reply.%s", c->topic_prefix, c->client_id);
		err = rd_kafka_conf_set(rc, "group.id", gid, why, sizeof(why)) != RD_KAFKA_CONF_OK;
	}
	if (!err)
		err = kreq__conf_kafka_apply(c->conf, rc, why, sizeof(why));
	if (err) {
		rd_kafka_conf_destroy(rc);
		kreq__err(errstr, errstr_size, KREQ_ECONF, "Kafka configuration: %s", why);
		return NULL;
	}
	rd_kafka_conf_set_opaque(rc, c);
	rd_kafka_conf_set_error_cb(rc, on_error);
	if (producer) {
		rd_kafka_conf_set_dr_msg_cb(rc, on_delivery);
		rd_kafka_conf_set_stats_cb(rc, on_stats);
	}
	rd_kafka_t *rk = rd_kafka_new(type, rc, why, sizeof(why));
	if (!rk) {
		rd_kafka_conf_destroy(rc);
		kreq__err(errstr, errstr_size, KREQ_EKAFKA, "cannot create Kafka %s: %s",
		          producer ? "producer" : "consumer", why);
	}
	return rk;
}

/* ---- warming (health.c) ------------------------------------------------- */

void kreq__warm_service(kreq_client_t *c, const char *service)
{
	char topic[320];
	kreq__service_topic(c, service, (int)strlen(service), topic, sizeof(topic));
	if (kreq__topic_partitions(c->producer, topic, WARM_TIMEOUT_MS) < 0)
		kreq__log(c->conf, 5, "client",
		          "no metadata for %s yet: the first call may wait for librdkafka's own "
		          "lookup",
		          topic);
}
