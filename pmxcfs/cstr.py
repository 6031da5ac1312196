"""C strings on the wire and in IPC requests: what a C reader of a byte field sees.

One rule shared by the DCDB and kvstore payloads, the status store and the `pve2` IPC
operations, so every layer cuts a field exactly where the reference's `strlen` would.
"""

from __future__ import annotations


def c_str(raw: bytes) -> bytes:
    """The bytes before the first NUL (all of `raw` when it has none)."""
    i = raw.find(b"\x00")
    return raw if i < 0 else raw[:i]
