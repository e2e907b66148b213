/*
 * client.c — calls over Kafka: submission, the service thread, retries,
 * backpressure, fail-fast and shutdown.
 *
 * Design notes
 * - Who settles a call: whoever removes it from the pending table. The
 *   reply path, the timer, cancel, send failure, the unavailable sweep and
 *   shutdown all go through kreq__table_remove(); exactly one of them gets
 *   the future back and settles it; the others find nothing. The future's own
 *   once-only settle is a second, independent guard.
 * - References: the caller holds one; the table holds one while the call is
 *   pending; the wheel holds one while the call's timer is armed; each
 *   message in librdkafka's queue holds one until its delivery report. So
 *   nothing is freed while another thread may still reach it.
 * - One service thread does all Kafka and timer work: librdkafka's reply
 *   queue and the producer's main queue signal one eventfd (io-event), as do
 *   callers that arm a timer earlier than the thread's planned wake-up, and
 *   the thread sleeps in poll() until the earliest of those. No timer or
 *   thread per call.
 * - The reply consumer uses direct assignment of this client's partition at
 *   the offset read before kreq_client_new() returns, so a reply to any
 *   later call is never missed, and no consumer-group rebalance ever pauses
 *   it. It reads read_committed: only replies whose transaction committed.
 * - Deadlines are absolute wall-clock times on the wire; locally each is
 *   converted once to the monotonic clock so a wall-clock step cannot fire
 *   or delay timers.
 * - Requests made while the service thread delivers a batch of replies
 *   (typically by callers those replies woke, or by completion callbacks)
 *   are held and handed to librdkafka together when the batch is done, so
 *   that they can share ProduceRequests instead of trickling out one per
 *   request; a request made at any other time is produced at once. See
 *   "Coalescing" below and docs/PERFORMANCE.md.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>

#include "client/admin.h"
#include "client/client_int.h"
#include "client/health.h"
#include "common/conf.h"
#include "common/hoptrace.h"
#include "common/internal.h"
#include "common/topic_admin.h"
#include "common/replication.h"

#define EXPIRE_BATCH    256
#define REPLY_BATCH     64
#define WARM_TIMEOUT_MS 1000 /* per service, once, on the health thread */
#define MAX_SLEEP_MS    100
/* requests up to this size are sealed on the caller's stack */
#define REQUEST_STACK_MAX 2048

static int64_t mono_ms(void)
{
	return kreq__mono_ns() / 1000000;
}

static kreq__call_t *call_of(kreq_future_t *f)
{
	return kreq__future_extra(f);
}

static int call_cancel(kreq_future_t *f);

static void retain_value(void *f)
{
	kreq_future_retain(f);
}

static void wake(kreq_client_t *c)
{
	uint64_t one = 1;
	ssize_t n = write(c->wake_fd, &one, sizeof(one));
	(void)n; /* a full eventfd counter is already a pending wake-up */
}

/* ---- correlation ids ---------------------------------------------------- */

/* Correlation ids are random UUIDv4s (docs/protocol.md). libuuid's
 * uuid_generate_random() reseeds random(3) with srandom() and calls
 * getrandom() and getpid() each time (about 1.5 us, ~8% of a caller's CPU
 * per call under load); instead each thread takes ids from its own buffer
 * of libsodium randomness (getrandom), refilled every IDS_PER_FILL ids. A
 * forked child discards what it inherited (fork_gen), so parent and child
 * never hand out the same id. */
#define IDS_PER_FILL 64
static atomic_uint fork_gen;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static _Thread_local struct {
	uint8_t buf[16 * IDS_PER_FILL];
	unsigned left, gen;
} id_pool;

static void on_fork_child(void)
{
	atomic_fetch_add(&fork_gen, 1);
}

static void register_fork_handler(void)
{
	pthread_atfork(NULL, NULL, on_fork_child);
}

static void new_corr_id(uint8_t id[16])
{
	unsigned gen = atomic_load_explicit(&fork_gen, memory_order_relaxed);
	if (id_pool.left == 0 || id_pool.gen != gen) {
		randombytes_buf(id_pool.buf, sizeof(id_pool.buf));
		id_pool.left = IDS_PER_FILL;
		id_pool.gen = gen;
	}
	id_pool.left--;
	memcpy(id, id_pool.buf + 16 * id_pool.left, 16);
	id[6] = (uint8_t)((id[6] & 0x0f) | 0x40); /* version 4 */
	id[8] = (uint8_t)((id[8] & 0x3f) | 0x80); /* variant 10 */
}

/* ---- backpressure ------------------------------------------------------ */

static bool try_admit(kreq_client_t *c)
{
	if (atomic_fetch_add(&c->in_flight, 1) < (size_t)c->max_in_flight)
		return true;
	atomic_fetch_sub(&c->in_flight, 1);
	return false;
}

static int admit(kreq_client_t *c)
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

static void release_slot(kreq_client_t *c)
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
static bool reserve_completion(kreq_client_t *c)
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

static void unreserve_completion(kreq_client_t *c)
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

static void drop_completed(kreq_client_t *c)
{
	kreq_future_t *f;
	while ((f = kreq_client_next_completed(c)) != NULL)
		kreq_future_release(f);
}

/* ---- settling ---------------------------------------------------------- */

/* Settles a call that the caller has just removed from the table (and so
 * owns the table's reference, which this gives up). */
static void finish(kreq_client_t *c, kreq_future_t *f, int err, int32_t status, void *payload,
                   size_t len, bool dedup, const char *msg, kreq__outcome_t outcome)
{
	kreq__call_t *call = call_of(f);
	if (kreq__wheel_cancel(c->wheel, &call->timer))
		kreq_future_release(f); /* the wheel's reference */
	/* bookkeeping first: whoever the settlement wakes sees it done */
	atomic_fetch_add_explicit(&c->metrics.outcome[outcome], 1, memory_order_relaxed);
	kreq__hist_observe(&c->metrics.duration, (kreq__mono_ns() - call->start_ns) / 1000);
	release_slot(c);
	kreq__hop(C_SETTLED); /* before: the waiter may run at once */
	kreq__future_settle(f, err, status, payload, len, dedup, msg);
	if (call->notify)
		push_completed(c, f); /* hands over the table's reference */
	else
		kreq_future_release(f); /* the table's reference */
}

/* Removes and settles a call if it is still pending. */
static bool settle_pending(kreq_client_t *c, const uint8_t id[16], int err, const char *msg,
                           kreq__outcome_t outcome)
{
	kreq_future_t *f = kreq__table_remove(c->table, id);
	if (!f)
		return false;
	finish(c, f, err, 0, NULL, 0, false, msg, outcome);
	return true;
}

/* ---- sending ------------------------------------------------------------ */

static const char *blob_method(const kreq__call_t *call)
{
	return kreq__call_method(call);
}

static const uint8_t *blob_idem(const kreq__call_t *call)
{
	return kreq__call_idem(call);
}

static size_t tp_len(const kreq__call_t *call)
{
	return call->has_tp ? KREQ__TP_LEN : 0;
}

/* The traceparent (NUL-terminated) if the call has one. */
static const char *blob_traceparent(const kreq__call_t *call)
{
	return (const char *)blob_idem(call) + call->idem_len;
}

static const uint8_t *blob_payload(const kreq__call_t *call)
{
	return (const uint8_t *)blob_traceparent(call) + (call->has_tp ? KREQ__TP_LEN + 1 : 0);
}

/* "<prefix>.<service>.requests" for the first svc_len bytes of service. */
static void service_topic(const kreq_client_t *c, const char *service, int svc_len, char *out,
                          size_t size)
{
	snprintf(out, size, "%s.%.*s.requests", c->topic_prefix, svc_len, service);
}

