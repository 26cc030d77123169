"""Every proxyctl command, end to end, against a private store (SPEC §4, §5).

Run with: /usr/bin/python3 -m pytest -q tests/integration/test_cli_commands.py
"""
import hashlib
import json
import os
import re
import socket
import stat
import threading
from pathlib import Path

import pytest

from conftest import (GLOBAL_YAML, SANITIZED, active_generation, init_store, run, site_yaml,
                      sql, state, write)

COMMANDS = ["init", "validate", "add-site", "remove-site", "list-sites", "show-site", "apply", "generations",
            "rollback", "dump", "route-test", "reload", "status", "health"]


def gen_count(db):
    return sql(db, "SELECT count(*) FROM generations")[0][0]


def site_names(db):
    return [r[0] for r in sql(db, "SELECT name FROM sites ORDER BY name")]


def blob_of(db, gen):
    return sql(db, "SELECT blob FROM generations WHERE id = ?", gen)[0][0]


# ---------------------------------------------------------------- init

def test_init_new_store(tmp_path):
    db = tmp_path / "store.db"
    rc, out, err = run("--db", db, "init", cwd=tmp_path)
    assert rc == 0, err
    assert re.fullmatch(r"store initialised; generation 1 active \(0 sites, \d+ bytes\)\n", out), out
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    for ext in ("-wal", "-shm"):
        if os.path.exists(str(db) + ext):
            assert stat.S_IMODE(os.stat(str(db) + ext).st_mode) == 0o600, ext
    assert sql(db, "PRAGMA user_version") == [(2,)]
    assert sql(db, "PRAGMA journal_mode") == [("wal",)]
    assert sql(db, "SELECT id, active FROM generations") == [(1, 1)]
    assert sql(db, "SELECT count(*) FROM generation_sites") == [(0,)]
    assert sql(db, "SELECT count(*) FROM sites") == [(0,)]
    assert sql(db, "SELECT command, generation FROM events") == [("init", 1)]
    rc, out, _ = run("--db", db, "dump", cwd=tmp_path)
    assert rc == 0
    assert out.startswith("# generation 1, ")
    assert "\nsite " not in out
    # The empty generation answers 404 to every request.
    rc, out, _ = run("--db", db, "route-test", "http://anything.example.com/", cwd=tmp_path)
    assert rc == 0
    assert "site: none" in out and out.endswith("result: 404\n")


