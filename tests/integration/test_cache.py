"""Response cache (SPEC §9 "Cache", issue 13 item 5, docs/cache.md).

Real proxyd processes on a store made by proxyctl, in front of a scripted Python origin
that counts the requests it gets per target and answers what each test scripts (status,
headers, body, delay, a gate to hold the answer, half a body then a stall or a pause), so
every test asserts exactly how often the origin was asked.  Covered:

  key          scheme, host (case-insensitive), path and query, key_headers, the coding
               chosen by compression (not the Accept-Encoding text)
  store        valid per status (and any), s-maxage > max-age > Expires (against the
               origin's Date) > valid, never no-store/private/no-cache/Set-Cookie/Vary: *,
               Authorization only when the origin allows, one variant per Vary value
               (expiring like other entries), bypass_on, methods other than GET/HEAD,
               never an answer the origin cut short
  statuses     HIT (with Age), MISS, EXPIRED, STALE (error, timeout, listed 5xx),
               UPDATING with one background refresh, REVALIDATED (If-None-Match and
               If-Modified-Since), BYPASS, and MISS on proxyd's own 502/504
  serving      HEAD and Range from a cached GET (Range compared with the static handler),
               a client's If-None-Match on a HIT (304), pipelined hits on one keep-alive
               connection, HTTP/2
  lock         a cold-key stampede reaches the origin once; after lock_timeout the waiters
               go to the origin themselves and store nothing
  storage      files under the zone path, a fill in one worker is a HIT in the other,
               reloads (zone limits changed: kept; path changed: afresh), restart (index
               rebuilt in the background), binary upgrade, a worker killed mid-fill and a
               client gone mid-fill (no half entry), an unwritable path (served, logged once)
  eviction     max_size (least recently used first), inactive
  operations   proxyctl cache purge / stats, admin POST /cache/purge and GET /cache/stats,
               /metrics, two zones counted apart, proxyctl validation, the keys accepted by
               every command, dump and route-test, examples/cache.yaml as written

Run with: PROXYCTL=$PWD/build/asan/proxyctl PROXYD=$PWD/build/asan/proxyd \\
    /usr/bin/python3 -m pytest -q tests/integration/test_cache.py
"""
import collections
import email.utils
import gzip
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import write
from proxyd_fixtures import (backend_factory, connect, http, keepalive_socket, proxyd_factory,  # noqa: F401
                             read_response, request_bytes, wait_for)

HOST = "cache.test"
ZONE = "z"
CT = ("Content-Type", "text/plain")
# The route policy most tests use: no `updating` (an expired entry is refreshed in the
# request that finds it: EXPIRED, REVALIDATED or STALE), a short lock timeout.
POLICY = ('{zone: z, valid: {"200": 10m, "404": 1m}, '
          'bypass_on: [authorization, "cookie:session", "header:X-No-Cache", "query:nocache"], '
          "use_stale: [error, timeout, http_500, http_502, http_503, http_504], "
          "key_headers: [X-Tenant], lock_timeout: 2s}")


# ---- the scripted origin --------------------------------------------------------------------------

class Answer:
    """What the origin sends for one request.  body None: '<target> #<n>' (n counts per
    target).  gate: wait for this Event before answering; delay: then sleep; close: close
    without an answer; stall: send the head and half the body, wait for this Event, close;
    pause: send the head and half the body, wait for this Event, send the rest."""

    def __init__(self, status=200, body=None, headers=(), delay=0.0, gate=None, close=False, stall=None,
                 reason="OK", pause=None):
        self.status, self.body, self.headers, self.delay = status, body, list(headers), delay
        self.gate, self.close, self.stall, self.reason, self.pause = gate, close, stall, reason, pause