/* Length of method's service: the method up to its last '.'. */
static size_t service_len(const char *method)
{
	const char *dot = strrchr(method, '.');
	return dot ? (size_t)(dot - method) : strlen(method);
}

/* The request topic of method's service. */
static void request_topic(const kreq_client_t *c, const char *method, char *out, size_t size)
{
	service_topic(c, method, (int)service_len(method), out, size);
}

/*
 * Coalescing. With linger.ms=0 librdkafka's broker thread sends whatever is
 * queued as soon as it wakes, so requests produced a few microseconds apart
 * (each caller seals its own, ~2.5 us of HMAC) go out as many small
 * ProduceRequests, and every request costs the broker and both ends far
 * more than a message in a batch does. Under load most calls are made in
 * reaction to replies: a caller woken by its reply, or a completion
 * callback, calls again while the service thread is still delivering the
 * rest of the fetched batch. Those requests are sealed by their callers as
 * usual but held (the held queue, under out_mu, while c->draining) and
 * produced back to back by the service thread once the batch (at most
 * REPLY_BATCH replies) is delivered. A lone call finds the service thread
 * idle and is produced at once: no added latency, no timer. A held request
 * that is settled before it is released (deadline, cancel) is dropped; one
 * retried while held is sent once.
 */

/* Hands a sealed request to librdkafka, which takes the caller's reference
 * on f (until the delivery report) and buf: owned (malloc'd, librdkafka
 * frees it) or copied into its message (a buffer on the caller's stack).
 * On failure both are dropped. */
static int produce_request(kreq_client_t *c, kreq_future_t *f, uint8_t *buf, size_t len, bool owned)
{
	kreq__call_t *call = call_of(f);
	char topic[320];
	request_topic(c, blob_method(call), topic, sizeof(topic));
	kreq__hop(CALL);
	rd_kafka_resp_err_t kerr = rd_kafka_producev(
	    c->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(blob_idem(call), call->idem_len),
	    RD_KAFKA_V_VALUE(buf, len),
	    RD_KAFKA_V_MSGFLAGS(owned ? RD_KAFKA_MSG_F_FREE : RD_KAFKA_MSG_F_COPY),
	    RD_KAFKA_V_OPAQUE(f), RD_KAFKA_V_END);
	if (kerr) {
		if (owned)
			free(buf);
		kreq_future_release(f);
		atomic_fetch_add_explicit(&c->metrics.send_errors, 1, memory_order_relaxed);
		return kerr == RD_KAFKA_RESP_ERR__QUEUE_FULL ? KREQ_EBACKPRESSURE : KREQ_EKAFKA;
	}
	return KREQ_OK;
}

/* Appends to the held queue (under out_mu); false if out of memory. */
static bool hold(kreq_client_t *c, kreq_future_t *f, uint8_t *buf, size_t len)
{
	if (c->held_len == c->held_cap) {
		size_t cap = c->held_cap ? 2 * c->held_cap : 64;
		kreq__held_t *h = realloc(c->held, cap * sizeof(*h));
		if (!h)
			return false;
		c->held = h;
		c->held_cap = cap;
	}
	c->held[c->held_len++] = (kreq__held_t){f, buf, len};
	atomic_fetch_or_explicit(&call_of(f)->flags, KREQ__CALL_HELD, memory_order_relaxed);
	return true;
}

/* Seals the call's current attempt and sends it, or holds it (above). */
static int send_request(kreq_client_t *c, kreq_future_t *f)
{
	kreq__call_t *call = call_of(f);
	Kreq__Request r = KREQ__REQUEST__INIT;
	Kreq__MetadataEntry tp = KREQ__METADATA_ENTRY__INIT, *md[1] = {&tp};
	r.correlation_id = (ProtobufCBinaryData){16, call->corr_id};
	r.idempotency_key = (ProtobufCBinaryData){call->idem_len, (uint8_t *)blob_idem(call)};
	r.method = (char *)blob_method(call);
	/* signed destination: a replay into another service's topic is dropped */
	char service[KREQ__SERVICE_MAX + 1];
	size_t svc_len = service_len(r.method); /* <= KREQ__SERVICE_MAX: method_valid() */
	memcpy(service, r.method, svc_len);
	service[svc_len] = '\0';
	r.service = service;
	r.payload = (ProtobufCBinaryData){call->payload_len, (uint8_t *)blob_payload(call)};
	r.reply_topic = c->reply_topic;
	r.reply_partition = c->reply_partition;
	r.deadline_ms = call->deadline_wall_ms;
	r.issued_at_ms = kreq__now_ms();
	if (r.issued_at_ms > r.deadline_ms)
		r.issued_at_ms = r.deadline_ms;
	r.attempt = kreq__call_attempt(call);
	r.client_id = c->client_id;
	if (call->has_tp) {
		tp.key = "traceparent";
		tp.value = (char *)blob_traceparent(call);
		r.metadata = md;
		r.n_metadata = 1;
	}
	/* sealed on the stack when it fits, and copied by librdkafka: no
	 * buffer of ours to free on another thread (a held request gets one) */
	uint8_t stack[REQUEST_STACK_MAX], *buf = stack;
	size_t len, fields = (size_t)call->payload_len + call->idem_len + strlen(r.method) +
	                     tp_len(call) + strlen(c->reply_topic) + strlen(c->client_id);
	/* the rest (ids, times, key id, signature, framing) is well under 256
	 * bytes; a larger request is sealed once, on the heap, not tried twice */
	bool try_stack = fields + 256 <= sizeof(stack);
	int err = try_stack ? kreq__envelope_seal_to(c->kr, &c->lim, KREQ__KIND_REQUEST, &r.base,
	                                             stack, sizeof(stack), &len, NULL, 0)
	                    : KREQ_EOVERSIZE;
	if (err == KREQ_EOVERSIZE && (!try_stack || sizeof(stack) < c->lim.envelope_max))
		err = kreq__envelope_seal(c->kr, &c->lim, KREQ__KIND_REQUEST, &r.base, &buf, &len,
		                          NULL, 0);
	if (err)
		return err;
	kreq_future_retain(f); /* librdkafka's, held by the queue until then */
	pthread_mutex_lock(&c->out_mu);
	if (atomic_load_explicit(&call->flags, memory_order_relaxed) & KREQ__CALL_HELD) {
		/* an earlier attempt is still held: it goes instead */
		pthread_mutex_unlock(&c->out_mu);
		if (buf != stack)
			free(buf);
		kreq_future_release(f);
		return KREQ_OK;
	}
	bool direct = true;
	if (c->draining) { /* a held request needs a buffer of its own */
		uint8_t *own = buf;
		if (own == stack && (own = malloc(len)) != NULL)
			memcpy(own, stack, len);
		direct = !own || !hold(c, f, own, len);
		if (direct && own != buf)
			free(own); /* not held after all: send from the stack */
	}
	pthread_mutex_unlock(&c->out_mu);
	return direct ? produce_request(c, f, buf, len, buf != stack) : KREQ_OK;
}

/* Service thread: hands the requests held while it delivered replies to
 * librdkafka in one burst. Requests settled meanwhile are dropped. */
