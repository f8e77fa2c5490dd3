/*
 * s3.h - a small synchronous S3 client: SigV4 over OpenSSL, HTTP over
 * libcurl, retries with exponential backoff and full jitter.
 *
 * One struct s3_client per thread (it owns one CURL easy handle, reused so
 * connections stay alive).  Every call is synchronous and returns 0 or a
 * negative errno; after a failure s3_client_error() gives one line a user
 * can act on ("403 SignatureDoesNotMatch: check the secret key for access
 * key AKIA...").  The secret key and session token never appear in an
 * error, a log line or anything returned.
 *
 * Bodies are memory buffers, so a failed request is simply sent again.
 * Every request carries x-amz-content-sha256 (the real payload hash) and
 * every body Content-MD5; ETags of single PUTs and parts are checked
 * against the MD5 sent.
 *
 * Errors returned (after retries, where retrying makes sense):
 *   -EACCES        403: bad signature, unknown access key, access denied
 *   -ENOENT        404 NoSuchKey / NoSuchUpload (HEAD of a missing key)
 *   -ENXIO         NoSuchBucket
 *   -EEXIST        412 on a conditional PUT (the key is taken)
 *   -EINVAL        other 400s (bad request, entity too small, bad name)
 *   -EDQUOT        QuotaExceeded
 *   -EBADMSG       an ETag or a response that does not match what was sent
 *   -EHOSTUNREACH  cannot connect / resolve (after retries)
 *   -ETIMEDOUT     timeouts and stalls (after retries)
 *   -EAGAIN        5xx, 429, SlowDown (after retries)
 *   -ECANCELED     the cancel flag was raised
 *   -ENOMEM, -EIO  the rest
 */
#ifndef MGMTFS_S3_H
#define MGMTFS_S3_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define S3_ETAG_MAX	 128
#define S3_UPLOAD_ID_MAX 512
#define S3_ERROR_MAX	 512

/* Settings; the client copies every string it keeps. */
struct s3_config {
	const char *endpoint;	  /* "http://127.0.0.1:7480", "https://s3.us-east-1.amazonaws.com" */
	const char *region;	  /* "us-east-1" if NULL */
	const char *bucket;
	const char *access_key;
	const char *secret_key;
	const char *session_token; /* NULL if none */
	int path_style;		  /* 1 path-style, 0 virtual-hosted, -1 auto: path-style for
				     IP addresses and localhost, virtual-hosted otherwise */
	int insecure;		  /* 1: do not verify TLS certificates */
	int unsigned_payload;	  /* 1: object data (PUT, UploadPart) goes as UNSIGNED-PAYLOAD,
				     guarded by Content-MD5 alone; 0 (default): its sha256 is
				     signed (x-amz-content-sha256) as every other body's */
	const char *sse;	  /* x-amz-server-side-encryption of new objects, NULL: none */
	const char *sse_kms_key_id; /* its ...-aws-kms-key-id, NULL: none */
	int max_attempts;	  /* per request, default 8 when 0 */
	double retry_max_seconds; /* total time spent in backoff sleeps, default 120 when 0 */
	double retry_base_seconds; /* first backoff cap, default 0.2 when 0 */
	long connect_timeout;	  /* seconds, default 10 when 0 */
	long stall_seconds;	  /* cut a transfer with no progress for this long, default 30 */
};

struct s3_client;

/* One x-amz-meta-NAME header. */
struct s3_meta {
	const char *name;	/* lowercase, e.g. "mgmt-sha256" */
	const char *value;	/* printable ASCII; anything else is percent-encoded */
	int ident;		/* names this content from this sender (s3_object_is) */
};

struct s3_part {
	uint32_t partno;	/* 1-based */
	uint64_t size;
	char etag[S3_ETAG_MAX];	/* without quotes */
};

struct s3_object_info {
	uint64_t size;
	char etag[S3_ETAG_MAX];	/* without quotes */
	int64_t mtime;		/* Last-Modified, unix seconds; 0 if not known */
	int etag_opaque;	/* HEAD: the ETag is no MD5 (SSE-KMS, SSE-C) */
};

/*
 * Make a client.  Validates @cfg (-EINVAL with s3_client_error()-style text
 * in *errbuf when given: no bucket, bad endpoint URL).  Returns 0 or -errno.
 * Not thread-safe: one client per thread.  curl_global_init() must have run
 * (s3_global_init()).
 */
