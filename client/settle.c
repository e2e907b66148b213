/*
 * settle.c — settling: how a pending call ends, whoever ends it.
 *
 * Design notes
 * - Who settles a call: whoever removes it from the pending table. The
 *   reply path, the timer, cancel, send failure, the unavailable sweep and
 *   shutdown all go through kreq__table_remove(); exactly one of them gets
 *   the future back and settles it with kreq__settle(); the others find
 *   nothing. The future's own once-only settle is a second, independent
 *   guard.
 * - References: the caller holds one; the table holds one while the call is
 *   pending; the wheel holds one while the call's timer is armed; each
 *   message in librdkafka's queue holds one until its delivery report. So
 *   nothing is freed while another thread may still reach it.
 * - The in-flight slot (backpressure) and the completion queue's room are
 *   taken when a call is made and given back here when it settles, so
 *   settling can never fail for want of either.
 * Below it are only the future, the table, the wheel and the metrics: the
 * admin socket, the health checks and the transport all settle through it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/client_int.h"
#include "common/hoptrace.h"
#include "common/internal.h"

/* ---- backpressure ------------------------------------------------------ */

static bool try_admit(kreq_client_t *c)
{
	if (atomic_fetch_add(&c->in_flight, 1) < (size_t)c->max_in_flight)
		return true;
	atomic_fetch_sub(&c->in_flight, 1);
	return false;
}

int kreq__slot_admit(kreq_client_t *c)
{
	if (try_admit(c))
		return KREQ_OK;
	if (c->bp_wait_ms == 0)
		return KREQ_EBACKPRESSURE;
	int64_t until = kreq__now_ms() + c->bp_wait_ms;
	struct timespec ts = {.tv_sec = until / 1000, .tv_nsec = (until % 1000) * 1000000};
	int rc = KREQ_EBACKPRESSURE;
	pthread_mutex_lock(&c->bp_mu);
	atomic_fetch_add(&c->bp_waiters, 1);
	for (;;) {
		if (atomic_load(&c->closing)) {
			rc = KREQ_ECLOSED;
			break;
		}
		if (try_admit(c)) {
			rc = KREQ_OK;
			break;
		}
		if (pthread_cond_timedwait(&c->bp_cv, &c->bp_mu, &ts) == ETIMEDOUT) {
			rc = try_admit(c) ? KREQ_OK : KREQ_EBACKPRESSURE;
			break;
		}
	}
	atomic_fetch_sub(&c->bp_waiters, 1);
	pthread_mutex_unlock(&c->bp_mu);
	return rc;
}

void kreq__slot_release(kreq_client_t *c)
{
	atomic_fetch_sub(&c->in_flight, 1);
	if (atomic_load(&c->bp_waiters) > 0) {
		pthread_mutex_lock(&c->bp_mu);
		pthread_cond_signal(&c->bp_cv);
		pthread_mutex_unlock(&c->bp_mu);
	}
}

/* ---- completion queue -------------------------------------------------- */

/* Reserves room in the completion queue for a notifying call's future
 * (grows the ring if needed); false if out of memory. */
bool kreq__completion_reserve(kreq_client_t *c)
{
	bool ok = true;
	pthread_mutex_lock(&c->done_mu);
	if (c->done_reserved == c->done_cap) {
		size_t cap = c->done_cap ? 2 * c->done_cap : 64;
		kreq_future_t **r = malloc(cap * sizeof(*r));
		if (r) { /* the queued ones, oldest first, at the start */
			for (size_t i = 0; i < c->done_len; i++)
				r[i] = c->done_ring[(c->done_head + i) % c->done_cap];
			free(c->done_ring);
			c->done_ring = r;
			c->done_cap = cap;
			c->done_head = 0;
		}
		ok = r != NULL;
	}
	c->done_reserved += ok;
	pthread_mutex_unlock(&c->done_mu);
	return ok;
}

void kreq__completion_unreserve(kreq_client_t *c)
{
	pthread_mutex_lock(&c->done_mu);
	c->done_reserved--;
	pthread_mutex_unlock(&c->done_mu);
}

/* Queues a settled notifying call (its room was reserved when it was made,
 * and done_len <= done_reserved <= done_cap). */
static void push_completed(kreq_client_t *c, kreq_future_t *f)
{
	pthread_mutex_lock(&c->done_mu);
	c->done_ring[(c->done_head + c->done_len++) % c->done_cap] = f;
	uint64_t one = 1;
	ssize_t n = write(c->done_fd, &one, sizeof(one)); /* counter > 0: readable */
	(void)n;
	pthread_mutex_unlock(&c->done_mu);
}

kreq_future_t *kreq_client_next_completed(kreq_client_t *c)
{
	if (!c)
		return NULL;
	pthread_mutex_lock(&c->done_mu);
	kreq_future_t *f = NULL;
	if (c->done_len) {
		f = c->done_ring[c->done_head];
		c->done_head = (c->done_head + 1) % c->done_cap;
		c->done_len--;
		c->done_reserved--;
		uint64_t v; /* EFD_SEMAPHORE: one read per queued completion */
		ssize_t n = read(c->done_fd, &v, sizeof(v));
		(void)n;
	}
	pthread_mutex_unlock(&c->done_mu);
	return f;
}

