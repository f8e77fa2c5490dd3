"""Faults between mgmtfs and S3, injected by tests/tools/faultproxy.py.

Every upload must still complete once, whole: checked on the server with the
independent client (one object, a tar.gz of exactly the bytes written, no
multipart upload left behind).  Nothing here measures time.
"""
import errno
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import time
import zlib

import pytest

from fault_tools import (KMS, MODE, MTIME, MULTI_SIZE, WAIT, assert_uploaded_once, crash,
                         data_of, fault_proxy, proxied, restart, uploads_under, write_file,
                         write_until_error)
from helpers import check_archive, get_status, get_xattr, wait_status

assert fault_proxy  # a fixture, used by name

PART = r"\?partNumber={}&"
CREATE = r"\?uploads=$"
COMPLETE = r"^/[^?]+\?uploadId=[^&]+$"
SMALL = 200 << 10  # one PUT


def single_put(m, name):
    """The target of the single PUT of pending/@name, as a regex."""
    return "^" + re.escape(f"/{m.bucket}/{m.key(name)}") + "$"


def single_put_line(m, name):
    """--match for the request line of that PUT."""
    return "^PUT " + single_put(m, name)[1:-1] + " "


# name -> (size of the file, rules(m, name), options, what the log must show(m, name, log))
FAULTS = {
    "503-slowdown-on-parts-2-and-4": (
        MULTI_SIZE,
        lambda m, n: [{"fault": "status:503:SlowDown", "match": r"PUT .*\?partNumber=[24]&",
                       "first": 3}],
        {},
        lambda m, n, lg: len(lg.find("PUT", r"\?partNumber=[24]&", 503)) == 3),
    "500-on-create": (
        MULTI_SIZE,
        lambda m, n: [{"fault": "status:500:InternalError", "match": r"POST .*\?uploads=",
                       "first": 2}],
        {},
        lambda m, n, lg: len(lg.find("POST", CREATE, 500)) == 2
        and len(lg.find("POST", CREATE, 200)) == 1),
    "reset-mid-body-of-part-3": (
        MULTI_SIZE,
        lambda m, n: [{"fault": "reset:300000", "match": r"PUT .*\?partNumber=3&", "first": 1}],
        {},
        lambda m, n, lg: len(lg.find("PUT", PART.format(3), "RST")) == 1),
    "stall-part-2": (
        MULTI_SIZE,
        lambda m, n: [{"fault": "stall:600", "match": r"PUT .*\?partNumber=2&", "first": 1}],
        {"stall_seconds": 2},  # the daemon cuts the stalled transfer and sends it again
        lambda m, n, lg: len(lg.find("PUT", PART.format(2), "GONE")) == 1),
    "dropped-answer-of-part-2": (
        MULTI_SIZE,
        lambda m, n: [{"fault": "drop-response", "match": r"PUT .*\?partNumber=2&",
                       "first": 1}],
        {},
        lambda m, n, lg: len(lg.find("PUT", PART.format(2), "200+RST")) == 1),
    "dropped-answer-of-complete": (
        MULTI_SIZE,
        lambda m, n: [{"fault": "drop-response", "match": r"POST .*\?uploadId=", "first": 1}],
        {},
        lambda m, n, lg: len(lg.find("POST", COMPLETE, "200+RST")) == 1),
    "dropped-answer-of-create": (
        MULTI_SIZE,
        lambda m, n: [{"fault": "drop-response", "match": r"POST .*\?uploads=", "first": 1}],
        {},
        lambda m, n, lg: len(lg.find("POST", CREATE, "200+RST")) == 1),
    "503-slowdown-on-single-put": (
        SMALL,
        lambda m, n: [{"fault": "status:503:SlowDown", "match": single_put_line(m, n), "first": 2}],
        {},
        lambda m, n, lg: len(lg.find("PUT", single_put(m, n), 503)) == 2),
    "reset-mid-body-of-single-put": (
        SMALL,
        lambda m, n: [{"fault": "reset:50000", "match": single_put_line(m, n), "first": 1}],
        {},
        lambda m, n, lg: len(lg.find("PUT", single_put(m, n), "RST")) == 1),
    "dropped-answer-of-single-put": (
        SMALL,
        lambda m, n: [{"fault": "drop-response", "match": single_put_line(m, n), "first": 1}],
        {},
        lambda m, n, lg: len(lg.find("PUT", single_put(m, n), "200+RST")) == 1),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_upload_survives(fault_proxy, mount, tmp_path, fault):
    size, rules, extra, shown = FAULTS[fault]
    m = mount(proxied(fault_proxy, **extra))
    name = "media.bin"
    fault_proxy.set_rules(rules(m, name))
    data = data_of(size, zlib.crc32(fault.encode()))
    write_file(m.pending(name), data)

    m.wait_completed(name)

    lg = fault_proxy.log()
    assert shown(m, name, lg), "the fault was not injected as planned"
    assert_uploaded_once(m, name, data, tmp_path / "check")
    assert int(get_xattr(m.completed(name), "user.mgmt.attempts")) >= 1


def test_wrong_secret_fails_at_once_then_retry(fault_proxy, mount, s3, tmp_path):
    """A real 403 SignatureDoesNotMatch from the RGW: the unit fails after one
    PUT with a message naming the key; remounted with the right secret,
    `mgmtfs retry` uploads it."""
    wrong = "Wr0ngSecret" + s3.secret_key[::-1][:20]
    # the mount's own bucket check would refuse the wrong secret: let it pass
    fault_proxy.set_rules([{"fault": "reply:200", "match": f"^HEAD /{s3.bucket} "}])
    m = mount(proxied(fault_proxy), env={"AWS_SECRET_ACCESS_KEY": wrong})
    name = "clip.bin"
    data = data_of(SMALL, 3)
    write_file(m.pending(name), data)

    wait_status(m.pending(name), "failed")
    error = get_xattr(m.pending(name), "user.mgmt.error")
    assert f"403 SignatureDoesNotMatch: check the secret key for access key {s3.access_key}" \
        in error
    assert get_xattr(m.pending(name), "user.mgmt.attempts") == "1"
    puts = fault_proxy.log().find("PUT", single_put(m, name))
    assert [e[5] for e in puts] == ["403"], "a 403 must not be retried"
    listed = m.cli("list", "--json").stdout.decode()
    for text in (error, m.log(), listed):
        assert wrong not in text and s3.secret_key not in text
    assert m.client.list_objects(m.bucket, m.prefix + "/") == []

    # fix the key: unmount, mount again with the right secret, retry
    assert m.stop() == []
    fault_proxy.set_rules([])
    m.env["AWS_SECRET_ACCESS_KEY"] = s3.secret_key
    m.start()
    assert get_status(m.pending(name)) == "failed"
    p = m.cli("retry", str(m.pending(name)))
    assert p.returncode == 0, diagnose(m, p, name)
    m.wait_completed(name)
    assert_uploaded_once(m, name, data, tmp_path / "check")
    assert wrong not in m.log()


@pytest.mark.parametrize("how", ["gave-up-then-retry", "unmount", "kill-9"])
def test_lost_answer_of_single_put_is_not_uploaded_twice(fault_proxy, mount, tmp_path, how):
    """The server stored the single PUT, but the daemon that sent it never
    learnt so: its one attempt lost the answer and it gave up (then `mgmtfs
    retry`), or it was unmounted or killed while it waited for the answer
    (then mounted again).  The next PUT, If-None-Match: *, meets its own
    object (412): that is the upload done, under the same key, not a key
    taken that sends the same bytes again as NAME_1."""
    hold = 600  # far longer than the test: the daemon goes first
    name = "media.bin"
    if how == "gave-up-then-retry":
        m = mount(proxied(fault_proxy, max_attempts=1))
        fault = "drop-response"
    else:
        m = mount(proxied(fault_proxy, stall_seconds=hold))
        fault = f"hold-response:{hold}"
    put = single_put(m, name)
    fault_proxy.set_rules([{"fault": fault, "match": single_put_line(m, name), "first": 1}])
    data = data_of(SMALL, 21)
    write_file(m.pending(name), data)

    if how == "gave-up-then-retry":
        wait_status(m.pending(name), "failed")
        assert fault_proxy.log().find("PUT", put, "200+RST"), "the fault was not injected"
        p = m.cli("retry", str(m.pending(name)))
        assert p.returncode == 0, diagnose(m, p, name)
    else:
        fault_proxy.wait_for("the answer of the PUT held", lambda lg: lg.held("PUT", put))
        if how == "unmount":
            assert m.stop() == []
        else:
            crash(m)
        fault_proxy.wait_for("the held answer dropped",
                             lambda lg: lg.find("PUT", put, "200+GONE"))
        assert m.client.head_object(m.bucket, m.key(name)) is not None
        restart(m)
    m.wait_completed(name)

    puts = [e[5] for e in fault_proxy.log().find("PUT", r"^/" + re.escape(m.bucket) + "/")]
    assert puts[1:] == ["412"], f"PUTs after the lost answer: {puts}"
    assert_uploaded_once(m, name, data, tmp_path / "check")


@pytest.mark.parametrize("size", [SMALL, MULTI_SIZE], ids=["one-put", "multipart"])
def test_sse_kms_etags_are_not_md5s(fault_proxy, mount, tmp_path, size):
    """A bucket that encrypts with SSE-KMS gives ETags that are no MD5s, and
    says so (x-amz-server-side-encryption: aws:kms).  The upload is done, once,
    not failed as damaged: the server checked every body's Content-MD5, and
    the object's size is checked."""
    m = mount(proxied(fault_proxy))
    fault_proxy.set_rules([KMS])
    name = "secret.bin"
    data = data_of(size, 31)
    write_file(m.pending(name), data)
    m.wait_completed(name)
    key = "^" + re.escape(f"/{m.bucket}/{m.key(name)}") + "$"
    # the answer that was checked: the PUT's, or the HEAD's after the complete
    checked = fault_proxy.log().find("PUT" if size == SMALL else "HEAD", key, 200)
    assert checked and all(e[2] == "kms-etag" for e in checked), checked
    assert_uploaded_once(m, name, data, tmp_path / "check")
    assert "ETag" not in m.log()


def test_lost_answer_of_single_put_under_sse_kms(fault_proxy, mount, tmp_path):
    """The lost answer of a single PUT, as in
    test_lost_answer_of_single_put_is_not_uploaded_twice, in an SSE-KMS
    bucket: the ETag of the object that the retry's PUT meets (412) cannot
    say it is ours; its record id, size and sha256 (x-amz-meta-mgmt-*) do."""
    m = mount(proxied(fault_proxy, max_attempts=1))
    name = "media.bin"
    fault_proxy.set_rules([{"fault": "drop-response", "match": single_put_line(m, name),
                            "first": 1}, KMS])
    data = data_of(SMALL, 22)
    write_file(m.pending(name), data)
    wait_status(m.pending(name), "failed")
    p = m.cli("retry", str(m.pending(name)))
    assert p.returncode == 0, diagnose(m, p, name)
    m.wait_completed(name)

    lg = fault_proxy.log()
    puts = [e[5] for e in lg.find("PUT", single_put(m, name))]
    assert puts == ["200+RST", "412"], f"PUTs: {puts}"
    heads = lg.find("HEAD", single_put(m, name), 200)
    assert heads and heads[-1][2] == "kms-etag", heads
    assert_uploaded_once(m, name, data, tmp_path / "check")


def retried_once(fault_proxy, m, name, data, tmp_path, retry=True):
    """`mgmtfs retry` pending/@name (if @retry): it completes, and the
    multipart upload made at first is the only one there ever was."""
    if retry:
        p = m.cli("retry", str(m.pending(name)))
        assert p.returncode == 0, diagnose(m, p, name)
    m.wait_completed(name)
    assert not fault_proxy.log().find("POST", CREATE, 200)[1:], "uploaded again"
    assert_uploaded_once(m, name, data, tmp_path / "check")


@pytest.mark.parametrize("bucket", ["plain", "sse-kms"])
def test_lost_answers_of_complete_are_not_uploaded_twice(fault_proxy, mount, tmp_path, bucket):
    """The server completed the multipart upload, but every answer to the
    complete is lost and the call gives up.  The object there has the
    multipart ETag of our parts (in an SSE-KMS bucket an ETag that is no MD5
    of them, and our record id, size and compression in x-amz-meta-mgmt-*):
    the upload is done at its first attempt.  Failed, it would abort the
    upload id and send the file again as NAME_1."""
    m = mount(proxied(fault_proxy, max_attempts=3))
    name = "film.bin"
    fault_proxy.set_rules([{"fault": "drop-response", "match": r"POST .*\?uploadId="}]
                          + ([KMS] if bucket == "sse-kms" else []))
    data = data_of(MULTI_SIZE, 24)
    write_file(m.pending(name), data)
    m.wait_completed(name)

    lg = fault_proxy.log()
    completes = [e[5] for e in lg.find("POST", COMPLETE)]
    assert len(completes) >= 3 and set(completes) == {"200+RST"}, completes
    heads = lg.find("HEAD", single_put(m, name), 200)
    assert heads and heads[-1][2] == ("kms-etag" if bucket == "sse-kms" else "-"), heads
    assert get_xattr(m.completed(name), "user.mgmt.attempts") == "1", m.log()
    assert not lg.find("POST", CREATE, 200)[1:], "uploaded again"
    assert_uploaded_once(m, name, data, tmp_path / "check")


@pytest.mark.parametrize("complete", ["answer-lost", "answered"])
def test_complete_that_cannot_be_checked_is_kept_for_retry(fault_proxy, mount, tmp_path,
                                                           complete):
    """The complete's answers are lost (or it is answered), and the HEAD that
    would check the object fails: the unit fails, but its upload id is kept
    (not aborted), so `mgmtfs retry` finds the object made and does not send
    the file again as NAME_1."""
    m = mount(proxied(fault_proxy, max_attempts=1))
    name = "reel2.bin"
    # HEADs of the key: the free-name check, the one before the complete, the
    # one after it (the third: 503)
    rules = [{"fault": "status:503:SlowDown", "match": r"^HEAD ", "every": 3, "first": 1}]
    if complete == "answer-lost":
        rules.insert(0, {"fault": "drop-response", "match": r"POST .*\?uploadId="})
    fault_proxy.set_rules(rules)
    data = data_of(MULTI_SIZE, 25)
    write_file(m.pending(name), data)
    wait_status(m.pending(name), "failed")
    fault_proxy.set_rules([])
    lg = fault_proxy.log()
    assert set(e[5] for e in lg.find("POST", COMPLETE)) == \
        {"200+RST" if complete == "answer-lost" else "200"}, m.log()
    assert lg.find("HEAD", None, "503"), "the HEAD after the complete was not failed"
    assert not lg.find("DELETE", r"\?uploadId="), "the upload that may be done was aborted"

    retried_once(fault_proxy, m, name, data, tmp_path)


def test_lost_answer_of_a_second_copy_is_not_a_third(fault_proxy, mount, tmp_path):
    """A unit moved back from completed/ asks for a second copy (NAME_1): its
    PUT's answer is lost, the retry meets that very object (412), and it is
    taken as the PUT done, not stored again as NAME_2."""
    m = mount(proxied(fault_proxy))
    name = "twice.bin"
    data = data_of(SMALL, 26)
    write_file(m.pending(name), data)
    m.wait_completed(name)
    second = f"{m.prefix}/{name}_1.tar.gz"
    fault_proxy.set_rules([{"fault": "drop-response", "first": 1,
                            "match": "^PUT " + re.escape(f"/{m.bucket}/{second}") + " "}])
    os.rename(m.completed(name), m.pending(name))
    wait_status(m.completed(name), "completed")
    assert get_xattr(m.completed(name), "user.mgmt.s3_object_key") == second
    assert sorted(m.client.list_objects(m.bucket, m.prefix + "/")) == sorted([m.key(name), second])
    assert [e[5] for e in fault_proxy.log().find("PUT", re.escape(second))] == ["200+RST", "412"]


def test_object_already_under_the_key(fault_proxy, mount, tmp_path):
    """The key already holds an object before the upload starts.  Our very
    bytes (what a kill -9 just after the server stored the PUT leaves, the
    record none the wiser): that object is the upload, nothing is sent
    again.  Other bytes: someone else's object, never overwritten; the
    upload goes to NAME_1."""
    name, other = "media.bin", "other.bin"
    data = data_of(SMALL, 22)
    # the bytes mgmtfs makes of the file: uploaded once through another mount
    first = mount(proxied(fault_proxy))
    write_file(first.pending(name), data)
    first.wait_completed(name)
    blob = first.client.get_object(first.bucket, first.key(name))

    m = mount(proxied(fault_proxy))
    m.client.put_object(m.bucket, m.key(name), blob)
    foreign = b"someone else's object"
    m.client.put_object(m.bucket, m.key(other), foreign)
    mark = fault_proxy.mark()
    write_file(m.pending(name), data)
    m.wait_completed(name)
    lg = fault_proxy.log(mark)
    assert [e[5] for e in lg.find("PUT", single_put(m, name))] == ["412"]
    done = m.completed(name)
    assert get_xattr(done, "user.mgmt.status") == "completed"
    assert get_xattr(done, "user.mgmt.s3_object_key") == m.key(name)
    assert get_xattr(done, "user.mgmt.checksum") == "sha256:" + hashlib.sha256(data).hexdigest()
    assert m.client.get_object(m.bucket, m.key(name)) == blob

    other_data = data_of(SMALL, 23)
    write_file(m.pending(other), other_data)
    m.wait_completed(other)
    taken = f"{m.prefix}/{other}_1.tar.gz"
    assert get_xattr(m.completed(other), "user.mgmt.s3_object_key") == taken
    assert m.client.get_object(m.bucket, m.key(other)) == foreign
    check_archive(m.client.get_object(m.bucket, taken), other, other_data, MODE, MTIME,
                  tmp_path / "check")
    assert sorted(m.client.list_objects(m.bucket, m.prefix + "/")) == \
        sorted([m.key(name), m.key(other), taken])


def diagnose(m, p, name):
    """What the CLI said, and what the records and mounts were then."""
    show = m.cli("show", f"pending/{name}")
    with open("/proc/self/mounts", encoding="utf-8") as f:
        mounts = [line for line in f if "mgmtfs" in line]
    return (f"{p.stderr.decode(errors='replace')}\n`show pending/{name}`: {show.returncode} "
            f"{show.stdout.decode(errors='replace')}{show.stderr.decode(errors='replace')}\n"
            f"mgmtfs mounts:\n{''.join(mounts)}")


@pytest.mark.parametrize("again", ["retry-command", "write-again"])
def test_403_on_a_part_fails_at_once_and_aborts(fault_proxy, mount, s3, tmp_path, again):
    """A 403 in the middle of a multipart upload: failed after one try of that
    part, the multipart upload aborted; `mgmtfs retry --failed`, or writing the
    file again, completes it."""
    m = mount(proxied(fault_proxy))
    fault_proxy.set_rules([{"fault": "status:403:SignatureDoesNotMatch",
                            "match": r"PUT .*\?partNumber=3&"}])
    name = "film.bin"
    data = data_of(MULTI_SIZE, 4)
    write_file(m.pending(name), data)

    wait_status(m.pending(name), "failed")
    error = get_xattr(m.pending(name), "user.mgmt.error")
    assert "403 SignatureDoesNotMatch: check the secret key for access key" in error
    assert s3.secret_key not in error
    lg = fault_proxy.log()
    assert len(lg.find("PUT", PART.format(3), 403)) == 1, "a 403 must not be retried"
    assert lg.find("DELETE", r"\?uploadId="), "the multipart upload was not aborted"
    assert uploads_under(m) == []
    assert m.client.list_objects(m.bucket, m.prefix + "/") == []

    fault_proxy.set_rules([])
    if again == "retry-command":
        p = m.cli("retry", "--failed")
        assert p.returncode == 0, p.stderr.decode(errors="replace")
    else:
        data = data_of(MULTI_SIZE, 7)
        write_file(m.pending(name), data)
        # the kernel sends the release after close() returned: until then it is failed
        deadline = time.monotonic() + WAIT
        while get_status(m.pending(name)) == "failed":
            assert time.monotonic() < deadline, "writing it again did not queue it"
            time.sleep(0.02)
    m.wait_completed(name)
    assert_uploaded_once(m, name, data, tmp_path / "check")
    assert get_xattr(m.completed(name), "user.mgmt.error") == "<ENODATA>"


def create_upload(m, key):
    """A multipart upload of @key made by another client: its upload id."""
    r = m.client.request("POST", m.bucket, key, query=[("uploads", "")])
    assert r.status == 200, (r.status, r.body[:300])
    return re.search(rb"<UploadId>([^<]+)</UploadId>", r.body).group(1).decode()


def test_first_attempt_leaves_other_uploads_of_its_key_alone(fault_proxy, mount, tmp_path):
    """A first attempt has no earlier upload of its own to clean up: it does
    not list the multipart uploads of its key, and one that another client
    has in progress there is still there when the file is completed."""
    m = mount(proxied(fault_proxy))
    name = "film.bin"
    theirs = create_upload(m, m.key(name))
    data = data_of(MULTI_SIZE, 11)
    write_file(m.pending(name), data)
    m.wait_completed(name)
    lg = fault_proxy.log()
    assert lg.find("GET", r"[?&]uploads") == [], "a first attempt listed the uploads of its key"
    assert uploads_under(m) == [(m.key(name), theirs)]
    m.client.request("DELETE", m.bucket, m.key(name), query=[("uploadId", theirs)])
    assert_uploaded_once(m, name, data, tmp_path / "check")


def test_retry_aborts_the_upload_a_failed_abort_left(fault_proxy, mount, tmp_path):
    """A 403 on a part fails the upload, and its abort fails too (the server
    refuses it): the multipart upload stays on the server.  The retry aborts
    it before its own, so nothing is left behind."""
    m = mount(proxied(fault_proxy))
    fault_proxy.set_rules([{"fault": "status:403:AccessDenied", "match": r"PUT .*\?partNumber=3&"},
                           {"fault": "status:403:AccessDenied", "match": r"^DELETE .*\?uploadId="}])
    name = "film.bin"
    data = data_of(MULTI_SIZE, 12)
    write_file(m.pending(name), data)
    wait_status(m.pending(name), "failed")
    left = uploads_under(m)
    assert len(left) == 1 and left[0][0] == m.key(name), left

    fault_proxy.set_rules([])
    p = m.cli("retry", "--failed")
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    m.wait_completed(name)
    lg = fault_proxy.log()
    assert lg.find("DELETE", r"\?uploadId=" + re.escape(left[0][1]) + "$", 204), \
        "the upload the failed abort left was not aborted by the retry"
    assert_uploaded_once(m, name, data, tmp_path / "check")


def test_server_that_stops_answering_is_named(fault_proxy, mount):
    """A server that takes every PUT and never answers (as a full Ceph
    cluster does): the unit fails after max_attempts with an error that
    points at the server's space and load, not at a dead endpoint."""
    m = mount(proxied(fault_proxy, stall_seconds=1, max_attempts=2, retry_max_seconds=1))
    name = "stuck.bin"
    fault_proxy.set_rules([{"fault": "stall:600", "match": single_put_line(m, name)}])
    write_file(m.pending(name), data_of(SMALL, 11))

    wait_status(m.pending(name), "failed")
    error = get_xattr(m.pending(name), "user.mgmt.error")
    assert f"{fault_proxy.endpoint} took the request and then stopped answering" in error
    assert "gave up after 2 attempts" in error
    assert "check that the server is not out of space or overloaded" in error
    assert len(fault_proxy.log().find("PUT", single_put(m, name), "GONE")) == 2


@pytest.mark.parametrize("memory,at_once", [("3M", 1), ("6M", 2)])
def test_buffer_memory_bounds_multipart_uploads_at_once(fault_proxy, mount, tmp_path,
                                                        memory, at_once):
    """Three multipart files dropped together with uploads=4: only as many
    multipart uploads start as buffer_memory holds ((parts_in_flight + 1) x
    part_size = 3M each); the others wait for a slot, and all arrive whole."""
    m = mount(proxied(fault_proxy, buffer_memory=memory, uploads=4, stall_seconds=3))
    # the first part 1 of each upload that fits is held until the daemon cuts it (3 s)
    fault_proxy.set_rules([{"fault": "stall:600", "match": r"PUT .*\?partNumber=1&",
                            "first": at_once}])
    names = [f"big{i}.bin" for i in range(3)]
    datas = [data_of(MULTI_SIZE, 20 + i) for i in range(3)]
    for name, data in zip(names, datas):
        write_file(m.pending(name), data)
    fault_proxy.wait_for("part 1 held", lambda lg: len(lg.held("PUT", PART.format(1))) >= at_once)
    time.sleep(1.5)  # time for every file to settle and start, if it could
    started = len(fault_proxy.log().find("POST", CREATE, 200))
    assert started == at_once, f"{started} multipart uploads at once, {at_once} fit"

    for name in names:
        m.wait_completed(name)
    assert len(fault_proxy.log().find("POST", CREATE, 200)) == 3
    for name, data in zip(names, datas):
        key = m.key(name)
        check_archive(m.client.get_object(m.bucket, key), name, data, MODE, MTIME,
                      tmp_path / name)
    assert uploads_under(m) == []


def test_directory_over_a_part_takes_a_multipart_share(fault_proxy, mount, tmp_path):
    """Directories whose files add up to less than a part but whose tar
    stream (a 512-byte header and padding per file) is more: each is a
    multipart upload and waits for a multipart share of buffer_memory like
    any other, instead of starting with one part's worth."""
    m = mount(proxied(fault_proxy, buffer_memory="3M", uploads=4, stall_seconds=3,
                      compression="tar", dir_settle="0.5"))
    fault_proxy.set_rules([{"fault": "stall:600", "match": r"PUT .*\?partNumber=1&",
                            "first": 1}])
    trees = {}
    for i in range(3):
        src = tmp_path / f"tree{i}"
        src.mkdir()
        trees[f"tree{i}"] = files = {f"f{k:03}": data_of(1000, 100 * i + k) for k in range(700)}
        assert sum(map(len, files.values())) < 1 << 20  # the data fits in a part
        for rel, data in files.items():
            (src / rel).write_bytes(data)
    for name in trees:
        subprocess.run(["cp", "-r", str(tmp_path / name), str(m.path("pending"))], check=True)
    fault_proxy.wait_for("part 1 held", lambda lg: lg.held("PUT", PART.format(1)))
    time.sleep(1.5)  # time for every tree to settle and start, if it could
    started = len(fault_proxy.log().find("POST", CREATE, 200))
    assert started == 1, f"{started} multipart uploads at once, 1 fits in 3M"

    for name, files in trees.items():
        m.wait_completed(name)
        key = get_xattr(m.completed(name), "user.mgmt.s3_object_key")
        assert key == f"{m.prefix}/{name}.tar", key
        with tarfile.open(fileobj=io.BytesIO(m.client.get_object(m.bucket, key))) as tf:
            got = {n[len(name) + 1:]: tf.extractfile(n).read()
                   for n in tf.getnames() if n != name}
        assert got == files, name
    assert len(fault_proxy.log().find("POST", CREATE, 200)) == 3
    assert uploads_under(m) == []


# answer held -> (file size, --match of its request line, target regex in the log)
HELD_ANSWERS = {
    "create": (MULTI_SIZE, r"^POST [^ ]*\?uploads=? ", CREATE),
    "complete": (MULTI_SIZE, r"^POST [^ ?]+\?uploadId=[^& ]+ ", COMPLETE),
    "put": (SMALL, None, None),
}


@pytest.mark.parametrize("answer", sorted(HELD_ANSWERS))
def test_write_while_the_server_answers(fault_proxy, mount, tmp_path, answer):
    """The file is written again after the server acted on a request of its
    upload (CreateMultipartUpload, CompleteMultipartUpload, the one PUT) but
    before its answer came.  The answer is still read, so the daemon knows
    what the server did and undoes it: the new multipart upload is aborted,
    the object made of the old content is deleted.  The new content then goes
    up under the name's own key, and nothing else is left on the server."""
    size, line, target = HELD_ANSWERS[answer]
    name = f"again-{answer}.bin"
    m = mount(proxied(fault_proxy))
    if answer == "put":
        line, target = single_put_line(m, name), single_put(m, name)
    fault_proxy.set_rules([{"fault": "hold-response:2", "match": line, "first": 1}])
    write_file(m.pending(name), data_of(size, 31))
    fault_proxy.wait_for(f"the answer of the {answer} held", lambda lg: lg.held(None, target))

    final = data_of(SMALL + 777, 32)  # one PUT: nothing of the first try is met again
    write_file(m.pending(name), final)
    m.wait_completed(name)
    lg = fault_proxy.log()
    held = [e for e in lg.final() if e[2].startswith("hold-response")]
    assert [e[5] for e in held] == ["200"], f"the held answer was not read: {held}"
    if answer == "create":
        assert lg.find("DELETE", r"\?uploadId=", 204), "the upload made first was not aborted"
    else:
        key = "^" + re.escape(f"/{m.bucket}/{m.key(name)}") + "$"
        assert lg.find("DELETE", key, 204), "the object of the old content was not deleted"
    assert_uploaded_once(m, name, final, tmp_path / "check")


def test_opened_while_the_server_answers(fault_proxy, mount, tmp_path):
    """The file is only opened for writing while its complete is answered,
    and closed unchanged.  With passthrough the daemon cannot tell an open
    from a write, so this is a change: the object made is deleted and the
    file goes up again, under the name's own key, not as NAME_1 beside an
    object no record names."""
    name = "opened.bin"
    m = mount(proxied(fault_proxy))
    data = data_of(MULTI_SIZE, 33)
    fault_proxy.set_rules([{"fault": "hold-response:2", "match": HELD_ANSWERS["complete"][1],
                            "first": 1}])
    write_file(m.pending(name), data)
    fault_proxy.wait_for("the answer of the complete held", lambda lg: lg.held(None, COMPLETE))
    fd = os.open(m.pending(name), os.O_WRONLY)
    try:
        fault_proxy.wait_for("the held answer read", lambda lg: lg.find(None, COMPLETE, 200))
        time.sleep(0.5)
    finally:
        os.close(fd)
    m.wait_completed(name)
    assert_uploaded_once(m, name, data, tmp_path / "check")


def upload_held_at_part_2(fault_proxy, mount, name, seed):
    """Mount, drop pending/@name (multipart) and hold its part 2 on the wire."""
    m = mount(proxied(fault_proxy))
    fault_proxy.set_rules([{"fault": "stall:600", "match": r"PUT .*\?partNumber=2&",
                            "first": 1}])
    data = data_of(MULTI_SIZE, seed)
    write_file(m.pending(name), data)
    fault_proxy.wait_for("part 2 held", lambda lg: lg.held("PUT", PART.format(2)))
    return m, data


def test_write_during_upload_uploads_final_content(fault_proxy, mount, tmp_path):
    """A write into the file while its part 2 is on the wire: the upload is
    cut and aborted, and the object holds only the content after the write."""
    name = "growing.bin"
    m, first = upload_held_at_part_2(fault_proxy, mount, name, 5)
    assert get_status(m.pending(name)) == "uploading"

    final = data_of(1 << 20, 6) + first[1 << 20:] + b"appended while uploading"
    with open(m.pending(name), "r+b") as f:  # overwrite the start, append at the end
        f.write(final[:1 << 20])
        f.seek(len(first))
        f.write(final[len(first):])
    os.utime(m.pending(name), (MTIME, MTIME))

    m.wait_completed(name)
    lg = fault_proxy.log()
    assert lg.find("PUT", PART.format(2), "GONE"), "the held part was not cut"
    assert lg.find("DELETE", r"\?uploadId=", 204), "the first multipart upload was not aborted"
    assert len(lg.find("POST", COMPLETE, 200)) == 1
    assert_uploaded_once(m, name, final, tmp_path / "check", mode=MODE)


@pytest.mark.parametrize("change", ["unlink", "rename", "truncate"])
def test_change_during_upload(fault_proxy, mount, tmp_path, change):
    """Unlink, rename or truncate of a unit while its part 2 is on the wire:
    the upload is cut and its multipart upload aborted; nothing of the old
    content stays on the server; a renamed or truncated file goes up as it
    is now."""
    name = "moving.bin"
    m, data = upload_held_at_part_2(fault_proxy, mount, name, 8)

    if change == "unlink":
        os.unlink(m.pending(name))
        deadline = time.monotonic() + WAIT
        while uploads_under(m) or json.loads(m.cli("list", "--json").stdout):
            assert time.monotonic() < deadline, m.log()
            time.sleep(0.1)
        assert m.client.list_objects(m.bucket, m.prefix + "/") == []
        return
    if change == "rename":
        os.rename(m.pending(name), m.pending("moved.bin"))
        name = "moved.bin"
    else:
        os.truncate(m.pending(name), 3 << 20)
        os.utime(m.pending(name), (MTIME, MTIME))
        data = data[:3 << 20]
    m.wait_completed(name)
    lg = fault_proxy.log()
    assert lg.find("DELETE", r"\?uploadId=", 204), "the first multipart upload was not aborted"
    assert_uploaded_once(m, name, data, tmp_path / "check")
    assert [r["original_path"] for r in json.loads(m.cli("list", "--json").stdout)] == \
        ["pending/" + name]


def wait_refused(m, name, timeout=WAIT):
    """Wait until the daemon has dealt with the failed write of pending/@name:
    its record says failed, or the daemon said it will not upload it."""
    deadline = time.monotonic() + timeout
    while True:
        status = get_status(m.pending(name))
        if status == "failed" or f"not uploading 'pending/{name}'" in m.log():
            return get_status(m.pending(name))
        assert status in (None, "queued"), f"pending/{name} is {status} after a failed write"
        assert time.monotonic() < deadline, f"pending/{name}: the failed write was never noticed"
        time.sleep(0.05)


@pytest.fixture
def small_fs(workdir, request):
    """An 8 MiB tmpfs (torn down after the mount: ask for it first)."""
    d = workdir / f"tmpfs-{request.node.name}"
    d.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    yield d
    if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_enospc_fails_writer_and_uploads_nothing(small_fs, fault_proxy, mount, tmp_path):
    local = small_fs / "local"
    m = mount(proxied(fault_proxy, local_dir=local))
    m.local = local  # for `mgmtfs list --local-dir`
    name = "huge.bin"

    written, err = write_until_error(m.pending(name), limit=64 << 20)

    assert err is not None, f"wrote {written} bytes into an 8 MiB filesystem without error"
    assert err.errno == errno.ENOSPC, err
    # The record may be missing (the record database is on the full disk
    # too); if there is one, it says failed, and to free space.
    status = wait_refused(m, name)
    if status is not None:
        assert status == "failed"
        error = get_xattr(m.pending(name), "user.mgmt.error")
        assert "free space" in error, error
    assert m.client.list_objects(m.bucket, m.prefix + "/") == []
    assert uploads_under(m) == []

    # space freed: the next file goes up, and still nothing of the failed one
    os.unlink(m.pending(name))
    data = data_of(SMALL, 8)
    write_file(m.pending("after.bin"), data)
    m.wait_completed("after.bin")
    assert_uploaded_once(m, "after.bin", data, tmp_path / "check")
    assert not fault_proxy.log().find(None, "/" + name + r"\.tar\.gz"), \
        "a request for the file that hit ENOSPC reached the server"


def records_elsewhere(small_fs, workdir, request):
    """local_dir on @small_fs with its record database on another filesystem
    (so a full disk fails the files, not the records)."""
    local = small_fs / "local"
    db = workdir / f"db-{request.node.name}"
    db.mkdir()
    local.mkdir()
    (local / ".mgmt").symlink_to(db)
    return local


def test_enospc_in_a_directory_stays_failed(small_fs, fault_proxy, mount, workdir, request):
    """A file of a directory unit hits ENOSPC; space comes back and another
    file of the directory is written whole: the directory still holds an
    incomplete file, so it stays failed and nothing of it is uploaded."""
    local = records_elsewhere(small_fs, workdir, request)
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * (2 << 20))
    m = mount(proxied(fault_proxy, local_dir=local, dir_settle="0.5"))
    m.local = local
    os.mkdir(m.pending("album"))
    written, err = write_until_error(m.pending("album") / "big.bin", limit=64 << 20)
    assert err is not None and err.errno == errno.ENOSPC, (written, err)
    wait_status(m.pending("album"), "failed")
    filler.unlink()
    write_file(m.pending("album") / "small.txt", b"whole\n")
    time.sleep(3)  # dir_settle is 0.5 s: a wrongly queued upload would have started
    assert get_status(m.pending("album")) == "failed"
    error = get_xattr(m.pending("album"), "user.mgmt.error")
    assert "move the directory out of pending/ and back" in error, error
    assert m.client.list_objects(m.bucket, m.prefix + "/") == []
    assert not fault_proxy.log().find("PUT", "/album"), "the incomplete directory was uploaded"


