"""Privilege separation (issue 17 item 1): the store is root's, mode 0600, and only proxyd's
master reads it; workers get each generation (table, certificates and keys) from the master over
their channel, and ACME answers from a map the master fills.

- proxyctl init / add-site as root leave the store, -wal and -shm root:root 0600, and take back a
  store an older proxyctl had handed to proxyd's user; as another user the store is that user's.
- started as root with `user: nobody`, the workers run as nobody, hold no descriptor on the store,
  and nobody cannot open it (EACCES), yet they serve TLS with the store's certificate and reload.
- ACME answers: `POST /challenges` on the admin socket publishes the store's challenges at once
  (what proxyctl renew-cert does); one written behind proxyd's back is served within a second or
  so; an expired one is not.
"""
import json
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from proxyd_fixtures import PROXYCTL, http, origin_factory, proxyd_factory, wait_for  # noqa: F401
from tls_fixtures import https_request, tls_probe, tls_proxyd

SITE = """\
site: s
default: true
hosts: [s.test]
tls: {certificate: %s}
routes:
  - return: {status: 200, body: "generation-%s"}
"""

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def owner_mode(path):
    st = os.stat(path)
    return st.st_uid, st.st_gid, st.st_mode & 0o7777


def store_files(db):
    return [Path(f"{db}{ext}") for ext in ("", "-wal", "-shm") if Path(f"{db}{ext}").exists()]


def uid_of(pid):
    return int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0])


@root_only
def test_store_is_roots_0600_and_taken_back(proxyd_factory):
    nobody = pwd.getpwnam("nobody")
    p = proxyd_factory(global_settings={"user": "nobody"}, sites=[SITE % ("none", "A")], start=False)
    files = store_files(p.db)
    assert Path(p.db) in files and len(files) == 3, files
    for f in files:
        assert owner_mode(f) == (0, 0, 0o600), f
    # what an older proxyctl left: the store handed to the workers' user
    for f in files:
        os.chown(f, nobody.pw_uid, nobody.pw_gid)
        os.chmod(f, 0o640)
    assert p.proxyctl("init")[0] == 0  # init of an existing store (a migration) takes it back
    for f in store_files(p.db):
        assert owner_mode(f) == (0, 0, 0o600), f
    for f in files:
        os.chown(f, nobody.pw_uid, nobody.pw_gid)
    Path(p.dir / "b.yaml").write_text(SITE % ("none", "B"))
    assert p.proxyctl("add-site", p.dir / "b.yaml")[0] == 0  # so does every change (apply, add-site)
    for f in store_files(p.db):
        assert owner_mode(f) == (0, 0, 0o600), f


@root_only
def test_store_of_another_user_is_theirs(tmp_path):
    """proxyctl run as an ordinary user makes a store of its own, mode 0600, as before."""
    nobody = pwd.getpwnam("nobody")
    d = tmp_path / "u"
    d.mkdir()
    os.chown(d, nobody.pw_uid, nobody.pw_gid)
    for x in (tmp_path, tmp_path.parent, tmp_path.parent.parent):
        os.chmod(x, os.stat(x).st_mode | 0o711)
    r = subprocess.run(["runuser", "-u", "nobody", "--", PROXYCTL, "--db", str(d / "store.db"), "init"],
                       cwd=str(d), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r
    for f in store_files(d / "store.db"):
        assert owner_mode(f) == (nobody.pw_uid, nobody.pw_gid, 0o600), f


@root_only
def test_workers_cannot_open_the_store(proxyd_factory, tmp_path):
    nobody = pwd.getpwnam("nobody")
    # nobody may search (not list) the directories down to the store: only its mode keeps it out
    for d in (tmp_path, tmp_path.parent, tmp_path.parent.parent):
        os.chmod(d, os.stat(d).st_mode | 0o711)
    p = tls_proxyd(proxyd_factory, [SITE % ("self-signed", "A")], settings={"user": "nobody"}, workers=2,
                   start=False)
    os.chmod(p.dir, 0o711)
    p.start()
    workers = p.worker_pids()
    assert len(workers) == 2
    assert wait_for(lambda: all(uid_of(w) == nobody.pw_uid for w in workers), timeout=3)
    assert uid_of(p.pid) == 0
    store = {str(f) for f in store_files(p.db)}
    for w in workers:
        fds = set()
        for fd in os.listdir(f"/proc/{w}/fd"):
            try:
                fds.add(os.readlink(f"/proc/{w}/fd/{fd}"))
            except FileNotFoundError:
                pass  # closed meanwhile (a connection, a resolver socket): not the store
        assert not fds & store, f"worker {w} holds {fds & store}"
    r = subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(p.db)], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode != 0 and "Permission denied" in r.stderr, r
    # the workers serve the store's certificate, and reload to a new one
    h = tls_probe(p.https_port, "s.test")
    assert h.cert.dns == ["s.test"], h
    assert https_request(p.https_port, host="s.test").body == b"generation-A"
    Path(p.dir / "b.yaml").write_text(SITE.replace("s.test", "t.test") % ("self-signed", "B"))
    assert p.proxyctl("add-site", p.dir / "b.yaml")[0] == 0
    assert wait_for(lambda: https_request(p.https_port, host="t.test").body == b"generation-B", timeout=5), \
        p.diagnostics()
    assert tls_probe(p.https_port, "t.test").cert.dns == ["t.test"]
    assert all(uid_of(w) == nobody.pw_uid for w in p.worker_pids())


