/*
 * engine.c - the upload queue, its scheduler and the upload workers.
 *
 * DESIGN
 * LMDB is the queue: a unit is queued by writing its record with status
 * "queued" before the FUSE reply (engine_unit_changed), so a crash forgets
 * nothing.  The in-memory table of units is only a cache of what is
 * scheduled or running: the scheduler thread rescans the store's "queued"
 * index every few seconds (which is how `mgmtfs retry` on a live mount and
 * crash recovery reach it).
 *
 *   FUSE release ──> engine_unit_changed ──> record queued (LMDB)
 *                                          └> unit WAITING, due = now + settle
 *   scheduler ──> due, no writer, not held ──> READY queue
 *   upload worker (4 x cfg->uploads threads, one S3 client each; a file
 *       needing multipart takes a slot first: as many as buffer_memory
 *       holds, engine_multipart_slots)
 *       archive stream (tar/gzip on all cores) ──> part buffers, each
 *           part's sha256 made as it is read (if the client signs data:
 *           payload_signing), its MD5 half then and half
 *           while the next part is read, in a second lane (arc_stream_ride,
 *           digest_lanes; for tar and none in the same pass as the
 *           content's sha256); a part is sent once the next one is read
 *       one part  ──> PUT with If-None-Match: *  (taken -> NAME_1...)
 *       more      ──> multipart: parts handed to the part senders
 *                     (uploads x parts_in_flight threads, one S3 client
 *                     each, connections kept alive); at most
 *                     parts_in_flight buffers in flight per upload
 *       HEAD checks size and ETag; record written; file moved to completed/
 *
 * A change to a unit while it uploads raises its cancel flag: the transfer
 * is cut, the multipart upload aborted, and the unit runs again once it
 * settles.  Memory is bounded by buffer_memory (the part buffers of the
 * uploads running at once: (parts_in_flight + 1) x part_size for a
 * multipart upload, the one buffer of a single PUT; mem_hold) plus the
 * compressors' blocks and the small files' kept buffers (SMALL_BUF per
 * worker), whatever the file sizes.
 *
 * Locks: e->lock guards the unit table, the ready queue and the part
 * queue.  fs->rec_lock serialises read-modify-write of records; it is
 * never held while e->lock is wanted by the same thread in the other
 * order (rec_lock first, then e->lock, if ever both).
 */
#include "fs/fs_i.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "archive/arc.h"
#include "common/digest.h"
#include "common/log.h"
#include "common/utf8.h"
#include "s3/s3.h"

#define RESCAN_SECONDS 1.0
#define UNMOVED_FLAGS (STORE_F_UNMOVED | STORE_F_DUPLICATE)
#define MAX_NAME_TRIES 10000
#define UNIT_BUCKETS 4096	/* a power of two */
#define HUGE_PAGE (2u << 20)
#define SMALL_BUF (256u << 10)	/* the reused buffer of a small file's one PUT */
#define PUT_SLACK (64u << 10)	/* tar headers, padding and gzip's worst case */
#define HINT_BITS 23		/* the duplicates hint: 2^23 bits, 1 MiB, touched where set */
#define HEAD_BYTES (64u << 10)	/* what file_head hashes */
#define AHEAD_BUF (1u << 20)	/* unit_sha256's reads */

enum unit_state {
	U_WAITING,
	U_READY,
	U_RUNNING,
};

struct unit {
	char *name;		/* owned: top-level name in pending/ */
	uint64_t id;
	enum unit_state state;
	double due;		/* monotonic seconds */
	int again;		/* changed while running: schedule again after */
	int gone;		/* left pending/ while running */
	int upload_again;	/* moved back from completed/: upload even if a copy exists */
	atomic_int cancel;
	_Atomic uint64_t done, total;
	struct unit *next, **pprev;	/* the table: all units */
	struct unit *hnext;	/* the table: the units of its name's bucket */
	struct unit *ready_next;
};

/* A multipart upload in progress, shared by its worker and the part senders. */
struct job {
	struct engine *e;
	struct unit *u;
	const char *key;	/* borrowed from the worker */
	const char *upload_id;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int inflight;		/* protected by lock */
	int rc;			/* first failure, protected by lock */
	char error[S3_ERROR_MAX];
	unsigned char (*md5s)[16];	/* per part, index partno-1 */
	struct s3_part *parts;
	size_t nparts;
	struct s3_part *have;	/* parts the server already has (resume) */
	size_t nhave;
	int dry;		/* only hash the parts: the upload may be complete already */
	uint64_t sent;		/* bytes of parts done */
};

struct part_task {
	struct job *job;
	uint32_t partno;
	unsigned char *buf;	/* owned, of cap bytes (buf_get) */
	size_t cap;
	size_t len;
	unsigned char md5[16];	/* of buf, hashed by the reader as it was filled */
	char sha[65];
	struct part_task *next;
};

/* Free buffers of one size, kept for the next upload (buf_get). */
struct buf_pool {
	pthread_mutex_t lock;	/* taken alone */
	unsigned char **bufs;
	int n, max;
	size_t size;
};

struct engine {
	struct fs *fs;
	const struct mgmtfs_config *cfg;
	struct s3_config s3cfg;
	pthread_mutex_t lock;
	pthread_cond_t sched_cond;
	pthread_cond_t work_cond;
	pthread_cond_t part_cond;
	struct unit *units;		/* protected by lock */
	struct unit *by_name[UNIT_BUCKETS];	/* the same units by name (unit_find) */
	struct unit *ready, **ready_tail;
	struct part_task *parts, **parts_tail;
	int stopping;
	pthread_t sched;
	pthread_t *workers;
	pthread_t *senders;
	int nworkers, nsenders;
	int mount_hold;		/* -o hold, until mgmtfs resume: only the scheduler, once started */
	int big_free;		/* multipart slots left, protected by lock */
	size_t mem_held;	/* part-buffer memory taken (mem_hold), protected by lock */
	struct buf_pool pool;	/* free part buffers (part_size) */
	_Atomic int pool_made;	/* part buffers made in all (logged at unmount) */
	struct buf_pool small;	/* free buffers of small files' one PUT (SMALL_BUF) */
	int warm;		/* WARM_*: the pool filled (once, or again after a trim), under lock */
	int nrunning;		/* units uploading, protected by lock */
	int trimmed;		/* the pools given back since the last unit ran, under lock */
	double idle_since;	/* when nrunning last fell to 0 (buf_trim), protected by lock */
	pthread_cond_t warm_cond;	/* warm left WARM_FILLING */
	pthread_t warm_thread;	/* filling it after mount (warm_start), joined by engine_stop */
	int warm_joinable;
	_Atomic uint64_t *hint;	/* the duplicates hint (hint_has), filled under hint_lock */
	pthread_mutex_t hint_lock;
	int hint_filled;	/* protected by hint_lock */
	pthread_cond_t big_cond;
	struct gone_mpu *gone;	/* multipart uploads of removed units, protected by lock */
	int started;
};

/*
 * A multipart upload whose unit left pending/ while queued: aborted by the
 * scheduler.  It is in the store too (store_gone_put) until the abort went
 * through, so that a later mount aborts what a crash or an unreachable
 * server left.
 */
struct gone_mpu {
	struct gone_mpu *next;
	int tries;
	char key[STORE_KEY_MAX];
	char upload_id[512];
};

int64_t fs_now(void)
{
	return (int64_t)time(NULL);
}

