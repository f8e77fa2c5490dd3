/*
 * test_arc.c - the archive stream: tar headers parsed back field by field,
 * then every format streamed to a file for a range of sizes around the
 * block boundaries and checked with the real tools (gzip -t, tar -x, cmp)
 * and an independent sha256; then pgz on its own, from memory: random
 * blocks and runs of random chunks inside blocks stored rather than
 * deflated, the output gunzipped by zlib and gzip -t.  Each test has its
 * own mkdtemp directory.
 */
#include "archive/arc.h"
#include "archive/arc_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <setjmp.h>
#include <stddef.h>
#include <cmocka.h>

#include "common/digest.h"

#include <openssl/evp.h>
#include <zlib.h>

#define SMALL_BLOCK 4096u
#define MTIME	    1600000000

struct fixture {
	char dir[256];
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	const char *tmp = getenv("TMPDIR");

	if (!f)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "%s/test_arc.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(f->dir)) {
		free(f);
		return -1;
	}
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[512];
	int rc;

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	rc = system(cmd);
	free(f);
	return rc == 0 ? 0 : -1;
}

/* Run a shell command built from @fmt; returns its exit status. */
__attribute__((format(printf, 1, 2))) static int sh(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	int rc;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	rc = system(cmd);
	if (rc == -1 || !WIFEXITED(rc))
		return -1;
	return WEXITSTATUS(rc);
}

/* Deterministic content: random bytes, text, or both mixed per 3 KiB. */
enum content { RANDOM, TEXT, MIXED };

static void fill_content(unsigned char *p, size_t n, enum content kind, uint64_t seed)
{
	static const char *const words[] = { "the ", "archive ", "stream ", "of ",
					     "blocks ", "is ", "pulled ", "and\n" };
	uint64_t x = seed * 2654435761u + 88172645463325252ull;
	size_t i = 0;

	while (i < n) {
		int rnd = kind == RANDOM || (kind == MIXED && (i / 3072) % 2 == 0);

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		if (rnd) {
			p[i++] = (unsigned char)(x >> 24);
		} else {
			const char *w = words[x % 8];

			while (*w && i < n)
				p[i++] = (unsigned char)*w++;
		}
	}
}

static void make_file(const char *path, size_t n, enum content kind, uint64_t seed)
{
	unsigned char *p = malloc(n ? n : 1);
	struct timespec ts[2] = { { .tv_sec = MTIME }, { .tv_sec = MTIME } };
	int fd;

	assert_non_null(p);
	fill_content(p, n, kind, seed);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, p, n), (ssize_t)n);
	assert_int_equal(fchmod(fd, 0640), 0);
	assert_int_equal(futimens(fd, ts), 0);
	close(fd);
	free(p);
}

static void sha256_file(const char *path, char *hex)
{
	static const char digits[] = "0123456789abcdef";
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char buf[65536], d[32];
	unsigned int dl = 0, i;
	ssize_t r;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	assert_true(fd >= 0);
	assert_non_null(md);
	assert_int_equal(EVP_DigestInit_ex(md, EVP_sha256(), NULL), 1);
	while ((r = read(fd, buf, sizeof(buf))) > 0)
		EVP_DigestUpdate(md, buf, (size_t)r);
	assert_int_equal(r, 0);
	EVP_DigestFinal_ex(md, d, &dl);
	for (i = 0; i < 32; i++) {
		hex[2 * i] = digits[d[i] >> 4];
		hex[2 * i + 1] = digits[d[i] & 15];
	}
	hex[64] = '\0';
	EVP_MD_CTX_free(md);
	close(fd);
}

/*
 * Stream @src (tar name @name) with @o into @dst, reading @chunk bytes at a
 * time.  Returns 0 or the stream's error; *fmt_out, *in_out, *out_out tell
 * what was done, @hex the sha256 (when 0 is returned).
 */
