/*
 * ops.c - the FUSE low-level operations and the inode table.
 *
 * DESIGN
 * The mount's root is virtual and holds exactly two directories: pending/
 * (backed by LOCAL_DIR/pending) and completed/ (backed by completed_dir).
 * Everything below them passes through to the backing files, addressed by
 * absolute paths built from the inode table: each node the kernel knows
 * has a parent and a name, like libfuse's high-level node table, so that
 * the daemon's own moves (pending/NAME -> completed/NAME_1) only relink a
 * node and tell the kernel (notify_inval_entry), and open handles live on.
 *
 * A top-level entry of pending/ is an upload unit.  Its node counts the
 * handles open for writing anywhere inside it (unit_writers); when the
 * last one is released, or it is renamed in or truncated, the engine is
 * told (engine_unit_changed) and writes the queue entry to LMDB before the
 * reply.  The first write, a truncate, an open for writing, a rename or an
 * unlink of a unit cancels its upload in flight (engine_unit_touched).
 *
 * FUSE threads never wait for the network.  Handlers reply exactly once on
 * every path: each one ends in a single reply at its "out" label.
 */
#include "fs/fs_i.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "common/log.h"

#define TIMEOUT	     1.0
/*
 * st_blksize shown without passthrough: cp, tar and friends size their
 * buffers by it, and each write is a round trip to this daemon, so 1 MiB
 * writes (max_write) make a copy into pending/ run near disk speed instead
 * of 128 KiB at a time.  See show_blksize() for passthrough.
 */
#define IO_BLKSIZE   (1 << 20)
/*
 * Largest single write into a backing file.  ext4 caches a write in
 * page-cache folios of its size, and large ones were slow to fill on this
 * project's VMs (`dd bs=1M` to ext4 ran at a fifth of the speed of
 * bs=128K): 1 GiB into pending/ without passthrough (1 MiB FUSE writes)
 * took 2.0-2.8 s written whole, 0.9-2.1 s in these pieces.
 */
#define WRITE_PIECE  (128u << 10)
#define MGMT_XATTR   "user.mgmt."
#define MGMT_XLEN    (sizeof(MGMT_XATTR) - 1)

struct fh {
	int fd;
	int writer;		/* open for writing in pending/: on fs->open_writers */
	fuse_ino_t ino;		/* a writer's inode */
	struct node *unit;	/* the unit a writer is counted in, protected by fs->lock */
	struct fh *wnext, **wpprev;	/* fs->open_writers, protected by fs->lock */
	int wrote;		/* a write happened: the unit was told once */
	int write_error;	/* a write failed (ENOSPC...): the file is not whole */
	int backing_id;		/* passthrough: the kernel writes to fd itself */
};

struct dh {
	DIR *dp;
	off_t offset;
	struct dirent *entry;
};

/* ---- inode table ---------------------------------------------------- */

struct fnode {
	struct node n;
	uint64_t children;	/* nodes whose parent is this one */
	/*
	 * For top-level units: the writers whose fh->unit is this node, that is
	 * the handles open for writing on entries inside it.  A node with
	 * writers counted is never freed, so fh->unit stays valid until release.
	 */
	int unit_writers;
};

static struct fnode *F(struct node *n)
{
	return (struct fnode *)n;
}

static size_t hash_ino(const struct fs *fs, fuse_ino_t ino)
{
	return (size_t)(ino * 0x9E3779B97F4A7C15ull) & (fs->hash_size - 1);
}

#define FNV1A_BASIS 14695981039346656037ull

/* 64-bit FNV-1a of @s, from @h. */
static uint64_t fnv1a(uint64_t h, const char *s)
{
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	return h;
}

static size_t hash_name(const struct fs *fs, const struct node *parent, const char *name)
{
	return (size_t)fnv1a(FNV1A_BASIS ^ parent->ino, name) & (fs->hash_size - 1);
}

static struct node *ino_get(struct fs *fs, fuse_ino_t ino)
{
	struct node *n;

	for (n = fs->ino_hash[hash_ino(fs, ino)]; n; n = n->ino_next)
		if (n->ino == ino)
			return n;
	return NULL;
}

static struct node *name_get(struct fs *fs, struct node *parent, const char *name)
{
	struct node *n;

	for (n = fs->name_hash[hash_name(fs, parent, name)]; n; n = n->name_next)
		if (n->parent == parent && !strcmp(n->name, name))
			return n;
	return NULL;
}

static void name_unhash(struct fs *fs, struct node *n)
{
	struct node **pp;

	if (!n->parent)
		return;
	for (pp = &fs->name_hash[hash_name(fs, n->parent, n->name)]; *pp; pp = &(*pp)->name_next) {
		if (*pp == n) {
			*pp = n->name_next;
			break;
		}
	}
	n->name_next = NULL;
}

static void name_hash_in(struct fs *fs, struct node *n)
{
	size_t h = hash_name(fs, n->parent, n->name);

	n->name_next = fs->name_hash[h];
	fs->name_hash[h] = n;
}

static void node_maybe_free(struct fs *fs, struct node *n);

/* Detach @n from its parent (the name hash and the parent's child count). */
static void node_detach(struct fs *fs, struct node *n)
{
	struct node *parent = n->parent;

	name_unhash(fs, n);
	n->parent = NULL;
	if (parent) {
		F(parent)->children--;
		node_maybe_free(fs, parent);
	}
}

static void node_maybe_free(struct fs *fs, struct node *n)
{
	struct node **pp;

	if (n->pinned || n->nlookup || F(n)->children || F(n)->unit_writers)
		return;
	node_detach(fs, n);
	for (pp = &fs->ino_hash[hash_ino(fs, n->ino)]; *pp; pp = &(*pp)->ino_next) {
		if (*pp == n) {
			*pp = n->ino_next;
			break;
		}
	}
	free(n->name);
	free(n);
}

static int node_attach(struct fs *fs, struct node *n, struct node *parent, const char *name)
{
	char *copy = strdup(name);

	if (!copy)
		return -ENOMEM;
	free(n->name);
	n->name = copy;
	n->parent = parent;
	F(parent)->children++;
	name_hash_in(fs, n);
	return 0;
}

static struct node *node_new(struct fs *fs, struct node *parent, const char *name)
{
	struct fnode *fn = calloc(1, sizeof(*fn));
	struct node *n = &fn->n;
	size_t h;

	if (!fn)
		return NULL;
	n->ino = fs->next_ino++;
	if (parent && node_attach(fs, n, parent, name)) {
		free(fn);
		return NULL;
	}
	if (!parent && !(n->name = strdup(name))) {
		free(fn);
		return NULL;
	}
	h = hash_ino(fs, n->ino);
	n->ino_next = fs->ino_hash[h];
	fs->ino_hash[h] = n;
	return n;
}

/* Area of @n: found by walking up to one of the roots.  Caller holds fs->lock. */
static enum fs_area node_area(struct fs *fs, const struct node *n)
{
	for (; n; n = n->parent) {
		if (n == fs->pending)
			return AREA_PENDING;
		if (n == fs->completed)
			return AREA_COMPLETED;
	}
	return AREA_ROOT;
}

/* The top-level unit node above @n (or @n itself), NULL outside pending/. */
static struct node *node_unit(struct fs *fs, struct node *n)
{
	for (; n && n->parent; n = n->parent) {
		if (n->parent == fs->pending)
			return n;
	}
	return NULL;
}

