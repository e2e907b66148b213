/*
 * netproxy.c — see netproxy.h.
 *
 * Design: one thread, one poll() loop over the listeners, a wake-up pipe
 * and both sockets of every connection (all non-blocking). The
 * client-to-Kafka direction is parsed into requests; every byte goes into
 * a queue of chunks, each with the time it is due: a delayed request's
 * chunks are due delay_ms later, and a later chunk is never due before an
 * earlier one (TCP keeps order, so one held request holds the rest of its
 * connection, as a stalled packet would). When the client side closes,
 * the Kafka side stays open until its queue has been written: a late
 * request still arrives, after its client gave up on it. Kafka-to-client
 * bytes go through a fixed buffer. Bounded: a connection stops reading
 * its client while QMAX bytes are queued, and Kafka while its buffer is
 * full.
 *
 * The thread holds the mutex while it works, and drops it only in poll();
 * control calls change the rules under the mutex, and those that act on
 * connections (drop, partition, heal) post a request and wait until the
 * thread has carried it out (only the thread closes descriptors, so none
 * is closed under a poll() that watches it).
 */
#include "netproxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define QMAX           (8u << 20)
#define SBUF           (256u << 10)
#define HBUF           (14 + 255)
#define MAX_RULES      8
#define MAX_POLL_MS    50
#define RELEASE_LAG_MS 50 /* a held request goes this long after its trigger */
#define LATE_MAX       8  /* late EndTxns awaiting their answer, per connection */
#define API_END_TXN    26

typedef struct chunk {
	struct chunk *next;
	int64_t due;
	size_t len, off;
	bool delayed_head; /* first bytes of a delayed request */
	uint8_t data[];
} chunk_t;

typedef struct conn {
	struct conn *next;
	int cfd, sfd, node;
	char cid[256];
	bool have_cid, blackhole;
	uint8_t hbuf[HBUF];
	size_t hlen;
	uint64_t frame_left; /* bytes of the current request after its header */
	int64_t frame_due, last_due;
	int trigger_api; /* held until its client sends this api_key elsewhere; -1 */
	chunk_t *qh, *qt;
	size_t qbytes;
	uint8_t *sbuf;
	size_t soff, slen;
	/* Kafka's answers, framed (whether the client still reads them): the
	 * late EndTxns awaiting theirs, by correlation id and version */
	int32_t late_corr[LATE_MAX];
	int16_t late_ver[LATE_MAX];
	int nlate;
	uint8_t ahead[16]; /* the start of the answer being read */
	size_t ahlen;
	uint64_t askip; /* bytes of it still to pass */
} conn_t;

typedef struct {
	bool used;
	int node, api_key, delay_ms, count, release_api;
	char prefix[128];
} rule_t;

enum op { OP_NONE, OP_DROP, OP_PARTITION, OP_ARM, OP_HEAL };

