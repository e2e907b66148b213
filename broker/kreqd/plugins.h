/*
 * plugins.h — loading handler plugins (kreq/plugin.h) into kreqd.
 *
 * Life of a plugin: kreqd_plugin_open() (dlopen, find kreq_plugin_v1,
 * check its ABI version), kreqd_plugin_init() on the main thread before the
 * worker runs (the plugin registers its handlers), and after the worker
 * was destroyed (no handler can run any more) kreqd_plugin_close(): fini()
 * if init succeeded, then dlclose(). Errors name the plugin's path.
 */
#ifndef KREQD_PLUGINS_H
#define KREQD_PLUGINS_H

#include <stddef.h>

#include "kreq/worker.h"

typedef struct kreqd_plugin kreqd_plugin_t;

/* dlopen()s path (RTLD_NOW: unresolved symbols fail here, not at the first
 * request), looks up KREQ_PLUGIN_SYMBOL and checks abi_version and init.
 * KREQ_OK with *out set, or KREQ_EIO (cannot load), KREQ_ENOENT (no
 * symbol), KREQ_EVERSION (ABI mismatch: both versions named), KREQ_EINVAL
 * (no init function), KREQ_ENOMEM; errstr names the path. */
int kreqd_plugin_open(const char *path, kreqd_plugin_t **out, char *errstr, size_t errstr_size);

/* Calls the plugin's init(s). KREQ_OK or its error, errstr naming the
 * plugin and its message. */
int kreqd_plugin_init(kreqd_plugin_t *p, kreq_worker_t *s, char *errstr, size_t errstr_size);

/* The plugin's own name (or its path if it gave none), and its path. */
const char *kreqd_plugin_name(const kreqd_plugin_t *p);
const char *kreqd_plugin_path(const kreqd_plugin_t *p);

/* fini() if init succeeded, dlclose(), free. NULL is a no-op. */
void kreqd_plugin_close(kreqd_plugin_t *p);

#endif
