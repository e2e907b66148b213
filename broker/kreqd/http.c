/*
 * http.c — see http.h.
 *
 * libmicrohttpd runs its own listening thread (MHD_USE_AUTO_INTERNAL_THREAD
 * picks epoll on Linux, so a process holding more than FD_SETSIZE sockets
 * is fine) with a bounded number of connections and an idle timeout, so a
 * slow scraper cannot hold the endpoint. Answers are built per request
 * from the worker's any-thread functions; nothing here touches Kafka.
 */
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "broker/kreqd/http.h"
#include "broker/kreqd/klog.h"
#include "common/internal.h"

#define CONNECTION_LIMIT   32
#define CONNECTION_TIMEOUT 10 /* seconds */
#define PROMETHEUS_TYPE    "text/plain; version=0.0.4; charset=utf-8"

struct kreqd_http {
	struct MHD_Daemon *d;
	kreq_worker_t *s;
	const atomic_int *phase;
};

static enum MHD_Result respond(struct MHD_Connection *c, unsigned status, const char *type,
                               char *body, enum MHD_ResponseMemoryMode mode)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, mode);
	if (!r) {
		if (mode == MHD_RESPMEM_MUST_FREE)
			free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
	enum MHD_Result rc = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return rc;
}

static enum MHD_Result static_text(struct MHD_Connection *c, unsigned status, const char *text)
{
	return respond(c, status, "text/plain; charset=utf-8", (char *)text,
	               MHD_RESPMEM_PERSISTENT);
}

static enum MHD_Result metrics(kreqd_http_t *h, struct MHD_Connection *c)
{
	char *text = NULL;
	if (kreq_worker_metrics_text(h->s, &text) != KREQ_OK)
		return static_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
	return respond(c, MHD_HTTP_OK, PROMETHEUS_TYPE, text, MHD_RESPMEM_MUST_FREE);
}

static enum MHD_Result healthz(kreqd_http_t *h, struct MHD_Connection *c)
{
	switch (atomic_load(h->phase)) {
	case KREQD_SERVING:
		if (kreq_worker_ready(h->s))
			return static_text(c, MHD_HTTP_OK, "ok\n");
		return static_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, "joining the group\n");
	case KREQD_STARTING:
		return static_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, "starting\n");
	default:
		return static_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, "stopping\n");
	}
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls)
{
	(void)version, (void)upload_data, (void)upload_data_size, (void)req_cls;
	kreqd_http_t *h = cls;
	if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD))
		return static_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n");
	if (!strcmp(url, "/metrics"))
		return metrics(h, c);
	if (!strcmp(url, "/healthz"))
		return healthz(h, c);
	return static_text(c, MHD_HTTP_NOT_FOUND, "not found (/metrics, /healthz)\n");
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	char msg[512];
	vsnprintf(msg, sizeof(msg), fmt, ap);
	msg[strcspn(msg, "\n")] = '\0';
	kreqd_log_emit(4, "http", msg);
}

static int resolve(const char *address, int port, struct addrinfo **ai, char *errstr,
                   size_t errstr_size)
{
	char service[8];
	snprintf(service, sizeof(service), "%d", port);
	struct addrinfo hints = {.ai_family = AF_UNSPEC,
	                         .ai_socktype = SOCK_STREAM,
	                         .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
	int rc = getaddrinfo(address, service, &hints, ai);
	if (rc != 0)
		return kreq__err(errstr, errstr_size, KREQ_ECONF, "kreqd.metrics.address %s: %s",
		                 address, gai_strerror(rc));
	return KREQ_OK;
}

int kreqd_http_start(const char *address, int port, kreq_worker_t *s, const atomic_int *phase,
                     kreqd_http_t **out, char *errstr, size_t errstr_size)
{
	struct addrinfo *ai = NULL;
	int err = resolve(address, port, &ai, errstr, errstr_size);
	if (err)
		return err;
	kreqd_http_t *h = calloc(1, sizeof(*h));
	if (!h) {
		freeaddrinfo(ai);
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	}
	h->s = s;
	h->phase = phase;
	unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
	if (ai->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	/* the logger first, so that errors about later options reach it too */
	h->d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, h,
	                        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL, MHD_OPTION_SOCK_ADDR,
	                        ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT,
	                        (unsigned)CONNECTION_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT,
	                        (unsigned)CONNECTION_TIMEOUT, MHD_OPTION_END);
	freeaddrinfo(ai);
	if (!h->d) {
		free(h);
		return kreq__err(errstr, errstr_size, KREQ_EIO,
		                 "cannot listen for HTTP on %s port %d (in use, or not an address "
		                 "of this host?)",
		                 address, port);
	}
	*out = h;
	return KREQ_OK;
}

void kreqd_http_stop(kreqd_http_t *h)
{
	if (!h)
		return;
	MHD_stop_daemon(h->d);
	free(h);
}
