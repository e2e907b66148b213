/*
 * test_cli.c — the `kreq` command line as users run it: a process with
 * arguments, standard streams and an exit status.
 *
 * Why a process and not the subcommand functions: exit codes, what goes to
 * stdout versus stderr, signal handling and librdkafka's threads only mean
 * something for the real binary. Every run is bounded by a deadline (then
 * killed and failed). Kafka is librdkafka's mock cluster hosted in this
 * process (no real broker needed); a responder (tests/kafka/responder.c)
 * answers calls; pending/stats talk to a live client created here with an
 * admin socket. Each test closes and frees everything it creates.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "../kafka/responder.h"
#include "common/internal.h"
#include "kreq/client.h"
#include "kreq/error.h"
#include "proto/envelope.h"
#include "testsupport.h"

#ifndef KREQ_CLI_PATH
#error "KREQ_CLI_PATH must name the kreq binary"
#endif

#define RUN_TIMEOUT_MS 30000
#define MAX_ARGS       40

extern char **environ;

/* ---- running the binary ------------------------------------------------------- */

struct buf {
	char *data;
	size_t len, cap;
};

struct proc {
	pid_t pid;
	int out_fd, err_fd;
	struct buf out, err;
};

struct result {
	int status; /* exit code, or 128 + signal */
	char *out, *err;
};

static void buf_read(struct buf *b, int *fd)
{
	if (b->cap - b->len < 4097) {
		b->cap = b->cap ? b->cap * 2 : 8192;
		b->data = realloc(b->data, b->cap);
		ck_assert_ptr_nonnull(b->data);
	}
	ssize_t n = read(*fd, b->data + b->len, b->cap - b->len - 1);
	if (n > 0)
		b->len += (size_t)n;
	else if (n == 0 || errno != EINTR) {
		close(*fd);
		*fd = -1;
	}
	b->data[b->len] = '\0';
}

static void proc_start(struct proc *p, const char *const *args, const char *stdin_data)
{
	int in[2], out[2], err[2];
	ck_assert(pipe2(in, O_CLOEXEC) == 0 && pipe2(out, O_CLOEXEC) == 0 &&
	          pipe2(err, O_CLOEXEC) == 0);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, in[0], STDIN_FILENO);
	posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
	posix_spawn_file_actions_adddup2(&fa, err[1], STDERR_FILENO);
	const char *argv[MAX_ARGS + 2] = {KREQ_CLI_PATH};
	size_t n = 1;
	for (; args && *args; args++) {
		ck_assert(n < MAX_ARGS);
		argv[n++] = *args;
	}
	argv[n] = NULL;
	int rc = posix_spawn(&p->pid, KREQ_CLI_PATH, &fa, NULL, (char *const *)argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(in[0]);
	close(out[1]);
	close(err[1]);
	ck_assert_msg(rc == 0, "spawn %s: %s", KREQ_CLI_PATH, strerror(rc));
	if (stdin_data)
		ck_assert(write(in[1], stdin_data, strlen(stdin_data)) ==
		          (ssize_t)strlen(stdin_data));
	close(in[1]);
	p->out_fd = out[0];
	p->err_fd = err[0];
	memset(&p->out, 0, sizeof(p->out));
	memset(&p->err, 0, sizeof(p->err));
}

/* Reads what is available within wait_ms; false once both streams closed. */
static bool proc_pump(struct proc *p, int wait_ms)
{
	struct pollfd fds[2] = {{.fd = p->out_fd, .events = POLLIN},
	                        {.fd = p->err_fd, .events = POLLIN}};
	if (p->out_fd < 0 && p->err_fd < 0)
		return false;
	if (poll(fds, 2, wait_ms) > 0) {
		if (fds[0].revents)
			buf_read(&p->out, &p->out_fd);
		if (fds[1].revents)
			buf_read(&p->err, &p->err_fd);
	}
	return true;
}