static int stream_to(const struct arc_opts *o, const char *src, const char *name,
		     const char *dst, size_t chunk, enum arc_format *fmt_out, uint64_t *in_out,
		     char *hex)
{
	struct arc_stream *s = NULL;
	unsigned char *buf = malloc(chunk);
	uint64_t total = 0;
	struct stat st;
	ssize_t r;
	int fd = open(src, O_RDONLY | O_CLOEXEC);
	int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int rc;

	assert_non_null(buf);
	assert_true(fd >= 0 && out >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	rc = arc_stream_open_file(o, fd, name, &st, &s);
	assert_int_equal(rc, 0);
	while ((r = arc_stream_read(s, buf, chunk)) > 0) {
		assert_int_equal(write(out, buf, (size_t)r), r);
		total += (uint64_t)r;
		if ((size_t)r < chunk)	/* short only at the end */
			assert_int_equal(arc_stream_read(s, buf, chunk), 0);
	}
	rc = r < 0 ? (int)r : 0;
	if (!rc) {
		assert_int_equal(arc_stream_bytes_out(s), total);
		assert_int_equal(arc_stream_sha256(s, hex), 0);
	}
	*fmt_out = arc_stream_format(s);
	*in_out = arc_stream_bytes_in(s);
	arc_stream_free(s);
	close(out);
	close(fd);
	free(buf);
	return rc;
}

/*
 * The per-part hashes that ride on the stream (arc_stream_ride): read a
 * stream of every format in "parts" of @part bytes into two buffers in turn,
 * starting a part in the MD5 lanes and a fresh sha256 at every boundary as
 * the uploader does, and compare each part's sha256, and its MD5 once the
 * part after it is read, with OpenSSL's of the bytes read out; the
 * content's sha256 must still be the file's.
 */
static void ride_parts(struct fixture *f, enum arc_format fmt, size_t size, size_t part)
{
	struct arc_opts o = { .format = fmt, .threads = 2, .block_size = SMALL_BLOCK, .level = 1 };
	char src[300], hex[65], want[65];
	unsigned char *bufs[2] = { malloc(part), malloc(part) }, dm[16], ds[32], rm[16], rs[32];
	size_t lens[2] = { 0, 0 };
	struct digest_lanes l;
	struct arc_stream *s = NULL;
	struct stat st;
	int fd, parts = 0;

	assert_non_null(bufs[0]);
	assert_non_null(bufs[1]);
	snprintf(src, sizeof(src), "%s/ride.bin", f->dir);
	make_file(src, size, MIXED, size);
	fd = open(src, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(arc_stream_open_file(&o, fd, "ride.bin", &st, &s), 0);
	digest_lanes_init(&l);
	for (int k = 0;; k++) {
		unsigned char *buf = bufs[k % 2], *prev = bufs[!(k % 2)];
		struct digest_sha256 h;
		size_t got = 0;
		ssize_t r;

		digest_sha256_init(&h);
		digest_lanes_start(&l, buf, part, lens[!(k % 2)]);
		arc_stream_ride(s, &l, &h);
		/* odd read sizes: pieces that do not fall on 64-byte blocks */
		while (got < part && (r = arc_stream_read(s, buf + got,
							   part - got < 777 ? part - got : 777)) > 0)
			got += (size_t)r;
		if (k > 0) {
			digest_lanes_take_prev(&l, dm);
			assert_int_equal(EVP_Digest(prev, lens[!(k % 2)], rm, NULL, EVP_md5(), NULL),
					 1);
			assert_memory_equal(dm, rm, 16);
		}
		if (!got)
			break;
		lens[k % 2] = got;
		digest_sha256_final(&h, ds);
		assert_int_equal(EVP_Digest(buf, got, rs, NULL, EVP_sha256(), NULL), 1);
		assert_memory_equal(ds, rs, 32);
		parts++;
	}
	assert_true(parts >= 1 || (fmt == ARC_NONE && size == 0));
	arc_stream_ride(s, NULL, NULL);
	assert_int_equal(arc_stream_sha256(s, hex), 0);
	sha256_file(src, want);
	assert_string_equal(hex, want);
	arc_stream_free(s);
	close(fd);
	free(bufs[0]);
	free(bufs[1]);
}

static void test_stream_ride(void **state)
{
	static const enum arc_format fmts[] = { ARC_TAR_GZ, ARC_GZIP, ARC_TAR, ARC_NONE };

	for (size_t i = 0; i < sizeof(fmts) / sizeof(fmts[0]); i++) {
		ride_parts(*state, fmts[i], 0, 4096);
		ride_parts(*state, fmts[i], 1000, 4096);
		ride_parts(*state, fmts[i], 300000, 65536);	/* 64-aligned parts */
		ride_parts(*state, fmts[i], 300001, 50001);	/* parts off the 64-byte grid */
	}
}

/* Check @arc (format @fmt) holds @src as @name, with the real tools. */
static void verify(struct fixture *f, enum arc_format fmt, const char *arc, const char *src,
		   const char *name)
{
	char ex[512], path[1024];
	struct stat st;

	switch (fmt) {
	case ARC_TAR_GZ:
	case ARC_TAR:
		if (fmt == ARC_TAR_GZ)
			assert_int_equal(sh("gzip -t '%s'", arc), 0);
		snprintf(ex, sizeof(ex), "%s/ex", f->dir);
		assert_int_equal(sh("rm -rf '%s' && mkdir '%s' && tar -x%sf '%s' -C '%s'", ex, ex,
				    fmt == ARC_TAR_GZ ? "z" : "", arc, ex),
				 0);
		snprintf(path, sizeof(path), "%s/%s", ex, name);
		assert_int_equal(sh("cmp '%s' '%s'", path, src), 0);
		assert_int_equal(stat(path, &st), 0);
		assert_int_equal(st.st_mode & 07777, 0640);
		assert_int_equal(st.st_mtime, MTIME);
		assert_int_equal(sh("rm -rf '%s'", ex), 0);
		break;
	case ARC_GZIP:
		assert_int_equal(sh("gzip -t '%s' && gzip -dc '%s' | cmp - '%s'", arc, arc, src), 0);
		break;
	case ARC_NONE:
		assert_int_equal(sh("cmp '%s' '%s'", arc, src), 0);
		break;
	default:
		fail();
	}
}

static void roundtrip(struct fixture *f, enum arc_format fmt, size_t size, int threads,
		      size_t block, size_t chunk)
{
	struct arc_opts o = { .format = fmt, .level = 6, .threads = threads, .block_size = block };
	char src[512], arc[512], name[64], hex[65], want[65];
	enum arc_format done;
	uint64_t in = 0;

	snprintf(name, sizeof(name), "f%zu.bin", size);
	snprintf(src, sizeof(src), "%s/%s", f->dir, name);
	snprintf(arc, sizeof(arc), "%s/out%s", f->dir, arc_format_suffix(fmt));
	make_file(src, size, MIXED, size);
	assert_int_equal(stream_to(&o, src, name, arc, chunk, &done, &in, hex), 0);
	assert_int_equal(done, fmt);
	assert_int_equal(in, size);
	sha256_file(src, want);
	assert_string_equal(hex, want);
	verify(f, fmt, arc, src, name);
	unlink(arc);
	unlink(src);
}

/* ---- tar headers ---- */

static uint64_t parse_octal(const unsigned char *p, size_t width)
{
	uint64_t v = 0;
	size_t i;

	for (i = 0; i < width && p[i] >= '0' && p[i] <= '7'; i++)
		v = v * 8 + (uint64_t)(p[i] - '0');
	return v;
}

static void check_ustar(const unsigned char *h)
{
	unsigned int sum = 0, i;

	assert_memory_equal(h + 257, "ustar\0", 6);
	assert_memory_equal(h + 263, "00", 2);
	for (i = 0; i < 512; i++)
		sum += i >= 148 && i < 156 ? ' ' : h[i];
	assert_int_equal(parse_octal(h + 148, 8), sum);
	assert_int_equal(h[154], '\0');
	assert_int_equal(h[155], ' ');
}

static struct stat file_stat(uint64_t size)
{
	struct stat st;

	memset(&st, 0, sizeof(st));
	st.st_mode = S_IFREG | 0640;
	st.st_uid = 1000;
	st.st_gid = 100;
	st.st_size = (off_t)size;
	st.st_mtime = MTIME;
	return st;
}

static void test_format_names(void **state)
{
	static const char *const names[] = { "tar.gz", "gzip", "tar", "none", "auto" };
	enum arc_format f;
	int i;

	(void)state;
	for (i = 0; i <= ARC_AUTO; i++) {
		assert_int_equal(arc_format_parse(names[i], &f), 0);
		assert_int_equal(f, i);
		assert_string_equal(arc_format_name(f), names[i]);
	}
	assert_int_equal(arc_format_parse("zip", &f), -EINVAL);
	assert_string_equal(arc_format_suffix(ARC_TAR_GZ), ".tar.gz");
	assert_string_equal(arc_format_suffix(ARC_GZIP), ".gz");
	assert_string_equal(arc_format_suffix(ARC_TAR), ".tar");
	assert_string_equal(arc_format_suffix(ARC_NONE), "");
}

static void test_tar_header_fields(void **state)
{
	struct stat st = file_stat(12345);
	unsigned char h[2048];

	(void)state;
	assert_int_equal(arc_tar_header("dir/file.txt", &st, '0', h, sizeof(h)), 512);
	check_ustar(h);
	assert_string_equal((const char *)h, "dir/file.txt");
	assert_int_equal(parse_octal(h + 100, 8), 0640);
	assert_int_equal(parse_octal(h + 108, 8), 1000);
	assert_int_equal(parse_octal(h + 116, 8), 100);
	assert_int_equal(parse_octal(h + 124, 12), 12345);
	assert_int_equal(parse_octal(h + 136, 12), MTIME);
	assert_memory_equal(h + 124, "00000030071\0", 12);
	assert_int_equal(h[156], '0');
	assert_int_equal(h[345], '\0');	/* no prefix */

	/* directories: '5', size 0, name ends in '/' */
	st.st_mode = S_IFDIR | 0755;
	assert_int_equal(arc_tar_header("adir", &st, '5', h, sizeof(h)), 512);
	check_ustar(h);
	assert_string_equal((const char *)h, "adir/");
	assert_int_equal(parse_octal(h + 124, 12), 0);
	assert_int_equal(h[156], '5');

	assert_int_equal(arc_tar_header("x", &st, '0', h, 511), -ENOSPC);
	assert_int_equal(arc_tar_header("", &st, '0', h, sizeof(h)), -EINVAL);
}

static void test_tar_header_exact_100_and_split(void **state)
{
	struct stat st = file_stat(1);
	unsigned char h[2048];
	char name[200];

	(void)state;
	memset(name, 'a', 100);
	name[100] = '\0';
	assert_int_equal(arc_tar_header(name, &st, '0', h, sizeof(h)), 512);
	check_ustar(h);
	assert_memory_equal(h, name, 100);

	/* 150 chars with a slash at 60: prefix 60 + name 89, no pax */
	memset(name, 'b', 150);
	name[60] = '/';
	name[150] = '\0';
	assert_int_equal(arc_tar_header(name, &st, '0', h, sizeof(h)), 512);
	check_ustar(h);
	assert_memory_equal(h + 345, name, 60);
	assert_int_equal(h[345 + 60], '\0');
	assert_memory_equal(h, name + 61, 89);
	assert_int_equal(h[89], '\0');
}

/* Check the pax header at @h holds exactly the one record @key=@val. */
static void check_pax_record(const unsigned char *h, const char *key, const char *val)
{
	char rec[1024];
	size_t size = (size_t)parse_octal(h + 124, 12);
	size_t len;
	char *end = NULL;

	check_ustar(h);
	assert_int_equal(h[156], 'x');
	assert_memory_equal(h, "PaxHeaders/", 11);
	assert_true(size < sizeof(rec));
	memcpy(rec, h + 512, size);
	rec[size] = '\0';
	len = strtoul(rec, &end, 10);
	assert_int_equal(len, size);	/* one record, its length counts itself */
	assert_int_equal(*end, ' ');
	assert_int_equal(rec[size - 1], '\n');
	assert_int_equal(strncmp(end + 1, key, strlen(key)), 0);
	assert_int_equal(end[1 + strlen(key)], '=');
	assert_int_equal(strlen(end + 2 + strlen(key)), strlen(val) + 1);
	assert_memory_equal(end + 2 + strlen(key), val, strlen(val));
}

static void test_tar_header_pax_long_name(void **state)
{
	struct stat st = file_stat(7);
	unsigned char h[2048 + 200];
	char name[151];
	ssize_t n;

	(void)state;
	memset(name, 'c', 150);	/* no slash: cannot be split */
	name[150] = '\0';
	n = arc_tar_header(name, &st, '0', h, sizeof(h));
	assert_int_equal(n, 1536);
	check_pax_record(h, "path", name);
	/* "160 path=" + 150 + "\n" = 160 bytes: the self-inclusive length */
	assert_memory_equal(h + 512, "160 path=", 9);
	check_ustar(h + 1024);
	assert_int_equal(h[1024 + 156], '0');
	assert_int_equal(parse_octal(h + 1024 + 124, 12), 7);

	/* the 2 -> 3 digit boundary: 98 bytes without the length, so 101 with it */
	name[0] = '\xc3';
	name[1] = '\xa9';
	memset(name + 2, 'd', 89);
	name[91] = '\0';
	st.st_size = 0;
	n = arc_tar_header(name, &st, '0', h, sizeof(h));
	assert_int_equal(n, 1536);
	check_pax_record(h, "path", name);
	assert_memory_equal(h + 512, "101 path=\xc3\xa9" "d", 12);
	assert_int_equal(parse_octal(h + 124, 12), 101);

	/* a 2-byte name: 9 bytes without the length, 11 with it */
	n = arc_tar_header("\xc3\xa9", &st, '0', h, sizeof(h));
	assert_int_equal(n, 1536);
	assert_memory_equal(h + 512, "11 path=\xc3\xa9\n", 11);
}

static void test_tar_header_pax_utf8(void **state)
{
	struct stat st = file_stat(3);
	const char *name = "caf\xc3\xa9/r\xc3\xa9sum\xc3\xa9.txt";
	unsigned char h[2048 + 64];

	(void)state;
	assert_int_equal(arc_tar_header(name, &st, '0', h, sizeof(h)), 1536);
	check_pax_record(h, "path", name);
	check_ustar(h + 1024);
	/* the ustar fallback name is ASCII only */
	assert_string_equal((const char *)h + 1024, "caf__/r__sum__.txt");
}

static void test_tar_header_huge_size(void **state)
{
	struct fixture *f = *state;
	struct stat st = file_stat((uint64_t)200 << 30);	/* 200 GiB */
	unsigned char h[2048 + 16];
	char path[512];
	ssize_t n;
	int fd;

	n = arc_tar_header("big.bin", &st, '0', h, sizeof(h));
	assert_int_equal(n, 1536);
	check_pax_record(h, "size", "214748364800");
	check_ustar(h + 1024);
	assert_int_equal(h[1024 + 124], 0x80);	/* base-256 for non-pax readers */

	/* GNU tar reads the header and lists the full size (then hits EOF) */
	snprintf(path, sizeof(path), "%s/h.tar", f->dir);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, h, (size_t)n), n);
	close(fd);
	assert_int_equal(sh("tar -tvf '%s' 2>/dev/null | grep -q ' 214748364800 .* big.bin$'", path),
			 0);

	/* just under 8 GiB still fits the octal field */
	st.st_size = (off_t)(((uint64_t)1 << 33) - 1);
	assert_int_equal(arc_tar_header("big.bin", &st, '0', h, sizeof(h)), 512);
	assert_memory_equal(h + 124, "77777777777\0", 12);
}

