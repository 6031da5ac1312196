"""Kernel cache invalidation for changes the kernel did not see happen.

The kernel caches entries, attributes and file pages for a long time. A change applied by any
path other than the local syscall (a cluster message, a resync, a lock expiry) queues
invalidations here. They run on one long-lived worker thread because a notification can wait
on a page lock held by a request this process has not answered yet, which would deadlock the
trio loop; the loop only enqueues and never waits for the thread.

Only inodes the kernel holds can be stale: the filesystem reports every reply that hands an
inode to the kernel (`ref`) and every FORGET (`forget`), and changes to anything else cost
nothing. Counting more references than the kernel holds is harmless (an invalidation the
kernel ignores), so replies that may not have arrived are counted anyway.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import pyfuse3
import trio

from ..tree import Change, Entry, Op, Tree
from .inodes import ROOT, to_fuse

log = logging.getLogger("pmxcfs.fs")


# ("inode", fuse_ino, attr_only) or ("entry", parent_fuse_ino, name, deleted_fuse_ino)
Job = tuple[str, int, bytes | bool, int]


class Invalidator:
    def __init__(
        self, tree_getter: Callable[[], Tree], fixed_inodes: Sequence[int] = ()
    ) -> None:
        self._tree = tree_getter
        self.active = False
        self.fixed_inodes = tuple(fixed_inodes)  # the root's symlinks and generated files
        #: fuse inode -> lookups the kernel may still hold (root: always held)
        self.refs: Counter[int] = Counter({ROOT: 1})
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending = 0
        self._idle_waiters: list[trio.Event] = []
        self._token: trio.lowlevel.TrioToken | None = None
        self.sent = 0  # jobs handed to the kernel (for tests and benchmarks)

    # ------------------------------------------------------------------ kernel references

    def ref(self, ino: int) -> None:
        """A reply handed `ino` to the kernel (lookup, create, mkdir, readdirplus)."""
        refs = self.refs
        refs[ino] = refs.get(ino, 0) + 1

    def ref_many(self, inos: Iterable[int]) -> None:
        """One reference each (a readdirplus reply): counted in C, not per entry in Python."""
        self.refs.update(inos)

    def forget(self, ino: int, nlookup: int) -> None:
        if ino == ROOT:
            return
        n = self.refs.get(ino, 0) - nlookup
        if n > 0:
            self.refs[ino] = n
        else:
            self.refs.pop(ino, None)

    # ------------------------------------------------------------------ queueing

    def on_change(self, change: Change) -> None:
        """Tree listener: queue what the kernel must forget."""
        if not self.active or change.local:
            return
        op = change.op
        if op is Op.RELOAD:
            self._reload(change.old_index or {})
            return
        refs = self.refs
        parent = to_fuse(change.parent)
        if op is Op.WRITE or op is Op.MTIME:
            ino = to_fuse(change.inode)
            if ino in refs:
                self._put(("inode", ino, op is Op.MTIME, 0))
        elif op is Op.MKDIR or op is Op.CREATE:
            if parent in refs:
                self._put(("entry", parent, change.name.encode("utf-8", "surrogateescape"), 0))
        elif op is Op.DELETE:
            if parent in refs:
                ino = to_fuse(change.inode)
                name = change.name.encode("utf-8", "surrogateescape")
                self._put(("entry", parent, name, ino if ino in refs else 0))
        elif op is Op.RENAME:
            if parent in refs:
                self._put(("entry", parent, change.name.encode("utf-8", "surrogateescape"), 0))
            new_parent = to_fuse(change.new_parent)
            if new_parent in refs:
                new_name = change.new_name.encode("utf-8", "surrogateescape")
                replaced = to_fuse(change.replaced) if change.replaced is not None else 0
                self._put(("entry", new_parent, new_name, replaced if replaced in refs else 0))
            ino = to_fuse(change.inode)
            if ino in refs:
                self._put(("inode", ino, True, 0))

    def _reload(self, old_index: dict[int, Entry]) -> None:
        """After a resync: forget what moved or vanished, every changed inode, and the
        (negative) entries of names that appeared."""
        tree = self._tree()
        entry = tree.entry
        refs = self.refs
        for inode, old in old_index.items():
            new = entry(inode)
            if inode and to_fuse(old.parent) in refs and (
                new is None or new.parent != old.parent or new.name != old.name
            ):
                self._put(("entry", to_fuse(old.parent), old.name_bytes, 0))
            if to_fuse(inode) in refs and (new is None or new.version != old.version):
                self._put(("inode", to_fuse(inode), False, 0))
        for inode, cur in tree.entries():
            prev = old_index.get(inode)
            if inode and to_fuse(cur.parent) in refs and (
                prev is None or prev.parent != cur.parent or prev.name != cur.name
            ):
                self._put(("entry", to_fuse(cur.parent), cur.name_bytes, 0))

    def invalidate_all(self, attr_only: bool = False) -> None:
        """After a quorum flip: every mode the kernel holds is wrong."""
        if not self.active:
            return
        for ino in list(self.refs):
            self._put(("inode", ino, attr_only, 0))
        for ino in self.fixed_inodes:
            self._put(("inode", ino, attr_only, 0))

    def _put(self, job: Job) -> None:
        with self._lock:
            self._pending += 1
        self._queue.put(job)

    # ------------------------------------------------------------------ synchronous

    async def invalidate_now(self, ino: int) -> None:
        """Drop an inode's pages and attributes before answering the request that changed it."""
        await trio.to_thread.run_sync(_apply, ("inode", ino, False, 0))

    async def invalidate_entry_now(self, parent_ino: int, name: bytes) -> None:
        """Forget a dentry before answering; safe while the kernel holds only the child."""
        await trio.to_thread.run_sync(_apply, ("entry", parent_ino, name, 0))

    async def drain(self) -> None:
        """Wait until every queued invalidation has reached the kernel."""
        with self._lock:
            if self._pending == 0:
                return
            ev = trio.Event()
            self._idle_waiters.append(ev)
        await ev.wait()

    # ------------------------------------------------------------------ worker

    def _worker(self) -> None:
        q = self._queue
        while True:
            job = q.get()
            if job is None:
                return
            if self.active:  # shutting down: a blocked notify could never return
                _apply(job)
            with self._lock:
                self.sent += 1
                self._pending -= 1
                if self._pending or not self._idle_waiters:
                    continue
                waiters, self._idle_waiters = self._idle_waiters, []
            token = self._token
            if token is not None:
                try:
                    token.run_sync_soon(_wake, waiters)
                except trio.RunFinishedError:
                    return

    async def run(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._worker, name="pmxcfs-inval", daemon=True)
        self._thread.start()
        self.active = True
        try:
            await trio.sleep_forever()
        finally:
            self.active = False
            self._queue.put(None)  # the thread ends after what is queued; never joined here


def _wake(events: list[trio.Event]) -> None:
    for ev in events:
        ev.set()


def _apply(job: Job) -> None:
    kind, ino, arg, deleted = job
    try:
        if kind == "inode":
            pyfuse3.invalidate_inode(ino, bool(arg))
        else:
            assert isinstance(arg, bytes)
            pyfuse3.invalidate_entry(ino, arg, deleted)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EBADF, errno.ENOTDIR):
            log.debug("cache invalidation failed: %s", exc)
