/*
 * store.h - the UploadRecord database (LMDB).
 *
 * Layout inside one LMDB environment in directory LOCAL_DIR/.mgmt/ (one
 * unnamed DBI or a few named ones, the implementation's choice):
 *   r/<id as 16 hex digits>/<field>  -> field value as plain text (one
 *                                       key/value entry per field, as the
 *                                       SPEC requires; ids in hex so that a
 *                                       cursor walks records in id order)
 *   p/<path>                         -> id   (path index: original_path and
 *                                       completed_path of the newest record
 *                                       that took that path)
 *   h/<sha256 hex>                   -> id   (checksum index, newest record)
 *   s/<status>/<id 16 hex>           -> ""   (status index: queue = s/queued/)
 *   m/<id 16 hex>/<part 8 hex>       -> "<etag> <size>" (multipart parts done)
 *   g/<upload id>                    -> "<bucket>/<object key>" (a multipart
 *                                       upload of a removed unit, to abort)
 *   meta/next_id                     -> next record id (decimal)
 *
 * Every store_* function runs its own short transaction; all are
 * thread-safe and may be called from several processes at once (the
 * daemon and the CLI).  A full map (MDB_MAP_FULL) is handled inside by
 * growing the map and retrying, never by failing the caller.
 */
#ifndef MGMTFS_STORE_H
#define MGMTFS_STORE_H

#include <stddef.h>
#include <stdint.h>

struct store;

enum store_status {
	STORE_QUEUED = 0,
	STORE_UPLOADING,
	STORE_COMPLETED,
	STORE_FAILED,
	STORE_DUPLICATE,
	STORE_IGNORED,
	STORE_STATUS_COUNT
};

#define STORE_PATH_MAX 4096
#define STORE_KEY_MAX  1100
#define STORE_ETAG_MAX 128

/* One UploadRecord.  Every string is NUL-terminated; "" means unset. */
struct store_record {
	uint64_t id;			/* 0 = not stored yet */
	enum store_status status;
	char original_path[STORE_PATH_MAX];  /* relative to the mount: "pending/a.mp4" */
	char completed_path[STORE_PATH_MAX]; /* "completed/a.mp4", "" until moved */
	int64_t started_at;		/* unix seconds, 0 if never started */
	int64_t upload_timestamp;	/* unix seconds the upload finished, 0 if not */
	char compression_type[16];	/* "tar.gz", "gzip", "tar", "none" (what was done) */
	char s3_bucket[256];
	char s3_object_key[STORE_KEY_MAX];
	char etag[STORE_ETAG_MAX];	/* as S3 returned it, without quotes */
	uint64_t original_size;
	uint64_t compressed_size;
	char checksum[80];		/* "sha256:<64 hex>" of the original content */
	uint32_t attempts;
	char error[1024];		/* words a user can act on, "" if none */
	uint64_t progress_done;		/* bytes of the original read so far */
	uint64_t progress_total;
	/* internal, for resuming (not shown as xattrs) */
	char upload_id[512];		/* multipart upload in flight, "" if none */
	uint64_t generation;		/* bumped each time the unit is queued again */
	uint32_t flags;			/* STORE_F_* */
	uint32_t upload_again;		/* 1: moved back from completed/, uploaded even if
					 * the bucket has the content (absent in older
					 * records: 0) */
	uint64_t head;			/* a file sent in parts: the first 8 bytes of the
					 * sha256 of its first 64 KiB, for the duplicates
					 * hint; 0 if not known (absent in older records) */
};

/* The local file is incomplete (a write into it failed): only writing it again requeues it. */
#define STORE_F_WRITE_FAILED 0x1u
/* Uploaded (or a duplicate: STORE_F_DUPLICATE), but the move to completed/ failed. */
#define STORE_F_UNMOVED	     0x2u
#define STORE_F_DUPLICATE    0x4u

/* Names and values of the public fields, in the SPEC's order. */
extern const char *const store_field_names[];	/* NULL-terminated */

const char *store_status_name(enum store_status st);
/* Returns 0 and sets *out, or -EINVAL for an unknown name. */
int store_status_parse(const char *name, enum store_status *out);

/*
 * Open (creating if needed, mode 0700) the database in directory @dir.
 * @readonly: open for reading only (the CLI's list/show).
 * Returns 0 or a negative errno (-ENOENT: no database and @readonly).
 */
