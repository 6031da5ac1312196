"""`pmxcfs-admin status|log|debug`: ask the running daemon over its admin socket.

The document comes from the daemon (pmxcfs/control/snapshot.py); this module only asks,
formats and loops (`--watch`, `--follow`). Exit codes: 0 answered (status: and nothing is
wrong), 1 the daemon reports problems or refused the request, 4 no daemon answered.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..control import protocol
from ..control.client import DEFAULT_SOCKET, DEFAULT_TIMEOUT, DaemonUnavailable, call
from .errors import EXIT_OK, EXIT_PROBLEMS, AdminError

EXIT_NO_DAEMON = 4
PRIORITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
CLEAR = "\x1b[H\x1b[2J"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Where the daemon is and how long to wait for it (every live subcommand)."""
    p.add_argument(
        "--run-dir", metavar="DIR", help="the daemon's --run-dir (socket DIR/admin.sock)"
    )
    p.add_argument("--socket", metavar="FILE", help=f"admin socket (default {DEFAULT_SOCKET})")
    p.add_argument(
        "--timeout", metavar="SEC", type=float, default=DEFAULT_TIMEOUT,
        help=f"give up after SEC seconds without an answer (default {DEFAULT_TIMEOUT:g})",
    )  # fmt: skip


def _socket(a: argparse.Namespace) -> str:
    if a.socket:
        return str(a.socket)
    if a.run_dir:
        return os.path.join(a.run_dir, protocol.SOCKET_NAME)
    return DEFAULT_SOCKET


def ask(a: argparse.Namespace, req: protocol.Request) -> Any:
    try:
        return call(req, _socket(a), a.timeout)
    except DaemonUnavailable as exc:
        raise AdminError(str(exc), EXIT_NO_DAEMON) from None
    except protocol.RemoteError as exc:
        raise AdminError(f"pmxcfs refused: {exc}", EXIT_PROBLEMS) from None


