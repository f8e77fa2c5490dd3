"""FUSE passthrough: the kernel writes into local_dir itself; the daemon still
sees every open and last close, so uploads, records and change detection work
as on the daemon's own write path (passthrough=0), which these tests also run."""
import mmap
import os
import threading

import pytest

from helpers import check_archive, sha256

MIB = 1024 * 1024
ON_LINE = "FUSE passthrough on"


def passthrough_active(m):
    """True when the daemon said so; skip where the kernel has no passthrough."""
    log = m.log()
    if "FUSE passthrough not available" in log:
        pytest.skip("this kernel or user has no FUSE passthrough")
    return ON_LINE in log


def write_in_pieces(path, data, piece):
    with open(path, "wb") as f:
        for i in range(0, len(data), piece):
            f.write(data[i:i + piece])


@pytest.mark.parametrize("passthrough", ["1", "0"])
def test_written_bytes_reach_disk_and_bucket(mount, tmp_path, passthrough):
    m = mount({"passthrough": passthrough, "hold": True})
    data = os.urandom(3 * MIB + 12345)
    write_in_pieces(m.pending("a.bin"), data, 65536 + 7)
    # appended and rewritten in place, through two handles at once
    with open(m.pending("a.bin"), "ab") as app, open(m.pending("a.bin"), "r+b") as rw:
        app.write(b"tail")
        rw.seek(10)
        rw.write(b"HEAD")
    data = data[:10] + b"HEAD" + data[14:] + b"tail"

    assert (m.local / "pending" / "a.bin").read_bytes() == data
    assert m.pending("a.bin").read_bytes() == data
    assert os.stat(m.pending("a.bin")).st_size == len(data)
    assert passthrough_active(m) == (passthrough == "1"), m.log()
    # cp sizes its writes by st_blksize: with passthrough the disk's own (ext4
    # caches larger writes in larger folios, slower here), else 1 MiB (max_write)
    disk = os.stat(m.local / "pending" / "a.bin").st_blksize
    want = disk if passthrough == "1" else MIB
    assert disk != MIB
    for p in (m.pending("a.bin"), m.pending(".")):
        assert os.stat(p).st_blksize == want, p

    assert m.cli("resume").returncode == 0
    m.wait_completed("a.bin")
    blob = m.client.get_object(m.bucket, m.key("a.bin"))
    st = os.stat(m.completed("a.bin"))
    check_archive(blob, "a.bin", data, st.st_mode & 0o7777, int(st.st_mtime), tmp_path / "x")
    assert sha256(m.completed("a.bin").read_bytes()) == sha256(data)


def test_mmap_write_and_concurrent_readers(mount):
    m = mount({"hold": True})
    size = 2 * MIB
    with open(m.pending("m.bin"), "wb") as f:
        f.truncate(size)
    with open(m.pending("m.bin"), "r+b") as f:
        with mmap.mmap(f.fileno(), size) as mm:
            mm[0:5] = b"start"
            mm[size - 3:size] = b"end"
            mm.flush()
    want = b"start" + bytes(size - 8) + b"end"
    errors = []

    def reader():
        try:
            for _ in range(20):
                with open(m.pending("m.bin"), "rb") as f:
                    if f.read() != want:
                        errors.append("a reader saw other bytes")
        except OSError as e:  # EBUSY/EIO would mean two backing files on one inode
            errors.append(repr(e))

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (m.local / "pending" / "m.bin").read_bytes() == want
    assert m.cli("resume").returncode == 0
    m.wait_completed("m.bin")
    assert sha256(m.completed("m.bin").read_bytes()) == sha256(want)


def test_writes_ask_for_security_capability_once(mount):
    """The backing filesystem kills suid bits on write (FUSE_HANDLE_KILLPRIV_V2),
    as it sees every write: the kernel then asks the daemon for
    security.capability once per file, not before every write(2)."""
    m = mount({"hold": True, "debug": True}, env={"MGMTFS_FUSE_DEBUG": "1"})
    data = os.urandom(40 * 131072)
    fd = os.open(m.pending("w.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for i in range(0, len(data), 131072):
        assert os.write(fd, data[i:i + 131072]) == 131072
    os.close(fd)
    if not passthrough_active(m):
        pytest.skip("passthrough is off: every write goes through the daemon")
    asked = m.log().count("opcode: GETXATTR")
    assert 1 <= asked <= 2, f"{asked} GETXATTR for 40 writes"
    assert sha256((m.local / "pending" / "w.bin").read_bytes()) == sha256(data)
