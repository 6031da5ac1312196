"""Mixed clusters: our daemon and the reference C daemon as nodes of one real corosync cluster.

The scenarios the suite runs on clusters of ours (test_cluster_daemon, test_ipc_cluster,
test_kvstore_cluster) run here on two module-scoped 3-node clusters: ours on node1 with the
reference on node2 and node3 (``ours-n1``), and the reverse (``ref-n1``).  Each operation is
done from nodes of both kinds.  The reference (``../shared/reference/pmxcfs``, or
$PMXCFS_REFERENCE) runs in the same private namespaces as ours (tests/cluster/pve_nodes.py).

One scenario more runs only on ``ours-n1``, where our node is the sync coordinator: a DFSM
VERIFY round after each kind of operation, in which every node must find the coordinator's
digest equal to its own (the reference logs a mismatch and leaves the group).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.pve_nodes import PveCluster, PveNode, Snapshot
from tests.cluster.test_cluster_daemon import (
    DIR,
    expect,
    expect_file,
    mkdirs,
    sha,
    vmlist,
    writable_everywhere,
)
from tests.cluster.test_ipc_cluster import ipc, name
from tests.polling import wait_until

pytestmark = pytest.mark.cluster

#: cluster layout -> nodeids that run the reference
LAYOUTS = {"ours-n1": frozenset({2, 3}), "ref-n1": frozenset({1})}

# what a node logs when its data differs from the verify coordinator's, or when it leaves
MISMATCH = ("wrong checksum", "checksum mismatch")
LEAVES = ("leaving CPG group", "dcdb: leaving group")
VERIFIED = "data verification successful"


@pytest.fixture(scope="module", params=list(LAYOUTS))
def mixed(request: pytest.FixtureRequest) -> Iterator[PveCluster]:
    with PveCluster(3, reference=LAYOUTS[request.param]) as pc:
        try:
            yield pc
        finally:
            keep = os.environ.get("PMXCFS_TEST_LOG_DIR")
            if keep:  # debugging aid: the node tmpdirs go away with the cluster
                os.makedirs(keep, exist_ok=True)
                for pn in pc:
                    dst = os.path.join(keep, f"{request.param}-{pn.name}-{pn.kind}.log")
                    shutil.copy(pn.log_path, dst)


@pytest.fixture
def pc(mixed: PveCluster) -> Iterator[PveCluster]:
    """The shared mixed cluster, healthy and converged.  No daemon may die on its own (a
    test restarts what it stops) and ours may not log a traceback."""
    restore_mixed(mixed)
    seen = {pn.name: len(pn.log_text()) for pn in mixed}
    yield mixed
    dead = [f"{pn.name} ({pn.kind})" for pn in mixed if not pn.daemon_running]
    assert not dead, f"daemons died: {dead}\n{mixed.logs()}"
    for pn in mixed:
        new = pn.log_text()[seen[pn.name] :]
        assert "Traceback" not in new, f"{pn.name} logged an exception:\n{new[-3000:]}"


def restore_mixed(pc: PveCluster) -> None:
    """test_cluster_daemon.restore, with probe names never used before: on a reference node
    a name a peer deleted less than a second ago cannot be created again (ENOENT; its
    kernel keeps the dentry for libfuse 2's entry_timeout, and it never invalidates)."""
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
        writable_everywhere(pc, f"restore-{secrets.token_hex(3)}", timeout=30)
    except AssertionError:  # e.g. dcdb stopped for good (VERSION_ERROR): restart
        for pn in pc:
            pn.stop_daemon()
            pn.start_daemon()
        pc.wait_ready(timeout=90)
        writable_everywhere(pc, f"restore-{secrets.token_hex(3)}", timeout=30)
    pc.wait_converged(timeout=60)


def kinds(pc: PveCluster) -> dict[str, list[PveNode]]:
    return {
        "ours": [pn for pn in pc if not pn.is_reference],
        "reference": [pn for pn in pc if pn.is_reference],
    }


def others(pc: PveCluster, pn: PveNode) -> list[PveNode]:
    return [o for o in pc if o is not pn]


# ---------------------------------------------------------------------------- operations


def everywhere(pc: PveCluster, path: str) -> bool:
    return all(pn.call("stat", path=path)["ok"] for pn in pc)


class Sequence:
    """Steps issued by *actors* in turn; after each, every node must show *tree*."""

    def __init__(self, pc: PveCluster, root: str, actors: list[PveNode]) -> None:
        self.pc, self.root, self.actors, self.n = pc, root, actors, 0
        self.tree: dict[str, bytes | None] = {}

    def step(self, op: str, **kw: Any) -> Snapshot:
        pn = self.actors[self.n % len(self.actors)]
        self.n += 1
        res = pn.call(op, **kw)
        assert res["ok"], f"{pn.name} ({pn.kind}): {op} {kw}: {res}"
        return expect(self.pc, self.root, self.tree)


def test_every_operation_replicates_both_ways(pc: PveCluster) -> None:
    """The sequence of test_cluster_daemon, once issued from our nodes, once from the
    reference's; every step must show identically on all three nodes."""
    for kind, actors in kinds(pc).items():
        root = f"ops-{kind}"
        pc[1].ok("mkdir", path=root)
        wait_until(f"{root} everywhere", lambda: everywhere(pc, root))  # noqa: B023
        s = Sequence(pc, root, actors)
        tree, step = s.tree, s.step
        d, f, g = f"{root}/d", f"{root}/f", f"{root}/g"
        tree[d] = DIR
        step("mkdir", path=d)
        tree[f] = b""
        step("write", path=f, mode="x")
        tree[f] = b"hello world"
        step("write", path=f, data="hello world", mode="r+")
        tree[f] = b"hello XYrld"
        step("write", path=f, data="XY", mode="r+", offset=6)
        tree[f] = b"hello XYrld!!"
        step("write", path=f, data="!!", mode="a")
        tree[f] = b"hello XY"
        step("truncate", path=f, size=8)
        tree[f] = b"hello XY\0\0"
        step("truncate", path=f, size=10)
        tree[f] = b"hello XY\0\0\0\0Z"
        step("write", path=f, data="Z", mode="r+", offset=12)
        tree[g] = b"other"
        step("write", path=g, data="other")
        tree[f + "2"] = tree.pop(f)
        step("rename", path=f, to=f + "2")
        tree[g] = tree.pop(f + "2")
        step("rename", path=f + "2", to=g)
        snap = step("utime", path=g, mtime=1234567890)
        assert snap[g][3] == 1234567890
        snap = step("utime", path=d, mtime=1111111111)
        assert snap[d][3] == 1111111111
        tree[f"{d}/x"] = b"x"
        step("write", path=f"{d}/x", data="x")
        for pn in pc:
            assert pn.err("rmdir", path=d) == "ENOTEMPTY", pn.name
            assert pn.err("rename", path=d, to=f"{root}/e") == "ENOTEMPTY", pn.name
        del tree[f"{d}/x"]
        step("unlink", path=f"{d}/x")
        tree[f"{root}/e"] = tree.pop(d)
        step("rename", path=d, to=f"{root}/e")
        del tree[f"{root}/e"]
        step("rmdir", path=f"{root}/e")
        tree[g] = b"short"
        step("write", path=g, data="short")
        del tree[g]
        step("unlink", path=g)
        step("rmdir", path=root)
    pc.wait_converged()


def test_concurrent_writers_converge(pc: PveCluster) -> None:
    """Every node writes its own files and overwrites shared ones at the same time."""
    shared = [f"cw/shared/s{i}" for i in range(3)]
    mkdirs(pc[1], "cw", "cw/shared", *(f"cw/{pn.name}" for pn in pc))
    for s in shared:
        pc[2].write(s, "initial\n")
    pc.wait_converged(root="cw")
    count = 40
    rids = [
        (pn, pn.send("burst", prefix=f"cw/{pn.name}/f", count=count, tag=pn.name, shared=shared))
        for pn in pc
    ]
    for pn, rid in rids:
        res = pn.result(rid, timeout=180)
        assert res["ok"] and res["value"] == count, (pn.name, pn.kind, res)
    snap = pc.wait_converged(root="cw", timeout=60)
    for pn in pc:
        for i in range(count):
            path = f"cw/{pn.name}/f{i}"
            assert snap[path][4] == sha(f"{pn.name}:{path}:{i}\n".encode()), path
    pc.wait_converged()


# ---------------------------------------------------------------------------- vmid / locks


def test_vmid_conflicts_vmlist_and_locks(pc: PveCluster) -> None:
    n1, n2, n3 = pc[1], pc[2], pc[3]
    mkdirs(n1, "nodes", *(f"nodes/{pn.name}" for pn in pc))
    mkdirs(n2, *(f"nodes/{pn.name}/qemu-server" for pn in pc), "nodes/node3/lxc")
    tok = secrets.token_hex(3)
    # a VM on a node of each kind, seen identically in every .vmlist
    cfg = {pn: f"nodes/{pn.name}/qemu-server/{700 + pn.node.nodeid}.conf" for pn in pc}
    for pn, path in cfg.items():
        pn.write(path, f"name: vm-{pn.name}-{tok}\n")

    def ids(pn: PveNode) -> dict[str, Any]:
        return {k: v for k, v in vmlist(pn).items() if k.startswith("7")}

    want = {str(700 + pn.node.nodeid): {"node": pn.name, "type": "qemu"} for pn in pc}

    def agreed() -> bool:
        got = [ids(pn) for pn in pc]
        return all(
            {k: {"node": v["node"], "type": v["type"]} for k, v in g.items()} == want for g in got
        ) and all(g == got[0] for g in got)

    wait_until("every .vmlist shows the three VMs identically", agreed)
    # a VMID taken on one kind is refused on the other, for qemu and lxc alike
    for pn in pc:
        for owner, path in cfg.items():
            if owner is pn:
                continue
            vmid = path.rsplit("/", 1)[1]
            assert pn.err("write", path=f"nodes/{pn.name}/qemu-server/{vmid}", data="dup\n") == (
                "EEXIST"
            ), (pn.name, pn.kind, vmid)
            assert pn.err("write", path=f"nodes/node3/lxc/{vmid}", data="dup\n") == "EEXIST"
    # migration by rename, done on the target node of the other kind
    src = cfg[n1]
    dst = f"nodes/{n2.name}/qemu-server/701.conf"
    n2.ok("rename", path=src, to=dst)
    wait_until(
        "vm 701 on node2 everywhere",
        lambda: all(
            vmlist(pn).get("701", {}).get("node") == "node2" and pn.read(src) is None for pn in pc
        ),
    )
    # The reference's kernel keeps the dentry of a name a peer renamed away for its
    # entry_timeout (libfuse 2: 1 s): meanwhile its open(O_CREAT) finds the stale entry and
    # fails ENOENT.  Ours invalidates at once, and refuses with EEXIST right away.
    if n1.is_reference:
        wait_until("EEXIST on the reference", lambda: again(n1, src) == "EEXIST", timeout=10)
    else:
        assert again(n1, src) == "EEXIST"
    # the same new VMID created on all three nodes at once: exactly one wins
    paths = {
        n1: "nodes/node1/qemu-server/799.conf",
        n2: "nodes/node2/qemu-server/799.conf",
        n3: "nodes/node3/lxc/799.conf",
    }
    rids = [(pn, pn.send("write", path=p, data=f"{pn.name}\n")) for pn, p in paths.items()]
    results = [(pn, pn.result(rid)) for pn, rid in rids]
    winners = [pn for pn, r in results if r["ok"]]
    assert len(winners) == 1, results
    assert all(r["errno"] == "EEXIST" for _pn, r in results if not r["ok"]), results
    wait_until(
        "vm 799 agreed",
        lambda: all(vmlist(pn).get("799", {}).get("node") == winners[0].name for pn in pc),
    )

    # locks: mkdir in priv/lock is a cluster-wide atomic acquire, across kinds
    mkdirs(n3, "priv", "priv/lock")
    for holder in pc:
        holder.ok("mkdir", path="priv/lock/mx")
        for pn in others(pc, holder):
            assert pn.err("mkdir", path="priv/lock/mx") == "EEXIST", (holder.name, pn.name)
        holder.ok("rmdir", path="priv/lock/mx")
    rids = [(pn, pn.send("mkdir", path="priv/lock/race")) for pn in pc]
    results = [(pn, pn.result(rid)) for pn, rid in rids]
    assert sum(r["ok"] for _pn, r in results) == 1, results
    assert all(r["errno"] == "EEXIST" for _pn, r in results if not r["ok"]), results
    pc.wait_converged()
    # clean up (the deletes remove the VMIDs everywhere)
    n3.ok("rmdir", path="priv/lock/race")
    winners[0].ok("unlink", path=paths[winners[0]])
    for path in (dst, cfg[n2], cfg[n3]):
        n1.ok("unlink", path=path)
    wait_until("vmlist has none of ours", lambda: all(not ids(pn) for pn in pc))
    assert all("799" not in vmlist(pn) for pn in pc)
    pc.wait_converged()


def again(pn: PveNode, path: str) -> str | None:
    return pn.err("write", path=path, data="again\n")


# ---------------------------------------------------------------------------- partition


def test_partitioned_node1_is_read_only_and_catches_up(pc: PveCluster) -> None:
    """node1 (ours in ours-n1, the reference in ref-n1) alone: it refuses every write with
    EACCES and shows read-only modes while the two others write on; after the heal it
    catches up, and writes again."""
    n1, n2, n3 = pc[1], pc[2], pc[3]
    mkdirs(n2, "pt")
    n2.write("pt/pre", "before\n")
    pc.wait_converged()
    pc.cluster[1].partition()
    try:
        wait_until("node1 not quorate", lambda: not n1.quorate_online()[0], timeout=60)
        wait_until(
            "majority sees node1 offline",
            lambda: all(pn.quorate_online() == (True, ["node2", "node3"]) for pn in (n2, n3)),
            timeout=60,
        )
        assert n1.members()["cluster"]["quorate"] == 0
        refused = {
            "create": n1.err("write", path="pt/rogue", data="x"),
            "append": n1.err("write", path="pt/pre", data="x", mode="a"),
            "mkdir": n1.err("mkdir", path="pt/rogue-dir"),
            "unlink": n1.err("unlink", path="pt/pre"),
            "rename": n1.err("rename", path="pt/pre", to="pt/moved"),
            "utime": n1.err("utime", path="pt/pre", mtime=1),
        }
        assert all(e == "EACCES" for e in refused.values()), (n1.kind, refused)
        wait_until(
            "pt read-only on node1",
            lambda: n1.ok("stat", path="pt")["mode"] & 0o777 == 0o555,
            timeout=10,
        )
        assert n1.ok("stat", path="pt/pre")["mode"] & 0o777 == 0o440
        for i in range(10):
            n2.write(f"pt/maj2-{i}", f"n2 {i}\n")
            n3.write(f"pt/maj3-{i}", f"n3 {i}\n")
        n3.write("pt/pre", "changed by the majority\n")
        n2.ok("utime", path="pt/maj2-0", mtime=1500000000)
        assert n1.read("pt/pre") == b"before\n"
        assert n1.read("pt/maj2-0") is None
    finally:
        pc.cluster[1].heal()
    pc.wait_ready(timeout=90)
    snap = pc.wait_converged(timeout=60)
    assert snap["pt/pre"][4] == sha(b"changed by the majority\n")
    assert snap["pt/maj2-0"][3] == 1500000000
    assert all(f"pt/maj{k}-{i}" in snap for k in (2, 3) for i in range(10))
    assert "pt/rogue" not in snap
    wait_until("node1 writable again", lambda: n1.call("write", path="pt/after", data="n1\n")["ok"])
    expect_file(pc, "pt/after", b"n1\n")


# ---------------------------------------------------------------------------- restart


def test_restarted_daemons_catch_up(pc: PveCluster) -> None:
    """node1 (the sync coordinator) is stopped, the others write, and it comes back while
    they keep writing; then node3 (the other kind) the same way, without the burst."""
    n1, n2, n3 = pc[1], pc[2], pc[3]
    mkdirs(n2, "rs")
    for i in range(5):
        n2.write(f"rs/base{i}", f"base {i}\n")
    pc.wait_converged()
    want: dict[str, bytes | None] = {f"rs/base{i}": f"base {i}\n".encode() for i in range(5)}

    n1.stop_daemon()
    for i in range(10):
        pn = (n2, n3)[i % 2]
        pn.write(f"rs/new{i}", f"new {i} from {pn.name}\n")
        want[f"rs/new{i}"] = f"new {i} from {pn.name}\n".encode()
    n3.write("rs/base0", "changed 0\n")
    want["rs/base0"] = b"changed 0\n"
    n2.ok("unlink", path="rs/base1")
    del want["rs/base1"]
    n3.ok("rename", path="rs/base2", to="rs/renamed2")
    want["rs/renamed2"] = want.pop("rs/base2")
    n2.ok("mkdir", path="rs/newdir")
    want["rs/newdir"] = DIR
    count = 300
    bursts = []
    for pn in (n2, n3):
        assert pn.agent is not None
        mark = pn.agent.mark()
        rid = pn.send("burst", prefix=f"rs/{pn.name}-", count=count, tag=pn.name, acks=True)
        pn.agent.wait_for(lambda e, r=rid: e.get("ev") == "ack" and e["id"] == r, start=mark)
        bursts.append((pn, rid))
        for i in range(count):
            want[f"rs/{pn.name}-{i}"] = f"{pn.name}:rs/{pn.name}-{i}:{i}\n".encode()
    n1.start_daemon()
    for pn, rid in bursts:
        res = pn.result(rid, timeout=180)
        assert res["ok"] and res["value"] == count, (pn.name, pn.kind, res)
    pc.wait_ready(timeout=60)
    expect(pc, "rs", want, timeout=60)

    n3.stop_daemon()
    n1.write("rs/while-n3-down", "n1\n")
    n2.ok("unlink", path="rs/base3")
    want["rs/while-n3-down"] = b"n1\n"
    del want["rs/base3"]
    n3.start_daemon()
    pc.wait_ready(timeout=60)
    expect(pc, "rs", want, timeout=60)
    for pn in (n1, n3):
        pn.write(f"rs/from-{pn.name}", "back\n")
        expect_file(pc, f"rs/from-{pn.name}", b"back\n")
    pc.wait_converged()


# ---------------------------------------------------------------------------- status


def test_members_agree(pc: PveCluster) -> None:
    want = {pn.name: {"id": pn.node.nodeid, "online": 1, "ip": pn.node.addr} for pn in pc}

    def view(pn: PveNode) -> dict[str, Any]:
        m = pn.members()
        return {"cluster": m.get("cluster"), "nodelist": m.get("nodelist"), "me": m["nodename"]}

    def complete() -> dict[str, dict[str, Any]] | None:
        v = {pn.name: view(pn) for pn in pc}
        return v if all(x["nodelist"] == want for x in v.values()) else None

    views = wait_until("every .members complete", complete)
    assert views is not None
    assert all(v["me"] == n for n, v in views.items()), views
    clusters = [v["cluster"] for v in views.values()]
    assert all(c == clusters[0] for c in clusters), clusters
    assert clusters[0]["quorate"] == 1 and clusters[0]["nodes"] == 3
    # GET_CLUSTER_INFO answers what .members shows
    for pn in pc:
        ((err, info),) = ipc(pn, (2, b""))
        assert err == 0, (pn.name, pn.kind, err)
        assert json.loads(info.rstrip(b"\0"))["nodelist"] == want, (pn.name, pn.kind)


def log_entries(pn: PveNode) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(pn.read(".clusterlog") or b"{}").get("data", [])
    return data


def test_clusterlog_and_status_over_ipc(pc: PveCluster) -> None:
    tok = secrets.token_hex(4)
    key = f"kv/mixed-{tok}".encode()

    def value(pn: PveNode) -> bytes:
        return f'{{"from": "{pn.name}", "tok": "{tok}"}}'.encode() + b"\0"

    for pn in pc:
        ident, tag = b"root@pam", b"mixed"
        msg = f"mixed log {tok} from {pn.name}".encode()
        p = bytes([6, len(ident) + 1, len(tag) + 1]) + ident + b"\0" + tag + b"\0" + msg + b"\0"
        assert ipc(pn, (4, name(key) + value(pn)), (7, p)) == [(0, b"")] * 2, (pn.name, pn.kind)
    # GET_STATUS of every node's key, asked on every node
    want = [(0, value(owner)) for owner in pc]
    for asker in pc:
        wait_until(
            f"{asker.name} ({asker.kind}) sees every node's status",
            lambda a=asker: ipc(a, *((5, name(key) + name(o.name.encode())) for o in pc)) == want,
        )
    # .clusterlog: all three entries everywhere, and the same merged log on every node
    msgs = {f"mixed log {tok} from {pn.name}": pn.name for pn in pc}

    def mine(pn: PveNode) -> list[dict[str, Any]]:
        return [e for e in log_entries(pn) if e["msg"] in msgs]

    for pn in pc:
        got = wait_until(
            f"{pn.name} ({pn.kind}) shows the three entries", lambda pn=pn: len(mine(pn)) == 3
        )
        assert got
        for e in mine(pn):
            assert (e["node"], e["user"], e["tag"]) == (msgs[e["msg"]], "root@pam", "mixed")
    logs = {pn.name: [e for e in log_entries(pn) if tok in e["msg"]] for pn in pc}
    first = next(iter(logs.values()))
    assert all(v == first for v in logs.values()), logs
    # the whole merged log (earlier tests' restarts included) is the same everywhere
    whole = wait_until(
        "the same .clusterlog on every node",
        lambda: (lambda v: v if all(x == v[0] for x in v) else None)(
            [log_entries(pn) for pn in pc]
        ),
        timeout=10,
    )
    assert whole
    # GET_CLUSTER_LOG answers the same entries
    for pn in pc:
        ((err, raw),) = ipc(pn, (8, b"\x32\0\0\0" + bytes(12) + b"root@pam\0"))
        assert err == 0, (pn.name, pn.kind)
        entries = [e for e in json.loads(raw.rstrip(b"\0"))["data"] if tok in e["msg"]]
        assert entries == first, (pn.name, pn.kind, entries)


# ---------------------------------------------------------------------------- corosync.conf

_VERSION = re.compile(rb"config_version:\s*(\d+)")


def test_corosync_conf_change_reaches_every_host_both_ways(pc: PveCluster) -> None:
    """A higher config_version written to /etc/pve/corosync.conf on a node of either kind
    reaches every node's /etc/corosync/corosync.conf, and corosync reloads it."""
    for writer in (kinds(pc)["ours"][0], kinds(pc)["reference"][0]):
        conf = writer.read("corosync.conf")
        assert conf is not None
        m = _VERSION.search(conf)
        assert m is not None
        version = int(m.group(1)) + 1
        new = _VERSION.sub(b"config_version: %d" % version, conf, count=1)
        # like PVE's tooling: write a new file, then rename it over the old one
        writer.write("corosync.conf.new", new)
        writer.ok("rename", path="corosync.conf.new", to="corosync.conf")
        for pn in pc:
            host = pn.node.host_path("/etc/corosync/corosync.conf")
            wait_until(
                f"{pn.name} ({pn.kind}) host corosync.conf at version {version} "
                f"(written on {writer.name}, {writer.kind})",
                lambda h=host, n=new: h.read_bytes() == n,
            )
        wait_until(
            f"every node shows cluster version {version}",
            lambda v=version: all(pn.members()["cluster"]["version"] == v for pn in pc),
        )
        pc.wait_ready(timeout=60)
    pc.wait_converged()


# ---------------------------------------------------------------------------- VERIFY


def verified(pn: PveNode, since: int) -> int:
    return pn.log_text()[since:].count(VERIFIED)


@pytest.mark.parametrize("mixed", ["ours-n1"], indirect=True)
def test_verify_after_every_kind_of_operation(pc: PveCluster) -> None:
    """Our node1 coordinates a VERIFY round every second (--verify-interval); after every
    kind of operation, issued on either kind of node, more rounds must succeed on every
    node.  The reference compares our digest with its own and leaves the group on a
    mismatch."""
    n1, n2, n3 = pc[1], pc[2], pc[3]
    assert not n1.is_reference and n2.is_reference and n3.is_reference
    start = {pn.name: len(pn.log_text()) for pn in pc}
    n1.stop_daemon()
    n1.extra_args = ["--verify-interval", "1"]
    try:
        n1.start_daemon()
        pc.wait_ready(timeout=60)
        mark = {pn.name: len(pn.log_text()) for pn in pc}
        wait_until(
            "a first verify round everywhere",
            lambda: all(verified(pn, mark[pn.name]) >= 1 for pn in pc),
            timeout=60,
        )

        done: list[str] = []

        def op(pn: PveNode, what: str, cmd: str, **kw: Any) -> None:
            res = pn.call(cmd, **kw)
            assert res["ok"], f"{what} on {pn.name} ({pn.kind}): {res}"
            done.append(f"{what} on {pn.name} ({pn.kind})")

        since = {pn.name: len(pn.log_text()) for pn in pc}

        def verify_after() -> None:
            """The operations since the last call converged, then two rounds succeeded on
            every node and none found a difference.  Rounds run one at a time, a second
            apart: the second one's request was sent after the operations were delivered
            (unless a node logs its result more than a second late)."""
            pc.wait_converged(root="vf")
            what = ", ".join(done)
            at = {pn.name: len(pn.log_text()) for pn in pc}
            wait_until(
                f"two verify rounds on every node after: {what}",
                lambda: all(verified(pn, at[pn.name]) >= 2 for pn in pc),
                timeout=60,
            )
            for pn in pc:
                bad = [
                    ln
                    for ln in pn.log_text()[since[pn.name] :].splitlines()
                    if any(s in ln for s in MISMATCH + LEAVES)
                ]
                assert not bad, f"after {what}: {pn.name} ({pn.kind}):\n" + "\n".join(bad)
                since[pn.name] = len(pn.log_text())
            done.clear()

        mkdirs(n1, "vf")
        op(n1, "mkdir", "mkdir", path="vf/d")
        op(n2, "create", "write", path="vf/f", mode="x")
        verify_after()
        op(n1, "write", "write", path="vf/f", data="hello world", mode="r+")
        op(n3, "append", "write", path="vf/f", data="!!", mode="a")
        op(n1, "write at an offset", "write", path="vf/f", data="XY", mode="r+", offset=3)
        verify_after()
        op(n2, "truncate down", "truncate", path="vf/f", size=5)
        op(n1, "truncate up", "truncate", path="vf/f", size=9)
        op(n3, "write past the end", "write", path="vf/f", data="Z", mode="r+", offset=12)
        verify_after()
        op(n1, "rename", "rename", path="vf/f", to="vf/g")
        op(n2, "utime", "utime", path="vf/g", mtime=1234567890)
        op(n3, "utime of a directory", "utime", path="vf/d", mtime=1111111111)
        verify_after()
        mkdirs(n1, "priv", "priv/lock", "nodes", "nodes/node1", "nodes/node1/qemu-server")
        op(n2, "lock", "mkdir", path="priv/lock/vf")
        op(n1, "VM config", "write", path="nodes/node1/qemu-server/990.conf", data="name: v\n")
        verify_after()
        op(n3, "overwrite (O_TRUNC)", "write", path="vf/g", data="short")
        op(n1, "unlink", "unlink", path="vf/g")
        op(n2, "rmdir", "rmdir", path="vf/d")
        op(n3, "unlock", "rmdir", path="priv/lock/vf")
        op(n2, "VM config delete", "unlink", path="nodes/node1/qemu-server/990.conf")
        verify_after()
        # Q1: an empty file truncated upward.  The reference holds a size without data
        # (and crashes reading it, so only our node reads it); a write then starts anew.
        mkdirs(n1, "vh")
        for pn in (n1, n2):
            path = f"vh/{pn.name}"
            pn.ok("write", path=path, mode="x")
            op(pn, "truncate of an empty file upward", "truncate", path=path, size=4096)
            verify_after()
            for other in pc:
                assert other.ok("stat", path=path)["size"] == 4096, (other.name, other.kind)
            assert n1.read(path) == bytes(4096)
        op(n3, "write into a file grown from empty", "write", path="vh/node2", data="ab",
           mode="r+", offset=10)  # fmt: skip
        verify_after()
        for other in pc:
            assert other.ok("stat", path="vh/node2")["size"] == 12, (other.name, other.kind)
            assert other.read("vh/node2") == bytes(10) + b"ab", (other.name, other.kind)
        op(n2, "delete of a file grown from empty", "unlink", path="vh/node1")
        op(n1, "delete", "unlink", path="vh/node2")
        verify_after()
        n1.ok("rmdir", path="vh")
        n1.ok("rmdir", path="vf")
    finally:
        for pn in pc:  # never leave a file the reference cannot read (restore snapshots all)
            for path in ("vh/node1", "vh/node2"):
                if pn.daemon_running and pn.call("stat", path=path)["ok"]:
                    pn.call("unlink", path=path)
        n1.extra_args = []
        n1.stop_daemon()
        n1.start_daemon()
        pc.wait_ready(timeout=60)
    for pn in pc:
        new = pn.log_text()[start[pn.name] :]
        bad = [ln for ln in new.splitlines() if any(s in ln for s in MISMATCH + LEAVES)]
        assert not bad, f"{pn.name} ({pn.kind}):\n" + "\n".join(bad) + "\n" + pc.logs()
