/*
 * common.c — helpers shared by the `kreq` subcommands (see cli.h).
 *
 * Every helper that can fail prints its own message naming the cause, in the
 * one "kreq <sub>: ..." form, and returns the exit code the subcommand should
 * return, so a subcommand's error paths stay one line each.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "cli/cli.h"
#include "kreq/error.h"

#define ADMIN_TIMEOUT_S  5
#define ADMIN_ANSWER_MAX (64u << 20)

static void vmessage(const char *sub, const char *fmt, va_list ap)
{
	fprintf(stderr, "kreq %s: ", sub);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

int cli_usage_error(const char *sub, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vmessage(sub, fmt, ap);
	va_end(ap);
	fprintf(stderr, "Try 'kreq %s --help'.\n", sub);
	return CLI_EXIT_USAGE;
}

int cli_fail(int code, const char *sub, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vmessage(sub, fmt, ap);
	va_end(ap);
	return code;
}

int cli_getopt_error(const char *sub, char **argv, int c)
{
	const char *arg = optind > 0 ? argv[optind - 1] : "?";
	if (c == ':')
		return cli_usage_error(sub, "option '%s' needs a value", arg);
	if (optopt != 0)
		return cli_usage_error(sub, "unknown option '-%c'", optopt);
	return cli_usage_error(sub, "unknown option '%s'", arg);
}

bool cli_parse_long(const char *s, long min, long max, long *out)
{
	char *end = NULL;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
		return false;
	*out = v;
	return true;
}

int cli_load_keyring(const char *sub, const char *path, kreq_keyring_t **out)
{
	char err[512];
	kreq_keyring_t *kr = kreq_keyring_new();
	if (kr == NULL)
		return cli_fail(CLI_EXIT_FAIL, sub, "cannot create a keyring (out of memory)");
	int rc = kreq_keyring_load_file(kr, path, err, sizeof(err));
	if (rc != KREQ_OK) {
		kreq_keyring_release(kr);
		return cli_fail(CLI_EXIT_FAIL, sub, "cannot load key file %s: %s (%s)", path, err,
		                kreq_err_name(rc));
	}
	*out = kr;
	return CLI_EXIT_OK;
}

int cli_signals_block(const char *sub)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	int err = pthread_sigmask(SIG_BLOCK, &set, NULL);
	if (err != 0) {
		cli_fail(CLI_EXIT_FAIL, sub, "cannot block signals: %s", strerror(err));
		return -1;
	}
	int fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (fd < 0)
		cli_fail(CLI_EXIT_FAIL, sub, "signalfd: %s", strerror(errno));
	return fd;
}

bool cli_signalled(int sigfd)
{
	struct signalfd_siginfo si;
	return read(sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si);
}

void cli_hex(const uint8_t *b, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[b[i] >> 4];
		out[2 * i + 1] = digits[b[i] & 15];
	}
	out[2 * n] = '\0';
}

/* Length of the UTF-8 sequence starting at b[0] (shortest form, no
 * surrogates, at most U+10FFFF), or 0 if invalid. */
static size_t utf8_seq(const uint8_t *b, size_t n)
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

bool cli_is_text(const uint8_t *b, size_t n)
{
	for (size_t i = 0; i < n;) {
		if (b[i] < 0x80) {
			if ((b[i] < 0x20 && b[i] != '\t' && b[i] != '\n' && b[i] != '\r') ||
			    b[i] == 0x7f)
				return false;
			i++;
			continue;
		}
		size_t len = utf8_seq(b + i, n - i);
		if (len == 0)
			return false;
		i += len;
	}
	return true;
}

char *cli_base64(const uint8_t *b, size_t n)
{
	size_t size = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);
	char *s = malloc(size);
	if (s != NULL)
		sodium_bin2base64(s, size, b, n, sodium_base64_VARIANT_ORIGINAL);
	return s;
}

int cli_consumer_new(const char *sub, const char *const (*props)[2], size_t n, rd_kafka_t **out)
{
	char err[512];
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	for (size_t i = 0; i < n; i++) {
		if (rd_kafka_conf_set(conf, props[i][0], props[i][1], err, sizeof(err)) !=
		    RD_KAFKA_CONF_OK) {
			rd_kafka_conf_destroy(conf);
			return cli_fail(CLI_EXIT_USAGE, sub, "Kafka setting %s: %s", props[i][0],
			                err);
		}
	}
	*out = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
	if (*out == NULL) {
		rd_kafka_conf_destroy(conf);
		return cli_fail(CLI_EXIT_FAIL, sub, "cannot create a Kafka consumer: %s", err);
	}
	rd_kafka_poll_set_consumer(*out);
	return CLI_EXIT_OK;
}

