"""`mgmtfs list` and `mgmtfs show` against the records of a live mount."""
import json
import os
import re
import subprocess

import pytest

from helpers import getfattr, write_source

FIELDS = ("id", "status", "original_path", "completed_path", "upload_timestamp",
          "compression_type", "s3_bucket", "s3_object_key", "etag", "original_size",
          "compressed_size", "checksum")


def assert_matches_xattrs(record, path):
    """A JSON record holds the same fields, same values, as the xattrs of @path."""
    fields = getfattr(path)
    got = {k: None if record.get(k) is None else str(record[k]) for k in FIELDS}
    assert got == {k: fields.get(f"user.mgmt.{k}") for k in FIELDS}


def run_json(m, *args):
    p = m.cli(*args, "--json")
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return json.loads(p.stdout)


def upload_all(mount, tmp_path, names):
    m = mount()
    for name in names:  # one after the other, so "newest" is well defined
        m.drop(write_source(tmp_path, name, os.fsencode(f"content of {name}\n")))
        m.wait_completed(name)
    return m


def test_list_json_newest_first(mount, tmp_path):
    m = upload_all(mount, tmp_path, ["first.txt", "second.txt"])
    records = run_json(m, "list")
    assert [r["original_path"] for r in records] == ["pending/second.txt", "pending/first.txt"]
    for r in records:
        assert_matches_xattrs(r, m.path(r["completed_path"]))
    completed = run_json(m, "list", "--status", "completed")
    assert [r["id"] for r in completed] == [r["id"] for r in records]
    assert run_json(m, "list", "--status", "failed") == []


def test_list_json_non_utf8_name(mount, tmp_path):
    """A file name that is not UTF-8 still gives valid UTF-8 JSON, and the
    name comes back byte for byte (\\udcXX, Python's surrogateescape)."""
    raw = b"caf\xe9-\xc3\xa9-\xff.txt"
    name = os.fsdecode(raw)
    m = upload_all(mount, tmp_path, [name])
    p = m.cli("list", "--json")
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    records = json.loads(p.stdout.decode("utf-8"))  # strict: raises on a bad byte
    assert [os.fsencode(r["original_path"]) for r in records] == [b"pending/" + raw]
    assert os.fsencode(records[0]["completed_path"]) == b"completed/" + raw
    # S3 keys are UTF-8: each stray byte became U+FFFD
    key = records[0]["s3_object_key"]
    assert key == m.prefix + "/caf\ufffd-\u00e9-\ufffd.txt.tar.gz", key
    assert m.client.head_object(m.bucket, key) is not None


SHOW_ARGS = {
    "mount-path": lambda m, done: str(done),  # what a user would paste
    "relative-path": lambda m, done: "completed/shown.txt",  # as in the record
    "id": lambda m, done: getfattr(done)["user.mgmt.id"],
}


@pytest.mark.parametrize("by", list(SHOW_ARGS))
def test_show_json(mount, tmp_path, by):
    m = upload_all(mount, tmp_path, ["shown.txt"])
    done = m.completed("shown.txt")
    assert_matches_xattrs(run_json(m, "show", SHOW_ARGS[by](m, done)), done)


def test_show_unknown_id_fails(mount):
    m = mount()
    p = m.cli("show", "987654321")
    assert p.returncode != 0
    assert len(p.stderr.decode().strip().splitlines()) == 1, p.stderr


@pytest.mark.parametrize("flag,pattern", [("--help", r"bucket"), ("--version", r"\d+\.\d+")],
                         ids=["help", "version"])
def test_help_and_version(mgmtfs_bin, flag, pattern):
    p = subprocess.run([str(mgmtfs_bin), flag], capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert re.search(pattern, (p.stdout + p.stderr).decode(errors="replace"))