double fs_monotonic(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- records ---------------------------------------------------------- */

int fs_record_update(struct fs *fs, uint64_t id, int (*fn)(struct store_record *rec, void *arg),
		     void *arg)
{
	struct store_record *rec = malloc(sizeof(*rec));
	int rc;

	if (!rec)
		return -ENOMEM;
	pthread_mutex_lock(&fs->rec_lock);
	rc = store_get(fs->st, id, rec);
	if (!rc)
		rc = fn(rec, arg);
	if (rc == 0)
		rc = store_put(fs->st, rec);
	else if (rc > 0)
		rc = 0;
	pthread_mutex_unlock(&fs->rec_lock);
	free(rec);
	return rc;
}

static void pending_rel(const char *name, char *buf, size_t len)
{
	snprintf(buf, len, "pending/%s", name);
}

static int backing_pending(struct engine *e, const char *name, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%s/pending/%s", e->cfg->local_dir, name);

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static int status_active(enum store_status s)
{
	return s == STORE_QUEUED || s == STORE_UPLOADING || s == STORE_FAILED;
}

/* ---- the unit table ----------------------------------------------------- */

/* FNV-1a of @name: its bucket in e->by_name. */
static struct unit **unit_bucket(struct engine *e, const char *name)
{
	uint32_t h = 2166136261u;

	for (; *name; name++)
		h = (h ^ (unsigned char)*name) * 16777619u;
	return &e->by_name[h & (UNIT_BUCKETS - 1)];
}

static struct unit *unit_find(struct engine *e, const char *name)
{
	struct unit *u;

	for (u = *unit_bucket(e, name); u; u = u->hnext)
		if (!strcmp(u->name, name))
			return u;
	return NULL;
}

static struct unit *unit_find_id(struct engine *e, uint64_t id)
{
	struct unit *u;

	for (u = e->units; u; u = u->next)
		if (u->id == id)
			return u;
	return NULL;
}

static void unit_add(struct engine *e, struct unit *u)
{
	struct unit **b = unit_bucket(e, u->name);

	u->next = e->units;
	if (u->next)
		u->next->pprev = &u->next;
	u->pprev = &e->units;
	e->units = u;
	u->hnext = *b;
	*b = u;
}

static void unit_remove(struct engine *e, struct unit *u)
{
	struct unit **pp;

	*u->pprev = u->next;
	if (u->next)
		u->next->pprev = u->pprev;
	for (pp = unit_bucket(e, u->name); *pp; pp = &(*pp)->hnext) {
		if (*pp == u) {
			*pp = u->hnext;
			break;
		}
	}
	free(u->name);
	free(u);
}

static void ready_remove(struct engine *e, struct unit *u)
{
	struct unit **pp;

	for (pp = &e->ready; *pp; pp = &(*pp)->ready_next) {
		if (*pp == u) {
			*pp = u->ready_next;
			break;
		}
	}
	e->ready_tail = &e->ready;
	while (*e->ready_tail)
		e->ready_tail = &(*e->ready_tail)->ready_next;
	u->ready_next = NULL;
}

/* Schedule @name (record @id) after @delay.  Caller holds e->lock. */
static int unit_schedule(struct engine *e, const char *name, uint64_t id, double delay, int again)
{
	struct unit *u = unit_find(e, name);

	if (!u) {
		u = calloc(1, sizeof(*u));
		if (!u || !(u->name = strdup(name))) {
			free(u);
			return -ENOMEM;
		}
		unit_add(e, u);
		u->state = U_WAITING;
	}
	u->id = id;
	u->upload_again |= again;
	if (u->state == U_RUNNING) {
		u->again = 1;
		u->gone = 0;
	} else {
		if (u->state == U_READY) {
			ready_remove(e, u);
			u->state = U_WAITING;
		}
		u->due = fs_monotonic() + delay;
	}
	pthread_cond_signal(&e->sched_cond);
	return 0;
}

/* ---- FUSE side ---------------------------------------------------------- */

struct queue_arg {
	uint64_t size;
};

static int requeue_fn(struct store_record *rec, void *arg)
{
	const struct queue_arg *q = arg;

	rec->status = STORE_QUEUED;
	rec->error[0] = '\0';
	rec->flags &= ~(STORE_F_WRITE_FAILED | UNMOVED_FLAGS);	/* written again */
	rec->etag[0] = '\0';	/* and an earlier upload is not of this content */
	rec->upload_timestamp = 0;
	rec->original_size = q->size;
	rec->progress_done = 0;
	rec->progress_total = 0;
	rec->generation++;
	return 0;
}

static int unit_changed(struct engine *e, const char *name, int again)
{
	struct store_record *rec = NULL;
	char rel[PATH_MAX], path[PATH_MAX];
	struct queue_arg q = { 0 };
	struct stat st;
	uint64_t id = 0;
	int dir, rc;

	if (cfg_name_ignored(e->cfg, name))
		return 0;
	if (backing_pending(e, name, path, sizeof(path)) || lstat(path, &st))
		return 0;	/* gone already */
	dir = S_ISDIR(st.st_mode);
	q.size = S_ISREG(st.st_mode) ? (uint64_t)st.st_size : 0;
	pending_rel(name, rel, sizeof(rel));
	rec = calloc(1, sizeof(*rec));
	if (!rec)
		return -ENOMEM;
	pthread_mutex_lock(&e->fs->rec_lock);
	rc = store_find_path(e->fs->st, rel, &id);
	if (!rc)
		rc = store_get(e->fs->st, id, rec);
	if (!rc && status_active(rec->status) && dir && (rec->flags & STORE_F_WRITE_FAILED)) {
		/* a good write elsewhere in a directory does not make its incomplete file whole */
		pthread_mutex_unlock(&e->fs->rec_lock);
		free(rec);
		return 0;
	}
	if (!rc && status_active(rec->status)) {
		requeue_fn(rec, &q);
	} else {
		memset(rec, 0, sizeof(*rec));
		rec->status = STORE_QUEUED;
		snprintf(rec->original_path, sizeof(rec->original_path), "%s", rel);
		snprintf(rec->s3_bucket, sizeof(rec->s3_bucket), "%s", e->cfg->bucket);
		rec->original_size = q.size;
	}
	/* in the record, so that the next mount uploads it again too */
	if (again)
		rec->upload_again = 1;
	again = rec->upload_again;
	rc = store_put(e->fs->st, rec);
	id = rec->id;
	pthread_mutex_unlock(&e->fs->rec_lock);
	free(rec);
	if (rc) {
		char eb[128];

		mgmtfs_err("cannot queue 'pending/%s': %s", name,
			   mgmtfs_strerror(rc, eb, sizeof(eb)));
		return rc;
	}
	pthread_mutex_lock(&e->lock);
	rc = unit_schedule(e, name, id, dir ? e->cfg->dir_settle : e->cfg->settle, again);
	pthread_mutex_unlock(&e->lock);
	return rc;
}

int engine_unit_changed(struct engine *e, const char *name)
{
	return unit_changed(e, name, 0);
}

int engine_unit_again(struct engine *e, const char *name)
{
	return unit_changed(e, name, 1);
}

struct werr_arg {
	const char *name;
	int err;
	int dir;
};

static int write_failed_fn(struct store_record *rec, void *arg)
{
	const struct werr_arg *w = arg;
	char eb[128];

	rec->status = STORE_FAILED;
	rec->flags |= STORE_F_WRITE_FAILED;
	snprintf(rec->error, sizeof(rec->error),
		 "writing 'pending/%s' failed (%s): the file is incomplete and was not "
		 "uploaded; free space if needed and write it again%s",
		 w->name, mgmtfs_strerror(w->err, eb, sizeof(eb)),
		 w->dir ? ", then move the directory out of pending/ and back" : "");
	return 0;
}

void engine_unit_write_failed(struct engine *e, const char *name, int err)
{
	char rel[PATH_MAX], path[PATH_MAX];
	struct stat st;
	uint64_t id;
	int rc, dir;

	if (cfg_name_ignored(e->cfg, name))
		return;
	dir = !backing_pending(e, name, path, sizeof(path)) && !lstat(path, &st) &&
	      S_ISDIR(st.st_mode);
	/* make sure a record exists (queued), then mark it failed; never schedule it */
	rc = engine_unit_changed(e, name);
	pthread_mutex_lock(&e->lock);
	{
		struct unit *u = unit_find(e, name);

		if (u && u->state == U_WAITING)
			unit_remove(e, u);
		else if (u && u->state == U_READY) {
			ready_remove(e, u);
			unit_remove(e, u);
		} else if (u && u->state == U_RUNNING) {
			atomic_fetch_or(&u->cancel, S3_CANCEL);
			u->again = 0;
		}
	}
	pthread_mutex_unlock(&e->lock);
	pending_rel(name, rel, sizeof(rel));
	if (!rc && !store_find_path(e->fs->st, rel, &id))
		fs_record_update(e->fs, id, write_failed_fn, &(struct werr_arg){ name, err, dir });
	{
		char eb[128];

		mgmtfs_warn("not uploading 'pending/%s': a write into it failed (%s): the file is "
			    "incomplete; free space and write it again",
			    name, mgmtfs_strerror(err, eb, sizeof(eb)));
	}
}

/*
 * The record of a unit that left pending/ goes, unless its upload finished
 * and only its move failed: that object is up, so the record stays, as
 * after rm in completed/ (completed or duplicate, no completed_path).
 * Returns 1 if it stays.
 */
static int drop_record(struct store *st, struct store_record *rec)
{
	if (!(rec->flags & STORE_F_UNMOVED)) {
		store_delete(st, rec->id);
		return 0;
	}
	rec->status = rec->flags & STORE_F_DUPLICATE ? STORE_DUPLICATE : STORE_COMPLETED;
	rec->flags &= ~UNMOVED_FLAGS;
	rec->error[0] = '\0';
	rec->completed_path[0] = '\0';
	store_put(st, rec);
	return 1;
}

/* Put @g (a list) before the uploads abort_gone has to do. */
static void gone_push(struct engine *e, struct gone_mpu *g)
{
	struct gone_mpu *t = g;

	if (!g)
		return;
	while (t->next)
		t = t->next;
	pthread_mutex_lock(&e->lock);
	t->next = e->gone;
	e->gone = g;
	pthread_mutex_unlock(&e->lock);
}

/* Prepend an upload to abort to the list *@head. */
static int gone_new(struct gone_mpu **head, const char *upload_id, const char *key)
{
	struct gone_mpu *g = calloc(1, sizeof(*g));

	if (!g)
		return -ENOMEM;
	snprintf(g->key, sizeof(g->key), "%s", key);
	snprintf(g->upload_id, sizeof(g->upload_id), "%s", upload_id);
	g->next = *head;
	*head = g;
	return 0;
}

/*
 * Forget the queue entry of a unit that left pending/ (the record goes too).
 * A multipart upload it had (one an unmount left to resume) is aborted by
 * the scheduler (abort_gone); it is stored before the record goes, so that
 * no crash in between leaves it owned by nothing.
 */
static void forget_record(struct engine *e, const char *name)
{
	struct store_record *rec = malloc(sizeof(*rec));
	struct gone_mpu *g = NULL;
	char rel[PATH_MAX];
	uint64_t id;

	if (!rec)
		return;
	pending_rel(name, rel, sizeof(rel));
	pthread_mutex_lock(&e->fs->rec_lock);
	if (!store_find_path(e->fs->st, rel, &id) && !store_get(e->fs->st, id, rec) &&
	    status_active(rec->status)) {
		if (rec->upload_id[0] && rec->s3_object_key[0]) {
			store_gone_put(e->fs->st, rec->upload_id, rec->s3_bucket, rec->s3_object_key);
			gone_new(&g, rec->upload_id, rec->s3_object_key);
		}
		drop_record(e->fs->st, rec);
		store_part_clear(e->fs->st, id);
	}
	pthread_mutex_unlock(&e->fs->rec_lock);
	free(rec);
	gone_push(e, g);
}

/*
 * Abort the multipart uploads forget_record() left.  Scheduler thread, so
 * one quick try each (no backoff: it must not hold up scheduling); one that
 * fails is tried again at the next scan, up to GONE_TRIES times, then left
 * in the store for the next mount.
 */
#define GONE_TRIES 60

struct gone_load {
	const char *bucket;
	struct gone_mpu *list;
};

static int load_gone_cb(const char *upload_id, const char *bucket, const char *key, void *arg)
{
	struct gone_load *l = arg;

	if (strcmp(bucket, l->bucket))
		return 0;	/* kept for a mount of its bucket */
	return gone_new(&l->list, upload_id, key);
}

/* The uploads an earlier mount left to abort (collected first: no lock inside a txn). */
static void load_gone(struct engine *e)
{
	struct gone_load l = { e->cfg->bucket, NULL };

	store_gone_list(e->fs->st, load_gone_cb, &l);
	gone_push(e, l.list);
}

static void abort_gone(struct engine *e)
{
	struct s3_config quick = e->s3cfg;
	struct s3_client *c = NULL;
	struct gone_mpu *g, *again = NULL;

	pthread_mutex_lock(&e->lock);
	g = e->gone;
	e->gone = NULL;
	pthread_mutex_unlock(&e->lock);
	quick.max_attempts = 1;
	quick.connect_timeout = 2;
	quick.stall_seconds = 5;
	if (g && s3_client_new(&quick, &c))
		c = NULL;
	while (g) {
		struct gone_mpu *next = g->next;
		int rc = c ? s3_mpu_abort(c, g->key, g->upload_id) : -EAGAIN;

		if (rc == 0) {
			mgmtfs_info("aborted the multipart upload of '%s': its file was removed",
				    g->key);
			store_gone_del(e->fs->st, g->upload_id);
		}
		if (rc && ++g->tries < GONE_TRIES) {
			g->next = again;
			again = g;
		} else {
			if (rc)
				mgmtfs_warn("cannot abort the multipart upload of '%s' (upload id %s) "
					    "left by a removed file: the next mount tries again, or "
					    "abort it with your S3 tools", g->key, g->upload_id);
			free(g);
		}
		g = next;
	}
	s3_client_free(c);
	gone_push(e, again);
}

void engine_unit_touched(struct engine *e, const char *name, int gone)
{
	struct unit *u;
	int forget = 0;

	pthread_mutex_lock(&e->lock);
	u = unit_find(e, name);
	if (u && u->state == U_RUNNING) {
		atomic_fetch_or(&u->cancel, S3_CANCEL);
		if (gone) {
			u->gone = 1;
			u->again = 0;
		}
	} else if (u && gone) {
		if (u->state == U_READY)
			ready_remove(e, u);
		unit_remove(e, u);
		forget = 1;
	} else if (u && u->state == U_READY) {
		/* not started yet: wait again (the scheduler sees the writer, if any) */
		ready_remove(e, u);
		u->state = U_WAITING;
		u->due = fs_monotonic() + e->cfg->settle;
		pthread_cond_signal(&e->sched_cond);
	} else if (!u && gone) {
		forget = 1;
	}
	pthread_mutex_unlock(&e->lock);
	if (forget)
		forget_record(e, name);
}

int engine_progress(struct engine *e, uint64_t id, uint64_t *done, uint64_t *total)
{
	struct unit *u;
	int rc = -ENOENT;

	pthread_mutex_lock(&e->lock);
	u = unit_find_id(e, id);
	if (u && u->state == U_RUNNING && atomic_load(&u->total)) {
		*done = atomic_load(&u->done);
		*total = atomic_load(&u->total);
		rc = 0;
	}
	pthread_mutex_unlock(&e->lock);
	return rc;
}

/* ---- names -------------------------------------------------------------- */

void fs_numbered_name(const char *name, unsigned i, char *buf, size_t len)
{
	const char *dot = strrchr(name, '.');

	if (i == 0)
		snprintf(buf, len, "%s", name);
	else if (!dot || dot == name)
		snprintf(buf, len, "%s_%u", name, i);
	else
		snprintf(buf, len, "%.*s_%u%s", (int)(dot - name), name, i, dot);
}

static void object_key(struct engine *e, const char *name, unsigned i, enum arc_format fmt,
		       char *buf, size_t len)
{
	char base[PATH_MAX], utf8[PATH_MAX];
	const char *prefix = e->cfg->prefix;

	/* keys are UTF-8: a byte of another encoding becomes U+FFFD (the record keeps the name) */
	if (utf8_sanitize(name, utf8, sizeof(utf8)))
		name = utf8;
	if (fmt == ARC_NONE) {
		fs_numbered_name(name, i, base, sizeof(base));
	} else if (i == 0) {
		snprintf(base, sizeof(base), "%s%s", name, arc_format_suffix(fmt));
	} else {
		snprintf(base, sizeof(base), "%s_%u%s", name, i, arc_format_suffix(fmt));
	}
	snprintf(buf, len, "%s%s%s", prefix, *prefix ? "/" : "", base);
}

/* ---- part buffers --------------------------------------------------------- */

/*
 * A part buffer in 2 MiB pages where the kernel has them to give: 4 page
 * faults per 8 MiB instead of 2,048.  On this project's VMs a fault costs
 * tens of microseconds (the host is asked for the page), so the first
 * multipart upload of a mount spent about 0.15 s of CPU warming its pool.
 */
static unsigned char *buf_new(size_t size)
{
	void *b = NULL;

	if (size < HUGE_PAGE || posix_memalign(&b, HUGE_PAGE, size))
		return malloc(size);
	madvise(b, size, MADV_HUGEPAGE);	/* a hint: without it, 4 KiB pages */
	return b;
}

/*
 * Buffers are reused: a fresh 8 MiB part buffer costs 2,048 page faults
 * and as many zeroed pages, which showed as 40% of the daemon's CPU on an
 * uncompressed upload; the buffer of a small file's one PUT, taken from
 * the system and given back for each file, cost an mmap, a munmap and its
 * TLB shootdown on every core each time (9% of the daemon's CPU for 1,000
 * files of 10 KiB).  Part buffers are kept up to (parts_in_flight + 1)
 * per multipart slot, the bound memory has anyway; buffers of SMALL_BUF
 * (any request up to that size) one per upload worker.  Other sizes (a
 * part grown for a huge file, a mid-sized file's one PUT) are freed after
 * use.
 */
static struct buf_pool *pool_for(struct engine *e, size_t size)
{
	if (size == e->pool.size)
		return &e->pool;
	return size <= e->small.size ? &e->small : NULL;
}

static unsigned char *buf_get(struct engine *e, size_t size)
{
	struct buf_pool *p = pool_for(e, size);
	unsigned char *b = NULL;

	if (!p)
		return buf_new(size);
	pthread_mutex_lock(&p->lock);
	if (p->n)
		b = p->bufs[--p->n];
	pthread_mutex_unlock(&p->lock);
	if (b)
		return b;
	if (p == &e->pool)
		atomic_fetch_add(&e->pool_made, 1);
	return buf_new(p->size);
}

static void buf_put(struct engine *e, unsigned char *b, size_t size)
{
	struct buf_pool *p = pool_for(e, size);

	if (b && p) {
		pthread_mutex_lock(&p->lock);
		if (p->n < p->max) {
			p->bufs[p->n++] = b;
			b = NULL;
		}
		pthread_mutex_unlock(&p->lock);
	}
	free(b);
}

static int pool_init(struct buf_pool *p, size_t size, int max)
{
	pthread_mutex_init(&p->lock, NULL);
	p->size = size;
	p->max = max;
	p->bufs = calloc((size_t)max, sizeof(*p->bufs));
	return p->bufs ? 0 : -ENOMEM;
}

/* Free the buffers @p keeps; returns how many. */
static int pool_drain(struct buf_pool *p)
{
	int n;

	pthread_mutex_lock(&p->lock);	/* held while freeing: it runs when nothing uploads */
	n = p->n;
	while (p->n)
		free(p->bufs[--p->n]);
	pthread_mutex_unlock(&p->lock);
	return n;
}

static void pool_free(struct buf_pool *p)
{
	pool_drain(p);
	free(p->bufs);
	pthread_mutex_destroy(&p->lock);
}

/*
 * Fill the pool with the buffers one multipart upload may hold
 * (parts_in_flight + 1), touched: the daemon's memory then does not creep
 * up with how long an upload runs (a slow moment on the server that queues
 * one more part), so a 4 GiB file costs what 1 GiB does.
 *
 * Touching them is most of what a fresh mount's first big file cost more
 * than the next (80 MiB at the defaults: 0.2 s on this project's VMs, where
 * a page new to the daemon is asked of the host, with a core left idle as
 * the upload waited).  So the mount fills the pool in the background
 * (warm_start) when buffer_memory holds it; the first multipart upload
 * waits for a fill in progress, or fills it itself, rather than take fresh
 * buffers beside it.  Filled while a copy into pending/ runs, it slowed
 * the copy by half.
 */
enum { WARM_NONE, WARM_FILLING, WARM_DONE };

static void warm_fill(struct engine *e)
{
	int n = e->cfg->parts_in_flight + 1;
	unsigned char **held = calloc((size_t)n, sizeof(*held));

	for (int i = 0; held && i < n; i++) {
		held[i] = buf_get(e, e->pool.size);
		if (held[i])
			memset(held[i], 0, e->pool.size);
	}
	for (int i = 0; held && i < n; i++)
		buf_put(e, held[i], e->pool.size);
	free(held);
	pthread_mutex_lock(&e->lock);
	e->warm = WARM_DONE;
	pthread_cond_broadcast(&e->warm_cond);
	pthread_mutex_unlock(&e->lock);
}

static void *warm_main(void *arg)
{
	warm_fill(arg);
	return NULL;
}

static void warm_start(struct engine *e)
{
	size_t one = (size_t)(e->cfg->parts_in_flight + 1) * e->pool.size;

	pthread_mutex_lock(&e->lock);
	if (e->warm == WARM_NONE && e->started && !e->mount_hold && !atomic_load(&e->fs->held) &&
	    one <= e->cfg->buffer_memory &&
	    !pthread_create(&e->warm_thread, NULL, warm_main, e)) {
		e->warm = WARM_FILLING;
		e->warm_joinable = 1;
	}
	pthread_mutex_unlock(&e->lock);
}

static void buf_warm(struct engine *e)
{
	int fill;

	pthread_mutex_lock(&e->lock);
	while (e->warm == WARM_FILLING)
		pthread_cond_wait(&e->warm_cond, &e->lock);
	fill = e->warm == WARM_NONE;
	if (fill)
		e->warm = WARM_FILLING;
	pthread_mutex_unlock(&e->lock);
	if (fill)
		warm_fill(e);
}

/*
 * The pool, once filled, is what an idle daemon's memory mostly is (80 MiB
 * of its ~95 with the defaults).  After buffer_idle seconds without an
 * upload it goes back to the system; the next multipart upload fills it
 * again (buf_warm), which costs that upload the page faults the mount's
 * fill saved it (0.1-0.2 CPU-s on this project's VMs).  Run by the scheduler.
 */
static void buf_trim(struct engine *e, double now)
{
	int big, small;

	pthread_mutex_lock(&e->lock);
	if (e->nrunning || e->trimmed || e->warm == WARM_FILLING ||
	    now - e->idle_since < e->cfg->buffer_idle) {
		pthread_mutex_unlock(&e->lock);
		return;
	}
	e->trimmed = 1;
	e->warm = WARM_NONE;	/* a unit that starts now fills it again */
	pthread_mutex_unlock(&e->lock);
	big = pool_drain(&e->pool);
	small = pool_drain(&e->small);
	malloc_trim(0);		/* the small buffers live in the heap */
	if (big || small)
		mgmtfs_debug("no upload for %g s: %d + %d buffers (%zu KiB) given back",
			     e->cfg->buffer_idle, big, small,
			     ((size_t)big * e->pool.size + (size_t)small * e->small.size) >> 10);
}

/* ---- part senders ------------------------------------------------------- */

static void job_fail(struct job *j, int rc, const char *msg)
{
	pthread_mutex_lock(&j->lock);
	if (!j->rc) {
		j->rc = rc;
		snprintf(j->error, sizeof(j->error), "%s", msg);
	}
	pthread_mutex_unlock(&j->lock);
}

static void send_part(struct s3_client *c, struct part_task *t)
{
	struct job *j = t->job;
	struct engine *e = j->e;
	char etag[S3_ETAG_MAX], hex[33];
	int rc = 0, skip = 0;

	digest_hex(t->md5, sizeof(t->md5), hex);
	skip = j->dry;
	for (size_t i = 0; i < j->nhave; i++) {
		if (j->have[i].partno == t->partno && !strcmp(j->have[i].etag, hex) &&
		    j->have[i].size == t->len)
			skip = 1;
	}
	pthread_mutex_lock(&j->lock);
	if (j->rc)
		rc = j->rc;	/* the upload failed already: do not send more */
	pthread_mutex_unlock(&j->lock);
	if (!rc && !skip) {
		s3_client_set_cancel(c, &j->u->cancel);
		rc = s3_mpu_put_part(c, j->key, j->upload_id, t->partno, t->buf, t->len, t->md5,
				     t->sha, etag);
		s3_client_set_cancel(c, NULL);
		if (rc)
			job_fail(j, rc, s3_client_error(c));
		else
			store_part_put(e->fs->st, j->u->id, t->partno, etag, t->len);
	}
	/*
	 * The buffer goes back before the reader hears of a free slot: it
	 * takes its next buffer as soon as it does, and would find the pool
	 * empty and make one more than parts_in_flight + 1.
	 */
	buf_put(e, t->buf, t->cap);
	pthread_mutex_lock(&j->lock);
	if (!rc) {
		struct s3_part *p = &j->parts[t->partno - 1];

		memcpy(j->md5s[t->partno - 1], t->md5, 16);
		p->partno = t->partno;
		p->size = t->len;
		snprintf(p->etag, sizeof(p->etag), "%s", skip ? hex : etag);
		j->sent += t->len;
	}
	j->inflight--;
	pthread_cond_broadcast(&j->cond);
	pthread_mutex_unlock(&j->lock);
	free(t);
}

static void *sender_main(void *arg)
{
	struct engine *e = arg;
	struct s3_client *c = NULL;

	if (s3_client_new(&e->s3cfg, &c))
		mgmtfs_err("cannot make an S3 client for a part sender");
	for (;;) {
		struct part_task *t;

		pthread_mutex_lock(&e->lock);
		while (!e->parts && !e->stopping)
			pthread_cond_wait(&e->part_cond, &e->lock);
		t = e->parts;
		if (t) {
			e->parts = t->next;
			if (!e->parts)
				e->parts_tail = &e->parts;
		}
		pthread_mutex_unlock(&e->lock);
		if (!t)
			break;
		if (!c) {
			job_fail(t->job, -ENOMEM, "out of memory");
			buf_put(e, t->buf, t->cap);	/* before the slot: see send_part */
			pthread_mutex_lock(&t->job->lock);
			t->job->inflight--;
			pthread_cond_broadcast(&t->job->cond);
			pthread_mutex_unlock(&t->job->lock);
			free(t);
			continue;
		}
		send_part(c, t);
	}
	s3_client_free(c);
	return NULL;
}

/* ---- one upload ---------------------------------------------------------- */

struct result {
	enum store_status status;
	enum arc_format fmt;
	char key[STORE_KEY_MAX];
	char etag[STORE_ETAG_MAX];
	char checksum[80];
	char upload_id[S3_UPLOAD_ID_MAX];
	uint64_t in, out;
	uint64_t head;		/* file_head of a file sent in parts, else 0 */
	char error[S3_ERROR_MAX + 256];
	int resumable;		/* keep the multipart upload for a later resume */
	int unsure;		/* the complete may have gone through: keep the upload id */
	int made;		/* this try made the object at @key (not found it there) */
	int interrupted;	/* the try before was cut short by a crash */
};

/* Read from the stream until @buf is full or the stream ends. */
static ssize_t fill(struct arc_stream *as, unsigned char *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = arc_stream_read(as, buf + got, len - got);

		if (n < 0)
			return n;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

/* The digests of the parts being read: the stream feeds them (arc_stream_ride). */
struct part_hash {
	struct digest_lanes lanes;	/* the MD5s of this part and of the one before */
	struct digest_sha256 sha;	/* this part's, if signed */
	int sign;			/* the client signs the data (payload_signing) */
};

/* The part just read: its sha256 (hex, "" if not signed) into @sha; the next part's starts. */
static void part_sha_take(struct part_hash *h, char sha[65])
{
	sha[0] = '\0';
	if (!h->sign)
		return;
	digest_sha256_hex(&h->sha, sha);
	digest_sha256_init(&h->sha);
}

static int same_file(const struct stat *a, const struct stat *b)
{
	return a->st_size == b->st_size && a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
	       a->st_mtim.tv_nsec == b->st_mtim.tv_nsec && a->st_ino == b->st_ino;
}

/* Has the unit changed since @st was taken?  -ECANCELED if so. */
static int check_unchanged(struct unit *u, int fd, const struct stat *st)
{
	struct stat now;

	if (atomic_load(&u->cancel))
		return -ECANCELED;
	if (fstat(fd, &now) || !same_file(st, &now))
		return -ECANCELED;
	return 0;
}

static size_t part_size_for(const struct mgmtfs_config *cfg, uint64_t size)
{
	/* room for tar/gzip overhead on incompressible data */
	return s3_part_size(size + size / 64 + (1u << 20), cfg->part_size);
}

/* @ident: the value tells this record's content (s3_object_is, where ETags are no MD5s) */
static void put_meta(struct s3_meta *m, size_t *n, const char *name, const char *value, int ident)
{
	m[*n].name = name;
	m[*n].value = value;
	m[*n].ident = ident;
	(*n)++;
}

/* Is there an earlier upload of the same content whose object is still there? */
static int find_duplicate(struct engine *e, struct s3_client *c, uint64_t self,
			  const char *checksum, struct result *r)
{
	struct store_record *rec = malloc(sizeof(*rec));
	struct s3_object_info info;
	uint64_t id;
	int found = 0;

	if (!rec)
		return 0;
	if (!store_find_checksum(e->fs->st, checksum, &id) && id != self &&
	    !store_get(e->fs->st, id, rec) &&
	    (rec->status == STORE_COMPLETED || rec->status == STORE_DUPLICATE) &&
	    !strcmp(rec->s3_bucket, e->cfg->bucket) && rec->s3_object_key[0] &&
	    !s3_head_object(c, rec->s3_object_key, &info) && !strcmp(info.etag, rec->etag)) {
		snprintf(r->key, sizeof(r->key), "%s", rec->s3_object_key);
		snprintf(r->etag, sizeof(r->etag), "%s", rec->etag);
		r->out = rec->compressed_size;
		if (arc_format_parse(rec->compression_type, &r->fmt) || r->fmt == ARC_AUTO)
			r->fmt = ARC_TAR_GZ;
		r->status = STORE_DUPLICATE;
		found = 1;
	}
	free(rec);
	return found;
}

/*
 * The duplicates hint: one bit per hash of (original size, head) of every
 * completed or duplicate record of a file sent in parts, where head is the
 * first 8 bytes of the sha256 of the file's first HEAD_BYTES (file_head).
 * It is filled from the store the first time it is asked and marked by
 * every upload that ends since.  A clear bit means no such record, bar one
 * another process wrote meanwhile (mgmtfs rebuild) or one older than the
 * head field: that duplicate is found once uploaded, as without the hint.
 */
static uint64_t hint_bit(uint64_t size, uint64_t head)
{
	return ((size ^ head) * 0x9e3779b97f4a7c15ull) >> (64 - HINT_BITS);
}

static void hint_mark(struct engine *e, uint64_t size, uint64_t head)
{
	uint64_t b = hint_bit(size, head);

	if (head)
		atomic_fetch_or_explicit(&e->hint[b / 64], 1ull << (b % 64),
					 memory_order_relaxed);
}

static int hint_mark_cb(const struct store_record *rec, void *arg)
{
	hint_mark(arg, rec->original_size, rec->head);
	return 0;
}

/* May a completed or duplicate record have this size and head? */
static int hint_has(struct engine *e, uint64_t size, uint64_t head)
{
	uint64_t b = hint_bit(size, head);

	pthread_mutex_lock(&e->hint_lock);
	if (!e->hint_filled) {
		store_list(e->fs->st, STORE_COMPLETED, hint_mark_cb, e);
		store_list(e->fs->st, STORE_DUPLICATE, hint_mark_cb, e);
		e->hint_filled = 1;
	}
	pthread_mutex_unlock(&e->hint_lock);
	return (atomic_load_explicit(&e->hint[b / 64], memory_order_relaxed) >> (b % 64)) & 1;
}

/* The head of the file @fd: never 0, or 0 when it cannot be read. */
static uint64_t file_head(int fd)
{
	unsigned char *buf = malloc(HEAD_BYTES), d[32];
	struct digest_sha256 sha;
	uint64_t head = 0;

	if (buf && pread(fd, buf, HEAD_BYTES, 0) == (ssize_t)HEAD_BYTES) {
		digest_sha256_init(&sha);
		digest_update(NULL, &sha, NULL, buf, HEAD_BYTES);
		digest_sha256_final(&sha, d);
		for (int i = 0; i < 8; i++)
			head = head << 8 | d[i];
		head += !head;
	}
	free(buf);
	return head;
}

/*
 * The sha256 (hex) of pending/@name, open on @fd (@st), as its upload hashes
 * it: a file's bytes, a directory's tar stream.  Reads it whole, unless
 * *@cancel (may be NULL) rises.  Returns 0 or -errno.
 */
static int unit_sha256(int fd, const char *name, const struct stat *st, const atomic_int *cancel,
		       char hex[65])
{
	struct arc_opts opts = { .format = ARC_TAR };
	struct arc_stream *as = NULL;
	unsigned char *buf = malloc(AHEAD_BUF);
	ssize_t n = -ENOMEM;

	if (buf)
		n = S_ISDIR(st->st_mode) ? arc_stream_open_dir(&opts, fd, name, &as)
					 : arc_stream_open_file(&opts, fd, name, st, &as);
	while (n >= 0 && (n = arc_stream_read(as, buf, AHEAD_BUF)) > 0)
		if (cancel && atomic_load(cancel))
			n = -ECANCELED;
	if (n == 0 && arc_stream_sha256(as, hex))
		n = -EIO;
	arc_stream_free(as);
	free(buf);
	return (int)n;
}

/*
 * Is regular file pending/@name, open on @fd (@st), about to go up in
 * parts, a duplicate?  Its sha256 is known only once every part is read, so
 * a duplicate found then has been sent whole.  Where the hint has an
 * earlier upload of its size and head (r->head), the file is read once
 * ahead for its sha256 alone (about 0.5 s per GiB), and a duplicate sends
 * no part.  Returns 1 with @r filled as find_duplicate does, or 0: upload
 * it (read again, from the page cache).
 */
static int duplicate_ahead(struct engine *e, struct s3_client *c, struct unit *u,
			   const char *name, int fd, const struct stat *st, struct result *r)
{
	char hex[65];

	if (u->upload_again || !r->head || !hint_has(e, (uint64_t)st->st_size, r->head))
		return 0;
	if (unit_sha256(fd, name, st, &u->cancel, hex) || check_unchanged(u, fd, st))
		return 0;	/* the upload's own reads and checks say what happened */
	snprintf(r->checksum, sizeof(r->checksum), "sha256:%s", hex);
	if (!find_duplicate(e, c, u->id, r->checksum, r)) {
		r->checksum[0] = '\0';
		return 0;
	}
	r->in = (uint64_t)st->st_size;
	return 1;
}

/*
 * A try cut short by a crash may have stored this very content by one PUT
 * (its answer, or the record of it, lost): its PUT now meets that object
 * (412, our MD5 and size) and takes it, where a duplicate found first
 * would leave it in the bucket, named by nothing.  1 if it is there.
 */
static int stored_before(struct engine *e, struct s3_client *c, const char *name,
			 const struct result *r, size_t len, const unsigned char md5[16],
			 const struct s3_meta *meta, size_t nmeta)
{
	struct s3_object_info info;
	char key[STORE_KEY_MAX], hex[33];
	int rc;

	if (!r->interrupted)
		return 0;
	digest_hex(md5, 16, hex);
	for (unsigned i = 0; i < MAX_NAME_TRIES; i++) {
		object_key(e, name, i, r->fmt, key, sizeof(key));
		rc = s3_object_is(c, key, len, hex, meta, nmeta, 0, &info);
		if (rc)
			return rc == 1;	/* or a free key (or none to tell): stored nothing past it */
	}
	return 0;
}

/*
 * One PUT of @buf, whose MD5 and sha256 (hex) the reader made as it filled
 * it.  The server checks both (Content-MD5, the signed payload hash) and the
 * PUT's answer is checked in turn: its ETag must be that MD5 (check_etag in
 * s3.c), so no HEAD follows.  Only -EEXIST, a key that holds another
 * object, moves on to the next name; every other error ends the unit's try,
 * -EBADMSG above all (stored, but with an ETag that is not our MD5: each
 * new name would get one more copy).
 */
static int upload_single(struct engine *e, struct s3_client *c, struct unit *u, const char *name,
			 unsigned char *buf, size_t len, const unsigned char md5[16],
			 const char *sha, struct s3_meta *meta, size_t nmeta, struct result *r)
{
	int rc = -EEXIST;

	s3_client_set_cancel(c, &u->cancel);
	for (unsigned i = 0; rc == -EEXIST && i < MAX_NAME_TRIES; i++) {
		object_key(e, name, i, r->fmt, r->key, sizeof(r->key));
		rc = s3_put_object(c, r->key, buf, len, md5, sha,
				   u->upload_again ? S3_PUT_NEW_COPY : S3_PUT_NEW, meta, nmeta,
				   r->etag);
	}
	r->made = rc == 0 && s3_client_put_stored(c);
	s3_client_set_cancel(c, NULL);
	return rc;
}

struct stray_arg {
	const char *key;
	const char *keep;
	char ids[8][S3_UPLOAD_ID_MAX];
	int n;
};

static int stray_cb(const char *key, const char *upload_id, void *arg)
{
	struct stray_arg *s = arg;

	if (!strcmp(key, s->key) && strcmp(upload_id, s->keep) && s->n < 8)
		snprintf(s->ids[s->n++], S3_UPLOAD_ID_MAX, "%s", upload_id);
	return 0;
}

/*
 * A CreateMultipartUpload whose answer was lost and was sent again leaves
 * an upload nobody knows: abort every other upload of the key we own.
 */
static void abort_strays(struct s3_client *c, const char *key, const char *keep)
{
	struct stray_arg s = { .key = key, .keep = keep };

	if (s3_mpu_list(c, key, stray_cb, &s))
		return;
	for (int i = 0; i < s.n; i++) {
		mgmtfs_info("aborting a stray multipart upload of '%s'", key);
		s3_mpu_abort(c, key, s.ids[i]);
	}
}

struct mpu_arg {
	const char *key;
	const char *upload_id;
};

static int save_mpu_fn(struct store_record *rec, void *arg)
{
	const struct mpu_arg *m = arg;

	snprintf(rec->s3_object_key, sizeof(rec->s3_object_key), "%s", m->key);
	snprintf(rec->upload_id, sizeof(rec->upload_id), "%s", m->upload_id);
	return 0;
}

/*
 * A multipart upload's metadata goes out with CreateMultipartUpload, before
 * the checksum is known: it is added as the tag mgmt-sha256 once the object
 * is there, for mgmtfs rebuild.  The upload stands whatever the answer.
 */
static void tag_checksum(struct s3_client *c, struct arc_stream *as, const char *key)
{
	char sha[65];

	if (arc_stream_sha256(as, sha) == 0 && s3_put_tag(c, key, "mgmt-sha256", sha))
		mgmtfs_info("cannot tag '%s' with its sha256 (%s): mgmtfs rebuild will not know "
			    "its checksum",
			    key, s3_client_error(c));
}

/*
 * A multipart upload.  @first (@first_len bytes, sha256 @sha1) is part 1,
 * its MD5 still in @ph's current lane; @carry is the byte read after it,
 * already in @ph, the digests the stream feeds as it is read.
 */
static int upload_multi(struct engine *e, struct s3_client *c, struct unit *u,
			const struct store_record *rec, const char *name, struct arc_stream *as,
			unsigned char *first, size_t first_len, const char *sha1, int carry,
			struct part_hash *ph, size_t part_size, int fd, const struct stat *st,
			struct s3_meta *meta, size_t nmeta, struct result *r)
{
	struct job j = { 0 };
	struct s3_object_info info;
	unsigned char *buf = first, *next = NULL, cur_md5[16];
	char cur_sha[65], next_sha[65];
	size_t len = first_len, next_len, cap = 0;
	uint32_t partno = 0;
	char want[S3_ETAG_MAX], sha[65];
	uint64_t total = 0;
	int rc = 0;

	j.e = e;
	j.u = u;
	pthread_mutex_init(&j.lock, NULL);
	pthread_cond_init(&j.cond, NULL);
	s3_client_set_cancel(c, &u->cancel);
	/* resume the upload a crash or an unmount left behind, from the parts the server has */
	if (rec->upload_id[0] && rec->s3_object_key[0]) {
		snprintf(r->key, sizeof(r->key), "%s", rec->s3_object_key);
		snprintf(r->upload_id, sizeof(r->upload_id), "%s", rec->upload_id);
		rc = s3_mpu_list_parts(c, r->key, r->upload_id, &j.have, &j.nhave);
		if (rc == -ENOENT) {
			/*
			 * No such upload: it was completed (or aborted) just before a
			 * crash.  Make the parts again without sending them and compare
			 * the object's ETag at the end: uploaded once, never twice.
			 */
			j.dry = 1;
			rc = 0;
		} else if (rc) {
			mgmtfs_info("cannot resume the upload of 'pending/%s' (%s): starting again",
				    name, s3_client_error(c));
			s3_mpu_abort(c, r->key, r->upload_id);
			r->upload_id[0] = '\0';
			j.have = NULL;
			j.nhave = 0;
			rc = 0;
		} else {
			mgmtfs_info("resuming the upload of 'pending/%s': the server has %zu parts",
				    name, j.nhave);
		}
	}
	if (!r->upload_id[0]) {
		rc = -EEXIST;
		for (unsigned i = 0; rc == -EEXIST && i < MAX_NAME_TRIES; i++) {
			object_key(e, name, i, r->fmt, r->key, sizeof(r->key));
			rc = s3_head_object(c, r->key, &info);
			rc = rc == 0 ? -EEXIST : rc == -ENOENT ? 0 : rc;
		}
		if (!rc)
			rc = s3_mpu_create(c, r->key, meta, nmeta, r->upload_id);
		if (rc) {
			snprintf(r->error, sizeof(r->error), "%s", s3_client_error(c));
			goto out;
		}
		/*
		 * Uploads of this key that an earlier attempt left (its abort
		 * failed, or a crash came before its id was saved), or that a
		 * create whose answer was lost made before it was sent again,
		 * are aborted.  A first attempt whose create went through at once
		 * has none to find: the listing cost 44 ms before its first part,
		 * and could abort another client's upload of the same key.
		 */
		if (rec->attempts > 1 || s3_client_sent_twice(c))
			abort_strays(c, r->key, r->upload_id);
		store_part_clear(e->fs->st, u->id);
		rc = fs_record_update(e->fs, u->id, save_mpu_fn,
				      &(struct mpu_arg){ r->key, r->upload_id });
		if (rc)
			goto out;
	}
	j.key = r->key;
	j.upload_id = r->upload_id;
	r->resumable = 1;
	memcpy(cur_sha, sha1, sizeof(cur_sha));

	/*
	 * Part k is sent once part k+1 has been read: its MD5 is finished in
	 * the second lane while k+1 is read (digest_lanes).  So at most
	 * parts_in_flight - 1 parts are sent while one waits and one is read.
	 */
	for (;;) {
		struct part_task *t;
		size_t head = carry >= 0;	/* the byte read past part 1 starts part 2 */
		ssize_t n;

		pthread_mutex_lock(&j.lock);
		while (j.inflight >= e->cfg->parts_in_flight && !j.rc)
			pthread_cond_wait(&j.cond, &j.lock);
		rc = j.rc;
		atomic_store(&u->done, arc_stream_bytes_in(as));
		pthread_mutex_unlock(&j.lock);
		if (rc)
			break;
		next = buf_get(e, part_size);
		if (!next) {
			rc = -ENOMEM;
			break;
		}
		if (head)
			next[0] = (unsigned char)carry;
		carry = -1;
		digest_lanes_start(&ph->lanes, next, part_size, len);
		n = fill(as, next + head, part_size - head);
		if (n < 0) {
			rc = (int)n;
			break;
		}
		next_len = (size_t)n + head;
		part_sha_take(ph, next_sha);
		digest_lanes_take_prev(&ph->lanes, cur_md5);

		if (partno % 1024 == 0) {
			size_t ncap = cap + 1024;
			void *m, *p;

			pthread_mutex_lock(&j.lock);
			m = realloc(j.md5s, ncap * sizeof(*j.md5s));
			if (m)
				j.md5s = m;
			p = m ? realloc(j.parts, ncap * sizeof(*j.parts)) : NULL;
			if (p)
				j.parts = p;
			pthread_mutex_unlock(&j.lock);
			if (!m || !p) {
				rc = -ENOMEM;
				break;
			}
			cap = ncap;
		}
		if (partno >= 10000) {
			rc = -EFBIG;
			snprintf(r->error, sizeof(r->error),
				 "'%s' needs more than 10000 parts: raise part_size", name);
			break;
		}
		t = calloc(1, sizeof(*t));
		if (!t) {
			rc = -ENOMEM;
			break;
		}
		t->job = &j;
		t->partno = ++partno;
		t->buf = buf;
		t->cap = part_size;
		t->len = len;
		memcpy(t->md5, cur_md5, sizeof(t->md5));
		memcpy(t->sha, cur_sha, sizeof(t->sha));
		total += len;
		buf = NULL;
		pthread_mutex_lock(&j.lock);
		j.inflight++;
		pthread_mutex_unlock(&j.lock);
		pthread_mutex_lock(&e->lock);
		*e->parts_tail = t;
		e->parts_tail = &t->next;
		pthread_cond_signal(&e->part_cond);
		pthread_mutex_unlock(&e->lock);
		if (next_len == 0)
			break;
		buf = next;
		next = NULL;
		len = next_len;
		memcpy(cur_sha, next_sha, sizeof(cur_sha));
	}
	buf_put(e, next, part_size);
	buf_put(e, buf, part_size);
	pthread_mutex_lock(&j.lock);
	while (j.inflight > 0)
		pthread_cond_wait(&j.cond, &j.lock);
	if (!rc)
		rc = j.rc;
	if (j.rc && !r->error[0])
		snprintf(r->error, sizeof(r->error), "%s", j.error);
	pthread_mutex_unlock(&j.lock);
	if (rc)
		goto out;
	rc = check_unchanged(u, fd, st);
	if (rc)
		goto out;
	r->out = total;
	s3_multipart_etag((const unsigned char(*)[16])j.md5s, partno, want);
	/*
	 * Only now is the checksum known: the same content already in the
	 * bucket makes this a duplicate, and the parts sent are dropped.
	 */
	if (!j.dry && !u->upload_again && arc_stream_sha256(as, sha) == 0) {
		char key[STORE_KEY_MAX];

		snprintf(r->checksum, sizeof(r->checksum), "sha256:%s", sha);
		snprintf(key, sizeof(key), "%s", r->key);	/* r->key becomes the copy's */
		if (find_duplicate(e, c, u->id, r->checksum, r)) {
			s3_mpu_abort(c, key, r->upload_id);
			r->upload_id[0] = '\0';
			r->resumable = 0;
			goto out;
		}
	}
	if (j.dry) {
		rc = s3_object_is(c, r->key, total, want, meta, nmeta, 0, &info);
		r->upload_id[0] = '\0';
		r->resumable = 0;
		if (rc == 1) {
			rc = 0;
			mgmtfs_info("'pending/%s' was uploaded completely before the restart", name);
			snprintf(r->etag, sizeof(r->etag), "%s", info.etag);
			r->made = 1;	/* the ETag of our parts */
			tag_checksum(c, as, r->key);
			goto out;
		}
		rc = -EEXIST;	/* start again from scratch */
		goto out;
	}
	/* RGW ignores If-None-Match on complete: check that nobody took the key meanwhile */
	rc = s3_head_object(c, r->key, &info);
	if (rc == 0) {
		rc = -EEXIST;
		snprintf(r->error, sizeof(r->error),
			 "the key '%s' was taken during the upload: it will be uploaded again "
			 "under another name",
			 r->key);
		goto out;
	}
	if (rc != -ENOENT) {
		snprintf(r->error, sizeof(r->error), "%s", s3_client_error(c));
		goto out;
	}
	rc = s3_mpu_complete(c, r->key, r->upload_id, j.parts, partno, meta, nmeta, r->etag);
	/*
	 * No answer that says it failed (lost, 5xx): the server may have made
	 * the object.  The upload id stays in the record, so a retry looks
	 * (the dry run above) instead of sending it all again as NAME_1.
	 * Completed, the object is there even if the unit changed meanwhile:
	 * its HEAD goes out regardless, for the caller to know what it made.
	 */
	if (!rc) {
		s3_client_set_cancel(c, NULL);
		rc = s3_head_object(c, r->key, &info);
	}
	/* (or it went through and the HEAD that would check the object failed) */
	r->unsure = rc && rc != -ECANCELED &&
		    (s3_client_http_status(c) == 0 || s3_client_http_status(c) >= 500);
	if (rc) {
		snprintf(r->error, sizeof(r->error), "%s", s3_client_error(c));
		goto out;
	}
	/* SSE-KMS, SSE-C: no MD5 to compare, but the server checked each part's */
	if (info.size != total || (!info.etag_opaque && strcmp(info.etag, want))) {
		rc = -EBADMSG;
		snprintf(r->error, sizeof(r->error),
			 "the object '%s' on the server does not match what was sent "
			 "(size %llu, ETag %s; expected %llu, %s)",
			 r->key, (unsigned long long)info.size, info.etag,
			 (unsigned long long)total, want);
		goto out;
	}
	snprintf(r->etag, sizeof(r->etag), "%s", info.etag);
	r->made = 1;
	r->resumable = 0;
	r->upload_id[0] = '\0';
	tag_checksum(c, as, r->key);
out:
	s3_client_set_cancel(c, NULL);
	pthread_mutex_destroy(&j.lock);
	pthread_cond_destroy(&j.cond);
	free(j.md5s);
	free(j.parts);
	free(j.have);
	return rc;
}

/*
 * Take (@n > 0) or give back (@n < 0) part-buffer memory: what a unit may
 * fill, (parts_in_flight + 1) x part_size for a multipart upload (@big,
 * which also takes one of the engine_multipart_slots() slots), the one
 * buffer of a single PUT.  It waits while buffer_memory is spoken for,
 * unless nothing is held (so one unit always runs, whatever its size).
 * Small files are bound by request latency and hold little: many run at
 * once (4 workers per upload slot).
 */
static void mem_hold(struct engine *e, ssize_t n, int big)
{
	pthread_mutex_lock(&e->lock);
	if (n > 0) {
		while ((big && e->big_free == 0) ||
		       (e->mem_held > 0 && e->mem_held + (size_t)n > e->cfg->buffer_memory))
			pthread_cond_wait(&e->big_cond, &e->lock);
		e->mem_held += (size_t)n;
		e->big_free -= big;
	} else {
		e->mem_held -= (size_t)-n;
		e->big_free += big;
		pthread_cond_broadcast(&e->big_cond);
	}
	pthread_mutex_unlock(&e->lock);
}

/* Upload unit @name (record @rec).  Fills @r; returns 0 or -errno. */
static int upload_unit(struct engine *e, struct s3_client *c, struct unit *u,
		       const struct store_record *rec, const char *name, struct result *r)
{
	struct arc_opts opts = { 0 };
	struct arc_stream *as = NULL;
	struct s3_meta meta[8];
	struct part_hash ph;
	unsigned char *buf = NULL, md5[16], carry = 0;
	char path[PATH_MAX], sha[65], psha[65], size_s[32], time_s[32], id_s[32], eb[128];
	ssize_t more = 0;
	size_t nmeta = 0, part_size = 0, cap = 0, held = 0;
	uint64_t total;
	struct stat st;
	ssize_t n;
	int fd = -1, big = 0, rc;

	rc = backing_pending(e, name, path, sizeof(path));
	if (rc)
		goto out;
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st)) {
		rc = -errno;
		snprintf(r->error, sizeof(r->error), "cannot open 'pending/%s': %s", name,
			 mgmtfs_strerror(rc, eb, sizeof(eb)));
		goto out;
	}
	if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
		rc = -EPERM;
		snprintf(r->error, sizeof(r->error),
			 "'pending/%s' is neither a file nor a directory: it cannot be uploaded",
			 name);
		goto out;
	}
	opts.format = e->cfg->compression;
	opts.level = e->cfg->level;
	opts.threads = e->cfg->threads;
	if (S_ISDIR(st.st_mode)) {
		if (opts.format == ARC_GZIP || opts.format == ARC_NONE)
			opts.format = ARC_TAR_GZ;	/* one-file formats: a directory is a tar */
		rc = arc_stream_open_dir(&opts, fd, name, &as);
	} else {
		rc = arc_stream_open_file(&opts, fd, name, &st, &as);
	}
	if (rc == -EINVAL && S_ISDIR(st.st_mode)) {
		rc = -EPERM;
		snprintf(r->error, sizeof(r->error),
			 "'pending/%s' holds a symlink or a special file: only directories "
			 "and regular files can be archived; remove them and write again",
			 name);
		goto out;
	}
	if (rc) {
		snprintf(r->error, sizeof(r->error), "cannot read 'pending/%s': %s", name,
			 mgmtfs_strerror(rc, eb, sizeof(eb)));
		goto out;
	}
	r->fmt = arc_stream_format(as);
	total = arc_stream_size(as);	/* a directory's files, added up */
	atomic_store(&u->total, total);
	part_size = part_size_for(e->cfg, total);
	big = total >= part_size;
	if (big && S_ISREG(st.st_mode))
		r->head = file_head(fd);
	/* (a multipart upload to resume comes first: it may be complete) */
	if (!rec->upload_id[0] && duplicate_ahead(e, c, u, name, fd, &st, r))
		goto out;	/* rc 0, @r a duplicate: not one part sent */
	cap = part_size;
	held = (size_t)(e->cfg->parts_in_flight + 1) * part_size;
	if (!big) {
		/* one PUT: a buffer its size where that is known (a file), not a part's */
		if (S_ISREG(st.st_mode) && total + total / 64 + PUT_SLACK < part_size / 2)
			cap = (size_t)(total + total / 64 + PUT_SLACK);
		held = cap;
	}
	mem_hold(e, (ssize_t)held, big);
	if (big)
		buf_warm(e);
	buf = buf_get(e, cap);
	if (!buf) {
		rc = -ENOMEM;
		goto out;
	}
	/* the part's MD5 and sha256 are made as the stream is read, in one pass */
	digest_lanes_init(&ph.lanes);
	digest_sha256_init(&ph.sha);
	digest_lanes_start(&ph.lanes, buf, cap, 0);
	ph.sign = s3_client_signs_data(c);
	arc_stream_ride(as, &ph.lanes, ph.sign ? &ph.sha : NULL);
	n = fill(as, buf, cap);
	part_sha_take(&ph, psha);
	/* a byte more tells one part from more: it starts the next part's digests */
	if (n == (ssize_t)cap)
		more = fill(as, &carry, 1);
	if (more > 0 && cap < part_size)
		n = -ENODATA;	/* a file longer than it was: changed during the upload */
	if (n < 0 || more < 0) {
		rc = n < 0 ? (int)n : (int)more;
		goto read_error;
	}
	atomic_store(&u->done, arc_stream_bytes_in(as));
	snprintf(size_s, sizeof(size_s), "%llu", (unsigned long long)total);
	store_format_time(rec->started_at ? rec->started_at : fs_now(), time_s, sizeof(time_s));
	put_meta(meta, &nmeta, "mgmt-original-path", rec->original_path, 0);
	put_meta(meta, &nmeta, "mgmt-original-size", size_s, 1);
	put_meta(meta, &nmeta, "mgmt-compression", arc_format_name(r->fmt), 1);
	put_meta(meta, &nmeta, "mgmt-started-at", time_s, 0);	/* each try's own */
	/* tells this upload's object from an earlier copy of the same bytes */
	snprintf(id_s, sizeof(id_s), "%llu", (unsigned long long)rec->id);
	put_meta(meta, &nmeta, "mgmt-record-id", id_s, 1);
	if (!more) {
		/* the whole stream fits in one part: its checksum is known before the PUT */
		arc_stream_sha256(as, sha);
		snprintf(r->checksum, sizeof(r->checksum), "sha256:%s", sha);
		put_meta(meta, &nmeta, "mgmt-sha256", sha, 1);
		r->in = arc_stream_bytes_in(as);
		r->out = (uint64_t)n;
		rc = check_unchanged(u, fd, &st);
		if (rc)
			goto out;
		digest_lanes_take_cur(&ph.lanes, (size_t)n, md5);
		if (!u->upload_again && !stored_before(e, c, name, r, (size_t)n, md5, meta, nmeta) &&
		    find_duplicate(e, c, u->id, r->checksum, r))
			goto out;
		rc = upload_single(e, c, u, name, buf, (size_t)n, md5, psha, meta, nmeta, r);
		if (rc && !r->error[0])
			snprintf(r->error, sizeof(r->error), "%s", s3_client_error(c));
	} else {
		if (!big) {
			/*
			 * The data fit in a part but the stream did not (a directory's
			 * headers, data that grew in compression): take a multipart
			 * upload's share of memory and its slot before sending parts.
			 */
			mem_hold(e, -(ssize_t)held, 0);
			big = 1;
			held = (size_t)(e->cfg->parts_in_flight + 1) * part_size;
			mem_hold(e, (ssize_t)held, 1);
		}
		rc = upload_multi(e, c, u, rec, name, as, buf, part_size, psha, carry, &ph,
				  part_size, fd, &st, meta, nmeta, r);
		buf = NULL;	/* taken by the first part */
		if (rc == -ENODATA || (rc < 0 && rc != -ECANCELED && !r->error[0]))
			goto read_error;
		if (!rc) {
			arc_stream_sha256(as, sha);
			snprintf(r->checksum, sizeof(r->checksum), "sha256:%s", sha);
			r->in = arc_stream_bytes_in(as);
		}
	}
	goto out;
read_error:
	if (rc == -ENODATA)
		rc = -ECANCELED;	/* it shrank while read: changed during the upload */
	else
		snprintf(r->error, sizeof(r->error), "cannot read 'pending/%s': %s", name,
			 mgmtfs_strerror(rc, eb, sizeof(eb)));
out:
	buf_put(e, buf, cap);
	arc_stream_free(as);
	if (held)
		mem_hold(e, -(ssize_t)held, big);
	if (fd >= 0)
		close(fd);
	return rc;
}