int s3_client_new(const struct s3_config *cfg, struct s3_client **out);
/*
 * As s3_client_new(), and on -EINVAL one line saying what is wrong with
 * @cfg in @errbuf (size @errlen; may be NULL).  s3_client_new() logs that
 * line instead.  (Added: s3_client_new() has no place to return it.)
 */
int s3_client_new_err(const struct s3_config *cfg, struct s3_client **out, char *errbuf,
		      size_t errlen);
void s3_client_free(struct s3_client *c);	/* NULL is a no-op; wipes secrets */

/* Call once in main() before any thread starts; s3_global_cleanup() at exit. */
int s3_global_init(void);
void s3_global_cleanup(void);

/* The last failure of @c in words, "" after a success. Valid until the next call. */
const char *s3_client_error(const struct s3_client *c);
/* HTTP status of the last response (0 if none). */
long s3_client_http_status(const struct s3_client *c);
/*
 * 1 when the last call's request may have reached the server more than
 * once: it was retried, or libcurl sent it again on a new connection.
 */
int s3_client_sent_twice(const struct s3_client *c);
/*
 * 1 when the last s3_put_object stored the object by its own request (a
 * 2xx), 0 when it failed or found the object there already (a 412 whose
 * HEAD showed our bytes: perhaps an earlier copy, not ours to delete).
 */
int s3_client_put_stored(const struct s3_client *c);
/* Is object data's sha256 signed (not unsigned_payload)?  If not, callers need not make it. */
int s3_client_signs_data(const struct s3_client *c);

/*
 * Cancellation: while *@flag is non-zero, a call returns -ECANCELED (backoff
 * sleeps end at once too).  With S3_CANCEL set a part in flight is cut at
 * once, any other request only while its body is still going out: once the
 * server may have acted, its answer is awaited, so that the caller learns
 * what it did (an upload id, an object stored).  S3_CANCEL_NOW cuts whatever
 * is in flight (unmounting: what the server did is found out later).  A 2xx
 * received whole before the cut still counts: the server acted, the call
 * succeeds.  The flag is borrowed; NULL removes it.
 */
#define S3_CANCEL     1
#define S3_CANCEL_NOW 2
void s3_client_set_cancel(struct s3_client *c, const atomic_int *flag);

/* Progress: @cb(@arg, bytes of the current body sent so far), from the calling thread. */
void s3_client_set_progress(struct s3_client *c, void (*cb)(void *arg, uint64_t sent),
			    void *arg);

/* HEAD the bucket: 0, -ENXIO, -EACCES, -EHOSTUNREACH, ... (mount-time check). */
int s3_head_bucket(struct s3_client *c);

/* HEAD an object: 0 and *out filled, -ENOENT if absent, or -errno. */
int s3_head_object(struct s3_client *c, const char *key, struct s3_object_info *out);
/*
 * As s3_head_object(), and @cb(NAME, value, @arg) for each x-amz-meta-NAME
 * header of the answer (NAME lowercase, the value's percent-encoding
 * undone).  A non-zero return from @cb stops and is returned.
 */
int s3_head_object_meta(struct s3_client *c, const char *key, struct s3_object_info *out,
			int (*cb)(const char *name, const char *value, void *arg), void *arg);
/*
 * Is @key an object we sent: @size bytes with ETag @etag (the MD5 we sent,
 * or the multipart ETag of our parts; "" if not known), carrying every one
 * of @meta too when @all_meta?  Where the ETag is no MD5 (SSE-KMS, SSE-C:
 * @info->etag_opaque) it cannot tell, and every @meta marked ident must be
 * there instead (there must be one).  1 yes, 0 another object, or the
 * HEAD's -errno (-ENOENT: no object).  @info gets the HEAD's answer.
 */
int s3_object_is(struct s3_client *c, const char *key, uint64_t size, const char *etag,
		 const struct s3_meta *meta, size_t nmeta, int all_meta,
		 struct s3_object_info *info);

/*
 * List the objects whose keys start with @prefix (ListObjectsV2, every
 * page), in key order: @cb(key, its size, ETag and mtime, @arg) for each.
 * A non-zero return from @cb stops and is returned.  0 or -errno.
 */
int s3_list_objects(struct s3_client *c, const char *prefix,
		    int (*cb)(const char *key, const struct s3_object_info *o, void *arg),
		    void *arg);

/* Unix seconds of an HTTP date or an ISO 8601 UTC time ("...Z"); 0 if neither. */
int64_t s3_parse_time(const char *s);

