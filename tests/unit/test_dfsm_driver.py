"""DfsmDriver's direct send path and Dfsm.deliver, over a fake transport (no corosync).

`FakeCpg` stands in for what `pmxcfs.cluster` wires into the driver: `direct` plays
`Cpg.mcast_direct` (sends at once, or answers False / raises), `mcast` plays `Cpg.mcast`
for `run_sender`. `wire` is the multicast order; deliveries go back through
`driver.deliver` in that order, as totem hands a sender its own messages.
"""

from __future__ import annotations

import errno
import functools
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing

from pmxcfs.dcdb.app import DcdbApp
from pmxcfs.dcdb.backend import ClusterBackend
from pmxcfs.dcdb.codec import PROTOCOL_VERSION, FuseOp, Subtype
from pmxcfs.dfsm import codec
from pmxcfs.dfsm.codec import Epoch, Mode, MsgType
from pmxcfs.dfsm.driver import DfsmDriver
from pmxcfs.dfsm.machine import (
    ERRORS_KEPT,
    RESULT_FATAL,
    Action,
    ConfChg,
    Deliver,
    Dfsm,
    Event,
    Leave,
    LocalRequest,
    Member,
    Reply,
    Reset,
    Send,
)
from pmxcfs.tree import Tree, TreeError

ME: Member = (1, 101)
PEER: Member = (2, 202)
NOW = 1_700_000_000
VERSION = PROTOCOL_VERSION


