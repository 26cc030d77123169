"""HA pair end to end (SPEC.md §3 `ha`, §4 `ha …`/`health`/`status`/`renew-cert`, §8): two nodes,
each with its own store, proxyd and real keepalived, in network namespaces.

    pxha-lb0 (10.99.0.11) --+
    pxha-lb1 (10.99.0.12) --+-- br0 in pxha-br     VIP 10.99.0.100/24, VRRP router id 51,
    pxha-cl  (10.99.0.13) --+                       VRRPv3, adverts every 200 ms, unicast
    pxha-lb2 (10.99.0.14) --+

pxha-cl is the client and runs the echo origin (build/bench/origin --echo) on 10.99.0.13:8000,
whose JSON names the TCP peer, i.e. the load balancer that forwarded the request.  pxha-lb2 is a
rogue node: a store that ran its own `ha init` (another cluster CA).  10.99.0.0/24 exists only
inside these namespaces: no test traffic touches the host network.

Each LB has a directory of its own (mode 0700: keepalived's enable_script_security refuses scripts
in unsafe paths, and the store path is in the scripts' command lines) holding store.db,
proxy.yaml (identical on both nodes except the node-local `ha` block; relative admin socket and
log paths resolve beside the store), proxyd's stderr, keepalived.conf (`proxyctl ha render`), the
keepalived log and pid files.  proxyd runs as `ip netns exec NS PROXYD --db DB --foreground`
(the command line the rendered vrrp_track_process matches).

keepalived runs with its own `-s NS` (--namespace) rather than under `ip netns exec NS`: the
kernel's process-events connector, which vrrp_track_process listens on, exists only in the
initial network namespace, so a keepalived started inside a namespace gets ECONNREFUSED
("Failed to set/clear process event listen") and keeps every instance in FAULT; with -s it opens
that socket first and then enters the namespace (VRRP, VIPs and scripts are all inside it).

test_ha_pair shows, printing the measured figures (run with -s to see them):
  a. election: lb0 MASTER holding the VIP, lb1 BACKUP; a client request through the VIP reaches
     the origin from 10.99.0.11; /status and `status --json` report the roles
  b. replication: equal active-generation digests (and byte-identical blobs); a site added on lb0
     is served by lb1 within 2 s; lb1 serves lb0's certificate
  c. a TLS 1.2 and a TLS 1.3 session issued by lb0 through the VIP resume on lb1
  d. failover when every proxyd process of lb0 is SIGKILLed: lb1 serves the VIP within 1 s, lb0's
     recorded role is FAULT and lb1's MASTER, `health` fails on lb0; the sessions resume through
     the VIP on lb1; `ha sync` on lb1 with its peer down exits 3 within 5 s and lb1 keeps serving
  e. lb0's proxyd restarted: lb0 preempts back
  f. failover when lb0's keepalived is SIGSTOPped then SIGKILLed (VRRP child and parent): lb1
     serves within 1 s; lb0's keepalived restarted: lb0 preempts back
  g. `ha sync` from a node with another cluster CA exits 3 naming the certificate/verification
     and changes nothing
  i. `renew-cert --due` on the BACKUP exits 0 and says only the MASTER renews
test_ha_preempt_false (h): with `preempt: false` lb1 keeps the VIP after lb0 comes back.

Every process is stopped by PID (keepalived parent and VRRP child from their pid files, proxyd
master and workers, the origin); then whatever still runs inside the namespaces is killed and
the namespaces are deleted, also after a failure; leftovers of an interrupted run are removed at
the start.  Every wait is bounded.  Needs root, keepalived and iproute2 (skipped otherwise).
"""
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from proxyd_fixtures import (ORIGIN, PROXYCTL, PROXYD, ROOT, _is_alive, _kill_pid, children_of, ensure_origin,
                             parse_response, recv_all, sanitizer_report)

PREFIX = "pxha"
NS_BR, NS_CL, NS_ROGUE = f"{PREFIX}-br", f"{PREFIX}-cl", f"{PREFIX}-lb2"
NS_LB = [f"{PREFIX}-lb0", f"{PREFIX}-lb1"]
ALL_NS = [NS_BR, *NS_LB, NS_CL, NS_ROGUE]
IP_LB = ["10.99.0.11", "10.99.0.12"]
IP_CL, IP_ROGUE, VIP = "10.99.0.13", "10.99.0.14", "10.99.0.100"
ORIGIN_PORT = 8000
REPL_PORT = 9443
ROUTER_ID = 51
LOCK = f"/tmp/{PREFIX}.lock"

