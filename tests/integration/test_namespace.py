"""The shape of the mount: a fixed root, a read-only completed/, and xattrs."""
import ctypes
import errno
import os

import pytest

from helpers import write_source


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
