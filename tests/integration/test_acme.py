"""renew-cert and certs against a real ACME CA (pebble) on loopback (SPEC §3 acme, §4, §5).

The HTTP-01 challenges are answered by a real proxyd from the store (proxyd/conn.c
acme_challenge()); pebble's httpPort is that proxyd's HTTP listener.  See acme_fixtures.py for how
pebble runs.  Every test is bounded (subprocess timeouts, bounded waits) and stops what it started
by PID.

Run with: /usr/bin/python3 -m pytest -q tests/integration/test_acme.py
"""
import json
import re
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from acme_fixtures import PROXYCTL, needs_pebble, site_text  # noqa: F401  (fixtures below)
from acme_fixtures import acme_store, pebble, silent_listener  # noqa: F401
from conftest import sql

ROOT = Path(__file__).resolve().parents[2]
PLAIN_PROXYCTL = str(ROOT / "bin" / "proxyctl")
RENEW_TARGET_S = 2.0  # lego needs ~6 s here (a fixed 5 s poll wait); we must not


def events(db):
    return [r[0] for r in sql(db, "SELECT what FROM events ORDER BY id")]


def active_gen(db):
    return sql(db, "SELECT id FROM generations WHERE active = 1")[0][0]


def openssl_verify(tmp, root, chain, leaf):
    d = Path(tmp)
    (d / "root.pem").write_text(root)
    (d / "chain.pem").write_text(chain)
    (d / "leaf.pem").write_text(leaf)
    p = subprocess.run(["openssl", "verify", "-CAfile", "root.pem", "-untrusted", "chain.pem", "leaf.pem"],
                       cwd=str(d), capture_output=True, text=True, timeout=30)
    return p.returncode, p.stdout + p.stderr


def pem_pubkey(pem, kind):
    args = ["openssl", "x509", "-noout", "-pubkey"] if kind == "cert" else ["openssl", "pkey", "-pubout"]
    return subprocess.run(args, input=pem, capture_output=True, text=True, timeout=30, check=True).stdout


def challenge_hits(store):
    """Access-log lines of proxyd answering pebble's HTTP-01 probes."""
    hits = []
    for line in store.access_log_lines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("uri", "").startswith("/.well-known/acme-challenge/"):
            hits.append(e)
    return hits


# ---------------------------------------------------------------- (a) issuance end to end

