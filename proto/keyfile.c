/*
 * keyfile.c — reading and writing key files (format: docs/protocol.md).
 *
 *   kreq-keyring 1
 *   # comment
 *   key <id> hmac-sha256    <base64 of 32 bytes> [methods=m1,m2]
 *   key <id> ed25519        <base64 of 64 bytes> [methods=...]
 *   key <id> ed25519-public <base64 of 32 bytes> [methods=...]
 *   signing <id>
 *
 * Why the permission check is on the open file descriptor (fstat, not stat):
 * a check on the path could be raced by a rename between check and read.
 *
 * What is refused before a byte is parsed (read_file):
 *   - anything but a regular file. The open is non-blocking, so a FIFO (or
 *     a device) planted at the path is refused at once instead of blocking
 *     the worker's start or its SIGHUP reload for ever;
 *   - a file owned by anyone but the effective user or root, or writable by
 *     group or others: whoever can write the file chooses the keys that the
 *     worker trusts (a public key is as sensitive to tampering as a secret);
 *   - more than 1 MiB, a file that changes size while it is read, and any
 *     NUL byte (the parser works on C strings: a NUL used to end the file
 *     silently there, loading only the keys before it).
 * Symbolic links are followed on purpose: secret stores (Kubernetes secret
 * volumes, configuration management) publish key files through links that
 * are swapped atomically on rotation. The checks above apply to the file
 * finally opened, through its descriptor, so a link cannot lead past them.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "common/internal.h"
#include "proto/keyring_int.h"

#define KEYFILE_MAX_BYTES (1u << 20)
#define KEYFILE_MAGIC     "kreq-keyring"
#define MAX_TOKENS        8

typedef struct parse_ctx {
	const char *path;
	int lineno;
	bool has_secret;
	char signing[KREQ_KEY_ID_MAX + 1];
	char *errstr;
	size_t errstr_size;
} parse_ctx_t;

static int bad_line(parse_ctx_t *c, const char *why)
{
	return kreq__err(c->errstr, c->errstr_size, KREQ_EKEYFILE, "%s:%d: %s", c->path, c->lineno,
	                 why);
}

static int key_type_from_name(const char *s)
{
	if (!strcmp(s, "hmac-sha256"))
		return KREQ_KEY_HMAC_SHA256;
	if (!strcmp(s, "ed25519"))
		return KREQ_KEY_ED25519;
	if (!strcmp(s, "ed25519-public"))
		return KREQ_KEY_ED25519_PUBLIC;
	return -1;
}

static const char *key_type_name(kreq_key_type_t t)
{
	return t == KREQ_KEY_HMAC_SHA256 ? "hmac-sha256"
	       : t == KREQ_KEY_ED25519   ? "ed25519"
	                                 : "ed25519-public";
}

static int parse_key(parse_ctx_t *c, kreq_keyring_t *kr, char **tok, int ntok)
{
	if (ntok < 4 || ntok > 5)
		return bad_line(c, "expected: key <id> <type> <base64> [methods=a,b]");
	if (!kreq__key_id_valid(tok[1], strlen(tok[1])))
		return bad_line(c, "invalid key id (1..64 characters of A-Z a-z 0-9 . _ -)");
	int type = key_type_from_name(tok[2]);
	if (type < 0)
		return bad_line(c, "unknown key type (hmac-sha256, ed25519, ed25519-public)");
	uint8_t raw[KREQ_ED25519_SK_BYTES + 1];
	size_t raw_len = 0;
	if (sodium_base642bin(raw, sizeof(raw), tok[3], strlen(tok[3]), NULL, &raw_len, NULL,
	                      sodium_base64_VARIANT_ORIGINAL) != 0) {
		sodium_memzero(raw, sizeof(raw));
		return bad_line(c, "key material is not valid base64 of the right length");
	}
	char why[256];
	int err =
	    kreq_keyring_add(kr, tok[1], (kreq_key_type_t)type, raw, raw_len, why, sizeof(why));
	sodium_memzero(raw, sizeof(raw));
	if (err)
		return kreq__err(c->errstr, c->errstr_size,
		                 err == KREQ_EEXIST ? err : KREQ_EKEYFILE, "%s:%d: %s", c->path,
		                 c->lineno, why);
	if (type != KREQ_KEY_ED25519_PUBLIC)
		c->has_secret = true;
	if (ntok == 5) {
		if (strncmp(tok[4], "methods=", 8) != 0)
			return bad_line(c, "unknown key attribute (only methods=a,b)");
		if (kreq_keyring_set_methods(kr, tok[1], tok[4] + 8) != KREQ_OK)
			return bad_line(c, "invalid methods list");
	}
	return KREQ_OK;
}

static int parse_line(parse_ctx_t *c, kreq_keyring_t *kr, char *line)
{
	char *tok[MAX_TOKENS + 1];
	int ntok = 0;
	for (char *save = NULL, *t = strtok_r(line, " \t\r", &save); t;
	     t = strtok_r(NULL, " \t\r", &save)) {
		if (ntok == MAX_TOKENS)
			return bad_line(c, "too many fields");
		tok[ntok++] = t;
	}
	if (ntok == 0 || tok[0][0] == '#')
		return KREQ_OK;
	if (!strcmp(tok[0], "key"))
		return parse_key(c, kr, tok, ntok);
	if (!strcmp(tok[0], "signing")) {
		if (ntok != 2 || !kreq__key_id_valid(tok[1], strlen(tok[1])))
			return bad_line(c, "expected: signing <key id>");
		if (c->signing[0]) /* one signer: never "whichever line came last" */
			return bad_line(c,
			                "a second signing line (a key file names one signing key)");
		memcpy(c->signing, tok[1], strlen(tok[1]) + 1);
		return KREQ_OK;
	}
	return bad_line(c, "unknown directive (key, signing)");
}

