/*
 * tail.c — `kreq tail`: print and verify every envelope in a topic.
 *
 * Design: a plain librdkafka consumer with direct assignment of every
 * partition (learned from the topic's metadata, which also tells early and
 * clearly when Kafka cannot be reached or the topic does not exist), no
 * offset commits, isolation.level=read_committed. librdkafka 2.0 wants a
 * group.id even for assign(), so a unique, never committed one is used.
 *
 * Each record goes through kreq__envelope_open() at the current time, as a
 * receiver would (docs/protocol.md section 5). Messages whose signature
 * verified but whose times are refused (EEXPIRED: an old request; EFUTURE)
 * are opened once more with the clock checks out of the way (time 0 and an
 * unbounded skew), so their fields are still shown, verified. For records that
 * do not verify only the envelope header (kind, claimed key id) is shown:
 * nothing of an unverified body is ever decoded.
 *
 * Stops after --count records, after --timeout-ms without a new record, or
 * on SIGINT/SIGTERM (read from a signalfd between polls). Exit status 4 if
 * any record failed verification (anything but OK and EEXPIRED), else 0.
 */
#include <getopt.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <sodium.h>

#include "cli/cli.h"
#include "common/internal.h"
#include "proto/envelope.h"
#include "proto/unverified.h"

#define SUB                 "tail"
#define METADATA_TIMEOUT_MS 10000
#define POLL_MS             200

struct tail_opts {
	const char *bootstrap, *topic, *keyfile;
	bool from_beginning, json;
	long count, timeout_ms;
};

struct tail {
	struct tail_opts o;
	kreq_keyring_t *kr;
	kreq__limits_t lim;
	rd_kafka_t *rk;
	int sigfd;
	long seen, failed;
	rd_kafka_resp_err_t last_err;
};

/* What is shown of one record. */
struct row {
	int32_t partition;
	int64_t offset;
	const char *kind; /* NULL: not even the envelope header decodes */
	char key_id[KREQ_KEY_ID_MAX + 1];
	char corr[2 * KREQ__CORR_ID_BYTES + 1];
	char method[KREQ__METHOD_MAX + 1];
	int32_t status;
	bool has_status, verified;
	int verdict;
	char detail[512];
};

static void usage(FILE *out)
{
	fputs("usage: kreq tail --bootstrap HOST:PORT --topic TOPIC --keyfile FILE\n"
	      "                 [--from-beginning] [--count N] [--timeout-ms MS] [--json]\n"
	      "\n"
	      "Read every partition of TOPIC and print one line per record: partition,\n"
	      "offset, kind, key id, correlation id, method (requests), status\n"
	      "(replies) and the verdict of verifying it with the keys of FILE, as a\n"
	      "receiver would at this moment: OK or the error (EBADSIG, EUNKNOWNKEY,\n"
	      "EMALFORMED, EEXPIRED for a message past its deadline, ...).\n"
	      "\n"
	      "  --bootstrap HOST:PORT  Kafka bootstrap servers (comma-separated)\n"
	      "  --topic TOPIC          topic to read, e.g. kreq.billing.requests\n"
	      "  --keyfile FILE         key file with the keys to verify with\n"
	      "  --from-beginning       start at the oldest record (default: only new ones)\n"
	      "  --count N              stop after N records\n"
	      "  --timeout-ms MS        stop when MS pass without a new record; also\n"
	      "                         bounds reaching Kafka (default: run until\n"
	      "                         SIGINT/SIGTERM; Kafka must answer within 10 s)\n"
	      "  --json                 one JSON object per record and line\n"
	      "  -h, --help             show this help\n"
	      "\n"
	      "Exit status: 0 done (count reached, idle timeout, or signal), 1 cannot\n"
	      "reach Kafka / topic missing / key file unreadable, 2 usage, 4 at least\n"
	      "one record failed verification (EEXPIRED does not count).\n",
	      out);
}

