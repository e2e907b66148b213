/*
 * builtins.h — kreqd's built-in handlers, registered as <service>.<name>
 * when named in kreqd.builtins:
 *
 *   echo    replies the payload (inline: runs on the loop thread)
 *   sleep   payload = milliseconds as decimal text; sleeps in 10 ms slices
 *           checking kreq_request_cancelled(); status 3 (cancelled) with an
 *           error text if cancelled, else replies the payload
 *   fail    payload = empty or a decimal status >= 100 (default 500);
 *           replies that status with error text "failed on purpose" (inline)
 *   record  appends "<key id> <idempotency key hex> <method>\n" to
 *           kreqd.record.file in one write(2) (O_APPEND), then, if the
 *           payload starts with "sleep:<ms>", sleeps like `sleep`; then
 *           replies the payload
 *
 * A payload these handlers cannot use gets status 400 and an error text
 * saying what was expected; a failed append gets status 500 naming the file.
 * They are for tests, demos and health probes of a deployment.
 */
#ifndef KREQD_BUILTINS_H
#define KREQD_BUILTINS_H

#include <stdbool.h>
#include <stddef.h>

#include "kreq/worker.h"

typedef struct kreqd_builtins kreqd_builtins_t;

/* Longest sleep the built-ins accept, in ms (one hour). */
#define KREQD_SLEEP_MAX_MS 3600000L

/* Status of a built-in's refusal of its payload. */
#define KREQD_STATUS_BAD_PAYLOAD 400
/* Status of a failed append to kreqd.record.file. */
#define KREQD_STATUS_RECORD_FAILED 500

/* Checks the comma-separated list of built-in names (unknown or repeated
 * names are errors) and, if `record` is listed, that record_file is set.
 * With open_files, also opens record_file (O_WRONLY|O_APPEND|O_CREAT, mode
 * 0640). On success *out holds the state the handlers use. KREQ_OK, or
 * KREQ_ECONF / KREQ_EIO / KREQ_ENOMEM with errstr naming the cause. */
int kreqd_builtins_new(const char *list, const char *record_file, bool open_files,
                       kreqd_builtins_t **out, char *errstr, size_t errstr_size);

/* Registers every listed built-in as <service>.<name> on s. KREQ_OK or the
 * kreq_worker_register() error, with errstr naming the method. */
int kreqd_builtins_register(kreqd_builtins_t *b, kreq_worker_t *s, const char *service,
                            char *errstr, size_t errstr_size);

/* Closes the record file and frees b; only once no handler can run (after
 * kreq_worker_destroy()). NULL is a no-op. */
void kreqd_builtins_destroy(kreqd_builtins_t *b);

#endif
