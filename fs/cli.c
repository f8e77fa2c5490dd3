/*
 * cli.c - the commands: list, show, retry, status, stats, hold, resume,
 * rebuild (its work is in rebuild.c).
 *
 * They read and write the record database directly (LMDB allows several
 * processes), so they work while the filesystem is mounted: the daemon
 * picks up a retried record or the hold flag on its next rescan (every second).
 * The database is found from --local-dir, else from the mount a PATH
 * argument is in (the mount root answers user.mgmt.local_dir), else from
 * the only mgmtfs mount, else from the configuration (MGMT_LOCAL_DIR, the
 * config file, the default).
 */
#include "fs/fs_i.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/utf8.h"

static const char *const commands[] = { "list", "show",	"retry",   "status",
					"stats", "hold", "resume", "rebuild", NULL };

int cli_is_command(const char *arg)
{
	for (int i = 0; commands[i]; i++)
		if (!strcmp(arg, commands[i]))
			return 1;
	return 0;
}

struct cli {
	const char *cmd;
	int json;
	int failed;
	int watch;
	int status;		/* -1: all */
	int64_t since;
	const char *local_dir;
	const char *bucket, *prefix;	/* rebuild's --bucket, --prefix */
	struct mgmtfs_config cfg;	/* as open_store() found it */
	char mnt[PATH_MAX];	/* mountpoint found, "" if none */
	char **args;
	int nargs;
	struct store *st;
};

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "mgmtfs: error: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, ": see mgmtfs --help\n");
	return 2;
}

/* ---- output ------------------------------------------------------------- */

/*
 * A JSON string.  File names are bytes: a byte that is not part of valid
 * UTF-8 becomes \udcXX (Python's surrogateescape: os.fsencode() gets the
 * name back), so the output is always valid UTF-8.
 */
static void json_str(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	putchar('"');
	while (*p) {
		size_t n = utf8_len(p);

		if (n == 0) {
			printf("\\udc%02x", *p++);
		} else if (*p == '"' || *p == '\\') {
			printf("\\%c", *p++);
		} else if (*p < 0x20) {
			printf("\\u%04x", *p++);
		} else {
			fwrite(p, 1, n, stdout);
			p += n;
		}
	}
	putchar('"');
}

static void print_json(const struct store_record *rec)
{
	char val[8192];
	int first = 1;

	putchar('{');
	for (const char *const *f = store_field_names; *f; f++) {
		int n = store_field_format(rec, *f, val, sizeof(val) - 1);
		int numeric = !strcmp(*f, "id") || !strcmp(*f, "original_size") ||
			      !strcmp(*f, "compressed_size") || !strcmp(*f, "attempts");

		if (n < 0)
			continue;
		val[(size_t)n < sizeof(val) - 1 ? (size_t)n : sizeof(val) - 1] = '\0';
		printf("%s\"%s\": ", first ? "" : ", ", *f);
		if (numeric)
			fputs(val, stdout);
		else
			json_str(val);
		first = 0;
	}
	putchar('}');
}

static void human_size(uint64_t n, char *buf, size_t len)
{
	const char *units = "BKMGTP";
	double v = (double)n;
	int u = 0;

	while (v >= 1024 && u < 5) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%llu", (unsigned long long)n);
	else
		snprintf(buf, len, "%.1f%c", v, units[u]);
}

static void print_row(const struct store_record *rec)
{
	char size[32], when[32] = "-";
	char esc[1024];

	human_size(rec->original_size, size, sizeof(size));
	if (rec->upload_timestamp)
		store_format_time(rec->upload_timestamp, when, sizeof(when));
	printf("%-6llu %-10s %8s  %-20s  %s%s%s\n", (unsigned long long)rec->id,
	       store_status_name(rec->status), size, when,
	       mgmtfs_escape(rec->completed_path[0] ? rec->completed_path : rec->original_path,
			     esc, sizeof(esc)),
	       rec->s3_object_key[0] ? "  -> " : "", rec->s3_object_key);
	if (rec->status == STORE_FAILED && rec->error[0])
		printf("       error: %s\n", mgmtfs_escape(rec->error, esc, sizeof(esc)));
}

