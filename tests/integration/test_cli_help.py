"""proxyctl explains itself (issue 18, item 3): --help for every command and
subcommand with its options and an example, --version from VERSION, "did you
mean" for commands, options, subcommands and site names, usage errors that say
what is wrong (exit 2), an empty list-sites that says so."""
import json
import re
from pathlib import Path

import pytest

from conftest import ROOT, run, site_yaml, write  # noqa: F401

COMMANDS = ["init", "validate", "add-site", "remove-site", "list-sites", "show-site", "apply", "generations",
            "rollback", "dump", "route-test", "renew-cert", "certs", "reload", "status", "cache", "health", "ha"]
SUBCOMMANDS = [("generations", "prune"), ("cache", "stats"), ("cache", "purge"), ("ha", "init"), ("ha", "render"),
               ("ha", "notify"), ("ha", "sync")]


def test_top_level_help_lists_every_command():
    rc, out, err = run("--help")
    assert rc == 0 and err == ""
    listed = re.findall(r"^  (\S+)\s", out, re.M)
    assert listed == COMMANDS
    assert "--version" in out and "exit codes: 0 ok, 1 invalid input, 2 usage error, 3 runtime error" in out


@pytest.mark.parametrize("cmd", COMMANDS)
def test_command_help(cmd):
    rc, out, err = run(cmd, "--help")
    assert (rc, err) == (0, "")
    assert out.startswith(f"usage: proxyctl {cmd}")
    examples = re.findall(r"^  proxyctl (\S+)", out.split("\nexample")[1], re.M)
    assert examples and all(e == cmd for e in examples), out
    # every option in the usage line is explained
    usage = out.splitlines()[0]
    for opt in set(re.findall(r"(--[a-z-]+|-[A-Z])\b", usage)):
        assert re.search(rf"^  {re.escape(opt)}\b", out, re.M) or cmd in ("ha", "cache", "generations"), (opt, out)


@pytest.mark.parametrize("cmd,sub", SUBCOMMANDS)
def test_subcommand_help(cmd, sub):
    rc, out, err = run(cmd, sub, "--help")
    assert (rc, err) == (0, "")
    assert out.startswith(f"usage: proxyctl {cmd} {sub}")
    assert f"  proxyctl {cmd} {sub}" in out
    for opt in set(re.findall(r"(--[a-z-]+)", out.splitlines()[0])):
        assert re.search(rf"^  {opt}\b", out, re.M), (opt, out)


def test_version_from_the_version_file():
    want = (ROOT / "VERSION").read_text().strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+", want)
    assert run("--version") == (0, f"proxyctl {want}\n", "")
    assert run("version") == (0, f"proxyctl {want}\n", "")


def test_unknown_command_suggests():
    assert run("remove-stie") == (2, "", "proxyctl: unknown command 'remove-stie' (did you mean 'remove-site'?)\n"
                                         "usage: proxyctl [--db PATH] COMMAND [ARGS...] ('proxyctl --help' lists the commands)\n")
    rc, out, err = run("versoin")
    assert rc == 2 and "(did you mean 'version'?)" in err
    rc, out, err = run("frobnicate")
    assert rc == 2 and err.startswith("proxyctl: unknown command 'frobnicate'\n")
    rc, out, err = run("--verison")
    assert rc == 2 and err.startswith("proxyctl: unknown option '--verison' (did you mean '--version'?)\n")


def test_unknown_option_suggests(proxyctl):
    rc, out, err = proxyctl("list-sites", "--jsno")
    assert (rc, out) == (2, "")
    assert err == ("proxyctl: list-sites: unknown option '--jsno' (did you mean '--json'?)\n"
                   "usage: proxyctl list-sites [--json]\n(see 'proxyctl list-sites --help')\n")
    rc, out, err = proxyctl("apply", "--dryrun")
    assert rc == 2 and "unknown option '--dryrun' (did you mean '--dry-run'?)" in err
    rc, out, err = proxyctl("ha", "sync", "--froce")
    assert rc == 2 and err.startswith("proxyctl: ha sync: unknown option '--froce' (did you mean '--force'?)\n")
    rc, out, err = proxyctl("route-test", "http://a/", "-X")
    assert rc == 2 and err.startswith("proxyctl: route-test: option '-X' needs a value\n")


