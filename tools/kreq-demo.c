/*
 * kreq-demo — what the foundation does, end to end over the Kafka protocol.
 *
 * Signs a handful of requests with the key file's signing key, produces them
 * to a topic, consumes them back and opens each as a worker would: the good
 * ones verify; a tampered one, one signed with an unknown key and one past
 * its deadline are refused with their specific errors. Used by
 * scripts/demo.sh against the kreq-mockcluster process until the client and
 * kreqd exist.
 *
 * Usage: kreq-demo --bootstrap HOST:PORT --keyfile PATH
 * A missing key file is created with a new Ed25519 key (mode 0600).
 */
#include <unistd.h>
#include <getopt.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uuid/uuid.h>

#include "common/conf.h"
#include "common/internal.h"
#include "proto/envelope.h"

#define TOPIC   "kreq.demo.requests"
#define N_CASES 5

typedef struct demo_case {
	const char *label;
	uint8_t *buf;
	size_t len;
} demo_case_t;

static kreq__limits_t lim;

static int seal(kreq_keyring_t *kr, const char *method, int64_t issued, int64_t deadline,
                demo_case_t *c)
{
	uuid_t id;
	uuid_generate_random(id);
	Kreq__Request r = KREQ__REQUEST__INIT;
	r.correlation_id = (ProtobufCBinaryData){16, id};
	r.idempotency_key = (ProtobufCBinaryData){16, id};
	r.method = (char *)method;
	r.payload = (ProtobufCBinaryData){13, (uint8_t *)"{\"n\": 42}    "};
	r.reply_topic = "kreq.reply.demo";
	r.issued_at_ms = issued;
	r.deadline_ms = deadline;
	r.attempt = 1;
	r.client_id = "kreq-demo";
	char err[256];
	int rc = kreq__envelope_seal(kr, &lim, KREQ__KIND_REQUEST, &r.base, &c->buf, &c->len, err,
	                             sizeof(err));
	if (rc)
		fprintf(stderr, "kreq-demo: seal: %s\n", err);
	return rc;
}

static int build_cases(kreq_keyring_t *kr, demo_case_t *cases)
{
	int64_t now = kreq__now_ms();
	cases[0].label = "valid request (demo.echo)";
	cases[1].label = "valid request (demo.sum)";
	cases[2].label = "tampered payload";
	cases[3].label = "signed with an unknown key";
	cases[4].label = "replayed after its deadline";
	if (seal(kr, "demo.echo", now, now + 30000, &cases[0]) ||
	    seal(kr, "demo.sum", now, now + 30000, &cases[1]) ||
	    seal(kr, "demo.echo", now, now + 30000, &cases[2]) ||
	    seal(kr, "demo.echo", now - 2000, now - 1000, &cases[4]))
		return 1;
	uint8_t *p = memmem(cases[2].buf, cases[2].len, "42", 2);
	if (p)
		p[0] = '9'; /* an attacker raises the number in flight */
	kreq_keyring_t *rogue = kreq_keyring_new();
	uint8_t key[32];
	randombytes_buf(key, sizeof(key));
	int rc = kreq_keyring_add(rogue, "rogue-key", KREQ_KEY_HMAC_SHA256, key, 32, NULL, 0) ||
	         kreq_keyring_set_signing_key(rogue, "rogue-key") ||
	         seal(rogue, "demo.echo", now, now + 30000, &cases[3]);
	kreq_keyring_release(rogue);
	return rc;
}

static rd_kafka_t *client(rd_kafka_type_t type, const char *bootstrap)
{
	char err[512];
	rd_kafka_conf_t *c = rd_kafka_conf_new();
	rd_kafka_conf_set(c, "bootstrap.servers", bootstrap, err, sizeof(err));
	if (type == RD_KAFKA_CONSUMER) {
		rd_kafka_conf_set(c, "group.id", "kreq-demo", err, sizeof(err));
		rd_kafka_conf_set(c, "auto.offset.reset", "earliest", err, sizeof(err));
	}
	rd_kafka_t *rk = rd_kafka_new(type, c, err, sizeof(err));
	if (!rk)
		fprintf(stderr, "kreq-demo: %s\n", err);
	return rk;
}

