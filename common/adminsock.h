/*
 * adminsock.h — the admin-socket server both the client (client/admin.c,
 * `pending`, `metrics`) and kreqd (broker/kreqd/kreqd_admin.c, `inprogress`,
 * `metrics`) use: a Unix stream socket (mode 0600) served by one thread of
 * its own. A peer connects, writes one command line and reads the answer
 * until EOF; a command not in the table gets
 *   {"error":"unknown command (NAME, NAME, ...)"}
 * The answer ends with exactly one "\n" (one is added if it has none).
 */
#ifndef KREQ_COMMON_ADMINSOCK_H
#define KREQ_COMMON_ADMINSOCK_H

#include <stddef.h>

typedef struct kreq__adminsock kreq__adminsock_t;

/* One command: its name (the line the peer writes, without "\n") and the
 * function that answers it: a new malloc'd string the server frees, or
 * NULL (answered as an unknown command would be). Runs on the admin
 * thread with the ctx given to kreq__adminsock_start. */
typedef struct kreq__adminsock_cmd {
	const char *name;
	char *(*answer)(void *ctx);
} kreq__adminsock_cmd_t;

/* Binds path and serves the commands cmds[0..] (ended by a NULL name;
 * the table must outlive the server) on a thread named thread_name until
 * kreq__adminsock_stop(). Refuses to replace a file that is not a socket
 * and a socket some process still accepts connections on (KREQ_EEXIST); a
 * stale socket left by a dead process is replaced. Each connection has
 * one second to send its command and one second per write of the answer,
 * so a stuck peer holds the endpoint for a bounded time. KREQ_OK with *out
 * set, or KREQ_EEXIST / KREQ_ECONF (path too long) / KREQ_EIO /
 * KREQ_ENOMEM, errstr naming the path. */
int kreq__adminsock_start(const char *path, const kreq__adminsock_cmd_t *cmds, void *ctx,
                          const char *thread_name, kreq__adminsock_t **out, char *errstr,
                          size_t errstr_size);

/* Stops the thread, removes the socket file and frees a. NULL is a no-op. */
void kreq__adminsock_stop(kreq__adminsock_t *a);

#endif
