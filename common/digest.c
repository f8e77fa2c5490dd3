/*
 * digest.c - MD5 (RFC 1321) and SHA-256 (FIPS 180-4), one pass for both.
 *
 * The SHA-256 rounds use the x86 SHA extensions when the CPU has them
 * (sha256rnds2 does two rounds, sha256msg1/2 the message schedule); the
 * state then lives in two registers as ABEF and CDGH.  Without them each
 * block goes to OpenSSL's SHA256_Transform (its assembly for the CPU).  The fused kernel
 * runs 4 MD5 steps after every 4 SHA rounds so that the out-of-order core
 * overlaps them: MD5 is one long dependency chain on the integer units,
 * SHA-256 another on the vector unit.
 */
#include "common/digest.h"

#include <stdatomic.h>
#include <string.h>

/* SHA256_Transform: deprecated in OpenSSL 3, and the one block function it has */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define DG_X86 1
#define DG_TARGET __attribute__((target("sha,sse4.1,ssse3")))
#else
#define DG_X86 0
#endif

#define DG_INLINE static inline __attribute__((always_inline))

static const uint32_t md5_t[64] = {
	0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee,
	0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
	0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be,
	0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
	0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa,
	0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
	0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed,
	0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
	0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c,
	0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
	0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05,
	0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
	0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039,
	0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
	0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1,
	0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391
};

static const uint32_t sha_k[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5,
	0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
	0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc,
	0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
	0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
	0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3,
	0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5,
	0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
	0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2
};

static atomic_int use_accel = -1;	/* -1: not probed yet */

static uint32_t rol32(uint32_t x, unsigned s)
{
	return (x << s) | (x >> (32 - s));
}

static uint32_t le32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- MD5 ---------------------------------------------------------------- */

#define F1(b, c, d) ((d) ^ ((b) & ((c) ^ (d))))
#define F2(b, c, d) ((c) ^ ((d) & ((b) ^ (c))))
#define F3(b, c, d) ((b) ^ (c) ^ (d))
#define F4(b, c, d) ((c) ^ ((b) | ~(d)))
#define STEP(f, a, b, c, d, k, i, s) ((a) = (b) + rol32((a) + f(b, c, d) + x[k] + md5_t[i], s))

