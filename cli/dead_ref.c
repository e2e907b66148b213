/*
 * dead_ref.c — the pure parsing of `kreq dead` (see dead.h): what --since
 * and REF mean, and under which topic.prefix a dead request was sent. Kept
 * apart from the Kafka and output code so the unit test (tests/cli/
 * test_dead_ref.c) reaches every rule without a Kafka cluster.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "cli/dead.h"

/* 1..max decimal digits, nothing else (no sign, no blanks). */
static bool digits(const char *s, size_t n, size_t max)
{
	return n > 0 && n <= max && strspn(s, "0123456789") >= n;
}

bool dead_parse_since(const char *s, int64_t now_ms, int64_t *out)
{
	static const struct {
		char unit;
		int64_t ms;
	} units[] = {{'s', 1000}, {'m', 60000}, {'h', 3600000}, {'d', 86400000}};
	size_t n = strspn(s, "0123456789");
	if (n > 0 && n <= 15 && s[n] == '\0') { /* ms since the epoch */
		*out = strtoll(s, NULL, 10);
		return true;
	}
	for (size_t i = 0;
	     n > 0 && n <= 9 && s[n + 1] == '\0' && i < sizeof(units) / sizeof(units[0]); i++) {
		if (s[n] == units[i].unit) {
			*out = now_ms - strtoll(s, NULL, 10) * units[i].ms;
			return true;
		}
	}
	struct tm tm;
	memset(&tm, 0, sizeof(tm));
	const char *rest = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (rest == NULL || strcmp(rest, "Z") != 0 || !digits(s, 4, 4))
		return false;
	time_t t = timegm(&tm);
	if (t == (time_t)-1)
		return false;
	*out = (int64_t)t * 1000;
	return true;
}

bool dead_parse_position(const char *ref, int32_t *partition, int64_t *offset)
{
	const char *colon = strchr(ref, ':');
	if (colon == NULL)
		return false;
	size_t pn = (size_t)(colon - ref), on = strlen(colon + 1);
	if (!digits(ref, pn, 10) || !digits(colon + 1, on, 18))
		return false;
	long long p = strtoll(ref, NULL, 10);
	if (p > INT32_MAX)
		return false;
	*partition = (int32_t)p;
	*offset = strtoll(colon + 1, NULL, 10);
	return true;
}

uint8_t *dead_from_hex(const char *s, size_t max, size_t *n)
{
	size_t len = strlen(s);
	if (len == 0 || len % 2 != 0 || len / 2 > max || strspn(s, "0123456789abcdefABCDEF") != len)
		return NULL;
	uint8_t *b = malloc(len / 2);
	size_t got = 0;
	if (b == NULL || sodium_hex2bin(b, len / 2, s, len, NULL, &got, NULL) != 0 ||
	    got != len / 2) {
		free(b);
		return NULL;
	}
	*n = got;
	return b;
}

const char *dead_request_prefix(const char *request_topic, const char *service, char *buf,
                                size_t size)
{
	static const char tail[] = ".requests";
	size_t tn = strlen(request_topic), sn = strlen(service);
	size_t need = sn + sizeof(tail) - 1; /* "<service>.requests" */
	if (sn == 0 || tn <= need + 1 || tn - need - 1 >= size)
		return NULL;
	const char *t = request_topic + tn - need;
	if (t[-1] != '.' || strncmp(t, service, sn) != 0 || strcmp(t + sn, tail) != 0)
		return NULL;
	memcpy(buf, request_topic, tn - need - 1);
	buf[tn - need - 1] = '\0';
	return buf;
}
