"""ClusterBackend: the filesystem's write path in cluster mode (wire-protocol §5.1, §5.7, §7).

Every mutation is checked against the write gate (corosync quorum and a replication group that
holds quorum's votes; EACCES, nothing sent), multicast as a DCDB message
and answered with the result this node computed when its own message came back in total
order. Nothing a C peer would crash on is ever sent (RENAME onto itself, missing paths).
"""

from __future__ import annotations

import errno
import logging

from .. import checksum, paths
from ..dfsm.driver import DfsmDriver
from ..tree import Tree, TreeError
from .codec import FuseOp, Subtype, UnlockMsg
from .writegate import WriteGate

log = logging.getLogger("pmxcfs.dcdb")


def wire_path(path: str) -> bytes:
    """The form C nodes send: no leading slash; refuses what cannot be a C string."""
    raw = path.lstrip("/").encode("utf-8", "surrogateescape")
    if b"\x00" in raw:
        raise TreeError(errno.EINVAL, "path contains NUL")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TreeError(errno.EINVAL, "path is not UTF-8") from None
    return raw


class ClusterBackend:
    """Implements pmxcfs.backend.Backend on top of a DfsmDriver running DCDB."""

    def __init__(self, tree: Tree, driver: DfsmDriver, gate: WriteGate) -> None:
        self.tree = tree
        self.driver = driver
        self.gate = gate

    @property
    def quorate(self) -> bool:
        """Writable: what the filesystem shows as quorum (modes, EACCES)."""
        return self.gate.writable

    async def _send(self, subtype: Subtype, op: FuseOp) -> int:
        if not self.gate.writable:
            raise TreeError(errno.EACCES, "cluster not ready - no quorum?")
        res = await self.driver.request(subtype, op.encode())
        if res < 0:
            raise TreeError(-res)
        return res

    async def mkdir(self, path: str) -> None:
        await self._send(Subtype.MKDIR, FuseOp(wire_path(path)))

    async def create(self, path: str) -> None:
        await self._send(Subtype.CREATE, FuseOp(wire_path(path)))

    async def write(self, path: str, offset: int, data: bytes) -> int:
        if offset < 0 or offset > 0xFFFFFFFF:
            raise TreeError(errno.EFBIG)
        return await self._send(Subtype.WRITE, FuseOp(wire_path(path), data=data, offset=offset))

    async def truncate(self, path: str, size: int) -> None:
        if size < 0 or size > 0xFFFFFFFF:
            raise TreeError(errno.EFBIG)
        await self._send(Subtype.WRITE, FuseOp(wire_path(path), offset=size, flags=1))

    async def delete(self, path: str) -> None:
        await self._send(Subtype.DELETE, FuseOp(wire_path(path)))

    async def rename(self, src: str, dst: str) -> None:
        s, d = wire_path(src), wire_path(dst)
        if paths.normalize(src) == paths.normalize(dst):
            # same entry: a C receiver would free it twice (§10.7); POSIX says do nothing
            if self.tree.lookup(src) is None:
                raise TreeError(errno.ENOENT)
            return
        await self._send(Subtype.RENAME, FuseOp(s, to=d))

    async def set_mtime(self, path: str, mtime: int) -> None:
        raw = wire_path(path)
        if mtime == 0 and self.gate.writable:
            lock = self.tree.lock_entry(path)
            if lock is not None:
                msg = UnlockMsg(checksum.lock_checksum(lock), raw)
                self.driver.send_nowait(Subtype.UNLOCK_REQUEST, msg.encode())
        await self._send(Subtype.MTIME, FuseOp(raw, offset=mtime & 0xFFFFFFFF))
