"""Group commit: staged rows reach SQLite as a prefix of the applied operations, and the
cluster layer puts them on disk before a caller on this node learns a result."""

from __future__ import annotations

import contextlib
import errno
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from pmxcfs.dcdb.codec import FuseOp, Subtype
from pmxcfs.dcdb.writegate import WriteGate
from pmxcfs.dfsm import codec
from pmxcfs.dfsm.codec import Mode
from pmxcfs.dfsm.machine import ConfChg
from pmxcfs.journal import GroupCommit
from pmxcfs.services.replication import ReplicationOptions, ReplicationService
from pmxcfs.storage import Database
from pmxcfs.tree import Row, Tree, TreeError


@contextlib.contextmanager
def deferring(gc: GroupCommit) -> Iterator[None]:
    """What DcdbApp does around applying one cluster message."""
    gc.defer = True
    try:
        yield
    finally:
        gc.defer = False


def _rows(path: Path) -> list[tuple[object, ...]]:
    import apsw

    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return sorted(conn.execute("SELECT * FROM tree"))
    finally:
        conn.close()


def _random_ops(tree: Tree, rng: random.Random, n: int) -> None:
    """Creates, writes, renames (also onto files), mkdirs and deletes, as peers send them."""
    for i in range(n):
        files = [p for p, e in tree.walk() if not e.is_dir]
        dirs = [""] + [p for p, e in tree.walk() if e.is_dir]
        k = rng.randrange(6)
        try:
            if k == 0 or not files:
                tree.create(f"{rng.choice(dirs)}/f{i}".lstrip("/"), 2, 1000 + i)
            elif k == 1:
                tree.write(rng.choice(files), rng.randrange(4), b"x%d" % i, 2, 1000 + i)
            elif k == 2:
                tree.rename(rng.choice(files), rng.choice([*files, f"g{i}"]), 2, 1000 + i)
            elif k == 3:
                tree.mkdir(f"{rng.choice(dirs)}/d{i}".lstrip("/"), 2, 1000 + i)
            elif k == 4:
                tree.delete(rng.choice(files), 2, 1000 + i)
            else:
                tree.truncate(rng.choice(files), rng.randrange(3), 2, 1000 + i)
        except TreeError:
            pass


@pytest.mark.parametrize("seed", range(5))
def test_staged_flush_equals_one_transaction_per_operation(tmp_path: Path, seed: int) -> None:
    direct_db, direct = Database.open(str(tmp_path / "direct.db"))
    grouped_db, grouped = Database.open(str(tmp_path / "grouped.db"))
    gc = GroupCommit(grouped_db)
    grouped.journal = gc
    _random_ops(direct, random.Random(seed), 300)
    before = _rows(tmp_path / "grouped.db")
    with deferring(gc):
        _random_ops(grouped, random.Random(seed), 300)
    assert _rows(tmp_path / "grouped.db") == before  # nothing written while deferring
    assert gc.staged and gc.transactions == 0
    gc.flush()
    assert gc.transactions == 1 and not gc.staged
    assert _rows(tmp_path / "grouped.db") == _rows(tmp_path / "direct.db")
    direct_db.close()
    grouped_db.close()


def test_immediate_commit_carries_staged_rows_in_the_same_transaction(tmp_path: Path) -> None:
    db, tree = Database.open(str(tmp_path / "c.db"))
    gc = GroupCommit(db)
    tree.journal = gc
    with deferring(gc):
        tree.create("a.cfg", 2, 1)
        tree.write("a.cfg", 0, b"peer", 2, 2)
    tree.mkdir("d", 1, 3)  # not deferring: written at once, with what was staged first
    assert gc.transactions == 1 and not gc.staged
    names = {r[6]: r for r in _rows(tmp_path / "c.db")}
    assert names["a.cfg"][7] == b"peer" and "d" in names
    assert names["__version__"][2] == tree.version
    db.close()


