/*
 * submit.c — making a call: kreq_client_call(), its checks, admission and
 * submission, and cancel.
 *
 * Why a file of its own: this is the public entry of every call and the
 * only place that puts a call into the pending table; it validates at the
 * boundary (method, payload size, closing, fail-fast) and then hands the
 * call to the lower files: an in-flight slot (settle.c), the record
 * (call.c), the table and its timer (retry.c) and the first send
 * (send.c). Cancel is here because it is the caller's other way in.
 */
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"
#include "client/health.h"
#include "common/conf.h"
#include "common/internal.h"

/* The client whose futures f belongs to (it embeds their owner). */
static kreq_client_t *client_of(kreq_future_t *f)
{
	const kreq__future_owner_t *o = kreq__future_owner(f);
	return (kreq_client_t *)(void *)((char *)o - offsetof(kreq_client_t, fowner));
}

int kreq__call_cancel(kreq_future_t *f)
{
	kreq__call_t *call = kreq__call_of(f);
	kreq_client_t *c = client_of(f);
	if (kreq__table_remove(c->table, call->corr_id) != f)
		return KREQ_ESTATE;
	kreq__send_cancel(c, call);
	kreq__settle(c, f, KREQ_ECANCELED, 0, NULL, 0, false, "cancelled by caller",
	             KREQ__OUT_CANCELLED);
	return KREQ_OK;
}

static int check_call_args(kreq_client_t *c, const char *method, const void *payload, size_t len,
                           kreq_future_t **futp)
{
	if (!c || !method || !futp || (len && !payload) || !kreq__method_valid(method))
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
	if (kreq__kafka_unavailable(c) || !kreq__health_admit(c->health, method))
		return KREQ_EUNAVAILABLE;
	return KREQ_OK;
}

/* Inserts, arms and sends a fully built call; on error undoes all three. */
static int submit(kreq_client_t *c, kreq_future_t *f)
{
	kreq__call_t *call = kreq__call_of(f);
	int err = kreq__table_insert(c->table, call->corr_id, kreq_future_retain(f));
	if (err) {
		kreq_future_release(f);
		return err;
	}
	kreq_future_retain(f); /* the wheel's */
	kreq__arm(c, call, kreq__mono_ms() + c->attempt_timeout_ms);
	err = kreq__send_request(c, f);
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
	if ((err = kreq__slot_admit(c)) != KREQ_OK) {
		if (err == KREQ_EBACKPRESSURE)
			kreq__count(&c->metrics.outcome[KREQ__OUT_BACKPRESSURE]);
		return err;
	}
	bool notify = opts && opts->notify;
	kreq_future_t *f = kreq__call_new(c, method, payload, len, opts, &err);
	if (!err && notify && !kreq__completion_reserve(c))
		err = KREQ_ENOMEM;
	else if (!err && (err = submit(c, f)) != KREQ_OK && notify)
		kreq__completion_unreserve(c);
	if (err) {
		kreq__slot_release(c);
		kreq_future_release(f);
		return err;
	}
	kreq__count(&c->metrics.calls);
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