/* ---- streams ---- */

static const size_t sizes[] = {
	0,
	1,
	SMALL_BLOCK - 1,
	SMALL_BLOCK,
	SMALL_BLOCK + 1,
	3 * SMALL_BLOCK + 17,
	(1u << 20) - 1,
	(1u << 20) + 100,
};

static void roundtrip_all_sizes(struct fixture *f, enum arc_format fmt)
{
	size_t i;

	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		roundtrip(f, fmt, sizes[i], 1, SMALL_BLOCK, 7777);
		roundtrip(f, fmt, sizes[i], 4, SMALL_BLOCK, 65536);
	}
	/* the default block size and thread count */
	roundtrip(f, fmt, (1u << 20) + 12345, 0, 0, 1u << 20);
	roundtrip(f, fmt, 3 * ARC_BLOCK_DEFAULT, 2, 0, 1000);
}

static void test_stream_tar_gz(void **state)
{
	roundtrip_all_sizes(*state, ARC_TAR_GZ);
}

static void test_stream_gzip(void **state)
{
	roundtrip_all_sizes(*state, ARC_GZIP);
}

static void test_stream_tar(void **state)
{
	roundtrip_all_sizes(*state, ARC_TAR);
}

static void test_stream_none(void **state)
{
	roundtrip_all_sizes(*state, ARC_NONE);
}

