/*
 * klog.c — see klog.h.
 *
 * Why a hand-written escaper and not jansson for the JSON lines: jansson
 * refuses strings that are not valid UTF-8 (json_string() returns NULL),
 * and a log line must never be lost because a Kafka broker name or an error text
 * held a stray byte. One escaper serves both formats; it appends an escaped
 * unit only when it fits whole, so a cut line is still well-formed.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker/kreqd/klog.h"
#include "common/internal.h"

#define LINE_MAX_BYTES 8192
#define TAIL_RESERVE   8 /* room kept for the closing quote, brace and newline */

static kreqd_log_format_t log_format = KREQD_LOG_TEXT;
static int log_max_level = 6;

void kreqd_log_setup(kreqd_log_format_t format, int max_level)
{
	log_format = format;
	log_max_level = max_level;
}

bool kreqd_log_parse_format(const char *s, kreqd_log_format_t *out)
{
	if (!strcmp(s, "text"))
		*out = KREQD_LOG_TEXT;
	else if (!strcmp(s, "json"))
		*out = KREQD_LOG_JSON;
	else
		return false;
	return true;
}

static const char *level_name(int level)
{
	static const char *const names[] = {"emerg",   "alert",  "crit", "err",
	                                    "warning", "notice", "info", "debug"};
	return level >= 0 && level <= 7 ? names[level] : "debug";
}

/* ---- a bounded line buffer ---------------------------------------------- */

typedef struct line {
	char *buf;
	size_t cap, len; /* cap excludes TAIL_RESERVE */
	bool full;
} line_t;

static void put(line_t *l, const char *s, size_t n)
{
	if (l->full || l->len + n > l->cap) {
		l->full = true;
		return;
	}
	memcpy(l->buf + l->len, s, n);
	l->len += n;
}

static void puts_(line_t *l, const char *s)
{
	put(l, s, strlen(s));
}

/* Length of the valid UTF-8 sequence (shortest form, no surrogates, at most
 * U+10FFFF) starting at b, or 0. */
static size_t utf8_len(const unsigned char *b, size_t n)
{
	size_t len = b[0] >= 0xf0 ? 4 : b[0] >= 0xe0 ? 3 : b[0] >= 0xc2 ? 2 : 0;
	if (len == 0 || b[0] > 0xf4 || len > n)
		return 0;
	for (size_t i = 1; i < len; i++)
		if ((b[i] & 0xc0) != 0x80)
			return 0;
	if ((b[0] == 0xe0 && b[1] < 0xa0) || (b[0] == 0xed && b[1] >= 0xa0) ||
	    (b[0] == 0xf0 && b[1] < 0x90) || (b[0] == 0xf4 && b[1] >= 0x90))
		return 0;
	return len;
}

/* The escape of one ASCII control character (or '"', '\\', DEL). */
static void escape_ascii(line_t *l, unsigned char c, bool json)
{
	char tmp[8];
	const char *named = c == '"'    ? "\\\""
	                    : c == '\\' ? "\\\\"
	                    : c == '\n' ? "\\n"
	                    : c == '\t' ? "\\t"
	                    : c == '\r' ? "\\r"
	                                : NULL;
	if (named)
		puts_(l, named);
	else if (json)
		put(l, tmp, (size_t)snprintf(tmp, sizeof(tmp), "\\u%04x", c));
	else
		put(l, tmp, (size_t)snprintf(tmp, sizeof(tmp), "\\x%02x", c));
}

static void put_escaped(line_t *l, const char *s, bool json)
{
	const unsigned char *b = (const unsigned char *)s;
	size_t n = strlen(s);
	for (size_t i = 0; i < n && !l->full;) {
		if (b[i] >= 0x20 && b[i] < 0x7f && b[i] != '"' && b[i] != '\\') {
			put(l, s + i, 1);
			i++;
		} else if (b[i] < 0x80) {
			escape_ascii(l, b[i], json);
			i++;
		} else {
			size_t u = utf8_len(b + i, n - i);
			if (u) {
				put(l, s + i, u);
				i += u;
			} else {
				char tmp[8];
				if (json)
					puts_(l, "\\ufffd");
				else
					put(l, tmp,
					    (size_t)snprintf(tmp, sizeof(tmp), "\\x%02x", b[i]));
				i++;
			}
		}
	}
}

/* A facility as a bare text token: [A-Za-z0-9._-], others become '_'. */
static void put_token(line_t *l, const char *s)
{
	for (; *s && !l->full; s++) {
		char c = *s;
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		          (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
		put(l, ok ? s : "_", 1);
	}
}

static void put_ts(line_t *l, long long ts_ms)
{
	time_t secs = (time_t)(ts_ms / 1000);
	struct tm tm;
	char tmp[48];
	gmtime_r(&secs, &tm);
	size_t n = strftime(tmp, sizeof(tmp), "%Y-%m-%dT%H:%M:%S", &tm);
	n += (size_t)snprintf(tmp + n, sizeof(tmp) - n, ".%03dZ", (int)(ts_ms % 1000));
	put(l, tmp, n);
}

size_t kreqd_log_format(char *out, size_t n, kreqd_log_format_t format, long long ts_ms, int level,
                        const char *fac, const char *msg)
{
	line_t l = {.buf = out, .cap = n - TAIL_RESERVE};
	bool json = format == KREQD_LOG_JSON;
	if (json) {
		puts_(&l, "{\"ts\":\"");
		put_ts(&l, ts_ms);
		puts_(&l, "\",\"level\":\"");
		puts_(&l, level_name(level));
		puts_(&l, "\",\"fac\":\"");
		put_escaped(&l, fac, true);
		puts_(&l, "\",\"msg\":\"");
	} else {
		puts_(&l, "ts=");
		put_ts(&l, ts_ms);
		puts_(&l, " level=");
		puts_(&l, level_name(level));
		puts_(&l, " fac=");
		put_token(&l, fac);
		puts_(&l, " msg=\"");
	}
	put_escaped(&l, msg, json);
	/* the reserve always holds the tail, whether or not the line was cut */
	const char *tail = json ? "\"}\n" : "\"\n";
	memcpy(out + l.len, tail, strlen(tail) + 1);
	return l.len + strlen(tail);
}

void kreqd_log_emit(int level, const char *fac, const char *msg)
{
	if (level > log_max_level)
		return;
	char line[LINE_MAX_BYTES];
	size_t n = kreqd_log_format(line, sizeof(line), log_format, (long long)kreq__now_ms(),
	                            level, fac ? fac : "", msg ? msg : "");
	if (kreq__write_all(STDERR_FILENO, line, n) != 0)
		return; /* nowhere left to report it */
}

void kreqd_log(int level, const char *fmt, ...)
{
	char msg[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	kreqd_log_emit(level, "kreqd", msg);
}

void kreqd_log_cb(void *opaque, int level, const char *fac, const char *msg)
{
	(void)opaque;
	kreqd_log_emit(level, fac, msg);
}