static void print_show(const struct store_record *rec)
{
	char val[8192];

	for (const char *const *f = store_field_names; *f; f++) {
		int n = store_field_format(rec, *f, val, sizeof(val) - 1);

		if (n < 0)
			continue;
		val[(size_t)n < sizeof(val) - 1 ? (size_t)n : sizeof(val) - 1] = '\0';
		printf("%-17s %s\n", *f, val);
	}
}

/* ---- finding the database and records ---------------------------------- */

/* The mountpoint of the mgmtfs mount that holds @path (or the only one if NULL). */
static int find_mount(const char *path, char *out, size_t len)
{
	FILE *f = fopen("/proc/self/mounts", "re");
	char line[PATH_MAX * 2], best[PATH_MAX] = "";
	int count = 0;

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		char dev[256], mnt[PATH_MAX], type[64];

		if (sscanf(line, "%255s %4095s %63s", dev, mnt, type) != 3 ||
		    strcmp(type, "fuse.mgmtfs"))
			continue;
		/* /proc/mounts escapes spaces as \040: good enough for matching prefixes */
		if (path) {
			size_t n = strlen(mnt);

			if (!strncmp(path, mnt, n) && (path[n] == '/' || !path[n]) &&
			    n >= strlen(best))
				snprintf(best, sizeof(best), "%s", mnt);
		} else {
			snprintf(best, sizeof(best), "%s", mnt);
			count++;
		}
	}
	fclose(f);
	if (!best[0] || (!path && count != 1))
		return -ENOENT;
	snprintf(out, len, "%s", best);
	return 0;
}

static int open_store(struct cli *c, const char *path_hint, int readonly)
{
	struct mgmtfs_config *cfg = &c->cfg;
	char err[1024] = "", dir[PATH_MAX], abs[PATH_MAX], eb[128];
	const char *local = c->local_dir;
	ssize_t n;
	int rc;

	{
		const char *p = path_hint && realpath(path_hint, abs) ? abs : NULL;

		/* the mount a PATH is in tells both the database and how to read PATH */
		if (find_mount(p, c->mnt, sizeof(c->mnt)) == 0 && !local) {
			n = getxattr(c->mnt, "user.mgmt.local_dir", dir, sizeof(dir) - 1);
			if (n > 0) {
				dir[n] = '\0';
				local = dir;
			}
		}
	}
	rc = cfg_load_for_cli(local, cfg, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "mgmtfs: error: %s\n", err);
		return 1;
	}
	rc = store_open(cfg->db_dir, readonly, &c->st);
	if (rc == -ENOENT)
		fprintf(stderr,
			"mgmtfs: error: no records in '%s': nothing was uploaded from this "
			"local_dir yet (give --local-dir DIR)\n",
			cfg->local_dir);
	else if (rc)
		fprintf(stderr, "mgmtfs: error: cannot open the record database in '%s': %s\n",
			cfg->db_dir, mgmtfs_strerror(rc, eb, sizeof(eb)));
	return rc ? 1 : 0;
}

/*
 * Resolve @arg (a record id, a path in the mount, or "pending/x" /
 * "completed/x") to a record id.
 */
static int resolve(struct cli *c, const char *arg, uint64_t *id)
{
	char abs[PATH_MAX], rel[PATH_MAX];
	char *end = NULL;
	unsigned long long v;

	errno = 0;
	v = strtoull(arg, &end, 10);
	if (!errno && end != arg && !*end) {
		*id = v;
		return 0;
	}
	snprintf(rel, sizeof(rel), "%s", arg);
	if (c->mnt[0] && realpath(arg, abs)) {
		size_t n = strlen(c->mnt);

		if (!strncmp(abs, c->mnt, n) && abs[n] == '/')
			snprintf(rel, sizeof(rel), "%s", abs + n + 1);
	} else if (c->mnt[0]) {
		/* gone from the mount already (moved): take the part after the mountpoint */
		size_t n = strlen(c->mnt);

		if (!strncmp(arg, c->mnt, n) && arg[n] == '/')
			snprintf(rel, sizeof(rel), "%s", arg + n + 1);
	}
	return store_find_path(c->st, rel, id);
}

