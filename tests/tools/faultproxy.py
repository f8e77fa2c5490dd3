#!/usr/bin/env python3
"""faultproxy.py - HTTP/1.1 fault-injecting proxy for S3 tests (stdlib only).

Put it between the code under test and a real S3 server (e.g. the RGW of
scripts/s3-server).  The Host header passes through untouched, so SigV4
signatures made for the proxy's address still verify at the server.

  faultproxy.py --listen 127.0.0.1:0 --target 127.0.0.1:7480 \\
      --fault status:503:SlowDown --match 'PUT .*partNumber=2' --first 2 \\
      --log /tmp/proxy.log --control /tmp/proxy.json

  --fault KIND       status:CODE[:S3CODE]  answer CODE with an S3 XML error
                                         (body read first; with Expect:
                                         100-continue answered at once)
                     reset[:BYTES]       forward the head and BYTES (default 0)
                                         of the body, then RST both sides
                     stall:SECONDS       hold the request SECONDS, then forward;
                                         if the client hangs up meanwhile the
                                         request is dropped, never forwarded
                     delay:MS            like stall, in milliseconds (use with
                                         --every 1 for latency on everything)
                     drop-response       forward, let the server act, then RST
                                         the client before the answer (the
                                         server HAS stored it: idempotency test)
                     hold-response:SECONDS  forward, let the server act, then
                                         hold its answer SECONDS before passing
                                         it on (dropped if the client hangs up
                                         meanwhile: a crash after the server
                                         acted, before the client knew)
                     reply:CODE          answer CODE with an empty body, never
                                         forwarding (e.g. reply:200 on a HEAD)
                     kms-etag            forward, then answer as S3 does for an
                                         SSE-KMS bucket: a 2xx with an ETag gets
                                         x-amz-server-side-encryption: aws:kms and
                                         an ETag that is no MD5 (each hex digit d
                                         made 15-d: the same object, the same ETag)
                     none                pass (a rule that only counts)
  --match REGEX      only requests whose request line ("PUT /b/k?x HTTP/1.1")
                     matches count as candidates (default: all)
  --every N          fault every Nth candidate (default 1)
  --first N          fault only the first N faults' worth, then pass (0 = no cap)
  --prob P --seed S  instead of --every: fault each candidate with chance P
  --status CODE      drop-response and hold-response only act on answers
                     with this status (others pass and do not count)
  --log FILE         one line per request, tab-separated:
                       n  rule  fault  request-line  status
                     rule: index of the first rule whose --match matched, or -
                     fault: the fault applied, or - ; status: the server's
                     code, the injected code, RST, CODE+RST (drop-response),
                     GONE (a stalled client hung up: never forwarded) or
                     CODE+GONE (a held answer whose client hung up).  A stall
                     or hold also writes a line with status HELD when it
                     starts (so a test knows the request is being held).
                     A broken connection: status "ERROR <why>".
  --control FILE     rules that replace the command line's at run time: JSON
                       {"rules": [{"fault": "stall:30", "match": "PUT .*",
                                   "every": 1, "first": 1, "prob": null,
                                   "status": null}, ...]}
                     re-read whenever the file changes (write it atomically:
                     a temporary file renamed over it); each load starts the
                     rules' counters afresh.  The first rule whose match
                     matches a request decides; later rules never see it.
  --port-file FILE   write the port listened on (useful with --listen HOST:0)

The port is also printed on stdout ("listening on HOST:PORT").  Stop it by its
PID (SIGTERM or SIGKILL).  Listens only where told (use 127.0.0.1).

HTTP/1.1 framing: a request with neither Content-Length nor Transfer-Encoding
has no body (RFC 9112 6.3); a response without either is read until the
server closes, except for HEAD and 1xx/204/304, which never have one.
"""
import argparse
import json
import os
import random
import re
import select
import signal
import socket
import struct
import sys
import threading
import time

LOCK = threading.Lock()


