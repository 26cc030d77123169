"""TLS helpers for tests/integration/test_tls.py (and tests/tls/testssl.sh's pytest wrapper).

Builds on proxyd_fixtures.py (its Proxyd, proxyd_factory, origin_factory, parse_response ...),
which it does not change.  Everything here is bounded in time, and every process or thread
it starts is stopped at fixture teardown.

Certificates (all made with the `openssl` command line, in a session-scoped directory):

  tls_certs fixture -> Certs with attributes (each a path string):
      ca, ca_key            test CA "proxyd test CA" (ECDSA P-256)
      other_ca              an unrelated CA (for "wrong ca_file")
      ecdsa, ecdsa_key      leaf for ecdsa.test and *.wild.test, ECDSA P-256, signed by ca
      rsa, rsa_key          leaf for rsa.test, RSA 2048, signed by ca
      backend, backend_key  leaf for IP:127.0.0.1 and DNS:backend.test, signed by ca
      client, client_key    client certificate (clientAuth) "CN=proxyd client", signed by ca
      expired, expired_key  self-signed for expired.test, valid 2020-01-01 .. 2020-02-01
      unrelated_key         an ECDSA key that matches none of the certificates
  make_cert(dir, name, sans, key="ec"|"rsa", ca=None, ...) -> (cert, key) for one-off needs.

Clients:
  tls_client_context(...)     an ssl.SSLContext (no verification unless cafile)
  tls_probe(port, sni, ...)   handshake only -> Handshake(version, cipher, alpn, cert: CertInfo)
  https_request(port, ...)    one request on a new TLS connection -> proxyd_fixtures.Response
  TlsKeepAlive(port, ...)     a keep-alive TLS connection: .request(...) -> Response
  s_client(port, *args, ...)  `openssl s_client` with a request on stdin -> (rc, output)
  cert_info(der) -> CertInfo(subject_cn, sans, key_type)

HTTPS backend:
  https_backend_factory(cert, key, client_ca=None) -> HttpsBackend  (Python http.server behind
      ssl; records SNI names, handshakes, handshake errors and client certificates; GET answers
      a JSON description of the request, GET /bytes/N streams N bytes of 'x').

proxyd with an HTTPS listener:
  tls_proxyd(proxyd_factory, sites, settings=None, workers=1, start=True, check_stderr=True)
      -> Proxyd with .https_port (a free 127.0.0.1 port added to listen.https).
  workers_status(p) -> [(id, pid, alive)] from the admin socket's /status.
"""
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from proxyd_fixtures import free_port, parse_response, request_bytes

OPENSSL = shutil.which("openssl")


def _merge(base, extra):
    out = dict(base)
    for k, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


# ---- certificates ------------------------------------------------------------------------

def openssl(*args, cwd=None, timeout=60, check=True):
    p = subprocess.run([OPENSSL or "openssl", *map(str, args)], cwd=str(cwd) if cwd else None,
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def _newkey_args(key):
    if key == "rsa":
        return ["-newkey", "rsa:2048"]
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]