static void proc_finish(struct proc *p, int timeout_ms, struct result *r)
{
	int64_t deadline = kreq_test_now_ms() + timeout_ms;
	while (proc_pump(p, 100)) {
		if (kreq_test_now_ms() > deadline) {
			kill(p->pid, SIGKILL);
			waitpid(p->pid, NULL, 0);
			ck_abort_msg("kreq did not finish within %d ms; stderr: %s", timeout_ms,
			             p->err.data ? p->err.data : "");
		}
	}
	int st = 0;
	ck_assert_int_eq(waitpid(p->pid, &st, 0), p->pid);
	r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	r->out = p->out.data ? p->out.data : strdup("");
	r->err = p->err.data ? p->err.data : strdup("");
}

static void result_free(struct result *r)
{
	free(r->out);
	free(r->err);
}

/* Runs kreq with the NULL-terminated arguments and stdin_data (NULL: empty). */
__attribute__((sentinel)) static void kreq(struct result *r, const char *stdin_data, ...)
{
	const char *args[MAX_ARGS + 1];
	size_t n = 0;
	va_list ap;
	va_start(ap, stdin_data);
	for (const char *a; (a = va_arg(ap, const char *)) != NULL;) {
		ck_assert(n < MAX_ARGS);
		args[n++] = a;
	}
	va_end(ap);
	args[n] = NULL;
	struct proc p;
	proc_start(&p, args, stdin_data);
	proc_finish(&p, RUN_TIMEOUT_MS, r);
}

