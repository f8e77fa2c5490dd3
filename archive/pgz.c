/*
 * pgz.c - parallel gzip, the pigz way.
 *
 * DESIGN
 * The uncompressed source is cut into blocks of block_size bytes.  Block b
 * goes into slot b % nslots; a slot holds the last (up to) 32 KiB before the
 * block (its deflate dictionary) directly in front of the block's bytes, so
 * the next block's dictionary is one memcpy from the previous slot.  Each
 * worker thread owns one raw deflate stream (windowBits -15, memLevel 8),
 * reset per block: deflateSetDictionary() with the dictionary unless it is
 * block 0, deflate(Z_SYNC_FLUSH) so the block ends on a byte boundary, or
 * Z_FINISH for the last block; it also computes the block's CRC-32.  The
 * concatenated outputs form one deflate stream.
 *
 * Incompressible blocks (media, already compressed data) are not deflated:
 * zlib would spend its full CPU on them and then emit stored blocks anyway.
 * Before deflating, a block of at least PGZ_CHUNK bytes is tested cheaply
 * (block_is_noise()): per 4 KiB chunk, a byte histogram and its chi-square
 * distance from the uniform one (the second-order form of the order-0
 * entropy: 8 - H ~= chi2 / (2 n ln 2) bits per byte), and, only when every
 * chunk is flat, a sampled search for repeats within the deflate window,
 * the one other thing deflate gains from.  A block that passes both is
 * written by hand as stored deflate blocks (BTYPE 00): it starts on a byte
 * boundary (after the gzip header or a sync flush, or after another stored
 * block, which ends byte-aligned and needs no flush marker), so each stored
 * block is one header byte, LEN, NLEN and up to 65535 bytes.  The next
 * block's dictionary is the raw input either way, so nothing else changes.
 * The test costs ~2% of level-1 deflate time on a random block and well
 * under 1% on compressible ones (it stops at the first chunk with
 * structure); random data is gzipped at memcpy + CRC-32 speed.
 *
 * A block that is not noise as a whole may hold long noise runs: a tar
 * header shifts a file's data off the block grid, so one block holds the
 * end of a text region and the start of a random one; media files have
 * text headers.  Such a block goes as runs (compress_runs()): maximal runs
 * of PGZ_RUN_MIN or more whole noise chunks stored, the rest deflated with
 * the 32 KiB of raw input before it as dictionary and a sync flush (or
 * Z_FINISH for the last run of the stream), so every run starts and ends
 * byte-aligned.  A 512-byte sample of every PGZ_RUN_MIN-th chunk rejects
 * text at once (~0.5% of level-1 deflate time); only a run of flat
 * samples gets the full test.
 *
 * The thread calling pgz_read() is the reader and the writer: it fills free
 * slots from the source (pread + sha256 happen there, in the source), queues
 * them, then waits for the oldest block, joins its CRC-32 with
 * crc32_combine() and copies its output out.  At most nslots = 2 * threads
 * + 2 + PGZ_AHEAD blocks are in flight, so memory is bounded whatever the
 * file size.  2 * threads + 2 (like pigz's 2p+3 input buffers) keep the
 * workers fed when the reader is scheduled late; the PGZ_AHEAD more (4 MiB
 * at the default block size) let them run on while the reader is away:
 * waiting for the oldest block, or for a part to be sent before it can
 * fill the next.  Without them 8-10% of both cores sat idle during a
 * level-1 upload of 1 GiB on this project's VMs, with them 3%: 7.65 s ->
 * 7.11 s (medians of 3; level 6: 18.0-18.3 s -> 17.4-17.8 s, 4% idle ->
 * none), for 9 MiB more peak RSS with 2 threads.
 *
 * A source of one block (or a failure to start any thread) is compressed
 * in the caller's thread with no worker: 1000 small files start no thread.
 *
 * Locking: one mutex z->lock guards the work queue, z->stopping and every
 * slot's state; nothing else nests inside it.  A slot's buffers belong to
 * the caller while it is not queued, and to one worker from the time it is
 * popped until it is marked done.
 */
#include "archive/arc_i.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

enum slot_state {
	SLOT_IDLE,
	SLOT_QUEUED,	/* waiting for or held by a worker */
	SLOT_DONE,
};

