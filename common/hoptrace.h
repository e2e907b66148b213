/* hoptrace.h — where one call's time goes, hop by hop (docs/PERFORMANCE.md,
 * "The transactional call, hop by hop").
 *
 * Built only with -DKREQ_HOPTRACE=ON (CMake): each hop stores the monotonic
 * time it was first reached in one global slot, and bench_roundtrip, which
 * makes one call at a time, reads and clears the slots after each call. One
 * call in flight is the only case where "first reached" names that call's
 * hop, which is why nothing more (a ring, per-call ids) is kept. Without the
 * option every kreq__hop() compiles to nothing. */
#ifndef KREQ_COMMON_HOPTRACE_H
#define KREQ_COMMON_HOPTRACE_H

#include <stdint.h>

#define KREQ__HOPS(X)                                                                              \
	X(CALL, "client: call made, request handed to librdkafka")                                 \
	X(REQ_ACKED, "client: request's delivery report (Kafka broker has it)")                    \
	X(W_RECV, "worker: request record polled from its consumer")                               \
	X(W_BEGUN, "worker: rd_kafka_begin_transaction returned")                                  \
	X(W_OPENED, "worker: request decoded and verified")                                        \
	X(W_HANDLER, "worker: handler called")                                                     \
	X(W_SEALED, "worker: reply sealed, handed to rd_kafka_producev")                           \
	X(W_REPLY, "worker: handler done, reply produced (librdkafka queue)")                      \
	X(W_RESULT, "worker: result record produced")                                              \
	X(W_COMMIT, "worker: commit starts (send_offsets_to_transaction)")                         \
	X(W_DELIVERED, "worker: first delivery report (transactional: the reply's)")               \
	X(W_COMMITTED, "worker: commit_transaction returned")                                      \
	X(C_REPLY, "client: reply record polled from the reply consumer")                          \
	X(C_SETTLED, "client: reply verified, future being settled")                               \
	X(WOKE, "caller: kreq_future_wait returned")

enum {
#define KREQ__HOP_ENUM(name, what) KREQ__HOP_##name,
	KREQ__HOPS(KREQ__HOP_ENUM)
#undef KREQ__HOP_ENUM
	    KREQ__HOP_N
};

#ifdef KREQ_HOPTRACE
#include <stdatomic.h>
extern _Atomic int64_t kreq__hop_ns[KREQ__HOP_N];
int64_t kreq__mono_ns(void);
#define kreq__hop(name)                                                                            \
	do {                                                                                       \
		int64_t kreq__hop_zero = 0;                                                        \
		atomic_compare_exchange_strong(&kreq__hop_ns[KREQ__HOP_##name], &kreq__hop_zero,   \
		                               kreq__mono_ns());                                   \
	} while (0)
#else
#define kreq__hop(name) ((void)0)
#endif

#endif
