"""The cluster log kept across restarts: `<db-dir>/clusterlog.msgpack` (beyond the reference,
which keeps it in memory only).

The file holds exactly the entries of the in-memory ring (so it is bounded as the ring is), in
insertion order, with every field a peer compares them by (time, node digest, uid), so that
after a restart the kvstore sync merges them with the peers' logs as C merges logs: an entry
both sides hold is the same entry and is kept once.

Writing stays off the trio loop: `run` (a trio task) only takes a copy of the ring when the log
changed, at most once per `interval`; one long-lived thread turns the newest copy into msgpack
and replaces the file atomically (temporary file, fsync, rename, fsync of the directory), mode
0600. `close` writes the last state at shutdown. A file that is corrupt, of another kind or of
another node is reported in one line and ignored: the daemon starts with an empty log and the
file is replaced at the next write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from collections.abc import Sequence
from typing import Any

import msgpack
import trio

from ..dfsm.codec import WireError
from ..kvstore.codec import LOG_MAX, LogEntry, iter_clog
from .clusterlog import ClusterLog

__all__ = ["FILE_NAME", "ClusterLogStore", "StoreError", "decode_file", "encode_file"]

log = logging.getLogger("pmxcfs.clusterlog")

FILE_NAME = "clusterlog.msgpack"
FORMAT = "pmxcfs-clusterlog"
VERSION = 1
_U8, _U32, _U64 = 0xFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF
_STR_MAX = 254  # a C length field is one byte and counts the NUL


class StoreError(ValueError):
    """Why a file is not a cluster log this node can restore."""


# ---------------------------------------------------------------------------- the file


def encode_file(nodename: str, entries: Sequence[LogEntry]) -> bytes:
    """The file's bytes: a msgpack map; entries oldest first, strings without their NUL."""
    rows = [
        [e.uid, e.time, e.node_digest, e.ident_digest, e.pid, e.priority,
         e.node, e.ident, e.tag, e.msg, e.pad]
        for e in entries
    ]  # fmt: skip
    doc = {"format": FORMAT, "version": VERSION, "node": nodename, "entries": rows}
    return bytes(msgpack.packb(doc, use_bin_type=True))


