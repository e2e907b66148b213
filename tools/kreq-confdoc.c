/* kreq-confdoc — prints docs/CONFIGURATION.md, generated from the property
 * table. Usage: kreq-confdoc > docs/CONFIGURATION.md */
#include <stdio.h>

#include "common/conf.h"

int main(int argc, char **argv)
{
	(void)argv;
	if (argc != 1) {
		fputs("usage: kreq-confdoc > docs/CONFIGURATION.md\n", stderr);
		return 2;
	}
	kreq__conf_markdown(stdout);
	return fflush(stdout) == 0 ? 0 : 1;
}
