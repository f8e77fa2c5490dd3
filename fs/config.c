/*
 * config.c - settings from -o options, the environment and a config file.
 *
 * Order of precedence: -o > environment > config file
 * (~/.config/mgmtfs/config, else /etc/mgmtfs.conf) > defaults.  Each source
 * is applied in turn over the previous one, so the later wins.  The mgmt
 * CLI's names (MGMT_BUCKET, MGMT_OBJECT_PREFIX, MGMT_LOCAL_DIR,
 * MGMT_COMPLETED_DIR) and the AWS ones stay valid.  Secrets come only from
 * the environment or the AWS credentials file, never from argv; a
 * credentials file readable by group or others is refused.
 */
#include "fs/config.h"
#include "s3/s3.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


static const char usage_text[] =
	"usage: mgmtfs MOUNTPOINT [-f] [-o OPTION[,OPTION...]]\n"
	"       mgmtfs list [--status S] [--json] [--local-dir DIR]\n"
	"       mgmtfs show PATH|ID [--json] [--local-dir DIR]\n"
	"       mgmtfs retry PATH...|--failed [--local-dir DIR]\n"
	"       mgmtfs status [--watch] | stats | hold | resume [MOUNTPOINT] [--local-dir DIR]\n"
	"       mgmtfs rebuild [--prefix P] [--bucket B] [--json] [--local-dir DIR]\n"
	"\n"
	"Copy a file into MOUNTPOINT/pending/: it is compressed, uploaded to S3 and\n"
	"moved to MOUNTPOINT/completed/; its record is shown by getfattr -d.\n"
	"\n"
	"mount options (-o), environment names in brackets:\n"
	"  bucket=NAME            S3 bucket (MGMT_BUCKET), required\n"
	"  prefix=P               object key prefix (MGMT_OBJECT_PREFIX)\n"
	"  local_dir=DIR          backing directory (MGMT_LOCAL_DIR)\n"
	"                         default ~/.local/share/mgmtfs\n"
	"  completed_dir=DIR      where uploaded files go (MGMT_COMPLETED_DIR)\n"
	"                         default LOCAL_DIR/completed\n"
	"  settle=SECONDS         quiet time after the last close, default 1\n"
	"  dir_settle=SECONDS     quiet time for a directory unit, default 5\n"
	"  compression=tar.gz|gzip|tar|auto|none   default tar.gz\n"
	"  level=1..9             compression level, default 6\n"
	"  part_size=SIZE         multipart part size, default 16M (grown for\n"
	"                         huge files so no object needs 10,000 parts)\n"
	"  parts_in_flight=N      parts uploaded at once per file, default 4\n"
	"  uploads=N              files uploaded at once, default 4\n"
	"  buffer_memory=SIZE     part buffers of all uploads together, default\n"
	"                         192M: (parts_in_flight + 1) x part_size for a\n"
	"                         multipart upload, its size for one PUT; uploads\n"
	"                         wait for room (one always runs)\n"
	"  buffer_idle=SECONDS    give the part buffers back to the system after\n"
	"                         this long without an upload, default 60\n"
	"  threads=N              compression threads, default all cores\n"
	"  endpoint=URL           S3 endpoint (AWS_ENDPOINT_URL)\n"
	"  region=R               (AWS_REGION) default us-east-1\n"
	"  addressing=auto|path|virtual   default auto (path for IPs, localhost)\n"
	"  payload_signing=yes|no sign the sha256 of uploaded data, default yes;\n"
	"                         no: UNSIGNED-PAYLOAD, Content-MD5 alone guards\n"
	"                         it (less CPU on both sides; meant for https)\n"
	"  sse=AES256|aws:kms|aws:kms:dsse   ask S3 to encrypt each object\n"
	"                         (x-amz-server-side-encryption); default: as the\n"
	"                         bucket does\n"
	"  sse_kms_key_id=ID      the KMS key for sse=aws:kms (implies it)\n"
	"  ignore=GLOB[:GLOB...]  names never uploaded (besides .*, *.part,\n"
	"                         *.tmp, *~)\n"
	"  max_attempts=N         tries per request, default 8\n"
	"  retry_max_seconds=S    backoff budget per request, default 120\n"
	"  stall_seconds=S        cut a transfer idle this long, default 30\n"
	"  hold                   start no upload on this mount (MGMT_HOLD=1)\n"
	"  passthrough=1|0        writes go from the kernel straight to local_dir\n"
	"                         (FUSE passthrough: root, Linux 6.9+), default 1\n"
	"  insecure               do not verify TLS certificates\n"
	"  allow_other            let other users use the mount\n"
	"  debug                  log every step\n"
	"credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,\n"
	"  or AWS_PROFILE in ~/.aws/credentials (must not be readable by others)\n"
	"config file: ~/.config/mgmtfs/config or /etc/mgmtfs.conf, KEY=VALUE lines\n"
	"  with the option names above\n"
	"-f: stay in the foreground    -h, --help    -V, --version\n";

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

