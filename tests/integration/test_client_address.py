"""The client address (SPEC §9, issue 15 items 2 and 3): X-Forwarded-For believed only from
trusted_proxies (the rightmost untrusted address is the client), the PROXY protocol v1 and v2 on
listen entries with proxy_protocol, and limits.max_connections_per_ip; that address is what
$remote_addr, X-Real-IP, the access log, allow, ip_hash and the per-address cap use."""
import json
import socket
import ssl
import struct
import time

import pytest

from proxyd_fixtures import (backend_factory, connect, free_port, http, parse_response,  # noqa: F401
                             proxyd_factory, recv_all, request_bytes, wait_for)

HOST = "ca.test"


def site(backend, extra_routes="", upstream_extra=""):
    return f"""\
site: ca
default: true
hosts: [{HOST}]
upstreams:
  app:
    servers: [{{address: "{backend.address}"}}]
{upstream_extra}routes:
{extra_routes}  - match: {{path_prefix: /}}
    upstream: app
    headers:
      request: {{set: {{X-Client: "$remote_addr"}}}}
"""


ADMIN_ROUTE = """\
  - match: {path_prefix: /admin/}
    upstream: app
    allow: [198.51.100.0/24]
"""


def last(backend):
    return backend.requests[-1]


def log_addrs(p):
    return [json.loads(line)["remote_addr"] for line in p.access_log_lines()]


def closed_without_answer(s, timeout=3.0):
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


# ------------------------------------------------------------------ X-Forwarded-For

def test_xff_from_a_trusted_proxy_names_the_client(proxyd_factory, backend_factory):
    b = backend_factory()
    p = proxyd_factory({"trusted_proxies": ["127.0.0.1/32", "10.0.0.0/8"]}, sites=[site(b, ADMIN_ROUTE)])
    cases = [
        ("203.0.113.5", "203.0.113.5"),
        ("203.0.113.5, 10.1.1.1", "203.0.113.5"),            # trusted hops are skipped
        ("198.51.100.1, 203.0.113.5, 10.1.1.1", "203.0.113.5"),  # the rightmost untrusted wins
        ("10.9.9.9, 10.1.1.1", "10.9.9.9"),                  # all trusted: the leftmost
        ("203.0.113.5:4711", "203.0.113.5"),                 # a port some proxies add
        ("[2001:db8::7]:443", "2001:db8::7"),
        ("2001:db8::8", "2001:db8::8"),
        ("::ffff:203.0.113.9", "203.0.113.9"),               # IPv4-mapped is IPv4
        ("unknown, 10.1.1.1", "10.1.1.1"),                   # not an address: the last believed
        ("203.0.113.5,,", "203.0.113.5"),                    # empty list elements
        ("garbage", "127.0.0.1"),
    ]
    for xff, client in cases:
        r = http(p.port, target="/x", host=HOST, headers=[("X-Forwarded-For", xff)])
        assert r.status == 200, (xff, r.status)
        got = last(b)
        assert (got.header("X-Client"), got.header("X-Real-IP")) == (client, client), xff
        # the chain goes on with the hop that connected to us
        assert got.header("X-Forwarded-For") == f"{xff}, 127.0.0.1"
    assert wait_for(lambda: sorted(log_addrs(p)[-len(cases):]) == sorted(c for _, c in cases)), log_addrs(p)
    # several X-Forwarded-For fields are one list, the last field the nearest hop
    http(p.port, target="/y", host=HOST, headers=[("X-Forwarded-For", "203.0.113.1"), ("X-Forwarded-For", "10.0.0.1")])
    assert last(b).header("X-Client") == "203.0.113.1"
    # allow looks at the client, not at the proxy in front
    assert http(p.port, target="/admin/a", host=HOST, headers=[("X-Forwarded-For", "198.51.100.4")]).status == 200
    assert http(p.port, target="/admin/a", host=HOST, headers=[("X-Forwarded-For", "203.0.113.4")]).status == 403
    assert http(p.port, target="/admin/a", host=HOST).status == 403


