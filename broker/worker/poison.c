/*
 * poison.c — counting handler starts in Kafka so a request that crashes
 * its worker is taken out of service after worker.poison.max.attempts.
 *
 * Design notes
 * - Why Kafka: a handler that crashes the process (SIGSEGV, abort, OOM
 *   kill) takes the worker's memory with it, and the request is consumed
 *   again by whichever replica gets the partition next. Only a record in
 *   Kafka, written before the handler starts, survives the crash and is
 *   seen by every replica.
 * - Acked mode: before a handler starts, an Attempt record (kind 6) goes to
 *   <prefix>.<service>.attempts, partition = the request's partition, and is
 *   acknowledged (its own idempotent producer, acks=all). The starts of one
 *   loop step are produced together and flushed once (kreq__poison_flush):
 *   one round trip per step, not per request. Nothing is written when a
 *   handler finishes: its Result is the proof it finished.
 * - What counts: the record key is request key || worker instance (a random
 *   64-bit id per kreq_worker_run), so compaction keeps the newest start of
 *   each instance. A request's count is the number of instances other than
 *   the reading one that started it without a Result: each is a worker that
 *   crashed (or lost the partition) while the handler ran. The reading
 *   instance's own starts never count: it is alive, so its handlers did
 *   not crash it, and a rewind or a rebalance that gives it the partition
 *   back does not look like a crash.
 * - What is read: at assignment, after the dedup rebuild, only the starts
 *   of uncommitted requests matter (a committed request was settled). The
 *   worker reads the timestamp of the request record at the committed
 *   offset C and reads the attempts partition from that time minus
 *   clock.skew.ms (offsetsForTimes): every start of a request at or after C
 *   was written after that request was. A partition with nothing
 *   uncommitted reads nothing. Starts of requests below C, of keys with a
 *   Result, or signed by a key not in worker.result.signers are skipped.
 * - Suspects run alone: a worker that crashes takes every handler it was
 *   running with it, so the requests running beside a poison one are
 *   counted too. A request already counted (a suspect: 1 <= count < N) is
 *   therefore held until nothing else runs, then run alone, and nothing
 *   new starts until it finished. If it crashes the worker again, it alone
 *   is counted; the bystanders of the first crash each finish alone and
 *   are never counted again. So a poison request is answered after exactly
 *   N crashes, and an innocent one is taken out of service only if it
 *   shared all N crashes with it (impossible after the first, as it then
 *   runs alone). The cost: after a crash, suspects run one at a time.
 *   A suspect that hangs instead of crashing would stall the worker until
 *   its deadline: after worker.poison.solo.max.ms it stops running alone
 *   (others start beside it and, should it crash the worker after all,
 *   are counted with it; each of them then runs alone in turn).
 * - Exactness: the count is exact (every crash counted once, nothing else
 *   counted) when each worker instance that started a handler and died had
 *   its Attempt acknowledged before the handler ran, which acked mode
 *   guarantees, and when clocks agree within clock.skew.ms.
 * - Journal mode (worker.poison.journal set): the acknowledged write costs
 *   a round trip before every handler (~0.2 ms p50 in light mode, see
 *   docs/broker-design.md), so a worker with a journal records starts in a
 *   memory-mapped file instead (broker/worker/pjournal.h: memory writes only; the
 *   page survives the process's crash in the page cache). At start, before
 *   joining the group, it publishes an Attempt for every start left in the
 *   journal by its previous process (owner instance from the journal's
 *   header), waits for the acknowledgements, then empties the journal. A
 *   request that may have been started by a previous owner (its offset is
 *   below the partition's end offset read at assignment: a suspect of
 *   another worker's crash) still gets the acknowledged write before it
 *   runs, so a crash of the new owner is counted even if that owner never
 *   comes back; so do requests already counted (they run alone). Bound:
 *   each worker that crashes and never restarts (or loses its journal
 *   with its machine) leaves at most the starts of its own fresh requests
 *   uncounted, each counted at most once short; the request then reaches
 *   another worker as a suspect, and from then on every start is acked.
 * - Taking out of service: count >= N at decide time (decide.h) answers
 *   status 10 and stores that Result and a DeadLetter (kind 5, the request
 *   verbatim and its counted attempts) in <prefix>.<service>.dead, in the
 *   same transaction (transactional mode) or, in light mode, before the
 *   record's offset may pass. The handler is not run again.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "broker/worker/pjournal.h"
#include "broker/worker/poison.h"
#include "broker/worker/poison_int.h"
#include "broker/worker/worker_int.h"
#include "common/conf.h"
#include "common/internal.h"
#include "common/topic_admin.h"
#include "common/replication.h"

#define KREQ__PZ_FLUSH_MS 15000 /* longest wait for one step's Attempts */
#define KREQ__PZ_MSG_TMO  "10000"

