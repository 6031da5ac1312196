"""Replay the recorded 3-node C cluster (kvstore group) into Python kvstore nodes.

Each node gets exactly the deliveries and membership changes its C counterpart got, in order,
and performs the IPC operations the captions name (SET_STATUS, LOG_CLUSTER_MSG) at the same
moment. Everything a Python node multicasts must equal what its C counterpart multicast (sender
time and the garbage after a key's NUL aside): the STATE blobs of every sync, the kv
re-broadcast and nodeip announce after it, and the originated updates and log entries. The
resulting status must render the recorded `.members`, `.rrd`, `.clusterlog` and `.version`
snapshots and IPC replies byte for byte.
"""

from __future__ import annotations

import functools
import json
import struct
from dataclasses import dataclass, field
from typing import Any

from pmxcfs.cstr import c_str
from pmxcfs.dfsm.capture import CapConfChg, CapDeliver, CapOp, read_capture
from pmxcfs.dfsm.codec import Mode, MsgType
from pmxcfs.dfsm.machine import ConfChg, LocalRequest, Send
from pmxcfs.kvstore.app import LOG, UPDATE, KvstoreApp
from pmxcfs.kvstore.machine import KvstoreDfsm
from pmxcfs.status.clusterlog import ClusterLog
from pmxcfs.status.render import render_members, render_rrd, render_version
from pmxcfs.status.state import ClusterStatus, NodeInfo
from pmxcfs.vmlist import VmList
from tests.clock import Clock
from tests.shared import VECTORS

CAPTURE = VECTORS / "status-ipc-3node.jsonl.gz"
REPLIES = VECTORS / "ipc-replies.jsonl"
GROUP = "pve_kvstore_v1"
NODEIDS = {"n1": 1, "n2": 2, "n3": 3}
IPS = {"n1": "10.213.9.1", "n2": "10.213.9.2", "n3": "10.213.9.3"}


@dataclass
class Node:
    name: str
    pid: int
    status: ClusterStatus
    clog: ClusterLog
    app: KvstoreApp
    dfsm: KvstoreDfsm
    sent: list[bytes] = field(default_factory=list)
    matched: dict[str, int] = field(default_factory=dict)
    checked: list[str] = field(default_factory=list)


def _make_node(name: str, pid: int, clock: Clock) -> Node:
    """A freshly started node: cluster info read once, "starting cluster log" entry made."""
    status = ClusterStatus(name, starttime=int(clock.t), clock=clock)
    status.set_cluster_info("barclu", 1, [NodeInfo(n, i) for n, i in NODEIDS.items()])
    clog = ClusterLog(name, clock=clock)
    clog.add_local("root", "cluster", 6, "starting cluster log", pid=pid)
    app = KvstoreApp(status, clog, IPS[name])
    dfsm = KvstoreDfsm(app, NODEIDS[name], pid, name=f"kvstore[{name}]", clock=clock)
    return Node(name, pid, status, clog, app, dfsm)


def _mask(data: bytes) -> bytes:
    b = bytearray(data)
    b[8:12] = bytes(4)  # sender time
    if b[0] == MsgType.SYNC_START:
        b[20:24] = bytes(4)  # epoch time: the coordinator's clock at its confchg
    if b[0] == MsgType.NORMAL and b[2] == UPDATE and len(b) >= 24 + 256:
        end = b.index(0, 24)  # C leaves stack garbage after the key's NUL
        b[end : 24 + 256] = bytes(24 + 256 - end)
    return bytes(b)


def _kind(data: bytes) -> str:
    if data[0] == MsgType.NORMAL:
        return {UPDATE: "update", LOG: "log"}.get(data[2], "normal")
    return MsgType(data[0]).name


def load_replies() -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], str]]:
    """IPC records by caption text, and file snapshots by (node, file)."""
    ops: dict[str, dict[str, Any]] = {}
    files: dict[tuple[str, str], str] = {}
    for line in REPLIES.read_text().splitlines():
        d = json.loads(line)
        if "file" in d:
            files[(d["node"], d["file"])] = d["text"]
        else:
            ops[f"{d['node']} IPC op {d['op']}: {d['note']}"] = d
    return ops, files


def _log_pid(files: dict[tuple[str, str], str], node: str, tag: str, user: str) -> int:
    """The IPC client's pid (not in the request): read from the recorded log."""
    for e in json.loads(files[(node, ".clusterlog")])["data"]:
        if e["node"] == node and e["tag"] == tag and e["user"] == user:
            return int(e["pid"])
    raise AssertionError(f"no log entry of {node}/{tag}/{user}")


