/*
 * rebuild.c — the dedup rebuild, and the checks that make the results
 * topic worth rebuilding from.
 *
 * On partition assignment (and after a rewind) the worker reads the
 * co-partitioned results partitions from the beginning with its own
 * consumer (the "reader", read_committed) and loads every stored Result
 * into the partition's dedup store, so a retry of a request that some
 * worker (this one earlier, another, a crashed one) already answered is
 * served from that result instead of running the handler again. It runs on
 * the loop thread, inside the rebalance callback, before the first request
 * record of those partitions is consumed. Why each rule:
 *
 *  - Everything committed, not just what is stable. Under read_committed
 *    the reader's end of a partition is its last stable offset (LSO): a
 *    transaction still open there (the previous owner's, finishing while
 *    the partition moves) hides every record after it, including results
 *    committed a moment later. Stopping at that first end-of-partition lost
 *    them and their retries ran again (issue 16, case 2). So the rebuild
 *    notes the partition's high watermark at its first end-of-partition
 *    event (rd_kafka_get_watermark_offsets(): the fetch response's
 *    HighwaterMark, cached before the event is queued; a ListOffsets
 *    request, rd_kafka_query_watermark_offsets(), would follow the reader's
 *    isolation level and return the LSO again) and reads until an
 *    end-of-partition event says the reader's position reached it. The
 *    event carries the position (m->offset), which moves over commit and
 *    abort markers and over aborted records, so an aborted transaction ends
 *    the wait as a committed one does (both measured with librdkafka
 *    2.12.1 in tests/worker/test_rebuild.c). Bounded by
 *    worker.dedup.rebuild.timeout.ms, with an error naming the partition.
 *  - Stable offsets first (transactional mode). A transaction of the
 *    partitions' previous owner may hold their committed offsets pending
 *    (sent to the group, not yet committed) while its Results are still
 *    on their way: librdkafka sends the offsets without waiting for the
 *    records' acknowledgements. Cut off from Kafka at that moment, the
 *    owner commits it later, after the read ended without those Results:
 *    the requests past its offsets were redone and their keys had two
 *    committed Results (test_netfault partition_write). So the rebuild
 *    first asks the committed offsets as read_committed consumers do
 *    (KIP-447: Kafka answers UNSTABLE_OFFSET_COMMIT while a transaction
 *    holds some) until they are stable: that transaction has ended, its
 *    Results are in the partition (committed) or marked aborted, and the
 *    previous owner can add no more (its group generation is gone, and
 *    every transaction of a worker carries its offsets: txn.c
 *    txn_offsets). The same bound as the read.
 *  - Only the worker's own signatures. The keyring also holds the tenants'
 *    request keys; a Result signed by one of them (written to the results
 *    topic by anyone who may write there) would otherwise be served to
 *    another tenant as its stored result (case 6). worker.result.signers
 *    lists the key ids whose Results count (default: the signing key);
 *    others are counted (kreq_worker_results_ignored_total) and skipped.
 *  - A verified topic. Before reading, the topic must exist, be compacted,
 *    keep records at least worker.dedup.retention.ms and have as many
 *    partitions as the requests topic (case 11: deleted while serving, it
 *    came back auto-created with one partition and the rebuild waited for
 *    partitions that no longer existed). Anything else is a configuration
 *    error the operator must fix (kreqd exits 2, docs/operations.md);
 *    the worker never re-creates the topic while serving.
 *  - Stoppable. The loop polls the reader in 100 ms steps and gives up
 *    when kreq_worker_stop() was called; the caller then forgets the
 *    partitions (nothing is served from a partial store).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker/worker/worker_int.h"
#include "common/conf.h"
#include "common/internal.h"

/* ---- result signers ----------------------------------------------------- */

bool kreq__signer_listed(const char *list, const char *key_id)
{
	size_t want = strlen(key_id);
	for (const char *p = list; *p;) {
		p += strspn(p, " \t,");
		size_t n = strcspn(p, ",");
		size_t len = n;
		while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
			len--;
		if (len && len == want && !memcmp(p, key_id, len))
			return true;
		p += n;
	}
	return false;
}

bool kreq__result_signer_ok(const kreq_worker_t *s, const char *key_id)
{
	const char *list = kreq__conf_str(s->conf, KREQ__P_WORKER_RESULT_SIGNERS);
	if (*list)
		return kreq__signer_listed(list, key_id);
	const char *own = kreq_keyring_signing_key(s->kr);
	return own && !strcmp(own, key_id);
}

