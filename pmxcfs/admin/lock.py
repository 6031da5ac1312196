"""The daemon's instance lock (spec §9.2 step 6): writers must not touch a database it serves.

We take the same exclusive flock the daemon takes and hold it for the whole operation, so a
daemon that starts meanwhile waits (it retries for ~10 s) instead of loading a half-written file.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from ..constants import LOCKFILE_NAME
from .errors import EXIT_LOCKED, AdminError


def lockfile_for(db_path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(db_path)), LOCKFILE_NAME)


@contextmanager
def exclusive(db_path: str) -> Iterator[None]:
    """Hold the instance lock of the database's directory, or refuse at once."""
    path = lockfile_for(db_path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise AdminError(f"cannot open lock file {path}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AdminError(
                f"{db_path}: in use by a running pmxcfs ({path} is locked); stop pve-cluster first",
                EXIT_LOCKED,
            ) from None
        yield
    finally:
        os.close(fd)
