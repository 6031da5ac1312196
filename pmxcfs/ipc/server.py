"""The libqb server named `pve2` (service id 1, shared memory), run in the daemon's nursery.

`cpg.ipcs.IpcServer` drives libqb from trio; this module only decides who may connect
(§6.3) and hands each request to `ops.handle`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from .ops import IpcState, Peer, check_access, handle

log = logging.getLogger("pmxcfs.ipc")

SERVICE_NAME = "pve2"
SERVICE_ID = 1


class IpcService:
    """`await nursery.start(service.run)` listens (or raises OSError) and serves until cancelled.

    `on_stop` runs first thing when the server is being torn down (the daemon creates its
    restart flag there, before clients lose the socket, as C does).
    """

    def __init__(
        self,
        state: IpcState,
        www_gid: int,
        *,
        name: str = SERVICE_NAME,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.state = state
        self.www_gid = www_gid
        self.name = name
        self.on_stop = on_stop

    def _accept(self, uid: int, gid: int, pid: int) -> Peer | None:
        peer = check_access(uid, gid, pid, self.www_gid)
        if peer is None:
            log.error("connection from bad user %d (gid %d) - rejected", uid, gid)
        return peer

    def _process(self, conn: object, request: bytes) -> tuple[int, bytes]:
        peer = conn.context  # type: ignore[attr-defined]
        return handle(self.state, peer, request)

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        from cpg.ipcs import IpcServer

        server = IpcServer(
            self.name,
            SERVICE_ID,
            accept=self._accept,
            process=self._process,
            on_stop=self.on_stop,
        )
        # started() once libqb listens; an OSError before that reaches nursery.start as is
        await server.run(task_status=task_status)
