"""`pmxcfs-admin diff` on damaged databases: it reports the damage and compares what it can read.

Each case damages a copy of the reference fixture in one way and diffs it against the intact
fixture: the damage must be named, the intact part compared (no spurious differences), and the
exit code must say both "damaged" (+8) and whether what could be read differs (+1).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import apsw
import pytest

from pmxcfs.admin import diff, salvage
from tests.unit.test_admin import FIXTURE, admin, sql

pytestmark = pytest.mark.skipif(not FIXTURE.exists(), reason="fixture database missing")
DAMAGED = 8


@pytest.fixture
def db(tmp_path: Path) -> Path:
    target = tmp_path / "config.db"
    shutil.copyfile(FIXTURE, target)
    target.chmod(0o600)
    return target


def diff_json(a: Path, b: Path) -> tuple[int, dict[str, Any]]:
    res = admin("diff", "--json", a, b)
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, json.loads(res.stdout)


def pages(path: Path) -> list[tuple[str, int, str, int]]:
    """(table, page number, page type, cells) of every b-tree page, from SQLite's dbstat."""
    con = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return list(con.execute("SELECT name, pageno, pagetype, ncell FROM dbstat"))
    finally:
        con.close()


def smash(path: Path, pgno: int, seed: int = 1) -> None:
    """Overwrite most of one page with random bytes (the header of page 1 stays)."""
    size = 4096
    start = (pgno - 1) * size + (100 if pgno == 1 else 0)
    rnd = random.Random(seed)
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(bytes(rnd.randrange(256) for _ in range(3000)))


def kinds(side: dict[str, Any]) -> set[str]:
    return {d["kind"] for d in side["damage"]}


def test_clean_databases_are_not_damaged() -> None:
    rc, out = diff_json(FIXTURE, FIXTURE)
    assert rc == 0
    assert out["compared"] and out["differences"] == []
    for side in ("db1", "db2"):
        assert out[side]["damage"] == [] and out[side]["loads"] and out[side]["entries"] == 65


def test_corrupt_leaf_page_loses_only_its_rows(db: Path) -> None:
    leaves = [(p, n) for t, p, kind, n in pages(db) if t == "tree" and kind == "leaf"]
    pgno, cells = leaves[1]
    smash(db, pgno)
    rc, out = diff_json(FIXTURE, db)
    assert rc == DAMAGED | 1
    side = out["db2"]
    assert side["read_by"] == "pages" and not side["loads"] and "corrupt" in side["refusals"]
    [lost] = side["unreadable"]
    assert lost["page"] == pgno
    removed = [d for d in out["differences"] if d["change"] == "removed"]
    assert len(out["differences"]) == len(removed) == cells
    assert all("DB2 has unreadable rows" in d["doubt"] for d in removed)
    assert side["entries"] == 65 - cells
    text = admin("diff", FIXTURE, db)
    assert text.returncode == DAMAGED | 1
    assert f"page {pgno}: not a b-tree page" in text.stdout
    assert "the daemon would refuse to load it (corrupt)" in text.stdout


def test_rows_with_overflow_pages_are_read_from_the_pages(tmp_path: Path, db: Path) -> None:
    """A file bigger than a page continues on overflow pages; the page reader follows them."""
    big = os.urandom(20000)
    sql(db, "UPDATE tree SET version = 700 WHERE inode = 0")
    con = sqlite3.connect(db)
    con.execute("INSERT INTO tree VALUES (700, 0, 700, 0, 1, 8, 'big.cfg', ?)", (big,))
    con.commit()
    con.close()
    damaged = tmp_path / "damaged.db"
    shutil.copyfile(db, damaged)
    leaves = [p for t, p, kind, _ in pages(db) if t == "tree" and kind == "leaf"]
    smash(damaged, leaves[1])  # VM configs only: no directory is lost with it
    rc, out = diff_json(db, damaged)
    assert out["db2"]["read_by"] == "pages"
    assert rc == DAMAGED | 1
    assert "big.cfg" not in {d["path"] for d in out["differences"]}
    assert all(d["change"] == "removed" and d["doubt"] for d in out["differences"])
    got = {r.inode: r for r in salvage.read_db(str(damaged)).rows}
    assert got[700].data == big