/* ---- commands ------------------------------------------------------------ */

struct list_state {
	struct cli *c;
	int count;
};

static int list_cb(const struct store_record *rec, void *arg)
{
	struct list_state *ls = arg;

	if (ls->c->since && rec->started_at && rec->started_at < ls->c->since)
		return 0;
	if (ls->c->json) {
		fputs(ls->count ? ",\n  " : "\n  ", stdout);
		print_json(rec);
	} else {
		print_row(rec);
	}
	ls->count++;
	return 0;
}

static int cmd_list(struct cli *c)
{
	struct list_state ls = { c, 0 };
	int rc;

	if (c->json)
		fputs("[", stdout);
	else
		printf("%-6s %-10s %8s  %-20s  %s\n", "ID", "STATUS", "SIZE", "UPLOADED", "PATH");
	rc = store_list(c->st, c->status, list_cb, &ls);
	if (c->json)
		fputs(ls.count ? "\n]\n" : "]\n", stdout);
	return rc ? 1 : 0;
}

static int cmd_show(struct cli *c)
{
	struct store_record *rec = malloc(sizeof(*rec));
	uint64_t id;
	int ret = 0;

	if (!rec)
		return 1;
	if (resolve(c, c->args[0], &id) || store_get(c->st, id, rec)) {
		fprintf(stderr, "mgmtfs: error: no record for '%s': see mgmtfs list\n", c->args[0]);
		ret = 1;
	} else if (c->json) {
		print_json(rec);
		putchar('\n');
	} else {
		print_show(rec);
	}
	free(rec);
	return ret;
}

static int retry_one(struct cli *c, uint64_t id, const char *what)
{
	struct store_record *rec = malloc(sizeof(*rec));
	int ret = 0;

	if (!rec)
		return 1;
	if (store_get(c->st, id, rec)) {
		fprintf(stderr, "mgmtfs: error: no record for '%s': see mgmtfs list\n", what);
		ret = 1;
	} else if (rec->status != STORE_FAILED) {
		fprintf(stderr, "mgmtfs: error: '%s' is %s, not failed: nothing to retry\n",
			rec->original_path, store_status_name(rec->status));
		ret = 1;
	} else if (rec->flags & STORE_F_WRITE_FAILED) {
		fprintf(stderr, "mgmtfs: error: '%s' is incomplete (a write into it failed): "
			"retrying would upload it truncated; write it again\n",
			rec->original_path);
		ret = 1;
	} else {
		rec->status = STORE_QUEUED;
		rec->error[0] = '\0';
		rec->generation++;
		if (store_put(c->st, rec)) {
			fprintf(stderr, "mgmtfs: error: cannot queue '%s' again\n",
				rec->original_path);
			ret = 1;
		} else {
			printf("queued again: %s\n", rec->original_path);
		}
	}
	free(rec);
	return ret;
}

static int collect_failed(const struct store_record *rec, void *arg)
{
	uint64_t **ids = arg;
	size_t n = (size_t)(*ids)[0];
	uint64_t *grown = realloc(*ids, (n + 2) * sizeof(**ids));

	if (!grown)
		return -ENOMEM;
	grown[n + 1] = rec->id;
	grown[0] = n + 1;
	*ids = grown;
	return 0;
}

static int cmd_retry(struct cli *c)
{
	int ret = 0;

	if (c->failed) {
		uint64_t *ids = calloc(1, sizeof(*ids));

		if (!ids || store_list(c->st, STORE_FAILED, collect_failed, &ids)) {
			free(ids);
			return 1;
		}
		for (uint64_t i = 0; i < ids[0]; i++)
			ret |= retry_one(c, ids[i + 1], "?");
		if (!ids[0])
			printf("no failed uploads\n");
		free(ids);
		return ret;
	}
	for (int i = 0; i < c->nargs; i++) {
		uint64_t id;

		if (resolve(c, c->args[i], &id)) {
			fprintf(stderr, "mgmtfs: error: no record for '%s': see mgmtfs list\n",
				c->args[i]);
			ret = 1;
			continue;
		}
		ret |= retry_one(c, id, c->args[i]);
	}
	return ret;
}

