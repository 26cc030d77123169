"""Response buffering (SPEC §10, issue 21 item 3): with `buffering: true` (the default) a
proxied answer is spooled (memory, then an unlinked temporary file) so the upstream
connection goes back to its pool while a slow client still downloads; `buffering_max`
bounds the file, then the rest streams; `buffering: false` streams as before (SSE).
Over HTTP/1.1 and HTTP/2, with and without compression."""
import gzip
import hashlib
import os
import random
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest

from proxyd_fixtures import (backend_factory, connect, proxyd_factory, request_bytes,  # noqa: F401
                             vm_rss_kib, wait_for)

HOST = "buf.test"
BIG = 48 << 20
CURL = shutil.which("curl")


def body_of(n, seed=7):
    return random.Random(seed).randbytes(n)


class BigBackend:
    """Answers /big/N with N pseudo-random bytes (Content-Length), /sse with three events
    0.5 s apart (chunked), anything else with "small"; records when each big answer was
    fully handed to the kernel and which connection every request came on."""

    def __init__(self, backend_factory, ctype="application/octet-stream"):
        self.sent_at = {}
        self.ctype = ctype
        self.lock = threading.Lock()
        self.b = backend_factory(self.handle)

    def handle(self, req, conn):
        if req.target.startswith("/big/"):
            n = int(req.target.split("/")[2])
            data = body_of(n)
            conn.send(f"HTTP/1.1 200 OK\r\nContent-Type: {self.ctype}\r\nContent-Length: {n}\r\n\r\n".encode())
            conn.sock.settimeout(120)
            conn.send(data)
            with self.lock:
                self.sent_at[req.target] = time.monotonic()
            return True
        if req.target == "/sse":
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(3):
                ev = f"data: {i}\n\n".encode()
                conn.send(b"%x\r\n%s\r\n" % (len(ev), ev))
                time.sleep(0.5)
            conn.send(b"0\r\n\r\n")
            with self.lock:
                self.sent_at["/sse"] = time.monotonic()
            return True
        return conn.respond(200, b"small")

    def conn_of(self, target):
        return [r.conn_id for r in self.b.requests if r.target == target]


def site(upstream, route_extra="", site_extra=""):
    return (f"site: buf\nhosts: [{HOST}]\nupstreams:\n  app:\n    servers: [{{address: \"{upstream}\"}}]\n"
            f"    keepalive: 8\nroutes:\n  - match: {{path_prefix: /}}\n    upstream: app\n"
            f"    timeouts: {{read: 60s}}\n" + "".join(f"    {l}\n" for l in route_extra.splitlines() if l)
            + site_extra)


@pytest.fixture
def spool_dir(tmp_path, monkeypatch):
    d = tmp_path / "spool"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))     # proxyd's workers spool here (spool.h)
    return d


