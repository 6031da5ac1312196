"""`backup` and `restore` of a whole database file.

Backup uses SQLite's online backup API in one step, i.e. inside one read transaction: the copy
is one point in time even while the daemon keeps committing (WAL readers do not block it).
Restore validates everything first, builds the new file next to the target, and only then
swaps it in; the old database and its WAL are kept as DB.bak-<timestamp>.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import apsw

from .check import check_db
from .dbread import integrity_errors, load_tree, open_ro, read_raw, reading, schema_errors
from .errors import EXIT_PROBLEMS, AdminError
from .files import aside_name, create_private, install, remove_db, scratch_name
from .lock import exclusive


@dataclass(frozen=True, slots=True)
class Result:
    path: str
    version: int
    entries: int
    kept: str | None = None


def _copy(src_path: str, dst_path: str, journal_mode: str) -> None:
    """Online-backup src into a new private file dst."""
    create_private(dst_path)
    src = open_ro(src_path)
    try:
        dst = apsw.Connection(dst_path)
        try:
            with dst.backup("main", src, "main") as job:
                job.step(-1)  # all pages under one read lock: a consistent snapshot
            dst.execute(f"PRAGMA journal_mode={journal_mode}")
        finally:
            dst.close()
    except apsw.Error as exc:
        raise AdminError(f"{src_path}: copy failed: {exc}", EXIT_PROBLEMS) from exc
    finally:
        src.close()


def backup_db(db_path: str, out_path: str, force: bool) -> Result:
    if os.path.lexists(out_path) and not force:
        raise AdminError(f"{out_path}: file exists (use --force to overwrite)", EXIT_PROBLEMS)
    open_ro(db_path).close()  # a clear error for a missing or unreadable source
    tmp = scratch_name(out_path, "backup")
    remove_db(tmp)
    try:
        _copy(db_path, tmp, "DELETE")  # a single self-contained file
        version, entries = _verify_copy(tmp)
        os.replace(tmp, out_path)
    finally:
        remove_db(tmp)
    return Result(out_path, version, entries)


def _verify_copy(path: str) -> tuple[int, int]:
    """Page integrity of the copy; a backup of a database that fails `check` is still kept."""
    with reading(path) as conn:
        bad = integrity_errors(conn)
        if bad:
            raise AdminError(f"backup copy is corrupt: {bad[0]}", EXIT_PROBLEMS)
        if not schema_errors(conn)[1]:
            return 0, 0
        raw = read_raw(conn)
    version = next((r.version for r in raw if r.inode == 0), 0)
    return version, sum(1 for r in raw if r.inode != 0)


def restore_db(backup_path: str, db_path: str) -> Result:
    if os.path.abspath(backup_path) == os.path.abspath(db_path):
        raise AdminError("the backup and the target are the same file")
    report = check_db(backup_path, show_progress=False)
    if not report.ok:
        first = report.problems[0].line()
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise AdminError(
            f"{backup_path}: refusing to restore, check failed: {first}{more}", EXIT_PROBLEMS
        )
    with exclusive(db_path):
        tmp = scratch_name(db_path, "restore")
        remove_db(tmp)
        try:
            _copy(backup_path, tmp, "WAL")  # the daemon's mode; closing checkpoints the WAL
            tree = load_tree(tmp)  # verify the bytes that will be installed
            kept = install(tmp, db_path)
        finally:
            remove_db(tmp)
    return Result(db_path, tree.version, len(tree.index) - 1, kept)


def snapshot(db_path: str) -> str:
    """Copy the database to DB.bak-<timestamp> before changing it in place (repair)."""
    bak = aside_name(db_path)
    _copy(db_path, bak, "DELETE")
    return bak
