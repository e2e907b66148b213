/*
 * main.c — `kreq`, the kreq command line: dispatch to a subcommand.
 *
 * Design: `kreq [--help|--version] <subcommand> [options]`. main() parses
 * only the global options (stopping at the first non-option, so a
 * subcommand's own options are left to it), then calls the subcommand's entry
 * point with argv shifted so that argv[0] is the subcommand's name. Exit
 * codes are the ones of cli.h, listed in the help text below and in
 * docs/cli.md.
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

#ifndef KREQ_VERSION
#define KREQ_VERSION "unknown"
#endif

struct subcommand {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *summary;
};

static const struct subcommand subcommands[] = {
    {"call", cli_call, "call a remote method and print its reply"},
    {"tail", cli_tail, "print and verify the envelopes in a topic"},
    {"pending", cli_pending, "pending calls of a live client, or outstanding requests in Kafka"},
    {"stats", cli_stats, "print a running client's metrics (admin socket)"},
    {"keygen", cli_keygen, "generate a signing key file"},
    {"dev", cli_dev, "run an in-memory Kafka cluster for development"},
    {"dead", cli_dead, "list, show or replay requests taken out of service (poison)"},
};

#define N_SUBCOMMANDS (sizeof(subcommands) / sizeof(subcommands[0]))

static void usage(FILE *out)
{
	fputs("usage: kreq [--help] [--version] <subcommand> [options] [arguments]\n"
	      "\n"
	      "Request/reply RPC over Apache Kafka: call methods, inspect topics and\n"
	      "running clients, manage keys.\n"
	      "\n"
	      "Subcommands:\n",
	      out);
	for (size_t i = 0; i < N_SUBCOMMANDS; i++)
		fprintf(out, "  %-9s %s\n", subcommands[i].name, subcommands[i].summary);
	fputs("\n"
	      "Run 'kreq <subcommand> --help' (or 'kreq help <subcommand>') for its\n"
	      "options. Output is plain text; --json gives one JSON document per line\n"
	      "for scripts. No colour, ever.\n"
	      "\n"
	      "Exit status:\n"
	      "  0  success\n"
	      "  1  operational error (cannot connect, timed out, unreadable file, ...)\n"
	      "  2  usage error (bad arguments)\n"
	      "  3  the remote side answered with an error (call rejected or failed,\n"
	      "     non-zero reply status, admin socket refused the command)\n"
	      "  4  verification failure (tail, dead: a record did not verify)\n"
	      "\n"
	      "Documentation: docs/cli.md\n",
	      out);
}

static const struct subcommand *find(const char *name)
{
	for (size_t i = 0; i < N_SUBCOMMANDS; i++)
		if (strcmp(subcommands[i].name, name) == 0)
			return &subcommands[i];
	return NULL;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {{"help", no_argument, NULL, 'h'},
	                                     {"version", no_argument, NULL, 'V'},
	                                     {NULL, 0, NULL, 0}};
	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, "+:hV", opts, NULL)) != -1) {
		if (c == 'h') {
			usage(stdout);
			return CLI_EXIT_OK;
		}
		if (c == 'V') {
			printf("kreq %s\n", KREQ_VERSION);
			return CLI_EXIT_OK;
		}
		fprintf(stderr, "kreq: unknown option '%s'\nTry 'kreq --help'.\n",
		        argv[optind - 1]);
		return CLI_EXIT_USAGE;
	}
	if (optind >= argc) {
		fputs("kreq: missing subcommand\n", stderr);
		usage(stderr);
		return CLI_EXIT_USAGE;
	}
	if (strcmp(argv[optind], "help") == 0) { /* kreq help [subcommand] */
		if (optind + 1 >= argc) {
			usage(stdout);
			return CLI_EXIT_OK;
		}
		const struct subcommand *sub = find(argv[optind + 1]);
		if (sub == NULL) {
			fprintf(stderr, "kreq: unknown subcommand '%s'\nTry 'kreq --help'.\n",
			        argv[optind + 1]);
			return CLI_EXIT_USAGE;
		}
		static char help_opt[] = "--help";
		char *help_argv[] = {argv[optind + 1], help_opt, NULL};
		optind = 0;
		return sub->run(2, help_argv);
	}
	const struct subcommand *sub = find(argv[optind]);
	if (sub == NULL) {
		fprintf(stderr, "kreq: unknown subcommand '%s'\nTry 'kreq --help'.\n",
		        argv[optind]);
		return CLI_EXIT_USAGE;
	}
	int sub_argc = argc - optind;
	char **sub_argv = argv + optind;
	optind = 0; /* glibc: full re-initialisation for the subcommand's getopt_long */
	return sub->run(sub_argc, sub_argv);
}
