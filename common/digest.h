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

/*
 * Two parts' MD5 side by side.  MD5 is one serial chain per message and
 * leaves the integer units half idle; two messages hashed together run
 * nearly twice as fast.  The lanes are the part being read and the part read
 * just before it.  digest_update_lanes() feeds the new bytes to the sha256
 * states and moves each lane on by up to half as many bytes, reading them
 * back from the parts' buffers: a part's MD5 is about half made when it has
 * been read, and whole when the next one has.  The buffers must stay put
 * until their MD5 is taken.
 */
struct digest_lanes {
	struct digest_md5 md5[2];	/* [cur]: the part being read; [!cur]: the one before */
	const unsigned char *base[2];	/* their buffers; NULL: no part (taken) */
	size_t len[2];		/* bytes there: written so far ([cur]), all ([!cur]) */
	size_t cap;		/* the room in base[cur] */
	int cur;
};

void digest_lanes_init(struct digest_lanes *l);
/*
 * A part starts in @buf (@cap bytes of room).  The part that was current,
 * if any, becomes the previous one, @prev_len bytes long; the previous one
 * before it must have been taken (digest_lanes_take_prev) by then.
 */
void digest_lanes_start(struct digest_lanes *l, const void *buf, size_t cap, size_t prev_len);
/* Feed @p[0..len) to @a and @b (either may be NULL), riding @l (may be NULL too). */
void digest_update_lanes(struct digest_lanes *l, struct digest_sha256 *a, struct digest_sha256 *b,
			 const void *p, size_t len);
/* The MD5 of the previous part / of the current one's first @len bytes, made whole. */
void digest_lanes_take_prev(struct digest_lanes *l, unsigned char out[16]);
void digest_lanes_take_cur(struct digest_lanes *l, size_t len, unsigned char out[16]);

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