def test_enospc_during_upload_stays_failed(small_fs, fault_proxy, mount, workdir, request):
    """A file rewritten while its upload is in flight, and the rewrite hits
    ENOSPC: the upload is cancelled and the truncated file is never uploaded,
    neither by the cancelled upload's requeue nor by `mgmtfs retry --failed`."""
    local = records_elsewhere(small_fs, workdir, request)
    m = mount(proxied(fault_proxy, local_dir=local))
    m.local = local
    name = "rewritten.bin"
    fault_proxy.set_rules([{"fault": "stall:600", "match": single_put_line(m, name),
                            "first": 1}])
    write_file(m.pending(name), data_of(SMALL, 21))
    fault_proxy.wait_for("the PUT held", lambda lg: lg.held("PUT", single_put(m, name)))

    written, err = write_until_error(m.pending(name), limit=64 << 20)
    assert err is not None and err.errno == errno.ENOSPC, (written, err)
    wait_status(m.pending(name), "failed")  # it was uploading: wait_refused would not do

    for retry in (False, True):
        if retry:
            out = m.cli("retry", "--failed").stderr.decode()
            assert "write it again" in out, out
        time.sleep(3)  # settle is 0.2 s here: a wrongly queued upload would have started
        assert get_status(m.pending(name)) == "failed", f"after retry: {retry}"
        assert "free space" in get_xattr(m.pending(name), "user.mgmt.error")
        assert m.client.list_objects(m.bucket, m.prefix + "/") == []
        assert not fault_proxy.log().find("PUT", single_put(m, name), 200), \
            "the file that hit ENOSPC was uploaded"