@dataclass
class Replay:
    nodes: dict[str, Node]
    retired: list[Node]
    captions: list[str]
    ipc_checked: list[str]


def _ipc(node: Node, rec: dict[str, Any], files: dict[tuple[str, str], str]) -> list[bytes]:
    """Perform (SET_STATUS, LOG) or check (GET_*) one recorded IPC request on `node`."""
    op, req = rec["op"], bytes.fromhex(rec["req_hex"])
    reply = bytes.fromhex(rec["hex"])
    if op == 4:  # SET_STATUS
        res, payload = node.app.set_status(req[:255], req[256:])
        assert res == rec["error"] and payload is not None
        return [_send(node, UPDATE, payload)]
    if op == 7:  # LOG_CLUSTER_MSG
        pri, il, tl = req[0], req[1], req[2]
        ident, tag = req[3 : 3 + il - 1], req[3 + il : 3 + il + tl - 1]
        msg = c_str(req[3 + il + tl :])
        pid = _log_pid(files, node.name, tag.decode(), ident.decode())
        entry = node.app.log_entry(ident, tag, pri, msg, pid)
        assert entry is not None
        return [_send(node, LOG, entry)]
    if rec["error"] not in (0, -2):
        return []
    st = node.status
    if op == 5:  # GET_STATUS
        got = st.get_status(c_str(req[:256]), c_str(req[256:512]).decode())
        assert got == (reply if rec["error"] == 0 else None), rec["note"]
    elif op == 8:  # GET_CLUSTER_LOG
        (limit,) = struct.unpack_from("<I", req)
        assert node.clog.dump_bytes(limit, c_str(req[16:])) == reply, rec["note"]
    elif op == 10:  # GET_RRD_DUMP: a freshly built dump carries C's trailing NUL
        assert render_rrd(st).encode() + b"\x00" == reply
    elif op == 2:  # GET_CLUSTER_INFO
        assert render_members(st).encode() == reply
    elif op == 1:  # GET_FS_VERSION: the status parts of it
        doc = json.loads(reply)
        ours = json.loads(_version_like(st, doc))
        assert (ours["clinfo"], ours["kvstore"]) == (doc["clinfo"], doc["kvstore"])
    else:
        return []
    node.checked.append(rec["note"])
    return []


def _send(node: Node, subtype: int, payload: bytes) -> bytes:
    actions = node.dfsm.feed(LocalRequest(subtype, payload))
    assert len(actions) == 1 and isinstance(actions[0], Send)
    return actions[0].data


def _version_like(st: ClusterStatus, doc: dict[str, Any]) -> str:
    """`.version` with the recorded file counters (not this layer's) and our status."""
    st.starttime = doc["starttime"]
    for p in st.path_versions:
        st.path_versions[p] = doc[p]
    vl = VmList()
    vl.version = doc["vmlist"]
    return render_version(st, vl)


def _snapshot(node: Node, files: dict[tuple[str, str], str]) -> None:
    st = node.status
    assert node.clog.dump() == files[(node.name, ".clusterlog")]
    assert render_rrd(st) == files[(node.name, ".rrd")]
    assert render_members(st) == files[(node.name, ".members")]
    text = files[(node.name, ".version")]
    assert _version_like(st, json.loads(text)) == text
    node.checked.append("snapshot")


@functools.cache
def replay() -> Replay:
    ops, files = load_replies()
    clock = Clock()
    nodes: dict[str, Node] = {}
    retired: list[Node] = []
    captions: list[str] = []
    ipc_checked: list[str] = []
    for ev in read_capture(str(CAPTURE)):
        clock.t = ev.t
        if isinstance(ev, CapOp):
            captions.append(ev.op)
            name = ev.op.split(" ", 1)[0]
            if ev.op in ops and name in nodes:
                nodes[name].sent.extend(_ipc(nodes[name], ops[ev.op], files))
                ipc_checked.append(ev.op)
            elif ev.op.endswith(".version snapshot"):
                _snapshot(nodes[name], files)
            continue
        if ev.group != GROUP:
            continue
        node = nodes.get(ev.node)
        if isinstance(ev, CapConfChg):
            mine = [m for m in ev.members if m[0] == NODEIDS[ev.node]]
            if node is None or (mine and mine[0][1] != node.pid):  # (re)started process
                if node is not None:
                    retired.append(node)
                node = nodes[ev.node] = _make_node(ev.node, mine[0][1], clock)
            actions = node.dfsm.feed(ConfChg(ev.members, ev.left, ev.joined))
        else:
            assert isinstance(ev, CapDeliver) and node is not None
            if (ev.nodeid, ev.pid) == node.dfsm.me:
                assert node.sent, f"{ev.node} delivered own {_kind(ev.data)} it never sent"
                ours = node.sent.pop(0)
                assert _mask(ours) == _mask(ev.data), (ev.node, _kind(ev.data), ours[:300].hex())
                node.matched[_kind(ours)] = node.matched.get(_kind(ours), 0) + 1
            actions = node.dfsm.deliver(ev.nodeid, ev.pid, ev.data)
        for a in actions:
            assert isinstance(a, Send), f"{ev.node}: unexpected action {a}"
            node.sent.append(a.data)
    return Replay(nodes, retired, captions, ipc_checked)


