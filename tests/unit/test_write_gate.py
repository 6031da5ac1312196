"""The write gate (issue 10): a write is accepted and applied only while corosync is quorate
and the replication group holds quorum's votes, judged at the delivery's place in totem order.

The two losses the issue found on real clusters, replayed deterministically in the simulated
CPG: with the gate the caller is never told "done" for a write the next sync drops.
"""

from __future__ import annotations

import errno

import pytest
import trio

from pmxcfs.dcdb.app import DcdbApp
from pmxcfs.dcdb.backend import ClusterBackend
from pmxcfs.dcdb.codec import PROTOCOL_VERSION, FuseOp, Subtype
from pmxcfs.dcdb.writegate import WriteGate
from pmxcfs.dfsm.codec import Mode
from pmxcfs.dfsm.driver import DfsmDriver
from pmxcfs.dfsm.machine import ConfChg, Dfsm, Reset
from pmxcfs.dfsm.sim import Sim
from pmxcfs.tree import Tree, TreeError
from tests.clock import Clock

T0 = 1_700_000_000


# ---------------------------------------------------------------------------- the gate alone


def test_gate_needs_corosync_quorum_and_group_votes() -> None:
    q = {"v": True}
    g = WriteGate(lambda: q["v"])
    assert not g.writable  # no group yet: nothing may be written
    g.set_votes(2, 0, {1: 1, 2: 1, 3: 1})
    g.set_group([1])
    assert not g.writable and "1 of the 2 votes" in g.reason()
    g.set_group([1, 3])
    assert g.writable
    q["v"] = False
    assert not g.writable and g.reason() == "not quorate"


def test_gate_threshold_falls_back_to_nodelist_majority() -> None:
    g = WriteGate()
    g.set_group([1])
    assert g.threshold() == 1 and g.writable  # nothing known: any group (single node)
    g.set_votes(0, 0, {1: 1, 2: 1, 3: 1, 4: 1})
    assert g.threshold() == 3 and not g.writable
    g.set_group([1, 2, 4])
    assert g.writable
    g.set_votes(0, 0, {1: 3, 2: 1, 3: 1})  # weighted votes: node 1 alone has 3 of 5
    g.set_group([1])
    assert g.writable


def test_two_node_and_quorum_device_votes() -> None:
    g = WriteGate()
    g.set_votes(1, 0, {1: 1, 2: 1})  # two_node: votequorum needs 1 vote
    g.set_group([2])
    assert g.writable
    g.set_votes(2, 1, {1: 1, 2: 1})  # 2 nodes + qdevice casting its vote for us
    assert g.writable
    g.set_votes(2, 0, {1: 1, 2: 1})  # the device votes elsewhere
    assert not g.writable


def test_listeners_hear_flips_only() -> None:
    q = {"v": True}
    g = WriteGate(lambda: q["v"])
    g.set_votes(2, 0, {1: 1, 2: 1, 3: 1})
    seen: list[bool] = []
    g.listeners.append(seen.append)
    g.set_group([1])
    g.set_group([1, 2])
    g.set_group([1, 2, 3])
    q["v"] = False
    g.changed()
    assert seen == [True, False]


# ---------------------------------------------------------------------------- simulated losses


class Nodes:
    """Three DCDB nodes on the simulated CPG; votequorum needs 2 of 3 votes."""

    def __init__(self) -> None:
        self.clock = Clock(T0)
        self.sim = Sim(total_nodes=3)
        self.apps: dict[int, DcdbApp] = {}
        for n in (1, 2, 3):
            m = self.m(n)
            gate = WriteGate(lambda m=m: self.sim.procs[m].quorate)  # type: ignore[misc]
            tree = Tree()
            tree.clock = self.clock
            self.apps[n] = app = DcdbApp(tree, gate=gate, clock=self.clock)
            self.sim.add(Dfsm(n, m[1], app, PROTOCOL_VERSION, clock=self.clock, name=f"dcdb{n}"))
            gate.set_votes(2, 0, {1: 1, 2: 1, 3: 1})
        self.sim.join(self.m(1))
        self.sim.join(self.m(2), self.m(1))
        self.sim.join(self.m(3), self.m(1))
        self.sim.run()
        assert all(p.dfsm.mode is Mode.SYNCED for p in self.sim.procs.values())

    @staticmethod
    def m(n: int) -> tuple[int, int]:
        return (n, 1000 + n)

    def op(self, n: int, subtype: Subtype, path: str, **kw: object) -> int:
        payload = FuseOp(path.encode(), **kw).encode()  # type: ignore[arg-type]
        return self.sim.request(self.m(n), subtype, payload)

    def result(self, n: int, rid: int) -> int | None:
        return self.sim.procs[self.m(n)].results.get(rid)

    def has(self, n: int, path: str) -> bool:
        return self.apps[n].tree.lookup(path) is not None

    def set_quorate(self, **flags: bool) -> None:
        for name, v in flags.items():
            self.sim.procs[self.m(int(name[1:]))].quorate = v


def test_loss1_own_write_delivered_after_the_confchg_that_left_us_alone() -> None:
    """A create sent as the link went down comes back after the confchg [n1], while
    corosync's quorate flag on n1 still says True: it must not be acknowledged."""
    c = Nodes()
    c.sim.auto_quorum = False  # corosync's flag on n1 lags: still quorate
    rid = c.op(1, Subtype.CREATE, "inflight.cfg")
    c.sim.partition([{1}, {2, 3}])
    c.sim.run()
    assert c.result(1, rid) is not None
    assert c.result(1, rid) != 0, "acknowledged while alone in the group"
    assert not c.has(2, "inflight.cfg") and not c.has(3, "inflight.cfg")
    # the majority goes on; the heal brings n1 to its state and nothing acknowledged is lost
    rid2 = c.op(2, Subtype.CREATE, "majority.cfg")
    c.sim.run()
    assert c.result(2, rid2) == 0
    c.sim.partition([{1, 2, 3}])
    c.sim.run()
    assert {c.apps[n].tree.encode_index() for n in (1, 2, 3)} == {
        c.apps[2].tree.encode_index()
    }
    assert all(c.has(n, "majority.cfg") for n in (1, 2, 3))


