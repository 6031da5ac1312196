"""The generic DFSM as a sans-I/O state machine (wire-protocol §2.5, §3.5, §4).

`Dfsm.feed(event) -> list[Action]`: the caller (a trio adapter, a test simulator, a replay)
feeds membership changes, deliveries, timer ticks and local send requests, and performs the
returned actions (multicast bytes, hand a result to a waiting caller, leave the group) in
order. What is synchronised is an `Application` (DCDB, kvstore); its callbacks run inline,
exactly where the reference calls them, so ordering relative to the total order is preserved.
The application's owner gives the protocol version and the name its log lines carry.
"""

from __future__ import annotations

import bisect
import errno
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from . import codec
from .codec import Epoch, Mode, MsgType, WireError

log = logging.getLogger("pmxcfs.dfsm")

Member = tuple[int, int]

DEFAULT_VERIFY_INTERVAL = 3600.0
RESULT_FATAL = -1  # what the sender sees when its own message was fatal at delivery (§5.7)
RESULT_ABORTED = -errno.EBUSY
ERRORS_KEPT = 20  # Stats.errors: the most recent fatal reasons
_NORMAL = int(MsgType.NORMAL)
_NORMAL_HEADER = codec.NORMAL_HEADER
_NORMAL_SIZE = codec.NORMAL_SIZE


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class ConfChg:
    members: tuple[Member, ...]
    left: tuple[Member, ...] = ()
    joined: tuple[Member, ...] = ()


@dataclass(frozen=True, slots=True)
class Deliver:
    nodeid: int
    pid: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Tick:
    """Timer event; `now` in seconds (the verify timer compares it with the last run)."""

    now: float


@dataclass(frozen=True, slots=True)
class LocalRequest:
    """Send an application message; request_id None means nobody waits for the result."""

    subtype: int
    payload: bytes
    request_id: int | None = None


class SendKind(Enum):
    NORMAL = "normal"  # failure: the waiting caller gets -EBUSY
    RESEND = "resend"  # failure: fatal
    STATE = "state"  # SYNC_START, STATE, UPDATE_COMPLETE, VERIFY*: failure fatal
    UPDATE = "update"  # failure only logged (§6.5)


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes
    kind: SendKind
    request_id: int | None = None
    count: int = 0


@dataclass(frozen=True, slots=True)
class SendFailed:
    """The adapter could not multicast `send` (after its retries)."""

    send: Send
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Reset:
    """The service is (re)initialised: queue cleared, waiters aborted, mode START (§2.2)."""


Event = ConfChg | Deliver | Tick | LocalRequest | SendFailed | Reset


@dataclass(frozen=True, slots=True)
class Reply:
    request_id: int
    result: int


@dataclass(frozen=True, slots=True)
class Leave:
    """Leave the CPG group; the service restarts later if the mode is restartable."""

    mode: Mode


Action = Send | Reply | Leave


# ---------------------------------------------------------------------------- application


@dataclass(slots=True)
class DeliverOutcome:
    """What the application did with one NORMAL message."""

    result: int = 0
    fatal: bool = False  # §5.5 steps 1-3: result -1 for the sender, then LEAVE
    db_error: bool = False  # §5.5 step 5: mode ERROR
    sends: Sequence[tuple[int, bytes]] = ()  # fire-and-forget NORMAL messages (UNLOCK)


@dataclass(slots=True)
class StateOutcome:
    """Result of processing all members' states (identical decision on every node)."""

    synced: frozenset[Member]
    updates: Sequence[bytes] = ()  # only on the data leader; then UPDATE_COMPLETE is sent
    send_complete: bool = False
    sends: Sequence[tuple[int, bytes]] = ()  # NORMAL messages (kvstore: the re-broadcast)


