/*
 * keygen.c — `kreq keygen`: generate a key file.
 *
 * A thin wrapper around kreq_keyring_generate_file(), which does the real
 * work (random key, file created 0600 with O_EXCL so nothing is ever
 * overwritten, public half 0644 for Ed25519). This file only validates the
 * arguments, maps the library's errors to exit codes (bad id or type: usage
 * error; file exists or cannot be written: operational error) and reports
 * what was written. Key material is never printed.
 */
#include <getopt.h>
#include <string.h>

#include "cli/cli.h"
#include "kreq/error.h"
#include "kreq/keyring.h"

#define SUB "keygen"

struct keygen_opts {
	const char *type_name, *id, *out, *public_path;
	kreq_key_type_t type;
	bool json;
};

static void usage(FILE *out)
{
	fputs("usage: kreq keygen --type hmac-sha256|ed25519 --id KEYID --out PATH\n"
	      "                   [--public PATH] [--json]\n"
	      "\n"
	      "Generate a new random key and write a key file (docs/protocol.md, \"Key\n"
	      "file\") naming it the signing key. The file is created with mode 0600;\n"
	      "an existing file is never overwritten (exit 1).\n"
	      "\n"
	      "  --type TYPE     hmac-sha256 (shared secret) or ed25519 (key pair)\n"
	      "  --id KEYID      key id: 1..64 of A-Z a-z 0-9 . _ -\n"
	      "  --out PATH      the key file to create (secret; mode 0600)\n"
	      "  --public PATH   ed25519 only: also write the verify-only public key\n"
	      "                  file (mode 0644) for the other side\n"
	      "  --json          print what was written as one JSON object\n"
	      "  -h, --help      show this help\n"
	      "\n"
	      "Exit status: 0 written, 1 file exists or cannot be written, 2 usage.\n",
	      out);
}

static int parse(int argc, char **argv, struct keygen_opts *o)
{
	static const struct option opts[] = {{"type", required_argument, NULL, 't'},
	                                     {"id", required_argument, NULL, 'i'},
	                                     {"out", required_argument, NULL, 'o'},
	                                     {"public", required_argument, NULL, 'p'},
	                                     {"json", no_argument, NULL, 'j'},
	                                     {"help", no_argument, NULL, 'h'},
	                                     {NULL, 0, NULL, 0}};
	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case 't':
			o->type_name = optarg;
			break;
		case 'i':
			o->id = optarg;
			break;
		case 'o':
			o->out = optarg;
			break;
		case 'p':
			o->public_path = optarg;
			break;
		case 'j':
			o->json = true;
			break;
		case 'h':
			usage(stdout);
			return CLI_EXIT_OK;
		default:
			return cli_getopt_error(SUB, argv, c);
		}
	}
	return -1;
}

static bool key_id_valid(const char *id)
{
	size_t n = strlen(id);
	return n >= 1 && n <= KREQ_KEY_ID_MAX &&
	       strspn(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

static int validate(int argc, char **argv, struct keygen_opts *o)
{
	if (optind < argc)
		return cli_usage_error(SUB, "unexpected argument '%s'", argv[optind]);
	if (o->type_name == NULL || o->id == NULL || o->out == NULL)
		return cli_usage_error(SUB, "--type, --id and --out are required");
	if (!key_id_valid(o->id))
		return cli_usage_error(SUB, "invalid key id '%s': 1..%d of A-Z a-z 0-9 . _ -",
		                       o->id, KREQ_KEY_ID_MAX);
	if (strcmp(o->type_name, "hmac-sha256") == 0)
		o->type = KREQ_KEY_HMAC_SHA256;
	else if (strcmp(o->type_name, "ed25519") == 0)
		o->type = KREQ_KEY_ED25519;
	else
		return cli_usage_error(SUB, "--type must be hmac-sha256 or ed25519, not '%s'",
		                       o->type_name);
	if (o->public_path != NULL && o->type != KREQ_KEY_ED25519)
		return cli_usage_error(SUB, "--public is only for ed25519 keys");
	if (o->public_path != NULL && strcmp(o->public_path, o->out) == 0)
		return cli_usage_error(SUB, "--public and --out must be different files");
	return -1;
}

static int report(const struct keygen_opts *o)
{
	if (o->json) {
		json_t *j = json_pack("{s:s, s:s, s:s, s:s*}", "key_id", o->id, "type",
		                      o->type_name, "path", o->out, "public_path", o->public_path);
		return cli_print_json(SUB, j);
	}
	printf("wrote %s key '%s' to %s (mode 0600, signing key; keep it secret)\n", o->type_name,
	       o->id, o->out);
	if (o->public_path != NULL)
		printf("wrote ed25519-public key '%s' to %s (mode 0644, verify only; for the "
		       "other side)\n",
		       o->id, o->public_path);
	return CLI_EXIT_OK;
}

int cli_keygen(int argc, char **argv)
{
	struct keygen_opts o = {0};
	int rc = parse(argc, argv, &o);
	if (rc < 0)
		rc = validate(argc, argv, &o);
	if (rc >= 0)
		return rc;
	char err[512];
	int kerr = kreq_keyring_generate_file(o.out, o.public_path, o.id, o.type, err, sizeof(err));
	if (kerr == KREQ_EINVAL)
		return cli_usage_error(SUB, "%s", err);
	if (kerr == KREQ_EEXIST)
		return cli_fail(CLI_EXIT_FAIL, SUB, "refusing to overwrite an existing file: %s",
		                err);
	if (kerr != KREQ_OK)
		return cli_fail(CLI_EXIT_FAIL, SUB, "cannot write the key file: %s (%s)", err,
		                kreq_err_name(kerr));
	return report(&o);
}
