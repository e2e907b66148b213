/* test_conf.c — the configuration object and its property table. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/conf.h"
#include "kreq/error.h"
#include "testsupport.h"

static char errstr[512];

static const char *get(const kreq_conf_t *c, const char *name)
{
	static char buf[256];
	size_t sz = sizeof(buf);
	ck_assert_int_eq(kreq_conf_get(c, name, buf, &sz), KREQ_OK);
	return buf;
}

START_TEST(test_defaults)
{
	kreq_conf_t *c = kreq_conf_new();
	ck_assert_ptr_nonnull(c);
	ck_assert_str_eq(get(c, "envelope.max.bytes"), "1048576");
	ck_assert_int_eq(kreq__conf_int(c, KREQ__P_ENVELOPE_MAX_BYTES), 1048576);
	ck_assert_int_eq(kreq__conf_int(c, KREQ__P_CLOCK_SKEW_MS), 30000);
	ck_assert_str_eq(kreq__conf_str(c, KREQ__P_CLIENT_ID), "kreq");
	kreq_conf_destroy(c);
}
END_TEST

START_TEST(test_set_validates)
{
	kreq_conf_t *c = kreq_conf_new();
	ck_assert_int_eq(kreq_conf_set(c, "clock.skew.ms", "5000", errstr, sizeof(errstr)),
	                 KREQ_OK);
	ck_assert_int_eq(kreq__conf_int(c, KREQ__P_CLOCK_SKEW_MS), 5000);
	ck_assert_int_eq(kreq_conf_set(c, "clock.skew.ms", "5s", errstr, sizeof(errstr)),
	                 KREQ_ECONF);
	ck_assert_ptr_nonnull(strstr(errstr, "clock.skew.ms"));
	ck_assert_int_eq(kreq_conf_set(c, "clock.skew.ms", " 5", errstr, sizeof(errstr)),
	                 KREQ_ECONF);
	ck_assert_int_eq(kreq_conf_set(c, "clock.skew.ms", "-1", errstr, sizeof(errstr)),
	                 KREQ_ECONF);
	ck_assert_ptr_nonnull(strstr(errstr, "out of range"));
	ck_assert_int_eq(
	    kreq_conf_set(c, "envelope.max.bytes", "99999999999999999999", errstr, sizeof(errstr)),
	    KREQ_ECONF);
	/* failed sets leave the old value */
	ck_assert_int_eq(kreq__conf_int(c, KREQ__P_CLOCK_SKEW_MS), 5000);
	ck_assert_int_eq(kreq_conf_set(c, "client.id", "", errstr, sizeof(errstr)), KREQ_ECONF);
	ck_assert_int_eq(kreq_conf_set(c, "no.such", "1", errstr, sizeof(errstr)), KREQ_ENOENT);
	ck_assert_ptr_nonnull(strstr(errstr, "no.such"));
	/* a worker property under its old name: refused, naming the new one */
	ck_assert_int_eq(kreq_conf_set(c, "server.mode", "light", errstr, sizeof(errstr)),
	                 KREQ_ENOENT);
	ck_assert_msg(strstr(errstr, "\"server.mode\"") && strstr(errstr, "use \"worker.mode\""),
	              "%s", errstr);
	ck_assert_int_eq(kreq_conf_set(c, "server.nope", "1", errstr, sizeof(errstr)), KREQ_ENOENT);
	ck_assert_ptr_null(strstr(errstr, "worker."));
	ck_assert_int_eq(kreq_conf_set(NULL, "client.id", "x", errstr, sizeof(errstr)),
	                 KREQ_EINVAL);
	ck_assert_int_eq(kreq_conf_set(c, NULL, "x", NULL, 0), KREQ_EINVAL);
	ck_assert_int_eq(kreq_conf_set(c, "client.id", NULL, NULL, 0), KREQ_EINVAL);
	kreq_conf_destroy(c);
}
END_TEST

START_TEST(test_kafka_passthrough)
{
	kreq_conf_t *c = kreq_conf_new();
	ck_assert_int_eq(kreq_conf_set(c, "kafka.linger.ms", "0", errstr, sizeof(errstr)), KREQ_OK);
	ck_assert_int_eq(kreq_conf_set(c, "kafka.linger.ms", "2", errstr, sizeof(errstr)), KREQ_OK);
	ck_assert_str_eq(get(c, "kafka.linger.ms"), "2");
	ck_assert_int_eq(kreq_conf_set(c, "kafka.no.such.prop", "1", errstr, sizeof(errstr)),
	                 KREQ_ENOENT);
	ck_assert_ptr_nonnull(strstr(errstr, "kafka.no.such.prop"));
	ck_assert_int_eq(kreq_conf_set(c, "kafka.linger.ms", "soon", errstr, sizeof(errstr)),
	                 KREQ_ECONF);
	ck_assert_int_eq(kreq_conf_set(c, "kafka.", "1", errstr, sizeof(errstr)), KREQ_ENOENT);
	size_t sz = 0;
	ck_assert_int_eq(kreq_conf_get(c, "kafka.acks", NULL, &sz), KREQ_ENOENT);

	rd_kafka_conf_t *rk = rd_kafka_conf_new();
	ck_assert_int_eq(kreq__conf_kafka_apply(c, rk, errstr, sizeof(errstr)), KREQ_OK);
	char v[32];
	size_t vsz = sizeof(v);
	ck_assert_int_eq(rd_kafka_conf_get(rk, "linger.ms", v, &vsz), RD_KAFKA_CONF_OK);
	ck_assert_str_eq(v, "2");
	rd_kafka_conf_destroy(rk);
	kreq_conf_destroy(c);
}
END_TEST

