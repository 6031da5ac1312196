"""Cluster mode: the services of one node over corosync, built together, started in order.

Each job is its own service (pmxcfs/services/, pmxcfs/kvstore/service.py) with its
dependencies passed in; this module only composes them around the one write gate they
share. Every service reconnects by itself after corosync restarts (wire-protocol §2.7).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import trio

from .constants import DB_DIR, HOST_COROSYNC_CONF, REJOIN_DELAY, RESTART_DELAY
from .dcdb.backend import ClusterBackend
from .dcdb.writegate import WriteGate
from .dfsm.machine import DEFAULT_VERIFY_INTERVAL, ConfChg
from .journal import GroupCommit
from .kvstore.service import KvstoreService
from .services.confmirror import CorosyncConfMirror
from .services.quorum import QuorumWatcher
from .services.replication import ReplicationOptions, ReplicationService
from .services.timers import Ticker
from .status.clusterlog import ClusterLog
from .status.state import ClusterStatus
from .tree import Tree

log = logging.getLogger("pmxcfs.cluster")



@dataclass
class ClusterOptions:
    corosync_conf_path: str = HOST_COROSYNC_CONF
    lost_found_dir: str | None = os.path.join(DB_DIR, "lost+found")
    sync_marker_path: str | None = os.path.join(DB_DIR, ".pmxcfs-synced")
    verify_interval: float | None = DEFAULT_VERIFY_INTERVAL
    restart_delay: float = RESTART_DELAY
    rejoin_delay: float = REJOIN_DELAY
    cfgtool: tuple[str, ...] = ("corosync-cfgtool", "-R")


class ClusterNode:
    """quorum watcher, corosync.conf mirror, replication, status group and timer."""

    def __init__(
        self,
        tree: Tree,
        journal: GroupCommit,
        status: ClusterStatus,
        options: ClusterOptions,
        *,
        clog: ClusterLog | None = None,
        node_ip: str | None = None,
    ) -> None:
        self.status = status
        # writes need corosync quorum and a replication group holding quorum's votes
        self.gate = WriteGate(lambda: status.quorate)
        self.gate.listeners.append(self._on_writable)
        #: the status group (online flags, IPs, RRD, cluster log); without it the online
        #: flags follow the replication group
        self.kvstore: KvstoreService | None = None
        if clog is not None and node_ip is not None:
            self.kvstore = KvstoreService(
                status, clog, status.nodename, node_ip, restart_delay=options.restart_delay
            )
        self.quorum = QuorumWatcher(
            status, self.gate, lambda: self.replication.dfsm.nodeid, options.restart_delay
        )
        self.replication = ReplicationService(
            tree,
            journal,
            self.gate,
            ReplicationOptions(
                lost_found_dir=options.lost_found_dir,
                sync_marker_path=options.sync_marker_path,
                verify_interval=options.verify_interval,
                restart_delay=options.restart_delay,
                rejoin_delay=options.rejoin_delay,
            ),
            cluster_log=self._cluster_log if self.kvstore is not None else None,
            priority=self.quorum.dispatch_ready,
            on_confchg=self._online_from_dcdb if self.kvstore is None else None,
        )
        self.confmirror = CorosyncConfMirror(
            tree,
            status,
            self.gate,
            options.corosync_conf_path,
            lambda: self.replication.dfsm.nodeid,
            cfgtool=options.cfgtool,
            restart_delay=options.restart_delay,
        )
        self.ticker = Ticker([self.replication.tick])

    @property
    def backend(self) -> ClusterBackend:
        """The filesystem's write path in cluster mode."""
        return self.replication.backend

    def service_names(self) -> list[str]:
        names = ["quorum", "corosync.conf mirror", "replication (dcdb)"]
        if self.kvstore is not None:
            names.append("status group (kvstore)")
        return [*names, "timer"]

    # ------------------------------------------------------------------ shared reactions

    def _on_writable(self, writable: bool) -> None:
        """Writes open or close (also without a corosync quorum flip): the modes change."""
        if writable:
            log.info("dcdb: writes accepted")
        else:
            log.warning("dcdb: writes refused (%s)", self.gate.reason())
        for fn in self.status.quorum_listeners:
            fn(writable)

    def _online_from_dcdb(self, chg: ConfChg) -> None:
        self.status.set_online({m[0] for m in chg.members})

    def _cluster_log(self, msg: str) -> None:
        """What the cluster should see (lost+found saves): a warning in the cluster log."""
        if self.kvstore is not None:
            self.kvstore.log("root", "pmxcfs", 4, msg)

    # ------------------------------------------------------------------ run

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every service (quorum first: quorum starts false), then serve until
        cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.quorum.run)
            await nursery.start(self.confmirror.run)
            await nursery.start(self.replication.run)
            if self.kvstore is not None:
                nursery.start_soon(self.kvstore.run)
            await nursery.start(self.ticker.run)
            task_status.started()
