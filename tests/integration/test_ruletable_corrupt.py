"""A corrupted rule table in the store is refused, never half-used (SPEC §6:
'proxyd verifies every offset and count before using a table; a table that
fails verification is refused').  proxyctl's `dump` and `route-test` use the
same verifying reader: on a corrupted active generation they must exit 3 with
a message, print nothing on stdout, and never crash (no sanitizer report).

The corrupted variants are written into a copy of the store with
UPDATE generations SET blob = ? WHERE active = 1.

Run with: /usr/bin/python3 -m pytest -q tests/integration/test_ruletable_corrupt.py
"""
import hashlib
import random
import re
import sqlite3
import struct
import subprocess
from types import SimpleNamespace

import pytest

from conftest import EXAMPLES_GLOBAL, ROOT, init_store, run, sanitizer_report

EXAMPLES = ROOT / "examples"

# rt_header_t (common/ruletable.h): magic[8], version u32, header_size u32,
# total_size u64, body_sha256[32], section_count u32, reserved u32,
# sections[RT_SEC_COUNT] {off u32, count u32}.
OFF_VERSION, OFF_HEADER_SIZE, OFF_TOTAL, OFF_SHA, OFF_NSEC, OFF_RESERVED, OFF_SECTIONS = 8, 12, 16, 24, 56, 60, 64
NSEC = 18
HEADER_SIZE = OFF_SECTIONS + 8 * NSEC

ERROR_LINE = re.compile(r"proxyctl: \S.*\n")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    d = tmp_path_factory.mktemp("corrupt")
    sites = d / "sites"
    sites.mkdir()
    for p in EXAMPLES.glob("*.yaml"):
        if p.name != "proxy.yaml":
            (sites / p.name).write_text(p.read_text())
    orig = d / "orig.db"
    init_store(orig, d, EXAMPLES_GLOBAL)
    rc, out, err = run("--db", orig, "apply", "sites", cwd=d)
    assert rc == 0, err
    con = sqlite3.connect(str(orig))
    gid, blob = con.execute("SELECT id, blob FROM generations WHERE active = 1").fetchone()
    work = d / "work.db"
    dst = sqlite3.connect(str(work))
    con.backup(dst)
    dst.close()
    con.close()
    assert struct.unpack_from("<I", blob, OFF_HEADER_SIZE)[0] == HEADER_SIZE
    assert struct.unpack_from("<I", blob, OFF_NSEC)[0] == NSEC
    t = SimpleNamespace(dir=d, db=work, gid=gid, blob=bytes(blob))
    t.commands = [["dump"], ["route-test", "http://www.example.com/"],
                  ["route-test", "http://secure.example.com/login", "-X", "POST"],
                  ["route-test", "http://x.chat.example.com/", "--json"]]
    t.original = [probe(t, cmd) for cmd in t.commands]
    for rc, out, err in t.original:
        assert rc == 0 and out and err == ""
    return t


def probe(t, cmd):
    """Run one command against the work store: (rc, stdout, stderr), or a failure string."""
    try:
        return run("--db", t.db, *cmd, cwd=t.dir, allow_sanitizer=True, timeout=20)
    except subprocess.TimeoutExpired:
        return ("TIMEOUT", "", "")


def install(t, blob):
    con = sqlite3.connect(str(t.db))
    con.execute("UPDATE generations SET blob = ? WHERE active = 1", (blob,))
    con.commit()
    con.close()


def refused(t, blob, what):
    """Problems (as strings) if any command does not refuse the table properly."""
    install(t, blob)
    problems = []
    for cmd in t.commands:
        rc, out, err = probe(t, cmd)
        if rc == "TIMEOUT":
            problems.append(f"{what}: {cmd[0]} hangs")
        elif sanitizer_report(err):
            problems.append(f"{what}: {cmd[0]} sanitizer report:\n{err}")
        elif rc != 3 or out != "" or not ERROR_LINE.fullmatch(err):
            problems.append(f"{what}: {cmd[0]} rc={rc} stdout={out[:80]!r} stderr={err[:200]!r}")
    return problems