static void test_stream_levels(void **state)
{
	struct fixture *f = *state;
	int level;

	for (level = 1; level <= 9; level += 4) {
		struct arc_opts o = { .format = ARC_TAR_GZ, .level = level, .threads = 3,
				      .block_size = 32768 };
		char src[512], arc[512], hex[65];
		enum arc_format done;
		uint64_t in;

		snprintf(src, sizeof(src), "%s/lv.bin", f->dir);
		snprintf(arc, sizeof(arc), "%s/lv.tar.gz", f->dir);
		make_file(src, 500000, MIXED, 7);
		assert_int_equal(stream_to(&o, src, "lv.bin", arc, 4096, &done, &in, hex), 0);
		verify(f, ARC_TAR_GZ, arc, src, "lv.bin");
	}
}

static void test_stream_long_and_utf8_names(void **state)
{
	static const char *const names[] = {
		"caf\xc3\xa9-r\xc3\xa9sum\xc3\xa9.txt",
		"a-very-long-name-without-any-slash-that-cannot-be-split-into-a-ustar-prefix-"
		"and-name-so-it-needs-a-pax-path-record-in-front-of-it-0123456789.bin",
	};
	struct fixture *f = *state;
	size_t i;

	for (i = 0; i < 2; i++) {
		struct arc_opts o = { .format = ARC_TAR_GZ, .threads = 2, .block_size = SMALL_BLOCK };
		char src[512], arc[512], hex[65];
		enum arc_format done;
		uint64_t in;

		snprintf(src, sizeof(src), "%s/%s", f->dir, names[i]);
		snprintf(arc, sizeof(arc), "%s/n.tar.gz", f->dir);
		make_file(src, 20000, TEXT, i);
		assert_int_equal(stream_to(&o, src, names[i], arc, 65536, &done, &in, hex), 0);
		verify(f, ARC_TAR_GZ, arc, src, names[i]);
		unlink(src);
	}
}

