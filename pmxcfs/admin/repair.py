"""`repair`: apply the one safe, lossless fix for each problem `check` finds that has one.

Nothing is ever deleted: misplaced entries move to lost+found, clashing names are renamed
aside, data found in a directory row moves into a new file. Every changed or new row gets a
fresh version above everything in the database (so cluster peers see the change) and the
version row ends above all inodes and versions (quirk Q4). All rows go in one transaction.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import apsw

from ..constants import DT_DIR, DT_REG, SQLITE_BUSY_TIMEOUT_MS, VERSION_ROW_NAME
from ..storage import REPLACE_SQL
from .check import FIXABLE, Problem, check_rows, display_path
from .dbread import RawRow
from .errors import EXIT_PROBLEMS, AdminError

LOST_FOUND = b"lost+found"
# Fix order: names first (so moved entries carry valid names), then moves, then new rows.
_ORDER = {
    "bad-name": 0,
    "duplicate-name": 1,
    "vm-dir-not-dir": 2,
    "duplicate-vmid": 3,
    "orphan": 4,
    "parent-not-dir": 4,
    "cycle": 4,
    "dir-data": 5,
}


@dataclass(slots=True)
class Step:
    kind: str
    path: str
    inode: int
    action: str

    def line(self) -> str:
        return f"{self.kind}: {self.path or '/'} (inode {self.inode}): {self.action}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class Plan:
    steps: list[Step] = field(default_factory=list)
    manual: list[Problem] = field(default_factory=list)  # no safe fix: left for an operator
    changed: dict[int, RawRow] = field(default_factory=dict)  # rows to write
    remaining: list[Problem] = field(default_factory=list)  # what check says afterwards


class _Planner:
    def __init__(self, raw: Sequence[RawRow], now: int) -> None:
        self.rows = {r.inode: dataclasses.replace(r) for r in raw}
        self.original = {r.inode: r for r in raw}
        self.now = now
        entries = [r for r in raw if r.inode != 0]
        row0 = self.rows.get(0)
        self.counter = max(
            [r.inode for r in entries]
            + [r.version for r in entries]
            + [row0.version if row0 else 1]
        )
        self.names: dict[int, Counter[bytes]] = {}
        for r in entries:
            self.names.setdefault(r.parent, Counter())[r.name or b""] += 1
        self.lost_found: int | None = None
        self.plan = Plan()

    def bump(self) -> int:
        self.counter += 1
        return self.counter

    def unique(self, parent: int, name: bytes) -> bytes:
        taken = self.names.setdefault(parent, Counter())
        if not taken[name]:
            return name
        n = 1
        while taken[name + b".%d" % n]:
            n += 1
        return name + b".%d" % n

    def place(self, r: RawRow, parent: int, name: bytes) -> None:
        """Rename/move a row; the name is made unique in its new directory."""
        self.names.setdefault(r.parent, Counter())[r.name or b""] -= 1
        name = self.unique(parent, name)
        self.names[parent][name] += 1
        r.parent, r.name = parent, name
        self.touch(r)

    def touch(self, r: RawRow) -> None:
        r.version = self.bump()
        r.writer = 0
        self.plan.changed[r.inode] = r

    def lost_and_found(self) -> int:
        if self.lost_found is None:
            for r in self.rows.values():
                if r.inode and r.parent == 0 and r.name == LOST_FOUND and r.type == DT_DIR:
                    self.lost_found = r.inode
                    break
            else:
                inode = self.bump()
                name = self.unique(0, LOST_FOUND)
                self.names[0][name] += 1
                row = RawRow(inode, 0, inode, 0, self.now, DT_DIR, name, None)
                self.rows[inode] = row
                self.plan.changed[inode] = row
                self.lost_found = inode
        return self.lost_found

    def fix(self, p: Problem) -> str:
        assert p.inode is not None
        r = self.rows[p.inode]
        name = r.name or b""
        if p.kind == "bad-name":
            text = name.decode("utf-8", "backslashreplace").replace("/", "_")
            new = text.encode() if text not in ("", ".", "..") else b"unnamed-%d" % r.inode
            self.place(r, r.parent, new)
        elif p.kind == "duplicate-name":
            self.place(r, r.parent, name + b".dup-%d" % r.inode)
        elif p.kind == "vm-dir-not-dir":
            self.place(r, r.parent, name + b".file-%d" % r.inode)
        elif p.kind == "duplicate-vmid":
            self.place(r, r.parent, name + b".dup-%d" % r.inode)
        elif p.kind in ("orphan", "parent-not-dir", "cycle"):
            self.place(r, self.lost_and_found(), name)
        elif p.kind == "dir-data":
            parent = self.lost_and_found()
            inode = self.bump()
            fname = self.unique(parent, name + b".data-%d" % r.inode)
            self.names[parent][fname] += 1
            new_row = RawRow(inode, parent, inode, 0, r.mtime, DT_REG, fname, r.data)
            self.rows[inode] = new_row
            self.plan.changed[inode] = new_row
            r.data = None
            self.touch(r)
            return f"data ({len(new_row.data or b'')} bytes) moved to {self.where(inode)}"
        else:
            raise AssertionError(p.kind)
        return f"{'moved' if p.kind in _MOVES else 'renamed'} to {self.where(r.inode)}"

    def where(self, inode: int) -> str:
        return display_path(self.rows, inode)

    def finish(self) -> None:
        """The version row: correct name, and at or above every inode and version."""
        old = self.rows.get(0)
        version_ok = old is not None and old.version >= self.counter
        if version_ok and not self.plan.changed and old and old.name == VERSION_ROW_NAME.encode():
            return
        row0 = RawRow(0, 0, self.counter, 0, self.now, DT_REG, VERSION_ROW_NAME.encode(), None)
        self.rows[0] = row0
        self.plan.changed[0] = row0
        was = "missing" if old is None else str(old.version)
        self.plan.steps.append(Step("version", "", 0, f"version row {was} -> {self.counter}"))


_MOVES = ("orphan", "parent-not-dir", "cycle")


def plan_repair(raw: Sequence[RawRow], problems: Sequence[Problem], now: int) -> Plan:
    """What repair would do; also simulates the result and re-checks it."""
    planner = _Planner(raw, now)
    plan = planner.plan
    untouchable = {p.inode for p in problems if p.kind == "bad-value"}
    for p in sorted(problems, key=lambda p: (_ORDER.get(p.kind, 9), p.inode or 0)):
        if p.kind not in FIXABLE or p.inode in untouchable:
            plan.manual.append(p)
        elif p.kind in _ORDER:
            assert p.inode is not None
            plan.steps.append(Step(p.kind, p.path, p.inode, planner.fix(p)))
    planner.finish()
    plan.remaining = check_rows(list(planner.rows.values()))
    return plan


def apply_plan(db_path: str, plan: Plan) -> None:
    """Write every changed row in one transaction (caller holds the instance lock)."""
    try:
        conn = apsw.Connection(db_path, flags=apsw.SQLITE_OPEN_READWRITE)
    except apsw.Error as exc:
        raise AdminError(f"{db_path}: cannot open for writing: {exc}") from exc
    try:
        conn.set_busy_timeout(SQLITE_BUSY_TIMEOUT_MS)
        rows = [
            (
                r.inode,
                r.parent,
                r.version,
                r.writer,
                r.mtime,
                r.type,
                (r.name or b"").decode(),
                r.data,
            )
            for r in plan.changed.values()
        ]
        with conn:  # one transaction; rolled back on any error
            conn.executemany(REPLACE_SQL, rows)
    except apsw.Error as exc:
        raise AdminError(
            f"{db_path}: repair failed, nothing changed: {exc}", EXIT_PROBLEMS
        ) from exc
    finally:
        conn.close()

