/*
 * future.c — one-shot futures: exactly-once settlement, lock-free reads.
 *
 * Why it is built this way:
 *
 * One 32-bit atomic word (`state`) carries everything that must change
 * together: the phase (PENDING -> SETTLING -> [RESULT ->] DONE), the
 * callback registration bits, the waiter bits, the result flags and the
 * error code (a KREQ_E* code fits in its top byte, published with the rest). Every
 * race in the contract (settle vs settle, settle vs cancel, settle vs
 * callback registration, settle vs waiter going to sleep) is decided by the
 * total order of read-modify-writes on that single word, so there is no
 * mutex and no condition variable anywhere, and a done future is read with
 * one acquire load.
 *
 *  - Settle: a CAS PENDING -> SETTLING elects the one settler; losers free
 *    the payload they were handed and return false. The winner writes the
 *    result fields (plain stores: nobody reads them before publication), then
 *    publishes with one CAS: straight to DONE if no callback is registered,
 *    else to RESULT, runs the callback, then moves to DONE. So a waiter never
 *    returns before a callback registered ahead of settlement has finished.
 *    Common case without callback: two atomic RMWs per settle.
 *
 *  - Callback registration: CB_CLAIMED (fetch_or) admits one registrant
 *    (the second gets KREQ_EEXIST); it writes cb/opaque, then sets CB_SET.
 *    Whoever comes second on the word runs the callback: if the settler's
 *    publish saw CB_SET it runs it on the settling thread; if the
 *    registrant's CB_SET (or CB_CLAIMED) RMW saw the phase already published,
 *    the registrant runs it on its own thread. Exactly one of the two orders
 *    exists, so the callback runs exactly once.
 *
 *  - Waiting: a waiter sets WAITERS and sleeps on the state word with
 *    futex(FUTEX_WAIT_BITSET) and an absolute CLOCK_MONOTONIC deadline; the
 *    settler issues FUTEX_WAKE only if WAITERS was set when it published
 *    DONE, so futures nobody waits on never enter the kernel.
 *    kreq_future_wait_any() marks each future of its set with ANY_WAITER and
 *    sleeps on one process-wide generation word; only settles of marked
 *    futures bump it and wake, so unrelated settles pay nothing.
 *    kreq_future_wait_all() is a sequence of single waits with one deadline.
 *
 *  - Memory: one malloc per future (struct + the owner's `extra` area,
 *    16-byte aligned), and the struct is 48 bytes, because a client keeps
 *    one per pending call (a million of them must fit in about 160 MB,
 *    docs/PERFORMANCE.md): one `aux` pointer holds the payload, or the
 *    copied error message (allocated only when a message is given, i.e. on
 *    the error path), or, when a settle brings both, a small block holding
 *    the two; state bits say which. The error code lives in the state word,
 *    the payload length in 32 bits (replies are at most 256 MiB), and the
 *    owner's fini and cancel hook behind one shared pointer. References are
 *    an atomic counter; the release of the last one skips the RMW when it
 *    observes itself as the only holder.
 *
 * A settler must hold a reference for the duration of kreq__future_settle()
 * (the wake touches the future's memory after publication).
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "client/future_int.h"
#include "common/internal.h"

/* state word layout */
#define PH_MASK     0x3u /* phase */
#define PH_PENDING  0x0u
#define PH_SETTLING 0x1u /* one settler elected, writing the result */
#define PH_RESULT   0x2u /* result published, callback running on settler */
#define PH_DONE     0x3u /* settled and callback (if registered before) done */
#define WAITERS     0x4u /* someone sleeps (or is about to) on this word */
#define ANY_WAITER  0x8u /* part of a kreq_future_wait_any() set */
#define CB_CLAIMED  0x10u
#define CB_SET      0x20u
#define F_DEDUP     0x40u
#define AUX_PAYLOAD 0x80u                   /* aux is the payload */
#define AUX_MSG     0x100u                  /* aux is the error message */
#define AUX_BOTH    (AUX_PAYLOAD | AUX_MSG) /* aux is a both_t */
#define F_MSG_OOM   0x200u                  /* message lost to OOM: errstr is kreq_strerror(err) */
#define F_FINI      0x400u                  /* the owner has a fini: call it when freeing */
#define ERR_SHIFT   24                      /* top byte: the error code, as an int8_t */

