"""The `pve2` IPC server of a real local-mode daemon, through libqb's own client.

The abstract socket @pve2 is per network namespace, so every daemon here runs under
`unshare -n` and clients join it with `nsenter --net=/proc/<pid>/ns/net` (tests/ipc_client.py,
which also drops to the uid/gid a case needs). Processes end with the test, the namespace
with its daemon, and the /dev/shm/qb-<daemon pid>-* rings are removed at teardown.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import PYTHON, REPO, Pmxcfs
from tests.shared import VECTORS as SHARED_VECTORS

VECTORS = SHARED_VECTORS / "ipc-replies.jsonl"
TOKEN = b"root@pam!mytoken 11111111-2222-3333-4444-555555555555"

Reply = tuple[int, bytes]


class NetnsPmxcfs(Pmxcfs):
    """A harness daemon (alone in its network namespace) plus IPC clients that join it."""

    def stop(self, *args: Any, **kwargs: Any) -> int | None:
        pid = self.proc.pid if self.proc is not None else None
        rc = super().stop(*args, **kwargs)
        if pid is not None:
            for path in glob.glob(f"/dev/shm/qb-{pid}-*"):
                shutil.rmtree(path, ignore_errors=True)
        return rc

    last_client_pid = 0

    def shm_leftovers(self) -> list[str]:
        assert self.proc is not None
        return glob.glob(f"/dev/shm/qb-{self.proc.pid}-*")

    def ipc(self, requests: list[bytes], *, uid: int = 0, gid: int = 0) -> dict[str, Any]:
        """Run one client connection in our namespace; raw requests in, replies out."""
        assert self.proc is not None and self.proc.poll() is None
        job = {"uid": uid, "gid": gid, "requests": [r.hex() for r in requests]}
        r = subprocess.run(
            ["nsenter", f"--net=/proc/{self.proc.pid}/ns/net", "--", PYTHON, "tests/ipc_client.py"],
            input=json.dumps(job), capture_output=True, text=True, cwd=REPO, timeout=30,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        out: dict[str, Any] = json.loads(r.stdout)
        self.last_client_pid = out["pid"]
        return out

    def call(self, *reqs: tuple[int, bytes], uid: int = 0, gid: int = 0) -> list[Reply]:
        """(op, payload) requests on one connection → [(error, payload)]; ids are checked."""
        out = self.ipc([req(op, p) for op, p in reqs], uid=uid, gid=gid)
        assert out["connect_errno"] is None, out
        replies = []
        for (op, _), rep in zip(reqs, out["replies"], strict=True):
            assert rep[0] == op, rep
            replies.append((rep[1], bytes.fromhex(rep[2])))
        return replies


def req(op: int, payload: bytes = b"", size: int | None = None) -> bytes:
    return struct.pack("=i4xi4x", op, 16 + len(payload) if size is None else size) + payload


def name(s: bytes) -> bytes:
    return s.ljust(256, b"\x00")


def write(d: Pmxcfs, rel: str, data: bytes) -> None:
    p = d.path(rel)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def setup_like_vectors(d: Pmxcfs) -> None:
    """The tree the reference replies were recorded on (as far as they show it)."""
    write(d, "storage.cfg", b"dir: local\n\tpath /var/lib/vz\n")
    write(d, "priv/token.cfg", TOKEN + b"\n")
    write(d, "nodes/n1/qemu-server/100.conf", b"name: vm100\nmemory: 2048\nlock: backup\n")
    write(d, "nodes/n2/lxc/101.conf", b"hostname: ct101\nmemory: 512\n")


def vectors() -> list[dict[str, Any]]:
    with open(VECTORS) as f:
        return [json.loads(line) for line in f if line.strip()]


def versions_masked(text: bytes) -> bytes:
    return re.sub(rb'("version": )\d+', rb"\1N", text)


# ---------------------------------------------------------------------- replay


def test_replay_reference_replies(node: NetnsPmxcfs) -> None:
    setup_like_vectors(node)
    recs = [v for v in vectors() if "op" in v]
    assert len(recs) >= 20
    # every recorded request on one connection, in the recorded order (SET before GET)
    replies = node.call(*((v["op"], bytes.fromhex(v["req_hex"])) for v in recs))
    snaps = [v for v in vectors() if v.get("node") == "n1" and "file" in v]
    files = {v["file"]: v["text"].encode() for v in snaps}
    for v, (error, payload) in zip(recs, replies, strict=True):
        want = bytes.fromhex(v["hex"])
        note = v["note"]
        assert error == v["error"], note
        assert 24 + len(payload) == v["size"] or v["op"] in (1, 2, 3, 8, 10), note
        if v["op"] in (4, 5, 6, 7, 9, 11, 12, 13) or error:
            assert payload == want, note  # independent of cluster state: byte for byte
        elif v["op"] == 10:
            # the data the client sent is returned verbatim, in insertion order, plus a NUL
            assert payload == want, note
        elif v["op"] == 3:
            assert versions_masked(payload) == versions_masked(want), note
            assert versions_masked(payload) == versions_masked(files[".vmlist"])
        elif v["op"] == 1:
            # same keys as the reference (counters and the kvstore block are ours)
            keys = re.findall(rb'^"([^"]+)": ', payload, re.M)
            assert keys == re.findall(rb'^"([^"]+)": ', want, re.M)[: len(keys)], note
            assert payload.endswith(b'"kvstore": {\n"n1": {\n}\n}\n}\n')  # before SET_STATUS
        elif v["op"] == 2:
            assert payload == b'{\n"nodename": "n1",\n"version": 0\n}\n', note  # local mode
        elif v["op"] == 8:
            data = json.loads(payload)["data"]
            ref = json.loads(want)["data"]
            def fields(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
                keep = [e for e in entries if e["tag"] != "cluster"]
                return [(e["pri"], e["tag"], e["user"], e["msg"]) for e in keep]

            assert fields(data) == fields(ref), note
            # the escaped message, byte for byte as the reference prints it
            assert rb'"msg": "quote \" ctl#010 uml\u00e4t \u20ac"' in payload
    # the generated files show the same state as IPC
    assert node.path(".rrd").read_bytes() == files[".rrd"]
    assert node.call((10, b""))[0] == (0, files[".rrd"] + b"\0")
    assert node.call((3, b""))[0] == (0, node.path(".vmlist").read_bytes())
    assert node.call((2, b""))[0] == (0, node.path(".members").read_bytes())
    assert node.call((1, b""))[0] == (0, node.path(".version").read_bytes())
    assert node.shm_leftovers() == []  # libqb removed the rings of the finished clients


# ---------------------------------------------------------------------- round trips


def test_set_status_then_get_status(node: NetnsPmxcfs) -> None:
    value = json.dumps({"tasks": list(range(50))}).encode() + b"\0"
    assert node.call((4, name(b"tasklist") + value)) == [(0, b"")]
    # a later connection sees it, under '' and under our node name
    assert node.call((5, name(b"tasklist") + name(b"")), (5, name(b"tasklist") + name(b"n1"))) == [
        (0, value),
        (0, value),
    ]
    assert b'"n1": {\n"tasklist": 0}' in node.path(".version").read_bytes()
    assert node.call((4, name(b"tasklist") + b"x"), (5, name(b"tasklist") + name(b""))) == [
        (0, b""),
        (0, b"x"),
    ]
    assert b'"n1": {\n"tasklist": 1}' in node.path(".version").read_bytes()
    # an rrd/ value lands in .rrd, and nodeip is kept apart from the kv store
    line = b"1700000000:100861726720:9261178880"
    assert node.call((4, name(b"rrd/pve2-storage/n1/local") + line + b"\0")) == [(0, b"")]
    assert node.path(".rrd").read_bytes() == b"pve2-storage/n1/local:" + line + b"\n"


def test_log_cluster_msg_shows_in_clusterlog(node: NetnsPmxcfs) -> None:
    msg = b"backup of VM 100 started"
    p = bytes([5, 9, 10]) + b"root@pam\0vzdump123\0" + msg + b"\0"
    assert node.call((7, p)) == [(0, b"")]
    data = json.loads(node.path(".clusterlog").read_bytes())["data"]
    assert data[0]["msg"] == msg.decode()
    assert (data[0]["user"], data[0]["tag"], data[0]["pri"], data[0]["node"]) == (
        "root@pam", "vzdump123", 5, "n1")  # fmt: skip
    assert data[0]["pid"] == node.last_client_pid  # the peer's pid from the handshake
    assert data[-1]["msg"] == "starting cluster log"
    # GET_CLUSTER_LOG returns the same dump
    (err, dump), = node.call((8, struct.pack("=IIII", 0, 0, 0, 0) + b"\0"))
    assert (err, dump) == (0, node.path(".clusterlog").read_bytes())


# ---------------------------------------------------------------------- bad input


def test_bad_requests(node: NetnsPmxcfs) -> None:
    cases: list[tuple[bytes, int]] = [
        (req(1, size=17), -errno.EINVAL),  # header claims one byte more than sent
        (req(1, size=8), -errno.EINVAL),  # header smaller than itself
        (req(1, size=1 << 30), -errno.EINVAL),  # beyond the buffer: never read
        (req(6, b"storage.cfg\0", size=16), -errno.EINVAL),
        (req(99), -errno.ECHRNG),
        (req(9), -errno.ECHRNG),
        (req(1, b"x"), -errno.EINVAL),
        (req(4, b"kv/x\0"), -errno.EINVAL),  # name field too short
        (req(4, name(b"kv/big") + b"a" * 32769), -errno.EFBIG),
        (req(4, name(b"rrd/x") + b"no nul"), -errno.ENOMEM),
        (req(5, name(b"kv/big")), -errno.EINVAL),
        (req(5, name(b"kv/big") + name(b"")), -errno.ENOENT),  # EFBIG stored nothing
        (req(6), -errno.EINVAL),
        (req(7, b"\x06\x02\x02a\0b\0msg"), -errno.EINVAL),  # message without NUL
        (req(7, b"\x06\x02\x02ab\0\0m\0"), -errno.EINVAL),  # ident without NUL
        (req(7, b"\x06\x02\x02a\0bxm\0"), -errno.EINVAL),  # tag without NUL
        (req(7, b"\x06\x02\x02a\0b\0"), -errno.EINVAL),  # no message
        (req(8, b"\0" * 16), -errno.EINVAL),  # no user string
        (req(12, b"tok"), -errno.EINVAL),
        (req(13, struct.pack("=IB", 0, 0) + b"x\0"), -errno.EINVAL),
        (req(4, name(b"kv/ok") + b"a" * 32768), 0),  # the limit itself is fine
        (req(1), 0),  # and the connection still works after all that
    ]
    out = node.ipc([r for r, _ in cases])
    assert out["connect_errno"] is None
    for (raw, want), rep in zip(cases, out["replies"], strict=True):
        assert rep[1] == want, (raw[:40], rep)
        if want:
            assert rep[2] == "", raw[:40]
    assert node.path(".version").read_bytes().count(b'"kv/ok": 0') == 1


def test_read_only_client(node: NetnsPmxcfs) -> None:
    setup_like_vectors(node)
    write(node, "nodes/n1/priv/authorized_keys", b"ssh-rsa x\n")
    for uid in (1000, 0):  # group www-data reads, root included
        replies = node.call(
            (4, name(b"kv/x") + b"v"),
            (7, bytes([6, 9, 2]) + b"root@pam\0t\0read-only attempt\0"),
            (6, b"priv/token.cfg\0"),
            (6, b"nodes/n1/priv/authorized_keys\0"),
            (6, b"storage.cfg\0"),
            (12, TOKEN + b"\0"),
            (1, b""),
            (5, name(b"kv/x") + name(b"")),
            uid=uid,
            gid=33,
        )
        assert [e for e, _ in replies] == [
            -errno.EPERM, -errno.EPERM, -errno.EPERM, -errno.EPERM, 0, 0, 0, -errno.ENOENT,
        ]  # fmt: skip
        assert replies[4][1] == b"dir: local\n\tpath /var/lib/vz\n"
    assert b"read-only attempt" not in node.path(".clusterlog").read_bytes()
    # root:root may do all of it
    assert [e for e, _ in node.call((6, b"priv/token.cfg\0"), (4, name(b"kv/x") + b"v"))] == [0, 0]


@pytest.mark.parametrize(("uid", "gid"), [(1000, 1000), (1000, 0), (0, 1)])
def test_other_clients_are_rejected(node: NetnsPmxcfs, uid: int, gid: int) -> None:
    out = node.ipc([req(1)], uid=uid, gid=gid)
    assert out["connect_errno"] is not None, out
    assert out["replies"] == []
    assert "rejected" in node.log.read_text()
    assert node.call((1, b""))[0][0] == 0  # the server is fine
    assert node.shm_leftovers() == []


# ---------------------------------------------------------------------- life cycle


def test_socket_busy_is_one_log_line_and_the_daemon_runs(node: NetnsPmxcfs, tmp_path: Path) -> None:
    """A second daemon in the same namespace cannot have @pve2 but serves its mount."""
    assert node.proc is not None
    other = NetnsPmxcfs(tmp_path / "n2", nodename="n2")
    other.netns_prefix = ["nsenter", f"--net=/proc/{node.proc.pid}/ns/net", "--"]
    try:
        other.start()
        (other.mount / "x.cfg").write_bytes(b"ok")
        assert (other.mount / "x.cfg").read_bytes() == b"ok"
        lines = [ln for ln in other.log.read_text().splitlines() if "IPC server" in ln]
        assert len(lines) == 1 and "unable to start" in lines[0], lines
        assert node.call((2, b""))[0][1].startswith(b'{\n"nodename": "n1"')  # still the first
    finally:
        assert other.stop() == 0


def test_restart_flag_and_ipc_across_a_restart(node: NetnsPmxcfs) -> None:
    flag = node.run_dir / "cfs-restart-flag"
    assert not flag.exists()
    assert node.call((1, b""))[0][0] == 0
    assert node.stop() == 0
    assert flag.exists()
    assert "IPC" not in node.log.read_text()  # no error on start or stop
    node.start()
    deadline = time.monotonic() + 5
    while flag.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not flag.exists()
    assert node.call((1, b""))[0][0] == 0
    assert os.path.exists(f"/proc/{node.proc.pid if node.proc else 0}")