@needs_pebble
def test_issue_end_to_end_through_proxyd(acme_store, pebble, tmp_path):
    s = acme_store("a")
    s.add("a", ["a.test.example"])
    temp = s.cert("a")
    assert temp["source"] == "temporary"
    gen_before = active_gen(s.db)
    s.start_proxyd()

    rc, out, err, secs = s.run("renew-cert", "a")
    print(f"\nrenew-cert a against pebble ({Path(PROXYCTL).parent.name}/proxyctl): {secs:.3f} s")
    assert rc == 0, f"{out}\n{err}\n--- pebble log:\n{pebble.log_text()[-3000:]}"
    assert err == ""
    assert re.match(r"site 'a': certificate issued by Pebble Intermediate CA \w+, valid until \S+ \(\d+ days\) "
                    r"in [\d.]+ s; generation \d+ active\n$", out), out
    assert secs < RENEW_TARGET_S

    row = s.cert("a")
    assert row["source"] == "acme"
    assert row["hosts"] == "a.test.example"
    assert row["issuer"].startswith("Pebble Intermediate CA ")
    assert row["not_after"] > time.time() + 30 * 86400
    assert row["not_before"] <= time.time() + 60
    assert row["cert_pem"].count("BEGIN CERTIFICATE") == 1
    assert row["chain_pem"].count("BEGIN CERTIFICATE") >= 1
    assert row["cert_pem"] != temp["cert_pem"] and row["key_pem"] != temp["key_pem"]
    assert pem_pubkey(row["cert_pem"], "cert") == pem_pubkey(row["key_pem"], "key")

    # TLS serving by proxyd is not built yet, so instead of `curl --cacert root.pem https://...`
    # against proxyd, the stored chain is verified against pebble's root of this run.
    rc_v, text = openssl_verify(tmp_path, pebble.root_pem(), row["chain_pem"], row["cert_pem"])
    assert rc_v == 0 and "leaf.pem: OK" in text, text
    san = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName"], input=row["cert_pem"],
                         capture_output=True, text=True, timeout=30).stdout
    assert "DNS:a.test.example" in san

    # pebble's probes were answered by proxyd from the store, and the rows are gone again.
    hits = challenge_hits(s)
    assert hits and all(h["status"] == 200 for h in hits), hits
    assert any("Pebble" in h.get("user_agent", "") for h in hits), hits
    assert sql(s.db, "SELECT count(*) FROM acme_challenges") == [(0,)]
    # The account key and its URL are kept per directory.
    acct = sql(s.db, "SELECT directory, email, kid FROM acme_accounts")
    assert len(acct) == 1 and acct[0][0] == pebble.directory and acct[0][1] == "ops@example.com"
    assert acct[0][2].startswith(f"https://127.0.0.1:{pebble.acme_port}/")
    # A new generation, recorded, and proxyd reloaded to it.
    gen = active_gen(s.db)
    assert gen > gen_before
    assert any(e.startswith("renew-cert a: acme certificate issued by Pebble") for e in events(s.db))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and s.status().get("generation") != gen:
        time.sleep(0.05)
    assert s.status().get("generation") == gen

    # certs shows it.
    rc, out, err, _ = s.run("certs")
    assert rc == 0, err
    line = [l for l in out.splitlines() if l.startswith("a ")][0]
    assert re.search(r"\bacme\b", line) and "Pebble Intermediate CA" in line and "a.test.example" in line
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ +\d+ ", line), line

    # Not due: nothing happens without --force.
    rc, out, err, _ = s.run("renew-cert", "a")
    assert rc == 0 and out.startswith("site 'a': not due (expires "), out + err
    assert active_gen(s.db) == gen

    # --force with the same account: pebble reuses the valid authorization (PEBBLE_AUTHZREUSE=100),
    # so the new order is already 'ready' and no challenge is published or probed.
    n_hits = len(challenge_hits(s))
    rc, out, err, secs = s.run("renew-cert", "--force", "a")
    assert rc == 0, out + err
    print(f"renew-cert --force a (authorization reused): {secs:.3f} s")
    row2 = s.cert("a")
    assert row2["source"] == "acme" and row2["cert_pem"] != row["cert_pem"]
    assert len(challenge_hits(s)) == n_hits
    assert sql(s.db, "SELECT kid FROM acme_accounts") == [(acct[0][2],)]


@needs_pebble
def test_issue_time_optimised_build(acme_store, pebble):
    """The performance figure with the optimised build (bin/proxyctl, `make all`)."""
    if not Path(PLAIN_PROXYCTL).exists():
        pytest.skip("bin/proxyctl not built (make all)")
    s = acme_store("perf")
    s.add("perf", ["perf.test.example", "www.perf.test.example"])
    s.start_proxyd()
    rc, out, err, secs = s.run("renew-cert", "perf", binary=PLAIN_PROXYCTL)
    print(f"\nrenew-cert perf (2 names, real HTTP-01 through proxyd, bin/proxyctl): {secs:.3f} s")
    assert rc == 0, out + err
    assert secs < RENEW_TARGET_S
    assert s.cert("perf")["hosts"] == "perf.test.example www.perf.test.example"


# ---------------------------------------------------------------- (b) validation fails

@needs_pebble
def test_validation_failure_keeps_old_certificate(acme_store, pebble):
    s = acme_store("b")  # proxyd NOT started: pebble's probe of the HTTP port is refused
    s.add("b", ["b.test.example"])
    old = s.cert("b")
    gen = active_gen(s.db)
    n_events = len(events(s.db))
    rc, out, err, secs = s.run("renew-cert", "b")
    assert rc == 3, out + err
    assert out == ""
    assert err.startswith("proxyctl: renew-cert b: urn:ietf:params:acme:error:connection: "), err
    assert "b.test.example" in err and "connection refused" in err, err
    assert err.count("\n") == 1
    assert s.cert("b") == old
    assert active_gen(s.db) == gen and len(events(s.db)) == n_events
    assert sql(s.db, "SELECT count(*) FROM acme_challenges") == [(0,)]
    assert secs < 10


# ---------------------------------------------------------------- (c) directory unreachable

