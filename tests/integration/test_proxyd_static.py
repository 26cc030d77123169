"""proxyd static routes: content types, ranges, conditional requests, expires, and no way
out of the root (SPEC.md §2 static)."""
import os

import pytest

from proxyd_fixtures import ModuleEnv, http

SECRET = b"TOPSECRET-outside-the-root"
BIG = bytes(range(256)) * 400          # 102400 bytes


@pytest.fixture(scope="module")
def senv(tmp_path_factory):
    base = tmp_path_factory.mktemp("static")
    root = base / "www"
    (root / "sub").mkdir(parents=True)
    (root / "emptydir").mkdir()
    (root / ".git").mkdir()
    (root / "raw").mkdir()
    files = {
        "index.html": b"<h1>home</h1>\n",
        "style.css": b"body{color:red}\n",
        "app.js": b"console.log(1)\n",
        "data.json": b'{"a":1}\n',
        "img.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 32,
        "noext": b"plain bytes\n",
        "big.bin": BIG,
        "sub/index.html": b"<p>sub index</p>\n",
        "sub/page.txt": b"sub page\n",
        ".hidden": b"hidden file\n",
        ".git/config": b"[core]\n",
        "raw/file.txt": b"raw route file\n",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    (base / "secret.txt").write_bytes(SECRET)
    os.symlink("/etc/passwd", root / "link_passwd")
    os.symlink("../secret.txt", root / "link_out")
    os.symlink(str(base / "secret.txt"), root / "link_abs_out")
    os.symlink(str(base), root / "link_dir_out")
    e = ModuleEnv(base)
    site = f"""\
site: files
default: true
routes:
  - match: {{path_prefix: /static/}}
    static: {{root: "{root}", expires: 30d}}
    strip_prefix: true
  - match: {{path_prefix: /raw/}}
    static: {{root: "{root}"}}
"""
    e.p = e.proxyd(sites=[site])
    e.root = root
    e.files = files
    yield e
    e.stop()


@pytest.fixture(autouse=True)
def _no_sanitizer(senv):
    yield
    senv.check()


def get(senv, path, headers=(), method="GET"):
    return http(senv.p.port, method, path, host="files.test", headers=headers)


@pytest.mark.parametrize("name,ctype", [
    ("index.html", "text/html"), ("style.css", "text/css"), ("app.js", "text/javascript"),
    ("data.json", "application/json"), ("img.png", "image/png"), ("noext", "application/octet-stream"),
    ("big.bin", "application/octet-stream"),
])
def test_content_type_and_body(senv, name, ctype):
    r = get(senv, f"/static/{name}")
    assert r.status == 200, r
    assert r.header("content-type").split(";")[0].strip() == ctype
    assert r.body == senv.files[name]
    assert r.header("content-length") == str(len(senv.files[name]))
    assert r.header("cache-control") == "max-age=2592000"     # expires: 30d
    assert r.header("last-modified") and r.header("etag")


def test_route_without_strip_maps_full_path(senv):
    r = get(senv, "/raw/file.txt")
    assert (r.status, r.body) == (200, b"raw route file\n")
    assert "cache-control" not in r.headers


def test_head(senv):
    r = http(senv.p.port, "HEAD", "/static/style.css", host="files.test")
    assert r.status == 200 and r.body == b""
    assert r.header("content-length") == str(len(senv.files["style.css"]))


def test_post_405(senv):
    r = get(senv, "/static/style.css", method="POST")
    assert r.status == 405
    assert "GET" in r.header("allow", "")


def test_range(senv):
    r = get(senv, "/static/big.bin", headers=[("Range", "bytes=10-19")])
    assert r.status == 206
    assert r.header("content-range") == f"bytes 10-19/{len(BIG)}"
    assert r.body == BIG[10:20]
    r = get(senv, "/static/big.bin", headers=[("Range", "bytes=-5")])
    assert r.status == 206 and r.body == BIG[-5:]
    r = get(senv, "/static/big.bin", headers=[("Range", "bytes=102000-")])
    assert r.status == 206 and r.body == BIG[102000:]
    r = get(senv, "/static/big.bin", headers=[("Range", f"bytes={len(BIG)}-")])
    assert r.status == 416
    assert r.header("content-range") == f"bytes */{len(BIG)}"


def test_conditional_requests(senv):
    r = get(senv, "/static/style.css")
    lm, etag = r.header("last-modified"), r.header("etag")
    r = get(senv, "/static/style.css", headers=[("If-Modified-Since", lm)])
    assert r.status == 304 and r.body == b""
    assert r.header("cache-control") == "max-age=2592000"
    r = get(senv, "/static/style.css", headers=[("If-Modified-Since", "Sat, 01 Jan 2000 00:00:00 GMT")])
    assert r.status == 200 and r.body == senv.files["style.css"]
    r = get(senv, "/static/style.css", headers=[("If-None-Match", etag)])
    assert r.status == 304
    r = get(senv, "/static/style.css", headers=[("If-None-Match", '"other"')])
    assert r.status == 200


def test_directory(senv):
    r = get(senv, "/static/sub")
    assert r.status == 301
    assert r.header("location") == "/static/sub/"
    r = get(senv, "/static/sub/")
    assert (r.status, r.body) == (200, senv.files["sub/index.html"])
    r = get(senv, "/static/")
    assert (r.status, r.body) == (200, senv.files["index.html"])
    r = get(senv, "/static/emptydir/")
    assert r.status in (403, 404)


ESCAPES = [
    "/static/../secret.txt",
    "/static/%2e%2e/secret.txt",
    "/static/%2E%2E/secret.txt",
    "/static/..%2Fsecret.txt",
    "/static/%2e%2e%2Fsecret.txt",
    "/static/sub/..%2F..%2Fsecret.txt",
    "/static/sub/%2F..%2F..%2Fsecret.txt",
    "/static/sub/../../secret.txt",
    "/static/link_passwd",
    "/static/link_out",
    "/static/link_abs_out",
    "/static/link_dir_out/secret.txt",
    "/static/.hidden",
    "/static/%2ehidden",
    "/static/.git/config",
    "/static/sub/../.git/config",
    "/raw/../static/.hidden",
    "/raw/..%2F.hidden",
]


@pytest.mark.parametrize("path", ESCAPES)
def test_escapes_are_404(senv, path):
    r = get(senv, path)
    assert r.status == 404, (path, r)
    assert SECRET not in r.body and b"root:" not in r.body and b"[core]" not in r.body
    assert b"hidden file" not in r.body


@pytest.mark.parametrize("path", ["/static/../../secret.txt", "/raw/../../etc/passwd",
                                  "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd"])
def test_escapes_above_url_root_refused(senv, path):
    r = get(senv, path)
    assert r.status in (400, 404), (path, r)
    assert SECRET not in r.body and b"root:" not in r.body


def test_keep_alive_across_sendfile_responses(senv):
    from proxyd_fixtures import keepalive_socket, read_response, request_bytes
    s = keepalive_socket(senv.p.port)
    try:
        for path, want in [("/static/big.bin", BIG), ("/static/style.css", senv.files["style.css"]),
                           ("/static/big.bin", BIG)]:
            s.sendall(request_bytes("GET", path, "files.test"))
            r = read_response(s)
            assert (r.status, r.body) == (200, want), path
        s.sendall(request_bytes("GET", "/static/big.bin", "files.test", [("Range", "bytes=100-199")]))
        r = read_response(s)
        assert (r.status, r.body) == (206, BIG[100:200])
        # Pipelined: two files in one send, answered in order.
        s.sendall(request_bytes("GET", "/static/app.js", "files.test") + request_bytes("GET", "/static/noext", "files.test"))
        assert read_response(s).body == senv.files["app.js"]
        assert read_response(s).body == senv.files["noext"]
    finally:
        s.close()
