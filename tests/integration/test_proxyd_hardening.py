"""Request-level defences of issue 17 that live in the route phase (http/phases.c and
common/route.c): an empty Host on HTTP/1.1 is refused, TRACE is refused unless a route names
it, and over TLS a request for another site than the SNI named gets 421."""
import pytest

from proxyd_fixtures import backend_factory, http, proxyd_factory, raw_exchange  # noqa: F401
from tls_fixtures import https_request, tls_proxyd

SITES = ["""\
site: a
default: true
hosts: [a.test]
tls: {certificate: self-signed}
routes:
  - match: {path_prefix: /trace, methods: [GET, TRACE]}
    return: {status: 200, body: "traced"}
  - match: {path_prefix: /}
    return: {status: 200, body: "site a"}
""", """\
site: b
hosts: [b.test]
tls: {certificate: self-signed}
routes:
  - match: {path_prefix: /}
    return: {status: 200, body: "site b"}
"""]


@pytest.fixture
def p(proxyd_factory):
    return tls_proxyd(proxyd_factory, SITES)


def status_of(raw):
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else None


def test_empty_host_on_http11_is_400(p):
    assert status_of(raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n")) == 400
    assert status_of(raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n")) == 400


def test_http10_without_host_goes_to_the_default_site(p):
    raw = raw_exchange(p.port, b"GET / HTTP/1.0\r\n\r\n")
    assert status_of(raw) == 200 and raw.endswith(b"site a"), raw


def test_trace_refused_unless_a_route_names_it(p):
    r = http(p.port, method="TRACE", target="/x", host="a.test")
    assert r.status == 405, r
    allow = [m.strip() for m in r.header("Allow").split(",")]
    assert "GET" in allow and "TRACE" not in allow, allow
    r = http(p.port, method="TRACE", target="/trace", host="a.test")
    assert r.status == 200 and r.body == b"traced", r
    r = http(p.port, method="TRACE", target="/", host="b.test")
    assert r.status == 405, r


def test_route_test_agrees_on_trace(p):
    rc, out, err = p.proxyctl("route-test", "http://a.test/x", "-X", "TRACE")
    assert "405" in out + err, (rc, out, err)
    rc, out, err = p.proxyctl("route-test", "http://a.test/trace/1", "-X", "TRACE")
    assert "405" not in out, (rc, out, err)


@pytest.mark.parametrize("sni, host, status", [
    ("a.test", "a.test", 200),
    ("b.test", "b.test", 200),
    ("a.test", "b.test", 421),
    ("b.test", "a.test", 421),
    ("b.test", "B.TEST:443", 200),
    (None, "b.test", 200),  # no SNI: nothing was promised by the certificate choice
])
def test_host_of_another_site_than_the_sni_is_421(p, sni, host, status):
    r = https_request(p.https_port, host=host, sni=sni)
    assert r.status == status, r
    if status == 421:
        assert r.header("Connection") == "close", r


def test_max_connections_is_for_the_node(proxyd_factory):
    """limits.max_connections counts every worker's connections: with 2 workers and a limit of
    4, the fifth open connection gets a 503 it can read (not 8 per node, 4 per worker), and a
    slot freed lets the next one in."""
    import socket
    import time
    from proxyd_fixtures import read_response, request_bytes
    p = proxyd_factory({"limits": {"max_connections": 4}}, sites=[
        "site: a\ndefault: true\nroutes:\n  - match: {path_prefix: /}\n    return: {status: 200, body: a}\n"],
        workers=2)
    held = []
    try:
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
            s.sendall(request_bytes())
            assert read_response(s).status == 200
            held.append(s)
        extra = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        extra.sendall(request_bytes())
        r = read_response(extra)
        assert r.status == 503 and r.header("Retry-After") == "1", r
        extra.close()
        held.pop().close()
        deadline = time.monotonic() + 5
        while True:
            s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
            s.sendall(request_bytes())
            r = read_response(s)
            s.close()
            if r.status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert r.status == 200, r
    finally:
        for s in held:
            s.close()
    log = open(p.error_log).read()
    assert "over limits.max_connections (4 for the node)" in log, log[-2000:]


@pytest.mark.parametrize("buffering", ["buffering: false", "buffering: true"])
def test_client_that_stops_reading_is_a_client_send_timeout(proxyd_factory, backend_factory, buffering):
    """The upstream waits on a client that stopped reading (or, buffered, the spool does): that
    is logged as the client's send timeout (and the connection closed), not as an upstream
    read timeout against the server."""
    import socket
    import time
    from proxyd_fixtures import proxy_site, request_bytes
    body = b"x" * (32 << 20)
    b = backend_factory(lambda req, conn: conn.respond(200, body))
    p = proxyd_factory(sites=[proxy_site("a", b.address, default=True, route_extra=f"timeouts: {{read: 1s}}\n{buffering}")],
                       workers=1)
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        s.sendall(request_bytes())
        deadline = time.monotonic() + 8
        log = ""
        while time.monotonic() < deadline and "stopped reading" not in log:
            time.sleep(0.2)
            log = open(p.error_log).read()
        assert "send timed out after 1000ms: the client stopped reading the response" in log, log[-2000:]
        assert "read timed out" not in log, log[-2000:]
    finally:
        s.close()


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;\x01\r\nhello\r\n0\r\n\r\n",
])
def test_bad_chunk_before_any_byte_is_sent_is_502(proxyd_factory, backend_factory, raw):
    """An upstream body that is broken before any byte of the answer left proxyd is still
    answered 502 (the queued head is taken back), not by an empty close."""
    from proxyd_fixtures import proxy_site

    def h(req, conn):
        conn.send(raw)
        return False
    b = backend_factory(h)
    p = proxyd_factory(sites=[proxy_site("s", b.address, default=True)])
    r = http(p.port, target="/x")
    assert r.status == 502, r
    assert b"hello" not in r.body
    assert "invalid chunked body" in open(p.error_log).read()


def test_refused_heads_are_logged_with_the_reason_at_most_once_a_second(p):
    """400/414/431 say why in the error log, with the client, and a flood of them writes one
    line a second (the rest are counted in the next line)."""
    import time
    for _ in range(20):
        assert status_of(raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a.test\r\nBad Header\r\n\r\n")) == 400
    time.sleep(1.1)
    assert status_of(raw_exchange(p.port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a.test\r\n\r\n")) == 414
    log = open(p.error_log).read()
    lines = [l for l in log.splitlines() if "request refused with" in l]
    assert any("client 127.0.0.1: request refused with 400: " in l for l in lines), log[-2000:]
    assert any(" 414: " in l and "more since the last such line" in l for l in lines), lines
    assert len(lines) < 10, lines


def test_over_max_connections_a_tls_client_is_closed(proxyd_factory):
    """No plain 503 goes to a TLS client (it would read it as a broken record): the
    connection over the node's limit is closed before any handshake, and counted."""
    import socket
    import ssl
    from proxyd_fixtures import read_response, request_bytes
    p = tls_proxyd(proxyd_factory, SITES, settings={"limits": {"max_connections": 1}})
    held = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    try:
        held.sendall(request_bytes(host="a.test"))
        assert read_response(held).status == 200
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            https_request(p.https_port, host="a.test", timeout=3)
        raw = socket.create_connection(("127.0.0.1", p.https_port), timeout=3)
        try:
            assert raw.recv(100) == b""  # closed, no plain-text answer on a TLS port
        except ConnectionResetError:
            pass
        finally:
            raw.close()
    finally:
        held.close()
    assert "over limits.max_connections (1 for the node)" in open(p.error_log).read()