/* ---- configuration ------------------------------------------------------ */

static char *fmt3(const char *a, const char *b, const char *c)
{
	size_t n = strlen(a) + strlen(b) + strlen(c) + 3;
	char *p = malloc(n);
	if (p)
		snprintf(p, n, "%s.%s.%s", a, b, c);
	return p;
}

int kreq__poison_conf(kreq_worker_t *s, const char *prefix, char *errstr, size_t errstr_size)
{
	int64_t n = kreq__conf_int(s->conf, KREQ__P_WORKER_POISON_MAX_ATTEMPTS);
	if (n == 0)
		return KREQ_OK;
	struct kreq__poison *pz = calloc(1, sizeof(*pz));
	if (!pz)
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	s->pz = pz;
	s->request_forget = kreq__poison_forget;
	pz->max_attempts = (uint32_t)n;
	pz->dead_retention_ms = kreq__conf_int(s->conf, KREQ__P_WORKER_POISON_DEAD_RETENTION_MS);
	pz->solo_max_ns = kreq__conf_int(s->conf, KREQ__P_WORKER_POISON_SOLO_MAX_MS) * 1000000;
	randombytes_buf(&pz->instance, sizeof(pz->instance));
	const char *jp = kreq__conf_str(s->conf, KREQ__P_WORKER_POISON_JOURNAL);
	if (*jp && !(pz->journal_path = strdup(jp)))
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	pz->att_topic = fmt3(prefix, s->service, "attempts");
	pz->dead_topic = fmt3(prefix, s->service, "dead");
	if (!pz->att_topic || !pz->dead_topic)
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	if (strlen(pz->att_topic) > KREQ__TOPIC_MAX)
		return kreq__err(errstr, errstr_size, KREQ_EINVAL,
		                 "topic name %s is longer than 249 characters", pz->att_topic);
	return KREQ_OK;
}

void kreq__poison_destroy(kreq_worker_t *s)
{
	if (!s->pz)
		return;
	free(s->pz->att_topic);
	free(s->pz->dead_topic);
	free(s->pz->journal_path);
	free(s->pz);
	s->pz = NULL;
	s->request_forget = NULL;
}

uint32_t kreq__poison_max(const kreq_worker_t *s)
{
	return s->pz && s->pz->producer ? s->pz->max_attempts : 0;
}

const char *kreq__poison_dead_topic(const kreq_worker_t *s)
{
	return s->pz ? s->pz->dead_topic : NULL;
}

int32_t kreq__poison_dead_partition(const kreq_worker_t *s, int32_t partition)
{
	return s->pz && s->pz->ndead > 0 ? partition % s->pz->ndead : 0;
}

/* ---- topics and the producer ---------------------------------------------- */

/* Created like the worker's other topics: replication and min.insync.replicas
 * resolved against the cluster (common/replication.h), ready once its
 * partition leaders know it. */