/*
 * Absolute backing path of @n (plus "/@name" when @name is given) into
 * @buf.  Caller holds fs->lock.  Returns 0, -ENOENT for the virtual root,
 * -ENAMETOOLONG.
 */
static int node_path_locked(struct fs *fs, struct node *n, const char *name, char *buf,
			    size_t len)
{
	const struct node *chain[PATH_MAX / 2];
	size_t depth = 0, off;
	const char *base;
	int w;

	for (; n && n != fs->pending && n != fs->completed; n = n->parent) {
		if (n == fs->root || depth == sizeof(chain) / sizeof(chain[0]))
			return n == fs->root ? -ENOENT : -ENAMETOOLONG;
		chain[depth++] = n;
	}
	if (!n)
		return -ENOENT;	/* detached: unlinked behind our back */
	base = n == fs->pending ? fs->cfg->local_dir : fs->cfg->completed_dir;
	w = snprintf(buf, len, n == fs->pending ? "%s/pending" : "%s", base);
	if (w < 0 || (size_t)w >= len)
		return -ENAMETOOLONG;
	off = (size_t)w;
	while (depth--) {
		w = snprintf(buf + off, len - off, "/%s", chain[depth]->name);
		if (w < 0 || (size_t)w >= len - off)
			return -ENAMETOOLONG;
		off += (size_t)w;
	}
	if (name) {
		w = snprintf(buf + off, len - off, "/%s", name);
		if (w < 0 || (size_t)w >= len - off)
			return -ENAMETOOLONG;
	}
	return 0;
}

/*
 * Resolve @ino to its backing path (and optionally area and unit name).
 * Returns 0, -ENOENT (unknown inode or the virtual root) or -errno.
 */
static int ino_path(struct fs *fs, fuse_ino_t ino, const char *name, char *buf, size_t len,
		    enum fs_area *area, char *unit, size_t unitlen)
{
	struct node *n, *u;
	int rc;

	pthread_mutex_lock(&fs->lock);
	n = ino_get(fs, ino);
	if (!n) {
		rc = -ENOENT;
		goto out;
	}
	if (area)
		*area = node_area(fs, n);
	if (unit) {
		u = node_unit(fs, n);
		if (!u && name && n == fs->pending)
			snprintf(unit, unitlen, "%s", name);
		else
			snprintf(unit, unitlen, "%s", u ? u->name : "");
	}
	rc = node_path_locked(fs, n, name, buf, len);
out:
	pthread_mutex_unlock(&fs->lock);
	return rc;
}

/* ---- helpers -------------------------------------------------------- */

static struct fs *FS(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static struct fh *FH(struct fuse_file_info *fi)
{
	return (struct fh *)(uintptr_t)fi->fh;
}

static void fill_root_attr(struct fs *fs, fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = S_IFDIR | 0755;
	st->st_nlink = 4;
	st->st_mtime = st->st_atime = st->st_ctime = time(NULL);
	(void)fs;
}

/*
 * The st_blksize to show for @st, the backing entry's own stat.  With
 * passthrough the kernel writes to the backing file itself, so the disk's
 * own st_blksize stays: a copy into pending/ then writes in the pieces it
 * would write to local_dir (cp: 128 KiB for ext4).  Larger writes are
 * slower there (see WRITE_PIECE): with 1 MiB, `cp` of 1 GiB into pending/
 * took 0.75 s, against 0.33.
 */
static void show_blksize(struct fs *fs, struct stat *st)
{
	if (atomic_load(&fs->pt_state) != FS_PT_ON)
		st->st_blksize = IO_BLKSIZE;
}

static int do_lookup(struct fs *fs, fuse_ino_t parent, const char *name,
		     struct fuse_entry_param *e)
{
	char path[PATH_MAX];
	struct node *p, *n;
	int rc;

	memset(e, 0, sizeof(*e));
	e->attr_timeout = TIMEOUT;
	e->entry_timeout = TIMEOUT;
	if (parent == FUSE_ROOT_ID) {
		if (strcmp(name, "pending") && strcmp(name, "completed"))
			return -ENOENT;
		pthread_mutex_lock(&fs->lock);
		n = name[0] == 'p' ? fs->pending : fs->completed;
		n->nlookup++;
		rc = node_path_locked(fs, n, NULL, path, sizeof(path));
		pthread_mutex_unlock(&fs->lock);
		if (rc == 0 && lstat(path, &e->attr))
			rc = -errno;
		if (rc) {
			pthread_mutex_lock(&fs->lock);
			n->nlookup--;
			pthread_mutex_unlock(&fs->lock);
			return rc;
		}
		e->ino = n->ino;
		e->attr.st_ino = n->ino;
		show_blksize(fs, &e->attr);
		return 0;
	}
	pthread_mutex_lock(&fs->lock);
	p = ino_get(fs, parent);
	rc = p ? node_path_locked(fs, p, name, path, sizeof(path)) : -ENOENT;
	pthread_mutex_unlock(&fs->lock);
	if (rc)
		return rc;
	if (lstat(path, &e->attr))
		return -errno;
	pthread_mutex_lock(&fs->lock);
	p = ino_get(fs, parent);
	n = p ? name_get(fs, p, name) : NULL;
	if (!n && p)
		n = node_new(fs, p, name);
	if (n)
		n->nlookup++;
	pthread_mutex_unlock(&fs->lock);
	if (!n)
		return p ? -ENOMEM : -ENOENT;
	e->ino = n->ino;
	e->attr.st_ino = n->ino;
	show_blksize(fs, &e->attr);
	return 0;
}

static void reply_entry_or_err(fuse_req_t req, int rc, const struct fuse_entry_param *e)
{
	if (rc)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_entry(req, e);
}

/* Give a new entry to the process that made it, as a local filesystem does. */
static void chown_to_caller(fuse_req_t req, const char *path)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);

	if (lchown(path, ctx->uid, ctx->gid))
		mgmtfs_debug("chown of a new entry failed: %m");
}

/* Where may an entry be created in @parent?  0, or -EPERM/-EROFS. */
static int may_create(struct fs *fs, fuse_ino_t parent, enum fs_area *area_out)
{
	struct node *p;
	enum fs_area area;

	if (parent == FUSE_ROOT_ID)
		return -EPERM;
	pthread_mutex_lock(&fs->lock);
	p = ino_get(fs, parent);
	area = p ? node_area(fs, p) : AREA_ROOT;
	pthread_mutex_unlock(&fs->lock);
	if (!p)
		return -ENOENT;
	if (area_out)
		*area_out = area;
	return area == AREA_COMPLETED ? -EROFS : 0;
}

/*
 * Writers are counted in the unit their entry is in, and each handle keeps
 * the unit it is counted in (fh->unit), so that its release takes the count
 * back from exactly there, wherever the entry went meanwhile.  A rename or
 * an unlink moves the counts of the entries it moved (writers_rehome).
 */

/*
 * A change to a unit through the mount: the engine is told first (its
 * upload in flight is cancelled: engine_unit_touched), then the change is
 * made, both under change_lock shared.  The move to completed/ takes it
 * exclusive (fs_move_to_completed): it sees the cancel of a change made
 * before it, and a change made after it finds the unit gone from
 * pending/.  So no change lands in completed/ unseen, its bytes never sent.
 */
static void change_begin(struct fs *fs, const char *unit)
{
	pthread_rwlock_rdlock(&fs->change_lock);
	if (unit && unit[0])
		engine_unit_touched(fs->eng, unit, 0);
}

