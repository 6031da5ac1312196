"""Workload runner for bench/compare.py, started inside a node's namespaces (the FUSE mount
and the abstract `pve2` socket are only visible there).

    python bench/bench_agent.py MOUNT

stdin: one JSON command per line ({"id": N, "op": ..., ...}); stdout: {"ev": "ready"}, then
one {"ev": "result", "id", "ok", "t0", "t1", "value" | "errno"} per command (plus a
{"ev": "watching"} event while a watch polls).  Times are CLOCK_MONOTONIC, which every
namespace shares, so times from agents on different nodes compare.  The same agent runs
the same Python loops against our daemon and the reference: the client's cost is equal.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

Emit = Callable[..., None]


def payload(tag: str, i: int, size: int) -> bytes:
    head = f"{tag}:{i}:".encode()
    return head + b"x" * max(0, size - len(head) - 1) + b"\n"


def _write(path: str, data: bytes, flags: int) -> None:
    fd = os.open(path, flags, 0o640)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


def _span(t0: float) -> dict[str, float]:
    """A timed loop's start and end (monotonic): agents on several nodes compare."""
    return {"start": t0, "end": time.monotonic()}


def _names(d: str, count: int, prefix: str = "f") -> list[str]:
    return [os.path.join(d, f"{prefix}{i}.cfg") for i in range(count)]


def op_mkdirs(mount: str, cmd: dict[str, Any]) -> int:
    for p in cmd["paths"]:
        os.makedirs(os.path.join(mount, p), exist_ok=True)
    return 0


def op_stat_path(mount: str, cmd: dict[str, Any]) -> int:
    return os.stat(os.path.join(mount, cmd["path"])).st_size


def op_write(mount: str, cmd: dict[str, Any]) -> int:
    flags = os.O_WRONLY if cmd.get("mode") == "r+" else _CREATE
    data = bytes.fromhex(cmd["hex"]) if "hex" in cmd else str(cmd["data"]).encode()
    fd = os.open(os.path.join(mount, cmd["path"]), flags, 0o640)
    try:
        return os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def op_create(mount: str, cmd: dict[str, Any]) -> dict[str, float]:
    """create+write of *count* new files of *size* bytes; returns its span."""
    names = _names(os.path.join(mount, cmd["dir"]), int(cmd["count"]), cmd.get("prefix", "f"))
    size, tag = int(cmd.get("size", 500)), str(cmd.get("tag", "c"))
    datas = [payload(tag, i, size) for i in range(len(names))]
    t = time.monotonic()
    for p, data in zip(names, datas, strict=True):
        _write(p, data, _CREATE)
    return _span(t)


def op_overwrite(mount: str, cmd: dict[str, Any]) -> dict[str, float]:
    """open(O_WRONLY)+write+close of existing files (same length, new bytes)."""
    names = _names(os.path.join(mount, cmd["dir"]), int(cmd["count"]), cmd.get("prefix", "f"))
    size, tag = int(cmd.get("size", 500)), str(cmd.get("tag", "o"))
    datas = [payload(tag, i, size) for i in range(len(names))]
    t = time.monotonic()
    for p, data in zip(names, datas, strict=True):
        _write(p, data, os.O_WRONLY)
    return _span(t)


def op_read(mount: str, cmd: dict[str, Any]) -> dict[str, float]:
    """*passes* rounds of open+read+close over the files."""
    names = _names(os.path.join(mount, cmd["dir"]), int(cmd["count"]), cmd.get("prefix", "f"))
    passes = int(cmd.get("passes", 5))
    t = time.monotonic()
    for _ in range(passes):
        for p in names:
            fd = os.open(p, os.O_RDONLY)
            os.read(fd, 65536)
            os.close(fd)
    return _span(t)


def op_stat(mount: str, cmd: dict[str, Any]) -> dict[str, float]:
    names = _names(os.path.join(mount, cmd["dir"]), int(cmd["count"]), cmd.get("prefix", "f"))
    passes = int(cmd.get("passes", 20))
    t = time.monotonic()
    for _ in range(passes):
        for p in names:
            os.stat(p)
    return _span(t)


def op_readdir(mount: str, cmd: dict[str, Any]) -> dict[str, float]:
    d = os.path.join(mount, cmd["dir"])
    passes = int(cmd.get("passes", 200))
    want = int(cmd["entries"])
    t = time.monotonic()
    for _ in range(passes):
        n = len(os.listdir(d))
    span = _span(t)
    if n != want:
        raise OSError(errno.EBADMSG, f"readdir saw {n} entries, not {want}", d)
    return span


def op_bigwrite(mount: str, cmd: dict[str, Any]) -> dict[str, float]:
    d = os.path.join(mount, cmd["dir"])
    size, count = int(cmd["size"]), int(cmd["count"])
    data = os.urandom(size)
    t = time.monotonic()
    for i in range(count):
        _write(os.path.join(d, f"b{i}"), data, _CREATE)
    return _span(t)


