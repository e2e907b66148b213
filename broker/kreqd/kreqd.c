/*
 * kreqd.c — the kreq worker daemon: serves one service's methods with
 * built-in handlers and handler plugins (docs/operations.md).
 *
 *   kreqd --config FILE [--set NAME=VALUE]... [--check] [--log-format text|json]
 *
 * Design: main() does everything in order on the main thread — block the
 * signals, parse options, load the configuration (file, then --set), load
 * the key file, create the worker, register built-ins and plugins — and any
 * failure up to there is a configuration error (exit 2) logged with its
 * cause. --check stops there: it prints what would be served and exits
 * without touching Kafka. Otherwise it opens the admin socket and the HTTP
 * endpoint, starts the signal thread and calls kreq_worker_run() on the
 * main thread until a signal stops it or the loop fails (exit 1; 2 if
 * the failure is a configuration the worker refused).
 *
 * Signals: SIGTERM, SIGINT and SIGHUP are blocked before any thread starts
 * (librdkafka's, the handler pool, libmicrohttpd's all inherit the mask),
 * so only the signal thread receives them, through sigwaitinfo(), and it
 * may call anything: TERM/INT -> kreq_worker_stop(); HUP -> load
 * keyring.file into a new keyring and kreq_worker_set_keyring() (the old
 * one stays in use if that fails). At exit main wakes the thread with a
 * SIGTERM sent to that thread alone, after setting `quitting`.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker/kreqd/builtins.h"
#include "broker/kreqd/http.h"
#include "broker/kreqd/kreqd_admin.h"
#include "broker/kreqd/klog.h"
#include "broker/kreqd/plugins.h"
#include "common/conf.h"
#include "common/internal.h"
#include "kreq/keyring.h"
#include "kreq/worker.h"

#ifndef KREQ_VERSION
#define KREQ_VERSION "unknown"
#endif

/* Exit codes (documented in --help and docs/operations.md). */
enum { EXIT_STOPPED = 0, EXIT_RUNTIME = 1, EXIT_CONFIG = 2 };

#define MAX_SETS    256
#define MAX_PLUGINS 64

typedef struct options {
	const char *config;
	const char *sets[MAX_SETS]; /* "name=value" */
	size_t nsets;
	bool check;
	kreqd_log_format_t log_format;
} options_t;

typedef struct kreqd {
	kreq_conf_t *conf;
	const char *service, *keyfile;
	kreq_keyring_t *kr;
	kreq_worker_t *s;
	kreqd_builtins_t *builtins;
	kreqd_plugin_t *plugins[MAX_PLUGINS];
	size_t nplugins;
	size_t methods_end[MAX_PLUGINS]; /* methods registered once plugin i was initialised */
	size_t builtins_end;
	kreqd_http_t *http;
	kreq__adminsock_t *admin;
	atomic_int phase; /* kreqd_phase_t, for /healthz */
	pthread_t sig_thread;
	bool sig_started;
	atomic_bool quitting;
	char err[1024];
} kreqd_t;

/* ---- options ------------------------------------------------------------- */

