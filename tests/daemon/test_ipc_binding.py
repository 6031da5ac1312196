"""cpg.ipcs: the libqb server under trio, alone in a network namespace (`unshare -n`).

The server and its clients (threads of the same process, libqb's blocking client) run in a
child process so the abstract socket never meets another daemon's; the child prints one
JSON line of observations and the test checks them.
"""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
import textwrap

from tests.daemon_harness import PYTHON, REPO

SCRIPT = textwrap.dedent(
    r"""
    import errno, json, os, struct, sys, threading
    import trio
    from cpg.ipcs import IpcClient, IpcServer

    out = {"accepted": [], "closed": 0, "stop_saw_connections": None}

    def accept(uid, gid, pid):
        out["accepted"].append([uid, gid, pid])
        return None if gid == 12345 else {"n": 0}

    def process(conn, request):
        op, size = struct.unpack_from("=i4xi4x", request)
        conn.context["n"] += 1
        if op == 1:
            return 0, request[16:]
        if op == 2:
            return 0, b"x" * (2 << 20)  # larger than any buffer: the client is dropped
        if op == 3:
            raise RuntimeError("handler bug")
        if op == 4:
            return -errno.ENOENT, b"ignored on error"
        if op == 5:
            return 1, "neither an errno nor bytes"
        return 0, b"%d" % conn.context["n"]

    def on_close(conn):
        out["closed"] += 1

    server = None

    def on_stop():
        out["stop_saw_connections"] = len(server.connections)

    def clients():
        res = {}
        with IpcClient("pve2test") as c:
            res["echo"] = c.request(1, b"hello")
            res["count"] = [c.request(9)[1].decode() for _ in range(3)]
            res["bug"] = c.request(3)
            res["error"] = c.request(4)
            res["badtype"] = c.request(5)
            try:
                c.request(2)
                res["big"] = "answered"
            except OSError as exc:
                res["big"] = "dropped"
        # many clients at once, each with its own connection
        results = []
        def one(i):
            with IpcClient("pve2test") as c:
                results.append(c.request(1, b"%d" % i * 1000))
        ts = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in ts: t.start()
        for t in ts: t.join()
        res["parallel"] = sorted(len(p) for _, p in results)
        # a client that stays connected while the server stops
        res["held"] = IpcClient("pve2test")
        return res

    async def main():
        global server
        server = IpcServer("pve2test", 7, accept=accept, process=process,
                           on_close=on_close, on_stop=on_stop)
        async with trio.open_nursery() as n:
            await n.start(server.run)
            try:
                other = IpcServer("pve2test", 7, accept=accept, process=process)
                await n.start(other.run)
            except RuntimeError:
                out["second"] = "refused"
            res = await trio.to_thread.run_sync(clients)
            await trio.sleep(0.2)
            held = res.pop("held")
            out.update({k: v if not isinstance(v, tuple) else [v[0], v[1].decode()]
                        for k, v in res.items()})
            out["open_after"] = len(server.connections)
            n.cancel_scope.cancel()
        held.close()
        # a fresh server in the same process after the first one stopped
        again = IpcServer("pve2test", 7, accept=accept, process=process)
        async with trio.open_nursery() as n:
            await n.start(again.run)
            out["again"] = (await trio.to_thread.run_sync(
                lambda: IpcClient("pve2test").request(1, b"again")))[1].decode()
            n.cancel_scope.cancel()
        # the name is taken by someone else: OSError, not an ExceptionGroup
        import socket
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(b"\0pve2test".ljust(108, b"\0"))
        s.listen()
        try:
            async with trio.open_nursery() as n:
                await n.start(IpcServer("pve2test", 7, accept=accept, process=process).run)
        except* OSError as group:  # our own nursery groups it; the server raised it bare
            out["busy"] = group.exceptions[0].errno
        import glob
        out["shm_left"] = glob.glob(f"/dev/shm/qb-{os.getpid()}-*")
        print(json.dumps(out), flush=True)

    trio.run(main)
    """
)


def test_server_under_trio() -> None:
    p = subprocess.Popen(
        ["unshare", "-n", "--", PYTHON, "-c", SCRIPT],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for path in glob.glob(f"/dev/shm/qb-{p.pid}-*"):
            shutil.rmtree(path, ignore_errors=True)
    assert p.returncode == 0, stderr[-3000:]
    out = json.loads(stdout.splitlines()[-1])
    assert out["echo"] == [0, "hello"]
    assert out["count"] == ["2", "3", "4"]  # one context per connection (echo was 1)
    assert out["bug"] == [-5, ""]  # a handler exception is -EIO, the connection survives
    assert out["error"] == [-2, ""]  # no payload with an error
    assert out["badtype"] == [-5, ""]  # a malformed handler result is -EIO, still answered
    assert out["big"] == "dropped"
    assert "qb_ipcs_response_send" in stderr
    assert out["parallel"] == [1000] * 8
    assert out["second"] == "refused"
    assert out["open_after"] == 1  # only the held client; the others were destroyed
    assert out["stop_saw_connections"] == 1  # on_stop runs before the teardown
    assert out["closed"] >= 10
    assert out["again"] == "again"
    assert out["busy"] == 98  # EADDRINUSE
    assert all(a[0] == 0 and a[1] == 0 for a in out["accepted"])
    assert out["shm_left"] == []
