/*
 * request.c — what a handler sees (kreq_request_*), the handler pool and
 * the completion list that carries replies back to the loop thread.
 *
 * Why a completion list instead of producing from the handler's thread:
 * the reply, the result record and the offset must go into the loop's open
 * transaction, and the dedup state (joiners, the stored result) is loop
 * state. kreq_request_reply() therefore only stores the result, appends the
 * request to a mutex-protected list and wakes the loop through its eventfd;
 * it never blocks on Kafka.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker/server_int.h"
#include "common/internal.h"

void kreq__wake(kreq_server_t *s)
{
	uint64_t one = 1;
	ssize_t n = write(s->efd, &one, sizeof(one));
	(void)n; /* EAGAIN: the counter is already non-zero, the loop wakes anyway */
}

/* ---- accessors ---------------------------------------------------------- */

KREQ_API const char *kreq_request_method(const kreq_request_t *r)
{
	return r ? r->op.u.req->method : NULL;
}

KREQ_API const void *kreq_request_payload(const kreq_request_t *r, size_t *len)
{
	if (!r) {
		if (len)
			*len = 0;
		return NULL;
	}
	if (len)
		*len = r->op.u.req->payload.len;
	return r->op.u.req->payload.data;
}

KREQ_API const void *kreq_request_idempotency_key(const kreq_request_t *r, size_t *len)
{
	if (!r) {
		if (len)
			*len = 0;
		return NULL;
	}
	if (len)
		*len = r->op.u.req->idempotency_key.len;
	return r->op.u.req->idempotency_key.data;
}

KREQ_API const char *kreq_request_key_id(const kreq_request_t *r)
{
	return r ? r->op.key_id : NULL;
}

KREQ_API const char *kreq_request_metadata(const kreq_request_t *r, const char *key)
{
	if (!r || !key)
		return NULL;
	const Kreq__Request *q = r->op.u.req;
	for (size_t i = 0; i < q->n_metadata; i++)
		if (!strcmp(q->metadata[i]->key, key))
			return q->metadata[i]->value;
	return NULL;
}

KREQ_API int64_t kreq_request_deadline_ms(const kreq_request_t *r)
{
	return r ? r->op.u.req->deadline_ms : 0;
}

KREQ_API int64_t kreq_request_remaining_ms(const kreq_request_t *r)
{
	return r ? r->op.u.req->deadline_ms - kreq__now_ms() : 0;
}

KREQ_API bool kreq_request_cancelled(const kreq_request_t *r)
{
	return r && atomic_load_explicit(&r->cancelled, memory_order_acquire);
}

/* ---- replying ----------------------------------------------------------- */

static void complete(kreq_request_t *r)
{
	kreq_server_t *s = r->srv;
	atomic_store_explicit(&r->state, KREQ__RQ_REPLIED, memory_order_release);
	pthread_mutex_lock(&s->done_lock);
	bool was_empty = !s->done_head;
	r->next = NULL;
	if (s->done_tail)
		s->done_tail->next = r;
	else
		s->done_head = r;
	s->done_tail = r;
	s->outstanding--;
	if (s->outstanding == 0)
		pthread_cond_broadcast(&s->done_cv);
	pthread_mutex_unlock(&s->done_lock);
	/* an inline handler replying on the loop thread needs no wakeup: the
	 * loop applies completions right after consuming (loop.c step()) */
	if (was_empty && !(atomic_load_explicit(&s->loop_running, memory_order_acquire) &&
	                   pthread_equal(pthread_self(), s->loop_thread)))
		kreq__wake(s);
}

static bool status_valid(int32_t status)
{
	return status == KREQ_STATUS_OK || status == KREQ_STATUS_CANCELLED ||
	       status >= KREQ_STATUS_USER_MIN;
}

