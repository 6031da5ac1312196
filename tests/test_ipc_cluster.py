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


def wait_for(what: str, fn: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_status_and_log_replicate(pc: PveCluster) -> None:
    a, b, c = pc.nodes
    value = b'{"tag": "' + secrets.token_hex(8).encode() + b'"}\x00'
    assert ipc(a, (4, name(b"kv/ipc-test") + value)) == [(0, b"")]
    assert ipc(a, (5, name(b"kv/ipc-test") + name(b""))) == [(0, value)]
    for other in (b, c):
        wait_for(
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
        entry = wait_for(
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
