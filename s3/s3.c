/*
 * s3.c - the S3 client: requests signed by hand (sigv4.c), sent with one
 * reused libcurl easy handle, retried with exponential backoff and full
 * jitter.
 *
 * DESIGN
 *
 * Every public call describes its request in a struct s3_req (method, key,
 * query, extra signed headers, body), all built the same way in a struct
 * s3_op (op_start(), op_query(), op_body(), op_run(), op_done()), and
 * s3_call() runs attempts until one succeeds, a verdict says retrying
 * cannot help, the attempt budget (max_attempts) or the sleep budget
 * (retry_max_seconds) is spent, or the cancel flag rises.  Each attempt resets the easy handle
 * (curl_easy_reset() keeps the connection cache, so keep-alive survives),
 * re-signs with the current time, and sets every header itself: RGW, like
 * AWS, wants x-amz-content-sha256 on every request, which libcurl's
 * CURLOPT_AWS_SIGV4 does not send, so that option is not used.
 *
 * A response is judged in one place: transport errors by curl_verdict(),
 * HTTP errors by s3_http_verdict() (util.c) on the status and the <Code>
 * of the XML error body, and 2xx responses by the call's own check (the
 * ETag of a PUT, the <Error> inside a 200 from CompleteMultipartUpload).
 * The error text is built next to the verdict, in words a user can act on;
 * the secret key and the session token never enter it (and a last scrub in
 * err_finish() makes sure).
 *
 * Bodies live in memory, so an attempt simply sends them again; GET
 * streams to a callback and resumes with Range + If-Match after a cut.
 *
 * Threads: a client is used by one thread at a time; nothing here is
 * shared between clients except libcurl's and OpenSSL's global state.
 */
#include "s3/s3.h"
#include "s3/s3_i.h"
#include "s3/sigv4.h"
#include "common/log.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define S3_BACKOFF_CAP	20.0 /* longest single backoff sleep, seconds */
#define S3_MAX_RESPONSE ((size_t)8 << 20) /* XML responses we are willing to hold */
#define S3_MAX_HEADERS	64
#define S3_KEY_MAX	1024 /* S3's limit on key length */
#define S3_ESC_MAX	256 /* a key quoted in an error message */

/* The secrets, in one place; wiped with OPENSSL_cleanse() before free. */
struct s3_secrets {
	char *secret_key; /* owned */
	char *session_token; /* owned, NULL if none */
};

struct s3_client {
	CURL *easy; /* owned; reused so connections stay alive */
	curl_socket_t sock; /* the socket last opened for it (ack_now), or CURL_SOCKET_BAD */
	char *endpoint; /* owned: "http://127.0.0.1:7480", no trailing '/' */
	char *url_base; /* owned: scheme://authority the requests go to */
	char *host_hdr; /* owned: the Host header, signed */
	char *path_prefix; /* owned: "/bucket" path-style, "" virtual-hosted */
	char *region; /* owned */
	char *bucket; /* owned */
	char *access_key; /* owned; not a secret, shown in errors */
	char *cainfo; /* owned: $AWS_CA_BUNDLE at creation, NULL if unset */
	char *sse; /* owned: x-amz-server-side-encryption of new objects, NULL: none */
	char *sse_kms_key_id; /* owned, NULL: none */
	struct s3_secrets sec;
	int https;
	int insecure;
	int sign_data; /* object data's sha256 signed (!s3_config.unsigned_payload) */
	int max_attempts;
	double retry_max_seconds;
	double retry_base_seconds;
	long connect_timeout;
	long stall_seconds;
	const atomic_int *cancel; /* borrowed */
	void (*progress_cb)(void *arg, uint64_t sent);
	void *progress_arg;
	uint64_t rng; /* xorshift64* state for the jitter */
	long http_status;
	int attempts;		/* requests the last call sent (s3_client_sent_twice) */
	int performed;		/* a request went out before: a connection may be kept */
	int stored;		/* the last s3_put_object's own request stored it */
	char err[S3_ERROR_MAX]; /* what s3_client_error() shows */
	char err_what[S3_ERROR_MAX]; /* what failed, for the current call */
	char err_hint[256]; /* what to do about it, may be "" */
	char curl_err[CURL_ERROR_SIZE];
};

struct s3_resp;

/* One request as a call describes it; every pointer borrowed for the call. */
struct s3_req {
	const char *method; /* "GET", "PUT", "POST", "DELETE", "HEAD" */
	const char *key; /* NULL: the bucket itself */
	const struct sigv4_kv *query;
	size_t nquery;
	const struct sigv4_kv *hdrs; /* extra headers, all signed */
	size_t nhdrs;
	const void *body;
	size_t len;
	char sha256[SIGV4_HEX_LEN]; /* of the body */
	char md5_hex[33]; /* of the body, what check_etag() compares with */
	/* GET only: 2xx bodies go here instead of into the response buffer */
	int (*sink)(const void *data, size_t len, void *arg);
	void *sink_arg;
	/* 2xx check: returns 0 or sets the verdict and c->err_what */
	int (*check)(struct s3_client *c, const struct s3_req *rq, struct s3_resp *rs,
		     struct s3_verdict *v);
	void *check_arg;
	int want_meta; /* keep the x-amz-meta-* headers of the answer (HEAD) */
	int cut_any_time; /* a cancel may cut it at any point (a part: nothing of it lasts) */
};

/* What came back, for the current attempt (and a few fields across attempts). */
struct s3_resp {
	long status;
	char reason[64];
	char etag[S3_ETAG_MAX];
	int etag_opaque; /* the ETag is no MD5: the answer says SSE-KMS or SSE-C */
	uint64_t content_length;
	int have_length;
	int64_t last_modified; /* Last-Modified, unix seconds; 0 if none */
	struct s3_buf meta; /* x-amz-meta-* as "name\0value\0"..., if rq.want_meta */
	struct s3_buf body; /* error and XML bodies; capped */
	char code[64]; /* <Code> of an error body, "" if none */
	char message[256]; /* <Message>, "" if none */
	/* across attempts */
	int failed_before; /* an earlier attempt of this call failed */
	uint64_t delivered; /* GET: bytes given to the sink so far */
	char first_etag[S3_ETAG_MAX]; /* GET: ETag of the first answer, for If-Match */
	uint64_t skip; /* GET: bytes to drop from a 200 that ignored Range */
	int sink_rc; /* the sink's refusal, 0 if none */
};

/* Per attempt: the upload cursor and the pointers callbacks need. */
struct s3_attempt {
	struct s3_client *c;
	const struct s3_req *rq;
	struct s3_resp *rs;
	size_t off; /* bytes of rq->body handed to curl */
	curl_off_t last_progress;
};

/* ------------------------------------------------------------------ */
/* errors */

/* Say what failed; a new message, so any earlier hint goes. */
static void err_what(struct s3_client *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void err_what(struct s3_client *c, const char *fmt, ...)
{
	va_list ap;

	c->err_hint[0] = '\0';
	va_start(ap, fmt);
	vsnprintf(c->err_what, sizeof(c->err_what), fmt, ap);
	va_end(ap);
}

static void err_hint(struct s3_client *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void err_hint(struct s3_client *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->err_hint, sizeof(c->err_hint), fmt, ap);
	va_end(ap);
}

/* Blank out every copy of @secret in @s (defence in depth: it is never put there). */
static void scrub(char *s, const char *secret)
{
	size_t n;
	char *p;

	if (!secret || !*secret)
		return;
	n = strlen(secret);
	while ((p = strstr(s, secret)))
		memset(p, '*', n);
}

/* Compose c->err from what failed, the retry summary and the hint. */
static void err_finish(struct s3_client *c, int attempts, double elapsed, int gave_up)
{
	int n;

	n = snprintf(c->err, sizeof(c->err), "%s", c->err_what);
	if (gave_up && n >= 0 && (size_t)n < sizeof(c->err))
		n += snprintf(c->err + n, sizeof(c->err) - (size_t)n,
			      ": gave up after %d attempts in %.0f s", attempts, elapsed);
	if (c->err_hint[0] && n >= 0 && (size_t)n < sizeof(c->err))
		snprintf(c->err + n, sizeof(c->err) - (size_t)n, ": %s", c->err_hint);
	scrub(c->err, c->sec.secret_key);
	scrub(c->err, c->sec.session_token);
}

/* A failure found without retrying (bad argument, bad answer): its text, and @rc. */
static int fail_now(struct s3_client *c, int rc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int fail_now(struct s3_client *c, int rc, const char *fmt, ...)
{
	va_list ap;

	c->err_hint[0] = '\0';
	va_start(ap, fmt);
	vsnprintf(c->err_what, sizeof(c->err_what), fmt, ap);
	va_end(ap);
	err_finish(c, 0, 0, 0);
	return rc;
}

/* A local failure (bad argument, no memory) with its text. */
static int fail_local(struct s3_client *c, int rc, const char *what)
{
	char eb[128];

	return fail_now(c, rc, "%s: %s", what, mgmtfs_strerror(rc, eb, sizeof(eb)));
}

static const char *esc(const char *s, char *buf, size_t len)
{
	return mgmtfs_escape(s ? s : "", buf, len);
}

/* ------------------------------------------------------------------ */
/* small helpers */

static double now_mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cancelled(const struct s3_client *c)
{
	return c->cancel && atomic_load(c->cancel);
}

/* Uniform in [0, 1). */
static double rand01(struct s3_client *c)
{
	uint64_t x = c->rng;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	c->rng = x;
	return (double)((x * 0x2545F4914F6CDD1DULL) >> 11) / 9007199254740992.0;
}

/* Sleep @secs in short slices; returns -ECANCELED at once when the flag rises. */
static int sleep_cancellable(struct s3_client *c, double secs)
{
	double end = now_mono() + secs;

	for (;;) {
		double left = end - now_mono();
		struct timespec ts;

		if (cancelled(c))
			return -ECANCELED;
		if (left <= 0)
			return 0;
		if (left > 0.02)
			left = 0.02;
		ts.tv_sec = 0;
		ts.tv_nsec = (long)(left * 1e9);
		nanosleep(&ts, NULL);
	}
}

static int dup_str(const char *in, char **out)
{
	*out = strdup(in);
	return *out ? 0 : -ENOMEM;
}

static void free_secret(char *s)
{
	if (s) {
		OPENSSL_cleanse(s, strlen(s));
		free(s);
	}
}

/* Strip quotes (and XML's &quot; already decoded) and blanks around an ETag. */
static void etag_clean(const char *in, size_t len, char *out)
{
	while (len && (*in == '"' || *in == ' ' || *in == '\t')) {
		in++;
		len--;
	}
	while (len && (in[len - 1] == '"' || in[len - 1] == ' ' || in[len - 1] == '\t' ||
		       in[len - 1] == '\r' || in[len - 1] == '\n'))
		len--;
	if (len >= S3_ETAG_MAX)
		len = S3_ETAG_MAX - 1;
	memcpy(out, in, len);
	out[len] = '\0';
}

static int base64_md5(const unsigned char md5[16], char out[32])
{
	return EVP_EncodeBlock((unsigned char *)out, md5, 16) == 24 ? 0 : -EIO;
}

/* ------------------------------------------------------------------ */
/* headers we send: a small owned list of (name, value) */

struct hdrset {
	struct sigv4_kv kv[S3_MAX_HEADERS];
	char *own[2 * S3_MAX_HEADERS]; /* owned copies */
	size_t n, nown;
};

static void hdrset_free(struct hdrset *h)
{
	size_t i;

	for (i = 0; i < h->nown; i++)
		free(h->own[i]);
	h->n = 0;
	h->nown = 0;
}

static int hdrset_add(struct hdrset *h, const char *name, const char *value)
{
	char *n = NULL, *v = NULL;

	if (h->n >= S3_MAX_HEADERS)
		return -E2BIG;
	n = strdup(name);
	v = strdup(value);
	if (!n || !v) {
		free(n);
		free(v);
		return -ENOMEM;
	}
	h->own[h->nown++] = n;
	h->own[h->nown++] = v;
	h->kv[h->n].name = n;
	h->kv[h->n].value = v;
	h->n++;
	return 0;
}

/*
 * x-amz-meta-NAME headers.  Names must be lowercase tokens; values are sent
 * as printable ASCII, everything else ('%' itself, control bytes, bytes
 * >= 0x7f, and spaces at either end, which HTTP would trim) as %XX, so the
 * value reads back exactly after percent-decoding.
 */
static int hdrset_add_meta(struct hdrset *h, const struct s3_meta *meta, size_t nmeta)
{
	static const char digits[] = "0123456789ABCDEF";
	struct s3_buf name, val;
	size_t i, j, vl;
	int rc = 0;

	s3_buf_init(&name, 256);
	s3_buf_init(&val, 8192);
	for (i = 0; i < nmeta && !rc; i++) {
		const char *p;

		if (!meta[i].name || !*meta[i].name || !meta[i].value)
			return -EINVAL;
		for (p = meta[i].name; *p; p++) {
			if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' ||
			      *p == '_'))
				return -EINVAL;
		}
		rc = s3_buf_addf(&name, "x-amz-meta-%s", meta[i].name);
		vl = strlen(meta[i].value);
		for (j = 0; j < vl && !rc; j++) {
			unsigned char ch = (unsigned char)meta[i].value[j];
			int edge = ch == ' ' && (j == 0 || j == vl - 1);

			if (ch < 0x20 || ch >= 0x7f || ch == '%' || edge) {
				char e[3] = { '%', digits[ch >> 4], digits[ch & 15] };

				rc = s3_buf_add(&val, e, 3);
			} else {
				rc = s3_buf_add(&val, &ch, 1);
			}
		}
		if (!rc)
			rc = hdrset_add(h, name.p, val.p ? val.p : "");
		s3_buf_free(&name);
		s3_buf_free(&val);
	}
	return rc;
}

