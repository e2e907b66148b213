/*
 * envelope.c — sign/verify and the bounded envelope decoder.
 *
 * Design notes
 * - Verify before parse: the envelope is a five-field protobuf; its body is
 *   kept as opaque bytes and the signature is checked over those exact bytes
 *   before the body is decoded, so unauthenticated input only ever reaches
 *   the (small, fuzzed) envelope decoder.
 * - That decoder is hand-written (kreq__envelope_parse), not protobuf-c's:
 *   protobuf-c keeps every unknown field it meets, one allocation each, so
 *   a 1 MiB envelope of two-byte unknown fields cost ~45 MB and 40-70 ms
 *   before any signature was checked (docs/PERFORMANCE.md has the figures).
 *   Ours knows five fields, refuses anything else at the first byte that
 *   shows it, and points into the record instead of copying.
 * - Strict bodies: a verified body is walked once (body_wire_check) before
 *   protobuf-c decodes it, and unknown fields, repeated singular fields,
 *   wrong wire types, out-of-range integers and strings holding a NUL byte
 *   are refused: one signed message has exactly one meaning (a method
 *   "a\0b" would otherwise be read as "a").
 * - Domain separation: the signed bytes start with a fixed tag and bind the
 *   version, key id and kind, each length-prefixed, so a signature made for
 *   one kind or key can never be replayed as another.
 * - Bounded: the size limit is checked before any parsing, and every
 *   variable-length body field has a documented maximum.
 * - Few allocations: protobuf-c allocates every string and bytes field
 *   separately, a dozen mallocs per message that a busy worker pays on
 *   every record. The body is decoded into a bump arena instead (one heap
 *   block the opened message owns; the envelope itself is not copied at
 *   all); an arena that runs out falls back to malloc for the rest, so no
 *   input size is refused for it. Sealing packs the body on the stack when
 *   it is small and can write the envelope into the caller's buffer.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "common/conf.h"
#include "common/internal.h"
#include "proto/envelope.h"
#include "proto/sha256.h"

#define ED25519_STACK_MAX 4096
#define BODY_STACK_MAX    4096 /* bodies packed on the stack when sealing */

/* ---- bump arena for protobuf-c ------------------------------------------- */

typedef struct arena_ovf {
	struct arena_ovf *next;
	max_align_t data[];
} arena_ovf_t;

typedef struct arena {
	uint8_t *base;
	size_t used, cap;
	arena_ovf_t *ovf; /* allocations that did not fit */
} arena_t;

static void *arena_alloc(void *data, size_t size)
{
	arena_t *a = data;
	size_t need = (size + _Alignof(max_align_t) - 1) & ~(_Alignof(max_align_t) - 1);
	if (need >= size && need <= a->cap - a->used) {
		void *p = a->base + a->used;
		a->used += need;
		return p;
	}
	arena_ovf_t *o = malloc(sizeof(*o) + size);
	if (!o)
		return NULL;
	o->next = a->ovf;
	a->ovf = o;
	return o->data;
}

static void arena_free(void *data, void *p)
{
	(void)data; /* everything goes at once in arena_release() */
	(void)p;
}

/* Frees what did not fit; the arena's own space is the caller's. */
static void arena_release(arena_t *a)
{
	for (arena_ovf_t *o = a->ovf, *n; o; o = n) {
		n = o->next;
		free(o);
	}
	a->ovf = NULL;
}

static void arena_destroy(arena_t *a)
{
	arena_release(a);
	free(a);
}

/* A heap arena of cap bytes: header and space in one block. */
static arena_t *arena_new(size_t cap)
{
	size_t hdr = (sizeof(arena_t) + _Alignof(max_align_t) - 1) & ~(_Alignof(max_align_t) - 1);
	arena_t *a = malloc(hdr + cap);
	if (a)
		*a = (arena_t){(uint8_t *)a + hdr, 0, cap, NULL};
	return a;
}

void kreq__limits_from_conf(kreq__limits_t *lim, const kreq_conf_t *conf)
{
	lim->envelope_max = (size_t)kreq__conf_int(conf, KREQ__P_ENVELOPE_MAX_BYTES);
	lim->payload_max = (size_t)kreq__conf_int(conf, KREQ__P_PAYLOAD_MAX_BYTES);
	lim->skew_ms = kreq__conf_int(conf, KREQ__P_CLOCK_SKEW_MS);
}

int64_t kreq__limits_message_max(const kreq_conf_t *conf)
{
	int64_t need = kreq__conf_int(conf, KREQ__P_PAYLOAD_MAX_BYTES) +
	               KREQ__ENVELOPE_OVERHEAD_MAX + KREQ__RECORD_OVERHEAD_MAX;
	return need < 1000000 ? 1000000 : need; /* never below librdkafka's default */
}