struct pgz_slot {
	unsigned char *buf;	/* owned: ARC_DICT bytes of dictionary area, then the block */
	size_t dict_len;	/* dictionary bytes, ending at buf + ARC_DICT */
	size_t in_len;
	unsigned char *out;	/* owned, out_cap bytes; may grow in the worker */
	size_t out_cap;
	size_t out_len;
	size_t out_pos;		/* bytes already handed to the reader */
	uint32_t crc;		/* of the block's input */
	int last;
	int err;
	enum slot_state state;	/* protected by z->lock */
	struct pgz_slot *next;	/* queue link, protected by z->lock */
};

enum pgz_phase {
	PGZ_HEADER,
	PGZ_BODY,
	PGZ_TRAILER,
	PGZ_END,
};

struct pgz {
	int level;
	int threads;		/* workers to start */
	size_t block_size;
	uint64_t total;		/* source bytes */
	arc_fill_fn fill;	/* borrowed */
	void *ctx;		/* borrowed */

	uint64_t nblocks;
	uint64_t next_in;	/* next block to fill */
	uint64_t next_out;	/* oldest block not yet fully handed out */
	struct pgz_slot *slots;	/* owned, nslots */
	size_t nslots;
	struct pgz_slot *cur;	/* block being handed out, or NULL */

	z_stream zs;		/* the caller's, when no worker runs */
	int zs_ready;

	pthread_mutex_t lock;
	pthread_cond_t work;	/* queue not empty, or stopping */
	pthread_cond_t done;	/* a slot became SLOT_DONE */
	struct pgz_slot *qhead;	/* protected by lock */
	struct pgz_slot **qtail;	/* protected by lock */
	int stopping;		/* protected by lock */
	pthread_t *tids;	/* owned, threads entries */
	int nworkers;		/* started and not yet joined */
	int started;		/* start attempted */

	enum pgz_phase phase;
	unsigned char edge[10];	/* the gzip header, later the trailer */
	size_t edge_len;
	size_t edge_pos;
	uint32_t crc;
	int err;		/* sticky */
};

static int z_init(z_stream *zs, int level)
{
	memset(zs, 0, sizeof(*zs));
	switch (deflateInit2(zs, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY)) {
	case Z_OK:
		return 0;
	case Z_MEM_ERROR:
		return -ENOMEM;
	default:
		return -EINVAL;
	}
}

/*
 * The incompressible-block test.  For random bytes the chi-square statistic
 * of a chunk's byte histogram (256 cells) has mean 255 and standard
 * deviation ~22.6 whatever the chunk length, so the test sums the excess
 * over 255 of all chunks and calls the block noise while the sum stays at
 * most PGZ_CHI_SLACK per chunk + PGZ_CHI_BASE: 5.6 standard deviations or
 * more (the least at 4 chunks), so random data is not deflated for bad
 * luck.  Measured on 128 KiB blocks (xz/zstd packages, jars, tars of man
 * pages and PNGs, binaries, text, base64): blocks under the bound gain
 * < 0.05% from deflate; zip members and other deflate output, which
 * deflate still shrinks by 2-6%, are far above it (excess 100-500 per
 * chunk), as is anything with text, zeros or a tar header: such a block is
 * deflated but for its noise runs.  Per chunk rather than per block
 * because a region of structure moves the histogram of the whole block
 * only by the square of its share, while it moves its own chunk's fully.
 */
#define PGZ_CHUNK	4096u /* bytes per histogram; smaller blocks are deflated */
#define PGZ_CHI_MEAN	255u /* chi-square mean for random bytes: cells - 1 */
#define PGZ_CHI_SLACK	32u
#define PGZ_CHI_BASE	128u
#define PGZ_STORED_MAX	65535u /* LEN of one stored block */
#define PGZ_SAMPLE	512u /* bytes of a chunk the run scan looks at */
#define PGZ_RUN_MIN	4u /* chunks: shorter noise runs are deflated with their neighbours */
#define PGZ_ANCHOR	0x9e /* any byte value: the block is flat when it is used */
#define PGZ_ANCHOR_BITS 10
#define PGZ_AHEAD	32u /* blocks the workers may run ahead (see DESIGN) */

