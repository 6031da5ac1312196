"""The writer of a fault schedule: runs inside one node and creates new files in a loop.

Every file is new (``<dir>/<node>-<seq>``), written in one create+write+close, with content
derived from its name (:func:`content_of`), so the test can check any file on any node
without asking the writer.  Each operation is reported on stdout as JSON lines, with
``time.monotonic()`` timestamps (one system-wide clock: the test process compares them with
its own fault log):

- ``{"ev": "start", "seq", "path", "t"}`` before ``open``: an operation now in flight;
- ``{"ev": "ack", "seq", "path", "sha", "t0", "t"}`` after ``close`` succeeded;
- ``{"ev": "fail", "seq", "path", "stage", "errno", "t0", "t"}`` when a step failed
  (``stage`` is create, write or close: a create accepted and its write refused is the
  signature of issue 10's loss 1).

Failures are expected (EACCES while not quorate, ENOTCONN while the daemon is down); only
acknowledged files count.  The writer stops after the operation in flight when stdin says
``stop`` or closes, and then prints ``{"ev": "done", "acks", "fails"}``.

    python -m tests.cluster.fault_writer /etc/pve jepsen node1 [--pause 0.02]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import sys
import threading
import time
from typing import Any

_out_lock = threading.Lock()


def content_of(name: str) -> bytes:
    """The bytes a writer puts into the file *name* (its basename): a few distinct lines."""
    return f"{name}\n{hashlib.sha256(name.encode()).hexdigest()}\n".encode()


def sha_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _emit(**obj: Any) -> None:
    with _out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def _watch_stdin(stop: threading.Event) -> None:
    for line in sys.stdin:
        if line.strip() and json.loads(line).get("op") == "stop":
            break
    stop.set()


def write_one(full: str, data: bytes) -> tuple[str, str] | None:
    """Create *full* exclusively, write *data*, close.  ``(stage, errno name)`` on failure."""
    stage = "create"
    try:
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except OSError as exc:
        return stage, _errname(exc)
    try:
        stage = "write"
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.close(fd)
        return stage, _errname(exc)
    try:
        os.close(fd)
    except OSError as exc:
        return "close", _errname(exc)
    return None


def run(mount: str, subdir: str, node: str, pause: float) -> None:
    stop = threading.Event()
    threading.Thread(target=_watch_stdin, args=(stop,), daemon=True).start()
    _emit(ev="ready", pid=os.getpid(), t=time.monotonic())
    acks = fails = 0
    seq = 0
    while not stop.is_set():
        seq += 1
        name = f"{node}-{seq:06d}"
        path = f"{subdir}/{name}"
        data = content_of(name)
        t0 = time.monotonic()
        _emit(ev="start", seq=seq, path=path, t=t0)
        failed = write_one(os.path.join(mount, path), data)
        t1 = time.monotonic()
        if failed is None:
            acks += 1
            _emit(ev="ack", seq=seq, path=path, sha=sha_of(data), t0=t0, t=t1)
        else:
            fails += 1
            _emit(ev="fail", seq=seq, path=path, stage=failed[0], errno=failed[1], t0=t0, t=t1)
            # a dead or refusing mount answers at once: do not spin on it
            stop.wait(max(pause, 0.1))
            continue
        if pause > 0:
            stop.wait(pause)
    _emit(ev="done", acks=acks, fails=fails, t=time.monotonic())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mount")
    ap.add_argument("subdir")
    ap.add_argument("node")
    ap.add_argument("--pause", type=float, default=0.02, help="seconds between operations")
    a = ap.parse_args(argv)
    run(a.mount, a.subdir.strip("/"), a.node, a.pause)


if __name__ == "__main__":
    main()
