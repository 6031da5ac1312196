"""The pmxcfs daemon: startup sequence, mode choice, the trio loop and clean shutdown (spec §9)."""

from __future__ import annotations

import errno
import grp
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyfuse3
import trio

from . import log as pmxlog
from .backend import Backend, LocalBackend
from .constants import COROSYNC_CONF, DB_NAME, LOCKFILE_NAME, RESTART_FLAG_NAME, UMASK
from .constants import WWW_DATA_GROUP as WWW_DATA
from .control.protocol import SOCKET_NAME as ADMIN_SOCKET
from .control.server import start_admin
from .control.snapshot import Sources
from .fs.invalidator import Invalidator
from .fs.namespace import Namespace, debug_writer
from .fs.operations import Filesystem
from .ipc.ops import IpcState
from .options import Options, parse
from .runtime import (
    ReadyPipe,
    StartupError,
    acquire_lock,
    create_restart_flag,
    daemonize,
    detach_stdio,
    nodename_from_host,
    prepare_mountpoint,
    remove_file,
    resolve_node_ip,
    write_pid_file,
)
from .status.clusterlog import ClusterLog
from .status.clusterlog_store import FILE_NAME as CLUSTERLOG_FILE
from .status.clusterlog_store import ClusterLogStore
from .status.render import render_members, render_rrd, render_version, render_vmlist
from .status.rrdwriter import RrdWriter
from .status.state import ClusterStatus
from .storage import Database, DatabaseError
from .tree import Change, Op, Tree, TreeError

if TYPE_CHECKING:
    from .cluster import ClusterServices

log = logging.getLogger("pmxcfs.main")


class NoQuorumBackend(LocalBackend):
    """Cluster mode without a cluster connection: read-only, every change gets EACCES."""

    @property
    def quorate(self) -> bool:
        return False

    async def _deny(self, *args: object) -> None:
        raise TreeError(errno.EACCES, "not quorate")

    mkdir = create = delete = rename = truncate = set_mtime = _deny  # type: ignore[assignment]

    async def write(self, path: str, offset: int, data: bytes) -> int:
        raise TreeError(errno.EACCES, "not quorate")


