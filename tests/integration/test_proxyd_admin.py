"""proxyd admin interface, metrics, reload, access logs, worker supervision, --check and
graceful stop (SPEC.md §4 reload/status/health, §7 signals and admin)."""
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

from proxyd_fixtures import (PROXYD, backend_factory, free_port, http, origin_factory, proxy_site,  # noqa: F401
                             proxyd_factory, wait_for, connect, request_bytes, recv_all,
                             parse_response)


def curl_unix(sock, path, method="GET"):
    p = subprocess.run(["curl", "-sS", "-X", method, "--max-time", "5", "--unix-socket", sock, f"http://x{path}",
                        "-w", "\n%{http_code}"], capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, p.stderr
    body, _, code = p.stdout.rpartition("\n")
    return int(code), body


def parse_metrics(text):
    """{(name, frozenset(labels.items())): value} of Prometheus text format."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)', line)
        assert m, f"bad metrics line {line!r}"
        labels = {}
        if m.group(3):
            for lm in re.finditer(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3)):
                labels[lm.group(1)] = lm.group(2)
        out[(m.group(1), frozenset(labels.items()))] = float(m.group(4))
    return out


def metric(ms, name, **labels):
    return ms.get((name, frozenset(labels.items())))


@pytest.fixture
def env(proxyd_factory, origin_factory):
    o = origin_factory()
    p = proxyd_factory(sites=[proxy_site("main", o.address, hosts=["main.test"], default=True)])
    p.origin = o
    return p


def test_status_json(env):
    # The fixture waits for the workers to exist; a worker counts as alive
    # once it has started serving (its pid in the shared stats), a moment later.
    deadline = time.monotonic() + 5
    while True:
        code, body = curl_unix(env.admin_socket, "/status")
        assert code == 200
        st = json.loads(body)
        if all(w["alive"] for w in st["workers"]) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert st["generation"] >= 1
    assert len(st["workers"]) == 2
    assert all(w["alive"] for w in st["workers"]), st
    assert sorted(w["pid"] for w in st["workers"]) == sorted(env.worker_pids())
    assert isinstance(st["connections"], int)
    # An open client connection shows up.
    s = connect(env.port)
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: main.test\r\n\r\n")
        s.recv(65536)
        st = wait_for(lambda: (lambda j: j if j["connections"] >= 1 else None)(env.status()), 3)
        assert st and st["connections"] >= 1
    finally:
        s.close()


def test_admin_unknown_path_and_method(env):
    assert curl_unix(env.admin_socket, "/nope")[0] == 404
    assert curl_unix(env.admin_socket, "/reload", "GET")[0] == 405


def test_metrics(env):
    for i in range(7):
        assert http(env.port, target=f"/ok{i}", host="main.test").status == 200
    for i in range(3):
        r = http(env.port, target="/", host="main.test", headers=[("X-A", "b")], method="DELETE")
        assert r.status == 200
    n_ok = 10

    def scrape():
        code, body = curl_unix(env.admin_socket, "/metrics")
        assert code == 200
        return parse_metrics(body), body

    def settled():
        m = scrape()
        return m if metric(m[0], "proxyd_requests_total", site="main", **{"class": "2xx"}) == n_ok else None
    ms, text = wait_for(settled, 3) or scrape()
    assert metric(ms, "proxyd_requests_total", site="main", **{"class": "2xx"}) == n_ok, text
    bucket_keys = [k for k in ms if k[0] == "proxyd_upstream_response_seconds_bucket"]
    assert len(bucket_keys) >= 5, text
    les = sorted((float(dict(k[1])["le"]), ms[k]) for k in bucket_keys if dict(k[1])["le"] != "+Inf")
    vals = [v for _, v in les]
    assert vals == sorted(vals), "histogram buckets must be cumulative"
    inf = metric(ms, "proxyd_upstream_response_seconds_bucket", le="+Inf")
    count = metric(ms, "proxyd_upstream_response_seconds_count")
    assert inf == count == n_ok, text
    assert metric(ms, "proxyd_upstream_response_seconds_sum") is not None
    assert metric(ms, "proxyd_connections_active") is not None
    assert metric(ms, "proxyd_bytes_received_total") > 0
    assert metric(ms, "proxyd_bytes_sent_total") > 0
    assert "# TYPE proxyd_upstream_response_seconds histogram" in text
    assert "# TYPE proxyd_requests_total counter" in text


def test_metrics_status_classes(proxyd_factory, origin_factory):
    o = origin_factory()
    site = proxy_site("cls", o.address, hosts=["cls.test"], prefix="/app/")
    p = proxyd_factory(sites=[site])
    for _ in range(4):
        assert http(p.port, target="/app/x", host="cls.test").status == 200
    for _ in range(3):
        assert http(p.port, target="/nothing", host="cls.test").status == 404

    def ok():
        _, body = curl_unix(p.admin_socket, "/metrics")
        ms = parse_metrics(body)
        if (metric(ms, "proxyd_requests_total", site="cls", **{"class": "2xx"}) == 4
                and metric(ms, "proxyd_requests_total", site="cls", **{"class": "4xx"}) == 3):
            return ms
        return None
    assert wait_for(ok, 3), curl_unix(p.admin_socket, "/metrics")[1]


def test_metrics_listen_tcp(proxyd_factory, origin_factory):
    o = origin_factory()
    mport = free_port()
    proxyd_factory({"admin": {"metrics_listen": f"127.0.0.1:{mport}"}},
                   sites=[proxy_site("m", o.address, default=True)])
    r = requests.get(f"http://127.0.0.1:{mport}/metrics", timeout=5)
    assert r.status_code == 200
    assert "proxyd_connections_active" in r.text
    r = requests.get(f"http://127.0.0.1:{mport}/status", timeout=5)
    assert r.status_code == 404
    r = requests.post(f"http://127.0.0.1:{mport}/reload", timeout=5)
    assert r.status_code == 404


def test_reload_serves_new_site_and_proxyctl_commands(env, origin_factory):
    st0 = env.status()
    assert http(env.port, target="/", host="second.test").status == 200   # the default site answers
    o2 = origin_factory()
    second = f"""\
site: second
hosts: [second.test]
routes:
  - match: {{path_exact: /who}}
    return: {{status: 200, body: "second site"}}
  - match: {{path_prefix: /}}
    upstream: app
upstreams:
  app:
    servers: [{{address: "{o2.address}"}}]
"""
    env.add_site(second)
    code, body = curl_unix(env.admin_socket, "/reload", "POST")
    assert code == 200, body
    gen = json.loads(body)["generation"]
    assert gen > st0["generation"]
    r = http(env.port, target="/who", host="second.test")
    assert (r.status, r.body) == (200, b"second site")
    r = http(env.port, target="/who", host="main.test")
    assert r.status == 200 and r.json()["target"] == "/who"    # still the first site
    st = wait_for(lambda: (lambda j: j if all(w["generation"] == gen for w in j["workers"]) else None)(env.status()), 3)
    assert st, env.status()

    rc, out, err = env.proxyctl("reload")
    assert rc == 0, err
    rc, out, err = env.proxyctl("status", "--json")
    assert rc == 0, err
    j = json.loads(out)
    assert j["generation"] == gen and len(j["workers"]) == 2
    rc, out, err = env.proxyctl("status")
    assert rc == 0 and f"generation:  {gen} (2 sites)\n" in out and "workers:     2 of 2 alive\n" in out, out
    rc, out, err = env.proxyctl("health")
    assert rc == 0, (out, err)


def test_proxyctl_health_fails_when_proxyd_stopped(env):
    env.stop()
    rc, out, err = env.proxyctl("health")
    assert rc == 3, (rc, out, err)


def test_access_log_json(env):
    paths = ["/a?x=1", "/b", "/c%20d"]
    ids = []
    for pth in paths:
        r = http(env.port, target=pth, host="main.test", headers=[("User-Agent", 'ua "quoted"')])
        assert r.status == 200
    lines = wait_for(lambda: (lambda ls: ls if len(ls) >= 3 else None)(env.access_log_lines()), 3)
    assert lines, env.access_log_lines()
    entries = [json.loads(l) for l in lines]        # every line is one JSON object
    by_uri = {e["uri"]: e for e in entries}
    for pth in paths:
        e = by_uri[pth]
        assert e["status"] == 200 and e["site"] == "main" and e["method"] == "GET"
        assert re.fullmatch(r"[0-9a-f]{8,}", e["request_id"]), e
        assert e["user_agent"] == 'ua "quoted"'
        ids.append(e["request_id"])
    assert len(set(ids)) == len(ids)


def test_access_log_combined(proxyd_factory, origin_factory):
    o = origin_factory()
    p = proxyd_factory(sites=[proxy_site("clf", o.address, default=True,
                                         site_extra="access_log: {format: combined}")])
    r = http(p.port, target="/path?q=1", host="clf.test", headers=[("User-Agent", "agent/1"), ("Referer", "http://r/")])
    assert r.status == 200
    lines = wait_for(lambda: p.combined_log_lines(), 3)
    assert lines
    m = re.fullmatch(r'(\S+) - - \[(\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] "GET /path\?q=1 HTTP/1\.1" '
                     r'(\d{3}) (\d+) "([^"]*)" "([^"]*)"', lines[-1])
    assert m, lines[-1]
    assert m.group(1) == "127.0.0.1" and m.group(3) == "200" and int(m.group(4)) > 0
    assert (m.group(5), m.group(6)) == ("http://r/", "agent/1")


def test_access_log_escapes_and_caps(proxyd_factory, origin_factory):
    """Untrusted bytes cannot break a log line: json escapes tab, quote and
    backslash (obs-text passes as it came), combined writes them as \\xHH, and
    an overlong User-Agent is cut while the line stays one JSON object."""
    o = origin_factory()
    p = proxyd_factory(sites=[proxy_site("j", o.address, hosts=["j.test"], default=True),
                              proxy_site("c", o.address, hosts=["c.test"], site_extra="access_log: {format: combined}")])
    ua = 'a\tb"c\\d\xe9'
    assert http(p.port, target="/j", host="j.test", headers=[("User-Agent", ua)]).status == 200
    assert http(p.port, target="/long", host="j.test", headers=[("User-Agent", "L" * 3000)]).status == 200
    assert http(p.port, target="/c", host="c.test", headers=[("User-Agent", ua), ("Referer", "")]).status == 200
    lines = wait_for(lambda: (lambda ls: ls if len(ls) >= 2 else None)(p.access_log_lines()), 3)
    assert lines, p.access_log_lines()
    assert wait_for(lambda: p.combined_log_lines(), 3)
    raw = open(p.access_log, "rb").read() + open(p.combined_log, "rb").read()
    assert b'"user_agent":"a\\u0009b\\"c\\\\d\xe9"' in raw, raw
    assert b'"GET /c HTTP/1.1" 200 ' in raw and b' "-" "a\\x09b\\x22c\\x5Cd\\xE9"\n' in raw, raw
    entries = [json.loads(l) for l in lines if l.startswith("{")]
    long = next(e for e in entries if e["uri"] == "/long")
    assert 400 < len(long["user_agent"]) <= 511 and set(long["user_agent"]) == {"L"}, long
    assert long["status"] == 200 and long["host"] == "j.test"


def test_access_log_off(proxyd_factory, origin_factory):
    o = origin_factory()
    p = proxyd_factory(sites=[proxy_site("quiet", o.address, hosts=["quiet.test"], site_extra="access_log: {format: off}"),
                              proxy_site("loud", o.address, hosts=["loud.test"])])
    assert http(p.port, target="/q", host="quiet.test").status == 200
    assert http(p.port, target="/l", host="loud.test").status == 200
    lines = wait_for(lambda: p.access_log_lines(), 3)
    uris = [json.loads(l)["uri"] for l in lines]
    assert "/l" in uris and "/q" not in uris


def test_kill_worker_restarted_and_load_survives(env):
    pids0 = sorted(w["pid"] for w in env.status()["workers"])
    ok, failures, stop = [0], [], threading.Event()
    lock = threading.Lock()

    def load():
        deadline = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                r = requests.get(env.url("/load"), headers={"Host": "main.test", "Connection": "close"}, timeout=3)
                with lock:
                    if r.status_code == 200:
                        ok[0] += 1
                    else:
                        failures.append(r.status_code)
            except requests.RequestException as e:
                with lock:
                    failures.append(type(e).__name__)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    victim = pids0[0]
    ok_before = ok[0]
    os.kill(victim, signal.SIGKILL)
    t_kill = time.monotonic()

    def all_alive():
        st = env.status()
        pids = [w["pid"] for w in st["workers"]]
        return st if all(w["alive"] for w in st["workers"]) and victim not in pids else None
    st = wait_for(all_alive, 1.0, interval=0.02)
    restart_s = time.monotonic() - t_kill
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    line = (f"kill -9 worker {victim}: workers all alive again after {restart_s * 1000:.0f} ms; load loop "
            f"{ok[0]} ok ({ok_before} before the kill), {len(failures)} failures {failures}")
    print(line)
    with open("/tmp/proxyd_admin_report.txt", "a") as f:
        f.write(line + "\n")
    assert st, f"workers not all alive within 1 s: {env.status()}"
    assert ok[0] > ok_before + 20, "load did not continue after the kill"
    assert len(failures) <= 8, failures
    assert "killed by signal 9" in env.error_log_text()


def test_check_prints_configuration_ok(env):
    p = subprocess.run([PROXYD, "--db", str(env.db), "--check"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert "configuration OK" in p.stdout
    assert "AddressSanitizer" not in p.stderr and "runtime error" not in p.stderr


def test_check_fails_on_missing_store(tmp_path):
    p = subprocess.run([PROXYD, "--db", str(tmp_path / "nothing.db"), "--check"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode != 0
    assert "configuration OK" not in p.stdout


@pytest.fixture
def drain_env(proxyd_factory, backend_factory):
    release = threading.Event()

    def handler(req, conn):
        if req.target.startswith("/slow1"):
            time.sleep(1.0)
        elif req.target.startswith("/hang"):
            release.wait(15)
        return conn.respond(200, b"done")
    b = backend_factory(handler)
    p = proxyd_factory({"limits": {"drain_timeout": "2s"}},
                       sites=[proxy_site("drain", b.address, default=True, route_extra="timeouts: {read: 30s}")])
    yield p
    release.set()


def _request_in_thread(port, path, result):
    def run():
        s = connect(port, timeout=20)
        try:
            s.sendall(request_bytes("GET", path, "drain.test"))
            result["data"] = recv_all(s, 20)
        finally:
            s.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_sigterm_idle_stops_quickly(drain_env):
    took = drain_env.stop(signal.SIGTERM, timeout=10)
    assert took < 3.0, took


def test_sigterm_lets_request_in_flight_finish(drain_env):
    res = {}
    t = _request_in_thread(drain_env.port, "/slow1", res)
    time.sleep(0.3)
    took = drain_env.stop(signal.SIGTERM, timeout=10)
    t.join(timeout=5)
    r = parse_response(res.get("data", b""))
    assert r is not None and r.status == 200 and r.body == b"done", res
    assert took < 2.0 + 1.5, took


def test_sigterm_stops_within_drain_timeout(drain_env):
    res = {}
    t = _request_in_thread(drain_env.port, "/hang", res)
    time.sleep(0.3)
    took = drain_env.stop(signal.SIGTERM, timeout=15)
    t.join(timeout=5)
    assert took <= 2.0 + 1.5, f"stopped after {took:.1f}s with drain_timeout 2s"


def test_new_connections_during_drain_not_left_hanging(drain_env):
    """While draining (a request in flight keeps proxyd alive), a new client must be refused
    or served promptly, not parked in a listen queue nobody accepts from."""
    res = {}
    t = _request_in_thread(drain_env.port, "/hang", res)
    time.sleep(0.3)
    os.kill(drain_env.pid, signal.SIGTERM)
    time.sleep(0.3)
    t0 = time.monotonic()
    outcome = None
    try:
        s = socket.create_connection(("127.0.0.1", drain_env.port), timeout=1)
        try:
            s.sendall(request_bytes("GET", "/new", "drain.test", [("Connection", "close")]))
            data = recv_all(s, 1.0)
            outcome = parse_response(data).status if data else "no answer"
        finally:
            s.close()
    except OSError as e:
        outcome = type(e).__name__
    waited = time.monotonic() - t0
    drain_env.stop(signal.SIGTERM, timeout=10)
    t.join(timeout=5)
    assert outcome != "no answer" and waited < 1.0, (outcome, waited)


def test_reload_keeps_request_in_flight_and_switches_new_ones(proxyd_factory, backend_factory):
    def handler(req, conn):
        if req.target.startswith("/slow"):
            time.sleep(1.5)
        return conn.respond(200, b"from upstream")
    b = backend_factory(handler)
    p = proxyd_factory(sites=[proxy_site("r", b.address, default=True, route_extra="timeouts: {read: 10s}")])
    res = {}

    def run():
        s = connect(p.port, timeout=10)
        try:
            s.sendall(request_bytes("GET", "/slow", "r.test"))
            res["data"] = recv_all(s, 8)
        finally:
            s.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(0.4)
    gen0 = p.status()["generation"]
    p.add_site("site: r\ndefault: true\nroutes:\n  - match: {path_prefix: /}\n    return: {status: 200, body: \"new table\"}\n")
    os.kill(p.pid, signal.SIGHUP)
    st = wait_for(lambda: (lambda j: j if j["generation"] > gen0 and all(w["generation"] == j["generation"]
                                                                         for w in j["workers"]) else None)(p.status()), 3)
    assert st, p.status()
    r = http(p.port, target="/now", host="r.test")
    assert (r.status, r.body) == (200, b"new table")
    t.join(timeout=10)
    old = parse_response(res.get("data", b""))
    assert old is not None and (old.status, old.body) == (200, b"from upstream"), res


def test_reload_refuses_bad_generation_and_keeps_serving(env):
    import sqlite3
    gen0 = env.status()["generation"]
    con = sqlite3.connect(str(env.db), timeout=30)
    try:
        with con:
            blob = con.execute("SELECT blob FROM generations WHERE active = 1").fetchone()[0]
            bad = bytes(blob[:64]) + bytes(len(blob) - 64)
            con.execute("UPDATE generations SET active = 0")
            con.execute("INSERT INTO generations (created, digest, blob, comment, active) "
                              "SELECT created, digest, ?, 'corrupt', 1 FROM generations WHERE id = ?", (bad, gen0))
    finally:
        con.close()
    code, body = curl_unix(env.admin_socket, "/reload", "POST")
    assert code != 200, body
    st = env.status()
    assert st["generation"] == gen0
    assert "last_reload_error" in st
    assert http(env.port, target="/still", host="main.test").status == 200


def test_metrics_per_site_counters_survive_reload(proxyd_factory, origin_factory):
    o = origin_factory()
    p = proxyd_factory(sites=[proxy_site("zeta", o.address, hosts=["zeta.test"])])
    for _ in range(5):
        assert http(p.port, target="/", host="zeta.test").status == 200

    def count(ms, site):
        return metric(ms, "proxyd_requests_total", site=site, **{"class": "2xx"}) or 0
    assert wait_for(lambda: count(parse_metrics(curl_unix(p.admin_socket, "/metrics")[1]), "zeta") == 5, 3)
    p.add_site(proxy_site("alpha", o.address, hosts=["alpha.test"]))
    assert curl_unix(p.admin_socket, "/reload", "POST")[0] == 200
    gen = p.status()["generation"]
    assert wait_for(lambda: all(w["generation"] == gen for w in p.status()["workers"]), 3)
    for _ in range(2):
        assert http(p.port, target="/", host="zeta.test").status == 200
    time.sleep(0.2)
    ms = parse_metrics(curl_unix(p.admin_socket, "/metrics")[1])
    assert (count(ms, "zeta"), count(ms, "alpha")) == (7, 0)


def test_status_of_10000_sites_is_whole(proxyd_factory, tmp_path):
    """`proxyctl status --json` reads the whole answer, however long: with 10,000 sites (one
    upstream each) /status is over 2 MiB, past any fixed buffer."""
    p = proxyd_factory(workers=1, start=False)
    d = tmp_path / "many"
    d.mkdir()
    for i in range(10000):
        (d / f"s{i}.yaml").write_text(
            f"site: s{i}\nhosts: [s{i}.test]\nupstreams:\n  app:\n    servers: [{{address: \"127.0.0.1:9\"}}]\n"
            "routes:\n  - match: {path_prefix: /}\n    upstream: app\n")
    rc, out, err = p.proxyctl("apply", d, timeout=300)
    assert rc == 0, err
    p.start(timeout=30)
    rc, out, err = p.proxyctl("status", "--json", timeout=60)
    assert rc == 0, err
    assert len(out) > 2 * 1024 * 1024, len(out)
    st = json.loads(out)
    assert st["sites"] == 10000
    assert len(st["upstreams"]) == 10000
