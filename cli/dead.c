/*
 * dead.c — `kreq dead list|show|replay`: the requests a service took out of
 * service (docs/operations.md, "Dead requests").
 *
 * Design: a worker that gives up on a request (its handler crashed, or
 * lost its worker, worker.poison.max.attempts times) answers it with status 10
 * (poison) and writes a DeadLetter (kind 5, sealed by the worker) to
 * <prefix>.<service>.dead: the request record verbatim, its attempt
 * history, why. This file reads that topic (dead_read.c: bounded by the end
 * offsets taken at the start and by --timeout), and
 *   list    prints one row per record,
 *   show    prints one record in full, with the original request decoded,
 *   replay  sends the original request again as a NEW call with a NEW
 *           idempotency key through the client library (call.c), and only
 *           when asked with --new-key: replaying under the old key would
 *           only fetch the stored poison answer (status 10) again, since
 *           the worker deduplicates by key and never runs the handler twice.
 *
 * Trust: every record is opened with the keys of --keyfile as a receiver
 * would (without the clock checks: a dead letter stays one). A record that
 * does not verify is never trusted and never dropped: list shows it as a
 * flagged row with the verdict and the key id it claims (nothing of its
 * body is decoded), and the exit status is 4. The request inside a
 * verified dead letter is opened with the same keys; when its signer's key
 * is not in the key file it is decoded unverified (proto/unverified.h) and marked so:
 * the worker's seal vouches for it being what the worker received.
 *
 * Bounded: memory holds at most 2 x --limit rows (list) or MATCH_MAX
 * matching records (show, replay); a record larger than DEAD_MAX_BYTES or
 * one that does not decode is a flagged row, never a crash.
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "cli/cli.h"
#include "cli/dead.h"
#include "common/internal.h"
#include "proto/envelope.h"
#include "proto/unverified.h"

#define SUB             "dead"
#define DEFAULT_PREFIX  "kreq"
#define DEFAULT_LIMIT   1000
#define LIMIT_MAX       100000
#define MATCH_MAX       16
#define CALL_TIMEOUT_MS 30000
#define NAME_MAX_LEN    200
#define NEW_KEY_RANDOM  16
#define NEW_KEY_PREFIX  "replay-"

enum action { ACT_LIST, ACT_SHOW, ACT_REPLAY };

static const char *const action_names[] = {"list", "show", "replay"};

/* ---- help ------------------------------------------------------------------- */

static void usage(FILE *out)
{
	fputs("usage: kreq dead list   --bootstrap HOST:PORT --keyfile FILE\n"
	      "                        (--service SERVICE [--prefix PREFIX] | --topic TOPIC)\n"
	      "                        [--since WHEN] [--limit N] [--timeout MS] [--json]\n"
	      "       kreq dead show   --bootstrap HOST:PORT --keyfile FILE\n"
	      "                        (--service SERVICE [--prefix PREFIX] | --topic TOPIC)\n"
	      "                        [--timeout MS] [--json] REF\n"
	      "       kreq dead replay --bootstrap HOST:PORT --keyfile FILE\n"
	      "                        (--service SERVICE [--prefix PREFIX] | --topic TOPIC)\n"
	      "                        --new-key [--idempotency-key KEY] [--timeout MS]\n"
	      "                        [-X NAME=VALUE]... [--json] REF\n"
	      "\n"
	      "The requests a service took out of service: a request whose handler\n"
	      "crashed (or lost its worker) worker.poison.max.attempts times is answered\n"
	      "with status 10 (poison) and parked in PREFIX.SERVICE.dead with its attempt\n"
	      "history. Every record is verified with the keys of FILE; one that does not\n"
	      "verify is listed, flagged with the reason and the key id it claims.\n"
	      "\n"
	      "  list    one line per dead request: partition:offset, when it was taken\n"
	      "          out of service, method, the request's key id, status, attempts,\n"
	      "          worker, seal verdict, idempotency key (text, or hex), reason\n"
	      "  show    one dead request in full: attempt history (worker, start, end,\n"
	      "          how it ended) and the original request, decoded\n"
	      "  replay  send the dead request again (same method, payload and trace\n"
	      "          context) as a NEW call with a NEW idempotency key, signed with\n"
	      "          FILE's signing key, and print the reply. Needs --new-key: under\n"
	      "          its old key the worker would only return the stored answer\n"
	      "          (status 10) and never run the handler again. Fix the cause (the\n"
	      "          handler, or the payload's consumer) before replaying.\n"
	      "\n"
	      "REF is PARTITION:OFFSET in the dead-letter topic, a correlation id (32 hex\n"
	      "digits) or an idempotency key (as text, or its hex; a key that looks like\n"
	      "DIGITS:DIGITS is named by its hex); a REF that matches several records\n"
	      "is refused, naming them.\n"
	      "\n"
	      "  --bootstrap HOST:PORT  Kafka bootstrap servers (comma-separated)\n"
	      "  --keyfile FILE         keys to verify with (also --keyring); replay signs\n"
	      "                         the new call with its signing key\n"
	      "  --service SERVICE      the service (method name up to its last '.')\n"
	      "  --prefix PREFIX        topic.prefix of the service (default kreq)\n"
	      "  --topic TOPIC          the dead-letter topic by name instead\n"
	      "  --since WHEN           list: records written at or after WHEN: a duration\n"
	      "                         back from now (90s, 15m, 2h, 7d), a UTC time\n"
	      "                         (2026-12-06T01:30:00Z) or ms since the epoch\n"
	      "  --limit N              list: the N most recent records (default 1000,\n"
	      "                         at most 100000)\n"
	      "  --timeout MS           bound on reaching Kafka and reading the topic to\n"
	      "                         the end offsets taken at the start (default\n"
	      "                         10000); replay: also the new call's deadline\n"
	      "                         (default 30000)\n"
	      "  --new-key              replay: required, see above\n"
	      "  --idempotency-key KEY  replay: the new key (default replay-<32 hex>);\n"
	      "                         must differ from the dead request's\n"
	      "  -X NAME=VALUE          replay: a client property (docs/CONFIGURATION.md)\n"
	      "  --json                 one JSON document\n"
	      "  -h, --help             show this help\n"
	      "\n"
	      "Exit status: 0 done; 1 cannot reach Kafka, topic missing, timed out, REF\n"
	      "not found, key file unreadable, replay failed; 2 usage, or a REF that is\n"
	      "ambiguous, or replay without --new-key; 3 the replayed call was answered\n"
	      "with a non-zero status or rejected; 4 a record did not verify (list: any;\n"
	      "show: the one shown; replay refuses it).\n",
	      out);
}