int kreq__limits_check(const kreq_conf_t *conf, char *errstr, size_t errstr_size)
{
	int64_t payload = kreq__conf_int(conf, KREQ__P_PAYLOAD_MAX_BYTES);
	int64_t envelope = kreq__conf_int(conf, KREQ__P_ENVELOPE_MAX_BYTES);
	if (payload + KREQ__ENVELOPE_OVERHEAD_MAX > envelope)
		return kreq__err(errstr, errstr_size, KREQ_ECONF,
		                 "payload.max.bytes (%lld) plus the envelope overhead (%d) exceeds "
		                 "envelope.max.bytes (%lld): raise envelope.max.bytes to at least "
		                 "%lld or lower payload.max.bytes",
		                 (long long)payload, KREQ__ENVELOPE_OVERHEAD_MAX,
		                 (long long)envelope,
		                 (long long)(payload + KREQ__ENVELOPE_OVERHEAD_MAX));
	char v[32];
	size_t n = sizeof(v);
	if (kreq_conf_get(conf, "kafka.message.max.bytes", v, &n) != KREQ_OK)
		return KREQ_OK; /* kreq sets kreq__limits_message_max() */
	int64_t need = payload + KREQ__ENVELOPE_OVERHEAD_MAX + KREQ__RECORD_OVERHEAD_MAX;
	if (strtoll(v, NULL, 10) < need)
		return kreq__err(errstr, errstr_size, KREQ_ECONF,
		                 "kafka.message.max.bytes (%s) is too small for payload.max.bytes "
		                 "(%lld) plus the envelope and record overhead (%d): set it to at "
		                 "least %lld, or lower payload.max.bytes",
		                 v, (long long)payload,
		                 KREQ__ENVELOPE_OVERHEAD_MAX + KREQ__RECORD_OVERHEAD_MAX,
		                 (long long)need);
	return KREQ_OK;
}

static uint8_t *put_be(uint8_t *p, uint64_t v, int bytes)
{
	for (int i = bytes - 1; i >= 0; i--)
		*p++ = (uint8_t)(v >> (8 * i));
	return p;
}

size_t kreq__sig_header(uint8_t *hdr, uint32_t version, const char *key_id, size_t key_id_len,
                        uint32_t kind, size_t body_len)
{
	uint8_t *p = hdr;
	memcpy(p, KREQ__SIG_TAG, sizeof(KREQ__SIG_TAG)); /* includes the 0x00 */
	p += sizeof(KREQ__SIG_TAG);
	p = put_be(p, version, 4);
	*p++ = (uint8_t)key_id_len;
	memcpy(p, key_id, key_id_len);
	p += key_id_len;
	p = put_be(p, kind, 4);
	p = put_be(p, body_len, 8);
	return (size_t)(p - hdr);
}

void kreq__request_digest(const Kreq__Request *q, uint8_t out[32])
{
	kreq__sha256_t st;
	kreq__sha256_init(&st);
	kreq__sha256_update(&st, q->method, strlen(q->method) + 1);
	kreq__sha256_update(&st, q->payload.data, q->payload.len);
	kreq__sha256_final(&st, out);
}

/* Ed25519 signs one contiguous message: header || body. */
static uint8_t *concat(uint8_t *stackbuf, const uint8_t *hdr, size_t hdr_len, const uint8_t *body,
                       size_t body_len)
{
	uint8_t *m =
	    hdr_len + body_len <= ED25519_STACK_MAX ? stackbuf : malloc(hdr_len + body_len);
	if (m) {
		memcpy(m, hdr, hdr_len);
		if (body_len)
			memcpy(m + hdr_len, body, body_len);
	}
	return m;
}

size_t kreq__sign(const kreq__key_t *k, uint32_t kind, const uint8_t *body, size_t body_len,
                  uint8_t *sig)
{
	uint8_t hdr[KREQ__SIG_HDR_MAX], stackbuf[ED25519_STACK_MAX];
	size_t hdr_len =
	    kreq__sig_header(hdr, KREQ__PROTO_VERSION, k->id, k->id_len, kind, body_len);
	if (k->type == KREQ_KEY_HMAC_SHA256) {
		kreq__hmac(k->hmac, hdr, hdr_len, body, body_len, sig);
		return KREQ__SHA256_BYTES;
	}
	if (k->type != KREQ_KEY_ED25519)
		return 0;
	uint8_t *m = concat(stackbuf, hdr, hdr_len, body, body_len);
	if (!m)
		return 0;
	crypto_sign_detached(sig, NULL, m, hdr_len + body_len, k->material);
	if (m != stackbuf)
		free(m);
	return crypto_sign_BYTES;
}

