"""A local read error fails the unit with the error.

local_dir is a btrfs filesystem on a loop device.  Once the unit is queued
(the mount holds uploads), one 4 KiB block of the file is overwritten on the
device, under btrfs: btrfs checks every data block against its checksum, so
from then on a read(2) of that block fails with EIO -- a real kernel I/O
error, every time.  (device-mapper's `error` target would do the same, but
kernels without device-mapper, like this project's machines', have no
/dev/mapper/control.)

Needs root, a loop device, and btrfs-progs (mkfs.btrfs); skipped otherwise.
"""
import errno
import mmap
import os
import shutil
import subprocess
import time
import zlib

import pytest

from fault_tools import (WAIT, assert_uploaded_once, data_of, fault_proxy, proxied,
                         uploads_under, write_file)
from helpers import get_status, get_xattr, wait_status

assert fault_proxy  # a fixture, used by name

SIZE = 12 << 20
BLOCK = 4096
# the last block, in part 12 of a 1M-part upload (the bytes are incompressible,
# so the tar.gz is as long as they are).  The compressors read up to ~5 MiB
# ahead of what goes out, so some parts have gone up when the read fails;
# part 11 goes up only once part 12 has been read (its MD5 is finished then).
BAD_AT = SIZE - BLOCK
BAD_PART = 12
IMAGE_SIZE = 256 << 20


def _run(*argv):
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120)


class EioFs:
    """A btrfs on a loop device whose data blocks can be made unreadable."""

    def __init__(self, image, loop, directory):
        self.image, self.loop, self.dir = image, loop, directory
        self.broken = None  # (offset on the device, the block that was there)

    def break_block(self, block):
        """Overwrite the one copy of @block (file content, BLOCK bytes, written
        and synced) on the device, then drop every cache holding it, so that
        the next read of it goes to the device and fails its checksum."""
        assert len(block) == BLOCK
        with open(self.image, "r+b") as f:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                at = mm.find(block)
                again = mm.find(block, at + 1) if at >= 0 else -1
            assert at >= 0, "the block is not on the device (compressed? not synced?)"
            assert again < 0, f"the block is on the device twice ({at}, {again})"
            os.pwrite(f.fileno(), bytes(b ^ 0xFF for b in block), at)
            os.fsync(f.fileno())
        self.broken = (at, block)
        self._drop_caches()

    def mend(self):
        """Put the block broken by break_block() back."""
        at, block = self.broken
        with open(self.image, "r+b") as f:
            os.pwrite(f.fileno(), block, at)
            os.fsync(f.fileno())
        self._drop_caches()

    def _drop_caches(self):
        _run("blockdev", "--flushbufs", self.loop)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


@pytest.fixture
def eio_fs(workdir, request):
    """An EioFs (torn down after the mount: ask for it before `mount`)."""
    for tool in ("losetup", "mkfs.btrfs", "blockdev", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing (btrfs-progs, mount, util-linux)")
    if not os.access("/proc/sys/vm/drop_caches", os.W_OK):
        pytest.skip("cannot drop the page cache here (not root?)")
    base = workdir / f"eio-{request.node.name}".replace("/", "_").replace("[", "-").rstrip("]")
    base.mkdir()
    image, directory = base / "disk.img", base / "fs"
    directory.mkdir()
    with open(image, "wb") as f:
        f.truncate(IMAGE_SIZE)  # sparse
    p = _run("losetup", "--find", "--show", str(image))
    if p.returncode != 0:
        pytest.skip(f"cannot attach a loop device: {p.stderr.strip()}")
    loop = p.stdout.strip()
    mounted = False
    try:
        p = _run("mkfs.btrfs", "-q", "-f", loop)
        if p.returncode != 0:
            pytest.skip(f"mkfs.btrfs {loop} failed: {p.stderr.strip()}")
        p = _run("mount", "-t", "btrfs", loop, str(directory))
        if p.returncode != 0:
            pytest.skip(f"cannot mount a btrfs here: {p.stderr.strip()}")
        mounted = True
        yield EioFs(image, loop, directory)
    finally:
        if mounted and _run("umount", str(directory)).returncode != 0:
            _run("umount", "-l", str(directory))
        _run("losetup", "-d", loop)
        image.unlink(missing_ok=True)


def wait_failed(m, name):
    """Wait until pending/@name says failed; fails at once if it went up."""
    deadline = time.monotonic() + WAIT
    while get_status(m.pending(name)) != "failed":
        assert not os.path.lexists(m.completed(name)), \
            f"uploaded although unreadable: {get_status(m.completed(name))}"
        assert time.monotonic() < deadline, \
            f"pending/{name}: status {get_status(m.pending(name))!r} after {WAIT:.0f} s"
        time.sleep(0.05)


@pytest.mark.parametrize("part_size", [None, "1M"], ids=["one-put", "multipart"])
def test_local_read_error_fails_the_unit(eio_fs, fault_proxy, mount, tmp_path, part_size):
    """one-put: the read fails before any request.  multipart: parts go up,
    reading part 12 fails, parts 11 and 12 are not sent; the upload must be
    aborted.  Once the block
    reads again, `mgmtfs retry` uploads the file, once, whole."""
    local = eio_fs.dir / "local"
    opts = proxied(fault_proxy, local_dir=local)
    opts["part_size"] = part_size  # None: the default (16M), one PUT
    opts["hold"] = True
    m = mount(opts)
    m.local = local  # for `mgmtfs resume --local-dir`
    name = "media.bin"
    data = data_of(SIZE, zlib.crc32(name.encode()))
    write_file(m.pending(name), data)
    wait_status(m.pending(name), "queued", timeout=WAIT)
    backing = local / "pending" / name
    assert backing.read_bytes() == data, f"{backing} is not the file's backing file"
    subprocess.run(["sync"], check=True)

    eio_fs.break_block(data[BAD_AT:BAD_AT + BLOCK])
    fd = os.open(backing, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as err:
            os.pread(fd, BLOCK, BAD_AT)
        assert err.value.errno == errno.EIO, err.value
        assert os.pread(fd, BLOCK, 0) == data[:BLOCK]  # the rest still reads
    finally:
        os.close(fd)
    assert get_status(m.pending(name)) == "queued"
    assert fault_proxy.log().find("PUT") == [], "an upload went out while held"

    p = m.cli("resume")
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    wait_failed(m, name)

    error = get_xattr(m.pending(name), "user.mgmt.error")
    assert error == f"cannot read 'pending/{name}': Input/output error", error
    assert os.listdir(m.path("completed")) == []
    assert os.listdir(m.path("pending")) == [name]
    assert m.client.list_objects(m.bucket, m.prefix + "/") == []
    assert uploads_under(m) == []
    lg = fault_proxy.log()
    if part_size is None:
        assert lg.find("PUT") == [], "a PUT went out for a file that could not be read"
        assert lg.find("POST") == []
    else:
        # the failure came after part 1 went up: the upload was really there, and aborted
        assert len(lg.find("POST", r"\?uploads=$", 200)) == 1
        assert lg.find("PUT", r"\?partNumber=1&", 200), "part 1 was never sent"
        for n in (BAD_PART - 1, BAD_PART):
            assert lg.find("PUT", rf"\?partNumber={n}&") == [], f"part {n} was sent"
        assert len(lg.find("DELETE", r"\?uploadId=", 204)) == 1, "the upload was not aborted"

    # the disk mended: a retry uploads it, nothing left of the failed attempt
    eio_fs.mend()
    p = m.cli("retry", str(m.pending(name)))
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    m.wait_completed(name)
    assert_uploaded_once(m, name, data, tmp_path / "check")