static int set_str(char **dst, const char *val)
{
	char *copy = strdup(val);

	if (!copy)
		return -ENOMEM;
	free(*dst);
	*dst = copy;
	return 0;
}

static void wipe_str(char **s)
{
	if (*s) {
		explicit_bzero(*s, strlen(*s));
		free(*s);
		*s = NULL;
	}
}

int cfg_parse_size(const char *s, size_t *out)
{
	char *end = NULL;
	unsigned long long v;
	unsigned shift = 0;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -EINVAL;
	switch (toupper((unsigned char)*end)) {
	case '\0':
		break;
	case 'K':
		shift = 10;
		break;
	case 'M':
		shift = 20;
		break;
	case 'G':
		shift = 30;
		break;
	default:
		return -EINVAL;
	}
	if (*end && end[1] && !(toupper((unsigned char)end[1]) == 'I' && end[2] == 'B' && !end[3]) &&
	    !(toupper((unsigned char)end[1]) == 'B' && !end[2]))
		return -EINVAL;
	if (v > (SIZE_MAX >> shift))
		return -EINVAL;
	*out = (size_t)(v << shift);
	return 0;
}

static int parse_int(const char *s, long lo, long hi, long *out)
{
	char *end = NULL;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_seconds(const char *s, double *out)
{
	char *end = NULL;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || v < 0 || v > 86400.0 * 365)
		return -EINVAL;
	*out = v;
	return 0;
}

static int set_ignore(struct mgmtfs_config *cfg, const char *val)
{
	size_t n = 1, i = 0;
	const char *p;
	char **list = NULL;
	char *copy = NULL, *save = NULL, *tok;

	for (p = val; *p; p++)
		n += *p == ':';
	list = calloc(n + 1, sizeof(*list));
	copy = strdup(val);
	if (!list || !copy)
		goto nomem;
	for (tok = strtok_r(copy, ":", &save); tok; tok = strtok_r(NULL, ":", &save)) {
		list[i] = strdup(tok);
		if (!list[i++])
			goto nomem;
	}
	free(copy);
	if (cfg->ignore) {
		for (char **g = cfg->ignore; *g; g++)
			free(*g);
		free(cfg->ignore);
	}
	cfg->ignore = list;
	return 0;
nomem:
	if (list) {
		for (i = 0; i < n; i++)
			free(list[i]);
	}
	free(list);
	free(copy);
	return -ENOMEM;
}

/*
 * Apply one KEY=VALUE (or a bare flag) from any source.  @src names the
 * source in error messages.  Returns 0, -ENOENT for an unknown key, or
 * -EINVAL with @err filled.
 */
