/*
 * client.c — the client's life: kreq_client_new(), the service thread,
 * and kreq_client_destroy().
 *
 * Design notes
 * - One service thread does all Kafka and timer work: librdkafka's reply
 *   queue and the producer's main queue signal one eventfd (io-event), as do
 *   callers that arm a timer earlier than the thread's planned wake-up, and
 *   the thread sleeps in poll() until the earliest of those. No timer or
 *   thread per call. Each turn it delivers replies (reply.c), serves
 *   delivery reports and errors (transport.c), fires timers (retry.c),
 *   fails what is pending while Kafka is unreachable too long, and logs
 *   the slow-request report.
 * - Start and stop are in an order that no thread ever sees a half-made or
 *   half-freed client: the health thread (which settles calls) stops first,
 *   then the service thread, then the admin socket (which walks the table);
 *   only then is every call still pending settled "closed", and freed.
 * This file sits on top: it calls the others and none of them calls it.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "client/admin.h"
#include "client/client_int.h"
#include "client/health.h"
#include "common/conf.h"
#include "common/internal.h"

#define MAX_SLEEP_MS 100

/* While all Kafka brokers are down, fail what is pending once past the
 * threshold. Recovery is noticed by transport.c's statistics callback, so
 * the service thread never blocks on a probe. */
static void check_unavailable(kreq_client_t *c)
{
	if (kreq__kafka_unavailable(c))
		kreq__settle_all(c, KREQ_EUNAVAILABLE,
		                 "Kafka unreachable for longer than unavailable.after.ms",
		                 KREQ__OUT_UNAVAILABLE);
}

/* ---- slow-request report ------------------------------------------------ */

static void log_slow(kreq_client_t *c, size_t in_flight, const kreq__pending_row_t *rows, size_t n)
{
	int64_t now_ns = kreq__mono_ns();
	kreq__log(c->conf, 4, "client", "slow requests: %zu in flight; the %zu oldest:", in_flight,
	          n);
	for (size_t i = 0; i < n; i++) {
		char id[33];
		for (int j = 0; j < 16; j++)
			snprintf(id + 2 * j, 3, "%02x", rows[i].corr_id[j]);
		kreq__log(c->conf, 4, "client", "  %s %s age %lld ms, %lld ms left, attempt %u", id,
		          rows[i].method, (long long)((now_ns - rows[i].start_ns) / 1000000),
		          (long long)(rows[i].deadline_mono_ms - now_ns / 1000000),
		          rows[i].attempt);
	}
}

/* Once a second: if too many calls are pending or the oldest is too old,
 * log the oldest few, at most once per slow.report.interval.ms. */
static void slow_report(kreq_client_t *c)
{
	int64_t now = kreq__mono_ms();
	if (now < c->next_slow_check_ms || now < c->slow_quiet_until_ms)
		return;
	c->next_slow_check_ms = now + 1000;
	size_t in_flight = kreq_client_in_flight(c);
	bool crowded = c->slow_in_flight > 0 && in_flight >= (size_t)c->slow_in_flight;
	if (in_flight == 0 || (!crowded && c->slow_age_ms == 0))
		return;
	kreq__pending_row_t *rows;
	size_t n = kreq__pending_snapshot(c, (size_t)c->slow_entries, &rows);
	bool old = n > 0 && c->slow_age_ms > 0 &&
	           (kreq__mono_ns() - rows[0].start_ns) / 1000000 >= c->slow_age_ms;
	if (crowded || old) {
		log_slow(c, in_flight, rows, n);
		c->slow_quiet_until_ms = now + c->slow_interval_ms;
	}
	free(rows);
}

/* ---- the service thread ------------------------------------------------- */

static int sleep_ms(kreq_client_t *c)
{
	int64_t now = kreq__mono_ms(), next = kreq__wheel_next_expiry(c->wheel);
	int64_t ms = next == INT64_MAX ? MAX_SLEEP_MS : next - now;
	if (ms < 0)
		ms = 0;
	if (ms > MAX_SLEEP_MS)
		ms = MAX_SLEEP_MS;
	atomic_store(&c->sleep_until_ms, now + ms);
	return (int)ms;
}

static void *service_main(void *arg)
{
	kreq_client_t *c = arg;
	struct pollfd pfd = {.fd = c->wake_fd, .events = POLLIN};
	while (!atomic_load(&c->stopping)) {
		int ms = sleep_ms(c);
		/* re-check after publishing sleep_until: an earlier timer armed in
		 * between has either been seen by sleep_ms() or written wake_fd */
		if (poll(&pfd, 1, ms) > 0) {
			uint64_t v;
			ssize_t n = read(c->wake_fd, &v, sizeof(v));
			(void)n;
		}
		atomic_store(&c->sleep_until_ms, INT64_MIN); /* awake: no need to wake us */
		kreq__drain_replies(c);
		rd_kafka_poll(c->producer, 0);
		rd_kafka_poll(c->consumer, 0); /* its error events, never let them pile up */
		kreq__expire_timers(c);
		check_unavailable(c);
		slow_report(c);
	}
	return NULL;
}

/* ---- construction ------------------------------------------------------- */

