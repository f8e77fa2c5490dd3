/*
 * arc_i.h - internals shared by the archive module's own .c files and
 * tests/unit/test_arc*.c.  Nothing else includes this.
 */
#ifndef MGMTFS_ARC_I_H
#define MGMTFS_ARC_I_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define ARC_DICT	   32768u		/* deflate window: dictionary per block */
#define ARC_BLOCK_DEFAULT  (128u * 1024u)
#define ARC_BLOCK_MIN	   512u
#define ARC_BLOCK_MAX	   (64u * 1024u * 1024u)
#define ARC_THREADS_MAX	   64
#define ARC_READ_CHUNK	   (1024u * 1024u)	/* largest single pread */
#define ARC_AUTO_SMALL	   4096u		/* under this, ARC_AUTO is tar.gz */
#define ARC_SAMPLE_CHUNK   (64u * 1024u)
#define ARC_SAMPLE_COUNT   4

/*
 * Produce the next up to @len bytes of an uncompressed byte source into @buf.
 * Returns the number of bytes (less than @len only at its end) or -errno.
 */
typedef ssize_t (*arc_fill_fn)(void *ctx, void *buf, size_t len);

/* A source over bytes in memory (benchmarks, tests): arc_mem_fill with a struct arc_mem *. */
struct arc_mem {
	const unsigned char *p;
	size_t len;
	size_t pos;
};
ssize_t arc_mem_fill(void *ctx, void *buf, size_t len);

/* Parallel gzip of a source of exactly @total bytes (pigz-style blocks). */
struct pgz;

/*
 * @level 1..9, @threads >= 1 workers (started lazily by the first
 * pgz_read when the source spans more than one block), @block_size in
 * [ARC_BLOCK_MIN, ARC_BLOCK_MAX].  @fill/@ctx are borrowed until pgz_free
 * and are only ever called from the thread calling pgz_read.
 * Returns 0 or -ENOMEM / -EINVAL.
 */
int pgz_new(int level, int threads, size_t block_size, uint64_t total, arc_fill_fn fill,
	    void *ctx, struct pgz **out);
/* Same contract as arc_stream_read(); errors are sticky. */
ssize_t pgz_read(struct pgz *z, void *buf, size_t len);
/* Worker threads running now (0 before the first multi-block read). */
int pgz_workers(const struct pgz *z);
void pgz_free(struct pgz *z);	/* NULL is a no-op; stops and joins the workers */

struct arc_stream;
/* Compression threads the stream runs now (for tests). */
int arc_stream_workers(const struct arc_stream *s);

#endif