def test_crash_before_flush_leaves_the_last_flushed_prefix(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    db, tree = Database.open(str(path))
    gc = GroupCommit(db)
    tree.journal = gc
    with deferring(gc):
        tree.create("one.cfg", 2, 1)
    gc.flush()
    flushed_version = tree.version
    with deferring(gc):
        tree.create("two.cfg", 2, 2)
        tree.delete("one.cfg", 2, 3)
    db.close()  # the process dies: what was staged is gone, the prefix stays
    db2, reloaded = Database.open(str(path))
    assert reloaded.version == flushed_version
    assert reloaded.lookup("one.cfg") is not None and reloaded.lookup("two.cfg") is None
    db2.close()


class _FailingStore:
    def __init__(self) -> None:
        self.calls = 0

    def commit(self, upserts: Sequence[Row], deletes: Sequence[int]) -> None:
        self.calls += 1
        raise OSError(errno.ENOSPC, "disk full")


def test_failed_flush_keeps_rows_staged_until_discarded() -> None:
    store = _FailingStore()
    gc = GroupCommit(store)
    tree = Tree(gc)
    with deferring(gc):
        tree.create("a.cfg", 2, 1)
    with pytest.raises(OSError):
        gc.flush()
    assert gc.staged
    gc.discard()
    assert not gc.staged
    gc.flush()  # nothing staged: no call
    assert store.calls == 1


# ---------------------------------------------------------------------------- cluster policy


def _services(tmp_path: Path) -> tuple[ReplicationService, Database, list[bytes]]:
    db, tree = Database.open(str(tmp_path / "config.db"), journal=GroupCommit)
    assert isinstance(tree.journal, GroupCommit)
    gate = WriteGate(lambda: True)
    opts = ReplicationOptions(
        lost_found_dir=str(tmp_path / "lost+found"),
        sync_marker_path=str(tmp_path / "marker"),
        verify_interval=None,
    )
    svc = ReplicationService(tree, tree.journal, gate, opts)
    svc.dfsm.set_identity(1, os.getpid())
    svc.app.local_member = svc.dfsm.me
    svc.driver.reset()
    svc.driver.feed(ConfChg((svc.dfsm.me,), (), (svc.dfsm.me,)))
    assert svc.dfsm.mode == Mode.SYNCED
    sent: list[bytes] = []

    def direct(data: bytes) -> bool:
        sent.append(data)
        return True

    svc.driver.direct = direct
    return svc, db, sent


def test_own_result_is_on_disk_before_the_caller_resumes(tmp_path: Path) -> None:
    svc, db, sent = _services(tmp_path)

    async def main() -> None:
        seen: list[set[object]] = []

        async def call() -> None:
            await svc.backend.create("mine.cfg")
            # resumed only after the dispatch ended: the rows are already on disk
            seen.append({r[6] for r in _rows(tmp_path / "config.db")})

        async with trio.open_nursery() as n:
            n.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            assert len(sent) == 1
            # one dispatch: a peer's create, then our own message
            peer = codec.encode_normal(Subtype.CREATE, 1, 5, 1, FuseOp(b"peer.cfg").encode())
            svc.begin_batch()
            svc.driver.deliver(2, 4242, peer)
            svc.driver.deliver(svc.dfsm.me[0], svc.dfsm.me[1], sent[0])
            assert svc.journal.staged  # applied in memory, not yet written
            await trio.testing.wait_all_tasks_blocked()
            assert not seen  # answered, but held until the batch is on disk
            svc.end_batch()
            assert not svc.journal.staged and svc.journal.transactions == 1
        assert seen and {"mine.cfg", "peer.cfg"} <= seen[0]

    trio.run(main)
    db.close()


def test_peer_operations_are_flushed_within_the_delay(tmp_path: Path) -> None:
    svc, db, _sent = _services(tmp_path)

    async def main() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(svc.run_flusher)
            # a message from ourselves without a waiter behaves like a peer's: nobody waits
            for i in range(5):
                msg = codec.encode_normal(
                    Subtype.CREATE, 1, 5, 100 + i, FuseOp(b"p%d.cfg" % i).encode()
                )
                svc.begin_batch()
                svc.driver.deliver(svc.dfsm.me[0], svc.dfsm.me[1], msg)
                svc.end_batch()
            assert svc.journal.staged
            assert not any(r[6].startswith("p") for r in _rows(tmp_path / "config.db"))
            with trio.fail_after(5):
                while svc.journal.staged:
                    await trio.sleep(0.01)
            assert svc.journal.transactions == 1
            assert {f"p{i}.cfg" for i in range(5)} <= {r[6] for r in _rows(tmp_path / "config.db")}
            n.cancel_scope.cancel()

    trio.run(main)
    db.close()


def test_failed_flush_answers_eio_and_leaves_in_error(tmp_path: Path) -> None:
    svc, db, sent = _services(tmp_path)
    svc.journal.store = _FailingStore()

    async def main() -> None:
        async with trio.open_nursery() as n:
            errs: list[int] = []

            async def call() -> None:
                try:
                    await svc.backend.create("lost.cfg")
                except TreeError as exc:
                    errs.append(exc.errno)

            n.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            svc.begin_batch()
            svc.driver.deliver(svc.dfsm.me[0], svc.dfsm.me[1], sent[0])
            svc.end_batch()
            await trio.testing.wait_all_tasks_blocked()
            assert errs == [errno.EIO]
            assert svc.tree.error and svc.dfsm.mode == Mode.ERROR
            with pytest.raises(TreeError) as ei:
                await svc.backend.create("after.cfg")
            assert ei.value.errno in (errno.EIO, errno.EBUSY)

    trio.run(main)
    db.close()


def test_shutdown_writes_what_is_staged(tmp_path: Path) -> None:
    svc, db, _sent = _services(tmp_path)

    async def main() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(svc.run_flusher)
            await trio.testing.wait_all_tasks_blocked()
            msg = codec.encode_normal(Subtype.CREATE, 1, 5, 100, FuseOp(b"late.cfg").encode())
            svc.begin_batch()
            svc.driver.deliver(2, 4242, msg)
            svc.end_batch()
            assert svc.journal.staged
            n.cancel_scope.cancel()  # the daemon stops before FLUSH_DELAY has passed
        assert not svc.journal.staged

    trio.run(main)
    assert "late.cfg" in {r[6] for r in _rows(tmp_path / "config.db")}
    db.close()