@dataclass
class Daemon:
    opts: Options
    nodename: str
    node_ip: str
    gid: int
    db: Database
    tree: Tree
    status: ClusterStatus
    clog: ClusterLog
    cluster_mode: bool
    ready: ReadyPipe
    clog_store: ClusterLogStore | None = None  # keeps the cluster log across restarts
    # what the admin socket reads (pmxcfs-admin status); set as they start
    rrd_writer: RrdWriter | None = None
    services: ClusterServices | None = None
    ipc_server: Any = None

    @property
    def restart_flag(self) -> str:
        return os.path.join(self.opts.run_dir, RESTART_FLAG_NAME)

    def namespace(self) -> Namespace:
        ns = Namespace(self.nodename)
        ns.add_generated(".version", lambda: render_version(self.status, self.tree.vmlist).encode())
        ns.add_generated(".members", lambda: render_members(self.status).encode())
        ns.add_generated(".vmlist", lambda: render_vmlist(self.tree.vmlist).encode())
        ns.add_generated(".rrd", lambda: render_rrd(self.status).encode())
        ns.add_generated(".clusterlog", self.clog.dump_bytes)
        ns.add_generated(
            ".debug",
            lambda: b"1\n" if pmxlog.is_debug() else b"0\n",
            debug_writer(pmxlog.is_debug, _set_debug),
            mode=0o640,
        )
        return ns

    async def run(self) -> int:
        opts = self.opts
        prepare_mountpoint(opts.mount)
        invalidator = Invalidator(lambda: self.tree)
        self.tree.listeners.append(invalidator.on_change)
        backend: Backend
        if self.cluster_mode:
            self.status.quorate = False
            backend = NoQuorumBackend(self.tree)
        else:
            backend = LocalBackend(self.tree)
        fs = Filesystem(backend, self.namespace(), self.gid, invalidator, lambda: backend.quorate)
        self.status.quorum_listeners.append(lambda q: invalidator.invalidate_all(attr_only=True))
        fuse_opts = {"default_permissions", "allow_other"}
        try:
            pyfuse3.init(fs, opts.mount, fuse_opts)
        except RuntimeError as exc:
            raise StartupError(f"fuse_mount error: {exc}") from exc
        mounted = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._fuse_main, nursery)
                nursery.start_soon(invalidator.run)
                if self.clog_store is not None:
                    nursery.start_soon(self.clog_store.run)
                nursery.start_soon(self._signals, nursery)
                ipc_state = IpcState(self.tree, self.status, self.clog)
                if self.cluster_mode:
                    cluster = await self._start_cluster(nursery, ipc_state)
                    if cluster is not None:
                        backend = cluster
                        fs.backend = cluster
                        fs.quorate = lambda: cluster.quorate
                await self._start_ipc(nursery, ipc_state)
                self._start_admin(nursery, invalidator)
                if opts.foreground:
                    write_pid_file(opts.pid_file, os.getpid())
                remove_file(self.restart_flag)
                self.ready.ready()
                if not opts.foreground:
                    pmxlog.stop_stderr()
                    detach_stdio()
        finally:
            create_restart_flag(self.restart_flag, self.gid)
            log.info("teardown filesystem")
            if mounted:
                pyfuse3.close(unmount=True)
        return 0

    async def _start_ipc(self, nursery: trio.Nursery, state: IpcState) -> None:
        """The `pve2` server (status-ipc §6); without it the filesystem still runs."""
        try:
            from .ipc.server import IpcService

            service = IpcService(
                state, self.gid, on_stop=lambda: create_restart_flag(self.restart_flag, self.gid)
            )
            self.ipc_server = await nursery.start(service.run)
        except (ImportError, OSError, RuntimeError) as exc:
            log.critical("unable to start IPC server 'pve2' - PVE tools cannot connect: %s", exc)

    def _start_admin(self, nursery: trio.Nursery, invalidator: Invalidator) -> None:
        """The admin socket `pmxcfs-admin status` asks; without it the filesystem still runs."""
        src = Sources(
            self.nodename, self.node_ip, self.cluster_mode, self.status, self.clog, self.tree,
            self.db.path, os.path.join(self.opts.db_dir, "lost+found"),
            is_debug=pmxlog.is_debug, set_debug=_set_debug, invalidator=invalidator,
            rrd=self.rrd_writer, services=lambda: self.services, ipc=lambda: self.ipc_server,
        )  # fmt: skip
        path = os.path.join(self.opts.run_dir, ADMIN_SOCKET)
        try:
            start_admin(nursery, src, path)
        except OSError as exc:
            log.critical("unable to create admin socket %s - pmxcfs-admin cannot ask: %s",
                         path, exc)  # fmt: skip

    async def _start_cluster(self, nursery: trio.Nursery, ipc: IpcState) -> Backend | None:
        try:
            from .cluster import ClusterOptions, start_cluster
        except ImportError as exc:
            log.error("cluster support is not available (%s) - staying read-only", exc)
            return None
        options = ClusterOptions(
            corosync_conf_path=self.opts.corosync_conf,
            lost_found_dir=os.path.join(self.opts.db_dir, "lost+found"),
            sync_marker_path=os.path.join(self.opts.db_dir, ".pmxcfs-synced"),
            verify_interval=self.opts.verify_interval,
        )
        backend: Backend = await start_cluster(
            nursery,
            self.tree,
            self.db,
            self.status,
            self.nodename,
            options=options,
            clog=self.clog,
            node_ip=self.node_ip,
            on_services=lambda services: self._on_services(services, ipc),
        )
        return backend

    def _on_services(self, services: ClusterServices, ipc: IpcState) -> None:
        ipc.kvstore = services.kvstore
        self.services = services

    async def _fuse_main(self, nursery: trio.Nursery) -> None:
        await pyfuse3.main()
        nursery.cancel_scope.cancel()

    async def _signals(self, nursery: trio.Nursery) -> None:
        stop = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        with trio.open_signal_receiver(*stop) as sigs:
            async for signum in sigs:
                log.info("received signal %d", signum)
                break
        # A repeated signal during teardown must not kill us before the unmount and the
        # final writes (the receiver put the default handlers back when it closed).
        for s in stop:
            signal.signal(s, signal.SIG_IGN)
        nursery.cancel_scope.cancel()


