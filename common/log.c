/*
 * log.c - the process-wide log sink.  One mutex keeps lines whole when
 * several threads write at once; the level check in the macros keeps the
 * cost of disabled levels to one relaxed atomic load.
 */
#include "common/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

atomic_int mgmtfs_log_threshold = MGMTFS_LOG_INFO;
static atomic_int use_syslog;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void mgmtfs_log_use_syslog(int on)
{
	atomic_store(&use_syslog, on);
}

void mgmtfs_log(enum mgmtfs_log_level lvl, const char *fmt, ...)
{
	static const char *const names[8] = { "", "", "", "error", "warning", "", "info", "debug" };
	char msg[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (atomic_load(&use_syslog)) {
		syslog((int)lvl, "%s", msg);
		return;
	}
	pthread_mutex_lock(&log_lock);
	fprintf(stderr, "mgmtfs: %s: %s\n", names[lvl & 7], msg);
	pthread_mutex_unlock(&log_lock);
}

char *mgmtfs_escape(const char *in, char *out, size_t outlen)
{
	size_t o = 0;

	if (!outlen)
		return out;
	for (; in && *in && o + 5 < outlen; in++) {
		unsigned char c = (unsigned char)*in;

		if (c < 0x20 || c == 0x7f || c == '\\')
			o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", c);
		else
			out[o++] = (char)c;
	}
	out[o] = '\0';
	return out;
}

const char *mgmtfs_strerror(int err, char *buf, size_t len)
{
	if (err < 0)
		err = -err;
	/* GNU strerror_r may return a static string instead of filling buf */
	const char *s = strerror_r(err, buf, len);

	if (s != buf)
		snprintf(buf, len, "%s", s);
	return buf;
}
