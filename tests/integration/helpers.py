"""Helpers for the integration tests: one real mgmtfs mount, and checks of what it produced."""
import datetime
import errno
import hashlib
import io
import os
import re
import signal
import subprocess
import tarfile
import threading
import time
from pathlib import Path

SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "ThreadSanitizer", "runtime error")
MOUNT_TIMEOUT = 30.0
EXIT_TIMEOUT = 60.0
UPLOAD_TIMEOUT = 180.0
# The watchdog kills a daemon still mounted after this long, so that a hung
# FUSE request fails the test instead of hanging the suite.
WATCHDOG = float(os.environ.get("MGMTFS_TEST_TIMEOUT", "300"))
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def is_mounted(path):
    want = os.path.realpath(path).replace(" ", "\\040")
    with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
        return any(line.split()[1] == want for line in f)


def sanitizer_findings(text, what="daemon"):
    """One complaint per kind of sanitizer report found in @text."""
    return [f"{what} output has '{m}'" for m in SANITIZER_MARKS if m in text]


def tail(text, lines=60):
    return "\n".join(text.splitlines()[-lines:])


def daemon_env(home, overrides):
    """The caller's environment without any mgmtfs or AWS settings, plus @overrides."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MGMT_", "AWS_"))}
    env["HOME"] = str(home)  # no ~/.config/mgmtfs/config, no ~/.aws of the user
    env.setdefault("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=0")
    env.update({k: v for k, v in overrides.items() if v is not None})
    return env


def format_options(opts):
    """-o text from a dict: True -> bare flag, None -> left out."""
    return ",".join(k if v is True else f"{k}={v}" for k, v in opts.items() if v is not None)


def get_status(path):
    """user.mgmt.status of @path, or None if the file or the attribute is missing."""
    try:
        return os.getxattr(path, "user.mgmt.status").decode()
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENODATA):
            return None
        raise


def get_xattr(path, name):
    try:
        return os.getxattr(path, name).decode()
    except OSError as e:
        return f"<{errno.errorcode.get(e.errno, e.errno)}>"


def wait_status(path, want, timeout=UPLOAD_TIMEOUT, watch_failed=None):
    """Poll user.mgmt.status of @path until it is @want.

    Fails at once when @path, or @watch_failed (where a failed unit stays),
    says "failed" and that is not what is wanted.
    """
    deadline = time.monotonic() + timeout
    while True:
        status = get_status(path)
        if status == want:
            return
        for p in (path, watch_failed):
            if p is not None and want != "failed" and get_status(p) == "failed":
                raise AssertionError(f"{p}: upload failed: {get_xattr(p, 'user.mgmt.error')}")
        if time.monotonic() > deadline:
            seen = get_status(watch_failed) if watch_failed else None
            raise AssertionError(f"{path}: status {status!r} after {timeout:.0f} s, want {want!r}"
                                 + (f" ({watch_failed}: {seen!r})" if watch_failed else ""))
        time.sleep(0.05)


def write_source(directory, name, data, mode=0o640, mtime=1700000000):
    """A file to drop into pending/, with a mode and mtime the archive must keep."""
    path = Path(directory) / name
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, (mtime, mtime))
    return path


def getfattr(path):
    """`getfattr -d` of @path (the real command) as {name: value}."""
    p = subprocess.run(["getfattr", "-d", "-e", "text", "--absolute-names", "--", str(path)],
                       capture_output=True, timeout=30)
    assert p.returncode == 0, f"getfattr -d {path}: {p.stderr.decode(errors='replace')}"
    out = {}
    for line in p.stdout.decode("latin-1").splitlines():
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if sep:  # -e text: "value", with \ooo escapes (bytes >= 0x80 too)
            value = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), value[1:-1])
        out[name.encode("latin-1").decode()] = value.encode("latin-1").decode()
    return out


def parse_utc(text):
    assert ISO_UTC.match(text), f"not ISO 8601 UTC: {text!r}"
    return datetime.datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def check_archive(blob, name, data, mode, mtime, scratch):
    """@blob is a tar.gz holding exactly one file @name with @data, @mode, @mtime.

    Checked twice: with Python's tarfile and with the real `tar -xzf`.
    """
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tf:
        members = tf.getmembers()
        assert [m.name for m in members] == [name]
        member = members[0]
        assert member.isfile()
        assert member.size == len(data)
        assert member.mode & 0o7777 == mode, oct(member.mode)
        assert int(member.mtime) == mtime
        assert sha256(tf.extractfile(member).read()) == sha256(data)

    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    archive = scratch / "object.tar.gz"
    archive.write_bytes(blob)
    out = scratch / "out"
    out.mkdir()
    p = subprocess.run(["tar", "-xzf", str(archive), "-C", str(out)], capture_output=True)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    assert os.listdir(out) == [name]
    st = os.stat(out / name)
    assert sha256((out / name).read_bytes()) == sha256(data)
    assert st.st_mode & 0o7777 == mode, oct(st.st_mode)
    assert int(st.st_mtime) == mtime


class Mount:
    """One `mgmtfs MNT -f` daemon on a fresh local_dir, with a unique object prefix."""

    def __init__(self, binary, s3, base, prefix, options=None, env=None):
        self.binary, self.prefix, self.client = binary, prefix, s3.client
        self.bucket = (options or {}).get("bucket", s3.bucket)
        self.base = Path(base)
        self.mnt, self.local = self.base / "mnt", self.base / "local"
        self.log_path = self.base / "daemon.log"
        self.options = {"bucket": s3.bucket, "prefix": prefix, "local_dir": self.local,
                        "settle": "0.2", "endpoint": s3.endpoint, "region": s3.region}
        if os.environ.get("MGMTFS_TEST_PASSTHROUGH") == "0":  # the daemon's own write path
            self.options["passthrough"] = "0"
        self.options.update(options or {})
        self.env = daemon_env(self.base, {"AWS_ACCESS_KEY_ID": s3.access_key,
                                          "AWS_SECRET_ACCESS_KEY": s3.secret_key, **(env or {})})
        self.proc = None
        self.watchdog_fired = False
        self._watchdog = None

    # -- life cycle

    def argv(self, foreground=True):
        fg = ["-f"] if foreground else []
        return [str(self.binary), str(self.mnt), *fg, "-o", format_options(self.options)]

    def start(self):
        for d in (self.mnt, self.local):
            d.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv(), env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not is_mounted(self.mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"mount failed (exit {self.proc.returncode}):\n"
                                     f"{tail(self.log())}")
            time.sleep(0.05)
        self._watchdog = threading.Timer(WATCHDOG, self._fire_watchdog)
        self._watchdog.daemon = True
        self._watchdog.start()
        return self

    def _fire_watchdog(self):
        self.watchdog_fired = True
        self.kill()

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        """Unmount, wait for the daemon to exit; returns a list of complaints."""
        errors = []
        if self._watchdog:
            self._watchdog.cancel()
        if self.watchdog_fired:
            errors.append(f"daemon still running after {WATCHDOG:.0f} s: killed")
        for _ in range(50):
            if not is_mounted(self.mnt):
                break
            if subprocess.run(["fusermount3", "-u", str(self.mnt)],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True)
            errors.append("mount stayed busy: lazy unmount")
        try:
            rc = self.proc.wait(timeout=EXIT_TIMEOUT)
            if rc != 0 and not self.watchdog_fired:
                errors.append(f"daemon exited with status {rc} after unmount")
        except subprocess.TimeoutExpired:
            self.kill()
            errors.append(f"daemon did not exit {EXIT_TIMEOUT:.0f} s after unmount: killed")
        errors += sanitizer_findings(self.log())
        if errors:
            errors.append(f"daemon log tail:\n{tail(self.log())}")
        return errors

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- paths and actions

    def path(self, *parts):
        return self.mnt.joinpath(*parts)

    def pending(self, name):
        return self.path("pending", name)

    def completed(self, name):
        return self.path("completed", name)

    def key(self, name):
        """The object key of a unit dropped as @name (prefix joined with '/')."""
        return f"{self.prefix}/{name}.tar.gz" if self.prefix else f"{name}.tar.gz"

    def drop(self, src, name=None):
        """`cp` @src into pending/ (keeping mode and mtime); returns the pending path."""
        dest = self.pending(name or Path(src).name)
        subprocess.run(["cp", "--preserve=mode,timestamps", str(src), str(dest)], check=True)
        return dest

    def wait_completed(self, name, completed_name=None, timeout=UPLOAD_TIMEOUT):
        """Wait until pending/@name has landed as completed/@completed_name."""
        done = self.completed(completed_name or name)
        wait_status(done, "completed", timeout, watch_failed=self.pending(name))
        return done

    def cli(self, *args):
        """Run `mgmtfs ARGS --local-dir LOCAL`; fails on sanitizer output."""
        p = subprocess.run([str(self.binary), *args, "--local-dir", str(self.local)],
                           env=self.env, capture_output=True, timeout=60)
        err = p.stderr.decode(errors="replace")
        findings = sanitizer_findings(err, "mgmtfs " + args[0])
        assert not findings, f"{findings[0]}:\n{tail(err)}"
        return p
