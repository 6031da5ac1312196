"""The cpg bindings against a real 3-node corosync cluster (one per module).

Each node runs ``tests/cluster/cpg_agent.py`` processes that join a group and report
deliveries, confchgs, quorum and cmap changes as JSON lines.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.cluster.harness import Cluster, ClusterFactory, JsonProc, Node

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
