"""Upstream host names resolved through DNS (SPEC §10): every A/AAAA address is used, names
are asked again on the `resolve:` schedule by the workers' own stub resolver, and the event
loop never waits for an answer.

A small DNS responder runs in the test (UDP on 127.0.0.1, an ephemeral port given to proxyd as
proxy.yaml `resolver`); the test changes its answers mid-test.  Backends listen on 127.0.0.2
and 127.0.0.3 on one port, so one name:port reaches either."""
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import socket
import json
import struct
import threading
import time

import pytest

from conftest import store, proxyctl, db, write  # noqa: F401
from proxyd_fixtures import backend_factory, free_port, http, proxy_site, proxyd_factory, wait_for  # noqa: F401

HOST = "dns.test"


class DnsResponder:
    """Answers A queries from self.answers[name] (a list of IPv4 addresses), AAAA with no
    records.  mode: "ok", "servfail", "nxdomain", "drop" (no answer), "delay" (answer after
    self.delay seconds).  Names it does not know get NXDOMAIN."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.answers = {}
        self.mode = "ok"
        self.delay = 2.0
        self.ttl = 300
        self.queries = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                reply = self._answer(data)
            except (ValueError, struct.error, IndexError):
                continue
            if reply is None:
                continue
            if self.mode == "delay":
                threading.Timer(self.delay, self._send, (reply, peer)).start()
            else:
                self._send(reply, peer)

    def _send(self, reply, peer):
        try:
            self.sock.sendto(reply, peer)
        except OSError:
            pass

    def _answer(self, q):
        qid, _flags, qd = struct.unpack("!HHH", q[:6])
        if qd != 1:
            return None
        off, labels = 12, []
        while q[off]:
            labels.append(q[off + 1:off + 1 + q[off]].decode().lower())
            off += 1 + q[off]
        qtype, _qclass = struct.unpack("!HH", q[off + 1:off + 5])
        question = q[12:off + 5]
        name = ".".join(labels)
        with self.lock:
            self.queries.append((name, qtype))
            mode, addrs = self.mode, list(self.answers.get(name, []))
        if mode == "drop":
            return None
        rcode = 2 if mode == "servfail" else 3 if (mode == "nxdomain" or name not in self.answers) else 0
        records = b""
        count = 0
        if rcode == 0 and qtype == 1:
            for a in addrs:
                records += struct.pack("!HHHIH", 0xC00C, 1, 1, self.ttl, 4) + socket.inet_aton(a)
                count += 1
        head = struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, count, 0, 0)
        return head + question + records

    def set(self, name, addrs, mode="ok"):
        with self.lock:
            self.answers[name] = addrs
            self.mode = mode

    def set_mode(self, mode):
        with self.lock:
            self.mode = mode

    def stop(self):
        self.stopping.set()
        self.thread.join(2)
        self.sock.close()


class Backend:
    """HTTP/1.1 on ip:port answering its name; /slow waits `slow` seconds first."""

    def __init__(self, ip, port, name, slow=1.5):
        body = name.encode()

        me = self
        self.open = 0                     # connections open now
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle(self):
                with me.lock:
                    me.open += 1
                try:
                    super().handle()
                finally:
                    with me.lock:
                        me.open -= 1

            def do_GET(self):
                if self.path.startswith("/slow"):
                    time.sleep(slow)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer((ip, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def dns():
    d = DnsResponder()
    yield d
    d.stop()


@pytest.fixture
def backends():
    made = []

    def make(port, *ips):
        for ip in ips:
            made.append(Backend(ip, port, ip))
        return made

    yield make
    for b in made:
        b.stop()


def start(proxyd_factory, dns, name, port, resolve="1s", workers=1, extra_sites=()):
    extra = f"resolve: {resolve}" if resolve else ""
    site = proxy_site("dnsapp", f"{name}:{port}", hosts=[HOST], default=True, upstream_extra=extra)
    return proxyd_factory(global_settings={"resolver": [f"127.0.0.1:{dns.port}"]}, sites=[site, *extra_sites],
                          workers=workers)


def body_of(p, target="/"):
    r = http(p.port, target=target, host=HOST, timeout=5)
    return r.status, r.body.decode(errors="replace")


def wait_body(p, want, tries=40, step=0.1):
    """Bounded: tries requests, step seconds apart; the bodies seen."""
    seen = []
    for _ in range(tries):
        st, b = body_of(p)
        seen.append((st, b))
        if st == 200 and b == want:
            return seen
        time.sleep(step)
    pytest.fail(f"no {want!r} after {tries} tries: {seen[-5:]}")


def test_changed_answer_reaches_new_address_and_inflight_finishes(proxyd_factory, dns, backends):
    port = free_port()
    made = backends(port, "127.0.0.2", "127.0.0.3")
    dns.set("app.test", ["127.0.0.2"])
    p = start(proxyd_factory, dns, "app.test", port)
    wait_body(p, "127.0.0.2")
    assert made[0].open >= 1              # pooled keep-alive connections to 127.0.0.2
    slow = {}
    t = threading.Thread(target=lambda: slow.update(r=body_of(p, "/slow")))
    t.start()
    time.sleep(0.2)                       # the slow request is on 127.0.0.2 now
    dns.set("app.test", ["127.0.0.3"])
    t0 = time.monotonic()
    wait_body(p, "127.0.0.3", tries=50)   # resolve: 1s; at most 5 s
    assert time.monotonic() - t0 < 5
    assert {body_of(p)[1] for _ in range(6)} == {"127.0.0.3"}
    t.join(10)
    assert slow.get("r") == (200, "127.0.0.2"), slow
    # The old pool drains: the idle connections to 127.0.0.2 were closed when it left the
    # answer, the slow request's connection once it was done (keepalive_timeout is 75 s).
    a = made[0]
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and a.open:
        time.sleep(0.05)
    assert a.open == 0, f"{a.open} connections to the old address still open"
    log = p.error_log_text()
    assert "upstream name app.test: now 127.0.0.3 (was 127.0.0.2)" in log, log


def test_every_address_takes_traffic(proxyd_factory, dns, backends):
    port = free_port()
    backends(port, "127.0.0.2", "127.0.0.3")
    dns.set("pair.test", ["127.0.0.2", "127.0.0.3"])
    p = start(proxyd_factory, dns, "pair.test", port, resolve=None)
    wait_body(p, "127.0.0.2")
    got = {}
    for _ in range(20):
        st, b = body_of(p)
        assert st == 200
        got[b] = got.get(b, 0) + 1
    assert set(got) == {"127.0.0.2", "127.0.0.3"} and min(got.values()) >= 5, got
    assert ("pair.test", 28) in dns.queries     # AAAA asked too


@pytest.mark.parametrize("mode,why", [("servfail", "SERVFAIL from 127.0.0.1:"), ("drop", "no answer within")])
def test_failed_resolution_keeps_last_good(proxyd_factory, dns, backends, mode, why):
    port = free_port()
    backends(port, "127.0.0.2")
    dns.set("keep.test", ["127.0.0.2"])
    p = start(proxyd_factory, dns, "keep.test", port)
    wait_body(p, "127.0.0.2")
    dns.set_mode(mode)
    deadline = time.monotonic() + 8
    line = "upstream name keep.test: cannot resolve: "
    while time.monotonic() < deadline and line not in p.error_log_text():
        assert body_of(p) == (200, "127.0.0.2")
        time.sleep(0.2)
    log = p.error_log_text()
    assert line in log and why in log and "keeping its 1 address of the last answer" in log, log
    n = len(dns.queries)
    time.sleep(3)                         # more failed resolutions: still one line
    assert len(dns.queries) > n
    assert p.error_log_text().count(line) == 1, p.error_log_text()
    assert body_of(p) == (200, "127.0.0.2")
    dns.set_mode("ok")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "upstream name keep.test: resolves again" not in p.error_log_text():
        time.sleep(0.1)
    assert "upstream name keep.test: resolves again" in p.error_log_text()


def test_name_that_never_resolves_is_503(proxyd_factory, dns, backends):
    port = free_port()
    p = start(proxyd_factory, dns, "nowhere.test", port)   # the responder does not know it: NXDOMAIN
    deadline = time.monotonic() + 5
    line = "upstream name nowhere.test: cannot resolve: no such name (NXDOMAIN from 127.0.0.1:"
    while time.monotonic() < deadline and line not in p.error_log_text():
        time.sleep(0.05)
    assert line in p.error_log_text() and "its servers count as down until it does" in p.error_log_text()
    assert body_of(p)[0] == 503
    assert wait_for(lambda: f"no server of upstream app is up (nowhere.test:{port}: its host name has not resolved)"
                    in p.error_log_text(), 3), p.error_log_text()
    # it serves once the name exists
    backends(port, "127.0.0.2")
    dns.set("nowhere.test", ["127.0.0.2"])
    wait_body(p, "127.0.0.2", tries=60)


def test_slow_resolver_does_not_block_the_loop(proxyd_factory, dns, backends, backend_factory):
    """One worker: while its resolver waits 2 s for an answer, another site is served at once."""
    port = free_port()
    backends(port, "127.0.0.2")
    other = backend_factory(lambda req, conn: conn.respond(200, b"other"))
    dns.set("slow.test", ["127.0.0.2"], mode="delay")
    site2 = proxy_site("other", other.address, hosts=["other.test"])
    p = start(proxyd_factory, dns, "slow.test", port, extra_sites=[site2])
    worst = 0.0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        with dns.lock:
            asked = len(dns.queries)
        t0 = time.monotonic()
        r = http(p.port, host="other.test", timeout=5)
        worst = max(worst, time.monotonic() - t0)
        assert r.status == 200 and r.body == b"other"
        time.sleep(0.05)
    assert asked >= 2, dns.queries          # queries were in flight meanwhile
    assert worst < 0.3, f"a request took {worst:.3f}s while the resolver waited"


# ---- proxyctl: validate, route-test, dump --------------------------------------------------

RESOLVE_SITE = """\
site: r
hosts: [r.example.com]
upstreams:
  app: {servers: ["app.internal:3000", "127.0.0.1:3001"], resolve: 30s}
  ttl: {servers: ["ttl.internal:3000"]}
