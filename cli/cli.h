/*
 * cli.h — shared pieces of the `kreq` command line (cli/).
 *
 * Design: one file per subcommand (keygen.c, tail.c, call.c, pending.c,
 * stats.c, dev.c), each exporting one `cli_<name>(argc, argv)` entry point
 * that main.c dispatches to with argv[0] set to the subcommand's name. Each
 * entry point parses its own options with getopt_long, prints its own --help
 * and returns one of the exit codes below; they never call exit(). What more
 * than one subcommand needs (option errors, key files, signals, admin socket,
 * encodings) lives in common.c so that every error reads the same way:
 *
 *     kreq <sub>: <what failed>: <cause>
 *
 * Output is plain text without colour; --json gives machine-readable output
 * on stdout. Errors and diagnostics always go to stderr.
 */
#ifndef KREQ_CLI_H
#define KREQ_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>

#include "kreq/keyring.h"

/* Exit codes (documented in `kreq --help` and docs/cli.md). */
enum cli_exit {
	CLI_EXIT_OK = 0,     /* success */
	CLI_EXIT_FAIL = 1,   /* operational error: connect, timeout, unreadable file */
	CLI_EXIT_USAGE = 2,  /* bad arguments */
	CLI_EXIT_REMOTE = 3, /* the remote side answered with an error */
	CLI_EXIT_VERIFY = 4, /* verification failure */
};

/* Subcommands: argv[0] is the subcommand name. */
int cli_keygen(int argc, char **argv);
int cli_tail(int argc, char **argv);
int cli_call(int argc, char **argv);
int cli_pending(int argc, char **argv);
int cli_stats(int argc, char **argv);
int cli_dev(int argc, char **argv);
int cli_dead(int argc, char **argv);

/* Prints "kreq <sub>: <message>" and a hint to --help on stderr; returns
 * CLI_EXIT_USAGE. */
int cli_usage_error(const char *sub, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prints "kreq <sub>: <message>" on stderr and returns code. */
int cli_fail(int code, const char *sub, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The usage error for getopt_long's return value c (':' missing value,
 * '?' unknown option), with optind/optopt as getopt_long left them. */
int cli_getopt_error(const char *sub, char **argv, int c);

/* Strict decimal integer in [min, max]. */
bool cli_parse_long(const char *s, long min, long max, long *out);

/* Loads a key file into a new keyring (*out). Returns CLI_EXIT_OK or
 * CLI_EXIT_FAIL with the cause on stderr. */
int cli_load_keyring(const char *sub, const char *path, kreq_keyring_t **out);

/* Blocks SIGINT and SIGTERM in this thread (and so in every thread created
 * afterwards, librdkafka's included) and returns a signalfd that becomes
 * readable when one arrives; -1 on error (message printed). */
int cli_signals_block(const char *sub);

/* true if SIGINT or SIGTERM has arrived on sigfd (consumes it). */
bool cli_signalled(int sigfd);

/* Lowercase hex of n bytes into out (2n + 1 bytes). */
void cli_hex(const uint8_t *b, size_t n, char *out);

/* true if b is valid UTF-8 without control characters other than tab,
 * newline and carriage return: safe to print as text. */
bool cli_is_text(const uint8_t *b, size_t n);

/* Standard base64 (with padding) of b in a new malloc'd string; NULL if out
 * of memory. */
char *cli_base64(const uint8_t *b, size_t n);

/* Sends cmd ("pending\n", "metrics\n") to the client admin socket at path
 * and reads the answer until EOF into a new malloc'd string (*out). Returns
 * CLI_EXIT_OK, CLI_EXIT_USAGE (path too long) or CLI_EXIT_FAIL (cause
 * printed). */
int cli_admin_query(const char *sub, const char *path, const char *cmd, char **out);

/* If text is a JSON object {"error": "..."} (what the admin socket answers
 * to a command it refuses), prints it and returns CLI_EXIT_REMOTE; else -1. */
int cli_admin_refused(const char *sub, const char *text);

/* Prints j compactly on one line of stdout and frees it. CLI_EXIT_OK or
 * CLI_EXIT_FAIL (out of memory, stdout unwritable). */
int cli_print_json(const char *sub, json_t *j);

/* A Kafka consumer with the n name/value settings in props, its main queue
 * redirected to the consumer queue (*out). CLI_EXIT_OK, CLI_EXIT_USAGE (a
 * setting librdkafka refuses) or CLI_EXIT_FAIL; the cause is printed. */
int cli_consumer_new(const char *sub, const char *const (*props)[2], size_t n, rd_kafka_t **out);

/* One call through a kreq client (call.c), for `kreq call` and
 * `kreq dead replay`: what to call and how. */
#define CLI_CALL_MAX_CONF 64
struct cli_call_opts {
	const char *sub; /* subcommand named in messages; NULL: "call" */
	const char *bootstrap, *keyfile, *idem, *prefix, *method, *payload_arg;
	const char *traceparent; /* NULL: none */
	long timeout_ms;         /* 0: request.timeout.ms */
	bool json;
	json_t *json_extra; /* borrowed: merged into the --json outcome */
	size_t n_conf;
	const char *conf[CLI_CALL_MAX_CONF]; /* "name=value" */
};

struct cli_payload {
	uint8_t *data;
	size_t len;
};

/* Starts a client, makes the call, waits for it (a signal on sigfd cancels
 * it), prints the outcome (text or --json) and deletes the client's own
 * reply topic. Returns the exit code of `kreq call`. */
int cli_call_run(const struct cli_call_opts *o, kreq_keyring_t *kr, const struct cli_payload *p,
                 int sigfd);

/* A reply status as words ("ok", "poison", "handler status", ...). */
const char *cli_status_name(int32_t s);

/* Milliseconds on the monotonic clock. */
int64_t cli_mono_ms(void);

/* A duration in ms as tables show it ("850ms", "1.2s", "3m04s"; negative
 * with a "-"). */
void cli_fmt_ms(int64_t ms, char *buf, size_t size);

#endif
