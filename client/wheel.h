/*
 * wheel.h — one timer structure for every pending call's expiry.
 *
 * A hierarchical timing wheel with millisecond resolution on the monotonic
 * clock: arm and cancel are O(1) on intrusive nodes embedded in the caller's
 * record (no allocation), expiry is amortised O(1) per timer. One thread
 * (the client's timer/transport thread) calls kreq__wheel_expire(); any
 * thread may arm and cancel (an internal mutex serialises them; critical
 * sections are a few pointer writes). No timer or thread per request.
 */
#ifndef KREQ_WHEEL_H
#define KREQ_WHEEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kreq__timer_node {
	struct kreq__timer_node *next, *prev; /* NULL when not armed */
	int64_t expires_ms;                   /* monotonic ms */
} kreq__timer_node_t;

typedef struct kreq__wheel kreq__wheel_t;

/* New wheel whose clock starts at now_ms (monotonic ms). NULL if OOM. */
kreq__wheel_t *kreq__wheel_new(int64_t now_ms);

/* Frees the wheel; armed nodes are simply forgotten (they belong to the
 * caller). No concurrent use allowed. */
void kreq__wheel_destroy(kreq__wheel_t *w);

/* Arms node (which must not be armed) to expire at expires_ms (monotonic ms;
 * a time in the past expires at the next kreq__wheel_expire()). An armed
 * node is moved; INT64_MAX means never. Nodes start zeroed. */
void kreq__wheel_arm(kreq__wheel_t *w, kreq__timer_node_t *node, int64_t expires_ms);

/* Disarms node. true if it was armed (it will not be returned by expire),
 * false if it was not armed (already expired or never armed). */
bool kreq__wheel_cancel(kreq__wheel_t *w, kreq__timer_node_t *node);

/* Advances the wheel to now_ms and disarms up to max nodes whose time has
 * come (expires_ms <= now_ms), storing them in out; returns how many. Call
 * again while it returns max. Only one thread calls this. */
size_t kreq__wheel_expire(kreq__wheel_t *w, int64_t now_ms, kreq__timer_node_t **out, size_t max);

/* Earliest expiry among armed nodes (an exact value or a lower bound no more
 * than a wheel tick early), or INT64_MAX if none: how long the servicing
 * thread may sleep. Exceptions, both lower bounds: nodes armed more than
 * 2^32 ms (49.7 days) ahead count as the time their top-level slot is
 * re-placed, and nodes already overdue as a time before the wheel's clock. */
int64_t kreq__wheel_next_expiry(kreq__wheel_t *w);

/* Number of armed nodes. */
size_t kreq__wheel_count(kreq__wheel_t *w);

#endif
