"""A mount that cannot reach its bucket fails at once, in one line, and mounts nothing."""
import re
import socket
import subprocess
import uuid

import pytest

from helpers import Mount, is_mounted, sanitizer_findings


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# cause -> (options(s3), env(s3), what the error line must mention)
CAUSES = {
    "wrong-secret": (lambda s3: {},
                     lambda s3: {"AWS_SECRET_ACCESS_KEY": "Wr0ng" + s3.secret_key[::-1]},
                     r"SignatureDoesNotMatch|secret|403"),
    "missing-bucket": (lambda s3: {"bucket": f"no-such-bucket-{uuid.uuid4().hex[:8]}"},
                       lambda s3: {},
                       r"NoSuchBucket|does not exist|404"),
    "unreachable-endpoint": (lambda s3: {"endpoint": f"http://127.0.0.1:{closed_port()}"},
                             lambda s3: {},
                             r"connect"),
}


@pytest.mark.parametrize("foreground", [True, False], ids=["fg", "bg"])
@pytest.mark.parametrize("cause", list(CAUSES))
def test_mount_fails_cleanly(mgmtfs_bin, s3, workdir, cause, foreground):
    options, env, pattern = CAUSES[cause]
    tag = f"{cause}-{'fg' if foreground else 'bg'}-{uuid.uuid4().hex[:6]}"
    m = Mount(mgmtfs_bin, s3, workdir / tag, "it-" + tag, options(s3), env(s3))
    m.mnt.mkdir(parents=True)
    m.local.mkdir()
    try:
        p = subprocess.run(m.argv(foreground), env=m.env, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=90)
        mounted = is_mounted(m.mnt)
    finally:
        if is_mounted(m.mnt):
            subprocess.run(["fusermount3", "-uz", str(m.mnt)], capture_output=True)
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")

    assert not sanitizer_findings(out + err), err
    assert p.returncode != 0
    assert not mounted
    for secret in {s3.secret_key, m.env["AWS_SECRET_ACCESS_KEY"]}:
        assert secret not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("mgmtfs: error: ")]
    assert len(errors) == 1, err
    assert re.search(pattern, errors[0], re.IGNORECASE), errors[0]
    if not foreground:  # logs go to syslog: the error is all the user sees
        assert lines == errors
