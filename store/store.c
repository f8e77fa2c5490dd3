/*
 * store.c - the UploadRecord database on LMDB.
 *
 * DESIGN
 * One MDB_env per process, opened with MDB_NOTLS so a read txn is not tied
 * to a thread, with the unnamed main DBI opened once in store_open().  Keys
 * follow store.h: a record is one key per field under r/<16 hex id>/, and
 * the p/ (path), h/ (checksum) and s/ (status) indexes change in the same
 * write txn as the fields.  Index values are the id in decimal.
 *
 * Every public call runs one short txn.  Each txn of this process holds
 * st->resize_lock shared; growing the map (mdb_env_set_mapsize(), which LMDB
 * allows only while the process has no txn) holds it exclusive.  Write
 * bodies are functions of a txn (store_write()): on MDB_MAP_FULL the txn is
 * aborted, the map doubled and the body run again from the start.
 * MDB_MAP_RESIZED on begin (another process grew the map) adopts the new
 * size the same way.  No other lock is held across an LMDB call.
 *
 * Internally functions return LMDB codes (0, MDB_*, or a positive errno);
 * store_errno() turns them into -errno where a public function returns.
 *
 * LMDB keys are at most 511 bytes, so a path longer than PATH_KEY_DIRECT
 * is indexed as a prefix plus a 64-bit FNV-1a hash, and store_find_path()
 * checks that the record found really has that path.
 *
 * LMDB forbids opening one environment twice in a process (the second open
 * resets the lock file the first one uses), so store_open() refuses that
 * with -EBUSY, through a registry keyed by the directory's dev/ino and pid.
 */
#include "store/store.h"
#include "store/store_i.h"
#include "common/log.h"

#include <errno.h>
#include <inttypes.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define KEY_BUF		512	/* LMDB's default maximum key size + NUL */
#define PATH_KEY_DIRECT 400	/* longer paths are indexed by hash */
#define META_NAME_MAX	200
#define MAX_RETRIES	40	/* map doublings / adoptions per call */

struct store {
	MDB_env *env;
	MDB_dbi dbi;
	int readonly;
	pthread_rwlock_t resize_lock;	/* shared: any txn; exclusive: map resize */
	size_t map_size;		/* protected by resize_lock (written exclusive) */
	dev_t dev;			/* identity of the directory, for the registry */
	ino_t ino;
	pid_t pid;
	struct store *next;		/* protected by registry_lock */
};

/* Taken only in store_open()/store_close(); never together with resize_lock. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct store *registry;		/* protected by registry_lock */

const char *const store_field_names[] = {
	"id", "status", "original_path", "completed_path", "upload_timestamp", "started_at",
	"compression_type", "s3_bucket", "s3_object_key", "etag", "original_size",
	"compressed_size", "checksum", "attempts", "error", "progress", NULL
};

static const char *const status_names[STORE_STATUS_COUNT] = {
	"queued", "uploading", "completed", "failed", "duplicate", "ignored"
};

/* The stored fields: every member of struct store_record. */
enum field_kind { F_STR, F_U64, F_I64, F_U32, F_STATUS };

struct field {
	const char *name;
	enum field_kind kind;
	size_t off;
	size_t size;
};

#define FIELD(m, k) { #m, k, offsetof(struct store_record, m), sizeof(((struct store_record *)0)->m) }

static const struct field fields[] = {
	FIELD(id, F_U64),
	FIELD(status, F_STATUS),
	FIELD(original_path, F_STR),
	FIELD(completed_path, F_STR),
	FIELD(upload_timestamp, F_I64),
	FIELD(started_at, F_I64),
	FIELD(compression_type, F_STR),
	FIELD(s3_bucket, F_STR),
	FIELD(s3_object_key, F_STR),
	FIELD(etag, F_STR),
	FIELD(original_size, F_U64),
	FIELD(compressed_size, F_U64),
	FIELD(checksum, F_STR),
	FIELD(attempts, F_U32),
	FIELD(error, F_STR),
	FIELD(progress_done, F_U64),
	FIELD(progress_total, F_U64),
	FIELD(upload_id, F_STR),
	FIELD(generation, F_U64),
	FIELD(flags, F_U32),
	FIELD(upload_again, F_U32),
	FIELD(head, F_U64),
};

#define N_FIELDS (sizeof(fields) / sizeof(fields[0]))

/* A zeroed record: the "new" side of index updates when deleting. */
static const struct store_record no_record;

int store_errno(int rc)
{
	switch (rc) {
	case MDB_SUCCESS:
		return 0;
	case MDB_NOTFOUND:
		return -ENOENT;
	case MDB_KEYEXIST:
		return -EEXIST;
	case MDB_MAP_FULL:
	case MDB_DBS_FULL:
	case MDB_TXN_FULL:
	case MDB_CURSOR_FULL:
	case MDB_PAGE_FULL:
		return -ENOSPC;
	case MDB_READERS_FULL:
	case MDB_MAP_RESIZED:
		return -EAGAIN;
	case MDB_BAD_VALSIZE:
	case MDB_BAD_RSLOT:
	case MDB_BAD_TXN:
	case MDB_BAD_DBI:
	case MDB_INCOMPATIBLE:
		return -EINVAL;
	default:
		break;
	}
	if (rc > 0)
		return -rc;	/* a system errno from LMDB or from us */
	return -EIO;		/* MDB_CORRUPTED, MDB_PANIC, MDB_INVALID, ... */
}