static int create(kreq_worker_t *s, const char *topic, int partitions, const char *const *cfg)
{
	char why[512] = "", isr_buf[16];
	const char *configs[10] = {NULL}; /* cfg (at most 6) + min.insync.replicas + NULL */
	for (int i = 0; cfg[i] && i < 6; i++)
		configs[i] = cfg[i];
	int tmo = (int)kreq__conf_int(s->conf, KREQ__P_WORKER_START_TIMEOUT_MS), rf, isr;
	if (kreq__replication_plan(s->reader,
	                           (int)kreq__conf_int(s->conf, KREQ__P_WORKER_TOPIC_REPLICATION),
	                           (int)kreq__conf_int(s->conf, KREQ__P_WORKER_TOPIC_MIN_ISR), tmo,
	                           &rf, &isr, configs, isr_buf, sizeof(isr_buf))) {
		kreq__loop_fatal(s, KREQ_EUNAVAILABLE,
		                 "creating topic %s: Kafka did not answer (cluster metadata)",
		                 topic);
		return -1;
	}
	rd_kafka_resp_err_t kerr =
	    kreq__topic_create(s->producer, topic, partitions, rf, configs, tmo, why, sizeof(why));
	if (kerr) {
		kreq__loop_fatal(
		    s, kerr == RD_KAFKA_RESP_ERR__INVALID_ARG ? KREQ_ECONF : KREQ_EKAFKA,
		    "creating topic %s: %s", topic, *why ? why : rd_kafka_err2str(kerr));
		return -1;
	}
	return kreq__topic_await_ready(s, topic);
}

/* The topic's partition count, the topic created when missing; 0 when it
 * is missing and cannot be created (librdkafka's mock cluster). */
static int ensure(kreq_worker_t *s, const char *topic, int nreq, const char *const *cfg)
{
	int n = kreq__topic_partitions_await(s, topic, false, false); /* < 0: failed, said */
	if (n != 0)
		return n;
	int tmo = (int)kreq__conf_int(s->conf, KREQ__P_WORKER_START_TIMEOUT_MS);
	return kreq__topic_admin_served(s->reader, tmo) == 0 ? 0 : create(s, topic, nreq, cfg);
}

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	kreq_worker_t *s = rd_kafka_opaque(rk);
	kreq__log(s->conf, level, "kafka", "attempts producer: %s: %s", fac, buf);
}

static void on_attempt_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	(void)rk;
	kreq_worker_t *s = opaque;
	if (!m->err || !s->pz)
		return;
	if (!s->pz->failed++)
		snprintf(s->pz->fail_why, sizeof(s->pz->fail_why), "%s", rd_kafka_err2str(m->err));
}

#define KREQ__KV(name, value, why) name, value,
static const char *const att_defaults[] = {KREQ__KAFKA_WORKER_PRODUCER_DEFAULTS(KREQ__KV) NULL};
#undef KREQ__KV

static rd_kafka_t *producer_new(kreq_worker_t *s)
{
	rd_kafka_conf_t *rc = rd_kafka_conf_new();
	char why[512] = "", mmax[24];
	snprintf(mmax, sizeof(mmax), "%lld", (long long)kreq__limits_message_max(s->conf));
	bool ok = true;
	for (const char *const *kv = att_defaults; ok && *kv; kv += 2)
		ok = rd_kafka_conf_set(rc, kv[0], kv[1], why, sizeof(why)) == RD_KAFKA_CONF_OK;
	ok = ok && kreq__conf_kafka_apply(s->conf, rc, why, sizeof(why)) == KREQ_OK;
	/* after the user's kafka.*: the count is only exact if acknowledged */
	const char *const own[] = {"enable.idempotence",
	                           "true",
	                           "acks",
	                           "all",
	                           "linger.ms",
	                           "0",
	                           "message.timeout.ms",
	                           KREQ__PZ_MSG_TMO,
	                           "message.max.bytes",
	                           mmax,
	                           NULL};
	for (const char *const *kv = own; ok && *kv; kv += 2)
		ok = rd_kafka_conf_set(rc, kv[0], kv[1], why, sizeof(why)) == RD_KAFKA_CONF_OK;
	if (!ok) {
		rd_kafka_conf_destroy(rc);
		kreq__loop_fatal(s, KREQ_ECONF, "Kafka configuration (attempts producer): %s", why);
		return NULL;
	}
	rd_kafka_conf_set_opaque(rc, s);
	rd_kafka_conf_set_log_cb(rc, on_log);
	rd_kafka_conf_set_dr_msg_cb(rc, on_attempt_delivery);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, rc, why, sizeof(why));
	if (!rk) {
		rd_kafka_conf_destroy(rc);
		kreq__loop_fatal(s, KREQ_EKAFKA, "cannot create the attempts producer: %s", why);
	}
	return rk;
}

