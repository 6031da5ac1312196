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
from typing import Any

import pytest

from tests.daemon_harness import PYTHON, REPO

SCRIPT = textwrap.dedent(
    r"""
    import errno, json, os, struct, sys, threading
    import trio
    from cpg.ipcs import IpcClient, IpcServer

    HOT = sys.argv[1] == "hot"
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
                           on_close=on_close, on_stop=on_stop, hot_wait=HOT)
        async with trio.open_nursery() as n:
            await n.start(server.run)
            out["hot"] = server._hot is not None
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
        again = IpcServer("pve2test", 7, accept=accept, process=process, hot_wait=HOT)
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


def run_script(script: str, *args: str) -> tuple[dict[str, Any], str]:
    """The script's JSON line and its stderr, run alone in a fresh network namespace."""
    p = subprocess.Popen(
        ["unshare", "-n", "--", PYTHON, "-c", script, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for path in glob.glob(f"/dev/shm/qb-{p.pid}-*"):
            shutil.rmtree(path, ignore_errors=True)
    assert p.returncode == 0, stderr[-3000:]
    out: dict[str, Any] = json.loads(stdout.splitlines()[-1])
    return out, stderr


@pytest.mark.parametrize("mode", ["hot", "through-trio"])
def test_server_under_trio(mode: str) -> None:
    out, stderr = run_script(SCRIPT, mode)
    assert out["hot"] == (mode == "hot")  # this trio's internals are the ones HotWait reads
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


# The pump's hot wait (cpg.hotwait.HotWait) sleeps in its own epoll instead of trio's while a
# client keeps it busy.  HOT_WAIT is raised to an hour here, so only the rules under test
# can end a hot wait: trio's I/O, a task made runnable, trio's next deadline.  A client
# thread hammers requests until each awaited event happened, with a cap that only a
# starved trio task reaches.
HOT_SCRIPT = textwrap.dedent(
    r"""
    import json, socket, sys, time
    import trio
    import cpg.hotwait as hotwait
    import cpg.ipcs as ipcs
    from cpg.ipcs import IpcClient, IpcServer

    hotwait.HOT_WAIT = 3600.0
    HOT = sys.argv[1] == "hot"
    served_hot = 0
    _run = ipcs.HotWait.run

    def counting_run(self, serve):
        def count(ready):
            global served_hot
            served_hot += len(ready)
            return serve(ready)
        _run(self, count)

    ipcs.HotWait.run = counting_run
    st = {"got": 0, "ticks": 0, "done": set()}
    CAP = 20.0  # seconds of hammering before a wait counts as starved

    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        async with trio.open_nursery() as n:

            async def reader():
                while True:
                    await trio.lowlevel.wait_readable(a)
                    st["got"] += len(a.recv(100))

            async def ticker():
                while True:
                    await trio.sleep(0.005)
                    st["ticks"] += 1

            async def mark(k):
                st["done"].add(k)

            def process(conn, req):
                op = int.from_bytes(req[:4], "little")
                k = int.from_bytes(req[16:20] or b"\0", "little")
                if op == 2:  # a task made runnable by a request
                    n.start_soon(mark, k)
                    return 0, b""
                if op == 3:
                    return 0, b"1" if k in st["done"] else b"0"
                return 0, json.dumps([st["got"], st["ticks"]]).encode()

            server = IpcServer("pve2hot", 7, accept=lambda u, g, p: True, process=process,
                               hot_wait=HOT)
            await n.start(server.run)
            n.start_soon(reader)
            n.start_soon(ticker)

            def client():
                res = {"io_lag": [], "tick_wait": [], "spawned": []}
                with IpcClient("pve2hot") as c:
                    state = lambda: json.loads(c.request(1)[1])
                    for i in range(40):  # I/O for another task: served within a request or two
                        if i % 2:  # the pump waits through trio now, woken with the reader
                            c.request(2, (1000 + i).to_bytes(4, "little"))
                        b.send(b"x")
                        reqs, end = 0, time.monotonic() + CAP
                        while state()[0] < i + 1 and time.monotonic() < end:
                            reqs += 1
                        res["io_lag"].append(reqs if time.monotonic() < end else None)
                    for _ in range(3):  # a sleeping task wakes at its deadline
                        t0, end = state()[1], time.monotonic() + CAP
                        while state()[1] == t0 and time.monotonic() < end:
                            pass
                        res["tick_wait"].append(time.monotonic() < end)
                    for k in range(50):  # a task a request started runs before the next but one
                        c.request(2, k.to_bytes(4, "little"))
                        c.request(1)
                        res["spawned"].append(c.request(3, k.to_bytes(4, "little"))[1].decode())
                return res

            res = await trio.to_thread.run_sync(client)
            res["served_hot"] = served_hot
            res["hot"] = server._hot is not None
            n.cancel_scope.cancel()
        print(json.dumps(res), flush=True)

    trio.run(main)
    """
)


@pytest.mark.parametrize("mode", ["hot", "through-trio"])
def test_hot_wait_never_holds_back_trio(mode: str) -> None:
    out, _ = run_script(HOT_SCRIPT, mode)
    assert out["hot"] == (mode == "hot")
    # a hot pump served requests (with hot_wait=False, never)
    assert (out["served_hot"] > 0) == (mode == "hot")
    # a reader task woken by a thread's write ran before the third request after it
    assert all(lag is not None and lag <= 3 for lag in out["io_lag"]), out["io_lag"]
    assert out["tick_wait"] == [True, True, True]  # trio's deadlines end a hot wait
    assert out["spawned"] == ["1"] * 50  # a started task ran before the request after next