def test_loss2_stale_node_quorate_but_alone_in_the_group() -> None:
    """n1 missed writes while partitioned; healed, it is quorate with n3 whose pmxcfs has
    just left the group: alone and 'synced', it must refuse writes until a sync."""
    c = Nodes()
    c.sim.auto_quorum = False
    c.sim.auto_rejoin = False
    c.set_quorate(n1=False)
    c.sim.partition([{1}, {2, 3}])
    c.sim.run()
    for i in range(5):
        assert c.result(2, c.op(2, Subtype.CREATE, f"b{i}.cfg")) is None
        c.sim.run()
    assert c.has(3, "b4.cfg") and not c.has(1, "b4.cfg")
    # n3 is briefly alone, gets a write while not quorate and leaves the group ("trigger
    # resync"); its restart job brings it back a few seconds later
    c.sim.remove(c.m(3))
    c.sim.procs[c.m(3)].left = True
    # corosync now counts n1 + n3 (quorate), but n3's pmxcfs is out of the group
    c.set_quorate(n1=True, n3=True, n2=False)
    c.sim.partition([{1, 3}, {2}])
    c.sim.run()
    assert c.sim.procs[c.m(1)].dfsm.mode is Mode.SYNCED
    assert not c.apps[1].gate.writable
    rid = c.op(1, Subtype.CREATE, "stale-write.cfg")
    c.sim.run()
    assert c.result(1, rid) is not None and c.result(1, rid) != 0, "acknowledged on a stale tree"
    # n3 comes back: the sync picks its higher version; nothing acknowledged is lost
    p3 = c.sim.procs[c.m(3)]
    p3.left = False
    c.sim._run_actions(p3, p3.dfsm.feed(Reset()))
    c.sim.join(c.m(3))
    c.sim.auto_rejoin = True  # n1's restart job (it left at the refused delivery)
    c.sim.run()
    assert c.apps[1].tree.encode_index() == c.apps[3].tree.encode_index()
    assert c.has(1, "b4.cfg")
    assert c.apps[1].gate.writable


# ---------------------------------------------------------------------------- the backend


def test_backend_refuses_with_eacces_while_the_group_is_short() -> None:
    trio.run(_backend_refuses)


async def _backend_refuses() -> None:
    tree = Tree()
    gate = WriteGate(lambda: True)
    gate.set_votes(2, 0, {1: 1, 2: 1, 3: 1})
    app = DcdbApp(tree, gate=gate)
    dfsm = Dfsm(1, 101, app, PROTOCOL_VERSION, name="t", verify_interval=None)
    driver = DfsmDriver(dfsm)
    backend = ClusterBackend(tree, driver, gate)
    driver.feed(ConfChg(((1, 101),), (), ((1, 101),)))
    assert dfsm.mode is Mode.SYNCED and not backend.quorate
    sent: list[bytes] = []
    driver.direct = lambda data: sent.append(data) is None
    with pytest.raises(TreeError) as exc:
        await backend.create("x.cfg")
    assert exc.value.errno == errno.EACCES and sent == []
    driver.feed(ConfChg(((1, 101), (2, 102)), (), ((2, 102),)))
    assert backend.quorate


def test_deliveries_are_judged_by_the_group_not_by_the_unordered_flag() -> None:
    """corosync's flag can already speak of a later membership (it comes on its own socket):
    a delivery in a group that holds quorum's votes is applied everywhere in that group, so
    no member leaves for it (a needless leave leaves a stale peer alone: loss 2 on C peers)."""
    q = {"v": False}
    g = WriteGate(lambda: q["v"])
    assert not g.applies  # no vote figures yet: the reference's rule, the flag
    q["v"] = True
    assert g.applies
    q["v"] = False
    g.set_votes(2, 0, {1: 1, 2: 1, 3: 1})
    g.set_group([1, 2])
    assert g.applies and not g.writable  # applied, but no new write accepted
    g.set_group([1])
    q["v"] = True
    assert not g.applies and not g.writable


def test_own_write_refused_alone_in_the_group_needs_no_resync() -> None:
    """Our own write delivered while we are alone in the group is refused (EACCES) without
    leaving: nobody else applied it, and a leave would open a window in which a C peer that
    joins is alone in the group and serves writes the next sync drops (its loss 2)."""
    c = Nodes()
    c.sim.auto_quorum = False  # corosync's flag on n1 lags: still quorate
    c.sim.auto_rejoin = False  # a leave would show as p.left
    c.apps[1].local_member = c.m(1)
    c.sim.partition([{1}, {2, 3}])
    c.sim.run()
    rid = c.op(1, Subtype.CREATE, "alone.cfg")
    c.sim.run()
    p1 = c.sim.procs[c.m(1)]
    assert c.result(1, rid) == -errno.EACCES
    assert not p1.left and p1.dfsm.mode is Mode.SYNCED
    assert not c.has(1, "alone.cfg")
    # the heal syncs as usual and nothing diverged
    c.sim.partition([{1, 2, 3}])
    c.sim.run()
    assert len({c.apps[n].tree.encode_index() for n in (1, 2, 3)}) == 1
