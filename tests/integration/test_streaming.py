"""Streamed compression and multipart upload, checked on the server.

Every object is fetched back with the independent client (tests/tools/s3client)
and checked with the real tools: `gzip -t`, `gzip -dc`, `tar -x`.  Sizes sit
on both sides of the 128 KiB compression block and of the part size (the test
RGW takes 1 MiB parts: MIN_PART_SIZE is lowered in conftest.py).

ETags: a single PUT's ETag is the MD5 of the object; a multipart object's is
MD5(part MD5s)-N.  Both are recomputed here from the object's bytes, which
also checks that the parts were cut at exactly part_size.
"""
import hashlib
import io
import math
import os
import random
import re
import subprocess
import tarfile
import time

import pytest

from helpers import check_archive, getfattr, sha256, write_source

MODE, MTIME = 0o640, 1700000000
KIB, MIB = 1024, 1024 * 1024
BLOCK = 128 * KIB           # the parallel gzip's block of uncompressed input
TAR_HEADER = 512            # a plain ustar header: data starts at stream offset 512
BIG_TIMEOUT = 300.0

SUFFIX = {"tar.gz": ".tar.gz", "gzip": ".gz", "tar": ".tar", "none": ""}


# -- data

TEXT = b"".join(b"%06d the quick brown fox jumps over the lazy mgmtfs daemon\n" % i
                for i in range(2000))


def mixed(size, seed=1):
    """@size bytes, deterministic: 4 KiB runs of random bytes and of text, alternating,
    so that every 128 KiB block has both compressible and incompressible data."""
    rng = random.Random(seed)
    out, n, i = [], 0, 0
    while n < size:
        run = rng.randbytes(4 * KIB) if i % 2 == 0 else TEXT[(i * 997) % len(TEXT):][:4 * KIB]
        out.append(run)
        n += len(run)
        i += 1
    return b"".join(out)[:size]


