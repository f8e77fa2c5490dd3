/*
 * rebuild.c - mgmtfs rebuild: the records made again from the bucket (a new
 * host, a lost disk).
 *
 * Every object mgmtfs uploads carries its record as x-amz-meta-mgmt-*
 * (original path and size, compression, start time), and its sha256: in
 * the metadata for a single PUT, as the tag mgmt-sha256 for a multipart
 * upload (its metadata goes out before the checksum is known).  Rebuild
 * lists the bucket under the prefix, leaves out the keys a record already
 * names, then HEADs the others oldest first (so record ids follow upload
 * times, as `mgmtfs list` expects) and writes a completed record for each
 * that has that metadata.  Objects without it are not mgmtfs's and are
 * left alone, so running it twice makes nothing twice.  When only the
 * database was lost, the copies in completed/ are found again by name and
 * size (find_local_copy), so completed/ shows their records.
 */
#include "fs/fs_i.h"

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "archive/arc.h"
#include "common/log.h"
#include "s3/s3.h"

struct key {
	char *key;
	int64_t mtime;		/* Last-Modified (of the objects to look at) */
};

struct keys {
	struct key *v;
	size_t n, cap;
};

struct rebuild {
	struct store *st;
	struct s3_client *c;
	const char *bucket;
	const char *completed_dir;
	struct keys known;	/* sorted: keys a record already names */
	struct keys todo;	/* the other keys listed */
	size_t seen, made, had, foreign, busy;
	int progress;		/* stderr is a terminal */
};

/* What the x-amz-meta-mgmt-* headers of one object said. */
struct meta {
	char path[STORE_PATH_MAX];
	char size[32];
	char compression[16];
	char started[64];
	char sha[80];
};

static int keys_add(struct keys *k, const char *key, int64_t mtime)
{
	if (k->n == k->cap) {
		size_t ncap = k->cap ? 2 * k->cap : 256;
		struct key *nv = realloc(k->v, ncap * sizeof(*nv));

		if (!nv)
			return -ENOMEM;
		k->v = nv;
		k->cap = ncap;
	}
	k->v[k->n].key = strdup(key);
	if (!k->v[k->n].key)
		return -ENOMEM;
	k->v[k->n++].mtime = mtime;
	return 0;
}

static void keys_free(struct keys *k)
{
	for (size_t i = 0; i < k->n; i++)
		free(k->v[i].key);
	free(k->v);
}

static int by_key(const void *a, const void *b)
{
	return strcmp(((const struct key *)a)->key, ((const struct key *)b)->key);
}

/* Oldest first, then by key. */
static int by_mtime(const void *a, const void *b)
{
	const struct key *x = a, *y = b;

	return x->mtime != y->mtime ? (x->mtime < y->mtime ? -1 : 1) : by_key(a, b);
}

/* qsort() wants an array, even of 0 elements */
static void keys_sort(struct keys *k, int (*cmp)(const void *, const void *))
{
	if (k->n)
		qsort(k->v, k->n, sizeof(*k->v), cmp);
}

static int known_cb(const struct store_record *rec, void *arg)
{
	struct rebuild *rb = arg;

	if (!rec->s3_object_key[0] || strcmp(rec->s3_bucket, rb->bucket))
		return 0;
	return keys_add(&rb->known, rec->s3_object_key, 0);
}

static int meta_cb(const char *name, const char *value, void *arg)
{
	struct meta *m = arg;
	static const struct {
		const char *name;
		size_t off, len;
	} fields[] = {
		{ "mgmt-original-path", offsetof(struct meta, path), STORE_PATH_MAX },
		{ "mgmt-original-size", offsetof(struct meta, size), 32 },
		{ "mgmt-compression", offsetof(struct meta, compression), 16 },
		{ "mgmt-started-at", offsetof(struct meta, started), 64 },
		{ "mgmt-sha256", offsetof(struct meta, sha), 80 },
	};

	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
		if (!strcmp(name, fields[i].name))
			snprintf((char *)m + fields[i].off, fields[i].len, "%s", value);
	return 0;
}

static int is_sha256_hex(const char *s)
{
	size_t n = strspn(s, "0123456789abcdef");

	return n == 64 && !s[n];
}

