/*
 * kreq-mockcluster — run librdkafka's built-in mock Kafka cluster as a process.
 *
 * Why: unit-level tests and the embedded demo need something that speaks the
 * Kafka protocol without a JVM. librdkafka ships a mock cluster
 * (rdkafka_mock.h) that lives inside a client handle; this tool hosts one on
 * loopback, prints its bootstrap address as a single line
 *
 *     KREQ_MOCK_BOOTSTRAP=127.0.0.1:port[,...]
 *
 * on stdout (then flushes), and runs until SIGTERM/SIGINT, or until its stdin
 * reaches end-of-file when --stdin-lifetime is given (so a parent that dies
 * takes the cluster with it). It then destroys everything and exits 0.
 * --topic NAME:N creates a topic with N partitions up front. The mock
 * cluster implements no CreateTopics admin request, and with librdkafka newer
 * than 2.0 (2.12 tested) it auto-creates a missing topic (4 partitions) only when a producer
 * asks for it: a kreq client's reply topic and kreqd's topics must be given
 * with --topic.
 *
 * The mock cluster is NOT a proof of transactional or restart semantics (it
 * does not enforce read_committed); those are tested on a real broker.
 *
 * Exit status: 0 clean shutdown, 1 runtime error, 2 usage error.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define MAX_BROKERS    64
#define MAX_TOPICS     32
#define MAX_PARTITIONS 1000
#define TOPIC_NAME_MAX 249 /* Kafka's limit */

struct topic_spec {
	char name[TOPIC_NAME_MAX + 1];
	int partitions;
};

struct options {
	int brokers;
	bool stdin_lifetime;
	size_t n_topics;
	struct topic_spec topics[MAX_TOPICS];
};

static void usage(FILE *out, const char *prog)
{
	fprintf(out,
	        "usage: %s [--brokers N] [--topic NAME[:PARTITIONS]]... [--stdin-lifetime]\n"
	        "\n"
	        "Start librdkafka's mock Kafka cluster on 127.0.0.1, print\n"
	        "  KREQ_MOCK_BOOTSTRAP=<host:port,...>\n"
	        "on stdout, and run until SIGTERM or SIGINT.\n"
	        "\n"
	        "  --brokers N        number of mock brokers (1..%d, default 1)\n"
	        "  --topic NAME[:P]   create topic NAME with P partitions (1..%d,\n"
	        "                     default 1); repeatable, up to %d topics. The mock\n"
	        "                     serves no CreateTopics: other topics appear (4\n"
	        "                     partitions) only when a producer asks for them\n"
	        "  --stdin-lifetime   also stop when standard input is closed\n"
	        "  -h, --help         show this help\n",
	        prog, MAX_BROKERS, MAX_PARTITIONS, MAX_TOPICS);
}

static bool parse_int(const char *s, int min, int max, int *out)
{
	char *end = NULL;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
		return false;
	*out = (int)v;
	return true;
}

/* Parse "NAME[:PARTITIONS]" into the next topic slot. */
static bool parse_topic(const char *arg, struct options *opt)
{
	if (arg == NULL || opt->n_topics == MAX_TOPICS)
		return false;
	struct topic_spec *t = &opt->topics[opt->n_topics];
	const char *colon = strrchr(arg, ':');
	size_t len = colon != NULL ? (size_t)(colon - arg) : strlen(arg);
	t->partitions = 1;
	if (len == 0 || len > TOPIC_NAME_MAX ||
	    (colon != NULL && !parse_int(colon + 1, 1, MAX_PARTITIONS, &t->partitions)))
		return false;
	memcpy(t->name, arg, len);
	t->name[len] = '\0';
	opt->n_topics++;
	return true;
}

/* Value of "--opt VALUE" or "--opt=VALUE" at argv[*i]; NULL if missing. */
static const char *option_value(int argc, char **argv, int *i, size_t optlen)
{
	const char *a = argv[*i];
	if (a[optlen] == '=')
		return a + optlen + 1;
	return *i + 1 < argc ? argv[++*i] : NULL;
}

static bool is_option(const char *arg, const char *name)
{
	size_t n = strlen(name);
	return strncmp(arg, name, n) == 0 && (arg[n] == '\0' || arg[n] == '=');
}

/* Report a command-line error with the usage text; returns exit status 2. */
static int usage_error(const char *prog, const char *what)
{
	fprintf(stderr, "%s: %s\n", prog, what);
	usage(stderr, prog);
	return 2;
}

/* Returns -1 to continue, otherwise the exit status to exit with. */
static int parse_args(int argc, char **argv, struct options *opt)
{
	memset(opt, 0, sizeof *opt);
	opt->brokers = 1;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(stdout, argv[0]);
			return 0;
		} else if (strcmp(a, "--stdin-lifetime") == 0) {
			opt->stdin_lifetime = true;
		} else if (is_option(a, "--brokers")) {
			const char *v = option_value(argc, argv, &i, strlen("--brokers"));
			if (v == NULL || !parse_int(v, 1, MAX_BROKERS, &opt->brokers))
				return usage_error(
				    argv[0], "--brokers needs a number of brokers (see below)");
		} else if (is_option(a, "--topic")) {
			if (!parse_topic(option_value(argc, argv, &i, strlen("--topic")), opt))
				return usage_error(argv[0],
				                   "--topic needs NAME[:PARTITIONS] (see below)");
		} else {
			char msg[300];
			snprintf(msg, sizeof msg, "unknown argument '%.250s'", a);
			return usage_error(argv[0], msg);
		}
	}
	return -1;
}

