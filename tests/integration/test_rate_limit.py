"""Rate limits (SPEC §9, issue 15 item 1): the leaky bucket per key with burst and nodelay, 429
with Retry-After and nothing of a refused request upstream, one zone for the node's workers,
state kept across reloads and binary upgrades, metrics.

Timing expectations come from the bucket arithmetic: at 1r/m nothing drains during a test, so
exactly burst + 1 requests pass; delays are checked against (k - 1) * interval."""
import os
import signal
import threading
import time

import pytest

from proxyd_fixtures import (backend_factory, connect, http, parse_response, proxyd_factory,  # noqa: F401
                             request_bytes, wait_for)

HOST = "rl.test"


def site(backend, rate_limit, extra_routes=""):
    return f"""\
site: rl
default: true
hosts: [{HOST}]
upstreams: {{app: {{servers: [{{address: "{backend.address}"}}]}}}}
routes:
{extra_routes}  - match: {{path_prefix: /limited/}}
    upstream: app
    rate_limit: {rate_limit}
  - match: {{path_prefix: /}}
    upstream: app
"""


def zones(**z):
    return {"rate_limit_zones": {name: spec for name, spec in z.items()}}


def get(p, path, headers=(), host=HOST):
    return http(p.port, target=path, host=host, headers=headers)


def metric(p, name, **labels):
    st, _, body = p.admin("GET", "/metrics")
    assert st == 200
    want = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in body.decode().splitlines():
        if line.startswith(want + " "):
            return int(float(line.split()[-1]))
    return None


def upstream_hits(backend, prefix="/limited/"):
    return sum(1 for r in backend.requests if r.target.startswith(prefix))


def test_burst_nodelay_then_429_with_retry_after(proxyd_factory, backend_factory):
    b = backend_factory()
    p = proxyd_factory(zones(api={"rate": "1r/m"}), sites=[site(b, "{zone: api, burst: 3, nodelay: true}")])
    statuses = [get(p, f"/limited/{i}") for i in range(8)]
    assert [r.status for r in statuses] == [200] * 4 + [429] * 4, [r.status for r in statuses]
    refused = statuses[4]
    # the next request fits once one interval (60 s) has drained, less what passed already
    assert 55 <= int(refused.header("Retry-After")) <= 60, refused.header_list
    assert upstream_hits(b) == 4  # nothing of a refused request reached the upstream
    assert get(p, "/other").status == 200  # another route is not limited
    assert metric(p, "proxyd_rate_limit_requests_total", zone="api", result="allowed") == 4
    assert metric(p, "proxyd_rate_limit_requests_total", zone="api", result="refused") == 4
    assert metric(p, "proxyd_rate_limit_requests_total", zone="api", result="delayed") == 0


def test_refused_post_body_never_reaches_the_upstream(proxyd_factory, backend_factory):
    b = backend_factory()
    p = proxyd_factory(zones(api={"rate": "1r/m"}), sites=[site(b, "{zone: api, nodelay: true}")])
    assert http(p.port, "POST", "/limited/a", host=HOST, body=b"x" * 1000).status == 200
    s = connect(p.port)
    try:
        s.sendall(request_bytes("POST", "/limited/b", HOST, [], b"y" * 5000)
                  + request_bytes("GET", "/other", HOST, [("Connection", "close")]))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    r = parse_response(data)
    assert r.status == 429, data[:200]
    assert upstream_hits(b) == 1
    assert not any(r.target == "/other" for r in b.requests)  # the unread body ended the connection
    assert b"y" * 100 not in b"".join(r.body for r in b.requests)


def test_without_nodelay_excess_is_delayed_at_the_rate(proxyd_factory, backend_factory):
    b = backend_factory()
    p = proxyd_factory(zones(api={"rate": "5r/s"}), sites=[site(b, "{zone: api, burst: 4}")])
    done = {}

    def one(i):
        t0 = time.monotonic()
        r = get(p, f"/limited/{i}")
        done[i] = (r.status, time.monotonic() - t0)

    start = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join(10)
    total = time.monotonic() - start
    assert sorted(s for s, _ in done.values()) == [200] * 5, done
    waits = sorted(d for _, d in done.values())
    # the k-th request waits (k - 1) * 200 ms; the five together take 0.8 s
    assert waits[0] < 0.15, waits
    assert 0.7 <= waits[-1] <= 1.5, waits
    assert 0.7 <= total <= 2.0
    assert metric(p, "proxyd_rate_limit_requests_total", zone="api", result="delayed") == 4
    # a sixth now exceeds the burst: refused at once
    t0 = time.monotonic()
    r = get(p, "/limited/x")
    assert r.status in (200, 429)
    if r.status == 429:
        assert time.monotonic() - t0 < 0.5


