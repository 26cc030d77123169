"""packaging/install-deps.sh on a fresh machine (issue 18 item 6).

apt-get and dpkg-query are replaced by scripts on PATH: dpkg-query says which packages are
missing, apt-get records its arguments and answers as apt does while another process holds
the dpkg lock (exit 100, "Could not get lock ...") for its first N calls.

- a held lock is waited for, with a message naming the holder, then the install goes on;
- a lock held beyond PROXYD_DEPS_LOCK_WAIT fails with a message that says so;
- another apt failure is not retried;
- `install-deps.sh demo` (make demo) asks for the build packages and curl, none of the test,
  fuzz or packaging ones.
"""
import os
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

SCRIPT = ROOT / "packaging" / "install-deps.sh"


def fake_tools(tmp_path, installed, locked_calls, other_error=False):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (tmp_path / "installed").write_text("\n".join(installed) + "\n")
    (tmp_path / "calls").write_text("")
    (bindir / "dpkg-query").write_text(f"""#!/bin/sh
pkg=$(eval echo \\${{$#}})
if grep -qx "$pkg" {tmp_path}/installed; then printf 'install ok installed'; exit 0; fi
exit 1
""")
    (bindir / "apt-get").write_text(f"""#!/bin/sh
echo "$*" >> {tmp_path}/calls
n=$(wc -l < {tmp_path}/calls)
if [ "{1 if other_error else 0}" = 1 ]; then
    echo "E: Unable to locate package nosuchthing" >&2; exit 100
fi
if [ "$n" -le {locked_calls} ]; then
    echo "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (unattended-upgr)" >&2
    echo "E: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), is another process using it?" >&2
    exit 100
fi
exit 0
""")
    for f in bindir.iterdir():
        f.chmod(0o755)
    return bindir


def run_deps(tmp_path, bindir, *args, env=None, timeout=60):
    e = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", PROXYD_DEPS_LOCK_POLL="1")
    e.pop("PROXYD_DEPS_EXTRA", None)
    e.update(env or {})
    return subprocess.run(["sh", str(SCRIPT), *args], capture_output=True, text=True, env=e, timeout=timeout)


def calls(tmp_path):
    return [line for line in (tmp_path / "calls").read_text().splitlines() if line]


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="install-deps.sh runs apt-get only as root")


@root_only
def test_waits_for_the_dpkg_lock(tmp_path):
    bindir = fake_tools(tmp_path, installed=[], locked_calls=2)
    p = run_deps(tmp_path, bindir, "demo")
    assert p.returncode == 0, p.stderr
    assert "waiting for the package manager lock (held by process 4242 (unattended-upgr)), up to 300s" in p.stderr
    assert p.stderr.count("waiting for") == 1, p.stderr  # said once, not every poll
    c = calls(tmp_path)
    assert c[:3] == ["update -qq"] * 3, c  # two refused, the third went through
    assert c[3].startswith("install -y -qq --no-install-recommends ") and "curl" in c[3], c


@root_only
def test_gives_up_after_the_limit(tmp_path):
    bindir = fake_tools(tmp_path, installed=[], locked_calls=1000)
    p = run_deps(tmp_path, bindir, "demo", env={"PROXYD_DEPS_LOCK_WAIT": "2"})
    assert p.returncode != 0
    assert "stayed locked for 2s" in p.stderr, p.stderr
    assert 2 <= len(calls(tmp_path)) <= 4  # polled at 0, 1 and 2 s, then gave up


@root_only
def test_other_failures_are_not_retried(tmp_path):
    bindir = fake_tools(tmp_path, installed=[], locked_calls=0, other_error=True)
    p = run_deps(tmp_path, bindir, "demo")
    assert p.returncode != 0
    assert "Unable to locate package" in p.stderr and "waiting" not in p.stderr
    assert len(calls(tmp_path)) == 1


def requested(tmp_path, p):
    """The packages install-deps.sh asked for: apt-get's arguments as root, its hint otherwise."""
    if os.geteuid() == 0:
        install = [c for c in calls(tmp_path) if c.startswith("install ")]
        assert install, p.stderr
        return set(install[0].split()[4:])
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("run: sudo apt-get install -y")]
    assert line, p.stderr
    return set(line[0].split()[5:])


def test_demo_installs_only_what_the_demo_needs(tmp_path):
    bindir = fake_tools(tmp_path, installed=[], locked_calls=0)
    p = run_deps(tmp_path, bindir, "demo")
    demo = requested(tmp_path, p)
    assert {"build-essential", "pkg-config", "libyaml-dev", "libnghttp2-dev", "libjansson-dev", "curl"} <= demo
    test_only = {"clang", "cppcheck", "libcmocka-dev", "pebble", "python3-pytest", "chromium", "testssl.sh",
                 "keepalived", "strace", "lintian", "debhelper", "scdoc"}
    assert not demo & test_only, demo & test_only

    (tmp_path / "calls").write_text("")
    p = run_deps(tmp_path, bindir)
    everything = requested(tmp_path, p)
    assert demo < everything and test_only <= everything


def test_nothing_missing_runs_no_apt(tmp_path):
    text = SCRIPT.read_text()
    # every package named in the script, as dpkg-query sees them installed
    names = set()
    for var in ("BUILD", "DEMO", "TEST", "PACKAGING"):
        body = text.split(f'{var}="', 1)[1].split('"', 1)[0]
        names.update(body.split())
    bindir = fake_tools(tmp_path, installed=sorted(names), locked_calls=0)
    p = run_deps(tmp_path, bindir)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert calls(tmp_path) == []


def test_unknown_group_is_a_usage_error(tmp_path):
    bindir = fake_tools(tmp_path, installed=[], locked_calls=0)
    p = run_deps(tmp_path, bindir, "everything")
    assert p.returncode == 2 and "usage: install-deps.sh" in p.stderr
