/*
 * test_kreqd.c — kreqd as operators run it: a process with options, a
 * configuration file, a key file, plugins, signals, an exit status, an
 * HTTP endpoint and an admin socket.
 *
 * Why the real binary: exit codes, what reaches stderr, signal handling,
 * dlopen() of plugins and the endpoints only mean something for the
 * process. Every run is bounded by a deadline (then killed and failed).
 * Configuration errors never reach Kafka; the unreachable-Kafka-broker tests
 * point kreqd at 127.0.0.1:1; the serving test hosts librdkafka's mock
 * cluster in this process and runs kreqd in light mode against it, which
 * proves the built-ins, plugins, endpoints and signals, not the
 * transactional guarantees (tests/worker/ does that on a real Kafka broker).
 * Each test works in its own temporary directory and removes it.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "kreq/client.h"
#include "kreq/error.h"
#include "kreq/keyring.h"
#include "kreq/plugin.h"
#include "proc.h"
#include "testsupport.h"

#define RUN_TIMEOUT_MS 30000

/* ---- running kreqd ------------------------------------------------------------- */

/* Runs kreqd with the NULL-terminated arguments to its end. */
__attribute__((sentinel)) static void kreqd(kreq_test_result_t *r, ...)
{
	const char *args[KREQ_TEST_MAX_ARGS + 1];
	size_t n = 0;
	va_list ap;
	va_start(ap, r);
	for (const char *a; (a = va_arg(ap, const char *)) != NULL;) {
		ck_assert(n < KREQ_TEST_MAX_ARGS);
		args[n++] = a;
	}
	va_end(ap);
	args[n] = NULL;
	kreq_test_run(r, KREQD_PATH, args, NULL, RUN_TIMEOUT_MS);
}

static const char *tmpdir;

/* ---- files ----------------------------------------------------------------------- */

