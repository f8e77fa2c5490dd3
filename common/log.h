/*
 * log.h - one thread-safe log sink for every module (stderr, or syslog when
 * daemonised).  Levels use syslog(3) numbers.  Messages follow git's rules:
 * lowercase, no full stop, what failed first, names in quotes.  Never log a
 * secret or a raw request header.
 */
#ifndef MGMTFS_COMMON_LOG_H
#define MGMTFS_COMMON_LOG_H

#include <stdatomic.h>
#include <stddef.h>

enum mgmtfs_log_level {
	MGMTFS_LOG_ERR = 3,
	MGMTFS_LOG_WARN = 4,
	MGMTFS_LOG_INFO = 6,
	MGMTFS_LOG_DEBUG = 7,
};

extern atomic_int mgmtfs_log_threshold;

/* Route messages to syslog (1) or stderr (0, the default). */
void mgmtfs_log_use_syslog(int on);

void mgmtfs_log(enum mgmtfs_log_level lvl, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define mgmtfs_log_at(lvl, ...)                                                                    \
	do {                                                                                       \
		if (atomic_load_explicit(&mgmtfs_log_threshold, memory_order_relaxed) >= (lvl))    \
			mgmtfs_log((lvl), __VA_ARGS__);                                            \
	} while (0)
#define mgmtfs_err(...)	  mgmtfs_log_at(MGMTFS_LOG_ERR, __VA_ARGS__)
#define mgmtfs_warn(...)  mgmtfs_log_at(MGMTFS_LOG_WARN, __VA_ARGS__)
#define mgmtfs_info(...)  mgmtfs_log_at(MGMTFS_LOG_INFO, __VA_ARGS__)
#define mgmtfs_debug(...) mgmtfs_log_at(MGMTFS_LOG_DEBUG, __VA_ARGS__)

/*
 * Copy @in to @out (size @outlen, always NUL-terminated) with control bytes,
 * backslash and DEL escaped as \xHH, for logging untrusted names.  Returns @out.
 */
char *mgmtfs_escape(const char *in, char *out, size_t outlen);

/* Thread-safe strerror for a positive or negative errno; returns @buf. */
const char *mgmtfs_strerror(int err, char *buf, size_t len);

#endif
