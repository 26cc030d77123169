"""The Debian package and `make install` (issue 18 item 1).

`make deb` is built once per session (build/deb/proxyd_*.deb, from a copy of the tree).

- lintian reports no error and no warning on it;
- it holds the programs in /usr/sbin, the units with /usr/sbin paths, the sysusers.d entry,
  /etc/proxyd (conffiles), logrotate, bash completion, the man pages and the examples;
- `make install` lays out the same files;
- `dpkg -i` on this machine (as root) makes the proxyd account and an initialised store, the
  installed proxyd checks it, an installed proxyd started by hand on a store the installed
  proxyctl made serves a site through an origin with its workers as `proxyd`, and `dpkg -r`
  then `dpkg -P` remove every file.  The machine is put back as it was, whatever fails;
- the bash completion completes commands, options and the stored site names.
"""
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PROXYCTL, ROOT
from proxyd_fixtures import free_port, http, origin_factory, wait_port  # noqa: F401

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="installs a package: needs root")
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg") is None, reason="no dpkg on this machine")


def sh(*args, check=True, timeout=600, **kw):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kw)
    if check:
        assert p.returncode == 0, f"{' '.join(map(str, args))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="session")
def deb():
    if shutil.which("dpkg-buildpackage") is None:
        pytest.skip("dpkg-dev is not installed (packaging/install-deps.sh installs it)")
    # a make of its own, not a part of the `make integration` that runs the tests
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    sh("make", "-C", ROOT, "deb", timeout=1200, env=env)
    debs = [p for p in (ROOT / "build" / "deb").glob("proxyd_*.deb")]
    assert len(debs) == 1, debs
    return debs[0]


def deb_files(path):
    out = sh("dpkg-deb", "-c", path).stdout
    return {line.split()[5][1:].rstrip("/") for line in out.splitlines() if not line.startswith("d")}


def test_git_sees_no_build_artefacts(deb):
    p = sh("git", "-C", ROOT, "status", "--porcelain", "--untracked-files=all", check=False)
    if p.returncode != 0:
        pytest.skip("not a git work tree")
    stray = [line for line in p.stdout.splitlines()
             if re.search(r"\.(deb|changes|buildinfo)$|debian/|(^|\s)build/|^...man/.*\.[58]$", line)]
    assert not stray, stray


