"""Text of the generated files, byte for byte as the reference prints them (spec §8.2)."""

from __future__ import annotations

import time

from ..vmlist import VmList
from .state import ClusterStatus

RRD_MAX_AGE = 300


def render_version(status: ClusterStatus, vmlist: VmList) -> str:
    out = [
        "{\n",
        f'"starttime": {status.starttime},\n',
        f'"clinfo": {status.clinfo_version},\n',
        f'"vmlist": {vmlist.version},\n',
    ]
    out.extend(f'"{p}": {v},\n' for p, v in status.path_versions.items())
    out.append('"kvstore": {\n')
    blocks = []
    own = status.kvstore.get(status.nodename, {})
    blocks.append(_kv_block(status.nodename, own))
    for node in status.nodes.values():
        if node.name != status.nodename and node.name in status.kvstore:
            blocks.append(_kv_block(node.name, status.kvstore[node.name]))
    out.append(",\n".join(blocks))
    out.append("}\n}\n")
    return "".join(out)


def _kv_block(name: str, store: dict[str, int]) -> str:
    items = ",\n".join(f'"{k}": {v}' for k, v in store.items())
    return f'"{name}": {{\n' + items + "}\n" if items else f'"{name}": {{\n}}\n'


def render_members(status: ClusterStatus) -> str:
    if status.cluster_name is None or not status.nodes:
        return f'{{\n"nodename": "{status.nodename}",\n"version": {status.clinfo_version}\n}}\n'
    lines = []
    for n in status.nodes.values():
        ip = status.node_ips.get(n.name)
        ip_part = f', "ip": "{ip}"' if ip is not None else ""
        lines.append(f'  "{n.name}": {{ "id": {n.nodeid}, "online": {int(n.online)}{ip_part}}}')
    cfg_version = status.config_version & 0xFFFFFFFF
    if cfg_version >= 0x80000000:
        cfg_version -= 0x100000000
    return (
        "{\n"
        f'"nodename": "{status.nodename}",\n'
        f'"version": {status.clinfo_version},\n'
        f'"cluster": {{ "name": "{status.cluster_name}", "version": {cfg_version}, '
        f'"nodes": {len(status.nodes)}, "quorate": {int(status.quorate)} }},\n'
        '"nodelist": {\n' + ",\n".join(lines) + "\n  }\n}\n"
    )


def render_vmlist(vmlist: VmList) -> str:
    if not vmlist.ids:
        return f'{{\n"version": {vmlist.version}\n\n}}\n'
    lines = [
        f'"{vmid}": {{ "node": "{i.node}", "type": "{i.vmtype}", "version": {i.version} }}'
        for vmid, i in sorted(vmlist.ids.items())
    ]
    return f'{{\n"version": {vmlist.version},\n"ids": {{\n' + ",\n".join(lines) + "}\n\n}\n"


class RrdTable:
    """Latest RRD data per key; the dump drops entries older than 300 s."""

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
