"""librrd (rrdtool's library) through cffi in ABI mode: create and update RRD files directly.

ABI mode needs no compiler or headers, only the runtime package (librrd8). The writer opens it
on first use, so a host without it still runs everything else (only direct RRD writes are
off). Only the thread-safe `_r` entry points are used; librrd keeps its error text per
thread, so it is read on the calling thread.
"""

from __future__ import annotations

import os
from typing import Any

import cffi

SONAME = "librrd.so.8"

_CDEF = """
typedef long time_t;  /* every Debian 12 architecture */
int rrd_create_r(const char *filename, unsigned long pdp_step, time_t last_up,
                 int argc, const char **argv);
int rrd_update_r(const char *filename, const char *_template, int argc, const char **argv);
char *rrd_get_error(void);
void rrd_clear_error(void);
"""


class RrdLibraryError(Exception):
    """librrd could not be loaded."""


class RrdError(Exception):
    """librrd refused a create or update; the message is librrd's."""


class LibRrd:
    def __init__(self, soname: str = SONAME) -> None:
        self._ffi = cffi.FFI()
        self._ffi.cdef(_CDEF)
        try:
            self._lib = self._ffi.dlopen(soname)
        except OSError as exc:
            raise RrdLibraryError(f"cannot load {soname}: {exc}") from exc

    def _argv(self, args: tuple[str, ...]) -> tuple[Any, list[Any]]:
        """A C argv and the buffers it points to (keep both alive for the call)."""
        keep = [self._ffi.new("char[]", a.encode()) for a in args]
        return self._ffi.new("const char *[]", keep), keep

    def _check(self, rc: int) -> None:
        if rc < 0:
            msg = self._ffi.string(self._lib.rrd_get_error()).decode("utf-8", "replace")
            self._lib.rrd_clear_error()
            raise RrdError(msg or "unknown librrd error")

    def create(self, filename: str, step: int, start: int, args: tuple[str, ...]) -> None:
        """Create `filename` (overwriting it) with DS/RRA `args`; updates must be after `start`."""
        argv, _keep = self._argv(args)
        self._lib.rrd_clear_error()
        self._check(self._lib.rrd_create_r(os.fsencode(filename), step, start, len(args), argv))

    def update(self, filename: str, values: str) -> None:
        """One `<ts>:<v1>:...` update written straight to the file."""
        argv, _keep = self._argv((values,))
        self._lib.rrd_clear_error()
        self._check(self._lib.rrd_update_r(os.fsencode(filename), self._ffi.NULL, 1, argv))
