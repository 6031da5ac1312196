"""What root, www-data and other users may do, enforced by the kernel from our modes (spec §5)."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import Pmxcfs

WWW_DATA = 33
NOBODY = 65534


def _do(op: str, path: Path) -> None:
    if op == "read":
        with open(path, "rb") as f:
            f.read()
    elif op == "write":
        with open(path, "ab") as f:
            f.write(b"x")
    elif op == "create":
        with open(path, "xb"):
            pass
    elif op == "list":
        os.listdir(path)
    elif op == "stat":
        os.stat(path)
    elif op == "mkdir":
        os.mkdir(path)
    elif op == "readlink":
        os.readlink(path)


def probe(uid: int, op: str, path: Path) -> int:
    """Run one operation in a forked child that dropped to uid (and its own group only)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 255
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                _do(op, path)
                code = 0
            except OSError as exc:
                code = exc.errno or 255
            os.write(w, str(code).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return int(out)


@pytest.fixture(scope="module")
def fs() -> Iterator[Pmxcfs]:
    base = Path(tempfile.mkdtemp(prefix="pmxcfs-perm-", dir="/tmp"))
    os.chmod(base, 0o755)
    d = Pmxcfs(base, nodename="pvetest")
    try:
        d.start()
        m = d.mount
        (m / "storage.cfg").write_bytes(b"dir: local\n")
        (m / "nodes" / "pvetest" / "priv").mkdir(parents=True)
        (m / "nodes" / "pvetest" / "priv" / "key").write_bytes(b"secret")
        (m / "nodes" / "pvetest" / "qemu-server").mkdir()
        (m / "priv").mkdir()
        (m / "priv" / "shadow.cfg").write_bytes(b"secret")
        for p in (base, d.mount.parent):
            os.chmod(p, 0o755)
        yield d
    finally:
        d.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_modes_as_listed(fs: Pmxcfs) -> None:
    m = fs.mount
    want = {
        "": 0o40755,
        "storage.cfg": 0o100640,
        "priv": 0o40700,
        "priv/shadow.cfg": 0o100600,
        "nodes/pvetest/priv": 0o40700,
        "nodes/pvetest/priv/key": 0o100600,
        "nodes/pvetest/qemu-server": 0o40755,
        ".version": 0o100440,
        ".debug": 0o100640,
    }
    for rel, mode in want.items():
        st = os.lstat(m / rel)
        assert (st.st_mode, st.st_uid, st.st_gid) == (mode, 0, WWW_DATA), rel
    assert os.lstat(m / "local").st_mode == 0o120755


def test_www_data(fs: Pmxcfs) -> None:
    m = fs.mount
    assert probe(WWW_DATA, "list", m) == 0
    assert probe(WWW_DATA, "read", m / "storage.cfg") == 0
    for name in (".version", ".members", ".vmlist", ".rrd", ".clusterlog", ".debug"):
        assert probe(WWW_DATA, "read", m / name) == 0, name
    assert probe(WWW_DATA, "readlink", m / "local") == 0
    assert probe(WWW_DATA, "list", m / "nodes" / "pvetest") == 0
    assert probe(WWW_DATA, "list", m / "priv") == errno.EACCES
    assert probe(WWW_DATA, "read", m / "priv" / "shadow.cfg") == errno.EACCES
    assert probe(WWW_DATA, "list", m / "nodes" / "pvetest" / "priv") == errno.EACCES
    assert probe(WWW_DATA, "write", m / "storage.cfg") == errno.EACCES
    assert probe(WWW_DATA, "create", m / "new.cfg") == errno.EACCES
    assert probe(WWW_DATA, "mkdir", m / "newdir") == errno.EACCES
    assert probe(WWW_DATA, "write", m / ".debug") == errno.EACCES
    assert not (m / "new.cfg").exists()


def test_other_users(fs: Pmxcfs) -> None:
    m = fs.mount
    assert probe(NOBODY, "list", m) == 0
    assert probe(NOBODY, "stat", m / "storage.cfg") == 0
    assert probe(NOBODY, "list", m / "nodes") == 0
    assert probe(NOBODY, "read", m / "storage.cfg") == errno.EACCES
    for name in (".version", ".members", ".vmlist", ".clusterlog", ".debug"):
        assert probe(NOBODY, "read", m / name) == errno.EACCES, name
    assert probe(NOBODY, "list", m / "priv") == errno.EACCES
    assert probe(NOBODY, "create", m / "x") == errno.EACCES


def test_root_can_read_readonly_generated(fs: Pmxcfs) -> None:
    assert (fs.mount / ".vmlist").read_bytes().startswith(b"{\n")
