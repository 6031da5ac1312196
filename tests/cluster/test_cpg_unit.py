"""cpg bindings: pure-Python parts here, live-corosync parts inside a 1-node cluster.

corosync's client IPC is only reachable from inside the node's namespaces, so the
live checks (``tests/cluster/unit_checks.py``) run there as a subprocess each.
"""

from __future__ import annotations

import sys

import pytest

from cpg import CPG_MAX_NAME_LENGTH, group_name
from cpg.cmap import NodeInfo, parse_nodelist
from cpg.errors import (
    ERROR_CLASSES,
    CorosyncUnavailable,
    CpgNameError,
    CSErrBadHandle,
    CSErrLibrary,
    CSError,
    CSErrTryAgain,
    HandleClosedError,
    error_for,
)
from pmxcfs.dcdb.codec import GROUP as DCDB_GROUP
from pmxcfs.kvstore.codec import GROUP as KVSTORE_GROUP
from tests.cluster.harness import REPO_ROOT, Cluster, ClusterFactory
from tests.cluster.unit_checks import CHECKS

# ------------------------------------------------------------------ pure Python


def test_every_cs_error_has_a_named_class() -> None:
    names = {
        2: "CS_ERR_LIBRARY", 6: "CS_ERR_TRY_AGAIN", 7: "CS_ERR_INVALID_PARAM",
        9: "CS_ERR_BAD_HANDLE", 12: "CS_ERR_NOT_EXIST", 14: "CS_ERR_EXIST",
        26: "CS_ERR_TOO_BIG", 30: "CS_ERR_TOO_MANY_GROUPS", 100: "CS_ERR_SECURITY",
    }  # fmt: skip
    assert set(ERROR_CLASSES) == set(range(2, 29)) | {30, 100}
    for code, cls in ERROR_CLASSES.items():
        err = error_for(code, "cpg_join")
        assert type(err) is cls and err.code == code and isinstance(err, CSError)
        assert err.name.startswith("CS_ERR_") and err.name in str(err)
        assert str(err).startswith("cpg_join: ")
        if code in names:
            assert err.name == names[code]
    assert isinstance(error_for(2, "x"), CorosyncUnavailable)
    assert isinstance(error_for(9, "x"), CorosyncUnavailable)
    assert issubclass(CSErrLibrary, CorosyncUnavailable)
    assert issubclass(CSErrBadHandle, CorosyncUnavailable)
    assert not isinstance(error_for(6, "x"), CorosyncUnavailable)
    assert isinstance(error_for(6, "x"), CSErrTryAgain)
    unknown = error_for(77, "cmap_get")
    assert type(unknown) is CSError and unknown.code == 77 and "77" in str(unknown)
    assert issubclass(HandleClosedError, RuntimeError)


def test_group_name_rules() -> None:
    assert CPG_MAX_NAME_LENGTH == 128
    assert group_name("pve_dcdb_v1", include_nul=True) == b"pve_dcdb_v1\0"
    assert group_name(b"pve_dcdb_v1", include_nul=False) == b"pve_dcdb_v1"
    assert (len(DCDB_GROUP), len(KVSTORE_GROUP)) == (12, 15)
    assert DCDB_GROUP == b"pve_dcdb_v1\0" and KVSTORE_GROUP == b"pve_kvstore_v1\0"
    assert len(group_name(b"a" * 127, include_nul=True)) == 128
    assert len(group_name(b"a" * 128, include_nul=False)) == 128
    for name, nul in ((b"a" * 128, True), (b"a" * 129, False), (b"", False), (b"a\0", True)):
        with pytest.raises(CpgNameError):
            group_name(name, include_nul=nul)
    with pytest.raises(ValueError, match="129 bytes"):
        group_name("é" * 64, include_nul=True)  # 128 UTF-8 bytes + NUL


def test_nodelist_parsing_follows_pmxcfs_rules() -> None:
    items: list[tuple[str, int | str]] = [
        ("nodelist.local_node_pos", 0),
        ("nodelist.node.0.name", "alpha"),
        ("nodelist.node.0.nodeid", 1),
        ("nodelist.node.0.quorum_votes", 2),
        ("nodelist.node.0.ring0_addr", "10.0.0.1"),
        ("nodelist.node.1.nodeid", 2),  # no name: ring0_addr is the name
        ("nodelist.node.1.ring0_addr", "10.0.0.2"),
        ("nodelist.node.1.ring1_addr", "10.1.0.2"),  # ignored subkey
        ("nodelist.node.2.name", "nonode"),  # nodeid 0 / missing: dropped
        ("nodelist.node.3.nodeid", 4),  # neither name nor ring0_addr: dropped
        ("nodelist.node.10.name", "ten"),
        ("nodelist.node.10.nodeid", 10),
    ]
    assert parse_nodelist(items) == (
        NodeInfo(0, 1, "alpha", 2, "10.0.0.1"),
        NodeInfo(1, 2, "10.0.0.2", 0, "10.0.0.2"),
        NodeInfo(10, 10, "ten", 0, None),
    )
    assert parse_nodelist([]) == ()


# ------------------------------------------------------------ against corosync


@pytest.fixture(scope="module")
def one_node(module_cluster: ClusterFactory) -> Cluster:
    return module_cluster(1)


def run_check(c: Cluster, name: str) -> None:
    res = c[1].run(
        [sys.executable, str(REPO_ROOT / "tests/cluster/unit_checks.py"), name],
        check=False,
        timeout=120,
        cwd=str(REPO_ROOT),
    )
    assert res.returncode == 0, f"{name} failed in node1:\n{res.stdout}\n{res.stderr}"
    assert f"OK {name}" in res.stdout


LIVE = [n for n in CHECKS if n not in ("corosync_not_running", "corosync_dies_under_us")]


@pytest.mark.cluster
@pytest.mark.parametrize("name", LIVE)
def test_live(one_node: Cluster, name: str) -> None:
    run_check(one_node, name)


@pytest.mark.cluster
def test_corosync_killed_under_running_handles(one_node: Cluster) -> None:
    node = one_node[1]
    try:
        run_check(one_node, "corosync_dies_under_us")
        assert node.corosync is not None
        node.corosync.wait(timeout=10)  # it really was killed
    finally:
        node.start_corosync()
        one_node.wait_members(1)


@pytest.mark.cluster
def test_clear_error_when_corosync_is_not_running(one_node: Cluster) -> None:
    node = one_node[1]
    node.stop_corosync()
    try:
        run_check(one_node, "corosync_not_running")
    finally:
        node.start_corosync()
        one_node.wait_members(1)
    run_check(one_node, "cmap_and_votequorum")  # usable again after the restart
