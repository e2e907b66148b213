/*
 * stats.c — `kreq stats`: a running client's metrics.
 *
 * Design: asks the client's admin socket for "metrics" (Prometheus text
 * exposition format 0.0.4) and prints it unchanged, or, with --json,
 * converts every sample line into {"name", "labels": {...}, "value"}; the
 * HELP/TYPE comments are dropped. The parser handles what the format allows
 * on a sample line (escaped label values, a trailing comma, an optional
 * timestamp, +Inf/-Inf/NaN) and refuses anything else, naming the line.
 */
#include <ctype.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

#define SUB "stats"

struct stats_opts {
	const char *socket;
	bool json;
};

static void usage(FILE *out)
{
	fputs("usage: kreq stats --socket PATH [--json]\n"
	      "\n"
	      "Print a running kreq client's metrics (in flight, calls, outcomes,\n"
	      "retries, late and rejected replies, latency histograms), read from its\n"
	      "admin socket (client property admin.socket), in Prometheus text format.\n"
	      "\n"
	      "  --socket PATH  the client's admin socket\n"
	      "  --json         a JSON array of {\"name\", \"labels\": {...}, \"value\"}\n"
	      "                 (+Inf, -Inf and NaN values as strings)\n"
	      "  -h, --help     show this help\n"
	      "\n"
	      "Exit status: 0 printed, 1 cannot reach the socket or bad answer, 2 usage,\n"
	      "3 the client refused the command.\n",
	      out);
}

static int parse(int argc, char **argv, struct stats_opts *o)
{
	static const struct option opts[] = {{"socket", required_argument, NULL, 's'},
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
		case 'j':
			o->json = true;
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

/* ---- Prometheus text -> JSON ------------------------------------------------- */

static size_t name_len(const char *s, bool metric)
{
	size_t n = 0;
	while (isalpha((unsigned char)s[n]) || s[n] == '_' || (metric && s[n] == ':') ||
	       (n > 0 && isdigit((unsigned char)s[n])))
		n++;
	return n;
}

/* Parses `"value"` at *p (escapes \\ \" \n) into a new JSON string. */
static json_t *label_value(const char **p)
{
	const char *s = *p;
	if (*s++ != '"')
		return NULL;
	char *buf = malloc(strlen(s) + 1);
	size_t n = 0;
	for (; buf != NULL && *s != '"'; s++) {
		if (*s == '\0' || *s == '\n')
			break;
		if (*s == '\\' && (s[1] == '\\' || s[1] == '"' || s[1] == 'n'))
			buf[n++] = *++s == 'n' ? '\n' : *s;
		else
			buf[n++] = *s;
	}
	json_t *v = buf != NULL && *s == '"' ? json_stringn(buf, n) : NULL;
	free(buf);
	*p = s + 1;
	return v;
}

/* Parses `{a="x",b="y"}` at *p (may be absent) into a new object. */
static json_t *labels(const char **p)
{
	json_t *obj = json_object();
	if (**p != '{')
		return obj;
	const char *s = *p + 1;
	while (obj != NULL && *s != '}') {
		size_t n = name_len(s, false);
		char name[256];
		json_t *v = NULL;
		if (n > 0 && n < sizeof(name) && s[n] == '=') {
			snprintf(name, sizeof(name), "%.*s", (int)n, s);
			s += n + 1;
			v = label_value(&s);
		}
		if (v == NULL || json_object_set_new(obj, name, v) != 0) {
			json_decref(obj);
			return NULL;
		}
		if (*s == ',')
			s++;
	}
	*p = s + 1;
	return obj;
}

static json_t *number(const char *tok, size_t len)
{
	char buf[64];
	if (len == 0 || len >= sizeof(buf))
		return NULL;
	memcpy(buf, tok, len);
	buf[len] = '\0';
	char *end = NULL;
	double v = strtod(buf, &end);
	if (end != buf + len)
		return NULL;
	if (!isfinite(v))
		return json_string(buf);
	if (strcspn(buf, ".eE") == len && fabs(v) < 9007199254740992.0)
		return json_integer((json_int_t)v);
	return json_real(v);
}

/* One sample line into {"name", "labels", "value"}; NULL if malformed. */
static json_t *sample(const char *line)
{
	size_t n = name_len(line, true);
	if (n == 0)
		return NULL;
	const char *s = line + n;
	json_t *lab = labels(&s);
	if (lab == NULL || (*s != ' ' && *s != '\t')) {
		json_decref(lab);
		return NULL;
	}
	s += strspn(s, " \t");
	json_t *val = number(s, strcspn(s, " \t"));
	if (val == NULL) {
		json_decref(lab);
		return NULL;
	}
	return json_pack("{s:s%, s:o, s:o}", "name", line, n, "labels", lab, "value", val);
}

static int to_json(const struct stats_opts *o, const char *text)
{
	json_t *arr = json_array();
	char *copy = strdup(text);
	if (arr == NULL || copy == NULL) {
		json_decref(arr);
		free(copy);
		return cli_fail(CLI_EXIT_FAIL, SUB, "out of memory");
	}
	int lineno = 0;
	char *save = NULL;
	for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		lineno++;
		line[strcspn(line, "\r")] = '\0';
		if (*line == '#' || line[strspn(line, " \t")] == '\0')
			continue;
		json_t *smp = sample(line);
		if (smp == NULL) {
			cli_fail(0, SUB, "malformed metrics line %d from %s: %.200s", lineno,
			         o->socket, line);
			json_decref(arr);
			free(copy);
			return CLI_EXIT_FAIL;
		}
		json_array_append_new(arr, smp);
	}
	free(copy);
	return cli_print_json(SUB, arr);
}

int cli_stats(int argc, char **argv)
{
	struct stats_opts o = {0};
	int rc = parse(argc, argv, &o);
	if (rc >= 0)
		return rc;
	char *text = NULL;
	rc = cli_admin_query(SUB, o.socket, "metrics\n", &text);
	if (rc != CLI_EXIT_OK)
		return rc;
	rc = cli_admin_refused(SUB, text);
	if (rc < 0 && o.json)
		rc = to_json(&o, text);
	else if (rc < 0)
		rc = fputs(text, stdout) >= 0 && fflush(stdout) == 0
		         ? CLI_EXIT_OK
		         : cli_fail(CLI_EXIT_FAIL, SUB, "cannot write to stdout");
	free(text);
	return rc;
}
