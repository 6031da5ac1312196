"""Kernel cache invalidation for changes the kernel did not see happen.

The kernel caches entries, attributes and file pages for a long time. A change applied by any
path other than the local syscall (a cluster message, a resync, a lock expiry) queues
invalidations here. They run on a worker thread because a notification can wait on a page
lock held by a request this process has not answered yet, which would deadlock the trio loop.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Callable

import pyfuse3
import trio

from ..origin import local_request
from ..tree import Change, Entry, Op, Tree

log = logging.getLogger("pmxcfs.fs")


# ("inode", fuse_ino, attr_only) or ("entry", parent_fuse_ino, name, deleted_fuse_ino)
Job = tuple[str, int, bytes | bool, int]


def fuse_ino(tree_inode: int) -> int:
    return tree_inode + 1


class Invalidator:
    def __init__(self, tree_getter: Callable[[], Tree]) -> None:
        self._tree = tree_getter
        self._send, self._recv = trio.open_memory_channel[Job](math.inf)
        self.active = False
        self.fixed_inodes: list[int] = []  # the root's symlinks and generated files
        self._pending = 0
        self._idle = trio.Event()
        self._idle.set()

    def on_change(self, change: Change) -> None:
        """Tree listener: queue what the kernel must forget."""
        if not self.active or local_request.get():
            return
        op = change.op
        if op is Op.RELOAD:
            self._reload(change.old_index or {})
            return
        ino = fuse_ino(change.inode)
        name = change.name.encode("utf-8", "surrogateescape")
        parent = fuse_ino(change.parent)
        if op in (Op.MKDIR, Op.CREATE):
            self._put(("entry", parent, name, 0))
        elif op is Op.WRITE:
            self._put(("inode", ino, False, 0))
        elif op is Op.MTIME:
            self._put(("inode", ino, True, 0))
        elif op is Op.DELETE:
            self._put(("entry", parent, name, ino))
        elif op is Op.RENAME:
            self._put(("entry", parent, name, 0))
            new_name = change.new_name.encode("utf-8", "surrogateescape")
            replaced = fuse_ino(change.replaced) if change.replaced is not None else 0
            self._put(("entry", fuse_ino(change.new_parent), new_name, replaced))
            self._put(("inode", ino, True, 0))

    def _reload(self, old_index: dict[int, Entry]) -> None:
        """After a resync: forget what moved or vanished, and every changed inode."""
        if not self.active:
            return
        index = self._tree().index
        for inode, old in old_index.items():
            new = index.get(inode)
            if inode and (new is None or new.parent != old.parent or new.name != old.name):
                name = old.name.encode("utf-8", "surrogateescape")
                self._put(("entry", fuse_ino(old.parent), name, 0))
            if new is None or new.version != old.version:
                self._put(("inode", fuse_ino(inode), False, 0))

    def invalidate_all(self, attr_only: bool = False) -> None:
        """After a quorum flip: every mode the kernel holds is wrong."""
        if not self.active:
            return
        for inode in self._tree().index:
            self._put(("inode", fuse_ino(inode), attr_only, 0))
        for ino in self.fixed_inodes:
            self._put(("inode", ino, attr_only, 0))

    def _put(self, job: Job) -> None:
        self._pending += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        self._send.send_nowait(job)

    async def invalidate_now(self, ino: int) -> None:
        """Drop an inode's pages and attributes before answering the request that changed it."""
        job: list[Job] = [("inode", ino, False, 0)]
        await trio.to_thread.run_sync(_apply_batch, job)

    async def invalidate_entry_now(self, parent_ino: int, name: bytes) -> None:
        """Forget a dentry before answering; safe while the kernel holds only the child."""
        job: list[Job] = [("entry", parent_ino, name, 0)]
        await trio.to_thread.run_sync(_apply_batch, job)

    async def drain(self) -> None:
        """Wait until every queued invalidation has reached the kernel."""
        await self._idle.wait()

    async def run(self) -> None:
        self.active = True
        try:
            while True:
                batch = [await self._recv.receive()]
                while True:
                    try:
                        batch.append(self._recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                await trio.to_thread.run_sync(_apply_batch, batch)
                self._pending -= len(batch)
                if self._pending == 0:
                    self._idle.set()
        finally:
            self.active = False


def _apply_batch(batch: list[Job]) -> None:
    for kind, ino, arg, deleted in batch:
        try:
            if kind == "inode":
                pyfuse3.invalidate_inode(ino, bool(arg))
            else:
                assert isinstance(arg, bytes)
                pyfuse3.invalidate_entry(ino, arg, deleted)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EBADF, errno.ENOTDIR):
                log.debug("cache invalidation failed: %s", exc)
