/* faultload.c — see faultload.h. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "faultload.h"
#include "kreq/error.h"
#include "testsupport.h"

const char *fault_worker_path;
const char *bootstrap;
const char *worker_bootstrap;
char prefix[64], key_hex[65], record_path[256];
kreq_keyring_t *kr;

/* ---- worker processes ----------------------------------------------------- */

worker_t workers[MAX_WORKERS];

void fault_fixture_open(const char *tag, const char *name)
{
	kreq_test_topic_name(prefix, sizeof(prefix), tag);
	uint8_t key[32];
	randombytes_buf(key, 32);
	sodium_bin2hex(key_hex, sizeof(key_hex), key, 32);
	kr = kreq_keyring_new();
	ck_assert_int_eq(kreq_keyring_add(kr, "k1", KREQ_KEY_HMAC_SHA256, key, 32, NULL, 0),
	                 KREQ_OK);
	ck_assert_int_eq(kreq_keyring_set_signing_key(kr, "k1"), KREQ_OK);
	snprintf(record_path, sizeof(record_path), "/tmp/kreq-%s-%d-%u.log", name, (int)getpid(),
	         randombytes_uniform(1000000));
	memset(workers, 0, sizeof(workers));
}

void fault_fixture_close(void)
{
	for (int i = 0; i < MAX_WORKERS; i++)
		if (workers[i].pid > 0) {
			kill(workers[i].pid, SIGKILL);
			waitpid(workers[i].pid, NULL, 0);
		}
	unlink(record_path);
	kreq_keyring_release(kr);
}

