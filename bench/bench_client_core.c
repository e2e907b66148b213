/*
 * bench_client_core.c — the client's core data structures beside naive
 * baselines measured in the same run:
 *   - future create + settle + await on one thread, vs a malloc'd
 *     mutex + condition variable future;
 *   - pending table insert / find / remove with N live entries (default one
 *     million), vs a chained hash table under one global mutex (one malloc
 *     per entry); also the reply path (find_retain, then remove of the same
 *     id) and two threads at once;
 *   - timer arm + cancel with N armed timers, vs a binary heap under a mutex
 *     and vs a POSIX timer per request (timer_create/settime/delete);
 *   - memory per pending call, measured with mallinfo2() over N pending
 *     calls built by the client's own code (kreq__call_new(): future, call
 *     record, method, idempotency key and payload in one allocation), each
 *     in the pending table and armed in the timing wheel: the total, and the
 *     figure issue #18 bounds (<= 160 B at 1M): the total less the payload,
 *     method and key bytes (100 + 16 + 16 here).
 *
 * Usage: bench_client_core [rounds] [live-entries]
 * Prints the median ns/op over the rounds and the ratio baseline / kreq.
 */
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/client_int.h"
#include "client/future_int.h"
#include "client/table.h"
#include "client/wheel.h"
#include "common/internal.h"

static volatile uint64_t sink;
static int rounds = 7;
static size_t live = 1000000;

#define REC_SIZE sizeof(kreq__call_t) /* the client's real per-call record */

/* The pending calls of the memory figure: as issue #18 counts them. */
#define MEM_PAYLOAD 100
#define MEM_METHOD  "bench.echo012345" /* 16 bytes */
#define MEM_KEY_LEN 16

static uint64_t rnd(uint64_t *s)
{
	uint64_t z = (*s += UINT64_C(0x9E3779B97F4A7C15));
	z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

static uint8_t (*make_ids(size_t n, uint64_t seed))[16]
{
	uint8_t(*ids)[16] = malloc(n * 16);
	if (ids == NULL)
		abort();
	for (size_t i = 0; i < n; i++) {
		uint64_t a = rnd(&seed), b = rnd(&seed);
		memcpy(ids[i], &a, 8);
		memcpy(ids[i] + 8, &b, 8);
	}
	return ids;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(double), cmp_double);
	return v[n / 2];
}

static void row(const char *what, double kreq, const char *base_name, double base)
{
	if (base > 0)
		printf("%-34s %10.1f   %-34s %10.1f %8.2fx\n", what, kreq, base_name, base,
		       base / kreq);
	else
		printf("%-34s %10.1f\n", what, kreq);
}

/* ---- futures ------------------------------------------------------------ */

typedef struct naive_future {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool done;
	int err;
	int32_t status;
	void *payload;
	size_t payload_len;
	_Alignas(16) unsigned char extra[REC_SIZE];
} naive_future_t;

static naive_future_t *naive_new(void)
{
	naive_future_t *f = calloc(1, sizeof(*f));
	pthread_mutex_init(&f->mu, NULL);
	pthread_cond_init(&f->cv, NULL);
	return f;
}

static void naive_settle(naive_future_t *f, int err)
{
	pthread_mutex_lock(&f->mu);
	if (!f->done) {
		f->done = true;
		f->err = err;
		pthread_cond_broadcast(&f->cv);
	}
	pthread_mutex_unlock(&f->mu);
}

static int naive_wait(naive_future_t *f)
{
	pthread_mutex_lock(&f->mu);
	while (!f->done)
		pthread_cond_wait(&f->cv, &f->mu);
	int err = f->err;
	pthread_mutex_unlock(&f->mu);
	return err;
}

static void naive_free(naive_future_t *f)
{
	pthread_cond_destroy(&f->cv);
	pthread_mutex_destroy(&f->mu);
	free(f);
}

static void count_cb(kreq_future_t *f, void *opaque)
{
	(void)f;
	++*(uint64_t *)opaque;
}