KREQ_API int kreq_request_reply(kreq_request_t *r, int32_t status, const void *payload, size_t len,
                                const char *error)
{
	if (!r)
		return KREQ_EINVAL;
	int err = KREQ_OK;
	size_t elen = error ? strnlen(error, KREQ__ERROR_MAX + 1) : 0;
	if (!status_valid(status) || (len && !payload) || len > r->srv->lim.payload_max ||
	    elen > KREQ__ERROR_MAX) {
		err = KREQ_EINVAL;
	} else if ((len && !(r->payload = malloc(len))) ||
	           (elen && !(r->error = strndup(error, elen)))) {
		err = KREQ_ENOMEM;
	}
	if (err) {
		free(r->payload);
		free(r->error);
		r->payload = NULL, r->len = 0;
		r->status = KREQ_STATUS_HANDLER_FAILED;
		r->error = strdup(err == KREQ_EINVAL ? "handler replied with an invalid status, "
		                                       "payload or error text"
		                                     : "out of memory storing the handler's reply");
	} else {
		r->status = status;
		r->len = len;
		if (len)
			memcpy(r->payload, payload, len);
	}
	complete(r);
	return err;
}

/* ---- pool --------------------------------------------------------------- */

/* Runs r's handler. queued: r waited in the pool's queue, so it may have
 * been cancelled or run out of budget meanwhile; an inline start follows
 * the loop's own checks at once (same instant, nothing seen in between),
 * so it neither checks again nor reads the clock again. */
static void run_one(kreq_request_t *r, bool queued)
{
	kreq_server_t *s = r->srv;
	int64_t now = queued ? kreq__mono_ns() : r->consumed_ns;
	kreq__hist_observe(&s->m.queue_time, (now - r->consumed_ns) / 1000);
	if (queued && atomic_load_explicit(&r->cancelled, memory_order_acquire)) {
		kreq_request_reply(r, KREQ_STATUS_CANCELLED, NULL, 0,
		                   "cancelled before it started");
		return;
	}
	if (queued && r->op.u.req->deadline_ms - kreq__now_ms() < s->min_budget_ms) {
		/* waited in the queue past its budget */
		r->status = KREQ_STATUS_DEADLINE;
		r->error = strdup("deadline exceeded before the work could start");
		complete(r);
		return;
	}
	r->started_ns = now;
	atomic_store_explicit(&r->state, KREQ__RQ_RUNNING, memory_order_release);
	r->h->fn(r, r->h->opaque);
}

static void *pool_main(void *arg)
{
	kreq_server_t *s = arg;
	pthread_mutex_lock(&s->pool_lock);
	for (;;) {
		while (!s->pool_head && !s->pool_stop)
			pthread_cond_wait(&s->pool_cv, &s->pool_lock);
		kreq_request_t *r = s->pool_head;
		if (!r)
			break; /* stopping and drained */
		s->pool_head = r->next;
		if (!s->pool_head)
			s->pool_tail = NULL;
		pthread_mutex_unlock(&s->pool_lock);
		if (s->pool_stop) {
			r->status = KREQ_STATUS_SHUTTING_DOWN;
			r->error = strdup("worker shutting down");
			complete(r);
		} else {
			run_one(r, true);
		}
		pthread_mutex_lock(&s->pool_lock);
	}
	pthread_mutex_unlock(&s->pool_lock);
	return NULL;
}

void kreq__pool_drain(kreq_server_t *s)
{
	pthread_mutex_lock(&s->pool_lock);
	kreq_request_t *r = s->pool_head;
	s->pool_head = s->pool_tail = NULL;
	pthread_mutex_unlock(&s->pool_lock);
	while (r) {
		kreq_request_t *next = r->next;
		r->status = KREQ_STATUS_SHUTTING_DOWN;
		r->error = strdup("worker shutting down");
		complete(r);
		r = next;
	}
}

