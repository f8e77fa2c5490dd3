"""Directory units: `cp -r` into pending/ uploads one tar.gz of the whole tree."""
import gzip
import io
import os
import subprocess
import tarfile
import time

import pytest

from helpers import get_xattr, sha256, wait_status

MIB = 1024 * 1024


def make_tree(root):
    """A small tree with a multi-part file, a nested dir and an empty dir; {relpath: bytes}."""
    files = {
        "a.txt": b"alpha\n" * 100,
        "sub/big.bin": os.urandom(3 * MIB + 17),
        "sub/deeper/c.txt": b"c" * 513,
        "sub/\u00e9t\u00e9.txt": "\u00e9t\u00e9\n".encode(),
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "empty-dir").mkdir()
    return files


def test_directory_is_one_archive(mount, tmp_path):
    m = mount({"dir_settle": "0.5", "part_size": "1M"})
    src = tmp_path / "album"
    files = make_tree(src)

    subprocess.run(["cp", "-r", str(src), str(m.path("pending"))], check=True)
    m.wait_completed("album")

    done = m.completed("album")
    for rel, data in files.items():
        assert sha256((done / rel).read_bytes()) == sha256(data), rel
    assert (done / "empty-dir").is_dir()
    assert not m.pending("album").exists()

    blob = m.client.get_object(m.bucket, m.key("album"))
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tf:
        names = set(tf.getnames())
        assert names == {"album", "album/a.txt", "album/sub", "album/sub/big.bin",
                         "album/sub/deeper", "album/sub/deeper/c.txt",
                         "album/sub/\u00e9t\u00e9.txt", "album/empty-dir"}
        for rel, data in files.items():
            assert sha256(tf.extractfile("album/" + rel).read()) == sha256(data), rel

    out = tmp_path / "untar"
    out.mkdir()
    (tmp_path / "o.tgz").write_bytes(blob)
    subprocess.run(["tar", "-xzf", str(tmp_path / "o.tgz"), "-C", str(out)], check=True)
    assert subprocess.run(["diff", "-r", str(src), str(out / "album")]).returncode == 0

    attrs = {k: os.getxattr(done, "user.mgmt." + k).decode()
             for k in ("status", "original_size", "checksum", "compressed_size")}
    assert attrs["status"] == "completed"
    assert int(attrs["original_size"]) == sum(len(d) for d in files.values())
    assert attrs["checksum"] == "sha256:" + sha256(gzip.decompress(blob))
    assert int(attrs["compressed_size"]) == len(blob)
    assert m.client.list_multipart_uploads(m.bucket, m.prefix + "/") == []


def tar_members(blob):
    """{name: sha256 or None for a directory} of a tar.gz."""
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tf:
        return {t.name: sha256(tf.extractfile(t).read()) if t.isfile() else None
                for t in tf.getmembers()}


# A unit that waits for a writer that is no longer in it waits forever: a
# deadline well above dir_settle, well below the harness's upload timeout.
UNIT_WAIT = 30.0


@pytest.mark.parametrize("how", ["rename-out", "unlink"])
def test_writer_that_leaves_a_directory_unit_releases_it(mount, how):
    m = mount({"dir_settle": "0.5"})
    album = m.pending("album")
    album.mkdir()
    keep = b"kept in the album\n" * 50
    (album / "keep.txt").write_bytes(keep)
    body = b"written while open, then moved out\n" * 100

    fd = os.open(album / "track.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, body)
        if how == "rename-out":
            os.rename(album / "track.bin", m.pending("track.bin"))
        else:
            os.unlink(album / "track.bin")
    finally:
        os.close(fd)

    wait_status(m.completed("album"), "completed", timeout=UNIT_WAIT,
                watch_failed=m.pending("album"))
    assert sorted(os.listdir(m.completed("album"))) == ["keep.txt"]
    assert tar_members(m.client.get_object(m.bucket, m.key("album"))) == {
        "album": None, "album/keep.txt": sha256(keep)}
    assert get_xattr(m.completed("album"), "user.mgmt.original_size") == str(len(keep))
    if how == "rename-out":
        m.wait_completed("track.bin", timeout=UNIT_WAIT)
        assert tar_members(m.client.get_object(m.bucket, m.key("track.bin"))) == {
            "track.bin": sha256(body)}
        assert m.completed("track.bin").read_bytes() == body
    assert os.listdir(m.path("pending")) == []


def test_file_renamed_out_while_open_uploads_all_its_bytes(mount):
    m = mount({"dir_settle": "0.5"})
    album = m.pending("album")
    album.mkdir()
    (album / "keep.txt").write_bytes(b"keep\n")
    first, second = os.urandom(200 << 10), os.urandom(300 << 10)
    moved = m.pending("take.bin")

    fd = os.open(album / "take.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, first)
        os.rename(album / "take.bin", moved)
        # several times settle (0.2 s): an upload started by the rename would be done
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert moved.exists(), "pending/take.bin left pending/ while open for writing"
            time.sleep(0.1)
        os.write(fd, second)
    finally:
        os.close(fd)

    m.wait_completed("take.bin", timeout=UNIT_WAIT)
    assert sha256(m.completed("take.bin").read_bytes()) == sha256(first + second)
    assert tar_members(m.client.get_object(m.bucket, m.key("take.bin"))) == {
        "take.bin": sha256(first + second)}
    assert m.client.list_objects(m.bucket, m.prefix + "/take") == [m.key("take.bin")]
    assert get_xattr(m.completed("take.bin"), "user.mgmt.original_size") == \
        str(len(first) + len(second))
    wait_status(m.completed("album"), "completed", timeout=UNIT_WAIT,
                watch_failed=m.pending("album"))