/* Steps 4q .. 4q+3 of one block (@q a constant once inlined); @x the block's words. */
DG_INLINE void md5_quad(uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d, const uint32_t x[16],
			int q)
{
	switch (q) {
	case 0:
		STEP(F1, *a, *b, *c, *d, 0, 0, 7);
		STEP(F1, *d, *a, *b, *c, 1, 1, 12);
		STEP(F1, *c, *d, *a, *b, 2, 2, 17);
		STEP(F1, *b, *c, *d, *a, 3, 3, 22);
		break;
	case 1:
		STEP(F1, *a, *b, *c, *d, 4, 4, 7);
		STEP(F1, *d, *a, *b, *c, 5, 5, 12);
		STEP(F1, *c, *d, *a, *b, 6, 6, 17);
		STEP(F1, *b, *c, *d, *a, 7, 7, 22);
		break;
	case 2:
		STEP(F1, *a, *b, *c, *d, 8, 8, 7);
		STEP(F1, *d, *a, *b, *c, 9, 9, 12);
		STEP(F1, *c, *d, *a, *b, 10, 10, 17);
		STEP(F1, *b, *c, *d, *a, 11, 11, 22);
		break;
	case 3:
		STEP(F1, *a, *b, *c, *d, 12, 12, 7);
		STEP(F1, *d, *a, *b, *c, 13, 13, 12);
		STEP(F1, *c, *d, *a, *b, 14, 14, 17);
		STEP(F1, *b, *c, *d, *a, 15, 15, 22);
		break;
	case 4:
		STEP(F2, *a, *b, *c, *d, 1, 16, 5);
		STEP(F2, *d, *a, *b, *c, 6, 17, 9);
		STEP(F2, *c, *d, *a, *b, 11, 18, 14);
		STEP(F2, *b, *c, *d, *a, 0, 19, 20);
		break;
	case 5:
		STEP(F2, *a, *b, *c, *d, 5, 20, 5);
		STEP(F2, *d, *a, *b, *c, 10, 21, 9);
		STEP(F2, *c, *d, *a, *b, 15, 22, 14);
		STEP(F2, *b, *c, *d, *a, 4, 23, 20);
		break;
	case 6:
		STEP(F2, *a, *b, *c, *d, 9, 24, 5);
		STEP(F2, *d, *a, *b, *c, 14, 25, 9);
		STEP(F2, *c, *d, *a, *b, 3, 26, 14);
		STEP(F2, *b, *c, *d, *a, 8, 27, 20);
		break;
	case 7:
		STEP(F2, *a, *b, *c, *d, 13, 28, 5);
		STEP(F2, *d, *a, *b, *c, 2, 29, 9);
		STEP(F2, *c, *d, *a, *b, 7, 30, 14);
		STEP(F2, *b, *c, *d, *a, 12, 31, 20);
		break;
	case 8:
		STEP(F3, *a, *b, *c, *d, 5, 32, 4);
		STEP(F3, *d, *a, *b, *c, 8, 33, 11);
		STEP(F3, *c, *d, *a, *b, 11, 34, 16);
		STEP(F3, *b, *c, *d, *a, 14, 35, 23);
		break;
	case 9:
		STEP(F3, *a, *b, *c, *d, 1, 36, 4);
		STEP(F3, *d, *a, *b, *c, 4, 37, 11);
		STEP(F3, *c, *d, *a, *b, 7, 38, 16);
		STEP(F3, *b, *c, *d, *a, 10, 39, 23);
		break;
	case 10:
		STEP(F3, *a, *b, *c, *d, 13, 40, 4);
		STEP(F3, *d, *a, *b, *c, 0, 41, 11);
		STEP(F3, *c, *d, *a, *b, 3, 42, 16);
		STEP(F3, *b, *c, *d, *a, 6, 43, 23);
		break;
	case 11:
		STEP(F3, *a, *b, *c, *d, 9, 44, 4);
		STEP(F3, *d, *a, *b, *c, 12, 45, 11);
		STEP(F3, *c, *d, *a, *b, 15, 46, 16);
		STEP(F3, *b, *c, *d, *a, 2, 47, 23);
		break;
	case 12:
		STEP(F4, *a, *b, *c, *d, 0, 48, 6);
		STEP(F4, *d, *a, *b, *c, 7, 49, 10);
		STEP(F4, *c, *d, *a, *b, 14, 50, 15);
		STEP(F4, *b, *c, *d, *a, 5, 51, 21);
		break;
	case 13:
		STEP(F4, *a, *b, *c, *d, 12, 52, 6);
		STEP(F4, *d, *a, *b, *c, 3, 53, 10);
		STEP(F4, *c, *d, *a, *b, 10, 54, 15);
		STEP(F4, *b, *c, *d, *a, 1, 55, 21);
		break;
	case 14:
		STEP(F4, *a, *b, *c, *d, 8, 56, 6);
		STEP(F4, *d, *a, *b, *c, 15, 57, 10);
		STEP(F4, *c, *d, *a, *b, 6, 58, 15);
		STEP(F4, *b, *c, *d, *a, 13, 59, 21);
		break;
	case 15:
		STEP(F4, *a, *b, *c, *d, 4, 60, 6);
		STEP(F4, *d, *a, *b, *c, 11, 61, 10);
		STEP(F4, *c, *d, *a, *b, 2, 62, 15);
		STEP(F4, *b, *c, *d, *a, 9, 63, 21);
		break;
	default:
		break;
	}
}

DG_INLINE void md5_words(uint32_t x[16], const unsigned char *p)
{
	for (int i = 0; i < 16; i++)
		x[i] = le32(p + 4 * i);
}