struct stats {
	uint64_t count[STORE_STATUS_COUNT];
	uint64_t in, out;
	struct cli *c;
	int shown;
};

static int stats_cb(const struct store_record *rec, void *arg)
{
	struct stats *s = arg;

	s->count[rec->status]++;
	if (rec->status == STORE_COMPLETED) {
		s->in += rec->original_size;
		s->out += rec->compressed_size;
	}
	return 0;
}

static int status_cb(const struct store_record *rec, void *arg)
{
	struct stats *s = arg;
	char prog[64] = "", path[PATH_MAX + 64], size[32], rate_s[32] = "-", eta_s[32] = "-";
	unsigned long long done = 0, total = 0;
	double secs;
	ssize_t n;

	if (rec->status != STORE_QUEUED && rec->status != STORE_UPLOADING)
		return 0;
	/* bytes done live in the daemon: ask the mount (user.mgmt.progress) */
	if (s->c->mnt[0]) {
		snprintf(path, sizeof(path), "%s/%s", s->c->mnt, rec->original_path);
		n = getxattr(path, "user.mgmt.progress", prog, sizeof(prog) - 1);
		prog[n > 0 ? n : 0] = '\0';
		if (sscanf(prog, "%llu/%llu", &done, &total) != 2)
			done = total = 0;
	}
	secs = (double)(time(NULL) - rec->started_at);
	if (rec->status == STORE_UPLOADING && done && secs > 0) {
		double rate = (double)done / secs;

		human_size((uint64_t)rate, rate_s, sizeof(rate_s));
		snprintf(rate_s + strlen(rate_s), sizeof(rate_s) - strlen(rate_s), "/s");
		snprintf(eta_s, sizeof(eta_s), "%.0fs", (double)(total - done) / rate);
	}
	human_size(rec->original_size, size, sizeof(size));
	if (s->c->json) {
		fputs(s->shown ? ",\n  " : "\n  ", stdout);
		print_json(rec);
	} else {
		printf("%-6llu %-10s %8s  %-22s %10s %6s  %s\n", (unsigned long long)rec->id,
		       store_status_name(rec->status), size, prog[0] ? prog : "-", rate_s, eta_s,
		       rec->original_path);
	}
	s->shown++;
	return 0;
}

static int cmd_status(struct cli *c, int stats_only)
{
	struct stats s = { .c = c };
	char held[8] = "0", mount_held[8] = "0";

	store_meta_get(c->st, "hold", held, sizeof(held));
	store_meta_get(c->st, "mount_hold", mount_held, sizeof(mount_held));
	if (mount_held[0] == '1' && cfg_local_dir_mounted(&c->cfg))
		held[0] = '1';	/* the live mount's -o hold (not that of one a kill -9 ended) */
	if (store_list(c->st, -1, stats_cb, &s))
		return 1;
	if (!stats_only) {
		if (c->json)
			fputs("{\"units\": [", stdout);
		else
			printf("%-6s %-10s %8s  %-22s %10s %6s  %s\n", "ID", "STATUS", "SIZE",
			       "PROGRESS", "RATE", "ETA", "PATH");
		store_list(c->st, -1, status_cb, &s);
		if (c->json)
			printf("%s], ", s.shown ? "\n" : "");
	}
	if (c->json) {
		if (stats_only)
			putchar('{');
		printf("\"held\": %s", held[0] == '1' ? "true" : "false");
		for (int i = 0; i < STORE_STATUS_COUNT; i++)
			printf(", \"%s\": %llu", store_status_name((enum store_status)i),
			       (unsigned long long)s.count[i]);
		printf(", \"bytes_uploaded\": %llu, \"bytes_stored\": %llu}\n",
		       (unsigned long long)s.in, (unsigned long long)s.out);
		return 0;
	}
	printf("%s", stats_only ? "" : "\n");
	for (int i = 0; i < STORE_STATUS_COUNT; i++)
		printf("%s: %llu  ", store_status_name((enum store_status)i),
		       (unsigned long long)s.count[i]);
	printf("\n");
	if (s.in) {
		char a[32], b[32];

		human_size(s.in, a, sizeof(a));
		human_size(s.out, b, sizeof(b));
		printf("uploaded %s as %s (ratio %.2f)\n", a, b, (double)s.out / (double)s.in);
	}
	if (held[0] == '1')
		printf("uploads are held: mgmtfs resume\n");
	return 0;
}

