"""proxyd refuses malformed and smuggling requests with the right status and never forwards
them (SPEC.md §7: "refused with 400/431, never forwarded")."""
import pytest

from proxyd_fixtures import (ModuleEnv, backend_factory, exchange_eof, http, parse_responses,  # noqa: F401
                             proxyd_factory, PROXYD_SANITIZED)

H = "parse.test"


def site(upstream):
    return f"""\
site: parse
default: true
upstreams:
  app:
    servers: [{{address: "{upstream}"}}]
routes:
  - match: {{path_exact: /ok}}
    return: {{status: 200, body: "fine"}}
  - match: {{path_prefix: /}}
    upstream: app
"""


@pytest.fixture(scope="module")
def menv(tmp_path_factory):
    e = ModuleEnv(tmp_path_factory.mktemp("parsing"))
    e.rec = e.backend()
    e.p = e.proxyd({"limits": {"max_uri_size": "1k", "max_header_size": "4k"}}, sites=[site(e.rec.address)])
    yield e
    e.stop()


@pytest.fixture(autouse=True)
def _no_sanitizer(menv):
    yield
    menv.check()


def req(line, *fields, body=b""):
    head = line + "\r\n" + "".join(f + "\r\n" for f in fields) + "\r\n"
    return head.encode("latin-1") + body


