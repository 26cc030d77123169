"""Fixtures and helpers for the proxyd integration tests (tests/integration/test_proxyd_*.py).

Binaries: $PROXYD and $PROXYCTL (default: the ASan+UBSan builds build/asan/proxyd and
build/asan/proxyctl).
The test origin is build/bench/origin (built from bench/origin.c when missing).

Fixtures (pytest, function scope, everything stopped by PID at teardown):

  proxyd_factory(global_settings=None, sites=(), workers=2, check_stderr=True) -> Proxyd
      A fresh store in tmp_path (`proxyctl --db DB init --global proxy.yaml`, then
      `proxyctl --db DB add-site f.yaml` per site), a free 127.0.0.1 port, a private admin
      socket and log files, and `proxyd --db DB --foreground` started with its stderr in a
      file; returns once the port accepts (bounded 5 s).  global_settings is a dict (merged
      over the fixture's listen/admin/logs/workers/limits keys) or YAML text (appended to
      the fixture's keys; it must not repeat them).  Teardown: SIGTERM, bounded wait,
      SIGKILL of the master and its workers if needed, then an assertion that the stderr
      log holds no sanitizer report.
  origin_factory(echo=True, body=None) -> Origin(port, pid)    build/bench/origin
  backend_factory(handler) -> PyBackend                          a Python HTTP/1.1 server

Client helpers: raw_exchange(), read_response(), parse_response(), http_get() ...
"""
import json
import os
import re
import resource
import select
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROXYD = os.path.abspath(os.environ.get("PROXYD", str(ROOT / "build" / "asan" / "proxyd")))
PROXYCTL = os.path.abspath(os.environ.get("PROXYCTL", str(ROOT / "build" / "asan" / "proxyctl")))
PROXYCTL_PLAIN = os.path.abspath(os.environ.get("PROXYCTL_PLAIN", str(ROOT / "bin" / "proxyctl")))
ORIGIN = os.path.abspath(os.environ.get("PROXYD_TEST_ORIGIN", str(ROOT / "build" / "bench" / "origin")))