static void release_held(kreq_client_t *c)
{
	pthread_mutex_lock(&c->out_mu);
	c->draining = false;
	kreq__held_t *h = c->held;
	size_t n = c->held_len, cap = c->held_cap;
	c->held = c->held_spare;
	c->held_cap = c->spare_cap;
	c->held_len = 0;
	c->held_spare = h;
	c->spare_cap = cap;
	for (size_t i = 0; i < n; i++)
		atomic_fetch_and_explicit(&call_of(h[i].f)->flags, (uint8_t)~KREQ__CALL_HELD,
		                          memory_order_relaxed);
	pthread_mutex_unlock(&c->out_mu);
	for (size_t i = 0; i < n; i++) {
		if (kreq__table_find(c->table, call_of(h[i].f)->corr_id) == h[i].f) {
			produce_request(c, h[i].f, h[i].buf, h[i].len, true);
		} else {
			free(h[i].buf);
			kreq_future_release(h[i].f);
		}
	}
}

/* Best effort: tells the workers a call was cancelled. */
static void send_cancel(kreq_client_t *c, const kreq__call_t *call)
{
	Kreq__Cancel m = KREQ__CANCEL__INIT;
	m.correlation_id = (ProtobufCBinaryData){16, (uint8_t *)call->corr_id};
	m.idempotency_key = (ProtobufCBinaryData){call->idem_len, (uint8_t *)blob_idem(call)};
	m.issued_at_ms = kreq__now_ms();
	m.deadline_ms =
	    call->deadline_wall_ms > m.issued_at_ms ? call->deadline_wall_ms : m.issued_at_ms;
	m.client_id = c->client_id;
	uint8_t *buf;
	size_t len;
	if (kreq__envelope_seal(c->kr, &c->lim, KREQ__KIND_CANCEL, &m.base, &buf, &len, NULL, 0))
		return;
	char topic[320];
	request_topic(c, blob_method(call), topic, sizeof(topic));
	if (rd_kafka_producev(c->producer, RD_KAFKA_V_TOPIC(topic),
	                      RD_KAFKA_V_KEY(blob_idem(call), call->idem_len),
	                      RD_KAFKA_V_VALUE(buf, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE),
	                      RD_KAFKA_V_OPAQUE(NULL), RD_KAFKA_V_END))
		free(buf);
}

/* ---- timers ------------------------------------------------------------- */

/* Arms the call's timer; the caller hands its reference on f to the wheel. */
static void arm(kreq_client_t *c, kreq__call_t *call, int64_t when)
{
	int64_t deadline = kreq__call_deadline_mono(call);
	if (when > deadline)
		when = deadline;
	kreq__wheel_arm(c->wheel, &call->timer, when);
	if (when < atomic_load(&c->sleep_until_ms))
		wake(c);
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
	kreq__call_t *call = call_of(f);
	int64_t now = mono_ms();
	unsigned attempt = kreq__call_attempt(call);
	if (now >= kreq__call_deadline_mono(call)) {
		char msg[96];
		snprintf(msg, sizeof(msg), "deadline passed after %u attempt%s", attempt,
		         attempt == 1 ? "" : "s");
		settle_pending(c, call->corr_id, KREQ_ETIMEDOUT, msg, KREQ__OUT_TIMEOUT);
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
			arm(c, call, kreq__call_deadline_mono(call)); /* no retries left */
			return;
		}
		__atomic_store_n(&call->svc, (uint8_t)(attempt | KREQ__SVC_BACKOFF),
		                 __ATOMIC_RELAXED);
		arm(c, call, now + backoff_ms(c, attempt));
		return;
	}
	__atomic_store_n(&call->svc, (uint8_t)(attempt + 1), __ATOMIC_RELAXED); /* waiting again */
	atomic_fetch_add_explicit(&c->metrics.retries, 1, memory_order_relaxed);
	send_request(c, f); /* on failure the next attempt timeout retries again */
	arm(c, call, now + c->attempt_timeout_ms);
}

static void expire_timers(kreq_client_t *c)
{
	kreq__timer_node_t *batch[EXPIRE_BATCH];
	size_t n;
	do {
		n = kreq__wheel_expire(c->wheel, mono_ms(), batch, EXPIRE_BATCH);
		for (size_t i = 0; i < n; i++) {
			kreq__call_t *call =
			    (kreq__call_t *)((char *)batch[i] - offsetof(kreq__call_t, timer));
			on_timer(c, kreq__future_from_extra(call));
		}
	} while (n == EXPIRE_BATCH);
}

/* ---- replies ------------------------------------------------------------ */

static void count(atomic_uint_fast64_t *a)
{
	atomic_fetch_add_explicit(a, 1, memory_order_relaxed);
}

static bool binding_matches(const kreq__call_t *call, const Kreq__Reply *r)
{
	return r->idempotency_key.len == call->idem_len &&
	       memcmp(r->idempotency_key.data, blob_idem(call), call->idem_len) == 0;
}

static void deliver_reply(kreq_client_t *c, kreq_future_t *f, const Kreq__Reply *r)
{
	void *payload = NULL;
	if (r->payload.len) {
		payload = malloc(r->payload.len);
		if (payload)
			memcpy(payload, r->payload.data, r->payload.len);
	}
	int err = KREQ_OK;
	kreq__outcome_t outcome = r->status == 0 ? KREQ__OUT_OK : KREQ__OUT_ERROR_STATUS;
	if (r->status > 0 && r->status < 100) { /* kreq's own statuses: the broker refused */
		err = KREQ_EREJECTED;
		outcome = KREQ__OUT_REJECTED;
	}
	if (r->payload.len && !payload)
		finish(c, f, KREQ_ENOMEM, r->status, NULL, 0, r->from_dedup,
		       "out of memory copying the reply", outcome);
	else
		finish(c, f, err, r->status, payload, r->payload.len, r->from_dedup, r->error,
		       outcome);
}

static void on_reply_record(kreq_client_t *c, const rd_kafka_message_t *m)
{
	kreq__opened_t o;
	int err =
	    kreq__envelope_open(c->kr, &c->lim, kreq__now_ms(), m->payload, m->len, &o, NULL, 0);
	if (err == KREQ_EEXPIRED) {
		count(&c->metrics.late_replies);
		return;
	}
	if (err || o.kind != KREQ__KIND_REPLY) {
		count(&c->metrics.rejected_replies);
		if (!err)
			kreq__opened_clear(&o);
		return;
	}
	const Kreq__Reply *r = o.u.reply;
	kreq_future_t *f = kreq__table_find_retain(c->table, r->correlation_id.data, retain_value);
	if (!f) {
		count(&c->metrics.late_replies);
	} else if (!binding_matches(call_of(f), r)) {
		count(&c->metrics.rejected_replies);
	} else if (kreq__table_remove(c->table, r->correlation_id.data) == f) {
		deliver_reply(c, f, r);
	} else {
		count(&c->metrics.late_replies); /* settled by another path meanwhile */
	}
	kreq_future_release(f);
	kreq__opened_clear(&o);
}

/* Delivers the replies that have arrived, REPLY_BATCH at a time; requests
 * made meanwhile go to librdkafka together after each batch ("Coalescing"). */
static void drain_replies(kreq_client_t *c)
{
	rd_kafka_message_t *ms[REPLY_BATCH];
	ssize_t n;
	while ((n = rd_kafka_consume_batch_queue(c->reply_q, 0, ms, REPLY_BATCH)) > 0) {
		kreq__hop(C_REPLY);
		pthread_mutex_lock(&c->out_mu);
		c->draining = true;
		pthread_mutex_unlock(&c->out_mu);
		for (ssize_t i = 0; i < n; i++) {
			if (!ms[i]->err) {
				atomic_store(&c->down_since_ms, 0);
				on_reply_record(c, ms[i]);
			}
			rd_kafka_message_destroy(ms[i]);
		}
		release_held(c);
	}
}