def op_multi_burst(mount: str, cmd: dict[str, Any]) -> dict[str, float]:
    """*procs* forked writer processes, each create+writing *count* files into *dir*, all
    released at once; returns the earliest start and the latest end."""
    procs, count = int(cmd["procs"]), int(cmd["count"])
    d = os.path.join(mount, cmd["dir"])
    size, tag = int(cmd.get("size", 500)), str(cmd.get("tag", "m"))
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    pids = []
    for k in range(procs):
        pid = os.fork()
        if pid == 0:  # child: wait for the start byte, write, report "t0 t1 ok"
            code = 0
            try:
                os.close(go_w)
                os.close(res_r)
                datas = [payload(f"{tag}{k}", i, size) for i in range(count)]
                names = [os.path.join(d, f"p{k}_f{i}.cfg") for i in range(count)]
                os.read(go_r, 1)
                t0 = time.monotonic()
                ok = 1
                try:
                    for p, data in zip(names, datas, strict=True):
                        _write(p, data, _CREATE)
                except OSError:
                    ok = 0
                t1 = time.monotonic()
                os.write(res_w, f"{t0} {t1} {ok}\n".encode())
            except BaseException:
                code = 1
            os._exit(code)
        pids.append(pid)
    os.close(go_r)
    os.close(res_w)
    time.sleep(0.2)  # let every child reach its read()
    os.write(go_w, b"g" * procs)
    os.close(go_w)
    out = b""
    while chunk := os.read(res_r, 4096):
        out += chunk
    os.close(res_r)
    for pid in pids:
        os.waitpid(pid, 0)
    rows = [line.split() for line in out.decode().splitlines()]
    if len(rows) != procs or not all(r[2] == "1" for r in rows):
        raise OSError(errno.EIO, f"{len(rows)}/{procs} writers finished cleanly", d)
    return {"start": min(float(r[0]) for r in rows), "end": max(float(r[1]) for r in rows)}


def op_wait_content(mount: str, cmd: dict[str, Any], emit: Emit) -> float:
    """Poll until *path* holds *data*; returns the monotonic time it was seen."""
    path = os.path.join(mount, cmd["path"])
    want = bytes.fromhex(cmd["hex"]) if "hex" in cmd else str(cmd["data"]).encode()
    interval = float(cmd.get("interval", 0.0005))
    deadline = time.monotonic() + float(cmd.get("timeout", 60))
    emit(ev="watching", id=cmd["id"])
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                got = os.read(fd, len(want) + 1)
            finally:
                os.close(fd)
            if got == want:
                return time.monotonic()
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(errno.ETIMEDOUT, "content did not appear", path)
        time.sleep(interval)


def op_wait_exists(mount: str, cmd: dict[str, Any]) -> float:
    """Poll until every path in *paths* exists (e.g. directories made on another node)."""
    paths = [os.path.join(mount, p) for p in cmd["paths"]]
    deadline = time.monotonic() + float(cmd.get("timeout", 60))
    while not all(os.path.exists(p) for p in paths):
        if time.monotonic() > deadline:
            raise TimeoutError(errno.ETIMEDOUT, "paths did not appear", str(cmd["paths"]))
        time.sleep(0.005)
    return time.monotonic()


def op_digest(mount: str, cmd: dict[str, Any]) -> str:
    """sha256 over every (name, content) below *dir* (sorted walk)."""
    h = hashlib.sha256()
    base = os.path.join(mount, cmd["dir"])
    for root, dirs, files in os.walk(base):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(os.path.relpath(p, base).encode() + b"\0")
            with open(p, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def op_ipc_py(mount: str, cmd: dict[str, Any]) -> dict[str, float]:
    """Requests/s through cpg.ipcs.IpcClient (libqb's client via cffi), to compare the
    Python client's own cost with the C client's (bench/ipc_rps.c)."""
    sys.path.insert(0, str(REPO))
    from cpg.ipcs import IpcClient

    op, count = int(cmd["request"]), int(cmd["count"])
    payload = bytes.fromhex(cmd.get("hex", ""))
    errors = 0
    with IpcClient(cmd.get("name", "pve2")) as c:
        for _ in range(200):
            c.request(op, payload)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t = time.monotonic()
        for _ in range(count):
            err, _data = c.request(op, payload)
            errors += err != 0
        secs = time.monotonic() - t
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return {"count": count, "seconds": secs, "client_cpu_s": cpu, "errors": errors}


OPS: dict[str, Callable[[str, dict[str, Any]], Any]] = {
    "mkdirs": op_mkdirs,
    "stat_path": op_stat_path,
    "write": op_write,
    "create": op_create,
    "overwrite": op_overwrite,
    "read": op_read,
    "stat": op_stat,
    "readdir": op_readdir,
    "bigwrite": op_bigwrite,
    "multi_burst": op_multi_burst,
    "wait_exists": op_wait_exists,
    "digest": op_digest,
    "ipc_py": op_ipc_py,
}


def main() -> None:
    mount = sys.argv[1] if len(sys.argv) > 1 else "/etc/pve"

    def emit(**obj: Any) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    emit(ev="ready", pid=os.getpid())
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        t0 = time.monotonic()
        try:
            if cmd["op"] == "wait_content":
                value: Any = op_wait_content(mount, cmd, emit)
            else:
                value = OPS[cmd["op"]](mount, cmd)
            res: dict[str, Any] = {"ok": True, "value": value}
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            res = {"ok": False, "errno": name, "msg": str(exc)}
        t1 = time.monotonic()
        emit(ev="result", id=cmd.get("id"), t0=t0, t1=t1, **res)


if __name__ == "__main__":
    main()
