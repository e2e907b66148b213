/*
 * pending.c — `kreq pending`: what is still outstanding, seen from a running
 * client (--socket) or from Kafka (--bootstrap, --service).
 *
 * Design, client view (--socket): asks the client's admin socket
 * (client/admin.h, opt-in with the admin.socket property) for "pending",
 * which answers one JSON document holding every pending call, then filters
 * (--method) and sorts (--sort) the "pending" array in place and prints it
 * as a table, or as the same JSON document with only that array changed
 * (--json), so scripts see the client's own format.
 *
 * Design, Kafka view (--bootstrap): cli/pending_kafka.c.
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "cli/cli.h"
#include "cli/pending_kafka.h"
#include "common/internal.h"
#include "proto/envelope.h"

#define SUB              "pending"
#define KAFKA_TIMEOUT_MS 10000
#define SERVICE_MAX      200
#define PREFIX_MAX       200
#define DEFAULT_PREFIX   "kreq"
#define TOPIC_SUFFIX_LEN sizeof(".requests")

static void usage(FILE *out)
{
	fputs("usage: kreq pending --socket PATH [--sort age|left|method|attempt]\n"
	      "                    [--method METHOD] [--json]\n"
	      "       kreq pending --bootstrap HOST:PORT --service SERVICE [--prefix PREFIX]\n"
	      "                    [--keyring FILE] [--timeout MS]\n"
	      "                    [--sort age|left|method|attempt] [--method METHOD] [--json]\n"
	      "\n"
	      "With --socket: the calls a running kreq client is waiting on, read from\n"
	      "its admin socket (client property admin.socket): correlation id, method,\n"
	      "age, time left before the deadline, attempt, idempotency key (as text\n"
	      "when it is printable ASCII, else hex). Pointed at kreqd's admin socket:\n"
	      "the requests that worker is running or has queued (state, partition and\n"
	      "offset, caller's key id).\n"
	      "\n"
	      "With --bootstrap: the requests still outstanding for SERVICE in Kafka,\n"
	      "whoever sent them: the records of PREFIX.SERVICE.requests at or after\n"
	      "the committed offset of the workers' group PREFIX.SERVICE, within their\n"
	      "deadline, with no result in PREFIX.SERVICE.results yet. State is waiting,\n"
	      "or cancelled when a cancel followed. Also shows each partition's\n"
	      "committed offset, end offset and lag. The group is only read: this\n"
	      "never joins it and never commits.\n"
	      "\n"
	      "  --socket PATH          a client's admin socket, or kreqd's\n"
	      "  --bootstrap HOST:PORT  Kafka bootstrap servers (comma-separated)\n"
	      "  --service SERVICE      the service (method name up to its last '.')\n"
	      "  --prefix PREFIX        topic.prefix of the service (default kreq)\n"
	      "  --keyring FILE         verify every record with the keys of FILE (also\n"
	      "                         --keyfile); records that do not verify are\n"
	      "                         counted on stderr, not listed. Without it records\n"
	      "                         are decoded unverified and marked so\n"
	      "  --timeout MS           bound on reaching Kafka and reading to the end\n"
	      "                         (default 10000)\n"
	      "  --sort KEY             age: oldest first (default); left: least time left\n"
	      "                         first; method: by method, then oldest first;\n"
	      "                         attempt: most attempts first, then oldest first\n"
	      "  --method METHOD        only calls to METHOD\n"
	      "  --json                 one JSON document (--socket: the client's own,\n"
	      "                         with the pending array filtered and sorted; a\n"
	      "                         worker's: {\"view\":\"worker\",\"inprogress\":[...]})\n"
	      "  -h, --help             show this help\n"
	      "\n"
	      "Exit status: 0 listed (also when nothing is outstanding), 1 cannot reach\n"
	      "the socket or Kafka, topic missing, timed out, bad answer or key file,\n"
	      "2 usage, 3 the client refused the command (--socket).\n",
	      out);
}

static bool parse_sort(const char *s, enum sort_key *k)
{
	static const char *const names[] = {"age", "left", "method", "attempt"};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (strcmp(s, names[i]) == 0) {
			*k = (enum sort_key)i;
			return true;
		}
	}
	return false;
}

/* 1..max characters of [A-Za-z0-9._-], what a topic name is made of. */
static bool name_ok(const char *s, size_t max)
{
	size_t n = strlen(s);
	return n > 0 && n <= max &&
	       strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

static int check_kafka_opts(struct pending_opts *o)
{
	if (o->service == NULL)
		return cli_usage_error(SUB, "--bootstrap needs --service");
	if (!name_ok(o->service, SERVICE_MAX))
		return cli_usage_error(
		    SUB, "invalid service '%s': 1..%d characters of A-Z a-z 0-9 . _ -", o->service,
		    SERVICE_MAX);
	if (o->prefix == NULL)
		o->prefix = DEFAULT_PREFIX;
	if (!name_ok(o->prefix, PREFIX_MAX))
		return cli_usage_error(SUB,
		                       "invalid prefix '%s': 1..%d characters of A-Z a-z 0-9 . _ -",
		                       o->prefix, PREFIX_MAX);
	if (strlen(o->prefix) + 1 + strlen(o->service) + TOPIC_SUFFIX_LEN - 1 > TOPIC_NAME_MAX)
		return cli_usage_error(SUB, "%s.%s.requests is longer than %d characters",
		                       o->prefix, o->service, TOPIC_NAME_MAX);
	if (!o->timeout_set)
		o->timeout_ms = KAFKA_TIMEOUT_MS;
	return -1;
}

static int parse(int argc, char **argv, struct pending_opts *o)
{
	static const struct option opts[] = {{"socket", required_argument, NULL, 's'},
	                                     {"bootstrap", required_argument, NULL, 'b'},
	                                     {"service", required_argument, NULL, 'S'},
	                                     {"prefix", required_argument, NULL, 'p'},
	                                     {"keyring", required_argument, NULL, 'k'},
	                                     {"keyfile", required_argument, NULL, 'k'},
	                                     {"timeout", required_argument, NULL, 'T'},
	                                     {"timeout-ms", required_argument, NULL, 'T'},
	                                     {"sort", required_argument, NULL, 'o'},
	                                     {"method", required_argument, NULL, 'm'},
	                                     {"json", no_argument, NULL, 'j'},
	                                     {"help", no_argument, NULL, 'h'},
	                                     {NULL, 0, NULL, 0}};
	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			o->socket = optarg;
			break;
		case 'b':
			o->bootstrap = optarg;
			break;
		case 'S':
			o->service = optarg;
			break;
		case 'p':
			o->prefix = optarg;
			break;
		case 'k':
			o->keyring = optarg;
			break;
		case 'T':
			if (!cli_parse_long(optarg, 1, 86400000, &o->timeout_ms))
				return cli_usage_error(
				    SUB, "--timeout needs 1..86400000 milliseconds, not '%s'",
				    optarg);
			o->timeout_set = true;
			break;
		case 'm':
			o->method = optarg;
			break;
		case 'j':
			o->json = true;
			break;
		case 'o':
			if (!parse_sort(optarg, &o->sort))
				return cli_usage_error(
				    SUB, "--sort must be age, left, method or attempt, not '%s'",
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
	if (o->socket != NULL && o->bootstrap != NULL)
		return cli_usage_error(SUB, "--socket and --bootstrap exclude each other: one "
		                            "client's view or Kafka's, not both");
	if (o->socket == NULL && o->bootstrap == NULL)
		return cli_usage_error(SUB, "--socket is required (a client's view), or "
		                            "--bootstrap with --service (Kafka's view)");
	if (o->socket != NULL) {
		if (o->service != NULL || o->prefix != NULL || o->keyring != NULL || o->timeout_set)
			return cli_usage_error(SUB, "--service, --prefix, --keyring and --timeout "
			                            "go with --bootstrap, not --socket");
		return -1;
	}
	return check_kafka_opts(o);
}

/* ==== client view (--socket) ======================================================= */

/* ---- filter and sort ---------------------------------------------------------- */

static json_int_t field_int(const json_t *row, const char *name)
{
	return json_integer_value(json_object_get(row, name));
}

static const char *field_str(const json_t *row, const char *name)
{
	const char *s = json_string_value(json_object_get(row, name));
	return s != NULL ? s : "";
}

static int cmp_int(json_int_t a, json_int_t b)
{
	return (a > b) - (a < b);
}

static enum sort_key sort_by; /* qsort has no context argument */

static int compare(const void *pa, const void *pb)
{
	const json_t *a = *(json_t *const *)pa, *b = *(json_t *const *)pb;
	int c = 0;
	if (sort_by == SORT_LEFT)
		c = cmp_int(field_int(a, "time_left_ms"), field_int(b, "time_left_ms"));
	else if (sort_by == SORT_METHOD)
		c = strcmp(field_str(a, "method"), field_str(b, "method"));
	else if (sort_by == SORT_ATTEMPT)
		c = cmp_int(field_int(b, "attempt"), field_int(a, "attempt"));
	if (c == 0)
		c = cmp_int(field_int(b, "age_ms"), field_int(a, "age_ms"));
	return c;
}

/* A new array of the rows of `in` that pass the filter, sorted. */
static json_t *select_rows(const json_t *in, const struct pending_opts *o)
{
	size_t n = json_array_size(in), k = 0;
	json_t **rows = calloc(n ? n : 1, sizeof(*rows));
	json_t *out = json_array();
	if (rows == NULL || out == NULL) {
		free(rows);
		json_decref(out);
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *r = json_array_get(in, i);
		if (o->method == NULL || strcmp(field_str(r, "method"), o->method) == 0)
			rows[k++] = r;
	}
	sort_by = o->sort;
	qsort(rows, k, sizeof(*rows), compare);
	for (size_t i = 0; i < k; i++)
		json_array_append(out, rows[i]);
	free(rows);
	return out;
}

/* ---- table -------------------------------------------------------------------- */

/* The key as text if its bytes (hex in the JSON) are printable ASCII. */
static void fmt_idem(const char *hex, char *buf, size_t size)
{
	size_t n = strlen(hex) / 2;
	bool text = n > 0 && strlen(hex) % 2 == 0 && n < size;
	for (size_t i = 0; text && i < n; i++) {
		unsigned v = 0;
		text = sscanf(hex + 2 * i, "%2x", &v) == 1 && v >= 0x20 && v < 0x7f;
		buf[i] = (char)v;
	}
	if (text)
		buf[n] = '\0';
	else
		snprintf(buf, size, "%s", hex);
}

static void print_row(const json_t *r)
{
	char age[32], left[32], idem[520];
	cli_fmt_ms(field_int(r, "age_ms"), age, sizeof(age));
	cli_fmt_ms(field_int(r, "time_left_ms"), left, sizeof(left));
	fmt_idem(field_str(r, "idempotency_key"), idem, sizeof(idem));
	printf("%-32s %-24s %9s %9s %7lld  %s\n", field_str(r, "correlation_id"),
	       field_str(r, "method"), age, left, (long long)field_int(r, "attempt"), idem);
}

static void print_table(const json_t *root, const json_t *rows)
{
	printf("client %s, reply topic %s: %lld in flight, %zu shown\n", field_str(root, "client"),
	       field_str(root, "reply_topic"), (long long)field_int(root, "in_flight"),
	       json_array_size(rows));
	printf("%-32s %-24s %9s %9s %7s  %s\n", "CORRELATION_ID", "METHOD", "AGE", "LEFT",
	       "ATTEMPT", "IDEMPOTENCY_KEY");
	for (size_t i = 0; i < json_array_size(rows); i++)
		print_row(json_array_get(rows, i));
}

static int show(const struct pending_opts *o, const char *text)
{
	json_error_t jerr;
	json_t *root = json_loads(text, 0, &jerr);
	json_t *in = json_object_get(root, "pending");
	if (!json_is_array(in)) {
		json_decref(root);
		return cli_fail(CLI_EXIT_FAIL, SUB,
		                "unexpected answer from %s (not a pending list): %.200s", o->socket,
		                root == NULL ? jerr.text : text);
	}
	json_t *rows = select_rows(in, o);
	if (rows == NULL) {
		json_decref(root);
		return cli_fail(CLI_EXIT_FAIL, SUB, "out of memory");
	}
	if (o->json) {
		json_object_set_new(root, "pending", rows);
		return cli_print_json(SUB, root);
	}
	print_table(root, rows);
	json_decref(rows);
	json_decref(root);
	return fflush(stdout) == 0 ? CLI_EXIT_OK
	                           : cli_fail(CLI_EXIT_FAIL, SUB, "cannot write to stdout");
}

/* ---- a worker's socket ---------------------------------------------------------- */

static void print_worker_row(const json_t *r)
{
	char age[32], left[32], idem[520], where[48];
	cli_fmt_ms(field_int(r, "age_ms"), age, sizeof(age));
	cli_fmt_ms(field_int(r, "time_left_ms"), left, sizeof(left));
	fmt_idem(field_str(r, "idempotency_key"), idem, sizeof(idem));
	snprintf(where, sizeof(where), "%lld:%lld", (long long)field_int(r, "partition"),
	         (long long)field_int(r, "offset"));
	printf("%-32s %-24s %9s %9s %-9s %-14s %-12s %s\n", field_str(r, "correlation_id"),
	       field_str(r, "method"), age, left,
	       json_is_true(json_object_get(r, "cancelled")) ? "cancelled" : field_str(r, "state"),
	       where, field_str(r, "key_id"), idem);
}

/* kreqd's socket answers `inprogress` (docs/operations.md, "Admin socket"):
 * the requests the worker is running or has queued. */
static int worker_view(const struct pending_opts *o)
{
	char *text = NULL;
	int rc = cli_admin_query(SUB, o->socket, "inprogress\n", &text);
	if (rc != CLI_EXIT_OK)
		return rc;
	json_error_t jerr;
	json_t *in = json_loads(text, 0, &jerr);
	json_t *rows = json_is_array(in) ? select_rows(in, o) : NULL;
	if (!json_is_array(in)) {
		rc = cli_fail(CLI_EXIT_FAIL, SUB,
		              "unexpected answer from %s (not an in-progress list): %.200s",
		              o->socket, in == NULL ? jerr.text : text);
	} else if (rows == NULL) {
		rc = cli_fail(CLI_EXIT_FAIL, SUB, "out of memory");
	} else if (o->json) {
		rc = cli_print_json(SUB,
		                    json_pack("{s:s, s:o}", "view", "worker", "inprogress", rows));
	} else {
		printf("worker at %s: %zu in progress, %zu shown\n", o->socket, json_array_size(in),
		       json_array_size(rows));
		printf("%-32s %-24s %9s %9s %-9s %-14s %-12s %s\n", "CORRELATION_ID", "METHOD",
		       "AGE", "LEFT", "STATE", "PART:OFFSET", "KEY_ID", "IDEMPOTENCY_KEY");
		for (size_t i = 0; i < json_array_size(rows); i++)
			print_worker_row(json_array_get(rows, i));
		json_decref(rows);
		rc = fflush(stdout) == 0 ? CLI_EXIT_OK
		                         : cli_fail(CLI_EXIT_FAIL, SUB, "cannot write to stdout");
	}
	json_decref(in);
	free(text);
	return rc;
}

/* A worker (kreqd) refuses `pending` naming the commands it knows. */
static bool is_worker_refusal(const char *text)
{
	json_t *j = json_loads(text, 0, NULL);
	const char *msg = json_string_value(json_object_get(j, "error"));
	bool worker = msg != NULL && strstr(msg, "inprogress") != NULL;
	json_decref(j);
	return worker;
}

static int client_view(const struct pending_opts *o)
{
	char *text = NULL;
	int rc = cli_admin_query(SUB, o->socket, "pending\n", &text);
	if (rc != CLI_EXIT_OK)
		return rc;
	if (is_worker_refusal(text)) {
		free(text);
		return worker_view(o);
	}
	rc = cli_admin_refused(SUB, text);
	if (rc < 0)
		rc = show(o, text);
	free(text);
	return rc;
}

int cli_pending(int argc, char **argv)
{
	struct pending_opts o = {0};
	int rc = parse(argc, argv, &o);
	if (rc >= 0)
		return rc;
	return o.bootstrap != NULL ? cli_pending_kafka(&o) : client_view(&o);
}