/* ---- finishing ------------------------------------------------------------ */

struct start_arg {
	uint64_t generation;
	int ok;
	int interrupted;	/* it was uploading: the daemon died during that try */
};

static int start_fn(struct store_record *rec, void *arg)
{
	struct start_arg *s = arg;

	if (rec->status != STORE_QUEUED && rec->status != STORE_UPLOADING)
		return 1;	/* retried or removed meanwhile: nothing to do */
	if (rec->flags & STORE_F_WRITE_FAILED)
		return 1;	/* an incomplete file is never uploaded */
	s->ok = 1;
	s->generation = rec->generation;
	s->interrupted = rec->status == STORE_UPLOADING;
	rec->status = STORE_UPLOADING;
	rec->started_at = fs_now();
	rec->attempts++;
	rec->error[0] = '\0';
	return 0;
}

struct done_arg {
	const struct result *r;
	const char *dest;
	const char *bucket;
};

static int done_fn(struct store_record *rec, void *arg)
{
	const struct done_arg *d = arg;
	const struct result *r = d->r;

	rec->status = r->status;
	snprintf(rec->completed_path, sizeof(rec->completed_path), "completed/%s", d->dest);
	rec->upload_timestamp = fs_now();
	snprintf(rec->compression_type, sizeof(rec->compression_type), "%s",
		 arc_format_name(r->fmt));
	snprintf(rec->s3_bucket, sizeof(rec->s3_bucket), "%s", d->bucket);
	snprintf(rec->s3_object_key, sizeof(rec->s3_object_key), "%s", r->key);
	snprintf(rec->etag, sizeof(rec->etag), "%s", r->etag);
	rec->original_size = r->in;
	rec->compressed_size = r->out;
	rec->head = r->head;
	snprintf(rec->checksum, sizeof(rec->checksum), "%s", r->checksum);
	rec->error[0] = '\0';
	rec->progress_done = rec->progress_total = 0;
	rec->upload_id[0] = '\0';
	rec->flags &= ~UNMOVED_FLAGS;
	return 0;
}

