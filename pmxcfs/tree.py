"""The in-memory tree (memdb): entries, the version/inode rules and every tree operation.

It knows nothing of FUSE or corosync. Every operation validates completely first, then hands
the rows it will change to the journal (SQLite) in one transaction, and only then changes
memory, so the tree and the database never disagree (spec §2.5, quirk Q3). Observers are told
about each applied change (status counters, kernel cache invalidation, corosync.conf sync).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from . import checksum, paths
from .checksum import Hollow
from .constants import (
    DT_DIR,
    DT_REG,
    LOCK_DIR,
    MAX_FILE_SIZE,
    MAX_FS_SIZE,
    MAX_INODES,
    VERSION_ROW_NAME,
)
from .locks import LockTable
from .vmlist import VmList, VmListError

U32 = 0xFFFFFFFF

# (inode, parent, version, writer, mtime, type, name, data)
Row = tuple[int, int, int, int, int, int, str, bytes | None]


class TreeError(Exception):
    """An operation failed with an errno the caller hands back unchanged."""

    def __init__(self, err: int, msg: str = "") -> None:
        super().__init__(err, msg or errno.errorcode.get(err, str(err)))
        self.errno = err


class LoadError(Exception):
    """The database content violates a rule the reference checks at load."""


class Journal(Protocol):
    def commit(self, upserts: Sequence[Row], deletes: Sequence[int]) -> None:
        """Persist atomically; raise on failure."""


class Op(Enum):
    MKDIR = "mkdir"
    CREATE = "create"
    WRITE = "write"
    MTIME = "mtime"
    DELETE = "delete"
    RENAME = "rename"
    RELOAD = "reload"


@dataclass(slots=True, frozen=True)
class Change:
    """What an applied operation did, in inode terms for caches and path terms for counters."""

    op: Op
    path: str = ""
    inode: int = 0
    parent: int = 0
    name: str = ""
    to_path: str = ""
    new_parent: int = 0
    new_name: str = ""
    replaced: int | None = None
    old_index: dict[int, Entry] | None = None  # RELOAD: what the tree was before
    #: made for a syscall that is waiting for its result (the filesystem's own request,
    #: or our own cluster message answering it): the kernel learns the result from the
    #: reply, so its caches need no invalidation
    local: bool = False


class Entry:
    __slots__ = (
        "children",
        "data",
        "inode",
        "mtime",
        "name",
        "parent",
        "type",
        "version",
        "writer",
    )

    def __init__(
        self,
        inode: int,
        parent: int,
        version: int,
        writer: int,
        mtime: int,
        type_: int,
        name: str,
        data: bytes = b"",
    ) -> None:
        self.inode = inode
        self.parent = parent
        self.version = version
        self.writer = writer
        self.mtime = mtime
        self.type = type_
        self.name = name
        self.data = data
        self.children: dict[str, Entry] | None = {} if type_ == DT_DIR else None

    @property
    def is_dir(self) -> bool:
        return self.type == DT_DIR

    @property
    def size(self) -> int:
        return len(self.data) if self.type == DT_REG else 0

    @property
    def name_bytes(self) -> bytes:
        return self.name.encode("utf-8", "surrogateescape")

    def row(self) -> Row:
        if self.inode == 0:
            return (0, 0, self.version, self.writer, self.mtime, DT_REG, VERSION_ROW_NAME, None)
        return (
            self.inode,
            self.parent,
            self.version,
            self.writer,
            self.mtime,
            self.type,
            self.name,
            self.data if self.type == DT_REG and self.data else None,
        )

    def __repr__(self) -> str:
        return (
            f"Entry(inode={self.inode}, parent={self.parent}, v={self.version}, "
            f"w={self.writer}, mtime={self.mtime}, type={self.type}, name={self.name!r}, "
            f"size={self.size})"
        )


class NullJournal:
    """For trees that live only in memory (tests, scratch trees during resync)."""

    def commit(self, upserts: Sequence[Row], deletes: Sequence[int]) -> None:
        return None


Listener = Callable[[Change], None]


class Tree:
    """The memdb. Writer/mtime come from the caller: local mode or the cluster message."""

    def __init__(
        self,
        journal: Journal | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Entry(0, 0, 1, 0, 0, DT_DIR, "")
        self.index: dict[int, Entry] = {0: self.root}
        self.journal: Journal = journal or NullJournal()
        self.clock = clock
        self.error = False
        self.vmlist = VmList()
        self.locks = LockTable()
        self.total_bytes = 0
        self.last_inode = 0
        self.listeners: list[Listener] = []

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[Row],
        journal: Journal | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Tree:
        """Build and validate a tree from DB rows in any order (spec §2.4)."""
        tree = cls(journal, clock)
        tree._load(rows)
        return tree

    def _load(self, rows: Iterable[Row]) -> None:
        index = self.index
        root = self.root
        root.version = 0
        placeholders: set[int] = set()
        for inode, parent, version, writer, mtime, type_, name, data in rows:
            type_ &= 0xFF
            writer &= U32
            mtime &= U32
            if isinstance(data, str):
                data = data.encode("utf-8", "surrogateescape")
            if not name:
                raise LoadError(f"inode has no name (inode = {inode:016X})")
            if type_ not in (DT_DIR, DT_REG):
                raise LoadError(f"inode has unknown type (inode = {inode:016X}, type = {type_})")
            if type_ == DT_DIR and data:
                raise LoadError(f"directory inode contains data (inode = {inode:016X})")
            if inode == 0:
                if name != VERSION_ROW_NAME:
                    raise LoadError(f"root inode has unexpected name '{name}'")
                root.version, root.writer, root.mtime = version, writer, mtime
                continue
            if inode < 0 or parent < 0 or version < 0:
                raise LoadError(f"negative number in row (inode = {inode})")
            if "/" in name or name in (".", ".."):
                raise LoadError(f"inode has invalid name '{name}' (inode = {inode:016X})")
            par = index.get(parent)
            if par is None:
                par = Entry(parent, 0, 0, 0, 0, DT_DIR, "")
                par.type = 0
                index[parent] = par
                placeholders.add(parent)
            elif par.children is None:
                raise LoadError(f"parent is not a directory (inode = {inode:016X})")
            existing = index.get(inode)
            if existing is not None:
                if inode not in placeholders or type_ != DT_DIR:
                    raise LoadError(f"found strange placeholder or duplicate inode {inode:016X}")
                placeholders.discard(inode)
                entry = existing
                entry.parent, entry.version, entry.writer = parent, version, writer
                entry.mtime, entry.type, entry.name = mtime, type_, name
            else:
                entry = Entry(inode, parent, version, writer, mtime, type_, name)
                if type_ == DT_REG and data:
                    entry.data = data if isinstance(data, Hollow) else bytes(data)
                index[inode] = entry
            assert par.children is not None
            other = par.children.get(name)
            if other is not None:
                raise LoadError(
                    f"found entry with duplicate name '{name}' - "
                    f"A:(inode = {other.inode:016X}) vs. B:(inode = {inode:016X})"
                )
            par.children[name] = entry
        if placeholders:
            raise LoadError(f"missing directory inode (inode = {min(placeholders):016X})")
        self._check_reachable()
        self.last_inode = max(index)
        self.total_bytes = sum(e.size for e in index.values())
        max_version = max(e.version for e in index.values())
        floor = max(self.last_inode, max_version, 1)
        if root.version < floor:
            # Q4: a missing or stale version row must never let a new inode replace an old one.
            root.version = floor

    def _check_reachable(self) -> None:
        seen = 0
        stack = [self.root]
        while stack:
            e = stack.pop()
            seen += 1
            if e.children:
                stack.extend(e.children.values())
        if seen != len(self.index):
            bad = [i for i, e in self.index.items() if i and not self._reaches_root(e)]
            raise LoadError(f"entry not reachable from root (parent cycle, inode = {bad[0]:016X})")

    def _reaches_root(self, e: Entry) -> bool:
        hops = 0
        while e.inode != 0:
            nxt = self.index.get(e.parent)
            hops += 1
            if nxt is None or hops > len(self.index):
                return False
            e = nxt
        return True

    def finish_load(self, now: float | None = None) -> None:
        """Derived state after a (re)load: VM list (may raise VmListError) and lock table."""
        self.rebuild_vmlist()
        self.rebuild_locks(now)

    def rebuild_vmlist(self) -> None:
        nodes = self.root.children.get("nodes") if self.root.children else None
        configs: list[paths.VmConfig] = []
        if nodes is not None and nodes.children is not None:
            for node in nodes.children.values():
                if node.children is None or not paths.is_ldh(node.name):
                    continue
                for kind, vmtype in paths.VM_KINDS.items():
                    sub = node.children.get(kind)
                    if sub is None:
                        continue
                    if sub.children is None:
                        raise VmListError(f"nodes/{node.name}/{kind} is not a directory")
                    for f in sub.children.values():
                        if f.type != DT_REG:
                            continue
                        cfg = paths.parse_vm_config(f"nodes/{node.name}/{kind}/{f.name}")
                        if cfg is not None:
                            configs.append(paths.VmConfig(node.name, vmtype, cfg.vmid))
        self.vmlist.rebuild(configs, bump=nodes is not None)

    def rebuild_locks(self, now: float | None = None) -> None:
        t = self.clock() if now is None else now
        found: dict[str, bytes] = {}
        lockdir = self.lookup(LOCK_DIR)
        if lockdir is not None and lockdir.children is not None:
            for child in lockdir.children.values():
                if child.is_dir:
                    found[f"{LOCK_DIR}/{child.name}"] = checksum.lock_checksum(child)
        self.locks.reset(found, t)

    # ------------------------------------------------------------------ queries

    @property
    def version(self) -> int:
        return self.root.version

    def lookup(self, path: str) -> Entry | None:
        e = self.root
        if path == ".":
            return e
        for comp in path.split("/"):
            if not comp:
                continue
            ch = e.children
            if ch is None:
                return None
            nxt = ch.get(comp)
            if nxt is None:
                return None
            e = nxt
        return e

    def path_of(self, e: Entry) -> str:
        parts: list[str] = []
        index = self.index
        while e.inode != 0:
            parts.append(e.name)
            e = index[e.parent]
        return "/".join(reversed(parts))

    def walk(self) -> Iterator[tuple[str, Entry]]:
        """Every entry below the root with its path, parents before children."""
        stack: list[tuple[str, Entry]] = [("", self.root)]
        while stack:
            prefix, e = stack.pop()
            if e.children is None:
                continue
            for name, child in sorted(e.children.items(), reverse=True):
                p = f"{prefix}{name}"
                yield p, child
                if child.children is not None:
                    stack.append((p + "/", child))

    def encode_index(self) -> bytes:
        r = self.root
        return checksum.encode_index(r.version, r.writer, r.mtime, self.index.values())

    def rows(self) -> list[Row]:
        return [e.row() for e in self.index.values()]

    # ------------------------------------------------------------------ queries by inode
    # The filesystem's narrow view: it holds entries and inode numbers, never the tree's
    # containers. Each is one attribute or dict access, so the FUSE hot paths stay lean.

    def entry(self, inode: int) -> Entry | None:
        """The live entry with this inode; None once it is deleted (inodes are never reused)."""
        return self.index.get(inode)

    def child(self, parent: Entry, name: str) -> Entry | None:
        """`parent`'s entry called `name`; None if it has none or `parent` is a file."""
        children = parent.children
        return None if children is None else children.get(name)

    def children_of(self, e: Entry) -> Iterable[tuple[str, Entry]] | None:
        """A directory's (name, entry) pairs, a live view in the tree's order; None for a file."""
        children = e.children
        return None if children is None else children.items()

    def read(self, e: Entry, offset: int, size: int) -> bytes:
        """Up to `size` bytes of a file's content from `offset`; b"" at or past its end."""
        return e.data[offset : offset + size]

    def entries(self) -> Iterable[tuple[int, Entry]]:
        """Every live entry by inode, the root (0) included: a live view, not a copy."""
        return self.index.items()

    @property
    def entry_count(self) -> int:
        """Live entries, the root included (what the inode limit counts)."""
        return len(self.index)

    # ------------------------------------------------------------------ helpers

    def _notify(self, change: Change) -> None:
        for fn in self.listeners:
            fn(change)

    def _check_error(self) -> None:
        if self.error:
            raise TreeError(errno.EIO, "database in error state")

    def _parent_of(self, path: str) -> tuple[Entry, str]:
        """Common checks: parent resolves (ENOENT) to a dir (ENOTDIR), basename valid (EACCES)."""
        dirname, base = paths.split_parent(path)
        parent = self.lookup(dirname)
        if parent is None:
            raise TreeError(errno.ENOENT)
        if parent.children is None:
            raise TreeError(errno.ENOTDIR)
        if paths.bad_basename(base):
            raise TreeError(errno.EACCES)
        return parent, base

    def _commit(self, rows: list[Row], deletes: Sequence[int], writer: int, mtime: int) -> int:
        """Persist the changed rows plus the bumped version row; sticky EIO on failure."""
        r = self.root
        v = r.version + 1
        rows.append((0, 0, v, writer, mtime, DT_REG, VERSION_ROW_NAME, None))
        try:
            self.journal.commit(rows, deletes)
        except Exception as exc:
            self.error = True
            raise TreeError(errno.EIO, f"database write failed: {exc}") from exc
        r.version, r.writer, r.mtime = v, writer, mtime
        return v

    def _check_space(self, new_entries: int = 0, grow: int = 0) -> None:
        if new_entries and len(self.index) + new_entries > MAX_INODES:
            raise TreeError(errno.ENOSPC, "inode limit reached")
        if grow > 0 and self.total_bytes + grow > MAX_FS_SIZE:
            raise TreeError(errno.ENOSPC, "filesystem size limit reached")

    def _add(self, parent: Entry, entry: Entry) -> None:
        assert parent.children is not None
        parent.children[entry.name] = entry
        self.index[entry.inode] = entry
        if entry.inode > self.last_inode:
            self.last_inode = entry.inode

    def _detach(self, e: Entry) -> None:
        parent = self.index[e.parent]
        assert parent.children is not None
        del parent.children[e.name]
        del self.index[e.inode]
        self.total_bytes -= e.size

    # ------------------------------------------------------------------ operations

    def mkdir(self, path: str, writer: int, mtime: int, *, local: bool = False) -> Entry:
        self._check_error()
        parent, base = self._parent_of(path)
        assert parent.children is not None
        if base in parent.children:
            raise TreeError(errno.EEXIST)
        self._check_space(new_entries=1)
        writer &= U32
        mtime &= U32
        v = self.root.version + 1
        entry = Entry(v, parent.inode, v, writer, mtime, DT_DIR, base)
        self._commit([entry.row()], (), writer, mtime)
        self._add(parent, entry)
        full = paths.normalize(path)
        if paths.is_lock_child(full):
            self.locks.touch(full, checksum.lock_checksum(entry), self.clock())
        self._notify(Change(Op.MKDIR, full, entry.inode, parent.inode, base, local=local))
        return entry

    def create(self, path: str, writer: int, mtime: int, *, local: bool = False) -> Entry:
        self._write(path, 0, b"", writer, mtime, truncate=False, create=True, local=local)
        e = self.lookup(path)
        assert e is not None
        return e

    def write(
        self,
        path: str,
        offset: int,
        data: bytes,
        writer: int,
        mtime: int,
        truncate: bool = False,
        *,
        local: bool = False,
    ) -> int:
        return self._write(path, offset, data, writer, mtime, truncate, False, local)

    def truncate(
        self, path: str, size: int, writer: int, mtime: int, *, local: bool = False
    ) -> None:
        self._write(path, size, b"", writer, mtime, truncate=True, create=False, local=local)

    def _write(
        self,
        path: str,
        offset: int,
        data: bytes,
        writer: int,
        mtime: int,
        truncate: bool,
        create: bool,
        local: bool = False,
    ) -> int:
        self._check_error()
        n = offset + len(data)
        if offset < 0 or n > MAX_FILE_SIZE:
            raise TreeError(errno.EFBIG)
        parent, base = self._parent_of(path)
        assert parent.children is not None
        full = paths.normalize(path)
        cfg = paths.parse_vm_config(full)
        if cfg is not None and self.vmlist.conflicts(cfg):
            raise TreeError(errno.EEXIST, f"VMID {cfg.vmid} already exists on another node")
        existing = parent.children.get(base)
        if existing is not None:
            if existing.type != DT_REG:
                raise TreeError(errno.ENOTDIR)
            if create:
                raise TreeError(errno.EEXIST)
        elif not create:
            raise TreeError(errno.ENOENT)
        writer &= U32
        mtime &= U32
        v = self.root.version + 1
        if create:
            self._check_space(new_entries=1)
            entry = Entry(v, parent.inode, v, writer, mtime, DT_REG, base)
            self._commit([entry.row()], (), writer, mtime)
            self._add(parent, entry)
            result = 0
            change = Change(Op.CREATE, full, entry.inode, parent.inode, base, local=local)
        else:
            assert existing is not None
            old = existing.data
            size = len(old)
            if not old or isinstance(old, Hollow):
                # the reference holds no buffer here (Q1): the size becomes offset+len
                # whatever it was; without data that is a size only (served as zeros)
                new = bytes(offset) + data if data else Hollow(offset) if offset else b""
            elif n > size:
                buf = bytearray(old)
                buf.extend(bytes(n - size))
                buf[offset:n] = data
                new = bytes(buf)
            elif truncate:
                new = old[:offset] + data if data else old[:n]
            elif data:
                new = b"".join((old[:offset], data, old[n:]))
            else:
                new = old
            self._check_space(grow=len(new) - size)
            row: Row = (
                existing.inode,
                existing.parent,
                v,
                writer,
                mtime,
                DT_REG,
                existing.name,
                new or None,
            )
            self._commit([row], (), writer, mtime)
            existing.version, existing.writer, existing.mtime = v, writer, mtime
            existing.data = new
            self.total_bytes += len(new) - size
            result = len(data)
            change = Change(Op.WRITE, full, existing.inode, parent.inode, base, local=local)
        if cfg is not None:
            self.vmlist.register(cfg)
        self._notify(change)
        return result

    def set_mtime(self, path: str, mtime: int, writer: int, *, local: bool = False) -> None:
        """utime: the lock rules of §7 apply to direct children of priv/lock."""
        self._check_error()
        parent, base = self._parent_of(path)
        assert parent.children is not None
        e = parent.children.get(base)
        if e is None:
            raise TreeError(errno.ENOENT)
        full = paths.normalize(path)
        mtime &= U32
        writer &= U32
        is_lock = e.is_dir and paths.is_lock_child(full)
        if is_lock:
            if mtime < e.mtime:
                raise TreeError(errno.EACCES, "lock mtime may not go back")
            if e.writer != writer:
                raise TreeError(errno.EACCES, "lock owned by another node")
        v = self.root.version + 1
        row: Row = (e.inode, e.parent, v, writer, mtime, e.type, e.name, e.row()[7])
        self._commit([row], (), writer, mtime)
        e.version, e.writer, e.mtime = v, writer, mtime
        if is_lock:
            self.locks.touch(full, checksum.lock_checksum(e), self.clock())
        self._notify(Change(Op.MTIME, full, e.inode, parent.inode, base, local=local))

    def delete(self, path: str, writer: int, mtime: int, *, local: bool = False) -> None:
        self._check_error()
        e = self.lookup(path)
        if e is None:
            raise TreeError(errno.ENOENT)
        if e.inode == 0:
            raise TreeError(errno.EACCES)
        if e.children:
            raise TreeError(errno.ENOTEMPTY)
        writer &= U32
        mtime &= U32
        self._commit([], (e.inode,), writer, mtime)
        self._detach(e)
        full = paths.normalize(path)
        if e.is_dir:
            self.locks.forget(full)
        cfg = paths.parse_vm_config(full)
        if cfg is not None:
            self.vmlist.remove(cfg.vmid)
        self._notify(Change(Op.DELETE, full, e.inode, e.parent, e.name, local=local))

    def rename(self, src: str, dst: str, writer: int, mtime: int, *, local: bool = False) -> None:
        self._check_error()
        e = self.lookup(src)
        if e is None:
            raise TreeError(errno.ENOENT)
        if e.inode == 0:
            raise TreeError(errno.EACCES)
        full_src = paths.normalize(src)
        full_dst = paths.normalize(dst)
        src_cfg = paths.parse_vm_config(full_src)
        dst_cfg = paths.parse_vm_config(full_dst)
        if (
            e.type == DT_REG
            and dst_cfg is not None
            and self.vmlist.conflicts(dst_cfg)
            and not (src_cfg is not None and src_cfg.vmid == dst_cfg.vmid)
        ):
            raise TreeError(errno.EEXIST, f"VMID {dst_cfg.vmid} already exists on another node")
        if e.is_dir and paths.is_under_lock_dir(full_src):
            raise TreeError(errno.EACCES, "cannot rename a lock")
        target = self.lookup(full_dst)
        if target is not None:
            if target.inode == 0:
                raise TreeError(errno.EACCES)
            if target.children:
                raise TreeError(errno.ENOTEMPTY)
            new_parent = self.index[target.parent]
            new_name = target.name
        else:
            new_parent, new_name = self._parent_of(full_dst)
        if paths.bad_basename(new_name):
            raise TreeError(errno.EACCES)
        if e.children:
            raise TreeError(errno.ENOTEMPTY)
        if target is e:
            return  # renaming onto itself: nothing to do (and never sent, it crashes C peers)
        if new_parent is e:
            raise TreeError(errno.EINVAL, "cannot move a directory into itself")
        writer &= U32
        mtime &= U32
        v = self.root.version + 1
        row: Row = (e.inode, new_parent.inode, v, writer, mtime, e.type, new_name, e.row()[7])
        deletes = (target.inode,) if target is not None else ()
        self._commit([row], deletes, writer, mtime)
        old_parent, old_name = e.parent, e.name
        if target is not None:
            self._detach(target)
            if target.is_dir:
                self.locks.forget(full_dst)
        src_parent = self.index[old_parent]
        assert src_parent.children is not None and new_parent.children is not None
        del src_parent.children[old_name]
        e.parent, e.name, e.version, e.writer, e.mtime = (
            new_parent.inode,
            new_name,
            v,
            writer,
            mtime,
        )
        new_parent.children[new_name] = e
        if src_cfg is not None:
            self.vmlist.remove(src_cfg.vmid)
        if dst_cfg is not None and e.type == DT_REG:
            self.vmlist.register(dst_cfg)
        self._notify(
            Change(
                Op.RENAME,
                full_src,
                e.inode,
                old_parent,
                old_name,
                to_path=full_dst,
                new_parent=new_parent.inode,
                new_name=new_name,
                replaced=target.inode if target is not None else None,
                local=local,
            )
        )

    # ------------------------------------------------------------------ locks

    def lock_entry(self, path: str) -> Entry | None:
        """The entry if path is an existing lock directory (anything dir below priv/lock/)."""
        full = paths.normalize(path)
        if not paths.is_under_lock_dir(full):
            return None
        e = self.lookup(full)
        return e if e is not None and e.is_dir else None

    def lock_expired(self, path: str, csum: bytes) -> bool:
        return self.locks.is_expired(paths.normalize(path), csum, self.clock())

    # ------------------------------------------------------------------ replacement

    def adopt_hollow(self, records: Iterable[tuple[int, bytes]]) -> int:
        """After a sync rebuilt this tree from rows: a file the leader holds as a size only
        (:class:`Hollow`) arrived as plain zeros, since an UPDATE cannot say so.  Take the
        hollow form wherever that gives the leader's (inode, digest A) record.  Returns how
        many entries changed."""
        changed = 0
        for inode, digest in records:
            e = self.index.get(inode)
            if e is None or e.type != DT_REG or not e.data or isinstance(e.data, Hollow):
                continue
            if e.data.lstrip(b"\0") or checksum.entry_digest(e) == digest:
                continue
            plain = e.data
            e.data = Hollow(len(plain))
            if checksum.entry_digest(e) == digest:
                changed += 1
            else:
                e.data = plain
        return changed

    def replace_contents(self, other: Tree) -> None:
        """Adopt another tree's entries (after a resync); derived state is rebuilt."""
        old_index = self.index
        self.root = other.root
        self.index = other.index
        self.total_bytes = other.total_bytes
        self.last_inode = other.last_inode
        self.finish_load()
        self._notify(Change(Op.RELOAD, old_index=old_index))