/* ns per create + settle + await (+ callback), median of the rounds. */
static double bench_future(int variant, size_t iters)
{
	double r[64];
	uint64_t calls = 0;
	for (int k = 0; k < rounds; k++) {
		int64_t t0 = kreq__mono_ns();
		for (size_t i = 0; i < iters; i++) {
			if (variant == 2) {
				naive_future_t *f = naive_new();
				naive_settle(f, KREQ_OK);
				sink += (uint64_t)naive_wait(f);
				naive_free(f);
				continue;
			}
			kreq_future_t *f = kreq__future_new(REC_SIZE, NULL);
			if (variant == 1)
				kreq_future_on_done(f, count_cb, &calls);
			kreq__future_settle(f, KREQ_OK, 0, NULL, 0, false, NULL);
			kreq_future_wait(f, -1);
			sink += (uint64_t)kreq_future_err(f);
			kreq_future_release(f);
		}
		r[k] = (double)(kreq__mono_ns() - t0) / (double)iters;
	}
	sink += calls;
	return median(r, rounds);
}

/* ---- tables ------------------------------------------------------------- */

typedef struct cnode {
	struct cnode *next;
	uint8_t id[16];
	void *v;
} cnode_t;

typedef struct chash {
	pthread_mutex_t mu;
	cnode_t **b;
	size_t mask;
} chash_t;

static chash_t *chash_new(size_t buckets)
{
	chash_t *h = calloc(1, sizeof(*h));
	pthread_mutex_init(&h->mu, NULL);
	h->b = calloc(buckets, sizeof(cnode_t *));
	h->mask = buckets - 1;
	return h;
}

static cnode_t **chash_slot(chash_t *h, const uint8_t id[16])
{
	uint64_t k;
	memcpy(&k, id, 8);
	cnode_t **pp = &h->b[k & h->mask];
	while (*pp != NULL && memcmp((*pp)->id, id, 16) != 0)
		pp = &(*pp)->next;
	return pp;
}

static int chash_insert(chash_t *h, const uint8_t id[16], void *v)
{
	pthread_mutex_lock(&h->mu);
	cnode_t **pp = chash_slot(h, id);
	int rc = KREQ_EEXIST;
	if (*pp == NULL) {
		cnode_t *n = malloc(sizeof(*n));
		n->next = NULL;
		memcpy(n->id, id, 16);
		n->v = v;
		*pp = n;
		rc = KREQ_OK;
	}
	pthread_mutex_unlock(&h->mu);
	return rc;
}

static void *chash_find(chash_t *h, const uint8_t id[16])
{
	pthread_mutex_lock(&h->mu);
	cnode_t *n = *chash_slot(h, id);
	void *v = n != NULL ? n->v : NULL;
	pthread_mutex_unlock(&h->mu);
	return v;
}

static void *chash_remove(chash_t *h, const uint8_t id[16])
{
	pthread_mutex_lock(&h->mu);
	cnode_t **pp = chash_slot(h, id), *n = *pp;
	void *v = NULL;
	if (n != NULL) {
		*pp = n->next;
		v = n->v;
	}
	pthread_mutex_unlock(&h->mu);
	free(n);
	return v;
}

static void chash_destroy(chash_t *h)
{
	for (size_t i = 0; i <= h->mask; i++)
		for (cnode_t *n = h->b[i], *next; n != NULL; n = next) {
			next = n->next;
			free(n);
		}
	free(h->b);
	pthread_mutex_destroy(&h->mu);
	free(h);
}

/* The same operations on either table. */
typedef struct tab {
	kreq__table_t *k;
	chash_t *c;
} tab_t;

static int tab_insert(tab_t *t, const uint8_t id[16], void *v)
{
	return t->k ? kreq__table_insert(t->k, id, v) : chash_insert(t->c, id, v);
}

static void *tab_find(tab_t *t, const uint8_t id[16])
{
	return t->k ? kreq__table_find(t->k, id) : chash_find(t->c, id);
}

