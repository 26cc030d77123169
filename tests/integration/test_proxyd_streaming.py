"""proxyd streams bodies in bounded memory in both directions, relays chunked and
close-delimited responses intact, and never completes a body the upstream cut short."""
import http.client
import json
import socket
import threading
import time

import pytest

from proxyd_fixtures import (backend_factory, connect, exchange_eof, keepalive_socket, origin_factory,  # noqa: F401
                             parse_response, proxy_site, proxyd_factory, read_response, request_bytes,
                             vm_rss_kib, wait_for)

GIB = 1 << 30
RSS_LIMIT_KIB = 64 * 1024
TRANSFER_TIMEOUT = 300


class RssSampler:
    """Samples the summed VmRSS of proxyd's worker processes every 0.2 s."""

    def __init__(self, proxyd, interval=0.2):
        self.p = proxyd
        self.interval = interval
        self.peak_kib = 0
        self.samples = 0
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop_ev.is_set():
            total = sum(vm_rss_kib(pid) for pid in self.p.worker_pids())
            self.peak_kib = max(self.peak_kib, total)
            self.samples += 1
            self.stop_ev.wait(self.interval)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *a):
        self.stop_ev.set()
        self.t.join(timeout=5)


def report(name, sampler, nbytes, seconds):
    line = (f"{name}: {nbytes} bytes in {seconds:.1f}s ({nbytes / seconds / 1e6:.0f} MB/s), "
            f"worker RSS peak {sampler.peak_kib / 1024:.1f} MiB over {sampler.samples} samples")
    print(line)
    with open("/tmp/proxyd_streaming_report.txt", "a") as f:
        f.write(line + "\n")


@pytest.fixture
def stream_env(proxyd_factory, origin_factory):
    origin = origin_factory(echo=False)
    p = proxyd_factory(sites=[proxy_site("big", origin.address, default=True,
                                         route_extra="timeouts: {read: 60s, send: 60s}")])
    return p


def test_download_1gib_bounded_memory(stream_env):
    p = stream_env
    s = connect(p.port, timeout=30)
    buf = bytearray(1 << 20)
    with RssSampler(p) as sampler:
        t0 = time.monotonic()
        s.sendall(request_bytes("GET", f"/bytes/{GIB}", "big.test", [("Connection", "close")]))
        head = b""
        while b"\r\n\r\n" not in head:
            d = s.recv(4096)
            assert d, head
            head += d
        h, rest = head.split(b"\r\n\r\n", 1)
        r = parse_response(h + b"\r\n\r\n")
        assert r.status == 200, h
        assert r.header("content-length") == str(GIB), h
        got = len(rest)
        deadline = t0 + TRANSFER_TIMEOUT
        while got < GIB and time.monotonic() < deadline:
            n = s.recv_into(buf)
            if n == 0:
                break
            got += n
        elapsed = time.monotonic() - t0
    s.close()
    report("download 1 GiB", sampler, got, elapsed)
    assert got == GIB
    assert sampler.peak_kib < RSS_LIMIT_KIB, f"worker RSS peak {sampler.peak_kib} KiB"


def gen_body(total, chunk=1 << 20):
    block = b"u" * chunk
    left = total
    while left:
        n = min(left, chunk)
        yield block[:n]
        left -= n


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_upload_1gib_bounded_memory(stream_env, framing):
    p = stream_env
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=60)
    with RssSampler(p) as sampler:
        t0 = time.monotonic()
        if framing == "content-length":
            conn.request("POST", "/sink", body=gen_body(GIB), headers={"Host": "big.test", "Content-Length": str(GIB)})
        else:
            conn.request("POST", "/sink", body=gen_body(GIB), headers={"Host": "big.test"}, encode_chunked=True)
        resp = conn.getresponse()
        body = resp.read()
        elapsed = time.monotonic() - t0
    conn.close()
    report(f"upload 1 GiB ({framing})", sampler, GIB, elapsed)
    assert resp.status == 200, body
    assert json.loads(body) == {"received": GIB}
    assert sampler.peak_kib < RSS_LIMIT_KIB, f"worker RSS peak {sampler.peak_kib} KiB"


# ---- chunked, close-delimited, truncated ----------------------------------------------------

CHUNKS = [b"a", b"hello world\n", b"x" * 5000, b"", b"\r\n0\r\n\r\n" * 3, b"y" * 70000, b"end"]
WHOLE = b"".join(CHUNKS)