class Application(Protocol):
    def get_state(self) -> bytes | None:
        """Our STATE payload; None = failure (fatal)."""

    def process_state(
        self, states: Sequence[tuple[Member, bytes]], local: Member
    ) -> StateOutcome | None:
        """All STATEs in member-table order; None = failure (fatal)."""

    def process_update(self, sender: Member, payload: bytes) -> bool:
        """One UPDATE while in UPDATE mode; False = parse error (fatal)."""

    def commit(self) -> bool:
        """UPDATE_COMPLETE in UPDATE mode; False = fatal."""

    def cleanup_sync(self) -> None:
        """Drop the sync context (states, updates)."""

    def deliver(
        self, sender: Member, subtype: int, count: int, mtime: int, payload: bytes, lowest: bool
    ) -> DeliverOutcome: ...

    def checksum(self) -> bytes | None:
        """32-byte verify checksum, or None if this application has no verify."""

    def confchg(self, members: Sequence[Member]) -> None:
        """A membership this node is part of, before anything is delivered under it (dcdb:
        the write gate's group; kvstore: online flags)."""

    def synced(self) -> Sequence[tuple[int, bytes]]:
        """Entering SYNCED: NORMAL messages to send (kvstore: the nodeip announce)."""


# ---------------------------------------------------------------------------- state


@dataclass(slots=True)
class MemberInfo:
    nodeid: int
    pid: int
    state: bytes | None = None
    synced: bool = False


@dataclass(slots=True)
class Queued:
    nodeid: int
    pid: int
    count: int
    data: bytes


@dataclass(slots=True)
class Stats:
    """What the admin status shows of a group; `errors` keeps only the latest reasons."""

    delivered: int = 0
    ignored: int = 0
    fatal: int = 0
    syncs: int = 0
    last_error: str = ""
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=ERRORS_KEPT))