/* ---- options ------------------------------------------------------------------- */

struct dead_opts {
	enum action act;
	const char *bootstrap, *keyfile, *service, *prefix, *topic_arg, *ref, *since_arg;
	const char *new_idem;
	long limit, timeout_ms;
	bool timeout_set, json, new_key;
	int64_t since_ms; /* 0: no --since */
	size_t n_conf;
	const char *conf[CLI_CALL_MAX_CONF];
	char topic[NAME_MAX_LEN * 2 + 16];
};

static bool name_ok(const char *s, size_t max)
{
	size_t n = strlen(s);
	return n > 0 && n <= max &&
	       strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

static int parse_opt(int c, char **argv, struct dead_opts *o)
{
	switch (c) {
	case 'b':
		o->bootstrap = optarg;
		return -1;
	case 'k':
		o->keyfile = optarg;
		return -1;
	case 'S':
		o->service = optarg;
		return -1;
	case 'p':
		o->prefix = optarg;
		return -1;
	case 't':
		o->topic_arg = optarg;
		return -1;
	case 's':
		o->since_arg = optarg;
		if (!dead_parse_since(optarg, kreq__now_ms(), &o->since_ms))
			return cli_usage_error(SUB,
			                       "--since needs a duration (90s, 15m, 2h, 7d), a UTC "
			                       "time (2026-12-06T01:30:00Z) or ms since the epoch, "
			                       "not '%s'",
			                       optarg);
		return -1;
	case 'l':
		if (!cli_parse_long(optarg, 1, LIMIT_MAX, &o->limit))
			return cli_usage_error(SUB, "--limit needs 1..%d, not '%s'", LIMIT_MAX,
			                       optarg);
		return -1;
	case 'T':
		if (!cli_parse_long(optarg, 1, 86400000, &o->timeout_ms))
			return cli_usage_error(
			    SUB, "--timeout needs 1..86400000 milliseconds, not '%s'", optarg);
		o->timeout_set = true;
		return -1;
	case 'n':
		o->new_key = true;
		return -1;
	case 'i':
		o->new_idem = optarg;
		return -1;
	case 'X':
		if (strchr(optarg, '=') == NULL || o->n_conf == CLI_CALL_MAX_CONF)
			return cli_usage_error(SUB, "-X needs NAME=VALUE (at most %d), not '%s'",
			                       CLI_CALL_MAX_CONF, optarg);
		o->conf[o->n_conf++] = optarg;
		return -1;
	case 'j':
		o->json = true;
		return -1;
	case 'h':
		usage(stdout);
		return CLI_EXIT_OK;
	default:
		return cli_getopt_error(SUB, argv, c);
	}
}

/* What only some actions take. */
static int check_action_opts(struct dead_opts *o)
{
	const char *act = action_names[o->act];
	if (o->act != ACT_LIST && (o->since_arg != NULL || o->limit != 0))
		return cli_usage_error(SUB, "--since and --limit go with list, not %s", act);
	if (o->act != ACT_REPLAY && (o->new_key || o->new_idem != NULL || o->n_conf != 0))
		return cli_usage_error(SUB,
		                       "--new-key, --idempotency-key and -X go with replay, "
		                       "not %s",
		                       act);
	if (o->act == ACT_LIST && o->ref != NULL)
		return cli_usage_error(SUB, "unexpected argument '%s'", o->ref);
	if (o->act != ACT_LIST && o->ref == NULL)
		return cli_usage_error(SUB,
		                       "%s needs REF (PARTITION:OFFSET, a correlation id or "
		                       "an idempotency key)",
		                       act);
	if (o->new_idem != NULL && (strlen(o->new_idem) == 0 || strlen(o->new_idem) > 255))
		return cli_usage_error(SUB, "--idempotency-key needs 1..255 bytes");
	if (o->limit == 0)
		o->limit = DEFAULT_LIMIT;
	if (!o->timeout_set)
		o->timeout_ms = o->act == ACT_REPLAY ? CALL_TIMEOUT_MS : DEAD_TIMEOUT_MS;
	return -1;
}

static int check_topic_opts(struct dead_opts *o)
{
	if (o->topic_arg != NULL && (o->service != NULL || o->prefix != NULL))
		return cli_usage_error(SUB, "--topic names the topic: it excludes --service and "
		                            "--prefix");
	if (o->topic_arg != NULL) {
		if (!name_ok(o->topic_arg, DEAD_TOPIC_MAX))
			return cli_usage_error(
			    SUB, "invalid topic '%s': 1..%d characters of A-Z a-z 0-9 . _ -",
			    o->topic_arg, DEAD_TOPIC_MAX);
		snprintf(o->topic, sizeof(o->topic), "%s", o->topic_arg);
		return -1;
	}
	if (o->service == NULL)
		return cli_usage_error(SUB, "--service or --topic is required");
	if (!name_ok(o->service, NAME_MAX_LEN))
		return cli_usage_error(
		    SUB, "invalid service '%s': 1..%d characters of A-Z a-z 0-9 . _ -", o->service,
		    NAME_MAX_LEN);
	const char *prefix = o->prefix != NULL ? o->prefix : DEFAULT_PREFIX;
	if (!name_ok(prefix, NAME_MAX_LEN))
		return cli_usage_error(SUB,
		                       "invalid prefix '%s': 1..%d characters of A-Z a-z 0-9 . _ -",
		                       prefix, NAME_MAX_LEN);
	snprintf(o->topic, sizeof(o->topic), "%s.%s.dead", prefix, o->service);
	if (strlen(o->topic) > DEAD_TOPIC_MAX)
		return cli_usage_error(SUB, "%s is longer than %d characters", o->topic,
		                       DEAD_TOPIC_MAX);
	return -1;
}

static int parse(int argc, char **argv, struct dead_opts *o)
{
	static const struct option opts[] = {{"bootstrap", required_argument, NULL, 'b'},
	                                     {"keyfile", required_argument, NULL, 'k'},
	                                     {"keyring", required_argument, NULL, 'k'},
	                                     {"service", required_argument, NULL, 'S'},
	                                     {"prefix", required_argument, NULL, 'p'},
	                                     {"topic", required_argument, NULL, 't'},
	                                     {"since", required_argument, NULL, 's'},
	                                     {"limit", required_argument, NULL, 'l'},
	                                     {"timeout", required_argument, NULL, 'T'},
	                                     {"timeout-ms", required_argument, NULL, 'T'},
	                                     {"new-key", no_argument, NULL, 'n'},
	                                     {"idempotency-key", required_argument, NULL, 'i'},
	                                     {"conf", required_argument, NULL, 'X'},
	                                     {"json", no_argument, NULL, 'j'},
	                                     {"help", no_argument, NULL, 'h'},
	                                     {NULL, 0, NULL, 0}};
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		if (argc >= 2) {
			usage(stdout);
			return CLI_EXIT_OK;
		}
		return cli_usage_error(SUB, "missing action: list, show or replay");
	}
	if (argv[1][0] == '-')
		return cli_usage_error(SUB,
		                       "unknown option '%s' (the action comes first: kreq dead "
		                       "list|show|replay [options])",
		                       argv[1]);
	size_t a = 0;
	while (a < 3 && strcmp(argv[1], action_names[a]) != 0)
		a++;
	if (a == 3)
		return cli_usage_error(SUB, "unknown action '%s': list, show or replay", argv[1]);
	o->act = (enum action)a;
	argc--;
	argv++;
	opterr = 0;
	int c, rc;
	while ((c = getopt_long(argc, argv, ":hX:", opts, NULL)) != -1)
		if ((rc = parse_opt(c, argv, o)) >= 0)
			return rc;
	if (optind < argc)
		o->ref = argv[optind++];
	if (optind < argc)
		return cli_usage_error(SUB, "unexpected argument '%s'", argv[optind]);
	if (o->bootstrap == NULL || o->keyfile == NULL)
		return cli_usage_error(SUB, "--bootstrap and --keyfile are required");
	rc = check_action_opts(o);
	return rc >= 0 ? rc : check_topic_opts(o);
}

