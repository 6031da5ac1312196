"""Group commit: many applied cluster messages, one SQLite transaction.

Every node applies every replicated operation, and one transaction per operation makes the
SQLite commit (WAL frames, shm locks) the largest share of a delivery's cost. While a
cluster message is applied with `defer` set, its rows are staged;
`flush` writes everything staged in one transaction. The database therefore always holds a
*prefix* of the totally ordered operations this node applied, never a gap, so after a crash
the node with the highest version still has every operation at or below it.

The cluster layer flushes before any caller on this node is answered (an acknowledged
write is on disk on the node that acknowledged it, as with the reference) and otherwise
within FLUSH_DELAY; a peer's operation lost in a crash comes back with the next state
transfer. Without `defer` (state transfer, local mode) a commit writes what is staged plus
its own rows at once, so a failure is reported to that caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .tree import Row

FLUSH_DELAY = 0.05  # seconds a peer's operation may wait in memory before reaching the disk


class Store(Protocol):
    def commit(self, upserts: Sequence[Row], deletes: Sequence[int]) -> None: ...


class GroupCommit:
    """A Journal for Tree that stages rows while deferring."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._rows: dict[int, Row] = {}
        self._deletes: set[int] = set()
        #: stage instead of writing (set around applying a cluster message)
        self.defer = False
        self.transactions = 0  # written since the start (pmxcfs-admin status)

    @property
    def staged(self) -> bool:
        return bool(self._rows or self._deletes)

    def commit(self, upserts: Sequence[Row], deletes: Sequence[int]) -> None:
        if self.defer:
            self._stage(upserts, deletes)
            return
        if not self.staged:
            self.store.commit(upserts, deletes)
            self.transactions += 1
            return
        # staged rows first: one transaction keeps the prefix property
        rows, dels = dict(self._rows), set(self._deletes)
        self._stage(upserts, deletes, rows, dels)
        self._write(rows, dels)

    def flush(self) -> None:
        """Write what is staged; raises (and keeps it staged) if the store fails."""
        if self.staged:
            self._write(self._rows, self._deletes)

    def discard(self) -> None:
        """Forget what is staged (after a failed flush the tree is in error anyway)."""
        self._rows = {}
        self._deletes = set()

    def _stage(
        self,
        upserts: Sequence[Row],
        deletes: Sequence[int],
        rows: dict[int, Row] | None = None,
        dels: set[int] | None = None,
    ) -> None:
        rows = self._rows if rows is None else rows
        dels = self._deletes if dels is None else dels
        # the store applies deletes before upserts within one commit; keep that per call
        for inode in deletes:
            rows.pop(inode, None)
            dels.add(inode)
        for row in upserts:
            dels.discard(row[0])
            rows[row[0]] = row

    def _write(self, rows: dict[int, Row], dels: set[int]) -> None:
        self.store.commit(list(rows.values()), sorted(dels))
        self.transactions += 1
        self._rows = {}
        self._deletes = set()