IP = shutil.which("ip") or ("/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else None)
KEEPALIVED = shutil.which("keepalived") or next(
    (p for p in ("/usr/sbin/keepalived", "/sbin/keepalived") if os.path.exists(p)), None)
CURL = shutil.which("curl") or "curl"
OPENSSL = shutil.which("openssl") or "openssl"

FIGURES = {}          # name -> measured value, printed at each test's end and at module teardown


def say(msg):
    print(f"[ha] {msg}", flush=True)


def figure(name, value, fmt="{:.2f} s"):
    FIGURES[name] = value
    say(f"   {name} = {fmt.format(value) if isinstance(value, (int, float)) else value}")


def summary_line():
    return "HA figures: " + ", ".join(
        f"{k}={v:.2f}s" if isinstance(v, float) else f"{k}={v}" for k, v in FIGURES.items())


# ---- processes ---------------------------------------------------------------------------------

def run(cmd, timeout=20, input=None, cwd=None, env=None):
    """Run cmd; (rc, stdout, stderr).  A timeout is reported as rc -1."""
    try:
        p = subprocess.run([str(c) for c in cmd], capture_output=True, timeout=timeout, input=input,
                           stdin=subprocess.DEVNULL if input is None else None, cwd=str(cwd) if cwd else None,
                           env=env)
    except subprocess.TimeoutExpired as e:
        return -1, (e.stdout or b"").decode("latin-1"), (e.stderr or b"").decode("latin-1") + "\n<timed out>"
    return p.returncode, p.stdout.decode("latin-1"), p.stderr.decode("latin-1")


def ns_cmd(ns, *args):
    return [IP, "netns", "exec", ns, *map(str, args)]


def sh(*cmd, timeout=10):
    rc, out, err = run(cmd, timeout=timeout)
    assert rc == 0, f"{' '.join(map(str, cmd))} -> {rc}\n{out}\n{err}"
    return out


def asan_env():
    env = dict(os.environ)
    env.pop("PROXYD_DB", None)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    return env


class Proc:
    """A process this module started: stopped by PID, whatever happens."""

    def __init__(self, kind, name, pid, popen=None):
        self.kind, self.name, self.pid, self.popen = kind, name, pid, popen

    def alive(self):
        if self.popen is not None:
            return self.popen.poll() is None
        return _is_alive(self.pid)

    def reap(self):
        if self.popen is not None:
            try:
                self.popen.wait(timeout=0)
            except subprocess.TimeoutExpired:
                pass


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode("latin-1") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def stop_procs(procs, term_wait=3.0):
    """SIGTERM every live one (keepalived first: no failover churn while proxyd stops), bounded
    wait, then SIGKILL of what is left and of proxyd workers."""
    order = {"keepalived": 0, "keepalived-vrrp": 1, "proxyd": 2, "origin": 3}
    for rank in sorted(set(order.values())):
        group = [p for p in procs if order.get(p.kind, 3) == rank and p.alive()]
        kids = {p.pid: children_of(p.pid) for p in group if p.kind == "proxyd"}
        for p in group:
            _kill_pid(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + term_wait
        while time.monotonic() < deadline and any(p.alive() for p in group):
            time.sleep(0.05)
        for p in group:
            if p.alive():
                _kill_pid(p.pid, signal.SIGKILL)
            for k in kids.get(p.pid, ()):
                if _is_alive(k):
                    _kill_pid(k, signal.SIGKILL)
        deadline = time.monotonic() + 3
        for p in group:
            while p.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            p.reap()


def ns_pids(ns):
    rc, out, _ = run([IP, "netns", "pids", ns], timeout=5)
    return [int(x) for x in out.split() if x.isdigit()] if rc == 0 else []


def remove_namespaces():
    for ns in ALL_NS:
        for pid in ns_pids(ns):
            _kill_pid(pid, signal.SIGKILL)
    for ns in ALL_NS:
        if os.path.exists(f"/run/netns/{ns}") or os.path.exists(f"/var/run/netns/{ns}"):
            run([IP, "netns", "del", ns], timeout=10)


def remove_leftovers():
    """An interrupted earlier run: its processes (by the pid files in its directories, checked
    against their command lines, and anything inside our namespaces), namespaces and folders."""
    for d in glob.glob(f"/tmp/{PREFIX}.*/"):
        for pf in glob.glob(os.path.join(d, "**", "*.pid"), recursive=True):
            try:
                pid = int(Path(pf).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            argv = cmdline(pid)
            if argv and (os.path.basename(argv[0]) == "keepalived" or any(d.rstrip("/") in a for a in argv)):
                _kill_pid(pid, signal.SIGKILL)
    remove_namespaces()
    for d in glob.glob(f"/tmp/{PREFIX}.*/"):
        shutil.rmtree(d, ignore_errors=True)


# ---- the network ---------------------------------------------------------------------------------

class Net:
    def __init__(self, base):
        self.base = Path(base)
        self.procs = []
        self.origin = None

    def register(self, p):
        self.procs.append(p)
        return p

    def build(self):
        for ns in ALL_NS:
            sh(IP, "netns", "add", ns)
            sh(IP, "-n", ns, "link", "set", "lo", "up")
        sh(IP, "-n", NS_BR, "link", "add", "br0", "type", "bridge")
        sh(IP, "-n", NS_BR, "link", "set", "br0", "up")
        for i, (ns, addr) in enumerate(zip([*NS_LB, NS_CL, NS_ROGUE], [*IP_LB, IP_CL, IP_ROGUE])):
            # Both ends are created directly inside the namespaces: nothing appears on the host.
            sh(IP, "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p{i}", "netns", NS_BR)
            sh(IP, "-n", NS_BR, "link", "set", f"p{i}", "master", "br0", "up")
            sh(IP, "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh(IP, "-n", ns, "link", "set", "eth0", "up")

    def start_origin(self):
        binary = fresh_origin()
        log = open(self.base / "origin.log", "ab")
        popen = subprocess.Popen(ns_cmd(NS_CL, binary, ORIGIN_PORT, "--host", IP_CL, "--echo", "--pid-file",
                                        self.base / "origin.pid"),
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        self.origin = self.register(Proc("origin", "origin", popen.pid, popen))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            code, body = curl(f"http://{IP_CL}:{ORIGIN_PORT}/", timeout=0.5)
            if code == 200:
                return
            assert popen.poll() is None, f"origin exited: {(self.base / 'origin.log').read_text()}"
            time.sleep(0.05)
        pytest.fail(f"origin not answering on {IP_CL}:{ORIGIN_PORT}: {(self.base / 'origin.log').read_text()}")

    def teardown(self):
        stop_procs(self.procs)
        remove_namespaces()


def fresh_origin():
    """build/bench/origin, rebuilt when older than bench/origin.c (its --echo JSON must have "peer")."""
    src = ROOT / "bench" / "origin.c"
    if os.path.exists(ORIGIN) and os.path.getmtime(ORIGIN) < os.path.getmtime(src):
        subprocess.run(["cc", "-std=c11", "-D_GNU_SOURCE", "-O2", "-o", ORIGIN, str(src)], check=True, timeout=120)
    return ensure_origin()


@pytest.fixture(scope="module")
def net():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, keepalived)")
    if KEEPALIVED is None or IP is None:
        pytest.skip(f"needs keepalived and iproute2 (keepalived: {KEEPALIVED}, ip: {IP})")
    lock = open(LOCK, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        pytest.fail(f"another run of test_ha.py holds {LOCK}")
    remove_leftovers()
    base = tempfile.mkdtemp(prefix=f"{PREFIX}.", dir="/tmp")
    os.chmod(base, 0o700)
    n = Net(base)
    try:
        n.build()
        n.start_origin()
        yield n
    finally:
        n.teardown()
        if os.environ.get("PXHA_KEEP") != "1":
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"[ha] kept {base}")
        print(f"[ha] {summary_line()}", flush=True)
        lock.close()


# ---- client side (everything from inside pxha-cl) -------------------------------------------------

def curl(url, resolve=None, timeout=0.5, connect_timeout=None, extra=()):
    """(status or 0, body) of one request made from the client namespace."""
    args = [CURL, "-s", "-k", "-m", str(timeout), "-o", "-", "-w", "\n%{http_code}"]
    if connect_timeout:
        args += ["--connect-timeout", str(connect_timeout)]
    if resolve:
        args += ["--resolve", resolve]
    args += [*extra, url]
    rc, out, _ = run(ns_cmd(NS_CL, *args), timeout=timeout + 5)
    body, _, code = out.rpartition("\n")
    try:
        return int(code), body
    except ValueError:
        return 0, out


def get(host, addr, https=False, timeout=0.5, path="/"):
    """Request host's path at addr; (status, body, the peer IP the origin saw or None)."""
    port = 443 if https else 80
    code, body = curl(f"{'https' if https else 'http'}://{host}:{port}{path}", resolve=f"{host}:{port}:{addr}",
                      timeout=timeout, connect_timeout=min(timeout, 0.25))
    return code, body, peer_of(body) if code == 200 else None


def peer_of(text):
    m = re.search(r'"peer":\s*"([\d.]+):\d+"', text)
    return m.group(1) if m else None


def wait_served_by(want_ip, t0, limit=5.0, interval=0.05, host="app.test"):
    """Poll the VIP every `interval` until the origin sees want_ip as the peer; returns
    (seconds from t0 or None, polls, what the last poll got)."""
    polls, last = 0, None
    deadline = t0 + limit
    while True:
        tick = time.monotonic()
        code, body, peer = get(host, VIP, timeout=0.3)
        polls += 1
        last = (code, peer)
        if code == 200 and peer == want_ip:
            return time.monotonic() - t0, polls, last
        if time.monotonic() >= deadline:
            return None, polls, last
        time.sleep(max(0.0, tick + interval - time.monotonic()))


def s_client(addr, *args, host="app.test", request=True, timeout=10):
    cmd = [OPENSSL, "s_client", "-connect", f"{addr}:443", "-servername", host, *args]
    stdin = b""
    if request:
        cmd.append("-ign_eof")
        stdin = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    rc, out, err = run(ns_cmd(NS_CL, *cmd), input=stdin, timeout=timeout)
    return rc, out + err


def session_line(output):
    m = re.search(r"^(New|Reused), (TLSv[\d.]+)", output, re.M)
    return m.group(1) if m else None


def cert_fingerprint(addr, host="app.test"):
    rc, out = s_client(addr, "-tls1_3", host=host, request=False)
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    assert m, f"no certificate from {addr} for {host}:\n{out[-3000:]}"
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(m.group(0))).hexdigest()


# ---- nodes -------------------------------------------------------------------------------------------

def global_yaml(node, ip, peer_ip, priority, preempt):
    return f"""\
listen: {{http: ["0.0.0.0:80"], https: ["0.0.0.0:443"]}}
workers: 1
user: root
admin: {{socket: run/admin.sock}}
logs: {{access: access.log, error: error.log}}
limits: {{drain_timeout: 2s}}
ha:
  node: {node}
  peer: "{peer_ip}:{REPL_PORT}"
  listen: "{ip}:{REPL_PORT}"
  interface: eth0
  virtual_ips: ["{VIP}/24"]
  router_id: {ROUTER_ID}
  priority: {priority}
  preempt: {"true" if preempt else "false"}
  advert_interval: 200ms
"""


def site_yaml(name, host, tls=True):
    t = "tls:\n  certificate: self-signed\n  redirect_http: false\n" if tls else ""
    return f"""\
site: {name}
hosts: [{host}]
{t}upstreams:
  app:
    servers:
      - address: "{IP_CL}:{ORIGIN_PORT}"
routes:
  - match: {{path_prefix: /}}
    upstream: app
"""


class Node:
    def __init__(self, net, name, ns, ip, peer_ip, priority, preempt, base):
        self.net, self.name, self.ns, self.ip = net, name, ns, ip
        self.dir = Path(base) / name
        self.dir.mkdir(mode=0o700, parents=True)
        os.chmod(self.dir, 0o700)
        (self.dir / "run").mkdir(mode=0o700)
        self.db = (self.dir / "store.db").resolve()
        self.conf = self.dir / "keepalived.conf"
        self.klog = self.dir / "keepalived.log"
        self.kpid_file, self.vpid_file, self.cpid_file = (self.dir / f"{x}.pid" for x in ("k", "v", "c"))
        self.stderr_path = self.dir / "proxyd.stderr"
        self.admin_socket = self.dir / "run" / "admin.sock"
        self.proxyd = None          # Proc of the proxyd master
        self.keepalived = None      # Proc of the keepalived parent
        self.vrrp = None            # Proc of its VRRP child
        (self.dir / "proxy.yaml").write_text(global_yaml(name, ip, peer_ip, priority, preempt))
        self._nsite = 0

    # -- proxyctl, inside the node's namespace (ha sync reaches the peer from there) --
    def ctl(self, *args, timeout=30):
        rc, out, err = run(ns_cmd(self.ns, PROXYCTL, "--db", self.db, *args), timeout=timeout, cwd=self.dir,
                           env=asan_env())
        if sanitizer_report(err):
            pytest.fail(f"sanitizer report from proxyctl {' '.join(map(str, args))} on {self.name}:\n{err}")
        return rc, out, err

    def ctl_ok(self, *args, timeout=30):
        rc, out, err = self.ctl(*args, timeout=timeout)
        assert rc == 0, f"{self.name}: proxyctl {' '.join(map(str, args))} -> {rc}\n{out}\n{err}"
        return out

    def init(self):
        self.ctl_ok("init", "--global", self.dir / "proxy.yaml")

    def add_site(self, text):
        self._nsite += 1
        path = self.dir / f"site-{self._nsite}.yaml"
        path.write_text(text)
        return self.ctl_ok("add-site", path)

    # -- proxyd --
    def start_proxyd(self, timeout=10.0):
        err = open(self.stderr_path, "ab")
        argv = [PROXYD, "--db", str(self.db), "--foreground"]
        popen = subprocess.Popen(ns_cmd(self.ns, *argv), cwd=str(self.dir), stdin=subprocess.DEVNULL,
                                 stdout=err, stderr=err, env=asan_env())
        err.close()
        self.proxyd = self.net.register(Proc("proxyd", f"{self.name} proxyd", popen.pid, popen))
        deadline = time.monotonic() + timeout
        st = None
        while time.monotonic() < deadline:
            assert popen.poll() is None, f"{self.name}: proxyd exited {popen.returncode}\n{self.diag()}"
            st = self.admin_status(timeout=0.5)
            if st and st.get("workers") and all(w.get("alive") for w in st["workers"]):
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"{self.name}: proxyd not ready within {timeout}s (status {st})\n{self.diag()}")
        # `ip netns exec` execs: this PID is proxyd, with the command line keepalived tracks.
        assert cmdline(popen.pid) == argv, f"{self.name}: proxyd command line {cmdline(popen.pid)} != {argv}"
        return st

    def proxyd_pids(self):
        """The master, its workers, and any other process running this node's proxyd command."""
        pids = set()
        if self.proxyd and self.proxyd.alive():
            pids.add(self.proxyd.pid)
            pids.update(children_of(self.proxyd.pid))
        for pid in ns_pids(self.ns):
            argv = cmdline(pid)
            if argv[:3] == [PROXYD, "--db", str(self.db)]:
                pids.add(pid)
        return sorted(pids)

    def kill_proxyd(self):
        """SIGSTOP the master (no worker restart), then SIGKILL master and workers; returns the
        moment the kills were sent and the PIDs."""
        pids = self.proxyd_pids()
        assert pids, f"{self.name}: no proxyd running"
        _kill_pid(self.proxyd.pid, signal.SIGSTOP)
        pids = sorted(set(pids) | set(children_of(self.proxyd.pid)))
        for pid in pids:
            _kill_pid(pid, signal.SIGKILL)
        t0 = time.monotonic()
        try:
            self.proxyd.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(_is_alive(p) for p in pids):
            time.sleep(0.01)
        return t0, pids

    def admin_status(self, timeout=2.0):
        """proxyd's GET /status over the admin unix socket (None when it does not answer)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(self.admin_socket))
            s.sendall(b"GET /status HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            r = parse_response(recv_all(s, timeout))
        except OSError:
            return None
        finally:
            s.close()
        if r is None or r.status != 200:
            return None
        try:
            return json.loads(r.body)
        except ValueError:
            return None

    # -- keepalived --
    def render(self):
        extra = []
        if os.path.dirname(PROXYD) != os.path.dirname(PROXYCTL):   # render's default: proxyd beside proxyctl
            extra = ["--proxyd", PROXYD]
        self.ctl_ok("ha", "render", "--out", self.conf, *extra)
        text = self.conf.read_text()
        rc, out, err = run([KEEPALIVED, "-t", "-f", self.conf], timeout=20)
        assert rc == 0, f"{self.name}: keepalived -t -f {self.conf} -> {rc}\n{out}\n{err}\n--- conf:\n{text}"
        return text

    def start_keepalived(self):
        for f in (self.kpid_file, self.vpid_file, self.cpid_file):
            f.unlink(missing_ok=True)
        log = open(self.klog, "ab")
        # keepalived passes its environment to the scripts: a sanitizer report of a `proxyctl
        # health` or `ha notify` it runs lands in asan-scripts.PID (checked by Pair.assert_clean).
        env = dict(os.environ)
        env["ASAN_OPTIONS"] = f"detect_leaks=1:abort_on_error=0:log_path={self.dir / 'asan-scripts'}"
        env["UBSAN_OPTIONS"] = f"print_stacktrace=1:log_path={self.dir / 'asan-scripts'}"
        popen = subprocess.Popen([KEEPALIVED, "-n", "-l", "-D", "-P", "-s", self.ns, "-f", str(self.conf),
                                  "-p", str(self.kpid_file), "-r", str(self.vpid_file), "-c", str(self.cpid_file)],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self.keepalived = self.net.register(Proc("keepalived", f"{self.name} keepalived", popen.pid, popen))
        self.vrrp = None
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                vpid = int(self.vpid_file.read_text().split()[0])
                self.vrrp = self.net.register(Proc("keepalived-vrrp", f"{self.name} vrrp", vpid))
                break
            except (OSError, ValueError, IndexError):
                assert popen.poll() is None, f"{self.name}: keepalived exited {popen.returncode}\n{self.diag()}"
                time.sleep(0.02)
        assert self.vrrp, f"{self.name}: no VRRP child pid in {self.vpid_file}\n{self.diag()}"
        kpid = wait_until(lambda: self.kpid_file.exists() and self.kpid_file.read_text().strip(), 2.0, 0.02)
        assert kpid == str(popen.pid), f"{self.name}: {self.kpid_file} holds {kpid!r}, keepalived is {popen.pid}"

    def kill_keepalived(self):
        """As a crash: SIGSTOP both (the child has PDEATHSIG and the parent respawns children),
        then SIGKILL both; returns the moment of the kills."""
        pids = [self.vrrp.pid, self.keepalived.pid]
        for pid in pids:
            _kill_pid(pid, signal.SIGSTOP)
        for pid in pids:
            _kill_pid(pid, signal.SIGKILL)
        t0 = time.monotonic()
        try:
            self.keepalived.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        return t0

    def has_vip(self):
        rc, out, _ = run([IP, "-n", self.ns, "-4", "-o", "addr", "show", "dev", "eth0"], timeout=5)
        return f" {VIP}/" in out

    # -- state --
    def role(self):
        """The role `ha notify` recorded: `status --json` while proxyd runs, else the store."""
        rc, out, _ = self.ctl("status", "--json")
        if rc == 0:
            try:
                return (json.loads(out).get("ha") or {}).get("role")
            except ValueError:
                return None
        return store_role(self.db)

    def active_digest(self):
        gens = json.loads(self.ctl_ok("generations", "--json"))
        act = [g for g in gens if g.get("active")]
        assert len(act) == 1, f"{self.name}: generations --json: {gens}"
        return act[0]["digest"]

    def active_blob(self):
        rows = sql(self.db, "SELECT id, digest, blob FROM generations WHERE active = 1")
        assert len(rows) == 1, rows
        return rows[0]

    def diag(self):
        def tail(p, n=4000):
            try:
                return Path(p).read_text(errors="replace")[-n:]
            except OSError:
                return "(none)"
        return (f"--- {self.name} keepalived log:\n{tail(self.klog)}\n--- {self.name} proxyd stderr:\n"
                f"{tail(self.stderr_path)}\n--- {self.name} error.log:\n{tail(self.dir / 'error.log')}")


def sql(db, query, *params):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(query, params).fetchall()
    finally:
        con.close()


ROLES = ("MASTER", "BACKUP", "FAULT", "STOP")


def store_role(db):
    """The role last recorded by `ha notify`, read from the store when proxyd is down: a settings
    key naming the role, or the newest row of an ha table with a role/state column."""
    try:
        tables = [r[0] for r in sql(db, "SELECT name FROM sqlite_master WHERE type = 'table'")]
        for t in tables:
            cols = [r[1] for r in sql(db, f'PRAGMA table_info("{t}")')]
            if t == "settings" and {"key", "value"} <= set(cols):
                for k, v in sql(db, "SELECT key, value FROM settings WHERE key LIKE '%role%' OR key LIKE 'ha%'"):
                    if isinstance(v, str) and v.upper() in ROLES and "role" in k:
                        return v.upper()
            elif re.search(r"(^|_)ha(_|$)", t.lower()):
                for c in ("role", "state"):
                    if c in cols:
                        rows = sql(db, f'SELECT "{c}" FROM "{t}" ORDER BY rowid DESC LIMIT 1')
                        if rows and isinstance(rows[0][0], str) and rows[0][0].upper() in ROLES:
                            return rows[0][0].upper()
    except sqlite3.Error:
        return None
    return None


def wait_until(pred, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


class Pair:
    def __init__(self, net, preempt=True, tag="pair"):
        self.net = net
        self.preempt = preempt
        self.base = net.base / tag
        self.base.mkdir(mode=0o700)
        self.lb0 = Node(net, "lb0", NS_LB[0], IP_LB[0], IP_LB[1], 150, preempt, self.base)
        self.lb1 = Node(net, "lb1", NS_LB[1], IP_LB[1], IP_LB[0], 100, preempt, self.base)
        self.nodes = [self.lb0, self.lb1]
        self.extra = []             # other nodes (the rogue) stopped with the pair

    def diag(self):
        roles = ", ".join(f"{n.name}: role={store_role(n.db)} vip={n.has_vip()}" for n in self.nodes)
        return f"[{roles}]\n" + "\n".join(n.diag() for n in self.nodes + self.extra)

    def check(self, cond, msg):
        if not cond:
            pytest.fail(f"{msg}\n{self.diag()}")

    def roles(self):
        return self.lb0.role(), self.lb1.role()

    def wait_roles(self, want, timeout=5.0):
        last = []

        def ok():
            last[:] = [self.roles()]
            return last[0] == want
        wait_until(ok, timeout, 0.1)
        return last[0]

    def start(self):
        lb0, lb1, preempt = self.lb0, self.lb1, self.preempt
        for n in self.nodes:
            n.init()
        lb0.ctl_ok("ha", "init")
        bundle = self.base / "lb1-join.pem"
        lb0.ctl_ok("ha", "init", "--issue", "lb1", "--out", bundle)
        mode = os.stat(bundle).st_mode & 0o777
        assert mode == 0o600, f"join bundle {bundle} has mode {oct(mode)}, want 0600"
        assert "-----BEGIN" in bundle.read_text(), "the join bundle is not PEM"
        lb1.ctl_ok("ha", "init", "--join", bundle)
        lb0.add_site(site_yaml("app", "app.test", tls=True))
        for n in self.nodes:
            n.start_proxyd()
        for n in self.nodes:
            text = n.render()
            for want in ("script_user root", "enable_script_security", PROXYD, str(n.db), "ha notify",
                         f"virtual_router_id {ROUTER_ID}", VIP):
                assert want in text, f"{n.name}: keepalived.conf lacks {want!r}:\n{text}"
            peer_ip = IP_LB[1 - self.nodes.index(n)]
            assert peer_ip in text, f"{n.name}: keepalived.conf does not name the peer {peer_ip}:\n{text}"
            nopreempt = re.search(r"^\s*nopreempt\b", text, re.M) is not None
            assert nopreempt == (not preempt), f"{n.name}: preempt={preempt}, nopreempt line: {nopreempt}:\n{text}"
        t0 = time.monotonic()
        lb0.start_keepalived()
        ok = wait_until(lambda: lb0.has_vip(), 10.0)
        self.check(ok, "(a) lb0 did not take the VIP within 10 s of its keepalived start")
        t_master = time.monotonic() - t0
        lb1.start_keepalived()
        roles = self.wait_roles(("MASTER", "BACKUP"), 8.0)
        self.check(roles == ("MASTER", "BACKUP"), f"(a) roles (lb0, lb1) = {roles}, want (MASTER, BACKUP)")
        # The BACKUP pulls the MASTER's state at start: wait for it before any failover.
        t0 = time.monotonic()
        same = wait_until(lambda: lb0.active_digest() == lb1.active_digest(), 5.0, 0.1)
        self.check(same, f"(b) active digests differ 5 s after the election: lb0 {lb0.active_digest()} "
                         f"lb1 {lb1.active_digest()}")
        return t_master, time.monotonic() - t0

    def stop(self):
        stop_procs([p for n in self.nodes + self.extra for p in (n.keepalived, n.vrrp, n.proxyd) if p])

    def assert_clean(self):
        problems = []
        for n in self.nodes + self.extra:
            try:
                err = n.stderr_path.read_text(errors="replace")
            except OSError:
                err = ""
            if sanitizer_report(err):
                problems.append(f"sanitizer report in {n.name}'s proxyd stderr:\n{err[-20000:]}")
            try:
                klog = n.klog.read_text(errors="replace")
            except OSError:
                klog = ""
            bad = [l for l in klog.splitlines()
                   if re.search(r"SECURITY VIOLATION|[Uu]nsafe permissions|Failed to set/clear process event"
                                r"|script .* not found|Disabling track script", l)]
            if bad:
                problems.append(f"{n.name} keepalived log: " + "\n".join(bad[:5]))
            for f in sorted(n.dir.glob("asan-scripts*"))[:3]:
                problems.append(f"sanitizer report of a script keepalived ran on {n.name} ({f.name}):\n"
                                f"{f.read_text(errors='replace')[-8000:]}")
        assert not problems, "\n\n".join(problems)


def stable_roles_and_vip(pair, master, timeout=5.0):
    """Wait until `master` (a Node) holds the VIP alone and the recorded roles agree."""
    backup = pair.lb1 if master is pair.lb0 else pair.lb0
    want = ("MASTER", "BACKUP") if master is pair.lb0 else ("BACKUP", "MASTER")

    def ok():
        return master.has_vip() and not backup.has_vip() and pair.roles() == want
    return wait_until(ok, timeout, 0.1)


# ---- the tests -----------------------------------------------------------------------------------------

def test_ha_pair(net):
    pair = Pair(net, preempt=True, tag="pair")
    lb0, lb1 = pair.lb0, pair.lb1
    try:
        _ha_pair_steps(net, pair, lb0, lb1)
    finally:
        pair.stop()
    pair.assert_clean()
    say(summary_line())


def _ha_pair_steps(net, pair, lb0, lb1):
    say(f"keepalived {KEEPALIVED}, proxyd {PROXYD}, proxyctl {PROXYCTL}; directory {pair.base}")
    t_master, t_sync = pair.start()
    figure("election_lb0_master", t_master)
    figure("initial_sync_after_election", t_sync)

    # (a) -------------------------------------------------------------------------------------------
    say("(a) election and a request through the VIP")
    pair.check(lb0.has_vip() and not lb1.has_vip(),
               f"(a) VIP holders: lb0={lb0.has_vip()} lb1={lb1.has_vip()}, want lb0 only")
    code, body, peer = get("app.test", VIP)
    pair.check(code == 200 and peer == IP_LB[0],
               f"(a) GET http://app.test/ via {VIP}: {code}, origin saw peer {peer} (want 200 from {IP_LB[0]}):\n{body[:500]}")
    code, body, peer = get("app.test", VIP, https=True)
    pair.check(code == 200 and peer == IP_LB[0], f"(a) HTTPS via the VIP: {code}, peer {peer}:\n{body[:500]}")
    for n, want in ((lb0, "MASTER"), (lb1, "BACKUP")):
        st = n.admin_status()
        ha = (st or {}).get("ha") or {}
        pair.check(ha.get("node") == n.name and ha.get("role") == want,
                   f"(a) {n.name} admin /status ha = {ha}, want node {n.name} role {want}")
        rc, out, err = n.ctl("health")
        pair.check(rc == 0, f"(a) {n.name}: proxyctl health -> {rc}\n{out}\n{err}")
    say(f"   lb0 MASTER with {VIP}, lb1 BACKUP; client -> VIP -> origin sees {IP_LB[0]}")

    # (b) -------------------------------------------------------------------------------------------
    say("(b) replication")
    g0, g1 = lb0.active_blob(), lb1.active_blob()
    pair.check(g0[1] == g1[1] and g0[2] == g1[2],
               f"(b) active generations differ: lb0 gen {g0[0]} {g0[1]} ({len(g0[2])} B), lb1 gen {g1[0]} {g1[1]} ({len(g1[2])} B)")
    code, body, peer = get("app.test", IP_LB[1])
    pair.check(code == 200 and peer == IP_LB[1], f"(b) lb1 directly: {code}, peer {peer}:\n{body[:500]}")
    code, _, _ = get("new.test", IP_LB[1])
    pair.check(code == 404, f"(b) lb1 answers {code} for new.test before the site exists (want 404)")
    t_start = time.monotonic()
    lb0.add_site(site_yaml("new", "new.test", tls=False))
    t_done = time.monotonic()
    served = None
    while time.monotonic() < t_done + 5.0:
        tick = time.monotonic()
        code, body, peer = get("new.test", IP_LB[1], timeout=0.3)
        if code == 200 and peer == IP_LB[1] and '"new.test"' in body:
            served = time.monotonic()
            break
        time.sleep(max(0.0, tick + 0.05 - time.monotonic()))
    pair.check(served is not None, f"(b) lb1 did not serve new.test within 5 s of add-site on lb0 (last {code})")
    figure("add_site_duration", t_done - t_start)
    figure("replication_site_served_by_lb1_after_add_site", served - t_done)
    figure("replication_from_add_site_start", served - t_start)
    pair.check(served - t_done < 2.0, f"(b) lb1 served the new site {served - t_done:.2f} s after add-site, want < 2 s")
    same = wait_until(lambda: lb0.active_digest() == lb1.active_digest(), 2.0, 0.1)
    pair.check(same, f"(b) digests differ after the new site: lb0 {lb0.active_digest()} lb1 {lb1.active_digest()}")
    g0, g1 = lb0.active_blob(), lb1.active_blob()
    pair.check(g0[2] == g1[2], "(b) the active blobs differ after the new site")
    sites1 = lb1.ctl_ok("list-sites")
    pair.check("new" in sites1 and "app" in sites1, f"(b) lb1 list-sites lacks the replicated sources:\n{sites1}")
    fp0, fp1 = cert_fingerprint(IP_LB[0]), cert_fingerprint(IP_LB[1])
    pair.check(fp0 == fp1, f"(b) app.test certificates differ: lb0 {fp0}, lb1 {fp1}")
    say(f"   digest {g0[1][:16]}… on both; app.test certificate sha256 {fp0[:16]}… on both")

    # (c) -------------------------------------------------------------------------------------------
    say("(c) TLS sessions issued by lb0 resume on lb1")
    sess = {v: net.base / f"sess-{v}.pem" for v in ("tls1_2", "tls1_3")}
    for v, f in sess.items():
        rc, out = s_client(VIP, f"-{v}", "-sess_out", f)
        pair.check(session_line(out) == "New" and "HTTP/1.1 200" in out and peer_of(out) == IP_LB[0],
                   f"(c) {v} via the VIP (lb0): session {session_line(out)}, peer {peer_of(out)}:\n{out[-3000:]}")
        pair.check(f.exists() and f.stat().st_size > 0, f"(c) {v}: no session written")
        rc, out = s_client(IP_LB[1], f"-{v}", "-sess_in", f)
        pair.check(session_line(out) == "Reused" and peer_of(out) == IP_LB[1],
                   f"(c) {v} session of lb0 on lb1: {session_line(out)}, peer {peer_of(out)}:\n{out[-3000:]}")
        say(f"   {v}: issued by lb0 via the VIP, Reused on {IP_LB[1]}")

    # (d) -------------------------------------------------------------------------------------------
    say("(d) failover: every proxyd process of lb0 SIGKILLed")
    t0, pids = lb0.kill_proxyd()
    dt, polls, last = wait_served_by(IP_LB[1], t0, limit=5.0)
    pair.check(dt is not None, f"(d) lb1 did not serve the VIP within 5 s of killing lb0's proxyd {pids} (last poll {last})")
    figure("failover_proxyd_killed", dt)
    say(f"   killed {pids}; lb1 served after {dt:.3f} s ({polls} polls)")
    pair.check(dt < 1.0, f"(d) lb1 served the VIP {dt:.3f} s after lb0's proxyd died, want < 1 s")
    roles = pair.wait_roles(("FAULT", "MASTER"), 3.0)
    pair.check(roles == ("FAULT", "MASTER"), f"(d) recorded roles (lb0, lb1) = {roles}, want (FAULT, MASTER)")
    pair.check(lb1.has_vip() and not lb0.has_vip(), f"(d) VIP: lb0={lb0.has_vip()} lb1={lb1.has_vip()}")
    rc, out, err = lb0.ctl("health")
    pair.check(rc == 3, f"(d) lb0 health with its proxyd dead -> {rc}, want 3\n{out}\n{err}")
    for v, f in sess.items():
        rc, out = s_client(VIP, f"-{v}", "-sess_in", f)
        pair.check(session_line(out) == "Reused" and peer_of(out) == IP_LB[1],
                   f"(d) {v} session of lb0 via the VIP after failover: {session_line(out)}, peer {peer_of(out)}:\n{out[-3000:]}")
        say(f"   {v}: lb0's session Reused through the VIP on lb1")
    # (g, peer down) lb1 asks its dead peer for its state.
    t = time.monotonic()
    rc, out, err = lb1.ctl("ha", "sync", "--force", timeout=20)
    dts = time.monotonic() - t
    figure("sync_peer_down", dts)
    pair.check(rc == 3 and dts < 5.0, f"(g) ha sync with the peer down -> {rc} after {dts:.2f} s (want 3, < 5 s)\n{out}\n{err}")
    msg = (out + err).strip()
    pair.check(re.search(rf"{re.escape(IP_LB[0])}|peer|connect|refused|unreachable|down|timed? ?out", msg, re.I),
               f"(g) ha sync with the peer down: unclear message: {msg!r}")
    say(f"   ha sync with the peer down: exit 3 after {dts:.2f} s: {msg.splitlines()[-1] if msg else ''}")
    code, body, peer = get("app.test", VIP)
    pair.check(code == 200 and peer == IP_LB[1], f"(g) lb1 stopped serving after the failed sync: {code}, {peer}")

    # (e) -------------------------------------------------------------------------------------------
    say("(e) lb0's proxyd restarted: lb0 preempts back")
    t0 = time.monotonic()
    lb0.start_proxyd()
    t_up = time.monotonic() - t0
    dt, polls, last = wait_served_by(IP_LB[0], t0, limit=10.0)
    pair.check(dt is not None, f"(e) lb0 did not take the VIP back within 10 s of its proxyd restart (last {last})")
    figure("proxyd_restart_ready", t_up)
    figure("preempt_back_after_proxyd_restart", dt)
    ok = stable_roles_and_vip(pair, lb0, 5.0)
    pair.check(ok, f"(e) after preemption: roles {pair.roles()}, VIP lb0={lb0.has_vip()} lb1={lb1.has_vip()}")

    # (f) -------------------------------------------------------------------------------------------
    say("(f) failover: lb0's keepalived SIGSTOPped then SIGKILLed")
    time.sleep(0.5)   # a few adverts from the settled MASTER
    t0 = lb0.kill_keepalived()
    dt, polls, last = wait_served_by(IP_LB[1], t0, limit=5.0)
    pair.check(dt is not None, f"(f) lb1 did not serve the VIP within 5 s of killing lb0's keepalived (last {last})")
    figure("failover_keepalived_killed", dt)
    pair.check(dt < 1.0, f"(f) lb1 served the VIP {dt:.3f} s after lb0's keepalived died, want < 1 s")
    ok = wait_until(lambda: lb1.role() == "MASTER", 3.0, 0.1)
    pair.check(ok, f"(f) lb1 recorded role {lb1.role()}, want MASTER")
    t0 = time.monotonic()
    lb0.start_keepalived()
    dt, polls, last = wait_served_by(IP_LB[0], t0, limit=10.0)
    pair.check(dt is not None, f"(f) lb0 did not take the VIP back within 10 s of its keepalived restart (last {last})")
    figure("preempt_back_after_keepalived_restart", dt)
    ok = stable_roles_and_vip(pair, lb0, 5.0)
    pair.check(ok, f"(f) after preemption: roles {pair.roles()}, VIP lb0={lb0.has_vip()} lb1={lb1.has_vip()}")

    # (g) -------------------------------------------------------------------------------------------
    say("(g) ha sync from a node with another cluster CA")
    rc, out, err = lb1.ctl("ha", "sync", timeout=20)
    pair.check(rc == 0, f"(g) ha sync on lb1 (BACKUP, same CA) -> {rc}\n{out}\n{err}")
    rogue = Node(net, "rogue", NS_ROGUE, IP_ROGUE, IP_LB[0], 100, True, pair.base)
    pair.extra.append(rogue)
    rogue.init()
    rogue.ctl_ok("ha", "init")
    rogue.add_site(site_yaml("rogue", "rogue.test", tls=False))
    rogue.start_proxyd()
    before = rogue.active_blob()
    lb1_before = lb1.active_blob()
    t = time.monotonic()
    rc, out, err = rogue.ctl("ha", "sync", "--force", timeout=20)
    dtr = time.monotonic() - t
    msg = (out + err).strip()
    pair.check(rc == 3, f"(g) ha sync from another CA -> {rc}, want 3\n{out}\n{err}")
    pair.check(re.search(r"certif|verif", msg, re.I), f"(g) the error does not name the certificate/verification: {msg!r}")
    pair.check(rogue.active_blob() == before, "(g) the rogue store's active generation changed after a refused sync")
    pair.check(lb1.active_blob() == lb1_before, "(g) lb1's active generation changed")
    code, body, peer = get("rogue.test", IP_ROGUE)
    pair.check(code == 200 and peer == IP_ROGUE, f"(g) the rogue stopped serving its own site: {code}")
    code, _, _ = get("app.test", IP_ROGUE)
    pair.check(code == 404, f"(g) the rogue serves app.test ({code}): it got lb0's state")
    figure("sync_wrong_ca", dtr)
    say(f"   exit 3 after {dtr:.2f} s: {msg.splitlines()[-1] if msg else ''}")

    # (i) -------------------------------------------------------------------------------------------
    say("(i) renew-cert --due on the BACKUP")
    rc, out, err = lb1.ctl("renew-cert", "--due")
    msg = (out + err).strip()
    pair.check(rc == 0 and "MASTER" in msg, f"(i) renew-cert --due on lb1 (BACKUP) -> {rc}: {msg!r}")
    say(f"   exit 0: {msg.splitlines()[-1] if msg else ''}")
    code, body, peer = get("app.test", VIP)
    pair.check(code == 200 and peer == IP_LB[0], f"(end) VIP: {code}, peer {peer}")


def test_ha_preempt_false(net):
    """(h) preempt: false on both: after lb0's proxyd comes back, lb1 keeps the VIP."""
    pair = Pair(net, preempt=False, tag="nopreempt")
    lb0, lb1 = pair.lb0, pair.lb1
    try:
        pair.start()
        code, body, peer = get("app.test", VIP)
        pair.check(code == 200 and peer == IP_LB[0], f"(h) VIP before failover: {code}, peer {peer}")
        t0, pids = lb0.kill_proxyd()
        dt, polls, last = wait_served_by(IP_LB[1], t0, limit=5.0)
        pair.check(dt is not None, f"(h) lb1 did not take over within 5 s (last {last})")
        figure("nopreempt_failover", dt)
        lb0.start_proxyd()
        ok = wait_until(lambda: lb0.role() == "BACKUP", 5.0, 0.1)
        pair.check(ok, f"(h) lb0 recorded role {lb0.role()} after its proxyd came back, want BACKUP")
        # Ten advert intervals and more than one health-check period: lb0 must not take the VIP.
        t_end = time.monotonic() + 2.5
        seen = set()
        while time.monotonic() < t_end:
            code, body, peer = get("app.test", VIP, timeout=0.3)
            seen.add((code, peer))
            time.sleep(0.1)
        pair.check(seen == {(200, IP_LB[1])}, f"(h) the VIP answered {seen}, want only 200 from lb1")
        pair.check(lb1.has_vip() and not lb0.has_vip(), f"(h) VIP: lb0={lb0.has_vip()} lb1={lb1.has_vip()}")
        pair.check(pair.roles() == ("BACKUP", "MASTER"), f"(h) roles {pair.roles()}")
        say("(h) preempt false: lb1 kept the VIP 2.5 s after lb0 was back (BACKUP)")
    finally:
        pair.stop()
    pair.assert_clean()
    say(summary_line())
