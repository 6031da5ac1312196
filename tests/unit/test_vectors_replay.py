"""Replay the recorded 3-node C cluster (dcdb group) into Python DFSM+DCDB nodes.

Each node gets exactly the deliveries and membership changes its C counterpart got, in order.
What the Python node sends must equal what the C node sent (time fields aside), its results
must be the ones the captions expect, and every STATE index along the way must equal the C
node's byte for byte.

The capture starts from a database whose inode 2 (corosync.conf) content is not recorded.
The test uses a stand-in entry and maps the C digest of that record to the stand-in's digest
in every received STATE; all other records are compared as recorded.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field

from pmxcfs import checksum
from pmxcfs.constants import DT_REG, VERSION_ROW_NAME
from pmxcfs.dcdb.app import DcdbApp
from pmxcfs.dcdb.codec import PROTOCOL_VERSION, Subtype, decode_index
from pmxcfs.dfsm import codec
from pmxcfs.dfsm.capture import CapConfChg, CapDeliver, CapOp, read_capture
from pmxcfs.dfsm.codec import Mode, MsgType
from pmxcfs.dfsm.machine import ConfChg, Deliver, Dfsm, Send
from pmxcfs.tree import Tree
from tests.clock import Clock
from tests.shared import VECTORS

CAPTURE = VECTORS / "dcdb-fs-ops-3node.jsonl.gz"
GROUP = "pve_dcdb_v1"
NODEIDS = {"n1": 1, "n2": 2, "n3": 3}


@dataclass
class Node:
    name: str
    pid: int
    tree: Tree
    app: DcdbApp
    dfsm: Dfsm
    sent: list[bytes] = field(default_factory=list)
    results: dict[int, tuple[int, int]] = field(default_factory=dict)  # count -> (subtype, res)
    matched: int = 0
    own_states: list[bytes] = field(default_factory=list)


def _initial_rows(mtime: int) -> list:
    return [
        (0, 0, 3, 0, mtime, DT_REG, VERSION_ROW_NAME, None),
        (2, 0, 3, 0, mtime, DT_REG, "corosync.conf", b"stand-in for the unrecorded file\n"),
    ]


def _make_node(name: str, pid: int, rows: list, clock: Clock) -> Node:
    tree = Tree.from_rows(rows, clock=clock)
    tree.finish_load(clock.t)
    holder: dict[int, tuple[int, int]] = {}

    def observe(sender: tuple[int, int], count: int, subtype: int, result: int) -> None:
        if sender == (NODEIDS[name], pid):
            holder[count] = (subtype, result)

    app = DcdbApp(tree, clock=clock, observer=observe)
    dfsm = Dfsm(NODEIDS[name], pid, app, PROTOCOL_VERSION, clock=clock, name=f"dcdb[{name}]")
    return Node(name, pid, tree, app, dfsm, results=holder)


def _mask(data: bytes) -> bytes:
    b = bytearray(data)
    b[8:12] = b"\x00" * 4  # sender time
    if len(b) >= 32 and b[0] == MsgType.SYNC_START:
        b[20:24] = b"\x00" * 4  # epoch time: the coordinator's clock at its confchg
    return bytes(b)


def replay() -> tuple[dict[str, Node], list[Node], list[str]]:
    events = list(read_capture(str(CAPTURE)))
    first_state = next(
        e for e in events if isinstance(e, CapDeliver) and e.group == GROUP and e.data[0] == 2
    )
    idx = decode_index(first_state.data[32:])
    assert [r[0] for r in idx.records] == [0, 2]
    real_rec2 = struct.pack("<Q", 2) + idx.records[1][1]
    clock = Clock()
    rows = _initial_rows(idx.mtime)
    probe = Tree.from_rows(rows)
    fake_rec2 = struct.pack("<Q", 2) + checksum.entry_digest(probe.index[2])

    def fix(data: bytes) -> bytes:
        if data[0] == MsgType.STATE:
            assert data.count(real_rec2) == 1, "inode 2 changed during the capture"
            return data.replace(real_rec2, fake_rec2)
        return data

    pids = {"n1": 6567, "n2": 6568, "n3": 6569}
    nodes = {n: _make_node(n, pids[n], rows, clock) for n in pids}
    retired: list[Node] = []
    captions: list[str] = []
    for ev in events:
        if isinstance(ev, CapOp):
            captions.append(ev.op)
            continue
        if ev.group != GROUP:
            continue
        clock.t = ev.t
        node = nodes[ev.node]
        if isinstance(ev, CapConfChg):
            mine = [m for m in ev.members if m[0] == NODEIDS[ev.node]]
            if mine and mine[0][1] != node.pid:  # the process was restarted
                retired.append(node)
                node = nodes[ev.node] = _make_node(ev.node, mine[0][1], node.tree.rows(), clock)
            actions = node.dfsm.feed(ConfChg(ev.members, ev.left, ev.joined))
        else:
            data = fix(ev.data)
            if (ev.nodeid, ev.pid) == node.dfsm.me and data[0] != 0:
                assert node.sent, f"{ev.node} delivered own message it never sent"
                ours = node.sent.pop(0)
                assert _mask(ours) == _mask(data), (ev.node, ours.hex(), data.hex())
                node.matched += 1
                if data[0] == MsgType.STATE:
                    node.own_states.append(data[32:])
            actions = node.dfsm.feed(Deliver(ev.nodeid, ev.pid, data))
        for a in actions:
            assert isinstance(a, Send), f"{ev.node}: unexpected action {a}"
            assert a.data[0] != 0, "replayed node must not originate NORMAL messages"
            node.sent.append(a.data)
    return nodes, retired, captions


def test_replay_reaches_the_recorded_states() -> None:
    nodes, retired, captions = replay()
    assert "partition: n3 cut off (veth3 down)" in captions
    for n in [*nodes.values(), *retired]:
        assert n.dfsm.stats.fatal == 0, (n.name, n.dfsm.stats.errors)
    for n in nodes.values():
        assert n.dfsm.mode == Mode.SYNCED
        assert n.sent == [], f"{n.name} sent messages the C node never sent"
        assert n.matched > 0
    # every own STATE matched the C node's bytes (checked during replay); the final trees agree
    final = {n.name: n.tree.encode_index() for n in nodes.values()}
    assert len(set(final.values())) == 1
    idx = decode_index(final["n1"])
    assert (idx.version, idx.last_inode, idx.size) == (27, 26, 13)
    assert nodes["n1"].own_states[-1] == final["n1"]


def test_replay_tree_matches_the_captions() -> None:
    nodes, _retired, _ = replay()
    for n in nodes.values():
        t = n.tree
        conf = t.lookup("nodes/n2/qemu-server/100.conf")
        assert conf is not None and conf.data == b"name:"  # written, appended, truncated to 5
        assert t.lookup("nodes/n1/qemu-server/100.conf") is None  # moved away
        assert t.lookup("nodes/n1/qemu-server") is None  # rmdir
        assert t.lookup("nodes/n1") is not None
        assert t.lookup("big.txt") is None  # unlinked by n2
        lock = t.lookup("priv/lock/mylock")
        assert lock is not None and lock.is_dir and lock.writer == 1  # unlock was refused
        sc = t.lookup("storage.cfg")
        assert sc is not None and sc.data == b"dir: local\n\tpath /var/lib/vz\n"
        dp = t.lookup("during-partition.txt")
        assert dp is not None and dp.data == b"partition-write\n" and dp.inode == 24
        wd = t.lookup("while-n2-down.txt")
        assert wd is not None and wd.data == b"down\n" and wd.inode == 26
        assert t.vmlist is not None


def test_replay_results_seen_by_originators() -> None:
    nodes, retired, _ = replay()
    n1 = next(n for n in [*retired, *nodes.values()] if n.name == "n1")
    n2_first = next(n for n in retired if n.name == "n2")
    n3 = nodes["n3"]
    # n1: mkdir x3, create, write 12, write 12 at 12, truncate, utime, rename, dup create
    assert n1.results[1] == (Subtype.MKDIR, 0)
    assert n1.results[5] == (Subtype.WRITE, 12)
    assert n1.results[6] == (Subtype.WRITE, 12)
    assert n1.results[7] == (Subtype.WRITE, 0)  # truncate: size 0 written
    assert n1.results[9] == (Subtype.RENAME, 0)
    assert n1.results[10] == (Subtype.CREATE, -errno.EEXIST)  # duplicate VMID
    assert n1.results[16] == (Subtype.WRITE, 29)
    # n2: unlock request then utime(0) on the lock: refused with EACCES (lock not expired)
    assert n2_first.results[3] == (Subtype.UNLOCK_REQUEST, 0)
    assert n2_first.results[4] == (Subtype.MTIME, -errno.EACCES)
    assert n2_first.results[5] == (Subtype.DELETE, 0)
    assert n3.results[2] == (Subtype.WRITE, 3000)


def test_replay_decodes_every_dcdb_message() -> None:
    count = 0
    for ev in read_capture(str(CAPTURE)):
        if isinstance(ev, CapDeliver) and ev.group == GROUP:
            codec.decode(ev.data)
            count += 1
    assert count > 150
