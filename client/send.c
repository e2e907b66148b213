/*
 * send.c — requests out: sealing a call's attempt and handing it to the
 * producer, and cancel notices.
 *
 * Why a file of its own: sealing (on the caller's stack when it fits) and
 * coalescing (below) are the hot path of every call and every retry, and
 * they need nothing but the call record and the producer; they settle
 * nothing (a failed send is the caller's or the timer's to handle).
 */
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"
#include "common/hoptrace.h"
#include "common/internal.h"

/* requests up to this size are sealed on the caller's stack */
#define REQUEST_STACK_MAX 2048

/*
 * Coalescing. With linger.ms=0 librdkafka's broker thread sends whatever is
 * queued as soon as it wakes, so requests produced a few microseconds apart
 * (each caller seals its own, ~2.5 us of HMAC) go out as many small
 * ProduceRequests, and every request costs the Kafka broker and both ends far
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
	kreq__call_t *call = kreq__call_of(f);
	char topic[320];
	kreq__request_topic(c, kreq__call_method(call), topic, sizeof(topic));
	kreq__hop(CALL);
	rd_kafka_resp_err_t kerr = rd_kafka_producev(
	    c->producer, RD_KAFKA_V_TOPIC(topic),
	    RD_KAFKA_V_KEY(kreq__call_idem(call), call->idem_len), RD_KAFKA_V_VALUE(buf, len),
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
	atomic_fetch_or_explicit(&kreq__call_of(f)->flags, KREQ__CALL_HELD, memory_order_relaxed);
	return true;
}

/* The request message of a call's current attempt: its fields point into
 * the call and into this struct, which outlives the message. */
typedef struct request_msg {
	Kreq__Request r;
	Kreq__MetadataEntry tp, *md[1];
	char service[KREQ__SERVICE_MAX + 1];
} request_msg_t;

static void build_request(const kreq_client_t *c, kreq__call_t *call, request_msg_t *m)
{
	Kreq__Request *r = &m->r;
	*r = (Kreq__Request)KREQ__REQUEST__INIT;
	r->correlation_id = (ProtobufCBinaryData){16, call->corr_id};
	r->idempotency_key =
	    (ProtobufCBinaryData){call->idem_len, (uint8_t *)kreq__call_idem(call)};
	r->method = (char *)kreq__call_method(call);
	/* signed destination: a replay into another service's topic is dropped */
	size_t svc_len =
	    kreq__service_len(r->method); /* <= KREQ__SERVICE_MAX: kreq__method_valid() */
	memcpy(m->service, r->method, svc_len);
	m->service[svc_len] = '\0';
	r->service = m->service;
	r->payload = (ProtobufCBinaryData){call->payload_len, (uint8_t *)kreq__call_payload(call)};
	r->reply_topic = (char *)c->reply_topic;
	r->reply_partition = c->reply_partition;
	r->deadline_ms = call->deadline_wall_ms;
	r->issued_at_ms = kreq__now_ms();
	if (r->issued_at_ms > r->deadline_ms)
		r->issued_at_ms = r->deadline_ms;
	r->attempt = kreq__call_attempt(call);
	r->client_id = (char *)c->client_id;
	if (call->has_tp) {
		m->tp = (Kreq__MetadataEntry)KREQ__METADATA_ENTRY__INIT;
		m->tp.key = "traceparent";
		m->tp.value = (char *)kreq__call_traceparent(call);
		m->md[0] = &m->tp;
		r->metadata = m->md;
		r->n_metadata = 1;
	}
}

/* Seals r into stack (REQUEST_STACK_MAX bytes) when it fits, else into a
 * new heap buffer; *buf is the one used. Sealed on the stack and copied by
 * librdkafka, a request leaves no buffer of ours to free on another thread
 * (a held request gets one). */