/* Add @n bytes at @p to @h; four interleaved: no store-to-load stall on runs. */
static inline void hist_add(uint32_t h[4][256], const unsigned char *p, size_t n)
{
	size_t i;

	for (i = 0; i + 4 <= n; i += 4) {
		h[0][p[i]]++;
		h[1][p[i + 1]]++;
		h[2][p[i + 2]]++;
		h[3][p[i + 3]]++;
	}
	for (; i < n; i++)
		h[0][p[i]]++;
}

/* Chi-square distance from uniform of the byte histogram of @p, @n bytes, and @q, @m. */
static uint64_t chi2(const unsigned char *p, size_t n, const unsigned char *q, size_t m)
{
	uint32_t h[4][256];
	uint64_t sq = 0, t = n + m;
	size_t i;

	memset(h, 0, sizeof(h));
	hist_add(h, p, n);
	hist_add(h, q, m);
	for (i = 0; i < 256; i++) {
		uint64_t c = (uint64_t)h[0][i] + h[1][i] + h[2][i] + h[3][i];

		sq += c * c;
	}
	/* sum (c - t/256)^2 / (t/256); never negative: sum c^2 >= t^2 / 256 */
	return (256 * sq - t * t) / t;
}

static size_t gcd(size_t a, size_t b)
{
	while (b) {
		size_t t = a % b;

		a = b;
		b = t;
	}
	return a;
}

/*
 * Are the chunks of @in (@n >= PGZ_CHUNK bytes) as flat as random bytes?
 * The chunks are visited in a scattered order (a step near the golden
 * section, coprime with their count) and the walk stops as soon as the sum
 * is over the bound, so text or zeros anywhere in the block cost one or two
 * chunks, not half the block.  The last chunk takes the remainder.
 */
static int chunks_flat(const unsigned char *in, size_t n)
{
	size_t k = n / PGZ_CHUNK, step = (k * 5 / 8) | 1, i, c = 0;
	int64_t excess = 0, bound = (int64_t)(PGZ_CHI_SLACK * k + PGZ_CHI_BASE);

	while (gcd(step, k) != 1)
		step += 2;
	for (i = 0; i < k; i++) {
		size_t len = c == k - 1 ? n - c * PGZ_CHUNK : PGZ_CHUNK;

		excess += (int64_t)chi2(in + c * PGZ_CHUNK, len, NULL, 0) - PGZ_CHI_MEAN;
		if (excess > bound)
			return 0;
		c = (c + step) % k;
	}
	return 1;
}

/*
 * Does deflate find repeats in @in (@n bytes, @dict_len of dictionary in
 * front)?  A file stored twice, or a page repeated, leaves every histogram
 * flat.  Sampled: the positions holding PGZ_ANCHOR (1 in 256 in a flat
 * block; memchr finds them fast) are anchors, keyed by their 4 bytes in a
 * small direct-mapped table of the latest anchor per hash.  An anchor of
 * the block whose key sits at an earlier anchor within the deflate window
 * starts a repeat of 4 bytes or more; in random data that happens at
 * about one anchor in 2^14 (the table keeps one position per hash), so
 * hits on 1/256 of the anchors (about 1/256 of the block repeated) means
 * structure.
 */
static int has_repeats(const unsigned char *in, size_t n, size_t dict_len)
{
	uint32_t seen[1u << PGZ_ANCHOR_BITS];	/* position + 1 from base, 0 = none */
	const unsigned char *base = in - dict_len, *p = base, *end = in + n - 3;
	size_t anchors = 0, hits = 0;

	memset(seen, 0, sizeof(seen));
	while (p < end && (p = memchr(p, PGZ_ANCHOR, (size_t)(end - p)))) {
		uint32_t key, slot, pos = (uint32_t)(p - base) + 1;	/* blocks are < 4 GiB */

		memcpy(&key, p, 4);
		slot = (key * 2654435761u) >> (32 - PGZ_ANCHOR_BITS);
		if (p >= in) {
			uint32_t old = seen[slot];

			anchors++;
			if (old && pos - old <= ARC_DICT && !memcmp(base + old - 1, p, 4))
				hits++;
		}
		seen[slot] = pos;
		p++;
	}
	return hits && hits * 256 >= anchors;
}

