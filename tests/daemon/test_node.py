"""The composition root (pmxcfs.node.build_node): the real daemon and an in-process node built
from the same configuration have the same services, in local and in cluster mode."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pmxcfs.cluster import ClusterNode
from pmxcfs.daemon import node_config
from pmxcfs.dcdb.backend import ClusterBackend
from pmxcfs.journal import GroupCommit
from pmxcfs.node import Node, build_node
from pmxcfs.options import parse
from tests.daemon.test_ipc_server import NetnsPmxcfs
from tests.daemon_harness import PYTHON, REPO

CONF = "totem {\n  cluster_name: t\n  config_version: 2\n}\n"


@pytest.fixture
def base() -> Iterator[Path]:
    b = Path(tempfile.mkdtemp(prefix="pmxcfs-node-"))
    try:
        yield b
    finally:
        shutil.rmtree(b, ignore_errors=True)


def _daemon_services(d: NetnsPmxcfs) -> list[str]:
    r = subprocess.run(
        [PYTHON, "-m", "pmxcfs.admin", "status", "--json", "--run-dir", str(d.run_dir)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert r.returncode in (0, 1), r.stderr  # 1: problems (cluster mode without corosync)
    services: list[str] = json.loads(r.stdout)["services"]
    return services


def _in_process(d: NetnsPmxcfs, *, local: bool) -> Node:
    """The node the daemon would build from the same command line (built, not run)."""
    opts = parse(d.args(local=local)[len(d.netns_prefix) + 3 :])
    return build_node(node_config(opts, d.nodename, "10.213.0.1", 33))


@pytest.mark.parametrize("local", [True, False], ids=["local", "cluster"])
def test_daemon_and_in_process_node_have_the_same_services(base: Path, local: bool) -> None:
    d = NetnsPmxcfs(base, nodename="n1")
    d.corosync_conf.write_text(CONF)  # a fresh database imports it: cluster mode unless -l
    d.start(local=local)
    try:
        running = _daemon_services(d)
    finally:
        assert d.stop() == 0
    node = _in_process(d, local=local)
    try:
        assert node.service_names() == running
        assert node.cluster_mode is not local
        if local:
            assert node.cluster is None
        else:
            assert isinstance(node.cluster, ClusterNode)
            assert node.backend is node.cluster.backend
            assert isinstance(node.backend, ClusterBackend)
            # one journal, built with the tree: group commit owned by replication
            assert node.tree.journal is node.journal is node.cluster.replication.journal
            assert node.ipc_state.kvstore is node.cluster.kvstore is not None
        assert isinstance(node.journal, GroupCommit)
        assert node.fs.backend is node.backend
    finally:
        node.close()
    assert "starting cluster log" in node.clog.dump_bytes().decode()