static void usage(FILE *out)
{
	fputs("usage: kreqd --config FILE [--set NAME=VALUE]... [--check]\n"
	      "             [--log-format text|json]\n"
	      "\n"
	      "Serve the methods of one kreq service from Kafka: verify each signed\n"
	      "request, deduplicate it, run its handler (built-ins and plugins) and\n"
	      "publish the signed reply exactly once.\n"
	      "\n"
	      "  --config FILE        configuration file: \"name = value\" lines, '#'\n"
	      "                       comments (docs/CONFIGURATION.md). Needs service,\n"
	      "                       keyring.file, kafka.bootstrap.servers, and\n"
	      "                       kreqd.builtins and/or kreqd.plugins\n"
	      "  --set NAME=VALUE     set one property after the file (repeatable)\n"
	      "  --check              validate the configuration, key file and plugins\n"
	      "                       (loaded and initialised), print what would be\n"
	      "                       served, and exit without connecting to Kafka\n"
	      "  --log-format FORMAT  text (default): ts=... level=... fac=... msg=\"...\"\n"
	      "                       json: one JSON object per line\n"
	      "  -h, --help           show this help\n"
	      "  -V, --version        show the version\n"
	      "\n"
	      "Built-in handlers (kreqd.builtins), served as <service>.<name>:\n"
	      "  echo, sleep, fail, record (docs/operations.md)\n"
	      "\n"
	      "Signals: SIGTERM/SIGINT stop gracefully (in-flight requests finish\n"
	      "within worker.shutdown.grace.ms); SIGHUP reloads keyring.file.\n"
	      "\n"
	      "Exit status:\n"
	      "  0  stopped cleanly (signal), or --check found nothing wrong\n"
	      "  1  runtime error: Kafka unreachable or failing, an endpoint could not\n"
	      "     be opened, out of memory\n"
	      "  2  usage or configuration error: bad option, unreadable or invalid\n"
	      "     configuration, key file or plugin, a missing or misconfigured\n"
	      "     results topic\n",
	      out);
}

static int usage_error(const char *fmt, const char *arg)
{
	fputs("kreqd: ", stderr);
	fprintf(stderr, fmt, arg);
	fputs("\nTry 'kreqd --help'.\n", stderr);
	return EXIT_CONFIG;
}

/* -1 to go on, else the exit code. */
static int parse_options(int argc, char **argv, options_t *o)
{
	static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
	                                     {"set", required_argument, NULL, 's'},
	                                     {"check", no_argument, NULL, 'k'},
	                                     {"log-format", required_argument, NULL, 'l'},
	                                     {"help", no_argument, NULL, 'h'},
	                                     {"version", no_argument, NULL, 'V'},
	                                     {NULL, 0, NULL, 0}};
	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, ":hV", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			o->config = optarg;
			break;
		case 's':
			if (!strchr(optarg, '=') || optarg[0] == '=')
				return usage_error("--set needs NAME=VALUE, not '%s'", optarg);
			if (o->nsets == MAX_SETS)
				return usage_error("more than %s --set options", "256");
			o->sets[o->nsets++] = optarg;
			break;
		case 'k':
			o->check = true;
			break;
		case 'l':
			if (!kreqd_log_parse_format(optarg, &o->log_format))
				return usage_error("--log-format must be text or json, not '%s'",
				                   optarg);
			break;
		case 'h':
			usage(stdout);
			return EXIT_STOPPED;
		case 'V':
			printf("kreqd %s\n", KREQ_VERSION);
			return EXIT_STOPPED;
		case ':':
			return usage_error("option '%s' needs a value", argv[optind - 1]);
		default:
			return usage_error("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	if (!o->config)
		return usage_error("--config %s", "is required");
	return -1;
}

/* ---- configuration and keys ---------------------------------------------- */

static int fail(kreqd_t *k, int code, const char *what)
{
	kreqd_log(3, "%s: %s", what, k->err);
	return code;
}

static int apply_sets(kreqd_t *k, const options_t *o)
{
	for (size_t i = 0; i < o->nsets; i++) {
		char name[256];
		const char *eq = strchr(o->sets[i], '=');
		size_t n = (size_t)(eq - o->sets[i]);
		if (n >= sizeof(name)) {
			snprintf(k->err, sizeof(k->err), "property name too long: %.40s...",
			         o->sets[i]);
			return fail(k, EXIT_CONFIG, "--set");
		}
		memcpy(name, o->sets[i], n);
		name[n] = '\0';
		char why[512];
		int err = kreq_conf_set(k->conf, name, eq + 1, why, sizeof(why));
		if (err) {
			snprintf(k->err, sizeof(k->err), "%s (%s)", why, kreq_err_name(err));
			return fail(k, EXIT_CONFIG, "--set");
		}
	}
	return -1;
}

