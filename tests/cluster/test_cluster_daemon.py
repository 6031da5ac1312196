"""End-to-end cluster tests: three real pmxcfs daemons (ours) on real corosync.

One 3-node cluster (tests/cluster/pve_nodes.py) is shared by the module; every test starts
from a healthy cluster (all healed, all daemons running in cluster mode, quorate, identical)
and works in its own top-level directory.  Files are read and written through the FUSE
mount inside each node's mount namespace by the node's fs agent.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pmxcfs.dcdb.codec import FUSE_HEADER, FuseOp, Subtype, UnlockMsg
from pmxcfs.dfsm import codec
from tests.cluster.harness import HarnessError, JsonProc
from tests.cluster.pve_nodes import PveCluster, PveNode, Snapshot, describe_diff
from tests.polling import wait_until

pytestmark = pytest.mark.cluster

DIR = None  # marks a directory in an expected tree


@pytest.fixture(scope="module")
def pve() -> Iterator[PveCluster]:
    with PveCluster(3) as pc:
        try:
            yield pc
        finally:
            keep = os.environ.get("PMXCFS_TEST_LOG_DIR")
            if keep:  # debugging aid: the node tmpdirs go away with the cluster
                os.makedirs(keep, exist_ok=True)
                for pn in pc:
                    shutil.copy(pn.log_path, os.path.join(keep, f"{pn.name}-pmxcfs.log"))


@pytest.fixture
def pc(pve: PveCluster) -> Iterator[PveCluster]:
    """The shared cluster, healthy and converged; no daemon may log a traceback."""
    restore(pve)
    seen = {pn.name: len(pn.log_text()) for pn in pve}
    yield pve
    for pn in pve:
        new = pn.log_text()[seen[pn.name] :]
        assert "Traceback" not in new, f"{pn.name} logged an exception:\n{new[-3000:]}"


def restore(pc: PveCluster) -> None:
    """Undo whatever a (failed) test left: heal links, restart missing or local daemons."""
    pc.cluster.heal_all()
    for pn in pc:
        pn.start_agent()
        if pn.daemon_running and pn.daemon_local:
            pn.stop_daemon()
        if not pn.daemon_running:
            pn.stop_daemon()  # reap a dead one
            pn.start_daemon()
    pc.wait_ready(timeout=90)
    try:
        writable_everywhere(pc, "restore", timeout=30)
    except AssertionError:  # e.g. dcdb stopped for good (VERSION_ERROR): restart
        for pn in pc:
            pn.stop_daemon()
            pn.start_daemon()
        pc.wait_ready(timeout=90)
        writable_everywhere(pc, "restore", timeout=30)
    pc.wait_converged(timeout=60)


# ---------------------------------------------------------------------------- helpers


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def matches(snap: Snapshot, want: dict[str, bytes | None]) -> bool:
    if set(snap) != set(want):
        return False
    for path, data in want.items():
        kind, _mode, size, _mtime, digest = snap[path]
        if data is None:
            if kind != "d":
                return False
        elif kind != "f" or size != len(data) or digest != sha(data):
            return False
    return True


def expect(
    pc: PveCluster, root: str, want: dict[str, bytes | None], timeout: float = 20.0
) -> Snapshot:
    """Wait until every node shows exactly *want* below *root* (kind, content, and the
    same size/mode/mtime everywhere); return the common snapshot."""
    deadline = time.monotonic() + timeout
    while True:
        snaps = {pn.name: pn.snapshot(root) for pn in pc}
        first = next(iter(snaps.values()))
        if all(s == first for s in snaps.values()) and matches(first, want):
            return first
        if time.monotonic() > deadline:
            raise AssertionError(
                f"below {root!r}: want {sorted(want)}\n"
                + "\n".join(f"{n}: {s}" for n, s in snaps.items())
                + "\n"
                + describe_diff(snaps)
            )
        time.sleep(0.1)


def ack_of(rid: int) -> Callable[[dict[str, Any]], bool]:
    """Matches the per-file acks of burst command *rid*."""
    return lambda e: e.get("ev") == "ack" and e["id"] == rid


def mkdirs(pn: PveNode, *paths: str) -> None:
    for p in paths:
        e = pn.err("mkdir", path=p)
        assert e in (None, "EEXIST"), (p, e)


def vmlist(pn: PveNode) -> dict[str, Any]:
    raw = pn.read(".vmlist")
    assert raw is not None
    ids: dict[str, Any] = json.loads(raw).get("ids", {})
    return ids


def writable_everywhere(pc: PveCluster, tag: str, timeout: float = 60.0) -> None:
    """Each node creates a file (EBUSY while its dcdb rejoins is retried); all see all."""
    for pn in pc:
        path = f"probe-{tag}-{pn.name}"
        deadline = time.monotonic() + timeout
        while True:
            res = pn.call("write", path=path, data=f"{tag} from {pn.name}\n", timeout=timeout)
            if res["ok"]:
                break
            assert res["errno"] == "EBUSY", (pn.name, res)
            assert time.monotonic() < deadline, f"{pn.name} not writable: {res}"
            time.sleep(0.5)
    want = {f"probe-{tag}-{pn.name}": f"{tag} from {pn.name}\n".encode() for pn in pc}
    deadline = time.monotonic() + 30
    while not all(pn2.read(p) == d for pn2 in pc for p, d in want.items()):
        assert time.monotonic() < deadline, "probe files did not replicate"
        time.sleep(0.2)
    for p in want:
        pc[1].ok("unlink", path=p)


# ---------------------------------------------------------------------------- 1. operations


def test_members_show_every_node_online_with_its_ip(pc: PveCluster) -> None:
    """Online flags and IPs come from the status group (pve_kvstore_v1), as on C nodes."""
    want = {pn.name: pn.node.addr for pn in pc}

    def complete(pn: PveNode) -> dict[str, Any] | None:
        nodes: dict[str, Any] = pn.members().get("nodelist", {})
        ok = all(nodes.get(k, {}).get("ip") == ip for k, ip in want.items())
        return nodes if ok else None

    for pn in pc:
        nodes = wait_until(f"{pn.name} shows every node's IP", lambda pn=pn: complete(pn))
        assert all(nodes[k]["online"] == 1 for k in want), nodes


def test_every_operation_replicates(pc: PveCluster) -> None:
    n1, n2, n3 = pc[1], pc[2], pc[3]
    n1.ok("mkdir", path="t1")
    wait_until("t1 everywhere", lambda: all(pn.call("stat", path="t1")["ok"] for pn in pc))
    tree: dict[str, bytes | None] = {}

    def step(pn: PveNode, op: str, **kw: Any) -> Snapshot:
        pn.ok(op, **kw)
        return expect(pc, "t1", tree)

    tree["t1/d"] = DIR
    step(n2, "mkdir", path="t1/d")
    tree["t1/f"] = b""
    step(n3, "write", path="t1/f", mode="x")
    tree["t1/f"] = b"hello world"
    step(n1, "write", path="t1/f", data="hello world", mode="r+")
    tree["t1/f"] = b"hello XYrld"
    step(n2, "write", path="t1/f", data="XY", mode="r+", offset=6)
    tree["t1/f"] = b"hello XYrld!!"  # O_APPEND on a node that did not write the file
    step(n3, "write", path="t1/f", data="!!", mode="a")
    tree["t1/f"] = b"hello XY"
    step(n1, "truncate", path="t1/f", size=8)
    tree["t1/f"] = b"hello XY\0\0"
    step(n2, "truncate", path="t1/f", size=10)
    tree["t1/f"] = b"hello XY\0\0\0\0Z"  # write past EOF leaves a zero-filled hole
    step(n3, "write", path="t1/f", data="Z", mode="r+", offset=12)
    tree["t1/g"] = b"other"
    step(n1, "write", path="t1/g", data="other")
    tree["t1/f2"] = tree.pop("t1/f")
    step(n2, "rename", path="t1/f", to="t1/f2")
    tree["t1/g"] = tree.pop("t1/f2")  # rename onto an existing file replaces it
    step(n3, "rename", path="t1/f2", to="t1/g")
    snap = step(n1, "utime", path="t1/g", mtime=1234567890)
    assert snap["t1/g"][3] == 1234567890
    snap = step(n2, "utime", path="t1/d", mtime=1111111111)
    assert snap["t1/d"][3] == 1111111111
    tree["t1/d/x"] = b"x"
    step(n3, "write", path="t1/d/x", data="x")
    assert n1.err("rmdir", path="t1/d") == "ENOTEMPTY"
    assert n2.err("rename", path="t1/d", to="t1/e") == "ENOTEMPTY"
    del tree["t1/d/x"]
    step(n3, "unlink", path="t1/d/x")
    tree["t1/e"] = tree.pop("t1/d")
    snap = step(n1, "rename", path="t1/d", to="t1/e")
    del tree["t1/e"]
    step(n2, "rmdir", path="t1/e")
    # a write through a file created elsewhere, then overwrite with O_TRUNC
    tree["t1/g"] = b"short"
    step(n3, "write", path="t1/g", data="short")
    del tree["t1/g"]
    step(n1, "unlink", path="t1/g")
    n2.ok("rmdir", path="t1")
    wait_until(
        "t1 gone everywhere", lambda: all(pn.err("stat", path="t1") == "ENOENT" for pn in pc)
    )
    pc.wait_converged()


# ---------------------------------------------------------------------------- 2. concurrency


def test_concurrent_writers_converge(pc: PveCluster) -> None:
    shared = [f"t2/shared/s{i}" for i in range(5)]
    mkdirs(pc[1], "t2", "t2/shared", *(f"t2/{pn.name}" for pn in pc))
    for s in shared:
        pc[1].write(s, "initial\n")
    pc.wait_converged(root="t2")
    rids = [
        (pn, pn.send("burst", prefix=f"t2/{pn.name}/f", count=100, tag=pn.name, shared=shared))
        for pn in pc
    ]
    t0 = time.monotonic()
    for pn, rid in rids:
        res = pn.result(rid, timeout=240)
        assert res["ok"] and res["value"] == 100, (pn.name, res)
    elapsed = time.monotonic() - t0
    snap = pc.wait_converged(root="t2", timeout=60)
    want: dict[str, bytes | None] = {"t2/shared": DIR}
    for pn in pc:
        want[f"t2/{pn.name}"] = DIR
        for i in range(100):
            name = f"t2/{pn.name}/f{i}"
            want[name] = f"{pn.name}:{name}:{i}\n".encode()
    for s in shared:
        assert snap[s][0] == "f"
        want[s] = pc[1].read(s)
    assert matches(snap, want), describe_diff({"got": snap})
    # the whole tree, not only t2, is identical
    pc.wait_converged()
    print(f"3 concurrent writers, 3x(100 files + 100 shared overwrites): {elapsed:.1f}s")


# ---------------------------------------------------------------------------- 3. vmid / locks


def test_vmid_conflict_migration_and_locks(pc: PveCluster) -> None:
    n1, n2, n3 = pc[1], pc[2], pc[3]
    mkdirs(
        n1,
        "nodes",
        "nodes/node1",
        "nodes/node1/qemu-server",
        "nodes/node2",
        "nodes/node2/qemu-server",
        "nodes/node3",
        "nodes/node3/lxc",
    )
    cfg1, cfg2 = "nodes/node1/qemu-server/100.conf", "nodes/node2/qemu-server/100.conf"
    n1.write(cfg1, "name: vm100\n")
    wait_until(
        "vm 100 on node1 everywhere",
        lambda: all(vmlist(pn).get("100", {}).get("node") == "node1" for pn in pc),
    )
    assert n2.err("write", path=cfg2, data="dup\n") == "EEXIST"
    assert n3.err("write", path="nodes/node3/lxc/100.conf", data="dup\n") == "EEXIST"
    # migration to node2, done from node2
    n2.ok("rename", path=cfg1, to=cfg2)
    wait_until(
        "vm 100 on node2 everywhere",
        lambda: all(
            vmlist(pn).get("100", {}).get("node") == "node2"
            and pn.read(cfg2) == b"name: vm100\n"
            and pn.read(cfg1) is None
            for pn in pc
        ),
    )
    assert vmlist(n3)["100"]["type"] == "qemu"
    assert n1.err("write", path=cfg1, data="again\n") == "EEXIST"
    # the same new VMID created on all three nodes at once: exactly one wins
    paths = {
        n1: "nodes/node1/qemu-server/200.conf",
        n2: "nodes/node2/qemu-server/200.conf",
        n3: "nodes/node3/lxc/200.conf",
    }
    rids = [(pn, pn.send("write", path=p, data=f"{pn.name}\n")) for pn, p in paths.items()]
    results = [pn.result(rid) for pn, rid in rids]
    winners = [pn for (pn, _), r in zip(rids, results, strict=True) if r["ok"]]
    assert len(winners) == 1, results
    assert all(r["errno"] == "EEXIST" for r in results if not r["ok"]), results
    wait_until(
        "vm 200 agreed",
        lambda: all(vmlist(pn).get("200", {}).get("node") == winners[0].name for pn in pc),
    )

    # locks: mkdir is a cluster-wide atomic acquire
    mkdirs(n1, "priv", "priv/lock")
    n1.ok("mkdir", path="priv/lock/t3")
    assert n2.err("mkdir", path="priv/lock/t3") == "EEXIST"
    assert n3.err("mkdir", path="priv/lock/t3") == "EEXIST"
    n1.ok("rmdir", path="priv/lock/t3")
    n2.ok("mkdir", path="priv/lock/t3")
    assert n3.err("mkdir", path="priv/lock/t3") == "EEXIST"
    n2.ok("rmdir", path="priv/lock/t3")
    rids = [(pn, pn.send("mkdir", path="priv/lock/race")) for pn in pc]
    results = [pn.result(rid) for pn, rid in rids]
    assert sum(r["ok"] for r in results) == 1, results
    assert all(r["errno"] == "EEXIST" for r in results if not r["ok"]), results
    pc.wait_converged()
    # clean up
    for pn, p in paths.items():
        if pn in winners:
            pn.ok("unlink", path=p)
    n3.ok("unlink", path=cfg2)
    n1.ok("rmdir", path="priv/lock/race")
    wait_until("vmlist empty", lambda: all(not vmlist(pn) for pn in pc))
    pc.wait_converged()


# ---------------------------------------------------------------------------- 4. partition


def test_partitioned_node_is_read_only_and_catches_up(pc: PveCluster) -> None:
    n1, n2, n3 = pc[1], pc[2], pc[3]
    mkdirs(n1, "t4")
    n1.write("t4/pre", "before\n")
    pc.wait_converged()
    assert n3.ok("lstat", path="local")["mode"] & 0o200
    pc.cluster[3].partition()
    try:
        wait_until("node3 not quorate", lambda: not n3.quorate_online()[0], timeout=60)
        wait_until(
            "majority sees node3 offline",
            lambda: all(pn.quorate_online() == (True, ["node1", "node2"]) for pn in (n1, n2)),
            timeout=60,
        )
        members3 = n3.members()
        assert members3["cluster"]["quorate"] == 0
        assert n3.err("write", path="t4/rogue", data="x") == "EACCES"
        assert n3.err("write", path="t4/pre", data="x", mode="a") == "EACCES"
        assert n3.err("mkdir", path="t4/rogue-dir") == "EACCES"
        assert n3.err("unlink", path="t4/pre") == "EACCES"
        assert n3.err("rename", path="t4/pre", to="t4/moved") == "EACCES"
        assert n3.err("utime", path="t4/pre", mtime=1) == "EACCES"
        # modes lose their write bits (kernel attr cache: up to 1 s)
        wait_until(
            "local symlink loses its write bit",
            lambda: not n3.ok("lstat", path="local")["mode"] & 0o200,
            timeout=10,
        )
        wait_until(
            "t4 read-only", lambda: n3.ok("stat", path="t4")["mode"] & 0o777 == 0o555, timeout=10
        )
        assert n3.ok("stat", path="t4/pre")["mode"] & 0o777 == 0o440
        assert n1.ok("lstat", path="local")["mode"] & 0o200
        # the majority keeps writing
        for i in range(10):
            n1.write(f"t4/maj1-{i}", f"n1 {i}\n")
            n2.write(f"t4/maj2-{i}", f"n2 {i}\n")
        n2.write("t4/pre", "changed by the majority\n")
        n1.ok("utime", path="t4/maj1-0", mtime=1500000000)
        pc.wait_converged(nodes=[n1, n2])
        assert n3.read("t4/pre") == b"before\n"  # still readable, still the old data
        assert n3.read("t4/maj1-0") is None
    finally:
        pc.cluster[3].heal()
    pc.wait_ready(timeout=90)
    snap = pc.wait_converged(timeout=60)
    assert snap["t4/pre"][4] == sha(b"changed by the majority\n")
    assert snap["t4/maj1-0"][3] == 1500000000
    assert all(f"t4/maj{k}-{i}" in snap for k in (1, 2) for i in range(10))
    assert "t4/rogue" not in snap
    wait_until(
        "node3 writable bit back", lambda: n3.ok("lstat", path="local")["mode"] & 0o200, timeout=10
    )
    n3.write("t4/after-heal", "node3 writes again\n")
    expect_file(pc, "t4/after-heal", b"node3 writes again\n")


def test_quorate_node_alone_in_the_group_refuses_writes(pc: PveCluster) -> None:
    """Issue 10, loss 2: corosync counts all three nodes (quorate), but node2's and node3's
    pmxcfs are gone, so node1 is alone in pve_dcdb_v1 and its tree may be stale. It refuses
    writes (EACCES, read-only modes) instead of acknowledging what a later sync would drop,
    and opens again as soon as a second daemon joins and syncs."""
    n1, n2, n3 = pc[1], pc[2], pc[3]
    mkdirs(n1, "t4b")
    n1.write("t4b/pre", "before\n")
    pc.wait_converged()
    n2.stop_daemon()
    n3.stop_daemon()
    try:
        wait_until(
            "node1 refuses writes alone",
            lambda: n1.err("write", path="t4b/alone", data="x") == "EACCES",
            timeout=30,
        )
        assert n1.members()["cluster"]["quorate"] == 1  # corosync's view is unchanged
        assert n1.err("mkdir", path="t4b/alone-dir") == "EACCES"
        assert n1.err("write", path="t4b/pre", data="x", mode="a") == "EACCES"
        wait_until(
            "t4b read-only on node1",
            lambda: n1.ok("stat", path="t4b")["mode"] & 0o777 == 0o555,
            timeout=10,
        )
        assert n1.read("t4b/pre") == b"before\n"
        assert "writes refused (replication group holds 1 of the 2 votes" in n1.log_text()
        n2.start_daemon()
        wait_until(
            "node1 writable with node2",
            lambda: n1.call("write", path="t4b/pair", data="pair\n")["ok"],
            timeout=60,
        )
    finally:
        for pn in (n2, n3):
            if not pn.daemon_running:
                pn.start_daemon()
    pc.wait_ready(timeout=90)
    snap = pc.wait_converged(timeout=60)
    assert "t4b/alone" not in snap and "t4b/alone-dir" not in snap
    assert snap["t4b/pair"][4] == sha(b"pair\n")


def expect_file(pc: PveCluster, path: str, data: bytes, timeout: float = 20.0) -> None:
    wait_until(f"{path} everywhere", lambda: all(pn.read(path) == data for pn in pc), timeout)


# ---------------------------------------------------------------------------- 5. restart


BURST = 1200  # per writer: long enough to outlast node1's restart and sync


def test_restarted_daemon_catches_up(pc: PveCluster) -> None:
    # node1: the lowest node id, i.e. the sync coordinator, goes away and comes back
    n1, n2, n3 = pc[1], pc[2], pc[3]
    mkdirs(n2, "t5")
    for i in range(10):
        n2.write(f"t5/base{i}", f"base {i}\n")
    pc.wait_converged()
    assert n1.stop_daemon() == 0
    want: dict[str, bytes | None] = {f"t5/base{i}": f"base {i}\n".encode() for i in range(10)}
    for i in range(30):
        pn = (n2, n3)[i % 2]
        pn.write(f"t5/new{i}", f"new {i} from {pn.name}\n")
        want[f"t5/new{i}"] = f"new {i} from {pn.name}\n".encode()
    for i in range(0, 10, 3):
        n3.write(f"t5/base{i}", f"changed {i}\n")
        want[f"t5/base{i}"] = f"changed {i}\n".encode()
    for i in (1, 4):
        n2.ok("unlink", path=f"t5/base{i}")
        del want[f"t5/base{i}"]
    n3.ok("rename", path="t5/base2", to="t5/renamed2")
    want["t5/renamed2"] = want.pop("t5/base2")
    n2.ok("mkdir", path="t5/newdir")
    want["t5/newdir"] = DIR
    # node1 comes back while the others keep writing: its sync runs amid their writes
    bursts = []
    for pn in (n2, n3):
        assert pn.agent is not None
        mark = pn.agent.mark()
        rid = pn.send("burst", prefix=f"t5/{pn.name}-", count=BURST, tag=pn.name, acks=True)
        pn.agent.wait_count(ack_of(rid), 10, start=mark, timeout=30)
        bursts.append((pn, rid))
        for i in range(BURST):
            name = f"t5/{pn.name}-{i}"
            want[name] = f"{pn.name}:{name}:{i}\n".encode()
    n1.start_daemon()
    mounted = time.monotonic()
    for pn, rid in bursts:
        res = pn.result(rid, timeout=180)
        assert res["ok"] and res["value"] == BURST, res
        assert res["t1"] > mounted + 1.0, "the writes ended before node1 was back: make more"
    pc.wait_ready(timeout=60)
    expect(pc, "t5", want, timeout=60)
    pc.wait_converged()
    n1.write("t5/from-restarted", "n1 is back\n")
    expect_file(pc, "t5/from-restarted", b"n1 is back\n")
    # node1 was only behind: what the others changed while it was away is no loss of its
    # own (its sync marker was written exactly at the clean stop)
    saved = [str(p) for p in n1.lost_found.rglob("*") if "t5" in p.parts and p.is_file()]
    assert saved == [], saved


# ---------------------------------------------------------------------------- 6. SIGKILL


def test_sigkill_mid_burst_loses_no_acknowledged_write(pc: PveCluster) -> None:
    n1, n2, n3 = pc[1], pc[2], pc[3]
    mkdirs(n1, "t6")
    pc.wait_converged(root="t6")
    assert n3.agent is not None
    start = n3.agent.mark()
    rid = n3.send("burst", prefix="t6/f", count=2000, tag="kill", repeat=20, acks=True)
    n3.agent.wait_count(ack_of(rid), 40, start=start, timeout=60)
    n3.kill_daemon()
    res = n3.result(rid, timeout=30)
    assert not res["ok"], "the burst finished before the kill: make it longer"
    acked = {e["path"]: e["sha"] for e in n3.agent.events("ack", start) if e["id"] == rid}
    assert len(acked) >= 40
    # group commit: what node3 acknowledged is in node3's own database, though it died
    on_disk = db_files(n3)
    missing = [p for p, h in acked.items() if on_disk.get(p) != h]
    assert not missing, f"node3's config.db lacks its acknowledged writes: {missing[:5]}"
    # the survivors already have every write node3 acknowledged (agreed order, own delivery)
    for pn in (n1, n2):
        snap = pn.snapshot("t6")
        missing = [p for p, h in acked.items() if p not in snap or snap[p][4] != h]
        assert not missing, f"{pn.name} lacks acknowledged writes: {missing[:5]}"
    pc.wait_converged(nodes=[n1, n2])
    n3.start_daemon()
    pc.wait_ready(timeout=60)
    snap = pc.wait_converged(timeout=60)
    missing = [p for p, h in acked.items() if p not in snap or snap[p][4] != h]
    assert not missing, f"acknowledged writes lost: {missing[:5]}"
    # at most the one in flight (created, maybe partly written) goes beyond the acks
    extra = [p for p in snap if p.startswith("t6/") and p not in acked]
    assert len(extra) <= 1, extra
    n3.write("t6/after-crash", "ok\n")
    expect_file(pc, "t6/after-crash", b"ok\n")


def db_files(pn: PveNode) -> dict[str, str]:
    """path -> sha256 of every file in a copy of the node's config.db (WAL included)."""
    from pmxcfs.storage import Database

    tmp = Path(pn.pc.cluster.tmpdir) / f"dbcopy-{secrets.token_hex(3)}"
    tmp.mkdir()
    try:
        for suffix in ("", "-wal", "-shm"):
            src = pn.db_dir / f"config.db{suffix}"
            if src.exists():
                shutil.copy(src, tmp / f"config.db{suffix}")
        db, tree = Database.open(str(tmp / "config.db"))
        try:
            return {p: sha(e.data) for p, e in tree.walk() if not e.is_dir}
        finally:
            db.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------- 7. divergence


