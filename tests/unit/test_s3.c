/*
 * test_s3.c - the S3 client without a network: curl_easy_perform is
 * replaced (-Wl,--wrap) by a script of responses.  curl_easy_setopt and
 * curl_easy_reset are wrapped too, only to see the callbacks, URL, headers
 * and body the client set, then passed on to the real libcurl.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "s3/s3.h"
#include "s3/s3_i.h"
#include "s3/sigv4.h"

#define SECRET "TESTSECRET"

/* ------------------------------------------------------------------ */
/* the mock */

struct mresp {
	CURLcode cc;
	long status; /* 0: no response at all */
	const char *hdrs; /* "Name: value\n" lines */
	const char *body;
	int etag_md5; /* add ETag: "<md5 of the uploaded body>" */
	/* raise the cancel flag during this call: 1 S3_CANCEL, 2 the same with half the body
	 * sent, 3 S3_CANCEL_NOW */
	int raise_cancel;
};

static struct {
	struct mresp script[16];
	int n, next;
	/* what the client set */
	curl_write_callback write_fn;
	void *write_data;
	curl_write_callback header_fn;
	void *header_data;
	curl_read_callback read_fn;
	void *read_data;
	curl_xferinfo_callback xfer_fn;
	void *xfer_data;
	const void *postfields;
	long postsize;
	long nobody;
	struct curl_slist *headers;
	char url[2048];
	/* what each perform saw */
	char sent_headers[16][4096];
	char sent_url[16][2048];
	char sent_body[16][4096];
	int calls;
	atomic_int *cancel;
} mk;

CURLcode __real_curl_easy_setopt(CURL *h, CURLoption opt, ...);
CURLcode __wrap_curl_easy_setopt(CURL *h, CURLoption opt, ...);
void __real_curl_easy_reset(CURL *h);
void __wrap_curl_easy_reset(CURL *h);
CURLcode __wrap_curl_easy_perform(CURL *h);

CURLcode __wrap_curl_easy_setopt(CURL *h, CURLoption opt, ...)
{
	va_list ap;
	void *p = NULL;
	long l = 0;
	curl_off_t o = 0;
	CURLcode rc;

	va_start(ap, opt);
	if (opt < CURLOPTTYPE_OBJECTPOINT)
		l = va_arg(ap, long);
	else if (opt < CURLOPTTYPE_OFF_T)
		p = va_arg(ap, void *);
	else if (opt < CURLOPTTYPE_BLOB)
		o = va_arg(ap, curl_off_t);
	else
		p = va_arg(ap, void *);
	va_end(ap);

	switch (opt) {
	case CURLOPT_WRITEFUNCTION:
		mk.write_fn = (curl_write_callback)p;
		break;
	case CURLOPT_WRITEDATA:
		mk.write_data = p;
		break;
	case CURLOPT_HEADERFUNCTION:
		mk.header_fn = (curl_write_callback)p;
		break;
	case CURLOPT_HEADERDATA:
		mk.header_data = p;
		break;
	case CURLOPT_READFUNCTION:
		mk.read_fn = (curl_read_callback)p;
		break;
	case CURLOPT_READDATA:
		mk.read_data = p;
		break;
	case CURLOPT_XFERINFOFUNCTION:
		mk.xfer_fn = (curl_xferinfo_callback)p;
		break;
	case CURLOPT_XFERINFODATA:
		mk.xfer_data = p;
		break;
	case CURLOPT_POSTFIELDS:
		mk.postfields = p;
		break;
	case CURLOPT_POSTFIELDSIZE_LARGE:
		mk.postsize = (long)o;
		break;
	case CURLOPT_NOBODY:
		mk.nobody = l;
		break;
	case CURLOPT_HTTPHEADER:
		mk.headers = p;
		break;
	case CURLOPT_URL:
		snprintf(mk.url, sizeof(mk.url), "%s", (const char *)p);
		break;
	default:
		break;
	}
	if (opt < CURLOPTTYPE_OBJECTPOINT)
		rc = __real_curl_easy_setopt(h, opt, l);
	else if (opt < CURLOPTTYPE_OFF_T || opt >= CURLOPTTYPE_BLOB)
		rc = __real_curl_easy_setopt(h, opt, p);
	else
		rc = __real_curl_easy_setopt(h, opt, o);
	return rc;
}

void __wrap_curl_easy_reset(CURL *h)
{
	mk.write_fn = mk.header_fn = NULL;
	mk.read_fn = NULL;
	mk.xfer_fn = NULL;
	mk.write_data = mk.header_data = mk.read_data = mk.xfer_data = NULL;
	mk.postfields = NULL;
	mk.postsize = 0;
	mk.nobody = 0;
	mk.headers = NULL;
	mk.url[0] = '\0';
	__real_curl_easy_reset(h);
}

static void feed_header(const char *line)
{
	char buf[512];

	snprintf(buf, sizeof(buf), "%s\r\n", line);
	assert_int_equal(mk.header_fn(buf, 1, strlen(buf), mk.header_data), strlen(buf));
}

CURLcode __wrap_curl_easy_perform(CURL *h)
{
	struct mresp *r;
	struct curl_slist *l;
	char body[8192], line[512];
	size_t blen = 0, n;
	int i = mk.calls++;

	assert_true(mk.next < mk.n); /* the script ran out: too many requests */
	r = &mk.script[mk.next++];
	assert_true(i < 16);
	mk.sent_headers[i][0] = '\0';
	for (l = mk.headers, n = 0; l && n < sizeof(mk.sent_headers[i]); l = l->next)
		n += (size_t)snprintf(mk.sent_headers[i] + n, sizeof(mk.sent_headers[i]) - n,
				      "%s\n", l->data);
	snprintf(mk.sent_url[i], sizeof(mk.sent_url[i]), "%s", mk.url);
	if (mk.read_fn) {
		while ((n = mk.read_fn(body + blen, 1, sizeof(body) - blen, mk.read_data)) > 0)
			blen += n;
	} else if (mk.postfields) {
		blen = (size_t)mk.postsize;
		memcpy(body, mk.postfields, blen);
	}
	memcpy(mk.sent_body[i], body, blen < 4095 ? blen : 4095);
	mk.sent_body[i][blen < 4095 ? blen : 4095] = '\0';
	if (r->raise_cancel == 2 && mk.cancel) {
		atomic_store(mk.cancel, S3_CANCEL);
		/* libcurl's progress call with half of it out */
		if (mk.xfer_fn &&
		    mk.xfer_fn(mk.xfer_data, 0, 0, (curl_off_t)blen, (curl_off_t)blen / 2))
			return CURLE_ABORTED_BY_CALLBACK;
	}
	if (r->raise_cancel && mk.cancel)
		atomic_store(mk.cancel, r->raise_cancel == 3 ? S3_CANCEL_NOW : S3_CANCEL);
	/* and one once all is sent, as the answer is awaited */
	if (mk.xfer_fn && mk.xfer_fn(mk.xfer_data, 0, 0, (curl_off_t)blen, (curl_off_t)blen))
		return CURLE_ABORTED_BY_CALLBACK;
	if (!r->status)
		return r->cc;

	snprintf(line, sizeof(line), "HTTP/1.1 %ld Whatever", r->status);
	feed_header(line);
	if (r->etag_md5) {
		unsigned char md5[16];
		char hex[33];

		sigv4_md5(body, blen, md5);
		sigv4_hex(md5, 16, hex);
		snprintf(line, sizeof(line), "ETag: \"%s\"", hex);
		feed_header(line);
	}
	if (r->hdrs) {
		const char *p = r->hdrs, *e;

		while ((e = strchr(p, '\n'))) {
			snprintf(line, sizeof(line), "%.*s", (int)(e - p), p);
			feed_header(line);
			p = e + 1;
		}
	}
	feed_header("");
	if (r->body && *r->body && !mk.nobody) {
		size_t bl = strlen(r->body);
		size_t got = mk.write_fn((char *)r->body, 1, bl, mk.write_data);

		if (got != bl)
			return CURLE_WRITE_ERROR;
	}
	return r->cc;
}

static void script(const struct mresp *r, int n)
{
	memset(&mk, 0, sizeof(mk));
	memcpy(mk.script, r, (size_t)n * sizeof(*r));
	mk.n = n;
}

