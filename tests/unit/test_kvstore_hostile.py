"""Hostile and malformed kvstore-group input: logged and ignored (or the spec's leave), never an
exception, never a change to what a node shows."""

from __future__ import annotations

import dataclasses
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pmxcfs.dfsm import codec
from pmxcfs.dfsm.codec import Epoch, Mode, MsgType, WireError
from pmxcfs.dfsm.machine import Action, ConfChg, Leave, Send
from pmxcfs.kvstore.app import LOG, UPDATE, KvstoreApp, update_payload
from pmxcfs.kvstore.codec import CLOG_HEADER, LOG_HEADER, iter_clog
from pmxcfs.kvstore.machine import KvstoreDfsm
from pmxcfs.status.clusterlog import ClusterLog, make_entry
from pmxcfs.status.render import render_members, render_rrd
from pmxcfs.status.state import ClusterStatus, NodeInfo
from tests.clock import Clock

T0 = 1_700_000_000
ME = (1, 100)
PEER = (2, 200)
STRANGER = (9, 900)  # a CPG member whose nodeid is not in the nodelist


@dataclass
class Node:
    status: ClusterStatus
    clog: ClusterLog
    dfsm: KvstoreDfsm
    sent: list[bytes]

    def feed(self, actions: list[Action]) -> list[Action]:
        self.sent.extend(a.data for a in actions if isinstance(a, Send))
        return actions

    def deliver(self, sender: tuple[int, int], data: bytes) -> list[Action]:
        return self.feed(self.dfsm.deliver(sender[0], sender[1], data))

    def snapshot(self) -> tuple[str, str, bytes, list[tuple[bytes, int]]]:
        peer = self.status.nodes[2].kv
        kv = [] if peer is None else [(k, v.version) for k, v in peer.items()]
        return render_members(self.status), render_rrd(self.status), self.clog.dump_bytes(), kv


def normal(subtype: int, payload: bytes, count: int = 1, version: int = 0) -> bytes:
    return codec.encode_normal(subtype, version, T0, count, payload)


def state_msg(mtype: MsgType, epoch: Epoch, payload: bytes = b"") -> bytes:
    return codec.encode_state(mtype, 0, T0, epoch, payload)


def peer_blob() -> bytes:
    log = ClusterLog("n2", clock=lambda: T0 - 5)
    log.add_local("root", "cluster", 6, "starting cluster log", pid=200)
    return log.state_blob()


def start_sync(states: dict[tuple[int, int], bytes] | None = None) -> Node:
    """Node 1 in a two-member sync; `states` overrides the peer's STATE payload."""
    clock = Clock(T0)
    status = ClusterStatus("n1", clock=clock)
    status.set_cluster_info("clu", 1, [NodeInfo("n1", 1), NodeInfo("n2", 2)])
    clog = ClusterLog("n1", clock=clock)
    clog.add_local("root", "cluster", 6, "starting cluster log", pid=100)
    dfsm = KvstoreDfsm(KvstoreApp(status, clog, "10.0.0.1"), *ME, clock=clock)
    node = Node(status, clog, dfsm, [])
    node.feed(dfsm.feed(ConfChg((ME, PEER), (), (PEER,))))
    epoch = dfsm.sync_epoch
    node.deliver(ME, state_msg(MsgType.SYNC_START, epoch))
    own = node.sent[-1]
    assert own[0] == MsgType.STATE
    node.deliver(ME, own)
    payload = (states or {}).get(PEER, peer_blob())
    node.deliver(PEER, state_msg(MsgType.STATE, epoch, payload))
    return node


@pytest.fixture
def node() -> Node:
    n = start_sync()
    assert n.dfsm.mode == Mode.SYNCED
    assert n.deliver(PEER, normal(UPDATE, update_payload(b"kv/a", b"1"))) == []
    assert n.deliver(PEER, normal(UPDATE, update_payload(b"nodeip", b"10.0.0.2\0"))) == []
    return n


def _entry_payload(msg: bytes = b"hello", **lens: int) -> bytes:
    """A KVSTORE_LOG payload; `lens` overrides the length bytes (nlen, ilen, tlen)."""
    strings = [b"n2", b"root@pam", b"tag", msg]
    n = [len(x) + 1 for x in strings]
    for i, name in enumerate(("nlen", "ilen", "tlen")):
        n[i] = lens.get(name, n[i])
    head = LOG_HEADER.pack(0, 0, 7, T0, 1, 2, 4242, 6, n[0], n[1], n[2], n[3])
    return head + b"\0".join(strings) + b"\0" + bytes(4)


