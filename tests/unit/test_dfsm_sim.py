"""DFSM + DCDB nodes wired through the deterministic in-memory CPG (pmxcfs.dfsm.sim)."""

from __future__ import annotations

import errno

from pmxcfs.constants import DT_DIR, DT_REG, VERSION_ROW_NAME
from pmxcfs.dcdb.app import DcdbApp
from pmxcfs.dcdb.codec import PROTOCOL_VERSION, FuseOp, Subtype, decode_index
from pmxcfs.dcdb.writegate import WriteGate
from pmxcfs.dfsm import codec
from pmxcfs.dfsm.codec import Mode
from pmxcfs.dfsm.machine import Deliver, Dfsm, Tick
from pmxcfs.dfsm.sim import Sim
from pmxcfs.tree import Tree
from tests.clock import Clock

T0 = 1_700_000_000


def tree_with(files: dict[str, bytes], version: int | None = None, mtime: int = T0) -> Tree:
    """A tree whose inodes are created in order, as a node in local mode would."""
    t = Tree()
    for path, data in files.items():
        parts = path.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if t.lookup(d) is None:
                t.mkdir(d, 0, mtime)
        t.create(path, 0, mtime)
        if data:
            t.write(path, 0, data, 0, mtime)
    if version is not None:
        rows = [r for r in t.rows() if r[0] != 0]
        rows.append((0, 0, version, 0, mtime, DT_REG, VERSION_ROW_NAME, None))
        t = Tree.from_rows(rows)
        t.finish_load()
    return t


class Cluster:
    def __init__(self, trees: dict[int, Tree], clock: Clock | None = None, **app_kw: object):
        self.clock = clock or Clock(T0)
        self.sim = Sim(total_nodes=len(trees))
        self.apps: dict[int, DcdbApp] = {}
        self.dfsms: dict[int, Dfsm] = {}
        for nodeid, tree in trees.items():
            m = (nodeid, 1000 + nodeid)
            tree.clock = self.clock
            app = DcdbApp(
                tree,
                gate=WriteGate(lambda m=m: self.sim.procs[m].quorate),
                clock=self.clock,
                **app_kw,  # type: ignore[arg-type]
            )
            d = Dfsm(nodeid, m[1], app, PROTOCOL_VERSION, clock=self.clock, name=f"dcdb{nodeid}")
            self.apps[nodeid] = app
            self.dfsms[nodeid] = d
            self.sim.add(d)

    def m(self, nodeid: int) -> tuple[int, int]:
        return (nodeid, 1000 + nodeid)

    def tree(self, nodeid: int) -> Tree:
        return self.apps[nodeid].tree

    def start(self, *nodeids: int) -> None:
        first = None
        for n in nodeids:
            self.sim.join(self.m(n), first)
            first = first or self.m(n)

    def op(self, nodeid: int, subtype: Subtype, path: str, **kw: object) -> int:
        payload = FuseOp(path.encode(), **kw).encode()  # type: ignore[arg-type]
        return self.sim.request(self.m(nodeid), subtype, payload)

    def result(self, nodeid: int, rid: int) -> int | None:
        return self.sim.procs[self.m(nodeid)].results.get(rid)

    def indexes(self) -> set[bytes]:
        return {self.tree(n).encode_index() for n in self.apps}

    def modes(self) -> dict[int, Mode]:
        return {n: d.mode for n, d in self.dfsms.items()}


def test_single_node_applies_directly() -> None:
    c = Cluster({1: Tree()})
    c.start(1)
    assert c.dfsms[1].mode == Mode.SYNCED
    rid = c.op(1, Subtype.CREATE, "a.txt")
    rid2 = c.op(1, Subtype.WRITE, "a.txt", data=b"hi")
    c.sim.run()
    assert c.result(1, rid) == 0 and c.result(1, rid2) == 2
    e = c.tree(1).lookup("a.txt")
    assert e is not None and e.data == b"hi" and e.writer == 1 and e.mtime == T0


def test_diverged_trees_converge_to_highest_version() -> None:
    t1 = tree_with({"a.cfg": b"one"}, version=10)
    t2 = tree_with({"b.cfg": b"two", "x/y.cfg": b"deep"}, version=20)
    t3 = tree_with({"c.cfg": b"three"}, version=5)
    c = Cluster({1: t1, 2: t2, 3: t3})
    want = t2.encode_index()
    c.start(1, 2, 3)
    c.sim.run()
    assert c.modes() == {1: Mode.SYNCED, 2: Mode.SYNCED, 3: Mode.SYNCED}
    assert c.indexes() == {want}
    for n in (1, 3):
        t = c.tree(n)
        assert t.lookup("b.cfg").data == b"two"  # type: ignore[union-attr]
        assert t.lookup("x/y.cfg").data == b"deep"  # type: ignore[union-attr]
        assert t.lookup("a.cfg") is None and t.lookup("c.cfg") is None
    assert c.apps[2].commits == 0 and c.apps[1].commits >= 1 and c.apps[3].commits >= 1
    # a new write after the sync reaches everyone with the sender as writer
    rid = c.op(3, Subtype.WRITE, "b.cfg", data=b"TWO")
    c.sim.run()
    assert c.result(3, rid) == 3
    assert len(c.indexes()) == 1
    assert c.tree(1).lookup("b.cfg").writer == 3  # type: ignore[union-attr]


