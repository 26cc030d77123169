"""Response compression (SPEC §9 "Compression", issue 14, docs/compression.md).

Real proxyd, a real Python origin and static files; every compressed body is decoded
back with Debian's decoders (python3 gzip/zlib, python3-brotli, python3-zstandard and
the zstd command) and compared with the origin's bytes.  Covered: each coding, the
Accept-Encoding negotiation (weights, "*", identity, q=0, server preference), the
site's types and min_length (known and unknown length), every exclusion (encoded,
no-transform, Range/206, HEAD, 204, 304), Vary merging, weak ETags, framing on
HTTP/1.1 keep-alive and HTTP/1.0, streaming at the origin's pace (the first compressed
bytes decode before the origin finishes, driven by events), backpressure with a client
that does not read, a cut upstream, precompressed static files, and the 1 GiB download
in bounded memory.

Run with: PROXYCTL=$PWD/build/asan/proxyctl PROXYD=$PWD/build/asan/proxyd \\
    /usr/bin/python3 -m pytest -q tests/integration/test_compression.py
"""
import base64
import gzip
import os
import random
import shutil
import socket
import subprocess
import threading
import time
import zlib

import brotli
import pytest
import zstandard

from proxyd_fixtures import (ModuleEnv, backend_factory, connect, http, keepalive_socket, origin_factory,  # noqa: F401
                             parse_response, proxyd_factory, read_response, request_bytes, vm_rss_kib)

CODINGS = ["gzip", "br", "zstd"]
TYPES = "[text/html, text/plain, application/json, text/event-stream, text/javascript, text/css]"


def make_text(n, seed=7):
    """n bytes of text that compresses like a page (words, tags, numbers)."""
    rnd = random.Random(seed)
    words = ["<div class=\"item\">", "</div>", "proxy", "stream", "compress", "the", "of", "and", "<a href=\"/x\">",
             "</a>", "price", "name", "description", "\n", "zstd", "brotli", "gzip", "data", "value", "id"]
    out = []
    size = 0
    while size < n:
        w = rnd.choice(words) if rnd.random() < 0.8 else str(rnd.randrange(100000))
        out.append(w)
        size += len(w) + 1
    return " ".join(out).encode()[:n]


