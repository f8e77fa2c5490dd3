/*
 * test_sigv4.c - SigV4 known answers: AWS's four published S3 signing
 * examples, each step of the first one, and
 * the S3 URI encoding of awkward keys.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "s3/sigv4.h"

#define AK     "AKIAIOSFODNN7EXAMPLE"
#define SK     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
#define DATE   "20130524T000000Z"
#define HOST   "examplebucket.s3.amazonaws.com"
#define REGION "us-east-1"

static char *sign(const char *method, const char *path, const struct sigv4_kv *q, size_t nq,
		  const struct sigv4_kv *extra, size_t nextra, const char *payload)
{
	struct sigv4_kv h[8];
	struct sigv4_request r;
	char *auth = NULL;
	size_t n = 0, i;

	h[n].name = "Host";
	h[n++].value = HOST;
	h[n].name = "x-amz-date";
	h[n++].value = DATE;
	h[n].name = "x-amz-content-sha256";
	h[n++].value = payload;
	for (i = 0; i < nextra; i++)
		h[n++] = extra[i];
	memset(&r, 0, sizeof(r));
	r.method = method;
	r.path = path;
	r.query = q;
	r.nquery = nq;
	r.headers = h;
	r.nheaders = n;
	r.payload_hash = payload;
	r.amz_date = DATE;
	r.region = REGION;
	assert_int_equal(sigv4_sign(&r, AK, SK, &auth), 0);
	return auth;
}

static void expect_sig(char *auth, const char *signed_headers, const char *sig)
{
	char want[512];

	snprintf(want, sizeof(want),
		 "AWS4-HMAC-SHA256 Credential=" AK "/20130524/us-east-1/s3/aws4_request, "
		 "SignedHeaders=%s, Signature=%s",
		 signed_headers, sig);
	assert_string_equal(auth, want);
	free(auth);
}

static void test_get_object_range(void **state)
{
	struct sigv4_kv range = { "Range", "bytes=0-9" };

	expect_sig(sign("GET", "/test.txt", NULL, 0, &range, 1, SIGV4_EMPTY_SHA256),
		   "host;range;x-amz-content-sha256;x-amz-date",
		   "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
}

static void test_get_object_steps(void **state)
{
	static const char creq_want[] =
		"GET\n/test.txt\n\n"
		"host:examplebucket.s3.amazonaws.com\n"
		"range:bytes=0-9\n"
		"x-amz-content-sha256:"
		"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
		"x-amz-date:20130524T000000Z\n\n"
		"host;range;x-amz-content-sha256;x-amz-date\n"
		"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
	static const char sts_want[] =
		"AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n"
		"7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972";
	struct sigv4_kv h[4] = { { "x-amz-date", DATE },
				 { "Range", "bytes=0-9" },
				 { "host", HOST },
				 { "x-amz-content-sha256", SIGV4_EMPTY_SHA256 } };
	struct sigv4_request r;
	char *creq = NULL, *signed_h = NULL, *sts = NULL;
	unsigned char key[32];
	char sig[SIGV4_HEX_LEN];

	memset(&r, 0, sizeof(r));
	r.method = "GET";
	r.path = "/test.txt";
	r.headers = h;
	r.nheaders = 4;
	r.payload_hash = SIGV4_EMPTY_SHA256;
	r.amz_date = DATE;
	r.region = REGION;
	assert_int_equal(sigv4_canonical_request(&r, &creq, &signed_h), 0);
	assert_string_equal(creq, creq_want);
	assert_string_equal(signed_h, "host;range;x-amz-content-sha256;x-amz-date");
	assert_int_equal(sigv4_string_to_sign(DATE, REGION, creq, &sts), 0);
	assert_string_equal(sts, sts_want);
	assert_int_equal(sigv4_signing_key(SK, DATE, REGION, key), 0);
	assert_int_equal(sigv4_signature(key, sts, sig), 0);
	assert_string_equal(sig,
			    "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
	free(creq);
	free(signed_h);
	free(sts);
}

static void test_put_object(void **state)
{
	static const char body[] = "Welcome to Amazon S3.";
	struct sigv4_kv extra[2] = { { "Date", "Fri, 24 May 2013 00:00:00 GMT" },
				     { "x-amz-storage-class", "REDUCED_REDUNDANCY" } };
	char payload[SIGV4_HEX_LEN];

	assert_int_equal(sigv4_sha256_hex(body, strlen(body), payload), 0);
	assert_string_equal(payload,
			    "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
	expect_sig(sign("PUT", "/test$file.text", NULL, 0, extra, 2, payload),
		   "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
		   "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");
}

static void test_get_lifecycle(void **state)
{
	struct sigv4_kv q = { "lifecycle", NULL };
	char *cq = NULL;

	assert_int_equal(sigv4_canonical_query(&q, 1, &cq), 0);
	assert_string_equal(cq, "lifecycle=");
	free(cq);
	expect_sig(sign("GET", "/", &q, 1, NULL, 0, SIGV4_EMPTY_SHA256),
		   "host;x-amz-content-sha256;x-amz-date",
		   "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543");
}

static void test_list_objects(void **state)
{
	struct sigv4_kv q[2] = { { "prefix", "J" }, { "max-keys", "2" } };
	char *cq = NULL;

	assert_int_equal(sigv4_canonical_query(q, 2, &cq), 0);
	assert_string_equal(cq, "max-keys=2&prefix=J");
	free(cq);
	expect_sig(sign("GET", "/", q, 2, NULL, 0, SIGV4_EMPTY_SHA256),
		   "host;x-amz-content-sha256;x-amz-date",
		   "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
}

static void expect_enc(const char *in, int keep_slash, const char *want)
{
	char *out = NULL;

	assert_int_equal(sigv4_uri_encode(in, keep_slash, &out), 0);
	assert_string_equal(out, want);
	free(out);
}

static void test_uri_encode(void **state)
{
	expect_enc("dir/été ü.txt", 1, "dir/%C3%A9t%C3%A9%20%C3%BC.txt");
	expect_enc("a+b%c", 1, "a%2Bb%25c");
	expect_enc("a b", 1, "a%20b");
	expect_enc("test$file.text", 1, "test%24file.text");
	expect_enc("~tilde-_.", 1, "~tilde-_.");
	expect_enc("AZaz09", 1, "AZaz09");
	expect_enc("a/b//c/", 1, "a/b//c/");
	expect_enc("a/b", 0, "a%2Fb");
	expect_enc("%2F", 1, "%252F"); /* encoded once: '%' itself is encoded */
	expect_enc("=&?#*:,;@!'()[]", 1, "%3D%26%3F%23%2A%3A%2C%3B%40%21%27%28%29%5B%5D");
	expect_enc("\x01\x7f\xff", 1, "%01%7F%FF");
	expect_enc("", 1, "");
}

