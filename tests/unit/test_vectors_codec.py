"""Every recorded message of both captures decodes and re-encodes to the identical bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pmxcfs.dcdb import codec as dc
from pmxcfs.dfsm import codec
from pmxcfs.dfsm.capture import CapDeliver, read_capture
from pmxcfs.kvstore import codec as kvcodec
from tests.shared import VECTORS

DCDB = VECTORS / "dcdb-fs-ops-3node.jsonl.gz"
STATUS = VECTORS / "status-ipc-3node.jsonl.gz"


def _delivers(path: Path) -> list[CapDeliver]:
    return [e for e in read_capture(str(path)) if isinstance(e, CapDeliver)]


ALL = _delivers(DCDB) + _delivers(STATUS)


def _check_dcdb_payload(msg: codec.Message) -> str:
    if isinstance(msg, codec.NormalMessage):
        assert msg.protocol_version == dc.PROTOCOL_VERSION
        if msg.subtype in dc.FUSE_SUBTYPES:
            op = dc.decode_fuse(msg.payload)
            assert op.encode() == msg.payload
            assert op.path is not None
            if msg.subtype == dc.Subtype.RENAME:
                assert op.to is not None
            return f"fuse{msg.subtype}"
        assert msg.subtype in (dc.Subtype.UNLOCK_REQUEST, dc.Subtype.UNLOCK)
        u = dc.decode_unlock(msg.payload)
        assert u.encode() == msg.payload
        return "unlock"
    assert msg.protocol_version == dc.PROTOCOL_VERSION
    t = codec.MsgType(msg.type)
    if t is codec.MsgType.STATE:
        idx = dc.decode_index(msg.payload)
        again = dc.encode_index(
            idx.version, idx.last_inode, idx.writer, idx.mtime, list(idx.records)
        )
        assert again == msg.payload
        assert [r[0] for r in idx.records] == sorted(r[0] for r in idx.records)
        assert idx.records[0][0] == 0 and idx.last_inode == idx.records[-1][0]
    elif t is codec.MsgType.UPDATE:
        assert dc.decode_update(msg.payload).encode() == msg.payload
    elif t is codec.MsgType.VERIFY_REQUEST:
        assert codec.encode_verify_request(codec.decode_verify_request(msg.payload)) == msg.payload
    elif t is codec.MsgType.VERIFY:
        assert codec.encode_verify(*codec.decode_verify(msg.payload)) == msg.payload
    else:
        assert msg.payload == b""
    return t.name


def _check_kv_payload(msg: codec.Message) -> str:
    assert msg.protocol_version == kvcodec.PROTOCOL_VERSION
    if isinstance(msg, codec.NormalMessage):
        if msg.subtype == kvcodec.KvSubtype.UPDATE:
            kv = kvcodec.decode_kv_update(msg.payload)
            assert kv.encode() == msg.payload
            assert kv.key  # e.g. b"nodeip", b"rrd/..."
            return "kv"
        assert msg.subtype == kvcodec.KvSubtype.LOG
        e = kvcodec.decode_log_entry(msg.payload)
        assert e.prev == 0 and e.next == 0
        assert e.encode() == msg.payload
        return "log"
    t = codec.MsgType(msg.type)
    if t is codec.MsgType.STATE:
        st = kvcodec.decode_clog(msg.payload)
        assert st.encode() == msg.payload
        return "clog"
    assert msg.payload == b""
    return t.name


def test_every_message_roundtrips() -> None:
    kinds: dict[str, int] = {}
    assert len(ALL) > 300
    for d in ALL:
        msg = codec.decode(d.data)
        assert msg.encode() == d.data
        if d.group == "pve_dcdb_v1":
            kind = "dcdb:" + _check_dcdb_payload(msg)
        else:
            assert d.group == "pve_kvstore_v1"
            kind = "kv:" + _check_kv_payload(msg)
        kinds[kind] = kinds.get(kind, 0) + 1
    for expected in (
        "dcdb:fuse1", "dcdb:fuse2", "dcdb:fuse3", "dcdb:fuse4", "dcdb:fuse5", "dcdb:fuse6",
        "dcdb:unlock", "dcdb:STATE", "dcdb:UPDATE", "dcdb:UPDATE_COMPLETE",
        "dcdb:SYNC_START", "kv:kv", "kv:log", "kv:clog", "kv:SYNC_START",
    ):  # fmt: skip
        assert kinds.get(expected, 0) > 0, expected


def test_group_constants_are_the_recorded_groups() -> None:
    """The C daemons joined exactly the groups our codecs name (the NUL counts)."""
    groups = {d.group for d in ALL}
    assert groups == {dc.GROUP[:-1].decode(), kvcodec.GROUP[:-1].decode()}
    assert dc.GROUP.endswith(b"\0") and kvcodec.GROUP.endswith(b"\0")


def test_encoders_rebuild_messages_from_fields() -> None:
    """Build from parsed fields (not raw payload slices) and get the same bytes."""
    for d in ALL:
        if d.group != "pve_dcdb_v1":
            continue
        msg = codec.decode(d.data)
        if isinstance(msg, codec.NormalMessage):
            again = codec.encode_normal(
                msg.subtype, msg.protocol_version, msg.time, msg.count, msg.payload
            )
        else:
            again = codec.encode_state(
                codec.MsgType(msg.type), msg.protocol_version, msg.time, msg.epoch, msg.payload
            )
        assert again == d.data


def test_spec_worked_example_write() -> None:
    """wire-protocol §9 byte example."""
    payload = dc.FuseOp(b"test.txt", data=b"hello\n").encode()
    msg = codec.encode_normal(dc.Subtype.WRITE, 1, 1795435003, 7, payload)
    assert msg.hex() == (
        "0000010001000000fb29046b00000000"
        "0700000000000000060000000000000009000000000000000000"
        "0000746573742e7478740068656c6c6f0a"
    )
    root = dc.UpdateEntry(0, 0, 1, 0, 0, 4, b"").encode()
    assert len(root) == 42 and root[-2:] == b"\x04\x00"


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 15, b"\x00" * 23, b"\x01\x00" + b"\x00" * 29],
)
def test_short_messages_rejected(data: bytes) -> None:
    with pytest.raises(codec.WireError):
        codec.decode(data)


def test_payload_rules() -> None:
    good = dc.FuseOp(b"a", b"b", b"xy", 3, 0).encode()
    assert dc.decode_fuse(good) == dc.FuseOp(b"a", b"b", b"xy", 3, 0)
    for bad in (good[:-1], good + b"z", good[:19]):
        with pytest.raises(codec.WireError):
            dc.decode_fuse(bad)
    nonul = bytearray(good)
    nonul[21] = ord("q")  # path's NUL
    with pytest.raises(codec.WireError):
        dc.decode_fuse(bytes(nonul))
    with pytest.raises(codec.WireError):
        dc.decode_unlock(b"\x00" * 32)
    with pytest.raises(codec.WireError):
        dc.decode_unlock(b"\x00" * 32 + b"a")
    with pytest.raises(codec.WireError):
        dc.decode_index(b"\x00" * 31)
    idx = dc.encode_index(1, 0, 0, 0, [(0, b"\x11" * 32)])
    with pytest.raises(codec.WireError):
        dc.decode_index(idx + b"\x00")
    with pytest.raises(codec.WireError):  # bytes field consistent, size field lies
        dc.decode_index(idx[:24] + (5).to_bytes(4, "little") + idx[28:])
    upd = dc.UpdateEntry(0, 5, 5, 1, 2, 8, b"f", b"data").encode()
    for bad in (upd[:40], upd[:-1], upd[:40] + b"\x07" + upd[41:]):
        with pytest.raises(codec.WireError):
            dc.decode_update(bad)
    d = dc.UpdateEntry(0, 5, 5, 1, 2, 4, b"d", b"x").encode()
    with pytest.raises(codec.WireError):
        dc.decode_update(d)
    with pytest.raises(codec.WireError):
        codec.decode_verify_request(b"\x00" * 9)
    with pytest.raises(codec.WireError):
        codec.decode_verify(b"\x00" * 39)