int64_t cli_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void cli_fmt_ms(int64_t ms, char *buf, size_t size)
{
	const char *sign = ms < 0 ? "-" : "";
	long long a = ms < 0 ? -(long long)ms : (long long)ms;
	if (a < 1000)
		snprintf(buf, size, "%s%lldms", sign, a);
	else if (a < 60000)
		snprintf(buf, size, "%s%.1fs", sign, (double)a / 1000.0);
	else
		snprintf(buf, size, "%s%lldm%02llds", sign, a / 60000, a / 1000 % 60);
}

/* ---- admin socket --------------------------------------------------------- */

static const char *connect_hint(int err)
{
	switch (err) {
	case ENOENT:
		return " (no such socket: is admin.socket set and the client running?)";
	case ECONNREFUSED:
		return " (nothing listens there: the client has stopped)";
	case EACCES:
		return " (the socket is mode 0600: run as the client's user)";
	default:
		return "";
	}
}

static int admin_connect(const char *sub, const char *path, int *fdp)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(sa.sun_path))
		return cli_usage_error(sub, "socket path longer than %zu bytes: %s",
		                       sizeof(sa.sun_path) - 1, path);
	memcpy(sa.sun_path, path, strlen(path) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return cli_fail(CLI_EXIT_FAIL, sub, "socket: %s", strerror(errno));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		int e = errno;
		close(fd);
		return cli_fail(CLI_EXIT_FAIL, sub, "cannot connect to admin socket %s: %s%s", path,
		                strerror(e), connect_hint(e));
	}
	struct timeval tv = {.tv_sec = ADMIN_TIMEOUT_S};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	*fdp = fd;
	return CLI_EXIT_OK;
}

/* Reads fd until EOF into a new NUL-terminated string; NULL with errno. */
static char *read_to_eof(int fd)
{
	size_t len = 0, cap = 4096;
	char *buf = malloc(cap);
	while (buf != NULL) {
		if (len + 1 == cap) {
			char *nb = cap < ADMIN_ANSWER_MAX ? realloc(buf, cap * 2) : NULL;
			if (nb == NULL) {
				free(buf);
				errno = cap < ADMIN_ANSWER_MAX ? ENOMEM : EFBIG;
				return NULL;
			}
			buf = nb;
			cap *= 2;
		}
		ssize_t n = read(fd, buf + len, cap - 1 - len);
		if (n == 0)
			break;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = errno;
			free(buf);
			errno = e == EAGAIN ? ETIMEDOUT : e;
			return NULL;
		}
		len += (size_t)n;
	}
	if (buf != NULL)
		buf[len] = '\0';
	return buf;
}

int cli_admin_query(const char *sub, const char *path, const char *cmd, char **out)
{
	int fd = -1;
	int rc = admin_connect(sub, path, &fd);
	if (rc != CLI_EXIT_OK)
		return rc;
	size_t len = strlen(cmd);
	if (write(fd, cmd, len) != (ssize_t)len) {
		rc = cli_fail(CLI_EXIT_FAIL, sub, "cannot send '%.*s' to admin socket %s: %s",
		              (int)strcspn(cmd, "\n"), cmd, path, strerror(errno));
		close(fd);
		return rc;
	}
	char *text = read_to_eof(fd);
	int e = errno;
	close(fd);
	if (text == NULL)
		return cli_fail(CLI_EXIT_FAIL, sub,
		                "cannot read the answer from admin socket %s: %s", path,
		                strerror(e));
	*out = text;
	return CLI_EXIT_OK;
}

int cli_admin_refused(const char *sub, const char *text)
{
	json_t *j = json_loads(text, 0, NULL);
	const char *msg = json_string_value(json_object_get(j, "error"));
	int rc = -1;
	if (msg != NULL)
		rc = cli_fail(CLI_EXIT_REMOTE, sub, "the client refused the request: %s", msg);
	json_decref(j);
	return rc;
}

int cli_print_json(const char *sub, json_t *j)
{
	char *s = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	if (s == NULL)
		return cli_fail(CLI_EXIT_FAIL, sub, "cannot build JSON output (out of memory)");
	int ok = puts(s) >= 0 && fflush(stdout) == 0;
	free(s);
	if (!ok)
		return cli_fail(CLI_EXIT_FAIL, sub, "cannot write to stdout: %s", strerror(errno));
	return CLI_EXIT_OK;
}
