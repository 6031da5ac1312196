"""`diff`: which paths differ between two databases, e.g. two nodes' copies after a split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..tree import Entry, Tree


@dataclass(frozen=True, slots=True)
class Difference:
    path: str
    change: str  # removed (only in DB1), added (only in DB2), type, content, version
    old: Entry | None
    new: Entry | None

    def line(self) -> str:
        mark = {"removed": "-", "added": "+", "type": "T", "content": "M", "version": "V"}
        return f"{mark[self.change]} {self.path}  {self.detail()}"

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

        return {
            "path": self.path,
            "change": self.change,
            "db1": side(self.old),
            "db2": side(self.new),
        }


def _kind(e: Entry) -> str:
    return "dir" if e.is_dir else "file"


def diff_trees(a: Tree, b: Tree) -> list[Difference]:
    """Per path: presence, type, content, then version/writer/mtime."""
    left = dict(a.walk())
    right = dict(b.walk())
    out: list[Difference] = []
    for path in sorted(left.keys() | right.keys()):
        o, n = left.get(path), right.get(path)
        if o is None:
            out.append(Difference(path, "added", None, n))
        elif n is None:
            out.append(Difference(path, "removed", o, None))
        elif o.type != n.type:
            out.append(Difference(path, "type", o, n))
        elif o.data != n.data:
            out.append(Difference(path, "content", o, n))
        elif (o.version, o.writer, o.mtime) != (n.version, n.writer, n.mtime):
            out.append(Difference(path, "version", o, n))
    return out