static void write_file(const char *path, const char *text, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	ck_assert_msg(fd >= 0, "%s: %s", path, strerror(errno));
	ck_assert(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
	ck_assert_int_eq(fchmod(fd, mode), 0);
	close(fd);
}

/* Whole file as a string (caller frees); NULL if it does not exist. */
static char *read_file(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return NULL;
	char *text = calloc(1, 1 << 16);
	ck_assert_ptr_nonnull(text);
	size_t n = fread(text, 1, (1 << 16) - 1, f);
	text[n] = '\0';
	fclose(f);
	return text;
}

static size_t count_lines(const char *text)
{
	size_t n = 0;
	for (; text && *text; text++)
		n += *text == '\n';
	return n;
}

/* An HMAC signing key file "k.key" (key id k1) in the test directory. */
static void make_key(void)
{
	char err[256];
	ck_assert_int_eq(kreq_keyring_generate_file(kreq_test_tmp("k.key"), NULL, "k1",
	                                            KREQ_KEY_HMAC_SHA256, err, sizeof(err)),
	                 KREQ_OK);
}

/* kd.conf: service kdtest, the key, an unreachable Kafka, echo, plus extra
 * lines. Returns its path (valid until the next call). */
static const char *make_conf(const char *extra)
{
	char text[4096];
	snprintf(text, sizeof(text),
	         "# kreqd test configuration\n"
	         "service = kdtest\n"
	         "keyring.file = %s\n"
	         "kafka.bootstrap.servers = 127.0.0.1:1\n"
	         "\n"
	         "kreqd.builtins = echo\n"
	         "%s",
	         kreq_test_tmp("k.key"), extra ? extra : "");
	static char path[128]; /* not one of kreq_test_tmp()'s rotating buffers */
	snprintf(path, sizeof(path), "%s", kreq_test_tmp("kd.conf"));
	write_file(path, text, 0644);
	return path;
}

/* ---- help and usage ---------------------------------------------------------------- */

START_TEST(test_help)
{
	kreq_test_result_t r;
	kreqd(&r, "--help", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "usage: kreqd --config FILE");
	ck_assert_ptr_nonnull(strstr(r.out, "Exit status:"));
	ck_assert_ptr_nonnull(strstr(r.out, "0  stopped cleanly"));
	ck_assert_ptr_nonnull(strstr(r.out, "1  runtime error"));
	ck_assert_ptr_nonnull(strstr(r.out, "2  usage or configuration error"));
	ck_assert_str_eq(r.err, "");
	kreq_test_result_free(&r);
	kreqd(&r, "--version", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "kreqd 0.1.0");
	kreq_test_result_free(&r);
}
END_TEST

START_TEST(test_usage_errors)
{
	static const char *const cases[][4] = {
	    {NULL, NULL, NULL, "--config is required"},
	    {"--bogus", NULL, NULL, "unknown option '--bogus'"},
	    {"--config", NULL, NULL, "option '--config' needs a value"},
	    {"--config", "x.conf", "extra", "unexpected argument 'extra'"},
	    {"--config", "x.conf", "--log-format=xml", "--log-format must be text or json"},
	    {"--config", "x.conf", "--set=novalue", "--set needs NAME=VALUE, not 'novalue'"},
	    {"--config", "x.conf", "--set==v", "--set needs NAME=VALUE"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		kreq_test_result_t r;
		kreqd(&r, cases[i][0], cases[i][1], cases[i][2], NULL);
		KREQ_TEST_ASSERT_RUN(&r, 2, err, cases[i][3]);
		ck_assert_ptr_nonnull(strstr(r.err, "Try 'kreqd --help'."));
		ck_assert_str_eq(r.out, "");
		kreq_test_result_free(&r);
	}
}
END_TEST

/* ---- configuration ---------------------------------------------------------------- */

/* Runs `kreqd --check --config conf [--set set]` and expects exit 2 with
 * want on stderr. */
static void expect_config_error(const char *conf, const char *set, const char *want)
{
	kreq_test_result_t r;
	if (set)
		kreqd(&r, "--check", "--config", conf, "--set", set, NULL);
	else
		kreqd(&r, "--check", "--config", conf, NULL);
	KREQ_TEST_ASSERT_RUN(&r, 2, err, want);
	ck_assert_ptr_nonnull(strstr(r.err, "level=err"));
	kreq_test_result_free(&r);
}

START_TEST(test_config_errors)
{
	tmpdir = kreq_test_tmp_create("kreqd-test");
	make_key();
	expect_config_error(kreq_test_tmp("none.conf"), NULL, kreq_test_tmp("none.conf"));
	write_file(kreq_test_tmp("bad.conf"), "service = kdtest\nno.such.property = 1\n", 0644);
	expect_config_error(kreq_test_tmp("bad.conf"), NULL, "bad.conf:2: no such property");
	expect_config_error(kreq_test_tmp("bad.conf"), NULL, "no.such.property");
	const char *conf = make_conf(NULL);
	expect_config_error(conf, "worker.handler.threads=0", "worker.handler.threads");
	expect_config_error(conf, "no.such=1", "--set: ");
	expect_config_error(conf, "service=", "service is not set");
	expect_config_error(conf, "keyring.file=", "keyring.file is not set");
	expect_config_error(conf, "service=bad service", "service must be");
	expect_config_error(conf, "kreqd.builtins=echo,frob", "unknown built-in \\\"frob\\\"");
	expect_config_error(conf, "kreqd.builtins=echo,echo", "\\\"echo\\\" is listed twice");
	expect_config_error(conf, "kreqd.builtins=record", "kreqd.record.file is not set");
	expect_config_error(conf, "kreqd.builtins=", "nothing to serve");
	expect_config_error(conf, "worker.mode=fast", "worker.mode must be");
	write_file(kreq_test_tmp("nobs.conf"), "service = kdtest\nkreqd.builtins = echo\n", 0644);
	char set[256];
	snprintf(set, sizeof(set), "keyring.file=%s", kreq_test_tmp("k.key"));
	expect_config_error(kreq_test_tmp("nobs.conf"), set, "kafka.bootstrap.servers is not set");
	kreq_test_tmp_remove();
}
END_TEST

START_TEST(test_keyfile_errors)
{
	tmpdir = kreq_test_tmp_create("kreqd-test");
	make_key();
	const char *conf = make_conf(NULL);
	char set[256];
	snprintf(set, sizeof(set), "keyring.file=%s", kreq_test_tmp("missing.key"));
	expect_config_error(conf, set, kreq_test_tmp("missing.key"));
	snprintf(set, sizeof(set), "keyring.file=%s", tmpdir);
	expect_config_error(conf, set, "not a regular file");
	ck_assert_int_eq(chmod(kreq_test_tmp("k.key"), 0644), 0);
	expect_config_error(conf, NULL, "EKEYPERM");
	expect_config_error(conf, NULL, kreq_test_tmp("k.key"));
	ck_assert_int_eq(chmod(kreq_test_tmp("k.key"), 0600), 0);
	if (geteuid() != 0) { /* root reads any file whatever its mode */
		ck_assert_int_eq(chmod(kreq_test_tmp("k.key"), 0), 0);
		expect_config_error(conf, NULL, "Permission denied");
		ck_assert_int_eq(chmod(kreq_test_tmp("k.key"), 0600), 0);
	}
	expect_config_error(conf, "signing.key.id=k9", "signing.key.id k9: no such key");
	char err[256];
	ck_assert_int_eq(kreq_keyring_generate_file(kreq_test_tmp("e.key"), kreq_test_tmp("e.pub"),
	                                            "e1", KREQ_KEY_ED25519, err, sizeof(err)),
	                 KREQ_OK);
	snprintf(set, sizeof(set), "keyring.file=%s", kreq_test_tmp("e.pub"));
	expect_config_error(conf, set, "names no signing key");
	kreq_test_tmp_remove();
}
END_TEST

/* ---- plugins -------------------------------------------------------------------------- */

START_TEST(test_plugins_refused)
{
	tmpdir = kreq_test_tmp_create("kreqd-test");
	make_key();
	const char *conf = make_conf(NULL);
	ck_assert_int_eq(setenv("KDTEST_PLUGIN_LOG", kreq_test_tmp("plugin.log"), 1), 0);
	static const char *const cases[][3] = {
	    {"/nonexistent/kdtest.so", "cannot load", NULL},
	    {KDTEST_PLUGIN_BAD_ABI, "plugin ABI version 99", "supports version 1"},
	    {KDTEST_PLUGIN_NO_SYMBOL, "no symbol kreq_plugin_v1", NULL},
	    {KDTEST_PLUGIN_INIT_FAIL, "plugin kdtest", "init failed: the test plugin refuses"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char set[512];
		snprintf(set, sizeof(set), "kreqd.plugins=%s", cases[i][0]);
		kreq_test_result_t r;
		kreqd(&r, "--check", "--config", conf, "--set", set, NULL);
		KREQ_TEST_ASSERT_RUN(&r, 2, err, cases[i][0]);
		ck_assert_msg(strstr(r.err, cases[i][1]), "stderr lacks %s: %s", cases[i][1],
		              r.err);
		ck_assert_msg(!cases[i][2] || strstr(r.err, cases[i][2]), "stderr lacks %s: %s",
		              cases[i][2], r.err);
		kreq_test_result_free(&r);
	}
	char *log =
	    read_file(kreq_test_tmp("plugin.log")); /* a failed init is not followed by fini */
	ck_assert_str_eq(log ? log : "(none)", "init\n");
	free(log);
	kreq_test_tmp_remove();
}
END_TEST

START_TEST(test_check_lists_methods)
{
	tmpdir = kreq_test_tmp_create("kreqd-test");
	make_key();
	char extra[1024];
	snprintf(extra, sizeof(extra),
	         "kreqd.builtins = echo, sleep,fail , record\n"
	         "kreqd.record.file = %s\n"
	         "kreqd.plugins = %s\n"
	         "kreqd.metrics.port = 9464\n"
	         "client.id = kdtest-1\n",
	         kreq_test_tmp("record.log"), KDTEST_PLUGIN_GOOD);
	const char *conf = make_conf(extra);
	ck_assert_int_eq(setenv("KDTEST_PLUGIN_LOG", kreq_test_tmp("plugin.log"), 1), 0);
	kreq_test_result_t r;
	kreqd(&r, "--config", conf, "--check", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "configuration, key file and plugins are valid");
	ck_assert_int_lt(r.ms, 10000); /* --check never waits for Kafka */
	static const char *const want[] = {
	    "requests topic   kreq.kdtest.requests",
	    "results topic    kreq.kdtest.results",
	    "transactional.id kreq.kdtest.kdtest-1",
	    "signing key k1",
	    "methods          8",
	    "kdtest.echo",
	    "kdtest.sleep",
	    "kdtest.fail",
	    "kdtest.record",
	    "kdtest.hello",
	    "plugin kdtest (" KDTEST_PLUGIN_GOOD ")",
	    "kdtest.slow",
	    "kdtest.twice",
	    "kdtest.crash",
	    "http://127.0.0.1:9464/metrics",
	    "admin socket     disabled",
	};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		ck_assert_msg(strstr(r.out, want[i]), "--check output lacks %s:\n%s", want[i],
		              r.out);
	kreq_test_result_free(&r);
	char *log = read_file(kreq_test_tmp("plugin.log"));
	ck_assert_str_eq(log ? log : "(none)", "init\nfini\n");
	free(log);
	ck_assert_msg(access(kreq_test_tmp("record.log"), F_OK) != 0,
	              "--check created the record file");
	/* the example plugin, which serves service greeter */
	snprintf(extra, sizeof(extra), "kreqd.builtins =\nkreqd.plugins = %s\n",
	         KREQ_EXAMPLE_PLUGIN);
	conf = make_conf(extra);
	kreqd(&r, "--config", conf, "--check", "--set", "service=greeter", NULL);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "greeter.hello");
	ck_assert_ptr_nonnull(strstr(r.out, "plugin greeter"));
	kreq_test_result_free(&r);
	kreqd(&r, "--config", conf, "--check", NULL); /* its method is not of service kdtest */
	KREQ_TEST_ASSERT_RUN(&r, 2, err, "is service = greeter?");
	kreq_test_result_free(&r);
	kreq_test_tmp_remove();
}
END_TEST

/* ---- logs ------------------------------------------------------------------------------ */

START_TEST(test_log_formats)
{
	tmpdir = kreq_test_tmp_create("kreqd-test");
	make_key();
	const char *conf = make_conf(NULL);
	kreq_test_result_t r;
	kreqd(&r, "--config", conf, "--check", "--log-format", "json", "--set",
	      "kreqd.builtins=a\"b\\c", NULL);
	ck_assert_int_eq(r.status, 2);
	ck_assert_msg(count_lines(r.err) >= 1, "no log line: %s", r.err);
	for (char *line = r.err, *nl; (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
		*nl = '\0';
		json_error_t e;
		json_t *j = json_loads(line, 0, &e);
		ck_assert_msg(j != NULL, "not JSON (%s): %s", e.text, line);
		const char *ts = json_string_value(json_object_get(j, "ts"));
		ck_assert_msg(ts && strlen(ts) == 24 && ts[10] == 'T' && ts[19] == '.' &&
		                  ts[23] == 'Z',
		              "ts: %s", line);
		ck_assert_str_eq(json_string_value(json_object_get(j, "level")), "err");
		ck_assert_str_eq(json_string_value(json_object_get(j, "fac")), "kreqd");
		ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(j, "msg")),
		                             "unknown built-in \"a\"b\\c\""));
		json_decref(j);
	}
	kreq_test_result_free(&r);
	kreqd(&r, "--config", conf, "--check", "--set", "kreqd.builtins=a\"b", NULL);
	ck_assert_int_eq(r.status, 2);
	ck_assert_msg(!strncmp(r.err, "ts=", 3) && strstr(r.err, "Z level=err fac=kreqd msg=\"") &&
	                  strstr(r.err, "unknown built-in \\\"a\\\"b\\\"") &&
	                  count_lines(r.err) == 1 && r.err[strlen(r.err) - 2] == '"',
	              "text log line: %s", r.err);
	kreq_test_result_free(&r);
	kreq_test_tmp_remove();
}
END_TEST

