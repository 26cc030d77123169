"""Response header filter (filters/headers.c): the route's headers.response on every
answer of the route, whatever its action, and the site's security-header preset of SPEC §9
("basic", "strict", "none"), with the route winning over the preset and the preset replacing
the upstream's own value; connection close reasons counted in /metrics (conn_close)."""
import re
import socket
import subprocess
import time

import pytest

from proxyd_fixtures import (backend_factory, http, proxyd_factory, proxy_site, read_response,  # noqa: F401
                             request_bytes)
from tls_fixtures import https_request, tls_proxyd

BASIC = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "SAMEORIGIN",
         "Referrer-Policy": "strict-origin-when-cross-origin"}
STRICT = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
          "Referrer-Policy": "strict-origin-when-cross-origin",
          "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
          "Cross-Origin-Opener-Policy": "same-origin"}
PRESET_NAMES = set(BASIC) | set(STRICT) | {"Strict-Transport-Security"}


def site_with(name, preset, upstream, route_headers=""):
    extra = f"security_headers: {preset}\n" if preset else ""
    return f"""\
site: {name}
hosts: ["{name}.test"]
{extra}upstreams:
  app: {{servers: [{{address: "{upstream}"}}]}}
routes:
  - match: {{path_prefix: /ret}}
    return: {{status: 200, body: "returned"}}
{route_headers}  - match: {{path_prefix: /}}
    upstream: app
"""


def upstream_with_frame_options(backend_factory):
    def handler(req, conn):
        return conn.respond(200, b"up", headers=[("X-Frame-Options", "ALLOWALL"), ("X-Upstream", "1")])
    return backend_factory(handler)


@pytest.mark.parametrize("preset, expect", [(None, BASIC), ("basic", BASIC), ("strict", STRICT), ("none", {})])
def test_security_preset_on_proxied_and_returned_answers(proxyd_factory, backend_factory, preset, expect):
    b = upstream_with_frame_options(backend_factory)
    p = proxyd_factory(sites=[site_with("s", preset, b.address)])
    for target in ("/x", "/ret", "/missing-site"):
        host = "nosuch.test" if target == "/missing-site" else "s.test"
        r = http(p.port, target=target, host=host)
        if host == "nosuch.test":
            assert r.status == 404
            assert not any(r.header(n) for n in PRESET_NAMES), r  # no site, no preset
            continue
        assert r.status == 200, r
        for name, value in expect.items():
            assert r.header_all(name) == [value], (target, name, r)
        assert r.header("Strict-Transport-Security") is None, "no HSTS over plain HTTP"
        if target == "/x":
            # the preset replaces the upstream's value; with none the upstream's stays
            want = [expect["X-Frame-Options"]] if expect else ["ALLOWALL"]
            assert r.header_all("X-Frame-Options") == want, r
            assert r.header("X-Upstream") == "1"


def test_route_headers_win_over_the_preset_and_apply_to_every_action(proxyd_factory, backend_factory):
    b = upstream_with_frame_options(backend_factory)
    route = """\
  - match: {path_prefix: /own}
    return: {status: 200, body: "own"}
    headers:
      response: {set: {X-Frame-Options: "ALLOW-FROM x", X-Site: "$host"}, remove: [Referrer-Policy, Server]}
"""
    p = proxyd_factory(sites=[site_with("s", "strict", b.address, route)])
    r = http(p.port, target="/own", host="s.test")
    assert r.status == 200 and r.body == b"own", r
    assert r.header_all("X-Frame-Options") == ["ALLOW-FROM x"], r
    assert r.header("X-Site") == "s.test", r
    assert r.header("Referrer-Policy") is None and r.header("Server") is None, r
    assert r.header("Permissions-Policy") == STRICT["Permissions-Policy"], r
    r = http(p.port, target="/ret", host="s.test")
    assert r.header("Server") == "proxyd" and r.header("Referrer-Policy") == BASIC["Referrer-Policy"], r


