/*
 * pending_kafka.c — see pending_kafka.h: the Kafka view of `kreq pending`
 * (--bootstrap, --service; cli/pending.c parses the options and holds the
 * client view).
 *
 * Design: what a service still owes is what its
 * workers have not committed yet (docs/protocol.md section 7). One
 * librdkafka consumer carries the service's own group.id,
 * <prefix>.<service>, only to read that group's committed offsets
 * (OffsetFetch): it never subscribes (so it never joins the group or
 * disturbs its members), never commits (enable.auto.commit=false, no commit
 * call, destroyed without a consumer close) and reads by direct assignment,
 * isolation.level=read_committed:
 *   1. every partition of <prefix>.<service>.requests from the committed
 *      offset (the earliest offset when the group has none, where a worker
 *      would start: auto.offset.reset=earliest) up to the end offset (the
 *      last stable offset) queried before reading: requests still within
 *      their deadline are the candidates, cancels are remembered;
 *   2. the same partition numbers of <prefix>.<service>.results, each from
 *      the offset of the timestamp of its oldest candidate record
 *      (rd_kafka_offsets_for_times: results are written after their
 *      requests) up to its end: a Result with a candidate's key id,
 *      idempotency key and request digest (SHA-256 of method || 0x00 ||
 *      payload) means that candidate has been answered.
 * What remains is listed: "waiting", or "cancelled" when a Cancel with its
 * correlation id (and its key id and idempotency key, as a worker matches
 * it) follows it. Records of several attempts of one call (same correlation
 * id) make one row, the latest attempt.
 *
 * Trust: with --keyring every record is verified as a receiver would
 * (docs/protocol.md section 5; results without the clock checks, since an
 * expired result still answered its request); records that do not verify
 * are counted, summed up on stderr and never listed. Without --keyring the
 * records are decoded WITHOUT verification (with the field rules that make
 * a row meaningful) and every row is marked "unverified".
 *
 * Bounded: one --timeout for everything that waits on Kafka (reaching it
 * and reading to the end), at most ROWS_MAX candidate rows and as many
 * cancels kept in memory (beyond that the output says it is truncated).
 */
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>
#include <sodium.h>

#include "cli/cli.h"
#include "cli/pending_kafka.h"
#include "common/internal.h"
#include "proto/envelope.h"
#include "proto/unverified.h"

#define SUB             "pending"
#define ROWS_MAX        100000
#define POLL_MS         100
#define ERR_SLOTS       64 /* counts by -error code */
#define STATE_WAITING   "waiting"
#define STATE_CANCELLED "cancelled"

/* One partition of the requests topic (and the results partition of the
 * same number). */
struct kpart {
	int32_t id;
	int64_t committed; /* the group's committed offset; -1: none */
	int64_t low, end;  /* earliest and end (last stable) offsets */
	int64_t res_start; /* results partition: where reading starts */
	int64_t res_end;   /* results partition: end (last stable) offset */
	int64_t oldest_ts; /* record timestamp of its oldest candidate; -1 unknown */
	bool has_rows;     /* any candidate in this partition */
};

/* One candidate request record. */
struct krow {
	int32_t partition;
	int64_t offset, timestamp, issued_at, deadline;
	uint32_t attempt;
	bool cancelled, answered, superseded;
	char key_id[KREQ_KEY_ID_MAX + 1];
	uint8_t corr[KREQ__CORR_ID_BYTES], digest[32];
	size_t idem_len;
	uint8_t *idem;
	char *method;
};

/* A cancel seen after the committed offset. */
struct kcancel {
	int32_t partition;
	char key_id[KREQ_KEY_ID_MAX + 1];
	uint8_t corr[KREQ__CORR_ID_BYTES];
	size_t idem_len;
	uint8_t *idem;
};

/* A range of one partition being read. */
struct krange {
	int32_t partition;
	int64_t start, end, next;
	bool done;
};

struct kview {
	const struct pending_opts *o;
	kreq_keyring_t *kr; /* NULL: records are decoded unverified */
	kreq__limits_t lim, no_clock;
	rd_kafka_t *rk;
	char req_topic[TOPIC_NAME_MAX + 1], res_topic[TOPIC_NAME_MAX + 1];
	char group[TOPIC_NAME_MAX + 1];
	int64_t until;  /* monotonic ms: end of the --timeout budget */
	int64_t now_ms; /* wall clock, for deadlines, ages and the output */
	struct kpart *parts;
	int nparts, res_nparts; /* res_nparts 0: no results topic */
	struct krow *rows;
	size_t nrows, caprows;
	struct kcancel *cancels;
	size_t ncancels, capcancels;
	bool truncated;
	long expired, bad_total, bad[ERR_SLOTS];
};

typedef void krecord_fn(struct kview *v, const rd_kafka_message_t *m);

static int64_t budget_left(const struct kview *v)
{
	int64_t left = v->until - cli_mono_ms();
	return left > 0 ? left : 0;
}

static int budget_ms(const struct kview *v)
{
	int64_t left = budget_left(v);
	return left > 0 ? (int)left : 1;
}

