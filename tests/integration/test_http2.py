"""HTTP/2 to clients (SPEC.md §7, §9 "HTTP/2"; issue 16): ALPN h2 on TLS listeners and prior
knowledge on plain ones, every route action over h2 (proxy with small and large bodies, static
with a large file, return, redirect), headers and the security preset, allow (403), max_body
(413), rate limits (429), flow control (a slow reader of one stream does not stall another),
GOAWAY when draining with the stream in flight finished, the access log and metrics by
protocol, and the attacks refused and counted with the worker staying healthy: rapid reset,
CONTINUATION flood, HPACK bomb, SETTINGS and PING floods, zero-window stall, oversize headers,
invalid pseudo-headers and connection-specific fields.

Clients: curl --http2 / --http2-prior-knowledge, nghttp (nghttp2-client), and python3-h2
(h2, hyperframe, hpack) for raw frames.  Every process started is stopped by PID.
"""
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest

h2 = pytest.importorskip("h2")
import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import h2.exceptions  # noqa: E402
import h2.settings  # noqa: E402
import hpack  # noqa: E402
import hyperframe.frame as hf  # noqa: E402

from proxyd_fixtures import ModuleEnv, http, proxyd_factory, backend_factory, vm_rss_kib, wait_for  # noqa: F401,E402
from tls_fixtures import tls_proxyd, wait_tls  # noqa: E402

CURL = shutil.which("curl")
CHROMIUM = shutil.which("chromium")
PAGE_RESOURCES = 50
NGHTTP = shutil.which("nghttp")
HOST = "h2.test"
BIG = 4 * 1024 * 1024
ENHANCE_YOUR_CALM = 0xB
PROTOCOL_ERROR = 0x1
CANCEL = 0x8


# ---- a client on python3-h2 -----------------------------------------------------------------

def connect(port, tls=True, alpn=("h2",)):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if not tls:
        return s
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(list(alpn))
    return ctx.wrap_socket(s, server_hostname=HOST)


class Resp:
    def __init__(self):
        self.status = None
        self.headers = []
        self.body = bytearray()
        self.ended = False
        self.reset = None

    def header(self, name):
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def __repr__(self):
        return f"<Resp {self.status} {self.headers} {bytes(self.body[:200])!r} ended={self.ended} reset={self.reset}>"


class H2Client:
    """One HTTP/2 connection driven by python3-h2; streams in `slow` are not given window."""

    def __init__(self, port, tls=True, settings=None, host=HOST):
        self.sock = connect(port, tls)
        self.tls = tls
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.flush()
        self.host = host
        self.resp = {}
        self.slow = set()
        self.terminated = None
        self.closed = False

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path, method="GET", body=None, headers=(), end=True):
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", "https" if self.tls else "http"), (":authority", self.host),
                (":path", path)] + list(headers)
        self.resp[sid] = Resp()
        self.conn.send_headers(sid, hdrs, end_stream=body is None and end)
        self.flush()
        if body is not None:
            self.send_body(sid, body, end)
        return sid

    def send_body(self, sid, body, end=True, timeout=20):
        off, deadline = 0, time.monotonic() + timeout
        while off < len(body) and time.monotonic() < deadline and not self.closed:
            if self.resp[sid].reset is not None or self.resp[sid].ended:
                return
            w = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size, len(body) - off)
            if w > 0:
                self.conn.send_data(sid, body[off:off + w])
                off += w
                self.flush()
            else:
                self.read_once(1.0)
        if end and not self.closed and self.resp[sid].reset is None and not self.resp[sid].ended:
            self.conn.end_stream(sid)
            self.flush()

    def read_once(self, timeout=5.0):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 16)
        except socket.timeout:
            return False
        except (ConnectionResetError, ssl.SSLError, OSError):
            data = b""
        if not data:
            self.closed = True
            return False
        for ev in self.conn.receive_data(data):
            self.handle(ev)
        self.flush()
        return True

    def handle(self, ev):
        r = self.resp.get(getattr(ev, "stream_id", None))
        if isinstance(ev, h2.events.ResponseReceived):
            r.headers = ev.headers
            r.status = int(dict(ev.headers)[":status"])
        elif isinstance(ev, h2.events.DataReceived):
            r.body += ev.data
            if ev.stream_id not in self.slow:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            else:
                self.conn.increment_flow_control_window(ev.flow_controlled_length)
        elif isinstance(ev, h2.events.StreamEnded):
            r.ended = True
        elif isinstance(ev, h2.events.StreamReset):
            if r is not None:
                r.reset = ev.error_code
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.terminated = ev

    def wait(self, sid, timeout=15.0):
        r = self.resp[sid]
        deadline = time.monotonic() + timeout
        while not (r.ended or r.reset is not None or self.closed) and time.monotonic() < deadline:
            self.read_once(0.5)
        return r

    def wait_until(self, pred, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not pred() and not self.closed and time.monotonic() < deadline:
            self.read_once(0.5)
        return pred()

    def get(self, path, **kw):
        timeout = kw.pop("timeout", 15.0)
        return self.wait(self.request(path, **kw), timeout)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class RawH2:
    """Frames written by hand (hyperframe), for what a well-behaved client library refuses to send."""

    def __init__(self, port, tls=True, settings=None):
        self.sock = connect(port, tls)
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + hf.SettingsFrame(0, settings=settings or {}).serialize())
        self.enc = hpack.Encoder()
        self.buf = b""
        self.frames = []
        self.closed = False

    def send(self, *frames):
        try:
            self.sock.sendall(b"".join(f.serialize() if hasattr(f, "serialize") else f for f in frames))
        except OSError:
            self.closed = True

    def head(self, sid, path="/ret", extra=(), end_stream=True):
        block = self.enc.encode([(":method", "GET"), (":scheme", "https"), (":authority", HOST), (":path", path)]
                                + list(extra))
        flags = ["END_HEADERS"] + (["END_STREAM"] if end_stream else [])
        return hf.HeadersFrame(sid, data=block, flags=flags)

    def read(self, timeout=5.0, until=None):
        """Frames until `until(frame)` is true, the connection closes or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.closed:
            while len(self.buf) >= 9:
                f, length = hf.Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) < 9 + length:
                    break
                f.parse_body(memoryview(self.buf[9:9 + length]))
                self.buf = self.buf[9 + length:]
                self.frames.append(f)
                if isinstance(f, hf.SettingsFrame) and "ACK" not in f.flags:
                    self.send(hf.SettingsFrame(0, flags=["ACK"]))
                if until and until(f):
                    return f
            self.sock.settimeout(max(0.05, min(0.5, deadline - time.monotonic())))
            try:
                d = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            except (ConnectionResetError, ssl.SSLError, OSError):
                d = b""
            if not d:
                self.closed = True
                break
            self.buf += d
        return None

    def goaway(self, timeout=5.0):
        return self.read(timeout, until=lambda f: isinstance(f, hf.GoAwayFrame))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---- the shared proxyd -------------------------------------------------------------------------

def site(backend, slow, www, ws):
    return f"""\
