"""The unit keeps the reference's start/stop protocol (spec §9.9)."""

from __future__ import annotations

import configparser
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "pve-cluster.service"


def test_unit_matches_reference_directives() -> None:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(UNIT.read_text())
    svc = cp["Service"]
    assert svc["Type"] == "forking"
    assert svc["PIDFile"] == "/run/pve-cluster.pid"
    assert svc["KillMode"] == "mixed"
    assert svc["TimeoutStopSec"] == "10"
    assert svc["Restart"] == "on-failure"
    assert svc["ExecStart"] == "/usr/bin/pmxcfs"
    assert cp["Unit"]["DefaultDependencies"] == "no"
    assert cp["Install"]["WantedBy"] == "multi-user.target"
