"""Lock directories through the mount (spec §7): acquire, refresh, unlock request, expiry.

The clock of the in-process filesystem is driven by the test, so the 120 s rule is exercised
without waiting for it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.inprocess import InProcess


def oserr(fn, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as ei:
        fn(*args)
    return ei.value.errno  # type: ignore[return-value]


@pytest.fixture
def lockdir(inproc: InProcess) -> Path:
    d = inproc.mount / "priv" / "lock"
    d.mkdir(parents=True)
    return d


def test_acquire_is_exclusive(lockdir: Path) -> None:
    (lockdir / "storage-local").mkdir()
    assert oserr(os.mkdir, lockdir / "storage-local") == errno.EEXIST
    os.rmdir(lockdir / "storage-local")
    (lockdir / "storage-local").mkdir()


def test_unlock_request_before_expiry_is_eacces(inproc: InProcess, lockdir: Path) -> None:
    lock = lockdir / "l1"
    lock.mkdir()
    assert oserr(os.utime, lock, (0, 0)) == errno.EACCES
    assert lock.is_dir()


def test_unlock_request_after_expiry_removes_lock(inproc: InProcess, lockdir: Path) -> None:
    lock = lockdir / "l2"
    lock.mkdir()
    inproc.now += 121
    assert oserr(os.utime, lock, (0, 0)) == errno.ENOENT  # gone, as libfuse's re-stat reports
    assert not lock.exists()
    lock.mkdir()  # can be taken again at once


def test_refresh_restarts_the_timer(inproc: InProcess, lockdir: Path) -> None:
    lock = lockdir / "l3"
    lock.mkdir()
    inproc.now += 100
    t = int(inproc.now)
    os.utime(lock, (t, t))  # refresh
    inproc.now += 100  # 200 s since mkdir, 100 s since refresh
    assert oserr(os.utime, lock, (0, 0)) == errno.EACCES
    assert oserr(os.utime, lock, (t - 10, t - 10)) == errno.EACCES  # older mtime
    inproc.now += 21
    assert oserr(os.utime, lock, (0, 0)) == errno.ENOENT


def test_lock_dirs_cannot_be_renamed_but_files_can(lockdir: Path) -> None:
    (lockdir / "l4").mkdir()
    assert oserr(os.rename, lockdir / "l4", lockdir / "l5") == errno.EACCES
    (lockdir / "f").write_bytes(b"")
    os.rename(lockdir / "f", lockdir / "g")


def test_deeper_dirs_have_no_lock_rules(inproc: InProcess, lockdir: Path) -> None:
    (lockdir / "l6" / "sub").mkdir(parents=True)
    os.utime(lockdir / "l6" / "sub", (0, 0))
    assert (lockdir / "l6" / "sub").stat().st_mtime == 0
