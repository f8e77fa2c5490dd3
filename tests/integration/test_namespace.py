"""The shape of the mount: a fixed root, a read-only completed/, and xattrs."""
import ctypes
import errno
import hashlib
import io
import json
import os
import subprocess
import tarfile
import time

import pytest

from helpers import check_archive, get_xattr, sha256, wait_status, write_source


def uploaded(mount, tmp_path, name="done.txt", data=b"done\n"):
    """A mount where @name has been uploaded and sits in completed/."""
    m = mount()
    m.drop(write_source(tmp_path, name, data))
    m.wait_completed(name)
    return m


def test_root_lists_exactly_completed_and_pending(mount):
    m = mount()
    assert sorted(os.listdir(m.mnt)) == ["completed", "pending"]
    assert m.path("completed").is_dir() and m.path("pending").is_dir()


ROOT_OPS = {
    "mkdir": os.mkdir,
    "create": lambda p: os.close(os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)),
    "symlink": lambda p: os.symlink("pending", p),
}


@pytest.mark.parametrize("op", list(ROOT_OPS))
def test_root_refuses_new_entries(mount, op):
    m = mount()
    with pytest.raises(OSError):
        ROOT_OPS[op](m.path("extra"))
    assert sorted(os.listdir(m.mnt)) == ["completed", "pending"]


def _write(path, flags):
    fd = os.open(path, flags, 0o644)
    try:
        os.write(fd, b"overwritten")
    finally:
        os.close(fd)


COMPLETED_WRITES = {
    "create": lambda m: _write(m.completed("new.txt"), os.O_CREAT | os.O_WRONLY),
    "mkdir": lambda m: os.mkdir(m.completed("newdir")),
    "overwrite": lambda m: _write(m.completed("done.txt"), os.O_WRONLY),
    "append": lambda m: _write(m.completed("done.txt"), os.O_WRONLY | os.O_APPEND),
    "truncate": lambda m: os.truncate(m.completed("done.txt"), 0),
}


@pytest.mark.parametrize("op", list(COMPLETED_WRITES))
def test_completed_is_read_only(mount, tmp_path, op):
    m = uploaded(mount, tmp_path)
    with pytest.raises(OSError) as e:
        COMPLETED_WRITES[op](m)
    assert e.value.errno in (errno.EROFS, errno.EPERM), os.strerror(e.value.errno)
    assert sorted(os.listdir(m.path("completed"))) == ["done.txt"]
    assert m.completed("done.txt").read_bytes() == b"done\n"


def test_user_xattr_is_kept(mount):
    m = mount()
    p = m.pending("tagged.txt")
    with open(p, "wb") as f:
        f.write(b"tag me\n")
        os.setxattr(p, "user.color", b"blue")  # still open for writing: not uploading yet
    m.wait_completed("tagged.txt")
    done = m.completed("tagged.txt")
    assert os.getxattr(done, "user.color") == b"blue"
    assert "user.color" in os.listxattr(done)
    assert os.getxattr(m.local / "completed" / "tagged.txt", "user.color") == b"blue"


def test_mgmt_xattrs_are_read_only(mount, tmp_path):
    m = uploaded(mount, tmp_path)
    done = m.completed("done.txt")
    with pytest.raises(OSError):
        os.setxattr(done, "user.mgmt.status", b"failed")
    with pytest.raises(OSError):
        os.removexattr(done, "user.mgmt.status")
    assert os.getxattr(done, "user.mgmt.status") == b"completed"


SECURITY_PATHS = {
    "root": lambda m: m.mnt,
    "pending-dir": lambda m: m.path("pending"),
    "completed-file": lambda m: m.completed("done.txt"),
}


@pytest.mark.parametrize("where", list(SECURITY_PATHS))
def test_security_xattr_is_enodata(mount, tmp_path, where):
    m = uploaded(mount, tmp_path) if where == "completed-file" else mount()
    for name in ("security.capability", "security.selinux"):
        with pytest.raises(OSError) as e:
            os.getxattr(SECURITY_PATHS[where](m), name)
        assert e.value.errno == errno.ENODATA, os.strerror(e.value.errno)