static int fail_kafka(const struct kview *v, const char *what, rd_kafka_resp_err_t err)
{
	return cli_fail(CLI_EXIT_FAIL, SUB, "cannot reach Kafka at %s: %s within %ld ms (%s)",
	                v->o->bootstrap, what, v->o->timeout_ms, rd_kafka_err2str(err));
}

/* ---- the consumer ------------------------------------------------------------ */

static int consumer_new(struct kview *v)
{
	const char *props[][2] = {{"bootstrap.servers", v->o->bootstrap},
	                          {"group.id", v->group}, /* to read its offsets only */
	                          {"client.id", "kreq-cli-pending"},
	                          {"enable.auto.commit", "false"},
	                          {"enable.auto.offset.store", "false"},
	                          {"isolation.level", "read_committed"},
	                          {"enable.partition.eof", "true"},
	                          {"auto.offset.reset", "earliest"},
	                          {"allow.auto.create.topics", "false"},
	                          {"fetch.wait.max.ms", "100"},
	                          {"log_level", "2"}};
	return cli_consumer_new(SUB, props, sizeof(props) / sizeof(props[0]), &v->rk);
}

/* Partition ids of topic into *ids (sorted), *n; 0 partitions: missing. */
static int topic_partitions(struct kview *v, const char *topic, int32_t **ids, int *n)
{
	*ids = NULL;
	*n = 0;
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(v->rk, topic, NULL);
	if (rkt == NULL)
		return cli_fail(CLI_EXIT_USAGE, SUB, "invalid topic '%s': %s", topic,
		                rd_kafka_err2str(rd_kafka_last_error()));
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t err = rd_kafka_metadata(v->rk, 0, rkt, &md, budget_ms(v));
	rd_kafka_topic_destroy(rkt);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		char what[TOPIC_NAME_MAX + 32];
		snprintf(what, sizeof(what), "no metadata for topic %s", topic);
		return fail_kafka(v, what, err);
	}
	int rc = CLI_EXIT_OK;
	const rd_kafka_metadata_topic_t *mt = md->topic_cnt == 1 ? &md->topics[0] : NULL;
	if (mt == NULL || mt->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
	    mt->partition_cnt == 0) {
		rc = CLI_EXIT_OK; /* missing: *n == 0 */
	} else if (mt->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		rc = cli_fail(CLI_EXIT_FAIL, SUB, "topic %s: %s", topic, rd_kafka_err2str(mt->err));
	} else if ((*ids = calloc((size_t)mt->partition_cnt, sizeof(**ids))) == NULL) {
		rc = cli_fail(CLI_EXIT_FAIL, SUB, "out of memory");
	} else {
		*n = mt->partition_cnt;
		for (int i = 0; i < *n; i++)
			(*ids)[i] = mt->partitions[i].id;
	}
	rd_kafka_metadata_destroy(md);
	return rc;
}

static int cmp_i32(const void *a, const void *b)
{
	int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
	return (x > y) - (x < y);
}

static int load_topics(struct kview *v)
{
	int32_t *ids = NULL, *res_ids = NULL;
	int n = 0, res_n = 0;
	int rc = topic_partitions(v, v->req_topic, &ids, &n);
	if (rc == CLI_EXIT_OK && n == 0)
		rc = cli_fail(CLI_EXIT_FAIL, SUB,
		              "topic %s does not exist on %s (wrong --service or --prefix, or "
		              "nothing has used the service yet)",
		              v->req_topic, v->o->bootstrap);
	if (rc == CLI_EXIT_OK)
		rc = topic_partitions(v, v->res_topic, &res_ids, &res_n);
	if (rc == CLI_EXIT_OK && (v->parts = calloc((size_t)n, sizeof(*v->parts))) == NULL)
		rc = cli_fail(CLI_EXIT_FAIL, SUB, "out of memory");
	if (rc == CLI_EXIT_OK) {
		qsort(ids, (size_t)n, sizeof(*ids), cmp_i32);
		v->nparts = n;
		for (int i = 0; i < n; i++)
			v->parts[i] =
			    (struct kpart){.id = ids[i], .committed = -1, .oldest_ts = -1};
		v->res_nparts = res_n;
		if (res_n == 0)
			fprintf(stderr,
			        "kreq %s: results topic %s does not exist (no worker has run?): "
			        "no request counts as answered\n",
			        SUB, v->res_topic);
		else if (res_n != n)
			fprintf(stderr,
			        "kreq %s: results topic %s has %d partitions but %s has %d: "
			        "workers refuse to run like this\n",
			        SUB, v->res_topic, res_n, v->req_topic, n);
	}
	free(ids);
	free(res_ids);
	return rc;
}

static bool has_results_partition(const struct kview *v, int32_t id)
{
	return id >= 0 && id < v->res_nparts;
}