class Rule:
    def __init__(self, fault, match=".", every=1, first=0, prob=None, seed=1, status=None):
        self.fault = fault.split(":") if isinstance(fault, str) else list(fault)
        self.status = None if status is None else int(status)
        self.match = re.compile(match)
        self.every = max(1, int(every))
        self.first = int(first or 0)
        self.prob = prob
        self.rng = random.Random(seed)
        self.cand = 0
        self.faults = 0

    @classmethod
    def from_json(cls, d):
        return cls(d.get("fault", "none"), d.get("match", "."), d.get("every", 1),
                   d.get("first", 0), d.get("prob"), d.get("seed", 1), d.get("status"))


class Control:
    """The rules in force; reloaded from --control when that file changes."""

    def __init__(self, rules, path):
        self.rules, self.path, self.stamp = rules, path, None
        self.n = 0

    def _reload(self):
        if not self.path:
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self.stamp:
            return
        try:
            with open(self.path, encoding="utf-8") as f:
                d = json.load(f)
            self.rules = [Rule.from_json(r) for r in d.get("rules", [])]
            self.stamp = stamp
        except (OSError, ValueError, re.error) as e:
            print(f"faultproxy: bad control file {self.path}: {e}", file=sys.stderr)
            self.stamp = stamp

    def decide(self, line):
        """(request number, index of the matching rule or None, fault or None,
        the rule or None)."""
        text = line.decode("latin-1")
        with LOCK:
            self._reload()
            self.n += 1
            for i, r in enumerate(self.rules):
                if not r.match.search(text):
                    continue
                r.cand += 1
                if r.prob is not None:
                    hit = r.rng.random() < r.prob
                else:
                    hit = r.cand % r.every == 0
                if hit and r.first and r.faults >= r.first:
                    hit = False
                if hit and r.fault[0] != "none":
                    r.faults += 1
                    return self.n, i, r.fault, r
                return self.n, i, None, r
            return self.n, None, None, None

    @staticmethod
    def unfault(rule):
        """The answer did not have the rule's --status: it was not a fault."""
        with LOCK:
            rule.faults -= 1


def recv_head(sock, buf):
    while b"\r\n\r\n" not in buf:
        d = sock.recv(65536)
        if not d:
            return None, buf
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def parse_headers(head):
    lines = head.split(b"\r\n")
    h = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        h[k.strip().lower()] = v.strip()
    return lines[0], h


class Cut(Exception):
    """The byte limit of a reset fault was reached."""


def relay_body(src, dst, rest, h, limit=None, no_body=False, request=True):
    """Copy one message body from src to dst (dst None: read and discard).

    Returns (leftover bytes read past the body, until_close); until_close is
    True when a response had no length and was read until the server closed
    (the client connection must then be closed too).  With @limit, stops
    after that many body bytes went out and returns (None, False)."""
    sent = 0

    def out(b):
        nonlocal sent
        if limit is not None and sent + len(b) >= limit:
            if dst is not None and limit - sent > 0:
                dst.sendall(b[:limit - sent])
            raise Cut()
        if dst is not None:
            dst.sendall(b)
        sent += len(b)

    if no_body:
        return rest, False
    te = h.get(b"transfer-encoding", b"").lower()
    try:
        if b"chunked" in te:
            def line(buf, what):
                """The next CRLF-ended line (relayed) and what follows it."""
                while b"\r\n" not in buf:
                    d = src.recv(65536)
                    if not d:
                        raise ConnectionError("eof in " + what)
                    buf += d
                ln, _, buf = buf.partition(b"\r\n")
                out(ln + b"\r\n")
                return ln, buf

            buf = rest
            while True:
                ln, buf = line(buf, "chunk header")
                size = int(ln.split(b";")[0], 16)
                if size == 0:
                    # trailers, then the blank line that ends the message
                    while True:
                        tl, buf = line(buf, "trailer")
                        if not tl:
                            return buf, False
                need = size + 2
                while len(buf) < need:
                    d = src.recv(65536)
                    if not d:
                        raise ConnectionError("eof in chunk")
                    buf += d
                out(buf[:need])
                buf = buf[need:]
        if b"content-length" in h:
            left = int(h[b"content-length"])
        elif request:
            left = 0  # RFC 9112 6.3: a request without either header has no body
        else:
            left = -1
        if left < 0:  # a response without length: until the server closes
            out(rest)
            while True:
                d = src.recv(65536)
                if not d:
                    return b"", True
                out(d)
        take = rest[:left]
        out(take)
        left -= len(take)
        rest = rest[len(take):]
        while left > 0:
            d = src.recv(min(left, 1 << 20))
            if not d:
                raise ConnectionError("eof in body")
            out(d)
            left -= len(d)
        return rest, False
    except Cut:
        return None, False