/* ---- endpoints ---------------------------------------------------------------------------- */

static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(sa);
	ck_assert(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	          getsockname(fd, (struct sockaddr *)&sa, &len) == 0);
	close(fd);
	return ntohs(sa.sin_port);
}

/* One HTTP request to 127.0.0.1:port; *status gets the status code (0 if
 * nothing answered); returns the whole response (caller frees) or NULL. */
static char *http(int port, const char *method, const char *path, int *status)
{
	*status = 0;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET,
	                         .sin_port = htons((uint16_t)port),
	                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	ck_assert(fd >= 0);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		close(fd);
		return NULL;
	}
	char req[256];
	int n = snprintf(req, sizeof(req),
	                 "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", method,
	                 path);
	ck_assert(write(fd, req, (size_t)n) == n);
	char *text = kreq_test_read_all(fd);
	sscanf(text, "HTTP/1.%*d %d", status);
	return text;
}

/* Sends cmd to the admin socket at path; the answer (caller frees) or NULL
 * if nothing listens there. */
static char *admin(const char *path, const char *cmd)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert(fd >= 0);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		close(fd);
		return NULL;
	}
	ck_assert(write(fd, cmd, strlen(cmd)) == (ssize_t)strlen(cmd));
	return kreq_test_read_all(fd);
}

