"""The memdb rules, without FUSE: the reference's own unit tests plus the quirks we fix."""

from __future__ import annotations

import errno
import hashlib
import struct
from collections.abc import Sequence

import pytest

from pmxcfs import checksum
from pmxcfs.checksum import Hollow
from pmxcfs.dcdb import codec
from pmxcfs.tree import Entry, LoadError, Row, Tree, TreeError
from pmxcfs.vmlist import DuplicateVmid


def err(fn, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(TreeError) as ei:
        fn(*args)
    return ei.value.errno


def test_index_vector_of_reference_unit_test() -> None:
    t = Tree()
    for i in range(100):
        t.create(f"testfile{i}", 0, 1234)
        t.write(f"testfile{i}", 0, bytes(32768), 0, 1234)
    assert (t.version, t.last_inode, len(t.index)) == (201, 200, 101)
    digest = hashlib.sha256(t.encode_index()).hexdigest()
    assert digest == "913fd95015af9d93f10dd51ba2a7bb11351bcfe040be21e95fcba834adc3ec10"


def test_root_digest_of_fresh_db() -> None:
    t = Tree()
    assert checksum.entry_digest(t.root).hex() == (
        "4c56076e879e582d9b0f9fee24664fc9a26a49591880e0e7cd12061406db0511"
    )


def test_error_codes_like_check_memdb() -> None:
    t = Tree()
    assert err(t.mkdir, "a/b", 0, 1) == errno.ENOENT
    t.mkdir("a", 0, 1)
    assert err(t.mkdir, "a", 0, 1) == errno.EEXIST
    t.create("a/f", 0, 1)
    assert err(t.create, "a/f", 0, 1) == errno.EEXIST
    assert err(t.delete, "a", 0, 1) == errno.ENOTEMPTY
    assert err(t.delete, "nope", 0, 1) == errno.ENOENT
    assert err(t.write, "nope", 0, b"x", 0, 1) == errno.ENOENT
    assert err(t.create, "a/f/g", 0, 1) == errno.ENOTDIR
    assert err(t.write, "a", 0, b"x", 0, 1) == errno.ENOTDIR
    assert err(t.delete, "", 0, 1) == errno.EACCES
    assert err(t.mkdir, "a/..", 0, 1) == errno.EACCES
    assert err(t.create, "a/.", 0, 1) == errno.EACCES


def test_write_at_offset_semantics() -> None:
    t = Tree()
    t.create("f", 0, 1)
    t.write("f", 0, b"0123456789", 0, 1)
    t.write("f", 3, b"X", 0, 1)
    t.write("f", 6, b"X", 0, 1)
    e = t.lookup("f")
    assert e is not None and e.data == b"012X45X789" and e.size == 10
    t.write("f", 12, b"ab", 0, 1)
    assert e.data == b"012X45X789\0\0ab"
    t.write("f", 2, b"Z", 0, 1, truncate=True)
    assert e.data == b"01Z"


def test_truncate_of_empty_file_upward_is_zero_filled() -> None:
    """Q1: the reference keeps no data and crashes on read; we zero-fill."""
    t = Tree()
    t.create("f", 0, 1)
    t.truncate("f", 5000, 0, 1)
    e = t.lookup("f")
    assert e is not None and e.data == bytes(5000)


def c_digest(e: Entry, payload: bytes) -> bytes:
    """Digest A as the reference computes it, written out here independently."""
    fields = struct.pack("<QIIIBQ", e.version, e.writer, e.mtime, e.size, e.type, e.parent)
    return hashlib.sha256(fields + e.name.encode() + payload).digest()


def c_verify(t: Tree, hollow: set[int]) -> bytes:
    """The reference's verify digest: every entry by inode, the hollow ones without data."""
    h = hashlib.sha256()
    for e in sorted(t.index.values(), key=lambda x: x.inode):
        fields = (e.inode, e.version, e.writer, e.mtime, e.size, e.type, e.parent)
        h.update(struct.pack("<QQIIIBQ", *fields) + e.name_bytes)
        if e.type == 8 and e.inode not in hollow:
            h.update(e.data)
    return h.digest()


def test_file_grown_from_empty_hashes_and_writes_as_the_reference() -> None:
    """Q1 / wire §10.5: C keeps the size without a buffer: its digests hash no payload, and
    the next write starts from nothing.  We serve zeros, with C's digests and sizes."""
    t = Tree()
    t.create("f", 7, 100)
    t.truncate("f", 5000, 7, 101)
    e = t.lookup("f")
    assert e is not None and e.size == 5000 and e.data == bytes(5000)
    assert isinstance(e.data, Hollow)
    assert checksum.entry_digest(e) == c_digest(e, b"")
    # the verify digest (C) skips the payload too
    assert checksum.verify_checksum(t.index.values()) == c_verify(t, hollow={e.inode})
    # C's sizes: a write starts from nothing, a truncate keeps only the size
    t.truncate("f", 8000, 7, 102)
    assert isinstance(e.data, Hollow) and e.size == 8000
    t.truncate("f", 30, 7, 103)
    assert isinstance(e.data, Hollow) and e.size == 30
    assert t.write("f", 10, b"ab", 7, 104) == 2
    assert e.data == bytes(10) + b"ab" and not isinstance(e.data, Hollow)
    assert checksum.entry_digest(e) == c_digest(e, e.data)
    # now it holds data: the usual rules again
    t.write("f", 0, b"X", 7, 105)
    assert e.data == b"X" + bytes(9) + b"ab"
    t.truncate("f", 20, 7, 106)
    assert e.data == b"X" + bytes(9) + b"ab" + bytes(8)
    assert checksum.entry_digest(e) == c_digest(e, e.data)
    # cut to nothing, then grown again: a size only, as after a create
    t.truncate("f", 0, 7, 107)
    assert e.data == b"" and not isinstance(e.data, Hollow)
    t.truncate("f", 4, 7, 108)
    assert isinstance(e.data, Hollow) and checksum.entry_digest(e) == c_digest(e, b"")
    t.truncate("f", 0, 7, 109)
    assert e.data == b""
    # zero bytes actually written are data (the reference's own unit-test vector)
    t.write("f", 0, bytes(16), 7, 110)
    assert not isinstance(e.data, Hollow) and checksum.entry_digest(e) == c_digest(e, bytes(16))


def test_hollow_state_travels_with_rows_and_from_the_leaders_digest() -> None:
    t = Tree()
    t.create("h", 0, 1)
    t.truncate("h", 64, 0, 2)
    t.create("z", 0, 3)
    t.write("z", 0, bytes(64), 0, 4)  # data, not hollow
    # rows as the follower commit rebuilds them: the state is kept
    same = Tree.from_rows(t.rows())
    assert same.encode_index() == t.encode_index()
    # a database (or an UPDATE) carries plain zeros: the state is lost ...
    reloaded = Tree.from_rows([(*r[:7], bytes(r[7]) if r[7] else None) for r in t.rows()])
    assert reloaded.encode_index() != t.encode_index()
    # ... and taken back from the leader's index, only where it gives the leader's digest
    leader = codec.decode_index(t.encode_index())
    assert reloaded.adopt_hollow(leader.records) == 1
    assert reloaded.encode_index() == t.encode_index()
    h, z = reloaded.lookup("h"), reloaded.lookup("z")
    assert h is not None and isinstance(h.data, Hollow)
    assert z is not None and not isinstance(z.data, Hollow)
    assert reloaded.adopt_hollow(leader.records) == 0


def test_version_and_inode_rules() -> None:
    t = Tree()
    d = t.mkdir("d", 7, 100)
    assert d.inode == d.version == 2 and t.version == 2
    f = t.create("d/f", 7, 101)
    assert f.inode == 3
    t.write("d/f", 0, b"abc", 8, 102)
    assert (f.inode, f.version, f.writer, f.mtime) == (3, 4, 8, 102)
    assert (t.root.writer, t.root.mtime) == (8, 102)
    assert d.version == 2  # a dir does not change when children do
    t.rename("d/f", "g", 9, 103)
    assert (f.inode, f.parent, f.name, f.version) == (3, 0, "g", 5)
    t.delete("g", 9, 104)
    assert t.version == 6 and 3 not in t.index
    t.create("h", 9, 105)
    assert t.lookup("h").inode == 7  # type: ignore[union-attr]


def test_failed_operations_do_not_bump() -> None:
    t = Tree()
    v = t.version
    for fn, args in ((t.delete, ("x", 0, 1)), (t.mkdir, ("x/y", 0, 1))):
        with pytest.raises(TreeError):
            fn(*args)
    assert t.version == v


def test_file_size_limit() -> None:
    t = Tree()
    t.create("f", 0, 1)
    assert t.write("f", 0, bytes(1024 * 1024), 0, 1) == 1024 * 1024
    assert err(t.write, "f", 1024 * 1024, b"x", 0, 1) == errno.EFBIG
    assert err(t.truncate, "f", 1024 * 1024 + 1, 0, 1) == errno.EFBIG


def test_total_size_and_inode_limits_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    import pmxcfs.tree as tree_mod

    monkeypatch.setattr(tree_mod, "MAX_INODES", 3)
    monkeypatch.setattr(tree_mod, "MAX_FS_SIZE", 10)
    t = Tree()
    t.create("a", 0, 1)
    t.create("b", 0, 1)
    assert err(t.create, "c", 0, 1) == errno.ENOSPC
    assert err(t.mkdir, "c", 0, 1) == errno.ENOSPC
    t.write("a", 0, b"0123456789", 0, 1)
    assert err(t.write, "b", 0, b"x", 0, 1) == errno.ENOSPC
    assert t.lookup("b").size == 0  # type: ignore[union-attr]


def test_rename_checks_before_changing_anything() -> None:
    """Q2: a rejected rename of a non-empty dir must not remove the target."""
    t = Tree()
    t.mkdir("src", 0, 1)
    t.create("src/x", 0, 1)
    t.mkdir("dst", 0, 1)
    v = t.version
    assert err(t.rename, "src", "dst", 0, 1) == errno.ENOTEMPTY
    assert t.lookup("dst") is not None and t.version == v
    t.create("dst/y", 0, 1)
    t.mkdir("e", 0, 1)
    assert err(t.rename, "e", "dst", 0, 1) == errno.ENOTEMPTY


def test_rename_onto_existing_file_replaces_it() -> None:
    t = Tree()
    t.create("a", 0, 1)
    t.write("a", 0, b"A", 0, 1)
    t.create("b", 0, 1)
    b_inode = t.lookup("b").inode  # type: ignore[union-attr]
    t.rename("a", "b", 0, 2)
    assert t.lookup("a") is None and t.lookup("b").data == b"A"  # type: ignore[union-attr]
    assert b_inode not in t.index


def test_vmid_rules() -> None:
    t = Tree()
    for p in (
        "nodes",
        "nodes/n1",
        "nodes/n2",
        "nodes/n1/qemu-server",
        "nodes/n2/qemu-server",
        "nodes/n1/lxc",
    ):
        t.mkdir(p, 0, 1)
    t.create("nodes/n1/qemu-server/100.conf", 0, 1)
    assert err(t.create, "nodes/n2/qemu-server/100.conf", 0, 1) == errno.EEXIST
    assert err(t.create, "nodes/n1/lxc/100.conf", 0, 1) == errno.EEXIST
    t.create("nodes/n2/qemu-server/0100.conf", 0, 1)  # not a VM config name
    t.create("nodes/n2/qemu-server/tmp", 0, 1)
    assert err(t.rename, "nodes/n2/qemu-server/tmp", "nodes/n2/qemu-server/100.conf", 0, 1) == (
        errno.EEXIST
    )
    # migration: moving the config itself is allowed
    t.rename("nodes/n1/qemu-server/100.conf", "nodes/n2/qemu-server/100.conf", 0, 1)
    assert t.vmlist.ids[100].node == "n2"
    # retype on the same node
    t.rename("nodes/n2/qemu-server/100.conf", "nodes/n2/qemu-server/101.conf", 0, 1)
    assert 100 not in t.vmlist.ids and t.vmlist.ids[101].vmtype == "qemu"
    t.delete("nodes/n2/qemu-server/101.conf", 0, 1)
    assert 101 not in t.vmlist.ids
    t.create("nodes/n1/lxc/101.conf", 0, 1)  # reuse after delete is fine
    assert t.vmlist.ids[101].vmtype == "lxc"


def test_vmlist_versions_match_reference_example() -> None:
    t = Tree()
    for p in ("nodes", "nodes/pvetest", "nodes/pvetest/qemu-server"):
        t.mkdir(p, 0, 1)
    t.create("nodes/pvetest/qemu-server/100.conf", 0, 1)
    t.write("nodes/pvetest/qemu-server/100.conf", 0, b"x", 0, 1)
    assert (t.vmlist.version, t.vmlist.ids[100].version) == (2, 2)
    t.truncate("nodes/pvetest/qemu-server/100.conf", 0, 0, 1)
    t.write("nodes/pvetest/qemu-server/100.conf", 0, b"y", 0, 1)
    assert (t.vmlist.version, t.vmlist.ids[100].version) == (4, 4)


def test_lock_rules() -> None:
    now = [1000.0]
    t = Tree(clock=lambda: now[0])
    t.mkdir("priv", 0, 1)
    t.mkdir("priv/lock", 0, 1)
    lock = t.mkdir("priv/lock/l1", 5, 500)
    assert err(t.mkdir, "priv/lock/l1", 5, 501) == errno.EEXIST
    assert err(t.set_mtime, "priv/lock/l1", 499, 5) == errno.EACCES  # older
    assert err(t.set_mtime, "priv/lock/l1", 600, 6) == errno.EACCES  # other writer
    t.set_mtime("priv/lock/l1", 600, 5)  # refresh
    csum = checksum.lock_checksum(lock)
    assert not t.lock_expired("priv/lock/l1", csum)
    now[0] += 121
    assert t.lock_expired("priv/lock/l1", csum)
    # a changed lock restarts its timer
    t.set_mtime("priv/lock/l1", 700, 5)
    assert not t.lock_expired("priv/lock/l1", checksum.lock_checksum(lock))
    assert err(t.rename, "priv/lock/l1", "priv/lock/l2", 5, 1) == errno.EACCES
    t.mkdir("priv/lock/l1/deep", 5, 1)
    t.set_mtime("priv/lock/l1/deep", 0, 9)  # deeper dirs have no lock rules


class FailingJournal:
    def __init__(self) -> None:
        self.fail = False

    def commit(self, upserts: Sequence[Row], deletes: Sequence[int]) -> None:
        if self.fail:
            raise OSError("disk full")


def test_db_failure_is_sticky_eio_and_memory_unchanged() -> None:
    j = FailingJournal()
    t = Tree(j)
    t.create("f", 0, 1)
    j.fail = True
    assert err(t.write, "f", 0, b"x", 0, 1) == errno.EIO
    assert t.lookup("f").size == 0  # type: ignore[union-attr]
    j.fail = False
    for fn, args in ((t.mkdir, ("d", 0, 1)), (t.delete, ("f", 0, 1)), (t.create, ("g", 0, 1))):
        assert err(fn, *args) == errno.EIO
    assert t.lookup("f") is not None  # reads keep working


def rows_of(t: Tree) -> list[Row]:
    return t.rows()


def test_load_accepts_children_before_parents() -> None:
    t = Tree()
    t.mkdir("a", 0, 1)
    t.mkdir("b", 0, 1)
    t.create("a/f", 0, 1)
    t.write("a/f", 0, b"data", 0, 1)
    t.rename("a/f", "b/f", 0, 1)
    rows = sorted(rows_of(t), key=lambda r: -r[0])
    t2 = Tree.from_rows(rows)
    assert t2.encode_index() == t.encode_index()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([(2, 0, 2, 0, 0, 8, "", None)], "has no name"),
        ([(2, 0, 2, 0, 0, 5, "x", None)], "unknown type"),
        ([(2, 0, 2, 0, 0, 4, "x", b"data")], "contains data"),
        ([(0, 0, 2, 0, 0, 8, "root", None)], "unexpected name"),
        ([(2, 0, 2, 0, 0, 8, "f", b"x"), (3, 2, 3, 0, 0, 8, "g", None)], "not a directory"),
        ([(2, 0, 2, 0, 0, 8, "f", None), (3, 0, 3, 0, 0, 8, "f", None)], "duplicate name"),
        ([(3, 9, 3, 0, 0, 8, "f", None)], "missing directory"),
    ],
)
def test_load_rejects_what_the_reference_rejects(rows: list[Row], message: str) -> None:
    with pytest.raises(LoadError, match=message):
        Tree.from_rows(rows)