/* ---- formatting -------------------------------------------------------------------- */

static void fmt_time(int64_t ms, char *buf, size_t size)
{
	if (ms <= 0) {
		snprintf(buf, size, "-");
		return;
	}
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	gmtime_r(&t, &tm);
	char s[32];
	strftime(s, sizeof(s), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf, size, "%s.%03dZ", s, (int)(ms % 1000));
}

/* bytes as text when printable ASCII (no space), else hex; buf holds
 * 2 * n + 1 bytes. Returns true for text. */
static bool key_text(const uint8_t *b, size_t n, char *buf)
{
	bool text = n > 0;
	for (size_t i = 0; text && i < n; i++)
		text = b[i] > 0x20 && b[i] < 0x7f;
	if (!text) {
		cli_hex(b, n, buf);
		return false;
	}
	memcpy(buf, b, n);
	buf[n] = '\0';
	return true;
}

/* A string field of a verified record, made safe for a one-line table:
 * control characters become '?'. */
static void one_line(const char *s, char *buf, size_t size)
{
	size_t i = 0;
	for (; s[i] != '\0' && i + 1 < size; i++)
		buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
	buf[i] = '\0';
}

static json_t *json_key(const ProtobufCBinaryData *b, const char *name, json_t *obj)
{
	char *buf = malloc(2 * b->len + 1);
	if (buf == NULL)
		return obj;
	bool text = key_text(b->data, b->len, buf);
	char enc[64];
	snprintf(enc, sizeof(enc), "%s_encoding", name);
	json_object_set_new(obj, name, json_string(buf));
	json_object_set_new(obj, enc, json_string(text ? "text" : "hex"));
	free(buf);
	return obj;
}

static json_t *json_bytes(const ProtobufCBinaryData *b, const char *name, json_t *obj)
{
	char enc[64];
	snprintf(enc, sizeof(enc), "%s_encoding", name);
	if (b->len == 0 || cli_is_text(b->data, b->len)) {
		json_object_set_new(obj, name,
		                    json_stringn(b->len ? (const char *)b->data : "", b->len));
		json_object_set_new(obj, enc, json_string("text"));
	} else {
		char *b64 = cli_base64(b->data, b->len);
		json_object_set_new(obj, name, b64 ? json_string(b64) : json_null());
		json_object_set_new(obj, enc, json_string("base64"));
		free(b64);
	}
	return obj;
}

/* A JSON string of a record's field: the text itself when it is UTF-8
 * (what jansson accepts), else a copy with every non-ASCII byte as '?'
 * (a field the sender filled with bytes: shown, never the reason to lose
 * the record from the output). */