def test_diverged_node_loses_to_majority_and_keeps_lost_found(pc: PveCluster) -> None:
    n1, n2, n3 = pc[1], pc[2], pc[3]
    tok = secrets.token_hex(4)
    mkdirs(n1, "t7")
    n1.write("t7/shared", "original\n")
    n1.write("t7/del3", "node3 will delete this\n")
    pc.wait_converged()
    assert n3.stop_daemon() == 0
    # node3 alone, local mode, same database: it diverges
    n3.start_daemon(local=True)
    try:
        assert n3.members().get("cluster") is None  # local mode: no cluster information
        n3.write("t7/shared", f"diverged {tok}\n")
        n3.write("t7/only3", f"only on node3 {tok}\n")
        n3.ok("unlink", path="t7/del3")
        n3.ok("mkdir", path="t7/dir3")
    finally:
        assert n3.stop_daemon() == 0
    # the majority moves on, with more changes than node3 made (its version wins)
    for i in range(20):
        n1.write(f"t7/maj{i}", f"{i}\n")
    n2.write("t7/shared", "majority\n")
    pc.wait_converged(nodes=[n1, n2])
    n3.start_daemon()
    pc.wait_ready(timeout=60)
    want: dict[str, bytes | None] = {f"t7/maj{i}": f"{i}\n".encode() for i in range(20)}
    want["t7/shared"] = b"majority\n"
    want["t7/del3"] = b"node3 will delete this\n"
    expect(pc, "t7", want, timeout=60)
    pc.wait_converged()
    # what node3 lost was saved on node3's disk, and can be found by content
    saved: dict[bytes, list[Path]] = {}
    for root, _dirs, files in os.walk(n3.lost_found):
        for f in files:
            p = Path(root, f)
            saved.setdefault(p.read_bytes(), []).append(p)
    for content, rel in (
        (f"diverged {tok}\n", "t7/shared"),
        (f"only on node3 {tok}\n", "t7/only3"),
    ):
        paths = saved.get(content.encode())
        assert paths, f"{rel} ({content!r}) not in {n3.lost_found}: {sorted(saved.values())}"
        assert any(
            str(p.relative_to(n3.lost_found)).split("/", 1)[1].startswith(rel + ".v") for p in paths
        ), paths
    # ... and logged (only3's inode may have been reused by the majority: "replaced")
    lost_lines = [ln for ln in n3.log_text().splitlines() if "local entry 't7/" in ln]
    assert any("local entry 't7/shared'" in ln for ln in lost_lines), lost_lines
    assert any("local entry 't7/only3'" in ln for ln in lost_lines), lost_lines
    n3.write("t7/after", "rejoined\n")
    expect_file(pc, "t7/after", b"rejoined\n")


