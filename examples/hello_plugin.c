/*
 * hello_plugin.c — a kreqd handler plugin (kreq/plugin.h) serving one
 * method, greeter.hello: it replies "hello, <payload>" ("hello, world" for
 * an empty payload).
 *
 * Build it as a shared object against libkreq and name it in kreqd's
 * configuration (the service must be the methods' service, `greeter`):
 *
 *   cc -shared -fPIC -o hello_plugin.so hello_plugin.c $(pkg-config --cflags --libs kreq)
 *
 *   service       = greeter
 *   kreqd.plugins = /usr/local/lib/kreq/hello_plugin.so
 *
 * `kreqd --config FILE --check` loads it and lists greeter.hello.
 */
#include <stdio.h>
#include <stdlib.h>

#include <kreq/plugin.h>

#define GREETING_MAX 1024

/* Inline: it never blocks, so it runs on kreqd's loop thread. */
static void hello(kreq_request_t *r, void *opaque)
{
	(void)opaque;
	size_t len;
	const char *name = kreq_request_payload(r, &len);
	if (len > GREETING_MAX - 16) {
		kreq_request_reply(r, 413, NULL, 0, "greeter.hello: name longer than 1008 bytes");
		return;
	}
	char out[GREETING_MAX];
	int n = len ? snprintf(out, sizeof(out), "hello, %.*s", (int)len, name)
	            : snprintf(out, sizeof(out), "hello, world");
	kreq_request_reply(r, KREQ_STATUS_OK, out, (size_t)n, NULL);
}

static int init(kreq_worker_t *s, char *errstr, size_t errstr_size)
{
	int err = kreq_worker_register(s, "greeter.hello", hello, NULL, KREQ_HANDLER_INLINE);
	if (err)
		snprintf(errstr, errstr_size,
		         "cannot register greeter.hello (is service = greeter?)");
	return err;
}

KREQ_PLUGIN_EXPORT const kreq_plugin_v1_t kreq_plugin_v1 = {
    .abi_version = KREQ_PLUGIN_ABI_VERSION,
    .name = "greeter",
    .init = init,
    .fini = NULL,
};