/* ------------------------------------------------------------------ */
/* curl callbacks */

/* Forget the head of the last response: a new attempt, or a new response after a 1xx. */
static void resp_forget(struct s3_resp *rs)
{
	rs->status = 0;
	rs->etag[0] = '\0';
	rs->etag_opaque = 0;
	rs->reason[0] = '\0';
	rs->code[0] = '\0';
	rs->message[0] = '\0';
	rs->have_length = 0;
	rs->content_length = 0;
	rs->last_modified = 0;
	rs->meta.len = 0;
}

/*
 * S3_CANCEL cuts a part short at any point (the upload it belongs to is
 * aborted), any other PUT only while its body is still going out: the
 * server keeps nothing of a body it did not get whole.  Once all is sent
 * (or there is no body to send) the server may have acted, so its answer is
 * waited for and the caller learns what it did: the upload id of a
 * CreateMultipartUpload (else an upload nobody knows of is left on the
 * server), a PUT stored, a complete done.  S3_CANCEL_NOW cuts all.
 */
static int cut_short(const struct s3_attempt *at, curl_off_t sent)
{
	int v = at->c->cancel ? atomic_load(at->c->cancel) : 0;

	if (!v)
		return 0;
	return (v & S3_CANCEL_NOW) || at->rq->cut_any_time ||
	       (strcmp(at->rq->method, "PUT") == 0 && (uint64_t)sent < at->rq->len);
}

static size_t on_read(char *buf, size_t size, size_t nitems, void *arg)
{
	struct s3_attempt *at = arg;
	size_t room = size * nitems, left = at->rq->len - at->off;

	if (cut_short(at, (curl_off_t)at->off))
		return CURL_READFUNC_ABORT;
	if (room > left)
		room = left;
	if (!room)
		return 0;
	memcpy(buf, (const char *)at->rq->body + at->off, room);
	at->off += room;
	return room;
}

static int on_seek(void *arg, curl_off_t offset, int origin)
{
	struct s3_attempt *at = arg;

	if (origin != SEEK_SET || offset < 0 || (uint64_t)offset > at->rq->len)
		return CURL_SEEKFUNC_FAIL;
	at->off = (size_t)offset;
	return CURL_SEEKFUNC_OK;
}

static int on_xfer(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
		   curl_off_t ulnow)
{
	struct s3_attempt *at = arg;
	struct s3_client *c = at->c;

	if (cut_short(at, ulnow))
		return 1; /* CURLE_ABORTED_BY_CALLBACK */
	if (c->progress_cb && at->rq->len && ulnow != at->last_progress) {
		at->last_progress = ulnow;
		c->progress_cb(c->progress_arg, (uint64_t)ulnow);
	}
	return 0;
}

/* The length of a header's value at @v (line end @e) without the trailing blanks and CRLF. */
static size_t header_value_len(const char *v, const char *e)
{
	size_t n = (size_t)(e - v);

	while (n && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' ' || v[n - 1] == '\t'))
		n--;
	return n;
}

/*
 * RGW sends some answers (CreateMultipartUpload's, CompleteMultipartUpload's)
 * as two writes, the head and then the body; the body waits (Nagle) for the
 * ACK of the head, and Linux holds that ACK back 40 ms when the client has
 * nothing to send: 40 ms lost twice per multipart upload.  A quick ACK asked
 * for once the head is in goes out at once, and lets the body come.
 */
static void ack_now(struct s3_client *c)
{
#ifdef TCP_QUICKACK
	int one = 1;

	/* (CURLINFO_ACTIVESOCKET says nothing while the transfer runs) */
	if (c->sock != CURL_SOCKET_BAD)
		(void)setsockopt(c->sock, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
#else
	(void)c;
#endif
}

/* A client's one transfer at a time runs on the socket it opened last. */
static int on_sockopt(void *arg, curl_socket_t s, curlsocktype purpose)
{
	struct s3_client *c = arg;

	if (purpose == CURLSOCKTYPE_IPCXN)
		c->sock = s;
	return CURL_SOCKOPT_OK;
}

static int on_close_socket(void *arg, curl_socket_t s)
{
	struct s3_client *c = arg;

	if (c->sock == s)
		c->sock = CURL_SOCKET_BAD;
	return close(s);
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *arg)
{
	struct s3_attempt *at = arg;
	struct s3_resp *rs = at->rs;
	size_t len = size * nitems, nl;
	const char *colon, *v, *e = buf + len;

	if (len > 5 && memcmp(buf, "HTTP/", 5) == 0) {
		const char *p = memchr(buf, ' ', len);
		long st = 0;

		resp_forget(rs); /* a new response (after a 100 Continue, say) */
		ack_now(at->c);
		while (p && p < e && *p == ' ')
			p++;
		while (p && p < e && *p >= '0' && *p <= '9')
			st = st * 10 + (*p++ - '0');
		rs->status = st;
		rs->skip = st == 200 ? rs->delivered : 0;
		while (p && p < e && *p == ' ')
			p++;
		if (p) {
			nl = (size_t)(e - p);
			while (nl && (p[nl - 1] == '\r' || p[nl - 1] == '\n'))
				nl--;
			if (nl >= sizeof(rs->reason))
				nl = sizeof(rs->reason) - 1;
			memcpy(rs->reason, p, nl);
			rs->reason[nl] = '\0';
		}
		return len;
	}
	colon = memchr(buf, ':', len);
	if (!colon)
		return len;
	nl = (size_t)(colon - buf);
	v = colon + 1;
	while (v < e && (*v == ' ' || *v == '\t'))
		v++;
	if (nl == 4 && strncasecmp(buf, "etag", 4) == 0) {
		etag_clean(v, (size_t)(e - v), rs->etag);
		if (at->rq->sink && rs->status >= 200 && rs->status < 300 && !rs->first_etag[0])
			memcpy(rs->first_etag, rs->etag, sizeof(rs->first_etag));
	} else if (nl == 28 && strncasecmp(buf, "x-amz-server-side-encryption", 28) == 0) {
		/* "aws:kms", "aws:kms:dsse": S3 makes no MD5 its ETag (AES256 does) */
		rs->etag_opaque |= e - v >= 7 && strncasecmp(v, "aws:kms", 7) == 0;
	} else if (nl == 47 &&
		   strncasecmp(buf, "x-amz-server-side-encryption-customer-algorithm", 47) == 0) {
		rs->etag_opaque = 1;	/* SSE-C */
	} else if (nl == 14 && strncasecmp(buf, "content-length", 14) == 0) {
		uint64_t n = 0;

		for (; v < e && *v >= '0' && *v <= '9'; v++)
			n = n * 10 + (uint64_t)(*v - '0');
		rs->content_length = n;
		rs->have_length = 1;
	} else if (nl == 13 && strncasecmp(buf, "last-modified", 13) == 0) {
		char t[64];
		size_t tl = header_value_len(v, e);

		if (tl < sizeof(t)) {
			memcpy(t, v, tl);
			t[tl] = '\0';
			rs->last_modified = s3_parse_time(t);
		}
	} else if (at->rq->want_meta && nl > 11 && strncasecmp(buf, "x-amz-meta-", 11) == 0) {
		size_t vl = header_value_len(v, e);
		char lower[256];

		if (nl - 11 < sizeof(lower)) {
			for (size_t i = 0; i < nl - 11; i++)
				lower[i] = (char)tolower((unsigned char)buf[11 + i]);
			lower[nl - 11] = '\0';
			/* a failed append empties the buffer: such metadata is not kept */
			if (s3_buf_add(&rs->meta, lower, nl - 11 + 1) == 0 &&
			    s3_buf_add(&rs->meta, v, vl) == 0)
				s3_buf_add(&rs->meta, "", 1);
		}
	}
	return len;
}

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *arg)
{
	struct s3_attempt *at = arg;
	const struct s3_req *rq = at->rq;
	struct s3_resp *rs = at->rs;
	size_t n = size * nmemb, m = n;
	const char *p = ptr;

	if (rq->sink && rs->status >= 200 && rs->status < 300) {
		if (rs->skip) {
			size_t drop = rs->skip < m ? (size_t)rs->skip : m;

			p += drop;
			m -= drop;
			rs->skip -= drop;
		}
		if (m) {
			int r = rq->sink(p, m, rq->sink_arg);

			if (r) {
				rs->sink_rc = r < 0 ? r : -ECANCELED;
				return 0;
			}
			rs->delivered += m;
		}
		return n;
	}
	if (s3_buf_add(&rs->body, ptr, n))
		return 0;
	return n;
}

