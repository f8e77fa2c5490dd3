"""Bad input: each case exits non-zero with one line `mgmtfs: error: ...` that
holds the phrase the code gives for it, mounts nothing, and never prints a
secret."""
import os
import socket
import subprocess
import uuid

import pytest

from helpers import daemon_env, format_options, is_mounted, sanitizer_findings

WRONG_SECRET = "Wr0ngSecretKeyThatMustNeverBePrinted0123"


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Case:
    """A command line made from a scratch directory: argv, env, expected phrase."""

    def __init__(self, s3, binary, base):
        self.s3, self.binary, self.base = s3, str(binary), base
        self.mnt, self.local = base / "mnt", base / "local"
        self.mnt.mkdir(parents=True)
        self.options = {"bucket": s3.bucket, "prefix": f"bad-{base.name}",
                        "local_dir": str(self.local), "endpoint": s3.endpoint,
                        "settle": "0.2"}
        self.env = daemon_env(base, {"AWS_ACCESS_KEY_ID": s3.access_key,
                                     "AWS_SECRET_ACCESS_KEY": s3.secret_key})
        self.extra_args = []
        self.mountpoint = str(self.mnt)

    def mount_argv(self):
        mp = [self.mountpoint] if self.mountpoint else []
        return [self.binary, *mp, "-f", "-o", format_options(self.options), *self.extra_args]

    def cli_argv(self, *args):
        return [self.binary, *args]

    def write_credentials(self, mode):
        d = self.base / ".aws"
        d.mkdir(exist_ok=True)
        f = d / "credentials"
        f.write_text(f"[default]\naws_access_key_id = {self.s3.access_key}\n"
                     f"aws_secret_access_key = {self.s3.secret_key}\n")
        os.chmod(f, mode)
        del self.env["AWS_ACCESS_KEY_ID"], self.env["AWS_SECRET_ACCESS_KEY"]
        return f


def opt(**kv):
    """A mount with these -o options changed (None: left out)."""
    def build(c):
        for k, v in kv.items():
            if v is None:
                c.options.pop(k, None)
            else:
                c.options[k] = v
        return c.mount_argv(), None
    return build


def env(**kv):
    def build(c):
        c.env.update(kv)
        return c.mount_argv(), None
    return build


def no_mountpoint(c):
    c.mountpoint = None
    return c.mount_argv(), None


def mountpoint_is_file(c):
    f = c.base / "a-file"
    f.write_text("not a directory\n")
    c.mountpoint = str(f)
    return c.mount_argv(), f"mountpoint '{f}' is not a directory: mkdir -p it first"


def two_mountpoints(c):
    c.extra_args = [str(c.base)]
    return c.mount_argv(), f"unexpected argument '{c.base}': give one MOUNTPOINT"


def unknown_flag(c):
    c.extra_args = ["--frobnicate"]
    return c.mount_argv(), None


def wrong_secret(c):
    c.env["AWS_SECRET_ACCESS_KEY"] = WRONG_SECRET
    return c.mount_argv(), \
        f"403 SignatureDoesNotMatch: check the secret key for access key {c.s3.access_key}"


def unknown_access_key(c):
    c.env["AWS_ACCESS_KEY_ID"] = "NOSUCHKEY0000000000X"
    return c.mount_argv(), \
        "403 InvalidAccessKeyId: the access key NOSUCHKEY0000000000X is not known"


def missing_bucket(c):
    name = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    c.options["bucket"] = name
    return c.mount_argv(), f"NoSuchBucket: bucket '{name}' does not exist"


def closed_endpoint(c):
    url = f"http://127.0.0.1:{closed_port()}"
    c.options["endpoint"] = url
    return c.mount_argv(), f"cannot connect to {url}"


def no_credentials(c):
    del c.env["AWS_ACCESS_KEY_ID"], c.env["AWS_SECRET_ACCESS_KEY"]
    return c.mount_argv(), "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"


def credentials_644(c):
    f = c.write_credentials(0o644)
    return c.mount_argv(), f"is readable by others (mode 644): run chmod 600 '{f}'"


def local_dir_under_file(c):
    f = c.base / "plain-file"
    f.write_text("x\n")
    c.options["local_dir"] = str(f / "local")
    return c.mount_argv(), f"cannot create local_dir '{f}/local'"


def local_dir_in_mountpoint(c):
    c.options["local_dir"] = str(c.mnt / "inside")
    return c.mount_argv(), "local_dir must not be inside the mountpoint"


def secret_in_options(c):
    c.options["secret_key"] = WRONG_SECRET
    return c.mount_argv(), "'secret_key' cannot be given in -o: set AWS_ACCESS_KEY_ID"


def config_file_unknown(c):
    d = c.base / ".config" / "mgmtfs"
    d.mkdir(parents=True)
    (d / "config").write_text("# mine\ncolour = blue\n")
    return c.mount_argv(), f"unknown setting 'colour' in {d / 'config'} line 2"


def cli(*args):
    def build(c):
        return c.cli_argv(*args, "--local-dir", str(c.local)), None
    return build


def cli_empty_local_dir(c):
    return c.cli_argv("list", "--local-dir", str(c.local)), \
        f"no records in '{c.local}': nothing was uploaded from this local_dir yet"