/*
 * Object tagging with one tag (@name and @value XML-safe: letters, digits,
 * '-', '_', ':').  s3_put_tag() replaces the object's tags; s3_get_tag()
 * copies the value into @out (size @len): 0, -ENOENT without that tag (or
 * object), or -errno.
 */
int s3_put_tag(struct s3_client *c, const char *key, const char *name, const char *value);
int s3_get_tag(struct s3_client *c, const char *key, const char *name, char *out, size_t len);

/*
 * PUT @len bytes at @body as @key.  @md5 (16 bytes) and @sha256_hex (64
 * hex + NUL) may be NULL: they are computed then.  @if_none_match: 0, or
 * one of S3_PUT_NEW*: send If-None-Match: * and return -EEXIST if the key
 * is taken by another object.  With S3_PUT_NEW every 412 is checked with a
 * HEAD, and an object there with the body's MD5 as its ETag and its size
 * is taken as this PUT done (an earlier one whose answer was lost); with
 * S3_PUT_NEW_COPY (a second copy asked for) only if it also carries every
 * one of @meta (so the first copy, whose metadata differs, is -EEXIST).
 * @meta: @nmeta x-amz-meta-* headers.
 * On success *etag_out (S3_ETAG_MAX) holds the ETag, checked to be the MD5
 * of the body: -EBADMSG if it is not, retried without @if_none_match, at
 * once with it (the object stays; a retry could only meet it).
 */
#define S3_PUT_NEW	 1
#define S3_PUT_NEW_COPY	 2
int s3_put_object(struct s3_client *c, const char *key, const void *body, size_t len,
		  const unsigned char *md5, const char *sha256_hex, int if_none_match,
		  const struct s3_meta *meta, size_t nmeta, char *etag_out);

/* Start a multipart upload; *upload_id_out has S3_UPLOAD_ID_MAX bytes. */
int s3_mpu_create(struct s3_client *c, const char *key, const struct s3_meta *meta,
		  size_t nmeta, char *upload_id_out);

/* Upload one part; as s3_put_object for @md5, @sha256_hex and the ETag check. */
int s3_mpu_put_part(struct s3_client *c, const char *key, const char *upload_id,
		    uint32_t partno, const void *body, size_t len, const unsigned char *md5,
		    const char *sha256_hex, char *etag_out);

/*
 * Complete with @n parts in part order.  Handles a 200 whose body is an
 * <Error> (retried).  *etag_out gets the ETag from the response, which may be
 * "" (RGW): callers HEAD the object to check it.  @meta: what the upload was
 * created with, which tells the object made by an attempt whose answer was
 * lost where ETags are not MD5s (s3_object_is).
 */
int s3_mpu_complete(struct s3_client *c, const char *key, const char *upload_id,
		    const struct s3_part *parts, size_t n, const struct s3_meta *meta,
		    size_t nmeta, char *etag_out);

/* Abort; 0 also when the upload is already gone (404 NoSuchUpload). */
int s3_mpu_abort(struct s3_client *c, const char *key, const char *upload_id);

/*
 * DELETE the object @key (only ever one this client made and nothing names):
 * 0, also when it is not there.
 */
int s3_delete_object(struct s3_client *c, const char *key);

/* Parts the server has for an upload, in part order; *parts_out malloc'ed, caller frees. */
int s3_mpu_list_parts(struct s3_client *c, const char *key, const char *upload_id,
		      struct s3_part **parts_out, size_t *n_out);

/* Multipart uploads in progress under @prefix ("" for all): @cb(key, upload_id, arg). */
int s3_mpu_list(struct s3_client *c, const char *prefix,
		int (*cb)(const char *key, const char *upload_id, void *arg), void *arg);

/* GET @key, passing the body to @cb in pieces (returns 0 to go on). For tests and rebuild. */
int s3_get_object(struct s3_client *c, const char *key,
		  int (*cb)(const void *data, size_t len, void *arg), void *arg);

/*
 * Part size for an object of about @size bytes: @min_part, grown (to a
 * whole MiB) so that no object needs more than 9,000 parts (S3 allows
 * 10,000; the margin covers archive overhead), at most 5 GiB a part.
 */
size_t s3_part_size(uint64_t size, size_t min_part);

/* The multipart ETag S3 computes: hex MD5 of the parts' binary MD5s, "-N". */
void s3_multipart_etag(const unsigned char (*md5s)[16], size_t n, char *etag_out);

#endif
