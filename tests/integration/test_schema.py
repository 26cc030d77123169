"""Schema checks: schema/*.schema.json are valid JSON Schema 2020-12 documents,
every examples/*.yaml validates against its schema, and invalid site and
global documents are rejected.

Run with: /usr/bin/python3 -m pytest tests/integration/test_schema.py
"""
import json
import re
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "schema"
EXAMPLES = ROOT / "examples"
SITE_SCHEMA = SCHEMA_DIR / "site.schema.json"
PROXY_SCHEMA = SCHEMA_DIR / "proxy.schema.json"


class Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false are booleans.

    PyYAML implements YAML 1.1, where bare on/off/yes/no are booleans too, so
    `retry: {on: [...]}` or `access_log: {format: off}` would not be strings.
    Editors (yaml-language-server) read YAML 1.2, and so does this test.
    """


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def load_yaml(text):
    return yaml.load(text, Loader=Yaml12Loader)


def validator(path):
    schema = json.loads(path.read_text())
    return Draft202012Validator(schema)


@pytest.fixture(scope="module")
def site_validator():
    return validator(SITE_SCHEMA)


@pytest.fixture(scope="module")
def proxy_validator():
    return validator(PROXY_SCHEMA)


def errors(v, doc):
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in v.iter_errors(doc)]


SITE_FILES = sorted(p for p in EXAMPLES.glob("*.yaml") if p.name != "proxy.yaml")
PROXY_ZONES = set(load_yaml((EXAMPLES / "proxy.yaml").read_text()).get("cache_zones") or {})


# ----------------------------------------------------------------- schemas

@pytest.mark.parametrize("path", [SITE_SCHEMA, PROXY_SCHEMA], ids=lambda p: p.name)
def test_schema_is_valid_2020_12(path):
    schema = json.loads(path.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def _walk(node, where="#"):
    if isinstance(node, dict):
        yield where, node
        for k, v in node.items():
            yield from _walk(v, f"{where}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{where}/{i}")


@pytest.mark.parametrize("path", [SITE_SCHEMA, PROXY_SCHEMA], ids=lambda p: p.name)
def test_schema_style(path):
    """Every object is closed and every property is described (editor completion)."""
    schema = json.loads(path.read_text())
    problems = []
    for where, node in _walk(schema):
        if node.get("type") == "object" and node.get("additionalProperties") is not False:
            problems.append(f"{where}: object without additionalProperties: false")
        props = node.get("properties")
        if isinstance(props, dict) and "type" in node:
            for name, sub in props.items():
                if "description" not in sub:
                    problems.append(f"{where}/properties/{name}: no description")
        for name, sub in (node.get("patternProperties") or {}).items():
            if "description" not in sub:
                problems.append(f"{where}/patternProperties/{name}: no description")
        if "$ref" in node:
            target = node["$ref"]
            assert target.startswith("#/$defs/"), target
            assert target.split("/")[-1] in schema["$defs"], f"{where}: dangling {target}"
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------- examples

def test_examples_present():
    names = {p.name for p in SITE_FILES}
    expected = {
        "basic-proxy.yaml", "https-redirect.yaml", "pool-backup.yaml", "path-routing.yaml",
        "websocket.yaml", "admin-allowlist.yaml",
        "static-files.yaml", "exploit-block.yaml", "fastcgi.yaml",
    }
    assert expected <= names, f"missing: {sorted(expected - names)}"
    assert (EXAMPLES / "proxy.yaml").is_file()


@pytest.mark.parametrize("path", SITE_FILES, ids=lambda p: p.name)
def test_site_example_valid(path, site_validator):
    text = path.read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=../schema/site.schema.json"
    doc = load_yaml(text)
    errs = errors(site_validator, doc)
    assert not errs, "\n".join(errs)
    # Not expressible in JSON Schema but checked by proxyctl: every route's
    # upstream is defined in the same file.
    defined = set((doc.get("upstreams") or {}))
    for i, route in enumerate(doc.get("routes") or []):
        if "upstream" in route:
            assert route["upstream"] in defined, f"routes/{i}: undefined upstream {route['upstream']!r}"


def test_proxy_example_valid(proxy_validator):
    path = EXAMPLES / "proxy.yaml"
    text = path.read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=../schema/proxy.schema.json"
    doc = load_yaml(text)
    errs = errors(proxy_validator, doc)
    assert not errs, "\n".join(errs)
    assert doc["listen"] == {"http": ["127.0.0.1:8080"], "https": ["127.0.0.1:8443"]}
    assert doc["workers"] == 2
    assert doc["admin"]["socket"] == "run/admin.sock"
    # the zone examples/cache.yaml names, its path relative to the store's directory
    assert doc["cache_zones"]["news"]["path"] == "cache/news"
    assert doc["rate_limit_zones"]["api"] == {"rate": "10r/s", "key": "client_ip"}


def test_examples_consistent():
    """The example sites can all be applied together with examples/proxy.yaml."""
    sites, hosts, defaults = {}, {}, []
    for path in SITE_FILES:
        doc = load_yaml(path.read_text())
        assert doc["site"] not in sites, f"{path.name}: site {doc['site']!r} also in {sites.get(doc['site'])}"
        sites[doc["site"]] = path.name
        if doc.get("default"):
            defaults.append(path.name)
        for h in doc.get("hosts") or []:
            assert h == "example.com" or h.endswith(".example.com"), f"{path.name}: host {h}"
            assert h not in hosts, f"{path.name}: host {h} also in {hosts.get(h)}"
            hosts[h] = path.name
        cert = (doc.get("tls") or {}).get("certificate", "none")
        assert cert in ("none", "self-signed"), f"{path.name}: certificate {cert!r}"
        fastcgi = {r["fastcgi"]["upstream"] for r in doc.get("routes") or [] if "fastcgi" in r}
        for name, up in (doc.get("upstreams") or {}).items():
            for s in up["servers"]:
                if name in fastcgi:  # php-fpm's socket where Debian puts it
                    assert s["address"] == "unix:/run/php/php8.2-fpm.sock", f"{path.name}: {s['address']}"
                    continue
                m = re.fullmatch(r"(?:127\.0\.0\.1|localhost):(\d+)", s["address"])
                assert m and 9001 <= int(m.group(1)) <= 9010, f"{path.name}: {s['address']}"
        # a cache is on a proxy route and names a zone of examples/proxy.yaml
        for route in doc.get("routes") or []:
            if "cache" in route:
                assert ("upstream" in route or "fastcgi" in route) and route["cache"]["zone"] in PROXY_ZONES, path.name
    assert defaults == ["basic-proxy.yaml"]


# ----------------------------------------------------------------- valid edge cases

VALID_SITES = {
    "default site without hosts": """
        site: fallback
        default: true
        routes: [{match: {}, return: {status: 404}}]
    """,
    "unquoted on in YAML 1.2": """
        site: a
        hosts: [a.example.com]
        upstreams: {app: {servers: [{address: "unix:/run/app.sock"}]}}
        routes:
          - match: {path_prefix: /}
            upstream: app
            retry: {on: [error, http_429], tries: 3}
        access_log: {format: off}
    """,
    "cert files, ipv6 server, integer duration and size": """
        site: b
        hosts: ["*.b.example.com"]
        tls: {certificate: {cert_file: /etc/b.pem, key_file: /etc/b.key}}
        upstreams:
          app:
            servers: [{address: "[2001:db8::1]:8080", fail_timeout: 30}]
            tls: {verify: true, sni: app.internal, cert_file: /c.pem, key_file: /c.key}
        routes:
          - match: {path_exact: /x}
            upstream: app
            max_body: 1048576
            cache: {zone: c, valid: {any: 1m, "200": 500ms}, bypass_on: ["header:X-No-Cache", "query:nocache"]}
            allow: ["::1", 192.168.0.0/16, 10.1.2.3]
    """,
    "upstream by name with resolve": """
        site: d
        hosts: [d.example.com]
        upstreams: {app: {servers: [{address: "app.internal:3000"}], resolve: 30s}}
        routes: [{match: {path_prefix: /}, upstream: app}]
    """,
    "cache with every key": """
        site: c
        hosts: [c.example.com]
        upstreams: {app: {servers: [{address: "127.0.0.1:3000"}]}}
        routes:
          - match: {path_prefix: /}
            upstream: app
            cache:
              zone: news
              valid: {"200": 10m, "404": 1m, any: 30s}
              bypass_on: [authorization, "cookie:session", "header:X-No-Cache", "query:nocache"]
              use_stale: [error, timeout, http_500, http_502, http_503, http_504, http_429, updating]
              key_headers: [X-Tenant, Accept-Language]
              lock_timeout: 5s
    """,
}


@pytest.mark.parametrize("text", VALID_SITES.values(), ids=VALID_SITES.keys())
def test_valid_site(text, site_validator):
    errs = errors(site_validator, load_yaml(text))
    assert not errs, "\n".join(errs)


# ----------------------------------------------------------------- invalid documents

BASE = """
site: shop
hosts: [shop.example.com]
upstreams:
  app:
    servers: [{address: "127.0.0.1:3001"}]
