/*
 * wheel.c — hierarchical timing wheel: 4 levels x 256 slots, 1 ms ticks.
 *
 * Why it is built this way:
 *  - Level L slot i holds timers whose expiry, shifted right by 8*L bits,
 *    ends in i; level 0 spans 256 ms, level 3 reaches 2^32 ms (49.7 days).
 *    Farther deadlines are clamped into the top level and re-placed when
 *    their slot is reached, so any int64 deadline is accepted.
 *  - Arm and cancel are O(1): a node is linked into a circular list headed by
 *    a sentinel per slot, and a 256-bit occupancy bitmap per level is kept
 *    in step (cancel clears the bit when the slot empties, which it sees
 *    from the node's neighbours: nodes are 24 bytes, links and expiry).
 *  - Expiry is exact: when the clock reaches a level boundary the due slot
 *    of the next level is cascaded (its nodes re-placed relative to the new
 *    clock), so a level-0 slot only ever holds nodes expiring at exactly the
 *    tick that processes it: never early, never late relative to the calls.
 *  - Large jumps of now cost nothing per millisecond: the bitmaps give the
 *    next tick at which anything happens (a level-0 slot or a non-empty slot
 *    to cascade), and the clock jumps straight there (next_event()).
 *    Empty slots are never visited. A jump beyond the whole span (49.7 days,
 *    e.g. after a suspend) re-places every node once instead (rebuild()).
 *  - A deadline already behind the wheel's clock goes on an `overdue` list
 *    that the next kreq__wheel_expire() returns first, whatever its now.
 *  - One mutex serialises arm/cancel/expire; critical sections are a few
 *    pointer writes (expire pops at most `max` nodes per call).
 *
 * Times are monotonic milliseconds (non-negative, far from INT64_MAX); an
 * expiry of INT64_MAX never fires (kreq__wheel_expire() treats a now of
 * INT64_MAX as INT64_MAX - 1), so it can stand for "no deadline".
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "client/wheel.h"
#include "common/internal.h"

#define LEVELS    4
#define SLOT_BITS 8
#define SLOTS     (1u << SLOT_BITS)
#define WORDS     (SLOTS / 64)
#define OVERDUE   (LEVELS * SLOTS) /* index of the overdue list head */
#define SPAN      ((uint64_t)1 << (LEVELS * SLOT_BITS))

typedef kreq__timer_node_t node_t;

struct kreq__wheel {
	pthread_mutex_t mu;
	int64_t clk;          /* every tick < clk has been processed */
	_Atomic size_t count; /* armed nodes; written under mu */
	int64_t overdue_min;  /* lower bound of the overdue list's expiries */
	int64_t next_cache;   /* kreq__wheel_next_expiry() if next_valid */
	bool next_valid;
	bool next_bound; /* next_cache is a lower bound, not a node's expiry */
	uint64_t bitmap[LEVELS][WORDS];
	node_t heads[LEVELS * SLOTS + 1];
};

/* ---- lists and bitmaps ------------------------------------------------- */

static bool list_empty(const node_t *head)
{
	return head->next == head;
}

static void list_init(node_t *head)
{
	head->next = head->prev = head;
}

static void list_add_tail(node_t *head, node_t *n)
{
	n->prev = head->prev;
	n->next = head;
	head->prev->next = n;
	head->prev = n;
}

static void list_del(node_t *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	n->next = n->prev = NULL;
}

static void bit_set(kreq__wheel_t *w, uint32_t slot)
{
	w->bitmap[slot / SLOTS][(slot % SLOTS) / 64] |= UINT64_C(1) << (slot % 64);
}

static void bit_clear(kreq__wheel_t *w, uint32_t slot)
{
	w->bitmap[slot / SLOTS][(slot % SLOTS) / 64] &= ~(UINT64_C(1) << (slot % 64));
}

/* First set bit of a level's bitmap at or after start, circularly; -1 if
 * none. */
