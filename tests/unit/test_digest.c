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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_known),
		cmocka_unit_test(test_fused),
		cmocka_unit_test(test_portable),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
