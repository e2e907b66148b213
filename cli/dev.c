/*
 * dev.c — `kreq dev`: librdkafka's in-memory mock Kafka cluster for
 * development, on loopback.
 *
 * Design: the same approach as tools/kreq-mockcluster (kept separate so that
 * tool's behaviour cannot change under it): the mock cluster lives inside a
 * librdkafka producer handle that has no bootstrap servers of its own; topics
 * given with --topic are created up front (the mock cluster does not serve
 * CreateTopics, and with librdkafka newer than 2.0 it auto-creates a topic only
 * when a producer asks for it, not for a consumer or kreq's admin). Prints
 *
 *     KREQ_MOCK_BOOTSTRAP=127.0.0.1:port[,...]
 *
 * on stdout, flushes, and runs until SIGINT or SIGTERM (read from a signalfd;
 * the signals are blocked before librdkafka starts its threads), then
 * destroys everything and exits 0. Not for production: nothing is persisted
 * and transactions are not enforced.
 */
#include <getopt.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "cli/cli.h"

#define SUB            "dev"
#define MAX_BROKERS    64
#define MAX_TOPICS     32
#define MAX_PARTITIONS 1000
#define TOPIC_NAME_MAX 249

struct topic_spec {
	char name[TOPIC_NAME_MAX + 1];
	int partitions;
};

struct dev_opts {
	long brokers;
	size_t n_topics;
	struct topic_spec topics[MAX_TOPICS];
};

static void usage(FILE *out)
{
	fprintf(out,
	        "usage: kreq dev [--brokers N] [--topic NAME[:PARTITIONS]]...\n"
	        "\n"
	        "Run librdkafka's in-memory mock Kafka cluster on 127.0.0.1 for\n"
	        "development, print\n"
	        "  KREQ_MOCK_BOOTSTRAP=<host:port,...>\n"
	        "on stdout and run until SIGINT or SIGTERM. Nothing is persisted and\n"
	        "transactions are not enforced: not for production or for proofs.\n"
	        "\n"
	        "  --brokers N        number of mock brokers (1..%d, default 1)\n"
	        "  --topic NAME[:P]   create topic NAME with P partitions (1..%d, default\n"
	        "                     1); repeatable, up to %d. The mock serves no\n"
	        "                     CreateTopics: other topics appear (4 partitions)\n"
	        "                     only when a producer asks for them, so give a\n"
	        "                     service's topics and each client's reply topic\n"
	        "  -h, --help         show this help\n"
	        "\n"
	        "Exit status: 0 stopped by a signal, 1 cannot start, 2 usage.\n",
	        MAX_BROKERS, MAX_PARTITIONS, MAX_TOPICS);
}

static bool parse_topic(const char *arg, struct dev_opts *o)
{
	if (o->n_topics == MAX_TOPICS)
		return false;
	struct topic_spec *t = &o->topics[o->n_topics];
	const char *colon = strrchr(arg, ':');
	size_t len = colon != NULL ? (size_t)(colon - arg) : strlen(arg);
	long parts = 1;
	if (len == 0 || len > TOPIC_NAME_MAX ||
	    (colon != NULL && !cli_parse_long(colon + 1, 1, MAX_PARTITIONS, &parts)))
		return false;
	memcpy(t->name, arg, len);
	t->name[len] = '\0';
	t->partitions = (int)parts;
	o->n_topics++;
	return true;
}

static int parse(int argc, char **argv, struct dev_opts *o)
{
	static const struct option opts[] = {{"brokers", required_argument, NULL, 'b'},
	                                     {"topic", required_argument, NULL, 't'},
	                                     {"help", no_argument, NULL, 'h'},
	                                     {NULL, 0, NULL, 0}};
	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case 'b':
			if (!cli_parse_long(optarg, 1, MAX_BROKERS, &o->brokers))
				return cli_usage_error(SUB, "--brokers needs 1..%d, not '%s'",
				                       MAX_BROKERS, optarg);
			break;
		case 't':
			if (!parse_topic(optarg, o))
				return cli_usage_error(SUB,
				                       "--topic needs NAME[:PARTITIONS] with 1..%d "
				                       "partitions (at most %d topics), not '%s'",
				                       MAX_PARTITIONS, MAX_TOPICS, optarg);
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
	return -1;
}