static int produce_all(const char *bootstrap, demo_case_t *cases)
{
	rd_kafka_t *p = client(RD_KAFKA_PRODUCER, bootstrap);
	if (!p)
		return 1;
	for (int i = 0; i < N_CASES; i++)
		if (rd_kafka_producev(p, RD_KAFKA_V_TOPIC(TOPIC), RD_KAFKA_V_PARTITION(0),
		                      RD_KAFKA_V_VALUE(cases[i].buf, cases[i].len),
		                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END))
			fprintf(stderr, "kreq-demo: produce failed\n");
	int rc = rd_kafka_flush(p, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR ? 0 : 1;
	rd_kafka_destroy(p);
	return rc;
}

static void print_verdict(int i, const char *label, kreq_keyring_t *kr, const rd_kafka_message_t *m)
{
	kreq__opened_t o;
	char err[256] = "";
	int rc =
	    kreq__envelope_open(kr, &lim, kreq__now_ms(), m->payload, m->len, &o, err, sizeof(err));
	if (rc == KREQ_OK) {
		printf("  %d. %-30s ACCEPTED  method=%s key=%s\n", i + 1, label, o.u.req->method,
		       o.key_id);
		kreq__opened_clear(&o);
	} else {
		printf("  %d. %-30s REFUSED   %s (%s)\n", i + 1, label, kreq_err_name(rc), err);
	}
}

static int consume_all(const char *bootstrap, kreq_keyring_t *kr, demo_case_t *cases)
{
	rd_kafka_t *c = client(RD_KAFKA_CONSUMER, bootstrap);
	if (!c)
		return 1;
	rd_kafka_topic_partition_list_t *tp = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(tp, TOPIC, 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
	rd_kafka_assign(c, tp);
	rd_kafka_topic_partition_list_destroy(tp);
	int seen = 0;
	int64_t give_up = kreq__now_ms() + 15000;
	while (seen < N_CASES && kreq__now_ms() < give_up) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 200);
		if (!m)
			continue;
		if (!m->err) {
			print_verdict(seen, cases[seen].label, kr, m);
			seen++;
		}
		rd_kafka_message_destroy(m);
	}
	rd_kafka_consumer_close(c);
	rd_kafka_destroy(c);
	if (seen != N_CASES)
		fprintf(stderr, "kreq-demo: consumed %d of %d records\n", seen, N_CASES);
	return seen == N_CASES ? 0 : 1;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {{"bootstrap", required_argument, 0, 'b'},
	                                     {"keyfile", required_argument, 0, 'k'},
	                                     {"help", no_argument, 0, 'h'},
	                                     {0, 0, 0, 0}};
	const char *bootstrap = NULL, *keyfile = NULL;
	for (int ch; (ch = getopt_long(argc, argv, "b:k:h", opts, NULL)) != -1;) {
		if (ch == 'b')
			bootstrap = optarg;
		else if (ch == 'k')
			keyfile = optarg;
		else {
			fprintf(ch == 'h' ? stdout : stderr,
			        "usage: kreq-demo --bootstrap HOST:PORT --keyfile PATH\n");
			return ch == 'h' ? 0 : 2;
		}
	}
	if (!bootstrap || !keyfile) {
		fprintf(stderr, "usage: kreq-demo --bootstrap HOST:PORT --keyfile PATH\n");
		return 2;
	}
	kreq_conf_t *conf = kreq_conf_new();
	kreq__limits_from_conf(&lim, conf);
	kreq_conf_destroy(conf);
	char err[512];
	if (access(keyfile, F_OK) != 0) {
		if (kreq_keyring_generate_file(keyfile, NULL, "demo-ed25519-1", KREQ_KEY_ED25519,
		                               err, sizeof(err)) != KREQ_OK) {
			fprintf(stderr, "kreq-demo: %s\n", err);
			return 1;
		}
		printf("generated key file %s (Ed25519, mode 0600)\n", keyfile);
	}
	kreq_keyring_t *kr = kreq_keyring_new();
	if (kreq_keyring_load_file(kr, keyfile, err, sizeof(err)) != KREQ_OK) {
		fprintf(stderr, "kreq-demo: %s\n", err);
		kreq_keyring_release(kr);
		return 1;
	}
	demo_case_t cases[N_CASES] = {0};
	printf("kreq demo: signing %d requests with key %s, sending them through Kafka at %s\n",
	       N_CASES, kreq_keyring_signing_key(kr), bootstrap);
	int rc = build_cases(kr, cases) || produce_all(bootstrap, cases) ||
	         consume_all(bootstrap, kr, cases);
	for (int i = 0; i < N_CASES; i++)
		free(cases[i].buf);
	kreq_keyring_release(kr);
	return rc;
}