/* A block's result added into the state @h. */
DG_INLINE void md5_add(uint32_t h[4], uint32_t a, uint32_t b, uint32_t c, uint32_t d)
{
	h[0] += a;
	h[1] += b;
	h[2] += c;
	h[3] += d;
}

static void md5_blocks(uint32_t h[4], const unsigned char *p, size_t n)
{
	for (; n; n--, p += 64) {
		uint32_t x[16], a = h[0], b = h[1], c = h[2], d = h[3];

		md5_words(x, p);
#pragma GCC unroll 16
		for (int q = 0; q < 16; q++)
			md5_quad(&a, &b, &c, &d, x, q);
		md5_add(h, a, b, c, d);
	}
}

/* ---- SHA-256 without the SHA extensions: OpenSSL's block function ------- */

static void sha_blocks_ossl(uint32_t h[8], const unsigned char *p, size_t n)
{
	SHA256_CTX c;

	memset(&c, 0, sizeof(c));
	memcpy(c.h, h, sizeof(c.h));
	for (; n; n--, p += 64)
		SHA256_Transform(&c, p);
	memcpy(h, c.h, sizeof(c.h));
}

/* ---- SHA-256 with the SHA extensions, MD5 interleaved ------------------- */

#if DG_X86
DG_TARGET DG_INLINE void sha_load(const uint32_t h[8], __m128i *abef, __m128i *cdgh)
{
	__m128i t = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)h), 0xB1);
	__m128i u = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)(h + 4)), 0x1B);

	*abef = _mm_alignr_epi8(t, u, 8);
	*cdgh = _mm_blend_epi16(u, t, 0xF0);
}

DG_TARGET DG_INLINE void sha_store(uint32_t h[8], __m128i abef, __m128i cdgh)
{
	__m128i t = _mm_shuffle_epi32(abef, 0x1B);
	__m128i u = _mm_shuffle_epi32(cdgh, 0xB1);

	_mm_storeu_si128((__m128i *)h, _mm_blend_epi16(t, u, 0xF0));
	_mm_storeu_si128((__m128i *)(h + 4), _mm_alignr_epi8(u, t, 8));
}

/* Four rounds: message words @wk (already plus K) into one state. */
DG_TARGET DG_INLINE void sha_quad(__m128i *abef, __m128i *cdgh, __m128i wk)
{
	*cdgh = _mm_sha256rnds2_epu32(*cdgh, *abef, wk);
	*abef = _mm_sha256rnds2_epu32(*abef, *cdgh, _mm_shuffle_epi32(wk, 0x0E));
}

/*
 * Rounds 4q .. 4q+3 of block @blk into the state @a, and @b when @two: the
 * message words w[q] made first (one schedule for both).  The block's start
 * is saved into @sa / @sb before its first rounds and added back after its
 * last.
 */
DG_TARGET DG_INLINE void sha_step(__m128i w[16], const unsigned char *blk, int q, __m128i a[2],
				  __m128i b[2], __m128i sa[2], __m128i sb[2], const int two)
{
	const __m128i swap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
	__m128i wk;

	if (q == 0) {
		sa[0] = a[0];
		sa[1] = a[1];
		sb[0] = b[0];
		sb[1] = b[1];
	}
	if (q < 4)
		w[q] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(blk + 16 * q)), swap);
	else
		w[q] = _mm_sha256msg2_epu32(
			_mm_add_epi32(_mm_sha256msg1_epu32(w[q - 4], w[q - 3]),
				      _mm_alignr_epi8(w[q - 1], w[q - 2], 4)),
			w[q - 1]);
	wk = _mm_add_epi32(w[q], _mm_loadu_si128((const __m128i *)(sha_k + 4 * q)));
	sha_quad(&a[0], &a[1], wk);
	if (two)
		sha_quad(&b[0], &b[1], wk);
	if (q == 15) {
		a[0] = _mm_add_epi32(a[0], sa[0]);
		a[1] = _mm_add_epi32(a[1], sa[1]);
		if (two) {
			b[0] = _mm_add_epi32(b[0], sb[0]);
			b[1] = _mm_add_epi32(b[1], sb[1]);
		}
	}
}

