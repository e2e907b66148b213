/* responder.c — see responder.h. */
#include <check.h>
#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "common/internal.h"
#include "proto/envelope.h"
#include "responder.h"
#include "testsupport.h"

#define MAX_KINDS   16
#define MAX_DELAYED 256

typedef struct delayed {
	int64_t due_ms;
	kreq__opened_t op; /* owned: the request, op.u.req */
} delayed_t;

struct responder {
	pthread_t thread;
	atomic_bool stop;
	rd_kafka_t *consumer, *producer;
	kreq_keyring_t *kr, *rogue;
	kreq__limits_t lim;
	int delay_ms;
	pthread_mutex_t mu;
	char kinds[MAX_KINDS][32];
	int requests[MAX_KINDS], max_attempt[MAX_KINDS];
	int cancels;
	delayed_t delayed[MAX_DELAYED];
	int n_delayed;
};

static const char *suffix(const char *method)
{
	const char *dot = strrchr(method, '.');
	return dot ? dot + 1 : method;
}

static int kind_index(responder_t *r, const char *sfx)
{
	for (int i = 0; i < MAX_KINDS; i++) {
		if (!r->kinds[i][0])
			snprintf(r->kinds[i], sizeof(r->kinds[i]), "%s", sfx);
		if (!strcmp(r->kinds[i], sfx))
			return i;
	}
	return MAX_KINDS - 1;
}

static void reply(responder_t *r, const Kreq__Request *q, int32_t status, const char *error,
                  kreq_keyring_t *kr, bool wrong_idem)
{
	Kreq__Reply m = KREQ__REPLY__INIT;
	m.correlation_id = q->correlation_id;
	m.idempotency_key =
	    wrong_idem ? (ProtobufCBinaryData){5, (uint8_t *)"other"} : q->idempotency_key;
	m.status = status;
	m.error = (char *)error;
	if (status == 0)
		m.payload = q->payload;
	m.issued_at_ms = kreq__now_ms();
	m.deadline_ms = q->deadline_ms > m.issued_at_ms ? q->deadline_ms : m.issued_at_ms;
	m.attempt = q->attempt;
	uint8_t *buf;
	size_t len;
	ck_assert_int_eq(
	    kreq__envelope_seal(kr, &r->lim, KREQ__KIND_REPLY, &m.base, &buf, &len, NULL, 0),
	    KREQ_OK);
	ck_assert_int_eq(
	    rd_kafka_producev(r->producer, RD_KAFKA_V_TOPIC(q->reply_topic),
	                      RD_KAFKA_V_PARTITION(q->reply_partition), RD_KAFKA_V_VALUE(buf, len),
	                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE), RD_KAFKA_V_END),
	    0);
}

/* Returns true if the request was kept (moved out of o) for a delayed
 * answer. */
static bool handle(responder_t *r, kreq__opened_t *o)
{
	Kreq__Request *q = o->u.req;
	const char *k = suffix(q->method);
	pthread_mutex_lock(&r->mu);
	int i = kind_index(r, k);
	r->requests[i]++;
	if ((int)q->attempt > r->max_attempt[i])
		r->max_attempt[i] = (int)q->attempt;
	pthread_mutex_unlock(&r->mu);
	if (!strcmp(k, "echo") || (!strcmp(k, "drop1") && q->attempt > 1)) {
		reply(r, q, 0, "", r->kr, false);
	} else if (!strcmp(k, "fail")) {
		reply(r, q, 101, "handler failed", r->kr, false);
	} else if (!strcmp(k, "rejected")) {
		reply(r, q, 5, "method not permitted for this key", r->kr, false);
	} else if (!strcmp(k, "forge")) {
		reply(r, q, 0, "", r->rogue, false);
	} else if (!strcmp(k, "wrongidem")) {
		reply(r, q, 0, "", r->kr, true);
	} else if (!strcmp(k, "dup")) {
		reply(r, q, 0, "", r->kr, false);
		reply(r, q, 0, "", r->kr, false);
	} else if (!strcmp(k, "slow") && r->n_delayed < MAX_DELAYED) {
		r->delayed[r->n_delayed++] = (delayed_t){kreq__now_ms() + r->delay_ms, *o};
		memset(o, 0, sizeof(*o));
		return true;
	}
	return false;
}

static void run_delayed(responder_t *r)
{
	int64_t now = kreq__now_ms();
	for (int i = 0; i < r->n_delayed;) {
		if (r->delayed[i].due_ms > now) {
			i++;
			continue;
		}
		reply(r, r->delayed[i].op.u.req, 0, "", r->kr, false);
		kreq__opened_clear(&r->delayed[i].op);
		r->delayed[i] = r->delayed[--r->n_delayed];
	}
}