static void *tab_remove(tab_t *t, const uint8_t id[16])
{
	return t->k ? kreq__table_remove(t->k, id) : chash_remove(t->c, id);
}

/* Stands in for the client's retain (a reference count in the value). */
static void retain_touch(void *v)
{
	sink += *(volatile const uint8_t *)v;
}

/* The client's reply path: look up and pin the call (which touches the
 * value), then remove it. */
static void *tab_reply(tab_t *t, const uint8_t id[16])
{
	void *v = t->k ? kreq__table_find_retain(t->k, id, retain_touch) : chash_find(t->c, id);
	if (v != NULL && t->c)
		retain_touch(v);
	return v != NULL ? tab_remove(t, id) : NULL;
}

typedef struct tab_times {
	double insert, find, remove, reply, mt;
} tab_times_t;

typedef struct mt_arg {
	tab_t *t;
	uint8_t (*ids)[16];
	size_t n;
} mt_arg_t;

/* Each thread: insert its ids, find them, remove them. */
static void *mt_worker(void *arg)
{
	mt_arg_t *a = arg;
	for (size_t i = 0; i < a->n; i++)
		tab_insert(a->t, a->ids[i], a->ids[i]);
	for (size_t i = 0; i < a->n; i++)
		sink += tab_find(a->t, a->ids[i]) != NULL;
	for (size_t i = 0; i < a->n; i++)
		sink += tab_remove(a->t, a->ids[i]) != NULL;
	return NULL;
}

static double run_mt(tab_t *t, uint8_t (*ids)[16], size_t batch)
{
	pthread_t th[2];
	mt_arg_t a[2] = {{t, ids, batch / 2}, {t, ids + batch / 2, batch / 2}};
	int64_t t0 = kreq__mono_ns();
	for (int i = 0; i < 2; i++)
		pthread_create(&th[i], NULL, mt_worker, &a[i]);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	return (double)(kreq__mono_ns() - t0) / (double)(3 * (batch / 2) * 2);
}

/* Steady state with `live` entries, as requests come and go: each round
 * inserts a batch of new ids, finds a batch of resident ones and removes the
 * batch of oldest ids (FIFO, so live stays constant): the first half with a
 * plain remove, the second half as the client's reply path does
 * (find_retain, then remove; timed per pair); then two threads at once
 * insert, find and remove a batch of their own. ids holds live + rounds *
 * batch ids; mt a further batch. */
static tab_times_t bench_table(tab_t *t, uint8_t (*ids)[16], uint8_t (*mt)[16], size_t batch)
{
	for (size_t i = 0; i < live; i++)
		tab_insert(t, ids[i], ids[i]);
	double ins[64], fnd[64], rem[64], rep[64], par[64];
	size_t half = batch / 2;
	for (int k = 0; k < rounds; k++) {
		size_t oldest = (size_t)k * batch, newest = live + (size_t)k * batch;
		int64_t t0 = kreq__mono_ns();
		for (size_t i = 0; i < batch; i++)
			tab_insert(t, ids[newest + i], ids[newest + i]);
		int64_t t1 = kreq__mono_ns();
		for (size_t i = 0; i < batch; i++)
			sink += tab_find(t, ids[oldest + batch + i * 7 % (live - batch)]) != NULL;
		int64_t t2 = kreq__mono_ns();
		for (size_t i = 0; i < half; i++)
			sink += tab_remove(t, ids[oldest + i]) != NULL;
		int64_t t3 = kreq__mono_ns();
		for (size_t i = half; i < batch; i++)
			sink += tab_reply(t, ids[oldest + i]) != NULL;
		int64_t t4 = kreq__mono_ns();
		ins[k] = (double)(t1 - t0) / (double)batch;
		fnd[k] = (double)(t2 - t1) / (double)batch;
		rem[k] = (double)(t3 - t2) / (double)half;
		rep[k] = (double)(t4 - t3) / (double)(batch - half);
		par[k] = run_mt(t, mt, batch);
	}
	for (size_t i = (size_t)rounds * batch; i < live + (size_t)rounds * batch; i++)
		tab_remove(t, ids[i]);
	return (tab_times_t){median(ins, rounds), median(fnd, rounds), median(rem, rounds),
	                     median(rep, rounds), median(par, rounds)};
}

