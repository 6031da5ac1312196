"""ClusterBackend + DCDB over real corosync (3 nodes in namespaces, tests/cluster/harness).

Each node runs this file as an agent: a Tree plus a `ClusterNode`, driven by JSON-line
commands on stdin, reporting results and state on stdout.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import pytest

pytestmark = pytest.mark.cluster


# ---------------------------------------------------------------------------- agent


def _agent(nodename: str, workdir: str) -> None:
    import errno as errno_mod
    import logging

    import trio

    from pmxcfs.cluster import ClusterNode, ClusterOptions
    from pmxcfs.journal import GroupCommit
    from pmxcfs.status.state import ClusterStatus
    from pmxcfs.tree import NullJournal, Tree, TreeError

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    def emit(**o: Any) -> None:
        sys.stdout.write(json.dumps(o) + "\n")
        sys.stdout.flush()

    async def main() -> None:
        journal = GroupCommit(NullJournal())
        tree = Tree(journal)
        status = ClusterStatus(nodename)
        opts = ClusterOptions(
            corosync_conf_path=f"{workdir}/corosync.conf",
            lost_found_dir=f"{workdir}/lost+found",
            restart_delay=1.0,
        )
        send, recv = trio.open_memory_channel[dict[str, Any]](100)
        token = trio.lowlevel.current_trio_token()

        def reader() -> None:
            for line in sys.stdin:
                trio.from_thread.run(send.send, json.loads(line), trio_token=token)
            trio.from_thread.run_sync(send.close, trio_token=token)

        async with trio.open_nursery() as n:
            node = ClusterNode(tree, journal, status, opts)
            await n.start(node.run)
            backend = node.backend
            threading.Thread(target=reader, daemon=True).start()
            emit(ev="ready")

            async def run_cmd(cmd: dict[str, Any]) -> None:
                op = cmd["op"]
                try:
                    if op == "write":
                        res: Any = await backend.write(
                            cmd["path"], cmd.get("offset", 0), cmd["data"].encode()
                        )
                    elif op == "rename":
                        res = await backend.rename(cmd["path"], cmd["to"])
                    else:
                        res = await getattr(backend, op)(cmd["path"])
                    emit(ev="result", id=cmd["id"], result=res or 0)
                except TreeError as exc:
                    emit(ev="result", id=cmd["id"], result=-exc.errno,
                         name=errno_mod.errorcode.get(exc.errno))  # fmt: skip

            async for cmd in recv:
                if cmd["op"] == "state":
                    d = node.replication.dfsm
                    e = tree.lookup(cmd.get("path", "")) if cmd.get("path") else None
                    emit(
                        ev="state",
                        mode=d.mode.name,
                        quorate=status.quorate,
                        index=tree.encode_index().hex(),
                        members=d.member_list(),
                        data=e.data.decode() if e is not None else None,
                        online=sorted(x.nodeid for x in status.nodes.values() if x.online),
                    )
                elif cmd["op"] == "exit":
                    n.cancel_scope.cancel()
                else:
                    n.start_soon(run_cmd, cmd)

    trio.run(main)


if __name__ == "__main__":
    _agent(sys.argv[1], sys.argv[2])
    raise SystemExit(0)


# ---------------------------------------------------------------------------- tests

from tests.cluster.harness import ClusterFactory, JsonProc  # noqa: E402


class Agents:
    def __init__(self, procs: list[JsonProc]) -> None:
        self.procs = procs
        self.next_id = 1

    def call(self, i: int, timeout: float = 30.0, **cmd: Any) -> dict[str, Any]:
        rid = self.next_id
        self.next_id += 1
        p = self.procs[i]
        start = p.mark()
        p.send(id=rid, **cmd)
        return p.wait_for(lambda e: e.get("ev") == "result" and e["id"] == rid, start=start,
                          timeout=timeout)  # fmt: skip

    def state(self, i: int, path: str = "") -> dict[str, Any]:
        p = self.procs[i]
        start = p.mark()
        p.send(op="state", path=path)
        return p.wait_for("state", start=start, timeout=10)

    def wait(self, pred: Any, timeout: float = 60.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            states = [self.state(i) for i in range(len(self.procs))]
            if pred(states):
                return states
            if time.monotonic() > deadline:
                raise AssertionError(f"cluster did not converge: {states}")
            time.sleep(0.3)


def _synced(states: list[dict[str, Any]]) -> bool:
    return (
        all(s["mode"] == "SYNCED" and s["quorate"] for s in states)
        and len({s["index"] for s in states}) == 1
        and all(len(s["members"]) == len(states) for s in states)
    )


def test_replication_quorum_and_resync(cluster: ClusterFactory) -> None:
    c = cluster(3)
    procs = []
    for node in c:
        work = node.tmpdir / "agent"
        work.mkdir(exist_ok=True)
        p = node.spawn_json([sys.executable, "-u", __file__, node.name, str(work)])
        p.wait_for("ready", timeout=30)
        procs.append(p)
    a = Agents(procs)
    a.wait(_synced)
    assert a.call(0, op="mkdir", path="/nodes")["result"] == 0
    assert a.call(0, op="create", path="/nodes/f.cfg")["result"] == 0
    assert a.call(1, op="write", path="/nodes/f.cfg", data="hello")["result"] == 5
    assert a.call(2, op="create", path="/nodes/f.cfg")["name"] == "EEXIST"
    states = a.wait(_synced)
    assert all(a.state(i, "nodes/f.cfg")["data"] == "hello" for i in range(3))
    assert states[0]["online"] == [1, 2, 3]

    c[3].partition()
    a.wait(lambda s: not s[2]["quorate"] and s[0]["quorate"] and len(s[0]["members"]) == 2)
    assert a.call(2, op="create", path="/rogue")["name"] == "EACCES"
    assert a.call(0, op="create", path="/during")["result"] == 0
    c[3].heal()
    a.wait(_synced, timeout=90)
    assert a.state(2, "during")["data"] == ""
    procs[2].send(op="exit")