/* script(), with @flag as @c's cancel flag, which the script may raise (raise_cancel). */
static void script_cancel(const struct mresp *r, int n, struct s3_client *c, atomic_int *flag)
{
	script(r, n);
	mk.cancel = flag;
	s3_client_set_cancel(c, flag);
}

/* ------------------------------------------------------------------ */
/* fixtures */

static void base_cfg(struct s3_config *cfg, const char *endpoint, int max_attempts,
		     const char *token)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->endpoint = endpoint;
	cfg->bucket = "test";
	cfg->access_key = "TESTKEY";
	cfg->secret_key = SECRET;
	cfg->session_token = token;
	cfg->path_style = -1;
	cfg->max_attempts = max_attempts;
	cfg->retry_base_seconds = 0.001;
	cfg->retry_max_seconds = 5;
}

static struct s3_client *client_signing(const char *endpoint, int max_attempts, const char *token,
					int unsigned_payload)
{
	struct s3_config cfg;
	struct s3_client *c = NULL;

	base_cfg(&cfg, endpoint, max_attempts, token);
	cfg.unsigned_payload = unsigned_payload;
	assert_int_equal(s3_client_new(&cfg, &c), 0);
	return c;
}

static struct s3_client *client_with(const char *endpoint, int max_attempts, const char *token)
{
	return client_signing(endpoint, max_attempts, token, 0);
}

static int setup(void **state)
{
	*state = client_with("http://127.0.0.1:7480", 3, NULL);
	return 0;
}

static int teardown(void **state)
{
	s3_client_free(*state);
	return 0;
}

static void no_secret(struct s3_client *c)
{
	int i;

	assert_null(strstr(s3_client_error(c), SECRET));
	for (i = 0; i < mk.calls && i < 16; i++)
		assert_null(strstr(mk.sent_headers[i], SECRET));
}

#define MD5_HELLO "5d41402abc4b2a76b9719d911017c592"
#define ERRBODY(code, msg)                                                                         \
	"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>" code "</Code><Message>" msg      \
	"</Message><RequestId>tx1</RequestId></Error>"

/* ------------------------------------------------------------------ */
/* tests */

static void test_put_503_then_200(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_OK, 503, NULL, ERRBODY("SlowDown", "Please reduce your request rate."), 0,
		  0 },
		{ CURLE_OK, 200, NULL, NULL, 1, 0 },
	};
	char etag[S3_ETAG_MAX];

	script(r, 2);
	assert_int_equal(s3_put_object(c, "dir/a b.txt", "hello", 5, NULL, NULL, 0, NULL, 0, etag),
			 0);
	assert_int_equal(mk.calls, 2);
	assert_int_equal(s3_client_sent_twice(c), 1);
	assert_string_equal(etag, MD5_HELLO);
	assert_string_equal(s3_client_error(c), "");
	assert_int_equal(s3_client_http_status(c), 200);
	assert_string_equal(mk.sent_url[1], "http://127.0.0.1:7480/test/dir/a%20b.txt");
	assert_string_equal(mk.sent_body[1], "hello");
	/* the headers every request must carry */
	assert_non_null(strstr(mk.sent_headers[1], "host: 127.0.0.1:7480\n"));
	assert_non_null(strstr(mk.sent_headers[1],
			       "x-amz-content-sha256: 2cf24dba5fb0a30e26e83b2ac5b9e29e"
			       "1b161e5c1fa7425e73043362938b9824\n"));
	assert_non_null(strstr(mk.sent_headers[1], "content-md5: XUFAKrxLKna5cZ2REBfFkg==\n"));
	assert_non_null(strstr(mk.sent_headers[1], "\nExpect:\n"));
	assert_non_null(
		strstr(mk.sent_headers[1], "Authorization: AWS4-HMAC-SHA256 Credential=TESTKEY/"));
	assert_non_null(strstr(mk.sent_headers[1], "SignedHeaders=content-md5;content-type;host;"
						   "x-amz-content-sha256;x-amz-date, Signature="));
	assert_null(strstr(mk.sent_headers[1], "if-none-match"));
	no_secret(c);
}

static void test_403_signature_not_retried(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_OK, 403, NULL, ERRBODY("SignatureDoesNotMatch", "sig " SECRET), 0, 0 },
	};

	script(r, 1);
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 0, NULL, 0, NULL), -EACCES);
	assert_int_equal(mk.calls, 1);
	assert_string_equal(
		s3_client_error(c),
		"403 SignatureDoesNotMatch: check the secret key for access key TESTKEY");
	assert_int_equal(s3_client_http_status(c), 403);
	no_secret(c);
}

static void test_403_other_codes(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_OK, 403, NULL, ERRBODY("InvalidAccessKeyId", "x"), 0, 0 },
		{ CURLE_OK, 403, NULL, NULL, 0, 0 }, /* HEAD: no body */
		{ CURLE_OK, 403, NULL, ERRBODY("QuotaExceeded", "full"), 0, 0 },
		{ CURLE_OK, 400, NULL, ERRBODY("InvalidArgument", "bad thing " SECRET), 0, 0 },
	};

	script(r, 4);
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 0, NULL, 0, NULL), -EACCES);
	assert_string_equal(s3_client_error(c), "403 InvalidAccessKeyId: the access key TESTKEY is "
						"not known to http://127.0.0.1:7480");
	assert_int_equal(s3_head_bucket(c), -EACCES);
	assert_string_equal(s3_client_error(c),
			    "403 Forbidden: check the access key and secret key "
			    "(access key TESTKEY)");
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 0, NULL, 0, NULL), -EDQUOT);
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 0, NULL, 0, NULL), -EINVAL);
	assert_non_null(strstr(s3_client_error(c), "400 InvalidArgument: bad thing "));
	assert_int_equal(mk.calls, 4); /* none retried */
	no_secret(c);
}

static void test_connect_refused(void **state)
{
	struct s3_client *c = client_with("http://127.0.0.1:1", 3, NULL);
	const struct mresp r[] = {
		{ CURLE_COULDNT_CONNECT, 0, NULL, NULL, 0, 0 },
		{ CURLE_COULDNT_CONNECT, 0, NULL, NULL, 0, 0 },
		{ CURLE_COULDNT_CONNECT, 0, NULL, NULL, 0, 0 },
	};

	script(r, 3);
	assert_int_equal(s3_head_bucket(c), -EHOSTUNREACH);
	assert_int_equal(mk.calls, 3);
	assert_int_equal(strncmp(s3_client_error(c), "cannot connect to http://127.0.0.1:1: ", 38),
			 0);
	assert_non_null(strstr(s3_client_error(c), "gave up after 3 attempts"));
	assert_non_null(strstr(s3_client_error(c), "check the endpoint and that the server runs"));
	assert_int_equal(s3_client_http_status(c), 0);
	s3_client_free(c);
}

static void test_transport_errors_retried(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_RECV_ERROR, 0, NULL, NULL, 0, 0 },
		{ CURLE_OPERATION_TIMEDOUT, 0, NULL, NULL, 0, 0 },
		{ CURLE_OK, 200, NULL, NULL, 1, 0 },
		{ CURLE_OPERATION_TIMEDOUT, 0, NULL, NULL, 0, 0 },
		{ CURLE_GOT_NOTHING, 0, NULL, NULL, 0, 0 },
		{ CURLE_OPERATION_TIMEDOUT, 0, NULL, NULL, 0, 0 },
	};

	script(r, 6);
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 0, NULL, 0, NULL), 0);
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 0, NULL, 0, NULL),
			 -ETIMEDOUT);
	assert_int_equal(mk.calls, 6);
}

