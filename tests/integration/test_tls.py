"""proxyd TLS termination end to end (SPEC.md §2 `tls` of a site, §3 global `tls`, §7):
certificate choice by SNI (ECDSA and RSA sites side by side, self-signed and imported files),
unknown SNI (default certificate or an unrecognized_name alert), protocol versions, cipher
suites, ALPN, session resumption by ticket across workers, restarts and key rotation,
redirect_http and HSTS, HTTPS upstreams (verification, SNI, client certificates), the
handshake timeout, certificate diagnostics of proxyctl, TLS under load, and Debian's
testssl.sh against a live listener (tests/tls/testssl.sh).

Real processes: proxyd ($PROXYD, the ASan build by default) on free 127.0.0.1 ports, the
origin of bench/origin.c, Python HTTP(S) backends, and `openssl s_client` as a second client
next to Python's ssl module.  Certificates are made with the openssl command line
(tls_fixtures.tls_certs).
"""
import hashlib
import json
import os
import re
import signal
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from proxyd_fixtures import (ModuleEnv, Proxyd, http, origin_factory, parse_response, proxyd_factory,  # noqa: F401
                             raw_exchange, request_bytes, wait_for)
from tls_fixtures import (OPENSSL, TlsKeepAlive, cert_info, https_backend_factory, https_request,  # noqa: F401
                          make_cert, s_client, session_line, tls_certs, tls_client_context, tls_connect,
                          tls_probe, tls_proxyd, workers_status, admin_get)

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")


# ---- the shared proxyd: several sites with certificates side by side ------------------------

def sites_for(c):
    """ecdsa/rsa: imported certificate files (signed by the test CA); main: self-signed, the
    default site, redirect_http and full HSTS; hsts: HSTS without options; plain: no HSTS."""
    return [
        f"""\
site: ecdsa
hosts: [ecdsa.test, "*.wild.test"]
tls:
  certificate: {{cert_file: "{c.ecdsa}", key_file: "{c.ecdsa_key}"}}
routes:
  - match: {{path_prefix: /}}
    return: {{status: 200, body: "site ecdsa"}}
""",
        f"""\
site: rsa
hosts: [rsa.test]
tls:
  certificate: {{cert_file: "{c.rsa}", key_file: "{c.rsa_key}"}}
routes:
  - match: {{path_prefix: /}}
    return: {{status: 200, body: "site rsa"}}
""",
        """\
site: main
default: true
hosts: [main.test, www.main.test]
tls:
  certificate: self-signed
  redirect_http: true
  hsts: {max_age: 1000, include_subdomains: true, preload: true}
routes:
  - match: {path_prefix: /.well-known/acme-challenge/}
    return: {status: 200, body: "routed acme"}
  - match: {path_prefix: /}
    return: {status: 200, body: "site main"}
""",
        """\
site: hsts
hosts: [hsts.test]
tls:
  certificate: self-signed
  hsts: {max_age: 300}
routes:
  - match: {path_prefix: /}
    return: {status: 200, body: "site hsts"}
""",
        """\
site: plain
hosts: [plain.test]
tls: {certificate: self-signed}
routes:
  - match: {path_prefix: /}
    return: {status: 200, body: "site plain"}
""",
    ]


def module_factory(env):
    def make(global_settings=None, sites=(), workers=1, start=True, name=None, check_stderr=True):
        p = Proxyd(env.tmp, global_settings, sites, workers=workers, check_stderr=check_stderr,
                   name=name or f"proxyd{len(env.proxyds)}")
        env.proxyds.append(p)
        if start:
            p.start()
        return p
    return make


@pytest.fixture(scope="module")
def menv(tmp_path_factory, tls_certs):
    e = ModuleEnv(tmp_path_factory.mktemp("tls"))
    try:
        e.p = tls_proxyd(module_factory(e), sites_for(tls_certs), workers=1)
        e.certs = tls_certs
        yield e
    finally:
        e.stop()


@pytest.fixture
def mp(menv):
    """The shared proxyd; checked for sanitizer reports after each test."""
    yield menv.p
    menv.check()


# ---- SNI and certificates ---------------------------------------------------------------------

@pytest.mark.parametrize("sni, cn, key_type, dns", [
    ("ecdsa.test", "ecdsa.test", "ec", ["ecdsa.test", "*.wild.test"]),
    ("x.wild.test", "ecdsa.test", "ec", ["ecdsa.test", "*.wild.test"]),
    ("rsa.test", "rsa.test", "rsa", ["rsa.test"]),
    ("main.test", "main.test", "ec", ["main.test", "www.main.test"]),
    ("www.main.test", "main.test", "ec", ["main.test", "www.main.test"]),
    ("hsts.test", "hsts.test", "ec", ["hsts.test"]),
])
def test_sni_selects_the_site_certificate(mp, sni, cn, key_type, dns):
    h = tls_probe(mp.https_port, sni)
    assert h.cert is not None, h
    assert (h.cert.subject_cn, h.cert.key_type, h.cert.dns) == (cn, key_type, dns), h.cert.text[:2000]


def test_self_signed_certificate_is_ecdsa_p256(mp):
    h = tls_probe(mp.https_port, "plain.test")
    assert h.cert.subject_cn == "plain.test" and h.cert.dns == ["plain.test"]
    assert "prime256v1" in h.cert.text or "P-256" in h.cert.text, h.cert.text[:2000]


@pytest.mark.parametrize("sni, expect", [("ecdsa.test", "ECDHE-ECDSA-"), ("rsa.test", "ECDHE-RSA-")])
def test_ecdsa_and_rsa_sites_verify_against_their_ca(mp, tls_certs, sni, expect):
    """The imported files verify (chain and host name) with the CA that signed them, and the
    TLS 1.2 suite follows the certificate's key type."""
    h = tls_probe(mp.https_port, sni, cafile=tls_certs.ca, version="1.2")
    assert h.version == "TLSv1.2" and h.cipher.startswith(expect), h
    r = https_request(mp.https_port, host=sni, target="/", cafile=tls_certs.ca)
    assert r.status == 200 and r.body == f"site {sni.split('.')[0]}".encode(), r


