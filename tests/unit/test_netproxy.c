/*
 * test_netproxy.c — the network-fault test's TCP proxy on its own
 * (tests/support/netproxy.c): a tiny server speaking Kafka's request
 * framing (it records each request and echoes it) behind the proxy. Checks
 * the header parse, plain forwarding, a delay by client.id prefix and
 * api_key (and only for those), a delayed request delivered after its
 * client closed, drop (RST) and partition (blackhole, reset on heal).
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "netproxy.h"
#include "testsupport.h"

/* ---- the "Kafka" server: records and echoes every request ----------------- */

#define MAX_SEEN 64

typedef struct {
	char cid[64];
	int api;
	int64_t at_ms;
} seen_t;

static int srv_fd, srv_port;
static pthread_t srv_thread;
static atomic_bool srv_stop;
static pthread_mutex_t seen_mu = PTHREAD_MUTEX_INITIALIZER;
static seen_t seen[MAX_SEEN];
static int nseen;

static int listen_any(int *port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(listen(fd, 16), 0);
	socklen_t l = sizeof(a);
	getsockname(fd, (struct sockaddr *)&a, &l);
	*port = ntohs(a.sin_port);
	return fd;
}

static void *srv_main(void *arg)
{
	(void)arg;
	struct pollfd pf[32];
	uint8_t buf[32][512];
	size_t have[32];
	int n = 1;
	pf[0] = (struct pollfd){srv_fd, POLLIN, 0};
	while (!atomic_load(&srv_stop)) {
		if (poll(pf, (nfds_t)n, 20) <= 0)
			continue;
		if ((pf[0].revents & POLLIN) && n < 32) {
			int c = accept(srv_fd, NULL, NULL);
			if (c >= 0) {
				have[n] = 0;
				pf[n++] = (struct pollfd){c, POLLIN, 0};
			}
		}
		for (int i = 1; i < n; i++) {
			if (pf[i].fd < 0 || !pf[i].revents)
				continue;
			ssize_t r = read(pf[i].fd, buf[i] + have[i], sizeof(buf[i]) - have[i]);
			if (r <= 0) {
				close(pf[i].fd);
				pf[i].fd = -1;
				continue;
			}
			have[i] += (size_t)r;
			for (;;) { /* every complete request: record, echo */
				int api;
				char cid[64];
				size_t need =
				    kreq_np_parse_header(buf[i], have[i], &api, cid, sizeof(cid));
				if (need > have[i] || have[i] < 4)
					break;
				size_t total = 4 + ((size_t)buf[i][2] << 8 | buf[i][3]);
				if (have[i] < total)
					break;
				pthread_mutex_lock(&seen_mu);
				if (nseen < MAX_SEEN) {
					snprintf(seen[nseen].cid, sizeof(seen[0].cid), "%s", cid);
					seen[nseen].api = api;
					seen[nseen++].at_ms = kreq_test_now_ms();
				}
				pthread_mutex_unlock(&seen_mu);
				if (write(pf[i].fd, buf[i], total) != (ssize_t)total) {
				}
				memmove(buf[i], buf[i] + total, have[i] - total);
				have[i] -= total;
			}
		}
	}
	for (int i = 1; i < n; i++)
		if (pf[i].fd >= 0)
			close(pf[i].fd);
	return NULL;
}

static kreq_netproxy_t *proxy;
static int proxy_port;

static void setup(void)
{
	nseen = 0;
	atomic_store(&srv_stop, false);
	srv_fd = listen_any(&srv_port);
	ck_assert_int_eq(pthread_create(&srv_thread, NULL, srv_main, NULL), 0);
	int tmp = listen_any(&proxy_port); /* a free port for the proxy */
	close(tmp);
	char target[64];
	snprintf(target, sizeof(target), "127.0.0.1:%d", srv_port);
	const char *targets[] = {target};
	proxy = kreq_netproxy_start(1, &proxy_port, targets);
	ck_assert_ptr_nonnull(proxy);
}

static void teardown(void)
{
	kreq_netproxy_stop(proxy);
	atomic_store(&srv_stop, true);
	pthread_join(srv_thread, NULL);
	close(srv_fd);
}

/* ---- the client side ---------------------------------------------------- */

/* A request: size, api_key, api_version 3, correlation id 7, client_id,
 * and a body of blen bytes 'x'. */
