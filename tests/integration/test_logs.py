"""Logs that are where proxy.yaml says (issue 18, item 5): directories made or the
failing path named, one access-log file per format, SIGUSR1 reopens every log
file in the master and the workers (logrotate), and journald keeps the error
lines when logs.error names a file."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from proxyd_fixtures import (PROXYD, http, origin_factory, proxy_site, proxyd_factory,  # noqa: F401
                             run_proxyctl, wait_for)


def open_files(pid):
    """Paths of the regular files process pid holds open."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


def test_log_directories_are_made(proxyd_factory, origin_factory, tmp_path):
    o = origin_factory()
    logs = tmp_path / "var" / "log" / "proxyd"
    p = proxyd_factory(global_settings={"logs": {"access": str(logs / "access.log"),
                                                 "error": str(logs / "deep" / "error.log")}},
                       sites=[proxy_site("a", o.address, default=True)])
    assert http(p.port, target="/made", host="a.test").status == 200
    assert wait_for(lambda: p.access_log_lines(str(logs / "access.log")), 3)
    assert json.loads(p.access_log_lines(str(logs / "access.log"))[-1])["uri"] == "/made"
    assert (logs / "deep" / "error.log").exists()


def test_unopenable_log_path_is_named(proxyd_factory, tmp_path):
    blocker = tmp_path / "plainfile"
    blocker.write_text("not a directory\n")
    p = proxyd_factory(global_settings={"logs": {"error": str(blocker / "sub" / "error.log")}}, start=False)
    r = subprocess.run([PROXYD, "--db", str(p.db), "--foreground"], capture_output=True, text=True, timeout=30,
                       cwd=str(p.dir))
    assert r.returncode == 1
    assert f"proxyd: error log (proxy.yaml logs.error): cannot create directory {blocker}/sub: Not a directory" in r.stderr, r.stderr

    p2 = proxyd_factory(global_settings={"logs": {"access": str(blocker / "access.log")}}, start=False, name="p2")
    r = subprocess.run([PROXYD, "--db", str(p2.db), "--foreground"], capture_output=True, text=True, timeout=30,
                       cwd=str(p2.dir))
    assert r.returncode == 1
    assert (f"proxyd: access log (proxy.yaml logs.access): cannot open {blocker}/access.log: Not a directory"
            in r.stderr), r.stderr


def test_one_file_per_access_log_format(proxyd_factory, origin_factory):
    o = origin_factory()
    p = proxyd_factory(sites=[proxy_site("j", o.address, hosts=["j.test"]),
                              proxy_site("c", o.address, hosts=["c.test"], site_extra="access_log: {format: combined}")])
    for i in range(3):
        assert http(p.port, target=f"/j{i}", host="j.test").status == 200
        assert http(p.port, target=f"/c{i}", host="c.test").status == 200
    assert http(p.port, target="/nosite", host="none.test").status == 404
    assert wait_for(lambda: len(p.access_log_lines()) >= 4 and len(p.combined_log_lines()) >= 3, 3)
    js = p.access_log_lines()
    assert all(l.startswith("{") for l in js), js
    assert sorted(json.loads(l)["uri"] for l in js) == ["/j0", "/j1", "/j2", "/nosite"]
    cl = p.combined_log_lines()
    assert len(cl) == 3 and all(re.match(r'127\.0\.0\.1 - - \[.*\] "GET /c\d HTTP/1\.1" 200 ', l) for l in cl), cl


def test_combined_file_opened_when_a_site_needs_it(proxyd_factory, origin_factory):
    """No combined file while no site uses the format; the reload that brings the
    first one opens it (in the master, handed to the workers)."""
    o = origin_factory()
    p = proxyd_factory(sites=[proxy_site("j", o.address, hosts=["j.test"])])
    assert http(p.port, target="/j", host="j.test").status == 200
    assert not os.path.exists(p.combined_log)
    gen = p.status()["generation"]
    p.add_site(proxy_site("c", o.address, hosts=["c.test"], site_extra="access_log: {format: combined}"))
    assert wait_for(lambda: all(w["generation"] > gen for w in p.status()["workers"]), 5)
    assert http(p.port, target="/c-after-reload", host="c.test").status == 200
    lines = wait_for(lambda: p.combined_log_lines(), 3)
    assert lines and '"GET /c-after-reload HTTP/1.1" 200' in lines[-1], lines