def make_cert(d, name, sans=(), key="ec", ca=None, days=30, cn=None, usage="serverAuth", is_ca=False):
    """A certificate and key in directory d: (cert_path, key_path).

    sans: entries such as "DNS:a.test" or "IP:127.0.0.1"; ca: (ca_cert, ca_key) to sign
    with, else self-signed; usage: extendedKeyUsage; is_ca: a CA certificate."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    cert, keyf = d / f"{name}.pem", d / f"{name}-key.pem"
    subj = f"/CN={cn or name}"
    ext = []
    if is_ca:
        ext += ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign"]
    else:
        ext += ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
                f"extendedKeyUsage={usage}"]
        if sans:
            ext.append("subjectAltName=" + ",".join(sans))
    if ca is None:
        args = ["req", "-x509", *_newkey_args(key), "-nodes", "-subj", subj, "-days", str(days),
                "-keyout", keyf, "-out", cert]
        for e in ext:
            args += ["-addext", e]
        openssl(*args, cwd=d)
    else:
        csr = d / f"{name}.csr"
        extfile = d / f"{name}.ext"
        extfile.write_text("\n".join(ext) + "\n")
        openssl("req", "-new", *_newkey_args(key), "-nodes", "-subj", subj, "-keyout", keyf, "-out", csr, cwd=d)
        openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-days", str(days),
                "-sha256", "-extfile", extfile, "-out", cert, cwd=d)
    return str(cert), str(keyf)


def make_expired_cert(d, name, host):
    """Self-signed for host, valid 2020-01-01 .. 2020-02-01 (`openssl ca` takes explicit dates,
    as tests/integration/test_cli_diagnostics.py does)."""
    d = Path(d) / f"ca-{name}"
    d.mkdir(parents=True, exist_ok=True)
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
    openssl("req", "-new", *_newkey_args("ec"), "-nodes", "-subj", f"/CN={host}", "-addext",
            f"subjectAltName=DNS:{host}", "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", cwd=d)
    openssl("ca", "-batch", "-config", "ca.cnf", "-selfsign", "-keyfile", f"{name}-key.pem", "-in", f"{name}.csr",
            "-startdate", "20200101000000Z", "-enddate", "20200201000000Z", "-out", f"{name}.pem", cwd=d)
    return str(d / f"{name}.pem"), str(d / f"{name}-key.pem")


class Certs:
    pass


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory):
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("tls-certs")
    c = Certs()
    c.dir = str(d)
    c.ca, c.ca_key = make_cert(d, "ca", cn="proxyd test CA", is_ca=True, days=60)
    c.other_ca, c.other_ca_key = make_cert(d, "other-ca", cn="unrelated CA", is_ca=True, days=60)
    ca = (c.ca, c.ca_key)
    c.ecdsa, c.ecdsa_key = make_cert(d, "ecdsa", ["DNS:ecdsa.test", "DNS:*.wild.test"], "ec", ca, cn="ecdsa.test")
    c.rsa, c.rsa_key = make_cert(d, "rsa", ["DNS:rsa.test"], "rsa", ca, cn="rsa.test")
    c.backend, c.backend_key = make_cert(d, "backend", ["IP:127.0.0.1", "DNS:backend.test"], "ec", ca,
                                         cn="backend.test")
    c.client, c.client_key = make_cert(d, "client", (), "ec", ca, cn="proxyd client", usage="clientAuth")
    c.expired, c.expired_key = make_expired_cert(d, "expired", "expired.test")
    c.unrelated_key = str(d / "unrelated-key.pem")
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", c.unrelated_key)
    return c


class CertInfo:
    def __init__(self, subject_cn, sans, key_type, text):
        self.subject_cn = subject_cn
        self.sans = sans              # ["DNS:a.test", "IP Address:127.0.0.1", ...]
        self.dns = [s[4:] for s in sans if s.startswith("DNS:")]
        self.key_type = key_type      # "ec" | "rsa" | other
        self.text = text

    def __repr__(self):
        return f"<Cert CN={self.subject_cn} SAN={self.sans} {self.key_type}>"


def cert_info(der):
    """Subject CN, SANs and key type of a DER certificate (openssl x509 -text)."""
    p = subprocess.run([OPENSSL or "openssl", "x509", "-inform", "DER", "-noout", "-text"], input=der,
                       capture_output=True, timeout=30)
    text = p.stdout.decode("latin-1")
    m = re.search(r"Subject:.*?CN\s*=\s*([^,\n/]+)", text)
    cn = m.group(1).strip() if m else None
    sans = []
    m = re.search(r"X509v3 Subject Alternative Name:.*?\n\s*(.+)", text)
    if m:
        sans = [s.strip() for s in m.group(1).split(",")]
    alg = re.search(r"Public Key Algorithm:\s*(\S+)", text)
    alg = alg.group(1) if alg else ""
    kt = "ec" if alg == "id-ecPublicKey" else "rsa" if alg == "rsaEncryption" else alg
    return CertInfo(cn, sans, kt, text)


# ---- clients ------------------------------------------------------------------------------

_VERSIONS = {"1.0": ssl.TLSVersion.TLSv1, "1.1": ssl.TLSVersion.TLSv1_1, "1.2": ssl.TLSVersion.TLSv1_2,
             "1.3": ssl.TLSVersion.TLSv1_3}


def tls_client_context(cafile=None, version=None, min_version=None, max_version=None, alpn=None, ciphers=None,
                       cert=None, key=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        ctx.load_verify_locations(cafile)
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if version:
        ctx.minimum_version = ctx.maximum_version = _VERSIONS[version]
    if min_version:
        ctx.minimum_version = _VERSIONS[min_version]
    if max_version:
        ctx.maximum_version = _VERSIONS[max_version]
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if ciphers:
        ctx.set_ciphers(ciphers)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


class Handshake:
    def __init__(self, sock):
        self.version = sock.version()
        self.cipher = sock.cipher()[0]
        self.alpn = sock.selected_alpn_protocol()
        der = sock.getpeercert(binary_form=True)
        self.cert = cert_info(der) if der else None

    def __repr__(self):
        return f"<Handshake {self.version} {self.cipher} alpn={self.alpn} {self.cert}>"


def tls_connect(port, sni=None, timeout=5.0, ctx=None, suppress_ragged_eofs=True, **ctx_args):
    """A connected, handshaken ssl socket to 127.0.0.1:port (SNI sni, or none)."""
    ctx = ctx or tls_client_context(**ctx_args)
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        return ctx.wrap_socket(raw, server_hostname=sni, suppress_ragged_eofs=suppress_ragged_eofs)
    except BaseException:
        raw.close()
        raise


def tls_probe(port, sni=None, timeout=5.0, **ctx_args):
    """Handshake only; returns Handshake (raises ssl.SSLError when refused)."""
    s = tls_connect(port, sni, timeout, **ctx_args)
    try:
        return Handshake(s)
    finally:
        s.close()


def _recv_until_close(s, timeout, limit=1 << 28):
    deadline = time.monotonic() + timeout
    chunks, total = [], 0
    while total < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            d = s.recv(1 << 20)
        except (socket.timeout, ConnectionResetError, ssl.SSLEOFError):
            break
        if not d:
            break
        chunks.append(d)
        total += len(d)
    return b"".join(chunks)


def https_request(port, method="GET", target="/", host="example.test", sni="__host__", headers=(), body=b"",
                  timeout=10.0, **ctx_args):
    """One request on a new TLS connection (Connection: close); returns Response.  sni defaults
    to the Host name; pass sni=None for none."""
    if sni == "__host__":
        sni = host.split(":")[0] if host else None
    hs = list(headers)
    if not any(k.lower() == "connection" for k, _ in hs):
        hs.append(("Connection", "close"))
    s = tls_connect(port, sni, timeout, **ctx_args)
    try:
        s.sendall(request_bytes(method, target, host, hs, body))
        data = _recv_until_close(s, timeout)
    finally:
        s.close()
    r = parse_response(data, head_request=method == "HEAD")
    assert r is not None, f"no response over TLS to {method} {target}: {data[:300]!r}"
    r.handshake_version = None
    return r


class TlsKeepAlive:
    """A keep-alive TLS connection; request() returns one Response (Content-Length framing)."""

    def __init__(self, port, sni=None, timeout=10.0, **ctx_args):
        self.sock = tls_connect(port, sni, timeout, **ctx_args)
        self.timeout = timeout
        self.buf = b""

    def request(self, method="GET", target="/", host="example.test", headers=(), body=b""):
        self.sock.sendall(request_bytes(method, target, host, headers, body))
        deadline = time.monotonic() + self.timeout
        while True:
            r = parse_response(self.buf, head_request=method == "HEAD", eof=False)
            if r is not None and r.complete:
                self.buf = self.buf[r.raw_len:]
                return r
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete response within {self.timeout}s: {self.buf[:300]!r}")
            self.sock.settimeout(left)
            d = self.sock.recv(1 << 20)
            if not d:
                raise ConnectionError(f"closed before a complete response: {self.buf[:300]!r}")
            self.buf += d

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def s_client(port, *args, servername=None, request=None, host=None, timeout=15):
    """`openssl s_client -connect 127.0.0.1:port ARGS`; stdin is an HTTP request (Connection:
    close) when request is a path, else nothing.  Returns (rc, combined output)."""
    cmd = [OPENSSL or "openssl", "s_client", "-connect", f"127.0.0.1:{port}"]
    if servername:
        cmd += ["-servername", servername]
    cmd += list(map(str, args))
    stdin = b""
    if request is not None:
        cmd.append("-ign_eof")
        stdin = (f"GET {request} HTTP/1.1\r\nHost: {host or servername or 'example.test'}\r\n"
                 "Connection: close\r\n\r\n").encode()
    try:
        p = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (e.stderr or b"")
        return -1, out.decode("latin-1") + "\n<s_client timed out>"
    return p.returncode, (p.stdout + p.stderr).decode("latin-1")


def session_line(output):
    """'New' or 'Reused' from s_client's "New, TLSv1.3, Cipher is ..." line (None if absent)."""
    m = re.search(r"^(New|Reused), (TLSv[\d.]+)", output, re.M)
    return m.group(1) if m else None


