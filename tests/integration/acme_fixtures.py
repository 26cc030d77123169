"""A real ACME CA on loopback for tests/integration/test_acme.py.

Debian's pebble and pebble-challtestsrv, started as shared/recipes/acme-pebble.sh shows, but on
free ports so that runs never clash:
  * pebble-challtestsrv is pebble's DNS: every name has A 127.0.0.1 and no AAAA (-defaultIPv6 "",
    otherwise pebble's VA dials [::1]); its HTTP-01/TLS-ALPN responders are switched off.
  * pebble serves ACME over TLS with a certificate made here (the package ships none), validates
    HTTP-01 on `httpPort` = the port of the test's proxyd HTTP listener, and runs with
    PEBBLE_VA_NOSLEEP=1 (no random validation delay) and PEBBLE_AUTHZREUSE=100 (a second order
    for a name is 'ready' at once, so the authorization-reuse path always runs).  Pebble's default
    PEBBLE_WFE_NONCEREJECT=5 stays on: 5% of good nonces are refused and the client must retry.
    Pebble makes a new root at every start: root_pem() fetches /roots/0 from its management port.
Every process is stopped by PID (SIGTERM, bounded wait, SIGKILL).

Fixtures:
  pebble (module scope)  Pebble: .directory, .ca_file, .http_port, root_pem(), log_text()
  acme_store factory     acme_store(name, directory=None, http_port=None) -> AcmeStore: a private
                         store initialised with global settings pointing at the CA (default: the
                         module's pebble), optionally with a proxyd serving its HTTP listener
                         (AcmeStore.start_proxyd()); everything stopped at teardown.
  silent_listener        a TCP listener that counts connections (a "CA" that must never be called)
"""
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from proxyd_fixtures import PROXYCTL, AcceptLoop, Proxyd, _kill_pid, free_port, run_proxyctl, wait_port

PEBBLE = "/usr/bin/pebble"
CHALLTESTSRV = "/usr/bin/pebble-challtestsrv"
START_TIMEOUT = 10.0


def stop_process(proc, timeout=5.0):
    """SIGTERM, bounded wait, SIGKILL: by PID, never by name."""
    if proc is None or proc.poll() is not None:
        return
    _kill_pid(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_pid(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def free_tcp_udp_port():
    """A port free for both TCP and UDP on 127.0.0.1 (a DNS server takes both)."""
    for _ in range(50):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
            t.close()
    raise RuntimeError("no free TCP+UDP port")


class Pebble:
    """pebble + pebble-challtestsrv on free loopback ports; HTTP-01 probes go to http_port."""

    def __init__(self, tmp, http_port, env=None):
        self.dir = Path(tmp)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.http_port = http_port
        self.procs = []
        self.ca_file = str(self.dir / "pebble-cert.pem")
        self.log_path = self.dir / "pebble.log"
        self._make_tls_cert()
        self.dns_port = free_tcp_udp_port()
        self.cts_port = free_port()
        self.acme_port = free_port()
        self.mgmt_port = free_port()
        self.directory = f"https://127.0.0.1:{self.acme_port}/dir"
        try:
            self._start_challtestsrv()
            self._start_pebble(env or {})
        except BaseException:
            self.stop()
            raise

    def _make_tls_cert(self):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-days", "30", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", str(self.dir / "pebble-key.pem"), "-out", self.ca_file],
                       check=True, capture_output=True, timeout=30)

    def _spawn(self, args, log, env=None):
        full = dict(os.environ)
        full.update(env or {})
        with open(log, "ab") as f:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=full)
        self.procs.append(proc)
        return proc

    def _start_challtestsrv(self):
        proc = self._spawn([CHALLTESTSRV, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                            "-dns01", f"127.0.0.1:{self.dns_port}", "-http01", "", "-https01", "", "-tlsalpn01", "",
                            "-management", f"127.0.0.1:{self.cts_port}"], self.dir / "challtestsrv.log")
        if not wait_port(self.cts_port, START_TIMEOUT, proc):
            raise RuntimeError(f"pebble-challtestsrv did not start:\n{(self.dir / 'challtestsrv.log').read_text()}")

    def _start_pebble(self, env):
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.acme_port}", "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
            "certificate": self.ca_file, "privateKey": str(self.dir / "pebble-key.pem"),
            "httpPort": self.http_port, "tlsPort": free_port(), "ocspResponderURL": "",
            "externalAccountBindingRequired": False}}
        (self.dir / "pebble.json").write_text(json.dumps(config))
        full_env = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "100"}
        full_env.update(env)
        self.proc = self._spawn([PEBBLE, "-config", str(self.dir / "pebble.json"),
                                 "-dnsserver", f"127.0.0.1:{self.dns_port}"], self.log_path, full_env)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                self.get("/dir")
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"pebble did not serve {self.directory}:\n{self.log_text()}")

    def get(self, path, mgmt=False, timeout=5.0):
        """GET over TLS trusting only pebble's own certificate."""
        port = self.mgmt_port if mgmt else self.acme_port
        ctx = ssl.create_default_context(cafile=self.ca_file)
        with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=ctx, timeout=timeout) as r:
            return r.read()

    def root_pem(self):
        return self.get("/roots/0", mgmt=True).decode()

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self):
        for proc in reversed(self.procs):
            stop_process(proc)
        self.procs = []