/* Waits (pumping kreqd's output) until the admin socket answers cmd with
 * text containing want; returns the answer. */
static char *await_admin(kreq_test_proc_t *p, const char *path, const char *cmd, const char *want)
{
	int64_t deadline = kreq_test_now_ms() + 30000;
	for (;;) {
		char *a = admin(path, cmd);
		if (a && strstr(a, want))
			return a;
		if (kreq_test_now_ms() > deadline)
			ck_abort_msg("admin %s never answered with %s (last: %s); stderr: %s", cmd,
			             want, a ? a : "(no answer)", (p->err.data ? p->err.data : ""));
		free(a);
		kreq_test_proc_pump(p, 50);
	}
}

static void await_stderr(kreq_test_proc_t *p, const char *want, int timeout_ms)
{
	int64_t deadline = kreq_test_now_ms() + timeout_ms;
	while (!strstr((p->err.data ? p->err.data : ""), want)) {
		if (kreq_test_now_ms() > deadline)
			ck_abort_msg("kreqd never logged \"%s\"; stderr: %s", want,
			             (p->err.data ? p->err.data : ""));
		kreq_test_proc_pump(p, 50);
	}
}

START_TEST(test_admin_socket_refuses_a_file)
{
	tmpdir = kreq_test_tmp_create("kreqd-test");
	make_key();
	write_file(kreq_test_tmp("adm"), "precious\n", 0600);
	char set[256];
	snprintf(set, sizeof(set), "admin.socket=%s", kreq_test_tmp("adm"));
	kreq_test_result_t r;
	kreqd(&r, "--config", make_conf(NULL), "--set", set, NULL);
	KREQ_TEST_ASSERT_RUN(&r, 2, err, "exists and is not a socket");
	kreq_test_result_free(&r);
	char *text = read_file(kreq_test_tmp("adm"));
	ck_assert_str_eq(text, "precious\n");
	free(text);
	kreq_test_tmp_remove();
}
END_TEST

