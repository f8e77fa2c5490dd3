/*
 * main.c - the mgmtfs program: a command (list, show, ...) or a mount.
 *
 * A mount parses and checks its settings, checks the bucket with the keys
 * given (refusing to mount with one clear line if it cannot be used),
 * opens the record database, mounts, daemonises unless -f, and only then
 * starts the upload threads (fork keeps no threads).  Unmounting stops
 * the threads; uploads in flight stay queued in LMDB and the next mount
 * resumes them.
 */
#include "fs/fs_i.h"

#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "common/log.h"
#include "s3/s3.h"

static void fuse_log_to_ours(enum fuse_log_level level, const char *fmt, va_list ap)
{
	char msg[1024];
	size_t n;

	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(msg);
	while (n && msg[n - 1] == '\n')
		msg[--n] = '\0';
	if ((int)level <= atomic_load(&mgmtfs_log_threshold))
		mgmtfs_log(level <= FUSE_LOG_ERR ? MGMTFS_LOG_ERR
						 : (enum mgmtfs_log_level)level,
			   "fuse: %s", msg);
}

static int stop_listing(const char *key, const char *upload_id, void *arg)
{
	(void)key;
	(void)upload_id;
	(void)arg;
	return 1;
}

/* HEAD the bucket with the configured keys.  0, or -errno with one line in @err. */
static int check_bucket(const struct mgmtfs_config *cfg, char *err, size_t errlen)
{
	struct s3_config sc;
	struct s3_client *c = NULL;
	int level = atomic_load(&mgmtfs_log_threshold);
	int rc;

	cfg_s3_config(cfg, &sc);
	sc.max_attempts = 2;
	sc.retry_max_seconds = 2;
	sc.connect_timeout = 5;
	sc.stall_seconds = 10;
	rc = s3_client_new(&sc, &c);

	if (rc) {
		snprintf(err, errlen, "cannot use endpoint '%s': check the endpoint URL",
			 cfg->endpoint);
		return rc;
	}
	/* one line on failure: the retries' own notes are not wanted here */
	if (level < MGMTFS_LOG_DEBUG)
		atomic_store(&mgmtfs_log_threshold, MGMTFS_LOG_ERR);
	rc = s3_head_bucket(c);
	/* a HEAD has no body: ask again with a GET to learn which 403 it is */
	if (rc == -EACCES && s3_mpu_list(c, "", stop_listing, NULL) == -EACCES)
		rc = -EACCES;
	if (rc)
		snprintf(err, errlen, "cannot use bucket '%s' at %s: %s", cfg->bucket,
			 cfg->endpoint, s3_client_error(c));
	atomic_store(&mgmtfs_log_threshold, level);
	s3_client_free(c);
	return rc;
}

