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
import time
from collections.abc import Iterator

import pytest

from tests.cluster.pve_nodes import PveCluster

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
