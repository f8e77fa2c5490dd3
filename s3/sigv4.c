/*
 * sigv4.c - AWS Signature Version 4 for S3 (see sigv4.h).
 *
 * Each step builds its string in an s3_buf and hands it to the caller; the
 * hashing is OpenSSL's one-shot EVP_Digest() and HMAC().  The signing key is
 * derived per request (four HMACs, far cheaper than the request) and wiped
 * with OPENSSL_cleanse() as soon as the signature is made.
 */
#include "s3/sigv4.h"
#include "s3/s3_i.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define SIGV4_ALGO    "AWS4-HMAC-SHA256"
#define SIGV4_SERVICE "s3"
#define SIGV4_MAX_STR ((size_t)1 << 24)

/* printf into a new string owned by the caller.  0 or -ENOMEM/-E2BIG/-EINVAL. */
static int str_printf(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int str_printf(char **out, const char *fmt, ...)
{
	struct s3_buf b;
	va_list ap;
	int rc;

	s3_buf_init(&b, SIGV4_MAX_STR);
	va_start(ap, fmt);
	rc = s3_buf_vaddf(&b, fmt, ap);
	va_end(ap);
	return rc ? rc : s3_buf_detach(&b, out);
}

void sigv4_hex(const unsigned char *in, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * n] = '\0';
}

int sigv4_sha256_hex(const void *data, size_t len, char out[SIGV4_HEX_LEN])
{
	unsigned char md[32];
	unsigned int mdlen = 0;

	if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
		return -EIO;
	sigv4_hex(md, 32, out);
	return 0;
}

int sigv4_md5(const void *data, size_t len, unsigned char out[16])
{
	unsigned int mdlen = 0;

	if (!EVP_Digest(data, len, out, &mdlen, EVP_md5(), NULL) || mdlen != 16)
		return -EIO;
	return 0;
}

int sigv4_amz_date(long long t, char out[SIGV4_DATE_LEN])
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (!gmtime_r(&tt, &tm))
		return -EINVAL;
	if (strftime(out, SIGV4_DATE_LEN, "%Y%m%dT%H%M%SZ", &tm) != SIGV4_DATE_LEN - 1)
		return -EINVAL;
	return 0;
}

static int is_unreserved(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '_' || c == '.' || c == '~';
}

static int uri_encode_to(struct s3_buf *b, const char *in, int keep_slash)
{
	static const char digits[] = "0123456789ABCDEF";
	const unsigned char *p;
	int rc = 0;

	for (p = (const unsigned char *)in; *p && !rc; p++) {
		if (is_unreserved(*p) || (keep_slash && *p == '/')) {
			rc = s3_buf_add(b, p, 1);
		} else {
			char e[3] = { '%', digits[*p >> 4], digits[*p & 15] };

			rc = s3_buf_add(b, e, 3);
		}
	}
	return rc;
}

int sigv4_uri_encode(const char *in, int keep_slash, char **out)
{
	struct s3_buf b;
	int rc;

	s3_buf_init(&b, SIGV4_MAX_STR);
	rc = uri_encode_to(&b, in, keep_slash);
	if (rc)
		return rc;
	return s3_buf_detach(&b, out);
}

struct enc_kv {
	char *name; /* owned */
	char *value; /* owned */
};

static int enc_kv_cmp(const void *a, const void *b)
{
	const struct enc_kv *x = a, *y = b;
	int r = strcmp(x->name, y->name);

	return r ? r : strcmp(x->value, y->value);
}

int sigv4_canonical_query(const struct sigv4_kv *q, size_t n, char **out)
{
	struct enc_kv *kv = NULL;
	struct s3_buf b;
	size_t i;
	int rc = 0;

	s3_buf_init(&b, SIGV4_MAX_STR);
	if (n) {
		kv = calloc(n, sizeof(*kv));
		if (!kv)
			return -ENOMEM;
	}
	for (i = 0; i < n && !rc; i++) {
		rc = sigv4_uri_encode(q[i].name, 0, &kv[i].name);
		if (!rc)
			rc = sigv4_uri_encode(q[i].value ? q[i].value : "", 0, &kv[i].value);
	}
	if (rc)
		goto out;
	if (n)
		qsort(kv, n, sizeof(*kv), enc_kv_cmp);
	for (i = 0; i < n && !rc; i++)
		rc = s3_buf_addf(&b, "%s%s=%s", i ? "&" : "", kv[i].name, kv[i].value);
	if (!rc)
		rc = s3_buf_detach(&b, out);
out:
	for (i = 0; kv && i < n; i++) {
		free(kv[i].name);
		free(kv[i].value);
	}
	free(kv);
	s3_buf_free(&b);
	return rc;
}