/* ---- Kafka callbacks (run on the service thread, or in destroy) -------- */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	(void)rk;
	kreq_client_t *c = opaque;
	kreq_future_t *f = m->_private;
	if (!f)
		return; /* a cancel notice */
	kreq__call_t *call = call_of(f);
	if (m->err) {
		count(&c->metrics.send_errors);
		if (m->err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC ||
		    m->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
			char msg[128];
			snprintf(msg, sizeof(msg), "no service: %s", rd_kafka_err2str(m->err));
			settle_pending(c, call->corr_id, KREQ_EUNAVAILABLE, msg,
			               KREQ__OUT_UNAVAILABLE);
		} /* other failures: the attempt timeout sends again */
	} else {
		kreq__hop(REQ_ACKED);
		atomic_store(&c->down_since_ms, 0);
		if (!(atomic_fetch_or_explicit(&call->flags, KREQ__CALL_ACKED,
		                               memory_order_relaxed) &
		      KREQ__CALL_ACKED)) {
			kreq__hist_observe(&c->metrics.queue_wait,
			                   (kreq__mono_ns() - call->start_ns) / 1000);
		}
	}
	kreq_future_release(f);
}

static void mark_down(kreq_client_t *c, int_fast64_t since, const char *why)
{
	int_fast64_t zero = 0;
	if (atomic_compare_exchange_strong(&c->down_since_ms, &zero, since))
		kreq__log(c->conf, 4, "client", "all Kafka brokers are down: %s", why);
}

/* "All brokers down" is decided here and in on_stats(), not by librdkafka's
 * ALL_BROKERS_DOWN alone: librdkafka 2.12.1 did not raise it at all when
 * the one broker of a cluster died (2.0.2 did at once; measured on a real
 * broker and on the mock), so a transport error only marks a suspicion
 * that the next statistics callback confirms (no broker UP) or clears. */
static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	(void)rk;
	kreq_client_t *c = opaque;
	int_fast64_t zero = 0;
	if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
		mark_down(c, mono_ms(), reason);
	else if (err == RD_KAFKA_RESP_ERR__TRANSPORT || err == RD_KAFKA_RESP_ERR__RESOLVE)
		atomic_compare_exchange_strong(&c->suspect_since_ms, &zero, mono_ms());
	else if (err == RD_KAFKA_RESP_ERR__FATAL)
		kreq__log(c->conf, 3, "client", "fatal Kafka error: %s", reason);
}

static bool kafka_unavailable(kreq_client_t *c)
{
	int64_t since = atomic_load(&c->down_since_ms);
	return c->unavailable_after_ms > 0 && since != 0 &&
	       mono_ms() - since >= c->unavailable_after_ms;
}

static void fail_unavailable(void *value, void *arg)
{
	finish(arg, value, KREQ_EUNAVAILABLE, 0, NULL, 0, false,
	       "Kafka unreachable for longer than unavailable.after.ms", KREQ__OUT_UNAVAILABLE);
}

/* While all brokers are down, fail what is pending once past the
 * threshold. Recovery is noticed by on_stats(), so the service thread never
 * blocks on a probe. */
static void check_unavailable(kreq_client_t *c)
{
	if (kafka_unavailable(c))
		kreq__table_drain(c->table, fail_unavailable, c);
}

/* librdkafka statistics (statistics.interval.ms, 1 s by default here),
 * read only while Kafka is suspected or known down: any broker connection
 * (other than librdkafka's internal one) in state UP means Kafka is
 * reachable, even when no call is being made; none UP confirms a suspicion
 * from on_error(), dated from its first transport error. */
static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
	(void)rk;
	kreq_client_t *c = opaque;
	int_fast64_t down = atomic_load(&c->down_since_ms);
	int_fast64_t suspect = atomic_load(&c->suspect_since_ms);
	if (down == 0 && suspect == 0)
		return 0;
	json_t *root = json_loadb(json, len, 0, NULL);
	json_t *brokers = json_object_get(root, "brokers"), *b;
	const char *name;
	bool up = false;
	json_object_foreach(brokers, name, b)
	{
		const char *state = json_string_value(json_object_get(b, "state"));
		const char *source = json_string_value(json_object_get(b, "source"));
		up = up ||
		     (state && !strcmp(state, "UP") && !(source && !strcmp(source, "internal")));
	}
	json_decref(root);
	atomic_store(&c->suspect_since_ms, 0);
	if (up && down != 0) {
		atomic_store(&c->down_since_ms, 0);
		kreq__log(c->conf, 5, "client", "Kafka reachable again");
	} else if (!up && suspect != 0) {
		mark_down(c, suspect, "no Kafka broker connection is up");
	}
	return 0; /* librdkafka frees json */
}

/* ---- warming and failing one service's calls (health.c) ------------------ */

void kreq__warm_service(kreq_client_t *c, const char *service)
{
	char topic[320];
	service_topic(c, service, (int)strlen(service), topic, sizeof(topic));
	if (kreq__topic_partitions(c->producer, topic, WARM_TIMEOUT_MS) < 0)
		kreq__log(c->conf, 5, "client",
		          "no metadata for %s yet: the first call may wait for librdkafka's own "
		          "lookup",
		          topic);
}

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
		failed +=
		    settle_pending(c, s.ids[i], KREQ_EUNAVAILABLE, msg, KREQ__OUT_UNAVAILABLE);
	free(s.ids);
	return failed;
}

/* ---- slow-request report ------------------------------------------------ */

static void log_slow(kreq_client_t *c, size_t in_flight, const kreq__pending_row_t *rows, size_t n)
{
	int64_t now_ns = kreq__mono_ns();
	kreq__log(c->conf, 4, "client", "slow requests: %zu in flight; the %zu oldest:", in_flight,
	          n);
	for (size_t i = 0; i < n; i++) {
		char id[33];
		for (int j = 0; j < 16; j++)
			snprintf(id + 2 * j, 3, "%02x", rows[i].corr_id[j]);
		kreq__log(c->conf, 4, "client", "  %s %s age %lld ms, %lld ms left, attempt %u", id,
		          rows[i].method, (long long)((now_ns - rows[i].start_ns) / 1000000),
		          (long long)(rows[i].deadline_mono_ms - now_ns / 1000000),
		          rows[i].attempt);
	}
}

/* Once a second: if too many calls are pending or the oldest is too old,
 * log the oldest few, at most once per slow.report.interval.ms. */
static void slow_report(kreq_client_t *c)
{
	int64_t now = mono_ms();
	if (now < c->next_slow_check_ms || now < c->slow_quiet_until_ms)
		return;
	c->next_slow_check_ms = now + 1000;
	size_t in_flight = kreq_client_in_flight(c);
	bool crowded = c->slow_in_flight > 0 && in_flight >= (size_t)c->slow_in_flight;
	if (in_flight == 0 || (!crowded && c->slow_age_ms == 0))
		return;
	kreq__pending_row_t *rows;
	size_t n = kreq__pending_snapshot(c, (size_t)c->slow_entries, &rows);
	bool old = n > 0 && c->slow_age_ms > 0 &&
	           (kreq__mono_ns() - rows[0].start_ns) / 1000000 >= c->slow_age_ms;
	if (crowded || old) {
		log_slow(c, in_flight, rows, n);
		c->slow_quiet_until_ms = now + c->slow_interval_ms;
	}
	free(rows);
}

/* ---- the service thread ------------------------------------------------- */

static int sleep_ms(kreq_client_t *c)
{
	int64_t now = mono_ms(), next = kreq__wheel_next_expiry(c->wheel);
	int64_t ms = next == INT64_MAX ? MAX_SLEEP_MS : next - now;
	if (ms < 0)
		ms = 0;
	if (ms > MAX_SLEEP_MS)
		ms = MAX_SLEEP_MS;
	atomic_store(&c->sleep_until_ms, now + ms);
	return (int)ms;
}