#define ASSERT_RUN(r, code, stream, text)                                                          \
	ck_assert_msg((r)->status == (code) && strstr((r)->stream, (text)) != NULL,                \
	              "exit %d (want %d), %s lacks \"%s\"\nstdout: %s\nstderr: %s", (r)->status,   \
	              (code), #stream, (text), (r)->out, (r)->err)

/* ---- fixtures ----------------------------------------------------------------- */

static char tmpdir[64];

static const char *tmp(const char *name)
{
	static char paths[8][128];
	static int next;
	char *p = paths[next++ % 8];
	int n = snprintf(p, sizeof(paths[0]), "%s/%.60s", tmpdir, name);
	ck_assert_msg(n > 0 && (size_t)n < sizeof(paths[0]), "temporary path too long: %s", name);
	return p;
}

static void tmp_create(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/kreq-cli-test-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void tmp_remove(void)
{
	DIR *d = opendir(tmpdir);
	ck_assert_ptr_nonnull(d);
	for (struct dirent *e; (e = readdir(d)) != NULL;)
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			unlink(tmp(e->d_name));
	closedir(d);
	ck_assert_int_eq(rmdir(tmpdir), 0);
}

/* A signing key file in tmpdir, and the keyring loaded from it. */
static kreq_keyring_t *make_key(const char *name)
{
	char err[256];
	ck_assert_int_eq(kreq_keyring_generate_file(tmp(name), NULL, "cli-key",
	                                            KREQ_KEY_HMAC_SHA256, err, sizeof(err)),
	                 KREQ_OK);
	kreq_keyring_t *kr = kreq_keyring_new();
	ck_assert_int_eq(kreq_keyring_load_file(kr, tmp(name), err, sizeof(err)), KREQ_OK);
	return kr;
}

static rd_kafka_t *host;
static rd_kafka_mock_cluster_t *mc;

static const char *mock_start(const char *topic, int partitions)
{
	char err[256];
	rd_kafka_conf_t *rc = rd_kafka_conf_new();
	kreq_test_conf_set(rc, "test.mock.num.brokers", "1");
	kreq_test_conf_set(rc, "log_level", "3");
	host = rd_kafka_new(RD_KAFKA_PRODUCER, rc, err, sizeof(err));
	ck_assert_msg(host != NULL, "%s", err);
	mc = rd_kafka_handle_mock_cluster(host);
	ck_assert_ptr_nonnull(mc);
	ck_assert_int_eq(rd_kafka_mock_topic_create(mc, topic, partitions, 1), 0);
	return rd_kafka_mock_cluster_bootstraps(mc);
}

static void mock_stop(void)
{
	rd_kafka_destroy(host);
	host = NULL;
	mc = NULL;
}

/* ---- help and usage ------------------------------------------------------------- */

static const char *const subs[] = {"keygen", "tail", "call", "pending", "stats", "dev"};

START_TEST(test_help)
{
	struct result r;
	kreq(&r, NULL, "--help", NULL);
	ASSERT_RUN(&r, 0, out, "Exit status:");
	ck_assert_ptr_nonnull(strstr(r.out, "4  verification failure"));
	result_free(&r);
	kreq(&r, NULL, "--version", NULL);
	ASSERT_RUN(&r, 0, out, "kreq ");
	result_free(&r);
	for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
		kreq(&r, NULL, subs[i], "--help", NULL);
		char want[64];
		snprintf(want, sizeof(want), "usage: kreq %s", subs[i]);
		ASSERT_RUN(&r, 0, out, want);
		ck_assert_str_eq(r.err, "");
		result_free(&r);
	}
}
END_TEST

START_TEST(test_usage_errors)
{
	struct result r;
	kreq(&r, NULL, NULL);
	ASSERT_RUN(&r, 2, err, "missing subcommand");
	result_free(&r);
	kreq(&r, NULL, "frobnicate", NULL);
	ASSERT_RUN(&r, 2, err, "unknown subcommand 'frobnicate'");
	result_free(&r);
	for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
		kreq(&r, NULL, subs[i], "--no-such-option", NULL);
		ASSERT_RUN(&r, 2, err, "unknown option '--no-such-option'");
		result_free(&r);
	}
	static const char *const cases[][8] = {
	    {"keygen", "--id", "k", "--out", "/tmp/x", NULL, "required"},
	    {"keygen", "--type", "rsa", "--id", "k", "--out", "/tmp/x", "--type must be"},
	    {"keygen", "--type", "hmac-sha256", "--id", "a b", "--out", "/tmp/x", "invalid key id"},
	    {"tail", "--topic", "t", "--keyfile", "k", NULL, "required"},
	    {"tail", "--count", "many", NULL, "--count needs"},
	    {"call", "--bootstrap", "b", "--keyfile", "k", NULL, "missing METHOD"},
	    {"call", "--bootstrap", "b", "--keyfile", "k", "bad method", NULL, "invalid method"},
	    {"call", "--timeout-ms", "0", NULL, "--timeout-ms needs"},
	    {"pending", NULL, "--socket is required"},
	    {"pending", "--socket", "s", "--sort", "size", NULL, "--sort must be"},
	    {"stats", "--socket", NULL, "needs a value"},
	    {"dev", "--brokers", "0", NULL, "--brokers needs"},
	    {"dev", "--topic", "t:x", NULL, "--topic needs"}};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *const *c = cases[i];
		size_t n = 0;
		while (c[n] != NULL && n < 7)
			n++;
		const char *want = n == 7 ? c[7] : c[n + 1];
		const char *args[8] = {NULL};
		for (size_t k = 0; k < n; k++)
			args[k] = c[k];
		kreq(&r, NULL, args[0], args[1], args[2], args[3], args[4], args[5], args[6], NULL);
		ASSERT_RUN(&r, 2, err, want);
		ck_assert_ptr_nonnull(strstr(r.err, "--help"));
		result_free(&r);
	}
}
END_TEST

/* ---- keygen ------------------------------------------------------------------- */

static int file_mode(const char *path)
{
	struct stat st;
	ck_assert_msg(stat(path, &st) == 0, "%s: %s", path, strerror(errno));
	return (int)(st.st_mode & 0777);
}

