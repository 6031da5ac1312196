"""`ls` and `cat`: look into a database without mounting it (read-only)."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from typing import Any

from .. import paths, permissions
from ..tree import Entry, Tree
from .errors import EXIT_PROBLEMS, AdminError


def entry_info(path: str, e: Entry) -> dict[str, Any]:
    """`mode` is what the mounted filesystem shows for the entry when quorate (spec §4.3)."""
    return {
        "path": path,
        "name": e.name or "/",
        "type": "dir" if e.is_dir else "file",
        "mode": stat.filemode(permissions.entry_mode(path, e.is_dir, quorate=True)),
        "size": e.size,
        "inode": e.inode,
        "version": e.version,
        "writer": e.writer,
        "mtime": e.mtime,
    }


def _resolve(tree: Tree, path: str) -> tuple[str, Entry]:
    norm = paths.normalize(path)
    e = tree.lookup(norm)
    if e is None:
        raise AdminError(f"{path}: no such file or directory in the database", EXIT_PROBLEMS)
    return norm, e


def list_entries(tree: Tree, path: str = "", recursive: bool = False) -> list[dict[str, Any]]:
    """A file lists itself; a directory lists its children (all descendants if recursive)."""
    norm, e = _resolve(tree, path)
    if not e.is_dir:
        return [entry_info(norm, e)]
    out: list[dict[str, Any]] = []
    _list_dir(tree, norm + "/" if norm else "", e, recursive, out)
    return out


def _list_dir(
    tree: Tree, prefix: str, d: Entry, recursive: bool, out: list[dict[str, Any]]
) -> None:
    """Sorted by name, each directory directly followed by its contents when recursive."""
    children = tree.children_of(d)
    assert children is not None
    for name, child in sorted(children):
        out.append(entry_info(prefix + name, child))
        if recursive and child.is_dir:
            _list_dir(tree, prefix + name + "/", child, recursive, out)


def long_line(info: dict[str, Any], full_path: bool) -> str:
    when = datetime.fromtimestamp(info["mtime"], UTC).strftime("%Y-%m-%d %H:%M:%S")
    name = info["path"] if full_path else info["name"]
    return (
        f"{info['mode']} {info['size']:>8} v{info['version']:<6} w{info['writer']:<3} {when} {name}"
    )


def read_file(tree: Tree, path: str) -> bytes:
    _, e = _resolve(tree, path)
    if e.is_dir:
        raise AdminError(f"{path}: is a directory", EXIT_PROBLEMS)
    return tree.read(e, 0, e.size)