def test_worker_restarted_after_a_reload_serves_the_current_generation(proxyd_factory):
    p = proxyd_factory(sites=[SITE % ("none", "A")], workers=2)
    Path(p.dir / "b.yaml").write_text(SITE % ("none", "B"))
    assert p.proxyctl("add-site", p.dir / "b.yaml")[0] == 0
    assert wait_for(lambda: all(b"generation-B" in http(p.port).body for _ in range(4)))
    victim = p.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: len(p.worker_pids()) == 2 and victim not in p.worker_pids(), timeout=5)
    assert all(http(p.port).body == b"generation-B" for _ in range(10))


def write(db, query, *params):
    con = sqlite3.connect(str(db), timeout=30)
    try:
        with con:
            con.execute(query, params)
    finally:
        con.close()


def add_challenge(db, token, ka, ttl=600):
    write(db, "INSERT OR REPLACE INTO acme_challenges (token, key_authorization, expires) VALUES (?,?,?)", token, ka,
          int(time.time()) + ttl)


def acme_get(p, token):
    return http(p.port, target=f"/.well-known/acme-challenge/{token}", host="s.test")


def test_acme_answers_come_from_the_master(proxyd_factory):
    p = proxyd_factory(sites=[SITE % ("none", "A")])
    add_challenge(p.db, "tok_A-1", "tok_A-1.thumb")
    add_challenge(p.db, "tok_old", "tok_old.thumb", ttl=-5)
    st, _, body = p.admin("POST", "/challenges")
    assert st == 200 and json.loads(body) == {"challenges": 1}, body
    r = acme_get(p, "tok_A-1")  # at once, in every worker
    assert (r.status, r.body) == (200, b"tok_A-1.thumb")
    assert all(acme_get(p, "tok_A-1").body == b"tok_A-1.thumb" for _ in range(4))
    assert acme_get(p, "tok_old").body == b"generation-A"  # expired: the site's routes answer
    # written behind proxyd's back (an older proxyctl): the master notices the store changed
    add_challenge(p.db, "tok_B", "tok_B.thumb")
    assert wait_for(lambda: acme_get(p, "tok_B").body == b"tok_B.thumb", timeout=3)
    write(p.db, "DELETE FROM acme_challenges WHERE token = 'tok_A-1'")
    assert wait_for(lambda: acme_get(p, "tok_A-1").body == b"generation-A", timeout=3)
    st, _, _ = p.admin("GET", "/challenges")
    assert st == 405


@root_only
def test_cache_zone_made_as_the_workers_account(proxyd_factory, origin_factory):
    """The master makes a cache zone's directory as the workers' account when the parent is that
    account's (the systemd unit's /var/cache/proxyd: no CAP_CHOWN there), and the workers store
    and serve entries in it; a parent of root's gets a zone given away by chown."""
    nobody = pwd.getpwnam("nobody")
    top = Path(tempfile.mkdtemp(prefix="proxyd-cache-owner-", dir="/tmp"))
    try:
        top.chmod(0o711)                      # nobody may pass, not list
        theirs = top / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
        ours = top / "ours"
        ours.mkdir(mode=0o711)
        o = origin_factory()
        zones = {"a": {"path": str(theirs / "a")}, "b": {"path": str(ours / "b")}}
        site = (f"site: c\ndefault: true\nhosts: [c.test]\nupstreams: {{app: {{servers: [{{address: \"{o.address}\"}}]}}}}\n"
                "routes:\n"
                "  - {match: {path_prefix: /b/}, upstream: app, cache: {zone: b, valid: {'200': 1m}}}\n"
                "  - {match: {path_prefix: /}, upstream: app, cache: {zone: a, valid: {'200': 1m}}}\n")
        p = proxyd_factory(global_settings={"user": "nobody", "cache_zones": zones}, sites=[site])
        for zone in (theirs / "a", theirs / "a" / "tmp", ours / "b", ours / "b" / "tmp"):
            assert owner_mode(zone)[:2] == (nobody.pw_uid, nobody.pw_gid), zone
        for path in ("/x", "/b/x"):
            got = [http(p.port, "GET", path, host="c.test").header("X-Cache-Status") for _ in range(2)]
            assert got == ["MISS", "HIT"], (path, got)
        entries = [f for f in (theirs / "a").rglob("*") if f.is_file()] + \
                  [f for f in (ours / "b").rglob("*") if f.is_file()]
        assert len(entries) == 2 and all(f.stat().st_uid == nobody.pw_uid for f in entries), entries
    finally:
        shutil.rmtree(top, ignore_errors=True)