def test_client_gone_while_delayed(proxyd_factory, backend_factory):
    b = backend_factory()
    p = proxyd_factory(zones(api={"rate": "5r/s"}), sites=[site(b, "{zone: api, burst: 5}")], workers=1)
    assert get(p, "/limited/first").status == 200
    socks = []
    for i in range(3):  # each would wait 200, 400, 600 ms
        s = connect(p.port)
        s.sendall(request_bytes("GET", f"/limited/w{i}", HOST, [("Connection", "close")]))
        socks.append(s)
    time.sleep(0.1)
    for s in socks:
        s.close()
    time.sleep(1.0)  # past every delay
    # a request whose client left while it waited is dropped, not sent upstream
    assert upstream_hits(b) == 1, [r.target for r in b.requests]
    assert get(p, "/other").status == 200  # and the worker is healthy
    p.assert_no_sanitizer()


def test_keys_by_header_and_host(proxyd_factory, backend_factory):
    b = backend_factory()
    g = zones(bykey={"rate": "1r/m", "key": "header:X-Api-Key"}, byhost={"rate": "1r/m", "key": "host"})
    s = site(b, "{zone: bykey, nodelay: true}", extra_routes="""\
  - match: {path_prefix: /host/}
    upstream: app
    rate_limit: {zone: byhost, burst: 1, nodelay: true}
""").replace(f"hosts: [{HOST}]", f"hosts: [{HOST}, other.test]")
    p = proxyd_factory(g, sites=[s])
    assert get(p, "/limited/1", headers=[("X-Api-Key", "alice")]).status == 200
    assert get(p, "/limited/2", headers=[("X-Api-Key", "alice")]).status == 429
    assert get(p, "/limited/3", headers=[("x-api-key", "bob")]).status == 200
    assert get(p, "/limited/4", headers=[("X-Api-Key", "bob")]).status == 429
    # without the header a request has no key and is not limited (nginx's rule)
    assert [get(p, f"/limited/n{i}").status for i in range(3)] == [200] * 3
    assert [get(p, f"/host/{i}").status for i in range(3)] == [200, 200, 429]
    assert get(p, "/host/x", host="RL.TEST").status == 429  # host names compare case-insensitively
    assert get(p, "/host/x", host="other.test").status == 200


def test_client_ip_key_is_the_real_client(proxyd_factory, backend_factory):
    b = backend_factory()
    p = proxyd_factory(zones(api={"rate": "1r/m"}), sites=[site(b, "{zone: api, nodelay: true}")])
    xff = lambda ip: [("X-Forwarded-For", ip)]  # noqa: E731 - 127.0.0.1 is a trusted proxy by default
    assert get(p, "/limited/a", headers=xff("203.0.113.1")).status == 200
    assert get(p, "/limited/b", headers=xff("203.0.113.1")).status == 429
    assert get(p, "/limited/c", headers=xff("203.0.113.2")).status == 200
    assert get(p, "/limited/d", headers=xff("198.51.100.9, 203.0.113.2")).status == 429
    assert get(p, "/limited/e").status == 200  # the proxy itself is one more client


def test_two_workers_share_one_limit(proxyd_factory, backend_factory):
    b = backend_factory()
    p = proxyd_factory(zones(api={"rate": "1r/m"}), sites=[site(b, "{zone: api, burst: 9, nodelay: true}")],
                       workers=2)
    before = [w["requests"] for w in p.status()["workers"]]
    results = []
    lock = threading.Lock()

    def client(i):
        # a new connection each time: the kernel hands them to either worker
        for k in range(5):
            st = get(p, f"/limited/{i}-{k}").status
            with lock:
                results.append(st)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    served = [w["requests"] - b0 for w, b0 in zip(p.status()["workers"], before)]
    assert len(results) == 60
    assert results.count(200) == 10, (results.count(200), served)  # burst 9 + 1, not per worker
    assert results.count(429) == 50
    assert upstream_hits(b) == 10
    assert all(n > 0 for n in served), f"every worker should have taken connections: {served}"