static void change_end(struct fs *fs)
{
	pthread_rwlock_unlock(&fs->change_lock);
}

/* Count @h, open for writing on @ino, in the unit its entry is in now. */
static void writer_open(struct fs *fs, fuse_ino_t ino, struct fh *h)
{
	struct node *n;

	pthread_mutex_lock(&fs->lock);
	n = ino_get(fs, ino);
	h->ino = ino;
	h->unit = n ? node_unit(fs, n) : NULL;
	if (n)
		n->writers++;
	if (h->unit)
		F(h->unit)->unit_writers++;
	h->wnext = fs->open_writers;
	if (h->wnext)
		h->wnext->wpprev = &h->wnext;
	h->wpprev = &fs->open_writers;
	fs->open_writers = h;
	pthread_mutex_unlock(&fs->lock);
}

/*
 * Take @h's count back from the unit it is counted in.  @unit gets that
 * unit's name when this was its last writer and it is still a unit of
 * pending/, "" otherwise.
 */
static void writer_close(struct fs *fs, struct fh *h, char *unit, size_t unitlen)
{
	struct node *n, *u;

	unit[0] = '\0';
	pthread_mutex_lock(&fs->lock);
	*h->wpprev = h->wnext;
	if (h->wnext)
		h->wnext->wpprev = h->wpprev;
	n = ino_get(fs, h->ino);
	if (n && n->writers > 0)
		n->writers--;
	u = h->unit;
	h->unit = NULL;
	if (u) {
		if (--F(u)->unit_writers == 0 && u->parent == fs->pending)
			snprintf(unit, unitlen, "%s", u->name);
		node_maybe_free(fs, u);
	}
	pthread_mutex_unlock(&fs->lock);
}

/*
 * After entries moved (rename, unlink, the daemon's move to completed/):
 * count every writer in the unit its entry is in now, none if it left
 * pending/.  Caller holds fs->lock.
 */
static void writers_rehome(struct fs *fs)
{
	for (struct fh *h = fs->open_writers; h; h = h->wnext) {
		struct node *n = ino_get(fs, h->ino), *now = n ? node_unit(fs, n) : NULL, *old;

		if (now == h->unit)
			continue;
		old = h->unit;
		h->unit = now;
		if (now)
			F(now)->unit_writers++;
		if (old) {
			F(old)->unit_writers--;
			node_maybe_free(fs, old);
		}
	}
}

int fs_unit_writers(struct fs *fs, const char *name)
{
	struct node *u;
	int w;

	pthread_mutex_lock(&fs->lock);
	u = name_get(fs, fs->pending, name);
	w = u ? F(u)->unit_writers : 0;
	pthread_mutex_unlock(&fs->lock);
	return w;
}

/* ---- init / destroy ------------------------------------------------- */

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE;
	if (conn->capable & FUSE_CAP_SPLICE_READ)
		conn->want |= FUSE_CAP_SPLICE_READ;
	if (conn->capable & FUSE_CAP_SPLICE_MOVE)
		conn->want |= FUSE_CAP_SPLICE_MOVE;
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
	conn->max_write = 1u << 20;
	conn->max_readahead = 1u << 20;
}

static void op_destroy(void *userdata)
{
	(void)userdata;
}

/* ---- metadata ------------------------------------------------------- */

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	int rc = do_lookup(FS(req), parent, name, &e);

	/*
	 * A negative entry the kernel may cache (cp looks the name up twice);
	 * every entry the daemon adds itself is invalidated when it does.
	 */
	if (rc == -ENOENT && parent != FUSE_ROOT_ID) {
		memset(&e, 0, sizeof(e));
		e.entry_timeout = TIMEOUT;
		rc = 0;
	}
	reply_entry_or_err(req, rc, &e);
}

