"""Per-node lock table for priv/lock/<name> (spec §7): first-seen time plus identity checksum.

Expiry uses the local monotonic-ish wall clock of first sight, never the stored mtime,
because node clocks drift.
"""

from __future__ import annotations

from .constants import LOCK_TIMEOUT


class LockTable:
    __slots__ = ("_table", "timeout")

    def __init__(self, timeout: int = LOCK_TIMEOUT) -> None:
        self._table: dict[str, tuple[float, bytes]] = {}
        self.timeout = timeout

    def touch(self, path: str, csum: bytes, now: float) -> None:
        self._table[path] = (now, csum)

    def forget(self, path: str) -> None:
        self._table.pop(path, None)

    def reset(self, locks: dict[str, bytes], now: float) -> None:
        self._table = {p: (now, c) for p, c in locks.items()}

    def is_expired(self, path: str, csum: bytes, now: float) -> bool:
        """Check and refresh: an unknown or changed lock restarts its timer at now."""
        cur = self._table.get(path)
        if cur is None or cur[1] != csum:
            self._table[path] = (now, csum)
            return False
        first = cur[0]
        return now > first and now - first > self.timeout

    def __contains__(self, path: str) -> bool:
        return path in self._table