/* kreqd pointed at a closed port: the endpoints answer while it tries, then
 * it exits 1 naming Kafka, within a bounded time. */
START_TEST(test_unreachable_kafka)
{
	tmpdir = kreq_test_tmp_create("kreqd-test");
	make_key();
	int port = free_port();
	char extra[512];
	snprintf(extra, sizeof(extra), "admin.socket = %s\nkreqd.metrics.port = %d\n",
	         kreq_test_tmp("adm"), port);
	const char *args[] = {"--config", make_conf(extra), NULL};
	kreq_test_proc_t p;
	kreq_test_proc_start(&p, KREQD_PATH, args, NULL);
	char *a = await_admin(&p, kreq_test_tmp("adm"), "inprogress\n", "[]");
	ck_assert_str_eq(a, "[]\n");
	free(a);
	struct stat st;
	ck_assert_int_eq(stat(kreq_test_tmp("adm"), &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0600);
	a = await_admin(&p, kreq_test_tmp("adm"), "metrics\n", "kreq_worker_in_flight");
	free(a);
	a = await_admin(&p, kreq_test_tmp("adm"), "frobnicate\n", "{\"error\":\"unknown command");
	free(a);
	int status;
	char *h = http(port, "GET", "/metrics", &status);
	ck_assert_msg(status == 200 && strstr(h, "text/plain; version=0.0.4") &&
	                  strstr(h, "kreq_worker_in_flight{service=\"kdtest\""),
	              "GET /metrics: %s", h ? h : "(no answer)");
	free(h);
	h = http(port, "GET", "/nope", &status);
	ck_assert_int_eq(status, 404);
	free(h);
	h = http(port, "POST", "/metrics", &status);
	ck_assert_int_eq(status, 405);
	free(h);
	kreq_test_result_t r;
	kreq_test_proc_finish(&p, 60000, &r); /* transactional start: init_transactions times out */
	ck_assert_msg(r.status == 1 && strstr(r.err, "serving failed") && strstr(r.err, "Kafka"),
	              "exit %d; stderr: %s", r.status, r.err);
	kreq_test_result_free(&r);
	ck_assert_msg(access(kreq_test_tmp("adm"), F_OK) != 0, "admin socket left behind");
	/* light mode: the topic lookups ask again until worker.start.timeout.ms */
	kreqd(&r, "--config", kreq_test_tmp("kd.conf"), "--set", "worker.mode=light", "--set",
	      "kreqd.metrics.port=0", "--set", "worker.start.timeout.ms=3000", NULL);
	ck_assert_msg(r.status == 1 &&
	                  strstr(r.err, "Kafka did not answer a metadata request for topic") &&
	                  r.ms >= 3000 && r.ms < 20000,
	              "exit %d after %lld ms; stderr: %s", r.status, (long long)r.ms, r.err);
	kreq_test_result_free(&r);
	kreq_test_tmp_remove();
}
END_TEST

/* ---- serving, through the mock cluster ---------------------------------------------------- */

static rd_kafka_t *host;

static const char *mock_start(void)
{
	char err[256];
	rd_kafka_conf_t *rc = rd_kafka_conf_new();
	kreq_test_conf_set(rc, "test.mock.num.brokers", "1");
	kreq_test_conf_set(rc, "log_level", "3");
	host = rd_kafka_new(RD_KAFKA_PRODUCER, rc, err, sizeof(err));
	ck_assert_msg(host != NULL, "%s", err);
	rd_kafka_mock_cluster_t *mc = rd_kafka_handle_mock_cluster(host);
	ck_assert_ptr_nonnull(mc);
	ck_assert_int_eq(rd_kafka_mock_topic_create(mc, "kreq.kdtest.requests", 2, 1), 0);
	ck_assert_int_eq(rd_kafka_mock_topic_create(mc, "kreq.kdtest.results", 2, 1), 0);
	/* no CreateTopics in the mock cluster: client_new()'s reply topic */
	ck_assert_int_eq(rd_kafka_mock_topic_create(mc, "kreq.reply.kdtest-client", 1, 1), 0);
	return rd_kafka_mock_cluster_bootstraps(mc);
}

static kreq_client_t *client_new(const char *bootstrap)
{
	char err[512];
	kreq_conf_t *conf = kreq_conf_new();
	ck_assert_int_eq(
	    kreq_conf_set(conf, "kafka.bootstrap.servers", bootstrap, err, sizeof(err)), KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(conf, "client.id", "kdtest-client", err, sizeof(err)),
	                 KREQ_OK);
	kreq_keyring_t *kr = kreq_keyring_new();
	ck_assert_int_eq(kreq_keyring_load_file(kr, kreq_test_tmp("k.key"), err, sizeof(err)),
	                 KREQ_OK);
	kreq_client_t *c = kreq_client_new(conf, kr, err, sizeof(err));
	ck_assert_msg(c != NULL, "kreq_client_new: %s", err);
	kreq_keyring_release(kr);
	kreq_conf_destroy(conf);
	return c;
}

/* Calls method and checks the outcome: status and a fragment of the
 * payload (want_payload) or of the error text (want_error). */
static void expect_call(kreq_client_t *c, const char *method, const char *payload, const char *idem,
                        int32_t want_status, const char *want_payload, const char *want_error)
{
	kreq_call_opts_t *o = kreq_call_opts_new();
	kreq_call_opts_set_timeout(o, 15000);
	if (idem)
		kreq_call_opts_set_idempotency_key(o, idem, strlen(idem));
	kreq_future_t *f = NULL;
	int err = kreq_client_call_wait(c, method, payload, strlen(payload), o, &f);
	kreq_call_opts_destroy(o);
	ck_assert_msg(err == KREQ_OK, "%s(%s): %s: %s", method, payload, kreq_err_name(err),
	              f ? kreq_future_errstr(f) : "");
	size_t len;
	const char *p = kreq_future_payload(f, &len);
	char got[256] = "";
	snprintf(got, sizeof(got), "%.*s", (int)len, p ? p : "");
	ck_assert_msg(kreq_future_status(f) == want_status, "%s(%s): status %d, want %d (%s)",
	              method, payload, kreq_future_status(f), want_status, kreq_future_errstr(f));
	ck_assert_msg(!want_payload || !strcmp(got, want_payload), "%s(%s): payload \"%s\"", method,
	              payload, got);
	ck_assert_msg(!want_error || strstr(kreq_future_errstr(f), want_error),
	              "%s(%s): error \"%s\"", method, payload, kreq_future_errstr(f));
	kreq_future_release(f);
}

static void check_builtins(kreq_client_t *c)
{
	expect_call(c, "kdtest.echo", "hi", NULL, 0, "hi", NULL);
	expect_call(c, "kdtest.sleep", "50", NULL, 0, "50", NULL);
	expect_call(c, "kdtest.sleep", "-1", NULL, 400, "", "decimal number of milliseconds");
	expect_call(c, "kdtest.sleep", "3600001", NULL, 400, "", "0..3600000");
	expect_call(c, "kdtest.fail", "", NULL, 500, "", "failed on purpose");
	expect_call(c, "kdtest.fail", "503", NULL, 503, "", "failed on purpose");
	expect_call(c, "kdtest.fail", "99", NULL, 400, "", "decimal status 100..");
	expect_call(c, "kdtest.fail", "abc", NULL, 400, "", "decimal status 100..");
	expect_call(c, "kdtest.record", "one", "idem-1", 0, "one", NULL);
	expect_call(c, "kdtest.record", "sleep:20 two", "idem-2", 0, "sleep:20 two", NULL);
	expect_call(c, "kdtest.record", "sleep:x", "idem-3", 400, "", "after it");
	expect_call(c, "kdtest.hello", "", NULL, 0, "hello from a plugin", NULL);
	expect_call(c, "kdtest.slow", "", NULL, 0, "done", NULL);
	char *rec = read_file(kreq_test_tmp("record.log"));
	ck_assert_str_eq(rec ? rec : "(none)", "k1 6964656d2d31 kdtest.record\n"
	                                       "k1 6964656d2d32 kdtest.record\n"
	                                       "k1 6964656d2d33 kdtest.record\n");
	free(rec);
}

/* The sleep built-in stops at the request's deadline: the caller's retry
 * (same idempotency key) is answered at once with the stored status 2
 * instead of joining a sleep that went on for 30 s. */
static void check_sleep_deadline(kreq_client_t *c)
{
	kreq_call_opts_t *o = kreq_call_opts_new();
	kreq_call_opts_set_timeout(o, 1000);
	kreq_call_opts_set_idempotency_key(o, "sleepy", 6);
	kreq_future_t *f = NULL;
	int err = kreq_client_call_wait(c, "kdtest.sleep", "30000", 5, o, &f);
	ck_assert_msg(err == KREQ_ETIMEDOUT, "first call: %s", kreq_err_name(err));
	kreq_future_release(f);
	kreq_call_opts_set_timeout(o, 15000);
	int64_t t0 = kreq_test_now_ms();
	err = kreq_client_call_wait(c, "kdtest.sleep", "30000", 5, o, &f);
	kreq_call_opts_destroy(o);
	ck_assert_msg(err == KREQ_EREJECTED && kreq_future_status(f) == KREQ_STATUS_DEADLINE &&
	                  strstr(kreq_future_errstr(f), "deadline reached"),
	              "retry: %s, status %d: %s", kreq_err_name(err), kreq_future_status(f),
	              kreq_future_errstr(f));
	ck_assert_int_lt(kreq_test_now_ms() - t0, 10000);
	kreq_future_release(f);
}

/* A plugin handler replying twice: the caller gets the first reply, the
 * second kreq_request_reply() returns KREQ_ESTATE (-24), nothing crashes. */
static bool twice_logged(void *arg)
{
	(void)arg;
	char *log = read_file(kreq_test_tmp("plugin.log"));
	bool found = log && strstr(log, "twice: second reply -24\n");
	free(log);
	return found;
}

static void check_reply_twice(kreq_client_t *c)
{
	expect_call(c, "kdtest.twice", "", "twice-1", 0, "first", NULL);
	ck_assert_msg(kreq_test_wait_until(twice_logged, NULL, 10000),
	              "the second reply was not refused with KREQ_ESTATE");
	expect_call(c, "kdtest.echo", "after", NULL, 0, "after", NULL);
}

/* A running sleep is cancelled by the caller: the handler notices and the
 * request leaves the in-progress list long before its 30 s. */
static void check_cancel(kreq_test_proc_t *p, kreq_client_t *c)
{
	kreq_future_t *f = NULL;
	ck_assert_int_eq(kreq_client_call(c, "kdtest.sleep", "30000", 5, NULL, &f), KREQ_OK);
	char *a = await_admin(p, kreq_test_tmp("adm"), "inprogress\n", "\"state\":\"running\"");
	ck_assert_ptr_nonnull(strstr(a, "\"method\":\"kdtest.sleep\""));
	free(a);
	/* kreq pending --socket reads a worker's socket too (asks inprogress) */
	kreq_test_result_t r;
	const char *args[] = {"pending", "--socket", kreq_test_tmp("adm"), NULL};
	kreq_test_run(&r, KREQ_CLI_PATH, args, NULL, RUN_TIMEOUT_MS);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "1 in progress, 1 shown");
	ck_assert_msg(strstr(r.out, "kdtest.sleep") && strstr(r.out, "running") &&
	                  strstr(r.out, "PART:OFFSET"),
	              "%s", r.out);
	kreq_test_result_free(&r);
	const char *jargs[] = {"pending", "--socket", kreq_test_tmp("adm"), "--json", NULL};
	kreq_test_run(&r, KREQ_CLI_PATH, jargs, NULL, RUN_TIMEOUT_MS);
	KREQ_TEST_ASSERT_RUN(&r, 0, out, "\"view\":\"worker\"");
	ck_assert_ptr_nonnull(strstr(r.out, "\"method\":\"kdtest.sleep\""));
	kreq_test_result_free(&r);
	ck_assert_int_eq(kreq_future_cancel(f), KREQ_OK);
	kreq_future_release(f);
	int64_t t0 = kreq_test_now_ms();
	a = await_admin(p, kreq_test_tmp("adm"), "inprogress\n", "[]");
	free(a);
	ck_assert_int_lt(kreq_test_now_ms() - t0, 10000);
}

