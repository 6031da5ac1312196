"""The cluster log file (pmxcfs/status/clusterlog_store.py): what it keeps, how it is written,
what it refuses, and that a restored log merges with the peers' logs without duplicates."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
from collections import Counter
from pathlib import Path

import msgpack
import pytest
import trio

from pmxcfs.kvstore.codec import LOG_MAX
from pmxcfs.status import clusterlog_store
from pmxcfs.status.clusterlog import ClusterLog, LogEntry, make_entry
from pmxcfs.status.clusterlog_store import (
    FILE_NAME,
    ClusterLogStore,
    StoreError,
    decode_file,
    encode_file,
    write_atomic,
)

T0 = 1_700_000_000


def entry(node: bytes, uid: int, t: int, msg: bytes = b"m") -> LogEntry:
    return make_entry(uid, t, node, b"root@pam", b"pvedaemon", 1234, 6, msg)


def clock(t: list[int]) -> ClusterLog:
    return ClusterLog("n1", clock=lambda: t[0])


def filled(nodename: str = "n1") -> ClusterLog:
    log = ClusterLog(nodename, clock=lambda: T0 + 10)
    log.add_local("root", "cluster", 6, "starting cluster log", pid=1)
    log.insert(entry(b"n2", 7, T0 + 3, b'quote \\" ctl#010 uml\\u00e4ut'))
    log.insert(dataclasses.replace(entry(b"n3", 2, T0 + 1), pad=b"\xde\xad\xbe\xef"))
    log.add_local("alice@pve", "pvedaemon", 3, "x" * 5000, pid=42)
    log.insert(entry(b"n2", 8, T0 + 12))
    return log


def saved(log: ClusterLog, path: Path) -> None:
    """Save `log` as the daemon does: the store's task once, then its final write."""
    store = ClusterLogStore(str(path), log)
    store._changed()
    store.close()


def loaded(path: Path, nodename: str = "n1", size: int | None = None) -> ClusterLog:
    log = ClusterLog(nodename) if size is None else ClusterLog(nodename, size=size)
    ClusterLogStore(str(path), log).load()
    return log


def oldest_first(log: ClusterLog) -> list[LogEntry]:
    """The log's entries as the file holds them (ring links are not kept)."""
    return [dataclasses.replace(e, prev=0, next=0) for e in reversed(log.newest_first())]


def msgs(log: ClusterLog) -> list[bytes]:
    return [e.msg for e in log.newest_first()]


# ---------------------------------------------------------------------------- the file


def test_round_trip_keeps_every_field_order_and_blob(tmp_path: Path) -> None:
    log = filled()
    path = tmp_path / FILE_NAME
    saved(log, path)
    back = loaded(path)
    assert back.newest_first() == log.newest_first()  # every field, pad included
    assert back.dump() == log.dump()  # arrival order, not time order, as before
    assert back.state_blob() == log.state_blob()  # what peers receive at the next sync
    assert decode_file(path.read_bytes(), "n1") == oldest_first(log)


def test_restored_log_goes_on_with_dedup_and_uids() -> None:
    t = [T0 + 12]
    log = clock(t)
    log.add_local("root", "cluster", 6, "a")
    log.add_local("root", "cluster", 6, "b")
    log.insert(entry(b"n2", 8, T0 + 12))
    back = clock(t)  # restarted within the same second
    back.restore(reversed(log.newest_first()))
    assert not back.insert(entry(b"n2", 8, T0 + 12))  # already there: dedup survived
    assert not back.insert(entry(b"n2", 3, T0 + 11))  # late, as before the restart
    e = back.add_local("root", "cluster", 6, "starting cluster log")
    assert e is not None and e.uid == 3  # C would reuse uid 1: "the same entry" as "a"
    assert msgs(back) == [b"starting cluster log", b"m", b"b", b"a"]