routes:
"""

INVALID_SITES = {
    "unknown top-level key": BASE + "  - {match: {path_prefix: /}, upstream: app}\nupstreem: app\n",
    "unknown route key": BASE + "  - {match: {path_prefix: /}, upstream: app, timeout: 5s}\n",
    "unknown server key": """
        site: shop
        hosts: [shop.example.com]
        upstreams: {app: {servers: [{address: "127.0.0.1:3001", wieght: 2}]}}
    """,
    "missing site": """
        hosts: [shop.example.com]
    """,
    "bad site name": """
        site: Shop_1
        hosts: [shop.example.com]
    """,
    "missing hosts on non-default site": """
        site: shop
    """,
    "empty hosts": """
        site: shop
        hosts: []
    """,
    "bad wildcard host": """
        site: shop
        hosts: ["shop.*.example.com"]
    """,
    "bad balance value": """
        site: shop
        hosts: [shop.example.com]
        upstreams: {app: {balance: weighted, servers: [{address: "127.0.0.1:3001"}]}}
    """,
    "empty servers": """
        site: shop
        hosts: [shop.example.com]
        upstreams: {app: {servers: []}}
    """,
    "server address without port": """
        site: shop
        hosts: [shop.example.com]
        upstreams: {app: {servers: [{address: "127.0.0.1"}]}}
    """,
    "weight out of range": """
        site: shop
        hosts: [shop.example.com]
        upstreams: {app: {servers: [{address: "127.0.0.1:3001", weight: 0}]}}
    """,
    "bad duration string": """
        site: shop
        hosts: [shop.example.com]
        upstreams: {app: {servers: [{address: "127.0.0.1:3001", fail_timeout: 30 seconds}]}}
    """,
    "bad duration unit": BASE + "  - {match: {path_prefix: /}, upstream: app, timeouts: {read: 5w}}\n",
    "bad size": BASE + "  - {match: {path_prefix: /}, upstream: app, max_body: 10mb}\n",
    "bad health check path": """
        site: shop
        hosts: [shop.example.com]
        upstreams: {app: {servers: [{address: "127.0.0.1:3001"}], health_check: {path: healthz}}}
    """,
    "route without match": BASE + "  - {upstream: app}\n",
    "route without action": BASE + "  - {match: {path_prefix: /}}\n",
    "two actions in a route": BASE + "  - {match: {path_prefix: /}, upstream: app, return: {status: 404}}\n",
    "two path keys in a match": BASE + "  - {match: {path_prefix: /a/, path_exact: /a}, upstream: app}\n",
    "bad method": BASE + "  - {match: {path_prefix: /, methods: [GET, FETCH]}, upstream: app}\n",
    "lower-case method": BASE + "  - {match: {path_prefix: /, methods: [get]}, upstream: app}\n",
    "bad return status": BASE + "  - {match: {path_prefix: /}, return: {status: 99}}\n",
    "return status too high": BASE + "  - {match: {path_prefix: /}, return: {status: 600}}\n",
    "return without status": BASE + "  - {match: {path_prefix: /}, return: {body: gone}}\n",
    "bad redirect status": BASE + "  - {match: {path_exact: /old}, redirect: {to: /new, status: 200}}\n",
    "static without root": BASE + "  - {match: {path_prefix: /s/}, static: {expires: 1d}}\n",
    "bad retry condition": BASE + "  - {match: {path_prefix: /}, upstream: app, retry: {'on': [http_404]}}\n",
    "too many tries": BASE + "  - {match: {path_prefix: /}, upstream: app, retry: {tries: 11}}\n",
    "rate_limit without zone": BASE + "  - {match: {path_prefix: /}, upstream: app, rate_limit: {burst: 5}}\n",
    "cache valid bad key": BASE + "  - {match: {path_prefix: /}, upstream: app, cache: {zone: c, valid: {ok: 1m}}}\n",
    "cache bad bypass": BASE + "  - {match: {path_prefix: /}, upstream: app, cache: {zone: c, bypass_on: [session]}}\n",
    "cache bad use_stale": BASE + "  - {match: {path_prefix: /}, upstream: app, cache: {zone: c, use_stale: [always]}}\n",
    "cache without zone": BASE + "  - {match: {path_prefix: /}, upstream: app, cache: {valid: {any: 1m}}}\n",
    "cache bad key header": BASE + "  - {match: {path_prefix: /}, upstream: app, cache: {zone: c, key_headers: ['X Y']}}\n",
    "cache bad lock_timeout": BASE + "  - {match: {path_prefix: /}, upstream: app, cache: {zone: c, lock_timeout: soon}}\n",
    "cache unknown key": BASE + "  - {match: {path_prefix: /}, upstream: app, cache: {zone: c, key: [host]}}\n",
    "bad CIDR": BASE + "  - {match: {path_prefix: /}, upstream: app, allow: [10.0.0.0/33]}\n",
    "bad IPv4 octet": BASE + "  - {match: {path_prefix: /}, upstream: app, allow: [300.1.1.1]}\n",
    "strip_prefix without path_prefix": BASE + "  - {match: {path_exact: /a}, upstream: app, strip_prefix: true}\n",
    "bad header name": BASE + "  - {match: {path_prefix: /}, upstream: app, headers: {request: {set: {'X Bad': v}}}}\n",
    "bad certificate": """
        site: shop
        hosts: [shop.example.com]
        tls: {certificate: letsencrypt}
    """,
    "cert_file without key_file": """
        site: shop
        hosts: [shop.example.com]
        tls: {certificate: {cert_file: /etc/shop.pem}}
    """,
    "negative hsts max_age": """
        site: shop
        hosts: [shop.example.com]
        tls: {certificate: acme, hsts: {max_age: -1}}
    """,
    "gzip level out of range": """
        site: shop
        hosts: [shop.example.com]
        compression: {gzip: true, level: 10}
    """,
    "bad security_headers": """
        site: shop
        hosts: [shop.example.com]
        security_headers: paranoid
    """,
    "bad access_log format": """
        site: shop
        hosts: [shop.example.com]
        access_log: {format: text}
    """,
    "bad resolve": """
        site: r
        hosts: [r.example.com]
        upstreams: {app: {servers: [{address: "app.internal:3000"}], resolve: often}}
    """,
    "bad upstream name": """
        site: shop
        hosts: [shop.example.com]
        upstreams: {"app pool": {servers: [{address: "127.0.0.1:3001"}]}}
    """,
}


@pytest.mark.parametrize("text", INVALID_SITES.values(), ids=INVALID_SITES.keys())
def test_invalid_site_rejected(text, site_validator):
    doc = load_yaml(text)
    assert isinstance(doc, dict)
    assert errors(site_validator, doc), "document was accepted"


INVALID_GLOBALS = {
    "unknown key": "listen: {http: ['127.0.0.1:8080']}\nworker: 2\n",
    "workers zero": "workers: 0\n",
    "workers word": "workers: many\n",
    "listen address without port": "listen: {http: ['127.0.0.1']}\n",
    "bad protocol": "tls: {protocols: [TLSv1.1]}\n",
    "bad unknown_sni": "tls: {unknown_sni: drop}\n",
    "cache zone without path": "cache_zones: {c: {max_size: 1g}}\n",
    "bad cache size": "cache_zones: {c: {path: /tmp/c, max_size: 1gb}}\n",
    "bad cache zone name": "cache_zones: {'a.b': {path: /tmp/c}}\n",
    "unknown cache zone key": "cache_zones: {c: {path: /tmp/c, levels: '1:2'}}\n",
    "bad rate": "rate_limit_zones: {api: {rate: 10/s}}\n",
    "bad rate key": "rate_limit_zones: {api: {rate: 10r/s, key: user}}\n",
    "bad trusted proxy": "trusted_proxies: [localhost]\n",
    "resolver by name": "resolver: [ns.example.com]\n",
    "resolver empty": "resolver: []\n",
    "bad drain_timeout": "limits: {drain_timeout: soon}\n",
    "router_id out of range": "ha: {router_id: 256}\n",
    "priority 255": "ha: {priority: 255}\n",
}


@pytest.mark.parametrize("text", INVALID_GLOBALS.values(), ids=INVALID_GLOBALS.keys())
def test_invalid_global_rejected(text, proxy_validator):
    assert errors(proxy_validator, load_yaml(text)), "document was accepted"


def test_spec_global_example_valid(proxy_validator):
    """The proxy.yaml of SPEC section 3, verbatim."""
    doc = load_yaml("""
