"""Random operation sequences on the real mount against a plain model of a directory tree."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.daemon_harness import Pmxcfs

NAMES = st.sampled_from(["a", "b", "c", "d.cfg", "100.conf"])
DATA = st.binary(max_size=300)


class Model:
    """Paths to bytes (files) or None (directories); the root is ''."""

    def __init__(self) -> None:
        self.items: dict[str, bytes | None] = {"": None}

    def parent(self, p: str) -> str:
        return p.rpartition("/")[0]

    def children(self, p: str) -> list[str]:
        pre = p + "/" if p else ""
        return [k for k in self.items if k and k.startswith(pre) and "/" not in k[len(pre) :]]


_daemon: Pmxcfs | None = None


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pmxcfs]:
    global _daemon
    d = Pmxcfs(tmp_path_factory.mktemp("model"))
    d.start()
    _daemon = d
    try:
        yield d
    finally:
        _daemon = None
        d.stop()


class TreeMachine(RuleBasedStateMachine):
    run = 0

    @initialize()
    def setup(self) -> None:
        assert _daemon is not None
        TreeMachine.run += 1
        self.base = _daemon.mount / f"run{TreeMachine.run}"
        self.base.mkdir()
        self.model = Model()

    def real(self, p: str) -> Path:
        return self.base / p if p else self.base

    def dirs(self) -> list[str]:
        return [k for k, v in self.model.items.items() if v is None]

    def expect(self, fn, want: int | None) -> None:  # type: ignore[no-untyped-def]
        try:
            fn()
            got = None
        except OSError as exc:
            got = exc.errno
        assert got == want

    @rule(d=st.integers(0, 50), name=NAMES, data=DATA)
    def write_file(self, d: int, name: str, data: bytes) -> None:
        parent = self.dirs()[d % len(self.dirs())]
        p = f"{parent}/{name}" if parent else name
        cur = self.model.items.get(p, b"")
        want = errno.EISDIR if cur is None else None
        self.expect(lambda: self.real(p).write_bytes(data), want)
        if want is None:
            self.model.items[p] = data

    @rule(d=st.integers(0, 50), name=NAMES)
    def mkdir(self, d: int, name: str) -> None:
        parent = self.dirs()[d % len(self.dirs())]
        p = f"{parent}/{name}" if parent else name
        want = errno.EEXIST if p in self.model.items else None
        self.expect(lambda: self.real(p).mkdir(), want)
        if want is None:
            self.model.items[p] = None

    @rule(i=st.integers(0, 100), off=st.integers(0, 400), data=st.binary(min_size=1, max_size=50))
    def pwrite(self, i: int, off: int, data: bytes) -> None:
        files = sorted(k for k, v in self.model.items.items() if v is not None)
        if not files:
            return
        p = files[i % len(files)]
        fd = os.open(self.real(p), os.O_WRONLY)
        try:
            assert os.pwrite(fd, data, off) == len(data)
        finally:
            os.close(fd)
        old = self.model.items[p] or b""
        buf = bytearray(old.ljust(off + len(data), b"\0") if len(old) < off + len(data) else old)
        buf[off : off + len(data)] = data
        self.model.items[p] = bytes(buf)

    @rule(i=st.integers(0, 100))
    def remove(self, i: int) -> None:
        paths = sorted(k for k in self.model.items if k)
        if not paths:
            return
        p = paths[i % len(paths)]
        if self.model.items[p] is None:
            want = errno.ENOTEMPTY if self.model.children(p) else None
            self.expect(lambda: os.rmdir(self.real(p)), want)
        else:
            want = None
            self.expect(lambda: os.unlink(self.real(p)), want)
        if want is None:
            del self.model.items[p]

    @rule(i=st.integers(0, 100), d=st.integers(0, 50), name=NAMES)
    def rename(self, i: int, d: int, name: str) -> None:
        paths = sorted(k for k in self.model.items if k)
        if not paths:
            return
        src = paths[i % len(paths)]
        parent = self.dirs()[d % len(self.dirs())]
        dst = f"{parent}/{name}" if parent else name
        items = self.model.items
        src_is_dir = items[src] is None
        if src == dst:
            return
        if dst.startswith(src + "/"):
            want: int | None = errno.EINVAL
        elif src.startswith(dst + "/"):
            want = errno.ENOTEMPTY  # the kernel's ancestor check comes first
        elif dst in items and items[dst] is None and not src_is_dir:
            want = errno.EISDIR
        elif dst in items and items[dst] is not None and src_is_dir:
            want = errno.ENOTDIR
        elif (dst in items and self.model.children(dst)) or (
            src_is_dir and self.model.children(src)
        ):
            want = errno.ENOTEMPTY
        else:
            want = None
        self.expect(lambda: os.rename(self.real(src), self.real(dst)), want)
        if want is None:
            items[dst] = items.pop(src)

    @invariant()
    def same_tree(self) -> None:
        if not hasattr(self, "model"):
            return
        seen: dict[str, bytes | None] = {"": None}
        for root, dirs, files in os.walk(self.base):
            rel = os.path.relpath(root, self.base)
            rel = "" if rel == "." else rel
            for dname in dirs:
                seen[f"{rel}/{dname}" if rel else dname] = None
            for fname in files:
                p = f"{rel}/{fname}" if rel else fname
                seen[p] = (Path(root) / fname).read_bytes()
        assert seen == self.model.items


TreeMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def test_random_operations_match_model(daemon: Pmxcfs) -> None:
    TreeMachine.TestCase().runTest()