/* ------------------------------------------------------------------ */
/* one attempt */

static int build_path(struct s3_client *c, const struct s3_req *rq, struct s3_buf *b)
{
	int rc;

	rc = s3_buf_adds(b, c->path_prefix);
	if (!rc && rq->key)
		rc = s3_buf_addf(b, "/%s", rq->key);
	if (!rc && !b->len)
		rc = s3_buf_adds(b, "/");
	return rc;
}

static int build_headers(struct s3_client *c, const struct s3_req *rq, const struct s3_resp *rs,
			 const char *path, struct curl_slist **out)
{
	struct sigv4_kv kv[S3_MAX_HEADERS + 6];
	char range[48], quoted[S3_ETAG_MAX + 2];
	struct curl_slist *list = NULL, *nl;
	struct sigv4_request sr;
	char date[SIGV4_DATE_LEN];
	char *auth = NULL;
	struct s3_buf line;
	size_t n = 0, i;
	int rc;

	s3_buf_init(&line, 16384);
	if (rq->nhdrs > S3_MAX_HEADERS)
		return -E2BIG;
	rc = sigv4_amz_date((long long)time(NULL), date);
	if (rc)
		return rc;
	kv[n].name = "host";
	kv[n++].value = c->host_hdr;
	kv[n].name = "x-amz-date";
	kv[n++].value = date;
	kv[n].name = "x-amz-content-sha256";
	kv[n++].value = rq->sha256;
	if (c->sec.session_token) {
		kv[n].name = "x-amz-security-token";
		kv[n++].value = c->sec.session_token;
	}
	for (i = 0; i < rq->nhdrs; i++)
		kv[n++] = rq->hdrs[i];
	/*
	 * A GET cut after some bytes reached the sink resumes where it
	 * stopped, and only if the object is still the one we started on.
	 */
	if (rq->sink && rs->delivered) {
		snprintf(range, sizeof(range), "bytes=%" PRIu64 "-", rs->delivered);
		kv[n].name = "range";
		kv[n++].value = range;
		if (rs->first_etag[0]) {
			snprintf(quoted, sizeof(quoted), "\"%s\"", rs->first_etag);
			kv[n].name = "if-match";
			kv[n++].value = quoted;
		}
	}

	memset(&sr, 0, sizeof(sr));
	sr.method = rq->method;
	sr.path = path;
	sr.query = rq->query;
	sr.nquery = rq->nquery;
	sr.headers = kv;
	sr.nheaders = n;
	sr.payload_hash = rq->sha256;
	sr.amz_date = date;
	sr.region = c->region;
	rc = sigv4_sign(&sr, c->access_key, c->sec.secret_key, &auth);
	if (rc)
		goto out;

	for (i = 0; i <= n + 3 && !rc; i++) {
		if (i < n && kv[i].value[0])
			rc = s3_buf_addf(&line, "%s: %s", kv[i].name, kv[i].value);
		else if (i < n)
			rc = s3_buf_addf(&line, "%s;", kv[i].name); /* curl's empty header */
		else if (i == n)
			rc = s3_buf_addf(&line, "Authorization: %s", auth);
		else if (i == n + 1)
			rc = s3_buf_adds(&line, "Expect:"); /* no 100-continue round trip */
		else if (i == n + 2)
			rc = s3_buf_adds(&line, "Accept:");
		else
			rc = s3_buf_adds(&line, "User-Agent: mgmtfs/" MGMTFS_VERSION);
		if (rc)
			break;
		nl = curl_slist_append(list, line.p);
		OPENSSL_cleanse(line.p, line.len);
		line.len = 0;
		if (!nl) {
			rc = -ENOMEM;
			break;
		}
		list = nl;
	}
out:
	if (line.p)
		OPENSSL_cleanse(line.p, line.cap);
	s3_buf_free(&line);
	free_secret(auth);
	if (rc) {
		for (nl = list; nl; nl = nl->next)
			OPENSSL_cleanse(nl->data, strlen(nl->data));
		curl_slist_free_all(list);
		return rc;
	}
	*out = list;
	return 0;
}

/* Parse <Code> and <Message> of an XML error body. */
static void parse_error_body(struct s3_resp *rs)
{
	const char *a = NULL, *z = NULL;

	rs->code[0] = '\0';
	rs->message[0] = '\0';
	if (!rs->body.p)
		return;
	if (s3_xml_block(rs->body.p, rs->body.p + rs->body.len, "Error", &a, &z))
		return;
	if (s3_xml_tag(a, z, "Code", rs->code, sizeof(rs->code), NULL) < 0)
		rs->code[0] = '\0';
	if (s3_xml_tag(a, z, "Message", rs->message, sizeof(rs->message), NULL) < 0)
		rs->message[0] = '\0';
}

static struct s3_verdict curl_verdict(struct s3_client *c, CURLcode cc, struct s3_resp *rs)
{
	struct s3_verdict v = { -EIO, 1 };
	const char *why = c->curl_err[0] ? c->curl_err : curl_easy_strerror(cc);
	char eb[128];
	long oserr = 0, sent = 0;

	switch (cc) {
	case CURLE_ABORTED_BY_CALLBACK:
		v.rc = -ECANCELED;
		v.retry = 0;
		err_what(c, "cancelled");
		return v;
	case CURLE_WRITE_ERROR:
		v.retry = 0;
		if (rs->sink_rc) {
			v.rc = rs->sink_rc;
			err_what(c, "the reader of the download refused it: %s",
				 mgmtfs_strerror(v.rc, eb, sizeof(eb)));
		} else {
			v.rc = -EBADMSG;
			err_what(c, "the response from %s is too large", c->endpoint);
		}
		return v;
	case CURLE_OUT_OF_MEMORY:
		v.rc = -ENOMEM;
		v.retry = 0;
		err_what(c, "out of memory talking to %s", c->endpoint);
		return v;
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
		v.rc = -EHOSTUNREACH;
		err_what(c, "cannot resolve the host of %s", c->endpoint);
		err_hint(c, "check the endpoint URL and the DNS");
		return v;
	case CURLE_COULDNT_CONNECT:
		v.rc = -EHOSTUNREACH;
		if (curl_easy_getinfo(c->easy, CURLINFO_OS_ERRNO, &oserr) == CURLE_OK && oserr > 0)
			why = mgmtfs_strerror((int)oserr, eb, sizeof(eb));
		else
			why = curl_easy_strerror(cc);
		err_what(c, "cannot connect to %s: %s", c->endpoint, why);
		err_hint(c, "check the endpoint and that the server runs");
		return v;
	case CURLE_OPERATION_TIMEDOUT:
		v.rc = -ETIMEDOUT;
		/*
		 * A server that took the request and then went quiet is most
		 * often full or overloaded (a full Ceph cluster blocks writes
		 * rather than refusing them), not unreachable.
		 */
		if (curl_easy_getinfo(c->easy, CURLINFO_REQUEST_SIZE, &sent) == CURLE_OK &&
		    sent > 0) {
			err_what(c, "%s took the request and then stopped answering (%s)",
				 c->endpoint, why);
			err_hint(c, "check that the server is not out of space or overloaded, "
				    "and the network");
			return v;
		}
		err_what(c, "timed out talking to %s (%s)", c->endpoint, why);
		err_hint(c, "check the network and that the server runs");
		return v;
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_ISSUER_ERROR:
		v.retry = 0;
		err_what(c, "the TLS certificate of %s is not trusted (%s)", c->endpoint, why);
		err_hint(c, "set AWS_CA_BUNDLE to the CA file, or fix the endpoint name");
		return v;
	case CURLE_URL_MALFORMAT:
	case CURLE_UNSUPPORTED_PROTOCOL:
		v.rc = -EINVAL;
		v.retry = 0;
		err_what(c, "bad endpoint URL %s (%s)", c->endpoint, why);
		return v;
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
	case CURLE_SEND_FAIL_REWIND:
	case CURLE_WEIRD_SERVER_REPLY:
		err_what(c, "connection to %s failed: %s", c->endpoint, why);
		err_hint(c, "check the network and the server");
		return v;
	default:
		v.retry = 0;
		err_what(c, "request to %s failed: %s", c->endpoint, why);
		return v;
	}
}

/* Turn a non-2xx response into a verdict and its text. */
static struct s3_verdict http_verdict(struct s3_client *c, const struct s3_req *rq,
				      struct s3_resp *rs)
{
	struct s3_verdict v;
	char k[S3_ESC_MAX], b[S3_ESC_MAX];
	const char *code;
	int head = strcmp(rq->method, "HEAD") == 0;

	parse_error_body(rs);
	/* HEAD has no body: name the usual codes from the status */
	if (!rs->code[0] && rs->status == 404 && !rq->key)
		snprintf(rs->code, sizeof(rs->code), "NoSuchBucket");
	v = s3_http_verdict(rs->status, rs->code);
	code = rs->code[0] ? rs->code : rs->reason;
	esc(rq->key, k, sizeof(k));
	esc(c->bucket, b, sizeof(b));