static size_t frame(uint8_t *out, int api, const char *cid, size_t blen)
{
	size_t cl = strlen(cid), size = 10 + cl + blen;
	uint8_t *p = out;
	*p++ = 0, *p++ = 0, *p++ = (uint8_t)(size >> 8), *p++ = (uint8_t)size;
	*p++ = 0, *p++ = (uint8_t)api, *p++ = 0, *p++ = 3;
	*p++ = 0, *p++ = 0, *p++ = 0, *p++ = 7;
	*p++ = (uint8_t)(cl >> 8), *p++ = (uint8_t)cl;
	memcpy(p, cid, cl);
	memset(p + cl, 'x', blen);
	return 4 + size;
}

static int connect_proxy(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)proxy_port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	return fd;
}

static void send_req(int fd, int api, const char *cid)
{
	uint8_t b[256];
	size_t n = frame(b, api, cid, 20);
	ck_assert_int_eq(write(fd, b, n), (ssize_t)n);
}

/* Reads one echoed request within timeout_ms; returns its round trip in
 * ms, -1 on EOF/reset, -2 on timeout. */
static int64_t echo_ms(int fd, int64_t t0, int timeout_ms)
{
	uint8_t b[256];
	size_t got = 0;
	while (got < 4 || got < 4 + ((size_t)b[2] << 8 | b[3])) {
		struct pollfd p = {fd, POLLIN, 0};
		int64_t left = t0 + timeout_ms - kreq_test_now_ms();
		if (left <= 0 || poll(&p, 1, (int)left) <= 0)
			return -2;
		/* exactly one request: the next one stays in the socket */
		size_t want = got < 4 ? 4 - got : 4 + ((size_t)b[2] << 8 | b[3]) - got;
		ssize_t r = read(fd, b + got, want);
		if (r <= 0)
			return -1;
		got += (size_t)r;
	}
	return kreq_test_now_ms() - t0;
}

static int seen_count(void)
{
	pthread_mutex_lock(&seen_mu);
	int n = nseen;
	pthread_mutex_unlock(&seen_mu);
	return n;
}

/* Waits (up to 5 s) until the proxy has blackholed n connections; returns
 * its stats then. */
static kreq_np_stats_t await_blackholed(int64_t n)
{
	kreq_np_stats_t st;
	int64_t t0 = kreq_test_now_ms();
	for (kreq_netproxy_stats(proxy, &st); st.blackholed < n; kreq_netproxy_stats(proxy, &st)) {
		ck_assert_int_lt(kreq_test_now_ms() - t0, 5000);
		kreq_test_poll_pause();
	}
	return st;
}

/* ---- tests ------------------------------------------------------------------ */

START_TEST(test_parse_header)
{
	uint8_t b[256];
	size_t n = frame(b, 26, "w0-producer", 5);
	int api = 99;
	char cid[8];
	ck_assert_uint_eq(kreq_np_parse_header(b, 2, &api, cid, sizeof(cid)), 4);
	ck_assert_uint_eq(kreq_np_parse_header(b, 4, &api, cid, sizeof(cid)), 14);
	ck_assert_uint_eq(kreq_np_parse_header(b, 14, &api, cid, sizeof(cid)), 25);
	ck_assert_int_eq(api, 99); /* not set until complete */
	ck_assert_uint_eq(kreq_np_parse_header(b, n, &api, cid, sizeof(cid)), 25);
	ck_assert_int_eq(api, 26);
	ck_assert_str_eq(cid, "w0-prod"); /* cut to the buffer */
	/* a null client_id (length -1) */
	b[12] = 0xff, b[13] = 0xff;
	ck_assert_uint_eq(kreq_np_parse_header(b, 14, &api, cid, sizeof(cid)), 14);
	ck_assert_str_eq(cid, "");
}
END_TEST

START_TEST(test_forward_and_delay)
{
	int a = connect_proxy(), b = connect_proxy();
	int64_t t0 = kreq_test_now_ms();
	send_req(a, 26, "w0-p");
	ck_assert_int_ge(echo_ms(a, t0, 5000), 0);
	/* only EndTxn (26) of clients "w0*" is held */
	kreq_np_match_t m = {0, "w0", 26};
	ck_assert_int_ge(kreq_netproxy_delay(proxy, m, 600, -1), 0);
	t0 = kreq_test_now_ms();
	send_req(b, 26, "load-1");
	int64_t rb = echo_ms(b, t0, 5000);
	ck_assert_int_ge(rb, 0);
	ck_assert_int_lt(rb, 600);
	t0 = kreq_test_now_ms();
	send_req(a, 0, "w0-p");
	int64_t ra = echo_ms(a, t0, 5000);
	ck_assert_int_ge(ra, 0);
	ck_assert_int_lt(ra, 600);
	t0 = kreq_test_now_ms();
	send_req(a, 26, "w0-p");
	send_req(a, 0, "w0-p"); /* behind it on the same connection */
	ck_assert_int_ge(echo_ms(a, t0, 5000), 600);
	ck_assert_int_ge(echo_ms(a, t0, 5000), 600);
	kreq_np_stats_t st;
	kreq_netproxy_stats(proxy, &st);
	ck_assert_int_eq(st.delayed[26], 1);
	ck_assert_int_eq(st.delayed_total, 1);
	ck_assert_int_eq(st.requests[26], 3);
	ck_assert_int_eq(st.requests[0], 2);
	/* a counted rule: the next one request only */
	kreq_netproxy_clear_delays(proxy);
	ck_assert_int_ge(kreq_netproxy_delay(proxy, (kreq_np_match_t){1, NULL, -1}, 500, 1), 0);
	t0 = kreq_test_now_ms();
	send_req(b, 3, "load-1");
	ck_assert_int_ge(echo_ms(b, t0, 5000), 500);
	t0 = kreq_test_now_ms();
	send_req(b, 3, "load-1");
	ck_assert_int_lt(echo_ms(b, t0, 5000), 500);
	close(a);
	close(b);
}
END_TEST

