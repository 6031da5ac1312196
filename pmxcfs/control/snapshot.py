"""The status document: the daemon's objects read into plain data, plus what looks wrong.

Nothing here does I/O beyond a few stat/listdir calls on the database and lost+found, and
nothing changes state except `answer`'s `debug on|off`. The objects are read from the
outside (the DFSM, group commit and services keep their own counters); a missing piece
(no cluster services yet, no RRD writer, no IPC server) leaves its part out or null.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import protocol
from .history import GroupHistory, GroupReading, History, QuorumHistory

if TYPE_CHECKING:
    from cpg.ipcs import IpcServer

    from ..cluster import ClusterNode
    from ..dfsm.driver import DfsmDriver
    from ..dfsm.runner import GroupRunner
    from ..fs.invalidator import Invalidator
    from ..status.clusterlog import ClusterLog
    from ..status.rrdwriter import RrdWriter
    from ..status.state import ClusterStatus
    from ..tree import Tree

QUEUE_WARN = 1000  # queued messages that count as "not keeping up"
LOST_FOUND_LIST = 10  # newest lost+found entries named in the document


def _none() -> None:
    return None


@dataclass
class Sources:
    """References to what the document is read from; getters for what appears later."""

    nodename: str
    node_ip: str
    cluster_mode: bool
    status: ClusterStatus
    clog: ClusterLog
    tree: Tree
    db_path: str
    lost_found_dir: str
    is_debug: Callable[[], bool]
    set_debug: Callable[[bool], None]
    invalidator: Invalidator | None = None
    rrd: RrdWriter | None = None
    services: Callable[[], ClusterNode | None] = _none
    ipc: Callable[[], IpcServer | None] = _none
    service_names: Callable[[], list[str]] = list
    pid: int = field(default_factory=os.getpid)
    started: float = field(default_factory=time.time)


def new_history(src: Sources, wall: float) -> History:
    return History(QuorumHistory(wall, src.status.quorate))


# ---------------------------------------------------------------------------- groups


def _groups(src: Sources) -> dict[str, tuple[DfsmDriver, GroupRunner]]:
    svc = src.services()
    if svc is None:
        return {}
    out = {"dcdb": (svc.replication.driver, svc.replication.runner)}
    if svc.kvstore is not None:
        out["kvstore"] = (svc.kvstore.driver, svc.kvstore.runner)
    return out


def _reading(driver: DfsmDriver) -> GroupReading:
    d = driver.dfsm
    return GroupReading(
        d.mode.name.lower(), d.stats.syncs, d.sync_epoch.time, d.msgcount, d.stats.delivered
    )


def sample(src: Sources, hist: History, mono: float, wall: float) -> None:
    """One sampler tick: every group's counters and mode into the history."""
    for name, (driver, _runner) in _groups(src).items():
        hist.group(name).observe(mono, wall, _reading(driver))


def _group_doc(driver: DfsmDriver, runner: GroupRunner, h: GroupHistory, mono: float) -> Any:
    d = driver.dfsm
    r = _reading(driver)
    sent_rate, delivered_rate = h.rates(mono, r.sent, r.delivered)
    member = runner.joined and d.we_are_member
    e = d.sync_epoch
    last = h.last
    return {
        "mode": r.mode,
        "joined": runner.joined,
        "epoch": {"counter": e.epoch, "time": e.time, "nodeid": e.nodeid, "pid": e.pid},
        "leader": d.lowest_nodeid if member and d.lowest_nodeid else None,
        "nodeid": d.nodeid,
        "members": [{"nodeid": m.nodeid, "pid": m.pid, "synced": m.synced} for m in d.members or ()]
        if member
        else [],
        "queued": len(d.msg_queue) + len(d.sync_queue),
        "unsent": int(getattr(driver, "_queued", 0)),
        "waiting": len(getattr(driver, "_waiters", ())),
        "sent": {"count": r.sent, "rate": sent_rate},
        "delivered": {"count": r.delivered, "rate": delivered_rate},
        "syncs": r.syncs,
        "syncing_since": h.syncing_since,
        "last_sync": None
        if last is None
        else {"start": last.start, "end": last.end, "duration": last.duration},
        "errors": {
            "fatal": d.stats.fatal,
            "ignored": d.stats.ignored,
            "last": d.stats.last_error or None,
        },
    }


# ---------------------------------------------------------------------------- the rest


def _members(src: Sources) -> list[dict[str, Any]]:
    st = src.status
    if not src.cluster_mode:
        return [{"name": src.nodename, "nodeid": None, "online": True, "ip": src.node_ip}]
    return [
        {"name": n.name, "nodeid": n.nodeid, "online": n.online, "ip": st.node_ips.get(n.name)}
        for n in sorted(st.nodes.values(), key=lambda n: n.nodeid)
    ]


def _file_facts(path: str) -> tuple[int, float | None]:
    """Bytes of the database with its WAL, and when either was last written."""
    size, mtime = 0, None
    for p in (path, path + "-wal"):
        try:
            st = os.stat(p)
        except OSError:
            continue
        size += st.st_size
        mtime = st.st_mtime if mtime is None else max(mtime, st.st_mtime)
    return size, mtime


def _database(src: Sources) -> dict[str, Any]:
    tree = src.tree
    root = tree.root
    size, written = _file_facts(src.db_path)
    journal = tree.journal
    staged = getattr(journal, "staged", None)
    return {
        "path": src.db_path,
        "version": root.version,
        "entries": len(tree.index) - 1,
        "size": size,
        "written": written,
        "last_commit": {"version": root.version, "time": root.mtime, "writer": root.writer},
        "pending": bool(staged) if staged is not None else None,
        "transactions": getattr(journal, "transactions", None),
        "error": tree.error,
    }


