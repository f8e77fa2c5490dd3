"""kill -9 of the daemon in the middle of a multipart upload, at chosen points.

The fault proxy holds one chosen request (or the server's answer to it), the
daemon is killed while it waits, and a new daemon is mounted on the same
local_dir.  It must finish the upload without sending again the parts the
server already has (part PUTs counted in the proxy's log, parts listed on the
server by the independent client), leave no incomplete multipart upload, and
produce one whole object.
"""
import io
import json
import os
import re
import signal
import subprocess
import tarfile
import time

import pytest

from fault_tools import (KMS, MODE, MTIME, MULTI_SIZE, assert_uploaded_once, crash, data_of,
                         earlier_logs, fault_proxy, list_parts, proxied, restart, uploads_under,
                         write_file)
from helpers import check_archive, get_status, get_xattr, parse_utc, sha256

assert fault_proxy  # a fixture, used by name

HOLD = 600  # seconds a held request waits: far longer than the test, it is killed first


def part_line(numbers):
    return r"^PUT \S*\?partNumber=(" + "|".join(map(str, numbers)) + r")&"


def head_line(m, name):
    return r"^HEAD /" + m.bucket + "/" + m.key(name).replace(".", r"\.") + " "


# point -> (rules(m, name), what the log shows when the daemon waits on it,
#           part numbers the server must hold at the kill (None: no upload there yet),
#           whether the object is already complete on the server at the kill)
POINTS = {
    # CreateMultipartUpload done by the server, its answer (the upload id) never
    # reached the daemon: an upload no record owns, aborted at the next mount
    "create-answered-not-recorded": (
        lambda m, n: [{"fault": f"hold-response:{HOLD}", "match": r"^POST \S*\?uploads= "}],
        lambda lg: lg.held("POST", r"\?uploads=$"),
        None, False),
    # the upload exists and is recorded, parts 1 and 2 (both in flight) held
    "before-the-first-part": (
        lambda m, n: [{"fault": f"stall:{HOLD}", "match": part_line([1, 2])}],
        lambda lg: len(lg.held("PUT", r"\?partNumber=[12]&")) == 2,
        set(), False),
    # parts 1 and 2 stored, 3 and 4 (both in flight) held
    "mid-parts": (
        lambda m, n: [{"fault": f"stall:{HOLD}", "match": part_line([3, 4])}],
        lambda lg: len(lg.held("PUT", r"\?partNumber=[34]&")) == 2
        and sorted(lg.part_numbers()) == [1, 2],
        {1, 2}, False),
    # every part stored, the complete held before the server saw it
    "before-complete": (
        lambda m, n: [{"fault": f"stall:{HOLD}", "match": r"^POST \S*\?uploadId=\S+ "}],
        lambda lg: lg.held("POST", r"\?uploadId="),
        "all", False),
    # the server completed the object, its answer never reached the daemon
    "complete-answered-not-seen": (
        lambda m, n: [{"fault": f"hold-response:{HOLD}", "match": r"^POST \S*\?uploadId=\S+ "}],
        lambda lg: lg.held("POST", r"\?uploadId="),
        None, True),
    # complete seen, the HEAD that checks the object answered 200 but held:
    # after the complete, before the record and the move
    "after-complete-before-move": (
        lambda m, n: [{"fault": f"hold-response:{HOLD}", "match": head_line(m, n),
                       "status": 200}],
        lambda lg: lg.held("HEAD"),
        None, True),
}

# the same in an SSE-KMS bucket (after the restart): the ETag cannot tell the
# object is ours, its record id, size and compression do
POINTS["complete-answered-not-seen-sse-kms"] = POINTS["complete-answered-not-seen"]


