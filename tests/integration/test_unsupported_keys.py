"""Keys proxyd does not execute yet are refused (SPEC §9, issue 12 item 7).

The schemas describe `cache` (route) and `cache_zones` (proxy.yaml), but proxyd
ignores them, so
proxyctl refuses each one at the key, exactly as
`FILE:LINE:COL: error: 'KEY' is not supported yet`, together with every other
error of the run, exit 1, and nothing stored.  The issue that builds a feature
deletes its keys from UNSUPPORTED here and from `unsupported_keys` in
proxyctl/config.c.

Run with: /usr/bin/python3 -m pytest -q tests/integration/test_unsupported_keys.py
"""
import json
import sqlite3
from pathlib import Path

import pytest

from conftest import GLOBAL_YAML, init_store, site_yaml, sql, state, write

ROOT = Path(__file__).resolve().parents[2]

UNSUPPORTED = ["cache", "cache_zones"]

SITE_HEAD = (
    "site: a\n"
    "hosts: [a.example.com]\n"
    "upstreams:\n"
    "  app: {servers: [\"127.0.0.1:3000\"]}\n"
    "routes:\n"
    "  - match: {path_prefix: /}\n"
    "    upstream: app\n")            # lines 1-7; line 8 is the key under test

# key -> (site text, line, column of the key)
SITE_KEYS = {
    "cache": (SITE_HEAD + "    cache: {zone: app_cache, valid: {\"200\": 10m}}\n", 8, 5),
}

# key -> (proxy.yaml text, line, column of the key)
GLOBAL_KEYS = {
    "cache_zones": (GLOBAL_YAML + "cache_zones:\n  app_cache: {path: cache/app_cache, max_size: 1g}\n", 2, 1),
}


def refused(path, key, line, col):
    return f"{path}:{line}:{col}: error: '{key}' is not supported yet"


def sql_write(db, query, *params):
    con = sqlite3.connect(str(db), timeout=30)
    try:
        con.execute(query, params)
        con.commit()
    finally:
        con.close()


def snapshot(proxyctl, db):
    """The store as every command shows it, and as it is on disk."""
    return (state(db), proxyctl("list-sites")[:2], proxyctl("generations")[:2])


@pytest.fixture
def stored(store, proxyctl, tmp_path):
    """A store with one site, so a refused apply visibly removes nothing."""
    write(tmp_path, "keep.yaml", site_yaml("keep", ["keep.example.com"]))
    rc, out, err = proxyctl("add-site", "keep.yaml")
    assert rc == 0, err
    return store


def test_list_matches_schema_descriptions():
    """Editors still complete the keys, and say they are refused."""
    site = json.loads((ROOT / "schema" / "site.schema.json").read_text())
    proxy = json.loads((ROOT / "schema" / "proxy.schema.json").read_text())
    route = site["$defs"]["route"]["properties"]
    described = {
        "cache": route["cache"]["description"],
        "cache_zones": proxy["properties"]["cache_zones"]["description"],
    }
    assert sorted(described) == sorted(UNSUPPORTED)
    for key, text in described.items():
        assert text.startswith("Not supported yet: proxyctl refuses this key"), key


# ---------------------------------------------------------------- site keys

@pytest.mark.parametrize("cmd", ["add-site", "validate", "apply"])
@pytest.mark.parametrize("key", SITE_KEYS)
def test_site_key_refused(key, cmd, stored, proxyctl, db, tmp_path):
    text, line, col = SITE_KEYS[key]
    path = "sites/a.yaml" if cmd == "apply" else "a.yaml"
    write(tmp_path, path, text, dedent=False)
    before = snapshot(proxyctl, db)
    rc, out, err = proxyctl(cmd, "sites" if cmd == "apply" else path)
    assert err.splitlines() == [refused(path, key, line, col), "1 error, 0 warnings"]
    assert (rc, out) == (1, "")
    assert snapshot(proxyctl, db) == before
    assert proxyctl("list-sites")[1].splitlines()[1].startswith("keep ")


def test_flag_form_add_site_unaffected(stored, proxyctl):
    """add-site NAME --host --upstream writes none of the refused keys."""
    rc, out, err = proxyctl("add-site", "f", "--host", "f.example.com", "--upstream", "127.0.0.1:3001")
    assert (rc, err) == (0, "")


