/*
 * test_adminsock.c — the admin-socket server both the client and kreqd use
 * (common/adminsock.h): commands from its table, the unknown-command answer
 * naming the table, one trailing newline, a stale socket file replaced, a
 * socket a live process serves refused and left in place, a file that is not
 * a socket refused, and a peer that never writes holding it only for the
 * receive timeout. Each test removes the files it creates.
 */
#include <check.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/adminsock.h"
#include "kreq/error.h"
#include "testsupport.h"
#include "unixsock.h"

static char path[108];

static void setup(void)
{
	snprintf(path, sizeof(path), "/tmp/kreq-adminsock-%d.sock", (int)getpid());
	unlink(path);
}

static void teardown(void)
{
	unlink(path);
}

static char *answer_hello(void *ctx)
{
	return strdup(ctx);
}

static char *answer_lines(void *ctx)
{
	(void)ctx;
	return strdup("a 1\nb 2\n");
}

static char *answer_nothing(void *ctx)
{
	(void)ctx;
	return NULL;
}

static const kreq__adminsock_cmd_t cmds[] = {
    {"hello", answer_hello}, {"lines", answer_lines}, {"none", answer_nothing}, {NULL, NULL}};

static const char *query(const char *cmd, char *buf, size_t size)
{
	kreq_test_unix_query(path, cmd, buf, size);
	return buf;
}

/* A peer that connects and never writes. */
static int connect_silent(void)
{
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	memcpy(sa.sun_path, path, strlen(path) + 1);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return fd;
}

static kreq__adminsock_t *start(void)
{
	kreq__adminsock_t *a = NULL;
	char err[256] = "";
	int rc = kreq__adminsock_start(path, cmds, "hi there", "kreq:test", &a, err, sizeof(err));
	ck_assert_msg(rc == KREQ_OK, "%s", err);
	return a;
}

START_TEST(test_commands_from_the_table)
{
	kreq__adminsock_t *a = start();
	struct stat st;
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0600);
	char buf[512];
	ck_assert_str_eq(query("hello\n", buf, sizeof(buf)), "hi there\n");
	ck_assert_str_eq(query("lines\r\n", buf, sizeof(buf)), "a 1\nb 2\n");
	const char *unknown = "{\"error\":\"unknown command (hello, lines, none)\"}\n";
	ck_assert_str_eq(query("bogus\n", buf, sizeof(buf)), unknown);
	ck_assert_str_eq(query("none\n", buf, sizeof(buf)), unknown);
	kreq__adminsock_stop(a);
	ck_assert_int_ne(access(path, F_OK), 0);
}
END_TEST

START_TEST(test_stale_socket_replaced)
{
	kreq_test_unix_listen(path, false);
	ck_assert_int_eq(access(path, F_OK), 0);
	kreq__adminsock_t *a = start();
	char buf[512];
	ck_assert_str_eq(query("hello\n", buf, sizeof(buf)), "hi there\n");
	kreq__adminsock_stop(a);
}
END_TEST

START_TEST(test_live_socket_refused)
{
	int live = kreq_test_unix_listen(path, true);
	kreq__adminsock_t *a = NULL;
	char err[256] = "";
	int rc = kreq__adminsock_start(path, cmds, "x", "kreq:test", &a, err, sizeof(err));
	ck_assert_int_eq(rc, KREQ_EEXIST);
	ck_assert_ptr_null(a);
	ck_assert_msg(strstr(err, path) && strstr(err, "in use by another process"), "%s", err);
	/* the live process's endpoint still answers at its path */
	close(connect_silent());
	close(live);
}
END_TEST

START_TEST(test_not_a_socket_refused)
{
	int fd = open(path, O_CREAT | O_WRONLY, 0600);
	ck_assert_int_ge(fd, 0);
	close(fd);
	kreq__adminsock_t *a = NULL;
	char err[256] = "";
	ck_assert_int_eq(kreq__adminsock_start(path, cmds, "x", "kreq:test", &a, err, sizeof(err)),
	                 KREQ_EEXIST);
	ck_assert_msg(strstr(err, "exists and is not a socket"), "%s", err);
	ck_assert_int_eq(access(path, F_OK), 0);
}
END_TEST

START_TEST(test_silent_peer_times_out)
{
	kreq__adminsock_t *a = start();
	int silent = connect_silent(); /* never writes */
	char buf[512];
	/* served after the silent peer's receive timeout (about a second) */
	ck_assert_str_eq(query("hello\n", buf, sizeof(buf)), "hi there\n");
	ck_assert_str_eq(query("x", buf, sizeof(buf)),
	                 "{\"error\":\"unknown command (hello, lines, none)\"}\n");
	close(silent);
	kreq__adminsock_stop(a);
}
END_TEST

START_TEST(test_path_too_long)
{
	char longpath[200];
	memset(longpath, 'a', sizeof(longpath) - 1);
	longpath[sizeof(longpath) - 1] = '\0';
	kreq__adminsock_t *a = NULL;
	char err[256] = "";
	ck_assert_int_eq(
	    kreq__adminsock_start(longpath, cmds, "x", "kreq:test", &a, err, sizeof(err)),
	    KREQ_ECONF);
	ck_assert_msg(strstr(err, "longer than"), "%s", err);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("adminsock");
	TCase *tc = tcase_create("adminsock");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 20);
	tcase_add_test(tc, test_commands_from_the_table);
	tcase_add_test(tc, test_stale_socket_replaced);
	tcase_add_test(tc, test_live_socket_refused);
	tcase_add_test(tc, test_not_a_socket_refused);
	tcase_add_test(tc, test_silent_peer_times_out);
	tcase_add_test(tc, test_path_too_long);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