static void test_complete_200_error_retried(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_OK, 200, NULL,
		  "<?xml version=\"1.0\"?>\n\n<Error><Code>InternalError</Code>"
		  "<Message>We encountered an internal error.</Message></Error>",
		  0, 0 },
		{ CURLE_OK, 200, NULL,
		  "<?xml version=\"1.0\"?><CompleteMultipartUploadResult><Location>x</Location>"
		  "<Bucket>test</Bucket><Key>k</Key><ETag>&quot;3858f62230ac3c915f300c664312c11f-2"
		  "&quot;</ETag></CompleteMultipartUploadResult>",
		  0, 0 },
	};
	struct s3_part parts[2] = { { 1, 5, "aaaa" }, { 2, 5, "bbbb" } };
	char etag[S3_ETAG_MAX];

	script(r, 2);
	assert_int_equal(s3_mpu_complete(c, "k", "up-1", parts, 2, NULL, 0, etag), 0);
	assert_int_equal(mk.calls, 2);
	assert_string_equal(etag, "3858f62230ac3c915f300c664312c11f-2");
	assert_string_equal(mk.sent_url[1], "http://127.0.0.1:7480/test/k?uploadId=up-1");
	assert_string_equal(
		mk.sent_body[1],
		"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"aaaa\""
		"</ETag></Part><Part><PartNumber>2</PartNumber><ETag>\"bbbb\"</ETag>"
		"</Part></CompleteMultipartUpload>");
	assert_non_null(strstr(mk.sent_headers[1], "content-md5: "));
	assert_non_null(strstr(mk.sent_headers[1], "content-type: application/xml\n"));
}

static void test_complete_200_error_final(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_OK, 200, NULL,
		  "<Error><Code>InvalidPart</Code><Message>m</Message></Error>", 0, 0 },
	};
	struct s3_part parts[1] = { { 1, 5, "aaaa" } };
	char etag[S3_ETAG_MAX];

	script(r, 1);
	assert_int_equal(s3_mpu_complete(c, "k", "up-1", parts, 1, NULL, 0, etag), -EINVAL);
	assert_int_equal(mk.calls, 1);
}

static void test_complete_lost_response(void **state)
{
	struct s3_client *c = *state;
	static const unsigned char a[16] = { 1 }, b[16] = { 2 };
	const unsigned char md5s[2][16] = { { 1 }, { 2 } };
	struct s3_part parts[2] = { { 1, 5, "" }, { 2, 5, "" } };
	char want[S3_ETAG_MAX], hdr[200], etag[S3_ETAG_MAX];
	struct mresp r[] = {
		{ CURLE_RECV_ERROR, 0, NULL, NULL, 0, 0 },
		{ CURLE_OK, 404, NULL, ERRBODY("NoSuchUpload", "gone"), 0, 0 },
		{ CURLE_OK, 200, hdr, NULL, 0, 0 },
		/* every answer lost, the call gives up: the HEAD still finds it done */
		{ CURLE_RECV_ERROR, 0, NULL, NULL, 0, 0 },
		{ CURLE_GOT_NOTHING, 0, NULL, NULL, 0, 0 },
		{ CURLE_RECV_ERROR, 0, NULL, NULL, 0, 0 },
		{ CURLE_OK, 200, hdr, NULL, 0, 0 },
		/* the same with another object there: the failure stands */
		{ CURLE_RECV_ERROR, 0, NULL, NULL, 0, 0 },
		{ CURLE_RECV_ERROR, 0, NULL, NULL, 0, 0 },
		{ CURLE_RECV_ERROR, 0, NULL, NULL, 0, 0 },
		{ CURLE_OK, 200, "ETag: \"0123-2\"\n", NULL, 0, 0 },
	};

	sigv4_hex(a, 16, parts[0].etag);
	sigv4_hex(b, 16, parts[1].etag);
	s3_multipart_etag(md5s, 2, want);
	snprintf(hdr, sizeof(hdr), "ETag: \"%s\"\nContent-Length: 10\n", want);
	script(r, 11);
	assert_int_equal(s3_mpu_complete(c, "k", "up-1", parts, 2, NULL, 0, etag), 0);
	assert_string_equal(etag, want);
	assert_int_equal(mk.calls, 3);
	assert_true(mk.nobody); /* the last one was the HEAD */
	assert_int_equal(s3_mpu_complete(c, "k", "up-1", parts, 2, NULL, 0, etag), 0);
	assert_string_equal(etag, want);
	assert_int_equal(mk.calls, 7);
	assert_int_equal(s3_mpu_complete(c, "k", "up-1", parts, 2, NULL, 0, etag), -EIO);
	assert_int_equal(mk.calls, 11);
	assert_non_null(strstr(s3_client_error(c), "gave up after 3 attempts"));
}

/*
 * The same under SSE-KMS: the parts' ETags and the object's are no MD5s.  The
 * object with our size and the upload's ident metadata is the one made.
 */
static void test_complete_lost_response_sse_kms(void **state)
{
	struct s3_client *c = *state;
	struct s3_part parts[2] = { { 1, 5, "k1" }, { 2, 5, "k2" } };
	const struct s3_meta meta[2] = { { "mgmt-record-id", "7", 1 },
					 { "mgmt-started-at", "2", 0 } };
	char etag[S3_ETAG_MAX];
	const struct mresp r[] = {
		{ CURLE_RECV_ERROR, 0, NULL, NULL, 0, 0 },
		{ CURLE_OK, 404, NULL, ERRBODY("NoSuchUpload", "gone"), 0, 0 },
		{ CURLE_OK, 200, "ETag: \"kms-2\"\nContent-Length: 10\n"
				 "x-amz-server-side-encryption: aws:kms\n"
				 "x-amz-meta-mgmt-record-id: 7\nx-amz-meta-mgmt-started-at: 1\n",
		  NULL, 0, 0 },
		/* another record's object there: the failure stands */
		{ CURLE_RECV_ERROR, 0, NULL, NULL, 0, 0 },
		{ CURLE_OK, 404, NULL, ERRBODY("NoSuchUpload", "gone"), 0, 0 },
		{ CURLE_OK, 200, "ETag: \"kms-2\"\nContent-Length: 10\n"
				 "x-amz-server-side-encryption: aws:kms\n"
				 "x-amz-meta-mgmt-record-id: 6\n", NULL, 0, 0 },
	};

	script(r, 6);
	assert_int_equal(s3_mpu_complete(c, "k", "up-1", parts, 2, meta, 2, etag), 0);
	assert_string_equal(etag, "kms-2");
	assert_int_equal(mk.calls, 3);
	assert_int_not_equal(s3_mpu_complete(c, "k", "up-1", parts, 2, meta, 2, etag), 0);
	assert_int_equal(mk.calls, 6);
	assert_non_null(strstr(s3_client_error(c), "NoSuchUpload"));
}

static void test_etag_mismatch(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_OK, 200, "ETag: \"deadbeef\"\n", NULL, 0, 0 },
		{ CURLE_OK, 200, "ETag: \"deadbeef\"\n", NULL, 0, 0 },
		{ CURLE_OK, 200, "ETag: \"deadbeef\"\n", NULL, 0, 0 },
		{ CURLE_OK, 200, "ETag: \"deadbeef\"\n", NULL, 0, 0 },
		{ CURLE_OK, 200, NULL, NULL, 1, 0 },
	};
	char etag[S3_ETAG_MAX];

	script(r, 5);
	assert_int_equal(s3_mpu_put_part(c, "k", "up", 3, "hello", 5, NULL, NULL, etag), -EBADMSG);
	assert_int_equal(mk.calls, 3);
	assert_non_null(strstr(s3_client_error(c), "ETag mismatch"));
	assert_string_equal(mk.sent_url[0],
			    "http://127.0.0.1:7480/test/k?partNumber=3&uploadId=up");
	/* then once wrong, once right */
	assert_int_equal(s3_mpu_put_part(c, "k", "up", 3, "hello", 5, NULL, NULL, etag), 0);
	assert_string_equal(etag, MD5_HELLO);
	assert_int_equal(mk.calls, 5);
}

