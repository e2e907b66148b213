/*
 * dead_read.c — reading a dead-letter topic, bounded (see dead.h).
 *
 * Design: as `kreq pending` reads the requests topic: direct assignment, no
 * group membership and no commits (a unique, never used group.id because
 * librdkafka wants one), isolation.level=read_committed, partition EOF
 * events on. Each read takes the end offsets (the last stable offsets) of
 * the partitions first and stops at them, or when the time budget set at
 * open runs out (an error naming where it stopped). A record that is too
 * large, does not decode, does not verify or is not a dead letter is handed
 * on with its verdict, like any other.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "cli/cli.h"
#include "cli/dead.h"
#include "common/internal.h"

#define POLL_MS 100

void dead_rec_clear(struct dead_rec *r)
{
	kreq__opened_clear(&r->opened);
	memset(r, 0, sizeof(*r));
}

/* ---- budget and errors ------------------------------------------------------- */

static int budget_ms(const struct dead_reader *rd)
{
	int64_t left = rd->until - cli_mono_ms();
	return left > 0 ? (int)left : 1;
}

static int fail_kafka(const struct dead_reader *rd, const char *what, rd_kafka_resp_err_t err)
{
	return cli_fail(CLI_EXIT_FAIL, rd->sub, "cannot reach Kafka at %s: %s within %ld ms (%s)",
	                rd->bootstrap, what, rd->timeout_ms, rd_kafka_err2str(err));
}

/* ---- open ------------------------------------------------------------------------ */

static int consumer_new(struct dead_reader *rd)
{
	char group[80];
	snprintf(group, sizeof(group), "kreq-cli-dead-%ld-%08x", (long)getpid(),
	         (unsigned)randombytes_random());
	const char *props[][2] = {
	    {"bootstrap.servers", rd->bootstrap},  {"group.id", group},
	    {"client.id", "kreq-cli-dead"},        {"enable.auto.commit", "false"},
	    {"enable.auto.offset.store", "false"}, {"isolation.level", "read_committed"},
	    {"enable.partition.eof", "true"},      {"allow.auto.create.topics", "false"},
	    {"fetch.wait.max.ms", "100"},          {"log_level", "2"}};
	return cli_consumer_new(rd->sub, props, sizeof(props) / sizeof(props[0]), &rd->rk);
}

static int cmp_i32(const void *a, const void *b)
{
	int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
	return (x > y) - (x < y);
}

static int load_partitions(struct dead_reader *rd)
{
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(rd->rk, rd->topic, NULL);
	if (rkt == NULL)
		return cli_fail(CLI_EXIT_USAGE, rd->sub, "invalid topic '%s': %s", rd->topic,
		                rd_kafka_err2str(rd_kafka_last_error()));
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t err = rd_kafka_metadata(rd->rk, 0, rkt, &md, budget_ms(rd));
	rd_kafka_topic_destroy(rkt);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		char what[DEAD_TOPIC_MAX + 32];
		snprintf(what, sizeof(what), "no metadata for topic %s", rd->topic);
		return fail_kafka(rd, what, err);
	}
	int rc = CLI_EXIT_OK;
	const rd_kafka_metadata_topic_t *mt = md->topic_cnt == 1 ? &md->topics[0] : NULL;
	if (mt == NULL || mt->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
	    mt->partition_cnt == 0) {
		rc = cli_fail(CLI_EXIT_FAIL, rd->sub,
		              "topic %s does not exist on %s (wrong --service, --prefix or "
		              "--topic, or no worker of the service has run yet)",
		              rd->topic, rd->bootstrap);
	} else if (mt->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		rc = cli_fail(CLI_EXIT_FAIL, rd->sub, "topic %s: %s", rd->topic,
		              rd_kafka_err2str(mt->err));
	} else if ((rd->parts = calloc((size_t)mt->partition_cnt, sizeof(*rd->parts))) == NULL) {
		rc = cli_fail(CLI_EXIT_FAIL, rd->sub, "out of memory");
	} else {
		rd->nparts = mt->partition_cnt;
		for (int i = 0; i < rd->nparts; i++)
			rd->parts[i] = mt->partitions[i].id;
		qsort(rd->parts, (size_t)rd->nparts, sizeof(*rd->parts), cmp_i32);
	}
	rd_kafka_metadata_destroy(md);
	return rc;
}

