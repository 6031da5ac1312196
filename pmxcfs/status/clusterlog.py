"""The cluster log: the reference's byte ring, its dedup, sync merge and JSON dump (status-ipc §3).

The log is kept as the same fixed-size ring C uses (not as a list) because which entries
survive, the STATE blob peers receive and the dump order (newest *inserted* first; sorted
only after a merge) must be what C peers have. Local entries are created here (message
cleaning and truncation, §3.2); remote ones arrive through the kvstore group (§3.5, §3.6).
"""

from __future__ import annotations

import functools
import logging
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from ..cstr import c_str
from ..dfsm.codec import WireError
from ..kvstore.codec import CLOG_HEADER, LOG_FIXED, LOG_MAX, ClogState, LogEntry, iter_clog

__all__ = ["CLOG_SIZE", "ClusterLog", "LogEntry", "clean_message", "compare", "fnv1a64"]

log = logging.getLogger("pmxcfs.clusterlog")

CLOG_SIZE = 131072  # 8192 * 16, the C default; also the STATE blob size
MERGE_LIMIT = CLOG_SIZE - 8 - LOG_MAX  # §3.6: stop merging once this many bytes were taken
DEFAULT_MAX = 50
_FIELD_MAX = 254  # node, ident and tag: 254 bytes plus NUL
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_NEXT = struct.Struct("<I")

Identity = tuple[int, int, int]  # (time, node_digest, uid): "the same entry" (§3.4)


