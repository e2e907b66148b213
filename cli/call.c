/*
 * call.c — `kreq call`: call one remote method and print its reply.
 *
 * Design: a real kreq client (the library, not a re-implementation), so a
 * call from the command line behaves exactly like one from a service:
 * signed request, absolute deadline, retries, fail-fast, health check. The
 * client's start is bounded by --timeout-ms too, so an unreachable Kafka is
 * reported within the time asked for. SIGINT/SIGTERM cancel the call (the
 * signals are blocked before the client starts its threads and read from a
 * signalfd while waiting).
 *
 * Its client is named kreq-cli-<pid>-<random> and its reply topic, created
 * by the client, is deleted again when the call is over: otherwise every
 * invocation would leave a topic behind on the cluster. A client named with
 * -X client.id or given -X reply.topic uses a topic the user chose, which
 * is kept. Deleting is best effort (5 s; a failure is a warning and does
 * not change the exit status).
 *
 * Exit status: 0 reply with status 0; 3 reply with a non-zero status or
 * KREQ_EREJECTED; 1 any other failure (timed out, unavailable, cancelled,
 * cannot start the client); 2 bad arguments.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "cli/cli.h"
#include "common/conf.h"
#include "common/topic_admin.h"
#include "kreq/client.h"
#include "kreq/error.h"

/* "call", or the subcommand that runs a call through cli_call_run */
static const char *sub_name = "call";
#define SUB         sub_name
#define PAYLOAD_MAX (256u << 20)
#define WAIT_MS     200
#define DELETE_MS   5000

static void usage(FILE *out)
{
	fputs("usage: kreq call --bootstrap HOST:PORT --keyfile FILE [--timeout-ms MS]\n"
	      "                 [--idempotency-key KEY] [--prefix PREFIX] [-X NAME=VALUE]...\n"
	      "                 [--json] METHOD [PAYLOAD | -]\n"
	      "\n"
	      "Call METHOD (e.g. billing.charge: sent to <prefix>.billing.requests) with\n"
	      "PAYLOAD (the argument as bytes; '-' reads standard input; none: empty)\n"
	      "through a kreq client, wait for the reply and print its status and\n"
	      "payload (as text if it is printable UTF-8, else base64).\n"
	      "\n"
	      "  --bootstrap HOST:PORT  Kafka bootstrap servers (comma-separated)\n"
	      "  --keyfile FILE         key file whose signing key signs the request\n"
	      "  --timeout-ms MS        deadline of the call, and the longest wait for\n"
	      "                         Kafka when starting (default: request.timeout.ms,\n"
	      "                         30000)\n"
	      "  --idempotency-key KEY  caller-chosen idempotency key (1..255 bytes)\n"
	      "  --prefix PREFIX        topic.prefix (default kreq)\n"
	      "  -X NAME=VALUE          any client property (docs/CONFIGURATION.md), e.g.\n"
	      "                         -X retry.max.attempts=1; repeatable\n"
	      "  --json                 print the outcome as one JSON object\n"
	      "  -h, --help             show this help\n"
	      "\n"
	      "Exit status: 0 reply with status 0, 1 failed (timed out, unavailable,\n"
	      "cannot reach Kafka, unreadable key file), 2 usage, 3 reply with a\n"
	      "non-zero status or rejected by the worker.\n",
	      out);
}

static bool method_valid(const char *m)
{
	size_t n = strlen(m);
	if (n == 0 || n > 255)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)m[i] < 0x21 || (unsigned char)m[i] > 0x7e)
			return false;
	return true;
}

