/*
 * kreq/common.h — symbols shared by every kreq public header: export macro,
 * version.
 */
#ifndef KREQ_COMMON_H
#define KREQ_COMMON_H

#if defined(KREQ_BUILDING)
#define KREQ_API __attribute__((visibility("default")))
#else
#define KREQ_API
#endif

#define KREQ_VERSION_MAJOR 0
#define KREQ_VERSION_MINOR 1
#define KREQ_VERSION_PATCH 0

/** Version of the library linked at run time, as "MAJOR.MINOR.PATCH".
 *  Static storage; any thread. */
KREQ_API const char *kreq_version(void);

#endif