static int find_circ(const uint64_t bm[WORDS], unsigned start)
{
	unsigned wi = start / 64;
	uint64_t x = bm[wi] & (~UINT64_C(0) << (start % 64));
	for (unsigned i = 0; i <= WORDS; i++) {
		if (x != 0)
			return (int)(wi * 64 + (unsigned)__builtin_ctzll(x));
		wi = (wi + 1) % WORDS;
		x = bm[wi];
	}
	return -1;
}

static void set_count(kreq__wheel_t *w, size_t n)
{
	atomic_store_explicit(&w->count, n, memory_order_relaxed);
}

static size_t get_count(kreq__wheel_t *w)
{
	return atomic_load_explicit(&w->count, memory_order_relaxed);
}

/* ---- placement --------------------------------------------------------- */

/* Level for a distance of delta ticks (< SPAN). */
static unsigned level_of(uint64_t delta)
{
	if (delta < SLOTS)
		return 0;
	return (unsigned)(63 - __builtin_clzll(delta)) / SLOT_BITS;
}

/* Links node into the slot for its expiry, relative to the wheel's clock. */
static void place(kreq__wheel_t *w, node_t *n)
{
	if (n->expires_ms < w->clk) {
		if (list_empty(&w->heads[OVERDUE]) || n->expires_ms < w->overdue_min)
			w->overdue_min = n->expires_ms;
		list_add_tail(&w->heads[OVERDUE], n);
		return;
	}
	uint64_t e = (uint64_t)n->expires_ms;
	uint64_t delta = e - (uint64_t)w->clk;
	if (delta >= SPAN) { /* beyond the top level: clamp, re-placed later */
		delta = SPAN - 1;
		e = (uint64_t)w->clk + delta;
	}
	unsigned level = level_of(delta);
	uint32_t slot = level * SLOTS + (uint32_t)((e >> (level * SLOT_BITS)) % SLOTS);
	list_add_tail(&w->heads[slot], n);
	bit_set(w, slot);
}

/* Unlinks an armed node, keeping the bitmap in step. Nodes do not record
 * their slot (a pending call's record is 4 bytes smaller): the slot empties
 * exactly when the node's two neighbours are one and the same, its head
 * sentinel, whose index in heads[] is the slot. */
static void unlink_node(kreq__wheel_t *w, node_t *n)
{
	node_t *prev = n->prev;
	bool last = prev == n->next;
	list_del(n);
	if (last && prev != &w->heads[OVERDUE])
		bit_clear(w, (uint32_t)(prev - w->heads));
	set_count(w, get_count(w) - 1);
}

/* ---- the clock --------------------------------------------------------- */

/* Ticks from clk to the next cascade of a non-empty slot of level L >= 1,
 * and its slot in *slot; false if the level is empty. */
static bool level_event(const kreq__wheel_t *w, unsigned level, uint64_t *dist, uint32_t *slot)
{
	unsigned shift = level * SLOT_BITS;
	uint64_t c = (uint64_t)w->clk;
	uint64_t base = c >> shift;
	uint64_t k0 = (c & (((uint64_t)1 << shift) - 1)) == 0 ? 0 : 1;
	unsigned start = (unsigned)((base + k0) % SLOTS);
	int j = find_circ(w->bitmap[level], start);
	if (j < 0)
		return false;
	uint64_t k = k0 + (((unsigned)j - start) % SLOTS);
	*dist = ((base + k) << shift) - c;
	*slot = level * SLOTS + (uint32_t)j;
	return true;
}

/* Ticks from clk to the next level-0 slot that fires; false if empty. */
static bool level0_event(const kreq__wheel_t *w, uint64_t *dist)
{
	unsigned i0 = (unsigned)((uint64_t)w->clk % SLOTS);
	int j = find_circ(w->bitmap[0], i0);
	if (j < 0)
		return false;
	*dist = ((unsigned)j - i0) % SLOTS;
	return true;
}

/* Ticks from clk to the next tick at which anything happens (a slot fires
 * or a non-empty slot cascades); false if no node is in the levels. */