void worker_spawn(int slot, const char *mode)
{
	worker_t *w = &workers[slot];
	snprintf(w->id, sizeof(w->id), "w%d", slot);
	int fds[2];
	ck_assert_int_eq(pipe(fds), 0);
	/* PR_SET_PDEATHSIG fires when the forking THREAD ends: only a worker
	 * forked by the main thread gets it (the rolling-restart test forks
	 * from a thread that ends after the roll; teardown kills those) */
	bool main_thread = syscall(SYS_gettid) == getpid();
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		if (main_thread) /* a test killed by its timeout leaves none */
			prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(fds[1], 1);
		close(fds[0]);
		close(fds[1]);
		execl(fault_worker_path, "fault_worker",
		      worker_bootstrap ? worker_bootstrap : bootstrap, prefix, w->id, record_path,
		      key_hex, mode, (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	w->pid = pid;
	/* wait for "ready" (the group assigned it partitions), bounded */
	char buf[64] = "";
	size_t got = 0;
	int64_t until = kreq_test_now_ms() + 90000;
	while (!strstr(buf, "ready") && kreq_test_now_ms() < until && got < sizeof(buf) - 1) {
		struct pollfd p = {fds[0], POLLIN, 0};
		if (poll(&p, 1, 200) > 0) {
			ssize_t n = read(fds[0], buf + got, sizeof(buf) - 1 - got);
			if (n <= 0)
				break;
			got += (size_t)n;
			buf[got] = 0;
		}
	}
	close(fds[0]);
	ck_assert_msg(strstr(buf, "ready"), "worker %s did not become ready", w->id);
}

void worker_signal(int slot, int sig)
{
	worker_t *w = &workers[slot];
	if (w->pid <= 0)
		return;
	kill(w->pid, sig);
	int st = 0;
	ck_assert_int_eq(waitpid(w->pid, &st, 0), w->pid);
	if (sig == SIGTERM)
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		              "worker %s did not stop cleanly (status %d)", w->id, st);
	w->pid = 0;
}

/* ---- the load ------------------------------------------------------------- */

op_t ops[MAX_OPS];
uint32_t sleep_min_ms = 0, sleep_span_ms = 40;

kreq_future_t *submit(kreq_client_t *c, op_t *op)
{
	kreq_call_opts_t *o = kreq_call_opts_new();
	kreq_call_opts_set_timeout(o, 20000);
	kreq_call_opts_set_idempotency_key(o, op->key, strlen(op->key));
	kreq_future_t *f = NULL;
	int rc = kreq_client_call(c, "svc.record", op->payload, strlen(op->payload), o, &f);
	kreq_call_opts_destroy(o);
	if (!op->calls++)
		op->first_ms = kreq_test_now_ms();
	ck_assert_msg(op->calls < 300,
	              "operation %s was called 300 times without a reply (last: %s)", op->key,
	              op->last_err);
	if (rc != KREQ_OK) {
		op->not_before = kreq_test_now_ms() + 250;
		snprintf(op->last_err, sizeof(op->last_err), "refused at once with %s",
		         kreq_err_name(rc));
	}
	return rc == KREQ_OK ? f : NULL;
}

/* A status 2 the worker gives a request it did not start because its
 * deadline came first (it waited in Kafka or in the handler queue through
 * a stall): not stored, so calling again with the key runs the work. A
 * later call with the same key that joined that request gets the same
 * answer (from_dedup set; docs/protocol.md 4.1). A status 2 for a handler
 * that started and overran ("did not finish") is stored and stays an
 * error here (these handlers take at most sleep_min_ms + sleep_span_ms). */
static bool unstarted_deadline(kreq_future_t *f)
{
	const char *e = kreq_future_errstr(f);
	return kreq_future_status(f) == 2 && e &&
	       !strcmp(e, "deadline exceeded before the work could start");
}

/* True when the op is finished; false when it must be called again. */
bool settle(op_t *op, kreq_future_t *f)
{
	int err = kreq_future_err(f);
	if (err != KREQ_OK) {
		snprintf(op->last_err, sizeof(op->last_err), "%s: %s", kreq_err_name(err),
		         kreq_future_errstr(f));
		ck_assert_msg(err == KREQ_ETIMEDOUT || err == KREQ_EUNAVAILABLE ||
		                  err == KREQ_EREJECTED,
		              "%s: unexpected error %s: %s", op->key, kreq_err_name(err),
		              kreq_future_errstr(f));
		if (err == KREQ_EREJECTED) /* "shutting down", or too late to start */
			ck_assert_msg(kreq_future_status(f) == 9 || unstarted_deadline(f),
			              "%s: refused with status %d: %s", op->key,
			              kreq_future_status(f), kreq_future_errstr(f));
		if (err == KREQ_EUNAVAILABLE)
			op->not_before = kreq_test_now_ms() + 250;
		return false;
	}
	ck_assert_msg(kreq_future_status(f) == 0, "%s: status %d", op->key, kreq_future_status(f));
	size_t len;
	const char *p = kreq_future_payload(f, &len);
	ck_assert_uint_eq(len, 32);
	if (op->seen[0])
		ck_assert_msg(!memcmp(op->seen, p, 32), "%s: two different replies: %s and %.32s",
		              op->key, op->seen, p);
	memcpy(op->seen, p, 32);
	op->seen[32] = 0;
	return true;
}

kreq_client_t *load_client(void)
{
	char id[32], err[512];
	snprintf(id, sizeof(id), "load-%u", randombytes_uniform(1000000));
	kreq_conf_t *conf = kreq_conf_new();
	kreq_conf_set(conf, "kafka.bootstrap.servers", bootstrap, err, sizeof(err));
	kreq_conf_set(conf, "topic.prefix", prefix, err, sizeof(err));
	kreq_conf_set(conf, "client.id", id, err, sizeof(err));
	kreq_conf_set(conf, "retry.attempt.timeout.ms", "3000", err, sizeof(err));
	kreq_conf_set(conf, "service.check.ms", "1000", err, sizeof(err));
	kreq_conf_set(conf, "log.level",
	              getenv("KREQ_FAULT_CLIENT_LOG") ? getenv("KREQ_FAULT_CLIENT_LOG") : "3", err,
	              sizeof(err));
	kreq_client_t *c = kreq_client_new(conf, kr, err, sizeof(err));
	ck_assert_msg(c != NULL, "%s", err);
	kreq_conf_destroy(conf);
	return c;
}

void ops_init(int nops)
{
	for (int i = 0; i < nops; i++) {
		memset(&ops[i], 0, sizeof(ops[i]));
		snprintf(ops[i].key, sizeof(ops[i].key), "op-%d", i);
		snprintf(ops[i].payload, sizeof(ops[i].payload), "sleep:%u|op-%d",
		         sleep_min_ms + randombytes_uniform(sleep_span_ms), i);
	}
}

void run_load(int nops, schedule_fn schedule, void *arg)
{
	kreq_client_t *c = load_client();
	ops_init(nops);
	kreq_future_t *win[WINDOW] = {0};
	int which[WINDOW], next = 0, finished = 0, step = 0;
	int64_t until = kreq_test_now_ms() + 400000;
	int retry_queue[MAX_OPS], nretry = 0;
	while (finished < nops) {
		ck_assert_msg(kreq_test_now_ms() < until, "load did not finish: %d of %d done",
		              finished, nops);
		for (int s = 0; s < WINDOW; s++) {
			if (win[s])
				continue;
			int op = -1;
			if (nretry && ops[retry_queue[nretry - 1]].not_before <= kreq_test_now_ms())
				op = retry_queue[--nretry];
			else if (next < nops)
				op = next++;
			if (op < 0)
				break;
			if (!(win[s] = submit(c, &ops[op])))
				retry_queue[nretry++] = op; /* refused at once: later */
			which[s] = op;
		}
		kreq_future_t *live[WINDOW];
		size_t slot_of[WINDOW], nlive = 0, idx;
		for (size_t w = 0; w < WINDOW; w++)
			if (win[w]) {
				slot_of[nlive] = w;
				live[nlive++] = win[w];
			}
		if (nlive == 0) { /* everything was refused at once: back off */
			kreq_test_poll_pause();
			continue;
		}
		int rc = kreq_future_wait_any(live, nlive, 200, &idx);
		if (rc == KREQ_ETIMEDOUT)
			continue;
		ck_assert_int_eq(rc, KREQ_OK);
		idx = slot_of[idx];
		op_t *op = &ops[which[idx]];
		if (settle(op, win[idx])) {
			op->done = true;
			op->done_ms = kreq_test_now_ms();
			finished++;
		} else {
			retry_queue[nretry++] = which[idx];
		}
		kreq_future_release(win[idx]);
		win[idx] = NULL;
		if (schedule)
			schedule(++step, arg);
	}
	kreq_client_destroy(c);
}

void check_records(int nops, int *reruns)
{
	FILE *f = fopen(record_path, "r");
	ck_assert_ptr_nonnull(f);
	static char last[MAX_OPS][33];
	static int count[MAX_OPS];
	memset(last, 0, sizeof(last));
	memset(count, 0, sizeof(count));
	char k[64], e[64];
	while (fscanf(f, "%63s %63s", k, e) == 2) {
		int i = atoi(k + 3);
		ck_assert(i >= 0 && i < nops && strlen(e) == 32);
		snprintf(last[i], sizeof(last[i]), "%s", e);
		count[i]++;
	}
	fclose(f);
	*reruns = 0;
	for (int i = 0; i < nops; i++) {
		ck_assert_msg(ops[i].done, "%s never got a reply", ops[i].key);
		ck_assert_msg(count[i] >= 1, "%s: reply without a recorded execution", ops[i].key);
		ck_assert_msg(!strcmp(last[i], ops[i].seen),
		              "%s: the handler ran again after the result the caller saw (%s) "
		              "was committed; last execution %s",
		              ops[i].key, ops[i].seen, last[i]);
		*reruns += count[i] - 1;
	}
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

stall_t load_stall(int nops, int64_t from_ms, int64_t to_ms)
{
	static int64_t t[MAX_OPS];
	stall_t st = {0};
	int n = 0;
	for (int i = 0; i < nops; i++)
		if (ops[i].done)
			t[n++] = ops[i].done_ms;
	qsort(t, (size_t)n, sizeof(t[0]), cmp_i64);
	for (int i = 1; i < n; i++)
		if (t[i] - t[i - 1] > st.max_gap_ms)
			st.max_gap_ms = t[i] - t[i - 1];
	n = 0;
	for (int i = 0; i < nops; i++)
		if (ops[i].done && ops[i].first_ms >= from_ms && ops[i].first_ms < to_ms)
			t[n++] = ops[i].done_ms - ops[i].first_ms;
	qsort(t, (size_t)n, sizeof(t[0]), cmp_i64);
	st.ops = n;
	if (n) {
		st.p99_ms = t[(n * 99 + 99) / 100 - 1];
		st.max_ms = t[n - 1];
	}
	return st;
}