struct fail_arg {
	const struct result *r;
	enum store_status status;
};

static int fail_fn(struct store_record *rec, void *arg)
{
	const struct fail_arg *f = arg;

	if (rec->flags & STORE_F_WRITE_FAILED) {
		/* a write failed during the upload: the record says so and stays failed */
		rec->upload_id[0] = '\0';
		return 0;
	}
	rec->status = f->status;
	snprintf(rec->error, sizeof(rec->error), "%s", f->r->error);
	snprintf(rec->upload_id, sizeof(rec->upload_id), "%s", f->r->upload_id);
	if (f->r->upload_id[0])
		snprintf(rec->s3_object_key, sizeof(rec->s3_object_key), "%s", f->r->key);
	else if (f->status != STORE_COMPLETED)
		rec->s3_object_key[0] = '\0';
	return 0;
}

/*
 * The object is up but the unit stayed in pending/ (completed_dir full, not
 * writable...): the record says failed, not completed, and why, and
 * STORE_F_UNMOVED tells the next mount and mgmtfs retry that only the move
 * is left to do (recover_unmoved_cb, uploaded_before).
 */

struct move_fail_arg {
	const char *name;
	const char *bucket;
	const char *key;
	enum store_status was;	/* completed or duplicate */
	int err;
};

static int move_failed_fn(struct store_record *rec, void *arg)
{
	const struct move_fail_arg *m = arg;
	char eb[128];

	rec->status = STORE_FAILED;
	rec->completed_path[0] = '\0';
	rec->flags |= STORE_F_UNMOVED;
	if (m->was == STORE_DUPLICATE)
		rec->flags |= STORE_F_DUPLICATE;
	snprintf(rec->error, sizeof(rec->error),
		 "%s%s/%s%s but moving 'pending/%s' to completed/ failed (%s): make room in "
		 "completed_dir or fix its permissions; the next mount or mgmtfs retry "
		 "moves it (no second upload)",
		 m->was == STORE_DUPLICATE ? "same content as s3://" : "uploaded as s3://", m->bucket,
		 m->key, m->was == STORE_DUPLICATE ? " (not uploaded again)" : "", m->name,
		 mgmtfs_strerror(m->err, eb, sizeof(eb)));
	return 0;
}