/* State bits holding err; and err from a published state. */
#define ERR_BITS(err) ((uint32_t)(uint8_t)(int8_t)(err) << ERR_SHIFT)
#define ERR_OF(s)     ((int)(int8_t)(uint8_t)((s) >> ERR_SHIFT))

#define ERRMSG_MAX 255

struct kreq_future_s {
	_Atomic uint32_t state; /* also holds the error code (ERR_BITS) */
	_Atomic uint32_t refs;
	int32_t status;
	uint32_t payload_len;
	void *aux; /* payload, message or both_t, per the AUX_* bits */
	kreq_future_cb_t *cb;
	void *cb_opaque;
	const kreq__future_owner_t *owner;
	alignas(16) unsigned char extra[];
};

_Static_assert(offsetof(struct kreq_future_s, extra) % 16 == 0, "extra must be 16-aligned");
_Static_assert(sizeof(struct kreq_future_s) <= 48, "keep the future small");
_Static_assert(KREQ_OK == 0 && (int8_t)KREQ_ECONFLICT == KREQ_ECONFLICT, "codes fit a byte");

/* A payload and a message together (rare: a rejection with a body). */
typedef struct both {
	void *payload;
	char msg[];
} both_t;

/* Bumped (and woken) by settles of futures marked ANY_WAITER. */
static _Atomic uint32_t any_gen;

/* ---- futex ------------------------------------------------------------- */

/* Sleeps while *word == val, until woken or the absolute CLOCK_MONOTONIC
 * deadline (NULL: none). Returns false only on timeout. */
static bool futex_wait(_Atomic uint32_t *word, uint32_t val, const struct timespec *deadline)
{
	long rc = syscall(SYS_futex, (void *)word, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, val,
	                  deadline, NULL, FUTEX_BITSET_MATCH_ANY);
	return !(rc == -1 && errno == ETIMEDOUT);
}

static void futex_wake_all(_Atomic uint32_t *word)
{
	syscall(SYS_futex, (void *)word, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, INT_MAX, NULL, NULL, 0);
}

/* Absolute deadline for timeout_ms (> 0) on CLOCK_MONOTONIC. */
static struct timespec deadline_in(int timeout_ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += timeout_ms / 1000;
	ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

static bool deadline_passed(const struct timespec *dl)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec > dl->tv_sec || (now.tv_sec == dl->tv_sec && now.tv_nsec >= dl->tv_nsec);
}

/* ---- life cycle -------------------------------------------------------- */

kreq_future_t *kreq__future_new(size_t extra, const kreq__future_owner_t *owner)
{
	if (extra > SIZE_MAX - sizeof(struct kreq_future_s))
		return NULL;
	struct kreq_future_s *f = malloc(sizeof(*f) + extra);
	if (f == NULL)
		return NULL;
	atomic_init(&f->state, PH_PENDING | (owner != NULL && owner->fini != NULL ? F_FINI : 0));
	atomic_init(&f->refs, 1);
	f->status = 0;
	f->payload_len = 0;
	f->aux = NULL;
	f->cb = NULL;
	f->cb_opaque = NULL;
	f->owner = owner;
	memset(f->extra, 0, extra);
	return f;
}

const kreq__future_owner_t *kreq__future_owner(const kreq_future_t *f)
{
	return f->owner;
}

void *kreq__future_extra(kreq_future_t *f)
{
	return f->extra;
}

size_t kreq__future_extra_offset(void)
{
	return offsetof(struct kreq_future_s, extra);
}

kreq_future_t *kreq__future_from_extra(void *extra)
{
	return (kreq_future_t *)((unsigned char *)extra - offsetof(struct kreq_future_s, extra));
}

kreq_future_t *kreq_future_retain(kreq_future_t *f)
{
	if (f != NULL)
		atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
	return f;
}

