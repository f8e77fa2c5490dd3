/*
 * config.h - mgmtfs settings: parsed once at startup from -o options, the
 * environment and a config file (in that order of precedence), validated,
 * then passed around as const and never changed (so no lock).
 */
#ifndef MGMTFS_FS_CONFIG_H
#define MGMTFS_FS_CONFIG_H

#include <stddef.h>

#include "archive/arc.h"

struct mgmtfs_config {
	char *mountpoint;	/* owned, absolute */
	char *bucket;		/* owned */
	char *prefix;		/* owned, "" or without leading/trailing '/' */
	char *local_dir;	/* owned, absolute */
	char *completed_dir;	/* owned, absolute */
	char *db_dir;		/* owned: LOCAL_DIR/.mgmt */
	double settle;		/* seconds */
	double dir_settle;
	enum arc_format compression;
	int level;
	size_t part_size;
	size_t buffer_memory;	/* part buffers of all uploads together */
	double buffer_idle;	/* seconds without an upload before they are given back */
	int parts_in_flight;
	int uploads;
	int threads;		/* compression threads, 0 = all cores */
	int hold;
	int passthrough;		/* FUSE passthrough when the kernel allows (root) */
	int foreground;
	int debug;
	int allow_other;
	/* S3 */
	char *endpoint;		/* owned */
	char *region;		/* owned */
	char *access_key;	/* owned */
	char *secret_key;	/* owned, wiped at free */
	char *session_token;	/* owned, wiped at free, may be NULL */
	int path_style;		/* -1 auto */
	int unsigned_payload;	/* payload_signing=no */
	char *sse;		/* owned: "AES256", "aws:kms", "aws:kms:dsse" or NULL */
	char *sse_kms_key_id;	/* owned, NULL if none */
	int insecure;
	int max_attempts;
	double retry_max_seconds;
	long stall_seconds;
	char **ignore;		/* owned, NULL-terminated globs */
};

/*
 * Parse the mount command line (argv without the program name handled by
 * the caller: argv[0] is the program).  On error writes one line a user can
 * act on into @err and returns -EINVAL (or -ENOMEM).  Returns 1 when
 * --help or --version was printed and the caller should exit 0.
 */
int cfg_parse_mount(int argc, char **argv, struct mgmtfs_config *cfg, char *err, size_t errlen);

/*
 * Fill in only the settings the commands need (local_dir, db_dir,
 * completed_dir) from the environment and config file; @local_dir
 * overrides when not NULL.
 */
int cfg_load_for_cli(const char *local_dir, struct mgmtfs_config *cfg, char *err, size_t errlen);

/*
 * Set option @key to @val as -o would (@src names where it came from, for
 * the message).  0, or -errno with one line in @err.
 */
int cfg_set(struct mgmtfs_config *cfg, const char *key, const char *val, const char *src,
	    char *err, size_t errlen);

/*
 * The S3 settings a command needs besides those: region and endpoint
 * defaults, the endpoint checked, the credentials loaded.  0 or -errno with
 * one line in @err.
 */
int cfg_finish_s3(struct mgmtfs_config *cfg, char *err, size_t errlen);

struct s3_config;
/* The S3 client settings of @cfg (borrowed strings) into *@out, the rest zeroed. */
void cfg_s3_config(const struct mgmtfs_config *cfg, struct s3_config *out);

void cfg_release(struct mgmtfs_config *cfg);

/* Parse "8M", "1048576", "1G" into bytes. 0 or -EINVAL. */
int cfg_parse_size(const char *s, size_t *out);

/* 1 if @name (a top-level entry of pending/) is never uploaded. */
int cfg_name_ignored(const struct mgmtfs_config *cfg, const char *name);

/*
 * One daemon per local_dir: two would upload the same files.  The daemon
 * holds an open-file-description lock on DB_DIR/daemon.lock for its life
 * (a fork keeps it; a kill -9 frees it), the file holding its mountpoint.
 * cfg_lock_local_dir returns the lock's fd, or -EBUSY with the holder's
 * mountpoint in @holder, or another -errno.  cfg_local_dir_mounted says
 * whether a daemon holds it now (1), without taking it.
 */
int cfg_lock_local_dir(const struct mgmtfs_config *cfg, char *holder, size_t len);
int cfg_local_dir_mounted(const struct mgmtfs_config *cfg);

#endif
