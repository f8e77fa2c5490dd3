#!/usr/bin/env python3
"""bench.py SCENARIO... - the measuring half of scripts/bench (which installs the
tools, builds mgmtfs, makes the data and starts the RGW, then calls this).

Scenarios: big (compressed and uncompressed), small, close, mem.

Every tool is timed as a whole process with time.monotonic() around it; the
mgmtfs rows time `cp` into MNT/pending/ until user.mgmt.status of
MNT/completed/NAME reads "completed".  Runs are interleaved (run 1 of every
tool, then run 2, ...) so that drift hits every tool alike.  Each table gives the
median of RUNS runs, the min-max range and mgmtfs's ratio to each peer.

env (set by scripts/bench): RUNS BENCH_DATA BENCH_WORK BENCH_RESULTS MGMTFS
  MGMTFS_OPTS (extra -o options) BENCH_SKIP (regex: rows to skip) BUCKET S3_ENDPOINT AWS_ACCESS_KEY_ID
  AWS_SECRET_ACCESS_KEY AWS_REGION
"""
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import s3put  # noqa: E402

MiB = 1 << 20
RUNS = int(os.environ.get("RUNS", "3"))
DATA = os.environ.get("BENCH_DATA", "/var/tmp/mgmtfs-bench-data")
W = os.environ.get("BENCH_WORK", "/var/tmp/mgmtfs-bench")
RESULTS = os.environ.get("BENCH_RESULTS", "build/bench-results.md")
MGMTFS = os.environ.get("MGMTFS", "")
MGMTFS_OPTS = os.environ.get("MGMTFS_OPTS", "")
BUCKET = os.environ.get("BUCKET", "bench")
ENDPOINT = os.environ["S3_ENDPOINT"]
REGION = (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
          or "us-east-1")
SKIP = os.environ.get("BENCH_SKIP", "")
CEPH_CONF = os.environ.get("CEPH_CONF", "")  # the RGW's (scripts/s3-server's env)
TIMEOUT = float(os.environ.get("BENCH_TIMEOUT", "1200"))
PY = sys.executable

BIG = os.path.join(DATA, "big.bin")
HUGE = os.path.join(DATA, "big4g.bin")
SMALL = os.path.join(DATA, "small")

# every child gets this environment: AWS_CA_BUNDLE makes rclone 1.60 fail even
# on plain-http endpoints, so it goes for every tool alike
ENV = dict(os.environ)
ENV.pop("AWS_CA_BUNDLE", None)
ENV["AWS_REGION"] = ENV["AWS_DEFAULT_REGION"] = REGION
ENV["AWS_CONFIG_FILE"] = os.path.join(W, "aws-config")
ENV["AWS_PAGER"] = ""
AWS = f"/usr/bin/aws --endpoint-url {ENDPOINT} --only-show-errors"
RCLONE = f"rclone --config {W}/rclone.conf"
STAMP = datetime.datetime.now().strftime("%H%M%S")
S3 = s3put.client()


class Fail(Exception):
    pass


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def q(s):
    return shlex.quote(str(s))


# ------------------------------------------------------------------ helpers
def run(cmd, timeout=TIMEOUT):
    """Run a shell command (bash, pipefail); raise Fail with its stderr tail."""
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=ENV,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=timeout)
    if p.returncode != 0:
        tail = p.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise Fail(f"exit {p.returncode}: {' | '.join(tail) or cmd}")


def timed(cmd):
    t0 = time.monotonic()
    run(cmd)
    return time.monotonic() - t0