def test_flow_style_key_position(stored, proxyctl, db, tmp_path):
    write(tmp_path, "a.yaml", "site: a\nhosts: [a.example.com]\nupstreams: {app: {servers: ['127.0.0.1:1']}}\n"
          "routes:\n  - {match: {path_prefix: /}, upstream: app, cache: {zone: c}}\n", dedent=False)
    rc, out, err = proxyctl("validate", "a.yaml")
    assert (rc, err) == (1, "a.yaml:5:46: error: 'cache' is not supported yet\n1 error, 0 warnings\n")


def test_value_is_not_looked_at(stored, proxyctl, tmp_path):
    """Only the refusal: no zone lookup, no type or range errors inside the value."""
    write(tmp_path, "a.yaml", SITE_HEAD + "    cache: 42\n", dedent=False)
    rc, out, err = proxyctl("validate", "a.yaml")
    assert rc == 1
    assert err.splitlines() == [refused("a.yaml", "cache", 8, 5), "1 error, 0 warnings"]


def test_same_name_elsewhere_is_an_unknown_key(stored, proxyctl, tmp_path):
    """The refusal is for the key where its option table has it, not for the word."""
    write(tmp_path, "a.yaml", "site: a\nhosts: [a.example.com]\nroutes:\n"
          "  - match: {path_prefix: /, cache: x}\n    return: {status: 200}\nrate_limit: {zone: api}\n", dedent=False)
    rc, out, err = proxyctl("validate", "a.yaml")
    assert rc == 1
    assert err.splitlines() == ["a.yaml:4:29: error: unknown key 'cache'",
                                "a.yaml:6:1: error: unknown key 'rate_limit'",
                                "2 errors, 0 warnings"]


# ---------------------------------------------------------------- global keys

@pytest.mark.parametrize("key", GLOBAL_KEYS)
def test_global_key_refused_by_init(key, stored, proxyctl, db, tmp_path):
    text, line, col = GLOBAL_KEYS[key]
    write(tmp_path, "proxy.yaml", text, dedent=False)
    before = snapshot(proxyctl, db)
    rc, out, err = proxyctl("init", "--global", "proxy.yaml")
    assert err.splitlines() == [refused("proxy.yaml", key, line, col), "1 error, 0 warnings"]
    assert (rc, out) == (1, "")
    assert snapshot(proxyctl, db) == before


@pytest.mark.parametrize("key", GLOBAL_KEYS)
def test_global_key_refused_by_init_of_a_new_store(key, proxyctl, db, tmp_path):
    text, line, col = GLOBAL_KEYS[key]
    write(tmp_path, "proxy.yaml", text, dedent=False)
    rc, out, err = proxyctl("init", "--global", "proxy.yaml")
    assert err.splitlines() == [refused("proxy.yaml", key, line, col), "1 error, 0 warnings"]
    assert (rc, out) == (1, "")
    assert sql(db, "SELECT count(*) FROM generations") == [(0,)]
    assert sql(db, "SELECT count(*) FROM settings WHERE key = 'global_yaml'") == [(0,)]


@pytest.mark.parametrize("how", ["validate --global", "apply --global", "apply DIR/proxy.yaml"])
@pytest.mark.parametrize("key", GLOBAL_KEYS)
def test_global_key_refused(key, how, stored, proxyctl, db, tmp_path):
    text, line, col = GLOBAL_KEYS[key]
    write(tmp_path, "sites/a.yaml", site_yaml("a", ["a.example.com"]), dedent=False)
    gpath = "sites/proxy.yaml" if how == "apply DIR/proxy.yaml" else "proxy.yaml"
    write(tmp_path, gpath, text, dedent=False)
    args = {"validate --global": ["validate", "--global", gpath, "sites/a.yaml"],
            "apply --global": ["apply", "--global", gpath, "sites"],
            "apply DIR/proxy.yaml": ["apply", "sites"]}[how]
    before = snapshot(proxyctl, db)
    rc, out, err = proxyctl(*args)
    assert err.splitlines() == [refused(gpath, key, line, col), "1 error, 0 warnings"]
    assert (rc, out) == (1, "")
    assert snapshot(proxyctl, db) == before


