/*
 * stream.c - one file, or a directory tree, turned into a tar / gzip /
 * tar.gz / plain byte stream, pulled by the uploader with arc_stream_read().
 *
 * DESIGN
 * A stream is a list of entries: one for a file, one per directory and file
 * for a directory unit (walked and sorted at open, so its length is known
 * and the same tree always makes the same bytes).  The "raw" stream is what
 * would be compressed: for the tar formats each entry's header(s), its
 * bytes and zero padding to 512, then two zero blocks; for gzip and none
 * just the file's bytes.  raw_fill() produces it
 * in order, reading the file with pread() straight into the destination
 * (at most ARC_READ_CHUNK per call) and hashing every byte with sha256 right
 * after it is read, while it is still in cache: each byte is read once.
 * ARC_TAR and ARC_NONE hand raw_fill() the caller's buffer; the gzip formats
 * put pgz.c between the two, which compresses blocks on worker threads
 * while this thread reads and hashes the next ones.
 *
 * A stream is used by one thread at a time; the byte counters may be read
 * from any thread.
 */
#include "archive/arc.h"
#include "archive/arc_i.h"
#include "common/digest.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* One member of a directory unit: a directory or a regular file. */
struct arc_ent {
	char *path;		/* owned: relative to the unit's directory ("" = itself);
				   NULL for a single file (read from the stream's fd) */
	unsigned char *hdr;	/* owned: its tar header block(s) */
	size_t hdr_len;
	uint64_t size;		/* file bytes (0 for directories) */
	uint64_t start;		/* raw offset of its header */
};

struct arc_stream {
	enum arc_format format;	/* never ARC_AUTO */
	int dirfd;		/* borrowed: a directory unit, -1 for a file */
	struct arc_ent *ents;	/* owned: in tar order (one for a file) */
	size_t nents;
	size_t cur;		/* entry being produced */
	int cur_fd;		/* owned: the entry's file, open while it is read */
	int fd;			/* borrowed (a file), valid until arc_stream_free */
	uint64_t size;		/* content bytes: exactly this much is read */
	uint64_t raw_total;	/* header + data + padding + end blocks */
	uint64_t raw_pos;
	struct digest_sha256 sha;	/* of the content (a directory: of the tar) */
	struct digest_lanes *ride_lanes;	/* borrowed: fed every byte read out, or NULL */
	struct digest_sha256 *ride_sha;
	char sha_hex[65];
	int sha_done;
	struct pgz *pgz;	/* owned, gzip formats only */
	int err;		/* sticky */
	_Atomic uint64_t bytes_in;
	_Atomic uint64_t bytes_out;
};

static const char *const fmt_names[] = {
	[ARC_TAR_GZ] = "tar.gz", [ARC_GZIP] = "gzip", [ARC_TAR] = "tar",
	[ARC_NONE] = "none",	 [ARC_AUTO] = "auto",
};

static const char *const fmt_suffixes[] = {
	[ARC_TAR_GZ] = ".tar.gz", [ARC_GZIP] = ".gz", [ARC_TAR] = ".tar",
	[ARC_NONE] = "",	  [ARC_AUTO] = "",
};

const char *arc_format_name(enum arc_format f)
{
	if ((unsigned int)f > ARC_AUTO)
		return "unknown";
	return fmt_names[f];
}

int arc_format_parse(const char *name, enum arc_format *out)
{
	unsigned int i;

	if (!name)
		return -EINVAL;
	for (i = 0; i <= ARC_AUTO; i++) {
		if (!strcmp(name, fmt_names[i])) {
			*out = (enum arc_format)i;
			return 0;
		}
	}
	return -EINVAL;
}

const char *arc_format_suffix(enum arc_format f)
{
	if ((unsigned int)f > ARC_AUTO)
		return "";
	return fmt_suffixes[f];
}

