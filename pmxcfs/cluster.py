"""Cluster mode: corosync services (cpg, quorum, cmap) feeding the DCDB DFSM and the status.

`start_cluster` starts one task per service in the daemon's nursery, each of which reconnects
after corosync restarts (the reference's 5 s start job, wire-protocol §2.7), and returns the
ClusterBackend the filesystem writes through. corosync.conf in the tree is mirrored to the
host file (filesystem.md §9.4).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from .constants import COROSYNC_CONF, DB_DIR, HOST_COROSYNC_CONF
from .dcdb.app import DcdbApp
from .dcdb.backend import ClusterBackend
from .dcdb.marker import SyncMarker
from .dcdb.writegate import WriteGate
from .dfsm.codec import DCDB_PROTOCOL_VERSION
from .dfsm.driver import DfsmDriver
from .dfsm.machine import DEFAULT_VERIFY_INTERVAL, ConfChg, Dfsm, Mode, Tick
from .dfsm.runner import GroupRunner
from .journal import FLUSH_DELAY, GroupCommit
from .kvstore.service import KvstoreService
from .status.clusterlog import ClusterLog
from .status.state import ClusterStatus, NodeInfo
from .tree import Change, Op, Tree

if TYPE_CHECKING:
    from cpg import Votequorum

log = logging.getLogger("pmxcfs.cluster")

RESTART_DELAY = 5.0
#: after leaving the group for a resync (C: the same 5 s start job); shorter keeps the group
#: at full votes, which the write gate needs
REJOIN_DELAY = 1.0
MARKER_INTERVAL = 10  # seconds between sync-marker updates while synced
_CONFIG_VERSION = re.compile(rb"config_version\s*:\s*(\d+)")


@dataclass
class ClusterOptions:
    corosync_conf_path: str = HOST_COROSYNC_CONF
    lost_found_dir: str | None = os.path.join(DB_DIR, "lost+found")
    sync_marker_path: str | None = os.path.join(DB_DIR, ".pmxcfs-synced")
    verify_interval: float | None = DEFAULT_VERIFY_INTERVAL
    restart_delay: float = RESTART_DELAY
    rejoin_delay: float = REJOIN_DELAY
    online_from_dcdb: bool = True  # only without the kvstore group (which sets them, §5.2)
    cfgtool: tuple[str, ...] = ("corosync-cfgtool", "-R")


# ---------------------------------------------------------------------------- corosync.conf


def parse_config_version(data: bytes) -> int:
    m = _CONFIG_VERSION.search(data)
    return int(m.group(1)) if m else 0


def sync_corosync_conf(tree: Tree, host_path: str) -> tuple[bool, int]:
    """filesystem.md §9.4 steps 1-6. Returns (written, old_version)."""
    e = tree.lookup(COROSYNC_CONF)
    if e is None or e.is_dir or not e.data:
        return False, 0
    new = e.data
    new_version = parse_config_version(new)
    if new_version == 0:
        log.error("unable to parse cluster config_version")
        return False, 0
    try:
        with open(host_path, "rb") as fh:
            old: bytes | None = fh.read()
    except FileNotFoundError:
        old = None
    except OSError as exc:
        log.error("unable to read %s: %s", host_path, exc)
        old = None
    old_version = parse_config_version(old) if old is not None else 0
    if old is not None and old == new:
        return False, old_version
    if new_version < old_version:
        log.error("local corosync.conf is newer")
        return False, old_version
    d = os.path.dirname(host_path) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(host_path) + ".", dir=d)
        try:
            if os.geteuid() == 0:
                os.fchown(fd, 0, 0)
            os.fchmod(fd, 0o644)
            os.write(fd, new)
        finally:
            os.close(fd)
        os.replace(tmp, host_path)
    except OSError as exc:
        log.error("writing %s failed: %s", host_path, exc)
        return False, old_version
    log.info("wrote new corosync config '%s' (version = %d)", host_path, new_version)
    return True, old_version


# ---------------------------------------------------------------------------- services


class ClusterServices:
    """The long-running corosync-facing tasks of one node."""

    def __init__(
        self,
        tree: Tree,
        status: ClusterStatus,
        nodename: str,
        options: ClusterOptions,
        kvstore: KvstoreService | None = None,
    ) -> None:
        self.kvstore = kvstore
        self.tree = tree
        self.status = status
        self.nodename = nodename
        self.options = options
        # every applied message is staged; flushed before answering a caller here
        self.journal = GroupCommit(tree.journal)
        tree.journal = self.journal
        # writes need corosync quorum and a replication group holding quorum's votes
        self.gate = WriteGate(lambda: status.quorate)
        self.gate.listeners.append(self._on_writable)
        self._quorum: object | None = None  # the live cpg.Quorum, for dispatch priority
        self._votequorum: Votequorum | None = None  # queried at each quorum notification
        self.app = DcdbApp(
            tree,
            gate=self.gate,
            lost_found_dir=options.lost_found_dir,
            marker=SyncMarker(options.sync_marker_path),
            group_commit=self.journal,
            cluster_log=self._cluster_log if kvstore is not None else None,
        )
        self.dfsm = Dfsm(
            0,
            os.getpid(),
            self.app,
            DCDB_PROTOCOL_VERSION,
            name="dcdb",
            verify_interval=options.verify_interval,
        )
        self.dfsm.joined = False  # nothing can be sent before the first connection
        self.driver = DfsmDriver(self.dfsm)
        self.driver.track_answers = True
        self._flush_due = trio.Event()
        self._shared_version = 0  # see _note_shared
        self.backend = ClusterBackend(tree, self.driver, self.gate)
        self._nursery: trio.Nursery | None = None
        self.runner = GroupRunner(
            "dcdb",
            "pve_dcdb_v1",
            self.driver,
            options.restart_delay,
            on_identity=self._on_identity,
            on_confchg=self._on_confchg,
            after_dispatch=self._after_dispatch,
            before_dispatch=self._quorum_first,
            rejoin_delay=min(options.rejoin_delay, options.restart_delay),
        )
        self.connected = self.runner.connected

    # ------------------------------------------------------------------ dcdb

    def _on_confchg(self, chg: ConfChg) -> None:
        if self.options.online_from_dcdb and self.kvstore is None and self.dfsm.we_are_member:
            self.status.set_online({m[0] for m in chg.members})

    def _on_identity(self) -> None:
        self.app.local_member = (self.dfsm.nodeid, self.dfsm.pid)

    def _cluster_log(self, msg: str) -> None:
        """What the cluster should see (lost+found saves): a warning in the cluster log."""
        if self.kvstore is not None:
            self.kvstore.log("root", "pmxcfs", 4, msg)

    # ------------------------------------------------------------------ group commit

    def _after_dispatch(self) -> None:
        """End of a batch of deliveries: on disk before any caller here sees its result."""
        if not self.journal.staged:
            self.driver.answered.clear()
            self._note_shared()
        elif self.driver.answered:
            self.flush()
        elif not self._flush_due.is_set():
            self._flush_due.set()

    def flush(self) -> bool:
        try:
            self.journal.flush()
        except Exception as exc:
            log.error("dcdb: database write failed: %s", exc)
            self.journal.discard()
            self.tree.error = True  # sticky EIO, as after any failed write
            self.driver.fail_answered(-errno.EIO)
            self.driver.fail("database write failed")
            return False
        self.driver.answered.clear()
        self._note_shared()
        return True

    def _note_shared(self) -> None:
        """What is on disk, applied while synced in a group that may write, is cluster history
        (remembered here, written to the marker on the timer and at shutdown)."""
        if self.dfsm.mode is Mode.SYNCED and self.gate.writable:
            self._shared_version = self.tree.root.version

    async def run_flusher(self) -> None:
        """Peers' operations reach the disk within FLUSH_DELAY; the rest at shutdown."""
        try:
            while True:
                await self._flush_due.wait()
                await trio.sleep(FLUSH_DELAY)
                self._flush_due = trio.Event()
                self.flush()
        finally:
            self.flush()

    async def run_timer(self) -> None:
        ticks = 0
        try:
            while True:
                await trio.sleep(1)
                self.driver.feed(Tick(time.time()))
                ticks += 1
                if ticks % MARKER_INTERVAL == 0:
                    self._save_marker()
        finally:
            self._save_marker()

    def _save_marker(self) -> None:
        """The last version known shared. A node alone in a group without quorum's votes
        also counts as synced, but shares nothing: what it changes then stays above the
        marker (lost+found). Exact at a clean shutdown, at most 10 s behind after a crash."""
        self._note_shared()
        if self._shared_version:
            self.app.marker.save(self._shared_version)

    # ------------------------------------------------------------------ quorum

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
        """votequorum's threshold and the quorum device's votes (one local IPC round trip,
        once per quorum notification); the nodelist's votes come from cmap."""
        from cpg import CorosyncError, Votequorum

        nodeid = self.dfsm.nodeid
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

    def _on_writable(self, writable: bool) -> None:
        """Writes open or close (also without a corosync quorum flip): the modes change."""
        if writable:
            log.info("dcdb: writes accepted")
        else:
            log.warning("dcdb: writes refused (%s)", self.gate.reason())
        for fn in self.status.quorum_listeners:
            fn(writable)

    def _quorum_first(self) -> None:
        """Quorum events already pending are handled before the deliveries that follow
        them, as the reference's poll priorities do (issue 10, loss 1)."""
        q = self._quorum
        if q is not None:
            from cpg import CorosyncError, Quorum

            assert isinstance(q, Quorum)
            # an error is the quorum task's to see (it reconnects)
            with contextlib.suppress(CorosyncError):
                q.dispatch_ready()

    async def run_quorum(self) -> None:
        from cpg import CorosyncError, Quorum

        while True:
            try:
                q = Quorum(handler=lambda ch: self._set_quorate(ch.quorate))
            except CorosyncError as exc:
                log.debug("quorum_initialize failed: %s", exc)
                self.status.set_quorate(False)
                await trio.sleep(self.options.restart_delay)
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

    # ------------------------------------------------------------------ cmap

    def _on_cluster_info(self, info: object) -> None:
        from cpg import ClusterInfo

        assert isinstance(info, ClusterInfo)
        self.status.set_cluster_info(
            info.cluster_name,
            info.config_version,
            [NodeInfo(n.name, n.nodeid, n.votes) for n in info.nodes],
        )
        self.gate.set_votes(
            self.gate.needed, self.gate.extra_votes, {n.nodeid: n.votes for n in info.nodes}
        )

    async def run_cmap(self) -> None:
        from cpg import Cmap, CorosyncError

        while True:
            try:
                c = Cmap(handler=self._on_cluster_info)
                self._on_cluster_info(c.track_config())
            except CorosyncError as exc:
                log.debug("cmap unavailable: %s", exc)
                await trio.sleep(self.options.restart_delay)
                continue
            try:
                await c.run()
            except CorosyncError as exc:
                log.error("cmap service lost: %s", exc)
            finally:
                c.finalize()
            await trio.sleep(1)

    # ------------------------------------------------------------------ corosync.conf

    def on_tree_change(self, change: Change) -> None:
        """Mirror corosync.conf after applied writes/renames and after a resync."""
        if change.op is Op.RELOAD:
            self.sync_conf(notify=False)
        elif (change.op in (Op.CREATE, Op.WRITE) and change.path == COROSYNC_CONF) or (
            change.op is Op.RENAME and change.to_path == COROSYNC_CONF
        ):
            e = self.tree.lookup(COROSYNC_CONF)
            self.sync_conf(notify=e is not None and e.writer == self.dfsm.nodeid)

    def sync_conf(self, notify: bool) -> None:
        written, old_version = sync_corosync_conf(self.tree, self.options.corosync_conf_path)
        if written and notify and old_version != 0 and self._nursery is not None:
            self._nursery.start_soon(self._reload_corosync)

    async def _reload_corosync(self) -> None:
        await trio.sleep(1)
        try:
            res = await trio.run_process(
                list(self.options.cfgtool),
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as exc:
            log.error("corosync-cfgtool -R failed: %s", exc)
            return
        if res.returncode != 0:
            log.error("corosync-cfgtool -R failed with exit code %d", res.returncode)

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.tree.listeners.append(self.on_tree_change)
        self.sync_conf(notify=True)
        nursery.start_soon(self.run_quorum)
        nursery.start_soon(self.run_cmap)
        nursery.start_soon(self.runner.run)
        if self.kvstore is not None:
            nursery.start_soon(self.kvstore.run)
        nursery.start_soon(self.run_timer)
        nursery.start_soon(self.run_flusher)


async def start_cluster(
    nursery: trio.Nursery,
    tree: Tree,
    db: object,
    status: ClusterStatus,
    nodename: str,
    task_status: trio.TaskStatus[ClusterBackend] = trio.TASK_STATUS_IGNORED,
    *,
    options: ClusterOptions | None = None,
    on_services: Callable[[ClusterServices], None] | None = None,
    clog: ClusterLog | None = None,
    node_ip: str | None = None,
) -> ClusterBackend:
    """Start cluster mode in `nursery`; returns the backend at once (quorum starts false).

    `db` is the Database the tree journals to (already the tree's journal; accepted for the
    daemon's convenience and future use).
    """
    status.set_quorate(False)
    options = options or ClusterOptions()
    kvstore = None
    if clog is not None and node_ip is not None:  # the status group: online flags, IPs, log
        kvstore = KvstoreService(
            status, clog, nodename, node_ip, restart_delay=options.restart_delay
        )
    services = ClusterServices(tree, status, nodename, options, kvstore)
    services.start(nursery)
    if on_services is not None:
        on_services(services)
    task_status.started(services.backend)
    return services.backend
