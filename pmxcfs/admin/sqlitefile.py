"""The pages of an SQLite file read directly, for the rows SQLite refuses to read.

SQLite stops a whole scan at the first corrupt page; `pmxcfs-admin diff` still wants every row
on the intact pages. This reads the documented file format (sqlite.org/fileformat.html): the
header, the committed frames of a `-wal` file over the main file, table b-trees, records and
overflow chains. Only what a rowid table needs; index b-trees are never descended.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

MAGIC = b"SQLite format 3\x00"
_WAL_MAGIC = (0x377F0682, 0x377F0683)
_DEFAULT_PAGE = 4096
_LEAF, _INTERIOR = 13, 5
_MAX_PAYLOAD = 1 << 30

Field = tuple[int, int | float | bytes | None]  # (serial type, value); text comes as bytes


class PageError(Exception):
    """Why a page, cell or record cannot be used (one short phrase)."""


def is_text(f: Field) -> bool:
    return f[0] >= 13 and f[0] % 2 == 1


def is_int(f: Field) -> bool:
    return 1 <= f[0] <= 6 or f[0] in (8, 9)


@dataclass(frozen=True, slots=True)
class Lost:
    """A page or cell of a table that could not be read, and the rowids it may have held."""

    page: int
    reason: str
    low: int | None  # rowids above `low` and up to `high` may be missing (None: unbounded)
    high: int | None

    def holds(self, rowid: int) -> bool:
        return (self.low is None or rowid > self.low) and (self.high is None or rowid <= self.high)

    def describe(self, key: str = "rowid") -> str:
        if self.low is None and self.high is None:
            span = f"any {key}"
        elif self.low is None:
            span = f"{key}s up to {self.high}"
        elif self.high is None:
            span = f"{key}s above {self.low}"
        else:
            span = f"{key}s {self.low + 1}..{self.high}"
        where = f"page {self.page}: " if self.page else ""
        return f"{where}{self.reason} ({span} may be missing)"


@dataclass(slots=True)
class Table:
    """The rows of one table b-tree that could be read, what could not, and its pages."""

    rows: list[tuple[int, list[Field]]] = field(default_factory=list)
    lost: list[Lost] = field(default_factory=list)
    pages: set[int] = field(default_factory=set)


def _u16(b: bytes, at: int) -> int:
    return int.from_bytes(b[at : at + 2], "big")


def _u32(b: bytes, at: int) -> int:
    return int.from_bytes(b[at : at + 4], "big")


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        if pos + i >= len(buf):
            raise PageError("truncated varint")
        byte = buf[pos + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + i + 1
    if pos + 8 >= len(buf):
        raise PageError("truncated varint")
    return (value << 8) | buf[pos + 8], pos + 9


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _wal_checksum(data: bytes, s: tuple[int, int], big: bool) -> tuple[int, int]:
    words = struct.unpack(f"{'>' if big else '<'}{len(data) // 4}I", data)
    s0, s1 = s
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _wal_pages(path: str, page_size: int) -> tuple[dict[int, bytes], int]:
    """Pages of every committed transaction in `path`-wal, and the page count it commits."""
    try:
        with open(path + "-wal", "rb") as f:
            wal = f.read()
    except OSError:
        return {}, 0
    if len(wal) < 32:
        return {}, 0
    magic, _fmt, psz, _seq, salt1, salt2, c1, c2 = struct.unpack(">8I", wal[:32])
    if magic not in _WAL_MAGIC or psz != page_size:
        return {}, 0
    big = bool(magic & 1)
    s = _wal_checksum(wal[:24], (0, 0), big)
    if s != (c1, c2):
        return {}, 0
    committed: dict[int, bytes] = {}
    pending: dict[int, bytes] = {}
    size = 0
    step = 24 + psz
    for off in range(32, len(wal) - step + 1, step):
        pgno, commit, fs1, fs2, k1, k2 = struct.unpack(">6I", wal[off : off + 24])
        body = wal[off + 24 : off + step]
        if (fs1, fs2) != (salt1, salt2):
            break
        s = _wal_checksum(wal[off : off + 8] + body, s, big)
        if s != (k1, k2):
            break
        pending[pgno] = body
        if commit:
            committed.update(pending)
            pending.clear()
            size = commit
    return committed, size


class PageFile:
    """The pages of a database as SQLite would see them: the main file with its -wal on top."""

    def __init__(self, path: str) -> None:
        with open(path, "rb") as f:
            self.data = f.read()
        self.has_magic = self.data.startswith(MAGIC)
        size = _u16(self.data, 16) if self.has_magic else 0
        size = 65536 if size == 1 else size
        valid = 512 <= size <= 65536 and size & (size - 1) == 0
        self.page_size = size if valid else _DEFAULT_PAGE
        reserved = self.data[20] if self.has_magic else 0
        self.usable = self.page_size - reserved if self.page_size - reserved >= 480 else 480
        self.wal, wal_count = _wal_pages(path, self.page_size) if self.has_magic else ({}, 0)
        own = (len(self.data) + self.page_size - 1) // self.page_size
        self.page_count = max(own, wal_count, max(self.wal, default=0))

    def page(self, pgno: int) -> bytes:
        if pgno in self.wal:
            return self.wal[pgno]
        if not 1 <= pgno <= self.page_count:
            raise PageError(f"page number {pgno} is outside the file")
        at = (pgno - 1) * self.page_size
        body = self.data[at : at + self.page_size]
        if len(body) < self.page_size:
            raise PageError("page cut short by the end of the file")
        return body

    def freelist(self) -> set[int]:
        """Pages on the free list (they hold stale rows of deleted entries)."""
        out: set[int] = set()
        if not self.has_magic:
            return out
        trunk = _u32(self.page(1), 32)
        while trunk and trunk not in out:
            out.add(trunk)
            try:
                body = self.page(trunk)
            except PageError:
                break
            count = min(_u32(body, 4), (self.usable - 8) // 4)
            out.update(_u32(body, 8 + 4 * i) for i in range(count))
            trunk = _u32(body, 0)
        return out

    # ------------------------------------------------------------------ b-tree pages

    def _cells(self, pgno: int, page: bytes) -> tuple[int, list[int], int]:
        """Type, cell offsets and right-most child of a b-tree page."""
        off = 100 if pgno == 1 else 0
        kind = page[off]
        if kind not in (2, 5, 10, 13):
            raise PageError(f"not a b-tree page (type byte {kind})")
        count = _u16(page, off + 3)
        head = off + (12 if kind in (2, 5) else 8)
        start = head + 2 * count
        if start > self.usable:
            raise PageError(f"{count} cells do not fit in the page")
        ptrs = [_u16(page, head + 2 * i) for i in range(count)]
        bad = next((i for i, p in enumerate(ptrs) if not start <= p < self.usable), None)
        if bad is not None:
            raise PageError(f"cell {bad} points outside the page")
        right = _u32(page, off + 8) if kind in (2, 5) else 0
        return kind, ptrs, right

    def _overflow(self, first: int, need: int, used: set[int]) -> bytes:
        parts: list[bytes] = []
        pgno = first
        while need > 0:
            if pgno in used or pgno == 0:
                raise PageError("broken overflow chain")
            used.add(pgno)
            body = self.page(pgno)
            chunk = body[4 : min(self.usable, 4 + need)]
            parts.append(chunk)
            need -= len(chunk)
            pgno = _u32(body, 0)
        return b"".join(parts)

    def _leaf_cell(self, page: bytes, ptr: int, used: set[int]) -> tuple[int, bytes]:
        size, pos = varint(page, ptr)
        rowid, pos = varint(page, pos)
        if size > _MAX_PAYLOAD:
            raise PageError(f"payload of {size} bytes")
        u = self.usable
        local = size
        if size > u - 35:
            m = (u - 12) * 32 // 255 - 23
            k = m + (size - m) % (u - 4)
            local = k if k <= u - 35 else m
        if pos + local + (4 if local < size else 0) > u:
            raise PageError("cell runs past the end of the page")
        payload = page[pos : pos + local]
        if local < size:
            payload += self._overflow(_u32(page, pos + local), size - local, used)
        return _signed(rowid), payload

    def leaf_rows(
        self, pgno: int, page: bytes, used: set[int]
    ) -> Iterator[tuple[int, list[Field] | PageError]]:
        """(rowid, fields or PageError) for every cell of a table leaf."""
        _kind, ptrs, _ = self._cells(pgno, page)
        for i, ptr in enumerate(ptrs):
            try:
                rowid, payload = self._leaf_cell(page, ptr, used)
                yield rowid, record(payload)
            except PageError as exc:
                yield i, PageError(f"cell {i}: {exc}")

    def table(self, root: int) -> Table:
        """Every readable row of the table b-tree at `root`, in rowid order."""
        out = Table()
        stack: list[tuple[int, int | None, int | None]] = [(root, None, None)]
        while stack:
            pgno, low, high = stack.pop()
            if pgno in out.pages:
                out.lost.append(Lost(pgno, "page used twice in one b-tree", low, high))
                continue
            out.pages.add(pgno)
            try:
                page = self.page(pgno)
                kind, ptrs, right = self._cells(pgno, page)
                if kind not in (_LEAF, _INTERIOR):
                    raise PageError("index page inside a table b-tree")
            except PageError as exc:
                out.lost.append(Lost(pgno, str(exc), low, high))
                continue
            if kind == _LEAF:
                self._read_leaf(pgno, page, low, high, out)
                continue
            children: list[tuple[int, int | None, int | None]] = []
            prev = low
            try:
                for ptr in ptrs:
                    key, _ = varint(page, ptr + 4)
                    children.append((_u32(page, ptr), prev, _signed(key)))
                    prev = _signed(key)
            except PageError as exc:
                out.lost.append(Lost(pgno, f"interior cell: {exc}", prev, high))
            children.append((right, prev, high))
            stack.extend(reversed(children))
        return out

    def _read_leaf(
        self, pgno: int, page: bytes, low: int | None, high: int | None, out: Table
    ) -> None:
        bad: list[tuple[int, str]] = []  # (index among cells, reason)
        good: list[tuple[int, int, list[Field]]] = []
        for i, (rowid, fields) in enumerate(self.leaf_rows(pgno, page, out.pages)):
            if isinstance(fields, PageError):
                bad.append((i, str(fields)))
            else:
                good.append((i, rowid, fields))
        out.rows.extend((rowid, fields) for _, rowid, fields in good)
        for i, reason in bad:
            below = [r for j, r, _ in good if j < i]
            above = [r for j, r, _ in good if j > i]
            lo = below[-1] if below else low
            hi = above[0] - 1 if above else high
            out.lost.append(Lost(pgno, reason, lo, hi))

    def scan_leaves(self, skip: set[int]) -> Iterator[tuple[int, int, list[Field]]]:
        """(page, rowid, fields) of every readable cell on table leaves not in `skip`."""
        for pgno in range(1, self.page_count + 1):
            if pgno in skip:
                continue
            try:
                page = self.page(pgno)
                if page[100 if pgno == 1 else 0] != _LEAF:
                    continue
                for rowid, fields in self.leaf_rows(pgno, page, set()):
                    if not isinstance(fields, PageError):
                        yield pgno, rowid, fields
            except PageError:
                continue


def record(payload: bytes) -> list[Field]:
    """Decode one record: serial types from its header, then the values."""
    head, pos = varint(payload, 0)
    if not 1 <= head <= len(payload):
        raise PageError("bad record header")
    types: list[int] = []
    while pos < head:
        t, pos = varint(payload, pos)
        types.append(t)
    if pos != head:
        raise PageError("bad record header")
    out: list[Field] = []
    for t in types:
        if t in (0, 8, 9):
            out.append((t, None if t == 0 else t - 8))
            continue
        if t in (10, 11):
            raise PageError(f"reserved serial type {t}")
        n = (1, 2, 3, 4, 6, 8, 8)[t - 1] if t <= 7 else (t - 12) // 2
        if pos + n > len(payload):
            raise PageError("record shorter than its header says")
        raw = payload[pos : pos + n]
        pos += n
        if t == 7:
            out.append((t, struct.unpack(">d", raw)[0]))
        elif t <= 6:
            out.append((t, int.from_bytes(raw, "big", signed=True)))
        else:
            out.append((t, raw))
    return out
