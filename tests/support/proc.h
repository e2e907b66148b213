/*
 * proc.h — running a program under test (kreq, kreqd) as a child process
 * and a per-test temporary directory; shared by the suites that test
 * binaries (tests/cli, tests/kreqd).
 *
 * Why here: every such suite needs the same spawn / read both streams /
 * bounded wait / exit status plumbing, and the same cleanup guarantee: a
 * child still running when a test fails (Check ends the test's process
 * with exit()) is killed by an atexit handler, so no failing run leaves a
 * daemon behind. Helpers fail the calling test through Check.
 */
#ifndef KREQ_TEST_PROC_H
#define KREQ_TEST_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define KREQ_TEST_MAX_ARGS 40

typedef struct kreq_test_buf {
	char *data;
	size_t len, cap;
} kreq_test_buf_t;

/* A running child: its output so far in out/err (NUL-terminated). */
typedef struct kreq_test_proc {
	pid_t pid;
	int out_fd, err_fd;
	kreq_test_buf_t out, err;
	int64_t started_ms;
} kreq_test_proc_t;

typedef struct kreq_test_result {
	int status; /* exit code, or 128 + signal */
	char *out, *err;
	int64_t ms; /* how long it ran */
} kreq_test_result_t;

/* Starts path with the NULL-terminated args (at most KREQ_TEST_MAX_ARGS)
 * and stdin_data on its standard input (NULL: empty). */
void kreq_test_proc_start(kreq_test_proc_t *p, const char *path, const char *const *args,
                          const char *stdin_data);

/* Reads what is available within wait_ms; false once both streams closed. */
bool kreq_test_proc_pump(kreq_test_proc_t *p, int wait_ms);

/* Reads both streams to their end and reaps the child into r; kills it
 * and fails the test after timeout_ms. r owns the output afterwards. */
void kreq_test_proc_finish(kreq_test_proc_t *p, int timeout_ms, kreq_test_result_t *r);

/* Start + finish. */
void kreq_test_run(kreq_test_result_t *r, const char *path, const char *const *args,
                   const char *stdin_data, int timeout_ms);

void kreq_test_result_free(kreq_test_result_t *r);

/* Reads fd to EOF (closing it) into a new string; the caller frees. */
char *kreq_test_read_all(int fd);

#define KREQ_TEST_ASSERT_RUN(r, code, stream, text)                                                \
	ck_assert_msg((r)->status == (code) && strstr((r)->stream, (text)) != NULL,                \
	              "exit %d (want %d), %s lacks \"%s\"\nstdout: %s\nstderr: %s", (r)->status,   \
	              (code), #stream, (text), (r)->out, (r)->err)

/* A new private directory /tmp/<name>-XXXXXX for this test; kreq_test_tmp()
 * names a file in it (from a ring of 8 static buffers); tmp_remove deletes
 * its files and empty subdirectories, then the directory. */
const char *kreq_test_tmp_create(const char *name);
const char *kreq_test_tmp(const char *file);
void kreq_test_tmp_remove(void);

#endif