def text(size):
    return (TEXT * (size // len(TEXT) + 1))[:size]


# -- checks

def md5(data):
    return hashlib.md5(data).hexdigest()


def multipart_etag(blob, part_size):
    """The ETag of @blob uploaded in parts of @part_size (the last one shorter)."""
    parts = [blob[o:o + part_size] for o in range(0, len(blob), part_size)]
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    return f"{digest}-{len(parts)}"


def expected_etags(blob, part_size):
    """The ETag S3 gives @blob sent with @part_size parts: one PUT up to a whole
    part (the daemon reads one byte ahead to tell), a multipart upload above."""
    if len(blob) <= part_size:
        return {md5(blob)}
    return {multipart_etag(blob, part_size)}


def gzip_test(blob, scratch):
    """`gzip -t` on @blob, written to a file as a user would download it."""
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / "object.gz"
    path.write_bytes(blob)
    p = subprocess.run(["gzip", "-t", str(path)], capture_output=True)
    assert p.returncode == 0, f"gzip -t: {p.stderr.decode(errors='replace')}"


def gunzip(blob):
    p = subprocess.run(["gzip", "-dc"], input=blob, capture_output=True)
    assert p.returncode == 0, f"gzip -dc: {p.stderr.decode(errors='replace')}"
    return p.stdout


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def check_one_member_tar(blob, name, size, digest, mode, mtime, scratch, gz):
    """@blob is a tar (gzip-compressed if @gz) of exactly one file @name of @size
    bytes with sha256 @digest, @mode and @mtime: checked with tarfile and with
    the real tar (hashed in pieces, so it serves for large objects too)."""
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz" if gz else "r:") as tf:
        members = tf.getmembers()
        assert [mb.name for mb in members] == [name]
        mb = members[0]
        assert mb.isfile() and mb.size == size
        assert mb.mode & 0o7777 == mode and int(mb.mtime) == mtime
        assert hashlib.sha256(tf.extractfile(mb).read()).hexdigest() == digest
    scratch.mkdir(parents=True, exist_ok=True)
    archive = scratch / ("object.tar.gz" if gz else "object.tar")
    archive.write_bytes(blob)
    out = scratch / "out"
    out.mkdir()
    p = subprocess.run(["tar", "-xzf" if gz else "-xf", str(archive), "-C", str(out)],
                       capture_output=True)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    archive.unlink()
    assert os.listdir(out) == [name]
    st = os.stat(out / name)
    assert st.st_size == size and st.st_mode & 0o7777 == mode and int(st.st_mtime) == mtime
    assert file_sha256(out / name) == digest
    (out / name).unlink()


def check_plain_tar(blob, name, data, mode, mtime, scratch):
    """@blob is an uncompressed tar of one file @name holding @data."""
    assert blob[:2] != b"\x1f\x8b", "object is gzip, want a plain tar"
    check_one_member_tar(blob, name, len(data), sha256(data), mode, mtime, scratch, gz=False)


def check_object(m, name, data, ctype, scratch):
    """The object of @name holds @data in the form @ctype; returns the object's bytes."""
    key = f"{m.prefix}/{name}{SUFFIX[ctype]}"
    blob = m.client.get_object(m.bucket, key)
    if ctype == "tar.gz":
        gzip_test(blob, scratch / "gz")
        check_archive(blob, name, data, MODE, MTIME, scratch / "untar")
    elif ctype == "gzip":
        gzip_test(blob, scratch / "gz")
        assert sha256(gunzip(blob)) == sha256(data)
    elif ctype == "tar":
        check_plain_tar(blob, name, data, MODE, MTIME, scratch / "untar")
    else:
        assert len(blob) == len(data) and sha256(blob) == sha256(data)
    return key, blob


def check_record(m, name, data, ctype, key, blob, part_size):
    """getfattr of completed/@name, the object's ETag, and no multipart upload left."""
    fields = getfattr(m.completed(name))
    head = m.client.head_object(m.bucket, key)
    etag = head["etag"].strip('"')
    assert etag in expected_etags(blob, part_size), (len(blob), etag)
    assert head.get("x-amz-meta-mgmt-compression") == ctype
    if "-" not in etag:  # a multipart upload starts before the sha256 is known
        assert head.get("x-amz-meta-mgmt-sha256") == sha256(data)
    want = {"status": "completed", "compression_type": ctype, "s3_object_key": key,
            "original_size": str(len(data)), "compressed_size": str(len(blob)),
            "checksum": f"sha256:{sha256(data)}", "etag": etag}
    assert {k: fields.get(f"user.mgmt.{k}") for k in want} == want
    assert m.client.list_objects(m.bucket, m.prefix + "/") == [key]
    assert m.client.list_multipart_uploads(m.bucket, m.prefix + "/") == []
    return etag


def roundtrip(mount, tmp_path, name, data, options, ctype, part_size):
    m = mount(options)
    (tmp_path / "src").mkdir()
    m.drop(write_source(tmp_path / "src", name, data, MODE, MTIME))
    m.wait_completed(name)
    assert sha256(m.completed(name).read_bytes()) == sha256(data)
    key, blob = check_object(m, name, data, ctype, tmp_path)
    etag = check_record(m, name, data, ctype, key, blob, part_size)
    return m, blob, etag


# -- part boundaries: compression=none, the object is the file itself

@pytest.mark.parametrize("size, parts", [
    (0, 0), (MIB - 1, 0), (MIB, 0), (MIB + 1, 2),
], ids=["0", "part-1", "part", "part+1"])
@pytest.mark.parametrize("signing", ["yes", "no"])
def test_part_boundary_uncompressed(mount, tmp_path, size, parts, signing):
    """payload_signing=no: UNSIGNED-PAYLOAD, the server checks Content-MD5 alone."""
    data = mixed(size, seed=size)
    opts = {"compression": "none", "part_size": "1M", "parts_in_flight": 4,
            "payload_signing": signing}
    _, blob, etag = roundtrip(mount, tmp_path, "raw.bin", data, opts, "none", MIB)
    assert blob == data
    if parts:
        assert etag.endswith(f"-{parts}"), f"{size} bytes with 1 MiB parts: ETag {etag}"
    else:
        assert etag == md5(data), f"{size} bytes fit one part: one PUT, ETag {etag}"


# -- block boundaries of the parallel gzip (and part boundaries with part_size=1M)

BLOCK_SIZES = {
    "0": 0, "1": 1,
    "block-1": BLOCK - 1, "block": BLOCK, "block+1": BLOCK + 1,
    # tar.gz: header + data end exactly on the first block's end
    "block-header": BLOCK - TAR_HEADER,
    "3blocks+17": 3 * BLOCK + 17,
    "part-1": MIB - 1, "part": MIB, "part+1": MIB + 1,
}


@pytest.mark.parametrize("ctype", ["tar.gz", "gzip"])
@pytest.mark.parametrize("size", list(BLOCK_SIZES.values()), ids=list(BLOCK_SIZES))
def test_parallel_gzip_boundaries(mount, tmp_path, ctype, size):
    data = mixed(size, seed=size + 7)
    opts = {"compression": ctype, "part_size": "1M", "threads": 2, "level": 6}
    roundtrip(mount, tmp_path, "mixed.dat", data, opts, ctype, MIB)


def test_multipart_gzip_object(mount, tmp_path):
    """A tar.gz larger than one part: the compressed stream is cut into parts
    (incompressible data, so that the object really is over 1 MiB)."""
    size = 3 * MIB + 12345
    data = random.Random(42).randbytes(size)
    opts = {"compression": "tar.gz", "part_size": "1M", "threads": 2, "level": 1}
    _, blob, etag = roundtrip(mount, tmp_path, "noise.bin", data, opts, "tar.gz", MIB)
    assert len(blob) > 3 * MIB and etag.endswith(f"-{math.ceil(len(blob) / MIB)}")


# -- what each compression= setting stores

MODES = {
    # id: (compression option, content, compression_type recorded)
    "auto-random-is-tar": ("auto", lambda: os.urandom(2 * MIB), "tar"),
    "auto-text-is-targz": ("auto", lambda: text(2 * MIB), "tar.gz"),
    "tar": ("tar", lambda: text(300 * KIB), "tar"),
    "gzip": ("gzip", lambda: text(300 * KIB) + os.urandom(5000), "gzip"),
    "none": ("none", lambda: text(300 * KIB) + os.urandom(5000), "none"),
}


@pytest.mark.parametrize("case", list(MODES))
def test_compression_setting(mount, tmp_path, case):
    option, make, ctype = MODES[case]
    data = make()
    opts = {"compression": option, "part_size": "1M"}
    _, blob, _ = roundtrip(mount, tmp_path, "sample.dat", data, opts, ctype, MIB)
    if ctype == "tar":
        assert len(blob) >= len(data) + TAR_HEADER  # stored, not compressed
    if ctype in ("tar.gz", "gzip"):
        assert len(blob) < len(data) // 10


# -- 300 MiB, 5 MiB parts, 4 in flight

def make_big(path, mib):
    """@mib MiB: each MiB random but for a 16 KiB run of text in every other one
    (incompressible enough that the tar.gz stays over 295 MiB: 60 parts of 5 MiB).
    Returns the sha256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(mib):
            chunk = os.urandom(MIB) if i % 2 == 0 else os.urandom(MIB - 16 * KIB) + text(16 * KIB)
            h.update(chunk)
            f.write(chunk)
    os.chmod(path, MODE)
    os.utime(path, (MTIME, MTIME))
    return h.hexdigest()


def test_300mib_multipart(mount, tmp_path):
    name, size, part = "big300.bin", 300 * MIB, 5 * MIB
    (tmp_path / "src").mkdir()
    src = tmp_path / "src" / name
    digest = make_big(src, 300)
    opts = {"compression": "tar.gz", "level": 1, "part_size": "5M", "parts_in_flight": 4}
    m = mount(opts)
    m.drop(src)
    m.wait_completed(name, timeout=BIG_TIMEOUT)
    src.unlink()

    key = m.key(name)
    blob = m.client.get_object(m.bucket, key)
    scratch = tmp_path / "check"
    gzip_test(blob, scratch)
    check_one_member_tar(blob, name, size, digest, MODE, MTIME, scratch, gz=True)

    nparts = math.ceil(len(blob) / part)
    assert nparts >= 60, f"{len(blob)} bytes: only {nparts} parts"
    head = m.client.head_object(m.bucket, key)
    etag = head["etag"].strip('"')
    assert etag.endswith(f"-{nparts}"), etag
    assert etag == multipart_etag(blob, part)
    fields = getfattr(m.completed(name))
    assert fields.get("user.mgmt.checksum") == f"sha256:{digest}"
    assert fields.get("user.mgmt.original_size") == str(size)
    assert fields.get("user.mgmt.compressed_size") == str(len(blob))
    assert fields.get("user.mgmt.etag") == etag
    assert m.client.list_multipart_uploads(m.bucket, m.prefix + "/") == []
    assert m.client.list_objects(m.bucket, m.prefix + "/") == [key]


def assert_whole_uncompressed(m, name, data, part_size):
    """completed/@name went up as @data itself, in parts of @part_size."""
    key = f"{m.prefix}/{name}"
    blob = m.client.get_object(m.bucket, key)
    assert blob == data
    assert m.client.head_object(m.bucket, key)["etag"].strip('"') == \
        multipart_etag(blob, part_size)
    assert getfattr(m.completed(name)).get("user.mgmt.checksum") == f"sha256:{sha256(data)}"


def vm_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_mount_readies_the_part_buffers_of_one_upload(mount, tmp_path):
    """A mount touches the part buffers of one multipart upload ((parts_in_flight + 1)
    x part_size, here 4 x 4 MiB) in the background, so that the first big file does not
    wait for them; a held mount starts no upload and takes none.  The first upload then
    goes up whole from those buffers."""
    opts = {"compression": "none", "part_size": "4M", "parts_in_flight": 3}
    pool_kib = 4 * 4 * 1024
    held = mount(dict(opts, hold=True))
    m = mount(opts)
    deadline = time.monotonic() + 20
    while vm_kib(m.proc.pid) - vm_kib(held.proc.pid) < pool_kib * 0.9:
        assert time.monotonic() < deadline, (
            f"the mount's RSS is {vm_kib(m.proc.pid)} KiB, the held mount's "
            f"{vm_kib(held.proc.pid)} KiB: the part buffers were not made ready")
        time.sleep(0.05)
    # (the held mount had as long, and more, to take them)
    assert vm_kib(held.proc.pid, "VmHWM") < vm_kib(m.proc.pid) - pool_kib * 0.9

    name, data = "first.bin", mixed(10 * MIB + 12345, seed=7)
    src = write_source(tmp_path, name, data, MODE, MTIME)
    m.drop(src)
    m.wait_completed(name)
    assert_whole_uncompressed(m, name, data, 4 * MIB)


def test_idle_mount_gives_its_part_buffers_back(mount, tmp_path):
    """After buffer_idle seconds without an upload the daemon gives its part buffers back
    to the system (an idle mount held 80 MiB of them for good at the defaults); the next
    multipart upload makes them again and goes up whole, and they go back after it."""
    opts = {"compression": "none", "part_size": "4M", "parts_in_flight": 3}
    pool_kib = 4 * 4 * 1024
    # AddressSanitizer keeps what is freed in quarantine; without one it unmaps at once
    asan = os.environ.get("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=0")
    env = {"ASAN_OPTIONS": asan + ":quarantine_size_mb=0"}
    held = mount(dict(opts, hold=True), env)
    m = mount(dict(opts, buffer_idle=2, debug=True), env)

    def given_back(what, times, below):
        """The daemon says it gave its buffers back @times times in all; its RSS fell."""
        deadline = time.monotonic() + 20
        while len(re.findall(r"no upload for 2 s: \d+ \+ 0 buffers", m.log())) < times:
            assert time.monotonic() < deadline, f"{what}: no buffers given back:\n{m.log()}"
            time.sleep(0.05)
        assert vm_kib(m.proc.pid) < below, (
            f"{what}: the mount's RSS is {vm_kib(m.proc.pid)} KiB, not below {below} "
            f"(a held mount's: {vm_kib(held.proc.pid)} KiB)")

    given_back("after the mount", 1, vm_kib(held.proc.pid) + pool_kib // 4)
    name, data = "after-idle.bin", mixed(10 * MIB + 4321, seed=13)
    m.drop(write_source(tmp_path, name, data, MODE, MTIME))
    m.wait_completed(name)
    busy_kib = vm_kib(m.proc.pid)  # buffer_idle (2 s) has not run out yet
    assert_whole_uncompressed(m, name, data, 4 * MIB)
    given_back("after the upload", 2, busy_kib - pool_kib * 3 // 4)
    assert m.stop() == []
    assert re.findall(r"no upload for 2 s: (\d+) \+ 0 buffers", m.log()) == ["4", "4"]
    # the mount's 4, then the upload's 4 made again
    assert re.findall(rf"part buffers of {4 * MIB} bytes: (\d+) made", m.log()) == ["8"]


def test_multipart_upload_holds_at_most_its_part_buffers(mount, tmp_path):
    """A multipart upload holds parts_in_flight + 1 part buffers at most: the reader
    takes the next buffer only once a sender has put its own back.  A sender that
    said "one fewer in flight" before giving its buffer back let the reader find
    the pool empty and make one more (16 MiB over the bound at the defaults).  The
    daemon logs at unmount how many part buffers it made; one upload's worth is all
    a mount needs, however many parts go up."""
    pif = 2
    m = mount({"compression": "none", "part_size": "1M", "parts_in_flight": pif,
               "debug": True})
    name, data = "many-parts.bin", mixed(96 * MIB + 1, seed=11)
    m.drop(write_source(tmp_path, name, data, MODE, MTIME))
    m.wait_completed(name)
    assert m.client.head_object(m.bucket, f"{m.prefix}/{name}")["etag"].strip('"') == \
        multipart_etag(data, MIB)
    assert m.stop() == []
    made = re.findall(rf"part buffers of {MIB} bytes: (\d+) made", m.log())
    assert made == [str(pif + 1)], (
        f"part buffers made: {made}; one upload needs {pif + 1}")