const char *store_status_name(enum store_status st)
{
	if ((unsigned int)st >= (unsigned int)STORE_STATUS_COUNT)
		return "unknown";
	return status_names[st];
}

int store_status_parse(const char *name, enum store_status *out)
{
	int i;

	for (i = 0; i < STORE_STATUS_COUNT; i++) {
		if (!strcmp(name, status_names[i])) {
			*out = (enum store_status)i;
			return 0;
		}
	}
	return -EINVAL;
}

/* ---- small helpers ---------------------------------------------------- */

static void key_set(MDB_val *k, const char *s)
{
	k->mv_data = (void *)s;
	k->mv_size = strlen(s);
}

static int has_prefix(const MDB_val *k, const char *prefix, size_t plen)
{
	return k->mv_size >= plen && !memcmp(k->mv_data, prefix, plen);
}

static int put_kv(struct store *st, MDB_txn *txn, const char *key, const char *val, size_t n)
{
	MDB_val k, v = { .mv_size = n, .mv_data = (void *)val };

	key_set(&k, key);
	return mdb_put(txn, st->dbi, &k, &v, 0);
}

static int del_key(struct store *st, MDB_txn *txn, const char *key)
{
	MDB_val k;
	int rc;

	key_set(&k, key);
	rc = mdb_del(txn, st->dbi, &k, NULL);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

static int get_val(struct store *st, MDB_txn *txn, const char *key, MDB_val *v)
{
	MDB_val k;

	key_set(&k, key);
	return mdb_get(txn, st->dbi, &k, v);
}

static int parse_u64(const void *p, size_t n, uint64_t *out)
{
	char buf[24];
	char *end = NULL;
	unsigned long long v;

	if (n == 0 || n >= sizeof(buf))
		return EIO;
	memcpy(buf, p, n);
	buf[n] = '\0';
	if (buf[0] < '0' || buf[0] > '9')
		return EIO;
	errno = 0;
	v = strtoull(buf, &end, 10);
	if (errno || *end)
		return EIO;
	*out = v;
	return 0;
}

static int parse_i64(const void *p, size_t n, int64_t *out)
{
	char buf[24];
	char *end = NULL;
	long long v;

	if (n == 0 || n >= sizeof(buf))
		return EIO;
	memcpy(buf, p, n);
	buf[n] = '\0';
	if (buf[0] != '-' && (buf[0] < '0' || buf[0] > '9'))
		return EIO;
	errno = 0;
	v = strtoll(buf, &end, 10);
	if (errno || *end)
		return EIO;
	*out = v;
	return 0;
}

static int parse_hex(const char *p, size_t n, uint64_t *out)
{
	uint64_t v = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		char c = p[i];

		if (c >= '0' && c <= '9')
			v = v << 4 | (uint64_t)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v = v << 4 | (uint64_t)(c - 'a' + 10);
		else
			return EIO;
	}
	*out = v;
	return 0;
}

static size_t rec_prefix(char *buf, size_t len, uint64_t id)
{
	return (size_t)snprintf(buf, len, "r/%016" PRIx64 "/", id);
}

static void status_key(char *buf, size_t len, enum store_status s, uint64_t id)
{
	snprintf(buf, len, "s/%s/%016" PRIx64, store_status_name(s), id);
}

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
	return h;
}

/* p/<path>, or for a long path p/<first 400 bytes>\x01<hash>; returns 1 if hashed. */
static int path_key(char *buf, size_t len, const char *path)
{
	if (strlen(path) <= PATH_KEY_DIRECT) {
		snprintf(buf, len, "p/%s", path);
		return 0;
	}
	snprintf(buf, len, "p/%.400s\x01%016" PRIx64, path, fnv1a(path));
	return 1;
}

static void index_key(char *buf, size_t len, int is_path, const char *value)
{
	if (is_path)
		path_key(buf, len, value);
	else
		snprintf(buf, len, "h/%s", value);
}

/* ---- transactions and map growth -------------------------------------- */

/* Set the map to @size (0: adopt the size in the file) unless another thread already changed it. */
static int map_resize(struct store *st, size_t seen, size_t size)
{
	MDB_envinfo info;
	int rc = 0;

	pthread_rwlock_wrlock(&st->resize_lock);
	if (st->map_size == seen) {
		rc = mdb_env_set_mapsize(st->env, size);
		if (rc == 0 && mdb_env_info(st->env, &info) == 0)
			st->map_size = info.me_mapsize;
		if (rc == 0)
			mgmtfs_debug("store: map size now %zu bytes", st->map_size);
	}
	pthread_rwlock_unlock(&st->resize_lock);
	return rc;
}

/*
 * Free the reader slots of processes that died inside a read txn: each pins
 * the snapshot it saw, so the map grows instead of reusing freed pages, and
 * 126 of them make every new txn fail.  Returns how many were freed.
 */
static int clear_dead_readers(struct store *st)
{
	int dead = 0;

	if (mdb_reader_check(st->env, &dead) != 0)
		return 0;
	if (dead > 0)
		mgmtfs_debug("store: freed %d reader slots of dead processes", dead);
	return dead;
}