BAD_NORMAL = {
    "update shorter than the key field": (UPDATE, b"kv/x\0" + bytes(100)),
    "update key without NUL": (UPDATE, b"k" * 256 + b"value"),
    "update over 32 KiB": (UPDATE, update_payload(b"kv/big", b"x" * 32769)),
    "rrd value without NUL": (UPDATE, update_payload(b"rrd/pve2-node/n2", b"1:2:3")),
    "rrd value of 4096 bytes": (UPDATE, update_payload(b"rrd/pve2-node/n2", b"1" * 4095 + b"\0")),
    "empty rrd value": (UPDATE, update_payload(b"rrd/pve2-node/n2", b"")),
    "nodeip of 256 bytes": (UPDATE, update_payload(b"nodeip", b"1" * 255 + b"\0")),
    "log shorter than its header": (LOG, _entry_payload()[:40]),
    "log truncated": (LOG, _entry_payload()[:-3]),
    "log with trailing bytes": (LOG, _entry_payload() + b"\0"),
    "log with a zero-length field": (LOG, _entry_payload(tlen=0)),
    "log string without NUL": (LOG, _entry_payload()[:-5] + b"X" + bytes(4)),
    "log over 4096 bytes": (LOG, _entry_payload(b"m" * 4050)),
    "update-complete subtype": (2, b"whatever"),
    "unknown subtype": (99, b""),
}