def fnv1a64(data: bytes) -> int:
    """FNV-1a 64: the node/ident digests every C peer compares entries by."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & _U64
    return h


def _i32(x: int) -> int:
    x &= _U32
    return x - 0x100000000 if x & 0x80000000 else x


def compare(a: LogEntry, b: LogEntry) -> int:
    """§3.4 order with C's comparator: each field's difference truncated to int32."""
    if a.time != b.time:
        return _i32(a.time - b.time)
    if a.node_digest != b.node_digest:
        return _i32(a.node_digest - b.node_digest)
    return _i32(a.uid - b.uid)


_SORT_KEY = functools.cmp_to_key(compare)


def identity(e: LogEntry) -> Identity:
    return (e.time, e.node_digest, e.uid)


# ---------------------------------------------------------------------------- messages


def _pieces_utf8(text: str) -> Iterator[str]:
    for ch in text:
        cp = ord(ch)
        if ch == '"':
            yield '\\"'
        elif cp < 0x20 or cp == 0x7F:
            yield f"#{cp:03d}"
        elif cp < 0x7F:
            yield ch
        elif cp <= 0xFFFF:
            yield f"\\u{cp:04x}"
        # above U+FFFF: dropped


def _pieces_bytes(raw: bytes) -> Iterator[str]:
    for b in raw:
        if b == 0x22:
            yield '\\"'
        elif b < 32:
            yield f"#{b:03d}"
        elif b < 127:
            yield chr(b)
        else:
            yield "?"


def clean_message(raw: bytes, limit: int | None = None, cap: int | None = None) -> str:
    """The origin-side conversion C peers rely on (they print msg raw into JSON).

    Conversion stops once the output reaches `limit` chars (an escape begun is finished, as in
    C); `cap` is a hard bound no piece may cross, so the entry never exceeds 4096 bytes.
    """
    try:
        pieces = _pieces_utf8(raw.decode("utf-8"))
    except UnicodeDecodeError:
        pieces = _pieces_bytes(raw)
    out: list[str] = []
    n = 0
    for p in pieces:
        if limit is not None and n >= limit:
            break
        if cap is not None and n + len(p) > cap:
            break
        out.append(p)
        n += len(p)
    return "".join(out)


def _field(value: str | bytes) -> bytes:
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return c_str(raw)[:_FIELD_MAX]


def make_entry(
    uid: int, when: int, node: bytes, ident: bytes, tag: bytes, pid: int, pri: int, msg: bytes
) -> LogEntry:
    """One entry as C builds it: digests over the NUL-terminated strings, msg cleaned to fit."""
    fixed = len(node) + len(ident) + len(tag) + 3  # the three lengths with their NULs
    soft = LOG_MAX - 44 - fixed - 7  # §3.2: B - 7
    cap = LOG_MAX - LOG_FIXED - fixed - 1  # entry <= 4096 with msg's NUL
    text = clean_message(msg, soft, cap).encode("ascii")
    return LogEntry(
        uid & _U32,
        when & _U32,
        fnv1a64(node + b"\x00"),
        fnv1a64(ident + b"\x00"),
        pid & _U32,
        pri,
        node,
        ident,
        tag,
        text,
    )


# ---------------------------------------------------------------------------- the ring


def _walk(buf: bytes | bytearray, who: str) -> Iterator[tuple[int, LogEntry]]:
    """Newest-first entries of a ring; a broken chain is logged and ends the walk there."""
    try:
        yield from iter_clog(buf)
    except WireError as exc:
        log.error("cluster log of %s: %s - ignoring the older entries", who, exc)


class _Ring:
    """C's clog buffer: {u32 size, u32 cpos} then 8-byte aligned entries linked by prev/next."""

    __slots__ = ("buf", "cpos", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf = bytearray(size)
        self.cpos = 0
        CLOG_HEADER.pack_into(self.buf, 0, size, 0)

    def append(self, e: LogEntry) -> None:
        """§3.3 allocation: after the newest entry, or wrapped to offset 8 (older ones lost)."""
        real = (e.size + 7) & ~7
        if self.cpos == 0:
            pos = 8
        else:
            pos = _NEXT.unpack_from(self.buf, self.cpos + 4)[0]
            if pos + real >= self.size:
                pos = 8
        self.buf[pos : pos + e.size] = e.encode(self.cpos, pos + real)
        self.cpos = pos
        CLOG_HEADER.pack_into(self.buf, 0, self.size, pos)

    def walk(self) -> Iterator[tuple[int, LogEntry]]:
        if self.cpos == 0:
            return iter(())
        return _walk(self.buf, "the local ring")


def valid_state(blob: bytes) -> bool:
    """§2.4: a STATE blob is taken if it is longer than 8 bytes and its size field says so."""
    return len(blob) > 8 and CLOG_HEADER.unpack_from(blob)[0] == len(blob)


# ---------------------------------------------------------------------------- the log


class ClusterLog:
    """One node's cluster log; `clock` gives "now" (seconds) for local entries.

    `listeners` are called (no arguments) after every change of the ring: an accepted insert,
    a merge, a restore. They run where the change is made (the trio loop) and must be cheap.
    """

    __slots__ = ("_clock", "_dedup", "_own", "_ring", "_uid", "listeners", "nodename")

    def __init__(
        self, nodename: str, *, clock: Callable[[], float] = time.time, size: int = CLOG_SIZE
    ) -> None:
        if size < 2 * LOG_MAX:
            raise ValueError(f"cluster log ring of {size} bytes cannot hold two entries")
        self.nodename = nodename
        self._clock = clock
        self._ring = _Ring(size)
        self._dedup: dict[int, tuple[int, int]] = {}  # node_digest -> newest (time, uid)
        self._uid = 0
        self._own = fnv1a64(_field(nodename) + b"\x00")  # our node_digest
        self.listeners: list[Callable[[], None]] = []

    @property
    def size(self) -> int:
        return self._ring.size

    # ------------------------------------------------------------------ inserting

    def add_local(
        self, ident: str | bytes, tag: str | bytes, pri: int, msg: str | bytes,
        pid: int | None = None,
    ) -> LogEntry | None:  # fmt: skip
        """A new local entry (§3.2); None for a priority >= 8 (C creates nothing, no error).

        The entry is returned even when dedup dropped it locally: C multicasts it anyway.
        """
        if not 0 <= pri < 8:
            return None
        raw = msg.encode("utf-8", "surrogateescape") if isinstance(msg, str) else msg
        self._uid += 1
        e = make_entry(
            self._uid,
            int(self._clock()),
            _field(self.nodename),
            _field(ident),
            _field(tag),
            os.getpid() if pid is None else pid,
            pri,
            c_str(raw),
        )
        self.insert(e)
        return e

    def insert(self, e: LogEntry) -> bool:
        """Insert with §3.5 dedup; False if dropped (duplicate, late, or oversized)."""
        if e.size > LOG_MAX:
            log.error("ignoring cluster log entry of %d bytes (> %d)", e.size, LOG_MAX)
            return False
        if not _accept(self._dedup, e):
            log.debug("ignore insert of duplicate cluster log (uid %d, time %d)", e.uid, e.time)
            return False
        self._ring.append(e)
        self._changed()
        return True

    def _changed(self) -> None:
        for listener in self.listeners:
            listener()

    # ------------------------------------------------------------------ reading

    def newest_first(self) -> list[LogEntry]:
        return [e for _pos, e in self._ring.walk()]

    def dump_bytes(self, max_entries: int = DEFAULT_MAX, user: bytes = b"") -> bytes:
        """§3.7 JSON, strings printed raw; `user` filters by ident, max 0 means 50."""
        limit = max_entries if max_entries > 0 else DEFAULT_MAX
        want = fnv1a64(user + b"\x00") if user else None
        lines: list[bytes] = []
        for _pos, e in self._ring.walk():
            if len(lines) >= limit:
                break
            if want is not None and e.ident_digest != want:
                continue
            lines.append(
                b'{"uid": %d, "time": %d, "pri": %d, "tag": "%s", "pid": %d, "node": "%s", '
                b'"user": "%s", "msg": "%s"}'
                % (e.uid, e.time, e.priority, e.tag, e.pid, e.node, e.ident, e.msg)
            )
        body = b",\n".join(lines) + b"\n" if lines else b""
        return b'{\n"data": [\n' + body + b"]\n}\n"

    def dump(self, max_entries: int = DEFAULT_MAX, user: str = "") -> str:
        return self.dump_bytes(max_entries, user.encode()).decode("utf-8", "replace")

    def snapshot(self) -> bytes:
        """A copy of the ring (a valid clog buffer): cheap to take where the log changes, so
        another thread can walk it while this one goes on (clusterlog_store)."""
        return bytes(self._ring.buf)

    # ------------------------------------------------------------------ restart

    def restore(self, entries: Iterable[LogEntry]) -> int:
        """Replace the log by saved entries, oldest inserted first; how many the ring kept.

        The ring is refilled in the saved order, so the dump reads as before the restart; the
        dedup map gets each node's newest (time, uid). Our uid counter continues after our
        highest saved uid (C restarts it at 1): an entry made in the same second as a saved
        one is then neither dropped by dedup nor taken for it (same time, node and uid).
        """
        ring = _Ring(self.size)
        dedup: dict[int, tuple[int, int]] = {}
        for e in entries:
            if e.size > LOG_MAX:
                continue
            ring.append(e)
            last = dedup.get(e.node_digest)
            if last is None or (e.time, e.uid) > last:
                dedup[e.node_digest] = (e.time, e.uid)
            if e.node_digest == self._own:
                self._uid = max(self._uid, e.uid)
        self._ring = ring
        self._dedup = dedup
        self._changed()
        return len(self.newest_first())

    # ------------------------------------------------------------------ sync

    def state_blob(self) -> bytes:
        """§3.3 STATE payload: the ring rebuilt in sort order, newest entries that fit."""
        entries = sorted(self.newest_first(), key=_SORT_KEY)
        total = 8
        start = len(entries)
        while start > 0:
            real = (entries[start - 1].size + 7) & ~7
            if total + real >= self.size:
                break
            total += real
            start -= 1
        return ClogState(self.size, tuple(entries[start:])).encode()

    def merge(self, blobs: Sequence[bytes | None], who: Sequence[str] | None = None) -> None:
        """§3.6: merge the members' logs (member order; None = our live ring) into a new ring.

        Blobs must have passed `valid_state`; a broken chain inside one is cut where it breaks.
        """
        names = list(who) if who is not None else [f"member {i}" for i in range(len(blobs))]
        cursors = [
            self._ring.walk() if b is None else _walk(b, names[i]) for i, b in enumerate(blobs)
        ]
        heads = [next(c, None) for c in cursors]
        result: dict[Identity, LogEntry] = {}
        dedup: dict[int, tuple[int, int]] = {}
        total = 0
        while True:
            best = -1
            best_time = 0
            for i, h in enumerate(heads):
                if h is not None and h[1].time > best_time:
                    best, best_time = i, h[1].time
            if best < 0:
                break
            head = heads[best]
            assert head is not None
            e = head[1]
            key = identity(e)
            if key not in result:
                result[key] = e
                _accept(dedup, e)
            # C adds next - offset: the aligned size in every ring C writes; a lying `next`
            # in a peer's blob must not end the merge early (and cost us our own log)
            total += (e.size + 7) & ~7
            if total >= MERGE_LIMIT:
                break
            heads[best] = next(cursors[best], None)
        ring = _Ring(self.size)
        for e in sorted(result.values(), key=_SORT_KEY):
            ring.append(e)  # walked entries are <= LOG_MAX: the ring always has room
            if e.node_digest == self._own:  # peers may hold ours from before a restart
                self._uid = max(self._uid, e.uid)
        self._ring = ring
        self._dedup = dedup
        self._changed()


def _accept(dedup: dict[int, tuple[int, int]], e: LogEntry) -> bool:
    """§3.5: newer (time, uid) than the newest seen from that node; records it."""
    last = dedup.get(e.node_digest)
    if last is not None and (e.time < last[0] or (e.time == last[0] and e.uid <= last[1])):
        return False
    dedup[e.node_digest] = (e.time, e.uid)
    return True