int dead_reader_open(struct dead_reader *rd, const char *sub, const char *bootstrap,
                     const char *topic, const char *keyfile, long timeout_ms)
{
	memset(rd, 0, sizeof(*rd));
	rd->sub = sub;
	rd->bootstrap = bootstrap;
	rd->topic = topic;
	rd->timeout_ms = timeout_ms;
	kreq_conf_t *conf = kreq_conf_new();
	if (conf == NULL)
		return cli_fail(CLI_EXIT_FAIL, sub, "out of memory");
	kreq__limits_from_conf(&rd->no_clock, conf);
	kreq_conf_destroy(conf);
	rd->no_clock.skew_ms = INT64_MAX / 4;
	rd->no_clock.envelope_max = DEAD_MAX_BYTES;
	rd->no_clock.payload_max = DEAD_MAX_BYTES; /* a worker may allow more than the default */
	int rc = cli_load_keyring(sub, keyfile, &rd->kr);
	if (rc != CLI_EXIT_OK)
		return rc;
	rd->until = cli_mono_ms() + timeout_ms;
	rc = consumer_new(rd);
	return rc == CLI_EXIT_OK ? load_partitions(rd) : rc;
}

void dead_reader_close(struct dead_reader *rd)
{
	if (rd->rk != NULL) /* nothing to commit, no group to leave */
		rd_kafka_destroy_flags(rd->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
	free(rd->parts);
	kreq_keyring_release(rd->kr);
	memset(rd, 0, sizeof(*rd));
}

/* ---- one record --------------------------------------------------------------------- */

static const char *kind_name(uint32_t kind)
{
	switch (kind) {
	case KREQ__KIND_REQUEST:
		return "request";
	case KREQ__KIND_REPLY:
		return "reply";
	case KREQ__KIND_CANCEL:
		return "cancel";
	case KREQ__KIND_RESULT:
		return "result";
	case KREQ__KIND_ATTEMPT:
		return "attempt";
	default:
		return "unknown";
	}
}

/* The key id the envelope claims, from its header only. */
static void claimed_signer(const uint8_t *buf, size_t len, char *out)
{
	kreq__env_view_t env;
	out[0] = '\0';
	if (buf == NULL || len == 0 || kreq__envelope_parse(buf, len, &env, NULL, 0) != KREQ_OK)
		return;
	if (env.key_id_len == 0 || env.key_id_len > KREQ_KEY_ID_MAX ||
	    memchr(env.key_id, 0, env.key_id_len) != NULL ||
	    !kreq__key_id_valid((const char *)env.key_id, env.key_id_len))
		return;
	memcpy(out, env.key_id, env.key_id_len);
	out[env.key_id_len] = '\0';
}

static void open_rec(const struct dead_reader *rd, const rd_kafka_message_t *m, struct dead_rec *r)
{
	rd_kafka_timestamp_type_t tstype;
	memset(r, 0, sizeof(*r));
	r->partition = m->partition;
	r->offset = m->offset;
	r->timestamp = rd_kafka_message_timestamp(m, &tstype);
	r->verdict = kreq__envelope_open(rd->kr, &rd->no_clock, 0, m->payload, m->len, &r->opened,
	                                 r->detail, sizeof(r->detail));
	if (r->verdict == KREQ_OK && r->opened.kind != KREQ__KIND_DEAD) {
		snprintf(r->detail, sizeof(r->detail), "not a dead letter: a %s record (kind %u)",
		         kind_name(r->opened.kind), (unsigned)r->opened.kind);
		memcpy(r->signer, r->opened.key_id, sizeof(r->signer));
		kreq__opened_clear(&r->opened);
		r->verdict = KREQ_EMALFORMED;
		return;
	}
	if (r->verdict == KREQ_OK) {
		memcpy(r->signer, r->opened.key_id, sizeof(r->signer));
		r->detail[0] = '\0';
		return;
	}
	if (m->len == 0)
		snprintf(r->detail, sizeof(r->detail), "empty record");
	claimed_signer(m->payload, m->len, r->signer);
}

/* ---- reading ranges --------------------------------------------------------------------- */

struct range {
	int32_t partition;
	int64_t start, end, next;
	bool done;
};

static struct range *range_of(struct range *r, int n, const rd_kafka_message_t *m)
{
	for (int i = 0; i < n; i++)
		if (r[i].partition == m->partition)
			return &r[i];
	return NULL;
}

static bool fatal_read_error(rd_kafka_resp_err_t err)
{
	return err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
	       err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC ||
	       err == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION ||
	       err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED;
}

static int timed_out(const struct dead_reader *rd, const struct range *r, int n,
                     rd_kafka_resp_err_t last)
{
	const struct range *x = r;
	for (int i = 0; i < n; i++)
		if (!r[i].done) {
			x = &r[i];
			break;
		}
	return cli_fail(CLI_EXIT_FAIL, rd->sub,
	                "timed out after %ld ms reading %s from Kafka at %s: partition %d at "
	                "offset %lld of %lld%s%s",
	                rd->timeout_ms, rd->topic, rd->bootstrap, (int)x->partition,
	                (long long)x->next, (long long)x->end, last ? "; last Kafka error: " : "",
	                last ? rd_kafka_err2str(last) : "");
}

/* One message of the read: a record in range goes to fn. */
static int on_message(struct dead_reader *rd, const rd_kafka_message_t *m, struct range *x,
                      int *open, dead_rec_fn *fn, void *arg, bool *stop)
{
	if (x == NULL || x->done)
		return CLI_EXIT_OK;
	if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
		x->done = true;
		(*open)--;
		return CLI_EXIT_OK;
	}
	if (m->offset < x->end) {
		struct dead_rec rec;
		open_rec(rd, m, &rec);
		*stop = !fn(arg, &rec);
		dead_rec_clear(&rec);
	}
	x->next = m->offset + 1;
	if (x->next >= x->end) {
		x->done = true;
		(*open)--;
	}
	return CLI_EXIT_OK;
}

