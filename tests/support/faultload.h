/*
 * faultload.h — the crash and fault tests' workers, load and checks
 * (tests/worker/test_fault.c, test_cluster3.c).
 *
 * Workers are separate processes (tests/worker/fault_worker: the real
 * worker library) that record every handler execution in a file outside
 * Kafka and reply with that execution's id. run_load() drives a steady
 * load of logical operations, each with its own idempotency key; an
 * operation whose call ends in an error (timeout, unavailable) is called
 * again with the same key, as a restarted client would. schedule(step) is
 * called after every settled call so a test can inject faults. Then
 * check_records() checks:
 *   - every call settled (nothing hangs), and every operation got a reply;
 *   - no operation ever saw two different replies (execution ids);
 *   - the execution the caller saw is the LAST execution recorded for its
 *     key: once a result was committed (and only committed replies are
 *     visible to the read_committed client), the handler never ran again.
 * The state is shared by the suite (one test at a time per process).
 */
#ifndef KREQ_TEST_FAULTLOAD_H
#define KREQ_TEST_FAULTLOAD_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "kreq/client.h"

#define MAX_OPS     12000
#define WINDOW      32
#define MAX_WORKERS 4

extern const char *fault_worker_path; /* the fault_worker binary */
extern const char *bootstrap;
/* where workers connect (NULL: bootstrap); test_netfault: through its proxy */
extern const char *worker_bootstrap;
extern char prefix[64], key_hex[65], record_path[256];
extern kreq_keyring_t *kr;

typedef struct {
	pid_t pid;
	char id[32];
} worker_t;

extern worker_t workers[MAX_WORKERS];

typedef struct {
	char key[32];
	char payload[64];
	char seen[33]; /* execution id of the reply, "" until one came */
	int calls;
	int64_t not_before; /* back off after "unavailable" */
	bool done;
	int64_t first_ms, done_ms; /* first submission, reply (kreq_test_now_ms) */
	char last_err[200];        /* why its last call failed, for the failure message */
} op_t;

extern op_t ops[MAX_OPS];
/* each operation's handler sleeps sleep_min_ms + [0, sleep_span_ms) ms */
extern uint32_t sleep_min_ms, sleep_span_ms;

typedef void (*schedule_fn)(int step, void *arg);

/* A test's fixture: prefix (a fresh topic prefix tagged tag), a random
 * signing key (key_hex, kr), record_path (/tmp/kreq-<name>-...) and no
 * workers; fault_fixture_close() kills the workers left, deletes the
 * record file and releases the keyring. */
void fault_fixture_open(const char *tag, const char *name);
void fault_fixture_close(void);
/* Starts worker slot (id "w<slot>") and waits until it serves. */
void worker_spawn(int slot, const char *mode);

/* Sends sig to worker slot and reaps it (SIGTERM: it must exit 0). */
void worker_signal(int slot, int sig);

/* A load client of this test's prefix (retry attempts of 3 s). */
kreq_client_t *load_client(void);

/* ops[0..nops) reset: keys op-<i>, payloads with their handler time. */
void ops_init(int nops);

/* Submits op's call (NULL: refused at once, op->not_before set); settle()
 * takes its outcome: true when op got its reply. */
kreq_future_t *submit(kreq_client_t *c, op_t *op);
bool settle(op_t *op, kreq_future_t *f);

/* Runs nops operations with WINDOW in flight (see above). The client logs
 * errors only; KREQ_FAULT_CLIENT_LOG=<syslog level> (e.g. 5) shows more
 * when a run needs explaining. */
void run_load(int nops, schedule_fn schedule, void *arg);

/* Every key's accepted execution is its last recorded one; *reruns gets
 * the executions whose result was never committed. */
void check_records(int nops, int *reruns);

/* How long calls stalled: the longest time without a reply over the whole
 * load, and the p99 and largest time from an operation's first submission
 * to its reply over the operations first submitted in [from_ms, to_ms). */
typedef struct {
	int64_t max_gap_ms, p99_ms, max_ms;
	int ops;
} stall_t;

stall_t load_stall(int nops, int64_t from_ms, int64_t to_ms);

#endif
