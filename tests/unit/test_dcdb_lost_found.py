"""Step 4: a node that loses to the leader's state keeps what it loses (lost+found), and the
follower commit goes through the real database in one transaction."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pmxcfs.dcdb.app import DcdbApp
from pmxcfs.dcdb.codec import PROTOCOL_VERSION, encode_index
from pmxcfs.dcdb.writegate import WriteGate
from pmxcfs.dfsm import codec
from pmxcfs.dfsm.codec import Epoch, Mode, MsgType
from pmxcfs.dfsm.machine import ConfChg, Deliver, Dfsm, Leave
from pmxcfs.dfsm.sim import Sim
from pmxcfs.storage import Database
from pmxcfs.tree import Tree

T0 = 1_700_000_000


def _db(path: Path, files: dict[str, bytes], t: int = T0) -> tuple[Database, Tree]:
    db, tree = Database.open(str(path))
    for p, data in files.items():
        if "/" in p and tree.lookup(p.rsplit("/", 1)[0]) is None:
            tree.mkdir(p.rsplit("/", 1)[0], 0, t)
        tree.create(p, 0, t)
        tree.write(p, 0, data, 0, t)
    return db, tree


def test_loser_saves_overwritten_and_deleted_entries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db1, t1 = _db(tmp_path / "n1.db", {"shared.cfg": b"leader\n", "a/b.cfg": b"b", "x": b"y"})
    t1.write("x", 0, b"z", 1, T0 + 1)  # leader has the higher version
    db2, t2 = _db(tmp_path / "n2.db", {"shared.cfg": b"mine\n", "only-mine.cfg": b"precious\n"})
    lf = tmp_path / "lost+found"
    clog: list[str] = []
    sim = Sim(total_nodes=2)
    apps = {
        1: DcdbApp(t1, gate=WriteGate(lambda: True), lost_found_dir=str(lf / "n1")),
        2: DcdbApp(
            t2, gate=WriteGate(lambda: True), lost_found_dir=str(lf / "n2"), cluster_log=clog.append
        ),
    }
    for n, app in apps.items():
        sim.add(Dfsm(n, 100 + n, app, PROTOCOL_VERSION, name="dcdb"))
    sim.join((1, 101))
    caplog.set_level(logging.WARNING, "pmxcfs.dcdb")
    sim.join((2, 102), (1, 101))
    sim.run()
    assert t1.encode_index() == t2.encode_index()
    lost = {e.path: e for e in apps[2].lost}
    assert set(lost) == {"shared.cfg", "only-mine.cfg"}
    assert list(apps[1].lost) == []
    saved = {Path(e.saved_as).read_bytes() for e in lost.values() if e.saved_as}  # type: ignore[arg-type]
    assert saved == {b"mine\n", b"precious\n"}
    for e in lost.values():
        assert e.saved_as is not None and e.saved_as.endswith(f"{e.path}.v{e.version}")
        assert os.stat(e.saved_as).st_mode & 0o077 == 0  # may hold priv/ data
    assert any("only-mine.cfg" in r.message and "saved as" in r.message for r in caplog.records)
    assert len(clog) == 2
    # the database on disk holds exactly the leader's state
    db2.close()
    db3, t3 = Database.open(str(tmp_path / "n2.db"))
    assert t3.encode_index() == t1.encode_index()
    db3.close()
    db1.close()


def test_lost_found_disabled_still_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    t1 = Tree()
    t1.create("f", 0, T0)
    t1.write("f", 0, b"new", 0, T0)
    t2 = Tree()
    t2.create("g", 0, T0)
    app2 = DcdbApp(t2)
    sim = Sim(total_nodes=2)
    sim.add(Dfsm(1, 1, DcdbApp(t1), PROTOCOL_VERSION, name="dcdb"))
    sim.add(Dfsm(2, 2, app2, PROTOCOL_VERSION, name="dcdb"))
    caplog.set_level(logging.WARNING, "pmxcfs.dcdb")
    sim.join((1, 1))
    sim.join((2, 2), (1, 1))
    sim.run()
    assert [e.path for e in app2.lost] == ["g"] and app2.lost[0].saved_as is None
    assert any("'g'" in r.message for r in caplog.records)


def test_bad_leader_state_leaves_and_keeps_database(tmp_path: Path) -> None:
    """Index mismatch at commit: clean LEAVE, nothing written, nothing lost."""
    db, tree = _db(tmp_path / "n2.db", {"keep.cfg": b"keep"})
    before = tree.encode_index()
    app = DcdbApp(tree, lost_found_dir=str(tmp_path / "lf"))
    d = Dfsm(2, 2, app, PROTOCOL_VERSION, name="dcdb")
    d.feed(ConfChg(((1, 1), (2, 2)), (), ((2, 2),)))
    ep = Epoch(7, T0, 1, 1)
    d.feed(Deliver(1, 1, codec.encode_state(MsgType.SYNC_START, 1, T0, ep)))
    bogus = encode_index(99, 0, 1, T0, [(0, b"\x01" * 32)])
    d.feed(Deliver(1, 1, codec.encode_state(MsgType.STATE, 1, T0, ep, bogus)))
    d.feed(Deliver(2, 2, codec.encode_state(MsgType.STATE, 1, T0, ep, before)))
    assert d.mode == Mode.UPDATE
    acts = d.feed(Deliver(1, 1, codec.encode_state(MsgType.UPDATE_COMPLETE, 1, T0, ep)))
    assert d.mode == Mode.LEAVE and d.restartable
    assert any(isinstance(a, Leave) for a in acts)
    assert tree.encode_index() == before and not tree.error
    assert not app.lost and not (tmp_path / "lf").exists()
    db.close()
    db2, t2 = Database.open(str(tmp_path / "n2.db"))
    assert t2.encode_index() == before
    db2.close()