def _set_debug(on: bool) -> None:
    if on != pmxlog.is_debug():
        logging.getLogger("pmxcfs.main").info("%s debug mode", "enable" if on else "disable")
    pmxlog.set_debug(on)


def _import_corosync_conf(tree: Tree, path: str) -> None:
    """A fresh database takes the host's corosync.conf: that is how a node joins (spec §2.6)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return
    now = int(time.time())
    try:
        tree.create(COROSYNC_CONF, 0, now)
        tree.write(COROSYNC_CONF, 0, data, 0, now, truncate=True)
    except TreeError as exc:
        raise StartupError(f"memdb_write failed - unable to import corosync.conf: {exc}") from exc


def _start_rrd_writer(opts: Options, status: ClusterStatus) -> RrdWriter | None:
    """RRD files for the PVE graphs (status-ipc §4.3); its thread starts after daemonizing."""
    if not opts.rrd_dir:
        log.debug("RRD files are not written (empty --rrd-dir)")
        return None
    writer = RrdWriter(opts.rrd_dir, opts.rrdcached_socket)
    status.rrd_listeners.append(writer.submit)
    return writer


def start(opts: Options) -> int:
    pmxlog.setup(foreground=True, debug=opts.debug)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    nodename = opts.nodename or nodename_from_host()
    node_ip = opts.node_ip or resolve_node_ip(nodename)
    log.info("resolved node name '%s' to '%s' for default node IP address", nodename, node_ip)
    try:
        gid = grp.getgrnam(WWW_DATA).gr_gid
    except KeyError:
        raise StartupError(f"unable to get '{WWW_DATA}' group ID") from None
    os.umask(UMASK)
    for d in (opts.db_dir, opts.run_dir):
        os.makedirs(d, 0o755, exist_ok=True)
    os.chown(opts.run_dir, 0, gid)
    lock_fd = acquire_lock(os.path.join(opts.db_dir, LOCKFILE_NAME))
    ready = ReadyPipe(None)
    if not opts.foreground:
        ready = daemonize(opts.pid_file)
    status = ClusterStatus(nodename)
    clog = ClusterLog(nodename)
    clog_store = ClusterLogStore(os.path.join(opts.db_dir, CLUSTERLOG_FILE), clog)
    clog_store.load()  # before our first entry, so that it goes on top of the saved ones
    clog.add_local("root", "cluster", 6, "starting cluster log")
    db_path = os.path.join(opts.db_dir, DB_NAME)
    existed = os.path.exists(db_path)
    try:
        db, tree = Database.open(db_path)
    except DatabaseError as exc:
        log.critical("%s", exc)
        raise StartupError(f"memdb_open failed - unable to open database '{db_path}'") from exc
    tree.listeners.append(status.on_tree_change)
    status.on_tree_change(Change(Op.RELOAD))  # every path counter counts the load
    if not existed and not opts.local:
        _import_corosync_conf(tree, opts.corosync_conf)
    has_conf = tree.lookup(COROSYNC_CONF) is not None
    if has_conf and opts.local:
        log.warning("forcing local mode (although corosync.conf exists)")
    elif not has_conf:
        log.debug("using local mode (corosync.conf does not exist)")
    cluster_mode = has_conf and not opts.local
    daemon = Daemon(
        opts, nodename, node_ip, gid, db, tree, status, clog, cluster_mode, ready, clog_store
    )
    rrd_writer = daemon.rrd_writer = _start_rrd_writer(opts, status)
    try:
        rc = trio.run(daemon.run)
    finally:
        clog_store.close()  # first: quick, and what a restart must find
        if rrd_writer is not None:
            rrd_writer.close()
        db.close()
        remove_file(opts.pid_file)
        os.close(lock_fd)
    log.info("exit proxmox configuration filesystem (%d)", rc)
    return rc


def main(argv: list[str] | None = None) -> int:
    opts = parse(sys.argv[1:] if argv is None else argv)
    try:
        return start(opts)
    except StartupError as exc:
        log.critical("%s", exc)
        return 255
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