static void *service_main(void *arg)
{
	kreq_client_t *c = arg;
	struct pollfd pfd = {.fd = c->wake_fd, .events = POLLIN};
	while (!atomic_load(&c->stopping)) {
		int ms = sleep_ms(c);
		/* re-check after publishing sleep_until: an earlier timer armed in
		 * between has either been seen by sleep_ms() or written wake_fd */
		if (poll(&pfd, 1, ms) > 0) {
			uint64_t v;
			ssize_t n = read(c->wake_fd, &v, sizeof(v));
			(void)n;
		}
		atomic_store(&c->sleep_until_ms, INT64_MIN); /* awake: no need to wake us */
		drain_replies(c);
		rd_kafka_poll(c->producer, 0);
		rd_kafka_poll(c->consumer, 0); /* its error events, never let them pile up */
		expire_timers(c);
		check_unavailable(c);
		slow_report(c);
	}
	return NULL;
}

/* ---- construction ------------------------------------------------------- */

static int set_all(rd_kafka_conf_t *rc, const char *const *kv, char *errstr, size_t errstr_size)
{
	for (; *kv; kv += 2)
		if (rd_kafka_conf_set(rc, kv[0], kv[1], errstr, errstr_size) != RD_KAFKA_CONF_OK)
			return KREQ_ECONF;
	return KREQ_OK;
}

/* Low-latency defaults (documented in docs/CONFIGURATION.md); any of them
 * can be overridden with a kafka.-prefixed property. */
#define KREQ__KV(name, value, why) name, value,
static const char *const producer_defaults[] = {KREQ__KAFKA_PRODUCER_DEFAULTS(KREQ__KV) NULL};
static const char *const consumer_defaults[] = {KREQ__KAFKA_CONSUMER_DEFAULTS(KREQ__KV) NULL};
#undef KREQ__KV

/* Workers drop a request that is not on the partition its idempotency key
 * maps to with Kafka's murmur2 (docs/protocol.md section 7), so the
 * producer's partitioner is not the user's to change. */
static int check_partitioner(const kreq_client_t *c, char *errstr, size_t errstr_size)
{
	char v[64] = "";
	size_t n = sizeof(v);
	int err = kreq_conf_get(c->conf, "kafka.partitioner", v, &n);
	if (err == KREQ_ENOENT || (!err && (!strcmp(v, "murmur2_random") || !strcmp(v, "murmur2"))))
		return KREQ_OK;
	return kreq__err(errstr, errstr_size, KREQ_ECONF,
	                 "kafka.partitioner=%s: requests must be partitioned by Kafka's murmur2 of "
	                 "their idempotency key (workers drop a request on any other partition); "
	                 "remove the setting",
	                 err ? "(too long)" : v);
}

static rd_kafka_t *make_handle(kreq_client_t *c, rd_kafka_type_t type, char *errstr,
                               size_t errstr_size)
{
	rd_kafka_conf_t *rc = rd_kafka_conf_new();
	char why[512] = "";
	bool producer = type == RD_KAFKA_PRODUCER;
	int err = set_all(rc, producer ? producer_defaults : consumer_defaults, why, sizeof(why));
	char mmax[24]; /* room for payload.max.bytes plus overhead (proto/envelope.h) */
	snprintf(mmax, sizeof(mmax), "%lld", (long long)kreq__limits_message_max(c->conf));
	if (!err && producer)
		err = rd_kafka_conf_set(rc, "message.max.bytes", mmax, why, sizeof(why)) !=
		      RD_KAFKA_CONF_OK;
	if (!err && !producer) {
		char gid[400];
		snprintf(gid, sizeof(gid), "%s.reply.%s", c->topic_prefix, c->client_id);
		err = rd_kafka_conf_set(rc, "group.id", gid, why, sizeof(why)) != RD_KAFKA_CONF_OK;
	}
	if (!err)
		err = kreq__conf_kafka_apply(c->conf, rc, why, sizeof(why));
	if (err) {
		rd_kafka_conf_destroy(rc);
		kreq__err(errstr, errstr_size, KREQ_ECONF, "Kafka configuration: %s", why);
		return NULL;
	}
	rd_kafka_conf_set_opaque(rc, c);
	rd_kafka_conf_set_error_cb(rc, on_error);
	if (producer) {
		rd_kafka_conf_set_dr_msg_cb(rc, on_delivery);
		rd_kafka_conf_set_stats_cb(rc, on_stats);
	}
	rd_kafka_t *rk = rd_kafka_new(type, rc, why, sizeof(why));
	if (!rk) {
		rd_kafka_conf_destroy(rc);
		kreq__err(errstr, errstr_size, KREQ_EKAFKA, "cannot create Kafka %s: %s",
		          producer ? "producer" : "consumer", why);
	}
	return rk;
}

static int create_reply_topic(kreq_client_t *c, int timeout_ms, char *errstr, size_t errstr_size)
{
	char why[512] = "", isr_buf[16];
	const char *configs[3] = {NULL}; /* min.insync.replicas (common/replication.h) */
	int rf, isr;
	if (kreq__replication_plan(c->consumer,
	                           (int)kreq__conf_int(c->conf, KREQ__P_REPLY_TOPIC_REPLICATION), 0,
	                           timeout_ms, &rf, &isr, configs, isr_buf, sizeof(isr_buf)))
		return kreq__err(errstr, errstr_size, KREQ_EUNAVAILABLE,
		                 "creating reply topic %s: Kafka did not answer within %d ms (is "
		                 "kafka.bootstrap.servers right?)",
		                 c->reply_topic, timeout_ms);
	rd_kafka_resp_err_t kerr =
	    kreq__topic_create(c->producer, c->reply_topic, c->reply_partition + 1, rf, configs,
	                       timeout_ms, why, sizeof(why));
	if (kerr == RD_KAFKA_RESP_ERR__INVALID_ARG && *why)
		return kreq__err(errstr, errstr_size, KREQ_ECONF, "reply topic: %s", why);
	if (kerr == RD_KAFKA_RESP_ERR__TIMED_OUT)
		return kreq__err(errstr, errstr_size, KREQ_EUNAVAILABLE,
		                 "creating reply topic %s: Kafka did not answer within %d ms (is "
		                 "kafka.bootstrap.servers right?)",
		                 c->reply_topic, timeout_ms);
	if (kerr)
		return kreq__err(errstr, errstr_size, KREQ_EKAFKA, "creating reply topic %s: %s",
		                 c->reply_topic, rd_kafka_err2str(kerr));
	return KREQ_OK;
}

/* A cluster whose metadata names no controller (librdkafka's mock cluster,
 * `kreq dev`) serves no CreateTopics: asking would only time out, and the
 * timeout would read as "Kafka did not answer" although it did. There the
 * reply topic is made the way such a cluster allows, by asking for it as a
 * producer (auto-creation, as warming does: common/topic_admin.h). Returns the
 * partition count, or 0 if the topic still does not exist. */
static int reply_topic_without_controller(kreq_client_t *c, int timeout_ms, char *errstr,
                                          size_t errstr_size)
{
	int n = kreq__topic_partitions(c->producer, c->reply_topic, timeout_ms);
	if (n <= 0)
		kreq__err(errstr, errstr_size, KREQ_EKAFKA,
		          "reply topic %s does not exist, and this Kafka cluster can neither "
		          "create it (its metadata names no controller, as librdkafka's mock "
		          "cluster) nor auto-created it: create it up front (kreq dev --topic %s)",
		          c->reply_topic, c->reply_topic);
	return n < 0 ? 0 : n;
}

/* Warns when the existing reply topic has fewer replicas than configured
 * (common/replication.h): replies would stop with the Kafka broker holding
 * them. */
