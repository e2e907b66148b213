/*
 * kreq/conf.h — configuration: string key/value pairs on an opaque object.
 *
 * Every kreq property is declared once in a property table (name, type, range,
 * default, documentation); that table validates kreq_conf_set() and generates
 * docs/CONFIGURATION.md. Names starting with "kafka." are passed through to
 * librdkafka without the prefix ("kafka.linger.ms" -> "linger.ms") and are
 * validated by librdkafka when they are set.
 *
 * Threads and ownership: a kreq_conf_t is owned by whoever created it and is
 * not thread-safe; use it from one thread at a time. Objects that take a
 * configuration (clients, workers) copy it, so the caller may change or
 * destroy its conf afterwards.
 */
#ifndef KREQ_CONF_H
#define KREQ_CONF_H

#include <stddef.h>

#include "kreq/common.h"

typedef struct kreq_conf_s kreq_conf_t;

/** New configuration holding every property's default. NULL if out of
 *  memory. Free with kreq_conf_destroy(). */
KREQ_API kreq_conf_t *kreq_conf_new(void);

/** Deep copy of conf (NULL if conf is NULL or out of memory). */
KREQ_API kreq_conf_t *kreq_conf_dup(const kreq_conf_t *conf);

/** Frees conf and everything it holds. NULL is a no-op. */
KREQ_API void kreq_conf_destroy(kreq_conf_t *conf);

/** Sets property name to value (both copied).
 *  Returns KREQ_OK, KREQ_EINVAL (NULL argument), KREQ_ENOENT (no such
 *  property; errstr names it), KREQ_ECONF (value of the wrong type or out of
 *  range, or rejected by librdkafka for "kafka." names; errstr says why) or
 *  KREQ_ENOMEM. On error conf is unchanged. */
KREQ_API int kreq_conf_set(kreq_conf_t *conf, const char *name, const char *value, char *errstr,
                           size_t errstr_size);

/** Copies the current value of property name as a string into dest.
 *  *dest_size is the size of dest on input; on return it holds the size
 *  needed including the terminating NUL. dest may be NULL to query the size.
 *  Returns KREQ_OK, KREQ_EINVAL, KREQ_ENOENT (no such property or "kafka."
 *  name never set) or KREQ_EOVERSIZE (dest too small; *dest_size says how
 *  much is needed). */
KREQ_API int kreq_conf_get(const kreq_conf_t *conf, const char *name, char *dest,
                           size_t *dest_size);

/** Reads "name = value" lines from a file ('#' starts a comment line, blank
 *  lines ignored) and sets each as kreq_conf_set() would. Stops at the first
 *  bad line: errstr names the file, line number and cause. Returns KREQ_OK,
 *  KREQ_EINVAL, KREQ_EIO (unreadable), KREQ_ECONF/KREQ_ENOENT (bad line). */
KREQ_API int kreq_conf_load_file(kreq_conf_t *conf, const char *path, char *errstr,
                                 size_t errstr_size);

/** Log callback: level is a syslog level (3 error .. 7 debug), fac a short
 *  facility name ("client", "admin"), msg one line without secrets. Called
 *  from kreq's internal threads; must be thread-safe and must not call back
 *  into kreq. */
typedef void(kreq_log_cb_t)(void *opaque, int level, const char *fac, const char *msg);

/** Routes kreq's log lines to cb (NULL: back to stderr). Copied along with
 *  the configuration by the objects that take it. */
KREQ_API void kreq_conf_set_log_cb(kreq_conf_t *conf, kreq_log_cb_t *cb, void *opaque);

#endif
