"""Reloads and binary upgrades under continuous load (issue: zero-downtime reloads).

Two configurations alternate: every response names the one it came from, so a
response that is neither, a failed or truncated request, or a reset is a failure.
Load runs over plain HTTP and HTTPS, with keep-alive connections and with a new
connection per request.
"""
import http.client
import json
import os
import signal
import socket
import sqlite3
import ssl
import threading
import time

import pytest

import proxyd_fixtures
from proxyd_fixtures import ROOT, backend_factory, free_port, origin_factory, proxyd_factory, vm_rss_kib  # noqa: F401

SITE = """\
site: app
default: true
hosts: [app.test]
tls: {{certificate: self-signed}}
upstreams:
  origin:
    keepalive: 16
    servers: [{{address: "127.0.0.1:{origin}"}}]
routes:
  - match: {{path_exact: /which}}
    return: {{status: 200, body: "{tag}"}}
  - match: {{path_prefix: /up/}}
    upstream: origin
    strip_prefix: true
    headers: {{response: {{set: {{X-Config: "{tag}"}}}}}}
"""


def _pid_alive(pid):
    """True for a running process; a zombie (exited, not yet reaped by pytest) is not alive."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


class Load:
    """Threads issuing requests until stopped; every outcome is recorded."""

    def __init__(self, port, tls_port):
        self.port, self.tls_port = port, tls_port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures = []
        self.threads = []
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE

    def _conn(self, tls):
        if tls:
            return http.client.HTTPSConnection("127.0.0.1", self.tls_port, timeout=10, context=self.ctx)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def _one(self, conn, path):
        conn.request("GET", path, headers={"Host": "app.test"})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise AssertionError(f"status {r.status}")
        if path == "/which":
            if body not in (b"config-A", b"config-B"):
                raise AssertionError(f"unexpected body {body[:40]!r}")
        else:
            if r.getheader("X-Config") not in ("config-A", "config-B"):
                raise AssertionError(f"unexpected X-Config {r.getheader('X-Config')!r}")
            if len(body) != 100:
                raise AssertionError(f"truncated body: {len(body)} bytes")
        return r

    def _run(self, tls, keepalive, path):
        conn = self._conn(tls)
        n = 0
        while not self.stop.is_set() and n < 200000:
            n += 1
            try:
                r = self._one(conn, path)
                with self.lock:
                    self.ok += 1
                if not keepalive or r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = self._conn(tls)
            except Exception as e:  # every failure counts; the test asserts there are none
                with self.lock:
                    self.failures.append(f"{'https' if tls else 'http'} {'ka' if keepalive else 'new'} {path}: "
                                         f"{type(e).__name__}: {e}")
                conn.close()
                conn = self._conn(tls)
        conn.close()

    def start(self):
        for tls in (False, True):
            for keepalive in (True, False):
                for path in ("/which", "/up/x"):
                    t = threading.Thread(target=self._run, args=(tls, keepalive, path), daemon=True)
                    t.start()
                    self.threads.append(t)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def _make(proxyd_factory, origin_factory, tmp_path, tls_port):
    origin = origin_factory(echo=False)
    site = {tag: SITE.format(origin=origin.port, tag=f"config-{tag}") for tag in "AB"}
    p = proxyd_factory(global_settings={"listen": {"https": [f"127.0.0.1:{tls_port}"]},
                                        "logs": {"access": "off"}},
                       sites=[site["A"]], workers=2)
    files = {}
    for tag in "AB":
        files[tag] = p.dir / f"app-{tag}.yaml"
        files[tag].write_text(site[tag])
    return p, files


def _stop_masters(p, masters):
    """The fixture stops only the first master: stop every later one, by PID, even
    when an upgrade did not report back (the admin socket names the current master)."""
    try:
        masters = masters + [p.status()["pid"]]
    except (OSError, AssertionError, ValueError):
        pass
    for pid in set(masters):
        if pid != p.pid and _pid_alive(pid):
            os.kill(pid, signal.SIGTERM)


def _wait_generation(p, gen, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = p.status()
        if all(w["alive"] and w["generation"] == gen for w in st["workers"]) and st["generation"] == gen:
            return st
        time.sleep(0.01)
    raise AssertionError(f"workers did not reach generation {gen}: {p.status()}")


def _active_generation(db):
    con = sqlite3.connect(str(db))
    try:
        return con.execute("SELECT id FROM generations WHERE active = 1").fetchone()[0]
    finally:
        con.close()


def _upgrade(p, timeout=15.0, old_exits=True):
    """SIGUSR2 the current master; returns once a new master serves (and, with old_exits,
    once the old one is gone: it waits for its connections to end)."""
    old = p.status()["pid"]
    os.kill(old, signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = p.status()
        except (OSError, AssertionError):
            st = None
        if st and st["pid"] != old and all(w["alive"] for w in st["workers"]) and \
                not (old_exits and _pid_alive(old)):
            return st["pid"]
        time.sleep(0.05)
    raise AssertionError(f"binary upgrade of master {old} did not complete:\n{p.diagnostics()}")


def test_reloads_and_upgrades_under_load(proxyd_factory, origin_factory, tmp_path):
    tls_port = free_port()
    p, files = _make(proxyd_factory, origin_factory, tmp_path, tls_port)
    load = Load(p.port, tls_port)
    masters = []
    try:
        load.start()
        time.sleep(0.5)
        for i in range(50):
            tag = "B" if i % 2 == 0 else "A"
            rc, out, err = p.proxyctl("add-site", files[tag])  # activates and asks proxyd to reload
            assert rc == 0, f"add-site -> {rc}\n{out}\n{err}"
            _wait_generation(p, _active_generation(p.db))
            if i in (10, 25, 40):
                masters.append(_upgrade(p))
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        load.finish()
        _stop_masters(p, masters)
    print(f"\n{load.ok} requests, {len(load.failures)} failures, masters {masters}")
    assert load.ok > 500
    assert load.failures == [], "\n".join(load.failures[:20])
    assert "AddressSanitizer" not in p.stderr_text()


def test_corrupt_generation_refused_while_serving(proxyd_factory, origin_factory, tmp_path):
    tls_port = free_port()
    p, files = _make(proxyd_factory, origin_factory, tmp_path, tls_port)
    gen = _active_generation(p.db)
    con = sqlite3.connect(str(p.db))
    blob = bytearray(con.execute("SELECT blob FROM generations WHERE id = ?", (gen,)).fetchone()[0])
    blob[len(blob) // 2] ^= 0xFF
    con.execute("INSERT INTO generations (created, digest, blob, comment, active) VALUES (0, 'x', ?, 'corrupt', 0)",
                (bytes(blob),))
    con.execute("UPDATE generations SET active = 0")
    con.execute("UPDATE generations SET active = 1 WHERE comment = 'corrupt'")
    con.commit()
    con.close()
    load = Load(p.port, tls_port)
    try:
        load.start()
        st, _, body = p.admin("POST", "/reload")
        assert st == 500 and b"checksum mismatch" in body, body
        rc, out, err = p.proxyctl("reload")
        assert rc == 3 and "checksum mismatch" in err, (rc, out, err)
        assert p.status()["generation"] == gen
        time.sleep(0.5)
    finally:
        load.finish()
    assert load.ok > 50 and load.failures == [], "\n".join(load.failures[:20])
    assert "reload refused, keeping generation" in p.error_log_text()


def test_failed_upgrade_keeps_serving(proxyd_factory, origin_factory, tmp_path, monkeypatch):
    """A new binary that cannot start leaves the old master serving, with the reason logged."""
    tls_port = free_port()
    p, files = _make(proxyd_factory, origin_factory, tmp_path, tls_port)
    master = p.status()["pid"]
    # Corrupt the active generation so the re-executed binary refuses to start.
    con = sqlite3.connect(str(p.db))
    con.execute("UPDATE generations SET blob = zeroblob(64) WHERE active = 1")
    con.commit()
    con.close()
    os.kill(master, signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "binary upgrade failed" not in p.error_log_text():
        time.sleep(0.05)
    assert "binary upgrade failed, still serving" in p.error_log_text(), p.diagnostics()
    assert p.status()["pid"] == master
    c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5)
    c.request("GET", "/which", headers={"Host": "app.test"})
    assert c.getresponse().read() == b"config-A"


def test_reload_memory_flat(proxyd_factory, origin_factory, tmp_path, monkeypatch):
    """1,000 reloads between two generations: worker RSS does not grow (plain build: ASan's
    quarantine would hide or fake a leak)."""
    plain = str(ROOT / "bin" / "proxyd")
    if not os.path.exists(plain):
        pytest.skip("bin/proxyd not built")
    monkeypatch.setattr(proxyd_fixtures, "PROXYD", plain)
    tls_port = free_port()
    p, files = _make(proxyd_factory, origin_factory, tmp_path, tls_port)
    gens = []
    for tag in "BA":
        assert p.proxyctl("add-site", files[tag])[0] == 0
        gens.append(_active_generation(p.db))

    def flip(i):
        con = sqlite3.connect(str(p.db))
        con.execute("UPDATE generations SET active = 0 WHERE active = 1")
        con.execute("UPDATE generations SET active = 1 WHERE id = ?", (gens[i % 2],))
        con.commit()
        con.close()
        st, _, body = p.admin("POST", "/reload")
        assert st == 200, body
        _wait_generation(p, gens[i % 2])

    for i in range(50):
        flip(i)
    before = sum(vm_rss_kib(w) for w in p.worker_pids())
    for i in range(1000):
        flip(i)
    after = sum(vm_rss_kib(w) for w in p.worker_pids())
    print(f"\nworker RSS before {before} KiB, after 1,000 reloads {after} KiB")
    assert after - before < 2048, (before, after)


def test_tunnel_and_slow_download_survive_reloads_and_upgrade(proxyd_factory, backend_factory, origin_factory):
    """A WebSocket tunnel and a slow download keep going through 10 reloads (inside the
    same workers) and a binary upgrade (they stay on the old, draining workers)."""
    from test_proxyd_basic import ws_echo, ws_handler, ws_open  # the tunnel backend and client
    b = backend_factory(ws_handler)
    origin = origin_factory(echo=False)
    site = (f"site: ws\ndefault: true\nupstreams:\n  app:\n    servers: [{{address: \"{b.address}\"}}]\n"
            f"  dl:\n    servers: [{{address: \"127.0.0.1:{origin.port}\"}}]\n"
            "routes:\n  - match: {path_prefix: /bytes/}\n    upstream: dl\n"
            "  - match: {path_prefix: /}\n    upstream: app\n    websocket: true\n")
    p = proxyd_factory(sites=[site], global_settings={"limits": {"drain_timeout": "30s"}})
    p.backend = b
    s, _ = ws_open(p)
    dl = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    dl.sendall(b"GET /bytes/200000000 HTTP/1.1\r\nHost: ws.test\r\nConnection: close\r\n\r\n")
    got, masters = 0, []
    try:
        for i in range(10):
            assert p.proxyctl("reload")[0] in (0,)
            gen_before = p.status()["generation"]
            p.add_site(site + f"# reload {i}\n", expect_rc=0)  # a new generation each time
            _wait_generation(p, _active_generation(p.db))
            assert p.status()["generation"] != gen_before
            assert ws_echo(s, [f"msg{i}".encode()]) == f"MSG{i}".encode()
            got += len(dl.recv(65536))  # the download advances slowly, never reset
        old_master = p.status()["pid"]
        masters.append(_upgrade(p, old_exits=False))
        assert _pid_alive(old_master), "the old master must wait for the tunnel and the download"
        assert ws_echo(s, [b"after-upgrade"]) == b"AFTER-UPGRADE"  # still served by an old worker
        dl.settimeout(20)
        while True:
            d = dl.recv(1 << 20)
            if not d:
                break
            got += len(d)
        assert got > 200000000, f"download truncated at {got} bytes"
        s.close()
        deadline = time.monotonic() + 10  # with its last connections gone, the old master exits
        while time.monotonic() < deadline and _pid_alive(old_master):
            time.sleep(0.05)
        assert not _pid_alive(old_master)
    finally:
        s.close()
        dl.close()
        _stop_masters(p, masters)
