/*
 * conf.c — the configuration object.
 *
 * Why strings: every value is kept as the string the user gave (so
 * kreq_conf_get() returns exactly it) and, for INT/BOOL properties, also in
 * parsed form so hot paths read an int64 without parsing. "kafka." entries
 * are validated against a scratch rd_kafka_conf_t at set time, so a typo
 * fails where it is made rather than when a client starts.
 */
#include <ctype.h>
#include <stdarg.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/conf.h"
#include "common/internal.h"

enum kreq__ptype { KREQ__T_INT, KREQ__T_BOOL, KREQ__T_STR };

typedef struct kreq__propdef {
	const char *name;
	enum kreq__ptype type;
	const char *def;
	int64_t min, max;
	const char *doc;
} kreq__propdef_t;

static const kreq__propdef_t props[KREQ__P_COUNT] = {
#define KREQ__PROP_DEF(id, pname, ptype, pdef, pmin, pmax, pdoc)                                   \
	[KREQ__P_##id] = {pname, KREQ__T_##ptype, pdef, pmin, pmax, pdoc},
    KREQ__PROPS(KREQ__PROP_DEF)
#undef KREQ__PROP_DEF
};

typedef struct kreq__kv {
	char *name; /* without the "kafka." prefix */
	char *value;
} kreq__kv_t;

struct kreq_conf_s {
	char *str[KREQ__P_COUNT];
	int64_t num[KREQ__P_COUNT];
	kreq__kv_t *kafka;
	size_t kafka_len, kafka_cap;
	kreq_log_cb_t *log_cb;
	void *log_opaque;
};

#define KAFKA_PREFIX "kafka."

static int find_prop(const char *name)
{
	for (int i = 0; i < KREQ__P_COUNT; i++)
		if (strcmp(props[i].name, name) == 0)
			return i;
	return -1;
}

static int parse_int(const kreq__propdef_t *d, const char *v, int64_t *out, char *errstr,
                     size_t errstr_size)
{
	char *end;
	errno = 0;
	long long n = strtoll(v, &end, 10);
	if (errno || end == v || *end != '\0' || isspace((unsigned char)*v))
		return kreq__err(errstr, errstr_size, KREQ_ECONF,
		                 "%s: \"%s\" is not a decimal integer", d->name, v);
	if (n < d->min || n > d->max)
		return kreq__err(errstr, errstr_size, KREQ_ECONF,
		                 "%s: %lld is out of range [%" PRId64 ", %" PRId64 "]", d->name, n,
		                 d->min, d->max);
	*out = n;
	return KREQ_OK;
}

static int parse_value(const kreq__propdef_t *d, const char *v, int64_t *num, char *errstr,
                       size_t errstr_size)
{
	size_t len = strlen(v);
	switch (d->type) {
	case KREQ__T_INT:
		return parse_int(d, v, num, errstr, errstr_size);
	case KREQ__T_BOOL:
		if (!strcmp(v, "true") || !strcmp(v, "false")) {
			*num = v[0] == 't';
			return KREQ_OK;
		}
		return kreq__err(errstr, errstr_size, KREQ_ECONF, "%s: \"%s\" is not true or false",
		                 d->name, v);
	case KREQ__T_STR:
		if ((int64_t)len < d->min || (int64_t)len > d->max)
			return kreq__err(errstr, errstr_size, KREQ_ECONF,
			                 "%s: length %zu is out of range [%" PRId64 ", %" PRId64
			                 "]",
			                 d->name, len, d->min, d->max);
		*num = 0;
		return KREQ_OK;
	}
	return KREQ_ECONF;
}

static int set_prop(kreq_conf_t *conf, int i, const char *value, char *errstr, size_t errstr_size)
{
	int64_t num = 0;
	int err = parse_value(&props[i], value, &num, errstr, errstr_size);
	if (err)
		return err;
	char *copy = strdup(value);
	if (!copy)
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	free(conf->str[i]);
	conf->str[i] = copy;
	conf->num[i] = num;
	return KREQ_OK;
}

kreq_conf_t *kreq_conf_new(void)
{
	kreq_conf_t *conf = calloc(1, sizeof(*conf));
	if (!conf)
		return NULL;
	for (int i = 0; i < KREQ__P_COUNT; i++) {
		if (set_prop(conf, i, props[i].def, NULL, 0) != KREQ_OK) {
			kreq_conf_destroy(conf);
			return NULL;
		}
	}
	return conf;
}

void kreq_conf_destroy(kreq_conf_t *conf)
{
	if (!conf)
		return;
	for (int i = 0; i < KREQ__P_COUNT; i++)
		free(conf->str[i]);
	for (size_t i = 0; i < conf->kafka_len; i++) {
		free(conf->kafka[i].name);
		free(conf->kafka[i].value);
	}
	free(conf->kafka);
	free(conf);
}

static int kafka_validate(const char *name, const char *value, char *errstr, size_t errstr_size)
{
	char why[512] = "";
	rd_kafka_conf_t *scratch = rd_kafka_conf_new();
	if (!scratch)
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	rd_kafka_conf_res_t res = rd_kafka_conf_set(scratch, name, value, why, sizeof(why));
	rd_kafka_conf_destroy(scratch);
	if (res != RD_KAFKA_CONF_OK)
		return kreq__err(errstr, errstr_size,
		                 res == RD_KAFKA_CONF_UNKNOWN ? KREQ_ENOENT : KREQ_ECONF,
		                 "kafka.%s: %s", name, why);
	return KREQ_OK;
}

static int kafka_put(kreq_conf_t *conf, const char *name, const char *value)
{
	char *v = strdup(value);
	if (!v)
		return KREQ_ENOMEM;
	for (size_t i = 0; i < conf->kafka_len; i++) {
		if (strcmp(conf->kafka[i].name, name) == 0) {
			free(conf->kafka[i].value);
			conf->kafka[i].value = v;
			return KREQ_OK;
		}
	}
	if (conf->kafka_len == conf->kafka_cap) {
		size_t cap = conf->kafka_cap ? conf->kafka_cap * 2 : 8;
		kreq__kv_t *n = realloc(conf->kafka, cap * sizeof(*n));
		if (!n) {
			free(v);
			return KREQ_ENOMEM;
		}
		conf->kafka = n;
		conf->kafka_cap = cap;
	}
	char *k = strdup(name);
	if (!k) {
		free(v);
		return KREQ_ENOMEM;
	}
	conf->kafka[conf->kafka_len++] = (kreq__kv_t){k, v};
	return KREQ_OK;
}

static int set_kafka(kreq_conf_t *conf, const char *name, const char *value, char *errstr,
                     size_t errstr_size)
{
	if (*name == '\0')
		return kreq__err(errstr, errstr_size, KREQ_ENOENT,
		                 "\"kafka.\" needs a librdkafka property name after the prefix");
	int err = kafka_validate(name, value, errstr, errstr_size);
	if (err)
		return err;
	if (kafka_put(conf, name, value))
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	return KREQ_OK;
}

/* The worker's properties were once called server.*: an old name is
 * refused with the new one, so that a configuration file is fixed at once. */
static int unknown_prop(const char *name, char *errstr, size_t errstr_size)
{
	static const char old[] = "server.";
	char renamed[256];
	if (!strncmp(name, old, strlen(old)) &&
	    snprintf(renamed, sizeof(renamed), "worker.%s", name + strlen(old)) <
	        (int)sizeof(renamed) &&
	    find_prop(renamed) >= 0)
		return kreq__err(errstr, errstr_size, KREQ_ENOENT,
		                 "no such property \"%s\": the worker's properties are called "
		                 "\"worker.*\" (use \"%s\")",
		                 name, renamed);
	return kreq__err(errstr, errstr_size, KREQ_ENOENT,
	                 "no such property \"%s\" (librdkafka properties take the "
	                 "\"kafka.\" prefix)",
	                 name);
}

int kreq_conf_set(kreq_conf_t *conf, const char *name, const char *value, char *errstr,
                  size_t errstr_size)
{
	if (!conf || !name || !value)
		return kreq__err(errstr, errstr_size, KREQ_EINVAL,
		                 "kreq_conf_set: conf, name and value must not be NULL");
	if (strncmp(name, KAFKA_PREFIX, strlen(KAFKA_PREFIX)) == 0)
		return set_kafka(conf, name + strlen(KAFKA_PREFIX), value, errstr, errstr_size);
	int i = find_prop(name);
	if (i < 0)
		return unknown_prop(name, errstr, errstr_size);
	return set_prop(conf, i, value, errstr, errstr_size);
}

static const char *lookup(const kreq_conf_t *conf, const char *name)
{
	if (strncmp(name, KAFKA_PREFIX, strlen(KAFKA_PREFIX)) == 0) {
		for (size_t i = 0; i < conf->kafka_len; i++)
			if (!strcmp(conf->kafka[i].name, name + strlen(KAFKA_PREFIX)))
				return conf->kafka[i].value;
		return NULL;
	}
	int i = find_prop(name);
	return i < 0 ? NULL : conf->str[i];
}

int kreq_conf_get(const kreq_conf_t *conf, const char *name, char *dest, size_t *dest_size)
{
	if (!conf || !name || !dest_size)
		return KREQ_EINVAL;
	const char *v = lookup(conf, name);
	if (!v)
		return KREQ_ENOENT;
	size_t need = strlen(v) + 1;
	size_t have = *dest_size;
	*dest_size = need;
	if (!dest)
		return KREQ_OK;
	if (have < need)
		return KREQ_EOVERSIZE;
	memcpy(dest, v, need);
	return KREQ_OK;
}

kreq_conf_t *kreq_conf_dup(const kreq_conf_t *conf)
{
	if (!conf)
		return NULL;
	kreq_conf_t *c = kreq_conf_new();
	if (!c)
		return NULL;
	for (int i = 0; i < KREQ__P_COUNT; i++)
		if (set_prop(c, i, conf->str[i], NULL, 0))
			goto fail;
	for (size_t i = 0; i < conf->kafka_len; i++)
		if (kafka_put(c, conf->kafka[i].name, conf->kafka[i].value))
			goto fail;
	c->log_cb = conf->log_cb;
	c->log_opaque = conf->log_opaque;
	return c;
fail:
	kreq_conf_destroy(c);
	return NULL;
}

static char *trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	char *e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

static int load_line(kreq_conf_t *conf, char *line, const char *path, int lineno, char *errstr,
                     size_t errstr_size)
{
	char *s = trim(line);
	if (*s == '\0' || *s == '#')
		return KREQ_OK;
	char *eq = strchr(s, '=');
	if (!eq)
		return kreq__err(errstr, errstr_size, KREQ_ECONF,
		                 "%s:%d: expected \"name = value\"", path, lineno);
	*eq = '\0';
	char why[512];
	int err = kreq_conf_set(conf, trim(s), trim(eq + 1), why, sizeof(why));
	if (err)
		return kreq__err(errstr, errstr_size, err, "%s:%d: %s", path, lineno, why);
	return KREQ_OK;
}

/* Reads "name = value" lines from f (named path in messages). */
static int load_stream(kreq_conf_t *conf, FILE *f, const char *path, char *errstr,
                       size_t errstr_size)
{
	char line[8192];
	int lineno = 0, err = KREQ_OK;
	while (!err && fgets(line, sizeof(line), f)) {
		lineno++;
		if (!strchr(line, '\n') && !feof(f))
			err = kreq__err(errstr, errstr_size, KREQ_ECONF,
			                "%s:%d: line longer than %zu bytes", path, lineno,
			                sizeof(line) - 2);
		else
			err = load_line(conf, line, path, lineno, errstr, errstr_size);
	}
	if (!err && ferror(f))
		err = kreq__err(errstr, errstr_size, KREQ_EIO, "%s: read error", path);
	return err;
}

int kreq_conf_load_file(kreq_conf_t *conf, const char *path, char *errstr, size_t errstr_size)
{
	if (!conf || !path)
		return kreq__err(errstr, errstr_size, KREQ_EINVAL,
		                 "kreq_conf_load_file: conf and path must not be NULL");
	FILE *f = fopen(path, "r");
	if (!f)
		return kreq__err(errstr, errstr_size, KREQ_EIO, "%s: %s", path, strerror(errno));
	int err = load_stream(conf, f, path, errstr, errstr_size);
	fclose(f);
	return err;
}

int kreq__conf_load_text(kreq_conf_t *conf, const char *name, const char *text, size_t len,
                         char *errstr, size_t errstr_size)
{
	if (len == 0)
		return KREQ_OK;
	FILE *f = fmemopen((void *)text, len, "r");
	if (!f)
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	int err = load_stream(conf, f, name, errstr, errstr_size);
	fclose(f);
	return err;
}

int64_t kreq__conf_int(const kreq_conf_t *conf, kreq__prop_t p)
{
	return conf->num[p];
}

bool kreq__conf_bool(const kreq_conf_t *conf, kreq__prop_t p)
{
	return conf->num[p] != 0;
}

const char *kreq__conf_str(const kreq_conf_t *conf, kreq__prop_t p)
{
	return conf->str[p];
}

int kreq__conf_kafka_apply(const kreq_conf_t *conf, rd_kafka_conf_t *rk_conf, char *errstr,
                           size_t errstr_size)
{
	char why[512];
	for (size_t i = 0; i < conf->kafka_len; i++) {
		if (rd_kafka_conf_set(rk_conf, conf->kafka[i].name, conf->kafka[i].value, why,
		                      sizeof(why)) != RD_KAFKA_CONF_OK)
			return kreq__err(errstr, errstr_size, KREQ_ECONF, "kafka.%s: %s",
			                 conf->kafka[i].name, why);
	}
	return KREQ_OK;
}

static const char *type_name(enum kreq__ptype t)
{
	return t == KREQ__T_INT ? "integer" : t == KREQ__T_BOOL ? "boolean" : "string";
}

void kreq__conf_markdown(FILE *out)
{
	fputs("# Configuration reference\n\n"
	      "Generated from the property table in `common/conf_props.h` by `kreq-confdoc`;\n"
	      "do not edit by hand. Set properties with `kreq_conf_set()` or in a file read by\n"
	      "`kreq_conf_load_file()` (`name = value` lines). Any librdkafka property can be\n"
	      "given with the `kafka.` prefix (for example `kafka.bootstrap.servers`); it is\n"
	      "validated by librdkafka when set.\n\n"
	      "| Property | Type | Range | Default | Description |\n"
	      "|---|---|---|---|---|\n",
	      out);
	for (int i = 0; i < KREQ__P_COUNT; i++) {
		const kreq__propdef_t *d = &props[i];
		fprintf(out, "| `%s` | %s | ", d->name, type_name(d->type));
		if (d->type == KREQ__T_INT)
			fprintf(out, "%" PRId64 " .. %" PRId64, d->min, d->max);
		else if (d->type == KREQ__T_STR)
			fprintf(out, "length %" PRId64 " .. %" PRId64, d->min, d->max);
		else
			fputs("true, false", out);
		fprintf(out, " | `%s` | %s |\n", d->def, d->doc);
	}
	fputs("\n## librdkafka settings kreq changes\n\n"
	      "kreq sets these before applying your `kafka.` properties, which override them.\n\n"
	      "| Client | Property | kreq's value | Why |\n|---|---|---|---|\n",
	      out);
#define KREQ__KV_ROW(who, name, value, why)                                                        \
	fprintf(out, "| " who " | `%s` | `%s` | %s |\n", name, value, why);
#define KREQ__P(name, value, why) KREQ__KV_ROW("producer", name, value, why)
	KREQ__KAFKA_PRODUCER_DEFAULTS(KREQ__P)
#undef KREQ__P
#define KREQ__C(name, value, why) KREQ__KV_ROW("reply consumer", name, value, why)
	KREQ__KAFKA_CONSUMER_DEFAULTS(KREQ__C)
#undef KREQ__C
#define KREQ__SP(name, value, why) KREQ__KV_ROW("worker producer", name, value, why)
	KREQ__KAFKA_WORKER_PRODUCER_DEFAULTS(KREQ__SP)
#undef KREQ__SP
#define KREQ__SC(name, value, why) KREQ__KV_ROW("worker consumer", name, value, why)
	KREQ__KAFKA_WORKER_CONSUMER_DEFAULTS(KREQ__SC)
#undef KREQ__SC
#undef KREQ__KV_ROW
}

void kreq_conf_set_log_cb(kreq_conf_t *conf, kreq_log_cb_t *cb, void *opaque)
{
	if (!conf)
		return;
	conf->log_cb = cb;
	conf->log_opaque = opaque;
}

void kreq__log(const kreq_conf_t *conf, int level, const char *fac, const char *fmt, ...)
{
	if (level > conf->num[KREQ__P_LOG_LEVEL])
		return;
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (conf->log_cb)
		conf->log_cb(conf->log_opaque, level, fac, msg);
	else
		fprintf(stderr, "kreq %s[%d]: %s\n", fac, level, msg);
}
