"""Helpers for the fault, recovery and bad-input tests: a fault proxy in front
of the RGW, a crash-and-remount of a Mount, and checks of what reached the
bucket, made with the independent client (tests/tools/s3client.py).
"""
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from helpers import check_archive, get_xattr, is_mounted, sha256, tail

ROOT = Path(__file__).resolve().parents[2]
FAULTPROXY = ROOT / "tests" / "tools" / "faultproxy.py"
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
WAIT = 120.0  # a deadline for things that must happen, never a measured time

# One multipart upload of 1 MiB parts: 5 MiB of incompressible data is 6 parts.
MULTI_SIZE = 5 << 20
MTIME = 1700000000
MODE = 0o640


def data_of(size, seed):
    """@size incompressible bytes, the same for the same @seed."""
    return random.Random(seed).randbytes(size)


class ProxyLog:
    """The proxy's log: one tuple (n, rule, fault, method, target, status) per line."""

    def __init__(self, lines):
        self.entries = []
        for line in lines:
            f = line.rstrip("\n").split("\t")
            if len(f) != 5:
                continue
            n, rule, fault, request, status = f
            method, _, rest = request.partition(" ")
            target = rest.rsplit(" ", 1)[0]
            self.entries.append((n, rule, fault, method, target, status))

    def final(self):
        """Entries that end a request (not the HELD line of a stall or hold)."""
        return [e for e in self.entries if e[5] != "HELD"]

    def find(self, method=None, pattern=None, status=None):
        """Final entries of @method whose target matches @pattern, with @status
        (an int, a string like "GONE", or None for any)."""
        out = []
        for e in self.final():
            if method and e[3] != method:
                continue
            if pattern and not re.search(pattern, e[4]):
                continue
            if status is not None and e[5] != str(status):
                continue
            out.append(e)
        return out

    def held(self, method=None, pattern=None):
        return [e for e in self.entries if e[5] == "HELD" and (not method or e[3] == method)
                and (not pattern or re.search(pattern, e[4]))]

    def part_numbers(self, status=200):
        """Part numbers of the part PUTs that ended with @status."""
        return [int(re.search(r"[?&]partNumber=(\d+)", e[4]).group(1))
                for e in self.find("PUT", r"[?&]partNumber=\d+", status)]


class FaultProxy:
    """tests/tools/faultproxy.py as a process between mgmtfs and the RGW."""

    def __init__(self, target_endpoint, directory):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "proxy.log"
        self.control = self.dir / "rules.json"
        self.set_rules([])
        target = urllib.parse.urlsplit(target_endpoint).netloc
        port_file = self.dir / "port"
        self.stderr = open(self.dir / "proxy.err", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(FAULTPROXY), "--listen", "127.0.0.1:0", "--target", target,
             "--log", str(self.log_path), "--control", str(self.control),
             "--port-file", str(port_file)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr)
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("faultproxy did not start: "
                                     + (self.dir / "proxy.err").read_text(errors="replace"))
            time.sleep(0.02)
        self.port = int(port_file.read_text())
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def set_rules(self, rules):
        """Replace the rules (dicts: fault, match, every, first, status); the
        proxy takes them before its next request."""
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(json.dumps({"rules": rules}))
        os.replace(tmp, self.control)

    def lines(self):
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def log(self, since=0):
        """The log from line @since on (see mark())."""
        return ProxyLog(self.lines()[since:])

    def mark(self):
        return len(self.lines())

    def wait_for(self, what, check, since=0, timeout=WAIT):
        """Poll the log until check(ProxyLog) is true."""
        deadline = time.monotonic() + timeout
        while True:
            lg = self.log(since)
            if check(lg):
                return lg
            if time.monotonic() > deadline:
                raise AssertionError(f"proxy log never showed {what}; log:\n"
                                     + "\n".join(self.lines()[-40:]))
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


@pytest.fixture
def fault_proxy(s3, workdir, request):
    """A fault proxy in front of the session's RGW, no faults until set_rules().

    Ask for it before `mount` so that it outlives the mounts (teardown runs
    in reverse order)."""
    d = workdir / f"proxy-{request.node.name}"[:120].replace("/", "_")
    p = FaultProxy(s3.endpoint, d)
    yield p
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print("--- fault proxy log:\n" + "\n".join(p.lines()[-80:]))
    p.stop()


