"""The cluster log kept by every node: entries, the reference's message cleaning and its dump.

The local ring starts with one unbroadcast entry ("starting cluster log"); the kvstore group
(cluster mode) adds remote entries and merges at sync.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass

MAX_ENTRIES = 1024  # the ring holds far more than the 50 shown; bounded so memory is too
_FIELD_MAX = 254


@dataclass(slots=True, frozen=True)
class LogEntry:
    uid: int
    time: int
    pri: int
    tag: str
    pid: int
    node: str
    ident: str
    msg: str


def clean_message(raw: bytes) -> str:
    """The origin-side conversion C peers rely on: they print msg raw into JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        out = []
        for b in raw:
            if b == 0x22:
                out.append('\\"')
            elif b < 32:
                out.append(f"#{b:03d}")
            elif b < 127:
                out.append(chr(b))
            else:
                out.append("?")
        return "".join(out)
    out = []
    for ch in text:
        cp = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif cp < 0x20 or cp == 0x7F:
            out.append(f"#{cp:03d}")
        elif cp < 0x7F:
            out.append(ch)
        elif cp <= 0xFFFF:
            out.append(f"\\u{cp:04x}")
    return "".join(out)


class ClusterLog:
    __slots__ = ("_uid", "entries", "nodename")

    def __init__(self, nodename: str) -> None:
        self.nodename = nodename
        self.entries: deque[LogEntry] = deque(maxlen=MAX_ENTRIES)
        self._uid = 0

    def add_local(
        self, ident: str, tag: str, pri: int, msg: str | bytes, pid: int | None = None
    ) -> LogEntry | None:
        if not 0 <= pri < 8:
            return None
        raw = msg.encode("utf-8", "surrogateescape") if isinstance(msg, str) else msg
        self._uid += 1
        entry = LogEntry(
            self._uid,
            int(time.time()),
            pri,
            tag[:_FIELD_MAX],
            os.getpid() if pid is None else pid,
            self.nodename[:_FIELD_MAX],
            ident[:_FIELD_MAX],
            clean_message(raw),
        )
        self.entries.append(entry)
        return entry

    def insert(self, entry: LogEntry) -> None:
        """A remote entry; duplicates (same uid, node, time) are dropped."""
        for e in self.entries:
            if e.uid == entry.uid and e.node == entry.node and e.time == entry.time:
                return
        self.entries.append(entry)

    def dump(self, max_entries: int = 50) -> str:
        ordered = sorted(self.entries, key=lambda e: (e.time, e.node, e.uid), reverse=True)
        lines = [
            f'{{"uid": {e.uid}, "time": {e.time}, "pri": {e.pri}, "tag": "{e.tag}", '
            f'"pid": {e.pid}, "node": "{e.node}", "user": "{e.ident}", "msg": "{e.msg}"}}'
            for e in ordered[:max_entries]
        ]
        body = ",\n".join(lines) + "\n" if lines else ""
        return '{\n"data": [\n' + body + "]\n}\n"
