"""config.db through apsw: the reference schema, validation before any change, one transaction
per operation (spec §2).

A database that fails any check is reported with one clear message and is never modified:
validation reads only, and the pragmas, chmod and table creation come after it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import apsw

from .constants import SQLITE_BUSY_TIMEOUT_MS
from .tree import Journal, LoadError, Row, Tree
from .vmlist import VmListError

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schema" / "config.sql"
# Kept inline too, so an installed package does not depend on the source tree.
SCHEMA_SQL = (
    "CREATE TABLE IF NOT EXISTS tree (  inode INTEGER PRIMARY KEY NOT NULL,  "
    "parent INTEGER NOT NULL CHECK(typeof(parent)=='integer'),  "
    "version INTEGER NOT NULL CHECK(typeof(version)=='integer'),  "
    "writer INTEGER NOT NULL CHECK(typeof(writer)=='integer'),  "
    "mtime INTEGER NOT NULL CHECK(typeof(mtime)=='integer'),  "
    "type INTEGER NOT NULL CHECK(typeof(type)=='integer'),  "
    "name TEXT NOT NULL,  data BLOB)"
)
COLUMNS = ("inode", "parent", "version", "writer", "mtime", "type", "name", "data")
_SELECT = "SELECT inode, parent, version, writer, mtime, type, name, data FROM tree"
REPLACE_SQL = (
    "REPLACE INTO tree (inode, parent, version, writer, mtime, type, name, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_DELETE = "DELETE FROM tree WHERE inode = ?"

log = logging.getLogger("pmxcfs.database")


class DatabaseError(Exception):
    """The database cannot be used; the message is the one line an admin sees."""


def _check_schema(conn: apsw.Connection) -> bool:
    """True if the tree table exists (and is ours); False for a brand-new empty database."""
    objects = list(
        conn.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
    )
    names = {name for _, name in objects}
    if "tree" not in names:
        if objects:
            raise DatabaseError(
                "not a pmxcfs database (no 'tree' table, found: " + ", ".join(sorted(names)) + ")"
            )
        return False
    cols = [(r[1], r[2].upper(), r[5]) for r in conn.execute("PRAGMA table_info(tree)")]
    got = tuple(c[0] for c in cols)
    if got != COLUMNS or cols[0][2] != 1:
        raise DatabaseError(f"wrong schema of table 'tree': columns {got}")
    return True


class Database:
    """The open config.db. Implements the tree's Journal."""

    def __init__(self, path: str, conn: apsw.Connection) -> None:
        self.path = path
        self.conn = conn

    @classmethod
    def open(
        cls,
        path: str,
        clock: float | None = None,
        journal: Callable[[Database], Journal] | None = None,
    ) -> tuple[Database, Tree]:
        """Open, validate and load; returns the database and its tree (spec §2.1, §2.4).

        *journal* wraps the database as the tree's journal (group commit)."""
        try:
            conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
        except apsw.Error as exc:
            raise DatabaseError(f"unable to open database '{path}': {exc}") from exc
        try:
            conn.set_busy_timeout(SQLITE_BUSY_TIMEOUT_MS)
            try:
                # The tree lives in memory, so SQLite's cache only serves writes: a small one
                # keeps the load from leaving a second copy (up to 2 MB) behind. Writes nothing.
                conn.execute("PRAGMA cache_size=-256")
                has_table = _check_schema(conn)
                if has_table:
                    bad = [r[0] for r in conn.execute("PRAGMA quick_check")]
                    if bad != ["ok"]:
                        raise DatabaseError("database is corrupt: " + "; ".join(bad[:3]))
                    rows: list[Row] = list(conn.execute(_SELECT))
                else:
                    rows = []
            except apsw.Error as exc:
                raise DatabaseError(f"database is unreadable: {exc}") from exc
            except UnicodeDecodeError as exc:
                raise DatabaseError(f"entry name is not valid UTF-8: {exc}") from exc
            db = cls(path, conn)
            try:
                tree = Tree.from_rows(rows, db if journal is None else journal(db))
                tree.finish_load()
            except LoadError as exc:
                raise DatabaseError(f"DB load failed: {exc}") from exc
            except VmListError as exc:
                raise DatabaseError(f"DB load failed: {exc}") from exc
            has_version_row = any(r[0] == 0 for r in rows)
            db._prepare(has_table)
            if not has_version_row or tree.root.version != next(r[2] for r in rows if r[0] == 0):
                now = int(clock if clock is not None else time.time())
                if not has_version_row:
                    tree.root.mtime = now
                elif rows:
                    # Q4: a version below an existing inode would let a new entry replace it.
                    log.warning(
                        "raising database version to %d (was behind its entries)", tree.root.version
                    )
                db.commit([tree.root.row()], ())
            return db, tree
        except BaseException:
            conn.close()
            raise

    def _prepare(self, has_table: bool) -> None:
        """Only for a database that passed validation: mode, WAL, schema."""
        try:
            os.chmod(self.path, 0o600)
        except OSError as exc:
            raise DatabaseError(f"chmod of database '{self.path}' failed: {exc}") from exc
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            if not has_table:
                self.conn.execute(SCHEMA_SQL)
        except apsw.Error as exc:
            raise DatabaseError(f"unable to prepare database: {exc}") from exc

    def commit(self, upserts: Sequence[Row], deletes: Sequence[int]) -> None:
        conn = self.conn
        conn.execute("BEGIN TRANSACTION")
        try:
            for inode in deletes:
                conn.execute(_DELETE, (inode,))
            conn.executemany(REPLACE_SQL, upserts)
            conn.execute("COMMIT TRANSACTION")
        except BaseException:
            if not conn.in_transaction:
                raise
            conn.execute("ROLLBACK TRANSACTION")
            raise

    def close(self) -> None:
        self.conn.close()