static int block_is_noise(const unsigned char *in, size_t n, size_t dict_len)
{
	return n >= PGZ_CHUNK && chunks_flat(in, n) && !has_repeats(in, n, dict_len);
}

/* Make room for @need bytes of output in @sl. */
static int out_reserve(struct pgz_slot *sl, size_t need)
{
	unsigned char *p;

	if (need <= sl->out_cap)
		return 0;
	p = realloc(sl->out, need);
	if (!p)
		return -ENOMEM;
	sl->out = p;
	sl->out_cap = need;
	return 0;
}

/*
 * Append @left bytes at @in to @sl's output as stored deflate blocks:
 * header byte 0 (BTYPE 00 and the padding to the byte boundary we are
 * already on), or 1 (BFINAL) on the last one when @final, then LEN and
 * NLEN little-endian.
 */
static int store_run(struct pgz_slot *sl, const unsigned char *in, size_t left, int final)
{
	unsigned char *o;
	int rc;

	rc = out_reserve(sl,
			 sl->out_len + left + 5 * ((left + PGZ_STORED_MAX - 1) / PGZ_STORED_MAX));
	if (rc)
		return rc;
	o = sl->out + sl->out_len;
	while (left) {
		size_t len = left < PGZ_STORED_MAX ? left : PGZ_STORED_MAX;

		left -= len;
		o[0] = final && !left;
		o[1] = (unsigned char)len;
		o[2] = (unsigned char)(len >> 8);
		o[3] = (unsigned char)~len;
		o[4] = (unsigned char)(~len >> 8);
		memcpy(o + 5, in, len);
		o += 5 + len;
		in += len;
	}
	sl->out_len = (size_t)(o - sl->out);
	return 0;
}

/* Raw input in front of offset @off of @sl's block: the run's dictionary. */
static size_t window(const struct pgz_slot *sl, size_t off)
{
	return sl->dict_len + off < ARC_DICT ? sl->dict_len + off : ARC_DICT;
}

/*
 * Deflate @len bytes at offset @off of @sl's block with @zs (reset here),
 * appending to the output: Z_FINISH when @final, else Z_SYNC_FLUSH so the
 * run ends on a byte boundary.
 */
static int deflate_run(z_stream *zs, struct pgz_slot *sl, size_t off, size_t len, int final)
{
	unsigned char *in = sl->buf + ARC_DICT + off;
	size_t d = window(sl, off);
	int flush = final ? Z_FINISH : Z_SYNC_FLUSH;
	int ret;

	if (deflateReset(zs) != Z_OK)
		return -EIO;
	if (d && deflateSetDictionary(zs, in - d, (uInt)d) != Z_OK)
		return -EIO;
	zs->next_in = in;
	zs->avail_in = (uInt)len;
	zs->next_out = sl->out + sl->out_len;
	zs->avail_out = (uInt)(sl->out_cap - sl->out_len);
	for (;;) {
		ret = deflate(zs, flush);
		if (ret == Z_STREAM_ERROR)
			return -EIO;
		if (flush == Z_FINISH ? ret == Z_STREAM_END
				      : zs->avail_in == 0 && zs->avail_out != 0)
			break;
		if (zs->avail_out == 0) {
			/* deflateBound() was too tight, or runs added flush markers */
			size_t used = sl->out_cap;

			if (out_reserve(sl, sl->out_cap * 2))
				return -ENOMEM;
			zs->next_out = sl->out + used;
			zs->avail_out = (uInt)(sl->out_cap - used);
		}
	}
	sl->out_len = sl->out_cap - zs->avail_out;
	return 0;
}

/*
 * The run scan's look at chunk @c of the @k in @in (@n bytes): are its
 * first and last PGZ_SAMPLE / 2 bytes flat?  Both ends: t bytes of text at
 * either end of the chunk put min(t, 256) in the sample.  Random samples
 * score 255 +- 23 (the bound is 11 sd up), text thousands, base64 1536.
 */
static int sample_flat(const unsigned char *in, size_t n, size_t k, size_t c)
{
	const unsigned char *p = in + c * PGZ_CHUNK;
	const unsigned char *e = c == k - 1 ? in + n : p + PGZ_CHUNK;

	return chi2(p, PGZ_SAMPLE / 2, e - PGZ_SAMPLE / 2, PGZ_SAMPLE / 2) <=
	       PGZ_CHI_MEAN + 2 * PGZ_CHI_BASE;
}