def kms_etag(head):
    """A response head as an SSE-KMS bucket gives it (see --fault kms-etag)."""
    lines = head.split(b"\r\n")
    for i, ln in enumerate(lines[1:], 1):
        name, sep, value = ln.partition(b":")
        if sep and name.strip().lower() == b"etag":
            tag = value.strip().strip(b'"').decode("latin-1")
            flip = "".join("%x" % (15 - int(ch, 16)) if ch in "0123456789abcdefABCDEF" else ch
                           for ch in tag)
            lines[i] = b'ETag: "' + flip.encode("latin-1") + b'"'
            lines.insert(1, b"x-amz-server-side-encryption: aws:kms")
            break
    return b"\r\n".join(lines)


def rst(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


def s3_error(status, code):
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}'
            f'</Code><Message>injected by faultproxy</Message><RequestId>'
            f'faultproxy</RequestId></Error>').encode()
    reason = {500: "Internal Server Error", 503: "Service Unavailable",
              400: "Bad Request", 403: "Forbidden", 404: "Not Found",
              408: "Request Timeout", 429: "Too Many Requests"}.get(status, "Error")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class Collect:
    """A relay_body destination that keeps the bytes."""

    def __init__(self):
        self.data = bytearray()

    def sendall(self, b):
        self.data.extend(b)


