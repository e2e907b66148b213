/* test_keyring.c — keys, rotation, method restrictions, key files. */
#include <check.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kreq/error.h"
#include "kreq/keyring.h"
#include "testsupport.h"

static char errstr[512];
static char dir[64];

static void setup(void)
{
	strcpy(dir, "/tmp/kreq-keyring-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	ck_assert_int_eq(system(cmd), 0);
}

static const char *path_in(const char *name)
{
	static char p[2][128];
	static int i;
	i ^= 1;
	snprintf(p[i], sizeof(p[i]), "%s/%s", dir, name);
	return p[i];
}

static const char *write_file(const char *name, mode_t mode, const char *text)
{
	const char *p = path_in(name);
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	ck_assert_int_eq(fchmod(fd, mode), 0);
	close(fd);
	return p;
}

static const uint8_t k32[32] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16,
                                17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
/* base64 of k32 */
#define K32_B64 "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="

START_TEST(test_add_each_type)
{
	kreq_keyring_t *kr = kreq_keyring_new();
	uint8_t pk[32], sk[64];
	crypto_sign_keypair(pk, sk);
	ck_assert_int_eq(kreq_keyring_add(kr, "h1", KREQ_KEY_HMAC_SHA256, k32, 32, errstr, 512),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_add(kr, "e1", KREQ_KEY_ED25519, sk, 64, errstr, 512),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_add(kr, "p1", KREQ_KEY_ED25519_PUBLIC, pk, 32, errstr, 512),
	                 KREQ_OK);
	ck_assert_uint_eq(kreq_keyring_count(kr), 3);
	ck_assert_int_eq(kreq_keyring_key_type(kr, "e1"), KREQ_KEY_ED25519);
	ck_assert_int_eq(kreq_keyring_key_type(kr, "zz"), KREQ_ENOENT);
	ck_assert_ptr_null(kreq_keyring_signing_key(kr));
	ck_assert_int_eq(kreq_keyring_set_signing_key(kr, "p1"), KREQ_ENOSIGNKEY);
	ck_assert_int_eq(kreq_keyring_set_signing_key(kr, "nope"), KREQ_ENOENT);
	ck_assert_int_eq(kreq_keyring_set_signing_key(kr, "e1"), KREQ_OK);
	ck_assert_str_eq(kreq_keyring_signing_key(kr), "e1");
	/* removing another key keeps the signer, removing the signer clears it */
	ck_assert_int_eq(kreq_keyring_remove(kr, "h1"), KREQ_OK);
	ck_assert_str_eq(kreq_keyring_signing_key(kr), "e1");
	ck_assert_int_eq(kreq_keyring_key_type(kr, "p1"), KREQ_KEY_ED25519_PUBLIC);
	ck_assert_int_eq(kreq_keyring_remove(kr, "e1"), KREQ_OK);
	ck_assert_ptr_null(kreq_keyring_signing_key(kr));
	ck_assert_int_eq(kreq_keyring_remove(kr, "e1"), KREQ_ENOENT);
	ck_assert_uint_eq(kreq_keyring_count(kr), 1);
	kreq_keyring_release(kr);
}
END_TEST

START_TEST(test_add_rejects_bad_input)
{
	kreq_keyring_t *kr = kreq_keyring_new();
	uint8_t sk[64] = {0};
	ck_assert_int_eq(kreq_keyring_add(kr, "h", KREQ_KEY_HMAC_SHA256, k32, 16, errstr, 512),
	                 KREQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(errstr, "wrong length"));
	ck_assert_int_eq(kreq_keyring_add(kr, "bad id", KREQ_KEY_HMAC_SHA256, k32, 32, errstr, 512),
	                 KREQ_EINVAL);
	ck_assert_int_eq(kreq_keyring_add(kr, "", KREQ_KEY_HMAC_SHA256, k32, 32, errstr, 512),
	                 KREQ_EINVAL);
	char longid[80];
	memset(longid, 'a', 65);
	longid[65] = 0;
	ck_assert_int_eq(kreq_keyring_add(kr, longid, KREQ_KEY_HMAC_SHA256, k32, 32, errstr, 512),
	                 KREQ_EINVAL);
	ck_assert_int_eq(kreq_keyring_add(kr, "h", (kreq_key_type_t)9, k32, 32, errstr, 512),
	                 KREQ_EINVAL);
	/* an Ed25519 secret key whose public half does not match its seed */
	ck_assert_int_eq(kreq_keyring_add(kr, "e", KREQ_KEY_ED25519, sk, 64, errstr, 512),
	                 KREQ_EINVAL);
	ck_assert_int_eq(kreq_keyring_add(kr, "h", KREQ_KEY_HMAC_SHA256, k32, 32, errstr, 512),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_add(kr, "h", KREQ_KEY_HMAC_SHA256, k32, 32, errstr, 512),
	                 KREQ_EEXIST);
	ck_assert_int_eq(kreq_keyring_add(NULL, "h", KREQ_KEY_HMAC_SHA256, k32, 32, errstr, 512),
	                 KREQ_EINVAL);
	ck_assert_int_eq(kreq_keyring_add(kr, "x", KREQ_KEY_HMAC_SHA256, NULL, 32, errstr, 512),
	                 KREQ_EINVAL);
	ck_assert_uint_eq(kreq_keyring_count(kr), 1);
	kreq_keyring_release(kr);
}
END_TEST

START_TEST(test_methods)
{
	kreq_keyring_t *kr = kreq_keyring_new();
	ck_assert_int_eq(kreq_keyring_add(kr, "h", KREQ_KEY_HMAC_SHA256, k32, 32, NULL, 0),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_check_method(kr, "h", "anything"), KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_methods(kr, "h", "billing.charge,billing.refund"),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_check_method(kr, "h", "billing.charge"), KREQ_OK);
	ck_assert_int_eq(kreq_keyring_check_method(kr, "h", "billing.refund"), KREQ_OK);
	ck_assert_int_eq(kreq_keyring_check_method(kr, "h", "billing"), KREQ_EDENIED);
	ck_assert_int_eq(kreq_keyring_check_method(kr, "h", "charge"), KREQ_EDENIED);
	ck_assert_int_eq(kreq_keyring_check_method(kr, "nokey", "billing.charge"), KREQ_ENOENT);
	ck_assert_int_eq(kreq_keyring_set_methods(kr, "h", "a,,b"), KREQ_EINVAL);
	ck_assert_int_eq(kreq_keyring_set_methods(kr, "h", "a,"), KREQ_EINVAL);
	ck_assert_int_eq(kreq_keyring_set_methods(kr, "h", "a b"), KREQ_EINVAL);
	ck_assert_int_eq(kreq_keyring_set_methods(kr, "h", ""), KREQ_OK);
	ck_assert_int_eq(kreq_keyring_check_method(kr, "h", "billing"), KREQ_OK);
	kreq_keyring_release(kr);
}
END_TEST

START_TEST(test_refcount)
{
	kreq_keyring_t *kr = kreq_keyring_new();
	ck_assert_ptr_eq(kreq_keyring_retain(kr), kr);
	kreq_keyring_release(kr);
	ck_assert_int_eq(kreq_keyring_add(kr, "h", KREQ_KEY_HMAC_SHA256, k32, 32, NULL, 0),
	                 KREQ_OK); /* still alive: one reference left */
	kreq_keyring_release(kr);
	kreq_keyring_release(NULL);
}
END_TEST

START_TEST(test_load_file_ok)
{
	const char *p = write_file("k", 0600,
	                           "# keys\n"
	                           "kreq-keyring 1\n"
	                           "\n"
	                           "key old hmac-sha256 " K32_B64 "\n"
	                           "key new hmac-sha256 " K32_B64 " methods=a.b,c\n"
	                           "signing new\n");
	kreq_keyring_t *kr = kreq_keyring_new();
	ck_assert_int_eq(kreq_keyring_load_file(kr, p, errstr, sizeof(errstr)), KREQ_OK);
	ck_assert_uint_eq(kreq_keyring_count(kr), 2);
	ck_assert_str_eq(kreq_keyring_signing_key(kr), "new");
	ck_assert_int_eq(kreq_keyring_check_method(kr, "new", "c"), KREQ_OK);
	ck_assert_int_eq(kreq_keyring_check_method(kr, "new", "d"), KREQ_EDENIED);
	ck_assert_int_eq(kreq_keyring_check_method(kr, "old", "d"), KREQ_OK);
	/* loading the same file again clashes and changes nothing */
	ck_assert_int_eq(kreq_keyring_load_file(kr, p, errstr, sizeof(errstr)), KREQ_EEXIST);
	ck_assert_uint_eq(kreq_keyring_count(kr), 2);
	kreq_keyring_release(kr);
}
END_TEST

START_TEST(test_load_file_permissions)
{
	const char *secret = "kreq-keyring 1\nkey h hmac-sha256 " K32_B64 "\n";
	kreq_keyring_t *kr = kreq_keyring_new();
	const mode_t bad_modes[] = {0640, 0604, 0644, 0660, 0606, 0610};
	for (size_t i = 0; i < sizeof(bad_modes) / sizeof(bad_modes[0]); i++) {
		const char *p = write_file("s", bad_modes[i], secret);
		ck_assert_int_eq(kreq_keyring_load_file(kr, p, errstr, sizeof(errstr)),
		                 KREQ_EKEYPERM);
		ck_assert_ptr_nonnull(strstr(errstr, "group or others"));
		ck_assert_ptr_null(strstr(errstr, K32_B64)); /* never leaks key text */
		ck_assert_uint_eq(kreq_keyring_count(kr), 0);
		unlink(p);
	}
	const char *p = write_file("s", 0400, secret);
	ck_assert_int_eq(kreq_keyring_load_file(kr, p, errstr, sizeof(errstr)), KREQ_OK);
	/* public keys only: readable by all is fine */
	uint8_t pk[32], sk[64];
	crypto_sign_keypair(pk, sk);
	char b64[64], text[160];
	sodium_bin2base64(b64, sizeof(b64), pk, 32, sodium_base64_VARIANT_ORIGINAL);
	snprintf(text, sizeof(text), "kreq-keyring 1\nkey pub ed25519-public %s\n", b64);
	p = write_file("pub", 0644, text);
	ck_assert_int_eq(kreq_keyring_load_file(kr, p, errstr, sizeof(errstr)), KREQ_OK);
	ck_assert_uint_eq(kreq_keyring_count(kr), 2);
	kreq_keyring_release(kr);
}
END_TEST

static const struct {
	const char *text;
	const char *expect; /* substring of errstr */
} bad_files[] = {
    {"", "empty"},
    {"# only a comment\n", "empty"},
    {"kreq-keyring 2\n", "first line"},
    {"key h hmac-sha256 " K32_B64 "\n", "first line"},
    {"kreq-keyring 1\nkey h hmac-sha256\n", ":2:"},
    {"kreq-keyring 1\nkey h rsa " K32_B64 "\n", "unknown key type"},
    {"kreq-keyring 1\nkey h hmac-sha256 not*base64\n", "base64"},
    {"kreq-keyring 1\nkey h hmac-sha256 AQIDBA==\n", "wrong length"},
    {"kreq-keyring 1\nkey b@d hmac-sha256 " K32_B64 "\n", "invalid key id"},
    {"kreq-keyring 1\nkey h hmac-sha256 " K32_B64 " colour=blue\n", "attribute"},
    {"kreq-keyring 1\nkey h hmac-sha256 " K32_B64 " methods=a,,b\n", "methods"},
    {"kreq-keyring 1\n\n\nfrobnicate\n", ":4:"},
    {"kreq-keyring 1\nkey h hmac-sha256 " K32_B64 "\nsigning other\n", "not in the file"},
    {"kreq-keyring 1\nkey h hmac-sha256 " K32_B64 "\nkey h hmac-sha256 " K32_B64 "\n",
     "already present"},
    {"kreq-keyring 1\nkey h hmac-sha256 " K32_B64 "\nkey g hmac-sha256 " K32_B64
     "\nsigning h\nsigning g\n",
     "second signing line"},
};

START_TEST(test_load_file_malformed)
{
	const char *p = write_file("bad", 0600, bad_files[_i].text);
	kreq_keyring_t *kr = kreq_keyring_new();
	ck_assert_int_eq(kreq_keyring_add(kr, "pre", KREQ_KEY_HMAC_SHA256, k32, 32, NULL, 0),
	                 KREQ_OK);
	errstr[0] = 0;
	int err = kreq_keyring_load_file(kr, p, errstr, sizeof(errstr));
	ck_assert_msg(err == KREQ_EKEYFILE || err == KREQ_EEXIST, "case %d: got %s", _i,
	              kreq_err_name(err));
	ck_assert_msg(strstr(errstr, bad_files[_i].expect) != NULL, "case %d: errstr \"%s\"", _i,
	              errstr);
	ck_assert_ptr_null(strstr(errstr, K32_B64));
	/* all or nothing: the keyring is as it was */
	ck_assert_uint_eq(kreq_keyring_count(kr), 1);
	ck_assert_ptr_null(kreq_keyring_signing_key(kr));
	kreq_keyring_release(kr);
}
END_TEST

START_TEST(test_load_file_not_regular_or_missing)
{
	kreq_keyring_t *kr = kreq_keyring_new();
	ck_assert_int_eq(kreq_keyring_load_file(kr, dir, errstr, sizeof(errstr)), KREQ_EKEYFILE);
	ck_assert_ptr_nonnull(strstr(errstr, "regular"));
	ck_assert_int_eq(kreq_keyring_load_file(kr, path_in("missing"), errstr, sizeof(errstr)),
	                 KREQ_EIO);
	ck_assert_int_eq(kreq_keyring_load_file(kr, NULL, errstr, sizeof(errstr)), KREQ_EINVAL);
	/* larger than 1 MiB */
	const char *p = path_in("big");
	FILE *f = fopen(p, "w");
	ck_assert_ptr_nonnull(f);
	fputs("kreq-keyring 1\n", f);
	for (int i = 0; i < (1 << 20) / 10 + 10; i++)
		fputs("#########\n", f);
	fclose(f);
	chmod(p, 0600);
	ck_assert_int_eq(kreq_keyring_load_file(kr, p, errstr, sizeof(errstr)), KREQ_EKEYFILE);
	kreq_keyring_release(kr);
}
END_TEST

/* A FIFO at the key file's path is refused at once: the open used to block
 * until something wrote to it (a worker's start or SIGHUP hung for ever). */
START_TEST(test_load_file_fifo)
{
	const char *p = path_in("fifo");
	ck_assert_int_eq(mkfifo(p, 0600), 0);
	kreq_keyring_t *kr = kreq_keyring_new();
	int64_t t0 = kreq_test_now_ms();
	ck_assert_int_eq(kreq_keyring_load_file(kr, p, errstr, sizeof(errstr)), KREQ_EKEYFILE);
	ck_assert_int_lt(kreq_test_now_ms() - t0, 1000);
	ck_assert_msg(strstr(errstr, "not a regular file"), "%s", errstr);
	ck_assert_uint_eq(kreq_keyring_count(kr), 0);
	kreq_keyring_release(kr);
}
END_TEST

/* A NUL byte used to end the file silently: the keys before it loaded, the
 * ones after it were ignored, and the load succeeded. */
START_TEST(test_load_file_nul_byte)
{
	static const char text[] = "kreq-keyring 1\nkey a hmac-sha256 " K32_B64 "\n"
	                           "\0key b hmac-sha256 " K32_B64 "\nsigning b\n";
	const char *p = path_in("nul");
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, text, sizeof(text) - 1), (ssize_t)sizeof(text) - 1);
	close(fd);
	kreq_keyring_t *kr = kreq_keyring_new();
	ck_assert_int_eq(kreq_keyring_load_file(kr, p, errstr, sizeof(errstr)), KREQ_EKEYFILE);
	ck_assert_msg(strstr(errstr, "NUL byte at offset 78"), "%s", errstr);
	ck_assert_ptr_null(strstr(errstr, K32_B64));
	ck_assert_uint_eq(kreq_keyring_count(kr), 0); /* all or nothing */
	kreq_keyring_release(kr);
}
END_TEST

