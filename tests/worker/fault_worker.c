/*
 * fault_worker.c — a worker process for the crash tests: the real worker
 * library serving "svc.record", whose handler appends one line per
 * execution to a file outside Kafka and replies with that execution's id.
 *
 *   fault_worker BOOTSTRAP PREFIX WORKER_ID RECORD_FILE HMAC_KEY_HEX [MODE]
 *
 * The record line is "<idempotency key> <execution id>\n", written with one
 * write() on an O_APPEND descriptor, so a kill -9 never leaves half a line
 * and never loses a line of an execution that replied. The payload may start
 * with "sleep:<ms>|" to make the handler take that long. Prints "ready" on
 * stdout once the group assigned it partitions; SIGTERM stops it gracefully.
 * KREQ_FAULT_WORKER_SET="name=value;..." sets more properties.
 */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kreq/error.h"
#include "kreq/worker.h"

static kreq_worker_t *srv;
static atomic_bool finished;
static int record_fd;

static void on_term(int sig)
{
	(void)sig;
	kreq_worker_stop(srv); /* async-signal-safe */
}

static void record(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	size_t ilen, plen;
	const char *idem = kreq_request_idempotency_key(r, &ilen);
	const char *p = kreq_request_payload(r, &plen);
	char exec_id[33], line[400];
	uint8_t rnd[16];
	randombytes_buf(rnd, sizeof(rnd));
	sodium_bin2hex(exec_id, sizeof(exec_id), rnd, sizeof(rnd));
	int n = snprintf(line, sizeof(line), "%.*s %s\n", (int)ilen, idem, exec_id);
	if (write(record_fd, line, (size_t)n) != n) {
		kreq_request_reply(r, 500, NULL, 0, "cannot write the record file");
		return;
	}
	if (plen > 6 && !strncmp(p, "sleep:", 6)) {
		char num[16];
		snprintf(num, sizeof(num), "%.*s", (int)(plen - 6 < 15 ? plen - 6 : 15), p + 6);
		long ms = strtol(num, NULL, 10);
		struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
		nanosleep(&ts, NULL);
	}
	kreq_request_reply(r, 0, exec_id, 32, NULL);
}

static void *announce(void *arg)
{
	(void)arg;
	while (!atomic_load(&finished)) {
		if (kreq_worker_ready(srv)) {
			printf("ready\n");
			fflush(stdout);
			return NULL;
		}
		struct timespec ts = {0, 20000000};
		nanosleep(&ts, NULL);
	}
	return NULL;
}

static void set(kreq_conf_t *c, const char *k, const char *v)
{
	char err[256];
	if (kreq_conf_set(c, k, v, err, sizeof(err))) {
		fprintf(stderr, "fault_worker: %s: %s\n", k, err);
		exit(2);
	}
}

/* KREQ_FAULT_WORKER_SET="name=value;name=value" adds properties (a test
 * comparing settings, e.g. kafka.session.timeout.ms). */
static void extra_settings(kreq_conf_t *c)
{
	const char *env = getenv("KREQ_FAULT_WORKER_SET");
	char buf[1024];
	snprintf(buf, sizeof(buf), "%s", env ? env : "");
	for (char *save = NULL, *kv = strtok_r(buf, ";", &save); kv;
	     kv = strtok_r(NULL, ";", &save)) {
		char *eq = strchr(kv, '=');
		if (!eq) {
			fprintf(stderr,
			        "fault_worker: KREQ_FAULT_WORKER_SET: %s is not name=value\n", kv);
			exit(2);
		}
		*eq = 0;
		set(c, kv, eq + 1);
	}
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: fault_worker BOOTSTRAP PREFIX WORKER_ID RECORD_FILE "
		                "HMAC_KEY_HEX [MODE]\n");
		return 2;
	}
	uint8_t key[32];
	if (sodium_init() < 0 ||
	    sodium_hex2bin(key, 32, argv[5], strlen(argv[5]), NULL, NULL, NULL) != 0)
		return 2;
	record_fd = open(argv[4], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (record_fd < 0)
		return 2;
	kreq_keyring_t *kr = kreq_keyring_new();
	kreq_keyring_add(kr, "k1", KREQ_KEY_HMAC_SHA256, key, 32, NULL, 0);
	kreq_keyring_set_signing_key(kr, "k1");
	kreq_conf_t *conf = kreq_conf_new();
	set(conf, "kafka.bootstrap.servers", argv[1]);
	set(conf, "topic.prefix", argv[2]);
	set(conf, "client.id", argv[3]);
	set(conf, "worker.mode", argc > 6 ? argv[6] : "transactional");
	set(conf, "worker.topic.partitions", "4");
	set(conf, "worker.handler.threads", "8");
	const char *lvl = getenv("KREQ_FAULT_WORKER_LOG_LEVEL"); /* to diagnose a failure */
	set(conf, "log.level", lvl && *lvl ? lvl : "5");
	extra_settings(conf);
	char err[512];
	srv = kreq_worker_new(conf, kr, "svc", err, sizeof(err));
	if (!srv || kreq_worker_register(srv, "svc.record", record, NULL, 0)) {
		fprintf(stderr, "fault_worker: %s\n", err);
		return 2;
	}
	signal(SIGTERM, on_term);
	pthread_t t;
	pthread_create(&t, NULL, announce, NULL);
	int rc = kreq_worker_run(srv, err, sizeof(err));
	atomic_store(&finished, true);
	pthread_join(t, NULL);
	if (rc)
		fprintf(stderr, "fault_worker: %s\n", err);
	kreq_worker_destroy(srv);
	kreq_conf_destroy(conf);
	kreq_keyring_release(kr);
	close(record_fd);
	return rc ? 1 : 0;
}