def test_leader_tie_breaks() -> None:
    # equal version: higher mtime wins even against a lower nodeid
    a = tree_with({"a": b"1"}, version=7, mtime=T0)
    b = tree_with({"b": b"2"}, version=7, mtime=T0 + 5)
    c = Cluster({1: a, 2: b})
    want = b.encode_index()
    c.start(1, 2)
    c.sim.run()
    assert c.indexes() == {want}
    # equal version and mtime: the first member (lowest nodeid) wins
    a = tree_with({"a": b"1"}, version=7)
    b = tree_with({"b": b"2"}, version=7)
    c = Cluster({1: a, 2: b})
    want = a.encode_index()
    c.start(2, 1)
    c.sim.run()
    assert c.indexes() == {want}


def test_writes_during_sync_are_queued_and_ordered_by_count() -> None:
    """§4.7: queued messages run in count order across senders (spec's own example)."""
    c = Cluster({1: Tree(), 2: Tree(), 3: Tree()})
    c.start(1, 2)
    c.sim.run()
    for i in range(4):  # raise node 1's counter to 4
        c.op(1, Subtype.MKDIR, f"d{i}")
    c.sim.run()
    assert c.dfsms[1].msgcount == 4
    c.sim.join(c.m(3), c.m(1))  # view change: everyone to START_SYNC
    assert c.dfsms[1].mode == Mode.START_SYNC
    mk = c.op(1, Subtype.MKDIR, "a")  # count 5
    cr = c.op(2, Subtype.CREATE, "a/x")  # count 1, totem-ordered after mkdir
    c.sim.run()
    assert c.modes() == {1: Mode.SYNCED, 2: Mode.SYNCED, 3: Mode.SYNCED}
    assert c.result(1, mk) == 0
    assert c.result(2, cr) == -errno.ENOENT  # ran before the mkdir, as on C nodes
    assert len(c.indexes()) == 1
    assert c.tree(3).lookup("a") is not None


def test_own_queued_messages_resent_on_join() -> None:
    c = Cluster({1: Tree(), 2: Tree(), 3: Tree(), 4: Tree()})
    c.start(1, 2)
    c.sim.run()
    c.sim.join(c.m(3), c.m(1))
    rid = c.op(2, Subtype.CREATE, "f")
    c.sim.step()  # SYNC_START
    c.sim.step()  # our CREATE (queued everywhere, START_SYNC)
    assert any(q.count == 1 for q in c.dfsms[2].msg_queue)
    c.sim.join(c.m(4), c.m(1))  # joined list non-empty: node 2 re-multicasts and clears
    assert c.dfsms[2].msg_queue == []
    c.sim.run()
    assert c.result(2, rid) == 0  # applied once (a second copy would give EEXIST)
    assert len(c.indexes()) == 1
    assert decode_index(c.tree(4).encode_index()).version == 2


def test_partition_heal_and_quorum() -> None:
    c = Cluster({1: Tree(), 2: Tree(), 3: Tree()})
    c.start(1, 2, 3)
    c.sim.run()
    c.op(1, Subtype.CREATE, "before")
    c.sim.run()
    c.sim.partition([{1, 2}, {3}])
    assert not c.sim.procs[c.m(3)].quorate and c.sim.procs[c.m(1)].quorate
    c.sim.run()
    w = c.op(1, Subtype.CREATE, "during")
    # A non-quorate receiver leaves (§5.5 step 2): a message node 3 sends anyway is fatal
    x = c.op(3, Subtype.CREATE, "rogue")
    c.sim.run()
    assert c.result(1, w) == 0
    assert c.result(3, x) == -1
    assert c.tree(3).lookup("rogue") is None
    assert c.dfsms[3].stats.fatal == 1 and c.dfsms[3].mode == Mode.SYNCED  # rejoined alone
    assert c.tree(3).lookup("during") is None
    c.sim.partition([{1, 2, 3}])
    c.sim.run()
    assert len(c.indexes()) == 1
    assert c.tree(3).lookup("during") is not None
    assert c.modes() == {1: Mode.SYNCED, 2: Mode.SYNCED, 3: Mode.SYNCED}


def test_partition_during_sync_is_safe() -> None:
    c = Cluster({1: tree_with({"a": b"1"}, 9), 2: Tree(), 3: Tree()})
    c.start(1, 2, 3)
    for _ in range(3):
        c.sim.step()
    c.sim.partition([{1}, {2, 3}])  # messages of the old epoch follow their senders
    c.sim.run()
    c.sim.partition([{1, 2, 3}])
    c.sim.run()
    assert len(c.indexes()) == 1
    assert c.tree(2).lookup("a") is not None
    assert all(m == Mode.SYNCED for m in c.modes().values())