static int parse_opt(int c, char **argv, struct cli_call_opts *o)
{
	switch (c) {
	case 'b':
		o->bootstrap = optarg;
		return -1;
	case 'k':
		o->keyfile = optarg;
		return -1;
	case 'i':
		o->idem = optarg;
		return -1;
	case 'p':
		o->prefix = optarg;
		return -1;
	case 'j':
		o->json = true;
		return -1;
	case 'T':
		if (!cli_parse_long(optarg, 1, 86400000, &o->timeout_ms))
			return cli_usage_error(
			    SUB, "--timeout-ms needs 1..86400000 milliseconds, not '%s'", optarg);
		return -1;
	case 'X':
		if (strchr(optarg, '=') == NULL || o->n_conf == CLI_CALL_MAX_CONF)
			return cli_usage_error(SUB, "-X needs NAME=VALUE (at most %d), not '%s'",
			                       CLI_CALL_MAX_CONF, optarg);
		o->conf[o->n_conf++] = optarg;
		return -1;
	case 'h':
		usage(stdout);
		return CLI_EXIT_OK;
	default:
		return cli_getopt_error(SUB, argv, c);
	}
}

static int parse(int argc, char **argv, struct cli_call_opts *o)
{
	static const struct option opts[] = {{"bootstrap", required_argument, NULL, 'b'},
	                                     {"keyfile", required_argument, NULL, 'k'},
	                                     {"timeout-ms", required_argument, NULL, 'T'},
	                                     {"idempotency-key", required_argument, NULL, 'i'},
	                                     {"prefix", required_argument, NULL, 'p'},
	                                     {"conf", required_argument, NULL, 'X'},
	                                     {"json", no_argument, NULL, 'j'},
	                                     {"help", no_argument, NULL, 'h'},
	                                     {NULL, 0, NULL, 0}};
	opterr = 0;
	int c, rc;
	while ((c = getopt_long(argc, argv, ":hX:", opts, NULL)) != -1)
		if ((rc = parse_opt(c, argv, o)) >= 0)
			return rc;
	if (o->bootstrap == NULL || o->keyfile == NULL)
		return cli_usage_error(SUB, "--bootstrap and --keyfile are required");
	if (optind >= argc)
		return cli_usage_error(SUB, "missing METHOD");
	if (argc - optind > 2)
		return cli_usage_error(SUB, "unexpected argument '%s'", argv[optind + 2]);
	o->method = argv[optind];
	o->payload_arg = optind + 1 < argc ? argv[optind + 1] : NULL;
	if (!method_valid(o->method))
		return cli_usage_error(
		    SUB, "invalid method '%s': 1..255 printable ASCII characters", o->method);
	size_t idem_len = o->idem ? strlen(o->idem) : 1;
	if (idem_len == 0 || idem_len > 255)
		return cli_usage_error(SUB, "--idempotency-key needs 1..255 bytes");
	return -1;
}

/* ---- payload ---------------------------------------------------------------- */

static int read_stdin(struct cli_payload *p)
{
	size_t cap = 4096;
	p->data = malloc(cap);
	for (;;) {
		if (p->data == NULL)
			return cli_fail(CLI_EXIT_FAIL, SUB, "out of memory reading the payload");
		ssize_t n = read(STDIN_FILENO, p->data + p->len, cap - p->len);
		if (n == 0)
			return CLI_EXIT_OK;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return cli_fail(CLI_EXIT_FAIL, SUB,
			                "cannot read the payload from stdin: %s", strerror(errno));
		p->len += (size_t)n;
		if (p->len == cap) {
			if (cap >= PAYLOAD_MAX)
				return cli_fail(CLI_EXIT_FAIL, SUB,
				                "payload on stdin is larger than %u bytes",
				                PAYLOAD_MAX);
			uint8_t *nd = realloc(p->data, cap *= 2);
			if (nd == NULL)
				free(p->data);
			p->data = nd;
		}
	}
}

static int get_payload(const struct cli_call_opts *o, struct cli_payload *p)
{
	if (o->payload_arg != NULL && strcmp(o->payload_arg, "-") == 0)
		return read_stdin(p);
	if (o->payload_arg != NULL) {
		p->len = strlen(o->payload_arg);
		p->data = (uint8_t *)strdup(o->payload_arg);
		if (p->data == NULL)
			return cli_fail(CLI_EXIT_FAIL, SUB, "out of memory");
	}
	return CLI_EXIT_OK;
}

/* ---- client ----------------------------------------------------------------- */