static void put_be64(uint8_t *p, uint64_t v);

/* The starts the previous process left in the journal (it crashed while
 * they ran), published as Attempts of that process and acknowledged, then
 * the journal emptied: before the worker joins its group. */
static int journal_start(kreq_worker_t *s)
{
	struct kreq__poison *pz = s->pz;
	char why[512];
	int err = kreq__pjournal_open(pz->journal_path, (uint32_t)s->slot_max, &pz->journal, why,
	                              sizeof(why));
	if (err) {
		kreq__loop_fatal(s, err, "%s", why);
		return -1;
	}
	uint64_t owner = kreq__pjournal_owner(pz->journal);
	size_t n = kreq__pjournal_nslots(pz->journal), sent = 0;
	for (size_t i = 0; i < n; i++) {
		const kreq__pj_slot_t *sl = kreq__pjournal_slot(pz->journal, i);
		size_t idl = sl->klen ? sl->key[0] : 0;
		if (sl->klen < 2 + idl || idl == 0 || idl > KREQ_KEY_ID_MAX)
			continue; /* not a request key */
		char key_id[KREQ_KEY_ID_MAX + 1];
		memcpy(key_id, sl->key + 1, idl);
		key_id[idl] = '\0';
		Kreq__Attempt a = KREQ__ATTEMPT__INIT;
		a.idempotency_key =
		    (ProtobufCBinaryData){sl->klen - 1 - idl, (uint8_t *)sl->key + 1 + idl};
		a.request_key_id = key_id;
		a.number = sl->number ? sl->number : 1;
		a.worker = s->client_id;
		a.started_at_ms = sl->started_at_ms > 0 ? sl->started_at_ms : 1;
		a.request_offset = sl->offset;
		a.request_partition = sl->partition;
		a.instance = owner;
		uint8_t rkey[KREQ__DEDUP_KEY_MAX + 8], buf[2048];
		memcpy(rkey, sl->key, sl->klen);
		put_be64(rkey + sl->klen, owner);
		size_t len;
		if (kreq__envelope_seal_to(s->kr, &s->lim, KREQ__KIND_ATTEMPT, &a.base, buf,
		                           sizeof(buf), &len, why, sizeof(why)) ||
		    rd_kafka_producev(pz->producer, RD_KAFKA_V_TOPIC(pz->att_topic),
		                      RD_KAFKA_V_PARTITION(sl->partition),
		                      RD_KAFKA_V_KEY(rkey, sl->klen + 8),
		                      RD_KAFKA_V_VALUE(buf, len),
		                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END))
			pz->failed++;
		sent++;
	}
	if (sent && (rd_kafka_flush(pz->producer, KREQ__PZ_FLUSH_MS) || pz->failed)) {
		kreq__loop_fatal(s, KREQ_EKAFKA,
		                 "publishing %zu handler start(s) of the crash journal %s to %s "
		                 "failed (%s): the journal is kept for the next start",
		                 sent, pz->journal_path, pz->att_topic,
		                 pz->failed ? pz->fail_why : "timed out");
		return -1;
	}
	if (sent) {
		atomic_fetch_add_explicit(&s->m.attempts_written, sent, memory_order_relaxed);
		kreq__log(s->conf, 4, "worker",
		          "the previous process crashed while %zu handler(s) ran: their starts are "
		          "recorded in %s",
		          sent, pz->att_topic);
	}
	kreq__pjournal_reset(pz->journal, pz->instance);
	kreq__log(s->conf, 6, "worker", "crash journal %s: %zu slots", pz->journal_path,
	          s->slot_max);
	return 0;
}