/* Whoever may write a key file chooses the keys a process trusts: a file
 * owned by another user (not root), or writable by group or others, is
 * refused, public keys included. */
START_TEST(test_load_file_owner_and_writers)
{
	uint8_t pk[32], sk[64];
	crypto_sign_keypair(pk, sk);
	char b64[64], text[160];
	sodium_bin2base64(b64, sizeof(b64), pk, 32, sodium_base64_VARIANT_ORIGINAL);
	snprintf(text, sizeof(text), "kreq-keyring 1\nkey pub ed25519-public %s\n", b64);
	kreq_keyring_t *kr = kreq_keyring_new();
	const mode_t writable[] = {0664, 0646, 0620, 0602};
	for (size_t i = 0; i < sizeof(writable) / sizeof(writable[0]); i++) {
		const char *p = write_file("w", writable[i], text);
		ck_assert_int_eq(kreq_keyring_load_file(kr, p, errstr, sizeof(errstr)),
		                 KREQ_EKEYPERM);
		ck_assert_msg(strstr(errstr, "writable by group or others"), "%s", errstr);
		unlink(p);
	}
	const char *p = write_file("o", 0644, text);
	/* as root (the test machine), hand the file to another user; as
	 * anyone else chown fails, which is what the check relies on */
	int rc = chown(p, 4242, 4242);
	if (geteuid() == 0) {
		ck_assert_int_eq(rc, 0);
		ck_assert_int_eq(kreq_keyring_load_file(kr, p, errstr, sizeof(errstr)),
		                 KREQ_EKEYPERM);
		ck_assert_msg(strstr(errstr, "owned by uid 4242"), "%s", errstr);
		ck_assert_int_eq(chown(p, 0, 0), 0); /* root's own: fine */
	} else {
		ck_assert_int_ne(rc, 0);
	}
	ck_assert_uint_eq(kreq_keyring_count(kr), 0);
	ck_assert_int_eq(kreq_keyring_load_file(kr, p, errstr, sizeof(errstr)), KREQ_OK);
	ck_assert_uint_eq(kreq_keyring_count(kr), 1);
	kreq_keyring_release(kr);
}
END_TEST