@pytest.mark.parametrize("args,message", [
    (["remove-site"], "remove-site: missing SITE"),
    (["remove-site", "a", "b"], "remove-site: unexpected argument 'b'"),
    (["show-site"], "show-site: missing SITE"),
    (["validate"], "validate: missing FILE"),
    (["add-site"], "add-site: missing FILE.yaml or NAME"),
    (["add-site", "blog", "--host", "b.test"], "add-site: missing --upstream"),
    (["route-test"], "route-test: missing URL"),
    (["route-test", "nourl"], "route-test: 'nourl' is not a URL"),
    (["rollback", "x"], "rollback: GEN must be a generation number, not 'x'"),
    (["dump", "1", "2"], "dump: unexpected argument '2'"),
    (["renew-cert"], "renew-cert: give SITE names, --all or --due"),
    (["generations", "prune"], "generations prune: missing --keep N"),
    (["generations", "prune", "--keep", "0"], "generations prune: --keep needs a number of generations, at least 1, not '0'"),
    (["cache"], "cache: missing SUBCOMMAND (stats or purge)"),
    (["cache", "purge"], "cache purge: missing SITE"),
    (["cache", "stat"], "cache: unknown subcommand 'stat' (did you mean 'stats'?)"),
    (["ha"], "ha: missing SUBCOMMAND (init, render, notify or sync)"),
    (["ha", "rendr"], "ha: unknown subcommand 'rendr' (did you mean 'render'?)"),
    (["ha", "notify"], "ha notify: missing STATE"),
    (["ha", "init", "--issue", "lb1"], "ha init: --issue NODE and --out FILE go together"),
    (["status", "extra"], "status: unexpected argument 'extra'"),
])
def test_usage_error_says_what_is_wrong(proxyctl, args, message):
    rc, out, err = proxyctl(*args)
    assert (rc, out) == (2, ""), err
    first, usage = err.splitlines()[:2]
    assert first.startswith(f"proxyctl: {message}"), err
    assert usage.startswith("usage: proxyctl "), err


def test_unknown_site_suggests(proxyctl, store, tmp_path):
    assert proxyctl("add-site", write(tmp_path, "shop.yaml", site_yaml("shop", ["shop.test"])))[0] == 0
    assert proxyctl("show-site", "shpo") == (1, "", "proxyctl: no site named 'shpo' (did you mean 'shop'?)\n")
    assert proxyctl("remove-site", "sohp") == (1, "", "proxyctl: no site named 'sohp' (did you mean 'shop'?)\n")
    assert proxyctl("show-site", "unrelated") == (1, "", "proxyctl: no site named 'unrelated'\n")
    rc, out, err = proxyctl("renew-cert", "shp")
    assert rc == 1 and err == "proxyctl: no site named 'shp' (did you mean 'shop'?)\n"
    # before asking proxyd (none runs here: that would be exit 3)
    assert proxyctl("cache", "purge", "hsop") == (1, "", "proxyctl: no site named 'hsop' (did you mean 'shop'?)\n")


def test_empty_list_sites_says_so(proxyctl, store):
    rc, out, err = proxyctl("list-sites")
    assert (rc, out) == (0, "")
    assert err.startswith("no sites in ") and "add-site" in err
    assert proxyctl("list-sites", "--json") == (0, "[]\n", "")


def test_status_when_not_running(proxyctl, store):
    rc, out, err = proxyctl("status")
    assert rc == 3 and "proxyd is not running" in err


