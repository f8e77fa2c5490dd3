"""The life of a unit in pending/: held, ignored, still open, in flight,
renamed back from completed/, a duplicate of earlier content.

Everything is checked where it ends up: bytes and object listings on the
server with the independent client (m.client), records as xattrs, and the
CLI's answers.  States are polled with deadlines; no duration is asserted.
"""
import io
import json
import os
import re
import subprocess
import tarfile
import time
import zlib

import pytest

from fault_tools import (MODE, MTIME, WAIT, assert_uploaded_once, crash, data_of, fault_proxy,
                         proxied, restart, uploads_under, write_file)
from helpers import (check_archive, format_options, get_status, get_xattr, getfattr,
                     is_mounted, parse_utc, sha256, wait_status)

assert fault_proxy  # a fixture, used by name

# How long "nothing happens" is watched for: several times settle (0.2 s in
# the harness) and the daemon's one-second rescan of the hold flag.
QUIET = 3.0
SMALL = 200 << 10  # one PUT


def objects(m):
    return sorted(m.client.list_objects(m.bucket, m.prefix + "/"))


def cli_ok(m, *args):
    p = m.cli(*args)
    assert p.returncode == 0, (f"mgmtfs {' '.join(args)}: exit {p.returncode}: "
                               + p.stderr.decode(errors="replace"))
    return p.stdout.decode(errors="replace")


def cli_json(m, *args):
    return json.loads(cli_ok(m, *args, "--json"))


