/* error.c — kreq_strerror()/kreq_err_name(), generated from KREQ_ERRNO_MAP. */
#include "kreq/error.h"

const char *kreq_version(void)
{
	return "0.1.0";
}

const char *kreq_strerror(int err)
{
	switch (err) {
#define KREQ__ERR_MSG(name, value, msg)                                                            \
	case value:                                                                                \
		return msg;
		KREQ_ERRNO_MAP(KREQ__ERR_MSG)
#undef KREQ__ERR_MSG
	}
	return "unknown error";
}

const char *kreq_err_name(int err)
{
	switch (err) {
#define KREQ__ERR_NAME(name, value, msg)                                                           \
	case value:                                                                                \
		return #name;
		KREQ_ERRNO_MAP(KREQ__ERR_NAME)
#undef KREQ__ERR_NAME
	}
	return "UNKNOWN";
}
