"""Safe changes (issue 18, item 4): apply prints what it adds, removes and changes
per site, --dry-run stores nothing, removing more than half of the sites needs
--force, an unchanged table makes no generation, generations prune --keep N and
the automatic keep of 50, validate names a proxy.yaml given as a site."""
import pytest

from conftest import site_yaml, sql, write  # noqa: F401


def site_text(name, port=9):
    return site_yaml(name, [f"{name}.test"]).replace("127.0.0.1:3000", f"127.0.0.1:{port}")


def site(d, name, port=9, extra=""):
    return write(d, f"{name}.yaml", site_text(name, port) + extra, dedent=False)


def gens(db):
    return sql(db, "SELECT id, active FROM generations ORDER BY id")


def test_apply_prints_per_site_changes(proxyctl, store, tmp_path):
    d = tmp_path / "sites"
    for n in ("a", "b", "c"):
        site(d, n)
    rc, out, err = proxyctl("apply", d)
    assert rc == 0, err
    assert out.splitlines()[:3] == [f"+ {n} ({d}/{n}.yaml)" for n in ("a", "b", "c")]
    assert out.splitlines()[3].startswith("applied 3 sites (0 before); generation 2 active")
    site(d, "b", port=10)
    site(d, "c", extra="compression: {gzip: true, types: [text/html]}\n")
    site(d, "d")
    write(d, "a.yaml", "# a comment\n" + site_text("a"), dedent=False)
    rc, out, err = proxyctl("apply", d)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[:4] == ["~ a: comments or layout only", "~ b: upstreams", "~ c: compression added", f"+ d ({d}/d.yaml)"]
    assert lines[4].startswith("applied 4 sites (3 before); generation 3 active")


def test_dry_run_stores_nothing(proxyctl, store, tmp_path):
    d = tmp_path / "sites"
    site(d, "a")
    before = sql(store, "SELECT count(*) FROM generations")
    rc, out, err = proxyctl("apply", "--dry-run", d)
    assert rc == 0, err
    assert out == f"+ a ({d}/a.yaml)\ndry run: valid; a new generation would be made (1 site, {out.split('site, ')[1]}"
    assert "nothing stored" in out
    assert sql(store, "SELECT count(*) FROM generations") == before
    assert sql(store, "SELECT count(*) FROM sites") == [(0,)]
    # an invalid input fails the dry run as it would fail the apply
    write(d, "bad.yaml", "site: bad\nhosts: [bad.test]\nroutes: [{match: {path_prefix: /}, upstream: nope}]\n")
    rc, out, err = proxyctl("apply", "--dry-run", d)
    assert rc == 1 and "undefined upstream 'nope'" in err


def test_refuses_to_remove_more_than_half(proxyctl, store, tmp_path):
    d = tmp_path / "sites"
    for n in ("a", "b", "c", "d"):
        site(d, n)
    assert proxyctl("apply", d)[0] == 0
    gen_before = gens(store)
    # half is allowed
    (d / "a.yaml").unlink()
    (d / "b.yaml").unlink()
    rc, out, err = proxyctl("apply", "--dry-run", d)
    assert rc == 0 and "- a\n- b\n" in out and "--force" not in out
    # three of four is refused, with the counts, and nothing changes
    (d / "c.yaml").unlink()
    rc, out, err = proxyctl("apply", d)
    assert rc == 1
    assert err == ("proxyctl: apply: refusing to remove 3 of the 4 stored sites (more than half); "
                   "check the inputs, or add --force\n")
    assert "- a\n- b\n- c\n" in out
    assert gens(store) == gen_before and sql(store, "SELECT count(*) FROM sites") == [(4,)]
    # a dry run says what the real one will need
    rc, out, err = proxyctl("apply", "--dry-run", d)
    assert rc == 0 and "the real apply needs --force" in out
    rc, out, err = proxyctl("apply", "--force", d)
    assert rc == 0, err
    assert sql(store, "SELECT name FROM sites") == [("d",)]
    # an empty directory removing the last site is more than half too
    (d / "d.yaml").unlink()
    rc, out, err = proxyctl("apply", d)
    assert rc == 1 and "refusing to remove 1 of the 1 stored sites" in err


