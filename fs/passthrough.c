/*
 * passthrough.c - FUSE passthrough on libfuse 3.14.
 *
 * DESIGN
 * A write into pending/ normally costs a round trip to this daemon per
 * max_write bytes: the kernel copies the caller's bytes into a request, we
 * copy them into the backing file.  With passthrough (Linux 6.9+, protocol
 * 7.40) the kernel sends reads and writes of an open file straight to a
 * backing file we named at open, so `cp` into pending/ runs at the speed of
 * the disk under local_dir.  Open, create, flush, release, setattr and the
 * rest still come here, so the engine still sees every open for writing and
 * every last close.
 *
 * libfuse 3.14 knows nothing of it, so this file speaks the three protocol
 * bits itself, through fuse_session_custom_io() on the mounted /dev/fuse fd:
 *   - the INIT reply (the first reply with a non-zero unique) gets
 *     FUSE_INIT_EXT, FUSE_PASSTHROUGH in flags2 and max_stack_depth = 1,
 *     and FUSE_HANDLE_KILLPRIV_V2: the suid/sgid bits and security.capability
 *     are killed by the backing filesystem, which sees every write, truncate
 *     and chown, as the local disk would.  Without it the kernel asks us for
 *     security.capability before every write(2) (it may not mark the inode
 *     S_NOSEC): a round trip per 128 KiB of `cp`;
 *   - a backing file is registered with the FUSE_DEV_IOC_BACKING_OPEN
 *     ioctl (needs CAP_SYS_ADMIN), which gives a backing id;
 *   - the open or create reply sent while pt_next_reply() holds an id on
 *     this thread (libfuse writes the reply from the caller's thread) gets
 *     FOPEN_PASSTHROUGH and the id in fuse_open_out.
 * The kernel refuses two different backing files on one inode, so ops.c
 * keeps one id per inode while any handle on it is open.  When the kernel
 * does not take passthrough (old kernel, not root), the first ioctl fails,
 * passthrough is switched off and every file goes through the daemon as
 * before; splice keeps working through the splice hooks below.
 */
#include "fs/fs_i.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/log.h"

/* protocol 7.40, absent from this system's linux/fuse.h (7.38) */
#ifndef FUSE_PASSTHROUGH
#define FUSE_PASSTHROUGH	(1ULL << 37)
#endif
#ifndef FOPEN_PASSTHROUGH
#define FOPEN_PASSTHROUGH	(1 << 7)
#endif
#ifndef FUSE_DEV_IOC_BACKING_OPEN
struct fuse_backing_map {
	int32_t fd;
	uint32_t flags;
	uint64_t padding;
};
#define FUSE_DEV_IOC_BACKING_OPEN  _IOW(229, 1, struct fuse_backing_map)
#define FUSE_DEV_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)
#endif

/* fuse_init_out (7.40): max_stack_depth is the first word after flags2 */
#define INIT_OUT_STACK_DEPTH (offsetof(struct fuse_init_out, flags2) + sizeof(uint32_t))

static _Thread_local int reply_backing_id;

static void patch_init(struct fs *fs, struct iovec *iov, int count)
{
	struct fuse_out_header *oh = iov[0].iov_base;
	struct fuse_init_out *io;
	uint32_t depth = 1;

	if (!oh->unique)
		return;		/* a notification before INIT was answered */
	if (oh->error || count != 2 || iov[1].iov_len < INIT_OUT_STACK_DEPTH + sizeof(depth)) {
		atomic_store(&fs->pt_state, FS_PT_OFF);
		return;
	}
	io = iov[1].iov_base;
	if (io->flags & FUSE_WRITEBACK_CACHE) {	/* the two exclude each other */
		atomic_store(&fs->pt_state, FS_PT_OFF);
		return;
	}
	io->flags |= FUSE_INIT_EXT | FUSE_HANDLE_KILLPRIV_V2;
	io->flags2 |= (uint32_t)(FUSE_PASSTHROUGH >> 32);
	memcpy((char *)io + INIT_OUT_STACK_DEPTH, &depth, sizeof(depth));
	atomic_store(&fs->pt_state, FS_PT_ON);
}