# id -> (build(case) -> (argv, phrase or None), phrase when build gives None)
CASES = {
    "unknown-option": (opt(foo="1"), "unknown option 'foo': see mgmtfs --help"),
    "unknown-flag": (unknown_flag, "unknown option '--frobnicate': see mgmtfs --help"),
    "no-bucket": (opt(bucket=None), "no bucket: give -o bucket=NAME or set MGMT_BUCKET"),
    "option-without-value": (opt(bucket=True), "option 'bucket' needs a value (bucket=...)"),
    "level-0": (opt(level="0"), "level='0' in -o: use a number from 1 to 9"),
    "level-12-in-env": (env(MGMT_LEVEL="12"),
                        "level='12' in MGMT_LEVEL: use a number from 1 to 9"),
    "compression-zip": (opt(compression="zip"),
                        "compression='zip' in -o: use tar.gz, gzip, tar, auto or none"),
    "part-size-1K": (opt(part_size="1K"), "part_size='1K' in -o: use a size from 1M to 5G"),
    "buffer-memory-1K": (opt(buffer_memory="1K"),
                         "buffer_memory='1K' in -o: use a size of at least 1M, e.g. 192M"),
    "settle-negative": (opt(settle="-1"), "settle='-1' in -o: give seconds, e.g. settle=1.5"),
    "sse-kms-typo": (opt(sse="kms"), "sse='kms' in -o: use AES256, aws:kms or aws:kms:dsse"),
    "sse-key-for-aes256": (opt(sse="AES256", sse_kms_key_id="k1"),
                           "sse_kms_key_id is for sse=aws:kms (or aws:kms:dsse), not sse=AES256"),
    "buffer-idle-soon": (opt(buffer_idle="soon"),
                         "buffer_idle='soon' in -o: give seconds, e.g. buffer_idle=1.5"),
    "max-attempts-0": (opt(max_attempts="0"),
                       "max_attempts='0' in -o: use a number from 1 to 64"),
    "stall-seconds-0": (opt(stall_seconds="0"),
                        "stall_seconds='0' in -o: give seconds (at least 1)"),
    "addressing-sideways": (opt(addressing="sideways"),
                            "addressing='sideways' in -o: use auto, path or virtual"),
    "payload-signing-maybe": (opt(payload_signing="maybe"),
                              "payload_signing='maybe' in -o: use yes or no"),
    "missing-mountpoint": (no_mountpoint, "no mountpoint: mgmtfs MOUNTPOINT -o bucket=NAME"),
    "mountpoint-not-a-directory": (mountpoint_is_file, None),
    "two-mountpoints": (two_mountpoints, None),
    "endpoint-not-a-url": (opt(endpoint="127.0.0.1:9"),
                           "endpoint '127.0.0.1:9' is not a URL: "
                           "use http://HOST:PORT or https://HOST"),
    "secret-key-in-options": (secret_in_options, None),
    "no-credentials": (no_credentials, None),
    "credentials-file-mode-644": (credentials_644, None),
    "config-file-unknown-setting": (config_file_unknown, None),
    "local-dir-under-a-file": (local_dir_under_file, None),
    "local-dir-inside-mountpoint": (local_dir_in_mountpoint, None),
    "wrong-secret": (wrong_secret, None),
    "unknown-access-key": (unknown_access_key, None),
    "missing-bucket": (missing_bucket, None),
    "unreachable-endpoint": (closed_endpoint, None),
    "cli-list-bad-status": (cli("list", "--status", "bogus"),
                            "unknown status 'bogus' (queued, uploading, completed, failed, "
                            "duplicate, ignored): see mgmtfs --help"),
    "cli-list-bad-since": (cli("list", "--since", "yesterday"),
                           "--since 'yesterday': use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ"),
    "cli-list-unknown-option": (cli("list", "--bogus"),
                                "unknown option '--bogus': see mgmtfs --help"),
    # a fresh --local-dir: the missing argument is the error, not the missing records
    "cli-show-no-args": (cli("show"), "show takes one PATH or ID: see mgmtfs --help"),
    "cli-retry-nothing": (cli("retry"), "retry needs PATH... or --failed: see mgmtfs --help"),
    "cli-list-no-records": (cli_empty_local_dir, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(mgmtfs_bin, s3, workdir, case):
    build, phrase = CASES[case]
    c = Case(s3, mgmtfs_bin, workdir / f"bad-{case}")
    argv, built_phrase = build(c)
    phrase = built_phrase or phrase
    assert phrase
    try:
        p = subprocess.run(argv, env=c.env, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=60)
    except subprocess.TimeoutExpired:
        p = None
    mounted = is_mounted(c.mnt)
    if mounted:
        subprocess.run(["fusermount3", "-u", "-z", str(c.mnt)], capture_output=True)
    assert p is not None, "still running after 60 s (it mounted?)"
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")

    assert not mounted, "it mounted"
    assert p.returncode != 0
    assert not sanitizer_findings(out + err), err
    for secret in (s3.secret_key, WRONG_SECRET):
        assert secret not in out + err, "a secret was printed"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"want one line, got:\n{err}"
    assert lines[0].startswith("mgmtfs: error: "), lines[0]
    assert phrase in lines[0], f"want {phrase!r} in:\n{lines[0]}"
    assert out == ""
