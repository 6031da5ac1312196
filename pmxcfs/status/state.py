"""Cluster-wide status a node shows: membership, quorum and the change counters of .version.

Fed by the corosync services (cmap, quorum, the kvstore group) in cluster mode; in local mode
it stays quorate with no nodelist. Listeners hear of quorum flips so the filesystem can
drop cached modes (the write bits follow quorum).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..constants import VERSIONED_PATHS
from ..tree import Change, Op


@dataclass(slots=True)
class NodeInfo:
    name: str
    nodeid: int
    votes: int = 1
    online: bool = False


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
    # node name -> key -> version (local node's own store included)
    kvstore: dict[str, dict[str, int]] = field(default_factory=dict)
    path_versions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERSIONED_PATHS, 0))
    quorum_listeners: list[Callable[[bool], None]] = field(default_factory=list)

    def set_quorate(self, quorate: bool) -> None:
        if quorate == self.quorate:
            return
        self.quorate = quorate
        for fn in self.quorum_listeners:
            fn(quorate)

    def set_cluster_info(self, name: str, config_version: int, nodes: list[NodeInfo]) -> None:
        """Install a fresh cmap read; online flags carry over by nodeid."""
        fresh: dict[int, NodeInfo] = {}
        for n in nodes:
            old = self.nodes.get(n.nodeid)
            n.online = old.online if old is not None else n.online
            fresh[n.nodeid] = n
        for nodeid in set(self.nodes) - set(fresh):
            gone = self.nodes[nodeid].name
            if gone != self.nodename:
                self.kvstore.pop(gone, None)
        self.cluster_name = name
        self.config_version = config_version
        self.nodes = fresh
        self.clinfo_version += 1

    def set_online(self, nodeids: set[int]) -> None:
        if self.cluster_name is None:
            return
        for n in self.nodes.values():
            n.online = n.nodeid in nodeids
        self.clinfo_version += 1

    def set_node_ip(self, name: str, ip: str) -> None:
        if self.node_ips.get(name) != ip:
            self.node_ips[name] = ip
            self.clinfo_version += 1

    def record_change(self, path: str) -> None:
        if path in self.path_versions:
            self.path_versions[path] += 1

    def on_tree_change(self, change: Change) -> None:
        """Tree listener: the per-path counters of .version (mkdir does not count)."""
        if change.op is Op.RELOAD:
            for p in self.path_versions:
                self.path_versions[p] += 1
        elif change.op is not Op.MKDIR:
            self.record_change(change.path)
            if change.to_path:
                self.record_change(change.to_path)
