"""Load balancing and upstream health, black box: real proxyd, real backends on loopback.

Servers are told apart by what they answer: build/bench/origin with `--body N` answers N bytes,
so the body length names the server; Python backends answer their name.

Covered: distribution per algorithm over 10,000 requests (weights 1:2:3), ip_hash as consistent
hashing (a server leaving moves only its own clients), least_conn and random_two avoiding a slow
server, a backend killed mid-run with retries (no 5xx), passive recovery after fail_timeout,
active checks (fall, rise, one checker per node, /status, /metrics, proxyctl status), backup
takeover and hand-back, retry rules (idempotency, nothing sent yet, replayed bodies, response
statuses, no retry once a response byte went out, tries), IPv6, unix and host-name servers.
"""
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from proxyd_fixtures import (  # noqa: F401
    ORIGIN, backend_factory, ensure_origin, free_port, http, keepalive_socket, origin_factory, proxyd_factory,
    read_response, recv_all, request_bytes, wait_for, wait_port)

HOST = "lb.test"
N = 10000


# ---- helpers -------------------------------------------------------------------------------

def lb_site(servers, balance="round_robin", retry=None, upstream=None, route=None, name="lb"):
    """A default site whose one route proxies / to upstream app built from server dicts."""
    up = {"balance": balance, "servers": servers}
    up.update(upstream or {})
    rt = {"match": {"path_prefix": "/"}, "upstream": "app"}
    if retry:
        rt["retry"] = retry
    rt.update(route or {})
    return yaml.safe_dump({"site": name, "default": True, "hosts": [HOST], "upstreams": {"app": up},
                           "routes": [rt]}, sort_keys=False)


def hammer(port, n, threads=4, method="GET", path="/"):
    """n requests over `threads` keep-alive connections; Counter of (status, body)."""
    out = Counter()
    lock = threading.Lock()
    per = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]

    def run(k):
        got = Counter()
        s = keepalive_socket(port, timeout=10)
        try:
            for _ in range(k):
                s.sendall(request_bytes(method, path, HOST))
                r = read_response(s, timeout=10, head_request=method == "HEAD")
                got[(r.status, r.body)] += 1
                if r.header("connection", "").lower() == "close":
                    s.close()
                    s = keepalive_socket(port, timeout=10)
        finally:
            s.close()
        with lock:
            out.update(got)

    ts = [threading.Thread(target=run, args=(k,)) for k in per]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def by_length(counts, lengths):
    """{length: requests} for 200 responses, from hammer() output."""
    c = Counter()
    for (status, body), k in counts.items():
        if status == 200:
            c[len(body)] += k
    return {L: c.get(L, 0) for L in lengths}


def shares(per_server):
    total = sum(per_server.values())
    return {k: v / total for k, v in per_server.items()}


