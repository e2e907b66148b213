/*
 * test_mockcluster.c — kreq-mockcluster (tools/) behaves as a process that
 * other tests and the demo can rely on: it prints a usable bootstrap line,
 * serves produce and consume, stops cleanly (exit 0) on SIGTERM, SIGINT or
 * stdin EOF (--stdin-lifetime), and rejects bad arguments with exit 2.
 *
 * Every spawned tool gets --stdin-lifetime with a pipe as stdin, so a failing
 * (and therefore exiting) test never leaves a mock cluster behind.
 */
#include "testsupport.h"

#include <errno.h>
#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef KREQ_MOCKCLUSTER_PATH
#error "KREQ_MOCKCLUSTER_PATH must name the kreq-mockcluster binary"
#endif

#define LINE_TIMEOUT_MS 20000
#define EXIT_TIMEOUT_MS 20000
#define PREFIX          "KREQ_MOCK_BOOTSTRAP="

extern char **environ;

struct tool {
	pid_t pid;
	int in_fd;  /* write end of the tool's stdin, -1 once closed */
	int out_fd; /* read end of the tool's stdout */
	int err_fd; /* read end of its stderr, or -1 when inherited */
};

/* ---- process plumbing --------------------------------------------------- */

static void make_pipe(int fds[2])
{
	ck_assert_msg(pipe2(fds, O_CLOEXEC) == 0, "pipe2: %s", strerror(errno));
}

/* Start kreq-mockcluster with the given extra arguments (NULL-terminated). */
static void tool_spawn(struct tool *t, const char *const *args, bool capture_stderr)
{
	int in[2], out[2], err[2] = {-1, -1};
	make_pipe(in);
	make_pipe(out);
	if (capture_stderr)
		make_pipe(err);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, in[0], STDIN_FILENO);
	posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
	if (capture_stderr)
		posix_spawn_file_actions_adddup2(&fa, err[1], STDERR_FILENO);

	const char *argv[16] = {KREQ_MOCKCLUSTER_PATH};
	size_t n = 1;
	for (; args != NULL && *args != NULL; args++) {
		ck_assert(n + 1 < sizeof argv / sizeof argv[0]);
		argv[n++] = *args;
	}
	argv[n] = NULL;
	int rc =
	    posix_spawn(&t->pid, KREQ_MOCKCLUSTER_PATH, &fa, NULL, (char *const *)argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(in[0]);
	close(out[1]);
	if (capture_stderr)
		close(err[1]);
	ck_assert_msg(rc == 0, "spawn %s: %s", KREQ_MOCKCLUSTER_PATH, strerror(rc));
	t->in_fd = in[1];
	t->out_fd = out[0];
	t->err_fd = err[0];
}

/* Read from fd until EOF, up to bufsize-1 bytes, within the deadline. */
static size_t read_all(int fd, char *buf, size_t bufsize, int64_t deadline)
{
	size_t len = 0;
	for (;;) {
		int left = (int)(deadline - kreq_test_now_ms());
		ck_assert_msg(left > 0, "output of kreq-mockcluster not closed in time");
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		if (poll(&pfd, 1, left) <= 0)
			continue;
		ssize_t r = read(fd, buf + len, bufsize - 1 - len);
		if (r == 0 || (r < 0 && errno != EINTR))
			break;
		if (r > 0)
			len += (size_t)r;
		if (len == bufsize - 1)
			break;
	}
	buf[len] = '\0';
	return len;
}

