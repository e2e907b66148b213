/*
 * decide.c — see decide.h. Pure: reads only its argument.
 */
#include "broker/worker/decide.h"
#include "kreq/worker.h"
#include "proto/envelope.h"

static kreq__decision_t act(kreq__action_t a, kreq__why_t why, int32_t status)
{
	return (kreq__decision_t){a, why, status};
}

static kreq__decision_t drop(kreq__why_t why)
{
	return act(KREQ__ACT_DROP, why, 0);
}

static kreq__decision_t answer(kreq__why_t why, int32_t status)
{
	return act(KREQ__ACT_ANSWER, why, status);
}

/* Step 8 of decide.h, for a key the store holds. */
static kreq__decision_t dedup(const kreq__facts_t *f)
{
	if (!f->digest_match)
		return answer(KREQ__WHY_CONFLICT, KREQ_STATUS_CONFLICT);
	if (f->found == KREQ__FOUND_DONE)
		return act(KREQ__ACT_SERVE, KREQ__WHY_STORED, 0);
	if (f->corr_waiting)
		return drop(KREQ__WHY_DUPLICATE);
	if (f->joiners >= KREQ__JOINERS_MAX)
		return drop(KREQ__WHY_JOINERS_FULL);
	if (f->in_flight >= f->max_in_flight)
		return drop(KREQ__WHY_IN_FLIGHT_FULL);
	return act(KREQ__ACT_JOIN, KREQ__WHY_JOINED, 0);
}

kreq__decision_t kreq__decide(const kreq__facts_t *f)
{
	if (!f->verified)
		return drop(KREQ__WHY_NOT_VERIFIED);
	if (f->kind == KREQ__KIND_CANCEL)
		return act(KREQ__ACT_CANCEL, KREQ__WHY_CANCEL, 0);
	if (f->kind != KREQ__KIND_REQUEST)
		return drop(KREQ__WHY_KIND);
	if (f->deadline_too_far)
		return drop(KREQ__WHY_DEADLINE_TOO_FAR);
	if (f->too_old)
		return drop(KREQ__WHY_TOO_OLD);
	if (!f->partition_ok)
		return drop(KREQ__WHY_WRONG_PARTITION);
	if (!f->service_ok)
		return drop(KREQ__WHY_WRONG_SERVICE);
	if (!f->reply_topic_ok)
		return drop(KREQ__WHY_REPLY_TOPIC);
	if (!f->reply_partition_ok)
		return drop(KREQ__WHY_REPLY_PARTITION);
	if (!f->handler_found)
		return answer(KREQ__WHY_UNKNOWN_METHOD, KREQ_STATUS_UNKNOWN_METHOD);
	if (!f->key_permitted)
		return answer(KREQ__WHY_DENIED, KREQ_STATUS_DENIED);
	if (f->found != KREQ__FOUND_NONE)
		return dedup(f);
	if (f->max_attempts && f->attempts >= f->max_attempts)
		return act(KREQ__ACT_POISON, KREQ__WHY_POISON, KREQ_STATUS_POISON);
	if (f->rate_limit_on && f->tokens < 1.0)
		return answer(KREQ__WHY_RATE_LIMITED, KREQ_STATUS_OVERLOADED);
	if (f->budget_ms < f->min_budget_ms)
		return answer(KREQ__WHY_DEADLINE, KREQ_STATUS_DEADLINE);
	return act(KREQ__ACT_DISPATCH, KREQ__WHY_RUN, 0);
}

const char *kreq__why_name(kreq__why_t why)
{
	static const char *const names[] = {
	    [KREQ__WHY_NOT_VERIFIED] = "not_verified",
	    [KREQ__WHY_CANCEL] = "cancel",
	    [KREQ__WHY_KIND] = "kind",
	    [KREQ__WHY_WRONG_PARTITION] = "wrong_partition",
	    [KREQ__WHY_WRONG_SERVICE] = "wrong_service",
	    [KREQ__WHY_REPLY_TOPIC] = "reply_topic",
	    [KREQ__WHY_REPLY_PARTITION] = "reply_partition",
	    [KREQ__WHY_UNKNOWN_METHOD] = "unknown_method",
	    [KREQ__WHY_DENIED] = "denied",
	    [KREQ__WHY_CONFLICT] = "conflict",
	    [KREQ__WHY_STORED] = "stored",
	    [KREQ__WHY_DUPLICATE] = "duplicate",
	    [KREQ__WHY_JOINERS_FULL] = "joiners_full",
	    [KREQ__WHY_IN_FLIGHT_FULL] = "in_flight_full",
	    [KREQ__WHY_JOINED] = "joined",
	    [KREQ__WHY_RATE_LIMITED] = "rate_limited",
	    [KREQ__WHY_DEADLINE] = "deadline",
	    [KREQ__WHY_RUN] = "run",
	    [KREQ__WHY_DEADLINE_TOO_FAR] = "deadline_too_far",
	    [KREQ__WHY_TOO_OLD] = "too_old",
	    [KREQ__WHY_POISON] = "poison",
	};
	return why > 0 && why <= KREQ__WHY_POISON ? names[why] : "?";
}
