"""`check`: every rule the daemon applies at load, collected instead of stopping at the first.

The daemon refuses to start on the first violation (spec §2.4); an operator needs the whole
list at once. The checker works on raw rows, so it can describe databases the Tree cannot load.
Besides the load rules it reports what makes a database fragile: oversize files and a version
row that is missing or below the highest inode/version (quirk Q4: inode reuse).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import apsw

from .. import paths
from ..constants import DT_DIR, DT_REG, MAX_FILE_SIZE, VERSION_ROW_NAME
from .dbread import RawRow, integrity_errors, read_raw, reading, schema_errors
from .progress import Progress

# Kinds that `repair` knows one safe, lossless fix for.
FIXABLE = frozenset(
    {
        "orphan",
        "cycle",
        "parent-not-dir",
        "duplicate-name",
        "duplicate-vmid",
        "vm-dir-not-dir",
        "bad-name",
        "dir-data",
        "version-missing",
        "version-low",
        "bad-version-row",
    }
)
# Kinds the daemon loads anyway: it raises the version itself (Q4), sizes and extra schema
# objects are not checked at load.
TOLERATED_AT_LOAD = frozenset({"version-missing", "version-low", "oversize", "schema"})
_VERSION_NAME = VERSION_ROW_NAME.encode()


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str
    path: str
    inode: int | None
    message: str

    @property
    def fixable(self) -> bool:
        return self.kind in FIXABLE

    def line(self) -> str:
        where = self.path or "/"
        ino = f" (inode {self.inode})" if self.inode is not None else ""
        return f"{self.kind}: {where}{ino}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "inode": self.inode,
            "message": self.message,
            "fixable": self.fixable,
        }


@dataclass(slots=True)
class Report:
    problems: list[Problem] = field(default_factory=list)
    entries: int = 0
    version: int | None = None
    rows: list[RawRow] = field(default_factory=list)  # what was checked, for repair
    usable: bool = True  # schema and pages good enough to work on the rows
    rows_read: bool = False  # `rows` holds every row of the tree table

    @property
    def ok(self) -> bool:
        return not self.problems

    def refusals(self) -> list[str]:
        """The kinds of problem that make the daemon refuse to load this database."""
        if not self.rows_read:
            return [self.problems[0].kind if self.problems else "unreadable"]
        kinds = (p.kind for p in self.problems if p.kind not in TOLERATED_AT_LOAD)
        return list(dict.fromkeys(kinds))

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "version": self.version,
            "problems": [p.as_dict() for p in self.problems],
        }


def display_path(by_inode: dict[int, RawRow], inode: int) -> str:
    """Best-effort path of a row, marking where the chain to the root breaks."""
    parts: list[str] = []
    seen: set[int] = set()
    cur = by_inode.get(inode)
    while cur is not None and cur.inode != 0:
        if cur.inode in seen:
            parts.append("<cycle>")
            break
        seen.add(cur.inode)
        parts.append(cur.text_name() or f"<no name {cur.inode}>")
        if cur.parent == 0:
            break
        nxt = by_inode.get(cur.parent)
        if nxt is None:
            parts.append(f"<missing {cur.parent}>")
            break
        cur = nxt
    return "/".join(reversed(parts))


def vmid_owner(copies: Sequence[RawRow]) -> RawRow:
    """The copy of a duplicated VMID that stays: the most recently changed, then the oldest."""
    return max(copies, key=lambda r: (r.version, -r.inode))


def _name_problem(name: bytes | None) -> str | None:
    if not name:
        return "empty name"
    if b"/" in name:
        return "name contains '/'"
    if name in (b".", b".."):
        return f"name is '{name.decode()}'"
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return "name is not valid UTF-8"
    return None


def _children(raw: Sequence[RawRow]) -> dict[int, list[RawRow]]:
    kids: dict[int, list[RawRow]] = defaultdict(list)
    for r in raw:
        if r.inode != 0:
            kids[r.parent].append(r)
    return kids


def _reachable(kids: dict[int, list[RawRow]]) -> set[int]:
    seen = {0}
    stack = [0]
    while stack:
        for child in kids.get(stack.pop(), ()):
            if child.inode not in seen:
                seen.add(child.inode)
                stack.append(child.inode)
    return seen


def find_cycles(by_inode: dict[int, RawRow], reached: set[int]) -> list[list[int]]:
    """Parent loops among unreachable rows, each as its member inodes (smallest first)."""
    cycles: list[list[int]] = []
    done: set[int] = set()
    for start in sorted(set(by_inode) - reached):
        chain: list[int] = []
        pos: dict[int, int] = {}
        cur: int | None = start
        while cur is not None and cur not in done and cur not in reached and cur not in pos:
            pos[cur] = len(chain)
            chain.append(cur)
            row = by_inode.get(cur)
            cur = row.parent if row is not None else None
        if cur is not None and cur in pos:
            cycles.append(sorted(chain[pos[cur] :]))
        done.update(chain)
    return cycles


def _row_checks(r: RawRow, by_inode: dict[int, RawRow], out: list[Problem]) -> None:
    path = display_path(by_inode, r.inode)

    def add(kind: str, msg: str) -> None:
        out.append(Problem(kind, path, r.inode, msg))

    if r.inode == 0:
        if r.name != _VERSION_NAME:
            add("bad-version-row", f"row 0 is named '{r.text_name()}', not '{VERSION_ROW_NAME}'")
        if r.nonint:
            add("bad-value", f"non-integer {', '.join(r.nonint)}")
        return
    if r.nonint:
        add("bad-value", f"non-integer {', '.join(r.nonint)}")
    signed = (("inode", r.inode), ("parent", r.parent), ("version", r.version))
    negative = [c for c, v in signed if v < 0]
    if negative:
        add("bad-value", f"negative {', '.join(negative)}")
    bad = _name_problem(r.name)
    if bad:
        add("bad-name", bad)
    type_ = r.type & 0xFF
    if type_ not in (DT_DIR, DT_REG):
        add("bad-type", f"unknown type {r.type}")
    if type_ == DT_DIR and r.data:
        add("dir-data", f"directory holds {len(r.data)} bytes of data")
    if type_ == DT_REG and r.data and len(r.data) > MAX_FILE_SIZE:
        add("oversize", f"file is {len(r.data)} bytes, the limit is {MAX_FILE_SIZE}")
    if r.parent == r.inode:
        add("cycle", "entry is its own parent")
    elif r.parent != 0:
        parent = by_inode.get(r.parent)
        if parent is None:
            add("orphan", f"parent inode {r.parent} does not exist")
        elif parent.type & 0xFF != DT_DIR:
            add("parent-not-dir", f"parent inode {r.parent} is not a directory")


def _duplicate_names(
    raw: Sequence[RawRow], by_inode: dict[int, RawRow], out: list[Problem]
) -> None:
    groups: dict[tuple[int, bytes], list[RawRow]] = defaultdict(list)
    for r in raw:
        if r.inode != 0 and r.name:
            groups[(r.parent, r.name)].append(r)
    for copies in groups.values():
        if len(copies) > 1:
            first, *rest = sorted(copies, key=lambda r: r.inode)
            for r in rest:
                out.append(
                    Problem(
                        "duplicate-name",
                        display_path(by_inode, r.inode),
                        r.inode,
                        f"same name as inode {first.inode} in the same directory",
                    )
                )


def _vm_problems(
    kids: dict[int, list[RawRow]], by_inode: dict[int, RawRow], out: list[Problem]
) -> None:
    """The VM list rebuild of spec §6: config files under nodes/<ldh>/<kind>/."""
    found: dict[int, list[RawRow]] = defaultdict(list)
    for nodes in kids.get(0, ()):
        if nodes.name != b"nodes" or nodes.type & 0xFF != DT_DIR:
            continue
        for node in kids.get(nodes.inode, ()):
            if node.type & 0xFF != DT_DIR or not paths.is_ldh(node.text_name()):
                continue
            for sub in kids.get(node.inode, ()):
                kind = sub.text_name()
                if kind not in paths.VM_KINDS:
                    continue
                if sub.type & 0xFF != DT_DIR:
                    out.append(
                        Problem(
                            "vm-dir-not-dir",
                            display_path(by_inode, sub.inode),
                            sub.inode,
                            "a VM config directory is a file: the VM list cannot be built",
                        )
                    )
                    continue
                for f in kids.get(sub.inode, ()):
                    if f.type & 0xFF != DT_REG:
                        continue
                    cfg = paths.parse_vm_config(f"nodes/{node.text_name()}/{kind}/{f.text_name()}")
                    if cfg is not None:
                        found[cfg.vmid].append(f)
    for vmid, copies in sorted(found.items()):
        if len(copies) < 2:
            continue
        keep = vmid_owner(copies)
        kept = display_path(by_inode, keep.inode)
        for r in sorted(copies, key=lambda r: r.inode):
            if r is not keep:
                out.append(
                    Problem(
                        "duplicate-vmid",
                        display_path(by_inode, r.inode),
                        r.inode,
                        f"duplicate VMID {vmid} (the copy at {kept} is newer and stays)",
                    )
                )


def _version_problems(by_inode: dict[int, RawRow], out: list[Problem]) -> None:
    entries = [r for i, r in by_inode.items() if i != 0]
    floor = max([r.inode for r in entries] + [r.version for r in entries] + [1])
    row = by_inode.get(0)
    if row is None:
        if entries:
            out.append(
                Problem(
                    "version-missing",
                    "",
                    0,
                    f"no {VERSION_ROW_NAME} row: the version restarts and new inodes "
                    f"may overwrite entries (highest inode/version is {floor})",
                )
            )
    elif row.version < floor:
        out.append(
            Problem(
                "version-low",
                "",
                0,
                f"version {row.version} is below the highest inode/version {floor}",
            )
        )


def check_rows(raw: Sequence[RawRow], progress: Progress | None = None) -> list[Problem]:
    """All problems of a set of rows, sorted by path."""
    by_inode = {r.inode: r for r in raw}
    out: list[Problem] = []
    for r in raw:
        _row_checks(r, by_inode, out)
        if progress is not None:
            progress.step()
    _duplicate_names(raw, by_inode, out)
    kids = _children(raw)
    reached = _reachable(kids)
    for members in find_cycles(by_inode, reached):
        if len(members) > 1:  # a self-parent row was reported by _row_checks
            out.append(
                Problem(
                    "cycle",
                    display_path(by_inode, members[0]),
                    members[0],
                    f"parent chain loops through inodes {', '.join(map(str, members))}: "
                    "not reachable from the root",
                )
            )
    _vm_problems(kids, by_inode, out)
    _version_problems(by_inode, out)
    out.sort(key=lambda p: (p.path, p.kind, p.inode or 0))
    return out


def check_db(path: str, show_progress: bool = True) -> Report:
    """Schema, page integrity and every row rule of one database file (read-only)."""
    report = Report()
    with reading(path) as conn:
        errors, usable = schema_errors(conn)
        report.problems += [Problem("schema", "", None, e) for e in errors]
        report.problems += [Problem("corrupt", "", None, e) for e in integrity_errors(conn)[:20]]
        report.usable = usable and not any(p.kind == "corrupt" for p in report.problems)
        if not usable:
            return report
        try:
            raw = read_raw(conn)
        except apsw.Error as exc:
            report.problems.append(Problem("corrupt", "", None, f"rows unreadable: {exc}"))
            report.usable = False
            return report
    report.rows = raw
    report.rows_read = True
    report.entries = sum(1 for r in raw if r.inode != 0)
    row0 = next((r for r in raw if r.inode == 0), None)
    report.version = row0.version if row0 is not None else None
    with Progress("checking", len(raw)) as bar:
        report.problems += check_rows(raw, bar if show_progress else None)
    return report
