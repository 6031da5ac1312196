"""Q1 across a sync: a file the leader holds as a size only (an empty file truncated upward,
`checksum.Hollow`) reaches a follower that missed it as plain zeros in an UPDATE, which
cannot say so.  The follower must end with the leader's digests, or its commit (which
compares its rebuilt index with the leader's) fails at every retry."""

from __future__ import annotations

from pmxcfs.checksum import Hollow
from pmxcfs.dcdb.app import DcdbApp
from pmxcfs.dcdb.codec import PROTOCOL_VERSION
from pmxcfs.dcdb.writegate import WriteGate
from pmxcfs.dfsm.codec import Mode
from pmxcfs.dfsm.machine import Dfsm
from pmxcfs.dfsm.sim import Sim
from pmxcfs.tree import Tree

T0 = 1_700_000_000


def _sync(leader: Tree, follower: Tree) -> tuple[Dfsm, Dfsm]:
    sim = Sim(total_nodes=2)
    app1 = DcdbApp(leader, gate=WriteGate(lambda: True))
    app2 = DcdbApp(follower, gate=WriteGate(lambda: True))
    d1 = Dfsm(1, 101, app1, PROTOCOL_VERSION, name="dcdb")
    d2 = Dfsm(2, 102, app2, PROTOCOL_VERSION, name="dcdb")
    sim.add(d1)
    sim.add(d2)
    sim.join((1, 101))
    sim.join((2, 102), (1, 101))
    sim.run()
    return d1, d2


def test_follower_that_missed_a_file_grown_from_empty_syncs() -> None:
    leader = Tree()
    leader.create("h", 0, T0)
    leader.truncate("h", 100, 0, T0 + 1)  # hollow
    leader.create("z", 0, T0 + 2)
    leader.write("z", 0, bytes(100), 0, T0 + 3)  # zeros written: data
    follower = Tree()
    d1, d2 = _sync(leader, follower)
    assert (d1.mode, d2.mode) == (Mode.SYNCED, Mode.SYNCED)
    assert follower.encode_index() == leader.encode_index()
    h, z = follower.lookup("h"), follower.lookup("z")
    assert h is not None and isinstance(h.data, Hollow) and h.data == bytes(100)
    assert z is not None and not isinstance(z.data, Hollow) and z.data == bytes(100)
