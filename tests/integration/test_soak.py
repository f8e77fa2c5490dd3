"""Seeded random work, the daemon killed (-9) between rounds: nothing written is lost.

Each round writes a mix of units into pending/ (empty, small and multipart
files, a directory, an rsync-style rename, a file written again or removed
while it may be uploading, new content under an earlier name, content
already seen under another name), waits a random
moment, so that the kill lands in the settle time, an upload, its complete,
the move or the record, and kills the daemon; then mounts again.  The last
round lets everything finish.

What must hold at the end, whatever the timing was:
- pending/ is empty: every unit went up;
- every entry of completed/ has a record (completed or duplicate) whose
  object exists and holds exactly the entry's bytes (unpacked as its
  compression_type says), its checksum the sha256 of those bytes;
- the last content written under each name is in completed/, under the
  name or a suffixed one;
- no multipart upload is left, and the objects under the prefix are exactly
  those the records name (no object nobody knows of).

MGMTFS_SOAK_SEED=N runs another sequence (the seed is in every message);
MGMTFS_SOAK_DEBUG=1 has the daemon log every step.
"""
import gzip
import io
import json
import os
import random
import tarfile
import time

import pytest

from fault_tools import crash, earlier_logs, restart, write_file
from helpers import get_xattr, sha256, tail

SEED = int(os.environ.get("MGMTFS_SOAK_SEED", "20261207"))
ROUNDS = 5
SIZES = (0, 1, 100, 65536, 700_000, 1_500_000, 3_300_000)
OPTIONS = {"part_size": "1M", "parts_in_flight": "2", "uploads": "3", "dir_settle": "0.4"}
if os.environ.get("MGMTFS_SOAK_DEBUG"):
    OPTIONS["debug"] = "1"


def tree_of(path):
    """{relative path: bytes} of the regular files under @path (a file: {'': bytes})."""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return {"": f.read()}
    out = {}
    for d, _, files in os.walk(path):
        for n in files:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, path)] = f.read()
    return out


def tree_of_object(blob, name, ctype):
    """The same map for an object of compression @ctype whose top entry is @name,
    and the name it has inside (any name for a file unit: a duplicate's object
    was made for the other unit)."""
    if ctype == "none":
        return {"": blob}, name
    if ctype == "gzip":
        return {"": gzip.decompress(blob)}, name
    assert ctype in ("tar", "tar.gz"), ctype
    out = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz" if ctype == "tar.gz" else "r:") as tf:
        members = [m for m in tf.getmembers() if m.isfile()]
        if len(tf.getmembers()) == 1 and members:
            return {"": tf.extractfile(members[0]).read()}, members[0].name
        for m in members:
            top, _, rest = m.name.partition("/")
            assert top == name, f"member {m.name!r} outside {name!r}"
            out[rest] = tf.extractfile(m).read()
    return out, name


class Work:
    """What the rounds wrote: name -> the last content (a file's bytes or a tree)."""

    def __init__(self, m, rng):
        self.m, self.rng = m, rng
        self.last = {}
        self.seen = []  # earlier file contents, for duplicates
        self.n = 0

    def name(self, ext="bin"):
        self.n += 1
        return f"u{self.n:03d}.{ext}"

    def data(self):
        return self.rng.randbytes(self.rng.choice(SIZES))

    def file(self):
        name, data = self.name(), self.data()
        write_file(self.m.pending(name), data)
        self.last[name] = {"": data}
        self.seen.append(data)

    def duplicate(self):
        if not self.seen:
            return self.file()
        name, data = self.name(), self.rng.choice(self.seen)
        write_file(self.m.pending(name), data)
        self.last[name] = {"": data}

    def renamed(self):
        name, data = self.name(), self.data()
        tmp = self.m.pending(f".{name}.Xa81zq")
        write_file(tmp, data)
        os.rename(tmp, self.m.pending(name))
        self.last[name] = {"": data}
        self.seen.append(data)

    def rewritten(self):
        name = self.name()
        write_file(self.m.pending(name), self.data())
        time.sleep(self.rng.uniform(0, 0.5))
        data = self.data()
        write_file(self.m.pending(name), data)  # a new file, should the first be gone
        self.last[name] = {"": data}
        self.seen.append(data)

    def reused(self):
        """New content under an earlier file's name: a rewrite if that one is still in
        pending/, else a new unit (NAME_1 in completed/, NAME_1.bin... in the bucket)."""
        names = [n for n, t in self.last.items() if set(t) == {""}]
        if not names:
            return self.file()
        name, data = self.rng.choice(names), self.data()
        write_file(self.m.pending(name), data)
        self.last[name] = {"": data}
        self.seen.append(data)

    def removed(self):
        name, data = self.name(), self.data()
        write_file(self.m.pending(name), data)
        time.sleep(self.rng.uniform(0, 0.6))
        try:
            os.unlink(self.m.pending(name))
        except FileNotFoundError:
            self.last[name] = {"": data}  # uploaded and moved first: in completed/

    def directory(self):
        name = self.name("d")
        d = self.m.pending(name)
        d.mkdir()
        (d / "sub").mkdir()
        tree = {"a.txt": b"text " * self.rng.randrange(1, 500), "sub/b.bin": self.data(),
                "sub/c.bin": self.data()}
        for rel, data in tree.items():
            write_file(d / rel, data)
        self.last[name] = tree

    def round(self):
        for _ in range(self.rng.randrange(3, 7)):
            self.rng.choice((self.file, self.file, self.duplicate, self.renamed,
                             self.rewritten, self.removed, self.reused, self.directory))()


