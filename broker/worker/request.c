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
 *
 * Why handlers get handles (handles.h) and not the structure: a handler
 * that replies twice, or late, must not reach a recycled structure that
 * now belongs to another caller. The reply is a CAS on the slot; the loser
 * of any race (second reply, reply vs. the loop abandoning an overdue
 * request) touches nothing and gets KREQ_ESTATE.
 *
 * Why overdue requests are tracked in one min-heap (by deadline plus
 * worker.handler.grace.ms) and not with a timer each: the loop pops what is
 * due at every step and sleeps no longer than until the next one is due;
 * push and removal are O(log n) for n <= 2 * worker.max.in.flight.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker/worker/handles.h"
#include "broker/worker/worker_int.h"
#include "common/conf.h"
#include "common/hoptrace.h"
#include "common/internal.h"

void kreq__wake(kreq_worker_t *s)
{
	uint64_t one = 1;
	ssize_t n = write(s->efd, &one, sizeof(one));
	(void)n; /* EAGAIN: the counter is already non-zero, the loop wakes anyway */
}

/* ---- accessors ---------------------------------------------------------- */

/* Every public function below takes the handle the handler was given and
 * reaches the request only through kreq__handle_get(): a stale handle
 * (replied, abandoned and let go, another generation) finds nothing. */

KREQ_API const char *kreq_request_method(const kreq_request_t *h)
{
	const kreq_request_t *r = kreq__handle_get(h);
	return r ? r->op.u.req->method : NULL;
}

KREQ_API const void *kreq_request_payload(const kreq_request_t *h, size_t *len)
{
	const kreq_request_t *r = kreq__handle_get(h);
	if (len)
		*len = r ? r->op.u.req->payload.len : 0;
	return r ? r->op.u.req->payload.data : NULL;
}

KREQ_API const void *kreq_request_idempotency_key(const kreq_request_t *h, size_t *len)
{
	const kreq_request_t *r = kreq__handle_get(h);
	if (len)
		*len = r ? r->op.u.req->idempotency_key.len : 0;
	return r ? r->op.u.req->idempotency_key.data : NULL;
}

KREQ_API const char *kreq_request_key_id(const kreq_request_t *h)
{
	const kreq_request_t *r = kreq__handle_get(h);
	return r ? r->op.key_id : NULL;
}

KREQ_API const char *kreq_request_metadata(const kreq_request_t *h, const char *key)
{
	const kreq_request_t *r = kreq__handle_get(h);
	if (!r || !key)
		return NULL;
	const Kreq__Request *q = r->op.u.req;
	for (size_t i = 0; i < q->n_metadata; i++)
		if (!strcmp(q->metadata[i]->key, key))
			return q->metadata[i]->value;
	return NULL;
}

KREQ_API int64_t kreq_request_deadline_ms(const kreq_request_t *h)
{
	const kreq_request_t *r = kreq__handle_get(h);
	return r ? r->op.u.req->deadline_ms : 0;
}

KREQ_API int64_t kreq_request_remaining_ms(const kreq_request_t *h)
{
	const kreq_request_t *r = kreq__handle_get(h);
	return r ? r->op.u.req->deadline_ms - kreq__now_ms() : 0;
}

KREQ_API bool kreq_request_cancelled(const kreq_request_t *h)
{
	if (!h)
		return false;
	const kreq_request_t *r = kreq__handle_get(h);
	/* a handle that is no longer live: whatever the handler does is moot */
	return !r || atomic_load_explicit(&r->cancelled, memory_order_acquire);
}

/* ---- replying ----------------------------------------------------------- */

/* The handler side lets go of r (its slot is REPLIED or RELEASED): onto
 * the completion list, for the loop to apply (or, abandoned, to free). */
