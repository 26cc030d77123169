"""Compiler-style diagnostics (SPEC §4): for each class of error, the exact
`FILE:LINE:COL: error: MESSAGE` lines on stderr, exit 1, and an unchanged
store.  Every case runs through both `add-site` and `validate`.

Columns are 1-based and point at the offending node (for a quoted scalar:
its opening quote, except for regex errors, which point at the character
at PCRE2's error offset).

Run with: /usr/bin/python3 -m pytest -q tests/integration/test_cli_diagnostics.py
"""
import shutil
import subprocess
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import GLOBAL_YAML, state, write

FILE = "site.yaml"


@dataclass
class Case:
    id: str
    yaml: str
    expect: list                      # diagnostic lines, in output order (summary added automatically)
    setup: dict = field(default_factory=dict)   # other site files added first: name -> yaml
    validate_bug: str = ""            # reason when `validate` is known to differ (strict xfail)
    bug: str = ""                     # reason when both commands are known wrong (strict xfail)


def y(text):
    text = textwrap.dedent(text)
    return text[1:] if text.startswith("\n") else text


UPSTREAM_SITE = y("""
    site: a
    hosts: [a.example.com]
    upstreams:
      app: {servers: ["127.0.0.1:3000"]}
    routes:
      - match: {path_prefix: /}
    """)          # lines 1-6; line 7+ completes route 1


def up(rest):
    """UPSTREAM_SITE plus route lines (given verbatim) from line 7 on."""
    return UPSTREAM_SITE + rest


RETURN_SITE = y("""
    site: a
    hosts: [a.example.com]
    routes:
    """)           # lines 1-3; line 4+ are routes


def rt(rest):
    return RETURN_SITE + rest


def server(address):
    """A site whose only server address is on line 6, value at column 18."""
    return y(f"""
        site: a
        hosts: [a.example.com]
        upstreams:
          app:
            servers:
              - address: {address}
        routes:
          - match: {{path_prefix: /}}
            upstream: app
        """)


def cert_site(cert, key, hosts="[a.example.com]"):
    """cert_file value on line 5 column 16, key_file value on line 6 column 15."""
    return y(f"""
        site: a
        hosts: {hosts}
        tls:
          certificate:
            cert_file: {cert}
            key_file: {key}
        routes:
          - match: {{path_prefix: /}}
            return: {{status: 200}}
        """)


FIRST = y("""
    site: one
    default: true
    hosts: [a.example.com, "*.w.example.com"]
    routes:
      - match: {path_prefix: /}
        return: {status: 200}
    """)