static void future_free(kreq_future_t *f)
{
	uint32_t s = atomic_load_explicit(&f->state, memory_order_relaxed);
	if (s & F_FINI)
		f->owner->fini(f);
	if ((s & AUX_BOTH) == AUX_BOTH)
		free(((both_t *)f->aux)->payload);
	free(f->aux);
	free(f);
}

void kreq_future_release(kreq_future_t *f)
{
	if (f == NULL)
		return;
	/* Sole holder: nobody can take a new reference, skip the RMW. */
	if (atomic_load_explicit(&f->refs, memory_order_acquire) != 1 &&
	    atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) != 1)
		return;
	future_free(f);
}

/* ---- settlement -------------------------------------------------------- */

/* Length of msg to keep: at most ERRMSG_MAX bytes, cut on a UTF-8
 * character boundary; 0 for NULL. */
static size_t msg_len(const char *msg)
{
	if (msg == NULL)
		return 0;
	size_t n = strnlen(msg, ERRMSG_MAX + 1);
	if (n > ERRMSG_MAX) {
		n = ERRMSG_MAX;
		while (n > 0 && ((unsigned char)msg[n] & 0xC0) == 0x80)
			n--;
	}
	return n;
}

/* Stores payload and a copy of msg in f->aux; returns the AUX_* and
 * F_MSG_OOM bits describing it. */
static uint32_t store_aux(kreq_future_t *f, void *payload, const char *msg)
{
	size_t n = msg_len(msg);
	if (n == 0) {
		f->aux = payload;
		return payload != NULL ? AUX_PAYLOAD : 0;
	}
	char *copy;
	both_t *b = NULL;
	if (payload == NULL)
		copy = malloc(n + 1);
	else if ((b = malloc(sizeof(*b) + n + 1)) != NULL)
		copy = b->msg;
	else
		copy = NULL;
	if (copy == NULL) {
		f->aux = payload;
		return F_MSG_OOM | (payload != NULL ? AUX_PAYLOAD : 0);
	}
	memcpy(copy, msg, n);
	copy[n] = '\0';
	if (b == NULL) {
		f->aux = copy;
		return AUX_MSG;
	}
	b->payload = payload;
	f->aux = b;
	return AUX_BOTH;
}

/* Wakes whoever announced itself on the word we just moved to DONE. */
static void wake_after_done(kreq_future_t *f, uint32_t prev)
{
	if (prev & WAITERS)
		futex_wake_all(&f->state);
	if (prev & ANY_WAITER) {
		atomic_fetch_add_explicit(&any_gen, 1, memory_order_release);
		futex_wake_all(&any_gen);
	}
}

/* Publishes the written result: to DONE, or to RESULT when a callback is
 * registered (returned true: the caller runs it, then calls finish_done). */
static bool publish(kreq_future_t *f, uint32_t flags, uint32_t *prev)
{
	uint32_t s = atomic_load_explicit(&f->state, memory_order_relaxed);
	uint32_t next;
	do {
		uint32_t ph = (s & CB_SET) ? PH_RESULT : PH_DONE;
		next = (s & ~PH_MASK) | ph | flags;
	} while (!atomic_compare_exchange_weak_explicit(&f->state, &s, next, memory_order_acq_rel,
	                                                memory_order_relaxed));
	*prev = s;
	return (next & PH_MASK) == PH_RESULT;
}

static void finish_done(kreq_future_t *f)
{
	/* RESULT -> DONE: only the settler changes the phase now. */
	uint32_t prev = atomic_fetch_add_explicit(&f->state, 1, memory_order_acq_rel);
	wake_after_done(f, prev);
}