/* Begin a txn holding resize_lock shared; end it with txn_end() or commit + unlock. */
static int txn_begin(struct store *st, unsigned int flags, MDB_txn **txn, size_t *seen_out)
{
	size_t seen;
	int tries, rc;

	for (tries = 0;; tries++) {
		pthread_rwlock_rdlock(&st->resize_lock);
		seen = st->map_size;
		rc = mdb_txn_begin(st->env, NULL, flags, txn);
		if (rc == 0) {
			if (seen_out)
				*seen_out = seen;
			return 0;
		}
		pthread_rwlock_unlock(&st->resize_lock);
		if (tries >= MAX_RETRIES)
			return rc;
		if (rc == MDB_READERS_FULL) {
			/* slots of killed readers (a CLI's kill -9) free only this way */
			if (clear_dead_readers(st) == 0)
				return rc;
			continue;
		}
		if (rc != MDB_MAP_RESIZED)
			return rc;
		rc = map_resize(st, seen, 0);
		if (rc)
			return rc;
	}
}

static void txn_end(struct store *st, MDB_txn *txn)
{
	mdb_txn_abort(txn);
	pthread_rwlock_unlock(&st->resize_lock);
}

typedef int (*write_fn)(struct store *st, MDB_txn *txn, void *arg);

/*
 * Run @fn in a write txn and commit.  @fn must be safe to run again (it
 * sees a fresh txn each time) and must report results only through @arg.
 */
static int store_write(struct store *st, write_fn fn, void *arg)
{
	MDB_txn *txn = NULL;
	size_t seen = 0;
	int tries, cleared = 0, rc;

	if (st->readonly)
		return -EROFS;
	for (tries = 0;; tries++) {
		rc = txn_begin(st, 0, &txn, &seen);
		if (rc)
			break;
		rc = fn(st, txn, arg);
		if (rc == 0)
			rc = mdb_txn_commit(txn);
		else
			mdb_txn_abort(txn);
		pthread_rwlock_unlock(&st->resize_lock);
		if (rc != MDB_MAP_FULL || tries >= MAX_RETRIES)
			break;
		if (!cleared) {
			cleared = 1;	/* pages a dead reader pinned may be enough */
			if (clear_dead_readers(st) > 0)
				continue;
		}
		if (seen > SIZE_MAX / 2)
			break;
		rc = map_resize(st, seen, seen * 2);
		if (rc)
			break;
	}
	return store_errno(rc);
}

size_t store_map_size(struct store *st)
{
	size_t n;

	pthread_rwlock_rdlock(&st->resize_lock);
	n = st->map_size;
	pthread_rwlock_unlock(&st->resize_lock);
	return n;
}

/* ---- open / close ----------------------------------------------------- */

static struct store *registry_find(dev_t dev, ino_t ino)
{
	struct store *s;

	for (s = registry; s; s = s->next)
		if (s->dev == dev && s->ino == ino && s->pid == getpid())
			return s;
	return NULL;
}

int store_open_mapsize(const char *dir, int readonly, size_t mapsize, struct store **out)
{
	struct store *st = NULL;
	MDB_txn *txn = NULL;
	pthread_rwlockattr_t attr;
	MDB_envinfo info;
	struct stat sb;
	char path[STORE_PATH_MAX];
	int locked = 0, lock_init = 0, rc;

	if (!readonly && mkdir(dir, 0700) && errno != EEXIST)
		return -errno;
	if (stat(dir, &sb))
		return -errno;
	if (!S_ISDIR(sb.st_mode))
		return -ENOTDIR;
	if (readonly) {
		/* LMDB would create lock.mdb before finding data.mdb missing. */
		if (snprintf(path, sizeof(path), "%s/data.mdb", dir) >= (int)sizeof(path))
			return -ENAMETOOLONG;
		if (access(path, R_OK))
			return -errno;
	}

	st = calloc(1, sizeof(*st));
	if (!st)
		return -ENOMEM;
	st->readonly = readonly;
	st->dev = sb.st_dev;
	st->ino = sb.st_ino;
	st->pid = getpid();
	/* Writer-preferring, so a resize is not starved by a stream of readers. */
	pthread_rwlockattr_init(&attr);
	pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	rc = pthread_rwlock_init(&st->resize_lock, &attr);
	pthread_rwlockattr_destroy(&attr);
	if (rc)
		goto fail;
	lock_init = 1;

	pthread_mutex_lock(&registry_lock);
	locked = 1;
	if (registry_find(st->dev, st->ino)) {
		rc = EBUSY;
		goto fail;
	}
	rc = mdb_env_create(&st->env);
	if (rc)
		goto fail;
	rc = mdb_env_open(st->env, dir, MDB_NOTLS | (readonly ? MDB_RDONLY : 0), 0600);
	if (rc)
		goto fail;
	if (!readonly) {
		clear_dead_readers(st);	/* slots of killed CLIs */
		rc = mdb_env_info(st->env, &info);
		if (rc == 0 && info.me_mapsize < mapsize)
			rc = mdb_env_set_mapsize(st->env, mapsize);
		if (rc)
			goto fail;
	}
	rc = mdb_env_info(st->env, &info);
	if (rc)
		goto fail;
	st->map_size = info.me_mapsize;
	rc = mdb_txn_begin(st->env, NULL, readonly ? MDB_RDONLY : 0, &txn);
	if (rc)
		goto fail;
	rc = mdb_dbi_open(txn, NULL, 0, &st->dbi);
	if (rc)
		goto fail;
	rc = mdb_txn_commit(txn);
	txn = NULL;		/* commit frees the txn even when it fails */
	if (rc)
		goto fail;

	st->next = registry;
	registry = st;
	pthread_mutex_unlock(&registry_lock);
	*out = st;
	return 0;

fail:
	mdb_txn_abort(txn);
	if (st->env)
		mdb_env_close(st->env);
	if (locked)
		pthread_mutex_unlock(&registry_lock);
	if (lock_init)
		pthread_rwlock_destroy(&st->resize_lock);
	free(st);
	return store_errno(rc);
}