/* The file behind fd may be used as a key file: a regular file of at most
 * KEYFILE_MAX_BYTES, owned by the effective user or root, not writable by
 * group or others. *private_mode: not accessible by group or others. */
static int check_file(int fd, const char *path, struct stat *st, bool *private_mode, char *errstr,
                      size_t errstr_size)
{
	if (fstat(fd, st) != 0)
		return kreq__err(errstr, errstr_size, KREQ_EIO, "%s: %s", path, strerror(errno));
	if (!S_ISREG(st->st_mode))
		return kreq__err(errstr, errstr_size, KREQ_EKEYFILE,
		                 "%s: not a regular file (a FIFO, device, socket or directory is "
		                 "never read as a key file)",
		                 path);
	if (st->st_uid != geteuid() && st->st_uid != 0)
		return kreq__err(errstr, errstr_size, KREQ_EKEYPERM,
		                 "%s: owned by uid %u, not by the effective user (uid %u) or root: "
		                 "its owner could choose the keys this process trusts",
		                 path, (unsigned)st->st_uid, (unsigned)geteuid());
	if (st->st_mode & 022)
		return kreq__err(errstr, errstr_size, KREQ_EKEYPERM,
		                 "%s: writable by group or others (chmod go-w): they could choose "
		                 "the keys this process trusts",
		                 path);
	if ((uint64_t)st->st_size > KEYFILE_MAX_BYTES)
		return kreq__err(errstr, errstr_size, KREQ_EKEYFILE, "%s: larger than %u bytes",
		                 path, KEYFILE_MAX_BYTES);
	*private_mode = (st->st_mode & 077) == 0;
	return KREQ_OK;
}

/* Reads exactly size bytes and then end of file into buf: 0, 1 if the file
 * holds fewer or more (it changed while being read), -1 (errno) if read
 * failed. */
static int read_exact(int fd, char *buf, size_t size)
{
	size_t got = 0;
	for (;;) {
		char extra;
		char *to = got < size ? buf + got : &extra;
		ssize_t n = read(fd, to, got < size ? size - got : 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0)
			return got == size ? 0 : 1;
		if (got == size)
			return 1; /* grew */
		got += (size_t)n;
	}
}

