"""`diff`: which paths differ between two databases, e.g. two nodes' copies after a split.

It compares rows, not loaded trees, so a database the daemon refuses can still be compared:
every row gets a path, also one the daemon would not accept (see `paths_of`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..constants import DT_DIR, DT_REG
from ..tree import Entry
from .dbread import RawRow

_U32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Difference:
    path: str
    change: str  # removed (only in DB1), added (only in DB2), type, content, version
    old: Entry | None
    new: Entry | None
    doubt: str = ""  # the other database lost rows that may hold this entry

    def line(self) -> str:
        mark = {"removed": "-", "added": "+", "type": "T", "content": "M", "version": "V"}
        doubt = f" ({self.doubt})" if self.doubt else ""
        return f"{mark[self.change]} {self.path}  {self.detail()}{doubt}"

    def detail(self) -> str:
        o, n = self.old, self.new
        if o is None:
            assert n is not None
            return f"only in DB2 (version {n.version}, {n.size} bytes)"
        if n is None:
            return f"only in DB1 (version {o.version}, {o.size} bytes)"
        if self.change == "type":
            return f"{_kind(o)} in DB1, {_kind(n)} in DB2"
        what = "content differs" if self.change == "content" else "same content"
        return (
            f"{what}: size {o.size} -> {n.size}, version {o.version} -> {n.version}, "
            f"writer {o.writer} -> {n.writer}, mtime {o.mtime} -> {n.mtime}"
        )

    def as_dict(self) -> dict[str, Any]:
        def side(e: Entry | None) -> dict[str, Any] | None:
            if e is None:
                return None
            return {
                "type": _kind(e),
                "size": e.size,
                "version": e.version,
                "writer": e.writer,
                "mtime": e.mtime,
            }

        out = {
            "path": self.path,
            "change": self.change,
            "db1": side(self.old),
            "db2": side(self.new),
        }
        if self.doubt:
            out["doubt"] = self.doubt
        return out


def _kind(e: Entry) -> str:
    return {DT_DIR: "dir", DT_REG: "file"}.get(e.type, f"type {e.type}")


def _entry(r: RawRow, name: str) -> Entry:
    """The row as the daemon would hold it (same masking of type, writer, mtime and data)."""
    type_ = r.type & 0xFF
    data = r.data if type_ == DT_REG and r.data else b""
    return Entry(r.inode, r.parent, r.version, r.writer & _U32, r.mtime & _U32, type_, name, data)


def paths_of(rows: Sequence[RawRow]) -> dict[str, Entry]:
    """Every entry row by path; on a clean database the same paths as Tree.walk.

    Rows the daemon would refuse still get one: a second entry with a name already taken in its
    directory gets ` [inode N]` appended (the lowest inode keeps the plain name), an orphan
    lives below `<missing P>/`, a parent cycle below `<cycle N>/`, and a name that is not UTF-8
    shows its bytes as escapes.
    """
    by_inode = {r.inode: r for r in rows if r.inode != 0}
    kids: dict[int, list[RawRow]] = defaultdict(list)
    for r in sorted(by_inode.values(), key=lambda r: r.inode):
        kids[r.parent].append(r)
    out: dict[str, Entry] = {}
    placed: set[int] = set()

    def place(r: RawRow, prefix: str) -> None:
        stack = [(r, prefix)]
        while stack:
            row, pre = stack.pop()
            if row.inode in placed:
                continue
            placed.add(row.inode)
            name = row.text_name() or f"<no name {row.inode}>"
            key = pre + name
            if key in out:
                key = f"{key} [inode {row.inode}]"
            out[key] = _entry(row, name)
            stack.extend((k, key + "/") for k in reversed(kids.get(row.inode, ())))

    for r in kids.get(0, ()):
        place(r, "")
    for parent in sorted(set(kids) - set(by_inode) - {0}):
        for r in kids[parent]:
            place(r, f"<missing {parent}>/")
    for inode in sorted(by_inode):
        if inode not in placed:  # on a parent cycle, or below one
            place(by_inode[inode], f"<cycle {inode}>/")
    return out


def diff_entries(
    left: dict[str, Entry],
    right: dict[str, Entry],
    left_may_hold: Callable[[int], bool] = lambda _: False,
    right_may_hold: Callable[[int], bool] = lambda _: False,
) -> list[Difference]:
    """Per path: presence, type, content, then version/writer/mtime.

    An entry found on one side only says why it may be missing on the other: that side has
    the same inode at another path (e.g. below `<missing P>/` when its parent was lost), or
    lost rows (an unreadable page) whose inodes include its inode.
    """
    left_at = {e.inode: p for p, e in left.items()}
    right_at = {e.inode: p for p, e in right.items()}

    def doubt(e: Entry, side: str, at: dict[int, str], may_hold: Callable[[int], bool]) -> str:
        if e.inode in at:
            return f"{side} has inode {e.inode} at {at[e.inode]}"
        return f"{side} has unreadable rows that may hold it" if may_hold(e.inode) else ""

    out: list[Difference] = []
    for path in sorted(left.keys() | right.keys()):
        o, n = left.get(path), right.get(path)
        if o is None:
            assert n is not None
            out.append(Difference(path, "added", None, n, doubt(n, "DB1", left_at, left_may_hold)))
        elif n is None:
            out.append(
                Difference(path, "removed", o, None, doubt(o, "DB2", right_at, right_may_hold))
            )
        elif o.type != n.type:
            out.append(Difference(path, "type", o, n))
        elif o.data != n.data:
            out.append(Difference(path, "content", o, n))
        elif (o.version, o.writer, o.mtime) != (n.version, n.writer, n.mtime):
            out.append(Difference(path, "version", o, n))
    return out
