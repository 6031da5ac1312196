"""A scriptable corosync client that runs inside a test node.

Started by tests (``node.cpg_agent(...)``); it speaks JSON lines:

* stdout events: ``ready``, ``joined``, ``left``, ``confchg``, ``deliver``, ``quorum``,
  ``cmap``, ``votequorum``, ``sent``, ``result``, ``error``, ``reconnected``;
* stdin commands: ``{"op": "mcast", "data": "..."}``, ``{"op": "burst", "prefix": "a",
  "count": 100}``, ``join``, ``leave``, ``membership``, ``votequorum``, ``cmap``,
  ``getquorate``, ``exit`` (``{"op": "exit", "finalize": false}`` exits without
  finalizing, like a crash).  EOF on stdin finalizes and exits.

With ``--reconnect`` a lost corosync is reported as an ``error`` event and the agent
keeps trying to connect again (every 0.5 s), then rejoins and reports ``reconnected``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import trio

from cpg import (
    Cmap,
    CorosyncError,
    CorosyncUnavailable,
    Cpg,
    CpgConfchg,
    CpgDeliver,
    CSErrLibrary,
    Quorum,
    Votequorum,
)


def emit(**obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def err_event(exc: BaseException, where: str) -> None:
    emit(
        ev="error",
        where=where,
        type=type(exc).__name__,
        name=getattr(exc, "name", None),
        code=getattr(exc, "code", None),
        unavailable=isinstance(exc, CorosyncUnavailable),
        msg=str(exc),
    )


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cpg: Cpg | None = None
        self.quorum: Quorum | None = None
        self.cmap: Cmap | None = None
        self.connected = trio.Event()

    # -- corosync session
    async def session(self) -> None:
        """Connect all requested services and pump their events until one fails."""
        a = self.args
        cpg = Cpg()
        try:
            quorum = Quorum() if a.quorum else None
            cmap = Cmap() if a.cmap else None
        except BaseException:
            cpg.finalize()
            raise
        self.cpg, self.quorum, self.cmap = cpg, quorum, cmap
        try:
            emit(ev="ready", nodeid=cpg.nodeid, pid=os.getpid())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cpg.run)
                nursery.start_soon(self.pump_cpg, cpg)
                if quorum is not None:
                    nursery.start_soon(quorum.run)
                    nursery.start_soon(self.pump_quorum, quorum)
                if cmap is not None:
                    info = cmap.track_config()
                    self.emit_cmap(info, initial=True)
                    nursery.start_soon(cmap.run)
                    nursery.start_soon(self.pump_cmap, cmap)
                if a.group is not None and not a.no_join:
                    await self.join()
                self.connected.set()
        finally:
            for svc in (cpg, quorum, cmap):
                if svc is not None:
                    svc.finalize()

    async def join(self) -> None:
        assert self.cpg is not None
        raw = await self.cpg.join(self.args.group, include_nul=not self.args.no_nul)
        emit(ev="joined", group=raw.hex())

    async def pump_cpg(self, cpg: Cpg) -> None:
        async for ev in cpg:
            if isinstance(ev, CpgDeliver):
                emit(ev="deliver", group=ev.group.hex(), nodeid=ev.nodeid, pid=ev.pid,
                     data=ev.payload.decode("utf-8", "backslashreplace"),
                     len=len(ev.payload))  # fmt: skip
            elif isinstance(ev, CpgConfchg):
                emit(ev="confchg", group=ev.group.hex(),
                     members=[list(m) for m in ev.members],
                     left=[list(m) for m in ev.left],
                     joined=[list(m) for m in ev.joined])  # fmt: skip

    async def pump_quorum(self, quorum: Quorum) -> None:
        async for ch in quorum:
            emit(ev="quorum", quorate=ch.quorate, ring_seq=ch.ring_seq, members=list(ch.members))

    def emit_cmap(self, info: Any, initial: bool = False) -> None:
        emit(ev="cmap", initial=initial, cluster_name=info.cluster_name,
             config_version=info.config_version,
             nodes=[[n.nodeid, n.name, n.votes, n.ring0_addr] for n in info.nodes])  # fmt: skip

    async def pump_cmap(self, cmap: Cmap) -> None:
        async for info in cmap:
            self.emit_cmap(info)

    async def corosync_loop(self) -> None:
        while True:
            try:
                await self.session()
                return
            except* CorosyncUnavailable as eg:
                err_event(eg.exceptions[0], "session")
                self.cpg = self.quorum = self.cmap = None
                self.connected = trio.Event()
                if not self.args.reconnect:
                    raise
            while True:
                await trio.sleep(0.5)
                try:
                    await self.session_probe()
                    break
                except CorosyncUnavailable:
                    continue
            emit(ev="reconnected")

    async def session_probe(self) -> None:
        """Raise CorosyncUnavailable until corosync accepts a connection again."""
        Cpg().finalize()

    # -- commands
    async def command(self, cmd: dict[str, Any]) -> None:
        op = cmd.get("op")
        cpg = self.cpg
        try:
            if op == "exit":
                if not cmd.get("finalize", True):
                    os._exit(int(cmd.get("code", 0)))
                raise SystemExit(int(cmd.get("code", 0)))
            if cpg is None:
                raise CSErrLibrary("agent (not connected)")
            if op == "mcast":
                await cpg.mcast(str(cmd["data"]).encode())
                emit(ev="sent", data=cmd["data"])
            elif op == "mcast_size":
                await cpg.mcast(b"s" * int(cmd["size"]))
                emit(ev="sent", size=cmd["size"])
            elif op == "burst":
                prefix, count = str(cmd["prefix"]), int(cmd["count"])
                for i in range(count):
                    await cpg.mcast(f"{prefix}{i}".encode())
                emit(ev="sent", burst=prefix, count=count, try_again=cpg.try_again_count)
            elif op == "join":
                await self.join()
            elif op == "leave":
                await cpg.leave()
                emit(ev="left")
            elif op == "membership":
                members = cpg.membership()
                emit(ev="result", op=op, members=[list(m) for m in members])
            elif op == "votequorum":
                with Votequorum() as vq:
                    info = vq.getinfo(cpg.nodeid)
                emit(ev="votequorum", expected=info.node_expected_votes,
                     total=info.total_votes, quorum=info.quorum, quorate=info.quorate)  # fmt: skip
            elif op == "cmap":
                with Cmap() as cm:
                    self.emit_cmap(cm.read_cluster_info())
            elif op == "getquorate":
                assert self.quorum is not None
                emit(ev="result", op=op, quorate=self.quorum.getquorate())
            else:
                emit(ev="error", where=op, type="BadCommand", msg=f"unknown op {op!r}")
        except CorosyncError as exc:
            err_event(exc, str(op))

    async def stdin_loop(self, cancel: trio.CancelScope) -> None:
        stream = trio.lowlevel.FdStream(os.dup(0))
        buf = b""
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    await self.command(json.loads(line))
        cancel.cancel()


async def main(args: argparse.Namespace) -> None:
    agent = Agent(args)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.stdin_loop, nursery.cancel_scope)
            await agent.corosync_loop()
            # corosync session ended without error (finalize): wait for stdin EOF
    except* CorosyncUnavailable:
        sys.exit(3)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--group", default=None)
    parser.add_argument("--no-nul", action="store_true", help="join without the NUL")
    parser.add_argument("--no-join", action="store_true")
    parser.add_argument("--quorum", action="store_true")
    parser.add_argument("--cmap", action="store_true")
    parser.add_argument("--reconnect", action="store_true")
    try:
        trio.run(main, parser.parse_args())
    except* SystemExit as eg:
        raise eg.exceptions[0] from None