START_TEST(test_get_sizes_and_dup)
{
	kreq_conf_t *c = kreq_conf_new();
	ck_assert_int_eq(kreq_conf_set(c, "client.id", "svc-a", NULL, 0), KREQ_OK);
	size_t sz = 0;
	ck_assert_int_eq(kreq_conf_get(c, "client.id", NULL, &sz), KREQ_OK);
	ck_assert_uint_eq(sz, 6);
	char small[3];
	sz = sizeof(small);
	ck_assert_int_eq(kreq_conf_get(c, "client.id", small, &sz), KREQ_EOVERSIZE);
	ck_assert_uint_eq(sz, 6);
	ck_assert_int_eq(kreq_conf_get(c, "nope", NULL, &sz), KREQ_ENOENT);
	ck_assert_int_eq(kreq_conf_get(NULL, "client.id", NULL, &sz), KREQ_EINVAL);

	ck_assert_int_eq(kreq_conf_set(c, "kafka.acks", "all", NULL, 0), KREQ_OK);
	kreq_conf_t *d = kreq_conf_dup(c);
	ck_assert_int_eq(kreq_conf_set(c, "client.id", "changed", NULL, 0), KREQ_OK);
	ck_assert_str_eq(get(d, "client.id"), "svc-a");
	ck_assert_str_eq(get(d, "kafka.acks"), "all");
	ck_assert_ptr_null(kreq_conf_dup(NULL));
	kreq_conf_destroy(c);
	kreq_conf_destroy(d);
	kreq_conf_destroy(NULL);
}
END_TEST

static char *write_tmp(const char *text)
{
	static char path[64];
	strcpy(path, "/tmp/kreq-conf-XXXXXX");
	int fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	return path;
}

START_TEST(test_load_file)
{
	kreq_conf_t *c = kreq_conf_new();
	char *p = write_tmp("# comment\n\nclient.id = from-file\n kafka.linger.ms=1 \n");
	ck_assert_int_eq(kreq_conf_load_file(c, p, errstr, sizeof(errstr)), KREQ_OK);
	ck_assert_str_eq(get(c, "client.id"), "from-file");
	ck_assert_str_eq(get(c, "kafka.linger.ms"), "1");
	unlink(p);

	p = write_tmp("client.id = ok\n\nclock.skew.ms = soon\n");
	ck_assert_int_eq(kreq_conf_load_file(c, p, errstr, sizeof(errstr)), KREQ_ECONF);
	ck_assert_ptr_nonnull(strstr(errstr, ":3:"));
	unlink(p);

	p = write_tmp("just words\n");
	ck_assert_int_eq(kreq_conf_load_file(c, p, errstr, sizeof(errstr)), KREQ_ECONF);
	ck_assert_ptr_nonnull(strstr(errstr, ":1:"));
	unlink(p);

	ck_assert_int_eq(kreq_conf_load_file(c, "/nonexistent/kreq.conf", errstr, sizeof(errstr)),
	                 KREQ_EIO);
	ck_assert_int_eq(kreq_conf_load_file(NULL, "/x", errstr, sizeof(errstr)), KREQ_EINVAL);
	kreq_conf_destroy(c);
}
END_TEST

/* docs/CONFIGURATION.md is generated from the table: fail when it is stale. */
START_TEST(test_configuration_doc_current)
{
	char *gen = NULL;
	size_t gen_len = 0;
	FILE *m = open_memstream(&gen, &gen_len);
	kreq__conf_markdown(m);
	fclose(m);
	FILE *f = fopen(KREQ_SOURCE_DIR "/docs/CONFIGURATION.md", "r");
	ck_assert_msg(f != NULL, "docs/CONFIGURATION.md missing");
	char *doc = calloc(1, gen_len + 2);
	size_t n = fread(doc, 1, gen_len + 1, f);
	fclose(f);
	ck_assert_msg(n == gen_len && memcmp(doc, gen, gen_len) == 0,
	              "docs/CONFIGURATION.md is stale: regenerate with "
	              "build/tools/kreq-confdoc > docs/CONFIGURATION.md");
	free(doc);
	free(gen);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("conf");
	TCase *tc = tcase_create("conf");
	tcase_add_test(tc, test_defaults);
	tcase_add_test(tc, test_set_validates);
	tcase_add_test(tc, test_kafka_passthrough);
	tcase_add_test(tc, test_get_sizes_and_dup);
	tcase_add_test(tc, test_load_file);
	tcase_add_test(tc, test_configuration_doc_current);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
