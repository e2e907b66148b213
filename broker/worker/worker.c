/*
 * worker.c — the public worker API: construction and validation,
 * registration, run/stop, keyring replacement, metrics and the in-progress
 * listing. The loop itself is loop.c; Kafka is kafka.c; handlers see
 * request.c.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <jansson.h>

#include "broker/worker/worker_int.h"
#include "common/conf.h"
#include "common/internal.h"

static char *fmt(const char *f, const char *a, const char *b, const char *c)
{
	char *out = NULL;
	if (asprintf(&out, f, a, b, c) < 0)
		return NULL;
	return out;
}

static int parse_allow(kreq_worker_t *s, const char *spec, const char *prefix)
{
	char *dflt = NULL;
	if (!*spec && !(spec = dflt = fmt("%s.reply.*%s%s", prefix, "", "")))
		return KREQ_ENOMEM;
	char *copy = strdup(spec), *save = NULL;
	int err = copy ? KREQ_OK : KREQ_ENOMEM;
	for (char *tok = copy ? strtok_r(copy, ",", &save) : NULL; tok && !err;
	     tok = strtok_r(NULL, ",", &save)) {
		char **a = realloc(s->allow, (s->nallow + 1) * sizeof(*a));
		if (!a || !(a[s->nallow] = strdup(tok))) {
			if (a)
				s->allow = a;
			err = KREQ_ENOMEM;
			break;
		}
		s->allow = a;
		s->nallow++;
	}
	free(copy);
	free(dflt);
	return err;
}

/* worker.mode, the signing key and the Kafka bootstrap: what the worker is. */
static int read_mode_and_keys(kreq_worker_t *s, char *errstr, size_t errstr_size)
{
	const kreq_conf_t *c = s->conf;
	const char *mode = kreq__conf_str(c, KREQ__P_WORKER_MODE);
	if (!strcmp(mode, "transactional"))
		s->txn_mode = true;
	else if (strcmp(mode, "light"))
		return kreq__err(errstr, errstr_size, KREQ_ECONF,
		                 "worker.mode must be transactional or light, not \"%s\"", mode);
	const char *want = kreq__conf_str(c, KREQ__P_SIGNING_KEY_ID);
	const char *have = kreq_keyring_signing_key(s->kr);
	if (!have)
		return kreq__err(errstr, errstr_size, KREQ_ENOSIGNKEY,
		                 "the keyring has no signing key (replies are signed)");
	if (*want && strcmp(want, have))
		return kreq__err(errstr, errstr_size, KREQ_ECONF,
		                 "signing.key.id is %s but the keyring signs with %s "
		                 "(kreq_keyring_set_signing_key())",
		                 want, have);
	const char *signers = kreq__conf_str(c, KREQ__P_WORKER_RESULT_SIGNERS);
	if (*signers && !kreq__signer_listed(signers, have))
		return kreq__err(errstr, errstr_size, KREQ_ECONF,
		                 "worker.result.signers (%s) does not list the signing key %s: the "
		                 "worker's own results would be ignored by the dedup rebuild",
		                 signers, have);
	size_t bs_size = 0;
	if (kreq_conf_get(c, "kafka.bootstrap.servers", NULL, &bs_size) == KREQ_ENOENT)
		return kreq__err(errstr, errstr_size, KREQ_ECONF,
		                 "kafka.bootstrap.servers is not set");
	return KREQ_OK;
}