static void reply_replication_check(kreq_client_t *c, int timeout_ms)
{
	int rf_conf = (int)kreq__conf_int(c->conf, KREQ__P_REPLY_TOPIC_REPLICATION);
	int brokers = rf_conf == 0 ? kreq__kafka_brokers(c->consumer, timeout_ms) : 0;
	char why[512];
	if ((rf_conf != 0 || brokers > 0) &&
	    kreq__replication_short(c->consumer, c->reply_topic,
	                            kreq__replication_factor(rf_conf, brokers), timeout_ms, why,
	                            sizeof(why)) == 1)
		kreq__log(c->conf, 4, "client", "%s", why);
}

static int ensure_reply_topic(kreq_client_t *c, int timeout_ms, char *errstr, size_t errstr_size)
{
	int n = kreq__topic_partitions(c->consumer, c->reply_topic, timeout_ms);
	if (n < 0)
		return kreq__err(errstr, errstr_size, KREQ_EUNAVAILABLE,
		                 "Kafka did not answer within %d ms (is kafka.bootstrap.servers "
		                 "right?)",
		                 timeout_ms);
	if (n == 0 && kreq__topic_admin_served(c->consumer, timeout_ms) == 0 &&
	    (n = reply_topic_without_controller(c, timeout_ms, errstr, errstr_size)) == 0)
		return KREQ_EKAFKA;
	if (n == 0)
		return create_reply_topic(c, timeout_ms, errstr, errstr_size);
	reply_replication_check(c, timeout_ms);
	if (n <= c->reply_partition)
		return kreq__err(errstr, errstr_size, KREQ_ECONF,
		                 "reply topic %s has %d partitions; reply.partition %d does not "
		                 "exist",
		                 c->reply_topic, n, c->reply_partition);
	return KREQ_OK;
}

/* Reads the reply partition's end offset and starts consuming there, so
 * every reply written after kreq_client_new() returns is seen. Retries while
 * a newly created topic's leader is not known yet. */
static int start_reply_consumer(kreq_client_t *c, int64_t until_ms, char *errstr,
                                size_t errstr_size)
{
	int64_t lo = 0, hi = 0;
	rd_kafka_resp_err_t kerr;
	do {
		kerr = rd_kafka_query_watermark_offsets(c->consumer, c->reply_topic,
		                                        c->reply_partition, &lo, &hi, 1000);
	} while (kerr && kerr != RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN && mono_ms() < until_ms);
	if (kerr)
		return kreq__err(errstr, errstr_size, KREQ_EUNAVAILABLE,
		                 "reading the end of reply topic %s [%d]: %s", c->reply_topic,
		                 c->reply_partition, rd_kafka_err2str(kerr));
	c->reply_q = rd_kafka_queue_new(c->consumer);
	c->reply_rkt = rd_kafka_topic_new(c->consumer, c->reply_topic, NULL);
	if (!c->reply_q || !c->reply_rkt ||
	    rd_kafka_consume_start_queue(c->reply_rkt, c->reply_partition, hi, c->reply_q) != 0)
		return kreq__err(errstr, errstr_size, KREQ_EKAFKA,
		                 "cannot start consuming reply topic %s: %s", c->reply_topic,
		                 rd_kafka_err2str(rd_kafka_last_error()));
	static const uint64_t one = 1;
	rd_kafka_queue_io_event_enable(c->reply_q, c->wake_fd, &one, sizeof(one));
	rd_kafka_queue_t *mq = rd_kafka_queue_get_main(c->producer);
	rd_kafka_queue_io_event_enable(mq, c->wake_fd, &one, sizeof(one));
	rd_kafka_queue_destroy(mq);
	return KREQ_OK;
}

static int read_conf(kreq_client_t *c, char *errstr, size_t errstr_size)
{
	const kreq_conf_t *cf = c->conf;
	const char *want = kreq__conf_str(cf, KREQ__P_SIGNING_KEY_ID);
	const char *have = kreq_keyring_signing_key(c->kr);
	if (*want && strcmp(want, have))
		return kreq__err(errstr, errstr_size, KREQ_ECONF,
		                 "signing.key.id is %s but the keyring signs with %s "
		                 "(kreq_keyring_set_signing_key())",
		                 want, have);
	kreq__limits_from_conf(&c->lim, cf);
	int err = kreq__limits_check(cf, errstr, errstr_size);
	if (err)
		return err;
	snprintf(c->client_id, sizeof(c->client_id), "%s", kreq__conf_str(cf, KREQ__P_CLIENT_ID));
	snprintf(c->topic_prefix, sizeof(c->topic_prefix), "%s",
	         kreq__conf_str(cf, KREQ__P_TOPIC_PREFIX));
	const char *rt = kreq__conf_str(cf, KREQ__P_REPLY_TOPIC);
	int n = *rt ? snprintf(c->reply_topic, sizeof(c->reply_topic), "%s", rt)
	            : snprintf(c->reply_topic, sizeof(c->reply_topic), "%s.reply.%s",
	                       c->topic_prefix, c->client_id);
	if (n >= (int)sizeof(c->reply_topic) ||
	    strspn(c->reply_topic, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	                           "0123456789._-") != strlen(c->reply_topic))
		return kreq__err(errstr, errstr_size, KREQ_ECONF,
		                 "reply topic \"%s\" is not a valid Kafka topic name (check "
		                 "client.id and topic.prefix)",
		                 c->reply_topic);
	int64_t p = kreq__conf_int(cf, KREQ__P_REPLY_PARTITION);
	c->reply_partition = p < 0 ? 0 : (int32_t)p;
	c->request_timeout_ms = kreq__conf_int(cf, KREQ__P_REQUEST_TIMEOUT_MS);
	c->attempt_timeout_ms = kreq__conf_int(cf, KREQ__P_RETRY_ATTEMPT_TIMEOUT_MS);
	c->backoff_ms = kreq__conf_int(cf, KREQ__P_RETRY_BACKOFF_MS);
	c->backoff_max_ms = kreq__conf_int(cf, KREQ__P_RETRY_BACKOFF_MAX_MS);
	c->max_attempts = kreq__conf_int(cf, KREQ__P_RETRY_MAX_ATTEMPTS);
	c->max_in_flight = kreq__conf_int(cf, KREQ__P_MAX_IN_FLIGHT);
	c->bp_wait_ms = kreq__conf_int(cf, KREQ__P_BACKPRESSURE_WAIT_MS);
	c->unavailable_after_ms = kreq__conf_int(cf, KREQ__P_UNAVAILABLE_AFTER_MS);
	c->slow_in_flight = kreq__conf_int(cf, KREQ__P_SLOW_REPORT_IN_FLIGHT);
	c->slow_age_ms = kreq__conf_int(cf, KREQ__P_SLOW_REPORT_AGE_MS);
	c->slow_interval_ms = kreq__conf_int(cf, KREQ__P_SLOW_REPORT_INTERVAL_MS);
	c->slow_entries = kreq__conf_int(cf, KREQ__P_SLOW_REPORT_ENTRIES);
	size_t sz = 0;
	if (kreq_conf_get(cf, "kafka.bootstrap.servers", NULL, &sz) != KREQ_OK)
		return kreq__err(errstr, errstr_size, KREQ_ECONF,
		                 "kafka.bootstrap.servers is not set");
	return KREQ_OK;
}

