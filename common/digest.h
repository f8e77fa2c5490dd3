/*
 * digest.h - MD5 and SHA-256 of the same bytes in one pass.
 *
 * An upload hashes every byte it sends up to three times: the sha256 of
 * the original (the record's checksum), and the MD5 (Content-MD5, the ETag
 * check) and sha256 (the signed payload hash) of each part.  digest_update()
 * feeds one buffer to up to three states at once.  On x86-64 with the SHA
 * extensions the states share one pass: the scalar MD5 rounds and the SHA
 * rounds of both sha256 states (one message schedule, two states) are
 * interleaved block by block, so the SHA work runs on the vector unit
 * while MD5's serial chain keeps the integer units busy.  Elsewhere the
 * states are fed one after the other (MD5 in C, sha256 by OpenSSL's block
 * function).
 *
 * States that are fed together must be at the same offset modulo 64 (a
 * part starting at a multiple of 64 in the stream); otherwise each is
 * fed on its own, which gives the same digests, only slower.
 */
#ifndef MGMTFS_DIGEST_H
#define MGMTFS_DIGEST_H

#include <stddef.h>
#include <stdint.h>

struct digest_md5 {
	uint32_t h[4];
	uint64_t n;		/* bytes fed */
	unsigned char buf[64];	/* the last n % 64 of them */
};

struct digest_sha256 {
	uint32_t h[8];
	uint64_t n;
	unsigned char buf[64];
};

void digest_md5_init(struct digest_md5 *m);
void digest_sha256_init(struct digest_sha256 *s);

/* Feed @p[0..len) to every state given (any may be NULL). */
void digest_update(struct digest_md5 *m, struct digest_sha256 *a, struct digest_sha256 *b,
		   const void *p, size_t len);

/* The digest of what was fed; the state is left finished (init it again to reuse). */
void digest_md5_final(struct digest_md5 *m, unsigned char out[16]);
void digest_sha256_final(struct digest_sha256 *s, unsigned char out[32]);
void digest_sha256_hex(struct digest_sha256 *s, char out[65]);
/* @len bytes at @d as lower-case hex into @out (2 * @len + 1 bytes). */
void digest_hex(const unsigned char *d, size_t len, char *out);

/* 1 when the one-pass SHA-extension kernel is in use on this CPU. */
int digest_accelerated(void);

/* Tests and benchmarks: 1 = one state at a time even where the kernel runs. */
void digest_portable(int on);

#endif