@pytest.mark.parametrize("point", list(POINTS))
def test_kill9_then_remount_completes(fault_proxy, mount, tmp_path, point):
    rules, waiting, parts_at_kill, complete_at_kill = POINTS[point]
    m = mount(proxied(fault_proxy, stall_seconds=HOLD))
    name = "movie.bin"
    key = m.key(name)
    fault_proxy.set_rules(rules(m, name))
    data = data_of(MULTI_SIZE, 11)
    write_file(m.pending(name), data)

    fault_proxy.wait_for(f"the daemon waiting at {point}", waiting)
    crash(m)
    # the held request ends only now (its client is gone): then nothing is in flight
    fault_proxy.wait_for("the held requests dropped",
                         lambda lg: len([e for e in lg.final() if e[5].endswith("GONE")])
                         == len(lg.held()))
    before = fault_proxy.log()
    fault_proxy.set_rules([KMS] if point.endswith("sse-kms") else [])

    # what the server has at the kill, seen by the independent client
    uploads = uploads_under(m)
    if complete_at_kill:
        assert uploads == []
        assert m.client.head_object(m.bucket, key) is not None
        had = None
    else:
        assert m.client.head_object(m.bucket, key) is None
        assert len(uploads) == 1, uploads
        (up_key, upload_id), = uploads
        assert up_key == key
        had = set(list_parts(m.client, m.bucket, key, upload_id))
        if parts_at_kill == "all":
            assert had == set(before.part_numbers())
        elif parts_at_kill is not None:
            assert had == parts_at_kill

    mark = fault_proxy.mark()
    restart(m)
    m.wait_completed(name)
    after = fault_proxy.log(mark)

    assert_uploaded_once(m, name, data, tmp_path / "check")
    sent_after = after.part_numbers()
    assert len(sent_after) == len(set(sent_after)), f"a part sent twice: {sorted(sent_after)}"
    if complete_at_kill:
        assert sent_after == [], "parts uploaded again for an object already complete"
        assert not after.find("POST"), "a new upload or complete after the object was complete"
        if point.endswith("sse-kms"):
            assert after.find("HEAD", re.escape(key) + "$", 200)[0][2] == "kms-etag"
    elif parts_at_kill is None:
        # nobody owned the server's upload: aborted at mount, a new one made
        assert after.find("DELETE", r"\?uploadId=" + re.escape(upload_id) + "$", 204), \
            "the upload no record owns was not aborted"
        assert len(after.find("POST", r"\?uploads=$", 200)) == 1
        assert sorted(sent_after) == list(range(1, max(sent_after) + 1))
    else:
        # resumed: the same upload, only the parts the server lacked
        assert not after.find("POST", r"\?uploads=$"), "a new upload instead of resuming"
        total = max(sent_after + sorted(had))
        assert set(sent_after) == set(range(1, total + 1)) - had, \
            f"server had {sorted(had)}, sent after the restart {sorted(sent_after)}"
        assert total >= 5
    assert get_status(m.completed(name)) == "completed", earlier_logs(m)


def test_kill9_after_record_before_move(fault_proxy, mount, tmp_path):
    """The record says completed but the file is still in pending/ (the move
    failed: completed/ made immutable), then kill -9: the next mount only
    finishes the move, with no request for the object."""
    m = mount(proxied(fault_proxy))
    name = "clip.bin"
    completed_dir = m.local / "completed"
    data = data_of(MULTI_SIZE, 12)
    subprocess.run(["chattr", "+i", str(completed_dir)], check=True)
    try:
        write_file(m.pending(name), data)
        fault_proxy.wait_for("the upload done", lambda lg: lg.find("HEAD", status=200))
        deadline = time.monotonic() + 60
        while "cannot move it to completed/" not in m.log():
            assert time.monotonic() < deadline, m.log()
            time.sleep(0.05)
        assert os.path.exists(m.local / "pending" / name)
        crash(m)
    finally:
        subprocess.run(["chattr", "-i", str(completed_dir)], check=True)
    mark = fault_proxy.mark()
    restart(m)
    m.wait_completed(name)
    after = fault_proxy.log(mark)
    assert not after.find("PUT") and not after.find("POST"), "uploaded again after the crash"
    assert_uploaded_once(m, name, data, tmp_path / "check")
    assert f"'pending/{name}' was uploaded before" in m.log()  # only moved


def held_at_parts(fault_proxy, mount, name, seed, parts):
    """Mount, drop pending/@name (multipart) and hold its @parts (two) on the wire."""
    m = mount(proxied(fault_proxy, stall_seconds=HOLD))
    fault_proxy.set_rules([{"fault": f"stall:{HOLD}", "match": part_line(parts)}])
    data = data_of(MULTI_SIZE, seed)
    write_file(m.pending(name), data)
    held = "[" + "".join(map(str, parts)) + "]"
    fault_proxy.wait_for(f"parts {parts} held",
                         lambda lg: len(lg.held("PUT", rf"\?partNumber={held}&")) == 2)
    return m, data


