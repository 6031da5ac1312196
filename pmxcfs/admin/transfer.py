"""`export` and `import`: a database as a plain directory tree and back (keeps mtimes).

Import is create_pmxcfs_db done right (spec §10.1): recursive, directories included, mtimes
kept, and built in a scratch file through Tree operations and Database, so the version/inode
rules and the VMID and size limits hold exactly as if the daemon had written it.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from ..constants import MAX_FILE_SIZE
from ..storage import Database, DatabaseError
from ..tree import TreeError
from .dbread import load_tree
from .errors import EXIT_PROBLEMS, AdminError
from .files import install, non_empty_db, remove_db, scratch_name
from .lock import exclusive
from .progress import Progress

DEFAULT_EXCLUDES = (".git",)
_WRITER = 0  # tools write as node 0, like local mode


@dataclass(frozen=True, slots=True)
class Item:
    path: str  # memdb path, '/'-separated
    is_dir: bool
    mtime: int
    size: int


def _excluded(name: str, excludes: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in excludes)


# ---------------------------------------------------------------------------------- export


def export_db(db_path: str, out_dir: str, force: bool, excludes: Sequence[str]) -> int:
    """Write every entry below out_dir; with force, make out_dir mirror the database."""
    tree = load_tree(db_path)
    entries = list(tree.walk())
    if os.path.lexists(out_dir):
        if not os.path.isdir(out_dir) or os.path.islink(out_dir):
            raise AdminError(f"{out_dir}: not a directory")
        if os.listdir(out_dir) and not force:
            raise AdminError(
                f"{out_dir}: directory is not empty (use --force to make it mirror the database)",
                EXIT_PROBLEMS,
            )
    else:
        os.mkdir(out_dir, 0o700)  # the tree holds private keys
    if force:
        _prune(out_dir, {p: e.is_dir for p, e in entries}, excludes)
    with Progress("exporting", len(entries)) as bar:
        for path, e in entries:
            target = os.path.join(out_dir, path)
            if e.is_dir:
                if not os.path.isdir(target):
                    os.mkdir(target, 0o750)
            else:
                _write_file(target, e.data, e.mtime)
            bar.step()
    for path, e in reversed(entries):  # children first: creating them changed the dir mtime
        if e.is_dir:
            os.utime(os.path.join(out_dir, path), (e.mtime, e.mtime), follow_symlinks=False)
    return len(entries)


def _write_file(target: str, data: bytes, mtime: int) -> None:
    if os.path.islink(target):
        os.unlink(target)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.utime(target, (mtime, mtime))


def _prune(out_dir: str, wanted: dict[str, bool], excludes: Sequence[str]) -> None:
    """Remove what the database does not have (or has with another type); keep excludes."""
    for dirpath, dirnames, filenames in os.walk(out_dir):
        rel_dir = os.path.relpath(dirpath, out_dir)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        for name in list(dirnames):
            full = os.path.join(dirpath, name)
            if _excluded(name, excludes):
                dirnames.remove(name)
            elif os.path.islink(full) or wanted.get(rel_dir + name) is not True:
                dirnames.remove(name)
                if os.path.islink(full):
                    os.unlink(full)
                else:
                    shutil.rmtree(full)
        for name in filenames:
            if not _excluded(name, excludes) and wanted.get(rel_dir + name) is not False:
                os.unlink(os.path.join(dirpath, name))


# ---------------------------------------------------------------------------------- import


def scan(src_dir: str, excludes: Sequence[str]) -> list[Item]:
    """Everything to import, parents first; refuses what pmxcfs cannot hold, all at once."""
    if not os.path.isdir(src_dir):
        raise AdminError(f"{src_dir}: not a directory")
    items: list[Item] = []
    errors: list[str] = []
    for dirpath, dirnames, filenames in os.walk(src_dir, onerror=_raise):
        dirnames.sort()
        rel = os.path.relpath(dirpath, src_dir)
        prefix = "" if rel == "." else rel + "/"
        for name in sorted(dirnames + filenames):
            if _excluded(name, excludes):
                if name in dirnames:
                    dirnames.remove(name)
                continue
            full = os.path.join(dirpath, name)
            path = prefix + name
            try:
                os.fsencode(name).decode("utf-8")
            except UnicodeDecodeError:
                errors.append(f"{full}: name is not valid UTF-8")
                continue
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                items.append(Item(path, True, int(st.st_mtime), 0))
            elif stat.S_ISREG(st.st_mode):
                if st.st_size > MAX_FILE_SIZE:
                    errors.append(
                        f"{full}: {st.st_size} bytes, more than the pmxcfs limit of "
                        f"{MAX_FILE_SIZE} bytes (1 MiB)"
                    )
                items.append(Item(path, False, int(st.st_mtime), st.st_size))
            else:
                kind = "symlink" if stat.S_ISLNK(st.st_mode) else "special file"
                errors.append(f"{full}: is a {kind}; pmxcfs holds only files and directories")
    if errors:
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise AdminError(f"cannot import: {errors[0]}{more}", EXIT_PROBLEMS)
    # os.walk visits a dir's entries before descending, so parents always come first.
    return items


def _raise(exc: OSError) -> None:
    raise AdminError(f"{exc.filename}: {exc.strerror}")


def import_dir(src_dir: str, db_path: str, force: bool, excludes: Sequence[str]) -> int:
    """Build a fresh database from src_dir and put it in place of db_path."""
    items = scan(src_dir, excludes)
    with exclusive(db_path):
        if non_empty_db(db_path) and not force:
            raise AdminError(
                f"{db_path}: database exists and is not empty (use --force to replace it; "
                "the old file is kept as a .bak copy)",
                EXIT_PROBLEMS,
            )
        tmp = scratch_name(db_path, "import")
        remove_db(tmp)
        try:
            _build(src_dir, tmp, items)
            load_tree(tmp)  # what the daemon will see must load
            install(tmp, db_path)
        finally:
            remove_db(tmp)
    return len(items)


def _build(src_dir: str, tmp: str, items: Sequence[Item]) -> None:
    try:
        db, tree = Database.open(tmp)
    except DatabaseError as exc:
        raise AdminError(f"{tmp}: {exc}") from exc
    try:
        with Progress("importing", len(items)) as bar:
            for item in items:
                try:
                    if item.is_dir:
                        tree.mkdir(item.path, _WRITER, item.mtime)
                    else:
                        with open(os.path.join(src_dir, item.path), "rb") as f:
                            data = f.read(MAX_FILE_SIZE + 1)
                        tree.create(item.path, _WRITER, item.mtime)
                        if data:
                            tree.write(item.path, 0, data, _WRITER, item.mtime, truncate=True)
                except TreeError as exc:
                    raise AdminError(
                        f"cannot import {item.path}: {_explain(exc)}", EXIT_PROBLEMS
                    ) from exc
                except OSError as exc:
                    raise AdminError(f"{exc.filename}: {exc.strerror}") from exc
                bar.step()
    finally:
        db.close()


def _explain(exc: TreeError) -> str:
    if exc.errno == errno.EFBIG:
        return f"file larger than {MAX_FILE_SIZE} bytes"
    msg = str(exc.args[1]) if len(exc.args) > 1 else ""
    if not msg or msg == errno.errorcode.get(exc.errno):
        msg = os.strerror(exc.errno)
    return msg
