/*
 * kreq/error.h — the one error enumeration of the whole project.
 *
 * Every kreq function that can fail returns an int: KREQ_OK (0) on success or
 * one of the negative KREQ_E* codes below. Codes are stable across releases;
 * new codes are only ever appended. Functions that can give detail also take
 * `char *errstr, size_t errstr_size` (librdkafka style) and write a
 * NUL-terminated message naming the cause there; errstr may be NULL.
 *
 * The table is an X-macro (libuv style): one line per code, giving the name,
 * the value and the message returned by kreq_strerror().
 */
#ifndef KREQ_ERROR_H
#define KREQ_ERROR_H

#include "kreq/common.h"

#define KREQ_ERRNO_MAP(X)                                                                          \
	X(OK, 0, "success")                                                                        \
	X(EINVAL, -1, "invalid argument")                                                          \
	X(ENOMEM, -2, "out of memory")                                                             \
	X(ETIMEDOUT, -3, "timed out")                                                              \
	X(ECANCELED, -4, "cancelled")                                                              \
	X(EREJECTED, -5, "rejected by the worker")                                                 \
	X(EUNAVAILABLE, -6, "service unavailable")                                                 \
	X(EBACKPRESSURE, -7, "too many calls in flight")                                           \
	X(ECLOSED, -8, "closed")                                                                   \
	X(EMALFORMED, -9, "malformed message")                                                     \
	X(EVERSION, -10, "unsupported protocol version")                                           \
	X(EUNKNOWNKEY, -11, "unknown key id")                                                      \
	X(EBADSIG, -12, "signature does not verify")                                               \
	X(EOVERSIZE, -13, "message too large")                                                     \
	X(EEXPIRED, -14, "deadline has passed")                                                    \
	X(EFUTURE, -15, "issued in the future beyond the allowed clock skew")                      \
	X(EKEYFILE, -16, "invalid key file")                                                       \
	X(EKEYPERM, -17, "key file has an unsafe owner or permissions")                            \
	X(ENOSIGNKEY, -18, "key cannot sign (public key only or no signing key set)")              \
	X(ECONF, -19, "invalid configuration")                                                     \
	X(ENOENT, -20, "not found")                                                                \
	X(EEXIST, -21, "already exists")                                                           \
	X(EIO, -22, "input/output error")                                                          \
	X(EKAFKA, -23, "Kafka error")                                                              \
	X(ESTATE, -24, "operation not valid in the current state")                                 \
	X(EDENIED, -25, "not permitted for this key")                                              \
	X(ECONFLICT, -26, "idempotency key reused with a different request")

/** Error codes. KREQ_OK is 0, every error is negative. */
typedef enum kreq_err {
#define KREQ__ERR_ENUM(name, value, msg) KREQ_##name = value,
	KREQ_ERRNO_MAP(KREQ__ERR_ENUM)
#undef KREQ__ERR_ENUM
} kreq_err_t;

/** Human-readable message for a code ("timed out"); "unknown error" for
 *  values not in the table. Static storage; any thread. */
KREQ_API const char *kreq_strerror(int err);

/** Symbolic name of a code without the prefix ("ETIMEDOUT", "OK");
 *  "UNKNOWN" for values not in the table. Static storage; any thread. */
KREQ_API const char *kreq_err_name(int err);

#endif
