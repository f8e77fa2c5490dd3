#!/usr/bin/env python3
"""s3put.py - minimal SigV4 S3 client used by scripts/bench as the raw-throughput
yardstick and for housekeeping (stdlib only; adapted from the team's s3probe.py
and s3put.py baselines).

  s3put.py curl FILE /BUCKET/KEY [--signed | --sha256 HEX]
        exec `curl -T FILE` with SigV4 headers: one PUT, no multipart.
        Payload hash UNSIGNED-PAYLOAD (the server's ceiling) unless --signed
        (then the file's sha256 is computed first, as a payload-signing client must)
        or --sha256 (signed with that hash, computed by the caller beforehand:
        the server's ceiling for a signed payload).
  s3put.py parts FILE /BUCKET/KEY --hashes JSON [--signed] [--threads N]
        a multipart upload of FILE in the parts JSON lists (written beforehand by
        part_hashes(): each part's size, sha256 and MD5, so that no clock counts
        the hashing), N parts in flight over keep-alive connections (default 4),
        each part with Content-MD5 and its ETag checked; UNSIGNED-PAYLOAD unless
        --signed: the server's ceiling for what mgmtfs must do.
  s3put.py dir DIR /BUCKET/PREFIX [--threads N]
        PUT every file of DIR (UNSIGNED-PAYLOAD) over N keep-alive connections
        (default 4).
  s3put.py mkbucket BUCKET             create BUCKET (ok if it exists)
  s3put.py count /BUCKET/PREFIX        print the number of objects under PREFIX
  s3put.py rm /BUCKET/PREFIX           delete every object under PREFIX
                                       (and abort stale multipart uploads there)

env: S3_ENDPOINT (http://127.0.0.1:7480) AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
     AWS_REGION / AWS_DEFAULT_REGION (us-east-1)
"""
import base64
import datetime
import hashlib
import hmac
import http.client
import json
import os
import re
import sys
import threading
import urllib.parse
import xml.etree.ElementTree as ET


def q(s, safe="-_.~"):
    return urllib.parse.quote(s, safe=safe)