def _emit(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


# ---------------------------------------------------------------------------- status


def cmd_status(a: argparse.Namespace) -> int:
    if not a.watch:
        doc = ask(a, protocol.Status())
        _emit(_json_text(doc) if a.json else format_status(doc))
        return EXIT_PROBLEMS if doc.get("problems") else EXIT_OK
    return _watch(a)


def _watch(a: argparse.Namespace) -> int:
    """Like top: the summary again every `--interval` seconds until Ctrl-C (or -n times)."""
    clear = CLEAR if sys.stdout.isatty() and not a.json else ""
    rc = EXIT_OK
    n = 0
    try:
        while True:
            started = time.monotonic()
            try:
                doc = ask(a, protocol.Status())
                text = json.dumps(doc, sort_keys=True) + "\n" if a.json else format_status(doc)
                rc = EXIT_PROBLEMS if doc.get("problems") else EXIT_OK
            except AdminError as exc:
                text = f"{time.strftime('%H:%M:%S')} {exc}\n"
                rc = exc.code
            _emit(clear + text)
            n += 1
            if a.iterations and n >= a.iterations:
                return rc
            time.sleep(max(0.0, a.interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return EXIT_OK


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def _when(t: float | None, now: float) -> str:
    if not t:
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    return f"{stamp} ({_span(now - t)} ago)"


def _span(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _took(seconds: float) -> str:
    """A sync's duration: its start is a whole second and its end seen by a 1 s sampler."""
    return "under 2s" if seconds < 2 else f"about {seconds:.0f}s"


def _size(n: int) -> str:
    f = float(n)
    for unit in ("B", "KiB", "MiB"):
        if f < 1024:
            return f"{f:.0f} {unit}" if unit == "B" else f"{f:.1f} {unit}"
        f /= 1024
    return f"{f:.1f} GiB"


def _rate(c: dict[str, Any]) -> str:
    r = c.get("rate")
    return f"{c['count']}" + ("" if r is None else f" ({r:.1f}/s)")


def _group_lines(name: str, g: dict[str, Any], now: float) -> list[str]:
    members = g["members"]
    synced = sum(1 for m in members if m["synced"])
    head = g["mode"] if g["joined"] else f"{g['mode']}, not joined"
    parts = [head, f"epoch {g['epoch']['counter']}"]
    if g["leader"] is not None:
        parts.append(f"leader node {g['leader']}")
    parts.append(f"{synced}/{len(members)} members synced")
    parts.append(f"{g['queued']} queued")
    if g["unsent"]:
        parts.append(f"{g['unsent']} unsent")
    if g["waiting"]:
        parts.append(f"{g['waiting']} callers waiting")
    second = [f"sent {_rate(g['sent'])}", f"delivered {_rate(g['delivered'])}"]
    last = g["last_sync"]
    if g["syncing_since"]:
        second.append(f"syncing since {_when(g['syncing_since'], now)}")
    if last is not None:
        second.append(f"last sync {_when(last['end'], now)} took {_took(last['duration'])}")
    else:
        second.append("no sync yet")
    lines = [f"{name:<10} " + ", ".join(parts), " " * 11 + ", ".join(second)]
    if g["errors"]["last"]:
        lines.append(" " * 11 + f"last error: {g['errors']['last']}")
    return lines


def format_status(doc: dict[str, Any]) -> str:
    """The human summary: one line per part, problems last."""
    now = float(doc["time"])
    cluster = doc["mode"] == "cluster"
    debug = "on" if doc["debug"] else "off"
    lines = [
        f"{'node':<10} {doc['nodename']} ({doc['mode']} mode, pid {doc['pid']}, "
        f"up {_span(now - doc['started'])}, debug {debug})"
    ]
    if cluster:
        state = "quorate" if doc["quorate"] else "NOT quorate"
        lines.append(f"{'quorum':<10} {state} since {_when(doc['quorate_since'], now)}")
        members = doc["members"]
        online = sum(1 for m in members if m["online"])
        c = doc["cluster"]
        head = (
            "(no cluster configuration)"
            if c is None
            else (f"{c['name']} (config version {c['config_version']})")
        )
        lines.append(f"{'cluster':<10} {head}: {online} of {len(members)} nodes online")
        width = max((len(m["name"]) for m in members), default=0)
        for m in members:
            state = "online" if m["online"] else "offline"
            lines.append(
                " " * 11 + f"{m['name']:<{width}}  id {m['nodeid']:<3} {state:<8} {m['ip'] or '-'}"
            )
        for name, g in sorted(doc.get("groups", {}).items()):
            lines.extend(_group_lines(name, g, now))
    db = doc["database"]
    lc = db["last_commit"]
    lines.append(
        f"{'database':<10} version {db['version']}, {db['entries']} entries, {_size(db['size'])}, "
        f"last commit {_when(lc['time'], now)}"
        + (f" by node {lc['writer']}" if cluster and lc["writer"] else "")
    )
    lf = doc["lost_found"]
    newest = f", newest {lf['latest'][0]}" if lf["latest"] else ""
    lines.append(f"{'lost+found':<10} {lf['count']} entries in {lf['path']}{newest}")
    rrd = doc["rrd"]
    if rrd["enabled"]:
        lines.append(
            f"{'rrd':<10} {rrd['queued']} queued, {rrd['dropped']} dropped, rrdcached "
            f"{rrd['rrdcached']} ({rrd['updates']['rrdcached']} via rrdcached, "
            f"{rrd['updates']['direct']} direct)"
        )
    else:
        lines.append(f"{'rrd':<10} RRD files are not written")
    ipc = doc["ipc"]
    lines.append(
        f"{'ipc':<10} "
        + (f"{ipc['connections']} connections" if ipc["serving"] else "pve2 is not served")
    )
    kc = doc["kernel_cache"]
    if kc["inodes"] is not None:
        lines.append(f"{'kernel':<10} {kc['inodes']} inodes held in the kernel's cache")
    problems = doc.get("problems") or []
    if problems:
        lines.append(f"{'problems':<10} " + problems[0])
        lines.extend(" " * 11 + p for p in problems[1:])
    else:
        lines.append(f"{'problems':<10} none")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- log


def format_entry(e: dict[str, Any]) -> str:
    pri = e["pri"]
    name = PRIORITIES[pri] if 0 <= pri < len(PRIORITIES) else str(pri)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
    return f"{stamp} {e['node']} {e['tag']}[{e['pid']}] {e['user']} {name}: {e['msg']}"


def _key(e: dict[str, Any]) -> tuple[int, str, int]:
    """An entry's identity (time, node, uid), as the cluster log dedups them."""
    return (e["time"], e["node"], e["uid"])


def cmd_log(a: argparse.Namespace) -> int:
    """The newest N entries, oldest first; with --follow, then every new one as it arrives."""
    # following: everything now, so that only entries that arrive later count as new
    entries = ask(a, protocol.Log(0 if a.follow else a.lines))
    show: Callable[[Iterable[dict[str, Any]]], None]
    if a.json and not a.follow:
        _emit(_json_text(list(reversed(entries))))
        return EXIT_OK
    if a.json:
        show = lambda es: _emit("".join(json.dumps(e, sort_keys=True) + "\n" for e in es))  # noqa: E731
    else:
        show = lambda es: _emit("".join(format_entry(e) + "\n" for e in es))  # noqa: E731
    show(reversed(entries[: a.lines] if a.lines else entries))
    if not a.follow:
        return EXIT_OK
    seen = {_key(e) for e in entries}
    try:
        while True:
            time.sleep(a.interval)
            current = ask(a, protocol.Log(0))
            show(reversed([e for e in current if _key(e) not in seen]))
            seen = {_key(e) for e in current}  # what left the ring cannot come back
    except KeyboardInterrupt:
        return EXIT_OK


# ---------------------------------------------------------------------------- debug


def cmd_debug(a: argparse.Namespace) -> int:
    on = None if a.state is None else a.state == "on"
    res = ask(a, protocol.Debug(on))
    if a.json:
        _emit(_json_text(res))
    else:
        _emit(f"debug {'on' if res['debug'] else 'off'}\n")
    return EXIT_OK