class ScriptedOrigin:
    """A PyBackend whose answers are scripted per path: script[target or path] is an Answer
    or a function (request, n) -> Answer.  hits(target) counts what reached the origin."""

    def __init__(self, backend_factory):
        self.script = {}
        self.counts = collections.Counter()
        self.events = []
        self.lock = threading.Lock()
        self.backend = backend_factory(self._handle)
        self.address = self.backend.address

    def event(self):
        ev = threading.Event()
        self.events.append(ev)
        return ev

    def release(self):
        for ev in self.events:
            ev.set()

    def hits(self, target):
        with self.lock:
            return self.counts[target]

    def requests(self, target):
        with self.lock:
            return [r for r in self.backend.requests if r.target == target]

    def _handle(self, req, conn):
        with self.lock:
            self.counts[req.target] += 1
            n = self.counts[req.target]
        a = self.script.get(req.target, self.script.get(req.target.partition("?")[0]))
        if callable(a):
            a = a(req, n)
        a = a or Answer()
        if a.gate is not None:
            a.gate.wait(20)
        if a.delay:
            time.sleep(a.delay)
        if a.close:
            return False
        body = a.body if a.body is not None else f"{req.target} #{n}\n".encode()
        head = f"HTTP/1.1 {a.status} {a.reason}\r\n"
        if a.status not in (204, 304):
            head += f"Content-Length: {len(body)}\r\n"
        if not any(k.lower() == "content-type" for k, _ in a.headers):
            head += "Content-Type: text/plain\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in a.headers) + "\r\n"
        if req.method == "HEAD" or a.status in (204, 304):
            conn.send(head.encode())
            return True
        if a.stall is not None or a.pause is not None:
            conn.send(head.encode() + body[:len(body) // 2])
            (a.stall or a.pause).wait(20)
            if a.stall is not None:
                return False
            body = body[len(body) // 2:]
            head = ""
        conn.send(head.encode() + body)
        return True


# ---- proxyd with a cache zone ------------------------------------------------------------------------

def zone_settings(path, **kw):
    return {"cache_zones": {ZONE: {"path": str(path), **kw}}}


def cache_site(origin, policy=POLICY, name="c", hosts=(HOST,), default=True, www=None, site_extra=""):
    """The cached site: / with `policy`, and routes of their own for the tests that need
    another policy (/upd/ updating, /short/ valid 1s, /any/ valid any, /t/ a 500 ms read
    timeout, /lock/ a 300 ms lock timeout, /static/ files of www for Range comparisons)."""
    text = f"site: {name}\n" + ("default: true\n" if default else "")
    text += "hosts: [" + ", ".join(f'"{h}"' for h in hosts) + "]\n"
    text += f'upstreams: {{app: {{servers: [{{address: "{origin.address}"}}]}}}}\nroutes:\n'
    if www is not None:
        text += f'  - match: {{path_prefix: /static/}}\n    static: {{root: "{www}"}}\n    strip_prefix: true\n'
    extra = {
        "/upd/": '{zone: z, valid: {"200": 10m}, use_stale: [updating, error]}',
        "/short/": '{zone: z, valid: {"200": 1s}}',
        "/any/": "{zone: z, valid: {any: 1m}}",
        "/t/": '{zone: z, valid: {"200": 10m}, use_stale: [timeout]}',
        "/lock/": '{zone: z, valid: {"200": 10m}, lock_timeout: 300ms}',
    }
    for prefix, pol in extra.items():
        text += f"  - match: {{path_prefix: {prefix}}}\n    upstream: app\n    cache: {pol}\n"
        if prefix == "/t/":
            text += "    timeouts: {read: 500ms}\n"
    text += f"  - match: {{path_prefix: /}}\n    upstream: app\n    cache: {policy}\n"
    return text + site_extra


class CacheEnv:
    def __init__(self, p, origin, zone_dir):
        self.p, self.origin, self.zone_dir = p, origin, Path(zone_dir)

    def get(self, path, headers=(), method="GET", host=HOST, body=b"", timeout=5.0):
        return http(self.p.port, method, path, host=host, headers=headers, body=body, timeout=timeout)

    def xcs(self, path, headers=(), **kw):
        """(X-Cache-Status, response)"""
        r = self.get(path, headers, **kw)
        return r.header("X-Cache-Status"), r

    def statuses(self, path, n, headers=()):
        return [self.xcs(path, headers)[0] for _ in range(n)]

    def until_not_hit(self, path, headers=(), timeout=5.0):
        """Ask for path until the answer is not a HIT (its entry expired); that answer."""
        deadline = time.monotonic() + timeout
        while True:
            st, r = self.xcs(path, headers)
            if st != "HIT" or time.monotonic() > deadline:
                return r
            time.sleep(0.1)


def make_env(proxyd_factory, backend_factory, tmp_path, zone=None, policy=POLICY, workers=1, www=None,
             site_extra="", start=True):
    origin = ScriptedOrigin(backend_factory)
    zone_dir = tmp_path / "cache" / ZONE
    g = zone_settings(zone_dir, **(zone or {}))
    p = proxyd_factory(g, sites=[cache_site(origin, policy, www=www, site_extra=site_extra)],
                       workers=workers, start=start)
    return CacheEnv(p, origin, zone_dir)


@pytest.fixture
def env(proxyd_factory, backend_factory, tmp_path):
    e = make_env(proxyd_factory, backend_factory, tmp_path)
    yield e
    e.origin.release()


@pytest.fixture
def env_factory(proxyd_factory, backend_factory, tmp_path):
    made = []

    def make(**kw):
        e = make_env(proxyd_factory, backend_factory, tmp_path, **kw)
        made.append(e)
        return e
    yield make
    for e in made:
        e.origin.release()


def cache_stats(p):
    """GET /cache/stats on the admin socket: {zone name: zone object}."""
    st, _, body = p.admin("GET", "/cache/stats")
    assert st == 200, body
    return {z["name"]: z for z in json.loads(body)["zones"]}


def wait_loaded(p, timeout=5.0):
    ok = wait_for(lambda: not any(z["loading"] for z in cache_stats(p).values()), timeout)
    assert ok, f"the cache index is still loading after {timeout}s: {cache_stats(p)}"


def metrics(p):
    """/metrics as {(name, frozenset of label pairs): value}."""
    st, _, body = p.admin("GET", "/metrics")
    assert st == 200
    out = {}
    for line in body.decode().splitlines():
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)', line)
        if m and not line.startswith("#"):
            labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(p, name, **labels):
    return metrics(p).get((name, frozenset(labels.items())))


def http_date(t):
    return email.utils.formatdate(t, usegmt=True)


# ---- key --------------------------------------------------------------------------------------------

def test_miss_then_hit_with_age_and_one_origin_request(env):
    st, r1 = env.xcs("/a")
    assert (st, r1.status, r1.body) == ("MISS", 200, b"/a #1\n"), r1
    st, r2 = env.xcs("/a")
    assert (st, r2.status, r2.body) == ("HIT", 200, b"/a #1\n"), r2
    assert r2.header("Age") is not None and 0 <= int(r2.header("Age")) <= 1, r2.header_list
    assert r2.header("Content-Type") == "text/plain"
    assert env.origin.hits("/a") == 1


def test_key_is_scheme_host_path_query_and_key_headers(env):
    assert env.statuses("/k?a=1", 2) == ["MISS", "HIT"]
    assert env.statuses("/k?a=2", 2) == ["MISS", "HIT"]   # the query is part of the key
    assert env.statuses("/k", 2) == ["MISS", "HIT"]
    # host names compare case-insensitively; another host (the site is the default one) is
    # another entry
    assert env.xcs("/k?a=1", host="CACHE.Test")[0] == "HIT"
    assert [env.xcs("/k?a=1", host="other.test")[0] for _ in range(2)] == ["MISS", "HIT"]
    # key_headers: X-Tenant's value is part of the key
    a, b = [("X-Tenant", "alpha")], [("X-Tenant", "beta")]
    assert env.statuses("/kt", 2, a) == ["MISS", "HIT"]
    assert env.statuses("/kt", 2, b) == ["MISS", "HIT"]
    assert env.xcs("/kt", a)[1].body == b"/kt #1\n" and env.xcs("/kt", b)[1].body == b"/kt #2\n"
    assert env.statuses("/kt", 2) == ["MISS", "HIT"]        # no X-Tenant: a third entry
    assert [env.origin.hits(t) for t in ("/k?a=1", "/k?a=2", "/k", "/kt")] == [2, 1, 1, 3]


# ---- what is stored -----------------------------------------------------------------------------------

def test_only_statuses_listed_in_valid_are_stored(env):
    env.origin.script["/s404"] = Answer(404, b"gone\n", reason="Not Found")
    env.origin.script["/s500"] = Answer(500, b"boom\n", reason="Internal Server Error")
    env.origin.script["/s201"] = Answer(201, b"made\n", reason="Created")
    env.origin.script["/any/403"] = Answer(403, b"no\n", reason="Forbidden")
    assert [(s, r.status) for s, r in (env.xcs("/s404") for _ in range(2))] == [("MISS", 404), ("HIT", 404)]
    assert [(s, r.status) for s, r in (env.xcs("/s500") for _ in range(2))] == [("MISS", 500)] * 2
    assert [(s, r.status) for s, r in (env.xcs("/s201") for _ in range(2))] == [("MISS", 201)] * 2
    # valid: {any: 1m} stores every status
    assert [(s, r.status) for s, r in (env.xcs("/any/403") for _ in range(2))] == [("MISS", 403), ("HIT", 403)]
    assert [env.origin.hits(t) for t in ("/s404", "/s500", "/s201", "/any/403")] == [1, 2, 2, 1]


REFUSALS = {
    "no-store": [("Cache-Control", "no-store")],
    "private": [("Cache-Control", "private")],
    "no-cache": [("Cache-Control", "no-cache")],
    "max-age-and-no-store": [("Cache-Control", "public, max-age=600, no-store")],
    "set-cookie": [("Set-Cookie", "id=1; Path=/")],
    "vary-star": [("Vary", "*")],
}


def test_origin_refusals_are_never_stored(env):
    for name, headers in REFUSALS.items():
        env.origin.script[f"/r/{name}"] = Answer(headers=headers)
    for name in REFUSALS:
        path = f"/r/{name}"
        got = [env.xcs(path) for _ in range(3)]
        assert [(s, r.body) for s, r in got] == [("MISS", f"{path} #{i}\n".encode()) for i in (1, 2, 3)], (name, got)
        assert env.origin.hits(path) == 3


def test_answers_to_authorization_stored_only_when_the_origin_allows(env):
    """RFC 9111 §3.5 on a route without bypass_on (/any/): public, s-maxage or must-revalidate."""
    auth = [("Authorization", "Bearer t")]
    scripts = {"/any/auth": [], "/any/auth-public": [("Cache-Control", "public")],
               "/any/auth-smaxage": [("Cache-Control", "s-maxage=60")],
               "/any/auth-mustrevalidate": [("Cache-Control", "max-age=60, must-revalidate")]}
    for path, headers in scripts.items():
        env.origin.script[path] = Answer(headers=headers)
    assert env.statuses("/any/auth", 2, auth) == ["MISS", "MISS"]
    for path in list(scripts)[1:]:
        assert env.statuses(path, 2, auth) == ["MISS", "HIT"], path
    assert [env.origin.hits(p) for p in scripts] == [2, 1, 1, 1]


def test_vary_stores_one_variant_per_value(env):
    env.origin.script["/v"] = lambda req, n: Answer(body=f"foo={req.header('X-Foo')} #{n}\n".encode(),
                                                    headers=[("Vary", "X-Foo")])
    one, two = [("X-Foo", "1")], [("X-Foo", "2")]
    assert [env.xcs("/v", one)[0] for _ in range(2)] == ["MISS", "HIT"]
    assert [env.xcs("/v", two)[0] for _ in range(2)] == ["MISS", "HIT"]
    st, r = env.xcs("/v", one)
    assert (st, r.body) == ("HIT", b"foo=1 #1\n")
    st, r = env.xcs("/v", two)
    assert (st, r.body) == ("HIT", b"foo=2 #2\n")
    assert r.header("Vary") == "X-Foo"
    assert env.statuses("/v", 2) == ["MISS", "HIT"]     # without X-Foo: a variant of its own
    assert env.origin.hits("/v") == 3


def test_an_answer_that_no_longer_varies_replaces_the_marker(env):
    env.origin.script["/vn"] = lambda req, n: Answer(
        headers=[("Cache-Control", "max-age=1")] + ([("Vary", "X-Foo")] if n == 1 else []))
    one = [("X-Foo", "1")]
    assert env.statuses("/vn", 2, one) == ["MISS", "HIT"]
    r = env.until_not_hit("/vn", one)
    # (EXPIRED or MISS: how an expired variant is labelled is test_vary_entries_expire_like_others')
    assert r.header("X-Cache-Status") in ("EXPIRED", "MISS") and r.body == b"/vn #2\n", r
    # no Vary any more: one entry, whatever X-Foo says
    assert env.xcs("/vn", [("X-Foo", "2")])[1].body == b"/vn #2\n"
    assert env.xcs("/vn")[1].body == b"/vn #2\n"
    assert env.origin.hits("/vn") == 2


def test_vary_entries_expire_like_others(env):
    """An expired variant is revalidated (REVALIDATED on the origin's 304), served stale when
    the origin fails (STALE), and replaced as EXPIRED, as entries without Vary are."""
    def revalidating(req, n):
        if n > 1 and req.header("If-None-Match") == '"e1"':
            return Answer(304, headers=[("ETag", '"e1"'), ("Cache-Control", "max-age=60")], reason="Not Modified")
        return Answer(headers=[("Cache-Control", "max-age=1"), ("Vary", "X-Foo"), ("ETag", f'"e{n}"')])
    env.origin.script["/ve/reval"] = revalidating
    env.origin.script["/ve/stale"] = lambda req, n: (
        Answer(headers=[("Cache-Control", "max-age=1"), ("Vary", "X-Foo")]) if n == 1
        else Answer(503, b"down\n", reason="Service Unavailable"))
    env.origin.script["/ve/expired"] = lambda req, n: Answer(headers=[("Cache-Control", "max-age=1"), ("Vary", "X-Foo")])
    one = [("X-Foo", "1")]
    want = {"/ve/reval": ("REVALIDATED", 200, b"/ve/reval #1\n"), "/ve/stale": ("STALE", 200, b"/ve/stale #1\n"),
            "/ve/expired": ("EXPIRED", 200, b"/ve/expired #2\n")}
    for path in want:
        assert env.statuses(path, 2, one) == ["MISS", "HIT"], path
    got = {}
    for path in want:
        r = env.until_not_hit(path, one)
        got[path] = (r.header("X-Cache-Status"), r.status, r.body)
    conditionals = [q.header("If-None-Match") for q in env.origin.requests("/ve/reval")]
    assert got == want, (got, f"If-None-Match sent to the origin: {conditionals}")


def test_ttl_precedence_s_maxage_max_age_expires_valid(env):
    # Dates have one-second resolution: the Expires cases give two seconds
    expiring = {
        "/ttl/smaxage": lambda: [("Cache-Control", "s-maxage=1, max-age=600")],
        "/ttl/maxage": lambda: [("Cache-Control", "max-age=1")],
        "/ttl/expires": lambda: [("Expires", http_date(time.time() + 2))],
        "/short/valid": lambda: [],                      # valid: {"200": 1s}
    }
    lasting = {
        "/ttl/smaxage-long": lambda: [("Cache-Control", "s-maxage=600, max-age=1")],
        "/ttl/maxage-over-expires": lambda: [("Cache-Control", "max-age=600"),
                                             ("Expires", http_date(time.time() + 1))],
        "/ttl/plain": lambda: [],                        # valid: {"200": 10m}
    }
    for path, headers in {**expiring, **lasting}.items():
        env.origin.script[path] = lambda req, n, h=headers: Answer(headers=h())
        assert env.statuses(path, 2) == ["MISS", "HIT"], path
    for path in expiring:
        r = env.until_not_hit(path)
        assert (r.header("X-Cache-Status"), r.status, r.body) == ("EXPIRED", 200, f"{path} #2\n".encode()), \
            (path, r)
    for path in lasting:
        st, r = env.xcs(path)
        assert (st, r.body) == ("HIT", f"{path} #1\n".encode()), (path, r)
        assert int(r.header("Age")) >= 1, (path, r.header_list)
    assert [env.origin.hits(p) for p in expiring] == [2] * len(expiring)
    assert [env.origin.hits(p) for p in lasting] == [1] * len(lasting)


def test_expires_counts_from_the_origins_date(env):
    """An origin whose clock is an hour behind: Expires two seconds after its Date is a
    lifetime of two seconds, not an answer that expired an hour ago."""
    env.origin.script["/ttl/date"] = lambda req, n: Answer(headers=[("Date", http_date(time.time() - 3600)),
                                                                    ("Expires", http_date(time.time() - 3598))])
    assert env.statuses("/ttl/date", 2) == ["MISS", "HIT"]
    r = env.until_not_hit("/ttl/date")
    assert r.header("X-Cache-Status") == "EXPIRED", r
    assert env.origin.hits("/ttl/date") == 2


# ---- bypass -----------------------------------------------------------------------------------------

BYPASSES = {
    "/b/authorization": [("Authorization", "Bearer x")],
    "/b/cookie": [("Cookie", "theme=dark; session=abc")],
    "/b/header": [("X-No-Cache", "1")],
}


def test_bypass_on_skips_lookup_and_store(env):
    for path, headers in BYPASSES.items():
        assert env.statuses(path, 2, headers) == ["BYPASS", "BYPASS"], path
        assert env.origin.hits(path) == 2
        assert env.xcs(path)[0] == "MISS", path      # the bypassed answers were not stored
        assert env.statuses(path, 2, headers) == ["BYPASS", "BYPASS"], path  # nor is the lookup made
        assert env.xcs(path)[0] == "HIT", path
        assert env.origin.hits(path) == 5, path
    # query:nocache (present, not empty, not 0): the query is part of the key too, so
    # such a request is never answered from the cache nor stores anything
    assert env.statuses("/b/q?nocache=1", 3) == ["BYPASS"] * 3
    assert env.statuses("/b/q?nocache=0", 2) == ["MISS", "HIT"]
    assert env.statuses("/b/q?nocache=", 2) == ["MISS", "HIT"]
    assert [env.origin.hits(t) for t in ("/b/q?nocache=1", "/b/q?nocache=0", "/b/q?nocache=")] == [3, 1, 1]


def test_other_cookies_do_not_bypass_and_post_is_bypass(env):
    assert env.statuses("/c", 2, [("Cookie", "theme=dark; sessionid=1")]) == ["MISS", "HIT"]
    for method in ("POST", "PUT", "DELETE"):
        st, r = env.xcs("/c", method=method, body=b"x=1")
        assert (st, r.status, r.body) == ("BYPASS", 200, f"/c #{env.origin.hits('/c')}\n".encode()), (method, r)
    assert [r.method for r in env.origin.requests("/c")] == ["GET", "POST", "PUT", "DELETE"]


# ---- HEAD, Range, conditionals ------------------------------------------------------------------------

def test_head_served_from_a_cached_get(env):
    body = b"x" * 3000
    env.origin.script["/h"] = Answer(body=body, headers=[("ETag", '"h1"')])
    assert env.xcs("/h")[0] == "MISS"
    st, r = env.xcs("/h", method="HEAD")
    assert (st, r.status, r.body) == ("HIT", 200, b""), r
    assert r.header("Content-Length") == "3000" and r.header("ETag") == '"h1"', r.header_list
    assert env.origin.hits("/h") == 1
    # a HEAD that misses goes to the origin as HEAD and stores nothing
    st, r = env.xcs("/h2", method="HEAD")
    assert (st, r.status) == ("MISS", 200)
    assert [q.method for q in env.origin.requests("/h2")] == ["HEAD"]
    assert env.statuses("/h2", 2) == ["MISS", "HIT"]


RANGE_BODY = bytes(range(256)) * 80       # 20480 bytes


def range_env(env_factory, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "obj").write_bytes(RANGE_BODY)
    e = env_factory(www=www)
    e.origin.script["/obj"] = Answer(body=RANGE_BODY, headers=[("Content-Type", "application/octet-stream")])
    return e


def test_range_on_a_cached_object_is_206_from_the_cache(env_factory, tmp_path):
    e = range_env(env_factory, tmp_path)
    assert e.xcs("/obj")[0] == "MISS"
    for spec, first, last in (("100-199", 100, 199), ("-100", 20380, 20479), ("20000-", 20000, 20479),
                              ("0-0", 0, 0), ("20400-99999", 20400, 20479)):
        st, r = e.xcs("/obj", [("Range", f"bytes={spec}")])
        assert (st, r.status) == ("HIT", 206), (spec, r)
        assert r.header("Content-Range") == f"bytes {first}-{last}/20480", (spec, r.header_list)
        assert r.body == RANGE_BODY[first:last + 1] and r.header("Content-Length") == str(last - first + 1), spec
    assert e.origin.hits("/obj") == 1
    # a small entry (each worker keeps those in memory too)
    e.origin.script["/small"] = Answer(body=RANGE_BODY[:100])
    assert e.xcs("/small")[0] == "MISS"
    for _ in range(2):
        st, r = e.xcs("/small", [("Range", "bytes=10-19")])
        assert (st, r.status, r.header("Content-Range"), r.body) == ("HIT", 206, "bytes 10-19/100", RANGE_BODY[10:20])


def test_other_ranges_are_answered_as_static_files_answer_them(env_factory, tmp_path):
    """Several ranges, unsatisfiable, invalid, another unit: the static handler's answers."""
    e = range_env(env_factory, tmp_path)
    assert e.xcs("/obj")[0] == "MISS"
    for spec in ("bytes=0-1,5-6", "bytes=30000-", "bytes=20480-", "bytes=5-2", "items=0-1"):
        ref = e.get("/static/obj", [("Range", spec)])
        st, r = e.xcs("/obj", [("Range", spec)])
        assert st == "HIT" and r.status == ref.status, (spec, ref, r)
        assert r.header("Content-Range") == ref.header("Content-Range"), (spec, ref.header_list, r.header_list)
        assert r.body == ref.body, spec
    assert e.origin.hits("/obj") == 1


def test_range_on_a_miss_fills_the_whole_object(env_factory, tmp_path):
    """docs/cache.md: on a miss the origin is asked for the whole object, which is stored;
    the client gets its range (206) or, as documented for now, the whole object (200)."""
    e = range_env(env_factory, tmp_path)
    st, r = e.xcs("/obj", [("Range", "bytes=1000-1999")])
    assert st == "MISS" and r.status in (200, 206), r
    if r.status == 206:
        assert r.header("Content-Range") == "bytes 1000-1999/20480" and r.body == RANGE_BODY[1000:2000]
    else:
        assert r.body == RANGE_BODY and r.header("Content-Range") is None
    assert [q.header("Range") for q in e.origin.requests("/obj")] == [None]   # the whole object was asked for
    st, r = e.xcs("/obj", [("Range", "bytes=1000-1999")])
    assert (st, r.status, r.body) == ("HIT", 206, RANGE_BODY[1000:2000])
    st, r = e.xcs("/obj")
    assert (st, r.status, r.body) == ("HIT", 200, RANGE_BODY)
    assert e.origin.hits("/obj") == 1


def test_client_if_none_match_on_a_hit_is_304(env):
    env.origin.script["/e"] = Answer(headers=[("ETag", '"v7"'), ("Last-Modified", http_date(time.time() - 60))])
    assert env.xcs("/e")[0] == "MISS"
    st, r = env.xcs("/e", [("If-None-Match", '"v7"')])
    assert (st, r.status, r.body) == ("HIT", 304, b""), r
    assert r.header("ETag") == '"v7"'
    st, r = env.xcs("/e", [("If-None-Match", '"other"')])
    assert (st, r.status, r.body) == ("HIT", 200, b"/e #1\n"), r
    assert env.origin.hits("/e") == 1


# ---- expiry: EXPIRED, STALE, UPDATING, REVALIDATED -----------------------------------------------------

def test_stale_on_listed_5xx_and_timeout_then_error(env):
    short = [("Cache-Control", "max-age=1")]
    paths = ["/st/500", "/st/502", "/st/503", "/st/504", "/st/501", "/t/slow", "/st/down"]
    for path in paths:
        env.origin.script[path] = Answer(headers=short)
        assert env.statuses(path, 2) == ["MISS", "HIT"], path
    for code in (500, 502, 503, 504, 501):
        env.origin.script[f"/st/{code}"] = Answer(code, b"origin error\n", reason="Err")
    env.origin.script["/t/slow"] = Answer(delay=1.5)      # the /t/ route times out after 500 ms
    for code in (500, 502, 503, 504):
        r = env.until_not_hit(f"/st/{code}")
        assert (r.header("X-Cache-Status"), r.status, r.body) == ("STALE", 200, f"/st/{code} #1\n".encode()), \
            (code, r)
    # 501 is not listed in use_stale: the origin's answer goes to the client
    r = env.until_not_hit("/st/501")
    assert (r.header("X-Cache-Status"), r.status, r.body) == ("EXPIRED", 501, b"origin error\n"), r
    t0 = time.monotonic()
    r = env.until_not_hit("/t/slow")
    assert (r.header("X-Cache-Status"), r.status, r.body) == ("STALE", 200, b"/t/slow #1\n"), r
    assert time.monotonic() - t0 < 1.4
    # error: the origin refuses connections
    env.origin.backend.stop()
    r = env.until_not_hit("/st/down")
    assert (r.header("X-Cache-Status"), r.status, r.body) == ("STALE", 200, b"/st/down #1\n"), r
    assert env.xcs("/st/down")[0] == "STALE"
    z = cache_stats(env.p)[ZONE]
    assert (z["stale"], z["expired"]) == (7, 1), z


def test_proxyd_errors_on_a_cached_route_carry_miss(env):
    env.origin.script["/t/timeout"] = Answer(delay=1.5)
    st, r = env.xcs("/t/timeout")
    assert (st, r.status) == ("MISS", 504), r
    env.origin.backend.stop()
    st, r = env.xcs("/refused")
    assert st == "MISS" and r.status in (502, 503), r


def test_updating_serves_stale_at_once_and_refreshes_once_in_the_background(env):
    gate = env.origin.event()
    env.origin.script["/upd/x"] = lambda req, n: Answer(headers=[("Cache-Control", "max-age=1")],
                                                        gate=gate if n > 1 else None)
    assert env.statuses("/upd/x", 2) == ["MISS", "HIT"]
    t0 = time.monotonic()
    r = env.until_not_hit("/upd/x")
    assert (r.header("X-Cache-Status"), r.body) == ("UPDATING", b"/upd/x #1\n"), r
    t1 = time.monotonic()
    assert wait_for(lambda: env.origin.hits("/upd/x") == 2, 3), "no background refresh reached the origin"
    for _ in range(3):
        st, r = env.xcs("/upd/x")
        assert (st, r.body) == ("UPDATING", b"/upd/x #1\n"), r
    assert time.monotonic() - t1 < 1.0, "UPDATING answers waited for the refresh"
    gate.set()
    ok = wait_for(lambda: env.xcs("/upd/x")[1].body == b"/upd/x #2\n", 3)
    assert ok, "the refreshed entry never replaced the stale one"
    st, r = env.xcs("/upd/x")
    assert (st, r.body) == ("HIT", b"/upd/x #2\n")
    assert env.origin.hits("/upd/x") == 2
    assert cache_stats(env.p)[ZONE]["updating"] >= 4
    assert time.monotonic() - t0 < 8


@pytest.mark.parametrize("validator,conditional", [
    (("ETag", '"r1"'), ("If-None-Match", '"r1"')),
    (("Last-Modified", "Tue, 01 Dec 2026 10:00:00 GMT"), ("If-Modified-Since", "Tue, 01 Dec 2026 10:00:00 GMT")),
], ids=["etag", "last-modified"])
def test_revalidation_304_refreshes_the_entry(env, validator, conditional):
    def answer(req, n):
        if n > 1 and req.header(conditional[0]) == conditional[1]:
            return Answer(304, headers=[validator, ("Cache-Control", "max-age=600")], reason="Not Modified")
        return Answer(headers=[validator, ("Cache-Control", "max-age=1")])
    env.origin.script["/rv"] = answer
    assert env.statuses("/rv", 2) == ["MISS", "HIT"]
    r = env.until_not_hit("/rv")
    assert (r.header("X-Cache-Status"), r.status, r.body) == ("REVALIDATED", 200, b"/rv #1\n"), r
    assert r.header(validator[0]) == validator[1]
    reqs = env.origin.requests("/rv")
    assert len(reqs) == 2 and reqs[1].header(conditional[0]) == conditional[1], [q.headers for q in reqs]
    # the 304's max-age=600 is the entry's new lifetime, its Age counts from the revalidation
    st, r = env.xcs("/rv")
    assert (st, r.body) == ("HIT", b"/rv #1\n") and int(r.header("Age")) <= 1, r
    assert env.origin.hits("/rv") == 2
    assert metric(env.p, "proxyd_cache_requests_total", zone=ZONE, status="revalidated") == 1


def test_changed_validator_gets_a_new_body_as_expired(env):
    env.origin.script["/rc"] = lambda req, n: Answer(headers=[("ETag", f'"v{n}"'), ("Cache-Control", "max-age=1")])
    assert env.statuses("/rc", 2) == ["MISS", "HIT"]
    r = env.until_not_hit("/rc")
    assert (r.header("X-Cache-Status"), r.body, r.header("ETag")) == ("EXPIRED", b"/rc #2\n", '"v2"'), r
    assert env.origin.requests("/rc")[1].header("If-None-Match") == '"v1"'
    assert env.xcs("/rc")[1].body == b"/rc #2\n"


# ---- the cache lock --------------------------------------------------------------------------------

def in_threads(n, fn, timeout=20.0):
    """fn(i) in n threads started together; their results (an exception is a result)."""
    results = [None] * n
    barrier = threading.Barrier(n)

    def one(i):
        try:
            barrier.wait(5)
            results[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - reported by the callers' assertions
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return results


def concurrent_gets(env, path, n, timeout=10.0):
    results = in_threads(n, lambda i: env.get(path, timeout=timeout), timeout + 10)
    bad = [r for r in results if not hasattr(r, "status")]
    assert not bad, bad[:3]
    return results


def requests_per_worker(p):
    return [w["requests"] for w in p.status()["workers"]]


def test_stampede_on_a_cold_key_reaches_the_origin_once(env_factory):
    """60 clients at once on a cold key, the origin taking 1 s: one origin request.  The
    kernel decides which worker takes which client; a round that one worker took whole is
    repeated on another key (up to three) so that the lock is seen across workers."""
    e = env_factory(workers=2)
    hot = b"hot object\n" * 100
    for k in range(3):
        path = f"/hot{k}"
        e.origin.script[path] = Answer(body=hot, delay=1.0)
        before = requests_per_worker(e.p)
        t0 = time.monotonic()
        results = concurrent_gets(e, path, 60)
        elapsed = time.monotonic() - t0
        bad = [r for r in results if r.status != 200 or r.body != hot]
        assert not bad, bad[:3]
        assert e.origin.hits(path) == 1
        got = collections.Counter(r.header("X-Cache-Status") for r in results)
        assert got == {"MISS": 1, "HIT": 59}, got
        assert elapsed < 4, elapsed
        served = [n - b for n, b in zip(requests_per_worker(e.p), before)]
        if all(n > 0 for n in served):
            break
    assert all(n > 0 for n in served), f"one worker took every client in three rounds: {served}"


def test_after_lock_timeout_waiters_go_to_the_origin_and_do_not_store(env):
    # /lock/ has lock_timeout 300ms; the first fill takes 1.5 s, the others answer at once
    env.origin.script["/lock/k"] = lambda req, n: Answer(delay=1.5 if n == 1 else 0)
    results = concurrent_gets(env, "/lock/k", 5)
    got = sorted((r.header("X-Cache-Status"), r.body) for r in results)
    assert [s for s, _ in got] == ["MISS"] * 5, got
    assert b"/lock/k #1\n" in [b for _, b in got]
    assert env.origin.hits("/lock/k") == 5
    st, r = env.xcs("/lock/k")
    assert (st, r.body) == ("HIT", b"/lock/k #1\n"), r     # the first fill's entry, not a waiter's


# ---- storage ----------------------------------------------------------------------------------------

def test_entries_are_files_under_the_zone_path(env):
    for i in range(3):
        assert env.statuses(f"/f{i}", 2) == ["MISS", "HIT"]
    files = [f for f in env.zone_dir.rglob("*") if f.is_file()]
    entries = [f for f in files if re.fullmatch(r"[0-9a-f]{32}", f.name)]
    assert len(entries) == 3, files
    for f in entries:
        assert re.fullmatch(r"[0-9a-f]{2}", f.parent.name) and f.parent.parent == env.zone_dir, f
        assert f.stat().st_size > len(b"/f0 #1\n")
    assert [f for f in files if f.parent == env.zone_dir / "tmp"] == []     # nothing left half written


def test_a_fill_in_one_worker_is_a_hit_in_the_other(env_factory):
    e = env_factory(workers=2)
    before = requests_per_worker(e.p)
    paths = [f"/w/{i}" for i in range(8)]
    for path in paths:
        assert e.xcs(path)[0] == "MISS"
    # a new connection each time: either worker takes it (rounds until both have, at most 3)
    results = []
    for _ in range(3):
        per_client = in_threads(6, lambda k: [e.xcs(path)[0] for path in paths])
        results += [st for r in per_client for st in (r if isinstance(r, list) else [r])]
        served = [n - b for n, b in zip(requests_per_worker(e.p), before)]
        if all(n > 0 for n in served):
            break
    assert results == ["HIT"] * len(results), collections.Counter(results)
    assert all(n > 0 for n in served), f"both workers should have served: {served}"
    assert [e.origin.hits(p) for p in paths] == [1] * 8


def test_an_entry_refreshed_in_one_worker_is_fresh_in_the_other(env_factory):
    """Small entries (kept in each worker's memory too): after one worker refreshes or a
    purge removes an entry, no worker answers with its old copy."""
    e = env_factory(workers=2)
    e.origin.script["/sm"] = lambda req, n: Answer(body=b"version %d\n" % n, headers=[("Cache-Control", "max-age=1")])
    e.origin.script["/sp"] = lambda req, n: Answer(body=b"version %d\n" % n)
    assert e.xcs("/sm")[0] == "MISS" and e.xcs("/sp")[0] == "MISS"

    def many(path):
        before = requests_per_worker(e.p)
        rs = [x for r in in_threads(8, lambda k: [e.xcs(path) for _ in range(4)]) for x in r]
        return [(st, r.body) for st, r in rs], [n - b for n, b in zip(requests_per_worker(e.p), before)]

    got, _ = many("/sm")
    assert set(got) == {("HIT", b"version 1\n")}, collections.Counter(got)
    r = e.until_not_hit("/sm")
    assert (r.header("X-Cache-Status"), r.body) == ("EXPIRED", b"version 2\n"), r
    got, served = many("/sm")
    assert set(got) == {("HIT", b"version 2\n")}, (collections.Counter(got), served)
    got, _ = many("/sp")
    assert set(got) == {("HIT", b"version 1\n")}
    rc, out, err = e.p.proxyctl("cache", "purge", "c", "/sp")
    assert rc == 0, err
    assert e.xcs("/sp")[1].body == b"version 2\n"
    got, served = many("/sp")
    assert set(got) == {("HIT", b"version 2\n")}, (collections.Counter(got), served)


def test_reload_and_sighup_keep_the_cache(env):
    assert env.statuses("/rl", 2) == ["MISS", "HIT"]
    rc, out, err = env.p.proxyctl("reload")
    assert rc == 0, err
    assert env.xcs("/rl")[0] == "HIT"
    os.kill(env.p.pid, signal.SIGHUP)
    time.sleep(0.3)
    assert env.xcs("/rl")[0] == "HIT"
    # a new generation (another route added before the cached one)
    env.p.add_site(cache_site(env.origin, site_extra="").replace(
        "routes:\n", "routes:\n  - match: {path_exact: /new}\n    return: {status: 200, body: new}\n", 1))
    assert wait_for(lambda: env.get("/new").body == b"new")
    assert env.xcs("/rl")[0] == "HIT"
    assert env.origin.hits("/rl") == 1


def test_reload_with_changed_zone_settings(env):
    """A zone keeps its entries across a reload that changes max_size or inactive; a zone
    whose path changes starts from its new directory."""
    import yaml
    assert env.statuses("/zs", 2) == ["MISS", "HIT"]

    def set_zone(**kw):
        g = yaml.safe_load(env.p.global_text)
        g["cache_zones"][ZONE].update(kw)
        (env.p.dir / "proxy2.yaml").write_text(yaml.safe_dump(g))
        for args in (["init", "--global", env.p.dir / "proxy2.yaml"], ["reload"]):
            rc, out, err = env.p.proxyctl(*args)
            assert rc == 0, (args, out, err)
        return cache_stats(env.p)[ZONE]

    z = set_zone(max_size="512m", inactive="30m")
    assert z["max_size"] == 512 << 20, z
    assert env.xcs("/zs")[0] == "HIT"
    moved = env.zone_dir.parent / "moved"
    z = set_zone(path=str(moved))
    assert z["path"] == str(moved), z
    assert env.statuses("/zs", 2) == ["MISS", "HIT"]
    assert len([f for f in moved.glob("??/*") if f.is_file()]) == 1
    assert env.origin.hits("/zs") == 2


def test_restart_rebuilds_the_index_from_disk(env):
    paths = [f"/rs/{i}" for i in range(5)]
    for path in paths:
        assert env.statuses(path, 2) == ["MISS", "HIT"]
    env.p.stop()
    env.p.start()
    wait_loaded(env.p)
    assert cache_stats(env.p)[ZONE]["entries"] == 5
    for path in paths:
        st, r = env.xcs(path)
        assert (st, r.body) == ("HIT", f"{path} #1\n".encode()), (path, r)
    assert [env.origin.hits(p) for p in paths] == [1] * 5


def test_binary_upgrade_keeps_the_cache(env):
    from test_reload import _stop_masters, _upgrade
    assert env.statuses("/up", 2) == ["MISS", "HIT"]
    new = None
    try:
        new = _upgrade(env.p)
        st, r = env.xcs("/up")
        assert (st, r.body) == ("HIT", b"/up #1\n"), r
        assert env.statuses("/up2", 2) == ["MISS", "HIT"]
    finally:
        _stop_masters(env.p, [new] if new else [])
        if new:
            wait_for(lambda: not os.path.exists(f"/proc/{new}"), 10)
    assert env.origin.hits("/up") == 1


def test_worker_killed_mid_fill_leaves_no_half_entry(env_factory):
    e = env_factory(zone={"inactive": "10m"}, policy='{zone: z, valid: {"200": 10m}, lock_timeout: 5s}')
    big = bytes(range(256)) * 800           # 204800 bytes
    stall = e.origin.event()
    e.origin.script["/big"] = lambda req, n: Answer(body=big, stall=stall if n == 1 else None)
    s = connect(e.p.port)
    try:
        s.sendall(request_bytes("GET", "/big", HOST))
        got = b""
        deadline = time.monotonic() + 5
        while len(got) < len(big) // 4 and time.monotonic() < deadline:   # half is on its way to us
            got += s.recv(65536)
        assert b"x-cache-status: miss" in got.lower() and len(got) >= len(big) // 4, got[:300]
        time.sleep(0.2)
        old = e.p.worker_pids()
        for pid in old:
            os.kill(pid, signal.SIGKILL)
    finally:
        s.close()
    stall.set()
    restarted = wait_for(lambda: (lambda st: st if all(w["alive"] and w["pid"] not in old for w in st["workers"])
                                  else None)(e.p.status()), 5)
    assert restarted, f"the master did not restart the worker: {e.p.status()}"
    # the dead worker's fill lock is let go of: no wait for lock_timeout (5 s)
    t0 = time.monotonic()
    st, r = e.xcs("/big", timeout=10)
    assert (st, r.status, len(r.body), r.body == big) == ("MISS", 200, len(big), True), (st, r.status, len(r.body))
    assert time.monotonic() - t0 < 2.5, f"the next request waited {time.monotonic() - t0:.1f}s for the dead fill's lock"
    st, r = e.xcs("/big")
    assert (st, r.body == big) == ("HIT", True)
    assert e.origin.hits("/big") == 2


def test_unwritable_path_serves_from_the_origin_and_logs_once(proxyd_factory, backend_factory, tmp_path):
    # the zone's parent is a regular file: nothing can be created there, root or not
    (tmp_path / "afile").write_text("not a directory\n")
    origin = ScriptedOrigin(backend_factory)
    zone_dir = tmp_path / "afile" / "zone"
    p = proxyd_factory(zone_settings(zone_dir), sites=[cache_site(origin)], workers=1)
    e = CacheEnv(p, origin, zone_dir)

    def logged():
        return [ln for ln in (p.error_log_text() + p.stderr_text()).splitlines()
                if str(zone_dir) in ln and "[error]" in ln]

    for path in ("/u1", "/u1"):
        st, r = e.xcs(path)
        assert (st, r.status, r.body) == ("MISS", 200, f"{path} #{origin.hits(path)}\n".encode()), r
    first = wait_for(logged, 2)
    assert first, f"no error about {zone_dir} logged:\n{p.diagnostics()}"
    for i in range(6):
        st, r = e.xcs(f"/u{i}")
        assert (st, r.status) == ("MISS", 200), r
    time.sleep(0.2)
    assert logged() == first, "the error is logged again for each request"
    # once: at most the zone's setup (master) and the first store that failed (worker)
    assert len(first) <= 2, "\n".join(first)


def test_origin_cut_mid_body_is_not_stored(env):
    body = bytes(range(256)) * 200
    cut = env.origin.event()
    cut.set()                        # half the body, then the origin closes
    env.origin.script["/cut"] = lambda req, n: Answer(body=body, stall=cut if n == 1 else None)
    st, r = env.xcs("/cut")
    assert st == "MISS" and not r.complete and len(r.body) < len(body), r
    st, r = env.xcs("/cut")
    assert (st, r.body == body) == ("MISS", True), (st, len(r.body))
    assert env.xcs("/cut")[1].body == body
    assert env.origin.hits("/cut") == 2


def test_client_gone_mid_fill_leaves_no_half_entry(env):
    body = bytes(range(256)) * 800
    pause = env.origin.event()
    env.origin.script["/gone"] = lambda req, n: Answer(body=body, pause=pause if n == 1 else None)
    s = connect(env.p.port)
    try:
        s.sendall(request_bytes("GET", "/gone", HOST))
        assert s.recv(65536)
    finally:
        s.close()                    # the client leaves while the origin is half way
    time.sleep(0.1)
    pause.set()
    got = []
    for _ in range(3):
        st, r = env.xcs("/gone")
        got.append(st)
        assert r.body == body, (st, len(r.body))
    # the fill either went on without its client (HIT) or was dropped (one MISS refills it)
    assert got in (["HIT"] * 3, ["MISS", "HIT", "HIT"]), got
    assert env.origin.hits("/gone") == got.count("MISS") + 1


def test_hits_on_one_keep_alive_connection(env):
    """A 1 MiB entry sent (sendfile) three times on one connection, pipelined: GET, HEAD,
    Range; the framing holds."""
    body = os.urandom(1 << 20)
    env.origin.script["/ka"] = Answer(body=body, headers=[("Content-Type", "application/octet-stream")])
    assert env.xcs("/ka")[0] == "MISS"
    s = keepalive_socket(env.p.port)
    try:
        s.sendall(request_bytes("GET", "/ka", HOST) + request_bytes("HEAD", "/ka", HOST)
                  + request_bytes("GET", "/ka", HOST, [("Range", "bytes=1000-1999")]))
        r1 = read_response(s, 10)
        r2 = read_response(s, 10, head_request=True)
        r3 = read_response(s, 10)
    finally:
        s.close()
    assert (r1.status, r1.header("X-Cache-Status"), r1.body == body) == (200, "HIT", True), r1
    assert (r2.status, r2.header("X-Cache-Status"), r2.header("Content-Length")) == (200, "HIT", str(1 << 20)), r2
    assert (r3.status, r3.header("X-Cache-Status"), r3.body) == (206, "HIT", body[1000:2000]), r3
    assert env.origin.hits("/ka") == 1


# ---- eviction --------------------------------------------------------------------------------------

def test_max_size_evicts_least_recently_used_first(env_factory):
    # 18000-byte bodies: 3 entries fit in 64k whether sizes count bytes or 4 KiB blocks, 4 do not
    e = env_factory(zone={"max_size": "64k"})
    for k in "abcd":
        e.origin.script[f"/ev/{k}"] = Answer(body=k.encode() * 18000)
    for k in "abc":
        assert e.xcs(f"/ev/{k}")[0] == "MISS"
    assert e.xcs("/ev/a")[0] == "HIT"          # a is now more recent than b
    assert e.xcs("/ev/d")[0] == "MISS"
    assert wait_for(lambda: cache_stats(e.p)[ZONE]["entries"] <= 3, 5), cache_stats(e.p)
    for k in "acd":
        st, r = e.xcs(f"/ev/{k}")
        assert (st, r.body) == ("HIT", k.encode() * 18000), k
    assert e.xcs("/ev/b")[0] == "MISS"
    z = cache_stats(e.p)[ZONE]
    assert z["size"] <= 65536 and z["evictions"] >= 1, z
    assert metric(e.p, "proxyd_cache_evictions_total", zone=ZONE) >= 1


def test_inactive_entries_are_removed(env_factory):
    e = env_factory(zone={"inactive": "1s"})
    assert e.statuses("/in/cold", 2) == ["MISS", "HIT"]
    assert e.statuses("/in/warm", 2) == ["MISS", "HIT"]
    deadline = time.monotonic() + 6
    last = time.monotonic()

    def warm_stays():          # used every 300 ms: never a second without a read
        nonlocal last
        st = e.xcs("/in/warm")[0]
        assert st == "HIT", f"/in/warm, last read {time.monotonic() - last:.2f}s before (wall {time.time():.3f}), is gone"
        last = time.monotonic()

    while time.monotonic() < deadline and cache_stats(e.p)[ZONE]["entries"] != 1:
        warm_stays()
        time.sleep(0.3)
    assert cache_stats(e.p)[ZONE]["entries"] == 1, cache_stats(e.p)
    assert e.xcs("/in/cold")[0] == "MISS"
    warm_stays()


# ---- purge, stats, metrics ------------------------------------------------------------------------

def test_purge_by_site_and_prefix(env):
    env.p.add_site(cache_site(env.origin, name="c2", hosts=("c2.test",), default=False))
    paths = ["/p/a", "/p/b", "/q/c"]
    for path in paths:
        assert env.statuses(path, 2) == ["MISS", "HIT"]
    assert [env.xcs("/p/a", host="c2.test")[0] for _ in range(2)] == ["MISS", "HIT"]
    rc, out, err = env.p.proxyctl("cache", "purge", "c", "/p")
    assert rc == 0 and re.search(r"\bpurged 2 entries\b", out), (rc, out, err)
    assert [env.xcs(p)[0] for p in paths] == ["MISS", "MISS", "HIT"]
    assert env.xcs("/p/a", host="c2.test")[0] == "HIT"      # another site's entry stays
    st, _, body = env.p.admin("POST", "/cache/purge?site=c&prefix=/q")
    assert (st, json.loads(body)) == (200, {"purged": 1}), body
    assert env.xcs("/q/c")[0] == "MISS"
    rc, out, err = env.p.proxyctl("cache", "purge", "c")    # the whole site: /p/a, /p/b, /q/c
    assert rc == 0 and re.search(r"\bpurged 3 entries\b", out), (rc, out, err)
    assert [env.xcs(p)[0] for p in paths] == ["MISS"] * 3
    assert env.xcs("/p/a", host="c2.test")[0] == "HIT"
    rc, out, err = env.p.proxyctl("cache", "purge", "nosuch")
    assert rc != 0 and "nosuch" in err, (rc, out, err)
    st, _, body = env.p.admin("POST", "/cache/purge?site=nosuch")
    assert st == 404, body


def test_stats_and_metrics(env):
    env.origin.script["/m"] = Answer(body=b"m" * 1000)
    assert env.statuses("/m", 3) == ["MISS", "HIT", "HIT"]
    assert env.xcs("/m", [("Authorization", "Basic eA==")])[0] == "BYPASS"
    z = cache_stats(env.p)[ZONE]
    want = {"name": ZONE, "path": str(env.zone_dir), "entries": 1, "max_size": 1 << 30, "memory": 64 << 20,
            "hits": 2, "misses": 1, "expired": 0, "stale": 0, "updating": 0, "revalidated": 0, "bypass": 1,
            "evictions": 0, "loading": False}
    assert {k: z.get(k) for k in want} == want, z
    assert 1000 <= z["size"] <= 1000 + 8192, z
    assert any(abs(z["hit_ratio"] - x) < 0.01 for x in (2 / 3, 2 / 4)), z
    rc, out, err = env.p.proxyctl("cache", "stats", "--json")
    assert rc == 0, err
    assert {x["name"]: x for x in json.loads(out)["zones"]}[ZONE]["hits"] == 2, out
    rc, out, err = env.p.proxyctl("cache", "stats")
    assert rc == 0, err
    rows = [ln for ln in out.splitlines() if ln.split() and ln.split()[0] == ZONE]
    assert len(rows) == 1, out
    m = metrics(env.p)
    req = {s: m.get(("proxyd_cache_requests_total", frozenset({("zone", ZONE), ("status", s)})))
           for s in ("hit", "miss", "expired", "stale", "updating", "revalidated", "bypass")}
    assert req == {"hit": 2, "miss": 1, "expired": 0, "stale": 0, "updating": 0, "revalidated": 0, "bypass": 1}, req
    assert metric(env.p, "proxyd_cache_entries", zone=ZONE) == 1
    assert metric(env.p, "proxyd_cache_bytes", zone=ZONE) == z["size"]
    assert metric(env.p, "proxyd_cache_evictions_total", zone=ZONE) == 0


def test_two_zones_are_counted_apart(proxyd_factory, backend_factory, tmp_path):
    origin = ScriptedOrigin(backend_factory)
    g = {"cache_zones": {ZONE: {"path": str(tmp_path / "z")}, "y": {"path": str(tmp_path / "y"), "max_size": "10m"}}}
    site = cache_site(origin).replace("routes:\n", "routes:\n  - match: {path_prefix: /y/}\n    upstream: app\n"
                                      '    cache: {zone: y, valid: {"200": 1m}}\n', 1)
    p = proxyd_factory(g, sites=[site], workers=1)
    e = CacheEnv(p, origin, tmp_path / "z")
    assert e.statuses("/y/a", 3) == ["MISS", "HIT", "HIT"]
    assert e.statuses("/a", 2) == ["MISS", "HIT"]
    zs = cache_stats(p)
    assert {n: (z["entries"], z["hits"], z["misses"], z["max_size"]) for n, z in zs.items()} == \
        {ZONE: (1, 1, 1, 1 << 30), "y": (1, 2, 1, 10 << 20)}, zs
    rc, out, err = p.proxyctl("cache", "stats")
    assert rc == 0, err
    assert sorted(ln.split()[0] for ln in out.splitlines()[1:] if ln.strip()) == ["y", ZONE], out
    assert metric(p, "proxyd_cache_requests_total", zone="y", status="hit") == 2
    assert metric(p, "proxyd_cache_requests_total", zone=ZONE, status="hit") == 1
    assert [f.parent.parent.name for f in (tmp_path / "y").glob("??/*")] == ["y"]


# ---- compression and HTTP/2 --------------------------------------------------------------------------

def test_each_coding_is_its_own_entry(env_factory):
    e = env_factory(site_extra="compression: {gzip: true, types: [text/plain], min_length: 256}\n")
    text = b"".join(b"line %d of a text that compresses\n" % i for i in range(300))
    e.origin.script["/z"] = Answer(body=text)
    gz = [("Accept-Encoding", "gzip")]
    for want in ("MISS", "HIT"):
        st, r = e.xcs("/z", gz)
        assert (st, r.header("Content-Encoding")) == (want, "gzip"), r
        assert gzip.decompress(r.body) == text
    for want in ("MISS", "HIT"):
        st, r = e.xcs("/z")
        assert (st, r.header("Content-Encoding"), r.body) == (want, None, text), r
    st, r = e.xcs("/z", gz)
    assert st == "HIT" and gzip.decompress(r.body) == text
    # the key holds the coding chosen, not the Accept-Encoding text
    for ae in ("gzip, deflate", "deflate;q=1, gzip;q=0.5", "br;q=0, gzip"):
        st, r = e.xcs("/z", [("Accept-Encoding", ae)])
        assert (st, r.header("Content-Encoding")) == ("HIT", "gzip"), (ae, r)
    st, r = e.xcs("/z", [("Accept-Encoding", "deflate")])
    assert (st, r.header("Content-Encoding"), r.body) == ("HIT", None, text), r
    assert e.origin.hits("/z") == 2


def test_hit_over_http2_and_scheme_in_the_key(proxyd_factory, backend_factory, tmp_path):
    pytest.importorskip("h2")
    from test_http2 import H2Client
    from tls_fixtures import tls_proxyd
    origin = ScriptedOrigin(backend_factory)
    site = cache_site(origin).replace("routes:\n", "tls: {certificate: self-signed}\nroutes:\n", 1)
    p = tls_proxyd(proxyd_factory, [site], zone_settings(tmp_path / "cache" / ZONE))
    c = H2Client(p.https_port, host=HOST)
    try:
        r1, r2 = c.get("/h2"), c.get("/h2")
    finally:
        c.close()
    assert (r1.status, r1.header("x-cache-status"), bytes(r1.body)) == (200, "MISS", b"/h2 #1\n"), r1
    assert (r2.status, r2.header("x-cache-status"), bytes(r2.body)) == (200, "HIT", b"/h2 #1\n"), r2
    assert r2.header("age") is not None
    # plain http is another scheme: another entry
    e = CacheEnv(p, origin, tmp_path / "cache" / ZONE)
    assert e.statuses("/h2", 2) == ["MISS", "HIT"]
    assert origin.hits("/h2") == 2


# ---- proxyctl ---------------------------------------------------------------------------------------

def proxy_route_site(name):
    return (f"site: {name}\nhosts: [{name}.example.com]\nupstreams: {{app: {{servers: [\"127.0.0.1:3000\"]}}}}\n"
            "routes:\n  - match: {path_prefix: /}\n    upstream: app\n")


def test_proxyctl_validates_the_cache_keys(store, proxyctl, tmp_path):
    ctl = proxyctl
    write(tmp_path, "proxy.yaml", "admin: {socket: admin.sock}\ncache_zones:\n"
          f"  good: {{path: {tmp_path}/good, max_size: 1g, memory: 1g, inactive: 60m}}\n"
          f"  Bad.Zone: {{path: {tmp_path}/bad}}\n"
          f"  big: {{path: {tmp_path}/big, memory: 2g}}\n", dedent=False)
    write(tmp_path, "a.yaml", proxy_route_site("a"), dedent=False)
    rc, out, err = ctl("validate", "--global", "proxy.yaml", "a.yaml")
    lines = err.splitlines()
    assert rc == 1 and out == "", (rc, out, err)
    assert lines[0] == "proxy.yaml:4:3: error: invalid zone name 'Bad.Zone'", err
    assert lines[1].startswith("proxy.yaml:5:") and "memory" in lines[1], err
    assert lines[-1] == "2 errors, 0 warnings", err
    write(tmp_path, "proxy.yaml", f"admin: {{socket: admin.sock}}\ncache_zones:\n  good: {{path: {tmp_path}/good}}\n",
          dedent=False)
    write(tmp_path, "a.yaml", proxy_route_site("a") + "    cache: {zone: nope}\n", dedent=False)
    rc, out, err = ctl("validate", "--global", "proxy.yaml", "a.yaml")
    assert (rc, err.splitlines()) == (1, [
        "a.yaml:7:19: error: unknown cache zone 'nope' (define it under cache_zones in the global settings)",
        "1 error, 0 warnings"]), err
    write(tmp_path, "b.yaml", proxy_route_site("b") + '    cache: {zone: good, valid: {"200": 1m}, '
          "key_headers: [X-Tenant], lock_timeout: 750ms, bypass_on: [authorization], use_stale: [updating]}\n",
          dedent=False)
    rc, out, err = ctl("validate", "--global", "proxy.yaml", "b.yaml")
    assert (rc, err) == (0, ""), err
    # a cache needs a proxy route
    write(tmp_path, "c.yaml", "site: c\nhosts: [c.example.com]\nroutes:\n  - match: {path_prefix: /}\n"
          "    return: {status: 200}\n    cache: {zone: good}\n", dedent=False)
    rc, out, err = ctl("validate", "--global", "proxy.yaml", "c.yaml")
    assert rc == 1 and err.startswith("c.yaml:") and "cache" in err, err


def test_cache_keys_accepted_by_every_command(proxyctl, db, tmp_path):
    """The keys proxyctl refused until proxyd cached (SPEC §9) are accepted everywhere:
    init --global, validate, add-site, apply, block and flow style."""
    from conftest import GLOBAL_YAML
    zones = GLOBAL_YAML + "cache_zones:\n  c: {path: cache/c, max_size: 1g, memory: 64m, inactive: 60m}\n"
    write(tmp_path, "proxy.yaml", zones, dedent=False)
    rc, out, err = proxyctl("init", "--global", "proxy.yaml")
    assert (rc, err) == (0, ""), err
    write(tmp_path, "sites/a.yaml", proxy_route_site("a") + '    cache: {zone: c, valid: {"200": 10m}}\n', dedent=False)
    write(tmp_path, "sites/b.yaml", "site: b\nhosts: [b.example.com]\nupstreams: {app: {servers: ['127.0.0.1:1']}}\n"
          "routes:\n  - {match: {path_prefix: /}, upstream: app, cache: {zone: c}}\n", dedent=False)
    for args in (["validate", "--global", "proxy.yaml", "sites/a.yaml", "sites/b.yaml"], ["add-site", "sites/a.yaml"],
                 ["apply", "--global", "proxy.yaml", "sites"]):
        rc, out, err = proxyctl(*args)
        assert (rc, err) == (0, ""), (args, out, err)
    rc, out, err = proxyctl("dump")
    assert rc == 0 and out.count("cache: zone c") == 2, out


def test_example_cache_site_works_as_written(proxyd_factory, backend_factory, tmp_path):
    """examples/cache.yaml with examples/proxy.yaml's zone, only the upstream and the zone's
    path moved."""
    import yaml
    root = Path(__file__).resolve().parents[2] / "examples"
    origin = ScriptedOrigin(backend_factory)
    zones = yaml.safe_load((root / "proxy.yaml").read_text())["cache_zones"]
    for z in zones.values():
        z["path"] = str(tmp_path / "cache" / Path(z["path"]).name)
    text = re.sub(r'"127\.0\.0\.1:\d+"', f'"{origin.address}"', (root / "cache.yaml").read_text())
    text = re.sub(r"hosts: \[.*\]", f"hosts: [{HOST}]\ndefault: true", text)
    p = proxyd_factory({"cache_zones": zones}, sites=[text], workers=1)
    e = CacheEnv(p, origin, next(iter(zones.values()))["path"])
    assert e.statuses("/articles/1", 2) == ["MISS", "HIT"]
    assert e.statuses("/articles/1?preview=1", 2) == ["BYPASS", "BYPASS"]
    assert e.xcs("/articles/1", [("Cookie", "session=s")])[0] == "BYPASS"
    origin.script["/articles/gone"] = Answer(404, b"gone\n", reason="Not Found")
    assert e.statuses("/articles/gone", 2) == ["MISS", "HIT"]
    assert e.statuses("/api/x", 2, [("X-Tenant", "a")]) == ["MISS", "HIT"]
    assert e.statuses("/api/x", 2, [("X-Tenant", "b")]) == ["MISS", "HIT"]
    assert e.statuses("/other", 2) == [None, None]          # not a cached route
    assert [origin.hits(t) for t in ("/articles/1", "/articles/1?preview=1", "/api/x", "/other")] == [2, 2, 2, 2]


def test_dump_and_route_test_show_the_policy(env):
    rc, out, err = env.p.proxyctl("route-test", f"http://{HOST}/x")
    assert rc == 0, err
    assert "  cache: zone z, 200 for 10m, 404 for 1m" in out, out
    rc, out, err = env.p.proxyctl("dump")
    assert rc == 0, err
    assert "cache_zone z: path " + str(env.zone_dir) in out, out
