"""corosync's quorum for this node: the flag the filesystem shows, and the votes the write
gate needs (status-ipc §5.4).

Reconnects after corosync restarts; while there is no connection the node is not quorate.
`dispatch_ready` lets quorum notifications already pending be handled before the CPG
deliveries that follow them (the reference's poll priorities; issue 10, loss 1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ..constants import RESTART_DELAY
from ..dcdb.writegate import WriteGate
from ..status.state import ClusterStatus

if TYPE_CHECKING:
    from cpg import Quorum, Votequorum

log = logging.getLogger("pmxcfs.cluster")


class QuorumWatcher:
    def __init__(
        self,
        status: ClusterStatus,
        gate: WriteGate,
        nodeid: Callable[[], int],
        restart_delay: float = RESTART_DELAY,
    ) -> None:
        self.status = status
        self.gate = gate
        self.nodeid = nodeid
        self.restart_delay = restart_delay
        self._quorum: Quorum | None = None
        self._votequorum: Votequorum | None = None  # queried at each notification
        self._corosync_error: type[Exception] = Exception  # cpg.CorosyncError once running

    def _set_quorate(self, quorate: bool) -> None:
        old = self.status.quorate
        if quorate and not old:
            log.info("node has quorum")
        elif old and not quorate:
            log.error("node lost quorum")
        self.status.set_quorate(quorate)
        self._update_votes()
        self.gate.changed()

    def _update_votes(self) -> None:
        """votequorum's threshold and the quorum device's votes (one local IPC round trip
        per quorum notification); the nodelist's votes come from cmap."""
        from cpg import CorosyncError, Votequorum

        nodeid = self.nodeid()
        if nodeid == 0:
            return
        try:
            vq = self._votequorum
            if vq is None or vq.closed:
                vq = self._votequorum = Votequorum()
            info = vq.getinfo(nodeid)
        except CorosyncError as exc:
            log.debug("votequorum_getinfo failed: %s", exc)
            if self._votequorum is not None:
                self._votequorum.finalize()
                self._votequorum = None
            return
        self.gate.set_votes(info.quorum, info.qdevice_votes_cast)

    def dispatch_ready(self) -> None:
        """Handle quorum notifications already pending, now (an error is the run task's).
        Runs before every CPG dispatch: no import or context manager here."""
        q = self._quorum
        if q is not None:
            try:
                q.dispatch_ready()
            except Exception as exc:
                if not isinstance(exc, self._corosync_error):
                    raise

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from cpg import CorosyncError, Quorum

        self._corosync_error = CorosyncError
        self.status.set_quorate(False)
        task_status.started()
        try:
            while True:
                try:
                    q = Quorum(handler=lambda ch: self._set_quorate(ch.quorate))
                except CorosyncError as exc:
                    log.debug("quorum_initialize failed: %s", exc)
                    self.status.set_quorate(False)
                    await trio.sleep(self.restart_delay)
                    continue
                self._quorum = q
                try:
                    await q.run()
                except CorosyncError as exc:
                    log.error("quorum service lost: %s", exc)
                finally:
                    self._quorum = None
                    q.finalize()
                    self.status.set_quorate(False)
                    self.gate.changed()
                await trio.sleep(1)
        finally:
            if self._votequorum is not None:
                self._votequorum.finalize()