# ---- HTTPS backend ---------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        b = self.server.backend
        m = re.match(r"^/bytes/(\d+)$", self.path)
        if m:
            n = int(m.group(1))
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            chunk = b"x" * (1 << 16)
            while n:
                k = min(n, len(chunk))
                self.wfile.write(chunk[:k])
                n -= k
            return
        peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        client_cn = None
        if peer:
            for rdn in peer.get("subject", ()):
                for k, v in rdn:
                    if k == "commonName":
                        client_cn = v
        info = {"path": self.path, "headers": [[k, v] for k, v in self.headers.items()],
                "sni": getattr(self.connection, "proxyd_sni", None), "client_cn": client_cn,
                "tls_version": self.connection.version() if isinstance(self.connection, ssl.SSLSocket) else None}
        with b.lock:
            b.requests.append(info)
        body = json.dumps(info).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def finish_request(self, request, client_address):
        b = self.backend
        request.settimeout(10)
        try:
            tls = b.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            with b.lock:
                b.handshake_errors.append(repr(e))
            return
        with b.lock:
            b.handshakes += 1
            if not hasattr(tls, "proxyd_sni"):
                tls.proxyd_sni = None
        try:
            self.RequestHandlerClass(tls, client_address, self)
        except (OSError, ssl.SSLError):
            pass
        finally:
            try:
                tls.close()
            except OSError:
                pass