def test_status_summary_of_a_running_proxyd(tmp_path):
    """status without --json: generation, workers, connections, upstream health,
    certificates due within 30 days, HA role; --json is proxyd's /status as it is."""
    import sqlite3
    import time
    from proxyd_fixtures import Proxyd, free_port, proxy_site, wait_for
    from conftest import sql
    dead = f"127.0.0.1:{free_port()}"
    p = Proxyd(tmp_path, sites=[proxy_site("shop", dead, hosts=["shop.test"], upstream_extra="health_check: {path: /h, interval: 1s}"),
                                 "site: tls\nhosts: [tls.test]\ntls: {certificate: self-signed}\n"
                                 "routes:\n  - match: {path_prefix: /}\n    return: {status: 204}\n"])
    try:
        p.start()
        soon = int(time.time()) + 10 * 86400
        con = sqlite3.connect(str(p.db))
        with con:
            con.execute("UPDATE certificates SET not_after = ? WHERE site = 'tls'", (soon,))
        con.close()
        assert wait_for(lambda: any(s["state"] == "down" for u in p.status()["upstreams"] for s in u["servers"]), 5)
        rc, out, err = p.proxyctl("status")
        assert (rc, err) == (0, ""), err
        lines = out.splitlines()
        assert re.fullmatch(rf"proxyd:      pid {p.pid}, up 0d00h0\dm, 0 reloads", lines[0]), out
        gen = sql(p.db, "SELECT id FROM generations WHERE active = 1")[0][0]
        assert lines[1] == f"generation:  {gen} (2 sites)"
        assert lines[2] == "workers:     2 of 2 alive"
        assert re.fullmatch(r"connections: \d+ open, \d+ requests served", lines[3])
        assert lines[4] == "upstreams:   0 of 1 server up"
        assert lines[5].startswith(f"  down: site shop, upstream app, server {dead} (health check: ")
        assert lines[6] == "certificates due within 30 days:"
        assert re.fullmatch(r"  tls: expires \d{4}-\d\d-\d\d \((9|10) days left\)", lines[7]), out
        assert lines[8] == "ha:          not in a pair (no ha block in proxy.yaml)"
        rc, out, err = p.proxyctl("status", "--json")
        assert rc == 0 and json.loads(out)["generation"] == gen
    finally:
        p.stop()


def test_dump_json(proxyctl, store, tmp_path):
    site = site_yaml("shop", ["shop.test", "*.shop.test"], body=(
        "upstreams:\n"
        "  app:\n"
        "    balance: least_conn\n"
        "    servers: [{address: \"127.0.0.1:3001\", weight: 5}, {address: \"127.0.0.1:3002\", backup: true}]\n"
        "routes:\n"
        "  - match: {path_prefix: /api/, methods: [GET, POST]}\n"
        "    upstream: app\n"
        "    strip_prefix: true\n"
        "    max_body: 1m\n"
        "    allow: [10.0.0.0/8]\n"
        "    headers: {response: {remove: [Server]}}\n"
        "  - match: {path_exact: /old}\n"
        "    redirect: {to: \"https://shop.test/new\", status: 301}\n"))
    assert proxyctl("add-site", write(tmp_path, "shop.yaml", site))[0] == 0
    rc, out, err = proxyctl("dump", "--json")
    assert (rc, err) == (0, "")
    d = json.loads(out)
    assert d["generation"] == 2 and d["bytes"] > 0
    assert d["global"]["admin_socket"] == "admin.sock" and d["global"]["workers"] == "auto"
    (s,) = d["sites"]
    assert (s["name"], s["hosts"], s["tls"]["certificate"]) == ("shop", ["shop.test", "*.shop.test"], "none")
    (up,) = s["upstreams"]
    assert up["balance"] == "least_conn"
    assert [(x["address"], x["weight"], x["backup"]) for x in up["servers"]] == [
        ("127.0.0.1:3001", 5, False), ("127.0.0.1:3002", 1, True)]
    api, old = s["routes"]
    assert api["match"] == {"path_prefix": "/api/"} and api["methods"] == ["GET", "POST"]
    assert (api["action"], api["upstream"], api["strip_prefix"]) == ("upstream", "app", True)
    assert api["policy"]["max_body"] == 1 << 20 and api["policy"]["allow"] == ["10.0.0.0/8"]
    assert api["headers"] == [{"direction": "response", "op": "remove", "name": "Server"}]
    assert old["redirect"] == {"status": 301, "to": "https://shop.test/new"}
    # an older generation by number; the text form still the default
    rc, out, err = proxyctl("dump", "--json", "1")
    assert rc == 0 and json.loads(out)["generation"] == 1 and json.loads(out)["sites"] == []
    assert proxyctl("dump")[1].startswith("# generation 2, ")