/*
 * @n rounds of: @per blocks (1 or 2) of @p into the sha256 state @a (and @b
 * when @two), and one block of @p1 into the MD5 state @m1 when @lanes is 1
 * or more, and one of @p2 into @m2 when it is 2.  The MD5 steps alternate
 * with the SHA rounds, so the out-of-order core overlaps the chains.  Two
 * MD5 messages side by side run nearly twice as fast as one: each is a
 * serial chain, and the integer units have room for two.  Every argument
 * after @n is a constant in each caller, which is its own specialised loop.
 */
DG_TARGET DG_INLINE void fused(uint32_t *m1, const unsigned char *p1, uint32_t *m2,
			       const unsigned char *p2, uint32_t *a, uint32_t *b,
			       const unsigned char *p, size_t n, const int per, const int lanes,
			       const int two)
{
	__m128i va[2], vb[2] = { _mm_setzero_si128(), _mm_setzero_si128() }, sa[2], sb[2];

	sha_load(a, &va[0], &va[1]);
	if (two)
		sha_load(b, &vb[0], &vb[1]);
	for (; n; n--, p += 64 * per, p1 += 64, p2 += 64) {
		__m128i w[16];
		uint32_t x[16], y[16], ma = 0, mb = 0, mc = 0, md = 0, na = 0, nb = 0, nc = 0, nd = 0;

		if (lanes >= 1) {
			md5_words(x, p1);
			ma = m1[0];
			mb = m1[1];
			mc = m1[2];
			md = m1[3];
		}
		if (lanes == 2) {
			md5_words(y, p2);
			na = m2[0];
			nb = m2[1];
			nc = m2[2];
			nd = m2[3];
		}
#pragma GCC unroll 32
		for (int i = 0; i < 16 * per; i++) {
			sha_step(w, p + 64 * (i >> 4), i & 15, va, vb, sa, sb, two);
			if (lanes >= 1 && per == 1)
				md5_quad(&ma, &mb, &mc, &md, x, i);
			else if (lanes >= 1 && !(i & 1))
				md5_quad(&ma, &mb, &mc, &md, x, i >> 1);
			else if (lanes == 2)
				md5_quad(&na, &nb, &nc, &nd, y, i >> 1);
		}
		if (lanes >= 1)
			md5_add(m1, ma, mb, mc, md);
		if (lanes == 2)
			md5_add(m2, na, nb, nc, nd);
	}
	sha_store(a, va[0], va[1]);
	if (two)
		sha_store(b, vb[0], vb[1]);
}

DG_TARGET static void lanes_1s(uint32_t *m1, const unsigned char *p1, uint32_t *a,
			       const unsigned char *p, size_t n)
{
	fused(m1, p1, NULL, NULL, a, NULL, p, n, 2, 1, 0);
}

DG_TARGET static void lanes_1ss(uint32_t *m1, const unsigned char *p1, uint32_t *a, uint32_t *b,
				const unsigned char *p, size_t n)
{
	fused(m1, p1, NULL, NULL, a, b, p, n, 2, 1, 1);
}

DG_TARGET static void lanes_2s(uint32_t *m1, const unsigned char *p1, uint32_t *m2,
			       const unsigned char *p2, uint32_t *a, const unsigned char *p,
			       size_t n)
{
	fused(m1, p1, m2, p2, a, NULL, p, n, 2, 2, 0);
}

DG_TARGET static void lanes_2ss(uint32_t *m1, const unsigned char *p1, uint32_t *m2,
				const unsigned char *p2, uint32_t *a, uint32_t *b,
				const unsigned char *p, size_t n)
{
	fused(m1, p1, m2, p2, a, b, p, n, 2, 2, 1);
}

DG_TARGET static void fused_s(uint32_t *a, const unsigned char *p, size_t n)
{
	fused(NULL, p, NULL, NULL, a, NULL, p, n, 1, 0, 0);
}