def _is_sanitized(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    return b"__asan_init" in data or b"__ubsan_handle" in data


PROXYD_SANITIZED = _is_sanitized(PROXYD)

SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer", "runtime error")


def raise_nofile(want=16384):
    """Raise RLIMIT_NOFILE of this process (and of what it starts) towards the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


raise_nofile()


def sanitizer_report(text):
    return any(m in text for m in SANITIZER_MARKS)


class AcceptLoop:
    """A listener on 127.0.0.1 whose thread hands each accepted connection to serve(conn)."""

    def __init__(self, backlog=16):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.serve(c)

    def close(self):
        self.stop.set()
        self.sock.close()
        self.thread.join(10)


def free_port():
    """A currently free TCP port on 127.0.0.1 (bind port 0, read it, close)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def wait_port(port, timeout=5.0, proc=None):
    """Wait until 127.0.0.1:port accepts a connection; False after timeout (or if proc died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def _kill_pid(pid, sig):
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def children_of(pid):
    """PIDs whose parent is pid (from /proc/PID/task/*/children, else a /proc scan)."""
    kids = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids.update(int(x) for x in f.read().split())
        return sorted(kids)
    except OSError:
        pass
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
            ppid = int(st[st.rindex(")") + 2:].split()[1])
            if ppid == pid:
                kids.add(int(d))
        except (OSError, ValueError):
            continue
    return sorted(kids)


def vm_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_proxyctl(*args, binary=None, cwd=None, timeout=60, allow_sanitizer=False):
    """Run proxyctl ARGS; returns (rc, stdout, stderr).  A sanitizer report fails the test."""
    env = dict(os.environ)
    env.pop("PROXYD_DB", None)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    p = subprocess.run([binary or PROXYCTL, *map(str, args)], cwd=str(cwd) if cwd else None,
                       capture_output=True, text=True, env=env, timeout=timeout)
    if not allow_sanitizer and sanitizer_report(p.stderr):
        pytest.fail(f"sanitizer report from proxyctl {' '.join(map(str, args))}:\n{p.stderr}")
    return p.returncode, p.stdout, p.stderr


def ensure_origin():
    if os.path.exists(ORIGIN):
        return ORIGIN
    os.makedirs(os.path.dirname(ORIGIN), exist_ok=True)
    subprocess.run(["cc", "-std=c11", "-D_GNU_SOURCE", "-O2", "-o", ORIGIN, str(ROOT / "bench" / "origin.c")],
                   check=True, timeout=120)
    return ORIGIN


# ---- proxyd ------------------------------------------------------------------------

def _merge(base, extra):
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


class Proxyd:
    """One proxyd instance on a private store, port, admin socket and logs."""

    def __init__(self, tmp, global_settings=None, sites=(), workers=2, check_stderr=True, name="proxyd"):
        self.dir = Path(tmp) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db = self.dir / "store.db"
        self.port = free_port()
        self.admin_socket = str(self.dir / "admin.sock")
        self.access_log = str(self.dir / "access.log")
        # sites in the combined format log beside it, one file per format (accesslog.c)
        self.combined_log = str(self.dir / "access.combined.log")
        self.error_log = str(self.dir / "error.log")
        self.stderr_path = str(self.dir / "proxyd.stderr")
        self.workers = workers
        self.check_stderr = check_stderr
        self.proc = None
        self.pid = None
        self._nsite = 0
        base = {
            "listen": {"http": [f"127.0.0.1:{self.port}"], "https": []},
            "admin": {"socket": self.admin_socket},
            "logs": {"access": self.access_log, "error": self.error_log},
            "workers": workers,
            "limits": {"drain_timeout": "3s"},
        }
        if os.geteuid() == 0:
            # proxyd refuses to run its workers as root unless told; the tests run as root
            # on a machine without a 'proxyd' account (test_systemd.py covers the drop).
            base["user"] = "root"
        if global_settings is None or isinstance(global_settings, dict):
            text = yaml.safe_dump(_merge(base, global_settings or {}), sort_keys=False)
        else:
            text = yaml.safe_dump(base, sort_keys=False) + str(global_settings)
        self.global_text = text
        (self.dir / "proxy.yaml").write_text(text)
        self._init_store()
        for s in sites:
            self.add_site(s)

    # -- store --
    def _init_store(self):
        rc, out, err = run_proxyctl("--db", self.db, "init", "--global", self.dir / "proxy.yaml", cwd=self.dir)
        assert rc == 0, f"proxyctl init failed ({rc}):\n{out}\n{err}\n--- proxy.yaml:\n{self.global_text}"

    def add_site(self, text, expect_rc=0):
        self._nsite += 1
        m = re.search(r"^site:\s*([a-z0-9-]+)", text, re.M)
        path = self.dir / f"site-{self._nsite}-{m.group(1) if m else 'x'}.yaml"
        path.write_text(text)
        rc, out, err = self.proxyctl("add-site", path)
        if expect_rc is not None:
            assert rc == expect_rc, f"add-site {path.name} -> {rc}:\n{out}\n{err}\n--- site:\n{text}"
        return rc, out, err

    def proxyctl(self, *args, timeout=60):
        return run_proxyctl("--db", self.db, *args, cwd=self.dir, timeout=timeout)

    # -- process --
    def start(self, timeout=5.0, extra_args=()):
        env = dict(os.environ)
        env.pop("PROXYD_DB", None)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([PROXYD, "--db", str(self.db), "--foreground", *extra_args],
                                     cwd=str(self.dir), stdin=subprocess.DEVNULL, stdout=self._stderr,
                                     stderr=self._stderr, env=env)
        self.pid = self.proc.pid
        if not wait_port(self.port, timeout, self.proc):
            self.stop(check=False)
            pytest.fail(f"proxyd did not accept on port {self.port} within {timeout}s:\n{self.diagnostics()}")
        # The listener is bound by the master before the workers exist; wait for them too.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.worker_pids()) < self.workers:
            time.sleep(0.02)
        return self

    def worker_pids(self):
        return children_of(self.pid) if self.pid else []

    def stop(self, sig=signal.SIGTERM, timeout=10.0, check=None):
        """Stop by PID: sig, bounded wait, SIGKILL (master and workers).  Returns seconds taken."""
        if self.proc is None:
            return 0.0
        t0 = time.monotonic()
        kids = self.worker_pids()
        if self.proc.poll() is None:
            _kill_pid(self.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for k in kids + self.worker_pids():
                    _kill_pid(k, signal.SIGKILL)
                _kill_pid(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        elapsed = time.monotonic() - t0
        # Workers die with the master (PR_SET_PDEATHSIG); make sure of it.
        deadline = time.monotonic() + 3
        for k in kids:
            while time.monotonic() < deadline and os.path.exists(f"/proc/{k}") and _is_alive(k):
                time.sleep(0.02)
            if _is_alive(k):
                _kill_pid(k, signal.SIGKILL)
        self.proc = None
        self._stderr.close()
        if check if check is not None else self.check_stderr:
            self.assert_no_sanitizer()
        return elapsed

    def assert_no_sanitizer(self):
        text = self.stderr_text()
        assert not sanitizer_report(text), f"sanitizer report in proxyd stderr:\n{text[-20000:]}"

    def stderr_text(self):
        try:
            return Path(self.stderr_path).read_text(errors="replace")
        except OSError:
            return ""

    def error_log_text(self):
        try:
            return Path(self.error_log).read_text(errors="replace")
        except OSError:
            return ""

    def access_log_lines(self, path=None):
        try:
            return [l for l in Path(path or self.access_log).read_text(errors="replace").splitlines() if l.strip()]
        except OSError:
            return []

    def combined_log_lines(self):
        return self.access_log_lines(self.combined_log)

    def diagnostics(self):
        return f"--- stderr:\n{self.stderr_text()[-6000:]}\n--- error log:\n{self.error_log_text()[-6000:]}"

    # -- admin --
    def admin(self, method, path, body=b"", timeout=5.0):
        """(status, headers dict, body bytes) from the admin unix socket."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(self.admin_socket)
            req = f"{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            s.sendall(req.encode() + body)
            data = recv_all(s, timeout)
        finally:
            s.close()
        r = parse_response(data)
        assert r is not None, f"no admin response to {method} {path}: {data!r}"
        return r.status, r.headers, r.body

    def status(self):
        st, _, body = self.admin("GET", "/status")
        assert st == 200, body
        return json.loads(body)

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.port}{path}"


def _is_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        return st[st.rindex(")") + 2] != "Z"
    except OSError:
        return False


@pytest.fixture
def proxyd_factory(tmp_path):
    started = []

    def make(global_settings=None, sites=(), workers=2, check_stderr=True, start=True, name=None):
        p = Proxyd(tmp_path, global_settings, sites, workers=workers, check_stderr=check_stderr,
                   name=name or f"proxyd{len(started)}")
        started.append(p)
        if start:
            p.start()
        return p

    yield make
    errors = []
    for p in started:
        try:
            p.stop()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n".join(errors))


# ---- backends ------------------------------------------------------------------------

class Origin:
    def __init__(self, port, proc):
        self.port = port
        self.proc = proc
        self.pid = proc.pid
        self.address = f"127.0.0.1:{port}"


@pytest.fixture
def origin_factory(tmp_path):
    procs = []

    def make(echo=True, body=None):
        binary = ensure_origin()
        for _ in range(5):
            port = free_port()
            args = [binary, str(port)] + (["--echo"] if echo else []) + (["--body", str(body)] if body else [])
            log = open(tmp_path / f"origin-{port}.log", "wb")
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            log.close()
            procs.append(proc)
            if wait_port(port, 5.0, proc):
                return Origin(port, proc)
        pytest.fail("origin did not start")

    yield make
    for p in procs:
        if p.poll() is None:
            _kill_pid(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _kill_pid(p.pid, signal.SIGKILL)
                p.wait(timeout=5)


class BackendRequest:
    def __init__(self, method, target, version, headers, body, raw_head, conn_id):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers          # list of (name, value)
        self.body = body
        self.raw_head = raw_head
        self.conn_id = conn_id

    def header(self, name, default=None):
        vals = [v for k, v in self.headers if k.lower() == name.lower()]
        return vals[-1] if vals else default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]


class BackendConn:
    """What a handler gets: the socket plus helpers; a handler returns True to keep the connection."""

    def __init__(self, sock, conn_id):
        self.sock = sock
        self.conn_id = conn_id
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def respond(self, status=200, body=b"", headers=(), reason="OK", keep_alive=True):
        if isinstance(body, str):
            body = body.encode()
        h = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
        for k, v in headers:
            h += f"{k}: {v}\r\n"
        if not keep_alive:
            h += "Connection: close\r\n"
        self.sock.sendall(h.encode() + b"\r\n" + body)
        return keep_alive


class PyBackend:
    """A small threaded HTTP/1.1 server on 127.0.0.1:<ephemeral> that records every request.

    handler(req, conn) -> bool (keep the connection open).  The default handler answers
    200 "ok".  Attributes: port, address, requests (list of BackendRequest), connections
    (count accepted), raw (bytes received per connection id).
    """

    def __init__(self, handler=None, max_body=1 << 26, unix=None):
        self.handler = handler or (lambda req, conn: conn.respond(200, b"ok"))
        self.max_body = max_body
        if unix:
            self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.lsock.bind(str(unix))
            self.port = None
            self.address = f"unix:{unix}"
        else:
            self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.lsock.bind(("127.0.0.1", 0))
            self.port = self.lsock.getsockname()[1]
            self.address = f"127.0.0.1:{self.port}"
        self.lsock.listen(1024)
        self.requests = []
        self.connections = 0
        self.raw = {}
        self.errors = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.socks = []
        self.threads = []
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self):
        self.lsock.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
                cid = self.connections
                self.socks.append(s)
                self.raw[cid] = b""
            t = threading.Thread(target=self._serve, args=(s, cid), daemon=True)
            self.threads.append(t)
            t.start()

    def _recv(self, conn):
        data = conn.sock.recv(65536)
        if data:
            with self.lock:
                self.raw[conn.conn_id] += data
        return data

    def _read_request(self, conn):
        while b"\r\n\r\n" not in conn.buf:
            d = self._recv(conn)
            if not d:
                return None
            conn.buf += d
        head, conn.buf = conn.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        parts = lines[0].decode("latin-1").split(" ")
        method, target, version = (parts + ["", "", ""])[:3]
        headers = []
        for line in lines[1:]:
            k, _, v = line.decode("latin-1").partition(":")
            headers.append((k, v.strip()))
        req = BackendRequest(method, target, version, headers, b"", head, conn.conn_id)
        te = req.header("Transfer-Encoding")
        if te is not None and "chunked" in te.lower():
            body = b""
            while True:
                while b"\r\n" not in conn.buf:
                    d = self._recv(conn)
                    if not d:
                        req.body = body
                        req.incomplete = True
                        return req
                    conn.buf += d
                line, conn.buf = conn.buf.split(b"\r\n", 1)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while b"\r\n" not in conn.buf:  # trailers: only the empty line expected
                        d = self._recv(conn)
                        if not d:
                            break
                        conn.buf += d
                    _, _, conn.buf = conn.buf.partition(b"\r\n")
                    break
                while len(conn.buf) < size + 2:
                    d = self._recv(conn)
                    if not d:
                        req.body = body + conn.buf
                        req.incomplete = True
                        return req
                    conn.buf += d
                body += conn.buf[:size]
                conn.buf = conn.buf[size + 2:]
            req.body = body
        else:
            n = int(req.header("Content-Length", "0") or 0)
            n = min(n, self.max_body)
            while len(conn.buf) < n:
                d = self._recv(conn)
                if not d:
                    break
                conn.buf += d
            req.body, conn.buf = conn.buf[:n], conn.buf[n:]
        req.incomplete = False
        return req

    def _serve(self, s, cid):
        conn = BackendConn(s, cid)
        try:
            s.settimeout(30)
            while not self.stopping.is_set():
                req = self._read_request(conn)
                if req is None:
                    break
                with self.lock:
                    self.requests.append(req)
                if not self.handler(req, conn):
                    break
        except (OSError, ValueError) as e:
            if not self.stopping.is_set():
                self.errors.append(repr(e))
        finally:
            try:
                s.close()
            except OSError:
                pass

    def stop(self):
        self.stopping.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self.socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
        self.thread.join(timeout=2)
        for t in self.threads:
            t.join(timeout=2)


class ModuleEnv:
    """Processes shared by the tests of one module (module-scoped fixtures); stop() by PID."""

    def __init__(self, tmp):
        self.tmp = Path(tmp)
        self.proxyds = []
        self.backends = []
        self.origins = []

    def proxyd(self, global_settings=None, sites=(), workers=2, name=None):
        p = Proxyd(self.tmp, global_settings, sites, workers=workers, name=name or f"proxyd{len(self.proxyds)}")
        self.proxyds.append(p)
        return p.start()

    def backend(self, handler=None, **kw):
        b = PyBackend(handler, **kw)
        self.backends.append(b)
        return b

    def origin(self, echo=True):
        binary = ensure_origin()
        port = free_port()
        proc = subprocess.Popen([binary, str(port)] + (["--echo"] if echo else []), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.origins.append(proc)
        assert wait_port(port, 5.0, proc), "origin did not start"
        return Origin(port, proc)

    def check(self):
        for p in self.proxyds:
            p.assert_no_sanitizer()

    def stop(self):
        errors = []
        for p in self.proxyds:
            try:
                p.stop()
            except AssertionError as e:
                errors.append(str(e))
        for b in self.backends:
            b.stop()
        for proc in self.origins:
            if proc.poll() is None:
                _kill_pid(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    _kill_pid(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
        if errors:
            pytest.fail("\n".join(errors))


@pytest.fixture
def backend_factory():
    made = []

    def make(handler=None, **kw):
        b = PyBackend(handler, **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


# ---- site YAML -------------------------------------------------------------------------

def proxy_site(name, upstream, hosts=None, default=False, route_extra="", upstream_extra="", site_extra="",
               prefix="/"):
    """A site whose one route proxies prefix to `upstream` (an address or a list)."""
    addrs = upstream if isinstance(upstream, (list, tuple)) else [upstream]
    servers = ", ".join(f'{{address: "{a}"}}' for a in addrs)
    text = f"site: {name}\n"
    if default:
        text += "default: true\n"
    if hosts:
        text += "hosts: [" + ", ".join(f'"{h}"' for h in hosts) + "]\n"
    text += f"upstreams:\n  app:\n    servers: [{servers}]\n"
    if upstream_extra:
        text += "".join(f"    {l}\n" for l in upstream_extra.strip("\n").splitlines())
    text += f"routes:\n  - match: {{path_prefix: {prefix}}}\n    upstream: app\n"
    if route_extra:
        text += "".join(f"    {l}\n" for l in route_extra.strip("\n").splitlines())
    if site_extra:
        text += site_extra.rstrip("\n") + "\n"
    return text


# ---- client side ---------------------------------------------------------------------------

class Response:
    def __init__(self, status, reason, version, headers, body, complete, raw_len):
        self.status = status
        self.reason = reason
        self.version = version
        self.header_list = headers
        self.headers = {}
        for k, v in headers:
            self.headers.setdefault(k.lower(), v)
        self.body = body
        self.complete = complete     # body framing was satisfied (length/chunked end seen)
        self.raw_len = raw_len       # bytes of the input this response used

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)

    def header_all(self, name):
        return [v for k, v in self.header_list if k.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.header_list} body={self.body[:200]!r}>"


def parse_response(data, head_request=False, eof=True):
    """Parse one HTTP/1.x response at the start of data; None if no complete head."""
    if b"\r\n\r\n" not in data:
        return None
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    first = lines[0].decode("latin-1")
    parts = first.split(" ", 2)
    version, status = parts[0], int(parts[1])
    reason = parts[2] if len(parts) > 2 else ""
    headers = []
    for line in lines[1:]:
        k, _, v = line.decode("latin-1").partition(":")
        headers.append((k.strip(), v.strip()))
    hl = {k.lower(): v for k, v in headers}
    used = len(head) + 4
    if head_request or status in (204, 304) or 100 <= status < 200:
        return Response(status, reason, version, headers, b"", True, used)
    if "chunked" in hl.get("transfer-encoding", "").lower():
        body = b""
        pos = 0
        while True:
            i = rest.find(b"\r\n", pos)
            if i < 0:
                return Response(status, reason, version, headers, body, False, used + len(rest))
            size = int(rest[pos:i].split(b";")[0] or b"0", 16)
            if size == 0:
                j = rest.find(b"\r\n", i + 2)
                complete = j >= 0
                end = j + 2 if complete else len(rest)
                return Response(status, reason, version, headers, body, complete, used + end)
            if len(rest) < i + 2 + size + 2:
                body += rest[i + 2:i + 2 + size]
                return Response(status, reason, version, headers, body, False, used + len(rest))
            body += rest[i + 2:i + 2 + size]
            pos = i + 2 + size + 2
    if "content-length" in hl:
        n = int(hl["content-length"])
        body = rest[:n]
        return Response(status, reason, version, headers, body, len(body) == n, used + len(body))
    return Response(status, reason, version, headers, rest, eof, used + len(rest))


def parse_responses(data, head_requests=()):
    out = []
    i = 0
    while data:
        r = parse_response(data, head_request=i in head_requests)
        if r is None:
            break
        out.append(r)
        data = data[r.raw_len:]
        i += 1
    return out


def recv_all(sock, timeout=5.0, limit=1 << 26):
    """Read until EOF, timeout or limit bytes (a reset ends the read too)."""
    deadline = time.monotonic() + timeout
    chunks = []
    total = 0
    while total < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            d = sock.recv(65536)
        except socket.timeout:
            break
        except (ConnectionResetError, BrokenPipeError):
            break
        if not d:
            break
        chunks.append(d)
        total += len(d)
    return b"".join(chunks)


def connect(port, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def raw_exchange(port, data, timeout=5.0, half_close=False):
    """Send data on a new connection and read until the server closes (or timeout)."""
    s = connect(port, timeout)
    try:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return recv_all(s, timeout)
    finally:
        s.close()


def exchange_eof(port, data, timeout=5.0):
    """Send data on a new connection; (bytes read, True when the server closed within timeout)."""
    s = connect(port, timeout)
    deadline = time.monotonic() + timeout
    chunks, eof = [], False
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                d = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                eof = True
                break
            if not d:
                eof = True
                break
            chunks.append(d)
    finally:
        s.close()
    return b"".join(chunks), eof


def read_response(sock, timeout=5.0, head_request=False):
    """Read exactly one response from a keep-alive socket (Content-Length or chunked)."""
    deadline = time.monotonic() + timeout
    data = getattr(sock, "_pending", b"")
    while True:
        r = parse_response(data, head_request=head_request, eof=False)
        if r is not None and r.complete:
            if isinstance(sock, PendingSocket):
                sock._pending = data[r.raw_len:]
            return r
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete response within {timeout}s: {data[:500]!r}")
        sock.settimeout(left)
        d = sock.recv(65536)
        if not d:
            r = parse_response(data, head_request=head_request, eof=True)
            if r is None:
                raise ConnectionError(f"connection closed before a complete response: {data[:500]!r}")
            return r
        data += d


class PendingSocket(socket.socket):
    """A socket that keeps bytes read past one response (for pipelining)."""
    _pending = b""


def keepalive_socket(port, timeout=5.0):
    s = PendingSocket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def request_bytes(method="GET", target="/", host="example.test", headers=(), body=b"", version="HTTP/1.1"):
    h = f"{method} {target} {version}\r\n"
    if host is not None:
        h += f"Host: {host}\r\n"
    for k, v in headers:
        h += f"{k}: {v}\r\n"
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        h += f"Content-Length: {len(body)}\r\n"
    return h.encode("latin-1") + b"\r\n" + body


def http(port, method="GET", target="/", host="example.test", headers=(), body=b"", timeout=5.0,
         version="HTTP/1.1"):
    """One request on a new connection; returns Response (the connection is then closed)."""
    hs = list(headers)
    if not any(k.lower() == "connection" for k, _ in hs):
        hs.append(("Connection", "close"))
    data = raw_exchange(port, request_bytes(method, target, host, hs, body, version), timeout)
    r = parse_response(data, head_request=method == "HEAD")
    assert r is not None, f"no response to {method} {target}: {data[:300]!r}"
    return r


def echo_headers(resp):
    """The [name, value] list the echo origin received, as a list of tuples."""
    return [(k, v) for k, v in resp.json()["headers"]]


def wait_for(pred, timeout=5.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


def readable_within(sock, timeout):
    r, _, _ = select.select([sock], [], [], timeout)
    return bool(r)
