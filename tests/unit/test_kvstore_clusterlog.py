"""The cluster log as C peers see it: wire entries, the ring, dedup, merge, sort and dump."""

from __future__ import annotations

import dataclasses
import json

from pmxcfs.kvstore.codec import CLOG_HEADER, LOG_MAX, decode_clog, decode_log_entry
from pmxcfs.status.clusterlog import (
    CLOG_SIZE,
    MERGE_LIMIT,
    ClusterLog,
    LogEntry,
    compare,
    fnv1a64,
    make_entry,
)

T0 = 1_700_000_000


def entry(node: bytes, uid: int, t: int, msg: bytes = b"m", ident: bytes = b"root@pam") -> LogEntry:
    return make_entry(uid, t, node, ident, b"pvedaemon", 1234, 6, msg)


def test_fnv1a64_vectors() -> None:
    assert fnv1a64(b"node1\0") == 0xE6F5E3C220C8FEFC
    assert fnv1a64(b"root@pam\0") == 0x0BF69A5DBF95BB61
    assert fnv1a64(b"root\0") == 0x4DD1E2461DBC53BF


def test_wire_example_of_the_spec() -> None:
    log = ClusterLog("node1", clock=lambda: T0)
    log.add_local("root", "cluster", 6, "first", pid=1)
    e = log.add_local("root@pam", "pvedaemon", 6, 'quote " ctl\n umläut €', pid=1234)
    assert e is not None
    raw = e.encode(0, 0)
    assert len(raw) == 109
    assert raw[:44].hex() == (
        "00000000" "00000000" "02000000" "00f15365" "fcfec820c2e3f5e6" "61bb95bf5d9af60b"
        "d2040000" "06" "06" "09" "0a" "24000000"
    )  # fmt: skip
    assert raw[44:] == b'node1\0root@pam\0pvedaemon\0quote \\" ctl#010 uml\\u00e4ut \\u20ac\0' + (
        bytes(4)
    )
    assert decode_log_entry(raw) == e


def test_priority_8_creates_nothing() -> None:
    log = ClusterLog("n1")
    assert log.add_local("root", "t", 8, "x") is None
    assert log.newest_first() == []


def test_long_messages_fit_in_4096_bytes_and_keep_escapes_whole() -> None:
    log = ClusterLog("n1", clock=lambda: T0)
    plain = log.add_local("root", "cluster", 6, "x" * 10_000)
    assert plain is not None
    assert len(plain.msg) == 4096 - 44 - (3 + 5 + 8) - 7  # C stops at B - 7
    escaped = log.add_local("root", "cluster", 6, "€" * 2000)
    assert escaped is not None and escaped.size <= LOG_MAX
    assert len(escaped.msg) % 6 == 0 and escaped.msg.endswith(b"\\u20ac")
    long_fields = log.add_local("i" * 300, "t" * 300, 6, '"' * 5000)
    assert long_fields is not None and long_fields.size <= LOG_MAX
    assert len(long_fields.ident) == len(long_fields.tag) == 254
    for e in (plain, escaped, long_fields):
        assert decode_log_entry(e.encode(0, 0)) == e


def test_dedup_per_node() -> None:
    log = ClusterLog("n1")
    assert log.insert(entry(b"n2", 5, T0))
    assert not log.insert(entry(b"n2", 5, T0))  # the same entry again
    assert not log.insert(entry(b"n2", 4, T0))  # lower uid, same second
    assert not log.insert(entry(b"n2", 9, T0 - 1))  # late
    assert log.insert(entry(b"n2", 6, T0))
    assert log.insert(entry(b"n3", 1, T0 - 100))  # other node: its own history
    oversized = dataclasses.replace(entry(b"n2", 7, T0 + 1), msg=b"m" * 4050)
    assert not log.insert(oversized)
    assert [(e.node, e.uid) for e in log.newest_first()] == [(b"n3", 1), (b"n2", 6), (b"n2", 5)]


def test_dump_format_filter_and_limit() -> None:
    log = ClusterLog("n1")
    assert log.dump() == '{\n"data": [\n]\n}\n'
    log.insert(entry(b"n1", 1, T0, b"a"))
    log.insert(entry(b"n2", 1, T0 + 1, b"b", ident=b"alice@pve"))
    log.insert(entry(b"n1", 2, T0 + 2, b"c"))
    assert log.dump() == (
        '{\n"data": [\n'
        '{"uid": 2, "time": 1700000002, "pri": 6, "tag": "pvedaemon", "pid": 1234, '
        '"node": "n1", "user": "root@pam", "msg": "c"},\n'
        '{"uid": 1, "time": 1700000001, "pri": 6, "tag": "pvedaemon", "pid": 1234, '
        '"node": "n2", "user": "alice@pve", "msg": "b"},\n'
        '{"uid": 1, "time": 1700000000, "pri": 6, "tag": "pvedaemon", "pid": 1234, '
        '"node": "n1", "user": "root@pam", "msg": "a"}\n'
        "]\n}\n"
    )
    assert [e["msg"] for e in json.loads(log.dump(user="alice@pve"))["data"]] == ["b"]
    assert [e["msg"] for e in json.loads(log.dump(max_entries=2))["data"]] == ["c", "b"]
    log.insert(entry(b"n3", 1, T0 - 50, b"late"))  # arrival order, not time order (as C)
    assert [e["msg"] for e in json.loads(log.dump())["data"]] == ["late", "c", "b", "a"]