/*
 * Compress @sl's block, not noise as a whole, as runs (see DESIGN).
 * Candidates come from sample_flat() on every PGZ_RUN_MIN-th chunk (a run
 * that long holds one), grown both ways while the neighbours' samples are
 * flat, then put through block_is_noise().  With no noise run, the block
 * is one deflated run: the same bytes as without the scan.
 */
static int compress_runs(z_stream *zs, struct pgz_slot *sl)
{
	const unsigned char *in = sl->buf + ARC_DICT;
	size_t n = sl->in_len, k = n / PGZ_CHUNK, done = 0, lo = 0, i, a, b;
	int rc;

	for (i = PGZ_RUN_MIN - 1; i < k; lo = b + 1, i = b + PGZ_RUN_MIN) {
		size_t off, end;

		b = i;
		if (!sample_flat(in, n, k, i))
			continue;
		for (a = i; a > lo && sample_flat(in, n, k, a - 1); a--)
			;
		for (b = i + 1; b < k && sample_flat(in, n, k, b); b++)
			;
		off = a * PGZ_CHUNK;
		end = b == k ? n : b * PGZ_CHUNK;
		if (b - a < PGZ_RUN_MIN || end - off == n ||	/* the block: not noise */
		    !block_is_noise(in + off, end - off, window(sl, off)))
			continue;
		if (off > done && (rc = deflate_run(zs, sl, done, off - done, 0)))
			return rc;
		if ((rc = store_run(sl, in + off, end - off, sl->last && end == n)))
			return rc;
		done = end;
	}
	/* the rest; an empty stream still gets its final block */
	return done < n || !n ? deflate_run(zs, sl, done, n - done, sl->last) : 0;
}

/* Compress one slot, stored or as runs with @zs; sets out_len and crc. */
static int compress_slot(z_stream *zs, struct pgz_slot *sl)
{
	const unsigned char *in = sl->buf + ARC_DICT;
	int rc;

	sl->out_len = 0;
	if (block_is_noise(in, sl->in_len, sl->dict_len))
		rc = store_run(sl, in, sl->in_len, sl->last);
	else
		rc = compress_runs(zs, sl);
	if (rc)
		return rc;
	sl->crc = (uint32_t)crc32(0L, in, (uInt)sl->in_len);
	return 0;
}

static void *pgz_worker(void *arg)
{
	struct pgz *z = arg;
	z_stream zs;
	int init_rc = z_init(&zs, z->level);	/* one stream per worker, reused */

	for (;;) {
		struct pgz_slot *sl;
		int rc;

		pthread_mutex_lock(&z->lock);
		while (!z->qhead && !z->stopping)
			pthread_cond_wait(&z->work, &z->lock);
		if (z->stopping) {
			pthread_mutex_unlock(&z->lock);
			break;
		}
		sl = z->qhead;
		z->qhead = sl->next;
		if (!z->qhead)
			z->qtail = &z->qhead;
		pthread_mutex_unlock(&z->lock);

		rc = init_rc ? init_rc : compress_slot(&zs, sl);

		pthread_mutex_lock(&z->lock);
		sl->err = rc;
		sl->state = SLOT_DONE;
		pthread_cond_signal(&z->done);	/* only the reader waits on it */
		pthread_mutex_unlock(&z->lock);
	}
	if (!init_rc)
		deflateEnd(&zs);
	return NULL;
}