static void test_if_none_match(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		/* a plain 412, someone else's object there: the key is taken */
		{ CURLE_OK, 412, NULL, ERRBODY("PreconditionFailed", "x"), 0, 0 },
		{ CURLE_OK, 200, "ETag: \"0123\"\nContent-Length: 5\n", NULL, 0, 0 },
		/* reset after the server stored it, 412 on the retry, HEAD shows our MD5 */
		{ CURLE_RECV_ERROR, 0, NULL, NULL, 0, 0 },
		{ CURLE_OK, 412, NULL, ERRBODY("PreconditionFailed", "x"), 0, 0 },
		{ CURLE_OK, 200, "ETag: \"" MD5_HELLO "\"\nContent-Length: 5\n", NULL, 0, 0 },
		/* the same, but someone else's object is there */
		{ CURLE_SEND_ERROR, 0, NULL, NULL, 0, 0 },
		{ CURLE_OK, 412, NULL, ERRBODY("PreconditionFailed", "x"), 0, 0 },
		{ CURLE_OK, 200, "ETag: \"0123\"\nContent-Length: 5\n", NULL, 0, 0 },
	};
	char etag[S3_ETAG_MAX];

	script(r, 8);
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 1, NULL, 0, etag), -EEXIST);
	assert_int_equal(mk.calls, 2);
	assert_non_null(strstr(mk.sent_headers[0], "if-none-match: *\n"));
	assert_string_equal(s3_client_error(c),
			    "412 PreconditionFailed: 'k' already exists in bucket 'test'");
	assert_int_equal(s3_client_http_status(c), 412);
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 1, NULL, 0, etag), 0);
	assert_string_equal(etag, MD5_HELLO);
	assert_int_equal(mk.calls, 5);
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 1, NULL, 0, etag), -EEXIST);
	assert_int_equal(mk.calls, 8);
	assert_int_equal(s3_client_http_status(c), 412);
	assert_non_null(strstr(s3_client_error(c), "already exists"));
}

/*
 * A 412 with no failed attempt before it in the call: the PUT that stored
 * the object was an earlier call's, whose answer was lost with the process
 * (kill -9, an unmount that cut it).  The HEAD decides, by ETag and size.
 */
static void test_if_none_match_412_first(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		/* ours: our MD5 and size, done under the same key */
		{ CURLE_OK, 412, NULL, ERRBODY("PreconditionFailed", "x"), 0, 0 },
		{ CURLE_OK, 200, "ETag: \"" MD5_HELLO "\"\nContent-Length: 5\n", NULL, 0, 0 },
		/* another ETag: someone else's, the key is taken */
		{ CURLE_OK, 412, NULL, ERRBODY("PreconditionFailed", "x"), 0, 0 },
		{ CURLE_OK, 200, "ETag: \"" MD5_HELLO "0\"\nContent-Length: 5\n", NULL, 0, 0 },
		/* our ETag but another size: not ours either */
		{ CURLE_OK, 412, NULL, ERRBODY("PreconditionFailed", "x"), 0, 0 },
		{ CURLE_OK, 200, "ETag: \"" MD5_HELLO "\"\nContent-Length: 6\n", NULL, 0, 0 },
		/* the HEAD cannot say: its error, never "taken" */
		{ CURLE_OK, 412, NULL, ERRBODY("PreconditionFailed", "x"), 0, 0 },
		{ CURLE_OK, 503, NULL, NULL, 0, 0 },
		{ CURLE_OK, 503, NULL, NULL, 0, 0 },
		{ CURLE_OK, 503, NULL, NULL, 0, 0 },
		/* a second copy asked for: the same bytes without our metadata are the first */
		{ CURLE_OK, 412, NULL, ERRBODY("PreconditionFailed", "x"), 0, 0 },
		{ CURLE_OK, 200, "ETag: \"" MD5_HELLO "\"\nContent-Length: 5\n"
				 "x-amz-meta-mgmt-record-id: 6\n", NULL, 0, 0 },
		/* ... and with it, this copy's own PUT whose answer was lost */
		{ CURLE_OK, 412, NULL, ERRBODY("PreconditionFailed", "x"), 0, 0 },
		{ CURLE_OK, 200, "ETag: \"" MD5_HELLO "\"\nContent-Length: 5\n"
				 "x-amz-meta-mgmt-record-id: 7\n", NULL, 0, 0 },
	};
	const struct s3_meta id7 = { "mgmt-record-id", "7", 1 };
	char etag[S3_ETAG_MAX] = "";

	script(r, 14);
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 1, NULL, 0, etag), 0);
	assert_int_equal(mk.calls, 2);
	assert_true(mk.nobody); /* the second was the HEAD */
	assert_non_null(strstr(mk.sent_url[1], "/test/k"));
	assert_string_equal(etag, MD5_HELLO);
	assert_string_equal(s3_client_error(c), "");

	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 1, NULL, 0, etag), -EEXIST);
	assert_int_equal(mk.calls, 4);
	assert_int_equal(s3_client_http_status(c), 412);
	assert_string_equal(s3_client_error(c),
			    "412 PreconditionFailed: 'k' already exists in bucket 'test'");

	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 1, NULL, 0, etag), -EEXIST);
	assert_int_equal(mk.calls, 6);

	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 1, NULL, 0, etag), -EAGAIN);
	assert_int_equal(mk.calls, 10);
	assert_int_equal(s3_client_http_status(c), 503);

	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, S3_PUT_NEW_COPY, &id7, 1,
				       etag), -EEXIST);
	assert_int_equal(mk.calls, 12);
	assert_int_equal(s3_client_http_status(c), 412);
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, S3_PUT_NEW_COPY, &id7, 1,
				       etag), 0);
	assert_int_equal(mk.calls, 14);
}

/*
 * A 2xx to If-None-Match: * whose ETag is not our MD5 (SSE-KMS, damage):
 * a retry could only meet that object (412) and take a new name for the
 * same data, over and over.  It fails at once, -EBADMSG; a plain PUT,
 * which overwrites, is still retried.
 */
static void test_if_none_match_etag_mismatch(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_OK, 200, "ETag: \"deadbeef\"\n", NULL, 0, 0 },
		{ CURLE_OK, 200, "ETag: \"deadbeef\"\n", NULL, 0, 0 },
		{ CURLE_OK, 200, NULL, NULL, 1, 0 },
	};
	char etag[S3_ETAG_MAX];

	script(r, 3);
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 1, NULL, 0, etag), -EBADMSG);
	assert_int_equal(mk.calls, 1);
	assert_non_null(strstr(s3_client_error(c), "ETag mismatch"));
	assert_non_null(strstr(s3_client_error(c), "SSE-KMS"));
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 0, NULL, 0, etag), 0);
	assert_int_equal(mk.calls, 3);
	assert_string_equal(etag, MD5_HELLO);
}

/*
 * SSE-KMS and SSE-C objects have ETags that are no MD5s, and the answer
 * says so (x-amz-server-side-encryption: aws:kms, or the SSE-C algorithm
 * header): the server checked Content-MD5, so the PUT is done.  SSE-S3
 * (AES256) ETags are MD5s and are still compared.  A 412 is then ours only
 * by the metadata marked ident: the ETag cannot tell.
 */
static void test_sse_kms_etag_is_not_an_md5(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_OK, 200, "ETag: \"deadbeef\"\nx-amz-server-side-encryption: aws:kms\n",
		  NULL, 0, 0 },
		{ CURLE_OK, 200, "ETag: \"cafe\"\n"
				 "x-amz-server-side-encryption-customer-algorithm: AES256\n", NULL, 0, 0 },
		{ CURLE_OK, 200, "ETag: \"deadbeef\"\nx-amz-server-side-encryption: AES256\n",
		  NULL, 0, 0 },
		/* a 412, and the object there has our ident metadata and size */
		{ CURLE_OK, 412, NULL, ERRBODY("PreconditionFailed", "x"), 0, 0 },
		{ CURLE_OK, 200, "ETag: \"beef\"\nContent-Length: 5\n"
				 "x-amz-server-side-encryption: aws:kms:dsse\n"
				 "x-amz-meta-mgmt-record-id: 7\nx-amz-meta-mgmt-started-at: 1\n",
		  NULL, 0, 0 },
		/* another record's object: taken */
		{ CURLE_OK, 412, NULL, ERRBODY("PreconditionFailed", "x"), 0, 0 },
		{ CURLE_OK, 200, "ETag: \"beef\"\nContent-Length: 5\n"
				 "x-amz-server-side-encryption: aws:kms\nx-amz-meta-mgmt-record-id: 6\n",
		  NULL, 0, 0 },
		/* nothing ident to compare: taken, never guessed ours */
		{ CURLE_OK, 412, NULL, ERRBODY("PreconditionFailed", "x"), 0, 0 },
		{ CURLE_OK, 200, "ETag: \"beef\"\nContent-Length: 5\n"
				 "x-amz-server-side-encryption: aws:kms\nx-amz-meta-mgmt-record-id: 7\n",
		  NULL, 0, 0 },
	};
	const struct s3_meta meta[2] = { { "mgmt-record-id", "7", 1 },
					 { "mgmt-started-at", "2", 0 } };
	char etag[S3_ETAG_MAX] = "";

	script(r, 9);
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 1, NULL, 0, etag), 0);
	assert_string_equal(etag, "deadbeef");
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 1, NULL, 0, etag), 0);
	assert_string_equal(etag, "cafe");
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 1, NULL, 0, etag), -EBADMSG);
	assert_int_equal(mk.calls, 3);

	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 1, meta, 2, etag), 0);
	assert_string_equal(etag, "beef");
	assert_int_equal(mk.calls, 5);
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 1, meta, 2, etag), -EEXIST);
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 1, &meta[1], 1, etag),
			 -EEXIST);
	assert_int_equal(mk.calls, 9);
}

