/*
 * kreq/plugin.h — the handler plugin ABI loaded by kreqd.
 *
 * A plugin is a shared object that exports one symbol, `kreq_plugin_v1`, of
 * type kreq_plugin_v1_t. kreqd dlopen()s every path listed in kreqd.plugins,
 * checks abi_version == KREQ_PLUGIN_ABI_VERSION (a mismatch refuses to
 * start, naming the plugin and both versions), then calls init() on the main
 * thread before the serving loop starts; init registers handlers with
 * kreq_worker_register(). fini() runs on the main thread after the loop
 * returned and every request was replied or abandoned; then the object is
 * dlclose()d.
 *
 * A plugin links against libkreq (kreq_request_* accessors and
 * kreq_request_reply()); it must not call kreq_worker_run/stop/destroy.
 *
 * Minimal plugin:
 *
 *     static void hello(kreq_request_t *r, void *opaque) {
 *         kreq_request_reply(r, 0, "hi", 2, NULL);
 *     }
 *     static int init(kreq_worker_t *s, char *errstr, size_t errstr_size) {
 *         return kreq_worker_register(s, "greeter.hello", hello, NULL, 0);
 *     }
 *     KREQ_PLUGIN_EXPORT const kreq_plugin_v1_t kreq_plugin_v1 = {
 *         KREQ_PLUGIN_ABI_VERSION, "greeter", init, NULL};
 */
#ifndef KREQ_PLUGIN_H
#define KREQ_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#include "kreq/worker.h"

#define KREQ_PLUGIN_ABI_VERSION 1
#define KREQ_PLUGIN_SYMBOL      "kreq_plugin_v1"
#define KREQ_PLUGIN_EXPORT      __attribute__((visibility("default")))

typedef struct kreq_plugin_v1 {
	/** KREQ_PLUGIN_ABI_VERSION the plugin was built against. */
	uint32_t abi_version;
	/** Short name for logs and errors. */
	const char *name;
	/** Registers the plugin's handlers; KREQ_OK or an error code with
	 *  errstr naming the cause (kreqd then refuses to start). Required. */
	int (*init)(kreq_worker_t *s, char *errstr, size_t errstr_size);
	/** Releases what init acquired; may be NULL. */
	void (*fini)(void);
} kreq_plugin_v1_t;

#endif
