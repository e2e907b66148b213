/*
 * builtins.c — see builtins.h.
 *
 * Design: one handler function per built-in, each opaque pointing to the
 * shared kreqd_builtins_t (which holds the record file descriptor). The
 * blocking ones (sleep, record) run on the worker's handler pool and sleep
 * in short slices so a cancel (kreq_request_cancelled(): a Cancel message,
 * or the worker abandoning the request at the end of its shutdown grace)
 * is noticed within 10 ms, and stop at the request's deadline: they reply
 * status 2 then instead of sleeping on for a caller who gave up. `record` writes its whole line
 * with ONE write(2) on an O_APPEND descriptor: concurrent handlers (and several kreqd processes
 * sharing the file) never interleave lines, and the line is in the kernel the moment write()
 * returns, so a kill -9 afterwards loses nothing; tests count executions by counting lines.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker/kreqd/builtins.h"
#include "common/internal.h"
#include "kreq/keyring.h"

#define SLICE_NS        (10 * 1000000L)
#define NUM_TEXT_MAX    16
#define RECORD_LINE_MAX (KREQ_KEY_ID_MAX + 2 * 255 + 255 + 4)

enum { B_ECHO, B_SLEEP, B_FAIL, B_RECORD, B_COUNT };

struct kreqd_builtins {
	bool on[B_COUNT];
	char *record_file;
	int record_fd;
};

/* ---- payload parsing ---------------------------------------------------- */

/* Strict decimal in [min, max] from a payload that is not NUL-terminated. */
static bool parse_num(const void *p, size_t len, long min, long max, long *out)
{
	char tmp[NUM_TEXT_MAX];
	if (len == 0 || len >= sizeof(tmp))
		return false;
	memcpy(tmp, p, len);
	tmp[len] = '\0';
	if (strspn(tmp, "0123456789") != len)
		return false;
	errno = 0;
	long v = strtol(tmp, NULL, 10);
	if (errno != 0 || v < min || v > max)
		return false;
	*out = v;
	return true;
}

static void refuse(kreq_request_t *r, const char *what)
{
	kreq_request_reply(r, KREQD_STATUS_BAD_PAYLOAD, NULL, 0, what);
}

static void echo_payload(kreq_request_t *r)
{
	size_t len;
	const void *p = kreq_request_payload(r, &len);
	kreq_request_reply(r, KREQ_STATUS_OK, p, len, NULL);
}

/* ---- sleeping, honouring cancel ---------------------------------------- */

static int64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

enum { SLEPT, CANCELLED, DEADLINE };

/* Sleeps ms in slices, stopping early once cancelled or once the request's
 * deadline passed (nobody waits for the answer any more). */
static int sleep_within(kreq_request_t *r, long ms)
{
	int64_t end = mono_ns() + (int64_t)ms * 1000000;
	for (;;) {
		if (kreq_request_cancelled(r))
			return CANCELLED;
		int64_t left = end - mono_ns();
		if (left <= 0)
			return SLEPT;
		int64_t budget = kreq_request_remaining_ms(r) * 1000000;
		if (budget <= 0)
			return DEADLINE;
		if (budget < left)
			left = budget;
		struct timespec d = {0, left < SLICE_NS ? (long)left : SLICE_NS};
		nanosleep(&d, NULL);
	}
}

/* Sleeps, then echoes the payload, or replies "cancelled" (status 3) or
 * "deadline" (status 2) when it stopped early. */
static void sleep_then_echo(kreq_request_t *r, const char *who, long ms)
{
	int64_t start = mono_ns();
	int how = sleep_within(r, ms);
	if (how == SLEPT) {
		echo_payload(r);
		return;
	}
	char msg[128];
	snprintf(msg, sizeof(msg), "%s: %s after %lld of %ld ms", who,
	         how == CANCELLED ? "cancelled" : "deadline reached",
	         (long long)((mono_ns() - start) / 1000000), ms);
	kreq_request_reply(r, how == CANCELLED ? KREQ_STATUS_CANCELLED : KREQ_STATUS_DEADLINE, NULL,
	                   0, msg);
}

/* ---- the handlers ------------------------------------------------------- */

static void h_echo(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	echo_payload(r);
}

static void h_sleep(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	size_t len;
	const void *p = kreq_request_payload(r, &len);
	long ms;
	if (!parse_num(p, len, 0, KREQD_SLEEP_MAX_MS, &ms)) {
		refuse(r, "sleep: payload must be a decimal number of milliseconds, 0..3600000");
		return;
	}
	sleep_then_echo(r, "sleep", ms);
}

static void h_fail(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	size_t len;
	const void *p = kreq_request_payload(r, &len);
	long status = 500;
	if (len && !parse_num(p, len, KREQ_STATUS_USER_MIN, INT32_MAX, &status)) {
		refuse(r, "fail: payload must be empty or a decimal status 100..2147483647");
		return;
	}
	kreq_request_reply(r, (int32_t)status, NULL, 0, "failed on purpose");
}

static size_t record_line(kreq_request_t *r, char *line)
{
	static const char digits[] = "0123456789abcdef";
	size_t idem_len, n = 0;
	const uint8_t *idem = kreq_request_idempotency_key(r, &idem_len);
	const char *key_id = kreq_request_key_id(r), *method = kreq_request_method(r);
	size_t klen = strnlen(key_id, KREQ_KEY_ID_MAX), mlen = strnlen(method, 255);
	memcpy(line, key_id, klen);
	n += klen;
	line[n++] = ' ';
	for (size_t i = 0; i < idem_len && i < 255; i++) {
		line[n++] = digits[idem[i] >> 4];
		line[n++] = digits[idem[i] & 15];
	}
	line[n++] = ' ';
	memcpy(line + n, method, mlen);
	n += mlen;
	line[n++] = '\n';
	return n;
}