def test_lintian_clean(deb):
    if shutil.which("lintian") is None:
        pytest.fail("lintian is not installed (packaging/install-deps.sh installs it)")
    p = sh("lintian", "--fail-on", "error,warning", "--display-level", ">=warning", deb, check=False, timeout=600)
    tags = [line for line in p.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert p.returncode == 0 and not tags, p.stdout + p.stderr


def test_package_contents(deb, tmp_path):
    files = deb_files(deb)
    for f in ("/usr/sbin/proxyd", "/usr/sbin/proxyctl",
              "/lib/systemd/system/proxyd.service", "/lib/systemd/system/proxyd.socket",
              "/lib/systemd/system/proxyctl-renew.service", "/lib/systemd/system/proxyctl-renew.timer",
              "/usr/lib/sysusers.d/proxyd.conf", "/etc/proxyd/proxy.yaml", "/etc/logrotate.d/proxyd",
              "/usr/share/bash-completion/completions/proxyctl",
              "/usr/share/man/man8/proxyctl.8.gz", "/usr/share/man/man8/proxyd.8.gz",
              "/usr/share/man/man5/proxyd.yaml.5.gz", "/usr/share/man/man5/proxyd-site.yaml.5.gz",
              "/usr/share/doc/proxyd/examples/basic-proxy.yaml", "/usr/share/doc/proxyd/schema/site.schema.json",
              "/usr/share/doc/proxyd/README.md"):
        assert f in files, f
    sh("dpkg-deb", "-x", deb, tmp_path)
    sh("dpkg-deb", "-e", deb, tmp_path / "DEBIAN")
    for unit in (tmp_path / "lib/systemd/system").iterdir():
        text = unit.read_text()
        assert "/usr/local" not in text, unit
    service = (tmp_path / "lib/systemd/system/proxyd.service").read_text()
    assert "ExecStart=/usr/sbin/proxyd --db /var/lib/proxyd/store.db --foreground" in service
    assert "\nUser=" not in service  # the master stays root (privilege separation)
    assert "ExecStart=/usr/sbin/proxyctl renew-cert --due" in (tmp_path / "lib/systemd/system/proxyctl-renew.service").read_text()
    assert re.search(r"^u proxyd ", (tmp_path / "usr/lib/sysusers.d/proxyd.conf").read_text(), re.M)
    conffiles = (tmp_path / "DEBIAN" / "conffiles").read_text().split()
    assert {"/etc/proxyd/proxy.yaml", "/etc/logrotate.d/proxyd"} <= set(conffiles)
    rot = (tmp_path / "etc/logrotate.d/proxyd").read_text()
    assert "/var/log/proxyd/*.log" in rot and "USR1" in rot and "postrotate" in rot
    assert (tmp_path / "var/lib/proxyd").is_dir() and (tmp_path / "var/log/proxyd").is_dir()
    # the packaged proxy.yaml is valid input, and its log goes where logrotate looks
    rc = sh(PROXYCTL, "--db", tmp_path / "s.db", "init", "--global", tmp_path / "etc/proxyd/proxy.yaml",
            cwd=tmp_path, check=False)
    assert rc.returncode == 0, rc.stderr
    if shutil.which("logrotate"):
        conf = tmp_path / "rot.conf"
        conf.write_text(rot.replace("/var/log/proxyd/", f"{tmp_path}/log/"))
        p = sh("logrotate", "--debug", "--state", tmp_path / "rot.state", conf, check=False)
        assert p.returncode == 0 and "error" not in p.stderr.lower(), p.stderr


def test_make_install_matches_the_package(deb, tmp_path):
    dest = tmp_path / "stage"
    sh("make", "-C", ROOT, "install", f"DESTDIR={dest}", "PREFIX=/usr", "UNITDIR=/lib/systemd/system")
    installed = {"/" + str(p.relative_to(dest)) for p in dest.rglob("*") if not p.is_dir()}
    packaged = {re.sub(r"\.gz$", "", f) for f in deb_files(deb)} - {
        "/usr/share/doc/proxyd/changelog", "/usr/share/doc/proxyd/copyright"}
    assert installed == packaged, (sorted(installed - packaged), sorted(packaged - installed))
    assert os.stat(dest / "usr/sbin/proxyd").st_mode & 0o777 == 0o755
    assert "ExecStart=/usr/sbin/proxyd " in (dest / "lib/systemd/system/proxyd.service").read_text()
    # an existing proxy.yaml is the operator's: never overwritten
    (dest / "etc/proxyd/proxy.yaml").write_text("workers: 3\n")
    sh("make", "-C", ROOT, "install", f"DESTDIR={dest}", "PREFIX=/usr", "UNITDIR=/lib/systemd/system")
    assert (dest / "etc/proxyd/proxy.yaml").read_text() == "workers: 3\n"
    sh("make", "-C", ROOT, "uninstall", f"DESTDIR={dest}", "PREFIX=/usr", "UNITDIR=/lib/systemd/system")
    left = {"/" + str(p.relative_to(dest)) for p in dest.rglob("*") if not p.is_dir()}
    assert left == {"/etc/proxyd/proxy.yaml"}, left


def _account_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _installed(pkg):
    p = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
    return p.returncode == 0 and "installed" in p.stdout and "not-installed" not in p.stdout


def _stop(proc):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


GLOBAL = """\
listen: {{http: ["127.0.0.1:{port}"], https: []}}
workers: 1
user: proxyd
admin: {{socket: admin.sock}}
logs: {{access: log/access.log, error: log/error.log}}
"""

SITE = """\
site: pkg
default: true
upstreams:
  app: {{servers: [{{address: "{origin}"}}]}}
routes:
  - upstream: app
"""


@root_only
@needs_dpkg
def test_dpkg_install_serve_remove(deb, tmp_path, origin_factory):
    touched = ["/etc/proxyd", "/var/lib/proxyd", "/var/log/proxyd", "/var/cache/proxyd"]
    if _installed("proxyd") or any(os.path.exists(p) for p in touched):
        pytest.skip("proxyd is installed or its directories exist on this machine: not touching them")
    had_account = _account_exists("proxyd")
    had_group = subprocess.run(["getent", "group", "proxyd"], capture_output=True).returncode == 0
    proc = None
    try:
        sh("dpkg", "-i", deb)
        assert _installed("proxyd")
        for f in ("/usr/sbin/proxyd", "/usr/sbin/proxyctl", "/lib/systemd/system/proxyd.service"):
            assert os.access(f, os.F_OK), f
        account = pwd.getpwnam("proxyd")  # made by sysusers.d in postinst
        assert account.pw_uid != 0 and account.pw_shell.endswith("nologin")
        st = os.stat("/var/lib/proxyd/store.db")  # postinst initialised the store, root's 0600
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o600)

        out = sh("/usr/sbin/proxyctl", "--help").stdout
        if "--version" in out:
            v = sh("/usr/sbin/proxyctl", "--version").stdout
            deb_version = sh("dpkg-query", "-W", "-f=${Version}", "proxyd").stdout
            assert deb_version in v, (v, deb_version)
        else:
            assert out.startswith("usage: proxyctl"), out
        if "--version" in sh("/usr/sbin/proxyd", "--help").stdout:
            v = sh("/usr/sbin/proxyd", "--version").stdout
            assert sh("dpkg-query", "-W", "-f=${Version}", "proxyd").stdout in v, v
        check = sh("/usr/sbin/proxyd", "--check")  # the store postinst made, at the default path
        assert "configuration OK" in check.stdout, check.stdout + check.stderr
        man = sh("man", "-w", "proxyd.yaml", check=False)
        assert man.stdout.strip() == "/usr/share/man/man5/proxyd.yaml.5.gz", man.stdout + man.stderr

        # the installed programs, a store of the installed proxyctl, a site through an origin
        origin = origin_factory()
        port = free_port()
        work = tmp_path / "node"
        (work / "log").mkdir(parents=True)
        os.chmod(tmp_path, 0o755)
        (work / "proxy.yaml").write_text(GLOBAL.format(port=port))
        (work / "site.yaml").write_text(SITE.format(origin=origin.address))
        sh("/usr/sbin/proxyctl", "--db", work / "store.db", "init", "--global", work / "proxy.yaml", cwd=work)
        sh("/usr/sbin/proxyctl", "--db", work / "store.db", "add-site", work / "site.yaml", cwd=work)
        sh("/usr/sbin/proxyd", "--db", work / "store.db", "--check")
        err = open(work / "proxyd.stderr", "wb")
        proc = subprocess.Popen(["/usr/sbin/proxyd", "--db", str(work / "store.db"), "--foreground"],
                                stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=work)
        err.close()
        assert wait_port(port, 10.0, proc), (work / "proxyd.stderr").read_text()
        r = http(port, "GET", "/hello", host="pkg.test")
        assert r.status == 200 and r.json()["request_line"] == "GET /hello HTTP/1.1", r
        kids = [int(x) for t in os.listdir(f"/proc/{proc.pid}/task")
                for x in open(f"/proc/{proc.pid}/task/{t}/children").read().split()]
        uids = {int(open(f"/proc/{k}/status").read().split("Uid:")[1].split()[0]) for k in kids}
        assert uids == {account.pw_uid}, uids  # the workers run as the package's account
        _stop(proc)
        assert proc.returncode == 0, (work / "proxyd.stderr").read_text()
        assert wait_port(port, 0.3) is False

        sh("dpkg", "-r", "proxyd")
        for f in ("/usr/sbin/proxyd", "/usr/sbin/proxyctl", "/lib/systemd/system/proxyd.service",
                  "/lib/systemd/system/proxyd.socket", "/lib/systemd/system/proxyctl-renew.timer",
                  "/usr/share/man/man8/proxyd.8.gz", "/usr/share/bash-completion/completions/proxyctl"):
            assert not os.path.lexists(f), f
        assert os.path.exists("/etc/proxyd/proxy.yaml")  # a conffile stays until purge
        sh("dpkg", "-P", "proxyd")
        assert not _installed("proxyd")
        for p in touched + ["/etc/logrotate.d/proxyd", "/usr/share/doc/proxyd"]:
            assert not os.path.lexists(p), p
    finally:
        _stop(proc)
        if _installed("proxyd") or subprocess.run(["dpkg-query", "-W", "proxyd"], capture_output=True).returncode == 0:
            subprocess.run(["dpkg", "-P", "proxyd"], capture_output=True, timeout=300)
        for p in touched:
            shutil.rmtree(p, ignore_errors=True)
        if not had_account and _account_exists("proxyd"):
            subprocess.run(["userdel", "proxyd"], capture_output=True)
        if not had_group and subprocess.run(["getent", "group", "proxyd"], capture_output=True).returncode == 0:
            subprocess.run(["groupdel", "proxyd"], capture_output=True)


