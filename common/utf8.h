/*
 * utf8.h - file names are bytes; S3 keys and JSON need UTF-8.
 */
#ifndef MGMTFS_COMMON_UTF8_H
#define MGMTFS_COMMON_UTF8_H

#include <stddef.h>

/* Length of the well-formed UTF-8 sequence at @s (RFC 3629), 0 if there is none. */
size_t utf8_len(const unsigned char *s);

/*
 * Copy @in to @out (@len bytes, NUL-terminated, truncated only between
 * characters) with each byte that is not part of valid UTF-8 replaced by
 * U+FFFD.  Returns 1 if anything was replaced, else 0.
 */
int utf8_sanitize(const char *in, char *out, size_t len);

#endif