@pytest.mark.parametrize("which", ["root of tree", "schema page"])
def test_corrupt_interior_or_schema_page_recovers_every_leaf(db: Path, which: str) -> None:
    if which == "root of tree":
        pgno = next(p for t, p, kind, _ in pages(db) if t == "tree" and kind == "internal")
    else:
        pgno = 1
    smash(db, pgno)
    rc, out = diff_json(FIXTURE, db)
    assert rc == DAMAGED, out
    assert out["compared"] and out["differences"] == []
    assert {"corrupt", "recovered"} <= kinds(out["db2"])
    assert out["db2"]["entries"] == 65 and out["db2"]["version"] == 139


def test_committed_wal_frames_are_read_over_a_corrupt_main_file(tmp_path: Path, db: Path) -> None:
    """A crashed daemon leaves its last writes in -wal; the page reader must apply them."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("UPDATE tree SET data = x'cafe', version = 140 WHERE inode = 2")
    con.execute("UPDATE tree SET version = 140 WHERE inode = 0")
    copy = tmp_path / "copy" / "config.db"
    copy.parent.mkdir()
    shutil.copyfile(db, copy)
    shutil.copyfile(f"{db}-wal", f"{copy}-wal")
    con.close()  # checkpoints: `db` is the intact new state
    assert os.path.getsize(f"{copy}-wal") > 0
    leaves = [p for t, p, kind, _ in pages(db) if t == "tree" and kind == "leaf"]
    smash(copy, leaves[-1])
    rc, out = diff_json(db, copy)
    assert out["db2"]["read_by"] == "pages"
    assert out["db2"]["version"] == 140
    changed = {d["path"] for d in out["differences"]}
    assert "storage.cfg" not in changed  # the new content came from the -wal
    assert all(d["change"] == "removed" and d["doubt"] for d in out["differences"])
    assert rc == DAMAGED | 1


def test_missing_version_row(db: Path) -> None:
    sql(db, "DELETE FROM tree WHERE inode = 0")
    rc, out = diff_json(FIXTURE, db)
    assert rc == DAMAGED
    assert kinds(out["db2"]) == {"version-missing"}
    assert out["db2"]["loads"] and out["db2"]["version"] is None
    assert out["differences"] == []
    text = admin("diff", FIXTURE, db).stdout
    assert "the daemon would still load it" in text
    assert "no differences in what could be read (versions 139 and none)" in text


def test_orphan_is_compared_below_its_missing_parent(db: Path) -> None:
    sql(db, "UPDATE tree SET parent = 9999 WHERE inode = 51")
    rc, out = diff_json(FIXTURE, db)
    assert rc == DAMAGED | 1
    assert kinds(out["db2"]) == {"orphan"} and out["db2"]["refusals"] == ["orphan"]
    changes = {d["path"]: d["change"] for d in out["differences"]}
    assert changes == {"ha/resources.cfg": "removed", "<missing 9999>/resources.cfg": "added"}
    doubts = {d["path"]: d.get("doubt") for d in out["differences"]}
    assert doubts["ha/resources.cfg"] == "DB2 has inode 51 at <missing 9999>/resources.cfg"
    assert doubts["<missing 9999>/resources.cfg"] == "DB1 has inode 51 at ha/resources.cfg"


def test_duplicate_names_are_both_compared(db: Path) -> None:
    sql(
        db,
        "UPDATE tree SET version = 1000 WHERE inode = 0",
        "INSERT INTO tree VALUES (600, 21, 600, 0, 1, 8, 'resources.cfg', x'00ff')",
    )
    rc, out = diff_json(FIXTURE, db)
    assert rc == DAMAGED | 1
    assert kinds(out["db2"]) == {"duplicate-name"}
    assert [(d["path"], d["change"]) for d in out["differences"]] == [
        ("ha/resources.cfg [inode 600]", "added")
    ]
    # The same damage on both sides compares equal.
    rc, out = diff_json(db, db)
    assert rc == DAMAGED and out["differences"] == []


def test_non_utf8_name_is_shown_escaped(db: Path) -> None:
    sql(db, "UPDATE tree SET name = CAST(x'ff41' AS TEXT) WHERE inode = 4")
    rc, out = diff_json(FIXTURE, db)
    assert rc == DAMAGED | 1
    assert kinds(out["db2"]) == {"bad-name"}
    changes = {d["path"]: d["change"] for d in out["differences"]}
    assert changes == {"datacenter.cfg": "removed", "\\xffA": "added"}


def test_extra_tables_beside_tree_are_reported_and_tree_compared(db: Path) -> None:
    sql(db, "CREATE TABLE extra(a, b)", "INSERT INTO extra VALUES (1, 2)")
    rc, out = diff_json(db, FIXTURE)
    assert rc == DAMAGED
    assert kinds(out["db1"]) == {"schema"} and out["db1"]["loads"]
    assert out["compared"] and out["differences"] == []


def test_foreign_sqlite_file_is_not_compared(tmp_path: Path) -> None:
    other = tmp_path / "places.sqlite"
    sql(
        other,
        "CREATE TABLE moz_places(id INTEGER PRIMARY KEY, url TEXT)",
        "INSERT INTO moz_places VALUES (1, 'https://example.org/')",
        "CREATE TABLE moz_bookmarks(id INTEGER PRIMARY KEY, fk INTEGER)",
    )
    rc, out = diff_json(FIXTURE, other)
    assert rc == DAMAGED
    assert not out["compared"] and out["differences"] == []
    assert not out["db2"]["readable"] and not out["db2"]["loads"]
    messages = [d["message"] for d in out["db2"]["damage"]]
    assert "no 'tree' table: not a pmxcfs database" in messages
    assert "unexpected table 'moz_places'" in messages
    text = admin("diff", FIXTURE, other)
    assert text.stdout.splitlines()[-1] == "nothing compared: nothing readable in DB2"


@pytest.mark.parametrize("content", [b"", b"hello, this is not a database\n" * 300, b"random"])
def test_non_sqlite_file(tmp_path: Path, content: bytes) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(20000) if content == b"random" else content)
    rc, out = diff_json(junk, FIXTURE)
    assert rc == DAMAGED
    assert not out["compared"] and not out["db1"]["readable"]
    assert out["db1"]["damage"], out
    text = admin("diff", junk, FIXTURE)
    assert text.returncode == DAMAGED and "Traceback" not in text.stderr
    assert text.stdout.startswith("! DB1 ")


def test_both_sides_damaged_and_json_names_every_problem(tmp_path: Path, db: Path) -> None:
    other = tmp_path / "other.db"
    shutil.copyfile(FIXTURE, other)
    sql(db, "UPDATE tree SET parent = 9999 WHERE inode = 51", "DELETE FROM tree WHERE inode = 0")
    smash(other, next(p for t, p, k, _ in pages(other) if t == "tree" and k == "internal"))
    rc, out = diff_json(db, other)
    assert rc == DAMAGED | 1
    assert kinds(out["db1"]) == {"orphan", "version-missing"}
    assert {"corrupt", "recovered"} <= kinds(out["db2"])
    text = admin("diff", db, other).stdout.splitlines()
    assert any(line.startswith("! DB1 orphan: ") for line in text)
    assert any(line.startswith("! DB2 corrupt: ") for line in text)
    assert any("DB1" in line and "is damaged" in line for line in text)


def test_missing_file_is_still_a_usage_error(tmp_path: Path) -> None:
    res = admin("diff", FIXTURE, tmp_path / "nope.db")
    assert res.returncode == 2
    assert res.stderr.strip() == f"pmxcfs-admin: {tmp_path / 'nope.db'}: no such file"


def test_help_documents_damage_and_exit_codes() -> None:
    out = admin("diff", "--help").stdout
    assert "damaged" in out and "8: damaged" in out and "9: damaged and differences" in out


def test_any_damaged_page_gives_a_report_not_a_crash(tmp_path: Path) -> None:
    """Every page of the fixture, wholly or a few bytes at a time, and every truncation: the
    damage is reported and the rest read, never a traceback."""
    data = FIXTURE.read_bytes()
    base = diff.paths_of(salvage.read_db(str(FIXTURE)).rows)
    target = tmp_path / "config.db"
    variants: list[bytes] = [data[:cut] for cut in range(0, len(data), 1021)]
    for pgno in range(len(data) // 4096):
        for seed in range(30):
            rnd = random.Random(seed * 100 + pgno)
            b = bytearray(data)
            if seed < 2:
                b[pgno * 4096 : (pgno + 1) * 4096] = bytes(4096) if seed else os.urandom(4096)
            for _ in range(rnd.randrange(1, 8) if seed >= 2 else 0):
                b[pgno * 4096 + rnd.randrange(4096)] = rnd.randrange(256)
            variants.append(bytes(b))
    for content in variants:
        target.write_bytes(content)
        got = salvage.read_db(str(target))
        entries = diff.paths_of(got.rows)
        diff.diff_entries(base, entries, right_may_hold=got.may_hold)
        if got.method == "pages":
            assert got.damaged and got.refusals
        assert got.readable or got.damaged