int store_open(const char *dir, int readonly, struct store **out);
void store_close(struct store *st);	/* NULL is a no-op */

/*
 * Lazy sync (@lazy = 1): commits no longer wait for fsync; the caller
 * calls store_sync() periodically (the daemon: every second).  A killed
 * process loses nothing (the data is in the page cache); a power cut may
 * lose the last second.  Returns 0 or -errno.
 */
int store_set_lazy_sync(struct store *st, int lazy);
/* Also frees the reader slots of processes killed inside a read txn. */
int store_sync(struct store *st);

/*
 * Write every field of @rec and update the indexes, in one transaction.
 * @rec->id == 0 allocates a new id and sets @rec->id.  The path index
 * entry of a path that changed is moved (the old one removed only if it
 * still names this record).  Returns 0 or a negative errno.
 */
int store_put(struct store *st, struct store_record *rec);

/* Returns 0, -ENOENT if there is no record @id, or another negative errno. */
int store_get(struct store *st, uint64_t id, struct store_record *out);

/* Id of the newest record that took @path ("pending/x", "completed/x"). 0 or -ENOENT. */
int store_find_path(struct store *st, const char *path, uint64_t *id_out);

/* Id of the newest record with this checksum ("sha256:<hex>"). 0 or -ENOENT. */
int store_find_checksum(struct store *st, const char *checksum, uint64_t *id_out);

/*
 * Call @cb for each record, newest (highest id) first; @status < 0 means
 * all, else only that status (through the status index).  @cb returns 0 to
 * go on, non-zero to stop (that value is returned).  The record passed is
 * valid only during the call.  Returns 0, the callback's value, or -errno.
 */
int store_list(struct store *st, int status,
	       int (*cb)(const struct store_record *rec, void *arg), void *arg);

/* Remove a record, its fields, its parts and its index entries. */
int store_delete(struct store *st, uint64_t id);

/* Multipart progress of record @id: remember part @partno (1-based) as done. */
int store_part_put(struct store *st, uint64_t id, uint32_t partno, const char *etag,
		   uint64_t size);
/* Parts done, in part order; *parts_out is malloc'ed (NULL if none), caller frees. */
struct store_part {
	uint32_t partno;
	uint64_t size;
	char etag[STORE_ETAG_MAX];
};
int store_part_list(struct store *st, uint64_t id, struct store_part **parts_out, size_t *n_out);
int store_part_clear(struct store *st, uint64_t id);

/*
 * Small named settings shared by the daemon and the CLI (the CLI's
 * "mgmtfs hold" sets meta "hold" = "1"; the daemon polls it, and shows its
 * own -o hold as "mount_hold").  @name is short ASCII.  store_meta_get
 * copies the value into @buf (NUL-terminated, truncated to @len) and
 * returns 0, or -ENOENT when unset.
 */
int store_meta_put(struct store *st, const char *name, const char *value);
int store_meta_get(struct store *st, const char *name, char *buf, size_t len);

/*
 * Multipart uploads to abort: their unit left pending/, so no record owns
 * them any more.  Kept until the abort went through, so that one a crash or
 * an unreachable server left is aborted by a later mount.  store_gone_put
 * fails with -EINVAL for an upload id too long for a key.  store_gone_list
 * calls @fn for each until it returns nonzero (then returns that).
 */
typedef int (*store_gone_fn)(const char *upload_id, const char *bucket, const char *key,
			     void *arg);
int store_gone_put(struct store *st, const char *upload_id, const char *bucket,
		   const char *key);
int store_gone_del(struct store *st, const char *upload_id);
int store_gone_list(struct store *st, store_gone_fn fn, void *arg);

/*
 * The xattr view: write field @field (a name from store_field_names, e.g.
 * "status", "upload_timestamp" as ISO 8601 UTC "2026-11-24T06:10:00Z",
 * "progress" as "DONE/TOTAL") of @rec into @buf (no NUL added).  Returns
 * the value's length (which may exceed @len: then nothing useful was
 * written, as for snprintf), -ENODATA for an unknown field or a field that
 * is unset for this record (empty string, 0 timestamp), never other errors.
 */
int store_field_format(const struct store_record *rec, const char *field, char *buf, size_t len);

/* Format unix seconds as ISO 8601 UTC into @buf (at least 21 bytes). */
void store_format_time(int64_t t, char *buf, size_t len);

#endif