def decode_file(raw: bytes, nodename: str) -> list[LogEntry]:
    """The entries of a file written by `encode_file` for `nodename`; StoreError otherwise."""
    try:
        doc = msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several kinds; all mean "not readable"
        raise StoreError(f"not readable msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StoreError("not a pmxcfs cluster log file")
    if doc.get("version") != VERSION:
        raise StoreError(f"format version {doc.get('version')!r} is not supported")
    if doc.get("node") != nodename:
        raise StoreError(f"written by node {doc.get('node')!r}, this node is {nodename!r}")
    rows = doc.get("entries")
    if not isinstance(rows, list):
        raise StoreError("no entry list")
    return [_entry(i, row) for i, row in enumerate(rows)]


def _entry(i: int, row: Any) -> LogEntry:
    if not isinstance(row, list) or len(row) != 11:
        raise StoreError(f"entry {i} is not a list of 11 fields")
    uid, tm, nd, idg, pid, prio, node, ident, tag, msg, pad = row
    for value, top in ((uid, _U32), (tm, _U32), (nd, _U64), (idg, _U64), (pid, _U32), (prio, _U8)):
        if type(value) is not int or not 0 <= value <= top:
            raise StoreError(f"entry {i} has a bad number {value!r}")
    for value in (node, ident, tag, msg):
        if not isinstance(value, bytes) or b"\x00" in value:
            raise StoreError(f"entry {i} has a bad string")
    if max(len(node), len(ident), len(tag)) > _STR_MAX:
        raise StoreError(f"entry {i} has a string longer than {_STR_MAX} bytes")
    if not isinstance(pad, bytes) or len(pad) != 4:
        raise StoreError(f"entry {i} has a bad pad field")
    e = LogEntry(uid, tm, nd, idg, pid, prio, node, ident, tag, msg, pad=pad)
    if e.size > LOG_MAX:
        raise StoreError(f"entry {i} is {e.size} bytes (> {LOG_MAX})")
    return e


def ring_entries(snapshot: bytes) -> list[LogEntry]:
    """A ring copy's entries, oldest inserted first (what the ring walk reaches)."""
    out: list[LogEntry] = []
    try:
        for _pos, e in iter_clog(snapshot):
            out.append(e)
    except WireError as exc:  # our own ring: a bug, but keep what is sound
        log.error("cluster log ring is broken (%s) - saving the %d newest entries", exc, len(out))
    out.reverse()
    return out


# ---------------------------------------------------------------------------- the store


class ClusterLogStore:
    """Loads `clog` from `path`, then keeps the file current while the daemon runs."""

    def __init__(self, path: str, clog: ClusterLog, *, interval: float = 1.0) -> None:
        self.path = path
        self.clog = clog
        self.interval = interval
        self.max_file = 4 * clog.size + 65536  # a sane file is about the ring's size
        self._dirty = False
        self._wake: trio.Event | None = None
        self._cond = threading.Condition()
        self._pending: bytes | None = None
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._last: bytes | None = None  # the bytes of the file we wrote last
        self._failing = False
        clog.listeners.append(self._changed)

    # ------------------------------------------------------------------ startup

    def load(self) -> int:
        """Restore the saved log into `clog` (before anything is logged); entries restored."""
        try:  # O_NONBLOCK: a FIFO put there must not hang the startup
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            return self._ignore(exc.strerror or str(exc))
        try:
            raw = self._read(fd)
        except OSError as exc:
            return self._ignore(exc.strerror or str(exc))
        except StoreError as exc:
            return self._ignore(str(exc))
        finally:
            os.close(fd)
        try:
            entries = decode_file(raw, self.clog.nodename)
        except StoreError as exc:
            return self._ignore(str(exc))
        kept = self.clog.restore(entries)
        self._last = raw
        log.info("restored %d cluster log entries from %s", kept, self.path)
        return kept

    def _read(self, fd: int) -> bytes:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError("not a regular file")
        if st.st_size > self.max_file:
            raise StoreError(f"{st.st_size} bytes, more than a cluster log can hold")
        chunks: list[bytes] = []
        left = self.max_file + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise StoreError("it grew beyond what a cluster log can hold")
        return b"".join(chunks)

    def _ignore(self, why: str) -> int:
        log.error(
            "ignoring cluster log file %s: %s - starting with an empty log (the file is "
            "replaced at the next save)", self.path, why,
        )  # fmt: skip
        return 0

    # ------------------------------------------------------------------ loop side

    def _changed(self) -> None:
        self._dirty = True
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Save a copy of the ring whenever the log changed, at most once per interval."""
        self._wake = trio.Event()
        try:
            while True:
                while not self._dirty:
                    await self._wake.wait()
                    self._wake = trio.Event()
                self._dirty = False
                self._submit(self.clog.snapshot())
                await trio.sleep(self.interval)
        finally:
            self._wake = None

    def close(self, timeout: float = 5.0) -> None:
        """Write the log as it is now (if it changed, or the last save failed) and stop the
        thread; call after the loop."""
        if self._dirty or self._failing:
            self._dirty = False
            self._submit(self.clog.snapshot())
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        t = self._thread
        if t is not None:
            t.join(timeout)
            if t.is_alive():
                log.warning("cluster log not saved within %.0f s at shutdown", timeout)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the thread wrote every copy handed to it (tests); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def _submit(self, snapshot: bytes) -> None:
        with self._cond:
            if self._closed:
                return
            self._pending = snapshot  # an older copy not yet written is superseded
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._worker, name="pmxcfs-clusterlog", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    # ------------------------------------------------------------------ writer thread

    def _worker(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                snapshot, self._pending = self._pending, None
                if snapshot is None:
                    return
                self._busy = True
            try:
                self._save(snapshot)
            except Exception as exc:  # a bug must not end the thread; no trace
                log.error("cluster log not saved: %s: %s", type(exc).__name__, exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _save(self, snapshot: bytes) -> None:
        data = encode_file(self.clog.nodename, ring_entries(snapshot))
        if data == self._last:
            return
        try:
            write_atomic(self.path, data)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.error("cannot save the cluster log to %s: %s", self.path, exc)
            return
        if self._failing:
            self._failing = False
            log.info("cluster log saved to %s again", self.path)
        self._last = data


def write_atomic(path: str, data: bytes) -> None:
    """Replace `path` by `data` (mode 0600): a crash leaves the old file or the new one."""
    directory = os.path.dirname(path) or "."
    tmp = path + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover of a crash; O_EXCL below then makes a fresh 0600 file
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