static void sha_finish(struct arc_stream *s)
{
	digest_sha256_hex(&s->sha, s->sha_hex);
	s->sha_done = 1;
}

/*
 * Hash @len bytes of the raw stream at @p: into the content's sha256 when
 * @content, and into the riders when the raw stream is what is read out
 * (ARC_TAR, ARC_NONE), all in one pass.
 */
static void raw_hash(struct arc_stream *s, const unsigned char *p, size_t len, int content)
{
	struct digest_lanes *l = s->pgz ? NULL : s->ride_lanes;
	struct digest_sha256 *r = s->pgz ? NULL : s->ride_sha;

	digest_update_lanes(l, content ? &s->sha : NULL, r, p, len);
}

/* ---- directory units ---------------------------------------------------- */

static int ent_cmp(const void *a, const void *b)
{
	return strcmp(((const struct arc_ent *)a)->path, ((const struct arc_ent *)b)->path);
}

static int ents_add(struct arc_stream *s, size_t *cap, const char *rel, const char *top,
		    const struct stat *st)
{
	struct arc_ent *e;
	char *name = NULL;
	size_t nlen = strlen(top) + 1 + strlen(rel) + 1;
	ssize_t hl;

	if (s->nents == *cap) {
		size_t ncap = *cap ? *cap * 2 : 16;
		struct arc_ent *grown = realloc(s->ents, ncap * sizeof(*grown));

		if (!grown)
			return -ENOMEM;
		s->ents = grown;
		*cap = ncap;
	}
	e = &s->ents[s->nents];
	memset(e, 0, sizeof(*e));
	e->path = strdup(rel);
	name = malloc(nlen);
	if (!e->path || !name) {
		free(e->path);
		free(name);
		return -ENOMEM;
	}
	snprintf(name, nlen, "%s%s%s", top, *rel ? "/" : "", rel);
	e->hdr = malloc(2048 + nlen);
	if (!e->hdr) {
		free(e->path);
		free(name);
		return -ENOMEM;
	}
	hl = arc_tar_header(name, st, S_ISDIR(st->st_mode) ? '5' : '0', e->hdr, 2048 + nlen);
	free(name);
	if (hl < 0) {
		free(e->path);
		free(e->hdr);
		return (int)hl;
	}
	e->hdr_len = (size_t)hl;
	{
		/* most headers are one 512-byte block: keep only that per entry */
		unsigned char *fit = realloc(e->hdr, e->hdr_len);

		if (fit)
			e->hdr = fit;
	}
	e->size = S_ISREG(st->st_mode) ? (uint64_t)st->st_size : 0;
	s->nents++;
	return 0;
}

/*
 * Walk the tree under @rel (relative to s->dirfd) depth first, directories
 * before what they hold.  Only directories and regular files can be
 * archived: anything else fails the walk with -EINVAL (nothing is dropped
 * silently).
 */
static int walk(struct arc_stream *s, size_t *cap, const char *rel, const char *top, int depth)
{
	struct stat st;
	DIR *d = NULL;
	struct dirent *de;
	int fd, rc;

	if (depth > 256)
		return -ELOOP;
	if (fstatat(s->dirfd, *rel ? rel : ".", &st, AT_SYMLINK_NOFOLLOW))
		return -errno;
	if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode))
		return -EINVAL;
	rc = ents_add(s, cap, rel, top, &st);
	if (rc || !S_ISDIR(st.st_mode))
		return rc;
	fd = openat(s->dirfd, *rel ? rel : ".", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (!d) {
		rc = -errno;
		close(fd);
		return rc;
	}
	while (!rc && (errno = 0, de = readdir(d))) {
		size_t len;
		char *child;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		len = strlen(rel) + 1 + strlen(de->d_name) + 1;
		child = malloc(len);
		if (!child) {
			rc = -ENOMEM;
			break;
		}
		snprintf(child, len, "%s%s%s", rel, *rel ? "/" : "", de->d_name);
		rc = walk(s, cap, child, top, depth + 1);
		free(child);
	}
	if (!rc && errno)
		rc = -errno;
	closedir(d);
	return rc;
}

