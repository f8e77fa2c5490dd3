/*
 * fs_i.h - what the files of fs/ share: the filesystem state (struct fs),
 * the inode table, and the upload engine's interface.
 *
 * Lock order: fs->change_lock before fs->lock (inode table) before
 * engine->lock; fs->rec_lock (read-modify-write of records) is taken alone
 * or before engine->lock.
 * No lock is ever held across a network call or a kernel notification.
 */
#ifndef MGMTFS_FS_I_H
#define MGMTFS_FS_I_H

#define FUSE_USE_VERSION FUSE_MAKE_VERSION(3, 14)

#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "fs/config.h"
#include "store/store.h"

enum fs_area {
	AREA_ROOT = 0,
	AREA_PENDING,
	AREA_COMPLETED,
};

/* One entry the kernel knows (it holds nlookup references). */
struct node {
	fuse_ino_t ino;
	struct node *parent;	/* NULL for the three roots */
	char *name;		/* owned; "" for the roots */
	uint64_t nlookup;	/* protected by fs->lock */
	int writers;		/* handles open for writing, protected by fs->lock */
	int pinned;		/* roots are never forgotten */
	int backing_id;		/* passthrough backing id, protected by fs->lock */
	int backing_refs;	/* open handles using backing_id, protected by fs->lock */
	struct node *ino_next;	/* hash chains, protected by fs->lock */
	struct node *name_next;
};

struct engine;
struct fh;

struct fs {
	const struct mgmtfs_config *cfg;	/* borrowed, immutable */
	struct store *st;
	struct engine *eng;
	struct fuse_session *se;
	pthread_mutex_t lock;	/* the inode table */
	pthread_mutex_t rec_lock; /* read-modify-write of records */
	pthread_rwlock_t change_lock;	/* changes to units (shared) vs their move (exclusive) */
	struct node *root, *pending, *completed;
	struct fh *open_writers;	/* handles counted in a unit, protected by lock */
	struct node **ino_hash;
	struct node **name_hash;
	size_t hash_size;
	fuse_ino_t next_ino;
	atomic_int held;	/* hold: no upload starts */
	atomic_int pt_state;	/* enum fs_pt_state */
};

enum fs_pt_state {
	FS_PT_OFF = 0,
	FS_PT_WAIT_INIT,	/* hook installed, INIT reply not yet sent */
	FS_PT_ON,
};

/* ops.c */
extern const struct fuse_lowlevel_ops fs_ops;
int fs_init_state(struct fs *fs, const struct mgmtfs_config *cfg, struct store *st);
void fs_release_state(struct fs *fs);

/*
 * Move the unit pending/@name to completed/@dest on disk (no replace) and
 * tell the kernel.  Called by upload workers.  Returns 0, -EEXIST when
 * @dest is taken, -ENOENT when the unit is gone, -EBUSY when something in
 * it is open for writing or *@changed (may be NULL) rose (a change through
 * the mount since the upload), or -errno.
 */
int fs_move_to_completed(struct fs *fs, const char *name, const char *dest,
			 const atomic_int *changed);

/* Number of handles open for writing on anything now inside unit @name. */
int fs_unit_writers(struct fs *fs, const char *name);

/* passthrough.c: FUSE passthrough (see its DESIGN note) */
void fs_pt_install(struct fs *fs);		/* after fuse_session_mount() */
int fs_pt_open(struct fs *fs, int fd);		/* backing id > 0, or 0: not used */
void fs_pt_close(struct fs *fs, int id);
void fs_pt_next_reply(int id);			/* the open reply this thread sends next */

/* engine.c */
int engine_new(struct fs *fs, struct engine **out);
/* Multipart uploads that may run at once (buffer_memory, see engine.c). */
int engine_multipart_slots(const struct mgmtfs_config *cfg);
int engine_start(struct engine *e);
void engine_stop(struct engine *e);	/* joins every thread; in-flight work stays queued */
void engine_free(struct engine *e);

/*
 * A unit (top-level entry of pending/) was closed after writing, renamed
 * in, truncated or retried: write its queue entry to the store now (before
 * returning) and start it after settle.  Never blocks on the network.
 * Returns 0 or -errno.
 */
int engine_unit_changed(struct engine *e, const char *name);

/*
 * The unit is being modified (write, truncate, open for writing, rename,
 * unlink): cancel its upload if one runs.  @gone: the unit left pending/
 * (unlinked or renamed away): forget its queue entry.
 */
void engine_unit_touched(struct engine *e, const char *name, int gone);

/*
 * A write into the unit failed (@err, e.g. ENOSPC): the file is not whole,
 * so it is not uploaded; its record says failed, with what to do.
 */
void engine_unit_write_failed(struct engine *e, const char *name, int err);

/* As engine_unit_changed, for a unit moved back from completed/: it is
 * uploaded again even though the bucket has the same content. */
int engine_unit_again(struct engine *e, const char *name);

/* Bytes done / total of the unit's upload in flight; 0 or -ENOENT. */
int engine_progress(struct engine *e, uint64_t id, uint64_t *done, uint64_t *total);

/* Read-modify-write a record under fs->rec_lock. @fn returns 0 to write. */
int fs_record_update(struct fs *fs, uint64_t id, int (*fn)(struct store_record *rec, void *arg),
		     void *arg);

/* cli.c */
int cli_main(int argc, char **argv);
int cli_is_command(const char *arg);

/* rebuild.c: mgmtfs rebuild with @cfg's bucket, prefix and keys; the exit status. */
int rebuild_run(struct store *st, const struct mgmtfs_config *cfg, int json);

/* util */
/* "a.txt", 2 -> "a_2.txt" (the mgmt CLI's convention for a taken name); 0 -> "a.txt". */
void fs_numbered_name(const char *name, unsigned i, char *buf, size_t len);
int64_t fs_now(void);
double fs_monotonic(void);

#endif
