/*
 * call.c — call records: what a call is before it is sent.
 *
 * Why a file of its own: everything that makes and reads a call record
 * (the future's extra area, client/client_int.h) is here and nothing else
 * is: correlation ids, the one allocation per call holding method,
 * idempotency key, traceparent and payload, the call's deadlines, and the
 * names a method maps to (its service and request topic). Below it are
 * only the future, the table and the wheel, so every other file may call
 * it.
 * - Deadlines are absolute wall-clock times on the wire; locally each is
 *   converted once to the monotonic clock (start + deadline_after_ms) so a
 *   wall-clock step cannot fire or delay timers.
 */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "client/client_int.h"
#include "common/internal.h"

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

void kreq__call_ids_init(void)
{
	pthread_once(&fork_once, register_fork_handler);
}

/* ---- names -------------------------------------------------------------- */

/* "<prefix>.<service>.requests" for the first svc_len bytes of service. */
void kreq__service_topic(const kreq_client_t *c, const char *service, int svc_len, char *out,
                         size_t size)
{
	snprintf(out, size, "%s.%.*s.requests", c->topic_prefix, svc_len, service);
}

/* Length of method's service: the method up to its last '.'. */
size_t kreq__service_len(const char *method)
{
	const char *dot = strrchr(method, '.');
	return dot ? (size_t)(dot - method) : strlen(method);
}

/* The request topic of method's service. */
void kreq__request_topic(const kreq_client_t *c, const char *method, char *out, size_t size)
{
	kreq__service_topic(c, method, (int)kreq__service_len(method), out, size);
}

/* 1..255 printable ASCII characters whose service (up to the last '.') is
 * a possible service name: 1..200 of [A-Za-z0-9._-]. */
bool kreq__method_valid(const char *m)
{
	size_t n = 0;
	for (; m[n]; n++)
		if (n >= KREQ__METHOD_MAX || (unsigned char)m[n] <= ' ' ||
		    (unsigned char)m[n] >= 0x7f)
			return false;
	size_t svc = kreq__service_len(m);
	return n > 0 && svc >= 1 && svc <= KREQ__SERVICE_MAX && kreq__name_span(m, svc) == svc;
}

/* ---- the record --------------------------------------------------------- */

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
	memcpy((uint8_t *)kreq__call_idem(call), o && o->idem_len ? o->idem : call->corr_id,
	       call->idem_len);
	if (call->has_tp)
		memcpy((char *)kreq__call_traceparent(call), o->traceparent, KREQ__TP_LEN + 1);
	if (len)
		memcpy((uint8_t *)kreq__call_payload(call), payload, len);
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
	*err = call_init(c, kreq__call_of(f), method, payload, len, o);
	return f;
}