# What an SSE-KMS bucket answers (faultproxy's kms-etag): ETags that are no
# MD5s.  Not on the part PUTs: their ETags go back to the RGW in the complete,
# which checks them (on S3 they are its own, and it takes them back).
KMS = {"fault": "kms-etag", "match": r"^(HEAD |PUT (?!\S*[?&]partNumber=))"}


def proxied(proxy, **extra):
    """Mount options for a daemon talking to S3 through @proxy."""
    opts = {"endpoint": proxy.endpoint, "part_size": "1M", "parts_in_flight": "2",
            "max_attempts": "6", "retry_max_seconds": "10", "stall_seconds": "30"}
    opts.update({k: str(v) for k, v in extra.items()})
    return opts


def crash(m):
    """kill -9 the daemon of Mount @m and lazily unmount its dead mount."""
    if m._watchdog:
        m._watchdog.cancel()
    m.kill()
    subprocess.run(["fusermount3", "-u", "-z", str(m.mnt)], capture_output=True)
    assert not is_mounted(m.mnt)
    n = len(list(m.base.glob("daemon.log.crashed*")))
    if m.log_path.exists():
        os.replace(m.log_path, m.base / f"daemon.log.crashed{n}")


def restart(m):
    """Mount again on the same local_dir and mountpoint, same options."""
    return m.start()


def earlier_logs(m):
    return "\n".join(f"--- {p.name}:\n{tail(p.read_text(errors='replace'))}"
                     for p in sorted(m.base.glob("daemon.log.crashed*")))


def list_parts(client, bucket, key, upload_id):
    """{part number: (etag, size)} the server holds for an upload (ListParts)."""
    r = client.request("GET", bucket, key, query=[("uploadId", upload_id)])
    assert r.status == 200, (r.status, r.body[:300])
    root = ET.fromstring(r.body)
    return {int(p.findtext(NS + "PartNumber")): (p.findtext(NS + "ETag").strip('"'),
                                                 int(p.findtext(NS + "Size")))
            for p in root.iter(NS + "Part")}


def uploads_under(m):
    return m.client.list_multipart_uploads(m.bucket, m.prefix + "/")


def assert_uploaded_once(m, name, data, scratch, mode=MODE, mtime=MTIME):
    """pending/@name went up once, whole: one object under the prefix, holding
    a tar.gz of exactly @data (checked by tarfile and tar), no multipart
    upload left, the file in completed/ with a record that says so."""
    key = m.key(name)
    assert m.client.list_objects(m.bucket, m.prefix + "/") == [key]
    left = uploads_under(m)
    assert left == [], f"incomplete multipart uploads left on the server: {left}"
    blob = m.client.get_object(m.bucket, key)
    check_archive(blob, name, data, mode, mtime, scratch)
    done = m.completed(name)
    assert get_xattr(done, "user.mgmt.status") == "completed"
    assert get_xattr(done, "user.mgmt.s3_object_key") == key
    assert get_xattr(done, "user.mgmt.checksum") == "sha256:" + sha256(data)
    assert get_xattr(done, "user.mgmt.compressed_size") == str(len(blob))
    assert sha256(done.read_bytes()) == sha256(data)
    assert not os.path.lexists(m.pending(name))


def write_file(path, data, mode=MODE, mtime=MTIME):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    os.utime(path, (mtime, mtime))


def write_until_error(path, chunk=1 << 20, limit=1 << 30):
    """Write random 1 MiB chunks into @path until a write or the close fails;
    returns (bytes written, the OSError or None)."""
    rng = random.Random(7)
    written = 0
    err = None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        while written < limit:
            buf = rng.randbytes(chunk)
            try:
                n = os.write(fd, buf)
            except OSError as e:
                err = e
                break
            written += n
    finally:
        try:
            os.close(fd)
        except OSError as e:
            err = err or e
    return written, err