/* The group's committed offsets: OffsetFetch only, no membership. */
static int load_committed(struct kview *v)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(v->nparts);
	for (int i = 0; i < v->nparts; i++)
		rd_kafka_topic_partition_list_add(l, v->req_topic, v->parts[i].id);
	rd_kafka_resp_err_t err = rd_kafka_committed(v->rk, l, budget_ms(v));
	int rc = CLI_EXIT_OK;
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		char what[TOPIC_NAME_MAX + 64];
		snprintf(what, sizeof(what), "no committed offsets of group %s", v->group);
		rc = fail_kafka(v, what, err);
	}
	for (int i = 0; rc == CLI_EXIT_OK && i < l->cnt; i++) {
		const rd_kafka_topic_partition_t *tp = &l->elems[i];
		if (tp->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
			rc = cli_fail(
			    CLI_EXIT_FAIL, SUB,
			    "cannot read the committed offset of group %s for %s [%d]: %s",
			    v->group, v->req_topic, (int)tp->partition, rd_kafka_err2str(tp->err));
			break;
		}
		for (int k = 0; k < v->nparts; k++)
			if (v->parts[k].id == tp->partition)
				v->parts[k].committed = tp->offset >= 0 ? tp->offset : -1;
	}
	rd_kafka_topic_partition_list_destroy(l);
	return rc;
}

/* Earliest and end offsets; with read_committed the end is the last
 * stable offset (librdkafka's ListOffsets carries the isolation level). */
static int watermarks(struct kview *v, const char *topic, int32_t id, int64_t *low, int64_t *end)
{
	rd_kafka_resp_err_t err =
	    rd_kafka_query_watermark_offsets(v->rk, topic, id, low, end, budget_ms(v));
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
		return CLI_EXIT_OK;
	char what[TOPIC_NAME_MAX + 64];
	snprintf(what, sizeof(what), "no end offsets of %s [%d]", topic, (int)id);
	return fail_kafka(v, what, err);
}

/* ---- reading ranges ------------------------------------------------------------- */

static bool fatal_read_error(rd_kafka_resp_err_t err)
{
	return err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
	       err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC ||
	       err == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION ||
	       err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED ||
	       err == RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED;
}

static struct krange *range_of(struct krange *r, int n, const char *topic,
                               const rd_kafka_message_t *m)
{
	if (m->rkt == NULL || strcmp(rd_kafka_topic_name(m->rkt), topic) != 0)
		return NULL;
	for (int i = 0; i < n; i++)
		if (r[i].partition == m->partition)
			return &r[i];
	return NULL;
}

static int read_timed_out(const struct kview *v, const char *topic, const struct krange *r, int n,
                          rd_kafka_resp_err_t last)
{
	const struct krange *x = r;
	for (int i = 0; i < n; i++)
		if (!r[i].done) {
			x = &r[i];
			break;
		}
	return cli_fail(CLI_EXIT_FAIL, SUB,
	                "timed out after %ld ms reading %s from Kafka at %s: partition %d at "
	                "offset %lld of %lld%s%s",
	                v->o->timeout_ms, topic, v->o->bootstrap, (int)x->partition,
	                (long long)x->next, (long long)x->end, last ? "; last Kafka error: " : "",
	                last ? rd_kafka_err2str(last) : "");
}

/* Reads [start, end) of every range (direct assignment) and hands each
 * record to fn. A range is done once its last record or its end of
 * partition (which, read_committed, also passes transaction markers) has
 * been seen. */
static int read_ranges(struct kview *v, const char *topic, struct krange *r, int n, krecord_fn *fn)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n > 0 ? n : 1);
	int open = 0;
	for (int i = 0; i < n; i++) {
		r[i].next = r[i].start;
		r[i].done = r[i].start >= r[i].end;
		if (!r[i].done) {
			rd_kafka_topic_partition_list_add(l, topic, r[i].partition)->offset =
			    r[i].start;
			open++;
		}
	}
	int rc = CLI_EXIT_OK;
	rd_kafka_resp_err_t err = open ? rd_kafka_assign(v->rk, l) : RD_KAFKA_RESP_ERR_NO_ERROR;
	rd_kafka_topic_partition_list_destroy(l);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		return cli_fail(CLI_EXIT_FAIL, SUB, "cannot assign the partitions of %s: %s", topic,
		                rd_kafka_err2str(err));
	rd_kafka_resp_err_t last = RD_KAFKA_RESP_ERR_NO_ERROR;
	while (rc == CLI_EXIT_OK && open > 0) {
		int64_t left = budget_left(v);
		if (left <= 0) {
			rc = read_timed_out(v, topic, r, n, last);
			break;
		}
		rd_kafka_message_t *m =
		    rd_kafka_consumer_poll(v->rk, (int)(left < POLL_MS ? left : POLL_MS));
		if (m == NULL)
			continue;
		struct krange *x = range_of(r, n, topic, m);
		if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
			if (x != NULL && !x->done) {
				x->done = true;
				open--;
			}
		} else if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
			last = m->err;
			if (fatal_read_error(m->err))
				rc = cli_fail(CLI_EXIT_FAIL, SUB, "reading %s from Kafka at %s: %s",
				              topic, v->o->bootstrap, rd_kafka_message_errstr(m));
		} else if (x != NULL && !x->done) {
			if (m->offset < x->end)
				fn(v, m);
			x->next = m->offset + 1;
			if (x->next >= x->end) {
				x->done = true;
				open--;
			}
		}
		rd_kafka_message_destroy(m);
	}
	rd_kafka_assign(v->rk, NULL);
	return rc;
}