static int parse_size(const char *s, uint64_t *out)
{
	char *end;

	errno = 0;
	*out = strtoull(s, &end, 10);
	return *s >= '0' && *s <= '9' && !*end && !errno ? 0 : -EINVAL;
}

/* Bytes of the regular files under the directory being walked (nftw has no argument). */
static _Thread_local uint64_t tree_bytes;

static int add_file(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)path;
	(void)ftw;
	if (type == FTW_F && S_ISREG(st->st_mode))
		tree_bytes += (uint64_t)st->st_size;
	return 0;
}

/*
 * Where the unit of @rec lies in completed/ on this host, if it is still
 * there (a lost database, not a lost disk): the first of NAME, NAME_1.EXT,
 * ... that no record holds and whose size (a directory: its files added
 * up) is the original's.  Without one the record has no completed_path.
 */
static void find_local_copy(struct rebuild *rb, struct store_record *rec)
{
	const char *name = rec->original_path + 8;	/* after "pending/" */
	char dest[NAME_MAX + 1], path[PATH_MAX], rel[STORE_PATH_MAX];
	struct stat st;
	uint64_t id, size;

	for (unsigned i = 0; i < 100; i++) {
		fs_numbered_name(name, i, dest, sizeof(dest));
		snprintf(path, sizeof(path), "%s/%s", rb->completed_dir, dest);
		snprintf(rel, sizeof(rel), "completed/%s", dest);
		if (lstat(path, &st) || store_find_path(rb->st, rel, &id) == 0)
			continue;
		if (S_ISREG(st.st_mode)) {
			size = (uint64_t)st.st_size;
		} else if (S_ISDIR(st.st_mode)) {
			tree_bytes = 0;
			if (nftw(path, add_file, 16, FTW_PHYS))
				continue;
			size = tree_bytes;
		} else {
			continue;
		}
		if (size == rec->original_size) {
			snprintf(rec->completed_path, sizeof(rec->completed_path), "%s", rel);
			return;
		}
	}
}

/* What became of one object. */
enum { R_FOREIGN, R_MADE, R_BUSY, R_GONE };

/* A record for @key from its metadata: one of R_*, or -errno. */
static int rebuild_one(struct rebuild *rb, const char *key, int64_t listed_mtime,
		       struct store_record *rec)
{
	struct s3_object_info info = { 0 };
	struct meta m = { 0 };
	enum arc_format fmt;
	uint64_t id, size;
	int rc;

	rc = s3_head_object_meta(rb->c, key, &info, meta_cb, &m);
	if (rc == -ENOENT)
		return R_GONE;	/* deleted since the listing */
	if (rc)
		return rc;
	if (strncmp(m.path, "pending/", 8) || !m.path[8] || parse_size(m.size, &size) ||
	    arc_format_parse(m.compression, &fmt) || fmt == ARC_AUTO)
		return R_FOREIGN;
	if (!m.sha[0] && strchr(info.etag, '-') &&
	    s3_get_tag(rb->c, key, "mgmt-sha256", m.sha, sizeof(m.sha)) &&
	    s3_client_http_status(rb->c) != 404)
		mgmtfs_info("cannot read the tags of '%s' (%s): its record has no checksum", key,
			    s3_client_error(rb->c));
	/* a unit in pending/ under that name now keeps the path to itself */
	if (!store_find_path(rb->st, m.path, &id) && !store_get(rb->st, id, rec) &&
	    rec->status != STORE_COMPLETED && rec->status != STORE_DUPLICATE &&
	    rec->status != STORE_IGNORED)
		return R_BUSY;
	memset(rec, 0, sizeof(*rec));
	rec->status = STORE_COMPLETED;
	snprintf(rec->original_path, sizeof(rec->original_path), "%s", m.path);
	rec->original_size = size;
	rec->started_at = s3_parse_time(m.started);
	rec->upload_timestamp = info.mtime ? info.mtime : listed_mtime;
	snprintf(rec->compression_type, sizeof(rec->compression_type), "%s", m.compression);
	snprintf(rec->s3_bucket, sizeof(rec->s3_bucket), "%s", rb->bucket);
	snprintf(rec->s3_object_key, sizeof(rec->s3_object_key), "%s", key);
	snprintf(rec->etag, sizeof(rec->etag), "%s", info.etag);
	rec->compressed_size = info.size;
	if (is_sha256_hex(m.sha))
		snprintf(rec->checksum, sizeof(rec->checksum), "sha256:%s", m.sha);
	rec->attempts = 1;
	if (rb->completed_dir)
		find_local_copy(rb, rec);
	rc = store_put(rb->st, rec);
	return rc ? rc : R_MADE;
}

