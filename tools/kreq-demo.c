/*
 * kreq-demo — the client half of scripts/demo.sh: a burst of calls to the
 * built-in handlers of two kreqd replicas, showing each way a call ends.
 *
 *   - 24 calls to demo.echo, spread over both replicas: replies;
 *   - one demo.sleep of 3 s with a 1 s timeout: KREQ_ETIMEDOUT;
 *   - one demo.sleep of 5 s cancelled after 300 ms: KREQ_ECANCELED at once,
 *     and the worker's handler sees the cancellation and stops;
 *   - demo.fail: a handler status;
 *   - one operation with the idempotency key "order-42", called, then called
 *     again as a restarted client would retry it: the second reply comes
 *     from the workers' dedup store, the handler ran once;
 * and, while the slow calls are in flight, `kreq pending` on this client's
 * admin socket. Prints a summary; exits 0 only if every call ended as
 * expected.
 *
 * Usage: kreq-demo --bootstrap HOST:PORT --keyfile PATH --admin-socket PATH
 *                  [--kreq PATH-TO-kreq-CLI]
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kreq/client.h"
#include "kreq/error.h"

#define N_ECHO 24

static const char *bootstrap, *keyfile, *admin_socket, *kreq_cli = "kreq";
static int failures;

static void expect(const char *what, bool ok)
{
	printf("  %-64s %s\n", what, ok ? "ok" : "UNEXPECTED");
	failures += !ok;
}

static kreq_future_t *call(kreq_client_t *c, const char *method, const char *payload,
                           int64_t timeout_ms, const char *idem)
{
	kreq_call_opts_t *o = kreq_call_opts_new();
	kreq_call_opts_set_timeout(o, timeout_ms);
	if (idem)
		kreq_call_opts_set_idempotency_key(o, idem, strlen(idem));
	kreq_future_t *f = NULL;
	int rc = kreq_client_call(c, method, payload, strlen(payload), o, &f);
	kreq_call_opts_destroy(o);
	if (rc) {
		fprintf(stderr, "kreq-demo: call %s: %s\n", method, kreq_strerror(rc));
		exit(1);
	}
	return f;
}

static void pause_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static kreq_client_t *make_client(void)
{
	char err[512];
	kreq_conf_t *conf = kreq_conf_new();
	kreq_keyring_t *kr = kreq_keyring_new();
	if (kreq_keyring_load_file(kr, keyfile, err, sizeof(err))) {
		fprintf(stderr, "kreq-demo: %s\n", err);
		exit(1);
	}
	const char *kv[][2] = {{"kafka.bootstrap.servers", bootstrap},
	                       {"client.id", "demo-client"},
	                       {"admin.socket", admin_socket},
	                       {"log.level", "3"}};
	for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++)
		if (kreq_conf_set(conf, kv[i][0], kv[i][1], err, sizeof(err))) {
			fprintf(stderr, "kreq-demo: %s: %s\n", kv[i][0], err);
			exit(1);
		}
	kreq_client_t *c = kreq_client_new(conf, kr, err, sizeof(err));
	kreq_conf_destroy(conf);
	kreq_keyring_release(kr);
	if (!c) {
		fprintf(stderr, "kreq-demo: %s\n", err);
		exit(1);
	}
	return c;
}

static void echo_burst(kreq_client_t *c)
{
	kreq_future_t *f[N_ECHO];
	char payload[32];
	for (int i = 0; i < N_ECHO; i++) {
		snprintf(payload, sizeof(payload), "hello %d", i);
		f[i] = call(c, "demo.echo", payload, 10000, NULL);
	}
	kreq_future_wait_all(f, N_ECHO, 20000);
	int ok = 0;
	for (int i = 0; i < N_ECHO; i++) {
		size_t len;
		const char *p = kreq_future_payload(f[i], &len);
		snprintf(payload, sizeof(payload), "hello %d", i);
		ok += kreq_future_err(f[i]) == KREQ_OK && len == strlen(payload) &&
		      !memcmp(p, payload, len);
		kreq_future_release(f[i]);
	}
	char what[80];
	snprintf(what, sizeof(what), "%d echo calls answered with their payload", ok);
	expect(what, ok == N_ECHO);
}

static void slow_calls(kreq_client_t *c)
{
	kreq_future_t *late = call(c, "demo.sleep", "3000", 1000, NULL);
	kreq_future_t *cancelled = call(c, "demo.sleep", "5000", 10000, NULL);
	pause_ms(300);
	printf("\n$ kreq pending --socket %s   (while two slow calls are in flight)\n",
	       admin_socket);
	fflush(stdout);
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "%s pending --socket %s", kreq_cli, admin_socket);
	if (system(cmd) != 0)
		expect("kreq pending showed the pending calls", false);
	printf("\n");
	kreq_future_cancel(cancelled);
	expect("sleep 5 s, cancelled after 300 ms: KREQ_ECANCELED at once",
	       kreq_future_err(cancelled) == KREQ_ECANCELED);
	kreq_future_wait(late, 5000);
	expect("sleep 3 s with a 1 s timeout: KREQ_ETIMEDOUT",
	       kreq_future_err(late) == KREQ_ETIMEDOUT);
	kreq_future_release(late);
	kreq_future_release(cancelled);
}

static void fail_and_dedup(kreq_client_t *c)
{
	kreq_future_t *f = call(c, "demo.fail", "503", 10000, NULL);
	kreq_future_wait(f, 15000);
	expect("demo.fail: the handler's status 503 and error text",
	       kreq_future_err(f) == KREQ_OK && kreq_future_status(f) == 503);
	kreq_future_release(f);

	f = call(c, "demo.echo", "charge 100", 10000, "order-42");
	kreq_future_wait(f, 15000);
	bool first = kreq_future_err(f) == KREQ_OK && !kreq_future_from_dedup(f);
	kreq_future_release(f);
	f = call(c, "demo.echo", "charge 100", 10000, "order-42");
	kreq_future_wait(f, 15000);
	expect("order-42 called: handler ran", first);
	expect("order-42 retried (same idempotency key): from the dedup store",
	       kreq_future_err(f) == KREQ_OK && kreq_future_from_dedup(f));
	kreq_future_release(f);
	f = call(c, "demo.echo", "charge 999", 10000, "order-42");
	kreq_future_wait(f, 15000);
	expect("order-42 reused with another payload: refused (status 6)",
	       kreq_future_err(f) == KREQ_EREJECTED && kreq_future_status(f) == 6);
	kreq_future_release(f);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {{"bootstrap", required_argument, NULL, 'b'},
	                                     {"keyfile", required_argument, NULL, 'k'},
	                                     {"admin-socket", required_argument, NULL, 'a'},
	                                     {"kreq", required_argument, NULL, 'K'},
	                                     {NULL, 0, NULL, 0}};
	int ch;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'b':
			bootstrap = optarg;
			break;
		case 'k':
			keyfile = optarg;
			break;
		case 'a':
			admin_socket = optarg;
			break;
		case 'K':
			kreq_cli = optarg;
			break;
		default:
			return 2;
		}
	}
	if (!bootstrap || !keyfile || !admin_socket) {
		fprintf(stderr, "usage: kreq-demo --bootstrap HOST:PORT --keyfile PATH "
		                "--admin-socket PATH [--kreq PATH]\n");
		return 2;
	}
	kreq_client_t *c = make_client();
	printf("client demo-client: calling demo.* on the kreqd replicas\n");
	echo_burst(c);
	slow_calls(c);
	fail_and_dedup(c);
	char *metrics = NULL;
	kreq_client_metrics_text(c, &metrics);
	printf("\nclient outcomes (kreq_client_outcomes_total):\n");
	for (char *line = strtok(metrics, "\n"); line; line = strtok(NULL, "\n"))
		if (!strncmp(line, "kreq_client_outcomes_total{", 27) &&
		    strcmp(strrchr(line, ' ') + 1, "0") != 0)
			printf("  %s\n", line);
	free(metrics);
	kreq_client_destroy(c);
	printf("\n%s\n",
	       failures ? "demo: SOMETHING WENT WRONG" : "demo: every call ended as expected");
	return failures ? 1 : 0;
}
