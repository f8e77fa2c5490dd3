/*
 * arc_bench.c - throughput driver for the archive stream (built, not installed).
 *
 *   arc_bench FILE [FORMAT [LEVEL [THREADS [BLOCK]]]] > OUT
 *
 * Pulls the whole stream in 1 MiB reads and writes it to stdout; prints
 * the format, bytes in/out, seconds, MB/s of input and the sha256 to stderr.
 */
#include "archive/arc.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long arg_num(const char *s)
{
	char *end = NULL;
	long v = strtol(s, &end, 10);

	return end && *end == '\0' ? v : -1;
}

int main(int argc, char **argv)
{
	struct arc_opts o = { .format = ARC_TAR_GZ };
	struct arc_stream *s = NULL;
	struct timespec t0, t1;
	struct stat st;
	static unsigned char buf[1 << 20];
	char hex[65] = "";
	ssize_t r;
	double sec;
	int fd = -1, rc = 1;

	if (argc < 2 || (argc > 2 && arc_format_parse(argv[2], &o.format))) {
		fprintf(stderr, "usage: arc_bench FILE [FORMAT [LEVEL [THREADS [BLOCK]]]]\n");
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
	clock_gettime(CLOCK_MONOTONIC, &t0);
	rc = arc_stream_open_file(&o, fd, argv[1], &st, &s);
	if (rc) {
		errno = -rc;
		fprintf(stderr, "arc_bench: open failed: %m\n");
		rc = 1;
		goto out;
	}
	while ((r = arc_stream_read(s, buf, sizeof(buf))) > 0) {
		if (write(STDOUT_FILENO, buf, (size_t)r) != r) {
			fprintf(stderr, "arc_bench: write failed: %m\n");
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
	clock_gettime(CLOCK_MONOTONIC, &t1);
	sec = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
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