/* Opened for writing as it was being moved: queued again, not completed. */
static int unmoved_fn(struct store_record *rec, void *arg)
{
	(void)arg;
	rec->status = STORE_QUEUED;
	rec->completed_path[0] = '\0';
	rec->s3_object_key[0] = '\0';
	rec->error[0] = '\0';
	return 0;
}

static int engine_stopping(struct engine *e)
{
	int stopping;

	pthread_mutex_lock(&e->lock);
	stopping = e->stopping;
	pthread_mutex_unlock(&e->lock);
	return stopping;
}

/*
 * The object this try made holds content the unit no longer has, and no
 * record is to name it: it is deleted, so that the bucket keeps no stale
 * copy under the file's name (which a rebuild would take for the file), and
 * the new content gets the name's own key.  An object found there (another
 * unit's that this one duplicates, the same bytes met by a 412) is left.
 */
static void drop_superseded(struct s3_client *c, const char *name, struct result *r)
{
	if (r->status != STORE_COMPLETED || !r->made)
		return;
	if (s3_delete_object(c, r->key))
		mgmtfs_warn("cannot delete '%s', which holds content 'pending/%s' no longer has: "
			    "%s",
			    r->key, name, s3_client_error(c));
	r->made = 0;
}

struct named_arg {
	uint64_t self;
	const char *bucket, *key;
};