START_TEST(test_generate_file)
{
	const char *sec = path_in("gen.key");
	char secpath[128];
	strcpy(secpath, sec);
	const char *pub = path_in("gen.pub");
	ck_assert_int_eq(kreq_keyring_generate_file(secpath, pub, "svc-2026", KREQ_KEY_ED25519,
	                                            errstr, sizeof(errstr)),
	                 KREQ_OK);
	struct stat st;
	ck_assert_int_eq(stat(secpath, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0600);
	kreq_keyring_t *kr = kreq_keyring_new();
	ck_assert_int_eq(kreq_keyring_load_file(kr, secpath, errstr, sizeof(errstr)), KREQ_OK);
	ck_assert_str_eq(kreq_keyring_signing_key(kr), "svc-2026");
	ck_assert_int_eq(kreq_keyring_key_type(kr, "svc-2026"), KREQ_KEY_ED25519);
	kreq_keyring_release(kr);
	kr = kreq_keyring_new();
	ck_assert_int_eq(kreq_keyring_load_file(kr, pub, errstr, sizeof(errstr)), KREQ_OK);
	ck_assert_int_eq(kreq_keyring_key_type(kr, "svc-2026"), KREQ_KEY_ED25519_PUBLIC);
	kreq_keyring_release(kr);
	/* never overwrites */
	ck_assert_int_eq(kreq_keyring_generate_file(secpath, NULL, "x", KREQ_KEY_HMAC_SHA256,
	                                            errstr, sizeof(errstr)),
	                 KREQ_EEXIST);
	ck_assert_int_eq(kreq_keyring_generate_file(path_in("h.key"), NULL, "h",
	                                            KREQ_KEY_HMAC_SHA256, errstr, sizeof(errstr)),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_generate_file(path_in("x.key"), path_in("x.pub"), "h",
	                                            KREQ_KEY_HMAC_SHA256, errstr, sizeof(errstr)),
	                 KREQ_EINVAL);
	ck_assert_int_eq(kreq_keyring_generate_file(path_in("y.key"), NULL, "bad id",
	                                            KREQ_KEY_HMAC_SHA256, errstr, sizeof(errstr)),
	                 KREQ_EINVAL);
	ck_assert_int_eq(kreq_keyring_generate_file("/nonexistent/dir/k", NULL, "h",
	                                            KREQ_KEY_HMAC_SHA256, errstr, sizeof(errstr)),
	                 KREQ_EIO);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("keyring");
	TCase *tc = tcase_create("keyring");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_add_each_type);
	tcase_add_test(tc, test_add_rejects_bad_input);
	tcase_add_test(tc, test_methods);
	tcase_add_test(tc, test_refcount);
	tcase_add_test(tc, test_load_file_ok);
	tcase_add_test(tc, test_load_file_permissions);
	tcase_add_loop_test(tc, test_load_file_malformed, 0,
	                    (int)(sizeof(bad_files) / sizeof(bad_files[0])));
	tcase_add_test(tc, test_load_file_not_regular_or_missing);
	tcase_add_test(tc, test_load_file_fifo);
	tcase_add_test(tc, test_load_file_nul_byte);
	tcase_add_test(tc, test_load_file_owner_and_writers);
	tcase_add_test(tc, test_generate_file);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
