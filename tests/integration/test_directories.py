"""Directory units: `cp -r` into pending/ uploads one tar.gz of the whole tree."""
import gzip
import io
import os
import subprocess
import tarfile

from helpers import sha256

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
