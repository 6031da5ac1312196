"""The write path behind the filesystem: where a tree change goes and who applies it.

The FUSE layer calls a Backend and gets a result or a TreeError. LocalBackend applies at once
(local mode, writer 0, the daemon's clock), each change marked as answering a waiting syscall.
The cluster backend (pmxcfs.dcdb) sends an ordered message and waits for its own delivery;
both share this interface so the filesystem does not know which mode it runs in.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from typing import Protocol

from .checksum import lock_checksum
from .tree import Tree, TreeError


class Backend(Protocol):
    tree: Tree

    @property
    def quorate(self) -> bool: ...

    async def mkdir(self, path: str) -> None: ...

    async def create(self, path: str) -> None: ...

    async def write(self, path: str, offset: int, data: bytes) -> int: ...

    async def truncate(self, path: str, size: int) -> None: ...

    async def delete(self, path: str) -> None: ...

    async def rename(self, src: str, dst: str) -> None: ...

    async def set_mtime(self, path: str, mtime: int) -> None:
        """utimens; mtime 0 on a lock directory is an unlock request (spec §7)."""


class LocalBackend:
    """Local mode: always quorate, changes applied directly with writer 0."""

    writer = 0

    def __init__(self, tree: Tree, clock: Callable[[], float] = time.time) -> None:
        self.tree = tree
        self.clock = clock

    @property
    def quorate(self) -> bool:
        return True

    def _now(self) -> int:
        return int(self.clock())

    async def mkdir(self, path: str) -> None:
        self.tree.mkdir(path, self.writer, self._now(), local=True)

    async def create(self, path: str) -> None:
        self.tree.create(path, self.writer, self._now(), local=True)

    async def write(self, path: str, offset: int, data: bytes) -> int:
        return self.tree.write(path, offset, data, self.writer, self._now(), local=True)

    async def truncate(self, path: str, size: int) -> None:
        self.tree.truncate(path, size, self.writer, self._now(), local=True)

    async def delete(self, path: str) -> None:
        self.tree.delete(path, self.writer, self._now(), local=True)

    async def rename(self, src: str, dst: str) -> None:
        self.tree.rename(src, dst, self.writer, self._now(), local=True)

    async def set_mtime(self, path: str, mtime: int) -> None:
        tree = self.tree
        if mtime == 0:
            lock = tree.lock_entry(path)
            if lock is not None and tree.lock_expired(path, lock_checksum(lock)):
                tree.delete(path, self.writer, self._now(), local=True)
                # The entry is gone: libfuse's re-stat after setattr reports ENOENT.
                raise TreeError(errno.ENOENT, "lock expired and removed")
        tree.set_mtime(path, mtime, self.writer, local=True)


class NoQuorumBackend(LocalBackend):
    """Cluster mode without a cluster connection: read-only, every change gets EACCES."""

    @property
    def quorate(self) -> bool:
        return False

    async def _deny(self, *args: object) -> None:
        raise TreeError(errno.EACCES, "not quorate")

    mkdir = create = delete = rename = truncate = set_mtime = _deny  # type: ignore[assignment]

    async def write(self, path: str, offset: int, data: bytes) -> int:
        raise TreeError(errno.EACCES, "not quorate")