DG_TARGET static void fused_ss(uint32_t *a, uint32_t *b, const unsigned char *p, size_t n)
{
	fused(NULL, p, NULL, NULL, a, b, p, n, 1, 0, 1);
}

DG_TARGET static void fused_ms(uint32_t *m, uint32_t *a, const unsigned char *p, size_t n)
{
	fused(m, p, NULL, NULL, a, NULL, p, n, 1, 1, 0);
}

DG_TARGET static void fused_mss(uint32_t *m, uint32_t *a, uint32_t *b, const unsigned char *p,
				size_t n)
{
	fused(m, p, NULL, NULL, a, b, p, n, 1, 1, 1);
}

static int probe(void)
{
	unsigned int eax, ebx, ecx, edx;

	if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & bit_SSSE3) ||
	    !(ecx & bit_SSE4_1))
		return 0;
	if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
		return 0;
	return (ebx & bit_SHA) != 0;
}
#else
static int probe(void)
{
	return 0;
}
#endif

int digest_accelerated(void)
{
	int on = atomic_load_explicit(&use_accel, memory_order_relaxed);

	if (on < 0) {
		on = probe();
		atomic_store_explicit(&use_accel, on, memory_order_relaxed);
	}
	return on;
}

void digest_portable(int on)
{
	atomic_store_explicit(&use_accel, on ? 0 : probe(), memory_order_relaxed);
}

/* @n whole blocks into every state given. */
static void blocks(struct digest_md5 *m, struct digest_sha256 *a, struct digest_sha256 *b,
		   const unsigned char *p, size_t n)
{
	if (!a) {
		a = b;
		b = NULL;
	}
#if DG_X86
	if (a && digest_accelerated()) {
		if (m && b)
			fused_mss(m->h, a->h, b->h, p, n);
		else if (m)
			fused_ms(m->h, a->h, p, n);
		else if (b)
			fused_ss(a->h, b->h, p, n);
		else
			fused_s(a->h, p, n);
		return;
	}
#endif
	if (m)
		md5_blocks(m->h, p, n);
	if (a)
		sha_blocks_ossl(a->h, p, n);
	if (b)
		sha_blocks_ossl(b->h, p, n);
}

void digest_md5_init(struct digest_md5 *m)
{
	static const uint32_t iv[4] = { 0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476 };

	memcpy(m->h, iv, sizeof(iv));
	m->n = 0;
}

void digest_sha256_init(struct digest_sha256 *s)
{
	static const uint32_t iv[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
					0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };

	memcpy(s->h, iv, sizeof(iv));
	s->n = 0;
}

/* Feed one state on its own: @buf/@n are its pending bytes and count. */
static void feed_one(struct digest_md5 *m, struct digest_sha256 *s, const unsigned char *p,
		     size_t len)
{
	unsigned char *buf = m ? m->buf : s->buf;
	uint64_t *count = m ? &m->n : &s->n;
	size_t have = (size_t)(*count % 64), k;

	*count += len;
	if (have) {
		k = 64 - have < len ? 64 - have : len;
		memcpy(buf + have, p, k);
		p += k;
		len -= k;
		if (have + k < 64)
			return;
		blocks(m, s, NULL, buf, 1);
	}
	blocks(m, s, NULL, p, len / 64);
	memcpy(buf, p + len / 64 * 64, len % 64);
}

/* Feed every state given on its own. */
static void feed_each(struct digest_md5 *m, struct digest_sha256 *a, struct digest_sha256 *b,
		      const unsigned char *p, size_t len)
{
	if (m)
		feed_one(m, NULL, p, len);
	if (a)
		feed_one(NULL, a, p, len);
	if (b)
		feed_one(NULL, b, p, len);
}

/* ---- two MD5 lanes ------------------------------------------------------ */