static int seal_request(kreq_client_t *c, const kreq__call_t *call, Kreq__Request *r,
                        uint8_t *stack, uint8_t **buf, size_t *len)
{
	size_t fields = (size_t)call->payload_len + call->idem_len + strlen(r->method) +
	                kreq__call_tp_len(call) + strlen(c->reply_topic) + strlen(c->client_id);
	/* the rest (ids, times, key id, signature, framing) is well under 256
	 * bytes; a larger request is sealed once, on the heap, not tried twice */
	bool try_stack = fields + 256 <= REQUEST_STACK_MAX;
	*buf = stack;
	int err = try_stack ? kreq__envelope_seal_to(c->kr, &c->lim, KREQ__KIND_REQUEST, &r->base,
	                                             stack, REQUEST_STACK_MAX, len, NULL, 0)
	                    : KREQ_EOVERSIZE;
	if (err == KREQ_EOVERSIZE && (!try_stack || REQUEST_STACK_MAX < c->lim.envelope_max))
		err = kreq__envelope_seal(c->kr, &c->lim, KREQ__KIND_REQUEST, &r->base, buf, len,
		                          NULL, 0);
	return err;
}

/* Hands a sealed attempt (buf: stack, or its own heap buffer) over with a
 * new reference on f: held while the service thread delivers replies,
 * else produced at once. */
static int hand_over(kreq_client_t *c, kreq_future_t *f, uint8_t *buf, const uint8_t *stack,
                     size_t len)
{
	kreq__call_t *call = kreq__call_of(f);
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

/* Seals the call's current attempt and sends it, or holds it (above). */
int kreq__send_request(kreq_client_t *c, kreq_future_t *f)
{
	request_msg_t m;
	uint8_t stack[REQUEST_STACK_MAX], *buf;
	size_t len;
	build_request(c, kreq__call_of(f), &m);
	int err = seal_request(c, kreq__call_of(f), &m.r, stack, &buf, &len);
	return err ? err : hand_over(c, f, buf, stack, len);
}

/* Service thread: hands the requests held while it delivered replies to
 * librdkafka in one burst. Requests settled meanwhile are dropped. */
void kreq__release_held(kreq_client_t *c)
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
		atomic_fetch_and_explicit(&kreq__call_of(h[i].f)->flags, (uint8_t)~KREQ__CALL_HELD,
		                          memory_order_relaxed);
	pthread_mutex_unlock(&c->out_mu);
	for (size_t i = 0; i < n; i++) {
		if (kreq__table_find(c->table, kreq__call_of(h[i].f)->corr_id) == h[i].f) {
			produce_request(c, h[i].f, h[i].buf, h[i].len, true);
		} else {
			free(h[i].buf);
			kreq_future_release(h[i].f);
		}
	}
}

/* Best effort: tells the workers a call was cancelled. */
void kreq__send_cancel(kreq_client_t *c, const kreq__call_t *call)
{
	Kreq__Cancel m = KREQ__CANCEL__INIT;
	m.correlation_id = (ProtobufCBinaryData){16, (uint8_t *)call->corr_id};
	m.idempotency_key = (ProtobufCBinaryData){call->idem_len, (uint8_t *)kreq__call_idem(call)};
	m.issued_at_ms = kreq__now_ms();
	m.deadline_ms =
	    call->deadline_wall_ms > m.issued_at_ms ? call->deadline_wall_ms : m.issued_at_ms;
	m.client_id = c->client_id;
	uint8_t *buf;
	size_t len;
	if (kreq__envelope_seal(c->kr, &c->lim, KREQ__KIND_CANCEL, &m.base, &buf, &len, NULL, 0))
		return;
	char topic[320];
	kreq__request_topic(c, kreq__call_method(call), topic, sizeof(topic));
	if (rd_kafka_producev(c->producer, RD_KAFKA_V_TOPIC(topic),
	                      RD_KAFKA_V_KEY(kreq__call_idem(call), call->idem_len),
	                      RD_KAFKA_V_VALUE(buf, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE),
	                      RD_KAFKA_V_OPAQUE(NULL), RD_KAFKA_V_END))
		free(buf);
}