CASES = [
    # --- YAML syntax
    Case("yaml-syntax-flow", "site: a\nhosts: [a.example.com\nroutes: []\n",
         ["site.yaml:3:7: error: YAML syntax: did not find expected ',' or ']' while parsing a flow sequence"]),
    Case("yaml-syntax-tab", "site: a\n\thosts: [a.example.com]\n",
         ["site.yaml:2:1: error: YAML syntax: found a tab character that violates indentation "
          "while scanning a plain scalar"]),
    Case("yaml-unterminated-quote", 'site: "a\nhosts: [a.example.com]\n',
         ["site.yaml:3:1: error: YAML syntax: found unexpected end of stream while scanning a quoted scalar"]),
    Case("yaml-two-documents", "site: a\nhosts: [a.example.com]\n---\nsite: b\n",
         ["site.yaml:3:1: error: only one YAML document per file"]),
    # --- keys
    Case("unknown-key-suggest", up("    upstreem: app\n"),
         ["site.yaml:7:5: error: unknown key 'upstreem' (did you mean 'upstream'?)"]),
    Case("unknown-top-key-suggest", "site: a\nhosts: [a.example.com]\nroutez: []\n",
         ["site.yaml:3:1: error: unknown key 'routez' (did you mean 'routes'?)"]),
    Case("unknown-key", "site: a\nhosts: [a.example.com]\nfrobnicate: 1\n",
         ["site.yaml:3:1: error: unknown key 'frobnicate'"]),
    Case("duplicate-key", "site: a\nhosts: [a.example.com]\nhosts: [b.example.com]\n",
         ["site.yaml:3:1: error: duplicate key 'hosts' (first defined at line 2)"]),
    Case("missing-hosts", "site: a\n",
         ["site.yaml:1:1: error: site file is missing required key 'hosts'"]),
    # --- node types
    Case("type-scalar-for-list", "site: a\nhosts: a.example.com\n",
         ["site.yaml:2:8: error: 'hosts' must be a list, not a scalar"]),
    Case("type-mapping-for-list", "site: a\nhosts: [a.example.com]\nroutes: {}\n",
         ["site.yaml:3:9: error: 'routes' must be a list, not a mapping"]),
    Case("type-list-for-mapping", "site: a\nhosts: [a.example.com]\nupstreams: []\n",
         ["site.yaml:3:12: error: 'upstreams' must be a mapping, not a list"]),
    Case("type-empty", "site: a\nhosts:\n",
         ["site.yaml:2:7: error: 'hosts' must be a list, not empty"]),
    # --- booleans
    Case("bad-bool", up("    upstream: app\n    websocket: yes\n"),
         ["site.yaml:8:16: error: 'websocket' must be true or false, not 'yes'"]),
    Case("bad-bool-quoted", up('    upstream: app\n    websocket: "true"\n'),
         ["site.yaml:8:16: error: 'websocket' must be true or false, not 'true'"]),
    # --- upstream references
    Case("undefined-upstream-suggest", up("    upstream: ap\n"),
         ["site.yaml:4:3: warning: upstream 'app' is not used by any route",
          "site.yaml:7:15: error: undefined upstream 'ap' (did you mean 'app'?)"]),
    Case("undefined-upstream", up("    upstream: backend\n"),
         ["site.yaml:4:3: warning: upstream 'app' is not used by any route",
          "site.yaml:7:15: error: undefined upstream 'backend'"]),
    # --- CIDRs
    Case("cidr-prefix-too-long", up("    upstream: app\n    allow: [10.0.0.0/33]\n"),
         ["site.yaml:8:13: error: invalid CIDR '10.0.0.0/33': prefix length must be 0..32"]),
    Case("cidr-host-bits", up("    upstream: app\n    allow: [10.0.0.0/8, 10.0.0.1/8]\n"),
         ["site.yaml:8:25: error: invalid CIDR '10.0.0.1/8': address has bits set beyond the prefix length"]),
    Case("cidr-garbage", up("    upstream: app\n    allow: [garbage]\n"),
         ["site.yaml:8:13: error: invalid CIDR 'garbage': not an IPv4 or IPv6 address"]),
    Case("cidr-ipv6", up('    upstream: app\n    allow: ["::1/129", "fe80::1/64"]\n'),
         ["site.yaml:8:13: error: invalid CIDR '::1/129': prefix length must be 0..128",
          "site.yaml:8:24: error: invalid CIDR 'fe80::1/64': address has bits set beyond the prefix length"]),
    # --- durations and sizes
    Case("duration-unit", up("    upstream: app\n    timeouts: {read: 5x}\n"),
         ["site.yaml:8:22: error: invalid duration '5x' for 'read': unknown unit (use ms, s, m, h or d)"]),
    Case("duration-word", up("    upstream: app\n    timeouts: {send: abc}\n"),
         ["site.yaml:8:22: error: invalid duration 'abc' for 'send': expected a number followed by ms, s, m, h or d"]),
    Case("size-unit", up("    upstream: app\n    max_body: 10mb\n"),
         ["site.yaml:8:15: error: invalid size '10mb' for 'max_body': unknown unit (use k, m or g)"]),
    Case("size-word", up("    upstream: app\n    max_body: big\n"),
         ["site.yaml:8:15: error: invalid size 'big' for 'max_body': expected a number optionally followed by k, m or g"]),
    # --- addresses
    Case("address-no-port", server('"127.0.0.1"'),
         ["site.yaml:6:18: error: invalid address '127.0.0.1': missing :port"]),
    Case("address-port-0", server('"127.0.0.1:0"'),
         ["site.yaml:6:18: error: invalid address '127.0.0.1:0': port must be 1..65535"]),
    Case("address-port-70000", server('"127.0.0.1:70000"'),
         ["site.yaml:6:18: error: invalid address '127.0.0.1:70000': port must be 1..65535"]),
    Case("address-ipv6-unbracketed", server('"::1:80"'),
         ["site.yaml:6:18: error: invalid address '::1:80': IPv6 addresses must be written in brackets: [::1]:80"]),
    Case("address-ipv6-no-port", server('"[::1]"'),
         ["site.yaml:6:18: error: invalid address '[::1]': expected [IPv6]:port"]),
    # --- status codes
    Case("return-status-700", rt("  - match: {path_prefix: /}\n    return: {status: 700}\n"),
         ["site.yaml:5:22: error: invalid status code '700' (expected 100..599)"]),
    Case("redirect-status-200", rt("  - match: {path_prefix: /}\n    redirect: {to: /new, status: 200}\n"),
         ["site.yaml:5:34: error: invalid redirect status 200 (expected 301, 302, 303, 307 or 308)"]),
    # --- regexes (PCRE2 message and offset; the column points at the offset)
    Case("regex-plain", rt("  - match: {path_regex: x(abc}\n    return: {status: 404}\n"),
         ["site.yaml:4:30: error: invalid regex 'x(abc': missing closing parenthesis at offset 5"]),
    Case("regex-quoted", rt("  - match: {path_regex: '(abc'}\n    return: {status: 404}\n"),
         ["site.yaml:4:30: error: invalid regex '(abc': missing closing parenthesis at offset 4"]),
    Case("regex-quoted-offset-0", rt('  - match: {path_regex: "*abc"}\n    return: {status: 404}\n'),
         ["site.yaml:4:26: error: invalid regex '*abc': quantifier does not follow a repeatable item at offset 0"]),
    # --- strip_prefix
    Case("strip-prefix-exact", up("    upstream: app\n").replace("path_prefix: /", "path_exact: /a")
         + "    strip_prefix: true\n",
         ["site.yaml:8:19: error: strip_prefix requires a path_prefix match"]),
    # --- zones the global settings do not define
    Case("unknown-rate-limit-zone", up("    upstream: app\n    rate_limit: {zone: api}\n"),
         ["site.yaml:8:24: error: unknown rate-limit zone 'api' (define it under rate_limit_zones in the global settings)"]),
    Case("unknown-cache-zone", up("    upstream: app\n    cache: {zone: app_cache}\n"),
         ["site.yaml:8:19: error: unknown cache zone 'app_cache' (define it under cache_zones in the global settings)"]),
    # --- compression
    Case("compression-bad-bool", up("    upstream: app\ncompression: {gzip: true, zstd: on}\n"),
         ["site.yaml:8:33: error: 'zstd' must be true or false, not 'on'"]),
    Case("compression-level-range", up("    upstream: app\ncompression:\n  gzip: true\n  level: 0\n  zstd_level: 20\n"),
         ["site.yaml:10:10: error: 'level' must be a whole number from 1 to 9, not '0'",
          "site.yaml:11:15: error: 'zstd_level' must be a whole number from 1 to 19, not '20'"]),
    Case("compression-types", up("    upstream: app\ncompression:\n  brotli: true\n  types: [text/html, html, "
                                 "\"application/json; charset=utf-8\", image/*, TEXT/html]\n"),
         ["site.yaml:10:22: error: invalid media type 'html' in 'types': write it as type/subtype, e.g. text/html",
          "site.yaml:10:28: error: invalid media type 'application/json; charset=utf-8' in 'types': write "
          "type/subtype without parameters; it matches whatever parameters a response has",
          "site.yaml:10:72: error: media type 'TEXT/html' is listed twice in 'types' (first at 10:11)"]),
    Case("compression-types-not-a-list", up("    upstream: app\ncompression: {gzip: true, types: text/html}\n"),
         ["site.yaml:8:34: error: 'types' must be a list, not a scalar"]),
    Case("compression-unknown-key", up("    upstream: app\ncompression: {gzip: true, brotli_levl: 5}\n"),
         ["site.yaml:8:27: error: unknown key 'brotli_levl' (did you mean 'brotli_level'?)"]),
    # --- sites against each other
    Case("host-conflict", y("""
        site: two
        hosts:
          - b.example.com
          - a.example.com
        routes:
          - match: {path_prefix: /}
            return: {status: 200}
        """),
         ["site.yaml:4:5: error: host 'a.example.com' is already claimed by site 'one' (first.yaml:3:9)"],
         setup={"first.yaml": FIRST}),
    Case("host-conflict-case-and-wildcard", y("""
        site: two
        hosts: [A.Example.COM, "*.W.example.com"]
        routes:
          - match: {path_prefix: /}
            return: {status: 200}
        """),
         ["site.yaml:2:9: error: host 'a.example.com' is already claimed by site 'one' (first.yaml:3:9)",
          "site.yaml:2:24: error: host '*.w.example.com' is already claimed by site 'one' (first.yaml:3:24)"],
         setup={"first.yaml": FIRST}),
    Case("two-defaults", y("""
        site: two
        default: true
        routes:
          - match: {path_prefix: /}
            return: {status: 200}
        """),
         ["site.yaml:2:10: error: site 'two' is also marked default (site 'one' is the default, first.yaml:2:10)"],
         setup={"first.yaml": FIRST}),
    # --- several errors: all reported, sorted by line
    Case("several-config-errors", y("""
        site: a
        hosts: [a.example.com]
        bogus: 1
        upstreams:
          app: {servers: ["127.0.0.1"]}
        routes:
          - match: {path_prefix: /}
            upstream: app
            timeouts: {read: 5x}
          - match: {path_regex: 'x(', methods: [GET, FETCH]}
            upstream: nope
        compression: {gzip: maybe}
        """),
         ["site.yaml:3:1: error: unknown key 'bogus'",
          "site.yaml:5:19: error: invalid address '127.0.0.1': missing :port",
          "site.yaml:9:22: error: invalid duration '5x' for 'read': unknown unit (use ms, s, m, h or d)",
          "site.yaml:10:28: error: invalid regex 'x(': missing closing parenthesis at offset 2",
          "site.yaml:10:46: error: invalid method 'FETCH' (expected one of: GET, HEAD, POST, PUT, DELETE, PATCH, "
          "OPTIONS, CONNECT, TRACE; did you mean 'PATCH'?)",
          "site.yaml:11:15: error: undefined upstream 'nope'",
          "site.yaml:12:21: error: 'gzip' must be true or false, not 'maybe'"]),
    Case("several-semantic-errors-sorted", y("""
        site: two
        default: true
        hosts: [a.example.com]
        upstreams:
          app: {servers: ["127.0.0.1:1"]}
        routes:
          - match: {path_prefix: /}
            upstream: app
          - match: {path_regex: ab}
            upstream: app
        """),
         ["site.yaml:2:10: error: site 'two' is also marked default (site 'one' is the default, first.yaml:2:10)",
          "site.yaml:3:9: error: host 'a.example.com' is already claimed by site 'one' (first.yaml:3:9)"],
         setup={"first.yaml": FIRST}),
]