/* Trim the ends and squeeze inner runs of spaces/tabs to one space (SigV4 "Trimall"). */
static int add_trimmed(struct s3_buf *b, const char *v)
{
	const char *p = v, *e = v + strlen(v);
	int rc = 0, space = 0;

	while (p < e && (*p == ' ' || *p == '\t'))
		p++;
	while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
		e--;
	for (; p < e && !rc; p++) {
		if (*p == ' ' || *p == '\t') {
			space = 1;
			continue;
		}
		if (space)
			rc = s3_buf_add(b, " ", 1);
		space = 0;
		if (!rc)
			rc = s3_buf_add(b, p, 1);
	}
	return rc;
}

int sigv4_canonical_headers(const struct sigv4_kv *h, size_t n, char **canon_out, char **signed_out)
{
	struct enc_kv *kv = NULL;
	struct s3_buf canon, sig;
	size_t i, j;
	int rc = 0;

	s3_buf_init(&canon, SIGV4_MAX_STR);
	s3_buf_init(&sig, SIGV4_MAX_STR);
	if (!n)
		return -EINVAL;
	kv = calloc(n, sizeof(*kv));
	if (!kv)
		return -ENOMEM;
	for (i = 0; i < n && !rc; i++) {
		if (!h[i].name || !*h[i].name) {
			rc = -EINVAL;
			break;
		}
		kv[i].name = strdup(h[i].name);
		kv[i].value = strdup(h[i].value ? h[i].value : "");
		if (!kv[i].name || !kv[i].value) {
			rc = -ENOMEM;
			break;
		}
		for (j = 0; kv[i].name[j]; j++) {
			if (kv[i].name[j] >= 'A' && kv[i].name[j] <= 'Z')
				kv[i].name[j] = (char)(kv[i].name[j] - 'A' + 'a');
		}
	}
	if (rc)
		goto out;
	qsort(kv, n, sizeof(*kv), enc_kv_cmp);
	for (i = 0; i < n && !rc; i++) {
		if (i && strcmp(kv[i].name, kv[i - 1].name) == 0) {
			rc = -EINVAL;
			break;
		}
		rc = s3_buf_addf(&canon, "%s:", kv[i].name);
		if (!rc)
			rc = add_trimmed(&canon, kv[i].value);
		if (!rc)
			rc = s3_buf_add(&canon, "\n", 1);
		if (!rc)
			rc = s3_buf_addf(&sig, "%s%s", i ? ";" : "", kv[i].name);
	}
	if (rc)
		goto out;
	rc = s3_buf_detach(&canon, canon_out);
	if (rc)
		goto out;
	rc = s3_buf_detach(&sig, signed_out);
	if (rc) {
		free(*canon_out);
		*canon_out = NULL;
	}
out:
	for (i = 0; i < n; i++) {
		free(kv[i].name);
		free(kv[i].value);
	}
	free(kv);
	s3_buf_free(&canon);
	s3_buf_free(&sig);
	return rc;
}

int sigv4_canonical_request(const struct sigv4_request *req, char **out, char **signed_out)
{
	char *query = NULL, *canon = NULL, *sig = NULL;
	struct s3_buf b;
	int rc;

	s3_buf_init(&b, SIGV4_MAX_STR);
	if (!req->method || !req->path || req->path[0] != '/' || !req->payload_hash)
		return -EINVAL;
	rc = sigv4_canonical_query(req->query, req->nquery, &query);
	if (rc)
		goto out;
	rc = sigv4_canonical_headers(req->headers, req->nheaders, &canon, &sig);
	if (rc)
		goto out;
	rc = s3_buf_addf(&b, "%s\n", req->method);
	if (!rc)
		rc = uri_encode_to(&b, req->path, 1);
	if (!rc)
		rc = s3_buf_addf(&b, "\n%s\n%s\n%s\n%s", query, canon, sig, req->payload_hash);
	if (!rc)
		rc = s3_buf_detach(&b, out);
	if (!rc && signed_out) {
		*signed_out = sig;
		sig = NULL;
	}
out:
	free(query);
	free(canon);
	free(sig);
	s3_buf_free(&b);
	return rc;
}

