"""The kvstore group over corosync: join `pve_kvstore_v1`, keep it joined, and give local callers
set_status and cluster-log writes that reach every node (status-ipc §2, §3.2, §7).

Modelled on the dcdb service: a CPG handle whose callbacks feed the Dfsm synchronously, a
DfsmDriver that multicasts in order, a leave when the machine asks for it, and a reconnect
after `restart_delay` (never again after VERSION_ERROR/ERROR, as in C). Local writes are
applied at once and multicast without waiting; while no CPG handle exists they stay local
(C skips the send silently then).
"""

from __future__ import annotations

import logging
import os

import trio

from ..dfsm.driver import DfsmDriver
from ..dfsm.machine import ConfChg, Deliver
from ..status.clusterlog import ClusterLog
from ..status.state import ClusterStatus
from .app import LOG, UPDATE, KvstoreApp
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
        restart_delay: float = 5.0,
    ) -> None:
        if status.nodename != nodename:
            raise ValueError(f"status is for {status.nodename!r}, not {nodename!r}")
        self.status = status
        self.clog = clog
        self.nodename = nodename
        self.restart_delay = restart_delay
        self.app = KvstoreApp(status, clog, node_ip)
        self.dfsm = KvstoreDfsm(self.app, 0, os.getpid())
        self.dfsm.joined = False  # nothing can be sent before the first connection
        self.driver = DfsmDriver(self.dfsm)
        self.connected = trio.Event()  # set once the group has been joined
        self._has_handle = False

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
        if self._has_handle:
            self.driver.send_nowait(subtype, payload)

    # ------------------------------------------------------------------ corosync

    def _on_cpg(self, ev: object) -> None:
        from cpg import CpgConfchg, CpgDeliver

        if isinstance(ev, CpgDeliver):
            self.driver.feed(Deliver(ev.nodeid, ev.pid, ev.payload))
        elif isinstance(ev, CpgConfchg):
            self.driver.feed(
                ConfChg(
                    tuple((a.nodeid, a.pid) for a in ev.members),
                    tuple((a.nodeid, a.pid) for a in ev.left),
                    tuple((a.nodeid, a.pid) for a in ev.joined),
                )
            )

    async def run(self) -> None:
        """Stay in the group until cancelled (reconnects after corosync restarts)."""
        from cpg import PVE_KVSTORE_GROUP, CorosyncError, Cpg

        warned = False
        while True:
            if not self.dfsm.restartable:
                log.error("kvstore: stopped in mode %s until pmxcfs restarts", self.dfsm.mode.name)
                await trio.sleep_forever()
            try:
                cpg = Cpg(handler=self._on_cpg, deliver_handler=self.driver.deliver)
            except CorosyncError as exc:
                if not warned:
                    log.error("kvstore: cpg_initialize failed: %s", exc)
                    warned = True
                await trio.sleep(self.restart_delay)
                continue
            warned = False
            if self.dfsm.nodeid == 0:
                self.dfsm.set_identity(cpg.nodeid, os.getpid())
            self.driver.reset()
            try:
                async with trio.open_nursery() as n:
                    n.start_soon(cpg.run)
                    await cpg.join(PVE_KVSTORE_GROUP, include_nul=False)
                    log.info("kvstore: joined group as node %d", cpg.nodeid)
                    n.start_soon(self.driver.run_sender, cpg.mcast)
                    self.driver.direct = cpg.mcast_direct
                    self._has_handle = True
                    self.connected.set()
                    await self.driver.leave_requested.wait()
                    log.warning("kvstore: leaving group (mode %s)", self.dfsm.mode.name)
                    self._has_handle = False
                    try:
                        await cpg.leave()
                    except CorosyncError as exc:
                        log.warning("kvstore: cpg_leave failed: %s", exc)
                    n.cancel_scope.cancel()
            except CorosyncError as exc:
                log.error("kvstore: corosync connection lost: %s", exc)
            finally:
                self._has_handle = False
                cpg.finalize()
                self.driver.disconnect()
            await trio.sleep(self.restart_delay)
