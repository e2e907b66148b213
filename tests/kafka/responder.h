/*
 * responder.h — a minimal request handler for client tests, standing in for
 * kreqd until it exists. It consumes <prefix>.<svc>.requests from the
 * beginning, verifies each request with its keyring and answers according to
 * the method's last component:
 *   echo       reply status 0 with the request payload
 *   fail       reply status 101 with error text "handler failed"
 *   drop1      ignore attempt 1, echo attempt 2 and later
 *   never      never reply
 *   slow       echo after delay_ms
 *   forge      reply signed with a key the client does not know
 *   wrongidem  reply correctly signed but for another idempotency key
 *   dup        echo twice
 *   rejected   reply with kreq status 5 (method not permitted)
 * It counts requests per method and the Cancel messages it sees.
 */
#ifndef KREQ_TEST_RESPONDER_H
#define KREQ_TEST_RESPONDER_H

#include <stdatomic.h>

#include "kreq/keyring.h"

typedef struct responder responder_t;

/* Starts a responder thread on topic (created by the caller). */
responder_t *responder_start(const char *bootstrap, const char *topic, kreq_keyring_t *kr,
                             int delay_ms);
void responder_stop(responder_t *r);

int responder_requests(responder_t *r, const char *method_suffix);
int responder_cancels(responder_t *r);
/* Highest attempt number seen for method_suffix. */
int responder_max_attempt(responder_t *r, const char *method_suffix);

#endif