/*
 * Produce the next up to @len raw bytes into @buf (see DESIGN): each entry's
 * header, its bytes read with pread() straight into @buf, its padding (tar
 * formats), then the two zero blocks.  A file's sha256 covers its content,
 * hashed right after each read while it is in cache; a directory's covers
 * the tar stream itself.
 */
static ssize_t raw_fill(void *ctx, void *buf, size_t len)
{
	struct arc_stream *s = ctx;
	unsigned char *dst = buf;
	int tar = s->format == ARC_TAR || s->format == ARC_TAR_GZ;
	size_t n = 0;

	while (n < len && s->raw_pos < s->raw_total) {
		struct arc_ent *e = s->cur < s->nents ? &s->ents[s->cur] : NULL;
		uint64_t pos = s->raw_pos, rel, data_end, ent_end;
		size_t k;

		if (!e) {	/* the two zero blocks at the end */
			uint64_t left = s->raw_total - pos;

			k = left < len - n ? (size_t)left : len - n;
			memset(dst + n, 0, k);
		} else {
			rel = pos - e->start;
			data_end = e->hdr_len + e->size;
			ent_end = tar ? e->hdr_len + (e->size + 511) / 512 * 512 : data_end;
			if (rel < e->hdr_len) {
				k = e->hdr_len - (size_t)rel;
				if (k > len - n)
					k = len - n;
				memcpy(dst + n, e->hdr + rel, k);
			} else if (rel < data_end) {
				uint64_t left = data_end - rel;
				int fd = s->dirfd < 0 ? s->fd : s->cur_fd;
				ssize_t r;

				if (fd < 0) {
					fd = s->cur_fd = openat(s->dirfd, e->path,
								O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
					if (fd < 0)
						return -errno;
				}
				k = left < len - n ? (size_t)left : len - n;
				if (k > ARC_READ_CHUNK)
					k = ARC_READ_CHUNK;
				r = pread(fd, dst + n, k, (off_t)(rel - e->hdr_len));
				if (r < 0 && errno == EINTR)
					continue;
				if (r < 0)
					return -errno;
				if (r == 0)
					return -ENODATA;	/* shrank since open */
				k = (size_t)r;
				if (s->dirfd < 0)
					raw_hash(s, dst + n, k, 1);
				atomic_fetch_add_explicit(&s->bytes_in, (uint64_t)r,
							  memory_order_relaxed);
				if (s->dirfd < 0 && rel + k == data_end)
					sha_finish(s);
			} else {
				uint64_t left = ent_end - rel;

				k = left < len - n ? (size_t)left : len - n;
				memset(dst + n, 0, k);
			}
			if (rel + k == ent_end) {
				if (s->cur_fd >= 0)
					close(s->cur_fd);
				s->cur_fd = -1;
				s->cur++;
			}
		}
		if (s->dirfd >= 0)
			raw_hash(s, dst + n, k, 1);
		else if (!e || rel < e->hdr_len || rel >= data_end)
			raw_hash(s, dst + n, k, 0);	/* tar headers and padding */
		n += k;
		s->raw_pos += k;
		if (s->dirfd >= 0 && s->raw_pos == s->raw_total)
			sha_finish(s);
	}
	return (ssize_t)n;
}

/* Settings of @opts (NULL: the defaults) checked and filled in. 0 or -EINVAL. */
struct settings {
	enum arc_format format;
	int level;
	int threads;
	size_t block;
};

static int settings_of(const struct arc_opts *o, struct settings *out)
{
	long cpus;

	out->format = o ? o->format : ARC_TAR_GZ;
	out->level = o && o->level ? o->level : 6;
	out->threads = o ? o->threads : 0;
	out->block = o && o->block_size ? o->block_size : ARC_BLOCK_DEFAULT;
	if ((unsigned int)out->format > ARC_AUTO || out->level < 1 || out->level > 9 ||
	    out->threads < 0 || out->block < ARC_BLOCK_MIN || out->block > ARC_BLOCK_MAX)
		return -EINVAL;
	if (out->threads == 0) {
		cpus = sysconf(_SC_NPROCESSORS_ONLN);
		out->threads = cpus > 0 ? (int)(cpus < ARC_THREADS_MAX ? cpus : ARC_THREADS_MAX) : 1;
	}
	if (out->threads > ARC_THREADS_MAX)
		out->threads = ARC_THREADS_MAX;
	return 0;
}

/* A new stream of format @fmt over @fd (a file) or @dirfd (a tree). */
static struct arc_stream *stream_new(enum arc_format fmt, int fd, int dirfd)
{
	struct arc_stream *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->format = fmt;
	s->fd = fd;
	s->dirfd = dirfd;
	s->cur_fd = -1;
	digest_sha256_init(&s->sha);
	return s;
}

int arc_stream_open_dir(const struct arc_opts *opts, int dirfd, const char *name,
			struct arc_stream **out)
{
	struct arc_stream *s = NULL;
	struct settings set;
	size_t cap = 0;
	uint64_t pos = 0;
	int rc;

	if (!out || dirfd < 0 || !name || !*name || settings_of(opts, &set))
		return -EINVAL;
	if (set.format == ARC_GZIP || set.format == ARC_NONE)
		return -EISDIR;	/* one file formats */
	s = stream_new(set.format == ARC_TAR ? ARC_TAR : ARC_TAR_GZ, -1, dirfd);
	if (!s)
		return -ENOMEM;
	rc = walk(s, &cap, "", name, 0);
	if (rc)
		goto fail;
	/* sorted, so the same tree always makes the same bytes (resumable parts) */
	if (s->nents > 1)
		qsort(s->ents + 1, s->nents - 1, sizeof(*s->ents), ent_cmp);
	for (size_t i = 0; i < s->nents; i++) {
		s->ents[i].start = pos;
		pos += s->ents[i].hdr_len + (s->ents[i].size + 511) / 512 * 512;
		s->size += s->ents[i].size;
	}
	s->raw_total = pos + 1024;
	if (s->format == ARC_TAR_GZ) {
		rc = pgz_new(set.level, set.threads, set.block, s->raw_total, raw_fill, s,
			     &s->pgz);
		if (rc)
			goto fail;
	}
	*out = s;
	return 0;
fail:
	arc_stream_free(s);
	return rc;
}

static int resolve_format(enum arc_format want, int fd, const struct stat *st, int level,
			  enum arc_format *out)
{
	int rc;

	if (want != ARC_AUTO) {
		*out = want;
		return 0;
	}
	if (st->st_size < (off_t)ARC_AUTO_SMALL) {
		*out = ARC_TAR_GZ;
		return 0;
	}
	rc = arc_sample_compressible(fd, (uint64_t)st->st_size, level);
	if (rc < 0)
		return rc;
	*out = rc ? ARC_TAR_GZ : ARC_TAR;
	return 0;
}

int arc_stream_open_file(const struct arc_opts *opts, int fd, const char *name,
			 const struct stat *st, struct arc_stream **out)
{
	struct arc_stream *s = NULL;
	struct settings set;
	enum arc_format fmt;
	ssize_t hl;
	int rc;

	if (!out || !st || fd < 0)
		return -EINVAL;
	if (S_ISDIR(st->st_mode))
		return -EISDIR;
	if (!S_ISREG(st->st_mode) || st->st_size < 0 || settings_of(opts, &set))
		return -EINVAL;
	rc = resolve_format(set.format, fd, st, set.level, &fmt);
	if (rc)
		return rc;
	if ((fmt == ARC_TAR_GZ || fmt == ARC_TAR) && (!name || !*name))
		return -EINVAL;

	s = stream_new(fmt, fd, -1);
	if (!s)
		return -ENOMEM;
	s->size = (uint64_t)st->st_size;
	s->ents = calloc(1, sizeof(*s->ents));
	if (!s->ents) {
		rc = -ENOMEM;
		goto fail;
	}
	s->nents = 1;
	s->ents[0].size = s->size;
	if (fmt == ARC_TAR_GZ || fmt == ARC_TAR) {
		size_t cap = 2048 + strlen(name);

		s->ents[0].hdr = malloc(cap);
		if (!s->ents[0].hdr) {
			rc = -ENOMEM;
			goto fail;
		}
		hl = arc_tar_header(name, st, '0', s->ents[0].hdr, cap);
		if (hl < 0) {
			rc = (int)hl;
			goto fail;
		}
		s->ents[0].hdr_len = (size_t)hl;
		s->raw_total = s->ents[0].hdr_len + (s->size + 511) / 512 * 512 + 1024;
	} else {
		s->raw_total = s->size;
	}
	if (s->size == 0)
		sha_finish(s);
	if (fmt == ARC_TAR_GZ || fmt == ARC_GZIP) {
		rc = pgz_new(set.level, set.threads, set.block, s->raw_total, raw_fill, s,
			     &s->pgz);
		if (rc)
			goto fail;
	}
	if (s->size > ARC_READ_CHUNK)
		(void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);	/* larger readahead */
	*out = s;
	return 0;

fail:
	arc_stream_free(s);
	return rc;
}

ssize_t arc_stream_read(struct arc_stream *s, void *buf, size_t len)
{
	ssize_t r;

	if (!s || (!buf && len))
		return -EINVAL;
	if (s->err)
		return s->err;
	if (len > SSIZE_MAX)
		len = SSIZE_MAX;
	if (s->pgz) {
		r = pgz_read(s->pgz, buf, len);
		if (r > 0)
			digest_update_lanes(s->ride_lanes, NULL, s->ride_sha, buf, (size_t)r);
	} else if (!len)
		r = 0;
	else
		r = raw_fill(s, buf, len);
	if (r < 0) {
		s->err = (int)r;
		return r;
	}
	atomic_fetch_add_explicit(&s->bytes_out, (uint64_t)r, memory_order_relaxed);
	return r;
}

enum arc_format arc_stream_format(const struct arc_stream *s)
{
	return s->format;
}

uint64_t arc_stream_size(const struct arc_stream *s)
{
	return s->size;
}

uint64_t arc_stream_bytes_in(const struct arc_stream *s)
{
	return atomic_load_explicit(&s->bytes_in, memory_order_relaxed);
}

uint64_t arc_stream_bytes_out(const struct arc_stream *s)
{
	return atomic_load_explicit(&s->bytes_out, memory_order_relaxed);
}

int arc_stream_workers(const struct arc_stream *s)
{
	return pgz_workers(s->pgz);
}

void arc_stream_ride(struct arc_stream *s, struct digest_lanes *lanes, struct digest_sha256 *sha)
{
	s->ride_lanes = lanes;
	s->ride_sha = sha;
}

int arc_stream_sha256(const struct arc_stream *s, char *hex_out)
{
	if (!s || !hex_out)
		return -EINVAL;
	if (!s->sha_done)
		return -EAGAIN;	/* the content has not been read to its end yet */
	memcpy(hex_out, s->sha_hex, sizeof(s->sha_hex));
	return 0;
}

void arc_stream_free(struct arc_stream *s)
{
	if (!s)
		return;
	pgz_free(s->pgz);
	for (size_t i = 0; i < s->nents; i++) {
		free(s->ents[i].path);
		free(s->ents[i].hdr);
	}
	free(s->ents);
	if (s->cur_fd >= 0)
		close(s->cur_fd);
	free(s);
}
