/*
 * arc.h - the streaming archive body: a file (or, later, a directory tree)
 * read once from disk and turned into a tar / gzip / tar.gz byte stream
 * that is pulled in pieces by the uploader.  Nothing is written to disk.
 *
 * gzip is made on several threads the way pigz does it: the input is cut
 * into blocks (128 KiB), each deflated independently with the previous
 * 32 KiB as its dictionary and ended with a sync flush (the last with
 * Z_FINISH), the CRC-32s joined with crc32_combine(); the output is one
 * ordinary gzip member that gzip -t and tar -xz accept.  A block that
 * looks like random bytes (media, compressed data) is not deflated but
 * copied into stored deflate blocks.  The sha256 of the original content
 * is computed on the same pass over the data.
 *
 * zlib is used only here.  No FUSE, no curl.
 */
#ifndef MGMTFS_ARC_H
#define MGMTFS_ARC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

enum arc_format {
	ARC_TAR_GZ = 0,	/* NAME.tar.gz (default) */
	ARC_GZIP,	/* NAME.gz, single files only */
	ARC_TAR,	/* NAME.tar */
	ARC_NONE,	/* NAME, the bytes as they are */
	ARC_AUTO,	/* tar.gz, or tar when a sample shrinks by less than 10% */
};

struct arc_opts {
	enum arc_format format;
	int level;		/* 1..9, default 6 when 0 */
	int threads;		/* compression threads, 0 = number of online CPUs */
	size_t block_size;	/* compression block, 0 = 128 KiB */
};

struct arc_stream;

/* "tar.gz", "gzip", "tar", "none", "auto". */
const char *arc_format_name(enum arc_format f);
/* Returns 0 and sets *out, or -EINVAL. */
int arc_format_parse(const char *name, enum arc_format *out);
/* Object name suffix: ".tar.gz", ".gz", ".tar", "". */
const char *arc_format_suffix(enum arc_format f);

/*
 * Start a stream over the regular file open on @fd (borrowed: the caller
 * keeps it open until arc_stream_free and closes it), whose name inside
 * the tar is @name (borrowed for the call; long names get a pax header).
 * @st is the file's fstat (size, mode, mtime, uid, gid go into the header;
 * exactly st->st_size bytes are read, from offset 0 with pread).  With
 * ARC_AUTO the format is decided here from a sample of the file
 * (arc_stream_format() tells which).  Returns 0 or -errno (-EINVAL:
 * ARC_GZIP... is fine for files; -EISDIR is reserved for directories).
 */
int arc_stream_open_file(const struct arc_opts *opts, int fd, const char *name,
			 const struct stat *st, struct arc_stream **out);

/*
 * Start a stream over the directory tree open on @dirfd (borrowed, kept
 * open by the caller until arc_stream_free): one tar holding @name/ and
 * everything under it, in sorted order (the same tree gives the same
 * bytes).  tar.gz (ARC_AUTO too) or tar; -EISDIR for ARC_GZIP/ARC_NONE;
 * -EINVAL if the tree holds anything but directories and regular files
 * (symlinks, devices: nothing is dropped silently).  The tree is walked
 * here; a file that shrinks before it is read gives -ENODATA.  The sha256
 * is that of the tar stream.
 */
int arc_stream_open_dir(const struct arc_opts *opts, int dirfd, const char *name,
			struct arc_stream **out);

/*
 * Fill @buf with up to @len bytes of the stream.  Returns the number of
 * bytes (less than @len only at the end of the stream), 0 at the end, or
 * -errno (-EIO for a read error, -ENODATA if the file shrank while read:
 * the caller treats that as "changed during the upload").
 */
ssize_t arc_stream_read(struct arc_stream *s, void *buf, size_t len);

/* What was really done (never ARC_AUTO). */
enum arc_format arc_stream_format(const struct arc_stream *s);
/* Bytes of content the stream will read in all (a directory's files added up). */
uint64_t arc_stream_size(const struct arc_stream *s);
/* Bytes of the original read so far / produced so far. */
uint64_t arc_stream_bytes_in(const struct arc_stream *s);
uint64_t arc_stream_bytes_out(const struct arc_stream *s);
/*
 * Feed every byte arc_stream_read() hands out from now on to @sha and to the
 * MD5 lanes @lanes too (either may be NULL; both NULL stops): the uploader's
 * per-part hashes.  For tar and none these ride on the pass that hashes the
 * content, so the bytes are hashed three ways while they are in cache.
 */
struct digest_lanes;
struct digest_sha256;
void arc_stream_ride(struct arc_stream *s, struct digest_lanes *lanes, struct digest_sha256 *sha);
/* After the end: hex sha256 of the original content (65 bytes with NUL). */
int arc_stream_sha256(const struct arc_stream *s, char *hex_out);

void arc_stream_free(struct arc_stream *s);	/* NULL is a no-op; joins threads */

/*
 * Write the tar header block(s) for one member into @buf (ustar, with a pax
 * extended header first when the name does not fit ustar or is not ASCII).
 * Returns the number of bytes written (a multiple of 512) or -ENOSPC when
 * @len is too small (2048 + name length is always enough).  Exposed for
 * tests and the directory walker.
 */
ssize_t arc_tar_header(const char *name, const struct stat *st, char typeflag, void *buf,
		       size_t len);

/*
 * 1 if a sample of @fd (size @size) shrinks by at least 10% at @level,
 * 0 if not, or -errno.  Used by ARC_AUTO.
 */
int arc_sample_compressible(int fd, uint64_t size, int level);

#endif