static void test_auto(void **state)
{
	struct fixture *f = *state;
	static const struct {
		enum content kind;
		size_t size;
		enum arc_format want;
	} cases[] = {
		{ RANDOM, 1u << 20, ARC_TAR },
		{ TEXT, 1u << 20, ARC_TAR_GZ },
		{ RANDOM, 100, ARC_TAR_GZ },	/* under 4 KiB: always tar.gz */
		{ RANDOM, 100000, ARC_TAR },	/* one sample, the whole file */
		{ RANDOM, 262144, ARC_TAR },	/* exactly the sample: read whole */
		{ RANDOM, 262145, ARC_TAR },	/* one byte more: four chunks */
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct arc_opts o = { .format = ARC_AUTO, .block_size = SMALL_BLOCK };
		char src[512], arc[512], hex[65];
		enum arc_format done;
		uint64_t in;

		snprintf(src, sizeof(src), "%s/auto.bin", f->dir);
		snprintf(arc, sizeof(arc), "%s/auto.out", f->dir);
		make_file(src, cases[i].size, cases[i].kind, i + 1);
		assert_int_equal(stream_to(&o, src, "auto.bin", arc, 65536, &done, &in, hex), 0);
		assert_int_equal(done, cases[i].want);
		verify(f, done, arc, src, "auto.bin");
	}
}

static void test_lazy_threads(void **state)
{
	struct fixture *f = *state;
	struct arc_opts o = { .format = ARC_TAR_GZ, .threads = 4 };
	struct arc_stream *s = NULL;
	unsigned char buf[65536];
	char src[512];
	struct stat st;
	int fd;

	snprintf(src, sizeof(src), "%s/small.bin", f->dir);
	make_file(src, 10000, TEXT, 1);
	fd = open(src, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(arc_stream_open_file(&o, fd, "small.bin", &st, &s), 0);
	assert_int_equal(arc_stream_workers(s), 0);
	assert_true(arc_stream_read(s, buf, sizeof(buf)) > 0);
	assert_int_equal(arc_stream_workers(s), 0);	/* one block: no thread */
	assert_int_equal(arc_stream_read(s, buf, sizeof(buf)), 0);
	arc_stream_free(s);
	s = NULL;

	o.block_size = SMALL_BLOCK;	/* now several blocks: the workers start */
	assert_int_equal(arc_stream_open_file(&o, fd, "small.bin", &st, &s), 0);
	assert_int_equal(arc_stream_workers(s), 0);
	assert_true(arc_stream_read(s, buf, 100) == 100);
	assert_int_equal(arc_stream_workers(s), 3);	/* capped at the 3 blocks */
	arc_stream_free(s);	/* mid-stream: joins the workers */
	close(fd);
}

static void test_shrink_is_enodata(void **state)
{
	static const enum arc_format fmts[] = { ARC_TAR_GZ, ARC_GZIP, ARC_TAR, ARC_NONE };
	struct fixture *f = *state;
	size_t i;

	for (i = 0; i < 4; i++) {
		struct arc_opts o = { .format = fmts[i], .threads = 2, .block_size = SMALL_BLOCK };
		struct arc_stream *s = NULL;
		unsigned char buf[65536];
		char src[512];
		struct stat st;
		ssize_t r;
		int fd;

		snprintf(src, sizeof(src), "%s/shrink.bin", f->dir);
		make_file(src, 1u << 20, MIXED, 3);
		fd = open(src, O_RDWR | O_CLOEXEC);
		assert_true(fd >= 0);
		assert_int_equal(fstat(fd, &st), 0);
		assert_int_equal(arc_stream_open_file(&o, fd, "shrink.bin", &st, &s), 0);
		assert_int_equal(ftruncate(fd, 300000), 0);
		while ((r = arc_stream_read(s, buf, sizeof(buf))) > 0)
			;
		assert_int_equal(r, -ENODATA);
		assert_int_equal(arc_stream_read(s, buf, sizeof(buf)), -ENODATA);	/* sticky */
		assert_int_equal(arc_stream_sha256(s, (char[65]){ 0 }), -EAGAIN);
		arc_stream_free(s);
		close(fd);
	}
}

static void test_open_errors(void **state)
{
	struct fixture *f = *state;
	struct arc_opts o = { .format = ARC_TAR_GZ };
	struct arc_stream *s = NULL;
	struct stat st;
	int fd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(arc_stream_open_file(&o, fd, "d", &st, &s), -EISDIR);
	st = file_stat(0);
	o.level = 10;
	assert_int_equal(arc_stream_open_file(&o, fd, "d", &st, &s), -EINVAL);
	o.level = 0;
	o.block_size = 100;
	assert_int_equal(arc_stream_open_file(&o, fd, "d", &st, &s), -EINVAL);
	o.block_size = 0;
	assert_int_equal(arc_stream_open_file(&o, fd, "", &st, &s), -EINVAL);
	assert_null(s);
	close(fd);
	arc_stream_free(NULL);
}

/* A directory unit: one tar of the tree, checked by GNU tar, sha256 of the tar stream. */
static void test_stream_dir(void **state)
{
	struct fixture *f = *state;
	struct arc_opts o = { .format = ARC_TAR_GZ, .threads = 2, .block_size = SMALL_BLOCK };
	const uint64_t content = 3 * SMALL_BLOCK + 17 + 100000;
	char tree[300], path[400], out[300], hex[65], hex2[65];
	unsigned char buf[7000];
	struct arc_stream *s = NULL;
	ssize_t r;
	int dfd, ofd;

	snprintf(tree, sizeof(tree), "%s/album", f->dir);
	assert_int_equal(sh("mkdir -p '%s/sub/deeper' '%s/empty'", tree, tree), 0);
	snprintf(path, sizeof(path), "%s/a.txt", tree);
	make_file(path, 3 * SMALL_BLOCK + 17, TEXT, 1);
	snprintf(path, sizeof(path), "%s/sub/b.bin", tree);
	make_file(path, 100000, RANDOM, 2);
	snprintf(path, sizeof(path), "%s/sub/deeper/zero", tree);
	make_file(path, 0, TEXT, 3);

	dfd = open(tree, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(dfd >= 0);
	assert_int_equal(arc_stream_open_dir(&o, dfd, "album", &s), 0);
	assert_int_equal(arc_stream_size(s), content);
	snprintf(out, sizeof(out), "%s/album.tar.gz", f->dir);
	ofd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(ofd >= 0);
	while ((r = arc_stream_read(s, buf, sizeof(buf))) > 0)
		assert_int_equal(write(ofd, buf, (size_t)r), r);
	assert_int_equal(r, 0);
	assert_int_equal(arc_stream_sha256(s, hex), 0);
	assert_int_equal(arc_stream_bytes_in(s), content);
	arc_stream_free(s);
	close(ofd);

	assert_int_equal(sh("cd '%s' && gzip -t album.tar.gz && mkdir x && "
			    "tar -xzf album.tar.gz -C x && diff -r album x/album && "
			    "test -d x/album/empty && gzip -dc album.tar.gz > album.tar",
			    f->dir),
			 0);
	/* the checksum of a directory is that of its tar stream */
	snprintf(path, sizeof(path), "%s/album.tar", f->dir);
	sha256_file(path, hex2);
	assert_string_equal(hex, hex2);

	/* what cannot be archived is refused, not dropped */
	assert_int_equal(sh("ln -s a.txt '%s/link'", tree), 0);
	assert_int_equal(arc_stream_open_dir(&o, dfd, "album", &s), -EINVAL);
	o.format = ARC_GZIP;
	assert_int_equal(arc_stream_open_dir(&o, dfd, "album", &s), -EISDIR);
	close(dfd);
}

/* ---- pgz: incompressible blocks written as stored deflate blocks ---- */

/*
 * gzip @n bytes at @in with pgz, pulled @chunk bytes at a time; returns the
 * output (malloc'd, *out_len bytes).  *workers: threads it ran.
 */
static unsigned char *pgz_all(const unsigned char *in, size_t n, int level, int threads,
			      size_t block, size_t chunk, size_t *out_len, int *workers)
{
	struct arc_mem m = { .p = in, .len = n };
	size_t cap = n + n / 2 + 4096, len = 0;
	unsigned char *out = malloc(cap);
	struct pgz *z = NULL;
	ssize_t r;

	assert_non_null(out);
	assert_int_equal(pgz_new(level, threads, block, n, arc_mem_fill, &m, &z), 0);
	while ((r = pgz_read(z, out + len, cap - len < chunk ? cap - len : chunk)) > 0) {
		len += (size_t)r;
		assert_true(len < cap);	/* never fills it: the end is seen */
	}
	assert_int_equal(r, 0);
	*workers = pgz_workers(z);
	pgz_free(z);
	*out_len = len;
	return out;
}

/*
 * @gz must be one gzip member holding @in: zlib's gzip decoding checks the
 * CRC-32 and ISIZE of the trailer, then gzip -t reads the file.
 */
static void check_gunzip(struct fixture *f, const unsigned char *gz, size_t gz_len,
			 const unsigned char *in, size_t n)
{
	unsigned char *back = malloc(n + 1);
	char path[512];
	z_stream zs;
	int fd;

	assert_non_null(back);
	memset(&zs, 0, sizeof(zs));
	assert_int_equal(inflateInit2(&zs, 16 + 15), Z_OK);	/* gzip only */
	zs.next_in = (unsigned char *)gz;
	zs.avail_in = (uInt)gz_len;
	zs.next_out = back;
	zs.avail_out = (uInt)(n + 1);
	assert_int_equal(inflate(&zs, Z_FINISH), Z_STREAM_END);
	assert_int_equal(zs.avail_in, 0);	/* one member, nothing after it */
	assert_int_equal(zs.total_out, n);
	assert_memory_equal(back, in, n);
	inflateEnd(&zs);
	free(back);

	snprintf(path, sizeof(path), "%s/p.gz", f->dir);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, gz, gz_len), (ssize_t)gz_len);
	close(fd);
	assert_int_equal(sh("gzip -t '%s'", path), 0);
	unlink(path);
}