routes:
  - {match: {path_prefix: /t}, upstream: ttl}
  - {match: {path_prefix: /}, upstream: app}
"""


def test_route_test_and_dump_show_resolve(store, proxyctl, tmp_path):
    write(tmp_path, "r.yaml", RESOLVE_SITE, dedent=False)
    write(tmp_path, "proxy.yaml", 'resolver: ["127.0.0.53", "[::1]:5353"]\n', dedent=False)
    rc, out, err = proxyctl("init", "--global", "proxy.yaml")
    assert rc == 0, err
    rc, out, err = proxyctl("add-site", "r.yaml")
    assert rc == 0, err
    rc, out, err = proxyctl("route-test", "http://r.example.com/x")
    assert rc == 0, err
    assert "upstream app: round_robin, keepalive 32, resolve every 30s\n" in out, out
    rc, out, err = proxyctl("route-test", "http://r.example.com/t")
    assert "upstream ttl: round_robin, keepalive 32, resolve at the records' TTL\n" in out, out
    rc, out, err = proxyctl("route-test", "--json", "http://r.example.com/x")
    assert json.loads(out)["upstream_pool"]["resolve_ms"] == 30000, out
    rc, out, err = proxyctl("route-test", "--json", "http://r.example.com/t")
    assert json.loads(out)["upstream_pool"]["resolve_ms"] == 0, out
    rc, out, err = proxyctl("dump")
    assert rc == 0, err
    assert "  dns resolver 127.0.0.53:53\n" in out and "  dns resolver [::1]:5353\n" in out, out
    assert "resolve every 30s" in out


@pytest.mark.parametrize("text, message", [
    ('site: a\nhosts: [a.example.com]\nupstreams:\n  app: {servers: ["a.internal:80"], resolve: 100ms}\n'
     'routes: [{match: {path_prefix: /}, upstream: app}]\n',
     "site.yaml:4:46: error: resolve must be between 1s and 24h (not '100ms')"),
    ('site: a\nhosts: [a.example.com]\nupstreams:\n  app: {servers: ["a.internal:80"], resolve: soon}\n'
     'routes: [{match: {path_prefix: /}, upstream: app}]\n',
     "site.yaml:4:46: error: invalid duration 'soon' for 'resolve'"),
    ('site: a\nhosts: [a.example.com]\nupstreams:\n  app: {servers: ["127.0.0.1:80"], resolve: 5s}\n'
     'routes: [{match: {path_prefix: /}, upstream: app}]\n',
     "site.yaml:4:45: warning: resolve has no effect: no server of upstream 'app' is given by a host name"),
])
def test_resolve_diagnostics(store, proxyctl, tmp_path, text, message):
    write(tmp_path, "site.yaml", text, dedent=False)
    rc, out, err = proxyctl("validate", "site.yaml")
    assert message in err, err
    assert rc == (0 if "warning" in message else 1)


@pytest.mark.parametrize("value, message", [
    ('["ns.example.com"]', "proxy.yaml:1:12: error: invalid resolver address 'ns.example.com': use an IP address, not a host name"),
    ('["127.0.0.1:0"]', "proxy.yaml:1:12: error: invalid resolver address '127.0.0.1:0': port must be 1..65535"),
    ('[]', "proxy.yaml:1:11: error: resolver lists no address (leave it out to use /etc/resolv.conf)"),
])
def test_resolver_diagnostics(store, proxyctl, tmp_path, value, message):
    write(tmp_path, "proxy.yaml", f"resolver: {value}\n", dedent=False)
    write(tmp_path, "site.yaml", RESOLVE_SITE, dedent=False)
    rc, out, err = proxyctl("validate", "--global", "proxy.yaml", "site.yaml")
    assert rc == 1
    assert message + "\n" in err, err


def test_dead_address_skipped_by_the_next_connections(proxyd_factory, dns, backends):
    """pair.test has two addresses, only 127.0.0.2 answers: a refused connection to
    127.0.0.3 moves the attempt to the name's other address (it is a server of the pool),
    so no request fails, and the dead address is skipped afterwards."""
    port = free_port()
    backends(port, "127.0.0.2")
    dns.set("half.test", ["127.0.0.2", "127.0.0.3"])
    p = start(proxyd_factory, dns, "half.test", port, resolve=None)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "upstream name half.test: 127.0.0.2 127.0.0.3" not in p.error_log_text():
        time.sleep(0.05)
    got = [body_of(p) for _ in range(10)]
    assert got == [(200, "127.0.0.2")] * 10, got
    log = p.error_log_text()
    assert "upstream half.test:" in log and "=127.0.0.3: " in log, log
    assert "its other addresses take the next connections" in log, log


def test_without_resolve_the_ttl_decides(proxyd_factory, dns, backends):
    """No `resolve:`: the name is asked again when its records' TTL (1 s here) runs out."""
    port = free_port()
    backends(port, "127.0.0.2", "127.0.0.3")
    dns.ttl = 1
    dns.set("ttl.test", ["127.0.0.2"])
    p = start(proxyd_factory, dns, "ttl.test", port, resolve=None)
    wait_body(p, "127.0.0.2")
    dns.set("ttl.test", ["127.0.0.3"])
    wait_body(p, "127.0.0.3", tries=50)
    asked = sum(1 for q in dns.queries if q == ("ttl.test", 1))
    assert 2 <= asked <= 12, dns.queries   # about one A query a second, not a flood


def test_restarted_worker_starts_with_the_masters_addresses(proxyd_factory, dns, backends):
    """The master gives a name one bounded try at a load before it forks workers: a worker
    restarted after a crash serves at once, even while the name server does not answer."""
    import os
    import signal
    port = free_port()
    backends(port, "127.0.0.2")
    dns.set("boot.test", ["127.0.0.2"])
    p = start(proxyd_factory, dns, "boot.test", port, resolve=None)
    assert "upstream name boot.test: 127.0.0.2" in p.stderr_text(), p.diagnostics()   # the master, before its log opens
    dns.set_mode("drop")
    old = p.worker_pids()
    assert len(old) == 1
    os.kill(old[0], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and p.worker_pids() in ([], old):
        time.sleep(0.02)
    new = p.worker_pids()
    assert new and new != old, new
    assert body_of(p) == (200, "127.0.0.2")