static int read_ranges(struct dead_reader *rd, struct range *r, int n, dead_rec_fn *fn, void *arg)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n > 0 ? n : 1);
	int open = 0;
	for (int i = 0; i < n; i++) {
		r[i].next = r[i].start;
		r[i].done = r[i].start >= r[i].end;
		if (!r[i].done) {
			rd_kafka_topic_partition_list_add(l, rd->topic, r[i].partition)->offset =
			    r[i].start;
			open++;
		}
	}
	rd_kafka_resp_err_t err = open ? rd_kafka_assign(rd->rk, l) : RD_KAFKA_RESP_ERR_NO_ERROR;
	rd_kafka_topic_partition_list_destroy(l);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		return cli_fail(CLI_EXIT_FAIL, rd->sub, "cannot assign the partitions of %s: %s",
		                rd->topic, rd_kafka_err2str(err));
	int rc = CLI_EXIT_OK;
	bool stop = false;
	rd_kafka_resp_err_t last = RD_KAFKA_RESP_ERR_NO_ERROR;
	while (rc == CLI_EXIT_OK && open > 0 && !stop) {
		int64_t left = rd->until - cli_mono_ms();
		if (left <= 0) {
			rc = timed_out(rd, r, n, last);
			break;
		}
		rd_kafka_message_t *m =
		    rd_kafka_consumer_poll(rd->rk, (int)(left < POLL_MS ? left : POLL_MS));
		if (m == NULL)
			continue;
		bool ours = m->rkt != NULL && strcmp(rd_kafka_topic_name(m->rkt), rd->topic) == 0;
		if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR &&
		    m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
			last = m->err;
			if (fatal_read_error(m->err))
				rc = cli_fail(CLI_EXIT_FAIL, rd->sub,
				              "reading %s from Kafka at %s: %s", rd->topic,
				              rd->bootstrap, rd_kafka_message_errstr(m));
		} else if (ours) {
			rc = on_message(rd, m, range_of(r, n, m), &open, fn, arg, &stop);
		}
		rd_kafka_message_destroy(m);
	}
	rd_kafka_assign(rd->rk, NULL);
	return rc;
}

static int watermarks(struct dead_reader *rd, int32_t id, int64_t *low, int64_t *end)
{
	rd_kafka_resp_err_t err =
	    rd_kafka_query_watermark_offsets(rd->rk, rd->topic, id, low, end, budget_ms(rd));
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
		return CLI_EXIT_OK;
	char what[DEAD_TOPIC_MAX + 64];
	snprintf(what, sizeof(what), "no end offsets of %s [%d]", rd->topic, (int)id);
	return fail_kafka(rd, what, err);
}

