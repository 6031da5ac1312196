"""Every FUSE operation and errno of spec §4 on a real mount of the real daemon."""

from __future__ import annotations

import errno
import mmap
import os
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import Pmxcfs


@pytest.fixture(scope="module")
def fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pmxcfs]:
    with Pmxcfs(tmp_path_factory.mktemp("fsops"), nodename="pvetest").running() as d:
        yield d


@pytest.fixture
def m(fs: Pmxcfs, request: pytest.FixtureRequest) -> Path:
    """A fresh directory per test on the shared mount."""
    p = fs.mount / request.node.name.replace("[", "_").replace("]", "")
    p.mkdir()
    return p


def oserr(fn, *args, **kw) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as ei:
        fn(*args, **kw)
    return ei.value.errno  # type: ignore[return-value]


def db_version(fs: Pmxcfs) -> int:
    con = sqlite3.connect(f"file:{fs.db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT version FROM tree WHERE inode=0").fetchone()[0]
    finally:
        con.close()


def test_create_write_read_roundtrip(m: Path) -> None:
    f = m / "a.cfg"
    f.write_bytes(b"hello\n")
    assert f.read_bytes() == b"hello\n"
    with open(f, "r+b") as fh:
        fh.seek(3)
        fh.write(b"XY")
    assert f.read_bytes() == b"helXY\n"
    with open(f, "ab") as fh:
        fh.write(b"tail")
    assert f.read_bytes() == b"helXY\ntail"
    f.write_bytes(b"new")  # O_TRUNC
    assert f.read_bytes() == b"new"