static void patch_open(struct iovec *iov, int count, int id)
{
	struct fuse_out_header *oh = iov[0].iov_base;
	struct iovec *last = &iov[count - 1];
	struct fuse_open_out oo;
	int32_t bid = id;

	if (oh->error || count < 2 || last->iov_len < sizeof(oo))
		return;
	/* fuse_open_out ends both the open and the create reply */
	memcpy(&oo, (char *)last->iov_base + last->iov_len - sizeof(oo), sizeof(oo));
	oo.open_flags |= FOPEN_PASSTHROUGH;
	memcpy(&oo.padding, &bid, sizeof(bid));	/* backing_id since 7.40 */
	memcpy((char *)last->iov_base + last->iov_len - sizeof(oo), &oo, sizeof(oo));
}

static ssize_t pt_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	struct fs *fs = userdata;

	if (atomic_load_explicit(&fs->pt_state, memory_order_relaxed) == FS_PT_WAIT_INIT)
		patch_init(fs, iov, count);
	else if (reply_backing_id > 0)
		patch_open(iov, count, reply_backing_id);
	return writev(fd, iov, count);
}

static ssize_t pt_read(int fd, void *buf, size_t len, void *userdata)
{
	(void)userdata;
	return read(fd, buf, len);
}

static ssize_t pt_splice(int fdin, off_t *offin, int fdout, off_t *offout, size_t len,
			 unsigned int flags, void *userdata)
{
	(void)userdata;
	return splice(fdin, offin, fdout, offout, len, flags);
}

void fs_pt_install(struct fs *fs)
{
	static const struct fuse_custom_io io = {
		.writev = pt_writev,
		.read = pt_read,
		.splice_receive = pt_splice,
		.splice_send = pt_splice,
	};
	int fd = fuse_session_fd(fs->se);

	atomic_store(&fs->pt_state, FS_PT_OFF);
	if (!fs->cfg->passthrough || geteuid() != 0 || fd < 0)
		return;
	atomic_store(&fs->pt_state, FS_PT_WAIT_INIT);
	if (fuse_session_custom_io(fs->se, &io, fd))
		atomic_store(&fs->pt_state, FS_PT_OFF);
}

int fs_pt_open(struct fs *fs, int fd)
{
	struct fuse_backing_map map = { .fd = fd };
	int id;

	if (atomic_load(&fs->pt_state) != FS_PT_ON)
		return 0;
	id = ioctl(fuse_session_fd(fs->se), FUSE_DEV_IOC_BACKING_OPEN, &map);
	if (id > 0) {
		static atomic_int told;

		if (!atomic_exchange(&told, 1))
			mgmtfs_info("FUSE passthrough on: reads and writes go straight to "
				    "local_dir");
		return id;
	}
	if (errno == EPERM || errno == EOPNOTSUPP || errno == ENOTTY || errno == EINVAL) {
		int expected = FS_PT_ON;

		if (atomic_compare_exchange_strong(&fs->pt_state, &expected, FS_PT_OFF)) {
			char eb[128];

			mgmtfs_info("FUSE passthrough not available (%s): writes go through the "
				    "daemon", mgmtfs_strerror(-errno, eb, sizeof(eb)));
		}
	}
	return 0;
}

void fs_pt_close(struct fs *fs, int id)
{
	uint32_t bid = (uint32_t)id;

	if (id > 0 && ioctl(fuse_session_fd(fs->se), FUSE_DEV_IOC_BACKING_CLOSE, &bid) < 0)
		mgmtfs_debug("closing backing id %d: %s", id, strerror(errno));
}

void fs_pt_next_reply(int id)
{
	reply_backing_id = id;
}