/* Read the first stdout line (without '\n') within LINE_TIMEOUT_MS. */
static void tool_read_line(struct tool *t, char *line, size_t size)
{
	const int64_t deadline = kreq_test_now_ms() + LINE_TIMEOUT_MS;
	size_t len = 0;
	while (len == 0 || line[len - 1] != '\n') {
		int left = (int)(deadline - kreq_test_now_ms());
		ck_assert_msg(left > 0, "no line from kreq-mockcluster within %d ms",
		              LINE_TIMEOUT_MS);
		struct pollfd pfd = {.fd = t->out_fd, .events = POLLIN};
		if (poll(&pfd, 1, left) <= 0)
			continue;
		ssize_t r = read(t->out_fd, line + len, 1); /* byte-wise: stop at '\n' */
		ck_assert_msg(r != 0, "kreq-mockcluster closed stdout before a full line");
		if (r < 0 && errno == EINTR)
			continue;
		ck_assert_msg(r == 1, "reading kreq-mockcluster stdout: %s", strerror(errno));
		ck_assert_msg(++len < size, "line from kreq-mockcluster too long");
	}
	line[len - 1] = '\0';
}

/* Wait for the tool to exit; returns its wait status. Kills it on timeout. */
static int tool_wait(struct tool *t)
{
	const int64_t deadline = kreq_test_now_ms() + EXIT_TIMEOUT_MS;
	int status = 0;
	pid_t r;
	while ((r = waitpid(t->pid, &status, WNOHANG)) == 0 && kreq_test_now_ms() < deadline)
		kreq_test_poll_pause();
	if (r == 0) {
		kill(t->pid, SIGKILL);
		waitpid(t->pid, &status, 0);
		ck_abort_msg("kreq-mockcluster did not exit within %d ms", EXIT_TIMEOUT_MS);
	}
	ck_assert_msg(r == t->pid, "waitpid: %s", strerror(errno));
	return status;
}

static void tool_close_fds(struct tool *t)
{
	int *fds[] = {&t->in_fd, &t->out_fd, &t->err_fd};
	for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++) {
		if (*fds[i] >= 0)
			close(*fds[i]);
		*fds[i] = -1;
	}
}

static void assert_clean_exit(int status, int want)
{
	ck_assert_msg(WIFEXITED(status), "kreq-mockcluster died by signal %d",
	              WIFSIGNALED(status) ? WTERMSIG(status) : -1);
	ck_assert_msg(WEXITSTATUS(status) == want, "kreq-mockcluster exit status %d, expected %d",
	              WEXITSTATUS(status), want);
}

/* Spawn with --stdin-lifetime plus `args` and return the bootstrap address. */
static void tool_start(struct tool *t, const char *const *args, char *bs, size_t size)
{
	const char *argv[8] = {"--stdin-lifetime"};
	for (size_t i = 1; args != NULL && *args != NULL && i < 7; i++)
		argv[i] = *args++;
	tool_spawn(t, argv, false);
	char line[1024];
	tool_read_line(t, line, sizeof line);
	ck_assert_msg(strncmp(line, PREFIX, strlen(PREFIX)) == 0, "unexpected first line: '%s'",
	              line);
	ck_assert_msg(strlen(line) > strlen(PREFIX), "empty bootstrap in '%s'", line);
	ck_assert(strlen(line + strlen(PREFIX)) < size);
	strcpy(bs, line + strlen(PREFIX));
}

static void tool_signal_and_check(struct tool *t, int sig)
{
	ck_assert_msg(kill(t->pid, sig) == 0, "kill: %s", strerror(errno));
	int status = tool_wait(t);
	tool_close_fds(t);
	assert_clean_exit(status, 0);
}

/* ---- Kafka traffic through the mock ----------------------------------------- */

static void produce_one(const char *bs, const char *topic, const char *value)
{
	char errstr[512];
	rd_kafka_conf_t *conf = kreq_test_conf_new(bs, "acks", "all", NULL);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
	if (rk == NULL)
		rd_kafka_conf_destroy(conf);
	ck_assert_msg(rk != NULL, "producer: %s", errstr);
	rd_kafka_resp_err_t err =
	    rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(0),
	                      RD_KAFKA_V_VALUE((void *)value, strlen(value)),
	                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
	rd_kafka_resp_err_t ferr = rd_kafka_flush(rk, 10000);
	int left = rd_kafka_outq_len(rk);
	rd_kafka_destroy(rk);
	ck_assert_msg(err == RD_KAFKA_RESP_ERR_NO_ERROR, "produce: %s", rd_kafka_err2str(err));
	ck_assert_msg(ferr == RD_KAFKA_RESP_ERR_NO_ERROR && left == 0, "flush: %s (%d left)",
	              rd_kafka_err2str(ferr), left);
}