/* worker.poison.journal, when empty: <kreqd.state.dir or
 * $RUNTIME_DIRECTORY>/<service>.<client.id>.journal (none without either). */
static int default_journal(kreqd_t *k)
{
	if (*kreq__conf_str(k->conf, KREQ__P_WORKER_POISON_JOURNAL))
		return -1;
	const char *dir = kreq__conf_str(k->conf, KREQ__P_KREQD_STATE_DIR);
	if (!*dir)
		dir = getenv("RUNTIME_DIRECTORY");
	if (!dir || !*dir)
		return -1;
	char path[4200];
	snprintf(path, sizeof(path), "%s/%s.%s.journal", dir, k->service,
	         kreq__conf_str(k->conf, KREQ__P_CLIENT_ID));
	if (kreq_conf_set(k->conf, "worker.poison.journal", path, k->err, sizeof(k->err)))
		return fail(k, EXIT_CONFIG, "configuration");
	return -1;
}

static int load_config(kreqd_t *k, const options_t *o)
{
	if (!(k->conf = kreq_conf_new())) {
		snprintf(k->err, sizeof(k->err), "out of memory");
		return fail(k, EXIT_RUNTIME, "configuration");
	}
	kreq_conf_set_log_cb(k->conf, kreqd_log_cb, NULL);
	int err = kreq_conf_load_file(k->conf, o->config, k->err, sizeof(k->err));
	if (err)
		return fail(k, EXIT_CONFIG, "configuration");
	int rc = apply_sets(k, o);
	if (rc >= 0)
		return rc;
	kreqd_log_setup(o->log_format, (int)kreq__conf_int(k->conf, KREQ__P_LOG_LEVEL));
	k->service = kreq__conf_str(k->conf, KREQ__P_WORKER_SERVICE);
	k->keyfile = kreq__conf_str(k->conf, KREQ__P_KEYRING_FILE);
	const char *missing = !*k->service ? "service" : !*k->keyfile ? "keyring.file" : NULL;
	if (missing) {
		snprintf(k->err, sizeof(k->err), "%s is not set (in %s or with --set)", missing,
		         o->config);
		return fail(k, EXIT_CONFIG, "configuration");
	}
	return default_journal(k);
}

/* A new keyring from keyring.file, with signing.key.id applied if set.
 * Called by main and by the signal thread (SIGHUP), so it writes its
 * message to the caller's buffer. */
static int load_keyring(const kreqd_t *k, kreq_keyring_t **out, char *errstr, size_t n)
{
	kreq_keyring_t *kr = kreq_keyring_new();
	if (!kr)
		return kreq__err(errstr, n, KREQ_ENOMEM, "out of memory");
	char why[768];
	int err = kreq_keyring_load_file(kr, k->keyfile, why, sizeof(why));
	if (err) {
		kreq_keyring_release(kr);
		return kreq__err(errstr, n, err, "cannot load keyring.file: %s (%s)", why,
		                 kreq_err_name(err));
	}
	const char *sid = kreq__conf_str(k->conf, KREQ__P_SIGNING_KEY_ID);
	if (*sid && (err = kreq_keyring_set_signing_key(kr, sid)) != KREQ_OK) {
		kreq_keyring_release(kr);
		return kreq__err(errstr, n, err, "signing.key.id %s: %s in key file %s (%s)", sid,
		                 err == KREQ_ENOENT ? "no such key" : "cannot sign", k->keyfile,
		                 kreq_err_name(err));
	}
	if (!kreq_keyring_signing_key(kr)) {
		kreq_keyring_release(kr);
		return kreq__err(errstr, n, KREQ_ENOSIGNKEY,
		                 "key file %s names no signing key (replies are signed: add a "
		                 "`signing` line or set signing.key.id)",
		                 k->keyfile);
	}
	*out = kr;
	return KREQ_OK;
}

/* ---- the worker and its handlers ----------------------------------------- */