def test_unmount_mid_upload_then_resume(fault_proxy, mount, tmp_path):
    """Unmounting while parts are in flight stops cleanly (exit 0, nothing
    aborted); the next mount resumes the same upload with the missing parts."""
    name = "reel.bin"
    m, data = held_at_parts(fault_proxy, mount, name, 13, [3, 4])
    errors = m.stop()
    assert errors == [], "\n".join(errors)
    assert not fault_proxy.log().find("DELETE", r"\?uploadId="), "aborted at unmount"
    (key, upload_id), = uploads_under(m)
    had = set(list_parts(m.client, m.bucket, key, upload_id))
    assert had == {1, 2}

    fault_proxy.set_rules([])
    mark = fault_proxy.mark()
    restart(m)
    m.wait_completed(name)
    after = fault_proxy.log(mark)
    assert not after.find("POST", r"\?uploads=$"), "a new upload instead of resuming"
    assert set(after.part_numbers()) == set(range(3, max(after.part_numbers()) + 1))
    assert_uploaded_once(m, name, data, tmp_path / "check")


@pytest.mark.parametrize("aborts_refused", [0, 2])
def test_resumable_unit_removed_while_mounted_is_forgotten(fault_proxy, mount, aborts_refused):
    """A multipart upload an unmount left to resume, whose file is removed on
    the next mount before it runs (held): its record goes at once and its
    upload is aborted, not left queued until yet another mount."""
    name = "dropped.bin"
    m, _ = held_at_parts(fault_proxy, mount, name, 15, [3, 4])
    assert m.stop() == []
    fault_proxy.set_rules([])
    assert len(uploads_under(m)) == 1

    m.options["hold"] = True  # nothing runs: the unit stays queued with its upload
    restart(m)
    [rec] = json.loads(m.cli("list", "--json").stdout)
    assert rec["status"] == "queued" and rec["original_path"] == "pending/" + name
    if aborts_refused:  # the first tries fail: it is tried again, not dropped
        fault_proxy.set_rules([{"fault": "status:403:AccessDenied", "first": aborts_refused,
                                "match": r"^DELETE \S*\?uploadId="}])
    os.unlink(m.pending(name))
    assert json.loads(m.cli("list", "--json").stdout) == []
    deadline = time.monotonic() + 10
    while uploads_under(m):
        assert time.monotonic() < deadline, "the upload of the removed file was not aborted"
        time.sleep(0.1)
    assert "its file was removed" in m.log()
    assert len(fault_proxy.log().find("DELETE", r"\?uploadId=", "403")) == aborts_refused
    assert m.client.list_objects(m.bucket, m.prefix + "/") == []


def test_abort_of_removed_unit_survives_kill9(fault_proxy, mount):
    """The multipart upload of a file removed while the server refuses its
    abort, then kill -9: the abort was kept in the store, so the next mount
    aborts it (no record names it any more, so the orphan scan would not)."""
    name = "dropped.bin"
    m, _ = held_at_parts(fault_proxy, mount, name, 16, [3, 4])
    assert m.stop() == []
    fault_proxy.set_rules([{"fault": "status:403:AccessDenied",
                            "match": r"^DELETE \S*\?uploadId="}])
    (key, upload_id), = uploads_under(m)

    m.options["hold"] = True  # nothing runs: the unit stays queued with its upload
    restart(m)
    os.unlink(m.pending(name))
    assert json.loads(m.cli("list", "--json").stdout) == []
    fault_proxy.wait_for("an abort refused",
                         lambda lg: lg.find("DELETE", r"\?uploadId=", "403"))
    crash(m)
    (left_key, left_id), = uploads_under(m)
    assert (left_key, left_id) == (key, upload_id)

    fault_proxy.set_rules([])
    del m.options["hold"]
    restart(m)
    deadline = time.monotonic() + 10
    while uploads_under(m):
        assert time.monotonic() < deadline, "the upload of the removed file was not aborted"
        time.sleep(0.1)
    assert f"aborted the multipart upload of '{key}'" in m.log()
    assert m.client.list_objects(m.bucket, m.prefix + "/") == []
    assert json.loads(m.cli("list", "--json").stdout) == []
    assert m.stop() == []
    mark = fault_proxy.mark()
    restart(m)  # aborted once: not tried again
    time.sleep(1.5)
    assert not fault_proxy.log(mark).find("DELETE", r"\?uploadId=")


