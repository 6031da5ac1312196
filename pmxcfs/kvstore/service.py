"""The kvstore group over corosync: join `pve_kvstore_v1`, keep it joined, and give local callers
set_status and cluster-log writes that reach every node (status-ipc §2, §3.2, §7).

The group membership itself is the dfsm GroupRunner, as for dcdb (reconnect after
`restart_delay`, never again after VERSION_ERROR/ERROR, as in C). Local writes are
applied at once and multicast without waiting; while no CPG handle exists they stay local
(C skips the send silently then).
"""

from __future__ import annotations

import logging
import os

from ..constants import RESTART_DELAY
from ..dfsm.driver import DfsmDriver
from ..dfsm.runner import GroupRunner
from ..status.clusterlog import ClusterLog
from ..status.state import ClusterStatus
from .app import LOG, UPDATE, KvstoreApp
from .codec import GROUP
from .machine import KvstoreDfsm

log = logging.getLogger("pmxcfs.kvstore")


class KvstoreService:
    """The status group of one node."""

    def __init__(
        self,
        status: ClusterStatus,
        clog: ClusterLog,
        nodename: str,
        node_ip: str,
        *,
        restart_delay: float = RESTART_DELAY,
    ) -> None:
        if status.nodename != nodename:
            raise ValueError(f"status is for {status.nodename!r}, not {nodename!r}")
        self.status = status
        self.clog = clog
        self.nodename = nodename
        self.restart_delay = restart_delay
        self.app = KvstoreApp(status, clog, node_ip)
        # nothing can be sent before the first connection
        self.dfsm = KvstoreDfsm(self.app, 0, os.getpid(), joined=False)
        self.driver = DfsmDriver(self.dfsm)
        self.runner = GroupRunner("kvstore", GROUP, self.driver, restart_delay)
        self.connected = self.runner.connected  # set once the group has been joined

    # ------------------------------------------------------------------ local callers

    def set_status(self, key: bytes, value: bytes) -> int:
        """§2.5 set_status: 0, -EFBIG (nothing stored or sent) or -ENOMEM (bad rrd/nodeip
        value; multicast anyway, like C)."""
        res, payload = self.app.set_status(key, value)
        if payload is not None:
            self._send(UPDATE, payload)
        return res

    def log(
        self, ident: str | bytes, tag: str | bytes, priority: int, msg: str | bytes,
        pid: int | None = None,
    ) -> bool:  # fmt: skip
        """§3.2: add a local cluster-log entry and multicast it; False if priority >= 8."""
        payload = self.app.log_entry(ident, tag, priority, msg, pid)
        if payload is None:
            return False
        self._send(LOG, payload)
        return True

    def _send(self, subtype: int, payload: bytes) -> None:
        if self.runner.joined:
            self.driver.send_nowait(subtype, payload)

    # ------------------------------------------------------------------ corosync

    async def run(self) -> None:
        """Stay in the group until cancelled (reconnects after corosync restarts)."""
        await self.runner.run()
