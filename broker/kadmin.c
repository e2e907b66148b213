/*
 * kadmin.c — see kadmin.h.
 *
 * One thread polls the listening socket and an eventfd that asks it to
 * stop; connections are served one at a time with a receive timeout, so a
 * peer that never writes holds the endpoint for at most a second. The
 * answers come from the server's any-thread functions.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "broker/kadmin.h"
#include "common/internal.h"

struct kreqd_admin {
	kreq_server_t *s;
	int listen_fd, stop_fd;
	pthread_t thread;
	struct sockaddr_un sa;
};

static char *answer(kreqd_admin_t *a, const char *cmd)
{
	char *text = NULL;
	if (!strcmp(cmd, "inprogress"))
		kreq_server_in_progress_json(a->s, &text);
	else if (!strcmp(cmd, "metrics"))
		kreq_server_metrics_text(a->s, &text);
	return text;
}

static void serve(kreqd_admin_t *a, int fd)
{
	struct timeval tv = {.tv_sec = 1};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	char cmd[64] = "";
	ssize_t n = read(fd, cmd, sizeof(cmd) - 1);
	cmd[n > 0 ? n : 0] = '\0';
	cmd[strcspn(cmd, "\r\n")] = '\0';
	char *text = answer(a, cmd);
	if (text) {
		size_t len = strlen(text);
		bool nl = len > 0 && text[len - 1] == '\n';
		if (kreq__write_all(fd, text, len) == 0 && !nl)
			kreq__write_all(fd, "\n", 1);
		free(text);
	} else {
		const char *e = "{\"error\":\"unknown command (inprogress, metrics)\"}\n";
		kreq__write_all(fd, e, strlen(e));
	}
}

static void *admin_main(void *arg)
{
	kreqd_admin_t *a = arg;
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

static int clear_path(kreqd_admin_t *a, char *errstr, size_t errstr_size)
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

static int bind_socket(kreqd_admin_t *a, char *errstr, size_t errstr_size)
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

static void release(kreqd_admin_t *a, bool unlink_path)
{
	if (a->listen_fd >= 0)
		close(a->listen_fd);
	if (unlink_path)
		unlink(a->sa.sun_path);
	if (a->stop_fd >= 0)
		close(a->stop_fd);
	free(a);
}

int kreqd_admin_start(const char *path, kreq_server_t *s, kreqd_admin_t **out, char *errstr,
                      size_t errstr_size)
{
	kreqd_admin_t *a = calloc(1, sizeof(*a));
	if (!a)
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	a->s = s;
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
	if (!err && pthread_create(&a->thread, NULL, admin_main, a) != 0)
		err = kreq__err(errstr, errstr_size, KREQ_ENOMEM, "cannot start the admin thread");
	else if (!err)
		pthread_setname_np(a->thread, "kreqd:admin");
	if (err) {
		release(a, bound);
		return err;
	}
	*out = a;
	return KREQ_OK;
}

void kreqd_admin_stop(kreqd_admin_t *a)
{
	if (!a)
		return;
	uint64_t one = 1;
	ssize_t n = write(a->stop_fd, &one, sizeof(one));
	(void)n; /* an eventfd below its maximum always takes it */
	pthread_join(a->thread, NULL);
	release(a, true);
}
