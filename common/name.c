/*
 * name.c — the character set of kreq's names ([A-Za-z0-9._-]: Kafka topic
 * names, services, key ids), checked with one table lookup per byte.
 *
 * Why not strspn(): glibc's strspn() with a 65-character accept set builds
 * a 256-byte table on every call, and the names of every request and reply
 * are checked when it is sealed or opened: that was ~2% of the benchmark
 * process's CPU at 256 calls in flight (docs/PERFORMANCE.md).
 */
#include "common/internal.h"

#define N1(c) [c] = 1
static const unsigned char name_char[256] = {
    N1('.'), N1('_'), N1('-'), N1('0'), N1('1'), N1('2'), N1('3'), N1('4'), N1('5'), N1('6'),
    N1('7'), N1('8'), N1('9'), N1('A'), N1('B'), N1('C'), N1('D'), N1('E'), N1('F'), N1('G'),
    N1('H'), N1('I'), N1('J'), N1('K'), N1('L'), N1('M'), N1('N'), N1('O'), N1('P'), N1('Q'),
    N1('R'), N1('S'), N1('T'), N1('U'), N1('V'), N1('W'), N1('X'), N1('Y'), N1('Z'), N1('a'),
    N1('b'), N1('c'), N1('d'), N1('e'), N1('f'), N1('g'), N1('h'), N1('i'), N1('j'), N1('k'),
    N1('l'), N1('m'), N1('n'), N1('o'), N1('p'), N1('q'), N1('r'), N1('s'), N1('t'), N1('u'),
    N1('v'), N1('w'), N1('x'), N1('y'), N1('z'),
};
#undef N1

size_t kreq__name_span(const char *s, size_t len)
{
	size_t i = 0;
	while (i < len && name_char[(unsigned char)s[i]])
		i++;
	return i;
}

bool kreq__name_valid(const char *s, size_t len, size_t max)
{
	return len >= 1 && len <= max && kreq__name_span(s, len) == len;
}