static bool server_saw(void *arg)
{
	return seen_count() >= *(int *)arg;
}

START_TEST(test_late_after_close)
{
	int a = connect_proxy();
	ck_assert_int_ge(kreq_netproxy_delay(proxy, (kreq_np_match_t){0, "w1", -1}, 700, -1), 0);
	int64_t t0 = kreq_test_now_ms();
	send_req(a, 24, "w1-p");
	/* wait until the proxy holds it, then the client goes away */
	KREQ_TEST_AWAIT(kreq_netproxy_pending(proxy) > 0, 5000);
	close(a);
	int want = 1;
	ck_assert(kreq_test_wait_until(server_saw, &want, 5000));
	ck_assert_int_ge(seen[0].at_ms - t0, 700);
	ck_assert_str_eq(seen[0].cid, "w1-p");
	ck_assert_int_eq(seen[0].api, 24);
	kreq_np_stats_t st;
	kreq_netproxy_stats(proxy, &st);
	ck_assert_int_eq(st.late, 1);
	ck_assert_int_eq(kreq_netproxy_pending(proxy), 0);
}
END_TEST

/* hold: the held EndTxn of client w2 goes right after w2's next
 * AddPartitionsToTxn on another connection, long before max_ms */
START_TEST(test_hold_until_trigger)
{
	int a = connect_proxy(), b = connect_proxy();
	ck_assert_int_ge(kreq_netproxy_hold(proxy, (kreq_np_match_t){0, "w2", 26}, 24, 20000, 1),
	                 0);
	int64_t t0 = kreq_test_now_ms();
	send_req(a, 26, "w2-p");
	KREQ_TEST_AWAIT(kreq_netproxy_pending(proxy) > 0, 5000);
	close(a);                /* the client gave up on it */
	send_req(b, 25, "w2-p"); /* another api: no release */
	ck_assert_int_ge(echo_ms(b, kreq_test_now_ms(), 5000), 0);
	ck_assert_int_gt(kreq_netproxy_pending(proxy), 0);
	send_req(b, 24, "load"); /* another client: no release */
	ck_assert_int_ge(echo_ms(b, kreq_test_now_ms(), 5000), 0);
	ck_assert_int_gt(kreq_netproxy_pending(proxy), 0);
	send_req(b, 24, "w2-p");
	ck_assert_int_ge(echo_ms(b, kreq_test_now_ms(), 5000), 0);
	int want = 4;
	ck_assert(kreq_test_wait_until(server_saw, &want, 5000));
	ck_assert_int_eq(seen[3].api, 26); /* after the trigger */
	ck_assert_int_eq(seen[2].api, 24);
	ck_assert_int_lt(seen[3].at_ms - t0, 10000);
	kreq_np_stats_t st;
	kreq_netproxy_stats(proxy, &st);
	ck_assert_int_eq(st.released, 1);
	ck_assert_int_eq(st.late, 1);
	close(b);
}
END_TEST

START_TEST(test_drop)
{
	int a = connect_proxy(), b = connect_proxy();
	int64_t t0 = kreq_test_now_ms();
	send_req(a, 0, "w0-p");
	send_req(b, 0, "load");
	ck_assert_int_ge(echo_ms(a, t0, 5000), 0);
	ck_assert_int_ge(echo_ms(b, t0, 5000), 0);
	ck_assert_int_eq(kreq_netproxy_drop(proxy, (kreq_np_match_t){0, "w0", -1}), 1);
	ck_assert_int_eq(echo_ms(a, kreq_test_now_ms(), 5000), -1); /* reset */
	t0 = kreq_test_now_ms();
	send_req(b, 0, "load");
	ck_assert_int_ge(echo_ms(b, t0, 5000), 0);
	ck_assert_int_eq(kreq_netproxy_drop(proxy, (kreq_np_match_t){1, NULL, -1}), 1);
	ck_assert_int_eq(echo_ms(b, kreq_test_now_ms(), 5000), -1);
	close(a);
	close(b);
}
END_TEST