static void client_free(kreq_client_t *c)
{
	kreq__adminsock_stop(c->admin);
	if (c->reply_rkt) {
		rd_kafka_consume_stop(c->reply_rkt, c->reply_partition);
		rd_kafka_topic_destroy(c->reply_rkt);
	}
	if (c->reply_q)
		rd_kafka_queue_destroy(c->reply_q);
	if (c->consumer)
		rd_kafka_destroy(c->consumer);
	if (c->producer) {
		rd_kafka_purge(c->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
		rd_kafka_flush(c->producer, 5000); /* serves the delivery reports */
		rd_kafka_destroy(c->producer);
	}
	for (size_t i = 0; i < c->held_len; i++) { /* never handed to librdkafka */
		free(c->held[i].buf);
		kreq_future_release(c->held[i].f);
	}
	free(c->held);
	free(c->held_spare);
	pthread_mutex_destroy(&c->out_mu);
	if (c->wake_fd >= 0)
		close(c->wake_fd);
	if (c->wheel)
		kreq__wheel_destroy(c->wheel);
	if (c->table)
		kreq__table_destroy(c->table);
	pthread_cond_destroy(&c->bp_cv);
	pthread_mutex_destroy(&c->bp_mu);
	if (c->done_fd >= 0) {
		kreq__completions_drop(c);
		close(c->done_fd);
	}
	pthread_mutex_destroy(&c->done_mu);
	free(c->done_ring);
	kreq_keyring_release(c->kr);
	kreq_conf_destroy(c->conf);
	free(c);
}

static int client_start(kreq_client_t *c, char *errstr, size_t errstr_size)
{
	int64_t until = kreq__mono_ms() + kreq__conf_int(c->conf, KREQ__P_CLIENT_START_TIMEOUT_MS);
	c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	c->fowner.cancel_hook = kreq__call_cancel;
	c->table = kreq__table_new(1024, kreq__call_key_offset());
	c->wheel = kreq__wheel_new(kreq__mono_ms());
	if (c->wake_fd < 0 || c->done_fd < 0 || !c->table || !c->wheel)
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of resources: %s",
		                 strerror(errno));
	c->producer = kreq__transport_new(c, RD_KAFKA_PRODUCER, errstr, errstr_size);
	if (!c->producer)
		return KREQ_ECONF;
	c->consumer = kreq__transport_new(c, RD_KAFKA_CONSUMER, errstr, errstr_size);
	if (!c->consumer)
		return KREQ_ECONF;
	int err = kreq__reply_start(c, until, errstr, errstr_size);
	const char *admin = kreq__conf_str(c->conf, KREQ__P_ADMIN_SOCKET);
	if (!err && *admin)
		err = kreq__admin_start(c, admin, &c->admin, errstr, errstr_size);
	if (!err && pthread_create(&c->thread, NULL, service_main, c) != 0)
		err = kreq__err(errstr, errstr_size, KREQ_ENOMEM, "cannot start service thread");
	else if (!err)
		pthread_setname_np(c->thread, "kreq:client");
	int64_t check_ms = kreq__conf_int(c->conf, KREQ__P_SERVICE_CHECK_MS);
	if (!err && !(c->health = kreq__health_start(c, check_ms))) {
		atomic_store(&c->stopping, true); /* the service thread is running: stop it */
		kreq__client_wake(c);
		pthread_join(c->thread, NULL);
		err = kreq__err(errstr, errstr_size, KREQ_ENOMEM, "cannot start health thread");
	}
	return err;
}

kreq_client_t *kreq_client_new(const kreq_conf_t *conf, kreq_keyring_t *kr, char *errstr,
                               size_t errstr_size)
{
	if (!conf || !kr) {
		kreq__err(errstr, errstr_size, KREQ_EINVAL, "conf and keyring are required");
		return NULL;
	}
	if (!kreq_keyring_signing_key(kr)) {
		kreq__err(errstr, errstr_size, KREQ_ENOSIGNKEY, "the keyring has no signing key");
		return NULL;
	}
	kreq__call_ids_init();
	kreq_client_t *c = calloc(1, sizeof(*c));
	if (!c || !(c->conf = kreq_conf_dup(conf))) {
		free(c);
		kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
		return NULL;
	}
	c->kr = kreq_keyring_retain(kr);
	c->wake_fd = -1;
	c->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK | EFD_SEMAPHORE);
	pthread_mutex_init(&c->done_mu, NULL);
	pthread_mutex_init(&c->out_mu, NULL);
	pthread_mutex_init(&c->bp_mu, NULL);
	pthread_cond_init(&c->bp_cv, NULL);
	atomic_init(&c->sleep_until_ms, INT64_MIN);
	if (kreq__client_read_conf(c, errstr, errstr_size) ||
	    client_start(c, errstr, errstr_size)) {
		client_free(c);
		return NULL;
	}
	return c;
}

void kreq_client_destroy(kreq_client_t *c)
{
	if (!c)
		return;
	atomic_store(&c->closing, true);
	kreq__health_stop(c->health); /* may be settling calls: before anything else */
	c->health = NULL;
	atomic_store(&c->stopping, true);
	kreq__client_wake(c);
	pthread_join(c->thread, NULL);
	kreq__adminsock_stop(c->admin); /* no snapshot may walk the table from here on */
	c->admin = NULL;
	kreq__settle_all(c, KREQ_ECLOSED, "client destroyed", KREQ__OUT_CLOSED);
	client_free(c);
}

const char *kreq_client_reply_topic(const kreq_client_t *c, int32_t *partition)
{
	if (!c)
		return NULL;
	if (partition)
		*partition = c->reply_partition;
	return c->reply_topic;
}
