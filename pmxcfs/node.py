"""The composition root: every object of one pmxcfs node, built in one place, in order.

The daemon (pmxcfs/daemon.py) and the in-process test fixtures both build their node here, so
what runs is what is tested, and nothing is rewired after construction. What belongs to the
process (options, the instance lock, daemonizing, signals, the mount itself) stays in the
daemon; `Node.run` starts the node's own tasks in the caller's nursery.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from . import log as pmxlog
from .backend import Backend, LocalBackend, NoQuorumBackend
from .constants import (
    COROSYNC_CONF,
    DB_NAME,
    HOST_COROSYNC_CONF,
    RESTART_DELAY,
    RESTART_FLAG_NAME,
)
from .fs.invalidator import Invalidator
from .fs.namespace import Namespace, debug_writer
from .fs.operations import Filesystem
from .ipc.ops import IpcState
from .journal import GroupCommit
from .options import VERIFY_INTERVAL as DEFAULT_VERIFY_INTERVAL  # no DFSM in local mode
from .runtime import StartupError, create_restart_flag
from .status.clusterlog import ClusterLog
from .status.clusterlog_store import FILE_NAME as CLUSTERLOG_FILE
from .status.clusterlog_store import ClusterLogStore
from .status.render import render_members, render_rrd, render_version_bytes, render_vmlist
from .status.rrdwriter import RrdWriter
from .status.state import ClusterStatus
from .storage import Database, DatabaseError
from .tree import Change, Op, Tree, TreeError

if TYPE_CHECKING:
    from .cluster import ClusterNode

log = logging.getLogger("pmxcfs.main")



@dataclass(frozen=True)
class NodeConfig:
    """Everything a node is built from (the daemon derives it from its options)."""

    nodename: str
    node_ip: str
    gid: int
    db_dir: str
    run_dir: str
    local: bool = False
    corosync_conf: str = HOST_COROSYNC_CONF
    rrd_dir: str = ""
    rrdcached_socket: str = ""
    verify_interval: float | None = DEFAULT_VERIFY_INTERVAL
    restart_delay: float = RESTART_DELAY
    #: serve pve2 (an abstract socket of the network namespace: off for in-process tests)
    serve_ipc: bool = True
    clock: Callable[[], float] = field(default=time.time, compare=False)

    @property
    def db_path(self) -> str:
        return os.path.join(self.db_dir, DB_NAME)

    @property
    def lost_found_dir(self) -> str:
        return os.path.join(self.db_dir, "lost+found")

    @property
    def restart_flag(self) -> str:
        return os.path.join(self.run_dir, RESTART_FLAG_NAME)


@dataclass
class Node:
    config: NodeConfig
    db: Database
    tree: Tree
    journal: GroupCommit
    status: ClusterStatus
    clog: ClusterLog
    clog_store: ClusterLogStore
    invalidator: Invalidator
    namespace: Namespace
    backend: Backend
    fs: Filesystem
    ipc_state: IpcState
    cluster_mode: bool
    cluster: ClusterNode | None = None
    rrd_writer: RrdWriter | None = None
    #: the pve2 server once listening (None if it could not start)
    ipc_server: Any = None

    def service_names(self) -> list[str]:
        """What `run` starts, for tests and `pmxcfs-admin status`."""
        names = ["kernel cache invalidator", "cluster log store"]
        if self.cluster is not None:
            names += self.cluster.service_names()
        return [*names, "pve2 IPC"] if self.config.serve_ipc else names

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the node's tasks (the pve2 server last: tools connect once all is up);
        serve until cancelled. A pve2 server that cannot start is one critical log line."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.invalidator.run)
            nursery.start_soon(self.clog_store.run)
            if self.cluster is not None:
                await nursery.start(self.cluster.run)
            if self.config.serve_ipc:
                await self._start_ipc(nursery)
            task_status.started()

    async def _start_ipc(self, nursery: trio.Nursery) -> None:
        try:
            from .ipc.server import IpcService

            c = self.config
            service = IpcService(
                self.ipc_state, c.gid, on_stop=lambda: create_restart_flag(c.restart_flag, c.gid)
            )
            self.ipc_server = await nursery.start(service.run)
        except (ImportError, OSError, RuntimeError) as exc:
            log.critical("unable to start IPC server 'pve2' - PVE tools cannot connect: %s", exc)

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Before the loop stops: no more cache invalidations (one blocked on a directory
        lock would keep the process from exiting), every caller waiting for the cluster
        answered, and those answers delivered to the kernel."""
        self.invalidator.active = False
        if self.cluster is not None:
            self.cluster.replication.driver.close()
        left = await self.fs.settle(timeout)
        if left:
            log.error("shutdown: %d requests still waiting for an answer", left)

    def close(self) -> None:
        """After the loop ended: the cluster log first (quick, what a restart must find)."""
        self.clog_store.close()
        if self.rrd_writer is not None:
            self.rrd_writer.close()
        self.db.close()


def set_debug(on: bool) -> None:
    if on != pmxlog.is_debug():
        log.info("%s debug mode", "enable" if on else "disable")
    pmxlog.set_debug(on)


