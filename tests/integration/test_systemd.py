"""systemd integration without systemd as PID 1: the protocols are plain environment
variables and sockets, so the tests play systemd's part.

- sd_notify: NOTIFY_SOCKET is a datagram socket of ours; READY=1 (with MAINPID and
  STATUS), RELOADING=1 then READY=1 around a reload, WATCHDOG=1 while the workers
  live (WATCHDOG_USEC), STOPPING=1 on SIGTERM.
- socket activation: LISTEN_FDS=1/LISTEN_PID with our listening socket as fd 3;
  proxyd serves on it without binding the port itself (we keep it bound).
- privilege drop: started as root with `user: nobody`, the workers run as nobody,
  serve, and reload from a store proxyctl handed to nobody.
- the unit templates pass `systemd-analyze verify`.
"""
import os
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
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
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
    # nobody must reach its store: let it search (not list) the directories above it.
    for d in (tmp_path, tmp_path.parent, tmp_path.parent.parent):
        os.chmod(d, os.stat(d).st_mode | 0o711)
    p = proxyd_factory(global_settings={"user": "nobody"}, sites=[SITE % "A"], start=False)
    os.chmod(p.dir, 0o755)
    assert os.stat(p.db).st_uid == nobody.pw_uid, "proxyctl did not hand the store to the configured user"
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
    for extra in ([], ["--check"]):
        r = subprocess.run([PROXYD, "--db", str(p.db), "--foreground", "--workers", "1", *extra], cwd=str(p.dir),
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 1, (extra, r)
        assert message in r.stderr, (extra, r.stderr)
        assert "configuration OK" not in r.stdout


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
