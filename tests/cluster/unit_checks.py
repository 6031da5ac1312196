"""Binding checks that need a live corosync; run *inside* a test node.

corosync's IPC is reachable only from the node's network and mount namespaces, so
``tests/cluster/test_cpg_unit.py`` runs ``python unit_checks.py NAME`` there via the harness.
Each check is an async function that raises (assert) on failure; exit status 0 = pass.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

import cpg
from cpg import (
    Cmap,
    CorosyncUnavailable,
    Cpg,
    CpgConfchg,
    CpgDeliver,
    CpgNameError,
    CpgNotJoined,
    CSErrLibrary,
    CSErrNotExist,
    CSErrTooBig,
    CSErrTryAgain,
    HandleClosedError,
    Quorum,
    Votequorum,
)

CHECKS: dict[str, Callable[[], Awaitable[None]]] = {}


def check(fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    CHECKS[fn.__name__] = fn
    return fn


async def next_deliver(c: Cpg, timeout: float = 10.0) -> CpgDeliver:
    with trio.fail_after(timeout):
        while True:
            ev = await c.receive()
            if isinstance(ev, CpgDeliver):
                return ev


async def next_confchg(c: Cpg, timeout: float = 10.0) -> CpgConfchg:
    with trio.fail_after(timeout):
        while True:
            ev = await c.receive()
            if isinstance(ev, CpgConfchg):
                return ev


def raises(exc: type[BaseException], fn: Callable[[], object]) -> BaseException:
    try:
        fn()
    except exc as e:
        return e
    raise AssertionError(f"{fn} did not raise {exc.__name__}")


async def araises(exc: type[BaseException], fn: Callable[[], Awaitable[object]]) -> BaseException:
    try:
        await fn()
    except exc as e:
        return e
    raise AssertionError(f"{fn} did not raise {exc.__name__}")


@check
async def name_limits() -> None:
    """128 name bytes is the limit, the NUL counts, and bad names never reach C."""
    async with trio.open_nursery() as nursery:
        a = Cpg()
        nursery.start_soon(a.run)
        e = await araises(CpgNameError, lambda: a.join(b"x" * 128, include_nul=True))
        assert "129 bytes" in str(e) and "128" in str(e), e
        await araises(CpgNameError, lambda: a.join(b"x" * 129, include_nul=False))
        await araises(CpgNameError, lambda: a.join(b"", include_nul=False))
        await araises(CpgNameError, lambda: a.join(b"a\0b", include_nul=True))
        assert a.group is None
        raw = await a.join(b"y" * 127, include_nul=True)  # 128 with the NUL: allowed
        assert raw == b"y" * 127 + b"\0" and len(raw) == 128
        ev = await next_confchg(a)
        assert ev.group == raw and (a.nodeid, os.getpid()) in [m[:2] for m in ev.members]
        members = a.membership(b"y" * 127, include_nul=True)
        assert [(m.nodeid, m.pid) for m in members] == [(a.nodeid, os.getpid())]
        assert a.membership(b"y" * 127, include_nul=False) == ()
        a.finalize()


@check
async def nul_makes_a_different_group() -> None:
    """Joining with and without the trailing NUL gives two separate groups."""
    async with trio.open_nursery() as nursery:
        with_nul, without = Cpg(), Cpg()
        nursery.start_soon(with_nul.run)
        nursery.start_soon(without.run)
        assert await with_nul.join("grp", include_nul=True) == b"grp\0"
        assert await without.join("grp", include_nul=False) == b"grp"
        await next_confchg(with_nul)
        await next_confchg(without)
        await with_nul.mcast(b"to-nul")
        await without.mcast(b"to-plain")
        d1, d2 = await next_deliver(with_nul), await next_deliver(without)
        assert (d1.group, d1.payload) == (b"grp\0", b"to-nul"), d1
        assert (d2.group, d2.payload) == (b"grp", b"to-plain"), d2
        await trio.sleep(0.3)
        assert with_nul.pending == 0 and without.pending == 0  # nothing crossed over
        with_nul.finalize()
        without.finalize()


@check
async def calls_after_finalize() -> None:
    """Every call on a finalized handle raises HandleClosedError; nothing crashes."""
    c = Cpg()
    c.finalize()
    c.finalize()  # idempotent
    assert c.closed
    for fn in (c.local_get, c.max_atomic_msgsize, c.flow_control_enabled, c.fileno,
               lambda: c.membership("g", include_nul=True),
               lambda: c.mcast_nowait(b"x")):  # fmt: skip
        e = raises(HandleClosedError, fn)
        assert "finalized" in str(e)
    await araises(HandleClosedError, lambda: c.join("g", include_nul=True))
    await araises(HandleClosedError, lambda: c.receive())
    await araises(HandleClosedError, c.run)
    assert [ev async for ev in c] == []

    q = Quorum()
    q.finalize()
    raises(HandleClosedError, q.getquorate)
    await araises(HandleClosedError, q.run)
    m = Cmap()
    m.finalize()
    raises(HandleClosedError, lambda: m.get("totem.cluster_name"))
    raises(HandleClosedError, lambda: m.keys("totem."))
    raises(HandleClosedError, m.track_config)
    v = Votequorum()
    v.finalize()
    raises(HandleClosedError, lambda: v.getinfo(1))
    with Cpg() as c2:
        pass
    raises(HandleClosedError, c2.local_get)


@check
async def finalize_wakes_dispatch() -> None:
    """finalize() from another task ends run() and the event stream cleanly."""
    c = Cpg()
    got: list[object] = []

    async def consume() -> None:
        async for ev in c:
            got.append(ev)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(c.run)
            nursery.start_soon(consume)
            await c.join("fin", include_nul=True)
            while not got:
                await trio.sleep(0.01)
            c.finalize()  # run() is parked in wait_readable: must wake up
    assert isinstance(got[0], CpgConfchg)
    await araises(HandleClosedError, c.receive)

    # finalize from inside a handler callback is deferred until dispatch returns
    def handler(ev: object) -> None:
        h.finalize()

    h = Cpg(handler=handler)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.run)
            await h.join("fin2", include_nul=True)
    assert h.closed and h.failure is None


@check
async def handler_errors_propagate() -> None:
    """An exception in a synchronous handler comes out of run(), not lost in C."""

    class Boom(Exception):
        pass

    def handler(ev: object) -> None:
        if isinstance(ev, CpgDeliver):
            raise Boom(ev.payload)

    c = Cpg(handler=handler)
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(c.run)
                await c.join("boom", include_nul=True)
                await c.mcast(b"bang")
    except* Boom as eg:
        assert eg.exceptions[0].args == (b"bang",)
    else:
        raise AssertionError("handler exception was swallowed")
    finally:
        c.finalize()


@check
async def message_sizes() -> None:
    """Oversized messages fail cleanly; big, empty and many-iovec messages arrive intact."""
    async with trio.open_nursery() as nursery:
        c = Cpg()
        nursery.start_soon(c.run)
        await araises(CpgNotJoined, lambda: c.mcast(b"early"))
        raises(CpgNotJoined, lambda: c.mcast_nowait(b"early"))
        await c.join("sizes", include_nul=True)
        await next_confchg(c)
        # corosync's msglen is 32-bit: 4 GiB must be refused before reaching C.
        # An untouched anonymous mapping costs no memory.
        huge = mmap.mmap(-1, 1 << 31)
        e = await araises(CSErrTooBig, lambda: c.mcast(huge, huge))
        assert e.name == "CS_ERR_TOO_BIG" and "4294967296" in str(e), e  # type: ignore[attr-defined]
        raises(CSErrTooBig, lambda: c.mcast_nowait(huge, huge))
        huge.close()

        await c.mcast(*[b"%02d" % i for i in range(100)])  # > 63 iovecs
        assert (await next_deliver(c)).payload == b"".join(b"%02d" % i for i in range(100))
        await c.mcast()
        assert (await next_deliver(c)).payload == b""

        atomic = c.max_atomic_msgsize()
        big = os.urandom(3 * atomic + 12345)  # fragmented by libcpg, sent from a thread
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await trio.sleep(0.001)

        nursery.start_soon(ticker)
        await c.mcast(big[:10], memoryview(big)[10:], bytearray(b"!"))
        d = await next_deliver(c, timeout=30)
        assert d.payload == big + b"!" and d.nodeid == c.nodeid and d.pid == os.getpid()
        assert ticks > 0
        await c.mcast(b"after")
        assert (await next_deliver(c)).payload == b"after"
        c.finalize()
        nursery.cancel_scope.cancel()


def corosync_pid() -> int:
    return int(Path("/run/corosync.pid").read_text().split()[0])


@check
async def try_again_policy() -> None:
    """With corosync stopped (SIGSTOP) sends get CS_ERR_TRY_AGAIN without blocking the
    loop; mcast() retries exactly max_attempts times with trio.sleep, then raises."""
    pid = corosync_pid()
    async with trio.open_nursery() as nursery:
        c = Cpg()
        nursery.start_soon(c.run)
        await c.join("tryagain", include_nul=True)
        await next_confchg(c)
        sent = 0
        os.kill(pid, signal.SIGSTOP)
        try:
            chunk = b"t" * 60000
            with trio.fail_after(20):
                while True:
                    t0 = time.monotonic()
                    try:
                        c.mcast_nowait(chunk, b"%08d" % sent)
                    except CSErrTryAgain:
                        assert time.monotonic() - t0 < 0.5  # non-blocking
                        break
                    sent += 1
                    assert sent < 100000, "corosync never pushed back"
            before = c.try_again_count
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await trio.sleep(0.005)

            nursery.start_soon(ticker)
            t0 = time.monotonic()
            e = await araises(
                CSErrTryAgain, lambda: c.mcast(chunk, b"x", max_attempts=5, retry_delay=0.05)
            )
            took = time.monotonic() - t0
            assert e.name == "CS_ERR_TRY_AGAIN"  # type: ignore[attr-defined]
            assert c.try_again_count - before == 5, c.try_again_count - before
            assert 0.18 < took < 3.0, took  # 4 sleeps of 50 ms between 5 attempts
            assert ticks >= 10, ticks  # the loop kept running while we retried
        finally:
            os.kill(pid, signal.SIGCONT)
        # default policy (100 x 100 ms) rides out the backlog once corosync runs again
        await c.mcast(b"final")
        seen = 0
        with trio.fail_after(60):
            while True:
                d = await next_deliver(c, timeout=60)
                if d.payload == b"final":
                    break
                assert d.payload[-8:] == b"%08d" % seen, (d.payload[-8:], seen)
                seen += 1
        assert seen == sent, (seen, sent)
        c.finalize()
        nursery.cancel_scope.cancel()


@check
async def cmap_and_votequorum() -> None:
    """Typed cmap reads, missing keys, and vote counts on a healthy 1-node cluster."""
    with Cmap() as m:
        vtype, version = m.get_typed("totem.config_version")
        assert (vtype, version) == (8, 1), (vtype, version)  # CMAP_VALUETYPE_UINT64
        assert m.get("totem.cluster_name") == "testclu"
        assert isinstance(m.get("nodelist.node.0.nodeid"), int)
        e = raises(CSErrNotExist, lambda: m.get("totem.no_such_key"))
        assert "CS_ERR_NOT_EXIST" in str(e)
        assert "totem.cluster_name" in m.keys("totem.")
        info = m.read_cluster_info()
        assert info.cluster_name == "testclu" and info.config_version == 1
        assert [(n.nodeid, n.name, n.votes) for n in info.nodes] == [(1, "node1", 1)]
    with Cpg() as c, Votequorum() as v:
        vi = v.getinfo(c.nodeid)
    assert (vi.node_id, vi.node_expected_votes, vi.total_votes, vi.quorum) == (1, 1, 1, 1), vi
    assert vi.quorate


@check
async def quorum_notifications() -> None:
    """quorate is False until corosync's first notification, then follows it."""
    q = Quorum()
    assert q.quorate is False and q.last is None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(q.run)
        with trio.fail_after(10):
            await q.wait_quorate(True)
            change = await q.receive()
        assert change.quorate and change.members == (1,), change
        assert q.getquorate() is True
        q.finalize()
    assert q.quorate is False


