"""`ls` and `cat`: look into a database without mounting it (read-only)."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from typing import Any

from .. import paths
from ..tree import Entry, Tree
from .errors import EXIT_PROBLEMS, AdminError


def fuse_mode(path: str, e: Entry) -> int:
    """The mode the mounted filesystem shows for this entry when quorate (spec §4.3)."""
    private = paths.is_private(path)
    if e.is_dir:
        return stat.S_IFDIR | (0o700 if private else 0o755)
    if paths.is_openvz_script(e.name):
        return stat.S_IFREG | (0o700 if private else 0o740)
    return stat.S_IFREG | (0o600 if private else 0o640)


def entry_info(path: str, e: Entry) -> dict[str, Any]:
    return {
        "path": path,
        "name": e.name or "/",
        "type": "dir" if e.is_dir else "file",
        "mode": stat.filemode(fuse_mode(path, e)),
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
    _list_dir(norm + "/" if norm else "", e, recursive, out)
    return out


def _list_dir(prefix: str, d: Entry, recursive: bool, out: list[dict[str, Any]]) -> None:
    """Sorted by name, each directory directly followed by its contents when recursive."""
    assert d.children is not None
    for name, child in sorted(d.children.items()):
        out.append(entry_info(prefix + name, child))
        if recursive and child.is_dir:
            _list_dir(prefix + name + "/", child, recursive, out)


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
    return e.data