/* hold: until resume, across mounts; resume also lifts a mount's -o hold (engine.c) */
static int cmd_hold(struct cli *c, int on)
{
	if (store_meta_put(c->st, "hold", on ? "1" : "0") ||
	    (!on && store_meta_put(c->st, "mount_hold", "0"))) {
		fprintf(stderr, "mgmtfs: error: cannot %s uploads\n", on ? "hold" : "resume");
		return 1;
	}
	printf(on ? "uploads held: nothing new starts until mgmtfs resume\n"
		  : "uploads resumed\n");
	return 0;
}

static int cmd_rebuild(struct cli *c)
{
	struct mgmtfs_config *cfg = &c->cfg;
	char err[1024] = "out of memory";

	if ((c->bucket && cfg_set(cfg, "bucket", c->bucket, "--bucket", err, sizeof(err))) ||
	    (c->prefix && cfg_set(cfg, "prefix", c->prefix, "--prefix", err, sizeof(err)))) {
		fprintf(stderr, "mgmtfs: error: %s\n", err);
		return 1;
	}
	if (!cfg->bucket || !*cfg->bucket) {
		fprintf(stderr, "mgmtfs: error: no bucket: give --bucket NAME or set MGMT_BUCKET\n");
		return 1;
	}
	if (cfg_finish_s3(cfg, err, sizeof(err))) {
		fprintf(stderr, "mgmtfs: error: %s\n", err);
		return 1;
	}
	return rebuild_run(c->st, cfg, c->json);
}

static void cli_help(const char *cmd)
{
	printf("usage: mgmtfs %s ", cmd);
	if (!strcmp(cmd, "list"))
		printf("[--status S] [--since YYYY-MM-DD] [--json] [--local-dir DIR]\n"
		       "records, newest first; S is queued, uploading, completed, failed,\n"
		       "duplicate or ignored\n");
	else if (!strcmp(cmd, "show"))
		printf("PATH|ID [--json] [--local-dir DIR]\none record, every field\n");
	else if (!strcmp(cmd, "retry"))
		printf("PATH...|--failed [--local-dir DIR]\nqueue failed uploads again\n");
	else if (!strcmp(cmd, "status"))
		printf("[MOUNTPOINT] [--watch] [--json] [--local-dir DIR]\nthe queue now, with progress; totals "
		       "(--watch: again every second)\n");
	else if (!strcmp(cmd, "stats"))
		printf("[MOUNTPOINT] [--json] [--local-dir DIR]\ncounts, bytes, compression ratio\n");
	else if (!strcmp(cmd, "rebuild"))
		printf("[MOUNTPOINT] [--prefix P] [--bucket B] [--json] [--local-dir DIR]\n"
		       "recreate the records of the objects under P (default: the configured\n"
		       "prefix) from their metadata: after a lost disk, on a new host.  The\n"
		       "bucket, endpoint and keys come from the environment and config file,\n"
		       "as for a mount; keys a record already names are left alone.\n");
	else
		printf("[MOUNTPOINT] [--local-dir DIR]\n%s uploads on a live mount\n",
		       !strcmp(cmd, "hold") ? "pause" : "resume");
}

static int parse_since(const char *s, int64_t *out)
{
	struct tm tm;
	char *end;

	memset(&tm, 0, sizeof(tm));
	end = strptime(s, "%Y-%m-%d", &tm);
	if (!end)
		return -EINVAL;
	if (*end == 'T' || *end == ' ')
		end = strptime(end + 1, "%H:%M:%S", &tm);
	if (!end || (*end && strcmp(end, "Z")))
		return -EINVAL;
	*out = (int64_t)timegm(&tm);
	return 0;
}