/* Sizes, times and rates, with the one rule that ties three of them. */
static int read_limits(kreq_worker_t *s, char *errstr, size_t errstr_size)
{
	const kreq_conf_t *c = s->conf;
	kreq__limits_from_conf(&s->lim, c);
	int err = kreq__limits_check(c, errstr, errstr_size);
	if (err)
		return err;
	s->retention_ms = kreq__conf_int(c, KREQ__P_WORKER_DEDUP_RETENTION_MS);
	s->max_deadline_ms = kreq__conf_int(c, KREQ__P_WORKER_MAX_DEADLINE_MS);
	s->max_age_ms = kreq__conf_int(c, KREQ__P_WORKER_MAX_REQUEST_AGE_MS);
	if (s->retention_ms < s->max_deadline_ms + s->max_age_ms)
		return kreq__err(
		    errstr, errstr_size, KREQ_ECONF,
		    "worker.dedup.retention.ms (%lld) must be at least "
		    "worker.max.deadline.ms (%lld) + worker.max.request.age.ms (%lld): "
		    "a replay accepted after its stored result expired would run again",
		    (long long)s->retention_ms, (long long)s->max_deadline_ms,
		    (long long)s->max_age_ms);
	s->dd_max_bytes = (size_t)kreq__conf_int(c, KREQ__P_WORKER_DEDUP_MAX_BYTES);
	s->dd_key_max_bytes = (size_t)kreq__conf_int(c, KREQ__P_WORKER_DEDUP_KEY_MAX_BYTES);
	s->min_budget_ms = kreq__conf_int(c, KREQ__P_WORKER_MIN_BUDGET_MS);
	s->grace_ms = kreq__conf_int(c, KREQ__P_WORKER_SHUTDOWN_GRACE_MS);
	s->batch_ms = kreq__conf_int(c, KREQ__P_WORKER_TXN_BATCH_MS);
	s->linger_ms = kreq__conf_int(c, KREQ__P_WORKER_TXN_LINGER_MS);
	s->gap_ns = kreq__conf_int(c, KREQ__P_WORKER_TXN_GAP_US) * 1000;
	s->gather_ns = kreq__conf_int(c, KREQ__P_WORKER_TXN_GATHER_US) * 1000;
	s->txn_call_ms = (int)kreq__conf_int(c, KREQ__P_WORKER_TXN_CALL_TIMEOUT_MS);
	s->batch_linger_ms = kreq__conf_int(c, KREQ__P_WORKER_BATCH_LINGER_MS);
	s->batch_threshold = kreq__conf_int(c, KREQ__P_WORKER_BATCH_THRESHOLD);
	s->batch_max = (uint64_t)kreq__conf_int(c, KREQ__P_WORKER_TXN_BATCH_MAX);
	s->rate = kreq__conf_int(c, KREQ__P_WORKER_RATE_LIMIT);
	s->max_in_flight = (size_t)kreq__conf_int(c, KREQ__P_WORKER_MAX_IN_FLIGHT);
	s->slot_max = 2 * s->max_in_flight; /* in flight + abandoned, not yet let go */
	s->handler_grace_ms = kreq__conf_int(c, KREQ__P_WORKER_HANDLER_GRACE_MS);
	s->nthreads = (int)kreq__conf_int(c, KREQ__P_WORKER_HANDLER_THREADS);
	return KREQ_OK;
}

/* Topic, group and transactional names, the handler-thread table and the
 * seal buffer; then the poison settings (poison.c). */
static int make_names_and_buffers(kreq_worker_t *s, char *errstr, size_t errstr_size)
{
	const kreq_conf_t *c = s->conf;
	const char *prefix = kreq__conf_str(c, KREQ__P_TOPIC_PREFIX);
	s->client_id = strdup(kreq__conf_str(c, KREQ__P_CLIENT_ID));
	s->req_topic = fmt("%s.%s.%s", prefix, s->service, "requests");
	s->res_topic = fmt("%s.%s.%s", prefix, s->service, "results");
	s->group = fmt("%s.%s%s", prefix, s->service, "");
	s->txn_id = s->client_id ? fmt("%s.%s.%s", prefix, s->service, s->client_id) : NULL;
	bool oom;
	if (!(s->instance_id = kreq__member_instance_id(c, &oom)) && oom)
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	s->threads = calloc((size_t)s->nthreads, sizeof(*s->threads));
	s->seal_buf = malloc(s->lim.envelope_max); /* touched only as far as used */
	if (!s->client_id || !s->req_topic || !s->res_topic || !s->group || !s->txn_id ||
	    !s->threads || !s->seal_buf ||
	    parse_allow(s, kreq__conf_str(c, KREQ__P_WORKER_REPLY_TOPIC_ALLOW), prefix))
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	if (strlen(s->res_topic) > KREQ__TOPIC_MAX)
		return kreq__err(errstr, errstr_size, KREQ_EINVAL,
		                 "topic name %s is longer than 249 characters", s->res_topic);
	return kreq__poison_conf(s, prefix, errstr, errstr_size);
}

