"""path_regex that cannot be decided fails closed (issue 17, item 2).

A match that hits PCRE2's limits is never "no match": on a return route it
counts as a match, on any other route the request gets 500 and no later route
is tried.  route-test shows what proxyd does; proxyctl warns at compile time
about patterns that backtrack catastrophically.
"""
import json
import time

from conftest import write
from proxyd_fixtures import http, origin_factory, proxyd_factory, wait_for  # noqa: F401

# 36 a's and a character that makes (a+)+$ fail only after trying every split.
EVIL = "/" + "a" * 36 + "!"

SITE = r"""
site: rx
hosts: [rx.test]
upstreams:
  app: {servers: ["127.0.0.1:3001"]}
routes:
  - match: {path_regex: '^/deny(a+)+$'}
    return: {status: 403}
  - match: {path_regex: '^/app(a+)+$'}
    upstream: app
  - match: {path_regex: '^/get(a+)+$', methods: [GET]}
    upstream: app
  - match: {path_prefix: /}
    return: {status: 200, body: fell through}
"""

WARNING = ("rx.yaml:{line}:{col}: warning: path_regex may backtrack catastrophically (nested quantifier over 'a+' in "
           "'(a+)+'): a path that nearly matches hits proxyd's match limit, and the route fails closed\n")


def add_rx_site(store, proxyctl, tmp_path):
    write(tmp_path, "rx.yaml", SITE)
    rc, out, err = proxyctl("add-site", "rx.yaml")
    assert rc == 0, err
    return out, err


def route_test(proxyctl, *args):
    rc, out, err = proxyctl("route-test", *args)
    assert rc == 0, err
    assert err == ""
    return out


def test_add_site_warns_about_nested_quantifiers_and_stores(store, proxyctl, tmp_path):
    out, err = add_rx_site(store, proxyctl, tmp_path)
    assert out.startswith("site 'rx' added; generation 2 active")
    # One warning per pattern, at its repeated group (the patterns start at column 26).
    assert err == "".join(WARNING.format(line=line, col=col) for line, col in ((6, 32), (8, 31), (10, 31)))
    rc, out, err2 = proxyctl("validate", "rx.yaml")
    assert rc == 0 and out == "1 file valid\n"
    assert err2 == err


def test_no_warning_for_ordinary_patterns(store, proxyctl, tmp_path):
    write(tmp_path, "ok.yaml", r"""
        site: ok
        hosts: [ok.test]
        routes:
          - match: {path_regex: '^/api/(v1|v2)/'}
            return: {status: 200}
          - match: {path_regex: '\.(git|env)$'}
            return: {status: 404}
          - match: {path_regex: '(?i)\.php$'}
            return: {status: 404}
          - match: {path_regex: '^/(\w+/)*\w+\.html$'}
            return: {status: 200}
        """)
    rc, out, err = proxyctl("add-site", "ok.yaml")
    assert rc == 0, err
    assert err == ""


def test_route_test_counts_a_failed_deny_rule_as_matched(store, proxyctl, tmp_path):
    add_rx_site(store, proxyctl, tmp_path)
    t0 = time.monotonic()
    out = route_test(proxyctl, "http://rx.test/deny" + EVIL[1:])
    assert time.monotonic() - t0 < 10   # the match limit stops it (PCRE2's default would take far longer)
    assert out == ("request: GET http://rx.test/deny" + EVIL[1:] + "\n"
                   "site: rx (rx.yaml)\n"
                   "note: path_regex of route 1 (rx.yaml:6:5) failed: match limit exceeded; "
                   "proxyd counts it as a match of this return route\n"
                   "route 1 (rx.yaml:6:5): path_regex ^/deny(a+)+$, methods any\n"
                   "  return 403\n"
                   "  timeouts: connect 5s, read 1m, send 1m\n")


def test_route_test_shows_500_not_a_later_route(store, proxyctl, tmp_path):
    add_rx_site(store, proxyctl, tmp_path)
    out = route_test(proxyctl, "http://rx.test/app" + EVIL[1:])
    assert out == ("request: GET http://rx.test/app" + EVIL[1:] + "\n"
                   "site: rx (rx.yaml)\n"
                   "note: path_regex of route 2 (rx.yaml:8:5) failed: match limit exceeded; "
                   "proxyd fails closed with 500 and tries no later route\n"
                   "result: 500 regex match failed\n")
    j = json.loads(route_test(proxyctl, "--json", "http://rx.test/app" + EVIL[1:]))
    assert j == {"site": "rx", "source": "rx.yaml", "status": 500,
                 "request": {"method": "GET", "scheme": "http", "host": "rx.test", "path": "/app" + EVIL[1:]},
                 "regex_failed": {"route": 2, "line": 8, "error": "match limit exceeded"}}