static json_t *jtext(const char *s)
{
	json_t *j = json_string(s);
	if (j != NULL)
		return j;
	char *c = strdup(s);
	if (c == NULL)
		return json_null();
	for (char *p = c; *p; p++)
		if ((unsigned char)*p >= 0x80)
			*p = '?';
	j = json_string(c);
	free(c);
	return j != NULL ? j : json_null();
}

static const Kreq__DeadLetter *dl_of(const struct dead_rec *r)
{
	return r->verdict == KREQ_OK ? (const Kreq__DeadLetter *)r->opened.u.msg : NULL;
}

/* The row of a record: everything a list shows, also the base of show. */
static json_t *json_row(const struct dead_rec *r)
{
	json_t *j = json_pack(
	    "{s:i, s:I, s:I, s:b, s:s, s:s?, s:s?}", "partition", (int)r->partition, "offset",
	    (json_int_t)r->offset, "timestamp_ms", (json_int_t)r->timestamp, "verified",
	    r->verdict == KREQ_OK, "verdict", kreq_err_name(r->verdict), "signer_key_id",
	    *r->signer ? r->signer : NULL, "error", r->verdict != KREQ_OK ? r->detail : NULL);
	const Kreq__DeadLetter *d = dl_of(r);
	if (j == NULL || d == NULL)
		return j;
	char when[48], corr[2 * KREQ__CORR_ID_BYTES + 1] = "";
	fmt_time(d->dead_at_ms, when, sizeof(when));
	if (d->correlation_id.len == KREQ__CORR_ID_BYTES)
		cli_hex(d->correlation_id.data, d->correlation_id.len, corr);
	json_object_update_missing_new(
	    j,
	    json_pack("{s:I, s:s, s:o, s:o, s:i, s:s, s:o, s:I, s:o, s:o, s:i, s:I}", "dead_at_ms",
	              (json_int_t)d->dead_at_ms, "dead_at", when, "method", jtext(d->method),
	              "request_key_id", jtext(d->request_key_id), "status", (int)d->status,
	              "status_name", cli_status_name(d->status), "worker", jtext(d->worker),
	              "attempt_count", (json_int_t)d->n_attempts, "reason", jtext(d->reason),
	              "request_topic", jtext(d->request_topic), "request_partition",
	              (int)d->request_partition, "request_offset", (json_int_t)d->request_offset));
	json_object_set_new(j, "correlation_id", *corr ? json_string(corr) : json_null());
	return json_key(&d->idempotency_key, "idempotency_key", j);
}

/* ---- list ------------------------------------------------------------------------ */

static void print_list_header(void)
{
	printf("%-12s %-24s %-24s %-16s %-6s %-8s %-20s %-28s %-24s %s\n", "PART:OFFSET", "DEAD_AT",
	       "METHOD", "KEY_ID", "STATUS", "ATTEMPTS", "WORKER", "SEAL", "IDEMPOTENCY_KEY",
	       "REASON");
}

static void print_list_row(const struct dead_rec *r)
{
	char where[48], seal[96];
	snprintf(where, sizeof(where), "%d:%lld", (int)r->partition, (long long)r->offset);
	const Kreq__DeadLetter *d = dl_of(r);
	if (d == NULL) {
		snprintf(seal, sizeof(seal), "NOT-VERIFIED:%s", kreq_err_name(r->verdict));
		printf("%-12s %-24s %-24s %-16s %-6s %-8s %-20s %-28s %-24s %s\n", where, "-", "-",
		       *r->signer ? r->signer : "-", "-", "-", "-", seal, "-", r->detail);
		return;
	}
	char when[48], method[KREQ__METHOD_MAX + 1], kid[KREQ_KEY_ID_MAX + 1], worker[256];
	char reason[KREQ__ERROR_MAX + 1], status[16], attempts[16];
	char *idem = malloc(2 * d->idempotency_key.len + 1);
	fmt_time(d->dead_at_ms, when, sizeof(when));
	one_line(d->method, method, sizeof(method));
	one_line(d->request_key_id, kid, sizeof(kid));
	one_line(d->worker, worker, sizeof(worker));
	one_line(d->reason, reason, sizeof(reason));
	snprintf(status, sizeof(status), "%d", (int)d->status);
	snprintf(attempts, sizeof(attempts), "%zu", d->n_attempts);
	if (idem != NULL)
		key_text(d->idempotency_key.data, d->idempotency_key.len, idem);
	printf("%-12s %-24s %-24s %-16s %-6s %-8s %-20s %-28s %-24s %s\n", where, when,
	       *method ? method : "-", *kid ? kid : "-", status, attempts, *worker ? worker : "-",
	       "verified", idem != NULL && *idem ? idem : "-", *reason ? reason : "-");
	free(idem);
}

/* Keeps the --limit most recent rows of a list (at most 2 x limit held). */
struct list_state {
	const struct dead_opts *o;
	struct dead_rec *rows;
	size_t n, cap;
	long total, not_verified;
};

static int cmp_recent(const void *pa, const void *pb)
{
	const struct dead_rec *a = pa, *b = pb;
	if (a->timestamp != b->timestamp)
		return a->timestamp < b->timestamp ? -1 : 1;
	if (a->partition != b->partition)
		return a->partition < b->partition ? -1 : 1;
	return (a->offset > b->offset) - (a->offset < b->offset);
}

/* Sorts oldest first and drops all but the last keep rows. */
static void keep_recent(struct list_state *s, size_t keep)
{
	qsort(s->rows, s->n, sizeof(*s->rows), cmp_recent);
	if (s->n <= keep)
		return;
	size_t drop = s->n - keep;
	for (size_t i = 0; i < drop; i++)
		dead_rec_clear(&s->rows[i]);
	memmove(s->rows, s->rows + drop, keep * sizeof(*s->rows));
	s->n = keep;
}