def test_unchanged_table_makes_no_generation(proxyctl, store, tmp_path):
    d = tmp_path / "sites"
    site(d, "a")
    assert proxyctl("apply", d)[0] == 0
    before = gens(store)
    rc, out, err = proxyctl("apply", d)
    assert (rc, err) == (0, "")
    assert out == "= 1 site unchanged\nno change: generation 2 is already active\n"
    assert gens(store) == before
    # only a trailing comment changed (the table records route lines, so not a leading
    # one): the same table; the stored source is the new one
    write(d, "a.yaml", site_text("a") + "# owner: web team\n", dedent=False)
    rc, out, err = proxyctl("apply", d)
    assert rc == 0 and out.endswith("no change: generation 2 is already active\n")
    assert gens(store) == before
    assert sql(store, "SELECT yaml LIKE '%# owner: web team%' FROM sites WHERE name = 'a'") == [(1,)]
    assert sql(store, "SELECT yaml LIKE '%# owner: web team%' FROM generation_sites WHERE generation = 2") == [(1,)]
    rc, out, err = proxyctl("add-site", d / "a.yaml")
    assert rc == 0 and out == "no change: generation 2 is already active\n"
    assert gens(store) == before
    # a real change still makes one
    site(d, "a", port=10)
    rc, out, err = proxyctl("apply", d)
    assert rc == 0 and "generation 3 active" in out


def test_generations_prune(proxyctl, store, tmp_path):
    d = tmp_path / "sites"
    for port in range(10, 20):
        site(d, "a", port=port)
        assert proxyctl("apply", d)[0] == 0
    assert [g for g, _ in gens(store)] == list(range(1, 12))
    # roll back to 5: the active one is then 12, the one before it 11
    assert proxyctl("rollback", "5")[0] == 0
    rc, out, err = proxyctl("generations", "prune", "--keep", "1")
    assert (rc, err) == (0, "")
    assert out == "deleted 10 generations; 2 left\n"
    assert gens(store) == [(11, 0), (12, 1)]
    # the one rollback goes to by default survives
    rc, out, err = proxyctl("rollback")
    assert rc == 0 and "rolled back to generation 11" in out, err
    assert sql(store, "SELECT count(*) FROM generation_sites WHERE generation NOT IN (SELECT id FROM generations)") == [(0,)]
    rc, out, err = proxyctl("generations", "prune", "--keep", "5")
    assert out == "deleted 0 generations; 3 left\n"


def test_automatic_keep_of_50(proxyctl, store, tmp_path):
    d = tmp_path / "sites"
    for port in range(1000, 1055):
        site(d, "a", port=port)
        rc, out, err = proxyctl("apply", d)
        assert rc == 0, err
    ids = [g for g, _ in gens(store)]
    assert len(ids) == 50 and ids[-1] == 56 and ids[0] == 7
    assert gens(store)[-1] == (56, 1)


def test_validate_recognises_proxy_yaml(proxyctl, store, tmp_path):
    g = write(tmp_path, "conf/proxy.yaml", "workers: 2\n")
    s = site(tmp_path / "conf", "a")
    rc, out, err = proxyctl("validate", g, s)
    assert rc == 1
    assert (f"{g}: error: this is the global settings file (proxy.yaml), not a site: "
            f"use 'proxyctl validate --global {g}'") in err
    # by content too, whatever its name
    other = write(tmp_path, "conf/main.yaml", "listen: {http: ['127.0.0.1:8080']}\nlimits: {max_connections: 10}\n")
    rc, out, err = proxyctl("validate", other)
    assert rc == 1 and "this is the global settings file" in err
    assert proxyctl("validate", "--global", g, s) == (0, "1 file valid\n", "")
    assert proxyctl("validate", "--global", g) == (0, "global settings valid\n", "")