/* Output size when every block of @n bytes is stored: header, trailer, 5 per stored block. */
static size_t stored_size(size_t n, size_t block)
{
	size_t out = 10 + 8;

	while (n) {
		size_t b = n < block ? n : block;

		out += b + 5 * ((b + 65534) / 65535);
		n -= b;
	}
	return out;
}

/* Round trip @in through pgz; returns the output size. */
static size_t pgz_roundtrip(struct fixture *f, const unsigned char *in, size_t n, int level,
			    int threads, size_t block)
{
	unsigned char *gz;
	size_t gz_len;
	int workers;

	gz = pgz_all(in, n, level, threads, block, 7777, &gz_len, &workers);
	check_gunzip(f, gz, gz_len, in, n);
	free(gz);
	return gz_len;
}

static unsigned char *content(size_t n, enum content kind, uint64_t seed)
{
	unsigned char *p = malloc(n ? n : 1);

	assert_non_null(p);
	fill_content(p, n, kind, seed);
	return p;
}

static void test_pgz_random_stored(void **state)
{
	static const size_t blocks[] = { 65535, 65536, 65537, ARC_BLOCK_DEFAULT, 200000 };
	struct fixture *f = *state;
	unsigned char *in;
	size_t i, n;
	int level;

	/* several blocks, each over 65535 bytes: several stored blocks a slot */
	for (level = 1; level <= 9; level += 4) {
		n = 5 * ARC_BLOCK_DEFAULT + 12345;
		in = content(n, RANDOM, (uint64_t)level);
		assert_int_equal(pgz_roundtrip(f, in, n, level, 2, ARC_BLOCK_DEFAULT),
				 stored_size(n, ARC_BLOCK_DEFAULT));
		free(in);
	}
	/* block sizes around LEN's limit; the last block random too (BFINAL stored) */
	for (i = 0; i < sizeof(blocks) / sizeof(blocks[0]); i++) {
		n = 3 * blocks[i] + 70000;
		in = content(n, RANDOM, i + 10);
		assert_int_equal(pgz_roundtrip(f, in, n, 1, 2, blocks[i]),
				 stored_size(n, blocks[i]));
		assert_int_equal(pgz_roundtrip(f, in, n, 6, 1, blocks[i]),
				 stored_size(n, blocks[i]));
		free(in);
	}
}

