"""The pmxcfs process: startup sequence, daemonizing, the mount, signals and clean shutdown
(spec §9). The node itself (storage, tree, filesystem, cluster services, IPC) is built by the
composition root, pmxcfs/node.py."""

from __future__ import annotations

import grp
import logging
import os
import signal
import sys

import pyfuse3
import trio

from . import log as pmxlog
from .constants import LOCKFILE_NAME, UMASK
from .constants import WWW_DATA_GROUP as WWW_DATA
from .control.protocol import SOCKET_NAME as ADMIN_SOCKET
from .control.server import start_admin
from .control.snapshot import Sources
from .fs.deathwatch import DeathWatch
from .node import Node, NodeConfig, build_node, set_debug
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

log = logging.getLogger("pmxcfs.main")

FUSE_OPTIONS = frozenset({"default_permissions", "allow_other"})


def node_config(opts: Options, nodename: str, node_ip: str, gid: int) -> NodeConfig:
    return NodeConfig(
        nodename=nodename,
        node_ip=node_ip,
        gid=gid,
        db_dir=opts.db_dir,
        run_dir=opts.run_dir,
        local=opts.local,
        corosync_conf=opts.corosync_conf,
        rrd_dir=opts.rrd_dir,
        rrdcached_socket=opts.rrdcached_socket,
        verify_interval=opts.verify_interval,
    )


class Daemon:
    """One node, mounted, with the process's own tasks (FUSE loop, signals, admin socket)."""

    def __init__(self, opts: Options, node: Node, ready: ReadyPipe) -> None:
        self.opts = opts
        self.node = node
        self.ready = ready

    async def run(self) -> int:
        opts, node = self.opts, self.node
        prepare_mountpoint(opts.mount)
        try:
            pyfuse3.init(node.fs, opts.mount, set(FUSE_OPTIONS))
        except RuntimeError as exc:
            raise StartupError(f"fuse_mount error: {exc}") from exc
        watch = DeathWatch()
        watch.start(opts.mount)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._fuse_main, nursery)
                nursery.start_soon(self._signals, nursery)
                await nursery.start(node.run)
                self._start_admin(nursery)
                if opts.foreground:
                    write_pid_file(opts.pid_file, os.getpid())
                remove_file(node.config.restart_flag)
                self.ready.ready()
                if not opts.foreground:
                    pmxlog.stop_stderr()
                    detach_stdio()
        finally:
            create_restart_flag(node.config.restart_flag, node.config.gid)
            log.info("teardown filesystem")
            pyfuse3.close(unmount=True)
            watch.stop()
        return 0

    def _start_admin(self, nursery: trio.Nursery) -> None:
        """The admin socket `pmxcfs-admin status` asks; without it the filesystem still runs."""
        node = self.node
        c = node.config
        src = Sources(
            c.nodename, c.node_ip, node.cluster_mode, node.status, node.clog, node.tree,
            node.db.path, c.lost_found_dir,
            is_debug=pmxlog.is_debug, set_debug=set_debug, invalidator=node.invalidator,
            rrd=node.rrd_writer, services=lambda: node.cluster, ipc=lambda: node.ipc_server,
            service_names=node.service_names,
        )  # fmt: skip
        path = os.path.join(c.run_dir, ADMIN_SOCKET)
        try:
            start_admin(nursery, src, path)
        except OSError as exc:
            log.critical("unable to create admin socket %s - pmxcfs-admin cannot ask: %s",
                         path, exc)  # fmt: skip

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
        await self.node.shutdown()
        nursery.cancel_scope.cancel()


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
        ready = daemonize(opts.pid_file)  # threads (RRD, cluster log) start after this
    node = build_node(node_config(opts, nodename, node_ip, gid))
    try:
        rc = trio.run(Daemon(opts, node, ready).run)
    finally:
        node.close()
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