static int apply(struct mgmtfs_config *cfg, const char *key, const char *val, const char *src,
		 char *err, size_t errlen)
{
	long l;
	int rc = 0;

	static const char *const with_value[] = {
		"bucket", "prefix", "local_dir", "completed_dir", "settle", "dir_settle",
		"compression", "level", "part_size", "buffer_memory", "buffer_idle", "parts_in_flight",
		"uploads", "threads",
		"max_attempts", "retry_max_seconds", "stall_seconds", "endpoint", "region",
		"addressing", "payload_signing", "ignore", "sse", "sse_kms_key_id", NULL
	};

	for (int i = 0; with_value[i]; i++) {
		if (!val && !strcmp(key, with_value[i]))
			return fail(err, errlen, "option '%s' needs a value (%s=...) in %s", key,
				    key, src);
	}
	if (!strcmp(key, "bucket")) {
		rc = set_str(&cfg->bucket, val);
	} else if (!strcmp(key, "prefix")) {
		while (*val == '/')
			val++;
		rc = set_str(&cfg->prefix, val);
		if (!rc) {
			size_t n = strlen(cfg->prefix);

			while (n && cfg->prefix[n - 1] == '/')
				cfg->prefix[--n] = '\0';
		}
	} else if (!strcmp(key, "local_dir")) {
		rc = set_str(&cfg->local_dir, val);
	} else if (!strcmp(key, "completed_dir")) {
		rc = set_str(&cfg->completed_dir, val);
	} else if (!strcmp(key, "settle") || !strcmp(key, "dir_settle") ||
		   !strcmp(key, "buffer_idle")) {
		double d;

		if (parse_seconds(val, &d))
			return fail(err, errlen, "%s='%s' in %s: give seconds, e.g. %s=1.5", key,
				    val, src, key);
		if (key[0] == 's')
			cfg->settle = d;
		else if (key[0] == 'd')
			cfg->dir_settle = d;
		else
			cfg->buffer_idle = d;
	} else if (!strcmp(key, "compression")) {
		if (arc_format_parse(val, &cfg->compression))
			return fail(err, errlen,
				    "compression='%s' in %s: use tar.gz, gzip, tar, auto or none", val,
				    src);
	} else if (!strcmp(key, "level")) {
		if (parse_int(val, 1, 9, &l))
			return fail(err, errlen, "level='%s' in %s: use a number from 1 to 9", val,
				    src);
		cfg->level = (int)l;
	} else if (!strcmp(key, "part_size")) {
		if (cfg_parse_size(val, &cfg->part_size) || cfg->part_size < (1u << 20) ||
		    cfg->part_size > ((size_t)5 << 30))
			return fail(err, errlen,
				    "part_size='%s' in %s: use a size from 1M to 5G, e.g. 8M", val,
				    src);
	} else if (!strcmp(key, "buffer_memory")) {
		if (cfg_parse_size(val, &cfg->buffer_memory) || cfg->buffer_memory < (1u << 20))
			return fail(err, errlen,
				    "buffer_memory='%s' in %s: use a size of at least 1M, e.g. 192M",
				    val, src);
	} else if (!strcmp(key, "parts_in_flight") || !strcmp(key, "uploads") ||
		   !strcmp(key, "threads") || !strcmp(key, "max_attempts")) {
		if (parse_int(val, key[0] == 't' ? 0 : 1, 64, &l))
			return fail(err, errlen, "%s='%s' in %s: use a number from %d to 64", key,
				    val, src, key[0] == 't' ? 0 : 1);
		if (key[0] == 'p')
			cfg->parts_in_flight = (int)l;
		else if (key[0] == 'u')
			cfg->uploads = (int)l;
		else if (key[0] == 't')
			cfg->threads = (int)l;
		else
			cfg->max_attempts = (int)l;
	} else if (!strcmp(key, "retry_max_seconds") || !strcmp(key, "stall_seconds")) {
		double d;

		if (parse_seconds(val, &d) || d < 1)
			return fail(err, errlen, "%s='%s' in %s: give seconds (at least 1)", key,
				    val, src);
		if (key[0] == 'r')
			cfg->retry_max_seconds = d;
		else
			cfg->stall_seconds = (long)d;
	} else if (!strcmp(key, "endpoint")) {
		rc = set_str(&cfg->endpoint, val);
	} else if (!strcmp(key, "region")) {
		rc = set_str(&cfg->region, val);
	} else if (!strcmp(key, "addressing")) {
		if (!strcmp(val, "auto"))
			cfg->path_style = -1;
		else if (!strcmp(val, "path"))
			cfg->path_style = 1;
		else if (!strcmp(val, "virtual"))
			cfg->path_style = 0;
		else
			return fail(err, errlen, "addressing='%s' in %s: use auto, path or virtual",
				    val, src);
	} else if (!strcmp(key, "payload_signing")) {
		if (!strcmp(val, "yes"))
			cfg->unsigned_payload = 0;
		else if (!strcmp(val, "no"))
			cfg->unsigned_payload = 1;
		else
			return fail(err, errlen, "payload_signing='%s' in %s: use yes or no", val,
				    src);
	} else if (!strcmp(key, "sse")) {
		if (strcmp(val, "AES256") && strcmp(val, "aws:kms") && strcmp(val, "aws:kms:dsse"))
			return fail(err, errlen,
				    "sse='%s' in %s: use AES256, aws:kms or aws:kms:dsse", val, src);
		rc = set_str(&cfg->sse, val);
	} else if (!strcmp(key, "sse_kms_key_id")) {
		if (!*val || strpbrk(val, "\r\n"))
			return fail(err, errlen, "sse_kms_key_id in %s: give a KMS key id or ARN", src);
		rc = set_str(&cfg->sse_kms_key_id, val);
	} else if (!strcmp(key, "ignore")) {
		rc = set_ignore(cfg, val);
	} else if (!strcmp(key, "hold")) {
		cfg->hold = !val || strcmp(val, "0");
	} else if (!strcmp(key, "passthrough")) {
		cfg->passthrough = !val || strcmp(val, "0");
	} else if (!strcmp(key, "insecure")) {
		cfg->insecure = !val || strcmp(val, "0");
	} else if (!strcmp(key, "debug")) {
		cfg->debug = !val || strcmp(val, "0");
	} else if (!strcmp(key, "allow_other")) {
		cfg->allow_other = 1;
	} else if (!strcmp(key, "secret_key") || !strcmp(key, "access_key") ||
		   !strcmp(key, "session_token")) {
		return fail(err, errlen,
			    "'%s' cannot be given in %s: set AWS_ACCESS_KEY_ID and "
			    "AWS_SECRET_ACCESS_KEY in the environment or use ~/.aws/credentials",
			    key, src);
	} else if (!strcmp(key, "default_permissions") || !strcmp(key, "rw") ||
		   !strcmp(key, "dev") || !strcmp(key, "suid") || !strcmp(key, "nodev") ||
		   !strcmp(key, "nosuid") || !strcmp(key, "exec") || !strcmp(key, "noexec") ||
		   !strcmp(key, "atime") || !strcmp(key, "noatime") || !strcmp(key, "_netdev") ||
		   !strcmp(key, "auto") || !strcmp(key, "noauto") || !strcmp(key, "user") ||
		   !strcmp(key, "nouser") || !strcmp(key, "defaults")) {
		/* fstab and mount(8) noise: default_permissions is always on */
	} else {
		return -ENOENT;
	}
	return rc;
}

