/* faults.c — see faults.h. */
#include <stdio.h>
#include <string.h>

#include "broker/worker/faults.h"

void kreq__faults_init(kreq__faults_t *f)
{
	memset(f, 0, sizeof(*f));
	for (int i = 0; i < KREQ__FAULTS_MAX; i++)
		f->e[i].offset = -1;
}

static kreq__fault_t *find(kreq__faults_t *f, int32_t partition, int64_t offset)
{
	if (!f->used) /* every record the loop consumes asks */
		return NULL;
	for (int i = 0; i < KREQ__FAULTS_MAX; i++)
		if (f->e[i].offset == offset && f->e[i].partition == partition && offset >= 0)
			return &f->e[i];
	return NULL;
}

const kreq__fault_t *kreq__faults_find(const kreq__faults_t *f, int32_t partition, int64_t offset)
{
	return find((kreq__faults_t *)f, partition, offset);
}

void kreq__faults_note(kreq__faults_t *f, int32_t partition, int64_t offset,
                       kreq__fault_kind_t kind, const char *why)
{
	if (offset < 0)
		return;
	kreq__fault_t *e = find(f, partition, offset);
	if (!e) {
		for (int i = 0; i < KREQ__FAULTS_MAX && !e; i++)
			if (f->e[i].offset < 0)
				e = &f->e[i];
		if (e)
			f->used++;
		else { /* full: forget the oldest */
			e = &f->e[f->next];
			f->next = (f->next + 1) % KREQ__FAULTS_MAX;
		}
		*e = (kreq__fault_t){.partition = partition, .offset = offset, .pass = f->pass - 1};
	}
	if (e->pass != f->pass) {
		e->pass = f->pass;
		e->rewinds++;
	}
	if (kind != KREQ__FAULT_OTHER || e->kind == KREQ__FAULT_OTHER)
		e->kind = kind; /* a known cause is not overwritten by an unknown one */
	snprintf(e->why, sizeof(e->why), "%s", why ? why : "");
	f->noted = true;
}

void kreq__faults_rewound(kreq__faults_t *f)
{
	f->pass++;
	f->noted = false;
}

void kreq__faults_committed(kreq__faults_t *f, int32_t partition, int64_t offset)
{
	for (int i = 0; i < KREQ__FAULTS_MAX; i++)
		if (f->e[i].partition == partition && f->e[i].offset >= 0 &&
		    f->e[i].offset < offset) {
			f->e[i].offset = -1;
			f->used--;
		}
}

bool kreq__faults_exhausted(const kreq__fault_t *e)
{
	return e && (e->rewinds >= KREQ__REWIND_MAX ||
	             (e->kind == KREQ__FAULT_TOO_LARGE && e->rewinds >= 1));
}