static int parse(int argc, char **argv, struct tail_opts *o)
{
	static const struct option opts[] = {{"bootstrap", required_argument, NULL, 'b'},
	                                     {"topic", required_argument, NULL, 't'},
	                                     {"keyfile", required_argument, NULL, 'k'},
	                                     {"from-beginning", no_argument, NULL, 'f'},
	                                     {"count", required_argument, NULL, 'c'},
	                                     {"timeout-ms", required_argument, NULL, 'T'},
	                                     {"json", no_argument, NULL, 'j'},
	                                     {"help", no_argument, NULL, 'h'},
	                                     {NULL, 0, NULL, 0}};
	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case 'b':
			o->bootstrap = optarg;
			break;
		case 't':
			o->topic = optarg;
			break;
		case 'k':
			o->keyfile = optarg;
			break;
		case 'f':
			o->from_beginning = true;
			break;
		case 'j':
			o->json = true;
			break;
		case 'c':
			if (!cli_parse_long(optarg, 1, LONG_MAX, &o->count))
				return cli_usage_error(
				    SUB, "--count needs a positive number, not '%s'", optarg);
			break;
		case 'T':
			if (!cli_parse_long(optarg, 1, 86400000, &o->timeout_ms))
				return cli_usage_error(
				    SUB, "--timeout-ms needs 1..86400000 milliseconds, not '%s'",
				    optarg);
			break;
		case 'h':
			usage(stdout);
			return CLI_EXIT_OK;
		default:
			return cli_getopt_error(SUB, argv, c);
		}
	}
	if (optind < argc)
		return cli_usage_error(SUB, "unexpected argument '%s'", argv[optind]);
	if (o->bootstrap == NULL || o->topic == NULL || o->keyfile == NULL)
		return cli_usage_error(SUB, "--bootstrap, --topic and --keyfile are required");
	return -1;
}

/* ---- Kafka ------------------------------------------------------------------ */

static int consumer_new(struct tail *t)
{
	char group[80];
	snprintf(group, sizeof(group), "kreq-cli-tail-%ld-%08x", (long)getpid(),
	         (unsigned)randombytes_random());
	const char *props[][2] = {{"bootstrap.servers", t->o.bootstrap},
	                          {"group.id", group},
	                          {"client.id", "kreq-cli-tail"},
	                          {"enable.auto.commit", "false"},
	                          {"enable.auto.offset.store", "false"},
	                          {"isolation.level", "read_committed"},
	                          {"log_level", "2"}};
	return cli_consumer_new(SUB, props, sizeof(props) / sizeof(props[0]), &t->rk);
}

static int assignment(struct tail *t, const rd_kafka_metadata_topic_t *mt)
{
	if (mt->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || mt->partition_cnt == 0)
		return cli_fail(CLI_EXIT_FAIL, SUB, "topic %s does not exist on %s", t->o.topic,
		                t->o.bootstrap);
	if (mt->err != RD_KAFKA_RESP_ERR_NO_ERROR)
		return cli_fail(CLI_EXIT_FAIL, SUB, "topic %s: %s", t->o.topic,
		                rd_kafka_err2str(mt->err));
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(mt->partition_cnt);
	for (int i = 0; i < mt->partition_cnt; i++)
		rd_kafka_topic_partition_list_add(l, t->o.topic, mt->partitions[i].id)->offset =
		    t->o.from_beginning ? RD_KAFKA_OFFSET_BEGINNING : RD_KAFKA_OFFSET_END;
	rd_kafka_resp_err_t err = rd_kafka_assign(t->rk, l);
	rd_kafka_topic_partition_list_destroy(l);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		return cli_fail(CLI_EXIT_FAIL, SUB, "cannot assign the partitions of %s: %s",
		                t->o.topic, rd_kafka_err2str(err));
	return CLI_EXIT_OK;
}

static int assign_all(struct tail *t)
{
	int timeout = t->o.timeout_ms ? (int)t->o.timeout_ms : METADATA_TIMEOUT_MS;
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(t->rk, t->o.topic, NULL);
	if (rkt == NULL)
		return cli_fail(CLI_EXIT_USAGE, SUB, "invalid topic '%s': %s", t->o.topic,
		                rd_kafka_err2str(rd_kafka_last_error()));
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t err = rd_kafka_metadata(t->rk, 0, rkt, &md, timeout);
	int rc;
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		rc =
		    cli_fail(CLI_EXIT_FAIL, SUB,
		             "cannot reach Kafka at %s: no metadata for topic %s within %d ms (%s)",
		             t->o.bootstrap, t->o.topic, timeout, rd_kafka_err2str(err));
	else if (md->topic_cnt != 1)
		rc = cli_fail(CLI_EXIT_FAIL, SUB, "topic %s does not exist on %s", t->o.topic,
		              t->o.bootstrap);
	else
		rc = assignment(t, &md->topics[0]);
	if (md != NULL)
		rd_kafka_metadata_destroy(md);
	rd_kafka_topic_destroy(rkt);
	return rc;
}

