"""The cluster's configuration, as corosync sees it, mirrored both ways (filesystem.md §9.4).

cmap's nodelist feeds the status (`.members`) and the write gate's node votes; the
corosync.conf in the tree is written to the host file after applied writes, renames and
resyncs, and corosync is asked to reload it when this node wrote a newer version.
Reconnects to cmap after corosync restarts.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Callable

import trio

from ..constants import COROSYNC_CONF, RESTART_DELAY
from ..dcdb.writegate import WriteGate
from ..status.state import ClusterStatus, NodeInfo
from ..tree import Change, Op, Tree

log = logging.getLogger("pmxcfs.cluster")

_CONFIG_VERSION = re.compile(rb"config_version\s*:\s*(\d+)")


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


class CorosyncConfMirror:
    def __init__(
        self,
        tree: Tree,
        status: ClusterStatus,
        gate: WriteGate,
        host_path: str,
        own_nodeid: Callable[[], int],
        *,
        cfgtool: tuple[str, ...] = ("corosync-cfgtool", "-R"),
        restart_delay: float = RESTART_DELAY,
    ) -> None:
        self.tree = tree
        self.status = status
        self.gate = gate
        self.host_path = host_path
        self.own_nodeid = own_nodeid
        self.cfgtool = cfgtool
        self.restart_delay = restart_delay
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------ corosync.conf

    def on_tree_change(self, change: Change) -> None:
        """Mirror corosync.conf after applied writes/renames and after a resync."""
        if change.op is Op.RELOAD:
            self.sync_conf(notify=False)
        elif (change.op in (Op.CREATE, Op.WRITE) and change.path == COROSYNC_CONF) or (
            change.op is Op.RENAME and change.to_path == COROSYNC_CONF
        ):
            e = self.tree.lookup(COROSYNC_CONF)
            self.sync_conf(notify=e is not None and e.writer == self.own_nodeid())

    def sync_conf(self, notify: bool) -> None:
        written, old_version = sync_corosync_conf(self.tree, self.host_path)
        if written and notify and old_version != 0 and self._nursery is not None:
            self._nursery.start_soon(self._reload_corosync)

    async def _reload_corosync(self) -> None:
        await trio.sleep(1)
        try:
            res = await trio.run_process(
                list(self.cfgtool),
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as exc:
            log.error("corosync-cfgtool -R failed: %s", exc)
            return
        if res.returncode != 0:
            log.error("corosync-cfgtool -R failed with exit code %d", res.returncode)

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

    async def _track_cmap(self) -> None:
        from cpg import Cmap, CorosyncError

        while True:
            try:
                c = Cmap(handler=self._on_cluster_info)
                self._on_cluster_info(c.track_config())
            except CorosyncError as exc:
                log.debug("cmap unavailable: %s", exc)
                await trio.sleep(self.restart_delay)
                continue
            try:
                await c.run()
            except CorosyncError as exc:
                log.error("cmap service lost: %s", exc)
            finally:
                c.finalize()
            await trio.sleep(1)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.tree.listeners.append(self.on_tree_change)
            try:
                self.sync_conf(notify=True)
                nursery.start_soon(self._track_cmap)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self.tree.listeners.remove(self.on_tree_change)
                self._nursery = None