static void on_record(responder_t *r, const rd_kafka_message_t *m)
{
	kreq__opened_t o;
	if (kreq__envelope_open(r->kr, &r->lim, kreq__now_ms(), m->payload, m->len, &o, NULL, 0) !=
	    KREQ_OK)
		return;
	if (o.kind == KREQ__KIND_CANCEL) {
		pthread_mutex_lock(&r->mu);
		r->cancels++;
		pthread_mutex_unlock(&r->mu);
	} else if (o.kind == KREQ__KIND_REQUEST) {
		handle(r, &o); /* may keep it in the delayed list */
	}
	kreq__opened_clear(&o);
}

static void *loop(void *arg)
{
	responder_t *r = arg;
	while (!atomic_load(&r->stop)) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(r->consumer, 20);
		if (m) {
			if (!m->err)
				on_record(r, m);
			rd_kafka_message_destroy(m);
		}
		run_delayed(r);
		rd_kafka_poll(r->producer, 0);
	}
	return NULL;
}

responder_t *responder_start(const char *bootstrap, const char *topic, kreq_keyring_t *kr,
                             int delay_ms)
{
	responder_t *r = calloc(1, sizeof(*r));
	r->kr = kreq_keyring_retain(kr);
	r->rogue = kreq_keyring_new();
	uint8_t key[32];
	randombytes_buf(key, sizeof(key));
	ck_assert_int_eq(kreq_keyring_add(r->rogue, kreq_keyring_signing_key(kr),
	                                  KREQ_KEY_HMAC_SHA256, key, 32, NULL, 0),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_signing_key(r->rogue, kreq_keyring_signing_key(kr)),
	                 KREQ_OK);
	r->lim = (kreq__limits_t){1 << 20, 1 << 20, 30000};
	r->delay_ms = delay_ms;
	pthread_mutex_init(&r->mu, NULL);
	char gid[128];
	kreq_test_topic_name(gid, sizeof(gid), "responder");
	r->consumer =
	    rd_kafka_new(RD_KAFKA_CONSUMER,
	                 kreq_test_conf_new(bootstrap, "group.id", gid, "auto.offset.reset",
	                                    "earliest", "fetch.wait.max.ms", "10", NULL),
	                 NULL, 0);
	r->producer = rd_kafka_new(RD_KAFKA_PRODUCER,
	                           kreq_test_conf_new(bootstrap, "linger.ms", "0", NULL), NULL, 0);
	ck_assert_ptr_nonnull(r->consumer);
	ck_assert_ptr_nonnull(r->producer);
	/* direct assignment from the beginning: ready at once, no rebalance wait
	 * during which short deadlines would expire */
	rd_kafka_poll_set_consumer(r->consumer);
	const struct rd_kafka_metadata *md;
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(r->consumer, topic, NULL);
	ck_assert_int_eq(rd_kafka_metadata(r->consumer, 0, rkt, &md, 10000), 0);
	ck_assert_int_eq(md->topic_cnt, 1);
	rd_kafka_topic_partition_list_t *tl = rd_kafka_topic_partition_list_new(8);
	for (int i = 0; i < md->topics[0].partition_cnt; i++)
		rd_kafka_topic_partition_list_add(tl, topic, i)->offset = RD_KAFKA_OFFSET_BEGINNING;
	ck_assert_int_gt(tl->cnt, 0);
	ck_assert_int_eq(rd_kafka_assign(r->consumer, tl), 0);
	rd_kafka_topic_partition_list_destroy(tl);
	rd_kafka_metadata_destroy(md);
	rd_kafka_topic_destroy(rkt);
	ck_assert_int_eq(pthread_create(&r->thread, NULL, loop, r), 0);
	return r;
}

void responder_stop(responder_t *r)
{
	atomic_store(&r->stop, true);
	pthread_join(r->thread, NULL);
	for (int i = 0; i < r->n_delayed; i++)
		kreq__opened_clear(&r->delayed[i].op);
	rd_kafka_consumer_close(r->consumer);
	rd_kafka_destroy(r->consumer);
	rd_kafka_flush(r->producer, 5000);
	rd_kafka_destroy(r->producer);
	kreq_keyring_release(r->kr);
	kreq_keyring_release(r->rogue);
	pthread_mutex_destroy(&r->mu);
	free(r);
}

static int get(responder_t *r, const char *sfx, int which)
{
	pthread_mutex_lock(&r->mu);
	int i = kind_index(r, sfx), v = which ? r->max_attempt[i] : r->requests[i];
	pthread_mutex_unlock(&r->mu);
	return v;
}

int responder_requests(responder_t *r, const char *sfx)
{
	return get(r, sfx, 0);
}

int responder_max_attempt(responder_t *r, const char *sfx)
{
	return get(r, sfx, 1);
}

int responder_cancels(responder_t *r)
{
	pthread_mutex_lock(&r->mu);
	int v = r->cancels;
	pthread_mutex_unlock(&r->mu);
	return v;
}