def wait_for(what, check, timeout=WAIT, interval=0.05):
    """Poll check() until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {what} within {timeout:.0f} s")
        time.sleep(interval)


def stays(what, check, seconds=QUIET, interval=0.1):
    """check() holds at every look for @seconds (a watch, not a measurement)."""
    deadline = time.monotonic() + seconds
    while True:
        assert check(), f"{what} stopped holding"
        if time.monotonic() > deadline:
            return
        time.sleep(interval)


def wait_landed(m, name):
    """Wait until pending/@name has landed in completed/ as completed or
    duplicate (either ends the unit); returns the status."""
    wait_status_in(m.completed(name), ("completed", "duplicate"), m.pending(name))
    return get_status(m.completed(name))


def wait_status_in(path, wanted, watch_failed):
    def check():
        for p in (path, watch_failed):
            if get_status(p) == "failed":
                raise AssertionError(f"{p}: upload failed: {get_xattr(p, 'user.mgmt.error')}")
        return get_status(path) in wanted
    wait_for(f"{path} with status in {wanted}", check)


def queued_paths(status_json):
    return sorted(u["original_path"] for u in status_json["units"]
                  if u["status"] == "queued")


# ---- 1. hold --------------------------------------------------------------


def test_hold_option_keeps_pending_an_ordinary_directory(mount, tmp_path):
    m = mount({"hold": True})
    files = {"a.bin": data_of(SMALL, 1), "b.txt": b"plain text\n" * 100}
    for name, data in files.items():
        write_file(m.pending(name), data)
    for name in files:
        wait_status(m.pending(name), "queued", timeout=WAIT)

    # an ordinary directory: mkdir, files in it, rename, rm, rmdir
    d = m.pending("dir")
    os.mkdir(d)
    (d / "inner.txt").write_bytes(b"inner\n")
    assert (d / "inner.txt").read_bytes() == b"inner\n"
    os.rename(d / "inner.txt", d / "moved.txt")
    assert os.listdir(d) == ["moved.txt"]
    os.rename(m.pending("b.txt"), m.pending("c.txt"))
    assert m.pending("c.txt").read_bytes() == files["b.txt"]
    assert not os.path.lexists(m.pending("b.txt"))
    write_file(m.pending("gone.bin"), b"to be removed")
    os.unlink(m.pending("gone.bin"))
    os.unlink(d / "moved.txt")
    os.rmdir(d)
    assert sorted(os.listdir(m.path("pending"))) == ["a.bin", "c.txt"]

    stays("held: both files queued in pending/, nothing on the server",
          lambda: get_status(m.pending("a.bin")) == "queued"
          and get_status(m.pending("c.txt")) == "queued" and objects(m) == [])
    assert os.listdir(m.path("completed")) == []
    assert m.pending("a.bin").read_bytes() == files["a.bin"]

    status = cli_json(m, "status")
    assert status["held"] is True, status
    assert queued_paths(status) == ["pending/a.bin", "pending/c.txt"], status
    assert "held" in cli_ok(m, "status")
    assert cli_json(m, "stats")["completed"] == 0

    # resume on this mount: both go up
    cli_ok(m, "resume")
    m.wait_completed("a.bin")
    m.wait_completed("c.txt")
    assert objects(m) == sorted([m.key("a.bin"), m.key("c.txt")])
    check_archive(m.client.get_object(m.bucket, m.key("c.txt")), "c.txt", files["b.txt"],
                  MODE, MTIME, tmp_path / "c")
    assert cli_json(m, "status")["held"] is False
    assert cli_json(m, "stats")["completed"] == 2



def test_one_daemon_per_local_dir(mount, tmp_path):
    """A second mount on a local_dir in use is refused with one line naming
    the mount that has it (two daemons would upload the same files).  After a
    kill -9 the local_dir mounts again, and the dead mount's -o hold is not
    shown as holding uploads."""
    m = mount({"hold": True})
    other = tmp_path / "other-mnt"
    other.mkdir()
    p = subprocess.run([str(m.binary), str(other), "-f", "-o", format_options(m.options)],
                       env=m.env, capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and not is_mounted(other)
    line, = p.stderr.strip().splitlines()
    assert (f"local_dir '{m.local}' is in use by the mgmtfs mounted on '{m.mnt}': "
            f"unmount it first") in line, line
    assert cli_json(m, "status")["held"] is True

    crash(m)
    assert cli_json(m, "status")["held"] is False
    del m.options["hold"]
    restart(m)
    data = data_of(SMALL, 9)
    write_file(m.pending("after.bin"), data)
    m.wait_completed("after.bin")
    assert objects(m) == [m.key("after.bin")]

def test_hold_and_resume_on_a_live_mount(mount, tmp_path):
    # settle=2: a file dropped right after `mgmtfs hold` is due only after the
    # daemon's next read of the hold flag (it reads it every second)
    m = mount({"settle": "2"})
    first = data_of(SMALL, 2)
    write_file(m.pending("first.bin"), first)
    m.wait_completed("first.bin")
    assert cli_json(m, "stats")["completed"] == 1

    cli_ok(m, "hold")
    assert cli_json(m, "status")["held"] is True
    second = data_of(SMALL, 3)
    write_file(m.pending("second.bin"), second)
    wait_status(m.pending("second.bin"), "queued", timeout=WAIT)
    stays("held: second.bin queued in pending/, not on the server",
          lambda: get_status(m.pending("second.bin")) == "queued"
          and objects(m) == [m.key("first.bin")], seconds=QUIET + 2)
    status = cli_json(m, "status")
    assert status["held"] is True
    assert queued_paths(status) == ["pending/second.bin"], status
    text = cli_ok(m, "status")
    assert "held" in text and "pending/second.bin" in text, text
    assert not os.path.lexists(m.completed("second.bin"))

    cli_ok(m, "resume")
    m.wait_completed("second.bin")
    assert objects(m) == sorted([m.key("first.bin"), m.key("second.bin")])
    check_archive(m.client.get_object(m.bucket, m.key("second.bin")), "second.bin", second,
                  MODE, MTIME, tmp_path / "x")
    status = cli_json(m, "status")
    assert status["held"] is False and status["units"] == [], status
    stats = cli_json(m, "stats")
    assert stats["completed"] == 2 and stats["queued"] == 0, stats


def remount(m, **options):
    """Unmount @m cleanly, then mount again on the same local_dir with @options
    changed (None removes one)."""
    errors = m.stop()
    assert errors == [], "\n".join(errors)
    for k, v in options.items():
        if v is None:
            m.options.pop(k, None)
        else:
            m.options[k] = v
    return m.start()


def test_hold_option_is_for_that_mount_only(mount, tmp_path):
    """-o hold holds the uploads of that mount; the next mount without it
    uploads what was held.  `mgmtfs hold` lasts until `mgmtfs resume`, across
    mounts.  Each mount that holds says so in its log."""
    m = mount({"hold": True})
    data = data_of(SMALL, 4)
    write_file(m.pending("held.bin"), data)
    wait_status(m.pending("held.bin"), "queued", timeout=WAIT)
    stays("held: held.bin queued, nothing on the server",
          lambda: get_status(m.pending("held.bin")) == "queued" and objects(m) == [])
    assert re.search(r"uploads are held.*-o hold", m.log()), m.log()

    remount(m, hold=None)
    m.wait_completed("held.bin")
    check_archive(m.client.get_object(m.bucket, m.key("held.bin")), "held.bin", data,
                  MODE, MTIME, tmp_path / "held")
    assert cli_json(m, "status")["held"] is False
    assert "uploads are held" not in m.log(), m.log()

    # the command's hold is not the option's: it lasts until resume
    cli_ok(m, "hold")
    remount(m)
    assert re.search(r"uploads are held.*mgmtfs resume", m.log()), m.log()
    write_file(m.pending("later.bin"), data_of(SMALL, 5))
    wait_status(m.pending("later.bin"), "queued", timeout=WAIT)
    stays("held by mgmtfs hold across the remount",
          lambda: get_status(m.pending("later.bin")) == "queued"
          and objects(m) == [m.key("held.bin")])
    assert cli_json(m, "status")["held"] is True
    cli_ok(m, "resume")
    m.wait_completed("later.bin")


# ---- 2. ignored names -------------------------------------------------------

IGNORED = [".hidden", "x.part", "y.tmp", "z~", "a.iso"]


def test_ignored_names_are_never_uploaded(mount):
    m = mount({"ignore": "*.iso"})
    for i, name in enumerate(IGNORED):
        write_file(m.pending(name), data_of(4096, 100 + i))
    # a normal file dropped after them: once it is up, they were looked at
    write_file(m.pending("control.bin"), data_of(4096, 99))
    m.wait_completed("control.bin")

    stays("ignored files in pending/, only control.bin on the server",
          lambda: objects(m) == [m.key("control.bin")]
          and all(os.path.exists(m.pending(n)) for n in IGNORED))
    for i, name in enumerate(IGNORED):
        assert get_status(m.pending(name)) == "ignored", (name, getfattr(m.pending(name)))
        assert m.pending(name).read_bytes() == data_of(4096, 100 + i)
        assert not os.path.lexists(m.completed(name))
    assert sorted(os.listdir(m.path("pending"))) == sorted(IGNORED)
    assert os.listdir(m.path("completed")) == ["control.bin"]
    assert uploads_under(m) == []


# temporary name -> final name, as rsync and browsers finish a download
RENAMES = {
    "part-suffix": ("movie.part", "movie.mp4"),
    "rsync-dot-temp": (".movie.mp4.Xa81Qz", "movie.mp4"),
    "tmp-suffix": ("movie.mp4.tmp", "movie.mp4"),
}


@pytest.mark.parametrize("case", list(RENAMES))
def test_rename_of_ignored_name_uploads_it(mount, tmp_path, case):
    temp, final = RENAMES[case]
    m = mount()
    data = data_of(SMALL, zlib.crc32(case.encode()))
    write_file(m.pending(temp), data)
    wait_status(m.pending(temp), "ignored", timeout=WAIT)
    assert objects(m) == []

    os.rename(m.pending(temp), m.pending(final))
    m.wait_completed(final)
    assert_uploaded_once(m, final, data, tmp_path / "check")
    fields = getfattr(m.completed(final))
    assert fields["user.mgmt.original_path"] == f"pending/{final}"
    assert not os.path.lexists(m.pending(temp))


# ---- 3. open writers ----------------------------------------------------------

SETTLE = 0.3


def write_then_idle(fd, chunks):
    """All chunks at once, then the fd stays open, idle."""
    for c in chunks:
        os.write(fd, c)
    time.sleep(4 * SETTLE)


def write_slowly(fd, chunks):
    """One chunk, then a pause longer than settle, for each chunk."""
    for c in chunks:
        os.write(fd, c)
        time.sleep(2 * SETTLE)


WRITERS = {"write-then-idle": write_then_idle, "write-slowly": write_slowly}


@pytest.mark.parametrize("how", list(WRITERS))
def test_open_writer_holds_the_upload(mount, tmp_path, how):
    m = mount({"settle": str(SETTLE)})
    name = "recording.bin"
    chunks = [data_of(64 << 10, 10 + i) for i in range(4)]
    path = m.pending(name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, MODE)
    try:
        WRITERS[how](fd, chunks)
        stays("open for writing: in pending/, not uploaded",
              lambda: os.path.exists(path) and get_status(path) in ("queued", None)
              and objects(m) == [], seconds=4 * SETTLE)
        tail = b"the last bytes, written just before close\n"
        os.write(fd, tail)
    finally:
        os.close(fd)
    data = b"".join(chunks) + tail
    os.chmod(path, MODE)
    os.utime(path, (MTIME, MTIME))

    m.wait_completed(name)
    assert_uploaded_once(m, name, data, tmp_path / "check")
    assert get_xattr(m.completed(name), "user.mgmt.original_size") == str(len(data))


# ---- 4. progress ------------------------------------------------------------------

PROGRESS = re.compile(r"^(\d+)/(\d+)$")


def test_progress_while_a_part_stalls(fault_proxy, mount, tmp_path):
    m = mount(proxied(fault_proxy, stall_seconds=3))
    fault_proxy.set_rules([{"fault": "stall:600", "match": r"PUT .*\?partNumber=3&"}])
    name = "feature.bin"
    data = data_of(6 << 20, 42)
    write_file(m.pending(name), data)
    fault_proxy.wait_for("part 3 held",
                         lambda lg: lg.held("PUT", r"\?partNumber=3&"))

    def progress():
        text = get_xattr(m.pending(name), "user.mgmt.progress")
        got = PROGRESS.match(text)
        return got and int(got.group(1)) > 0 and (int(got.group(1)), int(got.group(2)))

    assert get_status(m.pending(name)) == "uploading"
    done, total = wait_for("a progress DONE/TOTAL with DONE > 0", progress, timeout=10)
    assert 0 < done <= total == len(data), (done, total)
    assert get_status(m.pending(name)) == "uploading"
    status = cli_json(m, "status")
    assert [u["original_path"] for u in status["units"]] == [f"pending/{name}"], status
    assert status["units"][0]["status"] == "uploading", status
    assert objects(m) == []

    fault_proxy.set_rules([])  # the held request must still be cut and sent again
    m.wait_completed(name)
    lg = fault_proxy.log()
    assert lg.find("PUT", r"\?partNumber=3&", "GONE"), "the stalled part 3 was not cut"
    assert lg.find("PUT", r"\?partNumber=3&", 200), "part 3 was not sent again"
    assert_uploaded_once(m, name, data, tmp_path / "check")
    assert get_xattr(m.completed(name), "user.mgmt.progress") in ("", "<ENODATA>")


# ---- 5. rename back from completed/ --------------------------------------------------


def make_file(m, name, seed):
    data = data_of(SMALL, seed)
    write_file(m.pending(name), data)
    return data


def check_file(m, name, key, data, scratch):
    assert m.completed(name).read_bytes() == data
    check_archive(m.client.get_object(m.bucket, key), name, data, MODE, MTIME, scratch)


def make_dir(m, name, seed):
    os.mkdir(m.pending(name))
    data = data_of(SMALL, seed)
    write_file(m.pending(name) / "inside.bin", data)
    return data


def check_dir(m, name, key, data, scratch):
    assert (m.completed(name) / "inside.bin").read_bytes() == data
    blob = m.client.get_object(m.bucket, key)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tf:
        assert set(tf.getnames()) == {name, f"{name}/inside.bin"}
        assert sha256(tf.extractfile(f"{name}/inside.bin").read()) == sha256(data)


# kind -> (make it in pending/, check completed/ and the object at a key)
KINDS = {"file": (make_file, check_file), "directory": (make_dir, check_dir)}


def uploaded_first(mount, kind, seed):
    """A mount with one unit of @kind uploaded and in completed/:
    (mount, name, data, check, its record's xattrs)."""
    make, check = KINDS[kind]
    m = mount({"dir_settle": "0.5"})
    name = "again.bin" if kind == "file" else "album"
    data = make(m, name, seed)
    m.wait_completed(name)
    return m, name, data, check, getfattr(m.completed(name))


def assert_uploaded_again(m, name, first, data, check, tmp_path):
    """@name, uploaded before with record @first, went up a second time as
    NAME_1 (a new record, the same content) and is back in completed/."""
    second_key = f"{m.prefix}/{name}_1.tar.gz"
    fields = getfattr(m.completed(name))
    assert fields["user.mgmt.status"] == "completed", f"record {fields}; objects {objects(m)}"
    assert fields["user.mgmt.s3_object_key"] == second_key, fields
    assert fields["user.mgmt.id"] != first["user.mgmt.id"], fields
    assert fields["user.mgmt.checksum"] == first["user.mgmt.checksum"]
    assert fields["user.mgmt.completed_path"] == f"completed/{name}"
    assert objects(m) == sorted([m.key(name), second_key])
    assert uploads_under(m) == []
    check(m, name, second_key, data, tmp_path / "second")
    assert not os.path.lexists(m.pending(name))
    return second_key, fields


@pytest.mark.parametrize("kind", list(KINDS))
def test_rename_back_uploads_again(mount, tmp_path, kind):
    m, name, data, check, first = uploaded_first(mount, kind, 7)
    assert first["user.mgmt.s3_object_key"] == m.key(name)

    os.rename(m.completed(name), m.pending(name))
    assert not os.path.lexists(m.completed(name))
    wait_landed(m, name)

    # `mv completed/X pending/` is an explicit "upload it again": not a duplicate
    second_key, _ = assert_uploaded_again(m, name, first, data, check, tmp_path)
    check(m, name, m.key(name), data, tmp_path / "first")
    assert sorted(r["s3_object_key"] for r in cli_json(m, "list")) == \
        sorted([m.key(name), second_key])


@pytest.mark.parametrize("kind", list(KINDS))
def test_rename_back_uploads_again_after_a_remount(mount, tmp_path, kind):
    """The "upload it again" of a rename back from completed/ is in the
    record: a unit renamed back on a held mount is uploaded again (not taken
    for a duplicate of itself) by the next mount."""
    m, name, data, check, first = uploaded_first(mount, kind, 8)

    remount(m, hold=True)
    os.rename(m.completed(name), m.pending(name))
    wait_status(m.pending(name), "queued", timeout=WAIT)
    remount(m, hold=None)
    wait_landed(m, name)

    _, fields = assert_uploaded_again(m, name, first, data, check, tmp_path)
    assert fields["user.mgmt.original_path"] == f"pending/{name}"
    assert parse_utc(fields["user.mgmt.upload_timestamp"]) >= \
        parse_utc(first["user.mgmt.upload_timestamp"])
    assert sorted(r["status"] for r in cli_json(m, "list")) == ["completed", "completed"]


# ---- 6. duplicate content ------------------------------------------------------------

DUP_SIZES = {"single-put": SMALL, "multipart": 3 << 20}


@pytest.mark.parametrize("size", list(DUP_SIZES))
def test_duplicate_content_is_not_uploaded_again(mount, tmp_path, size):
    m = mount({"part_size": "1M"})
    data = data_of(DUP_SIZES[size], 77)
    write_file(m.pending("original.bin"), data)
    m.wait_completed("original.bin")
    key = m.key("original.bin")
    assert objects(m) == [key]

    write_file(m.pending("copy.bin"), data)
    wait_landed(m, "copy.bin")

    fields = getfattr(m.completed("copy.bin"))
    assert fields["user.mgmt.status"] == "duplicate", f"record {fields}; objects {objects(m)}"
    assert fields["user.mgmt.s3_object_key"] == key, fields
    assert fields["user.mgmt.checksum"] == "sha256:" + sha256(data)
    assert fields["user.mgmt.original_path"] == "pending/copy.bin"
    assert objects(m) == [key]
    assert uploads_under(m) == []
    assert m.completed("copy.bin").read_bytes() == data
    check_archive(m.client.get_object(m.bucket, key), "original.bin", data, MODE, MTIME,
                  tmp_path / "x")
    stats = cli_json(m, "stats")
    assert stats["completed"] == 1 and stats["duplicate"] == 1, stats


def test_duplicate_of_a_multipart_file_sends_no_part(fault_proxy, mount, tmp_path):
    """A file that goes up in parts and whose content is in the bucket is
    found a duplicate before any part is sent, in the mount that uploaded
    the original and in the next one; a file of the same size and other
    bytes is uploaded whole."""
    m = mount(proxied(fault_proxy))
    size = 3 << 20
    data = data_of(size, 77)
    write_file(m.pending("original.bin"), data)
    m.wait_completed("original.bin")
    key = m.key("original.bin")

    for copy in ("copy.bin", "after-restart.bin"):
        if copy == "after-restart.bin":
            assert m.stop() == []
            restart(m)
        mark = fault_proxy.mark()
        write_file(m.pending(copy), data)
        assert wait_landed(m, copy) == "duplicate", getfattr(m.completed(copy))
        sent = fault_proxy.log(mark)
        assert sent.find("PUT") == [] and sent.find("POST") == [], sent.final()
        fields = getfattr(m.completed(copy))
        assert fields["user.mgmt.s3_object_key"] == key, fields
        assert fields["user.mgmt.checksum"] == "sha256:" + sha256(data), fields
        assert m.completed(copy).read_bytes() == data

    # same size: other bytes from the start, and the same first MiB with another last byte
    keys = [key]
    for name, other in (("other.bin", data_of(size, 78)),
                        ("last-byte.bin", data[:-1] + bytes([data[-1] ^ 1]))):
        mark = fault_proxy.mark()
        write_file(m.pending(name), other)
        m.wait_completed(name)
        assert sorted(fault_proxy.log(mark).part_numbers()) == [1, 2, 3, 4]
        keys.append(m.key(name))
        assert objects(m) == sorted(keys)
        assert uploads_under(m) == []
        check_archive(m.client.get_object(m.bucket, m.key(name)), name, other, MODE, MTIME,
                      tmp_path / name)
        assert getfattr(m.completed(name))["user.mgmt.checksum"] == "sha256:" + sha256(other)