int store_open(const char *dir, int readonly, struct store **out)
{
	return store_open_mapsize(dir, readonly, STORE_INITIAL_MAPSIZE, out);
}

int store_set_lazy_sync(struct store *st, int lazy)
{
	if (st->readonly)
		return 0;
	return store_errno(mdb_env_set_flags(st->env, MDB_NOSYNC, lazy ? 1 : 0));
}

int store_sync(struct store *st)
{
	if (st->readonly)
		return 0;
	clear_dead_readers(st);	/* the daemon calls this every second */
	return store_errno(mdb_env_sync(st->env, 1));
}

void store_close(struct store *st)
{
	struct store **pp;

	if (!st)
		return;
	pthread_mutex_lock(&registry_lock);
	for (pp = &registry; *pp; pp = &(*pp)->next) {
		if (*pp == st) {
			*pp = st->next;
			break;
		}
	}
	pthread_mutex_unlock(&registry_lock);
	mdb_env_close(st->env);
	pthread_rwlock_destroy(&st->resize_lock);
	free(st);
}

/* ---- records ---------------------------------------------------------- */

static const struct field *field_find(const char *name, size_t n)
{
	size_t i;

	for (i = 0; i < N_FIELDS; i++)
		if (strlen(fields[i].name) == n && !memcmp(fields[i].name, name, n))
			return &fields[i];
	return NULL;
}

static int field_load(struct store_record *rec, const char *name, size_t nlen, const MDB_val *v)
{
	const struct field *f = field_find(name, nlen);
	char *p = (char *)rec;
	char sname[16];
	uint64_t u = 0;
	int64_t i = 0;
	size_t n;
	int rc = 0;

	if (!f)
		return 0;	/* written by a newer version: ignore */
	p += f->off;
	switch (f->kind) {
	case F_STR:
		n = v->mv_size < f->size ? v->mv_size : f->size - 1;
		memcpy(p, v->mv_data, n);
		p[n] = '\0';
		break;
	case F_STATUS:
		if (v->mv_size >= sizeof(sname))
			return EIO;
		memcpy(sname, v->mv_data, v->mv_size);
		sname[v->mv_size] = '\0';
		if (store_status_parse(sname, &rec->status))
			return EIO;
		break;
	case F_U64:
		rc = parse_u64(v->mv_data, v->mv_size, &u);
		*(uint64_t *)(void *)p = u;
		break;
	case F_U32:
		rc = parse_u64(v->mv_data, v->mv_size, &u);
		if (rc == 0 && u > UINT32_MAX)
			rc = EIO;
		*(uint32_t *)(void *)p = (uint32_t)u;
		break;
	case F_I64:
		rc = parse_i64(v->mv_data, v->mv_size, &i);
		*(int64_t *)(void *)p = i;
		break;
	}
	return rc;
}

/* The stored text of field @f: points *out at the string or at @tmp; returns its length. */
static size_t field_text(const struct store_record *rec, const struct field *f, char *tmp,
			 size_t tmplen, const char **out)
{
	const char *p = (const char *)rec + f->off;
	int n = 0;

	*out = tmp;
	switch (f->kind) {
	case F_STR:
		*out = p;
		return strnlen(p, f->size - 1);
	case F_STATUS:
		*out = store_status_name(rec->status);
		return strlen(*out);
	case F_U64:
		n = snprintf(tmp, tmplen, "%" PRIu64, *(const uint64_t *)(const void *)p);
		break;
	case F_U32:
		n = snprintf(tmp, tmplen, "%" PRIu32, *(const uint32_t *)(const void *)p);
		break;
	case F_I64:
		n = snprintf(tmp, tmplen, "%" PRId64, *(const int64_t *)(const void *)p);
		break;
	}
	return (size_t)n;
}

/* Read record @id into @out; MDB_NOTFOUND (with @out untouched) if it has no field. */
static int rec_read(struct store *st, MDB_txn *txn, uint64_t id, struct store_record *out)
{
	MDB_cursor *cur = NULL;
	MDB_val k, v;
	char prefix[32];
	size_t plen;
	int n = 0, rc;

	plen = rec_prefix(prefix, sizeof(prefix), id);
	rc = mdb_cursor_open(txn, st->dbi, &cur);
	if (rc)
		return rc;
	k.mv_data = prefix;
	k.mv_size = plen;
	rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	while (rc == 0 && has_prefix(&k, prefix, plen)) {
		if (n++ == 0)
			memset(out, 0, sizeof(*out));
		rc = field_load(out, (const char *)k.mv_data + plen, k.mv_size - plen, &v);
		if (rc)
			goto out;
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	if (rc == 0 || rc == MDB_NOTFOUND)
		rc = n ? 0 : MDB_NOTFOUND;
	if (rc == 0)
		out->id = id;
out:
	mdb_cursor_close(cur);
	return rc;
}

static int rec_write(struct store *st, MDB_txn *txn, uint64_t id, const struct store_record *rec,
		     int replacing)
{
	char key[64], num[32];
	const char *val = NULL;
	size_t i, n;
	int rc;

	for (i = 0; i < N_FIELDS; i++) {
		n = field_text(rec, &fields[i], num, sizeof(num), &val);
		snprintf(key, sizeof(key), "r/%016" PRIx64 "/%s", id, fields[i].name);
		if (n == 0 && fields[i].kind == F_STR)
			rc = replacing ? del_key(st, txn, key) : 0;	/* absent = "" */
		else
			rc = put_kv(st, txn, key, val, n);
		if (rc)
			return rc;
	}
	return 0;
}

static int next_id_get(struct store *st, MDB_txn *txn, uint64_t *next)
{
	MDB_val v;
	int rc;

	rc = get_val(st, txn, "meta/next_id", &v);
	if (rc == MDB_NOTFOUND) {
		*next = 1;
		return 0;
	}
	return rc ? rc : parse_u64(v.mv_data, v.mv_size, next);
}

static int next_id_set(struct store *st, MDB_txn *txn, uint64_t next)
{
	char num[32];
	int n = snprintf(num, sizeof(num), "%" PRIu64, next);

	return put_kv(st, txn, "meta/next_id", num, (size_t)n);
}

static int idx_set(struct store *st, MDB_txn *txn, const char *key, uint64_t id)
{
	char num[32];
	int n = snprintf(num, sizeof(num), "%" PRIu64, id);

	return put_kv(st, txn, key, num, (size_t)n);
}

/* Delete @key only if it still names @id (a newer record may have taken it). */
static int idx_del_if(struct store *st, MDB_txn *txn, const char *key, uint64_t id)
{
	char num[32];
	int n = snprintf(num, sizeof(num), "%" PRIu64, id);
	MDB_val v;
	int rc;

	rc = get_val(st, txn, key, &v);
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc)
		return rc;
	if (v.mv_size != (size_t)n || memcmp(v.mv_data, num, (size_t)n))
		return 0;
	return del_key(st, txn, key);
}