static int conf_set(kreq_conf_t *conf, const char *name, const char *value)
{
	char err[512];
	int rc = kreq_conf_set(conf, name, value, err, sizeof(err));
	if (rc == KREQ_ENOMEM)
		return cli_fail(CLI_EXIT_FAIL, SUB, "out of memory");
	if (rc != KREQ_OK)
		return cli_usage_error(SUB, "setting %s: %s", name, err);
	return CLI_EXIT_OK;
}

static int build_conf(const struct cli_call_opts *o, const char *id, kreq_conf_t *conf)
{
	char start[32];
	long st = o->timeout_ms < 100 ? 100 : o->timeout_ms > 600000 ? 600000 : o->timeout_ms;
	snprintf(start, sizeof(start), "%ld", st);
	int rc = conf_set(conf, "kafka.bootstrap.servers", o->bootstrap);
	if (rc == CLI_EXIT_OK)
		rc = conf_set(conf, "client.id", id);
	if (rc == CLI_EXIT_OK)
		rc = conf_set(conf, "log.level", "3");
	if (rc == CLI_EXIT_OK) /* kreq's own message names the cause; -X overrides */
		rc = conf_set(conf, "kafka.log_level", "2");
	if (rc == CLI_EXIT_OK && o->prefix != NULL)
		rc = conf_set(conf, "topic.prefix", o->prefix);
	if (rc == CLI_EXIT_OK && o->timeout_ms)
		rc = conf_set(conf, "client.start.timeout.ms", start);
	for (size_t i = 0; rc == CLI_EXIT_OK && i < o->n_conf; i++) {
		char name[256];
		size_t n = strcspn(o->conf[i], "=");
		snprintf(name, sizeof(name), "%.*s", (int)n, o->conf[i]);
		rc = conf_set(conf, name, o->conf[i] + n + 1);
	}
	return rc;
}

/* True, with the reply topic the client created for itself in topic (size
 * bytes), unless the user chose the client's name or its topic. */
static bool own_reply_topic(const kreq_conf_t *conf, const char *id, char *topic, size_t size)
{
	if (strcmp(kreq__conf_str(conf, KREQ__P_CLIENT_ID), id) != 0 ||
	    *kreq__conf_str(conf, KREQ__P_REPLY_TOPIC) != '\0')
		return false;
	snprintf(topic, size, "%s.reply.%s", kreq__conf_str(conf, KREQ__P_TOPIC_PREFIX), id);
	return true;
}

/* Fills conf (the caller's) and starts the client on it. */
static int new_client(const struct cli_call_opts *o, kreq_keyring_t *kr, const char *id,
                      kreq_conf_t *conf, kreq_client_t **out)
{
	int rc = build_conf(o, id, conf);
	char sid[128] = "";
	size_t sid_size = sizeof(sid);
	/* --conf signing.key.id=ID picks the signing key among the key file's */
	if (rc == CLI_EXIT_OK && kreq_conf_get(conf, "signing.key.id", sid, &sid_size) == KREQ_OK &&
	    *sid) {
		int err = kreq_keyring_set_signing_key(kr, sid);
		if (err != KREQ_OK)
			rc = cli_fail(
			    CLI_EXIT_FAIL, SUB, "signing.key.id %s: %s in the key file (%s)", sid,
			    err == KREQ_ENOENT ? "no such key" : "not a key that can sign",
			    kreq_err_name(err));
	}
	if (rc == CLI_EXIT_OK) {
		char err[512];
		*out = kreq_client_new(conf, kr, err, sizeof(err));
		if (*out == NULL)
			rc = cli_fail(CLI_EXIT_FAIL, SUB, "cannot start a kreq client on %s: %s",
			              o->bootstrap, err);
	}
	return rc;
}

/* ---- the call ----------------------------------------------------------------- */

