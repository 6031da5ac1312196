"""The admin socket without a daemon: the protocol (sans I/O), the history the sampler keeps,
and the real server on a real Unix socket, refusing a non-root peer that got past the file
mode (a child process that really switched its uid)."""

from __future__ import annotations

import json
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from pmxcfs.control import protocol
from pmxcfs.control.client import DaemonUnavailable, call
from pmxcfs.control.history import GroupHistory, GroupReading
from pmxcfs.control.server import REFUSED, AdminServer
from tests.daemon_harness import REPO

NOBODY = 65534

# ---------------------------------------------------------------------- protocol


def body(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def roundtrip(req: protocol.Request) -> protocol.Request:
    (b,) = protocol.FrameReader(protocol.MAX_REQUEST).feed(protocol.encode_request(req))
    return protocol.decode_request(b)


requests = st.one_of(
    st.just(protocol.Ping()),
    st.just(protocol.Status()),
    st.builds(protocol.Log, st.integers(0, 1 << 20)),
    st.builds(protocol.Debug, st.one_of(st.none(), st.booleans())),
)


@given(st.lists(requests, min_size=1, max_size=5), st.integers(1, 40))
def test_requests_survive_any_chunking(reqs: list[protocol.Request], chunk: int) -> None:
    stream = b"".join(protocol.encode_request(r) for r in reqs)
    reader = protocol.FrameReader(protocol.MAX_REQUEST)
    bodies: list[bytes] = []
    for i in range(0, len(stream), chunk):
        bodies += reader.feed(stream[i : i + chunk])
    assert [protocol.decode_request(b) for b in bodies] == reqs
    assert reader.pending == 0


def test_request_encoding() -> None:
    assert roundtrip(protocol.Log(7)) == protocol.Log(7)
    assert roundtrip(protocol.Debug(None)) == protocol.Debug(None)
    framed = protocol.encode_request(protocol.Debug(True))
    assert framed[:4] == (len(framed) - 4).to_bytes(4, "big")
    assert msgpack.unpackb(framed[4:]) == {"v": 1, "op": "debug", "on": True}


@pytest.mark.parametrize(
    ("msg", "why"),
    [
        ({"v": 1, "op": "rm -rf"}, "unknown operation"),
        ({"v": 1}, "unknown operation"),
        ({"v": 2, "op": "status"}, "unsupported protocol version 2"),
        ({"op": "status"}, "unsupported protocol version None"),
        ({"v": 1, "op": "status", "x": 1}, "unexpected argument(s) for status: x"),
        ({"v": 1, "op": "log", "max": -1}, "'max' must be an integer"),
        ({"v": 1, "op": "log", "max": True}, "'max' must be an integer"),
        ({"v": 1, "op": "log", "max": "5"}, "'max' must be an integer"),
        ({"v": 1, "op": "debug", "on": 1}, "'on' must be a boolean"),
        ([1, "status"], "not a map"),
    ],
)
def test_bad_requests_say_why(msg: Any, why: str) -> None:
    with pytest.raises(protocol.ProtocolError) as exc:
        protocol.decode_request(body(msg))
    assert why in str(exc.value)


@pytest.mark.parametrize("raw", [b"", b"\xc1", b"\x92\x01", body({"v": 1, "op": "ping"}) + b"\x00"])
def test_garbage_is_a_protocol_error(raw: bytes) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_request(raw)


def test_oversized_frame_is_refused_before_its_body() -> None:
    reader = protocol.FrameReader(100)
    with pytest.raises(protocol.ProtocolError, match="101 bytes exceeds the limit of 100"):
        reader.feed((101).to_bytes(4, "big"))
    assert protocol.FrameReader(100).feed((100).to_bytes(4, "big") + b"x" * 99) == []


def test_replies() -> None:
    def decode(framed: bytes) -> Any:
        (b,) = protocol.FrameReader(protocol.MAX_REPLY).feed(framed)
        return protocol.decode_reply(b)

    assert decode(protocol.encode_reply({"a": [1, None, 2.5]})) == {"a": [1, None, 2.5]}
    with pytest.raises(protocol.RemoteError, match=r"^nope$"):
        decode(protocol.encode_error("nope"))
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_reply(body({"v": 1, "ok": "maybe"}))


# ---------------------------------------------------------------------- history


def reading(mode: str, syncs: int, epoch_time: int = 0, sent: int = 0, dlv: int = 0) -> Any:
    return GroupReading(mode, syncs, epoch_time, sent, dlv)


def test_sync_times_and_rates_from_samples() -> None:
    h = GroupHistory()
    h.observe(0.0, 1000.0, reading("start_sync", 0, 999))
    assert h.syncing_since == 999.0 and h.last is None
    assert h.rates(0.5, 0, 0) == (None, None)  # not a second of samples yet
    h.observe(1.0, 1001.0, reading("synced", 1, 999, 10, 20))
    assert h.syncing_since is None
    assert h.last is not None and (h.last.start, h.last.end, h.last.duration) == (999, 1001, 2)
    h.observe(2.0, 1002.0, reading("synced", 1, 999, 30, 60))
    assert h.last.end == 1001  # no new sync
    assert h.rates(2.0, 30, 60) == (15.0, 30.0)
    for t in range(3, 30):  # the window slides: only the last ten seconds count
        h.observe(float(t), 1000.0 + t, reading("synced", 1, 999, 30 + 5 * t, 60))
    sent_rate, dlv_rate = h.rates(29.0, 30 + 5 * 29, 60)
    assert sent_rate == pytest.approx(5.0) and dlv_rate == 0.0
    h.observe(30.0, 1030.0, reading("synced", 2, 1029))  # a quick sync between two samples
    assert (h.last.start, h.last.end) == (1029, 1030)


def test_first_sample_of_a_synced_group_records_its_sync() -> None:
    h = GroupHistory()
    h.observe(5.0, 500.0, reading("synced", 1, 498))
    assert h.last is not None and h.last.start == 498
    h2 = GroupHistory()
    h2.observe(5.0, 500.0, reading("start", 0))
    assert h2.last is None and h2.syncing_since is None


# ---------------------------------------------------------------------- server


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may traverse (pytest's tmp_path is root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="pmxcfs-admin-"))
    d.chmod(0o711)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


CHILD = """
import json, os, sys
from pmxcfs.control import protocol
from pmxcfs.control.client import DaemonUnavailable, call
uid = int(sys.argv[2])
os.setgroups([])
os.setresgid(uid, uid, uid)
os.setresuid(uid, uid, uid)
try:
    out = {"result": call(protocol.Ping(), sys.argv[1], 10)}
except DaemonUnavailable as exc:
    out = {"unavailable": str(exc)}
except protocol.RemoteError as exc:
    out = {"refused": str(exc)}
print(json.dumps({"uid": os.getuid(), **out}))
"""


async def ask_as(path: Path, uid: int) -> dict[str, Any]:
    """A child process that imports as root, then really becomes `uid` and asks."""
    res = await trio.run_process(
        [sys.executable, "-c", CHILD, str(path), str(uid)], capture_stdout=True, cwd=REPO
    )
    out: dict[str, Any] = json.loads(res.stdout)
    assert out["uid"] == uid
    return out


def serve(path: Path, **kw: Any) -> AdminServer:
    return AdminServer(str(path), lambda req: {"pong": type(req).__name__}, **kw)


def test_non_root_peers_are_refused(open_dir: Path) -> None:
    path = open_dir / "admin.sock"
    server = serve(path)
    results: dict[str, Any] = {}

    async def main() -> None:
        async with trio.open_nursery() as n:
            await n.start(server.run)
            st_ = path.stat()
            results["mode"] = (stat.S_IMODE(st_.st_mode), st_.st_uid, stat.S_ISSOCK(st_.st_mode))
            results["root"] = await ask_as(path, 0)
            results["nobody_by_mode"] = await ask_as(path, NOBODY)
            path.chmod(0o666)  # as if the file mode were bypassed: the credentials still count
            results["nobody_by_creds"] = await ask_as(path, NOBODY)
            n.cancel_scope.cancel()

    trio.run(main)
    assert results["mode"] == (0o600, 0, True)
    assert results["root"]["result"] == {"pong": "Ping"}
    assert "permission denied" in results["nobody_by_mode"]["unavailable"]
    assert results["nobody_by_creds"] == {"uid": NOBODY, "refused": REFUSED}
    assert server.refused == 1
    assert not path.exists()  # removed when the server stops


def test_one_connection_many_requests_and_bad_frames(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    got: dict[str, Any] = {}

    async def exchange(data: bytes, replies: int) -> list[Any]:
        stream = await trio.open_unix_socket(str(path))
        out: list[Any] = []
        async with stream:
            await stream.send_all(data)
            reader = protocol.FrameReader(protocol.MAX_REPLY)
            while len(out) < replies:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                for b in reader.feed(chunk):
                    try:
                        out.append(protocol.decode_reply(b))
                    except protocol.RemoteError as exc:
                        out.append(f"error: {exc}")
            got.setdefault("closed", []).append(await stream.receive_some(1) == b"")
        return out

    async def main() -> None:
        async with trio.open_nursery() as n:
            await n.start(serve(path, idle_timeout=0.5).run)
            both = protocol.encode_request(protocol.Status()) + protocol.encode_request(
                protocol.Log(3)
            )
            got["two"] = await exchange(both, 2)  # then idle: the server hangs up
            got["bad"] = await exchange(protocol.frame(b"\xc1"), 1)
            got["huge"] = await exchange((1 << 30).to_bytes(4, "big"), 1)
            n.cancel_scope.cancel()

    trio.run(main)
    assert got["two"] == [{"pong": "Status"}, {"pong": "Log"}]
    assert len(got["bad"]) == 1 and got["bad"][0].startswith("error: not a msgpack message")
    assert got["huge"][0].startswith("error: frame of 1073741824 bytes exceeds")
    assert got["closed"] == [True, True, True]


def test_a_live_socket_is_not_taken_over_and_a_stale_one_is(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    errors: list[str] = []

    async def main() -> None:
        async with trio.open_nursery() as n:
            await n.start(serve(path).run)
            try:
                await n.start(serve(path).run)
            except OSError as exc:
                errors.append(str(exc))
            n.cancel_scope.cancel()

    trio.run(main)
    assert errors == [f"[Errno 98] another process serves {path}"]
    # a socket file nobody listens on (a killed daemon's) is replaced
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()

    async def again() -> None:
        async with trio.open_nursery() as n:
            await n.start(serve(path).run)
            res = await trio.to_thread.run_sync(call, protocol.Ping(), str(path), 5.0)
            assert res == {"pong": "Ping"}
            n.cancel_scope.cancel()

    trio.run(again)


def test_client_says_why_nobody_answers(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnavailable, match="pmxcfs is not running \\(no admin socket"):
        call(protocol.Status(), str(tmp_path / "admin.sock"), 1)
    out = subprocess.run(
        [sys.executable, "-m", "pmxcfs.admin", "status", "--socket", str(tmp_path / "x.sock")],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert out.returncode == 4
    assert out.stdout == ""
    assert (
        out.stderr == f"pmxcfs-admin: pmxcfs is not running (no admin socket {tmp_path}/x.sock)\n"
    )
