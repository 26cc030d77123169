"""HA pair on one host, without namespaces (SPEC.md §3 `ha`, §4 `ha …`/`health`/`status`/`renew-cert`, §8).

Covers the `ha` block of proxy.yaml (validation, kept out of the rule table), `ha init` (cluster CA,
node certificates, join bundles), `ha render` (keepalived.conf, checked with `keepalived -t`),
`ha notify`, `health`, `renew-cert` on a BACKUP, and replication with `ha sync`, including peers
that must never be trusted (another cluster CA, a node certificate naming this node, a silent or
absent peer, a peer speaking garbage) and garbage sent to proxyd's replication listener.

Two nodes cannot both run proxyd on one host with the same listen addresses, so replication is
tested like this: node A (lb0) runs proxyd, with its replication listener on 127.0.0.1:RA and its
peer at 127.0.0.1:RB where nothing listens; node B (lb1) never runs proxyd and has A (127.0.0.1:RA)
as its peer; `proxyctl --db B ha sync` pulls A's state.  Both stores hold the same global settings
except `ha` (A's listen ports; relative admin socket and log paths, which resolve beside each
store), so their rule tables are byte-identical.  The live path (B's proxyd pulling every second,
failover) is covered by test_ha.py in network namespaces.

Every process a test starts (proxyd master and all its descendants, the origin, Python servers) is
stopped by PID or closed at teardown; every wait is bounded.

Run with: /usr/bin/python3 -m pytest -q tests/integration/test_ha_cli.py
"""
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from proxyd_fixtures import (PROXYCTL, PROXYD, AcceptLoop, _is_alive, _kill_pid, children_of, free_port,  # noqa: F401
                             http, origin_factory, proxy_site, run_proxyctl, sanitizer_report, wait_for, wait_port)

PRIVATE_KEY = "PRIVATE KEY"


# ---- environment ----------------------------------------------------------------------------

def vrrp_interface():
    """An interface keepalived accepts for VRRP: the default route's, else the first non-loopback."""
    try:
        with open("/proc/net/route") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if len(fields) > 2 and fields[1] == "00000000" and fields[0] != "lo":
                    return fields[0]
    except OSError:
        pass
    names = sorted(n for n in os.listdir("/sys/class/net") if n != "lo")
    return names[0] if names else None


IFACE = vrrp_interface() or "eth0"
KEEPALIVED = shutil.which("keepalived") or next(
    (p for p in ("/usr/sbin/keepalived", "/sbin/keepalived") if os.access(p, os.X_OK)), None)


def keepalived_check(path):
    """`keepalived -t -f path`: (rc, output), or None when keepalived (or an interface) is missing."""
    if KEEPALIVED is None or vrrp_interface() is None:
        return None
    p = subprocess.run([KEEPALIVED, "-t", "-f", str(path)], capture_output=True, text=True, timeout=30)
    return p.returncode, p.stdout + p.stderr


def tcp_listening(port):
    """Whether something listens on TCP port (from /proc/net/tcp*, without connecting to it)."""
    want = f":{port:04X}"
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    if fields[1].endswith(want) and fields[3] == "0A":
                        return True
        except OSError:
            pass
    return False


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        for k in children_of(todo.pop()):
            out.append(k)
            todo.append(k)
    return out


def pem_blocks(text, label):
    return re.findall(rf"-----BEGIN {label}-----\n.*?-----END {label}-----\n", text, re.S)


def fingerprint(cert_pem):
    der = ssl.PEM_cert_to_DER_cert(cert_pem)
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def openssl(*args, input=None):
    p = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, input=input, timeout=30)
    assert p.returncode == 0, f"openssl {' '.join(map(str, args))}: {p.stderr}"
    return p.stdout


def cert_subject_cn(pem):
    out = openssl("x509", "-noout", "-subject", "-nameopt", "multiline", input=pem)
    m = re.search(r"commonName\s*=\s*(.+)", out)
    return m.group(1).strip() if m else None


# ---- settings --------------------------------------------------------------------------------

def shared_settings(http_port):
    """The global settings both nodes share (everything but `ha`); relative paths resolve beside
    each store."""
    return (f'listen: {{http: ["127.0.0.1:{http_port}"], https: []}}\n'
            "admin: {socket: admin.sock}\n"
            "logs: {access: access.log, error: error.log}\n"
            "workers: 1\n"
            + ("user: root\n" if os.geteuid() == 0 else "")  # proxyd runs its workers as root only when told
            + "limits: {drain_timeout: 2s}\n")


def ha_block(node, peer, listen=None, **extra):
    d = {"node": node, "peer": peer}
    if listen:
        d["listen"] = listen
    d.update({"interface": IFACE, "virtual_ips": ["192.0.2.100/24"]})
    d.update(extra)
    return yaml.safe_dump({"ha": d}, sort_keys=False, default_flow_style=False)


# ---- nodes -----------------------------------------------------------------------------------

