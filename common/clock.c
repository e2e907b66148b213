/* clock.c — time sources and the errstr helper used throughout kreq. */
#include <stdio.h>
#include <time.h>

#include "common/hoptrace.h"
#include "common/internal.h"

#ifdef KREQ_HOPTRACE
_Atomic int64_t kreq__hop_ns[KREQ__HOP_N];
#endif

int kreq__err(char *errstr, size_t errstr_size, int err, const char *fmt, ...)
{
	if (errstr && errstr_size > 0) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(errstr, errstr_size, fmt, ap);
		va_end(ap);
	}
	return err;
}

int64_t kreq__now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t kreq__mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