@pytest.mark.parametrize("sni", ["unknown.test", "ecdsa.test.evil", None])
def test_unknown_or_missing_sni_gets_the_default_certificate(mp, sni):
    h = tls_probe(mp.https_port, sni)
    assert h.cert.subject_cn == "main.test", h
    r = https_request(mp.https_port, host="unknown.test", sni=sni)
    assert r.status == 200 and r.body == b"site main", r


def test_sni_is_case_insensitive(mp):
    h = tls_probe(mp.https_port, "RSA.Test")
    assert h.cert.subject_cn == "rsa.test", h


def test_host_header_routes_within_a_tls_connection(mp):
    """The certificate follows SNI; the site that answers follows Host (as for plain HTTP)."""
    r = https_request(mp.https_port, host="rsa.test", sni="rsa.test")
    assert r.body == b"site rsa"
    r = https_request(mp.https_port, host="ecdsa.test", sni="ecdsa.test")
    assert r.body == b"site ecdsa"


def test_unknown_sni_reject(proxyd_factory, tls_certs):
    p = tls_proxyd(proxyd_factory, sites_for(tls_certs), settings={"tls": {"unknown_sni": "reject"}})
    # Known names still work, ECDSA and RSA.
    assert tls_probe(p.https_port, "ecdsa.test").cert.subject_cn == "ecdsa.test"
    assert tls_probe(p.https_port, "rsa.test").cert.subject_cn == "rsa.test"
    assert tls_probe(p.https_port, "www.main.test").cert.subject_cn == "main.test"
    assert https_request(p.https_port, host="rsa.test").body == b"site rsa"
    # An unknown name gets a fatal unrecognized_name alert (112) during the handshake.
    with pytest.raises(ssl.SSLError) as ei:
        tls_probe(p.https_port, "unknown.test")
    assert said(ei.value, "unrecognized name"), ei.value
    rc, out = s_client(p.https_port, servername="unknown.test")
    assert rc != 0 and ("unrecognized name" in out or "alert number 112" in out), out
    # A client that sends no SNI has no name proxyd knows either.
    with pytest.raises(ssl.SSLError):
        tls_probe(p.https_port, None)


def said(err, words):
    """The error text names words (OpenSSL spells alerts with '_' or ' ')."""
    return words.lower() in str(err).lower().replace("_", " ")


# ---- protocols, suites, ALPN ------------------------------------------------------------------

@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_tls12_and_tls13_work(mp, version):
    h = tls_probe(mp.https_port, "main.test", version=version)
    assert h.version == f"TLSv{version}", h
    r = https_request(mp.https_port, host="main.test", version=version)
    assert r.status == 200 and r.body == b"site main"


@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1"])
def test_tls10_and_tls11_refused(mp, flag):
    # @SECLEVEL=0 so that the client itself is willing to speak the old protocol: the refusal
    # must come from proxyd (alert protocol_version, 70).
    rc, out = s_client(mp.https_port, flag, "-cipher", "DEFAULT:@SECLEVEL=0", servername="main.test")
    assert rc != 0, out
    assert "alert protocol version" in out or "alert number 70" in out, out
    assert "Cipher is (NONE)" in out or "no peer certificate" in out, out


def test_protocols_tls13_only_refuses_tls12(proxyd_factory, tls_certs):
    p = tls_proxyd(proxyd_factory, sites_for(tls_certs), settings={"tls": {"protocols": ["TLSv1.3"]}})
    assert tls_probe(p.https_port, "rsa.test", version="1.3").version == "TLSv1.3"
    with pytest.raises(ssl.SSLError) as ei:
        tls_probe(p.https_port, "rsa.test", version="1.2")
    assert said(ei.value, "protocol version") or said(ei.value, "unsupported protocol"), ei.value
    rc, out = s_client(p.https_port, "-tls1_2", servername="main.test")
    assert rc != 0 and ("alert protocol version" in out or "alert number 70" in out), out


def test_protocols_tls12_only_refuses_tls13(proxyd_factory, tls_certs):
    p = tls_proxyd(proxyd_factory, sites_for(tls_certs), settings={"tls": {"protocols": ["TLSv1.2"]}})
    assert tls_probe(p.https_port, "ecdsa.test", version="1.2").version == "TLSv1.2"
    with pytest.raises(ssl.SSLError):
        tls_probe(p.https_port, "ecdsa.test", version="1.3")


