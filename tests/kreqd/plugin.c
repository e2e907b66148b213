/*
 * plugin.c — handler plugins for test_kreqd, one source built four ways
 * (tests/kreqd/CMakeLists.txt):
 *
 *   KDTEST_GOOD      registers kdtest.hello (inline, replies "hello from a
 *                    plugin"), kdtest.slow (pool, replies "done") and
 *                    kdtest.twice (pool, replies "first", then again with
 *                    the same handle and logs what that second reply
 *                    returned: "twice: second reply -24" is KREQ_ESTATE);
 *                    init and fini append "init"/"fini" lines to the file
 *                    named by $KDTEST_PLUGIN_LOG, so a test sees both ran;
 *                    kdtest.crash (pool) crashes the process with SIGSEGV
 *                    when its payload is "poison", and otherwise appends
 *                    "<payload> <execution id>\n" to $KDTEST_EXEC_LOG and
 *                    replies with that execution id (tests/worker/
 *                    test_poison.c counts executions with it)
 *   KDTEST_BAD_ABI   exports kreq_plugin_v1 with abi_version 99
 *   KDTEST_NO_SYMBOL exports its structure under another name
 *   KDTEST_INIT_FAIL init registers both, then fails with KREQ_ECONF and a
 *                    message (so fini must not run)
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "kreq/error.h"
#include "kreq/plugin.h"

static void note(const char *line)
{
	const char *path = getenv("KDTEST_PLUGIN_LOG");
	int fd = path ? open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600) : -1;
	if (fd < 0)
		return;
	ssize_t n = write(fd, line, strlen(line));
	(void)n;
	close(fd);
}

static void hello(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	kreq_request_reply(r, KREQ_STATUS_OK, "hello from a plugin", 19, NULL);
}

static void slow(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	usleep(10000);
	kreq_request_reply(r, KREQ_STATUS_OK, "done", 4, NULL);
}

/* A buggy handler: replies twice. The second reply must be refused. */
static void twice(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	kreq_request_reply(r, KREQ_STATUS_OK, "first", 5, NULL);
	int rc = kreq_request_reply(r, KREQ_STATUS_OK, "second", 6, NULL);
	char line[64];
	snprintf(line, sizeof(line), "twice: second reply %d\n", rc);
	note(line);
}

/* A handler with a bug one payload triggers: a segmentation fault. */
static void crash(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	size_t len;
	const void *p = kreq_request_payload(r, &len);
	if (len == 6 && !memcmp(p, "poison", 6)) {
		setrlimit(RLIMIT_CORE, &(struct rlimit){0, 0}); /* no core file */
		signal(SIGSEGV, SIG_DFL);
		raise(SIGSEGV);
	}
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	char id[64], line[400];
	snprintf(id, sizeof(id), "%ld-%ld-%ld", (long)getpid(), (long)ts.tv_sec, (long)ts.tv_nsec);
	snprintf(line, sizeof(line), "%.*s %s\n", (int)(len < 256 ? len : 256), (const char *)p,
	         id);
	const char *path = getenv("KDTEST_EXEC_LOG");
	int fd = path ? open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600) : -1;
	if (fd >= 0) {
		ssize_t n = write(fd, line, strlen(line));
		(void)n;
		close(fd);
	}
	kreq_request_reply(r, KREQ_STATUS_OK, id, strlen(id), NULL);
}

static int init(kreq_worker_t *s, char *errstr, size_t errstr_size)
{
	note("init\n");
	int err = kreq_worker_register(s, "kdtest.hello", hello, NULL, KREQ_HANDLER_INLINE);
	if (!err)
		err = kreq_worker_register(s, "kdtest.slow", slow, NULL, 0);
	if (!err)
		err = kreq_worker_register(s, "kdtest.twice", twice, NULL, 0);
	if (!err)
		err = kreq_worker_register(s, "kdtest.crash", crash, NULL, 0);
#ifdef KDTEST_INIT_FAIL
	if (!err) { /* fails after registering, as a real plugin might */
		snprintf(errstr, errstr_size, "the test plugin refuses to start");
		err = KREQ_ECONF;
	}
#else
	(void)errstr, (void)errstr_size;
#endif
	return err;
}

static void fini(void)
{
	note("fini\n");
}

/* KDTEST_NO_SYMBOL: the right structure under a wrong name */
#ifdef KDTEST_NO_SYMBOL
#define KDTEST_SYMBOL kdtest_plugin_misnamed
#else
#define KDTEST_SYMBOL kreq_plugin_v1
#endif

KREQ_PLUGIN_EXPORT const kreq_plugin_v1_t KDTEST_SYMBOL = {
#ifdef KDTEST_BAD_ABI
    .abi_version = 99,
#else
    .abi_version = KREQ_PLUGIN_ABI_VERSION,
#endif
    .name = "kdtest",
    .init = init,
    .fini = fini,
};
