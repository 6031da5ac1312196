"""The cluster log survives restarts of real daemons: alone in local mode, and in a real
3-node cluster where every node must end up with every entry exactly once (the restored log
merges with the peers' logs at the kvstore sync). Messages go in through `pve2`
LOG_CLUSTER_MSG, as PVE tools log them."""

from __future__ import annotations

import json
import secrets
import signal
import stat
from collections import Counter
from functools import partial
from typing import Any

import pytest

from pmxcfs.status.clusterlog_store import FILE_NAME, decode_file
from tests.cluster.pve_nodes import DB_DIR, PveCluster, PveNode
from tests.cluster.test_ipc_cluster import ipc
from tests.daemon.test_ipc_server import NetnsPmxcfs
from tests.polling import wait_until

START = "starting cluster log"


def log_request(msg: str) -> tuple[int, bytes]:
    """LOG_CLUSTER_MSG (op 7): priority, the two lengths, ident, tag, message."""
    ident, tag = b"root@pam", b"persisttest"
    payload = bytes([6, len(ident) + 1, len(tag) + 1]) + ident + b"\0" + tag + b"\0"
    return 7, payload + msg.encode() + b"\0"


def entries(raw: bytes | None) -> list[dict[str, Any]]:
    """The `.clusterlog` entries, newest first."""
    data: list[dict[str, Any]] = json.loads(raw or b"{}").get("data", [])
    return data


# ---------------------------------------------------------------------------- one daemon


def shown(d: NetnsPmxcfs) -> list[str]:
    return [e["msg"] for e in entries(d.path(".clusterlog").read_bytes())]


def test_local_daemon_keeps_its_log_across_restarts(node: NetnsPmxcfs) -> None:
    path = node.db_dir / FILE_NAME
    assert node.call(log_request("before restart")) == [(0, b"")]
    node.restart()
    assert shown(node) == [START, "before restart", START]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # a crash: what the writer saved within its interval is there after the restart
    assert node.call(log_request("before kill")) == [(0, b"")]
    wait_until(
        "the log entry to be saved",
        lambda: b"before kill" in [e.msg for e in decode_file(path.read_bytes(), "n1")],
    )
    node.kill()
    node.start()
    assert shown(node) == [START, "before kill", START, "before restart", START]
    uids = [e["uid"] for e in entries(node.path(".clusterlog").read_bytes())]
    assert uids == sorted(set(uids), reverse=True)  # ids stay unique across restarts
    # a damaged file: one clear line, the daemon starts with a fresh log and replaces the file
    assert node.stop() == 0
    path.write_bytes(path.read_bytes()[:-7])
    node.start()
    assert shown(node) == [START]
    lines = [ln for ln in node.log.read_text().splitlines() if "ignoring cluster log" in ln]
    assert len(lines) == 1 and "not readable msgpack" in lines[0], lines
    assert node.stop() == 0
    assert [e.msg for e in decode_file(path.read_bytes(), "n1")] == [START.encode()]


# ---------------------------------------------------------------------------- a cluster


def messages(pn: PveNode) -> Counter[tuple[str, str]]:
    return Counter((e["node"], e["msg"]) for e in entries(pn.read(".clusterlog")))


def wait_all_have(pc: PveCluster, want: Counter[tuple[str, str]], what: str) -> None:
    """Every node shows at least `want`; then exactly `want` of what `want` counts."""

    def complete(pn: PveNode) -> Counter[tuple[str, str]] | None:
        c = messages(pn)
        return c if all(c[k] >= n for k, n in want.items()) else None

    for pn in pc.nodes:
        got = wait_until(
            f"{pn.name} to show every cluster log entry {what}", partial(complete, pn), timeout=60
        )
        assert got is not None
        assert {k: got[k] for k in want} == dict(want), (pn.name, got)
        assert sum(got.values()) == sum(want.values()), (pn.name, got)  # nothing else either


def stop_all(nodes: list[PveNode]) -> None:
    """SIGTERM to all at once, once (stop_daemon would send another to a daemon still busy
    exiting), and a clean exit from each."""
    for pn in nodes:
        assert pn.daemon is not None
        pn.daemon.send_signal(signal.SIGTERM)
    for pn in nodes:
        assert pn.daemon is not None
        pn.daemon.wait(30)
        assert pn.stop_daemon() == 0, pn.log_tail()


@pytest.mark.cluster
def test_cluster_log_survives_daemon_and_cluster_restarts() -> None:
    tag = secrets.token_hex(4)
    with PveCluster(3) as pc:
        a, b, c = pc.nodes
        want: Counter[tuple[str, str]] = Counter({(pn.name, START): 1 for pn in pc.nodes})
        for pn in pc.nodes:
            msg = f"{tag} from {pn.name}"
            assert ipc(pn, log_request(msg)) == [(0, b"")]
            want[(pn.name, msg)] = 1
        wait_all_have(pc, want, "after logging")

        # one daemon restarts: its saved log and the peers' logs merge, each entry once
        assert b.stop_daemon() == 0, b.log_tail()
        b.start_daemon()
        pc.wait_ready()
        want[(b.name, START)] += 1
        wait_all_have(pc, want, f"after {b.name} restarted")

        # the whole cluster stops; the last node alone logs one more entry nobody else saw
        stop_all([c, b])
        alone = f"{tag} {a.name} alone"
        assert ipc(a, log_request(alone)) == [(0, b"")]
        want[(a.name, alone)] = 1
        wait_until(
            f"{a.name} to save its last entry",
            lambda: alone.encode()
            in [e.msg for e in decode_file((a.node.host_path(DB_DIR) / FILE_NAME).read_bytes(),
                                           a.name)],
        )  # fmt: skip
        stop_all([a])
        for pn in pc.nodes:
            pn.start_daemon()
            want[(pn.name, START)] += 1
        pc.wait_ready()
        wait_all_have(pc, want, "after the whole cluster restarted")