static void forget_one(struct fs *fs, fuse_ino_t ino, uint64_t nlookup)
{
	struct node *n;

	pthread_mutex_lock(&fs->lock);
	n = ino_get(fs, ino);
	if (n) {
		n->nlookup = n->nlookup > nlookup ? n->nlookup - nlookup : 0;
		node_maybe_free(fs, n);
	}
	pthread_mutex_unlock(&fs->lock);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	forget_one(FS(req), ino, nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		forget_one(FS(req), forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = FS(req);
	char path[PATH_MAX];
	struct stat st;
	int rc = 0;

	if (ino == FUSE_ROOT_ID) {
		fill_root_attr(fs, ino, &st);
		fuse_reply_attr(req, &st, TIMEOUT);
		return;
	}
	if (fi && FH(fi)) {
		if (fstat(FH(fi)->fd, &st))
			rc = -errno;
	} else {
		rc = ino_path(fs, ino, NULL, path, sizeof(path), NULL, NULL, 0);
		if (!rc && lstat(path, &st))
			rc = -errno;
	}
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	st.st_ino = ino;
	show_blksize(fs, &st);
	fuse_reply_attr(req, &st, TIMEOUT);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int valid,
		       struct fuse_file_info *fi)
{
	struct fs *fs = FS(req);
	char path[PATH_MAX], unit[NAME_MAX + 1];
	enum fs_area area;
	int fd = fi && FH(fi) ? FH(fi)->fd : -1;
	int rc, locked = 0;

	rc = ino == FUSE_ROOT_ID ? -EPERM
				 : ino_path(fs, ino, NULL, path, sizeof(path), &area, unit,
					    sizeof(unit));
	if (rc)
		goto out;
	if (area == AREA_COMPLETED) {
		rc = -EROFS;
		goto out;
	}
	change_begin(fs, valid & (FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_MODE) ? unit : NULL);
	locked = 1;
	if ((valid & FUSE_SET_ATTR_MODE) &&
	    (fd >= 0 ? fchmod(fd, attr->st_mode & 07777) : chmod(path, attr->st_mode & 07777))) {
		rc = -errno;
		goto out;
	}
	if (valid & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		uid_t uid = (valid & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1;
		gid_t gid = (valid & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1;

		if (lchown(path, uid, gid)) {
			rc = -errno;
			goto out;
		}
	}
	if ((valid & FUSE_SET_ATTR_SIZE) &&
	    (fd >= 0 ? ftruncate(fd, attr->st_size) : truncate(path, attr->st_size))) {
		rc = -errno;
		goto out;
	}
	change_end(fs);
	locked = 0;
	if (valid & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
		struct timespec tv[2] = { { 0, UTIME_OMIT }, { 0, UTIME_OMIT } };

		if (valid & FUSE_SET_ATTR_ATIME_NOW)
			tv[0].tv_nsec = UTIME_NOW;
		else if (valid & FUSE_SET_ATTR_ATIME)
			tv[0] = attr->st_atim;
		if (valid & FUSE_SET_ATTR_MTIME_NOW)
			tv[1].tv_nsec = UTIME_NOW;
		else if (valid & FUSE_SET_ATTR_MTIME)
			tv[1] = attr->st_mtim;
		if (fd >= 0 ? futimens(fd, tv) : utimensat(AT_FDCWD, path, tv, AT_SYMLINK_NOFOLLOW)) {
			rc = -errno;
			goto out;
		}
	}
	/* a truncate with no writer open is a finished change of the unit */
	if (unit[0] && (valid & FUSE_SET_ATTR_SIZE) && !fs_unit_writers(fs, unit))
		engine_unit_changed(fs->eng, unit);
out:
	if (locked)
		change_end(fs);
	if (rc)
		fuse_reply_err(req, -rc);
	else
		op_getattr(req, ino, fi);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	char path[PATH_MAX], target[PATH_MAX];
	ssize_t n;
	int rc = ino_path(FS(req), ino, NULL, path, sizeof(path), NULL, NULL, 0);

	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	n = readlink(path, target, sizeof(target) - 1);
	if (n < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	target[n] = '\0';
	fuse_reply_readlink(req, target);
}

/* mknod, mkdir and symlink: make the entry, give it to the caller, look it up. */
static void make_entry(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		       dev_t rdev, const char *link)
{
	struct fs *fs = FS(req);
	struct fuse_entry_param e;
	char path[PATH_MAX];
	enum fs_area area;
	char unit[NAME_MAX + 1];
	int rc = may_create(fs, parent, &area);

	if (!rc)
		rc = ino_path(fs, parent, name, path, sizeof(path), NULL, unit, sizeof(unit));
	if (rc)
		goto out;
	change_begin(fs, parent != fs->pending->ino ? unit : NULL);	/* a new unit: nothing to tell */
	if (link)
		rc = symlink(link, path);
	else if (S_ISDIR(mode))
		rc = mkdir(path, mode & 07777);
	else
		rc = mknod(path, mode, rdev);
	rc = rc ? -errno : 0;
	change_end(fs);
	if (rc)
		goto out;
	chown_to_caller(req, path);
	rc = do_lookup(fs, parent, name, &e);
	if (!rc && parent != FUSE_ROOT_ID && unit[0])
		engine_unit_changed(fs->eng, unit);
out:
	reply_entry_or_err(req, rc, &e);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	make_entry(req, parent, name, mode, rdev, NULL);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	make_entry(req, parent, name, S_IFDIR | mode, 0, NULL);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	make_entry(req, parent, name, S_IFLNK | 0777, 0, link);
}

static void remove_entry(fuse_req_t req, fuse_ino_t parent, const char *name, int dir)
{
	struct fs *fs = FS(req);
	char path[PATH_MAX], unit[NAME_MAX + 1];
	enum fs_area area;
	struct node *p, *n;
	int rc;

	rc = parent == FUSE_ROOT_ID ? -EPERM
				    : ino_path(fs, parent, name, path, sizeof(path), &area, unit,
					       sizeof(unit));
	if (rc)
		goto out;
	change_begin(fs, area == AREA_PENDING ? unit : NULL);
	rc = (dir ? rmdir(path) : unlink(path)) ? -errno : 0;
	change_end(fs);
	if (rc)
		goto out;
	if (parent == fs->pending->ino)
		engine_unit_touched(fs->eng, unit, 1);
	pthread_mutex_lock(&fs->lock);
	p = ino_get(fs, parent);
	n = p ? name_get(fs, p, name) : NULL;
	if (n) {
		node_detach(fs, n);
		node_maybe_free(fs, n);	/* kept while writers are counted in it */
		writers_rehome(fs);	/* an unlinked file open for writing is in no unit */
	}
	pthread_mutex_unlock(&fs->lock);
	if (area == AREA_PENDING && unit[0] && parent != fs->pending->ino)
		engine_unit_changed(fs->eng, unit);
out:
	fuse_reply_err(req, -rc);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	remove_entry(req, parent, name, 0);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	remove_entry(req, parent, name, 1);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned int flags)
{
	struct fs *fs = FS(req);
	char from[PATH_MAX], to[PATH_MAX], unit_from[NAME_MAX + 1], unit_to[NAME_MAX + 1];
	enum fs_area a_from, a_to;
	struct node *p, *np, *n, *victim;
	int rc;

	if (parent == FUSE_ROOT_ID || newparent == FUSE_ROOT_ID) {
		rc = -EPERM;
		goto out;
	}
	rc = ino_path(fs, parent, name, from, sizeof(from), &a_from, unit_from, sizeof(unit_from));
	if (!rc)
		rc = ino_path(fs, newparent, newname, to, sizeof(to), &a_to, unit_to,
			      sizeof(unit_to));
	if (rc)
		goto out;
	/*
	 * completed/ only gives entries back to pending/; nothing goes into it,
	 * and an exchange would put the other side there
	 */
	if (a_to == AREA_COMPLETED || (a_from == AREA_COMPLETED && (flags & RENAME_EXCHANGE))) {
		rc = -EROFS;
		goto out;
	}
	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) {
		rc = -EINVAL;
		goto out;
	}
	change_begin(fs, a_from == AREA_PENDING ? unit_from : NULL);
	if (unit_to[0])
		engine_unit_touched(fs->eng, unit_to, 0);
	rc = renameat2(AT_FDCWD, from, AT_FDCWD, to, flags) ? -errno : 0;
	change_end(fs);
	if (rc)
		goto out;
	pthread_mutex_lock(&fs->lock);
	p = ino_get(fs, parent);
	np = ino_get(fs, newparent);
	n = p ? name_get(fs, p, name) : NULL;
	victim = np ? name_get(fs, np, newname) : NULL;
	if (flags & RENAME_EXCHANGE) {
		if (n)
			node_detach(fs, n);
		if (victim)
			node_detach(fs, victim);
		if (victim && p)
			node_attach(fs, victim, p, name);
	} else if (victim && victim != n) {
		node_detach(fs, victim);
		node_maybe_free(fs, victim);
	}
	if (n && np) {
		if (!(flags & RENAME_EXCHANGE))
			node_detach(fs, n);
		node_attach(fs, n, np, newname);
	}
	/* open writers moved with their entries: count them in their new units */
	writers_rehome(fs);
	pthread_mutex_unlock(&fs->lock);
	/* a unit renamed away is gone; an entry replaced at the top is too */
	if (parent == fs->pending->ino && !(flags & RENAME_EXCHANGE))
		engine_unit_touched(fs->eng, unit_from, 1);
	/* the unit that lost an entry changed, and the one that got it */
	if (a_from == AREA_PENDING && unit_from[0] && parent != fs->pending->ino)
		engine_unit_changed(fs->eng, unit_from);
	/* "rename back into pending/ (uploads it again)": not a duplicate of itself */
	if (unit_to[0] && a_from == AREA_COMPLETED && newparent == fs->pending->ino)
		engine_unit_again(fs->eng, unit_to);
	else if (unit_to[0] && !fs_unit_writers(fs, unit_to))
		engine_unit_changed(fs->eng, unit_to);
	if ((flags & RENAME_EXCHANGE) && parent == fs->pending->ino &&
	    !fs_unit_writers(fs, unit_from))
		engine_unit_changed(fs->eng, unit_from);
out:
	fuse_reply_err(req, -rc);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	(void)ino;
	(void)newparent;
	(void)newname;
	fuse_reply_err(req, EPERM);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct fs *fs = FS(req);
	char path[PATH_MAX];
	struct statvfs sv;

	(void)ino;
	snprintf(path, sizeof(path), "%s/pending", fs->cfg->local_dir);
	if (statvfs(path, &sv))
		fuse_reply_err(req, errno);
	else
		fuse_reply_statfs(req, &sv);
}

/* ---- files ---------------------------------------------------------- */

static int open_backing(fuse_req_t req, fuse_ino_t ino, const char *name, int flags, mode_t mode,
			struct fuse_file_info *fi)
{
	struct fs *fs = FS(req);
	char path[PATH_MAX], unit[NAME_MAX + 1];
	enum fs_area area;
	struct fh *h = NULL;
	int writing = (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
	int rc;

	rc = ino == FUSE_ROOT_ID && !name ? -EISDIR
					  : ino_path(fs, ino, name, path, sizeof(path), &area, unit,
						     sizeof(unit));
	if (rc)
		return rc;
	if (area == AREA_COMPLETED && (writing || name))
		return -EROFS;
	if (area == AREA_ROOT)
		return -EPERM;
	h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	if (writing)
		change_begin(fs, unit);
	/* the kernel gives the real offset of every write: O_APPEND would move it */
	h->fd = open(path, (flags & ~(O_APPEND | O_NOFOLLOW)) | O_NOFOLLOW | O_CLOEXEC, mode);
	if (writing)
		change_end(fs);
	if (h->fd < 0) {
		rc = -errno;
		free(h);
		return rc;
	}
	if (name)
		chown_to_caller(req, path);
	h->writer = writing && unit[0];
	fi->fh = (uintptr_t)h;
	fi->noflush = 1;	/* flush has nothing to do here: no round trip per close() */
	return 0;
}

/* Give @h its inode's passthrough backing id: one per inode while any handle is open. */
static void backing_get(struct fs *fs, fuse_ino_t ino, struct fh *h)
{
	struct node *n;

	if (atomic_load(&fs->pt_state) != FS_PT_ON)
		return;
	pthread_mutex_lock(&fs->lock);
	n = ino_get(fs, ino);
	if (n && !n->backing_refs)
		n->backing_id = fs_pt_open(fs, h->fd);
	if (n && n->backing_id > 0) {
		n->backing_refs++;
		h->backing_id = n->backing_id;
	}
	pthread_mutex_unlock(&fs->lock);
}

static void backing_put(struct fs *fs, fuse_ino_t ino, struct fh *h)
{
	struct node *n;
	int id = h->backing_id;

	if (!id)
		return;
	pthread_mutex_lock(&fs->lock);
	n = ino_get(fs, ino);
	if (n && n->backing_id == id && --n->backing_refs > 0)
		id = 0;		/* other handles still use it */
	else if (n && n->backing_id == id)
		n->backing_id = 0;
	pthread_mutex_unlock(&fs->lock);
	fs_pt_close(fs, id);
}

/* Send the open/create reply; when the opener was interrupted, the handle is freed here. */
static void reply_opened(fuse_req_t req, fuse_ino_t ino, const struct fuse_entry_param *e,
			struct fuse_file_info *fi)
{
	struct fs *fs = FS(req);
	struct fh *h = FH(fi);
	char unit[NAME_MAX + 1];
	int rc;

	backing_get(fs, ino, h);
	if (h->writer)
		writer_open(fs, ino, h);
	fs_pt_next_reply(h->backing_id);
	rc = e ? fuse_reply_create(req, e, fi) : fuse_reply_open(req, fi);
	fs_pt_next_reply(0);
	if (rc != -ENOENT)
		return;
	/* the opener was interrupted: nobody will release this handle */
	if (h->writer)
		writer_close(fs, h, unit, sizeof(unit));
	backing_put(fs, ino, h);
	close(h->fd);
	free(h);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	int rc = open_backing(req, ino, NULL, fi->flags, 0, fi);

	if (rc)
		fuse_reply_err(req, -rc);
	else
		reply_opened(req, ino, NULL, fi);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	struct fs *fs = FS(req);
	struct fuse_entry_param e;
	int rc = may_create(fs, parent, NULL);

	if (!rc)
		rc = open_backing(req, parent, name, fi->flags | O_CREAT, mode, fi);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	rc = do_lookup(fs, parent, name, &e);
	if (rc) {
		close(FH(fi)->fd);
		free(FH(fi));
		fuse_reply_err(req, -rc);
		return;
	}
	reply_opened(req, e.ino, &e, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);

	(void)ino;
	buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	buf.buf[0].fd = FH(fi)->fd;
	buf.buf[0].pos = off;
	fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
}

/*
 * Copy @in to @fd at @off in pieces of WRITE_PIECE at most.  Returns the
 * bytes written, or -errno when the first piece failed.
 */
static ssize_t write_pieces(int fd, struct fuse_bufvec *in, off_t off)
{
	size_t left = fuse_buf_size(in), done = 0;
	ssize_t n = 0;

	while (left) {
		size_t k = left < WRITE_PIECE ? left : WRITE_PIECE;
		struct fuse_bufvec out = FUSE_BUFVEC_INIT(k);

		out.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
		out.buf[0].fd = fd;
		out.buf[0].pos = off + (off_t)done;
		n = fuse_buf_copy(&out, in, 0);	/* moves @in on by what it copied */
		if (n <= 0)
			break;
		done += (size_t)n;
		left -= (size_t)n;
		if ((size_t)n < k)
			break;
	}
	return done || n >= 0 ? (ssize_t)done : n;
}

static void op_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in, off_t off,
			 struct fuse_file_info *fi)
{
	struct fs *fs = FS(req);
	struct fh *h = FH(fi);
	ssize_t n;

	if (!h->wrote) {
		char path[PATH_MAX], unit[NAME_MAX + 1];

		h->wrote = 1;
		if (!ino_path(fs, ino, NULL, path, sizeof(path), NULL, unit, sizeof(unit)) &&
		    unit[0])
			engine_unit_touched(fs->eng, unit, 0);
	}
	n = write_pieces(h->fd, in, off);
	if (n < 0) {
		h->write_error = (int)-n;
		fuse_reply_err(req, (int)-n);
	} else {
		fuse_reply_write(req, (size_t)n);
	}
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

/*
 * A passthrough write that failed never reached us; the caller saw ENOSPC.
 * A full disk under local_dir at the last close is the sign of it.
 */
static int disk_full(int fd)
{
	struct statvfs sv;

	return !fstatvfs(fd, &sv) && (uint64_t)sv.f_bfree * sv.f_frsize < (1u << 20);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = FS(req);
	struct fh *h = FH(fi);
	char unit[NAME_MAX + 1];

	if (h->writer && h->backing_id && !h->write_error && disk_full(h->fd))
		h->write_error = ENOSPC;
	backing_put(fs, ino, h);
	close(h->fd);
	if (h->writer) {
		writer_close(fs, h, unit, sizeof(unit));
		/* the last writer of the unit is gone: queue it (in LMDB) now */
		if (unit[0] && h->write_error)
			engine_unit_write_failed(fs->eng, unit, h->write_error);
		else if (unit[0])
			engine_unit_changed(fs->eng, unit);
	}
	free(h);
	fuse_reply_err(req, 0);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	int rc = datasync ? fdatasync(FH(fi)->fd) : fsync(FH(fi)->fd);

	(void)ino;
	fuse_reply_err(req, rc ? errno : 0);
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
			 struct fuse_file_info *fi)
{
	int rc = fallocate(FH(fi)->fd, mode, offset, length);

	(void)ino;
	fuse_reply_err(req, rc ? errno : 0);
}

static void op_flock(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, int op)
{
	(void)ino;
	fuse_reply_err(req, flock(FH(fi)->fd, op) ? errno : 0);
}

/* ---- directories ---------------------------------------------------- */

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	char path[PATH_MAX];
	struct dh *d;
	int rc = 0;

	fi->fh = 0;
	if (ino == FUSE_ROOT_ID) {
		fuse_reply_open(req, fi);
		return;
	}
	rc = ino_path(FS(req), ino, NULL, path, sizeof(path), NULL, NULL, 0);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	d = calloc(1, sizeof(*d));
	if (!d) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	d->dp = opendir(path);
	if (!d->dp) {
		rc = errno;
		free(d);
		fuse_reply_err(req, rc);
		return;
	}
	fi->fh = (uintptr_t)d;
	if (fuse_reply_open(req, fi) == -ENOENT) {
		closedir(d->dp);
		free(d);
	}
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	struct dh *d = (struct dh *)(uintptr_t)fi->fh;
	char *buf = calloc(1, size ? size : 1), *p = buf;
	size_t rem = size;
	struct stat st;
	int err = 0;

	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if (ino == FUSE_ROOT_ID) {
		static const char *const names[] = { ".", "..", "completed", "pending" };

		for (off_t i = off; i < 4; i++) {
			size_t len;

			memset(&st, 0, sizeof(st));
			st.st_ino = i < 2 ? FUSE_ROOT_ID : (i == 2 ? 3 : 2);
			st.st_mode = S_IFDIR;
			len = fuse_add_direntry(req, p, rem, names[i], &st, i + 1);
			if (len > rem)
				break;
			p += len;
			rem -= len;
		}
		goto out;
	}
	if (off != d->offset) {
		seekdir(d->dp, off);
		d->entry = NULL;
		d->offset = off;
	}
	for (;;) {
		size_t len;

		if (!d->entry) {
			errno = 0;
			d->entry = readdir(d->dp);
			if (!d->entry) {
				err = errno;
				break;
			}
		}
		memset(&st, 0, sizeof(st));
		st.st_ino = d->entry->d_ino;
		st.st_mode = (mode_t)d->entry->d_type << 12;
		len = fuse_add_direntry(req, p, rem, d->entry->d_name, &st, telldir(d->dp));
		if (len > rem)
			break;
		p += len;
		rem -= len;
		d->entry = NULL;
		d->offset = telldir(d->dp);
	}
out:
	if (err && rem == size)
		fuse_reply_err(req, err);
	else
		fuse_reply_buf(req, buf, size - rem);
	free(buf);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct dh *d = (struct dh *)(uintptr_t)fi->fh;

	(void)ino;
	if (d) {
		closedir(d->dp);
		free(d);
	}
	fuse_reply_err(req, 0);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct dh *d = (struct dh *)(uintptr_t)fi->fh;
	int rc = 0;

	(void)ino;
	if (d)
		rc = datasync ? fdatasync(dirfd(d->dp)) : fsync(dirfd(d->dp));
	fuse_reply_err(req, rc ? errno : 0);
}

/* ---- xattrs --------------------------------------------------------- */

/*
 * The record shown on @ino: the unit's record in pending/ (while queued,
 * uploading or failed), or the record of a top-level entry of completed/.
 * Returns 0, -ENODATA when there is none, or -errno.  @ignored is set
 * for pending names that are never uploaded.
 */
static int record_of(struct fs *fs, fuse_ino_t ino, struct store_record *rec, int *ignored)
{
	char rel[PATH_MAX];
	struct node *n;
	uint64_t id = 0;
	enum fs_area area = AREA_ROOT;
	int rc;

	*ignored = 0;
	pthread_mutex_lock(&fs->lock);
	n = ino_get(fs, ino);
	if (n && n->parent && (n->parent == fs->pending || n->parent == fs->completed)) {
		area = n->parent == fs->pending ? AREA_PENDING : AREA_COMPLETED;
		snprintf(rel, sizeof(rel), "%s/%s", area == AREA_PENDING ? "pending" : "completed",
			 n->name);
		*ignored = area == AREA_PENDING && cfg_name_ignored(fs->cfg, n->name);
	}
	pthread_mutex_unlock(&fs->lock);
	if (area == AREA_ROOT || *ignored)
		return -ENODATA;
	rc = store_find_path(fs->st, rel, &id);
	if (!rc)
		rc = store_get(fs->st, id, rec);
	if (rc == -ENOENT)
		return -ENODATA;
	if (rc)
		return rc;
	/* pending/NAME again after an upload: the old record is not this file's */
	if (area == AREA_PENDING && (rec->status == STORE_COMPLETED || rec->status == STORE_DUPLICATE))
		return -ENODATA;
	if (area == AREA_PENDING &&
	    (rec->status == STORE_UPLOADING || rec->status == STORE_QUEUED))
		engine_progress(fs->eng, rec->id, &rec->progress_done, &rec->progress_total);
	return 0;
}

static void reply_xattr_value(fuse_req_t req, const char *val, size_t len, size_t size)
{
	if (size == 0)
		fuse_reply_xattr(req, len);
	else if (len > size)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, val, len);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct fs *fs = FS(req);
	struct store_record *rec = NULL;
	char path[PATH_MAX], *val = NULL;
	int ignored, rc;
	ssize_t n;

	/* asked before every write: answer without touching LMDB */
	if (!strncmp(name, "security.", 9) || !strncmp(name, "system.", 7)) {
		fuse_reply_err(req, ENODATA);
		return;
	}
	/* lets `mgmtfs list` find the record database of a mount */
	if (ino == FUSE_ROOT_ID && !strcmp(name, MGMT_XATTR "local_dir")) {
		reply_xattr_value(req, fs->cfg->local_dir, strlen(fs->cfg->local_dir), size);
		return;
	}
	if (!strncmp(name, MGMT_XATTR, MGMT_XLEN)) {
		rec = malloc(sizeof(*rec));
		val = malloc(8192);
		if (!rec || !val) {
			rc = -ENOMEM;
			goto out;
		}
		rc = record_of(fs, ino, rec, &ignored);
		if (ignored && !strcmp(name + MGMT_XLEN, "status")) {
			reply_xattr_value(req, "ignored", 7, size);
			goto done;
		}
		if (rc)
			goto out;
		rc = store_field_format(rec, name + MGMT_XLEN, val, 8192);
		if (rc < 0)
			goto out;
		reply_xattr_value(req, val, (size_t)rc > 8192 ? 8192 : (size_t)rc, size);
		goto done;
	}
	rc = ino == FUSE_ROOT_ID ? -ENODATA
				 : ino_path(fs, ino, NULL, path, sizeof(path), NULL, NULL, 0);
	if (rc)
		goto out;
	val = size ? malloc(size) : NULL;
	if (size && !val) {
		rc = -ENOMEM;
		goto out;
	}
	n = lgetxattr(path, name, val, size);
	if (n < 0) {
		rc = -errno;
		goto out;
	}
	if (size == 0)
		fuse_reply_xattr(req, (size_t)n);
	else
		fuse_reply_buf(req, val, (size_t)n);
	goto done;
out:
	fuse_reply_err(req, -rc);
done:
	free(rec);
	free(val);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct fs *fs = FS(req);
	struct store_record *rec = malloc(sizeof(*rec));
	char path[PATH_MAX], *buf = malloc(65536), tmp[8];
	size_t used = 0;
	ssize_t n = 0;
	int ignored, rc = 0;

	if (!rec || !buf) {
		rc = -ENOMEM;
		goto out;
	}
	if (ino != FUSE_ROOT_ID &&
	    !ino_path(fs, ino, NULL, path, sizeof(path), NULL, NULL, 0)) {
		n = llistxattr(path, buf, 32768);
		if (n < 0 && errno != ENOTSUP) {
			rc = -errno;
			goto out;
		}
		used = n > 0 ? (size_t)n : 0;
	}
	rc = record_of(fs, ino, rec, &ignored);
	if (ignored) {
		memcpy(buf + used, MGMT_XATTR "status", MGMT_XLEN + 7);
		used += MGMT_XLEN + 7;
	} else if (rc == 0) {
		for (const char *const *f = store_field_names; *f; f++) {
			size_t len = strlen(*f);

			if (store_field_format(rec, *f, tmp, sizeof(tmp)) < 0)
				continue;
			memcpy(buf + used, MGMT_XATTR, MGMT_XLEN);
			memcpy(buf + used + MGMT_XLEN, *f, len + 1);
			used += MGMT_XLEN + len + 1;
		}
	}
	rc = 0;
	if (size == 0)
		fuse_reply_xattr(req, used);
	else if (used > size)
		rc = -ERANGE;
	else
		fuse_reply_buf(req, buf, used);
out:
	if (rc)
		fuse_reply_err(req, -rc);
	free(rec);
	free(buf);
}

/* set (@value != NULL) or remove a user's xattr on the backing file; user.mgmt.* is ours */
static void xattr_change(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			 size_t size, int flags)
{
	char path[PATH_MAX];
	int rc;

	if (!strncmp(name, MGMT_XATTR, MGMT_XLEN) || ino == FUSE_ROOT_ID) {
		fuse_reply_err(req, EPERM);
		return;
	}
	rc = ino_path(FS(req), ino, NULL, path, sizeof(path), NULL, NULL, 0);
	if (!rc && (value ? lsetxattr(path, name, value, size, flags) : lremovexattr(path, name)))
		rc = -errno;
	fuse_reply_err(req, -rc);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			size_t size, int flags)
{
	xattr_change(req, ino, name, value ? value : "", size, flags);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	xattr_change(req, ino, name, NULL, 0, 0);
}

const struct fuse_lowlevel_ops fs_ops = {
	.init = op_init,
	.destroy = op_destroy,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.readlink = op_readlink,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.symlink = op_symlink,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.rename = op_rename,
	.link = op_link,
	.open = op_open,
	.create = op_create,
	.read = op_read,
	.write_buf = op_write_buf,
	.flush = op_flush,
	.release = op_release,
	.fsync = op_fsync,
	.fallocate = op_fallocate,
	.flock = op_flock,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.releasedir = op_releasedir,
	.fsyncdir = op_fsyncdir,
	.statfs = op_statfs,
	.setxattr = op_setxattr,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.removexattr = op_removexattr,
};

/* ---- the daemon's own moves ----------------------------------------- */

/*
 * Moving a unit to a completed_dir on another filesystem: rename(2) says
 * EXDEV, so the unit is copied (files, directories recursively, symlinks,
 * with mode, owner, times and user xattrs), and the source removed only once
 * the whole copy is there.  A copy that fails removes what it made.
 */
#define COPY_BUF (1u << 20)

/* Copy the data of @in to @out: copy_file_range, else read/write (WRITE_PIECE). */
static int copy_data(int in, int out)
{
	char *buf = NULL;
	int rc = 0;

	for (;;) {
		ssize_t n = copy_file_range(in, NULL, out, NULL, COPY_BUF, 0);

		if (n == 0)
			return 0;
		if (n > 0)
			continue;
		if (errno == EINTR)
			continue;
		/* across filesystems (EXDEV), or not supported there: copy by hand */
		if (errno != EXDEV && errno != ENOSYS && errno != EOPNOTSUPP && errno != EINVAL)
			return -errno;
		break;
	}
	buf = malloc(WRITE_PIECE);
	if (!buf)
		return -ENOMEM;
	for (;;) {
		ssize_t n = read(in, buf, WRITE_PIECE), off = 0;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = -errno;
			break;
		}
		if (n == 0)
			break;
		while (off < n) {
			ssize_t w = write(out, buf + off, (size_t)(n - off));

			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				rc = w < 0 ? -errno : -EIO;
				goto out;
			}
			off += w;
		}
	}
out:
	free(buf);
	return rc;
}

/* User xattrs (user.color...) go along, as rename keeps them; best effort. */
static void copy_xattrs(const char *from, const char *to)
{
	char names[4096], val[4096];
	ssize_t len = llistxattr(from, names, sizeof(names));

	for (ssize_t i = 0; i < len; i += (ssize_t)strlen(names + i) + 1) {
		ssize_t n = lgetxattr(from, names + i, val, sizeof(val));

		if (n >= 0 && lsetxattr(to, names + i, val, (size_t)n, 0))
			mgmtfs_debug("moving across filesystems: an xattr was not kept: %m");
	}
}

/* Owner, mode and times of @st on @to; mode after owner (chown clears setuid). */
static void copy_meta(const char *to, const struct stat *st)
{
	const struct timespec tv[2] = { st->st_atim, st->st_mtim };

	if (lchown(to, st->st_uid, st->st_gid))
		mgmtfs_debug("moving across filesystems: owner not kept: %m");
	if (!S_ISLNK(st->st_mode) && chmod(to, st->st_mode & 07777))
		mgmtfs_debug("moving across filesystems: mode not kept: %m");
	if (utimensat(AT_FDCWD, to, tv, AT_SYMLINK_NOFOLLOW))
		mgmtfs_debug("moving across filesystems: times not kept: %m");
}

static int copy_file(const char *from, const char *to, const struct stat *st)
{
	int in = -1, out = -1, rc = 0;

	in = open(from, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (in < 0)
		return -errno;
	out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (out < 0) {
		rc = -errno;
		goto out;
	}
	rc = copy_data(in, out);
	if (!rc && fsync(out))
		rc = -errno;
	if (close(out) && !rc)
		rc = -errno;
	out = -1;
	if (rc) {
		unlink(to);
		goto out;
	}
	copy_xattrs(from, to);
	copy_meta(to, st);
out:
	close(in);
	return rc;
}

/* rm -r @path (no error when it is already gone); returns 0 or the first -errno. */
static int remove_tree(const char *path)
{
	char sub[PATH_MAX];
	struct dirent *de;
	struct stat st;
	DIR *dp;
	int rc = 0;

	if (lstat(path, &st))
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISDIR(st.st_mode))
		return unlink(path) && errno != ENOENT ? -errno : 0;
	dp = opendir(path);
	if (!dp)
		return -errno;
	while ((de = readdir(dp))) {
		int r;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (snprintf(sub, sizeof(sub), "%s/%s", path, de->d_name) >= (int)sizeof(sub))
			r = -ENAMETOOLONG;
		else
			r = remove_tree(sub);
		if (r && !rc)
			rc = r;
	}
	closedir(dp);
	if (rmdir(path) && !rc)
		rc = -errno;
	return rc;
}

/* Copy the entry @from to @to, which must not exist; a directory whole. */
static int copy_tree(const char *from, const char *to)
{
	char a[PATH_MAX], b[PATH_MAX], target[PATH_MAX];
	struct dirent *de;
	struct stat st;
	DIR *dp = NULL;
	ssize_t n;
	int rc = 0;

	if (lstat(from, &st))
		return -errno;
	if (S_ISREG(st.st_mode))
		return copy_file(from, to, &st);
	if (S_ISLNK(st.st_mode)) {
		n = readlink(from, target, sizeof(target) - 1);
		if (n < 0)
			return -errno;
		target[n] = '\0';
		if (symlink(target, to))
			return -errno;
		copy_meta(to, &st);
		return 0;
	}
	if (!S_ISDIR(st.st_mode)) {
		if (mknod(to, st.st_mode, st.st_rdev))
			return -errno;
		copy_meta(to, &st);
		return 0;
	}
	if (mkdir(to, 0700))
		return -errno;
	dp = opendir(from);
	if (!dp) {
		rc = -errno;
		goto out;
	}
	while (!rc && (errno = 0, de = readdir(dp))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (snprintf(a, sizeof(a), "%s/%s", from, de->d_name) >= (int)sizeof(a) ||
		    snprintf(b, sizeof(b), "%s/%s", to, de->d_name) >= (int)sizeof(b))
			rc = -ENAMETOOLONG;
		else
			rc = copy_tree(a, b);
	}
	if (!rc && errno)
		rc = -errno;
	closedir(dp);
	if (!rc) {
		copy_xattrs(from, to);
		copy_meta(to, &st);	/* last: the entries made changed its mtime */
	}
out:
	if (rc)
		remove_tree(to);
	return rc;
}

/*
 * The first half of a move of the unit @from across filesystems: a copy
 * under a hidden name @tmp (size PATH_MAX) in @dir, made before the move
 * is decided, so that a crash mid-copy never leaves a part at the
 * destination (the next mount's recovery moves the unit again, over the
 * leftover).  commit_across() puts it in place.
 */
static int stage_across(const char *from, const char *dir, char *tmp)
{
	/* named after the unit, not its destination: two units may try one name at once */
	uint64_t h = fnv1a(FNV1A_BASIS, from);

	if (snprintf(tmp, PATH_MAX, "%s/.mgmtfs-moving-%016llx", dir, (unsigned long long)h) >=
	    PATH_MAX) {
		tmp[0] = '\0';
		return -ENAMETOOLONG;
	}
	remove_tree(tmp);
	return copy_tree(from, tmp);
}

/* The copy @tmp becomes @to (not replaced) and the original @from goes. */
static int commit_across(const char *tmp, const char *to, const char *from)
{
	char eb[128];
	int rc;

	rc = renameat2(AT_FDCWD, tmp, AT_FDCWD, to, RENAME_NOREPLACE) ? -errno : 0;
	if (rc == -EINVAL)	/* no RENAME_NOREPLACE there (NFS, CIFS): check, then rename */
		rc = access(to, F_OK) == 0 ? -EEXIST : rename(tmp, to) ? -errno : 0;
	if (rc)
		return rc;
	/* the whole copy is in completed_dir: the unit has moved, whatever is left here */
	rc = remove_tree(from);
	if (rc)
		mgmtfs_warn("moved '%s' to '%s' but cannot remove all of the original: %s", from,
			    to, mgmtfs_strerror(rc, eb, sizeof(eb)));
	return 0;
}

/*
 * Can unit @name at @from move now?  -ENOENT if it is gone, -EBUSY if it is
 * open for writing or was changed (*@changed) since its upload, else 0.
 */
static int unit_busy(struct fs *fs, const char *name, const char *from, const atomic_int *changed)
{
	struct stat st;

	if (lstat(from, &st))
		return -errno;
	return fs_unit_writers(fs, name) > 0 || (changed && atomic_load(changed)) ? -EBUSY : 0;
}

int fs_move_to_completed(struct fs *fs, const char *name, const char *dest,
			 const atomic_int *changed)
{
	char from[PATH_MAX], to[PATH_MAX], tmp[PATH_MAX];
	struct node *n;
	int rc;

	snprintf(from, sizeof(from), "%s/pending/%s", fs->cfg->local_dir, name);
	snprintf(to, sizeof(to), "%s/%s", fs->cfg->completed_dir, dest);
	/*
	 * No change through the mount can come between the check and the
	 * rename (change_begin): a writer that opens now finds the unit gone
	 * from pending/, and one that came before makes it busy.  Busy: the
	 * last release queues it again.
	 */
	pthread_rwlock_wrlock(&fs->change_lock);
	rc = unit_busy(fs, name, from, changed);
	if (!rc)
		rc = renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) ? -errno : 0;
	if (rc == -EXDEV && access(to, F_OK) == 0)
		rc = -EEXIST;
	if (rc == -EXDEV) {
		/* a copy takes time: changes go on meanwhile, and one makes it busy */
		pthread_rwlock_unlock(&fs->change_lock);
		rc = stage_across(from, fs->cfg->completed_dir, tmp);
		pthread_rwlock_wrlock(&fs->change_lock);
		if (!rc)
			rc = unit_busy(fs, name, from, changed);
		rc = rc ? rc : commit_across(tmp, to, from);
		if (rc && tmp[0])
			remove_tree(tmp);
	}
	if (!rc) {
		pthread_mutex_lock(&fs->lock);
		n = name_get(fs, fs->pending, name);
		if (n) {
			node_detach(fs, n);
			/* a lookup that raced with the move made its own node: keep that one */
			if (name_get(fs, fs->completed, dest) ||
			    node_attach(fs, n, fs->completed, dest))
				node_maybe_free(fs, n);
			writers_rehome(fs);
		}
		pthread_mutex_unlock(&fs->lock);
	}
	pthread_rwlock_unlock(&fs->change_lock);
	if (rc)
		return rc;
	if (fs->se) {
		fuse_lowlevel_notify_inval_entry(fs->se, fs->pending->ino, name, strlen(name));
		fuse_lowlevel_notify_inval_entry(fs->se, fs->completed->ino, dest, strlen(dest));
	}
	return 0;
}