def build_namespace(
    nodename: str, status: ClusterStatus, tree: Tree, clog: ClusterLog
) -> Namespace:
    """The fixed root: symlinks and generated files (filesystem.md §7)."""
    ns = Namespace(nodename)
    ns.add_generated(".version", lambda: render_version_bytes(status, tree.vmlist))
    ns.add_generated(".members", lambda: render_members(status).encode())
    ns.add_generated(".vmlist", lambda: render_vmlist(tree.vmlist).encode())
    ns.add_generated(".rrd", lambda: render_rrd(status).encode())
    ns.add_generated(".clusterlog", clog.dump_bytes)
    ns.add_generated(
        ".debug",
        lambda: b"1\n" if pmxlog.is_debug() else b"0\n",
        debug_writer(pmxlog.is_debug, set_debug),
        mode=0o640,
    )
    return ns


def import_corosync_conf(tree: Tree, path: str, now: int) -> None:
    """A fresh database takes the host's corosync.conf: that is how a node joins (spec §2.6)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return
    try:
        tree.create(COROSYNC_CONF, 0, now)
        tree.write(COROSYNC_CONF, 0, data, 0, now, truncate=True)
    except TreeError as exc:
        raise StartupError(f"memdb_write failed - unable to import corosync.conf: {exc}") from exc


def build_node(
    config: NodeConfig,
    *,
    filesystem: type[Filesystem] = Filesystem,
    local_backend: Callable[[Tree], Backend] | None = None,
) -> Node:
    """Open the database and build every object of the node (nothing runs yet).

    *filesystem* and *local_backend* let in-process tests count requests or switch quorum;
    the daemon uses the defaults. Raises StartupError as the daemon reports it.
    """
    status = ClusterStatus(config.nodename)
    clog = ClusterLog(config.nodename)
    clog_store = ClusterLogStore(os.path.join(config.db_dir, CLUSTERLOG_FILE), clog)
    clog_store.load()  # before our first entry, so that it goes on top of the saved ones
    clog.add_local("root", "cluster", 6, "starting cluster log")

    existed = os.path.exists(config.db_path)
    try:
        db, tree = Database.open(config.db_path, journal=GroupCommit)
    except DatabaseError as exc:
        log.critical("%s", exc)
        raise StartupError(
            f"memdb_open failed - unable to open database '{config.db_path}'"
        ) from exc
    tree.clock = config.clock
    journal = tree.journal
    assert isinstance(journal, GroupCommit)
    tree.listeners.append(status.on_tree_change)
    status.on_tree_change(Change(Op.RELOAD))  # every path counter counts the load
    if not existed and not config.local:
        import_corosync_conf(tree, config.corosync_conf, int(config.clock()))
    has_conf = tree.lookup(COROSYNC_CONF) is not None
    if has_conf and config.local:
        log.warning("forcing local mode (although corosync.conf exists)")
    elif not has_conf:
        log.debug("using local mode (corosync.conf does not exist)")
    cluster_mode = has_conf and not config.local

    cluster: ClusterNode | None = None
    backend: Backend
    if cluster_mode:
        status.quorate = False
        cluster = _build_cluster(config, tree, journal, status, clog)
        backend = cluster.backend if cluster is not None else NoQuorumBackend(tree)
    elif local_backend is not None:
        backend = local_backend(tree)
    else:
        backend = LocalBackend(tree, clock=config.clock)

    namespace = build_namespace(config.nodename, status, tree, clog)
    invalidator = Invalidator(lambda: tree, list(namespace.by_inode))
    tree.listeners.append(invalidator.on_change)
    status.quorum_listeners.append(lambda q: invalidator.invalidate_all(attr_only=True))
    fs = filesystem(backend, namespace, config.gid, invalidator, lambda: backend.quorate)
    tree.listeners.append(fs.on_change)
    ipc_state = IpcState(tree, status, clog, cluster.kvstore if cluster is not None else None)
    rrd_writer = start_rrd_writer(config, status)
    return Node(
        config, db, tree, journal, status, clog, clog_store, invalidator, namespace, backend,
        fs, ipc_state, cluster_mode, cluster, rrd_writer,
    )  # fmt: skip


def start_rrd_writer(config: NodeConfig, status: ClusterStatus) -> RrdWriter | None:
    """RRD files for the PVE graphs (status-ipc §4.3); its thread starts with it, so build
    after daemonizing."""
    if not config.rrd_dir:
        log.debug("RRD files are not written (empty --rrd-dir)")
        return None
    writer = RrdWriter(config.rrd_dir, config.rrdcached_socket)
    status.rrd_listeners.append(writer.submit)
    return writer


def _build_cluster(
    config: NodeConfig, tree: Tree, journal: GroupCommit, status: ClusterStatus, clog: ClusterLog
) -> ClusterNode | None:
    try:
        from .cluster import ClusterNode, ClusterOptions
    except ImportError as exc:  # the corosync bindings are not built
        log.error("cluster support is not available (%s) - staying read-only", exc)
        return None
    options = ClusterOptions(
        corosync_conf_path=config.corosync_conf,
        lost_found_dir=config.lost_found_dir,
        sync_marker_path=os.path.join(config.db_dir, ".pmxcfs-synced"),
        verify_interval=config.verify_interval,
        restart_delay=config.restart_delay,
    )
    return ClusterNode(tree, journal, status, options, clog=clog, node_ip=config.node_ip)
