"""pyfuse3 Operations: a thin map from FUSE requests to the tree, the fixed entries and the
backend (spec §4).

The tree is reached only through its queries (`entry`, `child`, `children_of`, `read`,
`path_of`), inode numbers convert through `inodes`, and every mode comes from `permissions`.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Sequence

import pyfuse3
import trio
from pyfuse3 import FUSEError

from .. import permissions
from ..backend import Backend
from ..constants import BLOCK_SIZE, MAX_FS_SIZE, MAX_INODES, MAX_WRITE, NAME_MAX
from ..tree import Change, Entry, Op, Tree, TreeError
from .inodes import ROOT, to_fuse, to_tree
from .invalidator import Invalidator
from .namespace import Generated, GeneratedError, Namespace, Symlink

log = logging.getLogger("pmxcfs.fs")

CACHE_TIMEOUT = 300.0  # safe because every change the kernel does not make is invalidated
FUSE_NAME_MAX = 1024  # what the reference's kernel interface allowed; pmxcfs adds no limit
_RENAME_FLAGS_UNSUPPORTED = errno.EINVAL


def _err(exc: TreeError | GeneratedError) -> FUSEError:
    return FUSEError(exc.errno)


class _FileHandle:
    __slots__ = ("content", "entry", "fixed")

    def __init__(self, entry: Entry | None, fixed: Generated | None, content: bytes) -> None:
        self.entry = entry
        self.fixed = fixed
        self.content = content


class _Listing:
    """A directory's readdirplus entries as opendir saw them, and the inode of each (for the
    kernel references a reply hands out). Never changed once built: an open handle keeps
    its snapshot, and a change to the directory makes the next opendir build a new one."""

    __slots__ = ("entries", "inos", "quorate")

    def __init__(self, entries: list[tuple[bytes, pyfuse3.EntryAttributes]], quorate: bool) -> None:
        self.entries = entries
        self.inos = [a.st_ino for _, a in entries]
        self.quorate = quorate


class Filesystem(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        backend: Backend,
        namespace: Namespace,
        gid: int,
        invalidator: Invalidator,
        quorate: Callable[[], bool],
    ) -> None:
        super().__init__()
        self.backend = backend
        self.ns = namespace
        self.gid = gid
        self.inval = invalidator
        self.quorate = quorate
        self._handles: dict[int, _FileHandle] = {}
        self._dirs: dict[int, _Listing] = {}  # open directory handles
        #: tree inode -> its listing, while nothing in the directory changed (see on_change)
        self._listings: dict[int, _Listing] = {}
        self._next_fh = 1
        #: tree inode -> the version whose pages the kernel may cache (-1: pages of several)
        self._paged: dict[int, int] = {}
        self._waiting = 0  # requests waiting for the backend (the cluster) to answer
        self._attrs: dict[int, tuple[int, bool, pyfuse3.EntryAttributes]] = {}
        self._negative = pyfuse3.EntryAttributes()
        self._negative.st_ino = 0
        self._negative.entry_timeout = CACHE_TIMEOUT

    # ------------------------------------------------------------------ attributes

    @property
    def tree(self) -> Tree:
        return self.backend.tree

    def _attr_entry(self, e: Entry) -> pyfuse3.EntryAttributes:
        """Cached per inode: an entry's attributes change only with its version or quorum
        (privacy cannot change without a version bump, as non-empty dirs never move)."""
        q = self.quorate()
        hit = self._attrs.get(e.inode)
        if hit is not None and hit[0] == e.version and hit[1] == q:
            return hit[2]
        a = self._make_attr(e, q)
        self._attrs[e.inode] = (e.version, q, a)
        return a

    def _make_attr(self, e: Entry, q: bool) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        is_dir = e.is_dir
        a.st_mode = permissions.entry_mode(self.tree.path_of(e), is_dir, q)
        if is_dir:
            a.st_nlink = 2
            a.st_size = 0
            a.st_blocks = 0
        else:
            size = e.size
            a.st_nlink = 1
            a.st_size = size
            a.st_blocks = (size + BLOCK_SIZE - 1) // BLOCK_SIZE
        a.st_ino = to_fuse(e.inode)
        a.st_uid = permissions.OWNER_UID
        a.st_gid = self.gid
        ns = e.mtime * 1_000_000_000 if e.inode else 0  # the mount point shows 1970
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = ns
        a.st_blksize = BLOCK_SIZE
        a.entry_timeout = a.attr_timeout = CACHE_TIMEOUT
        return a

    def _attr_fixed(
        self, obj: Symlink | Generated, content: bytes | None = None
    ) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = obj.inode
        a.st_uid = permissions.OWNER_UID
        a.st_gid = self.gid
        a.st_nlink = 1
        a.st_blksize = BLOCK_SIZE
        if isinstance(obj, Symlink):
            a.st_mode = permissions.symlink_mode(self.quorate())
            a.st_size = 0
            a.entry_timeout = a.attr_timeout = CACHE_TIMEOUT
        else:
            a.st_mode = stat.S_IFREG | obj.mode
            a.st_size = len(obj.safe_render() if content is None else content)
            a.entry_timeout = CACHE_TIMEOUT
            a.attr_timeout = 0
        return a

    def _entry(self, ino: int) -> Entry:
        inode = to_tree(ino)
        e = self.tree.entry(inode)
        if e is None:
            # Unlinked while open: the handles keep the last version alive (rare path).
            for h in self._handles.values():
                if h.entry is not None and h.entry.inode == inode:
                    return h.entry
            raise FUSEError(errno.ENOENT)
        return e

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        fixed = self.ns.by_inode.get(ino)
        if fixed is not None:
            return self._attr_fixed(fixed)
        return self._attr_entry(self._entry(ino))

    def _child_path(self, parent_ino: int, name: bytes) -> str:
        """The memdb path of parent/name; the root and fixed names are not tree paths."""
        return self._child(parent_ino, name)[2]

    def _child(self, parent_ino: int, name: bytes) -> tuple[Entry, str, str]:
        """The parent entry, the name as text and the memdb path of parent/name."""
        if parent_ino == ROOT and name in self.ns.by_name:
            raise FUSEError(errno.EACCES)
        if parent_ino in self.ns.by_inode:
            raise FUSEError(errno.ENOTDIR)
        parent = self.tree.entry(to_tree(parent_ino))
        if parent is None:
            raise FUSEError(errno.ENOENT)
        if len(name) > FUSE_NAME_MAX:
            raise FUSEError(errno.ENAMETOOLONG)
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            raise FUSEError(errno.EINVAL) from None
        base = self.tree.path_of(parent)
        return parent, text, f"{base}/{text}" if base else text

    def _tree_path(self, ino: int) -> str:
        if ino == ROOT or ino in self.ns.by_inode:
            raise FUSEError(errno.EACCES)
        e = self.tree.entry(to_tree(ino))
        if e is None:  # never resolve a path for an unlinked entry: the name may be reused
            raise FUSEError(errno.ENOENT)
        return self.tree.path_of(e)

    def on_change(self, change: Change) -> None:
        op = change.op
        if op is Op.RELOAD:
            self._attrs.clear()
            self._listings.clear()
            return
        listings = self._listings
        if listings:
            # the directory's names or a child's attributes (a write changes its size), and
            # the entry itself when it is a directory (its '.' and, moved, its '..')
            listings.pop(change.parent, None)
            listings.pop(change.inode, None)
            if op is Op.RENAME:
                listings.pop(change.new_parent, None)
        if op is Op.DELETE:
            self._attrs.pop(change.inode, None)
            self._paged.pop(change.inode, None)
        elif change.replaced is not None:
            self._attrs.pop(change.replaced, None)

    # ------------------------------------------------------------------ lookups

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == ROOT:
            fixed = self.ns.by_name.get(name)
            if fixed is not None:
                return self._attr_fixed(fixed)
        if len(name) > FUSE_NAME_MAX:
            raise FUSEError(errno.ENAMETOOLONG)
        tree = self.tree
        parent = tree.entry(to_tree(parent_inode))
        if parent is None:
            raise FUSEError(errno.ENOENT)
        try:
            child = tree.child(parent, name.decode("utf-8"))
        except UnicodeDecodeError:
            child = None
        if child is None:
            if not parent.is_dir:
                raise FUSEError(errno.ENOENT)
            # cached by the kernel: PVE tools probe missing files a lot, and every way a
            # name can appear without a local syscall invalidates the parent's entry
            return self._negative
        self.inval.ref(to_fuse(child.inode))
        return self._attr_entry(child)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        forget = self.inval.forget
        for ino, nlookup in inode_list:
            forget(ino, nlookup)

    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        return self._attr(inode)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        obj = self.ns.by_inode.get(inode)
        if not isinstance(obj, Symlink):
            raise FUSEError(errno.EINVAL)
        return obj.target(self.ns.nodename)

    # ------------------------------------------------------------------ directories

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode in self.ns.by_inode:
            raise FUSEError(errno.ENOTDIR)
        e = self._entry(inode)
        if not e.is_dir:
            raise FUSEError(errno.ENOTDIR)
        q = self.quorate()
        listing = self._listings.get(e.inode)
        if listing is None or listing.quorate != q:
            listing = self._build_listing(inode, e, q)
            # The root shows generated files whose sizes change without a tree change.
            if inode != ROOT and self.tree.entry(e.inode) is e:
                self._listings[e.inode] = listing
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = listing
        return fh

    def _build_listing(self, inode: int, e: Entry, q: bool) -> _Listing:
        children = self.tree.children_of(e)
        if children is None:
            raise FUSEError(errno.ENOTDIR)
        attr = self._attr_entry
        dot = attr(e)
        parent = self.tree.entry(e.parent) if e.inode else e
        entries = [(b".", dot), (b"..", attr(parent) if parent else dot)]
        add = entries.append
        if inode == ROOT:
            hidden = self.ns.by_name
            for obj in self.ns.order:
                add((obj.name.encode(), self._attr_fixed(obj)))
        else:
            hidden = {}
        for name, child in children:
            bname = name.encode("utf-8", "surrogateescape")
            # A peer may create names the kernel cannot list (it fails the whole readdir).
            if bname not in hidden and len(bname) <= FUSE_NAME_MAX:
                add((bname, attr(child)))
        return _Listing(entries, q)

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self._dirs.get(fh)
        if listing is None:
            raise FUSEError(errno.EBADF)
        reply = pyfuse3.readdir_reply
        i = start_id
        for name, attr in listing.entries[start_id:]:
            i += 1
            if not reply(token, name, attr, i):
                i -= 1
                break
        # readdirplus: every entry handed over but . and .. is a kernel reference
        first = start_id if start_id > 2 else 2
        if i > first:
            self.inval.ref_many(listing.inos[first:i])

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # ------------------------------------------------------------------ files

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        fixed = self.ns.by_inode.get(inode)
        fh = self._next_fh
        self._next_fh += 1
        if fixed is not None:
            if isinstance(fixed, Symlink):
                raise FUSEError(errno.ELOOP)
            if flags & os.O_TRUNC and fixed.write is None:
                raise FUSEError(errno.EIO)
            self._handles[fh] = _FileHandle(None, fixed, fixed.safe_render())
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        e = self._entry(inode)
        if e.is_dir:
            raise FUSEError(errno.EISDIR)
        if flags & os.O_TRUNC:
            # The kernel hands O_TRUNC to open (atomic_o_trunc); the reference saw a
            # separate truncate(0), one version bump, so do exactly that.
            await self._call(self.backend.truncate, self.tree.path_of(e), 0)
        self._handles[fh] = _FileHandle(e, None, b"")
        if flags & os.O_ACCMODE == os.O_RDONLY:
            # Readers share the kernel page cache; writers go direct so that every write
            # reaches us in the reference's 128 KiB chunks. Pages of an older version are
            # dropped by this open itself, without waiting for the invalidation thread to
            # get to them (a peer's change is visible to the next open at once).
            cached = self._paged.get(e.inode)
            if cached is None or cached == e.version:
                return pyfuse3.FileInfo(fh=fh, direct_io=False, keep_cache=True)
            del self._paged[e.inode]
            return pyfuse3.FileInfo(fh=fh, direct_io=False, keep_cache=False)
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent, text, path = self._child(parent_inode, name)
        self._waiting += 1
        try:
            await self.backend.create(path)
        except TreeError as exc:
            raise _err(exc) from None
        finally:
            self._waiting -= 1
        e = self.tree.child(parent, text)
        if e is None:
            raise FUSEError(errno.ENOENT)
        attr = self._attr_entry(e)
        self.inval.ref(to_fuse(e.inode))
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = _FileHandle(e, None, b"")
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False), attr

    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self._handles.get(fh)
        if h is None:
            raise FUSEError(errno.EBADF)
        if h.fixed is not None:
            return h.content[off : off + size]
        assert h.entry is not None
        tree = self.tree
        cur = tree.entry(h.entry.inode)
        if cur is None:
            return tree.read(h.entry, off, size)
        paged = self._paged
        was = paged.get(cur.inode)
        if was != cur.version:
            paged[cur.inode] = cur.version if was is None else -1
        return tree.read(cur, off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._handles.get(fh)
        if h is None:
            raise FUSEError(errno.EBADF)
        if h.fixed is not None:
            if h.fixed.write is None:
                raise FUSEError(errno.EIO)
            try:
                return h.fixed.write(buf, off)
            except GeneratedError as exc:
                raise _err(exc) from None
        entry = h.entry
        assert entry is not None
        if self.tree.entry(entry.inode) is None:
            raise FUSEError(errno.ENOENT)
        path = self.tree.path_of(entry)
        done = 0
        size = len(buf)
        self._waiting += 1
        try:
            # The reference sees 128 KiB chunks (aligned in the file), each its own version;
            # a chunk past 1 MiB fails and what was written before it is a short write.
            if 0 < size <= MAX_WRITE - off % MAX_WRITE:  # one chunk: the usual small write
                done = await self.backend.write(path, off, bytes(buf))
            while done < size:
                pos = off + done
                end = min(off + size, (pos // MAX_WRITE + 1) * MAX_WRITE)
                chunk = bytes(buf[done : end - off])
                done += await self.backend.write(path, pos, chunk)
            if entry.inode in self._paged:
                await self._drop_pages(entry.inode)
            return done
        except TreeError as exc:
            if done:
                return done
            raise _err(exc) from None
        finally:
            self._waiting -= 1

    async def _drop_pages(self, tree_inode: int) -> None:
        """A direct write leaves other openers' cached pages stale: drop them before replying."""
        if self._paged.pop(tree_inode, None) is not None:
            await self.inval.invalidate_now(to_fuse(tree_inode))

    async def release(self, fh: int) -> None:
        self._handles.pop(fh, None)

    # ------------------------------------------------------------------ changes

    async def _call(self, coro_fn: Callable[..., object], *args: object) -> None:
        self._waiting += 1
        try:
            await coro_fn(*args)  # type: ignore[misc]
        except TreeError as exc:
            raise _err(exc) from None
        finally:
            self._waiting -= 1

    async def settle(self, timeout: float) -> int:
        """Shutdown: wait (up to *timeout*) until no request waits for the backend; returns
        how many still do. Each must be answered before the loop stops: an unanswered one
        holds its directory lock in the kernel for good."""
        with trio.move_on_after(timeout):
            while self._waiting:
                await trio.sleep(0.01)
        return self._waiting

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child_path(parent_inode, name)
        await self._call(self.backend.mkdir, path)
        e = self.tree.lookup(path)
        if e is None:
            raise FUSEError(errno.ENOENT)
        self.inval.ref(to_fuse(e.inode))
        return self._attr_entry(e)

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if not stat.S_ISREG(mode):
            raise FUSEError(errno.ENOSYS)
        fi, attr = await self.create(parent_inode, name, mode, os.O_WRONLY, ctx)
        self._handles.pop(fi.fh, None)
        return attr

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._call(self.backend.delete, self._child_path(parent_inode, name))

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._call(self.backend.delete, self._child_path(parent_inode, name))

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags:
            raise FUSEError(_RENAME_FLAGS_UNSUPPORTED)
        src = self._child_path(parent_inode_old, name_old)
        dst = self._child_path(parent_inode_new, name_new)
        await self._call(self.backend.rename, src, dst)

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise FUSEError(errno.ENOSYS)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise FUSEError(errno.EPERM)

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        fixed = self.ns.by_inode.get(inode)
        if fields.update_mode:
            self._check_chmod(inode, attr.st_mode)
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else permissions.UNCHANGED
            gid = attr.st_gid if fields.update_gid else permissions.UNCHANGED
            if not permissions.chown_allowed(uid, gid, self.gid):
                raise FUSEError(errno.EPERM)
        if fields.update_size:
            if fixed is not None:
                if isinstance(fixed, Generated) and fixed.write is not None:
                    pass  # .debug: truncate accepted, no effect
                else:
                    raise FUSEError(errno.EIO)
            else:
                await self._call(self.backend.truncate, self._tree_path(inode), attr.st_size)
                await self._drop_pages(to_tree(inode))
        if fields.update_mtime and fields.update_atime:
            path = self._tree_path(inode)
            entry = self._entry(inode)
            try:
                await self._call(self.backend.set_mtime, path, attr.st_mtime_ns // 1_000_000_000)
            except FUSEError:
                if self.tree.entry(entry.inode) is None:
                    # An unlock request removed the lock: the kernel still has its dentry.
                    name = entry.name_bytes
                    await self.inval.invalidate_entry_now(to_fuse(entry.parent), name)
                raise
        return self._attr(inode)

    def _check_chmod(self, inode: int, mode: int) -> None:
        fixed = self.ns.by_inode.get(inode)
        if fixed is not None:
            path = fixed.name
        elif inode == ROOT:
            path = ""
        else:
            path = self.tree.path_of(self._entry(inode))
        if not permissions.chmod_allowed(path, mode):
            raise FUSEError(errno.EPERM)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        blocks = MAX_FS_SIZE // BLOCK_SIZE
        used = (self.tree.total_bytes + BLOCK_SIZE - 1) // BLOCK_SIZE
        s.f_bsize = BLOCK_SIZE
        s.f_frsize = BLOCK_SIZE
        s.f_blocks = blocks
        s.f_bfree = s.f_bavail = max(blocks - used, 0)
        s.f_files = MAX_INODES
        s.f_ffree = s.f_favail = max(MAX_INODES - self.tree.entry_count, 0)
        s.f_namemax = NAME_MAX
        return s

    # ------------------------------------------------------------------ xattrs
    # Not implemented, as in the reference. ENOSYS makes the kernel stop sending each of
    # these requests after the first, and it answers EOPNOTSUPP from then on, as before.
    # (flush keeps pyfuse3's default, ENOSYS, for the same reason: nothing to do on close.)

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise FUSEError(errno.ENOSYS)

    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        raise FUSEError(errno.ENOSYS)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        raise FUSEError(errno.ENOSYS)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise FUSEError(errno.ENOSYS)