/* ---- decoding records ------------------------------------------------------------ */

static void count_bad(struct kview *v, int err)
{
	v->bad_total++;
	if (err < 0 && -err < ERR_SLOTS)
		v->bad[-err]++;
}

/* A record as a receiver would take it at now_ms (0: without the clock
 * checks), verified when there is a keyring. */
static int open_record(const struct kview *v, int64_t now_ms, const rd_kafka_message_t *m,
                       kreq__opened_t *out)
{
	if (v->kr == NULL)
		return kreq__envelope_open_unverified(&v->lim, now_ms, m->payload, m->len, out);
	return kreq__envelope_open(v->kr, now_ms ? &v->lim : &v->no_clock, now_ms, m->payload,
	                           m->len, out, NULL, 0);
}

/* ---- candidates and cancels ------------------------------------------------------ */

static bool grow(void **arr, size_t *cap, size_t n, size_t size)
{
	if (n < *cap)
		return true;
	size_t nc = *cap ? *cap * 2 : 256;
	if (nc > ROWS_MAX)
		nc = ROWS_MAX;
	void *na = realloc(*arr, nc * size);
	if (na == NULL)
		return false;
	*arr = na;
	*cap = nc;
	return true;
}

static uint8_t *copy_bytes(const ProtobufCBinaryData *b)
{
	uint8_t *p = malloc(b->len ? b->len : 1);
	if (p != NULL && b->len)
		memcpy(p, b->data, b->len);
	return p;
}

static void add_row(struct kview *v, const rd_kafka_message_t *m, const kreq__opened_t *o)
{
	const Kreq__Request *q = o->u.req;
	if (v->o->method != NULL && strcmp(q->method, v->o->method) != 0)
		return;
	if (v->nrows >= ROWS_MAX ||
	    !grow((void **)&v->rows, &v->caprows, v->nrows, sizeof(*v->rows))) {
		v->truncated = true;
		return;
	}
	struct krow *r = &v->rows[v->nrows];
	memset(r, 0, sizeof(*r));
	r->method = strdup(q->method);
	r->idem = copy_bytes(&q->idempotency_key);
	if (r->method == NULL || r->idem == NULL) {
		free(r->method);
		free(r->idem);
		v->truncated = true;
		return;
	}
	rd_kafka_timestamp_type_t tstype;
	r->partition = m->partition;
	r->offset = m->offset;
	r->timestamp = rd_kafka_message_timestamp(m, &tstype);
	r->issued_at = q->issued_at_ms;
	r->deadline = q->deadline_ms;
	r->attempt = q->attempt;
	r->idem_len = q->idempotency_key.len;
	memcpy(r->key_id, o->key_id, sizeof(r->key_id));
	memcpy(r->corr, q->correlation_id.data, KREQ__CORR_ID_BYTES);
	kreq__request_digest(q, r->digest);
	v->nrows++;
}

static void add_cancel(struct kview *v, const rd_kafka_message_t *m, const kreq__opened_t *o)
{
	const Kreq__Cancel *c = o->u.cancel;
	if (v->ncancels >= ROWS_MAX ||
	    !grow((void **)&v->cancels, &v->capcancels, v->ncancels, sizeof(*v->cancels))) {
		v->truncated = true;
		return;
	}
	struct kcancel *k = &v->cancels[v->ncancels];
	k->idem = copy_bytes(&c->idempotency_key);
	if (k->idem == NULL) {
		v->truncated = true;
		return;
	}
	k->partition = m->partition;
	k->idem_len = c->idempotency_key.len;
	memcpy(k->key_id, o->key_id, sizeof(k->key_id));
	memcpy(k->corr, c->correlation_id.data, KREQ__CORR_ID_BYTES);
	v->ncancels++;
}

static void on_request_record(struct kview *v, const rd_kafka_message_t *m)
{
	kreq__opened_t o;
	int err = open_record(v, v->now_ms, m, &o);
	if (err == KREQ_EEXPIRED) {
		v->expired++;
		return;
	}
	if (err != KREQ_OK) {
		count_bad(v, err);
		return;
	}
	if (o.kind == KREQ__KIND_REQUEST)
		add_row(v, m, &o);
	else if (o.kind == KREQ__KIND_CANCEL)
		add_cancel(v, m, &o);
	/* anything else in a requests topic is dropped by workers too */
	kreq__opened_clear(&o);
}

/* ---- matching: rows sorted by identity --------------------------------------------- */

/* (partition, key id, idempotency key): a worker's deduplication scope. */
static int cmp_scope(const struct krow *r, int32_t partition, const char *key_id,
                     const uint8_t *idem, size_t idem_len)
{
	if (r->partition != partition)
		return r->partition < partition ? -1 : 1;
	int c = strcmp(r->key_id, key_id);
	if (c != 0)
		return c;
	if (r->idem_len != idem_len)
		return r->idem_len < idem_len ? -1 : 1;
	return memcmp(r->idem, idem, idem_len);
}

