/*
 * arc_bench.c - throughput driver for the archive stream (built, not installed).
 *
 *   arc_bench FILE [FORMAT [LEVEL [THREADS [BLOCK]]]] > OUT
 *   arc_bench FILE pgz [LEVEL [THREADS [BLOCK]]] > OUT
 *   arc_bench FILE digest
 *
 * Pulls the whole stream in 1 MiB reads and writes it to stdout; prints
 * the format, bytes in/out, seconds, MB/s of input and the sha256 to stderr.
 *
 * "pgz" times the compression step alone: the file is read into memory
 * first, then gzipped by pgz.c (no tar, no pread, no sha256 in the timed
 * part), so the figure is that of the deflate workers and the reader
 * thread's copying.  THREADS 0 (the default) is one per online CPU, as
 * for the stream.  CPU seconds (user + sys of the whole process, all
 * threads) are printed as well: on a busy box they move less than wall
 * time.
 *
 * "digest" times common/digest.c on the file in memory: MD5, sha256, and
 * the MD5 + two sha256 an uncompressed upload makes of every byte, fed
 * together (one pass), one after the other, and as the uploader feeds them
 * (16 MiB parts, the MD5s in two lanes), with the one-pass kernel and with
 * the portable code.
 */
#include "archive/arc.h"
#include "archive/arc_i.h"
#include "common/digest.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static unsigned char buf[1 << 20];

static long arg_num(const char *s)
{
	char *end = NULL;
	long v = strtol(s, &end, 10);

	return end && *end == '\0' ? v : -1;
}

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu_now(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int write_all(const unsigned char *p, size_t n)
{
	while (n) {
		ssize_t w = write(STDOUT_FILENO, p, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "arc_bench: write failed: %m\n");
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* The "pgz" mode: compression only, from memory. */
static int bench_pgz(int fd, const struct stat *st, const struct arc_opts *o)
{
	struct arc_mem m = { .len = (size_t)st->st_size };
	struct pgz *z = NULL;
	unsigned char *data = malloc(m.len ? m.len : 1);
	uint64_t out = 0;
	double t0, c0, sec, cpu;
	size_t got = 0;
	ssize_t r;
	int threads = o->threads, rc;

	if (!data) {
		fprintf(stderr, "arc_bench: out of memory\n");
		return 1;
	}
	while (got < m.len && (r = read(fd, data + got, m.len - got)) > 0)
		got += (size_t)r;
	if (got != m.len) {
		fprintf(stderr, "arc_bench: short read\n");
		free(data);
		return 1;
	}
	m.p = data;
	if (!threads) {
		long cpus = sysconf(_SC_NPROCESSORS_ONLN);

		threads = cpus > 0 ? (int)(cpus < ARC_THREADS_MAX ? cpus : ARC_THREADS_MAX) : 1;
	}
	t0 = now();
	c0 = cpu_now();
	rc = pgz_new(o->level ? o->level : 6, threads,
		     o->block_size ? o->block_size : ARC_BLOCK_DEFAULT, m.len, arc_mem_fill, &m, &z);
	if (rc) {
		errno = -rc;
		fprintf(stderr, "arc_bench: pgz_new failed: %m\n");
		free(data);
		return 1;
	}
	while ((r = pgz_read(z, buf, sizeof(buf))) > 0) {
		if (write_all(buf, (size_t)r))
			break;
		out += (uint64_t)r;
	}
	pgz_free(z);
	sec = now() - t0;
	cpu = cpu_now() - c0;
	free(data);
	if (r != 0) {
		if (r < 0) {
			errno = (int)-r;
			fprintf(stderr, "arc_bench: pgz_read failed: %m\n");
		}
		return 1;
	}
	fprintf(stderr, "pgz in=%zu out=%" PRIu64 " %.3f s %.1f MB/s cpu=%.3f s\n", m.len, out, sec,
		(double)m.len / sec / 1e6, cpu);
	return 0;
}

/*
 * The "digest" mode: @what 1 = MD5, 2 = sha256, 4 = a second sha256; @apart:
 * one state a pass; 8: parts of 16 MiB, the MD5s in lanes, the second
 * sha256 per part.
 */
static double digest_run(const unsigned char *p, size_t len, int what, int apart)
{
	const size_t part = (size_t)16 << 20;
	struct digest_md5 m;
	struct digest_sha256 a, b;
	struct digest_lanes l;
	struct digest_md5 *pm = what & 1 ? &m : NULL;
	struct digest_sha256 *pa = what & 2 ? &a : NULL, *pb = what & 4 ? &b : NULL;
	unsigned char out[16];
	double t0 = now();

	digest_md5_init(&m);
	digest_sha256_init(&a);
	digest_sha256_init(&b);
	digest_lanes_init(&l);
	for (size_t off = 0; off < len; off += sizeof(buf)) {
		size_t k = len - off < sizeof(buf) ? len - off : sizeof(buf);

		if (what & 8) {
			if (off % part == 0) {
				if (off >= 2 * part)
					digest_lanes_take_prev(&l, out);
				digest_lanes_start(&l, p + off, part, off ? part : 0);
				digest_sha256_init(&b);
			}
			digest_update_lanes(&l, &a, &b, p + off, k);
		} else if (apart) {
			digest_update(pm, NULL, NULL, p + off, k);
			digest_update(NULL, pa, NULL, p + off, k);
			digest_update(NULL, NULL, pb, p + off, k);
		} else {
			digest_update(pm, pa, pb, p + off, k);
		}
	}
	if (what & 8 && len) {
		if (len > part)
			digest_lanes_take_prev(&l, out);
		digest_lanes_take_cur(&l, (len - 1) % part + 1, out);
	}
	return (double)len / (now() - t0) / 1e6;
}

static int bench_digest(int fd, const struct stat *st)
{
	static const struct {
		const char *name;
		int what, apart;
	} runs[] = {
		{ "md5", 1, 0 },
		{ "sha256", 2, 0 },
		{ "md5+sha256+sha256 one pass", 7, 0 },
		{ "md5, sha256, sha256 apart", 7, 1 },
		{ "md5 in lanes + sha256 x 2", 8, 0 },
	};
	size_t len = (size_t)st->st_size, got = 0;
	unsigned char *data = malloc(len ? len : 1);
	ssize_t r;

	if (!data) {
		fprintf(stderr, "arc_bench: out of memory\n");
		return 1;
	}
	while (got < len && (r = read(fd, data + got, len - got)) > 0)
		got += (size_t)r;
	if (got != len) {
		fprintf(stderr, "arc_bench: short read\n");
		free(data);
		return 1;
	}
	for (int portable = 0; portable < 2; portable++) {
		digest_portable(portable);
		if (!portable && !digest_accelerated())
			continue;
		for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]); i++)
			fprintf(stderr, "digest %-8s %-28s %7.0f MB/s\n",
				portable ? "portable" : "kernel", runs[i].name,
				digest_run(data, len, runs[i].what, runs[i].apart));
	}
	free(data);
	return 0;
}