# ---------------------------------------------------------------------------- 8. hostile CPG


def position(agent: JsonProc, ev: dict[str, Any]) -> int:
    """Index of this very event in the agent's history (equal events recur)."""
    return next(i for i, e in enumerate(agent.history) if e is ev)


class Hostile:
    """The hostile group member (in node3) and the messages it sends."""

    def __init__(self, agent: JsonProc) -> None:
        self.agent = agent
        ready = agent.wait_for("ready", timeout=30)
        self.me = [ready["nodeid"], ready["pid"]]
        self.count = 0

    def epoch(self) -> codec.Epoch:
        ev = self.agent.events("state_sent")[-1]
        return codec.Epoch.unpack(bytes.fromhex(ev["epoch"]))

    def normal(self, subtype: int, payload: bytes, version: int = 1) -> bytes:
        self.count += 1
        return codec.encode_normal(subtype, version, int(time.time()), self.count, payload)

    def fuse(self, subtype: int, path: bytes | None, **kw: Any) -> bytes:
        return self.normal(subtype, FuseOp(path, **kw).encode())

    def send(self, msgs: list[bytes], timeout: float = 60.0) -> None:
        """Multicast and wait until all came back to us in the total order."""
        start = self.agent.mark()
        for m in msgs:
            self.agent.send(op="mcast", hex=m.hex())
        self.agent.wait_count("own", len(msgs), start=start, timeout=timeout)

    def wait_synced(self, start: int, n_daemons: int = 3, timeout: float = 60.0) -> None:
        """Wait for a membership with us and all daemons, then its UPDATE_COMPLETE."""
        ev = self.agent.wait_for(
            lambda e: e.get("ev") == "confchg" and len(e["members"]) == n_daemons + 1,
            start=start,
            timeout=timeout,
        )
        self.agent.wait_for("synced", start=position(self.agent, ev), timeout=timeout)