/*
 * Move the p/ and h/ entries of record @id from @old (NULL: new record) to
 * @rec.  Only values that changed are touched, so an older record updated
 * without a path change does not steal the path back from a newer one.
 * All deletions come before all insertions so that swapping values works.
 */
static int index_update(struct store *st, MDB_txn *txn, uint64_t id,
			const struct store_record *old, const struct store_record *rec)
{
	const char *nv[3] = { rec->original_path, rec->completed_path, rec->checksum };
	const char *ov[3] = { "", "", "" };
	static const int is_path[3] = { 1, 1, 0 };
	char key[KEY_BUF];
	int i, rc;

	if (old) {
		ov[0] = old->original_path;
		ov[1] = old->completed_path;
		ov[2] = old->checksum;
	}
	for (i = 0; i < 3; i++) {
		if (!ov[i][0] || !strcmp(ov[i], nv[i]))
			continue;
		if (is_path[i] && (!strcmp(ov[i], nv[0]) || !strcmp(ov[i], nv[1])))
			continue;	/* the record still has this path */
		index_key(key, sizeof(key), is_path[i], ov[i]);
		rc = idx_del_if(st, txn, key, id);
		if (rc)
			return rc;
	}
	for (i = 0; i < 3; i++) {
		if (!nv[i][0] || !strcmp(ov[i], nv[i]))
			continue;
		index_key(key, sizeof(key), is_path[i], nv[i]);
		rc = idx_set(st, txn, key, id);
		if (rc)
			return rc;
	}
	return 0;
}

struct put_ctx {
	const struct store_record *rec;
	struct store_record *old;	/* owned scratch */
	uint64_t id;			/* the id written; valid after commit */
};

static int put_body(struct store *st, MDB_txn *txn, void *arg)
{
	struct put_ctx *c = arg;
	const struct store_record *rec = c->rec;
	const struct store_record *old = NULL;
	char key[64];
	uint64_t next = 0;
	int rc;

	c->id = rec->id;
	rc = next_id_get(st, txn, &next);
	if (rc)
		return rc;
	if (c->id == 0) {
		c->id = next;
		rc = next_id_set(st, txn, next + 1);
	} else {
		rc = rec_read(st, txn, c->id, c->old);
		if (rc == 0)
			old = c->old;
		else if (rc == MDB_NOTFOUND && c->id >= next)	/* an id chosen by the caller */
			rc = c->id == UINT64_MAX ? EOVERFLOW : next_id_set(st, txn, c->id + 1);
		else if (rc == MDB_NOTFOUND)
			rc = 0;
	}
	if (rc)
		return rc;
	rc = rec_write(st, txn, c->id, rec, old != NULL);
	if (rc)
		return rc;
	if (old && old->status != rec->status) {
		status_key(key, sizeof(key), old->status, c->id);
		rc = del_key(st, txn, key);
		if (rc)
			return rc;
	}
	status_key(key, sizeof(key), rec->status, c->id);
	rc = put_kv(st, txn, key, "", 0);
	if (rc)
		return rc;
	return index_update(st, txn, c->id, old, rec);
}

int store_put(struct store *st, struct store_record *rec)
{
	struct put_ctx c = { .rec = rec };
	int rc;

	if ((unsigned int)rec->status >= (unsigned int)STORE_STATUS_COUNT)
		return -EINVAL;
	c.old = malloc(sizeof(*c.old));
	if (!c.old)
		return -ENOMEM;
	rc = store_write(st, put_body, &c);
	if (rc == 0)
		rec->id = c.id;
	free(c.old);
	return rc;
}

int store_get(struct store *st, uint64_t id, struct store_record *out)
{
	MDB_txn *txn = NULL;
	int rc;

	rc = txn_begin(st, MDB_RDONLY, &txn, NULL);
	if (rc)
		return store_errno(rc);
	rc = rec_read(st, txn, id, out);
	txn_end(st, txn);
	return store_errno(rc);
}