def chunked_handler(req, conn):
    if req.target.startswith("/chunked"):
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n")
        for c in CHUNKS:
            if c:
                conn.send(b"%x;ext=1\r\n" % len(c) + c + b"\r\n")
                time.sleep(0.01)
        conn.send(b"0\r\nX-Trailer: t\r\n\r\n")
        return True
    if req.target.startswith("/close-delimited"):
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n" + WHOLE)
        return False
    if req.target.startswith("/cut-length"):
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"z" * 50000)
        time.sleep(0.2)
        return False
    if req.target.startswith("/cut-chunked"):
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1000\r\n" + b"q" * 4096 + b"\r\n"
                  + b"1000\r\n" + b"q" * 100)
        time.sleep(0.2)
        return False
    if req.target.startswith("/length"):
        return conn.respond(200, WHOLE)
    return conn.respond(404, b"no")


@pytest.fixture
def chunk_env(proxyd_factory, backend_factory):
    b = backend_factory(chunked_handler)
    p = proxyd_factory(sites=[proxy_site("ch", b.address, default=True)])
    return p


def test_chunked_response_relayed_intact(chunk_env):
    s = keepalive_socket(chunk_env.port)
    try:
        for i in range(2):  # twice on one connection: the framing really ended
            s.sendall(request_bytes("GET", f"/chunked{i}", "ch.test"))
            r = read_response(s)
            assert r.status == 200
            assert r.complete and r.body == WHOLE
            assert "chunked" in r.header("transfer-encoding", "").lower() or r.header("content-length") == str(len(WHOLE))
    finally:
        s.close()


def test_close_delimited_upstream_body_relayed_complete(chunk_env):
    s = keepalive_socket(chunk_env.port)
    try:
        s.sendall(request_bytes("GET", "/close-delimited", "ch.test"))
        r = read_response(s)
        assert r.status == 200 and r.complete and r.body == WHOLE
        # HTTP/1.1 client: re-framed, so the client connection can stay open.
        s.sendall(request_bytes("GET", "/length", "ch.test"))
        r = read_response(s)
        assert r.body == WHOLE
    finally:
        s.close()


@pytest.mark.parametrize("path", ["/cut-length", "/cut-chunked"])
def test_upstream_closing_mid_body_closes_client(chunk_env, path):
    out, eof = exchange_eof(chunk_env.port, request_bytes("GET", path, "ch.test"), timeout=5)
    assert eof, "proxyd kept the client connection open after the upstream cut the body"
    r = parse_response(out, eof=False)
    assert r is not None and r.status == 200, out[:300]
    assert not r.complete, f"client saw a complete body ({len(r.body)} bytes) for a truncated upstream response"
    if path == "/cut-length":
        assert len(r.body) < 100000 and r.header("content-length") == "100000"
    else:
        assert len(r.body) < 8192
    assert wait_for(lambda: "closed after" in chunk_env.error_log_text(), 3), chunk_env.error_log_text()


@pytest.mark.parametrize("path", ["/chunked", "/close-delimited", "/length"])
def test_http10_client_gets_close_delimited_or_length_body(chunk_env, path):
    out, eof = exchange_eof(chunk_env.port, request_bytes("GET", path, "ch.test", version="HTTP/1.0"), timeout=5)
    assert eof, "HTTP/1.0 client without keep-alive: proxyd must close"
    r = parse_response(out, eof=True)
    assert r is not None and r.status == 200, out[:300]
    assert "transfer-encoding" not in r.headers, r.header_list   # no chunked coding for HTTP/1.0
    assert r.body == WHOLE
    if "content-length" in r.headers:
        assert r.header("content-length") == str(len(WHOLE))


@pytest.mark.parametrize("buffering", ["buffering: false", "buffering_max: 8m"])
def test_slow_reader_download_bounded_memory(proxyd_factory, origin_factory, buffering):
    """A client that does not read: proxyd must stop reading the upstream (backpressure),
    at once without buffering, after buffering_max spooled to a file with it."""
    origin = origin_factory(echo=False)
    p = proxyd_factory(sites=[proxy_site("big", origin.address, default=True,
                                         route_extra=f"timeouts: {{read: 60s, send: 60s}}\n{buffering}")])
    s = connect(p.port, timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    with RssSampler(p) as sampler:
        s.sendall(request_bytes("GET", f"/bytes/{512 << 20}", "big.test", [("Connection", "close")]))
        time.sleep(3)   # not reading
        got = 0
        buf = bytearray(1 << 20)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and got < (8 << 20):
            n = s.recv_into(buf)
            if n == 0:
                break
            got += n
    s.close()
    assert got >= (8 << 20)
    assert sampler.peak_kib < RSS_LIMIT_KIB, f"worker RSS peak {sampler.peak_kib} KiB"
