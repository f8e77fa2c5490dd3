"""Fixtures: one real Ceph RGW per session (scripts/s3-server), one real mount per test.

env: MGMTFS_BIN       the daemon under test (default build/mgmtfs)
     MGMTFS_TEST_S3_DIR  use the s3-server already running in this dir
                      (scripts/test shares one between its runs) instead of
                      starting one; its bucket and keys come from DIR/env
     MGMTFS_TEST_TMPDIR  where mounts and backing dirs go (default /var/tmp:
                      /tmp may be a tmpfs without user.* xattrs)
     MGMTFS_TEST_TIMEOUT seconds before a mount's daemon is killed (300)
"""
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "tools"))

from helpers import Mount  # noqa: E402
from s3client import S3Client, read_env_file  # noqa: E402

MGMTFS_BIN = Path(os.environ.get("MGMTFS_BIN", ROOT / "build" / "mgmtfs")).resolve()
S3_SERVER = ROOT / "scripts" / "s3-server"
SESSION = uuid.uuid4().hex[:8]


def pytest_collection_modifyitems(config, items):
    if not os.path.exists("/dev/fuse"):
        skip = pytest.mark.skip(reason="/dev/fuse is missing: no FUSE here")
        for item in items:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(scope="session")
def mgmtfs_bin():
    if not os.access(MGMTFS_BIN, os.X_OK):
        pytest.fail(f"{MGMTFS_BIN} is not built (set MGMTFS_BIN or build it)")
    return MGMTFS_BIN


@pytest.fixture(scope="session")
def workdir():
    base = os.environ.get("MGMTFS_TEST_TMPDIR", "/var/tmp")
    d = Path(tempfile.mkdtemp(prefix=f"mgmtfs-it.{SESSION}.", dir=base))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _server(env_file):
    env = read_env_file(env_file)
    return SimpleNamespace(
        endpoint=env["S3_ENDPOINT"], access_key=env["AWS_ACCESS_KEY_ID"],
        secret_key=env["AWS_SECRET_ACCESS_KEY"], region=env.get("AWS_REGION", "us-east-1"),
        bucket=env["BUCKET"], client=S3Client.from_env_file(env_file),
        kms_key_id=env.get("KMS_KEY_ID") or None)  # SSE-KMS, if started with one


@pytest.fixture(scope="session")
def s3(workdir):
    """A real S3 server (Ceph RGW on 127.0.0.1) with an empty bucket."""
    shared = os.environ.get("MGMTFS_TEST_S3_DIR")
    if shared:
        yield _server(Path(shared) / "env")
        return
    d = workdir / "s3"
    env = dict(os.environ, PORT="0", MIN_PART_SIZE="1048576", BUCKET="mgmt-it", STORE_GIB="8",
               KMS_KEY_ID="mgmtfs-test")
    p = subprocess.run([str(S3_SERVER), "start", str(d)], env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        pytest.fail(f"scripts/s3-server start failed:\n{p.stderr}")
    try:
        yield _server(d / "env")
    finally:
        subprocess.run([str(S3_SERVER), "purge", str(d)], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=120)


_counter = itertools.count(1)


@pytest.fixture
def mount(mgmtfs_bin, s3, workdir, request):
    """mount(options=None, env=None) -> a started Mount with a unique prefix.

    Teardown unmounts every mount made, waits for each daemon to exit, and
    fails the test on sanitizer reports or an unclean exit.
    """
    made = []

    def factory(options=None, env=None):
        n = next(_counter)
        base = workdir / f"m{n:03d}"
        m = Mount(mgmtfs_bin, s3, base, f"it-{SESSION}-{n:03d}", options, env)
        made.append(m)
        return m.start()

    yield factory
    errors = []
    for m in reversed(made):
        errors += m.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for m in made:
            print(f"--- daemon log of {m.mnt}:\n{m.log()}")
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)