def reseal(blob):
    """Recompute the body checksum so only the structural checks can catch a change."""
    b = bytearray(blob)
    size = struct.unpack_from("<I", b, OFF_HEADER_SIZE)[0]
    b[OFF_SHA:OFF_SHA + 32] = hashlib.sha256(bytes(b[size:])).digest()
    return bytes(b)


def set_u32(blob, off, v):
    b = bytearray(blob)
    struct.pack_into("<I", b, off, v & 0xffffffff)
    return bytes(b)


def set_u64(blob, off, v):
    b = bytearray(blob)
    struct.pack_into("<Q", b, off, v & 0xffffffffffffffff)
    return bytes(b)


def flip(blob, off, mask=0xff):
    b = bytearray(blob)
    b[off] ^= mask
    return bytes(b)


# ---------------------------------------------------------------- the tests

def test_original_table_is_accepted(table):
    install(table, table.blob)
    for cmd, (rc, out, err) in zip(table.commands, table.original):
        assert probe(table, cmd) == (rc, out, err)
    assert table.original[0][1].startswith(f"# generation {table.gid}, {len(table.blob)} bytes\n")


def test_truncated(table):
    n = len(table.blob)
    lengths = {0, 1, 4, 7, 8, 16, 63, 64, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 1, HEADER_SIZE + 8,
               n // 2, n - 64, n - 9, n - 8, n - 7, n - 1}
    lengths |= set(range(HEADER_SIZE + 3, n, max(1, n // 40)))
    problems = []
    for length in sorted(lengths):
        problems += refused(table, table.blob[:length], f"truncated to {length}")
    assert not problems, "\n".join(problems)


def test_extended(table):
    problems = []
    for extra in (b"\0", b"\0" * 8, b"\xff" * 64):
        problems += refused(table, table.blob + extra, f"extended by {len(extra)}")
    assert not problems, "\n".join(problems)


def test_body_byte_flips(table):
    """200 sampled body bytes, each flipped, checksum left as is."""
    rnd = random.Random(20240601)
    offsets = sorted(rnd.sample(range(HEADER_SIZE, len(table.blob)), 200))
    problems = []
    for off in offsets:
        problems += refused(table, flip(table.blob, off), f"byte {off} flipped")
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def header_flips(table):
    """Every header byte flipped (all bits, and the lowest bit): the results of every command."""
    results = []
    for off in range(HEADER_SIZE):
        for mask in (0xff, 0x01):
            install(table, flip(table.blob, off, mask))
            for cmd, orig in zip(table.commands, table.original):
                results.append((off, mask, cmd, orig, probe(table, cmd)))
    return results


def test_header_byte_flips_never_crash(header_flips):
    problems = []
    for off, mask, cmd, orig, (rc, out, err) in header_flips:
        if rc == "TIMEOUT" or sanitizer_report(err):
            problems.append(f"header byte {off}^{mask:#x}: {cmd[0]} {rc} {err}")
        elif rc not in (0, 3) or (rc == 3 and (out or not ERROR_LINE.fullmatch(err))):
            problems.append(f"header byte {off}^{mask:#x}: {cmd[0]} rc={rc} out={out[:60]!r} err={err[:120]!r}")
    assert not problems, "\n".join(problems)




def test_header_byte_flips_never_give_garbage(header_flips):
    """A flipped header byte is refused, or at worst read exactly as the original."""
    problems = []
    for off, mask, cmd, orig, (rc, out, err) in header_flips:
        if rc == 0 and (rc, out, err) != orig:
            problems.append(f"header byte {off}^{mask:#x}: {' '.join(cmd)} accepted and printed something else")
    assert not problems, "\n".join(problems)


def test_header_byte_flips_refused(header_flips):
    problems = []
    for off, mask, cmd, orig, (rc, out, err) in header_flips:
        if rc != 3:
            problems.append(f"header byte {off}^{mask:#x}: {cmd[0]} rc={rc}")
    assert not problems, "\n".join(problems)


def test_header_fields(table):
    b, n = table.blob, len(table.blob)
    version = struct.unpack_from("<I", b, OFF_VERSION)[0]
    variants = {
        "magic": b"PXRTABLF" + b[8:],
        "version 0": set_u32(b, OFF_VERSION, 0),
        "the version before": set_u32(b, OFF_VERSION, version - 1),
        "the version after": set_u32(b, OFF_VERSION, version + 1),
        "version max": set_u32(b, OFF_VERSION, 0xffffffff),
        "section count 17": set_u32(b, OFF_NSEC, NSEC - 1),
        "section count 19": set_u32(b, OFF_NSEC, NSEC + 1),
        "section count 0": set_u32(b, OFF_NSEC, 0),
        "total size -8": set_u64(b, OFF_TOTAL, n - 8),
        "total size +8": set_u64(b, OFF_TOTAL, n + 8),
        "total size 0": set_u64(b, OFF_TOTAL, 0),
        "total size 2^63": set_u64(b, OFF_TOTAL, 1 << 63),
        "zero checksum": b[:OFF_SHA] + bytes(32) + b[OFF_SHA + 32:],
    }
    for v in (0, 1, 8, HEADER_SIZE - 8, HEADER_SIZE - 1, HEADER_SIZE + 1, HEADER_SIZE + 8, n, n + 8, 0xffffffff):
        variants[f"header size {v}"] = set_u32(b, OFF_HEADER_SIZE, v)
        # The same, with the checksum recomputed over what the new size calls the body.
        if v <= n:
            variants[f"header size {v} resealed"] = reseal(set_u32(b, OFF_HEADER_SIZE, v))
    problems = []
    for what, blob in variants.items():
        problems += refused(table, blob, what)
    assert not problems, "\n".join(problems)


def test_section_table(table):
    """Offsets and counts that point outside the table, are unaligned, or overflow."""
    b, n = table.blob, len(table.blob)
    problems = []
    for sec in range(NSEC):
        at = OFF_SECTIONS + 8 * sec
        off, count = struct.unpack_from("<II", b, at)
        variants = {
            "offset past end": set_u32(b, at, n + 8),
            "offset max": set_u32(b, at, 0xfffffff8),
            "offset unaligned": set_u32(b, at, off + 1),
            "offset inside header": set_u32(b, at, 8),
            "count max": set_u32(b, at + 4, 0xffffffff),
            "count huge": set_u32(b, at + 4, 0x10000000),
            "count past end": set_u32(b, at + 4, count + n),
        }
        for what, blob in variants.items():
            problems += refused(table, blob, f"section {sec} {what}")
    assert not problems, "\n".join(problems)


def test_resealed_body_flips_do_not_crash(table):
    """Body bytes flipped and the checksum recomputed: only the structural
    checks stand between the reader and the data.  The table may be refused
    (exit 3) or read (exit 0), but nothing may crash, hang or trip a sanitizer."""
    rnd = random.Random(7)
    offsets = sorted(rnd.sample(range(HEADER_SIZE, len(table.blob)), 150))
    problems = []
    for off in offsets:
        for mask in (0x80, 0xff):
            install(table, reseal(flip(table.blob, off, mask)))
            for cmd in table.commands:
                rc, out, err = probe(table, cmd)
                if rc == "TIMEOUT":
                    problems.append(f"byte {off}^{mask:#x}: {cmd[0]} hangs")
                elif sanitizer_report(err):
                    problems.append(f"byte {off}^{mask:#x}: {cmd[0]} sanitizer report:\n{err}")
                elif rc not in (0, 3) or (rc == 3 and (out or not ERROR_LINE.fullmatch(err))):
                    problems.append(f"byte {off}^{mask:#x}: {cmd[0]} rc={rc} err={err[:160]!r}")
    assert not problems, "\n".join(problems)