int kreq__verify(const kreq__key_t *k, uint32_t version, uint32_t kind, const uint8_t *body,
                 size_t body_len, const uint8_t *sig, size_t sig_len)
{
	uint8_t hdr[KREQ__SIG_HDR_MAX], stackbuf[ED25519_STACK_MAX];
	size_t hdr_len = kreq__sig_header(hdr, version, k->id, k->id_len, kind, body_len);
	if (k->type == KREQ_KEY_HMAC_SHA256) {
		uint8_t mac[KREQ__SHA256_BYTES];
		if (sig_len != sizeof(mac))
			return KREQ_EBADSIG;
		kreq__hmac(k->hmac, hdr, hdr_len, body, body_len, mac);
		return sodium_memcmp(mac, sig, sizeof(mac)) == 0 ? KREQ_OK : KREQ_EBADSIG;
	}
	if (sig_len != crypto_sign_BYTES)
		return KREQ_EBADSIG;
	uint8_t *m = concat(stackbuf, hdr, hdr_len, body, body_len);
	if (!m)
		return KREQ_ENOMEM;
	int rc = crypto_sign_verify_detached(sig, m, hdr_len + body_len, k->pk);
	if (m != stackbuf)
		free(m);
	return rc == 0 ? KREQ_OK : KREQ_EBADSIG;
}

/* ---- wire reading (envelope and body checks) ----------------------------- */

typedef struct wire {
	const uint8_t *p, *end;
} wire_t;

/* A minimally encoded varint of at most 10 bytes. */
static bool wire_varint(wire_t *w, uint64_t *v)
{
	uint64_t x = 0;
	for (unsigned i = 0; i < 10 && w->p < w->end; i++) {
		uint8_t b = *w->p++;
		if (i == 9 && b > 1)
			return false; /* more than 64 bits */
		x |= (uint64_t)(b & 0x7f) << (7 * i);
		if (!(b & 0x80)) {
			*v = x;
			return i == 0 || b != 0; /* no trailing zero groups */
		}
	}
	return false;
}

/* A length-delimited field's bytes; false if they run past the end. */
static bool wire_bytes(wire_t *w, const uint8_t **data, size_t *len)
{
	uint64_t n;
	if (!wire_varint(w, &n) || n > (uint64_t)(w->end - w->p))
		return false;
	*data = w->p;
	*len = (size_t)n;
	w->p += n;
	return true;
}

/* ---- the envelope decoder ------------------------------------------------ */

int kreq__envelope_parse(const uint8_t *buf, size_t len, kreq__env_view_t *out, char *errstr,
                         size_t errstr_size)
{
	static const uint8_t wire_type[6] = {0, 0, 2, 0, 2, 2}; /* by field number */
	wire_t w = {buf, buf + len};
	unsigned seen = 0;
	memset(out, 0, sizeof(*out));
	while (w.p < w.end) {
		uint64_t tag, v;
		const uint8_t *data = NULL;
		size_t n = 0;
		if (!wire_varint(&w, &tag))
			return kreq__err(errstr, errstr_size, KREQ_EMALFORMED,
			                 "malformed envelope: truncated field key");
		uint64_t field = tag >> 3;
		if (field < 1 || field > 5)
			return kreq__err(errstr, errstr_size, KREQ_EMALFORMED,
			                 "malformed envelope: unknown field %llu",
			                 (unsigned long long)field);
		if ((tag & 7) != wire_type[field])
			return kreq__err(errstr, errstr_size, KREQ_EMALFORMED,
			                 "malformed envelope: field %d has wire type %d",
			                 (int)field, (int)(tag & 7));
		if (seen & (1u << field))
			return kreq__err(errstr, errstr_size, KREQ_EMALFORMED,
			                 "malformed envelope: field %d repeated", (int)field);
		seen |= 1u << field;
		bool ok = wire_type[field] == 0 ? wire_varint(&w, &v) && v <= UINT32_MAX
		                                : wire_bytes(&w, &data, &n);
		if (!ok)
			return kreq__err(errstr, errstr_size, KREQ_EMALFORMED,
			                 "malformed envelope: field %d truncated or out of range",
			                 (int)field);
		switch (field) {
		case 1:
			out->version = (uint32_t)v;
			break;
		case 2:
			out->key_id = data, out->key_id_len = n;
			break;
		case 3:
			out->kind = (uint32_t)v;
			break;
		case 4:
			out->body = data, out->body_len = n;
			break;
		default:
			out->sig = data, out->sig_len = n;
		}
	}
	return KREQ_OK;
}