def test_file_is_bounded_as_the_ring(tmp_path: Path) -> None:
    log = ClusterLog("n1", size=2 * LOG_MAX)
    for uid in range(1, 300):
        log.insert(entry(b"n1", uid, T0 + uid, b"y" * 100))
    path = tmp_path / FILE_NAME
    saved(log, path)
    kept = log.newest_first()
    assert len(kept) < 40  # the ring wrapped many times
    assert decode_file(path.read_bytes(), "n1") == oldest_first(log)
    assert path.stat().st_size < 2 * log.size
    # a file written for a larger ring: the smaller one keeps its newest entries that fit
    big = ClusterLog("n1")
    for uid in range(1, 300):
        big.insert(entry(b"n1", uid, T0 + uid, b"y" * 100))
    saved(big, path)
    small = loaded(path, size=2 * LOG_MAX)
    assert small.newest_first() == kept


def test_empty_log_round_trips(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    saved(ClusterLog("n1"), path)
    assert decode_file(path.read_bytes(), "n1") == []
    assert loaded(path).newest_first() == []


GOOD = encode_file("n1", [entry(b"n1", 1, T0)])
ROW = msgpack.unpackb(GOOD)["entries"][0]


def doc(**kw: object) -> bytes:
    d = {"format": "pmxcfs-clusterlog", "version": 1, "node": "n1", "entries": [ROW]}
    d.update(kw)
    return bytes(msgpack.packb(d, use_bin_type=True))


def row(i: int, value: object) -> bytes:
    r = list(ROW)
    r[i] = value
    return doc(entries=[r])


BAD_FILES = {
    "garbage": (b"\x00\x01not msgpack at all\xff", "not readable msgpack"),
    "truncated": (GOOD[:-5], "not readable msgpack"),
    "trailing bytes": (GOOD + b"\x00", "not readable msgpack"),
    "empty": (b"", "not readable msgpack"),
    "sync marker": (bytes(msgpack.packb({"version": 5})), "not a pmxcfs cluster log file"),
    "json": (b'{"format": "pmxcfs-clusterlog"}', "not readable msgpack"),
    "a list": (bytes(msgpack.packb([1, 2, 3])), "not a pmxcfs cluster log file"),
    "newer version": (doc(version=2), "format version 2 is not supported"),
    "other node": (doc(node="n2"), "written by node 'n2', this node is 'n1'"),
    "no entries": (doc(entries={"a": 1}), "no entry list"),
    "short row": (doc(entries=[ROW[:10]]), "entry 0 is not a list of 11 fields"),
    "negative uid": (row(0, -1), "entry 0 has a bad number -1"),
    "u32 overflow": (row(1, 1 << 32), "bad number"),
    "float": (row(4, 1.5), "bad number 1.5"),
    "bool": (row(5, True), "bad number True"),
    "NUL in msg": (row(9, b"a\x00b"), "entry 0 has a bad string"),
    "str not bin": (row(6, "n1"), "entry 0 has a bad string"),
    "long node": (row(6, b"n" * 255), "longer than 254 bytes"),
    "pad": (row(10, b"\x00"), "bad pad field"),
    "oversized": (row(9, b"m" * 4090), "(> 4096)"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_refused_in_one_line(
    case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw, why = BAD_FILES[case]
    with pytest.raises(StoreError, match=why.replace("(", r"\(").replace(")", r"\)")):
        decode_file(raw, "n1")
    path = tmp_path / FILE_NAME
    path.write_bytes(raw)
    log = ClusterLog("n1")
    log.add_local("root", "cluster", 6, "running")  # made before: never lost
    with caplog.at_level(logging.INFO, logger="pmxcfs.clusterlog"):
        assert ClusterLogStore(str(path), log).load() == 0
    assert msgs(log) == [b"running"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith(f"ignoring cluster log file {path}: "), lines
    assert why in lines[0]


def test_not_a_regular_file_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = tmp_path / "good"
    saved(filled(), good)
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(good)
    (tmp_path / "huge").write_bytes(b"\x00" * (5 * ClusterLog("n1").size))
    for name, why in (("dir", "not a regular file"), ("link", "symbolic links"),
                      ("huge", "more than a cluster log can hold")):  # fmt: skip
        caplog.clear()
        log = ClusterLog("n1")
        with caplog.at_level(logging.ERROR, logger="pmxcfs.clusterlog"):
            assert ClusterLogStore(str(tmp_path / name), log).load() == 0
        assert log.newest_first() == []
        assert len(caplog.records) == 1 and why in caplog.records[0].getMessage(), name
    assert not (tmp_path / "missing").exists()
    caplog.clear()
    assert ClusterLogStore(str(tmp_path / "missing"), ClusterLog("n1")).load() == 0
    assert caplog.records == []  # a first start is not an error


def test_refused_file_is_replaced_by_the_next_save(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(b"garbage")
    log = ClusterLog("n1")
    store = ClusterLogStore(str(path), log)
    assert store.load() == 0
    log.add_local("root", "cluster", 6, "starting cluster log")
    store.close()
    assert [e.msg for e in decode_file(path.read_bytes(), "n1")] == [b"starting cluster log"]


# ---------------------------------------------------------------------------- writing


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files the store wrote, in order (each still written by the real write_atomic)."""
    done: list[str] = []
    real = clusterlog_store.write_atomic

    def counted(path: str, data: bytes) -> None:
        real(path, data)
        done.append(path)

    monkeypatch.setattr(clusterlog_store, "write_atomic", counted)
    return done


def test_write_is_atomic_and_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, writes: list[str]
) -> None:
    path = tmp_path / FILE_NAME
    tmp = tmp_path / (FILE_NAME + ".tmp")
    tmp.write_bytes(b"leftover of a crash")
    tmp.chmod(0o644)
    old = os.umask(0)  # 0600 whatever the umask
    try:
        write_atomic(str(path), b"one")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"one" and not tmp.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # a save that cannot complete leaves the old file whole, and says so once while it lasts
    tmp.mkdir()
    (tmp / "x").write_bytes(b"")
    log = filled()
    store = ClusterLogStore(str(path), log)
    with caplog.at_level(logging.INFO, logger="pmxcfs.clusterlog"):
        for i in range(3):
            log.add_local("root", "t", 6, f"again {i}")
            store._dirty = False  # what `run` does once per interval
            store._submit(log.snapshot())
            assert store.wait_idle(30)
        assert path.read_bytes() == b"one" and len(writes) == 0
        (tmp / "x").unlink()
        tmp.rmdir()
        store.close()  # nothing changed since, but the last save failed: written now
    assert decode_file(path.read_bytes(), "n1") == oldest_first(log)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [lvl for lvl, _m in lines] == [logging.ERROR, logging.INFO], lines
    assert "cannot save the cluster log" in lines[0][1] and "saved to" in lines[1][1]


def test_writer_coalesces_and_writes_the_last_state_at_close(
    tmp_path: Path, writes: list[str]
) -> None:
    path = tmp_path / FILE_NAME
    log = ClusterLog("n1", clock=lambda: T0)
    store = ClusterLogStore(str(path), log, interval=3600)
    log.add_local("root", "cluster", 6, "starting cluster log")

    async def main() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(store.run)
            await trio.to_thread.run_sync(store.wait_idle)
            while len(writes) == 0:  # the first change is written at once
                await trio.sleep(0.01)
                await trio.to_thread.run_sync(store.wait_idle)
            first = decode_file(path.read_bytes(), "n1")
            assert [e.msg for e in first] == [b"starting cluster log"]
            for i in range(100):  # within the interval: one write, later
                log.add_local("root", "t", 6, f"m{i}")
            await trio.sleep(0.2)
            assert len(writes) == 1
            n.cancel_scope.cancel()

    trio.run(main)
    store.close()
    assert len(writes) == 2
    assert len(decode_file(path.read_bytes(), "n1")) == 101
    assert loaded(path).dump() == log.dump()


def test_unchanged_log_is_not_rewritten(tmp_path: Path, writes: list[str]) -> None:
    path = tmp_path / FILE_NAME
    log = filled()
    saved(log, path)
    writes.clear()  # counted from here: this store's writes
    store = ClusterLogStore(str(path), ClusterLog("n1"))
    store.load()
    before = path.stat().st_ino
    store._changed()  # e.g. a merge that changed nothing
    store.close()
    assert len(writes) == 0 and path.stat().st_ino == before


# ---------------------------------------------------------------------------- merging


def exchange(logs: dict[str, ClusterLog], node: str, msg: str, t: list[int]) -> None:
    """`node` logs `msg` and every other node receives it (KVSTORE_LOG)."""
    e = logs[node].add_local("root@pam", "test", 6, msg)
    assert e is not None
    for name, other in logs.items():
        if name != node:
            other.insert(e)
    t[0] += 1


def sync(logs: list[ClusterLog]) -> None:
    """One kvstore sync: every member merges every member's STATE blob (its own live)."""
    blobs = [log.state_blob() for log in logs]
    for i, log in enumerate(logs):
        log.merge([None if j == i else b for j, b in enumerate(blobs)])


def counts(log: ClusterLog) -> Counter[tuple[bytes, bytes]]:
    return Counter((e.node, e.msg) for e in log.newest_first())


def restart(name: str, log: ClusterLog, tmp_path: Path, t: list[int]) -> ClusterLog:
    """Stop (final save) and start again (load, then our "starting cluster log")."""
    path = tmp_path / f"{name}.msgpack"
    saved(log, path)
    back = ClusterLog(name, clock=lambda: t[0])
    ClusterLogStore(str(path), back).load()
    back.add_local("root", "cluster", 6, "starting cluster log")
    return back


def test_restart_then_sync_merges_without_duplicates(tmp_path: Path) -> None:
    t = [T0]
    names = ["a", "b", "c"]
    logs = {n: ClusterLog(n, clock=lambda: t[0]) for n in names}
    for n in names:
        logs[n].add_local("root", "cluster", 6, "starting cluster log")
    sync(list(logs.values()))
    for i in range(12):
        exchange(logs, names[i % 3], f"msg {i}", t)
    # one node restarts in the same second as its last entry (C would drop its new entry)
    now = t[0]
    t[0] = max(e.time for e in logs["b"].newest_first() if e.node == b"b")
    logs["b"] = restart("b", logs["b"], tmp_path, t)
    t[0] = now
    sync(list(logs.values()))
    want = {(n.encode(), f"msg {i}".encode()) for i, n in enumerate(names * 4)}
    for log in logs.values():
        c = counts(log)
        assert all(c[k] == 1 for k in want), c
        assert c[(b"b", b"starting cluster log")] == 2 and sum(c.values()) == 12 + 4
    assert len({log.dump() for log in logs.values()}) == 1
    # then the whole cluster: nobody has a live log left, only the files
    for n in names:
        logs[n] = restart(n, logs[n], tmp_path, t)
        t[0] += 1
    sync(list(logs.values()))
    for log in logs.values():
        c = counts(log)
        assert all(c[k] == 1 for k in want), c
        starts = [c[(n.encode(), b"starting cluster log")] for n in names]
        assert starts == [2, 3, 2] and sum(c.values()) == 12 + 7
    assert len({log.dump() for log in logs.values()}) == 1
    # and a message after all that reaches everyone once
    exchange(logs, "c", "after", t)
    sync(list(logs.values()))
    assert all(counts(log)[(b"c", b"after")] == 1 for log in logs.values())
    data = json.loads(logs["a"].dump(max_entries=100))["data"]
    assert len({(d["uid"], d["node"]) for d in data}) == len(data)  # the API's entry ids


def test_node_without_its_file_continues_uids_from_the_peers_copy() -> None:
    """A node whose file is gone (or was refused) learns its old uids at the first sync, so a
    new entry in the same second is not dropped as older than its own old one."""
    t = [T0 + 5]
    peer = ClusterLog("b", clock=lambda: t[0])
    for uid in range(1, 6):
        peer.insert(entry(b"a", uid, T0 + 5))
    fresh = ClusterLog("a", clock=lambda: t[0])
    fresh.merge([None, peer.state_blob()])
    e = fresh.add_local("root", "cluster", 6, "starting cluster log")
    assert e is not None and e.uid == 6
    assert msgs(fresh)[0] == b"starting cluster log"