def test_xff_from_an_untrusted_peer_is_ignored(proxyd_factory, backend_factory):
    b = backend_factory()
    p = proxyd_factory({"trusted_proxies": ["10.0.0.0/8"]}, sites=[site(b, ADMIN_ROUTE)])
    r = http(p.port, target="/admin/x", host=HOST, headers=[("X-Forwarded-For", "198.51.100.4")])
    assert r.status == 403  # a client cannot talk its way into an allow list
    http(p.port, target="/x", host=HOST, headers=[("X-Forwarded-For", "198.51.100.4")])
    got = last(b)
    assert (got.header("X-Client"), got.header("X-Real-IP"), got.header("X-Forwarded-For")) == \
        ("127.0.0.1", "127.0.0.1", "127.0.0.1")


def test_ip_hash_hashes_the_client(proxyd_factory, backend_factory):
    b1, b2 = backend_factory(), backend_factory()
    s = f"""\
site: ca
default: true
hosts: [{HOST}]
upstreams:
  app:
    balance: ip_hash
    servers: [{{address: "{b1.address}"}}, {{address: "{b2.address}"}}]
routes:
  - match: {{path_prefix: /}}
    upstream: app
"""
    p = proxyd_factory(sites=[s])
    where = {}
    for i in range(24):
        ip = f"203.0.113.{i + 1}"
        for k in range(2):
            before = (len(b1.requests), len(b2.requests))
            assert http(p.port, target=f"/{i}/{k}", host=HOST, headers=[("X-Forwarded-For", ip)]).status == 200
            server = 1 if len(b1.requests) > before[0] else 2
            assert where.setdefault(ip, server) == server, ip  # one client, one server
    # over 24 clients behind one proxy, both servers take some (all on one would be the peer's hash)
    assert set(where.values()) == {1, 2}, where


# ------------------------------------------------------------------ the PROXY protocol

def pp_v1(src, sport=40000, dport=80):
    fam = "TCP6" if ":" in src else "TCP4"
    dst = "::1" if ":" in src else "127.0.0.1"
    return f"PROXY {fam} {src} {dst} {sport} {dport}\r\n".encode()


def pp_v2(src=None, sport=40000, local=False, tlv=b""):
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    if local:
        return sig + bytes([0x20, 0x00]) + struct.pack("!H", len(tlv)) + tlv
    if ":" in src:
        addrs = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, "::1") + \
            struct.pack("!HH", sport, 443)
        fam = 0x21
    else:
        addrs = socket.inet_aton(src) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", sport, 443)
        fam = 0x11
    body = addrs + tlv
    return sig + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body


def start_pp(proxyd_factory, backend, settings=None, sites=None):
    pport = free_port()
    p = proxyd_factory(settings or {}, sites=sites or [site(backend, ADMIN_ROUTE)], start=False)
    text = p.global_text.replace(f'- 127.0.0.1:{p.port}\n',
                                 f'- 127.0.0.1:{p.port}\n  - {{address: "127.0.0.1:{pport}", proxy_protocol: true}}\n', 1)
    (p.dir / "proxy.yaml").write_text(text)
    rc, out, err = p.proxyctl("init", "--global", p.dir / "proxy.yaml")
    assert rc == 0, err
    p.start()
    return p, pport