static size_t methods_count(const kreq_worker_t *s)
{
	return kreq_worker_method_count(s);
}

static int make_worker(kreqd_t *k, bool check)
{
	int err = load_keyring(k, &k->kr, k->err, sizeof(k->err));
	if (err)
		return fail(k, err == KREQ_ENOMEM ? EXIT_RUNTIME : EXIT_CONFIG, "keys");
	char why[512];
	if (!(k->s = kreq_worker_new(k->conf, k->kr, k->service, why, sizeof(why)))) {
		snprintf(k->err, sizeof(k->err), "%s", why);
		return fail(k, EXIT_CONFIG, "worker");
	}
	err = kreqd_builtins_new(kreq__conf_str(k->conf, KREQ__P_KREQD_BUILTINS),
	                         kreq__conf_str(k->conf, KREQ__P_KREQD_RECORD_FILE), !check,
	                         &k->builtins, k->err, sizeof(k->err));
	if (!err)
		err =
		    kreqd_builtins_register(k->builtins, k->s, k->service, k->err, sizeof(k->err));
	if (err)
		return fail(k, err == KREQ_EIO || err == KREQ_ENOMEM ? EXIT_RUNTIME : EXIT_CONFIG,
		            "built-ins");
	k->builtins_end = methods_count(k->s);
	return -1;
}

static int add_plugin(kreqd_t *k, const char *path)
{
	if (k->nplugins == MAX_PLUGINS) {
		snprintf(k->err, sizeof(k->err), "more than %d plugins", MAX_PLUGINS);
		return fail(k, EXIT_CONFIG, "kreqd.plugins");
	}
	kreqd_plugin_t *p;
	if (kreqd_plugin_open(path, &p, k->err, sizeof(k->err)))
		return fail(k, EXIT_CONFIG, "kreqd.plugins");
	k->plugins[k->nplugins] = p;
	int err = kreqd_plugin_init(p, k->s, k->err, sizeof(k->err));
	k->methods_end[k->nplugins++] = methods_count(k->s);
	return err ? fail(k, EXIT_CONFIG, "kreqd.plugins") : -1;
}

static int load_plugins(kreqd_t *k)
{
	char *list = strdup(kreq__conf_str(k->conf, KREQ__P_KREQD_PLUGINS)), *save = NULL;
	if (!list) {
		snprintf(k->err, sizeof(k->err), "out of memory");
		return fail(k, EXIT_RUNTIME, "kreqd.plugins");
	}
	int rc = -1;
	for (char *tok = strtok_r(list, ",", &save); tok && rc < 0;
	     tok = strtok_r(NULL, ",", &save)) {
		tok += strspn(tok, " \t");
		size_t n = strlen(tok);
		while (n > 0 && (tok[n - 1] == ' ' || tok[n - 1] == '\t'))
			tok[--n] = '\0';
		if (n > 0)
			rc = add_plugin(k, tok);
	}
	free(list);
	if (rc < 0 && methods_count(k->s) == 0) {
		snprintf(k->err, sizeof(k->err),
		         "nothing to serve: kreqd.builtins and kreqd.plugins register no method");
		rc = fail(k, EXIT_CONFIG, "configuration");
	}
	return rc;
}

/* ---- --check ------------------------------------------------------------- */

static void print_method(const kreqd_t *k, size_t i)
{
	const char *name = kreq_worker_method_name(k->s, i);
	if (i < k->builtins_end) {
		printf("  %-30s built-in\n", name);
		return;
	}
	size_t p = 0;
	while (p + 1 < k->nplugins && i >= k->methods_end[p])
		p++;
	printf("  %-30s plugin %s (%s)\n", name, kreqd_plugin_name(k->plugins[p]),
	       kreqd_plugin_path(k->plugins[p]));
}