class HttpsBackend:
    """Python http.server behind TLS on 127.0.0.1:<free port>.

    Attributes: port, address, requests (list of dicts as answered), sni_names (SNI per
    handshake, None when none was sent), handshakes, handshake_errors."""

    def __init__(self, cert, key, client_ca=None):
        self.lock = threading.Lock()
        self.requests = []
        self.sni_names = []
        self.handshakes = 0
        self.handshake_errors = []
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        if client_ca:
            ctx.load_verify_locations(client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED

        def on_sni(sslsock, name, _ctx):
            with self.lock:
                self.sni_names.append(name)
            try:
                sslsock.proxyd_sni = name
            except AttributeError:
                pass
            return None

        ctx.sni_callback = on_sni
        self.ctx = ctx
        self.server = _TlsServer(("127.0.0.1", 0), _Handler)
        self.server.backend = self
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def https_backend_factory():
    made = []

    def make(cert, key, client_ca=None):
        b = HttpsBackend(cert, key, client_ca)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


# ---- proxyd with an HTTPS listener -------------------------------------------------------------

def tls_proxyd(factory, sites=(), settings=None, workers=1, start=True, name=None, check_stderr=True):
    """proxyd (via proxyd_fixtures' proxyd_factory or ModuleEnv-like factory) listening for plain
    HTTP on .port and HTTPS on .https_port (both 127.0.0.1, free ports)."""
    https_port = free_port()
    g = _merge({"listen": {"https": [f"127.0.0.1:{https_port}"]}}, settings or {})
    kw = {"sites": sites, "workers": workers, "start": False, "check_stderr": check_stderr}
    if name:
        kw["name"] = name
    p = factory(g, **kw)
    p.https_port = https_port
    if start:
        p.start()
        wait_tls(p)
    return p


def wait_tls(p, timeout=5.0):
    """Wait until the HTTPS port accepts TCP connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", p.https_port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"HTTPS port {p.https_port} does not accept:\n{p.diagnostics()}")


def admin_get(p, path="/status", timeout=5.0):
    """GET path on p's admin socket; returns (status, body bytes) as soon as Content-Length
    bytes are in (not waiting for the close: see test_tls.py's admin fd leak test)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(p.admin_socket)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".encode())
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = parse_response(data, eof=False)
            if r is not None and r.complete and "content-length" in r.headers:
                return r.status, r.body
            s.settimeout(max(0.01, deadline - time.monotonic()))
            d = s.recv(65536)
            if not d:
                break
            data += d
        r = parse_response(data)
        assert r is not None, f"no admin response to GET {path}: {data[:300]!r}"
        return r.status, r.body
    finally:
        s.close()


def workers_status(p):
    """[(id, pid, alive)] from GET /status on the admin socket."""
    st, body = admin_get(p, "/status")
    assert st == 200, body
    return [(w["id"], w["pid"], w["alive"]) for w in json.loads(body).get("workers", [])]


def tls_site(name, hosts=(), certificate="self-signed", default=False, body=None, extra="", routes=None):
    """A site answering `return: 200 body` (default "site NAME") on every path."""
    text = f"site: {name}\n"
    if default:
        text += "default: true\n"
    if hosts:
        text += "hosts: [" + ", ".join(f'"{h}"' for h in hosts) + "]\n"
    if isinstance(certificate, tuple):
        certificate = f'{{cert_file: "{certificate[0]}", key_file: "{certificate[1]}"}}'
    text += f"tls:\n  certificate: {certificate}\n"
    if extra:
        text += "".join(f"  {l}\n" for l in textwrap.dedent(extra).strip("\n").splitlines())
    text += "routes:\n"
    if routes:
        text += textwrap.indent(textwrap.dedent(routes).strip("\n"), "  ") + "\n"
    text += f'  - match: {{path_prefix: /}}\n    return: {{status: 200, body: "{body or "site " + name}"}}\n'
    return text


def tmpfile(suffix=""):
    fd, path = tempfile.mkstemp(suffix=suffix)
    os.close(fd)
    return path