	if (strcmp(rs->code, "NoSuchBucket") == 0) {
		err_what(c, "NoSuchBucket: bucket '%s' does not exist at %s", b, c->endpoint);
		err_hint(c, "create it or fix the bucket name");
	} else if (strcmp(rs->code, "SignatureDoesNotMatch") == 0) {
		err_what(c, "403 SignatureDoesNotMatch: check the secret key for access key %s",
			 c->access_key);
	} else if (strcmp(rs->code, "InvalidAccessKeyId") == 0) {
		err_what(c, "403 InvalidAccessKeyId: the access key %s is not known to %s",
			 c->access_key, c->endpoint);
	} else if (strcmp(rs->code, "AccessDenied") == 0) {
		err_what(c, "403 AccessDenied: access key %s may not %s %s%s%sin bucket '%s'",
			 c->access_key, rq->method, rq->key ? "'" : "", rq->key ? k : "",
			 rq->key ? "' " : "", b);
		err_hint(c, "check the permissions of the key and the bucket policy");
	} else if (strcmp(rs->code, "RequestTimeTooSkewed") == 0) {
		err_what(c, "403 RequestTimeTooSkewed: the clock of this machine is too far "
			    "from the server's");
		err_hint(c, "fix the system time (NTP)");
	} else if (strcmp(rs->code, "QuotaExceeded") == 0) {
		err_what(c, "%ld QuotaExceeded: the quota at %s is used up", rs->status,
			 c->endpoint);
		err_hint(c, "free space in the bucket or raise the quota");
	} else if (strcmp(rs->code, "NoSuchUpload") == 0) {
		err_what(c,
			 "404 NoSuchUpload: the multipart upload of '%s' no longer exists "
			 "(completed or aborted)",
			 k);
	} else if (rs->status == 403 && head) {
		err_what(c, "403 Forbidden: check the access key and secret key (access key %s)",
			 c->access_key);
	} else if (rs->status == 404 && rq->key) {
		err_what(c, "404 %s: '%s' does not exist in bucket '%s'",
			 rs->code[0] ? rs->code : "Not Found", k, b);
	} else if (rs->status == 412) {
		err_what(c, "412 PreconditionFailed: '%s' already exists in bucket '%s'", k, b);
	} else if (strcmp(rs->code, "EntityTooSmall") == 0) {
		err_what(c, "400 EntityTooSmall: a part before the last is smaller than the "
			    "server's minimum part size");
	} else if (v.retry || !rs->message[0]) {
		err_what(c, "%ld %s", rs->status, code[0] ? code : "error");
	} else {
		err_what(c, "%ld %s: %s", rs->status, code[0] ? code : "error", rs->message);
	}
	return v;
}

static struct s3_verdict attempt_once(struct s3_client *c, const struct s3_req *rq,
				      struct s3_resp *rs)
{
	struct s3_verdict v = { 0, 0 };
	struct s3_attempt at = { c, rq, rs, 0, -1 };
	struct curl_slist *hdrs = NULL;
	struct s3_buf path, url;
	char *query = NULL;
	CURL *e = c->easy;
	CURLcode cc;
	long conns = 0;
	int rc;

	s3_buf_init(&path, 4 * S3_KEY_MAX);
	s3_buf_init(&url, 64 * S3_KEY_MAX);
	resp_forget(rs);
	s3_buf_free(&rs->body);
	c->curl_err[0] = '\0';

	rc = build_path(c, rq, &path);
	if (!rc)
		rc = sigv4_canonical_query(rq->query, rq->nquery, &query);
	if (!rc)
		rc = s3_buf_adds(&url, c->url_base);
	if (!rc) {
		char *enc = NULL;

		rc = sigv4_uri_encode(path.p, 1, &enc);
		if (!rc)
			rc = s3_buf_adds(&url, enc);
		free(enc);
	}
	if (!rc && query[0])
		rc = s3_buf_addf(&url, "?%s", query);
	if (!rc)
		rc = build_headers(c, rq, rs, path.p, &hdrs);
	if (rc) {
		v.rc = rc;
		fail_local(c, rc, "cannot build the request");
		goto out;
	}

	curl_easy_reset(e); /* keeps the connection cache */
	curl_easy_setopt(e, CURLOPT_URL, url.p);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
	curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
	curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L); /* the signed path, byte for byte */
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_SOCKOPTFUNCTION, on_sockopt);
	curl_easy_setopt(e, CURLOPT_SOCKOPTDATA, c);
	curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
	curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, c);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, c->connect_timeout);
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, c->stall_seconds);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->curl_err);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, &at);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, &at);
	curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_xfer);
	curl_easy_setopt(e, CURLOPT_XFERINFODATA, &at);
	if (c->https && c->cainfo)
		curl_easy_setopt(e, CURLOPT_CAINFO, c->cainfo);
	if (c->insecure) {
		curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
		curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
	}
	if (strcmp(rq->method, "HEAD") == 0) {
		curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
	} else if (strcmp(rq->method, "PUT") == 0) {
		curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)rq->len);
		curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
		curl_easy_setopt(e, CURLOPT_READDATA, &at);
		curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, on_seek);
		curl_easy_setopt(e, CURLOPT_SEEKDATA, &at);
	} else if (strcmp(rq->method, "POST") == 0) {
		curl_easy_setopt(e, CURLOPT_POST, 1L);
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->len);
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, rq->len ? rq->body : "");
	} else if (strcmp(rq->method, "GET") != 0) {
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, rq->method);
	}

	cc = curl_easy_perform(e);
	c->http_status = rs->status;
	/*
	 * libcurl sends a request again, unasked, on a new connection when the
	 * kept one died before any answer came (and so after a lost answer)
	 */
	if (curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &conns) == CURLE_OK && conns > 0 &&
	    c->performed)
		c->attempts++;
	c->performed = 1;
	/*
	 * A whole 2xx is judged even if the flag rose meanwhile: the server
	 * has acted, and calling that cancelled would have the caller do it
	 * again (a PUT with If-None-Match: * would then meet its own object).
	 */
	if (cc == CURLE_ABORTED_BY_CALLBACK ||
	    (cancelled(c) && !(cc == CURLE_OK && rs->status >= 200 && rs->status < 300))) {
		v.rc = -ECANCELED;
		err_what(c, "cancelled");
	} else if (cc != CURLE_OK) {
		v = curl_verdict(c, cc, rs);
		c->http_status = 0;
	} else if (rs->status >= 200 && rs->status < 300) {
		if (rq->check && rq->check(c, rq, rs, &v) == 0)
			v.rc = 0;
	} else {
		v = http_verdict(c, rq, rs);
	}
	if (v.rc) {
		char k[S3_ESC_MAX];

		mgmtfs_debug("s3: %s '%s/%s' -> %ld (curl %d): %s", rq->method, c->bucket,
			     esc(rq->key, k, sizeof(k)), rs->status, (int)cc, c->err_what);
	}

out:
	/* curl keeps no copy of the list; wipe the Authorization line before free */
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL);
	for (struct curl_slist *l = hdrs; l; l = l->next)
		OPENSSL_cleanse(l->data, strlen(l->data));
	curl_slist_free_all(hdrs);
	free(query);
	s3_buf_free(&path);
	s3_buf_free(&url);
	return v;
}

/*
 * Run @rq until it succeeds or retrying stops making sense.  Backoff is
 * "full jitter": sleep uniform(0, min(cap, base * 2^(attempt-1))), all the
 * sleeps of one call together bounded by retry_max_seconds.
 */
static int s3_call(struct s3_client *c, const struct s3_req *rq, struct s3_resp *rs)
{
	double start = now_mono(), slept = 0;
	struct s3_verdict v = { 0, 0 };
	int attempt, gave_up = 0;

	c->err[0] = '\0';
	c->err_what[0] = '\0';
	c->err_hint[0] = '\0';
	for (attempt = 1;; attempt++) {
		double cap, d;
		char k[S3_ESC_MAX];

		c->attempts = attempt;
		if (cancelled(c)) {
			v.rc = -ECANCELED;
			err_what(c, "cancelled");
			break;
		}
		v = attempt_once(c, rq, rs);
		if (!v.rc || !v.retry)
			break;
		rs->failed_before = 1;
		if (attempt >= c->max_attempts) {
			gave_up = 1;
			break;
		}
		cap = c->retry_base_seconds *
		      (double)(1ULL << (attempt - 1 < 30 ? attempt - 1 : 30));
		if (cap > S3_BACKOFF_CAP)
			cap = S3_BACKOFF_CAP;
		d = rand01(c) * cap;
		if (slept >= c->retry_max_seconds) {
			gave_up = 1;
			break;
		}
		if (slept + d > c->retry_max_seconds)
			d = c->retry_max_seconds - slept;
		mgmtfs_info("s3: %s '%s/%s': %s; attempt %d of %d, next in %.2f s", rq->method,
			    c->bucket, esc(rq->key, k, sizeof(k)), c->err_what, attempt,
			    c->max_attempts, d);
		if (sleep_cancellable(c, d)) {
			v.rc = -ECANCELED;
			err_what(c, "cancelled");
			break;
		}
		slept += d;
	}
	if (!v.rc) {
		c->err[0] = '\0';
		return 0;
	}
	err_finish(c, attempt, now_mono() - start, gave_up);
	return v.rc;
}

/* ------------------------------------------------------------------ */
/* one call: what every public request shares */

/* A call's request, its query, its extra headers and its response. */
struct s3_op {
	struct s3_req rq;
	struct s3_resp rs; /* kept across the attempts and pages of the call */
	struct sigv4_kv q[4]; /* rq.query: ListMultipartUploads sends the most */
	struct hdrset hs; /* the extra headers, rq.hdrs once run */
};

/* A bodiless @method on @key (NULL: the bucket); op_done() releases @op. */
static void op_init(struct s3_op *op, const char *method, const char *key)
{
	memset(op, 0, sizeof(*op));
	op->rq.method = method;
	op->rq.key = key;
	op->rq.query = op->q;
	memcpy(op->rq.sha256, SIGV4_EMPTY_SHA256, SIGV4_HEX_LEN);
	s3_buf_init(&op->rs.body, S3_MAX_RESPONSE);
	s3_buf_init(&op->rs.meta, 8192);
}

/* Add a query parameter (both borrowed); @value NULL for a bare name ("?uploads"). */
static void op_query(struct s3_op *op, const char *name, const char *value)
{
	op->q[op->rq.nquery].name = name;
	op->q[op->rq.nquery++].value = value;
}

/* As op_init() on object @key, checked: 0, or -EINVAL with nothing to release. */
static int op_start(struct s3_client *c, struct s3_op *op, const char *method, const char *key)
{
	op_init(op, method, key);
	if (!key || !*key || strlen(key) > S3_KEY_MAX)
		return fail_local(c, -EINVAL, "bad object key (empty or over 1024 bytes)");
	return 0;
}

/* As op_start() within multipart upload @upload_id, checked too: "?uploadId=". */
static int op_start_upload(struct s3_client *c, struct s3_op *op, const char *method,
			   const char *key, const char *upload_id)
{
	int rc = op_start(c, op, method, key);

	if (!rc && (!upload_id || !*upload_id || strlen(upload_id) >= S3_UPLOAD_ID_MAX))
		rc = fail_local(c, -EINVAL, "bad upload id");
	if (!rc)
		op_query(op, "uploadId", upload_id);
	return rc;
}