def test_hostile_cpg_messages(pc: PveCluster) -> None:
    n1, n3 = pc[1], pc[3]
    tok = secrets.token_hex(4)
    mkdirs(n1, "t8", "priv", "priv/lock")
    n1.ok("mkdir", path="priv/lock/held")
    pc.wait_converged()
    pids = {pn.name: pn.daemon_pid for pn in pc}
    leave_line = "[cluster] warning: dcdb: leaving group"
    leaves_before = {pn.name: pn.log_text().count(leave_line) for pn in pc}
    agent = n3.node.spawn_json(
        [sys.executable, "-u", "-m", "tests.cluster.pve_nodes", "hostile"], name="node3-hostile"
    )
    try:
        h = Hostile(agent)
        h.wait_synced(0)

        def daemons_in_group(ev: dict[str, Any]) -> int:
            return sum(1 for m in ev["members"] if m != h.me)

        # -- well-formed messages with hostile content: applied (or refused) identically,
        #    nobody leaves the group
        mark = agent.mark()
        h.send(
            [
                h.fuse(Subtype.CREATE, b"t8/from-stranger"),
                h.fuse(Subtype.WRITE, b"t8/from-stranger", data=b"written by a stranger\n"),
                h.fuse(Subtype.CREATE, b"../escape-" + tok.encode()),
                h.fuse(Subtype.CREATE, b"t8/../../../../tmp/escape-" + tok.encode()),
                h.fuse(Subtype.MKDIR, b"t8/.."),
                h.fuse(Subtype.CREATE, b"t8/."),
                h.fuse(Subtype.CREATE, b"/t8/absolute"),
                h.fuse(Subtype.CREATE, b""),
                h.fuse(Subtype.CREATE, None),
                h.fuse(Subtype.DELETE, b""),
                h.fuse(Subtype.DELETE, b"/"),
                h.fuse(Subtype.MKDIR, b"t8/\xff\xfe-not-utf8"),
                h.fuse(Subtype.CREATE, b"t8/nul\x00hidden"),
                h.fuse(Subtype.RENAME, b"t8/from-stranger", to=b"../../outside-" + tok.encode()),
                h.fuse(Subtype.RENAME, b"t8/from-stranger", to=b"t8/from-stranger"),
                h.fuse(Subtype.RENAME, b"t8/from-stranger", to=None),
                h.fuse(Subtype.RENAME, b"t8", to=b"t8/inside"),
                h.fuse(Subtype.WRITE, b"t8/from-stranger", data=b"x", offset=0xFFFFFFF0),
                h.fuse(Subtype.WRITE, b"t8/from-stranger", data=b"y" * (1024 * 1024 + 1)),
                h.fuse(Subtype.WRITE, b"t8/from-stranger", offset=0x7FFFFFFF, flags=1),
                h.fuse(Subtype.MTIME, b"t8", offset=0),
                h.fuse(Subtype.MTIME, b"priv/lock/held", offset=0),
                h.fuse(Subtype.MKDIR, b"corosync.conf/x"),
                h.fuse(Subtype.RENAME, b"corosync.conf", to=b"/corosync.conf"),
                h.fuse(Subtype.CREATE, b"t8/" + b"n" * 1000),
                # beyond FUSE_NAME_MAX (1024): no node could list the directory (EIO from
                # the kernel, like the reference) until it is gone again
                h.fuse(Subtype.CREATE, b"t8/" + b"L" * 5000),
                h.fuse(Subtype.DELETE, b"t8/" + b"L" * 5000),
                h.normal(Subtype.UNLOCK_REQUEST, UnlockMsg(b"\0" * 32, b"priv/lock/held").encode()),
                h.normal(Subtype.UNLOCK, UnlockMsg(b"\1" * 32, b"priv/lock/held").encode()),
                h.normal(Subtype.UNLOCK, UnlockMsg(b"\2" * 32, b"../../..").encode()),
                h.normal(Subtype.CREATE, FuseOp(b"t8/old-version").encode(), version=0),
                codec.encode_state(codec.MsgType.STATE, 1, 0, h.epoch(), b"garbage"),
                codec.encode_state(codec.MsgType.UPDATE, 1, 0, h.epoch(), b"\0" * 41),
                codec.encode_state(codec.MsgType.SYNC_START, 1, 0, codec.Epoch(9, 9, 9, 9)),
                codec.STATE_HEADER.pack(9, 0, 1, 0, 0, 1, 2, 3, 4) + b"unknown type",
                codec.STATE_HEADER.pack(200, 0, 1, 0, 0, *_epoch_fields(h.epoch())) + b"x" * 100,
            ]
        )
        writable_everywhere(pc, "batch")
        snap = pc.wait_converged()
        assert all(daemons_in_group(e) == 3 for e in agent.events("confchg", mark)), (
            "a well-formed message made a daemon leave: "
            + str(agent.events("confchg", mark))
            + pc.logs()
        )
        assert snap["t8/from-stranger"][4] == sha(b"written by a stranger\n")
        assert "t8/nul" in snap  # C-string semantics: the path ends at the first NUL
        assert "t8/" + "n" * 1000 in snap
        assert "t8/old-version" not in snap  # older protocol version: ignored
        assert not any("escape" in p or "outside" in p for p in snap), sorted(snap)
        assert "priv/lock/held" in snap  # wrong checksum: the lock stays
        assert n1.read("corosync.conf")
        for pn in pc:  # nothing escaped the tree on any node's disk
            pn.node.run(["sh", "-c", f"! ls -d /tmp/*{tok}* /*{tok}* /var/lib/*{tok}* 2>/dev/null"])

        # -- malformed messages: fatal per spec; every daemon leaves and resyncs
        fatal = {
            "shorter than a header": b"\x01" * 10,
            "NORMAL header cut": codec.BASE_HEADER.pack(0, 1, 1, 0, 0) + b"\0\0\0\0",
            "state header cut": codec.BASE_HEADER.pack(1, 0, 1, 0, 0) + b"\0" * 8,
            "unknown subtype": h.normal(99, b""),
            "bad FUSE lengths": h.normal(
                Subtype.WRITE, FUSE_HEADER.pack(0, 0, 1000, 0, 0) + b"t8/x\0"
            ),
            "FUSE path without NUL": h.normal(
                Subtype.CREATE, FUSE_HEADER.pack(0, 0, 4, 0, 0) + b"t8/z"
            ),
            "short unlock": h.normal(Subtype.UNLOCK, b"\0" * 10),
            "bad VERIFY_REQUEST": b"",  # built with the current epoch below
        }
        for what, msg in fatal.items():
            if what == "bad VERIFY_REQUEST":
                msg = codec.encode_state(codec.MsgType.VERIFY_REQUEST, 1, 0, h.epoch(), b"abc")
            mark = agent.mark()
            h.send([msg])
            try:
                agent.wait_for(
                    lambda e: e.get("ev") == "confchg" and daemons_in_group(e) == 0,
                    start=mark,
                    timeout=30,
                )
            except HarnessError as exc:
                raise AssertionError(f"{what}: the daemons did not leave\n{pc.logs()}") from exc
            h.wait_synced(mark, timeout=60)
            writable_everywhere(pc, f"after-{what.replace(' ', '-')}")
            pc.wait_converged()

        # -- a huge message (beyond the 1 MiB file limit, fragmented by corosync)
        mark = agent.mark()
        h.send([h.fuse(Subtype.WRITE, b"t8/from-stranger", data=b"z" * (3 * 1024 * 1024))])
        writable_everywhere(pc, "huge")
        assert all(daemons_in_group(e) == 3 for e in agent.events("confchg", mark))
        assert pc.wait_converged()["t8/from-stranger"][4] == sha(b"written by a stranger\n")

        for pn in pc:
            assert pn.daemon_running and pn.daemon_pid == pids[pn.name], pn.name
        leaves = {pn.name: pn.log_text().count(leave_line) - leaves_before[pn.name] for pn in pc}
        assert all(v == len(fatal) for v in leaves.values()), leaves

        # -- a newer protocol version stops dcdb for good (spec §2.8) - but nothing crashes,
        #    the data stays, and a daemon restart brings the node back
        mark = agent.mark()
        h.send([h.normal(Subtype.CREATE, FuseOp(b"t8/v2").encode(), version=2)])
        alone = agent.wait_for(
            lambda e: e.get("ev") == "confchg" and daemons_in_group(e) == 0, start=mark, timeout=30
        )
        time.sleep(7)  # longer than the rejoin delay: nobody comes back
        later = agent.events("confchg", position(agent, alone) + 1)
        assert not later, f"{later}\n{pc.logs()}"
        for pn in pc:
            assert pn.daemon_running, pn.name
            assert pn.err("write", path=f"t8/refused-{pn.name}", data="x") == "EBUSY"
        before = pc.wait_converged()
        assert "t8/v2" not in before
    finally:
        agent.close()
    for pn in pc:
        assert pn.stop_daemon() == 0, pn.log_tail()
        pn.start_daemon()
    pc.wait_ready(timeout=60)
    assert pc.wait_converged() == before
    writable_everywhere(pc, "restarted")


def _epoch_fields(e: codec.Epoch) -> tuple[int, int, int, int]:
    return e.epoch, e.time, e.nodeid, e.pid
