/*
 * test_digest.c - common/digest against OpenSSL: known answers, then
 * random lengths fed in random pieces to one, two and three states at once,
 * at matching and at different offsets, through the one-pass kernel (where
 * the CPU has it) and through the portable code.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "common/digest.h"

static void ref(const EVP_MD *md, const unsigned char *p, size_t n, unsigned char *out)
{
	unsigned int len = 0;

	assert_int_equal(EVP_Digest(p, n, out, &len, md, NULL), 1);
}

static void known(int portable)
{
	struct digest_md5 m;
	struct digest_sha256 s;
	unsigned char d[32];
	char hex[65];

	digest_portable(portable);
	digest_md5_init(&m);
	digest_md5_final(&m, d);
	digest_hex(d, 16, hex);
	assert_string_equal(hex, "d41d8cd98f00b204e9800998ecf8427e");
	digest_md5_init(&m);
	digest_sha256_init(&s);
	digest_update(&m, &s, NULL, "abc", 3);
	digest_md5_final(&m, d);
	digest_hex(d, 16, hex);
	assert_string_equal(hex, "900150983cd24fb0d6963f7d28e17f72");
	digest_sha256_hex(&s, hex);
	assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	digest_sha256_init(&s);
	digest_update(NULL, &s, NULL, "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56);
	digest_sha256_hex(&s, hex);
	assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
	digest_portable(0);
}

static void test_known(void **state)
{
	(void)state;
	known(0);
	known(1);
}

/*
 * @iters random cases: an MD5 and a sha256 of the same bytes, and a second
 * sha256 that first gets a prefix (aligned to 64 or not), fed in pieces of
 * random size to random subsets of the three.
 */
static void random_cases(int portable, int iters)
{
	const size_t big = (size_t)3 << 20;
	unsigned char *d = malloc(big + 256), *cat = malloc(big + 512);
	unsigned int seed = 7;

	assert_non_null(d);
	assert_non_null(cat);
	for (size_t i = 0; i < big + 256; i++)
		d[i] = (unsigned char)rand_r(&seed);
	digest_portable(portable);
	for (int it = 0; it < iters; it++) {
		size_t n = it < 300	 ? (size_t)it
			   : it % 50 == 0 ? (size_t)rand_r(&seed) % big
					  : (size_t)rand_r(&seed) % 20000;
		size_t off = (size_t)rand_r(&seed) % 64;
		size_t pre = it % 3 == 0 ? 0 : it % 3 == 1 ? 64 * (size_t)(rand_r(&seed) % 4)
							 : (size_t)rand_r(&seed) % 200;
		size_t piece = it % 2 ? 1 + (size_t)rand_r(&seed) % 200 : 1 + (size_t)rand_r(&seed) % 100000;
		struct digest_md5 m;
		struct digest_sha256 a, b;
		unsigned char om[16], oa[32], ob[32], rm[16], ra[32], rb[32];

		digest_md5_init(&m);
		digest_sha256_init(&a);
		digest_sha256_init(&b);
		digest_update(NULL, NULL, &b, d + big, pre);
		for (size_t done = 0; done < n;) {
			size_t k = 1 + (size_t)rand_r(&seed) % piece;
			const unsigned char *p = d + off + done;

			if (k > n - done)
				k = n - done;
			switch (rand_r(&seed) % 4) {
			case 0:
				digest_update(&m, &a, &b, p, k);
				break;
			case 1:
				digest_update(&m, NULL, NULL, p, k);
				digest_update(NULL, &a, &b, p, k);
				break;
			case 2:
				digest_update(&m, &a, NULL, p, k);
				digest_update(NULL, NULL, &b, p, k);
				break;
			default:
				digest_update(NULL, &a, NULL, p, k);
				digest_update(&m, NULL, &b, p, k);
				break;
			}
			done += k;
		}
		digest_md5_final(&m, om);
		digest_sha256_final(&a, oa);
		digest_sha256_final(&b, ob);
		ref(EVP_md5(), d + off, n, rm);
		ref(EVP_sha256(), d + off, n, ra);
		memcpy(cat, d + big, pre);
		memcpy(cat + pre, d + off, n);
		ref(EVP_sha256(), cat, pre + n, rb);
		assert_memory_equal(om, rm, 16);
		assert_memory_equal(oa, ra, 32);
		assert_memory_equal(ob, rb, 32);
	}
	digest_portable(0);
	free(cat);
	free(d);
}

static void test_fused(void **state)
{
	(void)state;
	random_cases(0, 2000);
}

static void test_portable(void **state)
{
	(void)state;
	random_cases(1, 600);
}

