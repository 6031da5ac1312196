"""Keeps one DFSM in one CPG group for the life of the daemon (wire-protocol §2.7).

Connect, learn our identity, join, send directly or through the sender task, leave when the
machine asks to, and start over `rejoin_delay` later after a leave (a resync: the sooner the
node is back, the sooner its group holds quorum's votes again), `restart_delay` after a lost
corosync;
stop for good in ERROR / VERSION_ERROR. The dcdb and kvstore services differ only in the
group, the hooks and the log prefix.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import trio

from .driver import DfsmDriver
from .machine import ConfChg

log = logging.getLogger("pmxcfs.cluster")  # the services' domain, as before the split


class GroupRunner:
    def __init__(
        self,
        name: str,
        group: bytes,
        driver: DfsmDriver,
        restart_delay: float,
        *,
        on_identity: Callable[[], None] | None = None,
        on_confchg: Callable[[ConfChg], None] | None = None,
        after_dispatch: Callable[[], None] | None = None,
        before_dispatch: Callable[[], None] | None = None,
        rejoin_delay: float | None = None,
    ) -> None:
        self.name = name
        self.group = group  # the exact bytes joined (pmxcfs counts the terminating NUL)
        self.driver = driver
        self.restart_delay = restart_delay
        self.rejoin_delay = restart_delay if rejoin_delay is None else rejoin_delay
        self.on_identity = on_identity
        self.on_confchg = on_confchg
        self.after_dispatch = after_dispatch
        self.before_dispatch = before_dispatch
        self.connected = trio.Event()  # set at the first successful join
        self.joined = False  # a handle is joined right now (sends can go out)

    def _confchg(self, ev: object) -> None:
        from cpg import CpgConfchg

        if isinstance(ev, CpgConfchg):
            chg = ConfChg(
                tuple((a.nodeid, a.pid) for a in ev.members),
                tuple((a.nodeid, a.pid) for a in ev.left),
                tuple((a.nodeid, a.pid) for a in ev.joined),
            )
            self.driver.feed(chg)
            if self.on_confchg is not None:
                self.on_confchg(chg)

    async def run(self) -> None:
        from cpg import CorosyncError, Cpg, group_name

        group = group_name(self.group, include_nul=False)
        dfsm = self.driver.dfsm
        warned = False
        while True:
            if not dfsm.restartable:
                log.error("%s: stopped in mode %s until pmxcfs restarts", self.name, dfsm.mode.name)
                await trio.sleep_forever()
            try:
                cpg = Cpg(handler=self._confchg, deliver_handler=self.driver.deliver)
            except CorosyncError as exc:
                if not warned:
                    log.error("%s: cpg_initialize failed: %s", self.name, exc)
                    warned = True
                await trio.sleep(self.restart_delay)
                continue
            warned = False
            delay = self.restart_delay
            cpg.after_dispatch = self.after_dispatch
            cpg.before_dispatch = self.before_dispatch
            cpg.hot_wait = True  # deliveries are the hot path (cpg/hotwait.py)
            if dfsm.nodeid == 0:
                dfsm.set_identity(cpg.nodeid, os.getpid())
            if self.on_identity is not None:
                self.on_identity()
            self.driver.reset()
            try:
                async with trio.open_nursery() as n:
                    n.start_soon(cpg.run)
                    await cpg.join(group, include_nul=False)
                    log.info("%s: joined group as node %d", self.name, cpg.nodeid)
                    n.start_soon(self.driver.run_sender, cpg.mcast)
                    self.driver.direct = cpg.mcast_direct
                    self.joined = True
                    self.connected.set()
                    await self.driver.leave_requested.wait()
                    log.warning("%s: leaving group (mode %s)", self.name, dfsm.mode.name)
                    delay = self.rejoin_delay
                    self.joined = False
                    try:
                        await cpg.leave()
                    except CorosyncError as exc:
                        log.warning("%s: cpg_leave failed: %s", self.name, exc)
                    n.cancel_scope.cancel()
            except CorosyncError as exc:
                log.error("%s: corosync connection lost: %s", self.name, exc)
            finally:
                self.joined = False
                cpg.finalize()
                self.driver.disconnect()
            await trio.sleep(delay)