static int submit(const struct cli_call_opts *o, kreq_client_t *c, const struct cli_payload *p,
                  kreq_future_t **f)
{
	kreq_call_opts_t *co = kreq_call_opts_new();
	if (co == NULL)
		return cli_fail(CLI_EXIT_FAIL, SUB, "out of memory");
	if (o->timeout_ms)
		kreq_call_opts_set_timeout(co, o->timeout_ms);
	if (o->idem != NULL)
		kreq_call_opts_set_idempotency_key(co, o->idem, strlen(o->idem));
	if (o->traceparent != NULL && kreq_call_opts_set_traceparent(co, o->traceparent) != KREQ_OK)
		fprintf(stderr,
		        "kreq %s: note: traceparent '%s' is not valid W3C trace context: "
		        "not sent\n",
		        SUB, o->traceparent);
	int err = kreq_client_call(c, o->method, p->data, p->len, co, f);
	kreq_call_opts_destroy(co);
	if (err == KREQ_EINVAL)
		return cli_usage_error(SUB,
		                       "the call to %s was refused: %s (check the method name "
		                       "and the payload size)",
		                       o->method, kreq_strerror(err));
	if (err == KREQ_EOVERSIZE)
		return cli_usage_error(SUB,
		                       "the payload of %zu bytes is larger than payload.max.bytes "
		                       "(set it with -X payload.max.bytes=N)",
		                       p->len);
	if (err != KREQ_OK)
		return cli_fail(CLI_EXIT_FAIL, SUB, "cannot call %s: %s (%s)", o->method,
		                kreq_strerror(err), kreq_err_name(err));
	return CLI_EXIT_OK;
}

/* Waits for the future; a signal cancels the call. */
static void await(kreq_future_t *f, int sigfd)
{
	while (kreq_future_wait(f, WAIT_MS) == KREQ_ETIMEDOUT)
		if (cli_signalled(sigfd) && kreq_future_cancel(f) == KREQ_OK)
			fprintf(stderr, "kreq %s: interrupted, call cancelled\n", SUB);
}

const char *cli_status_name(int32_t s)
{
	static const char *const names[] = {"ok",
	                                    "unknown method",
	                                    "deadline exceeded",
	                                    "cancelled",
	                                    "refused by verification",
	                                    "method not permitted for the key",
	                                    "idempotency key reused",
	                                    "rate limited or overloaded",
	                                    "handler failed",
	                                    "worker shutting down",
	                                    "poison",
	                                    "reply too large for Kafka"};
	if (s >= 0 && s < (int32_t)(sizeof(names) / sizeof(names[0])))
		return names[s];
	return s >= 100 ? "handler status" : "reserved";
}

static int exit_code(kreq_future_t *f)
{
	int err = kreq_future_err(f);
	if (err == KREQ_OK)
		return kreq_future_status(f) == 0 ? CLI_EXIT_OK : CLI_EXIT_REMOTE;
	return err == KREQ_EREJECTED ? CLI_EXIT_REMOTE : CLI_EXIT_FAIL;
}

static json_t *payload_json(kreq_future_t *f, const char **encoding)
{
	size_t len = 0;
	const uint8_t *p = kreq_future_payload(f, &len);
	*encoding = "text";
	if (len == 0 || cli_is_text(p, len))
		return json_stringn(len ? (const char *)p : "", len);
	*encoding = "base64";
	char *b64 = cli_base64(p, len);
	json_t *j = b64 ? json_string(b64) : NULL;
	free(b64);
	return j;
}

