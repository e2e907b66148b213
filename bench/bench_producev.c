/*
 * bench_producev.c — what rd_kafka_producev() costs on the worker's loop
 * thread when it names the topic (RD_KAFKA_V_TOPIC) against passing a
 * handle (RD_KAFKA_V_RKT, what broker/worker/topics.h keeps), as the producer
 * knows more topics: a worker writes to one reply topic per client
 * instance. The producer points at a closed port, so messages only queue
 * (purged after each round): this is the call's own cost, no broker.
 *
 * Usage: bench_producev [messages-per-round] [rounds]
 * Prints the median ns per call over the rounds for 1, 64 and 1024 known
 * topics, and the ratio name/handle.
 */
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static rd_kafka_t *producer(void)
{
	char err[512];
	rd_kafka_conf_t *c = rd_kafka_conf_new();
	const char *kv[] = {"bootstrap.servers",
	                    "127.0.0.1:1",
	                    "queue.buffering.max.messages",
	                    "2000000",
	                    "queue.buffering.max.kbytes",
	                    "2000000",
	                    "log_level",
	                    "0",
	                    NULL};
	for (int i = 0; kv[i]; i += 2)
		if (rd_kafka_conf_set(c, kv[i], kv[i + 1], err, sizeof(err))) {
			fprintf(stderr, "%s\n", err);
			exit(1);
		}
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof(err));
	if (!rk) {
		fprintf(stderr, "rd_kafka_new: %s\n", err);
		exit(1);
	}
	return rk;
}

/* ns per producev of n messages over ntopics topics, by name or handle */
static double round_ns(rd_kafka_t *rk, char (*names)[64], rd_kafka_topic_t **rkt, int ntopics,
                       int n, int by_handle)
{
	static char v[400];
	double t0 = now_s();
	for (int i = 0; i < n; i++) {
		int k = i % ntopics;
		rd_kafka_resp_err_t e =
		    by_handle
		        ? rd_kafka_producev(rk, RD_KAFKA_V_RKT(rkt[k]), RD_KAFKA_V_PARTITION(0),
		                            RD_KAFKA_V_KEY(v, 16), RD_KAFKA_V_VALUE(v, sizeof(v)),
		                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
		                            RD_KAFKA_V_END)
		        : rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(names[k]), RD_KAFKA_V_PARTITION(0),
		                            RD_KAFKA_V_KEY(v, 16), RD_KAFKA_V_VALUE(v, sizeof(v)),
		                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
		                            RD_KAFKA_V_END);
		if (e) {
			fprintf(stderr, "producev: %s\n", rd_kafka_err2str(e));
			exit(1);
		}
	}
	double ns = (now_s() - t0) / n * 1e9;
	rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE);
	rd_kafka_poll(rk, 0);
	return ns;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 200000;
	int rounds = argc > 2 ? atoi(argv[2]) : 5;
	if (n <= 0 || rounds <= 0 || rounds > 99) {
		fprintf(stderr, "usage: bench_producev [messages-per-round] [rounds (1-99)]\n");
		return 2;
	}
	static const int counts[] = {1, 64, 1024};
	printf("# rd_kafka_producev, 400-byte value, 16-byte key, %d calls per round, %d rounds "
	       "(median ns per call)\n",
	       n, rounds);
	printf("%-14s %10s %10s %8s\n", "known topics", "by name", "by handle", "ratio");
	for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++) {
		int nt = counts[c];
		rd_kafka_t *rk = producer();
		char(*names)[64] = calloc((size_t)nt, 64);
		rd_kafka_topic_t **rkt = calloc((size_t)nt, sizeof(*rkt));
		for (int i = 0; i < nt; i++) {
			snprintf(names[i], 64, "bench.reply.client-%d", i);
			rkt[i] = rd_kafka_topic_new(rk, names[i], NULL);
		}
		double byname[99], byhandle[99];
		for (int r = 0; r < rounds; r++) { /* interleaved, so drift hits both */
			byname[r] = round_ns(rk, names, rkt, nt, n, 0);
			byhandle[r] = round_ns(rk, names, rkt, nt, n, 1);
		}
		qsort(byname, (size_t)rounds, sizeof(double), cmp);
		qsort(byhandle, (size_t)rounds, sizeof(double), cmp);
		double a = byname[rounds / 2], b = byhandle[rounds / 2];
		printf("%-14d %10.0f %10.0f %7.2fx\n", nt, a, b, a / b);
		for (int i = 0; i < nt; i++)
			rd_kafka_topic_destroy(rkt[i]);
		free(rkt);
		free(names);
		rd_kafka_destroy(rk);
	}
	return 0;
}