static int named_cb(const struct store_record *rec, void *arg)
{
	const struct named_arg *a = arg;

	return rec->id != a->self && !strcmp(rec->s3_object_key, a->key) &&
	       !strcmp(rec->s3_bucket, a->bucket);
}

/* Does a record other than @self name @key?  (Also 1 when the store cannot tell.) */
static int named_elsewhere(struct engine *e, uint64_t self, const char *key)
{
	struct named_arg a = { self, e->cfg->bucket, key };

	return store_list(e->fs->st, -1, named_cb, &a) != 0;
}

/* Record the upload, then move the file (the record first: a crash between is repaired). */
static void finish_ok(struct engine *e, struct s3_client *c, struct unit *u, const char *name,
		      struct result *r)
{
	char dest[NAME_MAX + 1], path[PATH_MAX], eb[128];
	uint64_t id = u->id, now_id;	/* this try's record (a change once it is done makes a new one) */
	int rc = -EEXIST;

	hint_mark(e, r->in, r->head);
	for (unsigned i = 0; rc == -EEXIST && i < MAX_NAME_TRIES; i++) {
		fs_numbered_name(name, i, dest, sizeof(dest));
		snprintf(path, sizeof(path), "%s/%s", e->cfg->completed_dir, dest);
		if (access(path, F_OK) == 0)
			continue;
		rc = fs_record_update(e->fs, id, done_fn,
				      &(struct done_arg){ r, dest, e->cfg->bucket });
		if (rc)
			break;
		/* a change after the upload's last check raised the cancel (none while stopping) */
		rc = fs_move_to_completed(e->fs, name, dest,
					  engine_stopping(e) ? NULL : &u->cancel);
	}
	store_part_clear(e->fs->st, id);
	if (rc == -EBUSY) {
		/* a writer or a change came after the last check: it is queued again */
		mgmtfs_info("'pending/%s' was changed or opened for writing as its upload "
			    "finished: uploading it again once closed", name);
		pthread_mutex_lock(&e->lock);
		now_id = u->id;
		u->again = 1;
		pthread_mutex_unlock(&e->lock);
		if (now_id == id) {
			fs_record_update(e->fs, id, unmoved_fn, NULL);
		} else {
			/* the change, finding this record done, made the unit a new one */
			pthread_mutex_lock(&e->fs->rec_lock);
			store_delete(e->fs->st, id);
			pthread_mutex_unlock(&e->fs->rec_lock);
		}
		/* the record named the object a moment: a duplicate found then names it too */
		if (!named_elsewhere(e, id, r->key))
			drop_superseded(c, name, r);
		return;
	}
	/* -ENOENT: removed while it finished; the object is up, as after rm in completed/ */
	if (rc && rc != -ENOENT)
		fs_record_update(e->fs, id, move_failed_fn,
				 &(struct move_fail_arg){ name, e->cfg->bucket, r->key, r->status,
							  rc });
	if (rc)
		mgmtfs_err("uploaded 'pending/%s' as '%s' but cannot move it to completed/: %s",
			   name, r->key, mgmtfs_strerror(rc, eb, sizeof(eb)));
	else if (r->status == STORE_DUPLICATE)
		mgmtfs_info("'pending/%s' has the same content as s3://%s/%s: not uploaded again",
			    name, e->cfg->bucket, r->key);
	else
		mgmtfs_info("uploaded 'pending/%s' as s3://%s/%s", name, e->cfg->bucket, r->key);
}

static int final_error(int rc)
{
	switch (rc) {
	case -EACCES:
	case -ENXIO:
	case -EINVAL:
	case -EDQUOT:
	case -EISDIR:
	case -EFBIG:
	case -EPERM:
		return 1;
	default:
		return 0;
	}
}

/*
 * Start the unit again from scratch later: abort its multipart upload if
 * any (the object must never mix old and new bytes), record it queued, and
 * have the worker schedule it once more.
 */
static void requeue(struct engine *e, struct s3_client *c, struct unit *u, struct result *r)
{
	if (r->upload_id[0])
		s3_mpu_abort(c, r->key, r->upload_id);
	r->upload_id[0] = '\0';
	r->error[0] = '\0';
	fs_record_update(e->fs, u->id, fail_fn, &(struct fail_arg){ r, STORE_QUEUED });
	pthread_mutex_lock(&e->lock);
	u->again = 1;
	pthread_mutex_unlock(&e->lock);
}

/* A directory's walk (nftw has no argument for its callback: one per thread). */
static _Thread_local struct {
	int64_t since;
	uint64_t bytes;
	int changed;
	int same_second;	/* something changed in the second @since */
} tree;

static int tree_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)path;
	(void)flag;
	(void)ftw;
	if ((int64_t)st->st_ctim.tv_sec > tree.since)
		tree.changed = 1;
	if ((int64_t)st->st_ctim.tv_sec == tree.since)
		tree.same_second = 1;
	if (S_ISREG(st->st_mode))
		tree.bytes += (uint64_t)st->st_size;
	return tree.changed;
}

/* Does pending/@name at @path hash to @want ("sha256:HEX")?  Reads it whole. */
static int unit_has_checksum(const char *path, const char *name, const char *want)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	char hex[65];
	struct stat st;
	int ok;

	ok = fd >= 0 && fstat(fd, &st) == 0 && unit_sha256(fd, name, &st, NULL, hex) == 0 &&
	     !strncmp(want, "sha256:", 7) && !strcmp(want + 7, hex);
	if (fd >= 0)
		close(fd);
	return ok;
}

/*
 * Is @path, @st (pending/NAME now) the unit @rec uploaded?  Only if no newer
 * record took the name, the size is the same (a directory's files added
 * up), and nothing of it changed after the upload ended (a file made there
 * since, e.g. while unmounted after completed/NAME was removed, is new).
 * The upload's timestamp has whole seconds: a file changed in its last
 * second is compared by its sha256.
 */