AT_FDCWD = -100
RENAME_EXCHANGE = 1 << 1


def renameat2(old, new, flags):
    """renameat2(2) through libc; raises OSError with the call's errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new),
                        ctypes.c_uint(flags))
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old))


@pytest.mark.parametrize("direction", ["completed-to-pending", "pending-to-completed"])
def test_exchange_with_completed_is_refused(mount, tmp_path, direction):
    m = uploaded(mount, tmp_path)
    done, held = m.completed("done.txt"), m.pending("held.txt")
    old, new = (done, held) if direction == "completed-to-pending" else (held, done)
    with open(held, "wb") as f:  # open for writing: pending/held.txt is not uploaded yet
        f.write(b"pending bytes\n")
        f.flush()
        with pytest.raises(OSError) as e:
            renameat2(old, new, RENAME_EXCHANGE)
    assert e.value.errno in (errno.EROFS, errno.EPERM), os.strerror(e.value.errno)
    assert done.read_bytes() == b"done\n"
    assert held.read_bytes() == b"pending bytes\n"
    assert (m.local / "completed" / "done.txt").read_bytes() == b"done\n"
    assert (m.local / "pending" / "held.txt").read_bytes() == b"pending bytes\n"
    assert os.getxattr(done, "user.mgmt.status") == b"completed"
    assert os.getxattr(done, "user.mgmt.original_path") == b"pending/done.txt"


@pytest.fixture
def other_fs(workdir, request):
    """other_fs(size) -> a fresh tmpfs: another filesystem than local_dir.

    Unmounted after the mount that uses it (ask for this fixture first).
    """
    made = []

    def factory(size):
        d = workdir / f"tmpfs-{request.node.name}-{len(made)}"
        d.mkdir()
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                            str(d)], capture_output=True, text=True)
        if p.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
        made.append(d)
        return d

    yield factory
    for d in made:
        if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], capture_output=True)


def make_album(root):
    """A tree with set modes and mtimes and an empty dir; {relpath: bytes}."""
    files = {"a.txt": b"alpha\n" * 100, "sub/big.bin": os.urandom((3 << 20) + 17),
             "sub/deeper/c.txt": b"c" * 513}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_source(root / os.path.dirname(rel), os.path.basename(rel), data,
                     mode=0o604, mtime=1600000000)
    (root / "empty").mkdir()
    for d, mode in (("sub/deeper", 0o750), ("sub", 0o705), ("empty", 0o700), (".", 0o751)):
        os.chmod(root / d, mode)
        os.utime(root / d, (1500000000, 1500000000))
    return files


def tree_digest(root):
    """{relpath: (kind and sha256, mode, mtime)} of everything under @root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames + ["."]:
            p = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.relpath(p, root))
            st = os.lstat(p)
            if os.path.isdir(p):
                what = ("dir", None)
            else:
                with open(p, "rb") as f:
                    what = ("file", hashlib.sha256(f.read()).hexdigest())
            out[rel] = (what, st.st_mode & 0o7777, int(st.st_mtime))
    return out


