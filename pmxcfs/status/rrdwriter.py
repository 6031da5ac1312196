"""Write RRD table updates to the RRD files the PVE graphs read (status-ipc §4.3).

Every accepted `rrd/<key>` update, ours or a peer's, is queued by `submit` (the only part that
runs on the trio loop) and written by one long-lived thread: create the file with librrd if it
is missing (start today 00:00 local time, as the reference), then update it through rrdcached
when it answers, else directly with librrd. The queue is bounded so a dead disk cannot eat
memory. Failures are logged once when they start (not on every update) and never raised.

rrdcached refusing an update (e.g. a timestamp it already has) is not a connection failure:
the file is flushed through rrdcached before the direct update, so the direct write cannot
overtake values rrdcached still holds. A connection failure (absent, refused, timeout, closed)
drops the connection and skips rrdcached for `retry_interval` seconds, so a hung daemon costs
one timeout per interval instead of one per update.

Paths go to rrdcached absolute, as in the reference (spec §8 question 5, checked against
rrdcached 1.7.2 run as PVE runs it, `-b <base> -B`): an absolute path inside the base is
accepted; one outside it (e.g. `--rrd-dir` is not rrdcached's base) or with `..` in it is
refused with `-1 ...: Permission denied`, and then the file is written directly.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable

from . import librrd, rrdfiles
from .rrdcached import RrdcachedClient, RrdcachedError, socket_path

log = logging.getLogger("pmxcfs.status")

MAX_QUEUE = 10000
_MAX_CONDITIONS = 10000


class _Conditions:
    """Failure states by name: a failure is logged when it starts, not while it lasts."""

    def __init__(self) -> None:
        self._failing: set[str] = set()

    def fail(self, name: str, level: int, msg: str, *args: object) -> None:
        if name in self._failing:
            return
        if len(self._failing) >= _MAX_CONDITIONS:
            self._failing.clear()
        self._failing.add(name)
        log.log(level, msg, *args)

    def ok(self, name: str, msg: str = "", *args: object) -> None:
        if name in self._failing:
            self._failing.discard(name)
            if msg:
                log.info(msg, *args)


class RrdWriter:
    """The disk side of the RRD table: `submit` from the loop, one thread does the rest."""

    def __init__(
        self,
        base_dir: str,
        rrdcached: str = "",
        *,
        max_queue: int = MAX_QUEUE,
        timeout: float = 5.0,
        retry_interval: float = 10.0,
        clock: Callable[[], float] = time.time,
        librrd_name: str = librrd.SONAME,
    ) -> None:
        """`rrdcached`: its socket (`/path` or `unix:/path`), or '' to always write directly."""
        self.base_dir = os.path.abspath(base_dir)
        self.rrdcached = socket_path(rrdcached)
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.clock = clock
        self.max_queue = max_queue
        self.cached_updates = 0  # accepted by rrdcached
        self.direct_updates = 0  # written by librrd
        self.dropped = 0  # jobs refused because the queue was full
        self._queue: queue.SimpleQueue[tuple[str, str] | None] = queue.SimpleQueue()
        self._idle = threading.Condition()
        self._pending = 0  # queued or in progress
        self._overflow = False
        self._closed = False
        self._abandon = False
        self._conds = _Conditions()
        self._client: RrdcachedClient | None = None
        self._retry_at = 0.0
        self._librrd_name = librrd_name
        self._librrd: librrd.LibRrd | None = None
        self._thread = threading.Thread(target=self._worker, name="pmxcfs-rrd", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ caller side

    def submit(self, key: str, data: str) -> None:
        """Queue one update (key without `rrd/`); never blocks, never raises."""
        with self._idle:
            if self._closed:
                return
            if self._pending >= self.max_queue:
                self.dropped += 1
                if not self._overflow:
                    self._overflow = True
                    log.error("RRD write queue full (%d updates) - dropping updates", self._pending)
                return
            self._pending += 1
        self._queue.put((key, data))

    @property
    def queued(self) -> int:
        """Updates queued or being written (for `pmxcfs-admin status`)."""
        return self._pending

    @property
    def rrdcached_state(self) -> str:
        """'unused', 'connected', 'unreachable' (retried later) or 'untried' (no update yet)."""
        if not self.rrdcached:
            return "unused"
        if self._client is not None:
            return "connected"
        return "unreachable" if self._retry_at else "untried"

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every queued update is done (for tests); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Finish what is queued (for at most `timeout` seconds) and stop the thread."""
        with self._idle:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon = True  # the thread skips the rest and ends; nobody waits for it
            log.warning("RRD writer stopped with %d updates not written", self._pending)

    # ------------------------------------------------------------------ worker thread

    def _worker(self) -> None:
        q = self._queue
        while True:
            job = q.get()
            if job is None:
                break
            if not self._abandon:
                try:
                    self._write(*job)
                except Exception as exc:  # a bug must not end the thread; no trace
                    log.error("RRD update error %s: %s: %s", job[0], type(exc).__name__, exc)
            with self._idle:
                self._pending -= 1
                if self._pending == 0:
                    self._idle.notify_all()
                    if self._overflow:
                        self._overflow = False
                        log.info("RRD writer caught up (%d updates dropped so far)", self.dropped)
        self._disconnect()

    def _write(self, key: str, data: str) -> None:
        job = rrdfiles.plan(key, data, self.clock())
        if isinstance(job, rrdfiles.Refusal):
            if not job.path:  # logged once per key: newer peers send them every 10 s
                self._conds.fail("key:" + key, logging.CRITICAL, "%s", job.reason)
            else:
                name = os.path.join(self.base_dir, job.path)
                self._conds.fail(name, logging.ERROR, "%s", job.reason)
            return
        path = os.path.join(self.base_dir, job.path)
        if not os.path.exists(path) and not self._create(path, job):
            return
        refused = self._update_cached(path, job.values)
        if refused is None:
            self.cached_updates += 1
            self._conds.ok(path)
            return
        lib = self._lib()
        if lib is None:
            return
        try:
            lib.update(path, job.values)
        except librrd.RrdError as exc:
            self._conds.fail(path, logging.ERROR, "RRD update error %s: %s", path, exc)
            return
        self.direct_updates += 1
        self._conds.ok(path)
        if refused:
            self._conds.fail(
                "rrdcached:" + path, logging.WARNING,
                "rrdcached refused an update of %s (%s) - updated the file directly", path, refused,
            )  # fmt: skip

    def _create(self, path: str, job: rrdfiles.RrdFile) -> bool:
        lib = self._lib()
        if lib is None or not self._make_dirs(os.path.dirname(path)):
            return False
        try:
            lib.create(path, job.step, job.start, job.create_args)
        except librrd.RrdError as exc:
            self._conds.fail(path, logging.ERROR, "RRD create error %s: %s", path, exc)
            return False
        log.debug("created RRD file %s", path)
        return True

    def _make_dirs(self, directory: str) -> bool:
        """Every missing directory down to `directory`, mode 0755 (less the umask, as in C)."""
        missing: list[str] = []
        d = directory
        while not os.path.isdir(d) and d != os.path.dirname(d):
            missing.append(d)
            d = os.path.dirname(d)
        for d in reversed(missing):
            try:
                os.mkdir(d, 0o755)
            except FileExistsError:
                pass
            except OSError as exc:
                self._conds.fail(
                    "dir:" + d, logging.ERROR, "RRD create error: cannot create %s: %s",
                    d, exc.strerror,
                )  # fmt: skip
                return False
            self._conds.ok("dir:" + d)
        return True

    def _lib(self) -> librrd.LibRrd | None:
        """librrd, opened on first use (and retried while it is missing)."""
        if self._librrd is None:
            try:
                self._librrd = librrd.LibRrd(self._librrd_name)
            except librrd.RrdLibraryError as exc:
                self._conds.fail(
                    "librrd", logging.ERROR,
                    "%s - RRD files cannot be created or updated directly (install librrd8)", exc,
                )  # fmt: skip
                return None
            self._conds.ok("librrd", "loaded %s", self._librrd_name)
        return self._librrd

    # ------------------------------------------------------------------ rrdcached

    def _update_cached(self, path: str, values: str) -> str | None:
        """None if rrdcached took the update; else why not ('' = not reachable)."""
        client = self._connect()
        if client is None:
            return ""
        try:
            client.update(path, values)
        except RrdcachedError as exc:
            self._conds.ok("rrdcached", "rrdcached at %s works again", self.rrdcached)
            try:
                client.flush(path)  # what it holds goes first, so the direct write stays in order
            except RrdcachedError:
                pass
            except OSError as err:
                self._down(err)
            return str(exc) or "error"
        except OSError as exc:
            self._down(exc)
            return ""
        self._conds.ok("rrdcached", "rrdcached at %s works again", self.rrdcached)
        self._conds.ok("rrdcached:" + path)
        return None

    def _connect(self) -> RrdcachedClient | None:
        if self._client is not None:
            return self._client
        if not self.rrdcached or time.monotonic() < self._retry_at:
            return None
        try:
            self._client = RrdcachedClient(self.rrdcached, self.timeout)
        except OSError as exc:
            self._down(exc)
        return self._client

    def _down(self, exc: OSError) -> None:
        self._disconnect()
        self._retry_at = time.monotonic() + self.retry_interval
        reason = exc.strerror or str(exc) or type(exc).__name__
        self._conds.fail(
            "rrdcached", logging.WARNING,
            "rrdcached at %s not usable (%s) - updating RRD files directly", self.rrdcached, reason,
        )  # fmt: skip

    def _disconnect(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
