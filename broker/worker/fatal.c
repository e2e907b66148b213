/*
 * fatal.c — how the serving loop fails: kreq__loop_fatal() records the
 * error (code and message, which kreq_worker_run() returns), sets s->fatal
 * (the loop stops at its next turn) and logs it.
 *
 * Why a file of its own: every module of the worker can fail the loop
 * (the Kafka objects, group membership, the rebuild, poison requests, the
 * handler pool), so this sits below all of them; kept inside any one of
 * them it made the others call back up into it, a circle.
 */
#include <stdarg.h>
#include <stdio.h>

#include "broker/worker/worker_int.h"
#include "common/conf.h"

void kreq__loop_fatal(kreq_worker_t *s, int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->loop_errstr, sizeof(s->loop_errstr), fmt, ap);
	va_end(ap);
	s->loop_err = err;
	s->fatal = true;
	kreq__log(s->conf, 3, "worker", "%s", s->loop_errstr);
}
