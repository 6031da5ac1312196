"""`pmxcfs-admin status --json` on every node of a real 3-node corosync cluster of our daemons,
run inside each node's namespaces: healthy, one node partitioned off, healed."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.harness import REPO_ROOT
from tests.cluster.pve_nodes import PveCluster, PveNode
from tests.polling import wait_until

pytestmark = pytest.mark.cluster

ALL = ["node1", "node2", "node3"]


@pytest.fixture(scope="module")
def pc() -> Iterator[PveCluster]:
    with PveCluster(3) as cluster:
        yield cluster


def admin(pn: PveNode, *args: str) -> tuple[int, str, str]:
    r = pn.node.run(
        [sys.executable, "-m", "pmxcfs.admin", *args], cwd=str(REPO_ROOT), check=False, timeout=60
    )
    return r.returncode, r.stdout, r.stderr


def status(pn: PveNode) -> dict[str, Any]:
    rc, out, err = admin(pn, "status", "--json")
    assert rc in (0, 1), f"{pn.name}: status failed ({rc}): {err}"
    doc: dict[str, Any] = json.loads(out)
    assert rc == (1 if doc["problems"] else 0)
    return doc


def online(doc: dict[str, Any]) -> list[str]:
    return sorted(m["name"] for m in doc["members"] if m["online"])


def synced(doc: dict[str, Any], n: int) -> bool:
    """Both groups in normal operation with `n` members, every one synced."""
    groups = doc.get("groups", {})
    return set(groups) == {"dcdb", "kvstore"} and all(
        g["mode"] == "synced"
        and g["joined"]
        and len(g["members"]) == n
        and all(m["synced"] for m in g["members"])
        for g in groups.values()
    )


def healthy(doc: dict[str, Any]) -> bool:
    return doc["quorate"] and online(doc) == ALL and synced(doc, 3) and not doc["problems"]


def all_status(pc: PveCluster, pred: Any) -> dict[str, dict[str, Any]] | None:
    docs = {pn.name: status(pn) for pn in pc}
    return docs if all(pred(pn.name, d) for pn, d in zip(pc, docs.values(), strict=True)) else None


def test_status_through_a_partition(pc: PveCluster) -> None:
    docs = wait_until(
        "every node healthy", lambda: all_status(pc, lambda _n, d: healthy(d)), timeout=90
    )
    for pn in pc:
        doc = docs[pn.name]
        assert doc["mode"] == "cluster" and doc["nodename"] == pn.name
        assert doc["cluster"] == {"name": "testclu", "config_version": 1, "nodes": 3}
        assert {m["name"]: (m["nodeid"], m["ip"]) for m in doc["members"]} == {
            p.name: (p.node.nodeid, p.node.addr) for p in pc
        }
        for name, g in doc["groups"].items():
            assert g["leader"] == 1, name
            assert g["nodeid"] == pn.node.nodeid
            assert g["last_sync"] is not None and g["last_sync"]["duration"] >= 0
            assert g["errors"]["fatal"] == 0
        assert doc["ipc"]["serving"] and doc["kernel_cache"]["inodes"] >= 1
        assert doc["database"]["error"] is False
    # a write on node1 is sent by node1 and delivered everywhere
    before = {pn.name: status(pn)["groups"]["dcdb"] for pn in pc}
    pc[1].write("admin-status.cfg", "hello\n")
    wait_until("node2 and node3 read the write", lambda: all(
        pn.read("admin-status.cfg") == b"hello\n" for pn in (pc[2], pc[3])
    ))  # fmt: skip
    after: dict[str, Any] = {}

    def rated() -> bool:  # rates need a second of samples (a fresh history has none)
        after.update({pn.name: status(pn) for pn in pc})
        return all(
            d["groups"]["dcdb"]["sent"]["rate"] is not None
            and d["groups"]["dcdb"]["delivered"]["rate"] is not None
            for d in after.values()
        )

    wait_until("every node has rates", rated, timeout=10)
    assert after["node1"]["groups"]["dcdb"]["sent"]["count"] > before["node1"]["sent"]["count"]
    for pn in pc:
        dcdb = after[pn.name]["groups"]["dcdb"]
        assert dcdb["delivered"]["count"] > before[pn.name]["delivered"]["count"]
        assert dcdb["sent"]["rate"] is not None and dcdb["delivered"]["rate"] is not None
    assert len({d["database"]["version"] for d in after.values()}) == 1

    n3_syncs = after["node3"]["groups"]["dcdb"]["syncs"]
    cut = time.time()
    pc.cluster[3].partition()
    try:
        n3 = wait_until(
            "node3 not quorate, alone and synced",
            lambda: (
                (d := status(pc[3]))
                and not d["quorate"]
                and online(d) == ["node3"]
                and synced(d, 1)
                and d
            ),
            timeout=60,
        )
        assert n3["problems"][0] == "not quorate (1 of 3 nodes online): /etc/pve is read-only"
        rc, out, _ = admin(pc[3], "status")
        assert rc == 1
        assert "quorum     NOT quorate since" in out and "problems   not quorate" in out
        majority = wait_until(
            "node1 and node2 see two online",
            lambda: all_status(
                pc,
                lambda n, d: (
                    n == "node3" or (d["quorate"] and online(d) == ALL[:2] and synced(d, 2))
                ),
            ),
            timeout=60,
        )
        for name in ("node1", "node2"):
            assert majority[name]["problems"] == ["offline: node3"]
    finally:
        pc.cluster[3].heal()
    healed = wait_until(
        "every node healthy after heal", lambda: all_status(pc, lambda _n, d: healthy(d)), 90
    )
    dcdb3 = healed["node3"]["groups"]["dcdb"]
    assert dcdb3["syncs"] > n3_syncs
    assert dcdb3["last_sync"]["end"] >= cut
    rc, out, _ = admin(pc[3], "status")
    assert rc == 0 and "problems   none" in out
    assert any(line.startswith("dcdb       synced, epoch") for line in out.splitlines())
