/*
 * call_method.c — the smallest kreq caller: one client, one call, the reply
 * or the error printed.
 *
 *   call_method BOOTSTRAP KEYFILE METHOD [PAYLOAD]
 *   call_method 127.0.0.1:9092 client.key greeter.hello world
 *
 * Exit status: 0 reply with status 0, 3 reply with another status or
 * rejected, 1 any other failure, 2 usage.
 */
#include <stdio.h>
#include <string.h>

#include <kreq/client.h>
#include <kreq/error.h>

static kreq_client_t *connect_client(const char *bootstrap, const char *keyfile)
{
	char err[512] = "out of memory";
	kreq_conf_t *conf = kreq_conf_new();
	kreq_keyring_t *kr = kreq_keyring_new();
	kreq_client_t *c = NULL;
	if (conf && kr &&
	    kreq_conf_set(conf, "kafka.bootstrap.servers", bootstrap, err, sizeof(err)) ==
	        KREQ_OK &&
	    kreq_keyring_load_file(kr, keyfile, err, sizeof(err)) == KREQ_OK)
		c = kreq_client_new(conf, kr, err, sizeof(err));
	if (!c)
		fprintf(stderr, "call_method: %s\n", err);
	kreq_keyring_release(kr); /* the client holds its own reference */
	kreq_conf_destroy(conf);  /* and its own copy */
	return c;
}

int main(int argc, char **argv)
{
	if (argc < 4 || argc > 5) {
		fprintf(stderr, "usage: call_method BOOTSTRAP KEYFILE METHOD [PAYLOAD]\n");
		return 2;
	}
	kreq_client_t *c = connect_client(argv[1], argv[2]);
	if (!c)
		return 1;
	const char *payload = argc == 5 ? argv[4] : "";
	kreq_future_t *f = NULL;
	int err = kreq_client_call_wait(c, argv[3], payload, strlen(payload), NULL, &f);
	int rc = 1;
	if (err == KREQ_OK && kreq_future_status(f) == 0) {
		size_t len;
		const char *reply = kreq_future_payload(f, &len);
		printf("%.*s\n", (int)len, reply ? reply : "");
		rc = 0;
	} else if (err == KREQ_OK || err == KREQ_EREJECTED) {
		fprintf(stderr, "call_method: status %d: %s\n", (int)kreq_future_status(f),
		        kreq_future_errstr(f));
		rc = 3;
	} else {
		fprintf(stderr, "call_method: %s: %s\n", kreq_strerror(err),
		        f ? kreq_future_errstr(f) : kreq_err_name(err));
	}
	kreq_future_release(f);
	kreq_client_destroy(c);
	return rc;
}
