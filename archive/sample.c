/*
 * sample.c - does this file compress?  ARC_AUTO asks before it starts the
 * stream: up to ARC_SAMPLE_COUNT pieces of ARC_SAMPLE_CHUNK bytes, spread
 * evenly from the start to the end of the file (the whole file when it is
 * smaller than that), each deflated on its own at the stream's level.
 * Reading them is the only time a byte may be read twice.
 */
#include "archive/arc.h"
#include "archive/arc_i.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

/* Read up to @len bytes at @off; returns the count (short at EOF) or -errno. */
static ssize_t read_at(int fd, unsigned char *buf, size_t len, uint64_t off)
{
	size_t n = 0;

	while (n < len) {
		ssize_t r = pread(fd, buf + n, len - n, (off_t)(off + n));

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	return (ssize_t)n;
}

int arc_sample_compressible(int fd, uint64_t size, int level)
{
	const uint64_t whole = (uint64_t)ARC_SAMPLE_CHUNK * ARC_SAMPLE_COUNT;
	unsigned char *in = NULL, *out = NULL;
	uint64_t total_in = 0, total_out = 0;
	size_t out_cap, want;
	z_stream zs;
	int zs_ready = 0, i, count, rc;

	if (fd < 0 || level < 0 || level > 9)
		return -EINVAL;
	if (level == 0)
		level = 6;
	if (size == 0)
		return 1;
	memset(&zs, 0, sizeof(zs));
	if (deflateInit2(&zs, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
		return -ENOMEM;
	zs_ready = 1;
	/* one piece: the whole file when it fits in the sample, else a chunk */
	count = size <= whole ? 1 : ARC_SAMPLE_COUNT;
	want = count == 1 ? (size_t)size : ARC_SAMPLE_CHUNK;
	out_cap = deflateBound(&zs, (uLong)want);
	in = malloc(want);
	out = malloc(out_cap);
	if (!in || !out) {
		rc = -ENOMEM;
		goto out;
	}
	for (i = 0; i < count; i++) {
		uint64_t off = count == 1 ? 0 : (size - want) / (uint64_t)(count - 1) * (uint64_t)i;
		ssize_t got = read_at(fd, in, want, off);

		if (got < 0) {
			rc = (int)got;
			goto out;
		}
		if (got == 0)
			continue;
		deflateReset(&zs);
		zs.next_in = in;
		zs.avail_in = (uInt)got;
		zs.next_out = out;
		zs.avail_out = (uInt)out_cap;
		if (deflate(&zs, Z_FINISH) != Z_STREAM_END) {
			rc = -EIO;
			goto out;
		}
		total_in += (uint64_t)got;
		total_out += out_cap - zs.avail_out;
	}
	/* "shrinks by at least 10%"; an empty sample (file emptied) counts as yes */
	rc = total_in == 0 || total_out * 10 <= total_in * 9;
out:
	if (zs_ready)
		deflateEnd(&zs);
	free(in);
	free(out);
	return rc;
}