/* ---- one record ------------------------------------------------------------- */

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
	case KREQ__KIND_DEAD:
		return "dead";
	case KREQ__KIND_ATTEMPT:
		return "attempt";
	default:
		return "unknown";
	}
}

/* Unverified: kind and claimed key id from the envelope header only
 * (proto/unverified.h); the key id is shown only if it is plain text. */
static void fill_from_header(struct row *r, const kreq__limits_t *lim, const uint8_t *buf,
                             size_t len)
{
	uint32_t kind;
	char key_id[KREQ_KEY_ID_MAX + 1];
	if (!kreq__envelope_peek(lim, buf, len, &kind, key_id))
		return;
	r->kind = kind_name(kind);
	size_t n = strlen(key_id);
	if (n > 0 && cli_is_text((const uint8_t *)key_id, n) && strcspn(key_id, "\t\r\n") == n)
		memcpy(r->key_id, key_id, n + 1);
}

static void fill_from_opened(struct row *r, const kreq__opened_t *o)
{
	const ProtobufCBinaryData *corr = NULL;
	r->verified = true;
	r->kind = kind_name(o->kind);
	memcpy(r->key_id, o->key_id, sizeof(r->key_id));
	if (o->kind == KREQ__KIND_REQUEST) {
		corr = &o->u.req->correlation_id;
		snprintf(r->method, sizeof(r->method), "%s", o->u.req->method);
	} else if (o->kind == KREQ__KIND_REPLY) {
		corr = &o->u.reply->correlation_id;
		r->status = o->u.reply->status;
		r->has_status = true;
	} else if (o->kind == KREQ__KIND_CANCEL) {
		corr = &o->u.cancel->correlation_id;
	} else if (o->kind == KREQ__KIND_RESULT) {
		snprintf(r->method, sizeof(r->method), "%s", o->u.result->method);
		r->status = o->u.result->status;
		r->has_status = true;
	} else if (o->kind == KREQ__KIND_DEAD) {
		corr = &o->u.dead->correlation_id;
		snprintf(r->method, sizeof(r->method), "%s", o->u.dead->method);
		r->status = o->u.dead->status;
		r->has_status = true;
	} /* an Attempt has no correlation id, method or status */
	if (corr == NULL)
		return;
	if (corr->len == KREQ__CORR_ID_BYTES)
		cli_hex(corr->data, corr->len, r->corr);
}

static void inspect(const struct tail *t, const uint8_t *buf, size_t len, struct row *r)
{
	kreq__opened_t o;
	memset(&o, 0, sizeof(o));
	r->verdict = kreq__envelope_open(t->kr, &t->lim, kreq__now_ms(), buf, len, &o, r->detail,
	                                 sizeof(r->detail));
	if (r->verdict == KREQ_OK) {
		r->detail[0] = '\0';
		fill_from_opened(r, &o);
		kreq__opened_clear(&o);
		return;
	}
	if (r->verdict == KREQ_EEXPIRED || r->verdict == KREQ_EFUTURE) {
		/* signature and fields verified; only the clock refused it */
		kreq__limits_t no_clock = t->lim;
		no_clock.skew_ms = INT64_MAX / 4;
		memset(&o, 0, sizeof(o));
		if (kreq__envelope_open(t->kr, &no_clock, 0, buf, len, &o, NULL, 0) == KREQ_OK) {
			fill_from_opened(r, &o);
			kreq__opened_clear(&o);
			return;
		}
	}
	fill_from_header(r, &t->lim, buf, len);
}

static const char *dash(const char *s)
{
	return s != NULL && *s != '\0' ? s : "-";
}

static void print_header(void)
{
	printf("%-9s %-10s %-7s %-16s %-32s %-24s %-6s %-11s %s\n", "PARTITION", "OFFSET", "KIND",
	       "KEY_ID", "CORRELATION_ID", "METHOD", "STATUS", "VERDICT", "DETAIL");
}

static int print_text(const struct row *r)
{
	char status[16] = "-";
	if (r->has_status)
		snprintf(status, sizeof(status), "%d", (int)r->status);
	printf("%-9d %-10lld %-7s %-16s %-32s %-24s %-6s %-11s %s\n", (int)r->partition,
	       (long long)r->offset, dash(r->kind), dash(r->key_id), dash(r->corr), dash(r->method),
	       status, kreq_err_name(r->verdict), dash(r->detail));
	if (fflush(stdout) != 0)
		return cli_fail(CLI_EXIT_FAIL, SUB, "cannot write to stdout");
	return CLI_EXIT_OK;
}