def test_unreachable_directory(acme_store, tmp_path):
    from proxyd_fixtures import free_port
    url = f"https://127.0.0.1:{free_port()}/dir"
    s = acme_store("c", directory=url)
    s.add("c1", ["c1.test.example"])
    s.add("c2", ["c2.test.example"])
    old = s.cert("c1")
    rc, out, err, secs = s.run("renew-cert", "--all")
    assert rc == 3, out + err
    lines = err.splitlines()
    assert len(lines) == 2, err
    for site, line in zip(("c1", "c2"), lines):
        assert line.startswith(f"proxyctl: renew-cert {site}: cannot reach the ACME directory {url}: "), line
        assert "onnect" in line, line
    assert s.cert("c1") == old
    assert secs < 10


@needs_pebble
def test_directory_trust_comes_from_ca_file(acme_store, pebble, tmp_path):
    """Without acme.ca_file the system's CAs are trusted, and they do not know pebble's certificate."""
    s = acme_store("t", directory=pebble.directory, http_port=pebble.http_port, ca_file=None)
    s.add("t", ["t.test.example"])
    rc, out, err, _ = s.run("renew-cert", "t")
    assert rc == 3, out + err
    assert err.startswith(f"proxyctl: renew-cert t: cannot reach the ACME directory {pebble.directory}: "), err
    assert "certificate" in err, err
    missing = tmp_path / "no-such-ca.pem"
    s2 = acme_store("t2", directory=pebble.directory, http_port=pebble.http_port, ca_file=str(missing))
    s2.add("t2", ["t2.test.example"])
    rc, out, err, _ = s2.run("renew-cert", "t2")
    assert rc == 3
    assert err == (f"proxyctl: renew-cert t2: acme.ca_file {missing} (the CA bundle trusted for {pebble.directory}): "
                   "No such file or directory\n")
    assert sql(s.db, "SELECT count(*) FROM acme_accounts") == [(0,)]


def test_directory_must_be_https(acme_store, silent_listener):
    url = f"http://127.0.0.1:{silent_listener.port}/dir"
    s = acme_store("h", directory=url)
    s.add("h", ["h.test.example"])
    rc, out, err, _ = s.run("renew-cert", "h")
    assert rc == 3
    assert err == f"proxyctl: renew-cert h: ACME directory {url} is not an https:// URL (RFC 8555 §6.1)\n"
    assert silent_listener.connections == 0


# ---------------------------------------------------------------- (d) --dry-run

def test_dry_run_contacts_nothing(acme_store, silent_listener):
    url = f"https://127.0.0.1:{silent_listener.port}/dir"
    s = acme_store("d", directory=url)
    s.add("d1", ["d1.test.example"])
    s.add("d2", ["d2.test.example"], mode="self-signed")
    before = (sql(s.db, "SELECT * FROM certificates ORDER BY site"), active_gen(s.db), events(s.db))
    for args in (["--all"], ["--due"], ["d1", "d2"], ["--force", "d1"]):
        rc, out, err, _ = s.run("renew-cert", "--dry-run", *args)
        assert rc == 0, (args, out, err)
        assert err == ""
        assert f"site 'd1': would renew from {url} (temporary self-signed certificate" in out, (args, out)
    rc, out, _, _ = s.run("renew-cert", "--dry-run", "--due")
    assert "site 'd2': not due (expires " in out, out
    rc, out, _, _ = s.run("renew-cert", "--dry-run", "--force", "d2")
    assert out.startswith("site 'd2': would make a new self-signed certificate"), out
    time.sleep(0.2)
    assert silent_listener.connections == 0
    assert (sql(s.db, "SELECT * FROM certificates ORDER BY site"), active_gen(s.db), events(s.db)) == before
    assert sql(s.db, "SELECT count(*) FROM acme_accounts") == [(0,)]


# ---------------------------------------------------------------- (e) --due