static bool next_event(const kreq__wheel_t *w, uint64_t *dist)
{
	*dist = UINT64_MAX; /* unread while !any; set for gcc -O3's flow analysis */
	bool any = level0_event(w, dist);
	for (unsigned l = 1; l < LEVELS; l++) {
		uint64_t d;
		uint32_t slot;
		if (level_event(w, l, &d, &slot) && (!any || d < *dist)) {
			*dist = d;
			any = true;
		}
	}
	return any;
}

/* Re-places the nodes of every slot due at clk (a level boundary). */
static void cascade(kreq__wheel_t *w)
{
	uint64_t c = (uint64_t)w->clk;
	for (unsigned l = 1; l < LEVELS; l++) {
		unsigned shift = l * SLOT_BITS;
		if ((c & (((uint64_t)1 << shift) - 1)) != 0)
			break;
		uint32_t slot = l * SLOTS + (uint32_t)((c >> shift) % SLOTS);
		node_t *head = &w->heads[slot];
		node_t *n = head->next;
		list_init(head);
		bit_clear(w, slot);
		while (n != head) {
			node_t *next = n->next;
			place(w, n);
			n = next;
		}
	}
}

/* Moves up to max nodes of list head into out; returns how many. */
static size_t pop_list(kreq__wheel_t *w, node_t *head, node_t **out, size_t max)
{
	size_t n = 0;
	while (n < max && !list_empty(head)) {
		node_t *node = head->next;
		unlink_node(w, node);
		out[n++] = node;
	}
	return n;
}

/* ---- public ------------------------------------------------------------ */

kreq__wheel_t *kreq__wheel_new(int64_t now_ms)
{
	kreq__wheel_t *w = malloc(sizeof(*w));
	if (w == NULL)
		return NULL;
	memset(w, 0, sizeof(*w));
	pthread_mutex_init(&w->mu, NULL);
	w->clk = now_ms;
	atomic_init(&w->count, 0);
	for (size_t i = 0; i < KREQ__ARRAY_LEN(w->heads); i++)
		list_init(&w->heads[i]);
	return w;
}

void kreq__wheel_destroy(kreq__wheel_t *w)
{
	if (w == NULL)
		return;
	pthread_mutex_destroy(&w->mu);
	free(w);
}

void kreq__wheel_arm(kreq__wheel_t *w, kreq__timer_node_t *node, int64_t expires_ms)
{
	pthread_mutex_lock(&w->mu);
	if (node->next != NULL) { /* armed: move it */
		unlink_node(w, node);
		w->next_valid = false;
	}
	node->expires_ms = expires_ms;
	place(w, node);
	set_count(w, get_count(w) + 1);
	if (w->next_valid && expires_ms < w->next_cache) {
		w->next_cache = expires_ms;
		w->next_bound = false;
	}
	pthread_mutex_unlock(&w->mu);
}

bool kreq__wheel_cancel(kreq__wheel_t *w, kreq__timer_node_t *node)
{
	pthread_mutex_lock(&w->mu);
	bool armed = node->next != NULL;
	if (armed) {
		unlink_node(w, node);
		if (node->expires_ms <= w->next_cache || w->next_bound)
			w->next_valid = false;
	}
	pthread_mutex_unlock(&w->mu);
	return armed;
}

/* Fires level-0 slots and cascades up to now; the expire loop body. */
static size_t advance(kreq__wheel_t *w, int64_t now_ms, kreq__timer_node_t **out, size_t max)
{
	size_t n = 0;
	uint64_t dist;
	while (n < max && w->clk <= now_ms && next_event(w, &dist)) {
		if (dist > (uint64_t)now_ms - (uint64_t)w->clk)
			break; /* next event after now */
		w->clk = (int64_t)((uint64_t)w->clk + dist);
		if ((uint64_t)w->clk % SLOTS == 0)
			cascade(w);
		node_t *head = &w->heads[(uint64_t)w->clk % SLOTS];
		n += pop_list(w, head, out + n, max - n);
		if (!list_empty(head))
			return n; /* out is full: resume at this tick */
		w->clk++;
	}
	if (n < max && w->clk <= now_ms)
		w->clk = now_ms + 1; /* nothing else is due up to now */
	return n;
}

