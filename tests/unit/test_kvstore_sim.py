"""Three Python kvstore nodes on the deterministic in-memory CPG (pmxcfs.dfsm.sim): joins,
partitions and restarts, and the exact announce rules of the sync (status-ipc §2.4)."""

from __future__ import annotations

from dataclasses import dataclass

from pmxcfs.dfsm.codec import Mode
from pmxcfs.dfsm.sim import Sim
from pmxcfs.kvstore.app import LOG, UPDATE, KvstoreApp
from pmxcfs.kvstore.codec import decode_kv_update
from pmxcfs.kvstore.machine import KvstoreDfsm
from pmxcfs.status.clusterlog import ClusterLog
from pmxcfs.status.state import ClusterStatus, NodeInfo
from tests.clock import Clock

NODES = {1: "n1", 2: "n2", 3: "n3"}


@dataclass
class Proc:
    status: ClusterStatus
    clog: ClusterLog
    app: KvstoreApp
    dfsm: KvstoreDfsm

    @property
    def online(self) -> set[str]:
        return {n.name for n in self.status.nodes.values() if n.online}


def _proc(sim: Sim, clock: Clock, nodeid: int, pid: int) -> Proc:
    name = NODES[nodeid]
    status = ClusterStatus(name, clock=clock)
    status.set_cluster_info("clu", 1, [NodeInfo(n, i) for i, n in NODES.items()])
    clog = ClusterLog(name, clock=clock)
    clog.add_local("root", "cluster", 6, "starting cluster log", pid=pid)
    app = KvstoreApp(status, clog, f"10.0.0.{nodeid}")
    dfsm = KvstoreDfsm(app, nodeid, pid, clock=clock)
    sim.add(dfsm)
    return Proc(status, clog, app, dfsm)


def _count_updates(sim: Sim) -> dict[bytes, int]:
    """KVSTORE_UPDATE keys multicast but not yet delivered."""
    seen: dict[bytes, int] = {}
    for c in sim.components:
        for _sender, data in c.queue:
            if data[0] == 0 and data[2] == UPDATE:
                k = decode_kv_update(data[24:]).key
                seen[k] = seen.get(k, 0) + 1
    return seen


def test_join_partition_restart() -> None:
    sim = Sim(total_nodes=3)
    clock = Clock(1_700_000_000.0)
    p = {i: _proc(sim, clock, i, 100 + i) for i in NODES}
    sim.join(p[1].dfsm.me)
    sim.run()
    assert p[1].status.node_ips == {"n1": "10.0.0.1"}  # announced when alone too
    sim.join(p[2].dfsm.me, p[1].dfsm.me)
    sim.join(p[3].dfsm.me, p[1].dfsm.me)
    sim.run()
    ips = {n: f"10.0.0.{i}" for i, n in NODES.items()}
    for x in p.values():
        assert x.dfsm.mode == Mode.SYNCED and x.online == {"n1", "n2", "n3"}
        assert x.status.node_ips == ips
        assert len(x.clog.newest_first()) == 3

    # a key-value and a log entry from n1 reach the others
    _res, payload = p[1].app.set_status(b"kv/a", b"1")
    assert payload is not None
    sim.request(p[1].dfsm.me, UPDATE, payload, wait=False)
    entry = p[1].app.log_entry("root@pam", "t", 6, "hello")
    assert entry is not None
    sim.request(p[1].dfsm.me, LOG, entry, wait=False)
    sim.run()
    for x in (p[2], p[3]):
        kv = x.status.nodes[1].kv
        assert kv is not None and kv.get(b"kv/a") == b"1"
        assert x.clog.newest_first()[0].msg == b"hello"

    # partition: n3 alone sees only itself, the others see it offline
    sim.partition([{1, 2}, {3}])
    sim.run()
    assert p[1].online == p[2].online == {"n1", "n2"} and p[3].online == {"n3"}
    sim.partition([{1, 2, 3}])
    sim.run()
    assert all(x.online == {"n1", "n2", "n3"} for x in p.values())

    # restart n3: a new process gets the merged log and n1's store (re-broadcast) back
    sim.remove(p[3].dfsm.me)
    sim.run()
    clock.t += 10
    new3 = _proc(sim, clock, 3, 999)
    sim.join(new3.dfsm.me, p[1].dfsm.me)
    sim.run()
    kv = new3.status.nodes[1].kv
    assert kv is not None and kv.get(b"kv/a") == b"1"
    assert new3.status.node_ips == ips
    assert [e.msg for e in new3.clog.newest_first()] == [e.msg for e in p[1].clog.newest_first()]
    assert len(new3.clog.newest_first()) == 5  # 3 start entries, hello, the new start
    assert new3.online == {"n1", "n2", "n3"}


def test_sync_merges_the_live_local_log() -> None:
    """An entry made after our STATE went out is still in the merged log (C merges its ring)."""
    sim = Sim(total_nodes=2)
    clock = Clock(1_700_000_000.0)
    a, b = _proc(sim, clock, 1, 101), _proc(sim, clock, 2, 102)
    sim.join(a.dfsm.me)
    sim.join(b.dfsm.me, a.dfsm.me)
    assert sim.step() and sim.step()  # SYNC_START, a's STATE
    clock.t += 1
    assert a.app.log_entry("root@pam", "t", 6, "made during the sync") is not None
    sim.run()
    assert a.clog.newest_first()[0].msg == b"made during the sync"
    assert len(a.clog.newest_first()) == 3


def test_announce_only_on_entering_synced() -> None:
    sim = Sim(total_nodes=2)
    clock = Clock(1_700_000_000.0)
    a, b = _proc(sim, clock, 1, 101), _proc(sim, clock, 2, 102)
    a.app.set_status(b"kv/mine", b"x")
    sim.join(a.dfsm.me)
    assert _count_updates(sim) == {b"nodeip": 1}  # START -> SYNCED alone
    sim.run()
    sim.join(b.dfsm.me, a.dfsm.me)
    assert sim.step() and sim.step()  # SYNC_START, then a's STATE: no update yet
    assert _count_updates(sim) == {}
    assert sim.step()  # b's STATE: a re-broadcasts its store, then both announce
    assert _count_updates(sim) == {b"kv/mine": 1, b"nodeip": 2}
    sim.run()
    assert a.status.node_ips == b.status.node_ips == {"n1": "10.0.0.1", "n2": "10.0.0.2"}
    kv = b.status.nodes[1].kv
    assert kv is not None and kv.get(b"kv/mine") == b"x"
    # SYNCED with two members -> SYNCED alone: no mode change, so no announce (C's synced hook)
    syncs = a.dfsm.stats.syncs
    sim.remove(b.dfsm.me)
    assert a.dfsm.mode == Mode.SYNCED and a.dfsm.stats.syncs == syncs
    assert _count_updates(sim) == {}