def test_unit_removed_while_down_is_forgotten(fault_proxy, mount):
    """A queued multipart upload whose file is removed from the backing
    directory while no daemon runs: the next mount drops its record and
    aborts its upload, so records, files and bucket agree."""
    name = "gone.bin"
    m, _ = held_at_parts(fault_proxy, mount, name, 14, [1, 2])
    crash(m)
    fault_proxy.set_rules([])
    assert len(uploads_under(m)) == 1
    os.unlink(m.local / "pending" / name)

    restart(m)
    deadline = time.monotonic() + 30
    while uploads_under(m) or json.loads(m.cli("list", "--json").stdout):
        assert time.monotonic() < deadline, m.log()
        time.sleep(0.1)
    assert m.client.list_objects(m.bucket, m.prefix + "/") == []


# ---- units with no record: a release lost to a kill -9, or put in while down ----


def check_dir_object(m, name, files, scratch):
    """The object of pending/@name (a directory) holds exactly @files, byte for byte."""
    blob = m.client.get_object(m.bucket, m.key(name))
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tf:
        names = {t.name for t in tf.getmembers() if t.isfile()}
        assert names == {f"{name}/{f}" for f in files}, names
        for f, data in files.items():
            assert sha256(tf.extractfile(f"{name}/{f}").read()) == sha256(data), f
    assert get_status(m.completed(name)) == "completed"
    for f, data in files.items():
        assert sha256((m.completed(name) / f).read_bytes()) == sha256(data)


def wait_stopped(pid):
    """Every thread of @pid stopped (SIGSTOP is delivered to each in turn)."""
    deadline = time.monotonic() + 10
    while True:
        states = set()
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                states.add(f.read().rsplit(")", 1)[1].split()[0])
        if states <= {"T", "t"}:
            return
        assert time.monotonic() < deadline, f"not stopped: thread states {states}"
        time.sleep(0.01)