@needs_pebble
def test_due_renews_only_due_certificates(acme_store, pebble):
    s = acme_store("e")
    s.add("e1", ["e1.test.example"])                      # temporary: due
    s.add("e2", ["e2.test.example"])                      # acme, 60 days left: not due
    s.add("e3", ["e3.test.example"])                      # acme, 10 days left: due (renew_before 30d)
    s.add("e4", ["e4.test.example"], mode="self-signed")  # 365 days left: not due
    s.add("e5", ["e5.test.example"], mode="none")         # nothing to renew
    now = int(time.time())
    con = sqlite3.connect(str(s.db), timeout=30)
    con.execute("UPDATE certificates SET source = 'acme', not_after = ? WHERE site = 'e2'", (now + 60 * 86400,))
    con.execute("UPDATE certificates SET source = 'acme', not_after = ? WHERE site = 'e3'", (now + 10 * 86400,))
    con.commit()
    con.close()
    before = {n: s.cert(n) for n in ("e1", "e2", "e3", "e4")}

    rc, out, err, _ = s.run("renew-cert", "--due", "--dry-run")
    assert rc == 0, err
    assert re.search(r"^site 'e1': would renew .*temporary", out, re.M), out
    assert re.search(r"^site 'e2': not due \(expires \S+, (59|60) days left\)$", out, re.M), out
    assert re.search(r"^site 'e3': would renew .*\(expires \S+, (9|10) days left \(renew_before 30 days\)\)$", out, re.M), out
    assert re.search(r"^site 'e4': not due", out, re.M), out
    assert "e5" not in out

    s.start_proxyd()
    rc, out, err, secs = s.run("renew-cert", "--due")
    assert rc == 0, out + err
    print(f"\nrenew-cert --due (2 due sites): {secs:.3f} s")
    after = {n: s.cert(n) for n in ("e1", "e2", "e3", "e4")}
    for n in ("e1", "e3"):
        assert after[n]["source"] == "acme" and after[n]["issuer"].startswith("Pebble"), n
        assert after[n]["cert_pem"] != before[n]["cert_pem"], n
    assert after["e2"] == before["e2"] and after["e4"] == before["e4"]
    assert s.cert("e5") is None
    assert [e for e in events(s.db) if e.startswith("renew-cert")] == [
        e for e in events(s.db) if re.match(r"renew-cert e[13]: acme certificate issued by Pebble", e)]
    assert len([e for e in events(s.db) if e.startswith("renew-cert")]) == 2


def test_self_signed_renewal(acme_store, silent_listener):
    s = acme_store("ss", directory=f"https://127.0.0.1:{silent_listener.port}/dir")
    s.add("ss", ["ss.test.example"], mode="self-signed")
    old = s.cert("ss")
    gen = active_gen(s.db)
    rc, out, err, _ = s.run("renew-cert", "ss")
    assert rc == 0 and out.startswith("site 'ss': not due"), out + err
    rc, out, err, _ = s.run("renew-cert", "--force", "ss")
    assert rc == 0, out + err
    assert out == f"site 'ss': new self-signed certificate; generation {gen + 1} active\n"
    new = s.cert("ss")
    assert new["source"] == "self-signed" and new["cert_pem"] != old["cert_pem"]
    assert "renew-cert ss: new self-signed certificate" in events(s.db)
    assert silent_listener.connections == 0


