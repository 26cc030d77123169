"""Shared fixtures for the proxyctl integration tests.

The binary under test is $PROXYCTL (default: the ASan+UBSan build,
build/asan/proxyctl).  Every test works on its own store under tmp_path,
passed with --db, and runs proxyctl with tmp_path as the working directory
so nothing ever touches ./var of the repository.

Helpers:
  run(*args, cwd=None, input=None, env=None, raw=False)  -> (rc, stdout, stderr)
      proxyctl with exactly these arguments (no --db added).
  proxyctl fixture: proxyctl(*args, cwd=None, input=None) -> (rc, stdout, stderr)
      proxyctl --db <tmp_path>/store.db ARGS, cwd defaults to tmp_path.
  store fixture: the path of an initialised store (generation 1 active,
      global settings GLOBAL_YAML: a private admin socket).
  write(tmp_path, name, text) -> Path
  sql(db, query, *params) -> list of rows (python sqlite3, connection closed)

Every run is checked for sanitizer reports: a report fails the test unless
the caller passes allow_sanitizer=True.
"""
import os
import sqlite3
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROXYCTL = os.environ.get("PROXYCTL", str(ROOT / "build" / "asan" / "proxyctl"))
# The non-sanitized build, used only to set up a store when the binary under
# test cannot (see init_store).
PROXYCTL_PLAIN = os.environ.get("PROXYCTL_PLAIN", str(ROOT / "bin" / "proxyctl"))
TIMEOUT = 60

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "SUMMARY: UndefinedBehaviorSanitizer", "SUMMARY: AddressSanitizer")


def _is_sanitized(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    return b"__asan_init" in data or b"__ubsan_handle" in data


SANITIZED = _is_sanitized(PROXYCTL)

# Global settings every fixture store starts with: a private admin socket
# (relative, so it resolves inside tmp_path, never /run/proxyd).
GLOBAL_YAML = """\
admin: {socket: admin.sock}
"""

# GLOBAL_YAML with the rate-limit and cache zones the examples/ sites name (they
# are in examples/proxy.yaml), for the tests that compile every example.  The
# cache zone's path is relative: beside the store, inside tmp_path.
EXAMPLES_GLOBAL = GLOBAL_YAML + """\
rate_limit_zones:
  api: {rate: 10r/s, key: client_ip}
  login: {rate: 6r/m}
  partners: {rate: 600r/m, key: "header:X-Api-Key"}
cache_zones:
  news: {path: cache/news}
"""


def sanitizer_report(text):
    return any(m in text for m in SANITIZER_MARKS)


def run(*args, cwd=None, input=None, env=None, raw=False, allow_sanitizer=False, timeout=TIMEOUT):
    """Run proxyctl ARGS; return (rc, stdout, stderr)."""
    full_env = dict(os.environ)
    full_env.pop("PROXYD_DB", None)
    full_env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    if env:
        full_env.update(env)
    if isinstance(input, str):
        input = input.encode()
    p = subprocess.run([PROXYCTL, *map(str, args)], cwd=str(cwd) if cwd else None, input=input,
                       capture_output=True, env=full_env, timeout=timeout)
    out, err = p.stdout, p.stderr
    err_text = err.decode("utf-8", "replace")
    if not allow_sanitizer and sanitizer_report(err_text):
        pytest.fail(f"sanitizer report from proxyctl {' '.join(map(str, args))}:\n{err_text}")
    if raw:
        return p.returncode, out, err
    return p.returncode, out.decode("utf-8", "replace"), err_text


def write(tmp_path, name, text, dedent=True):
    """Write text (dedented) to tmp_path/name, creating parent directories."""
    path = Path(tmp_path) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if dedent:
        text = textwrap.dedent(text)
        if text.startswith("\n"):
            text = text[1:]
    path.write_text(text)
    return path


def sql(db, query, *params):
    con = sqlite3.connect(str(db), timeout=30)
    try:
        return con.execute(query, params).fetchall()
    finally:
        con.close()


def init_store(db, cwd, global_text=GLOBAL_YAML):
    """Initialise a store with global settings; returns the stdout of init.

    Uses the binary under test.
    """
    cwd = Path(cwd)
    g = cwd / "init-global.yaml"
    g.write_text(global_text)
    rc, out, err = run("--db", db, "init", "--global", g.name, cwd=cwd)
    assert rc == 0, f"init failed ({rc}):\n{out}\n{err}"
    return out


@pytest.fixture
def db(tmp_path):
    return tmp_path / "store.db"


@pytest.fixture
def proxyctl(tmp_path, db):
    def _run(*args, cwd=None, input=None, **kw):
        return run("--db", db, *args, cwd=cwd or tmp_path, input=input, **kw)
    return _run


@pytest.fixture
def store(tmp_path, db):
    init_store(db, tmp_path)
    return db


def site_yaml(name, hosts, body=None, default=False):
    """A small valid site: every path answered by upstream app."""
    hl = ", ".join(f'"{h}"' for h in hosts)
    text = f"site: {name}\n"
    if default:
        text += "default: true\n"
    if hosts:
        text += f"hosts: [{hl}]\n"
    text += body if body is not None else (
        "upstreams:\n"
        "  app:\n"
        "    servers: [{address: \"127.0.0.1:3000\"}]\n"
        "routes:\n"
        "  - match: {path_prefix: /}\n"
        "    upstream: app\n")
    return text


def state(db):
    """Everything a failed command must leave unchanged."""
    return {
        "generations": sql(db, "SELECT id, digest, active FROM generations ORDER BY id"),
        "sites": sql(db, "SELECT name, digest, source FROM sites ORDER BY name"),
        "settings": sql(db, "SELECT key, value FROM settings ORDER BY key"),
        "events": sql(db, "SELECT count(*) FROM events")[0][0],
    }


def active_generation(db):
    rows = sql(db, "SELECT id, blob, digest FROM generations WHERE active = 1")
    assert len(rows) == 1, rows
    return rows[0]
