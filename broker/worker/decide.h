/*
 * decide.h — what the worker does with one consumed record, as one pure
 * function of facts the loop has gathered (no Kafka, no clock, no state).
 *
 * The loop (record.c kreq__handle_record) computes a kreq__facts_t (did the
 * envelope verify, which kind, is the record on its key's partition, is
 * the reply topic allowed, is there a handler, what the dedup store holds
 * for the key, the key's rate-limit tokens, the budget left, ...), calls
 * kreq__decide() and executes the kreq__decision_t it returns. Every rule
 * that makes replies exactly-once and bounded lives here, in one order,
 * and tests/unit/test_decide.c checks each branch without a Kafka broker.
 *
 * The order of the checks (first match wins):
 *   1. not verified                      -> DROP (the reply topic is not trusted)
 *   2. Cancel                            -> CANCEL; other non-Request -> DROP
 *   3. outside the replay window         -> DROP (deadline beyond worker.max.deadline.ms,
 *                                           issued before worker.max.request.age.ms)
 *      wrong partition / wrong service   -> DROP (a replay moved elsewhere: never answered)
 *   4. reply topic not allowed           -> DROP
 *   5. reply partition not on the topic  -> DROP (no partition to answer on)
 *   6. no handler                        -> ANSWER unknown method (1)
 *   7. key may not call the method       -> ANSWER denied (5)
 *   8. dedup: same key, other request    -> ANSWER conflict (6)
 *             stored result              -> SERVE it
 *             running, same corr. id     -> DROP (answered once, by the running one)
 *             running, joiners full or
 *             worker at max.in.flight    -> DROP (a retry finds the stored result)
 *             running                    -> JOIN
 *   9. rate: no token for the key        -> ANSWER overloaded (7)
 *  10. budget below worker.min.budget    -> ANSWER deadline (2)
 *  11.                                   -> DISPATCH (the loop takes the token)
 * Between 8 and 9: started worker.poison.max.attempts times without a
 * result (facts.attempts)               -> POISON: status 10, stored, dead-lettered
 *   (after dedup: a request with a stored result is served it, never counted)
 * Rate limiting comes after dedup so a replay (hit or join) never drains
 * a key's bucket; ACL before dedup, so a key that lost a method does not
 * read the stored results of its calls.
 */
#ifndef KREQ_BROKER_DECIDE_H
#define KREQ_BROKER_DECIDE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What the loop does. */
typedef enum {
	KREQ__ACT_DROP = 1, /* count and drop: no reply */
	KREQ__ACT_CANCEL,   /* a Cancel: flag the matching request */
	KREQ__ACT_ANSWER,   /* reply with .status, run nothing */
	KREQ__ACT_SERVE,    /* reply with the stored result (from_dedup) */
	KREQ__ACT_JOIN,     /* add a reply target to the running request */
	KREQ__ACT_DISPATCH, /* take a rate token, run the handler */
	KREQ__ACT_POISON    /* answer status 10, store it, dead-letter the request */
} kreq__action_t;

/* Why (one per branch above; the loop maps it to a metric and a message). */
typedef enum {
	KREQ__WHY_NOT_VERIFIED = 1,
	KREQ__WHY_CANCEL,
	KREQ__WHY_KIND,
	KREQ__WHY_WRONG_PARTITION,
	KREQ__WHY_WRONG_SERVICE,
	KREQ__WHY_REPLY_TOPIC,
	KREQ__WHY_REPLY_PARTITION,
	KREQ__WHY_UNKNOWN_METHOD,
	KREQ__WHY_DENIED,
	KREQ__WHY_CONFLICT,
	KREQ__WHY_STORED,
	KREQ__WHY_DUPLICATE,      /* running: this correlation id already gets the reply */
	KREQ__WHY_JOINERS_FULL,   /* running: KREQ__JOINERS_MAX joiners already */
	KREQ__WHY_IN_FLIGHT_FULL, /* running: the worker is at worker.max.in.flight */
	KREQ__WHY_JOINED,
	KREQ__WHY_RATE_LIMITED,
	KREQ__WHY_DEADLINE,
	KREQ__WHY_RUN,
	KREQ__WHY_DEADLINE_TOO_FAR, /* deadline beyond worker.max.deadline.ms from now */
	KREQ__WHY_TOO_OLD,          /* issued before worker.max.request.age.ms */
	KREQ__WHY_POISON            /* started max_attempts times, never finished */
} kreq__why_t;

/* What the dedup store holds for the record's key. */
typedef enum {
	KREQ__FOUND_NONE = 0, /* nothing (or an expired result, removed by the loop) */
	KREQ__FOUND_RUNNING,  /* a request with this key is queued or running */
	KREQ__FOUND_DONE      /* a stored, unexpired result */
} kreq__found_t;

/* Joiners one running request accepts (replays of it beyond: dropped). */
#define KREQ__JOINERS_MAX 16

typedef struct kreq__facts {
	bool verified;           /* the envelope opened (size, signature, key, skew, deadline) */
	int kind;                /* KREQ__KIND_* of the verified envelope */
	bool deadline_too_far;   /* deadline beyond worker.max.deadline.ms (+ skew) from now */
	bool too_old;            /* issued before worker.max.request.age.ms (+ skew) */
	bool partition_ok;       /* on the partition its idempotency key maps to */
	bool service_ok;         /* the signed destination is this worker's service */
	bool reply_topic_ok;     /* on worker.reply.topic.allow */
	bool reply_partition_ok; /* reply_partition exists on the reply topic */
	bool handler_found;      /* a handler for the method */
	bool key_permitted;      /* the signing key may call the method */
	kreq__found_t found;     /* the dedup store's entry for the key */
	bool digest_match;       /* found: the entry is for this same request */
	bool corr_waiting;       /* RUNNING: this correlation id already awaits the reply */
	uint32_t joiners;        /* RUNNING: targets already joined */
	size_t in_flight;        /* requests and joiners in progress on the worker */
	size_t max_in_flight;    /* worker.max.in.flight */
	bool rate_limit_on;      /* worker.rate.limit.per.key > 0 */
	double tokens;           /* the key's bucket, refilled to now */
	int64_t budget_ms;       /* deadline - now */
	int64_t min_budget_ms;   /* worker.min.budget.ms */
	uint32_t attempts;       /* recorded starts without a result (poison.h) */
	uint32_t max_attempts;   /* worker.poison.max.attempts; 0: not counted */
} kreq__facts_t;

typedef struct kreq__decision {
	kreq__action_t action;
	kreq__why_t why;
	int32_t status; /* ANSWER: the reply status */
} kreq__decision_t;

kreq__decision_t kreq__decide(const kreq__facts_t *f);

/* The name of a why (logs, tests). */
const char *kreq__why_name(kreq__why_t why);

#endif