static int report_json(const struct cli_call_opts *o, kreq_future_t *f)
{
	int err = kreq_future_err(f);
	json_t *errj = json_null();
	if (err != KREQ_OK)
		errj = json_pack("{s:s, s:s, s:s}", "code", kreq_err_name(err), "message",
		                 kreq_strerror(err), "detail", kreq_future_errstr(f));
	const char *enc = NULL;
	json_t *payload = err == KREQ_OK ? payload_json(f, &enc) : json_null();
	size_t len = 0;
	kreq_future_payload(f, &len);
	/* the handler's error text of a reply with a non-zero status */
	const char *text = err == KREQ_OK && kreq_future_status(f) != 0 && *kreq_future_errstr(f)
	                       ? kreq_future_errstr(f)
	                       : NULL;
	json_t *j = json_pack(
	    "{s:s, s:i, s:s, s:o, s:s?, s:I, s:b, s:o, s:s?}", "method", o->method, "status",
	    (int)kreq_future_status(f), "status_name", cli_status_name(kreq_future_status(f)),
	    "payload", payload, "payload_encoding", enc, "payload_bytes", (json_int_t)len,
	    "from_dedup", (int)kreq_future_from_dedup(f), "error", errj, "error_text", text);
	if (j != NULL && o->json_extra != NULL)
		json_object_update(j, o->json_extra);
	int rc = cli_print_json(SUB, j);
	return rc == CLI_EXIT_OK ? exit_code(f) : rc;
}

static void print_payload(kreq_future_t *f)
{
	size_t len = 0;
	const uint8_t *p = kreq_future_payload(f, &len);
	if (len == 0) {
		puts("payload: (empty)");
	} else if (cli_is_text(p, len)) {
		printf("payload: %.*s\n", (int)len, (const char *)p);
	} else {
		char *b64 = cli_base64(p, len);
		printf("payload (%zu bytes, base64): %s\n", len, b64 ? b64 : "(out of memory)");
		free(b64);
	}
}

static int report_text(const struct cli_call_opts *o, kreq_future_t *f)
{
	int err = kreq_future_err(f);
	int32_t st = kreq_future_status(f);
	if (err != KREQ_OK && err != KREQ_EREJECTED)
		return cli_fail(CLI_EXIT_FAIL, SUB, "%s: %s (%s): %s", o->method,
		                kreq_strerror(err), kreq_err_name(err), kreq_future_errstr(f));
	if (err == KREQ_EREJECTED)
		return cli_fail(CLI_EXIT_REMOTE, SUB, "%s: %s (EREJECTED), status %d (%s): %s",
		                o->method, kreq_strerror(err), (int)st, cli_status_name(st),
		                kreq_future_errstr(f));
	printf("status: %d (%s)%s\n", (int)st, cli_status_name(st),
	       kreq_future_from_dedup(f) ? ", from the deduplication store" : "");
	if (st != 0 && *kreq_future_errstr(f) != '\0')
		printf("error: %s\n", kreq_future_errstr(f));
	print_payload(f);
	if (st != 0)
		fprintf(stderr, "kreq %s: %s answered with status %d\n", SUB, o->method, (int)st);
	return exit_code(f);
}

/* Deletes the client's own reply topic with the Kafka settings the client
 * had (its conf's kafka.* properties). */
static void delete_reply_topic(const kreq_conf_t *conf, const char *topic)
{
	char err[512];
	rd_kafka_conf_t *rc = rd_kafka_conf_new();
	rd_kafka_t *rk = kreq__conf_kafka_apply(conf, rc, err, sizeof(err)) == KREQ_OK
	                     ? rd_kafka_new(RD_KAFKA_PRODUCER, rc, err, sizeof(err))
	                     : NULL;
	if (rk == NULL) {
		rd_kafka_conf_destroy(rc);
		fprintf(stderr, "kreq %s: warning: reply topic %s not deleted: %s\n", SUB, topic,
		        err);
		return;
	}
	if (kreq__topic_admin_served(rk, DELETE_MS) == 0) {
		fprintf(stderr,
		        "kreq %s: note: reply topic %s stays: this Kafka cluster cannot delete "
		        "topics (its metadata names no controller, as librdkafka's mock cluster)\n",
		        SUB, topic);
		rd_kafka_destroy(rk);
		return;
	}
	rd_kafka_resp_err_t kerr = kreq__topic_delete(rk, topic, DELETE_MS);
	if (kerr)
		fprintf(stderr, "kreq %s: warning: reply topic %s not deleted: %s\n", SUB, topic,
		        rd_kafka_err2str(kerr));
	rd_kafka_destroy(rk);
}

