"""config.db: the reference's fixture, the exact schema, and bad databases left untouched."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from pmxcfs.storage import SCHEMA_FILE, SCHEMA_SQL, Database, DatabaseError
from tests.shared import SHARED

FIXTURE = SHARED / "fixtures" / "config.db"
MANIFEST = SHARED / "fixtures" / "config.db.manifest.json"


def fingerprint(p: Path) -> tuple[str, int]:
    return hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode


def test_schema_file_matches_reference_text() -> None:
    ref = sqlite3.connect(FIXTURE).execute("SELECT sql FROM sqlite_master WHERE name='tree'")
    stored = ref.fetchone()[0]
    assert SCHEMA_FILE.read_text().strip() == SCHEMA_SQL
    assert SCHEMA_SQL.replace("CREATE TABLE IF NOT EXISTS", "CREATE TABLE") == stored


def test_fixture_loads_with_every_manifest_entry(tmp_path: Path) -> None:
    db_path = tmp_path / "config.db"
    shutil.copy(FIXTURE, db_path)
    db, tree = Database.open(str(db_path))
    try:
        manifest = json.loads(MANIFEST.read_text())
        for item in manifest:
            e = tree.lookup(item["path"])
            assert e is not None, item["path"]
            assert e.mtime == item["mtime"]
            if item["type"] == "file":
                assert e.size == item["size"]
                assert hashlib.sha256(e.data).hexdigest() == item["sha256"]
            else:
                assert e.is_dir
        assert len(tree.index) - 1 == len(manifest)
    finally:
        db.close()


def test_fresh_database_has_reference_rows(tmp_path: Path) -> None:
    db_path = tmp_path / "config.db"
    db, tree = Database.open(str(db_path), clock=1700000000)
    tree.mkdir("d", 0, 1700000001)
    db.close()
    con = sqlite3.connect(db_path)
    rows = con.execute("SELECT * FROM tree ORDER BY inode").fetchall()
    assert rows == [
        (0, 0, 2, 0, 1700000001, 8, "__version__", None),
        (2, 0, 2, 0, 1700000001, 4, "d", None),
    ]
    sql = con.execute("SELECT sql FROM sqlite_master").fetchall()
    assert sql == [(SCHEMA_SQL.replace(" IF NOT EXISTS", ""),)]
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (db_path.stat().st_mode & 0o777) == 0o600


def test_changes_persist_in_one_transaction_each(tmp_path: Path) -> None:
    db_path = tmp_path / "config.db"
    db, tree = Database.open(str(db_path))
    tree.create("f", 0, 5)
    tree.write("f", 0, b"hello", 0, 6)
    tree.mkdir("d", 0, 7)
    tree.rename("f", "d/g", 0, 8)
    db.close()
    db2, tree2 = Database.open(str(db_path))
    try:
        assert tree2.encode_index() == tree.encode_index()
        assert tree2.lookup("d/g").data == b"hello"  # type: ignore[union-attr]
    finally:
        db2.close()


def _write_rows(path: Path, rows: list[tuple]) -> None:  # type: ignore[type-arg]
    con = sqlite3.connect(path)
    con.execute(SCHEMA_SQL)
    con.executemany("INSERT INTO tree VALUES (?,?,?,?,?,?,?,?)", rows)
    con.commit()
    con.close()


BAD_DATABASES = {
    "garbage": b"this is not an sqlite database at all" * 200,
    "foreign": "foreign",
    "wrong_schema": "wrong_schema",
    "duplicate_name": [
        (0, 0, 3, 0, 0, 8, "__version__", None),
        (2, 0, 2, 0, 0, 8, "a", None),
        (3, 0, 3, 0, 0, 8, "a", None),
    ],
    "orphan": [(0, 0, 3, 0, 0, 8, "__version__", None), (3, 9, 3, 0, 0, 8, "a", None)],
    "dir_with_data": [(0, 0, 3, 0, 0, 8, "__version__", None), (2, 0, 2, 0, 0, 4, "d", b"x")],
    "duplicate_vmid": [
        (0, 0, 9, 0, 0, 8, "__version__", None),
        (2, 0, 2, 0, 0, 4, "nodes", None),
        (3, 2, 3, 0, 0, 4, "a", None),
        (4, 2, 4, 0, 0, 4, "b", None),
        (5, 3, 5, 0, 0, 4, "qemu-server", None),
        (6, 4, 6, 0, 0, 4, "lxc", None),
        (7, 5, 7, 0, 0, 8, "100.conf", None),
        (8, 6, 8, 0, 0, 8, "100.conf", None),
    ],
}


def make_bad(path: Path, kind: str) -> None:
    spec = BAD_DATABASES[kind]
    if isinstance(spec, bytes):
        path.write_bytes(spec)
    elif spec == "foreign":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
        con.commit()
        con.close()
    elif spec == "wrong_schema":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE tree (inode INTEGER, name TEXT)")
        con.commit()
        con.close()
    else:
        _write_rows(path, spec)  # type: ignore[arg-type]
    os.chmod(path, 0o644)


@pytest.mark.parametrize("kind", sorted(BAD_DATABASES))
def test_bad_database_is_refused_and_untouched(tmp_path: Path, kind: str) -> None:
    db_path = tmp_path / "config.db"
    make_bad(db_path, kind)
    before = fingerprint(db_path)
    with pytest.raises(DatabaseError) as ei:
        Database.open(str(db_path))
    assert "\n" not in str(ei.value)
    assert fingerprint(db_path) == before
    assert not (tmp_path / "config.db-wal").exists()