static int cmp_identity(const void *pa, const void *pb)
{
	const struct krow *a = pa, *b = pb;
	int c = cmp_scope(a, b->partition, b->key_id, b->idem, b->idem_len);
	if (c == 0)
		c = memcmp(a->corr, b->corr, KREQ__CORR_ID_BYTES);
	if (c == 0)
		c = (a->offset > b->offset) - (a->offset < b->offset);
	return c;
}

/* Index of the first row whose scope is not below the given one. */
static size_t first_in_scope(const struct kview *v, int32_t partition, const char *key_id,
                             const uint8_t *idem, size_t idem_len)
{
	size_t lo = 0, hi = v->nrows;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (cmp_scope(&v->rows[mid], partition, key_id, idem, idem_len) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Sorts the rows by identity, folds the attempts of one call into its
 * latest record and applies the cancels. */
static void index_rows(struct kview *v)
{
	if (v->nrows > 1)
		qsort(v->rows, v->nrows, sizeof(*v->rows), cmp_identity);
	for (size_t i = 0; i + 1 < v->nrows; i++) {
		const struct krow *a = &v->rows[i], *b = &v->rows[i + 1];
		if (cmp_scope(a, b->partition, b->key_id, b->idem, b->idem_len) == 0 &&
		    memcmp(a->corr, b->corr, KREQ__CORR_ID_BYTES) == 0)
			v->rows[i].superseded = true;
	}
	for (size_t k = 0; k < v->ncancels; k++) {
		const struct kcancel *c = &v->cancels[k];
		for (size_t i = first_in_scope(v, c->partition, c->key_id, c->idem, c->idem_len);
		     i < v->nrows &&
		     cmp_scope(&v->rows[i], c->partition, c->key_id, c->idem, c->idem_len) == 0;
		     i++)
			if (memcmp(v->rows[i].corr, c->corr, KREQ__CORR_ID_BYTES) == 0)
				v->rows[i].cancelled = true;
	}
	for (size_t i = 0; i < v->nrows; i++) {
		const struct krow *r = &v->rows[i];
		for (int p = 0; p < v->nparts; p++) {
			struct kpart *pt = &v->parts[p];
			if (pt->id != r->partition)
				continue;
			if (!pt->has_rows || (pt->oldest_ts >= 0 && r->timestamp < pt->oldest_ts))
				pt->oldest_ts = r->timestamp; /* -1 (unknown) sticks */
			pt->has_rows = true;
		}
	}
}

static void on_result_record(struct kview *v, const rd_kafka_message_t *m)
{
	kreq__opened_t o;
	int err = open_record(v, 0, m, &o); /* an answer stays an answer */
	if (err != KREQ_OK) {
		count_bad(v, err);
		return;
	}
	if (o.kind == KREQ__KIND_RESULT) {
		const Kreq__Result *r = o.u.result;
		for (size_t i = first_in_scope(v, m->partition, r->request_key_id,
		                               r->idempotency_key.data, r->idempotency_key.len);
		     i < v->nrows &&
		     cmp_scope(&v->rows[i], m->partition, r->request_key_id,
		               r->idempotency_key.data, r->idempotency_key.len) == 0;
		     i++)
			if (sodium_memcmp(v->rows[i].digest, r->request_digest.data, 32) == 0)
				v->rows[i].answered = true;
	}
	kreq__opened_clear(&o);
}

/* ---- the two reads ------------------------------------------------------------------ */

static int read_requests(struct kview *v)
{
	struct krange *r = calloc((size_t)v->nparts, sizeof(*r));
	if (r == NULL)
		return cli_fail(CLI_EXIT_FAIL, SUB, "out of memory");
	int rc = CLI_EXIT_OK;
	for (int i = 0; rc == CLI_EXIT_OK && i < v->nparts; i++) {
		struct kpart *pt = &v->parts[i];
		rc = watermarks(v, v->req_topic, pt->id, &pt->low, &pt->end);
		int64_t from = pt->committed > pt->low ? pt->committed : pt->low;
		r[i] = (struct krange){.partition = pt->id, .start = from, .end = pt->end};
	}
	if (rc == CLI_EXIT_OK)
		rc = read_ranges(v, v->req_topic, r, v->nparts, on_request_record);
	free(r);
	return rc;
}

/* The partitions of l (results partitions holding records) for which
 * Kafka found no result at or after the oldest candidate's timestamp. A
 * real cluster means it: nothing was written since, nothing to read. But
 * librdkafka's mock cluster (`kreq dev`) answers every lookup by time with
 * "none", which made answered requests show as waiting: so ask once more
 * for timestamp 0, which a cluster that looks up by time answers with the
 * partition's first record. Only then skip the partition; else read it
 * all. */
static int results_none_since(struct kview *v, rd_kafka_topic_partition_list_t *l)
{
	for (int k = 0; k < l->cnt; k++)
		l->elems[k].offset = 0;
	rd_kafka_resp_err_t err = rd_kafka_offsets_for_times(v->rk, l, budget_ms(v));
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		char what[TOPIC_NAME_MAX + 64];
		snprintf(what, sizeof(what), "no offsets by time of %s", v->res_topic);
		return fail_kafka(v, what, err);
	}
	for (int k = 0; k < l->cnt; k++)
		for (int i = 0; i < v->nparts; i++)
			if (v->parts[i].id == l->elems[k].partition && l->elems[k].err == 0 &&
			    l->elems[k].offset >= 0)
				v->parts[i].res_start = v->parts[i].res_end; /* none since */
	return CLI_EXIT_OK;
}

/* Where each results partition with candidates starts: the first result
 * written at or after its oldest candidate's record timestamp. */
static int results_start(struct kview *v)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(v->nparts);
	for (int i = 0; i < v->nparts; i++) {
		struct kpart *pt = &v->parts[i];
		pt->res_start = pt->res_end = 0;
		if (!pt->has_rows || !has_results_partition(v, pt->id))
			continue;
		int rc = watermarks(v, v->res_topic, pt->id, &pt->res_start, &pt->res_end);
		if (rc != CLI_EXIT_OK) {
			rd_kafka_topic_partition_list_destroy(l);
			return rc;
		}
		if (pt->oldest_ts >= 0)
			rd_kafka_topic_partition_list_add(l, v->res_topic, pt->id)->offset =
			    pt->oldest_ts;
	}
	int rc = CLI_EXIT_OK;
	rd_kafka_resp_err_t err = l->cnt ? rd_kafka_offsets_for_times(v->rk, l, budget_ms(v))
	                                 : RD_KAFKA_RESP_ERR_NO_ERROR;
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		char what[TOPIC_NAME_MAX + 64];
		snprintf(what, sizeof(what), "no offsets by time of %s", v->res_topic);
		rc = fail_kafka(v, what, err);
	}
	rd_kafka_topic_partition_list_t *none = rd_kafka_topic_partition_list_new(l->cnt);
	for (int k = 0; rc == CLI_EXIT_OK && k < l->cnt; k++) {
		const rd_kafka_topic_partition_t *tp = &l->elems[k];
		for (int i = 0; i < v->nparts; i++) {
			struct kpart *pt = &v->parts[i];
			if (pt->id != tp->partition)
				continue;
			if (tp->err != RD_KAFKA_RESP_ERR_NO_ERROR)
				continue; /* keep the earliest offset: read it all */
			if (tp->offset < 0 && pt->res_end > pt->res_start)
				rd_kafka_topic_partition_list_add(none, v->res_topic, pt->id);
			else if (tp->offset > pt->res_start)
				pt->res_start = tp->offset < pt->res_end ? tp->offset : pt->res_end;
		}
	}
	rd_kafka_topic_partition_list_destroy(l);
	if (rc == CLI_EXIT_OK && none->cnt)
		rc = results_none_since(v, none);
	rd_kafka_topic_partition_list_destroy(none);
	return rc;
}