def test_ring_wraps_and_keeps_the_newest() -> None:
    log = ClusterLog("n1", size=2 * LOG_MAX)
    for uid in range(1, 200):
        assert log.insert(entry(b"n1", uid, T0 + uid, b"x" * 100))
    uids = [e.uid for e in log.newest_first()]
    assert uids[0] == 199 and uids == list(range(199, 199 - len(uids), -1))
    # 176-byte slots: 46 fit in 8 KiB, but C's walk does not trust the 4096 bytes after the
    # newest entry (23 slots), so 23 survive (in the real 128 KiB ring that guard costs 3 %)
    assert len(uids) == 23
    blob = log.state_blob()
    assert len(blob) == 2 * LOG_MAX
    assert [e.uid for e in decode_clog(blob).entries] == sorted(uids)


def test_ring_wraps_before_an_entry_would_end_at_the_buffer_end() -> None:
    """31 slots of 264 bytes fill 8 KiB exactly: C's `>=` wraps the 31st to offset 8."""
    log = ClusterLog("n1", size=2 * LOG_MAX)
    for uid in range(1, 32):
        e = entry(b"n1", uid, T0 + uid, b"z" * 193)
        assert (e.size + 7) & ~7 == 264
        log.insert(e)
    # the 31st overwrote the 1st; the walk keeps what lies beyond cpos + 4096 (17..30)
    assert [e.uid for e in log.newest_first()] == [31, *range(30, 16, -1)]


def test_state_blob_is_the_sorted_contiguous_ring() -> None:
    log = ClusterLog("n1")
    assert log.state_blob() == CLOG_HEADER.pack(CLOG_SIZE, 0) + bytes(CLOG_SIZE - 8)
    a, b, c = entry(b"node1", 1, T0), entry(b"node2", 3, T0 + 3), entry(b"node1", 2, T0 + 5)
    for e in (a, c):
        log.insert(e)
    log.insert(b)  # a remote entry arriving after a newer local one
    assert [e.uid for e in log.newest_first()] == [3, 2, 1]  # the dump shows arrival order
    blob = log.state_blob()
    assert len(blob) == CLOG_SIZE
    real = [(e.size + 7) & ~7 for e in (a, b, c)]
    offsets = [8, 8 + real[0], 8 + real[0] + real[1]]
    assert CLOG_HEADER.unpack_from(blob) == (CLOG_SIZE, offsets[2])
    st = decode_clog(blob)
    assert [e.uid for e in st.entries] == [1, 3, 2]  # ascending (time, node, uid)
    assert [(e.prev, e.next) for e in st.entries] == [
        (0, offsets[1]),
        (offsets[0], offsets[2]),
        (offsets[1], offsets[2] + real[2]),
    ]
    assert st.encode() == blob


def test_sort_uses_the_truncated_c_comparator() -> None:
    base = entry(b"n1", 1, T0)
    hi = dataclasses.replace(base, node_digest=0x1_C000_0000)
    lo = dataclasses.replace(base, node_digest=0x1_0000_0000)
    assert compare(hi, lo) < 0 < compare(lo, hi)  # 64-bit order would say the opposite
    log = ClusterLog("x")
    log.insert(lo)
    log.insert(hi)
    got = [e.node_digest for e in decode_clog(log.state_blob()).entries]
    assert got == [hi.node_digest, lo.node_digest]


def _blob(*entries: LogEntry) -> bytes:
    log = ClusterLog("peer")
    for e in entries:
        assert log.insert(e)
    return log.state_blob()


def test_merge_unions_members_and_rebuilds_dedup() -> None:
    log = ClusterLog("n1")
    mine = entry(b"n1", 1, T0)
    log.insert(mine)
    shared = entry(b"n2", 1, T0 + 1)
    other = _blob(shared, entry(b"n2", 2, T0 + 3))
    third = _blob(shared, entry(b"n3", 1, T0 + 2), entry(b"n4", 9, 0))
    log.merge([None, other, third])
    got = [(e.node, e.uid) for e in log.newest_first()]
    assert got == [(b"n2", 2), (b"n3", 1), (b"n2", 1), (b"n1", 1)]  # time-0 entries never picked
    assert not log.insert(entry(b"n2", 1, T0 + 2))  # older than n2's newest merged entry
    assert log.insert(entry(b"n2", 3, T0 + 3))


def test_merge_stops_at_the_byte_limit() -> None:
    log = ClusterLog("n1")
    big = [entry(b"n2", i, T0 + i, b"y" * 900) for i in range(1, 135)]
    real = (big[0].size + 7) & ~7
    assert 8 + len(big) * real < CLOG_SIZE  # one full peer ring
    log.merge([None, _blob(*big)])
    kept = log.newest_first()
    assert len(kept) == -(-MERGE_LIMIT // real) < len(big)  # the one crossing it is kept
    assert [e.uid for e in kept] == list(range(134, 134 - len(kept), -1))