/* Does record @id have @path as original_path or completed_path? */
static int path_check(struct store *st, MDB_txn *txn, uint64_t id, const char *path)
{
	static const char *const names[2] = { "original_path", "completed_path" };
	size_t n = strlen(path);
	char key[64];
	MDB_val v;
	int i, rc;

	for (i = 0; i < 2; i++) {
		snprintf(key, sizeof(key), "r/%016" PRIx64 "/%s", id, names[i]);
		rc = get_val(st, txn, key, &v);
		if (rc == 0 && v.mv_size == n && !memcmp(v.mv_data, path, n))
			return 0;
		if (rc && rc != MDB_NOTFOUND)
			return rc;
	}
	return MDB_NOTFOUND;
}

static int index_find(struct store *st, const char *key, const char *hashed_path, uint64_t *id_out)
{
	MDB_txn *txn = NULL;
	uint64_t id = 0;
	MDB_val v;
	int rc;

	rc = txn_begin(st, MDB_RDONLY, &txn, NULL);
	if (rc)
		return store_errno(rc);
	rc = get_val(st, txn, key, &v);
	if (rc == 0)
		rc = parse_u64(v.mv_data, v.mv_size, &id);
	if (rc == 0 && hashed_path)
		rc = path_check(st, txn, id, hashed_path);
	txn_end(st, txn);
	if (rc == 0)
		*id_out = id;
	return store_errno(rc);
}

int store_find_path(struct store *st, const char *path, uint64_t *id_out)
{
	char key[KEY_BUF];

	if (!path[0])
		return -ENOENT;
	if (path_key(key, sizeof(key), path))
		return index_find(st, key, path, id_out);
	return index_find(st, key, NULL, id_out);
}

int store_find_checksum(struct store *st, const char *checksum, uint64_t *id_out)
{
	char key[KEY_BUF];

	if (!checksum[0] || strlen(checksum) > 400)
		return -ENOENT;
	index_key(key, sizeof(key), 0, checksum);
	return index_find(st, key, NULL, id_out);
}

/*
 * The largest id below @before (any id if !@bounded) among the keys
 * "<prefix><16 hex>...": seek to the first key not below the bound, step back.
 */
static int prev_id(struct store *st, MDB_txn *txn, const char *prefix, int bounded,
		   uint64_t before, uint64_t *id_out)
{
	MDB_cursor *cur = NULL;
	size_t plen = strlen(prefix);
	char seek[64];
	MDB_val k, v;
	int rc;

	if (bounded)
		snprintf(seek, sizeof(seek), "%s%016" PRIx64, prefix, before);
	else
		snprintf(seek, sizeof(seek), "%s~", prefix);	/* '~' sorts after hex digits */
	rc = mdb_cursor_open(txn, st->dbi, &cur);
	if (rc)
		return rc;
	key_set(&k, seek);
	rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	if (rc == 0)
		rc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
	else if (rc == MDB_NOTFOUND)
		rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
	if (rc == 0 && (k.mv_size < plen + 16 || !has_prefix(&k, prefix, plen)))
		rc = MDB_NOTFOUND;
	if (rc == 0)
		rc = parse_hex((const char *)k.mv_data + plen, 16, id_out);
	mdb_cursor_close(cur);
	return rc;
}

int store_list(struct store *st, int status,
	       int (*cb)(const struct store_record *rec, void *arg), void *arg)
{
	struct store_record *rec = NULL;
	MDB_txn *txn = NULL;
	char prefix[32];
	uint64_t id = 0;
	int bounded = 0, skip, cbrc = 0, rc = 0;

	if (status >= STORE_STATUS_COUNT)
		return -EINVAL;
	if (status < 0)
		snprintf(prefix, sizeof(prefix), "r/");
	else
		snprintf(prefix, sizeof(prefix), "s/%s/", status_names[status]);
	rec = malloc(sizeof(*rec));
	if (!rec)
		return -ENOMEM;
	/* One read txn per record, so @cb runs with no txn open and may write. */
	for (;;) {
		rc = txn_begin(st, MDB_RDONLY, &txn, NULL);
		if (rc)
			break;
		skip = 0;
		rc = prev_id(st, txn, prefix, bounded, id, &id);
		if (rc == 0) {
			rc = rec_read(st, txn, id, rec);
			if (rc == MDB_NOTFOUND) {	/* deleted under us */
				skip = 1;
				rc = 0;
			}
		}
		txn_end(st, txn);
		if (rc == MDB_NOTFOUND) {
			rc = 0;		/* walked past the oldest */
			break;
		}
		if (rc)
			break;
		bounded = 1;
		if (skip || (status >= 0 && (int)rec->status != status))
			continue;
		cbrc = cb(rec, arg);
		if (cbrc)
			break;
	}
	free(rec);
	return cbrc ? cbrc : store_errno(rc);
}