def test_sigusr1_reopens_every_log(proxyd_factory, origin_factory):
    """logrotate's way: move the files, SIGUSR1 to the master; the next lines land in
    new files at the configured paths and no process holds the moved ones."""
    o = origin_factory()
    p = proxyd_factory(sites=[proxy_site("j", o.address, hosts=["j.test"]),
                              proxy_site("c", o.address, hosts=["c.test"], site_extra="access_log: {format: combined}")],
                       workers=2, start=False)
    p.start(extra_args=("--debug",))  # the workers log each connection: their lines after the reopen
    assert http(p.port, target="/before", host="j.test").status == 200
    assert http(p.port, target="/before-c", host="c.test").status == 200
    assert wait_for(lambda: p.access_log_lines() and p.combined_log_lines(), 3)
    moved = {path: path + ".1" for path in (p.access_log, p.combined_log, p.error_log)}
    for a, b in moved.items():
        os.rename(a, b)
    pids = [p.pid] + p.worker_pids()
    assert len(pids) == 3
    for pid in pids:
        assert set(moved.values()) & open_files(pid), f"pid {pid} does not hold the moved logs"
    os.kill(p.pid, signal.SIGUSR1)
    assert wait_for(lambda: "log files reopened" in p.error_log_text(), 5), p.diagnostics()
    # every process lets go of the moved files (workers take the new ones from their channel)
    assert wait_for(lambda: not any(set(moved.values()) & open_files(pid) for pid in pids), 5), \
        {pid: open_files(pid) for pid in pids}
    for pid in p.worker_pids():
        assert {p.access_log, p.combined_log, p.error_log} <= open_files(pid)
    # requests on both workers (several connections) land in the new files only
    for i in range(6):
        assert http(p.port, target=f"/after{i}", host="j.test").status == 200
        assert http(p.port, target=f"/after-c{i}", host="c.test").status == 200
    assert wait_for(lambda: len(p.access_log_lines()) >= 6 and len(p.combined_log_lines()) >= 6, 3)
    assert sorted(json.loads(l)["uri"] for l in p.access_log_lines()) == [f"/after{i}" for i in range(6)]
    assert all("/after-c" in l for l in p.combined_log_lines())
    old = Path(moved[p.access_log]).read_text()
    assert "/before" in old and "/after" not in old
    assert "/after" not in Path(moved[p.combined_log]).read_text()
    # the master's and the workers' error lines go to the new file, none to the old one
    p.add_site(proxy_site("n", o.address, hosts=["n.test"]))
    assert wait_for(lambda: re.search(r"\[info\] master: reload: generation", p.error_log_text()), 5), p.error_log_text()
    assert re.search(r"\[debug\] worker \d: connection from port \d+ closed", p.error_log_text()), p.error_log_text()
    old_err = Path(moved[p.error_log]).read_text()
    assert "log files reopened" not in old_err and "reload: generation" not in old_err
    assert p.proc.poll() is None and len(p.worker_pids()) == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: workers run as nobody")