/* ---- strict body check (after verification) ---------------------------- */

static int wire_type_of(ProtobufCType t)
{
	switch (t) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_BOOL:
		return 0;
	case PROTOBUF_C_TYPE_STRING:
	case PROTOBUF_C_TYPE_BYTES:
	case PROTOBUF_C_TYPE_MESSAGE:
		return 2;
	default:
		return -1; /* not used by kreq.proto */
	}
}

static bool varint_in_range(ProtobufCType t, uint64_t v)
{
	switch (t) {
	case PROTOBUF_C_TYPE_INT32: /* negative values are sign-extended to 64 bits */
		return (int64_t)v >= INT32_MIN && (int64_t)v <= INT32_MAX;
	case PROTOBUF_C_TYPE_UINT32:
		return v <= UINT32_MAX;
	case PROTOBUF_C_TYPE_BOOL:
		return v <= 1;
	default:
		return true;
	}
}

/* Field number num of d: kreq.proto numbers fields densely from 1, in
 * order, so the index is the number (checked); the general lookup else. */
static const ProtobufCFieldDescriptor *field_of(const ProtobufCMessageDescriptor *d, uint64_t num)
{
	if (num >= 1 && num <= d->n_fields && d->fields[num - 1].id == num)
		return &d->fields[num - 1];
	return num <= UINT32_MAX ? protobuf_c_message_descriptor_get_field(d, (unsigned)num) : NULL;
}

/* Every field of the encoded message d known to d, singular fields at most
 * once, repeated ones at most KREQ__METADATA_MAX times, integers in range,
 * strings without NUL bytes; nested messages likewise (depth 2 at most).
 * Returns NULL, or what is wrong. */
static const char *body_wire_check(const ProtobufCMessageDescriptor *d, const uint8_t *buf,
                                   size_t len, int depth)
{
	wire_t w = {buf, len ? buf + len : buf}; /* an absent body is NULL */
	uint64_t seen = 0;
	uint8_t count[64] = {0};
	if (depth > 2 || d->n_fields > 64)
		return "nested too deeply";
	while (w.p < w.end) {
		uint64_t tag, v;
		const uint8_t *data;
		size_t n;
		if (!wire_varint(&w, &tag))
			return "truncated field key";
		const ProtobufCFieldDescriptor *f = field_of(d, tag >> 3);
		if (!f)
			return "unknown field";
		if ((int)(tag & 7) != wire_type_of(f->type))
			return "field of the wrong wire type";
		size_t i = (size_t)(f - d->fields);
		if (f->label == PROTOBUF_C_LABEL_REPEATED ? ++count[i] > KREQ__METADATA_MAX
		                                          : (seen >> i) & 1)
			return "field repeated";
		seen |= (uint64_t)1 << i;
		if (wire_type_of(f->type) == 0) {
			if (!wire_varint(&w, &v) || !varint_in_range(f->type, v))
				return "integer truncated or out of range";
			continue;
		}
		if (!wire_bytes(&w, &data, &n))
			return "field truncated";
		if (f->type == PROTOBUF_C_TYPE_STRING && memchr(data, 0, n))
			return "string with a NUL byte";
		if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
			const char *why = body_wire_check(f->descriptor, data, n, depth + 1);
			if (why)
				return why;
		}
	}
	return NULL;
}

/* ---- body validation (shared by seal and open) ------------------------- */

typedef struct vctx {
	const kreq__limits_t *lim;
	char *errstr;
	size_t errstr_size;
} vctx_t;

static int bad(vctx_t *v, const char *what)
{
	return kreq__err(v->errstr, v->errstr_size, KREQ_EMALFORMED, "malformed message: %s", what);
}

static bool printable(const char *s, size_t min, size_t max)
{
	size_t n = 0;
	for (; s[n]; n++)
		if (n >= max || (unsigned char)s[n] <= ' ' || (unsigned char)s[n] >= 0x7f)
			return false;
	return n >= min;
}

static bool topic_valid(const char *s)
{
	return strcmp(s, ".") && strcmp(s, "..") && kreq__name_valid(s, strlen(s), KREQ__TOPIC_MAX);
}

static bool service_valid(const char *s)
{
	return kreq__name_valid(s, strlen(s), KREQ__SERVICE_MAX);
}

static int check_payload(vctx_t *v, size_t len)
{
	if (len > v->lim->payload_max)
		return kreq__err(v->errstr, v->errstr_size, KREQ_EOVERSIZE,
		                 "payload of %zu bytes exceeds payload.max.bytes (%zu)", len,
		                 v->lim->payload_max);
	return KREQ_OK;
}