def complete(words, store, tmp_path):
    """COMPREPLY of packaging/proxyctl.bash-completion for a command line (the last word
    is the one being completed), with the proxyctl under test as `proxyctl`."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    if not (bindir / "proxyctl").exists():
        (bindir / "proxyctl").symlink_to(PROXYCTL)
    script = (
        "source /usr/share/bash-completion/bash_completion\n"
        f"source {ROOT}/packaging/proxyctl.bash-completion\n"
        'COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}\n'
        "_proxyctl\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n')
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", ASAN_OPTIONS="detect_leaks=0")
    env.pop("PROXYD_DB", None)
    p = subprocess.run(["bash", "-c", script, "complete", *words], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=60)
    assert p.returncode == 0, p.stderr
    return set(p.stdout.split())


def test_bash_completion(tmp_path):
    if not os.path.exists("/usr/share/bash-completion/bash_completion"):
        pytest.fail("bash-completion is not installed (packaging/install-deps.sh installs it)")
    db = tmp_path / "store.db"
    sh(PROXYCTL, "--db", db, "init", cwd=tmp_path)
    for name in ("alpha", "beta"):
        (tmp_path / f"{name}.yaml").write_text(
            f"site: {name}\nhosts: [{name}.test]\nroutes:\n  - return: {{status: 200}}\n")
        sh(PROXYCTL, "--db", db, "add-site", tmp_path / f"{name}.yaml", cwd=tmp_path)
    assert {"add-site", "apply"} <= complete(["proxyctl", "a"], db, tmp_path)
    assert "route-test" in complete(["proxyctl", "--db", str(db), "r"], db, tmp_path)
    assert complete(["proxyctl", "--db", str(db), "remove-site", ""], db, tmp_path) == {"alpha", "beta"}
    assert complete(["proxyctl", "--db", str(db), "show-site", "b"], db, tmp_path) == {"beta"}
    assert {"--dry-run", "--force", "--global"} <= complete(["proxyctl", "apply", "--"], db, tmp_path)
    assert complete(["proxyctl", "ha", "notify", ""], db, tmp_path) == {"MASTER", "BACKUP", "FAULT", "STOP"}
    assert complete(["proxyctl", "add-site", "x", "--tls", ""], db, tmp_path) == {"acme", "self-signed"}


ROTATE = """\
set -e
"$PROXYD" --db store.db --foreground 2>proxyd.stderr &
pid=$!
get() {{ curl -s -o /dev/null -H 'Host: rot.test' "http://127.0.0.1:{port}$1"; }}
i=0
until get /; do i=$((i + 1)); [ $i -lt 100 ] || exit 10; sleep 0.1; done
get /before
i=0
until grep -q /before log/access.log 2>/dev/null; do i=$((i + 1)); [ $i -lt 100 ] || exit 11; sleep 0.1; done
logrotate --force --state rot.state rot.conf
i=0  # the master reopens the files at SIGUSR1: a new access.log appears
until [ -e log/access.log ]; do i=$((i + 1)); [ $i -lt 100 ] || exit 12; sleep 0.1; done
get /after
i=0
until grep -q /after log/access.log 2>/dev/null; do i=$((i + 1)); [ $i -lt 100 ] || exit 13; sleep 0.1; done
kill -TERM $pid
wait $pid
"""


@root_only
def test_logrotate_config_reopens_the_logs(tmp_path, origin_factory):
    """packaging/proxyd.logrotate against a running proxyd: the files are renamed, the postrotate
    script's SIGUSR1 (here through its no-systemd branch, `pgrep -o -x proxyd`) makes the master
    reopen them, and the next request is logged in the new file.  In a PID namespace of its own,
    so the oldest proxyd pgrep finds is this test's."""
    from proxyd_fixtures import PROXYD
    if "SIGUSR1" not in (ROOT / "proxyd" / "core" / "master.c").read_text():
        pytest.skip("this proxyd does not reopen its logs on SIGUSR1 yet (proxyd/core/master.c)")
    for tool in ("logrotate", "unshare", "curl", "pgrep"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (packaging/install-deps.sh installs it)")
    if os.path.isdir("/run/systemd/system"):
        pytest.skip("systemd runs here: the postrotate script would signal proxyd.service")
    origin = origin_factory()
    port = free_port()
    os.chmod(tmp_path, 0o755)
    (tmp_path / "log").mkdir()
    (tmp_path / "proxy.yaml").write_text(
        f'listen: {{http: ["127.0.0.1:{port}"], https: []}}\nworkers: 1\nuser: nobody\n'
        "admin: {socket: admin.sock}\nlogs: {access: log/access.log, error: log/error.log}\n")
    (tmp_path / "site.yaml").write_text(SITE.format(origin=origin.address))
    sh(PROXYCTL, "--db", tmp_path / "store.db", "init", "--global", tmp_path / "proxy.yaml", cwd=tmp_path)
    sh(PROXYCTL, "--db", tmp_path / "store.db", "add-site", tmp_path / "site.yaml", cwd=tmp_path)
    conf = (ROOT / "packaging" / "proxyd.logrotate").read_text()
    assert "/var/log/proxyd/*.log" in conf
    (tmp_path / "rot.conf").write_text(conf.replace("/var/log/proxyd/", f"{tmp_path}/log/"))
    env = dict(os.environ, PROXYD=PROXYD, ASAN_OPTIONS="detect_leaks=0")
    p = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", ROTATE.format(port=port)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"rc {p.returncode}\n{p.stdout}{p.stderr}\n" + (tmp_path / "proxyd.stderr").read_text()
    rotated = (tmp_path / "log" / "access.log.1").read_text()
    current = (tmp_path / "log" / "access.log").read_text()
    assert "/before" in rotated and "/after" not in rotated, rotated
    assert "/after" in current and "/before" not in current, current
    assert (tmp_path / "log" / "error.log.1").exists()