/* Whole blocks lane @i can hash now: of the bytes its part has, those not yet hashed. */
static size_t lane_ready(const struct digest_lanes *l, int i)
{
	return l->base[i] ? (l->len[i] - (size_t)l->md5[i].n) / 64 : 0;
}

/* The next unhashed byte of lane @i (its MD5 stays at a whole block while in the lanes). */
static const unsigned char *lane_at(const struct digest_lanes *l, int i)
{
	return l->base[i] + l->md5[i].n;
}

/*
 * @n rounds of two blocks of @p into @a (and @b), and one block into each
 * lane given (@m2 may be NULL).  @a is never NULL.
 */
static void lane_rounds(struct digest_md5 *m1, const unsigned char *p1, struct digest_md5 *m2,
			const unsigned char *p2, struct digest_sha256 *a, struct digest_sha256 *b,
			const unsigned char *p, size_t n)
{
	if (!n)
		return;
#if DG_X86
	if (digest_accelerated()) {
		if (m2 && b)
			lanes_2ss(m1->h, p1, m2->h, p2, a->h, b->h, p, n);
		else if (m2)
			lanes_2s(m1->h, p1, m2->h, p2, a->h, p, n);
		else if (b)
			lanes_1ss(m1->h, p1, a->h, b->h, p, n);
		else
			lanes_1s(m1->h, p1, a->h, p, n);
	} else
#endif
	{
		md5_blocks(m1->h, p1, n);
		if (m2)
			md5_blocks(m2->h, p2, n);
		blocks(NULL, a, b, p, 2 * n);
	}
	m1->n += 64 * n;
	if (m2)
		m2->n += 64 * n;
}

/*
 * @n whole blocks at @p into @a and @b (either may be NULL), and the lanes
 * of @l moved on by up to @n / 2 blocks each: as many as they can, both
 * together where both can.
 */
static void lane_blocks(struct digest_lanes *l, struct digest_sha256 *a, struct digest_sha256 *b,
			const unsigned char *p, size_t n)
{
	int c = l->cur, o = !c;
	size_t kc = lane_ready(l, c), ko = lane_ready(l, o), both;

	if (!a) {
		a = b;
		b = NULL;
	}
	if (!a)
		return;	/* nothing to ride on: the lanes catch up when taken */
	kc = kc < n / 2 ? kc : n / 2;
	ko = ko < n / 2 ? ko : n / 2;
	both = kc < ko ? kc : ko;
	lane_rounds(&l->md5[c], lane_at(l, c), &l->md5[o], lane_at(l, o), a, b, p, both);
	p += 128 * both;
	n -= 2 * both;
	kc -= both;
	ko -= both;
	if (kc || ko) {
		int i = kc ? c : o;

		lane_rounds(&l->md5[i], lane_at(l, i), NULL, NULL, a, b, p, kc + ko);
		p += 128 * (kc + ko);
		n -= 2 * (kc + ko);
	}
	blocks(NULL, a, b, p, n);
}

/* Feed @p[0..len) to @m, @a and @b, or to @a and @b riding @l (then @m is NULL). */
static void update(struct digest_md5 *m, struct digest_lanes *l, struct digest_sha256 *a,
		   struct digest_sha256 *b, const unsigned char *p, size_t len)
{
	uint64_t at = m ? m->n : a ? a->n : b ? b->n : 0;
	size_t head, whole;

	if ((m && m->n % 64 != at % 64) || (a && a->n % 64 != at % 64) ||
	    (b && b->n % 64 != at % 64)) {
		feed_each(m, a, b, p, len);
		return;
	}
	/* all at the same offset in a block: the same bytes complete it */
	head = at % 64 ? 64 - (size_t)(at % 64) : 0;
	if (head > len)
		head = len;
	feed_each(m, a, b, p, head);
	p += head;
	len -= head;
	whole = len / 64;
	if (l)
		lane_blocks(l, a, b, p, whole);
	else
		blocks(m, a, b, p, whole);
	p += whole * 64;
	len -= whole * 64;
	if (m) {
		m->n += whole * 64 + len;
		memcpy(m->buf, p, len);
	}
	if (a) {
		a->n += whole * 64 + len;
		memcpy(a->buf, p, len);
	}
	if (b) {
		b->n += whole * 64 + len;
		memcpy(b->buf, p, len);
	}
}