/* Moves each range's start to the first record written at or after
 * since_ms (none: the range is empty). */
static int seek_since(struct dead_reader *rd, struct range *r, int n, int64_t since_ms)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
	for (int i = 0; i < n; i++)
		rd_kafka_topic_partition_list_add(l, rd->topic, r[i].partition)->offset = since_ms;
	rd_kafka_resp_err_t err = rd_kafka_offsets_for_times(rd->rk, l, budget_ms(rd));
	int rc = CLI_EXIT_OK;
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		char what[DEAD_TOPIC_MAX + 64];
		snprintf(what, sizeof(what), "no offsets by time of %s", rd->topic);
		rc = fail_kafka(rd, what, err);
	}
	for (int k = 0; rc == CLI_EXIT_OK && k < l->cnt; k++) {
		const rd_kafka_topic_partition_t *tp = &l->elems[k];
		struct range *x = NULL;
		for (int i = 0; i < n; i++)
			if (r[i].partition == tp->partition)
				x = &r[i];
		if (x == NULL || tp->err != RD_KAFKA_RESP_ERR_NO_ERROR)
			continue; /* keep the earliest offset: read it all */
		if (tp->offset < 0)
			x->start = x->end; /* nothing written since */
		else if (tp->offset > x->start)
			x->start = tp->offset < x->end ? tp->offset : x->end;
	}
	rd_kafka_topic_partition_list_destroy(l);
	return rc;
}

int dead_read_all(struct dead_reader *rd, int64_t since_ms, dead_rec_fn *fn, void *arg)
{
	struct range *r = calloc((size_t)rd->nparts, sizeof(*r));
	if (r == NULL)
		return cli_fail(CLI_EXIT_FAIL, rd->sub, "out of memory");
	int rc = CLI_EXIT_OK;
	for (int i = 0; rc == CLI_EXIT_OK && i < rd->nparts; i++) {
		r[i].partition = rd->parts[i];
		rc = watermarks(rd, rd->parts[i], &r[i].start, &r[i].end);
	}
	if (rc == CLI_EXIT_OK && since_ms > 0)
		rc = seek_since(rd, r, rd->nparts, since_ms);
	if (rc == CLI_EXIT_OK)
		rc = read_ranges(rd, r, rd->nparts, fn, arg);
	free(r);
	return rc;
}

/* Hands on the record at exactly the wanted offset, if it is there. */
struct one {
	int64_t offset;
	bool found;
	dead_rec_fn *fn;
	void *arg;
};

static bool on_one(void *arg, struct dead_rec *r)
{
	struct one *o = arg;
	if (r->offset == o->offset) {
		o->found = true;
		o->fn(o->arg, r);
	}
	return false;
}

int dead_read_one(struct dead_reader *rd, int32_t partition, int64_t offset, dead_rec_fn *fn,
                  void *arg)
{
	bool known = false;
	for (int i = 0; i < rd->nparts; i++)
		known = known || rd->parts[i] == partition;
	if (!known)
		return cli_fail(CLI_EXIT_FAIL, rd->sub, "%s has no partition %d (it has %d)",
		                rd->topic, (int)partition, rd->nparts);
	struct range r = {.partition = partition};
	int64_t low = 0;
	int rc = watermarks(rd, partition, &low, &r.end);
	if (rc != CLI_EXIT_OK)
		return rc;
	if (offset < low)
		return cli_fail(CLI_EXIT_FAIL, rd->sub,
		                "%d:%lld is no longer in %s (partition %d starts at %lld)",
		                (int)partition, (long long)offset, rd->topic, (int)partition,
		                (long long)low);
	if (offset >= r.end)
		return cli_fail(CLI_EXIT_FAIL, rd->sub,
		                "no record at %d:%lld in %s (partition %d ends at %lld)",
		                (int)partition, (long long)offset, rd->topic, (int)partition,
		                (long long)r.end);
	r.start = offset;
	struct one o = {.offset = offset, .fn = fn, .arg = arg};
	rc = read_ranges(rd, &r, 1, on_one, &o);
	if (rc == CLI_EXIT_OK && !o.found)
		rc = cli_fail(CLI_EXIT_FAIL, rd->sub,
		              "no record at %d:%lld in %s (a transaction marker, or a record of "
		              "an aborted transaction)",
		              (int)partition, (long long)offset, rd->topic);
	return rc;
}