static bool on_list_record(void *arg, struct dead_rec *r)
{
	struct list_state *s = arg;
	s->total++;
	if (r->verdict != KREQ_OK)
		s->not_verified++;
	if (s->n == s->cap)
		keep_recent(s, (size_t)s->o->limit);
	s->rows[s->n++] = *r; /* takes the record over */
	memset(r, 0, sizeof(*r));
	return true;
}

static int list_print_json(const struct list_state *s, const struct dead_reader *rd)
{
	json_t *rows = json_array();
	for (size_t i = 0; rows != NULL && i < s->n; i++)
		json_array_append_new(rows, json_row(&s->rows[i]));
	json_t *j = json_pack("{s:s, s:s, s:o, s:I, s:I, s:I, s:b}", "topic", s->o->topic,
	                      "keyfile", s->o->keyfile, "records", rows, "total",
	                      (json_int_t)s->total, "shown", (json_int_t)s->n, "not_verified",
	                      (json_int_t)s->not_verified, "limited", s->total > (long)s->n);
	if (j != NULL && s->o->since_ms)
		json_object_set_new(j, "since_ms", json_integer(s->o->since_ms));
	(void)rd;
	return cli_print_json(SUB, j);
}

static int list_print_text(const struct list_state *s)
{
	printf("%s: %ld dead request%s%s, %zu shown; %ld did not verify with the keys of %s\n",
	       s->o->topic, s->total, s->total == 1 ? "" : "s",
	       s->o->since_ms ? " since --since" : "", s->n, s->not_verified, s->o->keyfile);
	print_list_header();
	for (size_t i = 0; i < s->n; i++)
		print_list_row(&s->rows[i]);
	return fflush(stdout) == 0 ? CLI_EXIT_OK
	                           : cli_fail(CLI_EXIT_FAIL, SUB, "cannot write to stdout");
}

static int run_list(const struct dead_opts *o, struct dead_reader *rd)
{
	struct list_state s = {.o = o, .cap = (size_t)o->limit * 2};
	s.rows = calloc(s.cap, sizeof(*s.rows));
	if (s.rows == NULL)
		return cli_fail(CLI_EXIT_FAIL, SUB, "out of memory");
	int rc = dead_read_all(rd, o->since_ms, on_list_record, &s);
	if (rc == CLI_EXIT_OK) {
		keep_recent(&s, (size_t)o->limit);
		rc = o->json ? list_print_json(&s, rd) : list_print_text(&s);
		if (s.not_verified > 0) {
			fprintf(stderr,
			        "kreq %s: %ld record%s of %s did not verify with the keys of %s "
			        "(shown flagged NOT-VERIFIED with the key id it claims)\n",
			        SUB, s.not_verified, s.not_verified == 1 ? "" : "s", o->topic,
			        o->keyfile);
			if (rc == CLI_EXIT_OK)
				rc = CLI_EXIT_VERIFY;
		}
	}
	for (size_t i = 0; i < s.n; i++)
		dead_rec_clear(&s.rows[i]);
	free(s.rows);
	return rc;
}

/* ---- finding REF --------------------------------------------------------------------- */

struct find_state {
	const char *ref;
	uint8_t *ref_hex; /* REF decoded from hex, or NULL */
	size_t ref_hex_len;
	struct dead_rec match[MATCH_MAX];
	size_t n;
	long matched, not_verified;
};

static bool bytes_eq(const ProtobufCBinaryData *b, const void *p, size_t n)
{
	return b->len == n && n > 0 && memcmp(b->data, p, n) == 0;
}

static bool rec_matches(const struct find_state *s, const Kreq__DeadLetter *d)
{
	size_t n = strlen(s->ref);
	if (bytes_eq(&d->idempotency_key, s->ref, n))
		return true;
	return s->ref_hex != NULL && (bytes_eq(&d->idempotency_key, s->ref_hex, s->ref_hex_len) ||
	                              bytes_eq(&d->correlation_id, s->ref_hex, s->ref_hex_len));
}

static bool on_find_record(void *arg, struct dead_rec *r)
{
	struct find_state *s = arg;
	const Kreq__DeadLetter *d = dl_of(r);
	if (d == NULL) {
		s->not_verified++;
		return true;
	}
	if (!rec_matches(s, d))
		return true;
	s->matched++;
	if (s->n < MATCH_MAX) {
		s->match[s->n++] = *r;
		memset(r, 0, sizeof(*r));
	}
	return true;
}

static bool on_one_record(void *arg, struct dead_rec *r)
{
	struct find_state *s = arg;
	s->matched++;
	s->match[s->n++] = *r;
	memset(r, 0, sizeof(*r));
	return false; /* that one record is all */
}

static void find_free(struct find_state *s)
{
	for (size_t i = 0; i < s->n; i++)
		dead_rec_clear(&s->match[i]);
	free(s->ref_hex);
}

/* Finds the one record REF names into s->match[0]. */
static int find_ref(const struct dead_opts *o, struct dead_reader *rd, struct find_state *s)
{
	memset(s, 0, sizeof(*s));
	s->ref = o->ref;
	int32_t partition;
	int64_t offset;
	if (dead_parse_position(o->ref, &partition, &offset))
		return dead_read_one(rd, partition, offset, on_one_record, s);
	s->ref_hex = dead_from_hex(o->ref, KREQ__IDEM_KEY_MAX, &s->ref_hex_len);
	int rc = dead_read_all(rd, 0, on_find_record, s);
	if (rc != CLI_EXIT_OK)
		return rc;
	if (s->matched == 0)
		return cli_fail(
		    CLI_EXIT_FAIL, SUB,
		    "no dead request in %s has correlation id or idempotency key '%s'%s", o->topic,
		    o->ref,
		    s->not_verified ? " (records that did not verify were not searched: "
		                      "see kreq dead list)"
		                    : "");
	if (s->matched > 1) {
		fprintf(stderr, "kreq %s: '%s' is ambiguous: %ld dead requests in %s match:", SUB,
		        o->ref, s->matched, o->topic);
		for (size_t i = 0; i < s->n; i++)
			fprintf(stderr, " %d:%lld", (int)s->match[i].partition,
			        (long long)s->match[i].offset);
		fprintf(stderr, "%s\nkreq %s: name one of them by PARTITION:OFFSET\n",
		        s->matched > (long)s->n ? " ..." : "", SUB);
		return CLI_EXIT_USAGE;
	}
	return CLI_EXIT_OK;
}