static void test_canonical_query_sort_and_encode(void **state)
{
	struct sigv4_kv q[4] = { { "uploadId", "a b+c/d" },
				 { "partNumber", "3" },
				 { "uploads", NULL },
				 { "prefix", "" } };
	char *cq = NULL;

	assert_int_equal(sigv4_canonical_query(q, 4, &cq), 0);
	assert_string_equal(cq, "partNumber=3&prefix=&uploadId=a%20b%2Bc%2Fd&uploads=");
	free(cq);
	assert_int_equal(sigv4_canonical_query(NULL, 0, &cq), 0);
	assert_string_equal(cq, "");
	free(cq);
}

static void test_canonical_headers_trim(void **state)
{
	struct sigv4_kv h[3] = { { "X-Amz-Meta-A", "  two   spaces\there  " },
				 { "HOST", "h" },
				 { "x-amz-meta-empty", "" } };
	struct sigv4_kv dup[2] = { { "Host", "a" }, { "host", "b" } };
	char *canon = NULL, *sig = NULL;

	assert_int_equal(sigv4_canonical_headers(h, 3, &canon, &sig), 0);
	assert_string_equal(canon, "host:h\nx-amz-meta-a:two spaces here\nx-amz-meta-empty:\n");
	assert_string_equal(sig, "host;x-amz-meta-a;x-amz-meta-empty");
	free(canon);
	free(sig);
	assert_int_equal(sigv4_canonical_headers(dup, 2, &canon, &sig), -EINVAL);
}

static void test_amz_date(void **state)
{
	char d[SIGV4_DATE_LEN];

	assert_int_equal(sigv4_amz_date(1369353600LL, d), 0);
	assert_string_equal(d, DATE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_get_object_range),
		cmocka_unit_test(test_get_object_steps),
		cmocka_unit_test(test_put_object),
		cmocka_unit_test(test_get_lifecycle),
		cmocka_unit_test(test_list_objects),
		cmocka_unit_test(test_uri_encode),
		cmocka_unit_test(test_canonical_query_sort_and_encode),
		cmocka_unit_test(test_canonical_headers_trim),
		cmocka_unit_test(test_amz_date),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