CERT_CASES = [
    Case("cert-missing", cert_site("/nonexistent/cert.pem", "{K1}"),
         ["site.yaml:5:16: error: cannot read cert_file '/nonexistent/cert.pem': No such file or directory"]),
    Case("key-missing", cert_site("{C1}", "/nonexistent/key.pem"),
         ["site.yaml:6:15: error: cannot read key_file '/nonexistent/key.pem': No such file or directory"]),
    Case("cert-not-pem", cert_site("{JUNK}", "{K1}"),
         ["site.yaml:5:16: error: cert_file '{JUNK}' holds no PEM certificate"]),
    Case("cert-key-mismatch", cert_site("{C1}", "{K2}"),
         ["site.yaml:6:15: error: key_file '{K2}' does not match cert_file '{C1}'"]),
    Case("cert-expired", cert_site("{EXPIRED}", "{EXPIRED_KEY}"),
         ["site.yaml:5:16: error: certificate '{EXPIRED}' has expired"]),
    Case("cert-not-covering-host", cert_site("{C1}", "{K1}", hosts="[a.example.com, b.example.com]"),
         ["site.yaml:5:16: error: certificate '{C1}' does not cover host 'b.example.com'"]),
    Case("cert-not-covering-wildcard", cert_site("{C1}", "{K1}", hosts='["*.example.com"]'),
         ["site.yaml:5:16: error: certificate '{C1}' does not cover host '*.example.com'"]),
]