static int is_the_uploaded(struct engine *e, const struct store_record *rec, const char *path,
			   const struct stat *st)
{
	uint64_t newest;

	if (store_find_path(e->fs->st, rec->original_path, &newest) || newest != rec->id)
		return 0;
	if (!S_ISDIR(st->st_mode)) {
		if ((uint64_t)st->st_size != rec->original_size ||
		    (int64_t)st->st_ctim.tv_sec > rec->upload_timestamp)
			return 0;
		/* changed in the second the upload ended: only its bytes can tell */
		return (int64_t)st->st_ctim.tv_sec < rec->upload_timestamp ||
		       unit_has_checksum(path, rec->original_path + 8, rec->checksum);
	}
	/* a directory: nothing anywhere inside changed since, and its files add up */
	tree.since = rec->upload_timestamp;
	tree.bytes = 0;
	tree.changed = 0;
	tree.same_second = 0;
	if (nftw(path, tree_cb, 16, FTW_PHYS) || tree.changed || tree.bytes != rec->original_size)
		return 0;
	return !tree.same_second || unit_has_checksum(path, rec->original_path + 8, rec->checksum);
}

/*
 * The unit's upload finished and only its move failed (move_failed_fn), and
 * mgmtfs retry queued it: if the file is still the one uploaded and the
 * object still there, @r is that upload and only the move is left to do.
 */
static int uploaded_before(struct engine *e, struct s3_client *c, const struct store_record *rec,
			   const char *name, struct result *r)
{
	struct s3_object_info info;
	char path[PATH_MAX];
	struct stat st;

	if (!(rec->flags & STORE_F_UNMOVED) || !rec->etag[0] || !rec->s3_object_key[0] ||
	    rec->upload_id[0] ||
	    !rec->upload_timestamp || !rec->checksum[0] ||
	    strcmp(rec->s3_bucket, e->cfg->bucket) ||
	    backing_pending(e, name, path, sizeof(path)) || lstat(path, &st) ||
	    !is_the_uploaded(e, rec, path, &st) || s3_head_object(c, rec->s3_object_key, &info) ||
	    strcmp(info.etag, rec->etag))
		return 0;
	snprintf(r->key, sizeof(r->key), "%s", rec->s3_object_key);
	snprintf(r->etag, sizeof(r->etag), "%s", rec->etag);
	snprintf(r->checksum, sizeof(r->checksum), "%s", rec->checksum);
	r->in = rec->original_size;
	r->out = rec->compressed_size;
	r->head = rec->head;
	if (arc_format_parse(rec->compression_type, &r->fmt) || r->fmt == ARC_AUTO)
		r->fmt = ARC_TAR_GZ;
	r->status = rec->flags & STORE_F_DUPLICATE ? STORE_DUPLICATE : STORE_COMPLETED;
	mgmtfs_info("'pending/%s' was uploaded before as '%s': only moving it", name, r->key);
	return 1;
}

static void run_unit(struct engine *e, struct s3_client *c, struct unit *u)
{
	struct store_record *rec = malloc(sizeof(*rec));
	struct result *r = calloc(1, sizeof(*r));
	struct start_arg sa = { 0 };
	char name[NAME_MAX + 1];
	int rc;

	pthread_mutex_lock(&e->lock);
	snprintf(name, sizeof(name), "%s", u->name);
	pthread_mutex_unlock(&e->lock);
	if (!rec || !r)
		goto out;
	/* opened for writing since the scheduler looked: wait for its last release */
	if (fs_unit_writers(e->fs, name) > 0) {
		pthread_mutex_lock(&e->lock);
		u->again = 1;
		pthread_mutex_unlock(&e->lock);
		goto out;
	}
	rc = fs_record_update(e->fs, u->id, start_fn, &sa);
	if (rc || !sa.ok || store_get(e->fs->st, u->id, rec))
		goto out;
	r->status = STORE_COMPLETED;
	r->interrupted = sa.interrupted;
	if (uploaded_before(e, c, rec, name, r)) {
		finish_ok(e, c, u, name, r);
		goto out;
	}
	mgmtfs_debug("uploading 'pending/%s' (record %llu)", name, (unsigned long long)u->id);
	rc = upload_unit(e, c, u, rec, name, r);
	/*
	 * A write that came after the last check, while the object was being
	 * completed: the object holds the earlier content, which the file no
	 * longer has.  The file is not moved; it is uploaded again (the object
	 * already there is never overwritten, so it goes to a new key).
	 */
	if (rc == 0 && (atomic_load(&u->cancel) || fs_unit_writers(e->fs, name) > 0) && !u->gone &&
	    !engine_stopping(e)) {
		mgmtfs_info("'pending/%s' changed while its upload finished: uploading it again",
			    name);
		r->upload_id[0] = '\0';	/* completed: nothing to abort */
		drop_superseded(c, name, r);
		requeue(e, c, u, r);
		goto out;
	}
	if (rc == 0) {
		finish_ok(e, c, u, name, r);
		goto out;
	}
	if (rc == -ECANCELED) {
		if (engine_stopping(e)) {
			/* unmounting: keep the multipart upload; the next mount resumes it */
			fs_record_update(e->fs, u->id, fail_fn,
					 &(struct fail_arg){ r, STORE_QUEUED });
			goto out;
		}
		/* changed or deleted during the upload */
		requeue(e, c, u, r);
		if (u->gone)
			forget_record(e, name);	/* its upload id is cleared: it can go */
		goto out;
	}
	if (rc == -EEXIST) {
		/* the key was taken just before completing: start again under a new name */
		requeue(e, c, u, r);
		goto out;
	}
	/* failed for good: abort the multipart upload (unless it may be done), say why */
	if (r->upload_id[0] && !r->unsure) {
		s3_mpu_abort(c, r->key, r->upload_id);
		r->upload_id[0] = '\0';
	}
	if (!r->error[0]) {
		char eb[128];

		snprintf(r->error, sizeof(r->error), "upload failed: %s",
			 mgmtfs_strerror(rc, eb, sizeof(eb)));
	}
	mgmtfs_err("upload of 'pending/%s' failed: %s%s", name, r->error,
		   final_error(rc) ? "" : " (retry with: mgmtfs retry)");
	fs_record_update(e->fs, u->id, fail_fn, &(struct fail_arg){ r, STORE_FAILED });
	store_part_clear(e->fs->st, u->id);
out:
	free(rec);
	free(r);
}

static void *worker_main(void *arg)
{
	struct engine *e = arg;
	struct s3_client *c = NULL;

	if (s3_client_new(&e->s3cfg, &c)) {
		mgmtfs_err("cannot make an S3 client for an upload worker");
		return NULL;
	}
	for (;;) {
		struct unit *u;

		pthread_mutex_lock(&e->lock);
		while (!e->ready && !e->stopping)
			pthread_cond_wait(&e->work_cond, &e->lock);
		if (e->stopping) {
			pthread_mutex_unlock(&e->lock);
			break;
		}
		u = e->ready;
		e->ready = u->ready_next;
		if (!e->ready)
			e->ready_tail = &e->ready;
		u->ready_next = NULL;
		u->state = U_RUNNING;
		e->nrunning++;
		e->trimmed = 0;
		atomic_store(&u->cancel, 0);
		atomic_store(&u->done, 0);
		atomic_store(&u->total, 0);
		pthread_mutex_unlock(&e->lock);

		run_unit(e, c, u);

		pthread_mutex_lock(&e->lock);
		if (--e->nrunning == 0)
			e->idle_since = fs_monotonic();
		if (u->again && !u->gone && !e->stopping) {
			u->again = 0;
			u->state = U_WAITING;
			u->due = fs_monotonic() + e->cfg->settle;
			pthread_cond_signal(&e->sched_cond);
		} else {
			unit_remove(e, u);
		}
		pthread_mutex_unlock(&e->lock);
	}
	s3_client_free(c);
	return NULL;
}

/* ---- scheduler, rescan and recovery ------------------------------------- */

struct scan_arg {
	struct engine *e;
	int recover;
};

static int rescan_cb(const struct store_record *rec, void *arg)
{
	struct scan_arg *s = arg;
	struct engine *e = s->e;
	const char *name;
	char path[PATH_MAX];
	struct stat st;

	if (strncmp(rec->original_path, "pending/", 8))
		return 0;
	name = rec->original_path + 8;
	if (backing_pending(e, name, path, sizeof(path)) || lstat(path, &st))
		return 0;	/* handled by recovery: the file is gone */
	pthread_mutex_lock(&e->lock);
	if (!unit_find(e, name))
		unit_schedule(e, name, rec->id, s->recover ? 0 : e->cfg->settle,
			      (int)rec->upload_again);
	pthread_mutex_unlock(&e->lock);
	return 0;
}

static void rescan(struct engine *e, int recover)
{
	struct scan_arg s = { e, recover };

	store_list(e->fs->st, STORE_QUEUED, rescan_cb, &s);
	if (recover)
		store_list(e->fs->st, STORE_UPLOADING, rescan_cb, &s);
}

/* Finish the move of records that were written as completed just before a crash. */
static int recover_move_cb(const struct store_record *rec, void *arg)
{
	struct engine *e = arg;
	char from[PATH_MAX], to[PATH_MAX];
	const char *name, *dest;
	struct stat st;

	if (strncmp(rec->original_path, "pending/", 8) ||
	    strncmp(rec->completed_path, "completed/", 10))
		return 0;
	name = rec->original_path + 8;
	dest = rec->completed_path + 10;
	snprintf(to, sizeof(to), "%s/%s", e->cfg->completed_dir, dest);
	if (backing_pending(e, name, from, sizeof(from)) || lstat(from, &st) ||
	    access(to, F_OK) == 0 || !is_the_uploaded(e, rec, from, &st))
		return 0;
	if (fs_move_to_completed(e->fs, name, dest, NULL) == 0)
		mgmtfs_info("recovered: moved 'pending/%s' to '%s'", name, rec->completed_path);
	return 0;
}

/*
 * Queue the units of pending/ that have no active record: a file whose
 * release a kill -9 cut off (close() does not wait for it, and the queue
 * entry is written at the release), or anything put into the backing
 * directory while no daemon ran.  Each is queued as if just closed.  Runs
 * at mount before any request is served, so nothing is open for writing.
 */
static void queue_unrecorded(struct engine *e)
{
	struct store_record *rec = malloc(sizeof(*rec));
	char dir[PATH_MAX], rel[PATH_MAX], esc[NAME_MAX * 4 + 1], eb[128];
	struct dirent *d;
	DIR *dp = NULL;
	uint64_t id;

	snprintf(dir, sizeof(dir), "%s/pending", e->cfg->local_dir);
	if (rec)
		dp = opendir(dir);
	if (!dp) {
		mgmtfs_err("cannot look for unqueued files in '%s': %s", dir,
			   mgmtfs_strerror(rec ? errno : ENOMEM, eb, sizeof(eb)));
		free(rec);
		return;
	}
	while ((d = readdir(dp))) {
		if (!strcmp(d->d_name, ".") || !strcmp(d->d_name, "..") ||
		    cfg_name_ignored(e->cfg, d->d_name))
			continue;
		pending_rel(d->d_name, rel, sizeof(rel));
		if (!store_find_path(e->fs->st, rel, &id) && !store_get(e->fs->st, id, rec) &&
		    status_active(rec->status))
			continue;	/* queued, uploading or failed: its record says so */
		if (unit_changed(e, d->d_name, 0) == 0)
			mgmtfs_info("recovered: 'pending/%s' had no queue entry: queued",
				    mgmtfs_escape(d->d_name, esc, sizeof(esc)));
	}
	closedir(dp);
	free(rec);
}

/*
 * A unit whose upload finished but whose move failed (move_failed_fn): queued
 * again, so that a worker moves it (uploaded_before: no second upload), or,
 * if it changed since, uploads it again.
 */
static int queued_fn(struct store_record *rec, void *arg)
{
	(void)arg;
	rec->status = STORE_QUEUED;
	return 0;
}

static int recover_unmoved_cb(const struct store_record *rec, void *arg)
{
	struct engine *e = arg;
	const char *name = rec->original_path + 8;
	char from[PATH_MAX];
	struct stat st;

	if (!(rec->flags & STORE_F_UNMOVED) || strncmp(rec->original_path, "pending/", 8) ||
	    backing_pending(e, name, from, sizeof(from)) || lstat(from, &st))
		return 0;
	if (!is_the_uploaded(e, rec, from, &st))
		unit_changed(e, name, 0);	/* changed since (while unmounted) */
	else
		fs_record_update(e->fs, rec->id, queued_fn, NULL);	/* rescan schedules it */
	return 0;
}

static void recover(struct engine *e)
{
	store_list(e->fs->st, STORE_COMPLETED, recover_move_cb, e);
	store_list(e->fs->st, STORE_DUPLICATE, recover_move_cb, e);
	store_list(e->fs->st, STORE_FAILED, recover_unmoved_cb, e);
	rescan(e, 1);
	queue_unrecorded(e);
}

/*
 * Abort multipart uploads a crash left behind that no record owns: a
 * crash between CreateMultipartUpload and writing its id to the record.
 * Only uploads of keys made from the name of one of our own active units
 * are touched, so another user of the bucket is never disturbed.
 */