struct kreq_netproxy {
	int nodes;
	int lfd[KREQ_NP_MAX_NODES];
	struct sockaddr_in target[KREQ_NP_MAX_NODES];
	int wake[2];
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	bool stop;
	rule_t rules[MAX_RULES];
	/* the partition in force */
	bool part_on;
	int part_node;
	char part_prefix[128];
	/* a partition armed to start at a request (kreq_netproxy_partition_at) */
	bool part_armed;
	int armed_node, armed_api;
	char armed_prefix[128];
	/* a posted request and its result */
	enum op op;
	int op_node, op_api, op_result;
	char op_prefix[128];
	uint64_t op_gen, op_done;
	conn_t *conns;
	int64_t queued;
	kreq_np_stats_t st;
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int16_t be16(const uint8_t *p)
{
	return (int16_t)((uint16_t)p[0] << 8 | p[1]);
}

size_t kreq_np_parse_header(const uint8_t *buf, size_t n, int *api_key, char *client_id,
                            size_t idsize)
{
	if (n < 4)
		return 4;
	uint64_t total = 4 + (uint64_t)be32(buf);
	if (total < 14) { /* not a request header: forward it as it is */
		if (n < total)
			return (size_t)total;
		*api_key = -1;
		client_id[0] = 0;
		return (size_t)total;
	}
	if (n < 14)
		return 14;
	int clen = be16(buf + 12); /* -1: null client_id */
	size_t used = clen > 0 ? (size_t)(clen > 255 ? 255 : clen) : 0;
	size_t need = 14 + used;
	if (need > total)
		need = (size_t)total, used = need - 14;
	if (n < need)
		return need;
	*api_key = be16(buf + 4);
	size_t l = used < idsize - 1 ? used : idsize - 1;
	memcpy(client_id, buf + 14, l);
	client_id[l] = 0;
	return need;
}

/* ---- matching ---------------------------------------------------------------- */

static bool match_conn(const conn_t *c, int node, const char *prefix)
{
	if (node && node != c->node)
		return false;
	if (!prefix[0])
		return true;
	return c->have_cid && !strncmp(c->cid, prefix, strlen(prefix));
}

/* ---- closing ------------------------------------------------------------------- */

static void close_fd(int *fd, bool reset)
{
	if (*fd < 0)
		return;
	if (reset) {
		struct linger lg = {1, 0};
		setsockopt(*fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	close(*fd);
	*fd = -1;
}

static void free_queue(kreq_netproxy_t *p, conn_t *c)
{
	while (c->qh) {
		chunk_t *k = c->qh;
		c->qh = k->next;
		p->queued -= (int64_t)(k->len - k->off);
		free(k);
	}
	c->qt = NULL;
	c->qbytes = 0;
}

/* The client side is gone (EOF, error, or reset by us): the Kafka side
 * stays until what is queued for it has been written. */
static void client_gone(conn_t *c, bool reset)
{
	close_fd(&c->cfd, reset);
	c->slen = c->soff = 0;
	if (!c->qh && !c->nlate)
		close_fd(&c->sfd, false);
}

static void server_gone(kreq_netproxy_t *p, conn_t *c, bool reset)
{
	close_fd(&c->sfd, reset);
	free_queue(p, c);
	if (reset || c->soff == c->slen)
		close_fd(&c->cfd, reset);
}

/* ---- queueing ------------------------------------------------------------------ */

static void enqueue(kreq_netproxy_t *p, conn_t *c, const uint8_t *d, size_t n, int64_t due,
                    bool delayed_head)
{
	chunk_t *k = malloc(sizeof(*k) + n);
	if (!k) {
		client_gone(c, true);
		return;
	}
	k->next = NULL;
	k->due = due;
	k->len = n;
	k->off = 0;
	k->delayed_head = delayed_head;
	memcpy(k->data, d, n);
	if (c->qt)
		c->qt->next = k;
	else
		c->qh = k;
	c->qt = k;
	c->qbytes += n;
	p->queued += (int64_t)n;
}

/* c's client sent a request of api_key api: a request of the same client
 * held for it on another connection goes RELEASE_LAG_MS later (the
 * trigger, e.g. the AddPartitionsToTxn of the next transaction, has been
 * answered by then). */
static void release_held(kreq_netproxy_t *p, const conn_t *c, int api)
{
	int64_t at = now_ms() + RELEASE_LAG_MS;
	for (conn_t *h = p->conns; h; h = h->next) {
		if (h == c || h->trigger_api != api || strcmp(h->cid, c->cid))
			continue;
		for (chunk_t *k = h->qh; k; k = k->next)
			if (k->due > at)
				k->due = at;
		if (h->last_due > at)
			h->last_due = h->frame_due = at;
		h->trigger_api = -1;
		p->st.released++;
	}
}

/* Blackholes the matching connections, current and new, until the heal;
 * returns how many current ones. */
static int start_partition(kreq_netproxy_t *p, int node, const char *prefix)
{
	int n = 0;
	for (conn_t *c = p->conns; c; c = c->next)
		if (c->cfd >= 0 && !c->blackhole && match_conn(c, node, prefix)) {
			c->blackhole = true;
			p->st.blackholed++;
			n++;
		}
	p->part_on = true;
	p->part_armed = false;
	p->part_node = node;
	snprintf(p->part_prefix, sizeof(p->part_prefix), "%s", prefix);
	p->st.partition_started_ms = now_ms();
	return n;
}

/* A request header is complete in c->hbuf: count it, apply the rules and
 * the partition, and queue it. */
static void header_done(kreq_netproxy_t *p, conn_t *c)
{
	int api = -1;
	char cid[256];
	kreq_np_parse_header(c->hbuf, c->hlen, &api, cid, sizeof(cid));
	uint64_t total = 4 + (uint64_t)be32(c->hbuf);
	c->frame_left = total - c->hlen;
	if (!c->have_cid && cid[0]) {
		snprintf(c->cid, sizeof(c->cid), "%s", cid);
		c->have_cid = true;
	}
	if (p->part_armed && api == p->armed_api && match_conn(c, p->armed_node, p->armed_prefix))
		start_partition(p, p->armed_node, p->armed_prefix);
	if (p->part_on && !c->blackhole && match_conn(c, p->part_node, p->part_prefix)) {
		c->blackhole = true;
		p->st.blackholed++;
	}
	if (c->blackhole)
		return;
	if (api >= 0 && api < KREQ_NP_API_MAX)
		p->st.requests[api]++;
	if (api >= 0 && c->have_cid)
		release_held(p, c, api);
	int delay = 0;
	for (int i = 0; i < MAX_RULES; i++) {
		rule_t *r = &p->rules[i];
		if (!r->used || r->count == 0 || (r->api_key >= 0 && r->api_key != api) ||
		    !match_conn(c, r->node, r->prefix))
			continue;
		delay = r->delay_ms;
		if (r->release_api >= 0)
			c->trigger_api = r->release_api;
		if (r->count > 0)
			r->count--;
		p->st.delayed_total++;
		if (api >= 0 && api < KREQ_NP_API_MAX)
			p->st.delayed[api]++;
		break;
	}
	int64_t due = now_ms() + delay;
	if (due < c->last_due)
		due = c->last_due;
	c->last_due = c->frame_due = due;
	enqueue(p, c, c->hbuf, c->hlen, due, delay > 0);
	c->hlen = 0;
}

static void feed(kreq_netproxy_t *p, conn_t *c, const uint8_t *d, size_t n)
{
	size_t pos = 0;
	while (pos < n && c->cfd >= 0 && !c->blackhole) {
		if (c->frame_left > 0) {
			size_t k = n - pos;
			if (k > c->frame_left)
				k = (size_t)c->frame_left;
			enqueue(p, c, d + pos, k, c->frame_due, false);
			c->frame_left -= k;
			pos += k;
			continue;
		}
		int api;
		char cid[2];
		size_t need = kreq_np_parse_header(c->hbuf, c->hlen, &api, cid, sizeof(cid));
		if (need > c->hlen) {
			size_t k = need - c->hlen;
			if (k > n - pos)
				k = n - pos;
			memcpy(c->hbuf + c->hlen, d + pos, k);
			c->hlen += k;
			pos += k;
			need = kreq_np_parse_header(c->hbuf, c->hlen, &api, cid, sizeof(cid));
		}
		if (need <= c->hlen)
			header_done(p, c);
	}
}

/* ---- I/O --------------------------------------------------------------------------- */

static void read_client(kreq_netproxy_t *p, conn_t *c)
{
	uint8_t buf[65536];
	ssize_t n = read(c->cfd, buf, sizeof(buf));
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		client_gone(c, n < 0);
		return;
	}
	if (!c->blackhole)
		feed(p, c, buf, (size_t)n);
}

static void write_server(kreq_netproxy_t *p, conn_t *c, int64_t now)
{
	while (c->sfd >= 0 && c->qh && c->qh->due <= now) {
		chunk_t *k = c->qh;
		ssize_t w = write(c->sfd, k->data + k->off, k->len - k->off);
		if (w < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (w <= 0) {
			server_gone(p, c, true);
			return;
		}
		if (k->off == 0 && k->delayed_head && c->cfd < 0) {
			p->st.late++;
			if (k->len >= 12 && be16(k->data + 4) == API_END_TXN &&
			    c->nlate < LATE_MAX) {
				c->late_ver[c->nlate] = be16(k->data + 6);
				c->late_corr[c->nlate++] = (int32_t)be32(k->data + 8);
			}
		}
		k->off += (size_t)w;
		p->queued -= w;
		c->qbytes -= (size_t)w;
		if (k->off < k->len)
			return;
		c->qh = k->next;
		if (!c->qh)
			c->qt = NULL;
		free(k);
	}
	if (!c->qh && c->cfd < 0 && !c->nlate)
		close_fd(&c->sfd, false);
}

/* The late EndTxn an answer starting in c->ahead (8 bytes: size,
 * correlation id) answers, or -1. */
static int late_of(const conn_t *c)
{
	int32_t corr = (int32_t)be32(c->ahead + 4);
	for (int i = 0; i < c->nlate; i++)
		if (c->late_corr[i] == corr)
			return i;
	return -1;
}

/* Bytes of an answer's start to read: an EndTxn answer carries, after its
 * correlation id, a tagged-field byte from version 3 (flexible), then
 * throttle_time_ms and error_code. */
static size_t answer_need(const conn_t *c)
{
	int i = late_of(c);
	size_t need = i < 0 ? 8 : c->late_ver[i] >= 3 ? 15 : 14;
	return 4 + (uint64_t)be32(c->ahead) < need ? 8 : need;
}

/* Frames the Kafka-to-client bytes into answers and counts Kafka's
 * verdict on each late EndTxn (a too short answer counts as refused). */
static void scan_answers(kreq_netproxy_t *p, conn_t *c, const uint8_t *d, size_t n)
{
	for (size_t i = 0; i < n;) {
		if (c->askip) {
			size_t k = n - i < c->askip ? n - i : (size_t)c->askip;
			c->askip -= k;
			i += k;
			continue;
		}
		while (c->ahlen < 8 && i < n)
			c->ahead[c->ahlen++] = d[i++];
		if (c->ahlen < 8)
			return;
		size_t need = answer_need(c);
		while (c->ahlen < need && i < n)
			c->ahead[c->ahlen++] = d[i++];
		if (c->ahlen < need)
			return;
		int l = late_of(c);
		if (l >= 0) {
			if (need > 8 && be16(c->ahead + need - 2) == 0)
				p->st.late_endtxn_accepted++;
			else
				p->st.late_endtxn_refused++;
			c->late_corr[l] = c->late_corr[--c->nlate];
			c->late_ver[l] = c->late_ver[c->nlate];
		}
		uint64_t total = 4 + (uint64_t)be32(c->ahead);
		c->askip = total > c->ahlen ? total - c->ahlen : 0;
		c->ahlen = 0;
	}
	if (!c->nlate && !c->qh && c->cfd < 0)
		close_fd(&c->sfd, false);
}

static void read_server(kreq_netproxy_t *p, conn_t *c)
{
	if (c->soff > 0 && c->soff == c->slen)
		c->soff = c->slen = 0;
	if (c->soff > 0 && c->slen == SBUF) {
		memmove(c->sbuf, c->sbuf + c->soff, c->slen - c->soff);
		c->slen -= c->soff;
		c->soff = 0;
	}
	uint8_t sink[65536];
	bool keep = c->cfd >= 0 && !c->blackhole;
	uint8_t *dst = keep ? c->sbuf + c->slen : sink;
	size_t room = keep ? SBUF - c->slen : sizeof(sink);
	ssize_t n = read(c->sfd, dst, room);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		server_gone(p, c, n < 0);
		return;
	}
	scan_answers(p, c, dst, (size_t)n);
	if (keep)
		c->slen += (size_t)n;
}

static void write_client(kreq_netproxy_t *p, conn_t *c)
{
	ssize_t w = write(c->cfd, c->sbuf + c->soff, c->slen - c->soff);
	if (w < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (w <= 0) {
		client_gone(c, true);
		return;
	}
	c->soff += (size_t)w;
	if (c->sfd < 0 && c->soff == c->slen)
		server_gone(p, c, false);
}

static void nonblock(int fd)
{
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void accept_one(kreq_netproxy_t *p, int node)
{
	int cfd = accept4(p->lfd[node - 1], NULL, NULL, SOCK_CLOEXEC);
	if (cfd < 0)
		return;
	p->st.accepted++;
	int sfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	conn_t *c = calloc(1, sizeof(*c));
	uint8_t *sbuf = malloc(SBUF);
	if (sfd < 0 || !c || !sbuf ||
	    connect(sfd, (struct sockaddr *)&p->target[node - 1], sizeof(p->target[0])) != 0) {
		if (sfd >= 0)
			close(sfd);
		free(c);
		free(sbuf);
		close_fd(&cfd, true); /* Kafka is not there: so the client learns */
		return;
	}
	nonblock(cfd);
	nonblock(sfd);
	c->cfd = cfd;
	c->sfd = sfd;
	c->node = node;
	c->sbuf = sbuf;
	c->trigger_api = -1;
	if (p->part_on && !p->part_prefix[0] && (!p->part_node || p->part_node == node)) {
		c->blackhole = true;
		p->st.blackholed++;
	}
	c->next = p->conns;
	p->conns = c;
}

/* ---- requests from the control calls ------------------------------------------------- */

static void do_op(kreq_netproxy_t *p)
{
	int n = 0;
	for (conn_t *c = p->conns; c; c = c->next) {
		if (c->cfd < 0)
			continue;
		switch (p->op) {
		case OP_DROP:
			if (match_conn(c, p->op_node, p->op_prefix)) {
				client_gone(c, true);
				p->st.dropped++;
				n++;
			}
			break;
		case OP_HEAL:
			if (c->blackhole) {
				client_gone(c, true);
				n++;
			}
			break;
		case OP_PARTITION:
		case OP_ARM:
		case OP_NONE:
			break;
		}
	}
	if (p->op == OP_PARTITION) {
		n = start_partition(p, p->op_node, p->op_prefix);
	} else if (p->op == OP_ARM) {
		p->part_armed = true;
		p->armed_node = p->op_node;
		p->armed_api = p->op_api;
		snprintf(p->armed_prefix, sizeof(p->armed_prefix), "%s", p->op_prefix);
	} else if (p->op == OP_HEAL) {
		p->part_on = p->part_armed = false;
	}
	p->op = OP_NONE;
	p->op_result = n;
	p->op_done = p->op_gen;
	pthread_cond_broadcast(&p->cond);
}

static int post(kreq_netproxy_t *p, enum op op, kreq_np_match_t m)
{
	pthread_mutex_lock(&p->mu);
	while (p->op != OP_NONE)
		pthread_cond_wait(&p->cond, &p->mu);
	p->op = op;
	p->op_node = m.node;
	p->op_api = m.api_key;
	snprintf(p->op_prefix, sizeof(p->op_prefix), "%s", m.client_prefix ? m.client_prefix : "");
	uint64_t gen = ++p->op_gen;
	char b = 1;
	if (write(p->wake[1], &b, 1) < 0) { /* full pipe: the thread is awake anyway */
	}
	while (p->op_done < gen)
		pthread_cond_wait(&p->cond, &p->mu);
	int n = p->op_result;
	pthread_mutex_unlock(&p->mu);
	return n;
}

/* ---- the loop -------------------------------------------------------------------------- */

static void reap(conn_t **pp)
{
	while (*pp) {
		conn_t *c = *pp;
		if (c->cfd < 0 && c->sfd < 0) {
			*pp = c->next;
			free(c->sbuf);
			free(c);
		} else {
			pp = &c->next;
		}
	}
}

static void *loop(void *arg)
{
	kreq_netproxy_t *p = arg;
	struct pollfd *pf = NULL;
	conn_t **who = NULL;
	size_t cap = 0;
	pthread_mutex_lock(&p->mu);
	while (!p->stop) {
		if (p->op != OP_NONE)
			do_op(p);
		int64_t now = now_ms();
		for (conn_t *c = p->conns; c; c = c->next)
			write_server(p, c, now);
		reap(&p->conns);
		size_t need = 1 + (size_t)p->nodes;
		for (conn_t *c = p->conns; c; c = c->next)
			need += 2;
		if (need > cap) {
			cap = need * 2;
			pf = realloc(pf, cap * sizeof(*pf));
			who = realloc(who, cap * sizeof(*who));
			if (!pf || !who)
				abort();
		}
		size_t n = 0;
		int timeout = MAX_POLL_MS;
		pf[n++] = (struct pollfd){p->wake[0], POLLIN, 0};
		for (int i = 0; i < p->nodes; i++)
			pf[n++] = (struct pollfd){p->lfd[i], POLLIN, 0};
		for (conn_t *c = p->conns; c; c = c->next) {
			if (c->cfd >= 0) {
				short ev = 0;
				if (c->qbytes < QMAX)
					ev |= POLLIN;
				if (c->soff < c->slen)
					ev |= POLLOUT;
				who[n] = c;
				pf[n++] = (struct pollfd){c->cfd, ev, 0};
			}
			if (c->sfd >= 0) {
				short ev = 0;
				if (c->slen < SBUF || c->soff > 0)
					ev |= POLLIN;
				if (c->qh && c->qh->due <= now)
					ev |= POLLOUT;
				else if (c->qh && c->qh->due - now < timeout)
					timeout = (int)(c->qh->due - now);
				who[n] = c;
				pf[n++] = (struct pollfd){c->sfd, ev, 0};
			}
		}
		pthread_mutex_unlock(&p->mu);
		int r = poll(pf, n, timeout < 0 ? 0 : timeout);
		pthread_mutex_lock(&p->mu);
		if (r <= 0)
			continue;
		if (pf[0].revents) {
			char buf[64];
			while (read(p->wake[0], buf, sizeof(buf)) > 0) {
			}
		}
		for (int i = 0; i < p->nodes; i++)
			if (pf[1 + i].revents & POLLIN)
				accept_one(p, i + 1);
		for (size_t i = 1 + (size_t)p->nodes; i < n; i++) {
			conn_t *c = who[i];
			short re = pf[i].revents;
			if (!re)
				continue;
			if (pf[i].fd == c->cfd) { /* still this connection's client */
				if (re & POLLOUT)
					write_client(p, c);
				if (c->cfd == pf[i].fd && (re & (POLLIN | POLLHUP | POLLERR)))
					read_client(p, c);
			} else if (pf[i].fd == c->sfd) {
				if (re & POLLOUT)
					write_server(p, c, now_ms());
				if (c->sfd == pf[i].fd && (re & (POLLIN | POLLHUP | POLLERR)))
					read_server(p, c);
			}
		}
	}
	pthread_mutex_unlock(&p->mu);
	free(pf);
	free(who);
	return NULL;
}

/* ---- the interface ------------------------------------------------------------------- */

kreq_netproxy_t *kreq_netproxy_start(int nodes, const int *listen_ports, const char *const *targets)
{
	if (nodes < 1 || nodes > KREQ_NP_MAX_NODES)
		return NULL;
	kreq_netproxy_t *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->nodes = nodes;
	for (int i = 0; i < KREQ_NP_MAX_NODES; i++)
		p->lfd[i] = -1;
	p->wake[0] = p->wake[1] = -1;
	for (int i = 0; i < nodes; i++) {
		char host[64];
		int port = 0;
		if (sscanf(targets[i], "%63[^:]:%d", host, &port) != 2 ||
		    inet_pton(AF_INET, host, &p->target[i].sin_addr) != 1) {
			fprintf(stderr, "netproxy: bad target '%s' (want a.b.c.d:port)\n",
			        targets[i]);
			goto fail;
		}
		p->target[i].sin_family = AF_INET;
		p->target[i].sin_port = htons((uint16_t)port);
		struct sockaddr_in a = {.sin_family = AF_INET,
		                        .sin_port = htons((uint16_t)listen_ports[i])};
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		int one = 1;
		p->lfd[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (p->lfd[i] < 0 ||
		    setsockopt(p->lfd[i], SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
		    bind(p->lfd[i], (struct sockaddr *)&a, sizeof(a)) != 0 ||
		    listen(p->lfd[i], 64)) {
			fprintf(stderr, "netproxy: cannot listen on 127.0.0.1:%d: %s\n",
			        listen_ports[i], strerror(errno));
			goto fail;
		}
	}
	if (pipe2(p->wake, O_CLOEXEC | O_NONBLOCK) != 0)
		goto fail;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cond, NULL);
	if (pthread_create(&p->thread, NULL, loop, p) != 0) {
		pthread_mutex_destroy(&p->mu);
		pthread_cond_destroy(&p->cond);
		goto fail;
	}
	return p;
fail:
	for (int i = 0; i < KREQ_NP_MAX_NODES; i++)
		if (p->lfd[i] >= 0)
			close(p->lfd[i]);
	if (p->wake[0] >= 0) {
		close(p->wake[0]);
		close(p->wake[1]);
	}
	free(p);
	return NULL;
}

void kreq_netproxy_stop(kreq_netproxy_t *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_mutex_unlock(&p->mu);
	char b = 1;
	if (write(p->wake[1], &b, 1) < 0) { /* full pipe: it wakes anyway */
	}
	pthread_join(p->thread, NULL);
	while (p->conns) {
		conn_t *c = p->conns;
		p->conns = c->next;
		free_queue(p, c);
		close_fd(&c->cfd, true);
		close_fd(&c->sfd, true);
		free(c->sbuf);
		free(c);
	}
	for (int i = 0; i < p->nodes; i++)
		close(p->lfd[i]);
	close(p->wake[0]);
	close(p->wake[1]);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cond);
	free(p);
}

static int set_rule(kreq_netproxy_t *p, kreq_np_match_t m, int delay_ms, int count, int release_api)
{
	const char *pre = m.client_prefix ? m.client_prefix : "";
	int slot = -1;
	pthread_mutex_lock(&p->mu);
	for (int i = 0; i < MAX_RULES && slot < 0; i++) /* the rule of this match */
		if (p->rules[i].used && p->rules[i].node == m.node &&
		    p->rules[i].api_key == m.api_key && !strcmp(p->rules[i].prefix, pre))
			slot = i;
	for (int i = 0; i < MAX_RULES && slot < 0 && delay_ms > 0; i++)
		if (!p->rules[i].used)
			slot = i;
	if (slot >= 0) {
		rule_t *r = &p->rules[slot];
		r->used = delay_ms > 0;
		r->node = m.node;
		r->api_key = m.api_key;
		r->delay_ms = delay_ms;
		r->count = count;
		r->release_api = release_api;
		snprintf(r->prefix, sizeof(r->prefix), "%s", pre);
	}
	pthread_mutex_unlock(&p->mu);
	return slot;
}

int kreq_netproxy_delay(kreq_netproxy_t *p, kreq_np_match_t m, int delay_ms, int count)
{
	return set_rule(p, m, delay_ms, count, -1);
}

int kreq_netproxy_hold(kreq_netproxy_t *p, kreq_np_match_t m, int release_api, int max_ms,
                       int count)
{
	return set_rule(p, m, max_ms, count, release_api);
}

void kreq_netproxy_clear_delays(kreq_netproxy_t *p)
{
	pthread_mutex_lock(&p->mu);
	memset(p->rules, 0, sizeof(p->rules));
	pthread_mutex_unlock(&p->mu);
}

int kreq_netproxy_drop(kreq_netproxy_t *p, kreq_np_match_t m)
{
	return post(p, OP_DROP, m);
}

int kreq_netproxy_partition(kreq_netproxy_t *p, kreq_np_match_t m)
{
	return post(p, OP_PARTITION, m);
}

void kreq_netproxy_partition_at(kreq_netproxy_t *p, kreq_np_match_t m)
{
	post(p, OP_ARM, m);
}

void kreq_netproxy_heal(kreq_netproxy_t *p)
{
	post(p, OP_HEAL, (kreq_np_match_t){0, NULL, -1});
}

int64_t kreq_netproxy_pending(kreq_netproxy_t *p)
{
	pthread_mutex_lock(&p->mu);
	int64_t q = p->queued;
	pthread_mutex_unlock(&p->mu);
	return q;
}

void kreq_netproxy_stats(kreq_netproxy_t *p, kreq_np_stats_t *st)
{
	pthread_mutex_lock(&p->mu);
	*st = p->st;
	pthread_mutex_unlock(&p->mu);
}