static const struct {
	const char *env;
	const char *key;
} env_names[] = {
	{ "MGMT_BUCKET", "bucket" },
	{ "MGMT_OBJECT_PREFIX", "prefix" },
	{ "MGMT_LOCAL_DIR", "local_dir" },
	{ "MGMT_COMPLETED_DIR", "completed_dir" },
	{ "MGMT_SETTLE", "settle" },
	{ "MGMT_COMPRESSION", "compression" },
	{ "MGMT_LEVEL", "level" },
	{ "MGMT_HOLD", "hold" },
	{ "MGMT_PASSTHROUGH", "passthrough" },
	{ "AWS_ENDPOINT_URL_S3", "endpoint" },
	{ "AWS_ENDPOINT_URL", "endpoint" },
	{ "AWS_DEFAULT_REGION", "region" },
	{ "AWS_REGION", "region" },
};

static const char *home_dir(void)
{
	const char *h = getenv("HOME");

	return h && *h ? h : "/root";
}

static int apply_file(struct mgmtfs_config *cfg, const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "re");
	char line[4096];
	int lineno = 0, rc = 0;

	if (!f)
		return 0;
	while (!rc && fgets(line, sizeof(line), f)) {
		char *k = line, *v, *e;
		char src[PATH_MAX + 32];

		lineno++;
		while (isspace((unsigned char)*k))
			k++;
		if (!*k || *k == '#')
			continue;
		e = k + strlen(k);
		while (e > k && isspace((unsigned char)e[-1]))
			*--e = '\0';
		v = strchr(k, '=');
		if (v) {
			e = v;
			*v++ = '\0';
			while (e > k && isspace((unsigned char)e[-1]))
				*--e = '\0';
			while (isspace((unsigned char)*v))
				v++;
		}
		for (e = k; *e; e++)
			*e = (char)tolower((unsigned char)*e);
		snprintf(src, sizeof(src), "%s line %d", path, lineno);
		rc = apply(cfg, k, v, src, err, errlen);
		if (rc == -ENOENT)
			rc = fail(err, errlen, "unknown setting '%s' in %s: see mgmtfs --help", k,
				  src);
	}
	fclose(f);
	return rc;
}

