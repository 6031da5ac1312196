"""corosync configuration map (libcmap) for trio.

pmxcfs reads ``totem.cluster_name``, ``totem.config_version`` and the nodelist, and
re-reads all of it whenever the ``nodelist.node.`` prefix or ``totem.config_version``
change (status-ipc.md §5.1).  :meth:`Cmap.read_cluster_info` implements those parsing
rules; :meth:`Cmap.track_config` + :meth:`Cmap.run` deliver a fresh
:class:`ClusterInfo` after every dispatch that saw a tracked change.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from ._base import EventQueue, Service
from ._corosync import ffi, lib
from .errors import CS_OK, CSErrNoSections, CSErrNotExist, CSError, error_for

CmapValue = int | float | str | bytes

_INT_FORMATS = {
    lib.CMAP_VALUETYPE_INT8: "<b",
    lib.CMAP_VALUETYPE_UINT8: "<B",
    lib.CMAP_VALUETYPE_INT16: "<h",
    lib.CMAP_VALUETYPE_UINT16: "<H",
    lib.CMAP_VALUETYPE_INT32: "<i",
    lib.CMAP_VALUETYPE_UINT32: "<I",
    lib.CMAP_VALUETYPE_INT64: "<q",
    lib.CMAP_VALUETYPE_UINT64: "<Q",
    lib.CMAP_VALUETYPE_FLOAT: "<f",
    lib.CMAP_VALUETYPE_DOUBLE: "<d",
}

TRACK_ADD: int = lib.CMAP_TRACK_ADD
TRACK_DELETE: int = lib.CMAP_TRACK_DELETE
TRACK_MODIFY: int = lib.CMAP_TRACK_MODIFY
TRACK_PREFIX: int = lib.CMAP_TRACK_PREFIX

NODELIST_PREFIX = "nodelist.node."
_NODE_KEY = re.compile(r"^nodelist\.node\.(\d+)\.(.+)$")


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One ``nodelist.node.<index>`` entry that has a name and a nonzero nodeid."""

    index: int
    nodeid: int
    name: str
    votes: int
    ring0_addr: str | None


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """What pmxcfs takes from cmap: name, config version and nodelist."""

    cluster_name: str
    config_version: int
    nodes: tuple[NodeInfo, ...]

    def node_by_id(self, nodeid: int) -> NodeInfo | None:
        return next((n for n in self.nodes if n.nodeid == nodeid), None)


def _decode(vtype: int, raw: bytes) -> CmapValue:
    fmt = _INT_FORMATS.get(vtype)
    if fmt is not None:
        return struct.unpack(fmt, raw[: struct.calcsize(fmt)])[0]
    if vtype == lib.CMAP_VALUETYPE_STRING:
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    return raw


def parse_nodelist(items: list[tuple[str, CmapValue]]) -> tuple[NodeInfo, ...]:
    """Apply pmxcfs' nodelist rules to sorted ``nodelist.node.*`` items.

    Consecutive keys with the same index form one node; ``name`` wins over
    ``ring0_addr`` as the node name; nodes without a name or with nodeid 0 are dropped;
    other subkeys (ring1_addr, ...) are ignored.
    """
    nodes: list[NodeInfo] = []
    cur: dict[str, Any] | None = None

    def flush() -> None:
        if cur is None:
            return
        name = cur.get("name") or cur.get("ring0_addr")
        nodeid = cur.get("nodeid") or 0
        if name and nodeid:
            nodes.append(NodeInfo(cur["index"], int(nodeid), str(name),
                                  int(cur.get("quorum_votes") or 0),
                                  cur.get("ring0_addr")))  # fmt: skip

    for key, value in items:
        m = _NODE_KEY.match(key)
        if m is None:
            continue
        index, sub = int(m.group(1)), m.group(2)
        if cur is None or cur["index"] != index:
            flush()
            cur = {"index": index}
        wanted = int if sub in ("nodeid", "quorum_votes") else str
        if sub in ("nodeid", "quorum_votes", "name", "ring0_addr") and isinstance(value, wanted):
            cur[sub] = value
    flush()
    return tuple(nodes)


_REGISTRY: dict[int, Cmap] = {}


@ffi.def_extern()
def _py_cmap_notify(
    handle: int, track: int, event: int, key: Any, new: Any, old: Any, user_data: Any
) -> None:
    self = _REGISTRY.get(int(handle))
    if self is not None:
        self._changed = True