START_TEST(test_keygen)
{
	tmp_create();
	struct result r;
	kreq(&r, NULL, "keygen", "--type", "hmac-sha256", "--id", "k1", "--out", tmp("h.key"),
	     NULL);
	ASSERT_RUN(&r, 0, out, tmp("h.key"));
	ck_assert_int_eq(file_mode(tmp("h.key")), 0600);
	result_free(&r);
	kreq(&r, NULL, "keygen", "--type", "hmac-sha256", "--id", "k2", "--out", tmp("h.key"),
	     NULL);
	ASSERT_RUN(&r, 1, err, "refusing to overwrite");
	ck_assert_ptr_nonnull(strstr(r.err, tmp("h.key")));
	result_free(&r);
	kreq(&r, NULL, "keygen", "--type", "ed25519", "--id", "e1", "--out", tmp("e.key"),
	     "--public", tmp("e.pub"), "--json", NULL);
	ck_assert_msg(r.status == 0, "%s", r.err);
	json_t *j = json_loads(r.out, 0, NULL);
	ck_assert_ptr_nonnull(j);
	ck_assert_str_eq(json_string_value(json_object_get(j, "public_path")), tmp("e.pub"));
	json_decref(j);
	result_free(&r);
	ck_assert_int_eq(file_mode(tmp("e.key")), 0600);
	ck_assert_int_eq(file_mode(tmp("e.pub")), 0644);
	kreq_keyring_t *kr = kreq_keyring_new();
	ck_assert_int_eq(kreq_keyring_load_file(kr, tmp("e.key"), NULL, 0), KREQ_OK);
	ck_assert_str_eq(kreq_keyring_signing_key(kr), "e1");
	kreq_keyring_release(kr);
	kr = kreq_keyring_new(); /* the public half verifies only */
	ck_assert_int_eq(kreq_keyring_load_file(kr, tmp("e.pub"), NULL, 0), KREQ_OK);
	ck_assert_int_eq(kreq_keyring_key_type(kr, "e1"), KREQ_KEY_ED25519_PUBLIC);
	kreq_keyring_release(kr);
	tmp_remove();
}
END_TEST

/* ---- key files and unreachable Kafka --------------------------------------------- */

START_TEST(test_bad_keyfile)
{
	tmp_create();
	struct result r;
	kreq(&r, NULL, "tail", "--bootstrap", "127.0.0.1:1", "--topic", "t", "--keyfile",
	     tmp("missing.key"), NULL);
	ASSERT_RUN(&r, 1, err, tmp("missing.key"));
	result_free(&r);
	kreq_keyring_release(make_key("open.key"));
	ck_assert_int_eq(chmod(tmp("open.key"), 0644), 0);
	kreq(&r, NULL, "call", "--bootstrap", "127.0.0.1:1", "--keyfile", tmp("open.key"), "svc.x",
	     NULL);
	ASSERT_RUN(&r, 1, err, tmp("open.key"));
	ck_assert_ptr_nonnull(strstr(r.err, "EKEYPERM"));
	result_free(&r);
	tmp_remove();
}
END_TEST

START_TEST(test_unreachable_broker)
{
	tmp_create();
	kreq_keyring_release(make_key("k.key"));
	struct result r;
	int64_t t0 = kreq_test_now_ms();
	kreq(&r, NULL, "tail", "--bootstrap", "127.0.0.1:1", "--topic", "t", "--keyfile",
	     tmp("k.key"), "--timeout-ms", "1000", NULL);
	ASSERT_RUN(&r, 1, err, "cannot reach Kafka at 127.0.0.1:1");
	ck_assert_int_lt(kreq_test_now_ms() - t0, 6000);
	result_free(&r);
	t0 = kreq_test_now_ms();
	kreq(&r, NULL, "call", "--bootstrap", "127.0.0.1:1", "--keyfile", tmp("k.key"),
	     "--timeout-ms", "1000", "svc.x", "hello", NULL);
	ASSERT_RUN(&r, 1, err, "cannot start a kreq client on 127.0.0.1:1");
	ck_assert_int_lt(kreq_test_now_ms() - t0, 6000);
	result_free(&r);
	tmp_remove();
}
END_TEST

