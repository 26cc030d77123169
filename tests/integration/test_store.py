"""The store under concurrency and crashes, and reproducible rule tables
(SPEC §4 'Compiling the same inputs twice yields byte-identical rule tables',
§5 'every change one transaction; a crash at any point leaves the previous
active generation intact').

Run with: /usr/bin/python3 -m pytest -q tests/integration/test_store.py
"""
import hashlib
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import EXAMPLES_GLOBAL, PROXYCTL, ROOT, TIMEOUT, active_generation, init_store, run, sanitizer_report, site_yaml, sql

EXAMPLES = ROOT / "examples"


def popen(db, *args, cwd):
    env = dict(os.environ)
    env.pop("PROXYD_DB", None)
    return subprocess.Popen([PROXYCTL, "--db", str(db), *map(str, args)], cwd=str(cwd),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def integrity(db):
    assert sql(db, "PRAGMA integrity_check") == [("ok",)]
    assert sql(db, "PRAGMA foreign_key_check") == []


def one_active(db):
    rows = sql(db, "SELECT id FROM generations WHERE active = 1")
    assert len(rows) == 1, rows
    return rows[0][0]


# ---------------------------------------------------------------- (a) parallel writers

def test_parallel_add_site(store, tmp_path):
    db = store
    n = 8
    for i in range(n):
        (tmp_path / f"s{i}.yaml").write_text(site_yaml(f"s{i}", [f"s{i}.example.com", f"*.s{i}.example.org"]))
    procs = [popen(db, "add-site", f"s{i}.yaml", cwd=tmp_path) for i in range(n)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=TIMEOUT)
        results.append((p.returncode, out.decode(), err.decode()))
    for rc, out, err in results:
        assert rc == 0, err
        assert not sanitizer_report(err), err
        assert err == ""
    assert sorted(r[1].split("'")[1] for r in results) == sorted(f"s{i}" for i in range(n))

    rc, out, err = run("--db", db, "list-sites", "--json", cwd=tmp_path)
    assert rc == 0
    import json
    assert sorted(s["name"] for s in json.loads(out)) == sorted(f"s{i}" for i in range(n))

    active = one_active(db)
    assert active == 1 + n
    rc, out, err = run("--db", db, "dump", cwd=tmp_path)
    assert rc == 0, err
    for i in range(n):
        assert f"site s{i} (s{i}.yaml)\n  hosts: s{i}.example.com *.s{i}.example.org\n" in out
    integrity(db)
    # No lost update: every change saw all the ones before it.
    counts = sql(db, "SELECT g.id, (SELECT count(*) FROM generation_sites s WHERE s.generation = g.id) "
                     "FROM generations g ORDER BY g.id")
    assert counts == [(i + 1, i) for i in range(n + 1)]
    events = sql(db, "SELECT command, generation FROM events WHERE command LIKE 'add-site %' ORDER BY id")
    assert len(events) == n
    assert sorted(e[0] for e in events) == sorted(f"add-site s{i}.yaml" for i in range(n))
    assert [e[1] for e in events] == list(range(2, n + 2))
    for i in range(n):
        rc, out, _ = run("--db", db, "route-test", f"http://x.s{i}.example.org/", cwd=tmp_path)
        assert rc == 0 and f"site: s{i} (s{i}.yaml)" in out


def test_readers_during_writes(store, tmp_path):
    """Readers are never blocked or shown a half-written generation (WAL)."""
    db = store
    n = 6
    for i in range(n):
        (tmp_path / f"w{i}.yaml").write_text(site_yaml(f"w{i}", [f"w{i}.example.com"]))
    writers = [popen(db, "add-site", f"w{i}.yaml", cwd=tmp_path) for i in range(n)]
    readers = []
    deadline = time.time() + TIMEOUT
    while any(w.poll() is None for w in writers) and time.time() < deadline:
        readers.append(popen(db, "dump", cwd=tmp_path))
        readers.append(popen(db, "route-test", "http://w0.example.com/", cwd=tmp_path))
        readers.append(popen(db, "list-sites", cwd=tmp_path))
        time.sleep(0.05)
    for p in writers + readers:
        out, err = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, (p.args, err.decode())
        assert not sanitizer_report(err.decode())
    assert one_active(db) == 1 + n
    integrity(db)


# ---------------------------------------------------------------- (b) kill -9 during apply

BIG = 3000


def write_big_dir(d):
    d.mkdir()
    for i in range(BIG):
        (d / f"site{i:04d}.yaml").write_text(
            f"site: s{i}\n"
            f"hosts: [s{i}.example.com, \"*.w{i}.example.com\"]\n"
            f"upstreams:\n  app: {{servers: [\"127.0.0.1:{3000 + i % 1000}\"]}}\n"
            f"routes:\n"
            f"  - match: {{path_prefix: /api/}}\n    upstream: app\n    strip_prefix: true\n"
            f"  - match: {{path_exact: /ping}}\n    return: {{status: 200}}\n"
            f"  - match: {{path_prefix: /}}\n    upstream: app\n")


def write_small_dir(d):
    d.mkdir()
    for i in range(10):
        (d / f"small{i}.yaml").write_text(site_yaml(f"small{i}", [f"small{i}.example.com"]))


def test_kill_during_apply(tmp_path):
    write_big_dir(tmp_path / "big")
    write_small_dir(tmp_path / "small")
    # Reference: what a completed `apply big` produces (byte-identical by §4).
    ref = tmp_path / "ref.db"
    init_store(ref, tmp_path, EXAMPLES_GLOBAL)
    t0 = time.time()
    rc, out, err = run("--db", ref, "apply", "big", cwd=tmp_path)
    full = time.time() - t0
    assert rc == 0, err
    new_blob = active_generation(ref)[1]
    new_digest = hashlib.sha256(new_blob).hexdigest()

    db = tmp_path / "store.db"
    init_store(db, tmp_path, EXAMPLES_GLOBAL)
    # A few early kills (reading and compiling), then dense around the end,
    # where the transaction writes and commits.
    delays = sorted({0.02, 0.1} | {round(full * f, 3) for f in (0.3, 0.5, 0.65, 0.75, 0.82, 0.88, 0.94, 1.05)})
    outcomes = []
    for delay in delays:
        # Start each round from the small state.
        if len(sql(db, "SELECT name FROM sites")) != 10:
            rc, _, err = run("--db", db, "apply", "small", cwd=tmp_path)
            assert rc == 0, err
        prev_id, prev_blob, prev_digest = active_generation(db)
        prev_count = sql(db, "SELECT count(*) FROM generations")[0][0]
        p = popen(db, "apply", "big", cwd=tmp_path)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        out, err = p.communicate(timeout=TIMEOUT)
        assert not sanitizer_report(err.decode())

        integrity(db)
        gid, blob, digest = active_generation(db)
        count = sql(db, "SELECT count(*) FROM generations")[0][0]
        sites = sql(db, "SELECT count(*) FROM sites")[0][0]
        if gid == prev_id:
            outcomes.append("previous")
            assert blob == prev_blob and digest == prev_digest
            assert count == prev_count
            assert sites == 10
        else:
            outcomes.append("new")
            assert gid == prev_id + 1 and count == prev_count + 1
            assert blob == new_blob and digest == new_digest
            assert sites == BIG
            assert sql(db, "SELECT count(*) FROM generation_sites WHERE generation = ?", gid) == [(BIG,)]
            assert sql(db, "SELECT count(*) FROM events WHERE generation = ?", gid) == [(1,)]
        # The surviving generation is readable by the tools.
        rc, out, err = run("--db", db, "dump", cwd=tmp_path)
        assert rc == 0, err
        assert out.startswith(f"# generation {gid}, {len(blob)} bytes\n")
        host = "x.w17.example.com" if outcomes[-1] == "new" else "small3.example.com"
        rc, out, err = run("--db", db, "route-test", f"http://{host}/ping", cwd=tmp_path)
        assert rc == 0, err
        assert "site: none" not in out
        # And the store still takes changes.
        rc, _, err = run("--db", db, "apply", "small", cwd=tmp_path)
        assert rc == 0, err
    print("kill outcomes:", list(zip(delays, outcomes)))
    assert "previous" in outcomes, "no kill landed before the commit; the test proved nothing"


# ---------------------------------------------------------------- (c) byte-identical tables

def make_sites_dir(d, reverse=False, seed=None):
    """Examples plus generated sites; written in a chosen order."""
    files = {}
    for p in sorted(EXAMPLES.glob("*.yaml")):
        if p.name != "proxy.yaml":
            files[p.name] = p.read_text()
    for i in range(40):
        files[f"gen-{i:02d}.yaml"] = (
            f"site: gen{i}\n"
            f"hosts: [gen{i}.example.net, \"*.gen{i}.example.net\"]\n"
            "upstreams:\n"
            f"  a: {{balance: least_conn, servers: [\"10.0.{i}.1:80\", {{address: \"10.0.{i}.2:80\", weight: 3}}]}}\n"
            "  b: {servers: [\"unix:/run/b.sock\"]}\n"
            "routes:\n"
            "  - match: {path_regex: '\\.php$'}\n    return: {status: 404}\n"
            f"  - match: {{path_exact: /x{i}}}\n    upstream: b\n"
            "  - match: {path_prefix: /api/, methods: [GET]}\n    upstream: a\n"
            f"    allow: [10.{i}.0.0/16]\n    timeouts: {{read: {i + 1}s}}\n"
            "  - match: {path_prefix: /}\n    upstream: a\n")
    names = sorted(files)
    if reverse:
        names.reverse()
    if seed is not None:
        random.Random(seed).shuffle(names)
    d.mkdir(parents=True)
    for n in names:
        (d / n).write_text(files[n])
    return files


def test_same_inputs_same_table(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_sites_dir(a / "sites")
    make_sites_dir(b / "sites", reverse=True)
    (b / "sites" / "notes.txt").write_text("ignored\n")
    dba, dbb = a / "store.db", b / "store.db"
    init_store(dba, a, EXAMPLES_GLOBAL)
    init_store(dbb, b, EXAMPLES_GLOBAL)
    assert run("--db", dba, "apply", "sites", cwd=a)[0] == 0
    assert run("--db", dbb, "apply", "sites", cwd=b)[0] == 0
    ga, blob_a, dig_a = active_generation(dba)
    gb, blob_b, dig_b = active_generation(dbb)
    assert blob_a == blob_b
    assert dig_a == dig_b == hashlib.sha256(blob_a).hexdigest()
    # Twice into one store: compiled again to the same bytes (the digest of the
    # new table is the active one's), so no new generation.
    rc, out, err = run("--db", dba, "apply", "sites", cwd=a)
    assert rc == 0 and out.endswith(f"no change: generation {ga} is already active\n"), (out, err)
    g2, blob_a2, dig_a2 = active_generation(dba)
    assert g2 == ga
    assert blob_a2 == blob_a and dig_a2 == dig_a
    # The initial empty generations agree too.
    assert sql(dba, "SELECT blob FROM generations WHERE id = 1") == sql(dbb, "SELECT blob FROM generations WHERE id = 1")


def test_table_independent_of_change_order(tmp_path):
    """Adding the same sites one by one, in any order, ends in the table apply makes."""
    a, c = tmp_path / "a", tmp_path / "c"
    files = make_sites_dir(a / "sites")
    make_sites_dir(c / "sites", seed=7)
    dba, dbc = a / "store.db", c / "store.db"
    init_store(dba, a, EXAMPLES_GLOBAL)
    init_store(dbc, c, EXAMPLES_GLOBAL)
    assert run("--db", dba, "apply", "sites", cwd=a)[0] == 0
    order = sorted(files)
    random.Random(11).shuffle(order)
    for name in order:
        rc, _, err = run("--db", dbc, "add-site", f"sites/{name}", cwd=c)
        assert rc == 0, (name, err)
    assert active_generation(dbc)[1] == active_generation(dba)[1]