listen: {http: ["0.0.0.0:80", "[::]:80"], https: ["0.0.0.0:443"]}
workers: auto
user: proxyd
admin: {socket: /run/proxyd/admin.sock, metrics_listen: "127.0.0.1:9145"}
trusted_proxies: [127.0.0.1/32]
tls: {protocols: [TLSv1.2, TLSv1.3], session_tickets: true, ticket_key_rotation: 12h}
acme: {directory: "https://acme-v02.api.letsencrypt.org/directory", email: ops@example.com,
       renew_before: 30d, ca_file: null}
cache_zones: {app_cache: {path: /var/cache/proxyd/app_cache, max_size: 1g, memory: 64m, inactive: 60m}}
rate_limit_zones: {api: {rate: 10r/s, key: client_ip}}
limits: {max_connections: 100000, header_timeout: 10s, body_timeout: 10s, max_header_size: 16k,
         drain_timeout: 300s}
ha: {node: lb0, peer: "10.0.0.2:9443", interface: eth1, virtual_ips: ["203.0.113.10/24"],
     router_id: 51, priority: 150}
""")
    errs = errors(proxy_validator, doc)
    assert not errs, "\n".join(errs)


def test_spec_site_example_valid(site_validator):
    """The site YAML of SPEC section 2, verbatim (comments dropped)."""
    doc = load_yaml(r"""