def test_one_renewal_at_a_time(acme_store, silent_listener):
    """While another run holds STORE.renew.lock, renew-cert changes nothing:
    --due exits 0 (the other run renews what is due), a named renewal exits 3;
    once the lock is free the renewal goes through."""
    import fcntl
    s = acme_store("lk", directory=f"https://127.0.0.1:{silent_listener.port}/dir")
    s.add("lk", ["lk.test.example"], mode="self-signed")
    before = (sql(s.db, "SELECT * FROM certificates"), active_gen(s.db), events(s.db))
    with open(f"{s.db}.renew.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        rc, out, err, _ = s.run("renew-cert", "--due")
        assert (rc, err) == (0, ""), (rc, out, err)
        assert out == f"another renew-cert is running on this store ({s.db}.renew.lock); it renews what is due\n"
        rc, out, err, _ = s.run("renew-cert", "--force", "lk")
        assert rc == 3, (rc, out, err)
        assert out == f"another renew-cert is running on this store ({s.db}.renew.lock); nothing renewed\n"
        rc, out, err, _ = s.run("renew-cert", "--dry-run", "--force", "lk")  # reads only: no lock needed
        assert rc == 0 and "would make a new self-signed certificate" in out, (rc, out, err)
        assert (sql(s.db, "SELECT * FROM certificates"), active_gen(s.db), events(s.db)) == before
    rc, out, err, _ = s.run("renew-cert", "--force", "lk")
    assert rc == 0 and "new self-signed certificate" in out, (rc, out, err)
    assert active_gen(s.db) == before[1] + 1


# ---------------------------------------------------------------- (f) certs

def test_certs_lists_hosts_issuer_days(acme_store, silent_listener):
    s = acme_store("f", directory=f"https://127.0.0.1:{silent_listener.port}/dir")
    s.add("f1", ["f1.test.example", "www.f1.test.example"])
    s.add("f2", ["f2.test.example"], mode="self-signed")
    rc, out, err, _ = s.run("certs")
    assert rc == 0, err
    lines = out.splitlines()
    assert re.match(r"SITE +SOURCE +NOT AFTER +DAYS +ISSUER +HOSTS$", lines[0]), lines[0]
    assert re.match(r"f1 +temporary +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ +(89|90) +proxyd self-signed +"
                    r"f1\.test\.example www\.f1\.test\.example$", lines[1]), lines[1]
    assert re.match(r"f2 +self-signed +\S+ +(364|365) +proxyd self-signed +f2\.test\.example$", lines[2]), lines[2]
    rc, out, err, _ = s.run("certs", "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert [c["site"] for c in data] == ["f1", "f2"]
    f1 = data[0]
    assert f1["hosts"] == ["f1.test.example", "www.f1.test.example"]
    assert f1["source"] == "temporary" and f1["issuer"] == "proxyd self-signed"
    assert f1["days_left"] in (89, 90)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", f1["not_after"])
    assert silent_listener.connections == 0


def test_certs_empty_store(acme_store, silent_listener):
    s = acme_store("fe", directory=f"https://127.0.0.1:{silent_listener.port}/dir")
    rc, out, err, _ = s.run("certs")
    assert (rc, out, err) == (0, "no certificates\n", "")
    rc, out, err, _ = s.run("certs", "--json")
    assert (rc, out) == (0, "[]\n")


# ---------------------------------------------------------------- (g) wildcard host

def test_wildcard_acme_site_refused(acme_store, silent_listener):
    s = acme_store("g", directory=f"https://127.0.0.1:{silent_listener.port}/dir")
    s.add("g", ["g.test.example", "*.g.test.example"])
    old = s.cert("g")
    rc, out, err, _ = s.run("renew-cert", "g")
    assert rc == 3, out + err
    assert re.fullmatch(r"proxyctl: renew-cert g: host '\*\.g\.test\.example' \(\S+\.yaml:2:\d+\) is a wildcard: "
                        r"ACME issues wildcard certificates only over DNS-01 challenges, and proxyctl answers "
                        r"HTTP-01 only; list the exact names in hosts, or give the certificate as files "
                        r"\(tls\.certificate: \{cert_file, key_file\}\)\n", err), err
    rc, out, err, _ = s.run("renew-cert", "--dry-run", "g")
    assert rc == 0 and "cannot renew: host '*.g.test.example' is a wildcard" in out, out + err
    assert s.cert("g") == old
    assert silent_listener.connections == 0


# ---------------------------------------------------------------- usage

@pytest.mark.parametrize("args,rc", [
    ([], 2), (["--all", "--due"], 2), (["a", "--all"], 2), (["--bogus"], 2), (["--force"], 2),
    (["nosuch"], 1),
], ids=lambda a: " ".join(a) if isinstance(a, list) else str(a))
def test_renew_cert_usage(acme_store, silent_listener, args, rc):
    s = acme_store("u", directory=f"https://127.0.0.1:{silent_listener.port}/dir")
    s.add("a", ["a.test.example"])
    got, out, err, _ = s.run("renew-cert", *args)
    assert got == rc, out + err
    if rc == 2:
        assert err.startswith("proxyctl: renew-cert: ")
        assert err.splitlines()[1] == "usage: proxyctl renew-cert [SITE...|--all|--due] [--force] [--dry-run]"
    else:
        assert err == "proxyctl: no site named 'nosuch'\n"
    assert silent_listener.connections == 0


def test_renew_cert_refuses_sites_without_renewable_certificate(acme_store, silent_listener):
    s = acme_store("n", directory=f"https://127.0.0.1:{silent_listener.port}/dir")
    s.add("plain", ["plain.test.example"], mode="none")
    rc, out, err, _ = s.run("renew-cert", "plain")
    assert rc == 1
    assert err == ("proxyctl: renew-cert plain: the site's certificate is none (tls.certificate); only acme and "
                   "self-signed certificates are renewed\n")
    rc, out, err, _ = s.run("renew-cert", "--all")
    assert (rc, out, err) == (0, "no site has a certificate to renew\n", "")


@pytest.mark.parametrize("cmd", ["renew-cert", "certs"])
def test_help(cmd, tmp_path):
    from conftest import run
    rc, out, err = run(cmd, "--help", cwd=tmp_path)
    assert rc == 0 and out.startswith(f"usage: proxyctl {cmd}") and err == ""
    rc, out, err = run("--help", cwd=tmp_path)
    assert f"\n  {cmd} " in out


# ---------------------------------------------------------------- badNonce

@needs_pebble
def test_bad_nonce_retried(acme_store, tmp_path_factory):
    """A pebble refusing 30% of good nonces: every refused request is resent with the new nonce."""
    from acme_fixtures import Pebble
    from proxyd_fixtures import free_port
    port = free_port()
    peb = Pebble(tmp_path_factory.mktemp("pebble-nonce"), port, env={"PEBBLE_WFE_NONCEREJECT": "30"})
    try:
        s = acme_store("nonce", directory=peb.directory, http_port=port, ca_file=peb.ca_file)
        s.add("n", ["n.test.example"])
        s.start_proxyd()
        rc, out, err, secs = s.run("renew-cert", "n")
        assert rc == 0, f"{out}\n{err}\n{peb.log_text()[-2000:]}"
        assert s.cert("n")["source"] == "acme"
        assert "reject 30% of good nonces" in peb.log_text()
    finally:
        peb.stop()


@needs_pebble
def test_renewal_while_traffic_flows_then_served_chain_verifies(acme_store, pebble, tmp_path):
    """HTTP and HTTPS requests keep succeeding through an issuance (and the reload it
    triggers), and afterwards `curl --cacert` with pebble's root verifies the chain proxyd
    serves for the site's name."""
    s = acme_store("live")
    s.add_site("site: live\nhosts: [live.test.example]\ntls: {certificate: acme}\n"
               "routes:\n  - return: {status: 200, body: \"live\"}\n")
    s.start_proxyd()
    stop, ok, failures = threading.Event(), [0], []
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the temporary certificate before, pebble's after

    def one(tls):
        raw = socket.create_connection(("127.0.0.1", s.https_port if tls else s.port), timeout=5)
        c = ctx.wrap_socket(raw, server_hostname="live.test.example") if tls else raw
        try:
            c.sendall(b"GET / HTTP/1.1\r\nHost: live.test.example\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                d = c.recv(65536)
                if not d:
                    break
                data += d
        finally:
            c.close()
        if not (data.startswith(b"HTTP/1.1 200") and data.endswith(b"live")):
            raise AssertionError(data[:80])

    def load():
        n = 0
        while not stop.is_set() and n < 100000:
            n += 1
            for tls in (False, True):
                try:
                    one(tls)
                    ok[0] += 1
                except Exception as e:  # every failure counts; the test asserts there are none
                    failures.append(f"{'https' if tls else 'http'}: {type(e).__name__}: {e}")

    t = threading.Thread(target=load, daemon=True)
    t.start()
    try:
        time.sleep(0.3)
        rc, out, err, secs = s.run("renew-cert", "live")
        assert rc == 0, f"{out}\n{err}"
        time.sleep(0.5)
    finally:
        stop.set()
        t.join(timeout=30)
    print(f"\n{ok[0]} requests (HTTP and HTTPS) around a {secs:.2f} s renewal, {len(failures)} failed")
    assert ok[0] > 20 and failures == [], failures[:10]
    root = tmp_path / "root.pem"
    root.write_text(pebble.root_pem())
    r = subprocess.run(["curl", "-sS", "--cacert", str(root), "--resolve",
                        f"live.test.example:{s.https_port}:127.0.0.1", f"https://live.test.example:{s.https_port}/"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == "live", (r.returncode, r.stdout, r.stderr)
