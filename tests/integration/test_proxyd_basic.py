"""proxyd end to end: proxying, forwarded and hop-by-hop headers, header operations,
strip_prefix, return/redirect, 403/404/405/413, host routing, keep-alive, pipelining
and the upstream keep-alive pool (SPEC.md §2, §7)."""
import re

import pytest
import requests

from proxyd_fixtures import (backend_factory, echo_headers, http, keepalive_socket, origin_factory,  # noqa: F401
                             parse_responses, proxy_site, proxyd_factory, raw_exchange, read_response,
                             recv_all, request_bytes, connect)

HOST = "main.test"


def main_site(upstream):
    return f"""\
site: main
hosts: [{HOST}]
upstreams:
  app:
    servers: [{{address: "{upstream}"}}]
routes:
  - match: {{path_prefix: /api/}}
    upstream: app
    strip_prefix: true
  - match: {{path_exact: /ret}}
    return: {{status: 200, body: "short and stout", content_type: text/x-teapot}}
  - match: {{path_exact: /gone}}
    return: {{status: 410}}
  - match: {{path_exact: /old}}
    redirect: {{to: "https://main.test/new", status: 302}}
  - match: {{path_exact: /moved}}
    redirect: {{to: "https://elsewhere.test/"}}
  - match: {{path_exact: /var-redirect}}
    redirect: {{to: "https://$host$request_uri", status: 308}}
  - match: {{path_prefix: /only-get/, methods: [GET]}}
    upstream: app
  - match: {{path_prefix: /internal/}}
    allow: [10.0.0.0/8]
    upstream: app
  - match: {{path_prefix: /upload/}}
    max_body: 1k
    upstream: app
  - match: {{path_prefix: /hdr/}}
    upstream: app
    headers:
      request:
        set: {{X-Req-Id: "$request_id", X-Client: "$remote_addr", X-Host: "$host", X-Uri: "$request_uri"}}
        remove: [X-Secret]
      response:
        set: {{X-Resp-Id: "$request_id", X-Resp-Static: "fixed"}}
        remove: [X-Backend-Secret]
  - match: {{path_prefix: /app/}}
    upstream: app
"""


@pytest.fixture
def env(proxyd_factory, origin_factory):
    origin = origin_factory(echo=True)
    p = proxyd_factory(sites=[main_site(origin.address)])
    p.origin = origin
    return p


def get(p, path, host=HOST, **kw):
    return http(p.port, target=path, host=host, **kw)


# ---- proxying ------------------------------------------------------------------------


def test_get_head_post_reach_the_echo_origin(env):
    r = get(env, "/app/hello?x=1")
    assert r.status == 200, r
    j = r.json()
    assert j["method"] == "GET" and j["target"] == "/app/hello?x=1" and j["version"] == "HTTP/1.1"

    r = http(env.port, "HEAD", "/app/hello", host=HOST)
    assert r.status == 200 and r.body == b""
    assert int(r.header("content-length")) > 0   # the origin's length for the GET body

    body = b"a=1&b=" + b"z" * 5000
    r = http(env.port, "POST", "/app/form", host=HOST, body=body,
             headers=[("Content-Type", "application/x-www-form-urlencoded")])
    assert r.status == 200, r
    j = r.json()
    assert j["method"] == "POST" and j["body_bytes"] == len(body)
    assert dict(echo_headers(r)).get("Content-Length") == str(len(body))


def test_requests_library_roundtrip(env):
    with requests.Session() as s:
        r = s.post(env.url("/app/json"), headers={"Host": HOST}, json={"k": "v" * 100}, timeout=5)
        assert r.status_code == 200
        assert r.json()["method"] == "POST"
        r = s.get(env.url("/app/"), headers={"Host": HOST}, timeout=5)
        assert r.status_code == 200


