/*
 * fuzz_conf.c — libFuzzer target for the configuration file parser
 * (common/conf.c: "name = value" lines, the property table's types and
 * bounds, "kafka." properties checked by librdkafka), through
 * kreq__conf_load_text, the in-memory twin of kreq_conf_load_file.
 *
 * Invariants: only kreq error codes; whatever was accepted reads back
 * (kreq_conf_get) and survives kreq_conf_dup; typed accessors stay within
 * the table's bounds; no crash, leak or undefined behaviour. Seed corpus:
 * fuzz/corpus/conf.
 */
#include <stdlib.h>
#include <string.h>

#include "common/conf.h"
#include "kreq/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	kreq_conf_t *conf = kreq_conf_new();
	if (!conf)
		abort();
	char err[512];
	int rc =
	    kreq__conf_load_text(conf, "fuzz.conf", (const char *)data, size, err, sizeof(err));
	if (rc > 0)
		abort();
	kreq_conf_t *dup = kreq_conf_dup(conf);
	if (!dup)
		abort();
	static const char *const names[] = {"client.id", "request.timeout.ms", "worker.mode",
	                                    "kafka.bootstrap.servers", "log.level"};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char a[8192], b[8192];
		size_t na = sizeof(a), nb = sizeof(b);
		int ra = kreq_conf_get(conf, names[i], a, &na),
		    rb = kreq_conf_get(dup, names[i], b, &nb);
		if (ra != rb || (ra == KREQ_OK && (na != nb || memcmp(a, b, na))))
			abort(); /* the copy differs */
	}
	int64_t t = kreq__conf_int(conf, KREQ__P_REQUEST_TIMEOUT_MS);
	int64_t lvl = kreq__conf_int(conf, KREQ__P_LOG_LEVEL);
	if (t < 1 || t > 86400000 || lvl < 0 || lvl > 7)
		abort(); /* outside the table's bounds */
	kreq_conf_destroy(dup);
	kreq_conf_destroy(conf);
	return 0;
}
