/*
 * retry.c — every call's one timer: the attempt timeout, the backoff
 * before a retry, and the deadline, whichever is next.
 *
 * Why a file of its own: expiry is driven by one timing wheel (client/
 * wheel.h), not a timer or thread per call, and what a firing timer means
 * (retry, wait with jittered backoff, or time the call out) is the retry
 * policy (retry.max.attempts, retry.attempt.timeout.ms, retry.backoff.ms,
 * retry.backoff.max.ms). Timers fire on the service thread; callers arm the
 * first one when they submit a call.
 */
#include <stdio.h>

#include <sodium.h>

#include "client/client_int.h"

#define EXPIRE_BATCH 256

/* Arms the call's timer; the caller hands its reference on f to the wheel. */
void kreq__arm(kreq_client_t *c, kreq__call_t *call, int64_t when)
{
	int64_t deadline = kreq__call_deadline_mono(call);
	if (when > deadline)
		when = deadline;
	kreq__wheel_arm(c->wheel, &call->timer, when);
	if (when < atomic_load(&c->sleep_until_ms))
		kreq__client_wake(c);
}

static int64_t backoff_ms(const kreq_client_t *c, uint32_t attempt)
{
	int64_t cap = c->backoff_ms;
	for (uint32_t i = 1; i < attempt && cap < c->backoff_max_ms; i++)
		cap *= 2;
	if (cap > c->backoff_max_ms)
		cap = c->backoff_max_ms;
	return cap > 0 ? (int64_t)randombytes_uniform((uint32_t)cap + 1) : 0; /* full jitter */
}

/* The call's timer fired; the service thread owns the wheel's reference. */
static void on_timer(kreq_client_t *c, kreq_future_t *f)
{
	kreq__call_t *call = kreq__call_of(f);
	int64_t now = kreq__mono_ms();
	unsigned attempt = kreq__call_attempt(call);
	if (now >= kreq__call_deadline_mono(call)) {
		char msg[96];
		snprintf(msg, sizeof(msg), "deadline passed after %u attempt%s", attempt,
		         attempt == 1 ? "" : "s");
		kreq__settle_pending(c, call->corr_id, KREQ_ETIMEDOUT, msg, KREQ__OUT_TIMEOUT);
		kreq_future_release(f);
		return;
	}
	if (kreq__table_find(c->table, call->corr_id) != f) { /* settled meanwhile */
		kreq_future_release(f);
		return;
	}
	/* svc: only this thread writes it; whole-byte stores (admin reads) */
	if (!(call->svc & KREQ__SVC_BACKOFF)) {
		if (attempt >= (unsigned)c->max_attempts) {
			kreq__arm(c, call, kreq__call_deadline_mono(call)); /* no retries left */
			return;
		}
		__atomic_store_n(&call->svc, (uint8_t)(attempt | KREQ__SVC_BACKOFF),
		                 __ATOMIC_RELAXED);
		kreq__arm(c, call, now + backoff_ms(c, attempt));
		return;
	}
	__atomic_store_n(&call->svc, (uint8_t)(attempt + 1), __ATOMIC_RELAXED); /* waiting again */
	atomic_fetch_add_explicit(&c->metrics.retries, 1, memory_order_relaxed);
	kreq__send_request(c, f); /* on failure the next attempt timeout retries again */
	kreq__arm(c, call, now + c->attempt_timeout_ms);
}

void kreq__expire_timers(kreq_client_t *c)
{
	kreq__timer_node_t *batch[EXPIRE_BATCH];
	size_t n;
	do {
		n = kreq__wheel_expire(c->wheel, kreq__mono_ms(), batch, EXPIRE_BATCH);
		for (size_t i = 0; i < n; i++) {
			kreq__call_t *call =
			    (kreq__call_t *)((char *)batch[i] - offsetof(kreq__call_t, timer));
			on_timer(c, kreq__future_from_extra(call));
		}
	} while (n == EXPIRE_BATCH);
}