def test_state_survives_reload_and_binary_upgrade(proxyd_factory, backend_factory):
    b = backend_factory()
    p = proxyd_factory(zones(api={"rate": "1r/m"}), sites=[site(b, "{zone: api, burst: 1, nodelay: true}")])
    assert [get(p, f"/limited/{i}").status for i in range(3)] == [200, 200, 429]
    # a new generation (a route added) and a reload: the zone keeps its buckets
    s2 = site(b, "{zone: api, burst: 1, nodelay: true}", extra_routes="""\
  - match: {path_exact: /new}
    return: {status: 200, body: "new"}
""")
    p.add_site(s2)
    assert wait_for(lambda: get(p, "/new").status == 200)
    assert get(p, "/limited/after-reload").status == 429
    old = p.status()["pid"]
    os.kill(old, signal.SIGUSR2)
    new = wait_for(lambda: (lambda st: st["pid"] if st["pid"] != old and all(w["alive"] for w in st["workers"])
                            else None)(p.status()), timeout=15)
    try:
        assert new and new != old
        assert get(p, "/limited/after-upgrade").status == 429
        assert "state taken over from the previous master" in p.error_log_text() + p.stderr_text()
        assert metric(p, "proxyd_rate_limit_requests_total", zone="api", result="refused") == 3
    finally:
        if new and new != p.pid:
            os.kill(new, signal.SIGTERM)
            wait_for(lambda: not os.path.exists(f"/proc/{new}"), timeout=10)
    assert upstream_hits(b) == 2


def test_renamed_zone_starts_empty(proxyd_factory, backend_factory):
    b = backend_factory()
    p = proxyd_factory(zones(api={"rate": "1r/m"}, api2={"rate": "1r/m"}),
                       sites=[site(b, "{zone: api, nodelay: true}")])
    assert [get(p, f"/limited/{i}").status for i in range(2)] == [200, 429]
    p.add_site(site(b, "{zone: api2, nodelay: true}"))
    assert wait_for(lambda: get(p, "/limited/x").status == 200)
    assert get(p, "/limited/y").status == 429


def test_example_rate_limit_site_works_as_written(proxyd_factory, backend_factory):
    """examples/rate-limit.yaml with examples/proxy.yaml's zones, only the upstream moved."""
    import re
    from pathlib import Path

    import yaml
    root = Path(__file__).resolve().parents[2] / "examples"
    b = backend_factory()
    zones_cfg = yaml.safe_load((root / "proxy.yaml").read_text())["rate_limit_zones"]
    text = (root / "rate-limit.yaml").read_text().replace("127.0.0.1:9009", b.address)
    text = re.sub(r"hosts: \[.*\]", f"hosts: [{HOST}]\ndefault: true", text)
    p = proxyd_factory({"rate_limit_zones": zones_cfg}, sites=[text])
    # api: 10r/s per client, burst 20, nodelay: 21 at once, then 429 (plus what drains meanwhile)
    t0 = time.monotonic()
    statuses = [get(p, f"/items/{i}").status for i in range(40)]
    elapsed = time.monotonic() - t0
    ok = statuses.count(200)
    assert 21 <= ok <= 21 + int(10 * elapsed) + 1, (ok, elapsed)
    assert statuses.count(429) == 40 - ok and statuses[:21] == [200] * 21
    # partners are counted by their key, apart from the client's budget
    assert get(p, "/partner/x", headers=[("X-Api-Key", "k1")]).status == 200
    # login: POST only, 6r/m with a burst of 3 that waits its turn; a GET is the api route's
    assert http(p.port, "POST", "/login", host=HOST, body=b"u=a").status == 200
    assert metric(p, "proxyd_rate_limit_requests_total", zone="login", result="allowed") == 1