@check
async def quorum_dispatch_ready_takes_priority() -> None:
    """dispatch_ready runs notifications already pending, synchronously, with no task (how
    the dcdb group lets quorum go first), and does nothing when none are pending."""
    q = Quorum()
    try:
        assert q.last is None
        with trio.fail_after(10):
            while q.last is None:  # trackstart's notification is on its way
                q.dispatch_ready()
                await trio.sleep(0.01)
        assert q.quorate and q.last.members == (1,), q.last
        first = q.last
        q.dispatch_ready()  # nothing pending: returns at once, changes nothing
        assert q.last is first
        with Cpg() as c, Votequorum() as v:
            assert v.getinfo(c.nodeid).qdevice_votes_cast == 0
    finally:
        q.finalize()
    q.dispatch_ready()  # finalized: a no-op, never an error
    assert q.quorate is False


@check
async def corosync_not_running() -> None:
    """Without corosync every service raises CorosyncUnavailable (CS_ERR_LIBRARY)."""
    for cls in (Cpg, Quorum, Cmap, Votequorum):
        e = raises(CorosyncUnavailable, cls)
        assert isinstance(e, CSErrLibrary), e
        assert e.name == "CS_ERR_LIBRARY" and e.func.endswith("_initialize"), e


@check
async def corosync_dies_under_us() -> None:
    """A running handle whose corosync is killed ends with CorosyncUnavailable."""
    c = Cpg()
    q = Quorum()
    await c.join("dies", include_nul=True)
    with contextlib.suppress(ProcessLookupError):
        os.kill(corosync_pid(), signal.SIGKILL)
    assert q.quorate is False  # nothing dispatched yet
    for svc in (c, q):
        with trio.fail_after(10):
            e = await araises(CorosyncUnavailable, svc.run)
        assert e.name in ("CS_ERR_LIBRARY", "CS_ERR_BAD_HANDLE"), e  # type: ignore[attr-defined]
    assert c.failure is not None and q.quorate is False
    e = raises(CorosyncUnavailable, c.local_get)
    assert e.__cause__ is c.failure

    # queued events are still handed out, then the stream ends with the failure
    async def drain() -> None:
        for _ in range(100):
            await c.receive()

    await araises(CorosyncUnavailable, drain)
    c.finalize()
    q.finalize()


