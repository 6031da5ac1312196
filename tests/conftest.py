"""The one conftest: fixtures every kind of test shares.

- ``make_pmxcfs`` and friends (tests/daemon_harness.py): real daemons in private namespaces;
- ``inproc`` (tests/inprocess.py): a node built by the composition root, mounted in-process;
- ``cluster`` / ``module_cluster`` (tests/cluster/harness.py): real corosync nodes, e.g.
  ``c = cluster(3); c[1].run("corosync-quorumtool -s"); c[2].partition(); c[2].heal()``.
"""

from tests.cluster.harness import cluster, module_cluster  # noqa: F401

pytest_plugins = ["tests.daemon_harness", "tests.inprocess"]