static void print_check(const kreqd_t *k)
{
	const kreq_conf_t *c = k->conf;
	const kreq_worker_t *s = k->s;
	printf("kreqd --check: configuration, key file and plugins are valid\n");
	printf("service          %s\n", k->service);
	printf("requests topic   %s\n", kreq_worker_name(s, KREQ_WORKER_REQUESTS_TOPIC));
	printf("results topic    %s\n", kreq_worker_name(s, KREQ_WORKER_RESULTS_TOPIC));
	printf("consumer group   %s\n", kreq_worker_name(s, KREQ_WORKER_GROUP));
	printf("client.id        %s\n", kreq__conf_str(c, KREQ__P_CLIENT_ID));
	if (kreq_worker_name(s, KREQ_WORKER_TRANSACTIONAL_ID))
		printf("mode             transactional (transactional.id %s)\n",
		       kreq_worker_name(s, KREQ_WORKER_TRANSACTIONAL_ID));
	else
		printf("mode             light (at-least-once)\n");
	printf("keys             %zu from %s, signing key %s\n", kreq_keyring_count(k->kr),
	       k->keyfile, kreq_keyring_signing_key(k->kr));
	printf("methods          %zu\n", methods_count(s));
	for (size_t i = 0; i < methods_count(s); i++)
		print_method(k, i);
	int64_t port = kreq__conf_int(c, KREQ__P_KREQD_METRICS_PORT);
	if (port)
		printf("metrics          http://%s:%lld/metrics\n",
		       kreq__conf_str(c, KREQ__P_KREQD_METRICS_ADDRESS), (long long)port);
	else
		printf("metrics          disabled (kreqd.metrics.port = 0)\n");
	const char *adm = kreq__conf_str(c, KREQ__P_ADMIN_SOCKET);
	printf("admin socket     %s\n", *adm ? adm : "disabled");
}

/* ---- signals --------------------------------------------------------------- */

static void signal_set(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGHUP);
}

static void reload_keys(kreqd_t *k)
{
	char why[1024];
	kreq_keyring_t *kr = NULL;
	int err = load_keyring(k, &kr, why, sizeof(why));
	if (!err && (err = kreq_worker_set_keyring(k->s, kr)) != KREQ_OK)
		snprintf(why, sizeof(why), "the worker refused the keyring (%s)",
		         kreq_err_name(err));
	if (err)
		kreqd_log(3, "SIGHUP: keys not reloaded, the previous keys stay in use: %s", why);
	else
		kreqd_log(5, "SIGHUP: keys reloaded from %s (%zu keys, signing key %s)", k->keyfile,
		          kreq_keyring_count(kr), kreq_keyring_signing_key(kr));
	kreq_keyring_release(kr);
}

static void *signal_main(void *arg)
{
	kreqd_t *k = arg;
	sigset_t set;
	signal_set(&set);
	for (;;) {
		siginfo_t si;
		int sig = sigwaitinfo(&set, &si);
		if (atomic_load(&k->quitting))
			return NULL;
		if (sig == SIGHUP) {
			reload_keys(k);
		} else if (sig == SIGTERM || sig == SIGINT) {
			/* /healthz says "stopping" before the log does: whoever
			 * reads the log line may rely on it. */
			atomic_store(&k->phase, KREQD_STOPPING);
			kreqd_log(5,
			          "%s: stopping (in-flight requests may finish within "
			          "worker.shutdown.grace.ms)",
			          sig == SIGTERM ? "SIGTERM" : "SIGINT");
			kreq_worker_stop(k->s);
		}
	}
}

/* ---- serving ---------------------------------------------------------------- */

static int endpoint_exit(int err)
{
	return err == KREQ_ECONF || err == KREQ_EEXIST ? EXIT_CONFIG : EXIT_RUNTIME;
}

