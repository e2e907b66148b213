/*
 * klog.h — kreqd's structured logs: one line per event on stderr.
 *
 * Design: every line kreqd writes, its own and the library's (through
 * kreq_conf_set_log_cb(), which also carries librdkafka's), goes through
 * kreqd_log_emit(), which formats the whole line into one buffer and hands
 * it to one write(2): lines from concurrent threads never interleave, and
 * no lock is needed. Two formats:
 *
 *   text: ts=2025-01-31T12:00:00.123Z level=info fac=worker msg="serving ..."
 *   json: {"ts":"2025-01-31T12:00:00.123Z","level":"info","fac":"worker","msg":"..."}
 *
 * In text, msg is quoted with '"' and '\' escaped and control characters
 * written as \n, \t, \r or \xNN, so one event is always one line. In JSON,
 * strings are escaped as RFC 8259 asks and bytes that are not valid UTF-8
 * become U+FFFD, so every line parses. Levels are syslog's (3 err ..
 * 7 debug); lines above log.level are dropped.
 */
#ifndef KREQD_KLOG_H
#define KREQD_KLOG_H

#include <stdbool.h>
#include <stddef.h>

typedef enum { KREQD_LOG_TEXT, KREQD_LOG_JSON } kreqd_log_format_t;

/* Chooses the format and the most verbose level written (defaults: text,
 * 6). Call from main before any other thread starts. */
void kreqd_log_setup(kreqd_log_format_t format, int max_level);

/* Parses "text" or "json"; false for anything else. */
bool kreqd_log_parse_format(const char *s, kreqd_log_format_t *out);

/* Writes one event (any thread). */
void kreqd_log_emit(int level, const char *fac, const char *msg);

/* printf-style kreqd_log_emit() with facility "kreqd". */
void kreqd_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* kreq_log_cb_t for kreq_conf_set_log_cb(): routes the library's lines
 * here (opaque unused). */
void kreqd_log_cb(void *opaque, int level, const char *fac, const char *msg);

/* Formats one line (with its '\n') into out (size n, at least 64): the
 * line is cut, still well-formed, when it does not fit. Returns its
 * length. ts_ms is the event's time in ms since the Unix epoch. Exposed for
 * kreqd_log_emit() and its tests. */
size_t kreqd_log_format(char *out, size_t n, kreqd_log_format_t format, long long ts_ms, int level,
                        const char *fac, const char *msg);

#endif