/*
 * sse=aws:kms with a key: a new object (PUT, CreateMultipartUpload) asks for
 * it, signed like every x-amz-* header; a part does not (S3 refuses it there).
 */
static void test_sse_headers_on_new_objects(void **state)
{
	const struct mresp r[] = {
		{ CURLE_OK, 200, "ETag: \"" MD5_HELLO "\"\nx-amz-server-side-encryption: aws:kms\n",
		  NULL, 0, 0 },
		{ CURLE_OK, 200, NULL,
		  "<InitiateMultipartUploadResult><UploadId>u1</UploadId>"
		  "</InitiateMultipartUploadResult>", 0, 0 },
		{ CURLE_OK, 200, "ETag: \"" MD5_HELLO "\"\n", NULL, 0, 0 },
	};
	struct s3_config cfg;
	struct s3_client *c = NULL;
	char etag[S3_ETAG_MAX], id[S3_UPLOAD_ID_MAX];

	(void)state;
	base_cfg(&cfg, "http://127.0.0.1:7480", 1, NULL);
	cfg.sse = "aws:kms";
	cfg.sse_kms_key_id = "key-1";
	assert_int_equal(s3_client_new(&cfg, &c), 0);
	script(r, 3);
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 1, NULL, 0, etag), 0);
	assert_int_equal(s3_mpu_create(c, "k", NULL, 0, id), 0);
	assert_int_equal(s3_mpu_put_part(c, "k", id, 1, "hello", 5, NULL, NULL, etag), 0);
	for (int i = 0; i < 2; i++) {
		assert_non_null(strstr(mk.sent_headers[i], "x-amz-server-side-encryption: aws:kms\n"));
		assert_non_null(strstr(mk.sent_headers[i],
				       "x-amz-server-side-encryption-aws-kms-key-id: key-1\n"));
		assert_non_null(strstr(mk.sent_headers[i],
				       ";x-amz-server-side-encryption;"
				       "x-amz-server-side-encryption-aws-kms-key-id,"));
	}
	assert_null(strstr(mk.sent_headers[2], "x-amz-server-side-encryption"));
	s3_client_free(c);
}

static void test_head_bucket_missing(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_OK, 404, NULL, NULL, 0, 0 },
		{ CURLE_OK, 404, NULL, ERRBODY("NoSuchBucket", "x"), 0, 0 },
		{ CURLE_OK, 404, NULL, NULL, 0, 0 },
	};
	struct s3_object_info oi;

	script(r, 3);
	assert_int_equal(s3_head_bucket(c), -ENXIO);
	assert_string_equal(s3_client_error(c),
			    "NoSuchBucket: bucket 'test' does not exist at http://127.0.0.1:7480: "
			    "create it or fix the bucket name");
	assert_string_equal(mk.sent_url[0], "http://127.0.0.1:7480/test");
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 0, NULL, 0, NULL), -ENXIO);
	assert_int_equal(s3_head_object(c, "k", &oi), -ENOENT);
	assert_int_equal(mk.calls, 3);
}

static void test_abort_gone_is_ok(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_OK, 404, NULL, ERRBODY("NoSuchUpload", "x"), 0, 0 },
		{ CURLE_OK, 204, NULL, NULL, 0, 0 },
	};

	script(r, 2);
	assert_int_equal(s3_mpu_abort(c, "k", "up"), 0);
	assert_string_equal(s3_client_error(c), "");
	assert_int_equal(s3_mpu_abort(c, "k", "up"), 0);
	assert_string_equal(mk.sent_url[1], "http://127.0.0.1:7480/test/k?uploadId=up");
}

static void test_create_and_meta(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_OK, 200, NULL,
		  "<InitiateMultipartUploadResult><Bucket>test</Bucket><Key>k</Key>"
		  "<UploadId>2~abc&amp;def</UploadId></InitiateMultipartUploadResult>",
		  0, 0 },
	};
	const struct s3_meta meta[2] = { { "mgmt-path", "pending/50% é.txt", 0 },
					 { "mgmt-x", " a ", 0 } };
	char id[S3_UPLOAD_ID_MAX];

	script(r, 1);
	assert_int_equal(s3_mpu_create(c, "k", meta, 2, id), 0);
	assert_int_equal(s3_client_sent_twice(c), 0);	/* sent once: no upload left behind */
	assert_string_equal(id, "2~abc&def");
	assert_string_equal(mk.sent_url[0], "http://127.0.0.1:7480/test/k?uploads=");
	assert_non_null(
		strstr(mk.sent_headers[0], "x-amz-meta-mgmt-path: pending/50%25 %C3%A9.txt\n"));
	assert_non_null(strstr(mk.sent_headers[0], "x-amz-meta-mgmt-x: %20a%20\n"));
	assert_non_null(strstr(mk.sent_headers[0],
			       "content-type;host;x-amz-content-sha256;"
			       "x-amz-date;x-amz-meta-mgmt-path;x-amz-meta-mgmt-x,"));
}

static void test_list_parts_pages(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_OK, 200, NULL,
		  "<ListPartsResult><IsTruncated>true</IsTruncated>"
		  "<NextPartNumberMarker>2</NextPartNumberMarker>"
		  "<Part><PartNumber>1</PartNumber><ETag>&quot;e1&quot;</ETag><Size>5</Size></Part>"
		  "<Part><PartNumber>2</PartNumber><ETag>\"e2\"</ETag><Size>6</Size></Part>"
		  "</ListPartsResult>",
		  0, 0 },
		{ CURLE_OK, 503, NULL, ERRBODY("ServiceUnavailable", "x"), 0, 0 },
		{ CURLE_OK, 200, NULL,
		  "<ListPartsResult><IsTruncated>false</IsTruncated>"
		  "<Part><PartNumber>3</PartNumber><ETag>\"e3\"</ETag><Size>7</Size></Part>"
		  "</ListPartsResult>",
		  0, 0 },
	};
	struct s3_part *parts = NULL;
	size_t n = 0;

	script(r, 3);
	assert_int_equal(s3_mpu_list_parts(c, "k", "up", &parts, &n), 0);
	assert_int_equal(n, 3);
	assert_int_equal(parts[0].partno, 1);
	assert_string_equal(parts[0].etag, "e1");
	assert_int_equal(parts[1].size, 6);
	assert_string_equal(parts[2].etag, "e3");
	assert_string_equal(mk.sent_url[2],
			    "http://127.0.0.1:7480/test/k?part-number-marker=2&uploadId=up");
	free(parts);
}

struct seen {
	char keys[4][64];
	int n;
};

static int on_upload(const char *key, const char *id, void *arg)
{
	struct seen *s = arg;

	snprintf(s->keys[s->n++], sizeof(s->keys[0]), "%s=%s", key, id);
	return 0;
}

static void test_list_uploads_pages(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_OK, 200, NULL,
		  "<ListMultipartUploadsResult><Bucket>test</Bucket><KeyMarker></KeyMarker>"
		  "<NextKeyMarker>p/b</NextKeyMarker><NextUploadIdMarker>u2</NextUploadIdMarker>"
		  "<IsTruncated>true</IsTruncated>"
		  "<Upload><Key>p/a&amp;b</Key><UploadId>u1</UploadId></Upload>"
		  "<Upload><Key>p/b</Key><UploadId>u2</UploadId></Upload>"
		  "</ListMultipartUploadsResult>",
		  0, 0 },
		{ CURLE_OK, 200, NULL,
		  "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated>"
		  "<Upload><Key>p/c</Key><UploadId>u3</UploadId></Upload>"
		  "</ListMultipartUploadsResult>",
		  0, 0 },
	};
	struct seen s = { .n = 0 };

	script(r, 2);
	assert_int_equal(s3_mpu_list(c, "p/", on_upload, &s), 0);
	assert_int_equal(s.n, 3);
	assert_string_equal(s.keys[0], "p/a&b=u1");
	assert_string_equal(s.keys[2], "p/c=u3");
	assert_string_equal(mk.sent_url[0], "http://127.0.0.1:7480/test?prefix=p%2F&uploads=");
	assert_string_equal(mk.sent_url[1],
			    "http://127.0.0.1:7480/test?key-marker=p%2Fb&prefix=p%2F"
			    "&upload-id-marker=u2&uploads=");
}