@pytest.mark.parametrize("preset, site_hsts, expect", [
    ("strict", "", "max-age=63072000; includeSubDomains"),
    ("strict", "  hsts: {max_age: 300}\n", "max-age=300"),
    ("basic", "", None),
])
def test_strict_preset_sends_hsts_over_https_only(proxyd_factory, preset, site_hsts, expect):
    site = f"""\
site: h
hosts: [h.test]
security_headers: {preset}
tls:
  certificate: self-signed
{site_hsts}routes:
  - match: {{path_prefix: /}}
    return: {{status: 200, body: "h"}}
"""
    p = tls_proxyd(proxyd_factory, [site])
    r = https_request(p.https_port, host="h.test")
    assert r.status == 200, r
    assert r.header_all("Strict-Transport-Security") == ([expect] if expect else []), r
    r = http(p.port, host="h.test")
    assert r.header("Strict-Transport-Security") is None, r


# ---- close reasons ------------------------------------------------------------------------

def closed_counts(p):
    out = subprocess.run(["curl", "-s", "--max-time", "5", "--unix-socket", p.admin_socket, "http://proxyd/metrics"],
                         capture_output=True, text=True, timeout=10).stdout
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r'^proxyd_connections_closed_total\{reason="([a-z_]+)"\} (\d+)$', out, re.M)}


def test_close_reasons_are_counted(proxyd_factory):
    p = proxyd_factory({"limits": {"keepalive_timeout": "1s"}},
                       sites=["site: a\ndefault: true\nroutes:\n  - match: {path_prefix: /}\n"
                              "    return: {status: 200, body: a}\n"], workers=1)
    before = closed_counts(p)
    assert {"done", "client_closed", "keepalive_timeout", "header_timeout", "refused_at_accept"} <= set(before)
    r = http(p.port, headers=[("Connection", "close")])           # done
    assert r.status == 200
    s = socket.create_connection(("127.0.0.1", p.port))          # client closes between requests
    s.sendall(request_bytes())
    read_response(s)
    s.close()
    s = socket.create_connection(("127.0.0.1", p.port))          # keep-alive timeout
    s.sendall(request_bytes())
    read_response(s)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and s.recv(1) != b"":
        pass
    s.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        after = closed_counts(p)
        if all(after[k] > before[k] for k in ("done", "client_closed", "keepalive_timeout")):
            break
        time.sleep(0.1)
    assert after["done"] >= before["done"] + 1, (before, after)
    assert after["client_closed"] >= before["client_closed"] + 1, (before, after)
    assert after["keepalive_timeout"] >= before["keepalive_timeout"] + 1, (before, after)


# ---- out of descriptors -----------------------------------------------------------------

def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, clock ticks


def test_accept_pauses_when_out_of_descriptors(proxyd_factory):
    """A worker at its descriptor limit stops accepting for a moment instead of spinning on a
    listener that stays readable, says so once, and serves the waiting clients when
    descriptors are free again."""
    p = proxyd_factory(sites=["site: a\ndefault: true\nroutes:\n  - match: {path_prefix: /}\n"
                              "    return: {status: 200, body: a}\n"], workers=1)
    worker = p.worker_pids()[0]
    held = []
    try:
        subprocess.run(["prlimit", f"--pid={worker}", "--nofile=48:"], check=True, timeout=10)
        for _ in range(80):  # more than the limit: the rest wait in the backlog
            s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
            held.append(s)
        time.sleep(0.3)
        t0 = cpu_seconds(worker)
        time.sleep(1.5)
        spent = cpu_seconds(worker) - t0
        assert spent < 0.5, f"worker spent {spent:.2f} s of CPU in 1.5 s at its descriptor limit"
        log = open(p.error_log).read() + open(p.stderr_path).read()
        assert "not accepting for" in log, log[-2000:]
        subprocess.run(["prlimit", f"--pid={worker}", "--nofile=1024:"], check=True, timeout=10)
        last = held[-1]
        last.sendall(request_bytes(headers=[("Connection", "close")]))
        r = read_response(last, timeout=5)
        assert r.status == 200, r
    finally:
        for s in held:
            s.close()
