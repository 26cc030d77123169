"""systemd integration without systemd as PID 1: the protocols are plain environment
variables and sockets, so the tests play systemd's part.

- sd_notify: NOTIFY_SOCKET is a datagram socket of ours; READY=1 (with MAINPID and
  STATUS), RELOADING=1 then READY=1 around a reload, WATCHDOG=1 while the workers
  live (WATCHDOG_USEC), STOPPING=1 on SIGTERM.
- socket activation: LISTEN_FDS=1/LISTEN_PID with our listening socket as fd 3;
  proxyd serves on it without binding the port itself (we keep it bound).
- privilege drop: started as root with `user: nobody`, the workers run as nobody,
  serve, and reload from a store that stays root's (test_privsep.py checks they cannot
  open it).
- the unit templates pass `systemd-analyze verify`.
"""
import os
import re
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from proxyd_fixtures import (PROXYD, ROOT, children_of, free_port, proxyd_factory, run_proxyctl, wait_for,  # noqa: F401
                             wait_port)

SITE = """\
site: s
default: true
routes:
  - return: {status: 200, body: "generation-%s"}
"""


def _get(port, timeout=5):
    return _get_path(port, "/", timeout)


def _get_path(port, path, timeout=5):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    s.close()
    return data


def _messages(sock, until, timeout=5.0):
    """Collect sd_notify datagrams until one contains `until`."""
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except socket.timeout:
            break
        if until in got[-1]:
            return got
    raise AssertionError(f"no {until!r} among {got}")


def test_sd_notify_ready_reload_watchdog_stopping(proxyd_factory, tmp_path):
    p = proxyd_factory(sites=[SITE % "A"], start=False)
    path = str(tmp_path / "notify.sock")
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(path)
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="300000")
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([PROXYD, "--db", str(p.db), "--foreground"], cwd=str(p.dir), env=env,
                            stdout=subprocess.DEVNULL, stderr=open(p.stderr_path, "ab"))
    try:
        ready = _messages(ns, "READY=1")
        assert f"MAINPID={proc.pid}" in ready[-1] and "STATUS=serving generation" in ready[-1], ready
        assert _messages(ns, "WATCHDOG=1", timeout=2.0)
        Path(p.dir / "b.yaml").write_text(SITE % "B")
        assert p.proxyctl("add-site", p.dir / "b.yaml")[0] == 0  # asks proxyd to reload
        msgs = _messages(ns, "READY=1")
        assert any("RELOADING=1" in m for m in msgs), msgs
        assert b"generation-B" in _get(p.port)
        proc.send_signal(signal.SIGTERM)
        assert _messages(ns, "STOPPING=1")
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        ns.close()
    assert "AddressSanitizer" not in p.stderr_text()


def test_socket_activation(proxyd_factory, tmp_path):
    p = proxyd_factory(sites=[SITE % "A"], start=False)
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", p.port))  # proxyd's configured listen address, bound by "systemd"
    ls.listen(128)

    def as_fd3():
        os.dup2(ls.fileno(), 3)
        os.set_inheritable(3, True)

    # LISTEN_PID must be proxyd's own pid: set it from the shell that execs proxyd.
    cmd = f'LISTEN_PID=$$ LISTEN_FDS=1 exec "{PROXYD}" --db "{p.db}" --foreground'
    proc = subprocess.Popen(["/bin/sh", "-c", cmd], cwd=str(p.dir), preexec_fn=as_fd3,
                            close_fds=False, stdout=subprocess.DEVNULL, stderr=open(p.stderr_path, "ab"))
    try:
        deadline = time.monotonic() + 5
        body = b""
        while time.monotonic() < deadline:
            try:
                body = _get(p.port, timeout=2)
                break
            except OSError:
                time.sleep(0.05)
        assert b"generation-A" in body, p.diagnostics()
        assert "Address already in use" not in p.error_log_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        ls.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege drop needs root")