def make_noise(n, seed=9):
    """n bytes of base64 text: compresses to about 3/4, so bodies stay large."""
    raw = random.Random(seed).randbytes(n * 3 // 4 + 3)
    return base64.b64encode(raw)[:n]


TEXT = make_text(300_000)
NOISE = make_noise(8 << 20)


def decode(coding, data):
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        return brotli.decompress(data)
    if coding == "zstd":
        d = zstandard.ZstdDecompressor().decompressobj()
        out = d.decompress(data)
        assert d.eof, "zstd frame not finished"
        return out
    assert coding is None
    return data


class StreamDecoder:
    """Incremental decoding of one coding."""

    def __init__(self, coding):
        self.coding = coding
        if coding == "gzip":
            self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "br":
            self.d = brotli.Decompressor()
        else:
            self.d = zstandard.ZstdDecompressor().decompressobj()

    def feed(self, data):
        if not data:
            return b""
        return self.d.process(data) if self.coding == "br" else self.d.decompress(data)

    def finished(self):
        if self.coding == "br":
            return self.d.is_finished()
        return self.d.eof


# ---- the origin -------------------------------------------------------------------------

def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


class Origin:
    """Routes by path; HEAD gets the head only.  events: name -> Event a /stream waits on."""

    def __init__(self):
        self.events = {}

    def send(self, req, conn, status=200, body=b"", headers=(), reason="OK", length=True):
        h = f"HTTP/1.1 {status} {reason}\r\n"
        if length:
            h += f"Content-Length: {len(body)}\r\n"
        for k, v in headers:
            h += f"{k}: {v}\r\n"
        conn.send(h.encode() + b"\r\n" + (b"" if req.method == "HEAD" else body))
        return True

    def __call__(self, req, conn):
        path, _, query = req.target.partition("?")
        parts = path.strip("/").split("/")
        kind, arg = parts[0], parts[1] if len(parts) > 1 else ""
        html = ("Content-Type", "text/html; charset=utf-8")
        if kind == "html":
            return self.send(req, conn, body=TEXT[:int(arg)], headers=[html])
        if kind == "type":          # /type/<n>?ct=...
            ct = query.partition("=")[2].replace("%2F", "/").replace("+", " ")
            return self.send(req, conn, body=TEXT[:int(arg)], headers=[("Content-Type", ct)])
        if kind == "noise":
            return self.send(req, conn, body=NOISE[:int(arg)], headers=[("Content-Type", "text/plain")])
        if kind == "chunked":
            n = int(arg)
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n")
            if req.method != "HEAD":
                for i in range(0, n, 1000):
                    conn.send(chunk(TEXT[i:min(n, i + 1000)]))
                conn.send(b"0\r\n\r\n")
            return True
        if kind == "encoded":
            return self.send(req, conn, body=gzip.compress(TEXT[:5000]),
                             headers=[html, ("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")])
        if kind == "notransform":
            return self.send(req, conn, body=TEXT[:5000], headers=[html, ("Cache-Control", "public, No-Transform")])
        if kind == "cachecontrol":  # no-transform only inside a quoted string: not the directive
            return self.send(req, conn, body=TEXT[:5000],
                             headers=[html, ("Cache-Control", 'private="no-transform, x", max-age=5')])
        if kind == "etag":
            return self.send(req, conn, body=TEXT[:5000], headers=[html, ("ETag", '"v1"')])
        if kind == "weaketag":
            return self.send(req, conn, body=TEXT[:5000], headers=[html, ("ETag", 'W/"v1"')])
        if kind == "vary":          # /vary/<value>[/<value>...]: one Vary field each
            vs = [("Vary", v.replace("%20", " ").replace("%2C", ",").replace("%2A", "*")) for v in parts[1:]]
            return self.send(req, conn, body=TEXT[:5000], headers=[html, *vs])
        if kind == "partial":
            return self.send(req, conn, 206, TEXT[:1000], [html, ("Content-Range", "bytes 0-999/5000")],
                             "Partial Content")
        if kind == "nocontent":
            conn.send(b"HTTP/1.1 204 No Content\r\nContent-Type: text/html\r\n\r\n")
            return True
        if kind == "notmodified":
            conn.send(b'HTTP/1.1 304 Not Modified\r\nContent-Type: text/html\r\nETag: "v1"\r\n\r\n')
            return True
        if kind == "stream":        # /stream/<event>?ct=...: a first chunk, the event, the rest
            ev = self.events[arg]
            ct = query.partition("=")[2].replace("%2F", "/") or "text/html"
            conn.send(f"HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            conn.send(chunk(STREAM_FIRST))
            ev.wait(30)
            conn.send(chunk(STREAM_REST) + b"0\r\n\r\n")
            return True
        if kind == "badchunk":      # a head, then a chunk size that is not one
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            return False
        if kind == "cut":           # promises 100000 bytes, sends half and closes
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 100000\r\n\r\n" + TEXT[:50000])
            return False
        return self.send(req, conn, 404, b"no such test path\n", [("Content-Type", "text/plain")], "Not Found")


STREAM_FIRST = b"data: the first event, sent before the origin waits\n\n"
STREAM_REST = b"data: the second event\n\n" + TEXT[:20000]


# ---- the environment -----------------------------------------------------------------------

def write_static(root):
    files = {
        "page.html": TEXT[:50000],
        "app.js": TEXT[:30000],
        "style.css": TEXT[:20000],
        "font.woff2": bytes(random.Random(3).randbytes(4000)),
        "big.txt": NOISE[:3 << 20],
        "tiny.txt": b"tiny\n",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    variants = {
        "app.js.br": brotli.compress(files["app.js"]),
        "app.js.gz": gzip.compress(files["app.js"]),
        "style.css.gz": gzip.compress(files["style.css"]),
        "font.woff2.br": brotli.compress(files["font.woff2"]),
    }
    for name, data in variants.items():
        (root / name).write_bytes(data)
    # style.css.gz is older than style.css: stale, never served
    old = os.stat(root / "style.css").st_mtime - 100
    os.utime(root / "style.css.gz", (old, old))
    return files, variants


def site(name, backend, root, compression):
    text = (f"site: {name}\nhosts: [{name}.test]\n"
            f"upstreams:\n  app: {{servers: [{{address: \"{backend}\"}}]}}\n"
            f"routes:\n"
            f"  - match: {{path_prefix: /static/}}\n    static: {{root: \"{root}\"}}\n    strip_prefix: true\n"
            f"  - match: {{path_prefix: /}}\n    upstream: app\n    timeouts: {{read: 30s, send: 30s}}\n")
    if compression:
        text += f"compression: {compression}\n"
    return text


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("compression")
    root = base / "www"
    root.mkdir()
    e = ModuleEnv(base)
    e.files, e.variants = write_static(root)
    e.origin = Origin()
    backend = e.backend(e.origin)
    e.p = e.proxyd(sites=[
        site("all", backend.address, root, f"{{gzip: true, brotli: true, zstd: true, types: {TYPES}}}"),
        site("gz", backend.address, root, f"{{gzip: true, level: 9, types: {TYPES}}}"),
        site("tiny", backend.address, root, "{zstd: true, min_length: 0, types: [text/html, text/plain]}"),
        site("off", backend.address, root, None),
    ])
    yield e
    e.stop()


def get(e, path, host="all", ae=None, method="GET", headers=(), version="HTTP/1.1"):
    hs = list(headers)
    if ae is not None:
        hs.append(("Accept-Encoding", ae))
    return http(e.p.port, method, path, f"{host}.test", hs, version=version, timeout=20)


def coding_of(r):
    return r.header("content-encoding")


def assert_compressed(r, coding, want):
    assert r.status == 200, r
    assert coding_of(r) == coding, r
    assert r.header("content-length") is None, r
    assert r.header("transfer-encoding") == "chunked", r
    assert r.header_all("vary") == ["Accept-Encoding"], r
    assert r.complete
    assert decode(coding, r.body) == want


def assert_identity(r, want, vary):
    assert r.status == 200, r
    assert coding_of(r) is None, r
    assert r.header("content-length") == str(len(want)), r
    assert r.body == want
    assert (r.header_all("vary") == ["Accept-Encoding"]) == vary, r


# ---- each coding, decoded back -------------------------------------------------------------

@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("size", [256, 5000, 200_000])
def test_each_coding_round_trips(env, coding, size):
    r = get(env, f"/html/{size}", ae=coding)
    assert_compressed(r, coding, TEXT[:size])
    if size == 200_000:
        assert len(r.body) < size / 2


@pytest.mark.parametrize("coding", CODINGS)
def test_incompressible_body_round_trips(env, coding):
    """Output larger than one buffer per input piece: nothing is lost or reordered."""
    r = get(env, f"/noise/{1 << 20}", ae=coding)
    assert_compressed(r, coding, NOISE[:1 << 20])


def test_zstd_command_line_decodes(env, tmp_path):
    """The Debian zstd tool reads what proxyd writes (as python3-zstandard does)."""
    if shutil.which("zstd") is None:
        pytest.skip("zstd is not installed (packaging/install-deps.sh installs it)")
    r = get(env, "/chunked/100000", ae="zstd")
    assert coding_of(r) == "zstd"
    (tmp_path / "body.zst").write_bytes(r.body)
    out = subprocess.run(["zstd", "-q", "-d", "-c", str(tmp_path / "body.zst")], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == TEXT[:100000]


# ---- negotiation -----------------------------------------------------------------------------

@pytest.mark.parametrize("ae, want", [
    ("gzip, deflate, br, zstd", "br"),                  # server preference at equal weight
    ("gzip, zstd", "zstd"),
    ("gzip", "gzip"),
    ("x-gzip", "gzip"),
    ("*", "br"),
    ("br;q=0.5, gzip", "gzip"),                         # the client's weights come first
    ("br;q=0.1, zstd;q=0.2, gzip;q=0.3", "gzip"),
    ("br;q=0, *", "zstd"),                              # q=0 refuses
    ("gzip;q=0", None),
    ("*;q=0", None),
    ("identity;q=0, *;q=0", None),                      # nothing acceptable: identity all the same
    ("gzip;q=0.5, identity", None),                     # identity weighs more
    ("gzip;q=0.5, identity;q=0.5", "gzip"),
    ("identity", None),
    ("", None),
    ("compress, deflate", None),
    ("br;q=2, gzip", "gzip"),                           # a bad element is skipped, the rest counts
    ("GZIP;Q=1.0", "gzip"),
])
def test_negotiation(env, ae, want):
    r = get(env, "/html/5000", ae=ae)
    assert coding_of(r) == want, (ae, r)
    assert decode(want, r.body) == TEXT[:5000]
    assert r.header_all("vary") == ["Accept-Encoding"]


def test_no_accept_encoding_is_identity(env):
    assert_identity(get(env, "/html/5000"), TEXT[:5000], vary=True)


def test_several_accept_encoding_fields(env):
    r = get(env, "/html/5000", headers=[("Accept-Encoding", "gzip;q=0.5"), ("Accept-Encoding", "zstd")])
    assert coding_of(r) == "zstd"


def test_site_codings_only(env):
    """A site with gzip alone never sends br or zstd; its level applies (9 here)."""
    r = get(env, "/html/200000", host="gz", ae="br, zstd, gzip;q=0.1")
    assert_compressed(r, "gzip", TEXT[:200000])
    r = get(env, "/html/5000", host="gz", ae="br, zstd")
    assert_identity(r, TEXT[:5000], vary=True)


def test_site_without_compression(env):
    r = get(env, "/html/200000", host="off", ae="gzip, br, zstd")
    assert_identity(r, TEXT[:200000], vary=False)


# ---- types and min_length --------------------------------------------------------------------

@pytest.mark.parametrize("ctype, compressed", [
    ("text/html", True),
    ("text/html; charset=utf-8", True),
    ("TEXT/HTML;charset=UTF-8", True),
    ("application/json", True),
    ("image/png", False),
    ("application/octet-stream", False),
    ("text/htmlx", False),
])
def test_types(env, ctype, compressed):
    r = get(env, f"/type/5000?ct={ctype.replace('/', '%2F').replace(' ', '+')}", ae="gzip")
    assert r.header("content-type") == ctype
    if compressed:
        assert_compressed(r, "gzip", TEXT[:5000])
    else:
        assert_identity(r, TEXT[:5000], vary=False)


def test_min_length_known_length(env):
    """Content-Length below min_length (256): sent as it is, and nothing varies."""
    assert_identity(get(env, "/html/255", ae="gzip"), TEXT[:255], vary=False)
    assert_compressed(get(env, "/html/256", ae="gzip"), "gzip", TEXT[:256])


def test_min_length_unknown_length_compresses(env):
    """A chunked body has no length to compare: it is compressed, however short."""
    r = get(env, "/chunked/100", ae="gzip")
    assert_compressed(r, "gzip", TEXT[:100])


def test_min_length_zero(env):
    r = get(env, "/html/1", host="tiny", ae="zstd")
    assert_compressed(r, "zstd", TEXT[:1])


# ---- exclusions ---------------------------------------------------------------------------------

def test_already_encoded_passes_through(env):
    r = get(env, "/encoded", ae="gzip, br")
    assert r.status == 200
    assert coding_of(r) == "gzip"
    assert r.header("content-length") == str(len(r.body))
    assert r.header_all("vary") == ["Accept-Encoding"]
    assert gzip.decompress(r.body) == TEXT[:5000]     # once: not compressed again


def test_no_transform(env):
    assert_identity(get(env, "/notransform", ae="gzip"), TEXT[:5000], vary=False)


def test_no_transform_inside_a_quoted_string_does_not_count(env):
    assert_compressed(get(env, "/cachecontrol", ae="gzip"), "gzip", TEXT[:5000])


def test_partial_content_from_upstream(env):
    r = get(env, "/partial", ae="gzip", headers=[("Range", "bytes=0-999")])
    assert r.status == 206
    assert coding_of(r) is None
    assert r.header("content-range") == "bytes 0-999/5000"
    assert r.body == TEXT[:1000]


def test_head_has_no_body_and_no_coding(env):
    r = get(env, "/html/5000", ae="gzip", method="HEAD")
    assert r.status == 200
    assert coding_of(r) is None
    assert r.header("content-length") == "5000"
    assert r.header_all("vary") == ["Accept-Encoding"]
    assert r.body == b""


@pytest.mark.parametrize("path, status", [("/nocontent", 204), ("/notmodified", 304)])
def test_no_body_statuses(env, path, status):
    r = get(env, path, ae="gzip")
    assert r.status == status
    assert coding_of(r) is None
    assert r.header("transfer-encoding") is None
    assert r.body == b""


def test_error_answers_below_min_length_stay_plain(env):
    r = get(env, "/nope", ae="gzip")
    assert r.status == 404
    assert coding_of(r) is None


# ---- Vary and ETag ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, want", [
    (["Cookie"], ["Cookie, Accept-Encoding"]),
    (["accept-encoding"], ["accept-encoding"]),
    (["Cookie,%20Accept-Encoding"], ["Cookie, Accept-Encoding"]),
    (["*"], ["*"]),
    (["Cookie", "User-Agent"], ["Cookie, Accept-Encoding", "User-Agent"]),
    (["User-Agent", "Accept-Encoding"], ["User-Agent", "Accept-Encoding"]),
])
def test_vary_merged_never_twice(env, fields, want):
    r = get(env, "/vary/" + "/".join(fields), ae="br")
    assert coding_of(r) == "br"
    assert r.header_all("vary") == want
    assert decode("br", r.body) == TEXT[:5000]


def test_etag_becomes_weak(env):
    r = get(env, "/etag", ae="zstd")
    assert coding_of(r) == "zstd"
    assert r.header("etag") == 'W/"v1"'
    r = get(env, "/etag", ae="identity")
    assert r.header("etag") == '"v1"'


def test_weak_etag_stays(env):
    r = get(env, "/weaketag", ae="gzip")
    assert coding_of(r) == "gzip"
    assert r.header_all("etag") == ['W/"v1"']


# ---- framing -------------------------------------------------------------------------------------------

def test_http10_is_close_delimited(env):
    r = get(env, "/html/20000", ae="gzip", version="HTTP/1.0")
    assert r.status == 200
    assert coding_of(r) == "gzip"
    assert r.header("content-length") is None
    assert r.header("transfer-encoding") is None
    assert r.header("connection") == "close"
    assert gzip.decompress(r.body) == TEXT[:20000]


def test_keep_alive_mixes_compressed_and_plain(env):
    s = keepalive_socket(env.p.port, timeout=20)
    try:
        for coding, path, want in [("gzip", "/html/30000", TEXT[:30000]), ("br", "/chunked/7000", TEXT[:7000]),
                                   (None, "/html/30000", TEXT[:30000]), ("zstd", "/noise/100000", NOISE[:100000]),
                                   ("gzip", "/static/page.html", env.files["page.html"])]:
            hs = [("Accept-Encoding", coding)] if coding else []
            s.sendall(request_bytes("GET", path, "all.test", hs))
            r = read_response(s, timeout=20)
            assert coding_of(r) == coding, (path, r)
            assert decode(coding, r.body) == want
    finally:
        s.close()


# ---- streaming at the origin's pace -------------------------------------------------------------------

class ChunkedReader:
    """Reads a response head, then its chunked body piece by piece as it arrives."""

    def __init__(self, sock, timeout=10.0):
        self.s = sock
        self.deadline = time.monotonic() + timeout
        self.buf = b""
        self.done = False
        while b"\r\n\r\n" not in self.buf:
            self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.head = parse_response(head + b"\r\n\r\n", head_request=True)

    def _recv(self):
        left = self.deadline - time.monotonic()
        assert left > 0, f"nothing more within the time allowed; have {self.buf[:200]!r}"
        self.s.settimeout(left)
        d = self.s.recv(65536)
        assert d, "connection closed early"
        self.buf += d

    def read_some(self):
        """The chunk data that can be had now (waits for at least one chunk)."""
        out = b""
        while not out and not self.done:
            while True:
                i = self.buf.find(b"\r\n")
                if i < 0:
                    break
                size = int(self.buf[:i].split(b";")[0], 16)
                if len(self.buf) < i + 2 + size + 2:
                    break
                if size == 0:
                    self.done = True
                    break
                out += self.buf[i + 2:i + 2 + size]
                self.buf = self.buf[i + 2 + size + 2:]
            if not out and not self.done:
                self._recv()
        return out


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("ctype", ["text/html", "text/event-stream"])
def test_streaming_follows_the_origin(env, coding, ctype):
    """The origin sends its first event and waits: the client decodes that event while the
    origin is still waiting (the compressor was flushed), then the rest once it goes on."""
    name = f"{coding}-{ctype.replace('/', '-')}"
    ev = env.origin.events[name] = threading.Event()
    s = connect(env.p.port, timeout=15)
    try:
        s.sendall(request_bytes("GET", f"/stream/{name}?ct={ctype.replace('/', '%2F')}", "all.test",
                                [("Accept-Encoding", coding), ("Connection", "close")]))
        rd = ChunkedReader(s, timeout=15)
        assert rd.head.status == 200
        assert rd.head.header("content-encoding") == coding
        dec = StreamDecoder(coding)
        got = b""
        while len(got) < len(STREAM_FIRST):
            got += dec.feed(rd.read_some())
        assert got == STREAM_FIRST
        assert not ev.is_set()        # the origin has not sent the rest: nothing waited for it
        ev.set()
        while not rd.done:
            got += dec.feed(rd.read_some())
        assert got == STREAM_FIRST + STREAM_REST
        assert dec.finished()
    finally:
        ev.set()
        s.close()


# ---- backpressure and failures ----------------------------------------------------------------------------

def read_all_slowly(port, path, host, ae, pause=0.5):
    """Request path, read nothing for `pause` seconds (proxyd fills the socket and must hold
    back), then read the whole response."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(60)
    s.connect(("127.0.0.1", port))
    try:
        s.sendall(request_bytes("GET", path, host, [("Accept-Encoding", ae), ("Connection", "close")]))
        time.sleep(pause)
        data = b""
        while True:
            d = s.recv(1 << 16)
            if not d:
                break
            data += d
    finally:
        s.close()
    r = parse_response(data)
    assert r is not None and r.complete, data[:300]
    return r


@pytest.mark.parametrize("coding", CODINGS)
def test_client_that_does_not_read_proxy(env, coding):
    r = read_all_slowly(env.p.port, f"/noise/{8 << 20}", "all.test", coding)
    assert coding_of(r) == coding
    assert decode(coding, r.body) == NOISE[:8 << 20]


@pytest.mark.parametrize("coding", CODINGS)
def test_client_that_does_not_read_static(env, coding):
    r = read_all_slowly(env.p.port, "/static/big.txt", "all.test", coding)
    assert coding_of(r) == coding
    assert decode(coding, r.body) == env.files["big.txt"]


def test_upstream_cut_mid_body_closes(env):
    """The upstream closes half-way: the client sees the connection end, never a complete
    compressed body, and proxyd goes on serving."""
    data = b""
    s = connect(env.p.port, timeout=20)
    try:
        s.sendall(request_bytes("GET", "/cut", "all.test", [("Accept-Encoding", "gzip")]))
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
    except ConnectionResetError:
        pass
    finally:
        s.close()
    r = parse_response(data, eof=True)
    assert r is not None and r.status == 200 and not r.complete
    assert_compressed(get(env, "/html/5000", ae="gzip"), "gzip", TEXT[:5000])


def test_bad_body_right_after_the_head_is_a_502(env):
    """The compressed head was queued but nothing left: the answer is taken back (with its
    compressor) and a 502 goes instead."""
    r = get(env, "/badchunk", ae="gzip")
    assert r.status == 502
    assert coding_of(r) is None
    assert_compressed(get(env, "/html/5000", ae="gzip"), "gzip", TEXT[:5000])


# ---- static files --------------------------------------------------------------------------------------------

def test_static_on_the_fly(env):
    for coding in CODINGS:
        r = get(env, "/static/page.html", ae=coding)
        assert_compressed(r, coding, env.files["page.html"])
        assert r.header("etag").startswith('W/"')
        assert r.header("accept-ranges") is None
        assert r.header("content-type") == "text/html; charset=utf-8"
    # the weak tag a client keeps from a compressed answer revalidates it
    r304 = get(env, "/static/page.html", ae="gzip", headers=[("If-None-Match", r.header("etag"))])
    assert r304.status == 304


@pytest.mark.parametrize("coding, name", [("br", "app.js.br"), ("gzip", "app.js.gz")])
def test_static_precompressed(env, coding, name):
    r = get(env, "/static/app.js", ae=f"{coding}, identity;q=0.5")
    assert r.status == 200
    assert coding_of(r) == coding
    assert r.body == env.variants[name]                       # the file's bytes, as they are
    assert r.header("content-length") == str(len(env.variants[name]))
    assert r.header("content-type") == "text/javascript; charset=utf-8"
    assert r.header_all("vary") == ["Accept-Encoding"]
    assert r.header("accept-ranges") is None
    assert decode(coding, r.body) == env.files["app.js"]
    etag = r.header("etag")
    assert etag.startswith('"') and etag != get(env, "/static/app.js").header("etag")
    # the copy's own validator answers a conditional request
    r304 = get(env, "/static/app.js", ae=coding, headers=[("If-None-Match", etag)])
    assert r304.status == 304
    assert r304.header("etag") == etag


def test_static_precompressed_preference(env):
    """br and gzip copies exist: the client's weights decide, then br > gzip."""
    assert coding_of(get(env, "/static/app.js", ae="gzip, br")) == "br"
    assert coding_of(get(env, "/static/app.js", ae="gzip, br;q=0.9")) == "gzip"


def test_static_missing_copy_compressed_on_the_fly(env):
    """No app.js.zst: the file is compressed as it is sent."""
    r = get(env, "/static/app.js", ae="zstd")
    assert_compressed(r, "zstd", env.files["app.js"])


def test_static_stale_copy_not_used(env):
    """style.css.gz is older than style.css: the file is compressed instead."""
    r = get(env, "/static/style.css", ae="gzip")
    assert_compressed(r, "gzip", env.files["style.css"])


def test_static_precompressed_any_type(env):
    """A copy is used for a type outside `types` (the operator made it on purpose); the
    file itself is not compressed on the fly."""
    r = get(env, "/static/font.woff2", ae="br")
    assert coding_of(r) == "br"
    assert r.body == env.variants["font.woff2.br"]
    assert r.header("content-type") == "font/woff2"
    r = get(env, "/static/font.woff2", ae="gzip")
    assert coding_of(r) is None
    assert r.body == env.files["font.woff2"]


def test_static_range_uses_the_file(env):
    r = get(env, "/static/app.js", ae="br", headers=[("Range", "bytes=0-99")])
    assert r.status == 206
    assert coding_of(r) is None
    assert r.body == env.files["app.js"][:100]


def test_static_head_precompressed(env):
    r = get(env, "/static/app.js", ae="br", method="HEAD")
    assert r.status == 200
    assert coding_of(r) == "br"
    assert r.header("content-length") == str(len(env.variants["app.js.br"]))
    assert r.body == b""


def test_static_copies_only_for_the_sites_codings(env):
    r = get(env, "/static/app.js", host="gz", ae="br")
    assert coding_of(r) is None
    assert r.body == env.files["app.js"]
    r = get(env, "/static/app.js", host="off", ae="br, gzip")
    assert coding_of(r) is None
    assert r.header("vary") is None


def test_static_small_file_below_min_length(env):
    r = get(env, "/static/tiny.txt", ae="gzip")
    assert coding_of(r) is None
    assert r.body == b"tiny\n"


# ---- proxyctl shows it ------------------------------------------------------------------------------------------

def test_dump_and_route_test(env):
    rc, out, err = env.p.proxyctl("dump")
    assert rc == 0, err
    assert ("  compression: br level 4, zstd level 3, gzip level 4; min_length 256; types text/html text/plain "
            "application/json text/event-stream text/javascript text/css") in out.splitlines()
    assert "  compression: gzip level 9; min_length 256; types" in out
    rc, out, err = env.p.proxyctl("route-test", "http://all.test/x", "-H", "Accept-Encoding: gzip, br;q=0.5")
    assert rc == 0, err
    assert "  encoding: gzip for a response of a listed type, of min_length bytes or of unknown length" in out
    rc, out, err = env.p.proxyctl("route-test", "http://gz.test/x", "-H", "Accept-Encoding: br", "--json")
    assert rc == 0, err
    assert '"encoding":"identity"' in out
    rc, out, err = env.p.proxyctl("route-test", "http://off.test/x", "-H", "Accept-Encoding: br")
    assert rc == 0, err
    assert "compression:" not in out and "encoding:" not in out


def test_no_sanitizer_report(env):
    env.check()


# ---- 1 GiB in bounded memory -------------------------------------------------------------------------------

GIB = 1 << 30
RSS_LIMIT_KIB = 64 * 1024


@pytest.mark.parametrize("coding", CODINGS)
def test_download_1gib_compressed_bounded_memory(proxyd_factory, origin_factory, coding, monkeypatch):
    """1 GiB of the origin's 'x' bytes: the client decodes every byte, and the worker's RSS
    stays under 64 MiB all the way.

    Under ASan, freed memory waits in a quarantine of 256 MiB before it is reused, which
    the RSS then counts: brotli allocates and frees working memory at every flush, and
    this stream flushes whenever proxyd catches up with the origin.  The quarantine is
    made small here so that the figure is proxyd's memory, not the sanitizer's."""
    opts = os.environ.get("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    monkeypatch.setenv("ASAN_OPTIONS", opts + ":quarantine_size_mb=8")
    origin = origin_factory(echo=False)
    text = (f"site: big\ndefault: true\nupstreams:\n  app: {{servers: [{{address: \"{origin.address}\"}}]}}\n"
            f"routes:\n  - match: {{path_prefix: /}}\n    upstream: app\n    timeouts: {{read: 60s, send: 60s}}\n"
            f"compression: {{gzip: true, brotli: true, zstd: true, types: [application/octet-stream]}}\n")
    p = proxyd_factory(sites=[text], workers=1)
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], sum(vm_rss_kib(pid) for pid in p.worker_pids()))
            stop.wait(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    s = connect(p.port, timeout=60)
    try:
        s.sendall(request_bytes("GET", f"/bytes/{GIB}", "big.test",
                                [("Accept-Encoding", coding), ("Connection", "close")]))
        rd = ChunkedReader(s, timeout=600)
        assert rd.head.header("content-encoding") == coding
        dec = StreamDecoder(coding)
        total = 0
        while not rd.done:
            out = dec.feed(rd.read_some())
            assert out.count(b"x") == len(out)
            total += len(out)
        assert dec.finished()
        assert total == GIB
    finally:
        stop.set()
        t.join(5)
        s.close()
    print(f"1 GiB {coding} through proxyd: worker RSS peak {peak[0] / 1024:.1f} MiB")
    assert 0 < peak[0] < RSS_LIMIT_KIB


# ---- over TLS -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("coding", CODINGS)
def test_over_tls(proxyd_factory, backend_factory, tmp_path, coding):
    """The filter is the same whatever the transport: proxied, static compressed on the fly,
    and a precompressed copy (sent through the TLS layer's file staging), over HTTPS."""
    from tls_fixtures import https_request, tls_proxyd
    root = tmp_path / "www"
    root.mkdir()
    files, variants = write_static(root)
    backend = backend_factory(Origin())
    text = (f"site: sec\ndefault: true\nhosts: [sec.test]\ntls: {{certificate: self-signed}}\n"
            f"upstreams:\n  app: {{servers: [{{address: \"{backend.address}\"}}]}}\n"
            f"routes:\n  - match: {{path_prefix: /static/}}\n    static: {{root: \"{root}\"}}\n    strip_prefix: true\n"
            f"  - match: {{path_prefix: /}}\n    upstream: app\n"
            f"compression: {{gzip: true, brotli: true, zstd: true, types: {TYPES}}}\n")
    p = tls_proxyd(proxyd_factory, sites=[text])
    r = https_request(p.https_port, "GET", "/noise/300000", "sec.test", headers=[("Accept-Encoding", coding)])
    assert_compressed(r, coding, NOISE[:300000])
    r = https_request(p.https_port, "GET", "/static/big.txt", "sec.test", headers=[("Accept-Encoding", coding)])
    assert_compressed(r, coding, files["big.txt"])
    if coding != "zstd":
        name = "app.js.br" if coding == "br" else "app.js.gz"
        r = https_request(p.https_port, "GET", "/static/app.js", "sec.test", headers=[("Accept-Encoding", coding)])
        assert coding_of(r) == coding
        assert r.body == variants[name]
