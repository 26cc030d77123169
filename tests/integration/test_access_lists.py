"""Site-wide allow and deny (SPEC §10): deny is checked first (the site's and the route's),
then a non-empty allow list (the route's own, else the site's) denies everyone else."""
import pytest

from conftest import write
from proxyd_fixtures import http, origin_factory, proxyd_factory  # noqa: F401

HOST = "acl.test"


def site(upstream):
    return f"""\
site: acl
hosts: [{HOST}]
allow: [10.0.0.0/8, 192.0.2.0/24]
deny: [10.9.0.0/16]
upstreams:
  app:
    servers: [{{address: "{upstream}"}}]
routes:
  - match: {{path_prefix: /open/}}
    allow: [0.0.0.0/0]
    upstream: app
  - match: {{path_prefix: /strict/}}
    deny: [192.0.2.7/32]
    upstream: app
  - match: {{path_exact: /local}}
    return: {{status: 200, body: local}}
  - match: {{path_prefix: /}}
    upstream: app
"""


@pytest.fixture
def acl(proxyd_factory, origin_factory):
    origin = origin_factory(echo=True)
    return proxyd_factory(sites=[site(origin.address)])


def status(p, path, client):
    # 127.0.0.1 is a trusted proxy: X-Forwarded-For names the client the lists see.
    return http(p.port, target=path, host=HOST, headers=[("X-Forwarded-For", client)]).status


@pytest.mark.parametrize("path, client, expect", [
    ("/x", "10.1.2.3", 200),          # the site's allow
    ("/x", "192.0.2.7", 200),
    ("/x", "203.0.113.5", 403),       # not in the site's allow
    ("/x", "10.9.1.1", 403),          # the site's deny comes first
    ("/local", "203.0.113.5", 403),   # every action inherits, not only proxies
    ("/local", "10.1.2.3", 200),
    ("/open/a", "203.0.113.5", 200),  # the route's own allow replaces the site's
    ("/open/a", "10.9.1.1", 403),     # ... but the site's deny still applies
    ("/strict/a", "192.0.2.7", 403),  # the route's deny, on top of the site's allow
    ("/strict/a", "192.0.2.8", 200),
    ("/strict/a", "10.9.0.1", 403),
    ("/strict/a", "203.0.113.5", 403),
])
def test_site_allow_and_deny(acl, path, client, expect):
    assert status(acl, path, client) == expect


def test_dump_shows_the_lists(store, proxyctl, tmp_path):
    write(tmp_path, "acl.yaml", site("127.0.0.1:3001"), dedent=False)
    rc, out, err = proxyctl("add-site", "acl.yaml")
    assert rc == 0, err
    rc, out, err = proxyctl("route-test", f"http://{HOST}/strict/a")
    assert rc == 0, err
    assert "  deny: 10.9.0.0/16 192.0.2.7/32 (403)\n" in out
    assert "  allow: 10.0.0.0/8 192.0.2.0/24 (others 403)\n" in out
    rc, out, err = proxyctl("route-test", f"http://{HOST}/open/a")
    assert "  deny: 10.9.0.0/16 (403)\n  allow: 0.0.0.0/0 (others 403)\n" in out


def test_empty_lists_refused(store, proxyctl, tmp_path):
    write(tmp_path, "s.yaml", "site: a\nhosts: [a.example.com]\ndeny: []\nallow: []\nroutes:\n"
                              "  - match: {path_prefix: /}\n    return: {status: 200}\n", dedent=False)
    rc, out, err = proxyctl("validate", "s.yaml")
    assert rc == 1
    assert "s.yaml:3:7: error: deny must list at least one address\n" in err
    assert "s.yaml:4:8: error: allow must list at least one address (an empty list would deny everyone)\n" in err
