/*
 * tar.c - POSIX ustar member headers, with a pax extended header ('x')
 * in front when a field does not fit ustar: a name that is longer than
 * 100 bytes and cannot be split at a '/' into prefix (155) + name (100),
 * or that holds bytes outside printable-and-control ASCII ("path"); a size
 * of 8 GiB or more ("size", the ustar field then holds the GNU base-256
 * form so readers without pax still see the right size); an mtime before
 * 1970 or past 2242 ("mtime"); a uid/gid over 07777777 ("uid", "gid").
 */
#include "archive/arc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TAR_BLOCK 512u

/* ustar field offsets and widths (POSIX.1-2001, pax "ustar Interchange Format") */
#define F_NAME	   0
#define F_MODE	   100
#define F_UID	   108
#define F_GID	   116
#define F_SIZE	   124
#define F_MTIME	   136
#define F_CHKSUM   148
#define F_TYPEFLAG 156
#define F_MAGIC	   257
#define F_VERSION  263
#define F_PREFIX   345

/* Write @v as width-1 zero-padded octal digits and a NUL; -ERANGE if too big. */
static int put_octal(unsigned char *field, size_t width, uint64_t v)
{
	size_t i;

	field[width - 1] = '\0';
	for (i = width - 1; i > 0; i--) {
		field[i - 1] = (unsigned char)('0' + (v & 7));
		v >>= 3;
	}
	return v ? -ERANGE : 0;
}

/* GNU base-256: high bit of the first byte set, big-endian value. */
static void put_base256(unsigned char *field, size_t width, uint64_t v)
{
	size_t i;

	for (i = width; i > 0; i--) {
		field[i - 1] = (unsigned char)(v & 0xff);
		v >>= 8;
	}
	field[0] = 0x80;
}

static size_t dec_digits(size_t n)
{
	size_t d = 1;

	while (n >= 10) {
		n /= 10;
		d++;
	}
	return d;
}

/* Length of the pax record "LEN KEY=VALUE\n", LEN counting itself. */
static size_t pax_record_len(size_t klen, size_t vlen)
{
	size_t base = 1 + klen + 1 + vlen + 1;	/* ' ' key '=' value '\n' */
	size_t n = base + dec_digits(base);

	if (dec_digits(n) != n - base)
		n = base + dec_digits(n);
	return n;
}

/* Append one record at @p (room already checked); returns its length. */
static size_t pax_record(unsigned char *p, const char *key, const char *val, size_t vlen)
{
	size_t klen = strlen(key);
	size_t n = pax_record_len(klen, vlen);
	char num[24];
	int d = snprintf(num, sizeof(num), "%zu ", n);

	memcpy(p, num, (size_t)d);
	memcpy(p + d, key, klen);
	p[d + klen] = '=';
	memcpy(p + d + klen + 1, val, vlen);
	p[n - 1] = '\n';
	return n;
}

static void put_checksum(unsigned char *h)
{
	unsigned int sum = 0;
	size_t i;

	memset(h + F_CHKSUM, ' ', 8);
	for (i = 0; i < TAR_BLOCK; i++)
		sum += h[i];
	put_octal(h + F_CHKSUM, 7, sum);	/* six digits, NUL, then the space kept */
}

static int is_plain_ascii(const char *s, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if ((unsigned char)s[i] >= 0x80)
			return 0;
	return 1;
}

/* Copy @n bytes of @s into a header field with bytes >= 0x80 as '_'. */
static void put_ascii(unsigned char *field, const char *s, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		field[i] = (unsigned char)s[i] >= 0x80 ? '_' : (unsigned char)s[i];
}

/*
 * Split @path (@n bytes) at a '/' into prefix (<= 155) and name (1..100).
 * Returns the slash's index or -1.  Longest prefix first, as GNU tar does.
 */
static long ustar_split(const char *path, size_t n)
{
	size_t i = n - 1 < 155 ? n - 1 : 155;

	for (;; i--) {
		if (path[i] == '/' && i > 0 && n - i - 1 >= 1 && n - i - 1 <= 100)
			return (long)i;
		if (i == 0 || n - i - 1 > 100)
			return -1;
	}
}

static void ustar_common(unsigned char *h, const struct stat *st, char typeflag)
{
	put_octal(h + F_MODE, 8, (uint64_t)(st->st_mode & 07777));
	if (put_octal(h + F_UID, 8, (uint64_t)st->st_uid))
		put_octal(h + F_UID, 8, 0);
	if (put_octal(h + F_GID, 8, (uint64_t)st->st_gid))
		put_octal(h + F_GID, 8, 0);
	if (st->st_mtime < 0 || put_octal(h + F_MTIME, 12, (uint64_t)st->st_mtime))
		put_octal(h + F_MTIME, 12, 0);
	h[F_TYPEFLAG] = (unsigned char)typeflag;
	memcpy(h + F_MAGIC, "ustar", 6);	/* with its NUL */
	memcpy(h + F_VERSION, "00", 2);
}