/* Consume partition 0 from the start until a record equal to `want`. */
static void consume_one(const char *bs, const char *topic, const char *want)
{
	char errstr[512], group[96];
	kreq_test_topic_name(group, sizeof group, "group"); /* required by assign() */
	rd_kafka_conf_t *conf =
	    kreq_test_conf_new(bs, "group.id", group, "enable.auto.commit", "false", NULL);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
	if (rk == NULL)
		rd_kafka_conf_destroy(conf);
	ck_assert_msg(rk != NULL, "consumer: %s", errstr);
	rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(parts, topic, 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
	rd_kafka_resp_err_t err = rd_kafka_assign(rk, parts);
	rd_kafka_topic_partition_list_destroy(parts);
	ck_assert_msg(err == RD_KAFKA_RESP_ERR_NO_ERROR, "assign: %s", rd_kafka_err2str(err));

	const int64_t deadline = kreq_test_now_ms() + 20000;
	bool found = false;
	char last_err[256] = "none";
	while (!found && kreq_test_now_ms() < deadline) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
		if (m == NULL)
			continue;
		if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR)
			snprintf(last_err, sizeof last_err, "%s", rd_kafka_message_errstr(m));
		else
			found = m->len == strlen(want) && memcmp(m->payload, want, m->len) == 0;
		rd_kafka_message_destroy(m);
	}
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	ck_assert_msg(found, "record '%s' not consumed from %s (last error: %s)", want, topic,
	              last_err);
}

/* Brokers in the cluster and partitions of `topic` (-1 if unknown). */
static int metadata_counts(const char *bs, const char *topic, int *partitions)
{
	char errstr[512];
	rd_kafka_conf_t *conf = kreq_test_conf_new(bs, NULL);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
	if (rk == NULL)
		rd_kafka_conf_destroy(conf);
	ck_assert_msg(rk != NULL, "client: %s", errstr);
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, NULL, &md, 10000);
	int n = err == RD_KAFKA_RESP_ERR_NO_ERROR ? md->broker_cnt : -1;
	*partitions = -1;
	for (int i = 0; md != NULL && i < md->topic_cnt; i++)
		if (strcmp(md->topics[i].topic, topic) == 0 && md->topics[i].err == 0)
			*partitions = md->topics[i].partition_cnt;
	if (md != NULL)
		rd_kafka_metadata_destroy(md);
	rd_kafka_destroy(rk);
	ck_assert_msg(err == RD_KAFKA_RESP_ERR_NO_ERROR, "metadata: %s", rd_kafka_err2str(err));
	return n;
}

/* ---- tests ------------------------------------------------------------------- */

/* The tests, the tool and kreq were built against one librdkafka (CI builds
 * 2.12.1, scripts/librdkafka.sh); a binary that loads another one at run
 * time (Debian's 2.0.2 is on the machine for kcat) would test something
 * else, and the mock cluster's behaviour differs between them. */
START_TEST(runtime_librdkafka_is_the_one_built_against)
{
	ck_assert_msg(rd_kafka_version() == RD_KAFKA_VERSION,
	              "running with librdkafka %s (0x%08x) but built against 0x%08x",
	              rd_kafka_version_str(), (unsigned)rd_kafka_version(),
	              (unsigned)RD_KAFKA_VERSION);
}
END_TEST