def pp_request(port, header, target="/pp", pieces=1, extra=()):
    s = connect(port)
    try:
        req = request_bytes("GET", target, HOST, [("Connection", "close"), *extra])
        if pieces == 1:
            s.sendall(header + req)
        else:
            step = max(1, len(header) // pieces)
            for i in range(0, len(header), step):
                s.sendall(header[i:i + step])
                time.sleep(0.05)
            s.sendall(req)
        return parse_response(recv_all(s))
    finally:
        s.close()


def test_proxy_protocol_v1_and_v2_give_the_client(proxyd_factory, backend_factory):
    b = backend_factory()
    p, pport = start_pp(proxyd_factory, b)
    assert "(PROXY protocol)" in p.proxyctl("dump")[1]
    cases = [
        (pp_v1("198.51.100.7"), "198.51.100.7"),
        (pp_v1("2001:db8::1"), "2001:db8::1"),
        (pp_v2("198.51.100.8"), "198.51.100.8"),
        (pp_v2("2001:db8::2", tlv=b"\x01\x00\x02h2"), "2001:db8::2"),  # an ALPN TLV is skipped
        (pp_v2(local=True), "127.0.0.1"),                              # LOCAL: the load balancer's own check
        (b"PROXY UNKNOWN\r\n", "127.0.0.1"),
    ]
    for header, client in cases:
        r = pp_request(pport, header)
        assert r is not None and r.status == 200, header
        assert (last(b).header("X-Client"), last(b).header("X-Real-IP")) == (client, client), header
        assert last(b).header("X-Forwarded-For") == client  # the PROXY source is the hop we saw
    assert wait_for(lambda: sorted(log_addrs(p)[-len(cases):]) == sorted(c for _, c in cases)), log_addrs(p)
    # a header that arrives in pieces, and a keep-alive request after it on the same connection
    r = pp_request(pport, pp_v2("198.51.100.9"), pieces=5)
    assert r.status == 200 and last(b).header("X-Client") == "198.51.100.9"
    s = connect(pport)
    try:
        s.sendall(pp_v1("198.51.100.10") + request_bytes("GET", "/k1", HOST, []))
        time.sleep(0.2)
        s.sendall(request_bytes("GET", "/admin/k2", HOST, [("Connection", "close")]))
        data = recv_all(s)
    finally:
        s.close()
    assert data.count(b"HTTP/1.1 200") == 2, data[:300]  # allow sees 198.51.100.10 on both
    assert [r.header("X-Real-IP") for r in b.requests[-2:]] == ["198.51.100.10"] * 2


def test_proxy_protocol_errors(proxyd_factory, backend_factory):
    b = backend_factory()
    p, pport = start_pp(proxyd_factory, b)
    before = len(b.requests)
    # no header, a bad header, a v1 line too long: closed, nothing answered, nothing upstream
    for data in (request_bytes("GET", "/", HOST, []), b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n",
                 b"PROXY TCP4 300.1.1.1 1.1.1.1 1 2\r\n", b"PROXY " + b"x" * 200):
        s = connect(pport)
        try:
            s.sendall(data)
            assert closed_without_answer(s), data
        finally:
            s.close()
    assert len(b.requests) == before
    st, _, body = p.admin("GET", "/metrics")
    assert 'proxyd_connections_closed_total{reason="proxy_protocol_error"} 4' in body.decode()
    assert "connection closed: not a PROXY protocol header" in p.error_log_text()
    # a PROXY header on the listener without proxy_protocol is a bad request
    r = parse_response(read_all_from(p.port, pp_v1("198.51.100.7") + request_bytes("GET", "/", HOST, [])))
    assert r.status == 400
    assert len(b.requests) == before
    # a silent client is closed at the header timeout (2 s here would slow the suite: just check it
    # is still waited on, then closes when it goes)
    s = connect(pport)
    s.sendall(b"PROX")
    time.sleep(0.2)
    s.close()
    assert wait_for(lambda: http(p.port, target="/ok", host=HOST).status == 200)


def read_all_from(port, data):
    s = connect(port)
    try:
        s.sendall(data)
        return recv_all(s)
    finally:
        s.close()


def test_proxy_protocol_from_an_untrusted_peer_is_refused(proxyd_factory, backend_factory):
    b = backend_factory()
    p, pport = start_pp(proxyd_factory, b, settings={"trusted_proxies": ["10.0.0.0/8"]})
    s = connect(pport)
    try:
        s.sendall(pp_v1("198.51.100.7") + request_bytes("GET", "/admin/x", HOST, []))
        assert closed_without_answer(s)  # a spoofed client address is not believed, nor served
    finally:
        s.close()
    assert "PROXY protocol header from a peer not in trusted_proxies" in p.error_log_text()
    # LOCAL states no address: served as the peer itself
    r = pp_request(pport, pp_v2(local=True))
    assert r.status == 200 and last(b).header("X-Client") == "127.0.0.1"


def test_proxy_protocol_on_a_tls_listener(proxyd_factory, backend_factory):
    b = backend_factory()
    tport = free_port()
    s = site(b).replace("site: ca\n", "site: ca\ntls: {certificate: self-signed}\n")
    p = proxyd_factory({}, sites=[s], start=False)
    text = p.global_text.replace("  https: []\n", f'  https:\n  - {{address: "127.0.0.1:{tport}", proxy_protocol: true}}\n')
    assert text != p.global_text
    (p.dir / "proxy.yaml").write_text(text)
    assert p.proxyctl("init", "--global", p.dir / "proxy.yaml")[0] == 0
    p.start()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = connect(tport)
    raw.sendall(pp_v2("203.0.113.77"))
    with ctx.wrap_socket(raw, server_hostname=HOST) as t:
        t.sendall(request_bytes("GET", "/tls", HOST, [("Connection", "close")]))
        r = parse_response(recv_all(t))
    assert r.status == 200
    got = last(b)
    assert (got.header("X-Client"), got.header("X-Forwarded-Proto")) == ("203.0.113.77", "https")


# ------------------------------------------------------------------ max_connections_per_ip

def open_from(port, source, n):
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((source, 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        out.append(s)
    return out


def answers(s, target="/c"):
    s.sendall(request_bytes("GET", target, HOST, []))
    data = b""
    s.settimeout(5)
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return False
        data += chunk
    r = parse_response(data, eof=False)
    return r is not None and r.status == 200


def test_max_connections_per_ip(proxyd_factory, backend_factory):
    b = backend_factory()
    p = proxyd_factory({"limits": {"max_connections_per_ip": 3}}, sites=[site(b)], workers=2)
    assert wait_for(lambda: p.status()["connections"] == 0)  # the readiness probe's connection is gone
    held = open_from(p.port, "127.0.0.1", 3)
    try:
        assert all(answers(s) for s in held)  # the three, spread over the workers, are served
        extra = open_from(p.port, "127.0.0.1", 1)[0]
        assert closed_without_answer(extra)  # the fourth is closed at accept, for the node
        extra.close()
        other = open_from(p.port, "127.0.0.2", 3)  # another address is not affected
        assert all(answers(s) for s in other)
        for s in other:
            s.close()
        held.pop().close()
        assert wait_for(lambda: p.status()["connections"] == 2)
        again = open_from(p.port, "127.0.0.1", 1)[0]  # a freed place is taken again
        held.append(again)
        assert answers(again)
    finally:
        for s in held:
            s.close()
    st, _, body = p.admin("GET", "/metrics")
    assert 'proxyd_connections_closed_total{reason="over_max_connections_per_ip"} 1' in body.decode(), \
        [ln for ln in body.decode().splitlines() if "closed_total" in ln]
    assert "over limits.max_connections_per_ip (3)" in p.error_log_text()


def test_max_connections_per_ip_counts_the_proxy_protocol_client(proxyd_factory, backend_factory):
    b = backend_factory()
    p, pport = start_pp(proxyd_factory, b, settings={"limits": {"max_connections_per_ip": 2}})
    assert wait_for(lambda: p.status()["connections"] == 0)
    conns = []
    try:
        for _ in range(4):  # four from the load balancer, two clients behind it
            conns.append(connect(pport))
        for s in conns[:2]:
            s.sendall(pp_v1("198.51.100.1"))
            assert answers(s)
        conns[2].sendall(pp_v1("198.51.100.1"))
        assert closed_without_answer(conns[2])  # the third from 198.51.100.1
        conns[3].sendall(pp_v1("198.51.100.2"))
        assert answers(conns[3])
    finally:
        for s in conns:
            s.close()