static int start_endpoints(kreqd_t *k)
{
	const char *adm = kreq__conf_str(k->conf, KREQ__P_ADMIN_SOCKET);
	int err = *adm ? kreqd_admin_start(adm, k->s, &k->admin, k->err, sizeof(k->err)) : 0;
	if (err)
		return fail(k, endpoint_exit(err), "admin socket");
	int port = (int)kreq__conf_int(k->conf, KREQ__P_KREQD_METRICS_PORT);
	const char *addr = kreq__conf_str(k->conf, KREQ__P_KREQD_METRICS_ADDRESS);
	err = port ? kreqd_http_start(addr, port, k->s, &k->phase, &k->http, k->err, sizeof(k->err))
	           : 0;
	if (err)
		return fail(k, endpoint_exit(err), "metrics endpoint");
	if (pthread_create(&k->sig_thread, NULL, signal_main, k) != 0) {
		snprintf(k->err, sizeof(k->err), "cannot start the signal thread");
		return fail(k, EXIT_RUNTIME, "signals");
	}
	pthread_setname_np(k->sig_thread, "kreqd:signals");
	k->sig_started = true;
	return -1;
}

static int serve(kreqd_t *k)
{
	int starting = KREQD_STARTING;
	if (!atomic_compare_exchange_strong(&k->phase, &starting, KREQD_SERVING))
		return EXIT_STOPPED; /* a signal asked to stop before the loop ran */
	kreqd_log(6, "serving %zu method(s) of service %s (kreqd %s)", methods_count(k->s),
	          k->service, KREQ_VERSION);
	int err = kreq_worker_run(k->s, k->err, sizeof(k->err));
	atomic_store(&k->phase, KREQD_STOPPING);
	if (!err) {
		kreqd_log(6, "stopped");
		return EXIT_STOPPED;
	}
	kreqd_log(3, "serving failed: %s (%s: %s)", k->err, kreq_err_name(err), kreq_strerror(err));
	return err == KREQ_ECONF ? EXIT_CONFIG : EXIT_RUNTIME;
}

/* Tears down in dependency order: nothing may use the worker once it is
 * destroyed, and no plugin code may run once its object is closed. */
static void shut_down(kreqd_t *k)
{
	if (k->sig_started) {
		atomic_store(&k->quitting, true);
		pthread_kill(k->sig_thread, SIGTERM);
		pthread_join(k->sig_thread, NULL);
	}
	kreqd_http_stop(k->http);
	kreq__adminsock_stop(k->admin);
	kreq_worker_destroy(k->s);
	for (size_t i = k->nplugins; i > 0; i--)
		kreqd_plugin_close(k->plugins[i - 1]);
	kreqd_builtins_destroy(k->builtins);
	kreq_keyring_release(k->kr);
	kreq_conf_destroy(k->conf);
}

static int run(kreqd_t *k, const options_t *o)
{
	int rc = load_config(k, o);
	if (rc < 0)
		rc = make_worker(k, o->check);
	if (rc < 0)
		rc = load_plugins(k);
	if (rc < 0 && o->check) {
		print_check(k);
		return fflush(stdout) == 0 ? EXIT_STOPPED : EXIT_RUNTIME;
	}
	if (rc < 0)
		rc = start_endpoints(k);
	if (rc < 0)
		rc = serve(k);
	return rc;
}

int main(int argc, char **argv)
{
	sigset_t set;
	signal_set(&set);
	int err = pthread_sigmask(SIG_BLOCK, &set, NULL);
	if (err) {
		fprintf(stderr, "kreqd: cannot block signals: %s\n", strerror(err));
		return EXIT_RUNTIME;
	}
	signal(SIGPIPE, SIG_IGN); /* a peer that hangs up is an error return, not a death */
	options_t o = {.log_format = KREQD_LOG_TEXT};
	int rc = parse_options(argc, argv, &o);
	if (rc >= 0)
		return rc;
	kreqd_log_setup(o.log_format, 6);
	kreqd_t *k = calloc(1, sizeof(*k));
	if (!k) {
		kreqd_log(3, "out of memory");
		return EXIT_RUNTIME;
	}
	atomic_init(&k->phase, KREQD_STARTING);
	rc = run(k, &o);
	shut_down(k);
	free(k);
	return rc;
}
