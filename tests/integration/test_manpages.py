"""The man pages (man/*.scd, issue 18 item 2) and the README's links.

- every key of schema/site.schema.json is in proxyd-site.yaml(5) and every key of
  schema/proxy.schema.json in proxyd.yaml(5), each as a term of its own ("*routes[].timeouts.connect*")
  whose text gives its default or says it is required; so is each key SPEC §10 adds (fastcgi,
  resolve, resolver).  A key added to a schema without its documentation fails here.
- proxyctl(8) names every command of `proxyctl --help` and every option proxyctl's sources parse;
  proxyd(8) every option of proxyd/core/main.c and every signal the master handles.
- the EXAMPLES of the section-5 pages are valid input (proxyctl validate --global).
- scdoc accepts each page and man renders it without a warning (as lintian checks).
- the README links only to files inside the repository, and they exist.
"""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PROXYCTL, ROOT, run

MAN = ROOT / "man"
PAGES = sorted(MAN.glob("*.scd"))

# Keys that land with SPEC §10 in parallel with this test (FastCGI, DNS): documented already,
# and required here whether or not the schemas have them yet.
SPEC10_SITE = ["routes[].fastcgi", "routes[].fastcgi.upstream", "routes[].fastcgi.root",
               "routes[].fastcgi.index", "upstreams.NAME.resolve"]
SPEC10_PROXY = ["resolver"]


def schema_keys(schema):
    """Every key path of a JSON schema: 'a.b' for properties, 'a[].b' for list items,
    'a.NAME.b' under patternProperties/additionalProperties (a map of user-chosen names)."""
    defs = schema.get("$defs", {})
    out = []

    def walk(node, prefix, seen):
        if not isinstance(node, dict):
            return
        ref = node.get("$ref")
        if ref:
            name = ref.rsplit("/", 1)[-1]
            if name not in seen:
                walk(defs[name], prefix, seen | {name})
        for key, sub in node.get("properties", {}).items():
            path = f"{prefix}.{key}" if prefix else key
            if path not in out:
                out.append(path)
            walk(sub, path, seen)
        # a map of names to objects (upstreams, zones); a map of names to scalars
        # (headers set, cache valid) has no keys of its own below it
        for sub in node.get("patternProperties", {}).values():
            walk(sub, f"{prefix}.NAME", seen)
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{prefix}.NAME", seen)
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{prefix}[]", seen)
        for kw in ("oneOf", "anyOf", "allOf"):
            for sub in node.get(kw, []):
                walk(sub, prefix, seen)
        for kw in ("if", "then", "else"):
            walk(node.get(kw), prefix, seen)

    walk(schema, "", frozenset())
    return out


def terms(page):
    """{term: its indented text} for every '*term*' line of an scdoc page."""
    lines = Path(page).read_text().splitlines()
    out = {}
    for i, line in enumerate(lines):
        m = re.fullmatch(r"\*([^*]+)\*", line)
        if not m:
            continue
        body = []
        for nxt in lines[i + 1:]:
            if not nxt.startswith("\t") and nxt.strip():
                break
            body.append(nxt.strip())
        out[m.group(1).replace("\\_", "_")] = " ".join(body)
    return out


@pytest.mark.parametrize("schema,page,extra", [
    ("site.schema.json", "proxyd-site.yaml.5.scd", SPEC10_SITE),
    ("proxy.schema.json", "proxyd.yaml.5.scd", SPEC10_PROXY),
])
def test_every_schema_key_is_documented_with_its_default(schema, page, extra):
    keys = schema_keys(json.loads((ROOT / "schema" / schema).read_text()))
    assert len(keys) > 40, keys  # the walk found the schema's keys, not only the top level
    documented = terms(MAN / page)
    missing = [k for k in keys + extra if k not in documented]
    assert not missing, f"{page} does not document: {missing}"
    no_default = [k for k in keys + extra if not re.search(r"\b(Default|Required)\b", documented[k])]
    assert not no_default, f"{page}: no 'Default:' or 'Required' for {no_default}"


def test_the_walk_sees_nested_and_named_keys():
    keys = schema_keys(json.loads((ROOT / "schema" / "site.schema.json").read_text()))
    for k in ("routes[].timeouts.connect", "upstreams.NAME.servers[].address", "tls.hsts.max_age"):
        assert k in keys


