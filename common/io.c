/* io.c — small I/O helpers shared by kreq's modules. */
#include <errno.h>
#include <unistd.h>

#include "common/internal.h"

int kreq__write_all(int fd, const void *buf, size_t len)
{
	const char *s = buf;
	while (len > 0) {
		ssize_t n = write(fd, s, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		s += n;
		len -= (size_t)n;
	}
	return 0;
}