static int read_conf(kreq_worker_t *s, char *errstr, size_t errstr_size)
{
	int err = read_mode_and_keys(s, errstr, errstr_size);
	if (!err)
		err = read_limits(s, errstr, errstr_size);
	return err ? err : make_names_and_buffers(s, errstr, errstr_size);
}

KREQ_API kreq_worker_t *kreq_worker_new(const kreq_conf_t *conf, kreq_keyring_t *kr,
                                        const char *service, char *errstr, size_t errstr_size)
{
	if (!conf || !kr || !service) {
		kreq__err(errstr, errstr_size, KREQ_EINVAL,
		          "conf, keyring and service are required");
		return NULL;
	}
	if (!kreq__name_valid(service, strlen(service), 200)) {
		kreq__err(errstr, errstr_size, KREQ_EINVAL,
		          "service must be 1..200 characters of [A-Za-z0-9._-]");
		return NULL;
	}
	kreq_worker_t *s = calloc(1, sizeof(*s));
	if (!s) {
		kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
		return NULL;
	}
	kreq__faults_init(&s->faults);
	pthread_mutex_init(&s->kr_lock, NULL);
	pthread_mutex_init(&s->pool_lock, NULL);
	pthread_cond_init(&s->pool_cv, NULL);
	pthread_mutex_init(&s->done_lock, NULL);
	pthread_cond_init(&s->done_cv, NULL);
	pthread_mutex_init(&s->ip_lock, NULL);
	s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	s->kr = kreq_keyring_retain(kr);
	s->service = strdup(service);
	s->conf = kreq_conf_dup(conf);
	int err = s->efd < 0 ? kreq__err(errstr, errstr_size, KREQ_EIO, "eventfd failed")
	          : !s->service || !s->conf
	              ? kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory")
	              : read_conf(s, errstr, errstr_size);
	if (err) {
		kreq_worker_destroy(s);
		return NULL;
	}
	return s;
}

/* The service a method belongs to: its name up to the last '.', or the
 * whole name (docs/protocol.md section 7). */
static bool method_of_service(const char *method, const char *service)
{
	const char *dot = strrchr(method, '.');
	size_t n = dot ? (size_t)(dot - method) : strlen(method);
	return n == strlen(service) && !strncmp(method, service, n);
}

KREQ_API int kreq_worker_register(kreq_worker_t *s, const char *method, kreq_handler_fn *fn,
                                  void *opaque, int flags)
{
	if (!s || !method || !fn || (flags & ~KREQ_HANDLER_INLINE))
		return KREQ_EINVAL;
	size_t n = strlen(method);
	if (n == 0 || n > KREQ__METHOD_MAX ||
	    strspn(method, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRST"
	                   "UVWXYZ0123456789._-:/") != n)
		return KREQ_EINVAL;
	if (!method_of_service(method, s->service))
		return KREQ_EINVAL;
	if (atomic_load(&s->phase) != 0)
		return KREQ_ESTATE;
	for (size_t i = 0; i < s->nhandlers; i++)
		if (!strcmp(s->handlers[i].method, method))
			return KREQ_EEXIST;
	kreq__handler_t *h = realloc(s->handlers, (s->nhandlers + 1) * sizeof(*h));
	if (!h)
		return KREQ_ENOMEM;
	s->handlers = h;
	h[s->nhandlers] = (kreq__handler_t){strdup(method), fn, opaque, flags};
	if (!h[s->nhandlers].method)
		return KREQ_ENOMEM;
	s->nhandlers++;
	return KREQ_OK;
}