def test_completed_dir_on_another_filesystem(other_fs, mount, tmp_path):
    elsewhere = other_fs("64m")
    m = mount({"completed_dir": elsewhere, "dir_settle": "0.5", "part_size": "1M"})
    assert os.stat(elsewhere).st_dev != os.stat(m.local / "pending").st_dev
    data = os.urandom(300 << 10)
    m.drop(write_source(tmp_path, "clip.bin", data, mode=0o640, mtime=1700000000))
    src = tmp_path / "album"
    files = make_album(src)
    want = tree_digest(src)
    subprocess.run(["cp", "-r", "--preserve=mode,timestamps", str(src), str(m.path("pending"))],
                   check=True)

    m.wait_completed("clip.bin", timeout=60)
    m.wait_completed("album", timeout=60)

    # the bytes (and the tree's modes and mtimes) are in completed_dir, not in pending/
    assert sha256((elsewhere / "clip.bin").read_bytes()) == sha256(data)
    assert sha256(m.completed("clip.bin").read_bytes()) == sha256(data)
    st = os.stat(elsewhere / "clip.bin")
    assert (st.st_mode & 0o7777, int(st.st_mtime)) == (0o640, 1700000000)
    assert tree_digest(elsewhere / "album") == want
    assert tree_digest(m.completed("album")) == want
    assert not os.path.lexists(m.local / "pending" / "clip.bin")
    assert not os.path.lexists(m.local / "pending" / "album")
    assert os.listdir(m.path("pending")) == []
    assert sorted(os.listdir(m.path("completed"))) == ["album", "clip.bin"]

    for name in ("clip.bin", "album"):
        done = m.completed(name)
        assert get_xattr(done, "user.mgmt.status") == "completed"
        assert get_xattr(done, "user.mgmt.completed_path") == f"completed/{name}"
    check_archive(m.client.get_object(m.bucket, m.key("clip.bin")), "clip.bin", data, 0o640,
                  1700000000, tmp_path / "check")
    with tarfile.open(fileobj=io.BytesIO(m.client.get_object(m.bucket, m.key("album"))),
                      mode="r:gz") as tf:
        for rel, body in files.items():
            assert sha256(tf.extractfile("album/" + rel).read()) == sha256(body), rel


def test_write_during_a_move_across_filesystems_is_uploaded(other_fs, mount, tmp_path):
    """An append through the mount while the uploaded file is being copied to
    a completed_dir on another filesystem: the move is given up (the copy
    dropped), the file is uploaded again with the appended bytes and then
    moved.  completed/ and S3 hold the same bytes, the appended ones too."""
    elsewhere = other_fs("1g")
    m = mount({"completed_dir": elsewhere, "compression": "none"})
    data = os.urandom(128 << 20)
    for attempt in range(3):  # until the append comes while the copy is made
        name = f"grow{attempt}.bin"
        m.drop(write_source(tmp_path, name, data))
        deadline = time.monotonic() + 120
        while not any(n.startswith(".mgmtfs-moving-") for n in os.listdir(elsewhere)):
            assert time.monotonic() < deadline, "the copy to completed_dir never started"
            if os.path.exists(elsewhere / name):
                break  # moved before the copy was seen
            time.sleep(0.001)
        else:
            try:
                with open(m.pending(name), "ab") as f:
                    f.write(b"NEW")
                break
            except FileNotFoundError:
                pass  # moved meanwhile
        m.wait_completed(name, timeout=120)
    else:
        pytest.fail("could not write while the copy to completed_dir was made")

    m.wait_completed(name, timeout=120)
    local = m.completed(name).read_bytes()
    assert sha256(local) == sha256(data + b"NEW")
    assert get_xattr(m.completed(name), "user.mgmt.checksum") == "sha256:" + sha256(local)
    key = get_xattr(m.completed(name), "user.mgmt.s3_object_key")
    assert sha256(m.client.get_object(m.bucket, key)) == sha256(local)
    assert not [n for n in os.listdir(elsewhere) if n.startswith(".mgmtfs-moving-")]
    # the object of the first upload, which the append superseded, is gone: the
    # file has its own key, and every object is named by a record
    assert key == f"{m.prefix}/{name}", key
    records = json.loads(m.cli("list", "--json").stdout)
    named = {r["s3_object_key"] for r in records if r["status"] in ("completed", "duplicate")}
    assert set(m.client.list_objects(m.bucket, m.prefix + "/")) == named


