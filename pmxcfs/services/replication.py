"""The configuration database replicated over corosync, and its commit policy.

One service keeps the DCDB application in its CPG group (wire-protocol §2.7) and owns group
commit, the single place that decides when applied operations reach config.db:

* every tree change applied while a CPG dispatch runs is staged (one batch);
* at the end of the batch, if a caller on this node was answered in it, everything staged is
  written in one transaction *before* that caller is woken (an acknowledged write is on disk
  on the node that acknowledged it), and a failed write turns its answer into EIO;
* otherwise what is staged reaches the disk within FLUSH_DELAY, and at shutdown.

The database therefore always holds a prefix of the total order. The service also keeps the
sync marker (the last version known shared with the cluster) and feeds the DFSM its timer.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..constants import REJOIN_DELAY, RESTART_DELAY
from ..dcdb.app import DcdbApp
from ..dcdb.backend import ClusterBackend
from ..dcdb.codec import GROUP, PROTOCOL_VERSION
from ..dcdb.marker import SyncMarker
from ..dcdb.writegate import WriteGate
from ..dfsm.driver import DfsmDriver
from ..dfsm.machine import DEFAULT_VERIFY_INTERVAL, ConfChg, Dfsm, Mode, Tick
from ..dfsm.runner import GroupRunner
from ..journal import FLUSH_DELAY, GroupCommit
from ..tree import Tree

log = logging.getLogger("pmxcfs.cluster")

MARKER_INTERVAL = 10  # seconds between sync-marker saves while synced
#: an own write counts as shared once the group stayed unchanged this long after it (far
#: beyond corosync's token timeout: a ring that lost a member would have reformed)
OWN_CONFIRM_AFTER = 10.0


@dataclass
class ReplicationOptions:
    lost_found_dir: str | None = None
    sync_marker_path: str | None = None
    verify_interval: float | None = DEFAULT_VERIFY_INTERVAL
    restart_delay: float = RESTART_DELAY
    rejoin_delay: float = REJOIN_DELAY


class ReplicationService:
    """DCDB in ``pve_dcdb_v1``: application, DFSM, driver, group runner and group commit."""

    def __init__(
        self,
        tree: Tree,
        journal: GroupCommit,
        gate: WriteGate,
        options: ReplicationOptions,
        *,
        cluster_log: Callable[[str], None] | None = None,
        priority: Callable[[], None] | None = None,
        on_confchg: Callable[[ConfChg], None] | None = None,
    ) -> None:
        self.tree = tree
        self.journal = journal
        self.gate = gate
        self._priority = priority
        self._on_confchg_hook = on_confchg
        self.app = DcdbApp(
            tree,
            gate=gate,
            lost_found_dir=options.lost_found_dir,
            marker=SyncMarker(options.sync_marker_path),
            cluster_log=cluster_log,
        )
        self.dfsm = Dfsm(
            0,
            os.getpid(),
            self.app,
            PROTOCOL_VERSION,
            name="dcdb",
            verify_interval=options.verify_interval,
            joined=False,  # nothing can be sent before the first connection
        )
        self.driver = DfsmDriver(self.dfsm)
        self.backend = ClusterBackend(tree, self.driver, gate)
        self.runner = GroupRunner(
            "dcdb",
            GROUP,
            self.driver,
            options.restart_delay,
            on_identity=self._on_identity,
            on_confchg=self._on_confchg,
            before_dispatch=self.begin_batch,
            after_dispatch=self.end_batch,
            rejoin_delay=min(options.rejoin_delay, options.restart_delay),
        )
        self._flush_due = trio.Event()
        self._shared_version = 0  # see _note_shared
        self._own_confirmed = 0
        self._own_pending: list[tuple[float, int]] = []  # (monotonic time, version)
        self._ticks = 0

    # ------------------------------------------------------------------ membership

    def _on_identity(self) -> None:
        self.app.local_member = (self.dfsm.nodeid, self.dfsm.pid)

    def _on_confchg(self, chg: ConfChg) -> None:
        # own writes not yet confirmed stay so: the next sync confirms them if it agrees
        self._own_pending.clear()
        if self._on_confchg_hook is not None and self.dfsm.we_are_member:
            self._on_confchg_hook(chg)

    # ------------------------------------------------------------------ group commit

    def begin_batch(self) -> None:
        """A CPG dispatch starts: quorum news first, then stage and hold replies."""
        if self._priority is not None:
            self._priority()
        self.journal.defer = True
        self.driver.begin_batch()

    def end_batch(self) -> None:
        """A CPG dispatch ended: on disk before any caller here sees its result."""
        self.journal.defer = False
        failure: int | None = None
        if self.journal.staged:
            if self.driver.held:
                if not self.flush():
                    failure = -errno.EIO
            elif not self._flush_due.is_set():
                self._flush_due.set()
        else:
            self._note_shared()
        self.driver.end_batch(failure)

    def flush(self) -> bool:
        try:
            self.journal.flush()
        except Exception as exc:
            log.error("dcdb: database write failed: %s", exc)
            self.journal.discard()
            self.tree.error = True  # sticky EIO, as after any failed write
            self.driver.fail("database write failed")
            return False
        self._note_shared()
        return True

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

    # ------------------------------------------------------------------ sync marker

    def _note_shared(self) -> None:
        """What is on disk, applied while synced in a group that may write, is cluster
        history (remembered here, written to the marker on the timer and at shutdown)."""
        if self.dfsm.mode is Mode.SYNCED and self.gate.writable:
            v = self.tree.root.version
            if v == self._shared_version:
                return
            self._shared_version = v
            now = trio.current_time() if _in_trio() else 0.0
            pending = self._own_pending
            if pending and now - pending[-1][0] < 0.5:
                pending[-1] = (now, v)  # coalesced: confirmed with the later one
            else:
                pending.append((now, v))

    def _confirm_own(self) -> None:
        if not _in_trio():
            return
        limit = trio.current_time() - OWN_CONFIRM_AFTER
        pending = self._own_pending
        while pending and pending[0][0] <= limit:
            self._own_confirmed = pending.pop(0)[1]

    def save_marker(self) -> None:
        """The last version known shared. A node alone in a group without quorum's votes
        also counts as synced, but shares nothing: what it changes then stays above the
        marker (lost+found). Exact at a clean shutdown, at most 10 s behind after a crash."""
        self._note_shared()
        self._confirm_own()
        if self._shared_version:
            own = max(self._own_confirmed, self.app.marker.load_both(self._shared_version)[1])
            self.app.marker.save(self._shared_version, own)

    # ------------------------------------------------------------------ timer

    def tick(self, now: float) -> None:
        """Once a second: the DFSM's verify timer; every MARKER_INTERVAL s the marker."""
        self.driver.feed(Tick(now))
        self._ticks += 1
        if self._ticks % MARKER_INTERVAL == 0:
            self.save_marker()

    # ------------------------------------------------------------------ run

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.runner.run)
                nursery.start_soon(self.run_flusher)
                task_status.started()
        finally:
            self.save_marker()


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True