static void test_pgz_random_one_block(void **state)
{
	static const size_t lens[] = { 4096, 65535, 65536, 100000, ARC_BLOCK_DEFAULT };
	struct fixture *f = *state;
	size_t i;

	for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		unsigned char *in = content(lens[i], RANDOM, i + 20);
		unsigned char *gz;
		size_t gz_len;
		int workers = -1;

		gz = pgz_all(in, lens[i], 6, 4, ARC_BLOCK_DEFAULT, 65536, &gz_len, &workers);
		assert_int_equal(workers, 0);	/* the one-block path: no thread */
		assert_int_equal(gz_len, stored_size(lens[i], ARC_BLOCK_DEFAULT));
		check_gunzip(f, gz, gz_len, in, lens[i]);
		free(gz);
		free(in);
	}
}

static void test_pgz_random_and_text(void **state)
{
	struct fixture *f = *state;
	const size_t half = 3 * ARC_BLOCK_DEFAULT + 1000;
	unsigned char *in = malloc(2 * half);
	size_t out;

	assert_non_null(in);
	/* random then text: the text is deflated, the random part stored */
	fill_content(in, half, RANDOM, 30);
	fill_content(in + half, half, TEXT, 31);
	out = pgz_roundtrip(f, in, 2 * half, 6, 2, ARC_BLOCK_DEFAULT);
	assert_true(out > half && out < half + half / 4);

	/* text then random, the last block random: BFINAL on a stored block */
	fill_content(in, half, TEXT, 32);
	fill_content(in + half, half, RANDOM, 33);
	out = pgz_roundtrip(f, in, 2 * half, 1, 2, ARC_BLOCK_DEFAULT);
	assert_true(out > half && out < half + half / 4);

	/* alternating within blocks of 65536 and 65537 bytes, block-sized pieces */
	fill_content(in, 2 * half, RANDOM, 34);
	fill_content(in + 65536, 65536, TEXT, 35);
	fill_content(in + 3 * 65536, 65536, TEXT, 36);
	pgz_roundtrip(f, in, 2 * half, 1, 3, 65536);
	pgz_roundtrip(f, in, 2 * half, 6, 2, 65537);
	pgz_roundtrip(f, in, 2 * half, 6, 2, 65535);
	free(in);
}

/* Flat histograms are not enough: random content repeated within the window is deflated. */
static void test_pgz_repeats_deflated(void **state)
{
	struct fixture *f = *state;
	const size_t n = 4 * ARC_BLOCK_DEFAULT, unit = 16384;
	unsigned char *in = content(n, RANDOM, 40);
	size_t i, out;

	for (i = unit; i < n; i += unit)
		memcpy(in + i, in, unit);	/* a 16 KiB file stored 32 times */
	out = pgz_roundtrip(f, in, n, 1, 2, ARC_BLOCK_DEFAULT);
	assert_true(out < n / 8);

	/* every 4-byte random value twice in a row: the histograms see it (counts in pairs) */
	fill_content(in, n, RANDOM, 41);
	for (i = 0; i + 8 <= n; i += 8)
		memcpy(in + i + 4, in + i, 4);
	out = pgz_roundtrip(f, in, n, 6, 2, ARC_BLOCK_DEFAULT);
	assert_true(out < n - n / 8);
	free(in);
}

/* ---- pgz: noise runs inside a block stored, the rest deflated ---- */

#define CHUNK 4096u /* pgz.c's PGZ_CHUNK: runs are whole chunks */

/*
 * @p (@len bytes of random input) must be in @gz as pgz's stored blocks:
 * 65535 bytes each (the last shorter), BFINAL on the last only if @final,
 * the first starting at @p.  zlib's deflate never writes these: at
 * memLevel 8 its blocks end after 16383 symbols.
 */
static void assert_stored(const unsigned char *gz, size_t gz_len, const unsigned char *p,
			  size_t len, int final)
{
	const unsigned char *o = memmem(gz, gz_len, p, len < 65535 ? len : 65535);

	assert_non_null(o);
	assert_true(o - gz >= 10 + 5);
	for (o -= 5; len;) {
		size_t k = len < 65535 ? len : 65535;

		len -= k;
		assert_true((size_t)(o + 5 + k - gz) <= gz_len);
		assert_int_equal(o[0], final && !len);
		assert_int_equal(o[1] | o[2] << 8, k);
		assert_int_equal((o[3] | o[4] << 8) ^ 0xffff, k);
		assert_memory_equal(o + 5, p, k);
		o += 5 + k;
		p += k;
	}
}