def wait_pending_empty(m, timeout=180):
    end = time.monotonic() + timeout
    while True:
        left = os.listdir(m.path("pending"))
        if not left:
            return
        if time.monotonic() > end:
            states = {n: (get_xattr(m.pending(n), "user.mgmt.status"),
                          get_xattr(m.pending(n), "user.mgmt.error")) for n in left}
            pytest.fail(f"still in pending/ after {timeout} s: {states}\n"
                        f"{earlier_logs(m)}\n--- now:\n{tail(m.log())}")
        time.sleep(0.1)


def logs_about(m, keys):
    """The daemon's log lines (every run) that name the units of @keys."""
    names = {os.path.basename(k[0] if isinstance(k, tuple) else k).split(".")[0] for k in keys}
    logs = sorted(m.base.glob("daemon.log.crashed*"), key=lambda p: int(p.name[len("daemon.log.crashed"):]))
    out = []
    for p in [*logs, m.log_path]:
        out.append(f"--- {p.name}")
        out += [ln for ln in p.read_text(errors="replace").splitlines()
                if any(n in ln for n in names)]
    return "\n".join(out)


def stem(entry):
    """The unit name of a completed/ entry: 'u003.bin' for 'u003.bin' and 'u003_1.bin'."""
    base, dot, ext = entry.partition(".")
    return base.rsplit("_", 1)[0] + dot + ext


@pytest.mark.parametrize("compression", ["tar.gz", "none"])
def test_kill9_rounds_lose_nothing(mount, compression):
    rng = random.Random(SEED)
    m = mount(dict(OPTIONS, compression=compression))
    work = Work(m, rng)
    for r in range(ROUNDS):
        work.round()
        if r == ROUNDS - 1:
            break
        time.sleep(rng.uniform(0, 1.5))
        crash(m)
        restart(m)
    wait_pending_empty(m)

    keys = set()
    found = {}
    for entry in sorted(os.listdir(m.path("completed"))):
        done = m.completed(entry)
        status = get_xattr(done, "user.mgmt.status")
        where = f"completed/{entry} ({compression}, seed {SEED})"
        assert status in ("completed", "duplicate"), f"{where}: status {status}"
        key = get_xattr(done, "user.mgmt.s3_object_key")
        original = os.path.basename(get_xattr(done, "user.mgmt.original_path"))
        local = tree_of(done)
        blob = m.client.get_object(m.bucket, key)
        ctype = get_xattr(done, "user.mgmt.compression_type")
        stored, member = tree_of_object(blob, original, ctype)
        assert stored == local, f"{where}: the object {key} does not hold the local bytes"
        if status == "completed":
            assert member == original, f"{where}: archive member {member!r}"
            assert get_xattr(done, "user.mgmt.compressed_size") == str(len(blob))
        if set(local) == {""}:
            assert get_xattr(done, "user.mgmt.checksum") == "sha256:" + sha256(local[""])
        keys.add(key)
        found.setdefault(stem(entry), []).append(local)

    for name, tree in work.last.items():
        assert tree in found.get(name, []), \
            f"the last content of pending/{name} is not in completed/ (seed {SEED})"
    left = m.client.list_multipart_uploads(m.bucket, m.prefix + "/")
    assert left == [], f"multipart uploads left: {left}\n{logs_about(m, left)}"
    # a unit removed as it finished keeps its record (the object is up), as after rm
    records = json.loads(m.cli("list", "--json").stdout)
    named = {r["s3_object_key"] for r in records if r["status"] in ("completed", "duplicate")}
    assert keys <= named
    objects = set(m.client.list_objects(m.bucket, m.prefix + "/"))
    assert objects == named, f"objects no record names: {sorted(objects - named)}; " \
                             f"records without object: {sorted(named - objects)}\n" \
                             f"{logs_about(m, objects ^ named)}"
