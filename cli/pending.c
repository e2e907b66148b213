/*
 * pending.c — `kreq pending`: a running client's pending calls.
 *
 * Design: asks the client's admin socket (client/admin.h, opt-in with the
 * admin.socket property) for "pending", which answers one JSON document
 * holding every pending call, then filters (--method) and sorts (--sort)
 * the "pending" array in place and prints it as a table, or as the same
 * JSON document with only that array changed (--json), so scripts see the
 * client's own format.
 *
 * Only the client's view is shown. The Kafka-side view (requests still
 * outstanding in the topics) needs the broker's results topic, which does
 * not exist yet (see docs/cli.md).
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

#define SUB "pending"

enum sort_key { SORT_AGE, SORT_LEFT, SORT_METHOD, SORT_ATTEMPT };

struct pending_opts {
	const char *socket, *method;
	enum sort_key sort;
	bool json;
};

static void usage(FILE *out)
{
	fputs("usage: kreq pending --socket PATH [--sort age|left|method|attempt]\n"
	      "                    [--method METHOD] [--json]\n"
	      "\n"
	      "List the calls a running kreq client is waiting on, read from its admin\n"
	      "socket (client property admin.socket): correlation id, method, age,\n"
	      "time left before the deadline, attempt, idempotency key (as text when\n"
	      "it is printable ASCII, else hex).\n"
	      "\n"
	      "  --socket PATH    the client's admin socket\n"
	      "  --sort KEY       age: oldest first (default); left: least time left\n"
	      "                   first; method: by method, then oldest first;\n"
	      "                   attempt: most attempts first, then oldest first\n"
	      "  --method METHOD  only calls to METHOD\n"
	      "  --json           the client's JSON document, with the pending array\n"
	      "                   filtered and sorted\n"
	      "  -h, --help       show this help\n"
	      "\n"
	      "Exit status: 0 listed, 1 cannot reach the socket or bad answer, 2 usage,\n"
	      "3 the client refused the command.\n",
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

static int parse(int argc, char **argv, struct pending_opts *o)
{
	static const struct option opts[] = {
	    {"socket", required_argument, NULL, 's'}, {"sort", required_argument, NULL, 'o'},
	    {"method", required_argument, NULL, 'm'}, {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			o->socket = optarg;
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
	if (o->socket == NULL)
		return cli_usage_error(SUB, "--socket is required");
	return -1;
}

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

static void fmt_ms(json_int_t ms, char *buf, size_t size)
{
	const char *sign = ms < 0 ? "-" : "";
	long long a = ms < 0 ? -(long long)ms : (long long)ms;
	if (a < 1000)
		snprintf(buf, size, "%s%lldms", sign, a);
	else if (a < 60000)
		snprintf(buf, size, "%s%.1fs", sign, (double)a / 1000.0);
	else
		snprintf(buf, size, "%s%lldm%02llds", sign, a / 60000, a / 1000 % 60);
}

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
	fmt_ms(field_int(r, "age_ms"), age, sizeof(age));
	fmt_ms(field_int(r, "time_left_ms"), left, sizeof(left));
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

int cli_pending(int argc, char **argv)
{
	struct pending_opts o = {0};
	int rc = parse(argc, argv, &o);
	if (rc >= 0)
		return rc;
	char *text = NULL;
	rc = cli_admin_query(SUB, o.socket, "pending\n", &text);
	if (rc != CLI_EXIT_OK)
		return rc;
	rc = cli_admin_refused(SUB, text);
	if (rc < 0)
		rc = show(&o, text);
	free(text);
	return rc;
}