bool kreq__future_settle(kreq_future_t *f, int err, int32_t status, void *payload,
                         size_t payload_len, bool from_dedup, const char *errmsg)
{
	uint32_t s = atomic_load_explicit(&f->state, memory_order_relaxed);
	do {
		if ((s & PH_MASK) != PH_PENDING) {
			free(payload);
			return false;
		}
	} while (!atomic_compare_exchange_weak_explicit(
	    &f->state, &s, s | PH_SETTLING, memory_order_acquire, memory_order_relaxed));
	if (payload != NULL && payload_len > UINT32_MAX) { /* not from a Kafka record */
		free(payload);
		payload = NULL;
		err = KREQ_EOVERSIZE;
	}
	f->status = status;
	f->payload_len = payload != NULL ? (uint32_t)payload_len : 0;
	uint32_t flags = store_aux(f, payload, errmsg) | (from_dedup ? F_DEDUP : 0) | ERR_BITS(err);
	uint32_t prev;
	if (publish(f, flags, &prev)) {
		f->cb(f, f->cb_opaque);
		finish_done(f);
	} else {
		wake_after_done(f, prev);
	}
	return true;
}

/* ---- callback ---------------------------------------------------------- */

static bool published(uint32_t s)
{
	return (s & PH_MASK) >= PH_RESULT;
}

int kreq_future_on_done(kreq_future_t *f, kreq_future_cb_t *cb, void *opaque)
{
	if (f == NULL || cb == NULL)
		return KREQ_EINVAL;
	uint32_t s = atomic_fetch_or_explicit(&f->state, CB_CLAIMED, memory_order_acquire);
	if (s & CB_CLAIMED)
		return KREQ_EEXIST;
	if (!published(s)) {
		f->cb = cb;
		f->cb_opaque = opaque;
		s = atomic_fetch_or_explicit(&f->state, CB_SET, memory_order_acq_rel);
		if (!published(s))
			return KREQ_OK; /* the settler will run it */
	}
	cb(f, opaque); /* already settled: run it here */
	return KREQ_OK;
}

/* ---- cancel ------------------------------------------------------------ */

int kreq_future_cancel(kreq_future_t *f)
{
	if (f == NULL)
		return KREQ_EINVAL;
	if ((atomic_load_explicit(&f->state, memory_order_acquire) & PH_MASK) != PH_PENDING)
		return KREQ_ESTATE;
	if (f->owner != NULL && f->owner->cancel_hook != NULL)
		return f->owner->cancel_hook(f);
	return kreq__future_settle(f, KREQ_ECANCELED, 0, NULL, 0, false, "cancelled by caller")
	           ? KREQ_OK
	           : KREQ_ESTATE;
}

/* ---- accessors --------------------------------------------------------- */

/* The state of f if its result is readable (published by the settler),
 * else 0 (PH_PENDING). */
static uint32_t readable(const kreq_future_t *f)
{
	if (f == NULL)
		return 0;
	uint32_t s = atomic_load_explicit(&((kreq_future_t *)f)->state, memory_order_acquire);
	return published(s) ? s : 0;
}

bool kreq_future_is_done(const kreq_future_t *f)
{
	if (f == NULL)
		return false;
	uint32_t s = atomic_load_explicit(&((kreq_future_t *)f)->state, memory_order_acquire);
	return (s & PH_MASK) == PH_DONE;
}

int kreq_future_err(const kreq_future_t *f)
{
	if (f == NULL)
		return KREQ_EINVAL;
	uint32_t s = readable(f);
	return s ? ERR_OF(s) : KREQ_ESTATE;
}

int32_t kreq_future_status(const kreq_future_t *f)
{
	return readable(f) ? f->status : 0;
}

const void *kreq_future_payload(const kreq_future_t *f, size_t *len)
{
	uint32_t s = readable(f);
	void *p = NULL;
	if ((s & AUX_BOTH) == AUX_BOTH)
		p = ((const both_t *)f->aux)->payload;
	else if (s & AUX_PAYLOAD)
		p = f->aux;
	if (len != NULL)
		*len = p != NULL ? f->payload_len : 0;
	return p;
}

const char *kreq_future_errstr(const kreq_future_t *f)
{
	uint32_t s = readable(f);
	if ((s & AUX_BOTH) == AUX_BOTH)
		return ((const both_t *)f->aux)->msg;
	if (s & AUX_MSG)
		return f->aux;
	if (s & F_MSG_OOM)
		return kreq_strerror(ERR_OF(s));
	return "";
}