static int apply_defaults_file_env(struct mgmtfs_config *cfg, char *err, size_t errlen)
{
	char path[PATH_MAX];
	int rc;

	cfg->settle = 1.0;
	cfg->dir_settle = 5.0;
	cfg->compression = ARC_TAR_GZ;
	cfg->level = 6;
	cfg->part_size = (size_t)16 << 20;
	cfg->buffer_memory = (size_t)192 << 20;
	cfg->buffer_idle = 60.0;
	cfg->parts_in_flight = 4;
	cfg->uploads = 4;
	cfg->passthrough = 1;
	cfg->path_style = -1;
	cfg->max_attempts = 8;
	cfg->retry_max_seconds = 120;
	cfg->stall_seconds = 30;
	if (!cfg->prefix && set_str(&cfg->prefix, ""))
		return -ENOMEM;

	snprintf(path, sizeof(path), "%s/.config/mgmtfs/config", home_dir());
	if (access(path, F_OK))
		snprintf(path, sizeof(path), "/etc/mgmtfs.conf");
	rc = apply_file(cfg, path, err, errlen);
	if (rc)
		return rc;
	for (size_t i = 0; i < sizeof(env_names) / sizeof(env_names[0]); i++) {
		const char *v = getenv(env_names[i].env);

		if (v && *v) {
			rc = apply(cfg, env_names[i].key, v, env_names[i].env, err, errlen);
			if (rc)
				return rc;
		}
	}
	return 0;
}

/* Make @dir absolute and existing (mkdir -p); on failure fill @err. */
static int ensure_dir(char **dir, const char *what, char *err, size_t errlen)
{
	char tmp[PATH_MAX], abs[PATH_MAX];
	char *p;

	if (snprintf(tmp, sizeof(tmp), "%s", *dir) >= (int)sizeof(tmp))
		return fail(err, errlen, "%s '%s' is too long", what, *dir);
	for (p = tmp + 1; *p; p++) {
		if (*p == '/') {
			*p = '\0';
			if (mkdir(tmp, 0755) && errno != EEXIST)
				break;
			*p = '/';
		}
	}
	if (mkdir(tmp, 0755) && errno != EEXIST)
		return fail(err, errlen, "cannot create %s '%s': %m: choose a writable directory",
			    what, *dir);
	if (!realpath(tmp, abs))
		return fail(err, errlen, "%s '%s': %m", what, *dir);
	if (access(abs, W_OK | X_OK))
		return fail(err, errlen,
			    "%s '%s' is not writable: fix its permissions or choose another "
			    "(local_dir=DIR)",
			    what, abs);
	return set_str(dir, abs);
}

