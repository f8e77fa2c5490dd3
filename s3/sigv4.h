/*
 * sigv4.h - AWS Signature Version 4 for S3, as pure functions: no curl, no
 * I/O, no global state.  OpenSSL does the hashing.  Public so that the unit
 * tests can check each step against AWS's published examples.
 *
 * The steps (AWS "Create a signed request"):
 *   canonical request = METHOD \n URI \n QUERY \n HEADERS \n SIGNED \n PAYLOAD_HASH
 *   string to sign    = AWS4-HMAC-SHA256 \n DATE \n SCOPE \n hex(sha256(canonical request))
 *   signing key       = HMAC chain of "AWS4"+secret over date, region, "s3", "aws4_request"
 *   signature         = hex(HMAC(signing key, string to sign))
 *
 * Strings returned through char ** are malloc'ed and owned by the caller.
 * Every function is thread-safe (no shared state).
 */
#ifndef MGMTFS_S3_SIGV4_H
#define MGMTFS_S3_SIGV4_H

#include <stddef.h>

#define SIGV4_HEX_LEN  65 /* 64 hex digits + NUL */
#define SIGV4_DATE_LEN 17 /* "20130524T000000Z" + NUL */

/* SHA-256 of the empty string, the payload hash of every bodiless request. */
#define SIGV4_EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

/* A name and a value: a query parameter or a header (both borrowed). */
struct sigv4_kv {
	const char *name;
	const char *value; /* NULL: a query key with no value ("?uploads") */
};

/* What to sign.  Every pointer is borrowed for the duration of the call. */
struct sigv4_request {
	const char *method; /* "GET", "PUT", ... */
	const char *path; /* raw (not encoded), starts with '/': "/bucket/a b.txt" */
	const struct sigv4_kv *query; /* raw names and values, any order */
	size_t nquery;
	const struct sigv4_kv *headers; /* every header to sign, host, x-amz-date and
					   x-amz-content-sha256 included; any case, any order */
	size_t nheaders;
	const char *payload_hash; /* hex SHA-256 of the body */
	const char *amz_date; /* "20130524T000000Z", the x-amz-date value */
	const char *region; /* "us-east-1" */
};

/*
 * S3 URI encoding: every byte except A-Z a-z 0-9 - _ . ~ becomes %XX
 * (uppercase hex); '/' is kept when @keep_slash (a path), else %2F (a query
 * name or value).  Space is %20, never '+'.  Returns 0 or -ENOMEM.
 */
int sigv4_uri_encode(const char *in, int keep_slash, char **out);

/*
 * The canonical query: names and values encoded, sorted by name then value,
 * "n=v" joined by '&'; a name without a value gets "n=".  "" when @n is 0.
 * The same string is the query of the URL to send.  Returns 0 or -ENOMEM.
 */
int sigv4_canonical_query(const struct sigv4_kv *q, size_t n, char **out);

/*
 * The canonical headers block (lowercase names, sorted, values trimmed and
 * inner runs of spaces squeezed, each line ending in '\n') in *canon_out and
 * the signed header list ("host;x-amz-date") in *signed_out.
 * Returns 0, -EINVAL for a duplicate or empty name, or -ENOMEM.
 */
int sigv4_canonical_headers(const struct sigv4_kv *h, size_t n, char **canon_out,
			    char **signed_out);

/* The canonical request of @req; *signed_out as above (may be NULL). 0 or -errno. */
int sigv4_canonical_request(const struct sigv4_request *req, char **out, char **signed_out);

/* "20130524/us-east-1/s3/aws4_request" into @out (size @len). 0 or -E2BIG/-EINVAL. */
int sigv4_scope(const char *amz_date, const char *region, char *out, size_t len);

/* The string to sign for a canonical request.  Returns 0 or -ENOMEM/-EINVAL. */
int sigv4_string_to_sign(const char *amz_date, const char *region, const char *canonical_request,
			 char **out);

/*
 * The signing key (32 bytes) for @secret on the date of @amz_date.
 * The caller should OPENSSL_cleanse() @key after use.  Returns 0 or -EIO.
 */
int sigv4_signing_key(const char *secret, const char *amz_date, const char *region,
		      unsigned char key[32]);

/* hex(HMAC-SHA256(@key, @string_to_sign)) into @sig_hex.  Returns 0 or -EIO. */
int sigv4_signature(const unsigned char key[32], const char *string_to_sign,
		    char sig_hex[SIGV4_HEX_LEN]);

/*
 * The Authorization header value:
 * "AWS4-HMAC-SHA256 Credential=AK/SCOPE, SignedHeaders=..., Signature=...".
 * Returns 0 or -ENOMEM/-EINVAL.
 */
int sigv4_authorization(const char *access_key, const char *amz_date, const char *region,
			const char *signed_headers, const char *sig_hex, char **out);

/*
 * Everything above in one call: the Authorization value for @req signed
 * with @access_key / @secret.  Intermediate keys are wiped.  0 or -errno.
 */
int sigv4_sign(const struct sigv4_request *req, const char *access_key, const char *secret,
	       char **auth_out);

/* Hex SHA-256 / MD5 of a buffer.  Return 0 or -EIO. */
int sigv4_sha256_hex(const void *data, size_t len, char out[SIGV4_HEX_LEN]);
int sigv4_md5(const void *data, size_t len, unsigned char out[16]);

/* Lowercase hex of @n bytes into @out (2n+1 bytes). */
void sigv4_hex(const unsigned char *in, size_t n, char *out);

/* "YYYYMMDDTHHMMSSZ" for unix time @t (UTC).  Returns 0 or -EINVAL. */
int sigv4_amz_date(long long t, char out[SIGV4_DATE_LEN]);

#endif