/* ---- the request inside ----------------------------------------------------------------- */

/* The original request: verified with the key file when its signer's key
 * is there, else decoded unverified. */
struct inner {
	kreq__opened_t o;
	int verdict;  /* of verifying it; KREQ_OK: verified */
	bool decoded; /* o holds a Request */
	char detail[256];
};

static void open_inner(const struct dead_reader *rd, const Kreq__DeadLetter *d, struct inner *in)
{
	memset(in, 0, sizeof(*in));
	in->verdict = kreq__envelope_open(rd->kr, &rd->no_clock, 0, d->request.data, d->request.len,
	                                  &in->o, in->detail, sizeof(in->detail));
	if (in->verdict == KREQ_OK && in->o.kind == KREQ__KIND_REQUEST) {
		in->decoded = true;
		return;
	}
	if (in->verdict == KREQ_OK) { /* verified, but no request */
		unsigned kind = (unsigned)in->o.kind;
		kreq__opened_clear(&in->o);
		in->verdict = KREQ_EMALFORMED;
		snprintf(in->detail, sizeof(in->detail), "the record holds no request (kind %u)",
		         kind);
		return;
	}
	int err = kreq__envelope_open_unverified(&rd->no_clock, 0, d->request.data, d->request.len,
	                                         &in->o);
	if (err == KREQ_OK && in->o.kind == KREQ__KIND_REQUEST)
		in->decoded = true;
	else if (err == KREQ_OK)
		kreq__opened_clear(&in->o);
}

/* md[key] = value, both made JSON-safe as jtext does. */
static void meta_set(json_t *md, const char *key, const char *value)
{
	json_t *k = jtext(key);
	const char *ks = json_string_value(k);
	if (ks != NULL)
		json_object_set_new(md, ks, jtext(value));
	json_decref(k);
}

static json_t *json_request(const struct inner *in)
{
	json_t *j = json_pack("{s:b, s:s, s:s?}", "verified", in->verdict == KREQ_OK, "verdict",
	                      kreq_err_name(in->verdict), "error",
	                      in->verdict != KREQ_OK ? in->detail : NULL);
	if (!in->decoded)
		return j;
	const Kreq__Request *q = in->o.u.req;
	char corr[2 * KREQ__CORR_ID_BYTES + 1] = "";
	if (q->correlation_id.len == KREQ__CORR_ID_BYTES)
		cli_hex(q->correlation_id.data, q->correlation_id.len, corr);
	json_t *md = json_object();
	for (size_t i = 0; md != NULL && i < q->n_metadata; i++)
		meta_set(md, q->metadata[i]->key, q->metadata[i]->value);
	json_object_update_missing_new(
	    j, json_pack("{s:s, s:s, s:o, s:o, s:o, s:i, s:I, s:I, s:i, s:o, s:o, s:I}", "key_id",
	                 in->o.key_id, "correlation_id", corr, "method", jtext(q->method),
	                 "service", jtext(q->service), "reply_topic", jtext(q->reply_topic),
	                 "reply_partition", (int)q->reply_partition, "issued_at_ms",
	                 (json_int_t)q->issued_at_ms, "deadline_ms", (json_int_t)q->deadline_ms,
	                 "attempt", (int)q->attempt, "client_id", jtext(q->client_id), "metadata",
	                 md, "payload_bytes", (json_int_t)q->payload.len));
	json_key(&q->idempotency_key, "idempotency_key", j);
	return json_bytes(&q->payload, "payload", j);
}

/* ---- show ---------------------------------------------------------------------------- */

static const char *attempt_end(const Kreq__Attempt *a)
{
	return a->ended_at_ms != 0 ? "finished" : "did not finish (crashed or lost its worker)";
}

static json_t *json_attempts(const Kreq__DeadLetter *d)
{
	json_t *arr = json_array();
	for (size_t i = 0; arr != NULL && i < d->n_attempts; i++) {
		const Kreq__Attempt *a = d->attempts[i];
		char start[48], end[48];
		fmt_time(a->started_at_ms, start, sizeof(start));
		fmt_time(a->ended_at_ms, end, sizeof(end));
		json_array_append_new(
		    arr, json_pack("{s:i, s:o, s:I, s:s, s:I, s:o, s:b, s:s}", "number",
		                   (int)a->number, "worker", jtext(a->worker), "started_at_ms",
		                   (json_int_t)a->started_at_ms, "started_at", start, "ended_at_ms",
		                   (json_int_t)a->ended_at_ms, "ended_at",
		                   a->ended_at_ms ? json_string(end) : json_null(), "finished",
		                   a->ended_at_ms != 0, "ended", attempt_end(a)));
	}
	return arr;
}

