"""Cluster-wide status a node shows: membership, quorum, node key-values, RRD data, node IPs and
the change counters of .version.

Fed by the corosync services (cmap, quorum, the kvstore group) in cluster mode; in local mode
it stays quorate with no nodelist. Listeners hear of quorum flips so the filesystem can
drop cached modes (the write bits follow quorum). The key-value rules are status-ipc §2.5.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..constants import VERSIONED_PATHS
from ..cstr import c_str
from ..tree import Change, Op

log = logging.getLogger("pmxcfs.status")

MAX_STATUS_SIZE = 32768  # CFS_MAX_STATUS_SIZE: larger set_status values get -EFBIG
KEY_MAX = 255  # keys travel in char[256] fields (IPC request, KVSTORE_UPDATE)
RRD_PREFIX = b"rrd/"
NODEIP_KEY = b"nodeip"
RRD_VALUE_MAX = 4096  # rrd values: 1..4095 bytes, NUL-terminated
NODEIP_MAX = 256  # nodeip values: 1..255 bytes, NUL-terminated
RRD_MAX_AGE = 300  # seconds; older RRD entries are dropped when a dump is built


@dataclass(slots=True)
class KvValue:
    data: bytes
    version: int = 0


class KvStore:
    """key -> (bytes, version). The version counts overwrites; an empty value deletes."""

    __slots__ = ("_d",)

    def __init__(self) -> None:
        self._d: dict[bytes, KvValue] = {}

    def put(self, key: bytes, data: bytes) -> None:
        if not data:
            self._d.pop(key, None)
            return
        cur = self._d.get(key)
        if cur is None:
            self._d[key] = KvValue(data)
        else:
            cur.data = data
            cur.version += 1

    def get(self, key: bytes) -> bytes | None:
        v = self._d.get(key)
        return None if v is None else v.data

    def version(self, key: bytes) -> int | None:
        v = self._d.get(key)
        return None if v is None else v.version

    def items(self) -> Iterator[tuple[bytes, KvValue]]:
        return iter(list(self._d.items()))

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: object) -> bool:
        return key in self._d


class RrdTable:
    """Latest RRD data per key (without `rrd/`); the dump drops entries older than 300 s."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, str]] = {}

    def update(self, key: str, data: str, now: float | None = None) -> None:
        self.entries[key] = (time.time() if now is None else now, data)

    def dump(self, now: float | None = None) -> str:
        t = time.time() if now is None else now
        stale = [k for k, (ts, _) in self.entries.items() if t - ts > RRD_MAX_AGE]
        for k in stale:
            del self.entries[k]
        return "".join(f"{k}:{d}\n" for k, (_, d) in self.entries.items())


@dataclass(slots=True)
class NodeInfo:
    name: str
    nodeid: int
    votes: int = 1
    online: bool = False
    kv: KvStore | None = None  # the node's key-values as it broadcast them; made on first use


def _c_string(value: bytes, limit: int) -> str | None:
    """A NUL-terminated value of 1..limit-1 bytes as text (up to its first NUL), else None."""
    if not 0 < len(value) < limit or value[-1] != 0:
        return None
    return c_str(value).decode("utf-8", "replace")


def status_key(key: bytes) -> bytes:
    """A key as C keeps it: up to its first NUL, at most 255 bytes."""
    return c_str(key)[:KEY_MAX]


