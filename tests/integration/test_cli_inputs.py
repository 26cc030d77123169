"""proxyctl input hygiene (issue 17, item 4): only regular files are read as YAML
(a FIFO used to hang proxyctl), and a NUL byte in YAML is an error at its
position (libyaml used to stop there and the rest of the file was dropped).

Every run has a short timeout, so a command that blocks fails the test.
"""
import os

import pytest

from conftest import run, state, write

T = 20  # seconds; these commands take well under one


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    return path


def refused(db, tmp_path, args, path, msg="error: not a regular file"):
    before = state(db)
    rc, out, err = run("--db", db, *args, cwd=tmp_path, timeout=T)
    assert rc == 1, (args, out, err)
    assert f"{path}: {msg}\n" in err, (args, err)
    assert out == ""
    assert state(db) == before


@pytest.mark.parametrize("form", [
    ["validate", "{p}"],
    ["validate", "--global", "{p}", "site.yaml"],
    ["add-site", "{p}"],
    ["apply", "{p}"],
    ["apply", "--global", "{p}", "sites"],
    ["init", "--global", "{p}"],
])
def test_fifo_refused(store, tmp_path, fifo, form):
    write(tmp_path, "site.yaml", "site: a\nhosts: [a.test]\nroutes:\n  - return: {status: 204}\n")
    write(tmp_path, "sites/a.yaml", "site: a\nhosts: [a.test]\nroutes:\n  - return: {status: 204}\n")
    refused(store, tmp_path, [a.format(p=fifo.name) for a in form], fifo.name)


def test_fifo_in_an_applied_directory_refused(store, tmp_path):
    write(tmp_path, "sites/a.yaml", "site: a\nhosts: [a.test]\nroutes:\n  - return: {status: 204}\n")
    os.mkfifo(tmp_path / "sites" / "b.yaml")
    refused(store, tmp_path, ["apply", "sites"], "sites/b.yaml")
    # A FIFO as the directory's proxy.yaml too.
    os.unlink(tmp_path / "sites" / "b.yaml")
    os.mkfifo(tmp_path / "sites" / "proxy.yaml")
    refused(store, tmp_path, ["apply", "sites"], "sites/proxy.yaml")


@pytest.mark.parametrize("form", [
    ["validate", "{p}"],
    ["add-site", "{p}"],
    ["init", "--global", "{p}"],
    ["apply", "--global", "{p}", "sites"],
])
def test_directory_refused(store, tmp_path, form):
    (tmp_path / "adir").mkdir()
    write(tmp_path, "sites/a.yaml", "site: a\nhosts: [a.test]\nroutes:\n  - return: {status: 204}\n")
    refused(store, tmp_path, [a.format(p="adir") for a in form], "adir")


@pytest.mark.parametrize("form", [["validate", "{p}"], ["add-site", "{p}"], ["init", "--global", "{p}"]])
def test_device_refused(store, tmp_path, form):
    refused(store, tmp_path, [a.format(p="/dev/zero") for a in form], "/dev/zero")
    refused(store, tmp_path, [a.format(p="/dev/null") for a in form], "/dev/null")


def write_bytes(tmp_path, name, data):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


NUL_SITE = b"site: n\nhosts: [n.test]\nroutes:\n  - return: {status: 204}\x00\n  - return: {status: 500}\n"


@pytest.mark.parametrize("form", [["validate", "n.yaml"], ["add-site", "n.yaml"], ["apply", "n.yaml"]])
def test_nul_byte_refused_at_its_position(store, tmp_path, form):
    write_bytes(tmp_path, "n.yaml", NUL_SITE)
    refused(store, tmp_path, form, "n.yaml:4:26", "error: NUL byte in YAML")


def test_nul_byte_column_counts_characters(store, tmp_path):
    write_bytes(tmp_path, "u.yaml", "site: u\n# héllo wörld \x00\n".encode())
    refused(store, tmp_path, ["validate", "u.yaml"], "u.yaml:2:15", "error: NUL byte in YAML")
    write_bytes(tmp_path, "g.yaml", b"\x00workers: 2\n")
    refused(store, tmp_path, ["init", "--global", "g.yaml"], "g.yaml:1:1", "error: NUL byte in YAML")
    write_bytes(tmp_path, "sites/a.yaml", b"site: a\nhosts: [a.test]\nroutes:\n  - return: {status: 204}\n")
    write_bytes(tmp_path, "sites/proxy.yaml", b"workers: 2\n\x00")
    refused(store, tmp_path, ["apply", "sites"], "sites/proxy.yaml:2:1", "error: NUL byte in YAML")


def test_regular_files_still_read(store, tmp_path):
    write(tmp_path, "ok.yaml", "site: ok\nhosts: [ok.test]\nroutes:\n  - return: {status: 204}\n")
    os.symlink("ok.yaml", tmp_path / "link.yaml")   # a symlink to a regular file is fine
    rc, out, err = run("--db", store, "validate", "link.yaml", cwd=tmp_path, timeout=T)
    assert rc == 0, err
    assert out == "1 file valid\n"
    rc, out, err = run("--db", store, "add-site", "link.yaml", cwd=tmp_path, timeout=T)
    assert rc == 0, err