@pytest.mark.parametrize("how", ["remount", "retry"])
def test_move_that_fails_leaves_a_failed_record(other_fs, mount, tmp_path, how):
    elsewhere = other_fs("256k")  # too small for the file: the copy runs out of space
    m = mount({"completed_dir": elsewhere, "part_size": "1M"})  # multipart: no 412 to meet
    data = os.urandom(3 << 20)
    m.drop(write_source(tmp_path, "big.bin", data))

    wait_status(m.pending("big.bin"), "failed", timeout=60)
    error = get_xattr(m.pending("big.bin"), "user.mgmt.error")
    assert "completed" in error and "space" in error, error
    assert sha256(m.pending("big.bin").read_bytes()) == sha256(data)
    assert sha256((m.local / "pending" / "big.bin").read_bytes()) == sha256(data)
    assert os.listdir(elsewhere) == []  # no half copy left behind
    assert os.listdir(m.path("completed")) == []

    # room made: the next mount, or mgmtfs retry, only finishes the move
    # (no second upload)
    if how == "remount":
        assert m.stop() == []
    subprocess.run(["mount", "-o", "remount,size=64m", str(elsewhere)], check=True)
    if how == "remount":
        m.start()
    else:
        assert m.cli("retry", "pending/big.bin").returncode == 0
    m.wait_completed("big.bin", timeout=60)
    assert sha256((elsewhere / "big.bin").read_bytes()) == sha256(data)
    assert not os.path.lexists(m.local / "pending" / "big.bin")
    assert get_xattr(m.completed("big.bin"), "user.mgmt.error") in ("", "<ENODATA>")
    assert get_xattr(m.completed("big.bin"), "user.mgmt.status") == "completed"
    assert m.client.list_objects(m.bucket, m.prefix + "/") == [m.key("big.bin")]
    if how == "remount":
        assert "'pending/big.bin' was uploaded before" in m.log()  # only moved


def unmoved(other_fs, mount, tmp_path, units):
    """Upload @units [(name, data)...] with completed_dir on a tmpfs that is
    read-only from the second on: every unit after the first is uploaded (or
    a duplicate) but not moved.  Returns the mount (the tmpfs rw again)."""
    elsewhere = other_fs("64m")
    m = mount({"completed_dir": elsewhere})
    (first, data), *rest = units
    m.drop(write_source(tmp_path, first, data))
    m.wait_completed(first)
    subprocess.run(["mount", "-o", "remount,ro", str(elsewhere)], check=True)
    for name, data in rest:
        m.drop(write_source(tmp_path, name, data))
        wait_status(m.pending(name), "failed", timeout=60)
    subprocess.run(["mount", "-o", "remount,rw", str(elsewhere)], check=True)
    return m


def test_retry_of_an_unmoved_duplicate_stays_a_duplicate(other_fs, mount, tmp_path):
    data = os.urandom(100 << 10)
    m = unmoved(other_fs, mount, tmp_path, [("x.bin", data), ("y.bin", data)])
    assert get_xattr(m.pending("y.bin"), "user.mgmt.error").startswith("same content as")
    assert m.cli("retry", "pending/y.bin").returncode == 0
    wait_status(m.completed("y.bin"), "duplicate", timeout=60)
    assert get_xattr(m.completed("y.bin"), "user.mgmt.s3_object_key") == m.key("x.bin")
    assert m.client.list_objects(m.bucket, m.prefix + "/") == [m.key("x.bin")]


def test_removed_unmoved_unit_keeps_its_record(other_fs, mount, tmp_path):
    """rm of a unit whose upload is done but whose move failed: the object
    is up, so its record stays (completed, as after rm in completed/), and
    the same content later is a duplicate of it, not a second upload."""
    data = os.urandom(100 << 10)
    m = unmoved(other_fs, mount, tmp_path, [("first.bin", os.urandom(10)), ("up.bin", data)])
    rid = int(get_xattr(m.pending("up.bin"), "user.mgmt.id"))
    os.unlink(m.pending("up.bin"))
    recs = {r["id"]: r for r in json.loads(m.cli("list", "--json").stdout)}
    assert rid in recs, "the record of an uploaded object went with its file"
    assert recs[rid]["status"] == "completed", recs[rid]
    assert recs[rid]["s3_object_key"] == m.key("up.bin")

    (tmp_path / "again").mkdir()
    m.drop(write_source(tmp_path / "again", "again.bin", data))
    wait_status(m.completed("again.bin"), "duplicate", timeout=60)
    assert sorted(m.client.list_objects(m.bucket, m.prefix + "/")) == \
        sorted([m.key("first.bin"), m.key("up.bin")])
