"""FastCGI (SPEC §10, issue 21 item 1): a `fastcgi:` route run against a real php-fpm
(Debian's php8.2-fpm, in the foreground, its pools in tmp, stopped by PID): the CGI
variables PHP sees, the application's status and headers, bodies both ways, stderr to the
error log, keep-alive connections, a unix socket, balancing, health checks, timeouts and
retries, the errors of a broken server, and proxyctl's validation and route-test output.

Run with: PROXYCTL=$PWD/build/asan/proxyctl PROXYD=$PWD/build/asan/proxyd \
          /usr/bin/python3 -m pytest -q tests/integration/test_fastcgi.py
"""
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from conftest import write
from proxyd_fixtures import (AcceptLoop, ModuleEnv, Proxyd, connect, free_port, http, keepalive_socket,
                             parse_response, proxyd_factory, read_response, recv_all, request_bytes,  # noqa: F401
                             wait_for)
from tls_fixtures import https_request, tls_proxyd

PHP_FPM = shutil.which("php-fpm8.2") or ("/usr/sbin/php-fpm8.2" if os.path.exists("/usr/sbin/php-fpm8.2") else None)
CURL = shutil.which("curl")
SS = shutil.which("ss")

pytestmark = pytest.mark.skipif(PHP_FPM is None, reason="php-fpm8.2 is not installed (Debian package php8.2-fpm, "
                                                        "see packaging/install-deps.sh)")

HOST = "php.test"
BIG = 5 * 1024 * 1024

# ---- php-fpm -----------------------------------------------------------------------------------

SCRIPTS = {
    # Every CGI variable PHP sees (the pool's env[POOL] too), and the worker's PID.
    "env.php": '<?php header("Content-Type: application/json"); '
               '$s = $_SERVER; $s["_pid"] = getmypid(); echo json_encode($s);',
    "status.php": '<?php if (($_GET["how"] ?? "") === "code") http_response_code((int)$_GET["s"]); '
                  'else header("Status: " . $_GET["s"]); echo "status body";',
    "loc.php": '<?php header("Location: /x");',
    "hdrs.php": '<?php header("X-Custom: v1"); header("X-Two: a"); header("X-Two: b", false); '
                'setcookie("a", "1"); setcookie("b", "2", ["path" => "/p"]); echo "ok";',
    "cl.php": '<?php header("Content-Length: " . $_GET["cl"]); echo str_repeat("x", (int)$_GET["n"]);',
    "204.php": '<?php http_response_code(204);',
    "big.php": '<?php $n = (int)$_GET["n"] / 16; for ($i = 0; $i < $n; $i++) printf("%015d\\n", $i);',
    "post.php": '<?php header("Content-Type: application/json"); echo json_encode(["post" => $_POST, '
                '"ct" => $_SERVER["CONTENT_TYPE"] ?? null, "cl" => $_SERVER["CONTENT_LENGTH"] ?? null, '
                '"method" => $_SERVER["REQUEST_METHOD"]]);',
    "raw.php": '<?php $d = file_get_contents("php://input"); echo strlen($d), " ", hash("sha256", $d);',
    "upload.php": '<?php $f = $_FILES["file"]; echo json_encode(["name" => $f["name"], "size" => $f["size"], '
                  '"error" => $f["error"], "sha256" => $f["error"] ? null : hash_file("sha256", $f["tmp_name"]), '
                  '"field" => $_POST["field"] ?? null]);',
    "log.php": '<?php error_log("marker-123"); echo "logged";',
    "fatal.php": '<?php no_such_function_here();',
    "hello.php": '<?php echo "hello ", uniqid("", true);',
    "a/info.php": '<?php header("Content-Type: application/json"); echo json_encode($_SERVER);',
    "dir/index.php": '<?php header("Content-Type: application/json"); echo json_encode($_SERVER);',
    "slow/sleep.php": '<?php sleep((int)$_GET["s"]); echo "slept";',
    "stream/flush.php": '<?php while (ob_get_level()) ob_end_flush(); '
                        'for ($i = 0; $i < 4; $i++) { echo "part$i\\n"; flush(); usleep(400000); } echo "end\\n";',
    "stream/cl.php": '<?php header("Content-Length: " . $_GET["cl"]); echo str_repeat("x", (int)$_GET["n"]);',
    "stream/big.php": '<?php $n = (int)$_GET["n"] / 16; for ($i = 0; $i < $n; $i++) printf("%015d\\n", $i);',
    "cached/hello.php": '<?php echo "cached ", uniqid("", true);',
}


