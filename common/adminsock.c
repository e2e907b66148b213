/*
 * adminsock.c — see adminsock.h.
 *
 * Why one thread of its own: answering must never delay the threads that
 * do the work (the client's service thread, the worker's loop); the
 * answer functions are the any-thread ones of each side. One thread polls
 * the listening socket and an eventfd that asks it to stop; connections
 * are served one at a time with receive and send timeouts.
 *
 * Why the live check: two processes configured with the same path must not
 * steal each other's endpoint. A socket file nobody accepts on is what a
 * process that died leaves, and is replaced; one that accepts is refused.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/adminsock.h"
#include "common/internal.h"

struct kreq__adminsock {
	const kreq__adminsock_cmd_t *cmds;
	void *ctx;
	int listen_fd, stop_fd;
	pthread_t thread;
	struct sockaddr_un sa;
};

static char *answer(kreq__adminsock_t *a, const char *cmd)
{
	for (const kreq__adminsock_cmd_t *c = a->cmds; c->name; c++)
		if (!strcmp(cmd, c->name))
			return c->answer(a->ctx);
	return NULL;
}

static void send_unknown(kreq__adminsock_t *a, int fd)
{
	char e[256];
	size_t n = (size_t)snprintf(e, sizeof(e), "{\"error\":\"unknown command (");
	for (const kreq__adminsock_cmd_t *c = a->cmds; c->name && n < sizeof(e); c++)
		n += (size_t)snprintf(e + n, sizeof(e) - n, "%s%s", c == a->cmds ? "" : ", ",
		                      c->name);
	if (n < sizeof(e))
		n += (size_t)snprintf(e + n, sizeof(e) - n, ")\"}\n");
	kreq__write_all(fd, e, n < sizeof(e) ? n : strlen(e));
}

static void serve(kreq__adminsock_t *a, int fd)
{
	struct timeval tv = {.tv_sec = 1};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	char cmd[64] = "";
	ssize_t n = read(fd, cmd, sizeof(cmd) - 1);
	cmd[n > 0 ? n : 0] = '\0';
	cmd[strcspn(cmd, "\r\n")] = '\0';
	char *text = answer(a, cmd);
	if (!text) {
		send_unknown(a, fd);
		return;
	}
	size_t len = strlen(text);
	bool nl = len > 0 && text[len - 1] == '\n';
	if (kreq__write_all(fd, text, len) == 0 && !nl)
		kreq__write_all(fd, "\n", 1);
	free(text);
}

static void *adminsock_main(void *arg)
{
	kreq__adminsock_t *a = arg;
	struct pollfd p[2] = {{.fd = a->listen_fd, .events = POLLIN},
	                      {.fd = a->stop_fd, .events = POLLIN}};
	for (;;) {
		if (poll(p, 2, -1) < 0 && errno != EINTR)
			break;
		if (p[1].revents)
			break;
		if (!(p[0].revents & POLLIN))
			continue;
		int fd = accept4(a->listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0) {
			serve(a, fd);
			close(fd);
		}
	}
	return NULL;
}

/* true if some process accepts connections on the socket at sa. */
static bool socket_alive(const struct sockaddr_un *sa)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool alive = fd >= 0 && connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0;
	if (fd >= 0)
		close(fd);
	return alive;
}

static int clear_path(kreq__adminsock_t *a, char *errstr, size_t errstr_size)
{
	const char *path = a->sa.sun_path;
	struct stat st;
	if (lstat(path, &st) != 0)
		return KREQ_OK;
	if (!S_ISSOCK(st.st_mode))
		return kreq__err(errstr, errstr_size, KREQ_EEXIST,
		                 "admin.socket %s exists and is not a socket; not replacing it",
		                 path);
	if (socket_alive(&a->sa))
		return kreq__err(errstr, errstr_size, KREQ_EEXIST,
		                 "admin.socket %s is in use by another process", path);
	unlink(path); /* stale socket of a process that died */
	return KREQ_OK;
}

static int bind_socket(kreq__adminsock_t *a, char *errstr, size_t errstr_size)
{
	int err = clear_path(a, errstr, errstr_size);
	if (err)
		return err;
	a->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	mode_t old = umask(0177); /* the socket file is created 0600 */
	int rc =
	    a->listen_fd < 0 ? -1 : bind(a->listen_fd, (struct sockaddr *)&a->sa, sizeof(a->sa));
	umask(old);
	if (rc != 0 || listen(a->listen_fd, 16) != 0)
		return kreq__err(errstr, errstr_size, KREQ_EIO, "admin.socket %s: %s",
		                 a->sa.sun_path, strerror(errno));
	return KREQ_OK;
}

static void release(kreq__adminsock_t *a, bool unlink_path)
{
	if (a->listen_fd >= 0)
		close(a->listen_fd);
	if (unlink_path)
		unlink(a->sa.sun_path);
	if (a->stop_fd >= 0)
		close(a->stop_fd);
	free(a);
}

int kreq__adminsock_start(const char *path, const kreq__adminsock_cmd_t *cmds, void *ctx,
                          const char *thread_name, kreq__adminsock_t **out, char *errstr,
                          size_t errstr_size)
{
	kreq__adminsock_t *a = calloc(1, sizeof(*a));
	if (!a)
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	a->cmds = cmds;
	a->ctx = ctx;
	a->listen_fd = a->stop_fd = -1;
	a->sa.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(a->sa.sun_path)) {
		release(a, false);
		return kreq__err(errstr, errstr_size, KREQ_ECONF,
		                 "admin.socket path longer than %zu bytes",
		                 sizeof(a->sa.sun_path) - 1);
	}
	memcpy(a->sa.sun_path, path, strlen(path) + 1);
	int err = bind_socket(a, errstr, errstr_size);
	bool bound = !err;
	if (!err && (a->stop_fd = eventfd(0, EFD_CLOEXEC)) < 0)
		err = kreq__err(errstr, errstr_size, KREQ_EIO, "eventfd: %s", strerror(errno));
	if (!err && pthread_create(&a->thread, NULL, adminsock_main, a) != 0)
		err = kreq__err(errstr, errstr_size, KREQ_ENOMEM, "cannot start the admin thread");
	else if (!err)
		pthread_setname_np(a->thread, thread_name);
	if (err) {
		release(a, bound);
		return err;
	}
	*out = a;
	return KREQ_OK;
}

void kreq__adminsock_stop(kreq__adminsock_t *a)
{
	if (!a)
		return;
	uint64_t one = 1;
	ssize_t n = write(a->stop_fd, &one, sizeof(one));
	(void)n; /* an eventfd below its maximum always takes it */
	pthread_join(a->thread, NULL);
	release(a, true);
}
