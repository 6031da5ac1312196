"""Read-only access to a config.db: raw rows for the checker, a loaded Tree for everything else.

Database.open is not usable here: it chmods, switches to WAL and may write the version row.
A read-only apsw connection never changes the database file (SQLite may create the usual empty
-wal/-shm side files of a WAL database). Names and data are read as blobs, because a TEXT
column may hold bytes that are not UTF-8, which apsw could not decode.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import apsw

from ..constants import SQLITE_BUSY_TIMEOUT_MS
from ..storage import COLUMNS, SCHEMA_SQL
from ..tree import LoadError, Row, Tree
from ..vmlist import VmListError
from .errors import EXIT_PROBLEMS, AdminError

INT_COLUMNS = ("parent", "version", "writer", "mtime", "type")
_RAW_SELECT = (
    "SELECT inode, parent, version, writer, mtime, type, CAST(name AS BLOB), "
    "CAST(data AS BLOB), " + " || ',' || ".join(f"typeof({c})" for c in INT_COLUMNS) + " FROM tree"
)
REFERENCE_SCHEMA = SCHEMA_SQL.replace("CREATE TABLE IF NOT EXISTS", "CREATE TABLE")


@dataclass(slots=True)
class RawRow:
    """One row as stored; `nonint` names the integer columns holding something else."""

    inode: int
    parent: int
    version: int
    writer: int
    mtime: int
    type: int
    name: bytes | None
    data: bytes | None
    nonint: tuple[str, ...] = ()

    def text_name(self) -> str:
        """The name for display: undecodable bytes shown as escapes."""
        if self.name is None:
            return ""
        return self.name.decode("utf-8", "backslashreplace")


def open_ro(path: str) -> apsw.Connection:
    """Open an existing database without any right to change it."""
    if not os.path.exists(path):
        raise AdminError(f"{path}: no such file")
    if os.path.isdir(path):
        raise AdminError(f"{path}: is a directory")
    try:
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.Error as exc:
        raise AdminError(f"{path}: unreadable database: {exc}") from exc
    try:
        conn.set_busy_timeout(SQLITE_BUSY_TIMEOUT_MS)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except apsw.Error as exc:
        conn.close()
        if isinstance(exc, apsw.CorruptError):
            raise AdminError(f"{path}: database is corrupt: {exc}", EXIT_PROBLEMS) from exc
        raise AdminError(f"{path}: unreadable database: {exc}") from exc
    return conn


@contextmanager
def reading(path: str) -> Iterator[apsw.Connection]:
    """A read-only connection inside one read transaction: a consistent snapshot."""
    conn = open_ro(path)
    try:
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")
    finally:
        conn.close()


def _text(value: bytes | None) -> str:
    """Schema text as stored; a damaged schema may hold bytes that are not UTF-8."""
    return "" if value is None else value.decode("utf-8", "backslashreplace")


def schema_errors(conn: apsw.Connection) -> tuple[list[str], bool]:
    """Problems with the schema, and whether the tree table is usable at all."""
    query = (
        "SELECT CAST(type AS BLOB), CAST(name AS BLOB), CAST(sql AS BLOB) FROM sqlite_master "
        "WHERE name NOT LIKE 'sqlite_%'"
    )
    objects = [tuple(_text(v) for v in row) for row in conn.execute(query)]
    tables = {name: sql for kind, name, sql in objects if kind == "table"}
    tree_sql = tables.get("tree")
    errors = [f"unexpected {kind} '{name}'" for kind, name, _ in objects if name != "tree"]
    if tree_sql is None:
        return ["no 'tree' table: not a pmxcfs database", *errors], False
    info = "SELECT CAST(name AS BLOB), pk FROM pragma_table_info('tree') ORDER BY cid"
    cols = [(_text(name), pk) for name, pk in conn.execute(info)]
    got = tuple(c[0] for c in cols)
    if got != COLUMNS or cols[0][1] != 1:
        return [f"wrong columns in table 'tree': {', '.join(got)}", *errors], False
    if " ".join(tree_sql.split()) != " ".join(REFERENCE_SCHEMA.split()):
        errors.append("table 'tree' differs from the reference schema (constraints)")
    return errors, True


def integrity_errors(conn: apsw.Connection) -> list[str]:
    try:
        res = [r[0] for r in conn.execute("PRAGMA quick_check")]
    except apsw.Error as exc:
        return [str(exc)]
    return [] if res == ["ok"] else res


def read_raw(conn: apsw.Connection) -> list[RawRow]:
    out: list[RawRow] = []
    for inode, *values, name, data, types in conn.execute(_RAW_SELECT):
        kinds = types.split(",")
        nonint = tuple(c for c, k in zip(INT_COLUMNS, kinds, strict=True) if k != "integer")
        p, v, w, m, t = (x if isinstance(x, int) else 0 for x in values)
        out.append(RawRow(inode, p, v, w, m, t, name, data, nonint))
    return out


def to_rows(raw: list[RawRow]) -> list[Row]:
    """Rows in the form Tree.from_rows takes; raises LoadError for undecodable names."""
    rows: list[Row] = []
    for r in raw:
        if r.nonint:
            raise LoadError(f"non-integer {', '.join(r.nonint)} (inode = {r.inode:016X})")
        try:
            name = r.name.decode("utf-8") if r.name is not None else ""
        except UnicodeDecodeError:
            msg = f"inode has a name that is not UTF-8 (inode = {r.inode:016X})"
            raise LoadError(msg) from None
        rows.append((r.inode, r.parent, r.version, r.writer, r.mtime, r.type, name, r.data))
    return rows


def load_tree_from(conn: apsw.Connection, path: str) -> Tree:
    """The tree exactly as the daemon would load it, or a one-line refusal."""
    errors, usable = schema_errors(conn)
    if not usable:
        raise AdminError(f"{path}: {errors[0]}", EXIT_PROBLEMS)
    try:
        tree = Tree.from_rows(to_rows(read_raw(conn)))
        tree.finish_load()
    except (LoadError, VmListError) as exc:
        raise AdminError(
            f"{path}: DB load failed: {exc} (run 'pmxcfs-admin check')", EXIT_PROBLEMS
        ) from exc
    except apsw.Error as exc:
        raise AdminError(f"{path}: unreadable database: {exc}") from exc
    return tree


def load_tree(path: str) -> Tree:
    with reading(path) as conn:
        return load_tree_from(conn, path)