def test_workers_drop_to_user(proxyd_factory, tmp_path):
    nobody = pwd.getpwnam("nobody")
    # nobody could reach the store's directory: only the store's own mode keeps it out.
    for d in (tmp_path, tmp_path.parent, tmp_path.parent.parent):
        os.chmod(d, os.stat(d).st_mode | 0o711)
    p = proxyd_factory(global_settings={"user": "nobody"}, sites=[SITE % "A"], start=False)
    os.chmod(p.dir, 0o755)
    assert os.stat(p.db).st_uid == 0, "the store is root's: only the master reads it"
    assert os.stat(p.db).st_mode & 0o777 == 0o600
    p.start()
    workers = p.worker_pids()
    assert workers
    def uid(pid):
        return int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0])

    deadline = time.monotonic() + 3  # a worker drops right after it starts
    while time.monotonic() < deadline and any(uid(w) != nobody.pw_uid for w in workers):
        time.sleep(0.02)
    for w in workers:
        assert uid(w) == nobody.pw_uid, f"worker {w} runs as uid {uid(w)}"
    assert uid(p.pid) == 0
    assert b"generation-A" in _get(p.port)
    Path(p.dir / "b.yaml").write_text(SITE % "B")
    assert p.proxyctl("add-site", p.dir / "b.yaml")[0] == 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and b"generation-B" not in _get(p.port):
        time.sleep(0.05)
    assert b"generation-B" in _get(p.port), p.diagnostics()


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege drop needs root")
@pytest.mark.parametrize("user, message", [
    ("no-such-user-xyz", "user 'no-such-user-xyz' does not exist; refusing to serve as root"),
    ("", "refusing to run the workers as root: no 'user' is set and user 'proxyd' does not exist"),
])
def test_workers_never_fall_back_to_root(proxyd_factory, user, message):
    """Started as root, proxyd refuses to start (and --check says why) rather than run its
    workers as root, unless proxy.yaml says user: root (issue 17 item 4)."""
    try:
        pwd.getpwnam("proxyd")
        if user == "":
            pytest.skip("this machine has a 'proxyd' account: the default user exists")
    except KeyError:
        pass
    p = proxyd_factory(global_settings={"user": user}, sites=[SITE % "A"], start=False, check_stderr=False)
    r = subprocess.run([PROXYD, "--db", str(p.db), "--foreground", "--workers", "1"], cwd=str(p.dir),
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and message in r.stderr, r
    # --check: the table is fine, and it warns that a start as root would refuse
    r = subprocess.run([PROXYD, "--db", str(p.db), "--check"], cwd=str(p.dir), capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 0 and "configuration OK" in r.stdout, r
    assert "warning: started as root, " + message in r.stderr, r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege drop needs root")
def test_user_root_is_said_not_assumed(proxyd_factory):
    p = proxyd_factory(global_settings={"user": "root"}, sites=[SITE % "A"])
    assert b"generation-A" in _get(p.port)
    assert all(int(Path(f"/proc/{w}/status").read_text().split("Uid:")[1].split()[0]) == 0 for w in p.worker_pids())
    assert wait_for(lambda: "workers run as root: proxy.yaml says user: root" in p.error_log_text())


def test_unit_templates_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    for name in ("proxyd.service", "proxyd.socket", "proxyctl-renew.service", "proxyctl-renew.timer"):
        text = (ROOT / "templates" / name).read_text()
        text = text.replace("/usr/local/bin/proxyd", str(ROOT / "bin" / "proxyd"))
        text = text.replace("/usr/local/bin/proxyctl", str(ROOT / "bin" / "proxyctl"))
        (tmp_path / name).write_text(text)
    names = [str(tmp_path / n) for n in ("proxyd.service", "proxyd.socket", "proxyctl-renew.service",
                                          "proxyctl-renew.timer")]
    r = subprocess.run(["systemd-analyze", "verify", *names], capture_output=True, text=True, timeout=60,
                       cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr


# ---- the units' hardening -------------------------------------------------------------------

def _unit_values(name, key):
    out = []
    for line in (ROOT / "templates" / name).read_text().splitlines():
        if line.startswith(key + "="):
            out.append(line.split("=", 1)[1])
    return out


@pytest.mark.parametrize("name", ["proxyd.service", "proxyctl-renew.service"])
def test_unit_exposure_at_most_2(name, tmp_path):
    """systemd-analyze security: exposure 2.0 at most (issue 17 item 5)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    (tmp_path / name).write_text((ROOT / "templates" / name).read_text())
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(tmp_path / name)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout


def test_renew_unit_does_not_reown_the_state_directory():
    """StateDirectory= would re-own /var/lib/proxyd on every run.  Both units run as root (no
    User=), who owns the store; the renew unit with no capability at all, proxyd's master with
    setuid/setgid only, to run its workers as proxy.yaml's user."""
    assert _unit_values("proxyctl-renew.service", "StateDirectory") == []
    assert _unit_values("proxyctl-renew.service", "User") == _unit_values("proxyd.service", "User") == []
    assert _unit_values("proxyctl-renew.service", "CapabilityBoundingSet") == [""]
    assert _unit_values("proxyd.service", "CapabilityBoundingSet") == ["CAP_SETUID CAP_SETGID"]
    assert _unit_values("proxyctl-renew.service", "ReadWritePaths") == ["/var/lib/proxyd"]


def _expand(group, seen=None):
    """The system calls of a systemd syscall group, nested groups expanded."""
    seen = seen if seen is not None else set()
    if group in seen:
        return set()
    seen.add(group)
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", group], capture_output=True, text=True,
                         timeout=30).stdout
    calls = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        calls |= _expand(item, seen) if item.startswith("@") else {item}
    return calls


def test_unit_syscall_filter_allows_what_proxyd_calls(tmp_path):
    """Every system call proxyd makes serving plain HTTP, TLS, a proxied request, a static file,
    a rate-limited route, a reload and a stop (traced with strace -f, the non-sanitized build) is
    one proxyd.service's SystemCallFilter= lines allow."""
    if shutil.which("strace") is None or shutil.which("systemd-analyze") is None:
        pytest.skip("needs strace and systemd-analyze")
    from proxyd_fixtures import Proxyd, backend_factory as _bf  # noqa: F401
    from tls_fixtures import https_request
    binary = ROOT / "bin" / "proxyd"
    assert binary.exists(), "make builds bin/proxyd"
    www = tmp_path / "www"
    (www / "static").mkdir(parents=True)
    (www / "static" / "f.txt").write_bytes(b"s" * 100000)
    origin = subprocess.Popen(["/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1", str(free_port_ := free_port())],
                              cwd=str(www), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    https_port = free_port()
    site = f"""\
site: s
default: true
tls: {{certificate: self-signed}}
upstreams: {{app: {{servers: [{{address: "127.0.0.1:{free_port_}"}}]}}}}
routes:
  - match: {{path_prefix: /static/}}
    static: {{root: {www}}}
  - match: {{path_prefix: /limited/}}
    upstream: app
    rate_limit: {{zone: z, nodelay: true}}
  - match: {{path_prefix: /}}
    upstream: app
"""
    p = Proxyd(tmp_path, {"listen": {"https": [f"127.0.0.1:{https_port}"]},
                          "rate_limit_zones": {"z": {"rate": "1r/m"}}}, sites=[site])
    trace = tmp_path / "strace.txt"
    proc = subprocess.Popen(["strace", "-f", "-qq", "-o", str(trace), str(binary), "--db", str(p.db), "--foreground"],
                            cwd=str(p.dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: _get_ok(p.port), timeout=15), "proxyd under strace did not serve"
        assert b"s" * 1000 in _get_path(p.port, "/static/f.txt")
        assert b"static/" in _get_path(p.port, "/")
        _get_path(p.port, "/limited/a")
        assert b"429" in _get_path(p.port, "/limited/b")
        assert https_request(https_port, host="x", target="/static/f.txt").status == 200
        os.kill(proc.pid, signal.SIGHUP)
        time.sleep(0.5)
        assert _get_ok(p.port)
    finally:
        try:
            os.kill(p.status()["pid"], signal.SIGTERM)  # the master, strace's child: strace ends with it
            proc.wait(timeout=20)
        except Exception:
            proc.kill()
            proc.wait(timeout=10)
            raise
        finally:
            origin.terminate()
        origin.wait(timeout=10)
    used = set()
    for line in trace.read_text(errors="replace").splitlines():
        m = re.match(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]", line)
        if m and m.group(1) not in ("exited", "killed", "resumed"):
            used.add(m.group(1))
    assert {"epoll_wait", "accept4", "sendfile", "memfd_create"} <= used, sorted(used)
    filters = _unit_values("proxyd.service", "SystemCallFilter")
    allowed = set()
    for f in filters:
        deny = f.startswith("~")
        calls = set()
        for item in f.lstrip("~").split():
            calls |= _expand(item) if item.startswith("@") else {item}
        allowed = allowed - calls if deny else allowed | calls
    # execve of proxyd itself happens before the filter applies; SQLite fchown()s its -wal and -shm
    # files to the database's owner when it runs as root (the master does): refused there with EPERM,
    # which it ignores, the files being root's already
    root_only = {"fchown"} if os.geteuid() == 0 else set()
    missing = sorted(c for c in used - allowed - root_only if c not in ("execve",))
    assert missing == [], f"proxyd calls what proxyd.service would refuse: {missing}"


def _get_ok(port):
    try:
        return _get_path(port, "/", timeout=2).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def test_workers_run_under_a_syscall_filter(proxyd_factory):
    """Workers set no_new_privs and load a seccomp allow list (core/sandbox.c) once they
    serve; the master, which executes the binary again at an upgrade, does not."""
    p = proxyd_factory(sites=[SITE % "A"])
    assert b"generation-A" in _get(p.port)

    def status(pid):
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        return fields["Seccomp"].strip(), fields["NoNewPrivs"].strip()

    assert wait_for(lambda: all(status(w) == ("2", "1") for w in p.worker_pids()))
    assert status(p.pid) == ("0", "0")
    # a reload (table, certificates and regexes made again inside the filter) still serves
    Path(p.dir / "b.yaml").write_text(SITE % "B")
    assert p.proxyctl("add-site", p.dir / "b.yaml")[0] == 0
    assert wait_for(lambda: b"generation-B" in _get(p.port))