def test_host_kept_and_forwarded_headers(env):
    r = get(env, "/app/fwd", host=f"{HOST}:8080",
            headers=[("X-Forwarded-For", "203.0.113.7"), ("User-Agent", "t/1")])
    hs = echo_headers(r)
    d = dict(hs)
    names = [k.lower() for k, _ in hs]
    assert d["Host"] == f"{HOST}:8080"                      # original Host, port included
    assert names.count("host") == 1
    # 127.0.0.1 is in the default trusted_proxies: the incoming chain is kept and appended to,
    # and its rightmost untrusted address is the client.
    assert names.count("x-forwarded-for") == 1
    assert d["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
    assert d["X-Real-IP"] == "203.0.113.7"
    assert d["X-Forwarded-Proto"] == "http"
    assert d["X-Forwarded-Host"] == f"{HOST}:8080"
    assert d["X-Forwarded-Port"] == str(env.port)
    assert d["User-Agent"] == "t/1"


def test_forwarded_from_a_trusted_proxy_is_kept(env):
    d = dict(echo_headers(get(env, "/app/fwd", headers=[("Forwarded", "for=203.0.113.7")])))
    assert d["Forwarded"] == "for=203.0.113.7"


def test_forwarded_for_without_incoming_value(env):
    d = dict(echo_headers(get(env, "/app/fwd")))
    assert d["X-Forwarded-For"] == "127.0.0.1"
    assert d["X-Real-IP"] == "127.0.0.1"


def test_untrusted_peer_forwarded_headers_replaced(proxyd_factory, origin_factory):
    origin = origin_factory(echo=True)
    p = proxyd_factory({"trusted_proxies": ["10.0.0.0/8"]}, sites=[main_site(origin.address)])
    r = get(p, "/app/fwd", headers=[("X-Forwarded-For", "203.0.113.7, 198.51.100.1"),
                                    ("X-Real-IP", "203.0.113.7"), ("X-Forwarded-Proto", "https"),
                                    ("X-Forwarded-Host", "evil.test"), ("X-Forwarded-Port", "1"),
                                    ("Forwarded", "for=203.0.113.7;proto=https"),
                                    ("forwarded", "for=198.51.100.1")])
    hs = echo_headers(r)
    names = [k.lower() for k, _ in hs]
    d = dict(hs)
    assert "forwarded" not in names, hs  # RFC 7239's claim from an untrusted client goes too
    for n in ("x-forwarded-for", "x-real-ip", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port"):
        assert names.count(n) == 1, (n, hs)
    assert d["X-Forwarded-For"] == "127.0.0.1"
    assert d["X-Real-IP"] == "127.0.0.1"
    assert d["X-Forwarded-Proto"] == "http"
    assert d["X-Forwarded-Host"] == HOST
    assert d["X-Forwarded-Port"] == str(p.port)


def test_hop_by_hop_request_headers_removed(env):
    r = get(env, "/app/hop", headers=[("Connection", "close, X-Hop-Custom"), ("Keep-Alive", "timeout=5"),
                                     ("TE", "trailers"), ("Upgrade", "h2c"), ("Proxy-Connection", "keep-alive"),
                                     ("X-Hop-Custom", "secret"), ("X-End-To-End", "kept")])
    assert r.status == 200, r
    hs = echo_headers(r)
    names = {k.lower() for k, _ in hs}
    for n in ("keep-alive", "te", "upgrade", "proxy-connection", "x-hop-custom"):
        assert n not in names, (n, hs)
    for k, v in hs:
        if k.lower() == "connection":
            assert "x-hop-custom" not in v.lower(), hs   # only proxyd's own connection management
    assert dict(hs)["X-End-To-End"] == "kept"


def test_hop_by_hop_response_headers_removed_and_server_replaced(proxyd_factory, backend_factory):
    def handler(req, conn):
        return conn.respond(200, b"body", headers=[("Server", "Backend/1.2.3 (Debian)"),
                                                   ("Connection", "X-Resp-Hop"), ("X-Resp-Hop", "1"),
                                                   ("Keep-Alive", "timeout=5"), ("Proxy-Connection", "x"),
                                                   ("X-End", "kept")])
    b = backend_factory(handler)
    p = proxyd_factory(sites=[proxy_site("s", b.address, default=True)])
    r = http(p.port, target="/x")
    assert r.status == 200 and r.body == b"body", r
    assert r.header_all("server") == ["proxyd"]
    assert r.header("x-end") == "kept"
    names = {k.lower() for k, _ in r.header_list}
    for n in ("x-resp-hop", "keep-alive", "proxy-connection"):
        assert n not in names, (n, r.header_list)


def test_server_header_has_no_version_on_local_responses(env):
    for path in ("/ret", "/nothing-here", "/old"):
        r = get(env, path)
        assert r.header_all("server") == ["proxyd"], (path, r.header_list)


# ---- header operations -------------------------------------------------------------------


def test_request_header_set_and_remove_with_variables(env):
    r = get(env, "/hdr/x?q=1&r=%41", headers=[("X-Secret", "s3cret"), ("X-Req-Id", "client-supplied")])
    assert r.status == 200, r
    hs = echo_headers(r)
    d = dict(hs)
    names = [k.lower() for k, _ in hs]
    assert "x-secret" not in names
    assert names.count("x-req-id") == 1                     # set replaces the client's value
    assert re.fullmatch(r"[0-9a-f]{8,}", d["X-Req-Id"]), d["X-Req-Id"]
    assert d["X-Client"] == "127.0.0.1"
    assert d["X-Host"] == HOST
    assert d["X-Uri"] == "/hdr/x?q=1&r=%41"


def test_response_header_set_remove(proxyd_factory, backend_factory):
    def handler(req, conn):
        return conn.respond(200, b"ok", headers=[("X-Backend-Secret", "1"), ("X-Resp-Static", "from-backend"),
                                                 ("X-Other", "kept")])
    b = backend_factory(handler)
    p = proxyd_factory(sites=[main_site(b.address)])
    r = get(p, "/hdr/y")
    assert r.status == 200, r
    assert "x-backend-secret" not in r.headers
    assert r.header_all("x-resp-static") == ["fixed"]
    assert r.header("x-other") == "kept"


def test_response_header_set_expands_variables(proxyd_factory, backend_factory):
    b = backend_factory()
    p = proxyd_factory(sites=[main_site(b.address)])
    r = get(p, "/hdr/z")
    assert r.status == 200, r
    sent = b.requests[-1].header("X-Req-Id")
    assert r.header("x-resp-id") == sent, (r.header("x-resp-id"), sent)


def test_request_id_matches_access_log(env):
    r = get(env, "/hdr/log")
    rid = dict(echo_headers(r))["X-Req-Id"]
    import json
    import time
    for _ in range(50):
        lines = [json.loads(l) for l in env.access_log_lines()]
        if any(l.get("uri") == "/hdr/log" for l in lines):
            break
        time.sleep(0.05)
    entry = [l for l in lines if l.get("uri") == "/hdr/log"][-1]
    assert entry["request_id"] == rid


# ---- path handling and local actions -------------------------------------------------------


def test_strip_prefix_keeps_query(env):
    r = get(env, "/api/users?x=1&y=2")
    assert r.json()["target"] == "/users?x=1&y=2"
    r = get(env, "/api/")
    assert r.json()["target"] == "/"
    r = get(env, "/api/a/b/c")
    assert r.json()["target"] == "/a/b/c"


def test_return_with_body_and_content_type(env):
    r = get(env, "/ret")
    assert r.status == 200
    assert r.body == b"short and stout"
    assert r.header("content-type") == "text/x-teapot"
    assert r.header("content-length") == "15"
    r = get(env, "/gone")
    assert r.status == 410 and r.body.strip(), r


def test_redirect(env):
    r = get(env, "/old")
    assert r.status == 302
    assert r.header("location") == "https://main.test/new"
    r = get(env, "/moved")
    assert r.status == 301                                  # default redirect status
    assert r.header("location") == "https://elsewhere.test/"


def test_redirect_expands_variables(env):
    r = get(env, "/var-redirect?a=1")
    assert r.status == 308
    assert r.header("location") == f"https://{HOST}/var-redirect?a=1"


def test_unknown_path_404(env):
    r = get(env, "/no/such/route")
    assert r.status == 404
    assert r.body.startswith(b"404")


def test_method_not_allowed_has_allow(env):
    r = get(env, "/only-get/x")
    assert r.status == 200
    r = http(env.port, "POST", "/only-get/x", host=HOST, body=b"x")
    assert r.status == 405, r
    allow = [m.strip() for m in r.header("allow", "").split(",")]
    assert "GET" in allow and "POST" not in allow, allow
    r = http(env.port, "DELETE", "/only-get/x", host=HOST)
    assert r.status == 405


def test_allow_list_403(env):
    r = get(env, "/internal/x")
    assert r.status == 403, r


def test_max_body_content_length_413(env):
    # Small body is fine.
    r = http(env.port, "POST", "/upload/x", host=HOST, body=b"y" * 1000)
    assert r.status == 200, r
    # Head only: proxyd decides from Content-Length, before any body byte.
    s = connect(env.port)
    try:
        s.sendall(request_bytes("POST", "/upload/x", HOST, [("Content-Length", "2048")]))
        data = recv_all(s, 5)
    finally:
        s.close()
    rs = parse_responses(data)
    assert rs and rs[0].status == 413, data[:300]


def test_max_body_chunked_413(env, origin_factory):
    body = b"".join(b"200\r\n" + b"c" * 512 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n"
    data = raw_exchange(env.port, request_bytes("POST", "/upload/x", HOST, [("Transfer-Encoding", "chunked")], body))
    rs = parse_responses(data)
    assert rs and rs[0].status == 413, data[:300]


# ---- host routing ------------------------------------------------------------------------------

def ret_site(name, hosts=None, default=False):
    t = f"site: {name}\n"
    if default:
        t += "default: true\n"
    if hosts:
        t += "hosts: [" + ", ".join(f'"{h}"' for h in hosts) + "]\n"
    t += f"routes:\n  - match: {{path_prefix: /}}\n    return: {{status: 200, body: \"{name}\"}}\n"
    return t


def test_host_routing(proxyd_factory):
    p = proxyd_factory(sites=[ret_site("exact", ["exact.test"]), ret_site("wild", ["*.wild.test"]),
                              ret_site("fallback", default=True)])
    cases = {
        "exact.test": b"exact",
        "EXACT.Test": b"exact",
        "exact.test:8080": b"exact",
        "exact.test.": b"exact",
        "a.wild.test": b"wild",
        "x.y.wild.test:99": b"wild",
        "A.WILD.TEST": b"wild",
        "other.test": b"fallback",
        "127.0.0.1": b"fallback",
    }
    for host, want in cases.items():
        r = http(p.port, target="/", host=host)
        assert (r.status, r.body) == (200, want), host


def test_unknown_host_without_default_404(proxyd_factory):
    p = proxyd_factory(sites=[ret_site("exact", ["exact.test"])])
    assert http(p.port, host="exact.test").status == 200
    assert http(p.port, host="nobody.test").status == 404


# ---- connections -------------------------------------------------------------------------------


def test_keep_alive_several_requests_one_socket(env):
    s = keepalive_socket(env.port)
    try:
        for i in range(5):
            s.sendall(request_bytes("GET", f"/app/ka{i}", HOST))
            r = read_response(s)
            assert r.status == 200 and r.json()["target"] == f"/app/ka{i}"
            assert r.header("connection", "").lower() != "close"
        s.sendall(request_bytes("GET", "/ret", HOST))
        assert read_response(s).body == b"short and stout"
        s.sendall(request_bytes("HEAD", "/app/h", HOST))
        assert read_response(s, head_request=True).status == 200
        s.sendall(request_bytes("GET", "/app/last", HOST))
        assert read_response(s).json()["target"] == "/app/last"
    finally:
        s.close()


def test_pipelining_three_requests_in_one_send(env):
    data = (request_bytes("GET", "/app/p1", HOST) + request_bytes("GET", "/ret", HOST)
            + request_bytes("POST", "/app/p3", HOST, body=b"hello")
            + request_bytes("GET", "/app/p4", HOST, headers=[("Connection", "close")]))
    out = raw_exchange(env.port, data)
    rs = parse_responses(out)
    assert len(rs) == 4, out[:2000]
    assert rs[0].json()["target"] == "/app/p1"
    assert rs[1].body == b"short and stout"
    assert rs[2].json()["target"] == "/app/p3" and rs[2].json()["body_bytes"] == 5
    assert rs[3].json()["target"] == "/app/p4"


def test_upstream_keepalive_pool_reused(proxyd_factory, backend_factory):
    b = backend_factory()
    p = proxyd_factory(sites=[proxy_site("s", b.address, default=True, upstream_extra="keepalive: 4")])
    for i in range(20):
        r = http(p.port, target=f"/k{i}")
        assert r.status == 200 and r.body == b"ok"
    assert len(b.requests) == 20
    # Two workers, each with its own pool: at most a few connections, never one per request.
    assert b.connections <= 4, f"{b.connections} upstream connections for 20 requests"


def test_upstream_keepalive_pool_reused_on_one_client_connection(proxyd_factory, backend_factory):
    b = backend_factory()
    p = proxyd_factory(sites=[proxy_site("s", b.address, default=True, upstream_extra="keepalive: 4")])
    s = keepalive_socket(p.port)
    try:
        for i in range(20):
            s.sendall(request_bytes("GET", f"/k{i}", "x.test"))
            assert read_response(s).status == 200
    finally:
        s.close()
    assert b.connections == 1, b.connections


# ---- more proxying edge cases ----------------------------------------------------------------


def test_multiple_forwarded_for_fields_from_trusted_peer_all_kept(env):
    r = get(env, "/app/xff", headers=[("X-Forwarded-For", "192.0.2.1"), ("X-Forwarded-For", "192.0.2.2")])
    assert dict(echo_headers(r))["X-Forwarded-For"] == "192.0.2.1, 192.0.2.2, 127.0.0.1"


def test_response_remove_server_header(proxyd_factory, origin_factory):
    o = origin_factory()
    p = proxyd_factory(sites=[proxy_site("s", o.address, default=True,
                                         route_extra="headers: {response: {remove: [Server]}}")])
    r = http(p.port, target="/x")
    assert r.status == 200
    assert "server" not in r.headers, r.header_list


def test_encoded_and_dot_segments_forwarded_normalized(env):
    assert get(env, "/app/a%20b").json()["target"] == "/app/a%20b"
    assert get(env, "/app/a%2Fb").json()["target"].lower() == "/app/a%2fb"    # an encoded slash stays encoded
    assert get(env, "/app/./x/../y?k=v").json()["target"] == "/app/y?k=v"
    assert get(env, "/app/%7Euser").json()["target"] in ("/app/~user", "/app/%7Euser")


def test_absolute_form_target_routes_by_its_authority(env):
    r = http(env.port, target=f"http://{HOST}/app/abs?z=1", host="other.test")
    assert r.status == 200, r
    j = r.json()
    assert j["target"] == "/app/abs?z=1"
    assert dict(echo_headers(r))["Host"] == HOST


def test_expect_100_continue(env):
    s = keepalive_socket(env.port)
    try:
        s.sendall(request_bytes("POST", "/app/e", HOST, [("Expect", "100-continue"), ("Content-Length", "5")]))
        r = read_response(s)
        assert r.status == 100
        s.sendall(b"hello")
        r = read_response(s)
        assert r.status == 200 and r.json()["body_bytes"] == 5
        assert "expect" not in {k.lower() for k, _ in echo_headers(r)}
    finally:
        s.close()


def test_upstream_interim_100_is_not_relayed_twice(proxyd_factory, backend_factory):
    def h(req, conn):
        conn.send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True
    b = backend_factory(h)
    p = proxyd_factory(sites=[proxy_site("s", b.address, default=True)])
    r = http(p.port, target="/x")
    assert (r.status, r.body) == (200, b"ok")


@pytest.mark.parametrize("raw,why", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "CL+TE"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", "two CL"),
    (b"HTTP/1.1 200 OK\r\nX-Bad : v\r\nContent-Length: 2\r\n\r\nok", "space before colon"),
    (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", "bare LF"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", "101 unasked"),
    (b"garbage\r\n\r\n", "not HTTP"),
])
def test_invalid_upstream_response_502(proxyd_factory, backend_factory, raw, why):
    def h(req, conn):
        conn.send(raw)
        return False
    b = backend_factory(h)
    p = proxyd_factory(sites=[proxy_site("s", b.address, default=True)])
    r = http(p.port, target="/x")
    assert r.status == 502, (why, r)
    assert b"hello" not in r.body


def test_upstream_204_304_and_head_keep_connection_in_sync(proxyd_factory, backend_factory):
    def h(req, conn):
        if req.target == "/204":
            conn.send(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif req.target == "/304":
            conn.send(b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n")
        else:
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n" + (b"" if req.method == "HEAD" else b"body"))
        return True
    b = backend_factory(h)
    p = proxyd_factory(sites=[proxy_site("s", b.address, default=True)])
    s = keepalive_socket(p.port)
    try:
        for path, method, st in [("/204", "GET", 204), ("/304", "GET", 304), ("/h", "HEAD", 200), ("/g", "GET", 200)]:
            s.sendall(request_bytes(method, path, "x.test"))
            r = read_response(s, head_request=method == "HEAD")
            assert r.status == st, (path, r)
        assert r.body == b"body"
    finally:
        s.close()


def test_dead_pooled_connection_is_retried_not_502(proxyd_factory, backend_factory):
    """The upstream closes an idle keep-alive connection without saying so: the next request
    that picks it from the pool must be retried on a fresh connection, not fail."""
    import time

    def h(req, conn):
        conn.respond(200, b"ok")
        time.sleep(0.05)
        return False        # close silently after answering, as an upstream's idle timeout would

    b = backend_factory(h)
    p = proxyd_factory(sites=[proxy_site("s", b.address, default=True, upstream_extra="keepalive: 8")], workers=1)
    s = keepalive_socket(p.port)
    statuses = []
    try:
        for i in range(10):
            s.sendall(request_bytes("GET", f"/r{i}", "x.test"))
            statuses.append(read_response(s).status)
            time.sleep(0.2)
    finally:
        s.close()
    assert statuses == [200] * 10, statuses


def test_unix_socket_upstream(proxyd_factory, backend_factory, tmp_path):
    b = backend_factory(unix=tmp_path / "up.sock")
    p = proxyd_factory(sites=[proxy_site("u", b.address, default=True)])
    r = http(p.port, target="/via-unix")
    assert (r.status, r.body) == (200, b"ok")
    got = b.requests[-1]
    assert got.target == "/via-unix"
    assert got.header("X-Real-IP") == "127.0.0.1"


def test_pipelined_error_then_valid_request(env):
    data = (request_bytes("GET", "/no/such/route", HOST)
            + request_bytes("POST", "/only-get/x", HOST, headers=[("Content-Length", "0")])
            + request_bytes("GET", "/app/after", HOST, headers=[("Connection", "close")]))
    rs = parse_responses(raw_exchange(env.port, data))
    assert [r.status for r in rs] == [404, 405, 200], rs
    assert (rs[2].json()["method"], rs[2].json()["target"]) == ("GET", "/app/after")


def test_pipelined_after_bad_request_stops(env):
    data = request_bytes("GET", "/app/first", HOST) + b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" \
        + request_bytes("GET", "/app/never", HOST)
    rs = parse_responses(raw_exchange(env.port, data))
    assert [r.status for r in rs] == [200, 400], rs


def test_connection_close_honoured(env):
    from proxyd_fixtures import exchange_eof
    out, eof = exchange_eof(env.port, request_bytes("GET", "/app/c", HOST, [("Connection", "close")]))
    rs = parse_responses(out)
    assert len(rs) == 1 and rs[0].status == 200
    assert rs[0].header("connection", "").lower() == "close"
    assert eof


def test_http10_keepalive_and_default_close(env):
    from proxyd_fixtures import exchange_eof
    out, eof = exchange_eof(env.port, request_bytes("GET", "/app/h10", HOST, version="HTTP/1.0"))
    rs = parse_responses(out)
    assert rs and rs[0].status == 200 and eof
    assert rs[0].json()["version"] == "HTTP/1.1"     # proxyd speaks HTTP/1.1 upstream


def ws_handler(req, conn):
    if req.header("Upgrade", "").lower() != "websocket":
        return conn.respond(400, b"no upgrade")
    conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: abc=\r\n\r\n" + conn.buf)
    conn.buf = b""
    if req.target == "/firehose":
        conn.send(b"f" * (1 << 20))
    while True:
        d = conn.sock.recv(65536)
        if not d:
            return False
        conn.send(d.upper())


@pytest.fixture
def ws_env(proxyd_factory, backend_factory):
    b = backend_factory(ws_handler)
    p = proxyd_factory(sites=[proxy_site("ws", b.address, default=True, route_extra="websocket: true")])
    p.backend = b
    return p


def ws_open(p, path="/chat"):
    s = keepalive_socket(p.port)
    s.sendall(request_bytes("GET", path, "ws.test", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                                     ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                                     ("Sec-WebSocket-Version", "13")]))
    r = read_response(s, head_request=True)
    assert r.status == 101, r
    return s, r


def ws_echo(s, words, timeout=5):
    """Send each word and read until its upper-cased echo has arrived; returns all bytes read."""
    got = b""
    expected = 0
    s.settimeout(timeout)
    for word in words:
        s.sendall(word)
        expected += len(word)
        while len(got) < expected:
            try:
                d = s.recv(65536)
            except TimeoutError:
                return got
            if not d:
                return got
            got += d
    return got


def test_websocket_upgrade_tunnelled(ws_env):
    s, r = ws_open(ws_env)
    try:
        assert r.header("upgrade", "").lower() == "websocket"
        assert r.header("sec-websocket-accept") == "abc="
        words = [b"hello", b"tunnel", b"x" * 1000]
        assert ws_echo(s, words) == b"".join(words).upper()
    finally:
        s.close()
    up = ws_env.backend.requests[0]
    assert up.header("Upgrade", "").lower() == "websocket" and "upgrade" in up.header("Connection", "").lower()
    assert up.header("Sec-WebSocket-Key") == "dGhlIHNhbXBsZSBub25jZQ=="


def test_websocket_tunnel_large_client_message(ws_env):
    s, _ = ws_open(ws_env)
    try:
        words = [b"x" * 100000, b"tail"]
        got = ws_echo(s, words, timeout=3)
        assert len(got) == 100004, f"only {len(got)} of 100004 bytes came back through the tunnel"
    finally:
        s.close()


def test_websocket_tunnel_large_upstream_message(ws_env):
    s, _ = ws_open(ws_env, "/firehose")
    try:
        got = len(s._pending)       # bytes that came with the 101 head
        s.settimeout(5)
        while got < (1 << 20):
            d = s.recv(1 << 20)
            assert d, got
            got += len(d)
        assert got == 1 << 20
        assert ws_echo(s, [b"after"]) == b"AFTER"
    finally:
        s.close()


def test_upgrade_on_route_without_websocket_not_tunnelled(env):
    r = get(env, "/app/noupgrade", headers=[("Upgrade", "websocket"), ("Connection", "close, Upgrade"),
                                           ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")])
    assert r.status == 200, r
    names = {k.lower() for k, _ in echo_headers(r)}
    assert "upgrade" not in names


def test_pipelined_chunked_post_then_get(env):
    body = b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    data = (request_bytes("POST", "/app/c1", HOST, [("Transfer-Encoding", "chunked")], body)
            + request_bytes("GET", "/app/c2", HOST, [("Connection", "close")]))
    rs = parse_responses(raw_exchange(env.port, data))
    assert [r.status for r in rs] == [200, 200], rs
    assert rs[0].json()["body_bytes"] == 7 and rs[1].json()["target"] == "/app/c2"


def test_request_ids_unique(env):
    ids = set()
    for i in range(30):
        ids.add(dict(echo_headers(get(env, f"/hdr/{i}")))["X-Req-Id"])
    assert len(ids) == 30


def test_post_with_empty_body_keeps_content_length(env):
    r = http(env.port, "POST", "/app/empty", host=HOST, headers=[("Content-Length", "0")])
    assert r.status == 200
    assert dict(echo_headers(r)).get("Content-Length") == "0", echo_headers(r)


def test_long_path_forwarded_whole(proxyd_factory, backend_factory):
    """A path beyond 8 KiB reaches the upstream whole (it was once cut at 8,192 bytes)."""
    b = backend_factory()
    p = proxyd_factory({"limits": {"max_uri_size": "14k"}}, sites=[proxy_site("a", b.address, default=True)])
    path = "/" + "/".join(f"seg{i:05d}" for i in range(1200))  # 10,800 bytes
    r = http(p.port, target=path + "?q=1")
    assert r.status == 200, r
    assert b.requests[-1].target == path + "?q=1"


def test_an_upstream_head_too_large_for_the_client_buffer_is_refused_whole(proxyd_factory, backend_factory):
    """An upstream head of 12 KiB or more would not fit the client's 16 KiB output buffer once proxyd adds
    Date, Server and the security headers: it is a 502, never a head cut short; one below passes whole."""
    big = "b" * 13000
    small = "s" * 11000

    def handler(req, conn):
        v = big if req.target == "/big" else small
        conn.respond(200, b"body", headers=[("X-Big", v)])
    b = backend_factory(handler)
    p = proxyd_factory(sites=[f"site: hb\nhosts: [hb.test]\nupstreams: {{a: {{servers: [{{address: \"{b.address}\"}}]}}}}\n"
                              "routes:\n  - match: {path_prefix: /}\n    upstream: a\n"])
    r = http(p.port, target="/big", host="hb.test")
    assert r.status == 502, r
    r = http(p.port, target="/small", host="hb.test")
    assert r.status == 200 and r.header("X-Big") == small and r.header("X-Frame-Options") == "SAMEORIGIN", r
    assert r.body == b"body"