static int read_results(struct kview *v)
{
	if (v->nrows == 0 || v->res_nparts == 0)
		return CLI_EXIT_OK;
	int rc = results_start(v);
	if (rc != CLI_EXIT_OK)
		return rc;
	struct krange *r = calloc((size_t)v->nparts, sizeof(*r));
	if (r == NULL)
		return cli_fail(CLI_EXIT_FAIL, SUB, "out of memory");
	int n = 0;
	for (int i = 0; i < v->nparts; i++) {
		const struct kpart *pt = &v->parts[i];
		if (pt->has_rows && has_results_partition(v, pt->id))
			r[n++] = (struct krange){
			    .partition = pt->id, .start = pt->res_start, .end = pt->res_end};
	}
	rc = read_ranges(v, v->res_topic, r, n, on_result_record);
	free(r);
	return rc;
}

/* ---- output ------------------------------------------------------------------------- */

static int64_t lag_of(const struct kpart *pt)
{
	int64_t from = pt->committed > pt->low ? pt->committed : pt->low;
	return pt->end > from ? pt->end - from : 0;
}

static const char *state_of(const struct krow *r)
{
	return r->cancelled ? STATE_CANCELLED : STATE_WAITING;
}

/* The idempotency key as text when it is printable ASCII, else hex; buf
 * holds 2 * KREQ__IDEM_KEY_MAX + 1 bytes. */
static bool idem_text(const struct krow *r, char *buf)
{
	bool text = r->idem_len > 0;
	for (size_t i = 0; text && i < r->idem_len; i++)
		text = r->idem[i] >= 0x20 && r->idem[i] < 0x7f;
	if (!text) {
		cli_hex(r->idem, r->idem_len, buf);
		return false;
	}
	memcpy(buf, r->idem, r->idem_len);
	buf[r->idem_len] = '\0';
	return true;
}

static enum sort_key krow_sort_by; /* qsort has no context argument */

static int cmp_i64(int64_t a, int64_t b)
{
	return (a > b) - (a < b);
}

