"""Certificates follow the sites of the active generation (issue 17, item 4).

rollback to a generation whose certificate was deleted since (remove-site,
apply) makes it again -- self-signed and temporary ones anew, cert files
imported again -- so the new generation is one `proxyd --check` accepts; and
a site that apply (or a rollback) removes takes its certificate and private
key with it, so `certs` stops listing it.
"""
import json
import os
import subprocess

from conftest import sql, state, write
from proxyd_fixtures import PROXYD
from tls_fixtures import make_cert

SELF = "site: sec\nhosts: [sec.test, www.sec.test]\ntls: {certificate: self-signed}\nroutes:\n  - return: {status: 200}\n"
ACME = "site: acme\nhosts: [acme.test]\ntls: {certificate: acme}\nroutes:\n  - return: {status: 200}\n"
PLAIN = "site: plain\nhosts: [plain.test]\nroutes:\n  - return: {status: 200}\n"


def ok(proxyctl, *args):
    rc, out, err = proxyctl(*args)
    assert rc == 0, (args, out, err)
    return out


def certs(proxyctl):
    return {c["site"]: c for c in json.loads(ok(proxyctl, "certs", "--json"))}


def cert_rows(db):
    return {r[0]: r[1:] for r in sql(db, "SELECT site, source, hosts, cert_pem, key_pem FROM certificates")}


def active(db):
    return sql(db, "SELECT id FROM generations WHERE active = 1")[0][0]


def check_ok(db):
    p = subprocess.run([PROXYD, "--db", str(db), "--check"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "configuration OK" in p.stdout


def test_rollback_remakes_a_deleted_self_signed_certificate(store, proxyctl, tmp_path):
    write(tmp_path, "sec.yaml", SELF)
    write(tmp_path, "plain.yaml", PLAIN)
    ok(proxyctl, "add-site", "sec.yaml")
    ok(proxyctl, "add-site", "plain.yaml")
    with_sec = active(store)
    ok(proxyctl, "remove-site", "sec")
    assert "sec" not in certs(proxyctl)
    out = ok(proxyctl, "rollback", str(with_sec))
    assert out.startswith(f"rolled back to generation {with_sec}; ")
    c = certs(proxyctl)
    assert c["sec"]["source"] == "self-signed" and c["sec"]["hosts"] == ["sec.test", "www.sec.test"]
    assert c["sec"]["days_left"] >= 364
    check_ok(store)


def test_rollback_keeps_a_certificate_that_still_serves(store, proxyctl, tmp_path):
    write(tmp_path, "sec.yaml", SELF)
    write(tmp_path, "plain.yaml", PLAIN)
    ok(proxyctl, "add-site", "sec.yaml")
    before = cert_rows(store)["sec"]
    ok(proxyctl, "add-site", "plain.yaml")
    ok(proxyctl, "rollback")
    assert cert_rows(store)["sec"] == before      # same certificate and key, not a new one
    check_ok(store)


def test_rollback_makes_a_temporary_certificate_for_an_acme_site(store, proxyctl, tmp_path):
    write(tmp_path, "acme.yaml", ACME)
    ok(proxyctl, "add-site", "acme.yaml")
    gen = active(store)
    ok(proxyctl, "remove-site", "acme")
    ok(proxyctl, "rollback", str(gen))
    assert certs(proxyctl)["acme"]["source"] == "temporary"
    check_ok(store)


def test_rollback_imports_cert_files_again(store, proxyctl, tmp_path):
    cert, key = make_cert(tmp_path / "pki", "files", sans=["DNS:files.test"], days=400)
    write(tmp_path, "files.yaml", f"site: files\nhosts: [files.test]\n"
                                  f"tls: {{certificate: {{cert_file: {cert}, key_file: {key}}}}}\n"
                                  "routes:\n  - return: {status: 200}\n")
    ok(proxyctl, "add-site", "files.yaml")
    gen = active(store)
    pem = cert_rows(store)["files"][2]
    ok(proxyctl, "remove-site", "files")
    assert "files" not in cert_rows(store)
    ok(proxyctl, "rollback", str(gen))
    row = cert_rows(store)["files"]
    assert row[0] == "files" and row[2] == pem
    check_ok(store)
    # Gone again, and the files too: the rollback is refused rather than storing a
    # generation proxyd would refuse.
    ok(proxyctl, "remove-site", "files")
    os.unlink(cert)
    before = state(store)
    rc, out, err = proxyctl("rollback", str(gen))
    assert rc == 3, (out, err)
    assert err.startswith("proxyctl: cannot read certificate files of site 'files': No such file or directory")
    assert state(store) == before


def test_apply_removes_the_certificates_of_removed_sites(store, proxyctl, tmp_path):
    write(tmp_path, "sites/sec.yaml", SELF)
    write(tmp_path, "sites/acme.yaml", ACME)
    write(tmp_path, "sites/plain.yaml", PLAIN)
    ok(proxyctl, "apply", "sites")
    assert set(certs(proxyctl)) == {"sec", "acme"}
    os.unlink(tmp_path / "sites" / "sec.yaml")
    ok(proxyctl, "apply", "sites")
    assert set(certs(proxyctl)) == {"acme"}
    assert set(cert_rows(store)) == {"acme"}         # the private key went with it
    assert "sec" not in ok(proxyctl, "certs")
    check_ok(store)


def test_rollback_to_before_a_site_removes_its_certificate(store, proxyctl, tmp_path):
    write(tmp_path, "plain.yaml", PLAIN)
    write(tmp_path, "sec.yaml", SELF)
    ok(proxyctl, "add-site", "plain.yaml")
    ok(proxyctl, "add-site", "sec.yaml")
    ok(proxyctl, "rollback")
    assert certs(proxyctl) == {}
    assert ok(proxyctl, "certs") == "no certificates\n"
    check_ok(store)