def get_from(port, src, path="/"):
    """One GET on a new connection bound to source address src; (status, body)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.bind((src, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(request_bytes("GET", path, HOST, headers=[("Connection", "close")]))
        data = recv_all(s, 10)
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def client_ip(i):
    return f"127.{1 + i // 62500}.{(i // 250) % 250}.{i % 250 + 1}"


def metrics(p):
    st, _, body = p.admin("GET", "/metrics")
    assert st == 200
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, _, val = line.rpartition(" ")
        out[key] = float(val)
    return out


def server_metric(m, name, server, site="lb", upstream="app"):
    return m.get(f'{name}{{site="{site}",upstream="{upstream}",server="{server}"}}')


def servers_status(p, upstream="app"):
    st = p.status()
    for u in st["upstreams"]:
        if u["upstream"] == upstream:
            return {s["address"]: s for s in u["servers"]}
    raise AssertionError(st)


class OriginProc:
    """build/bench/origin on a chosen port (to restart a server where it was); stop() by PID."""

    def __init__(self, port, body):
        self.port, self.body = port, body
        self.address = f"127.0.0.1:{port}"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([ensure_origin(), str(self.port), "--body", str(self.body)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_port(self.port, 5, self.proc), "origin did not start"
        return self

    def kill(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    stop = kill


@pytest.fixture
def origins():
    made = []

    def make(body):
        o = OriginProc(free_port(), body).start()
        made.append(o)
        return o

    yield make
    for o in made:
        o.stop()


# ---- distribution ----------------------------------------------------------------------------

@pytest.mark.parametrize("balance", ["round_robin", "least_conn", "random_two"])
def test_distribution_follows_weights(balance, proxyd_factory, origins):
    weights = [1, 2, 3]
    os_ = [origins(1001 + i) for i in range(3)]
    p = proxyd_factory(sites=[lb_site([{"address": o.address, "weight": w} for o, w in zip(os_, weights)],
                                      balance=balance)])
    # least_conn and random_two share by weight only among equally loaded servers (under
    # concurrency they follow load: see test_slow_server_gets_little_traffic), so they get one
    # request at a time; round robin gets four clients at once.
    counts = hammer(p.port, N, threads=4 if balance == "round_robin" else 1)
    assert sum(k for (st, _), k in counts.items() if st == 200) == N, counts.most_common(3)
    got = shares(by_length(counts, [o.body for o in os_]))
    want = {o.body: w / sum(weights) for o, w in zip(os_, weights)}
    print(f"\n{balance} over {N}: " + ", ".join(f"weight {w}: {got[o.body]:.4f} (want {want[o.body]:.4f})"
                                            for o, w in zip(os_, weights)))
    for b in want:
        assert abs(got[b] - want[b]) < 0.05, (balance, got, want)
    st = servers_status(p)
    assert [st[o.address]["weight"] for o in os_] == weights
    assert sum(st[o.address]["requests"] for o in os_) == N
    assert all(st[o.address]["in_flight"] == 0 for o in os_), st


def test_ip_hash_distribution_and_consistency(proxyd_factory, origins):
    """10,000 clients (distinct source addresses) share by weight; each sticks to its server;
    when a server leaves the pool only its own clients move."""
    weights = [1, 2, 3]
    os_ = [origins(1001 + i) for i in range(3)]
    servers = [{"address": o.address, "weight": w} for o, w in zip(os_, weights)]
    p = proxyd_factory(sites=[lb_site(servers, balance="ip_hash")])
    ips = [client_ip(i) for i in range(N)]
    with ThreadPoolExecutor(8) as ex:
        first = list(ex.map(lambda ip: get_from(p.port, ip), ips))
    assert all(st == 200 for st, _ in first), Counter(st for st, _ in first)
    where = [len(b) for _, b in first]
    got = shares(Counter(where))
    want = {o.body: w / 6 for o, w in zip(os_, weights)}
    print("\nip_hash over %d clients: %s" % (N, ", ".join(f"weight {w}: {got.get(o.body, 0):.4f} (want {want[o.body]:.4f})"
                                                         for o, w in zip(os_, weights))))
    for b in want:
        assert abs(got.get(b, 0) - want[b]) < 0.05, (got, want)

    # Sticky: the same clients again, same servers.
    sample = range(0, N, 5)
    with ThreadPoolExecutor(8) as ex:
        again = list(ex.map(lambda i: len(get_from(p.port, ips[i])[1]), sample))
    assert again == [where[i] for i in sample]

    # The weight-2 server leaves the pool (a new generation): only its clients move.
    gone = os_[1].body
    p.add_site(lb_site([servers[0], servers[2]], balance="ip_hash"))
    gen = p.status()["generation"]
    assert wait_for(lambda: all(w["generation"] == gen for w in p.status()["workers"]), 5)
    with ThreadPoolExecutor(8) as ex:
        after = list(ex.map(lambda i: len(get_from(p.port, ips[i])[1]), sample))
    stayed = sum(1 for i, a in zip(sample, after) if where[i] != gone and a == where[i])
    kept = sum(1 for i in sample if where[i] != gone)
    moved_from_gone = sum(1 for i, a in zip(sample, after) if where[i] == gone and a != gone)
    on_gone = sum(1 for i in sample if where[i] == gone)
    print(f"server left: {on_gone} of {len(sample)} clients were on it and moved; "
          f"{stayed} of {kept} others kept their server")
    assert stayed == kept
    assert moved_from_gone == on_gone and gone not in after


@pytest.mark.parametrize("balance", ["least_conn", "random_two"])
def test_slow_server_gets_little_traffic(balance, proxyd_factory, backend_factory):
    """One server answers in 0.4 s, the others at once: least_conn and random_two send new
    requests to the idle servers (round robin would give the slow one a third)."""
    def slow(req, conn):
        time.sleep(0.4)
        return conn.respond(200, b"slow")

    servers = [backend_factory(slow), backend_factory(lambda req, conn: conn.respond(200, b"fast1")),
               backend_factory(lambda req, conn: conn.respond(200, b"fast2"))]
    p = proxyd_factory(sites=[lb_site([{"address": b.address} for b in servers], balance=balance)])
    stop = time.monotonic() + 3
    counts = Counter()
    lock = threading.Lock()

    def client():
        s = keepalive_socket(p.port, timeout=10)
        got = Counter()
        try:
            while time.monotonic() < stop:
                s.sendall(request_bytes("GET", "/", HOST))
                got[read_response(s, timeout=10).body] += 1
        finally:
            s.close()
        with lock:
            counts.update(got)

    ts = [threading.Thread(target=client) for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    total = sum(counts.values())
    print(f"\n{balance}: {dict(counts)}")
    assert set(counts) <= {b"slow", b"fast1", b"fast2"}
    assert counts[b"slow"] / total < 0.10, counts


# ---- failures, retries, passive health ----------------------------------------------------------

RETRY_ALL = {"on": ["error", "timeout", "http_502", "http_503", "http_504"], "tries": 3}


def test_backend_killed_mid_run_no_5xx(proxyd_factory, origins):
    os_ = [origins(1001 + i) for i in range(3)]
    p = proxyd_factory(sites=[lb_site([{"address": o.address} for o in os_], retry=RETRY_ALL)])
    stop = time.monotonic() + 4
    statuses, lengths = Counter(), Counter()
    lock = threading.Lock()

    def keepalive_client():
        s = keepalive_socket(p.port, timeout=10)
        st, ln = Counter(), Counter()
        try:
            while time.monotonic() < stop:
                s.sendall(request_bytes("GET", "/", HOST))
                r = read_response(s, timeout=10)
                st[r.status] += 1
                ln[len(r.body)] += 1
        finally:
            s.close()
        with lock:
            statuses.update(st)
            lengths.update(ln)

    def fresh_client():
        st = Counter()
        while time.monotonic() < stop:
            st[http(p.port, host=HOST).status] += 1
        with lock:
            statuses.update(st)

    ts = [threading.Thread(target=keepalive_client) for _ in range(4)] + [threading.Thread(target=fresh_client)]
    for t in ts:
        t.start()
    time.sleep(1.5)
    os_[1].kill()
    for t in ts:
        t.join()
    print(f"\nkilled one of 3 mid-run: statuses {dict(statuses)}, by server {dict(lengths)}")
    assert set(statuses) == {200}, statuses
    assert lengths[os_[1].body] > 0 and lengths[os_[0].body] > 0 and lengths[os_[2].body] > 0
    st = servers_status(p)
    dead = st[os_[1].address]
    assert dead["state"] == "down" and dead["passive_down"] and dead["failures"] >= 1, dead
    assert st[os_[0].address]["state"] == "up"
    m = metrics(p)
    assert server_metric(m, "proxyd_upstream_server_up", os_[1].address) == 0
    assert server_metric(m, "proxyd_upstream_server_up", os_[0].address) == 1
    assert server_metric(m, "proxyd_upstream_server_failures_total", os_[1].address) >= 1
    assert "retrying on" in p.error_log_text() or "retrying on" in p.stderr_text()


def test_passive_down_and_recovery_after_fail_timeout(proxyd_factory, origins):
    a, b = origins(1001), origins(1002)
    servers = [{"address": x.address, "max_fails": 2, "fail_timeout": "2s"} for x in (a, b)]
    p = proxyd_factory(sites=[lb_site(servers, retry={"on": ["error"], "tries": 2})])
    a.kill()
    t_down = time.monotonic()
    c = hammer(p.port, 40, threads=2)
    assert set(st for st, _ in c) == {200}, c
    assert by_length(c, [1001, 1002]) == {1001: 0, 1002: 40}
    st = servers_status(p)[a.address]
    assert st["passive_down"] and st["state"] == "down" and 0 < st["down_for_ms"] <= 2000, st
    assert "after 2 failures within 2s" in p.error_log_text() + p.stderr_text()

    a.start()                                    # back, but still inside fail_timeout
    c = hammer(p.port, 20, threads=1)
    if time.monotonic() - t_down < 1.8:
        assert by_length(c, [1001, 1002])[1001] == 0, c
    time.sleep(max(0.0, 2.3 - (time.monotonic() - t_down)))
    c = hammer(p.port, 40, threads=2)
    assert set(st for st, _ in c) == {200}
    assert by_length(c, [1001, 1002])[1001] >= 10, c
    assert servers_status(p)[a.address]["state"] == "up"


def test_backup_takeover_and_hand_back(proxyd_factory, origins):
    a, b = origins(1001), origins(1002)
    servers = [{"address": a.address, "fail_timeout": "1s"}, {"address": b.address, "backup": True}]
    p = proxyd_factory(sites=[lb_site(servers, retry={"on": ["error", "timeout"], "tries": 2})])
    assert by_length(hammer(p.port, 20), [1001, 1002]) == {1001: 20, 1002: 0}
    a.kill()
    c = hammer(p.port, 20)
    assert set(st for st, _ in c) == {200}, c          # the first failure is retried on the backup
    assert by_length(c, [1001, 1002]) == {1001: 0, 1002: 20}
    st = servers_status(p)
    assert st[a.address]["state"] == "down" and st[b.address]["backup"] is True
    a.start()
    time.sleep(1.3)
    assert by_length(hammer(p.port, 20), [1001, 1002]) == {1001: 20, 1002: 0}


def test_no_server_up_is_503(proxyd_factory):
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    p = proxyd_factory(sites=[lb_site([{"address": d, "fail_timeout": "30s"} for d in dead])])
    # Both refused (the default retry tries the second), both marked down (max_fails 1).
    assert http(p.port, host=HOST).status == 502
    r = http(p.port, host=HOST)
    assert r.status == 503, r
    assert "no server of upstream app is up" in p.error_log_text() + p.stderr_text()


def _closer(req, conn):
    return False                                     # read the request, close without answering


def test_get_retried_post_not_once_sent(proxyd_factory, backend_factory):
    a = backend_factory(_closer)
    b = backend_factory(lambda req, conn: conn.respond(200, b"B"))
    servers = [{"address": a.address, "max_fails": 0}, {"address": b.address, "max_fails": 0}]
    p = proxyd_factory(sites=[lb_site(servers, retry={"on": ["error"], "tries": 2})], workers=1)
    gets = [http(p.port, host=HOST, target=f"/g{i}") for i in range(6)]
    assert [(r.status, r.body) for r in gets] == [(200, b"B")] * 6
    assert sum(1 for r in a.requests if r.method == "GET") >= 2
    posts = [http(p.port, method="POST", host=HOST, target=f"/p{i}", body=b"x=1") for i in range(6)]
    a_posts = [r for r in a.requests if r.method == "POST"]
    b_posts = [r for r in b.requests if r.method == "POST"]
    assert len(a_posts) + len(b_posts) == 6          # no POST reached two servers
    assert sum(1 for r in posts if r.status == 502) == len(a_posts) >= 2
    assert sum(1 for r in posts if r.status == 200) == len(b_posts)


def test_post_retried_when_nothing_was_sent(proxyd_factory, backend_factory):
    dead = f"127.0.0.1:{free_port()}"
    b = backend_factory(lambda req, conn: conn.respond(200, b"B:" + req.body))
    servers = [{"address": dead, "max_fails": 0}, {"address": b.address, "max_fails": 0}]
    p = proxyd_factory(sites=[lb_site(servers, retry={"on": ["error"], "tries": 2})], workers=1)
    rs = [http(p.port, method="POST", host=HOST, target=f"/p{i}", body=b"v=%d" % i) for i in range(6)]
    assert [(r.status, r.body) for r in rs] == [(200, b"B:v=%d" % i) for i in range(6)]


def test_default_retry_follows_nginx(proxyd_factory, backend_factory):
    """SPEC §10: without `retry` written, a failure goes on to the next server: whatever the
    method when nothing was sent yet, only idempotent requests once bytes were sent."""
    a = backend_factory(_closer)
    b = backend_factory(lambda req, conn: conn.respond(200, b"B"))
    servers = [{"address": a.address, "max_fails": 0}, {"address": b.address, "max_fails": 0}]
    p = proxyd_factory(sites=[lb_site(servers)], workers=1)
    gets = [http(p.port, host=HOST, target=f"/g{i}") for i in range(4)]
    assert [(r.status, r.body) for r in gets] == [(200, b"B")] * 4
    assert sum(1 for r in a.requests if r.method == "GET") >= 2
    posts = [http(p.port, method="POST", host=HOST, target=f"/p{i}", body=b"x=1").status for i in range(4)]
    a_posts = [r for r in a.requests if r.method == "POST"]
    assert sorted(posts) == [200, 200, 502, 502] and len(a_posts) == 2    # sent: not replayed
    dead = f"127.0.0.1:{free_port()}"
    servers = [{"address": dead, "max_fails": 0}, {"address": b.address, "max_fails": 0}]
    p2 = proxyd_factory(sites=[lb_site(servers)], workers=1)
    rs = [http(p2.port, method="POST", host=HOST, target=f"/q{i}", body=b"v=1").status for i in range(4)]
    assert rs == [200] * 4                                               # refused: next server


def test_retry_tries_1_turns_it_off(proxyd_factory, backend_factory):
    a = backend_factory(_closer)
    b = backend_factory(lambda req, conn: conn.respond(200, b"B"))
    servers = [{"address": a.address, "max_fails": 0}, {"address": b.address, "max_fails": 0}]
    p = proxyd_factory(sites=[lb_site(servers, retry={"tries": 1})], workers=1)
    rs = [http(p.port, host=HOST).status for _ in range(4)]
    assert sorted(rs) == [200, 200, 502, 502]


def test_idempotent_body_replayed_small_only(proxyd_factory, backend_factory):
    """A PUT whose body was sent to a server that then failed is replayed with its body on the
    next server while the copy kept for replays holds it (16 KiB); a larger one is not."""
    a = backend_factory(_closer)
    b = backend_factory(lambda req, conn: conn.respond(200, b"%d" % len(req.body)))
    servers = [{"address": a.address, "weight": 100, "max_fails": 0}, {"address": b.address, "max_fails": 0}]
    p = proxyd_factory(sites=[lb_site(servers, retry={"on": ["error"], "tries": 2})], workers=1)
    small = bytes(range(256)) * 20                   # 5120 bytes
    r = http(p.port, method="PUT", host=HOST, target="/small", body=small)
    assert (r.status, r.body) == (200, b"5120"), r
    assert [x.body for x in b.requests if x.target == "/small"] == [small]
    assert [x.body for x in a.requests if x.target == "/small"] == [small]
    big = b"y" * (200 * 1024)
    r = http(p.port, method="PUT", host=HOST, target="/big", body=big, timeout=10)
    assert r.status == 502, r
    assert not [x for x in b.requests if x.target == "/big"]


def test_retry_on_response_status(proxyd_factory, backend_factory):
    state = {"b": 200}
    a = backend_factory(lambda req, conn: conn.respond(503, b"A busy"))
    b = backend_factory(lambda req, conn: conn.respond(state["b"], b"B says %d" % state["b"]))
    servers = [{"address": a.address, "max_fails": 0}, {"address": b.address, "max_fails": 0}]
    p = proxyd_factory(sites=[lb_site(servers, retry={"on": ["http_503"], "tries": 2})])
    rs = [http(p.port, host=HOST) for _ in range(10)]
    assert [(r.status, r.body) for r in rs] == [(200, b"B says 200")] * 10
    assert len(a.requests) >= 3
    # Nowhere left to go: the upstream's own 503 is relayed, not replaced by ours.
    state["b"] = 503
    r = http(p.port, host=HOST)
    assert r.status == 503 and r.body in (b"A busy", b"B says 503"), r
    st = servers_status(p)
    assert st[a.address]["failures"] >= 3 and st[a.address]["state"] == "up"  # max_fails 0: never down


def test_no_retry_once_response_bytes_reached_the_client(proxyd_factory, backend_factory):
    def partial(req, conn):
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        time.sleep(0.1)
        return False

    a = backend_factory(partial)
    b = backend_factory(lambda req, conn: conn.respond(200, b"B" * 100))
    servers = [{"address": a.address, "weight": 100, "max_fails": 0}, {"address": b.address}]
    p = proxyd_factory(sites=[lb_site(servers, retry=RETRY_ALL)], workers=1)
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    try:
        s.sendall(request_bytes("GET", "/partial", HOST))
        data = recv_all(s, 5)
    finally:
        s.close()
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"abc"), data
    assert data.count(b"HTTP/1.1") == 1
    assert not b.requests


def test_tries_bound_the_attempts(proxyd_factory, backend_factory):
    bs = [backend_factory(_closer) for _ in range(3)]
    servers = [{"address": x.address, "max_fails": 0} for x in bs]
    p = proxyd_factory(sites=[lb_site(servers, retry={"on": ["error"], "tries": 2})], workers=1)
    r = http(p.port, host=HOST)
    assert r.status == 502
    assert sum(len(x.requests) for x in bs) == 2
    assert sorted(len(x.requests) for x in bs) == [0, 1, 1]   # two different servers


def test_read_timeout_retried_on_another_server(proxyd_factory, backend_factory):
    release = threading.Event()

    def stuck(req, conn):
        release.wait(5)
        return False

    a = backend_factory(stuck)
    b = backend_factory(lambda req, conn: conn.respond(200, b"B"))
    servers = [{"address": a.address, "weight": 100}, {"address": b.address}]
    p = proxyd_factory(sites=[lb_site(servers, retry={"on": ["timeout"], "tries": 2},
                                      route={"timeouts": {"read": "500ms"}})], workers=1)
    try:
        t0 = time.monotonic()
        r = http(p.port, host=HOST, timeout=5)
        assert (r.status, r.body) == (200, b"B")
        assert 0.4 < time.monotonic() - t0 < 2.5
        st = servers_status(p)[a.address]
        assert st["failures"] == 1 and st["state"] == "down"       # max_fails 1 (the default)
    finally:
        release.set()


# ---- active health checks ------------------------------------------------------------------------

def test_active_checks_fall_rise_and_report(proxyd_factory, backend_factory):
    healthy = {"a": True, "b": True}
    checks = {"a": [], "b": []}

    def handler(name):
        def h(req, conn):
            if req.target == "/healthz":
                checks[name].append((time.monotonic(), req.header("Host"), req.header("User-Agent")))
                return conn.respond(200 if healthy[name] else 503, b"hc")
            return conn.respond(200, name.encode())
        return h

    a, b = backend_factory(handler("a")), backend_factory(handler("b"))
    hc = {"path": "/healthz", "interval": "300ms", "timeout": "1s", "rise": 2, "fall": 3, "expect": 200}
    p = proxyd_factory(sites=[lb_site([{"address": a.address}, {"address": b.address}],
                                      upstream={"health_check": hc})], workers=2)
    assert wait_for(lambda: len(checks["a"]) >= 2 and len(checks["b"]) >= 2, 5)
    assert checks["a"][0][1] == HOST and "proxyd" in checks["a"][0][2]
    assert sorted(set(x.body for x in (http(p.port, host=HOST) for _ in range(10)))) == [b"a", b"b"]

    # One checker for the node: with two workers, still one check per interval.
    t0, n0 = time.monotonic(), len(checks["a"])
    time.sleep(3)
    per_s = (len(checks["a"]) - n0) / (time.monotonic() - t0)
    assert 2.0 <= per_s <= 4.0, per_s

    # b fails its checks (while still answering traffic): down after `fall` of them.
    healthy["b"] = False
    t_bad = time.monotonic()
    assert wait_for(lambda: servers_status(p)[b.address]["state"] == "down", 5)
    took = time.monotonic() - t_bad
    bad_checks = [c for c in checks["b"] if c[0] >= t_bad]
    assert len(bad_checks) >= 3 and took < 3 * 0.3 + 1.0, (len(bad_checks), took)
    st = servers_status(p)[b.address]
    assert st["check"]["state"] == "down" and st["check"]["consecutive_failures"] >= 3, st
    assert st["check"]["last_status"] == 503 and st["check"]["last_error"] == "unexpected status"
    assert abs(st["check"]["last_check"] - time.time()) < 5
    assert not st["passive_down"]
    assert {x.body for x in (http(p.port, host=HOST) for _ in range(10))} == {b"a"}
    m = metrics(p)
    assert server_metric(m, "proxyd_upstream_server_up", b.address) == 0
    assert server_metric(m, "proxyd_upstream_server_up", a.address) == 1
    assert server_metric(m, "proxyd_upstream_server_check_failures", b.address) >= 3
    assert abs(server_metric(m, "proxyd_upstream_server_last_check_timestamp_seconds", b.address) - time.time()) < 5
    rc, out, err = p.proxyctl("status", "--json")
    assert rc == 0, err
    ups = {s["address"]: s for u in json.loads(out)["upstreams"] for s in u["servers"]}
    assert ups[b.address]["state"] == "down" and ups[a.address]["state"] == "up"
    rc, out, err = p.proxyctl("status")   # the summary names the server that is down, and why
    assert rc == 0, err
    assert "upstreams:   1 of 2 servers up\n" in out, out
    assert f", server {b.address} (health check: unexpected status)\n" in out, out
    assert "down after 3 failed health checks (last: unexpected status 503)" in p.error_log_text() + p.stderr_text()

    # Healthy again: up after `rise` good checks.
    healthy["b"] = True
    assert wait_for(lambda: servers_status(p)[b.address]["state"] == "up", 5)
    assert "up after 2 good health checks" in p.error_log_text() + p.stderr_text()
    assert b"b" in {x.body for x in (http(p.port, host=HOST) for _ in range(10))}


def test_active_check_timeout_and_connect_failure(proxyd_factory, backend_factory):
    hang = threading.Event()

    def h(req, conn):
        if req.target == "/hc":
            hang.wait(5)
            return False
        return conn.respond(200, b"slowcheck")

    slowcheck = backend_factory(h)
    dead = f"127.0.0.1:{free_port()}"
    ok = backend_factory(lambda req, conn: conn.respond(200, b"ok"))
    hc = {"path": "/hc", "interval": "200ms", "timeout": "200ms", "rise": 1, "fall": 1}
    p = proxyd_factory(sites=[lb_site([{"address": x} for x in (slowcheck.address, dead, ok.address)],
                                      upstream={"health_check": hc})])
    try:
        assert wait_for(lambda: [servers_status(p)[x]["state"] for x in (slowcheck.address, dead, ok.address)]
                        == ["down", "down", "up"], 5), servers_status(p)
        st = servers_status(p)
        assert st[slowcheck.address]["check"]["last_error"] == "timed out"
        assert st[dead]["check"]["last_error"] == "connect failed"
        assert st[ok.address]["check"]["last_status"] == 200 and st[ok.address]["check"]["last_error"] == ""
        assert {http(p.port, host=HOST).body for _ in range(6)} == {b"ok"}
    finally:
        hang.set()


# ---- server addresses --------------------------------------------------------------------------------

class _V6Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"v6")

    def log_message(self, *a):
        pass


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass    # a health check hangs up once it has the status line


def test_ipv6_unix_and_host_name_servers(proxyd_factory, backend_factory, tmp_path):
    try:
        v6 = _V6Server(("::1", 0), _V6Handler)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    t = threading.Thread(target=v6.serve_forever, daemon=True)
    t.start()
    try:
        ux = backend_factory(lambda req, conn: conn.respond(200, b"unix"), unix=tmp_path / "b.sock")
        named = backend_factory(lambda req, conn: conn.respond(200, b"named"))
        first = socket.getaddrinfo("localhost", named.port, type=socket.SOCK_STREAM)[0][4][0]
        if first != "127.0.0.1":
            pytest.skip(f"localhost resolves to {first} first")
        addrs = [f"[::1]:{v6.server_address[1]}", ux.address, f"localhost:{named.port}"]
        p = proxyd_factory(sites=[lb_site([{"address": a} for a in addrs],
                                          upstream={"health_check": {"path": "/", "interval": "300ms"}})])
        got = Counter(http(p.port, host=HOST).body for _ in range(30))
        assert set(got) == {b"v6", b"unix", b"named"} and min(got.values()) >= 7, got
        assert wait_for(lambda: all(s["check"]["checks"] >= 1 and s["check"]["last_status"] == 200
                                    for s in servers_status(p).values()), 5), servers_status(p)
    finally:
        v6.shutdown()
        v6.server_close()


def test_host_name_follows_hosts_file(proxyd_factory, tmp_path, monkeypatch):
    """A server given by name takes its addresses from /etc/hosts when the file names it
    (upstream/resolve.c reads it again at every resolution, here every second: `resolve:
    1s`), without a reload.  proxyd runs in a private mount namespace whose /etc/hosts is a
    file of the test (root and unshare(1) needed); test_dns.py covers names asked of DNS."""
    import shutil

    import proxyd_fixtures
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 lb-upstream.test\n")
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1)")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f'mount --bind "{hosts}" /etc/hosts && getent hosts lb-upstream.test'],
                           capture_output=True, text=True)
    if probe.returncode != 0 or "127.0.0.1" not in probe.stdout:
        pytest.skip(f"no private mount namespace here: {probe.stderr.strip()}")
    port = free_port()
    a = OriginProc(port, 1001)
    b = OriginProc(port, 2002)
    a.start()
    b.proc = subprocess.Popen([ensure_origin(), str(port), "--host", "127.0.0.2", "--body", "2002"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wrapper = tmp_path / "proxyd-ns.sh"
        wrapper.write_text("#!/bin/sh\nexec unshare -m sh -c 'mount --bind \"$0\" /etc/hosts && exec \"$@\"' "
                           f"'{hosts}' '{proxyd_fixtures.PROXYD}' \"$@\"\n")
        wrapper.chmod(0o755)
        monkeypatch.setattr(proxyd_fixtures, "PROXYD", str(wrapper))
        p = proxyd_factory(sites=[lb_site([{"address": f"lb-upstream.test:{port}"}], upstream={"resolve": "1s"})])
        assert wait_for(lambda: len(http(p.port, host=HOST).body) == 1001, 5), p.diagnostics()
        gen = p.status()["generation"]
        hosts.write_text("127.0.0.2 lb-upstream.test\n")          # same file: the bind mount sees it
        # each worker reads the file on its own schedule: all of them within a second or so
        assert wait_for(lambda: {len(http(p.port, host=HOST).body) for _ in range(6)} == {2002}, 5), p.diagnostics()
        assert p.status()["generation"] == gen
        assert "upstream name lb-upstream.test: now 127.0.0.2 (was 127.0.0.1)" in p.error_log_text()
    finally:
        a.stop()
        b.stop()