site: shop
hosts: [shop.example.com, "*.shop.example.com"]
tls:
  certificate: acme
  redirect_http: true
  hsts: {max_age: 63072000, include_subdomains: true, preload: false}
upstreams:
  app:
    balance: round_robin
    servers:
      - {address: "127.0.0.1:3001", weight: 5, max_fails: 3, fail_timeout: 30s}
      - {address: "unix:/run/app.sock"}
      - {address: "10.0.1.12:3000", backup: true}
    keepalive: 64
    tls: {verify: true, ca_file: /etc/ssl/certs/ca-certificates.crt, sni: app.internal}
    health_check: {path: /healthz, interval: 5s, timeout: 2s, rise: 2, fall: 3, expect: 200}
routes:
  - match: {path_regex: '(?i)\.(git|env|bak|sql|log)$'}
    return: {status: 404}
  - match: {path_prefix: /api/, methods: [GET, POST]}
    upstream: app
    strip_prefix: true
    timeouts: {connect: 5s, read: 30s, send: 30s}
    retry: {on: [error, timeout, http_502, http_503, http_504], tries: 3}
    rate_limit: {zone: api, burst: 20, nodelay: true}
    cache: {zone: app_cache, valid: {"200": 10m, "404": 1m}, bypass_on: [authorization, "cookie:session"],
            use_stale: [error, timeout, updating, http_500, http_502, http_503]}
    max_body: 10m
    allow: [10.0.0.0/8]
    websocket: true
    buffering: false
    headers:
      request:  {set: {X-Request-Id: "$request_id"}, remove: [X-Powered-By]}
      response: {set: {Cache-Control: "no-store"}, remove: [Server]}
  - match: {path_prefix: /static/}
    static: {root: /var/www/shop/static, expires: 30d}
  - match: {path_exact: /old}
    redirect: {to: "https://shop.example.com/new", status: 301}
  - match: {path_prefix: /}
    upstream: app
compression: {gzip: true, level: 4, min_length: 256, types: [text/html, text/css, application/json]}
security_headers: strict
access_log: {format: json}
""")
    errs = errors(site_validator, doc)
    assert not errs, "\n".join(errs)


# ----------------------------------------------------------------- proxyctl on the examples

def test_examples_pass_proxyctl(store, proxyctl):
    """Every example validates with examples/proxy.yaml (make demo applies them all)."""
    sites = sorted(str(p) for p in SITE_FILES)
    rc, out, err = proxyctl("validate", "--global", str(EXAMPLES / "proxy.yaml"), *sites)
    assert (rc, out, err) == (0, f"{len(sites)} files valid\n", "")