static void client_free(kreq_client_t *c)
{
	kreq__adminsock_stop(c->admin);
	if (c->reply_rkt) {
		rd_kafka_consume_stop(c->reply_rkt, c->reply_partition);
		rd_kafka_topic_destroy(c->reply_rkt);
	}
	if (c->reply_q)
		rd_kafka_queue_destroy(c->reply_q);
	if (c->consumer)
		rd_kafka_destroy(c->consumer);
	if (c->producer) {
		rd_kafka_purge(c->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
		rd_kafka_flush(c->producer, 5000); /* serves the delivery reports */
		rd_kafka_destroy(c->producer);
	}
	for (size_t i = 0; i < c->held_len; i++) { /* never handed to librdkafka */
		free(c->held[i].buf);
		kreq_future_release(c->held[i].f);
	}
	free(c->held);
	free(c->held_spare);
	pthread_mutex_destroy(&c->out_mu);
	if (c->wake_fd >= 0)
		close(c->wake_fd);
	if (c->wheel)
		kreq__wheel_destroy(c->wheel);
	if (c->table)
		kreq__table_destroy(c->table);
	pthread_cond_destroy(&c->bp_cv);
	pthread_mutex_destroy(&c->bp_mu);
	if (c->done_fd >= 0) {
		drop_completed(c);
		close(c->done_fd);
	}
	pthread_mutex_destroy(&c->done_mu);
	free(c->done_ring);
	kreq_keyring_release(c->kr);
	kreq_conf_destroy(c->conf);
	free(c);
}

static int client_start(kreq_client_t *c, char *errstr, size_t errstr_size)
{
	int64_t until = mono_ms() + kreq__conf_int(c->conf, KREQ__P_CLIENT_START_TIMEOUT_MS);
	c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	c->fowner.cancel_hook = call_cancel;
	c->table = kreq__table_new(1024, kreq__call_key_offset());
	c->wheel = kreq__wheel_new(mono_ms());
	if (c->wake_fd < 0 || c->done_fd < 0 || !c->table || !c->wheel)
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of resources: %s",
		                 strerror(errno));
	if (check_partitioner(c, errstr, errstr_size))
		return KREQ_ECONF;
	c->producer = make_handle(c, RD_KAFKA_PRODUCER, errstr, errstr_size);
	if (!c->producer)
		return KREQ_ECONF;
	c->consumer = make_handle(c, RD_KAFKA_CONSUMER, errstr, errstr_size);
	if (!c->consumer)
		return KREQ_ECONF;
	int err = ensure_reply_topic(c, (int)(until - mono_ms()), errstr, errstr_size);
	if (!err)
		err = start_reply_consumer(c, until, errstr, errstr_size);
	const char *admin = kreq__conf_str(c->conf, KREQ__P_ADMIN_SOCKET);
	if (!err && *admin)
		err = kreq__admin_start(c, admin, &c->admin, errstr, errstr_size);
	if (!err && pthread_create(&c->thread, NULL, service_main, c) != 0)
		err = kreq__err(errstr, errstr_size, KREQ_ENOMEM, "cannot start service thread");
	else if (!err)
		pthread_setname_np(c->thread, "kreq:client");
	int64_t check_ms = kreq__conf_int(c->conf, KREQ__P_SERVICE_CHECK_MS);
	if (!err && !(c->health = kreq__health_start(c, check_ms))) {
		atomic_store(&c->stopping, true); /* the service thread is running: stop it */
		wake(c);
		pthread_join(c->thread, NULL);
		err = kreq__err(errstr, errstr_size, KREQ_ENOMEM, "cannot start health thread");
	}
	return err;
}

kreq_client_t *kreq_client_new(const kreq_conf_t *conf, kreq_keyring_t *kr, char *errstr,
                               size_t errstr_size)
{
	if (!conf || !kr) {
		kreq__err(errstr, errstr_size, KREQ_EINVAL, "conf and keyring are required");
		return NULL;
	}
	if (!kreq_keyring_signing_key(kr)) {
		kreq__err(errstr, errstr_size, KREQ_ENOSIGNKEY, "the keyring has no signing key");
		return NULL;
	}
	pthread_once(&fork_once, register_fork_handler);
	kreq_client_t *c = calloc(1, sizeof(*c));
	if (!c || !(c->conf = kreq_conf_dup(conf))) {
		free(c);
		kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
		return NULL;
	}
	c->kr = kreq_keyring_retain(kr);
	c->wake_fd = -1;
	c->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK | EFD_SEMAPHORE);
	pthread_mutex_init(&c->done_mu, NULL);
	pthread_mutex_init(&c->out_mu, NULL);
	pthread_mutex_init(&c->bp_mu, NULL);
	pthread_cond_init(&c->bp_cv, NULL);
	atomic_init(&c->sleep_until_ms, INT64_MIN);
	if (read_conf(c, errstr, errstr_size) || client_start(c, errstr, errstr_size)) {
		client_free(c);
		return NULL;
	}
	return c;
}

static void close_pending(void *value, void *arg)
{
	finish(arg, value, KREQ_ECLOSED, 0, NULL, 0, false, "client destroyed", KREQ__OUT_CLOSED);
}

void kreq_client_destroy(kreq_client_t *c)
{
	if (!c)
		return;
	atomic_store(&c->closing, true);
	kreq__health_stop(c->health); /* may be settling calls: before anything else */
	c->health = NULL;
	atomic_store(&c->stopping, true);
	wake(c);
	pthread_join(c->thread, NULL);
	kreq__adminsock_stop(c->admin); /* no snapshot may walk the table from here on */
	c->admin = NULL;
	kreq__table_drain(c->table, close_pending, c);
	client_free(c);
}

/* ---- calls -------------------------------------------------------------- */

/* The client whose futures f belongs to (it embeds their owner). */
static kreq_client_t *client_of(kreq_future_t *f)
{
	const kreq__future_owner_t *o = kreq__future_owner(f);
	return (kreq_client_t *)(void *)((char *)o - offsetof(kreq_client_t, fowner));
}

static int call_cancel(kreq_future_t *f)
{
	kreq__call_t *call = call_of(f);
	kreq_client_t *c = client_of(f);
	if (kreq__table_remove(c->table, call->corr_id) != f)
		return KREQ_ESTATE;
	send_cancel(c, call);
	finish(c, f, KREQ_ECANCELED, 0, NULL, 0, false, "cancelled by caller", KREQ__OUT_CANCELLED);
	return KREQ_OK;
}

/* 1..255 printable ASCII characters whose service (up to the last '.') is
 * a possible service name: 1..200 of [A-Za-z0-9._-]. */
