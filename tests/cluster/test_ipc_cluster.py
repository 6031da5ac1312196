"""`pve2` in cluster mode: SET_STATUS and LOG_CLUSTER_MSG go through the status group.

Three of our daemons on real corosync (tests/cluster/pve_nodes.py); each node has its own
network namespace, so each daemon has its own @pve2, and a client runs inside a node's
namespaces (tests/ipc_client.py).
"""

from __future__ import annotations

import json
import secrets
import struct
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.pve_nodes import PveCluster, PveNode
from tests.daemon_harness import PYTHON, REPO
from tests.polling import wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def pc() -> Iterator[PveCluster]:
    with PveCluster(3) as cluster:
        yield cluster


def ipc(pn: PveNode, *reqs: tuple[int, bytes]) -> list[tuple[int, bytes]]:
    raw = [(struct.pack("=i4xi4x", op, 16 + len(p)) + p).hex() for op, p in reqs]
    argv = pn.node.ns_argv([PYTHON, str(REPO / "tests" / "ipc_client.py")], cwd=str(REPO))
    r = subprocess.run(
        argv, input=json.dumps({"requests": raw}), capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    assert out["connect_errno"] is None, out
    return [(rep[1], bytes.fromhex(rep[2])) for rep in out["replies"]]


def name(s: bytes) -> bytes:
    return s.ljust(256, b"\x00")


def test_status_and_log_replicate(pc: PveCluster) -> None:
    a, b, c = pc.nodes
    value = b'{"tag": "' + secrets.token_hex(8).encode() + b'"}\x00'
    assert ipc(a, (4, name(b"kv/ipc-test") + value)) == [(0, b"")]
    assert ipc(a, (5, name(b"kv/ipc-test") + name(b""))) == [(0, value)]
    for other in (b, c):
        wait_until(
            f"{other.name} to see {a.name}'s value",
            lambda o=other: ipc(o, (5, name(b"kv/ipc-test") + name(a.name.encode())))
            == [(0, value)],
        )
        assert ipc(other, (5, name(b"kv/ipc-test") + name(b""))) == [(-2, b"")]  # not theirs
    msg = b"ipc cluster log " + secrets.token_hex(6).encode()
    ident, tag = b"root@pam", b"ipctest"
    p = bytes([6, len(ident) + 1, len(tag) + 1]) + ident + b"\0" + tag + b"\0" + msg + b"\0"
    assert ipc(b, (7, p)) == [(0, b"")]
    for pn in pc.nodes:
        entry = wait_until(
            f"{pn.name} to show the log entry",
            lambda pn=pn: [
                e for e in json.loads(pn.read(".clusterlog") or b"{}").get("data", [])
                if e["msg"] == msg.decode()
            ],
        )[0]
        assert (entry["node"], entry["user"], entry["tag"]) == (b.name, "root@pam", "ipctest")
    # the generated-file ops answer what the files show
    for pn in pc.nodes:
        (err, members), = ipc(pn, (2, b""))
        assert err == 0 and json.loads(members)["nodename"] == pn.name
        assert json.loads(members)["cluster"]["quorate"] == 1


def test_rrd_update_writes_files_on_every_node(pc: PveCluster) -> None:
    """pvestatd's SET_STATUS rrd/... on one node becomes an RRD file on every node (§4.3), in
    each node's own RRD directory (pve_nodes: /run/rrdcached/db, private per node)."""
    a, b, _c = pc.nodes
    ts = int(time.time())
    node = f"{ts}:0:{ts}:0.5:2:0.1:0:1000:500:0:0:2000:100:10:20"  # uptime:sublevel:ts:...
    vm = f"60:web:running:0:{ts}:2:0.2:1000:300:5000:100:1:2:3:4"
    assert ipc(a, (4, name(f"rrd/pve2-node/{a.name}".encode()) + node.encode() + b"\0")) == [
        (0, b"")
    ]
    assert ipc(b, (4, name(b"rrd/pve2.3-vm/4242") + vm.encode() + b"\0")) == [(0, b"")]
    for pn in pc.nodes:
        for rel, first in ((f"pve2-node/{a.name}", "loadavg"), ("pve2-vm/4242", "maxcpu")):
            path = f"/run/rrdcached/db/{rel}"

            def last(pn: PveNode = pn, path: str = path) -> str:
                r = subprocess.run(pn.node.ns_argv(["rrdtool", "lastupdate", path]),
                                   capture_output=True, text=True, timeout=30)  # fmt: skip
                return r.stdout if r.returncode == 0 else ""

            out = wait_until(f"{pn.name} to write {rel}", last)
            header, _blank, row = out.splitlines()[:3]
            assert header.split()[0] == first
            assert row.split(":")[0] == str(ts), out