def test_init_store_file_properties(tmp_path):
    """What init sets up before it compiles the first generation (checked even
    when the zero-sites bug makes the sanitized build exit 1 afterwards)."""
    db = tmp_path / "store.db"
    run("--db", db, "init", cwd=tmp_path, allow_sanitizer=True)
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    for ext in ("-wal", "-shm"):
        if os.path.exists(str(db) + ext):
            assert stat.S_IMODE(os.stat(str(db) + ext).st_mode) == 0o600, ext
    assert sql(db, "PRAGMA user_version") == [(2,)]
    assert sql(db, "PRAGMA journal_mode") == [("wal",)]
    tables = {r[0] for r in sql(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"sites", "generations", "certificates", "acme_accounts", "acme_challenges", "ticket_keys",
            "events"} <= tables
    assert sql(db, "PRAGMA integrity_check") == [("ok",)]


def test_init_creates_parent_directories(tmp_path):
    db = tmp_path / "a" / "b" / "store.db"
    rc, _, err = run("--db", db, "init", cwd=tmp_path)
    assert rc == 0, err
    assert db.exists()
    assert stat.S_IMODE(os.stat(db.parent).st_mode) == 0o700


def test_init_with_global_on_new_store(tmp_path):
    db = tmp_path / "store.db"
    write(tmp_path, "proxy.yaml", "workers: 3\nadmin: {socket: admin.sock}\n")
    rc, out, err = run("--db", db, "init", "--global", "proxy.yaml", cwd=tmp_path)
    assert rc == 0, err
    assert out.startswith("store initialised with global settings; generation 1 active (0 sites, ")
    assert sql(db, "SELECT value FROM settings WHERE key = 'global_yaml'") == [("workers: 3\nadmin: {socket: admin.sock}\n",)]


def test_init_is_idempotent(store, proxyctl, db):
    before = state(db)
    for _ in range(2):
        rc, out, err = proxyctl("init")
        assert rc == 0, err
        assert out == f"store {db} is at schema version 2 (was 2); generation 1 active\n"
        assert err == ""
    assert state(db) == before
    assert sql(db, "PRAGMA user_version") == [(2,)]
    assert sql(db, "PRAGMA journal_mode") == [("wal",)]
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600


def test_init_global_makes_new_generation(store, proxyctl, db, tmp_path):
    write(tmp_path, "a.yaml", site_yaml("a", ["a.example.com"]))
    assert proxyctl("add-site", "a.yaml")[0] == 0
    gtext = GLOBAL_YAML + "workers: 3\n"
    write(tmp_path, "g2.yaml", gtext, dedent=False)
    rc, out, err = proxyctl("init", "--global", "g2.yaml")
    assert rc == 0, err
    assert re.fullmatch(r"store initialised with global settings; generation 3 active \(1 site, \d+ bytes\)\n", out)
    assert gen_count(db) == 3
    assert active_generation(db)[0] == 3
    assert dict(sql(db, "SELECT key, value FROM settings")) == {"global_yaml": gtext, "global_source": "g2.yaml"}
    assert sql(db, "SELECT global_yaml FROM generations WHERE id = 3") == [(gtext,)]
    rc, out, _ = proxyctl("dump")
    assert "workers 3," in out
    assert site_names(db) == ["a"]


def test_init_global_invalid_changes_nothing(store, proxyctl, db, tmp_path):
    write(tmp_path, "bad.yaml", "workers: 0\n")
    before = state(db)
    rc, out, err = proxyctl("init", "--global", "bad.yaml")
    assert rc == 1
    assert err.splitlines()[0] == "bad.yaml:1:10: error: 'workers' must be a whole number from 1 to 256, not '0'"
    assert state(db) == before


def test_init_global_missing_file(store, proxyctl, db):
    before = state(db)
    rc, out, err = proxyctl("init", "--global", "nope.yaml")
    assert rc == 1
    assert err == "nope.yaml: error: cannot read file: No such file or directory\n"
    assert state(db) == before


def test_commands_need_an_initialised_store(tmp_path):
    db = tmp_path / "missing.db"
    for args in (["list-sites"], ["dump"], ["generations"], ["add-site", "x.yaml"], ["remove-site", "x"],
                 ["route-test", "http://a/"]):
        write(tmp_path, "x.yaml", site_yaml("x", ["x.example.com"]))
        rc, out, err = run("--db", db, *args, cwd=tmp_path)
        assert rc == 3, args
        assert f"store {db}: does not exist (run 'proxyctl init' first)" in err, args
    assert not db.exists()


def test_store_path_from_environment(store, tmp_path):
    rc, out, err = run("list-sites", "--json", cwd=tmp_path, env={"PROXYD_DB": str(store)})
    assert rc == 0, err
    assert out == "[]\n"
    assert not (tmp_path / "var").exists()


def test_store_path_option_forms(store, tmp_path):
    assert run(f"--db={store}", "list-sites", "--json", cwd=tmp_path)[:2] == (0, "[]\n")
    assert run("--db", store, "list-sites", "--json", cwd=tmp_path)[:2] == (0, "[]\n")


def test_corrupt_store_file_is_a_runtime_error(tmp_path):
    db = write(tmp_path, "junk.db", "this is not sqlite\n" * 100)
    write(tmp_path, "x.yaml", site_yaml("x", ["x.example.com"]))
    for args in (["list-sites"], ["dump"], ["add-site", "x.yaml"]):
        rc, out, err = run("--db", db, *args, cwd=tmp_path)
        assert rc == 3, args
        assert "file is not a database" in err


def test_newer_schema_is_refused_for_changes(store, proxyctl, db, tmp_path):
    import sqlite3
    con = sqlite3.connect(str(db))
    con.execute("PRAGMA user_version = 3")
    con.commit()
    con.close()
    write(tmp_path, "a.yaml", site_yaml("a", ["a.example.com"]))
    rc, _, err = proxyctl("add-site", "a.yaml")
    assert rc == 3
    assert err == f"proxyctl: store {db}: schema version 3 is newer than this proxyctl (2)\n"


def test_locked_store_is_a_runtime_error(store, proxyctl, db, tmp_path):
    import sqlite3
    write(tmp_path, "a.yaml", site_yaml("a", ["a.example.com"]))
    con = sqlite3.connect(str(db), isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    try:
        rc, _, err = proxyctl("add-site", "a.yaml")
        assert rc == 3
        assert "database is locked" in err
        # Readers are not blocked by a writer (WAL).
        rc, out, _ = proxyctl("list-sites", "--json")
        assert rc == 0 and out == "[]\n"
    finally:
        con.execute("ROLLBACK")
        con.close()
    assert proxyctl("add-site", "a.yaml")[0] == 0


# ---------------------------------------------------------------- validate

def test_validate_ok_stores_nothing(store, proxyctl, db, tmp_path):
    write(tmp_path, "a.yaml", site_yaml("a", ["a.example.com"]))
    write(tmp_path, "b.yaml", site_yaml("b", ["b.example.com"]))
    before = state(db)
    rc, out, err = proxyctl("validate", "a.yaml", "b.yaml")
    assert (rc, out, err) == (0, "2 files valid\n", "")
    rc, out, err = proxyctl("validate", "a.yaml")
    assert (rc, out, err) == (0, "1 file valid\n", "")
    assert state(db) == before


def test_validate_invalid_stores_nothing(store, proxyctl, db, tmp_path):
    write(tmp_path, "a.yaml", site_yaml("a", ["a.example.com"]))
    write(tmp_path, "bad.yaml", "site: bad\nhosts: [bad.example.com]\nupstreem: 1\n")
    before = state(db)
    rc, out, err = proxyctl("validate", "a.yaml", "bad.yaml")
    assert rc == 1
    assert out == ""
    assert err == "bad.yaml:3:1: error: unknown key 'upstreem' (did you mean 'upstreams'?)\n1 error, 0 warnings\n"
    assert state(db) == before


def test_validate_checks_against_stored_sites(store, proxyctl, db, tmp_path):
    write(tmp_path, "a.yaml", site_yaml("a", ["a.example.com"]))
    assert proxyctl("add-site", "a.yaml")[0] == 0
    write(tmp_path, "z.yaml", site_yaml("z", ["z.example.com", "a.example.com"]))
    rc, out, err = proxyctl("validate", "z.yaml")
    assert rc == 1 and "host 'a.example.com' is already claimed by site 'a' (a.yaml:2:9)" in err
    # A new version of a stored site replaces it (its hosts do not conflict with itself).
    write(tmp_path, "a2.yaml", site_yaml("a", ["a.example.com", "www.a.example.com"]))
    assert proxyctl("validate", "a2.yaml")[:2] == (0, "1 file valid\n")


def test_validate_with_global_option(store, proxyctl, db, tmp_path):
    write(tmp_path, "z.yaml", site_yaml("z", ["z.example.com"]))
    write(tmp_path, "g.yaml", "workers: 2\n")
    before = state(db)
    assert proxyctl("validate", "--global", "g.yaml", "z.yaml") == (0, "1 file valid\n", "")
    write(tmp_path, "bad-g.yaml", "worker: 2\n")
    rc, out, err = proxyctl("validate", "--global", "bad-g.yaml", "z.yaml")
    assert rc == 1
    assert err.splitlines()[0] == "bad-g.yaml:1:1: error: unknown key 'worker' (did you mean 'workers'?)"
    assert state(db) == before


def test_validate_missing_file(store, proxyctl):
    rc, out, err = proxyctl("validate", "nope.yaml")
    assert rc == 1
    assert err.splitlines()[0] == "nope.yaml: error: cannot read file: No such file or directory"


# ---------------------------------------------------------------- add-site

def test_add_site_file(store, proxyctl, db, tmp_path):
    text = site_yaml("shop", ["shop.example.com"])
    write(tmp_path, "shop.yaml", text, dedent=False)
    rc, out, err = proxyctl("add-site", "shop.yaml")
    assert rc == 0, err
    assert err == ""
    m = re.fullmatch(r"site 'shop' added; generation 2 active \(1 site, (\d+) bytes\)\n", out)
    assert m, out
    gid, blob, digest = active_generation(db)
    assert gid == 2 and len(blob) == int(m.group(1))
    assert digest == hashlib.sha256(blob).hexdigest()
    assert sql(db, "SELECT name, yaml, source, digest FROM sites") == [
        ("shop", text, "shop.yaml", hashlib.sha256(text.encode()).hexdigest())]
    assert sql(db, "SELECT name, yaml, source FROM generation_sites WHERE generation = 2") == [
        ("shop", text, "shop.yaml")]


def test_add_site_missing_file(store, proxyctl, db):
    before = state(db)
    rc, out, err = proxyctl("add-site", "nope.yaml")
    assert rc == 1
    assert err == "nope.yaml: error: cannot read file: No such file or directory\n"
    assert state(db) == before


def test_add_site_flag_form(store, proxyctl, db, tmp_path):
    rc, out, err = proxyctl("add-site", "web", "--host", "web.example.com", "--host", "www.web.example.com",
                            "--upstream", "127.0.0.1:3000", "--upstream", "127.0.0.1:3001", "--tls", "self-signed")
    assert rc == 0, err
    assert out.startswith("site 'web' added; generation 2 active (1 site, ")
    rc, shown, _ = proxyctl("show-site", "web")
    assert rc == 0
    # What was stored is a complete site file: it validates on its own.
    write(tmp_path, "web.yaml", shown, dedent=False)
    assert proxyctl("validate", "web.yaml")[:2] == (0, "1 file valid\n")
    rc, out, err = run("--db", tmp_path / "other.db", "validate", "web.yaml", cwd=tmp_path)
    assert (rc, out) == (0, "1 file valid\n"), err
    assert sql(db, "SELECT source FROM sites WHERE name = 'web'") == [("add-site:web",)]
    rc, out, _ = proxyctl("dump")
    assert "site web (add-site:web)\n  hosts: web.example.com www.web.example.com\n  tls: certificate self-signed" in out
    assert "server 127.0.0.1:3000 weight 1" in out and "server 127.0.0.1:3001 weight 1" in out
    rc, out, _ = proxyctl("route-test", "http://www.web.example.com/anything")
    assert rc == 0
    assert "site: web (add-site:web)\n" in out
    assert "proxy to upstream app" in out


def test_add_site_flag_form_without_tls(store, proxyctl, db):
    rc, out, err = proxyctl("add-site", "api", "--host", "api.example.com", "--upstream", "[::1]:8080")
    assert rc == 0, err
    rc, out, _ = proxyctl("dump")
    assert "site api (add-site:api)\n  hosts: api.example.com\n  tls: certificate none" in out
    assert "server [::1]:8080 weight 1" in out


@pytest.mark.parametrize("args", [
    ["add-site"],
    ["add-site", "web", "--host", "web.example.com"],                   # no upstream
    ["add-site", "web", "--upstream", "127.0.0.1:1"],                   # no host
    ["add-site", "web", "--host", "w.example.com", "--upstream"],       # dangling flag
    ["add-site", "web", "--host", "w.example.com", "--upstream", "127.0.0.1:1", "--port", "80"],
    ["add-site", "a.yaml", "b.yaml"],
], ids=["nothing", "no-upstream", "no-host", "dangling", "unknown-flag", "two-files"])
def test_add_site_usage(store, proxyctl, db, args):
    before = state(db)
    rc, out, err = proxyctl(*args)
    assert rc == 2
    assert err.startswith("proxyctl: add-site: ") and err.splitlines()[1].startswith("usage: proxyctl add-site ")
    assert state(db) == before


def test_add_site_flag_form_invalid_values(store, proxyctl, db):
    before = state(db)
    rc, out, err = proxyctl("add-site", "web", "--host", "web.example.com", "--upstream", "127.0.0.1")
    assert rc == 1
    assert err == "add-site:web:7:18: error: invalid address '127.0.0.1': missing :port\n1 error, 0 warnings\n"
    rc, out, err = proxyctl("add-site", "Web_1", "--host", "web.example.com", "--upstream", "127.0.0.1:1")
    assert rc == 1
    assert "invalid site name 'Web_1'" in err
    assert state(db) == before


def test_add_site_replaces_same_name(store, proxyctl, db, tmp_path):
    write(tmp_path, "shop.yaml", site_yaml("shop", ["shop.example.com"]))
    assert proxyctl("add-site", "shop.yaml")[0] == 0
    new = site_yaml("shop", ["shop.example.com", "store.example.com"])
    write(tmp_path, "shop-v2.yaml", new, dedent=False)
    rc, out, err = proxyctl("add-site", "shop-v2.yaml")
    assert rc == 0, err
    assert out.startswith("site 'shop' replaced; generation 3 active (1 site, ")
    assert sql(db, "SELECT name, source FROM sites") == [("shop", "shop-v2.yaml")]
    assert proxyctl("show-site", "shop")[1] == new
    rc, out, _ = proxyctl("route-test", "http://store.example.com/")
    assert "site: shop (shop-v2.yaml)" in out


def test_add_site_self_signed_makes_certificate(store, proxyctl, db):
    rc, _, err = proxyctl("add-site", "web", "--host", "web.example.com", "--upstream", "127.0.0.1:3000",
                          "--tls", "self-signed")
    assert rc == 0, err
    rows = sql(db, "SELECT site, hosts, source FROM certificates")
    assert rows == [("web", "web.example.com", "self-signed")]


# ---------------------------------------------------------------- remove-site

def test_remove_site(store, proxyctl, db, tmp_path):
    write(tmp_path, "a.yaml", site_yaml("a", ["a.example.com"]))
    write(tmp_path, "b.yaml", site_yaml("b", ["b.example.com"]))
    assert proxyctl("add-site", "a.yaml")[0] == 0
    assert proxyctl("add-site", "b.yaml")[0] == 0
    rc, out, err = proxyctl("remove-site", "a")
    assert rc == 0, err
    assert re.fullmatch(r"site 'a' removed; generation 4 active \(1 site, \d+ bytes\)\n", out), out
    assert site_names(db) == ["b"]
    rc, out, _ = proxyctl("dump")
    assert "site a " not in out and "a.example.com" not in out and "site b (b.yaml)" in out
    rc, out, _ = proxyctl("route-test", "http://a.example.com/")
    assert "site: none" in out
    rc, _, err = proxyctl("show-site", "a")
    assert rc == 1


def test_remove_unknown_site(store, proxyctl, db, tmp_path):
    write(tmp_path, "a.yaml", site_yaml("a", ["a.example.com"]))
    assert proxyctl("add-site", "a.yaml")[0] == 0
    before = state(db)
    rc, out, err = proxyctl("remove-site", "zz")
    assert (rc, out, err) == (1, "", "proxyctl: no site named 'zz'\n")
    assert state(db) == before


@pytest.mark.parametrize("args", [["remove-site"], ["remove-site", "a", "b"]])
def test_remove_site_usage(store, proxyctl, args):
    rc, _, err = proxyctl(*args)
    assert rc == 2
    reason = "missing SITE" if len(args) == 1 else "unexpected argument 'b'"
    assert err == f"proxyctl: remove-site: {reason}\nusage: proxyctl remove-site SITE\n(see 'proxyctl remove-site --help')\n"


def test_remove_last_site(store, proxyctl, db, tmp_path):
    write(tmp_path, "a.yaml", site_yaml("a", ["a.example.com"]))
    assert proxyctl("add-site", "a.yaml")[0] == 0
    rc, out, err = proxyctl("remove-site", "a")
    assert rc == 0, err
    assert out.startswith("site 'a' removed; generation 3 active (0 sites, ")
    assert site_names(db) == []


# ---------------------------------------------------------------- list-sites, show-site

def test_list_sites(store, proxyctl, db, tmp_path):
    rc, out, err = proxyctl("list-sites")
    assert rc == 0 and out == "" and err.startswith("no sites in ")
    assert proxyctl("list-sites", "--json") == (0, "[]\n", "")
    texts = {}
    for name in ("zeta", "alpha", "mid"):
        texts[name] = site_yaml(name, [f"{name}.example.com"])
        write(tmp_path, f"dir/{name}.yaml", texts[name], dedent=False)
        assert proxyctl("add-site", f"dir/{name}.yaml")[0] == 0
    rc, out, err = proxyctl("list-sites")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["SITE", "UPDATED", "SOURCE"]
    rows = [ln.split() for ln in lines[1:]]
    assert [r[0] for r in rows] == ["alpha", "mid", "zeta"]
    for r in rows:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r[1])
        assert r[2] == f"dir/{r[0]}.yaml"
    rc, out, _ = proxyctl("list-sites", "--json")
    data = json.loads(out)
    assert [d["name"] for d in data] == ["alpha", "mid", "zeta"]
    for d in data:
        assert set(d) == {"name", "source", "digest", "updated"}
        assert d["source"] == f"dir/{d['name']}.yaml"
        assert d["digest"] == hashlib.sha256(texts[d["name"]].encode()).hexdigest()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", d["updated"])


def test_list_sites_usage(store, proxyctl):
    rc, _, err = proxyctl("list-sites", "extra")
    assert rc == 2 and err == ("proxyctl: list-sites: unexpected argument 'extra'\nusage: proxyctl list-sites [--json]\n"
                               "(see 'proxyctl list-sites --help')\n")


def test_show_site_prints_exact_bytes(store, proxyctl, tmp_path):
    text = ("# shop — ünïcødé comment   \n"
            "site: shop   # trailing comment\n"
            "\n\n"
            "hosts:\n    - shop.example.com\t\n"
            "routes:\n"
            "  - match: {path_exact: /}\n"
            "    return: {status: 204}   ")          # no final newline, trailing blanks
    (tmp_path / "shop.yaml").write_bytes(text.encode())
    assert proxyctl("add-site", "shop.yaml")[0] == 0
    rc, out, err = proxyctl("show-site", "shop", raw=True)
    assert rc == 0
    assert out == text.encode()
    assert err == b""


def test_show_site_unknown(store, proxyctl):
    assert proxyctl("show-site", "nope") == (1, "", "proxyctl: no site named 'nope' (the store has no sites)\n")
    assert proxyctl("show-site")[0] == 2


# ---------------------------------------------------------------- apply

def test_apply_makes_sites_equal_to_dir(store, proxyctl, db, tmp_path):
    write(tmp_path, "a.yaml", site_yaml("a", ["a.example.com"]))
    write(tmp_path, "b.yaml", site_yaml("b", ["b.example.com"]))
    assert proxyctl("add-site", "a.yaml")[0] == 0
    assert proxyctl("add-site", "b.yaml")[0] == 0
    b2 = site_yaml("b", ["b.example.com", "b2.example.com"])
    c = site_yaml("c", ["c.example.com"])
    gtext = GLOBAL_YAML + "workers: 3\n"
    write(tmp_path, "sites/b.yaml", b2, dedent=False)
    write(tmp_path, "sites/c.yml", c, dedent=False)
    write(tmp_path, "sites/proxy.yaml", gtext, dedent=False)
    write(tmp_path, "sites/README.txt", "not a site\n")
    write(tmp_path, "sites/.hidden.yaml", "this: is [not valid\n")
    before = gen_count(db)
    rc, out, err = proxyctl("apply", "sites")
    assert rc == 0, err
    assert re.fullmatch(r"~ b: hosts\n\+ c \(sites/c.yml\)\n- a\n"
                        r"applied 2 sites \(2 before\); generation 4 active \(2 sites, \d+ bytes\)\n", out), out
    assert gen_count(db) == before + 1
    assert sql(db, "SELECT name, source FROM sites ORDER BY name") == [("b", "sites/b.yaml"), ("c", "sites/c.yml")]
    assert proxyctl("show-site", "b")[1] == b2
    assert proxyctl("show-site", "a")[0] == 1
    assert dict(sql(db, "SELECT key, value FROM settings")) == {"global_yaml": gtext,
                                                                "global_source": "sites/proxy.yaml"}
    rc, out, _ = proxyctl("dump")
    assert "workers 3," in out
    assert "site a " not in out and "site b (sites/b.yaml)" in out and "site c (sites/c.yml)" in out
    assert sorted(r[0] for r in sql(db, "SELECT name FROM generation_sites WHERE generation = 4")) == ["b", "c"]
    # Applying the same directory again: the same table, no new generation.
    rc, out, err = proxyctl("apply", "sites")
    assert rc == 0, err
    assert out == "= 2 sites unchanged\nno change: generation 4 is already active\n"
    assert gen_count(db) == before + 1


def test_apply_files_and_global_option(store, proxyctl, db, tmp_path):
    write(tmp_path, "x.yaml", site_yaml("x", ["x.example.com"]))
    write(tmp_path, "y.yaml", site_yaml("y", ["y.example.com"]))
    write(tmp_path, "g.yaml", GLOBAL_YAML + "workers: 7\n", dedent=False)
    rc, out, err = proxyctl("apply", "--global", "g.yaml", "x.yaml", "y.yaml")
    assert rc == 0, err
    assert "\napplied 2 sites (0 before); generation 2 active (2 sites, " in out
    assert site_names(db) == ["x", "y"]
    assert "workers 7," in proxyctl("dump")[1]
    # Without --global and without proxy.yaml the stored global settings stay.
    rc, out, err = proxyctl("apply", "x.yaml")
    assert rc == 0, err
    assert site_names(db) == ["x"]
    assert "workers 7," in proxyctl("dump")[1]


def test_apply_invalid_changes_nothing(store, proxyctl, db, tmp_path):
    write(tmp_path, "a.yaml", site_yaml("a", ["a.example.com"]))
    assert proxyctl("add-site", "a.yaml")[0] == 0
    write(tmp_path, "sites/b.yaml", site_yaml("b", ["b.example.com"]))
    write(tmp_path, "sites/c.yaml", "site: c\nhosts: [c.example.com]\nroutes: {}\n")
    before = state(db)
    rc, out, err = proxyctl("apply", "sites")
    assert rc == 1
    assert err == "sites/c.yaml:3:9: error: 'routes' must be a list, not a mapping\n1 error, 0 warnings\n"
    assert state(db) == before


def test_apply_duplicate_site_names(store, proxyctl, db, tmp_path):
    write(tmp_path, "sites/b.yaml", site_yaml("b", ["b.example.com"]))
    write(tmp_path, "sites/b2.yaml", site_yaml("b", ["b2.example.com"]))
    before = state(db)
    rc, out, err = proxyctl("apply", "sites")
    assert rc == 1
    assert err == "sites/b2.yaml: error: site 'b' is also defined in sites/b.yaml\n"
    assert state(db) == before


def test_apply_missing_dir(store, proxyctl, db):
    before = state(db)
    rc, out, err = proxyctl("apply", "nowhere")
    assert rc == 1
    assert err == "nowhere: error: cannot read file: No such file or directory\n"
    assert state(db) == before


def test_apply_empty_dir_removes_everything(store, proxyctl, db, tmp_path):
    write(tmp_path, "a.yaml", site_yaml("a", ["a.example.com"]))
    assert proxyctl("add-site", "a.yaml")[0] == 0
    (tmp_path / "empty").mkdir()
    rc, out, err = proxyctl("apply", "empty")
    assert rc == 1 and err == ("proxyctl: apply: refusing to remove 1 of the 1 stored sites (more than half); "
                               "check the inputs, or add --force\n")
    assert site_names(db) == ["a"]
    rc, out, err = proxyctl("apply", "--force", "empty")
    assert rc == 0, err
    assert out.startswith("- a\napplied 0 sites (1 before); generation 3 active (0 sites, ")
    assert site_names(db) == []


# ---------------------------------------------------------------- generations

def test_generations(store, proxyctl, db, tmp_path):
    write(tmp_path, "a.yaml", site_yaml("a", ["a.example.com"]))
    write(tmp_path, "b.yaml", site_yaml("b", ["b.example.com"]))
    assert proxyctl("add-site", "a.yaml")[0] == 0
    assert proxyctl("add-site", "b.yaml")[0] == 0
    rc, out, err = proxyctl("generations")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["GEN", "CREATED", "SITES", "BYTES", "DIGEST", "COMMAND"]
    assert len(lines) == 4
    rows = {int(ln.split()[0]): ln for ln in lines[1:]}
    assert "*" in rows[3].split() and "*" not in rows[1].split() and "*" not in rows[2].split()
    assert rows[2].split()[-2:] == ["add-site", "a.yaml"]
    assert rows[3].split()[-2:] == ["add-site", "b.yaml"]
    rc, out, _ = proxyctl("generations", "--json")
    data = json.loads(out)
    assert [d["id"] for d in data] == [1, 2, 3]
    assert [d["active"] for d in data] == [False, False, True]
    assert [d["sites"] for d in data] == [0, 1, 2]
    for d in data:
        blob = blob_of(db, d["id"])
        assert d["bytes"] == len(blob)
        assert d["digest"] == hashlib.sha256(blob).hexdigest()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", d["created"])
        assert d["digest"][:12] in rows[d["id"]]
    assert proxyctl("generations", "extra")[0] == 2


# ---------------------------------------------------------------- rollback

@pytest.fixture
def history(store, proxyctl, db, tmp_path):
    """gen 1 empty; 2: +a; 3: +b; 4: -a (b only)."""
    texts = {"a": site_yaml("a", ["a.example.com"]), "b": site_yaml("b", ["b.example.com"])}
    for n, t in texts.items():
        write(tmp_path, f"{n}.yaml", t, dedent=False)
        assert proxyctl("add-site", f"{n}.yaml")[0] == 0
    assert proxyctl("remove-site", "a")[0] == 0
    assert active_generation(db)[0] == 4
    return texts


def test_rollback_default_is_previous(history, proxyctl, db):
    rc, out, err = proxyctl("rollback")
    assert rc == 0, err
    assert out == "rolled back to generation 3; generation 5 active (2 sites)\n"
    gid, blob, digest = active_generation(db)
    assert gid == 5
    assert blob == blob_of(db, 3)
    assert digest == sql(db, "SELECT digest FROM generations WHERE id = 3")[0][0]
    assert site_names(db) == ["a", "b"]
    assert proxyctl("show-site", "a")[1] == history["a"]
    assert proxyctl("show-site", "b")[1] == history["b"]
    assert sql(db, "SELECT name, yaml, source FROM generation_sites WHERE generation = 5 ORDER BY name") == \
        sql(db, "SELECT name, yaml, source FROM generation_sites WHERE generation = 3 ORDER BY name")
    assert "site a (a.yaml)" in proxyctl("dump")[1]


def test_rollback_explicit_generation(history, proxyctl, db):
    rc, out, err = proxyctl("rollback", "2")
    assert rc == 0, err
    assert out == "rolled back to generation 2; generation 5 active (1 site)\n"
    assert active_generation(db)[1] == blob_of(db, 2)
    assert site_names(db) == ["a"]
    assert proxyctl("show-site", "a")[1] == history["a"]
    assert proxyctl("show-site", "b")[0] == 1
    # Roll back to the empty generation: no compile, just a copy.
    rc, out, err = proxyctl("rollback", "1")
    assert rc == 0, err
    assert out == "rolled back to generation 1; generation 6 active (0 sites)\n"
    assert active_generation(db)[1] == blob_of(db, 1)
    assert site_names(db) == []
    # History is never rewritten.
    assert gen_count(db) == 6
    assert [r[0] for r in sql(db, "SELECT id FROM generations WHERE active = 1")] == [6]


def test_rollback_then_change_builds_on_restored_sites(history, proxyctl, db, tmp_path):
    assert proxyctl("rollback", "3")[0] == 0
    write(tmp_path, "c.yaml", site_yaml("c", ["c.example.com"]))
    rc, out, err = proxyctl("add-site", "c.yaml")
    assert rc == 0, err
    assert out.startswith("site 'c' added; generation 6 active (3 sites, ")
    assert site_names(db) == ["a", "b", "c"]


def test_rollback_restores_global_settings(store, proxyctl, db, tmp_path):
    write(tmp_path, "a.yaml", site_yaml("a", ["a.example.com"]))
    assert proxyctl("add-site", "a.yaml")[0] == 0
    write(tmp_path, "g.yaml", GLOBAL_YAML + "workers: 5\n", dedent=False)
    assert proxyctl("init", "--global", "g.yaml")[0] == 0
    assert "workers 5," in proxyctl("dump")[1]
    assert proxyctl("rollback")[0] == 0
    assert "workers auto," in proxyctl("dump")[1]
    assert sql(db, "SELECT value FROM settings WHERE key = 'global_yaml'") == [(GLOBAL_YAML,)]
    # The next change compiles with the restored settings, not the rolled-back ones.
    write(tmp_path, "b.yaml", site_yaml("b", ["b.example.com"]))
    assert proxyctl("add-site", "b.yaml")[0] == 0
    assert "workers auto," in proxyctl("dump")[1]


def test_rollback_errors(store, proxyctl, db):
    before = state(db)
    assert proxyctl("rollback") == (1, "", "proxyctl: no generation before the active one\n")
    rc, out, err = proxyctl("rollback", "99")
    assert rc == 1
    assert err == f"proxyctl: store {db}: no generation 99\n"
    for bad in (["abc"], ["0"], ["-1"], ["1", "2"]):
        rc, _, err = proxyctl("rollback", *bad)
        assert rc == 2, bad
        assert err.startswith("proxyctl: rollback: ") and "\nusage: proxyctl rollback [GEN]\n" in err
    assert state(db) == before


# ---------------------------------------------------------------- dump

SHOP = r"""
site: shop
hosts: [shop.example.com, "*.shop.example.com"]
upstreams:
  app: {servers: ["127.0.0.1:3001"]}
  api:
    balance: least_conn
    servers:
      - {address: "127.0.0.1:3002", weight: 5}
      - {address: "127.0.0.1:3003", backup: true}
routes:
  - match: {path_regex: '(?i)\.(git|env)$'}
    return: {status: 404}
  - match: {path_exact: /ping}
    return: {status: 200, body: pong}
  - match: {path_exact: /x.env}
    return: {status: 200}
  - match: {path_prefix: /api/, methods: [GET, POST]}
    upstream: api
    strip_prefix: true
    retry: {on: [error, http_502], tries: 3}
    allow: [10.0.0.0/8, "::1"]
  - match: {path_prefix: /api/v2/, methods: [DELETE]}
    upstream: api
  - match: {path_prefix: /admin/, methods: [PUT]}
    upstream: app
  - match: {path_prefix: /static/}
    static: {root: /var/www, expires: 30d}
  - match: {path_exact: /old}
    redirect: {to: /new, status: 308}
  - match: {path_prefix: /app/}
    upstream: app
    max_body: 1m
    headers:
      request: {set: {X-Request-Id: "$request_id"}, remove: [X-Powered-By]}
"""

FALLBACK = """
site: fallback
default: true
routes:
  - match: {}
    return: {status: 410}
"""

SECURE = """
site: secure
hosts: [secure.example.com]
tls: {certificate: acme, redirect_http: true}
routes:
  - match: {path_prefix: /}
    return: {status: 200}
"""


@pytest.fixture
def shop(store, proxyctl, tmp_path):
    write(tmp_path, "shop.yaml", SHOP)
    rc, out, err = proxyctl("add-site", "shop.yaml")
    assert rc == 0, err
    assert err == ""
    return store


def test_dump(shop, proxyctl, db, tmp_path):
    rc, out, err = proxyctl("dump")
    assert rc == 0, err
    gid, blob, _ = active_generation(db)
    assert out.startswith(f"# generation {gid}, {len(blob)} bytes\nglobal:\n")
    assert ", admin socket admin.sock\n" in out
    assert "site shop (shop.yaml)\n  hosts: shop.example.com *.shop.example.com\n" in out
    assert "  upstream api: least_conn, keepalive 32\n" in out
    assert "    server 127.0.0.1:3002 weight 5 max_fails 1 fail_timeout 10s\n" in out
    assert "    server 127.0.0.1:3003 weight 1 max_fails 1 fail_timeout 10s backup\n" in out
    assert "  route 1 (shop.yaml:11:5): path_regex (?i)\\.(git|env)$, methods any\n    return 404\n" in out
    assert "  route 2 (shop.yaml:13:5): path_exact /ping, methods any\n    return 200 body: pong\n" in out
    assert ("  route 4 (shop.yaml:17:5): path_prefix /api/, methods GET,POST\n"
            "    proxy to upstream api, strip_prefix\n") in out
    assert "    retry: 3 tries on error,http_502\n" in out
    assert "    allow: 10.0.0.0/8 ::1/128 (others 403)\n" in out
    assert "    static root /var/www, expires 30d\n" in out
    assert "    redirect 308 to /new\n" in out
    assert "    max_body: 1048576 bytes\n" in out
    assert "    request header set X-Request-Id: $request_id\n" in out
    assert "    request header remove X-Powered-By\n" in out
    # dump GEN decodes an older generation.
    rc, out, _ = proxyctl("dump", "1")
    assert rc == 0
    assert out.startswith(f"# generation 1, {len(blob_of(db, 1))} bytes\n")
    assert "site shop" not in out


def test_dump_errors(shop, proxyctl, db):
    rc, out, err = proxyctl("dump", "99")
    assert rc != 0
    assert err == f"proxyctl: store {db}: no generation 99\n"
    for bad in (["abc"], ["0"], ["1", "2"]):
        assert proxyctl("dump", *bad)[0] == 2


# ---------------------------------------------------------------- route-test

def route(proxyctl, *args):
    rc, out, err = proxyctl("route-test", *args)
    assert rc == 0, err
    assert err == ""
    return out


def test_route_exact(shop, proxyctl):
    out = route(proxyctl, "http://shop.example.com/ping")
    assert out == ("request: GET http://shop.example.com/ping\n"
                   "site: shop (shop.yaml)\n"
                   "route 2 (shop.yaml:13:5): path_exact /ping, methods any\n"
                   "  return 200 body: pong\n"
                   "  timeouts: connect 5s, read 1m, send 1m\n")
    # The query string is not part of the path.
    out = route(proxyctl, "http://shop.example.com/ping?x=1#frag")
    assert out.startswith("request: GET http://shop.example.com/ping\n")
    assert "route 2 (shop.yaml:13:5)" in out
    # Exact means exact.
    assert "result: 404 no route matches" in route(proxyctl, "http://shop.example.com/ping/")


def test_route_prefix_and_strip_prefix(shop, proxyctl):
    out = route(proxyctl, "http://shop.example.com/api/users/7")
    assert "route 4 (shop.yaml:17:5): path_prefix /api/, methods GET,POST\n" in out
    assert "  rewrite: /api/users/7 -> /users/7\n" in out
    assert "  upstream api: least_conn, keepalive 32\n" in out
    out = route(proxyctl, "http://shop.example.com/api/")
    assert "  rewrite: /api/ -> /\n" in out
    out = route(proxyctl, "http://shop.example.com/static/css/a.css")
    assert "route 7 (shop.yaml:26:5): path_prefix /static/" in out
    assert "rewrite" not in out
    # A prefix must match as a whole: /api (no slash) is not under /api/.
    assert "result: 404" in route(proxyctl, "http://shop.example.com/api")


def test_route_regex_and_first_match_wins(shop, proxyctl):
    # The regex route comes first: it wins over the later prefix and exact routes.
    out = route(proxyctl, "http://shop.example.com/api/.GIT")
    assert "route 1 (shop.yaml:11:5): path_regex" in out
    out = route(proxyctl, "http://shop.example.com/x.env")
    assert "route 1 (shop.yaml:11:5)" in out
    # /api/ (GET, POST) is before /api/v2/ (DELETE): file order decides, not length.
    assert "route 4 (shop.yaml:17:5)" in route(proxyctl, "http://shop.example.com/api/v2/x")
    assert "route 5 (shop.yaml:22:5)" in route(proxyctl, "http://shop.example.com/api/v2/x", "-X", "DELETE")


def test_route_hosts(shop, proxyctl):
    for url in ("http://x.shop.example.com/ping", "http://a.b.shop.example.com/ping",
                "http://shop.example.com:8443/ping", "https://SHOP.Example.COM/ping",
                "http://Deep.X.Shop.Example.Com:80/ping"):
        out = route(proxyctl, url)
        assert "site: shop (shop.yaml)\nroute 2 (shop.yaml:13:5)" in out, url
    out = route(proxyctl, "/ping", "-H", "Host: X.shop.example.com:99")
    assert out.startswith("request: GET http://X.shop.example.com:99/ping\nsite: shop (shop.yaml)\n")
    # The wildcard covers subdomains only; an unrelated host has no site.
    out = route(proxyctl, "http://shop.example.com.evil.org/ping")
    assert out == ("request: GET http://shop.example.com.evil.org/ping\n"
                   "site: none (no site claims this host and there is no default site)\n"
                   "result: 404\n")
    assert route(proxyctl, "http://noshop.example.com/", "--json") == '{"site":null,"status":404}\n'


def test_route_default_site(shop, proxyctl, tmp_path):
    write(tmp_path, "fallback.yaml", FALLBACK)
    assert proxyctl("add-site", "fallback.yaml")[0] == 0
    out = route(proxyctl, "http://unknown.example.org/whatever")
    assert out == ("request: GET http://unknown.example.org/whatever\n"
                   "site: fallback (fallback.yaml) [default]\n"
                   "route 1 (fallback.yaml:4:5): any path, methods any\n"
                   "  return 410\n"
                   "  timeouts: connect 5s, read 1m, send 1m\n")
    # A claimed host still goes to its own site.
    assert "site: shop (shop.yaml)\n" in route(proxyctl, "http://shop.example.com/ping")
    data = json.loads(route(proxyctl, "http://unknown.example.org/", "--json"))
    assert {k: data[k] for k in ("site", "source", "route", "line", "action")} == {
        "site": "fallback", "source": "fallback.yaml", "route": 1, "line": 4, "action": "return"}
    # the text's every line is in the JSON too
    assert data["match"] == "any" and data["methods"] == "any" and data["return"] == {"status": 410, "body": ""}
    assert data["policy"] == {"timeouts": {"connect_ms": 5000, "read_ms": 60000, "send_ms": 60000}}


def test_route_405_lists_allowed_methods(shop, proxyctl):
    out = route(proxyctl, "http://shop.example.com/admin/users")
    assert out == ("request: GET http://shop.example.com/admin/users\n"
                   "site: shop (shop.yaml)\n"
                   "result: 405 method not allowed\n"
                   "allow: PUT\n")
    out = route(proxyctl, "http://shop.example.com/admin/users", "-X", "PUT")
    assert "route 6 (shop.yaml:24:5): path_prefix /admin/, methods PUT\n" in out
    # Two routes match the path, neither the method: the union, in method order.
    out = route(proxyctl, "http://shop.example.com/api/v2/x", "-X", "PATCH")
    assert out.endswith("result: 405 method not allowed\nallow: GET POST DELETE\n")
    data = json.loads(route(proxyctl, "http://shop.example.com/admin/", "--json"))
    assert {k: data[k] for k in ("site", "source", "status", "allow")} == {
        "site": "shop", "source": "shop.yaml", "status": 405, "allow": ["PUT"]}
    assert "route" not in data
    # 404 (not 405) when no route matches the path at all.
    assert route(proxyctl, "http://shop.example.com/nothing", "-X", "PUT").endswith("result: 404 no route matches\n")


def test_route_json(shop, proxyctl):
    data = json.loads(route(proxyctl, "http://shop.example.com/api/x", "--json"))
    assert {k: data[k] for k in ("site", "source", "status", "route", "line", "action", "upstream", "upstream_path",
                                 "strip_prefix")} == {
        "site": "shop", "source": "shop.yaml", "status": 200, "route": 4, "line": 17, "action": "upstream",
        "upstream": "api", "upstream_path": "/x", "strip_prefix": True}
    assert data["request"] == {"method": "GET", "scheme": "http", "host": "shop.example.com", "path": "/api/x"}
    assert data["upstream_pool"]["name"] == "api" and data["upstream_pool"]["servers"]
    data = json.loads(route(proxyctl, "--json", "http://shop.example.com/old"))
    assert data["route"] == 8 and data["action"] == "redirect" and "upstream" not in data
    assert set(data["redirect"]) == {"status", "to"}
    data = json.loads(route(proxyctl, "http://shop.example.com/nothing", "--json"))
    assert {k: data[k] for k in ("site", "source", "status")} == {"site": "shop", "source": "shop.yaml", "status": 404}
    assert "route" not in data


def test_route_json_has_every_policy_of_the_text(shop, proxyctl):
    """Whatever the text form shows of a route is in --json too."""
    text = route(proxyctl, "http://shop.example.com/app/home")
    data = json.loads(route(proxyctl, "http://shop.example.com/app/home", "--json"))
    assert "  max_body: 1048576 bytes\n" in text and data["policy"]["max_body"] == 1048576
    assert "  request header set X-Request-Id: $request_id\n" in text
    assert {"direction": "request", "op": "set", "name": "X-Request-Id", "value": "$request_id"} in data["headers"]
    assert data["match"] == {"path_prefix": "/app/"} and data["methods"] == "any"
    pool = data["upstream_pool"]
    assert (pool["balance"], pool["keepalive"]) == ("round_robin", 32)
    assert pool["servers"][0] == {"address": "127.0.0.1:3001", "weight": 1, "max_fails": 1, "fail_timeout_ms": 10000,
                                  "backup": False}


def test_route_json_escapes_source(store, proxyctl, tmp_path):
    name = 'we"ird\\back.yaml'
    (tmp_path / name).write_text(site_yaml("w", ["w.example.com"]))
    assert proxyctl("add-site", name)[0] == 0
    assert json.loads(proxyctl("list-sites", "--json")[1])[0]["source"] == name
    data = json.loads(route(proxyctl, "http://w.example.com/", "--json"))
    assert data["source"] == name


def test_route_policies_shown(shop, proxyctl):
    out = route(proxyctl, "http://shop.example.com/app/home")
    assert "route 9 (shop.yaml:30:5): path_prefix /app/, methods any\n" in out
    assert "  max_body: 1048576 bytes\n" in out
    assert "  request header set X-Request-Id: $request_id\n" in out
    assert "  upstream app: round_robin, keepalive 32\n    server 127.0.0.1:3001 weight 1" in out


def test_route_redirect_http_note(store, proxyctl, tmp_path):
    write(tmp_path, "secure.yaml", SECURE)
    assert proxyctl("add-site", "secure.yaml")[0] == 0
    out = route(proxyctl, "http://secure.example.com/x")
    assert "note: plain HTTP gets 301 to https (redirect_http); over https:\n" in out
    assert "note:" not in route(proxyctl, "https://secure.example.com/x")
    assert "note:" not in route(proxyctl, "http://secure.example.com/.well-known/acme-challenge/tok")


@pytest.mark.parametrize("args", [
    [], ["/no-host"], ["shop.example.com/ping"], ["http://a/", "-H", "NoColon"], ["http://a/", "-X"],
    ["http://a/", "http://b/"], ["http://a/", "--bogus"],
], ids=["none", "path-without-host", "no-scheme", "bad-header", "dangling-X", "two-urls", "unknown-flag"])
def test_route_test_usage(shop, proxyctl, args):
    rc, out, err = proxyctl("route-test", *args)
    assert rc == 2
    assert err.startswith("proxyctl: route-test: ")
    assert err.splitlines()[1] == "usage: proxyctl route-test URL [-X METHOD] [-H 'K: V']... [--json]"


# ---------------------------------------------------------------- reload, status, health

@pytest.mark.parametrize("args", [["reload"], ["status"], ["status", "--json"], ["health"]])
def test_admin_commands_without_proxyd(store, proxyctl, args):
    rc, out, err = proxyctl(*args)
    assert rc == 3
    assert out == ""
    assert err.startswith("proxyctl: proxyd is not running"), err
    assert "admin.sock" in err


def test_admin_commands_need_a_store(tmp_path):
    rc, _, err = run("--db", tmp_path / "none.db", "health", cwd=tmp_path)
    assert rc == 3 and "does not exist" in err


class FakeProxyd:
    """Answers HTTP/1.1 on a unix socket like proxyd's admin endpoint."""

    def __init__(self, path, status=200, body=b'{"generation": 1}\n'):
        self.path, self.status, self.body = str(path), status, body
        self.requests = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stop = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(data.split(b"\r\n", 1)[0].decode())
                reason = b"OK" if self.status == 200 else b"Error"
                conn.sendall(b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (self.status, reason, len(self.body), self.body))

    def close(self):
        self.stop = True
        self.thread.join(5)
        self.sock.close()
        os.unlink(self.path)


@pytest.fixture
def fake_proxyd(tmp_path):
    servers = []

    def start(**kw):
        s = FakeProxyd(tmp_path / "admin.sock", **kw)
        servers.append(s)
        return s
    yield start
    for s in servers:
        s.close()


def test_admin_commands_with_proxyd(store, proxyctl, db, tmp_path, fake_proxyd):
    srv = fake_proxyd()
    rc, out, err = proxyctl("status")   # the summary, from the same JSON
    assert (rc, err) == (0, "")
    assert "generation:  1 (0 sites)\n" in out and "workers:     0 of 0 alive\n" in out
    assert proxyctl("status", "--json") == (0, '{"generation": 1}\n', "")
    assert proxyctl("health") == (0, "", "")
    assert proxyctl("reload") == (0, "proxyd reloaded\n", "")
    assert srv.requests == ["GET /status HTTP/1.1", "GET /status HTTP/1.1", "GET /health HTTP/1.1",
                            "POST /reload HTTP/1.1"]
    # Changing commands tell the running proxyd to reload.
    srv.requests.clear()
    write(tmp_path, "a.yaml", site_yaml("a", ["a.example.com"]))
    assert proxyctl("add-site", "a.yaml")[0] == 0
    write(tmp_path, "b.yaml", site_yaml("b", ["b.example.com"]))
    assert proxyctl("add-site", "b.yaml")[0] == 0
    assert proxyctl("remove-site", "a")[0] == 0
    assert proxyctl("rollback")[0] == 0
    assert srv.requests == ["POST /reload HTTP/1.1"] * 4


def test_admin_commands_proxyd_error(store, proxyctl, db, tmp_path, fake_proxyd):
    fake_proxyd(status=503, body=b"draining")
    assert proxyctl("health") == (3, "", "proxyctl: proxyd answered 503: draining\n")
    assert proxyctl("reload") == (3, "", "proxyctl: proxyd answered 503: draining\n")
    # add-site stores the generation, but reports that proxyd did not take it.
    write(tmp_path, "a.yaml", site_yaml("a", ["a.example.com"]))
    rc, out, err = proxyctl("add-site", "a.yaml")
    assert rc == 3
    assert out.startswith("site 'a' added; generation 2 active")
    # a relative admin socket path resolves beside the store
    assert err == f"proxyctl: proxyd refused to reload (admin socket {db.parent}/admin.sock)\n"
    assert active_generation(db)[0] == 2


# ---------------------------------------------------------------- help and usage

@pytest.mark.parametrize("cmd", COMMANDS)
def test_command_help(cmd, tmp_path):
    for flag in ("--help", "-h"):
        rc, out, err = run(cmd, flag, cwd=tmp_path)
        assert rc == 0
        assert out.startswith(f"usage: proxyctl {cmd}"), out
        assert err == ""
    assert not (tmp_path / "var").exists()


def test_global_help_and_usage(tmp_path):
    rc, out, err = run("--help", cwd=tmp_path)
    assert rc == 0 and out.startswith("usage: proxyctl [--db PATH] COMMAND")
    for cmd in COMMANDS:
        assert f"\n  {cmd} " in out
    rc, out, err = run(cwd=tmp_path)
    assert rc == 2 and err.startswith("proxyctl: missing COMMAND\nusage: proxyctl [--db PATH] COMMAND")
    rc, out, err = run("frobnicate", cwd=tmp_path)
    assert rc == 2 and err.startswith("proxyctl: unknown command 'frobnicate'\nusage: proxyctl")
    rc, out, err = run("--bogus", "list-sites", cwd=tmp_path)
    assert rc == 2 and err.startswith("proxyctl: unknown option '--bogus'\n")


@pytest.mark.parametrize("args", [
    ["init", "extra"], ["init", "--global"], ["validate"], ["validate", "--global"], ["add-site"],
    ["remove-site"], ["list-sites", "x"], ["show-site"], ["show-site", "a", "b"], ["apply", "--global"],
    ["generations", "x"], ["rollback", "x"], ["dump", "x"], ["route-test"], ["reload", "x"], ["status", "x"],
    ["health", "x"],
], ids=lambda a: " ".join(a))
def test_bad_usage(store, proxyctl, db, args):
    before = state(db)
    rc, out, err = proxyctl(*args)
    assert rc == 2
    assert err.startswith(f"proxyctl: {args[0]}: "), err
    assert err.splitlines()[1].startswith(f"usage: proxyctl {args[0]}"), err
    assert state(db) == before


# ---------------------------------------------------------------- events

def test_events_record_every_change(store, proxyctl, db, tmp_path):
    def events():
        return sql(db, "SELECT command, what, generation FROM events ORDER BY id")

    assert [e[0] for e in events()] == ["init --global init-global.yaml"]
    write(tmp_path, "a.yaml", site_yaml("a", ["a.example.com"]))
    write(tmp_path, "b.yaml", site_yaml("b", ["b.example.com"]))
    write(tmp_path, "bad.yaml", "site: bad\n")
    write(tmp_path, "sites/a.yaml", site_yaml("a", ["a.example.com"]))
    write(tmp_path, "g.yaml", GLOBAL_YAML, dedent=False)
    steps = [
        (["add-site", "a.yaml"], 0, ("add-site a.yaml", "site 'a' added", 2)),
        (["add-site", "b.yaml"], 0, ("add-site b.yaml", "site 'b' added", 3)),
        (["add-site", "a.yaml"], 0, ("add-site a.yaml", "no change: generation 3 is already active", None)),
        (["add-site", "c", "--host", "a.example.com", "--upstream", "127.0.0.1:2"], 1, None),
        (["add-site", "a", "--host", "a2.example.com", "--upstream", "127.0.0.1:1"], 0,
         ("add-site a --host a2.example.com --upstream 127.0.0.1:1", "site 'a' replaced", 4)),
        (["add-site", "bad.yaml"], 1, None),
        (["remove-site", "zz"], 1, None),
        (["remove-site", "b"], 0, ("remove-site b", "site 'b' removed", 5)),
        (["add-site", "c", "--host", "c.example.com", "--upstream", "127.0.0.1:1"], 0,
         ("add-site c --host c.example.com --upstream 127.0.0.1:1", "site 'c' added", 6)),
        (["apply", "sites"], 0, ("apply sites", "applied 1 site (2 before)", 7)),
        (["rollback"], 0, ("rollback", "rollback to 6", 8)),
        (["rollback", "2"], 0, ("rollback 2", "rollback to 2", 9)),
        # the same settings as generation 2's: the same table
        (["init", "--global", "g.yaml"], 0, ("init --global g.yaml", "no change: generation 9 is already active", None)),
        (["init"], 0, None),
        (["validate", "a.yaml"], 0, None),
        (["list-sites"], 0, None),
        (["show-site", "a"], 0, None),
        (["generations"], 0, None),
        (["dump"], 0, None),
        (["route-test", "http://a.example.com/"], 0, None),
    ]
    expected = events()
    for args, want_rc, event in steps:
        rc, out, err = proxyctl(*args)
        assert rc == want_rc, (args, err)
        if event:
            expected.append(event)
        assert events() == expected, args
    # Every event's generation is the one it made active.
    for cmd, what, gen in events()[1:]:
        assert gen is not None or what.startswith("no change: generation ")
        assert gen is None or sql(db, "SELECT comment FROM generations WHERE id = ?", gen) == [(cmd,)]