/* Raw deflate of @n bytes at @in in one call: what pgz writes for one block with no noise. */
static size_t raw_deflate(const unsigned char *in, size_t n, int level, unsigned char *out,
			  size_t cap)
{
	z_stream zs;

	memset(&zs, 0, sizeof(zs));
	assert_int_equal(deflateInit2(&zs, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
	zs.next_in = (unsigned char *)in;
	zs.avail_in = (uInt)n;
	zs.next_out = out;
	zs.avail_out = (uInt)cap;
	assert_int_equal(deflate(&zs, Z_FINISH), Z_STREAM_END);
	n = zs.total_out;
	deflateEnd(&zs);
	return n;
}

/*
 * The tar case: a member's 512-byte header (a name, octal fields, mostly
 * NULs) after text and before random data, the block not noise as a
 * whole: the chunk with the header is deflated, the rest of the block
 * stored.
 */
static void test_pgz_run_after_header(void **state)
{
	static const size_t blocks[] = { ARC_BLOCK_DEFAULT, 100000 };
	struct fixture *f = *state;
	struct stat st = file_stat(1u << 20);
	size_t i;

	for (i = 0; i < sizeof(blocks) / sizeof(blocks[0]); i++) {
		size_t b = blocks[i], n = 3 * b, run = b - CHUNK, gz_len, text_len, want;
		unsigned char *in = malloc(n), *text = malloc(2 * b + 512), *gz;
		int level = i ? 6 : 1, workers;

		assert_non_null(in);
		assert_non_null(text);
		fill_content(in, b, TEXT, 50 + i);
		assert_int_equal(arc_tar_header("dir/random.bin", &st, '0', in + b, 512), 512);
		fill_content(in + b + 512, b - 512, RANDOM, 52 + i);
		fill_content(in + 2 * b, b, TEXT, 54 + i);
		gz = pgz_all(in, n, level, 2, b, 7777, &gz_len, &workers);
		check_gunzip(f, gz, gz_len, in, n);
		assert_stored(gz, gz_len, in + b + CHUNK, run, 0);

		/* the size: text and header gzipped alone, the random bytes and their headers */
		memcpy(text, in, b + 512);
		memcpy(text + b + 512, in + 2 * b, b);
		free(pgz_all(text, 2 * b + 512, level, 2, b, 7777, &text_len, &workers));
		want = text_len + (b - 512) + 5 * ((run + 65534) / 65535);
		assert_true(gz_len < want + 300 && gz_len + 300 > want);
		free(gz);
		free(text);
		free(in);
	}
}

static void test_pgz_runs_in_block(void **state)
{
	struct fixture *f = *state;
	const size_t b = ARC_BLOCK_DEFAULT, n = 2 * b + 70000;	/* last block: 17.1 chunks */
	unsigned char *in = content(n, TEXT, 60), *gz;
	size_t gz_len;
	int level, workers;

	/* block 1: random, text, random, the edges inside chunks 9 and 19 */
	fill_content(in + b, 40000, RANDOM, 61);
	fill_content(in + b + 80000, b - 80000, RANDOM, 62);
	/* the last block: text, then random to the end of the stream */
	fill_content(in + 2 * b + 20000, 50000, RANDOM, 63);
	for (level = 1; level <= 9; level += 4) {
		gz = pgz_all(in, n, level, 2, b, 7777, &gz_len, &workers);
		check_gunzip(f, gz, gz_len, in, n);
		assert_stored(gz, gz_len, in + b, 9 * CHUNK, 0);
		assert_stored(gz, gz_len, in + b + 20 * CHUNK, b - 20 * CHUNK, 0);
		/* BFINAL on a stored run after a deflated one */
		assert_stored(gz, gz_len, in + 2 * b + 5 * CHUNK, 70000 - 5 * CHUNK, 1);
		free(gz);
	}

	/* the last block random, then text: Z_FINISH on a deflated run after a stored one */
	fill_content(in + 2 * b, 50000, RANDOM, 64);
	fill_content(in + 2 * b + 50000, 20000, TEXT, 65);
	gz = pgz_all(in, n, 6, 1, b, 7777, &gz_len, &workers);
	check_gunzip(f, gz, gz_len, in, n);
	assert_stored(gz, gz_len, in + 2 * b, 12 * CHUNK, 0);
	free(gz);
	free(in);
}

/* Text is deflated exactly as by zlib in one call, and so are noise runs under 4 chunks. */
static void test_pgz_short_runs_deflated(void **state)
{
	struct fixture *f = *state;
	const size_t n = ARC_BLOCK_DEFAULT, cap = n + n / 2;
	unsigned char *in = content(n, TEXT, 70), *raw = malloc(cap), *gz;
	size_t gz_len, raw_len, pass;
	int workers;

	assert_non_null(raw);
	for (pass = 0; pass < 3; pass++) {
		if (pass == 1)	/* random chunks 7-9: under 4, deflated */
			fill_content(in + 7 * CHUNK, 3 * CHUNK, RANDOM, 71);
		if (pass == 2)	/* and 10: stored */
			fill_content(in + 10 * CHUNK, CHUNK, RANDOM, 72);
		gz = pgz_all(in, n, 1, 2, ARC_BLOCK_DEFAULT, 7777, &gz_len, &workers);
		check_gunzip(f, gz, gz_len, in, n);
		if (pass < 2) {
			raw_len = raw_deflate(in, n, 1, raw, cap);
			assert_int_equal(gz_len, 10 + raw_len + 8);
			assert_memory_equal(gz + 10, raw, raw_len);
		} else {
			assert_stored(gz, gz_len, in + 7 * CHUNK, 4 * CHUNK, 0);
		}
		free(gz);
	}
	free(raw);
	free(in);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_format_names),
		cmocka_unit_test(test_tar_header_fields),
		cmocka_unit_test(test_tar_header_exact_100_and_split),
		cmocka_unit_test(test_tar_header_pax_long_name),
		cmocka_unit_test(test_tar_header_pax_utf8),
		cmocka_unit_test_setup_teardown(test_tar_header_huge_size, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stream_tar_gz, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stream_gzip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stream_tar, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stream_none, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stream_levels, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stream_long_and_utf8_names, setup, teardown),
		cmocka_unit_test_setup_teardown(test_auto, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lazy_threads, setup, teardown),
		cmocka_unit_test_setup_teardown(test_shrink_is_enodata, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stream_dir, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pgz_random_stored, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pgz_random_one_block, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pgz_random_and_text, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pgz_repeats_deflated, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pgz_run_after_header, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pgz_runs_in_block, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pgz_short_runs_deflated, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stream_ride, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