static int object_cb(const char *key, const struct s3_object_info *o, void *arg)
{
	struct rebuild *rb = arg;
	struct key k = { .key = (char *)key };

	rb->seen++;
	if (rb->known.n && bsearch(&k, rb->known.v, rb->known.n, sizeof(k), by_key)) {
		rb->had++;
		return 0;
	}
	return keys_add(&rb->todo, key, o->mtime);
}

static int look_at_all(struct rebuild *rb)
{
	struct store_record *rec = malloc(sizeof(*rec));
	int rc = 0;

	if (!rec)
		return -ENOMEM;
	keys_sort(&rb->todo, by_mtime);
	for (size_t i = 0; i < rb->todo.n && rc >= 0; i++) {
		rc = rebuild_one(rb, rb->todo.v[i].key, rb->todo.v[i].mtime, rec);
		rb->made += rc == R_MADE;
		rb->foreign += rc == R_FOREIGN;
		rb->busy += rc == R_BUSY;
		if (rb->progress && (i + 1) % 100 == 0)
			fprintf(stderr, "\rrebuild: %zu of %zu objects looked at, %zu records made",
				i + 1, rb->todo.n, rb->made);
	}
	free(rec);
	return rc < 0 ? rc : 0;
}

int rebuild_run(struct store *st, const struct mgmtfs_config *cfg, int json)
{
	struct rebuild rb = { .st = st, .bucket = cfg->bucket, .completed_dir = cfg->completed_dir,
			      .progress = isatty(2) };
	struct s3_config sc;
	char err[512], eb[128], prefix[1100] = "";
	int rc;

	cfg_s3_config(cfg, &sc);
	/* a command: a dead endpoint fails within seconds, in one line, not eight */
	sc.max_attempts = 4;
	sc.retry_max_seconds = 10;
	sc.connect_timeout = 5;
	if (atomic_load(&mgmtfs_log_threshold) < MGMTFS_LOG_DEBUG)
		atomic_store(&mgmtfs_log_threshold, MGMTFS_LOG_ERR);
	rc = s3_global_init();
	if (!rc)
		rc = s3_client_new_err(&sc, &rb.c, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "mgmtfs: error: %s\n",
			rc == -EINVAL ? err : mgmtfs_strerror(rc, eb, sizeof(eb)));
		return 1;
	}
	rc = store_list(st, -1, known_cb, &rb);
	if (!rc) {
		keys_sort(&rb.known, by_key);
		snprintf(prefix, sizeof(prefix), "%s%s", cfg->prefix, *cfg->prefix ? "/" : "");
		rc = s3_list_objects(rb.c, prefix, object_cb, &rb);
	}
	if (!rc)
		rc = look_at_all(&rb);
	if (rb.progress && rb.todo.n >= 100)
		fputc('\n', stderr);
	if (rc) {
		const char *why = s3_client_error(rb.c);

		fprintf(stderr, "mgmtfs: error: rebuild stopped after %zu records: %s\n", rb.made,
			*why ? why : mgmtfs_strerror(rc, eb, sizeof(eb)));
	} else if (json) {
		printf("{\"objects\": %zu, \"made\": %zu, \"already\": %zu, \"not_mgmtfs\": %zu, "
		       "\"in_pending\": %zu}\n",
		       rb.seen, rb.made, rb.had, rb.foreign, rb.busy);
	} else {
		printf("objects in s3://%s/%s: %zu\n"
		       "records made:          %zu\n"
		       "already recorded:      %zu\n"
		       "not from mgmtfs:       %zu\n",
		       cfg->bucket, prefix, rb.seen, rb.made, rb.had, rb.foreign);
		if (rb.busy)
			printf("left alone (a file of that name is in pending/): %zu\n", rb.busy);
	}
	keys_free(&rb.known);
	keys_free(&rb.todo);
	s3_client_free(rb.c);
	s3_global_cleanup();
	return rc ? 1 : 0;
}