static void complete(kreq_request_t *r)
{
	kreq_worker_t *s = r->srv;
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

/* The handler side of an abandoned request lets go; KREQ_ESTATE, or
 * KREQ_OK if r was not abandoned (cannot happen: callers lost a CAS from
 * a live state, and only the loop's abandon takes a request from there
 * without the handler side). */
static int release_abandoned(kreq_request_t *r, const char *what)
{
	if (!kreq__handle_cas(r->slot, r->gen, KREQ__SL_ABANDONED, KREQ__SL_RELEASED))
		return KREQ_ESTATE;
	kreq_worker_t *s = r->srv;
	atomic_fetch_add_explicit(&s->m.late_replies, 1, memory_order_relaxed);
	if (what)
		kreq__log(s->conf, 4, "worker",
		          "%s to %s (%s [%d] offset %lld) refused: the worker already answered it "
		          "with status 2 at its deadline + worker.handler.grace.ms",
		          what, r->op.u.req->method, s->req_topic, (int)r->partition,
		          (long long)r->offset);
	complete(r);
	return KREQ_ESTATE;
}

/* Finishes a request whose handler never ran (pool thread, or the loop at
 * shutdown): status and error text, unless the loop abandoned it. */
static void finish_unstarted(kreq_request_t *r, int32_t status, const char *error)
{
	if (!kreq__handle_cas(r->slot, r->gen, KREQ__SL_QUEUED, KREQ__SL_REPLIED)) {
		release_abandoned(r, NULL);
		return;
	}
	r->status = status;
	r->error = strdup(error);
	complete(r);
}

static bool status_valid(int32_t status)
{
	return status == KREQ_STATUS_OK || status == KREQ_STATUS_DEADLINE ||
	       status == KREQ_STATUS_CANCELLED || status >= KREQ_STATUS_USER_MIN;
}

/* Stores the handler's reply in r (owned: the caller won the CAS). */
static int store_reply(kreq_request_t *r, int32_t status, const void *payload, size_t len,
                       const char *error)
{
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
	return err;
}

KREQ_API int kreq_request_reply(kreq_request_t *h, int32_t status, const void *payload, size_t len,
                                const char *error)
{
	uint32_t id;
	uint64_t gen;
	if (!h || !kreq__handle_decode(h, &id, &gen))
		return KREQ_EINVAL;
	/* the one reply: RUNNING -> REPLIED. The loop can only have moved it
	 * to ABANDONED meanwhile; anything else is a second reply or a handle
	 * of another generation, which must touch nothing */
	if (kreq__handle_cas(id, gen, KREQ__SL_RUNNING, KREQ__SL_REPLIED)) {
		kreq_request_t *r = kreq__handle_owned(id);
		int err = store_reply(r, status, payload, len, error);
		complete(r);
		return err;
	}
	if (kreq__handle_state(id, gen) == KREQ__SL_ABANDONED)
		return release_abandoned(kreq__handle_owned(id), "a late reply");
	return KREQ_ESTATE;
}

/* ---- pool --------------------------------------------------------------- */

/* Runs r's handler. queued: r waited in the pool's queue, so it may have
 * been cancelled or run out of budget meanwhile; an inline start follows
 * the loop's own checks at once (same instant, nothing seen in between),
 * so it neither checks again nor reads the clock again. */
static void run_one(kreq_request_t *r, bool queued)
{
	kreq_worker_t *s = r->srv;
	int64_t now = queued ? kreq__mono_ns() : r->consumed_ns;
	kreq__hist_observe(&s->m.queue_time, (now - r->consumed_ns) / 1000);
	if (queued && atomic_load_explicit(&r->cancelled, memory_order_acquire)) {
		finish_unstarted(r, KREQ_STATUS_CANCELLED, "cancelled before it started");
		return;
	}
	if (queued && r->op.u.req->deadline_ms - kreq__now_ms() < s->min_budget_ms) {
		/* waited in the queue past its budget */
		finish_unstarted(r, KREQ_STATUS_DEADLINE,
		                 "deadline exceeded before the work could start");
		return;
	}
	/* written before the CAS publishes RUNNING; the loop reads it only
	 * from a request it got back through the completion list */
	r->started_ns = now;
	atomic_store_explicit(&r->state, KREQ__RQ_RUNNING, memory_order_release);
	if (!kreq__handle_cas(r->slot, r->gen, KREQ__SL_QUEUED, KREQ__SL_RUNNING)) {
		release_abandoned(r, NULL); /* overdue while queued: answered already */
		return;
	}
	kreq__hop(W_HANDLER);
	r->h->fn(r->handle, r->h->opaque);
}

static void *pool_main(void *arg)
{
	kreq_worker_t *s = arg;
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
		if (s->pool_stop)
			finish_unstarted(r, KREQ_STATUS_SHUTTING_DOWN, "worker shutting down");
		else
			run_one(r, true);
		pthread_mutex_lock(&s->pool_lock);
	}
	pthread_mutex_unlock(&s->pool_lock);
	return NULL;
}