/* ---- tail ------------------------------------------------------------------------ */

static uint8_t *seal_request(kreq_keyring_t *kr, int64_t deadline_ms, size_t *len)
{
	static uint8_t corr[16] = {0xc0, 0xff, 0xee, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
	kreq__limits_t lim = {.envelope_max = 1 << 20, .payload_max = 1000000, .skew_ms = 30000};
	Kreq__Request q = KREQ__REQUEST__INIT;
	q.correlation_id = (ProtobufCBinaryData){16, corr};
	q.idempotency_key = (ProtobufCBinaryData){16, corr};
	q.method = "svc.echo";
	q.payload = (ProtobufCBinaryData){2, (uint8_t *)"hi"};
	q.reply_topic = "kreq.reply.test";
	q.issued_at_ms = kreq__now_ms() - 2000;
	q.deadline_ms = deadline_ms;
	q.attempt = 1;
	uint8_t *out = NULL;
	char err[256];
	ck_assert_int_eq(
	    kreq__envelope_seal(kr, &lim, KREQ__KIND_REQUEST, &q.base, &out, len, err, sizeof(err)),
	    KREQ_OK);
	return out;
}

static void produce(const char *topic, const void *buf, size_t len)
{
	ck_assert_int_eq(rd_kafka_producev(host, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(0),
	                                   RD_KAFKA_V_VALUE((void *)buf, len),
	                                   RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
	                                   RD_KAFKA_V_END),
	                 RD_KAFKA_RESP_ERR_NO_ERROR);
}

/* A valid request, a tampered copy, garbage and an expired request. */
static void produce_records(const char *topic, kreq_keyring_t *kr)
{
	size_t len = 0, old_len = 0;
	uint8_t *ok = seal_request(kr, kreq__now_ms() + 600000, &len);
	produce(topic, ok, len);
	ok[len - 1] ^= 1; /* the signature is the envelope's last field */
	produce(topic, ok, len);
	static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0x01};
	produce(topic, garbage, sizeof(garbage));
	uint8_t *old = seal_request(kr, kreq__now_ms() - 1000, &old_len);
	produce(topic, old, old_len);
	free(ok);
	free(old);
	ck_assert_int_eq(rd_kafka_flush(host, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

static const char *const verdicts[] = {"OK", "EBADSIG", "EMALFORMED", "EEXPIRED"};

static void check_tail_text(const char *out)
{
	const char *line = strchr(out, '\n'); /* after the header */
	ck_assert_ptr_nonnull(line);
	for (size_t i = 0; i < 4; i++) {
		char want[32];
		snprintf(want, sizeof(want), " %s ", verdicts[i]);
		const char *end = strchr(line + 1, '\n');
		ck_assert_ptr_nonnull(end);
		ck_assert_msg(memmem(line, (size_t)(end - line), want, strlen(want)) != NULL,
		              "line %zu lacks %s: %s", i + 1, want, out);
		line = end;
	}
	ck_assert_ptr_nonnull(strstr(out, "c0ffee0102030405060708090a0b0c0d"));
	ck_assert_ptr_nonnull(strstr(out, "svc.echo"));
}

static void check_tail_json(const char *out)
{
	const char *line = out;
	for (size_t i = 0; i < 4; i++) {
		json_error_t e;
		json_t *j = json_loadb(line, strcspn(line, "\n"), 0, &e);
		ck_assert_msg(j != NULL, "line %zu is not JSON (%s): %s", i + 1, e.text, out);
		ck_assert_str_eq(json_string_value(json_object_get(j, "verdict")), verdicts[i]);
		ck_assert_int_eq(json_integer_value(json_object_get(j, "offset")), (json_int_t)i);
		bool verified = i == 0 || i == 3;
		ck_assert(json_is_true(json_object_get(j, "verified")) == verified);
		if (verified)
			ck_assert_str_eq(json_string_value(json_object_get(j, "method")),
			                 "svc.echo");
		json_decref(j);
		line += strcspn(line, "\n") + 1;
	}
	ck_assert_str_eq(line, "");
}

START_TEST(test_tail)
{
	tmp_create();
	kreq_keyring_t *kr = make_key("k.key");
	const char *bs = mock_start("kreq.cli.tail", 1);
	produce_records("kreq.cli.tail", kr);
	struct result r;
	kreq(&r, NULL, "tail", "--bootstrap", bs, "--topic", "kreq.cli.tail", "--keyfile",
	     tmp("k.key"), "--from-beginning", "--count", "4", NULL);
	ck_assert_msg(r.status == 4, "exit %d: %s", r.status, r.err);
	check_tail_text(r.out);
	result_free(&r);
	kreq(&r, NULL, "tail", "--bootstrap", bs, "--topic", "kreq.cli.tail", "--keyfile",
	     tmp("k.key"), "--from-beginning", "--timeout-ms", "1500", "--json", NULL);
	ck_assert_msg(r.status == 4, "exit %d: %s", r.status, r.err);
	check_tail_json(r.out);
	ASSERT_RUN(&r, 4, err, "4 record(s), 2 failed verification");
	result_free(&r);
	/* new records only: nothing arrives, the idle timeout ends it cleanly */
	kreq(&r, NULL, "tail", "--bootstrap", bs, "--topic", "kreq.cli.tail", "--keyfile",
	     tmp("k.key"), "--timeout-ms", "1000", NULL);
	ASSERT_RUN(&r, 0, err, "0 record(s)");
	result_free(&r);
	mock_stop();
	kreq_keyring_release(kr);
	tmp_remove();
}
END_TEST

/* ---- pending and stats ------------------------------------------------------------ */

static kreq_client_t *live_client(const char *bs, kreq_keyring_t *kr, const char *sock)
{
	kreq_conf_t *conf = kreq_conf_new();
	char err[512];
	const char *kv[][2] = {{"kafka.bootstrap.servers", bs}, {"client.id", "cli-test"},
	                       {"admin.socket", sock},          {"service.check.ms", "0"},
	                       {"retry.max.attempts", "1"},     {"log.level", "3"}};
	for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++)
		ck_assert_int_eq(kreq_conf_set(conf, kv[i][0], kv[i][1], err, sizeof(err)),
		                 KREQ_OK);
	kreq_client_t *c = kreq_client_new(conf, kr, err, sizeof(err));
	ck_assert_msg(c != NULL, "kreq_client_new: %s", err);
	kreq_conf_destroy(conf);
	return c;
}

static kreq_future_t *call_never(kreq_client_t *c, const char *method, const char *idem)
{
	kreq_call_opts_t *o = kreq_call_opts_new();
	ck_assert_int_eq(kreq_call_opts_set_timeout(o, 120000), KREQ_OK);
	if (idem)
		ck_assert_int_eq(kreq_call_opts_set_idempotency_key(o, idem, strlen(idem)),
		                 KREQ_OK);
	kreq_future_t *f = NULL;
	ck_assert_int_eq(kreq_client_call(c, method, "x", 1, o, &f), KREQ_OK);
	kreq_call_opts_destroy(o);
	return f;
}

static void check_pending(const char *sock)
{
	struct result r;
	kreq(&r, NULL, "pending", "--socket", sock, NULL);
	ASSERT_RUN(&r, 0, out, "3 in flight, 3 shown");
	ck_assert_ptr_nonnull(strstr(r.out, "idem-one")); /* printable key shown as text */
	ck_assert_ptr_nonnull(strstr(strstr(r.out, "svc.never") + 1, "svc.never"));
	result_free(&r);
	kreq(&r, NULL, "pending", "--socket", sock, "--sort", "method", NULL);
	ck_assert_int_eq(r.status, 0);
	ck_assert_ptr_nonnull(strstr(r.out, "svc.aaa"));
	ck_assert(strstr(r.out, "svc.aaa") < strstr(r.out, "svc.never"));
	result_free(&r);
	kreq(&r, NULL, "pending", "--socket", sock, "--json", "--method", "svc.never", "--sort",
	     "left", NULL);
	ck_assert_msg(r.status == 0, "%s", r.err);
	json_t *j = json_loads(r.out, 0, NULL);
	ck_assert_ptr_nonnull(j);
	json_t *rows = json_object_get(j, "pending");
	ck_assert_int_eq(json_array_size(rows), 2);
	for (size_t i = 0; i < 2; i++)
		ck_assert_str_eq(
		    json_string_value(json_object_get(json_array_get(rows, i), "method")),
		    "svc.never");
	ck_assert_int_eq(json_integer_value(json_object_get(j, "in_flight")), 3);
	json_decref(j);
	result_free(&r);
}

static void check_stats(const char *sock)
{
	struct result r;
	kreq(&r, NULL, "stats", "--socket", sock, NULL);
	ASSERT_RUN(&r, 0, out, "kreq_client_in_flight{client=\"cli-test\"} 3");
	result_free(&r);
	kreq(&r, NULL, "stats", "--socket", sock, "--json", NULL);
	ck_assert_msg(r.status == 0, "%s", r.err);
	json_t *arr = json_loads(r.out, 0, NULL);
	ck_assert(json_is_array(arr));
	bool found = false;
	for (size_t i = 0; i < json_array_size(arr); i++) {
		json_t *s = json_array_get(arr, i);
		if (strcmp(json_string_value(json_object_get(s, "name")), "kreq_client_in_flight"))
			continue;
		found = true;
		ck_assert_int_eq(json_integer_value(json_object_get(s, "value")), 3);
		ck_assert_str_eq(
		    json_string_value(json_object_get(json_object_get(s, "labels"), "client")),
		    "cli-test");
	}
	ck_assert(found);
	json_decref(arr);
	result_free(&r);
}

START_TEST(test_pending_and_stats)
{
	tmp_create();
	kreq_keyring_t *kr = make_key("k.key");
	const char *bs = mock_start("kreq.svc.requests", 1);
	const char *sock = tmp("admin.sock");
	kreq_client_t *c = live_client(bs, kr, sock);
	kreq_future_t *f[3] = {call_never(c, "svc.never", "idem-one"),
	                       call_never(c, "svc.never", NULL), call_never(c, "svc.aaa", NULL)};
	check_pending(sock);
	check_stats(sock);
	struct result r;
	kreq(&r, NULL, "pending", "--socket", tmp("nosuch.sock"), NULL);
	ASSERT_RUN(&r, 1, err, tmp("nosuch.sock"));
	result_free(&r);
	kreq_client_destroy(c);
	for (size_t i = 0; i < 3; i++) {
		ck_assert_int_eq(kreq_future_err(f[i]), KREQ_ECLOSED);
		kreq_future_release(f[i]);
	}
	mock_stop();
	kreq_keyring_release(kr);
	tmp_remove();
}
END_TEST

/* ---- call ------------------------------------------------------------------------ */

START_TEST(test_call_timeout)
{
	tmp_create();
	kreq_keyring_release(make_key("k.key"));
	const char *bs = mock_start("kreq.svc.requests", 1);
	struct result r;
	kreq(&r, NULL, "call", "--bootstrap", bs, "--keyfile", tmp("k.key"), "--timeout-ms", "1500",
	     "svc.never", "hello", NULL);
	ASSERT_RUN(&r, 1, err, "timed out");
	result_free(&r);
	kreq(&r, "from stdin", "call", "--bootstrap", bs, "--keyfile", tmp("k.key"), "--timeout-ms",
	     "1500", "--json", "svc.never", "-", NULL);
	ck_assert_int_eq(r.status, 1);
	json_t *j = json_loads(r.out, 0, NULL);
	ck_assert_msg(j != NULL, "not JSON: %s", r.out);
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "error"), "code")),
	                 "ETIMEDOUT");
	json_decref(j);
	result_free(&r);
	mock_stop();
	tmp_remove();
}
END_TEST