/* ---- timers ------------------------------------------------------------- */

typedef struct hnode {
	int64_t exp;
	size_t idx;
} hnode_t;

typedef struct heap {
	pthread_mutex_t mu;
	hnode_t **a;
	size_t n, cap;
} heap_t;

static void heap_swap(heap_t *h, size_t i, size_t j)
{
	hnode_t *x = h->a[i];
	h->a[i] = h->a[j];
	h->a[j] = x;
	h->a[i]->idx = i;
	h->a[j]->idx = j;
}

static void heap_up(heap_t *h, size_t i)
{
	while (i > 0 && h->a[(i - 1) / 2]->exp > h->a[i]->exp) {
		heap_swap(h, i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
}

static void heap_down(heap_t *h, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, m = i;
		if (l < h->n && h->a[l]->exp < h->a[m]->exp)
			m = l;
		if (l + 1 < h->n && h->a[l + 1]->exp < h->a[m]->exp)
			m = l + 1;
		if (m == i)
			return;
		heap_swap(h, i, m);
		i = m;
	}
}

static void heap_push(heap_t *h, hnode_t *x, int64_t exp)
{
	pthread_mutex_lock(&h->mu);
	if (h->n == h->cap) {
		h->cap = h->cap ? 2 * h->cap : 1024;
		h->a = realloc(h->a, h->cap * sizeof(hnode_t *));
	}
	x->exp = exp;
	x->idx = h->n;
	h->a[h->n++] = x;
	heap_up(h, x->idx);
	pthread_mutex_unlock(&h->mu);
}

static void heap_remove(heap_t *h, hnode_t *x)
{
	pthread_mutex_lock(&h->mu);
	size_t i = x->idx;
	h->n--;
	if (i != h->n) {
		h->a[i] = h->a[h->n];
		h->a[i]->idx = i;
		heap_down(h, i);
		heap_up(h, i);
	}
	pthread_mutex_unlock(&h->mu);
}

/* arm + cancel with `live` other timers armed (deadlines within 30 s). */
static double bench_wheel(size_t pool)
{
	int64_t now = kreq__mono_ns() / 1000000;
	kreq__wheel_t *w = kreq__wheel_new(now);
	kreq__timer_node_t *bg = calloc(live, sizeof(*bg)), *nodes = calloc(pool, sizeof(*nodes));
	uint64_t seed = 1;
	for (size_t i = 0; i < live; i++)
		kreq__wheel_arm(w, &bg[i], now + (int64_t)(rnd(&seed) % 30000));
	double r[64];
	for (int k = 0; k < rounds; k++) {
		int64_t t0 = kreq__mono_ns();
		for (size_t i = 0; i < pool; i++)
			kreq__wheel_arm(w, &nodes[i], now + 5000 + (int64_t)(i * 7919 % 25000));
		for (size_t i = 0; i < pool; i++)
			kreq__wheel_cancel(w, &nodes[i]);
		r[k] = (double)(kreq__mono_ns() - t0) / (double)pool;
	}
	kreq__wheel_destroy(w);
	free(bg);
	free(nodes);
	return median(r, rounds);
}

static double bench_heap(size_t pool)
{
	heap_t h = {.n = 0};
	pthread_mutex_init(&h.mu, NULL);
	hnode_t *bg = calloc(live, sizeof(*bg)), *nodes = calloc(pool, sizeof(*nodes));
	int64_t now = kreq__mono_ns() / 1000000;
	uint64_t seed = 1;
	for (size_t i = 0; i < live; i++)
		heap_push(&h, &bg[i], now + (int64_t)(rnd(&seed) % 30000));
	double r[64];
	for (int k = 0; k < rounds; k++) {
		int64_t t0 = kreq__mono_ns();
		for (size_t i = 0; i < pool; i++)
			heap_push(&h, &nodes[i], now + 5000 + (int64_t)(i * 7919 % 25000));
		for (size_t i = 0; i < pool; i++)
			heap_remove(&h, &nodes[i]);
		r[k] = (double)(kreq__mono_ns() - t0) / (double)pool;
	}
	free(h.a);
	pthread_mutex_destroy(&h.mu);
	free(bg);
	free(nodes);
	return median(r, rounds);
}

/* One POSIX timer per request (no signal: SIGEV_NONE), 30 s. */
static double bench_posix_timer(size_t iters)
{
	struct sigevent sev = {.sigev_notify = SIGEV_NONE};
	struct itimerspec its = {.it_value = {30, 0}};
	double r[64];
	for (int k = 0; k < rounds; k++) {
		int64_t t0 = kreq__mono_ns();
		for (size_t i = 0; i < iters; i++) {
			timer_t t;
			if (timer_create(CLOCK_MONOTONIC, &sev, &t) != 0)
				abort();
			timer_settime(t, 0, &its, NULL);
			timer_delete(t);
		}
		r[k] = (double)(kreq__mono_ns() - t0) / (double)iters;
	}
	return median(r, rounds);
}

/* ---- memory ------------------------------------------------------------- */

static size_t heap_in_use(void)
{
	struct mallinfo2 mi = mallinfo2();
	return mi.uordblks + mi.hblkhd;
}

/* Bytes per pending call: the client's call (kreq__call_new(), with
 * MEM_PAYLOAD bytes of payload, method MEM_METHOD and a MEM_KEY_LEN-byte
 * idempotency key), in the pending table and armed in the wheel (the
 * caller's array of handles is not counted). */
static double mem_kreq(void)
{
	kreq_future_t **fs = malloc(live * sizeof(*fs));
	kreq_client_t *c = calloc(1, sizeof(*c)); /* only what a call reads */
	kreq_call_opts_t *o = kreq_call_opts_new();
	uint8_t payload[MEM_PAYLOAD], key[MEM_KEY_LEN];
	memset(payload, 'p', sizeof(payload));
	memset(key, 'k', sizeof(key));
	if (!fs || !c || !o || kreq_call_opts_set_idempotency_key(o, key, sizeof(key)))
		abort();
	c->request_timeout_ms = 30000;
	size_t base = heap_in_use();
	kreq__table_t *t = kreq__table_new(0, kreq__call_key_offset());
	kreq__wheel_t *w = kreq__wheel_new(0);
	for (size_t i = 0; i < live; i++) {
		int err;
		fs[i] = kreq__call_new(c, MEM_METHOD, payload, sizeof(payload), o, &err);
		if (!fs[i] || err)
			abort();
		kreq__call_t *r = kreq__future_extra(fs[i]);
		if (kreq__table_insert(t, r->corr_id, fs[i]) != KREQ_OK)
			abort();
		kreq__wheel_arm(w, &r->timer, (int64_t)(i % 30000));
	}
	double per = (double)(heap_in_use() - base) / (double)live;
	kreq__table_destroy(t);
	kreq__wheel_destroy(w);
	for (size_t i = 0; i < live; i++)
		kreq_future_release(fs[i]);
	kreq_call_opts_destroy(o);
	free(c);
	free(fs);
	return per;
}

/* The naive equivalent: a mutex+condvar future with the record (holding the
 * heap entry), a chained hash node (2^20 buckets), a binary heap slot. */
static double mem_naive(uint8_t (*ids)[16])
{
	naive_future_t **fs = malloc(live * sizeof(*fs));
	size_t base = heap_in_use();
	chash_t *c = chash_new((size_t)1 << 20);
	heap_t h = {.n = 0};
	pthread_mutex_init(&h.mu, NULL);
	for (size_t i = 0; i < live; i++) {
		fs[i] = naive_new();
		chash_insert(c, ids[i], fs[i]);
		heap_push(&h, (hnode_t *)(void *)fs[i]->extra, (int64_t)(i % 30000));
	}
	double per = (double)(heap_in_use() - base) / (double)live;
	for (size_t i = 0; i < live; i++)
		naive_free(fs[i]);
	free(fs);
	free(h.a);
	pthread_mutex_destroy(&h.mu);
	chash_destroy(c);
	return per;
}

int main(int argc, char **argv)
{
	if (argc > 1)
		rounds = atoi(argv[1]);
	if (argc > 2)
		live = (size_t)atol(argv[2]);
	if (rounds < 1 || rounds > 64 || live < 100000 || argc > 3) {
		fprintf(stderr,
		        "usage: bench_client_core [rounds 1..64] [live-entries >= 100000]\n");
		return 2;
	}
	printf("# client core: median of %d rounds; %zu live entries; sizeof(future) = %zu, "
	       "call record = %zu bytes + method, key and payload\n",
	       rounds, live, kreq__future_extra_offset(), offsetof(kreq__call_t, blob));
	printf("%-34s %10s   %-34s %10s %8s\n", "kreq operation", "ns/op", "baseline (same run)",
	       "ns/op", "ratio");

	size_t fi = 1000000;
	row("future create+settle+await", bench_future(0, fi), "mutex+condvar future",
	    bench_future(2, fi));
	row("  ... with a callback", bench_future(1, fi), "", 0);

	size_t batch = live / 10;
	uint8_t(*ids)[16] = make_ids(live + (size_t)rounds * batch, 1);
	uint8_t(*mt)[16] = make_ids(batch, 2);
	tab_t kt = {kreq__table_new(0, 0), NULL}, ct = {NULL, chash_new((size_t)1 << 20)};
	tab_times_t k = bench_table(&kt, ids, mt, batch);
	tab_times_t c = bench_table(&ct, ids, mt, batch);
	char what[64];
	snprintf(what, sizeof(what), "table insert (%zu live)", live);
	row(what, k.insert, "chained hash, global mutex", c.insert);
	snprintf(what, sizeof(what), "table find (%zu live)", live);
	row(what, k.find, "chained hash, global mutex", c.find);
	snprintf(what, sizeof(what), "table remove (%zu live)", live);
	row(what, k.remove, "chained hash, global mutex", c.remove);
	snprintf(what, sizeof(what), "table find_retain+remove (%zuk)", live / 1000);
	row(what, k.reply, "chained hash, find+remove", c.reply);
	row("table ins/find/rm, 2 threads", k.mt, "chained hash, global mutex", c.mt);
	kreq__table_destroy(kt.k);
	chash_destroy(ct.c);

	size_t pool = 100000;
	double wheel = bench_wheel(pool);
	snprintf(what, sizeof(what), "timer arm+cancel (%zu armed)", live);
	row(what, wheel, "binary heap + mutex", bench_heap(pool));
	row("", wheel, "timer_create/settime/delete", bench_posix_timer(20000));

	double total = mem_kreq(), mn = mem_naive(ids);
	double bounded = total - (MEM_PAYLOAD + strlen(MEM_METHOD) + MEM_KEY_LEN);
	snprintf(what, sizeof(what), "bytes per pending call (%zuk)", live / 1000);
	printf("%-34s %10.1f   %-34s %10.1f %8.2fx\n", what, bounded,
	       "naive future+chain node+heap", mn, mn / bounded);
	printf("%-34s %10.1f   (%d B payload, %zu B method, %d B key)\n",
	       "  ... with payload, method, key", total, MEM_PAYLOAD, strlen(MEM_METHOD),
	       MEM_KEY_LEN);
	free(ids);
	free(mt);
	return (int)(sink & 0);
}
