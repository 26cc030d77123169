"""`make demo` on a fresh machine (issue 18 item 6).

- the demo stops everything it started on SIGTERM as on Ctrl-C, whether the signal goes to
  examples/demo.sh or to `make demo` (which forwards it): its backends, proxyd and its workers
  are gone and the ports are free, within seconds;
- every hint the demo prints does what its comment says.

The demo serves fixed ports (127.0.0.1:8080, 8443, 9145 and 9001-9010) and keeps its store in
var/demo of the work tree; the tests skip when one of those ports is taken.
"""
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from conftest import ROOT
from proxyd_fixtures import children_of

PORTS = [8080, 8443, 9145] + list(range(9001, 9011))


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        for k in children_of(todo.pop()):
            out.append(k)
            todo.append(k)
    return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def demo():
    """Start a demo command, wait (bounded) until it serves; yields (proc, output so far)."""
    if not (ROOT / "bin" / "proxyd").exists() or not (ROOT / "build" / "bench" / "origin").exists():
        pytest.skip("bin/proxyd and build/bench/origin are built by make test")
    busy = [p for p in PORTS if port_open(p)]
    if busy:
        pytest.skip(f"demo ports in use on this machine: {busy}")
    started = []

    def start(argv):
        log = open(ROOT / "build" / "demo-test.out", "wb")
        proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        started.append(proc)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = (ROOT / "build" / "demo-test.out").read_text(errors="replace")
            if "to stop." in text:
                return proc, text
            assert proc.poll() is None, text
            time.sleep(0.2)
        pytest.fail("the demo did not start within 120 s:\n" + (ROOT / "build" / "demo-test.out").read_text())

    yield start
    for proc in started:
        if proc.poll() is None:  # a failed test: stop the whole session
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


@pytest.mark.parametrize("argv", [["examples/demo.sh"], ["make", "--no-print-directory", "demo"]],
                         ids=["demo.sh", "make-demo"])
def test_demo_stops_on_sigterm(demo, argv):
    proc, text = demo(argv)
    procs = descendants(proc.pid)
    names = {open(f"/proc/{p}/comm").read().strip() for p in procs if alive(p)}
    assert {"origin", "proxyd"} <= names, names
    assert port_open(8080)
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)  # `kill PID`: to that one process, not its group
    proc.wait(timeout=20)
    took = time.monotonic() - t0
    out = (ROOT / "build" / "demo-test.out").read_text()
    assert "demo stopped" in out, out
    assert took < 10, took
    left = [p for p in procs if alive(p)]
    assert not left, [open(f"/proc/{p}/cmdline").read() for p in left if alive(p)]
    busy = [p for p in PORTS if port_open(p)]
    assert not busy, busy


def hints(text):
    """The demo's 'Try' lines: (command, comment)."""
    body = text.split("Try", 1)[1].split("Press Ctrl-C", 1)[0]
    out = []
    for line in body.splitlines()[1:]:
        if not line.strip():
            continue
        cmd, _, comment = line.strip().partition("  # ")
        out.append((cmd.strip(), comment.strip()))
    return out


def run_hint(cmd, cwd):
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=30)


def test_demo_hints_do_what_they_say(demo, tmp_path):
    proc, text = demo(["examples/demo.sh"])
    tried = hints(text)
    assert len(tried) >= 10, tried
    seen_cache = False
    for cmd, comment in tried:
        if cmd.startswith("tail -f "):
            path = cmd.split()[-1]
            assert os.path.isabs(path), cmd
            # the file is there and grows with the requests made so far
            r = run_hint(f"timeout 2 {cmd}", tmp_path)
            assert r.returncode == 124 and r.stdout.strip(), (cmd, r.stdout, r.stderr)
            continue
        r = run_hint(cmd, tmp_path)  # from another directory: every path in a hint is absolute
        assert r.returncode == 0 and r.stdout.strip(), (cmd, r.returncode, r.stdout, r.stderr)
        status = re.match(r"HTTP/1\.1 (\d+)", r.stdout)
        if "404" in comment:
            assert status and status.group(1) == "404", (cmd, r.stdout[:300])
        elif "301" in comment:
            assert status and status.group(1) == "301", (cmd, r.stdout[:300])
            assert re.search(r"^Location: https://", r.stdout, re.M | re.I), r.stdout[:300]
        elif "compression" in comment:
            assert re.search(r"^content-encoding: (br|zstd|gzip)", r.stdout, re.M | re.I), r.stdout[:400]
        elif "MISS, then HIT" in comment:
            assert re.search(r"^x-cache-status: MISS", r.stdout, re.M | re.I), r.stdout[:400]
            again = run_hint(cmd, tmp_path)
            assert re.search(r"^x-cache-status: HIT", again.stdout, re.M | re.I), again.stdout[:400]
            seen_cache = True
        elif "stripped" in comment:
            assert '"target": "/users?x=1"' in r.stdout, r.stdout[:300]
        elif "basic proxy" in comment:
            assert '"Host", "www.example.com"' in r.stdout, r.stdout[:300]
        elif "status JSON" in comment:
            assert '"generation"' in r.stdout
        elif "Prometheus" in comment:
            assert "# TYPE proxyd_" in r.stdout
        elif "cache zones" in comment:
            assert re.search(r"^news\s+1\s", r.stdout, re.M), r.stdout  # after the cache hint
        elif "which route" in comment:
            assert "rewrite: /api/users -> /users" in r.stdout, r.stdout
        else:
            pytest.fail(f"a hint this test does not check: {cmd}  # {comment}")
    assert seen_cache
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=20)