class Cmap(Service):
    """A libcmap handle (the default icmap map)."""

    _kind = "cmap"

    def __init__(self, *, handler: Callable[[ClusterInfo], None] | None = None) -> None:
        super().__init__()
        self._handler = handler
        self._events: EventQueue[ClusterInfo] = EventQueue()
        self._changed = False
        self._tracks: list[int] = []
        #: the last ClusterInfo read by :meth:`run` (or :meth:`read_cluster_info`)
        self.cluster_info: ClusterInfo | None = None
        hp = ffi.new("cmap_handle_t *")
        rc = lib.cmap_initialize(hp)
        if rc != CS_OK:
            raise error_for(rc, "cmap_initialize")
        self._handle = int(hp[0])
        _REGISTRY[self._handle] = self
        try:
            fdp = ffi.new("int *")
            self._check(lib.cmap_fd_get(self._handle, fdp), "cmap_fd_get")
            self._fd = int(fdp[0])
        except BaseException:
            self.finalize()
            raise

    def _lib_finalize(self, handle: int) -> None:
        for track in self._tracks:
            lib.cmap_track_delete(handle, track)
        self._tracks.clear()
        lib.cmap_finalize(handle)

    def _lib_dispatch(self, handle: int, flags: int) -> int:
        return int(lib.cmap_dispatch(handle, flags))

    def _unregister(self, handle: int) -> None:
        _REGISTRY.pop(handle, None)

    def _on_closed(self, error: BaseException | None) -> None:
        self._events.close(error)

    # -- reading
    def get_typed(self, key: str) -> tuple[int, CmapValue]:
        """``(CMAP_VALUETYPE_*, value)`` of *key*; raises CSErrNotExist if missing."""
        handle = self._h("cmap_get")
        ckey = key.encode()
        size = ffi.new("size_t *")
        vtype = ffi.new("cmap_value_types_t *")
        self._check(lib.cmap_get(handle, ckey, ffi.NULL, size, vtype), "cmap_get")
        buf = ffi.new("char[]", max(int(size[0]), 1))
        self._check(lib.cmap_get(handle, ckey, buf, size, vtype), "cmap_get")
        return int(vtype[0]), _decode(int(vtype[0]), bytes(ffi.buffer(buf, size[0])))

    def get(self, key: str) -> CmapValue:
        """Value of *key* as int/float/str/bytes."""
        return self.get_typed(key)[1]

    def keys(self, prefix: str = "") -> list[str]:
        """Keys starting with *prefix*, in cmap's (sorted) order."""
        handle = self._h("cmap_iter_init")
        it = ffi.new("cmap_iter_handle_t *")
        self._check(lib.cmap_iter_init(handle, prefix.encode(), it), "cmap_iter_init")
        name = ffi.new("char[]", lib.CMAP_KEYNAME_MAXLEN + 1)
        size = ffi.new("size_t *")
        vtype = ffi.new("cmap_value_types_t *")
        out: list[str] = []
        try:
            while True:
                rc = lib.cmap_iter_next(handle, it[0], name, size, vtype)
                if rc == CSErrNoSections.code:
                    break
                self._check(rc, "cmap_iter_next")
                out.append(ffi.string(name).decode())
        finally:
            if self._handle is not None:
                lib.cmap_iter_finalize(handle, it[0])
        return out

    def items(self, prefix: str = "") -> list[tuple[str, CmapValue]]:
        """``(key, value)`` pairs under *prefix*; keys deleted meanwhile are skipped."""
        out = []
        for key in self.keys(prefix):
            try:
                out.append((key, self.get(key)))
            except CSErrNotExist:
                continue
        return out

    def read_cluster_info(self) -> ClusterInfo:
        """Cluster name (required), config_version (0 if unreadable) and nodelist."""
        name = self.get("totem.cluster_name")
        try:
            version = int(self.get("totem.config_version"))
        except CSError as exc:
            if not isinstance(exc, CSErrNotExist):
                raise
            version = 0
        info = ClusterInfo(str(name), version, parse_nodelist(self.items(NODELIST_PREFIX)))
        self.cluster_info = info
        return info

    # -- tracking
    def track(self, key: str, flags: int) -> int:
        """``cmap_track_add``: any change marks the config dirty (re-read in :meth:`run`)."""
        handle = self._h("cmap_track_add")
        th = ffi.new("cmap_track_handle_t *")
        rc = lib.cmap_track_add(handle, key.encode(), flags, lib._py_cmap_notify, ffi.NULL, th)
        self._check(rc, "cmap_track_add")
        self._tracks.append(int(th[0]))
        return int(th[0])

    def track_config(self) -> ClusterInfo:
        """Track what pmxcfs tracks and return the current :class:`ClusterInfo`."""
        self.track(NODELIST_PREFIX, TRACK_PREFIX | TRACK_ADD | TRACK_DELETE | TRACK_MODIFY)
        self.track("totem.config_version", TRACK_ADD | TRACK_DELETE | TRACK_MODIFY)
        return self.read_cluster_info()

    async def dispatch_pending(self, *, retry_delay: float = 0.1) -> None:
        """Dispatch, then re-read the whole config if a tracked key changed."""
        await super().dispatch_pending(retry_delay=retry_delay)
        if self._changed:
            self._changed = False
            info = self.read_cluster_info()
            if self._handler is not None:
                self._handler(info)
            else:
                self._events.put(info)

    async def receive(self) -> ClusterInfo:
        """Next re-read :class:`ClusterInfo` (after a tracked change)."""
        try:
            return await self._events.get()
        except trio.EndOfChannel:
            self._h("cmap_receive")
            raise

    def __aiter__(self) -> Cmap:
        return self

    async def __anext__(self) -> ClusterInfo:
        try:
            return await self._events.get()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