START_TEST(test_call_replies)
{
	tmp_create();
	kreq_keyring_t *kr = make_key("k.key");
	const char *bs = mock_start("kreq.svc.requests", 1);
	responder_t *resp = responder_start(bs, "kreq.svc.requests", kr, 0);
	struct result r;
	kreq(&r, "{\"n\":1}", "call", "--bootstrap", bs, "--keyfile", tmp("k.key"), "-X",
	     "service.check.ms=0", "--timeout-ms", "20000", "svc.echo", "-", NULL);
	ASSERT_RUN(&r, 0, out, "payload: {\"n\":1}");
	ck_assert_ptr_nonnull(strstr(r.out, "status: 0"));
	result_free(&r);
	kreq(&r, NULL, "call", "--bootstrap", bs, "--keyfile", tmp("k.key"), "-X",
	     "service.check.ms=0", "--json", "--idempotency-key", "op-7", "svc.fail", "x", NULL);
	ck_assert_msg(r.status == 3, "exit %d: %s %s", r.status, r.out, r.err);
	json_t *j = json_loads(r.out, 0, NULL);
	ck_assert_int_eq(json_integer_value(json_object_get(j, "status")), 101);
	json_decref(j);
	result_free(&r);
	kreq(&r, NULL, "call", "--bootstrap", bs, "--keyfile", tmp("k.key"), "-X",
	     "service.check.ms=0", "svc.rejected", NULL);
	ASSERT_RUN(&r, 3, err, "EREJECTED");
	result_free(&r);
	kreq(&r, NULL, "call", "--bootstrap", bs, "--keyfile", tmp("k.key"), "-X",
	     "no.such.property=1", "svc.echo", NULL);
	ASSERT_RUN(&r, 2, err, "no.such.property");
	result_free(&r);
	responder_stop(resp);
	mock_stop();
	kreq_keyring_release(kr);
	tmp_remove();
}
END_TEST