/* SIGHUP reloads the key file; an insecure one is refused and the old keys
 * keep serving. */
static void check_reload(kreq_test_proc_t *p, kreq_client_t *c)
{
	kill(p->pid, SIGHUP);
	await_stderr(p, "SIGHUP: keys reloaded from", 10000);
	ck_assert_int_eq(chmod(kreq_test_tmp("k.key"), 0644), 0);
	kill(p->pid, SIGHUP);
	await_stderr(p, "SIGHUP: keys not reloaded, the previous keys stay in use", 10000);
	ck_assert_int_eq(chmod(kreq_test_tmp("k.key"), 0600), 0);
	expect_call(c, "kdtest.echo", "still", NULL, 0, "still", NULL);
}

/* SIGTERM while a request runs: /healthz turns 503 "stopping", the request
 * finishes within the grace period and is answered, kreqd exits 0. */
static void check_graceful_stop(kreq_test_proc_t *p, kreq_client_t *c, int port)
{
	kreq_future_t *f = NULL;
	ck_assert_int_eq(kreq_client_call(c, "kdtest.sleep", "1500", 4, NULL, &f), KREQ_OK);
	free(await_admin(p, kreq_test_tmp("adm"), "inprogress\n", "\"state\":\"running\""));
	kill(p->pid, SIGTERM);
	await_stderr(p, "SIGTERM: stopping", 10000);
	int status;
	char *h = http(port, "GET", "/healthz", &status);
	ck_assert_msg(status == 503 && strstr(h, "stopping"), "/healthz: %s", h ? h : "");
	free(h);
	ck_assert_int_eq(kreq_future_wait(f, 15000), KREQ_OK);
	ck_assert_msg(kreq_future_err(f) == KREQ_OK && kreq_future_status(f) == 0, "%s",
	              kreq_future_errstr(f));
	kreq_future_release(f);
	kreq_test_result_t r;
	kreq_test_proc_finish(p, 30000, &r);
	KREQ_TEST_ASSERT_RUN(&r, 0, err, "msg=\"stopped\"");
	kreq_test_result_free(&r);
}