def peak_rss(cmd):
    """Run cmd (no shell) and return (seconds, peak RSS in bytes) via wait4."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    dt = time.monotonic() - t0
    if p.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise Fail(f"exit {p.returncode}: {' | '.join(tail)}")
    return dt, ru.ru_maxrss * 1024


def s3rm(prefix):
    try:
        s3put.rm_prefix(S3, BUCKET, prefix)
    except SystemExit as e:
        log(f"  warning: cleanup of {prefix}: {e}")


def s3count(prefix):
    return len(s3put.list_keys(S3, BUCKET, prefix))


def expect_objects(prefix, n):
    got = s3count(prefix)
    if got < n:
        raise Fail(f"only {got} object(s) under s3://{BUCKET}/{prefix}, "
                   f"expected {n}")


def check_disk(need_gib=6):
    st = os.statvfs(W)
    free = st.f_bavail * st.f_frsize
    if free < need_gib << 30:
        raise Fail(f"only {free >> 30} GiB free on {W}; need {need_gib}")


def fresh_prefix(tag, r):
    return f"{tag}-{STAMP}-r{r}"



def mgmtfs_opt(name, default):
    """A size or count given in MGMTFS_OPTS (`part_size=8M`), else @default."""
    m = re.search(rf"(?:^|,){name}=(\d+)([KMG]?)", MGMTFS_OPTS)
    if not m:
        return default
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]


def upload_job(tag, nobjects, run):
    """A measurement: run(prefix) -> seconds, uploading into a fresh prefix
    that must then hold @nobjects objects; the prefix is emptied after."""
    def f(r):
        p = fresh_prefix(tag, r)
        try:
            dt = run(p)
            expect_objects(p, nobjects)
            return dt
        finally:
            s3rm(p)
    return f

def wait_mount(path, proc=None, secs=20):
    end = time.monotonic() + secs
    while time.monotonic() < end:
        if os.path.ismount(path):
            return
        if proc is not None and proc.poll() is not None:
            raise Fail(f"exited with {proc.returncode} before mounting")
        time.sleep(0.05)
    raise Fail(f"{path} not mounted after {secs} s")


def unmount(path):
    for i in range(50):
        if not os.path.ismount(path):
            return True
        r = subprocess.run(["fusermount3", "-u", path], stderr=subprocess.PIPE)
        if r.returncode == 0:
            return True
        time.sleep(0.2)
    subprocess.run(["fusermount3", "-u", "-z", path])
    return False


# ------------------------------------------------------------------ mgmtfs
class Mgmtfs:
    """One fresh daemon on a fresh mount point and a fresh local_dir."""
    n = 0

    # The local_dirs of runs that made many files, removed when the scenario
    # ends rather than between runs: ext4 without a journal (as on these VMs)
    # checks every free inode it considers against those deleted in the last
    # 30 s (recently_deleted() in fs/ext4/ialloc.c), so 1000 files removed
    # just before would make the next run's creates scan past them.  mgmtfs is
    # the only tool here that makes files on the local disk.
    later = []

    def __init__(self, prefix, compression=None, level=None, settle="0", keep_local=False,
                 opts=None):
        self.keep_local = keep_local
        extra = opts
        if not MGMTFS or not os.access(MGMTFS, os.X_OK):
            raise Fail("n/a: build/mgmtfs missing")
        Mgmtfs.n += 1
        self.mnt = os.path.join(W, f"mnt-mgmtfs-{Mgmtfs.n}")
        self.local = os.path.join(W, f"mgmtfs-local-{Mgmtfs.n}")
        self.logf = os.path.join(W, f"mgmtfs-{Mgmtfs.n}.log")
        for d in (self.mnt, self.local):
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
        opts = [f"bucket={BUCKET}", f"prefix={prefix}", f"local_dir={self.local}",
                f"endpoint={ENDPOINT}", f"region={REGION}"]
        if settle is not None:
            opts.append(f"settle={settle}")
        if compression:
            opts.append(f"compression={compression}")
        if level:
            opts.append(f"level={level}")
        if MGMTFS_OPTS:
            opts.append(MGMTFS_OPTS)
        if extra:
            opts.append(extra)
        # A copy of the program for each mount.  On this project's VMs one
        # mgmtfs file ran its hashing at under half speed for an hour (the
        # daemon used 3.3 CPU-s for the uncompressed 1 GiB instead of 1.4),
        # while a byte-identical copy alternating with it run by run ran at full
        # speed: the slowness went with the page-cache pages that held that file
        # (the host's handling of that memory), not with the program.  A fresh
        # copy per run makes each run its own draw, not all runs one.
        self.bindir = os.path.join(W, f"mgmtfs-bin-{Mgmtfs.n}")
        self.cmd = [os.path.join(self.bindir, "mgmtfs"), self.mnt, "-f", "-o", ",".join(opts)]
        self.proc = None

    def __enter__(self):
        os.makedirs(self.bindir, exist_ok=True)
        shutil.copy2(MGMTFS, self.cmd[0])
        self.lf = open(self.logf, "wb")
        self.proc = subprocess.Popen(self.cmd, env=ENV, stdout=self.lf,
                                     stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        try:
            wait_mount(self.mnt, self.proc)
            for d in ("pending", "completed"):
                if not os.path.isdir(os.path.join(self.mnt, d)):
                    raise Fail(f"no {d}/ in the mount")
        except Exception as e:
            self.__exit__(None, None, None)
            raise Fail(f"mgmtfs: {e}; {self.logtail()}")
        return self

    def logtail(self):
        try:
            with open(self.logf, "rb") as f:
                t = f.read()[-600:].decode(errors="replace").strip()
            return "log: " + " | ".join(t.splitlines()[-3:]) if t else "log empty"
        except OSError:
            return ""

    def xattr(self, path, name="status"):
        try:
            return os.getxattr(path, "user.mgmt." + name).decode(errors="replace")
        except OSError:
            return None

    def alive(self):
        if self.proc.poll() is not None:
            raise Fail(f"mgmtfs exited with {self.proc.returncode}; {self.logtail()}")

    def failed_in_pending(self, names=None):
        pend = os.path.join(self.mnt, "pending")
        for n in names if names is not None else os.listdir(pend):
            p = os.path.join(pend, n)
            if self.xattr(p) == "failed":
                raise Fail(f"mgmtfs: {n} failed: {self.xattr(p, 'error')}")

    def wait_completed(self, name, timeout=TIMEOUT):
        done = os.path.join(self.mnt, "completed", name)
        end = time.monotonic() + timeout
        last_check = time.monotonic()
        while True:
            if self.xattr(done) == "completed":
                return
            now = time.monotonic()
            if now > end:
                raise Fail(f"mgmtfs: {name} not completed after {timeout:.0f} s "
                           f"(pending status {self.xattr(os.path.join(self.mnt, 'pending', name))})")
            if now - last_check > 1:
                last_check = now
                self.alive()
                self.failed_in_pending([name])
            time.sleep(0.005)

    def wait_all_completed(self, count, stall=180):
        """Until COUNT files are in completed/.  The daemon logs each file once
        it is there ("uploaded 'pending/NAME' as ..." after the move, or "has
        the same content as"); the log is read every 5 ms, and completed/ is
        listed to confirm, or twice a second should the log say less.  Listing
        completed/ every 10 ms instead (a READDIR of up to 1,000 entries through
        FUSE each time) cost the daemon 1.2 ms of CPU per look, about 0.3 s of
        CPU in a 3 s run on 2 cores: the watcher would slow what it watches,
        which no peer pays."""
        comp = os.path.join(self.mnt, "completed")
        logged, listed, tail = 0, 0, b""
        last_n, last_t = -1, time.monotonic()
        last_check = last_list = last_t
        with open(self.logf, "rb") as log:
            while True:
                chunk = log.read()
                if chunk:
                    lines = (tail + chunk).split(b"\n")
                    tail = lines.pop()
                    logged += sum(1 for ln in lines if b"info: uploaded 'pending/" in ln
                                  or b"has the same content as" in ln)
                now = time.monotonic()
                if logged >= count or now - last_list > 0.5:
                    last_list = now
                    listed = len(os.listdir(comp))
                    if listed >= count:
                        return
                n = max(logged, listed)
                if n != last_n:
                    last_n, last_t = n, now
                elif now - last_t > stall:
                    raise Fail(f"mgmtfs: stuck at {listed}/{count} completed for {stall} s")
                if now - last_check > 2:
                    last_check = now
                    self.alive()
                    if now - last_t > 2:  # no progress: a getxattr per pending file says why
                        self.failed_in_pending()
                time.sleep(0.005)

    def vmhwm(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for ln in f:
                if ln.startswith("VmHWM:"):
                    return int(ln.split()[1]) * 1024
        raise Fail("no VmHWM")

    @staticmethod
    def remove_kept():
        while Mgmtfs.later:
            shutil.rmtree(Mgmtfs.later.pop(), ignore_errors=True)

    def __exit__(self, *exc):
        if self.proc is not None:
            unmount(self.mnt)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.lf.close()
        shutil.rmtree(self.bindir, ignore_errors=True)
        if self.keep_local:
            Mgmtfs.later.append(self.local)
        else:
            shutil.rmtree(self.local, ignore_errors=True)
        try:
            os.rmdir(self.mnt)
        except OSError:
            pass
        return False


CP_RETURNED = []   # when cp returned, in the mgmtfs run just measured


def cp_until_completed(m, src, name):
    """Seconds from `cp SRC MNT/pending/NAME` until its record says completed."""
    warm_memory()
    t0 = time.monotonic()
    run(f"cp {q(src)} {q(os.path.join(m.mnt, 'pending', name))}")
    CP_RETURNED.append(time.monotonic() - t0)
    m.wait_completed(name)
    return time.monotonic() - t0


def mgmtfs_put_file(src, prefix, **kw):
    with Mgmtfs(prefix, **kw) as m:
        dt = cp_until_completed(m, src, os.path.basename(src))
    expect_objects(prefix, 1)
    s3rm(prefix)
    return dt


class KeptMgmtfs:
    """One mgmtfs mount for every run of a row, as the s3fs mount is for its
    rows, and as a user mounts once and copies many files.  (The part pool
    is touched at mount, in the background, so its first run pays no more
    than the fresh-mount row's do.)  Each run
    copies a copy of the file whose first bytes say the run, under a new
    name: new content, as each file a user copies is, not a duplicate of
    the last run's (which a mount finds before sending a part).  The object,
    the local copy and the run's copy are removed after it (untimed)."""

    def __init__(self, prefix, **kw):
        self.prefix, self.kw, self.m = prefix, kw, None

    def put_file(self, src, r):
        global LIVE_CPU
        if self.m is None:
            self.m = Mgmtfs(self.prefix, **self.kw).__enter__()
        name = f"r{r}-{os.path.basename(src)}"
        copy = os.path.join(W, name)
        shutil.copyfile(src, copy)
        with open(copy, "r+b") as f:
            f.write(f"run {r} ".encode())
        try:
            c0 = proc_stat(self.m.proc.pid)[1]
            dt = cp_until_completed(self.m, copy, name)
            LIVE_CPU += proc_stat(self.m.proc.pid)[1] - c0
        finally:
            os.unlink(copy)
        expect_objects(self.prefix, 1)
        s3rm(self.prefix)
        os.unlink(os.path.join(self.m.mnt, "completed", name))
        return dt

    def close(self):
        if self.m is not None:
            self.m.__exit__(None, None, None)
            self.m = None


# ------------------------------------------------------------------ s3fs
class S3fs:
    def __init__(self):
        self.mnt = os.path.join(W, "mnt-s3fs")

    def __enter__(self):
        os.makedirs(self.mnt, exist_ok=True)
        unmount(self.mnt)
        run(f"s3fs {BUCKET} {q(self.mnt)} -o passwd_file={q(W)}/s3fs-passwd,"
            f"url={ENDPOINT},use_path_request_style,endpoint={REGION}")
        wait_mount(self.mnt)
        return self

    def __exit__(self, *exc):
        unmount(self.mnt)
        return False


def s3fs_cp(s3fs, src, prefix, recursive=False):
    d = os.path.join(s3fs.mnt, prefix)
    os.makedirs(d)
    if recursive:
        return timed(f"cp -r {q(src)}/. {q(d)}/")
    return timed(f"cp {q(src)} {q(d)}/")


# ------------------------------------------------------------------ tables
class Row:
    def __init__(self, key, label, fn, ref=None, mgmtfs=False):
        self.key, self.label, self.fn, self.ref = key, label, fn, ref
        self.mgmtfs = mgmtfs
        self.vals, self.err, self.cp = [], None, []
        self.cpu = []   # (client CPU s, server CPU s) per run

    @property
    def med(self):
        return statistics.median(self.vals) if self.vals and not self.err else None


def proc_stat(pid):
    """(command name, CPU seconds used so far) of process @pid; OSError once it is gone."""
    with open(f"/proc/{pid}/stat") as f:
        st = f.read()
    comm, rest = st[st.index("(") + 1:st.rindex(")")], st[st.rindex(")") + 2:].split()
    return comm, (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu():
    """CPU seconds used so far by the RGW and its OSD (the server shares our cores)."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            comm, cpu = proc_stat(pid)
        except OSError:
            continue
        if comm in ("radosgw", "ceph-osd"):
            total += cpu
    return total


def quiet_server():
    """Have the RGW free now, untimed, what earlier runs deleted, and wait (up to
    10 s) for it and its OSD to go idle.  Its garbage collector frees a deleted
    object's data 10-20 s later (scripts/s3-server sets it so), which is during
    whichever run comes next: a `cp` of 1 GiB into pending/ after s3fs's run took
    0.51-0.85 s where it took 0.22-0.25 s otherwise."""
    if CEPH_CONF and shutil.which("radosgw-admin"):
        subprocess.run(["radosgw-admin", "-c", CEPH_CONF, "-n", "client.admin", "gc",
                        "process", "--include-all"], env=ENV, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=300)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        c0 = server_cpu()
        time.sleep(0.2)
        if server_cpu() - c0 < 0.02:    # under 10 % of a core
            break


WARM_CPU = 0.0


def warm_memory():
    """Write and drop 1 GiB of page cache, untimed, just before a timed copy.  On this
    VM memory freed a few seconds earlier goes back to the host (free page reporting,
    DAMON), and touching it again costs several times a normal page-cache write: a
    tool that ran after a pause (or after mounting) paid for it, one that ran right
    after a cleanup did not."""
    global WARM_CPU
    tmp = os.path.join(W, "warm-memory")
    c0 = client_cpu()
    # both ways a tool may write: cp's copy_file_range (small folios) and 1 MiB
    # write()s (large folios, which come from the high-order blocks the host takes)
    run(f"cp {q(BIG)} {q(tmp)} && rm -f {q(tmp)} && "
        f"dd if={q(BIG)} of={q(tmp)} bs=1M status=none && rm -f {q(tmp)}")
    WARM_CPU += client_cpu() - c0   # not the tool's: taken out of its CPU figure


LIVE_CPU = 0.0   # CPU of the runs' processes still alive (a kept mount's daemon)


def client_cpu():
    """CPU seconds of our waited-for children: the tool, its shell, cp, the mgmtfs daemon."""
    t = os.times()
    return t.children_user + t.children_system


class Table:
    def __init__(self, title, unit, note, size=None):
        self.title, self.unit, self.note, self.size = title, unit, note, size
        self.rows, self.targets = [], []
        self.floors = True  # the time is all the run's CPU work (not so: close)

    def add(self, *a, **kw):
        r = Row(*a, **kw)
        if SKIP and re.search(SKIP, r.label):
            r.err = "n/a: skipped (BENCH_SKIP)"
        self.rows.append(r)
        return r

    def row(self, key):
        return next(r for r in self.rows if r.key == key)

    def measure(self):
        log(f"\n=== {self.title} (RUNS={RUNS})")
        l0, t0 = os.getloadavg()[0], time.monotonic()
        for i in range(RUNS):
            for r in self.rows:
                if r.err:
                    continue
                try:
                    check_disk()
                    os.sync()   # no tool pays for the writeback of the one before
                    quiet_server()  # nor for the server's cleanup after it
                    warm_memory()
                    CP_RETURNED.clear()
                    c0, s0, w0, l0 = client_cpu(), server_cpu(), WARM_CPU, LIVE_CPU
                    v = r.fn(i)
                    r.cpu.append((client_cpu() - c0 - (WARM_CPU - w0) + (LIVE_CPU - l0),
                                  server_cpu() - s0))
                    r.vals.append(v)
                    r.cp += CP_RETURNED
                    log(f"  run {i + 1}/{RUNS}  {r.label:<44} {fmt(v, self.unit)}")
                except Fail as e:
                    r.err = str(e)
                    log(f"  run {i + 1}/{RUNS}  {r.label:<44} FAILED: {e}")
                except subprocess.TimeoutExpired:
                    r.err = "timeout"
                    log(f"  run {i + 1}/{RUNS}  {r.label:<44} FAILED: timeout")
        self.load = (l0, os.getloadavg()[0], time.monotonic() - t0)

    def render(self):
        u = "s" if self.unit == "s" else "MiB"
        out = [f"### {self.title}", "", self.note, "",
               f"| tool | median {u} | min–max {u} |"
               + (" MiB/s |" if self.size else "")
               + " mgmtfs ÷ tool |",
               "|---|---:|---:|" + ("---:|" if self.size else "") + "---|"]
        for r in self.rows:
            lab = r.label.replace("|", "\\|")
            if r.err:
                na = r.err.startswith("n/a")
                why = (r.err[5:] if na else r.err).replace("|", "/")[:160]
                line = (f"| {lab} | {'n/a' if na else 'fail'} | {why} |"
                        + (" |" if self.size else ""))
            else:
                m = r.med
                line = (f"| {lab} | {fmt(m, self.unit, False)} | "
                        f"{fmt(min(r.vals), self.unit, False)}–"
                        f"{fmt(max(r.vals), self.unit, False)} |")
                if self.size:
                    line += f" {self.size / MiB / m:.0f} |"
            if r.mgmtfs:
                line += " — |"
            else:
                ref = self.row(r.ref) if r.ref else None
                if ref is None:
                    line += " |"
                elif ref.med is None or r.med is None:
                    line += f" n/a ({ref.label.replace('|', '/')}) |"
                else:
                    line += f" {ref.med / r.med:.2f} ({ref.label.replace('|', '/')}) |"
            out.append(line)
        out.append("")
        cpu = [(r.label, statistics.median(c for c, _ in r.cpu),
                statistics.median(sv for _, sv in r.cpu))
               for r in self.rows if r.cpu and not r.err]
        if cpu and self.unit == "s":
            out.append("CPU seconds per run (median; the cores are shared by all; client = "
                       "the processes the run waited for, which leaves out the s3fs "
                       "daemon): "
                       + "; ".join(f"{lab.replace('|', '/')}: {c:.1f} client + {sv:.1f} "
                                   "server (RGW+OSD)" for lab, c, sv in cpu))
            out.append("")
        for r in self.rows:
            if r.cp and not r.err:
                out.append(f"({r.label}: `cp` into pending/ returned after "
                           f"{statistics.median(r.cp):.2f} s, median; the rest "
                           "is the upload after close)")
                out.append("")
        if getattr(self, "load", None):
            out.append(f"(1-min load average {self.load[0]:.1f} at start, "
                       f"{self.load[1]:.1f} at end, on {os.cpu_count()} cores; "
                       f"{self.load[2]:.0f} s in all)")
            out.append("")
        for t in self.targets:
            out.append(f"- {t}")
        out.append("")
        return "\n".join(out)

    def target(self, text, a, b, op, limit, how):
        """Record a target: ratio = a.med / b.med (how='time') checked op limit."""
        ra, rb = self.row(a), self.row(b)
        if ra.med is None or rb.med is None:
            self.targets.append(f"**n/a** target: {text} (no figure for "
                                f"{ra.label if ra.med is None else rb.label})")
            return
        ratio = ra.med / rb.med
        ok = ratio <= limit if op == "<=" else ratio >= limit
        self.targets.append(f"**{'PASS' if ok else 'MISS'}** target: {text}: "
                            f"{how.format(ratio=ratio)}" + self.rounds(ra, rb)
                            + ("" if ok else self.floor(ra, rb)))

    @staticmethod
    def rounds(ra, rb):
        """The ratio of each round's two runs, which ran minutes apart at most:
        how much of a verdict is the machine's drift over the whole table."""
        if len(ra.vals) != len(rb.vals) or len(ra.vals) < 2 or 0 in rb.vals:
            return ""
        rs = [a / b for a, b in zip(ra.vals, rb.vals)]
        return f" (round by round {min(rs):.2f}–{max(rs):.2f})"

    def floor(self, ra, rb):
        """For a missed time target of a / b: the least time the CPU work of
        mgmtfs's runs (client and server together) needs on this machine's
        cores, and the best ratio that would give, which no scheduling beats.
        The upload starts when `cp` closes the file (the SPEC), so `cp` runs on
        one core alone first (it copies all the while) and the rest of the work
        has all the cores."""
        m = ra if ra.mgmtfs else rb if rb.mgmtfs else None
        if self.unit != "s" or m is None or not m.cpu or not self.floors:
            return ""
        work = statistics.median(c + sv for c, sv in m.cpu)
        n = os.cpu_count() or 1
        cp = min(statistics.median(m.cp), work) if m.cp else 0.0
        least = cp + (work - cp) / n
        best = least / rb.med if m is ra else ra.med / least
        alone = f", `cp`'s {cp:.2f} s on one core first" if cp else ""
        return (f" (mgmtfs's runs took {work:.1f} CPU-s, client and server; on {n} cores"
                f"{alone}, that work needs {least:.2f} s at least: the ratio could be "
                f"{best:.2f} at best)")


def fmt(v, unit, with_unit=True):
    if v is None:
        return "n/a"
    if unit == "s":
        return f"{v:.2f}" + (" s" if with_unit else "")
    return f"{v / MiB:.0f}" + (" MiB" if with_unit else "")


# ------------------------------------------------------------------ scenarios
def big_compressed():
    t = Table("big, compressed: 1 GiB mixed file",
              "s", "mgmtfs: `cp` into `pending/` until `user.mgmt.status` = completed "
              "(compression=tar.gz, settle=0, fresh mount per run); peers compress "
              "to /dev/null or stream `tar | gzip | aws s3 cp -`. "
              "mgmtfs ÷ tool < 1 means mgmtfs took less time.", size=1 << 30)
    for lv in (1, 6):
        t.add(f"m{lv}", f"mgmtfs tar.gz level={lv}",
              lambda r, lv=lv: mgmtfs_put_file(
                  BIG, fresh_prefix(f"bigc{lv}-mgmtfs", r),
                  compression="tar.gz", level=lv), mgmtfs=True)
    for lv in (1, 6):
        t.add(f"pigz{lv}", f"pigz -{lv} > /dev/null",
              lambda r, lv=lv: timed(f"pigz -{lv} -c {q(BIG)} >/dev/null"), ref=f"m{lv}")
        t.add(f"gzip{lv}", f"gzip -{lv} > /dev/null",
              lambda r, lv=lv: timed(f"gzip -{lv} -c {q(BIG)} >/dev/null"), ref=f"m{lv}")
        for z in ("gzip", "pigz"):
            def tarput(r, lv=lv, z=z):
                p = fresh_prefix(f"bigc{lv}-tar{z}", r)
                try:
                    dt = timed(f"tar -cf - -C {q(DATA)} big.bin | {z} -{lv} | "
                               f"{AWS} s3 cp - s3://{BUCKET}/{p}/big.bin.tar.gz")
                    expect_objects(p, 1)
                    return dt
                finally:
                    s3rm(p)
            t.add(f"tar{z}{lv}", f"tar | {z} -{lv} | aws s3 cp -", tarput, ref=f"m{lv}")
    t.measure()
    for lv in (1, 6):
        t.target(f"mgmtfs level {lv} ≤ 1.25 × pigz -{lv}", f"m{lv}", f"pigz{lv}",
                 "<=", 1.25, "mgmtfs takes {ratio:.2f} × pigz's time")
    return t


def big_uncompressed():
    t = Table("big, uncompressed: 1 GiB mixed file",
              "s", "mgmtfs: compression=none, `cp` into `pending/` until completed "
              "(settle=0, fresh mount per run; the \"mount kept\" row uses one mount "
              "for all its runs, as the s3fs row does). curl: one SigV4 PUT of the whole "
              "file, no multipart (UNSIGNED-PAYLOAD: the server's ceiling; "
              "the signed-payload variant hashes the file first, as a client that "
              "signs the payload must; the \"sha256 known\" variant is given the hash, "
              "computed before the clock starts: the server's ceiling for a signed "
              "payload). The multipart rows upload as mgmtfs does (its part size and "
              "parts in flight, Content-MD5, each ETag checked) from a Python client "
              "given every part's sha256 and MD5 before the clock starts: the server's "
              "ceiling for the upload the SPEC asks for. "
              "mgmtfs signs the sha256 of each part (the default, payload_signing=yes; "
              "RGW then hashes every byte too); the payload_signing=no row sends "
              "UNSIGNED-PAYLOAD with Content-MD5, as the AWS CLI does over https. "
              "mgmtfs ÷ tool < 1 means mgmtfs took less time.", size=1 << 30)
    t.add("m", "mgmtfs compression=none",
          lambda r: mgmtfs_put_file(BIG, fresh_prefix("bigu-mgmtfs", r),
                                    compression="none"), mgmtfs=True)
    t.add("mu", "mgmtfs compression=none payload_signing=no",
          lambda r: mgmtfs_put_file(BIG, fresh_prefix("bigu-mgmtfs-u", r), compression="none",
                                    opts="payload_signing=no"), mgmtfs=True)
    kept = KeptMgmtfs(fresh_prefix("bigu-mgmtfs-kept", 0), compression="none")
    t.add("mk", "mgmtfs compression=none, mount kept",
          lambda r: kept.put_file(BIG, r), mgmtfs=True)

    def s3job(tag, cmdf):
        return upload_job(tag, 1, lambda p: timed(cmdf(p)))
    t.add("curl", "curl -T (raw PUT, UNSIGNED-PAYLOAD)",
          s3job("bigu-curl", lambda p: f"{PY} {HERE}/s3put.py curl {q(BIG)} /{BUCKET}/{p}/big.bin"),
          ref="m")
    t.add("curls", "curl -T (raw PUT, signed payload)",
          s3job("bigu-curls", lambda p: f"{PY} {HERE}/s3put.py curl {q(BIG)} /{BUCKET}/{p}/big.bin --signed"),
          ref="m")
    big_sha = s3put.file_sha256(BIG)  # before any clock starts
    t.add("curlk", "curl -T (raw PUT, signed payload, sha256 known)",
          s3job("bigu-curlk", lambda p: f"{PY} {HERE}/s3put.py curl {q(BIG)} /{BUCKET}/{p}/big.bin "
                f"--sha256 {big_sha}"),
          ref="m")
    # a multipart upload as mgmtfs makes one (its part size, that many parts in
    # flight, Content-MD5 and the ETag check), given every part's hashes
    # before the clock starts: what the server costs for the SPEC's upload
    ps, inflight = mgmtfs_opt("part_size", 16 * MiB), mgmtfs_opt("parts_in_flight", 4)
    hashes = os.path.join(W, "big.parts.json")
    mp = [t.add(key, f"multipart, {ps // MiB} MiB x {inflight} in flight, {how}, hashes known",
                s3job(f"bigu-{key}", lambda p, flag=flag: f"{PY} {HERE}/s3put.py parts {q(BIG)} "
                      f"/{BUCKET}/{p}/big.bin --hashes {q(hashes)} --threads {inflight}{flag}"),
                ref="m")
          for key, how, flag in (("mpu", "UNSIGNED-PAYLOAD", ""),
                                 ("mpus", "signed payload", " --signed"))]
    if not all(r.err for r in mp):  # not both skipped: hash the parts now, untimed
        s3put.part_hashes(BIG, ps, hashes)
    t.add("aws", "aws s3 cp",
          s3job("bigu-aws", lambda p: f"{AWS} s3 cp {q(BIG)} s3://{BUCKET}/{p}/big.bin"),
          ref="m")
    s3fs = S3fs()
    t.add("s3fs", "cp into s3fs mount",
          upload_job("bigu-s3fs", 1, lambda p: s3fs_cp(s3fs, BIG, p)), ref="m")
    t.add("rclone", "rclone copy",
          s3job("bigu-rclone", lambda p: f"{RCLONE} copy {q(BIG)} rgw:{BUCKET}/{p}/"),
          ref="m")
    try:
        with s3fs:
            t.measure()
    finally:
        kept.close()
    t.target("mgmtfs ≥ 1.4 × faster than aws s3 cp", "aws", "m", ">=", 1.4,
             "aws s3 cp takes {ratio:.2f} × mgmtfs's time")
    t.target("mgmtfs ≤ 1.3 × the raw PUT", "m", "curl", "<=", 1.3,
             "mgmtfs takes {ratio:.2f} × the raw PUT's time")
    t.target("(mount kept) mgmtfs ≥ 1.4 × faster than aws s3 cp", "aws", "mk", ">=", 1.4,
             "aws s3 cp takes {ratio:.2f} × mgmtfs's time")
    # the same target, each payload mode against the raw PUT of that mode
    t.target("(like for like) mgmtfs ≤ 1.3 × the raw PUT, both signed", "m", "curlk", "<=", 1.3,
             "mgmtfs takes {ratio:.2f} × the time of the signed raw PUT given its sha256")
    t.target("(like for like) mgmtfs payload_signing=no ≤ 1.3 × the raw PUT, both unsigned",
             "mu", "curl", "<=", 1.3, "mgmtfs takes {ratio:.2f} × the raw PUT's time")
    t.target("(like for like) mgmtfs ≤ 1.3 × a signed multipart upload of its part size "
             "given its hashes", "m", "mpus", "<=", 1.3,
             "mgmtfs takes {ratio:.2f} × that upload's time")
    return t


def small():
    n = len(os.listdir(SMALL))
    size = sum(os.path.getsize(os.path.join(SMALL, f)) for f in os.listdir(SMALL))
    t = Table(f"small: {n} files of 10 KiB", "s",
              f"mgmtfs: `cp -r small/. MNT/pending/` until all {n} are completed "
              "(default compression tar.gz, settle=0, fresh mount per run); "
              "4 raw PUT streams = s3put.py dir --threads 4 (keep-alive, "
              "UNSIGNED-PAYLOAD: the ceiling). "
              "mgmtfs ÷ tool < 1 means mgmtfs took less time.", size=size)

    def m(r):
        p = fresh_prefix("small-mgmtfs", r)
        try:
            with Mgmtfs(p, keep_local=True) as mg:
                warm_memory()
                t0 = time.monotonic()
                run(f"cp -r {q(SMALL)}/. {q(mg.mnt)}/pending/")
                CP_RETURNED.append(time.monotonic() - t0)
                mg.wait_all_completed(n)
                dt = time.monotonic() - t0
                comp = os.path.join(mg.mnt, "completed")
                bad = [x for x in os.listdir(comp)
                       if mg.xattr(os.path.join(comp, x)) != "completed"]
                if bad:
                    raise Fail(f"{len(bad)} in completed/ not 'completed', e.g. {bad[0]}")
            expect_objects(p, n)
            return dt
        finally:
            s3rm(p)
    t.add("m", "mgmtfs", m, mgmtfs=True)

    def s3job(tag, cmdf):
        return upload_job(tag, n, lambda p: timed(cmdf(p)))
    t.add("py4", "4 raw PUT streams (s3put.py dir --threads 4)",
          s3job("small-py4", lambda p: f"{PY} {HERE}/s3put.py dir {q(SMALL)} /{BUCKET}/{p} --threads 4"),
          ref="m")
    t.add("aws", "aws s3 cp --recursive",
          s3job("small-aws", lambda p: f"{AWS} s3 cp --recursive {q(SMALL)} s3://{BUCKET}/{p}/"),
          ref="m")
    t.add("rclone", "rclone copy",
          s3job("small-rclone", lambda p: f"{RCLONE} copy {q(SMALL)} rgw:{BUCKET}/{p}/"),
          ref="m")
    s3fs = S3fs()
    t.add("s3fs", "cp -r into s3fs mount",
          upload_job("small-s3fs", n, lambda p: s3fs_cp(s3fs, SMALL, p, recursive=True)),
          ref="m")
    try:
        with s3fs:
            t.measure()
    finally:
        Mgmtfs.remove_kept()
    t.target("mgmtfs ≥ 1.3 × faster than rclone copy", "rclone", "m", ">=", 1.3,
             "rclone copy takes {ratio:.2f} × mgmtfs's time")
    t.target("mgmtfs ≤ 1.3 × the 4-stream raw PUT", "m", "py4", "<=", 1.3,
             "mgmtfs takes {ratio:.2f} × the 4 streams' time")
    return t


def close():
    t = Table("close latency: `cp` of the 1 GiB file returns", "s",
              "Time until `cp` exits (no sync). mgmtfs: into `pending/` "
              "(default compression, settle=0, fresh mount, FUSE passthrough "
              "on as the bench runs as root; the upload that "
              "follows is waited for but not timed). disk: the backing "
              "filesystem of local_dir. s3fs uploads before close returns. "
              "mgmtfs ÷ tool < 1 means mgmtfs took less time.", size=1 << 30)

    def m(r):
        p = fresh_prefix("close-mgmtfs", r)
        try:
            with Mgmtfs(p) as mg:
                warm_memory()
                dt = timed(f"cp {q(BIG)} {q(mg.mnt)}/pending/")
                mg.wait_completed("big.bin")
            return dt
        finally:
            s3rm(p)
    t.add("m", "cp into mgmtfs pending/", m, mgmtfs=True)
    t.floors = False  # its CPU counts the upload after cp, which is not timed
    disk = os.path.join(W, "disk")

    def d(r):
        shutil.rmtree(disk, ignore_errors=True)
        os.makedirs(disk)
        try:
            warm_memory()
            return timed(f"cp {q(BIG)} {q(disk)}/")
        finally:
            shutil.rmtree(disk, ignore_errors=True)
    t.add("disk", f"cp to disk ({W})", d, ref="m")
    s3fs = S3fs()

    def s(r):
        p = fresh_prefix("close-s3fs", r)
        try:
            return s3fs_cp(s3fs, BIG, p)
        finally:
            s3rm(p)
    t.add("s3fs", "cp into s3fs mount", s, ref="m")
    with s3fs:
        t.measure()
    t.target("mgmtfs ≤ 1.5 × cp to disk", "m", "disk", "<=", 1.5,
             "cp into pending/ takes {ratio:.2f} × cp to disk")
    return t


def mem():
    t = Table("memory: peak RSS uploading 1 GiB and 4 GiB", "rss",
              "mgmtfs: VmHWM of a fresh daemon (default settings: tar.gz level 6, "
              "default part size and parallelism; settle=0), read after the "
              "record says completed, just before unmount. Peers: peak RSS "
              "(wait4 ru_maxrss) of a plain upload of the same file. "
              "mgmtfs ÷ tool < 1 means mgmtfs used less memory.")

    def m(src):
        def f(r):
            p = fresh_prefix(f"mem-mgmtfs-{os.path.basename(src)}", r)
            try:
                with Mgmtfs(p) as mg:
                    run(f"cp {q(src)} {q(mg.mnt)}/pending/")
                    mg.wait_completed(os.path.basename(src))
                    hwm = mg.vmhwm()
                expect_objects(p, 1)
                return hwm
            finally:
                s3rm(p)
        return f

    def peer(tag, src, argvf):
        def f(r):
            p = fresh_prefix(f"mem-{tag}", r)
            try:
                _, rss = peak_rss(argvf(p))
                expect_objects(p, 1)
                return rss
            finally:
                s3rm(p)
        return f
    for src, lab in ((BIG, "1g"), (HUGE, "4g")):
        name = os.path.basename(src)
        t.add(f"m{lab}", f"mgmtfs, {lab[0]} GiB", m(src), mgmtfs=True)
        t.add(f"aws{lab}", f"aws s3 cp, {lab[0]} GiB",
              peer(f"aws{lab}", src, lambda p, src=src, name=name:
                   shlex.split(AWS) + ["s3", "cp", src, f"s3://{BUCKET}/{p}/{name}"]),
              ref=f"m{lab}")
        t.add(f"rclone{lab}", f"rclone copy, {lab[0]} GiB",
              peer(f"rclone{lab}", src, lambda p, src=src:
                   shlex.split(RCLONE) + ["copy", src, f"rgw:{BUCKET}/{p}/"]),
              ref=f"m{lab}")
    t.measure()
    for lab in ("1g", "4g"):
        r = t.row(f"m{lab}")
        text = f"mgmtfs {lab[0]} GiB peak RSS ≤ 256 MiB"
        if r.med is None:
            t.targets.append(f"**n/a** target: {text}")
        else:
            t.targets.append(f"**{'PASS' if r.med <= 256 * MiB else 'MISS'}** "
                             f"target: {text}: {r.med / MiB:.0f} MiB")
    t.target("mgmtfs 4 GiB peak RSS within 10% of 1 GiB", "m4g", "m1g", "<=", 1.10,
             "4 GiB / 1 GiB = {ratio:.2f}")
    return t


SCENARIOS = {"big": [big_compressed, big_uncompressed], "small": [small],
             "close": [close], "mem": [mem]}


def header():
    def ver(cmd):
        try:
            return subprocess.run(cmd, shell=True, env=ENV, capture_output=True,
                                  text=True, timeout=30).stdout.strip().splitlines()[0]
        except Exception:
            return "?"
    mg = MGMTFS if MGMTFS and os.access(MGMTFS, os.X_OK) else "missing (rows n/a)"
    return "\n".join([
        f"## mgmtfs benchmark, {datetime.datetime.now().isoformat(timespec='seconds')}",
        "",
        f"- RUNS={RUNS} (median, min–max of RUNS runs; runs interleaved across tools)",
        f"- machine: {os.cpu_count()} cores, {ver('uname -sr')}, load at start "
        f"{os.getloadavg()[0]:.2f}",
        f"- S3: {ENDPOINT} (Ceph RGW from scripts/s3-server), bucket {BUCKET}",
        f"- mgmtfs: {mg} {MGMTFS_OPTS}",
        f"- data: {DATA} (bench/gen-data.py, reproducible); work dir {W}",
        f"- tools: {ver('pigz --version 2>&1')}; {ver('gzip --version')}; "
        f"{ver('/usr/bin/aws --version')}; {ver('rclone version')}; "
        f"{ver('s3fs --version')}; {ver('curl --version')}",
        ""])


def main(args):
    what = []
    for a in args or ["all"]:
        what += (["big", "small", "close", "mem"] if a == "all" else [a])
    os.makedirs(W, exist_ok=True)
    with open(ENV["AWS_CONFIG_FILE"], "w") as f:
        f.write(f"[default]\nregion = {REGION}\ns3 =\n  addressing_style = path\n")
    with open(os.path.join(W, "rclone.conf"), "w") as f:
        f.write(f"[rgw]\ntype = s3\nprovider = Ceph\nendpoint = {ENDPOINT}\n"
                f"access_key_id = {ENV['AWS_ACCESS_KEY_ID']}\n"
                f"secret_access_key = {ENV['AWS_SECRET_ACCESS_KEY']}\n"
                f"region = {REGION}\nforce_path_style = true\n")
    pw = os.path.join(W, "s3fs-passwd")
    fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, f"{ENV['AWS_ACCESS_KEY_ID']}:{ENV['AWS_SECRET_ACCESS_KEY']}\n".encode())
    os.close(fd)
    os.chmod(pw, 0o600)

    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    os.makedirs(os.path.dirname(os.path.abspath(RESULTS)), exist_ok=True)
    out = [header()]
    with open(RESULTS, "w") as f:
        f.write(out[0] + "\n")
    raw = {}
    for w in what:
        for sc in SCENARIOS[w]:
            t = sc()
            text = t.render()
            print("\n" + text, flush=True)
            out.append(text)
            with open(RESULTS, "w") as f:
                f.write("\n".join(out) + "\n")
            raw[t.title] = {r.label: {"values": r.vals, "error": r.err}
                            for r in t.rows}
            with open(os.path.splitext(RESULTS)[0] + ".json", "w") as f:
                json.dump(raw, f, indent=1)
    log(f"\nresults: {RESULTS}")


if __name__ == "__main__":
    main(sys.argv[1:])
