"""DCDB: what the `pve_dcdb_v1` DFSM synchronises - the memdb tree (wire-protocol §5-§7).

Applies delivered FUSE operations to the Tree with writer = sender nodeid and mtime = header
time, produces the STATE index, picks the data leader, ships or collects UPDATEs, and commits
a follower's new state through the journal in one transaction after the index byte-compare.
Entries a follower loses at that commit are saved under lost+found first (no silent loss).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .. import checksum
from ..constants import DT_DIR, DT_REG, VERSION_ROW_NAME
from ..cstr import c_str
from ..dfsm.codec import WireError
from ..dfsm.machine import DeliverOutcome, Member, StateOutcome
from ..tree import Entry, LoadError, Row, Tree, TreeError
from ..vmlist import VmListError
from . import codec
from .codec import FuseOp, Index, Subtype, UpdateEntry
from .marker import SyncMarker
from .writegate import WriteGate

log = logging.getLogger("pmxcfs.dcdb")

LOST_KEPT = 100  # lost entries remembered in memory

ResultObserver = Callable[[Member, int, int, int], None]  # sender, count, subtype, result


@dataclass(slots=True)
class SyncContext:
    leader: Member
    leader_index: Index
    own_index: Index
    updates: list[UpdateEntry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LostEntry:
    """An entry a node held before a sync commit replaced or removed it."""

    path: str
    inode: int
    version: int
    type: int
    saved_as: str | None


def _decode_path(raw: bytes | None) -> str | None:
    """A path as C receivers see it (up to the first NUL); None if absent or not UTF-8."""
    if raw is None:
        return None
    try:
        return c_str(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None


def choose_leader(states: Sequence[tuple[Member, Index]]) -> int:
    """§6.3: highest version, then highest mtime, then first in member order."""
    best = 0
    for i in range(1, len(states)):
        a, b = states[i][1], states[best][1]
        if a.version > b.version or (a.version == b.version and a.mtime > b.mtime):
            best = i
    return best


def missing_inodes(leader: Index, member: Index) -> list[int]:
    """§6.5 step 1: leader records the member lacks or holds with a different digest."""
    out: list[int] = []
    mem = member.records
    j = 0
    n = len(mem)
    for rec in leader.records:
        inode = rec[0]
        while j < n and mem[j][0] < inode:
            j += 1
        if j >= n or mem[j] != rec:
            out.append(inode)
    return out


def entry_to_update(e: Entry) -> UpdateEntry:
    data = e.data if e.type == DT_REG else b""
    name = b"" if e.inode == 0 else e.name_bytes
    etype = DT_DIR if e.inode == 0 else e.type
    return UpdateEntry(e.parent, e.inode, e.version, e.writer, e.mtime, etype, name, data)


def update_to_row(u: UpdateEntry) -> Row:
    """Raises UnicodeDecodeError for a name the database cannot store as TEXT."""
    if u.inode == 0:
        return (0, 0, u.version, u.writer, u.mtime, DT_REG, VERSION_ROW_NAME, None)
    name = u.name.decode("utf-8")
    data = u.data if u.type == DT_REG and u.data else None
    return (u.inode, u.parent, u.version, u.writer, u.mtime, u.type, name, data)


_WRITE = int(Subtype.WRITE)
_UNLOCK_REQUEST = int(Subtype.UNLOCK_REQUEST)
_UNLOCK = int(Subtype.UNLOCK)


class DcdbApp:
    """The DFSM Application for the configuration database."""

    def __init__(
        self,
        tree: Tree,
        *,
        gate: WriteGate | None = None,
        lost_found_dir: str | None = None,
        marker: SyncMarker | None = None,
        cluster_log: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        observer: ResultObserver | None = None,
    ) -> None:
        self.tree = tree
        #: whether writes may be applied; fed the group at every confchg, in totem order
        self.gate = gate if gate is not None else WriteGate()
        self.lost_found_dir = lost_found_dir
        self.marker = marker or SyncMarker(None)
        self.local_member: Member | None = None  # (nodeid, pid) once joined
        self.cluster_log = cluster_log
        self.clock = clock
        self.observer = observer
        self.ctx: SyncContext | None = None
        #: the latest entries lost at commits (the files themselves are in lost+found)
        self.lost: deque[LostEntry] = deque(maxlen=LOST_KEPT)
        self.commits = 0  # follower commits since the start

    # ------------------------------------------------------------------ sync

    def get_state(self) -> bytes | None:
        return self.tree.encode_index()

    def synced(self) -> Sequence[tuple[int, bytes]]:
        return ()

    def cleanup_sync(self) -> None:
        self.ctx = None

    def confchg(self, members: Sequence[Member]) -> None:
        self.gate.set_group(m[0] for m in members)

    def checksum(self) -> bytes | None:
        return checksum.verify_checksum(self.tree.index.values())

    def process_state(
        self, states: Sequence[tuple[Member, bytes]], local: Member
    ) -> StateOutcome | None:
        parsed: list[tuple[Member, Index]] = []
        for member, payload in states:
            try:
                parsed.append((member, codec.decode_index(payload)))
            except WireError as exc:
                log.error("dcdb: bad STATE from node %d/%d: %s", member[0], member[1], exc)
                return None
        li = choose_leader(parsed)
        leader, lidx = parsed[li]
        synced = frozenset(m for m, idx in parsed if idx.raw == lidx.raw)
        own = next((idx for m, idx in parsed if m == local), None)
        if own is None:
            log.error("dcdb: no own STATE among the collected states")
            return None
        log.info(
            "dcdb: data leader is node %d/%d (version %d); %d of %d members synced",
            leader[0], leader[1], lidx.version, len(synced), len(parsed),
        )  # fmt: skip
        self.ctx = SyncContext(leader, lidx, own)
        if own.raw == lidx.raw:
            self.marker.save(self.tree.root.version)  # our state is the cluster's
        if leader != local:
            return StateOutcome(synced)
        wanted: set[int] = set()
        for m, idx in parsed:
            if m != leader:
                wanted.update(missing_inodes(lidx, idx))
        updates: list[bytes] = []
        for inode in sorted(wanted):
            e = self.tree.index.get(inode)
            if e is None:  # cannot happen: our index is our tree
                log.error("dcdb: leader lacks inode %d it announced", inode)
                continue
            updates.append(entry_to_update(e).encode())
        return StateOutcome(synced, updates, send_complete=True)

    def process_update(self, sender: Member, payload: bytes) -> bool:
        if self.ctx is None:
            log.error("dcdb: UPDATE without a sync context")
            return False
        try:
            self.ctx.updates.append(codec.decode_update(payload))
        except WireError as exc:
            log.error("dcdb: bad UPDATE from node %d/%d: %s", sender[0], sender[1], exc)
            return False
        return True

    def commit(self) -> bool:
        """§6.8 follower commit: validate the complete new tree, save losses, one transaction."""
        ctx = self.ctx
        if ctx is None:
            log.error("dcdb: UPDATE_COMPLETE without a sync context")
            return False
        tree = self.tree
        leader_inodes = {r[0] for r in ctx.leader_index.records}
        deletes = [r[0] for r in ctx.own_index.records if r[0] not in leader_inodes]
        rows: dict[int, Row] = {inode: e.row() for inode, e in tree.index.items()}
        for inode in deletes:
            rows.pop(inode, None)
        upserts: list[Row] = []
        try:
            for u in ctx.updates:
                row = update_to_row(u)
                upserts.append(row)
                rows[u.inode] = row
        except UnicodeDecodeError:
            log.error("dcdb: sync update carries a name that is not UTF-8 - refusing it")
            return False
        try:
            new = Tree.from_rows(rows.values(), tree.journal, tree.clock)
            new.finish_load()
            # rows cannot tell an empty file truncated upward (C hashes no data for it):
            # the leader's digests can
            new.adopt_hollow(ctx.leader_index.records)
        except (LoadError, VmListError) as exc:
            log.error("dcdb: tree from the leader's updates is invalid: %s", exc)
            return False
        got = new.encode_index()
        if got != ctx.leader_index.raw or new.root.version == 0:
            log.error(
                "dcdb: index after applying %d updates differs from the leader's (node %d)",
                len(ctx.updates), ctx.leader[0],
            )  # fmt: skip
            return False
        self._save_lost(tree, new, ctx.leader)
        try:
            tree.journal.commit(upserts, deletes)
        except Exception as exc:
            tree.error = True
            log.error("dcdb: writing the synced state to the database failed: %s", exc)
            return False
        tree.replace_contents(new)
        self.marker.save(new.root.version)
        self.commits += 1
        log.info(
            "dcdb: synced from node %d: %d updated, %d removed, version %d",
            ctx.leader[0], len(upserts), len(deletes), new.root.version,
        )  # fmt: skip
        return True

    # ------------------------------------------------------------------ lost+found

    def _save_lost(self, old: Tree, new: Tree, leader: Member) -> None:
        """Every non-root entry changed here alone (above the sync marker) whose content or
        place the leader's state changes, or that disappears."""
        shared, own_shared = self.marker.load_both(old.root.version)
        me = self.local_member[0] if self.local_member is not None else None
        now = self.clock()
        tag = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + f"-v{old.root.version}"
        for inode, e in old.index.items():
            if inode == 0 or e.version <= (own_shared if e.writer == me else shared):
                continue
            ne = new.index.get(inode)
            old_path = old.path_of(e)
            if (
                ne is not None
                and ne.type == e.type
                and ne.data == e.data
                and (e.type == DT_DIR or new.path_of(ne) == old_path)
            ):
                continue
            saved: str | None = None
            if e.type == DT_REG:
                saved = self._write_lost(tag, old_path, e)
            what = "removed" if ne is None else "replaced"
            msg = (
                f"sync from node {leader[0]} {what} local entry '{old_path}' "
                f"(inode {inode}, version {e.version})" + (f", saved as {saved}" if saved else "")
            )
            log.warning("dcdb: %s", msg)
            if self.cluster_log is not None:
                self.cluster_log(msg)
            self.lost.append(LostEntry(old_path, inode, e.version, e.type, saved))

    def _write_lost(self, tag: str, path: str, e: Entry) -> str | None:
        base = self.lost_found_dir
        if base is None:
            return None
        target = os.path.join(base, tag, f"{path}.v{e.version}")
        real_base = os.path.realpath(base)
        if not os.path.realpath(target).startswith(real_base + os.sep):
            log.error("dcdb: refusing to save lost entry outside %s: %r", base, path)
            return None
        try:
            os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, e.data)
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("dcdb: cannot save lost entry %s to %s: %s", path, target, exc)
            return None
        return target

    # ------------------------------------------------------------------ operations

    def deliver(
        self, sender: Member, subtype: int, count: int, mtime: int, payload: bytes, lowest: bool
    ) -> DeliverOutcome:
        """§5.5 checks, then apply; the result is computed identically on every node."""
        if not _WRITE <= subtype <= _UNLOCK:
            log.error("dcdb: unknown message subtype %d from node %d", subtype, sender[0])
            return self._observe(sender, count, subtype, DeliverOutcome(-1, fatal=True))
        # A delivery in a group holding quorum's votes reached (or will reach) every
        # member of it; see WriteGate.applies.
        if not self.gate.applies:
            reason = "the " + self.gate.group_reason() if self.gate.quorate else "not quorate"
            if sender == self.local_member and self.gate.group == {sender[0]}:
                # Our own write, and nobody else in the group to have applied it: refusing
                # it diverges from no one, so no resync is needed. Leaving anyway would
                # leave a C peer that joins meanwhile alone in the group, where it serves
                # writes the next sync drops (its loss 2).
                log.warning("dcdb: own write refused while %s", reason)
                return self._observe(sender, count, subtype, DeliverOutcome(-errno.EACCES))
            log.error("dcdb: received write while %s - trigger resync", reason)
            return self._observe(sender, count, subtype, DeliverOutcome(-1, fatal=True))
        tree = self.tree
        try:
            if subtype >= _UNLOCK_REQUEST:
                msg = codec.decode_unlock(payload)
                out = self._unlock(sender, subtype, mtime, msg, lowest)
            else:
                op = codec.decode_fuse(payload)
                # Our own message answers a syscall that is waiting: no cache to invalidate.
                local = sender == self.local_member
                out = DeliverOutcome(self._apply(sender[0], subtype, mtime, op, local))
        except WireError as exc:
            log.error("dcdb: bad message %d from node %d: %s", subtype, sender[0], exc)
            out = DeliverOutcome(-1, fatal=True)
        except Exception:
            log.exception("dcdb: unexpected failure applying message %d", subtype)
            out = DeliverOutcome(-1, fatal=True)
        if tree.error:
            out.db_error = True
        return self._observe(sender, count, subtype, out)

    def _observe(
        self, sender: Member, count: int, subtype: int, out: DeliverOutcome
    ) -> DeliverOutcome:
        if self.observer is not None:
            self.observer(sender, count, subtype, out.result)
        return out

    def _apply(self, writer: int, subtype: int, mtime: int, op: FuseOp, local: bool) -> int:
        path = _decode_path(op.path)
        if path is None:
            log.error("dcdb: operation %d without a usable path - rejected", subtype)
            return -errno.EINVAL
        tree = self.tree
        try:
            if subtype == Subtype.WRITE:
                return tree.write(
                    path, op.offset, op.data, writer, mtime, op.flags != 0, local=local
                )
            if subtype == Subtype.CREATE:
                tree.create(path, writer, mtime, local=local)
            elif subtype == Subtype.MKDIR:
                tree.mkdir(path, writer, mtime, local=local)
            elif subtype == Subtype.DELETE:
                tree.delete(path, writer, mtime, local=local)
            elif subtype == Subtype.RENAME:
                to = _decode_path(op.to)
                if to is None:
                    log.error("dcdb: RENAME without a usable target - rejected")
                    return -errno.EINVAL
                tree.rename(path, to, writer, mtime, local=local)
            elif subtype == Subtype.MTIME:
                tree.set_mtime(path, op.offset, writer, local=local)
        except TreeError as exc:
            return -exc.errno
        return 0

    def _unlock(
        self, sender: Member, subtype: int, mtime: int, msg: codec.UnlockMsg, lowest: bool
    ) -> DeliverOutcome:
        path = _decode_path(msg.path)
        if path is None:
            return DeliverOutcome(0)
        tree = self.tree
        e = tree.lock_entry(path)
        if e is None or checksum.lock_checksum(e) != msg.csum:
            return DeliverOutcome(0)
        if subtype == Subtype.UNLOCK_REQUEST:
            if lowest and tree.lock_expired(path, msg.csum) and self.gate.writable:
                log.info("dcdb: lock %s expired - sending unlock", path)
                return DeliverOutcome(0, sends=((Subtype.UNLOCK, msg.encode()),))
            return DeliverOutcome(0)
        try:
            tree.delete(path, sender[0], mtime)
            log.info("dcdb: removed expired lock %s", path)
        except TreeError as exc:
            log.warning("dcdb: unlock of %s failed: %s", path, exc)
        return DeliverOutcome(0)