static void print_inner_text(const struct inner *in)
{
	if (in->verdict == KREQ_OK)
		printf("request:           verified with key %s\n", in->o.key_id);
	else
		printf("request:           NOT VERIFIED (%s: %s)%s\n", kreq_err_name(in->verdict),
		       in->detail,
		       in->decoded ? "; decoded without verification, vouched for by the "
		                     "worker's seal only"
		                   : "; does not decode");
	if (!in->decoded)
		return;
	const Kreq__Request *q = in->o.u.req;
	char corr[2 * KREQ__CORR_ID_BYTES + 1] = "-", issued[48], deadline[48], line[1100];
	if (q->correlation_id.len == KREQ__CORR_ID_BYTES)
		cli_hex(q->correlation_id.data, q->correlation_id.len, corr);
	fmt_time(q->issued_at_ms, issued, sizeof(issued));
	fmt_time(q->deadline_ms, deadline, sizeof(deadline));
	printf("  key id:          %s\n  correlation id:  %s\n", in->o.key_id, corr);
	one_line(q->method, line, sizeof(line));
	printf("  method:          %s\n", line);
	one_line(q->client_id, line, sizeof(line));
	printf("  client id:       %s\n", *line ? line : "-");
	one_line(q->reply_topic, line, sizeof(line));
	printf("  reply to:        %s [%d]\n", line, (int)q->reply_partition);
	printf("  issued at:       %s (attempt %u)\n  deadline:        %s\n", issued,
	       (unsigned)q->attempt, deadline);
	for (size_t i = 0; i < q->n_metadata; i++) {
		char k[KREQ__META_KEY_MAX + 1], v[KREQ__META_VAL_MAX + 1];
		one_line(q->metadata[i]->key, k, sizeof(k));
		one_line(q->metadata[i]->value, v, sizeof(v));
		printf("  metadata:        %s=%s\n", k, v);
	}
	if (q->payload.len == 0) {
		puts("  payload:         (empty)");
	} else if (cli_is_text(q->payload.data, q->payload.len)) {
		printf("  payload:         %.*s\n", (int)q->payload.len,
		       (const char *)q->payload.data);
	} else {
		char *b64 = cli_base64(q->payload.data, q->payload.len);
		printf("  payload:         (%zu bytes, base64) %s\n", q->payload.len,
		       b64 ? b64 : "(out of memory)");
		free(b64);
	}
}

static void print_show_text(const struct dead_rec *r, const struct inner *in)
{
	const Kreq__DeadLetter *d = dl_of(r);
	char when[48], line[KREQ__ERROR_MAX + 1], corr[2 * KREQ__CORR_ID_BYTES + 1] = "-";
	char *idem = malloc(2 * d->idempotency_key.len + 1);
	fmt_time(d->dead_at_ms, when, sizeof(when));
	if (d->correlation_id.len == KREQ__CORR_ID_BYTES)
		cli_hex(d->correlation_id.data, d->correlation_id.len, corr);
	if (idem != NULL)
		key_text(d->idempotency_key.data, d->idempotency_key.len, idem);
	printf("dead request %d:%lld, sealed by key %s (verified)\n", (int)r->partition,
	       (long long)r->offset, r->signer);
	printf("dead at:           %s\n", when);
	one_line(d->worker, line, sizeof(line));
	printf("taken out by:      %s\n", *line ? line : "-");
	printf("status:            %d (%s)\n", (int)d->status, cli_status_name(d->status));
	one_line(d->reason, line, sizeof(line));
	printf("reason:            %s\n", *line ? line : "-");
	one_line(d->method, line, sizeof(line));
	printf("method:            %s\n", line);
	printf("request key id:    %s\n", d->request_key_id);
	printf("idempotency key:   %s\n", idem != NULL ? idem : "(out of memory)");
	printf("correlation id:    %s\n", corr);
	one_line(d->request_topic, line, sizeof(line));
	printf("request record:    %s [%d] @ %lld\n", line, (int)d->request_partition,
	       (long long)d->request_offset);
	printf("attempts:          %zu\n", d->n_attempts);
	for (size_t i = 0; i < d->n_attempts; i++) {
		const Kreq__Attempt *a = d->attempts[i];
		char start[48], end[48], worker[256];
		fmt_time(a->started_at_ms, start, sizeof(start));
		fmt_time(a->ended_at_ms, end, sizeof(end));
		one_line(a->worker, worker, sizeof(worker));
		printf("  #%-3u worker %-20s started %s  ended %s  %s\n", (unsigned)a->number,
		       *worker ? worker : "-", start, end, attempt_end(a));
	}
	free(idem);
	print_inner_text(in);
}

static void report_not_verified(const struct dead_opts *o, const struct dead_rec *r)
{
	cli_fail(0, SUB, "%d:%lld in %s did not verify with the keys of %s: %s (%s)%s%s%s",
	         (int)r->partition, (long long)r->offset, o->topic, o->keyfile,
	         kreq_err_name(r->verdict), r->detail, *r->signer ? "; it claims key id " : "",
	         r->signer, *r->signer ? "" : "");
}

static int run_show(const struct dead_opts *o, struct dead_reader *rd)
{
	struct find_state s;
	int rc = find_ref(o, rd, &s);
	if (rc != CLI_EXIT_OK) {
		find_free(&s);
		return rc;
	}
	const struct dead_rec *r = &s.match[0];
	if (dl_of(r) == NULL) {
		report_not_verified(o, r);
		if (o->json)
			cli_print_json(SUB, json_row(r));
		else
			print_list_row(r);
		find_free(&s);
		return CLI_EXIT_VERIFY;
	}
	struct inner in;
	open_inner(rd, dl_of(r), &in);
	if (o->json) {
		json_t *j = json_row(r);
		if (j != NULL) {
			json_object_set_new(j, "attempts", json_attempts(dl_of(r)));
			json_object_set_new(j, "request", json_request(&in));
		}
		rc = cli_print_json(SUB, j);
	} else {
		print_show_text(r, &in);
		rc = fflush(stdout) == 0 ? CLI_EXIT_OK
		                         : cli_fail(CLI_EXIT_FAIL, SUB, "cannot write to stdout");
	}
	kreq__opened_clear(&in.o);
	find_free(&s);
	return rc;
}

/* ---- replay -------------------------------------------------------------------------- */

