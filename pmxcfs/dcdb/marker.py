"""The last tree version this node knew to be shared with the cluster, kept across restarts.

At a resync, entries at or below it are cluster history the leader has seen (this node was only
behind); entries above it were changed here alone (local mode, a forced split) and are the ones
lost+found must keep. msgpack, like the project's other persisted volatile state.
"""

from __future__ import annotations

import logging
import os
import tempfile

import msgpack

log = logging.getLogger("pmxcfs.dcdb")


class SyncMarker:
    """Two versions: up to `version` the tree is cluster history; this node's *own* writes
    count as shared only up to `own`, which lags: corosync delivers a node's own message to
    itself before the others have it, so a write acknowledged as the link went down may be
    this node's alone (kept under lost+found if a sync drops it)."""

    __slots__ = ("_saved", "path")

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._saved: tuple[int, int] | None = None

    def load(self, db_version: int) -> int:
        """0 (save everything) when unknown, or when the database went behind the marker,
        which means it was replaced by another copy."""
        return self.load_both(db_version)[0]

    def load_both(self, db_version: int) -> tuple[int, int]:
        """(version, own); a marker without `own` (older) gives own = version."""
        if self.path is None:
            return 0, 0
        try:
            with open(self.path, "rb") as f:
                doc = msgpack.unpackb(f.read())
            version = int(doc["version"])
            own = int(doc.get("own", version))
        except FileNotFoundError:
            return 0, 0
        except Exception as exc:
            log.warning("ignoring unreadable sync marker %s: %s", self.path, exc)
            return 0, 0
        if not 0 <= version <= db_version:
            return 0, 0
        return version, min(max(own, 0), version)

    def save(self, version: int, own: int | None = None) -> None:
        own = version if own is None else min(own, version)
        if self.path is None or (version, own) == self._saved:
            return
        d = os.path.dirname(self.path) or "."
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=".pmxcfs-synced.", dir=d)
            with os.fdopen(fd, "wb") as f:
                f.write(msgpack.packb({"version": version, "own": own}))
            os.rename(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write sync marker %s: %s", self.path, exc)
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
            return
        self._saved = (version, own)