/* Read AWS credentials from the environment, or the profile in the credentials file. */
static int load_credentials(struct mgmtfs_config *cfg, char *err, size_t errlen)
{
	const char *ak = getenv("AWS_ACCESS_KEY_ID");
	const char *sk = getenv("AWS_SECRET_ACCESS_KEY");
	const char *tok = getenv("AWS_SESSION_TOKEN");
	const char *profile = getenv("AWS_PROFILE");
	const char *file = getenv("AWS_SHARED_CREDENTIALS_FILE");
	char path[PATH_MAX], line[4096], want[256];
	struct stat st;
	FILE *f = NULL;
	int in = 0;

	if (ak && *ak && sk && *sk) {
		if (set_str(&cfg->access_key, ak) || set_str(&cfg->secret_key, sk) ||
		    (tok && *tok && set_str(&cfg->session_token, tok)))
			return -ENOMEM;
		return 0;
	}
	if (file && *file)
		snprintf(path, sizeof(path), "%s", file);
	else
		snprintf(path, sizeof(path), "%s/.aws/credentials", home_dir());
	snprintf(want, sizeof(want), "[%s]", profile && *profile ? profile : "default");
	f = fopen(path, "re");
	if (!f)
		return fail(err, errlen,
			    "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
			    "or write them to %s",
			    path);
	if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077)) {
		fclose(f);
		return fail(err, errlen,
			    "credentials file '%s' is readable by others (mode %03o): run "
			    "chmod 600 '%s'",
			    path, (unsigned)(st.st_mode & 0777), path);
	}
	while (fgets(line, sizeof(line), f)) {
		char *k = line, *v, *e;

		while (isspace((unsigned char)*k))
			k++;
		e = k + strlen(k);
		while (e > k && isspace((unsigned char)e[-1]))
			*--e = '\0';
		if (*k == '[') {
			in = !strcmp(k, want);
			continue;
		}
		if (!in || !(v = strchr(k, '=')))
			continue;
		e = v;
		*v++ = '\0';
		while (e > k && isspace((unsigned char)e[-1]))
			*--e = '\0';
		while (isspace((unsigned char)*v))
			v++;
		if (!strcmp(k, "aws_access_key_id"))
			set_str(&cfg->access_key, v);
		else if (!strcmp(k, "aws_secret_access_key"))
			set_str(&cfg->secret_key, v);
		else if (!strcmp(k, "aws_session_token"))
			set_str(&cfg->session_token, v);
	}
	explicit_bzero(line, sizeof(line));
	fclose(f);
	if (!cfg->access_key || !cfg->secret_key)
		return fail(err, errlen,
			    "no S3 credentials for profile %s in %s: set AWS_ACCESS_KEY_ID and "
			    "AWS_SECRET_ACCESS_KEY",
			    want, path);
	return 0;
}

static int finish_paths(struct mgmtfs_config *cfg, char *err, size_t errlen)
{
	char buf[PATH_MAX];
	int rc;

	if (!cfg->local_dir) {
		const char *xdg = getenv("XDG_DATA_HOME");

		if (xdg && *xdg)
			snprintf(buf, sizeof(buf), "%s/mgmtfs", xdg);
		else
			snprintf(buf, sizeof(buf), "%s/.local/share/mgmtfs", home_dir());
		if (set_str(&cfg->local_dir, buf))
			return -ENOMEM;
	}
	rc = ensure_dir(&cfg->local_dir, "local_dir", err, errlen);
	if (rc)
		return rc;
	if (!cfg->completed_dir) {
		snprintf(buf, sizeof(buf), "%s/completed", cfg->local_dir);
		if (set_str(&cfg->completed_dir, buf))
			return -ENOMEM;
	}
	rc = ensure_dir(&cfg->completed_dir, "completed_dir", err, errlen);
	if (rc)
		return rc;
	snprintf(buf, sizeof(buf), "%s/pending", cfg->local_dir);
	if (!strcmp(buf, cfg->completed_dir))
		return fail(err, errlen, "completed_dir must not be LOCAL_DIR/pending");
	snprintf(buf, sizeof(buf), "%s/.mgmt", cfg->local_dir);
	return set_str(&cfg->db_dir, buf);
}