struct listed {
	char line[4][96];
	int n;
};

static int on_object(const char *key, const struct s3_object_info *o, void *arg)
{
	struct listed *l = arg;

	snprintf(l->line[l->n++], sizeof(l->line[0]), "%s %llu %s %lld", key,
		 (unsigned long long)o->size, o->etag, (long long)o->mtime);
	return 0;
}

static void test_list_objects_pages(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_OK, 200, NULL,
		  "<ListBucketResult><IsTruncated>true</IsTruncated>"
		  "<NextContinuationToken>t/2=</NextContinuationToken>"
		  "<Contents><Key>p/a&amp;b.tar.gz</Key><LastModified>2026-11-25T09:00:01.000Z"
		  "</LastModified><ETag>&quot;e1&quot;</ETag><Size>5</Size></Contents>"
		  "<Contents><Key>p/c</Key><ETag>\"e2-3\"</ETag><Size>16777216</Size></Contents>"
		  "</ListBucketResult>",
		  0, 0 },
		{ CURLE_OK, 503, NULL, ERRBODY("SlowDown", "x"), 0, 0 },
		{ CURLE_OK, 200, NULL,
		  "<ListBucketResult><IsTruncated>false</IsTruncated>"
		  "<Contents><Key>p/d</Key><ETag>\"e3\"</ETag><Size>0</Size></Contents>"
		  "</ListBucketResult>",
		  0, 0 },
	};
	struct listed l = { .n = 0 };

	script(r, 3);
	assert_int_equal(s3_list_objects(c, "p/", on_object, &l), 0);
	assert_int_equal(l.n, 3);
	assert_string_equal(l.line[0], "p/a&b.tar.gz 5 e1 1795597201");
	assert_string_equal(l.line[1], "p/c 16777216 e2-3 0");
	assert_string_equal(l.line[2], "p/d 0 e3 0");
	assert_string_equal(mk.sent_url[0], "http://127.0.0.1:7480/test?list-type=2&prefix=p%2F");
	assert_string_equal(mk.sent_url[2], "http://127.0.0.1:7480/test?continuation-token="
					    "t%2F2%3D&list-type=2&prefix=p%2F");
}

struct metas {
	char got[4][128];
	int n;
};

static int on_meta(const char *name, const char *value, void *arg)
{
	struct metas *m = arg;

	snprintf(m->got[m->n++], sizeof(m->got[0]), "%s=%s", name, value);
	return 0;
}

static void test_head_meta_and_tags(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		/* a failed attempt's headers are not reported */
		{ CURLE_OK, 503, "x-amz-meta-mgmt-stale: 1\n", "", 0, 0 },
		{ CURLE_OK, 200,
		  "ETag: \"abc-2\"\nContent-Length: 42\n"
		  "Last-Modified: Wed, 25 Nov 2026 09:00:01 GMT\n"
		  "X-Amz-Meta-Mgmt-Original-Path: pending/50%25 %C3%A9.txt\n"
		  "x-amz-meta-mgmt-compression: tar.gz\nx-amz-request-id: r1\n",
		  "", 0, 0 },
		{ CURLE_OK, 200, NULL, "", 0, 0 },
		{ CURLE_OK, 200, NULL,
		  "<Tagging><TagSet><Tag><Key>other</Key><Value>x</Value></Tag>"
		  "<Tag><Key>mgmt-sha256</Key><Value>00ff</Value></Tag></TagSet></Tagging>",
		  0, 0 },
		{ CURLE_OK, 200, NULL, "<Tagging><TagSet></TagSet></Tagging>", 0, 0 },
	};
	struct s3_object_info info;
	struct metas m = { .n = 0 };
	char v[80];

	script(r, 5);
	assert_int_equal(s3_head_object_meta(c, "p/k", &info, on_meta, &m), 0);
	assert_int_equal(m.n, 2);
	assert_string_equal(m.got[0], "mgmt-original-path=pending/50% \xc3\xa9.txt");
	assert_string_equal(m.got[1], "mgmt-compression=tar.gz");
	assert_string_equal(info.etag, "abc-2");
	assert_int_equal(info.size, 42);
	assert_int_equal(info.mtime, 1795597201);

	assert_int_equal(s3_put_tag(c, "p/k", "mgmt-sha256", "00ff"), 0);
	assert_string_equal(mk.sent_url[2], "http://127.0.0.1:7480/test/p/k?tagging=");
	assert_string_equal(mk.sent_body[2], "<Tagging><TagSet><Tag><Key>mgmt-sha256</Key>"
					     "<Value>00ff</Value></Tag></TagSet></Tagging>");
	assert_non_null(strstr(mk.sent_headers[2], "content-md5: "));
	assert_int_equal(s3_get_tag(c, "p/k", "mgmt-sha256", v, sizeof(v)), 0);
	assert_string_equal(v, "00ff");
	assert_int_equal(s3_get_tag(c, "p/k", "mgmt-sha256", v, sizeof(v)), -ENOENT);
}

static void test_parse_time(void **state)
{
	(void)state;
	assert_int_equal(s3_parse_time("Wed, 25 Nov 2026 09:00:01 GMT"), 1795597201);
	assert_int_equal(s3_parse_time("2026-11-25T09:00:01Z"), 1795597201);
	assert_int_equal(s3_parse_time("2026-11-25T09:00:01.123Z"), 1795597201);
	assert_int_equal(s3_parse_time("2026-11-25T09:00:01+02:00"), 0);
	assert_int_equal(s3_parse_time("yesterday"), 0);
	assert_int_equal(s3_parse_time(""), 0);
}

struct sink {
	char buf[64];
	size_t len;
};

static int on_data(const void *data, size_t len, void *arg)
{
	struct sink *s = arg;

	memcpy(s->buf + s->len, data, len);
	s->len += len;
	return 0;
}

static void test_get_resumes(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_PARTIAL_FILE, 200, "ETag: \"e1\"\nContent-Length: 6\n", "abc", 0, 0 },
		{ CURLE_OK, 206, "ETag: \"e1\"\nContent-Length: 3\n", "def", 0, 0 },
		/* a server that ignores Range: the first bytes are dropped */
		{ CURLE_RECV_ERROR, 200, "ETag: \"e1\"\nContent-Length: 6\n", "ab", 0, 0 },
		{ CURLE_OK, 200, "ETag: \"e1\"\nContent-Length: 6\n", "abcdef", 0, 0 },
		/* an error body is not data */
		{ CURLE_OK, 404, NULL, ERRBODY("NoSuchKey", "x"), 0, 0 },
	};
	struct sink s = { .len = 0 };

	script(r, 5);
	assert_int_equal(s3_get_object(c, "k", on_data, &s), 0);
	assert_int_equal(s.len, 6);
	assert_memory_equal(s.buf, "abcdef", 6);
	assert_null(strstr(mk.sent_headers[0], "range"));
	assert_non_null(strstr(mk.sent_headers[1], "range: bytes=3-\n"));
	assert_non_null(strstr(mk.sent_headers[1], "if-match: \"e1\"\n"));
	s.len = 0;
	assert_int_equal(s3_get_object(c, "k", on_data, &s), 0);
	assert_int_equal(s.len, 6);
	assert_memory_equal(s.buf, "abcdef", 6);
	s.len = 0;
	assert_int_equal(s3_get_object(c, "k", on_data, &s), -ENOENT);
	assert_int_equal(s.len, 0);
}