KREQ_API int kreq_worker_run(kreq_worker_t *s, char *errstr, size_t errstr_size)
{
	if (!s)
		return kreq__err(errstr, errstr_size, KREQ_EINVAL, "worker is NULL");
	int expected = 0;
	if (!atomic_compare_exchange_strong(&s->phase, &expected, 1))
		return kreq__err(errstr, errstr_size, KREQ_ESTATE,
		                 "kreq_worker_run() may be called once per worker");
	int err = atomic_load(&s->stop) ? KREQ_OK : kreq__loop_run(s);
	atomic_store(&s->phase, 2);
	if (err)
		return kreq__err(errstr, errstr_size, err, "%s", s->loop_errstr);
	return KREQ_OK;
}

KREQ_API void kreq_worker_stop(kreq_worker_t *s)
{
	if (!s)
		return;
	atomic_store(&s->stop, true);
	kreq__wake(s);
}

KREQ_API int kreq_worker_set_keyring(kreq_worker_t *s, kreq_keyring_t *kr)
{
	if (!s || !kr || !kreq_keyring_signing_key(kr))
		return KREQ_EINVAL;
	const char *signers = kreq__conf_str(s->conf, KREQ__P_WORKER_RESULT_SIGNERS);
	if (*signers && !kreq__signer_listed(signers, kreq_keyring_signing_key(kr)))
		return KREQ_ECONF; /* its results would be ignored by the next rebuild */
	pthread_mutex_lock(&s->kr_lock);
	kreq_keyring_t *old = s->kr_next;
	s->kr_next = kreq_keyring_retain(kr);
	if (atomic_load(&s->phase) == 1) {
		atomic_store_explicit(&s->kr_swap, true, memory_order_release);
	} else { /* not running: swap here */
		old = s->kr;
		s->kr = s->kr_next;
		s->kr_next = NULL;
	}
	pthread_mutex_unlock(&s->kr_lock);
	kreq_keyring_release(old);
	kreq__wake(s);
	return KREQ_OK;
}

KREQ_API int kreq_worker_metrics_text(kreq_worker_t *s, char **text)
{
	if (!s || !text)
		return KREQ_EINVAL;
	size_t len;
	FILE *f = open_memstream(text, &len);
	if (!f)
		return KREQ_ENOMEM;
	kreq__worker_metrics_render(&s->m, kreq_worker_in_flight(s), s->service, s->client_id, f);
	return fclose(f) == 0 ? KREQ_OK : KREQ_ENOMEM;
}

static void hex(char *out, const uint8_t *b, size_t n)
{
	static const char d[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = d[b[i] >> 4];
		out[2 * i + 1] = d[b[i] & 15];
	}
	out[2 * n] = 0;
}

static json_t *row_of(const kreq_request_t *r, int64_t now_ms, int64_t now_ns)
{
	const Kreq__Request *q = r->op.u.req;
	char idem[2 * KREQ__IDEM_KEY_MAX + 1], corr[2 * KREQ__CORR_ID_BYTES + 1];
	hex(idem, q->idempotency_key.data, q->idempotency_key.len);
	hex(corr, q->correlation_id.data, q->correlation_id.len);
	int st = atomic_load(&r->state);
	return json_pack("{s:s, s:s, s:s, s:s, s:i, s:I, s:I, s:I, s:s, s:b}", "method", q->method,
	                 "key_id", r->op.key_id, "idempotency_key", idem, "correlation_id", corr,
	                 "partition", (int)r->partition, "offset", (json_int_t)r->offset, "age_ms",
	                 (json_int_t)((now_ns - r->consumed_ns) / 1000000), "time_left_ms",
	                 (json_int_t)(q->deadline_ms - now_ms), "state",
	                 st == KREQ__RQ_QUEUED    ? "queued"
	                 : st == KREQ__RQ_RUNNING ? "running"
	                                          : "replied",
	                 "cancelled", atomic_load(&r->cancelled));
}