int cfg_parse_mount(int argc, char **argv, struct mgmtfs_config *cfg, char *err, size_t errlen)
{
	char abs[PATH_MAX];
	struct stat st;
	int rc;

	memset(cfg, 0, sizeof(*cfg));
	rc = apply_defaults_file_env(cfg, err, errlen);
	if (rc)
		return rc;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			fputs(usage_text, stdout);
			return 1;
		}
		if (!strcmp(a, "-V") || !strcmp(a, "--version")) {
			printf("mgmtfs %s\n", MGMTFS_VERSION);
			return 1;
		}
		if (!strcmp(a, "-f")) {
			cfg->foreground = 1;
		} else if (!strcmp(a, "-d")) {
			cfg->foreground = 1;
			cfg->debug = 1;
		} else if (!strncmp(a, "-o", 2)) {
			const char *opts = a[2] ? a + 2 : (i + 1 < argc ? argv[++i] : NULL);
			char *copy, *save = NULL, *tok;

			if (!opts)
				return fail(err, errlen, "-o needs options: -o bucket=NAME,...");
			copy = strdup(opts);
			if (!copy)
				return -ENOMEM;
			for (tok = strtok_r(copy, ",", &save); tok && !rc;
			     tok = strtok_r(NULL, ",", &save)) {
				char *eq = strchr(tok, '=');

				if (eq)
					*eq++ = '\0';
				rc = apply(cfg, tok, eq, "-o", err, errlen);
				if (rc == -ENOENT)
					rc = fail(err, errlen,
						  "unknown option '%s': see mgmtfs --help", tok);
			}
			free(copy);
			if (rc)
				return rc;
		} else if (a[0] == '-') {
			return fail(err, errlen, "unknown option '%s': see mgmtfs --help", a);
		} else if (!cfg->mountpoint) {
			if (set_str(&cfg->mountpoint, a))
				return -ENOMEM;
		} else {
			return fail(err, errlen,
				    "unexpected argument '%s': give one MOUNTPOINT (see mgmtfs --help)",
				    a);
		}
	}
	if (!cfg->mountpoint)
		return fail(err, errlen, "no mountpoint: mgmtfs MOUNTPOINT -o bucket=NAME");
	if (stat(cfg->mountpoint, &st) || !S_ISDIR(st.st_mode))
		return fail(err, errlen, "mountpoint '%s' is not a directory: mkdir -p it first",
			    cfg->mountpoint);
	if (!realpath(cfg->mountpoint, abs))
		return fail(err, errlen, "mountpoint '%s': %m", cfg->mountpoint);
	if (set_str(&cfg->mountpoint, abs))
		return -ENOMEM;
	if (!cfg->bucket || !*cfg->bucket)
		return fail(err, errlen, "no bucket: give -o bucket=NAME or set MGMT_BUCKET");
	rc = cfg_finish_s3(cfg, err, errlen);
	if (rc)
		return rc;
	if (!strncmp(cfg->local_dir ? cfg->local_dir : "", cfg->mountpoint,
		     strlen(cfg->mountpoint)) &&
	    cfg->local_dir)
		return fail(err, errlen, "local_dir must not be inside the mountpoint");
	return finish_paths(cfg, err, errlen);
}

int cfg_set(struct mgmtfs_config *cfg, const char *key, const char *val, const char *src,
	    char *err, size_t errlen)
{
	return apply(cfg, key, val, src, err, errlen);
}

int cfg_finish_s3(struct mgmtfs_config *cfg, char *err, size_t errlen)
{
	if (!cfg->region && set_str(&cfg->region, "us-east-1"))
		return -ENOMEM;
	if (!cfg->endpoint) {
		char ep[300];

		snprintf(ep, sizeof(ep), "https://s3.%s.amazonaws.com", cfg->region);
		if (set_str(&cfg->endpoint, ep))
			return -ENOMEM;
	}
	if (strncmp(cfg->endpoint, "http://", 7) && strncmp(cfg->endpoint, "https://", 8))
		return fail(err, errlen,
			    "endpoint '%s' is not a URL: use http://HOST:PORT or https://HOST",
			    cfg->endpoint);
	if (cfg->sse_kms_key_id && !cfg->sse && set_str(&cfg->sse, "aws:kms"))
		return -ENOMEM;
	if (cfg->sse_kms_key_id && strncmp(cfg->sse, "aws:kms", 7))
		return fail(err, errlen,
			    "sse_kms_key_id is for sse=aws:kms (or aws:kms:dsse), not sse=%s",
			    cfg->sse);
	return load_credentials(cfg, err, errlen);
}

