"""A node served from a thread of the test process, on a real FUSE mount, so a test can
change the tree by other paths than a syscall (as cluster messages do) and drive its clock.
Built by the daemon's composition root (pmxcfs.node.build_node), in local mode, without the
pve2 socket; only the filesystem class and the backend are the test's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio

from pmxcfs.backend import LocalBackend
from pmxcfs.fs.operations import Filesystem
from pmxcfs.node import NodeConfig, build_node
from tests.daemon_harness import lazy_unmount


class CountingFs(Filesystem):
    reads = 0
    lookups = 0

    async def read(self, fh: int, off: int, size: int) -> bytes:
        CountingFs.reads += 1
        return await super().read(fh, off, size)

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        CountingFs.lookups += 1
        return await super().lookup(parent_inode, name, ctx)


class SwitchableBackend(LocalBackend):
    q = True

    @property
    def quorate(self) -> bool:
        return self.q


class InProcess:
    def __init__(self, base: Path) -> None:
        self.mount = base / "mnt"
        self.mount.mkdir()
        self.now = time.time()
        (base / "db").mkdir()
        config = NodeConfig(
            nodename="node1", node_ip="127.0.0.1", gid=33, db_dir=str(base / "db"),
            run_dir=str(base / "run"), local=True, serve_ipc=False, clock=self.clock,
        )  # fmt: skip
        self.node = build_node(
            config,
            filesystem=CountingFs,
            local_backend=lambda tree: SwitchableBackend(tree, clock=self.clock),
        )
        self.tree = self.node.tree
        assert isinstance(self.node.backend, SwitchableBackend)
        self.backend = self.node.backend
        self.inval = self.node.invalidator
        self.fs = self.node.fs
        self.token: trio.lowlevel.TrioToken | None = None
        self.stop_event: trio.Event | None = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=lambda: trio.run(self._main), daemon=True)

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.stop_event = trio.Event()
        pyfuse3.init(self.fs, str(self.mount), {"default_permissions", "allow_other"})
        try:
            async with trio.open_nursery() as n:
                n.start_soon(pyfuse3.main)
                await n.start(self.node.run)
                self.started.set()
                await self.stop_event.wait()
                n.cancel_scope.cancel()
        finally:
            pyfuse3.close(unmount=True)
            self.node.close()

    def clock(self) -> float:
        return self.now

    def call(self, fn: Any, *args: Any) -> Any:
        """Apply a change on the trio thread, as a cluster delivery would, and let it settle."""
        assert self.token is not None

        async def apply() -> Any:
            result = fn(*args)
            await self.inval.drain()
            return result

        return trio.from_thread.run(apply, trio_token=self.token)


@pytest.fixture
def inproc(tmp_path: Path) -> Iterator[InProcess]:
    p = InProcess(tmp_path)
    p.thread.start()
    assert p.started.wait(10)
    time.sleep(0.1)
    try:
        yield p
    finally:
        if p.token is not None and p.stop_event is not None:
            trio.from_thread.run_sync(p.stop_event.set, trio_token=p.token)
        p.thread.join(10)
        lazy_unmount(p.mount)
