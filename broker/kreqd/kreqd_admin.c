/*
 * kreqd_admin.c — see kreqd_admin.h. The socket, its thread and its
 * timeouts are common/adminsock.c's; the answers come from the worker's
 * any-thread functions.
 */
#include <stdlib.h>

#include "broker/kreqd/kreqd_admin.h"

static char *answer_inprogress(void *ctx)
{
	char *text = NULL;
	kreq_worker_in_progress_json(ctx, &text);
	return text;
}

static char *answer_metrics(void *ctx)
{
	char *text = NULL;
	kreq_worker_metrics_text(ctx, &text);
	return text;
}

static const kreq__adminsock_cmd_t commands[] = {
    {"inprogress", answer_inprogress},
    {"metrics", answer_metrics},
    {NULL, NULL},
};

int kreqd_admin_start(const char *path, kreq_worker_t *s, kreq__adminsock_t **out, char *errstr,
                      size_t errstr_size)
{
	return kreq__adminsock_start(path, commands, s, "kreqd:admin", out, errstr, errstr_size);
}