# ---------------------------------------------------------------- all at once

def test_all_reported_in_one_run(stored, proxyctl, db, tmp_path):
    """Every refusal and every other error of the run, sorted by file and position."""
    write(tmp_path, "proxy.yaml", GLOBAL_YAML + "cache_zones: {c: {path: /tmp/c}}\nworker: 2\n", dedent=False)
    write(tmp_path, "a.yaml", SITE_HEAD + "    cache: {zone: c}\n"
          "    timeouts: {read: 5x}\ncompression: {gzip: maybe}\n", dedent=False)
    before = snapshot(proxyctl, db)
    rc, out, err = proxyctl("validate", "--global", "proxy.yaml", "a.yaml")
    assert err.splitlines() == [
        "proxy.yaml:2:1: error: 'cache_zones' is not supported yet",
        "proxy.yaml:3:1: error: unknown key 'worker' (did you mean 'workers'?)",
        "a.yaml:8:5: error: 'cache' is not supported yet",
        "a.yaml:9:22: error: invalid duration '5x' for 'read': unknown unit (use ms, s, m, h or d)",
        "a.yaml:10:21: error: 'gzip' must be true or false, not 'maybe'",
        "5 errors, 0 warnings"]
    assert (rc, out) == (1, "")
    rc, out, err = proxyctl("add-site", "a.yaml")
    assert err.splitlines() == [
        "a.yaml:8:5: error: 'cache' is not supported yet",
        "a.yaml:9:22: error: invalid duration '5x' for 'read': unknown unit (use ms, s, m, h or d)",
        "a.yaml:10:21: error: 'gzip' must be true or false, not 'maybe'",
        "3 errors, 0 warnings"]
    assert (rc, out) == (1, "")
    assert snapshot(proxyctl, db) == before


# ---------------------------------------------------------------- stores from before the refusal

def test_store_written_before_the_refusal(proxyctl, db, tmp_path):
    """A store that took these keys before proxyctl refused them: every change names the
    stored file and key; one `apply --global` replaces sites and settings together."""
    init_store(db, tmp_path)
    old = "site: old\nhosts: [old.example.com]\nroutes:\n  - match: {path_prefix: /}\n    return: {status: 200}\n" \
          "    cache: {zone: c}\n"
    sql_write(db, "INSERT INTO sites (name, yaml, source, digest, updated) VALUES ('old', ?, 'old.yaml', '', 0)", old)
    sql_write(db, "UPDATE settings SET value = ? WHERE key = 'global_yaml'",
              GLOBAL_YAML + "cache_zones: {c: {path: /tmp/c}}\n")
    write(tmp_path, "b.yaml", site_yaml("b", ["b.example.com"]), dedent=False)
    before = snapshot(proxyctl, db)
    rc, out, err = proxyctl("add-site", "b.yaml")
    assert err.splitlines() == ["init-global.yaml:2:1: error: 'cache_zones' is not supported yet",
                                "old.yaml:6:5: error: 'cache' is not supported yet",
                                "2 errors, 0 warnings"]
    assert (rc, out) == (1, "")
    assert snapshot(proxyctl, db) == before
    write(tmp_path, "sites/b.yaml", site_yaml("b", ["b.example.com"]), dedent=False)
    write(tmp_path, "g.yaml", GLOBAL_YAML, dedent=False)
    rc, out, err = proxyctl("apply", "--global", "g.yaml", "sites")
    assert (rc, err) == (0, "")
    assert [ln.split()[0] for ln in proxyctl("list-sites")[1].splitlines()[1:]] == ["b"]


# ---------------------------------------------------------------- examples

def test_examples_pass_proxyctl(store, proxyctl):
    """Every example validates (make demo applies them all)."""
    examples = ROOT / "examples"
    sites = sorted(str(p) for p in examples.glob("*.yaml") if p.name != "proxy.yaml")
    rc, out, err = proxyctl("validate", "--global", str(examples / "proxy.yaml"), *sites)
    assert (rc, out, err) == (0, f"{len(sites)} files valid\n", "")