int cli_main(int argc, char **argv)
{
	struct cli c = { .cmd = argv[0], .status = -1 };
	char **args = calloc((size_t)argc, sizeof(*args));
	int ret = 1, readonly;

	if (!args)
		return 1;
	c.args = args;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			cli_help(c.cmd);
			ret = 0;
			goto out;
		} else if (!strcmp(a, "--json")) {
			c.json = 1;
		} else if (!strcmp(a, "--failed") && !strcmp(c.cmd, "retry")) {
			c.failed = 1;
		} else if (!strcmp(a, "--watch") && !strcmp(c.cmd, "status")) {
			c.watch = 1;
		} else if ((!strcmp(a, "--status") || !strcmp(a, "--since") ||
			    !strcmp(a, "--local-dir") ||
			    (!strcmp(c.cmd, "rebuild") &&
			     (!strcmp(a, "--prefix") || !strcmp(a, "--bucket")))) &&
			   i + 1 >= argc) {
			ret = usage_error("%s needs a value", a);
			goto out;
		} else if (!strcmp(a, "--prefix") && !strcmp(c.cmd, "rebuild")) {
			c.prefix = argv[++i];
		} else if (!strcmp(a, "--bucket") && !strcmp(c.cmd, "rebuild")) {
			c.bucket = argv[++i];
		} else if (!strcmp(a, "--status")) {
			enum store_status s;

			if (store_status_parse(argv[++i], &s)) {
				ret = usage_error("unknown status '%s' (queued, uploading, "
						  "completed, failed, duplicate, ignored)",
						  argv[i]);
				goto out;
			}
			c.status = (int)s;
		} else if (!strcmp(a, "--since")) {
			if (parse_since(argv[++i], &c.since)) {
				ret = usage_error("--since '%s': use YYYY-MM-DD or "
						  "YYYY-MM-DDTHH:MM:SSZ",
						  argv[i]);
				goto out;
			}
		} else if (!strcmp(a, "--local-dir")) {
			c.local_dir = argv[++i];
		} else if (a[0] == '-' && a[1]) {
			ret = usage_error("unknown option '%s'", a);
			goto out;
		} else {
			args[c.nargs++] = argv[i];
		}
	}
	/* hold, resume, status and stats take one optional PATH: which mount */
	if (c.nargs && strcmp(c.cmd, "show") && strcmp(c.cmd, "retry") &&
	    (c.nargs > 1 || !strcmp(c.cmd, "list"))) {
		ret = usage_error("unexpected argument '%s'", c.args[0]);
		goto out;
	}
	if (!strcmp(c.cmd, "show") && c.nargs != 1) {
		ret = usage_error("show takes one PATH or ID");
		goto out;
	}
	if (!strcmp(c.cmd, "retry") && !c.nargs && !c.failed) {
		ret = usage_error("retry needs PATH... or --failed");
		goto out;
	}
	readonly = !strcmp(c.cmd, "list") || !strcmp(c.cmd, "show") ||
		   !strcmp(c.cmd, "status") || !strcmp(c.cmd, "stats");
	if (open_store(&c, c.nargs ? c.args[0] : NULL, readonly))
		goto out;
	if (!strcmp(c.cmd, "list"))
		ret = cmd_list(&c);
	else if (!strcmp(c.cmd, "show"))
		ret = cmd_show(&c);
	else if (!strcmp(c.cmd, "retry"))
		ret = cmd_retry(&c);
	else if (!strcmp(c.cmd, "status") && c.watch)
		for (;;) {	/* until interrupted, like watch(1) */
			fputs("\033[H\033[2J", stdout);
			ret = cmd_status(&c, 0);
			fflush(stdout);
			if (ret)
				break;
			sleep(1);
		}
	else if (!strcmp(c.cmd, "status"))
		ret = cmd_status(&c, 0);
	else if (!strcmp(c.cmd, "stats"))
		ret = cmd_status(&c, 1);
	else if (!strcmp(c.cmd, "rebuild"))
		ret = cmd_rebuild(&c);
	else
		ret = cmd_hold(&c, !strcmp(c.cmd, "hold"));
out:
	cfg_release(&c.cfg);
	store_close(c.st);
	free(args);
	return ret;
}