class S3:
    def __init__(self, hostport, ak, sk, region):
        self.host, _, port = hostport.partition(":")
        self.port = int(port or 80)
        self.hosthdr = hostport
        self.ak, self.sk, self.region = ak, sk, region

    def _key(self, date):
        k = ("AWS4" + self.sk).encode()
        for m in (date, self.region, "s3", "aws4_request"):
            k = hmac.new(k, m.encode(), hashlib.sha256).digest()
        return k

    def sign(self, method, path, query, headers, payload_hash):
        now = datetime.datetime.now(datetime.timezone.utc)
        amzdate = now.strftime("%Y%m%dT%H%M%SZ")
        date = amzdate[:8]
        h = {k.lower(): str(v).strip() for k, v in headers.items()}
        h["host"] = self.hosthdr
        h["x-amz-date"] = amzdate
        h["x-amz-content-sha256"] = payload_hash
        canon_uri = q(path, safe="-_.~/")
        canon_q = "&".join(f"{q(k)}={q(v)}" for k, v in sorted(query.items()))
        signed = sorted(h)
        canon_h = "".join(f"{k}:{re.sub(' +', ' ', h[k])}\n" for k in signed)
        creq = "\n".join([method, canon_uri, canon_q, canon_h,
                          ";".join(signed), payload_hash])
        scope = f"{date}/{self.region}/s3/aws4_request"
        sts = "\n".join(["AWS4-HMAC-SHA256", amzdate, scope,
                         hashlib.sha256(creq.encode()).hexdigest()])
        sig = hmac.new(self._key(date), sts.encode(), hashlib.sha256).hexdigest()
        h["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.ak}/{scope}, "
            f"SignedHeaders={';'.join(signed)}, Signature={sig}")
        return h, canon_uri, canon_q

    def req(self, method, path, query=None, body=b"", headers=None, conn=None):
        query = query or {}
        h, uri, cq = self.sign(method, path, query, headers or {},
                               hashlib.sha256(body).hexdigest())
        c = conn or http.client.HTTPConnection(self.host, self.port, timeout=120)
        c.request(method, uri + ("?" + cq if cq else ""), body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        if conn is None:
            c.close()
        m = re.search(rb"<Code>([^<]*)</Code>", data)
        return r.status, (m.group(1).decode() if m else ""), data


def client():
    ep = os.environ.get("S3_ENDPOINT", "http://127.0.0.1:7480")
    hostport = urllib.parse.urlsplit(ep).netloc or ep
    return S3(hostport,
              os.environ.get("AWS_ACCESS_KEY_ID", "TESTKEY"),
              os.environ.get("AWS_SECRET_ACCESS_KEY", "TESTSECRET"),
              os.environ.get("AWS_REGION")
              or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")


def split(bp):
    bucket, _, prefix = bp.lstrip("/").partition("/")
    return bucket, prefix


def strip_ns(data):
    return ET.fromstring(re.sub(rb'\sxmlns="[^"]+"', b"", data, count=1))


def list_keys(s3, bucket, prefix):
    keys, token = [], None
    while True:
        qy = {"list-type": "2", "prefix": prefix, "max-keys": "1000"}
        if token:
            qy["continuation-token"] = token
        st, code, data = s3.req("GET", "/" + bucket, qy)
        if st != 200:
            sys.exit(f"list {bucket}/{prefix}: {st} {code}")
        x = strip_ns(data)
        keys += [e.text for e in x.findall("Contents/Key")]
        if x.findtext("IsTruncated") != "true":
            return keys
        token = x.findtext("NextContinuationToken")


def rm_prefix(s3, bucket, prefix):
    if not prefix:
        sys.exit("rm: refusing an empty prefix")
    keys = list_keys(s3, bucket, prefix)
    c = http.client.HTTPConnection(s3.host, s3.port, timeout=120)
    for i in range(0, len(keys), 1000):
        body = ("<Delete><Quiet>true</Quiet>" + "".join(
            f"<Object><Key>{k.replace('&', '&amp;').replace('<', '&lt;')}"
            "</Key></Object>" for k in keys[i:i + 1000]) + "</Delete>").encode()
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        st, code, _ = s3.req("POST", "/" + bucket, {"delete": ""}, body,
                             {"content-md5": md5,
                              "content-type": "application/xml"}, conn=c)
        if st != 200:
            sys.exit(f"delete {bucket}/{prefix}: {st} {code}")
    # in-progress multipart uploads left by a killed client hold space too
    st, code, data = s3.req("GET", "/" + bucket, {"uploads": "", "prefix": prefix},
                            conn=c)
    if st == 200:
        x = strip_ns(data)
        for u in x.findall("Upload"):
            s3.req("DELETE", "/" + bucket + "/" + u.findtext("Key"),
                   {"uploadId": u.findtext("UploadId")}, conn=c)
    c.close()
    return len(keys)


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def curl_put(path, key, signed, known=None):
    s3 = client()
    if known:
        ph = known
    elif signed:
        ph = file_sha256(path)
    else:
        ph = "UNSIGNED-PAYLOAD"
    size = os.path.getsize(path)
    hdrs, uri, _ = s3.sign("PUT", key, {}, {"content-length": str(size)}, ph)
    args = ["curl", "-sS", "-f", "-o", "/dev/null", "-T", path, "-H", "Expect:"]
    for k, v in hdrs.items():
        if k not in ("host", "content-length"):
            args += ["-H", f"{k}: {v}"]
    args.append(f"http://{s3.hosthdr}{uri}")
    os.execvp("curl", args)


def part_hashes(path, part_size, out):
    """Each part's size, sha256 and MD5 (base64) into the JSON file @out."""
    parts = []
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(part_size), b""):
            parts.append([len(b), hashlib.sha256(b).hexdigest(),
                          base64.b64encode(hashlib.md5(b).digest()).decode()])
    with open(out, "w") as f:
        json.dump(parts, f)


def parts_put(path, key, hashes, signed, threads):
    s3 = client()
    with open(hashes) as f:
        parts = json.load(f)
    st, code, data = s3.req("POST", key, {"uploads": ""})
    if st != 200:
        sys.exit(f"create {key}: {st} {code}")
    uid = strip_ns(data).findtext("UploadId")
    offs = [0]
    for size, _, _ in parts:
        offs.append(offs[-1] + size)
    etags, todo, lock, errors = [None] * len(parts), iter(range(len(parts))), threading.Lock(), []

    def worker():
        c = http.client.HTTPConnection(s3.host, s3.port, timeout=120)
        buf = memoryview(bytearray(max(p[0] for p in parts)))  # one buffer, reused
        with open(path, "rb", buffering=0) as f:
            while not errors:
                with lock:
                    i = next(todo, None)
                if i is None:
                    break
                size, sha, md5 = parts[i]
                body = buf[:os.preadv(f.fileno(), [buf[:size]], offs[i])]
                h, uri, cq = s3.sign("PUT", key, {"partNumber": str(i + 1), "uploadId": uid},
                                     {"content-md5": md5, "content-length": str(size)},
                                     sha if signed else "UNSIGNED-PAYLOAD")
                c.request("PUT", f"{uri}?{cq}", body=body, headers=h)
                r = c.getresponse()
                r.read()
                etags[i] = r.getheader("ETag", "").strip('"')
                if r.status != 200 or etags[i] != base64.b64decode(md5).hex():
                    errors.append((i + 1, r.status, etags[i]))
        c.close()

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        s3.req("DELETE", key, {"uploadId": uid})
        sys.exit(f"part {errors[0][0]}: {errors[0][1]}, ETag {errors[0][2]!r}")
    body = ("<CompleteMultipartUpload>" + "".join(
        f"<Part><PartNumber>{i + 1}</PartNumber><ETag>\"{e}\"</ETag></Part>"
        for i, e in enumerate(etags)) + "</CompleteMultipartUpload>").encode()
    st, code, _ = s3.req("POST", key, {"uploadId": uid}, body)
    if st != 200:
        sys.exit(f"complete {key}: {st} {code}")


def dir_put(d, prefix, threads):
    s3 = client()
    files = sorted(os.listdir(d))
    errors = []

    def worker(chunk):
        c = http.client.HTTPConnection(s3.host, s3.port, timeout=60)
        for name in chunk:
            with open(os.path.join(d, name), "rb") as f:
                body = f.read()
            h, uri, _ = s3.sign("PUT", f"{prefix}/{name}", {}, {},
                                "UNSIGNED-PAYLOAD")
            c.request("PUT", uri, body=body, headers=h)
            r = c.getresponse()
            r.read()
            if r.status != 200:
                errors.append((name, r.status))
        c.close()

    ts = [threading.Thread(target=worker, args=(files[i::threads],))
          for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        sys.exit(f"{len(errors)} failed, e.g. {errors[:3]}")


def main(a):
    n = int(a[a.index("--threads") + 1]) if "--threads" in a else 4
    if len(a) >= 3 and a[0] == "curl":
        known = a[a.index("--sha256") + 1] if "--sha256" in a else None
        curl_put(a[1], a[2], "--signed" in a, known)
    elif len(a) >= 5 and a[0] == "parts" and "--hashes" in a:
        parts_put(a[1], a[2], a[a.index("--hashes") + 1], "--signed" in a, n)
    elif len(a) >= 3 and a[0] == "dir":
        dir_put(a[1], a[2].rstrip("/"), n)
    elif len(a) == 2 and a[0] == "mkbucket":
        st, code, _ = client().req("PUT", "/" + a[1])
        if not (st == 200 or code in ("BucketAlreadyOwnedByYou",
                                      "BucketAlreadyExists")):
            sys.exit(f"create bucket {a[1]}: {st} {code}")
    elif len(a) == 2 and a[0] == "count":
        print(len(list_keys(client(), *split(a[1]))))
    elif len(a) == 2 and a[0] == "rm":
        print(rm_prefix(client(), *split(a[1])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