static int op_header(struct s3_client *c, struct s3_op *op, const char *name, const char *value)
{
	int rc = hdrset_add(&op->hs, name, value);

	return rc ? fail_local(c, rc, "cannot build the request") : 0;
}

static const char unsigned_payload[] = "UNSIGNED-PAYLOAD";

/*
 * Send @body: the caller's hashes (either may be NULL) or computed ones, and
 * Content-MD5.  @sha256_hex may be unsigned_payload (object data when the
 * client does not sign it: data_hash()).
 */
static int op_body(struct s3_client *c, struct s3_op *op, const void *body, size_t len,
		   const unsigned char *md5, const char *sha256_hex)
{
	unsigned char m[16];
	char b64[32];
	int rc;

	op->rq.body = body;
	op->rq.len = len;
	if (!md5) {
		rc = sigv4_md5(body, len, m);
		if (rc)
			return fail_local(c, rc, "cannot hash the body");
		md5 = m;
	}
	if (sha256_hex == unsigned_payload) {
		memcpy(op->rq.sha256, unsigned_payload, sizeof(unsigned_payload));
	} else if (sha256_hex) {
		if (strlen(sha256_hex) != SIGV4_HEX_LEN - 1)
			return fail_local(c, -EINVAL, "bad SHA-256 of the body");
		memcpy(op->rq.sha256, sha256_hex, SIGV4_HEX_LEN);
	} else {
		rc = sigv4_sha256_hex(body, len, op->rq.sha256);
		if (rc)
			return fail_local(c, rc, "cannot hash the body");
	}
	sigv4_hex(md5, 16, op->rq.md5_hex);
	rc = base64_md5(md5, b64);
	if (rc)
		return fail_local(c, rc, "cannot build the request");
	return op_header(c, op, "content-md5", b64);
}

/* The payload hash of object data: the caller's (or computed), or none when not signed. */
static const char *data_hash(const struct s3_client *c, const char *sha256_hex)
{
	return c->sign_data ? sha256_hex : unsigned_payload;
}

/* The headers of a new object: its type, If-None-Match: * when asked, x-amz-meta-*. */
static int op_object_headers(struct s3_client *c, struct s3_op *op, int if_none_match,
			     const struct s3_meta *meta, size_t nmeta)
{
	int rc;

	rc = hdrset_add(&op->hs, "content-type", "application/octet-stream");
	if (!rc && if_none_match)
		rc = hdrset_add(&op->hs, "if-none-match", "*");
	/* a new object (PUT, CreateMultipartUpload) is encrypted as asked; parts follow */
	if (!rc && c->sse)
		rc = hdrset_add(&op->hs, "x-amz-server-side-encryption", c->sse);
	if (!rc && c->sse_kms_key_id)
		rc = hdrset_add(&op->hs, "x-amz-server-side-encryption-aws-kms-key-id",
				c->sse_kms_key_id);
	if (!rc)
		rc = hdrset_add_meta(&op->hs, meta, nmeta);
	return rc ? fail_local(c, rc, "bad metadata") : 0;
}

static int op_run(struct s3_client *c, struct s3_op *op)
{
	op->rq.hdrs = op->hs.kv;
	op->rq.nhdrs = op->hs.n;
	return s3_call(c, &op->rq, &op->rs);
}

/* Release @op; if @rc is 0, copy the ETag of its answer to @etag_out (may be NULL). */
static int op_done(struct s3_op *op, int rc, char *etag_out)
{
	if (!rc && etag_out)
		memcpy(etag_out, op->rs.etag, S3_ETAG_MAX);
	hdrset_free(&op->hs);
	s3_buf_free(&op->rs.body);
	s3_buf_free(&op->rs.meta);
	return rc;
}

/*
 * A lost response (see put_taken()): the call failed, but an earlier
 * attempt of it may have done its work.  If @key is there, @size bytes with
 * ETag @want (or, where ETags are not MD5s, our @meta: s3_object_is), it
 * did: 1, its ETag in @etag_out and no error.  Otherwise 0 and c->err as
 * the call left it.
 */
static int lost_response_done(struct s3_client *c, const char *key, uint64_t size,
			      const char *want, const struct s3_meta *meta, size_t nmeta,
			      char *etag_out)
{
	struct s3_object_info oi;
	char saved[S3_ERROR_MAX];

	memcpy(saved, c->err, sizeof(saved));
	if (s3_object_is(c, key, size, want, meta, nmeta, 0, &oi) == 1) {
		memcpy(etag_out, oi.etag, S3_ETAG_MAX);
		c->err[0] = '\0';
		return 1;
	}
	memcpy(c->err, saved, sizeof(c->err));
	return 0;
}

/* ------------------------------------------------------------------ */
/* client */

int s3_global_init(void)
{
	return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -EIO;
}

void s3_global_cleanup(void)
{
	curl_global_cleanup();
}

static int is_ip_or_localhost(const char *host)
{
	unsigned char a[16];

	return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1 ||
	       strcasecmp(host, "localhost") == 0;
}

static int set_cfg_err(char *errbuf, size_t errlen, const char *msg)
{
	if (errbuf && errlen)
		snprintf(errbuf, errlen, "%s", msg);
	return -EINVAL;
}

/* Split the endpoint; fill url_base, host_hdr, path_prefix of @c. */
static int parse_endpoint(struct s3_client *c, int path_style, char *errbuf, size_t errlen)
{
	const char *auth, *slash;
	char host[256];
	struct s3_buf b;
	size_t alen, hlen;
	int rc;

	s3_buf_init(&b, 4096);
	if (strncasecmp(c->endpoint, "http://", 7) == 0) {
		auth = c->endpoint + 7;
	} else if (strncasecmp(c->endpoint, "https://", 8) == 0) {
		auth = c->endpoint + 8;
		c->https = 1;
	} else {
		return set_cfg_err(errbuf, errlen,
				   "bad endpoint: it must start with http:// or https://");
	}
	slash = strchr(auth, '/');
	alen = slash ? (size_t)(slash - auth) : strlen(auth);
	if (slash && slash[1])
		return set_cfg_err(errbuf, errlen, "bad endpoint: it must not have a path");
	if (!alen || memchr(auth, '@', alen) || memchr(auth, '?', alen) || memchr(auth, '#', alen))
		return set_cfg_err(errbuf, errlen, "bad endpoint: no host name");
	if (auth[0] == '[') {
		const char *rb = memchr(auth, ']', alen);

		if (!rb)
			return set_cfg_err(errbuf, errlen,
					   "bad endpoint: unclosed '[' in the host");
		hlen = (size_t)(rb - auth - 1);
		if (hlen >= sizeof(host))
			return set_cfg_err(errbuf, errlen, "bad endpoint: host name too long");
		memcpy(host, auth + 1, hlen);
	} else {
		const char *colon = memchr(auth, ':', alen);

		hlen = colon ? (size_t)(colon - auth) : alen;
		if (hlen >= sizeof(host))
			return set_cfg_err(errbuf, errlen, "bad endpoint: host name too long");
		memcpy(host, auth, hlen);
	}
	host[hlen] = '\0';
	if (!hlen)
		return set_cfg_err(errbuf, errlen, "bad endpoint: no host name");
	if (path_style < 0)
		path_style = is_ip_or_localhost(host);

	if (path_style) {
		rc = s3_buf_add(&b, c->endpoint, (size_t)(auth - c->endpoint) + alen);
		if (!rc)
			rc = dup_str(b.p, &c->url_base);
		s3_buf_free(&b);
		if (!rc)
			rc = s3_buf_add(&b, auth, alen);
		if (!rc)
			rc = dup_str(b.p, &c->host_hdr);
		s3_buf_free(&b);
		if (!rc)
			rc = s3_buf_addf(&b, "/%s", c->bucket);
	} else {
		rc = s3_buf_addf(&b, "%s://%s.%.*s", c->https ? "https" : "http", c->bucket,
				 (int)alen, auth);
		if (!rc)
			rc = dup_str(b.p, &c->url_base);
		s3_buf_free(&b);
		if (!rc)
			rc = s3_buf_addf(&b, "%s.%.*s", c->bucket, (int)alen, auth);
		if (!rc)
			rc = dup_str(b.p, &c->host_hdr);
		s3_buf_free(&b);
		if (!rc)
			rc = s3_buf_add(&b, "", 0);
	}
	if (!rc)
		rc = dup_str(b.p, &c->path_prefix);
	s3_buf_free(&b);
	return rc;
}

int s3_client_new_err(const struct s3_config *cfg, struct s3_client **out, char *errbuf,
		      size_t errlen)
{
	struct s3_client *c = NULL;
	const char *ca;
	size_t n;
	int rc;

	*out = NULL;
	if (errbuf && errlen)
		errbuf[0] = '\0';
	if (!cfg->endpoint || !*cfg->endpoint)
		return set_cfg_err(errbuf, errlen, "no S3 endpoint");
	if (!cfg->bucket || !*cfg->bucket)
		return set_cfg_err(errbuf, errlen, "no bucket");
	if (strchr(cfg->bucket, '/') || strlen(cfg->bucket) > 255)
		return set_cfg_err(errbuf, errlen, "bad bucket name: no '/' allowed");
	if (!cfg->access_key || !*cfg->access_key)
		return set_cfg_err(errbuf, errlen, "no access key (AWS_ACCESS_KEY_ID)");
	if (!cfg->secret_key || !*cfg->secret_key)
		return set_cfg_err(errbuf, errlen, "no secret key (AWS_SECRET_ACCESS_KEY)");

	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	rc = dup_str(cfg->endpoint, &c->endpoint);
	if (!rc) {
		n = strlen(c->endpoint);
		while (n && c->endpoint[n - 1] == '/')
			c->endpoint[--n] = '\0';
		rc = dup_str(cfg->region && *cfg->region ? cfg->region : "us-east-1", &c->region);
	}
	if (!rc)
		rc = dup_str(cfg->bucket, &c->bucket);
	if (!rc)
		rc = dup_str(cfg->access_key, &c->access_key);
	if (!rc)
		rc = dup_str(cfg->secret_key, &c->sec.secret_key);
	if (!rc && cfg->session_token && *cfg->session_token)
		rc = dup_str(cfg->session_token, &c->sec.session_token);
	if (!rc && cfg->sse && *cfg->sse)
		rc = dup_str(cfg->sse, &c->sse);
	if (!rc && cfg->sse_kms_key_id && *cfg->sse_kms_key_id)
		rc = dup_str(cfg->sse_kms_key_id, &c->sse_kms_key_id);
	ca = getenv("AWS_CA_BUNDLE");
	if (!rc && ca && *ca)
		rc = dup_str(ca, &c->cainfo);
	if (rc)
		goto fail;
	rc = parse_endpoint(c, cfg->path_style, errbuf, errlen);
	if (rc)
		goto fail;
	c->insecure = cfg->insecure;
	c->sign_data = !cfg->unsigned_payload;
	c->max_attempts = cfg->max_attempts > 0 ? cfg->max_attempts : 8;
	c->retry_max_seconds = cfg->retry_max_seconds > 0 ? cfg->retry_max_seconds : 120;
	c->retry_base_seconds = cfg->retry_base_seconds > 0 ? cfg->retry_base_seconds : 0.2;
	c->connect_timeout = cfg->connect_timeout > 0 ? cfg->connect_timeout : 10;
	c->stall_seconds = cfg->stall_seconds > 0 ? cfg->stall_seconds : 30;
	if (RAND_bytes((unsigned char *)&c->rng, sizeof(c->rng)) != 1 || !c->rng)
		c->rng = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)c ^ 0x9E3779B97F4A7C15ULL;
	c->sock = CURL_SOCKET_BAD;
	c->easy = curl_easy_init();
	if (!c->easy) {
		rc = -ENOMEM;
		goto fail;
	}
	*out = c;
	return 0;

