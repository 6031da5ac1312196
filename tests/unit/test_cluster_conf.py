"""corosync.conf mirroring (filesystem.md §9.4) and the services' tree listener."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pmxcfs.dcdb.writegate import WriteGate
from pmxcfs.services.confmirror import CorosyncConfMirror, sync_corosync_conf
from pmxcfs.status.state import ClusterStatus
from pmxcfs.tree import Tree

CONF = b"totem {\n  cluster_name: t\n  config_version: %d\n}\n"


def _tree(version: int) -> Tree:
    t = Tree()
    t.create("corosync.conf", 1, 100)
    t.write("corosync.conf", 0, CONF % version, 1, 100)
    return t


def test_sync_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    host = tmp_path / "corosync.conf"
    assert sync_corosync_conf(_tree(3), str(host)) == (True, 0)  # missing host file
    assert host.read_bytes() == CONF % 3 and os.stat(host).st_mode & 0o777 == 0o644
    assert sync_corosync_conf(_tree(3), str(host)) == (False, 3)  # identical
    assert sync_corosync_conf(_tree(2), str(host)) == (False, 3)  # older
    assert "local corosync.conf is newer" in caplog.text
    assert sync_corosync_conf(_tree(4), str(host)) == (True, 3)
    assert host.read_bytes() == CONF % 4
    t = Tree()
    t.create("corosync.conf", 1, 100)
    t.write("corosync.conf", 0, b"no version here", 1, 100)
    assert sync_corosync_conf(t, str(host)) == (False, 0)
    assert "unable to parse cluster config_version" in caplog.text
    assert sync_corosync_conf(Tree(), str(host)) == (False, 0)
    assert host.read_bytes() == CONF % 4


def test_listener_follows_applied_changes(tmp_path: Path) -> None:
    host = tmp_path / "corosync.conf"
    tree = _tree(1)
    svc = CorosyncConfMirror(tree, ClusterStatus("n1"), WriteGate(), str(host), lambda: 1)
    tree.listeners.append(svc.on_tree_change)
    tree.write("corosync.conf", 0, CONF % 5, 2, 101)
    assert host.read_bytes() == CONF % 5
    tree.create("corosync.conf.new", 2, 102)
    tree.write("corosync.conf.new", 0, CONF % 6, 2, 102)
    assert host.read_bytes() == CONF % 5  # other files do not count
    tree.rename("corosync.conf.new", "corosync.conf", 2, 103)
    assert host.read_bytes() == CONF % 6