static int mount_main(int argc, char **argv)
{
	struct mgmtfs_config cfg;
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_loop_config *lc = NULL;
	struct store *st = NULL;
	struct fs fs;
	char err[1024] = "", opts[256], eb[128];
	int rc, ret = 1, state_ok = 0, mounted = 0, handlers = 0, lock_fd = -1;
	char holder[PATH_MAX];

	memset(&fs, 0, sizeof(fs));
	rc = cfg_parse_mount(argc, argv, &cfg, err, sizeof(err));
	if (rc == 1) {
		cfg_release(&cfg);
		return 0;
	}
	if (rc) {
		fprintf(stderr, "mgmtfs: error: %s\n", err[0] ? err : "out of memory");
		cfg_release(&cfg);
		return 2;
	}
	if (cfg.debug)
		atomic_store(&mgmtfs_log_threshold, MGMTFS_LOG_DEBUG);
	fuse_set_log_func(fuse_log_to_ours);
	if (s3_global_init()) {
		fprintf(stderr, "mgmtfs: error: cannot initialise libcurl\n");
		goto out;
	}
	if (check_bucket(&cfg, err, sizeof(err))) {
		fprintf(stderr, "mgmtfs: error: %s\n", err);
		goto out;
	}
	rc = store_open(cfg.db_dir, 0, &st);
	if (rc) {
		fprintf(stderr, "mgmtfs: error: cannot open the record database in '%s': %s\n",
			cfg.db_dir, mgmtfs_strerror(rc, eb, sizeof(eb)));
		goto out;
	}
	lock_fd = cfg_lock_local_dir(&cfg, holder, sizeof(holder));
	if (lock_fd == -EBUSY) {
		fprintf(stderr,
			"mgmtfs: error: local_dir '%s' is in use by the mgmtfs mounted on '%s': "
			"unmount it first (fusermount3 -u '%s'), or give this mount another "
			"local_dir\n", cfg.local_dir, holder, holder);
		goto out;
	}
	if (lock_fd < 0) {
		fprintf(stderr, "mgmtfs: error: cannot lock local_dir '%s': %s\n", cfg.local_dir,
			mgmtfs_strerror(lock_fd, eb, sizeof(eb)));
		goto out;
	}
	store_set_lazy_sync(st, 1);
	rc = fs_init_state(&fs, &cfg, st);
	state_ok = 1;
	if (!rc)
		rc = engine_new(&fs, &fs.eng);
	if (rc) {
		fprintf(stderr, "mgmtfs: error: cannot set up: %s\n",
			mgmtfs_strerror(rc, eb, sizeof(eb)));
		goto out;
	}
	snprintf(opts, sizeof(opts), "default_permissions,fsname=mgmtfs,subtype=mgmtfs%s",
		 cfg.allow_other ? ",allow_other" : "");
	if (fuse_opt_add_arg(&args, "mgmtfs") || fuse_opt_add_arg(&args, "-o") ||
	    fuse_opt_add_arg(&args, opts) ||
	    (getenv("MGMTFS_FUSE_DEBUG") && fuse_opt_add_arg(&args, "-d")))
		goto out;
	fs.se = fuse_session_new(&args, &fs_ops, sizeof(fs_ops), &fs);
	if (!fs.se) {
		fprintf(stderr, "mgmtfs: error: cannot start the FUSE session\n");
		goto out;
	}
	if (fuse_set_signal_handlers(fs.se))
		goto out;
	handlers = 1;
	if (fuse_session_mount(fs.se, cfg.mountpoint)) {
		fprintf(stderr,
			"mgmtfs: error: cannot mount on '%s': is /dev/fuse there and the "
			"mountpoint free? (fusermount3 -u '%s')\n",
			cfg.mountpoint, cfg.mountpoint);
		goto out;
	}
	mounted = 1;
	fs_pt_install(&fs);
	if (!cfg.foreground) {
		mgmtfs_log_use_syslog(1);
		openlog("mgmtfs", LOG_PID, LOG_DAEMON);
	}
	if (fuse_daemonize(cfg.foreground))
		goto out;
	rc = engine_start(fs.eng);
	if (rc) {
		mgmtfs_err("cannot start the upload threads: %s",
			   mgmtfs_strerror(rc, eb, sizeof(eb)));
		goto out;
	}
	mgmtfs_info("mounted '%s': bucket '%s' at %s, local_dir '%s'", cfg.mountpoint, cfg.bucket,
		    cfg.endpoint, cfg.local_dir);
	lc = fuse_loop_cfg_create();
	if (!lc)
		goto out;
	fuse_loop_cfg_set_clone_fd(lc, 0);
	fuse_loop_cfg_set_max_threads(lc, 16);
	fuse_loop_cfg_set_idle_threads(lc, 16);
	ret = fuse_session_loop_mt(fs.se, lc) ? 1 : 0;
out:
	if (fs.eng)
		engine_stop(fs.eng);
	if (mounted)
		fuse_session_unmount(fs.se);
	if (handlers)
		fuse_remove_signal_handlers(fs.se);
	if (fs.se)
		fuse_session_destroy(fs.se);
	if (lc)
		fuse_loop_cfg_destroy(lc);
	engine_free(fs.eng);
	if (state_ok)
		fs_release_state(&fs);
	if (st)
		store_sync(st);
	store_close(st);
	if (lock_fd >= 0)
		close(lock_fd);	/* after the last write to the store */
	fuse_opt_free_args(&args);
	s3_global_cleanup();
	cfg_release(&cfg);
	return ret;
}

int main(int argc, char **argv)
{
	/*
	 * Part buffers are large and short-lived: always give them back to the
	 * system (a fixed mmap threshold stops glibc from moving it up and
	 * keeping freed parts in the heap), and few arenas, so that the memory
	 * of an upload does not depend on the size of the file.
	 */
	mallopt(M_MMAP_THRESHOLD, 1 << 20);
	mallopt(M_ARENA_MAX, 4);
	if (argc > 1 && cli_is_command(argv[1]))
		return cli_main(argc - 1, argv + 1);
	return mount_main(argc, argv);
}