static int read_file(const char *path, char **buf, bool *private_mode, char *errstr,
                     size_t errstr_size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	if (fd < 0)
		return kreq__err(errstr, errstr_size, KREQ_EIO, "%s: %s", path, strerror(errno));
	struct stat st;
	int err = check_file(fd, path, &st, private_mode, errstr, errstr_size);
	size_t size = (size_t)st.st_size;
	if (!err && !(*buf = sodium_malloc(size + 1)))
		err = kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	int rc = err ? 0 : read_exact(fd, *buf, size);
	if (rc) {
		err = kreq__err(errstr, errstr_size, rc < 0 ? KREQ_EIO : KREQ_EKEYFILE, "%s: %s",
		                path, rc < 0 ? strerror(errno) : "changed size while being read");
		sodium_free(*buf);
	}
	close(fd);
	if (err)
		return err;
	(*buf)[size] = '\0';
	const char *nul = memchr(*buf, '\0', size);
	if (nul) {
		err = kreq__err(errstr, errstr_size, KREQ_EKEYFILE,
		                "%s: holds a NUL byte at offset %zu (a key file is text)", path,
		                (size_t)(nul - *buf));
		sodium_free(*buf);
	}
	return err;
}

static int parse_all(parse_ctx_t *c, kreq_keyring_t *kr, char *buf)
{
	bool seen_magic = false;
	for (char *line = buf, *next; line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		c->lineno++;
		if (!seen_magic) {
			char *t = line + strspn(line, " \t\r");
			if (*t == '#' || *t == '\0')
				continue;
			const char *rest = t + strlen(KEYFILE_MAGIC " 1");
			if (strncmp(t, KEYFILE_MAGIC " 1", strlen(KEYFILE_MAGIC " 1")) != 0 ||
			    rest[strspn(rest, " \t\r")] != '\0')
				return bad_line(c, "first line must be \"kreq-keyring 1\"");
			seen_magic = true;
			continue;
		}
		int err = parse_line(c, kr, line);
		if (err)
			return err;
	}
	if (!seen_magic)
		return kreq__err(c->errstr, c->errstr_size, KREQ_EKEYFILE,
		                 "%s: empty (no \"kreq-keyring 1\" line)", c->path);
	return KREQ_OK;
}

static int parse_into(parse_ctx_t *c, kreq_keyring_t *scratch, char *buf, bool private_mode)
{
	int err = parse_all(c, scratch, buf);
	if (err)
		return err;
	if (c->has_secret && !private_mode)
		return kreq__err(c->errstr, c->errstr_size, KREQ_EKEYPERM,
		                 "%s: holds secret keys but is accessible by group or others "
		                 "(chmod 600)",
		                 c->path);
	if (c->signing[0]) {
		err = kreq_keyring_set_signing_key(scratch, c->signing);
		if (err)
			return kreq__err(c->errstr, c->errstr_size, KREQ_EKEYFILE,
			                 "%s: signing key %s %s", c->path, c->signing,
			                 err == KREQ_ENOENT ? "is not in the file"
			                                    : "is a public key and cannot sign");
	}
	return KREQ_OK;
}

int kreq_keyring_load_file(kreq_keyring_t *kr, const char *path, char *errstr, size_t errstr_size)
{
	if (!kr || !path)
		return kreq__err(errstr, errstr_size, KREQ_EINVAL,
		                 "kreq_keyring_load_file: kr and path must not be NULL");
	char *buf = NULL;
	bool private_mode = false;
	int err = read_file(path, &buf, &private_mode, errstr, errstr_size);
	if (err)
		return err;
	kreq_keyring_t *scratch = kreq_keyring_new();
	if (!scratch) {
		sodium_free(buf);
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	}
	parse_ctx_t c = {.path = path, .errstr = errstr, .errstr_size = errstr_size};
	err = parse_into(&c, scratch, buf, private_mode);
	sodium_free(buf); /* wipes the base64 key text */
	if (!err)
		err = kreq__keyring_merge(kr, scratch, errstr, errstr_size);
	kreq_keyring_release(scratch);
	return err;
}

