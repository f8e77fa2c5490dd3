"""The core path: cp into pending/ -> tar.gz in the bucket -> completed/, with its record."""
import os
import time

import pytest

from helpers import check_archive, getfattr, parse_utc, sha256, write_source

MODE, MTIME = 0o640, 1700000000
MIB = 1024 * 1024

# case -> (name, maker); contents are made in the test, not at collection.
CASES = {
    "small-text": ("notes.txt", lambda: b"hello, mgmtfs\n" * 300),
    "one-byte": ("one.bin", lambda: b"x"),
    "empty": ("empty.dat", lambda: b""),
    "40MiB-multipart": ("big.bin", lambda: os.urandom(40 * MIB)),
    "unicode-name": ("\u00e9t\u00e9 \u00fc 1.txt", lambda: "d\u00e9j\u00e0 vu\n".encode() * 50),
}


def upload(mount, tmp_path, case):
    """Drop the case's file with cp and wait for it to complete; (mount, name, data)."""
    name, make = CASES[case]
    data = make()
    m = mount()
    m.drop(write_source(tmp_path, name, data, MODE, MTIME))
    m.wait_completed(name)
    return m, name, data


@pytest.mark.parametrize("case", list(CASES))
def test_upload_roundtrip(mount, tmp_path, case):
    m, name, data = upload(mount, tmp_path, case)

    done = m.completed(name)
    assert sha256(done.read_bytes()) == sha256(data)
    st = os.stat(done)
    assert st.st_mode & 0o7777 == MODE and int(st.st_mtime) == MTIME
    assert not m.pending(name).exists()
    assert name not in os.listdir(m.path("pending"))
    assert os.listdir(m.path("completed")) == [name]

    blob = m.client.get_object(m.bucket, m.key(name))
    check_archive(blob, name, data, MODE, MTIME, tmp_path / "untar")
    assert m.client.list_objects(m.bucket, m.prefix + "/") == [m.key(name)]
    assert m.client.list_multipart_uploads(m.bucket, m.prefix + "/") == []


@pytest.mark.parametrize("case", ["small-text", "40MiB-multipart", "unicode-name"])
def test_getfattr_shows_record(mount, tmp_path, case):
    since = time.time()
    m, name, data = upload(mount, tmp_path, case)

    fields = getfattr(m.completed(name))
    head = m.client.head_object(m.bucket, m.key(name))
    assert head is not None, f"no object at {m.key(name)}"
    expect = {
        "status": "completed",
        "original_path": f"pending/{name}",
        "completed_path": f"completed/{name}",
        "s3_bucket": m.bucket,
        "s3_object_key": m.key(name),
        "compression_type": "tar.gz",
        "original_size": str(len(data)),
        "compressed_size": head["content-length"],
        "checksum": f"sha256:{sha256(data)}",
        "etag": head["etag"].strip('"'),
    }
    got = {k: fields.get(f"user.mgmt.{k}") for k in expect}
    assert got == expect
    assert fields.get("user.mgmt.id", "").isdigit()
    finished = parse_utc(fields["user.mgmt.upload_timestamp"])
    started = parse_utc(fields["user.mgmt.started_at"])
    assert since - 120 <= started <= finished <= time.time() + 120


def test_same_name_twice_gets_suffixes(mount, tmp_path):
    m = mount()
    first, second = b"first version\n" * 10, b"second, different version\n" * 10
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    m.drop(write_source(tmp_path / "a", "dup.txt", first, MODE, MTIME))
    m.wait_completed("dup.txt")
    m.drop(write_source(tmp_path / "b", "dup.txt", second, MODE, MTIME + 60))
    m.wait_completed("dup.txt", "dup_1.txt")

    assert m.completed("dup.txt").read_bytes() == first
    assert m.completed("dup_1.txt").read_bytes() == second
    key1, key2 = m.key("dup.txt"), f"{m.prefix}/dup.txt_1.tar.gz"
    assert getfattr(m.completed("dup.txt"))["user.mgmt.s3_object_key"] == key1
    fields = getfattr(m.completed("dup_1.txt"))
    assert fields["user.mgmt.s3_object_key"] == key2
    assert fields["user.mgmt.completed_path"] == "completed/dup_1.txt"
    assert fields["user.mgmt.original_path"] == "pending/dup.txt"
    assert sorted(m.client.list_objects(m.bucket, m.prefix + "/")) == sorted([key1, key2])
    check_archive(m.client.get_object(m.bucket, key1), "dup.txt", first, MODE, MTIME,
                  tmp_path / "x1")
    check_archive(m.client.get_object(m.bucket, key2), "dup.txt", second, MODE, MTIME + 60,
                  tmp_path / "x2")


def test_one_put_buffers_are_reused_intact(mount, tmp_path):
    """A small file's one PUT is read into a buffer kept for the next file (256 KiB,
    for files up to ~188 KiB; larger ones get their own): each object holds its own
    file's bytes and no byte of the file before it, whatever the order of sizes."""
    m = mount({"compression": "none"})
    for i, size in enumerate([200_000, 188_000, 187_999, 150_000, 4097, 1, 0, 65_536]):
        name = f"f{i}-{size}.bin"
        data = os.urandom(size)
        m.drop(write_source(tmp_path, name, data, MODE, MTIME))
        m.wait_completed(name)
        blob = m.client.get_object(m.bucket, f"{m.prefix}/{name}")
        assert len(blob) == size and sha256(blob) == sha256(data), name
        assert getfattr(m.completed(name))["user.mgmt.checksum"] == "sha256:" + sha256(data)


@pytest.mark.parametrize("size", [300 << 10, 5 * MIB + 77], ids=["one-put", "multipart"])
def test_sse_kms_encrypts_the_object(mount, s3, tmp_path, size):
    """sse_kms_key_id=ID: the object is stored encrypted with that KMS key (the
    RGW's "testing" KMS backend), its bytes read back whole, and the answers,
    which say aws:kms, are not taken for damage."""
    if not s3.kms_key_id:
        pytest.skip("this S3 server was started without KMS_KEY_ID")
    name = "secret.bin"
    data = os.urandom(size)
    m = mount({"sse_kms_key_id": s3.kms_key_id, "part_size": "1M"})
    m.drop(write_source(tmp_path, name, data, MODE, MTIME))
    m.wait_completed(name)

    h = m.client.head_object(m.bucket, m.key(name))
    assert h.get("x-amz-server-side-encryption") == "aws:kms", h
    assert h.get("x-amz-server-side-encryption-aws-kms-key-id") == s3.kms_key_id, h
    check_archive(m.client.get_object(m.bucket, m.key(name)), name, data, MODE, MTIME,
                  tmp_path / "check")
    assert getfattr(m.completed(name))["user.mgmt.checksum"] == "sha256:" + sha256(data)
