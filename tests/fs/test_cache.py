"""Kernel caching: reads are served from the page cache, and changes that do not come from a
local syscall (as cluster messages do) are invalidated so no reader sees stale data.

The filesystem runs in a thread of this process so the test can apply such changes directly.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from tests.inprocess import CountingFs, InProcess


def read(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 1 << 20)
    finally:
        os.close(fd)


def test_reads_hit_the_page_cache(inproc: InProcess) -> None:
    f = inproc.mount / "cached.cfg"
    f.write_bytes(b"content")
    assert read(f) == b"content"
    before = CountingFs.reads
    for _ in range(20):
        assert read(f) == b"content"
    assert CountingFs.reads == before  # served by the kernel, not by us


def test_remote_write_is_seen_at_once(inproc: InProcess) -> None:
    f = inproc.mount / "a.cfg"
    f.write_bytes(b"one")
    assert read(f) == b"one"
    inproc.call(inproc.tree.write, "a.cfg", 0, b"two, longer", 2, 1700000000, True)
    assert read(f) == b"two, longer"
    assert f.stat().st_size == 11 and f.stat().st_mtime == 1700000000
    inproc.call(inproc.tree.truncate, "a.cfg", 3, 2, 1700000001)
    assert read(f) == b"two"


def test_local_write_updates_other_cached_readers(inproc: InProcess) -> None:
    f = inproc.mount / "b.cfg"
    f.write_bytes(b"aaaa")
    reader = os.open(f, os.O_RDONLY)
    try:
        assert os.pread(reader, 100, 0) == b"aaaa"
        with open(f, "r+b") as w:
            w.write(b"bb")
        assert os.pread(reader, 100, 0) == b"bbaa"
    finally:
        os.close(reader)


def test_remote_create_delete_rename(inproc: InProcess) -> None:
    m = inproc.mount
    (m / "old.cfg").write_bytes(b"x")
    assert (m / "old.cfg").exists()
    assert not (m / "new.cfg").exists()
    inproc.call(inproc.tree.create, "new.cfg", 2, 1)
    assert (m / "new.cfg").exists()
    inproc.call(inproc.tree.rename, "old.cfg", "moved.cfg", 2, 1)
    with pytest.raises(FileNotFoundError):
        os.stat(m / "old.cfg")
    assert read(m / "moved.cfg") == b"x"
    inproc.call(inproc.tree.delete, "moved.cfg", 2, 1)
    with pytest.raises(FileNotFoundError):
        os.stat(m / "moved.cfg")
    assert sorted(n for n in os.listdir(m) if not n.startswith(".")) == [
        "local",
        "lxc",
        "new.cfg",
        "openvz",
        "qemu-server",
    ]


def test_remote_replace_of_open_directory_entry(inproc: InProcess) -> None:
    m = inproc.mount
    (m / "d").mkdir()
    (m / "d" / "f").write_bytes(b"1")
    (m / "g").write_bytes(b"2")
    assert read(m / "d" / "f") == b"1"
    inproc.call(inproc.tree.rename, "g", "d/f", 2, 1)
    assert read(m / "d" / "f") == b"2"


def test_quorum_flip_changes_cached_modes(inproc: InProcess) -> None:
    m = inproc.mount
    (m / "q.cfg").write_bytes(b"")
    assert stat.S_IMODE(os.lstat(m / "local").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(m / "q.cfg").st_mode) == 0o640

    def flip(q: bool) -> None:
        inproc.backend.q = q
        inproc.inval.invalidate_all(attr_only=True)

    inproc.call(flip, False)
    assert stat.S_IMODE(os.lstat(m / "local").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(m / "q.cfg").st_mode) == 0o440
    inproc.call(flip, True)
    assert stat.S_IMODE(os.stat(m / "q.cfg").st_mode) == 0o640


def test_lookups_are_cached(inproc: InProcess) -> None:
    f = inproc.mount / "l.cfg"
    f.write_bytes(b"")
    os.stat(f)
    before = CountingFs.lookups
    for _ in range(50):
        os.stat(f)
    assert CountingFs.lookups == before
    with pytest.raises(OSError) as ei:
        os.stat(inproc.mount / "missing")
    assert ei.value.errno == errno.ENOENT


def test_overlong_name_from_a_peer_does_not_break_listing(inproc: InProcess) -> None:
    """The reference allows any name length; the kernel cannot list names over 1024 bytes."""
    m = inproc.mount
    (m / "ok.cfg").write_bytes(b"")
    inproc.call(inproc.tree.create, "n" * 1100, 2, 1)
    names = os.listdir(m)
    assert "ok.cfg" in names and not any(len(n) > 1024 for n in names)


def test_entries_learned_by_readdirplus_are_invalidated(inproc: InProcess) -> None:
    d = inproc.mount / "rd"
    d.mkdir()
    (d / "x.cfg").write_bytes(b"1")
    inproc.call(inproc.tree.mkdir, "rd/sub", 2, 1700000000)
    inproc.call(inproc.tree.create, "rd/sub/y.cfg", 2, 1700000000)
    # the kernel learns sub and y.cfg only from a listing (readdirplus), never by lookup
    sizes = {e.name: e.stat().st_size for e in os.scandir(d / "sub")}
    assert sizes == {"y.cfg": 0}
    assert inproc.inval.refs.get(inproc.tree.lookup("rd/sub/y.cfg").inode + 1)  # type: ignore[union-attr]
    inproc.call(inproc.tree.write, "rd/sub/y.cfg", 0, b"grown", 2, 1700000001)
    assert (d / "sub" / "y.cfg").stat().st_size == 5
    assert read(d / "sub" / "y.cfg") == b"grown"


def test_forgotten_inodes_cost_no_invalidation(inproc: InProcess) -> None:
    f = inproc.mount / "fg.cfg"
    f.write_bytes(b"old")
    assert read(f) == b"old"
    ino = f.stat().st_ino
    assert ino in inproc.inval.refs
    # make the kernel drop its dentries and inodes: FUSE sends FORGET for each
    for _ in range(50):
        Path("/proc/sys/vm/drop_caches").write_text("2\n")
        if ino not in inproc.inval.refs:
            break
    assert ino not in inproc.inval.refs
    sent = inproc.inval.sent
    inproc.call(inproc.tree.write, "fg.cfg", 0, b"new", 2, 1700000000)
    assert inproc.inval.sent == sent  # nothing the kernel holds: nothing to tell it
    assert read(f) == b"new"  # a fresh lookup, fresh attributes and pages
    assert ino in inproc.inval.refs


def test_remote_changes_to_uncached_entries_are_free(inproc: InProcess) -> None:
    inproc.call(inproc.tree.mkdir, "cold", 2, 1700000000)
    sent = inproc.inval.sent
    for i in range(20):
        inproc.call(inproc.tree.create, f"cold/f{i}.cfg", 2, 1700000000)
        inproc.call(inproc.tree.write, f"cold/f{i}.cfg", 0, b"data", 2, 1700000000)
    assert inproc.inval.sent == sent
    assert read(inproc.mount / "cold" / "f7.cfg") == b"data"


def test_missing_names_are_cached_until_a_peer_creates_them(inproc: InProcess) -> None:
    d = inproc.mount / "neg"
    d.mkdir()
    for name, make in (("f.cfg", inproc.tree.create), ("sub", inproc.tree.mkdir)):
        with pytest.raises(FileNotFoundError):
            os.stat(d / name)
        before = CountingFs.lookups
        for _ in range(20):
            with pytest.raises(FileNotFoundError):
                os.stat(d / name)
        assert CountingFs.lookups == before  # the kernel answers from its negative entry
        inproc.call(make, f"neg/{name}", 2, 1700000000)
        os.stat(d / name)


def test_missing_name_cached_then_renamed_into_place_by_a_peer(inproc: InProcess) -> None:
    (inproc.mount / "src.cfg").write_bytes(b"moved")
    with pytest.raises(FileNotFoundError):
        os.stat(inproc.mount / "dst.cfg")
    inproc.call(inproc.tree.rename, "src.cfg", "dst.cfg", 2, 1700000000)
    assert read(inproc.mount / "dst.cfg") == b"moved"


def test_missing_name_cached_then_brought_by_a_resync(inproc: InProcess) -> None:
    from pmxcfs.tree import Tree

    with pytest.raises(FileNotFoundError):
        os.stat(inproc.mount / "synced.cfg")
    other = Tree.from_rows([r for r in inproc.tree.rows()])
    other.create("synced.cfg", 3, 1700000000)
    other.write("synced.cfg", 0, b"from the leader", 3, 1700000000)
    rows = other.rows()

    def resync() -> None:
        inproc.tree.replace_contents(Tree.from_rows(rows))

    inproc.call(resync)
    assert read(inproc.mount / "synced.cfg") == b"from the leader"


def listing(d: Path) -> dict[str, tuple[int, int]]:
    """name -> (size, mode) as a listing gives them (readdirplus fills the attribute cache)."""
    return {e.name: (e.stat().st_size, stat.S_IMODE(e.stat().st_mode)) for e in os.scandir(d)}


def test_a_listing_follows_every_change_to_its_directory(inproc: InProcess) -> None:
    d = inproc.mount / "ls"
    d.mkdir()
    (d / "a.cfg").write_bytes(b"1")
    assert listing(d) == {"a.cfg": (1, 0o640)}
    (d / "b.cfg").write_bytes(b"22")  # local create and write
    assert listing(d) == {"a.cfg": (1, 0o640), "b.cfg": (2, 0o640)}
    with open(d / "a.cfg", "r+b") as f:  # local write: the listing's size changes
        f.write(b"xyz")
    assert listing(d) == {"a.cfg": (3, 0o640), "b.cfg": (2, 0o640)}
    os.unlink(d / "b.cfg")
    assert listing(d) == {"a.cfg": (3, 0o640)}
    inproc.call(inproc.tree.create, "ls/c.cfg", 2, 1700000000)  # a peer's create
    assert listing(d) == {"a.cfg": (3, 0o640), "c.cfg": (0, 0o640)}
    # a peer's write: a stale listing would hand the kernel the old size again
    inproc.call(inproc.tree.write, "ls/c.cfg", 0, b"grown", 2, 1700000001)
    assert listing(d) == {"a.cfg": (3, 0o640), "c.cfg": (5, 0o640)}
    assert (d / "c.cfg").stat().st_size == 5
    inproc.call(inproc.tree.rename, "ls/a.cfg", "moved.cfg", 2, 1700000002)
    assert listing(d) == {"c.cfg": (5, 0o640)}
    inproc.call(inproc.tree.rename, "moved.cfg", "ls/back.cfg", 2, 1700000003)
    assert listing(d) == {"back.cfg": (3, 0o640), "c.cfg": (5, 0o640)}
    inproc.call(inproc.tree.mkdir, "ls/sub", 2, 1700000004)
    inproc.call(inproc.tree.delete, "ls/c.cfg", 2, 1700000005)
    assert listing(d) == {"back.cfg": (3, 0o640), "sub": (0, 0o755)}


def test_a_listing_follows_quorum_and_resync(inproc: InProcess) -> None:
    from pmxcfs.tree import Tree

    d = inproc.mount / "lq"
    d.mkdir()
    (d / "f.cfg").write_bytes(b"")
    assert listing(d) == {"f.cfg": (0, 0o640)}

    def flip(q: bool) -> None:
        inproc.backend.q = q
        inproc.inval.invalidate_all(attr_only=True)

    inproc.call(flip, False)
    assert listing(d) == {"f.cfg": (0, 0o440)}
    inproc.call(flip, True)
    assert listing(d) == {"f.cfg": (0, 0o640)}
    other = Tree.from_rows(inproc.tree.rows())
    other.write("lq/f.cfg", 0, b"from the leader", 3, 1700000000)
    other.create("lq/new.cfg", 3, 1700000000)
    rows = other.rows()
    inproc.call(lambda: inproc.tree.replace_contents(Tree.from_rows(rows)))
    assert listing(d) == {"f.cfg": (15, 0o640), "new.cfg": (0, 0o640)}


def test_an_open_directory_keeps_listing_what_it_saw(inproc: InProcess) -> None:
    d = inproc.mount / "snap"
    d.mkdir()
    for i in range(300):  # more than one readdirplus reply
        (d / f"f{i:03d}.cfg").write_bytes(b"")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        first = os.listdir(fd)
        inproc.call(inproc.tree.create, "snap/late.cfg", 2, 1700000000)
        assert "late.cfg" in os.listdir(d)
        assert sorted(first) == sorted(f"f{i:03d}.cfg" for i in range(300))
    finally:
        os.close(fd)


def test_xattr_requests_reach_the_daemon_once(inproc: InProcess) -> None:
    f = inproc.mount / "x.cfg"
    f.write_bytes(b"")
    calls: list[str] = []
    for op in ("getxattr", "setxattr", "listxattr", "removexattr"):
        orig = getattr(inproc.fs, op)

        async def counted(*args: object, _op: str = op, _orig: object = orig) -> object:
            calls.append(_op)
            return await _orig(*args)  # type: ignore[operator]

        setattr(inproc.fs, op, counted)
    for _ in range(3):
        for fn, args in (
            (os.getxattr, (f, "user.x")),
            (os.setxattr, (f, "user.x", b"1")),
            (os.listxattr, (f,)),
            (os.removexattr, (f, "user.x")),
        ):
            with pytest.raises(OSError) as ei:
                fn(*args)
            assert ei.value.errno == errno.EOPNOTSUPP
    # each at most once: after ENOSYS the kernel answers by itself
    assert sorted(set(calls)) == sorted(calls)


def test_an_open_after_a_peer_change_does_not_wait_for_the_invalidation(
    inproc: InProcess,
) -> None:
    """Pages cached for an older version are dropped by the next open itself: a peer's
    change is visible at once even while the invalidation thread lags behind (here it is
    switched off; the write keeps the size, so no attribute is stale either)."""
    f = inproc.mount / "lag.cfg"
    f.write_bytes(b"one")
    assert read(f) == b"one"
    assert read(f) == b"one"  # cached
    inproc.inval.active = False  # nothing reaches the kernel from the thread
    try:
        inproc.call(inproc.tree.write, "lag.cfg", 0, b"two", 2, 1700000000, False)
        assert read(f) == b"two"
        before = CountingFs.reads
        assert read(f) == b"two"
        assert CountingFs.reads == before  # and cached again from then on
    finally:
        inproc.inval.active = True
