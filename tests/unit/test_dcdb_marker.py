"""The sync marker: a node that was only behind saves nothing; one that diverged keeps exactly
what it changed alone."""

from __future__ import annotations

from pathlib import Path

from pmxcfs.dcdb.app import DcdbApp
from pmxcfs.dcdb.codec import PROTOCOL_VERSION
from pmxcfs.dcdb.marker import SyncMarker
from pmxcfs.dcdb.writegate import WriteGate
from pmxcfs.dfsm.machine import Dfsm
from pmxcfs.dfsm.sim import Sim
from pmxcfs.tree import Tree

T0 = 1_700_000_000


def two_nodes(t1: Tree, t2: Tree, marker: SyncMarker, lf: Path) -> DcdbApp:
    app2 = DcdbApp(t2, gate=WriteGate(lambda: True), lost_found_dir=str(lf), marker=marker)
    app2.local_member = (2, 2)
    sim = Sim(total_nodes=2)
    sim.add(Dfsm(1, 1, DcdbApp(t1, gate=WriteGate(lambda: True)), PROTOCOL_VERSION, name="dcdb"))
    sim.add(Dfsm(2, 2, app2, PROTOCOL_VERSION, name="dcdb"))
    sim.join((1, 1))
    sim.join((2, 2), (1, 1))
    sim.run()
    assert t1.encode_index() == t2.encode_index()
    return app2


def shared_history() -> tuple[Tree, Tree]:
    """Two identical trees, as two nodes have them after working together."""
    t1, t2 = Tree(), Tree()
    for t in (t1, t2):
        t.create("a.cfg", 1, T0)
        t.write("a.cfg", 0, b"v1", 1, T0)
        t.create("b.cfg", 1, T0)
    return t1, t2


def test_marker_roundtrip_and_guard(tmp_path: Path) -> None:
    m = SyncMarker(str(tmp_path / "marker"))
    assert m.load(100) == 0
    m.save(42)
    assert SyncMarker(str(tmp_path / "marker")).load(100) == 42
    assert SyncMarker(str(tmp_path / "marker")).load(41) == 0  # database replaced by an older one
    (tmp_path / "marker").write_bytes(b"\xc1garbage")
    assert SyncMarker(str(tmp_path / "marker")).load(100) == 0


def test_node_that_was_only_behind_saves_nothing(tmp_path: Path) -> None:
    t1, t2 = shared_history()
    marker = SyncMarker(str(tmp_path / "marker"))
    marker.save(t2.version)  # node 2 was synced at this point, then went down
    t1.write("a.cfg", 0, b"v2", 1, T0 + 5)  # the cluster went on without it
    t1.delete("b.cfg", 1, T0 + 6)
    app2 = two_nodes(t1, t2, marker, tmp_path / "lf")
    assert list(app2.lost) == []
    assert not (tmp_path / "lf").exists()
    assert marker.load(t2.version) == t2.version  # synced again


def test_diverged_node_keeps_only_its_own_changes(tmp_path: Path) -> None:
    t1, t2 = shared_history()
    marker = SyncMarker(str(tmp_path / "marker"))
    marker.save(t2.version)
    t1.write("a.cfg", 0, b"cluster", 1, T0 + 5)
    t1.write("b.cfg", 0, b"cluster", 1, T0 + 5)
    t1.write("b.cfg", 0, b"cluster", 1, T0 + 5)  # the cluster is further ahead
    t2.write("b.cfg", 0, b"mine", 0, T0 + 7)  # edited alone (local mode)
    app2 = two_nodes(t1, t2, marker, tmp_path / "lf")
    assert [(e.path, e.saved_as is not None) for e in app2.lost] == [("b.cfg", True)]
    assert Path(app2.lost[0].saved_as or "").read_bytes() == b"mine"


def test_without_marker_everything_replaced_is_kept(tmp_path: Path) -> None:
    t1, t2 = shared_history()
    t1.write("a.cfg", 0, b"v2", 1, T0 + 5)
    app2 = two_nodes(t1, t2, SyncMarker(str(tmp_path / "none")), tmp_path / "lf")
    assert [e.path for e in app2.lost] == ["a.cfg"]


def test_own_write_not_yet_confirmed_is_kept(tmp_path: Path) -> None:
    """corosync delivers our own message to us before the others have it: a write this node
    acknowledged as its link went down is its own, even though the node was synced then.
    Own writes count as shared only up to the lagging `own` version, so the sync that drops
    this one keeps it under lost+found; others' writes below the marker are not saved."""
    t1, t2 = shared_history()
    before = t2.version
    t2.create("mine.cfg", 2, T0 + 1)  # acknowledged here, never reached node 1
    t2.write("mine.cfg", 0, b"only here", 2, T0 + 1)
    marker = SyncMarker(str(tmp_path / "marker"))
    marker.save(t2.version, own=before)  # synced throughout; own writes not yet confirmed
    for i in range(4):  # the majority went on
        t1.write("a.cfg", 0, b"v%d" % (i + 2), 1, T0 + 5 + i)
    app2 = two_nodes(t1, t2, marker, tmp_path / "lf")
    assert [e.path for e in app2.lost] == ["mine.cfg"]
    saved = app2.lost[0].saved_as
    assert saved is not None and Path(saved).read_bytes() == b"only here"
    assert marker.load_both(t2.version) == (t2.version, t2.version)  # synced again


def test_marker_without_own_version_reads_as_before(tmp_path: Path) -> None:
    import msgpack

    (tmp_path / "marker").write_bytes(msgpack.packb({"version": 7}))
    assert SyncMarker(str(tmp_path / "marker")).load_both(9) == (7, 7)