static void test_cancel(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_OK, 503, NULL, ERRBODY("SlowDown", "x"), 0, 1 },
	};
	atomic_int flag = 0;

	script_cancel(r, 1, c, &flag);
	/* raised during the first attempt: no second one */
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 0, NULL, 0, NULL),
			 -ECANCELED);
	assert_int_equal(mk.calls, 1);
	/* raised before: nothing is sent */
	assert_int_equal(s3_head_bucket(c), -ECANCELED);
	assert_int_equal(mk.calls, 1);
	s3_client_set_cancel(c, NULL);
}

/* The server said yes while the flag rose: the PUT is done, not cancelled. */
static void test_cancel_after_2xx(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_OK, 200, NULL, NULL, 1, 1 },
	};
	atomic_int flag = 0;
	char etag[S3_ETAG_MAX];

	script_cancel(r, 1, c, &flag);
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 1, NULL, 0, etag), 0);
	assert_string_equal(etag, MD5_HELLO);
	assert_int_equal(mk.calls, 1);
	assert_true(atomic_load(&flag));
	s3_client_set_cancel(c, NULL);
}

/*
 * The flag rose once the request was out, as the server acted: the answer
 * is still read, so the caller learns the upload id (and aborts it) instead
 * of leaving an upload nobody knows of on the server.
 */
static void test_cancel_waits_for_the_answer(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_OK, 200, NULL,
		  "<InitiateMultipartUploadResult><UploadId>up1</UploadId>"
		  "</InitiateMultipartUploadResult>",
		  0, 1 },
		{ CURLE_OK, 200, NULL, NULL, 1, 1 },
	};
	atomic_int flag = 0;
	char id[S3_UPLOAD_ID_MAX], etag[S3_ETAG_MAX];

	script_cancel(r, 2, c, &flag);
	assert_int_equal(s3_mpu_create(c, "k", NULL, 0, id), 0);
	assert_string_equal(id, "up1");
	/* a PUT whose body went out whole: stored, and it says so */
	atomic_store(&flag, 0);
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 1, NULL, 0, etag), 0);
	assert_int_equal(s3_client_put_stored(c), 1);
	assert_int_equal(mk.calls, 2);
	s3_client_set_cancel(c, NULL);
}

/*
 * A PUT whose body is still going out when the flag rises is cut there; a
 * part is cut even once sent (its upload is aborted: nothing of it lasts).
 */
static void test_cancel_cuts_a_body_short(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_OK, 200, NULL, NULL, 1, 2 },
		{ CURLE_OK, 200, NULL, NULL, 1, 1 },
	};
	atomic_int flag = 0;

	script_cancel(r, 2, c, &flag);
	assert_int_equal(s3_put_object(c, "k", "hello", 5, NULL, NULL, 1, NULL, 0, NULL),
			 -ECANCELED);
	assert_int_equal(s3_client_put_stored(c), 0);
	atomic_store(&flag, 0);
	assert_int_equal(s3_mpu_put_part(c, "k", "up", 1, "hello", 5, NULL, NULL, NULL),
			 -ECANCELED);
	assert_int_equal(mk.calls, 2);
	s3_client_set_cancel(c, NULL);
}

/* Unmounting cuts at once whatever is in flight, an answer awaited too. */
static void test_cancel_now_cuts_all(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_OK, 200, NULL,
		  "<InitiateMultipartUploadResult><UploadId>up1</UploadId>"
		  "</InitiateMultipartUploadResult>",
		  0, 3 },
	};
	atomic_int flag = 0;
	char id[S3_UPLOAD_ID_MAX];

	script_cancel(r, 1, c, &flag);
	assert_int_equal(s3_mpu_create(c, "k", NULL, 0, id), -ECANCELED);
	assert_int_equal(mk.calls, 1);
	s3_client_set_cancel(c, NULL);
}

/* DELETE of an object: 204, and 404 (gone already) is no error either. */
static void test_delete_object(void **state)
{
	struct s3_client *c = *state;
	const struct mresp r[] = {
		{ CURLE_OK, 204, NULL, NULL, 0, 0 },
		{ CURLE_OK, 404, NULL, ERRBODY("NoSuchKey", "x"), 0, 0 },
		{ CURLE_OK, 403, NULL, ERRBODY("AccessDenied", "x"), 0, 0 },
	};

	script(r, 3);
	assert_int_equal(s3_delete_object(c, "a b.tar.gz"), 0);
	assert_string_equal(mk.sent_url[0], "http://127.0.0.1:7480/test/a%20b.tar.gz");
	assert_int_equal(s3_delete_object(c, "k"), 0);
	assert_string_equal(s3_client_error(c), "");
	assert_int_equal(s3_delete_object(c, "k"), -EACCES);
	assert_string_equal(s3_client_error(c),
			    "403 AccessDenied: access key TESTKEY may not DELETE 'k' in bucket "
			    "'test': check the permissions of the key and the bucket policy");
}

static void test_retry_budget(void **state)
{
	struct s3_config cfg;
	struct s3_client *c = NULL;
	struct mresp r[16];
	struct timespec t0, t1;
	int i;

	for (i = 0; i < 16; i++) {
		r[i].cc = CURLE_OK;
		r[i].status = 500;
		r[i].hdrs = NULL;
		r[i].body = ERRBODY("InternalError", "x");
		r[i].etag_md5 = 0;
		r[i].raise_cancel = 0;
	}
	memset(&cfg, 0, sizeof(cfg));
	cfg.endpoint = "http://localhost:7480";
	cfg.bucket = "test";
	cfg.access_key = "TESTKEY";
	cfg.secret_key = SECRET;
	cfg.path_style = -1;
	cfg.max_attempts = 16;
	cfg.retry_base_seconds = 10; /* would sleep long, */
	cfg.retry_max_seconds = 0.05; /* but the budget is tiny */
	assert_int_equal(s3_client_new(&cfg, &c), 0);
	script(r, 16);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	assert_int_equal(s3_head_bucket(c), -EAGAIN);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	assert_true(t1.tv_sec - t0.tv_sec < 2);
	assert_true(mk.calls < 16);
	assert_non_null(strstr(s3_client_error(c), "500 Whatever: gave up after "));
	assert_string_equal(mk.sent_url[0], "http://localhost:7480/test");
	s3_client_free(c);
}

static void test_virtual_hosted_and_token(void **state)
{
	struct s3_client *c = client_with("https://s3.example.com/", 1, "TOKEN123");
	const struct mresp r[] = { { CURLE_OK, 200, "Content-Length: 5\nETag: \"x\"\n", NULL, 0,
				     0 } };
	struct s3_object_info oi;

	script(r, 1);
	assert_int_equal(s3_head_object(c, "a/b c+d", &oi), 0);
	assert_int_equal(oi.size, 5);
	assert_string_equal(oi.etag, "x");
	assert_string_equal(mk.sent_url[0], "https://test.s3.example.com/a/b%20c%2Bd");
	assert_non_null(strstr(mk.sent_headers[0], "host: test.s3.example.com\n"));
	assert_non_null(strstr(mk.sent_headers[0], "x-amz-security-token: TOKEN123\n"));
	assert_non_null(strstr(mk.sent_headers[0], ";x-amz-security-token, Signature="));
	s3_client_free(c);
}

/*
 * Object data (PUT, UploadPart) carries its signed sha256 unless the client
 * is made with unsigned_payload (payload_signing=no): UNSIGNED-PAYLOAD, over
 * http or https; Content-MD5 either way, and other bodies (XML) are signed.
 */