/* A jump of the clock beyond the wheel's span: re-place every node relative
 * to now + 1 in one pass (the due ones go to the overdue list), instead of
 * visiting the clamped nodes' top-level slot once per 2^32 ms. */
static void rebuild(kreq__wheel_t *w, int64_t now_ms)
{
	node_t all;
	list_init(&all);
	for (uint32_t slot = 0; slot < OVERDUE; slot++) {
		node_t *head = &w->heads[slot];
		if (list_empty(head))
			continue;
		all.prev->next = head->next; /* splice head's chain onto all */
		head->next->prev = all.prev;
		head->prev->next = &all;
		all.prev = head->prev;
		list_init(head);
	}
	memset(w->bitmap, 0, sizeof(w->bitmap));
	w->clk = now_ms + 1;
	node_t *n = all.next;
	while (n != &all) {
		node_t *next = n->next;
		place(w, n);
		n = next;
	}
}

size_t kreq__wheel_expire(kreq__wheel_t *w, int64_t now_ms, kreq__timer_node_t **out, size_t max)
{
	if (now_ms == INT64_MAX) /* the clock cannot pass it: INT64_MAX is "never" */
		now_ms = INT64_MAX - 1;
	pthread_mutex_lock(&w->mu);
	if (w->clk <= now_ms && (uint64_t)now_ms - (uint64_t)w->clk >= SPAN)
		rebuild(w, now_ms);
	size_t n = pop_list(w, &w->heads[OVERDUE], out, max);
	if (n < max && w->clk <= now_ms)
		n += advance(w, now_ms, out + n, max - n);
	w->next_valid = false;
	pthread_mutex_unlock(&w->mu);
	return n;
}

/* Earliest expiry in the first non-empty slot of level L (cascading at
 * dist ticks from clk): exact for nodes in the slot's range; clamped nodes
 * count as the cascade time, a lower bound (then *bound is set). */
static int64_t slot_min(const kreq__wheel_t *w, unsigned level, uint32_t slot, uint64_t dist,
                        bool *bound)
{
	unsigned shift = level * SLOT_BITS;
	uint64_t t = (uint64_t)w->clk + dist;
	int64_t best = INT64_MAX;
	const node_t *head = &w->heads[slot];
	for (const node_t *n = head->next; n != head; n = n->next) {
		bool clamped = ((uint64_t)n->expires_ms >> shift) != (t >> shift);
		int64_t v = clamped ? (int64_t)t : n->expires_ms;
		if (v < best) {
			best = v;
			*bound = clamped;
		}
	}
	return best;
}

/* Earliest expiry; *bound set if it is only a lower bound (overdue list,
 * clamped node). */
static int64_t compute_next(const kreq__wheel_t *w, bool *bound)
{
	*bound = false;
	if (!list_empty(&w->heads[OVERDUE])) {
		*bound = true;
		return w->overdue_min;
	}
	int64_t best = INT64_MAX;
	uint64_t d;
	if (level0_event(w, &d))
		best = (int64_t)((uint64_t)w->clk + d);
	for (unsigned l = 1; l < LEVELS; l++) {
		uint32_t slot;
		if (!level_event(w, l, &d, &slot) || (int64_t)((uint64_t)w->clk + d) >= best)
			continue;
		bool b = false;
		int64_t v = slot_min(w, l, slot, d, &b);
		if (v < best) {
			best = v;
			*bound = b;
		}
	}
	return best;
}

int64_t kreq__wheel_next_expiry(kreq__wheel_t *w)
{
	pthread_mutex_lock(&w->mu);
	if (!w->next_valid) {
		w->next_cache = compute_next(w, &w->next_bound);
		w->next_valid = true;
	}
	int64_t next = w->next_cache;
	pthread_mutex_unlock(&w->mu);
	return next;
}

size_t kreq__wheel_count(kreq__wheel_t *w)
{
	return get_count(w);
}
