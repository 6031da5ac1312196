"""The cpg bindings against a real 3-node corosync cluster (one per module).

Each node runs ``tests/cluster/cpg_agent.py`` processes that join a group and report
deliveries, confchgs, quorum and cmap changes as JSON lines.  The ``mcast_direct`` and
``deliver_handler`` checks at the end run this file itself inside a node.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from cpg import (
    Cpg,
    CpgConfchg,
    CpgDeliver,
    CpgEvent,
    CpgNotJoined,
    HandleClosedError,
    group_name,
)
from tests.cluster.harness import REPO_ROOT, Cluster, ClusterFactory, JsonProc, Node

pytestmark = pytest.mark.cluster

JOIN, LEAVE, NODEDOWN, NODEUP, PROCDOWN = 1, 2, 3, 4, 5

Event = dict[str, Any]


@pytest.fixture(scope="module")
def three(module_cluster: ClusterFactory) -> Cluster:
    return module_cluster(3)


@pytest.fixture
def c3(three: Cluster) -> Iterator[Cluster]:
    """The shared cluster, healthy at the start and end of every test."""
    _restore(three)
    yield three
    _restore(three)


def _restore(c: Cluster) -> None:
    c.heal_all()
    for node in c:
        node.start_corosync()
    c.wait_members(3, timeout=60)


@pytest.fixture
def agents(three: Cluster) -> Iterator[Callable[..., JsonProc]]:
    """Start cpg agents in nodes; all of them are stopped after the test."""
    started: list[JsonProc] = []

    def start(node: Node, *args: str) -> JsonProc:
        a = node.cpg_agent(*args)
        started.append(a)
        return a

    yield start
    for a in started:
        a.close()


def ids(members: list[list[int]]) -> set[tuple[int, int]]:
    return {(m[0], m[1]) for m in members}


def confchg_with(members: set[tuple[int, int]]) -> Callable[[Event], bool]:
    return lambda e: e.get("ev") == "confchg" and ids(e["members"]) == members


def me(a: JsonProc) -> tuple[int, int]:
    ready = a.wait_for("ready")
    return ready["nodeid"], ready["pid"]


def start_group(agents: Callable[..., JsonProc], nodes: list[Node], *args: str) -> list[JsonProc]:
    """Agents on *nodes* in one group, each having seen the full membership."""
    ags = [agents(n, *args) for n in nodes]
    everyone = {me(a) for a in ags}
    for a in ags:
        a.wait_for(confchg_with(everyone), timeout=30)
    return ags


def test_same_total_order_everywhere_with_concurrent_senders(
    c3: Cluster, agents: Callable[..., JsonProc]
) -> None:
    ags = start_group(agents, list(c3), "--group", "order_test")
    count = 400
    for i, a in enumerate(ags):
        a.send(op="burst", prefix=f"n{i + 1}-", count=count)
    seqs = []
    for a in ags:
        got = a.wait_count("deliver", 3 * count, timeout=90)
        seqs.append([(e["nodeid"], e["pid"], e["data"]) for e in got])
    assert all(len(s) == 3 * count for s in seqs)
    assert seqs[0] == seqs[1] == seqs[2], "nodes disagree on the total order"
    assert len(set(seqs[0])) == 3 * count, "a message was delivered twice"
    for i, a in enumerate(ags):
        nodeid, pid = me(a)
        # everyone (the sender included) sees each sender's messages in send order
        own = [d for n, p, d in seqs[i] if (n, p) == (nodeid, pid)]
        assert own == [f"n{i + 1}-{k}" for k in range(count)]
        assert a.wait_for("sent")["count"] == count
    # the senders really overlapped: the order is not just three blocks
    senders = [n for n, _p, _d in seqs[0]]
    switches = sum(1 for x, y in itertools.pairwise(senders) if x != y)
    assert switches >= 2


def test_confchg_on_join_leave_and_exit_match_on_all_nodes(
    c3: Cluster, agents: Callable[..., JsonProc]
) -> None:
    g = ("--group", "membership_test")
    a1 = agents(c3[1], *g)
    p1 = me(a1)
    first = a1.wait_for("confchg")
    assert ids(first["members"]) == {p1} and first["joined"] == [[*p1, JOIN]]
    assert first["group"] == b"membership_test\0".hex()

    # join: every member sees the same new view with the joiner
    a2 = agents(c3[2], *g)
    p2 = me(a2)
    a3 = agents(c3[3], *g)
    p3 = me(a3)
    views = [a.wait_for(confchg_with({p1, p2, p3}), timeout=30) for a in (a1, a2, a3)]
    assert all(v["members"] == views[0]["members"] for v in views)
    for a in (a1, a2):
        e = a.wait_for(lambda e: e.get("ev") == "confchg" and [*p3, JOIN] in e["joined"])
        assert ids(e["members"]) == {p1, p2, p3}

    # leave: the others see p2 leave with reason LEAVE; p2 sees its own departure
    marks = [a.mark() for a in (a1, a2, a3)]
    a2.send(op="leave")
    seen = [a.wait_for(confchg_with({p1, p3}), start=m, timeout=30) for a, m in
            ((a1, marks[0]), (a3, marks[2]))]  # fmt: skip
    assert seen[0]["members"] == seen[1]["members"]
    assert all(e["left"] == [[*p2, LEAVE]] and e["joined"] == [] for e in seen)
    own = a2.wait_for(lambda e: e.get("ev") == "confchg" and [*p2, LEAVE] in e["left"],
                      start=marks[1], timeout=30)  # fmt: skip
    assert p2 not in ids(own["members"])

    # process exit without finalize: reason PROCDOWN, identical on the survivors
    a4 = agents(c3[2], *g)
    p4 = me(a4)
    for a in (a1, a3, a4):
        a.wait_for(confchg_with({p1, p3, p4}), timeout=30)
    marks = [a1.mark(), a4.mark()]
    a3.send(op="exit", finalize=False)
    seen = [a.wait_for(confchg_with({p1, p4}), start=m, timeout=30)
            for a, m in zip((a1, a4), marks, strict=True)]  # fmt: skip
    assert seen[0]["members"] == seen[1]["members"]
    assert all(e["left"] == [[*p3, PROCDOWN]] for e in seen), seen
    assert a3.popen.wait(timeout=10) == 0


def test_partition_quorum_and_confchg(c3: Cluster, agents: Callable[..., JsonProc]) -> None:
    ags = start_group(agents, list(c3), "--group", "partition_test", "--quorum")
    a1, a2, a3 = ags
    p1, p2, p3 = (me(a) for a in ags)
    for a in ags:
        a.wait_for(lambda e: e.get("ev") == "quorum" and e["quorate"] and len(e["members"]) == 3)
    marks = [a.mark() for a in ags]
    c3[3].partition()
    try:
        # the isolated node loses quorum and sees the other two go down
        q3 = a3.wait_for(lambda e: e.get("ev") == "quorum" and not e["quorate"],
                         start=marks[2], timeout=60)  # fmt: skip
        assert q3["members"] == [3]
        v3 = a3.wait_for(confchg_with({p3}), start=marks[2], timeout=60)
        assert sorted(map(tuple, v3["left"])) == [(*p1, NODEDOWN), (*p2, NODEDOWN)]
        # the majority sees node3 go down and stays quorate
        for a, m in ((a1, marks[0]), (a2, marks[1])):
            v = a.wait_for(confchg_with({p1, p2}), start=m, timeout=60)
            assert v["left"] == [[*p3, NODEDOWN]]
            q = a.wait_for(lambda e: e.get("ev") == "quorum" and e["members"] == [1, 2],
                           start=m, timeout=60)  # fmt: skip
            assert q["quorate"] is True
        a1.send(op="getquorate")
        assert a1.wait_for(lambda e: e.get("op") == "getquorate", start=marks[0])["quorate"]
        a3.send(op="getquorate")
        assert not a3.wait_for(lambda e: e.get("op") == "getquorate", start=marks[2])["quorate"]
        heal_marks = [a.mark() for a in ags]
        c3[3].heal()
        q3 = a3.wait_for(lambda e: e.get("ev") == "quorum" and e["quorate"],
                         start=heal_marks[2], timeout=90)  # fmt: skip
        assert q3["members"] == [1, 2, 3]
        views = [a.wait_for(confchg_with({p1, p2, p3}), start=m, timeout=90)
                 for a, m in zip(ags, heal_marks, strict=True)]  # fmt: skip
        assert views[0]["joined"] == views[1]["joined"] == [[*p3, NODEUP]]
        assert sorted(map(tuple, views[2]["joined"])) == [(*p1, NODEUP), (*p2, NODEUP)]
    finally:
        c3[3].heal()
    for a, m in ((a1, marks[0]), (a2, marks[1])):
        lost = [e for e in a.events("quorum", start=m) if not e["quorate"]]
        assert lost == [], "the majority partition lost quorum"
    # messages flow again across the healed cluster, in one order
    for a in ags:
        a.send(op="mcast", data=f"healed-{me(a)[0]}")
    seqs = [[e["data"] for e in a.wait_count(
        lambda e: e.get("ev") == "deliver" and e["data"].startswith("healed-"), 3, timeout=30)]
        for a in ags]  # fmt: skip
    assert seqs[0] == seqs[1] == seqs[2]


def test_cmap_values_and_tracking(c3: Cluster, agents: Callable[..., JsonProc]) -> None:
    n1 = c3[1]
    a = agents(n1, "--cmap", "--group", "cmap_test")
    initial = a.wait_for(lambda e: e.get("ev") == "cmap" and e["initial"])
    assert initial["cluster_name"] == c3.cluster_name == "testclu"
    assert initial["config_version"] == c3.config_version == 1
    assert initial["nodes"] == [[n.nodeid, n.name, 1, n.addr] for n in c3]
    conf = n1.host_path("/etc/corosync/corosync.conf").read_text()
    for n in c3:
        assert f"name: {n.name}" in conf and f"ring0_addr: {n.addr}" in conf

    def cmapctl(*args: str) -> None:
        n1.run(["corosync-cmapctl", *args])

    def changed(pred: Callable[[Event], bool], start: int) -> Event:
        return a.wait_for(lambda e: e.get("ev") == "cmap" and not e["initial"] and pred(e),
                          start=start, timeout=20)  # fmt: skip

    try:
        # a runtime change of config_version is noticed
        m = a.mark()
        cmapctl("-s", "totem.config_version", "u64", "7")
        assert changed(lambda e: True, m)["config_version"] == 7
        # nodelist keys are read-only at runtime; they change by a config reload,
        # as when PVE distributes a new corosync.conf
        m = a.mark()
        c3.reload_config(config_version=8, names={3: "renamed3"})
        e = changed(lambda e: e["config_version"] == 8, m)
        assert [n[1] for n in e["nodes"]] == ["node1", "node2", "renamed3"]
        other = agents(c3[2], "--cmap")  # every node re-read the same config
        assert other.wait_for("cmap")["nodes"] == e["nodes"]
    finally:
        c3.reload_config(config_version=1, names={})
    back = a.wait_for(lambda e: e.get("ev") == "cmap" and e["nodes"] == initial["nodes"]
                      and e["config_version"] == 1, start=m, timeout=20)  # fmt: skip
    assert back["cluster_name"] == "testclu"
    a.send(op="votequorum")
    vq = a.wait_for("votequorum")
    assert (vq["expected"], vq["total"], vq["quorum"], vq["quorate"]) == (3, 3, 2, True)


def test_client_survives_corosync_restart(c3: Cluster, agents: Callable[..., JsonProc]) -> None:
    n2 = c3[2]
    a1 = agents(c3[1], "--group", "restart_test")
    a2 = agents(n2, "--group", "restart_test", "--quorum", "--reconnect")
    p1, p2 = me(a1), me(a2)
    for a in (a1, a2):
        a.wait_for(confchg_with({p1, p2}), timeout=30)
    m1, m2 = a1.mark(), a2.mark()
    n2.stop_corosync()
    err = a2.wait_for("error", start=m2, timeout=30)
    assert err["unavailable"] is True
    assert err["name"] in ("CS_ERR_LIBRARY", "CS_ERR_BAD_HANDLE"), err
    left = a1.wait_for(confchg_with({p1}), start=m1, timeout=30)
    # a graceful corosync shutdown reports its local processes as PROCDOWN first
    assert [x[:2] for x in left["left"]] == [list(p2)]
    assert left["left"][0][2] in (PROCDOWN, NODEDOWN)
    # while corosync is down, a command gets a clear error, not a hang or crash
    a2.send(op="mcast", data="nobody-home")
    err2 = a2.wait_for(lambda e: e.get("ev") == "error" and e["where"] == "mcast", start=m2)
    assert err2["type"] in ("CorosyncUnavailable", "CSErrLibrary"), err2

    n2.start_corosync()
    c3.wait_members(3, timeout=60)
    a2.wait_for("reconnected", start=m2, timeout=60)
    a2.wait_for("joined", start=m2, timeout=30)
    a1.wait_for(confchg_with({p1, p2}), start=m1, timeout=60)
    a2.wait_for(lambda e: e.get("ev") == "quorum" and e["quorate"], start=m2, timeout=60)
    a1.send(op="mcast", data="hello-again")
    a2.wait_for(lambda e: e.get("ev") == "deliver" and e["data"] == "hello-again",
                start=m2, timeout=30)  # fmt: skip
    a2.send(op="mcast", data="back")
    d = a1.wait_for(lambda e: e.get("ev") == "deliver" and e["data"] == "back", timeout=30)
    assert (d["nodeid"], d["pid"]) == p2


# --------------------------------------------------- mcast_direct and deliver_handler
#
# corosync's IPC is only reachable from inside a node, so these checks run there: the
# test starts ``python -m tests.cluster.test_cpg_cluster CHECK ARG...`` in the node (see the
# end of this file), which prints JSON lines and exits 0 when every assertion held.

T = TypeVar("T")

#: every byte value, NULs included, split over several buffers by the sender
DIRECT_PAYLOAD = bytes(range(256)) * 4 + b"direct\0end"
#: what the deliver_handler check multicasts first, in this order; then one message of
#: max_atomic_msgsize + BIG_EXTRA bytes b"B"
HANDLER_OWN = [b"direct\0\xff", b"queued"]
BIG_EXTRA = 7

NODE_CHECKS: dict[str, Callable[..., Awaitable[None]]] = {}


def node_check(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    NODE_CHECKS[fn.__name__] = fn
    return fn


def emit(**obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def confchg_json(ev: CpgConfchg) -> dict[str, Any]:
    return {
        "members": [list(m) for m in ev.members],
        "left": [list(m) for m in ev.left],
        "joined": [list(m) for m in ev.joined],
    }


def text(payload: bytes) -> str:
    """How cpg_agent reports a payload."""
    return payload.decode("utf-8", "backslashreplace")


async def next_event(c: Cpg, kind: type[T], timeout: float = 10.0) -> T:
    with trio.fail_after(timeout):
        while True:
            ev = await c.receive()
            if isinstance(ev, kind):
                return ev


async def wait_view(c: Cpg, n: int, timeout: float = 30.0) -> CpgConfchg:
    with trio.fail_after(timeout):
        while True:
            ev = await next_event(c, CpgConfchg, timeout)
            if len(ev.members) == n:
                return ev


def must_raise(exc: type[BaseException], fn: Callable[[], object]) -> None:
    try:
        fn()
    except exc:
        return
    raise AssertionError(f"did not raise {exc.__name__}")


@node_check
async def direct_roundtrip(group: str, members: str) -> None:
    async with trio.open_nursery() as nursery:
        c = Cpg()
        nursery.start_soon(c.run)
        await c.join(group, include_nul=True)
        await wait_view(c, int(members))
        p = DIRECT_PAYLOAD
        # sent by the call itself: nothing else runs between it and the delivery
        assert c.mcast_direct(p[:100], memoryview(p)[100:600], bytearray(p[600:])) is True
        d = await next_event(c, CpgDeliver)
        assert d.group == group_name(group, include_nul=True)
        assert (d.nodeid, d.pid) == (c.nodeid, os.getpid())
        assert d.payload == p
        assert c.try_again_count == 0
        c.finalize()
        nursery.cancel_scope.cancel()


@node_check
async def direct_refusals(group: str) -> None:
    async with trio.open_nursery() as nursery:
        c = Cpg()
        nursery.start_soon(c.run)
        await c.join(group, include_nul=True)
        await wait_view(c, 1)
        atomic = c.max_atomic_msgsize()
        over = os.urandom(atomic + 1)
        # too big for one non-blocking call: refused, nothing sent
        assert c.mcast_direct(over) is False
        assert c.mcast_direct(over[:1000], memoryview(over)[1000:]) is False  # the total
        # a send queued on the handle goes first: refused, nothing sent
        async with c._io_lock:
            assert c.mcast_direct(b"while-queued") is False
        assert c.try_again_count == 0
        # none of the refused messages went out: the next one is the first delivery
        assert c.mcast_direct(b"marker") is True
        assert (await next_event(c, CpgDeliver)).payload == b"marker"
        await c.mcast(over)
        d = await next_event(c, CpgDeliver, 30)
        assert (d.nodeid, d.pid, d.payload) == (c.nodeid, os.getpid(), over)
        # exactly max_atomic_msgsize is one atomic message (libcpg fragments above it)
        exact = os.urandom(atomic)
        assert c.mcast_direct(exact) is True
        assert (await next_event(c, CpgDeliver)).payload == exact
        # while a fragmented send runs in its worker thread
        huge = os.urandom(2 * atomic + 1)
        nursery.start_soon(c.mcast, huge)
        with trio.fail_after(10):
            while not c._thread_busy:
                await trio.sleep(0)
        assert c.mcast_direct(b"during") is False
        assert (await next_event(c, CpgDeliver, 30)).payload == huge
        assert c.mcast_direct(b"after") is True
        assert (await next_event(c, CpgDeliver)).payload == b"after"
        c.finalize()
        nursery.cancel_scope.cancel()


@node_check
async def direct_unjoined(group: str) -> None:
    c = Cpg()
    must_raise(CpgNotJoined, lambda: c.mcast_direct(b"early"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.run)
        await c.join(group, include_nul=True)
        await wait_view(c, 1)
        assert c.mcast_direct(b"joined") is True
        assert (await next_event(c, CpgDeliver)).payload == b"joined"
        await c.leave()
        must_raise(CpgNotJoined, lambda: c.mcast_direct(b"after-leave"))
        c.finalize()
        must_raise(HandleClosedError, lambda: c.mcast_direct(b"after-finalize"))
        nursery.cancel_scope.cancel()


@node_check
async def direct_try_again(group: str) -> None:
    """corosync stopped (SIGSTOP): its IPC fills, then TRY_AGAIN answers False at once."""
    pid = int(Path("/run/corosync.pid").read_text().split()[0])
    async with trio.open_nursery() as nursery:
        c = Cpg()
        nursery.start_soon(c.run)
        await c.join(group, include_nul=True)
        await wait_view(c, 1)
        chunk = b"t" * 60000
        sent = 0
        os.kill(pid, signal.SIGSTOP)
        try:
            while True:
                before = c.try_again_count
                t0 = time.monotonic()
                ok = c.mcast_direct(chunk, b"%08d" % sent)
                assert time.monotonic() - t0 < 0.5  # never blocks
                if not ok:
                    break
                sent += 1
                assert sent < 10000, "corosync never pushed back"
            assert c.try_again_count == before + 1
        finally:
            os.kill(pid, signal.SIGCONT)
        assert sent > 0
        await c.mcast(b"final")
        # every accepted message arrives in order; the refused one never does
        for i in range(sent):
            d = await next_event(c, CpgDeliver, 30)
            assert d.payload == chunk + b"%08d" % i, (d.payload[-8:], i)
        assert (await next_event(c, CpgDeliver, 30)).payload == b"final"
        c.finalize()
        nursery.cancel_scope.cancel()


@node_check
async def deliver_handler_events(group: str) -> None:
    """Deliveries reach the handler as (nodeid, pid, bytes); confchgs stay in receive()."""
    got: list[tuple[int, int, bytes]] = []

    def on_deliver(nodeid: int, pid: int, payload: bytes) -> None:
        assert type(payload) is bytes
        got.append((nodeid, pid, payload))

    async with trio.open_nursery() as nursery:
        c = Cpg(deliver_handler=on_deliver)
        nursery.start_soon(c.run)
        emit(ev="ready", nodeid=c.nodeid, pid=os.getpid())
        await c.join(group, include_nul=True)
        emit(ev="confchg", **confchg_json(await wait_view(c, 2)))
        assert c.mcast_direct(HANDLER_OWN[0]) is True
        await c.mcast(HANDLER_OWN[1])
        await c.mcast(b"B" * (c.max_atomic_msgsize() + BIG_EXTRA))  # fragmented, threaded
        with trio.fail_after(30):
            while len(got) < 4:  # our three and the peer's one
                await trio.sleep(0.01)
        emit(ev="delivered", msgs=[[n, p, text(d), len(d)] for n, p, d in got])
        assert c.pending == 0, "a delivery was queued instead of handed to the handler"
        with trio.fail_after(30):
            ev = await c.receive()  # the peer leaving
        assert isinstance(ev, CpgConfchg), ev
        emit(ev="confchg", **confchg_json(ev))
        assert len(got) == 4
        c.finalize()
        nursery.cancel_scope.cancel()


@node_check
async def deliver_handler_with_handler(group: str) -> None:
    """With both handlers, confchgs go to *handler* and deliveries only to the other."""
    events: list[CpgEvent] = []
    got: list[tuple[int, int, bytes]] = []

    def on_deliver(nodeid: int, pid: int, payload: bytes) -> None:
        got.append((nodeid, pid, payload))

    async with trio.open_nursery() as nursery:
        c = Cpg(handler=events.append, deliver_handler=on_deliver)
        nursery.start_soon(c.run)
        await c.join(group, include_nul=True)
        with trio.fail_after(10):
            while not events:
                await trio.sleep(0.01)
        assert c.mcast_direct(b"one") is True
        await c.mcast(b"two")
        with trio.fail_after(10):
            while len(got) < 2:
                await trio.sleep(0.01)
        me = (c.nodeid, os.getpid())
        assert got == [(*me, b"one"), (*me, b"two")]
        assert len(events) == 1, events  # the join; no CpgDeliver
        view = events[0]
        assert isinstance(view, CpgConfchg) and view.joined[0][:2] == me, view
        assert c.pending == 0
        c.finalize()
        nursery.cancel_scope.cancel()


def node_argv(check: str, *args: str) -> list[str]:
    return [sys.executable, "-u", "-m", "tests.cluster.test_cpg_cluster", check, *args]


def run_in_node(node: Node, check: str, *args: str) -> list[Event]:
    res = node.run(node_argv(check, *args), check=False, timeout=90, cwd=str(REPO_ROOT))
    assert res.returncode == 0, f"{check} failed in {node.name}:\n{res.stdout}\n{res.stderr}"
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert events and events[-1] == {"ev": "ok", "check": check}, res.stdout
    return events


def test_mcast_direct_sends_at_once_with_identical_bytes(
    c3: Cluster, agents: Callable[..., JsonProc]
) -> None:
    peer = agents(c3[2], "--group", "direct_test")
    peer.wait_for("joined")
    run_in_node(c3[1], "direct_roundtrip", "direct_test", "2")
    # the other member got the same bytes from node1
    d = peer.wait_for(lambda e: e.get("ev") == "deliver" and e["nodeid"] == c3[1].nodeid)
    assert d["len"] == len(DIRECT_PAYLOAD) and d["data"] == text(DIRECT_PAYLOAD)
    assert d["group"] == b"direct_test\0".hex()


def test_mcast_direct_refuses_big_or_queued_messages_without_sending(c3: Cluster) -> None:
    run_in_node(c3[1], "direct_refusals", "direct_big")


def test_mcast_direct_needs_a_joined_handle(c3: Cluster) -> None:
    run_in_node(c3[1], "direct_unjoined", "direct_unjoined")


def test_mcast_direct_returns_false_on_try_again(c3: Cluster) -> None:
    run_in_node(c3[1], "direct_try_again", "direct_tryagain")


def test_deliver_handler_gets_deliveries_and_confchgs_stay_events(
    c3: Cluster, agents: Callable[..., JsonProc]
) -> None:
    group = "handler_test"
    peer = agents(c3[2], "--group", group)
    p2 = me(peer)
    peer.wait_for("joined")
    script = c3[1].spawn_json(node_argv("deliver_handler_events", group), name="node1-handler")
    try:
        ready = script.wait_for("ready")
        p1 = (ready["nodeid"], ready["pid"])
        view = script.wait_for("confchg", timeout=30)
        assert ids(view["members"]) == {p1, p2}
        peer.send(op="mcast", data="from-node2")
        got = script.wait_for("delivered", timeout=60)["msgs"]
        assert p1[0] == c3[1].nodeid
        own = [(m[2], m[3]) for m in got if (m[0], m[1]) == p1]
        assert own[:2] == [(text(b), len(b)) for b in HANDLER_OWN] and len(own) == 3
        assert own[2][1] > BIG_EXTRA and own[2][0] == "B" * own[2][1]
        assert [m for m in got if (m[0], m[1]) != p1] == [[*p2, "from-node2", 10]]
        # same total order as the peer, which got the events the usual way
        seen = peer.wait_count(lambda e: e.get("ev") == "deliver", 4, timeout=30)
        assert [[e["nodeid"], e["pid"], e["data"], e["len"]] for e in seen] == got
        # a membership change still arrives through receive()
        peer.send(op="leave")
        left = script.wait_for(lambda e: e.get("ev") == "confchg" and e["left"], timeout=30)
        assert left["left"] == [[*p2, LEAVE]] and ids(left["members"]) == {p1}
        assert script.wait_for("ok", timeout=30)["check"] == "deliver_handler_events"
        assert script.popen.wait(timeout=10) == 0
    finally:
        script.close()


def test_deliver_handler_next_to_a_handler(c3: Cluster) -> None:
    run_in_node(c3[1], "deliver_handler_with_handler", "handler_pair")


if __name__ == "__main__":
    trio.run(NODE_CHECKS[sys.argv[1]], *sys.argv[2:])
    emit(ev="ok", check=sys.argv[1])
