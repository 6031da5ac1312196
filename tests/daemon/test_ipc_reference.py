"""GET_GUEST_CONFIG_PROPERTY/PROPERTIES corners, asked of the live reference and of ours.

The reference binary (../shared/reference/pmxcfs) and our daemon run side by side in local
mode, each in its own namespaces of the cluster harness (no corosync): private /etc/pve,
/var/lib/pve-cluster and /run, a hosts file for its name, its own @pve2. Both get the same
guest configs through their FUSE mounts, then the same requests on one libqb connection each
(tests/ipc_client.py); every reply (errno and bytes) must be equal. The corners: a config
that repeats a key, a request that repeats a name, an empty name, a name without its NUL,
every short or odd payload size; then seeded random configs and requests. For vmid 0 (all
guests) only the order of the guest objects may differ: C's hash table order, ours by VMID.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import struct
import sys
from collections.abc import Iterator
from typing import Any, cast

import pytest

from tests.cluster.harness import DEFAULT_PRIVATE_DIRS, PVE_PRIVATE_DIRS, REPO_ROOT, Cluster
from tests.cluster.pve_nodes import REFERENCE_PRIVATE_DIRS, PveNode, reference_binary

GET_GUEST_CONFIG_PROPERTY = 11
GET_GUEST_CONFIG_PROPERTIES = 13

# vmid -> config: repeated keys (also around other keys and a section), whitespace values,
# a line ":..." (what an empty name matches), values needing escapes
CONFIGS: dict[int, bytes] = {
    100: b"memory: 1024\ncores: 2\nmemory: 2048\nname: a\n",
    101: b"name: b\nmemory: 512\n",
    102: b"memory: 1\nmemory: 2\ncores: 4\nname: c\n",
    103: b":x\nmemory: 5\n: \n",
    104: b"cores: 1\ncores: 2\ncores: 3\nmemory: 7\n",
    105: b"name: e\nmemory:  \t \ncores:\n",
    106: b'description: say "hi" \\o/\nlock: backup\n[snap]\nlock: snapshot\nmemory: 9\n',
    107: b"memory: 3\r\nmemory:4",
    108: b"",  # empty: EIO when asked for directly
}
NAMES = [b"memory", b"cores", b"name", b"lock", b"", b"Memory", b"mem", b"description"]


def v(vmid: int) -> bytes:
    return struct.pack("=I", vmid)


def props(vmid: int, *names: bytes, num: int | None = None) -> bytes:
    count = len(names) if num is None else num
    return v(vmid) + bytes([count]) + b"".join(n + b"\0" for n in names)


def corner_requests() -> list[tuple[int, bytes]]:
    op11, op13 = GET_GUEST_CONFIG_PROPERTY, GET_GUEST_CONFIG_PROPERTIES
    out: list[tuple[int, bytes]] = []
    for vmid in (0, *CONFIGS, 50, 999):
        for n in NAMES:
            out.append((op11, v(vmid) + n + b"\0"))
        for raw in (b"memory", b"memoryX", b"coresX", b"m", b"x", b"memory\0junk", b"\0\0"):
            out.append((op11, v(vmid) + raw))  # no NUL at the end: the last byte is lost
        for names in (
            [b"memory", b"memory"],
            [b"memory", b"cores"],
            [b"cores", b"memory"],
            [b"memory", b"memory", b"cores"],
            [b"cores", b"cores", b"memory", b"name"],
            [b"lock", b"description", b"lock"],
            [b"name"] * 5,
        ):
            out.append((op13, props(vmid, *names)))
        out += [
            (op13, props(vmid, b"")),  # an empty name
            (op13, props(vmid, b"memory", b"")),
            (op13, props(vmid, b"Memory")),  # first char outside a-z
            (op13, v(vmid) + b"\x01memory"),  # no NUL
            (op13, v(vmid) + b"\x02memory\0cores"),
            (op13, props(vmid, b"memory", num=2)),  # fewer names than announced
            (op13, props(vmid, b"memory", b"cores", num=1)),  # bytes left over
            (op13, props(vmid, num=0) + b"memory\0"),
        ]
    # every size of payload up to the first name, and a few beyond
    for size in range(0, 8):
        out.append((op11, (v(100) + b"name\0")[:size]))
        out.append((op13, props(100, b"name")[:size]))
    return out


def random_configs(rnd: random.Random) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for vmid in range(200, 240):
        lines = []
        for i in range(rnd.randrange(1, 9)):
            lines.append(f"{rnd.choice('abc')}:{rnd.choice(['', ' ', '  '])}{i}")
            if rnd.random() < 0.05:
                lines.append("[snap]")
        out[vmid] = ("\n".join(lines) + rnd.choice(["\n", ""])).encode()
    return out


def random_requests(rnd: random.Random, vmids: list[int]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for _ in range(300):
        vmid = rnd.choice([*vmids, 0])
        names = [rnd.choice("abc").encode() for _ in range(rnd.randrange(1, 6))]
        if rnd.random() < 0.3:
            out.append((GET_GUEST_CONFIG_PROPERTY, v(vmid) + names[0] + b"\0"))
        else:
            out.append((GET_GUEST_CONFIG_PROPERTIES, props(vmid, *names)))
    return out


# ---------------------------------------------------------------------------- the pair


def _request(op: int, payload: bytes) -> bytes:
    return struct.pack("=i4xi4x", op, 16 + len(payload)) + payload


def ask(pn: PveNode, reqs: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """All requests on one connection inside the node; [(error, payload)]."""
    job = {"uid": 0, "gid": 0, "requests": [_request(op, p).hex() for op, p in reqs]}
    res = pn.node.run(
        [sys.executable, "tests/ipc_client.py"],
        input=json.dumps(job), cwd=str(REPO_ROOT), timeout=120,
    )  # fmt: skip
    out = json.loads(res.stdout)
    assert out["connect_errno"] is None, f"{pn.kind}: connect failed: {out}"
    replies: list[tuple[int, bytes]] = []
    for (op, _), rep in zip(reqs, out["replies"], strict=True):
        assert rep[0] == op, f"{pn.kind}: {rep}"
        replies.append((rep[1], bytes.fromhex(rep[2])))
    return replies


def put_configs(pn: PveNode, configs: dict[int, bytes]) -> None:
    base = f"nodes/{pn.name}/qemu-server"
    for d in ("nodes", f"nodes/{pn.name}", base):
        err = pn.err("mkdir", path=d)
        assert err in (None, "EEXIST"), err
    for vmid, text in configs.items():
        pn.write(f"{base}/{vmid}.conf", text)


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[PveNode, PveNode]]:
    """(reference, ours), each alone in local mode in its own harness node."""
    assert os.access(reference_binary(), os.X_OK), f"{reference_binary()} is missing"
    cluster = Cluster(
        2, private_dirs=DEFAULT_PRIVATE_DIRS + PVE_PRIVATE_DIRS + REFERENCE_PRIVATE_DIRS,
        start=False,
    )  # fmt: skip
    nodes: list[PveNode] = []
    try:
        # PveNode only needs its harness node here; there is no PveCluster around it
        nodes = [
            PveNode(cast(Any, None), cluster[1], is_reference=True),
            PveNode(cast(Any, None), cluster[2]),
        ]
        for pn in nodes:
            pn.start_agent()
            pn.start_daemon(local=True)
            put_configs(pn, CONFIGS)
        yield nodes[0], nodes[1]
    finally:
        for pn in nodes:
            with contextlib.suppress(Exception):
                pn.stop_agent()
            with contextlib.suppress(Exception):
                pn.stop_daemon()
        cluster.teardown()


def guests_in_any_order(payload: bytes, reply: tuple[int, bytes]) -> tuple[int, bytes]:
    """For vmid 0 (every guest): the guest objects sorted. C lists them in the order of its
    hash table, ours by VMID (README, pve2 IPC); each object must still be byte-equal."""
    error, data = reply
    if payload[:4] != v(0) or error != 0 or data == b"{\n\n}\n":
        return reply
    assert data.startswith(b"{\n") and data.endswith(b"\n}\n"), data
    return error, b",\n".join(sorted(data[2:-3].split(b",\n")))


def compare(pair: tuple[PveNode, PveNode], reqs: list[tuple[int, bytes]]) -> None:
    ref, ours = pair
    want, got = ask(ref, reqs), ask(ours, reqs)
    diffs = [
        f"op {op} {payload!r}:\n  reference {w!r}\n  ours      {g!r}"
        for (op, payload), w, g in zip(reqs, want, got, strict=True)
        if guests_in_any_order(payload, w) != guests_in_any_order(payload, g)
    ]
    assert not diffs, f"{len(diffs)} of {len(reqs)} replies differ:\n" + "\n".join(diffs[:20])
    for pn in pair:
        assert pn.daemon_running, f"{pn.kind} died\n{pn.log_tail()}"


def test_guest_config_corners_match_the_reference(pair: tuple[PveNode, PveNode]) -> None:
    reqs = corner_requests()
    compare(pair, reqs)
    # the cases this is about did occur: repeated names answered twice, an empty name and a
    # name cut by its missing NUL answered, not refused
    ours = ask(pair[1], [
        (GET_GUEST_CONFIG_PROPERTIES, props(102, b"memory", b"memory")),
        (GET_GUEST_CONFIG_PROPERTY, v(103) + b"\0"),
        (GET_GUEST_CONFIG_PROPERTY, v(104) + b"coresX"),
        (GET_GUEST_CONFIG_PROPERTY, v(104) + b"cores\0"),
    ])  # fmt: skip
    assert ours == [
        (0, b'{\n"102":{"memory": "2","memory": "2"}\n}\n'),
        (0, b'{\n"103":{"": " "}\n}\n'),  # ": " repeats ":x": the later wins
        (0, b'{\n"104":{"cores": "2"}\n}\n'),
        (0, b'{\n"104":{"cores": "2"}\n}\n'),  # the early exit keeps the second of three
    ]


def test_random_guest_configs_match_the_reference(pair: tuple[PveNode, PveNode]) -> None:
    rnd = random.Random(20240611)
    configs = random_configs(rnd)
    for pn in pair:
        put_configs(pn, configs)
    compare(pair, random_requests(rnd, sorted(configs)))