fail:
	s3_client_free(c);
	return rc;
}

int s3_client_new(const struct s3_config *cfg, struct s3_client **out)
{
	char eb[S3_ERROR_MAX];
	int rc;

	rc = s3_client_new_err(cfg, out, eb, sizeof(eb));
	if (rc && eb[0])
		mgmtfs_err("s3: %s", eb);
	return rc;
}

void s3_client_free(struct s3_client *c)
{
	if (!c)
		return;
	if (c->easy)
		curl_easy_cleanup(c->easy);
	free_secret(c->sec.secret_key);
	free_secret(c->sec.session_token);
	free(c->endpoint);
	free(c->url_base);
	free(c->host_hdr);
	free(c->path_prefix);
	free(c->region);
	free(c->bucket);
	free(c->access_key);
	free(c->sse);
	free(c->sse_kms_key_id);
	free(c->cainfo);
	OPENSSL_cleanse(c, sizeof(*c));
	free(c);
}

const char *s3_client_error(const struct s3_client *c)
{
	return c->err;
}

long s3_client_http_status(const struct s3_client *c)
{
	return c->http_status;
}

int s3_client_put_stored(const struct s3_client *c)
{
	return c->stored;
}

int s3_client_sent_twice(const struct s3_client *c)
{
	return c->attempts > 1;
}

int s3_client_signs_data(const struct s3_client *c)
{
	return c->sign_data;
}

void s3_client_set_cancel(struct s3_client *c, const atomic_int *flag)
{
	c->cancel = flag;
}

void s3_client_set_progress(struct s3_client *c, void (*cb)(void *arg, uint64_t sent), void *arg)
{
	c->progress_cb = cb;
	c->progress_arg = arg;
}

/* ------------------------------------------------------------------ */
/* HEAD */

int s3_head_bucket(struct s3_client *c)
{
	struct s3_op op;
	int rc;

	op_init(&op, "HEAD", NULL);
	rc = op_run(c, &op);
	return op_done(&op, rc, NULL);
}

int s3_head_object(struct s3_client *c, const char *key, struct s3_object_info *out)
{
	return s3_head_object_meta(c, key, out, NULL, NULL);
}

/* Undo hdrset_add_meta()'s percent-encoding, in place. */
static void meta_decode(char *s)
{
	char *w = s;

	for (; *s; s++) {
		if (s[0] == '%' && isxdigit((unsigned char)s[1]) && isxdigit((unsigned char)s[2])) {
			char h[3] = { s[1], s[2], '\0' };

			*w++ = (char)strtol(h, NULL, 16);
			s += 2;
		} else {
			*w++ = *s;
		}
	}
	*w = '\0';
}

int s3_head_object_meta(struct s3_client *c, const char *key, struct s3_object_info *out,
			int (*cb)(const char *name, const char *value, void *arg), void *arg)
{
	struct s3_op op;
	int rc;

	rc = op_start(c, &op, "HEAD", key);
	if (rc)
		return rc;
	op.rq.want_meta = cb != NULL;
	rc = op_run(c, &op);
	if (!rc) {
		out->size = op.rs.content_length;
		out->mtime = op.rs.last_modified;
		out->etag_opaque = op.rs.etag_opaque;
	}
	for (size_t at = 0; !rc && cb && op.rs.meta.p && at < op.rs.meta.len;) {
		char *name = op.rs.meta.p + at, *value = name + strlen(name) + 1;

		at = (size_t)(value - op.rs.meta.p) + strlen(value) + 1;
		meta_decode(value);
		rc = cb(name, value, arg);
	}
	return op_done(&op, rc, out->etag);
}

/* ------------------------------------------------------------------ */
/* PUT and parts */

static int check_etag(struct s3_client *c, const struct s3_req *rq, struct s3_resp *rs,
		      struct s3_verdict *v)
{
	char k[S3_ESC_MAX], e[S3_ESC_MAX];

	/* SSE-KMS, SSE-C: the server checked Content-MD5, but its ETag is no MD5 */
	if (rs->etag_opaque || strcasecmp(rs->etag, rq->md5_hex) == 0)
		return 0;
	v->rc = -EBADMSG;
	v->retry = 1;
	err_what(c, "ETag mismatch for '%s': the server has \"%s\", the data sent has MD5 %s",
		 esc(rq->key, k, sizeof(k)), esc(rs->etag, e, sizeof(e)), rq->md5_hex);
	err_hint(c, "the data was damaged on the way");
	return -1;
}

/*
 * check_etag() for a PUT with If-None-Match: *, where a mismatch is final:
 * the object is stored, so a retry could only meet it (412), find it is not
 * ours by its ETag and have the caller store the same data under a new
 * name, again and again.  A server whose ETags are not MD5s (SSE-KMS,
 * SSE-C) gives this on every PUT.
 */
static int check_etag_new(struct s3_client *c, const struct s3_req *rq, struct s3_resp *rs,
			  struct s3_verdict *v)
{
	char k[S3_ESC_MAX];

	if (check_etag(c, rq, rs, v) == 0)
		return 0;
	v->retry = 0;
	err_hint(c,
		 "the data was damaged on the way, or the bucket encrypts objects with "
		 "SSE-KMS or SSE-C (their ETags are not MD5s); the object '%s' was left there",
		 esc(rq->key, k, sizeof(k)));
	return -1;
}

struct meta_match {
	const struct s3_meta *meta;
	size_t nmeta, same, ident;	/* of @meta, those there; of those, the ident ones */
};

static int meta_match_cb(const char *name, const char *value, void *arg)
{
	struct meta_match *mm = arg;

	for (size_t i = 0; i < mm->nmeta; i++)
		if (!strcmp(mm->meta[i].name, name) && !strcmp(mm->meta[i].value, value)) {
			mm->same++;
			mm->ident += mm->meta[i].ident != 0;
		}
	return 0;
}

int s3_object_is(struct s3_client *c, const char *key, uint64_t size, const char *etag,
		 const struct s3_meta *meta, size_t nmeta, int all_meta,
		 struct s3_object_info *info)
{
	struct meta_match mm = { meta, nmeta, 0, 0 };
	size_t ident = 0;
	int rc = s3_head_object_meta(c, key, info, meta_match_cb, &mm);

	if (rc)
		return rc;
	if (info->size != size)
		return 0;
	if (info->etag_opaque) {
		for (size_t i = 0; i < nmeta; i++)
			ident += meta[i].ident != 0;
		return ident && mm.ident == ident;
	}
	return etag[0] && !strcasecmp(info->etag, etag) && (!all_meta || mm.same == nmeta);
}

/*
 * A 412 to a PUT with If-None-Match: *: the key is taken, perhaps by this
 * very data.  The server may have stored a PUT of ours whose answer never
 * came: an earlier attempt of this call (a reset after the body went out),
 * or an earlier call whose process was killed, unmounted or gave up while
 * it waited.  Nothing here remembers those, so every 412 is checked with a
 * HEAD: an object with our MD5 as its ETag and our size (s3_object_is) is
 * this upload (or the same bytes), and the PUT succeeded, its ETag in
 * @etag_out.  Anything else there is not ours: -EEXIST, with the 412's
 * text, and the caller takes another name.  @copy (a second copy asked
 * for): the same bytes are the first copy unless the object also carries
 * all of our @meta.  A HEAD that cannot tell returns its own error, so a
 * 412 is never taken for a taken key unseen.
 */
static int put_taken(struct s3_client *c, const struct s3_req *rq, const struct s3_meta *meta,
		     size_t nmeta, int copy, char *etag_out)
{
	struct s3_object_info oi;
	char saved[S3_ERROR_MAX], k[S3_ESC_MAX];
	int rc;

	memcpy(saved, c->err, sizeof(saved));
	rc = s3_object_is(c, rq->key, rq->len, rq->md5_hex, meta, nmeta, copy, &oi);
	if (rc == 1) {
		mgmtfs_info("s3: PUT '%s': 412, but the object there has our %s and size: "
			    "it is this upload, done",
			    esc(rq->key, k, sizeof(k)), oi.etag_opaque ? "metadata" : "MD5");
		memcpy(etag_out, oi.etag, S3_ETAG_MAX);
		return 0;
	}
	if (rc == 0 || rc == -ENOENT) {
		/* ENOENT: deleted since the 412; still not ours */
		memcpy(c->err, saved, sizeof(c->err));
		c->http_status = 412;
		return -EEXIST;
	}
	return rc;
}

int s3_put_object(struct s3_client *c, const char *key, const void *body, size_t len,
		  const unsigned char *md5, const char *sha256_hex, int if_none_match,
		  const struct s3_meta *meta, size_t nmeta, char *etag_out)
{
	struct s3_op op;
	int rc;

	c->stored = 0;
	rc = op_start(c, &op, "PUT", key);
	if (rc)
		return rc;
	op.rq.check = if_none_match ? check_etag_new : check_etag;
	rc = op_body(c, &op, body, len, md5, data_hash(c, sha256_hex));
	if (!rc)
		rc = op_object_headers(c, &op, if_none_match, meta, nmeta);
	if (!rc)
		rc = op_run(c, &op);
	c->stored = rc == 0;

	if (rc == -EEXIST && if_none_match)
		rc = put_taken(c, &op.rq, meta, nmeta, if_none_match == S3_PUT_NEW_COPY,
			       op.rs.etag);
	return op_done(&op, rc, etag_out);
}

/* ------------------------------------------------------------------ */
/* multipart */

