/*
 * unixsock.h — the test side of an admin socket (common/adminsock.h): a
 * peer that sends one command and reads the answer, and a socket file left
 * as a live process or a dead one would leave it.
 */
#ifndef KREQ_TEST_UNIXSOCK_H
#define KREQ_TEST_UNIXSOCK_H

#include <stdbool.h>
#include <stddef.h>

/* Connects to the Unix socket at path (the test fails if it cannot), writes
 * cmd, reads the answer until EOF into out (NUL-terminated, at most size - 1
 * bytes) and returns its length. */
size_t kreq_test_unix_query(const char *path, const char *cmd, char *out, size_t size);

/* Binds a Unix stream socket at path and listens. live: returns its fd (a
 * live process's endpoint; the caller closes it). Otherwise closes it at
 * once, leaving the file as a process that died would, and returns -1. */
int kreq_test_unix_listen(const char *path, bool live);

#endif