static int check_times(vctx_t *v, int64_t issued, int64_t deadline)
{
	if (issued <= 0 || deadline <= 0)
		return bad(v, "issued_at_ms and deadline_ms must be positive");
	if (deadline < issued)
		return bad(v, "deadline_ms is before issued_at_ms");
	return KREQ_OK;
}

static int check_metadata(vctx_t *v, Kreq__MetadataEntry **md, size_t n)
{
	if (n > KREQ__METADATA_MAX)
		return bad(v, "more than 32 metadata entries");
	for (size_t i = 0; i < n; i++) {
		if (!printable(md[i]->key, 1, KREQ__META_KEY_MAX))
			return bad(v, "metadata key must be 1..64 printable ASCII characters");
		if (strlen(md[i]->value) > KREQ__META_VAL_MAX)
			return bad(v, "metadata value longer than 1024 bytes");
	}
	return KREQ_OK;
}

static int validate_request(vctx_t *v, const Kreq__Request *r)
{
	if (r->correlation_id.len != KREQ__CORR_ID_BYTES)
		return bad(v, "correlation_id must be 16 bytes");
	if (r->idempotency_key.len == 0 || r->idempotency_key.len > KREQ__IDEM_KEY_MAX)
		return bad(v, "idempotency_key must be 1..255 bytes");
	if (!printable(r->method, 1, KREQ__METHOD_MAX))
		return bad(v, "method must be 1..255 printable ASCII characters");
	if (!service_valid(r->service))
		return bad(v, "service must be 1..200 characters of [A-Za-z0-9._-]");
	if (!topic_valid(r->reply_topic))
		return bad(v, "reply_topic is not a valid Kafka topic name");
	if (r->reply_partition < 0)
		return bad(v, "reply_partition is negative");
	if (r->attempt < 1)
		return bad(v, "attempt must be at least 1");
	if (strlen(r->client_id) > 255)
		return bad(v, "client_id longer than 255 bytes");
	int err = check_metadata(v, r->metadata, r->n_metadata);
	if (!err)
		err = check_times(v, r->issued_at_ms, r->deadline_ms);
	return err ? err : check_payload(v, r->payload.len);
}

static int validate_reply(vctx_t *v, const Kreq__Reply *r)
{
	if (r->correlation_id.len != KREQ__CORR_ID_BYTES)
		return bad(v, "correlation_id must be 16 bytes");
	if (r->idempotency_key.len > KREQ__IDEM_KEY_MAX)
		return bad(v, "idempotency_key longer than 255 bytes");
	if (strlen(r->error) > KREQ__ERROR_MAX)
		return bad(v, "error text longer than 4096 bytes");
	int err = check_times(v, r->issued_at_ms, r->deadline_ms);
	return err ? err : check_payload(v, r->payload.len);
}

static int validate_cancel(vctx_t *v, const Kreq__Cancel *c)
{
	if (c->correlation_id.len != KREQ__CORR_ID_BYTES)
		return bad(v, "correlation_id must be 16 bytes");
	if (c->idempotency_key.len > KREQ__IDEM_KEY_MAX)
		return bad(v, "idempotency_key longer than 255 bytes");
	if (strlen(c->client_id) > 255)
		return bad(v, "client_id longer than 255 bytes");
	return check_times(v, c->issued_at_ms, c->deadline_ms);
}

static int validate_result(vctx_t *v, const Kreq__Result *r)
{
	if (r->request_digest.len != 32)
		return bad(v, "request_digest must be 32 bytes");
	if (r->idempotency_key.len == 0 || r->idempotency_key.len > KREQ__IDEM_KEY_MAX)
		return bad(v, "idempotency_key must be 1..255 bytes");
	if (!kreq__key_id_valid(r->request_key_id, strlen(r->request_key_id)))
		return bad(v, "request_key_id is not a valid key id");
	if (!printable(r->method, 1, KREQ__METHOD_MAX))
		return bad(v, "method must be 1..255 printable ASCII characters");
	if (strlen(r->error) > KREQ__ERROR_MAX)
		return bad(v, "error text longer than 4096 bytes");
	int err = check_times(v, r->issued_at_ms, r->deadline_ms);
	return err ? err : check_payload(v, r->payload.len);
}