/* ---- state ---------------------------------------------------------- */

int fs_init_state(struct fs *fs, const struct mgmtfs_config *cfg, struct store *st)
{
	char path[PATH_MAX];

	memset(fs, 0, sizeof(*fs));
	fs->cfg = cfg;
	fs->st = st;
	snprintf(path, sizeof(path), "%s/pending", cfg->local_dir);
	if (mkdir(path, 0755) && errno != EEXIST)
		return -errno;
	pthread_mutex_init(&fs->lock, NULL);
	pthread_mutex_init(&fs->rec_lock, NULL);
	{
		pthread_rwlockattr_t a;

		/* the move waits for the changes under way, not for a stream of new ones */
		pthread_rwlockattr_init(&a);
		pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
		pthread_rwlock_init(&fs->change_lock, &a);
		pthread_rwlockattr_destroy(&a);
	}
	fs->hash_size = 1 << 16;
	fs->ino_hash = calloc(fs->hash_size, sizeof(*fs->ino_hash));
	fs->name_hash = calloc(fs->hash_size, sizeof(*fs->name_hash));
	if (!fs->ino_hash || !fs->name_hash)
		return -ENOMEM;
	fs->next_ino = FUSE_ROOT_ID;
	fs->root = node_new(fs, NULL, "");
	fs->pending = node_new(fs, NULL, "pending");
	fs->completed = node_new(fs, NULL, "completed");
	if (!fs->root || !fs->pending || !fs->completed)
		return -ENOMEM;
	fs->root->pinned = fs->pending->pinned = fs->completed->pinned = 1;
	return 0;
}

void fs_release_state(struct fs *fs)
{
	if (fs->ino_hash) {
		for (size_t i = 0; i < fs->hash_size; i++) {
			struct node *n = fs->ino_hash[i], *next;

			for (; n; n = next) {
				next = n->ino_next;
				free(n->name);
				free(n);
			}
		}
	}
	free(fs->ino_hash);
	free(fs->name_hash);
	fs->ino_hash = fs->name_hash = NULL;
	pthread_mutex_destroy(&fs->lock);
	pthread_mutex_destroy(&fs->rec_lock);
	pthread_rwlock_destroy(&fs->change_lock);
}