ssize_t arc_tar_header(const char *name, const struct stat *st, char typeflag, void *buf,
		       size_t len)
{
	unsigned char *out = buf;
	unsigned char *h;
	char *path = NULL;
	char num[32];
	size_t n, rec_len = 0, need, off = 0;
	uint64_t size;
	int need_path = 0, need_size = 0, need_mtime = 0, need_uid = 0, need_gid = 0;
	long split = -1;
	ssize_t rc;

	if (!name || !*name || !st || !buf)
		return -EINVAL;
	n = strlen(name);
	path = malloc(n + 2);
	if (!path)
		return -ENOMEM;
	memcpy(path, name, n + 1);
	if (typeflag == '5' && path[n - 1] != '/') {	/* directories end in '/' */
		path[n++] = '/';
		path[n] = '\0';
	}
	size = typeflag == '0' || typeflag == '\0' || typeflag == '7' ? (uint64_t)st->st_size : 0;

	if (!is_plain_ascii(path, n)) {
		need_path = 1;
	} else if (n > 100) {
		split = ustar_split(path, n);
		need_path = split < 0;
	}
	need_size = size >= (uint64_t)1 << 33;	/* 11 octal digits hold < 8 GiB */
	need_mtime = st->st_mtime < 0 || (uint64_t)st->st_mtime >= (uint64_t)1 << 33;
	need_uid = (uint64_t)st->st_uid > 07777777;
	need_gid = (uint64_t)st->st_gid > 07777777;

	if (need_path)
		rec_len += pax_record_len(4, n);
	if (need_size)
		rec_len += pax_record_len(4, (size_t)snprintf(num, sizeof(num), "%llu",
							       (unsigned long long)size));
	if (need_mtime)
		rec_len += pax_record_len(5, (size_t)snprintf(num, sizeof(num), "%lld",
							       (long long)st->st_mtime));
	if (need_uid)
		rec_len += pax_record_len(3, (size_t)snprintf(num, sizeof(num), "%llu",
							       (unsigned long long)st->st_uid));
	if (need_gid)
		rec_len += pax_record_len(3, (size_t)snprintf(num, sizeof(num), "%llu",
							       (unsigned long long)st->st_gid));
	need = TAR_BLOCK;
	if (rec_len)
		need += TAR_BLOCK + (rec_len + TAR_BLOCK - 1) / TAR_BLOCK * TAR_BLOCK;
	if (len < need) {
		rc = -ENOSPC;
		goto out;
	}
	memset(out, 0, need);

	if (rec_len) {
		/* the extended header: "PaxHeaders/<basename>", its records as data */
		static const char pfx[] = "PaxHeaders/";
		const char *base = strrchr(name, '/');
		size_t blen, plen = sizeof(pfx) - 1;
		unsigned char *p;

		base = base && base[1] ? base + 1 : name;
		blen = strlen(base);
		if (blen > 99 - plen)
			blen = 99 - plen;
		h = out;
		memcpy(h + F_NAME, pfx, plen);
		put_ascii(h + F_NAME + plen, base, blen);
		ustar_common(h, st, 'x');
		put_octal(h + F_MODE, 8, 0644);
		put_octal(h + F_SIZE, 12, rec_len);
		put_checksum(h);

		p = out + TAR_BLOCK;
		if (need_path)
			p += pax_record(p, "path", path, n);
		if (need_size)
			p += pax_record(p, "size", num,
					(size_t)snprintf(num, sizeof(num), "%llu",
							 (unsigned long long)size));
		if (need_mtime)
			p += pax_record(p, "mtime", num,
					(size_t)snprintf(num, sizeof(num), "%lld",
							 (long long)st->st_mtime));
		if (need_uid)
			p += pax_record(p, "uid", num,
					(size_t)snprintf(num, sizeof(num), "%llu",
							 (unsigned long long)st->st_uid));
		if (need_gid)
			p += pax_record(p, "gid", num,
					(size_t)snprintf(num, sizeof(num), "%llu",
							 (unsigned long long)st->st_gid));
		off = need - TAR_BLOCK;
	}

	h = out + off;
	if (need_path) {
		/* readers that ignore pax get a truncated, ASCII-only name */
		put_ascii(h + F_NAME, path, n < 100 ? n : 100);
	} else if (split >= 0) {
		memcpy(h + F_PREFIX, path, (size_t)split);
		memcpy(h + F_NAME, path + split + 1, n - (size_t)split - 1);
	} else {
		memcpy(h + F_NAME, path, n);	/* exactly 100 bytes has no NUL: allowed */
	}
	ustar_common(h, st, typeflag);
	if (need_size)
		put_base256(h + F_SIZE, 12, size);
	else
		put_octal(h + F_SIZE, 12, size);
	put_checksum(h);
	rc = (ssize_t)need;
out:
	free(path);
	return rc;
}