static rd_kafka_t *host_handle(void)
{
	char err[512];
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	if (rd_kafka_conf_set(conf, "client.id", "kreq-dev", err, sizeof(err)) !=
	        RD_KAFKA_CONF_OK ||
	    rd_kafka_conf_set(conf, "log_level", "4", err, sizeof(err)) != RD_KAFKA_CONF_OK) {
		rd_kafka_conf_destroy(conf);
		cli_fail(0, SUB, "librdkafka configuration: %s", err);
		return NULL;
	}
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
	if (rk == NULL) {
		rd_kafka_conf_destroy(conf);
		cli_fail(0, SUB, "cannot create a librdkafka handle: %s", err);
	}
	return rk;
}

static int create_topics(rd_kafka_mock_cluster_t *mc, const struct dev_opts *o)
{
	int rf = o->brokers < 3 ? (int)o->brokers : 3;
	for (size_t i = 0; i < o->n_topics; i++) {
		const struct topic_spec *t = &o->topics[i];
		rd_kafka_resp_err_t err =
		    rd_kafka_mock_topic_create(mc, t->name, t->partitions, rf);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
			return cli_fail(CLI_EXIT_FAIL, SUB, "cannot create topic %s: %s", t->name,
			                rd_kafka_err2str(err));
	}
	return CLI_EXIT_OK;
}

static int announce(rd_kafka_mock_cluster_t *mc)
{
	const char *bs = rd_kafka_mock_cluster_bootstraps(mc);
	if (bs == NULL || *bs == '\0')
		return cli_fail(CLI_EXIT_FAIL, SUB, "the mock cluster has no bootstrap address");
	if (printf("KREQ_MOCK_BOOTSTRAP=%s\n", bs) < 0 || fflush(stdout) != 0)
		return cli_fail(CLI_EXIT_FAIL, SUB, "cannot write to stdout");
	return CLI_EXIT_OK;
}

static void wait_for_signal(int sigfd)
{
	struct pollfd p = {.fd = sigfd, .events = POLLIN};
	while (!cli_signalled(sigfd))
		poll(&p, 1, -1);
	fprintf(stderr, "kreq dev: stopping\n");
}

static int run(const struct dev_opts *o, int sigfd)
{
	rd_kafka_t *rk = host_handle();
	if (rk == NULL)
		return CLI_EXIT_FAIL;
	int rc = CLI_EXIT_FAIL;
	rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, (int)o->brokers);
	if (mc == NULL) {
		cli_fail(0, SUB, "cannot start a mock cluster of %ld broker(s)", o->brokers);
	} else {
		rc = create_topics(mc, o);
		if (rc == CLI_EXIT_OK)
			rc = announce(mc);
		if (rc == CLI_EXIT_OK)
			wait_for_signal(sigfd);
		rd_kafka_mock_cluster_destroy(mc);
	}
	rd_kafka_destroy(rk);
	return rc;
}

int cli_dev(int argc, char **argv)
{
	struct dev_opts *o = calloc(1, sizeof(*o));
	if (o == NULL)
		return cli_fail(CLI_EXIT_FAIL, SUB, "out of memory");
	o->brokers = 1;
	int rc = parse(argc, argv, o);
	int sigfd = rc < 0 ? cli_signals_block(SUB) : -1;
	if (rc < 0)
		rc = sigfd < 0 ? CLI_EXIT_FAIL : run(o, sigfd);
	if (sigfd >= 0)
		close(sigfd);
	free(o);
	if (rc == CLI_EXIT_OK && rd_kafka_wait_destroyed(10000) != 0)
		rc = cli_fail(CLI_EXIT_FAIL, SUB, "librdkafka did not shut down within 10 s");
	return rc;
}
