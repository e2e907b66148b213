/*
 * kadmin.h — kreqd's admin endpoint: a Unix stream socket (admin.socket,
 * mode 0600) answering one command per connection, in the protocol of the
 * client's admin socket (client/admin.c): the peer writes one line, reads
 * the answer until EOF.
 *
 *   "inprogress\n"  kreq_server_in_progress_json(): a JSON array of the
 *                   requests in progress, then "\n"
 *   "metrics\n"     the Prometheus text of kreq_server_metrics_text()
 *                   (what `kreq stats --socket PATH` prints)
 *   anything else   {"error":"unknown command (inprogress, metrics)"}
 */
#ifndef KREQD_KADMIN_H
#define KREQD_KADMIN_H

#include <stddef.h>

#include "kreq/server.h"

typedef struct kreqd_admin kreqd_admin_t;

/* Binds path and serves it on a thread of its own until kreqd_admin_stop().
 * Refuses to replace a file that is not a socket, and a socket another
 * process still answers on (KREQ_EEXIST); a stale socket left by a dead
 * process is replaced. KREQ_OK with *out set, or KREQ_EEXIST / KREQ_ECONF
 * (path too long) / KREQ_EIO / KREQ_ENOMEM, errstr naming the path. */
int kreqd_admin_start(const char *path, kreq_server_t *s, kreqd_admin_t **out, char *errstr,
                      size_t errstr_size);

/* Stops the thread, removes the socket file and frees a. NULL is a no-op. */
void kreqd_admin_stop(kreqd_admin_t *a);

#endif