def help_commands():
    rc, out, err = run("--help")
    assert rc == 0, err
    section = out.split("commands:", 1)[1]
    return [m.group(1) for m in re.finditer(r"^  ([a-z][a-z-]+)\s", section, re.M)]


def test_proxyctl_page_has_every_command_and_option():
    page = (MAN / "proxyctl.8.scd").read_text()
    commands = help_commands()
    assert "add-site" in commands and "route-test" in commands, commands
    missing = [c for c in commands if not re.search(rf"^\*(ha |cache |generations )?{re.escape(c)}\*", page, re.M)
               and f"*{c} " not in page]
    assert not missing, f"proxyctl.8.scd has no entry for: {missing}"
    options = set()
    for src in (ROOT / "proxyctl").glob("*.c"):
        options.update(re.findall(r'"(--[a-z][a-z-]*)"', src.read_text()))
    assert "--global" in options and "--json" in options
    undocumented = sorted(o for o in options if f"*{o}*" not in page)
    assert not undocumented, f"proxyctl.8.scd does not describe: {undocumented}"


def test_proxyd_page_has_every_option_and_signal():
    page = (MAN / "proxyd.8.scd").read_text()
    main_c = (ROOT / "proxyd" / "core" / "main.c").read_text()
    options = set(re.findall(r'"(--[a-z][a-z-]*)"', main_c))
    assert {"--db", "--check", "--foreground"} <= options
    assert not sorted(o for o in options if f"*{o}*" not in page)
    master_c = (ROOT / "proxyd" / "core" / "master.c").read_text()
    signals = set(re.findall(r"case (SIG[A-Z0-9]+):", master_c)) - {"SIGCHLD"}
    assert {"SIGHUP", "SIGTERM", "SIGUSR2"} <= signals
    assert not sorted(s for s in signals if f"*{s}*" not in page)


def example_blocks(page):
    text = (MAN / page).read_text()
    examples = text.split("# EXAMPLES", 1)[1].split("\n# ", 1)[0]
    return re.findall(r"```\n(.*?)```", examples, re.S)


def test_examples_of_the_section5_pages_are_valid(tmp_path):
    site = example_blocks("proxyd-site.yaml.5.scd")[0]
    glob = example_blocks("proxyd.yaml.5.scd")[0]
    assert site.startswith("site:") and glob.startswith("listen:")
    (tmp_path / "shop.yaml").write_text(site)
    (tmp_path / "proxy.yaml").write_text(glob)
    rc, out, err = run("--db", tmp_path / "store.db", "init", cwd=tmp_path)
    assert rc == 0, err
    rc, out, err = run("--db", tmp_path / "store.db", "validate", "--global", "proxy.yaml", "shop.yaml", cwd=tmp_path)
    assert rc == 0, out + err


@pytest.mark.parametrize("page", [p.name for p in PAGES])
def test_page_renders_without_warnings(page, tmp_path):
    if shutil.which("scdoc") is None or shutil.which("man") is None:
        pytest.fail("scdoc and man are needed (packaging/install-deps.sh installs them)")
    src = MAN / page
    p = subprocess.run(["scdoc"], stdin=src.open("rb"), capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr.decode()
    roff = tmp_path / page[:-4]
    roff.write_bytes(p.stdout)
    name, section = page[:-4].rsplit(".", 1)
    assert re.search(rf'^\.TH "{re.escape(name)}" "{section}"', p.stdout.decode(), re.M | re.I), p.stdout[:200]
    # as lintian renders it: any troff warning (a line it cannot break, a bad escape) fails
    r = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(roff)],
                       capture_output=True, timeout=30, env={"MANWIDTH": "80", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stderr == b"", r.stderr.decode()
    assert len(r.stdout) > 1000


def test_readme_links_stay_inside_the_repository():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for target in links:
        assert not re.match(r"[a-z]+:", target), f"README links outside the repository: {target}"
        path = target.split("#", 1)[0]
        if not path:
            continue
        resolved = (ROOT / path).resolve()
        assert ROOT in resolved.parents or resolved == ROOT, f"README link leaves the repository: {target}"
        assert resolved.exists(), f"README links to a missing file: {target}"
    for page in ("proxyctl.8.scd", "proxyd.8.scd", "proxyd-site.yaml.5.scd", "proxyd.yaml.5.scd"):
        assert f"(man/{page})" in text, page