static int validate_attempt(vctx_t *v, const Kreq__Attempt *a)
{
	if (a->idempotency_key.len == 0 || a->idempotency_key.len > KREQ__IDEM_KEY_MAX)
		return bad(v, "attempt: idempotency_key must be 1..255 bytes");
	if (!kreq__key_id_valid(a->request_key_id, strlen(a->request_key_id)))
		return bad(v, "attempt: request_key_id is not a valid key id");
	if (a->number < 1)
		return bad(v, "attempt: number must be at least 1");
	if (strlen(a->worker) > KREQ__WORKER_ID_MAX)
		return bad(v, "attempt: worker longer than 255 bytes");
	if (a->started_at_ms <= 0)
		return bad(v, "attempt: started_at_ms must be positive");
	if (a->ended_at_ms != 0 && a->ended_at_ms < a->started_at_ms)
		return bad(v, "attempt: ended_at_ms is before started_at_ms");
	if (a->request_offset < 0 || a->request_partition < 0)
		return bad(v, "attempt: request_offset and request_partition must not be negative");
	return KREQ_OK;
}

static int validate_dead(vctx_t *v, const Kreq__DeadLetter *d)
{
	if (d->request.len == 0 || d->request.len > v->lim->envelope_max)
		return bad(v, "request must be 1..envelope.max.bytes bytes");
	if (!topic_valid(d->request_topic))
		return bad(v, "request_topic is not a valid Kafka topic name");
	if (d->request_offset < 0 || d->request_partition < 0)
		return bad(v, "request_offset and request_partition must not be negative");
	if (!kreq__key_id_valid(d->request_key_id, strlen(d->request_key_id)))
		return bad(v, "request_key_id is not a valid key id");
	if (d->idempotency_key.len == 0 || d->idempotency_key.len > KREQ__IDEM_KEY_MAX)
		return bad(v, "idempotency_key must be 1..255 bytes");
	if (d->correlation_id.len != KREQ__CORR_ID_BYTES)
		return bad(v, "correlation_id must be 16 bytes");
	if (!printable(d->method, 1, KREQ__METHOD_MAX))
		return bad(v, "method must be 1..255 printable ASCII characters");
	if (strlen(d->reason) > KREQ__ERROR_MAX)
		return bad(v, "reason longer than 4096 bytes");
	if (d->n_attempts > KREQ__ATTEMPTS_MAX)
		return bad(v, "more than 32 attempts");
	if (d->dead_at_ms <= 0)
		return bad(v, "dead_at_ms must be positive");
	if (strlen(d->worker) > KREQ__WORKER_ID_MAX)
		return bad(v, "worker longer than 255 bytes");
	for (size_t i = 0; i < d->n_attempts; i++) {
		int err = validate_attempt(v, d->attempts[i]);
		if (err)
			return err;
	}
	return KREQ_OK;
}

/* The largest envelope of a kind: a DeadLetter holds a whole request. */
static size_t kind_max(const kreq__limits_t *lim, uint32_t kind)
{
	return lim->envelope_max + (kind == KREQ__KIND_DEAD ? KREQ__DEAD_OVERHEAD_MAX : 0);
}

const ProtobufCMessageDescriptor *kreq__body_descriptor(uint32_t kind)
{
	switch (kind) {
	case KREQ__KIND_REQUEST:
		return &kreq__request__descriptor;
	case KREQ__KIND_REPLY:
		return &kreq__reply__descriptor;
	case KREQ__KIND_CANCEL:
		return &kreq__cancel__descriptor;
	case KREQ__KIND_RESULT:
		return &kreq__result__descriptor;
	case KREQ__KIND_DEAD:
		return &kreq__dead_letter__descriptor;
	case KREQ__KIND_ATTEMPT:
		return &kreq__attempt__descriptor;
	}
	return NULL;
}

static int validate(vctx_t *v, uint32_t kind, const ProtobufCMessage *m)
{
	if (m->descriptor != kreq__body_descriptor(kind))
		return bad(v, "body type does not match kind");
	switch (kind) {
	case KREQ__KIND_REQUEST:
		return validate_request(v, (const Kreq__Request *)m);
	case KREQ__KIND_REPLY:
		return validate_reply(v, (const Kreq__Reply *)m);
	case KREQ__KIND_RESULT:
		return validate_result(v, (const Kreq__Result *)m);
	case KREQ__KIND_DEAD:
		return validate_dead(v, (const Kreq__DeadLetter *)m);
	case KREQ__KIND_ATTEMPT:
		return validate_attempt(v, (const Kreq__Attempt *)m);
	default:
		return validate_cancel(v, (const Kreq__Cancel *)m);
	}
}

static void times_of(const kreq__opened_t *o, int64_t *issued, int64_t *deadline)
{
	switch (o->kind) {
	case KREQ__KIND_REQUEST:
		*issued = o->u.req->issued_at_ms, *deadline = o->u.req->deadline_ms;
		break;
	case KREQ__KIND_REPLY:
		*issued = o->u.reply->issued_at_ms, *deadline = o->u.reply->deadline_ms;
		break;
	case KREQ__KIND_CANCEL:
		*issued = o->u.cancel->issued_at_ms, *deadline = o->u.cancel->deadline_ms;
		break;
	case KREQ__KIND_RESULT:
		*issued = o->u.result->issued_at_ms, *deadline = o->u.result->deadline_ms;
		break;
	default: /* DeadLetter, Attempt: no clock check (check_clock) */
		break;
	}
}