def test_load_rejects_parent_cycle() -> None:
    rows: list[Row] = [(2, 3, 2, 0, 0, 4, "a", None), (3, 2, 3, 0, 0, 4, "b", None)]
    with pytest.raises(LoadError):
        Tree.from_rows(rows)


def test_missing_version_row_never_reuses_inodes() -> None:
    """Q4: the reference restarts at version 1 and the next inode overwrites row 2."""
    rows: list[Row] = [(2, 0, 2, 0, 0, 8, "a", b"A"), (5, 0, 5, 0, 0, 8, "b", None)]
    t = Tree.from_rows(rows)
    assert t.version == 5
    t.create("c", 0, 1)
    assert t.lookup("c").inode == 6 and t.lookup("a").data == b"A"  # type: ignore[union-attr]


def test_duplicate_vmid_fails_load() -> None:
    t = Tree()
    for p in ("nodes", "nodes/a", "nodes/b", "nodes/a/qemu-server", "nodes/b/lxc"):
        t.mkdir(p, 0, 1)
    t.create("nodes/a/qemu-server/100.conf", 0, 1)
    t.create("nodes/b/lxc/101.conf", 0, 1)
    rows = [r if r[6] != "101.conf" else (*r[:6], "100.conf", r[7]) for r in t.rows()]
    t2 = Tree.from_rows(rows)
    with pytest.raises(DuplicateVmid):
        t2.finish_load()
