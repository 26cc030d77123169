"""rewrite_prefix (SPEC §10): a path_prefix route's prefix replaced on the way upstream,
strip_prefix being rewrite_prefix "/"; route-test shows it; proxyctl refuses it where it
cannot apply."""
import json

import pytest

from conftest import write
from proxyd_fixtures import http, origin_factory, proxyd_factory  # noqa: F401

HOST = "rw.test"


def site(upstream):
    return f"""\
site: rw
hosts: [{HOST}]
upstreams:
  app:
    servers: [{{address: "{upstream}"}}]
routes:
  - match: {{path_prefix: /blog/}}
    upstream: app
    rewrite_prefix: /wordpress/
  - match: {{path_prefix: /short}}
    upstream: app
    rewrite_prefix: /long/
  - match: {{path_prefix: /api/}}
    upstream: app
    strip_prefix: true
  - match: {{path_prefix: /}}
    upstream: app
"""


def target(p, path):
    r = http(p.port, target=path, host=HOST)
    assert r.status == 200, r
    return r.json()["target"]


def test_rewrite_prefix_reaches_the_upstream(proxyd_factory, origin_factory):
    origin = origin_factory(echo=True)
    p = proxyd_factory(sites=[site(origin.address)])
    assert target(p, "/blog/x") == "/wordpress/x"
    assert target(p, "/blog/2024/a%20b?p=1&q=2") == "/wordpress/2024/a%20b?p=1&q=2"
    assert target(p, "/blog/") == "/wordpress/"
    # A prefix without its slash: one slash between the new prefix and the rest.
    assert target(p, "/short/a") == "/long/a"
    assert target(p, "/shortcut") == "/long/cut"
    # strip_prefix is rewrite_prefix "/"; other routes are untouched.
    assert target(p, "/api/users?x=1") == "/users?x=1"
    assert target(p, "/api/") == "/"
    assert target(p, "/other/blog/x") == "/other/blog/x"


def test_route_test_and_dump_show_the_rewrite(store, proxyctl, tmp_path):
    write(tmp_path, "rw.yaml", site("127.0.0.1:3001"), dedent=False)
    rc, out, err = proxyctl("add-site", "rw.yaml")
    assert rc == 0, err
    rc, out, err = proxyctl("route-test", f"http://{HOST}/blog/x?y=1")
    assert rc == 0, err
    assert "route 1 (rw.yaml:7:5): path_prefix /blog/, methods any\n" in out
    assert "  proxy to upstream app, rewrite_prefix /wordpress/\n" in out
    assert "  rewrite: /blog/x -> /wordpress/x\n" in out
    rc, out, err = proxyctl("route-test", f"http://{HOST}/api/users")
    assert "  rewrite: /api/users -> /users\n" in out
    rc, out, err = proxyctl("route-test", "--json", f"http://{HOST}/blog/a/b")
    assert rc == 0, err
    j = json.loads(out)
    assert j["route"] == 1 and j["upstream"] == "app" and j["upstream_path"] == "/wordpress/a/b"
    rc, out, err = proxyctl("dump")
    assert "    proxy to upstream app, rewrite_prefix /wordpress/\n" in out


BAD_BASE = """\
site: a
hosts: [a.example.com]
upstreams:
  app: {servers: ["127.0.0.1:3000"]}
routes:
"""


@pytest.mark.parametrize("routes, message", [
    ("  - match: {path_exact: /a}\n    upstream: app\n    rewrite_prefix: /b/\n",
     "site.yaml:8:21: error: rewrite_prefix requires a path_prefix match"),
    ("  - match: {path_regex: '^/a'}\n    upstream: app\n    rewrite_prefix: /b/\n",
     "site.yaml:8:21: error: rewrite_prefix requires a path_prefix match"),
    ("  - match: {path_prefix: /a/}\n    upstream: app\n    strip_prefix: true\n    rewrite_prefix: /b/\n",
     "site.yaml:9:21: error: rewrite_prefix and strip_prefix together (strip_prefix is rewrite_prefix: /)"),
    ("  - match: {path_prefix: /a/}\n    upstream: app\n    rewrite_prefix: b/\n",
     "site.yaml:8:21: error: rewrite_prefix must start with '/' (it replaces the matched path prefix)"),
    ("  - match: {path_prefix: /a/}\n    return: {status: 200}\n    rewrite_prefix: /b/\n",
     "site.yaml:8:21: error: rewrite_prefix applies to upstream routes only"),
])
def test_rewrite_prefix_refused_where_it_cannot_apply(store, proxyctl, tmp_path, routes, message):
    write(tmp_path, "site.yaml", BAD_BASE + routes, dedent=False)
    rc, out, err = proxyctl("validate", "site.yaml")
    assert rc == 1
    assert message + "\n" in err
