/*
 * kreqd_admin.h — kreqd's admin endpoint (admin.socket): the commands it
 * answers, served by common/adminsock.h (mode 0600, one command line per
 * connection, the answer read until EOF, as the client's admin socket).
 *
 *   "inprogress\n"  kreq_worker_in_progress_json(): a JSON array of the
 *                   requests in progress, then "\n"
 *   "metrics\n"     the Prometheus text of kreq_worker_metrics_text()
 *                   (what `kreq stats --socket PATH` prints)
 *   anything else   {"error":"unknown command (inprogress, metrics)"}
 */
#ifndef KREQD_ADMIN_H
#define KREQD_ADMIN_H

#include <stddef.h>

#include "common/adminsock.h"
#include "kreq/worker.h"

/* Binds path and serves it on a thread of its own ("kreqd:admin") until
 * kreq__adminsock_stop(). Refuses to replace a file that is not a socket,
 * and a socket another process still answers on (KREQ_EEXIST); a stale
 * socket left by a dead process is replaced. KREQ_OK with *out set, or
 * KREQ_EEXIST / KREQ_ECONF (path too long) / KREQ_EIO / KREQ_ENOMEM,
 * errstr naming the path. */
int kreqd_admin_start(const char *path, kreq_worker_t *s, kreq__adminsock_t **out, char *errstr,
                      size_t errstr_size);

#endif