static int check_create(struct s3_client *c, const struct s3_req *rq, struct s3_resp *rs,
			struct s3_verdict *v)
{
	char *id = rq->check_arg;
	int n = -ENOENT;

	if (rs->body.p)
		n = s3_xml_tag(rs->body.p, rs->body.p + rs->body.len, "UploadId", id,
			       S3_UPLOAD_ID_MAX, NULL);
	if (n > 0)
		return 0;
	v->rc = -EBADMSG;
	v->retry = 1;
	err_what(c, "CreateMultipartUpload at %s answered without an UploadId", c->endpoint);
	return -1;
}

int s3_mpu_create(struct s3_client *c, const char *key, const struct s3_meta *meta, size_t nmeta,
		  char *upload_id_out)
{
	char id[S3_UPLOAD_ID_MAX];
	struct s3_op op;
	int rc;

	rc = op_start(c, &op, "POST", key);
	if (rc)
		return rc;
	op_query(&op, "uploads", NULL);
	op.rq.check = check_create;
	op.rq.check_arg = id;
	rc = op_object_headers(c, &op, 0, meta, nmeta);
	if (!rc)
		rc = op_run(c, &op);
	if (!rc)
		memcpy(upload_id_out, id, S3_UPLOAD_ID_MAX);
	return op_done(&op, rc, NULL);
}

int s3_mpu_put_part(struct s3_client *c, const char *key, const char *upload_id, uint32_t partno,
		    const void *body, size_t len, const unsigned char *md5, const char *sha256_hex,
		    char *etag_out)
{
	struct s3_op op;
	char pn[16];
	int rc;

	rc = op_start_upload(c, &op, "PUT", key, upload_id);
	if (rc)
		return rc;
	if (partno < 1 || partno > 10000)
		return fail_local(c, -EINVAL, "bad part number (1 to 10000)");
	snprintf(pn, sizeof(pn), "%" PRIu32, partno);
	op_query(&op, "partNumber", pn);
	op.rq.check = check_etag;
	op.rq.cut_any_time = 1;
	rc = op_body(c, &op, body, len, md5, data_hash(c, sha256_hex));
	if (!rc)
		rc = op_run(c, &op);
	return op_done(&op, rc, etag_out);
}

/*
 * A 200 to CompleteMultipartUpload may still carry an <Error>: judge the
 * body.  The ETag of the result goes to rs->etag.
 */
static int check_complete(struct s3_client *c, const struct s3_req *rq, struct s3_resp *rs,
			  struct s3_verdict *v)
{
	const char *a = NULL, *z = NULL, *end;
	char etag[S3_ETAG_MAX];

	if (!rs->body.p)
		goto bad;
	end = rs->body.p + rs->body.len;
	if (s3_xml_block(rs->body.p, end, "Error", &a, &z) == 0) {
		parse_error_body(rs);
		*v = s3_http_verdict(200, rs->code);
		err_what(c, "200 %s%s%s (CompleteMultipartUpload)",
			 rs->code[0] ? rs->code : "Error", rs->message[0] ? ": " : "", rs->message);
		if (!v->rc) {
			v->rc = -EAGAIN;
			v->retry = 1;
		}
		return -1;
	}
	if (!strstr(rs->body.p, "CompleteMultipartUploadResult"))
		goto bad;
	if (s3_xml_tag(rs->body.p, end, "ETag", etag, sizeof(etag), NULL) < 0)
		etag[0] = '\0';
	etag_clean(etag, strlen(etag), rs->etag);
	return 0;
bad:
	v->rc = -EBADMSG;
	v->retry = 1;
	err_what(c, "CompleteMultipartUpload at %s answered 200 without a result", c->endpoint);
	return -1;
}

static int hex_to_md5(const char *hex, unsigned char out[16])
{
	size_t i;

	if (strlen(hex) != 32)
		return -EINVAL;
	for (i = 0; i < 32; i++) {
		char ch = hex[i];
		int d;

		if (ch >= '0' && ch <= '9')
			d = ch - '0';
		else if (ch >= 'a' && ch <= 'f')
			d = ch - 'a' + 10;
		else if (ch >= 'A' && ch <= 'F')
			d = ch - 'A' + 10;
		else
			return -EINVAL;
		if (i % 2)
			out[i / 2] = (unsigned char)(out[i / 2] | d);
		else
			out[i / 2] = (unsigned char)(d << 4);
	}
	return 0;
}

/* The multipart ETag our parts should give, "" when a part ETag is not an MD5. */
static void expected_mpu_etag(const struct s3_part *parts, size_t n, char *out)
{
	unsigned char(*md5s)[16] = calloc(n ? n : 1, sizeof(*md5s));
	size_t i;

	out[0] = '\0';
	if (!md5s)
		return;
	for (i = 0; i < n; i++) {
		if (hex_to_md5(parts[i].etag, md5s[i])) {
			free(md5s);
			return;
		}
	}
	s3_multipart_etag((const unsigned char(*)[16])md5s, n, out);
	free(md5s);
}

/* The <CompleteMultipartUpload> document for @n parts into @xml. */
static int complete_xml(struct s3_client *c, const struct s3_part *parts, size_t n,
			struct s3_buf *xml)
{
	size_t i;
	int rc;

	rc = s3_buf_adds(xml, "<CompleteMultipartUpload>");
	for (i = 0; i < n && !rc; i++) {
		if (parts[i].partno < 1 || (i && parts[i].partno <= parts[i - 1].partno) ||
		    !parts[i].etag[0] || strpbrk(parts[i].etag, "<>&\""))
			return fail_local(c, -EINVAL, "parts out of order or without an ETag");
		rc = s3_buf_addf(xml,
				 "<Part><PartNumber>%" PRIu32 "</PartNumber>"
				 "<ETag>\"%s\"</ETag></Part>",
				 parts[i].partno, parts[i].etag);
	}
	if (!rc)
		rc = s3_buf_adds(xml, "</CompleteMultipartUpload>");
	return rc ? fail_local(c, rc, "cannot build the request") : 0;
}

int s3_mpu_complete(struct s3_client *c, const char *key, const char *upload_id,
		    const struct s3_part *parts, size_t n, const struct s3_meta *meta,
		    size_t nmeta, char *etag_out)
{
	char want[S3_ETAG_MAX];
	uint64_t size = 0;
	struct s3_buf xml;
	struct s3_op op;
	int rc;

	rc = op_start_upload(c, &op, "POST", key, upload_id);
	if (rc)
		return rc;
	if (!n || n > 10000)
		return fail_local(c, -EINVAL, "bad number of parts (1 to 10000)");
	s3_buf_init(&xml, (size_t)16 << 20);
	op.rq.check = check_complete;
	rc = complete_xml(c, parts, n, &xml);
	if (!rc)
		rc = op_body(c, &op, xml.p, xml.len, NULL, NULL);
	if (!rc)
		rc = op_header(c, &op, "content-type", "application/xml");
	if (!rc)
		rc = op_run(c, &op);

	/*
	 * A lost response again: if an earlier attempt completed the upload
	 * and its answer was lost, the retry finds no such upload (404), or
	 * every answer after it is lost too and the call gives up.  The object
	 * is then there with the multipart ETag of our parts (or, under
	 * SSE-KMS, our metadata): HEAD it.  Were the failure returned, the
	 * caller would abort the (gone) upload and send the parts again under
	 * a new name.
	 */
	if (rc && rc != -ECANCELED && op.rs.failed_before) {
		expected_mpu_etag(parts, n, want);
		for (size_t i = 0; i < n; i++)
			size += parts[i].size;
		if (lost_response_done(c, key, size, want, meta, nmeta, op.rs.etag))
			rc = 0;
	}
	s3_buf_free(&xml);
	return op_done(&op, rc, etag_out);
}

/* Run a DELETE: 0 also when the thing is gone already, which is what was wanted. */
static int run_delete(struct s3_client *c, struct s3_op *op)
{
	int rc = op_run(c, op);

	if (rc == -ENOENT) {
		c->err[0] = '\0';
		rc = 0;
	}
	return op_done(op, rc, NULL);
}

int s3_mpu_abort(struct s3_client *c, const char *key, const char *upload_id)
{
	struct s3_op op;
	int rc;

	rc = op_start_upload(c, &op, "DELETE", key, upload_id);
	return rc ? rc : run_delete(c, &op);
}

int s3_delete_object(struct s3_client *c, const char *key)
{
	struct s3_op op;
	int rc;

	rc = op_start(c, &op, "DELETE", key);
	return rc ? rc : run_delete(c, &op);
}

static int is_true(const char *start, const char *end, const char *tag)
{
	char v[16];

	return s3_xml_tag(start, end, tag, v, sizeof(v), NULL) > 0 && strcasecmp(v, "true") == 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
	uint64_t v = 0;

	if (!*s)
		return -EINVAL;
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || v > (UINT64_MAX - 9) / 10)
			return -EINVAL;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*out = v;
	return 0;
}

static int bad_listing(struct s3_client *c, const char *what)
{
	return fail_now(c, -EBADMSG, "%s at %s gave a listing that cannot be read", what,
			c->endpoint);
}

/* A bad <Contents>, <Part> or <Upload>: what a pager's item() returns for it. */
#define BAD_ITEM INT_MIN

/* How one kind of paged listing reads its pages. */
struct pager {
	const char *what;	/* "ListObjectsV2": for the error */
	const char *tag;	/* the element of one item */
	/* set the query of the next page (op->rq.nquery is the caller's to reset) */
	void (*query)(struct s3_op *op, void *arg);
	/* one item's block: 0 to go on, BAD_ITEM, or a caller's non-zero to stop */
	int (*item)(const char *a, const char *z, void *arg);
	/* after a truncated page, take the next page's markers: 0, or -1 if none or the same */
	int (*advance)(const char *body, const char *end, void *arg);
};

static int list_pages(struct s3_client *c, struct s3_op *op, const struct pager *pg, void *arg)
{
	int rc;

	for (;;) {
		const char *p, *end, *a = NULL, *z = NULL;

		pg->query(op, arg);
		rc = op_run(c, op);
		if (rc)
			return rc;
		p = op->rs.body.p ? op->rs.body.p : "";
		end = p + op->rs.body.len;
		for (; s3_xml_block(p, end, pg->tag, &a, &z) == 0; p = z) {
			rc = pg->item(a, z, arg);
			if (rc)
				return rc == BAD_ITEM ? bad_listing(c, pg->what) : rc;
		}
		if (!is_true(op->rs.body.p, end, "IsTruncated"))
			return 0;
		if (pg->advance(op->rs.body.p, end, arg))
			return bad_listing(c, pg->what);
	}
}