def trio_test(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run under trio; a request that never resolves fails the test instead of hanging."""

    async def bounded(*args: Any, **kwargs: Any) -> None:
        with trio.fail_after(10):
            await fn(*args, **kwargs)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        trio.run(functools.partial(bounded, *args, **kwargs))

    return wrapper


def clock() -> float:
    return float(NOW)


def wire_count(data: bytes) -> int:
    msg = codec.decode(data)
    assert isinstance(msg, codec.NormalMessage)
    return msg.count


def fuse(subtype: Subtype, path: bytes, data: bytes = b"", offset: int = 0) -> tuple[int, bytes]:
    return int(subtype), FuseOp(path, data=data, offset=offset).encode()


# ----------------------------------------------------------------------- fake transport


class FakeCpg:
    def __init__(self, driver: DfsmDriver) -> None:
        self.driver = driver
        self.wire: list[bytes] = []
        self.delivered = 0
        self.direct_calls: list[int] = []  # counts offered to direct()
        self.mcast_calls: list[int] = []  # counts run_sender handed to mcast()
        self.refuse: set[int] = set()  # direct() answers False (busy, big, TRY_AGAIN)
        self.explode: set[int] = set()  # direct() raises
        self.gate: trio.Event | None = None  # holds mcast() until set

    def direct(self, data: bytes) -> bool:
        count = wire_count(data)
        self.direct_calls.append(count)
        if count in self.explode:
            raise OSError(errno.EIO, "corosync went away")
        if count in self.refuse:
            return False
        self.wire.append(data)
        return True

    async def mcast(self, data: bytes) -> None:
        self.mcast_calls.append(wire_count(data))
        if self.gate is not None:
            await self.gate.wait()
        self.wire.append(data)

    def counts(self) -> list[int]:
        return [wire_count(d) for d in self.wire]

    def deliver_all(self) -> None:
        while self.delivered < len(self.wire):
            data = self.wire[self.delivered]
            self.delivered += 1
            self.driver.deliver(ME[0], ME[1], data)


@dataclass
class Node:
    tree: Tree
    dfsm: Dfsm
    driver: DfsmDriver
    backend: ClusterBackend
    cpg: FakeCpg

    async def settle(self) -> None:
        """Let every task run, delivering what reaches the wire, until nothing moves."""
        while True:
            await trio.testing.wait_all_tasks_blocked()
            if self.cpg.delivered == len(self.cpg.wire):
                return
            self.cpg.deliver_all()


def make_node() -> Node:
    tree = Tree()
    app = DcdbApp(tree, clock=clock)
    app.local_member = ME
    dfsm = Dfsm(*ME, app, PROTOCOL_VERSION, name="t", clock=clock, verify_interval=None)
    driver = DfsmDriver(dfsm)
    fake = FakeCpg(driver)
    driver.direct = fake.direct
    driver.feed(ConfChg((ME,), (), (ME,)))
    assert dfsm.mode is Mode.SYNCED
    return Node(tree, dfsm, driver, ClusterBackend(tree, driver, app.gate), fake)


async def outcome(results: dict[str, object], key: str, fn: Callable[[], Awaitable[Any]]) -> None:
    try:
        results[key] = await fn()
    except TreeError as exc:
        results[key] = exc


# ----------------------------------------------------------------------- driver: direct


@trio_test
async def test_messages_go_out_directly_while_nothing_is_queued() -> None:
    n = make_node()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(n.driver.run_sender, n.cpg.mcast)
        results: dict[str, object] = {}
        nursery.start_soon(outcome, results, "mkdir", lambda: n.backend.mkdir("/d"))
        await trio.testing.wait_all_tasks_blocked()
        # sent by direct() from inside the request, not by the sender task
        assert n.cpg.counts() == [1] and n.cpg.direct_calls == [1] and n.cpg.mcast_calls == []
        await n.settle()
        assert results == {"mkdir": None}
        assert n.cpg.counts() == [1] and n.cpg.mcast_calls == []
        assert n.tree.lookup("d") is not None
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("in_flight", [False, True], ids=["waiting", "in-flight"])
@trio_test
async def test_queued_message_is_not_overtaken(in_flight: bool) -> None:
    """Message 1 is refused by direct(); 2..4 come while it is queued (not yet picked up
    by run_sender, or inside its mcast): they queue behind it, nothing overtakes it."""
    n = make_node()
    n.cpg.refuse = {1}
    if in_flight:
        n.cpg.gate = trio.Event()
    results: dict[str, object] = {}
    async with trio.open_nursery() as nursery:
        if in_flight:
            nursery.start_soon(n.driver.run_sender, n.cpg.mcast)
        ops: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("create", lambda: n.backend.create("/a.cfg")),
            ("write", lambda: n.backend.write("/a.cfg", 0, b"hello")),  # needs 1 first
            ("rename", lambda: n.backend.rename("/a.cfg", "/b.cfg")),
            ("mkdir", lambda: n.backend.mkdir("/dir")),
        ]
        for key, fn in ops:  # one at a time: counts 1, 2, 3, 4
            nursery.start_soon(outcome, results, key, fn)
            await trio.testing.wait_all_tasks_blocked()
        assert n.dfsm.msgcount == 4
        assert n.cpg.direct_calls == [1], "direct() was offered a message while one was queued"
        assert n.cpg.wire == []
        assert n.cpg.mcast_calls == ([1] if in_flight else [])
        if in_flight:
            assert n.cpg.gate is not None
            n.cpg.gate.set()
        else:
            nursery.start_soon(n.driver.run_sender, n.cpg.mcast)
        await trio.testing.wait_all_tasks_blocked()
        assert n.cpg.counts() == [1, 2, 3, 4]
        assert n.cpg.mcast_calls == [1, 2, 3, 4]
        await n.settle()
        assert results == {"create": None, "write": 5, "rename": None, "mkdir": None}
        # the queue drained: the next message goes out directly again
        nursery.start_soon(outcome, results, "create2", lambda: n.backend.create("/c.cfg"))
        await trio.testing.wait_all_tasks_blocked()
        assert n.cpg.direct_calls == [1, 5] and n.cpg.mcast_calls == [1, 2, 3, 4]
        await n.settle()
        assert results["create2"] is None
        assert n.cpg.counts() == [1, 2, 3, 4, 5]
        b = n.tree.lookup("b.cfg")
        assert b is not None and b.data == b"hello" and n.tree.lookup("a.cfg") is None
        assert n.dfsm.mode is Mode.SYNCED
        nursery.cancel_scope.cancel()


@trio_test
async def test_direct_refused_again_after_the_queue_drained_queues_again() -> None:
    n = make_node()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(n.driver.run_sender, n.cpg.mcast)
        n.cpg.refuse = {2}
        results: dict[str, object] = {}
        for i in range(1, 4):
            mkdir = functools.partial(n.backend.mkdir, f"/d{i}")
            nursery.start_soon(outcome, results, f"m{i}", mkdir)
            await trio.testing.wait_all_tasks_blocked()
        await n.settle()
        assert n.cpg.direct_calls == [1, 2, 3]  # 2 was refused and sent before 3 was made
        assert n.cpg.mcast_calls == [2]
        assert n.cpg.counts() == [1, 2, 3]
        assert results == {"m1": None, "m2": None, "m3": None}
        nursery.cancel_scope.cancel()


@trio_test
async def test_exception_from_direct_fails_the_request_with_ebusy() -> None:
    n = make_node()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(n.driver.run_sender, n.cpg.mcast)
        results: dict[str, object] = {}
        nursery.start_soon(outcome, results, "create", lambda: n.backend.create("/f"))
        await n.settle()
        assert results == {"create": None}
        n.cpg.explode = {2, 3}
        with pytest.raises(TreeError) as ei:
            await n.backend.write("/f", 0, b"lost")
        assert ei.value.errno == errno.EBUSY
        sub, payload = fuse(Subtype.WRITE, b"f", b"lost too")
        assert await n.driver.request(sub, payload) == -errno.EBUSY
        # nothing went out, nothing was left queued for the sender task
        assert n.cpg.counts() == [1] and n.cpg.mcast_calls == []
        assert n.dfsm.mode is Mode.SYNCED and n.dfsm.joined and not n.dfsm._waiting
        # still usable, and the next message goes out directly
        nursery.start_soon(outcome, results, "write", lambda: n.backend.write("/f", 0, b"ok"))
        await trio.testing.wait_all_tasks_blocked()
        assert n.cpg.direct_calls == [1, 2, 3, 4] and n.cpg.mcast_calls == []
        await n.settle()
        assert results["write"] == 2
        f = n.tree.lookup("f")
        assert f is not None and f.data == b"ok"
        nursery.cancel_scope.cancel()


@trio_test
async def test_reset_clears_direct_and_the_queue() -> None:
    n = make_node()
    n.cpg.refuse = {1}
    results: dict[str, object] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outcome, results, "mkdir", lambda: n.backend.mkdir("/gone"))
        await trio.testing.wait_all_tasks_blocked()
        assert n.cpg.direct_calls == [1] and "mkdir" not in results  # queued, waiting
        n.driver.reset()
        assert n.driver.direct is None
        await trio.testing.wait_all_tasks_blocked()
        err = results["mkdir"]
        assert isinstance(err, TreeError) and err.errno == errno.EBUSY
        assert n.dfsm.mode is Mode.START
        # the dropped message is not sent by a sender task started afterwards
        nursery.start_soon(n.driver.run_sender, n.cpg.mcast)
        await trio.testing.wait_all_tasks_blocked()
        assert n.cpg.mcast_calls == [] and n.cpg.wire == []
        # reconnected: nothing is counted as queued any more, so direct() is used at once
        n.driver.direct = n.cpg.direct
        n.driver.feed(ConfChg((ME,), (), (ME,)))
        assert n.dfsm.mode is Mode.SYNCED
        nursery.start_soon(outcome, results, "mkdir2", lambda: n.backend.mkdir("/here"))
        await trio.testing.wait_all_tasks_blocked()
        assert n.cpg.direct_calls == [1, 2] and n.cpg.mcast_calls == []
        await n.settle()
        assert results["mkdir2"] is None
        assert n.tree.lookup("here") is not None and n.tree.lookup("gone") is None
        nursery.cancel_scope.cancel()


# ----------------------------------------------------------------------- joined, errors


def test_machine_made_unjoined_refuses_until_reset_and_detach_refuses_again() -> None:
    """`joined=False` (a service before its first connection) and `detach()` (the transport
    went away) both answer local requests with EBUSY and send nothing, until a Reset."""
    app = DcdbApp(Tree(), clock=clock)
    d = Dfsm(*ME, app, PROTOCOL_VERSION, name="t", clock=clock, joined=False)
    assert d.feed(LocalRequest(1, b"x", 7)) == [Reply(7, -errno.EBUSY)]
    d.feed(Reset())
    d.feed(ConfChg((ME,), (), (ME,)))
    sent = d.feed(LocalRequest(1, b"x", 8))
    assert [type(a) for a in sent] == [Send] and d.joined
    d.detach()
    assert d.feed(LocalRequest(1, b"x", 9)) == [Reply(9, -errno.EBUSY)]
    assert d.mode is Mode.SYNCED and not d.joined


@trio_test
async def test_driver_disconnect_detaches_the_machine() -> None:
    n = make_node()
    n.driver.disconnect()
    sub, payload = fuse(Subtype.MKDIR, b"d")
    assert await n.driver.request(sub, payload) == -errno.EBUSY
    assert n.cpg.wire == [] and not n.dfsm.joined
    n.driver.reset()  # the runner's next connection
    n.driver.feed(ConfChg((ME,), (), (ME,)))
    assert n.dfsm.joined and n.dfsm.mode is Mode.SYNCED


def test_error_history_is_bounded_and_the_last_error_kept() -> None:
    d = Dfsm(*ME, DcdbApp(Tree(), clock=clock), PROTOCOL_VERSION, name="t", clock=clock)
    d.feed(ConfChg((ME,), (), (ME,)))
    for i in range(3 * ERRORS_KEPT):
        d.fail(f"error {i}")
    assert d.stats.fatal == 3 * ERRORS_KEPT and d.stats.last_error == f"error {3 * ERRORS_KEPT - 1}"
    assert list(d.stats.errors) == [f"error {i}" for i in range(2 * ERRORS_KEPT, 3 * ERRORS_KEPT)]


# ------------------------------------------------------ Dfsm.deliver == feed(Deliver)


def make_dfsm(member: Member, tree: Tree) -> Dfsm:
    app = DcdbApp(tree, clock=clock)
    app.local_member = member
    return Dfsm(
        *member, app, PROTOCOL_VERSION, name=f"n{member[0]}", clock=clock, verify_interval=None
    )


def snapshot(d: Dfsm, tree: Tree) -> tuple[object, ...]:
    return (
        d.mode,
        d.joined,
        d.msgcount,
        d.msgcount_rcvd,
        [(m.nodeid, m.pid, m.state, m.synced) for m in d.members or ()],
        d.sync_epoch,
        list(d.msg_queue),
        list(d.sync_queue),
        dict(d._waiting),
        (d.csum_id, d.csum, d.csum_epoch),
        d.stats.delivered,
        d.stats.ignored,
        d.stats.fatal,
        list(d.stats.errors),
        tree.encode_index(),
        [(e.inode, e.name, e.data) for e in tree.index.values()],
    )


class Twins:
    """The same node twice: one gets deliveries through `Dfsm.deliver`, the other
    through `Dfsm.feed(Deliver(...))`; every step must give identical actions and state."""

    def __init__(self) -> None:
        self.trees = (Tree(), Tree())
        self.fast = make_dfsm(ME, self.trees[0])
        self.slow = make_dfsm(ME, self.trees[1])
        self.actions: list[Action] = []

    def _same(self, a: list[Action], b: list[Action], what: object) -> list[Action]:
        assert a == b, what
        assert snapshot(self.fast, self.trees[0]) == snapshot(self.slow, self.trees[1]), what
        self.actions.extend(a)
        return a

    def feed(self, ev: Event) -> list[Action]:
        return self._same(self.fast.feed(ev), self.slow.feed(ev), ev)

    def deliver(self, sender: Member, data: bytes) -> list[Action]:
        a = self.fast.deliver(sender[0], sender[1], data)
        b = self.slow.feed(Deliver(sender[0], sender[1], data))
        return self._same(a, b, (sender, data))

    def request(self, subtype: int, payload: bytes, rid: int | None) -> bytes:
        (send,) = self.feed(LocalRequest(subtype, payload, rid))
        assert isinstance(send, Send)
        return send.data

    @property
    def tree(self) -> Tree:
        return self.trees[0]


def normal(count: int, subtype: int, payload: bytes, version: int = VERSION) -> bytes:
    return codec.encode_normal(subtype, version, NOW, count, payload)


def synced_twins() -> Twins:
    tw = Twins()
    assert tw.feed(ConfChg((ME,), (), (ME,))) == []
    assert tw.fast.mode is Mode.SYNCED
    return tw


def test_deliver_equals_feed_for_normal_and_state_messages() -> None:
    tw = synced_twins()
    mkdir = tw.request(*fuse(Subtype.MKDIR, b"dir"), 1)
    create = tw.request(*fuse(Subtype.CREATE, b"dir/f.cfg"), 2)
    assert tw.deliver(ME, mkdir) == [Reply(1, 0)]
    assert tw.deliver(ME, create) == [Reply(2, 0)]
    # another node's write, our own failing write (ENOENT comes back as the result)
    assert tw.deliver(PEER, normal(1, *fuse(Subtype.WRITE, b"dir/f.cfg", b"peer"))) == []
    missing = tw.request(*fuse(Subtype.WRITE, b"nope", b"x"), 3)
    assert tw.deliver(ME, missing) == [Reply(3, -errno.ENOENT)]
    # an older protocol version is ignored, not applied
    old = normal(2, *fuse(Subtype.WRITE, b"dir/f.cfg", b"OLD"), version=VERSION - 1)
    assert tw.deliver(PEER, old) == []
    f = tw.tree.lookup("dir/f.cfg")
    assert f is not None and f.data == b"peer" and f.writer == PEER[0]
    # state messages: a verify round of our own, a stale epoch, a SYNC_START while synced
    epoch = tw.fast.sync_epoch
    assert epoch == Epoch(1, NOW, *ME)
    req = codec.encode_state(MsgType.VERIFY_REQUEST, VERSION, NOW, epoch,
                             codec.encode_verify_request(1))  # fmt: skip
    (verify,) = tw.deliver(ME, req)
    assert isinstance(verify, Send)
    assert tw.deliver(ME, verify.data) == []
    stale = codec.encode_state(MsgType.STATE, VERSION, NOW, Epoch(9, 9, 9, 9), b"x")
    assert tw.deliver(PEER, stale) == []
    sync = codec.encode_state(MsgType.SYNC_START, VERSION, NOW, epoch)
    assert tw.deliver(PEER, sync) == []
    assert tw.fast.stats.ignored == 3 and tw.fast.stats.fatal == 0
    assert tw.fast.mode is Mode.SYNCED and tw.fast.stats.delivered == 4


@pytest.mark.parametrize(
    ("data", "mode"),
    [
        pytest.param(normal(1, *fuse(Subtype.MKDIR, b"d"))[:20], Mode.LEAVE, id="normal-cut-20"),
        pytest.param(normal(1, *fuse(Subtype.MKDIR, b"d"))[:10], Mode.LEAVE, id="cut-below-16"),
        pytest.param(normal(1, *fuse(Subtype.MKDIR, b"d"))[:-3], Mode.LEAVE, id="payload-cut"),
        pytest.param(normal(1, 99, b""), Mode.LEAVE, id="unknown-subtype"),
        pytest.param(
            normal(1, *fuse(Subtype.MKDIR, b"d"), version=VERSION + 1),
            Mode.VERSION_ERROR,
            id="newer-version",
        ),
        pytest.param(
            codec.encode_state(MsgType.UPDATE, VERSION, NOW, Epoch(1, NOW, *ME))[:28],
            Mode.LEAVE,
            id="state-cut",
        ),
    ],
)
def test_deliver_equals_feed_for_bad_messages(data: bytes, mode: Mode) -> None:
    tw = synced_twins()
    rid_send = tw.request(*fuse(Subtype.MKDIR, b"waiting"), 7)  # pending when it breaks
    actions = tw.deliver(PEER, data)
    assert Leave(mode) in actions
    assert tw.fast.mode is mode and tw.fast.stats.fatal == 1
    # afterwards everything is ignored, on both paths alike
    assert tw.deliver(ME, rid_send) == []
    assert tw.deliver(PEER, normal(2, *fuse(Subtype.MKDIR, b"later"))) == []
    assert tw.tree.lookup("waiting") is None and tw.tree.lookup("later") is None


def test_deliver_equals_feed_for_own_fatal_message() -> None:
    tw = synced_twins()
    bad = tw.request(int(Subtype.WRITE), b"not a fuse payload", 5)
    actions = tw.deliver(ME, bad)
    assert actions == [Reply(5, RESULT_FATAL), Leave(Mode.LEAVE)]


def test_deliver_equals_feed_through_a_resync() -> None:
    """Two members, the peer holds newer data: NORMAL messages delivered during
    START_SYNC/UPDATE are queued and applied after the UPDATEs, identically."""
    tw = Twins()
    peer_tree = Tree()
    peer_tree.mkdir("nodes", PEER[0], NOW - 10)
    peer_tree.create("nodes/peer.cfg", PEER[0], NOW - 5)
    peer = make_dfsm(PEER, peer_tree)
    wire: deque[tuple[Member, bytes]] = deque()

    def post(sender: Member, actions: list[Action]) -> None:
        wire.extend((sender, a.data) for a in actions if isinstance(a, Send))

    view = ConfChg((ME, PEER), (), (ME, PEER))
    post(ME, tw.feed(view))
    post(PEER, peer.feed(view))
    assert tw.fast.mode is Mode.START_SYNC and len(wire) == 1  # our SYNC_START
    post(PEER, peer.feed(LocalRequest(*fuse(Subtype.CREATE, b"nodes/during.cfg"), 1)))
    post(ME, tw.feed(LocalRequest(*fuse(Subtype.MKDIR, b"mine"), 1)))
    assert len(wire) == 3
    modes = set()
    held = 0  # most NORMAL messages held back at once (msg_queue + sync_queue)
    while wire:
        sender, data = wire.popleft()
        post(ME, tw.deliver(sender, data))
        post(PEER, peer.feed(Deliver(sender[0], sender[1], data)))
        modes.add(tw.fast.mode)
        held = max(held, len(tw.fast.msg_queue) + len(tw.fast.sync_queue))
    assert {Mode.START_SYNC, Mode.UPDATE, Mode.SYNCED} <= modes
    assert held == 2 and not tw.fast.msg_queue and not tw.fast.sync_queue
    assert tw.fast.mode is Mode.SYNCED and peer.mode is Mode.SYNCED
    assert Reply(1, 0) in tw.actions
    assert tw.tree.encode_index() == peer_tree.encode_index()
    for path in ("nodes/peer.cfg", "nodes/during.cfg", "mine"):
        assert tw.tree.lookup(path) is not None, path