/* ---- seal / open ------------------------------------------------------- */

/* Seals into dst (cap bytes) or, with dst NULL, into a new malloc'd *out. */
static int seal(const kreq_keyring_t *kr, const kreq__limits_t *lim, kreq__kind_t kind,
                const ProtobufCMessage *body, uint8_t *dst, size_t cap, uint8_t **out,
                size_t *out_len, char *errstr, size_t errstr_size)
{
	*out_len = 0;
	const kreq__key_t *k = kreq__keyring_signer(kr);
	if (!k)
		return kreq__err(errstr, errstr_size, KREQ_ENOSIGNKEY,
		                 "the keyring has no signing key");
	vctx_t v = {lim, errstr, errstr_size};
	int err = validate(&v, kind, body);
	if (err)
		return err;
	size_t blen = protobuf_c_message_get_packed_size(body), emax = kind_max(lim, kind);
	if (blen > emax)
		return kreq__err(errstr, errstr_size, KREQ_EOVERSIZE,
		                 "body of %zu bytes exceeds envelope.max.bytes (%zu)", blen, emax);
	uint8_t stack[BODY_STACK_MAX], sig[crypto_sign_BYTES];
	uint8_t *bbuf = blen <= sizeof(stack) ? stack : malloc(blen);
	if (!bbuf)
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	protobuf_c_message_pack(body, bbuf);
	size_t slen = kreq__sign(k, kind, bbuf, blen, sig);
	Kreq__Envelope env = KREQ__ENVELOPE__INIT;
	env.version = KREQ__PROTO_VERSION;
	env.key_id = (char *)k->id;
	env.kind = kind;
	env.body = (ProtobufCBinaryData){blen, bbuf};
	env.signature = (ProtobufCBinaryData){slen, sig};
	size_t elen = kreq__envelope__get_packed_size(&env);
	size_t limit = dst && cap < emax ? cap : emax;
	uint8_t *ebuf = NULL;
	if (!slen)
		err = kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	else if (elen > limit)
		err = kreq__err(errstr, errstr_size, KREQ_EOVERSIZE,
		                "envelope of %zu bytes exceeds %s (%zu)", elen,
		                limit == emax ? "envelope.max.bytes" : "the buffer", limit);
	else if (!(ebuf = dst ? dst : malloc(elen)))
		err = kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	else
		kreq__envelope__pack(&env, ebuf);
	if (bbuf != stack)
		free(bbuf);
	if (out)
		*out = ebuf;
	*out_len = ebuf ? elen : 0;
	return err;
}

int kreq__envelope_seal(const kreq_keyring_t *kr, const kreq__limits_t *lim, kreq__kind_t kind,
                        const ProtobufCMessage *body, uint8_t **out, size_t *out_len, char *errstr,
                        size_t errstr_size)
{
	return seal(kr, lim, kind, body, NULL, 0, out, out_len, errstr, errstr_size);
}

int kreq__envelope_seal_to(const kreq_keyring_t *kr, const kreq__limits_t *lim, kreq__kind_t kind,
                           const ProtobufCMessage *body, uint8_t *dst, size_t cap, size_t *out_len,
                           char *errstr, size_t errstr_size)
{
	return seal(kr, lim, kind, body, dst, cap, NULL, out_len, errstr, errstr_size);
}

static int check_clock(vctx_t *v, const kreq__opened_t *o, int64_t now_ms)
{
	int64_t issued = 0, deadline = 0;
	if (o->kind == KREQ__KIND_DEAD || o->kind == KREQ__KIND_ATTEMPT)
		return KREQ_OK; /* records of history: their topics' retention bounds them */
	times_of(o, &issued, &deadline);
	if (issued > now_ms + v->lim->skew_ms)
		return kreq__err(v->errstr, v->errstr_size, KREQ_EFUTURE,
		                 "issued %lld ms in the future (clock.skew.ms is %lld)",
		                 (long long)(issued - now_ms), (long long)v->lim->skew_ms);
	if (deadline <= now_ms)
		return kreq__err(v->errstr, v->errstr_size, KREQ_EEXPIRED,
		                 "deadline passed %lld ms ago", (long long)(now_ms - deadline));
	return KREQ_OK;
}

/* Version 2 for everything; a Result of version 1 (its body did not
 * change) is still accepted so stored results survive the upgrade. */