def test_closed_just_before_kill9_is_uploaded(mount, tmp_path):
    """close() does not wait for the daemon (FUSE sends the release after it
    returns): files closed while the daemon is stopped, then kill -9, have no
    queue entry.  The next mount finds them in pending/ and uploads each."""
    m = mount()
    write_file(m.pending("warm.bin"), data_of(4096, 20))
    m.wait_completed("warm.bin")
    files = {f"late{i}.bin": data_of((64 << 10) * (i + 1), 30 + i) for i in range(4)}
    fds = {}
    for name, data in files.items():
        fd = os.open(m.pending(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, MODE)
        os.write(fd, data)
        fds[name] = fd
    m.proc.send_signal(signal.SIGSTOP)  # the releases of the closes below never run
    try:
        wait_stopped(m.proc.pid)
        for fd in fds.values():
            os.close(fd)  # returns at once: no flush, the release is sent after
    finally:
        crash(m)
    for name in files:
        os.utime(m.local / "pending" / name, (MTIME, MTIME))
    assert sorted(os.listdir(m.local / "pending")) == sorted(files)

    restart(m)
    for name in files:
        m.wait_completed(name, timeout=60)
    assert sorted(m.client.list_objects(m.bucket, m.prefix + "/")) == \
        sorted(m.key(n) for n in ["warm.bin", *files])
    for name, data in files.items():
        blob = m.client.get_object(m.bucket, m.key(name))
        check_archive(blob, name, data, MODE, MTIME, tmp_path / name)
        assert get_xattr(m.completed(name), "user.mgmt.checksum") == "sha256:" + sha256(data)
    assert uploads_under(m) == []
    assert os.listdir(m.path("pending")) == []


def test_units_put_in_backing_dir_while_down_are_uploaded(mount, tmp_path):
    """Files and a directory put into LOCAL_DIR/pending/ while no daemon runs
    (including a name uploaded before, with new content) are uploaded at the
    next mount; an ignored name stays, ignored."""
    m = mount({"dir_settle": "0.5"})
    old = data_of(4096, 40)
    write_file(m.pending("same.bin"), old)
    m.wait_completed("same.bin")
    errors = m.stop()
    assert errors == [], "\n".join(errors)

    backing = m.local / "pending"
    files = {"new.bin": data_of(300 << 10, 41), "same.bin": data_of(5000, 42)}
    for name, data in files.items():
        write_file(backing / name, data)
    inside = {"a.txt": b"a\n" * 100, "b.bin": data_of(2 << 20, 43)}
    (backing / "album").mkdir()
    for f, data in inside.items():
        (backing / "album" / f).write_bytes(data)
    (backing / ".hidden").write_bytes(b"not for upload")

    restart(m)
    m.wait_completed("new.bin", timeout=60)
    m.wait_completed("same.bin", "same_1.bin", timeout=60)
    m.wait_completed("album", timeout=60)
    check_archive(m.client.get_object(m.bucket, m.key("new.bin")), "new.bin",
                  files["new.bin"], MODE, MTIME, tmp_path / "new")
    second = f"{m.prefix}/same.bin_1.tar.gz"
    check_archive(m.client.get_object(m.bucket, second), "same.bin", files["same.bin"],
                  MODE, MTIME, tmp_path / "same")
    assert get_xattr(m.completed("same_1.bin"), "user.mgmt.s3_object_key") == second
    assert m.completed("same.bin").read_bytes() == old
    check_dir_object(m, "album", inside, tmp_path / "album")
    assert os.listdir(m.path("pending")) == [".hidden"]
    assert get_status(m.pending(".hidden")) == "ignored"
    assert sorted(m.client.list_objects(m.bucket, m.prefix + "/")) == sorted(
        [m.key("same.bin"), second, m.key("new.bin"), m.key("album")])


def check_new_x_uploaded(m, new, scratch):
    """pending/x.bin, @new put where an uploaded x.bin was, went up as x.bin_1,
    not taken for the uploaded one."""
    m.wait_completed("x.bin", timeout=60)
    second = f"{m.prefix}/x.bin_1.tar.gz"
    assert get_xattr(m.completed("x.bin"), "user.mgmt.s3_object_key") == second
    assert get_xattr(m.completed("x.bin"), "user.mgmt.checksum") == "sha256:" + sha256(new)
    check_archive(m.client.get_object(m.bucket, second), "x.bin", new, MODE, MTIME,
                  scratch / "new")
    assert m.completed("x.bin").read_bytes() == new
    assert "recovered: moved" not in m.log()


def test_new_file_under_an_uploaded_name_is_not_taken_for_it(mount, tmp_path):
    """pending/X uploaded, completed/X removed, then a new X of the same size
    put into pending/ with no queue entry (while down, or a release lost to a
    kill -9): the next mount must upload it, not take it for the uploaded X
    whose move a crash cut off (which is only finished for an unchanged file)."""
    m = mount()
    old, new = data_of(8192, 50), data_of(8192, 51)
    write_file(m.pending("x.bin"), old)
    m.wait_completed("x.bin")
    errors = m.stop()
    assert errors == [], "\n".join(errors)
    os.unlink(m.local / "completed" / "x.bin")
    time.sleep(1.1)  # a later second than the upload's timestamp
    write_file(m.local / "pending" / "x.bin", new)

    restart(m)
    check_new_x_uploaded(m, new, tmp_path)


def test_new_file_in_the_upload_second_is_not_taken_for_it(mount, tmp_path):
    """As above, but the new X is written in the very second the upload ended
    (its timestamp has whole seconds): its bytes tell it from the uploaded X."""
    for attempt in range(6):
        m = mount()
        old, new = data_of(8192, 60 + attempt), data_of(8192, 70 + attempt)
        time.sleep(1 - time.time() % 1)  # all below in one second, most likely
        write_file(m.pending("x.bin"), old)
        m.wait_completed("x.bin")
        ended = parse_utc(get_xattr(m.completed("x.bin"), "user.mgmt.upload_timestamp"))
        assert m.stop() == []
        os.unlink(m.local / "completed" / "x.bin")
        write_file(m.local / "pending" / "x.bin", new)
        if int(os.stat(m.local / "pending" / "x.bin").st_ctime) == int(ended):
            break
    else:
        pytest.fail("could not write the new file in the second its upload ended")

    restart(m)
    check_new_x_uploaded(m, new, tmp_path)


def unmoved_album(m, when=None):
    """pending/album uploaded but not moved (completed/ immutable, the move
    fails), the mount stopped after @when(ended) ran (ended: the second the
    upload ended, from its record).  Returns what @when returned."""
    completed_dir = m.local / "completed"
    subprocess.run(["chattr", "+i", str(completed_dir)], check=True)
    try:
        time.sleep(1 - time.time() % 1)  # most of a second ahead
        os.mkdir(m.pending("album"))
        (m.pending("album") / "a.txt").write_bytes(b"old content\n" * 100)
        deadline = time.monotonic() + 60
        while get_status(m.pending("album")) != "failed":
            assert time.monotonic() < deadline, m.log()
            time.sleep(0.01)
        ended = parse_utc(get_xattr(m.pending("album"), "user.mgmt.upload_timestamp"))
        out = when(ended) if when else None
        assert m.stop() == []
    finally:
        subprocess.run(["chattr", "-i", str(completed_dir)], check=True)
    return out


def check_album_uploaded_again(m):
    """The next mount uploaded the changed album again, not moved it as the one uploaded."""
    restart(m)
    m.wait_completed("album")
    local = (m.completed("album") / "a.txt").read_bytes()
    key = get_xattr(m.completed("album"), "user.mgmt.s3_object_key")
    with tarfile.open(fileobj=io.BytesIO(m.client.get_object(m.bucket, key)), mode="r:gz") as tf:
        assert tf.extractfile("album/a.txt").read() == local
    assert local.startswith(b"NEW")


def test_unmoved_directory_changed_inside_is_uploaded_again(mount):
    """A directory uploaded but not moved, then a file inside it changed while
    unmounted: the next mount sees the change (not just the top directory's
    ctime) and uploads it again instead of moving the changed tree as the one
    uploaded."""
    m = mount({"dir_settle": "0.5"})
    unmoved_album(m)
    time.sleep(1.1)  # ctime has whole seconds
    with open(m.local / "pending" / "album" / "a.txt", "r+b") as f:
        f.write(b"NEW")
    check_album_uploaded_again(m)


def unmoved_album_of_one_second(mount, change):
    """unmoved_album, its file written (and changed, if @change) in the second
    the upload ended, tried until the clock allows: the mount."""
    def when(ended):
        a = m.local / "pending" / "album" / "a.txt"
        if change:
            with open(a, "r+b") as f:
                f.write(b"NEW")
        return int(os.stat(a).st_ctime) == int(ended)

    for _ in range(6):
        m = mount({"dir_settle": "0.5"})
        if unmoved_album(m, when):
            return m
    pytest.fail("could not write the file in the second its upload ended")


def test_unmoved_directory_unchanged_in_the_upload_second_is_only_moved(mount):
    """A directory uploaded but not moved whose file was written in the second
    the upload ended, unchanged since: the tree's bytes match the upload's
    checksum, so the next mount only moves it (no second copy)."""
    m = unmoved_album_of_one_second(mount, change=False)
    restart(m)
    m.wait_completed("album")
    assert "'pending/album' was uploaded before" in m.log()
    assert get_xattr(m.completed("album"), "user.mgmt.s3_object_key") == m.key("album")
    assert m.client.list_objects(m.bucket, m.prefix + "/") == [m.key("album")]


def test_unmoved_directory_changed_in_the_upload_second_is_uploaded_again(mount):
    """A directory uploaded but not moved, then its file changed in the very
    second the upload ended (the upload's timestamp has whole seconds): the
    tree's bytes tell it from the one uploaded, and it is uploaded again."""
    check_album_uploaded_again(unmoved_album_of_one_second(mount, change=True))




def test_put_stored_before_kill9_is_kept_over_a_duplicate(fault_proxy, mount, tmp_path):
    """The server stored a.bin's one PUT, the daemon died before its answer;
    meanwhile b.bin, the same content, went up and was recorded.  After the
    restart a.bin's own object is taken as its upload (a 412 on our MD5), not
    left in the bucket, named by nothing, while a.bin is called a duplicate of
    b.bin."""
    m = mount(proxied(fault_proxy, stall_seconds=HOLD))
    data = data_of(200 << 10, 41)
    put_a = "^PUT " + re.escape(f"/{m.bucket}/{m.key('a.bin')}") + " "
    fault_proxy.set_rules([{"fault": f"hold-response:{HOLD}", "match": put_a, "first": 1}])
    write_file(m.pending("a.bin"), data)
    fault_proxy.wait_for("the answer of a.bin's PUT held",
                         lambda lg: lg.held("PUT", re.escape(m.key("a.bin")) + "$"))
    write_file(m.pending("b.bin"), data)
    m.wait_completed("b.bin")
    crash(m)
    fault_proxy.set_rules([])
    restart(m)
    m.wait_completed("a.bin")

    assert get_status(m.completed("a.bin")) == "completed", earlier_logs(m)
    assert get_xattr(m.completed("a.bin"), "user.mgmt.s3_object_key") == m.key("a.bin")
    assert sorted(m.client.list_objects(m.bucket, m.prefix + "/")) == \
        sorted([m.key("a.bin"), m.key("b.bin")])
    for name in ("a.bin", "b.bin"):
        check_archive(m.client.get_object(m.bucket, m.key(name)), name, data, MODE, MTIME,
                      tmp_path / name)
    puts = fault_proxy.log().find("PUT", re.escape(m.key("a.bin")) + "$")
    assert [e[5] for e in puts] == ["200+GONE", "412"], puts