START_TEST(test_serving)
{
	tmpdir = kreq_test_tmp_create("kreqd-test");
	make_key();
	const char *bs = mock_start();
	int port = free_port();
	char extra[1024];
	snprintf(extra, sizeof(extra),
	         "kafka.bootstrap.servers = %s\n"
	         "worker.mode = light\n"
	         "kreqd.builtins = echo,sleep,fail,record\n"
	         "kreqd.record.file = %s\n"
	         "kreqd.plugins = %s\n"
	         "kreqd.metrics.port = %d\n"
	         "admin.socket = %s\n",
	         bs, kreq_test_tmp("record.log"), KDTEST_PLUGIN_GOOD, port, kreq_test_tmp("adm"));
	ck_assert_int_eq(setenv("KDTEST_PLUGIN_LOG", kreq_test_tmp("plugin.log"), 1), 0);
	const char *args[] = {"--config", make_conf(extra), NULL};
	kreq_test_proc_t p;
	kreq_test_proc_start(&p, KREQD_PATH, args, NULL);
	/* serving once its partitions are assigned */
	free(await_admin(&p, kreq_test_tmp("adm"), "metrics\n",
	                 "kreq_worker_rebalances_total{service=\"kdtest\",worker=\"kreq\"} 1\n"));
	int status;
	char *h = http(port, "GET", "/healthz", &status);
	ck_assert_msg(status == 200 && strstr(h, "\r\n\r\nok\n"), "/healthz: %s", h ? h : "");
	free(h);
	kreq_client_t *c = client_new(bs);
	check_builtins(c);
	h = http(port, "GET", "/metrics", &status);
	ck_assert_msg(status == 200 && strstr(h, "outcome=\"ok\"} "), "/metrics: %s", h ? h : "");
	ck_assert_msg(!strstr(h, "outcome=\"ok\"} 0\n"), "no ok outcome counted: %s", h);
	free(h);
	check_cancel(&p, c);
	check_sleep_deadline(c);
	check_reply_twice(c);
	check_reload(&p, c);
	check_graceful_stop(&p, c, port);
	kreq_client_destroy(c);
	rd_kafka_destroy(host);
	char *log = read_file(kreq_test_tmp("plugin.log"));
	ck_assert_str_eq(log ? log : "(none)", "init\ntwice: second reply -24\nfini\n");
	free(log);
	ck_assert_msg(access(kreq_test_tmp("adm"), F_OK) != 0, "admin socket left behind");
	kreq_test_tmp_remove();
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("kreqd");
	TCase *tc = tcase_create("kreqd");
	tcase_add_test(tc, test_help);
	tcase_add_test(tc, test_usage_errors);
	tcase_add_test(tc, test_config_errors);
	tcase_add_test(tc, test_keyfile_errors);
	tcase_add_test(tc, test_plugins_refused);
	tcase_add_test(tc, test_check_lists_methods);
	tcase_add_test(tc, test_log_formats);
	tcase_add_test(tc, test_admin_socket_refuses_a_file);
	tcase_add_test(tc, test_unreachable_kafka);
	tcase_add_test(tc, test_serving);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return kreq_test_run_suite(suite());
}