void kreq__pool_drain(kreq_worker_t *s)
{
	kreq__pool_drain_partitions(s, NULL);
}

void kreq__pool_drain_partitions(kreq_worker_t *s, const bool *part)
{
	kreq_request_t *taken = NULL, **tail = &taken;
	pthread_mutex_lock(&s->pool_lock);
	kreq_request_t **at = &s->pool_head, *last = NULL;
	while (*at) {
		kreq_request_t *r = *at;
		if (part && !part[r->partition]) { /* stays queued */
			last = r;
			at = &r->next;
			continue;
		}
		*at = r->next;
		r->next = NULL;
		*tail = r;
		tail = &r->next;
	}
	s->pool_tail = last;
	pthread_mutex_unlock(&s->pool_lock);
	while (taken) {
		kreq_request_t *next = taken->next;
		finish_unstarted(taken, KREQ_STATUS_SHUTTING_DOWN, "worker shutting down");
		taken = next;
	}
}

int kreq__pool_start(kreq_worker_t *s)
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

void kreq__pool_stop(kreq_worker_t *s)
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

/* ---- handler deadlines: a min-heap by overdue_ms (loop thread) ---------- */

static void heap_set(kreq_worker_t *s, size_t i, kreq_request_t *r)
{
	s->overdue[i] = r;
	r->heap_idx = i;
}

static void heap_up(kreq_worker_t *s, size_t i)
{
	kreq_request_t *r = s->overdue[i];
	while (i > 0) {
		size_t parent = (i - 1) / 2;
		if (s->overdue[parent]->overdue_ms <= r->overdue_ms)
			break;
		heap_set(s, i, s->overdue[parent]);
		i = parent;
	}
	heap_set(s, i, r);
}

static void heap_down(kreq_worker_t *s, size_t i)
{
	kreq_request_t *r = s->overdue[i];
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= s->noverdue)
			break;
		if (c + 1 < s->noverdue &&
		    s->overdue[c + 1]->overdue_ms < s->overdue[c]->overdue_ms)
			c++;
		if (r->overdue_ms <= s->overdue[c]->overdue_ms)
			break;
		heap_set(s, i, s->overdue[c]);
		i = c;
	}
	heap_set(s, i, r);
}

/* Room for r was made by kreq__request_new (overdue_cap >= nslots). */
static void heap_push(kreq_worker_t *s, kreq_request_t *r)
{
	heap_set(s, s->noverdue++, r);
	heap_up(s, r->heap_idx);
}

static void heap_remove(kreq_worker_t *s, kreq_request_t *r)
{
	size_t i = r->heap_idx;
	if (i == SIZE_MAX)
		return;
	r->heap_idx = SIZE_MAX;
	kreq_request_t *last = s->overdue[--s->noverdue];
	if (last == r)
		return;
	heap_set(s, i, last);
	heap_up(s, i);
	heap_down(s, last->heap_idx);
}

kreq_request_t *kreq__overdue_pop(kreq_worker_t *s, int64_t now_ms)
{
	if (!s->noverdue || s->overdue[0]->overdue_ms > now_ms)
		return NULL;
	kreq_request_t *r = s->overdue[0];
	heap_remove(s, r);
	return r;
}

int64_t kreq__overdue_next_ms(const kreq_worker_t *s, int64_t now_ms)
{
	if (!s->noverdue)
		return INT64_MAX;
	int64_t left = s->overdue[0]->overdue_ms - now_ms;
	return left < 0 ? 0 : left;
}

bool kreq__request_abandon(kreq_request_t *r, bool *started)
{
	for (;;) {
		int st = kreq__handle_state(r->slot, r->gen);
		if (st != KREQ__SL_QUEUED && st != KREQ__SL_RUNNING)
			return false; /* replied: its completion is on the list */
		if (kreq__handle_cas(r->slot, r->gen, (kreq__sl_state_t)st, KREQ__SL_ABANDONED)) {
			*started = st == KREQ__SL_RUNNING;
			break;
		}
		/* lost a race with the start (QUEUED -> RUNNING) or the reply */
	}
	atomic_store_explicit(&r->cancelled, true, memory_order_release);
	r->zombie = true;
	return true;
}

/* ---- dispatch and the request's life ---------------------------------- */