bool kreq_future_from_dedup(const kreq_future_t *f)
{
	return (readable(f) & F_DEDUP) != 0;
}

/* ---- waiting ----------------------------------------------------------- */

/* Waits for DONE until the deadline (NULL: none). */
static bool wait_done(kreq_future_t *f, const struct timespec *dl)
{
	uint32_t s = atomic_load_explicit(&f->state, memory_order_acquire);
	for (;;) {
		if ((s & PH_MASK) == PH_DONE)
			return true;
		if (!(s & WAITERS)) {
			s = atomic_fetch_or_explicit(&f->state, WAITERS, memory_order_acquire) |
			    WAITERS;
			continue;
		}
		bool woke = futex_wait(&f->state, s, dl);
		s = atomic_load_explicit(&f->state, memory_order_acquire);
		if (!woke && (s & PH_MASK) != PH_DONE)
			return false;
	}
}

int kreq_future_wait(kreq_future_t *f, int timeout_ms)
{
	if (f == NULL)
		return KREQ_EINVAL;
	if (kreq_future_is_done(f))
		return KREQ_OK;
	if (timeout_ms == 0)
		return KREQ_ETIMEDOUT;
	struct timespec dl;
	if (timeout_ms > 0)
		dl = deadline_in(timeout_ms);
	return wait_done(f, timeout_ms > 0 ? &dl : NULL) ? KREQ_OK : KREQ_ETIMEDOUT;
}

static bool args_ok(kreq_future_t *const *fs, size_t n)
{
	if (n > 0 && fs == NULL)
		return false;
	for (size_t i = 0; i < n; i++)
		if (fs[i] == NULL)
			return false;
	return true;
}

int kreq_future_wait_all(kreq_future_t *const *fs, size_t n, int timeout_ms)
{
	if (!args_ok(fs, n))
		return KREQ_EINVAL;
	struct timespec dl;
	if (timeout_ms > 0)
		dl = deadline_in(timeout_ms);
	for (size_t i = 0; i < n; i++) {
		if (kreq_future_is_done(fs[i]))
			continue;
		if (timeout_ms == 0 || !wait_done(fs[i], timeout_ms > 0 ? &dl : NULL))
			return KREQ_ETIMEDOUT;
	}
	return KREQ_OK;
}

/* Lowest index of a done future, or n. With mark, flags each pending one
 * ANY_WAITER first so that its settle bumps any_gen. */
static size_t scan_any(kreq_future_t *const *fs, size_t n, bool mark)
{
	for (size_t i = 0; i < n; i++) {
		uint32_t s =
		    mark ? atomic_fetch_or_explicit(&fs[i]->state, ANY_WAITER, memory_order_acq_rel)
		         : atomic_load_explicit(&fs[i]->state, memory_order_acquire);
		if ((s & PH_MASK) == PH_DONE)
			return i;
	}
	return n;
}

int kreq_future_wait_any(kreq_future_t *const *fs, size_t n, int timeout_ms, size_t *index)
{
	if (n == 0 || !args_ok(fs, n))
		return KREQ_EINVAL;
	size_t i = scan_any(fs, n, false);
	if (i == n && timeout_ms != 0) {
		struct timespec dl;
		if (timeout_ms > 0)
			dl = deadline_in(timeout_ms);
		for (;;) {
			/* Read the generation before marking: a settle that misses
			 * our mark is seen by the scan, one that sees it bumps. */
			uint32_t gen = atomic_load_explicit(&any_gen, memory_order_acquire);
			if ((i = scan_any(fs, n, true)) < n)
				break;
			if (timeout_ms > 0 && deadline_passed(&dl))
				break;
			futex_wait(&any_gen, gen, timeout_ms > 0 ? &dl : NULL);
		}
	}
	if (i == n)
		return KREQ_ETIMEDOUT;
	if (index != NULL)
		*index = i;
	return KREQ_OK;
}