site: h2
default: true
hosts: [{HOST}, localhost]
security_headers: strict
tls: {{certificate: self-signed}}
upstreams:
  app: {{servers: [{{address: "{backend.address}"}}]}}
  slow: {{servers: [{{address: "{slow.address}"}}]}}
  ws: {{servers: [{{address: "{ws.address}"}}]}}
routes:
  - match: {{path_prefix: /static/}}
    static: {{root: "{www}"}}
  - match: {{path_prefix: /deny/}}
    allow: [10.0.0.0/8]
    return: {{status: 200, body: "never"}}
  - match: {{path_prefix: /small/}}
    upstream: app
    max_body: 1k
  - match: {{path_prefix: /limited/}}
    upstream: app
    rate_limit: {{zone: h2z, nodelay: true}}
  - match: {{path_prefix: /redir}}
    redirect: {{to: /new, status: 308}}
  - match: {{path_prefix: /ret}}
    return: {{status: 200, body: "hello h2"}}
    headers:
      response: {{set: {{X-Route: r1}}}}
  - match: {{path_prefix: /slow/}}
    upstream: slow
  - match: {{path_prefix: /ws/}}
    upstream: ws
    websocket: true
  - match: {{path_prefix: /}}
    upstream: app
"""


SETTINGS = {
    "http2_cleartext": True,
    "rate_limit_zones": {"h2z": {"rate": "1r/m", "key": "client_ip"}},
    "limits": {"body_timeout": "2s", "h2_max_streams": 100, "drain_timeout": "5s"},
}


def app_handler(req, conn):
    if req.target.startswith("/hop"):
        return conn.respond(200, b"hop", headers=[("Keep-Alive", "timeout=5"), ("Connection", "keep-alive"),
                                                  ("X-Upstream", "1")])
    body = (f"{req.method} {req.target} len={len(req.body)} host={req.header('Host')} "
            f"cookie={req.header_all('Cookie')} te={req.header('Transfer-Encoding')}").encode()
    return conn.respond(200, body, headers=[("X-Upstream", "1")])


def ws_handler(req, conn):
    """A WebSocket upstream over HTTP/1.1: 101, then every byte echoed (no framing needed for the test)."""
    if (req.header("Upgrade") or "").lower() != "websocket":
        return conn.respond(400, b"no upgrade")
    conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
    conn.sock.settimeout(10)
    try:
        while True:
            d = conn.sock.recv(65536)
            if not d or d == b"bye":
                break
            conn.sock.sendall(d)
    except OSError:
        pass
    return False


def slow_handler(req, conn):
    time.sleep(1.5)
    return conn.respond(200, b"slow done")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = ModuleEnv(tmp_path_factory.mktemp("h2"))
    try:
        www = e.tmp / "www"
        (www / "static").mkdir(parents=True)
        e.big = os.urandom(BIG)
        (www / "static" / "big.bin").write_bytes(e.big)
        (www / "static" / "small.txt").write_text("small file\n")
        page = www / "static" / "page"
        page.mkdir()
        (page / "index.html").write_text(
            "<!doctype html><html><head><title>h2 page</title>"
            "<link rel=\"icon\" href=\"data:,\"></head><body>\n"  # no favicon fetch (Chromium makes it apart)
            + "".join(f'<script src="s{i}.js"></script>\n' for i in range(PAGE_RESOURCES))
            + '<p id="n">none</p><script>document.getElementById("n").textContent = "loaded " + window.n;</script>'
            + "</body></html>\n")
        for i in range(PAGE_RESOURCES):
            (page / f"s{i}.js").write_text(f"window.n = (window.n || 0) + 1; /* {i} */\n")
        e.app = e.backend(app_handler)
        e.slowb = e.backend(slow_handler)

        def factory(g, sites=(), workers=1, start=False, check_stderr=True, name=None):
            from proxyd_fixtures import Proxyd
            p = Proxyd(e.tmp, g, sites, workers=workers, check_stderr=check_stderr, name=name or "h2")
            e.proxyds.append(p)
            return p
        e.wsb = e.backend(ws_handler)
        e.p = tls_proxyd(factory, [site(e.app, e.slowb, www, e.wsb)], SETTINGS, workers=1)
        yield e
    finally:
        e.stop()


@pytest.fixture
def p(env):
    yield env.p
    env.check()


def metric(p, name, **labels):
    st, _, body = p.admin("GET", "/metrics")
    assert st == 200
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in body.decode().splitlines():
        if line.startswith(want + " "):
            return int(float(line.split()[-1]))
    return None


def healthy(p):
    """The worker that took the attack still answers, over h2 and HTTP/1.1, and did not restart."""
    pids = p.worker_pids()
    c = H2Client(p.https_port)
    try:
        r = c.get("/ret")
        assert r.status == 200 and bytes(r.body) == b"hello h2", r
    finally:
        c.close()
    assert http(p.port, target="/ret", host=HOST).status == 200
    assert p.worker_pids() == pids


# ---- protocol selection -------------------------------------------------------------------------

@pytest.mark.parametrize("offer, chosen", [(("h2", "http/1.1"), "h2"), (("http/1.1", "h2"), "h2"),
                                           (("http/1.1",), "http/1.1"), (("h2",), "h2")])
def test_alpn_prefers_h2(p, offer, chosen):
    s = connect(p.https_port, alpn=offer)
    try:
        assert s.selected_alpn_protocol() == chosen
    finally:
        s.close()


def test_server_settings_carry_h2_max_streams(p):
    c = H2Client(p.https_port)
    try:
        c.get("/ret")
        assert c.conn.remote_settings.max_concurrent_streams == 100
        assert c.conn.remote_settings.max_header_list_size == 16384
        assert c.conn.remote_settings.enable_push == 0
    finally:
        c.close()


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_http2_over_tls_and_prior_knowledge_on_plain(p):
    out = subprocess.run([CURL, "-sk", "--http2", "-o", "-", "-w", "\n%{http_version} %{http_code}",
                          f"https://localhost:{p.https_port}/ret"], capture_output=True, text=True, timeout=20)
    assert out.stdout.endswith("hello h2\n2 200"), out
    out = subprocess.run([CURL, "-s", "--http2-prior-knowledge", "-o", "-", "-w", "\n%{http_version} %{http_code}",
                          f"http://localhost:{p.port}/ret"], capture_output=True, text=True, timeout=20)
    assert out.stdout.endswith("hello h2\n2 200"), out
    # the same plain port still speaks HTTP/1.1
    r = http(p.port, target="/ret", host=HOST)
    assert r.status == 200 and r.body == b"hello h2"


def test_http2_off_offers_only_http11_and_cleartext_off_is_http11(proxyd_factory):
    q = tls_proxyd(proxyd_factory, [f"site: o\ndefault: true\nhosts: [{HOST}]\ntls: {{certificate: self-signed}}\n"
                                    "routes:\n  - match: {path_prefix: /}\n    return: {status: 200, body: \"o\"}\n"],
                   {"http2": False})
    s = connect(q.https_port, alpn=("h2", "http/1.1"))
    try:
        assert s.selected_alpn_protocol() == "http/1.1"
    finally:
        s.close()
    # prior knowledge on a plain listener without http2_cleartext: HTTP/1.1 refuses the preface
    s = connect(q.port, tls=False)
    try:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        s.settimeout(5)
        assert s.recv(100).startswith(b"HTTP/1.1 ")
    finally:
        s.close()


def test_h2_max_streams_without_http2_is_refused(proxyd_factory, tmp_path):
    from proxyd_fixtures import run_proxyctl
    f = tmp_path / "proxy.yaml"
    f.write_text("http2: false\nlimits:\n  h2_max_streams: 10\n")
    rc, out, err = run_proxyctl("--db", tmp_path / "s.db", "init", "--global", f, cwd=tmp_path)
    assert rc != 0 and "proxy.yaml:3:" in err and "h2_max_streams has no effect" in err, err
    f.write_text("limits:\n  h2_max_streams: 0\n")
    rc, out, err = run_proxyctl("--db", tmp_path / "s2.db", "init", "--global", f, cwd=tmp_path)
    assert rc != 0 and "h2_max_streams" in err, err
    f.write_text("http2: yes please\n")
    rc, out, err = run_proxyctl("--db", tmp_path / "s3.db", "init", "--global", f, cwd=tmp_path)
    assert rc != 0 and "http2" in err, err


def test_dump_shows_http2(p):
    rc, out, err = p.proxyctl("dump")
    assert rc == 0, err
    assert "http2: ALPN h2 on TLS listeners, prior knowledge on plain listeners, max 100 streams per connection" \
        in out, out


# ---- route actions over h2 -------------------------------------------------------------------------

def test_return_redirect_and_404_over_h2(p):
    c = H2Client(p.https_port)
    try:
        r = c.get("/ret")
        assert r.status == 200 and bytes(r.body) == b"hello h2", r
        assert r.header("x-route") == "r1" and r.header("server") == "proxyd", r
        assert r.header("content-length") == "8" and r.header("date"), r
        r = c.get("/redir")
        assert r.status == 308 and r.header("location") == "/new", r
        r = c.get("/ret", method="HEAD")
        assert r.status == 200 and r.header("content-length") == "8" and bytes(r.body) == b"", r
    finally:
        c.close()


def test_security_preset_over_h2_has_hsts(p):
    c = H2Client(p.https_port)
    try:
        r = c.get("/ret")
        assert r.header("strict-transport-security") == "max-age=63072000; includeSubDomains", r
        assert r.header("x-frame-options") == "DENY" and r.header("x-content-type-options") == "nosniff", r
    finally:
        c.close()


def test_proxy_get_host_cookies_and_no_connection_fields(p, env):
    c = H2Client(p.https_port)
    try:
        r = c.get("/echo?q=1", headers=[("cookie", "a=1"), ("cookie", "b=2"), ("user-agent", "h2-test")])
        assert r.status == 200, r
        assert bytes(r.body).startswith(b"GET /echo?q=1 len=0 host=h2.test cookie=['a=1; b=2']"), r
        # the upstream's Connection and Keep-Alive never reach an HTTP/2 client (h2 would refuse them)
        r = c.get("/hop")
        assert r.status == 200 and bytes(r.body) == b"hop", r
        names = [k for k, _ in r.headers]
        assert "connection" not in names and "keep-alive" not in names and "x-upstream" in names, r
    finally:
        c.close()


@pytest.mark.parametrize("size, with_length", [(100, True), (3 * 1024 * 1024, True), (3 * 1024 * 1024 + 7, False)])
def test_proxy_post_bodies(p, env, size, with_length):
    body = os.urandom(size)
    c = H2Client(p.https_port)
    try:
        hdrs = [("content-length", str(size))] if with_length else []
        r = c.wait(c.request("/post", method="POST", body=body, headers=hdrs), timeout=30)
        assert r.status == 200, r
        assert f"POST /post len={size} ".encode() in bytes(r.body), r
        got = [q for q in env.app.requests if q.target == "/post"][-1]
        assert got.body == body
        if not with_length:
            assert got.header("Transfer-Encoding") == "chunked"
    finally:
        c.close()


def test_static_small_large_and_concurrent(p, env):
    c = H2Client(p.https_port)
    try:
        sids = [c.request("/static/big.bin") for _ in range(3)] + [c.request("/static/small.txt")]
        for sid in sids:
            r = c.wait(sid, timeout=30)
            assert r.status == 200 and r.ended, r
        for sid in sids[:3]:
            assert bytes(c.resp[sid].body) == env.big
        assert bytes(c.resp[sids[3]].body) == b"small file\n"
    finally:
        c.close()


def test_many_streams_on_one_connection(p):
    c = H2Client(p.https_port)
    try:
        sids = [c.request(f"/ret?{i}") for i in range(90)] + [c.request(f"/s{i}") for i in range(10)]
        for sid in sids:
            r = c.wait(sid)
            assert r.status == 200, r
    finally:
        c.close()


@pytest.mark.skipif(NGHTTP is None, reason="nghttp (nghttp2-client) is not installed")
def test_nghttp_fetches_many_resources_on_one_connection(p):
    urls = [f"https://localhost:{p.https_port}/ret?{i}" for i in range(20)] + \
           [f"https://localhost:{p.https_port}/static/small.txt", f"https://localhost:{p.https_port}/x"]
    out = subprocess.run([NGHTTP, "-n", "--stat", *urls], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out
    assert out.stdout.count(" 200 ") >= 22 or out.stdout.count("200") >= 22, out.stdout


# ---- access, limits ----------------------------------------------------------------------------------

def test_allow_max_body_and_rate_limit_over_h2(p):
    c = H2Client(p.https_port)
    try:
        assert c.get("/deny/x").status == 403
        r = c.wait(c.request("/small/x", method="POST", body=b"x" * 2048, headers=[("content-length", "2048")]))
        assert r.status == 413, r
        r = c.wait(c.request("/small/x", method="POST", body=b"x" * 4096))  # no content-length: counted as it comes
        assert r.status == 413 or r.reset is not None, r
        assert c.get("/limited/a").status == 200
        r = c.get("/limited/b")
        assert r.status == 429 and r.header("retry-after"), r
        assert c.get("/ret").status == 200  # the connection goes on
    finally:
        c.close()


def test_access_log_and_metrics_by_protocol(p):
    before = metric(p, "proxyd_requests_by_protocol_total", protocol="HTTP/2.0") or 0
    c = H2Client(p.https_port)
    try:
        assert c.get("/ret?logged-h2").status == 200
    finally:
        c.close()
    assert (metric(p, "proxyd_requests_by_protocol_total", protocol="HTTP/2.0") or 0) >= before + 1
    assert metric(p, "proxyd_requests_by_protocol_total", protocol="HTTP/1.1") is not None

    def logged():
        return [l for l in p.access_log_lines() if "logged-h2" in l]
    deadline = time.monotonic() + 5
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert logged() and '"protocol":"HTTP/2.0"' in logged()[0], logged()


# ---- flow control --------------------------------------------------------------------------------------

def test_slow_reader_does_not_stall_another_stream_nor_grow_memory(p, env):
    c = H2Client(p.https_port)
    try:
        slow = c.request("/static/big.bin")
        c.slow.add(slow)
        assert c.wait_until(lambda: len(c.resp[slow].body) >= 65535, 10)
        pid = p.worker_pids()[0]
        rss0 = vm_rss_kib(pid)
        for i in range(5):
            r = c.get(f"/ret?while-slow-{i}")
            assert r.status == 200, r
        big2 = c.request("/static/big.bin")
        r = c.wait(big2, timeout=30)
        assert r.ended and bytes(r.body) == env.big
        # the slow stream got only its window, and proxyd holds only bounded buffers for it
        assert len(c.resp[slow].body) <= 65535 and not c.resp[slow].ended
        assert vm_rss_kib(pid) - rss0 < 16 * 1024
        # opening its window lets it finish
        c.slow.discard(slow)
        c.conn.increment_flow_control_window(BIG, stream_id=slow)
        c.flush()
        r = c.wait(slow, timeout=30)
        assert r.ended and bytes(r.body) == env.big
    finally:
        c.close()


def test_zero_window_stall_is_reset_and_counted(p):
    before = metric(p, "proxyd_http2_refused_total", reason="zero_window_stall")
    c = H2Client(p.https_port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    try:
        sid = c.request("/static/big.bin")
        r = c.wait(sid, timeout=8)
        assert r.reset == CANCEL and r.status == 200 and len(r.body) == 0, r
        assert metric(p, "proxyd_http2_refused_total", reason="zero_window_stall") == before + 1
    finally:
        c.close()
    healthy(p)


# ---- attacks ---------------------------------------------------------------------------------------------

def test_rapid_reset_gets_goaway_enhance_your_calm(p):
    before = metric(p, "proxyd_http2_refused_total", reason="rapid_reset")
    c = RawH2(p.https_port)
    try:
        frames = []
        for i in range(600):
            sid = 1 + 2 * i
            frames += [c.head(sid, f"/ret?r{i}"), hf.RstStreamFrame(sid, error_code=CANCEL)]
        c.send(*frames)
        g = c.goaway(10)
        assert g is not None and g.error_code == ENHANCE_YOUR_CALM, c.frames[-5:]
    finally:
        c.close()
    assert metric(p, "proxyd_http2_refused_total", reason="rapid_reset") == before + 1
    assert wait_for(lambda: metric(p, "proxyd_connections_closed_total", reason="http2_abuse") >= 1, 5)
    healthy(p)


def test_continuation_flood_closes_the_connection(p):
    before = metric(p, "proxyd_http2_refused_total", reason="continuation_flood")
    c = RawH2(p.https_port)
    try:
        block = c.enc.encode([(":method", "GET"), (":scheme", "https"), (":authority", HOST), (":path", "/ret")])
        frames = [hf.HeadersFrame(1, data=block, flags=["END_STREAM"])]
        frames += [hf.ContinuationFrame(1, data=c.enc.encode([("x-a", "b" * 10)])) for _ in range(200)]
        c.send(*frames)
        c.read(10)
        assert c.closed
        assert not any(isinstance(f, hf.HeadersFrame) for f in c.frames), "no response to the flood"
    finally:
        c.close()
    assert metric(p, "proxyd_http2_refused_total", reason="continuation_flood") == before + 1
    healthy(p)


def test_hpack_bomb_is_refused(p):
    before = metric(p, "proxyd_http2_refused_total", reason="hpack_bomb")
    c = RawH2(p.https_port)
    try:
        # one 4000-byte field into the dynamic table (index 62), then referenced 3000 times: 12 MB decoded
        first = c.enc.encode([(":method", "GET"), (":scheme", "https"), (":authority", HOST), (":path", "/ret"),
                              ("x-bomb", "a" * 4000)])
        block = first + bytes([0x80 | 62]) * 3000
        c.send(hf.HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]))
        g = c.goaway(10)
        assert g is not None and g.error_code == ENHANCE_YOUR_CALM, c.frames
        assert not any(isinstance(f, hf.HeadersFrame) and f.stream_id == 1 for f in c.frames)
    finally:
        c.close()
    assert metric(p, "proxyd_http2_refused_total", reason="hpack_bomb") == before + 1
    healthy(p)


@pytest.mark.parametrize("kind", ["settings", "ping"])
def test_control_frame_flood_closes_the_connection(p, kind):
    before = metric(p, "proxyd_http2_refused_total", reason="control_frame_flood")
    c = RawH2(p.https_port)
    try:
        # the client never reads: the acks would pile up without the bound
        f = hf.SettingsFrame(0, settings={}) if kind == "settings" else hf.PingFrame(0, opaque_data=b"12345678")
        for _ in range(20):
            c.send(*([f] * 1000))
            if c.closed:
                break
        deadline = time.monotonic() + 10
        while metric(p, "proxyd_http2_refused_total", reason="control_frame_flood") == before and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(p, "proxyd_http2_refused_total", reason="control_frame_flood") == before + 1
    finally:
        c.close()
    healthy(p)


def test_settings_with_too_many_entries_is_refused(p):
    before = metric(p, "proxyd_http2_refused_total", reason="settings_flood")
    c = RawH2(p.https_port)
    try:
        body = b"".join(int.to_bytes(0x4, 2, "big") + int.to_bytes(65535, 4, "big") for _ in range(100))
        frame = len(body).to_bytes(3, "big") + b"\x04\x00" + b"\x00\x00\x00\x00" + body
        c.send(frame)
        c.read(5)
        assert c.closed or any(isinstance(f, hf.GoAwayFrame) for f in c.frames)
    finally:
        c.close()
    assert metric(p, "proxyd_http2_refused_total", reason="settings_flood") == before + 1
    healthy(p)


def test_oversize_headers_get_431(p):
    before = metric(p, "proxyd_http2_refused_total", reason="oversize_headers")
    c = H2Client(p.https_port)
    try:
        r = c.get("/ret", headers=[(f"x-big-{i}", "v" * 4000) for i in range(6)])
        assert r.status == 431, r
        assert c.get("/ret").status == 200  # the connection goes on
    finally:
        c.close()
    assert metric(p, "proxyd_http2_refused_total", reason="oversize_headers") == before + 1
    healthy(p)


@pytest.mark.parametrize("fields", [
    [(":method", "GET"), (":scheme", "https"), (":authority", HOST)],                             # no :path
    [(":method", "GET"), (":scheme", "https"), (":authority", HOST), (":path", "/"), (":foo", "x")],  # unknown
    [(":method", "GET"), (":scheme", "https"), (":authority", HOST), (":path", "/"), ("X-Upper", "x")],
    [(":method", "GET"), (":scheme", "https"), (":authority", HOST), (":path", "/"), ("connection", "close")],
    [(":method", "GET"), (":scheme", "https"), (":authority", HOST), (":path", "/"), ("te", "gzip")],
    [(":method", "GET"), (":scheme", "https"), (":authority", HOST), ("x-a", "1"), (":path", "/")],  # order
], ids=["no-path", "unknown-pseudo", "uppercase", "connection", "te-gzip", "pseudo-after-regular"])
def test_invalid_heads_are_reset(p, fields):
    before = metric(p, "proxyd_http2_refused_total", reason="invalid_headers")
    c = RawH2(p.https_port)
    try:
        block = c.enc.encode(fields)
        c.send(hf.HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]))
        f = c.read(5, until=lambda f: isinstance(f, (hf.RstStreamFrame, hf.GoAwayFrame, hf.HeadersFrame)))
        assert isinstance(f, (hf.RstStreamFrame, hf.GoAwayFrame)), c.frames
        assert f.error_code == PROTOCOL_ERROR, f
    finally:
        c.close()
    assert metric(p, "proxyd_http2_refused_total", reason="invalid_headers") == before + 1
    healthy(p)


def test_te_trailers_is_accepted(p):
    c = H2Client(p.https_port)
    try:
        assert c.get("/ret", headers=[("te", "trailers")]).status == 200
    finally:
        c.close()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_headless_chromium_loads_a_page_of_50_resources_over_one_h2_connection(p, tmp_path):
    before_h1 = metric(p, "proxyd_requests_by_protocol_total", protocol="HTTP/1.1")
    netlog = tmp_path / "netlog.json"
    cmd = [CHROMIUM, f"--log-net-log={netlog}", "--headless=new", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors",
           "--no-first-run", "--disable-extensions", "--disable-background-networking", "--disable-sync",
           "--disable-component-update", "--disable-default-apps", f"--user-data-dir={tmp_path / 'chromium'}",
           "--virtual-time-budget=10000", "--dump-dom", f"https://localhost:{p.https_port}/static/page/index.html"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert f'<p id="n">loaded {PAGE_RESOURCES}</p>'.encode() in out, (out[-500:], err[-2000:])

    def page_lines():
        return [l for l in p.access_log_lines() if "/static/page/" in l]
    assert wait_for(lambda: len(page_lines()) >= PAGE_RESOURCES + 1, 5), page_lines()
    assert all('"protocol":"HTTP/2.0"' in l and '"status":200' in l for l in page_lines()), page_lines()
    assert metric(p, "proxyd_requests_by_protocol_total", protocol="HTTP/1.1") == before_h1
    # Chromium's own record: one HTTP/2 session carried every request of the page (it may open
    # a spare connection while racing ::1 and 127.0.0.1, which carries nothing)
    log = json.loads(netlog.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    per_session = {}
    for ev in log["events"]:
        if names.get(ev["type"]) == "HTTP2_SESSION_SEND_HEADERS":
            per_session[ev["source"]["id"]] = per_session.get(ev["source"]["id"], 0) + 1
    assert list(per_session.values()) == [PAGE_RESOURCES + 1], per_session


# ---- WebSocket over HTTP/2 (RFC 8441) --------------------------------------------------------------

WS_HEAD = [(":protocol", "websocket"), ("sec-websocket-version", "13")]


def ws_connect(c, path):
    sid = c.conn.get_next_available_stream_id()
    c.resp[sid] = Resp()
    c.conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                              (":authority", HOST), (":path", path), ("sec-websocket-version", "13")])
    c.flush()
    return sid


def test_websocket_over_h2_tunnels_to_an_http11_upgrade(p, env):
    c = H2Client(p.https_port)
    try:
        assert c.get("/ret").status == 200  # the server's SETTINGS are in
        assert c.conn.remote_settings.enable_connect_protocol == 1
        sid = ws_connect(c, "/ws/chat")
        assert c.wait_until(lambda: c.resp[sid].status is not None, 5), c.resp[sid]
        r = c.resp[sid]
        assert r.status == 200 and r.header("sec-websocket-accept") is None, r
        c.conn.send_data(sid, b"hello over h2")
        c.flush()
        assert c.wait_until(lambda: bytes(r.body) == b"hello over h2", 5), r
        up = [q for q in env.wsb.requests if q.target == "/ws/chat"][-1]
        assert up.method == "GET" and up.header("Upgrade") == "websocket", up.raw_head
        assert up.header("Connection").lower() == "upgrade" and up.header("Sec-WebSocket-Version") == "13"
        assert len(up.header("Sec-WebSocket-Key")) == 24 and up.header("Sec-WebSocket-Key").endswith("==")
        # another stream on the same connection is served meanwhile
        assert c.get("/ret").status == 200
        # the upstream ends the tunnel: the stream ends
        c.conn.send_data(sid, b"bye")
        c.flush()
        assert c.wait_until(lambda: r.ended or r.reset is not None, 5), r
    finally:
        c.close()


def test_extended_connect_on_a_route_without_websocket_is_refused(p):
    c = H2Client(p.https_port)
    try:
        assert c.get("/ret").status == 200
        sid = ws_connect(c, "/ret")
        r = c.wait(sid)
        assert r.status == 501, r
    finally:
        c.close()


# ---- timeouts and draining --------------------------------------------------------------------------------

def test_silent_h2_connection_hits_the_header_timeout(proxyd_factory):
    q = tls_proxyd(proxyd_factory, [f"site: t\ndefault: true\nhosts: [{HOST}]\ntls: {{certificate: self-signed}}\n"
                                    "routes:\n  - match: {path_prefix: /}\n    return: {status: 200, body: \"t\"}\n"],
                   {"limits": {"header_timeout": "1s", "keepalive_timeout": "2s"}})
    s = connect(q.https_port)
    t0 = time.monotonic()
    s.settimeout(6)
    try:
        while s.recv(1 << 16):
            pass
    except (ConnectionResetError, ssl.SSLError, OSError):
        pass
    assert 0.5 < time.monotonic() - t0 < 4
    s.close()
    # an idle connection after a request: GOAWAY at the keep-alive timeout
    c = H2Client(q.https_port)
    try:
        assert c.get("/").status == 200
        t0 = time.monotonic()
        assert c.wait_until(lambda: c.terminated is not None or c.closed, 6)
        assert 1.5 < time.monotonic() - t0 < 5
    finally:
        c.close()
    # a head block that never ends (HEADERS without END_HEADERS, no CONTINUATION) holds nothing for long
    c = RawH2(q.https_port)
    try:
        c.read(2, until=lambda f: isinstance(f, hf.SettingsFrame) and "ACK" not in f.flags)  # acked now, not mid-block
        blk = c.enc.encode([(":method", "GET"), (":scheme", "https"), (":authority", HOST), (":path", "/")])
        c.send(hf.HeadersFrame(1, data=blk, flags=["END_STREAM"]))
        t0 = time.monotonic()
        c.read(6)
        assert c.closed and time.monotonic() - t0 < 4
    finally:
        c.close()
    assert metric(q, "proxyd_connections_closed_total", reason="keepalive_timeout") >= 1
    st, _, body = q.admin("GET", "/metrics")
    assert metric(q, "proxyd_connections_closed_total", reason="header_timeout") >= 2, [l for l in body.decode().splitlines() if "closed_total{" in l and not l.endswith(" 0")]


def test_goaway_on_graceful_stop_finishes_the_stream_in_flight(proxyd_factory, backend_factory):
    slowb = backend_factory(slow_handler)
    q = tls_proxyd(proxyd_factory, [f"site: g\ndefault: true\nhosts: [{HOST}]\ntls: {{certificate: self-signed}}\n"
                                    f"upstreams: {{s: {{servers: [{{address: \"{slowb.address}\"}}]}}}}\n"
                                    "routes:\n  - match: {path_prefix: /}\n    upstream: s\n"],
                   {"limits": {"drain_timeout": "10s"}})
    # raw frames: python3-h2 stops reading at a GOAWAY, which is when the stream must still finish
    c = RawH2(q.https_port)
    try:
        c.send(c.head(1, "/slow"))
        assert wait_for(lambda: len(slowb.requests) == 1, 5)
        os.kill(q.pid, signal.SIGTERM)
        g = c.goaway(5)
        assert g is not None and g.error_code == 0 and g.last_stream_id == 1, c.frames
        end = c.read(10, until=lambda f: isinstance(f, hf.DataFrame) and "END_STREAM" in f.flags)
        assert end is not None and end.stream_id == 1, c.frames
        body = b"".join(bytes(f.data) for f in c.frames if isinstance(f, hf.DataFrame))
        assert body == b"slow done"
        c.read(5)
        assert c.closed, "the connection closes once its last stream is done"
    finally:
        c.close()
    q.proc.wait(timeout=15)
    q.assert_no_sanitizer()


def test_reload_that_changes_the_h2_settings_sends_goaway(proxyd_factory, backend_factory):
    """A reload is in place; a session whose announced settings change is told GOAWAY, and its
    stream in flight finishes (a reload that leaves them alone leaves the session alone)."""
    slowb = backend_factory(slow_handler)
    q = tls_proxyd(proxyd_factory, [f"site: g\ndefault: true\nhosts: [{HOST}]\ntls: {{certificate: self-signed}}\n"
                                    f"upstreams: {{s: {{servers: [{{address: \"{slowb.address}\"}}]}}}}\n"
                                    "routes:\n  - match: {path_prefix: /}\n    upstream: s\n"],
                   {"limits": {"h2_max_streams": 50, "drain_timeout": "10s"}})
    c = RawH2(q.https_port)
    try:
        c.send(c.head(1, "/slow"))
        assert wait_for(lambda: len(slowb.requests) == 1, 5)
        rc, out, err = q.proxyctl("reload")  # the same generation again: nothing changes
        assert rc == 0, err
        assert c.goaway(1) is None
        yaml_path = q.dir / "proxy.yaml"
        yaml_path.write_text(yaml_path.read_text().replace("h2_max_streams: 50", "h2_max_streams: 60"))
        rc, out, err = q.proxyctl("init", "--global", str(yaml_path))
        assert rc == 0, err
        rc, out, err = q.proxyctl("reload")
        assert rc == 0, err
        g = c.goaway(5)
        assert g is not None and g.error_code == 0 and g.last_stream_id == 1, c.frames
        # The stream's end may have come before the GOAWAY (a slow reload on a loaded machine).
        ended = lambda f: isinstance(f, hf.DataFrame) and "END_STREAM" in f.flags  # noqa: E731
        end = next((f for f in c.frames if ended(f)), None) or c.read(10, until=ended)
        assert end is not None and end.stream_id == 1, c.frames
    finally:
        c.close()
    c = H2Client(q.https_port)
    try:
        assert c.get("/x").status == 200
        assert c.conn.remote_settings.max_concurrent_streams == 60
    finally:
        c.close()


def test_compression_over_h2(proxyd_factory, backend_factory, tmp_path):
    """The compression filter sits above the HTTP/2 session like above HTTP/1.1: a large text file
    and a proxied answer come gzip- and br-encoded over h2, decode to the original, and a client
    that takes no coding gets the identity body."""
    import gzip
    brotli = pytest.importorskip("brotli")
    www = tmp_path / "cwww"
    (www / "t").mkdir(parents=True)
    text = "".join(f"line {i} of a compressible text file\n" for i in range(20000)).encode()
    (www / "t" / "big.txt").write_bytes(text)
    b = backend_factory(lambda req, conn: conn.respond(200, text[:100000], headers=[("Content-Type", "text/html")]))
    q = tls_proxyd(proxyd_factory, [f"site: c\ndefault: true\nhosts: [{HOST}]\ntls: {{certificate: self-signed}}\n"
                                    f"upstreams: {{a: {{servers: [{{address: \"{b.address}\"}}]}}}}\n"
                                    "compression: {gzip: true, brotli: true}\n"
                                    f"routes:\n  - match: {{path_prefix: /t/}}\n    static: {{root: \"{www}\"}}\n"
                                    "  - match: {path_prefix: /}\n    upstream: a\n"])
    c = H2Client(q.https_port)
    try:
        r = c.get("/t/big.txt", headers=[("accept-encoding", "gzip")], timeout=30)
        assert r.status == 200 and r.header("content-encoding") == "gzip", r
        assert gzip.decompress(bytes(r.body)) == text and len(r.body) < len(text) // 5
        r = c.get("/app", headers=[("accept-encoding", "br")], timeout=30)
        assert r.status == 200 and r.header("content-encoding") == "br", r
        assert brotli.decompress(bytes(r.body)) == text[:100000]
        r = c.get("/t/big.txt", timeout=30)
        assert r.header("content-encoding") is None and bytes(r.body) == text, r
    finally:
        c.close()