static int delete_prefix(struct store *st, MDB_txn *txn, const char *prefix)
{
	MDB_cursor *cur = NULL;
	size_t plen = strlen(prefix);
	MDB_val k, v;
	int rc;

	rc = mdb_cursor_open(txn, st->dbi, &cur);
	if (rc)
		return rc;
	for (;;) {
		key_set(&k, prefix);
		rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
		if (rc || !has_prefix(&k, prefix, plen))
			break;
		rc = mdb_cursor_del(cur, 0);
		if (rc)
			break;
	}
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

struct delete_ctx {
	uint64_t id;
	struct store_record *old;	/* owned scratch */
};

static int delete_body(struct store *st, MDB_txn *txn, void *arg)
{
	struct delete_ctx *c = arg;
	char key[64];
	int s, rc;

	rc = rec_read(st, txn, c->id, c->old);
	if (rc)
		return rc;
	rec_prefix(key, sizeof(key), c->id);
	rc = delete_prefix(st, txn, key);
	if (rc)
		return rc;
	snprintf(key, sizeof(key), "m/%016" PRIx64 "/", c->id);
	rc = delete_prefix(st, txn, key);
	for (s = 0; rc == 0 && s < STORE_STATUS_COUNT; s++) {
		status_key(key, sizeof(key), (enum store_status)s, c->id);
		rc = del_key(st, txn, key);
	}
	if (rc)
		return rc;
	return index_update(st, txn, c->id, c->old, &no_record);
}

int store_delete(struct store *st, uint64_t id)
{
	struct delete_ctx c = { .id = id };
	int rc;

	c.old = malloc(sizeof(*c.old));
	if (!c.old)
		return -ENOMEM;
	rc = store_write(st, delete_body, &c);
	free(c.old);
	return rc;
}

/* ---- multipart parts and meta ----------------------------------------- */

struct kv_ctx {
	const char *key;
	const char *val;
	size_t n;
};

static int put_body_kv(struct store *st, MDB_txn *txn, void *arg)
{
	const struct kv_ctx *c = arg;

	return put_kv(st, txn, c->key, c->val, c->n);
}

static int delete_body_prefix(struct store *st, MDB_txn *txn, void *arg)
{
	return delete_prefix(st, txn, arg);
}

int store_part_put(struct store *st, uint64_t id, uint32_t partno, const char *etag,
		   uint64_t size)
{
	char key[64], val[STORE_ETAG_MAX + 32];
	struct kv_ctx c = { .key = key, .val = val };

	if (partno == 0 || strlen(etag) >= STORE_ETAG_MAX)
		return -EINVAL;
	snprintf(key, sizeof(key), "m/%016" PRIx64 "/%08" PRIx32, id, partno);
	c.n = (size_t)snprintf(val, sizeof(val), "%s %" PRIu64, etag, size);
	return store_write(st, put_body_kv, &c);
}

static int part_parse(const MDB_val *k, const MDB_val *v, size_t plen, struct store_part *p)
{
	const char *s = v->mv_data;
	uint64_t partno = 0;
	size_t sp;
	int rc;

	if (k->mv_size != plen + 8)
		return EIO;
	rc = parse_hex((const char *)k->mv_data + plen, 8, &partno);
	if (rc)
		return rc;
	for (sp = v->mv_size; sp > 0 && s[sp - 1] != ' '; sp--)
		;
	if (sp == 0 || sp - 1 >= STORE_ETAG_MAX)
		return EIO;
	memcpy(p->etag, s, sp - 1);
	p->etag[sp - 1] = '\0';
	p->partno = (uint32_t)partno;
	return parse_u64(s + sp, v->mv_size - sp, &p->size);
}

int store_part_list(struct store *st, uint64_t id, struct store_part **parts_out, size_t *n_out)
{
	struct store_part *parts = NULL;
	MDB_cursor *cur = NULL;
	MDB_txn *txn = NULL;
	char prefix[32];
	size_t plen, n = 0, i;
	MDB_val k, v;
	int rc;

	plen = (size_t)snprintf(prefix, sizeof(prefix), "m/%016" PRIx64 "/", id);
	rc = txn_begin(st, MDB_RDONLY, &txn, NULL);
	if (rc)
		return store_errno(rc);
	rc = mdb_cursor_open(txn, st->dbi, &cur);
	if (rc)
		goto out;
	/* Count, then fill: both passes see the same snapshot. */
	k.mv_data = prefix;
	k.mv_size = plen;
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0 && has_prefix(&k, prefix, plen);
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
		n++;
	if (rc != 0 && rc != MDB_NOTFOUND)
		goto out;
	rc = 0;
	if (n) {
		parts = calloc(n, sizeof(*parts));
		if (!parts) {
			rc = ENOMEM;
			goto out;
		}
	}
	k.mv_data = prefix;
	k.mv_size = plen;
	for (i = 0; i < n; i++) {
		rc = mdb_cursor_get(cur, &k, &v, i ? MDB_NEXT : MDB_SET_RANGE);
		if (rc == 0)
			rc = part_parse(&k, &v, plen, &parts[i]);
		if (rc)
			goto out;
	}
out:
	mdb_cursor_close(cur);
	txn_end(st, txn);
	if (rc) {
		free(parts);
		return store_errno(rc);
	}
	*parts_out = parts;
	*n_out = n;
	return 0;
}

int store_part_clear(struct store *st, uint64_t id)
{
	char prefix[32];

	snprintf(prefix, sizeof(prefix), "m/%016" PRIx64 "/", id);
	return store_write(st, delete_body_prefix, prefix);
}

static int meta_key(char *buf, size_t len, const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || n > META_NAME_MAX)
		return -EINVAL;
	snprintf(buf, len, "meta/%s", name);
	return 0;
}

int store_meta_put(struct store *st, const char *name, const char *value)
{
	char key[KEY_BUF];
	struct kv_ctx c = { .key = key, .val = value, .n = strlen(value) };
	int rc;

	if (!strcmp(name, "next_id"))
		return -EINVAL;	/* reserved for id allocation */
	rc = meta_key(key, sizeof(key), name);
	if (rc)
		return rc;
	return store_write(st, put_body_kv, &c);
}

