/* proc.c — see proc.h. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proc.h"
#include "testsupport.h"

extern char **environ;

/* ---- children still running, killed at exit -------------------------------- */

#define MAX_LIVE 16
static pid_t live[MAX_LIVE];
static bool atexit_done;

static void kill_live(void)
{
	for (int i = 0; i < MAX_LIVE; i++)
		if (live[i] > 0) {
			kill(live[i], SIGKILL);
			waitpid(live[i], NULL, 0);
			live[i] = 0;
		}
}

static void live_set(pid_t old, pid_t now)
{
	for (int i = 0; i < MAX_LIVE; i++)
		if (live[i] == old) {
			live[i] = now;
			return;
		}
}

/* ---- processes ---------------------------------------------------------------- */

static void buf_read(kreq_test_buf_t *b, int *fd)
{
	if (b->cap - b->len < 4097) {
		b->cap = b->cap ? b->cap * 2 : 8192;
		b->data = realloc(b->data, b->cap);
		ck_assert_ptr_nonnull(b->data);
	}
	ssize_t n = read(*fd, b->data + b->len, b->cap - b->len - 1);
	if (n > 0)
		b->len += (size_t)n;
	else if (n == 0 || errno != EINTR) {
		close(*fd);
		*fd = -1;
	}
	b->data[b->len] = '\0';
}

void kreq_test_proc_start(kreq_test_proc_t *p, const char *path, const char *const *args,
                          const char *stdin_data)
{
	if (!atexit_done) {
		atexit(kill_live);
		atexit_done = true;
	}
	int in[2], out[2], err[2];
	ck_assert(pipe2(in, O_CLOEXEC) == 0 && pipe2(out, O_CLOEXEC) == 0 &&
	          pipe2(err, O_CLOEXEC) == 0);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, in[0], STDIN_FILENO);
	posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
	posix_spawn_file_actions_adddup2(&fa, err[1], STDERR_FILENO);
	const char *argv[KREQ_TEST_MAX_ARGS + 2] = {path};
	size_t n = 1;
	for (; args && *args; args++) {
		ck_assert(n <= KREQ_TEST_MAX_ARGS);
		argv[n++] = *args;
	}
	argv[n] = NULL;
	int rc = posix_spawn(&p->pid, path, &fa, NULL, (char *const *)argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(in[0]);
	close(out[1]);
	close(err[1]);
	ck_assert_msg(rc == 0, "spawn %s: %s", path, strerror(rc));
	live_set(0, p->pid);
	if (stdin_data)
		ck_assert(write(in[1], stdin_data, strlen(stdin_data)) ==
		          (ssize_t)strlen(stdin_data));
	close(in[1]);
	p->out_fd = out[0];
	p->err_fd = err[0];
	memset(&p->out, 0, sizeof(p->out));
	memset(&p->err, 0, sizeof(p->err));
	p->started_ms = kreq_test_now_ms();
}

bool kreq_test_proc_pump(kreq_test_proc_t *p, int wait_ms)
{
	struct pollfd fds[2] = {{.fd = p->out_fd, .events = POLLIN},
	                        {.fd = p->err_fd, .events = POLLIN}};
	if (p->out_fd < 0 && p->err_fd < 0)
		return false;
	if (poll(fds, 2, wait_ms) > 0) {
		if (fds[0].revents)
			buf_read(&p->out, &p->out_fd);
		if (fds[1].revents)
			buf_read(&p->err, &p->err_fd);
	}
	return true;
}

void kreq_test_proc_finish(kreq_test_proc_t *p, int timeout_ms, kreq_test_result_t *r)
{
	int64_t deadline = kreq_test_now_ms() + timeout_ms;
	while (kreq_test_proc_pump(p, 100)) {
		if (kreq_test_now_ms() > deadline) {
			kill(p->pid, SIGKILL);
			waitpid(p->pid, NULL, 0);
			live_set(p->pid, 0);
			ck_abort_msg("child %d did not finish within %d ms; stderr: %s",
			             (int)p->pid, timeout_ms, p->err.data ? p->err.data : "");
		}
	}
	int st = 0;
	ck_assert_int_eq(waitpid(p->pid, &st, 0), p->pid);
	live_set(p->pid, 0);
	r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	r->out = p->out.data ? p->out.data : strdup("");
	r->err = p->err.data ? p->err.data : strdup("");
	r->ms = kreq_test_now_ms() - p->started_ms;
}

void kreq_test_run(kreq_test_result_t *r, const char *path, const char *const *args,
                   const char *stdin_data, int timeout_ms)
{
	kreq_test_proc_t p;
	kreq_test_proc_start(&p, path, args, stdin_data);
	kreq_test_proc_finish(&p, timeout_ms, r);
}

char *kreq_test_read_all(int fd)
{
	kreq_test_buf_t b = {0};
	while (fd >= 0)
		buf_read(&b, &fd);
	return b.data ? b.data : strdup("");
}

void kreq_test_result_free(kreq_test_result_t *r)
{
	free(r->out);
	free(r->err);
}

/* ---- temporary directory ------------------------------------------------------- */

static char tmpdir[64];

const char *kreq_test_tmp_create(const char *name)
{
	int n = snprintf(tmpdir, sizeof(tmpdir), "/tmp/%.40s-XXXXXX", name);
	ck_assert(n > 0 && (size_t)n < sizeof(tmpdir));
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
	return tmpdir;
}

const char *kreq_test_tmp(const char *file)
{
	static char paths[8][128];
	static int next;
	char *p = paths[next++ % 8];
	int n = snprintf(p, sizeof(paths[0]), "%s/%.60s", tmpdir, file);
	ck_assert_msg(n > 0 && (size_t)n < sizeof(paths[0]), "temporary path too long: %s", file);
	return p;
}

void kreq_test_tmp_remove(void)
{
	DIR *d = opendir(tmpdir);
	ck_assert_ptr_nonnull(d);
	for (struct dirent *e; (e = readdir(d)) != NULL;) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		const char *path = kreq_test_tmp(e->d_name);
		if (unlink(path) != 0)
			ck_assert_int_eq(rmdir(path), 0);
	}
	closedir(d);
	ck_assert_int_eq(rmdir(tmpdir), 0);
}