async def _hot_round(hot: bool) -> tuple[int, int, int, int]:
    """A peer process multicasts 300 messages; this handle, with(out) the hot wait, counts
    them while a ticker task sleeps and a thread calls into trio: (hot dispatches,
    deliveries, ticks, thread calls)."""
    got = 0

    def on_deliver(nodeid: int, pid: int, data: bytes) -> None:
        nonlocal got
        got += 1  # wakes nobody: the receiving side of a cluster's writes

    c = Cpg(deliver_handler=on_deliver)
    c.hot_wait = hot
    hot_calls = 0
    plain = c._hot_dispatch

    def counted(ready: list[tuple[int, int]]) -> bool:
        nonlocal hot_calls
        hot_calls += 1
        return plain(ready)

    c._hot_dispatch = counted  # type: ignore[method-assign]
    ticks = 0
    calls = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.002)  # deadlines end a hot wait
            ticks += 1

    def bump() -> None:
        nonlocal calls
        calls += 1

    def caller(token: trio.lowlevel.TrioToken) -> None:
        for _ in range(50):  # a thread's run_sync_soon ends a hot wait
            trio.from_thread.run_sync(bump, trio_token=token)
            time.sleep(0.002)

    sender = (
        "import trio, time\n"
        "from cpg import Cpg\n"
        "async def main():\n"
        "    c = Cpg(deliver_handler=lambda *a: None)\n"
        "    async with trio.open_nursery() as n:\n"
        "        n.start_soon(c.run)\n"
        "        await c.join('hot_wait_check', include_nul=True)\n"
        "        for _ in range(300):\n"
        "            await c.mcast(b'x' * 100)\n"
        "            await trio.sleep(0.0005)\n"
        "        c.finalize()\n"
        "        n.cancel_scope.cancel()\n"
        "trio.run(main)\n"
    )
    async with trio.open_nursery() as n:
        n.start_soon(c.run)
        await c.join("hot_wait_check", include_nul=True)
        n.start_soon(ticker)
        n.start_soon(trio.to_thread.run_sync, caller, trio.lowlevel.current_trio_token())
        await trio.run_process([sys.executable, "-c", sender])
        with trio.fail_after(20):
            while got < 300 or calls < 50:
                await trio.sleep(0.01)
        c.finalize()
        n.cancel_scope.cancel()
    return hot_calls, got, ticks, calls


@check
async def hot_wait_dispatches_without_holding_back_trio() -> None:
    hot_calls, got, ticks, calls = await _hot_round(True)
    assert got == 300 and calls == 50 and ticks > 0, (got, calls, ticks)
    assert hot_calls > 0, "no delivery was dispatched from the hot wait"
    print(f"hot wait: {hot_calls} of {got} deliveries dispatched hot, {ticks} ticks")
    hot_calls, got, ticks, calls = await _hot_round(False)
    assert hot_calls == 0 and got == 300 and calls == 50 and ticks > 0

def main(argv: list[str]) -> int:
    name = argv[1]
    try:
        trio.run(CHECKS[name])
    except BaseException:
        traceback.print_exc()
        return 1
    print(f"OK {name} ({cpg.__name__})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