int sigv4_scope(const char *amz_date, const char *region, char *out, size_t len)
{
	int n;

	if (!amz_date || strlen(amz_date) != SIGV4_DATE_LEN - 1 || !region || !*region)
		return -EINVAL;
	n = snprintf(out, len, "%.8s/%s/" SIGV4_SERVICE "/aws4_request", amz_date, region);
	if (n < 0 || (size_t)n >= len)
		return -E2BIG;
	return 0;
}

int sigv4_string_to_sign(const char *amz_date, const char *region, const char *canonical_request,
			 char **out)
{
	char scope[256], hash[SIGV4_HEX_LEN];
	int rc;

	rc = sigv4_scope(amz_date, region, scope, sizeof(scope));
	if (!rc)
		rc = sigv4_sha256_hex(canonical_request, strlen(canonical_request), hash);
	if (!rc)
		rc = str_printf(out, SIGV4_ALGO "\n%s\n%s\n%s", amz_date, scope, hash);
	return rc;
}

static int hmac_sha256(const void *key, size_t keylen, const char *msg, unsigned char out[32])
{
	unsigned int outlen = 0;

	if (!HMAC(EVP_sha256(), key, (int)keylen, (const unsigned char *)msg, strlen(msg), out,
		  &outlen) ||
	    outlen != 32)
		return -EIO;
	return 0;
}

int sigv4_signing_key(const char *secret, const char *amz_date, const char *region,
		      unsigned char key[32])
{
	char date[9];
	unsigned char k[32], k2[32];
	struct s3_buf ks;
	int rc;

	s3_buf_init(&ks, 4096);
	if (!secret || !amz_date || strlen(amz_date) < 8 || !region)
		return -EINVAL;
	memcpy(date, amz_date, 8);
	date[8] = '\0';
	rc = s3_buf_adds(&ks, "AWS4");
	if (!rc)
		rc = s3_buf_adds(&ks, secret);
	if (rc)
		return rc;
	rc = hmac_sha256(ks.p, ks.len, date, k);
	if (!rc)
		rc = hmac_sha256(k, 32, region, k2);
	if (!rc)
		rc = hmac_sha256(k2, 32, SIGV4_SERVICE, k);
	if (!rc)
		rc = hmac_sha256(k, 32, "aws4_request", key);
	OPENSSL_cleanse(ks.p, ks.cap);
	s3_buf_free(&ks);
	OPENSSL_cleanse(k, sizeof(k));
	OPENSSL_cleanse(k2, sizeof(k2));
	return rc;
}

int sigv4_signature(const unsigned char key[32], const char *string_to_sign,
		    char sig_hex[SIGV4_HEX_LEN])
{
	unsigned char mac[32];
	int rc;

	rc = hmac_sha256(key, 32, string_to_sign, mac);
	if (rc)
		return rc;
	sigv4_hex(mac, 32, sig_hex);
	return 0;
}

int sigv4_authorization(const char *access_key, const char *amz_date, const char *region,
			const char *signed_headers, const char *sig_hex, char **out)
{
	char scope[256];
	int rc;

	rc = sigv4_scope(amz_date, region, scope, sizeof(scope));
	if (!rc)
		rc = str_printf(out, SIGV4_ALGO " Credential=%s/%s, SignedHeaders=%s, Signature=%s",
				access_key, scope, signed_headers, sig_hex);
	return rc;
}

int sigv4_sign(const struct sigv4_request *req, const char *access_key, const char *secret,
	       char **auth_out)
{
	char *creq = NULL, *sts = NULL, *signed_headers = NULL;
	unsigned char key[32];
	char sig[SIGV4_HEX_LEN];
	int rc;

	rc = sigv4_canonical_request(req, &creq, &signed_headers);
	if (rc)
		goto out;
	rc = sigv4_string_to_sign(req->amz_date, req->region, creq, &sts);
	if (rc)
		goto out;
	rc = sigv4_signing_key(secret, req->amz_date, req->region, key);
	if (rc)
		goto out;
	rc = sigv4_signature(key, sts, sig);
	OPENSSL_cleanse(key, sizeof(key));
	if (rc)
		goto out;
	rc = sigv4_authorization(access_key, req->amz_date, req->region, signed_headers, sig,
				 auth_out);
out:
	free(creq);
	free(sts);
	free(signed_headers);
	return rc;
}