/* ---- the results topic -------------------------------------------------- */

/* retention.ms of the results topic keeps results long enough. */
static bool retention_ok(const char *value, int64_t want)
{
	char *end;
	long long v = strtoll(value, &end, 10);
	return end != value && !*end && (v == -1 || v >= want);
}

/* Before asking Kafka again: false once `until` passed or a stop was
 * asked, else true after a 100 ms backoff. */
static bool wait_again(kreq_worker_t *s, int64_t until)
{
	if (kreq__mono_ns() >= until || atomic_load(&s->stop))
		return false;
	nanosleep(&(struct timespec){.tv_nsec = 100000000}, NULL);
	return true;
}

/* The configuration of the results topic, when it is wrong: the error
 * (loop_fatal'ed) or KREQ_OK. Asked again until `until` while Kafka's
 * answer is transient (kreq__kafka_transient(): a frozen or restarting
 * Kafka broker, test_fence's outage case) and, if created, while the
 * Kafka broker asked does not know the new topic yet (metadata propagates
 * between brokers). */
static int config_check(kreq_worker_t *s, int64_t until, bool created, const char *bound)
{
	static const char *const names[] = {"cleanup.policy", "retention.ms", NULL};
	char *v[2] = {NULL, NULL};
	rd_kafka_resp_err_t kerr;
	while ((kerr = kreq__topic_configs(s->reader, s->res_topic, names, v,
	                                   kreq__look_ms(until, 15000))) &&
	       (kreq__kafka_transient(kerr) ||
	        (kerr == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART && created)) &&
	       wait_again(s, until))
		;
	char asked[96] = "";
	if (kreq__kafka_transient(kerr))
		snprintf(asked, sizeof(asked), " (asked again until %s)", bound);
	int err = KREQ_ECONF;
	if (kerr == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
		kreq__loop_fatal(s, err,
		                 "results topic %s does not exist (deleted?): the worker does not "
		                 "re-create it while serving, and the results it held are gone",
		                 s->res_topic);
	else if (kerr)
		kreq__loop_fatal(s, err = KREQ_EKAFKA,
		                 "reading the configuration of results topic %s: %s%s",
		                 s->res_topic, rd_kafka_err2str(kerr), asked);
	else if (!v[0] || !strstr(v[0], "compact"))
		kreq__loop_fatal(s, err,
		                 "results topic %s has cleanup.policy=%s: it must include compact",
		                 s->res_topic, v[0] ? v[0] : "(none)");
	else if (strstr(v[0], "delete") && (!v[1] || !retention_ok(v[1], s->retention_ms)))
		kreq__loop_fatal(s, err,
		                 "results topic %s has retention.ms=%s, shorter than "
		                 "worker.dedup.retention.ms=%lld: results would be deleted while "
		                 "their retries are still deduplicated",
		                 s->res_topic, v[1] ? v[1] : "(none)", (long long)s->retention_ms);
	else
		err = KREQ_OK;
	free(v[0]);
	free(v[1]);
	return err;
}

/* Whether the cluster has a controller among its Kafka brokers (1), has
 * none (0: librdkafka's mock cluster), or did not answer (-1), asked
 * again until `until` while it does not answer. A cluster whose controller
 * answered once is taken as real for good: a Kafka broker restarting can
 * name no controller for a moment. */
static int admin_served(kreq_worker_t *s, int64_t until)
{
	int served;
	while ((served = kreq__topic_admin_served(s->reader, kreq__look_ms(until, 15000))) < 0 &&
	       wait_again(s, until))
		;
	if (served == 0 && s->results_checked)
		served = 1;
	return served;
}

int kreq__results_topic_check(kreq_worker_t *s, int nreq, bool created, bool serving)
{
	const char *bound;
	int64_t until = kreq__mono_ns() + kreq__topic_wait_ms(s, serving, &bound) * 1000000LL;
	int served = admin_served(s, until);
	if (served == 0 && !s->results_check_skipped) {
		s->results_check_skipped = true;
		kreq__log(
		    s->conf, 4, "worker",
		    "this Kafka cluster names no controller among its Kafka brokers (librdkafka's "
		    "mock cluster): cleanup.policy and retention.ms of results topic %s are not "
		    "checked",
		    s->res_topic);
	}
	int err = served != 0 ? config_check(s, until, created, bound) : KREQ_OK;
	if (err)
		return err;
	s->results_checked = served == 1;
	/* it exists (checked above): 0 is a Kafka broker that does not show it
	 * yet, -1 an unavailable Kafka (fatal, KREQ_EUNAVAILABLE); neither is
	 * a partition count to compare */
	int nres = kreq__topic_partitions_await(s, s->res_topic, true, serving);
	if (nres < 0)
		return KREQ_EUNAVAILABLE;
	if (nres == 0) {
		kreq__loop_fatal(s, KREQ_EKAFKA, "no metadata for results topic %s within %s",
		                 s->res_topic, bound);
		return KREQ_EKAFKA;
	}
	if (nres != nreq) {
		kreq__loop_fatal(s, KREQ_ECONF,
		                 "results topic %s has %d partitions but requests topic %s has %d: "
		                 "they must be co-partitioned",
		                 s->res_topic, nres, s->req_topic, nreq);
		return KREQ_ECONF;
	}
	return KREQ_OK;
}

/* ---- loading ------------------------------------------------------------ */

/* What one rebuild saw, for its log lines. */
typedef struct rebuild_stats {
	uint64_t foreign; /* Results signed by a key not in worker.result.signers */
	char first_key[KREQ_KEY_ID_MAX + 1];
	int32_t first_part;
	int64_t first_offset;
} rebuild_stats_t;

static void load_result(kreq_worker_t *s, kreq__part_t *pt, const rd_kafka_message_t *m,
                        int64_t now, rebuild_stats_t *st)
{
	kreq__opened_t o;
	char why[256];
	int err =
	    kreq__envelope_open(s->kr, &s->lim, now, m->payload, m->len, &o, why, sizeof(why));
	if (err == KREQ_EEXPIRED)
		return; /* past worker.dedup.retention.ms: no longer deduplicates */
	if (!err && o.kind != KREQ__KIND_RESULT) {
		kreq__opened_clear(&o);
		err = KREQ_EMALFORMED;
		snprintf(why, sizeof(why), "not a Result");
	}
	if (err) {
		kreq__log(s->conf, 4, "worker", "results %s [%d] offset %lld skipped: %s",
		          s->res_topic, pt->id, (long long)m->offset, why);
		return;
	}
	if (!kreq__result_signer_ok(s, o.key_id)) {
		atomic_fetch_add_explicit(&s->m.results_ignored, 1, memory_order_relaxed);
		if (st->foreign++ == 0) {
			snprintf(st->first_key, sizeof(st->first_key), "%s", o.key_id);
			st->first_part = pt->id;
			st->first_offset = m->offset;
		}
		kreq__opened_clear(&o);
		return;
	}
	const Kreq__Result *r = o.u.result;
	uint8_t key[KREQ__DEDUP_KEY_MAX];
	size_t klen = kreq__dedup_key(key, r->request_key_id, r->idempotency_key.data,
	                              r->idempotency_key.len);
	if (kreq__dedup_set_done(&pt->dd, NULL, key, klen, r->request_digest.data, r->status,
	                         r->payload.data, r->payload.len, r->error, r->deadline_ms) == 0) {
		atomic_fetch_add_explicit(&s->m.results_loaded, 1, memory_order_relaxed);
		kreq__dedup_find(&pt->dd, key, klen)->res_offset = m->offset; /* to read it back */
	}
	kreq__dedup_bound(s, pt);
	kreq__opened_clear(&o);
}

/* ---- reading to the end ------------------------------------------------- */

/* How far one partition's rebuild got. */
typedef struct progress {
	int64_t target;  /* high watermark at its first end-of-partition; -1 not yet */
	int64_t reached; /* position of its latest end-of-partition event; -1 none */
	bool done;
} progress_t;

static int index_of(kreq__part_t **parts, int n, int32_t id)
{
	for (int i = 0; i < n; i++)
		if (parts[i]->id == id)
			return i;
	return -1;
}

/* An end-of-partition event at position pos: true once the partition is
 * read up to its high watermark of the first such event. */
static bool reached_end(kreq_worker_t *s, int32_t id, progress_t *pg, int64_t pos)
{
	pg->reached = pos;
	if (pg->target < 0) {
		int64_t lo = -1, hi = -1;
		rd_kafka_get_watermark_offsets(s->reader, s->res_topic, id, &lo, &hi);
		pg->target = hi > pos ? hi : pos;
		if (pg->target > pos)
			kreq__log(
			    s->conf, 5, "worker",
			    "results %s [%d]: read to offset %lld, a transaction is open up to "
			    "%lld; waiting for it (worker.dedup.rebuild.timeout.ms)",
			    s->res_topic, id, (long long)pos, (long long)pg->target);
	}
	return pos >= pg->target;
}

static bool topic_gone(rd_kafka_resp_err_t e)
{
	return e == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
	       e == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC || e == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION;
}

/* The error of a rebuild that ran out of time, naming the first partition
 * that did not finish. */
static void timed_out(kreq_worker_t *s, kreq__part_t **parts, const progress_t *pg, int n)
{
	int i = 0;
	while (i < n - 1 && pg[i].done)
		i++;
	int64_t ms = kreq__conf_int(s->conf, KREQ__P_WORKER_REBUILD_TIMEOUT_MS);
	if (pg[i].target < 0)
		kreq__loop_fatal(
		    s, KREQ_EKAFKA,
		    "rebuilding the dedup state: results %s [%d] did not reach its end "
		    "within worker.dedup.rebuild.timeout.ms (%lld ms)",
		    s->res_topic, parts[i]->id, (long long)ms);
	else
		kreq__loop_fatal(
		    s, KREQ_EKAFKA,
		    "rebuilding the dedup state: results %s [%d] is readable up to offset %lld but "
		    "holds records up to %lld: a transaction open there since the rebuild started "
		    "did "
		    "not commit or abort within worker.dedup.rebuild.timeout.ms (%lld ms). Some "
		    "producer holds a transaction open on the results topic (a worker that hangs, "
		    "or "
		    "a producer that is not a worker), which its transaction.timeout.ms bounds; or "
		    "a hanging transaction, which Kafka ended without writing its marker there "
		    "(kafka-transactions.sh find-hanging; docs/operations.md, \"Hanging "
		    "transactions\")",
		    s->res_topic, parts[i]->id, (long long)pg[i].reached, (long long)pg[i].target,
		    (long long)ms);
}

/* The first error of a committed-offsets answer: the request's, else a
 * partition's. */
static rd_kafka_resp_err_t committed_error(rd_kafka_resp_err_t kerr,
                                           const rd_kafka_topic_partition_list_t *l)
{
	for (int i = 0; !kerr && i < l->cnt; i++)
		kerr = l->elems[i].err;
	return kerr;
}

/* Waits until no transaction holds committed offsets of the partitions
 * pending (see the top: "Stable offsets first"); KREQ_OK, KREQ_ECANCELED
 * or a fatal error. */
static int stable_offsets(kreq_worker_t *s, kreq__part_t **parts, int n, int64_t until)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
	for (int i = 0; i < n; i++)
		rd_kafka_topic_partition_list_add(l, s->req_topic, parts[i]->id);
	int err = KREQ_OK;
	bool said = false;
	for (;;) {
		int64_t left_ms = (until - kreq__mono_ns()) / 1000000;
		if (atomic_load(&s->stop)) {
			err = KREQ_ECANCELED;
			break;
		}
		int tmo = left_ms < 5000 ? (int)left_ms : 5000;
		rd_kafka_resp_err_t e =
		    left_ms > 0 ? committed_error(rd_kafka_committed(s->consumer, l, tmo), l)
		                : RD_KAFKA_RESP_ERR__TIMED_OUT;
		if (!e)
			break;
		bool unstable = e == RD_KAFKA_RESP_ERR_UNSTABLE_OFFSET_COMMIT;
		if (left_ms <= 0 || (!unstable && !kreq__kafka_transient(e))) {
			kreq__loop_fatal(
			    s, KREQ_EKAFKA,
			    "reading the committed offsets of %s before the dedup rebuild: "
			    "%s%s",
			    s->req_topic, rd_kafka_err2str(e),
			    unstable ? " (a transaction holding offsets of the assigned "
			               "partitions did not end within "
			               "worker.dedup.rebuild.timeout.ms: a worker that hangs, or a "
			               "hanging transaction, docs/operations.md)"
			             : "");
			err = KREQ_EKAFKA;
			break;
		}
		if (unstable && !said)
			kreq__log(
			    s->conf, 5, "worker",
			    "committed offsets of %s: a transaction of their previous owner holds "
			    "some pending; waiting for it to end before the dedup rebuild",
			    s->req_topic);
		said = said || unstable;
		nanosleep(&(struct timespec){.tv_nsec = 50 * 1000000L}, NULL);
	}
	rd_kafka_topic_partition_list_destroy(l);
	return err;
}

