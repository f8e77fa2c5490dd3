/*
 * util.c - small helpers for the s3/ module: a capped growing buffer, a tag
 * extractor for S3's flat XML responses, and the status/code -> errno map.
 */
#include "s3/s3_i.h"
#include "s3/s3.h"
#include "s3/sigv4.h"

#include <stdint.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void s3_buf_init(struct s3_buf *b, size_t max)
{
	b->p = NULL;
	b->len = 0;
	b->cap = 0;
	b->max = max;
}

void s3_buf_free(struct s3_buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = 0;
	b->cap = 0;
}

int s3_buf_add(struct s3_buf *b, const void *data, size_t len)
{
	size_t need;
	char *np;

	if (len > b->max || b->len > b->max - len) {
		s3_buf_free(b);
		return -E2BIG;
	}
	need = b->len + len + 1;
	if (need > b->cap) {
		size_t ncap = b->cap ? b->cap : 256;

		while (ncap < need)
			ncap *= 2;
		np = realloc(b->p, ncap);
		if (!np) {
			s3_buf_free(b);
			return -ENOMEM;
		}
		b->p = np;
		b->cap = ncap;
	}
	if (len)
		memcpy(b->p + b->len, data, len);
	b->len += len;
	b->p[b->len] = '\0';
	return 0;
}

int s3_buf_adds(struct s3_buf *b, const char *s)
{
	return s3_buf_add(b, s, strlen(s));
}

int s3_buf_vaddf(struct s3_buf *b, const char *fmt, va_list ap)
{
	char small[256];
	char *big = NULL;
	va_list again;
	int n, rc;

	va_copy(again, ap); /* a second pass when @small is too small */
	n = vsnprintf(small, sizeof(small), fmt, ap);
	if (n >= 0 && (size_t)n >= sizeof(small)) {
		big = malloc((size_t)n + 1);
		if (big)
			vsnprintf(big, (size_t)n + 1, fmt, again);
	}
	va_end(again);
	if (n < 0) {
		s3_buf_free(b);
		return -EINVAL;
	}
	if ((size_t)n < sizeof(small))
		return s3_buf_add(b, small, (size_t)n);
	if (!big) {
		s3_buf_free(b);
		return -ENOMEM;
	}
	rc = s3_buf_add(b, big, (size_t)n);
	free(big);
	return rc;
}

int s3_buf_addf(struct s3_buf *b, const char *fmt, ...)
{
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = s3_buf_vaddf(b, fmt, ap);
	va_end(ap);
	return rc;
}

int s3_buf_detach(struct s3_buf *b, char **out)
{
	if (!b->p) {
		*out = strdup("");
		return *out ? 0 : -ENOMEM;
	}
	*out = b->p;
	b->p = NULL;
	b->len = 0;
	b->cap = 0;
	return 0;
}

/* memmem over a range, without _GNU_SOURCE surprises. */
static const char *range_find(const char *start, const char *end, const char *needle)
{
	size_t nl = strlen(needle);
	const char *p;

	for (p = start; p && (size_t)(end - p) >= nl; p++) {
		p = memchr(p, needle[0], (size_t)(end - p));
		if (!p || (size_t)(end - p) < nl)
			return NULL;
		if (memcmp(p, needle, nl) == 0)
			return p;
	}
	return NULL;
}

int s3_xml_block(const char *start, const char *end, const char *tag, const char **in_start,
		 const char **in_end)
{
	char open[80], close[80];
	const char *a, *z;
	int n1, n2;

	n1 = snprintf(open, sizeof(open), "<%s>", tag);
	n2 = snprintf(close, sizeof(close), "</%s>", tag);
	if (n1 < 0 || (size_t)n1 >= sizeof(open) || n2 < 0 || (size_t)n2 >= sizeof(close))
		return -EINVAL;
	if (!start || !end || end < start)
		return -ENOENT;
	a = range_find(start, end, open);
	if (!a)
		return -ENOENT;
	a += n1;
	z = range_find(a, end, close);
	if (!z)
		return -ENOENT;
	*in_start = a;
	*in_end = z;
	return 0;
}

/* Decode one entity at @p (just after '&'); the byte in *c, returns its length or 0. */
static size_t xml_entity(const char *p, const char *end, unsigned long *c)
{
	static const struct {
		const char *name;
		char c;
	} ents[] = {
		{ "quot;", '"' }, { "amp;", '&' }, { "lt;", '<' }, { "gt;", '>' }, { "apos;", '\'' }
	};
	size_t i, n;

	for (i = 0; i < sizeof(ents) / sizeof(ents[0]); i++) {
		n = strlen(ents[i].name);
		if ((size_t)(end - p) >= n && memcmp(p, ents[i].name, n) == 0) {
			*c = (unsigned char)ents[i].c;
			return n;
		}
	}
	if (p < end && *p == '#') {
		unsigned long v = 0;
		int hex = 0;
		const char *q = p + 1;

		if (q < end && (*q == 'x' || *q == 'X')) {
			hex = 1;
			q++;
		}
		for (; q < end && *q != ';'; q++) {
			int d;

			if (*q >= '0' && *q <= '9')
				d = *q - '0';
			else if (hex && *q >= 'a' && *q <= 'f')
				d = *q - 'a' + 10;
			else if (hex && *q >= 'A' && *q <= 'F')
				d = *q - 'A' + 10;
			else
				return 0;
			v = v * (hex ? 16 : 10) + (unsigned long)d;
			if (v > 0x10ffff)
				return 0;
		}
		if (q >= end || q == p + 1 + hex)
			return 0;
		*c = v;
		return (size_t)(q + 1 - p);
	}
	return 0;
}