static int print_json(const struct row *r)
{
	json_t *j = json_pack(
	    "{s:i, s:I, s:s?, s:s?, s:s?, s:s?, s:o, s:b, s:s, s:s?}", "partition",
	    (int)r->partition, "offset", (json_int_t)r->offset, "kind", r->kind, "key_id",
	    *r->key_id ? r->key_id : NULL, "correlation_id", *r->corr ? r->corr : NULL, "method",
	    *r->method ? r->method : NULL, "status",
	    r->has_status ? json_integer(r->status) : json_null(), "verified", (int)r->verified,
	    "verdict", kreq_err_name(r->verdict), "error", *r->detail ? r->detail : NULL);
	return cli_print_json(SUB, j);
}

static int on_record(struct tail *t, const rd_kafka_message_t *m)
{
	struct row r;
	memset(&r, 0, sizeof(r));
	r.partition = m->partition;
	r.offset = m->offset;
	inspect(t, m->payload, m->len, &r);
	t->seen++;
	if (r.verdict != KREQ_OK && r.verdict != KREQ_EEXPIRED)
		t->failed++;
	return t->o.json ? print_json(&r) : print_text(&r);
}

static void on_error(struct tail *t, const rd_kafka_message_t *m)
{
	if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF || m->err == t->last_err)
		return; /* the same error again: said once is enough */
	t->last_err = m->err;
	cli_fail(0, SUB, "Kafka: %s", rd_kafka_message_errstr(m));
}

static int consume(struct tail *t)
{
	int64_t idle_until = cli_mono_ms() + t->o.timeout_ms;
	while (!cli_signalled(t->sigfd)) {
		int64_t left = t->o.timeout_ms ? idle_until - cli_mono_ms() : POLL_MS;
		if (left <= 0)
			break;
		rd_kafka_message_t *m =
		    rd_kafka_consumer_poll(t->rk, (int)(left < POLL_MS ? left : POLL_MS));
		if (m == NULL)
			continue;
		int rc = CLI_EXIT_OK;
		if (m->err) {
			on_error(t, m);
		} else {
			rc = on_record(t, m);
			idle_until = cli_mono_ms() + t->o.timeout_ms;
		}
		rd_kafka_message_destroy(m);
		if (rc != CLI_EXIT_OK)
			return rc;
		if (t->o.count && t->seen >= t->o.count)
			break;
	}
	return t->failed ? CLI_EXIT_VERIFY : CLI_EXIT_OK;
}

static int run(struct tail *t)
{
	kreq_conf_t *conf = kreq_conf_new();
	if (conf == NULL)
		return cli_fail(CLI_EXIT_FAIL, SUB, "out of memory");
	kreq__limits_from_conf(&t->lim, conf);
	kreq_conf_destroy(conf);
	int rc = consumer_new(t);
	if (rc == CLI_EXIT_OK)
		rc = assign_all(t);
	if (rc == CLI_EXIT_OK) {
		if (!t->o.json)
			print_header();
		rc = consume(t);
	}
	if (t->rk != NULL) {
		rd_kafka_consumer_close(t->rk);
		rd_kafka_destroy(t->rk);
	}
	return rc;
}

int cli_tail(int argc, char **argv)
{
	struct tail t;
	memset(&t, 0, sizeof(t));
	int rc = parse(argc, argv, &t.o);
	if (rc >= 0)
		return rc;
	rc = cli_load_keyring(SUB, t.o.keyfile, &t.kr);
	if (rc != CLI_EXIT_OK)
		return rc;
	t.sigfd = cli_signals_block(SUB);
	if (t.sigfd < 0) {
		kreq_keyring_release(t.kr);
		return CLI_EXIT_FAIL;
	}
	rc = run(&t);
	close(t.sigfd);
	kreq_keyring_release(t.kr);
	if ((rc == CLI_EXIT_OK || rc == CLI_EXIT_VERIFY) && (t.o.count == 0 || t.seen < t.o.count))
		fprintf(stderr, "kreq tail: %ld record(s), %ld failed verification\n", t.seen,
		        t.failed);
	return rc;
}
