"""KvstoreService over real corosync (3 nodes in namespaces, tests/cluster/harness).

Each node runs this file as an agent: a ClusterStatus fed by cmap, a ClusterLog and a
standalone KvstoreService, driven by JSON-line commands on stdin and reporting its state as
JSON on stdout.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import pytest

pytestmark = pytest.mark.cluster


# ---------------------------------------------------------------------------- agent


def _agent(nodename: str, node_ip: str) -> None:
    import logging

    import trio

    from pmxcfs.kvstore.service import KvstoreService
    from pmxcfs.status.clusterlog import ClusterLog
    from pmxcfs.status.render import render_rrd
    from pmxcfs.status.state import ClusterStatus, NodeInfo

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    def emit(**o: Any) -> None:
        sys.stdout.write(json.dumps(o) + "\n")
        sys.stdout.flush()

    status = ClusterStatus(nodename)
    clog = ClusterLog(nodename)
    clog.add_local("root", "cluster", 6, "starting cluster log")
    svc = KvstoreService(status, clog, nodename, node_ip, restart_delay=1.0)

    async def run_cmap() -> None:
        from cpg import ClusterInfo, Cmap, CorosyncError

        def install(info: ClusterInfo) -> None:
            nodes = [NodeInfo(n.name, n.nodeid, n.votes) for n in info.nodes]
            status.set_cluster_info(info.cluster_name, info.config_version, nodes)

        while True:
            try:
                c = Cmap(handler=install)
                install(c.track_config())
                await c.run()
            except CorosyncError as exc:
                emit(ev="error", where="cmap", msg=str(exc))
            await trio.sleep(1)

    def state() -> dict[str, Any]:
        kv = {nodename: {k.decode(): v.data.hex() for k, v in status.kv.items()}}
        for n in status.nodes.values():
            if n.kv is not None:
                kv[n.name] = {k.decode(): v.data.hex() for k, v in n.kv.items()}
        return {
            "ev": "state",
            "mode": svc.dfsm.mode.name,
            "members": svc.dfsm.member_list(),
            "online": sorted(n.name for n in status.nodes.values() if n.online),
            "ips": status.node_ips,
            "kv": kv,
            "rrd": render_rrd(status),
            "log": json.loads(clog.dump())["data"],
        }

    async def main() -> None:
        send, recv = trio.open_memory_channel[dict[str, Any]](100)
        token = trio.lowlevel.current_trio_token()

        def reader() -> None:
            for line in sys.stdin:
                trio.from_thread.run(send.send, json.loads(line), trio_token=token)
            trio.from_thread.run_sync(send.close, trio_token=token)

        async with trio.open_nursery() as n:
            n.start_soon(run_cmap)
            n.start_soon(svc.run)
            threading.Thread(target=reader, daemon=True).start()
            emit(ev="ready")
            async for cmd in recv:
                op = cmd["op"]
                if op == "state":
                    emit(**state())
                elif op == "set":
                    res = svc.set_status(cmd["key"].encode(), bytes.fromhex(cmd["value"]))
                    emit(ev="result", id=cmd["id"], result=res)
                elif op == "log":
                    ok = svc.log(cmd["user"], cmd["tag"], cmd["pri"], cmd["msg"])
                    emit(ev="result", id=cmd["id"], result=ok)
                elif op == "exit":
                    break
            n.cancel_scope.cancel()

    trio.run(main)


if __name__ == "__main__":
    _agent(sys.argv[1], sys.argv[2])
    raise SystemExit(0)


# ---------------------------------------------------------------------------- tests

from tests.cluster.harness import Cluster, ClusterFactory, JsonProc, Node  # noqa: E402

NAMES = ["node1", "node2", "node3"]


class Agents:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.procs: dict[str, JsonProc] = {}
        self.next_id = 1
        for node in cluster:
            self.start(node)

    def start(self, node: Node) -> None:
        p = node.spawn_json([sys.executable, "-u", __file__, node.name, node.addr])
        p.wait_for("ready", timeout=30)
        self.procs[node.name] = p

    def stop(self, name: str) -> None:
        p = self.procs.pop(name)
        p.send(op="exit")
        assert p.close(timeout=10) == 0, p.stderr_tail()

    def call(self, name: str, **cmd: Any) -> Any:
        rid = self.next_id
        self.next_id += 1
        p = self.procs[name]
        start = p.mark()
        p.send(id=rid, **cmd)
        ev = p.wait_for(lambda e: e.get("ev") == "result" and e["id"] == rid, start=start)
        return ev["result"]

    def state(self, name: str) -> dict[str, Any]:
        p = self.procs[name]
        start = p.mark()
        p.send(op="state")
        return p.wait_for("state", start=start, timeout=10)

    def wait(self, what: str, pred: Any, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            states = {name: self.state(name) for name in self.procs}
            if pred(states):
                return states
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not reached within {timeout}s: {states}")
            time.sleep(0.2)


def _all_online(states: dict[str, dict[str, Any]]) -> bool:
    return all(s["mode"] == "SYNCED" and s["online"] == NAMES for s in states.values())


def _messages(s: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["node"], e["msg"]) for e in s["log"]]


def test_kvstore_group_on_real_corosync(cluster: ClusterFactory) -> None:
    c = cluster(3)
    a = Agents(c)
    ips = {nd.name: nd.addr for nd in c}
    a.wait("all online with every node IP",
           lambda st: _all_online(st) and all(s["ips"] == ips for s in st.values()))  # fmt: skip

    # a key-value, an RRD update and a log entry reach every node
    assert a.call("node1", op="set", key="kv/test", value=b"v1\0".hex()) == 0
    rrd = "pve2-node/node1:1000:0:1700000000:0.15:8:0.02"
    assert a.call("node1", op="set", key="rrd/pve2-node/node1",
                  value=(rrd.split(":", 1)[1] + "\0").encode().hex()) == 0  # fmt: skip
    assert a.call("node1", op="set", key="x" * 10, value=("y" * 40000).encode().hex()) == -27
    assert a.call("node2", op="log", user="root@pam", tag="pvedaemon", pri=6, msg='hi "all"')
    entry = ("node2", 'hi "all"')  # printed escaped, parsed back
    states = a.wait("kv, rrd and log everywhere", lambda st: all(
        s["kv"].get("node1", {}).get("kv/test") == b"v1\0".hex()
        and s["rrd"] == rrd + "\n" and entry in _messages(s) for s in st.values()))  # fmt: skip
    assert all("x" * 10 not in s["kv"].get("node1", {}) for s in states.values())

    # online flags follow the kvstore group's membership, not a cached view
    c[3].partition()
    a.wait("node3 seen offline", lambda st: all(
        st[n]["online"] == ["node1", "node2"] for n in ("node1", "node2"))
        and st["node3"]["online"] == ["node3"], timeout=40)  # fmt: skip
    c[3].heal()
    a.wait("node3 back online", _all_online, timeout=60)

    # a restarted node gets the merged log and every node's key-values and IPs back
    a.stop("node3")
    a.wait("node3 gone", lambda st: all(s["online"] == ["node1", "node2"] for s in st.values()))
    a.start(c[3])
    states = a.wait("node3 resynced", lambda st: _all_online(st) and all(
        s["ips"] == ips and entry in _messages(s) for s in st.values()))  # fmt: skip
    s3 = states["node3"]
    assert s3["kv"]["node1"] == {"kv/test": b"v1\0".hex()}  # re-broadcast at the sync
    starts = [n for n, msg in _messages(s3) if msg == "starting cluster log"]
    assert sorted(starts) == ["node1", "node2", "node3", "node3"]  # the old node3 entry too
    assert _messages(s3) == _messages(states["node1"]) == _messages(states["node2"])