static int compare_krows(const void *pa, const void *pb)
{
	const struct krow *a = *(const struct krow *const *)pa;
	const struct krow *b = *(const struct krow *const *)pb;
	int c = 0;
	if (krow_sort_by == SORT_LEFT)
		c = cmp_i64(a->deadline, b->deadline);
	else if (krow_sort_by == SORT_METHOD)
		c = strcmp(a->method, b->method);
	else if (krow_sort_by == SORT_ATTEMPT)
		c = cmp_i64(b->attempt, a->attempt);
	if (c == 0)
		c = cmp_i64(a->issued_at, b->issued_at);
	if (c == 0)
		c = cmp_i64(a->partition, b->partition);
	if (c == 0)
		c = cmp_i64(a->offset, b->offset);
	return c;
}

/* The rows to show, sorted (*n of them); NULL if out of memory. */
static const struct krow **outstanding(const struct kview *v, size_t *n)
{
	const struct krow **out = calloc(v->nrows ? v->nrows : 1, sizeof(*out));
	*n = 0;
	if (out == NULL)
		return NULL;
	for (size_t i = 0; i < v->nrows; i++)
		if (!v->rows[i].superseded && !v->rows[i].answered)
			out[(*n)++] = &v->rows[i];
	krow_sort_by = v->o->sort;
	if (*n > 1)
		qsort(out, *n, sizeof(*out), compare_krows);
	return out;
}

static json_t *json_row(const struct kview *v, const struct krow *r)
{
	char idem[2 * KREQ__IDEM_KEY_MAX + 1], corr[2 * KREQ__CORR_ID_BYTES + 1];
	bool text = idem_text(r, idem);
	cli_hex(r->corr, KREQ__CORR_ID_BYTES, corr);
	return json_pack("{s:i, s:I, s:I, s:I, s:s, s:s, s:s, s:s, s:s, s:I, s:s, s:b}",
	                 "partition", (int)r->partition, "offset", (json_int_t)r->offset, "age_ms",
	                 (json_int_t)(v->now_ms - r->issued_at), "time_left_ms",
	                 (json_int_t)(r->deadline - v->now_ms), "method", r->method, "key_id",
	                 r->key_id, "idempotency_key", idem, "idempotency_key_encoding",
	                 text ? "text" : "hex", "correlation_id", corr, "attempt",
	                 (json_int_t)r->attempt, "state", state_of(r), "verified", v->kr != NULL);
}

static int print_json(const struct kview *v, const struct krow **rows, size_t n)
{
	json_t *parts = json_array(), *out = json_array();
	for (int i = 0; parts != NULL && i < v->nparts; i++) {
		const struct kpart *pt = &v->parts[i];
		json_array_append_new(
		    parts, json_pack("{s:i, s:o, s:I, s:I}", "partition", (int)pt->id, "committed",
		                     pt->committed >= 0 ? json_integer(pt->committed) : json_null(),
		                     "end", (json_int_t)pt->end, "lag", (json_int_t)lag_of(pt)));
	}
	for (size_t i = 0; out != NULL && i < n; i++)
		json_array_append_new(out, json_row(v, rows[i]));
	json_t *j =
	    json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:b, s:o, s:o, s:I, s:I, s:b}", "service",
	              v->o->service, "prefix", v->o->prefix, "requests_topic", v->req_topic,
	              "results_topic", v->res_topic, "group", v->group, "now_ms",
	              (json_int_t)v->now_ms, "verified", v->kr != NULL, "partitions", parts,
	              "outstanding", out, "expired", (json_int_t)v->expired, "not_verified",
	              (json_int_t)v->bad_total, "truncated", v->truncated);
	return cli_print_json(SUB, j);
}

static void print_text_row(const struct kview *v, const struct krow *r)
{
	char age[32], left[32], idem[2 * KREQ__IDEM_KEY_MAX + 1], corr[2 * KREQ__CORR_ID_BYTES + 1];
	cli_fmt_ms(v->now_ms - r->issued_at, age, sizeof(age));
	cli_fmt_ms(r->deadline - v->now_ms, left, sizeof(left));
	idem_text(r, idem);
	cli_hex(r->corr, KREQ__CORR_ID_BYTES, corr);
	printf("%-9d %-10lld %9s %9s %7u %-9s %-10s %-16s %-32s %-24s %s\n", (int)r->partition,
	       (long long)r->offset, age, left, (unsigned)r->attempt, state_of(r),
	       v->kr != NULL ? "verified" : "unverified", r->key_id, corr, r->method, idem);
}