static const char *traceparent_of(const Kreq__Request *q)
{
	for (size_t i = 0; i < q->n_metadata; i++)
		if (strcmp(q->metadata[i]->key, "traceparent") == 0)
			return q->metadata[i]->value;
	return NULL;
}

static int refuse_old_key(const struct dead_opts *o)
{
	return cli_usage_error(
	    SUB,
	    "replay needs --new-key: replaying %s under its old idempotency key would only "
	    "return the stored answer (status 10, poison) and never run the handler again; "
	    "--new-key sends it as a new call with a new idempotency key (the handler runs "
	    "again: fix the cause first)",
	    o->ref);
}

static int replay_call(const struct dead_opts *o, struct dead_reader *rd, const struct dead_rec *r,
                       const struct inner *in, int sigfd)
{
	const Kreq__DeadLetter *d = dl_of(r);
	const Kreq__Request *q = in->o.u.req;
	char idem[NEW_KEY_RANDOM * 2 + sizeof(NEW_KEY_PREFIX)], prefix[256];
	if (o->new_idem != NULL) {
		if (bytes_eq(&q->idempotency_key, o->new_idem, strlen(o->new_idem)))
			return cli_usage_error(SUB, "--idempotency-key must differ from the dead "
			                            "request's own key");
		snprintf(idem, sizeof(idem), "%s", "");
	} else {
		uint8_t rnd[NEW_KEY_RANDOM];
		randombytes_buf(rnd, sizeof(rnd));
		memcpy(idem, NEW_KEY_PREFIX, sizeof(NEW_KEY_PREFIX) - 1);
		cli_hex(rnd, sizeof(rnd), idem + sizeof(NEW_KEY_PREFIX) - 1);
	}
	struct cli_call_opts co;
	memset(&co, 0, sizeof(co));
	co.sub = SUB;
	co.bootstrap = o->bootstrap;
	co.keyfile = o->keyfile;
	co.idem = o->new_idem != NULL ? o->new_idem : idem;
	co.method = q->method;
	co.prefix = dead_request_prefix(d->request_topic, q->service, prefix, sizeof(prefix));
	co.traceparent = traceparent_of(q);
	co.timeout_ms = o->timeout_ms;
	co.json = o->json;
	co.n_conf = o->n_conf;
	memcpy(co.conf, o->conf, sizeof(co.conf));
	char where[48];
	snprintf(where, sizeof(where), "%d:%lld", (int)r->partition, (long long)r->offset);
	co.json_extra =
	    json_pack("{s:s, s:s, s:s, s:s}", "replay_of", where, "dead_topic", o->topic,
	              "idempotency_key", co.idem, "idempotency_key_encoding", "text");
	if (!o->json)
		printf("replaying %s %s (%s) as a new call with idempotency key %s\n", o->topic,
		       where, q->method, co.idem);
	fflush(stdout);
	struct cli_payload p = {q->payload.data, q->payload.len};
	int rc = cli_call_run(&co, rd->kr, &p, sigfd);
	json_decref(co.json_extra);
	return rc;
}

static int run_replay(const struct dead_opts *o, struct dead_reader *rd)
{
	if (!o->new_key)
		return refuse_old_key(o);
	struct find_state s;
	int rc = find_ref(o, rd, &s);
	if (rc != CLI_EXIT_OK) {
		find_free(&s);
		return rc;
	}
	const struct dead_rec *r = &s.match[0];
	struct inner in = {0};
	if (dl_of(r) == NULL) {
		report_not_verified(o, r);
		rc = cli_fail(CLI_EXIT_VERIFY, SUB,
		              "refusing to replay a record that did not "
		              "verify");
	} else {
		open_inner(rd, dl_of(r), &in);
		if (!in.decoded)
			rc = cli_fail(CLI_EXIT_FAIL, SUB,
			              "the request inside %d:%lld does not decode: %s (%s)",
			              (int)r->partition, (long long)r->offset,
			              kreq_err_name(in.verdict), in.detail);
		else if (in.verdict != KREQ_OK && in.verdict != KREQ_EUNKNOWNKEY)
			rc =
			    cli_fail(CLI_EXIT_VERIFY, SUB,
			             "refusing to replay %d:%lld: its request does not verify with "
			             "the keys of %s: %s (%s)",
			             (int)r->partition, (long long)r->offset, o->keyfile,
			             kreq_err_name(in.verdict), in.detail);
	}
	if (rc == CLI_EXIT_OK) {
		int sigfd = cli_signals_block(SUB);
		rc = sigfd < 0 ? CLI_EXIT_FAIL : replay_call(o, rd, r, &in, sigfd);
		if (sigfd >= 0)
			close(sigfd);
	}
	kreq__opened_clear(&in.o);
	find_free(&s);
	return rc;
}

/* ---- entry ------------------------------------------------------------------------------ */

int cli_dead(int argc, char **argv)
{
	struct dead_opts o;
	memset(&o, 0, sizeof(o));
	int rc = parse(argc, argv, &o);
	if (rc >= 0)
		return rc;
	if (o.act == ACT_REPLAY && !o.new_key)
		return refuse_old_key(&o); /* before reaching Kafka: nothing is sent */
	struct dead_reader rd;
	rc = dead_reader_open(&rd, SUB, o.bootstrap, o.topic, o.keyfile,
	                      o.act == ACT_REPLAY && !o.timeout_set ? DEAD_TIMEOUT_MS
	                                                            : o.timeout_ms);
	if (rc == CLI_EXIT_OK) {
		if (o.act == ACT_LIST)
			rc = run_list(&o, &rd);
		else if (o.act == ACT_SHOW)
			rc = run_show(&o, &rd);
		else
			rc = run_replay(&o, &rd);
	}
	dead_reader_close(&rd);
	return rc;
}
