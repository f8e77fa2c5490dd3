/*
 * s3_i.h - internals shared by the s3/ sources and tests/unit/test_s3*.c.
 * Nothing outside s3/ and those tests includes this file.
 */
#ifndef MGMTFS_S3_S3_I_H
#define MGMTFS_S3_S3_I_H

#include <stdarg.h>
#include <stddef.h>

/*
 * A growing, capped, always NUL-terminated byte buffer (curl's dynbuf).
 * Init cannot fail; an append that fails (-ENOMEM, or -E2BIG past @max)
 * frees the buffer, so a caller only has to check the result.
 */
struct s3_buf {
	char *p; /* owned; NULL while empty */
	size_t len;
	size_t cap;
	size_t max; /* largest len allowed */
};

void s3_buf_init(struct s3_buf *b, size_t max);
void s3_buf_free(struct s3_buf *b); /* back to empty; wipes nothing */
int s3_buf_add(struct s3_buf *b, const void *data, size_t len);
int s3_buf_adds(struct s3_buf *b, const char *s);
int s3_buf_addf(struct s3_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int s3_buf_vaddf(struct s3_buf *b, const char *fmt, va_list ap)
	__attribute__((format(printf, 2, 0)));
/* Hand the string over: *out owns it ("" if empty), @b is empty again. 0 or -ENOMEM. */
int s3_buf_detach(struct s3_buf *b, char **out);

/*
 * The text of the first <@tag>...</@tag> in [@start, @end), XML entities
 * decoded, into @out (size @len, NUL-terminated).  *next_out (may be NULL)
 * gets the position after the closing tag.  Returns the length, -ENOENT if
 * there is no such element, -E2BIG if it does not fit.  No XML library:
 * S3's responses are flat enough for this.
 */
int s3_xml_tag(const char *start, const char *end, const char *tag, char *out, size_t len,
	       const char **next_out);

/* Find the next <@tag>...</@tag> block in [@start, @end): 0 and its inner range, or -ENOENT. */
int s3_xml_block(const char *start, const char *end, const char *tag, const char **in_start,
		 const char **in_end);

/* How one failed attempt is handled. */
struct s3_verdict {
	int rc; /* negative errno */
	int retry; /* 1: retrying may help */
};

/*
 * The only place an HTTP status and an S3 error code become an errno.
 * @code may be "" (HEAD responses have no body).
 */
struct s3_verdict s3_http_verdict(long status, const char *code);

#endif