def test_o_excl_on_existing_is_eexist(m: Path) -> None:
    (m / "x").write_bytes(b"")
    assert oserr(os.open, m / "x", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST


def test_missing_paths_are_enoent(m: Path) -> None:
    assert oserr(os.stat, m / "nope") == errno.ENOENT
    assert oserr(open, m / "nope", "rb") == errno.ENOENT
    assert oserr(os.mkdir, m / "nope" / "sub") == errno.ENOENT
    assert oserr(os.unlink, m / "nope") == errno.ENOENT
    assert oserr(os.rename, m / "nope", m / "other") == errno.ENOENT


def test_enotdir_and_eisdir(m: Path) -> None:
    (m / "file").write_bytes(b"x")
    (m / "dir").mkdir()
    assert oserr(os.mkdir, m / "file" / "sub") == errno.ENOTDIR
    assert oserr(os.rmdir, m / "file") == errno.ENOTDIR
    assert oserr(os.unlink, m / "dir") == errno.EISDIR
    assert oserr(open, m / "dir", "wb") == errno.EISDIR
    assert oserr(os.rename, m / "file", m / "dir") == errno.EISDIR
    assert oserr(os.rename, m / "dir", m / "file") == errno.ENOTDIR


def test_enotempty(m: Path) -> None:
    (m / "d").mkdir()
    (m / "d" / "f").write_bytes(b"")
    (m / "e").mkdir()
    assert oserr(os.rmdir, m / "d") == errno.ENOTEMPTY
    assert oserr(os.rename, m / "d", m / "moved") == errno.ENOTEMPTY
    assert oserr(os.rename, m / "e", m / "d") == errno.ENOTEMPTY
    assert (m / "d" / "f").exists() and (m / "e").is_dir()


def test_mkdir_existing_is_eexist(m: Path) -> None:
    (m / "d").mkdir()
    assert oserr(os.mkdir, m / "d") == errno.EEXIST


def test_file_size_limit_short_write_then_efbig(m: Path, fs: Pmxcfs) -> None:
    f = m / "big"
    fd = os.open(f, os.O_CREAT | os.O_WRONLY)
    try:
        v0 = db_version(fs)
        n = os.write(fd, bytes(1024 * 1024 + 4096))
        assert n == 1024 * 1024
        assert db_version(fs) - v0 >= 8  # 128 KiB chunks (or smaller), one version each
        assert oserr(os.write, fd, b"x") == errno.EFBIG
    finally:
        os.close(fd)
    assert f.stat().st_size == 1024 * 1024
    assert oserr(os.truncate, f, 1024 * 1024 + 1) == errno.EFBIG


def test_truncate_grow_empty_file_reads_zeros(m: Path) -> None:
    f = m / "t"
    f.write_bytes(b"")
    os.truncate(f, 10000)
    assert f.read_bytes() == bytes(10000)
    os.truncate(f, 3)
    assert f.stat().st_size == 3


def test_write_into_file_grown_from_empty_sizes_it_as_the_reference(m: Path) -> None:
    """Q1: C holds only a size there, and a write starts from nothing (offset+len); the
    kernel must not keep the old size."""
    f = m / "t"
    f.write_bytes(b"")
    os.truncate(f, 100)
    assert f.stat().st_size == 100
    fd = os.open(f, os.O_WRONLY)
    try:
        assert os.pwrite(fd, b"ab", 10) == 2
    finally:
        os.close(fd)
    assert f.stat().st_size == 12
    assert f.read_bytes() == bytes(10) + b"ab"


def test_long_names(m: Path) -> None:
    (m / ("n" * 300)).write_bytes(b"ok")  # pmxcfs itself has no name limit
    assert (m / ("n" * 300)).read_bytes() == b"ok"
    assert oserr(open, m / ("n" * 1025), "wb") == errno.ENAMETOOLONG


def test_non_utf8_name_is_einval(m: Path) -> None:
    bad = os.fsencode(str(m)) + b"/\xff\xfe"
    assert oserr(os.mkdir, bad) == errno.EINVAL


def test_chmod_rules(m: Path, fs: Pmxcfs) -> None:
    f = m / "f"
    f.write_bytes(b"")
    os.chmod(f, 0o640)
    os.chmod(m, 0o640)  # Q10: accepted on directories too
    assert oserr(os.chmod, f, 0o600) == errno.EPERM
    assert oserr(os.chmod, f, 0o644) == errno.EPERM
    priv = fs.mount / "priv"
    priv.mkdir(exist_ok=True)
    (priv / "k").write_bytes(b"")
    os.chmod(priv / "k", 0o600)
    assert oserr(os.chmod, priv / "k", 0o640) == errno.EPERM
    assert stat.S_IMODE(f.stat().st_mode) == 0o640


def test_chown_rules(m: Path) -> None:
    f = m / "f"
    f.write_bytes(b"")
    os.chown(f, 0, 33)
    os.chown(f, -1, -1)
    assert oserr(os.chown, f, 1, -1) == errno.EPERM
    assert oserr(os.chown, f, -1, 0) == errno.EPERM


def test_unsupported_operations(m: Path) -> None:
    (m / "f").write_bytes(b"")
    assert oserr(os.symlink, "f", m / "link") == errno.ENOSYS
    assert oserr(os.link, m / "f", m / "hard") == errno.EPERM
    assert oserr(os.mkfifo, m / "fifo") == errno.ENOSYS
    assert oserr(os.getxattr, m / "f", "user.x") == errno.EOPNOTSUPP
    assert oserr(os.setxattr, m / "f", "user.x", b"1") == errno.EOPNOTSUPP
    assert oserr(os.listxattr, m / "f") == errno.EOPNOTSUPP


def test_mknod_regular_file_creates(m: Path) -> None:
    os.mknod(m / "plain", 0o640 | stat.S_IFREG)
    assert (m / "plain").is_file()


def test_rename_noreplace_flag_is_einval(m: Path) -> None:
    import ctypes

    (m / "a").write_bytes(b"")
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.renameat2(-100, str(m / "a").encode(), -100, str(m / "b").encode(), 1)
    assert rc == -1 and ctypes.get_errno() == errno.EINVAL
    assert (m / "a").exists()


def test_utime_rules(m: Path, fs: Pmxcfs) -> None:
    f = m / "f"
    f.write_bytes(b"")
    os.utime(f, (1700000000, 1700000001))
    assert f.stat().st_mtime == 1700000001
    v = db_version(fs)
    # only one of the times given: the reference (libfuse 2) ignores it (Q6)
    subprocess.run(["touch", "-m", "-d", "@1600000000", str(f)], check=True)
    assert f.stat().st_mtime == 1700000001 and db_version(fs) == v
    assert oserr(os.utime, fs.mount, (1, 1)) == errno.EACCES
    assert oserr(os.utime, fs.mount / ".version", (1, 1)) == errno.EACCES


def test_shared_writable_mmap_of_tree_file(m: Path) -> None:
    """We cache pages in the kernel, so private and shared read mappings work."""
    f = m / "f"
    f.write_bytes(b"abcdef")
    with open(f, "rb") as fh, mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as mm:
        assert mm[:3] == b"abc"


def test_statfs(fs: Pmxcfs) -> None:
    st = os.statvfs(fs.mount)
    assert (st.f_bsize, st.f_blocks, st.f_files, st.f_namemax) == (4096, 32768, 262144, 256)
    assert st.f_bfree <= 32768 and st.f_ffree < 262144


def test_fixed_entries_are_protected(fs: Pmxcfs) -> None:
    root = fs.mount
    assert os.readlink(root / "local") == "nodes/pvetest"
    assert os.readlink(root / "qemu-server") == "nodes/pvetest/qemu-server"
    assert os.readlink(root / "lxc") == "nodes/pvetest/lxc"
    assert os.readlink(root / "openvz") == "nodes/pvetest/openvz"
    assert oserr(os.unlink, root / "local") == errno.EACCES
    assert oserr(os.unlink, root / ".version") == errno.EACCES
    assert oserr(os.rename, root / "local", root / "x") == errno.EACCES
    assert oserr(os.mkdir, root / ".members") == errno.EEXIST
    assert oserr(os.rename, root / ".vmlist", root / "y") == errno.EACCES
    (root / "movable").write_bytes(b"")
    assert oserr(os.rename, root / "movable", root / ".rrd") == errno.EACCES


def test_readonly_generated_files_give_eio(fs: Pmxcfs) -> None:
    for name in (".version", ".members", ".vmlist", ".rrd", ".clusterlog"):
        fd = os.open(fs.mount / name, os.O_WRONLY)
        try:
            assert oserr(os.write, fd, b"x") == errno.EIO
        finally:
            os.close(fd)
        assert oserr(os.truncate, fs.mount / name, 0) == errno.EIO


def test_debug_file(fs: Pmxcfs) -> None:
    dbg = fs.mount / ".debug"
    assert dbg.read_bytes() == b"0\n"
    fd = os.open(dbg, os.O_WRONLY)
    try:
        assert os.write(fd, b"1\n") == 2
        assert dbg.read_bytes() == b"1\n"
        assert oserr(os.pwrite, fd, b"0\n", 2) == errno.EIO
        assert oserr(os.pwrite, fd, b"x\n", 0) == errno.EIO
        assert oserr(os.pwrite, fd, b"0", 0) == errno.EIO
        assert os.pwrite(fd, b"0\nmore", 0) == 2
    finally:
        os.close(fd)
    assert dbg.read_bytes() == b"0\n"
    os.truncate(dbg, 0)  # accepted, no effect
    assert dbg.read_bytes() == b"0\n"


def test_symlink_through_local_creates_under_node(fs: Pmxcfs) -> None:
    (fs.mount / "nodes" / "pvetest").mkdir(parents=True, exist_ok=True)
    (fs.mount / "local" / "viasymlink").mkdir()
    assert (fs.mount / "nodes" / "pvetest" / "viasymlink").is_dir()


def test_root_listing_has_fixed_entries_first(fs: Pmxcfs) -> None:
    names = os.listdir(fs.mount)
    fixed = [
        "local",
        "qemu-server",
        "lxc",
        "openvz",
        ".version",
        ".members",
        ".vmlist",
        ".rrd",
        ".clusterlog",
        ".debug",
    ]
    assert names[: len(fixed)] == fixed
    assert len(names) == len(set(names))


def test_unlink_of_open_file_keeps_reading_and_leaves_no_hidden_file(m: Path) -> None:
    """libfuse 2 renamed such files to .fuse_hidden* (replicated!); we keep the handle alive."""
    f = m / "open.cfg"
    f.write_bytes(b"still here")
    fd = os.open(f, os.O_RDONLY)
    try:
        os.unlink(f)
        assert os.pread(fd, 100, 0) == b"still here"
        assert os.listdir(m) == []
    finally:
        os.close(fd)


def test_write_to_unlinked_open_file_fails_cleanly(m: Path) -> None:
    f = m / "gone.cfg"
    f.write_bytes(b"x")
    fd = os.open(f, os.O_WRONLY)
    try:
        os.unlink(f)
        assert oserr(os.write, fd, b"y") == errno.ENOENT
    finally:
        os.close(fd)
    assert not f.exists()


def test_rrd_is_empty_without_data(fs: Pmxcfs) -> None:
    assert (fs.mount / ".rrd").read_bytes() == b""
    assert (fs.mount / ".rrd").stat().st_size == 0


def test_ftruncate_of_unlinked_file_never_touches_a_new_file_of_that_name(m: Path) -> None:
    f = m / "reuse.cfg"
    f.write_bytes(b"old")
    fd = os.open(f, os.O_WRONLY)
    try:
        os.unlink(f)
        f.write_bytes(b"new content")
        assert oserr(os.ftruncate, fd, 0) == errno.ENOENT
    finally:
        os.close(fd)
    assert f.read_bytes() == b"new content"
