/*
 * internal.h — helpers shared by kreq's own modules; never installed.
 *
 * Internal names use the kreq__ prefix. Arguments are validated once, at the
 * public boundary; functions declared here trust their callers.
 */
#ifndef KREQ_INTERNAL_H
#define KREQ_INTERNAL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kreq/error.h"

#define KREQ__ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Formats a detail message into errstr (if errstr is non-NULL and
 * errstr_size > 0) and returns err, so error paths read
 * `return kreq__err(errstr, errstr_size, KREQ_EINVAL, "x: %s", why);`. */
int kreq__err(char *errstr, size_t errstr_size, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Wall-clock time in milliseconds since the Unix epoch (deadlines on the wire
 * are absolute wall-clock times so that they mean the same on every host). */
int64_t kreq__now_ms(void);

/* Writes all len bytes (retrying short writes and EINTR): 0, or -1 with
 * errno set. */
int kreq__write_all(int fd, const void *buf, size_t len);

/* How many of the first len bytes of s are name characters
 * ([A-Za-z0-9._-]: topic names, services, key ids), counting from the
 * start; stops at the first other byte (NUL included). */
size_t kreq__name_span(const char *s, size_t len);

/* Whether s's first len bytes are a name of 1 to max name characters. */
bool kreq__name_valid(const char *s, size_t len, size_t max);

/* Monotonic time in nanoseconds (local durations, never sent). */
int64_t kreq__mono_ns(void);

#endif
