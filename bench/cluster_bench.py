"""Cluster replication benchmark (sans-I/O, deterministic in-memory CPG).

Measures the hot paths that do not depend on corosync: message decode, NORMAL delivery
through DFSM + DCDB into the tree on every node, and a full state transfer (STATE, leader
choice, UPDATEs, follower commit with index compare) for a large tree.

    .venv/bin/python bench/cluster_bench.py [--nodes 3] [--ops 5000] [--files 5000]
"""

from __future__ import annotations

import argparse
import time

from pmxcfs.dcdb.app import DcdbApp
from pmxcfs.dcdb.codec import FuseOp, Subtype, decode_fuse
from pmxcfs.dfsm import codec
from pmxcfs.dfsm.machine import Dfsm
from pmxcfs.dfsm.sim import Sim
from pmxcfs.tree import Tree


def _cluster(trees: list[Tree]) -> tuple[Sim, list[DcdbApp]]:
    sim = Sim(total_nodes=len(trees))
    apps = [DcdbApp(t) for t in trees]
    for i, app in enumerate(apps, 1):
        sim.add(Dfsm(i, 1000 + i, app, name=f"n{i}"))
    return sim, apps


def bench_decode(n: int) -> float:
    op = FuseOp(b"nodes/n1/qemu-server/100.conf", data=b"x" * 200)
    msg = codec.encode_normal(Subtype.WRITE, 1, 0, 1, op.encode())

    t = time.perf_counter()
    for _ in range(n):
        m = codec.decode(msg)
        assert isinstance(m, codec.NormalMessage)
        decode_fuse(m.payload)
    return n / (time.perf_counter() - t)


def bench_ops(nodes: int, ops: int) -> float:
    sim, apps = _cluster([Tree() for _ in range(nodes)])
    first = (1, 1001)
    sim.join(first)
    for i in range(2, nodes + 1):
        sim.join((i, 1000 + i), first)
    sim.run()
    sim.request(first, Subtype.CREATE, FuseOp(b"f.cfg").encode())
    sim.run()
    t = time.perf_counter()
    for i in range(ops):
        sim.request((i % nodes + 1, 1000 + i % nodes + 1), Subtype.WRITE,
                    FuseOp(b"f.cfg", data=b"line %d\n" % i).encode())  # fmt: skip
        sim.run()
    dt = time.perf_counter() - t
    assert len({a.tree.encode_index() for a in apps}) == 1
    return ops / dt


def bench_sync(files: int) -> tuple[float, int]:
    big = Tree()
    big.mkdir("d", 0, 1)
    for i in range(files):
        big.create(f"d/f{i}", 0, 1)
        big.write(f"d/f{i}", 0, b"content %d\n" % i, 0, 1)
    sim, apps = _cluster([big, Tree()])
    sim.join((1, 1001))
    t = time.perf_counter()
    sim.join((2, 1002), (1, 1001))
    n = sim.run()
    dt = time.perf_counter() - t
    assert apps[0].tree.encode_index() == apps[1].tree.encode_index()
    return dt, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--ops", type=int, default=3000)
    ap.add_argument("--files", type=int, default=5000)
    args = ap.parse_args()
    print(f"decode WRITE message + payload: {bench_decode(100_000):,.0f} msg/s")
    rate = bench_ops(args.nodes, args.ops)
    print(f"replicated WRITE, {args.nodes} nodes (applied on all): {rate:,.0f} ops/s")
    dt, n = bench_sync(args.files)
    print(f"full state transfer of {args.files} files: {dt:.2f} s ({n} messages)")


if __name__ == "__main__":
    main()