/* The mock cluster lives inside a client handle; a producer with no
 * bootstrap servers of its own is the lightest host. Its log level is
 * "warning" so that the notice about those missing servers stays quiet. */
static rd_kafka_t *new_host_handle(void)
{
	static const char *const props[][2] = {{"client.id", "kreq-mockcluster"},
	                                       {"log_level", "4"}};
	char errstr[512];
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	for (size_t i = 0; i < sizeof props / sizeof props[0]; i++) {
		if (rd_kafka_conf_set(conf, props[i][0], props[i][1], errstr, sizeof errstr) !=
		    RD_KAFKA_CONF_OK) {
			fprintf(stderr, "kreq-mockcluster: config %s: %s\n", props[i][0], errstr);
			rd_kafka_conf_destroy(conf);
			return NULL;
		}
	}
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
	if (rk == NULL) {
		fprintf(stderr, "kreq-mockcluster: cannot create librdkafka handle: %s\n", errstr);
		rd_kafka_conf_destroy(conf); /* not taken over on failure */
	}
	return rk;
}

/* SIGTERM/SIGINT are blocked (in every thread: done before librdkafka starts
 * its threads) and read from a signalfd in the main loop. */
static int block_signals(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGINT);
	int err = pthread_sigmask(SIG_BLOCK, set, NULL);
	if (err != 0) {
		fprintf(stderr, "kreq-mockcluster: pthread_sigmask: %s\n", strerror(err));
		return -1;
	}
	int fd = signalfd(-1, set, SFD_CLOEXEC);
	if (fd < 0)
		fprintf(stderr, "kreq-mockcluster: signalfd: %s\n", strerror(errno));
	return fd;
}

/* Drain readable stdin; returns true once it is at EOF (or unreadable). */
static bool stdin_closed(void)
{
	char buf[4096];
	for (;;) {
		ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
		if (n > 0)
			return false; /* data is ignored; poll() will wake us again */
		if (n == 0)
			return true;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			return false;
		fprintf(stderr, "kreq-mockcluster: reading stdin: %s\n", strerror(errno));
		return true;
	}
}

/* Wait for a termination signal, or stdin EOF if asked. 0 = clean stop. */
static int wait_for_stop(int sigfd, bool watch_stdin)
{
	struct pollfd fds[2] = {{.fd = sigfd, .events = POLLIN},
	                        {.fd = STDIN_FILENO, .events = POLLIN}};
	nfds_t nfds = watch_stdin ? 2 : 1;
	for (;;) {
		if (poll(fds, nfds, -1) < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "kreq-mockcluster: poll: %s\n", strerror(errno));
			return 1;
		}
		if (fds[0].revents & POLLIN) {
			struct signalfd_siginfo si;
			if (read(sigfd, &si, sizeof si) == (ssize_t)sizeof si)
				fprintf(stderr, "kreq-mockcluster: got %s, stopping\n",
				        strsignal((int)si.ssi_signo));
			return 0;
		}
		if (nfds == 2 && fds[1].revents != 0 && stdin_closed()) {
			fprintf(stderr, "kreq-mockcluster: stdin closed, stopping\n");
			return 0;
		}
	}
}

static int print_bootstrap(rd_kafka_mock_cluster_t *mc)
{
	const char *bs = rd_kafka_mock_cluster_bootstraps(mc);
	if (bs == NULL || *bs == '\0') {
		fprintf(stderr, "kreq-mockcluster: mock cluster has no bootstrap address\n");
		return -1;
	}
	if (printf("KREQ_MOCK_BOOTSTRAP=%s\n", bs) < 0 || fflush(stdout) != 0) {
		fprintf(stderr, "kreq-mockcluster: cannot write to stdout: %s\n", strerror(errno));
		return -1;
	}
	return 0;
}

static int create_topics(rd_kafka_mock_cluster_t *mc, const struct options *opt)
{
	int rf = opt->brokers < 3 ? opt->brokers : 3;
	for (size_t i = 0; i < opt->n_topics; i++) {
		const struct topic_spec *t = &opt->topics[i];
		rd_kafka_resp_err_t err =
		    rd_kafka_mock_topic_create(mc, t->name, t->partitions, rf);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
			fprintf(stderr, "kreq-mockcluster: cannot create topic %s: %s\n", t->name,
			        rd_kafka_err2str(err));
			return -1;
		}
	}
	return 0;
}

static int run(const struct options *opt, int sigfd)
{
	rd_kafka_t *rk = new_host_handle();
	if (rk == NULL)
		return 1;
	int rc = 1;
	rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, opt->brokers);
	if (mc == NULL) {
		fprintf(stderr, "kreq-mockcluster: cannot start a mock cluster of %d broker(s)\n",
		        opt->brokers);
	} else {
		if (create_topics(mc, opt) == 0 && print_bootstrap(mc) == 0)
			rc = wait_for_stop(sigfd, opt->stdin_lifetime);
		rd_kafka_mock_cluster_destroy(mc);
	}
	rd_kafka_destroy(rk);
	return rc;
}

int main(int argc, char **argv)
{
	struct options opt;
	int rc = parse_args(argc, argv, &opt);
	if (rc >= 0)
		return rc;
	sigset_t set;
	int sigfd = block_signals(&set);
	if (sigfd < 0)
		return 1;
	rc = run(&opt, sigfd);
	close(sigfd);
	if (rc == 0 && rd_kafka_wait_destroyed(10 * 1000) != 0) {
		fprintf(stderr, "kreq-mockcluster: librdkafka did not shut down in time\n");
		rc = 1;
	}
	return rc;
}