static bool version_ok(uint32_t version, uint32_t kind)
{
	return version == KREQ__PROTO_VERSION ||
	       (version == KREQ__PROTO_RESULT_V1 && kind == KREQ__KIND_RESULT);
}

/* Steps 3-6 of docs/protocol.md section 5: version, kind, key, signature. */
static int check_envelope(vctx_t *v, const kreq_keyring_t *kr, const kreq__env_view_t *env,
                          char *key_id)
{
	if (!version_ok(env->version, env->kind))
		return kreq__err(v->errstr, v->errstr_size, KREQ_EVERSION,
		                 "protocol version %u (this build speaks %d)", env->version,
		                 KREQ__PROTO_VERSION);
	if (!kreq__body_descriptor(env->kind))
		return bad(v, "unknown message kind");
	if (env->key_id_len == 0 || env->key_id_len > KREQ_KEY_ID_MAX ||
	    memchr(env->key_id, 0, env->key_id_len) ||
	    !kreq__key_id_valid((const char *)env->key_id, env->key_id_len))
		return bad(v, "invalid key id");
	memcpy(key_id, env->key_id, env->key_id_len);
	key_id[env->key_id_len] = '\0';
	const kreq__key_t *k = kreq__keyring_find(kr, key_id, env->key_id_len);
	if (!k)
		return kreq__err(v->errstr, v->errstr_size, KREQ_EUNKNOWNKEY, "unknown key id %s",
		                 key_id);
	int err = kreq__verify(k, env->version, env->kind, env->body, env->body_len, env->sig,
	                       env->sig_len);
	if (err)
		return kreq__err(v->errstr, v->errstr_size, err,
		                 "signature does not verify with key %s", key_id);
	return KREQ_OK;
}

/* Steps 7-10: the verified body, decoded strictly, validated, on time. */
static int open_body(vctx_t *v, const kreq__env_view_t *env, int64_t now_ms, kreq__opened_t *out)
{
	const ProtobufCMessageDescriptor *d = kreq__body_descriptor(env->kind);
	const char *why = body_wire_check(d, env->body, env->body_len, 0);
	if (why)
		return kreq__err(v->errstr, v->errstr_size, KREQ_EMALFORMED,
		                 "malformed message: body does not decode strictly: %s", why);
	/* room for every field's copy plus the structs (a body with more
	 * fields than that falls back to malloc for the rest) */
	arena_t *a = arena_new(env->body_len + 1024);
	if (!a)
		return kreq__err(v->errstr, v->errstr_size, KREQ_ENOMEM, "out of memory");
	ProtobufCAllocator pa = {arena_alloc, arena_free, a};
	ProtobufCMessage *m = protobuf_c_message_unpack(d, &pa, env->body_len, env->body);
	if (!m) {
		arena_destroy(a);
		return bad(v, "body does not decode");
	}
	out->kind = (kreq__kind_t)env->kind;
	out->u.msg = m;
	out->arena = a;
	int err = validate(v, env->kind, m);
	if (!err)
		err = check_clock(v, out, now_ms);
	return err;
}

int kreq__envelope_open(const kreq_keyring_t *kr, const kreq__limits_t *lim, int64_t now_ms,
                        const uint8_t *buf, size_t len, kreq__opened_t *out, char *errstr,
                        size_t errstr_size)
{
	vctx_t v = {lim, errstr, errstr_size};
	kreq__env_view_t env;
	memset(out, 0, sizeof(*out));
	if (!buf || len == 0)
		return bad(&v, "empty input");
	if (len > kind_max(lim, KREQ__KIND_DEAD))
		return kreq__err(errstr, errstr_size, KREQ_EOVERSIZE,
		                 "envelope of %zu bytes exceeds envelope.max.bytes (%zu)", len,
		                 lim->envelope_max);
	int err = kreq__envelope_parse(buf, len, &env, errstr, errstr_size);
	if (!err && len > kind_max(lim, env.kind))
		err = kreq__err(errstr, errstr_size, KREQ_EOVERSIZE,
		                "envelope of %zu bytes exceeds envelope.max.bytes (%zu)", len,
		                kind_max(lim, env.kind));
	if (!err)
		err = check_envelope(&v, kr, &env, out->key_id);
	if (!err)
		err = open_body(&v, &env, now_ms, out);
	if (err)
		kreq__opened_clear(out);
	return err;
}

void kreq__opened_clear(kreq__opened_t *o)
{
	if (o->arena)
		arena_destroy(o->arena); /* the body lived in it */
	else if (o->u.msg)
		protobuf_c_message_free_unpacked(o->u.msg, NULL);
	memset(o, 0, sizeof(*o));
}
