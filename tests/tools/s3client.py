"""An S3 client independent of mgmtfs, for checking what really reached the bucket.

Every request is made by curl with its own SigV4 signer (--aws-sigv4) and an
explicit x-amz-content-sha256 header, so nothing here shares code with the
daemon under test.  Credentials reach curl through a config on stdin, never
through argv.  Standard library only.
"""
import os
import shlex
import subprocess
import tempfile
import urllib.parse
import xml.etree.ElementTree as ET

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def read_env_file(path):
    """KEY=VALUE lines (values shell-quoted) as written by scripts/s3-server."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                out[key] = " ".join(shlex.split(value))
    return out


class S3Error(Exception):
    def __init__(self, status, code, body):
        super().__init__(f"HTTP {status} {code}".strip())
        self.status, self.code, self.body = status, code, body


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    @property
    def code(self):
        """The S3 error code of an error response, or ''."""
        try:
            return ET.fromstring(self.body).findtext("Code") or ""
        except ET.ParseError:
            return ""


class S3Client:
    def __init__(self, endpoint, access_key, secret_key, region="us-east-1"):
        self.endpoint = endpoint.rstrip("/")
        self.access_key, self.secret_key, self.region = access_key, secret_key, region

    @classmethod
    def from_env_file(cls, path):
        env = read_env_file(path)
        return cls(env["S3_ENDPOINT"], env["AWS_ACCESS_KEY_ID"],
                   env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_REGION", "us-east-1"))

    def url(self, bucket, key="", query=()):
        """Path-style URL; @query is a list of (name, value) pairs.

        The query is emitted sorted and fully encoded, with '=' after a name
        without value, which is already SigV4's canonical form: curl's signer
        then signs exactly what is sent.
        """
        path = "/" + urllib.parse.quote(bucket, safe="")
        if key:
            path += "/" + urllib.parse.quote(key, safe="/-_.~")
        if query:
            path += "?" + "&".join(
                f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                for k, v in sorted(query))
        return self.endpoint + path

    def request(self, method, bucket, key="", query=(), body=None):
        with tempfile.TemporaryDirectory(prefix="s3client.") as tmp:
            out, hdr = os.path.join(tmp, "body"), os.path.join(tmp, "headers")
            args = ["curl", "-sS", "-K", "-", "--max-time", "300",
                    "--aws-sigv4", f"aws:amz:{self.region}:s3",
                    "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
                    "-o", out, "-D", hdr, "-w", "%{http_code}"]
            if method == "HEAD":
                args.append("-I")
            else:
                args += ["-X", method]
            if body is not None:
                src = os.path.join(tmp, "upload")
                with open(src, "wb") as f:
                    f.write(body)
                # -T for PUT: curl's signer mishandles a removed Content-Type
                args += ["-T", src] if method == "PUT" else ["--data-binary", "@" + src]
            args.append(self.url(bucket, key, query))
            cfg = f'user = "{self.access_key}:{self.secret_key}"\n'
            p = subprocess.run(args, input=cfg.encode(), capture_output=True, timeout=330)
            if p.returncode != 0:
                raise RuntimeError(f"curl {method} failed: {p.stderr.decode(errors='replace')}")
            status = int(p.stdout.decode().strip()[-3:])
            with open(hdr, "rb") as f:
                headers = parse_headers(f.read())
            data = b""
            if os.path.exists(out):
                with open(out, "rb") as f:
                    data = f.read()
            return Response(status, headers, data)

    def _ok(self, r):
        if not 200 <= r.status < 300:
            raise S3Error(r.status, r.code, r.body)
        return r

    def put_object(self, bucket, key, data):
        return self._ok(self.request("PUT", bucket, key, body=data))

    def get_object(self, bucket, key):
        """The object's bytes; raises S3Error if it is not there."""
        return self._ok(self.request("GET", bucket, key)).body

    def head_object(self, bucket, key):
        """Response headers (lowercase names), or None if the object is missing."""
        r = self.request("HEAD", bucket, key)
        if r.status == 404:
            return None
        return self._ok(r).headers

    def list_objects(self, bucket, prefix=""):
        """Every key under @prefix (ListObjectsV2, following continuations)."""
        keys, token = [], None
        while True:
            q = [("list-type", "2"), ("prefix", prefix)]
            if token:
                q.append(("continuation-token", token))
            root = ET.fromstring(self._ok(self.request("GET", bucket, query=q)).body)
            keys += [c.findtext(NS + "Key") for c in root.iter(NS + "Contents")]
            token = root.findtext(NS + "NextContinuationToken")
            if root.findtext(NS + "IsTruncated") != "true" or not token:
                return keys

    def list_multipart_uploads(self, bucket, prefix=""):
        """(key, upload id) of every multipart upload in progress under @prefix."""
        q = [("prefix", prefix), ("uploads", "")]
        root = ET.fromstring(self._ok(self.request("GET", bucket, query=q)).body)
        return [(u.findtext(NS + "Key"), u.findtext(NS + "UploadId"))
                for u in root.iter(NS + "Upload")]


def parse_headers(raw):
    """The last header block of a curl -D dump (after any 100 Continue)."""
    blocks = [b for b in raw.decode("latin-1").replace("\r\n", "\n").split("\n\n") if b.strip()]
    headers = {}
    for line in blocks[-1].split("\n")[1:] if blocks else []:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers
