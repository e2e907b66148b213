/*
 * test_membership.c — the static group membership's instance id
 * (broker/worker/member.c): derived from client.id, overridden by
 * worker.group.instance.id, none when worker.static.membership is false.
 * Its behaviour in a real group is tested by test_member (tests/worker).
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "broker/worker/worker_int.h"
#include "kreq/conf.h"
#include "kreq/error.h"
#include "testsupport.h"

static kreq_conf_t *conf_with(const char *const *kv)
{
	kreq_conf_t *c = kreq_conf_new();
	char err[256];
	for (; kv && *kv; kv += 2)
		ck_assert_msg(kreq_conf_set(c, kv[0], kv[1], err, sizeof(err)) == KREQ_OK, "%s: %s",
		              kv[0], err);
	return c;
}

static void expect_id(const char *const *kv, const char *want)
{
	kreq_conf_t *c = conf_with(kv);
	bool oom = true;
	char *id = kreq__member_instance_id(c, &oom);
	ck_assert(!oom);
	if (want)
		ck_assert_str_eq(id, want);
	else
		ck_assert_ptr_null(id);
	free(id);
	kreq_conf_destroy(c);
}

START_TEST(test_instance_id)
{
	expect_id(NULL, "kreq"); /* client.id's default */
	expect_id((const char *const[]){"client.id", "kreqd-2", NULL}, "kreqd-2");
	expect_id((const char *const[]){"client.id", "kreqd-2", "worker.group.instance.id",
	                                "blue-2", NULL},
	          "blue-2");
	expect_id((const char *const[]){"client.id", "kreqd-2", "worker.static.membership", "false",
	                                NULL},
	          NULL);
	expect_id((const char *const[]){"worker.static.membership", "false",
	                                "worker.group.instance.id", "blue-2", NULL},
	          NULL);
}
END_TEST

START_TEST(test_instance_id_bounds)
{
	kreq_conf_t *c = kreq_conf_new();
	char err[256], longer[300];
	memset(longer, 'x', 250);
	longer[250] = 0; /* Kafka's ids are strings; kreq keeps them topic-name sized */
	ck_assert_int_ne(kreq_conf_set(c, "worker.group.instance.id", longer, err, sizeof(err)),
	                 KREQ_OK);
	ck_assert_ptr_nonnull(strstr(err, "worker.group.instance.id"));
	ck_assert_int_ne(kreq_conf_set(c, "worker.static.membership", "maybe", err, sizeof(err)),
	                 KREQ_OK);
	kreq_conf_destroy(c);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("membership");
	TCase *tc = tcase_create("instance id");
	tcase_add_test(tc, test_instance_id);
	tcase_add_test(tc, test_instance_id_bounds);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