/* A listing of the bucket itself (not of an upload). */
static int list_bucket(struct s3_client *c, const struct pager *pg, void *arg)
{
	struct s3_op op;
	int rc;

	op_init(&op, "GET", NULL);
	rc = list_pages(c, &op, pg, arg);
	return op_done(&op, rc, NULL);
}

/* Take the text of <@tag> as the next marker into @marker (size @len): 0, or -1 if none or the same. */
static int next_marker(const char *body, const char *end, const char *tag, char *marker,
		       size_t len)
{
	char v[2048];

	if (s3_xml_tag(body, end, tag, v, sizeof(v), NULL) <= 0 || strlen(v) >= len ||
	    !strcmp(v, marker))
		return -1;
	memcpy(marker, v, strlen(v) + 1);
	return 0;
}

struct parts_list {
	struct s3_part *v;
	size_t n, cap;
	char marker[32];
};

static void parts_query(struct s3_op *op, void *arg)
{
	struct parts_list *l = arg;

	op->rq.nquery = 1; /* uploadId */
	if (l->marker[0])
		op_query(op, "part-number-marker", l->marker);
}

static int parts_item(const char *a, const char *z, void *arg)
{
	struct parts_list *l = arg;
	char num[32], etag[S3_ETAG_MAX], size[32];
	uint64_t v;

	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 64;
		struct s3_part *np = realloc(l->v, cap * sizeof(*np));

		if (!np)
			return -ENOMEM;
		l->v = np;
		l->cap = cap;
	}
	if (s3_xml_tag(a, z, "PartNumber", num, sizeof(num), NULL) < 0 || parse_u64(num, &v) ||
	    v < 1 || v > 10000 || s3_xml_tag(a, z, "ETag", etag, sizeof(etag), NULL) < 0 ||
	    s3_xml_tag(a, z, "Size", size, sizeof(size), NULL) < 0 ||
	    parse_u64(size, &l->v[l->n].size))
		return BAD_ITEM;
	l->v[l->n].partno = (uint32_t)v;
	etag_clean(etag, strlen(etag), l->v[l->n].etag);
	l->n++;
	return 0;
}

static int parts_advance(const char *body, const char *end, void *arg)
{
	struct parts_list *l = arg;

	return next_marker(body, end, "NextPartNumberMarker", l->marker, sizeof(l->marker));
}

int s3_mpu_list_parts(struct s3_client *c, const char *key, const char *upload_id,
		      struct s3_part **parts_out, size_t *n_out)
{
	static const struct pager pg = { "ListParts", "Part", parts_query, parts_item,
					 parts_advance };
	struct parts_list l = { 0 };
	struct s3_op op;
	int rc;

	rc = op_start_upload(c, &op, "GET", key, upload_id);
	if (rc)
		return rc;
	rc = list_pages(c, &op, &pg, &l);
	if (rc == -ENOMEM)
		rc = fail_local(c, -ENOMEM, "cannot list parts");
	if (!rc) {
		*parts_out = l.v;
		*n_out = l.n;
		l.v = NULL;
	}
	free(l.v);
	return op_done(&op, rc, NULL);
}

struct uploads_list {
	const char *prefix;
	char key_marker[S3_KEY_MAX * 2 + 1], id_marker[S3_UPLOAD_ID_MAX];
	int (*cb)(const char *key, const char *upload_id, void *arg);
	void *arg;
};

static void uploads_query(struct s3_op *op, void *arg)
{
	struct uploads_list *l = arg;

	op->rq.nquery = 0;
	op_query(op, "uploads", NULL);
	if (l->prefix && *l->prefix)
		op_query(op, "prefix", l->prefix);
	if (l->key_marker[0]) {
		op_query(op, "key-marker", l->key_marker);
		op_query(op, "upload-id-marker", l->id_marker);
	}
}

static int uploads_item(const char *a, const char *z, void *arg)
{
	struct uploads_list *l = arg;
	char key[S3_KEY_MAX * 2 + 1], id[S3_UPLOAD_ID_MAX];

	if (s3_xml_tag(a, z, "Key", key, sizeof(key), NULL) < 0 ||
	    s3_xml_tag(a, z, "UploadId", id, sizeof(id), NULL) <= 0)
		return BAD_ITEM;
	return l->cb(key, id, l->arg);
}

static int uploads_advance(const char *body, const char *end, void *arg)
{
	struct uploads_list *l = arg;
	char key[sizeof(l->key_marker)], id[sizeof(l->id_marker)];

	/* the pair must move on: a key can have several uploads */
	if (s3_xml_tag(body, end, "NextKeyMarker", key, sizeof(key), NULL) <= 0 ||
	    s3_xml_tag(body, end, "NextUploadIdMarker", id, sizeof(id), NULL) < 0 ||
	    (!strcmp(key, l->key_marker) && !strcmp(id, l->id_marker)))
		return -1;
	memcpy(l->key_marker, key, sizeof(key));
	memcpy(l->id_marker, id, sizeof(id));
	return 0;
}

int s3_mpu_list(struct s3_client *c, const char *prefix,
		int (*cb)(const char *key, const char *upload_id, void *arg), void *arg)
{
	static const struct pager pg = { "ListMultipartUploads", "Upload", uploads_query,
					 uploads_item, uploads_advance };
	struct uploads_list l = { .prefix = prefix, .cb = cb, .arg = arg };

	return list_bucket(c, &pg, &l);
}

struct objects_list {
	const char *prefix;
	char token[2048];
	int (*cb)(const char *key, const struct s3_object_info *o, void *arg);
	void *arg;
};

static void objects_query(struct s3_op *op, void *arg)
{
	struct objects_list *l = arg;

	op->rq.nquery = 0;
	op_query(op, "list-type", "2");
	if (l->prefix && *l->prefix)
		op_query(op, "prefix", l->prefix);
	if (l->token[0])
		op_query(op, "continuation-token", l->token);
}

static int objects_item(const char *a, const char *z, void *arg)
{
	struct objects_list *l = arg;
	struct s3_object_info o = { 0 };
	char key[S3_KEY_MAX * 2 + 1], size[32], etag[S3_ETAG_MAX], mtime[64];

	if (s3_xml_tag(a, z, "Key", key, sizeof(key), NULL) <= 0 ||
	    s3_xml_tag(a, z, "Size", size, sizeof(size), NULL) <= 0 || parse_u64(size, &o.size) ||
	    s3_xml_tag(a, z, "ETag", etag, sizeof(etag), NULL) < 0)
		return BAD_ITEM;
	etag_clean(etag, strlen(etag), o.etag);
	if (s3_xml_tag(a, z, "LastModified", mtime, sizeof(mtime), NULL) > 0)
		o.mtime = s3_parse_time(mtime);
	return l->cb(key, &o, l->arg);
}

static int objects_advance(const char *body, const char *end, void *arg)
{
	struct objects_list *l = arg;

	return next_marker(body, end, "NextContinuationToken", l->token, sizeof(l->token));
}

int s3_list_objects(struct s3_client *c, const char *prefix,
		    int (*cb)(const char *key, const struct s3_object_info *o, void *arg),
		    void *arg)
{
	static const struct pager pg = { "ListObjectsV2", "Contents", objects_query,
					 objects_item, objects_advance };
	struct objects_list l = { .prefix = prefix, .cb = cb, .arg = arg };

	return list_bucket(c, &pg, &l);
}

int s3_put_tag(struct s3_client *c, const char *key, const char *name, const char *value)
{
	struct s3_buf xml;
	struct s3_op op;
	int rc;

	rc = op_start(c, &op, "PUT", key);
	if (rc)
		return rc;
	op_query(&op, "tagging", NULL);
	s3_buf_init(&xml, 4096);
	rc = s3_buf_addf(&xml,
			 "<Tagging><TagSet><Tag><Key>%s</Key><Value>%s</Value></Tag></TagSet>"
			 "</Tagging>",
			 name, value);
	rc = rc ? fail_local(c, rc, "cannot build the request") : 0;
	if (!rc)
		rc = op_body(c, &op, xml.p, xml.len, NULL, NULL);
	if (!rc)
		rc = op_header(c, &op, "content-type", "application/xml");
	if (!rc)
		rc = op_run(c, &op);
	s3_buf_free(&xml);
	return op_done(&op, rc, NULL);
}

int s3_get_tag(struct s3_client *c, const char *key, const char *name, char *out, size_t len)
{
	const char *p, *end, *a = NULL, *z = NULL;
	char k[256];
	struct s3_op op;
	int rc;

	rc = op_start(c, &op, "GET", key);
	if (rc)
		return rc;
	op_query(&op, "tagging", NULL);
	rc = op_run(c, &op);
	p = !rc && op.rs.body.p ? op.rs.body.p : "";
	end = p + (rc ? 0 : op.rs.body.len);
	if (!rc)
		rc = -ENOENT;
	while (rc == -ENOENT && s3_xml_block(p, end, "Tag", &a, &z) == 0) {
		if (s3_xml_tag(a, z, "Key", k, sizeof(k), NULL) > 0 && !strcmp(k, name) &&
		    s3_xml_tag(a, z, "Value", out, len, NULL) >= 0)
			rc = 0;
		p = z;
	}
	return op_done(&op, rc, NULL);
}

/* ------------------------------------------------------------------ */
/* GET */

int s3_get_object(struct s3_client *c, const char *key,
		  int (*cb)(const void *data, size_t len, void *arg), void *arg)
{
	struct s3_op op;
	int rc;

	rc = op_start(c, &op, "GET", key);
	if (rc)
		return rc;
	op.rq.sink = cb;
	op.rq.sink_arg = arg;
	rc = op_run(c, &op);
	if (rc == -EEXIST && op.rs.delivered) { /* If-Match failed on a resumed GET */
		char k[S3_ESC_MAX];

		rc = fail_now(c, -EIO, "'%s' changed while it was read", esc(key, k, sizeof(k)));
	}
	return op_done(&op, rc, NULL);
}

/* ------------------------------------------------------------------ */

void s3_multipart_etag(const unsigned char (*md5s)[16], size_t n, char *etag_out)
{
	unsigned char md[16];
	unsigned int mdlen = 0;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	int ok;

	ok = ctx && EVP_DigestInit_ex(ctx, EVP_md5(), NULL) &&
	     (n == 0 || EVP_DigestUpdate(ctx, md5s, n * 16)) && EVP_DigestFinal_ex(ctx, md, &mdlen);
	EVP_MD_CTX_free(ctx);
	if (!ok || mdlen != 16) {
		etag_out[0] = '\0';
		return;
	}
	sigv4_hex(md, 16, etag_out);
	snprintf(etag_out + 32, S3_ETAG_MAX - 32, "-%zu", n);
}
