"""Text of the generated files, byte for byte as the reference prints them (spec §8.2)."""

from __future__ import annotations

from ..vmlist import VmList
from .state import RRD_MAX_AGE, ClusterStatus, KvStore, RrdTable

__all__ = [
    "RRD_MAX_AGE",
    "RrdTable",
    "render_members",
    "render_rrd",
    "render_version",
    "render_version_bytes",
    "render_vmlist",
]


def render_version(status: ClusterStatus, vmlist: VmList) -> str:
    return render_version_bytes(status, vmlist).decode()


def render_version_bytes(status: ClusterStatus, vmlist: VmList) -> bytes:
    """.version and GET_FS_VERSION: rendered again only after something it shows changed
    (PVE tools poll it; it lists every versioned path and every node's key-values)."""
    key = (status.generation, status.clinfo_version, vmlist.version, status.starttime)
    hit = status.version_cache
    if hit is not None and hit[0] == key:
        return hit[1]
    text = _render_version(status, vmlist).encode()
    status.version_cache = (key, text)
    return text


def _render_version(status: ClusterStatus, vmlist: VmList) -> str:
    out = [
        "{\n",
        f'"starttime": {status.starttime},\n',
        f'"clinfo": {status.clinfo_version},\n',
        f'"vmlist": {vmlist.version},\n',
    ]
    out.extend(f'"{p}": {v},\n' for p, v in status.path_versions.items())
    out.append('"kvstore": {\n')
    blocks = [_kv_block(status.nodename, status.kv)]
    # then every nodelist node that has sent key-values (rrd/ and nodeip are kept elsewhere)
    blocks.extend(_kv_block(n.name, n.kv) for n in status.nodes.values() if n.kv is not None)
    out.append(",\n".join(blocks))
    out.append("}\n}\n")
    return "".join(out)


def _kv_block(name: str, store: KvStore) -> str:
    items = ",\n".join(f'"{k.decode("utf-8", "replace")}": {v.version}' for k, v in store.items())
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


def render_rrd(status: ClusterStatus, now: float | None = None) -> str:
    """`.rrd`: one `<key>:<data>` line per entry updated within the last 300 s."""
    return status.rrd.dump(status.clock() if now is None else now)
