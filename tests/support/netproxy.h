/*
 * netproxy.h — a TCP proxy between kreq's workers and the Kafka brokers, for
 * the network-fault test (tests/worker/test_netfault.c, issue 20).
 *
 * One listening port per Kafka broker node forwards to that node (its
 * PROXIED listener, scripts/kafka.sh --proxied-ports, advertised at the
 * proxy's port so that a client bootstrapped through the proxy stays on
 * it). The proxy understands Kafka's request framing (int32 size, int16
 * api_key, int16 api_version, int32 correlation_id, int16-length
 * client_id) on the client-to-Kafka direction, so a fault can target one
 * client (client.id prefix) and one kind of request (api_key). Faults:
 *   - delay: a matching request, and what follows it on that TCP connection,
 *     is held for D ms, then DELIVERED, also when the client closed the
 *     connection meanwhile (a late packet from an old transaction: the
 *     Jepsen scenario that KIP-890 defends against);
 *   - drop: matching connections are reset (RST) at once;
 *   - partition: matching connections, current and new, are blackholed
 *     (bytes in both directions discarded, nothing reset) until lifted;
 *     then they are reset (their streams are torn). It starts at once or
 *     at a matching request (partition_at).
 * Everything runs on one thread of its own (a poll loop); the control
 * functions may be called from any thread. Nothing is forked: start the
 * proxy in the process (the Check test child) that uses it.
 */
#ifndef KREQ_TEST_NETPROXY_H
#define KREQ_TEST_NETPROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KREQ_NP_MAX_NODES 3
#define KREQ_NP_API_MAX   128 /* request counters per api_key below this */

typedef struct kreq_netproxy kreq_netproxy_t;

/* What a fault matches: node (1-based, 0 any), client.id prefix (NULL or
 * "" any; a connection matches once its first request named its
 * client.id), api_key (-1 any; delays only). */
typedef struct {
	int node;
	const char *client_prefix;
	int api_key;
} kreq_np_match_t;

typedef struct {
	int64_t accepted;                  /* connections accepted */
	int64_t requests[KREQ_NP_API_MAX]; /* requests seen, by api_key */
	int64_t delayed[KREQ_NP_API_MAX];  /* requests delayed, by api_key */
	int64_t delayed_total;             /* requests delayed */
	int64_t late;                 /* delayed requests delivered after their client closed */
	int64_t released;             /* held requests released by their trigger (hold) */
	int64_t dropped;              /* connections reset by drop */
	int64_t blackholed;           /* connections blackholed by a partition */
	int64_t partition_started_ms; /* when the last partition started (0: none) */
	/* late EndTxns (delivered after their client closed), by Kafka's
	 * answer: accepted (error 0: it ended whatever transaction of its
	 * producer id and epoch was there) or refused (an error, e.g. the
	 * epoch was fenced) */
	int64_t late_endtxn_accepted, late_endtxn_refused;
} kreq_np_stats_t;

/* Listens on 127.0.0.1:listen_ports[i] and forwards to targets[i]
 * ("127.0.0.1:port") for i < nodes. Returns NULL (said on stderr) when a
 * port cannot be bound. */
kreq_netproxy_t *kreq_netproxy_start(int nodes, const int *listen_ports,
                                     const char *const *targets);

/* Stops the thread, closes everything (delayed bytes not yet due are
 * discarded), frees. NULL is fine. */
void kreq_netproxy_stop(kreq_netproxy_t *p);

/* Delays each matching request by delay_ms (0 removes the rule of that
 * match) for the next count requests (-1: until removed). Returns the rule
 * slot, or -1 when all 8 are taken. */
int kreq_netproxy_delay(kreq_netproxy_t *p, kreq_np_match_t m, int delay_ms, int count);

/* The Jepsen shape, made deterministic: each matching request (the next
 * count; -1 all) is held until its client sends a request of api_key
 * release_api on ANOTHER connection, and delivered RELEASE_LAG_MS (50 ms)
 * after that one; at most max_ms. E.g. an EndTxn held until the
 * AddPartitionsToTxn of the producer's next transaction: the late EndTxn
 * then lands while that transaction is ongoing. Shares the 8 rule slots
 * (and clear_delays) with kreq_netproxy_delay. */
int kreq_netproxy_hold(kreq_netproxy_t *p, kreq_np_match_t m, int release_api, int max_ms,
                       int count);

/* Removes every delay rule (bytes already held are still delivered). */
void kreq_netproxy_clear_delays(kreq_netproxy_t *p);

/* Resets every matching connection now; returns how many. */
int kreq_netproxy_drop(kreq_netproxy_t *p, kreq_np_match_t m);

/* Blackholes matching connections until kreq_netproxy_heal(). Returns the
 * number of current connections blackholed. One partition at a time. */
int kreq_netproxy_partition(kreq_netproxy_t *p, kreq_np_match_t m);
/* Arms the same partition to start at the next request of m.api_key from
 * a matching connection (that request is the first one blackholed):
 * e.g. a worker cut off in the middle of a transaction's writes. The heal
 * disarms it; stats' partition_started_ms says when it started. */
void kreq_netproxy_partition_at(kreq_netproxy_t *p, kreq_np_match_t m);
void kreq_netproxy_heal(kreq_netproxy_t *p);

/* Delayed bytes not yet delivered (all connections). */
int64_t kreq_netproxy_pending(kreq_netproxy_t *p);

void kreq_netproxy_stats(kreq_netproxy_t *p, kreq_np_stats_t *st);

/* Kafka request framing (exposed for the unit test): from the first n
 * bytes of a request, its api_key and client_id (NUL-terminated, cut to
 * idsize-1). Returns the bytes the header needs (> n: read more; the
 * outputs are set only when <= n). */
size_t kreq_np_parse_header(const uint8_t *buf, size_t n, int *api_key, char *client_id,
                            size_t idsize);

#endif