def _lost_found(src: Sources) -> dict[str, Any]:
    try:
        names = sorted(os.listdir(src.lost_found_dir), reverse=True)
    except OSError:
        names = []
    return {"path": src.lost_found_dir, "count": len(names), "latest": names[:LOST_FOUND_LIST]}


def _rrd(src: Sources) -> dict[str, Any]:
    w = src.rrd
    if w is None:
        return {"enabled": False}
    return {
        "enabled": True,
        "dir": w.base_dir,
        "queued": w.queued,
        "dropped": w.dropped,
        "rrdcached": w.rrdcached_state,
        "updates": {"rrdcached": w.cached_updates, "direct": w.direct_updates},
    }


def _ipc(src: Sources) -> dict[str, Any]:
    server = src.ipc()
    if server is None or not server.running:
        return {"serving": False, "connections": 0}
    return {"serving": True, "connections": len(server.connections)}


def build(src: Sources, hist: History, wall: float, mono: float) -> dict[str, Any]:
    """The whole status document (what `pmxcfs-admin status --json` prints)."""
    sample(src, hist, mono, wall)  # a query is a sample too: a sync just finished shows
    st = src.status
    doc: dict[str, Any] = {
        "nodename": src.nodename,
        "mode": "cluster" if src.cluster_mode else "local",
        "services": src.service_names(),
        "pid": src.pid,
        "started": src.started,
        "time": wall,
        "debug": src.is_debug(),
        "quorate": st.quorate,
        "quorate_since": hist.quorum.since,
        "cluster": None
        if st.cluster_name is None
        else {"name": st.cluster_name, "config_version": st.config_version, "nodes": len(st.nodes)},
        "members": _members(src),
    }
    if src.cluster_mode:
        doc["groups"] = {
            name: _group_doc(driver, runner, hist.group(name), mono)
            for name, (driver, runner) in _groups(src).items()
        }
    doc["database"] = _database(src)
    doc["lost_found"] = _lost_found(src)
    doc["rrd"] = _rrd(src)
    doc["ipc"] = _ipc(src)
    inv = src.invalidator
    doc["kernel_cache"] = {
        "inodes": len(inv.refs) if inv is not None else None,
        "invalidations": inv.sent if inv is not None else None,
    }
    doc["problems"] = diagnose(doc)
    return doc


# ---------------------------------------------------------------------------- diagnosis


def diagnose(doc: dict[str, Any]) -> list[str]:
    """One line per thing that keeps this node from being quorate, synced and keeping up."""
    out: list[str] = []
    cluster = doc["mode"] == "cluster"
    members = doc.get("members") or []
    if cluster:
        online = [m["name"] for m in members if m["online"]]
        if not doc["quorate"]:
            out.append(
                f"not quorate ({len(online)} of {len(members)} nodes online): /etc/pve is read-only"
            )
        if doc.get("cluster") is None:
            out.append("no cluster configuration from corosync (is corosync running?)")
        offline = [m["name"] for m in members if not m["online"]]
        if offline and doc["quorate"]:
            out.append("offline: " + ", ".join(offline))
        groups = doc.get("groups") or {}
        if not groups:
            out.append("cluster services are not running")
        for name, g in groups.items():
            out.extend(f"{name}: {p}" for p in _group_problems(g))
    db = doc["database"]
    if db["error"]:
        out.append("database write failed: every change fails with EIO until pmxcfs restarts")
    rrd = doc["rrd"]
    if rrd.get("dropped"):
        out.append(f"rrd: {rrd['dropped']} updates dropped (write queue full)")
    return out


def _group_problems(g: dict[str, Any]) -> list[str]:
    mode = g["mode"]
    last = g["errors"]["last"]
    if mode in ("error", "version_error"):
        why = f": {last}" if last else ""
        return [f"stopped in mode {mode}{why} - only a restart of pmxcfs brings it back"]
    if mode == "leave":
        why = f" after: {last}" if last else ""
        return [f"left the group{why} - rejoining"]
    if not g["joined"]:
        return ["not in the CPG group (corosync down or restarting?)"]
    out: list[str] = []
    if mode != "synced":
        out.append(f"mode {mode} (sync in progress)")
    else:
        unsynced = [str(m["nodeid"]) for m in g["members"] if not m["synced"]]
        if unsynced:
            out.append("members not synced yet: node " + ", ".join(unsynced))
    backlog = g["queued"] + g["unsent"]
    if backlog >= QUEUE_WARN:
        out.append(f"{backlog} messages queued")
    return out


# ---------------------------------------------------------------------------- requests


def log_entries(clog: ClusterLog, max_entries: int) -> list[dict[str, Any]]:
    """The cluster log, newest inserted first (as .clusterlog), as plain maps."""
    out: list[dict[str, Any]] = []
    for e in clog.newest_first():
        if max_entries and len(out) >= max_entries:
            break
        out.append(
            {
                "uid": e.uid,
                "time": e.time,
                "pri": e.priority,
                "tag": e.tag.decode("utf-8", "replace"),
                "pid": e.pid,
                "node": e.node.decode("utf-8", "replace"),
                "user": e.ident.decode("utf-8", "replace"),
                "msg": e.msg.decode("utf-8", "replace"),
            }
        )
    return out


def answer(src: Sources, hist: History, req: protocol.Request) -> Any:
    """The result of one request (the server frames it)."""
    if isinstance(req, protocol.Status):
        return build(src, hist, time.time(), time.monotonic())
    if isinstance(req, protocol.Log):
        return log_entries(src.clog, req.max_entries)
    if isinstance(req, protocol.Debug):
        if req.on is not None:
            src.set_debug(req.on)
        return {"debug": src.is_debug()}
    return {"pid": src.pid, "nodename": src.nodename}
