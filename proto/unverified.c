/*
 * unverified.c — see unverified.h.
 *
 * Design: the same envelope and body decoding a receiver does, minus the
 * signature, plus the field rules a displayed row relies on (a correlation
 * id of 16 bytes, an idempotency key of 1..255 bytes, a printable method,
 * ...), so nothing shown is nonsense even though nothing is vouched for.
 * Callers must mark everything decoded here as unverified.
 */
#include <string.h>

#include "common/internal.h"
#include "proto/unverified.h"

static bool method_ok(const char *s)
{
	size_t n = 0;
	for (; s[n]; n++)
		if (n >= KREQ__METHOD_MAX || (unsigned char)s[n] <= ' ' ||
		    (unsigned char)s[n] >= 0x7f)
			return false;
	return n > 0;
}

/* The field rules a row relies on, for records decoded unverified, and the
 * deadline (now_ms 0: no clock check). */
static int unverified_fields(const kreq__opened_t *o, int64_t now_ms)
{
	int64_t deadline = 0;
	if (o->kind == KREQ__KIND_REQUEST) {
		const Kreq__Request *q = o->u.req;
		if (q->correlation_id.len != KREQ__CORR_ID_BYTES || q->idempotency_key.len == 0 ||
		    q->idempotency_key.len > KREQ__IDEM_KEY_MAX || !method_ok(q->method) ||
		    q->attempt < 1 || q->deadline_ms <= 0 || q->issued_at_ms <= 0)
			return KREQ_EMALFORMED;
		deadline = q->deadline_ms;
	} else if (o->kind == KREQ__KIND_CANCEL) {
		const Kreq__Cancel *c = o->u.cancel;
		if (c->correlation_id.len != KREQ__CORR_ID_BYTES ||
		    c->idempotency_key.len > KREQ__IDEM_KEY_MAX || c->deadline_ms <= 0)
			return KREQ_EMALFORMED;
		deadline = c->deadline_ms;
	} else if (o->kind == KREQ__KIND_RESULT) {
		const Kreq__Result *r = o->u.result;
		if (r->request_digest.len != 32 || r->idempotency_key.len == 0 ||
		    r->idempotency_key.len > KREQ__IDEM_KEY_MAX ||
		    !kreq__key_id_valid(r->request_key_id, strlen(r->request_key_id)))
			return KREQ_EMALFORMED;
	}
	return now_ms != 0 && deadline != 0 && deadline <= now_ms ? KREQ_EEXPIRED : KREQ_OK;
}

/* The kinds decoded here: Request, Reply, Cancel, Result (a DeadLetter or
 * an Attempt is refused as malformed, as it always was). */
static const ProtobufCMessageDescriptor *body_descriptor(uint32_t kind)
{
	return kind == KREQ__KIND_DEAD || kind == KREQ__KIND_ATTEMPT ? NULL
	                                                             : kreq__body_descriptor(kind);
}

int kreq__envelope_open_unverified(const kreq__limits_t *lim, int64_t now_ms, const uint8_t *buf,
                                   size_t len, kreq__opened_t *out)
{
	memset(out, 0, sizeof(*out));
	if (buf == NULL || len == 0)
		return KREQ_EMALFORMED;
	if (len > lim->envelope_max)
		return KREQ_EOVERSIZE;
	Kreq__Envelope *env = kreq__envelope__unpack(NULL, len, buf);
	if (env == NULL)
		return KREQ_EMALFORMED;
	const ProtobufCMessageDescriptor *d = body_descriptor(env->kind);
	size_t id_len = strlen(env->key_id);
	int err = KREQ_OK;
	if (env->version != KREQ__PROTO_VERSION &&
	    !(env->version == KREQ__PROTO_RESULT_V1 && env->kind == KREQ__KIND_RESULT))
		err = KREQ_EVERSION; /* as kreq__envelope_open: v1 Results still count */
	else if (d == NULL || !kreq__key_id_valid(env->key_id, id_len))
		err = KREQ_EMALFORMED;
	else if ((out->u.msg = protobuf_c_message_unpack(d, NULL, env->body.len, env->body.data)) ==
	         NULL)
		err = KREQ_EMALFORMED;
	if (err == KREQ_OK) {
		out->kind = (kreq__kind_t)env->kind;
		memcpy(out->key_id, env->key_id, id_len + 1);
		err = unverified_fields(out, now_ms);
	}
	kreq__envelope__free_unpacked(env, NULL);
	if (err != KREQ_OK)
		kreq__opened_clear(out);
	return err;
}

bool kreq__envelope_peek(const kreq__limits_t *lim, const uint8_t *buf, size_t len, uint32_t *kind,
                         char key_id[KREQ_KEY_ID_MAX + 1])
{
	key_id[0] = '\0';
	if (buf == NULL || len == 0 || len > lim->envelope_max)
		return false;
	Kreq__Envelope *env = kreq__envelope__unpack(NULL, len, buf);
	if (env == NULL)
		return false;
	*kind = env->kind;
	size_t n = env->key_id ? strlen(env->key_id) : 0;
	if (n > 0 && n <= KREQ_KEY_ID_MAX)
		memcpy(key_id, env->key_id, n + 1);
	kreq__envelope__free_unpacked(env, NULL);
	return true;
}