HOST = f"Host: {H}"
CASES = [
    ("cl_and_te", req("POST / HTTP/1.1", HOST, "Content-Length: 5", "Transfer-Encoding: chunked",
                      body=b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: parse.test\r\n\r\n"), 400),
    ("te_and_cl", req("POST / HTTP/1.1", HOST, "Transfer-Encoding: chunked", "Content-Length: 40",
                      body=b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"), 400),
    ("two_different_cl", req("POST / HTTP/1.1", HOST, "Content-Length: 5", "Content-Length: 6", body=b"hello!"), 400),
    ("cl_list_different", req("POST / HTTP/1.1", HOST, "Content-Length: 5, 6", body=b"hello!"), 400),
    ("cl_non_digits", req("POST / HTTP/1.1", HOST, "Content-Length: 5a", body=b"hello"), 400),
    ("cl_plus_sign", req("POST / HTTP/1.1", HOST, "Content-Length: +5", body=b"hello"), 400),
    ("cl_negative", req("POST / HTTP/1.1", HOST, "Content-Length: -1"), 400),
    ("cl_empty", req("POST / HTTP/1.1", HOST, "Content-Length: "), 400),
    ("te_chunked_http10", req("POST / HTTP/1.0", HOST, "Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 400),
    ("te_gzip", req("POST / HTTP/1.1", HOST, "Transfer-Encoding: gzip", body=b"0\r\n\r\n"), 400),
    ("te_gzip_chunked", req("POST / HTTP/1.1", HOST, "Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"), 501),
    ("te_chunked_twice", req("POST / HTTP/1.1", HOST, "Transfer-Encoding: chunked, chunked", body=b"0\r\n\r\n"), 400),
    ("te_chunked_two_fields", req("POST / HTTP/1.1", HOST, "Transfer-Encoding: chunked", "Transfer-Encoding: chunked",
                                  body=b"0\r\n\r\n"), 400),
    ("te_xchunked", req("POST / HTTP/1.1", HOST, "Transfer-Encoding: xchunked", body=b"0\r\n\r\n"), 400),
    ("bare_lf", b"GET / HTTP/1.1\nHost: parse.test\n\n", 400),
    ("bare_lf_in_fields", b"GET / HTTP/1.1\r\nHost: parse.test\nX-A: b\r\n\r\n", 400),
    ("bare_cr", b"GET / HTTP/1.1\r\nHost: parse.test\rX-A: b\r\n\r\n", 400),
    ("bare_cr_request_line", b"GET / HTTP/1.1\rHost: parse.test\r\n\r\n", 400),
    ("obs_fold", req("GET / HTTP/1.1", HOST, "X-A: one", " two"), 400),
    ("obs_fold_tab", req("GET / HTTP/1.1", HOST, "X-A: one", "\ttwo"), 400),
    ("space_before_colon", req("GET / HTTP/1.1", "Host : parse.test"), 400),
    ("space_before_colon_te", req("POST / HTTP/1.1", HOST, "Transfer-Encoding : chunked", body=b"0\r\n\r\n"), 400),
    ("invalid_token_in_name", req("GET / HTTP/1.1", HOST, "X(A): b"), 400),
    ("space_in_name", req("GET / HTTP/1.1", HOST, "X A: b"), 400),
    ("empty_name", req("GET / HTTP/1.1", HOST, ": b"), 400),
    ("ctl_in_value", req("GET / HTTP/1.1", HOST, "X-A: a\x01b"), 400),
    ("nul_in_value", req("GET / HTTP/1.1", HOST, "X-A: a\x00b"), 400),
    ("invalid_method_char", req("G(ET / HTTP/1.1", HOST), 400),
    ("method_with_at", req("GE@T / HTTP/1.1", HOST), 400),
    ("no_host_http11", req("GET / HTTP/1.1", "X-A: b"), 400),
    ("two_hosts", req("GET / HTTP/1.1", HOST, "Host: other.test"), 400),
    ("two_same_hosts", req("GET / HTTP/1.1", HOST, HOST), 400),
    ("host_with_userinfo", req("GET / HTTP/1.1", "Host: user@parse.test"), 400),
    ("uri_too_long", req("GET /" + "a" * 1100 + " HTTP/1.1", HOST), 414),
    ("header_too_big", req("GET / HTTP/1.1", HOST, "X-Big: " + "b" * 5000), 431),
    ("many_small_headers_too_big", req("GET / HTTP/1.1", HOST, *[f"X-H{i}: {'v' * 60}" for i in range(80)]), 431),
    ("too_many_headers", req("GET / HTTP/1.1", HOST, *[f"X-{i}: v" for i in range(120)]), 431),
    ("http20_request_line", req("GET / HTTP/2.0", HOST), 505),
    ("http30_request_line", req("GET / HTTP/3.0", HOST), 505),
    ("lowercase_version", req("GET / http/1.1", HOST), 400),
    ("dotdot_climbs_root", req("GET /../../etc/passwd HTTP/1.1", HOST), 400),
    ("encoded_dotdot_climbs_root", req("GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1", HOST), 400),
    ("encoded_nul", req("GET /a%00b HTTP/1.1", HOST), 400),
    ("bad_percent", req("GET /a%zz HTTP/1.1", HOST), 400),
    ("space_in_target", req("GET /a b HTTP/1.1", HOST), 400),
    ("double_space", req("GET  / HTTP/1.1", HOST), 400),
    ("trailing_garbage_version", req("GET / HTTP/1.1x", HOST), 400),
    ("missing_version", req("GET /", HOST), 400),
    ("asterisk_for_get", req("GET * HTTP/1.1", HOST), 400),
    ("absolute_form_userinfo", req("GET http://u@parse.test/ HTTP/1.1", HOST), 400),
    ("header_before_line_ws", b"GET / HTTP/1.1\r\n Host: parse.test\r\n\r\n", 400),
]


@pytest.mark.parametrize("name,data,status", CASES, ids=[c[0] for c in CASES])
def test_malformed_request_refused_and_not_forwarded(menv, name, data, status):
    before = (len(menv.rec.requests), menv.rec.connections)
    out, eof = exchange_eof(menv.p.port, data, timeout=5)
    rs = parse_responses(out)
    assert rs, f"{name}: no response: {out[:300]!r}"
    assert rs[0].status == status, f"{name}: {rs[0]!r}"
    assert len(rs) == 1, f"{name}: more than one response: {rs!r}"
    assert rs[0].header("connection", "").lower() == "close", rs[0].header_list
    assert eof, f"{name}: connection left open after {status}"
    assert (len(menv.rec.requests), menv.rec.connections) == before, \
        f"{name}: reached the backend: {[r.raw_head for r in menv.rec.requests[before[0]:]]}"
    # A valid request on a new connection still works.
    ok = http(menv.p.port, target="/ok", host=H)
    assert (ok.status, ok.body) == (200, b"fine")


def test_nothing_malformed_ever_reached_the_backend(menv):
    # Runs after the table (file order): the recording backend saw no request at all.
    assert menv.rec.requests == [] and menv.rec.connections == 0, [r.raw_head for r in menv.rec.requests]


def test_valid_requests_do_reach_the_backend(menv):
    # Sanity for the table above: the same backend receives well-formed requests.
    r = http(menv.p.port, "POST", "/echo", host=H, body=b"hello")
    assert (r.status, r.body) == (200, b"ok")
    got = menv.rec.requests[-1]
    assert (got.method, got.target, got.body) == ("POST", "/echo", b"hello")
    chunked = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
    out, _ = exchange_eof(menv.p.port, req("POST /c HTTP/1.1", HOST, "Transfer-Encoding: chunked",
                                          "Connection: close", body=chunked))
    rs = parse_responses(out)
    assert rs and rs[0].status == 200, out[:300]
    assert menv.rec.requests[-1].body == b"hello world"
    # Leading empty lines before a request line are tolerated (RFC 9112 §2.2).
    out, _ = exchange_eof(menv.p.port, b"\r\n" + req("GET /ok HTTP/1.1", HOST, "Connection: close"))
    assert parse_responses(out)[0].status == 200


def test_bad_chunk_size_in_body(menv):
    """The head is valid, so proxyd may already have started the upstream request; the
    invalid chunk must not reach the backend as data: it sees nothing, or a request whose
    body never completes.  The client gets 400 (or a close)."""
    before = len(menv.rec.requests)
    data = req("POST /chunky HTTP/1.1", HOST, "Transfer-Encoding: chunked",
               body=b"zz\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: parse.test\r\n\r\n")
    out, eof = exchange_eof(menv.p.port, data, timeout=5)
    rs = parse_responses(out)
    assert eof
    assert not rs or rs[0].status == 400, rs
    import time
    time.sleep(0.3)
    new = menv.rec.requests[before:]
    assert all(r.target != "/smuggled" for r in new), [r.raw_head for r in new]
    for r in new:
        assert r.target == "/chunky" and r.body == b"" and r.incomplete, (r.raw_head, r.body)


def test_chunk_size_overflow_in_body(menv):
    before = len(menv.rec.requests)
    data = req("POST /chunky2 HTTP/1.1", HOST, "Transfer-Encoding: chunked",
               body=b"1" * 40 + b"\r\nhello\r\n0\r\n\r\n")
    out, eof = exchange_eof(menv.p.port, data, timeout=5)
    rs = parse_responses(out)
    assert eof
    assert not rs or rs[0].status == 400, rs
    for r in menv.rec.requests[before:]:
        assert r.body == b"" and r.incomplete, (r.raw_head, r.body)


def test_header_over_buffer_with_default_limits(tmp_path_factory):
    e = ModuleEnv(tmp_path_factory.mktemp("parsing-default"))
    try:
        rec = e.backend()
        p = e.proxyd(sites=[site(rec.address)])
        out, eof = exchange_eof(p.port, req("GET / HTTP/1.1", HOST, "X-Big: " + "b" * 40000), timeout=5)
        rs = parse_responses(out)
        assert rs and rs[0].status == 431, out[:300]
        assert eof
        out, eof = exchange_eof(p.port, req("GET /" + "u" * 9000 + " HTTP/1.1", HOST), timeout=5)
        rs = parse_responses(out)
        assert rs and rs[0].status == 414, out[:300]
        assert rec.requests == []
    finally:
        e.stop()




@pytest.mark.parametrize("path", [
    pytest.param("/proxied"),
    pytest.param("/ok"),
])
def test_http10_without_host_served_by_default_site(proxyd_factory, backend_factory, path):
    import time
    from proxyd_fixtures import sanitizer_report
    rec = backend_factory()
    p = proxyd_factory(sites=[site(rec.address)], check_stderr=False)
    workers = sorted(p.worker_pids())
    out, eof = exchange_eof(p.port, f"GET {path} HTTP/1.0\r\n\r\n".encode(), timeout=5)
    time.sleep(0.3)
    crashed = sanitizer_report(p.stderr_text()) or "killed by signal" in p.error_log_text() \
        or "exited with status" in p.error_log_text()
    assert not crashed, p.diagnostics()
    assert sorted(p.worker_pids()) == workers
    rs = parse_responses(out)
    assert rs and rs[0].status == 200, out[:300]


def local_site(upstream, static_root):
    return f"""\
site: local
default: true
upstreams:
  app:
    servers: [{{address: "{upstream}"}}]
routes:
  - match: {{path_exact: /ret}}
    return: {{status: 200, body: "local answer"}}
  - match: {{path_exact: /redir}}
    redirect: {{to: "https://elsewhere.test/", status: 302}}
  - match: {{path_prefix: /getonly/, methods: [GET]}}
    upstream: app
  - match: {{path_prefix: /files/}}
    static: {{root: "{static_root}"}}
    strip_prefix: true
  - match: {{path_prefix: /deny/}}
    allow: [10.0.0.0/8]
    upstream: app
  - match: {{path_prefix: /app/}}
    upstream: app
"""


SMUGGLED = b"GET /app/smuggled HTTP/1.1\r\nHost: parse.test\r\n\r\n"


@pytest.fixture
def local_env(proxyd_factory, backend_factory, tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    (root / "a.txt").write_bytes(b"static a\n")
    rec = backend_factory()
    p = proxyd_factory(sites=[local_site(rec.address, root)])
    p.rec = rec
    return p




@pytest.mark.parametrize("method,path,status", [
    pytest.param("POST", "/ret", 200),
    pytest.param("POST", "/redir", 302),
    pytest.param("POST", "/getonly/x", 405),
    pytest.param("GET", "/files/a.txt", 200),
    pytest.param("POST", "/files/a.txt", 405),
    ("POST", "/nothing-here", 404),
    ("POST", "/deny/x", 403),
])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_body_of_locally_answered_request_is_never_a_request(local_env, method, path, status, framing):
    if framing == "chunked":
        body = b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n"
        data = req(f"{method} {path} HTTP/1.1", HOST, "Transfer-Encoding: chunked", body=body)
    else:
        data = req(f"{method} {path} HTTP/1.1", HOST, f"Content-Length: {len(SMUGGLED)}", body=SMUGGLED)
    out, _ = exchange_eof(local_env.port, data, timeout=3)
    rs = parse_responses(out)
    import time
    time.sleep(0.2)
    assert [r.target for r in local_env.rec.requests] == [], "the request body reached the upstream as a request"
    assert [r.status for r in rs] == [status], rs


def test_body_of_locally_answered_request_then_pipelined_request(local_env):
    """Either proxyd skips the body and serves the pipelined request, or it closes: never a third answer."""
    data = (req("POST /ret HTTP/1.1", HOST, "Content-Length: 5", body=b"hello")
            + req("GET /app/next HTTP/1.1", HOST, "Connection: close"))
    out, _ = exchange_eof(local_env.port, data, timeout=3)
    rs = parse_responses(out)
    assert rs and rs[0].status == 200
    assert len(rs) <= 2, rs
    if len(rs) == 2:
        assert rs[1].status == 200
        assert [(r.method, r.target) for r in local_env.rec.requests] == [("GET", "/app/next")]