# ---------------------------------------------------------------- certificates

def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=str(cwd), check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """C1/K1: self-signed for a.example.com and *.w.example.com; K2: an unrelated key;
    EXPIRED/EXPIRED_KEY: valid 2020-01-01 .. 2020-02-01 (made with `openssl ca`,
    which takes explicit dates); JUNK: a text file."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("certs")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=x",
             "-addext", "subjectAltName=DNS:a.example.com,DNS:*.w.example.com", "-days", "30",
             "-keyout", "k1.pem", "-out", "c1.pem", cwd=d)
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "k2.pem", cwd=d)
    (d / "index.txt").write_text("")
    (d / "serial").write_text("01\n")
    (d / "ca.cnf").write_text(textwrap.dedent("""\
        [ca]
        default_ca = d
        [d]
        database = index.txt
        new_certs_dir = .
        serial = serial
        default_md = sha256
        policy = p
        copy_extensions = copy
        unique_subject = no
        [p]
        commonName = supplied
        """))
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=x",
             "-addext", "subjectAltName=DNS:a.example.com", "-keyout", "expired-key.pem", "-out", "expired.csr",
             cwd=d)
    _openssl("ca", "-batch", "-config", "ca.cnf", "-selfsign", "-keyfile", "expired-key.pem", "-in", "expired.csr",
             "-startdate", "20200101000000Z", "-enddate", "20200201000000Z", "-out", "expired.pem", cwd=d)
    (d / "junk.pem").write_text("not a certificate\n")
    return {"C1": str(d / "c1.pem"), "K1": str(d / "k1.pem"), "K2": str(d / "k2.pem"),
            "EXPIRED": str(d / "expired.pem"), "EXPIRED_KEY": str(d / "expired-key.pem"),
            "JUNK": str(d / "junk.pem")}


def fill(text, certs):
    for k, v in (certs or {}).items():
        text = text.replace("{" + k + "}", v)
    return text


# ---------------------------------------------------------------- the table

def summary(lines):
    e = sum(": error: " in ln for ln in lines)
    w = sum(": warning: " in ln for ln in lines)
    return f"{e} error{'' if e == 1 else 's'}, {w} warning{'' if w == 1 else 's'}"


def params(cases):
    out = []
    for c in cases:
        for cmd in ("add-site", "validate"):
            marks = []
            reason = c.bug or (c.validate_bug if cmd == "validate" else "")
            if reason:
                marks.append(pytest.mark.xfail(strict=True, reason=reason))
            out.append(pytest.param(c, cmd, id=f"{c.id}-{cmd}", marks=marks))
    return out


def check_case(case, cmd, proxyctl, db, tmp_path, certs=None):
    for name, text in case.setup.items():
        write(tmp_path, name, text, dedent=False)
        rc, out, err = proxyctl("add-site", name)
        assert rc == 0, err
    write(tmp_path, FILE, fill(case.yaml, certs), dedent=False)
    before = state(db)
    rc, out, err = proxyctl(cmd, FILE)
    expect = [fill(ln, certs) for ln in case.expect]
    assert err.splitlines() == expect + [summary(expect)]
    assert rc == 1
    assert out == ""
    assert state(db) == before


@pytest.mark.parametrize("case,cmd", params(CASES))
def test_diagnostic(case, cmd, store, proxyctl, db, tmp_path):
    check_case(case, cmd, proxyctl, db, tmp_path)


@pytest.mark.parametrize("case,cmd", params(CERT_CASES))
def test_cert_diagnostic(case, cmd, certs, store, proxyctl, db, tmp_path):
    check_case(case, cmd, proxyctl, db, tmp_path, certs)


def test_certificate_files_accepted_and_imported(certs, store, proxyctl, db, tmp_path):
    from conftest import sql
    write(tmp_path, FILE, cert_site(certs["C1"], certs["K1"], hosts='[a.example.com, "*.w.example.com"]'),
          dedent=False)
    assert proxyctl("validate", FILE)[:3] == (0, "1 file valid\n", "")
    rc, out, err = proxyctl("add-site", FILE)
    assert rc == 0 and err == ""
    rows = sql(db, "SELECT site, hosts, cert_pem, key_pem, source FROM certificates")
    assert rows == [("a", "a.example.com *.w.example.com", Path(certs["C1"]).read_text(),
                     Path(certs["K1"]).read_text(), "files")]


def test_diagnostics_in_apply_name_the_file(store, proxyctl, db, tmp_path):
    """apply reports each file's problems with that file's path, all of them."""
    write(tmp_path, "sites/a.yaml", "site: a\nhosts: [a.example.com]\nfrobnicate: 1\n")
    write(tmp_path, "sites/b.yaml", "site: b\nhosts: b.example.com\n")
    before = state(db)
    rc, out, err = proxyctl("apply", "sites")
    assert rc == 1
    assert err.splitlines() == ["sites/a.yaml:3:1: error: unknown key 'frobnicate'",
                                "sites/b.yaml:2:8: error: 'hosts' must be a list, not a scalar",
                                "2 errors, 0 warnings"]
    assert state(db) == before


# ---------------------------------------------------------------- warnings only

SHADOWED = y("""
    site: a
    hosts: [a.example.com]
    upstreams:
      app: {servers: ["127.0.0.1:3000"]}
    routes:
      - match: {path_prefix: /api/}
        upstream: app
      - match: {path_prefix: /api/v1/}
        upstream: app
      - match: {path_exact: /api/x, methods: [GET]}
        upstream: app
      - match: {path_regex: ^/api/}
        upstream: app
      - match: {path_prefix: /, methods: [GET]}
        upstream: app
      - match: {path_prefix: /other/, methods: [GET, POST]}
        upstream: app
      - match: {path_exact: /other/x, methods: [GET]}
        upstream: app
      - match: {}
        upstream: app
      - match: {path_prefix: /last/}
        upstream: app
    """)

SHADOWED_WARNINGS = [
    "site.yaml:8:5: warning: route can never match (shadowed by line 6)",
    "site.yaml:10:5: warning: route can never match (shadowed by line 6)",
    "site.yaml:18:5: warning: route can never match (shadowed by line 14)",
    "site.yaml:22:5: warning: route can never match (shadowed by line 20)",
]


def test_shadowed_route_is_a_warning(store, proxyctl, db, tmp_path):
    write(tmp_path, FILE, SHADOWED, dedent=False)
    rc, out, err = proxyctl("validate", FILE)
    assert (rc, out) == (0, "1 file valid\n")
    assert err.splitlines() == SHADOWED_WARNINGS
    rc, out, err = proxyctl("add-site", FILE)
    assert rc == 0
    assert out.startswith("site 'a' added; generation 2 active (1 site, ")
    assert err.splitlines() == SHADOWED_WARNINGS
    rc, shown, _ = proxyctl("show-site", "a")
    assert shown == SHADOWED
    # The table keeps file order: the shadowed routes are there but never chosen.
    rc, out, _ = proxyctl("route-test", "http://a.example.com/api/v1/x")
    assert "route 1 (site.yaml:6:5)" in out
    rc, out, _ = proxyctl("route-test", "http://a.example.com/last/x", "-X", "POST")
    assert "route 8 (site.yaml:20:5): any path" in out