def test_sigusr1_reopen_for_workers_that_cannot_open_the_files(proxyd_factory, origin_factory):
    """Workers run as nobody and cannot reach the log directory (root's, 0750): the
    master opens the files again and hands them over; the workers write to them."""
    import pwd
    nobody = pwd.getpwnam("nobody")
    o = origin_factory()
    p = proxyd_factory(global_settings={"user": "nobody", "logs": {"access": "logs/access.log", "error": "logs/error.log"}},
                       sites=[proxy_site("j", o.address, default=True)], workers=2, start=False)
    p.access_log, p.error_log = str(p.dir / "logs" / "access.log"), str(p.dir / "logs" / "error.log")
    p.start()
    logs = p.dir / "logs"
    st = os.stat(logs)
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o750)
    for w in p.worker_pids():
        assert wait_for(lambda: int(Path(f"/proc/{w}/status").read_text().split("Uid:")[1].split()[0]) == nobody.pw_uid, 3)
    r = subprocess.run(["runuser", "-u", "nobody", "--", "sh", "-c", f"echo x >> {p.access_log}"], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode != 0 and "Permission denied" in r.stderr, r
    assert http(p.port, target="/before", host="j.test").status == 200
    assert wait_for(lambda: p.access_log_lines(), 3)
    os.rename(p.access_log, p.access_log + ".1")
    os.kill(p.pid, signal.SIGUSR1)
    assert wait_for(lambda: all(p.access_log in open_files(w) and p.access_log + ".1" not in open_files(w)
                                for w in p.worker_pids()), 5), p.diagnostics()
    for i in range(4):
        assert http(p.port, target=f"/after{i}", host="j.test").status == 200
    assert wait_for(lambda: len(p.access_log_lines()) >= 4, 3), p.diagnostics()
    # two workers write their own lines: the order between them is not the order of the requests
    assert sorted(json.loads(l)["uri"] for l in p.access_log_lines()) == [f"/after{i}" for i in range(4)]
    assert "cannot hand over" not in p.error_log_text()


def test_no_debug_lines_without_debug(proxyd_factory, origin_factory):
    """log.h's levels, not syslog.h's macros of the same names: without --debug no
    debug line is written (each connection's close reason was, in every file)."""
    o = origin_factory()
    p = proxyd_factory(sites=[proxy_site("j", o.address, default=True)])
    for i in range(3):
        assert http(p.port, target=f"/{i}", host="j.test").status == 200
    assert wait_for(lambda: len(p.access_log_lines()) >= 3, 3)
    text = p.error_log_text()
    assert "[info] master: serving generation" in text and "[debug]" not in text, text


def test_sigusr1_to_every_process_is_harmless(proxyd_factory, origin_factory):
    """`systemctl kill -s USR1` signals the whole unit: workers must not die of it."""
    o = origin_factory()
    p = proxyd_factory(sites=[proxy_site("j", o.address, default=True)], workers=2)
    workers = p.worker_pids()
    for pid in workers + [p.pid]:
        os.kill(pid, signal.SIGUSR1)
    assert wait_for(lambda: "log files reopened" in p.error_log_text(), 5)
    time.sleep(0.3)
    assert p.worker_pids() == workers
    assert http(p.port, target="/alive", host="j.test").status == 200


# ---- journald -----------------------------------------------------------------------------

# Run inside a private mount namespace (unshare -m): a tmpfs on /run holds a
# datagram socket at /run/systemd/journal/socket, the path libsystemd's
# sd_journal_send() writes to, so the entries proxyd really sends are read
# here; nothing of the host's /run is touched.
JOURNAL_HELPER = textwrap.dedent(r"""
    import json, os, socket, subprocess, sys, time
    proxyd, db, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
    os.makedirs("/run/systemd/journal")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("/run/systemd/journal/socket")
    s.settimeout(0.2)
    env = dict(os.environ, JOURNAL_STREAM="8:12345")
    env.pop("PROXYD_DB", None)
    p = subprocess.Popen([proxyd, "--db", db, "--foreground"], env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=open(db + ".stderr", "wb"))
    entries, deadline = [], time.monotonic() + 10
    while time.monotonic() < deadline and not any("serving generation" in e for e in entries):
        try:
            entries.append(s.recv(65536).decode(errors="replace"))
        except socket.timeout:
            pass
    p.send_signal(15)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=5)
    end = time.monotonic() + 1
    while time.monotonic() < end:
        try:
            entries.append(s.recv(65536).decode(errors="replace"))
        except socket.timeout:
            break
    print(json.dumps(entries))
""")


def test_error_log_file_and_journald(proxyd_factory, tmp_path):
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs a private mount namespace (unshare -m, root)")
    p = proxyd_factory(start=False)
    helper = tmp_path / "journal_helper.py"
    helper.write_text(JOURNAL_HELPER)
    r = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, str(helper), PROXYD, str(p.db),
                        str(p.port)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    entries = json.loads(r.stdout)
    serving = [e for e in entries if "serving generation" in e]
    assert serving, entries
    fields = dict(l.split("=", 1) for l in serving[0].splitlines() if "=" in l)
    assert fields["SYSLOG_IDENTIFIER"] == "proxyd" and fields["PRIORITY"] == "6" and fields["PROXYD_PROCESS"] == "master"
    assert fields["MESSAGE"].startswith("serving generation 1")
    assert any("MESSAGE=stopped" in e for e in entries), entries
    # and the same lines in logs.error
    text = p.error_log_text()
    assert re.search(r"\[info\] master: serving generation 1", text) and "master: stopped" in text, text
