"""Stopping a cluster-mode daemon while a syscall waits for the cluster (issue 10, hangs).

A create waits for its own message to come back from corosync. If the daemon stopped its
loop without answering it, the caller would keep the directory's lock in the kernel for good,
a cache invalidation waiting for that lock would keep the daemon from ever exiting, and the
caller would hang. Here corosync is paused so the create cannot complete, and SIGTERM must
still end both: the create with an error, the daemon cleanly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.cluster.faults import process_state
from tests.cluster.pve_nodes import MOUNT, PveCluster

pytestmark = pytest.mark.cluster


@pytest.fixture
def pc() -> Iterator[PveCluster]:
    with PveCluster(1) as c:
        yield c


def test_sigterm_answers_a_create_waiting_for_the_cluster(pc: PveCluster) -> None:
    n1 = pc[1]
    n1.ok("mkdir", path="d")
    for i in range(20):  # entries the kernel holds in d
        n1.write(f"d/f{i}", "x\n")
    corosync = pc.cluster[1].corosync
    daemon = n1.daemon
    assert corosync is not None and daemon is not None
    os.kill(corosync.pid, signal.SIGSTOP)
    try:
        rid = n1.send("write", path="d/blocked", data="never\n", mode="x")
        time.sleep(1.0)
        assert n1.agent is not None
        pending = [e for e in n1.agent.events("result") if e.get("id") == rid]
        assert pending == [], "the create was answered although corosync is paused"
        daemon.send_signal(signal.SIGTERM)
        # answered before the loop stops, although corosync still cannot deliver it
        res = n1.result(rid, timeout=10)
    finally:
        # (closing the corosync handles needs corosync: only now can the daemon finish)
        os.kill(corosync.pid, signal.SIGCONT)
    assert not res["ok"] and res["errno"] == "EBUSY", res
    assert daemon.wait(20) == 0, n1.log_tail()
    n1.daemon = None
    assert not n1.mounted()
    assert "requests still waiting" not in n1.log_text()


def _threads(pid: int) -> list[tuple[str, str]]:
    """(state, kernel wait channel) of every thread of *pid*; [] once it is gone."""
    text = process_state(pid)
    return [] if text == "gone" else [(t.split(":")[1], t.split(":")[2]) for t in text.split()]


def _gone(pid: int, timeout: float) -> bool:
    """True once every thread of *pid* has exited (a zombie left for its parent to reap
    counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(state in ("Z", "X") for state, _ in _threads(pid)):
            return True
        time.sleep(0.05)
    return False


def _wait_for_wchan(pid: int, wchan: str, timeout: float) -> bool:
    """Wait until a thread of *pid* sleeps in kernel function *wchan*."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(w == wchan for _, w in _threads(pid)):
            return True
        time.sleep(0.002)
    return False


def test_sigkill_never_leaves_the_daemon_stuck_in_the_kernel() -> None:
    """SIGKILL while peers' creates invalidate a directory in which our own creates wait.

    The invalidation thread then waits in the kernel for that directory's lock, held by a
    create only the (now dead) daemon could answer: without the death watch the process
    never exits and the caller hangs (seen by the fault schedules). Each kill must let the
    process go at once and answer the caller."""
    with PveCluster(3) as pc:
        n1, n2 = pc[1], pc[2]
        n1.ok("mkdir", path="d")
        pc.wait_converged()
        # the peer's creates, from a process of their own (the node's agent stays free)
        load = pc.cluster[2].popen(
            ["sh", "-c", 'i=0; while :; do i=$((i+1)); echo x > "$1/d/p$i" || sleep 0.1; done',
             "sh", MOUNT],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        caught = 0
        try:
            for k in range(6):
                w = n1.send("burst", prefix=f"d/k{k}_", count=100000, tag="own")
                daemon = n1.daemon
                assert daemon is not None
                # kill while the invalidation thread waits in the kernel (the window)
                caught += _wait_for_wchan(daemon.pid, "fuse_reverse_inval_entry", 5.0)
                daemon.kill()
                stuck = not _gone(daemon.pid, 5.0)
                assert not stuck, (
                    f"kill {k}: daemon pid {daemon.pid} did not exit after SIGKILL\n"
                    + n1.log_tail()
                )
                daemon.wait(5)
                n1.daemon = None
                res = n1.result(w, timeout=10)  # the caller got its answer
                assert not res["ok"], res
                n1.start_daemon(timeout=60)
                pc.wait_ready(timeout=90)
        finally:
            load.kill()
            load.wait(10)
        assert n2.daemon is not None and n2.daemon.poll() is None, n2.log_tail()
        # the scenario must have been met, or this test proves nothing
        assert caught, "no kill found the invalidation thread waiting in the kernel"
