/*
 * plugins.c — see plugins.h.
 *
 * The plugin's symbol is read as a kreq_plugin_v1_t only after its first
 * field, abi_version, matched: a plugin built for another ABI may have a
 * different layout, and its version field is the one thing every ABI keeps
 * in the same place. RTLD_LOCAL keeps one plugin's symbols from resolving
 * another's; the plugin's own references to kreq_* resolve to kreqd's
 * exported copy of the library (kreqd is linked with ENABLE_EXPORTS), so a
 * plugin and kreqd share one worker object model even when the plugin also
 * links libkreq.so.
 */
#include <dlfcn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/kreqd/plugins.h"
#include "common/internal.h"
#include "kreq/plugin.h"

struct kreqd_plugin {
	char *path;
	void *dl;
	const kreq_plugin_v1_t *v1;
	bool inited;
};

/* Fails opening p: the message names its path; p is freed. */
static int bad(kreqd_plugin_t *p, int err, const char *why, char *errstr, size_t errstr_size)
{
	kreq__err(errstr, errstr_size, err, "plugin %s: %s", p->path, why);
	kreqd_plugin_close(p);
	return err;
}

int kreqd_plugin_open(const char *path, kreqd_plugin_t **out, char *errstr, size_t errstr_size)
{
	kreqd_plugin_t *p = calloc(1, sizeof(*p));
	if (!p || !(p->path = strdup(path))) {
		free(p);
		return kreq__err(errstr, errstr_size, KREQ_ENOMEM, "out of memory");
	}
	char why[768];
	if (!(p->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL))) {
		snprintf(why, sizeof(why), "cannot load: %s", dlerror());
		return bad(p, KREQ_EIO, why, errstr, errstr_size);
	}
	const uint32_t *abi = dlsym(p->dl, KREQ_PLUGIN_SYMBOL);
	if (!abi)
		return bad(p, KREQ_ENOENT, "no symbol " KREQ_PLUGIN_SYMBOL " (not a kreq plugin?)",
		           errstr, errstr_size);
	if (*abi != KREQ_PLUGIN_ABI_VERSION) {
		snprintf(why, sizeof(why),
		         "built for plugin ABI version %u, but this kreqd supports version %u",
		         (unsigned)*abi, (unsigned)KREQ_PLUGIN_ABI_VERSION);
		return bad(p, KREQ_EVERSION, why, errstr, errstr_size);
	}
	p->v1 = (const kreq_plugin_v1_t *)abi;
	if (!p->v1->init)
		return bad(p, KREQ_EINVAL, KREQ_PLUGIN_SYMBOL " has no init function", errstr,
		           errstr_size);
	*out = p;
	return KREQ_OK;
}

int kreqd_plugin_init(kreqd_plugin_t *p, kreq_worker_t *s, char *errstr, size_t errstr_size)
{
	char why[512] = "";
	int err = p->v1->init(s, why, sizeof(why));
	if (err)
		return kreq__err(errstr, errstr_size, err, "plugin %s (%s): init failed: %s (%s)",
		                 kreqd_plugin_name(p), p->path, *why ? why : kreq_strerror(err),
		                 kreq_err_name(err));
	p->inited = true;
	return KREQ_OK;
}

const char *kreqd_plugin_name(const kreqd_plugin_t *p)
{
	return p->v1 && p->v1->name && *p->v1->name ? p->v1->name : p->path;
}

const char *kreqd_plugin_path(const kreqd_plugin_t *p)
{
	return p->path;
}

void kreqd_plugin_close(kreqd_plugin_t *p)
{
	if (!p)
		return;
	if (p->inited && p->v1->fini)
		p->v1->fini();
	if (p->dl)
		dlclose(p->dl);
	free(p->path);
	free(p);
}