START_TEST(test_partition)
{
	int a = connect_proxy(), b = connect_proxy();
	int64_t t0 = kreq_test_now_ms();
	send_req(a, 0, "w0-p");
	send_req(b, 0, "load");
	ck_assert_int_ge(echo_ms(a, t0, 5000), 0);
	ck_assert_int_ge(echo_ms(b, t0, 5000), 0);
	ck_assert_int_eq(kreq_netproxy_partition(proxy, (kreq_np_match_t){0, "w0", -1}), 1);
	/* a new connection of a w0 client is blackholed at its first request */
	int c = connect_proxy();
	send_req(c, 18, "w0-q");
	send_req(a, 0, "w0-p");
	t0 = kreq_test_now_ms();
	send_req(b, 0, "load");
	ck_assert_int_ge(echo_ms(b, t0, 5000), 0);
	await_blackholed(2);
	ck_assert_int_eq(echo_ms(a, kreq_test_now_ms(), 300), -2); /* nothing comes back */
	kreq_netproxy_heal(proxy);
	ck_assert_int_eq(echo_ms(a, kreq_test_now_ms(), 5000), -1); /* torn: reset */
	ck_assert_int_eq(echo_ms(c, kreq_test_now_ms(), 5000), -1);
	pthread_mutex_lock(&seen_mu);
	for (int i = 0; i < nseen; i++)
		ck_assert_msg(seen[i].api != 18, "a blackholed request reached the server");
	int n = nseen;
	pthread_mutex_unlock(&seen_mu);
	ck_assert_int_eq(n, 3); /* a, b, b */
	int d = connect_proxy();
	t0 = kreq_test_now_ms();
	send_req(d, 0, "w0-p");
	ck_assert_int_ge(echo_ms(d, t0, 5000), 0);
	close(a);
	close(b);
	close(c);
	close(d);
}
END_TEST

/* partition_at: w0's connections pass until a request of the armed
 * api_key arrives; that request and everything after it (on every w0
 * connection) is blackholed, other clients pass on. */
START_TEST(test_partition_at)
{
	int a = connect_proxy(), b = connect_proxy(), l = connect_proxy();
	kreq_netproxy_partition_at(proxy, (kreq_np_match_t){0, "w0", 0});
	int64_t t0 = kreq_test_now_ms();
	send_req(a, 18, "w0-p"); /* another api: passes */
	ck_assert_int_ge(echo_ms(a, t0, 5000), 0);
	send_req(b, 3, "w0-q");
	ck_assert_int_ge(echo_ms(b, t0, 5000), 0);
	send_req(l, 0, "load"); /* the api, another client: passes */
	ck_assert_int_ge(echo_ms(l, t0, 5000), 0);
	kreq_np_stats_t st;
	kreq_netproxy_stats(proxy, &st);
	ck_assert_int_eq(st.partition_started_ms, 0);
	send_req(b, 0, "w0-q"); /* the trigger */
	send_req(a, 3, "w0-p");
	st = await_blackholed(2);
	ck_assert_int_gt(st.partition_started_ms, 0);
	ck_assert_int_eq(echo_ms(a, kreq_test_now_ms(), 300), -2);
	ck_assert_int_eq(echo_ms(b, kreq_test_now_ms(), 300), -2);
	send_req(l, 0, "load");
	ck_assert_int_ge(echo_ms(l, kreq_test_now_ms(), 5000), 0);
	pthread_mutex_lock(&seen_mu);
	int n = nseen;
	pthread_mutex_unlock(&seen_mu);
	ck_assert_int_eq(n, 4); /* a, b, load, load: not the trigger nor a's second */
	kreq_netproxy_heal(proxy);
	ck_assert_int_eq(echo_ms(a, kreq_test_now_ms(), 5000), -1); /* torn: reset */
	ck_assert_int_eq(echo_ms(b, kreq_test_now_ms(), 5000), -1);
	close(a);
	close(b);
	close(l);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("netproxy");
	TCase *tc = tcase_create("core");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_parse_header);
	tcase_add_test(tc, test_forward_and_delay);
	tcase_add_test(tc, test_late_after_close);
	tcase_add_test(tc, test_hold_until_trigger);
	tcase_add_test(tc, test_drop);
	tcase_add_test(tc, test_partition);
	tcase_add_test(tc, test_partition_at);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