KREQ_API int kreq_worker_in_progress_json(kreq_worker_t *s, char **json)
{
	if (!s || !json)
		return KREQ_EINVAL;
	json_t *a = json_array();
	int64_t now_ms = kreq__now_ms(), now_ns = kreq__mono_ns();
	pthread_mutex_lock(&s->ip_lock);
	for (const kreq_request_t *r = s->ip_head; r && a; r = r->ip_next)
		json_array_append_new(a, row_of(r, now_ms, now_ns));
	pthread_mutex_unlock(&s->ip_lock);
	*json = a ? json_dumps(a, JSON_COMPACT) : NULL;
	json_decref(a);
	return *json ? KREQ_OK : KREQ_ENOMEM;
}

KREQ_API size_t kreq_worker_in_flight(const kreq_worker_t *s)
{
	return s ? atomic_load_explicit(&s->in_progress, memory_order_relaxed) : 0;
}

KREQ_API bool kreq_worker_ready(const kreq_worker_t *s)
{
	return s && atomic_load_explicit(&s->ready, memory_order_acquire);
}

KREQ_API const char *kreq_worker_name(const kreq_worker_t *s, kreq_worker_name_t which)
{
	if (!s)
		return NULL;
	switch (which) {
	case KREQ_WORKER_REQUESTS_TOPIC:
		return s->req_topic;
	case KREQ_WORKER_RESULTS_TOPIC:
		return s->res_topic;
	case KREQ_WORKER_GROUP:
		return s->group;
	case KREQ_WORKER_TRANSACTIONAL_ID:
		return s->txn_mode ? s->txn_id : NULL;
	}
	return NULL;
}

KREQ_API size_t kreq_worker_method_count(const kreq_worker_t *s)
{
	return s ? s->nhandlers : 0;
}

KREQ_API const char *kreq_worker_method_name(const kreq_worker_t *s, size_t i)
{
	return s && i < s->nhandlers ? s->handlers[i].method : NULL;
}

KREQ_API void kreq_worker_destroy(kreq_worker_t *s)
{
	if (!s)
		return;
	kreq__pool_stop(s);
	/* asynchronous handlers still holding requests must reply first */
	pthread_mutex_lock(&s->done_lock);
	while (s->outstanding > 0)
		pthread_cond_wait(&s->done_cv, &s->done_lock);
	pthread_mutex_unlock(&s->done_lock);
	for (kreq_request_t *r = kreq__completions_take(s), *n; r; r = n) {
		n = r->next;
		kreq__request_free(r);
	}
	kreq__recycled_free(s);
	kreq__handles_release(s);
	free(s->seal_buf);
	for (size_t i = 0; i < s->nhandlers; i++)
		free(s->handlers[i].method);
	free(s->handlers);
	for (size_t i = 0; i < s->nallow; i++)
		free(s->allow[i]);
	free(s->allow);
	for (kreq__bucket_t *b = s->buckets, *n; b; b = n) {
		n = b->next;
		free(b);
	}
	free(s->parts);
	free(s->threads);
	free(s->service);
	free(s->req_topic);
	free(s->res_topic);
	free(s->group);
	free(s->txn_id);
	free(s->client_id);
	kreq__poison_destroy(s);
	free(s->instance_id);
	kreq_keyring_release(s->kr);
	kreq_keyring_release(s->kr_next);
	kreq_conf_destroy(s->conf);
	if (s->efd >= 0)
		close(s->efd);
	pthread_mutex_destroy(&s->kr_lock);
	pthread_mutex_destroy(&s->pool_lock);
	pthread_cond_destroy(&s->pool_cv);
	pthread_mutex_destroy(&s->done_lock);
	pthread_cond_destroy(&s->done_cv);
	pthread_mutex_destroy(&s->ip_lock);
	free(s);
}