/* Reads the assigned results partitions until each is done; KREQ_OK,
 * KREQ_ECANCELED (stop requested) or a fatal error. */
static int read_all(kreq_worker_t *s, kreq__part_t **parts, progress_t *pg, int n,
                    rebuild_stats_t *st, int64_t until)
{
	int remaining = n;
	int64_t now = kreq__now_ms();
	while (remaining > 0) {
		if (atomic_load(&s->stop))
			return KREQ_ECANCELED;
		if (kreq__mono_ns() >= until) {
			timed_out(s, parts, pg, n);
			return KREQ_EKAFKA;
		}
		rd_kafka_message_t *m = rd_kafka_consumer_poll(s->reader, 100);
		if (!m)
			continue;
		int i = index_of(parts, n, m->partition);
		rd_kafka_resp_err_t e = m->err;
		if (e == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
			if (i >= 0 && !pg[i].done &&
			    reached_end(s, parts[i]->id, &pg[i], m->offset)) {
				pg[i].done = true;
				remaining--;
			}
		} else if (topic_gone(e)) {
			kreq__loop_fatal(
			    s, KREQ_ECONF,
			    "results topic %s: %s while rebuilding (deleted?): the worker "
			    "does not re-create it while serving",
			    s->res_topic, rd_kafka_message_errstr(m));
		} else if (e) {
			kreq__log(s->conf, 4, "worker", "reading %s: %s", s->res_topic,
			          rd_kafka_message_errstr(m));
		} else if (i >= 0) {
			load_result(s, parts[i], m, now, st);
		}
		rd_kafka_message_destroy(m);
		if (topic_gone(e))
			return KREQ_ECONF;
	}
	return KREQ_OK;
}