void kreq__dispatch(kreq_worker_t *s, kreq_request_t *r)
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
	r->retired = false;
	int64_t dl = r->op.u.req->deadline_ms;
	r->overdue_ms = dl > INT64_MAX - s->handler_grace_ms ? INT64_MAX : dl + s->handler_grace_ms;
	heap_push(s, r);
	/* last: from here the handler side owns r */
	r->handle = kreq__handle_publish(r->slot, r, &r->gen);
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

kreq_request_t *kreq__completions_take(kreq_worker_t *s)
{
	pthread_mutex_lock(&s->done_lock);
	kreq_request_t *r = s->done_head;
	s->done_head = s->done_tail = NULL;
	pthread_mutex_unlock(&s->done_lock);
	return r;
}

void kreq__request_retire(kreq_request_t *r)
{
	if (r->retired)
		return;
	r->retired = true;
	kreq_worker_t *s = r->srv;
	heap_remove(s, r);
	pthread_mutex_lock(&s->ip_lock);
	if (r->ip_prev)
		r->ip_prev->ip_next = r->ip_next;
	else if (s->ip_head == r)
		s->ip_head = r->ip_next;
	if (r->ip_next)
		r->ip_next->ip_prev = r->ip_prev;
	r->ip_prev = r->ip_next = NULL;
	pthread_mutex_unlock(&s->ip_lock);
	atomic_fetch_sub_explicit(&s->in_progress, 1 + (size_t)r->njoiners, memory_order_relaxed);
}

void kreq__request_free(kreq_request_t *r)
{
	kreq_worker_t *s = r->srv;
	kreq__request_retire(r);
	if (s->request_forget)
		s->request_forget(s, r); /* its crash-journal slot */
	for (kreq__target_t *t = r->joiners, *n; t; t = n) {
		n = t->next;
		free(t);
	}
	kreq__opened_clear(&r->op);
	free(r->payload);
	free(r->error);
	s->slot_ids[s->slot_nfree++] = r->slot; /* its handle stays stale */
	if (s->rq_nfree >= KREQ__RECYCLE_MAX) {
		free(r);
		return;
	}
	r->next = s->rq_free;
	s->rq_free = r;
	s->rq_nfree++;
}

bool kreq__request_room(kreq_worker_t *s)
{
	return atomic_load_explicit(&s->in_progress, memory_order_relaxed) < s->max_in_flight &&
	       (s->slot_nfree > 0 || s->nslots < s->slot_max);
}

/* One more handle slot for this worker, with room in the free stack and
 * the deadline heap for it. */
static int slot_grow(kreq_worker_t *s)
{
	if (s->nslots >= s->slot_max)
		return KREQ_ENOMEM;
	size_t cap = s->nslots ? s->nslots * 2 : 64;
	if (cap > s->slot_max)
		cap = s->slot_max;
	if (s->overdue_cap < s->nslots + 1) {
		uint32_t *ids = realloc(s->slot_ids, cap * sizeof(*ids));
		if (ids)
			s->slot_ids = ids;
		kreq_request_t **h = realloc(s->overdue, cap * sizeof(*h));
		if (h)
			s->overdue = h;
		if (!ids || !h)
			return KREQ_ENOMEM;
		s->overdue_cap = cap;
	}
	uint32_t id;
	if (kreq__handles_take(&id))
		return KREQ_ENOMEM;
	s->slot_ids[s->slot_nfree++] = id;
	s->nslots++;
	return KREQ_OK;
}

kreq_request_t *kreq__request_new(kreq_worker_t *s)
{
	if (!s->slot_nfree && slot_grow(s))
		return NULL;
	kreq_request_t *r = s->rq_free;
	if (r) {
		s->rq_free = r->next;
		s->rq_nfree--;
		memset(r, 0, sizeof(*r));
	} else if (!(r = calloc(1, sizeof(*r)))) {
		return NULL;
	}
	r->srv = s;
	r->slot = s->slot_ids[--s->slot_nfree];
	r->heap_idx = SIZE_MAX;
	r->retired = true; /* nothing to give up until it is dispatched */
	return r;
}

void kreq__handles_release(kreq_worker_t *s)
{
	/* every request is freed by now, so every slot is on the free stack */
	kreq__handles_give(s->slot_ids, s->slot_nfree);
	free(s->slot_ids);
	free(s->overdue);
	s->slot_ids = NULL, s->overdue = NULL;
	s->nslots = s->slot_nfree = s->noverdue = s->overdue_cap = 0;
}

void kreq__recycled_free(kreq_worker_t *s)
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