def big_body(n):
    return b"".join(b"%015d\n" % i for i in range(n // 16))


def write_www(www):
    for name, text in SCRIPTS.items():
        p = Path(www) / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n")
    (Path(www) / "plain.txt").write_text("static file\n")


class Fpm:
    """One php-fpm master (one pool) in the foreground; listen: "127.0.0.1:PORT" or a socket
    path.  stop() by PID: SIGQUIT, bounded wait, SIGKILL."""

    def __init__(self, tmp, name, listen=None, pool="a", children=4, extra=""):
        self.dir = Path(tmp) / f"fpm-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name, self.pool, self.children, self.extra = name, pool, children, extra
        if listen is None:
            listen = f"127.0.0.1:{free_port()}"
        self.listen = listen
        self.unix = not re.match(r"^[0-9.]+:\d+$", listen)
        self.port = None if self.unix else int(listen.rsplit(":", 1)[1])
        self.address = f"unix:{listen}" if self.unix else listen
        self.proc = None

    def config(self):
        return textwrap.dedent(f"""\
            [global]
            pid = {self.dir}/fpm.pid
            error_log = {self.dir}/fpm.log
            daemonize = no
            systemd_interval = 0
            [{self.name}]
            user = root
            group = root
            listen = {self.listen}
            listen.mode = 0666
            listen.backlog = 64
            pm = static
            pm.max_children = {self.children}
            ping.path = /fpm-ping
            ping.response = pong
            security.limit_extensions = .php
            catch_workers_output = no
            env[POOL] = {self.pool}
            php_admin_value[upload_max_filesize] = 8M
            php_admin_value[post_max_size] = 16M
            php_admin_value[output_buffering] = 4096
            php_admin_flag[display_errors] = off
            php_admin_flag[log_errors] = on
            """) + self.extra

    def start(self):
        (self.dir / "fpm.conf").write_text(self.config())
        if self.unix and os.path.exists(self.listen):
            os.unlink(self.listen)
        self.log = open(self.dir / "fpm.stderr", "ab")
        self.proc = subprocess.Popen([PHP_FPM, "-R", "-F", "-y", str(self.dir / "fpm.conf")],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        ok = wait_for(lambda: self.proc.poll() is not None or self.ready(), 10)
        if not ok or self.proc.poll() is not None:
            text = self.log_text()
            self.stop()
            pytest.fail(f"php-fpm {self.name} did not start on {self.listen}:\n{text}")
        return self

    def ready(self):
        if self.unix:
            if not os.path.exists(self.listen):
                return False
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.listen)
                return True
            except OSError:
                return False
            finally:
                s.close()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def log_text(self):
        out = ""
        for f in ("fpm.log", "fpm.stderr"):
            try:
                out += (self.dir / f).read_text(errors="replace")
            except OSError:
                pass
        return out

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGQUIT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    os.kill(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=5)
        # The children die with the master (SIGQUIT/SIGTERM are passed on); a SIGKILLed
        # master leaves them: they are stopped by PID from its pid file's process group.
        self.proc = None
        self.log.close()
        if not self.unix:
            wait_for(lambda: not self.ready(), 3)


@pytest.fixture
def fpm_factory(tmp_path):
    made = []

    def make(name=None, **kw):
        f = Fpm(tmp_path, name or f"p{len(made)}", **kw).start()
        made.append(f)
        return f

    yield make
    for f in made:
        f.stop()


# ---- the module's php-fpm pools and proxyd -------------------------------------------------------

def php_site(fpm, www, name="php", hosts=(HOST,), upstream_extra="", tls=False):
    return f"""\
site: {name}
hosts: [{", ".join(hosts)}]
{"tls: {certificate: self-signed}" if tls else ""}
upstreams:
  fpm: {{servers: [{{address: "{fpm.address}"}}], keepalive: 4{upstream_extra}}}
routes:
  - match: {{path_prefix: /stream/}}
    fastcgi: {{upstream: fpm, root: {www}}}
    buffering: false
  - match: {{path_prefix: /slow/}}
    fastcgi: {{upstream: fpm, root: {www}}}
    timeouts: {{read: 1s}}
  - match: {{path_prefix: /cached/}}
    fastcgi: {{upstream: fpm, root: {www}}}
    cache: {{zone: fz, valid: {{"200": 10m}}}}
  - match: {{path_regex: '\\.php(/|$)'}}
    fastcgi: {{upstream: fpm, root: {www}, index: index.php}}
  - match: {{path_regex: '/$'}}
    fastcgi: {{upstream: fpm, root: {www}/, index: index.php}}
  - match: {{path_prefix: /}}
    static: {{root: {www}}}
"""


def one_route_site(name, host, address, www, upstream_extra="", route_extra=""):
    return f"""\
site: {name}
hosts: [{host}]
upstreams:
  fpm: {{servers: [{address}]{upstream_extra}}}
routes:
  - match: {{path_prefix: /}}
    fastcgi: {{upstream: fpm, root: {www}}}
{route_extra}"""


def single_pool(proxyd_factory, fpm_factory, tmp_path, name, keepalive=4, extra="", route_extra="",
                site_extra="", workers=1):
    """php-fpm (3 children) and a proxyd (one worker) whose site `name` sends every path to it."""
    www = tmp_path / "www"
    write_www(www)
    f = fpm_factory(name, children=3, extra=extra)
    site = one_route_site(name, HOST, f'{{address: "{f.address}"}}', www, upstream_extra=f", keepalive: {keepalive}",
                          route_extra=route_extra)
    return proxyd_factory(sites=[site + site_extra], workers=workers), f


class Garbage(AcceptLoop):
    """A 'FastCGI server' that answers the first bytes of a request with `reply`, then closes."""

    def __init__(self, reply):
        self.reply = reply
        self.served = 0
        super().__init__()

    def serve(self, c):
        try:
            c.settimeout(2)
            try:
                c.recv(65536)
            except socket.timeout:
                pass
            c.sendall(self.reply)
        except OSError:
            pass
        finally:
            self.served += 1
            c.close()


def fcgi_record(rtype, content, rid=1, pad=0, version=1):
    return (bytes([version, rtype, rid >> 8, rid & 0xff, len(content) >> 8, len(content) & 0xff, pad, 0]) + content
            + b"\0" * pad)


def fcgi_end(app_status=0, protocol_status=0, rid=1):
    return fcgi_record(3, app_status.to_bytes(4, "big") + bytes([protocol_status, 0, 0, 0]), rid)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = ModuleEnv(tmp_path_factory.mktemp("fcgi"))
    e.fpms = []
    e.loops = []
    try:
        e.www = e.tmp / "www"
        write_www(e.www)
        e.fpm = Fpm(e.tmp, "main", pool="main", children=6).start()
        e.fpms.append(e.fpm)
        e.fpm_unix = Fpm(e.tmp, "unix", listen=str(e.tmp / "fpm.sock"), pool="unix", children=2).start()
        e.fpms.append(e.fpm_unix)
        e.garbage = Garbage(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        head = b"Content-Type: text/plain\r\nContent-Length: 100000\r\n\r\n"
        e.cutter = Garbage(fcgi_record(6, head + b"y" * 5000))  # STDOUT, then the close mid-body
        e.loops += [e.garbage, e.cutter]
        sites = [
            php_site(e.fpm, e.www, tls=True),
            one_route_site("unix", "unix.test", f'{{address: "{e.fpm_unix.address}"}}', e.www),
            one_route_site("bad", "bad.test", f'{{address: "127.0.0.1:{e.garbage.port}"}}', e.www),
            one_route_site("cut", "cut.test", f'{{address: "127.0.0.1:{e.cutter.port}"}}', e.www),
        ]
        settings = {"cache_zones": {"fz": {"path": str(e.tmp / "cache")}},
                    "limits": {"drain_timeout": "3s"}}

        def factory(g, sites=(), workers=2, start=False, check_stderr=True, name=None):
            p = Proxyd(e.tmp, g, sites, workers=workers, check_stderr=check_stderr, name=name or "fcgi")
            e.proxyds.append(p)
            return p

        e.p = tls_proxyd(factory, sites, settings, workers=2)
        yield e
    finally:
        for loop in e.loops:
            loop.close()
        for f in e.fpms:
            f.stop()
        e.stop()


@pytest.fixture
def p(env):
    yield env.p
    env.check()


def get(p, target, host=HOST, **kw):
    return http(p.port, target=target, host=host, **kw)


def server_vars(p, target, host=HOST, **kw):
    r = get(p, target, host=host, **kw)
    assert r.status == 200, r
    return r.json()


def logs(p):
    return p.error_log_text() + p.stderr_text()


# ---- 1. CGI parameters -------------------------------------------------------------------------

def test_script_variables_and_request_line(p, env):
    www = str(env.www)
    v = server_vars(p, "/env.php?a=1&b=%20x", headers=[("X-Custom-Thing", "custom value")])
    assert v["SCRIPT_FILENAME"] == f"{www}/env.php"
    assert v["SCRIPT_NAME"] == "/env.php"
    assert "PATH_INFO" not in v or v["PATH_INFO"] == "", v.get("PATH_INFO")
    assert v["QUERY_STRING"] == "a=1&b=%20x"
    assert v["REQUEST_URI"] == "/env.php?a=1&b=%20x"
    assert v["REQUEST_METHOD"] == "GET"
    assert v["DOCUMENT_ROOT"] == www
    assert v["SERVER_NAME"] == HOST
    assert v["SERVER_PORT"] == str(p.port)
    assert v["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert v["GATEWAY_INTERFACE"] == "CGI/1.1"
    assert v["HTTP_HOST"] == HOST
    assert v["HTTP_X_CUSTOM_THING"] == "custom value"
    assert v["POOL"] == "main"
    assert "HTTPS" not in v and v["REQUEST_SCHEME"] == "http"
    # A path without a query: QUERY_STRING empty, REQUEST_URI the path alone.
    v = server_vars(p, "/env.php")
    assert v["QUERY_STRING"] == "" and v["REQUEST_URI"] == "/env.php"


def test_path_info_split_after_the_first_php_segment(p, env):
    www = str(env.www)
    v = server_vars(p, "/a/info.php/x/y?q=1")
    assert v["SCRIPT_FILENAME"] == f"{www}/a/info.php"
    assert v["SCRIPT_NAME"] == "/a/info.php"
    assert v["PATH_INFO"] == "/x/y"
    assert v["REQUEST_URI"] == "/a/info.php/x/y?q=1"
    assert v["QUERY_STRING"] == "q=1"
    v = server_vars(p, "/a/info.php/")
    assert v["SCRIPT_NAME"] == "/a/info.php" and v["PATH_INFO"] == "/"


def test_index_for_a_directory_path(p, env):
    v = server_vars(p, "/dir/?x=2")
    assert v["SCRIPT_FILENAME"] == f"{env.www}/dir/index.php"
    assert v["SCRIPT_NAME"] == "/dir/index.php"
    assert v["REQUEST_URI"] == "/dir/?x=2"
    assert v["QUERY_STRING"] == "x=2"


def test_request_uri_is_as_received(p):
    v = server_vars(p, "/a/./info.php/%7Euser?x=%41")
    assert v["REQUEST_URI"] == "/a/./info.php/%7Euser?x=%41"
    assert v["SCRIPT_NAME"] == "/a/info.php"


def test_header_fields_cookies_underscores_and_httpoxy(p):
    v = server_vars(p, "/env.php", headers=[("Cookie", "a=1"), ("X-Multi", "one"), ("Cookie", "b=2"),
                                           ("X-Multi", "two"), ("X_Under", "sneaky"), ("X-Under", "fine"),
                                           ("Proxy", "http://evil.example:8080"), ("User-Agent", "t/1")])
    assert v["HTTP_COOKIE"] == "a=1; b=2"
    assert v["HTTP_X_MULTI"] == "one, two"
    assert v["HTTP_X_UNDER"] == "fine"          # not "sneaky": the field with '_' is not passed
    assert "HTTP_PROXY" not in v                # httpoxy
    assert v["HTTP_USER_AGENT"] == "t/1"
    assert not any(k.startswith("HTTP_") and "sneaky" in str(val) for k, val in v.items())


def test_content_type_and_length_of_a_post(p):
    r = get(p, "/post.php", method="POST", body=b"a=1&b=two+words",
            headers=[("Content-Type", "application/x-www-form-urlencoded")])
    assert r.status == 200, r
    j = r.json()
    assert j == {"post": {"a": "1", "b": "two words"}, "ct": "application/x-www-form-urlencoded", "cl": "15",
                 "method": "POST"}


def test_remote_addr_is_the_client_address(p):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    s.bind(("127.0.0.7", 0))
    s.connect(("127.0.0.1", p.port))
    port = s.getsockname()[1]
    try:
        s.sendall(request_bytes("GET", "/env.php", HOST, [("Connection", "close")]))
        r = parse_response(recv_all(s, 5))
    finally:
        s.close()
    v = r.json()
    assert v["REMOTE_ADDR"] == "127.0.0.7"
    assert v["REMOTE_PORT"] == str(port)
    assert v["SERVER_ADDR"] == "127.0.0.1"


def test_https_on_over_tls(p):
    r = https_request(p.https_port, target="/env.php?t=1", host=HOST)
    assert r.status == 200, r
    v = r.json()
    assert v["HTTPS"] == "on" and v["REQUEST_SCHEME"] == "https"
    assert v["SERVER_PORT"] == str(p.https_port)
    assert v["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert v["SERVER_NAME"] == HOST


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_server_protocol_http2(p):
    out = subprocess.run([CURL, "-sk", "--http2", "--resolve", f"{HOST}:{p.https_port}:127.0.0.1",
                          "-o", "-", "-w", "\n%{http_version} %{http_code}", f"https://{HOST}:{p.https_port}/env.php"],
                         capture_output=True, text=True, timeout=20)
    body, _, tail = out.stdout.rpartition("\n")
    assert tail == "2 200", out
    v = json.loads(body)
    assert v["SERVER_PROTOCOL"] == "HTTP/2.0"
    assert v["HTTPS"] == "on"
    assert v["HTTP_HOST"] == f"{HOST}:{p.https_port}"
    assert v["SERVER_NAME"] == HOST


# ---- 2. the application's answer -------------------------------------------------------------------

@pytest.mark.parametrize("how", ["header", "code"])
def test_status_from_the_application(p, how):
    r = get(p, f"/status.php?s=404&how={how}")
    assert r.status == 404 and r.body == b"status body", r
    r = get(p, f"/status.php?s=418&how={how}")
    assert r.status == 418, r
    assert r.header("Status") is None


def test_status_with_a_reason_phrase(p):
    r = get(p, "/status.php?s=503%20Service%20Unavailable")
    assert r.status == 503 and r.body == b"status body", r
    assert r.header("Status") is None


def test_location_alone_is_a_302(p):
    r = get(p, "/loc.php")
    assert r.status == 302, r
    assert r.header("Location") == "/x"


def test_custom_headers_and_two_set_cookies(p):
    r = get(p, "/hdrs.php")
    assert r.status == 200 and r.body == b"ok", r
    assert r.header("X-Custom") == "v1"
    assert r.header_all("X-Two") == ["a", "b"]
    assert r.header_all("Set-Cookie") == ["a=1", "b=2; path=/p"]
    assert r.header("Content-Type").startswith("text/html")


def test_content_length_from_the_script_is_kept(p):
    r = get(p, "/cl.php?n=10&cl=10")
    assert r.status == 200 and r.header("Content-Length") == "10" and r.body == b"x" * 10, r
    r = get(p, "/cl.php?n=10&cl=10", method="HEAD")
    assert r.status == 200 and r.header("Content-Length") == "10" and r.body == b"", r


def next_answer_is_whole(s):
    """The next request on keep-alive socket s gets its whole answer (the last left nothing behind)."""
    s.sendall(request_bytes("GET", "/status.php?s=201", HOST))
    r = read_response(s)
    assert r.status == 201 and r.body == b"status body", r


def test_more_bytes_than_content_length_are_cut_and_the_connection_stays_sane(p):
    s = keepalive_socket(p.port)
    try:
        s.sendall(request_bytes("GET", "/cl.php?n=50&cl=20", HOST))
        r = read_response(s)
        assert r.status == 200 and r.header("Content-Length") == "20" and r.body == b"x" * 20, r
        next_answer_is_whole(s)
        # nothing else came: no stray bytes of the first answer
        s.settimeout(0.3)
        try:
            extra = s.recv(100)
        except socket.timeout:
            extra = b""
        assert extra == b"" and s._pending == b""
    finally:
        s.close()


def test_fewer_bytes_than_content_length_aborts(p):
    # Never a complete response: the connection closes (as for an HTTP upstream that closes
    # early, the head and the 5 bytes still in proxyd's output are dropped with it).
    for target in ("/cl.php?n=5&cl=20", "/stream/cl.php?n=5&cl=20"):
        raw = recv_all_request(p, target)
        r = parse_response(raw)
        assert r is None or (r.status == 200 and not r.complete and r.body == b"x" * 5), raw
    assert wait_for(lambda: "the response ended 15 bytes short of its Content-Length" in logs(p), 5), logs(p)[-2000:]


def recv_all_request(p, target, method="GET", timeout=5):
    s = connect(p.port)
    try:
        s.sendall(request_bytes(method, target, HOST))  # keep-alive: an abort shows as a close
        return recv_all(s, timeout)
    finally:
        s.close()


@pytest.mark.parametrize("method, target, status", [("HEAD", "/hello.php", 200), ("GET", "/204.php", 204)],
                         ids=["head", "204"])
def test_bodiless_answers(p, method, target, status):
    # what php-fpm may write after the head is dropped; a 204 has no framing fields
    s = keepalive_socket(p.port)
    try:
        s.sendall(request_bytes(method, target, HOST))
        r = read_response(s, head_request=method == "HEAD")
        assert r.status == status and r.body == b"", r
        if status == 204:
            assert r.header("Content-Length") is None and r.header("Transfer-Encoding") is None, r
        next_answer_is_whole(s)
    finally:
        s.close()


def test_large_output(p):
    want = hashlib.sha256(big_body(BIG)).hexdigest()
    r = get(p, f"/big.php?n={BIG}", timeout=30)
    assert r.status == 200 and r.complete, (r.status, r.header_list)
    assert len(r.body) == BIG and hashlib.sha256(r.body).hexdigest() == want


@pytest.mark.parametrize("path", ["/big.php", "/stream/big.php"], ids=["buffered", "streamed"])
def test_large_output_to_a_slow_reader(p, path):
    # streamed (buffering: false): php-fpm is read at the client's pace (backpressure through
    # the decoded STDOUT buffer)
    want = hashlib.sha256(big_body(BIG)).hexdigest()
    s = connect(p.port, timeout=30)
    try:
        s.sendall(request_bytes("GET", f"{path}?n={BIG}", HOST, [("Connection", "close")]))
        chunks = []
        t0 = time.monotonic()
        while time.monotonic() < t0 + 40:
            d = s.recv(16384)
            if not d:
                break
            chunks.append(d)
            time.sleep(0.004)           # about 4 MB/s: some seconds for the whole answer
        took = time.monotonic() - t0
        data = b"".join(chunks)
    finally:
        s.close()
    r = parse_response(data)
    assert r.status == 200 and r.complete, (r.status, r.header_list, len(data))
    assert len(r.body) == BIG and hashlib.sha256(r.body).hexdigest() == want
    assert took >= 1.0, took


def test_progressive_output_with_buffering_off(p):
    s = connect(p.port, timeout=10)
    try:
        t0 = time.monotonic()
        s.sendall(request_bytes("GET", "/stream/flush.php", HOST, [("Connection", "close")]))
        seen = {}
        data = b""
        deadline = t0 + 10
        while time.monotonic() < deadline:
            d = s.recv(65536)
            if not d:
                break
            data += d
            for i in range(4):
                if f"part{i}\n".encode() in data and i not in seen:
                    seen[i] = time.monotonic() - t0
        total = time.monotonic() - t0
    finally:
        s.close()
    r = parse_response(data)
    assert r.status == 200 and r.body == b"part0\npart1\npart2\npart3\nend\n", r
    assert total >= 1.5, total
    # part0 arrived long before the script ended, and the parts came apart
    assert seen[0] < 0.8 and seen[1] - seen[0] >= 0.2 and seen[3] - seen[0] >= 1.0, seen


# ---- 3. request bodies --------------------------------------------------------------------------

def test_raw_body_of_3_mb(p):
    body = os.urandom(3 * 1024 * 1024)
    r = get(p, "/raw.php", method="POST", body=body, headers=[("Content-Type", "application/octet-stream")],
            timeout=30)
    assert r.status == 200, r
    assert r.body == f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()


def multipart(fields, files, boundary="----proxydfcgi7b3c"):
    out = b""
    for k, v in fields.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n").encode() + v + b"\r\n"
    for k, (fname, data) in files.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"; filename=\"{fname}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def test_multipart_upload_of_2_mb(p):
    data = os.urandom(2 * 1024 * 1024)
    body, ctype = multipart({"field": b"value 1"}, {"file": ("up.bin", data)})
    r = get(p, "/upload.php", method="POST", body=body, headers=[("Content-Type", ctype)], timeout=30)
    assert r.status == 200, r
    assert r.json() == {"name": "up.bin", "size": len(data), "error": 0,
                        "sha256": hashlib.sha256(data).hexdigest(), "field": "value 1"}


def test_expect_100_continue(p):
    body = b"x=1&y=2"
    s = connect(p.port)
    try:
        s.sendall(request_bytes("POST", "/post.php", HOST, [("Content-Type", "application/x-www-form-urlencoded"),
                                                           ("Content-Length", str(len(body))),
                                                           ("Expect", "100-continue"), ("Connection", "close")]))
        s.settimeout(5)
        interim = s.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
        s.sendall(body)
        data = recv_all(s, 5)
    finally:
        s.close()
    rest = interim.split(b"\r\n\r\n", 1)[1] + data
    r = parse_response(rest)
    assert r.status == 200, r
    assert r.json()["post"] == {"x": "1", "y": "2"}


def test_chunked_request_body_is_411(p):
    data = raw_chunked(p, "/raw.php", [b"hello ", b"world"])
    r = parse_response(data)
    assert r.status == 411, r


def raw_chunked(p, target, chunks):
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    s = connect(p.port)
    try:
        s.sendall(request_bytes("POST", target, HOST, [("Transfer-Encoding", "chunked"), ("Connection", "close")])
                  + body)
        return recv_all(s, 5)
    finally:
        s.close()


# ---- 4. stderr ------------------------------------------------------------------------------------

def test_stderr_to_the_error_log(p, env):
    r = get(p, "/log.php")
    assert r.status == 200 and r.body == b"logged", r
    line = f"fastcgi {env.fpm.address} (site php): stderr: PHP message: marker-123"
    assert wait_for(lambda: line in logs(p), 5), logs(p)[-3000:]


# ---- 5. keep-alive connections to php-fpm ----------------------------------------------------------

def fpm_conn_ports(port):
    """The proxyd-side ports of every TCP connection to 127.0.0.1:port (any state but LISTEN)."""
    out = subprocess.run([SS, "-tanH"], capture_output=True, text=True, timeout=10).stdout
    ports = set()
    for line in out.splitlines():
        f = line.split()
        if len(f) < 5 or f[0] == "LISTEN":
            continue
        local, peer = f[3], f[4]
        if peer == f"127.0.0.1:{port}":
            ports.add(local.rsplit(":", 1)[1])
        elif local == f"127.0.0.1:{port}":
            ports.add(peer.rsplit(":", 1)[1])
    return ports


@pytest.mark.skipif(SS is None, reason="ss (iproute2) is not installed")
@pytest.mark.parametrize("keepalive, want", [(4, 1), (0, 20)])
def test_keepalive_connections(proxyd_factory, fpm_factory, tmp_path, keepalive, want):
    p, f = single_pool(proxyd_factory, fpm_factory, tmp_path, "ka", keepalive=keepalive)
    before = fpm_conn_ports(f.port)
    seen, pids = set(), set()
    for i in range(20):
        v = server_vars(p, f"/env.php?i={i}")
        pids.add(v["_pid"])
        seen |= fpm_conn_ports(f.port) - before
    assert len(seen) == want, seen
    if keepalive:
        assert len(pids) == 1, pids     # one connection, so one php-fpm child
        assert len(fpm_conn_ports(f.port) - before) == 1


def burst(p, n, target):
    """n concurrent GETs of target: [(status, seconds)]."""
    import concurrent.futures

    def one(i):
        t0 = time.monotonic()
        r = get(p, target, timeout=15)
        return r.status, time.monotonic() - t0
    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        return list(ex.map(one, range(n)))


def test_more_concurrent_requests_than_children_without_keepalive(proxyd_factory, fpm_factory, tmp_path):
    p, f = single_pool(proxyd_factory, fpm_factory, tmp_path, "b0", keepalive=0,
                       route_extra="    timeouts: {read: 3s}\n")
    got = burst(p, 6, "/slow/sleep.php?s=1")           # 3 children: two rounds of 1 s
    assert [s for s, _ in got] == [200] * 6 and max(t for _, t in got) < 2.8, got


@pytest.mark.parametrize("workers", [1, 2])
def test_more_concurrent_requests_than_children_with_keepalive(proxyd_factory, fpm_factory, tmp_path, workers):
    """A child that answered keeps its connection (FCGI_KEEP_CONN) and blocks on it while the connection
    idles in a pool; a request on a new connection waits in php-fpm's backlog meanwhile.  While one does, no
    worker keeps an idle connection to that server, so the burst waits ~1 s for a child, not the read timeout
    (with 2 workers the kept connections are in the other worker's pool too)."""
    p, f = single_pool(proxyd_factory, fpm_factory, tmp_path, "b4", keepalive=4,
                       route_extra="    timeouts: {read: 3s}\n", workers=workers)
    assert [s for s, _ in burst(p, 6, "/hello.php")] == [200] * 6   # connections kept in the pools
    got = burst(p, 6, "/slow/sleep.php?s=1")
    assert [s for s, _ in got] == [200] * 6 and max(t for _, t in got) < 2.8, got


def test_health_check_of_a_pool_whose_children_are_kept(proxyd_factory, fpm_factory, tmp_path):
    """The check's new connection waits for a child like a request's: kept connections let theirs go, so a
    pool whose children all sit on connections idling in proxyd's pool stays up."""
    www = tmp_path / "www"
    write_www(www)
    f = fpm_factory("hk", children=2)
    hc = ", keepalive: 4, health_check: {path: /fpm-ping, interval: 300ms, timeout: 500ms, rise: 1, fall: 2}"
    p = proxyd_factory(sites=[one_route_site("hk", HOST, f'{{address: "{f.address}"}}', www, upstream_extra=hc)],
                       workers=1)
    assert wait_for(lambda: servers_status(p)[f.address]["check"]["last_status"] == 200, 5)
    assert [s for s, _ in burst(p, 2, "/slow/sleep.php?s=1")] == [200, 200]   # two kept connections
    time.sleep(2)
    st = servers_status(p)[f.address]
    assert st["state"] == "up" and st["check"]["consecutive_failures"] == 0, st
    assert get(p, "/hello.php").status == 200


# ---- 6. unix socket -------------------------------------------------------------------------------

def test_unix_socket(p, env):
    v = server_vars(p, "/a/info.php/u?k=v", host="unix.test")
    assert v["POOL"] == "unix"
    assert v["SCRIPT_FILENAME"] == f"{env.www}/a/info.php" and v["PATH_INFO"] == "/u" and v["QUERY_STRING"] == "k=v"
    r = get(p, "/raw.php", host="unix.test", method="POST", body=b"z" * 200000)
    assert r.body == f"200000 {hashlib.sha256(b'z' * 200000).hexdigest()}".encode(), r


# ---- 7. balancing, health, timeouts, retries ------------------------------------------------------

def servers_status(p, upstream="fpm"):
    for u in p.status()["upstreams"]:
        if u["upstream"] == upstream:
            return {s["address"]: s for s in u["servers"]}
    raise AssertionError(p.status())


def two_pools(proxyd_factory, fpm_factory, tmp_path, upstream_extra="", workers=1):
    www = tmp_path / "www"
    write_www(www)
    a, b = fpm_factory("a", pool="a", children=3), fpm_factory("b", pool="b", children=3)
    servers = f'{{address: "{a.address}"}}, {{address: "{b.address}"}}'
    p = proxyd_factory(sites=[one_route_site("lb", HOST, servers, www,
                                             upstream_extra=", keepalive: 4, balance: round_robin" + upstream_extra)],
                       workers=workers)
    return p, a, b


def pools_of(p, n):
    got = []
    for i in range(n):
        r = get(p, f"/env.php?i={i}")
        assert r.status == 200, r
        got.append(r.json()["POOL"])
    return got


def test_round_robin_over_two_pools(proxyd_factory, fpm_factory, tmp_path):
    p, a, b = two_pools(proxyd_factory, fpm_factory, tmp_path)
    got = pools_of(p, 20)
    assert got.count("a") == 10 and got.count("b") == 10, got


def test_a_stopped_pool_is_retried_and_marked_down(proxyd_factory, fpm_factory, tmp_path):
    p, a, b = two_pools(proxyd_factory, fpm_factory, tmp_path)
    assert set(pools_of(p, 4)) == {"a", "b"}
    b.stop()
    got = pools_of(p, 10)                     # every one a 200 (pools_of asserts it)
    assert set(got) == {"a"}, got
    st = servers_status(p)[b.address]
    assert st["state"] == "down" and st["passive_down"] and st["failures"] >= 1, st
    assert servers_status(p)[a.address]["state"] == "up"


def test_a_post_whose_connection_was_refused_goes_to_the_next_server(proxyd_factory, fpm_factory, tmp_path):
    # max_fails 0: the stopped pool stays in the rotation, so every other POST meets a refused
    # connection; nothing of it was sent, so it goes to the other pool whatever its method
    www = tmp_path / "www"
    write_www(www)
    a, b = fpm_factory("a", pool="a", children=2), fpm_factory("b", pool="b", children=2)
    servers = f'{{address: "{a.address}", max_fails: 0}}, {{address: "{b.address}", max_fails: 0}}'
    p = proxyd_factory(sites=[one_route_site("lb", HOST, servers, www, upstream_extra=", keepalive: 4")], workers=1)
    b.stop()
    for i in range(6):
        body = b"n=%d" % i
        r = get(p, "/raw.php", method="POST", body=body)
        assert r.status == 200 and r.body == f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode(), (i, r)
    line = f"upstream {b.address} (site lb): connect failed: connection refused; retrying on {a.address} (attempt 2 of 2)"
    assert logs(p).count(line) == 3, logs(p)[-3000:]


def test_active_health_check_with_the_fpm_ping(proxyd_factory, fpm_factory, tmp_path):
    hc = ", health_check: {path: /fpm-ping, interval: 300ms, timeout: 1s, rise: 1, fall: 1}"
    p, a, b = two_pools(proxyd_factory, fpm_factory, tmp_path, upstream_extra=hc)
    assert wait_for(lambda: all(s["check"]["last_status"] == 200 for s in servers_status(p).values()), 5), \
        (servers_status(p), logs(p)[-3000:])
    assert all(s["state"] == "up" for s in servers_status(p).values())
    b.stop()
    assert wait_for(lambda: servers_status(p)[b.address]["state"] == "down", 5), servers_status(p)
    st = servers_status(p)[b.address]
    assert st["check"]["state"] == "down" and not st["passive_down"], st
    assert set(pools_of(p, 6)) == {"a"}
    b.start()
    assert wait_for(lambda: servers_status(p)[b.address]["state"] == "up", 5), servers_status(p)
    assert servers_status(p)[b.address]["check"]["last_status"] == 200
    assert set(pools_of(p, 6)) == {"a", "b"}


def test_active_health_check_runs_a_script_under_the_root(proxyd_factory, fpm_factory, tmp_path):
    # path: a script of the route's root (SCRIPT_FILENAME = root + path); a missing one is a 404
    www = tmp_path / "www"
    write_www(www)
    a = fpm_factory("a", pool="a", children=2)
    hc = ", health_check: {path: %s, interval: 300ms, timeout: 1s, rise: 1, fall: 1}"
    sites = [one_route_site("ok", "ok.test", f'{{address: "{a.address}"}}', www, upstream_extra=hc % "/hello.php"),
             one_route_site("no", "no.test", f'{{address: "{a.address}"}}', www, upstream_extra=hc % "/missing.php")]
    p = proxyd_factory(sites=sites, workers=1)

    def check(site):
        st = p.status()
        for u in st["upstreams"]:
            if u["upstream"] == "fpm" and u.get("site") == site:
                return u["servers"][0]
        return None
    assert wait_for(lambda: check("ok") and check("ok")["check"]["last_status"] == 200, 5), p.status()
    assert wait_for(lambda: check("no") and check("no")["state"] == "down", 5), p.status()
    assert check("no")["check"]["last_status"] == 404
    assert get(p, "/hello.php", host="ok.test").status == 200


def test_read_timeout_is_504(p):
    t0 = time.monotonic()
    r = get(p, "/slow/sleep.php?s=3", timeout=10)
    took = time.monotonic() - t0
    assert r.status == 504, r
    assert 0.9 <= took < 2.5, took
    r = get(p, "/slow/sleep.php?s=0")
    assert r.status == 200 and r.body == b"slept", r


# ---- 8. errors ------------------------------------------------------------------------------------

def test_missing_script_is_php_fpms_404(p):
    r = get(p, "/nope/missing.php")
    assert r.status == 404 and r.body == b"File not found.\n", r
    assert wait_for(lambda: "stderr: Primary script unknown" in logs(p), 5)


def test_php_fatal_error_is_a_500(p):
    r = get(p, "/fatal.php")
    assert r.status == 500 and r.body == b"", r
    assert wait_for(lambda: "stderr: PHP message: PHP Fatal error:  Uncaught Error: Call to undefined function "
                            "no_such_function_here()" in logs(p), 5), logs(p)[-3000:]


def test_a_non_fastcgi_server_is_502(p, env):
    r = get(p, "/x.php", host="bad.test")
    assert r.status == 502, r
    line = f"127.0.0.1:{env.garbage.port} (site bad): invalid FastCGI record: not FastCGI version 1"
    assert wait_for(lambda: line in logs(p), 5), logs(p)[-3000:]


def test_a_server_closing_mid_response(p, env):
    pids = p.worker_pids()
    s = connect(p.port)
    t0 = time.monotonic()
    try:
        s.sendall(request_bytes("GET", "/x.php", "cut.test", [("Connection", "close")]))
        data = recv_all(s, 5)
    finally:
        s.close()
    assert time.monotonic() - t0 < 3                  # closed, not left hanging
    r = parse_response(data)
    assert r is None or (r.status == 200 and not r.complete), data[:300]
    assert wait_for(lambda: "(site cut): closed before the end of the request" in logs(p), 5), logs(p)[-3000:]
    # proxyd is still fine
    assert server_vars(p, "/env.php")["POOL"] == "main"
    assert p.worker_pids() == pids


def crafted_site(proxyd_factory, tmp_path, reply):
    g = Garbage(reply)
    p = proxyd_factory(sites=[one_route_site("cr", HOST, f'{{address: "127.0.0.1:{g.port}"}}', tmp_path)], workers=1)
    return p, g


HEAD = b"Content-Type: text/plain\r\n"


@pytest.mark.parametrize("reply, message", [
    (fcgi_record(6, b"Status: 99\r\n\r\n") + fcgi_end(), "invalid FastCGI response head: Status '99'"),
    (fcgi_record(6, b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n") + fcgi_end(),
     "invalid FastCGI response head: Transfer-Encoding from a CGI application"),
    (fcgi_end(protocol_status=2), "the FastCGI server refused the request (overloaded)"),
    (fcgi_record(6, HEAD, rid=2), "invalid FastCGI record: record of another request id"),
    (fcgi_record(9, b""), "invalid FastCGI record: unexpected record type"),
    (fcgi_record(6, HEAD) + fcgi_end(), "ended the request without a complete response head (26 bytes of output)"),
    (fcgi_record(6, HEAD), "closed in the middle of the response head"),
    (b"", "closed the connection without responding"),
    (fcgi_record(6, b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nbody") + fcgi_end(),
     "invalid FastCGI response head: "),
], ids=["status-99", "transfer-encoding", "overloaded", "request-id", "record-type", "no-head-end",
        "closed-in-head", "closed-at-once", "two-content-lengths"])
def test_broken_fastcgi_answers_are_502(proxyd_factory, tmp_path, reply, message):
    p, g = crafted_site(proxyd_factory, tmp_path, reply)
    try:
        r = get(p, "/x.php")
        assert r.status == 502, r
        assert wait_for(lambda: message in logs(p), 5), logs(p)[-3000:]
    finally:
        g.close()


def test_records_split_padded_and_interleaved_with_stderr(proxyd_factory, tmp_path):
    reply = (fcgi_record(7, b"warn one\nwarn two", pad=3) + fcgi_record(6, b"Status: 201 Created\r\nX-Sp", pad=5)
             + fcgi_record(6, b"lit: yes\r\nContent-Type: text/plain\r\n\r\nhel", pad=1) + fcgi_record(6, b"")
             + fcgi_record(7, b"late\n") + fcgi_record(6, b"lo", pad=7) + fcgi_end(app_status=3))
    p, g = crafted_site(proxyd_factory, tmp_path, reply)
    try:
        r = get(p, "/x.php")
        assert r.status == 201 and r.body == b"hello" and r.header("X-Split") == "yes", r
        for line in ("stderr: warn one", "stderr: warn two", "stderr: late"):
            assert wait_for(lambda: line in logs(p), 5), logs(p)[-3000:]
    finally:
        g.close()


def test_fpm_stopped_entirely_fails_fast(proxyd_factory, fpm_factory, tmp_path):
    p, f = single_pool(proxyd_factory, fpm_factory, tmp_path, "gone")
    assert server_vars(p, "/env.php")["POOL"] == "a"
    f.stop()
    for _ in range(3):
        t0 = time.monotonic()
        r = get(p, "/env.php")
        assert r.status in (502, 503) and time.monotonic() - t0 < 1.0, (r, time.monotonic() - t0)


def test_long_request_targets_do_not_overrun_the_replay_copy(p):
    # A bodiless request's replay copy needs room for the empty STDIN record after its PARAMS
    # (ASan saw a heap-buffer-overflow in replay_add with a 3000-byte PATH_INFO before
    # e0b4508).  env.check() after the test looks.
    for n in (1, 100, 1000, 2000, 3000, 3500, 4000, 4500):
        v = server_vars(p, "/a/info.php/" + "p" * n)
        assert v["PATH_INFO"] == "/" + "p" * n
        r = get(p, "/hello.php?" + "q" * n, method="HEAD")
        assert r.status == 200, r


def test_a_long_path_info_within_max_uri_size(p):
    """A path appears in four parameters (REQUEST_URI, DOCUMENT_URI, SCRIPT_NAME, PATH_INFO): records beyond
    the first 16 KiB buffer follow it, with and without a body."""
    v = server_vars(p, "/a/info.php/" + "p" * 7000)
    assert v["PATH_INFO"] == "/" + "p" * 7000 and v["REQUEST_URI"] == "/a/info.php/" + "p" * 7000
    r = get(p, "/raw.php/" + "p" * 7000, method="POST", body=b"z" * 100000)
    assert r.status == 200 and r.body == f"100000 {hashlib.sha256(b'z' * 100000).hexdigest()}".encode(), r


def test_path_safety(p, env):
    # a NUL cannot cut SCRIPT_FILENAME short; dot segments are resolved before the split
    assert get(p, "/a/info.php%00.txt").status == 400
    v = server_vars(p, "/x/%2e%2e/a/info.php/y")
    assert v["SCRIPT_FILENAME"] == f"{env.www}/a/info.php" and v["PATH_INFO"] == "/y"
    assert get(p, "/%2e%2e/%2e%2e/a/info.php").status == 400
    # /plain.txt/x.php: the script is plain.txt/x.php, which does not exist; php-fpm's
    # security.limit_extensions refuses its walk back to plain.txt
    r = get(p, "/plain.txt/x.php")
    assert r.status == 403 and r.body == b"Access denied.\n", r


def test_put_body_the_script_does_not_read_keeps_the_connection_usable(proxyd_factory, fpm_factory, tmp_path):
    p, f = single_pool(proxyd_factory, fpm_factory, tmp_path, "ka")
    for i in range(6):
        r = get(p, "/hello.php", method="PUT" if i % 2 == 0 else "POST", body=b"b" * (1000 + 30000 * i))
        assert r.status == 200 and r.body.startswith(b"hello "), (i, r)
        r = get(p, "/missing.php", method="POST", body=b"m" * (5000 * i + 1))
        assert r.status == 404, (i, r)
        v = server_vars(p, "/env.php")
        assert v["REQUEST_METHOD"] == "GET" and v.get("CONTENT_LENGTH", "") == "", v


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_http2_post_body(p):
    body = os.urandom(300000)
    path = Path(p.dir) / "h2body.bin"
    path.write_bytes(body)
    out = subprocess.run([CURL, "-sk", "--http2", "--resolve", f"{HOST}:{p.https_port}:127.0.0.1",
                          "--data-binary", f"@{path}", "-H", "Content-Type: application/octet-stream",
                          "-o", "-", "-w", "\n%{http_version} %{http_code}", f"https://{HOST}:{p.https_port}/raw.php"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout == f"{len(body)} {hashlib.sha256(body).hexdigest()}\n2 200", out


# ---- 9. cache, proxyctl ------------------------------------------------------------------------------

def test_cache_on_a_fastcgi_route(p):
    r1 = get(p, "/cached/hello.php?k=1")
    assert r1.status == 200 and r1.body.startswith(b"cached "), r1
    assert r1.header("X-Cache-Status") == "MISS", r1
    r2 = get(p, "/cached/hello.php?k=1")
    assert r2.header("X-Cache-Status") == "HIT" and r2.body == r1.body, r2
    r3 = get(p, "/cached/hello.php?k=2")
    assert r3.header("X-Cache-Status") == "MISS" and r3.body != r1.body, r3


RT_SITE = """\
site: a
hosts: [a.test]
upstreams:
  fpm: {servers: [{address: "127.0.0.1:9000"}], keepalive: 4}
routes:
  - match: {path_regex: '\\.php(/|$)'}
    fastcgi: {upstream: fpm, root: /srv/www/}
  - match: {path_prefix: /app/}
    fastcgi: {upstream: fpm, root: /srv/app, index: main.php}
    buffering: false
"""


def test_route_test_and_dump_show_the_script(store, proxyctl, tmp_path):
    write(tmp_path, "a.yaml", RT_SITE, dedent=False)
    rc, out, err = proxyctl("add-site", "a.yaml")
    assert rc == 0, err
    rc, out, err = proxyctl("route-test", "http://a.test/x/info.php/p/q?z=1")
    assert rc == 0, err
    assert "route 1 (a.yaml:6:5): path_regex \\.php(/|$), methods any\n" in out
    assert "  fastcgi to upstream fpm, root /srv/www/, index index.php\n" in out
    assert "  script: SCRIPT_FILENAME=/srv/www/x/info.php PATH_INFO=/p/q\n" in out
    assert "  upstream fpm: round_robin, keepalive 4\n" in out
    rc, out, err = proxyctl("route-test", "http://a.test/app/d/")
    assert rc == 0, err
    assert "  fastcgi to upstream fpm, root /srv/app, index main.php, buffering off\n" in out
    assert "  script: SCRIPT_FILENAME=/srv/app/app/d/main.php PATH_INFO=\n" in out
    rc, out, err = proxyctl("route-test", "--json", "http://a.test/x/info.php/p/q?z=1")
    assert rc == 0, err
    j = json.loads(out)
    assert (j["route"], j["action"], j["upstream"], j["script_filename"], j["path_info"]) == \
        (1, "fastcgi", "fpm", "/srv/www/x/info.php", "/p/q"), j
    rc, out, err = proxyctl("route-test", "--json", "http://a.test/app/")
    j = json.loads(out)
    assert (j["route"], j["action"], j["script_filename"], j["path_info"]) == (2, "fastcgi", "/srv/app/app/main.php", "")
    rc, out, err = proxyctl("dump")
    assert rc == 0, err
    assert "    fastcgi to upstream fpm, root /srv/www/, index index.php\n" in out


BAD = """\
site: a
hosts: [a.test]
upstreams:
  fpm: {servers: [{address: "127.0.0.1:9000"}]}
routes:
"""


@pytest.mark.parametrize("routes, upstreams, message", [
    ("  - match: {path_prefix: /}\n    fastcgi: {upstream: fpm}\n", "",
     "site.yaml:7:14: error: fastcgi is missing required key 'root'"),
    ("  - match: {path_prefix: /}\n    fastcgi: {upstream: fpm, root: www}\n", "",
     "site.yaml:7:36: error: fastcgi root must be an absolute path"),
    ("  - match: {path_prefix: /}\n    fastcgi: {upstream: fpm, root: /www, index: a/index.php}\n", "",
     "site.yaml:7:49: error: fastcgi index must be a file name (no '/')"),
    ("  - match: {path_prefix: /}\n    fastcgi: {upstream: fpm, root: /www, index: \"\"}\n", "",
     "site.yaml:7:49: error: fastcgi index must not be empty (it is the script run for a path ending in '/')"),
    ("  - match: {path_prefix: /a/}\n    upstream: fpm\n  - match: {path_prefix: /}\n"
     "    fastcgi: {upstream: fpm, root: /www}\n", "",
     "site.yaml:9:25: error: upstream 'fpm' serves both fastcgi and HTTP routes (one protocol per upstream)"),
    ("  - match: {path_prefix: /}\n    fastcgi: {upstream: fpm, root: /www}\n  - match: {path_prefix: /a/}\n"
     "    upstream: fpm\n", "",
     "site.yaml:9:15: error: upstream 'fpm' serves both fastcgi and HTTP routes (one protocol per upstream)"),
    ("  - match: {path_prefix: /}\n    fastcgi: {upstream: tl, root: /www}\n",
     '  tl: {servers: [{address: "127.0.0.1:9001"}], tls: {}}\n',
     "site.yaml:8:25: error: upstream 'tl' has tls, which FastCGI does not speak"),
    ("  - match: {path_prefix: /}\n    fastcgi: {upstream: fpm, root: /www}\n    websocket: true\n", "",
     "site.yaml:8:16: error: websocket does not apply to a fastcgi route"),
    ("  - match: {path_prefix: /}\n    fastcgi: {upstream: fpm, root: /www}\n    strip_prefix: true\n", "",
     "site.yaml:8:19: error: strip_prefix does not apply to a fastcgi route (the script is root + path)"),
    ("  - match: {path_prefix: /}\n    fastcgi: {upstream: fpm, root: /www}\n    rewrite_prefix: /x/\n", "",
     "site.yaml:8:21: error: rewrite_prefix does not apply to a fastcgi route (the script is root + path)"),
    ("  - match: {path_prefix: /}\n    fastcgi: {upstream: nope, root: /www}\n", "",
     "site.yaml:7:25: error: undefined upstream 'nope'"),
    ("  - match: {path_prefix: /}\n    fastcgi: {upstream: fpm, root: /www}\n    upstream: fpm\n", "",
     "site.yaml:8:15: error: route has more than one action ('fastcgi' and 'upstream')"),
], ids=["no-root", "relative-root", "index-slash", "index-empty", "http-then-fastcgi", "fastcgi-then-http", "tls", "websocket",
        "strip_prefix", "rewrite_prefix", "undefined-upstream", "two-actions"])
def test_validate_refuses(store, proxyctl, tmp_path, routes, upstreams, message):
    text = BAD.replace("routes:\n", upstreams + "routes:\n") + routes
    write(tmp_path, "site.yaml", text, dedent=False)
    rc, out, err = proxyctl("validate", "site.yaml")
    assert rc == 1, (out, err)
    assert message + "\n" in err, err


@pytest.mark.parametrize("head, status, location", [
    (b"Location: http://other.example/\r\nStatus: 301 Moved\r\n\r\n", 301, "http://other.example/"),
    (b"Status: 200\r\nContent-Type: text/plain\r\n\r\n", 200, None),
    (b"\r\n", 200, None),
], ids=["location-with-status", "status-200", "empty-head"])
def test_crafted_heads(proxyd_factory, tmp_path, head, status, location):
    p, g = crafted_site(proxyd_factory, tmp_path, fcgi_record(6, head + b"tail") + fcgi_end())
    try:
        r = get(p, "/x.php")
        assert r.status == status and r.header("Location") == location and r.header("Status") is None, r
        assert r.body == b"tail", r
    finally:
        g.close()


def test_a_head_near_16k_is_whole_or_refused(proxyd_factory, tmp_path):
    p, g = crafted_site(proxyd_factory, tmp_path,
                        fcgi_record(6, b"X-Big: " + b"b" * 16300 + b"\r\n\r\nbody") + fcgi_end())
    try:
        r = get(p, "/x.php")
        assert r.status == 502, r          # over UPSTREAM_HEAD_MAX (12 KiB): refused, never cut short
        assert "response head" in logs(p) or "header section too large" in logs(p)
    finally:
        g.close()


def test_recycled_php_fpm_children_max_requests(proxyd_factory, fpm_factory, tmp_path):
    # pm.max_requests: a child exits after 3 requests, closing its kept connection right after
    # END_REQUEST.  Back-to-back GETs may meet such a connection in the pool: a bodiless request
    # is replayed on a fresh one.  A POST with a body is not (RFC 9110 §9.2.2, as for HTTP): it
    # waits a moment first, so the close was seen and the connection left the pool.
    p, f = single_pool(proxyd_factory, fpm_factory, tmp_path, "mr", extra="pm.max_requests = 3\n")
    pids = set()
    for i in range(24):
        post = i % 4 == 3
        if post:
            time.sleep(0.1)
        r = get(p, "/post.php" if post else "/env.php", method="POST" if post else "GET",
                body=b"k=v" if post else b"", headers=[("Content-Type", "application/x-www-form-urlencoded")])
        assert r.status == 200, (i, r, "\n".join(l for l in logs(p).splitlines() if "[debug]" not in l)[-3000:])
        if post:
            assert r.json()["post"] == {"k": "v"}
        else:
            pids.add(r.json()["_pid"])
    assert len(pids) >= 4, pids   # the children were recycled


def test_compression_and_request_header_ops(proxyd_factory, fpm_factory, tmp_path):
    import gzip
    p, f = single_pool(proxyd_factory, fpm_factory, tmp_path, "cz", site_extra="compression: {gzip: true}\n",
                       route_extra="    headers:\n      request: {set: {X-Env: prod}, remove: [User-Agent]}\n"
                                   "      response: {set: {X-Served-By: proxyd}}\n")
    r = get(p, f"/big.php?n={BIG}", headers=[("Accept-Encoding", "gzip")], timeout=30)
    assert r.status == 200 and r.header("Content-Encoding") == "gzip", r.header_list
    assert gzip.decompress(r.body) == big_body(BIG)
    v = server_vars(p, "/env.php", headers=[("User-Agent", "ua/1"), ("X-Env", "dev")])
    assert v["HTTP_X_ENV"] == "prod" and "HTTP_USER_AGENT" not in v, v
    assert get(p, "/hello.php").header("X-Served-By") == "proxyd"


def test_schema_takes_a_fastcgi_route():
    from jsonschema import Draft202012Validator
    from test_schema import SITE_SCHEMA, load_yaml
    v = Draft202012Validator(json.loads(SITE_SCHEMA.read_text()))
    ok = load_yaml(RT_SITE)
    assert [e.message for e in v.iter_errors(ok)] == []
    for a, b in [("root: /srv/app, ", "root: srv/app, "), ("index: main.php", "index: a/main.php"),
                 ("fastcgi: {upstream: fpm, root: /srv/www/}", "fastcgi: {upstream: fpm}"),
                 ("index: main.php}", "index: main.php, websocket: true}")]:
        assert a in RT_SITE
        assert list(v.iter_errors(load_yaml(RT_SITE.replace(a, b)))) != [], b


# ---- 10. examples/fastcgi.yaml ------------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastcgi.yaml"


def test_example_validates_and_routes(store, proxyctl):
    rc, out, err = proxyctl("validate", EXAMPLE)
    assert (rc, out, err) == (0, "1 file valid\n", ""), (rc, out, err)
    rc, out, err = proxyctl("add-site", EXAMPLE)
    assert rc == 0, err
    want = {"/blog/": ("fastcgi", "/var/www/php.example.com/blog/index.php", ""),
            "/index.php/some/path?x=1": ("fastcgi", "/var/www/php.example.com/index.php", "/some/path"),
            "/uploads/evil.php": ("static", None, None),
            "/style.css": ("static", None, None)}
    for path, (action, script, info) in want.items():
        rc, out, err = proxyctl("route-test", "--json", f"http://php.example.com{path}")
        assert rc == 0, err
        j = json.loads(out)
        assert (j["action"], j.get("script_filename"), j.get("path_info")) == (action, script, info), (path, j)


def test_example_runs_against_php_fpm(proxyd_factory, fpm_factory, tmp_path):
    # the example with its root and socket moved to tmp_path (a pool of its own: the module's
    # pools have children parked on the module proxyd's kept connections, see the xfail above)
    www = tmp_path / "www"
    write_www(www)
    (www / "uploads").mkdir()
    (www / "uploads" / "evil.php").write_text("<?php echo 'ran';\n")
    f = fpm_factory("ex", listen=str(tmp_path / "php.sock"), pool="ex", children=3)
    text = EXAMPLE.read_text().replace("/var/www/php.example.com", str(www))
    text = text.replace("unix:/run/php/php8.2-fpm.sock", f.address)
    assert str(www) in text and f.address in text
    p = proxyd_factory(sites=[text], workers=1)
    v = server_vars(p, "/a/info.php/some/path?x=1", host="php.example.com")
    assert (v["POOL"], v["SCRIPT_NAME"], v["PATH_INFO"], v["QUERY_STRING"]) == ("ex", "/a/info.php", "/some/path", "x=1")
    assert server_vars(p, "/dir/", host="php.example.com")["SCRIPT_NAME"] == "/dir/index.php"
    r = get(p, "/uploads/evil.php", host="php.example.com")
    assert r.status == 200 and r.body == b"<?php echo 'ran';\n", r     # served as a file, never run
    r = get(p, "/plain.txt", host="php.example.com")
    assert r.status == 200 and r.body == b"static file\n", r
    # its health check, php-fpm's ping over the unix socket, passes
    assert wait_for(lambda: servers_status(p)[f.address]["check"]["last_status"] == 200, 12), \
        json.dumps(servers_status(p))


def test_http2_streams_and_a_body_without_length(p, monkeypatch):
    pytest.importorskip("h2")
    import test_http2
    monkeypatch.setattr(test_http2, "HOST", HOST)   # its connect() names HOST in the SNI
    c = test_http2.H2Client(p.https_port, host=HOST)
    try:
        # ten concurrent streams, each its own FastCGI request
        sids = [c.request(f"/env.php?s={i}") for i in range(10)]
        for i, sid in enumerate(sids):
            r = c.wait(sid)
            assert r.status == 200 and r.ended, r
            v = json.loads(bytes(r.body))
            assert (v["QUERY_STRING"], v["SERVER_PROTOCOL"], v["HTTPS"]) == (f"s={i}", "HTTP/2.0", "on")
        # a body with content-length, and one without (DATA frames only): 411, the documented limit
        body = os.urandom(100000)
        sid = c.request("/raw.php", "POST", body, headers=[("content-length", str(len(body)))])
        r = c.wait(sid)
        assert r.status == 200 and bytes(r.body) == f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode(), r
        sid = c.request("/raw.php", "POST", b"no length")
        r = c.wait(sid)
        assert r.status == 411, r
        sid = c.request("/env.php")
        assert c.wait(sid).status == 200
    finally:
        c.close()