int store_meta_get(struct store *st, const char *name, char *buf, size_t len)
{
	MDB_txn *txn = NULL;
	char key[KEY_BUF];
	MDB_val v;
	size_t n;
	int rc;

	if (len == 0)
		return -EINVAL;
	rc = meta_key(key, sizeof(key), name);
	if (rc)
		return rc;
	rc = txn_begin(st, MDB_RDONLY, &txn, NULL);
	if (rc)
		return store_errno(rc);
	rc = get_val(st, txn, key, &v);
	if (rc == 0) {
		n = v.mv_size < len ? v.mv_size : len - 1;
		memcpy(buf, v.mv_data, n);
		buf[n] = '\0';
	}
	txn_end(st, txn);
	return store_errno(rc);
}

/* ---- multipart uploads of removed units --------------------------------- */

#define GONE_PREFIX "g/"

static int gone_key(char *buf, size_t len, const char *upload_id)
{
	if (!*upload_id || strlen(GONE_PREFIX) + strlen(upload_id) >= len)
		return -EINVAL;
	snprintf(buf, len, GONE_PREFIX "%s", upload_id);
	return 0;
}

static int del_body_key(struct store *st, MDB_txn *txn, void *arg)
{
	return del_key(st, txn, arg);
}

int store_gone_put(struct store *st, const char *upload_id, const char *bucket,
		   const char *key)
{
	char k[KEY_BUF], *v = NULL;
	struct kv_ctx c = { .key = k };
	int rc = gone_key(k, sizeof(k), upload_id);

	if (rc)
		return rc;
	if (!*bucket || strchr(bucket, '/'))
		return -EINVAL;
	if (asprintf(&v, "%s/%s", bucket, key) < 0)
		return -ENOMEM;
	c.val = v;
	c.n = strlen(v);
	rc = store_write(st, put_body_kv, &c);
	free(v);
	return rc;
}

int store_gone_del(struct store *st, const char *upload_id)
{
	char k[KEY_BUF];
	int rc = gone_key(k, sizeof(k), upload_id);

	return rc ? rc : store_write(st, del_body_key, k);
}

int store_gone_list(struct store *st, store_gone_fn fn, void *arg)
{
	size_t plen = strlen(GONE_PREFIX);
	MDB_cursor *cur = NULL;
	MDB_txn *txn = NULL;
	char id[KEY_BUF], *val = NULL, *slash;
	int rc, cbrc = 0;
	MDB_val k, v;

	rc = txn_begin(st, MDB_RDONLY, &txn, NULL);
	if (rc)
		return store_errno(rc);
	rc = mdb_cursor_open(txn, st->dbi, &cur);
	key_set(&k, GONE_PREFIX);
	for (rc = rc ? rc : mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	     rc == 0 && has_prefix(&k, GONE_PREFIX, plen) && !cbrc;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		char *grown = realloc(val, v.mv_size + 1);

		if (!grown) {
			rc = ENOMEM;
			break;
		}
		val = grown;
		memcpy(id, (const char *)k.mv_data + plen, k.mv_size - plen);
		id[k.mv_size - plen] = '\0';
		memcpy(val, v.mv_data, v.mv_size);
		val[v.mv_size] = '\0';
		slash = strchr(val, '/');
		if (!slash)
			continue;	/* not ours to read: skipped */
		*slash = '\0';
		cbrc = fn(id, val, slash + 1, arg);
	}
	mdb_cursor_close(cur);
	txn_end(st, txn);
	free(val);
	if (cbrc)
		return cbrc;
	return rc == MDB_NOTFOUND || rc == 0 ? 0 : store_errno(rc);
}

/* ---- the xattr view --------------------------------------------------- */

void store_format_time(int64_t t, char *buf, size_t len)
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (len == 0)
		return;
	if (!gmtime_r(&tt, &tm) || !strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm))
		buf[0] = '\0';
}

static int is_public(const char *field)
{
	int i;

	for (i = 0; store_field_names[i]; i++)
		if (!strcmp(store_field_names[i], field))
			return 1;
	return 0;
}

int store_field_format(const struct store_record *rec, const char *field, char *buf, size_t len)
{
	const struct field *f = NULL;
	const char *val = NULL;
	char tmp[48];
	size_t n;
	int64_t t;

	if (!is_public(field))
		return -ENODATA;
	if (!strcmp(field, "progress")) {
		if (rec->progress_total == 0)
			return -ENODATA;
		val = tmp;
		n = (size_t)snprintf(tmp, sizeof(tmp), "%" PRIu64 "/%" PRIu64, rec->progress_done,
				     rec->progress_total);
	} else {
		f = field_find(field, strlen(field));
		if (!f)
			return -ENODATA;
		if (f->kind == F_I64) {
			memcpy(&t, (const char *)rec + f->off, sizeof(t));
			if (t == 0)
				return -ENODATA;
			store_format_time(t, tmp, sizeof(tmp));
			val = tmp;
			n = strlen(tmp);
		} else {
			n = field_text(rec, f, tmp, sizeof(tmp), &val);
		}
		if (!strcmp(field, "id") && rec->id == 0)
			return -ENODATA;
		if (!strcmp(field, "attempts") && rec->attempts == 0)
			return -ENODATA;
		if (!strcmp(field, "compressed_size") && rec->compressed_size == 0 &&
		    rec->status != STORE_COMPLETED && rec->status != STORE_DUPLICATE)
			return -ENODATA;
	}
	if (n == 0)
		return -ENODATA;
	if (len)	/* len 0 is the getxattr size probe; buf may be NULL */
		memcpy(buf, val, n < len ? n : len);
	return (int)n;
}
