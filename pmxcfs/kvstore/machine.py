"""The kvstore group's Dfsm: the generic machine plus the two sends it has no hook for.

C sends both from inside its callbacks: the kv re-broadcast from process_state (§2.4 step 3)
and the nodeip announce from the "synced" hook, which runs whenever the mode *changes* to
SYNCED (§2.4 step 4; a SYNCED -> SYNCED confchg does not announce). The generic machine's
StateOutcome only carries UPDATE state messages and it has no synced hook, so this subclass
runs each event as usual and then sends what the application owes, as ordinary NORMAL
messages (same counter, same order on the wire as C: re-broadcast first, then nodeip).
Entering SYNCED is seen as a rise of `stats.syncs`, which the machine counts exactly on
mode changes to SYNCED.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..dfsm.codec import KVSTORE_PROTOCOL_VERSION
from ..dfsm.machine import Action, Dfsm, Event, LocalRequest
from .app import KvstoreApp


class KvstoreDfsm(Dfsm):
    """One `pve_kvstore_v1` member; works unchanged under DfsmDriver and in replays."""

    def __init__(
        self,
        app: KvstoreApp,
        nodeid: int = 0,
        pid: int = 0,
        *,
        name: str = "kvstore",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            nodeid, pid, app, KVSTORE_PROTOCOL_VERSION, name=name, clock=clock,
            verify_interval=None,
        )  # fmt: skip
        self.kv_app = app
        app.local_member = self.me

    def set_identity(self, nodeid: int, pid: int) -> None:
        super().set_identity(nodeid, pid)
        self.kv_app.local_member = self.me

    def feed(self, event: Event) -> list[Action]:
        syncs = self.stats.syncs
        return self._settle(super().feed(event), syncs)

    def deliver(self, nodeid: int, pid: int, data: bytes) -> list[Action]:
        syncs = self.stats.syncs
        return self._settle(super().deliver(nodeid, pid, data), syncs)

    def _settle(self, out: list[Action], syncs: int) -> list[Action]:
        owed = self.kv_app.take_owed()
        if self.stats.syncs != syncs:
            owed.extend(self.kv_app.synced())
        for subtype, payload in owed:
            out.extend(super().feed(LocalRequest(subtype, payload)))
        return out