def test_verify_round_ok_and_mismatch_resyncs() -> None:
    clock = Clock(T0)
    c = Cluster({1: Tree(), 2: Tree(), 3: Tree()}, clock)
    c.start(1, 2, 3)
    c.op(2, Subtype.CREATE, "f")
    c.op(2, Subtype.WRITE, "f", data=b"same")
    c.sim.run()
    clock.t += 3600
    for n in (1, 2, 3):
        c.sim._feed(c.m(n), Tick(clock.t))
    c.sim.run()
    assert all(d.stats.fatal == 0 for d in c.dfsms.values())
    assert c.dfsms[1].csum_counter == 1 and c.dfsms[3].csum_id == 1
    # silently corrupt node 3's copy: the next round makes it leave and resync
    c.tree(3).lookup("f").data = b"SAME"  # type: ignore[union-attr]
    clock.t += 3600
    for n in (1, 2, 3):
        c.sim._feed(c.m(n), Tick(clock.t))
    c.sim.run()
    assert c.dfsms[3].stats.fatal == 1 and "mismatch" in c.dfsms[3].stats.last_error
    assert c.dfsms[1].stats.fatal == 0
    assert c.tree(3).lookup("f").data == b"same"  # type: ignore[union-attr]
    assert len(c.indexes()) == 1


def test_verify_interval_configurable_and_only_coordinator() -> None:
    clock = Clock(T0)
    c = Cluster({1: Tree(), 2: Tree()}, clock)
    for d in c.dfsms.values():
        d.verify_interval = 10
    c.start(1, 2)
    c.sim.run()
    clock.t += 9
    c.sim._feed(c.m(1), Tick(clock.t))
    assert c.dfsms[1].csum_counter == 0
    clock.t += 1
    c.sim._feed(c.m(2), Tick(clock.t))
    c.sim._feed(c.m(1), Tick(clock.t))
    assert c.dfsms[2].csum_counter == 0 and c.dfsms[1].csum_counter == 1


def test_send_failure_gives_ebusy() -> None:
    c = Cluster({1: Tree()})
    c.start(1)
    c.sim.fail_sends = lambda m, s: True
    rid = c.op(1, Subtype.CREATE, "x")
    assert c.result(1, rid) == -errno.EBUSY
    assert c.dfsms[1].mode == Mode.SYNCED  # a failed NORMAL send is not fatal


def test_unknown_subtype_makes_everyone_resync() -> None:
    c = Cluster({1: Tree(), 2: Tree()})
    c.start(1, 2)
    c.sim.run()
    rid = c.sim.request(c.m(1), 9, b"")
    c.sim.run()
    assert c.result(1, rid) == -1
    assert all(d.stats.fatal == 1 for d in c.dfsms.values())
    assert all(m == Mode.SYNCED for m in c.modes().values())


def test_newer_protocol_version_is_permanent_and_older_ignored() -> None:
    c = Cluster({1: Tree(), 2: Tree()})
    c.start(1, 2)
    c.sim.run()
    d = c.dfsms[2]
    old = codec.encode_normal(Subtype.CREATE, 0, T0, 99, FuseOp(b"old").encode())
    d.feed(Deliver(1, 1001, old))
    assert d.mode == Mode.SYNCED and c.tree(2).lookup("old") is None
    new = codec.encode_normal(Subtype.CREATE, 2, T0, 99, FuseOp(b"new").encode())
    acts = d.feed(Deliver(1, 1001, new))
    assert d.mode == Mode.VERSION_ERROR and not d.restartable
    assert any(type(a).__name__ == "Leave" for a in acts)
    assert c.tree(2).lookup("new") is None


def test_expired_lock_is_unlocked_by_the_coordinator() -> None:
    from pmxcfs.checksum import lock_checksum
    from pmxcfs.dcdb.codec import UnlockMsg

    clock = Clock(T0)
    c = Cluster({1: Tree(), 2: Tree()}, clock)
    c.start(1, 2)
    for p in ("priv", "priv/lock", "priv/lock/l1"):
        c.op(2, Subtype.MKDIR, p)
    c.sim.run()

    def request_unlock() -> None:
        e = c.tree(2).lookup("priv/lock/l1")
        assert e is not None and e.type == DT_DIR
        msg = UnlockMsg(lock_checksum(e), b"priv/lock/l1").encode()
        c.sim.request(c.m(2), Subtype.UNLOCK_REQUEST, msg, wait=False)
        c.sim.run()

    request_unlock()
    assert c.tree(1).lookup("priv/lock/l1") is not None  # not expired
    clock.t += 121
    request_unlock()
    assert c.tree(1).lookup("priv/lock/l1") is None and c.tree(2).lookup("priv/lock/l1") is None
    assert len(c.indexes()) == 1