def client_gone_within(sock, seconds):
    """Wait @seconds; True as soon as the client hangs up (POLLRDHUP sees a
    FIN even with unread body bytes in the buffer)."""
    p = select.poll()
    p.register(sock, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if p.poll(min(left, 0.5) * 1000):
            return True


def reply(status):
    reason = {200: "OK", 204: "No Content", 404: "Not Found"}.get(status, "Status")
    return f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n\r\n".encode()


def log(a, *f):
    if a.logf:
        with LOCK:
            a.logf.write("\t".join(map(str, f)) + "\n")
            a.logf.flush()


def handle(a, cli):
    up = None
    buf = b""
    n, rule_s, fault_s, text = "-", "-", "-", "-"
    try:
        while True:
            head, rest = recv_head(cli, buf)
            if head is None:
                return
            line, h = parse_headers(head)
            text = line.decode("latin-1")
            n, rule, fault, rule_obj = a.control.decide(line)
            rule_s = "-" if rule is None else rule
            fault_s = ":".join(fault) if fault else "-"
            kind = fault[0] if fault else None
            method = line.split(b" ")[0].upper()
            if kind == "status":
                status = int(fault[1])
                code = fault[2] if len(fault) > 2 else "InternalError"
                if h.get(b"expect", b"").lower() == b"100-continue":
                    cli.sendall(s3_error(status, code).replace(
                        b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
                    log(a, n, rule_s, fault_s, text, status)
                    return
                buf, _ = relay_body(cli, None, rest, h)
                cli.sendall(s3_error(status, code))
                log(a, n, rule_s, fault_s, text, status)
                continue
            if kind == "reply":
                buf, _ = relay_body(cli, None, rest, h)
                cli.sendall(reply(int(fault[1])))
                log(a, n, rule_s, fault_s, text, int(fault[1]))
                continue
            body = None
            if kind in ("stall", "delay"):
                # Take the body in while holding: a client that gives up can
                # only be seen (its FIN) once its unsent bytes were read.
                deadline = time.monotonic() + float(fault[1]) / (
                    1000.0 if kind == "delay" else 1.0)
                if kind == "stall":
                    log(a, n, rule_s, fault_s, text, "HELD")
                body = Collect()
                try:
                    buf, _ = relay_body(cli, body, rest, h)
                except (OSError, ConnectionError):
                    buf = None
                if buf is None or client_gone_within(cli, deadline - time.monotonic()):
                    log(a, n, rule_s, fault_s, text, "GONE")
                    return
            if up is None:
                up = socket.create_connection(a.target, timeout=600)
            up.sendall(head + b"\r\n\r\n")
            if kind == "reset":
                lim = int(fault[1]) if len(fault) > 1 else 0
                relay_body(cli, up, rest, h, limit=lim)
                log(a, n, rule_s, fault_s, text, "RST")
                rst(cli)
                rst(up)
                cli = up = None
                return
            # the body may wait for a 100-continue from upstream: relay it
            if h.get(b"expect", b"").lower() == b"100-continue":
                uh, urest = recv_head(up, b"")
                if uh is None:
                    return
                ul, uhd = parse_headers(uh)
                cli.sendall(uh + b"\r\n\r\n")
                if b" 100 " not in ul + b" ":
                    # a final answer without the body exchange
                    code = int(ul.split(b" ")[1])
                    relay_body(up, cli, urest, uhd, request=False,
                               no_body=method == b"HEAD" or code in (204, 304))
                    log(a, n, rule_s, fault_s, text, code)
                    return
            if body is None:
                buf, _ = relay_body(cli, up, rest, h)
            else:
                up.sendall(bytes(body.data))
            # the response: skip interim 1xx answers
            urest = b""
            while True:
                uh, urest = recv_head(up, urest)
                if uh is None:
                    log(a, n, rule_s, fault_s, text, "EOF")
                    return
                ul, uhd = parse_headers(uh)
                code = int(ul.split(b" ")[1])
                if 100 <= code < 200:
                    continue
                break
            no_body = method == b"HEAD" or code in (204, 304)
            if kind in ("drop-response", "hold-response") and rule_obj.status is not None \
                    and code != rule_obj.status:
                Control.unfault(rule_obj)
                kind, fault_s = None, "-"
            if kind == "hold-response":
                # the whole answer is read first: the server is done with it
                held = Collect()
                _, until_close = relay_body(up, held, urest, uhd, request=False,
                                            no_body=no_body)
                log(a, n, rule_s, fault_s, text, "HELD")
                if client_gone_within(cli, float(fault[1])):
                    log(a, n, rule_s, fault_s, text, f"{code}+GONE")
                    return
                cli.sendall(uh + b"\r\n\r\n" + bytes(held.data))
                log(a, n, rule_s, fault_s, text, code)
                if until_close or uhd.get(b"connection", b"").lower() == b"close":
                    return
                continue
            if kind == "drop-response":
                relay_body(up, None, urest, uhd, request=False, no_body=no_body)
                log(a, n, rule_s, fault_s, text, f"{code}+RST")
                rst(cli)
                cli = None
                return
            if kind == "kms-etag" and code < 300:
                uh = kms_etag(uh)
            cli.sendall(uh + b"\r\n\r\n")
            _, until_close = relay_body(up, cli, urest, uhd, request=False, no_body=no_body)
            log(a, n, rule_s, fault_s, text, code)
            if until_close or uhd.get(b"connection", b"").lower() == b"close":
                return
    except (OSError, ConnectionError, ValueError) as e:
        log(a, n, rule_s, fault_s, text, f"ERROR {e!r}")
    finally:
        for s in (cli, up):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--listen", default="127.0.0.1:7490")
    ap.add_argument("--target", default="127.0.0.1:7480")
    ap.add_argument("--fault", default="none")
    ap.add_argument("--match", default=".")
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--prob", type=float)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--status", type=int)
    ap.add_argument("--log")
    ap.add_argument("--control")
    ap.add_argument("--port-file")
    a = ap.parse_args()
    a.control = Control([Rule(a.fault, a.match, a.every, a.first, a.prob, a.seed, a.status)],
                        a.control)
    a.logf = open(a.log, "a", encoding="utf-8") if a.log else None
    th, tp = a.target.rsplit(":", 1)
    a.target = (th, int(tp))
    lh, lp = a.listen.rsplit(":", 1)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((lh, int(lp)))
    s.listen(128)
    port = s.getsockname()[1]
    if a.port_file:
        with open(a.port_file + ".tmp", "w", encoding="utf-8") as f:
            f.write(f"{port}\n")
        os.replace(a.port_file + ".tmp", a.port_file)
    print(f"listening on {lh}:{port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        c, _ = s.accept()
        threading.Thread(target=handle, args=(a, c), daemon=True).start()


if __name__ == "__main__":
    main()
