/* conf.h — internal typed accessors over the property table. */
#ifndef KREQ_CONF_INTERNAL_H
#define KREQ_CONF_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <librdkafka/rdkafka.h>

#include "common/conf_props.h"
#include "kreq/conf.h"

typedef enum kreq__prop {
#define KREQ__PROP_ENUM(id, name, type, def, min, max, doc) KREQ__P_##id,
	KREQ__PROPS(KREQ__PROP_ENUM)
#undef KREQ__PROP_ENUM
	    KREQ__P_COUNT
} kreq__prop_t;

int64_t kreq__conf_int(const kreq_conf_t *conf, kreq__prop_t p);
bool kreq__conf_bool(const kreq_conf_t *conf, kreq__prop_t p);
const char *kreq__conf_str(const kreq_conf_t *conf, kreq__prop_t p);

/* Applies every "kafka." property to rk_conf, in the order they were set. */
int kreq__conf_kafka_apply(const kreq_conf_t *conf, rd_kafka_conf_t *rk_conf, char *errstr,
                           size_t errstr_size);

/* Logs one line through the configured callback (or stderr) if level is
 * within log.level. Thread-safe. */
void kreq__log(const kreq_conf_t *conf, int level, const char *fac, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* kreq_conf_load_file() on len bytes of text in memory, named name in
 * messages (the config parser's fuzz target uses it). */
int kreq__conf_load_text(kreq_conf_t *conf, const char *name, const char *text, size_t len,
                         char *errstr, size_t errstr_size);

/* Writes docs/CONFIGURATION.md's content, generated from the table. */
void kreq__conf_markdown(FILE *out);

#endif