def test_replay_sends_what_the_c_nodes_sent() -> None:
    r = replay()
    assert "n3 pmxcfs restart (state transfer of clog/kvstore)" in r.captions
    assert [n.name for n in r.retired] == ["n3"]
    for n in [*r.nodes.values(), *r.retired]:
        assert n.dfsm.stats.fatal == 0, (n.name, n.dfsm.stats.errors)
        assert n.sent == [], f"{n.name} sent messages the C node never sent"
    n1, n2, n3 = (r.nodes[k] for k in ("n1", "n2", "n3"))
    # every sync's STATE blob, the nodeip announces, n1's kv re-broadcast, IPC-made messages
    assert n1.matched == {"SYNC_START": 4, "STATE": 4, "update": 10, "log": 1}
    assert n2.matched == {"STATE": 5, "update": 6, "log": 1, "SYNC_START": 1}
    assert n3.matched == {"STATE": 2, "update": 2}
    assert r.retired[0].matched == {"STATE": 1, "update": 1}
    for n in r.nodes.values():
        assert n.dfsm.mode == Mode.SYNCED


def test_replay_renders_the_recorded_snapshots_and_replies() -> None:
    r = replay()
    old_n3 = r.retired[0]
    for n in (r.nodes["n1"], r.nodes["n2"], old_n3):
        assert "snapshot" in n.checked, n.name
    assert set(r.nodes["n1"].checked) >= {"GET_FS_VERSION", "GET_CLUSTER_INFO"}
    assert set(r.nodes["n2"].checked) >= {"GET_STATUS kv/test of n1 from n2", "GET_STATUS missing"}
    assert set(old_n3.checked) >= {
        "GET_CLUSTER_LOG max 50 no filter, on n3",
        "GET_CLUSTER_LOG user filter alice@pve, on n3",
        "GET_RRD_DUMP on n3",
    }
    _ops, files = load_replies()
    # the restarted n3 got the whole merged log back through the sync
    assert r.nodes["n3"].clog.dump() == files[("n3", ".clusterlog after restart")]


def test_replay_final_status() -> None:
    r = replay()
    n1, n2, n3 = (r.nodes[k] for k in ("n1", "n2", "n3"))

    def online(n: Node) -> set[str]:
        return {x.name for x in n.status.nodes.values() if x.online}

    # online flags follow the kvstore group: n3 restarted, then n1 and n2 left in turn
    assert online(n1) == {"n1", "n2", "n3"}
    assert online(n2) == {"n2", "n3"}
    assert online(n3) == {"n3"}
    for n in r.nodes.values():
        assert n.status.node_ips == IPS, n.name
    # kv/test of n1: versions count the updates received (two re-broadcasts on n2)
    assert n1.status.kv.get(b"kv/test") == b"value1" and n1.status.kv.version(b"kv/test") == 0
    for n, version in ((n2, 2), (n3, 0)):
        store = n.status.nodes[1].kv
        assert store is not None and store.get(b"kv/test") == b"value1"
        assert store.version(b"kv/test") == version
        assert n.status.get_status(b"kv/test", "n1") == b"value1"
    assert n2.status.nodes[3].kv is None  # n3 never sent a plain key-value
    # RRD data is not re-sent at sync: the restarted n3 has none yet
    rrd_keys = ["pve2-node/n1", "pve2.3-vm/100", "pve2-storage/n1/local"]
    for n in (n1, n2, r.retired[0]):
        assert list(n.status.rrd.entries) == rrd_keys
    assert n3.status.rrd.entries == {}
    # the merged logs agree on every node that took part in the last syncs
    assert n2.clog.newest_first() == n3.clog.newest_first()
    assert len(n3.clog.newest_first()) == 6