int pgz_new(int level, int threads, size_t block_size, uint64_t total, arc_fill_fn fill,
	    void *ctx, struct pgz **out)
{
	struct pgz *z = NULL;
	size_t in_cap, i;
	uLong bound;

	if (level < 1 || level > 9 || threads < 1 || threads > ARC_THREADS_MAX ||
	    block_size < ARC_BLOCK_MIN || block_size > ARC_BLOCK_MAX || !fill)
		return -EINVAL;
	z = calloc(1, sizeof(*z));
	if (!z)
		return -ENOMEM;
	z->level = level;
	z->threads = threads;
	z->block_size = block_size;
	z->total = total;
	z->fill = fill;
	z->ctx = ctx;
	z->nblocks = total ? (total + block_size - 1) / block_size : 1;
	z->qtail = &z->qhead;
	pthread_mutex_init(&z->lock, NULL);
	pthread_cond_init(&z->work, NULL);
	pthread_cond_init(&z->done, NULL);

	/* a single block needs no dictionary and no more room than its bytes */
	in_cap = z->nblocks == 1 ? (size_t)total : block_size;
	z->nslots = z->nblocks == 1 ? 1 : (size_t)2 * (size_t)threads + 2 + PGZ_AHEAD;
	if (z->nslots > z->nblocks)
		z->nslots = (size_t)z->nblocks;
	bound = deflateBound(NULL, (uLong)in_cap) + 64;	/* + sync flush marker */
	z->slots = calloc(z->nslots, sizeof(*z->slots));
	z->tids = calloc((size_t)threads, sizeof(*z->tids));
	if (!z->slots || !z->tids)
		goto fail;
	for (i = 0; i < z->nslots; i++) {
		z->slots[i].buf = malloc(ARC_DICT + in_cap);
		z->slots[i].out = malloc(bound);
		z->slots[i].out_cap = bound;
		if (!z->slots[i].buf || !z->slots[i].out)
			goto fail;
	}

	z->edge[0] = 0x1f;	/* gzip header: deflate, no name, mtime 0, Unix */
	z->edge[1] = 0x8b;
	z->edge[2] = 8;
	z->edge[8] = level == 9 ? 2 : level == 1 ? 4 : 0;
	z->edge[9] = 3;
	z->edge_len = 10;
	z->phase = PGZ_HEADER;
	z->crc = (uint32_t)crc32(0L, Z_NULL, 0);
	*out = z;
	return 0;

fail:
	pgz_free(z);
	return -ENOMEM;
}

int pgz_workers(const struct pgz *z)
{
	return z ? z->nworkers : 0;
}

static void start_workers(struct pgz *z)
{
	int want = z->threads;

	z->started = 1;
	if ((uint64_t)want > z->nblocks)
		want = (int)z->nblocks;
	while (z->nworkers < want) {
		if (pthread_create(&z->tids[z->nworkers], NULL, pgz_worker, z))
			break;	/* run with what started; none means inline */
		z->nworkers++;
	}
}

/* Fill block z->next_in into its slot from the source. */
static int fill_block(struct pgz *z)
{
	uint64_t b = z->next_in;
	struct pgz_slot *sl = &z->slots[b % z->nslots];
	uint64_t left = z->total - b * z->block_size;
	size_t want = left < z->block_size ? (size_t)left : z->block_size;
	ssize_t got;

	sl->dict_len = 0;
	if (b > 0) {
		const struct pgz_slot *prev = &z->slots[(b - 1) % z->nslots];
		size_t avail = prev->dict_len + prev->in_len;
		size_t d = avail < ARC_DICT ? avail : ARC_DICT;

		memcpy(sl->buf + ARC_DICT - d, prev->buf + ARC_DICT + prev->in_len - d, d);
		sl->dict_len = d;
	}
	got = want ? z->fill(z->ctx, sl->buf + ARC_DICT, want) : 0;
	if (got < 0)
		return (int)got;
	if ((size_t)got != want)
		return -EIO;	/* the source ended before its announced size */
	sl->in_len = want;
	sl->last = b == z->nblocks - 1;
	sl->out_pos = 0;
	sl->err = 0;
	z->next_in++;
	return 0;
}