def have_pebble():
    return os.access(PEBBLE, os.X_OK) and os.access(CHALLTESTSRV, os.X_OK)


needs_pebble = pytest.mark.skipif(not have_pebble(), reason="pebble not installed (packaging/install-deps.sh)")


@pytest.fixture(scope="module")
def pebble(tmp_path_factory):
    """One pebble for the module; HTTP-01 goes to a port reserved for the tests' proxyd."""
    if not have_pebble():
        pytest.skip("pebble not installed (packaging/install-deps.sh)")
    p = Pebble(tmp_path_factory.mktemp("pebble"), free_port())
    yield p
    p.stop()


def site_text(name, hosts, mode="acme"):
    hl = ", ".join(f'"{h}"' for h in hosts)
    return (f"site: {name}\nhosts: [{hl}]\ntls: {{certificate: {mode}}}\n"
            "upstreams:\n  app:\n    servers: [{address: \"127.0.0.1:9\"}]\n"
            "routes:\n  - match: {path_prefix: /}\n    upstream: app\n")


class AcmeStore(Proxyd):
    """A private store whose global settings name an ACME directory; proxyd started on demand.

    proxy.yaml (as `proxyctl init --global` gets it): listen http [127.0.0.1:http_port], https on a free port,
    admin socket in the store's folder, one worker, acme {directory, ca_file, email}.
    """

    def __init__(self, tmp, name, http_port, directory, ca_file):
        acme = {"directory": directory, "email": "ops@example.com"}
        if ca_file:
            acme["ca_file"] = ca_file
        self.https_port = free_port()
        super().__init__(tmp, {"listen": {"http": [f"127.0.0.1:{http_port}"],
                                          "https": [f"127.0.0.1:{self.https_port}"]}, "acme": acme},
                         workers=1, name=name)
        self.port = http_port  # Proxyd picked its own; the CA probes this one

    def add(self, name, hosts, mode="acme"):
        return self.add_site(site_text(name, hosts, mode))

    def run(self, *args, binary=None, timeout=60):
        """proxyctl --db DB ARGS with the given binary; (rc, out, err, seconds)."""
        t0 = time.monotonic()
        rc, out, err = run_proxyctl("--db", self.db, *args, binary=binary or PROXYCTL, cwd=self.dir, timeout=timeout)
        return rc, out, err, time.monotonic() - t0

    def cert(self, site):
        import sqlite3
        con = sqlite3.connect(str(self.db), timeout=30)
        con.row_factory = sqlite3.Row
        try:
            row = con.execute("SELECT * FROM certificates WHERE site = ?", (site,)).fetchone()
            return dict(row) if row else None
        finally:
            con.close()

    def start_proxyd(self):
        return self.start(timeout=START_TIMEOUT)


@pytest.fixture
def acme_store(tmp_path, request):
    """acme_store(name, directory=None, http_port=None, ca_file=None): stores pointing at the
    module's pebble unless a directory is given; every proxyd started is stopped by PID."""
    made = []

    def make(name, directory=None, http_port=None, ca_file=None):
        if directory is None:
            peb = request.getfixturevalue("pebble")
            directory, http_port, ca_file = peb.directory, peb.http_port, peb.ca_file
        s = AcmeStore(tmp_path, name, http_port or free_port(), directory, ca_file)
        made.append(s)
        return s

    yield make
    errors = []
    for s in made:
        try:
            s.stop()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n".join(errors))


class SilentListener(AcceptLoop):
    """Accepts TCP connections on a free port, counts them and closes them."""

    def __init__(self):
        self.connections = 0
        super().__init__()

    def serve(self, c):
        self.connections += 1
        c.close()


@pytest.fixture
def silent_listener():
    s = SilentListener()
    yield s
    s.close()