int main(int argc, char **argv)
{
	struct arc_opts o = { .format = ARC_TAR_GZ };
	struct arc_stream *s = NULL;
	struct stat st;
	char hex[65] = "";
	ssize_t r;
	double t0, sec;
	int fd = -1, rc = 1, pgz_only = argc > 2 && !strcmp(argv[2], "pgz");
	int digest = argc > 2 && !strcmp(argv[2], "digest");

	if (argc < 2 ||
	    (argc > 2 && !pgz_only && !digest && arc_format_parse(argv[2], &o.format))) {
		fprintf(stderr,
			"usage: arc_bench FILE [FORMAT|pgz [LEVEL [THREADS [BLOCK]]]]\n"
			"       arc_bench FILE digest\n");
		return 2;
	}
	if (argc > 3)
		o.level = (int)arg_num(argv[3]);
	if (argc > 4)
		o.threads = (int)arg_num(argv[4]);
	if (argc > 5)
		o.block_size = (size_t)arg_num(argv[5]);
	fd = open(argv[1], O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st)) {
		fprintf(stderr, "arc_bench: cannot open '%s': %m\n", argv[1]);
		goto out;
	}
	if (pgz_only || digest) {
		rc = digest ? bench_digest(fd, &st) : bench_pgz(fd, &st, &o);
		goto out;
	}
	t0 = now();
	rc = arc_stream_open_file(&o, fd, argv[1], &st, &s);
	if (rc) {
		errno = -rc;
		fprintf(stderr, "arc_bench: open failed: %m\n");
		rc = 1;
		goto out;
	}
	while ((r = arc_stream_read(s, buf, sizeof(buf))) > 0) {
		if (write_all(buf, (size_t)r)) {
			rc = 1;
			goto out;
		}
	}
	if (r < 0) {
		errno = (int)-r;
		fprintf(stderr, "arc_bench: read failed: %m\n");
		rc = 1;
		goto out;
	}
	sec = now() - t0;
	arc_stream_sha256(s, hex);
	fprintf(stderr, "%s in=%" PRIu64 " out=%" PRIu64 " %.2f s %.1f MB/s sha256=%s\n",
		arc_format_name(arc_stream_format(s)), arc_stream_bytes_in(s),
		arc_stream_bytes_out(s), sec, (double)arc_stream_bytes_in(s) / sec / 1e6, hex);
	rc = 0;
out:
	arc_stream_free(s);
	if (fd >= 0)
		close(fd);
	return rc;
}