/* Append code point @c as UTF-8; returns bytes written or 0 if it does not fit. */
static size_t put_utf8(unsigned long c, char *out, size_t room)
{
	unsigned char b[4];
	size_t n;

	if (c < 0x80) {
		b[0] = (unsigned char)c;
		n = 1;
	} else if (c < 0x800) {
		b[0] = (unsigned char)(0xc0 | (c >> 6));
		b[1] = (unsigned char)(0x80 | (c & 0x3f));
		n = 2;
	} else if (c < 0x10000) {
		b[0] = (unsigned char)(0xe0 | (c >> 12));
		b[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3f));
		b[2] = (unsigned char)(0x80 | (c & 0x3f));
		n = 3;
	} else {
		b[0] = (unsigned char)(0xf0 | (c >> 18));
		b[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3f));
		b[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3f));
		b[3] = (unsigned char)(0x80 | (c & 0x3f));
		n = 4;
	}
	if (n > room)
		return 0;
	memcpy(out, b, n);
	return n;
}

int s3_xml_tag(const char *start, const char *end, const char *tag, char *out, size_t len,
	       const char **next_out)
{
	const char *a = NULL, *z = NULL, *p;
	size_t o = 0;
	int rc;

	rc = s3_xml_block(start, end, tag, &a, &z);
	if (rc)
		return rc;
	if (!len)
		return -E2BIG;
	for (p = a; p < z;) {
		unsigned long c;
		size_t n = 0, w;

		if (*p == '&')
			n = xml_entity(p + 1, z, &c);
		if (n) {
			w = put_utf8(c, out + o, len - 1 - o);
			if (!w)
				goto too_big;
			o += w;
			p += n + 1;
			continue;
		}
		if (o + 1 >= len)
			goto too_big;
		out[o++] = *p++;
	}
	out[o] = '\0';
	if (next_out)
		*next_out = z + strlen(tag) + 3;
	return (int)o;

too_big:
	out[0] = '\0';
	return -E2BIG;
}

struct s3_verdict s3_http_verdict(long status, const char *code)
{
	static const struct {
		const char *code;
		int rc;
		int retry;
	} codes[] = {
		/* the server is busy or broke for a moment */
		{ "SlowDown", -EAGAIN, 1 },
		{ "InternalError", -EAGAIN, 1 },
		{ "ServiceUnavailable", -EAGAIN, 1 },
		{ "RequestTimeout", -ETIMEDOUT, 1 },
		{ "OperationAborted", -EAGAIN, 1 },
		{ "ConditionalRequestConflict", -EAGAIN, 1 },
		{ "BadDigest", -EBADMSG, 1 }, /* the body was damaged on the way */
		{ "IncompleteBody", -EIO, 1 },
		/* retrying cannot fix these */
		{ "NoSuchBucket", -ENXIO, 0 },
		{ "NoSuchKey", -ENOENT, 0 },
		{ "NoSuchUpload", -ENOENT, 0 },
		{ "QuotaExceeded", -EDQUOT, 0 },
		{ "PreconditionFailed", -EEXIST, 0 },
		{ "AccessDenied", -EACCES, 0 },
		{ "SignatureDoesNotMatch", -EACCES, 0 },
		{ "InvalidAccessKeyId", -EACCES, 0 },
		{ "RequestTimeTooSkewed", -EACCES, 0 },
		{ "InvalidPart", -EINVAL, 0 },
		{ "InvalidPartOrder", -EINVAL, 0 },
		{ "EntityTooSmall", -EINVAL, 0 },
		{ "EntityTooLarge", -EINVAL, 0 },
		{ "InvalidDigest", -EINVAL, 0 },
	};
	struct s3_verdict v = { -EIO, 0 };
	size_t i;

	if (code && *code) {
		for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
			if (strcmp(code, codes[i].code) == 0) {
				v.rc = codes[i].rc;
				v.retry = codes[i].retry;
				return v;
			}
		}
	}
	if (status >= 200 && status < 300 && (!code || !*code)) {
		v.rc = 0;
	} else if (status == 403) {
		v.rc = -EACCES;
	} else if (status == 404) {
		v.rc = -ENOENT;
	} else if (status == 412) {
		v.rc = -EEXIST;
	} else if (status == 408) {
		v.rc = -ETIMEDOUT;
		v.retry = 1;
	} else if (status == 429 || (status >= 500 && status != 501 && status != 505)) {
		v.rc = -EAGAIN;
		v.retry = 1;
	} else if (status >= 400 && status < 500) {
		v.rc = -EINVAL;
	} else if (status >= 200 && status < 300) {
		/* a 200 whose body is an <Error> with a code we do not know */
		v.rc = -EAGAIN;
		v.retry = 1;
	}
	return v;
}

size_t s3_part_size(uint64_t size, size_t min_part)
{
	const uint64_t mib = 1u << 20, max_part = (uint64_t)5 << 30;
	uint64_t need = (size + 8999) / 9000;
	uint64_t ps = min_part;

	if (need > ps)
		ps = (need + mib - 1) / mib * mib;
	return (size_t)(ps > max_part ? max_part : ps);
}

int64_t s3_parse_time(const char *s)
{
	static const char *const forms[] = {
		"%a, %d %b %Y %H:%M:%S GMT",	/* HTTP: Last-Modified */
		"%Y-%m-%dT%H:%M:%S",		/* ISO 8601: listings, our metadata */
	};
	struct tm tm;

	for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
		const char *end;

		memset(&tm, 0, sizeof(tm));
		end = strptime(s, forms[i], &tm);
		if (!end)
			continue;
		if (*end == '.')	/* milliseconds */
			while (*++end >= '0' && *end <= '9')
				;
		if (*end && strcmp(end, "Z"))
			continue;
		return (int64_t)timegm(&tm);
	}
	return 0;
}