/* ---- dev ------------------------------------------------------------------------- */

static void dev_until_signal(int sig)
{
	const char *args[] = {"dev", "--topic", "kreq.dev.requests:2", NULL};
	struct proc p;
	proc_start(&p, args, NULL);
	int64_t deadline = kreq_test_now_ms() + RUN_TIMEOUT_MS;
	while (p.out.data == NULL || strchr(p.out.data, '\n') == NULL) {
		ck_assert_msg(kreq_test_now_ms() < deadline, "no bootstrap line from kreq dev");
		ck_assert_msg(proc_pump(&p, 100), "kreq dev exited early");
	}
	ck_assert_msg(strncmp(p.out.data, "KREQ_MOCK_BOOTSTRAP=127.0.0.1:", 30) == 0, "%s",
	              p.out.data);
	ck_assert_int_eq(kill(p.pid, sig), 0);
	struct result r;
	proc_finish(&p, RUN_TIMEOUT_MS, &r);
	ck_assert_msg(r.status == 0, "exit %d: %s", r.status, r.err);
	result_free(&r);
}

START_TEST(test_dev)
{
	dev_until_signal(SIGTERM);
	dev_until_signal(SIGINT);
}
END_TEST

static Suite *cli_suite(void)
{
	Suite *s = suite_create("cli");
	TCase *tc = tcase_create("cli");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_help);
	tcase_add_test(tc, test_usage_errors);
	tcase_add_test(tc, test_keygen);
	tcase_add_test(tc, test_bad_keyfile);
	tcase_add_test(tc, test_unreachable_broker);
	tcase_add_test(tc, test_tail);
	tcase_add_test(tc, test_pending_and_stats);
	tcase_add_test(tc, test_call_timeout);
	tcase_add_test(tc, test_call_replies);
	tcase_add_test(tc, test_dev);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return kreq_test_run_suite(cli_suite());
}