int kreq__poison_start(kreq_worker_t *s, int nreq)
{
	struct kreq__poison *pz = s->pz;
	if (!pz)
		return 0;
	char ret[32], dret[32], mmax[32];
	snprintf(ret, sizeof(ret), "%lld", (long long)s->retention_ms);
	snprintf(dret, sizeof(dret), "%lld", (long long)pz->dead_retention_ms);
	/* a DeadLetter holds a whole request: room for it plus its history */
	snprintf(mmax, sizeof(mmax), "%lld",
	         (long long)(kreq__limits_message_max(s->conf) + KREQ__DEAD_OVERHEAD_MAX));
	const char *const att_cfg[] = {"cleanup.policy", "compact,delete", "retention.ms", ret,
	                               NULL};
	const char *const dead_cfg[] = {
	    "cleanup.policy", "delete", "retention.ms", dret, "max.message.bytes", mmax, NULL};
	int natt = ensure(s, pz->att_topic, nreq, att_cfg);
	if (natt < 0)
		return -1;
	if (natt > 0 && (pz->ndead = ensure(s, pz->dead_topic, nreq, dead_cfg)) < 0)
		return -1;
	if (natt == 0 || pz->ndead == 0) { /* a mock cluster without them: not counted */
		kreq__log(s->conf, 4, "worker",
		          "topics %s and %s do not exist and this Kafka cluster cannot create them "
		          "(librdkafka's mock cluster): handler starts are not counted and poison "
		          "requests are not detected (worker.poison.max.attempts)",
		          pz->att_topic, pz->dead_topic);
		return 0;
	}
	if (natt != nreq) {
		kreq__loop_fatal(
		    s, KREQ_ECONF,
		    "attempts topic %s has %d partitions but requests topic %s has %d: "
		    "they must be co-partitioned",
		    pz->att_topic, natt, s->req_topic, nreq);
		return -1;
	}
	if (!(pz->producer = producer_new(s)))
		return -1;
	return pz->journal_path ? journal_start(s) : 0;
}

void kreq__poison_close(kreq_worker_t *s)
{
	if (!s->pz)
		return;
	kreq__poison_discard(s);
	kreq__pjournal_close(s->pz->journal);
	s->pz->journal = NULL;
	if (s->pz->producer) {
		rd_kafka_flush(s->pz->producer, 5000);
		rd_kafka_destroy(s->pz->producer);
	}
	s->pz->producer = NULL;
}

/* ---- acked starts ------------------------------------------------------- */

static void put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

/* Produces r's Attempt (e: its entry, if any) and queues r until the flush. */
/* Produces one Attempt of r by this instance (key: r's dedup key ||
 * instance); ended_at_ms 0: a start, else the end of a start that never
 * ran (its compacted successor: nobody counts it). */