class Node:
    """One node: a directory with proxy.yaml and store.db; proxyd optionally."""

    def __init__(self, base, name, settings, ha=""):
        self.name = name
        self.dir = Path(base) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db = self.dir / "store.db"
        self.text = settings + ha
        (self.dir / "proxy.yaml").write_text(self.text)
        self.proc = None
        self.pid = None
        self.kids = set()
        self.outputs = []
        m = re.search(r'127\.0\.0\.1:(\d+)"\]', settings)
        self.http_port = int(m.group(1)) if m else None
        rc, out, err = self.ctl("init", "--global", "proxy.yaml")
        assert rc == 0, f"init {name} failed ({rc}):\n{out}\n{err}\n--- proxy.yaml:\n{self.text}"

    def ctl(self, *args, timeout=30):
        """proxyctl --db DB ARGS in the node's directory.  No command may print a private key."""
        rc, out, err = run_proxyctl("--db", self.db, *args, cwd=self.dir, timeout=timeout)
        self.outputs.append((args, out, err))
        assert PRIVATE_KEY not in out and PRIVATE_KEY not in err, \
            f"proxyctl {' '.join(map(str, args))} printed a private key:\n{out}\n{err}"
        return rc, out, err

    def sql(self, query, *params):
        con = sqlite3.connect(str(self.db), timeout=30)
        try:
            return con.execute(query, params).fetchall()
        finally:
            con.close()

    def one(self, query, *params):
        rows = self.sql(query, *params)
        assert len(rows) == 1, rows
        return rows[0]

    def active(self):
        """(id, digest, blob, comment) of the active generation."""
        return self.one("SELECT id, digest, blob, comment FROM generations WHERE active = 1")

    def role(self):
        return self.one("SELECT role FROM ha_state")[0]

    def serial(self):
        return self.one("SELECT serial FROM ha_state")[0]

    def replicated(self):
        """What replication copies: compared between nodes, and before/after a refused pull."""
        gid, digest, blob, _ = self.active()
        return {
            "digest": digest,
            "blob": blob,
            "generation_sites": self.sql("SELECT name, yaml, source FROM generation_sites WHERE generation = ? "
                                         "ORDER BY name", gid),
            "sites": self.sql("SELECT name, yaml, source, digest, updated FROM sites ORDER BY name"),
            "certificates": self.sql("SELECT site, hosts, cert_pem, chain_pem, key_pem, not_before, not_after, "
                                     "source, issuer, updated FROM certificates ORDER BY site"),
            "acme_accounts": self.sql("SELECT directory, email, key_pem, kid, created FROM acme_accounts "
                                      "ORDER BY directory"),
            "ticket_keys": self.sql("SELECT id, name, keys, created, expires FROM ticket_keys ORDER BY id"),
        }

    def everything(self):
        """The whole store, for 'nothing changed' checks."""
        d = self.replicated()
        d["generations"] = self.sql("SELECT id, digest, comment, active FROM generations ORDER BY id")
        d["ha_state"] = self.sql("SELECT role, role_changed, serial, synced, synced_from FROM ha_state")
        d["ha_keys"] = self.sql("SELECT name, cert_pem, key_pem, subject FROM ha_keys ORDER BY name")
        d["settings"] = self.sql("SELECT key, value FROM settings ORDER BY key")
        return d

    def keys(self):
        return {r[0]: {"cert": r[1], "key": r[2], "subject": r[3]}
                for r in self.sql("SELECT name, cert_pem, key_pem, subject FROM ha_keys")}

    def add_site(self, name, text):
        path = self.dir / f"{name}.yaml"
        path.write_text(text)
        rc, out, err = self.ctl("add-site", path.name)
        assert rc == 0, f"add-site {name} on {self.name}: {rc}\n{out}\n{err}"
        return out

    def stderr_path(self):
        return self.dir / "proxyd.stderr"

    def log_text(self):
        text = ""
        for p in (self.dir / "error.log", self.stderr_path()):
            try:
                text += p.read_text(errors="replace")
            except OSError:
                pass
        return text

    # -- proxyd --
    def start(self, repl_port=None, timeout=8.0):
        env = dict(os.environ)
        env.pop("PROXYD_DB", None)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        with open(self.stderr_path(), "ab") as log:
            self.proc = subprocess.Popen([PROXYD, "--db", str(self.db), "--foreground"], cwd=str(self.dir),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        self.pid = self.proc.pid
        ok = wait_port(self.http_port, timeout, self.proc)
        if ok and repl_port:
            ok = wait_for(lambda: tcp_listening(repl_port) or self.proc.poll() is not None, timeout) \
                and self.proc.poll() is None
        self.kids.update(descendants(self.pid))
        if not ok:
            self.stop(check=False)
            pytest.fail(f"proxyd of {self.name} did not come up:\n{self.log_text()[-4000:]}")
        # master, one worker, the replication process and its puller
        wait_for(lambda: len(descendants(self.pid)) >= (3 if repl_port else 1), 5)
        self.kids.update(descendants(self.pid))
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, check=True):
        """SIGTERM by PID, bounded wait, SIGKILL of the master and every descendant if needed."""
        if self.proc is None:
            return
        self.kids.update(descendants(self.pid))
        if self.proc.poll() is None:
            _kill_pid(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                for k in list(self.kids) + descendants(self.pid):
                    _kill_pid(k, signal.SIGKILL)
                _kill_pid(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        for k in sorted(self.kids):
            while time.monotonic() < deadline and _is_alive(k):
                time.sleep(0.02)
            if _is_alive(k):
                _kill_pid(k, signal.SIGKILL)
        self.proc = None
        self.kids.clear()
        if check:
            text = self.stderr_path().read_text(errors="replace") if self.stderr_path().exists() else ""
            assert not sanitizer_report(text), f"sanitizer report in proxyd stderr of {self.name}:\n{text[-20000:]}"

    def status(self):
        rc, out, err = self.ctl("status", "--json")
        assert rc == 0, f"status of {self.name}: {rc} {err}"
        return json.loads(out)


class Cluster:
    def __init__(self, base):
        self.base = Path(base)
        self.nodes = []
        self.closers = []

    def node(self, name, settings, ha=""):
        n = Node(self.base, name, settings, ha)
        self.nodes.append(n)
        return n

    def close(self):
        errors = []
        for c in reversed(self.closers):
            try:
                c()
            except Exception as e:  # noqa: BLE001 - teardown goes on
                errors.append(repr(e))
        for n in self.nodes:
            try:
                n.stop()
            except AssertionError as e:
                errors.append(str(e))
        if errors:
            pytest.fail("\n".join(errors))


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


class Pair:
    """A (lb0, MASTER, makes the CA) and B (lb1, BACKUP, joined with A's bundle)."""

    def __init__(self, cluster, b_peer=None):
        self.cluster = cluster
        self.http_port, self.ra, self.rb = free_port(), free_port(), free_port()
        self.settings = shared_settings(self.http_port)
        self.a = cluster.node("a", self.settings, ha_block("lb0", f"127.0.0.1:{self.rb}", f"127.0.0.1:{self.ra}",
                                                           priority=150))
        self.b = cluster.node("b", self.settings, ha_block("lb1", b_peer or f"127.0.0.1:{self.ra}",
                                                           f"127.0.0.1:{self.rb}", priority=100))
        rc, out, err = self.a.ctl("ha", "init")
        assert rc == 0, err
        self.ca_fp = re.search(r"cluster CA ([0-9A-F:]{95})", out).group(1)
        self.bundle = cluster.base / "lb1.bundle"
        rc, out, err = self.a.ctl("ha", "init", "--issue", "lb1", "--out", self.bundle)
        assert rc == 0, err
        rc, out, err = self.b.ctl("ha", "init", "--join", self.bundle)
        assert rc == 0, err
        assert self.a.ctl("ha", "notify", "MASTER")[0] == 0
        assert self.b.ctl("ha", "notify", "BACKUP")[0] == 0

    def start_a(self):
        return self.a.start(repl_port=self.ra)

    def sync(self, *args, timeout=30):
        t0 = time.monotonic()
        rc, out, err = self.b.ctl("ha", "sync", *args, timeout=timeout)
        return rc, out, err, time.monotonic() - t0


@pytest.fixture
def pair(cluster):
    return Pair(cluster)


def site(name, host, upstream="127.0.0.1:9", tls=None):
    text = (f"site: {name}\nhosts: [\"{host}\"]\nupstreams:\n  app:\n    servers: [{{address: \"{upstream}\"}}]\n"
            "routes:\n  - match: {path_prefix: /}\n    upstream: app\n")
    if tls:
        text += f"tls: {{certificate: {tls}}}\n"
    return text


# =============================================================================================
# 1. the ha block: validation, and kept out of the rule table
# =============================================================================================

VALID_HA = [("node", "lb0"), ("peer", '"127.0.0.1:9443"'), ("interface", "eth0"),
            ("virtual_ips", '["192.0.2.100/24"]')]


def ha_text(items):
    return "workers: 1\nadmin: {socket: admin.sock}\nha:\n" + "".join(f"  {k}: {v}\n" for k, v in items)


def replace(key, value):
    return [(k, value if k == key else v) for k, v in VALID_HA]


def plus(*extra):
    return VALID_HA + list(extra)


def at(text, needle):
    """'line:col' (1-based) of the first occurrence of needle in text; for (prefix, value), of value
    right after the first occurrence of prefix."""
    if isinstance(needle, tuple):
        i = text.index(needle[0]) + len(needle[0])
    else:
        i = text.index(needle)
    line = text.count("\n", 0, i) + 1
    col = i - (text.rfind("\n", 0, i) + 1) + 1
    return f"{line}:{col}"


# (id, items, needle whose position the diagnostic names (None: the ha map), message regex)
INVALID = [
    *[(f"missing-{k}", [(kk, v) for kk, v in VALID_HA if kk != k], None, rf"ha: missing '{k}'")
      for k, _ in VALID_HA],
    ("peer-nohost", replace("peer", "nohost"), "nohost", r"ha: invalid peer address 'nohost': missing :port"),
    ("peer-no-port", replace("peer", '"1.2.3.4"'), '"1.2.3.4"',
     r"ha: invalid peer address '1\.2\.3\.4': missing :port"),
    ("peer-port-0", replace("peer", '"1.2.3.4:0"'), '"1.2.3.4:0"',
     r"ha: invalid peer address '1\.2\.3\.4:0': port must be 1\.\.65535"),
    ("peer-hostname", replace("peer", "lb1.example:9443"), "lb1.example:9443",
     r"ha: peer must be an IP address with a port"),
    ("listen-bogus", plus(("listen", "bogus")), "bogus", r"ha: invalid listen address 'bogus': missing :port"),
    ("listen-no-port", plus(("listen", '"0.0.0.0"')), '"0.0.0.0"', r"ha: invalid listen address '0\.0\.0\.0'"),
    ("listen-unix", plus(("listen", "unix:/tmp/ha.sock")), "unix:/tmp/ha.sock",
     r"ha: listen must be an IP address with a port"),
    ("vip-bad-octet", replace("virtual_ips", '["10.0.0.300/24"]'), '"10.0.0.300/24"',
     r"invalid virtual IP '10\.0\.0\.300/24'"),
    ("vip-hostname", replace("virtual_ips", '["192.0.2.1/24", "vip.example"]'), '"vip.example"',
     r"invalid virtual IP 'vip\.example'"),
    ("advert-1500ms", plus(("advert_interval", "1500ms")), "1500ms",
     r"ha: advert_interval must be 10ms-255s, whole seconds from 1s \(VRRPv2\), or under 1s \(VRRPv3\)"),
    ("advert-0s", plus(("advert_interval", "0s")), "0s", r"ha: advert_interval must be"),
    ("advert-256s", plus(("advert_interval", "256s")), "256s", r"ha: advert_interval must be"),
    ("advert-not-duration", plus(("advert_interval", "often")), "often",
     r"invalid duration 'often' for 'advert_interval': expected a number followed by ms, s, m, h or d"),
    ("unknown-key", plus(("priorty", "100")), "priorty", r"unknown key 'priorty' \(did you mean 'priority'\?\)"),
    ("unknown-key-vips", [("virtual_ip" if k == "virtual_ips" else k, v) for k, v in VALID_HA] +
     [("virtual_ips", '["192.0.2.1/24"]')], "virtual_ip:",
     r"unknown key 'virtual_ip' \(did you mean 'virtual_ips'\?\)"),
    ("node-uppercase", replace("node", "LB0"), "LB0", r"ha: node name must be 1-63 of a-z, 0-9 and '-'"),
    ("router-id-0", plus(("router_id", "0")), ("router_id: ", "0"),
     r"'router_id' must be a whole number from 1 to 255, not '0'"),
    ("router-id-256", plus(("router_id", "256")), "256", r"'router_id' must be a whole number from 1 to 255"),
    ("priority-255", plus(("priority", "255")), "255", r"'priority' must be a whole number from 1 to 254"),
    ("preempt-maybe", plus(("preempt", "maybe")), "maybe", r"'preempt' must be true or false, not 'maybe'"),
    ("auth-pass-long", plus(("auth_pass", "123456789")), "123456789", r"ha: auth_pass must be 1-8 printable characters"),
    ("address-bogus", plus(("address", "bogus")), "bogus", r"ha: invalid address 'bogus'"),
]


@pytest.fixture(scope="module")
def valid_store(tmp_path_factory):
    """A store initialised with a valid ha block: failed `init --global` runs must leave it as it is."""
    d = tmp_path_factory.mktemp("valid")
    (d / "proxy.yaml").write_text(ha_text(VALID_HA))
    rc, out, err = run_proxyctl("--db", d / "store.db", "init", "--global", "proxy.yaml", cwd=d)
    assert rc == 0, err
    return d


@pytest.fixture
def fresh_store(tmp_path):
    """Like valid_store, for tests whose command may (wrongly) succeed and change the store."""
    (tmp_path / "proxy.yaml").write_text(ha_text(VALID_HA))
    rc, out, err = run_proxyctl("--db", tmp_path / "store.db", "init", "--global", "proxy.yaml", cwd=tmp_path)
    assert rc == 0, err
    return tmp_path


def store_rows(db):
    con = sqlite3.connect(str(db))
    try:
        return (con.execute("SELECT key, value FROM settings ORDER BY key").fetchall(),
                con.execute("SELECT id, digest, active FROM generations ORDER BY id").fetchall())
    finally:
        con.close()


@pytest.mark.parametrize("case", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_ha_block_is_refused(valid_store, case):
    name, items, needle, message = case
    text = ha_text(items)
    path = valid_store / f"{name}.yaml"
    path.write_text(text)
    before = store_rows(valid_store / "store.db")
    rc, out, err = run_proxyctl("--db", valid_store / "store.db", "init", "--global", path.name, cwd=valid_store)
    assert rc == 1, f"{rc}\n{out}\n{err}\n--- {path.name}:\n{text}"
    where = at(text, needle) if needle else at(text, items[0][0] + ":")
    assert re.search(rf"^{re.escape(path.name)}:{where}: error: {message}", err, re.M), \
        f"expected {path.name}:{where}: error: /{message}/ in:\n{err}\n--- {path.name}:\n{text}"
    assert re.search(r"^1 error, \d+ warnings?$", err, re.M), err
    assert store_rows(valid_store / "store.db") == before


def init_errors(store_dir, name, items):
    text = ha_text(items)
    (store_dir / name).write_text(text)
    rc, out, err = run_proxyctl("--db", store_dir / "store.db", "init", "--global", name, cwd=store_dir)
    assert rc == 1, (rc, out, err)
    return text, err


def test_every_ha_error_is_reported(valid_store):
    items = [("node", "lb0"), ("peer", "nohost"), ("interface", "eth0"), ("virtual_ips", '["192.0.2.3/24"]'),
             ("advert_interval", "1500ms"), ("listen", "bogus"), ("auth_pass", "123456789")]
    text, err = init_errors(valid_store, "many.yaml", items)
    for needle in ("nohost", "1500ms", "bogus", "123456789"):
        assert re.search(rf"^many\.yaml:{at(text, needle)}: error: ha: ", err, re.M), (needle, err)
    assert re.search(r"^4 errors, \d+ warnings?$", err, re.M), err


@pytest.mark.parametrize("extra", [("virtual_ips", '["10.0.0.300/24"]'), ("priorty", "1")],
                         ids=["bad-vip", "unknown-key"])
def test_ha_errors_are_not_hidden_by_a_key_error(fresh_store, extra):
    items = [("node", "lb0"), ("peer", "nohost"), ("interface", "eth0"), ("virtual_ips", '["192.0.2.3/24"]'),
             ("advert_interval", "1500ms")]
    items = [(k, v) for k, v in items if k != extra[0]] + [extra]
    text, err = init_errors(fresh_store, "hidden.yaml", items)
    # a quoted scalar is reported at its opening quote
    for needle in ("nohost", "1500ms", '"10.0.0.300/24"' if extra[0] == "virtual_ips" else "priorty"):
        assert re.search(rf"^hidden\.yaml:{at(text, needle)}: error: ", err, re.M), (needle, err)
    assert re.search(r"^3 errors, \d+ warnings?$", err, re.M), err


@pytest.mark.parametrize("vip", ["10.0.0.1/33", "10.0.0.1/abc", "10.0.0.1/", "fd00::1/129"])
def test_virtual_ip_prefix_is_validated(fresh_store, vip):
    text = ha_text(replace("virtual_ips", f'["{vip}"]'))
    (fresh_store / "vip.yaml").write_text(text)
    rc, out, err = run_proxyctl("--db", fresh_store / "store.db", "init", "--global", "vip.yaml", cwd=fresh_store)
    assert rc == 1, f"{rc}: {out}{err}"
    assert f"vip.yaml:{at(text, chr(34) + vip)}" in err and "invalid virtual IP" in err, err


def test_empty_virtual_ips_is_refused(fresh_store):
    text = ha_text(replace("virtual_ips", "[]"))
    (fresh_store / "novip.yaml").write_text(text)
    rc, out, err = run_proxyctl("--db", fresh_store / "store.db", "init", "--global", "novip.yaml", cwd=fresh_store)
    assert rc == 1, f"{rc}: {out}{err}"
    assert "virtual_ips" in err, err


@pytest.mark.parametrize("key, value", [("interface", '"eth0\\n    garbage_keyword 1"'), ("interface", '"eth0 lo"'),
                                        ("auth_pass", '"a}\\nb"')])
def test_keepalived_values_cannot_inject_configuration(fresh_store, key, value):
    items = replace(key, value) if key in dict(VALID_HA) else plus((key, value))
    text = ha_text(items)
    (fresh_store / "inject.yaml").write_text(text)
    rc, out, err = run_proxyctl("--db", fresh_store / "store.db", "init", "--global", "inject.yaml", cwd=fresh_store)
    assert rc == 1, f"{rc}: {out}{err}"
    assert f"inject.yaml:{at(text, value)}: error: " in err, err


def test_ha_block_is_not_in_the_rule_table(cluster):
    """Stores whose settings differ only in `ha` (or have none) compile byte-identical tables."""
    settings = shared_settings(free_port())
    x = cluster.node("x", settings, ha_block("lb0", "127.0.0.1:9443", priority=150, advert_interval="200ms"))
    y = cluster.node("y", settings, ha_block("lb1", "10.0.0.1:9555", "10.0.0.2:9555", priority=100, preempt=False,
                                             advert_interval="3s", router_id=7, auth_pass="s3cret",
                                             address="10.0.0.2", virtual_ips=["192.0.2.7/24", "2001:db8::7/64"]))
    z = cluster.node("z", settings)
    digests = []
    for n in (x, y, z):
        rc, out, err = n.ctl("generations", "--json")
        assert rc == 0, err
        gens = json.loads(out)
        digests.append([g["digest"] for g in gens if g["active"]])
    assert digests[0] == digests[1] == digests[2] and len(digests[0]) == 1, digests
    assert x.active()[2] == y.active()[2] == z.active()[2]
    for n in (x, y, z):
        n.add_site("web", site("web", "web.test"))
    assert x.active()[1] == y.active()[1] == z.active()[1]
    assert x.active()[2] == y.active()[2] == z.active()[2]
    # the default listen address is every address on the peer's port; it is stored for proxyd
    assert x.sql("SELECT value FROM settings WHERE key = 'ha_listen'") == [("0.0.0.0:9443",)]
    assert y.sql("SELECT value FROM settings WHERE key = 'ha_listen'") == [("10.0.0.2:9555",)]
    assert z.sql("SELECT count(*) FROM settings WHERE key LIKE 'ha_%'") == [(0,)]
    # changing only the ha block leaves the table as it is
    (x.dir / "proxy2.yaml").write_text(settings + ha_block("lb0", "127.0.0.1:9443", priority=200))
    rc, out, err = x.ctl("init", "--global", "proxy2.yaml")
    assert rc == 0, err
    assert x.active()[2] == z.active()[2]


# =============================================================================================
# 2. ha init: the cluster CA, node certificates, join bundles
# =============================================================================================

def assert_mode_0600(db):
    for p in (str(db), str(db) + "-wal", str(db) + "-shm"):
        if os.path.exists(p):
            assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p


def verify_chain(tmp, ca_pem, cert_pem):
    (tmp / "v-ca.pem").write_text(ca_pem)
    (tmp / "v-cert.pem").write_text(cert_pem)
    p = subprocess.run(["openssl", "verify", "-CAfile", tmp / "v-ca.pem", tmp / "v-cert.pem"], capture_output=True,
                       text=True, timeout=30)
    return p.returncode == 0


def test_ha_init_creates_the_cluster_ca_once(cluster, tmp_path):
    a = cluster.node("a", shared_settings(free_port()), ha_block("lb0", "127.0.0.1:9443"))
    events = a.one("SELECT count(*) FROM events")[0]
    rc, out, err = a.ctl("ha", "init")
    assert rc == 0, err
    m = re.match(r"created cluster CA ([0-9A-F:]{95})\nnode lb0: certificate issued \(\d+ days\)\n", out)
    assert m, out
    keys = a.keys()
    assert set(keys) == {"ca", "node"}
    assert fingerprint(keys["ca"]["cert"]) == m.group(1)
    assert "PRIVATE KEY" in keys["ca"]["key"] and "PRIVATE KEY" in keys["node"]["key"]
    assert keys["node"]["subject"] == "lb0" and cert_subject_cn(keys["node"]["cert"]) == "lb0"
    assert verify_chain(tmp_path, keys["ca"]["cert"], keys["node"]["cert"])
    assert a.one("SELECT count(*) FROM events")[0] == events + 1
    assert_mode_0600(a.db)
    # idempotent: same CA, same node certificate
    rc, out, err = a.ctl("ha", "init")
    assert rc == 0, err
    assert out == f"node lb0 already has its certificate; cluster CA {m.group(1)}\n"
    assert a.keys() == keys
    assert_mode_0600(a.db)
    # the node certificate does not change the rule table or the replicated serial's meaning
    assert a.one("SELECT count(*) FROM generations")[0] == 1


def test_ha_init_without_ha_block(cluster):
    n = cluster.node("n", shared_settings(free_port()))
    for args in (("ha", "init"), ("ha", "init", "--issue", "lb1", "--out", "b.pem"), ("ha", "render")):
        rc, out, err = n.ctl(*args)
        assert rc == 1, (args, rc, out, err)
        assert "the global settings have no 'ha' block" in err, err
        assert out == ""
    rc, out, err = n.ctl("ha", "sync")
    assert rc == 1 and "no 'ha' settings" in err, (rc, err)
    assert n.sql("SELECT count(*) FROM ha_keys") == [(0,)]
    assert not (n.dir / "b.pem").exists()


def test_ha_usage_errors(pair):
    for args in (("ha",), ("ha", "bogus"), ("ha", "init", "--issue", "lb1"), ("ha", "init", "--out", "x"),
                 ("ha", "init", "--issue", "lb1", "--out", "x", "--join", "y"), ("ha", "sync", "--bogus"),
                 ("ha", "notify"), ("ha", "notify", "MASTER", "BACKUP"), ("ha", "render", "--bogus")):
        rc, out, err = pair.a.ctl(*args)
        assert rc == 2, (args, rc, out, err)


def test_issue_and_join_bundle(pair, cluster, tmp_path):
    a, b = pair.a, pair.b
    # the pair fixture issued and joined: check the bundle and B's keys
    assert stat.S_IMODE(os.stat(pair.bundle).st_mode) == 0o600
    text = pair.bundle.read_text()
    certs, keys = pem_blocks(text, "CERTIFICATE"), pem_blocks(text, "PRIVATE KEY")
    assert len(certs) == 2 and len(keys) == 1, text
    assert certs[0] == a.keys()["ca"]["cert"]
    assert cert_subject_cn(certs[1]) == "lb1"
    assert verify_chain(tmp_path, certs[0], certs[1])
    bk = b.keys()
    assert bk["ca"]["cert"] == a.keys()["ca"]["cert"] and bk["ca"]["key"] == ""   # the CA key stays on A
    assert bk["node"]["subject"] == "lb1" and bk["node"]["cert"] == certs[1] and bk["node"]["key"] == keys[0]
    assert b.sql("SELECT command, what FROM events ORDER BY id DESC LIMIT 2")[1] == \
        ("ha init --join", "joined the HA pair")
    assert_mode_0600(b.db)
    # `ha init` on the joined node: its certificate exists, no new CA
    rc, out, err = b.ctl("ha", "init")
    assert rc == 0, err
    assert out == f"node lb1 already has its certificate; cluster CA {pair.ca_fp}\n"
    assert b.keys() == bk

    # --issue writes 0600 even over an existing world-readable file
    f = tmp_path / "old.pem"
    f.write_text("old")
    os.chmod(f, 0o644)
    rc, out, err = a.ctl("ha", "init", "--issue", "lb3", "--out", f)
    assert rc == 0, err
    assert out == f"wrote the join bundle for node lb3 to {f} (mode 0600)\n"
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert len(pem_blocks(f.read_text(), "CERTIFICATE")) == 2 and "old" not in f.read_text()
    # never through a symlink
    target = tmp_path / "target.txt"
    target.write_text("keep me")
    (tmp_path / "link.pem").symlink_to(target)
    rc, out, err = a.ctl("ha", "init", "--issue", "lb3", "--out", tmp_path / "link.pem")
    assert rc != 0 and target.read_text() == "keep me", (rc, err)
    # --issue for this node's own name, or an invalid name
    for bad in ("lb0", "LB1", "a_b", "x" * 64):
        rc, out, err = a.ctl("ha", "init", "--issue", bad, "--out", tmp_path / "bad.pem")
        assert rc == 1, (bad, rc, err)
        assert f"'{bad}' is not a valid peer node name" in err, err
        assert not (tmp_path / "bad.pem").exists()
    # --issue on the joined node: it holds no CA key
    rc, out, err = b.ctl("ha", "init", "--issue", "lb3", "--out", tmp_path / "fromb.pem")
    assert rc == 1 and "no cluster CA key" in err, (rc, err)
    assert not (tmp_path / "fromb.pem").exists()

    # joining with a bundle for another node: refused, naming both
    c = cluster.node("c", pair.settings, ha_block("lb2", f"127.0.0.1:{pair.ra}"))
    rc, out, err = c.ctl("ha", "init", "--join", pair.bundle)
    assert rc == 1, (rc, out, err)
    assert "'lb1'" in err and "'lb2'" in err, err
    assert c.sql("SELECT count(*) FROM ha_keys") == [(0,)]
    # garbage, a missing file, a bundle whose certificate another CA issued
    (tmp_path / "garbage.pem").write_bytes(os.urandom(512))
    rc, out, err = c.ctl("ha", "init", "--join", tmp_path / "garbage.pem")
    assert rc == 1 and "not a join bundle" in err, (rc, err)
    rc, out, err = c.ctl("ha", "init", "--join", tmp_path / "missing.pem")
    assert rc == 1 and "missing.pem" in err, (rc, err)
    rc, out, err = a.ctl("ha", "init", "--issue", "lb2", "--out", tmp_path / "lb2.pem")
    assert rc == 0, err
    other = cluster.node("o", pair.settings, ha_block("lb9", "127.0.0.1:9443"))
    assert other.ctl("ha", "init")[0] == 0
    good = tmp_path / "lb2.pem"
    mixed = pem_blocks(other.keys()["ca"]["cert"], "CERTIFICATE")[0] + "".join(
        pem_blocks(good.read_text(), "CERTIFICATE")[1:]) + pem_blocks(good.read_text(), "PRIVATE KEY")[0]
    (tmp_path / "mixed.pem").write_text(mixed)
    rc, out, err = c.ctl("ha", "init", "--join", tmp_path / "mixed.pem")
    assert rc == 1 and "not issued by the bundle's CA" in err, (rc, err)
    wrong_key = "".join(pem_blocks(good.read_text(), "CERTIFICATE")) + pem_blocks(text, "PRIVATE KEY")[0]
    (tmp_path / "wrongkey.pem").write_text(wrong_key)
    rc, out, err = c.ctl("ha", "init", "--join", tmp_path / "wrongkey.pem")
    assert rc == 1 and "does not match the key" in err, (rc, err)
    assert c.sql("SELECT count(*) FROM ha_keys") == [(0,)]
    # and the right one
    rc, out, err = c.ctl("ha", "init", "--join", good)
    assert rc == 0, err
    assert out == f"node lb2 joined: cluster CA {pair.ca_fp}\n"
    assert_mode_0600(c.db)


def test_no_command_prints_a_private_key(pair, tmp_path):
    """Every proxyctl run goes through Node.ctl, which fails on 'PRIVATE KEY'; here the commands that
    handle keys, all of them, once more and explicitly (with proxyd running, for status)."""
    a, b = pair.a, pair.b
    a.add_site("web", site("web", "web.test", tls="self-signed"))
    pair.start_a()
    runs = [a.ctl("ha", "init"), a.ctl("ha", "init", "--issue", "lb5", "--out", tmp_path / "b5.pem"),
            b.ctl("ha", "init", "--join", pair.bundle), b.ctl("ha", "init"), a.ctl("ha", "render"),
            a.ctl("ha", "render", "--out", tmp_path / "k.conf"), a.ctl("status", "--json"), a.ctl("status"),
            b.ctl("ha", "sync"), b.ctl("ha", "sync", "--force"), a.ctl("show-site", "web"), a.ctl("dump"),
            a.ctl("certs"), b.ctl("certs")]
    assert all(rc == 0 for rc, _, _ in runs), [(rc, err) for rc, _, err in runs]
    for rc, out, err in runs:
        assert PRIVATE_KEY not in out + err
    for node in (a, b):
        for args, out, err in node.outputs:
            assert PRIVATE_KEY not in out + err, args
    assert PRIVATE_KEY not in (tmp_path / "k.conf").read_text()
    assert PRIVATE_KEY not in a.log_text()


# =============================================================================================
# 3. ha render
# =============================================================================================

def test_render_vrrp3(cluster, tmp_path):
    a = cluster.node("a", shared_settings(free_port()),
                     ha_block("lb0", "127.0.0.1:9443", advert_interval="200ms", auth_pass="secret",
                              virtual_ips=["192.0.2.100/24", "192.0.2.101/24"], router_id=42, priority=150))
    rc, out, err = run_proxyctl("--db", "store.db", "ha", "render", cwd=a.dir)   # a relative --db
    assert rc == 0, err
    assert "warning: auth_pass is ignored" in err and "VRRPv3" in err, err
    assert PRIVATE_KEY not in out + err
    db = str(a.db.resolve())
    assert re.search(r"^\s+vrrp_version 3$", out, re.M), out
    assert re.search(r"^\s+advert_int 0\.20$", out, re.M), out
    assert re.search(r"^\s+router_id lb0$", out, re.M)
    assert re.search(r"^\s+virtual_router_id 42$", out, re.M)
    assert re.search(r"^\s+priority 150$", out, re.M)
    assert re.search(rf"^\s+interface {re.escape(IFACE)}$", out, re.M)
    assert not re.search(r"^\s*nopreempt", out, re.M)
    assert "authentication" not in out and "auth_pass" not in out and "secret" not in out
    dev = re.escape(IFACE)
    assert re.search(rf"virtual_ipaddress \{{\n\s+192\.0\.2\.100/24 dev {dev}\n\s+192\.0\.2\.101/24 dev {dev}\n\s+\}}",
                     out), out
    assert re.search(r"unicast_peer \{\n\s+127\.0\.0\.1\n\s+\}", out), out
    assert "unicast_src_ip" not in out
    assert re.search(rf"^\s+process {re.escape(os.path.realpath(PROXYD))} --db {re.escape(db)}$", out, re.M), out
    assert re.search(rf'^\s+script "{re.escape(os.path.realpath(PROXYCTL))} --db {re.escape(db)} health"$', out, re.M)
    for state in ("MASTER", "BACKUP", "FAULT", "STOP"):
        assert re.search(rf'^\s+notify_{state.lower()} "{re.escape(os.path.realpath(PROXYCTL))} --db {re.escape(db)} '
                         rf'ha notify {state}"$', out, re.M), state
    assert "{{" not in out and "}}" not in out
    # --out writes the same text (and says so on stderr), and keepalived accepts it
    rc, out2, err2 = a.ctl("ha", "render", "--out", tmp_path / "k3.conf")
    assert rc == 0 and out2 == "", err2
    assert (tmp_path / "k3.conf").read_text() == out
    assert re.search(r"wrote .*k3\.conf for node lb0 \(VRRPv3, advert 0\.20s, priority 150\)", err2), err2
    check = keepalived_check(tmp_path / "k3.conf")
    if check is not None:
        assert check[0] == 0, check[1]


def test_render_vrrp2(cluster, tmp_path):
    a = cluster.node("a", shared_settings(free_port()),
                     ha_block("lb1", "[fd00::11]:9443", advert_interval="1s", preempt=False, auth_pass="s3cret",
                              address="192.0.2.12", priority=100))
    rc, out, err = a.ctl("ha", "render", "--out", tmp_path / "k2.conf", "--proxyd", "/opt/px/sbin/proxyd")
    assert rc == 0, err
    assert "warning" not in err, err
    text = (tmp_path / "k2.conf").read_text()
    assert re.search(r"^\s+vrrp_version 2$", text, re.M), text
    assert re.search(r"^\s+advert_int 1$", text, re.M), text
    assert re.search(r"^\s+nopreempt$", text, re.M), text
    assert re.search(r"authentication \{\n\s+auth_type PASS\n\s+auth_pass s3cret\n\s+\}", text), text
    assert re.search(r"^\s+unicast_src_ip 192\.0\.2\.12$", text, re.M), text
    assert re.search(r"unicast_peer \{\n\s+fd00::11\n\s+\}", text), text
    assert re.search(rf"^\s+process /opt/px/sbin/proxyd --db {re.escape(str(a.db.resolve()))}$", text, re.M), text
    assert "nopreempt" in err
    # 3 s adverts: still whole seconds, VRRPv2
    (a.dir / "p3.yaml").write_text(a.text.replace("advert_interval: 1s", "advert_interval: 3s"))
    assert a.ctl("init", "--global", "p3.yaml")[0] == 0
    rc, out, err = a.ctl("ha", "render")
    assert rc == 0 and re.search(r"^\s+advert_int 3$", out, re.M) and re.search(r"^\s+vrrp_version 2$", out, re.M)
    # keepalived accepts the v2 file (with an IPv4 peer: keepalived wants one address family per instance)
    (a.dir / "p4.yaml").write_text(a.text.replace('"[fd00::11]:9443"', '"192.0.2.11:9443"').replace(
        "[fd00::11]:9443", "192.0.2.11:9443"))
    rc, _, err = a.ctl("init", "--global", "p4.yaml")
    assert rc == 0, err
    rc, out, err = a.ctl("ha", "render", "--out", tmp_path / "k2b.conf")
    assert rc == 0, err
    assert re.search(r"unicast_peer \{\n\s+192\.0\.2\.11\n\s+\}", (tmp_path / "k2b.conf").read_text())
    check = keepalived_check(tmp_path / "k2b.conf")
    if check is not None:
        assert check[0] == 0, check[1]


def test_render_template(cluster, tmp_path):
    a = cluster.node("a", shared_settings(free_port()), ha_block("lb0", "127.0.0.1:9443"))
    (tmp_path / "ok.in").write_text("node={{node}} peer={{peer_ip}} iface={{interface}} prio={{priority}}\n")
    rc, out, err = a.ctl("ha", "render", "--template", tmp_path / "ok.in")
    assert rc == 0, err
    assert out == f"node=lb0 peer=127.0.0.1 iface={IFACE} prio=100\n"
    (tmp_path / "bad.in").write_text("vrrp_instance x {\n    state {{state}}\n}\n")
    rc, out, err = a.ctl("ha", "render", "--template", tmp_path / "bad.in", "--out", tmp_path / "bad.conf")
    assert rc != 0, (rc, out)
    assert "{{state}}" in err, err
    assert not (tmp_path / "bad.conf").exists()
    rc, out, err = a.ctl("ha", "render", "--template", tmp_path / "missing.in")
    assert rc != 0 and "missing.in" in err


# =============================================================================================
# 4. ha notify, 5. health
# =============================================================================================

def test_notify_records_each_state(pair):
    a = pair.a
    pair.start_a()
    serial = a.serial()
    for arg, role in (("MASTER", "MASTER"), ("backup", "BACKUP"), ("Fault", "FAULT"), ("stop", "STOP"),
                      ("master", "MASTER")):
        n_events = a.one("SELECT count(*) FROM events")[0]
        t0 = int(time.time())
        rc, out, err = a.ctl("ha", "notify", arg)
        assert rc == 0, err
        assert out == f"role {role} recorded\n"
        assert a.one("SELECT role, role_changed >= ? FROM ha_state", t0) == (role, 1)
        assert a.one("SELECT count(*) FROM events")[0] == n_events + 1
        assert a.one("SELECT command, what FROM events ORDER BY id DESC LIMIT 1") == \
            (f"ha notify {arg}", f"VRRP role {role}")
        ha = a.status()["ha"]
        assert ha["role"] == role and ha["node"] == "lb0", ha
        assert ha["role_changed"] >= t0
    assert a.serial() == serial          # the role is node-local: it does not bump the replicated serial
    for bad in ("leader", "", "MASTERX", "master\n"):
        rc, out, err = a.ctl("ha", "notify", bad)
        assert rc == 2, (bad, rc, out, err)
        assert "unknown VRRP state" in err, err
    assert a.role() == "MASTER"


def test_health_follows_proxyd(pair):
    a = pair.a
    rc, out, err = a.ctl("health")
    assert rc == 3, (rc, out, err)
    assert "proxyd is not running" in err and out == ""
    pair.start_a()
    rc, out, err = a.ctl("health")
    assert (rc, out) == (0, ""), err
    a.stop()
    rc, out, err = a.ctl("health")
    assert rc == 3 and "proxyd is not running" in err, (rc, err)


# =============================================================================================
# 6. renew-cert on a node that is not the MASTER
# =============================================================================================

def test_renew_cert_only_on_master(pair):
    a = pair.a
    a.add_site("web", site("web", "web.test", tls="self-signed"))
    cert = a.sql("SELECT cert_pem, not_after FROM certificates WHERE site = 'web'")
    gens = a.one("SELECT count(*) FROM generations")[0]
    # MASTER: as without a pair
    rc, out, err = a.ctl("renew-cert", "--due")
    assert rc == 0, err
    assert re.fullmatch(r"site 'web': not due \(expires \S+, \d+ days left\)\n", out), out
    rc, out, err = a.ctl("renew-cert", "web", "--force")
    assert rc == 0, err
    assert re.fullmatch(rf"site 'web': new self-signed certificate; generation {gens + 1} active\n", out), out
    cert = a.sql("SELECT cert_pem FROM certificates WHERE site = 'web'")
    # not MASTER: --due says so and succeeds; anything else is an error; nothing changes
    for role in ("BACKUP", "FAULT", "STOP"):
        assert a.ctl("ha", "notify", role)[0] == 0
        before = a.everything()
        rc, out, err = a.ctl("renew-cert", "--due")
        assert (rc, out) == (0, f"this node is {role} in its HA pair: only the MASTER renews certificates; "
                                "nothing to do\n"), (rc, out, err)
        for args in (("--all",), ("web",), ("web", "--force"), ("--all", "--dry-run")):
            rc, out, err = a.ctl("renew-cert", *args)
            assert rc == 3, (role, args, rc, out, err)
            assert f"this node is {role} in its HA pair: only the MASTER renews certificates" in out + err
        assert a.everything() == before
    assert a.sql("SELECT cert_pem FROM certificates WHERE site = 'web'") == cert
    # back to MASTER
    assert a.ctl("ha", "notify", "MASTER")[0] == 0
    rc, out, err = a.ctl("renew-cert", "--due")
    assert rc == 0 and "not due" in out, (rc, out, err)


def test_renew_cert_without_role_or_sites(cluster):
    n = cluster.node("n", shared_settings(free_port()), ha_block("lb0", "127.0.0.1:9443"))
    # keepalived has not reported yet: the node renews as a single node would
    rc, out, err = n.ctl("renew-cert", "--due")
    assert (rc, out) == (0, "no site has a certificate to renew\n"), (rc, out, err)
    assert n.ctl("ha", "notify", "MASTER")[0] == 0
    rc, out, err = n.ctl("renew-cert", "--due")
    assert (rc, out) == (0, "no site has a certificate to renew\n"), (rc, out, err)


# =============================================================================================
# 7. replication with `ha sync`
# =============================================================================================

def assert_same_replicated_state(a, b):
    ra, rb = a.replicated(), b.replicated()
    for k in ra:
        assert ra[k] == rb[k], f"{k} differs between {a.name} and {b.name}"


def test_sync_pulls_the_masters_state(pair, origin_factory):
    a, b = pair.a, pair.b
    origin = origin_factory()
    a.add_site("app", proxy_site("app", origin.address, hosts=["app.test"]))
    a.add_site("web", site("web", "web.test", tls="self-signed"))
    # B has state of its own, which the pull replaces
    b.add_site("old", site("old", "old.test", tls="self-signed"))
    con = sqlite3.connect(str(b.db))
    con.execute("INSERT INTO ticket_keys (name, keys, created, expires) VALUES (?, ?, 1, 4102444800)",
                (b"N" * 16, b"K" * 64))
    con.commit()
    con.close()
    b_settings = b.sql("SELECT key, value FROM settings ORDER BY key")
    b_keys = b.keys()
    pair.start_a()
    assert http(pair.http_port, host="app.test").status == 200
    assert wait_for(lambda: a.sql("SELECT count(*) FROM ticket_keys")[0][0] > 0, 5), "A made no ticket keys"
    st = a.status()["ha"]
    served = st["served"]
    gid_a, digest_a, _, _ = a.active()

    rc, out, err, took = pair.sync()
    assert rc == 0, err
    assert out == f"pulled from lb0 (MASTER, serial {a.serial()}): generation {gid_a} {digest_a}\n", out
    assert "warning" not in err, err  # equal settings outside `ha`: the table compiled here would be the same
    assert_same_replicated_state(a, b)
    assert b.active()[3] == f"replicated from lb0 generation {gid_a}"
    assert b.active()[1] == digest_a
    assert b.ctl("list-sites")[1] == a.ctl("list-sites")[1]
    assert [s for s in b.ctl("list-sites")[1].split() if s in ("app", "web", "old")] == ["app", "web"]
    assert b.one("SELECT serial, synced_from, synced >= ? FROM ha_state", int(time.time()) - 30) == \
        (a.serial(), "lb0", 1)
    assert b.role() == "BACKUP"
    # node-local things stay B's own
    assert b.sql("SELECT key, value FROM settings ORDER BY key") == b_settings
    assert b.keys() == b_keys
    assert b.one("SELECT global_yaml FROM generations WHERE active = 1")[0] == b.text
    assert b.one("SELECT command FROM events ORDER BY id DESC LIMIT 1")[0] == "ha sync from lb0"
    # B's store is one B's proxyd would start on, routing as A does
    p = subprocess.run([PROXYD, "--db", str(b.db), "--check"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    assert b.ctl("route-test", "http://app.test/x")[1] == a.ctl("route-test", "http://app.test/x")[1]
    assert wait_for(lambda: a.status()["ha"]["served"] == served + 2, 3), a.status()["ha"]

    # in sync: nothing to pull
    gens = b.one("SELECT count(*) FROM generations")[0]
    rc, out, err, _ = pair.sync()
    assert (rc, out) == (0, f"nothing to pull: peer lb0 is MASTER at serial {a.serial()}, this node lb1 is BACKUP "
                            f"at serial {a.serial()} (in sync)\n"), (rc, out, err)
    assert b.one("SELECT count(*) FROM generations")[0] == gens
    assert wait_for(lambda: a.status()["ha"]["served"] == served + 3, 3)

    # a change on A reaches B with the next pull
    a.add_site("new", site("new", "new.test"))
    assert wait_for(lambda: a.status()["generation"] == a.active()[0], 5)
    rc, out, err, _ = pair.sync()
    assert rc == 0 and out.startswith("pulled from lb0 (MASTER, "), (rc, out, err)
    assert_same_replicated_state(a, b)
    assert b.active()[3] == f"replicated from lb0 generation {a.active()[0]}"
    assert "new" in b.ctl("list-sites")[1]
    # A kept serving all along
    assert http(pair.http_port, host="app.test").status == 200
    assert a.running()


def test_sync_warns_when_settings_differ_outside_ha(pair):
    """B's settings differ from A's outside `ha` (workers): after a pull, B's table compiled with
    its own settings would not be the replicated one, and `ha sync` says so (exit 0: the pull is
    still right)."""
    a, b = pair.a, pair.b
    a.add_site("web", site("web", "web.test"))
    text = b.text.replace("workers: 1", "workers: 2")
    assert text != b.text
    (b.dir / "proxy.yaml").write_text(text)
    rc, out, err = b.ctl("init", "--global", b.dir / "proxy.yaml")
    assert rc == 0, err
    pair.start_a()
    rc, out, err, _ = pair.sync()
    assert rc == 0 and out.startswith("pulled from lb0"), (rc, out, err)
    digest_a = a.active()[1]
    assert re.search(rf"^proxyctl: warning: this node's settings differ from lb0's outside the 'ha' block: the "
                     rf"replicated table has digest {digest_a[:12]}, compiled here it would be [0-9a-f]{{12}} ",
                     err, re.M), err
    assert b.active()[1] == digest_a


def test_sync_follows_roles(pair):
    a, b = pair.a, pair.b
    a.add_site("web", site("web", "web.test"))
    pair.start_a()
    assert pair.sync()[0] == 0
    # the peer is BACKUP and nothing differs: nothing to pull
    assert a.ctl("ha", "notify", "BACKUP")[0] == 0
    before = b.everything()
    rc, out, err, _ = pair.sync()
    assert (rc, out) == (0, f"nothing to pull: peer lb0 is BACKUP at serial {a.serial()}, this node lb1 is BACKUP "
                            f"at serial {a.serial()} (in sync)\n"), (rc, out, err)
    assert b.everything() == before
    # the peer is BACKUP with changes: not pulled without --force
    a.add_site("more", site("more", "more.test"))
    rc, out, err, _ = pair.sync()
    assert (rc, out) == (0, f"nothing to pull: peer lb0 is BACKUP at serial {a.serial()}, this node lb1 is BACKUP "
                            f"at serial {b.serial()} ('ha sync --force' pulls anyway)\n"), (rc, out, err)
    assert b.everything() == before
    # --force pulls whatever the roles
    rc, out, err, _ = pair.sync("--force")
    assert rc == 0 and out.startswith(f"pulled from lb0 (BACKUP, serial {a.serial()}): generation "), (rc, out, err)
    assert_same_replicated_state(a, b)
    assert "more" in b.ctl("list-sites")[1]
    assert b.role() == "BACKUP"
    # B just became MASTER and the old MASTER holds newer changes: B catches up (within 10 s of its
    # role change) ...
    a.add_site("late", site("late", "late.test"))
    assert b.ctl("ha", "notify", "MASTER")[0] == 0
    rc, out, err, _ = pair.sync()
    assert rc == 0 and out.startswith("pulled from lb0 (BACKUP, "), (rc, out, err)
    assert_same_replicated_state(a, b)
    # ... but once B has been MASTER for a while, its own state wins
    con = sqlite3.connect(str(b.db))
    con.execute("UPDATE ha_state SET role_changed = role_changed - 60")
    con.commit()
    con.close()
    a.add_site("later", site("later", "later.test"))
    before = b.everything()
    rc, out, err, _ = pair.sync()
    assert (rc, out) == (0, f"nothing to pull: peer lb0 is BACKUP at serial {a.serial()}, this node lb1 is MASTER "
                            f"at serial {b.serial()} ('ha sync --force' pulls anyway)\n"), (rc, out, err)
    assert b.everything() == before
    # both MASTER (split brain): neither pulls from the other without --force
    assert a.ctl("ha", "notify", "MASTER")[0] == 0
    con = sqlite3.connect(str(b.db))
    con.execute("UPDATE ha_state SET role_changed = role_changed - 60")
    con.commit()
    con.close()
    before = b.everything()
    rc, out, err, _ = pair.sync()
    assert rc == 0 and out.startswith("nothing to pull: peer lb0 is MASTER"), (rc, out, err)
    assert b.everything() == before


# =============================================================================================
# 8. peers that must never be trusted
# =============================================================================================

class TcpHolder(AcceptLoop):
    """Accepts TCP connections and never says a word (closed at teardown)."""

    def __init__(self):
        self.conns = []
        super().__init__()

    def serve(self, c):
        self.conns.append(c)

    def close(self):
        super().close()
        for c in self.conns:
            c.close()


def u32(v):
    return struct.pack("<I", v)


def record(kind, *fields):
    out = u32(kind) + u32(len(fields))
    for f in fields:
        f = str(f).encode() if isinstance(f, int) else f.encode() if isinstance(f, str) else f
        out += u32(len(f)) + f
    return out


def message(body, full, length=None, digest=None):
    return (b"PXHASNAP" + u32(1) + u32(1 if full else 0) + struct.pack("<Q", len(body) if length is None else length)
            + (digest or hashlib.sha256(body).digest()) + body)


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            return data
        data += chunk
    return data


class FakePeer(AcceptLoop):
    """A TLS 1.3 server with a node certificate (mutual TLS, the given CA) that answers each 8-byte
    replication request with reply(cmd): bytes to send, (bytes,) to send and close, or None to close."""

    def __init__(self, tmp, cert_pem, key_pem, ca_pem, reply):
        for name, text in (("fp-cert.pem", cert_pem), ("fp-key.pem", key_pem), ("fp-ca.pem", ca_pem)):
            (Path(tmp) / name).write_text(text)
            os.chmod(Path(tmp) / name, 0o600)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.ctx.load_cert_chain(str(Path(tmp) / "fp-cert.pem"), str(Path(tmp) / "fp-key.pem"))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.load_verify_locations(str(Path(tmp) / "fp-ca.pem"))
        self.reply = reply
        self.requests = []
        super().__init__(backlog=8)

    def serve(self, c):
        s = None
        try:
            c.settimeout(5)
            s = self.ctx.wrap_socket(c, server_side=True)
            while not self.stop.is_set():
                req = recv_exact(s, 8)
                if len(req) < 8:
                    break
                self.requests.append(req)
                out = self.reply(req[5:6])
                if out is None:
                    break
                if isinstance(out, tuple):   # (bytes, then close)
                    s.sendall(out[0])
                    break
                s.sendall(out)
        except (OSError, ssl.SSLError):
            pass
        finally:
            (s or c).close()


def test_sync_from_another_cluster_is_refused(pair, cluster, origin_factory):
    """(a) a node with its own CA, configured with A as its peer."""
    a = pair.a
    origin = origin_factory()
    a.add_site("app", proxy_site("app", origin.address, hosts=["app.test"]))
    c = cluster.node("c", pair.settings, ha_block("lb2", f"127.0.0.1:{pair.ra}", f"127.0.0.1:{free_port()}"))
    assert c.ctl("ha", "init")[0] == 0
    assert c.ctl("ha", "notify", "BACKUP")[0] == 0
    c.add_site("mine", site("mine", "mine.test", tls="self-signed"))
    before = c.everything()
    pair.start_a()
    for args in ((), ("--force",)):
        t0 = time.monotonic()
        rc, out, err = c.ctl("ha", "sync", *args)
        took = time.monotonic() - t0
        assert rc == 3, (args, rc, out, err)
        assert took < 5, took
        assert out == ""
        assert err.startswith(f"proxyctl: ha sync: peer 127.0.0.1:{pair.ra}: TLS handshake: "), err
        assert "certificate is not from the cluster CA" in err, err
        assert c.everything() == before
    # A logged whom it refused, and keeps serving (HTTP and its real peer)
    assert wait_for(lambda: re.search(r"replication: refused 127\.0\.0\.1: .*(unknown ca|certificate)", a.log_text()),
                    3), a.log_text()
    assert http(pair.http_port, host="app.test").status == 200
    rc, out, err, _ = pair.sync()
    assert rc == 0 and out.startswith("pulled from lb0"), (rc, out, err)
    assert a.running()


def test_sync_peer_down(pair):
    """(b) nothing listens on the peer's port."""
    before = pair.b.everything()
    rc, out, err, took = pair.sync()
    assert rc == 3, (rc, out, err)
    assert took < 5, took
    assert err == f"proxyctl: ha sync: peer 127.0.0.1:{pair.ra}: connect: Connection refused\n", err
    assert pair.b.everything() == before


def test_sync_peer_silent(pair, cluster):
    """(c) the peer accepts TCP and never speaks TLS."""
    holder = TcpHolder()
    cluster.closers.append(holder.close)
    b = cluster.node("b2", pair.settings, ha_block("lb1", f"127.0.0.1:{holder.port}"))
    assert b.ctl("ha", "init", "--join", pair.bundle)[0] == 0
    before = b.everything()
    t0 = time.monotonic()
    rc, out, err = b.ctl("ha", "sync")
    took = time.monotonic() - t0
    assert rc == 3, (rc, out, err)
    assert 2 <= took < 6, took
    assert err == f"proxyctl: ha sync: peer 127.0.0.1:{holder.port}: TLS handshake: timed out\n", err
    assert b.everything() == before
    assert wait_for(lambda: holder.conns, 2)


class Slammer:
    """Accepts TCP connections and closes each at once (what proxyd's replication listener does when
    its connection slots are full)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            c.close()

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


def test_sync_peer_closes_at_once(pair, cluster):
    slam = Slammer()
    cluster.closers.append(slam.close)
    b = cluster.node("b3", pair.settings, ha_block("lb1", f"127.0.0.1:{slam.port}"))
    assert b.ctl("ha", "init", "--join", pair.bundle)[0] == 0
    before = b.everything()
    for _ in range(3):
        rc, out, err = b.ctl("ha", "sync")
        assert rc == 3, (rc, out, err)
        assert err.startswith(f"proxyctl: ha sync: peer 127.0.0.1:{slam.port}: "), err
    assert b.everything() == before


def test_sync_without_keys(cluster):
    n = cluster.node("n", shared_settings(free_port()), ha_block("lb1", f"127.0.0.1:{free_port()}"))
    rc, out, err = n.ctl("ha", "sync")
    assert rc == 3, (rc, out, err)
    assert "no cluster certificate" in err and "ha init" in err, err


def test_status_reports_replication(pair):
    """(d) A's peer (B's port) is down: /status says so; `served` counts B's requests."""
    a = pair.a
    pair.start_a()
    ha = wait_for(lambda: (lambda h: h if h["last_error"] else None)(a.status()["ha"]), 5)
    assert ha, a.status()
    assert ha["node"] == "lb0" and ha["role"] == "MASTER" and ha["replication"] is True
    assert ha["serial"] == a.serial()
    assert ha["peer"] == {"address": f"127.0.0.1:{pair.rb}", "node": "", "role": "", "serial": 0, "last_contact": 0}
    assert ha["last_error"] == f"peer 127.0.0.1:{pair.rb}: connect: Connection refused", ha
    assert ha["pulls"] == 0 and ha["last_pull"] == 0 and ha["served"] == 0
    assert "replication: peer 127.0.0.1" in a.log_text()
    assert pair.sync()[0] == 0       # META + snapshot
    assert pair.sync()[0] == 0       # META
    assert pair.sync("--force")[0] == 0   # META + snapshot
    assert wait_for(lambda: a.status()["ha"]["served"] == 5, 3), a.status()["ha"]
    # the log does not repeat the same complaint every second
    time.sleep(1.2)
    assert a.log_text().count(f"127.0.0.1:{pair.rb}: connect: Connection refused") <= 2, a.log_text()


@pytest.fixture
def rogue(pair, cluster, tmp_path):
    """A fake peer with a certificate the cluster CA issued (node lb9), and node D (lb1, joined)
    whose peer it is.  make(reply) starts the fake peer and returns (d, peer)."""
    bundle = tmp_path / "lb9.pem"
    assert pair.a.ctl("ha", "init", "--issue", "lb9", "--out", bundle)[0] == 0
    text = bundle.read_text()
    ca, cert = pem_blocks(text, "CERTIFICATE")
    key = pem_blocks(text, "PRIVATE KEY")[0]

    def make(reply, cert_pem=cert, key_pem=key, tag="d"):
        peer = FakePeer(tmp_path, cert_pem, key_pem, ca, reply)
        cluster.closers.append(peer.close)
        d = cluster.node(tag, pair.settings, ha_block("lb1", f"127.0.0.1:{peer.port}"))
        assert d.ctl("ha", "init", "--join", pair.bundle)[0] == 0
        assert d.ctl("ha", "notify", "BACKUP")[0] == 0
        d.add_site("mine", site("mine", "mine.test", tls="self-signed"))
        return d, peer

    make.pair = pair
    return make


# record kinds: 1 META, 2 GEN, 3 GENSITE, 4 SITE, 5 CERT, 6 ACCOUNT, 7 TICKET
def meta(node="lb9", role="MASTER", serial=999, gen=7, digest=""):
    return record(1, node, role, serial, gen, digest)


def rogue_replies():
    blob = b"PXRT" + os.urandom(300)
    digest = hashlib.sha256(blob).hexdigest()
    gen = lambda d=digest, b=blob: record(2, 7, 1700000000, d, "x", "", b)  # noqa: E731

    def by_cmd(meta_msg, snap_msg):
        return lambda cmd: meta_msg if cmd == b"M" else snap_msg

    m = message(meta(digest=digest), False)
    return {
        "not-the-protocol": (lambda cmd: b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"x" * 64,
                             "the peer does not speak the replication protocol"),
        "huge-length": (lambda cmd: message(b"", False, length=1 << 40)[:56],
                        f"the peer announces {1 << 40} bytes"),
        "bad-sha": (lambda cmd: message(meta(), False, digest=b"\0" * 32), "body does not match its SHA-256"),
        "bad-version": (lambda cmd: b"PXHASNAP" + u32(2) + message(meta(), False)[12:],
                        "replication format version 2"),
        "truncated": (lambda cmd: (message(meta(), False)[:70],),
                      ("reading: the peer closed the connection",
                       "reading: error:0A000126:SSL routines::unexpected eof")),
        "no-meta": (lambda cmd: message(record(4, "s", "y", "src", "d", 1), False), "META must come first"),
        "bad-role": (lambda cmd: message(meta(role="KING"), False), "unknown role 'KING'"),
        "bad-kind": (by_cmd(m, message(meta(digest=digest) + record(99, "x"), True)), "unknown record kind 99"),
        "field-count": (by_cmd(m, message(meta(digest=digest) + record(4, "a", "b"), True)),
                        "record kind 4 has 2 fields, expected 5"),
        "field-overrun": (by_cmd(m, message(meta(digest=digest) + u32(4) + u32(5) + u32(1 << 30), True)),
                          "runs past the end"),
        "not-a-number": (by_cmd(m, message(meta(digest=digest) + record(4, "a", "b", "c", "d", "1x"), True)),
                         "is not a number"),
        "rule-table-garbage": (by_cmd(m, message(meta(digest=digest) + gen(), True)),
                               "the peer's rule table is refused"),
        "digest-mismatch": (by_cmd(m, message(meta(digest=digest) + gen(d="0" * 64), True)),
                            "the generation's digest does not match its rule table"),
        "gen-missing": (by_cmd(m, message(meta(digest=digest), True)), "a full snapshot without its active generation"),
        "meta-only-snapshot": (by_cmd(m, message(meta(digest=digest), False)), "not a full snapshot"),
        "bad-ticket": (by_cmd(m, message(meta() + record(7, 1, b"n", b"k", 1, 2), True)), "malformed ticket key"),
    }


REPLIES = rogue_replies()


@pytest.mark.parametrize("case", sorted(REPLIES))
def test_sync_refuses_a_malformed_peer(rogue, case):
    """A peer with a valid cluster certificate that answers garbage: refused, nothing changes."""
    reply, expect = REPLIES[case]
    d, peer = rogue(reply)
    before = d.everything()
    t0 = time.monotonic()
    rc, out, err = d.ctl("ha", "sync")
    took = time.monotonic() - t0
    assert rc == 3, (case, rc, out, err)
    assert took < 6, took
    assert any(e in err for e in ((expect,) if isinstance(expect, str) else expect)), (case, err)
    assert err.startswith("proxyctl: ha sync: ") and err.count("\n") == 1, err
    assert d.everything() == before
    assert peer.requests and peer.requests[0] == b"PXHA\x01M\x00\x00", peer.requests


def test_sync_refuses_a_snapshot_without_generation(rogue):
    m = message(meta(digest=""), False)
    d, peer = rogue(lambda cmd: m if cmd == b"M" else message(meta(digest=""), True))
    before = d.everything()
    rc, out, err = d.ctl("ha", "sync")
    after = d.everything()
    assert after["sites"] == before["sites"] and after["certificates"] == before["certificates"], \
        (rc, out, err, after["sites"])
    assert rc == 3, (rc, out, err)


def test_sync_refuses_a_peer_naming_this_node(rogue, tmp_path):
    """A certificate the cluster CA issued for this very node (a reflected or misrouted link)."""
    pair = rogue.pair
    self_bundle = tmp_path / "lb1-again.pem"
    assert pair.a.ctl("ha", "init", "--issue", "lb1", "--out", self_bundle)[0] == 0
    text = self_bundle.read_text()
    cert, key = pem_blocks(text, "CERTIFICATE")[1], pem_blocks(text, "PRIVATE KEY")[0]
    d, peer = rogue(lambda cmd: message(meta(node="lb1"), False), cert_pem=cert, key_pem=key)
    before = d.everything()
    rc, out, err = d.ctl("ha", "sync", "--force")
    assert rc == 3, (rc, out, err)
    assert "the peer's certificate names node 'lb1', which is this node" in err, err
    assert d.everything() == before
    assert peer.requests == []


def test_sync_refuses_a_rogue_peer_with_another_ca(rogue, cluster, tmp_path):
    """A server whose certificate another cluster CA issued: B never sends it a request."""
    other = cluster.node("o", rogue.pair.settings, ha_block("lb9", "127.0.0.1:9443"))
    assert other.ctl("ha", "init")[0] == 0
    k = other.keys()["node"]
    d, peer = rogue(lambda cmd: message(meta(), False), cert_pem=k["cert"], key_pem=k["key"])
    before = d.everything()
    rc, out, err = d.ctl("ha", "sync", "--force")
    assert rc == 3, (rc, out, err)
    assert "TLS handshake: the peer's certificate is not from the cluster CA" in err, err
    assert d.everything() == before
    assert peer.requests == []


# =============================================================================================
# 9. garbage at proxyd's replication listener
# =============================================================================================

def issue_with_ca(tmp, ca_cert, ca_key, cn):
    """A certificate for cn signed with the cluster CA's key (what `ha init --issue` refuses to make
    for this node's own name)."""
    (tmp / "x-ca.pem").write_text(ca_cert)
    (tmp / "x-cakey.pem").write_text(ca_key)
    (tmp / "x-ext.cnf").write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                                   "extendedKeyUsage=serverAuth,clientAuth\n")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
            tmp / f"x-{cn}.key", "-subj", f"/CN={cn}", "-out", tmp / f"x-{cn}.csr")
    openssl("x509", "-req", "-in", tmp / f"x-{cn}.csr", "-CA", tmp / "x-ca.pem", "-CAkey", tmp / "x-cakey.pem",
            "-CAcreateserial", "-days", "2", "-extfile", tmp / "x-ext.cnf", "-out", tmp / f"x-{cn}.pem")
    return tmp / f"x-{cn}.pem", tmp / f"x-{cn}.key"


def tls_attempt(port, cert=None, key=None, version=ssl.TLSVersion.TLSv1_3, request=b"PXHA\x01S\x00\x00"):
    """Handshake (server not verified), send a request, read until close: (handshake_ok, bytes received)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    got = b""
    try:
        s = ctx.wrap_socket(raw, server_hostname="lb0")
    except (ssl.SSLError, OSError):
        raw.close()
        return False, b""
    try:
        s.sendall(request)
        while len(got) < 1 << 20:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
            if got.startswith(b"PXHASNAP") and len(got) >= 56 and \
                    len(got) >= 56 + struct.unpack("<Q", got[16:24])[0]:
                break   # a whole response: the server keeps the connection for the next request
    except (ssl.SSLError, OSError):
        pass
    finally:
        s.close()
    return True, got


def test_replication_listener_survives_garbage(pair, cluster, origin_factory, tmp_path):
    a = pair.a
    origin = origin_factory()
    a.add_site("app", proxy_site("app", origin.address, hosts=["app.test"]))
    pair.start_a()
    pids = sorted(descendants(a.pid))
    assert pair.sync()[0] == 0
    served = a.status()["ha"]["served"]
    port = pair.ra

    # plain TCP: random bytes, a cleartext request, a truncated ClientHello left hanging
    # (a truncated ClientHello is left hanging below)
    for data in (os.urandom(4096), b"PXHA\x01S\x00\x00", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(data)
            s.settimeout(5)
            got = b""
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            except (ConnectionResetError, socket.timeout):
                pass
            assert b"PXHASNAP" not in got
    # TLS without a client certificate; TLS 1.2; a certificate from another CA; one for A's own name
    ok, got = tls_attempt(port)
    assert b"PXHASNAP" not in got
    ok, got = tls_attempt(port, version=ssl.TLSVersion.TLSv1_2)
    assert not ok and got == b""
    other = cluster.node("o", pair.settings, ha_block("lb1", "127.0.0.1:9443"))
    assert other.ctl("ha", "init")[0] == 0
    ok_keys = other.keys()["node"]
    (tmp_path / "o-cert.pem").write_text(ok_keys["cert"])
    (tmp_path / "o-key.pem").write_text(ok_keys["key"])
    ok, got = tls_attempt(port, tmp_path / "o-cert.pem", tmp_path / "o-key.pem")
    assert b"PXHASNAP" not in got
    ak = a.keys()
    cert, key = issue_with_ca(tmp_path, ak["ca"]["cert"], ak["ca"]["key"], "lb0")
    ok, got = tls_attempt(port, cert, key)
    assert b"PXHASNAP" not in got
    # a valid peer certificate (a second one for lb1) that sends a bad request
    cert1, key1 = issue_with_ca(tmp_path, ak["ca"]["cert"], ak["ca"]["key"], "lb1")
    ok, got = tls_attempt(port, cert1, key1, request=b"PXHA\x02S\x00\x00")
    assert ok and got == b""
    # and a good one, for contrast: the listener answers a well-formed request from a real peer
    ok, got = tls_attempt(port, cert1, key1, request=b"PXHA\x01M\x00\x00")
    assert ok and got.startswith(b"PXHASNAP")
    # a connection that stays in the handshake does not block the peer, and is closed after a while
    hang = socket.create_connection(("127.0.0.1", port), timeout=5)
    cluster.closers.append(hang.close)
    hang.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    hang_t0 = time.monotonic()

    log = a.log_text()
    for why in ("peer did not return a certificate",               # TLS without a client certificate
                "unsupported protocol",                            # TLS 1.2
                "unable to get local issuer certificate",          # another cluster CA
                "the peer's certificate names node 'lb0', which is this node"):
        assert f"replication: refused 127.0.0.1: {why}" in log, (why, log)
    assert "replication: a peer sent a request this node does not understand" in log, log
    assert a.running() and sorted(descendants(a.pid)) == pids, "a proxyd process died or was replaced"
    assert a.status()["ha"]["served"] == served + 1
    assert http(pair.http_port, host="app.test").status == 200
    rc, out, err, took = pair.sync("--force")
    assert rc == 0 and out.startswith("pulled from lb0"), (rc, out, err)
    assert took < 2, took
    assert_same_replicated_state(a, pair.b)
    hang.settimeout(8)
    try:
        assert hang.recv(4096) == b""
    except ConnectionResetError:
        pass
    assert time.monotonic() - hang_t0 < 6, "a stalled handshake kept its slot"
    assert a.running()
    a.stop()    # and it stops cleanly, with no sanitizer report
