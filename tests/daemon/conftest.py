"""Fixtures shared by the daemon tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.test_ipc_server import NetnsPmxcfs


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NetnsPmxcfs]:
    """One local-mode daemon alone in its network namespace (its own @pve2)."""
    d = NetnsPmxcfs(tmp_path / "n1", nodename="n1")
    try:
        d.start()
        yield d
    finally:
        d.stop()