@pytest.mark.parametrize("case", sorted(BAD_NORMAL))
def test_bad_normal_messages_are_logged_and_ignored(
    node: Node, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    subtype, payload = BAD_NORMAL[case]
    before = node.snapshot()
    with caplog.at_level(logging.WARNING):
        assert node.deliver(PEER, normal(subtype, payload, count=5)) == []
    assert node.snapshot() == before
    assert node.dfsm.mode == Mode.SYNCED and node.dfsm.stats.fatal == 0
    assert caplog.records, "nothing was logged"
    assert all(r.exc_info is None for r in caplog.records)


def test_sender_outside_the_nodelist_is_dropped() -> None:
    n = start_sync()
    before = n.snapshot()
    n.status.set_cluster_info("clu", 1, [NodeInfo("n1", 1)])  # n2 removed from cmap
    n.deliver(PEER, normal(UPDATE, update_payload(b"nodeip", b"10.9.9.9\0")))
    n.deliver(PEER, normal(UPDATE, update_payload(b"rrd/pve2-node/n2", b"1:2\0")))
    n.deliver(PEER, normal(UPDATE, update_payload(b"kv/x", b"1")))
    assert n.status.node_ips == {"n1": "10.0.0.1"}
    assert render_rrd(n.status) == before[1] == ""
    assert all(x.kv is None for x in n.status.nodes.values())


def test_identity_learned_at_connect_time() -> None:
    """The service learns its nodeid from CPG after construction: own messages still skip."""
    status = ClusterStatus("n1")
    status.set_cluster_info("clu", 1, [NodeInfo("n1", 1), NodeInfo("n2", 2)])
    dfsm = KvstoreDfsm(KvstoreApp(status, ClusterLog("n1"), "10.0.0.1"), 0, 100)
    dfsm.set_identity(*ME)
    dfsm.feed(ConfChg((ME,), (), (ME,)))
    dfsm.deliver(*ME, normal(UPDATE, update_payload(b"nodeip", b"10.6.6.6\0"), count=1))
    assert status.node_ips == {"n1": "10.0.0.1"}


def test_own_messages_are_not_applied_twice(node: Node) -> None:
    node.deliver(ME, normal(UPDATE, update_payload(b"kv/own", b"remote copy"), count=99))
    node.deliver(ME, normal(UPDATE, update_payload(b"nodeip", b"10.6.6.6\0"), count=100))
    assert node.status.kv.get(b"kv/own") is None
    assert node.status.node_ips["n1"] == "10.0.0.1"


def test_newer_protocol_version_stops_the_group(node: Node) -> None:
    before = node.snapshot()
    actions = node.deliver(PEER, normal(UPDATE, update_payload(b"kv/b", b"2"), version=1))
    assert node.snapshot() == before  # not applied
    assert node.dfsm.mode == Mode.VERSION_ERROR and not node.dfsm.restartable
    assert [a.mode for a in actions if isinstance(a, Leave)] == [Mode.VERSION_ERROR]


def test_short_header_and_verify_rules(node: Node) -> None:
    epoch = node.dfsm.sync_epoch
    # a VERIFY_REQUEST with its 8 bytes is ignored (no checksum in this group) ...
    assert node.deliver(PEER, state_msg(MsgType.VERIFY_REQUEST, epoch, bytes(8))) == []
    assert node.dfsm.mode == Mode.SYNCED
    # ... any other length makes a C peer leave, and so do we
    actions = node.deliver(PEER, state_msg(MsgType.VERIFY_REQUEST, epoch, bytes(7)))
    assert any(isinstance(a, Leave) for a in actions) and node.dfsm.mode == Mode.LEAVE
    assert node.dfsm.restartable


def test_truncated_header_leaves_without_exception(node: Node) -> None:
    actions = node.deliver(PEER, b"\x00\x00\x01")
    assert any(isinstance(a, Leave) for a in actions) and node.dfsm.restartable


def _ring(cpos: int, body: bytes = b"", size: int = 4096 * 3) -> bytes:
    buf = bytearray(size)
    CLOG_HEADER.pack_into(buf, 0, size, cpos)
    buf[8 : 8 + len(body)] = body
    return bytes(buf)


def _broken_chain() -> bytes:
    """Two good entries whose older one points outside the buffer: the newer one is kept."""
    good = make_entry(1, T0, b"n2", b"root", b"cluster", 200, 6, b"lost")
    raw = good.encode(0, 8 + ((good.size + 7) & ~7))
    second = make_entry(2, T0 + 1, b"n2", b"root", b"cluster", 200, 6, b"newer")
    pos = 8 + ((good.size + 7) & ~7)
    body = raw + bytes(pos - 8 - len(raw)) + second.encode(50_000, 0)
    return _ring(pos, body)


BAD_STATES: dict[str, bytes] = {
    "empty": b"",
    "8 bytes": struct.pack("<II", 8, 0),
    "size field lies": struct.pack("<II", 4096, 0) + bytes(100),
    "cpos out of bounds": _ring(99_999),
    "cpos in the header": _ring(4),
    "entry with bad lengths": _ring(8, bytes(48)),
    "broken chain": _broken_chain(),
}


@pytest.mark.parametrize("case", sorted(BAD_STATES))
def test_bad_state_blobs_are_skipped(case: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        n = start_sync({PEER: BAD_STATES[case]})
    assert n.dfsm.mode == Mode.SYNCED and n.dfsm.stats.fatal == 0
    msgs = [e.msg for e in n.clog.newest_first()]
    assert b"starting cluster log" in msgs  # our own log survives
    assert msgs == ([b"starting cluster log", b"newer"][::-1] if case == "broken chain"
                    else [b"starting cluster log"])  # fmt: skip
    assert any(r.levelno >= logging.ERROR for r in caplog.records)
    if case in ("empty", "8 bytes", "size field lies"):  # §2.4: the whole state is skipped
        assert "bad cluster log state from node 2/200 skipped" in caplog.text


def test_looping_chain_is_cut() -> None:
    """Entries beyond cpos + 4096 whose prev links form a cycle: C would spin forever."""
    size = 4400
    buf = bytearray(size)
    a = make_entry(1, T0, b"n2", b"root", b"c", 1, 6, b"a")
    hi1, hi2 = 4112, 4208
    buf[8 : 8 + a.size] = a.encode(hi1, 104)
    buf[hi1 : hi1 + a.size] = dataclasses.replace(a, uid=2).encode(hi2, hi1 + 96)
    buf[hi2 : hi2 + a.size] = dataclasses.replace(a, uid=3).encode(hi1, hi2 + 96)
    CLOG_HEADER.pack_into(buf, 0, size, 8)
    seen = 0
    with pytest.raises(WireError, match="loops"):
        for _pos, _e in iter_clog(bytes(buf)):
            seen += 1
    assert seen <= size // 48
    n = start_sync({PEER: bytes(buf)})  # merged up to the cycle, no hang
    assert {e.uid for e in n.clog.newest_first() if e.node == b"n2"} == {1, 2, 3}


def test_duplicate_state_leaves() -> None:
    n = start_sync()
    # a new sync where the peer sends two STATEs: the spec's leave, nothing raised
    n.feed(n.dfsm.feed(ConfChg((ME, PEER), (), ())))
    epoch = n.dfsm.sync_epoch
    n.deliver(ME, state_msg(MsgType.SYNC_START, epoch))
    n.deliver(PEER, state_msg(MsgType.STATE, epoch, peer_blob()))
    actions = n.deliver(PEER, state_msg(MsgType.STATE, epoch, peer_blob()))
    assert any(isinstance(a, Leave) for a in actions) and n.dfsm.mode == Mode.LEAVE


def _iter_bad() -> Iterator[bytes]:
    for _sub, payload in BAD_NORMAL.values():
        yield payload


def test_hostile_payloads_as_state_blobs_never_raise() -> None:
    for payload in _iter_bad():
        blob = struct.pack("<II", len(payload) + 8, 8) + payload
        n = start_sync({PEER: blob})
        assert n.dfsm.mode == Mode.SYNCED