/*
 * As the uploader uses the lanes: a stream of @n bytes cut into parts of
 * @part bytes (the last shorter), each written into its own buffer in
 * pieces of random size while the stream's sha256 (@a, offset by @pre
 * bytes: a tar header) and the part's (@b) ride along.  The first byte of
 * every part after the first is written outside the buffer first (the byte
 * read to tell one part from more) and copied in after.  Each part's MD5 is
 * taken when the next part has been read, the last one's at the end.
 */
static void lanes_case(const unsigned char *d, size_t n, size_t part, size_t pre, size_t piece,
		       unsigned int *seed)
{
	size_t nparts = n / part + 1, prev_len = 0;
	unsigned char **bufs = calloc(nparts, sizeof(*bufs)), *cat = malloc(n + pre + 1);
	unsigned char (*md5s)[16] = calloc(nparts, 16), (*shas)[32] = calloc(nparts, 32);
	unsigned char om[16], oa[32], ra[32], r[32];
	struct digest_lanes l;
	struct digest_sha256 a, b;
	size_t k;

	assert_non_null(bufs);
	assert_non_null(cat);
	assert_non_null(md5s);
	assert_non_null(shas);
	digest_lanes_init(&l);
	digest_sha256_init(&a);
	digest_update(NULL, &a, NULL, d + n, pre);
	for (k = 0; k < nparts; k++) {
		size_t at = k * part, len = at < n ? (n - at < part ? n - at : part) : 0, done = 0;
		unsigned char carry;

		bufs[k] = malloc(part + 1);
		assert_non_null(bufs[k]);
		digest_sha256_init(&b);
		if (k > 0 && len > 0) {
			carry = d[at];
			digest_update_lanes(&l, &a, &b, &carry, 1);
		}
		digest_lanes_start(&l, bufs[k], part, prev_len);
		if (k > 0 && len > 0) {
			bufs[k][0] = carry;
			done = 1;
		}
		while (done < len) {
			size_t c = 1 + (size_t)rand_r(seed) % piece;

			if (c > len - done)
				c = len - done;
			memcpy(bufs[k] + done, d + at + done, c);
			digest_update_lanes(&l, &a, &b, bufs[k] + done, c);
			done += c;
		}
		digest_sha256_final(&b, shas[k]);
		if (k > 0)
			digest_lanes_take_prev(&l, md5s[k - 1]);
		prev_len = len;
		if (len < part)
			break;
	}
	digest_lanes_take_cur(&l, prev_len, md5s[k]);
	digest_sha256_final(&a, oa);
	memcpy(cat, d + n, pre);
	memcpy(cat + pre, d, n);
	ref(EVP_sha256(), cat, pre + n, ra);
	assert_memory_equal(oa, ra, 32);
	for (size_t i = 0; i <= k; i++) {
		size_t at = i * part, len = at < n ? (n - at < part ? n - at : part) : 0;

		ref(EVP_md5(), d + at, len, om);
		assert_memory_equal(md5s[i], om, 16);
		ref(EVP_sha256(), d + at, len, r);
		assert_memory_equal(shas[i], r, 32);
	}
	for (size_t i = 0; i < nparts; i++)
		free(bufs[i]);
	free(bufs);
	free(cat);
	free(md5s);
	free(shas);
}

static void lanes_cases(int portable, int iters)
{
	const size_t big = (size_t)2 << 20;
	unsigned char *d = malloc(big + 512);
	unsigned int seed = 11;

	assert_non_null(d);
	for (size_t i = 0; i < big + 512; i++)
		d[i] = (unsigned char)rand_r(&seed);
	digest_portable(portable);
	for (int it = 0; it < iters; it++) {
		size_t part = it % 4 == 0 ? 64 * (1 + (size_t)rand_r(&seed) % 8192)
			      : it % 4 == 1 ? 1 + (size_t)rand_r(&seed) % 300
					    : 1 + (size_t)rand_r(&seed) % 600000;
		size_t n = it < 20 ? (size_t)it : (size_t)rand_r(&seed) % big;
		size_t pre = it % 3 ? 512 * (size_t)(rand_r(&seed) % 2) : (size_t)rand_r(&seed) % 512;
		size_t piece = it % 2 ? 1 + (size_t)rand_r(&seed) % 300 : 1 + (size_t)rand_r(&seed) % 200000;

		if (part < 64 && n > 20000)
			n = 20000;	/* a thousand parts are enough */
		lanes_case(d, n, part, pre, piece, &seed);
	}
	digest_portable(0);
	free(d);
}

static void test_lanes(void **state)
{
	(void)state;
	lanes_cases(0, 300);
}

static void test_lanes_portable(void **state)
{
	(void)state;
	lanes_cases(1, 100);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_known),
		cmocka_unit_test(test_fused),
		cmocka_unit_test(test_portable),
		cmocka_unit_test(test_lanes),
		cmocka_unit_test(test_lanes_portable),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