void digest_update(struct digest_md5 *m, struct digest_sha256 *a, struct digest_sha256 *b,
		   const void *data, size_t len)
{
	update(m, NULL, a, b, data, len);
}

void digest_lanes_init(struct digest_lanes *l)
{
	memset(l, 0, sizeof(*l));
}

void digest_lanes_start(struct digest_lanes *l, const void *buf, size_t cap, size_t prev_len)
{
	if (l->base[l->cur]) {
		l->len[l->cur] = prev_len;
		l->cur = !l->cur;
	}
	digest_md5_init(&l->md5[l->cur]);
	l->base[l->cur] = buf;
	l->len[l->cur] = 0;
	l->cap = cap;
}

void digest_update_lanes(struct digest_lanes *l, struct digest_sha256 *a, struct digest_sha256 *b,
			 const void *data, size_t len)
{
	const unsigned char *p = data, *base = l ? l->base[l->cur] : NULL;

	/* bytes written into the current part's buffer are there for its lane */
	if (base && p >= base && len <= l->cap && (size_t)(p - base) <= l->cap - len &&
	    (size_t)(p - base) + len > l->len[l->cur])
		l->len[l->cur] = (size_t)(p - base) + len;
	update(NULL, l, a, b, p, len);
}

/* The rest of lane @i's bytes, then its digest; the lane is free again. */
static void lane_take(struct digest_lanes *l, int i, size_t len, unsigned char out[16])
{
	struct digest_md5 *m = &l->md5[i];

	digest_update(m, NULL, NULL, l->base[i] + m->n, len - (size_t)m->n);
	digest_md5_final(m, out);
	l->base[i] = NULL;
}

void digest_lanes_take_prev(struct digest_lanes *l, unsigned char out[16])
{
	lane_take(l, !l->cur, l->len[!l->cur], out);
}

void digest_lanes_take_cur(struct digest_lanes *l, size_t len, unsigned char out[16])
{
	lane_take(l, l->cur, len, out);
}

/* The padding: 0x80, zeros, the bit length (little-endian for MD5). */
static void pad(struct digest_md5 *m, struct digest_sha256 *s, uint64_t n)
{
	unsigned char tail[72] = { 0x80 };
	size_t k = (size_t)(55 - n % 64 + 64) % 64 + 1;
	uint64_t bits = n * 8;

	for (int i = 0; i < 8; i++)
		tail[k + i] = (unsigned char)(m ? bits >> (8 * i) : bits >> (56 - 8 * i));
	if (m)
		feed_one(m, NULL, tail, k + 8);
	else
		feed_one(NULL, s, tail, k + 8);
}

void digest_md5_final(struct digest_md5 *m, unsigned char out[16])
{
	pad(m, NULL, m->n);
	for (int i = 0; i < 16; i++)
		out[i] = (unsigned char)(m->h[i / 4] >> (8 * (i % 4)));
}

void digest_sha256_final(struct digest_sha256 *s, unsigned char out[32])
{
	pad(NULL, s, s->n);
	for (int i = 0; i < 32; i++)
		out[i] = (unsigned char)(s->h[i / 4] >> (24 - 8 * (i % 4)));
}

void digest_hex(const unsigned char *d, size_t len, char *out)
{
	static const char hex[] = "0123456789abcdef";

	for (size_t i = 0; i < len; i++) {
		out[2 * i] = hex[d[i] >> 4];
		out[2 * i + 1] = hex[d[i] & 15];
	}
	out[2 * len] = '\0';
}

void digest_sha256_hex(struct digest_sha256 *s, char out[65])
{
	unsigned char d[32];

	digest_sha256_final(s, d);
	digest_hex(d, sizeof(d), out);
}