def test_route_test_failed_route_without_the_method(store, proxyctl, tmp_path):
    add_rx_site(store, proxyctl, tmp_path)
    # Route 3 takes GET only: for POST it cannot win, so matching goes on.
    out = route_test(proxyctl, "-X", "POST", "http://rx.test/get" + EVIL[1:])
    assert "note: path_regex of route 3 (rx.yaml:10:5) failed: match limit exceeded; " \
           "the route does not take this method\n" in out
    assert "route 4 (rx.yaml:12:5): path_prefix /, methods any\n" in out
    out = route_test(proxyctl, "http://rx.test/get" + EVIL[1:])
    assert out.endswith("result: 500 regex match failed\n")


def test_route_test_ordinary_paths_unchanged(store, proxyctl, tmp_path):
    add_rx_site(store, proxyctl, tmp_path)
    assert "route 1 (rx.yaml:6:5)" in route_test(proxyctl, "http://rx.test/denyaaa")
    assert "route 2 (rx.yaml:8:5)" in route_test(proxyctl, "http://rx.test/appa")
    out = route_test(proxyctl, "http://rx.test/app!")
    assert "route 4 (rx.yaml:12:5)" in out and "note:" not in out


# ---- proxyd ---------------------------------------------------------------------------

def rx_proxyd_site(origin):
    return SITE.replace("127.0.0.1:3001", origin.address)


def test_proxyd_fails_closed(proxyd_factory, origin_factory):
    origin = origin_factory(echo=True)
    p = proxyd_factory(sites=[rx_proxyd_site(origin)], workers=1)
    r = http(p.port, target="/deny" + EVIL[1:], host="rx.test")
    assert r.status == 403, r                 # the deny rule, not the 200 behind it
    line = wait_for(lambda: [l for l in p.error_log_text().splitlines() if "path_regex" in l])
    assert line, p.diagnostics()
    assert "site rx: path_regex '^/deny(a+)+$' (route 1, " in line[0]
    assert ("-1-rx.yaml:7) failed on a 42-byte path: match limit exceeded; "
            "failing closed (counted as a match of this return route)") in line[0]
    time.sleep(1.1)                           # one such line a second per worker
    r = http(p.port, target="/app" + EVIL[1:], host="rx.test")
    assert r.status == 500, r                 # not the later "fell through" route
    assert b"fell through" not in r.body
    lines = wait_for(lambda: [l for l in p.error_log_text().splitlines() if "route 2," in l])
    assert lines and "failing closed (500 if the route takes the method)" in lines[0], p.diagnostics()
    # Ordinary paths are unaffected.
    assert http(p.port, target="/appaaa", host="rx.test").status == 200
    r = http(p.port, target="/other", host="rx.test")
    assert r.status == 200 and r.body == b"fell through"


def test_proxyd_failure_log_is_rate_limited(proxyd_factory, origin_factory):
    origin = origin_factory(echo=True)
    p = proxyd_factory(sites=[rx_proxyd_site(origin)], workers=1)
    t0 = time.monotonic()
    for _ in range(30):
        assert http(p.port, target="/app" + EVIL[1:], host="rx.test").status == 500
    elapsed = time.monotonic() - t0
    time.sleep(0.3)
    lines = [l for l in p.error_log_text().splitlines() if "path_regex" in l]
    assert 1 <= len(lines) <= int(elapsed) + 2, lines


UTF8_SITE = r"""
site: u8
hosts: [u8.test]
routes:
  - match: {path_regex: '(?i)\.(git|env)$'}
    return: {status: 404, body: blocked}
  - match: {path_regex: '^/caf.\.txt$'}
    return: {status: 200, body: cafe}
  - match: {path_prefix: /}
    return: {status: 200, body: other}
"""


def test_paths_that_are_not_utf8_are_matched_not_failed(proxyd_factory):
    """A path whose decoded bytes are not UTF-8 (%FF) is matched like any other: its invalid
    bytes match no pattern character (PCRE2_MATCH_INVALID_UTF), so a deny pattern still catches
    what it names and every other path goes on to the later routes, with nothing logged."""
    p = proxyd_factory(sites=[UTF8_SITE], workers=1)
    cases = [("/a%FF.git", 404, b"blocked"), ("/%FF%FE/x", 200, b"other"), ("/caf%C3%A9.txt", 200, b"cafe"),
             ("/caf%FF.txt", 200, b"other"), ("/x%C3.ENV", 404, b"blocked")]
    for target, status, body in cases:
        r = http(p.port, target=target, host="u8.test")
        assert (r.status, r.body) == (status, body), target
    assert "path_regex" not in p.error_log_text(), p.diagnostics()


def test_route_test_matches_paths_that_are_not_utf8(store, proxyctl, tmp_path):
    write(tmp_path, "u8.yaml", UTF8_SITE)
    rc, out, err = proxyctl("add-site", "u8.yaml")
    assert rc == 0, err
    assert "route 3 " in route_test(proxyctl, "http://u8.test/%FF%FE/x")
    assert "route 1 " in route_test(proxyctl, "http://u8.test/a%FF.git")