static void produce_attempt(kreq_worker_t *s, const kreq_request_t *r, uint32_t number,
                            int64_t ended_at_ms)
{
	struct kreq__poison *pz = s->pz;
	const Kreq__Request *q = r->op.u.req;
	Kreq__Attempt a = KREQ__ATTEMPT__INIT;
	a.idempotency_key = q->idempotency_key;
	a.request_key_id = (char *)r->op.key_id; /* read only: sealed, not kept */
	a.number = number;
	a.worker = s->client_id;
	a.started_at_ms = kreq__now_ms();
	a.ended_at_ms = ended_at_ms;
	a.request_offset = r->offset;
	a.request_partition = r->partition;
	a.instance = pz->instance;
	uint8_t key[KREQ__DEDUP_KEY_MAX + 8], buf[2048];
	memcpy(key, r->ddkey, r->ddkey_len);
	put_be64(key + r->ddkey_len, pz->instance);
	size_t len;
	char why[256];
	int err = kreq__envelope_seal_to(s->kr, &s->lim, KREQ__KIND_ATTEMPT, &a.base, buf,
	                                 sizeof(buf), &len, why, sizeof(why));
	rd_kafka_resp_err_t kerr = RD_KAFKA_RESP_ERR_NO_ERROR;
	if (!err)
		while ((kerr = rd_kafka_producev(pz->producer, RD_KAFKA_V_TOPIC(pz->att_topic),
		                                 RD_KAFKA_V_PARTITION(r->partition),
		                                 RD_KAFKA_V_KEY(key, r->ddkey_len + 8),
		                                 RD_KAFKA_V_VALUE(buf, len),
		                                 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
		                                 RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
			rd_kafka_poll(pz->producer, 10);
	if ((err || kerr) && !pz->failed++)
		snprintf(pz->fail_why, sizeof(pz->fail_why), "%s",
		         err ? why : rd_kafka_err2str(kerr));
}

static void record_start(kreq_worker_t *s, kreq_request_t *r, kreq__pz_entry_t *e)
{
	struct kreq__poison *pz = s->pz;
	uint32_t number = e ? e->max_number + 1 : 1;
	produce_attempt(s, r, number, 0);
	r->pz_number = number;
	if (e) /* the next start of it by this instance gets the next number */
		e->max_number = number;
	r->next = NULL;
	if (pz->tail)
		pz->tail->next = r;
	else
		pz->head = r;
	pz->tail = r;
	pz->npending++;
	atomic_fetch_add_explicit(&s->m.attempts_written, 1, memory_order_relaxed);
}

bool kreq__poison_defer(kreq_worker_t *s, kreq_request_t *r)
{
	struct kreq__poison *pz = s->pz;
	if (!pz || !pz->producer)
		return false;
	kreq__part_t *pt = s->parts[r->partition];
	kreq__pz_entry_t *e =
	    pt->pz && pt->pz->count ? kreq__pz_find(pt->pz, r->ddkey, r->ddkey_len) : NULL;
	if (e && e->n > 0) { /* a suspect: it runs alone (kreq__poison_blocked) */
		pz->solo = r;
		return true;
	}
	/* journal mode: a fresh record (consumed first by this owner) costs a
	 * memory write; one a previous owner may have started is acked */
	if (pz->journal && pt->pz && r->offset >= pt->pz->end && !e &&
	    (r->pz_slot = kreq__pjournal_add(pz->journal, r->ddkey, r->ddkey_len, r->partition,
	                                     r->offset, kreq__now_ms(), 1)))
		return false;
	record_start(s, r, e);
	return true;
}

void kreq__poison_unstarted(kreq_worker_t *s, const kreq_request_t *r)
{
	if (r->pz_number && s->pz && s->pz->producer)
		produce_attempt(s, r, r->pz_number, kreq__now_ms());
}

void kreq__poison_settle_unstarted(kreq_worker_t *s)
{
	if (s->pz && s->pz->producer)
		rd_kafka_flush(s->pz->producer, KREQ__PZ_FLUSH_MS);
}

void kreq__poison_forget(kreq_worker_t *s, kreq_request_t *r)
{
	if (r->pz_slot && s->pz && s->pz->journal)
		kreq__pjournal_remove(s->pz->journal, r->pz_slot);
	r->pz_slot = 0;
}

bool kreq__poison_blocked(kreq_worker_t *s)
{
	struct kreq__poison *pz = s->pz;
	if (!pz)
		return false;
	if (pz->solo_running && !atomic_load_explicit(&s->in_progress, memory_order_relaxed))
		pz->solo_running = false; /* nothing else started meanwhile: it finished */
	if (pz->solo_running && pz->solo_max_ns &&
	    kreq__mono_ns() - pz->solo_since_ns >= pz->solo_max_ns) {
		pz->solo_running = false; /* it hangs: the others must not wait for it */
		kreq__log(
		    s->conf, 4, "worker",
		    "%s [%d] offset %lld: its handler, started before without finishing, still "
		    "runs after worker.poison.solo.max.ms (%lld ms): other requests start "
		    "beside it",
		    s->req_topic, (int)pz->solo_partition, (long long)pz->solo_offset,
		    (long long)(pz->solo_max_ns / 1000000));
	}
	return pz->solo || pz->solo_running;
}

size_t kreq__poison_pending(const kreq_worker_t *s)
{
	return s->pz ? s->pz->npending : 0;
}

/* Frees r without running it; its record is redone from the committed
 * offset. Joined duplicates gave up their in-flight places with it. */
static void discard_one(kreq_worker_t *s, kreq_request_t *r)
{
	kreq__part_t *pt = r->partition < s->nparts ? s->parts[r->partition] : NULL;
	if (pt && pt->incarnation == r->incarnation)
		kreq__dedup_remove(&pt->dd, r->dd);
	atomic_fetch_sub_explicit(&s->in_progress, r->njoiners, memory_order_relaxed);
	kreq__request_free(r);
}

void kreq__poison_unhold(kreq_worker_t *s)
{
	struct kreq__poison *pz = s->pz;
	if (pz && pz->solo) {
		discard_one(s, pz->solo);
		pz->solo = NULL;
	}
}

void kreq__poison_unhold_in(kreq_worker_t *s, const bool *gone)
{
	struct kreq__poison *pz = s->pz;
	if (pz && pz->solo && pz->solo->partition >= 0 && pz->solo->partition < s->nparts &&
	    gone[pz->solo->partition])
		kreq__poison_unhold(s);
}

void kreq__poison_discard(kreq_worker_t *s)
{
	struct kreq__poison *pz = s->pz;
	kreq__poison_unhold(s);
	if (!pz || !pz->head)
		return;
	kreq_request_t *r = pz->head;
	pz->head = pz->tail = NULL;
	pz->npending = 0;
	for (kreq_request_t *n; r; r = n) {
		n = r->next;
		discard_one(s, r);
	}
}

static kreq_request_t *flush(kreq_worker_t *s);

kreq_request_t *kreq__poison_flush(kreq_worker_t *s)
{
	struct kreq__poison *pz = s->pz;
	if (!pz)
		return NULL;
	if (pz->head)
		return flush(s);
	if (!pz->solo || atomic_load_explicit(&s->in_progress, memory_order_relaxed))
		return NULL;
	/* nothing runs: the suspect's turn, alone */
	kreq_request_t *r = pz->solo;
	kreq__part_t *pt = r->partition < s->nparts ? s->parts[r->partition] : NULL;
	pz->solo = NULL;
	if (!pt || pt->incarnation != r->incarnation) {
		discard_one(s, r);
		return NULL;
	}
	kreq__log(s->conf, 5, "worker",
	          "%s [%d] offset %lld: its handler started before without finishing: it runs "
	          "alone",
	          s->req_topic, (int)r->partition, (long long)r->offset);
	record_start(s, r, kreq__pz_find(pt->pz, r->ddkey, r->ddkey_len));
	pz->solo_partition = r->partition;
	pz->solo_offset = r->offset;
	kreq_request_t *l = flush(s);
	pz->solo_running = l != NULL;
	pz->solo_since_ns = kreq__mono_ns();
	return l;
}

static kreq_request_t *flush(kreq_worker_t *s)
{
	struct kreq__poison *pz = s->pz;
	rd_kafka_resp_err_t kerr = rd_kafka_flush(pz->producer, KREQ__PZ_FLUSH_MS);
	if (kerr && !pz->failed++)
		snprintf(pz->fail_why, sizeof(pz->fail_why), "%s", rd_kafka_err2str(kerr));
	if (pz->failed || s->rewind_needed || s->fatal) {
		if (pz->failed)
			kreq__log(s->conf, 4, "worker",
			          "recording %zu handler start(s) in %s failed (%s): rewinding; "
			          "their handlers did not run",
			          pz->npending, pz->att_topic, pz->fail_why);
		pz->failed = 0;
		kreq__poison_discard(s);
		s->rewind_needed = true; /* their records are redone */
		return NULL;
	}
	kreq_request_t *head = NULL, **tail = &head;
	for (kreq_request_t *r = pz->head, *n; r; r = n) {
		n = r->next;
		kreq__part_t *pt = r->partition < s->nparts ? s->parts[r->partition] : NULL;
		if (!pt || pt->incarnation != r->incarnation) {
			discard_one(s, r); /* its partition was dropped meanwhile */
			continue;
		}
		r->next = NULL;
		*tail = r;
		tail = &r->next;
	}
	pz->head = pz->tail = NULL;
	pz->npending = 0;
	return head;
}

/* ---- dead letters ------------------------------------------------------- */

static int cmp_started(const void *a, const void *b)
{
	const Kreq__Attempt *x = *(Kreq__Attempt *const *)a, *y = *(Kreq__Attempt *const *)b;
	return (x->started_at_ms > y->started_at_ms) - (x->started_at_ms < y->started_at_ms);
}

int kreq__poison_dead_letter(kreq_worker_t *s, const kreq__part_t *pt, const kreq_request_t *r,
                             const rd_kafka_message_t *m, const char *reason, uint8_t **out,
                             size_t *out_len, char *why, size_t why_size)
{
	const Kreq__Request *q = r->op.u.req;
	const kreq__pz_entry_t *e = pt->pz ? kreq__pz_find(pt->pz, r->ddkey, r->ddkey_len) : NULL;
	Kreq__Attempt at[KREQ__ATTEMPTS_MAX], *ap[KREQ__ATTEMPTS_MAX];
	uint32_t na = e ? e->n : 0;
	for (uint32_t i = 0; i < na; i++) {
		const kreq__pz_attempt_t *t = &e->att[i];
		at[i] = (Kreq__Attempt)KREQ__ATTEMPT__INIT;
		at[i].idempotency_key = q->idempotency_key;
		at[i].request_key_id = (char *)r->op.key_id;
		at[i].number = t->number ? t->number : 1;
		at[i].worker = (char *)t->worker;
		at[i].started_at_ms = t->started_at_ms;
		at[i].ended_at_ms = t->ended_at_ms;
		at[i].request_offset = t->request_offset;
		at[i].request_partition = t->request_partition;
		at[i].instance = t->instance;
		ap[i] = &at[i];
	}
	qsort(ap, na, sizeof(ap[0]), cmp_started);
	Kreq__DeadLetter d = KREQ__DEAD_LETTER__INIT;
	d.request = (ProtobufCBinaryData){m->len, m->payload};
	d.request_topic = s->req_topic;
	d.request_partition = m->partition;
	d.request_offset = m->offset;
	d.request_key_id = (char *)r->op.key_id;
	d.idempotency_key = q->idempotency_key;
	d.correlation_id = q->correlation_id;
	d.method = q->method;
	d.status = KREQ_STATUS_POISON;
	d.reason = (char *)reason;
	d.attempts = ap;
	d.n_attempts = na;
	d.dead_at_ms = kreq__now_ms();
	d.worker = s->client_id;
	/* what the worker's producers accept (message.max.bytes): a request near
	 * envelope.max.bytes leaves no room for its history, which is dropped */
	size_t max = (size_t)(kreq__limits_message_max(s->conf) - KREQ__RECORD_OVERHEAD_MAX);
	int err = kreq__envelope_seal(s->kr, &s->lim, KREQ__KIND_DEAD, &d.base, out, out_len, why,
	                              why_size);
	if (!err && *out_len > max && d.n_attempts) {
		free(*out);
		*out = NULL;
		d.n_attempts = 0;
		err = kreq__envelope_seal(s->kr, &s->lim, KREQ__KIND_DEAD, &d.base, out, out_len,
		                          why, why_size);
	}
	if (!err && *out_len > max) {
		free(*out);
		*out = NULL;
		err = kreq__err(why, why_size, KREQ_EOVERSIZE,
		                "dead letter of %zu bytes exceeds the producers' message.max.bytes",
		                *out_len);
	}
	return err;
}
