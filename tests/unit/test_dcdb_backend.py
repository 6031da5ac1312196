"""ClusterBackend + DfsmDriver under trio, over an in-memory totem-ordered bus."""

from __future__ import annotations

import errno
import functools
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from pmxcfs.dcdb.app import DcdbApp
from pmxcfs.dcdb.backend import ClusterBackend
from pmxcfs.dcdb.codec import PROTOCOL_VERSION
from pmxcfs.dcdb.writegate import WriteGate
from pmxcfs.dfsm.codec import Mode
from pmxcfs.dfsm.driver import DfsmDriver
from pmxcfs.dfsm.machine import ConfChg, Deliver, Dfsm
from pmxcfs.tree import Tree, TreeError


def trio_test(fn: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    @functools.wraps(fn)
    def wrapper() -> None:
        trio.run(fn)

    return wrapper


class Bus:
    """One total order for everyone; a failing flag makes multicasts raise."""

    def __init__(self) -> None:
        self.drivers: dict[tuple[int, int], DfsmDriver] = {}
        self.tx, self.rx = trio.open_memory_channel[tuple[tuple[int, int], bytes]](1000)
        self.fail = False
        self.sent: list[bytes] = []

    def mcast_for(self, m: tuple[int, int]):  # type: ignore[no-untyped-def]
        async def mcast(data: bytes) -> None:
            if self.fail:
                raise OSError("corosync says no")
            self.sent.append(data)
            await self.tx.send((m, data))

        return mcast

    async def run(self) -> None:
        async for m, data in self.rx:
            for d in list(self.drivers.values()):
                d.feed(Deliver(m[0], m[1], data))

    def confchg(self) -> None:
        members = tuple(sorted(self.drivers))
        for d in self.drivers.values():
            d.feed(ConfChg(members, (), members))


class Node:
    def __init__(self, bus: Bus, nodeid: int, quorum: dict[int, bool]) -> None:
        self.tree = Tree()
        self.gate = WriteGate(lambda: quorum[nodeid])
        self.app = DcdbApp(self.tree, gate=self.gate)
        dfsm = Dfsm(nodeid, 100 + nodeid, self.app, PROTOCOL_VERSION, name=f"n{nodeid}")
        self.driver = DfsmDriver(dfsm)
        self.backend = ClusterBackend(self.tree, self.driver, self.gate)
        bus.drivers[(nodeid, 100 + nodeid)] = self.driver
        self.mcast = bus.mcast_for((nodeid, 100 + nodeid))


async def _settle() -> None:
    for _ in range(50):
        await trio.sleep(0)
    await trio.testing.wait_all_tasks_blocked()


async def _cluster(nursery: trio.Nursery, n: int = 2) -> tuple[Bus, list[Node], dict[int, bool]]:
    bus = Bus()
    quorum = dict.fromkeys(range(1, n + 1), True)
    nodes = [Node(bus, i, quorum) for i in range(1, n + 1)]
    nursery.start_soon(bus.run)
    for node in nodes:
        nursery.start_soon(node.driver.run_sender, node.mcast)
    bus.confchg()
    await _settle()
    assert all(x.driver.dfsm.mode == Mode.SYNCED for x in nodes)
    return bus, nodes, quorum


@trio_test
async def test_operations_replicate_and_return_results() -> None:
    async with trio.open_nursery() as nursery:
        _bus, (a, b), _q = await _cluster(nursery)
        await a.backend.mkdir("/dir")
        await a.backend.create("/dir/f.cfg")
        assert await a.backend.write("/dir/f.cfg", 0, b"hello") == 5
        await b.backend.truncate("/dir/f.cfg", 4)
        await b.backend.rename("/dir/f.cfg", "/dir/g.cfg")
        await a.backend.set_mtime("/dir/g.cfg", 1234)
        with pytest.raises(TreeError) as ei:
            await b.backend.create("/dir/g.cfg")
        assert ei.value.errno == errno.EEXIST
        with pytest.raises(TreeError) as ei:
            await a.backend.write("/missing", 0, b"x")
        assert ei.value.errno == errno.ENOENT
        await _settle()
        for n in (a, b):
            g = n.tree.lookup("dir/g.cfg")
            assert g is not None and g.data == b"hell" and g.mtime == 1234 and g.writer == 1
        assert a.tree.encode_index() == b.tree.encode_index()
        nursery.cancel_scope.cancel()


@trio_test
async def test_pipelined_callers_each_get_their_own_result() -> None:
    async with trio.open_nursery() as nursery:
        _bus, (a, b), _q = await _cluster(nursery)
        await a.backend.create("/f")
        results: dict[int, int] = {}

        async def writer(i: int) -> None:
            results[i] = await a.backend.write("/f", i, bytes([65 + i]) * (i + 1))

        async with trio.open_nursery() as inner:
            for i in range(10):
                inner.start_soon(writer, i)
        assert results == {i: i + 1 for i in range(10)}
        await _settle()
        assert a.tree.encode_index() == b.tree.encode_index()
        nursery.cancel_scope.cancel()


@trio_test
async def test_not_quorate_is_eacces_and_sends_nothing() -> None:
    async with trio.open_nursery() as nursery:
        bus, (a, _b), quorum = await _cluster(nursery)
        before = len(bus.sent)
        quorum[1] = False
        with pytest.raises(TreeError) as ei:
            await a.backend.create("/x")
        assert ei.value.errno == errno.EACCES
        assert not a.backend.quorate
        with pytest.raises(TreeError):
            await a.backend.set_mtime("/x", 0)  # no unlock request either
        assert len(bus.sent) == before
        nursery.cancel_scope.cancel()


@trio_test
async def test_send_failure_is_ebusy() -> None:
    async with trio.open_nursery() as nursery:
        bus, (a, _b), _q = await _cluster(nursery)
        bus.fail = True
        with pytest.raises(TreeError) as ei:
            await a.backend.mkdir("/d")
        assert ei.value.errno == errno.EBUSY
        assert a.driver.dfsm.mode == Mode.SYNCED
        bus.fail = False
        await a.backend.mkdir("/d")
        nursery.cancel_scope.cancel()


@trio_test
async def test_reset_aborts_waiters_with_ebusy() -> None:
    async with trio.open_nursery() as nursery:
        bus = Bus()
        quorum = {1: True, 2: True}
        a = Node(bus, 1, quorum)
        Node(bus, 2, quorum)
        nursery.start_soon(a.driver.run_sender, a.mcast)  # no bus delivery: waits forever
        bus.confchg()
        got: list[int] = []

        async def call() -> None:
            try:
                await a.backend.create("/f")
            except TreeError as exc:
                got.append(exc.errno)

        nursery.start_soon(call)
        await _settle()
        assert got == []
        a.driver.reset()
        await _settle()
        assert got == [errno.EBUSY]
        nursery.cancel_scope.cancel()


@trio_test
async def test_rename_onto_itself_is_never_sent() -> None:
    async with trio.open_nursery() as nursery:
        bus, (a, _b), _q = await _cluster(nursery)
        await a.backend.create("/same")
        before = len(bus.sent)
        await a.backend.rename("/same", "same/")
        await a.backend.rename("same", "//same")
        assert len(bus.sent) == before
        with pytest.raises(TreeError):
            await a.backend.rename("/nope", "/nope")
        with pytest.raises(TreeError) as ei:
            await a.backend.create("/bad\x00name")
        assert ei.value.errno == errno.EINVAL
        assert len(bus.sent) == before
        nursery.cancel_scope.cancel()


@trio_test
async def test_unlock_request_flow_through_backend() -> None:
    clock = [1_000_000.0]
    async with trio.open_nursery() as nursery:
        _bus, (a, b), _q = await _cluster(nursery)
        for n in (a, b):
            n.tree.clock = lambda: clock[0]
        await a.backend.mkdir("/priv")
        await a.backend.mkdir("/priv/lock")
        await a.backend.mkdir("/priv/lock/l")
        with pytest.raises(TreeError) as ei:
            await b.backend.set_mtime("/priv/lock/l", 0)
        assert ei.value.errno == errno.EACCES
        await _settle()
        assert b.tree.lookup("priv/lock/l") is not None
        clock[0] += 121
        with pytest.raises(TreeError):
            await b.backend.set_mtime("/priv/lock/l", 0)
        await _settle()
        assert a.tree.lookup("priv/lock/l") is None and b.tree.lookup("priv/lock/l") is None
        nursery.cancel_scope.cancel()