int kreq__rebuild(kreq_worker_t *s, kreq__part_t **parts, int n)
{
	if (n == 0)
		return KREQ_OK;
	int err = kreq__results_topic_check(s, s->nparts, false, true);
	if (err)
		return err;
	int64_t until = kreq__mono_ns() +
	                kreq__conf_int(s->conf, KREQ__P_WORKER_REBUILD_TIMEOUT_MS) * 1000000LL;
	if (s->txn_mode && (err = stable_offsets(s, parts, n, until)))
		return err;
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
	for (int i = 0; i < n; i++)
		rd_kafka_topic_partition_list_add(l, s->res_topic, parts[i]->id)->offset =
		    RD_KAFKA_OFFSET_BEGINNING;
	rd_kafka_resp_err_t kerr = rd_kafka_assign(s->reader, l);
	rd_kafka_topic_partition_list_destroy(l);
	if (kerr) {
		kreq__loop_fatal(s, KREQ_EKAFKA, "assigning %s: %s", s->res_topic,
		                 rd_kafka_err2str(kerr));
		return KREQ_EKAFKA;
	}
	progress_t *pg = calloc((size_t)n, sizeof(*pg));
	if (!pg) {
		rd_kafka_assign(s->reader, NULL);
		kreq__loop_fatal(s, KREQ_ENOMEM, "out of memory");
		return KREQ_ENOMEM;
	}
	for (int i = 0; i < n; i++)
		pg[i].target = pg[i].reached = -1;
	rebuild_stats_t st = {0};
	err = read_all(s, parts, pg, n, &st, until);
	free(pg);
	rd_kafka_assign(s->reader, NULL);
	if (st.foreign)
		kreq__log(s->conf, 4, "worker",
		          "results %s: ignored %llu result(s) signed by keys not in "
		          "worker.result.signers (first: key id %s, partition %d, offset %lld)",
		          s->res_topic, (unsigned long long)st.foreign, st.first_key, st.first_part,
		          (long long)st.first_offset);
	if (err == KREQ_ECANCELED)
		kreq__log(
		    s->conf, 5, "worker",
		    "stopping: dedup rebuild of %d partition(s) abandoned; they are not served", n);
	return err;
}