struct orphan_arg {
	struct store_record **recs;
	size_t n;
};

static int collect_active(const struct store_record *rec, void *arg)
{
	struct orphan_arg *o = arg;
	struct store_record **grown;

	if (strncmp(rec->original_path, "pending/", 8))
		return 0;
	grown = realloc(o->recs, (o->n + 1) * sizeof(*grown));
	if (!grown)
		return -ENOMEM;
	o->recs = grown;
	o->recs[o->n] = malloc(sizeof(**grown));
	if (!o->recs[o->n])
		return -ENOMEM;
	memcpy(o->recs[o->n++], rec, sizeof(*rec));
	return 0;
}

/*
 * Units whose file left pending/ while no daemon ran (removed from the
 * backing directory): their records go, and so do their multipart uploads,
 * so that the records and the filesystem agree.  Each is dropped from @o
 * (its upload is no longer owned).
 */
static void forget_gone(struct engine *e, struct orphan_arg *o, struct s3_client *c)
{
	char path[PATH_MAX];
	struct stat st;

	for (size_t i = 0; i < o->n; i++) {
		struct store_record *rec = o->recs[i];

		if (backing_pending(e, rec->original_path + 8, path, sizeof(path)) ||
		    lstat(path, &st) == 0 || errno != ENOENT)
			continue;
		if (rec->upload_id[0])
			s3_mpu_abort(c, rec->s3_object_key, rec->upload_id);
		if (drop_record(e->fs->st, rec))
			mgmtfs_info("'%s' is gone: its upload s3://%s/%s stays recorded",
				    rec->original_path, rec->s3_bucket, rec->s3_object_key);
		else
			mgmtfs_info("'%s' is gone: its queue entry is dropped", rec->original_path);
		rec->upload_id[0] = '\0';
	}
}

struct orphan_scan {
	struct engine *e;
	struct orphan_arg *o;
	struct s3_client *c;
};

static int orphan_cb(const char *key, const char *upload_id, void *arg)
{
	struct orphan_scan *os = arg;
	const char *prefix = os->e->cfg->prefix;
	size_t plen = strlen(prefix);
	const char *base = key + plen + (plen ? 1 : 0);
	int ours = 0;

	if (plen && (strncmp(key, prefix, plen) || key[plen] != '/'))
		return 0;

	for (size_t i = 0; i < os->o->n; i++) {
		const struct store_record *rec = os->o->recs[i];
		char name[PATH_MAX];
		size_t len;

		utf8_sanitize(rec->original_path + 8, name, sizeof(name));	/* as in its keys */
		len = strlen(name);

		if (!strcmp(rec->upload_id, upload_id))
			return 0;	/* owned: it will be resumed */
		if (!strncmp(base, name, len) && (base[len] == '.' || base[len] == '_' || !base[len]))
			ours = 1;
	}
	if (ours) {
		mgmtfs_info("aborting a multipart upload of '%s' left by a crash", key);
		s3_mpu_abort(os->c, key, upload_id);
	}
	return 0;
}

static void abort_orphans(struct engine *e)
{
	struct orphan_arg o = { 0 };
	struct orphan_scan os = { e, &o, NULL };

	store_list(e->fs->st, STORE_QUEUED, collect_active, &o);
	store_list(e->fs->st, STORE_UPLOADING, collect_active, &o);
	store_list(e->fs->st, STORE_FAILED, collect_active, &o);
	if (o.n && !s3_client_new(&e->s3cfg, &os.c)) {
		forget_gone(e, &o, os.c);
		s3_mpu_list(os.c, e->cfg->prefix, orphan_cb, &os);
		s3_client_free(os.c);
	}
	for (size_t i = 0; i < o.n; i++)
		free(o.recs[i]);
	free(o.recs);
}

/*
 * Two holds: `mgmtfs hold` (meta "hold", kept until `mgmtfs resume`, across
 * mounts) and this mount's -o hold (in memory: the next mount does not
 * inherit it).  The option is shown to the CLI as meta "mount_hold", which
 * `mgmtfs resume` clears to lift it on this mount too.
 */
static void poll_hold(struct engine *e)
{
	char v[8];
	int stored = 0;

	if (e->mount_hold && store_meta_get(e->fs->st, "mount_hold", v, sizeof(v)) == 0 &&
	    v[0] != '1')
		e->mount_hold = 0;	/* mgmtfs resume */
	if (store_meta_get(e->fs->st, "hold", v, sizeof(v)) == 0)
		stored = v[0] == '1';
	atomic_store(&e->fs->held, e->mount_hold || stored);
}

static void *sched_main(void *arg)
{
	struct engine *e = arg;
	double next_scan = fs_monotonic() + RESCAN_SECONDS;

	load_gone(e);
	abort_gone(e);
	abort_orphans(e);
	for (;;) {
		char due_names[64][NAME_MAX + 1];
		int ndue = 0;
		double now = fs_monotonic(), wake = next_scan;
		struct unit *u;
		struct timespec ts;

		if (now >= next_scan) {
			abort_gone(e);
			store_sync(e->fs->st);
			poll_hold(e);
			rescan(e, 0);
			buf_trim(e, now);
			next_scan = now + RESCAN_SECONDS;
		}
		pthread_mutex_lock(&e->lock);
		if (e->stopping) {
			pthread_mutex_unlock(&e->lock);
			break;
		}
		for (u = e->units; u; u = u->next) {
			if (u->state != U_WAITING)
				continue;
			if (atomic_load(&e->fs->held))
				continue;	/* woken twice a second to see the hold lifted */
			if (u->due <= now && ndue < 64)
				snprintf(due_names[ndue++], NAME_MAX + 1, "%s", u->name);
			else if (u->due < wake)
				wake = u->due;
		}
		pthread_mutex_unlock(&e->lock);

		/* writers are counted under fs->lock, which comes before e->lock */
		for (int i = 0; i < ndue; i++) {
			int busy = fs_unit_writers(e->fs, due_names[i]) > 0;

			pthread_mutex_lock(&e->lock);
			u = unit_find(e, due_names[i]);
			if (u && u->state == U_WAITING) {
				if (busy) {
					u->due = fs_monotonic() + 3600; /* the last release requeues */
				} else {
					u->state = U_READY;
					u->ready_next = NULL;
					*e->ready_tail = u;
					e->ready_tail = &u->ready_next;
					pthread_cond_signal(&e->work_cond);
				}
			}
			pthread_mutex_unlock(&e->lock);
		}
		if (ndue)
			continue;
		pthread_mutex_lock(&e->lock);
		if (!e->stopping) {
			double d = wake - fs_monotonic();

			if (atomic_load(&e->fs->held) && d > 0.5)
				d = 0.5;
			if (d > 0) {
				clock_gettime(CLOCK_REALTIME, &ts);
				ts.tv_sec += (time_t)d;
				ts.tv_nsec += (long)((d - floor(d)) * 1e9);
				if (ts.tv_nsec >= 1000000000L) {
					ts.tv_sec++;
					ts.tv_nsec -= 1000000000L;
				}
				pthread_cond_timedwait(&e->sched_cond, &e->lock, &ts);
			}
		}
		pthread_mutex_unlock(&e->lock);
	}
	return NULL;
}

/* ---- lifecycle ------------------------------------------------------------ */

/*
 * Multipart uploads at once: as many as buffer_memory holds, each with its
 * parts_in_flight + 1 part buffers; one at least, uploads at most.  Bytes
 * on the wire, not connections, are what keep the server busy: two uploads
 * of 4 x 16 MiB parts have what four of 4 x 8 MiB had, in the same memory.
 */
int engine_multipart_slots(const struct mgmtfs_config *cfg)
{
	size_t one = (size_t)(cfg->parts_in_flight + 1) * cfg->part_size;
	size_t n = one ? cfg->buffer_memory / one : 1;

	if (n < 1)
		n = 1;
	return n < (size_t)cfg->uploads ? (int)n : cfg->uploads;
}

int engine_new(struct fs *fs, struct engine **out)
{
	struct engine *e = calloc(1, sizeof(*e));
	const struct mgmtfs_config *cfg = fs->cfg;
	int rc;

	if (!e)
		return -ENOMEM;
	e->fs = fs;
	e->cfg = cfg;
	cfg_s3_config(cfg, &e->s3cfg);
	pthread_mutex_init(&e->lock, NULL);
	pthread_cond_init(&e->sched_cond, NULL);
	pthread_cond_init(&e->work_cond, NULL);
	pthread_cond_init(&e->part_cond, NULL);
	pthread_cond_init(&e->big_cond, NULL);
	pthread_cond_init(&e->warm_cond, NULL);
	pthread_mutex_init(&e->hint_lock, NULL);
	e->big_free = engine_multipart_slots(cfg);
	e->nworkers = cfg->uploads * 4 > 32 ? 32 : cfg->uploads * 4;
	rc = pool_init(&e->pool, cfg->part_size, e->big_free * (cfg->parts_in_flight + 1));
	if (pool_init(&e->small, SMALL_BUF, e->nworkers))
		rc = -ENOMEM;
	e->hint = calloc((1u << HINT_BITS) / 64, sizeof(*e->hint));
	if (rc || !e->hint) {
		pool_free(&e->pool);
		pool_free(&e->small);
		free(e->hint);
		free(e);
		return -ENOMEM;
	}
	e->ready_tail = &e->ready;
	e->parts_tail = &e->parts;
	e->idle_since = fs_monotonic();
	atomic_store(&fs->held, cfg->hold);
	*out = e;
	return 0;
}

int engine_start(struct engine *e)
{
	int rc = 0;

	e->mount_hold = e->cfg->hold;
	store_meta_put(e->fs->st, "mount_hold", e->mount_hold ? "1" : "0");
	poll_hold(e);
	if (e->mount_hold)
		mgmtfs_info("uploads are held (-o hold, this mount only): nothing starts until "
			    "mgmtfs resume or a mount without hold");
	else if (atomic_load(&e->fs->held))
		mgmtfs_info("uploads are held (mgmtfs hold): nothing starts until mgmtfs resume");
	recover(e);
	e->nsenders = engine_multipart_slots(e->cfg) * e->cfg->parts_in_flight;
	e->workers = calloc((size_t)e->nworkers, sizeof(*e->workers));
	e->senders = calloc((size_t)e->nsenders, sizeof(*e->senders));
	if (!e->workers || !e->senders)
		return -ENOMEM;
	for (int i = 0; i < e->nworkers && !rc; i++)
		rc = -pthread_create(&e->workers[i], NULL, worker_main, e);
	for (int i = 0; i < e->nsenders && !rc; i++)
		rc = -pthread_create(&e->senders[i], NULL, sender_main, e);
	if (!rc)
		rc = -pthread_create(&e->sched, NULL, sched_main, e);
	e->started = rc == 0;
	warm_start(e);
	return rc;
}

void engine_stop(struct engine *e)
{
	struct unit *u;

	if (!e || !e->started)
		return;
	pthread_mutex_lock(&e->lock);
	e->stopping = 1;
	for (u = e->units; u; u = u->next)
		if (u->state == U_RUNNING)
			atomic_fetch_or(&u->cancel, S3_CANCEL_NOW);
	pthread_cond_broadcast(&e->sched_cond);
	pthread_cond_broadcast(&e->work_cond);
	pthread_mutex_unlock(&e->lock);
	if (e->warm_joinable)
		pthread_join(e->warm_thread, NULL);
	e->warm_joinable = 0;
	pthread_join(e->sched, NULL);
	for (int i = 0; i < e->nworkers; i++)
		pthread_join(e->workers[i], NULL);
	/* the workers waited for their parts: the senders' queue is empty now */
	pthread_mutex_lock(&e->lock);
	pthread_cond_broadcast(&e->part_cond);
	pthread_mutex_unlock(&e->lock);
	for (int i = 0; i < e->nsenders; i++)
		pthread_join(e->senders[i], NULL);
	if (e->mount_hold)
		store_meta_put(e->fs->st, "mount_hold", "0");	/* unmounted: no longer held */
	e->started = 0;
}

void engine_free(struct engine *e)
{
	if (!e)
		return;
	engine_stop(e);
	mgmtfs_debug("part buffers of %zu bytes: %d made, the pool keeps %d", e->pool.size,
		     atomic_load(&e->pool_made), e->pool.max);
	while (e->units)
		unit_remove(e, e->units);
	while (e->gone) {	/* kept in the store: the next mount aborts them */
		struct gone_mpu *g = e->gone;

		e->gone = g->next;
		free(g);
	}
	free(e->workers);
	free(e->senders);
	pthread_mutex_destroy(&e->lock);
	pthread_cond_destroy(&e->sched_cond);
	pthread_cond_destroy(&e->work_cond);
	pthread_cond_destroy(&e->part_cond);
	pthread_cond_destroy(&e->big_cond);
	pthread_cond_destroy(&e->warm_cond);
	pthread_mutex_destroy(&e->hint_lock);
	pool_free(&e->pool);
	pool_free(&e->small);
	free(e->hint);
	free(e);
}