/* A call that timed out may have had no worker. A client fails such calls
 * fast ("no worker serves ...") only where Kafka lists the service's
 * consumer group; librdkafka's mock cluster (kreq dev) serves no
 * ListGroups, so there the call waits out its deadline: say so plainly. */
static void note_unknown_workers(const kreq_conf_t *conf, const char *method)
{
	char err[512], group[600];
	const char *dot = strrchr(method, '.');
	int service_len = dot ? (int)(dot - method) : (int)strlen(method);
	snprintf(group, sizeof(group), "%s.%.*s", kreq__conf_str(conf, KREQ__P_TOPIC_PREFIX),
	         service_len, method);
	rd_kafka_conf_t *rc = rd_kafka_conf_new();
	rd_kafka_t *rk = kreq__conf_kafka_apply(conf, rc, err, sizeof(err)) == KREQ_OK
	                     ? rd_kafka_new(RD_KAFKA_PRODUCER, rc, err, sizeof(err))
	                     : NULL;
	if (rk == NULL) {
		rd_kafka_conf_destroy(rc);
		return;
	}
	const struct rd_kafka_group_list *gl = NULL;
	if (rd_kafka_list_groups(rk, group, &gl, DELETE_MS) ==
	    RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE)
		fprintf(stderr,
		        "kreq %s: note: this Kafka cluster cannot tell whether a worker serves "
		        "%.*s (it answers no ListGroups, as librdkafka's mock cluster), so a call "
		        "with no worker waits out its deadline here instead of failing at once "
		        "with \"no worker serves\"\n",
		        SUB, service_len, method);
	if (gl != NULL)
		rd_kafka_group_list_destroy(gl);
	rd_kafka_destroy(rk);
}

int cli_call_run(const struct cli_call_opts *o, kreq_keyring_t *kr, const struct cli_payload *p,
                 int sigfd)
{
	sub_name = o->sub != NULL ? o->sub : "call";
	kreq_client_t *c = NULL;
	char id[64], own_topic[512];
	if (sodium_init() < 0)
		return cli_fail(CLI_EXIT_FAIL, SUB, "libsodium cannot be initialised");
	snprintf(id, sizeof(id), "kreq-cli-%ld-%08x", (long)getpid(), randombytes_random());
	kreq_conf_t *conf = kreq_conf_new();
	if (conf == NULL)
		return cli_fail(CLI_EXIT_FAIL, SUB, "out of memory");
	int rc = new_client(o, kr, id, conf, &c);
	kreq_future_t *f = NULL;
	if (rc == CLI_EXIT_OK)
		rc = submit(o, c, p, &f);
	if (rc == CLI_EXIT_OK) {
		await(f, sigfd);
		rc = o->json ? report_json(o, f) : report_text(o, f);
		if (kreq_future_err(f) == KREQ_ETIMEDOUT)
			note_unknown_workers(conf, o->method);
		kreq_future_release(f);
	}
	if (c != NULL) {
		kreq_client_destroy(c);
		if (own_reply_topic(conf, id, own_topic, sizeof(own_topic)))
			delete_reply_topic(conf, own_topic);
	}
	kreq_conf_destroy(conf);
	return rc;
}

int cli_call(int argc, char **argv)
{
	struct cli_call_opts o;
	memset(&o, 0, sizeof(o));
	int rc = parse(argc, argv, &o);
	if (rc >= 0)
		return rc;
	struct cli_payload p = {0};
	kreq_keyring_t *kr = NULL;
	rc = get_payload(&o, &p);
	if (rc == CLI_EXIT_OK)
		rc = cli_load_keyring(SUB, o.keyfile, &kr);
	int sigfd = rc == CLI_EXIT_OK ? cli_signals_block(SUB) : -1;
	if (rc == CLI_EXIT_OK && sigfd < 0)
		rc = CLI_EXIT_FAIL;
	if (rc == CLI_EXIT_OK)
		rc = cli_call_run(&o, kr, &p, sigfd);
	if (sigfd >= 0)
		close(sigfd);
	kreq_keyring_release(kr);
	free(p.data);
	return rc;
}
