/*
 * loop_int.h — the serving loop's own modules, below loop.c (loop thread
 * only): the per-partition state (parts.c), producing replies and results
 * (reply.c), the end of a request's life (complete.c) and one consumed
 * record (record.c). Each calls only the ones listed before it:
 * loop.c -> record.c -> complete.c -> reply.c -> parts.c.
 */
#ifndef KREQ_BROKER_LOOP_INT_H
#define KREQ_BROKER_LOOP_INT_H

#include "broker/worker/worker_int.h"

/* parts.c */
/* A new partition state of a new incarnation; NULL when out of memory. */
kreq__part_t *kreq__part_new(kreq_worker_t *s, int32_t id);
/* Drops partition id's state (if any); what still runs for it is flagged
 * cancelled and its completion discarded (the record is redone). */
void kreq__part_drop(kreq_worker_t *s, int32_t id);
/* Partition id's state, NULL when not assigned. */
kreq__part_t *kreq__part_get(kreq_worker_t *s, int32_t id);

/* reply.c */
/* Light mode: the delivery record that holds back the offset of the
 * record at seq until its output is delivered; NULL in transactional mode
 * (or out of memory). */
kreq__dr_t *kreq__dr_opaque(kreq_worker_t *s, kreq__part_t *pt, uint64_t seq);
/* Seals and produces one reply to t, issued at now (ms). */
void kreq__send_reply(kreq_worker_t *s, kreq__part_t *pt, const kreq__target_t *t,
                      const ProtobufCBinaryData *idem, int32_t status, const void *payload,
                      size_t len, const char *error, bool from_dedup, int64_t now);
/* Seals and produces r's Result (expiring at expires) to the results topic. */
void kreq__store_result(kreq_worker_t *s, kreq__part_t *pt, kreq_request_t *r, int64_t now,
                        int64_t expires);
/* The record at seq is finished: its offset may pass (offsets.h). */
void kreq__slot_complete(kreq__part_t *pt, uint64_t seq);

/* complete.c */
/* Settles a finished request (or frees a stale one) and frees it. */
void kreq__apply_completion(kreq_worker_t *s, kreq_request_t *r, int64_t now);
/* Answers status 2 for the requests past deadline + worker.handler.grace.ms. */
void kreq__expire_overdue(kreq_worker_t *s);
/* Applies the completions the handlers queued; whether there were any. */
bool kreq__process_completions(kreq_worker_t *s);

/* record.c */
/* Executes kreq__decide()'s decision for one consumed record. */
void kreq__handle_record(kreq_worker_t *s, const rd_kafka_message_t *m);

#endif