def metrics(p):
    st, _, body = p.admin("GET", "/metrics")
    assert st == 200
    out = {}
    for line in body.decode().splitlines():
        m = re.match(r"^(proxyd_buffering_[a-z_]+) (\d+)$", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def spool_fds(p):
    """The worker's descriptors that are deleted files (its spool files)."""
    out = []
    for pid in p.worker_pids():
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    t = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if t.endswith("(deleted)") and "spool" in t:
                    out.append(t)
        except OSError:
            pass
    return out


def read_head(s):
    head = b""
    while b"\r\n\r\n" not in head:
        d = s.recv(1)
        assert d, head
        head += d
    return head


def slow_read(s, seconds, rate=10 * 1024, step=1024):
    """Read at about `rate` bytes/s for `seconds`: the bytes read."""
    got = bytearray()
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        d = s.recv(step)
        if not d:
            break
        got += d
        time.sleep(step / rate)
    return bytes(got)


def read_all(s, n, timeout=60):
    got = bytearray()
    deadline = time.monotonic() + timeout
    s.settimeout(timeout)
    while len(got) < n and time.monotonic() < deadline:
        d = s.recv(1 << 20)
        if not d:
            break
        got += d
    return bytes(got)


def test_slow_client_releases_the_upstream_early(proxyd_factory, backend_factory, spool_dir):
    be = BigBackend(backend_factory)
    p = proxyd_factory(sites=[site(be.b.address)], workers=1)
    s = connect(p.port, timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    t0 = time.monotonic()
    s.sendall(request_bytes("GET", f"/big/{BIG}", HOST))
    head = read_head(s)
    assert b" 200 " in head.split(b"\r\n")[0] and f"content-length: {BIG}".encode() in head.lower()
    got = bytearray(slow_read(s, 1.0))
    # The origin has handed over all 48 MiB while the client has taken about 10 KiB.
    assert wait_for(lambda: f"/big/{BIG}" in be.sent_at, 20), "the upstream was not read to its end"
    released = be.sent_at[f"/big/{BIG}"] - t0
    slow_got = len(got)
    got += slow_read(s, 0.5)
    assert len(got) < 1 << 20
    m = metrics(p)
    assert m["proxyd_buffering_responses_total"] >= 1
    assert m["proxyd_buffering_file_responses_total"] >= 1            # the file path was taken
    assert m["proxyd_buffering_file_bytes"] >= BIG // 2               # (socket buffers hold some)
    assert m["proxyd_buffering_memory_bytes"] <= 4 * 16384            # memory stays bounded
    rss = sum(vm_rss_kib(pid) for pid in p.worker_pids())
    assert rss < 64 * 1024 + 48 * 1024, f"worker RSS {rss} KiB"       # not the 48 MiB body twice
    # The file is unlinked: nothing in the directory, only the worker's descriptor.
    assert os.listdir(spool_dir) == []
    assert spool_fds(p), "no deleted spool file open in the worker"
    # A second request while the first client still reads: the same upstream connection.
    s2 = connect(p.port, timeout=10)
    s2.sendall(request_bytes("GET", "/next", HOST, [("Connection", "close")]))
    r2 = read_all(s2, 1 << 16, timeout=10)
    s2.close()
    assert r2.endswith(b"small"), r2[-200:]
    assert be.conn_of("/next") == be.conn_of(f"/big/{BIG}"), "the upstream connection was not reused"
    # The rest arrives intact.
    got += read_all(s, BIG - len(got), timeout=120)
    s.close()
    assert len(got) == BIG and hashlib.sha256(got).digest() == hashlib.sha256(body_of(BIG)).digest()
    assert wait_for(lambda: metrics(p)["proxyd_buffering_file_bytes"] == 0, 5)
    assert wait_for(lambda: not spool_fds(p), 5)
    line = (f"buffering: {BIG >> 20} MiB answer to a client reading 10 KiB/s: the origin had sent it all "
            f"{released:.2f}s after the request; the client had {slow_got} bytes by then")
    print(line)
    with open("/tmp/proxyd_buffering_report.txt", "a") as f:
        f.write(line + "\n")


def test_buffering_off_streams_with_backpressure(proxyd_factory, backend_factory, spool_dir):
    be = BigBackend(backend_factory)
    p = proxyd_factory(sites=[site(be.b.address, "buffering: false")], workers=1)
    n = BIG                                             # more than every socket buffer on the way
    s = connect(p.port, timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    s.sendall(request_bytes("GET", f"/big/{n}", HOST))
    read_head(s)
    slow_read(s, 1.5)
    assert f"/big/{n}" not in be.sent_at, "buffering: false must not read the upstream ahead of the client"
    assert metrics(p)["proxyd_buffering_responses_total"] == 0
    s.close()


def test_first_bytes_before_the_origin_finishes(proxyd_factory, backend_factory, spool_dir):
    """SSE through both settings: each event reaches the client as it is sent."""
    be = BigBackend(backend_factory)
    for extra in ("buffering: false", ""):
        be.sent_at.pop("/sse", None)
        p = proxyd_factory(sites=[site(be.b.address, extra)], workers=1)
        s = connect(p.port, timeout=10)
        t0 = time.monotonic()
        s.sendall(request_bytes("GET", "/sse", HOST))
        buf = b""
        while b"data: 0" not in buf:
            d = s.recv(4096)
            assert d, buf
            buf += d
        first = time.monotonic() - t0
        assert "/sse" not in be.sent_at and first < 0.45, (extra, first)
        while b"data: 1" not in buf:
            buf += s.recv(4096)
        assert "/sse" not in be.sent_at, extra
        s.close()
        p.stop()


def test_buffering_max_then_the_rest_streams(proxyd_factory, backend_factory, spool_dir):
    be = BigBackend(backend_factory)
    p = proxyd_factory(sites=[site(be.b.address, "buffering_max: 1m")], workers=1)
    n = 16 << 20
    s = connect(p.port, timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    s.sendall(request_bytes("GET", f"/big/{n}", HOST))
    read_head(s)
    got = bytearray(slow_read(s, 1.5))
    assert f"/big/{n}" not in be.sent_at               # 1 MiB spooled, then the client's pace
    m = metrics(p)
    assert 0 < m["proxyd_buffering_file_bytes"] <= (1 << 20)
    got += read_all(s, n - len(got))
    s.close()
    assert len(got) == n and hashlib.sha256(got).digest() == hashlib.sha256(body_of(n)).digest()


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@pytest.mark.parametrize("compression", [False, True])
def test_http2_and_compression(proxyd_factory, backend_factory, spool_dir, tmp_path, compression):
    be = BigBackend(backend_factory, ctype="text/plain")
    extra = "compression: {gzip: true, types: [text/plain]}\n" if compression else ""
    p = proxyd_factory(global_settings={"http2_cleartext": True}, sites=[site(be.b.address, site_extra=extra)],
                       workers=1)
    n = 8 << 20
    out = tmp_path / "out.bin"
    args = [CURL, "-s", "--http2-prior-knowledge", "-H", f"Host: {HOST}", "-o", str(out),
            "-w", "%{http_version} %{http_code}", f"http://127.0.0.1:{p.port}/big/{n}"]
    if compression:
        args[1:1] = ["-H", "Accept-Encoding: gzip"]
    # A slow reader first: the origin is done long before the client.
    slow = subprocess.Popen(args[:1] + ["--limit-rate", "20k"] + args[1:], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: f"/big/{n}" in be.sent_at, 20), "the upstream was not read to its end"
        assert slow.poll() is None, "the slow client finished already"
        assert metrics(p)["proxyd_buffering_file_responses_total"] >= 1
    finally:
        slow.kill()
        slow.wait(timeout=10)
    # A reader a bit slower than the origin: the spooled bytes arrive intact.
    be.sent_at.clear()
    r = subprocess.run(args[:1] + ["--limit-rate", "8M"] + args[1:], capture_output=True, text=True, timeout=60)
    assert r.stdout == "2 200", r
    data = out.read_bytes()
    if compression:
        data = gzip.decompress(data)
    assert hashlib.sha256(data).digest() == hashlib.sha256(body_of(n)).digest()
    assert wait_for(lambda: metrics(p)["proxyd_buffering_file_bytes"] == 0, 5)


def test_buffering_max_refused_where_it_does_not_apply(proxyd_factory):
    p = proxyd_factory(start=False)
    text = (f"site: x\nhosts: [x.test]\nroutes:\n  - match: {{path_prefix: /}}\n    return: {{status: 200}}\n"
            f"    buffering_max: 1m\n")
    rc, out, err = p.add_site(text, expect_rc=1)
    assert ":6:20: error: buffering_max applies to upstream and fastcgi routes only" in err
    rc, out, err = p.add_site(site("127.0.0.1:9", "buffering_max: 10"), expect_rc=1)
    assert "error: buffering_max must be 1k..4t" in err


def test_stalled_client_is_closed_and_the_spool_freed(proxyd_factory, backend_factory, spool_dir):
    """A client that takes nothing for the route's read timeout while the spool holds its
    answer is closed, and the file goes with it."""
    be = BigBackend(backend_factory)
    text = site(be.b.address).replace("timeouts: {read: 60s}", "timeouts: {read: 1s}")
    p = proxyd_factory(sites=[text], workers=1)
    s = connect(p.port, timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.sendall(request_bytes("GET", f"/big/{BIG}", HOST))
    assert wait_for(lambda: f"/big/{BIG}" in be.sent_at, 20)
    assert metrics(p)["proxyd_buffering_file_bytes"] > 0
    assert wait_for(lambda: metrics(p)["proxyd_buffering_file_bytes"] == 0, 10), "the stalled client was kept"
    assert not spool_fds(p)
    st, _, body = p.admin("GET", "/metrics")
    assert re.search(r'proxyd_connections_closed_total\{reason="send_timeout"\} [1-9]', body.decode())
    assert "the client stopped reading the response (buffered)" in p.error_log_text() + p.stderr_text()
    s.close()


def test_cache_fill_through_the_spool(proxyd_factory, backend_factory, spool_dir, tmp_path):
    """The spool sits below the cache's store filter: a MISS that a slow client reads is
    stored whole; the HIT is served from the cache, not spooled again."""
    n = 4 << 20

    def handler(req, conn):
        conn.send(f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nCache-Control: max-age=60\r\n"
                  f"Content-Length: {n}\r\n\r\n".encode())
        conn.send(body_of(n))
        return True

    b = backend_factory(handler)
    text = site(b.address, 'cache: {zone: z, valid: {"200": 1m}}')
    p = proxyd_factory(global_settings=f"cache_zones:\n  z: {{path: {tmp_path}/cz, max_size: 64m, memory: 1m}}\n",
                       sites=[text], workers=1)
    for i in range(2):
        s = connect(p.port, timeout=30)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(request_bytes("GET", "/x", HOST, [("Connection", "close")]))
        head = read_head(s).decode("latin-1").lower()
        got = bytearray(slow_read(s, 0.5)) if i == 0 else bytearray()
        got += read_all(s, n)
        s.close()
        assert ("x-cache-status: miss" if i == 0 else "x-cache-status: hit") in head, head
        assert hashlib.sha256(got).digest() == hashlib.sha256(body_of(n)).digest()
    m = metrics(p)
    assert m["proxyd_buffering_responses_total"] == 1 and m["proxyd_buffering_file_bytes"] == 0
    assert len(b.requests) == 1