/* Writes "kreq-keyring 1 / key ... / signing ..." to a new file. */
static int write_keyfile(const char *path, mode_t mode, const char *key_id, kreq_key_type_t type,
                         const uint8_t *key, size_t key_len, bool signing, char *errstr,
                         size_t errstr_size)
{
	char b64[sodium_base64_ENCODED_LEN(KREQ_ED25519_SK_BYTES, sodium_base64_VARIANT_ORIGINAL)];
	sodium_bin2base64(b64, sizeof(b64), key, key_len, sodium_base64_VARIANT_ORIGINAL);
	char text[512];
	int n = snprintf(text, sizeof(text), "%s 1\n# generated by kreq\nkey %s %s %s\n%s%s%s",
	                 KEYFILE_MAGIC, key_id, key_type_name(type), b64, signing ? "signing " : "",
	                 signing ? key_id : "", signing ? "\n" : "");
	sodium_memzero(b64, sizeof(b64));
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	int err = KREQ_OK;
	if (fd < 0)
		err = kreq__err(errstr, errstr_size, errno == EEXIST ? KREQ_EEXIST : KREQ_EIO,
		                "%s: %s", path, strerror(errno));
	else if (fchmod(fd, mode) != 0 || kreq__write_all(fd, text, (size_t)n) != 0 ||
	         fsync(fd) != 0)
		err = kreq__err(errstr, errstr_size, KREQ_EIO, "%s: %s", path, strerror(errno));
	if (fd >= 0 && close(fd) != 0 && !err)
		err = kreq__err(errstr, errstr_size, KREQ_EIO, "%s: %s", path, strerror(errno));
	if (err && fd >= 0)
		unlink(path);
	sodium_memzero(text, sizeof(text));
	return err;
}

int kreq_keyring_generate_file(const char *path, const char *public_path, const char *key_id,
                               kreq_key_type_t type, char *errstr, size_t errstr_size)
{
	if (!path || !key_id || !kreq__key_id_valid(key_id, strlen(key_id)))
		return kreq__err(
		    errstr, errstr_size, KREQ_EINVAL,
		    "kreq_keyring_generate_file: path and a valid key id are required");
	if (type != KREQ_KEY_HMAC_SHA256 && type != KREQ_KEY_ED25519)
		return kreq__err(errstr, errstr_size, KREQ_EINVAL,
		                 "can generate hmac-sha256 or ed25519 keys only");
	if (public_path && type != KREQ_KEY_ED25519)
		return kreq__err(errstr, errstr_size, KREQ_EINVAL,
		                 "a public key file exists only for ed25519 keys");
	if (sodium_init() < 0)
		return kreq__err(errstr, errstr_size, KREQ_EIO, "libsodium failed to initialise");
	uint8_t sk[crypto_sign_SECRETKEYBYTES], pk[crypto_sign_PUBLICKEYBYTES];
	size_t len = KREQ_HMAC_KEY_BYTES;
	if (type == KREQ_KEY_HMAC_SHA256) {
		randombytes_buf(sk, KREQ_HMAC_KEY_BYTES);
	} else {
		crypto_sign_keypair(pk, sk);
		len = sizeof(sk);
	}
	int err = write_keyfile(path, 0600, key_id, type, sk, len, true, errstr, errstr_size);
	sodium_memzero(sk, sizeof(sk));
	if (!err && public_path) {
		err = write_keyfile(public_path, 0644, key_id, KREQ_KEY_ED25519_PUBLIC, pk,
		                    sizeof(pk), false, errstr, errstr_size);
		if (err)
			unlink(path);
	}
	return err;
}

int kreq__keyfile_parse(kreq_keyring_t *kr, const char *name, const char *text, size_t len,
                        bool private_mode, char *errstr, size_t errstr_size)
{
	char *buf = sodium_malloc(len + 1);
	kreq_keyring_t *scratch = buf ? kreq_keyring_new() : NULL;
	if (!scratch) {
		if (buf)
			sodium_free(buf);
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	}
	memcpy(buf, text, len);
	buf[len] = '\0';
	parse_ctx_t c = {.path = name, .errstr = errstr, .errstr_size = errstr_size};
	int err = parse_into(&c, scratch, buf, private_mode);
	sodium_free(buf);
	if (!err)
		err = kreq__keyring_merge(kr, scratch, errstr, errstr_size);
	kreq_keyring_release(scratch);
	return err;
}