int kreq__pool_start(kreq_server_t *s)
{
	s->pool_stop = false;
	s->pool_started = true;
	for (int i = 0; i < s->nthreads; i++) {
		int rc = pthread_create(&s->threads[i], NULL, pool_main, s);
		if (rc) {
			s->nthreads = i; /* the ones started are stopped and joined */
			kreq__pool_stop(s);
			kreq__loop_fatal(s, KREQ_ENOMEM, "cannot start handler thread %d: %s",
			                 i + 1, strerror(rc));
			return -1;
		}
		pthread_setname_np(s->threads[i], "kreq:handler");
	}
	return 0;
}

void kreq__pool_stop(kreq_server_t *s)
{
	if (!s->pool_started)
		return;
	s->pool_started = false;
	pthread_mutex_lock(&s->pool_lock);
	s->pool_stop = true;
	pthread_cond_broadcast(&s->pool_cv);
	pthread_mutex_unlock(&s->pool_lock);
	for (int i = 0; i < s->nthreads; i++)
		pthread_join(s->threads[i], NULL);
}

void kreq__dispatch(kreq_server_t *s, kreq_request_t *r)
{
	pthread_mutex_lock(&s->done_lock);
	s->outstanding++;
	pthread_mutex_unlock(&s->done_lock);
	pthread_mutex_lock(&s->ip_lock);
	r->ip_prev = NULL;
	r->ip_next = s->ip_head;
	if (s->ip_head)
		s->ip_head->ip_prev = r;
	s->ip_head = r;
	pthread_mutex_unlock(&s->ip_lock);
	atomic_fetch_add_explicit(&s->in_progress, 1, memory_order_relaxed);
	if (r->h->flags & KREQ_HANDLER_INLINE) {
		run_one(r, false);
		return;
	}
	pthread_mutex_lock(&s->pool_lock);
	r->next = NULL;
	if (s->pool_tail)
		s->pool_tail->next = r;
	else
		s->pool_head = r;
	s->pool_tail = r;
	pthread_cond_signal(&s->pool_cv);
	pthread_mutex_unlock(&s->pool_lock);
}

kreq_request_t *kreq__completions_take(kreq_server_t *s)
{
	pthread_mutex_lock(&s->done_lock);
	kreq_request_t *r = s->done_head;
	s->done_head = s->done_tail = NULL;
	pthread_mutex_unlock(&s->done_lock);
	return r;
}

void kreq__request_free(kreq_request_t *r)
{
	kreq_server_t *s = r->srv;
	pthread_mutex_lock(&s->ip_lock);
	if (r->ip_prev)
		r->ip_prev->ip_next = r->ip_next;
	else if (s->ip_head == r)
		s->ip_head = r->ip_next;
	if (r->ip_next)
		r->ip_next->ip_prev = r->ip_prev;
	pthread_mutex_unlock(&s->ip_lock);
	atomic_fetch_sub_explicit(&s->in_progress, 1 + (size_t)r->njoiners, memory_order_relaxed);
	for (kreq__target_t *t = r->joiners, *n; t; t = n) {
		n = t->next;
		free(t);
	}
	kreq__opened_clear(&r->op);
	free(r->payload);
	free(r->error);
	if (s->rq_nfree >= KREQ__RECYCLE_MAX) {
		free(r);
		return;
	}
	r->next = s->rq_free;
	s->rq_free = r;
	s->rq_nfree++;
}

kreq_request_t *kreq__request_new(kreq_server_t *s)
{
	kreq_request_t *r = s->rq_free;
	if (!r)
		return calloc(1, sizeof(*r));
	s->rq_free = r->next;
	s->rq_nfree--;
	memset(r, 0, sizeof(*r));
	return r;
}

void kreq__recycled_free(kreq_server_t *s)
{
	for (kreq_request_t *r = s->rq_free, *n; r; r = n) {
		n = r->next;
		free(r);
	}
	for (kreq__dr_t *d = s->dr_free, *n; d; d = n) {
		n = d->next;
		free(d);
	}
	s->rq_free = NULL, s->dr_free = NULL;
	s->rq_nfree = s->dr_nfree = 0;
}