/* Make z->cur the next block in order, filling and queueing what fits. */
static int next_block(struct pgz *z)
{
	struct pgz_slot *sl;
	int rc;

	if (!z->started && z->nblocks > 1)
		start_workers(z);

	if (!z->nworkers) {
		sl = &z->slots[z->next_in % z->nslots];
		rc = fill_block(z);
		if (rc)
			return rc;
		if (!z->zs_ready) {
			rc = z_init(&z->zs, z->level);
			if (rc)
				return rc;
			z->zs_ready = 1;
		}
		rc = compress_slot(&z->zs, sl);
		if (rc)
			return rc;
	} else {
		while (z->next_in < z->nblocks && z->next_in < z->next_out + z->nslots) {
			sl = &z->slots[z->next_in % z->nslots];
			rc = fill_block(z);
			if (rc)
				return rc;
			pthread_mutex_lock(&z->lock);
			sl->state = SLOT_QUEUED;
			sl->next = NULL;
			*z->qtail = sl;
			z->qtail = &sl->next;
			pthread_cond_signal(&z->work);
			pthread_mutex_unlock(&z->lock);
		}
		sl = &z->slots[z->next_out % z->nslots];
		pthread_mutex_lock(&z->lock);
		while (sl->state != SLOT_DONE)
			pthread_cond_wait(&z->done, &z->lock);
		sl->state = SLOT_IDLE;
		pthread_mutex_unlock(&z->lock);
		if (sl->err)
			return sl->err;
	}
	z->crc = (uint32_t)crc32_combine(z->crc, sl->crc, (z_off_t)sl->in_len);
	z->cur = sl;
	return 0;
}

static size_t copy_edge(struct pgz *z, unsigned char *dst, size_t len)
{
	size_t n = z->edge_len - z->edge_pos;

	if (n > len)
		n = len;
	memcpy(dst, z->edge + z->edge_pos, n);
	z->edge_pos += n;
	return n;
}

static void put_le32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
	p[2] = (unsigned char)(v >> 16);
	p[3] = (unsigned char)(v >> 24);
}

ssize_t pgz_read(struct pgz *z, void *buf, size_t len)
{
	unsigned char *dst = buf;
	size_t n = 0;
	int rc;

	if (z->err)
		return z->err;
	if (len > SSIZE_MAX)
		len = SSIZE_MAX;
	while (n < len) {
		switch (z->phase) {
		case PGZ_HEADER:
			n += copy_edge(z, dst + n, len - n);
			if (z->edge_pos == z->edge_len)
				z->phase = PGZ_BODY;
			break;
		case PGZ_BODY:
			if (z->cur) {
				struct pgz_slot *sl = z->cur;
				size_t k = sl->out_len - sl->out_pos;

				if (k > len - n)
					k = len - n;
				memcpy(dst + n, sl->out + sl->out_pos, k);
				sl->out_pos += k;
				n += k;
				if (sl->out_pos == sl->out_len) {
					z->cur = NULL;
					z->next_out++;	/* frees the slot for block next_out + nslots */
				}
			} else if (z->next_out == z->nblocks) {
				put_le32(z->edge, z->crc);
				put_le32(z->edge + 4, (uint32_t)z->total);	/* ISIZE: mod 2^32 */
				z->edge_len = 8;
				z->edge_pos = 0;
				z->phase = PGZ_TRAILER;
			} else {
				rc = next_block(z);
				if (rc) {
					z->err = rc;
					return rc;
				}
			}
			break;
		case PGZ_TRAILER:
			n += copy_edge(z, dst + n, len - n);
			if (z->edge_pos == z->edge_len)
				z->phase = PGZ_END;
			break;
		case PGZ_END:
			return (ssize_t)n;
		}
	}
	return (ssize_t)n;
}

void pgz_free(struct pgz *z)
{
	size_t i;
	int t;

	if (!z)
		return;
	pthread_mutex_lock(&z->lock);
	z->stopping = 1;
	pthread_cond_broadcast(&z->work);
	pthread_mutex_unlock(&z->lock);
	for (t = 0; t < z->nworkers; t++)
		pthread_join(z->tids[t], NULL);
	if (z->zs_ready)
		deflateEnd(&z->zs);
	for (i = 0; z->slots && i < z->nslots; i++) {
		free(z->slots[i].buf);
		free(z->slots[i].out);
	}
	free(z->slots);
	free(z->tids);
	pthread_cond_destroy(&z->done);
	pthread_cond_destroy(&z->work);
	pthread_mutex_destroy(&z->lock);
	free(z);
}

ssize_t arc_mem_fill(void *ctx, void *buf, size_t len)
{
	struct arc_mem *m = ctx;

	if (len > m->len - m->pos)
		len = m->len - m->pos;
	memcpy(buf, m->p + m->pos, len);
	m->pos += len;
	return (ssize_t)len;
}
