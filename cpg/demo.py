"""Watch corosync's total order: ``python -m cpg.demo GROUP``.

Joins GROUP, prints every delivery and membership change with a running sequence
number, and multicasts each line typed on stdin.  Run it on several nodes: all of them
print the same sequence.  ``--no-nul`` joins without the trailing NUL that pmxcfs
counts as part of the group name (which makes it a different group).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import trio

from . import CorosyncError, CorosyncUnavailable, Cpg, CpgAddress, CpgConfchg, CpgDeliver


def _fmt(addrs: tuple[CpgAddress, ...], reasons: bool = True) -> str:
    """``[nodeid/pid(reason), ...]``; member lists carry no reason."""
    return (
        "["
        + ", ".join(
            f"{a.nodeid}/{a.pid}" + (f"({a.reason.name.lower()})" if reasons else "") for a in addrs
        )
        + "]"
    )


async def _print_events(cpg: Cpg) -> None:
    seq = 0
    async for ev in cpg:
        seq += 1
        stamp = time.strftime("%H:%M:%S")
        if isinstance(ev, CpgDeliver):
            text = ev.payload.decode("utf-8", "backslashreplace")
            print(f"{seq:6d} {stamp} DELIVER node {ev.nodeid} pid {ev.pid}: {text}", flush=True)
        elif isinstance(ev, CpgConfchg):
            print(
                f"{seq:6d} {stamp} CONFCHG members={_fmt(ev.members, False)} "
                f"left={_fmt(ev.left)} joined={_fmt(ev.joined)}",
                flush=True,
            )


async def _send_stdin(cpg: Cpg, cancel: trio.CancelScope) -> None:
    while True:
        # a thread, so a terminal on stdin is never switched to non-blocking mode
        line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        if not line:
            break
        await cpg.mcast(line.rstrip("\n").encode())
    cancel.cancel()


async def main(group: str, include_nul: bool) -> None:
    with Cpg() as cpg:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cpg.run)
            raw = await cpg.join(group, include_nul=include_nul)
            print(f"joined {raw!r} as node {cpg.nodeid} pid {os.getpid()}", flush=True)
            nursery.start_soon(_print_events, cpg)
            nursery.start_soon(_send_stdin, cpg, nursery.cancel_scope)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cpg.demo", description=__doc__)
    parser.add_argument("group", help="CPG group name (joined with its trailing NUL)")
    parser.add_argument("--no-nul", action="store_true", help="do not count the trailing NUL")
    args = parser.parse_args(argv)
    status = 0
    try:
        trio.run(main, args.group, not args.no_nul)
    except* CorosyncUnavailable as eg:
        print(f"corosync is not reachable: {eg.exceptions[0]}", file=sys.stderr)
        status = 1
    except* CorosyncError as eg:
        print(f"error: {eg.exceptions[0]}", file=sys.stderr)
        status = 1
    except* KeyboardInterrupt:
        status = 130
    return status


if __name__ == "__main__":
    sys.exit(cli())