int cfg_load_for_cli(const char *local_dir, struct mgmtfs_config *cfg, char *err, size_t errlen)
{
	int rc;

	memset(cfg, 0, sizeof(*cfg));
	rc = apply_defaults_file_env(cfg, err, errlen);
	if (rc)
		return rc;
	if (local_dir && set_str(&cfg->local_dir, local_dir))
		return -ENOMEM;
	return finish_paths(cfg, err, errlen);
}

void cfg_s3_config(const struct mgmtfs_config *cfg, struct s3_config *out)
{
	*out = (struct s3_config){
		.endpoint = cfg->endpoint,
		.region = cfg->region,
		.bucket = cfg->bucket,
		.access_key = cfg->access_key,
		.secret_key = cfg->secret_key,
		.session_token = cfg->session_token,
		.path_style = cfg->path_style,
		.unsigned_payload = cfg->unsigned_payload,
		.sse = cfg->sse,
		.sse_kms_key_id = cfg->sse_kms_key_id,
		.insecure = cfg->insecure,
		.max_attempts = cfg->max_attempts,
		.retry_max_seconds = cfg->retry_max_seconds,
		.stall_seconds = cfg->stall_seconds,
	};
}

void cfg_release(struct mgmtfs_config *cfg)
{
	free(cfg->mountpoint);
	free(cfg->bucket);
	free(cfg->prefix);
	free(cfg->local_dir);
	free(cfg->completed_dir);
	free(cfg->db_dir);
	free(cfg->endpoint);
	free(cfg->region);
	free(cfg->access_key);
	free(cfg->sse);
	free(cfg->sse_kms_key_id);
	wipe_str(&cfg->secret_key);
	wipe_str(&cfg->session_token);
	if (cfg->ignore) {
		for (char **g = cfg->ignore; *g; g++)
			free(*g);
		free(cfg->ignore);
	}
	memset(cfg, 0, sizeof(*cfg));
}

int cfg_name_ignored(const struct mgmtfs_config *cfg, const char *name)
{
	size_t n = strlen(name);

	if (name[0] == '.' || (n && name[n - 1] == '~'))
		return 1;
	if ((n > 5 && !strcmp(name + n - 5, ".part")) || (n > 4 && !strcmp(name + n - 4, ".tmp")))
		return 1;
	for (char **g = cfg->ignore; g && *g; g++) {
		if (!fnmatch(*g, name, 0))
			return 1;
	}
	return 0;
}

/* ---- the daemon's lock on local_dir ------------------------------------ */

static int lock_open(const struct mgmtfs_config *cfg, int flags)
{
	char path[PATH_MAX];
	int fd;

	if (snprintf(path, sizeof(path), "%s/daemon.lock", cfg->db_dir) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	fd = open(path, flags | O_CLOEXEC, 0644);
	return fd < 0 ? -errno : fd;
}

int cfg_lock_local_dir(const struct mgmtfs_config *cfg, char *holder, size_t len)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
	int fd = lock_open(cfg, O_RDWR | O_CREAT), rc;
	ssize_t n;

	if (fd < 0)
		return fd;
	if (fcntl(fd, F_OFD_SETLK, &fl)) {
		rc = errno == EAGAIN || errno == EACCES ? -EBUSY : -errno;
		n = rc == -EBUSY && len ? pread(fd, holder, len - 1, 0) : 0;
		if (len)
			holder[n > 0 ? n : 0] = '\0';
		close(fd);
		return rc;
	}
	if (ftruncate(fd, 0) || pwrite(fd, cfg->mountpoint, strlen(cfg->mountpoint), 0) < 0) {
		rc = -errno;
		close(fd);
		return rc;
	}
	return fd;
}

int cfg_local_dir_mounted(const struct mgmtfs_config *cfg)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
	int fd = lock_open(cfg, O_RDONLY), held;

	if (fd < 0)
		return 0;	/* no daemon ever ran here */
	held = fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;
	close(fd);
	return held;
}
