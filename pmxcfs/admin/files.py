"""Replacing a database file safely: the old one is set aside with its WAL, never deleted."""

from __future__ import annotations

import contextlib
import os
import time

# SQLite finds these by name next to the database; they move together with it.
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")


def aside_name(db_path: str) -> str:
    """DB.bak-<timestamp>, with a counter when that name is taken."""
    base = f"{db_path}.bak-{time.strftime('%Y%m%d-%H%M%S')}"
    bak = base
    n = 1
    while os.path.lexists(bak):
        bak = f"{base}.{n}"
        n += 1
    return bak


def set_aside(db_path: str) -> str | None:
    """Rename the database (and side files) to DB.bak-<timestamp>; return the new name."""
    if not os.path.lexists(db_path):
        return None
    bak = aside_name(db_path)
    os.replace(db_path, bak)
    for suffix in SIDE_SUFFIXES:
        if os.path.lexists(db_path + suffix):
            os.replace(db_path + suffix, bak + suffix)
    return bak


def remove_db(path: str) -> None:
    """Remove a scratch database of ours with its side files."""
    for p in (path, *(path + s for s in SIDE_SUFFIXES)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install(tmp_path: str, db_path: str) -> str | None:
    """Move a finished scratch database into place, keeping the old one aside."""
    fsync_file(tmp_path)
    bak = set_aside(db_path)
    os.replace(tmp_path, db_path)
    fsync_dir(db_path)
    return bak


def scratch_name(db_path: str, what: str) -> str:
    """A path next to the target, so the final rename stays on one filesystem."""
    return f"{db_path}.{what}-{os.getpid()}"


def non_empty_db(path: str) -> bool:
    return os.path.exists(path) and os.path.getsize(path) > 0


def create_private(path: str) -> None:
    """An empty file only root can read: backups hold the cluster's private keys."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