static bool method_valid(const char *m)
{
	size_t n = 0;
	for (; m[n]; n++)
		if (n >= KREQ__METHOD_MAX || (unsigned char)m[n] <= ' ' ||
		    (unsigned char)m[n] >= 0x7f)
			return false;
	size_t svc = service_len(m);
	return n > 0 && svc >= 1 && svc <= KREQ__SERVICE_MAX &&
	       strspn(m, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") >=
	           svc;
}

_Static_assert(offsetof(kreq__call_t, blob) == 67, "the record stays packed");
_Static_assert(KREQ__IDEM_KEY_MAX <= UINT8_MAX && KREQ__METHOD_MAX <= UINT8_MAX, "lengths");

/* Bytes of the blob a call of these arguments keeps (see kreq__call_t). */
static size_t blob_size(const char *method, size_t len, const kreq_call_opts_t *o)
{
	size_t idem = o && o->idem_len ? o->idem_len : 16;
	size_t tp = o && o->traceparent[0] ? KREQ__TP_LEN + 1 : 0;
	return strlen(method) + 1 + idem + tp + len;
}

/* Fills the call record and its blob, which follows it in the future's
 * extra area: one allocation holds everything the call owns. */
static int call_init(kreq_client_t *c, kreq__call_t *call, const char *method, const void *payload,
                     size_t len, const kreq_call_opts_t *o)
{
	new_corr_id(call->corr_id);
	call->idem_len = (uint8_t)(o && o->idem_len ? o->idem_len : 16);
	call->has_tp = o && o->traceparent[0];
	call->payload_len = (uint32_t)len & 0x1fffffffu; /* <= payload.max.bytes <= 2^28 */
	memcpy(call->blob, method, strlen(method) + 1);
	memcpy((uint8_t *)blob_idem(call), o && o->idem_len ? o->idem : call->corr_id,
	       call->idem_len);
	if (call->has_tp)
		memcpy((char *)blob_traceparent(call), o->traceparent, KREQ__TP_LEN + 1);
	if (len)
		memcpy((uint8_t *)blob_payload(call), payload, len);
	int64_t now_wall = kreq__now_ms();
	int64_t timeout = o && o->timeout_ms ? o->timeout_ms : c->request_timeout_ms;
	call->deadline_wall_ms = o && o->deadline_ms ? o->deadline_ms : now_wall + timeout;
	call->start_ns = kreq__mono_ns();
	/* the local deadline, as an offset from the start (capped: a deadline
	 * more than 49.7 days away expires locally after 49.7 days) */
	int64_t after = call->deadline_wall_ms - now_wall;
	call->deadline_after_ms = after <= 0           ? 0
	                          : after > UINT32_MAX ? UINT32_MAX
	                                               : (uint32_t)after;
	call->svc = 1; /* attempt 1, waiting */
	call->notify = o && o->notify;
	return call->deadline_wall_ms <= now_wall ? KREQ_ETIMEDOUT : KREQ_OK;
}

size_t kreq__call_key_offset(void)
{
	return kreq__future_extra_offset() + offsetof(kreq__call_t, corr_id);
}

kreq_future_t *kreq__call_new(kreq_client_t *c, const char *method, const void *payload, size_t len,
                              const kreq_call_opts_t *o, int *err)
{
	/* len is at most payload.max.bytes (checked by the caller): no overflow */
	kreq_future_t *f =
	    kreq__future_new(offsetof(kreq__call_t, blob) + blob_size(method, len, o), &c->fowner);
	if (!f) {
		*err = KREQ_ENOMEM;
		return NULL;
	}
	*err = call_init(c, call_of(f), method, payload, len, o);
	return f;
}

static int check_call_args(kreq_client_t *c, const char *method, const void *payload, size_t len,
                           kreq_future_t **futp)
{
	if (!c || !method || !futp || (len && !payload) || !method_valid(method))
		return KREQ_EINVAL;
	if (len > c->lim.payload_max) { /* refused before sending: it could never arrive */
		kreq__log(
		    c->conf, 4, "client",
		    "call to %s refused: payload of %zu bytes exceeds payload.max.bytes (%zu)",
		    method, len, c->lim.payload_max);
		return KREQ_EOVERSIZE;
	}
	if (atomic_load(&c->closing))
		return KREQ_ECLOSED;
	if (kafka_unavailable(c) || !kreq__health_admit(c->health, method))
		return KREQ_EUNAVAILABLE;
	return KREQ_OK;
}

/* Inserts, arms and sends a fully built call; on error undoes all three. */
static int submit(kreq_client_t *c, kreq_future_t *f)
{
	kreq__call_t *call = call_of(f);
	int err = kreq__table_insert(c->table, call->corr_id, kreq_future_retain(f));
	if (err) {
		kreq_future_release(f);
		return err;
	}
	kreq_future_retain(f); /* the wheel's */
	arm(c, call, mono_ms() + c->attempt_timeout_ms);
	err = send_request(c, f);
	if (err && kreq__table_remove(c->table, call->corr_id) == f) {
		if (kreq__wheel_cancel(c->wheel, &call->timer))
			kreq_future_release(f);
		kreq_future_release(f);
	} else if (err) {
		err = KREQ_OK; /* already settled by another path: report through the future */
	}
	return err;
}

int kreq_client_call(kreq_client_t *c, const char *method, const void *payload, size_t len,
                     const kreq_call_opts_t *opts, kreq_future_t **futp)
{
	int err = check_call_args(c, method, payload, len, futp);
	if (err)
		return err;
	if ((err = admit(c)) != KREQ_OK) {
		if (err == KREQ_EBACKPRESSURE)
			count(&c->metrics.outcome[KREQ__OUT_BACKPRESSURE]);
		return err;
	}
	bool notify = opts && opts->notify;
	kreq_future_t *f = kreq__call_new(c, method, payload, len, opts, &err);
	if (!err && notify && !reserve_completion(c))
		err = KREQ_ENOMEM;
	else if (!err && (err = submit(c, f)) != KREQ_OK && notify)
		unreserve_completion(c);
	if (err) {
		release_slot(c);
		kreq_future_release(f);
		return err;
	}
	count(&c->metrics.calls);
	*futp = f;
	return KREQ_OK;
}

int kreq_client_call_wait(kreq_client_t *c, const char *method, const void *payload, size_t len,
                          const kreq_call_opts_t *opts, kreq_future_t **futp)
{
	kreq_future_t *f = NULL;
	int err = kreq_client_call(c, method, payload, len, opts, &f);
	if (err)
		return err;
	kreq_future_wait(f, -1);
	err = kreq_future_err(f);
	if (futp)
		*futp = f;
	else
		kreq_future_release(f);
	return err;
}

size_t kreq_client_in_flight(const kreq_client_t *c)
{
	return c ? atomic_load(&((kreq_client_t *)c)->in_flight) : 0;
}

const char *kreq_client_reply_topic(const kreq_client_t *c, int32_t *partition)
{
	if (!c)
		return NULL;
	if (partition)
		*partition = c->reply_partition;
	return c->reply_topic;
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

/* ---- options ------------------------------------------------------------ */

kreq_call_opts_t *kreq_call_opts_new(void)
{
	return calloc(1, sizeof(kreq_call_opts_t));
}

void kreq_call_opts_destroy(kreq_call_opts_t *o)
{
	free(o);
}

int kreq_call_opts_set_timeout(kreq_call_opts_t *o, int64_t timeout_ms)
{
	if (!o || timeout_ms < 1 || timeout_ms > 86400000)
		return KREQ_EINVAL;
	o->timeout_ms = timeout_ms;
	return KREQ_OK;
}

int kreq_call_opts_set_deadline(kreq_call_opts_t *o, int64_t deadline_ms)
{
	if (!o || deadline_ms <= 0)
		return KREQ_EINVAL;
	o->deadline_ms = deadline_ms;
	return KREQ_OK;
}

int kreq_call_opts_set_idempotency_key(kreq_call_opts_t *o, const void *key, size_t len)
{
	if (!o || !key || len == 0 || len > KREQ__IDEM_KEY_MAX)
		return KREQ_EINVAL;
	memcpy(o->idem, key, len);
	o->idem_len = len;
	return KREQ_OK;
}

static bool is_hex(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

int kreq_call_opts_set_notify(kreq_call_opts_t *o, bool notify)
{
	if (!o)
		return KREQ_EINVAL;
	o->notify = notify;
	return KREQ_OK;
}

int kreq_call_opts_set_traceparent(kreq_call_opts_t *o, const char *tp)
{
	/* version "00": 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags> */
	if (!o || !tp || strlen(tp) != 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-' ||
	    !is_hex(tp, 2) || !is_hex(tp + 3, 32) || !is_hex(tp + 36, 16) || !is_hex(tp + 53, 2) ||
	    strspn(tp + 3, "0") >= 32 || strspn(tp + 36, "0") >= 16)
		return KREQ_EINVAL;
	memcpy(o->traceparent, tp, 56);
	return KREQ_OK;
}
