"""Compile the C programs of bench/ with gcc against the installed dev packages."""

from __future__ import annotations

import subprocess
from pathlib import Path

BENCH = Path(__file__).resolve().parent

#: program -> pkg-config modules it links against
PROGRAMS: dict[str, tuple[str, ...]] = {
    "ipc_rps": ("libqb",),
    "ipc_floor_server": ("libqb",),
    "fuse_floor_fs": ("fuse3",),
    "fuse_client": (),
    "cpg_rtt": ("libcpg",),
}


def build(name: str, out_dir: Path) -> Path:
    """bench/NAME.c -> OUT_DIR/NAME (-O2); raises CalledProcessError with gcc's message."""
    exe = out_dir / name
    flags: list[str] = []
    if PROGRAMS[name]:
        flags = subprocess.run(
            ["pkg-config", "--cflags", "--libs", *PROGRAMS[name]],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(exe), str(BENCH / f"{name}.c"), *flags],
        check=True,
    )
    return exe


def build_all(names: list[str], out_dir: Path) -> dict[str, Path]:
    return {n: build(n, out_dir) for n in names}
