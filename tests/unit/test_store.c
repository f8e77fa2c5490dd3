/*
 * test_store.c - unit tests of store/ against a real LMDB environment.
 *
 * Each test gets its own mkdtemp directory under $TMPDIR (or /tmp), so ctest
 * -j is safe.  The database lives in <tmp>/db, which store_open() creates.
 * The readonly-while-open test forks: LMDB forbids opening one environment
 * twice in a process, and the real reader (the CLI) is another process.
 */
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <lmdb.h>

#include "store/store.h"
#include "store/store_i.h"

struct fixture {
	char root[PATH_MAX];
	char dir[PATH_MAX + 8];
	struct store *st;
};

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int setup_dir(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	const char *tmp = getenv("TMPDIR");

	if (!f)
		return -1;
	if (!tmp || !tmp[0])
		tmp = "/tmp";
	snprintf(f->root, sizeof(f->root), "%s/test_store.XXXXXX", tmp);
	if (!mkdtemp(f->root)) {
		free(f);
		return -1;
	}
	snprintf(f->dir, sizeof(f->dir), "%s/db", f->root);
	*state = f;
	return 0;
}

static int setup(void **state)
{
	struct fixture *f;

	if (setup_dir(state))
		return -1;
	f = *state;
	return store_open(f->dir, 0, &f->st) ? -1 : 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	store_close(f->st);
	nftw(f->root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static struct store_record *rec_new(const char *orig, enum store_status status)
{
	struct store_record *r = calloc(1, sizeof(*r));

	assert_non_null(r);
	snprintf(r->original_path, sizeof(r->original_path), "%s", orig);
	r->status = status;
	return r;
}

static void rec_fill(struct store_record *r)
{
	memset(r, 0, sizeof(*r));
	r->status = STORE_UPLOADING;
	snprintf(r->original_path, sizeof(r->original_path), "pending/a b.mp4");
	snprintf(r->completed_path, sizeof(r->completed_path), "completed/a b.mp4");
	r->started_at = 1795500000;
	r->upload_timestamp = 1795500600;
	snprintf(r->compression_type, sizeof(r->compression_type), "tar.gz");
	snprintf(r->s3_bucket, sizeof(r->s3_bucket), "bucket");
	snprintf(r->s3_object_key, sizeof(r->s3_object_key), "prefix/a b.mp4.tar.gz");
	snprintf(r->etag, sizeof(r->etag), "d41d8cd98f00b204e9800998ecf8427e-3");
	r->original_size = 12345678901ULL;
	r->compressed_size = 2345678;
	snprintf(r->checksum, sizeof(r->checksum), "sha256:%064d", 7);
	r->attempts = 3;
	snprintf(r->error, sizeof(r->error), "connection refused: check the endpoint");
	r->progress_done = 1000;
	r->progress_total = 4000;
	snprintf(r->upload_id, sizeof(r->upload_id), "upload-id-xyz");
	r->generation = 9;
	r->flags = STORE_F_WRITE_FAILED;
	r->upload_again = 1;
	r->head = 0xfedcba9876543210ULL;
}

static uint64_t put_new(struct store *st, const char *orig, enum store_status status)
{
	struct store_record *r = rec_new(orig, status);
	uint64_t id;

	assert_int_equal(store_put(st, r), 0);
	id = r->id;
	free(r);
	return id;
}

static uint64_t find_path(struct store *st, const char *path)
{
	uint64_t id = 0;
	int rc = store_find_path(st, path, &id);

	return rc == 0 ? id : (uint64_t)(int64_t)rc;
}

/* Collects the ids store_list() passes, and stops at stop_after if set. */
struct collect {
	uint64_t ids[4096];
	size_t n;
	size_t stop_after;
	int stop_value;
};

static int collect_cb(const struct store_record *rec, void *arg)
{
	struct collect *c = arg;

	if (c->n < sizeof(c->ids) / sizeof(c->ids[0]))
		c->ids[c->n] = rec->id;
	c->n++;
	if (c->stop_after && c->n == c->stop_after)
		return c->stop_value;
	return 0;
}

static void test_roundtrip_all_fields(void **state)
{
	struct fixture *f = *state;
	struct store_record *in = malloc(sizeof(*in));
	struct store_record *out = malloc(sizeof(*out));

	rec_fill(in);
	assert_int_equal(store_put(f->st, in), 0);
	assert_int_equal(in->id, 1);
	memset(out, 0xa5, sizeof(*out));
	assert_int_equal(store_get(f->st, in->id, out), 0);
	assert_int_equal(out->id, 1);
	assert_int_equal(out->status, STORE_UPLOADING);
	assert_string_equal(out->original_path, in->original_path);
	assert_string_equal(out->completed_path, in->completed_path);
	assert_int_equal(out->started_at, in->started_at);
	assert_int_equal(out->upload_timestamp, in->upload_timestamp);
	assert_string_equal(out->compression_type, "tar.gz");
	assert_string_equal(out->s3_bucket, "bucket");
	assert_string_equal(out->s3_object_key, in->s3_object_key);
	assert_string_equal(out->etag, in->etag);
	assert_int_equal(out->original_size, 12345678901ULL);
	assert_int_equal(out->compressed_size, 2345678);
	assert_string_equal(out->checksum, in->checksum);
	assert_int_equal(out->attempts, 3);
	assert_string_equal(out->error, in->error);
	assert_int_equal(out->progress_done, 1000);
	assert_int_equal(out->progress_total, 4000);
	assert_string_equal(out->upload_id, "upload-id-xyz");
	assert_int_equal(out->generation, 9);
	assert_int_equal(out->flags, STORE_F_WRITE_FAILED);
	assert_int_equal(out->upload_again, 1);
	assert_true(out->head == 0xfedcba9876543210ULL);
	assert_memory_equal(out, in, sizeof(*in));	/* nothing else differs */

	/* negative timestamps survive too */
	in->started_at = -5;
	assert_int_equal(store_put(f->st, in), 0);
	assert_int_equal(store_get(f->st, in->id, out), 0);
	assert_int_equal(out->started_at, -5);
	free(in);
	free(out);
}

static void test_get_missing_is_enoent(void **state)
{
	struct fixture *f = *state;
	struct store_record *r = calloc(1, sizeof(*r));

	assert_int_equal(store_get(f->st, 42, r), -ENOENT);
	assert_int_equal(store_get(f->st, 0, r), -ENOENT);
	assert_int_equal(store_delete(f->st, 42), -ENOENT);
	r->status = STORE_STATUS_COUNT;
	assert_int_equal(store_put(f->st, r), -EINVAL);
	free(r);
}

static void test_new_ids_increase(void **state)
{
	struct fixture *f = *state;
	struct store_record *r;
	uint64_t prev = 0, id;
	int i;

	for (i = 0; i < 5; i++) {
		id = put_new(f->st, "pending/x", STORE_QUEUED);
		assert_true(id > prev);
		prev = id;
	}
	/* an id chosen by the caller (rebuild) moves the allocator past it */
	r = rec_new("pending/chosen", STORE_COMPLETED);
	r->id = 100;
	assert_int_equal(store_put(f->st, r), 0);
	assert_int_equal(r->id, 100);
	free(r);
	assert_int_equal(put_new(f->st, "pending/y", STORE_QUEUED), 101);
}

static void test_update_moves_status_index(void **state)
{
	struct fixture *f = *state;
	struct store_record *r = rec_new("pending/a", STORE_QUEUED);
	struct collect *c = calloc(1, sizeof(*c));

	assert_int_equal(store_put(f->st, r), 0);
	put_new(f->st, "pending/other", STORE_COMPLETED);
	assert_int_equal(store_list(f->st, STORE_QUEUED, collect_cb, c), 0);
	assert_int_equal(c->n, 1);
	assert_int_equal(c->ids[0], r->id);

	r->status = STORE_UPLOADING;
	assert_int_equal(store_put(f->st, r), 0);
	c->n = 0;
	assert_int_equal(store_list(f->st, STORE_QUEUED, collect_cb, c), 0);
	assert_int_equal(c->n, 0);
	assert_int_equal(store_list(f->st, STORE_UPLOADING, collect_cb, c), 0);
	assert_int_equal(c->n, 1);
	assert_int_equal(c->ids[0], r->id);
	c->n = 0;
	assert_int_equal(store_list(f->st, -1, collect_cb, c), 0);
	assert_int_equal(c->n, 2);
	assert_int_equal(store_list(f->st, STORE_STATUS_COUNT, collect_cb, c), -EINVAL);
	free(c);
	free(r);
}

static void test_path_index(void **state)
{
	struct fixture *f = *state;
	struct store_record *a = rec_new("pending/x", STORE_FAILED);
	struct store_record *b = rec_new("pending/x", STORE_QUEUED);
	struct store_record *c = rec_new("pending/p", STORE_QUEUED);

	assert_int_equal(store_put(f->st, a), 0);
	assert_int_equal(find_path(f->st, "pending/x"), a->id);
	assert_int_equal(store_put(f->st, b), 0);
	assert_int_equal(find_path(f->st, "pending/x"), b->id);	/* newest wins */

	/* updating the older record without a path change keeps the index */
	a->attempts = 2;
	assert_int_equal(store_put(f->st, a), 0);
	assert_int_equal(find_path(f->st, "pending/x"), b->id);

	/* the older record moving away does not remove the newer's entry */
	snprintf(a->original_path, sizeof(a->original_path), "pending/y");
	assert_int_equal(store_put(f->st, a), 0);
	assert_int_equal(find_path(f->st, "pending/x"), b->id);
	assert_int_equal(find_path(f->st, "pending/y"), a->id);

	/* completed_path is indexed too */
	snprintf(b->completed_path, sizeof(b->completed_path), "completed/x");
	b->status = STORE_COMPLETED;
	assert_int_equal(store_put(f->st, b), 0);
	assert_int_equal(find_path(f->st, "completed/x"), b->id);
	assert_int_equal(find_path(f->st, "pending/x"), b->id);

	/* a changed path drops the old entry when it still names the record */
	snprintf(b->original_path, sizeof(b->original_path), "pending/w");
	assert_int_equal(store_put(f->st, b), 0);
	assert_int_equal(find_path(f->st, "pending/x"), (uint64_t)(int64_t)-ENOENT);
	assert_int_equal(find_path(f->st, "pending/w"), b->id);

	/* swapping the two paths keeps both */
	snprintf(b->original_path, sizeof(b->original_path), "completed/x");
	snprintf(b->completed_path, sizeof(b->completed_path), "pending/w");
	assert_int_equal(store_put(f->st, b), 0);
	assert_int_equal(find_path(f->st, "pending/w"), b->id);
	assert_int_equal(find_path(f->st, "completed/x"), b->id);

	/* a path moving from original_path to completed_path stays indexed */
	assert_int_equal(store_put(f->st, c), 0);
	snprintf(c->original_path, sizeof(c->original_path), "pending/q");
	snprintf(c->completed_path, sizeof(c->completed_path), "pending/p");
	assert_int_equal(store_put(f->st, c), 0);
	assert_int_equal(find_path(f->st, "pending/p"), c->id);
	assert_int_equal(find_path(f->st, "pending/q"), c->id);

	assert_int_equal(find_path(f->st, "pending/none"), (uint64_t)(int64_t)-ENOENT);
	assert_int_equal(find_path(f->st, ""), (uint64_t)(int64_t)-ENOENT);
	free(a);
	free(b);
	free(c);
}

static void test_long_path_index(void **state)
{
	struct fixture *f = *state;
	struct store_record *a = rec_new("", STORE_QUEUED);
	struct store_record *b = rec_new("", STORE_QUEUED);
	struct store_record *out = malloc(sizeof(*out));
	char *third = malloc(STORE_PATH_MAX);

	/* same first 2000 bytes, different tails: only the hash tells them apart */
	memset(a->original_path, 'a', 3000);
	memcpy(a->original_path, "pending/", 8);
	memcpy(b->original_path, a->original_path, 3000);
	memcpy(third, a->original_path, 3001);
	a->original_path[2999] = '1';
	b->original_path[2999] = '2';
	third[2999] = '3';
	assert_int_equal(store_put(f->st, a), 0);
	assert_int_equal(store_put(f->st, b), 0);
	assert_int_equal(find_path(f->st, a->original_path), a->id);
	assert_int_equal(find_path(f->st, b->original_path), b->id);
	assert_int_equal(find_path(f->st, third), (uint64_t)(int64_t)-ENOENT);
	assert_int_equal(store_get(f->st, a->id, out), 0);
	assert_string_equal(out->original_path, a->original_path);

	/* a full-length path (4095 bytes) */
	memset(a->completed_path, 'c', STORE_PATH_MAX - 1);
	assert_int_equal(store_put(f->st, a), 0);
	assert_int_equal(find_path(f->st, a->completed_path), a->id);
	assert_int_equal(store_delete(f->st, a->id), 0);
	assert_int_equal(find_path(f->st, a->completed_path), (uint64_t)(int64_t)-ENOENT);
	assert_int_equal(find_path(f->st, a->original_path), (uint64_t)(int64_t)-ENOENT);
	free(third);
	free(out);
	free(a);
	free(b);
}

static void test_checksum_index(void **state)
{
	struct fixture *f = *state;
	struct store_record *a = rec_new("pending/a", STORE_COMPLETED);
	struct store_record *b = rec_new("pending/b", STORE_DUPLICATE);
	uint64_t id = 0;

	snprintf(a->checksum, sizeof(a->checksum), "sha256:%064d", 1);
	snprintf(b->checksum, sizeof(b->checksum), "sha256:%064d", 1);
	assert_int_equal(store_find_checksum(f->st, a->checksum, &id), -ENOENT);
	assert_int_equal(store_put(f->st, a), 0);
	assert_int_equal(store_find_checksum(f->st, a->checksum, &id), 0);
	assert_int_equal(id, a->id);
	assert_int_equal(store_put(f->st, b), 0);
	assert_int_equal(store_find_checksum(f->st, a->checksum, &id), 0);
	assert_int_equal(id, b->id);

	a->attempts = 1;	/* no checksum change: b keeps the entry */
	assert_int_equal(store_put(f->st, a), 0);
	assert_int_equal(store_find_checksum(f->st, a->checksum, &id), 0);
	assert_int_equal(id, b->id);

	snprintf(b->checksum, sizeof(b->checksum), "sha256:%064d", 2);
	assert_int_equal(store_put(f->st, b), 0);
	assert_int_equal(store_find_checksum(f->st, b->checksum, &id), 0);
	assert_int_equal(id, b->id);
	assert_int_equal(store_find_checksum(f->st, a->checksum, &id), -ENOENT);
	assert_int_equal(store_find_checksum(f->st, "", &id), -ENOENT);
	free(a);
	free(b);
}

static void test_list_order_and_stop(void **state)
{
	struct fixture *f = *state;
	struct collect *c = calloc(1, sizeof(*c));
	struct store_record *r = NULL;
	uint64_t ids[5];
	size_t i;

	for (i = 0; i < 5; i++)
		ids[i] = put_new(f->st, "pending/x", STORE_QUEUED);
	assert_int_equal(store_list(f->st, -1, collect_cb, c), 0);
	assert_int_equal(c->n, 5);
	for (i = 0; i < 5; i++)
		assert_int_equal(c->ids[i], ids[4 - i]);

	memset(c, 0, sizeof(*c));
	c->stop_after = 3;
	c->stop_value = 7;
	assert_int_equal(store_list(f->st, -1, collect_cb, c), 7);
	assert_int_equal(c->n, 3);
	assert_int_equal(c->ids[2], ids[2]);

	/* filtered walk, newest first */
	r = calloc(1, sizeof(*r));
	for (i = 1; i < 5; i += 2) {
		assert_int_equal(store_get(f->st, ids[i], r), 0);
		r->status = STORE_FAILED;
		assert_int_equal(store_put(f->st, r), 0);
	}
	memset(c, 0, sizeof(*c));
	assert_int_equal(store_list(f->st, STORE_FAILED, collect_cb, c), 0);
	assert_int_equal(c->n, 2);
	assert_int_equal(c->ids[0], ids[3]);
	assert_int_equal(c->ids[1], ids[1]);
	memset(c, 0, sizeof(*c));
	c->stop_after = 1;
	c->stop_value = -ECANCELED;
	assert_int_equal(store_list(f->st, STORE_QUEUED, collect_cb, c), -ECANCELED);
	assert_int_equal(c->ids[0], ids[4]);

	memset(c, 0, sizeof(*c));
	assert_int_equal(store_list(f->st, STORE_IGNORED, collect_cb, c), 0);
	assert_int_equal(c->n, 0);
	free(r);
	free(c);
}

/* The callback may write: store_list() holds no txn while it runs. */
static int requeue_cb(const struct store_record *rec, void *arg)
{
	struct store_record *copy = malloc(sizeof(*copy));
	int rc;

	memcpy(copy, rec, sizeof(*copy));
	copy->status = STORE_QUEUED;
	copy->attempts++;
	rc = store_put(arg, copy);
	free(copy);
	return rc;
}

static void test_list_callback_may_write(void **state)
{
	struct fixture *f = *state;
	struct collect *c = calloc(1, sizeof(*c));

	put_new(f->st, "pending/a", STORE_FAILED);
	put_new(f->st, "pending/b", STORE_FAILED);
	assert_int_equal(store_list(f->st, STORE_FAILED, requeue_cb, f->st), 0);
	assert_int_equal(store_list(f->st, STORE_QUEUED, collect_cb, c), 0);
	assert_int_equal(c->n, 2);
	free(c);
}

static void test_parts(void **state)
{
	struct fixture *f = *state;
	struct store_part *parts = NULL;
	size_t n = 99;

	assert_int_equal(store_part_list(f->st, 1, &parts, &n), 0);
	assert_null(parts);
	assert_int_equal(n, 0);

	assert_int_equal(store_part_put(f->st, 1, 3, "etag-3", 333), 0);
	assert_int_equal(store_part_put(f->st, 1, 1, "etag-1", 111), 0);
	assert_int_equal(store_part_put(f->st, 1, 2, "etag 2 with space", 222), 0);
	assert_int_equal(store_part_put(f->st, 1, 1, "etag-1b", 1111), 0);	/* replaces */
	assert_int_equal(store_part_put(f->st, 2, 1, "other", 5), 0);
	assert_int_equal(store_part_put(f->st, 1, 0, "bad", 5), -EINVAL);

	assert_int_equal(store_part_list(f->st, 1, &parts, &n), 0);
	assert_int_equal(n, 3);
	assert_int_equal(parts[0].partno, 1);
	assert_string_equal(parts[0].etag, "etag-1b");
	assert_int_equal(parts[0].size, 1111);
	assert_int_equal(parts[1].partno, 2);
	assert_string_equal(parts[1].etag, "etag 2 with space");
	assert_int_equal(parts[1].size, 222);
	assert_int_equal(parts[2].partno, 3);
	assert_int_equal(parts[2].size, 333);
	free(parts);

	assert_int_equal(store_part_clear(f->st, 1), 0);
	assert_int_equal(store_part_list(f->st, 1, &parts, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(store_part_list(f->st, 2, &parts, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(parts[0].etag, "other");
	free(parts);
}

static void test_meta(void **state)
{
	struct fixture *f = *state;
	char buf[16];

	assert_int_equal(store_meta_get(f->st, "hold", buf, sizeof(buf)), -ENOENT);
	assert_int_equal(store_meta_put(f->st, "hold", "1"), 0);
	assert_int_equal(store_meta_get(f->st, "hold", buf, sizeof(buf)), 0);
	assert_string_equal(buf, "1");
	assert_int_equal(store_meta_put(f->st, "hold", "0"), 0);
	assert_int_equal(store_meta_get(f->st, "hold", buf, sizeof(buf)), 0);
	assert_string_equal(buf, "0");
	assert_int_equal(store_meta_put(f->st, "long", "abcdefghij"), 0);
	assert_int_equal(store_meta_get(f->st, "long", buf, 4), 0);
	assert_string_equal(buf, "abc");
	assert_int_equal(store_meta_put(f->st, "empty", ""), 0);
	assert_int_equal(store_meta_get(f->st, "empty", buf, sizeof(buf)), 0);
	assert_string_equal(buf, "");
	assert_int_equal(store_meta_put(f->st, "next_id", "1"), -EINVAL);
	assert_int_equal(store_meta_put(f->st, "", "1"), -EINVAL);
}

struct gone_seen {
	char ids[4][64];
	char buckets[4][64];
	char keys[4][64];
	int n;
	int stop_at;	/* return nonzero at this call (1-based), 0: never */
};

static int gone_cb(const char *upload_id, const char *bucket, const char *key, void *arg)
{
	struct gone_seen *g = arg;

	assert_true(g->n < 4);
	snprintf(g->ids[g->n], sizeof(g->ids[0]), "%s", upload_id);
	snprintf(g->buckets[g->n], sizeof(g->buckets[0]), "%s", bucket);
	snprintf(g->keys[g->n], sizeof(g->keys[0]), "%s", key);
	return ++g->n == g->stop_at ? 7 : 0;
}

static void test_gone_uploads(void **state)
{
	struct fixture *f = *state;
	struct gone_seen g = { 0 };
	char longid[600];
	struct store_record *rec = malloc(sizeof(*rec));

	/* records and parts around them are not listed */
	rec_fill(rec);
	assert_int_equal(store_put(f->st, rec), 0);
	assert_int_equal(store_part_put(f->st, rec->id, 1, "e1", 5), 0);
	assert_int_equal(store_gone_list(f->st, gone_cb, &g), 0);
	assert_int_equal(g.n, 0);

	assert_int_equal(store_gone_put(f->st, "2~bbb", "media", "p/two.tar.gz"), 0);
	assert_int_equal(store_gone_put(f->st, "2~aaa", "media", "p/one.tar.gz"), 0);
	assert_int_equal(store_gone_put(f->st, "2~aaa", "other", "p/one again.tar.gz"), 0);
	assert_int_equal(store_gone_list(f->st, gone_cb, &g), 0);
	assert_int_equal(g.n, 2);
	assert_string_equal(g.ids[0], "2~aaa");
	assert_string_equal(g.buckets[0], "other");
	assert_string_equal(g.keys[0], "p/one again.tar.gz");
	assert_string_equal(g.buckets[1], "media");
	assert_string_equal(g.ids[1], "2~bbb");
	assert_string_equal(g.keys[1], "p/two.tar.gz");

	memset(&g, 0, sizeof(g));
	g.stop_at = 1;
	assert_int_equal(store_gone_list(f->st, gone_cb, &g), 7);
	assert_int_equal(g.n, 1);

	assert_int_equal(store_gone_del(f->st, "2~aaa"), 0);
	assert_int_equal(store_gone_del(f->st, "2~aaa"), 0);	/* already gone: fine */
	memset(&g, 0, sizeof(g));
	assert_int_equal(store_gone_list(f->st, gone_cb, &g), 0);
	assert_int_equal(g.n, 1);
	assert_string_equal(g.ids[0], "2~bbb");

	/* kept across a reopen */
	store_close(f->st);
	assert_int_equal(store_open(f->dir, 0, &f->st), 0);
	memset(&g, 0, sizeof(g));
	assert_int_equal(store_gone_list(f->st, gone_cb, &g), 0);
	assert_int_equal(g.n, 1);
	assert_string_equal(g.keys[0], "p/two.tar.gz");

	memset(longid, 'x', sizeof(longid) - 1);
	longid[sizeof(longid) - 1] = '\0';
	assert_int_equal(store_gone_put(f->st, longid, "media", "k"), -EINVAL);
	assert_int_equal(store_gone_put(f->st, "", "media", "k"), -EINVAL);
	assert_int_equal(store_gone_put(f->st, "2~ccc", "", "k"), -EINVAL);
	assert_int_equal(store_gone_put(f->st, "2~ccc", "a/b", "k"), -EINVAL);
	free(rec);
}

static void test_reopen_keeps_records(void **state)
{
	struct fixture *f = *state;
	struct store_record *in = malloc(sizeof(*in));
	struct store_record *out = malloc(sizeof(*out));

	rec_fill(in);
	assert_int_equal(store_put(f->st, in), 0);
	assert_int_equal(store_meta_put(f->st, "hold", "1"), 0);
	store_close(f->st);
	f->st = NULL;
	assert_int_equal(store_open(f->dir, 0, &f->st), 0);
	assert_int_equal(store_get(f->st, in->id, out), 0);
	assert_memory_equal(out, in, sizeof(*in));
	assert_int_equal(find_path(f->st, in->completed_path), in->id);
	assert_true(put_new(f->st, "pending/next", STORE_QUEUED) > in->id);
	free(in);
	free(out);
}

/* A record written before fields existed (their keys absent) reads them as 0. */
static void test_old_record_without_newer_fields(void **state)
{
	struct fixture *f = *state;
	struct store_record *in = malloc(sizeof(*in));
	struct store_record *out = malloc(sizeof(*out));
	static const char *const newer[] = { "upload_again", "head" };
	char key[64];
	MDB_env *env = NULL;
	MDB_txn *txn = NULL;
	MDB_dbi dbi;
	MDB_val k;

	rec_fill(in);
	assert_int_equal(store_put(f->st, in), 0);
	store_close(f->st);
	f->st = NULL;
	/* remove the fields' keys, as an older version never wrote them */
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_mapsize(env, STORE_INITIAL_MAPSIZE), 0);
	assert_int_equal(mdb_env_open(env, f->dir, 0, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
	for (size_t i = 0; i < sizeof(newer) / sizeof(newer[0]); i++) {
		snprintf(key, sizeof(key), "r/%016" PRIx64 "/%s", in->id, newer[i]);
		k.mv_data = key;
		k.mv_size = strlen(key);
		assert_int_equal(mdb_del(txn, dbi, &k, NULL), 0);
	}
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);

	assert_int_equal(store_open(f->dir, 0, &f->st), 0);
	memset(out, 0xa5, sizeof(*out));
	assert_int_equal(store_get(f->st, in->id, out), 0);
	assert_int_equal(out->upload_again, 0);
	assert_true(out->head == 0);
	in->upload_again = 0;
	in->head = 0;
	assert_memory_equal(out, in, sizeof(*in));	/* every other field as written */
	free(in);
	free(out);
}

/* In a child process: open readonly while the parent holds a read-write handle. */
static int child_reader(const char *dir, uint64_t id)
{
	struct store_record *r = malloc(sizeof(*r));
	struct collect *c = calloc(1, sizeof(*c));
	struct store *ro = NULL;
	char buf[8];
	int bad = 0;

	if (!r || !c || store_open(dir, 1, &ro))
		return 10;
	if (store_get(ro, id, r) || strcmp(r->original_path, "pending/live"))
		bad = 11;
	else if (find_path(ro, "pending/live") != id)
		bad = 12;
	else if (store_list(ro, STORE_QUEUED, collect_cb, c) || c->n != 1 || c->ids[0] != id)
		bad = 13;
	else if (store_meta_get(ro, "hold", buf, sizeof(buf)) || strcmp(buf, "1"))
		bad = 14;
	else if (store_put(ro, r) != -EROFS || store_meta_put(ro, "hold", "0") != -EROFS)
		bad = 15;
	store_close(ro);
	free(r);
	free(c);
	return bad;
}

static void test_readonly_sees_live_writer(void **state)
{
	struct fixture *f = *state;
	uint64_t id;
	pid_t pid;
	int wst = 0;

	put_new(f->st, "pending/old", STORE_COMPLETED);
	id = put_new(f->st, "pending/live", STORE_QUEUED);
	assert_int_equal(store_meta_put(f->st, "hold", "1"), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(child_reader(f->dir, id));
	assert_int_equal(waitpid(pid, &wst, 0), pid);
	assert_true(WIFEXITED(wst));
	assert_int_equal(WEXITSTATUS(wst), 0);
	/* the writer is unharmed by the reader's open and close */
	assert_true(put_new(f->st, "pending/after", STORE_QUEUED) > id);
	assert_int_equal(find_path(f->st, "pending/live"), id);
}

static void test_readonly_missing_is_enoent(void **state)
{
	struct fixture *f = *state;
	struct store *st = NULL;
	char path[PATH_MAX + 16];

	assert_int_equal(store_open(f->root, 1, &st), -ENOENT);	/* empty dir */
	assert_int_equal(store_open(f->dir, 1, &st), -ENOENT);	/* no dir */
	assert_null(st);
	snprintf(path, sizeof(path), "%s/lock.mdb", f->root);
	assert_int_equal(access(path, F_OK), -1);	/* left nothing behind */
	assert_int_equal(access(f->dir, F_OK), -1);
}

static void test_second_open_in_process_is_ebusy(void **state)
{
	struct fixture *f = *state;
	struct store *st = NULL;
	struct stat sb;

	assert_int_equal(stat(f->dir, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0700);
	assert_int_equal(store_open(f->dir, 0, &st), -EBUSY);
	assert_int_equal(store_open(f->dir, 1, &st), -EBUSY);
	assert_null(st);
	store_close(NULL);
}

static void test_delete(void **state)
{
	struct fixture *f = *state;
	struct store_record *r = malloc(sizeof(*r));
	struct collect *c = calloc(1, sizeof(*c));
	struct store_part *parts = NULL;
	uint64_t other, id = 0;
	size_t n = 0;

	other = put_new(f->st, "pending/other", STORE_FAILED);
	rec_fill(r);
	r->status = STORE_FAILED;
	assert_int_equal(store_put(f->st, r), 0);
	assert_int_equal(store_part_put(f->st, r->id, 1, "e1", 10), 0);
	assert_int_equal(store_delete(f->st, r->id), 0);

	assert_int_equal(store_get(f->st, r->id, r), -ENOENT);
	assert_int_equal(find_path(f->st, "pending/a b.mp4"), (uint64_t)(int64_t)-ENOENT);
	assert_int_equal(find_path(f->st, "completed/a b.mp4"), (uint64_t)(int64_t)-ENOENT);
	assert_int_equal(store_find_checksum(f->st, r->checksum, &id), -ENOENT);
	assert_int_equal(store_part_list(f->st, r->id, &parts, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(store_list(f->st, STORE_FAILED, collect_cb, c), 0);
	assert_int_equal(c->n, 1);
	assert_int_equal(c->ids[0], other);
	assert_int_equal(store_delete(f->st, r->id), -ENOENT);
	assert_int_equal(find_path(f->st, "pending/other"), other);
	free(r);
	free(c);
}

static void test_put_clears_emptied_fields(void **state)
{
	struct fixture *f = *state;
	struct store_record *r = malloc(sizeof(*r));
	struct store_record *out = malloc(sizeof(*out));

	rec_fill(r);
	assert_int_equal(store_put(f->st, r), 0);
	memset(r->error, 0, sizeof(r->error));
	memset(r->upload_id, 0, sizeof(r->upload_id));
	memset(r->etag, 0, sizeof(r->etag));
	r->attempts = 0;
	r->progress_total = 0;
	assert_int_equal(store_put(f->st, r), 0);
	assert_int_equal(store_get(f->st, r->id, out), 0);
	assert_string_equal(out->error, "");
	assert_string_equal(out->upload_id, "");
	assert_string_equal(out->etag, "");
	assert_int_equal(out->attempts, 0);
	assert_int_equal(out->progress_total, 0);
	assert_memory_equal(out, r, sizeof(*r));
	free(r);
	free(out);
}

static void expect_field(const struct store_record *r, const char *field, const char *want)
{
	char buf[4200];
	int n;

	memset(buf, 0, sizeof(buf));
	n = store_field_format(r, field, buf, sizeof(buf) - 1);
	if (!want) {
		assert_int_equal(n, -ENODATA);
		return;
	}
	assert_int_equal(n, (int)strlen(want));
	assert_string_equal(buf, want);
}

static void test_field_format(void **state)
{
	struct store_record *r = malloc(sizeof(*r));
	char buf[8];
	size_t i;

	(void)state;
	rec_fill(r);
	r->id = 17;
	expect_field(r, "id", "17");
	expect_field(r, "status", "uploading");
	expect_field(r, "original_path", "pending/a b.mp4");
	expect_field(r, "completed_path", "completed/a b.mp4");
	expect_field(r, "upload_timestamp", "2026-11-24T06:10:00Z");
	expect_field(r, "started_at", "2026-11-24T06:00:00Z");
	expect_field(r, "compression_type", "tar.gz");
	expect_field(r, "s3_bucket", "bucket");
	expect_field(r, "s3_object_key", "prefix/a b.mp4.tar.gz");
	expect_field(r, "etag", "d41d8cd98f00b204e9800998ecf8427e-3");
	expect_field(r, "original_size", "12345678901");
	expect_field(r, "compressed_size", "2345678");
	expect_field(r, "checksum", r->checksum);
	expect_field(r, "attempts", "3");
	expect_field(r, "error", "connection refused: check the endpoint");
	expect_field(r, "progress", "1000/4000");
	/* internal members and unknown names are not xattrs */
	expect_field(r, "upload_id", NULL);
	expect_field(r, "flags", NULL);
	expect_field(r, "generation", NULL);
	expect_field(r, "upload_again", NULL);
	expect_field(r, "progress_done", NULL);
	expect_field(r, "bogus", NULL);

	/* an unset record: only status and original_size show */
	memset(r, 0, sizeof(*r));
	for (i = 0; store_field_names[i]; i++) {
		if (!strcmp(store_field_names[i], "status"))
			expect_field(r, "status", "queued");
		else if (!strcmp(store_field_names[i], "original_size"))
			expect_field(r, "original_size", "0");
		else
			expect_field(r, store_field_names[i], NULL);
	}
	r->status = STORE_COMPLETED;
	expect_field(r, "compressed_size", "0");
	r->status = STORE_DUPLICATE;
	expect_field(r, "compressed_size", "0");
	r->status = STORE_FAILED;
	expect_field(r, "compressed_size", NULL);
	r->compressed_size = 5;
	expect_field(r, "compressed_size", "5");
	r->progress_total = 10;
	expect_field(r, "progress", "0/10");

	/* too small a buffer: full length returned, content truncated, no NUL */
	snprintf(r->original_path, sizeof(r->original_path), "pending/a.mp4");
	memset(buf, '#', sizeof(buf));
	assert_int_equal(store_field_format(r, "original_path", buf, 5), 13);
	assert_memory_equal(buf, "pendi###", 8);
	assert_int_equal(store_field_format(r, "original_path", NULL, 0), 13);	/* size probe */
	r->upload_timestamp = 1795500600;
	memset(buf, '#', sizeof(buf));
	assert_int_equal(store_field_format(r, "upload_timestamp", buf, 4), 20);
	assert_memory_equal(buf, "2026####", 8);
	free(r);
}

static void test_format_time_and_status_names(void **state)
{
	enum store_status s;
	char buf[32];
	int i;

	(void)state;
	store_format_time(0, buf, sizeof(buf));
	assert_string_equal(buf, "1970-01-01T00:00:00Z");
	store_format_time(1795500600, buf, sizeof(buf));
	assert_string_equal(buf, "2026-11-24T06:10:00Z");
	store_format_time(1795500600, buf, 10);	/* too small: empty, not garbage */
	assert_string_equal(buf, "");

	for (i = 0; i < STORE_STATUS_COUNT; i++) {
		assert_int_equal(store_status_parse(store_status_name((enum store_status)i), &s), 0);
		assert_int_equal(s, i);
	}
	assert_string_equal(store_status_name(STORE_QUEUED), "queued");
	assert_string_equal(store_status_name(STORE_IGNORED), "ignored");
	assert_int_equal(store_status_parse("bogus", &s), -EINVAL);
	assert_int_equal(store_errno(0), 0);
	assert_int_equal(store_errno(EACCES), -EACCES);
}

/* A record whose strings are long, to fill a small map quickly. */
static void big_record(struct store_record *r, int i)
{
	memset(r, 0, sizeof(*r));
	snprintf(r->original_path, sizeof(r->original_path), "pending/%04d/%01500d", i, i);
	memset(r->error, 'e', 1000);
	snprintf(r->error, 12, "err %06d", i);
	r->error[11] = 'e';
	r->original_size = (uint64_t)i;
}

static void test_map_full_grows(void **state)
{
	struct fixture *f = *state;
	struct store_record *r = malloc(sizeof(*r));
	struct store_record *out = malloc(sizeof(*out));
	struct collect *c = calloc(1, sizeof(*c));
	size_t before;
	uint64_t ids[2000];
	int i;

	assert_int_equal(store_open_mapsize(f->dir, 0, 1 << 20, &f->st), 0);
	before = store_map_size(f->st);
	assert_true(before <= (2u << 20));
	for (i = 0; i < 2000; i++) {
		big_record(r, i);
		assert_int_equal(store_put(f->st, r), 0);
		ids[i] = r->id;
	}
	assert_true(store_map_size(f->st) >= 4 * before);
	for (i = 0; i < 2000; i++) {
		big_record(r, i);
		assert_int_equal(store_get(f->st, ids[i], out), 0);
		assert_string_equal(out->original_path, r->original_path);
		assert_string_equal(out->error, r->error);
		assert_int_equal(find_path(f->st, r->original_path), ids[i]);
	}
	assert_int_equal(store_list(f->st, -1, collect_cb, c), 0);
	assert_int_equal(c->n, 2000);
	assert_int_equal(c->ids[0], ids[1999]);

	/* the grown map survives a reopen */
	store_close(f->st);
	f->st = NULL;
	assert_int_equal(store_open_mapsize(f->dir, 0, 1 << 20, &f->st), 0);
	assert_int_equal(store_get(f->st, ids[1999], out), 0);
	free(c);
	free(r);
	free(out);
}

/* In a child process: grow the map well past the parent's by writing. */
static int child_grower(const char *dir, int n)
{
	struct store_record *r = malloc(sizeof(*r));
	struct store *st = NULL;
	int i, bad = 0;

	if (!r || store_open_mapsize(dir, 0, 1 << 20, &st))
		return 10;
	for (i = 0; !bad && i < n; i++) {
		big_record(r, i);
		if (store_put(st, r))
			bad = 11;
	}
	store_close(st);
	free(r);
	return bad;
}

static void test_other_process_grows_map(void **state)
{
	struct fixture *f = *state;
	struct store_record *r = malloc(sizeof(*r));
	struct store_record *out = malloc(sizeof(*out));
	size_t before;
	pid_t pid;
	int wst = 0;

	assert_int_equal(store_open_mapsize(f->dir, 0, 1 << 20, &f->st), 0);
	before = store_map_size(f->st);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(child_grower(f->dir, 800));
	assert_int_equal(waitpid(pid, &wst, 0), pid);
	assert_true(WIFEXITED(wst));
	assert_int_equal(WEXITSTATUS(wst), 0);

	/* MDB_MAP_RESIZED on begin: adopt the size and go on */
	big_record(r, 799);
	assert_int_equal(store_get(f->st, 800, out), 0);
	assert_string_equal(out->original_path, r->original_path);
	assert_true(store_map_size(f->st) > before);
	assert_int_equal(put_new(f->st, "pending/parent", STORE_QUEUED), 801);
	free(r);
	free(out);
}

/* A CLI killed inside a read txn: its reader slot stays, marked with its pid. */
static int child_dies_reading(const char *dir)
{
	MDB_env *env;
	MDB_txn *txn;

	if (mdb_env_create(&env) || mdb_env_open(env, dir, MDB_RDONLY, 0600) ||
	    mdb_txn_begin(env, NULL, MDB_RDONLY, &txn))
		return 1;
	_exit(0);	/* no abort, no close: the slot is left behind */
}

static void test_dead_readers_are_freed(void **state)
{
	struct fixture *f = *state;
	struct store_record *out = malloc(sizeof(*out));
	int i;

	assert_int_equal(put_new(f->st, "pending/a", STORE_QUEUED), 1);
	for (i = 0; i < 126; i++) {	/* LMDB's default: 126 slots */
		pid_t pid = fork();
		int wst = 0;

		assert_true(pid >= 0);
		if (pid == 0)
			_exit(child_dies_reading(f->dir));
		assert_int_equal(waitpid(pid, &wst, 0), pid);
		assert_true(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
	}
	/* every slot is a dead pid's: reading frees them instead of -EAGAIN */
	assert_int_equal(store_get(f->st, 1, out), 0);
	assert_string_equal(out->original_path, "pending/a");
	assert_int_equal(store_sync(f->st), 0);
	assert_int_equal(put_new(f->st, "pending/b", STORE_QUEUED), 2);
	free(out);
}

/* Several threads writing and reading one handle while the map grows. */
struct worker {
	struct store *st;
	int base;
	int n;
	int failures;
};

static void *worker_run(void *arg)
{
	struct worker *w = arg;
	struct store_record *r = malloc(sizeof(*r));
	struct store_record *out = malloc(sizeof(*out));
	int i;

	for (i = 0; r && out && i < w->n; i++) {
		big_record(r, w->base + i);
		if (store_put(w->st, r) || store_get(w->st, r->id, out) ||
		    strcmp(out->original_path, r->original_path))
			w->failures++;
	}
	free(r);
	free(out);
	return NULL;
}

static void test_threads_share_handle_while_map_grows(void **state)
{
	struct fixture *f = *state;
	struct collect *c = calloc(1, sizeof(*c));
	struct worker w[4];
	pthread_t tid[4];
	size_t i, j;

	assert_int_equal(store_open_mapsize(f->dir, 0, 1 << 20, &f->st), 0);
	for (i = 0; i < 4; i++) {
		w[i] = (struct worker){ .st = f->st, .base = (int)i * 1000, .n = 150 };
		assert_int_equal(pthread_create(&tid[i], NULL, worker_run, &w[i]), 0);
	}
	for (i = 0; i < 4; i++) {
		assert_int_equal(pthread_join(tid[i], NULL), 0);
		assert_int_equal(w[i].failures, 0);
	}
	assert_int_equal(store_list(f->st, -1, collect_cb, c), 0);
	assert_int_equal(c->n, 600);
	for (i = 1; i < c->n; i++)
		assert_true(c->ids[i] < c->ids[i - 1]);
	for (i = 0, j = 0; i < c->n; i++)
		j += c->ids[i];
	assert_int_equal(j, 600 * 601 / 2);	/* ids 1..600, each once */
	free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_roundtrip_all_fields, setup, teardown),
		cmocka_unit_test_setup_teardown(test_get_missing_is_enoent, setup, teardown),
		cmocka_unit_test_setup_teardown(test_new_ids_increase, setup, teardown),
		cmocka_unit_test_setup_teardown(test_update_moves_status_index, setup, teardown),
		cmocka_unit_test_setup_teardown(test_path_index, setup, teardown),
		cmocka_unit_test_setup_teardown(test_long_path_index, setup, teardown),
		cmocka_unit_test_setup_teardown(test_checksum_index, setup, teardown),
		cmocka_unit_test_setup_teardown(test_list_order_and_stop, setup, teardown),
		cmocka_unit_test_setup_teardown(test_list_callback_may_write, setup, teardown),
		cmocka_unit_test_setup_teardown(test_parts, setup, teardown),
		cmocka_unit_test_setup_teardown(test_meta, setup, teardown),
		cmocka_unit_test_setup_teardown(test_gone_uploads, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reopen_keeps_records, setup, teardown),
		cmocka_unit_test_setup_teardown(test_old_record_without_newer_fields, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_readonly_sees_live_writer, setup, teardown),
		cmocka_unit_test_setup_teardown(test_readonly_missing_is_enoent, setup_dir, teardown),
		cmocka_unit_test_setup_teardown(test_second_open_in_process_is_ebusy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_delete, setup, teardown),
		cmocka_unit_test_setup_teardown(test_put_clears_emptied_fields, setup, teardown),
		cmocka_unit_test(test_field_format),
		cmocka_unit_test(test_format_time_and_status_names),
		cmocka_unit_test_setup_teardown(test_map_full_grows, setup_dir, teardown),
		cmocka_unit_test_setup_teardown(test_other_process_grows_map, setup_dir, teardown),
		cmocka_unit_test_setup_teardown(test_dead_readers_are_freed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_threads_share_handle_while_map_grows, setup_dir,
						teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
