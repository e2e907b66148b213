/*
 * options.c — what the user asks for: the client's configuration, read
 * once into the client, and the per-call options (kreq_call_opts_*).
 *
 * Why a file of its own: every property the client reads is read here,
 * once, when the client is made, and checked with an error naming the
 * cause; the rest of the client reads plain fields of kreq_client_t and
 * never the conf table. Calls no other file of the client.
 */
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"
#include "common/conf.h"
#include "common/internal.h"

/* Workers drop a request that is not on the partition its idempotency key
 * maps to with Kafka's murmur2 (docs/protocol.md section 7), so the
 * producer's partitioner is not the user's to change. */
static int check_partitioner(const kreq_client_t *c, char *errstr, size_t errstr_size)
{
	char v[64] = "";
	size_t n = sizeof(v);
	int err = kreq_conf_get(c->conf, "kafka.partitioner", v, &n);
	if (err == KREQ_ENOENT || (!err && (!strcmp(v, "murmur2_random") || !strcmp(v, "murmur2"))))
		return KREQ_OK;
	return kreq__err(errstr, errstr_size, KREQ_ECONF,
	                 "kafka.partitioner=%s: requests must be partitioned by Kafka's murmur2 of "
	                 "their idempotency key (workers drop a request on any other partition); "
	                 "remove the setting",
	                 err ? "(too long)" : v);
}

int kreq__client_read_conf(kreq_client_t *c, char *errstr, size_t errstr_size)
{
	const kreq_conf_t *cf = c->conf;
	const char *want = kreq__conf_str(cf, KREQ__P_SIGNING_KEY_ID);
	const char *have = kreq_keyring_signing_key(c->kr);
	if (*want && strcmp(want, have))
		return kreq__err(errstr, errstr_size, KREQ_ECONF,
		                 "signing.key.id is %s but the keyring signs with %s "
		                 "(kreq_keyring_set_signing_key())",
		                 want, have);
	kreq__limits_from_conf(&c->lim, cf);
	int err = kreq__limits_check(cf, errstr, errstr_size);
	if (err)
		return err;
	snprintf(c->client_id, sizeof(c->client_id), "%s", kreq__conf_str(cf, KREQ__P_CLIENT_ID));
	snprintf(c->topic_prefix, sizeof(c->topic_prefix), "%s",
	         kreq__conf_str(cf, KREQ__P_TOPIC_PREFIX));
	const char *rt = kreq__conf_str(cf, KREQ__P_REPLY_TOPIC);
	int n = *rt ? snprintf(c->reply_topic, sizeof(c->reply_topic), "%s", rt)
	            : snprintf(c->reply_topic, sizeof(c->reply_topic), "%s.reply.%s",
	                       c->topic_prefix, c->client_id);
	if (n >= (int)sizeof(c->reply_topic) ||
	    strspn(c->reply_topic, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	                           "0123456789._-") != strlen(c->reply_topic))
		return kreq__err(errstr, errstr_size, KREQ_ECONF,
		                 "reply topic \"%s\" is not a valid Kafka topic name (check "
		                 "client.id and topic.prefix)",
		                 c->reply_topic);
	int64_t p = kreq__conf_int(cf, KREQ__P_REPLY_PARTITION);
	c->reply_partition = p < 0 ? 0 : (int32_t)p;
	c->request_timeout_ms = kreq__conf_int(cf, KREQ__P_REQUEST_TIMEOUT_MS);
	c->attempt_timeout_ms = kreq__conf_int(cf, KREQ__P_RETRY_ATTEMPT_TIMEOUT_MS);
	c->backoff_ms = kreq__conf_int(cf, KREQ__P_RETRY_BACKOFF_MS);
	c->backoff_max_ms = kreq__conf_int(cf, KREQ__P_RETRY_BACKOFF_MAX_MS);
	c->max_attempts = kreq__conf_int(cf, KREQ__P_RETRY_MAX_ATTEMPTS);
	c->max_in_flight = kreq__conf_int(cf, KREQ__P_MAX_IN_FLIGHT);
	c->bp_wait_ms = kreq__conf_int(cf, KREQ__P_BACKPRESSURE_WAIT_MS);
	c->unavailable_after_ms = kreq__conf_int(cf, KREQ__P_UNAVAILABLE_AFTER_MS);
	c->slow_in_flight = kreq__conf_int(cf, KREQ__P_SLOW_REPORT_IN_FLIGHT);
	c->slow_age_ms = kreq__conf_int(cf, KREQ__P_SLOW_REPORT_AGE_MS);
	c->slow_interval_ms = kreq__conf_int(cf, KREQ__P_SLOW_REPORT_INTERVAL_MS);
	c->slow_entries = kreq__conf_int(cf, KREQ__P_SLOW_REPORT_ENTRIES);
	size_t sz = 0;
	if (kreq_conf_get(cf, "kafka.bootstrap.servers", NULL, &sz) != KREQ_OK)
		return kreq__err(errstr, errstr_size, KREQ_ECONF,
		                 "kafka.bootstrap.servers is not set");
	return check_partitioner(c, errstr, errstr_size);
}

/* ---- options ------------------------------------------------------------ */

kreq_call_opts_t *kreq_call_opts_new(void)
{
	return calloc(1, sizeof(kreq_call_opts_t));
}

void kreq_call_opts_destroy(kreq_call_opts_t *o)
{
	free(o);
}

int kreq_call_opts_set_timeout(kreq_call_opts_t *o, int64_t timeout_ms)
{
	if (!o || timeout_ms < 1 || timeout_ms > 86400000)
		return KREQ_EINVAL;
	o->timeout_ms = timeout_ms;
	return KREQ_OK;
}

int kreq_call_opts_set_deadline(kreq_call_opts_t *o, int64_t deadline_ms)
{
	if (!o || deadline_ms <= 0)
		return KREQ_EINVAL;
	o->deadline_ms = deadline_ms;
	return KREQ_OK;
}

int kreq_call_opts_set_idempotency_key(kreq_call_opts_t *o, const void *key, size_t len)
{
	if (!o || !key || len == 0 || len > KREQ__IDEM_KEY_MAX)
		return KREQ_EINVAL;
	memcpy(o->idem, key, len);
	o->idem_len = len;
	return KREQ_OK;
}

static bool is_hex(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

int kreq_call_opts_set_notify(kreq_call_opts_t *o, bool notify)
{
	if (!o)
		return KREQ_EINVAL;
	o->notify = notify;
	return KREQ_OK;
}

int kreq_call_opts_set_traceparent(kreq_call_opts_t *o, const char *tp)
{
	/* version "00": 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags> */
	if (!o || !tp || strlen(tp) != 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-' ||
	    !is_hex(tp, 2) || !is_hex(tp + 3, 32) || !is_hex(tp + 36, 16) || !is_hex(tp + 53, 2) ||
	    strspn(tp + 3, "0") >= 32 || strspn(tp + 36, "0") >= 16)
		return KREQ_EINVAL;
	memcpy(o->traceparent, tp, 56);
	return KREQ_OK;
}
