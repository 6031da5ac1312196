"""Whatever can be read from a config.db that may be damaged, with a list of the damage.

`diff` must not refuse a database the daemon refuses: it says what is wrong and compares the
rest. The checker reads it through SQLite first, which covers a clean file and rows that only
break load rules. When SQLite cannot read the rows (a corrupt page, a destroyed header), the
pages are read directly (sqlitefile.py): every row on an intact page of the tree table, then
rows on table leaves that nothing links to any more, and the rowid ranges that stay unknown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import apsw

from .check import Problem, Report, check_db, check_rows
from .dbread import INT_COLUMNS, RawRow
from .errors import AdminError
from .sqlitefile import Field, Lost, PageError, PageFile, is_int

_TREE_COLUMNS = 8
_DETAILS = frozenset({"unreadable", "recovered"})  # what a corrupt file lost: not load rules


@dataclass(slots=True)
class Salvage:
    path: str
    rows: list[RawRow] = field(default_factory=list)
    damage: list[Problem] = field(default_factory=list)
    lost: list[Lost] = field(default_factory=list)  # parts of the tree table not read
    readable: bool = False  # a tree table, or rows shaped like its rows, were found
    refusals: list[str] = field(default_factory=list)  # why the daemon would refuse it
    method: str = "sqlite"  # "sqlite", or "pages" when SQLite could not read the rows

    @property
    def damaged(self) -> bool:
        return bool(self.damage)

    @property
    def version(self) -> int | None:
        return next((r.version for r in self.rows if r.inode == 0), None)

    @property
    def entries(self) -> int:
        return sum(1 for r in self.rows if r.inode != 0)

    def may_hold(self, inode: int) -> bool:
        """Whether a row with this inode could be on a part that was not read."""
        return any(lost.holds(inode) for lost in self.lost)

    def summary(self) -> str:
        if not self.readable:
            return "nothing readable: no table 'tree' and no rows shaped like its rows"
        how = "from its pages directly" if self.method == "pages" else "through SQLite"
        loads = (
            f"the daemon would refuse to load it ({', '.join(self.refusals)})"
            if self.refusals
            else "the daemon would still load it"
        )
        return f"{len(self.damage)} problem(s); {loads}; {self.entries} entries read {how}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "version": self.version,
            "entries": self.entries,
            "damaged": self.damaged,
            "readable": self.readable,
            "loads": not self.refusals,
            "refusals": self.refusals,
            "read_by": self.method,
            "damage": [p.as_dict() for p in self.damage],
            "unreadable": [
                {"page": x.page, "reason": x.reason, "after_inode": x.low, "up_to_inode": x.high}
                for x in self.lost
            ],
        }


def read_db(path: str) -> Salvage:
    """Rows and damage of one database file; AdminError only if it is missing or busy."""
    if not os.path.exists(path):
        raise AdminError(f"{path}: no such file")
    if os.path.isdir(path):
        raise AdminError(f"{path}: is a directory")
    with open(path, "rb"):
        pass  # unreadable (permissions): OSError, a usage error like any other command's
    try:
        report: Report | None = check_db(path, show_progress=False)
        why = ""
    except (AdminError, apsw.Error) as exc:
        if isinstance(exc, apsw.BusyError) or isinstance(exc.__cause__, apsw.BusyError):
            raise AdminError(f"{path}: database is busy, try again") from exc
        report, why = None, str(exc).removeprefix(f"{path}: ")
    if report is not None:
        if report.rows_read or not (report.usable or _corrupt(report)):
            out = Salvage(path, report.rows, list(report.problems), readable=report.rows_read)
            out.refusals = report.refusals()
            return out
        why = "; ".join(p.message for p in report.problems if p.kind == "corrupt")
    out = _read_pages(path, why)
    if out.readable:
        out.damage += check_rows(out.rows)
    kinds = Report(out.damage, rows_read=out.readable).refusals()
    out.refusals = [k for k in kinds if k not in _DETAILS]
    return out


def _corrupt(report: Report) -> bool:
    return any(p.kind == "corrupt" for p in report.problems)


def _read_pages(path: str, why: str) -> Salvage:
    pf = PageFile(path)
    out = Salvage(path, method="pages")
    note = f" ({why})" if why else ""
    if not pf.has_magic:
        out.damage.append(
            Problem(
                "not-sqlite",
                "",
                None,
                f"no SQLite header: not an SQLite database, or its first page is destroyed{note}",
            )
        )
    else:
        out.damage.append(
            Problem("corrupt", "", None, f"SQLite cannot read it{note}; reading its pages")
        )
    rows: dict[int, RawRow] = {}
    claimed: set[int] = set()
    tree_found = False
    if pf.has_magic:
        master = pf.table(1)
        claimed |= master.pages
        for x in master.lost:
            out.damage.append(Problem("corrupt", "", None, f"schema table: {x.describe()}"))
        for name, root in _tables(master.rows):
            table = pf.table(root)
            claimed |= table.pages
            if name != "tree":
                out.damage.append(Problem("schema", "", None, f"unexpected table '{name}'"))
                continue
            tree_found = True
            out.lost = table.lost
            for rowid, fields in table.rows:
                rows[rowid] = _raw_row(rowid, fields)
        if not tree_found and not master.lost:
            out.damage.append(Problem("schema", "", None, "the schema has no table 'tree'"))
    for x in out.lost:
        out.damage.append(Problem("unreadable", "", None, f"table 'tree', {x.describe('inode')}"))
    if not tree_found or out.lost:
        _scan(pf, claimed | _freelist(pf), rows, out)
    out.rows = [rows[i] for i in sorted(rows)]
    out.readable = tree_found or bool(rows)
    if not tree_found and rows:
        out.lost.append(Lost(0, "the schema does not lead to table 'tree'", None, None))
    return out


def _freelist(pf: PageFile) -> set[int]:
    try:
        return pf.freelist()
    except PageError:
        return set()


def _scan(pf: PageFile, skip: set[int], rows: dict[int, RawRow], out: Salvage) -> None:
    """Rows shaped like the tree's on leaves not reached from any table's root."""
    found: dict[int, tuple[int, RawRow]] = {}
    for pgno, rowid, fields in pf.scan_leaves(skip):
        if rowid in rows or not _tree_shaped(fields):
            continue
        row = _raw_row(rowid, fields)
        old = found.get(rowid)
        if old is None or row.version > old[1].version:
            found[rowid] = (pgno, row)
    for rowid, (_, row) in found.items():
        rows[rowid] = row
    pages = sorted({pgno for pgno, _ in found.values()})
    if pages:
        shown = ", ".join(map(str, pages[:10])) + (", ..." if len(pages) > 10 else "")
        out.damage.append(
            Problem(
                "recovered",
                "",
                None,
                f"{len(found)} row(s) shaped like the tree's found on page(s) {shown} that "
                "no table links to (their parent page is lost); an older copy may be among them",
            )
        )


def _tables(rows: list[tuple[int, list[Field]]]) -> list[tuple[str, int]]:
    """(name, root page) of every table the schema table lists."""
    out: list[tuple[str, int]] = []
    for _rowid, fields in rows:
        if len(fields) < 4 or not is_int(fields[3]):
            continue
        kind, name, root = fields[0][1], fields[1][1], fields[3][1]
        if kind == b"table" and isinstance(name, bytes) and isinstance(root, int) and root > 0:
            out.append((name.decode("utf-8", "backslashreplace"), root))
    return out


def _tree_shaped(fields: list[Field]) -> bool:
    return (
        len(fields) == _TREE_COLUMNS
        and fields[0][0] == 0
        and all(is_int(f) for f in fields[1:6])
        and fields[6][0] >= 12
        and (fields[7][0] == 0 or fields[7][0] >= 12)
    )


def _as_bytes(f: Field) -> bytes | None:
    value = f[1]
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def _raw_row(rowid: int, fields: list[Field]) -> RawRow:
    fields = fields + [(0, None)] * (_TREE_COLUMNS - len(fields))
    ints = fields[1:6]
    nonint = tuple(c for c, f in zip(INT_COLUMNS, ints, strict=True) if not is_int(f))
    p, v, w, m, t = (f[1] if is_int(f) and isinstance(f[1], int) else 0 for f in ints)
    return RawRow(rowid, p, v, w, m, t, _as_bytes(fields[6]), _as_bytes(fields[7]), nonint)
