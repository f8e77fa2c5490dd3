"""`mgmtfs rebuild`: the records made again from the bucket's object metadata.

A mount uploads a small file (one PUT: the sha256 is in the metadata) and a
file needing a multipart upload (the sha256 is added as a tag afterwards);
then a fresh local_dir, as on a new host, gets the same records back from
the bucket alone.  A foreign object under the prefix is left out, and a
second rebuild makes nothing twice.
"""
import json
import os
import subprocess
import time

from helpers import get_xattr, parse_utc, sha256, tail, write_source

# what the bucket can tell: everything but the ids and the local paths
SAME = ("status", "original_path", "compression_type", "s3_bucket", "s3_object_key", "etag",
        "original_size", "compressed_size", "checksum")


def rebuild(m, local, *args):
    env = dict(m.env, MGMT_BUCKET=m.bucket, AWS_ENDPOINT_URL=m.options["endpoint"],
               AWS_REGION=m.options["region"])
    p = subprocess.run([str(m.binary), "rebuild", "--prefix", m.prefix, "--local-dir",
                        str(local), *args], env=env, capture_output=True, timeout=120)
    assert p.returncode == 0, tail(p.stderr.decode(errors="replace"))
    return p


def listed(m, local):
    """`mgmtfs list --json`: the records, newest first."""
    p = subprocess.run([str(m.binary), "list", "--json", "--local-dir", str(local)],
                       env=m.env, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def records(m, local):
    return {r["s3_object_key"]: r for r in listed(m, local)}


def test_rebuild_from_bucket(mount, tmp_path, s3):
    m = mount({"part_size": "1M"})
    small = b"a small file, one PUT\n" * 10
    big = os.urandom(3 * 1024 * 1024 + 12345)  # does not compress: 4 parts of 1 MiB
    for name, data in (("small.txt", small), ("big.bin", big)):
        m.drop(write_source(tmp_path, name, data))
        m.wait_completed(name)
        time.sleep(1.1)  # Last-Modified has whole seconds: the two uploads differ
    before = records(m, m.local)
    assert len(before) == 2
    big_rec = before[m.key("big.bin")]
    assert big_rec["etag"].endswith("-4"), big_rec["etag"]  # multipart indeed
    assert big_rec["checksum"] == f"sha256:{sha256(big)}"
    s3.client.put_object(m.bucket, f"{m.prefix}/not-ours.txt", b"put by someone else")

    fresh = tmp_path / "new-host"
    p = rebuild(m, fresh, "--json")
    assert json.loads(p.stdout) == {"objects": 3, "made": 2, "already": 0, "not_mgmtfs": 1,
                                    "in_pending": 0}
    after = records(m, fresh)
    assert set(after) == set(before)
    # nothing of them is on this host's disk
    assert [r.get("completed_path", "") for r in after.values()] == ["", ""]
    # ids follow the upload times (by key, big.bin would get the older id)
    assert [r["original_path"] for r in listed(m, fresh)] == ["pending/big.bin",
                                                             "pending/small.txt"]
    for key, want in before.items():
        got = after[key]
        assert {f: got[f] for f in SAME} == {f: want[f] for f in SAME}, key
        # the server's Last-Modified against the daemon's own clock
        assert abs(parse_utc(got["upload_timestamp"]) -
                   parse_utc(want["upload_timestamp"])) <= 5
    assert after[m.key("small.txt")]["checksum"] == f"sha256:{sha256(small)}"

    again = json.loads(rebuild(m, fresh, "--json").stdout)
    assert (again["made"], again["already"], again["not_mgmtfs"]) == (0, 2, 1)
    assert len(records(m, fresh)) == 2
    # on the host that has the records, nothing is made either
    assert json.loads(rebuild(m, m.local, "--json").stdout)["made"] == 0


def test_rebuild_needs_a_bucket(mount, tmp_path):
    m = mount()
    env = dict(m.env, AWS_ENDPOINT_URL=m.options["endpoint"])
    p = subprocess.run([str(m.binary), "rebuild", "--local-dir", str(tmp_path / "x")], env=env,
                       capture_output=True, timeout=60)
    err = p.stderr.decode().strip()
    assert p.returncode == 1 and len(err.splitlines()) == 1, err
    assert "no bucket: give --bucket NAME or set MGMT_BUCKET" in err


def test_rebuild_lost_database_finds_local_copies(mount, tmp_path):
    """The records lost but the disk kept (LOCAL_DIR/.mgmt removed): rebuild
    gives each record back its completed_path, so completed/ shows the
    xattrs again; a taken name (a_1.txt) and a directory are matched too."""
    m = mount({"dir_settle": "0.3"})
    for i, data in enumerate((b"first a.txt\n", b"the second a.txt, longer\n")):
        (tmp_path / f"v{i}").mkdir()
        m.drop(write_source(tmp_path / f"v{i}", "a.txt", data))
        m.wait_completed("a.txt", "a.txt" if i == 0 else "a_1.txt")
        time.sleep(1.1)  # Last-Modified has whole seconds: keep the upload order
    album = tmp_path / "src" / "album"
    album.mkdir(parents=True)
    (album / "one.txt").write_bytes(b"1" * 1000)
    (album / "two.txt").write_bytes(b"2" * 2345)
    subprocess.run(["cp", "-r", str(album), str(m.pending("album"))], check=True)
    m.wait_completed("album")
    before = records(m, m.local)
    assert sorted(r["completed_path"] for r in before.values()) == [
        "completed/a.txt", "completed/a_1.txt", "completed/album"]

    assert not m.stop()
    subprocess.run(["rm", "-rf", str(m.local / ".mgmt")], check=True)
    assert json.loads(rebuild(m, m.local, "--json").stdout)["made"] == 3
    after = records(m, m.local)
    assert set(after) == set(before)
    for key, want in before.items():
        assert (after[key].get("completed_path"), after[key]["original_size"]) == \
            (want["completed_path"], want["original_size"]), key

    # mounted again, completed/ shows the rebuilt records
    m.start()
    assert get_xattr(m.completed("a_1.txt"), "user.mgmt.checksum") == \
        f"sha256:{sha256(b'the second a.txt, longer' + bytes([10]))}"
    assert get_xattr(m.completed("album"), "user.mgmt.status") == "completed"