static int print_text(const struct kview *v, const struct krow **rows, size_t n)
{
	size_t cancelled = 0;
	for (size_t i = 0; i < n; i++)
		cancelled += rows[i]->cancelled;
	printf("service %s: %zu outstanding (%zu waiting, %zu cancelled) in %s, group %s%s\n",
	       v->o->service, n, n - cancelled, cancelled, v->req_topic, v->group,
	       v->truncated ? " (TRUNCATED)" : "");
	if (v->kr != NULL)
		printf("signatures verified with the keys of %s; %ld past their deadline, "
		       "%ld that did not verify: not listed\n",
		       v->o->keyring, v->expired, v->bad_total);
	else
		printf("UNVERIFIED: no --keyring, records decoded without checking signatures; "
		       "%ld past their deadline, %ld undecodable: not listed\n",
		       v->expired, v->bad_total);
	printf("\n%-9s %-10s %-10s %s\n", "PARTITION", "COMMITTED", "END", "LAG");
	for (int i = 0; i < v->nparts; i++) {
		const struct kpart *pt = &v->parts[i];
		char committed[24] = "-";
		if (pt->committed >= 0)
			snprintf(committed, sizeof(committed), "%lld", (long long)pt->committed);
		printf("%-9d %-10s %-10lld %lld\n", (int)pt->id, committed, (long long)pt->end,
		       (long long)lag_of(pt));
	}
	printf("\n%-9s %-10s %9s %9s %7s %-9s %-10s %-16s %-32s %-24s %s\n", "PARTITION", "OFFSET",
	       "AGE", "LEFT", "ATTEMPT", "STATE", "SIGNATURE", "KEY_ID", "CORRELATION_ID", "METHOD",
	       "IDEMPOTENCY_KEY");
	for (size_t i = 0; i < n; i++)
		print_text_row(v, rows[i]);
	return fflush(stdout) == 0 ? CLI_EXIT_OK
	                           : cli_fail(CLI_EXIT_FAIL, SUB, "cannot write to stdout");
}

static void report_skipped(const struct kview *v)
{
	if (v->kr == NULL)
		fprintf(stderr,
		        "kreq %s: no --keyring: records were decoded without verification "
		        "(rows marked unverified)\n",
		        SUB);
	if (v->bad_total > 0) {
		fprintf(stderr, "kreq %s: %ld record%s %s (", SUB, v->bad_total,
		        v->bad_total == 1 ? "" : "s",
		        v->kr != NULL ? "did not verify" : "could not be decoded");
		const char *sep = "";
		for (int e = 1; e < ERR_SLOTS; e++) {
			if (v->bad[e] == 0)
				continue;
			fprintf(stderr, "%s%s %ld", sep, kreq_err_name(-e), v->bad[e]);
			sep = ", ";
		}
		fputs("), not listed\n", stderr);
	}
	if (v->truncated)
		fprintf(stderr,
		        "kreq %s: more than %d candidate requests or cancels: the list is "
		        "truncated\n",
		        SUB, ROWS_MAX);
}

static int print_view(const struct kview *v)
{
	size_t n = 0;
	const struct krow **rows = outstanding(v, &n);
	if (rows == NULL)
		return cli_fail(CLI_EXIT_FAIL, SUB, "out of memory");
	report_skipped(v);
	int rc = v->o->json ? print_json(v, rows, n) : print_text(v, rows, n);
	free(rows);
	return rc;
}

/* ---- the whole Kafka view ------------------------------------------------------------ */

static void kview_free(struct kview *v)
{
	if (v->rk != NULL) /* no consumer close: nothing to commit, no group to leave */
		rd_kafka_destroy_flags(v->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
	for (size_t i = 0; i < v->nrows; i++) {
		free(v->rows[i].method);
		free(v->rows[i].idem);
	}
	for (size_t i = 0; i < v->ncancels; i++)
		free(v->cancels[i].idem);
	free(v->rows);
	free(v->cancels);
	free(v->parts);
	kreq_keyring_release(v->kr);
}

int cli_pending_kafka(const struct pending_opts *o)
{
	struct kview v;
	memset(&v, 0, sizeof(v));
	v.o = o;
	snprintf(v.req_topic, sizeof(v.req_topic), "%s.%s.requests", o->prefix, o->service);
	snprintf(v.res_topic, sizeof(v.res_topic), "%s.%s.results", o->prefix, o->service);
	snprintf(v.group, sizeof(v.group), "%s.%s", o->prefix, o->service);
	kreq_conf_t *conf = kreq_conf_new();
	if (conf == NULL)
		return cli_fail(CLI_EXIT_FAIL, SUB, "out of memory");
	kreq__limits_from_conf(&v.lim, conf);
	kreq_conf_destroy(conf);
	v.no_clock = v.lim;
	v.no_clock.skew_ms = INT64_MAX / 4;
	int rc = o->keyring != NULL ? cli_load_keyring(SUB, o->keyring, &v.kr) : CLI_EXIT_OK;
	if (rc != CLI_EXIT_OK)
		return rc;
	v.until = cli_mono_ms() + o->timeout_ms;
	v.now_ms = kreq__now_ms();
	rc = consumer_new(&v);
	if (rc == CLI_EXIT_OK)
		rc = load_topics(&v);
	if (rc == CLI_EXIT_OK)
		rc = load_committed(&v);
	if (rc == CLI_EXIT_OK)
		rc = read_requests(&v);
	if (rc == CLI_EXIT_OK) {
		index_rows(&v);
		rc = read_results(&v);
	}
	if (rc == CLI_EXIT_OK)
		rc = print_view(&v);
	kview_free(&v);
	return rc;
}