/* "sleep:<ms>" at the start of the payload: 1 (and *ms), 0 absent, -1 bad. */
static int record_sleep_arg(const char *p, size_t len, long *ms)
{
	if (len < 6 || memcmp(p, "sleep:", 6) != 0)
		return 0;
	size_t digits = 0;
	while (6 + digits < len && p[6 + digits] >= '0' && p[6 + digits] <= '9')
		digits++;
	return parse_num(p + 6, digits, 0, KREQD_SLEEP_MAX_MS, ms) ? 1 : -1;
}

static void h_record(kreq_request_t *r, void *opaque)
{
	kreqd_builtins_t *b = opaque;
	char line[RECORD_LINE_MAX];
	size_t n = record_line(r, line);
	ssize_t w = write(b->record_fd, line, n);
	if (w != (ssize_t)n) {
		char msg[512];
		snprintf(msg, sizeof(msg), "record: cannot append to %s: %s", b->record_file,
		         w < 0 ? strerror(errno) : "short write");
		kreq_request_reply(r, KREQD_STATUS_RECORD_FAILED, NULL, 0, msg);
		return;
	}
	size_t len;
	const char *p = kreq_request_payload(r, &len);
	long ms = 0;
	int rc = record_sleep_arg(p, len, &ms);
	if (rc < 0)
		refuse(r, "record: a payload starting with \"sleep:\" needs a decimal number of "
		          "milliseconds after it, 0..3600000");
	else if (rc > 0)
		sleep_then_echo(r, "record", ms);
	else
		echo_payload(r);
}

static const struct builtin {
	const char *name;
	kreq_handler_fn *fn;
	int flags;
} table[B_COUNT] = {
    [B_ECHO] = {"echo", h_echo, KREQ_HANDLER_INLINE},
    [B_SLEEP] = {"sleep", h_sleep, 0},
    [B_FAIL] = {"fail", h_fail, KREQ_HANDLER_INLINE},
    [B_RECORD] = {"record", h_record, 0},
};

/* ---- set-up --------------------------------------------------------------- */

static int find(const char *name)
{
	for (int i = 0; i < B_COUNT; i++)
		if (!strcmp(table[i].name, name))
			return i;
	return -1;
}

static int parse_list(kreqd_builtins_t *b, const char *list, char *errstr, size_t errstr_size)
{
	char *copy = strdup(list), *save = NULL;
	if (!copy)
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	int err = KREQ_OK;
	for (char *tok = strtok_r(copy, ",", &save); tok && !err;
	     tok = strtok_r(NULL, ",", &save)) {
		tok += strspn(tok, " \t");
		tok[strcspn(tok, " \t")] = '\0';
		int i = find(tok);
		if (i < 0)
			err =
			    kreq__err(errstr, errstr_size, KREQ_ECONF,
			              "kreqd.builtins: unknown built-in \"%s\" (echo, sleep, fail, "
			              "record)",
			              tok);
		else if (b->on[i])
			err = kreq__err(errstr, errstr_size, KREQ_ECONF,
			                "kreqd.builtins: \"%s\" is listed twice", tok);
		else
			b->on[i] = true;
	}
	free(copy);
	return err;
}

static int open_record(kreqd_builtins_t *b, const char *path, bool open_files, char *errstr,
                       size_t errstr_size)
{
	if (!*path)
		return kreq__err(errstr, errstr_size, KREQ_ECONF,
		                 "kreqd.builtins lists record but kreqd.record.file is not set");
	if (!(b->record_file = strdup(path)))
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	if (!open_files)
		return KREQ_OK;
	b->record_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (b->record_fd < 0)
		return kreq__err(errstr, errstr_size, KREQ_EIO, "kreqd.record.file %s: %s", path,
		                 strerror(errno));
	return KREQ_OK;
}

int kreqd_builtins_new(const char *list, const char *record_file, bool open_files,
                       kreqd_builtins_t **out, char *errstr, size_t errstr_size)
{
	kreqd_builtins_t *b = calloc(1, sizeof(*b));
	if (!b)
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	b->record_fd = -1;
	int err = parse_list(b, list, errstr, errstr_size);
	if (!err && b->on[B_RECORD])
		err = open_record(b, record_file, open_files, errstr, errstr_size);
	if (err) {
		kreqd_builtins_destroy(b);
		return err;
	}
	*out = b;
	return KREQ_OK;
}

int kreqd_builtins_register(kreqd_builtins_t *b, kreq_worker_t *s, const char *service,
                            char *errstr, size_t errstr_size)
{
	for (int i = 0; i < B_COUNT; i++) {
		if (!b->on[i])
			continue;
		char method[512];
		snprintf(method, sizeof(method), "%s.%s", service, table[i].name);
		int err = kreq_worker_register(s, method, table[i].fn, b, table[i].flags);
		if (err)
			return kreq__err(errstr, errstr_size, err, "registering built-in %s: %s",
			                 method, kreq_strerror(err));
	}
	return KREQ_OK;
}

void kreqd_builtins_destroy(kreqd_builtins_t *b)
{
	if (!b)
		return;
	if (b->record_fd >= 0)
		close(b->record_fd);
	free(b->record_file);
	free(b);
}