START_TEST(produce_and_consume_then_sigterm)
{
	struct tool t;
	char bs[512], topic[96], topic_arg[128];
	kreq_test_topic_name(topic, sizeof topic, "mock");
	snprintf(topic_arg, sizeof topic_arg, "%s:2", topic);
	const char *args[] = {"--topic", topic_arg, NULL};
	tool_start(&t, args, bs, sizeof bs);
	int partitions;
	ck_assert_int_eq(metadata_counts(bs, topic, &partitions), 1);
	ck_assert_int_eq(partitions, 2);
	produce_one(bs, topic, "hello mock");
	consume_one(bs, topic, "hello mock");
	tool_signal_and_check(&t, SIGTERM);
}
END_TEST

START_TEST(three_brokers_then_sigint)
{
	struct tool t;
	char bs[512];
	const char *args[] = {"--brokers", "3", "--topic=three", NULL};
	tool_start(&t, args, bs, sizeof bs);
	int partitions;
	ck_assert_int_eq(metadata_counts(bs, "three", &partitions), 3);
	ck_assert_int_eq(partitions, 1);
	tool_signal_and_check(&t, SIGINT);
}
END_TEST

START_TEST(stdin_eof_stops_the_cluster)
{
	struct tool t;
	char bs[512];
	tool_start(&t, NULL, bs, sizeof bs);
	close(t.in_fd);
	t.in_fd = -1;
	int status = tool_wait(&t);
	tool_close_fds(&t);
	assert_clean_exit(status, 0);
}
END_TEST

/* Run the tool with args to completion; returns stdout+stderr text. */
static int run_to_exit(const char *const *args, char *out, size_t outsize, char *err,
                       size_t errsize)
{
	struct tool t;
	tool_spawn(&t, args, true);
	close(t.in_fd);
	t.in_fd = -1;
	const int64_t deadline = kreq_test_now_ms() + EXIT_TIMEOUT_MS;
	read_all(t.out_fd, out, outsize, deadline);
	read_all(t.err_fd, err, errsize, deadline);
	int status = tool_wait(&t);
	tool_close_fds(&t);
	return status;
}

START_TEST(bad_arguments_are_usage_errors)
{
	static const char *const cases[][3] = {
	    {"--brokers", "0", NULL}, {"--brokers", "x", NULL}, {"--brokers", NULL, NULL},
	    {"--bogus", NULL, NULL},  {"extra", NULL, NULL},    {"--topic", "", NULL},
	    {"--topic", "t:0", NULL}, {"--topic", ":3", NULL},  {"--topic", NULL, NULL}};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char out[4096], err[4096];
		int status = run_to_exit(cases[i], out, sizeof out, err, sizeof err);
		assert_clean_exit(status, 2);
		ck_assert_msg(strstr(err, "usage:") != NULL, "case %zu: no usage on stderr: '%s'",
		              i, err);
		ck_assert_msg(out[0] == '\0', "case %zu: unexpected stdout '%s'", i, out);
	}
}
END_TEST

START_TEST(help_prints_usage_and_exits_zero)
{
	const char *args[] = {"--help", NULL};
	char out[4096], err[4096];
	int status = run_to_exit(args, out, sizeof out, err, sizeof err);
	assert_clean_exit(status, 0);
	ck_assert_msg(strstr(out, "usage:") != NULL && strstr(out, "--brokers") != NULL,
	              "help text missing: '%s'", out);
}
END_TEST

static Suite *mockcluster_suite(void)
{
	Suite *s = suite_create("mockcluster");
	TCase *tc = tcase_create("process");
	tcase_set_timeout(tc, 50); /* below the CTest timeout: Check reports it */
	tcase_add_test(tc, runtime_librdkafka_is_the_one_built_against);
	tcase_add_test(tc, produce_and_consume_then_sigterm);
	tcase_add_test(tc, three_brokers_then_sigint);
	tcase_add_test(tc, stdin_eof_stops_the_cluster);
	tcase_add_test(tc, bad_arguments_are_usage_errors);
	tcase_add_test(tc, help_prints_usage_and_exits_zero);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return kreq_test_run_suite(mockcluster_suite());
}