def tls12_ciphers():
    """Every TLS 1.2-and-below cipher this OpenSSL knows (names, TLS 1.3 suites excluded)."""
    out = subprocess.run([OPENSSL, "ciphers", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"], capture_output=True, text=True,
                         timeout=30).stdout
    return [c for c in out.strip().split(":") if c and not c.startswith("TLS_")]


@pytest.mark.parametrize("sni, expected", [
    ("ecdsa.test", {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305"}),
    ("rsa.test", {"ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"}),
])
def test_tls12_offers_only_ecdhe_aead_suites(mp, sni, expected):
    """Offer each TLS 1.2 suite alone: exactly the ECDHE AEAD ones for the key type succeed
    (no CBC, no static RSA key exchange, no finite-field DHE, no NULL/anonymous/export)."""
    accepted, tried = set(), 0
    for name in tls12_ciphers():
        ctx = tls_client_context(version="1.2")
        try:
            ctx.set_ciphers(name + ":@SECLEVEL=0")
        except ssl.SSLError:
            continue
        tried += 1
        try:
            h = tls_probe(mp.https_port, sni, ctx=ctx, timeout=3)
        except (ssl.SSLError, OSError):
            continue
        accepted.add(h.cipher)
    assert tried > 20, f"only {tried} TLS 1.2 suites could be offered"
    assert accepted == expected


@pytest.mark.parametrize("sni, cipher", [
    ("ecdsa.test", "ECDHE-ECDSA-AES128-SHA"),        # CBC
    ("ecdsa.test", "ECDHE-ECDSA-AES256-SHA384"),     # CBC
    ("rsa.test", "ECDHE-RSA-AES128-SHA256"),         # CBC
    ("rsa.test", "AES128-GCM-SHA256"),               # static RSA key exchange (no forward secrecy)
    ("rsa.test", "AES256-SHA"),                      # static RSA and CBC
    ("rsa.test", "DHE-RSA-AES128-GCM-SHA256"),       # finite-field DHE
])
def test_weak_tls12_suites_refused_by_s_client(mp, sni, cipher):
    rc, out = s_client(mp.https_port, "-tls1_2", "-cipher", cipher + ":@SECLEVEL=0", servername=sni)
    assert rc != 0, out
    assert "handshake failure" in out or "alert number 40" in out, out


@pytest.mark.parametrize("offer, expect", [
    (["h2", "http/1.1"], "h2"),  # http2 is on by default: HTTP/2 itself is tested in test_http2.py
    (["http/1.1"], "http/1.1"),
    (None, None),
])
def test_alpn(mp, offer, expect):
    h = tls_probe(mp.https_port, "main.test", alpn=offer)
    assert h.alpn == expect, h
    if expect == "h2":
        return
    r = https_request(mp.https_port, host="main.test", alpn=offer)
    assert r.status == 200 and r.version == "HTTP/1.1"


def test_alpn_without_a_protocol_of_ours_gets_no_application_protocol(mp):
    """RFC 7301 §3.2: no protocol in common is a fatal no_application_protocol alert (h2 alone is
    ours now: test_http2.py)."""
    with pytest.raises(ssl.SSLError) as ei:
        tls_probe(mp.https_port, "main.test", alpn=["spdy/3.1"])
    assert said(ei.value, "no application protocol"), ei.value


def read_to_close(sock, timeout=5.0):
    """(bytes, how it ended): 'close_notify' for a clean TLS close, else the exception name."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            d = sock.recv(65536)
        except ssl.SSLEOFError:
            return data, "EOF without close_notify"
        except (ssl.SSLError, OSError) as e:
            return data, type(e).__name__ + ": " + str(e)
        if not d:
            return data, "close_notify"
        data += d
    return data, "timeout"


@pytest.mark.parametrize("version", ["tls1_2", "tls1_3"])
def test_connection_close_sends_close_notify(mp, version):
    rc, out = s_client(mp.https_port, f"-{version}", "-msg", servername="main.test", request="/")
    assert "HTTP/1.1 200" in out, out
    received = [l for l in out.splitlines() if l.startswith("<<<") and "close_notify" in l]
    assert received and "unexpected eof" not in out, out[-3000:]


# ---- session resumption -----------------------------------------------------------------------

def new_session(port, version, sess, sni="main.test"):
    rc, out = s_client(port, f"-{version}", "-sess_out", sess, servername=sni, request="/")
    assert session_line(out) == "New", out
    assert "HTTP/1.1 200" in out, out
    assert os.path.exists(sess) and os.path.getsize(sess) > 0, out
    return out


def resume(port, version, sess, sni="main.test"):
    rc, out = s_client(port, f"-{version}", "-sess_in", sess, servername=sni, request="/")
    assert "HTTP/1.1 200" in out, out
    return session_line(out), out


def wait_workers_replaced(p, old_pids, n, timeout=5.0):
    def ok():
        ws = workers_status(p)
        alive = [pid for _, pid, a in ws if a]
        return len(alive) == n and not set(alive) & set(old_pids) and ws
    ws = wait_for(ok, timeout, 0.05)
    assert ws, f"workers not replaced within {timeout}s: {workers_status(p)} (old {old_pids})"
    return [pid for _, pid, _ in ws]


@pytest.fixture
def two_workers(proxyd_factory, tls_certs):
    return tls_proxyd(proxyd_factory, sites_for(tls_certs), workers=2)


def test_resumption_across_killed_workers(two_workers, tmp_path):
    p = two_workers
    sess = {v: str(tmp_path / f"sess-{v}.pem") for v in ("tls1_2", "tls1_3")}
    for v in sess:
        new_session(p.https_port, v, sess[v])
        # Either worker resumes what either issued: try a few connections.
        for _ in range(4):
            assert resume(p.https_port, v, sess[v])[0] == "Reused"
    old = [pid for _, pid, a in workers_status(p) if a]
    assert len(old) == 2
    t0 = time.monotonic()
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    new = wait_workers_replaced(p, old, 2, timeout=5.0)
    assert time.monotonic() - t0 < 3.0, "the master took too long to restart the workers"
    for v in sess:
        for _ in range(4):
            got, out = resume(p.https_port, v, sess[v])
            assert got == "Reused", f"{v} after the workers {old} were replaced by {new}:\n{out}"


def test_resumption_after_proxyd_restart_on_the_same_store(two_workers, tmp_path):
    p = two_workers
    sess = {v: str(tmp_path / f"sess-{v}.pem") for v in ("tls1_2", "tls1_3")}
    for v in sess:
        new_session(p.https_port, v, sess[v])
    keys_before = ticket_keys(p.db)
    p.stop()
    p.start()
    wait_tls_port(p)
    assert ticket_keys(p.db)[:1] == keys_before[:1], "a restart within the rotation period made a new key"
    for v in sess:
        got, out = resume(p.https_port, v, sess[v])
        assert got == "Reused", f"{v} after a restart:\n{out}"


def wait_tls_port(p, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", p.https_port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError("HTTPS port not accepting")


def test_session_tickets_false_means_no_resumption(proxyd_factory, tls_certs, tmp_path):
    p = tls_proxyd(proxyd_factory, sites_for(tls_certs), settings={"tls": {"session_tickets": False}})
    for v in ("tls1_2", "tls1_3"):
        sess = str(tmp_path / f"s-{v}.pem")
        rc, out = s_client(p.https_port, f"-{v}", "-sess_out", sess, servername="main.test", request="/")
        assert session_line(out) == "New" and "HTTP/1.1 200" in out, out
        if v == "tls1_2":
            assert "TLS session ticket:" not in out, out
        if os.path.exists(sess) and os.path.getsize(sess):
            got, out = resume(p.https_port, v, sess)
            assert got == "New", out


def ticket_keys(db):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute("SELECT hex(name), created, expires FROM ticket_keys ORDER BY created DESC, id DESC").fetchall()
    finally:
        con.close()


def test_ticket_key_rotation(proxyd_factory, tls_certs, tmp_path):
    """ticket_key_rotation: 2s -> the master adds a key every 2 s (kept for 3 rotations);
    a ticket issued under an older key still resumes while that key is valid, and no longer
    once it has expired."""
    p = tls_proxyd(proxyd_factory, sites_for(tls_certs), workers=2, settings={"tls": {"ticket_key_rotation": "2s"}})
    first = ticket_keys(p.db)
    assert len(first) >= 1, first
    # Take the sessions right after a rotation, so their key has its whole validity ahead.
    rotated = wait_for(lambda: ticket_keys(p.db)[0][0] != first[0][0], 6, 0.05)
    assert rotated, f"no new ticket key within 6 s: {ticket_keys(p.db)}"
    key_at_issue = ticket_keys(p.db)[0]
    t0 = time.monotonic()
    sess = {v: str(tmp_path / f"sess-{v}.pem") for v in ("tls1_2", "tls1_3")}
    for v in sess:
        new_session(p.https_port, v, sess[v])
    # At least one more rotation: the ticket's key is no longer the newest.
    assert wait_for(lambda: ticket_keys(p.db)[0][0] != key_at_issue[0], 4, 0.05)
    keys = ticket_keys(p.db)
    assert len(keys) > 1, keys
    assert any(k[0] == key_at_issue[0] for k in keys), keys
    time.sleep(max(0.0, t0 + 2.5 - time.monotonic()))
    assert time.monotonic() - t0 < 4.0
    for v in sess:
        got, out = resume(p.https_port, v, sess[v])
        assert got == "Reused", f"{v}, a ticket under the previous key ({time.monotonic() - t0:.1f} s old):\n{out}"
    # The key expires 3 rotations (6 s) after it was made; allow 2 s for the 500 ms timer and
    # whole-second timestamps.
    time.sleep(max(0.0, t0 + 8.0 - time.monotonic()))
    for v in sess:
        got, out = resume(p.https_port, v, sess[v])
        assert got == "New", f"{v}, a ticket whose key expired:\n{out}"


# ---- redirect_http and HSTS ------------------------------------------------------------------------

@pytest.mark.parametrize("host, target, location", [
    ("main.test", "/", "https://main.test:{port}/"),
    ("main.test:8080", "/a/b?x=1&y=%20z", "https://main.test:{port}/a/b?x=1&y=%20z"),
    ("www.main.test", "/p?q", "https://www.main.test:{port}/p?q"),
    ("unknown.test", "/x", "https://unknown.test:{port}/x"),     # the default site redirects too
])
def test_redirect_http_301_to_https(mp, host, target, location):
    r = http(mp.port, target=target, host=host)
    assert r.status == 301, r
    # The HTTPS listener is not on 443: the redirect names its port (SPEC §10).
    assert r.header("Location") == location.format(port=mp.https_port), r
    assert r.header("Strict-Transport-Security") is None, "HSTS must not be sent over plain HTTP"


def test_redirect_http_head_and_post(mp):
    r = http(mp.port, method="HEAD", target="/h", host="main.test")
    assert r.status == 301 and r.header("Location") == f"https://main.test:{mp.https_port}/h"
    r = http(mp.port, method="POST", target="/form", host="main.test", body=b"a=1")
    assert r.status == 301 and r.header("Location") == f"https://main.test:{mp.https_port}/form"


def test_redirect_http_spares_acme_challenges(mp):
    r = http(mp.port, target="/.well-known/acme-challenge/TOKEN123", host="main.test")
    assert r.status == 200 and r.body == b"routed acme", r


def test_no_redirect_without_redirect_http(mp):
    r = http(mp.port, target="/x", host="plain.test")
    assert r.status == 200 and r.body == b"site plain", r


def test_no_redirect_over_https(mp):
    r = https_request(mp.https_port, host="main.test", target="/x?y=1")
    assert r.status == 200 and r.body == b"site main", r


@pytest.mark.parametrize("host, hsts", [
    ("main.test", "max-age=1000; includeSubDomains; preload"),
    ("hsts.test", "max-age=300"),
    ("plain.test", None),
])
def test_hsts_over_https_only(mp, host, hsts):
    r = https_request(mp.https_port, host=host, target="/")
    assert r.status == 200
    assert r.header_all("Strict-Transport-Security") == ([hsts] if hsts else []), r
    if host != "main.test":
        r = http(mp.port, target="/", host=host)
        assert r.status == 200 and r.header("Strict-Transport-Security") is None, r


def test_redirect_http_keeps_ipv6_literal(mp):
    r = http(mp.port, target="/v6?a=1", host="[::1]:8080")
    assert r.status == 301 and r.header("Location") == f"https://[::1]:{mp.https_port}/v6?a=1", r


def test_redirect_http_without_host_http10(proxyd_factory, tls_certs):
    p = tls_proxyd(proxyd_factory, sites_for(tls_certs), check_stderr=False)
    before = p.worker_pids()
    data = raw_exchange(p.port, b"GET /x HTTP/1.0\r\n\r\n", timeout=3)
    time.sleep(0.3)
    assert p.worker_pids() == before, "the worker died"
    r = parse_response(data)
    assert r is not None and (r.status == 400 or (r.status == 301 and r.header("Location", "").startswith(
        f"https://main.test:{p.https_port}/"))), data[:300]


def test_redirect_http_empty_host(mp):
    r = http(mp.port, target="/x", host="")
    assert r.status == 400 or (r.status == 301 and r.header("Location") == f"https://main.test:{mp.https_port}/x"), r


def test_redirect_http_absolute_form_target(mp):
    """RFC 9112 §3.2.2: a server accepts absolute-form; the Location is built from the
    authority and the path + query, not the whole target."""
    data = raw_exchange(mp.port, b"GET http://main.test/abs?q=1 HTTP/1.1\r\nHost: main.test\r\n"
                                 b"Connection: close\r\n\r\n", timeout=3)
    r = parse_response(data)
    assert r is not None and r.status == 301, data[:300]
    assert r.header("Location") == f"https://main.test:{mp.https_port}/abs?q=1", r


def test_acme_site_is_served_with_a_temporary_certificate(proxyd_factory):
    """SPEC §4: an `acme` site not yet issued is served with a temporary self-signed
    certificate (and its HTTP-01 path is reachable over plain HTTP)."""
    site = """\
site: shop
default: true
hosts: [shop.test, www.shop.test]
tls: {certificate: acme, redirect_http: true}
routes:
  - match: {path_prefix: /}
    return: {status: 200, body: "shop"}
"""
    p = tls_proxyd(proxyd_factory, [site], settings={"acme": {"email": "ops@shop.test"}})
    h = tls_probe(p.https_port, "www.shop.test")
    assert h.cert.dns == ["shop.test", "www.shop.test"] and h.cert.key_type == "ec", h
    assert https_request(p.https_port, host="shop.test").body == b"shop"
    r = http(p.port, target="/.well-known/acme-challenge/unknown-token", host="shop.test")
    assert r.status != 301, r


# ---- HTTPS upstreams ---------------------------------------------------------------------------------

def upstream_site(address, tls_yaml, host="up.test", route_extra="", keepalive=8):
    text = f"""\
site: up
default: true
hosts: [{host}]
tls: {{certificate: self-signed}}
upstreams:
  app:
    servers: [{{address: "{address}"}}]
    keepalive: {keepalive}
    tls: {tls_yaml}
routes:
  - match: {{path_prefix: /}}
    upstream: app
"""
    if route_extra:
        text += "".join(f"    {l}\n" for l in route_extra.strip("\n").splitlines())
    return text


def error_line(p, needle, timeout=3.0):
    def find():
        for line in p.error_log_text().splitlines():
            if needle in line:
                return line
        return None
    return wait_for(find, timeout)


def test_https_upstream_verified_with_ca_file(proxyd_factory, https_backend_factory, tls_certs):
    c = tls_certs
    b = https_backend_factory(c.backend, c.backend_key)
    p = tls_proxyd(proxyd_factory, [upstream_site(b.address, f'{{verify: true, ca_file: "{c.ca}"}}')])
    r = https_request(p.https_port, host="up.test", target="/hello?x=1")
    assert r.status == 200, (r, p.diagnostics())
    info = r.json()
    assert info["path"] == "/hello?x=1"
    hdr = {k.lower(): v for k, v in info["headers"]}
    assert hdr["host"] == "up.test"
    assert hdr["x-forwarded-proto"] == "https"
    assert info["tls_version"] in ("TLSv1.2", "TLSv1.3")
    # No sni configured and an IP address: no SNI is sent (RFC 6066 §3 forbids IP literals).
    assert b.sni_names == [None]
    # Plain-HTTP clients reach the HTTPS upstream as well.
    r = http(p.port, target="/plain", host="up.test")
    assert r.status == 200 and r.json()["path"] == "/plain"


def test_https_upstream_wrong_ca_file_502(proxyd_factory, https_backend_factory, tls_certs):
    c = tls_certs
    b = https_backend_factory(c.backend, c.backend_key)
    p = tls_proxyd(proxyd_factory, [upstream_site(b.address, f'{{verify: true, ca_file: "{c.other_ca}"}}')])
    r = https_request(p.https_port, host="up.test", target="/x")
    assert r.status == 502, r
    assert b.requests == []
    line = error_line(p, b.address)
    assert line, p.diagnostics()
    assert "up" in line and re.search(r"certificate", line, re.I), line
    assert re.search(r"verif|unable to get local issuer|self[- ]signed|unknown ca", line, re.I), line


def test_https_upstream_verification_is_on_by_default(proxyd_factory, https_backend_factory, tls_certs):
    """tls: {} (no ca_file): the system's CAs, which do not know the test CA -> 502."""
    c = tls_certs
    b = https_backend_factory(c.backend, c.backend_key)
    p = tls_proxyd(proxyd_factory, [upstream_site(b.address, "{}")])
    r = https_request(p.https_port, host="up.test", target="/x")
    assert r.status == 502, r
    assert error_line(p, b.address), p.diagnostics()


def test_https_upstream_verify_false(proxyd_factory, https_backend_factory, tls_certs, tmp_path):
    # A certificate no CA vouches for, for another name.
    cert, key = make_cert(tmp_path, "stray", ["DNS:stray.test"], "ec")
    b = https_backend_factory(cert, key)
    p = tls_proxyd(proxyd_factory, [upstream_site(b.address, "{verify: false}")])
    r = https_request(p.https_port, host="up.test", target="/nv")
    assert r.status == 200 and r.json()["path"] == "/nv", (r, p.diagnostics())


def test_https_upstream_sni_and_host(proxyd_factory, https_backend_factory, tls_certs):
    c = tls_certs
    b = https_backend_factory(c.backend, c.backend_key)
    p = tls_proxyd(proxyd_factory, [upstream_site(
        b.address, f'{{verify: true, ca_file: "{c.ca}", sni: backend.test}}',
        route_extra="headers: {request: {set: {Host: backend.test}}}")])
    r = https_request(p.https_port, host="up.test", target="/sni")
    assert r.status == 200, (r, p.diagnostics())
    info = r.json()
    assert info["sni"] == "backend.test"
    assert "backend.test" in b.sni_names
    hosts = [v for k, v in info["headers"] if k.lower() == "host"]
    assert hosts == ["backend.test"], info["headers"]
    # The original host still travels in X-Forwarded-Host.
    assert [v for k, v in info["headers"] if k.lower() == "x-forwarded-host"] == ["up.test"]


def test_https_upstream_sni_name_is_verified(proxyd_factory, https_backend_factory, tls_certs):
    """sni names the identity checked: a name the backend's certificate lacks -> 502."""
    c = tls_certs
    b = https_backend_factory(c.backend, c.backend_key)
    p = tls_proxyd(proxyd_factory, [upstream_site(b.address, f'{{verify: true, ca_file: "{c.ca}", sni: other.test}}')])
    r = https_request(p.https_port, host="up.test", target="/x")
    assert r.status == 502, r
    line = error_line(p, b.address)
    assert line and re.search(r"hostname mismatch|host name|verif", line, re.I), (line, p.diagnostics())


def test_https_upstream_client_certificate(proxyd_factory, https_backend_factory, tls_certs):
    c = tls_certs
    b = https_backend_factory(c.backend, c.backend_key, client_ca=c.ca)
    p = tls_proxyd(proxyd_factory, [upstream_site(
        b.address, f'{{verify: true, ca_file: "{c.ca}", cert_file: "{c.client}", key_file: "{c.client_key}"}}')])
    r = https_request(p.https_port, host="up.test", target="/mtls")
    assert r.status == 200, (r, b.handshake_errors, p.diagnostics())
    assert r.json()["client_cn"] == "proxyd client"


def test_https_upstream_requiring_client_certificate_without_one_502(proxyd_factory, https_backend_factory,
                                                                      tls_certs):
    c = tls_certs
    b = https_backend_factory(c.backend, c.backend_key, client_ca=c.ca)
    p = tls_proxyd(proxyd_factory, [upstream_site(b.address, f'{{verify: true, ca_file: "{c.ca}"}}')])
    r = https_request(p.https_port, host="up.test", target="/mtls")
    assert r.status == 502, r
    assert b.requests == []
    assert wait_for(lambda: b.handshake_errors, 3), "the backend saw no failed handshake"


def test_https_upstream_keepalive_reuses_tls_connections(proxyd_factory, https_backend_factory, tls_certs):
    c = tls_certs
    b = https_backend_factory(c.backend, c.backend_key)
    p = tls_proxyd(proxyd_factory, [upstream_site(b.address, f'{{verify: true, ca_file: "{c.ca}"}}')])
    conn = TlsKeepAlive(p.https_port, "up.test")
    try:
        for i in range(10):
            r = conn.request(target=f"/k{i}", host="up.test")
            assert r.status == 200 and r.json()["path"] == f"/k{i}"
    finally:
        conn.close()
    assert b.handshakes == 1, f"{b.handshakes} upstream TLS handshakes for 10 sequential requests"


def test_https_upstream_large_body_tls_to_tls(proxyd_factory, https_backend_factory, tls_certs):
    c = tls_certs
    b = https_backend_factory(c.backend, c.backend_key)
    p = tls_proxyd(proxyd_factory, [upstream_site(b.address, f'{{verify: true, ca_file: "{c.ca}"}}')])
    n = 24 << 20
    r = https_request(p.https_port, host="up.test", target=f"/bytes/{n}", timeout=60)
    assert r.status == 200 and len(r.body) == n and r.body.count(b"x") == n


# ---- handshake timeout -------------------------------------------------------------------------------

@pytest.fixture
def short_timeouts(proxyd_factory, tls_certs):
    return tls_proxyd(proxyd_factory, sites_for(tls_certs), settings={"limits": {"header_timeout": "1s"}})


def closed_after(port, send=b"", limit=6.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=limit)
    t0 = time.monotonic()
    try:
        if send:
            s.sendall(send)
        s.settimeout(limit)
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass
        except socket.timeout:
            return None
        return time.monotonic() - t0
    finally:
        s.close()


def test_handshake_timeout_silent_client(short_timeouts):
    """A client that connects and sends nothing is closed after header_timeout (1 s)."""
    p = short_timeouts
    s = socket.create_connection(("127.0.0.1", p.https_port), timeout=30)
    t0 = time.monotonic()
    try:
        s.settimeout(5)
        try:
            while s.recv(100):
                pass
        except ConnectionResetError:
            pass
        except socket.timeout:
            pytest.fail("a silent client was still open after 5 s")
        took = time.monotonic() - t0
    finally:
        s.close()
    assert 0.8 <= took <= 3.0, f"closed after {took:.2f} s (header_timeout 1 s)"

def test_handshake_timeout_partial_client_hello(short_timeouts):
    # The first bytes of a TLS record header announcing a ClientHello that never comes.
    took = closed_after(short_timeouts.https_port, send=b"\x16\x03\x01\x02\x00\x01")
    assert took is not None and 0.7 <= took <= 3.0, took


def test_idle_after_handshake_is_closed(short_timeouts):
    s = tls_connect(short_timeouts.https_port, "main.test")
    t0 = time.monotonic()
    try:
        s.settimeout(6)
        try:
            d = s.recv(100)
        except (OSError, ssl.SSLError):
            d = b""
        assert d == b""
    finally:
        s.close()
    assert time.monotonic() - t0 <= 3.0


def test_handshake_timeout_does_not_hurt_others(short_timeouts):
    silent = [socket.create_connection(("127.0.0.1", short_timeouts.https_port)) for _ in range(20)]
    try:
        r = https_request(short_timeouts.https_port, host="main.test")
        assert r.status == 200
    finally:
        for s in silent:
            s.close()


# ---- certificate diagnostics (proxyctl add-site with certificate files) -----------------------------

def cert_site_yaml(cert, key, hosts="[a.example.com]"):
    return (f"site: files\nhosts: {hosts}\ntls:\n  certificate:\n    cert_file: {cert}\n    key_file: {key}\n"
            "routes:\n  - match: {path_prefix: /}\n    return: {status: 200}\n")


@pytest.fixture(scope="module")
def diag_certs(tmp_path_factory, tls_certs):
    d = tmp_path_factory.mktemp("diag-certs")
    good = make_cert(d, "good", ["DNS:a.example.com"], "rsa")
    return {"GOOD": good[0], "GOOD_KEY": good[1], "EXPIRED": tls_certs.expired, "EXPIRED_KEY": tls_certs.expired_key,
            "OTHER_KEY": tls_certs.unrelated_key}


@pytest.mark.parametrize("case, cert, key, hosts, message", [
    ("expired", "EXPIRED", "EXPIRED_KEY", "[expired.test]", "site.yaml:5:16: error: certificate '{EXPIRED}' has expired"),
    ("key-mismatch", "GOOD", "OTHER_KEY", "[a.example.com]",
     "site.yaml:6:15: error: key_file '{OTHER_KEY}' does not match cert_file '{GOOD}'"),
    ("cert-missing", "/nonexistent/c.pem", "GOOD_KEY", "[a.example.com]",
     "site.yaml:5:16: error: cannot read cert_file '/nonexistent/c.pem': No such file or directory"),
    ("key-missing", "GOOD", "/nonexistent/k.pem", "[a.example.com]",
     "site.yaml:6:15: error: cannot read key_file '/nonexistent/k.pem': No such file or directory"),
    ("host-not-covered", "GOOD", "GOOD_KEY", "[a.example.com, b.example.com]",
     "site.yaml:5:16: error: certificate '{GOOD}' does not cover host 'b.example.com'"),
])
def test_add_site_certificate_diagnostics(store, proxyctl, tmp_path, diag_certs, case, cert, key, hosts, message):
    def fill(s):
        for k, v in diag_certs.items():
            s = s.replace("{" + k + "}", v)
        return diag_certs.get(s, s)
    (tmp_path / "site.yaml").write_text(cert_site_yaml(fill(cert), fill(key), hosts))
    gens = generation_ids(store)
    rc, out, err = proxyctl("add-site", "site.yaml")
    assert rc == 1, (rc, out, err)
    assert fill(message) in err.splitlines(), err
    assert generation_ids(store) == gens, "a failed add-site made a generation"


def test_add_site_rsa_certificate_files_ok(store, proxyctl, tmp_path, diag_certs):
    (tmp_path / "site.yaml").write_text(cert_site_yaml(diag_certs["GOOD"], diag_certs["GOOD_KEY"]))
    rc, out, err = proxyctl("add-site", "site.yaml")
    assert rc == 0, (out, err)
    con = sqlite3.connect(str(store))
    try:
        rows = con.execute("SELECT source, cert_pem FROM certificates WHERE site = 'files'").fetchall()
    finally:
        con.close()
    assert len(rows) == 1 and rows[0][1] == Path(diag_certs["GOOD"]).read_text(), rows


def generation_ids(db):
    con = sqlite3.connect(str(db))
    try:
        return [r[0] for r in con.execute("SELECT id FROM generations ORDER BY id")]
    finally:
        con.close()


# ---- reload -------------------------------------------------------------------------------------------

def test_reload_serves_a_new_sites_certificate(proxyd_factory, tls_certs, tmp_path):
    p = tls_proxyd(proxyd_factory, sites_for(tls_certs)[2:3])
    assert tls_probe(p.https_port, "rsa.test").cert.subject_cn == "main.test"
    held = TlsKeepAlive(p.https_port, "main.test")
    try:
        assert held.request(host="main.test").body == b"site main"
        p.add_site(sites_for(tls_certs)[1])   # rsa.test; add-site signals the running proxyd
        got = wait_for(lambda: tls_probe(p.https_port, "rsa.test").cert.subject_cn == "rsa.test", 5, 0.1)
        assert got, "the new site's certificate is not served after add-site"
        # A connection made before the reload keeps working.
        assert held.request(host="main.test").body == b"site main"
    finally:
        held.close()


# ---- load -----------------------------------------------------------------------------------------------

@pytest.fixture
def origin_behind_tls(proxyd_factory, origin_factory, tls_certs):
    o = origin_factory(echo=False)
    site = f"""\
site: origin
default: true
hosts: [ecdsa.test]
tls:
  certificate: {{cert_file: "{tls_certs.ecdsa}", key_file: "{tls_certs.ecdsa_key}"}}
upstreams:
  o:
    keepalive: 16
    servers: [{{address: "{o.address}"}}]
routes:
  - match: {{path_prefix: /}}
    upstream: o
"""
    # ecdsa.test's certificate for a site named origin.test: served to any SNI as the default.
    return tls_proxyd(proxyd_factory, [site.replace("hosts: [ecdsa.test]", "hosts: [ecdsa.test]")], workers=2)


def test_200_requests_over_10_keepalive_tls_connections(origin_behind_tls):
    p = origin_behind_tls
    results, errors = [], []

    def client(i):
        try:
            c = TlsKeepAlive(p.https_port, "ecdsa.test")
            try:
                for j in range(20):
                    r = c.request(target=f"/c{i}/r{j}", host="ecdsa.test")
                    results.append((r.status, len(r.body), r.body == b"x" * 100))
            finally:
                c.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(results) == 200 and all(r == (200, 100, True) for r in results), results[:5]


def test_100_mib_download_over_tls(origin_behind_tls):
    p = origin_behind_tls
    n = 100 << 20
    s = tls_connect(p.https_port, "ecdsa.test", timeout=60)
    h = hashlib.sha256()
    got = 0
    try:
        s.sendall(request_bytes("GET", f"/bytes/{n}", "ecdsa.test", [("Connection", "close")]))
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            assert d, buf
            buf += d
        head, body = buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert re.search(rb"(?i)content-length: *%d\r" % n, head + b"\r"), head
        h.update(body)
        got = len(body)
        deadline = time.monotonic() + 120
        while got < n and time.monotonic() < deadline:
            d = s.recv(1 << 20)
            if not d:
                break
            h.update(d)
            got += len(d)
    finally:
        s.close()
    assert got == n
    assert h.hexdigest() == hashlib.sha256(b"x" * n).hexdigest()


def test_pipelined_requests_over_tls(mp):
    """Several requests in one TLS record: every response comes back, in order.  (Each names
    a host of the site the SNI chose: another site's would be 421, test_proxyd_hardening.py.)"""
    s = tls_connect(mp.https_port, "main.test")
    try:
        reqs = b"".join(request_bytes("GET", f"/p{i}", host) for i, host in
                        enumerate(["main.test", "www.main.test", "main.test", "www.main.test"]))
        s.sendall(reqs + request_bytes("GET", "/last", "main.test", [("Connection", "close")]))
        data = _read_all(s, 5)
    finally:
        s.close()
    from proxyd_fixtures import parse_responses
    rs = parse_responses(data)
    assert [r.body for r in rs] == [b"site main"] * 5, data[:600]


def _read_all(s, timeout):
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            d = s.recv(1 << 20)
        except (socket.timeout, ssl.SSLError, OSError):
            break
        if not d:
            break
        out += d
    return out


def test_large_upload_over_tls(origin_behind_tls):
    p = origin_behind_tls
    n = 32 << 20
    body = b"u" * n
    c = TlsKeepAlive(p.https_port, "ecdsa.test", timeout=60)
    try:
        r = c.request("POST", "/sink", "ecdsa.test", body=body)
        assert r.status == 200 and r.json() == {"received": n}, r
        r = c.request("GET", "/after", "ecdsa.test")      # the connection is still in step
        assert r.status == 200 and r.body == b"x" * 100
    finally:
        c.close()


def test_slow_reader_over_tls(origin_behind_tls):
    """Back-pressure on a TLS client: a reader that stops for a while still gets every byte."""
    p = origin_behind_tls
    n = 32 << 20
    # (No small SO_RCVBUF: set after connect, it makes any unbuffered relay crawl, nginx with
    # proxy_buffering off as much as proxyd; the kernel's own buffers are far below 32 MiB.)
    s = tls_connect(p.https_port, "ecdsa.test", timeout=30)
    got, h = 0, hashlib.sha256()
    try:
        s.sendall(request_bytes("GET", f"/bytes/{n}", "ecdsa.test", [("Connection", "close")]))
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            assert d
            buf += d
        body = buf.split(b"\r\n\r\n", 1)[1]
        h.update(body)
        got = len(body)
        pauses = 0
        deadline = time.monotonic() + 60
        while got < n and time.monotonic() < deadline:
            if got > (pauses + 1) * (6 << 20) and pauses < 3:
                time.sleep(0.7)       # the socket buffers fill up meanwhile and proxyd must wait
                pauses += 1
            d = s.recv(65536)
            if not d:
                break
            h.update(d)
            got += len(d)
    finally:
        s.close()
    assert got == n and h.hexdigest() == hashlib.sha256(b"x" * n).hexdigest()


# ---- bugs found on the way ----------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["http", "https"])
def test_http10_without_host_to_upstream(proxyd_factory, origin_factory, tls_certs, scheme):
    o = origin_factory(echo=False)
    site = f"""\
site: up
default: true
hosts: [up.test]
tls: {{certificate: self-signed}}
upstreams:
  o:
    servers: [{{address: "{o.address}"}}]
routes:
  - match: {{path_prefix: /}}
    upstream: o
"""
    p = tls_proxyd(proxyd_factory, [site], check_stderr=False)
    before = p.worker_pids()
    req = b"GET / HTTP/1.0\r\n\r\n"
    if scheme == "http":
        data = raw_exchange(p.port, req, timeout=3)
    else:
        s = tls_connect(p.https_port, None)
        try:
            s.sendall(req)
            data, _ = read_to_close(s, 3)
        finally:
            s.close()
    time.sleep(0.3)
    assert p.worker_pids() == before, "the worker died"
    r = parse_response(data)
    assert r is not None and r.status == 200 and r.body == b"x" * 100, data[:300]


def test_admin_connection_not_inherited_by_a_restarted_worker(two_workers):
    p = two_workers
    time.sleep(1.1)                   # past the young-worker back-off: the restart is immediate
    old = p.worker_pids()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(p.admin_socket)
        s.sendall(b"GET /status HTTP/1.1\r\nHost: a\r\n")          # the head is not complete yet
        time.sleep(0.2)                                                 # the master has accepted it
        os.kill(old[0], signal.SIGKILL)
        assert wait_for(lambda: len(p.worker_pids()) == 2 and old[0] not in p.worker_pids(), 5), p.worker_pids()
        s.sendall(b"Connection: close\r\n\r\n")
        t0 = time.monotonic()
        data = b""
        s.settimeout(3)
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                data += d
        except socket.timeout:
            pass
        took = time.monotonic() - t0
    finally:
        s.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert took < 1.0, f"/status answered, but the connection was closed only after {took:.1f} s (or not at all)"


def raw_unix(path, data, timeout):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    out = b""
    try:
        s.connect(path)
        s.sendall(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                d = s.recv(65536)
            except socket.timeout:
                break
            if not d:
                break
            out += d
    finally:
        s.close()
    return out


# ---- testssl.sh ---------------------------------------------------------------------------------------------

def test_testssl_sh(tmp_path):
    """tests/tls/testssl.sh: Debian's testssl.sh against a proxyd it starts (ECDSA self-signed
    and RSA certificate-file sites); fails on vulnerabilities, old protocols, non-FS or
    non-AEAD ciphers."""
    script = ROOT / "tests" / "tls" / "testssl.sh"
    # The script installs Debian's testssl.sh when it is missing and exits 77 when it cannot.
    env = dict(os.environ)
    env.setdefault("PROXYD", str(ROOT / "build" / "asan" / "proxyd"))
    env.setdefault("PROXYCTL", str(ROOT / "build" / "asan" / "proxyctl"))
    env["TESTSSL_OUT"] = str(tmp_path)
    p = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=1500, env=env)
    print(p.stdout)
    if p.returncode == 77:
        pytest.skip("testssl.sh cannot be installed (apt-get install testssl.sh): " + (p.stdout + p.stderr)[-500:])
    assert p.returncode == 0, f"testssl.sh found problems ({p.returncode}):\n{p.stdout[-8000:]}\n{p.stderr[-4000:]}"


# ---- reading: TLS read-ahead ------------------------------------------------------------------

@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_pipelined_requests_beyond_one_buffer_all_answered(mp, version):
    """proxyd reads TLS with read-ahead: bytes OpenSSL already holds do not make the socket
    readable again.  400 pipelined requests (about 40 KiB, more than a 16 KiB input buffer,
    sent as several TLS records in one burst) must all be answered, in order, without the
    client sending anything more."""
    n = 400
    req = b"GET /%d HTTP/1.1\r\nHost: plain.test\r\nUser-Agent: pipelining-test-with-some-padding\r\n\r\n"
    burst = b"".join(req % i for i in range(n))
    assert len(burst) > 2 * 16384
    s = tls_connect(mp.https_port, "plain.test", version=version, timeout=10)
    try:
        s.sendall(burst)
        got, data = 0, b""
        deadline = time.monotonic() + 10
        while got < n and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            got = data.count(b"HTTP/1.1 200 ")
        assert got == n, f"{got} of {n} responses"
        assert data.count(b"site plain") == n
    finally:
        s.close()