int kreq_client_event_fd(const kreq_client_t *c)
{
	return c ? c->done_fd : KREQ_EINVAL;
}

void kreq__completions_drop(kreq_client_t *c)
{
	kreq_future_t *f;
	while ((f = kreq_client_next_completed(c)) != NULL)
		kreq_future_release(f);
}

/* ---- settling ---------------------------------------------------------- */

/* Settles a call that the caller has just removed from the table (and so
 * owns the table's reference, which this gives up). */
void kreq__settle(kreq_client_t *c, kreq_future_t *f, int err, int32_t status, void *payload,
                  size_t len, bool dedup, const char *msg, kreq__outcome_t outcome)
{
	kreq__call_t *call = kreq__call_of(f);
	if (kreq__wheel_cancel(c->wheel, &call->timer))
		kreq_future_release(f); /* the wheel's reference */
	/* bookkeeping first: whoever the settlement wakes sees it done */
	atomic_fetch_add_explicit(&c->metrics.outcome[outcome], 1, memory_order_relaxed);
	kreq__hist_observe(&c->metrics.duration, (kreq__mono_ns() - call->start_ns) / 1000);
	kreq__slot_release(c);
	kreq__hop(C_SETTLED); /* before: the waiter may run at once */
	kreq__future_settle(f, err, status, payload, len, dedup, msg);
	if (call->notify)
		push_completed(c, f); /* hands over the table's reference */
	else
		kreq_future_release(f); /* the table's reference */
}

/* Removes and settles a call if it is still pending. */
bool kreq__settle_pending(kreq_client_t *c, const uint8_t id[16], int err, const char *msg,
                          kreq__outcome_t outcome)
{
	kreq_future_t *f = kreq__table_remove(c->table, id);
	if (!f)
		return false;
	kreq__settle(c, f, err, 0, NULL, 0, false, msg, outcome);
	return true;
}

typedef struct settle_all {
	kreq_client_t *c;
	int err;
	const char *msg;
	kreq__outcome_t outcome;
} settle_all_t;

static void settle_one(void *value, void *arg)
{
	const settle_all_t *a = arg;
	kreq__settle(a->c, value, a->err, 0, NULL, 0, false, a->msg, a->outcome);
}

void kreq__settle_all(kreq_client_t *c, int err, const char *msg, kreq__outcome_t outcome)
{
	settle_all_t a = {c, err, msg, outcome};
	kreq__table_drain(c->table, settle_one, &a);
}

/* ---- failing one service's calls (health.c) ----------------------------- */

typedef struct svc_ids {
	const char *service;
	size_t len;
	uint8_t (*ids)[16];
	size_t n, cap;
} svc_ids_t;

static void collect_service(void *value, void *arg)
{
	svc_ids_t *s = arg;
	const kreq__call_t *call = kreq__future_extra(value);
	const char *m = (const char *)call->blob, *dot = strrchr(m, '.');
	size_t len = dot ? (size_t)(dot - m) : strlen(m);
	if (len != s->len || memcmp(m, s->service, len) != 0)
		return;
	if (s->n == s->cap) {
		size_t cap = s->cap ? 2 * s->cap : 64;
		uint8_t(*ids)[16] = realloc(s->ids, cap * sizeof(*ids));
		if (!ids)
			return;
		s->ids = ids;
		s->cap = cap;
	}
	memcpy(s->ids[s->n++], call->corr_id, 16);
}

size_t kreq__client_fail_service(kreq_client_t *c, const char *service, const char *msg)
{
	svc_ids_t s = {.service = service, .len = strlen(service)};
	kreq__table_foreach(c->table, collect_service, &s); /* ids only: settle outside locks */
	size_t failed = 0;
	for (size_t i = 0; i < s.n; i++)
		failed += kreq__settle_pending(c, s.ids[i], KREQ_EUNAVAILABLE, msg,
		                               KREQ__OUT_UNAVAILABLE);
	free(s.ids);
	return failed;
}

/* ---- figures ------------------------------------------------------------ */

size_t kreq_client_in_flight(const kreq_client_t *c)
{
	return c ? atomic_load(&((kreq_client_t *)c)->in_flight) : 0;
}

int kreq_client_metrics_text(const kreq_client_t *c, char **text)
{
	if (!c || !text)
		return KREQ_EINVAL;
	size_t len;
	FILE *out = open_memstream(text, &len);
	if (!out)
		return KREQ_ENOMEM;
	kreq__client_metrics_render(&c->metrics, kreq_client_in_flight(c), c->client_id, out);
	return fclose(out) == 0 ? KREQ_OK : KREQ_ENOMEM;
}
