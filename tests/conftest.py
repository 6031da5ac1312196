"""Shared pytest fixtures."""

# --- corosync test-cluster fixtures (tests/cluster/harness.py) ------------------------
# ``cluster`` (per test) and ``module_cluster`` (per module) are factories:
#     c = cluster(3)            # 3 running corosync nodes, torn down after the test
#     c[1].run("corosync-quorumtool -s"); c[2].partition(); c[2].heal()
from tests.cluster.harness import cluster, module_cluster  # noqa: F401

# --- end corosync test-cluster fixtures ------------------------------------------------
