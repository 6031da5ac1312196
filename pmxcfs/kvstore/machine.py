"""The kvstore group's Dfsm: the generic machine with protocol version 0 and no verify.

What this group sends from its callbacks in C (the kv re-broadcast after the state step,
§2.4 step 3, and the nodeip announce whenever the mode changes to SYNCED, §2.4 step 4) the
generic machine sends from `StateOutcome.sends` and `Application.synced`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..dfsm.machine import Dfsm
from .app import KvstoreApp
from .codec import PROTOCOL_VERSION


class KvstoreDfsm(Dfsm):
    """One `pve_kvstore_v1` member; keeps the application's idea of "us" current."""

    def __init__(
        self,
        app: KvstoreApp,
        nodeid: int = 0,
        pid: int = 0,
        *,
        name: str = "kvstore",
        clock: Callable[[], float] = time.time,
        joined: bool = True,
    ) -> None:
        super().__init__(
            nodeid, pid, app, PROTOCOL_VERSION, name=name, clock=clock, verify_interval=None,
            joined=joined,
        )  # fmt: skip
        self.kv_app = app
        app.local_member = self.me

    def set_identity(self, nodeid: int, pid: int) -> None:
        super().set_identity(nodeid, pid)
        self.kv_app.local_member = self.me