@dataclass
class ClusterStatus:
    nodename: str
    starttime: int = field(default_factory=lambda: int(time.time()))
    quorate: bool = True
    cluster_name: str | None = None
    config_version: int = 0
    nodes: dict[int, NodeInfo] = field(default_factory=dict)
    clinfo_version: int = 0
    # node name -> ip, learned from the kvstore group's "nodeip" broadcasts
    node_ips: dict[str, str] = field(default_factory=dict)
    kv: KvStore = field(default_factory=KvStore)  # the local node's own key-values
    rrd: RrdTable = field(default_factory=RrdTable)
    path_versions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERSIONED_PATHS, 0))
    quorum_listeners: list[Callable[[bool], None]] = field(default_factory=list)
    # (key without rrd/, data) of every accepted RRD update, ours and peers': the disk writer
    rrd_listeners: list[Callable[[str, str], None]] = field(default_factory=list)
    clock: Callable[[], float] = time.time  # RRD entry times
    #: bumped by every change .version shows besides clinfo_version and the VM list's
    #: version (a path counter, a key-value, a resync): the key of its rendered text
    generation: int = 0
    #: (key, rendered .version) of the last rendering (status/render.py)
    version_cache: tuple[tuple[int, ...], bytes] | None = field(
        default=None, repr=False, compare=False
    )

    def set_quorate(self, quorate: bool) -> None:
        if quorate == self.quorate:
            return
        self.quorate = quorate
        for fn in self.quorum_listeners:
            fn(quorate)

    def set_cluster_info(self, name: str, config_version: int, nodes: list[NodeInfo]) -> None:
        """Install a fresh cmap read; online flags and kv stores carry over by nodeid."""
        fresh: dict[int, NodeInfo] = {}
        for n in nodes:
            old = self.nodes.get(n.nodeid)
            if old is not None:
                n.online = old.online
                n.kv = old.kv
            fresh[n.nodeid] = n
        self.cluster_name = name
        self.config_version = config_version
        self.nodes = fresh  # removed nodes take their stores with them
        self.clinfo_version += 1

    def set_online(self, nodeids: set[int]) -> None:
        """§5.2: the kvstore group's members are online, everyone else offline."""
        if self.cluster_name is None:
            return
        for n in self.nodes.values():
            n.online = n.nodeid in nodeids
        self.clinfo_version += 1

    def set_node_ip(self, name: str, ip: str) -> None:
        if self.node_ips.get(name) != ip:
            self.node_ips[name] = ip
            self.clinfo_version += 1

    # ------------------------------------------------------------------ key-values (§2.5)

    def set_status(self, key: bytes, value: bytes) -> int:
        """set_status steps 1-2 on this node (the IPC SET_STATUS, before any multicast): 0,
        -EFBIG (larger than 32 KiB: nothing stored) or -ENOMEM (an invalid rrd/nodeip value)."""
        if len(value) > MAX_STATUS_SIZE:
            return -errno.EFBIG
        return 0 if self.set_local(status_key(key), value) else -errno.ENOMEM

    def set_local(self, key: bytes, value: bytes) -> bool:
        """set_status step 2 for this node; False = an invalid rrd/nodeip value (-ENOMEM)."""
        return self._store(key, value, self.nodename, lambda: self.kv)

    def set_remote(self, nodeid: int, key: bytes, value: bytes) -> bool:
        """A KVSTORE_UPDATE from `nodeid`; dropped (False) if its value is larger than any
        set_status accepts or the node is not in the nodelist."""
        if len(value) > MAX_STATUS_SIZE:
            log.error("status update %r from node %d too large (%d bytes) - ignored",
                      key, nodeid, len(value))  # fmt: skip
            return False
        node = self.nodes.get(nodeid)
        if node is None:
            log.debug("dropping status update %r from node %d (not in the nodelist)", key, nodeid)
            return False

        def store() -> KvStore:
            if node.kv is None:
                node.kv = KvStore()
            return node.kv

        if not self._store(key, value, node.name, store):
            log.warning("invalid value for %r from node %s ignored", key, node.name)
            return False
        return True

    def _store(self, key: bytes, value: bytes, name: str, store: Callable[[], KvStore]) -> bool:
        if key.startswith(RRD_PREFIX):
            data = _c_string(value, RRD_VALUE_MAX)
            if data is None:
                return False
            rrd_key = key[len(RRD_PREFIX) :].decode("utf-8", "replace")
            self.rrd.update(rrd_key, data, self.clock())
            for fn in self.rrd_listeners:
                fn(rrd_key, data)
            return True
        if key == NODEIP_KEY:
            ip = _c_string(value, NODEIP_MAX)
            if ip is None:
                return False
            self.set_node_ip(name, ip)
            return True
        store().put(key, value)
        self.generation += 1
        return True

    def get_status(self, key: bytes, nodename: str = "") -> bytes | None:
        """IPC GET_STATUS: a stored value of this node ('' or our name) or of a remote one."""
        if nodename in ("", self.nodename):
            return self.kv.get(key)
        for n in self.nodes.values():
            if n.name == nodename:
                return None if n.kv is None else n.kv.get(key)
        return None

    # ------------------------------------------------------------------ .version counters

    def record_change(self, path: str) -> None:
        if path in self.path_versions:
            self.path_versions[path] += 1
            self.generation += 1

    def on_tree_change(self, change: Change) -> None:
        """Tree listener: the per-path counters of .version (mkdir does not count)."""
        if change.op is Op.RELOAD:
            for p in self.path_versions:
                self.path_versions[p] += 1
            self.generation += 1
        elif change.op is not Op.MKDIR:
            self.record_change(change.path)
            if change.to_path:
                self.record_change(change.to_path)