class Dfsm:
    """One DFSM instance for one CPG group.

    `protocol_version` and `name` (the log prefix) belong to the application's group.
    `joined=False` makes local requests fail with EBUSY until the first `Reset` (a service
    that has not connected yet); `detach()` does the same when the transport is gone.
    """

    def __init__(
        self,
        nodeid: int,
        pid: int,
        app: Application,
        protocol_version: int,
        *,
        name: str,
        clock: Callable[[], float] = time.time,
        verify_interval: float | None = DEFAULT_VERIFY_INTERVAL,
        joined: bool = True,
    ) -> None:
        self.nodeid = nodeid
        self.pid = pid
        self.me: Member = (nodeid, pid)
        self.app = app
        self.protocol_version = protocol_version
        self.name = name
        self.clock = clock
        self.verify_interval = verify_interval
        self.last_timer = clock()
        self.mode = Mode.START
        self.local_epoch_counter = 0
        self.sync_epoch = codec.ZERO_EPOCH
        self.lowest_nodeid = 0
        self.members: list[MemberInfo] | None = None
        self._by_id: dict[Member, MemberInfo] = {}
        self.we_are_member = False
        self.joined = joined
        self.msgcount = 0
        self.msgcount_rcvd = 0
        self.msg_queue: list[Queued] = []
        self.sync_queue: list[Queued] = []
        self.csum_counter = 0
        self.csum_id = 0
        self.csum = b""
        self.csum_epoch = codec.ZERO_EPOCH
        self._waiting: dict[int, int] = {}  # count -> request_id
        self._out: list[Action] = []
        self.stats = Stats()

    # ------------------------------------------------------------------ public

    def set_identity(self, nodeid: int, pid: int) -> None:
        """Learned from CPG at the first connection (cpg_local_get, getpid)."""
        self.nodeid = nodeid
        self.pid = pid
        self.me = (nodeid, pid)

    def detach(self) -> None:
        """The transport is gone: nothing can be sent until the next `Reset`."""
        self.joined = False

    @property
    def restartable(self) -> bool:
        return self.mode not in (Mode.ERROR, Mode.VERSION_ERROR)

    @property
    def is_lowest(self) -> bool:
        return self.lowest_nodeid != 0 and self.lowest_nodeid == self.nodeid

    def member_list(self) -> list[Member]:
        return [(m.nodeid, m.pid) for m in self.members or ()]

    def deliver(self, nodeid: int, pid: int, data: bytes) -> list[Action]:
        """`feed(Deliver(nodeid, pid, data))` without the event object: the hot path.

        A NORMAL message of our protocol version in SYNCED mode goes straight to the
        application; anything else takes the general path.
        """
        out = self._out = []
        if self.mode is Mode.SYNCED and len(data) >= _NORMAL_SIZE:
            mtype, subtype, version, mtime, _reserved, count = _NORMAL_HEADER.unpack_from(data)
            if mtype == _NORMAL and version == self.protocol_version:
                self._apply_normal((nodeid, pid), subtype, count, mtime, data[_NORMAL_SIZE:])
                self._out = []
                return out
        self._deliver(nodeid, pid, data)
        self._out = []
        return out

    def fail(self, reason: str, mode: Mode = Mode.ERROR) -> list[Action]:
        """An error outside any event (a deferred database write failed): leave the group."""
        out = self._out = []
        self._fatal(reason, mode)
        self._out = []
        return out

    def feed(self, event: Event) -> list[Action]:
        out = self._out = []
        if isinstance(event, Deliver):
            self._deliver(event.nodeid, event.pid, event.data)
        elif isinstance(event, ConfChg):
            self._confchg(event)
        elif isinstance(event, LocalRequest):
            self._local_request(event)
        elif isinstance(event, Tick):
            self._tick(event.now)
        elif isinstance(event, SendFailed):
            self._send_failed(event)
        elif isinstance(event, Reset):
            self._reset()
        self._out = []
        return out

    # ------------------------------------------------------------------ helpers

    def _emit(self, a: Action) -> None:
        self._out.append(a)

    def _now(self) -> int:
        return int(self.clock()) & codec.U32

    def _set_mode(self, new: Mode) -> None:
        cur = self.mode
        if new < 128:
            self.mode = new
            if new == Mode.SYNCED and cur != Mode.SYNCED:
                self.stats.syncs += 1
                for subtype, payload in self.app.synced():
                    self._send_normal(subtype, payload, None)
            return
        if cur < 128 or new >= cur:
            self.mode = new
            if cur < 128 and self.joined:
                self.joined = False
                self._emit(Leave(new))

    def _fatal(self, reason: str, mode: Mode = Mode.LEAVE) -> None:
        """A condition the reference answers by leaving (and later resyncing)."""
        self.stats.fatal += 1
        self.stats.last_error = reason
        self.stats.errors.append(reason)
        if not self.mode.is_error:
            log.error("%s: %s - leaving group (mode %s)", self.name, reason, mode.name)
        self._drop_sync()
        self._set_mode(mode)

    def _drop_sync(self) -> None:
        for m in self.members or ():
            m.state = None
        self.app.cleanup_sync()

    def _send_state(
        self, mtype: MsgType, payload: bytes = b"", kind: SendKind = SendKind.STATE
    ) -> None:
        data = codec.encode_state(
            mtype, self.protocol_version, self._now(), self.sync_epoch, payload
        )
        self._emit(Send(data, kind))

    def _send_normal(self, subtype: int, payload: bytes, request_id: int | None) -> None:
        self.msgcount += 1
        count = self.msgcount
        if request_id is not None:
            self._waiting[count] = request_id
        data = codec.encode_normal(subtype, self.protocol_version, self._now(), count, payload)
        self._emit(Send(data, SendKind.NORMAL, request_id, count))

    def _record_result(self, count: int, result: int) -> None:
        rid = self._waiting.pop(count, None)
        if rid is not None:
            self._emit(Reply(rid, result))
        if count > self.msgcount_rcvd:
            self.msgcount_rcvd = count
        if not self._waiting:
            return
        # Anything older that was never answered can no longer be (C: woken without result).
        stale = [c for c in self._waiting if c <= self.msgcount_rcvd]
        for c in sorted(stale):
            self._emit(Reply(self._waiting.pop(c), RESULT_ABORTED))

    def _abort_waiters(self) -> None:
        self.msgcount_rcvd = self.msgcount
        for c in sorted(self._waiting):
            self._emit(Reply(self._waiting[c], RESULT_ABORTED))
        self._waiting.clear()

    # ------------------------------------------------------------------ events

    def _reset(self) -> None:
        self.msg_queue.clear()
        self._abort_waiters()
        self.we_are_member = False
        if not self.restartable:
            # ERROR / VERSION_ERROR stay until the process restarts (§2.7): the reset done
            # after leaving the group must not make the service restartable again.
            self.joined = False
            return
        self.joined = True
        self.mode = Mode.START

    def _local_request(self, req: LocalRequest) -> None:
        if self.mode.is_error or not self.joined:
            # The reference would attempt cpg_mcast_joined and fail (not joined): EBUSY.
            self.msgcount += 1
            if req.request_id is not None:
                self._emit(Reply(req.request_id, RESULT_ABORTED))
            return
        self._send_normal(req.subtype, req.payload, req.request_id)

    def _send_failed(self, ev: SendFailed) -> None:
        s = ev.send
        if s.kind is SendKind.NORMAL:
            log.warning("%s: multicast of message %d failed: %s", self.name, s.count, ev.reason)
            rid = self._waiting.pop(s.count, None)
            if rid is not None:
                self._emit(Reply(rid, RESULT_ABORTED))
        elif s.kind is SendKind.UPDATE:
            log.error("%s: sending UPDATE failed: %s", self.name, ev.reason)
        else:
            self._fatal(f"multicast of {s.kind.value} message failed: {ev.reason}")

    def _tick(self, now: float) -> None:
        if self.verify_interval is None or now - self.last_timer < self.verify_interval:
            return
        self.last_timer = now
        self.verify_timer()

    def verify_timer(self) -> None:
        """§4.9 steps 1-2: only the coordinator in SYNCED starts a round."""
        if not self.is_lowest or self.mode != Mode.SYNCED:
            return
        if self.csum_counter != self.csum_id:
            log.info("%s: delaying verify request (previous round pending)", self.name)
            return
        self.csum_counter += 1
        self._send_state(MsgType.VERIFY_REQUEST, codec.encode_verify_request(self.csum_counter))

    def _confchg(self, ev: ConfChg) -> None:
        self.we_are_member = False
        self.local_epoch_counter += 1
        self.sync_epoch = Epoch(self.local_epoch_counter, self._now(), self.nodeid, self.pid)
        self.csum_id = self.csum_counter
        self.csum_epoch = codec.ZERO_EPOCH
        self.sync_queue.clear()
        if self.mode.is_error:
            return
        ids = [m[0] for m in ev.members]
        self.lowest_nodeid = min(ids) if ids else 0
        self.we_are_member = self.me in ev.members
        if self.members is not None:
            self._drop_sync()
        else:
            self.app.cleanup_sync()
        self.members = [MemberInfo(n, p) for n, p in sorted(set(ev.members))]
        self._by_id = {(m.nodeid, m.pid): m for m in self.members}
        if not self.we_are_member:
            if self.mode != Mode.START:
                self._fatal("we are no longer a member of the group")
            return
        # before anything is delivered under the new membership (the queue, below)
        self.app.confchg(list(ev.members))
        if len(ev.members) > 1:
            if ev.joined and self.msg_queue:
                for q in self.msg_queue:
                    if (q.nodeid, q.pid) == self.me:
                        self._emit(Send(q.data, SendKind.RESEND, None, q.count))
                self.msg_queue.clear()
            self._set_mode(Mode.START_SYNC)
            if self.is_lowest:
                self._send_state(MsgType.SYNC_START)
        else:
            self._set_mode(Mode.SYNCED)
            self._by_id[self.me].synced = True
            if not self._deliver_queue():
                self._fatal("delivering the queue failed")

    # ------------------------------------------------------------------ receive path

    def _deliver(self, nodeid: int, pid: int, data: bytes) -> None:
        if self.mode.is_error:
            self.stats.ignored += 1
            return
        if self.members is None:
            self._fatal("message before any membership change")
            return
        try:
            mtype, _subtype, version, _t = codec.peek_header(data)
        except WireError as exc:
            self._fatal(f"bad message from node {nodeid}/{pid}: {exc}")
            return
        if version != self.protocol_version:
            if version > self.protocol_version:
                log.error(
                    "%s: node %d/%d uses protocol version %d > ours (%d) - stopping",
                    self.name, nodeid, pid, version, self.protocol_version,
                )  # fmt: skip
                self._fatal("peer uses a newer protocol", Mode.VERSION_ERROR)
            else:
                log.warning("%s: ignoring message with old protocol version %d", self.name, version)
                self.stats.ignored += 1
            return
        try:
            msg = codec.decode(data)
        except WireError as exc:
            self._fatal(f"bad message type {mtype} from node {nodeid}/{pid}: {exc}")
            return
        sender = (nodeid, pid)
        if isinstance(msg, codec.NormalMessage):
            self._on_normal(sender, msg, data)
        else:
            if msg.type != MsgType.SYNC_START and msg.epoch != self.sync_epoch:
                self.stats.ignored += 1
                return
            self._on_state(sender, msg)

    def _enqueue(self, sender: Member, count: int, data: bytes) -> None:
        bisect.insort_right(self.msg_queue, Queued(sender[0], sender[1], count, data),
                            key=lambda q: q.count)  # fmt: skip

    def _on_normal(self, sender: Member, msg: codec.NormalMessage, data: bytes) -> None:
        mode = self.mode
        if mode == Mode.SYNCED:
            self._apply_normal(sender, msg.subtype, msg.count, msg.time, msg.payload)
        elif mode == Mode.START_SYNC:
            if sender not in self._by_id:
                self._fatal(f"message from non-member {sender[0]}/{sender[1]}")
                return
            self._enqueue(sender, msg.count, data)
        elif mode == Mode.UPDATE:
            m = self._by_id.get(sender)
            if m is not None and m.synced:
                self.sync_queue.append(Queued(sender[0], sender[1], msg.count, data))
            else:
                self._enqueue(sender, msg.count, data)
        else:  # START with a member table from an earlier incarnation
            self._enqueue(sender, msg.count, data)

    def _apply_normal(
        self, sender: Member, subtype: int, count: int, mtime: int, payload: bytes
    ) -> None:
        lowest = self.lowest_nodeid != 0 and self.lowest_nodeid == self.nodeid
        out = self.app.deliver(sender, subtype, count, mtime, payload, lowest)
        self.stats.delivered += 1
        if sender == self.me:
            self._record_result(count, RESULT_FATAL if out.fatal else out.result)
        if out.sends:
            for sub, data in out.sends:
                self._send_normal(sub, data, None)
        if out.db_error:
            self._fatal("database error after applying a message", Mode.ERROR)
        elif out.fatal:
            self._fatal(f"fatal application message {subtype} from {sender[0]}/{sender[1]}")

    def _on_state(self, sender: Member, msg: codec.StateMessage) -> None:
        mode = self.mode
        t = msg.type
        if mode == Mode.SYNCED:
            if t == MsgType.UPDATE_COMPLETE:
                for m in self.members or ():
                    m.synced = True
                if not self._deliver_queue():
                    self._fatal("delivering the queue failed")
            elif t == MsgType.VERIFY_REQUEST:
                self._on_verify_request(sender, msg)
            elif t == MsgType.VERIFY:
                self._on_verify(msg)
            else:
                self.stats.ignored += 1
        elif mode == Mode.START_SYNC:
            if t == MsgType.SYNC_START:
                self._on_sync_start(sender, msg)
            elif t == MsgType.STATE:
                self._on_state_msg(sender, msg)
            elif t in (MsgType.VERIFY_REQUEST, MsgType.VERIFY):
                # The reference leaves here (quirk §10.2); ignoring is a safe local choice.
                log.info("%s: ignoring verify message while not synced", self.name)
                self.stats.ignored += 1
            else:
                self._fatal(f"unexpected message type {t} in START_SYNC")
        elif mode == Mode.UPDATE:
            if t == MsgType.UPDATE:
                if not self.app.process_update(sender, msg.payload):
                    self._fatal("bad UPDATE message")
            elif t == MsgType.UPDATE_COMPLETE:
                self._on_update_complete()
            elif t in (MsgType.VERIFY_REQUEST, MsgType.VERIFY):
                log.info("%s: ignoring verify message while updating", self.name)
                self.stats.ignored += 1
            else:
                self._fatal(f"unexpected message type {t} in UPDATE")
        else:
            self._fatal(f"state message type {t} in mode {mode.name}")

    def _on_sync_start(self, sender: Member, msg: codec.StateMessage) -> None:
        if sender[0] != self.lowest_nodeid:
            log.warning("%s: SYNC_START from node %d which is not the lowest", self.name, sender[0])
        self.sync_epoch = msg.epoch
        self._drop_sync()
        state = self.app.get_state()
        if state is None:
            self._fatal("unable to get local state")
            return
        self._send_state(MsgType.STATE, state)

    def _on_state_msg(self, sender: Member, msg: codec.StateMessage) -> None:
        m = self._by_id.get(sender)
        if m is None:
            self._fatal(f"STATE from non-member {sender[0]}/{sender[1]}")
            return
        if m.state is not None:
            self._fatal(f"duplicate STATE from {sender[0]}/{sender[1]}")
            return
        m.state = msg.payload
        members = self.members or []
        if any(x.state is None for x in members):
            return
        states = [((x.nodeid, x.pid), x.state or b"") for x in members]
        res = self.app.process_state(states, self.me)
        if res is None:
            self._fatal("processing the collected states failed")
            return
        for x in members:
            if (x.nodeid, x.pid) in res.synced:
                x.synced = True
        for subtype, payload in res.sends:
            self._send_normal(subtype, payload, None)
        for payload in res.updates:
            self._send_state(MsgType.UPDATE, payload, SendKind.UPDATE)
        if res.send_complete:
            self._send_state(MsgType.UPDATE_COMPLETE)
        if self._by_id[self.me].synced:
            self._set_mode(Mode.SYNCED)
            self._drop_sync()
            if not self._deliver_queue():
                self._fatal("delivering the queue failed")
        else:
            self._set_mode(Mode.UPDATE)
            if not self._deliver_queue():
                self._fatal("delivering the queue failed")

    def _on_update_complete(self) -> None:
        if not self.app.commit():
            self._fatal("applying the updates failed")
            return
        for m in self.members or ():
            m.synced = True
        self._set_mode(Mode.SYNCED)
        queue, self.sync_queue = self.sync_queue, []
        for q in queue:
            if self.mode != Mode.SYNCED:
                self._fatal("lost SYNCED while delivering the sync queue")
                break
            self._deliver(q.nodeid, q.pid, q.data)
        if self.mode == Mode.SYNCED and not self._deliver_queue():
            self._fatal("delivering the queue failed")
        self._drop_sync()

    def _deliver_queue(self) -> bool:
        """§4.7 'deliver queue': apply, move to the sync queue, keep, or drop each entry."""
        keep: list[Queued] = []
        queue = self.msg_queue
        self.msg_queue = keep
        ok = True
        for i, q in enumerate(queue):
            m = self._by_id.get((q.nodeid, q.pid))
            if m is None:
                continue
            if self.mode == Mode.SYNCED and m.synced:
                self._deliver(q.nodeid, q.pid, q.data)
            elif self.mode == Mode.UPDATE and m.synced:
                self.sync_queue.append(q)
            elif self.mode in (Mode.SYNCED, Mode.UPDATE):
                keep.append(q)
            else:
                keep.extend(queue[i:])
                ok = False
                break
        # messages enqueued meanwhile (none in practice) keep their order
        if self.msg_queue is not keep:
            keep.extend(self.msg_queue)
            self.msg_queue = keep
        return ok

    # ------------------------------------------------------------------ verify

    def _on_verify_request(self, sender: Member, msg: codec.StateMessage) -> None:
        try:
            csum_id = codec.decode_verify_request(msg.payload)
        except WireError as exc:
            self._fatal(str(exc))
            return
        csum = self.app.checksum()
        if csum is None:
            return  # application without verify (kvstore): length checked, then ignored
        self.csum = csum
        self.csum_epoch = msg.epoch
        self.csum_id = csum_id
        if sender == self.me:
            self._send_state(MsgType.VERIFY, codec.encode_verify(csum_id, csum))

    def _on_verify(self, msg: codec.StateMessage) -> None:
        try:
            csum_id, csum = codec.decode_verify(msg.payload)
        except WireError as exc:
            self._fatal(str(exc))
            return
        if csum_id == self.csum_id and msg.epoch == self.csum_epoch:
            if csum != self.csum:
                self._fatal("verify: checksum mismatch - our data differs from the coordinator's")
            else:
                log.info("%s: data verification successful", self.name)
        else:
            log.info("%s: skipping verification - no checksum saved", self.name)