static void test_payload_signing(void **state)
{
	static const struct {
		const char *endpoint;
		int unsigned_payload, signs;
	} cases[] = {
		{ "http://127.0.0.1:7480", 0, 1 },
		{ "https://127.0.0.1:7480", 0, 1 },
		{ "http://127.0.0.1:7480", 1, 0 },
		{ "https://127.0.0.1:7480", 1, 0 },
	};
	const struct mresp r[] = {
		{ CURLE_OK, 200, NULL, NULL, 1, 0 },
		{ CURLE_OK, 200, NULL, NULL, 1, 0 },
		{ CURLE_OK, 200, NULL, NULL, 0, 0 },
	};
	const char *hello = "x-amz-content-sha256: 2cf24dba5fb0a30e26e83b2ac5b9e29e"
			    "1b161e5c1fa7425e73043362938b9824\n";
	char etag[S3_ETAG_MAX];

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct s3_client *c =
			client_signing(cases[i].endpoint, 1, NULL, cases[i].unsigned_payload);

		assert_int_equal(s3_client_signs_data(c), cases[i].signs);
		script(r, 3);
		assert_int_equal(s3_put_object(c, "a", "hello", 5, NULL, NULL, 0, NULL, 0, etag),
				 0);
		assert_int_equal(s3_mpu_put_part(c, "a", "up-1", 1, "hello", 5, NULL, NULL, etag),
				 0);
		assert_int_equal(s3_put_tag(c, "a", "mgmt-sha256", "00ff"), 0);
		for (int k = 0; k < 2; k++) {
			assert_non_null(strstr(mk.sent_headers[k],
					       "content-md5: XUFAKrxLKna5cZ2REBfFkg==\n"));
			if (cases[i].signs)
				assert_non_null(strstr(mk.sent_headers[k], hello));
			else
				assert_non_null(strstr(mk.sent_headers[k],
						       "x-amz-content-sha256: UNSIGNED-PAYLOAD\n"));
		}
		assert_null(strstr(mk.sent_headers[2], "UNSIGNED-PAYLOAD"));
		s3_client_free(c);
	}
}

static void test_config_errors(void **state)
{
	struct s3_config cfg;
	struct s3_client *c = NULL;
	char eb[S3_ERROR_MAX];

	memset(&cfg, 0, sizeof(cfg));
	cfg.endpoint = "http://127.0.0.1:7480";
	cfg.access_key = "K";
	cfg.secret_key = "S";
	assert_int_equal(s3_client_new_err(&cfg, &c, eb, sizeof(eb)), -EINVAL);
	assert_string_equal(eb, "no bucket");
	cfg.bucket = "b";
	cfg.endpoint = "127.0.0.1:7480";
	assert_int_equal(s3_client_new_err(&cfg, &c, eb, sizeof(eb)), -EINVAL);
	assert_non_null(strstr(eb, "http://"));
	cfg.endpoint = "http://h/x";
	assert_int_equal(s3_client_new_err(&cfg, &c, eb, sizeof(eb)), -EINVAL);
	assert_null(c);
}

static void test_multipart_etag(void **state)
{
	/* md5("a"), md5("b"), md5("c"); the answer from Python's hashlib */
	const unsigned char md5s[3][16] = {
		{ 0x0c, 0xc1, 0x75, 0xb9, 0xc0, 0xf1, 0xb6, 0xa8, 0x31, 0xc3, 0x99, 0xe2, 0x69,
		  0x77, 0x26, 0x61 },
		{ 0x92, 0xeb, 0x5f, 0xfe, 0xe6, 0xae, 0x2f, 0xec, 0x3a, 0xd7, 0x1c, 0x77, 0x75,
		  0x31, 0x57, 0x8f },
		{ 0x4a, 0x8a, 0x08, 0xf0, 0x9d, 0x37, 0xb7, 0x37, 0x95, 0x64, 0x90, 0x38, 0x40,
		  0x8b, 0x5f, 0x33 },
	};
	char etag[S3_ETAG_MAX];

	s3_multipart_etag(md5s, 3, etag);
	assert_string_equal(etag, "4054c6f7787ecb7b323323155b0c0583-3");
}

static void test_xml_and_verdict(void **state)
{
	static const char x[] = "<a><Key>x&lt;&#233;&#x41;</Key><Key>2</Key></a>";
	const char *next = NULL;
	char out[16];
	struct s3_verdict v;

	assert_int_equal(s3_xml_tag(x, x + strlen(x), "Key", out, sizeof(out), &next), 5);
	assert_string_equal(out, "x<\xc3\xa9"
				 "A");
	assert_int_equal(s3_xml_tag(next, x + strlen(x), "Key", out, sizeof(out), NULL), 1);
	assert_int_equal(s3_xml_tag(x, x + strlen(x), "Nope", out, sizeof(out), NULL), -ENOENT);
	assert_int_equal(s3_xml_tag(x, x + strlen(x), "Key", out, 3, NULL), -E2BIG);
	v = s3_http_verdict(429, "");
	assert_true(v.rc == -EAGAIN && v.retry);
	v = s3_http_verdict(503, "SlowDown");
	assert_true(v.rc == -EAGAIN && v.retry);
	v = s3_http_verdict(404, "NoSuchBucket");
	assert_true(v.rc == -ENXIO && !v.retry);
	v = s3_http_verdict(400, "RequestTimeout");
	assert_true(v.rc == -ETIMEDOUT && v.retry);
	v = s3_http_verdict(400, "EntityTooSmall");
	assert_true(v.rc == -EINVAL && !v.retry);
	v = s3_http_verdict(412, "");
	assert_true(v.rc == -EEXIST && !v.retry);
}

/* No object needs more than 10,000 parts, however large (a 200 GiB file must be possible). */
static void test_part_size(void **state)
{
	const uint64_t mib = 1u << 20, gib = mib << 10;
	const uint64_t sizes[] = { 0, 100 * mib, 10 * gib, 100 * gib, 200 * gib, 1024 * gib,
				   5 * 1024 * gib };

	(void)state;
	assert_int_equal(s3_part_size(0, 8 * mib), 8 * mib);
	assert_int_equal(s3_part_size(10 * gib, 8 * mib), 8 * mib);	/* 1,280 parts */
	assert_int_equal(s3_part_size(100 * gib, 8 * mib), 12 * mib);	/* grown */
	assert_int_equal(s3_part_size(1024 * gib, 8 * mib), 117 * mib);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		uint64_t ps = s3_part_size(sizes[i], 8 * mib);
		uint64_t parts = (sizes[i] + ps - 1) / ps;

		assert_true(parts <= 10000);
		assert_true(ps >= 8 * mib && ps <= 5 * gib);
		assert_int_equal(ps % mib, 0);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_put_503_then_200, setup, teardown),
		cmocka_unit_test_setup_teardown(test_403_signature_not_retried, setup, teardown),
		cmocka_unit_test_setup_teardown(test_403_other_codes, setup, teardown),
		cmocka_unit_test(test_connect_refused),
		cmocka_unit_test_setup_teardown(test_transport_errors_retried, setup, teardown),
		cmocka_unit_test_setup_teardown(test_complete_200_error_retried, setup, teardown),
		cmocka_unit_test_setup_teardown(test_complete_200_error_final, setup, teardown),
		cmocka_unit_test_setup_teardown(test_complete_lost_response, setup, teardown),
		cmocka_unit_test_setup_teardown(test_etag_mismatch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_if_none_match, setup, teardown),
		cmocka_unit_test_setup_teardown(test_if_none_match_412_first, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sse_kms_etag_is_not_an_md5, setup, teardown),
		cmocka_unit_test_setup_teardown(test_complete_lost_response_sse_kms, setup, teardown),
		cmocka_unit_test(test_sse_headers_on_new_objects),
		cmocka_unit_test_setup_teardown(test_if_none_match_etag_mismatch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_head_bucket_missing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_abort_gone_is_ok, setup, teardown),
		cmocka_unit_test_setup_teardown(test_create_and_meta, setup, teardown),
		cmocka_unit_test_setup_teardown(test_list_parts_pages, setup, teardown),
		cmocka_unit_test_setup_teardown(test_list_uploads_pages, setup, teardown),
		cmocka_unit_test_setup_teardown(test_list_objects_pages, setup, teardown),
		cmocka_unit_test_setup_teardown(test_head_meta_and_tags, setup, teardown),
		cmocka_unit_test(test_parse_time),
		cmocka_unit_test_setup_teardown(test_get_resumes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel_after_2xx, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel_waits_for_the_answer, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel_cuts_a_body_short, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel_now_cuts_all, setup, teardown),
		cmocka_unit_test_setup_teardown(test_delete_object, setup, teardown),
		cmocka_unit_test(test_retry_budget),
		cmocka_unit_test(test_virtual_hosted_and_token),
		cmocka_unit_test(test_payload_signing),
		cmocka_unit_test(test_config_errors),
		cmocka_unit_test(test_multipart_etag),
		cmocka_unit_test(test_xml_and_verdict),
		cmocka_unit_test(test_part_size),
	};
	int rc;

	if (s3_global_init())
		return 1;
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	s3_global_cleanup();
	return rc;
}
